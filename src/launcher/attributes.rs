//! Process attributes of the payload that nspawn lets a user set, in nspawn's syntax:
//! `--rlimit=`, `--oom-score-adjust=`, `--cpu-affinity=`, `--personality=`. Parsed by the CLI
//! (and the settings files), applied by PID 1 just before it executes the payload.

use nix::sys::resource::Resource;

/// A value nspawn would refuse too.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {option} '{value}': {expected}")]
pub struct BadAttribute {
    /// The option.
    pub option: &'static str,
    /// What was given.
    pub value: String,
    /// What would have been right.
    pub expected: String,
}

fn bad(option: &'static str, value: &str, expected: impl Into<String>) -> BadAttribute {
    BadAttribute { option, value: value.to_owned(), expected: expected.into() }
}

/// How a resource limit's values are written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unit {
    Bytes,
    Seconds,
    Microseconds,
    Nice,
    Count,
}

/// systemd's names for the limits (`RLIMIT_` optional), with their units.
const RLIMITS: [(&str, Resource, Unit); 16] = [
    ("CPU", Resource::RLIMIT_CPU, Unit::Seconds),
    ("FSIZE", Resource::RLIMIT_FSIZE, Unit::Bytes),
    ("DATA", Resource::RLIMIT_DATA, Unit::Bytes),
    ("STACK", Resource::RLIMIT_STACK, Unit::Bytes),
    ("CORE", Resource::RLIMIT_CORE, Unit::Bytes),
    ("RSS", Resource::RLIMIT_RSS, Unit::Bytes),
    ("NOFILE", Resource::RLIMIT_NOFILE, Unit::Count),
    ("AS", Resource::RLIMIT_AS, Unit::Bytes),
    ("NPROC", Resource::RLIMIT_NPROC, Unit::Count),
    ("MEMLOCK", Resource::RLIMIT_MEMLOCK, Unit::Bytes),
    ("LOCKS", Resource::RLIMIT_LOCKS, Unit::Count),
    ("SIGPENDING", Resource::RLIMIT_SIGPENDING, Unit::Count),
    ("MSGQUEUE", Resource::RLIMIT_MSGQUEUE, Unit::Bytes),
    ("NICE", Resource::RLIMIT_NICE, Unit::Nice),
    ("RTPRIO", Resource::RLIMIT_RTPRIO, Unit::Count),
    ("RTTIME", Resource::RLIMIT_RTTIME, Unit::Microseconds),
];

/// The settings-file key of each limit (`LimitNOFILE=`), in nspawn's spelling.
pub fn rlimit_setting_names() -> impl Iterator<Item = String> {
    RLIMITS.iter().map(|(n, ..)| format!("Limit{n}"))
}

/// One `--rlimit=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    /// Which limit.
    pub resource: Resource,
    /// Soft limit (`u64::MAX`: infinity).
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
}

impl Rlimit {
    /// `NAME=SOFT[:HARD]`, NAME with or without `RLIMIT_`, values in the limit's unit (bytes with
    /// K/M/G suffixes, seconds, a nice level for NICE) or `infinity`.
    pub fn parse(arg: &str) -> Result<Rlimit, BadAttribute> {
        let option = "--rlimit";
        let (name, values) =
            arg.split_once('=').ok_or_else(|| bad(option, arg, "expected LIMIT=SOFT[:HARD]"))?;
        let upper = name.trim().to_ascii_uppercase();
        let short = upper.strip_prefix("RLIMIT_").unwrap_or(&upper);
        let &(_, resource, unit) = RLIMITS.iter().find(|(n, ..)| *n == short).ok_or_else(|| {
            let names: Vec<String> = RLIMITS.iter().map(|(n, ..)| format!("RLIMIT_{n}")).collect();
            bad(option, arg, format!("unknown limit; known: {}", names.join(", ")))
        })?;
        let value =
            |v: &str| parse_rlimit_value(v.trim(), unit).ok_or_else(|| bad(option, arg, unit_expected(unit)));
        let (soft, hard) = match values.split_once(':') {
            Some((s, h)) => (value(s)?, value(h)?),
            None => {
                let v = value(values)?;
                (v, v)
            }
        };
        if soft > hard {
            return Err(bad(option, arg, "the soft limit exceeds the hard limit"));
        }
        Ok(Rlimit { resource, soft, hard })
    }
}

