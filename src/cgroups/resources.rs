//! Resource limits and usage of a machine's cgroup, in systemd's property names and units
//! (`MemoryMax=512M`, `CPUQuota=150%`), written to cgroup v2 or, on hybrid hosts, to the v1
//! controller with the same meaning. Limits go on the machine's cgroup, the parent of the
//! guest's cgroup namespace root, so nothing the guest can write reaches them.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// A limit in bytes or tasks, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// At most this many.
    Value(u64),
    /// No limit (`infinity`, or an empty value: systemd's reset).
    Infinity,
}

impl Limit {
    fn v2(self) -> String {
        match self {
            Limit::Value(n) => n.to_string(),
            Limit::Infinity => "max".into(),
        }
    }

    fn v1(self) -> String {
        match self {
            Limit::Value(n) => n.to_string(),
            Limit::Infinity => "-1".into(),
        }
    }

    /// As a D-Bus property (systemd's: `u64::MAX` is infinity).
    pub fn as_u64(self) -> u64 {
        match self {
            Limit::Value(n) => n,
            Limit::Infinity => u64::MAX,
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Value(n) => write!(f, "{n}"),
            Limit::Infinity => f.write_str("infinity"),
        }
    }
}

/// Which per-device I/O limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoLimitKind {
    /// `IOReadBandwidthMax`: bytes per second read.
    ReadBandwidth,
    /// `IOWriteBandwidthMax`: bytes per second written.
    WriteBandwidth,
    /// `IOReadIOPSMax`: read operations per second.
    ReadIops,
    /// `IOWriteIOPSMax`: write operations per second.
    WriteIops,
}

impl IoLimitKind {
    const ALL: [(IoLimitKind, &'static str, &'static str, &'static str); 4] = [
        (IoLimitKind::ReadBandwidth, "IOReadBandwidthMax", "rbps", "blkio.throttle.read_bps_device"),
        (IoLimitKind::WriteBandwidth, "IOWriteBandwidthMax", "wbps", "blkio.throttle.write_bps_device"),
        (IoLimitKind::ReadIops, "IOReadIOPSMax", "riops", "blkio.throttle.read_iops_device"),
        (IoLimitKind::WriteIops, "IOWriteIOPSMax", "wiops", "blkio.throttle.write_iops_device"),
    ];

    fn row(self) -> (IoLimitKind, &'static str, &'static str, &'static str) {
        Self::ALL.into_iter().find(|r| r.0 == self).unwrap_or(Self::ALL[0])
    }
}

/// One resource property, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Property {
    /// `MemoryMax`: the hard memory limit; above it the kernel reclaims, then kills inside.
    MemoryMax(Limit),
    /// `MemoryHigh`: the throttling point (cgroup v2 only).
    MemoryHigh(Limit),
    /// `MemorySwapMax`: swap the machine may use (cgroup v2 only).
    MemorySwapMax(Limit),
    /// `TasksMax`: processes and threads.
    TasksMax(Limit),
    /// `CPUWeight`: 1..10000 (None: the default, 100).
    CpuWeight(Option<u64>),
    /// `CPUQuota`: CPU time per second of wall time, in µs (None: no quota).
    CpuQuota(Option<u64>),
    /// `AllowedCPUs`: a CPU list such as `0-1,3` (empty: all the parent has).
    AllowedCpus(String),
    /// `IOWeight`: 1..10000 (None: the default, 100).
    IoWeight(Option<u64>),
    /// `IOReadBandwidthMax=DEVICE BYTES` and the like.
    IoDeviceLimit {
        /// Which limit.
        kind: IoLimitKind,
        /// The device node or a path on the file system whose disk is meant.
        device: PathBuf,
        /// Per second.
        limit: Limit,
    },
}

/// The property names mctl knows (for the message naming them).
pub const NAMES: [&str; 12] = [
    "MemoryMax",
    "MemoryHigh",
    "MemorySwapMax",
    "TasksMax",
    "CPUWeight",
    "CPUQuota",
    "AllowedCPUs",
    "IOWeight",
    "IOReadBandwidthMax",
    "IOWriteBandwidthMax",
    "IOReadIOPSMax",
    "IOWriteIOPSMax",
];

/// Whether a D-Bus property of this name is a limit (`u64::MAX` shown as `infinity`).
pub fn is_limit(name: &str) -> bool {
    matches!(name, "MemoryMax" | "MemoryHigh" | "MemorySwapMax" | "TasksMax" | "CPUQuotaPerSecUSec")
}

