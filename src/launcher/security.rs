//! The machine's privileges: capability bounding set and resource limits.

use std::collections::HashSet;
use std::str::FromStr;

use caps::{CapSet, Capability, CapsHashSet};
use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// The capabilities a machine keeps by default: nspawn's set (CONTAINER_INTERFACE asks never
/// to drop SYS_ADMIN or MKNOD; SYS_BOOT lets systemd report poweroff and reboot).
pub const DEFAULT_CAPS: [Capability; 26] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_DAC_READ_SEARCH,
    Capability::CAP_FOWNER,
    Capability::CAP_FSETID,
    Capability::CAP_KILL,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETPCAP,
    Capability::CAP_LINUX_IMMUTABLE,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_NET_BROADCAST,
    Capability::CAP_NET_RAW,
    Capability::CAP_IPC_OWNER,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_SYS_PTRACE,
    Capability::CAP_SYS_ADMIN,
    Capability::CAP_SYS_BOOT,
    Capability::CAP_SYS_NICE,
    Capability::CAP_SYS_RESOURCE,
    Capability::CAP_SYS_TTY_CONFIG,
    Capability::CAP_MKNOD,
    Capability::CAP_LEASE,
    Capability::CAP_AUDIT_WRITE,
    Capability::CAP_AUDIT_CONTROL,
    Capability::CAP_SETFCAP,
];

/// `--capability` / `--drop-capability` requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapabilityAdjust {
    /// Added to the default set.
    pub add: CapsHashSet,
    /// Removed from it (wins over `add`).
    pub drop: CapsHashSet,
    /// `--ambient-capability`: kept in the bounding set and raised in the payload's ambient
    /// set, so a payload running as another user keeps them across exec.
    pub ambient: CapsHashSet,
}

/// A capability list that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown capability '{0}' (use names such as CAP_NET_ADMIN, or 'all')")]
pub struct BadCapability(pub String);

/// Parses a comma-separated list of capability names (with or without `CAP_`), or `all`.
pub fn parse_caps(list: &str) -> Result<CapsHashSet, BadCapability> {
    let mut out = HashSet::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if item.eq_ignore_ascii_case("all") {
            out.extend(caps::all());
            continue;
        }
        let upper = item.to_ascii_uppercase();
        let full = if upper.starts_with("CAP_") { upper } else { format!("CAP_{upper}") };
        out.insert(Capability::from_str(&full).map_err(|_| BadCapability(item.to_owned()))?);
    }
    Ok(out)
}

impl CapabilityAdjust {
    /// The set a machine gets: defaults plus additions minus drops.
    pub fn wanted(&self) -> CapsHashSet {
        let mut set: CapsHashSet = DEFAULT_CAPS.into_iter().collect();
        set.extend(self.add.iter().copied());
        set.extend(self.ambient.iter().copied());
        set.retain(|c| !self.drop.contains(c));
        set
    }
}

/// Splits `wanted` into what the host's bounding set (`bounding`, from /proc when known) grants
/// and what it does not.
pub fn grantable(wanted: &CapsHashSet, bounding: Option<&CapsHashSet>) -> (CapsHashSet, Vec<Capability>) {
    // The caps crate asks the kernel about each capability with a system call of its own.
    let asked;
    let bounding = match bounding {
        Some(set) => set,
        None => {
            asked = caps::read(None, CapSet::Bounding).unwrap_or_default();
            &asked
        }
    };
    let mut missing: Vec<Capability> = wanted.difference(bounding).copied().collect();
    missing.sort_by_key(|c| c.index());
    (wanted.intersection(bounding).copied().collect(), missing)
}

/// Makes `keep` the bounding and the inheritable set, so that the exec'ed payload (root) ends
/// up with exactly `keep` in its permitted, effective and inheritable sets, as under nspawn.
pub fn apply_bounding_set(keep: &CapsHashSet) -> Result<(), caps::errors::CapsError> {
    for cap in caps::all().into_iter().filter(|c| !keep.contains(c)) {
        // Dropping what is not held succeeds: no need to ask first. A capability this kernel
        // does not know (EINVAL) is in no bounding set.
        if let Err(e) = caps::drop(None, CapSet::Bounding, cap)
            && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false)
        {
            return Err(e);
        }
    }
    caps::set(None, CapSet::Inheritable, keep)
}