fn unit_expected(unit: Unit) -> &'static str {
    match unit {
        Unit::Bytes => "expected bytes (K, M, G, T suffixes, base 1024) or infinity",
        Unit::Seconds => "expected seconds or infinity",
        Unit::Microseconds => "expected microseconds (or a time with s, ms, us) or infinity",
        Unit::Nice => "expected a nice level (-20..19, with its sign) or a raw limit (0..40)",
        Unit::Count => "expected a number or infinity",
    }
}

fn parse_rlimit_value(v: &str, unit: Unit) -> Option<u64> {
    if v == "infinity" {
        return Some(u64::MAX);
    }
    match unit {
        Unit::Count => v.parse().ok(),
        Unit::Bytes => crate::cgroups::resources::parse_bytes(v),
        Unit::Seconds => v.strip_suffix('s').unwrap_or(v).parse().ok(),
        Unit::Microseconds => {
            for (suffix, factor) in [("us", 1), ("ms", 1000), ("s", 1_000_000)] {
                if let Some(n) = v.strip_suffix(suffix) {
                    return n.parse::<u64>().ok()?.checked_mul(factor);
                }
            }
            v.parse().ok()
        }
        Unit::Nice => {
            // A signed value is a nice level; the kernel's limit is 20 - nice.
            if v.starts_with('+') || v.starts_with('-') {
                let nice: i64 = v.parse().ok().filter(|n| (-20..=19).contains(n))?;
                u64::try_from(20 - nice).ok()
            } else {
                v.parse().ok().filter(|n| *n <= 40)
            }
        }
    }
}

/// `--oom-score-adjust=`: -1000..1000.
pub fn parse_oom_score_adjust(v: &str) -> Result<i32, BadAttribute> {
    v.trim()
        .parse()
        .ok()
        .filter(|n| (-1000..=1000).contains(n))
        .ok_or_else(|| bad("--oom-score-adjust", v, "expected an integer from -1000 to 1000"))
}

/// `--cpu-affinity=`: CPU numbers and ranges, separated by commas or spaces.
pub fn parse_cpu_affinity(v: &str) -> Result<Vec<usize>, BadAttribute> {
    let expected = "expected CPU numbers and ranges, e.g. 0,2-3";
    let list = v.replace(char::is_whitespace, ",");
    let cpus =
        crate::cgroups::resources::parse_cpu_list(&list).ok_or_else(|| bad("--cpu-affinity", v, expected))?;
    let max = nix::sched::CpuSet::count();
    if let Some(c) = cpus.iter().find(|c| **c as usize >= max) {
        return Err(bad(
            "--cpu-affinity",
            v,
            format!("CPU {c} is beyond the largest CPU number {}", max - 1),
        ));
    }
    Ok(cpus.into_iter().map(|c| c as usize).collect())
}

// <linux/personality.h>; the libc crate does not export them.
pub(crate) const PER_LINUX: libc::c_ulong = 0x0000;
pub(crate) const PER_LINUX32: libc::c_ulong = 0x0008;

/// `--personality=`: the architectures this host's kernel can present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Personality {
    /// The native one (`x86-64` on x86-64, `arm64` on arm64).
    Native,
    /// The 32-bit one (`x86` on x86-64, `arm` on arm64): `uname -m` says so.
    Linux32,
}

impl Personality {
    /// nspawn's names for the host's own architecture and its 32-bit companion.
    pub fn parse(v: &str) -> Result<Personality, BadAttribute> {
        let (native, compat) = match std::env::consts::ARCH {
            "x86_64" => ("x86-64", Some("x86")),
            "aarch64" => ("arm64", Some("arm")),
            "powerpc64" => ("ppc64", Some("ppc")),
            "s390x" => ("s390x", Some("s390")),
            other => (other, None),
        };
        match v {
            v if v == native => Ok(Personality::Native),
            v if Some(v) == compat => Ok(Personality::Linux32),
            _ => Err(bad(
                "--personality",
                v,
                format!(
                    "this host runs {native}{}",
                    compat.map(|c| format!(" and can present {c}")).unwrap_or_default()
                ),
            )),
        }
    }