/// A limit that could not be parsed or applied.
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    /// Not `NAME=VALUE`, or a name mctl does not know.
    #[error("unknown resource property '{0}': expected NAME=VALUE with NAME one of {names}", names = NAMES.join(", "))]
    Unknown(String),
    /// A value that does not parse.
    #[error("invalid {name}={value}: {expected}")]
    Invalid {
        /// The property.
        name: String,
        /// What was given.
        value: String,
        /// What would have been right.
        expected: &'static str,
    },
    /// The host has no controller (or no file) for the property.
    #[error("{property} cannot be applied on this host: {reason}")]
    Unsupported {
        /// `NAME=VALUE`.
        property: String,
        /// Why.
        reason: String,
    },
    /// The unit's service manager refused the limits.
    #[error("cannot set the limits of unit {unit}: {message}")]
    ServiceManager {
        /// The unit.
        unit: String,
        /// What it said.
        message: String,
    },
    /// Writing or reading a cgroup file failed.
    #[error("cannot {step} {path}: {source}")]
    Io {
        /// What was being done.
        step: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

const SIZE_EXPECTED: &str = "expected bytes with an optional K, M, G, T, P or E suffix (base 1024), a percentage of the host's memory, or infinity";

impl Property {
    /// Parses `NAME=VALUE` in systemd's syntax.
    pub fn parse(assignment: &str) -> Result<Property, ResourceError> {
        let (name, value) =
            assignment.split_once('=').ok_or_else(|| ResourceError::Unknown(assignment.to_owned()))?;
        let (name, value) = (name.trim(), value.trim());
        let invalid =
            |expected| ResourceError::Invalid { name: name.to_owned(), value: value.to_owned(), expected };
        let memory = || parse_limit(value, physical_memory).ok_or_else(|| invalid(SIZE_EXPECTED));
        let weight = |expected| {
            if value.is_empty() {
                return Ok(None);
            }
            match value.parse::<u64>() {
                Ok(w) if (1..=10000).contains(&w) => Ok(Some(w)),
                _ => Err(invalid(expected)),
            }
        };
        Ok(match name {
            "MemoryMax" => Property::MemoryMax(memory()?),
            "MemoryHigh" => Property::MemoryHigh(memory()?),
            "MemorySwapMax" => Property::MemorySwapMax(memory()?),
            "TasksMax" => Property::TasksMax(parse_tasks(value).ok_or_else(|| {
                invalid("expected a number of tasks, a percentage of the host's maximum, or infinity")
            })?),
            "CPUWeight" => Property::CpuWeight(weight("expected a weight from 1 to 10000 (default 100)")?),
            "IOWeight" => Property::IoWeight(weight("expected a weight from 1 to 10000 (default 100)")?),
            "CPUQuota" => Property::CpuQuota(
                parse_quota(value)
                    .ok_or_else(|| invalid("expected a percentage of one CPU, e.g. 20% or 150%"))?,
            ),
            "AllowedCPUs" => {
                if !value.is_empty() && parse_cpu_list(value).is_none() {
                    return Err(invalid("expected a CPU list such as 0-1,3"));
                }
                Property::AllowedCpus(value.to_owned())
            }
            _ => {
                let Some(&(kind, ..)) = IoLimitKind::ALL.iter().find(|r| r.1 == name) else {
                    return Err(ResourceError::Unknown(assignment.to_owned()));
                };
                let expected = "expected DEVICE LIMIT: a device node or a path on it, then bytes (K, M, G \
                                suffixes) or operations per second, or infinity";
                let (device, limit) =
                    value.rsplit_once(char::is_whitespace).ok_or_else(|| invalid(expected))?;
                let device = PathBuf::from(device.trim());
                let limit = parse_limit(limit, || None).ok_or_else(|| invalid(expected))?;
                if !device.is_absolute() {
                    return Err(invalid(expected));
                }
                Property::IoDeviceLimit { kind, device, limit }
            }
        })
    }

    /// The systemd name.
    pub fn name(&self) -> &'static str {
        match self {
            Property::MemoryMax(_) => "MemoryMax",
            Property::MemoryHigh(_) => "MemoryHigh",
            Property::MemorySwapMax(_) => "MemorySwapMax",
            Property::TasksMax(_) => "TasksMax",
            Property::CpuWeight(_) => "CPUWeight",
            Property::CpuQuota(_) => "CPUQuota",
            Property::AllowedCpus(_) => "AllowedCPUs",
            Property::IoWeight(_) => "IOWeight",
            Property::IoDeviceLimit { kind, .. } => kind.row().1,
        }
    }

    /// Whether `other` sets the same thing (a later assignment replaces an earlier one).
    pub fn same_setting(&self, other: &Property) -> bool {
        match (self, other) {
            (
                Property::IoDeviceLimit { kind: a, device: d, .. },
                Property::IoDeviceLimit { kind: b, device: e, .. },
            ) => a == b && d == e,
            _ => self.name() == other.name(),
        }
    }
}

/// A property's value as systemd's D-Bus API takes it (`SetUnitProperties`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SystemdValue {
    /// `t`: bytes, tasks, a weight, µs per second (`u64::MAX`: infinity, or unset).
    Number(u64),
    /// `ay`: a CPU bitmask.
    Bytes(Vec<u8>),
    /// `a(st)`: device and limit.
    DeviceLimits(Vec<(String, u64)>),
}

impl Property {
    /// systemd's D-Bus property name (`CPUQuota` is `CPUQuotaPerSecUSec` there).
    pub fn systemd_name(&self) -> &'static str {
        match self {
            Property::CpuQuota(_) => "CPUQuotaPerSecUSec",
            other => other.name(),
        }
    }

    /// The value in systemd's D-Bus type.
    pub fn systemd_value(&self) -> SystemdValue {
        match self {
            Property::MemoryMax(l)
            | Property::MemoryHigh(l)
            | Property::MemorySwapMax(l)
            | Property::TasksMax(l) => SystemdValue::Number(l.as_u64()),
            Property::CpuWeight(w) | Property::IoWeight(w) => SystemdValue::Number(w.unwrap_or(u64::MAX)),
            Property::CpuQuota(q) => SystemdValue::Number(q.unwrap_or(u64::MAX)),
            Property::AllowedCpus(list) => {
                let cpus = parse_cpu_list(list).unwrap_or_default();
                let mut mask = vec![0u8; cpus.iter().max().map_or(0, |m| *m as usize / 8 + 1)];
                for c in cpus {
                    mask[c as usize / 8] |= 1 << (c % 8);
                }
                SystemdValue::Bytes(mask)
            }
            Property::IoDeviceLimit { device, limit, .. } => {
                SystemdValue::DeviceLimits(vec![(device.display().to_string(), limit.as_u64())])
            }
        }
    }
}