/// Limits the permitted, effective and inheritable sets to `keep` (the bounding set should be
/// `keep` already): what a process entering a machine holds before it executes.
pub fn limit_capabilities(keep: &CapsHashSet) -> Result<(), caps::errors::CapsError> {
    for set in [CapSet::Inheritable, CapSet::Effective, CapSet::Permitted] {
        let current = caps::read(None, set)?;
        caps::set(None, set, &current.intersection(keep).copied().collect())?;
    }
    Ok(())
}

/// Raises `ambient` in the ambient set (after adding it to the inheritable set, which the
/// kernel requires). The capabilities must still be permitted: for a payload that changed its
/// user, keep them with [`keep_capabilities_across_setuid`] first.
pub fn raise_ambient(ambient: &CapsHashSet) -> Result<(), caps::errors::CapsError> {
    if ambient.is_empty() {
        return Ok(());
    }
    let mut inheritable = caps::read(None, CapSet::Inheritable)?;
    inheritable.extend(ambient.iter().copied());
    caps::set(None, CapSet::Inheritable, &inheritable)?;
    for c in ambient {
        caps::raise(None, CapSet::Ambient, *c)?;
    }
    Ok(())
}

/// Keeps the permitted capabilities when this process next gives up uid 0.
pub fn keep_capabilities_across_setuid() -> nix::Result<()> {
    nix::sys::prctl::set_keepcaps(true)
}

/// Resource limits like those the kernel gives a real PID 1, clamped to what the host allows
/// (raising a hard limit needs CAP_SYS_RESOURCE, which a host may not grant).
pub fn apply_machine_rlimits() -> nix::Result<()> {
    const MIB: u64 = 1024 * 1024;
    let table: [(Resource, u64, Option<u64>); 6] = [
        (Resource::RLIMIT_NOFILE, 1024, None),
        (Resource::RLIMIT_CORE, 0, None),
        (Resource::RLIMIT_STACK, 8 * MIB, None),
        (Resource::RLIMIT_MEMLOCK, 8 * MIB, Some(8 * MIB)),
        (Resource::RLIMIT_NICE, 0, Some(0)),
        (Resource::RLIMIT_RTPRIO, 0, Some(0)),
    ];
    for (res, soft, hard) in table {
        let (_, cur_hard) = getrlimit(res)?;
        let hard = hard.map_or(cur_hard, |h| h.min(cur_hard));
        setrlimit(res, soft.min(hard), hard)?;
    }
    Ok(())
}

/// Takes the ids of root in the user namespace this process was born into or joined: host
/// root's ids are not mapped there, and a process holding them would own host root's files.
pub(crate) fn become_namespace_root() -> std::io::Result<()> {
    let (uid, gid) = (nix::unistd::Uid::from_raw(0), nix::unistd::Gid::from_raw(0));
    nix::unistd::setgroups(&[])?;
    nix::unistd::setresgid(gid, gid, gid)?;
    nix::unistd::setresuid(uid, uid, uid)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjusts_defaults() {
        let adj = CapabilityAdjust {
            ambient: Default::default(),
            add: parse_caps("net_admin,CAP_SYS_TIME").unwrap(),
            drop: parse_caps("CAP_SYS_ADMIN").unwrap(),
        };
        let set = adj.wanted();
        assert!(set.contains(&Capability::CAP_NET_ADMIN));
        assert!(set.contains(&Capability::CAP_SYS_TIME));
        assert!(!set.contains(&Capability::CAP_SYS_ADMIN));
        assert_eq!(set.len(), 27);
        assert!(parse_caps("CAP_BOGUS").is_err());
        assert_eq!(parse_caps("all").unwrap().len(), caps::all().len());
    }
}