    /// The `personality(2)` value.
    pub fn persona(self) -> libc::c_ulong {
        match self {
            Personality::Native => PER_LINUX,
            Personality::Linux32 => PER_LINUX32,
        }
    }
}

/// The payload's attributes, applied in this order just before the exec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PayloadAttributes {
    /// `--rlimit`, after the machine's default limits.
    pub rlimits: Vec<Rlimit>,
    /// `--oom-score-adjust`.
    pub oom_score_adjust: Option<i32>,
    /// `--cpu-affinity`.
    pub cpu_affinity: Option<Vec<usize>>,
    /// `--personality`.
    pub personality: Option<Personality>,
}

impl PayloadAttributes {
    /// Sets them on the calling process (PID 1 of the machine, before exec).
    pub fn apply(&self) -> Result<(), (&'static str, std::io::Error)> {
        for r in &self.rlimits {
            nix::sys::resource::setrlimit(r.resource, r.soft, r.hard).map_err(|e| {
                ("set a resource limit (raising a hard limit needs CAP_SYS_RESOURCE)", e.into())
            })?;
        }
        if let Some(adj) = self.oom_score_adjust {
            std::fs::write("/proc/self/oom_score_adj", adj.to_string())
                .map_err(|e| ("set the OOM score adjustment (lowering it needs CAP_SYS_RESOURCE)", e))?;
        }
        if let Some(cpus) = &self.cpu_affinity {
            let mut set = nix::sched::CpuSet::new();
            for &c in cpus {
                set.set(c).map_err(|e| ("set the CPU affinity", e.into()))?;
            }
            nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
                .map_err(|e| ("set the CPU affinity (are those CPUs online and allowed?)", e.into()))?;
        }
        if let Some(p) = self.personality {
            crate::sys::linux::set_personality(p.persona()).map_err(|e| ("set the personality", e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rlimits_in_nspawns_syntax() {
        let r = Rlimit::parse("RLIMIT_NOFILE=1024:4096").unwrap();
        assert_eq!((r.resource, r.soft, r.hard), (Resource::RLIMIT_NOFILE, 1024, 4096));
        let r = Rlimit::parse("nofile=512").unwrap();
        assert_eq!((r.soft, r.hard), (512, 512));
        let r = Rlimit::parse("RLIMIT_AS=1G:infinity").unwrap();
        assert_eq!((r.soft, r.hard), (1 << 30, u64::MAX));
        assert_eq!(Rlimit::parse("NICE=-5").unwrap().soft, 25);
        assert_eq!(Rlimit::parse("RTTIME=2ms").unwrap().soft, 2000);
        for (badv, needle) in [
            ("RLIMIT_NOFILE=4096:1024", "soft limit exceeds"),
            ("RLIMIT_FOO=1", "unknown limit"),
            ("RLIMIT_NOFILE=lots", "expected a number"),
            ("RLIMIT_NOFILE", "expected LIMIT=SOFT[:HARD]"),
            ("NICE=-21", "nice level"),
        ] {
            let e = Rlimit::parse(badv).unwrap_err().to_string();
            assert!(e.contains(needle), "{badv}: {e}");
        }
    }

    #[test]
    fn other_attributes() {
        assert_eq!(parse_oom_score_adjust("500"), Ok(500));
        assert!(parse_oom_score_adjust("1001").is_err());
        assert_eq!(parse_cpu_affinity("0"), Ok(vec![0]));
        assert!(parse_cpu_affinity("100000").unwrap_err().to_string().contains("beyond the largest CPU"));
        assert!(parse_cpu_affinity("a-b").is_err());
        if std::env::consts::ARCH == "x86_64" {
            assert_eq!(Personality::parse("x86"), Ok(Personality::Linux32));
            assert_eq!(Personality::parse("x86-64"), Ok(Personality::Native));
            assert!(Personality::parse("s390").unwrap_err().to_string().contains("this host runs x86-64"));
        }
    }
}