/// `NAME=VALUE`, normalized (bytes, percentages), as `show` and settings files write it.
impl fmt::Display for Property {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.name();
        match self {
            Property::MemoryMax(l)
            | Property::MemoryHigh(l)
            | Property::MemorySwapMax(l)
            | Property::TasksMax(l) => {
                write!(f, "{name}={l}")
            }
            Property::CpuWeight(w) | Property::IoWeight(w) => match w {
                Some(w) => write!(f, "{name}={w}"),
                None => write!(f, "{name}="),
            },
            // 10000 µs per second are 1%; a fractional percentage (12.5%) is kept as given.
            Property::CpuQuota(q) => match q {
                Some(us) if us % 10_000 == 0 => write!(f, "{name}={}%", us / 10_000),
                Some(us) => {
                    let fraction = format!("{:04}", us % 10_000);
                    write!(f, "{name}={}.{}%", us / 10_000, fraction.trim_end_matches('0'))
                }
                None => write!(f, "{name}="),
            },
            Property::AllowedCpus(list) => write!(f, "{name}={list}"),
            Property::IoDeviceLimit { device, limit, .. } => write!(f, "{name}={} {limit}", device.display()),
        }
    }
}

/// Bytes with systemd's base-1024 suffixes, a percentage of `total()`, `infinity`, or empty
/// (no limit).
fn parse_limit(value: &str, total: impl FnOnce() -> Option<u64>) -> Option<Limit> {
    if value.is_empty() || value == "infinity" {
        return Some(Limit::Infinity);
    }
    if let Some(p) = value.strip_suffix('%') {
        let p: f64 = p.trim().parse().ok().filter(|p: &f64| (0.0..=100.0).contains(p))?;
        // At most 100% of a u64 and not negative, so the cast cannot truncate or lose a sign.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let bytes = (total()? as f64 * p / 100.0) as u64;
        return Some(Limit::Value(bytes));
    }
    parse_bytes(value).map(Limit::Value)
}

/// Bytes with systemd's base-1024 suffixes (`512M`, `1.5G`, K to E), as systemd's and nspawn's
/// options write sizes.
pub fn parse_bytes(value: &str) -> Option<u64> {
    let (digits, shift) = match value.as_bytes().last()? {
        b'K' => (&value[..value.len() - 1], 10),
        b'M' => (&value[..value.len() - 1], 20),
        b'G' => (&value[..value.len() - 1], 30),
        b'T' => (&value[..value.len() - 1], 40),
        b'P' => (&value[..value.len() - 1], 50),
        b'E' => (&value[..value.len() - 1], 60),
        _ => (value, 0),
    };
    let digits = digits.trim();
    if let Ok(n) = digits.parse::<u64>() {
        return n.checked_mul(1 << shift);
    }
    let n: f64 = digits.parse().ok().filter(|n: &f64| n.is_finite() && *n >= 0.0)?;
    let bytes = n * (1u64 << shift) as f64;
    if bytes >= u64::MAX as f64 {
        return None;
    }
    // Finite, not negative and below u64::MAX: the cast cannot truncate or lose a sign.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let bytes = bytes as u64;
    Some(bytes)
}

fn parse_tasks(value: &str) -> Option<Limit> {
    if value.is_empty() || value == "infinity" {
        return Some(Limit::Infinity);
    }
    if value.ends_with('%') {
        return parse_limit(value, host_tasks_max);
    }
    value.parse().ok().map(Limit::Value)
}

/// `CPUQuota=N%`: µs of CPU time per second.
fn parse_quota(value: &str) -> Option<Option<u64>> {
    if value.is_empty() {
        return Some(None);
    }
    let p: f64 = value.strip_suffix('%')?.trim().parse().ok().filter(|p: &f64| p.is_finite() && *p > 0.0)?;
    let us = (p * 10_000.0).round();
    // A quota past u64::MAX is refused rather than saturated.
    if us >= u64::MAX as f64 {
        return None;
    }
    // Whole, positive and below u64::MAX: the cast is exact.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let us = us as u64;
    Some(Some(us))
}

/// The CPUs of a list like `0-2,5`, or None when it does not parse.
pub fn parse_cpu_list(list: &str) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if a > b || b - a > 65536 {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().ok()?),
        }
    }
    (!out.is_empty()).then_some(out)
}

fn physical_memory() -> Option<u64> {
    let meminfo = fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The host's ceiling on tasks (systemd's: the smaller of `pid_max` and `threads-max`).
fn host_tasks_max() -> Option<u64> {
    let read = |p: &str| fs::read_to_string(p).ok()?.trim().parse::<u64>().ok();
    match (read("/proc/sys/kernel/pid_max"), read("/proc/sys/kernel/threads-max")) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The cgroup directories of one machine, one per hierarchy: its limits go here and its
/// usage is read here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineDirs {
    /// The machine's cgroup in the cgroup2 hierarchy.
    pub unified: PathBuf,
    /// The machine's cgroup in each v1 hierarchy, with the hierarchy's controllers.
    pub v1: Vec<(Vec<String>, PathBuf)>,
    /// The unit whose cgroup the machine's is (`--keep-unit` under `mctl@.service`): its
    /// service manager owns the cgroup's attributes.
    pub unit: Option<String>,
}

/// Where a controller's files are for this machine.
enum Place<'a> {
    V2(&'a Path),
    V1(&'a Path),
}

impl MachineDirs {
    /// The machine cgroups of a process of machine `name` from its `/proc/PID/cgroup` text:
    /// in each hierarchy, the parent of the cgroup the launcher made for the payload. Cgroups
    /// the guest made below the payload are cut off; hierarchies where the process is not in a
    /// machine's cgroup are left out (None without a cgroup2 one).
    pub fn of_process(
        hierarchies: &[super::Hierarchy],
        proc_cgroup: &str,
        name: &str,
    ) -> Option<MachineDirs> {
        let mut unified = None;
        let mut unit = None;
        let mut v1 = Vec::new();
        for line in proc_cgroup.lines() {
            let mut it = line.splitn(3, ':');
            let (Some(_), Some(ctl), Some(path)) = (it.next(), it.next(), it.next()) else { continue };
            let Some(payload) = crate::procfs::machine_cgroup(path, name) else { continue };
            let machine = payload.strip_suffix("/payload").unwrap_or(payload).trim_start_matches('/');
            if ctl.is_empty() {
                let Some(h) = hierarchies.iter().find(|h| h.v2) else { continue };
                // Not mctl's own ".../mctl/NAME": the unit's cgroup itself (machine_cgroup
                // accepts only a .service or .scope there).
                if !machine.ends_with(&format!("mctl/{name}")) {
                    unit = machine.rsplit('/').next().map(str::to_owned);
                }
                unified = Some(h.mount.join(machine));
            } else {
                let wanted: Vec<&str> = ctl.split(',').collect();
                if let Some(h) = hierarchies.iter().find(|h| !h.v2 && wanted.iter().all(|c| h.is(c))) {
                    v1.push((h.controllers.clone(), h.mount.join(machine)));
                }
            }
        }
        Some(MachineDirs { unified: unified?, v1, unit })
    }

    /// Sets `props`: through the unit's service manager when the machine's cgroup is a unit's
    /// (`via_unit` says Ok(false) when there is none), else directly.
    pub fn apply_all(
        &self,
        props: &[Property],
        via_unit: impl FnOnce(&str, &[Property]) -> Result<bool, String>,
    ) -> Result<(), ResourceError> {
        if let Some(unit) = &self.unit
            && via_unit(unit, props)
                .map_err(|e| ResourceError::ServiceManager { unit: unit.clone(), message: e })?
        {
            return Ok(());
        }
        props.iter().try_for_each(|p| self.apply(p))
    }

    /// The controllers cgroup2 offers at the machine's cgroup: read once per apply, limits or
    /// usage call (`mctl top` asks for every machine each refresh).
    fn enabled(&self) -> String {
        fs::read_to_string(self.unified.join("cgroup.controllers")).unwrap_or_default()
    }

    /// Where `controller`'s files are, given what [`Self::enabled`] read.
    fn place<'a>(&'a self, enabled: &str, controller: &str) -> Option<Place<'a>> {
        if enabled.split_whitespace().any(|c| c == controller) {
            return Some(Place::V2(&self.unified));
        }
        self.v1
            .iter()
            .find(|(ctl, _)| ctl.iter().any(|c| c == controller))
            .map(|(_, d)| Place::V1(d.as_path()))
    }

    fn unsupported(p: &Property, reason: impl Into<String>) -> ResourceError {
        ResourceError::Unsupported { property: p.to_string(), reason: reason.into() }
    }

    fn no_controller(p: &Property, controller: &str) -> ResourceError {
        Self::unsupported(
            p,
            format!(
                "the {controller} controller is neither enabled for the machine's cgroup2 directory nor \
                 mounted as a v1 hierarchy (mctl needs its cgroup to be a root or a delegated cgroup, \
                 e.g. a unit with Delegate=yes such as mctl@.service)"
            ),
        )
    }

    /// Writes one property to the machine's cgroups.
    pub fn apply(&self, p: &Property) -> Result<(), ResourceError> {
        let enabled = self.enabled();
        let controller = match p {
            Property::MemoryMax(_) | Property::MemoryHigh(_) | Property::MemorySwapMax(_) => "memory",
            Property::TasksMax(_) => "pids",
            Property::CpuWeight(_) | Property::CpuQuota(_) => "cpu",
            Property::AllowedCpus(_) => "cpuset",
            Property::IoWeight(_) | Property::IoDeviceLimit { .. } => {
                if self.place(&enabled, "io").is_some() { "io" } else { "blkio" }
            }
        };
        let place = self.place(&enabled, controller).ok_or_else(|| Self::no_controller(p, controller))?;
        let (dir, v2) = match place {
            Place::V2(d) => (d, true),
            Place::V1(d) => (d, false),
        };
        let writes: Vec<(&str, String)> = match (p, v2) {
            (Property::MemoryMax(l), true) => vec![("memory.max", l.v2())],
            (Property::MemoryMax(l), false) => vec![("memory.limit_in_bytes", l.v1())],
            (Property::MemoryHigh(l), true) => vec![("memory.high", l.v2())],
            (Property::MemorySwapMax(l), true) => vec![("memory.swap.max", l.v2())],
            (Property::MemoryHigh(_) | Property::MemorySwapMax(_), false) => {
                return Err(Self::unsupported(
                    p,
                    "the memory controller is cgroup v1 here, which has no memory.high and counts swap \
                     only together with memory; use MemoryMax, or a pure cgroup v2 host",
                ));
            }
            (Property::TasksMax(l), _) => vec![("pids.max", l.v2())],
            (Property::CpuWeight(w), true) => vec![("cpu.weight", w.unwrap_or(100).to_string())],
            (Property::CpuWeight(w), false) => {
                vec![("cpu.shares", weight_to_shares(w.unwrap_or(100)).to_string())]
            }
            (Property::CpuQuota(q), true) => {
                let quota = q.map_or("max".to_owned(), |us| quota_per_period(us).to_string());
                vec![("cpu.max", format!("{quota} {CPU_PERIOD_US}"))]
            }
            (Property::CpuQuota(q), false) => vec![
                ("cpu.cfs_period_us", CPU_PERIOD_US.to_string()),
                ("cpu.cfs_quota_us", q.map_or("-1".to_owned(), |us| quota_per_period(us).to_string())),
            ],
            (Property::AllowedCpus(list), true) => vec![("cpuset.cpus", list.clone())],
            (Property::AllowedCpus(list), false) => {
                // A v1 cpuset must not be empty: "reset" means the parent's CPUs.
                let list = if list.is_empty() {
                    let parent = dir.parent().unwrap_or(dir).join("cpuset.cpus");
                    fs::read_to_string(&parent).map_err(io_err("read", &parent))?.trim().to_owned()
                } else {
                    list.clone()
                };
                vec![("cpuset.cpus", list)]
            }
            (Property::IoWeight(w), true) => vec![("io.weight", format!("default {}", w.unwrap_or(100)))],
            (Property::IoWeight(w), false) => {
                vec![("blkio.weight", (w.unwrap_or(100) * 5).clamp(10, 1000).to_string())]
            }
            (Property::IoDeviceLimit { kind, device, limit }, v2) => {
                let (major, minor) = whole_disk(device).map_err(|e| {
                    Self::unsupported(p, format!("cannot find the disk of {}: {e}", device.display()))
                })?;
                let (_, _, key, v1_file) = kind.row();
                if v2 {
                    vec![("io.max", format!("{major}:{minor} {key}={}", limit.v2()))]
                } else {
                    // v1 removes a device's rule when given 0.
                    let n = match limit {
                        Limit::Value(n) => *n,
                        Limit::Infinity => 0,
                    };
                    vec![(v1_file, format!("{major}:{minor} {n}"))]
                }
            }
        };
        for (file, value) in writes {
            let path = dir.join(file);
            if !path.exists() {
                return Err(Self::unsupported(
                    p,
                    format!("{} does not exist (the kernel offers no such control here)", path.display()),
                ));
            }
            fs::write(&path, &value).map_err(|e| match e.raw_os_error() {
                Some(libc::EINVAL) | Some(libc::ERANGE) | Some(libc::EBUSY) => {
                    Self::unsupported(p, format!("the kernel refused '{value}' in {}: {e}", path.display()))
                }
                _ => ResourceError::Io { step: "write", path: path.clone(), source: e },
            })?;
        }
        Ok(())
    }

    /// The limits in force, as systemd's D-Bus properties show them (`u64::MAX`: infinity or
    /// not set).
    pub fn limits(&self) -> Limits {
        let mut out = Limits::default();
        let enabled = self.enabled();
        let read =
            |dir: &Path, file: &str| fs::read_to_string(dir.join(file)).ok().map(|s| s.trim().to_owned());
        let number = |s: Option<String>| -> u64 {
            match s.as_deref() {
                Some("max") | Some("-1") | None => u64::MAX,
                // v1 spells "no limit" as the largest page-aligned counter.
                Some(n) => n.parse().ok().filter(|n| *n < 1 << 62).unwrap_or(u64::MAX),
            }
        };
        match self.place(&enabled, "memory") {
            Some(Place::V2(d)) => {
                out.memory_max = number(read(d, "memory.max"));
                out.memory_high = number(read(d, "memory.high"));
                out.memory_swap_max = number(read(d, "memory.swap.max"));
            }
            Some(Place::V1(d)) => out.memory_max = number(read(d, "memory.limit_in_bytes")),
            None => {}
        }
        if let Some(Place::V2(d) | Place::V1(d)) = self.place(&enabled, "pids") {
            out.tasks_max = number(read(d, "pids.max"));
        }
        match self.place(&enabled, "cpu") {
            Some(Place::V2(d)) => {
                out.cpu_weight = number(read(d, "cpu.weight"));
                if let Some(max) = read(d, "cpu.max") {
                    let mut it = max.split_whitespace();
                    let (q, period) = (it.next().unwrap_or("max"), it.next().and_then(|p| p.parse().ok()));
                    out.cpu_quota_per_sec_usec = per_second(q.parse().ok(), period);
                }
            }
            Some(Place::V1(d)) => {
                out.cpu_weight =
                    read(d, "cpu.shares").and_then(|s| s.parse().ok()).map_or(u64::MAX, shares_to_weight);
                let q = read(d, "cpu.cfs_quota_us")
                    .and_then(|s| s.parse::<i64>().ok())
                    .and_then(|q| u64::try_from(q).ok());
                out.cpu_quota_per_sec_usec =
                    per_second(q, read(d, "cpu.cfs_period_us").and_then(|s| s.parse().ok()));
            }
            None => {}
        }
        if let Some(Place::V2(d) | Place::V1(d)) = self.place(&enabled, "cpuset") {
            out.allowed_cpus = read(d, "cpuset.cpus").unwrap_or_default();
        }
        match self.place(&enabled, "io") {
            Some(Place::V2(d)) => {
                out.io_weight = read(d, "io.weight")
                    .and_then(|s| {
                        s.lines().find_map(|l| l.strip_prefix("default ")).and_then(|w| w.trim().parse().ok())
                    })
                    .unwrap_or(u64::MAX);
            }
            _ => {
                if let Some(Place::V1(d)) = self.place(&enabled, "blkio") {
                    out.io_weight = read(d, "blkio.weight")
                        .and_then(|s| s.parse::<u64>().ok())
                        .map_or(u64::MAX, |w| w / 5);
                }
            }
        }
        out
    }

    /// What the machine uses now. Figures the host does not keep are `None`.
    pub fn usage(&self) -> Usage {
        let mut u = Usage::default();
        let enabled = self.enabled();
        let read = |dir: &Path, file: &str| fs::read_to_string(dir.join(file)).ok();
        let number = |s: Option<String>| s.and_then(|s| s.trim().parse::<u64>().ok());
        let keyed = |text: Option<String>, key: &str| {
            text.and_then(|t| {
                t.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
            })
        };
        // cpu.stat's usage_usec is kept for every cgroup2 directory, controller or not.
        u.cpu_usage_ns = match self.v1.iter().find(|(c, _)| c.iter().any(|c| c == "cpuacct")) {
            Some((_, d)) => number(read(d, "cpuacct.usage")),
            None => keyed(read(&self.unified, "cpu.stat"), "usage_usec").map(|us: u64| us * 1000),
        };
        match self.place(&enabled, "memory") {
            Some(Place::V2(d)) => {
                u.memory_current = number(read(d, "memory.current"));
                u.memory_peak = number(read(d, "memory.peak"));
                u.oom_kills = keyed(read(d, "memory.events"), "oom_kill");
            }
            Some(Place::V1(d)) => {
                u.memory_current = number(read(d, "memory.usage_in_bytes"));
                u.memory_peak = number(read(d, "memory.max_usage_in_bytes"));
                // v1 counts a kill only in the victim's own cgroup: add up the subtree.
                u.oom_kills = v1_subtree_sum(d, &|dir| {
                    keyed(super::tree::read_at(dir, "memory.oom_control").ok(), "oom_kill")
                });
            }
            None => {}
        }
        if let Some(Place::V2(d) | Place::V1(d)) = self.place(&enabled, "pids") {
            u.tasks_current = number(read(d, "pids.current"));
        }
        if u.tasks_current.is_none() {
            u.tasks_current = Some(super::pids_in(&self.unified).len() as u64);
        }
        match self.place(&enabled, "io") {
            Some(Place::V2(d)) => {
                let (mut r, mut w) = (0, 0);
                for line in read(d, "io.stat").unwrap_or_default().lines() {
                    for kv in line.split_whitespace().skip(1) {
                        match kv.split_once('=') {
                            Some(("rbytes", n)) => r += n.parse::<u64>().unwrap_or(0),
                            Some(("wbytes", n)) => w += n.parse::<u64>().unwrap_or(0),
                            _ => {}
                        }
                    }
                }
                (u.io_read_bytes, u.io_write_bytes) = (Some(r), Some(w));
            }
            _ => {
                if let Some(Place::V1(d)) = self.place(&enabled, "blkio") {
                    let text = read(d, "blkio.throttle.io_service_bytes_recursive");
                    if let Some(text) = text {
                        let (mut r, mut w) = (0, 0);
                        for line in text.lines() {
                            let f: Vec<&str> = line.split_whitespace().collect();
                            match f.as_slice() {
                                [dev, "Read", n] if dev.contains(':') => r += n.parse::<u64>().unwrap_or(0),
                                [dev, "Write", n] if dev.contains(':') => w += n.parse::<u64>().unwrap_or(0),
                                _ => {}
                            }
                        }
                        (u.io_read_bytes, u.io_write_bytes) = (Some(r), Some(w));
                    }
                }
            }
        }
        u
    }
}

/// The sum of `value` over `dir` and every cgroup below it; None if `dir` has none.
fn v1_subtree_sum(dir: &Path, value: &dyn Fn(std::os::fd::BorrowedFd<'_>) -> Option<u64>) -> Option<u64> {
    let (mut sum, mut top) = (0, None);
    super::tree::each(dir, &mut |cgroup| {
        let v = value(cgroup);
        top.get_or_insert(v);
        sum += v.unwrap_or(0);
    });
    top.flatten().map(|_| sum)
}

/// Limits in force, systemd's way: `u64::MAX` means infinity (or not set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// `MemoryMax`, bytes.
    pub memory_max: u64,
    /// `MemoryHigh`, bytes.
    pub memory_high: u64,
    /// `MemorySwapMax`, bytes.
    pub memory_swap_max: u64,
    /// `TasksMax`.
    pub tasks_max: u64,
    /// `CPUWeight`.
    pub cpu_weight: u64,
    /// `CPUQuotaPerSecUSec`: µs of CPU time per second.
    pub cpu_quota_per_sec_usec: u64,
    /// `AllowedCPUs`, a CPU list.
    pub allowed_cpus: String,
    /// `IOWeight`.
    pub io_weight: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_max: u64::MAX,
            memory_high: u64::MAX,
            memory_swap_max: u64::MAX,
            tasks_max: u64::MAX,
            cpu_weight: u64::MAX,
            cpu_quota_per_sec_usec: u64::MAX,
            allowed_cpus: String::new(),
            io_weight: u64::MAX,
        }
    }
}

/// What a machine uses; `None` where the host keeps no such figure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU time of all its processes, ns.
    pub cpu_usage_ns: Option<u64>,
    /// Memory charged now, bytes.
    pub memory_current: Option<u64>,
    /// The most memory charged at once, bytes.
    pub memory_peak: Option<u64>,
    /// Processes and threads.
    pub tasks_current: Option<u64>,
    /// Bytes read from block devices.
    pub io_read_bytes: Option<u64>,
    /// Bytes written to block devices.
    pub io_write_bytes: Option<u64>,
    /// Processes the kernel's OOM killer ended inside.
    pub oom_kills: Option<u64>,
}

const CPU_PERIOD_US: u64 = 100_000;

/// The quota per 100 ms period for `us` of CPU time per second (systemd's minimum: 1 ms).
fn quota_per_period(us: u64) -> u64 {
    (us.saturating_mul(CPU_PERIOD_US) / 1_000_000).max(1000)
}

fn per_second(quota: Option<u64>, period: Option<u64>) -> u64 {
    match (quota, period) {
        // Read from cgroup files: a huge quota saturates rather than overflows.
        (Some(q), Some(p)) if p > 0 => q.saturating_mul(1_000_000) / p,
        _ => u64::MAX,
    }
}

/// systemd's mapping of a cgroup2 CPU weight to v1 shares.
fn weight_to_shares(w: u64) -> u64 {
    (w * 1024 / 100).clamp(2, 262_144)
}

fn shares_to_weight(s: u64) -> u64 {
    (s * 100 / 1024).clamp(1, 10_000)
}

fn io_err<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ResourceError + 'a {
    move |source| ResourceError::Io { step, path: path.to_owned(), source }
}

/// The whole disk (major, minor) of a device node, or of the file system a path is on
/// (throttling works on disks, not partitions).
fn whole_disk(path: &Path) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let md = fs::metadata(path)?;
    let dev = if md.file_type().is_block_device() { md.rdev() } else { md.dev() };
    let (major, minor) = (libc::major(dev) as u64, libc::minor(dev) as u64);
    let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    if !sys.exists() {
        return Err(io::Error::other(format!(
            "{major}:{minor} is not a block device (a virtual file system?)"
        )));
    }
    if sys.join("partition").exists() {
        let parent = fs::read_to_string(sys.join("../dev"))?;
        let (a, b) = parent.trim().split_once(':').ok_or_else(|| io::Error::other("bad dev file"))?;
        return Ok((a.parse().map_err(io::Error::other)?, b.parse().map_err(io::Error::other)?));
    }
    Ok((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Property {
        Property::parse(s).unwrap()
    }

    #[test]
    fn parses_systemd_syntax() {
        assert_eq!(p("MemoryMax=512M"), Property::MemoryMax(Limit::Value(512 << 20)));
        assert_eq!(p("MemoryMax=1.5G"), Property::MemoryMax(Limit::Value(3 << 29)));
        assert_eq!(p("MemoryHigh=infinity"), Property::MemoryHigh(Limit::Infinity));
        assert_eq!(p("MemorySwapMax="), Property::MemorySwapMax(Limit::Infinity));
        assert_eq!(p("TasksMax=50"), Property::TasksMax(Limit::Value(50)));
        assert_eq!(p("CPUQuota=150%"), Property::CpuQuota(Some(1_500_000)));
        assert_eq!(p("CPUQuota=20%").to_string(), "CPUQuota=20%");
        assert_eq!(p("CPUQuota=12.5%").to_string(), "CPUQuota=12.5%");
        assert_eq!(p(&p("CPUQuota=0.05%").to_string()), p("CPUQuota=0.05%"));
        assert_eq!(p("CPUWeight=200"), Property::CpuWeight(Some(200)));
        assert_eq!(p("AllowedCPUs=0-1,3"), Property::AllowedCpus("0-1,3".into()));
        assert_eq!(
            p("IOReadBandwidthMax=/dev/sda 10M"),
            Property::IoDeviceLimit {
                kind: IoLimitKind::ReadBandwidth,
                device: "/dev/sda".into(),
                limit: Limit::Value(10 << 20)
            }
        );
        assert_eq!(p("MemoryMax=64M").to_string(), "MemoryMax=67108864");
        assert!(matches!(p("MemoryMax=50%"), Property::MemoryMax(Limit::Value(n)) if n > 0));
    }

    #[test]
    fn systemd_gets_its_own_types() {
        assert_eq!(p("CPUQuota=20%").systemd_name(), "CPUQuotaPerSecUSec");
        assert_eq!(p("CPUQuota=20%").systemd_value(), SystemdValue::Number(200_000));
        assert_eq!(p("MemoryMax=infinity").systemd_value(), SystemdValue::Number(u64::MAX));
        assert_eq!(p("AllowedCPUs=0,2,9").systemd_value(), SystemdValue::Bytes(vec![0b101, 0b10]));
        assert_eq!(
            p("IOWriteIOPSMax=/dev/vda 100").systemd_value(),
            SystemdValue::DeviceLimits(vec![("/dev/vda".into(), 100)])
        );
    }

    #[test]
    fn refuses_bad_values_naming_them() {
        for (bad, needle) in [
            ("MemoryMax=lots", "invalid MemoryMax=lots: expected bytes"),
            ("MemoryMax=-5M", "invalid MemoryMax=-5M"),
            ("CPUQuota=20", "expected a percentage"),
            ("CPUWeight=0", "from 1 to 10000"),
            ("AllowedCPUs=3-1", "CPU list"),
            ("IOReadBandwidthMax=10M", "DEVICE LIMIT"),
            ("MemoryLimit=1G", "unknown resource property 'MemoryLimit=1G'"),
            ("MemoryMax", "expected NAME=VALUE"),
        ] {
            let e = Property::parse(bad).unwrap_err().to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    /// A machine directory laid out as cgroupfs shows it, files with their initial contents.
    fn tree(dir: &Path, files: &[(&str, &str)]) {
        fs::create_dir_all(dir).unwrap();
        for (f, v) in files {
            fs::write(dir.join(f), v).unwrap();
        }
    }

    #[test]
    fn writes_cgroup2_files() {
        let t = tempfile::tempdir().unwrap();
        let unified = t.path().join("unified/mctl/web");
        tree(
            &unified,
            &[
                ("cgroup.controllers", "cpuset cpu io memory pids\n"),
                ("memory.max", "max\n"),
                ("memory.high", "max\n"),
                ("memory.swap.max", "max\n"),
                ("pids.max", "max\n"),
                ("cpu.weight", "100\n"),
                ("cpu.max", "max 100000\n"),
                ("cpuset.cpus", "\n"),
                ("io.weight", "default 100\n"),
                ("memory.current", "1234\n"),
                ("memory.peak", "4321\n"),
                ("memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n"),
                ("pids.current", "7\n"),
                ("cpu.stat", "usage_usec 2500\nuser_usec 2000\n"),
                ("io.stat", "8:0 rbytes=100 wbytes=20 rios=1\n8:16 rbytes=5 wbytes=1\n"),
            ],
        );
        let dirs = MachineDirs { unified: unified.clone(), v1: Vec::new(), unit: None };
        for a in [
            "MemoryMax=64M",
            "MemoryHigh=32M",
            "MemorySwapMax=0",
            "TasksMax=50",
            "CPUWeight=200",
            "CPUQuota=20%",
            "AllowedCPUs=0",
            "IOWeight=50",
        ] {
            dirs.apply(&p(a)).unwrap();
        }
        let read = |f: &str| fs::read_to_string(unified.join(f)).unwrap();
        assert_eq!(read("memory.max"), "67108864");
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("pids.max"), "50");
        assert_eq!(read("cpu.max"), "20000 100000");
        assert_eq!(read("io.weight"), "default 50");
        let l = dirs.limits();
        assert_eq!((l.memory_max, l.memory_high, l.tasks_max), (64 << 20, 32 << 20, 50));
        assert_eq!((l.cpu_weight, l.cpu_quota_per_sec_usec, l.io_weight), (200, 200_000, 50));
        assert_eq!(l.allowed_cpus, "0");
        dirs.apply(&p("MemoryMax=infinity")).unwrap();
        assert_eq!(read("memory.max"), "max");
        assert_eq!(dirs.limits().memory_max, u64::MAX);
        let u = dirs.usage();
        assert_eq!(u.cpu_usage_ns, Some(2_500_000));
        assert_eq!((u.memory_current, u.memory_peak, u.oom_kills), (Some(1234), Some(4321), Some(1)));
        assert_eq!((u.tasks_current, u.io_read_bytes, u.io_write_bytes), (Some(7), Some(105), Some(21)));
    }

    #[test]
    fn writes_v1_controllers_on_hybrid_hosts() {
        let t = tempfile::tempdir().unwrap();
        let unified = t.path().join("unified/mctl/web");
        tree(&unified, &[("cgroup.controllers", ""), ("cpu.stat", "usage_usec 1\n")]);
        let v1 = |c: &str| t.path().join(c).join("mctl/web");
        tree(
            &v1("memory"),
            &[
                ("memory.limit_in_bytes", "9223372036854771712\n"),
                ("memory.usage_in_bytes", "2048\n"),
                ("memory.max_usage_in_bytes", "4096\n"),
                ("memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"),
            ],
        );
        tree(
            &v1("memory").join("payload"),
            &[("memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")],
        );
        tree(&v1("pids"), &[("pids.max", "max\n"), ("pids.current", "3\n")]);
        tree(
            &v1("cpu"),
            &[("cpu.shares", "1024\n"), ("cpu.cfs_quota_us", "-1\n"), ("cpu.cfs_period_us", "100000\n")],
        );
        tree(&v1("cpuacct"), &[("cpuacct.usage", "999\n")]);
        tree(&t.path().join("cpuset/mctl"), &[("cpuset.cpus", "0-1\n")]);
        tree(&v1("cpuset"), &[("cpuset.cpus", "0-1\n")]);
        tree(
            &v1("blkio"),
            &[(
                "blkio.throttle.io_service_bytes_recursive",
                "8:0 Read 10\n8:0 Write 4\n8:0 Total 14\nTotal 14\n",
            )],
        );
        let dirs = MachineDirs {
            unified,
            v1: ["memory", "pids", "cpu", "cpuacct", "cpuset", "blkio"]
                .iter()
                .map(|c| (vec![(*c).to_owned()], v1(c)))
                .collect(),
            unit: None,
        };
        for a in ["MemoryMax=64M", "TasksMax=50", "CPUWeight=50", "CPUQuota=20%", "AllowedCPUs=1"] {
            dirs.apply(&p(a)).unwrap();
        }
        let read = |c: &str, f: &str| fs::read_to_string(v1(c).join(f)).unwrap();
        assert_eq!(read("memory", "memory.limit_in_bytes"), "67108864");
        assert_eq!(read("cpu", "cpu.shares"), "512");
        assert_eq!(read("cpu", "cpu.cfs_quota_us"), "20000");
        let l = dirs.limits();
        assert_eq!(
            (l.memory_max, l.tasks_max, l.cpu_weight, l.cpu_quota_per_sec_usec),
            (64 << 20, 50, 50, 200_000)
        );
        dirs.apply(&p("AllowedCPUs=")).unwrap();
        assert_eq!(read("cpuset", "cpuset.cpus"), "0-1");
        dirs.apply(&p("MemoryMax=")).unwrap();
        assert_eq!(read("memory", "memory.limit_in_bytes"), "-1");
        // What v1 cannot express is refused, naming the property and why.
        let e = dirs.apply(&p("MemoryHigh=32M")).unwrap_err().to_string();
        assert!(
            e.starts_with(
                "MemoryHigh=33554432 cannot be applied on this host: the memory controller is cgroup v1"
            ),
            "{e}"
        );
        let e = dirs.apply(&p("IOWeight=10")).unwrap_err().to_string();
        assert!(e.contains("blkio.weight does not exist"), "{e}");
        let u = dirs.usage();
        assert_eq!(
            (u.cpu_usage_ns, u.memory_current, u.memory_peak, u.oom_kills),
            (Some(999), Some(2048), Some(4096), Some(5))
        );
        assert_eq!((u.tasks_current, u.io_read_bytes, u.io_write_bytes), (Some(3), Some(10), Some(4)));
    }

    #[test]
    fn a_missing_controller_is_named() {
        let t = tempfile::tempdir().unwrap();
        let unified = t.path().join("web");
        tree(&unified, &[("cgroup.controllers", "cpu\n")]);
        let dirs = MachineDirs { unified, v1: Vec::new(), unit: None };
        let e = dirs.apply(&p("TasksMax=5")).unwrap_err().to_string();
        assert!(
            e.contains("TasksMax=5 cannot be applied on this host: the pids controller is neither"),
            "{e}"
        );
    }

    #[test]
    fn machine_dirs_of_a_process_cut_the_guest_part_off() {
        let mi = "\
31 30 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
33 30 0:30 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
";
        let hs =
            super::super::parse_hierarchies(mi, "4:memory:/\n0::/\n", Path::new("/sys/fs/cgroup")).unwrap();
        let pc =
            "4:memory:/a/mctl/web/payload\n0::/mctl/web/payload/init.scope/mctl/web/payload\n1:name=x:/\n";
        let d = MachineDirs::of_process(&hs, pc, "web").unwrap();
        assert_eq!(d.unified, Path::new("/sys/fs/cgroup/unified/mctl/web"));
        assert_eq!(
            d.v1,
            vec![(vec!["memory".to_owned()], PathBuf::from("/sys/fs/cgroup/memory/a/mctl/web"))]
        );
        assert_eq!(d.unit, None);
        assert_eq!(MachineDirs::of_process(&hs, "0::/user.slice\n", "web"), None);
        // A machine named like a unit is still mctl's own cgroup, never a host unit's.
        let d = MachineDirs::of_process(&hs, "0::/mctl/ssh.service/payload\n", "ssh.service").unwrap();
        assert_eq!(d.unit, None);
        let d =
            MachineDirs::of_process(&hs, "0::/machine.slice/mctl@web.service/payload/init.scope\n", "web")
                .unwrap();
        assert_eq!(d.unit.as_deref(), Some("mctl@web.service"));
    }
}
