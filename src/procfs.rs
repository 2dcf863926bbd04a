//! What the manager learns about a machine from `/proc` of its leader.

use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use crate::guestfs::{self, GuestFileError};
use crate::osrelease::parse_os_release;
use crate::sys::linux::read_kernel_file;

/// The process's start time in clock ticks since boot (field 22 of `/proc/PID/stat`); tells a
/// process from a later one that reuses its pid.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = read_kernel_file(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

/// The process's cgroup2 path (`/a/b`), as the host sees it.
pub fn cgroup2_path(pid: u32) -> Option<String> {
    let s = read_kernel_file(format!("/proc/{pid}/cgroup")).ok()?;
    s.lines().find_map(|l| l.strip_prefix("0::")).map(str::to_owned)
}

/// The systemd unit a machine runs in, from its payload cgroup: the launcher's cgroup is
/// `<unit cgroup>/payload` (with `--keep-unit`) or `<unit cgroup>/mctl/NAME/payload`; machined
/// records a unit only when that cgroup is named like one.
pub fn unit_from_cgroup(cgroup: &str, name: &str) -> String {
    let mut path = cgroup.trim_end_matches('/');
    if let Some(i) = path.rfind("/payload") {
        path = &path[..i];
    }
    if let Some(stripped) = path.strip_suffix(&format!("/mctl/{name}")) {
        path = stripped;
    }
    let last = path.rsplit('/').next().unwrap_or("");
    if last.ends_with(".service") || last.ends_with(".scope") { last.to_owned() } else { String::new() }
}

/// The cgroup mctl's launcher made for machine `name`, if `cgroup` (its leader's) is in one:
/// `.../mctl/NAME/payload`, or `<unit>/payload` with `--keep-unit` (in a cgroup named like a
/// unit), or a cgroup below either (the guest's init may have moved itself down). Any other
/// cgroup a registered leader happens to be in (a service's, a session's) is not the machine's
/// to kill or freeze.
pub fn machine_cgroup<'a>(cgroup: &'a str, name: &str) -> Option<&'a str> {
    let c = cgroup.trim_end_matches('/');
    let own = format!("/mctl/{name}");
    c.match_indices("/payload").map(|(i, _)| i).find_map(|i| {
        let (parent, rest) = (&c[..i], &c[i + "/payload".len()..]);
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        let last = parent.rsplit('/').next().unwrap_or("");
        let made_by_mctl = parent.ends_with(&own) || last.ends_with(".service") || last.ends_with(".scope");
        made_by_mctl.then_some(&c[..i + "/payload".len()])
    })
}

/// Whether `pid` is PID 1 of a pid namespace below ours: `NSpid` lists its pid in each
/// namespace from ours down to its own.
pub fn is_pidns_init(pid: u32) -> bool {
    let Ok(status) = read_kernel_file(format!("/proc/{pid}/status")) else { return false };
    status.lines().find_map(|l| l.strip_prefix("NSpid:")).is_some_and(|v| {
        let ids: Vec<&str> = v.split_whitespace().collect();
        ids.len() > 1 && ids.last() == Some(&"1")
    })
}

/// The machine's os-release, read through its root as a guest file: confined to the root,
/// never waiting on a FIFO, regular files only, size capped (see [`guestfs`]).
pub fn os_release(pid: u32) -> Result<Vec<(String, String)>, GuestFileError> {
    os_release_under(&format!("/proc/{pid}/root"))
}

/// A process's `/proc/PID` directory, opened once for several lookups: every path through
/// `/proc/PID` costs a pid lookup and an access check of its own (what dominates listing a
/// thousand machines).
#[derive(Debug)]
pub struct ProcDir(rustix::fd::OwnedFd);

impl ProcDir {
    /// Opens `/proc/PID` (as a path only).
    pub fn open(pid: u32) -> io::Result<ProcDir> {
        use rustix::fs::{Mode, OFlags};
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        Ok(ProcDir(rustix::fs::open(format!("/proc/{pid}"), flags, Mode::empty())?))
    }

    /// The inode of the process's namespace `ns` (`net`, `pid`, ...).
    pub fn ns_inode(&self, ns: &str) -> Option<u64> {
        rustix::fs::statat(&self.0, format!("ns/{ns}"), rustix::fs::AtFlags::empty()).ok().map(|st| st.st_ino)
    }

    /// The process's os-release, as [`os_release`] reads it.
    pub fn os_release(&self) -> Result<Vec<(String, String)>, GuestFileError> {
        use rustix::fs::{Mode, OFlags};
        let root = rustix::fs::openat(
            &self.0,
            "root",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| GuestFileError::Open { path: "/".into(), source: e.into() })?;
        os_release_in(root.as_fd())
    }
}

/// The os-release fields of the tree at `root` (read as a guest's: confined, capped).
pub fn os_release_under(root: &str) -> Result<Vec<(String, String)>, GuestFileError> {
    let root = fs::File::open(root).map_err(|source| GuestFileError::Open { path: "/".into(), source })?;
    os_release_in(root.as_fd())
}

/// The os-release fields below the open root directory `root`.
fn os_release_in(root: std::os::fd::BorrowedFd<'_>) -> Result<Vec<(String, String)>, GuestFileError> {
    let text = guestfs::read_first(root, &crate::osrelease::PATHS, guestfs::SMALL_FILE_LIMIT)?;
    Ok(parse_os_release(&text))
}

/// The machine's UID shift: 0 without a user namespace.
pub fn uid_shift(pid: u32) -> io::Result<u32> {
    Ok(user_namespace_range(pid)?.map_or(0, |r| r.start))
}

/// Whether this process runs in a user namespace other than the host's (inside a machine
/// with one).
pub fn in_user_namespace() -> bool {
    user_namespace_range(std::process::id()).is_ok_and(|r| r.is_some())
}

/// The host ids the user namespace of `pid` maps its ids 0.. onto (None: the host's own
/// namespace, or a map not of that form).
pub fn user_namespace_range(pid: u32) -> io::Result<Option<crate::userns::IdRange>> {
    let map = read_kernel_file(format!("/proc/{pid}/uid_map"))?;
    let first: Vec<u32> =
        map.lines().next().unwrap_or("").split_whitespace().filter_map(|f| f.parse().ok()).collect();
    Ok(match first[..] {
        [0, 0, u32::MAX] => None,
        [0, start, count] => Some(crate::userns::IdRange { start, count }),
        _ => None,
    })
}

fn ns_inode(pid: &str, ns: &str) -> Option<u64> {
    fs::metadata(format!("/proc/{pid}/ns/{ns}")).ok().map(|m| m.ino())
}

/// Whether the process shares the manager's network namespace.
pub fn shares_host_netns(pid: u32) -> bool {
    netns_inode(pid) == netns_inode(std::process::id())
}

/// The inode of the process's network namespace (compare with another's to tell them apart).
pub fn netns_inode(pid: u32) -> Option<u64> {
    ns_inode(&pid.to_string(), "net")
}

/// Every process in `leader`'s pid namespace.
pub fn pids_in_pidns(leader: u32) -> Vec<i32> {
    let Some(target) = ns_inode(&leader.to_string(), "pid") else { return Vec::new() };
    let Ok(rd) = fs::read_dir("/proc") else { return Vec::new() };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter(|pid| ns_inode(&pid.to_string(), "pid") == Some(target))
        .collect()
}

/// Whether `pid` is in the same pid namespace as `leader` (or is the leader).
pub fn in_pidns_of(pid: u32, leader: u32) -> bool {
    pid == leader || {
        let t = ns_inode(&leader.to_string(), "pid");
        t.is_some() && ns_inode(&pid.to_string(), "pid") == t
    }
}

/// The process's command name.
pub fn comm(pid: u32) -> String {
    read_kernel_file(format!("/proc/{pid}/comm")).map(|s| s.trim().to_owned()).unwrap_or_default()
}

/// A path field of `/proc/PID/mountinfo` with its octal escapes (space, tab, newline,
/// backslash) decoded.
pub fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

/// The capability bounding set of `pid` (`CapBnd:` of `/proc/PID/status`).
pub fn bounding_set(pid: u32) -> io::Result<caps::CapsHashSet> {
    let status = read_kernel_file(format!("/proc/{pid}/status"))?;
    status_caps(&status, "CapBnd:")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no CapBnd line"))
}

/// What a launcher needs to know of itself from `/proc/self/status`, read once. `None` where
/// the file or the field could not be read.
#[derive(Debug, Clone, Default)]
pub struct OwnStatus {
    /// The capability bounding set.
    pub bounding: Option<caps::CapsHashSet>,
    /// The signals ignored (a mask with bit N-1 for signal N), which children inherit.
    pub ignored_signals: Option<u64>,
}

/// Reads [`OwnStatus`] of the calling process.
pub fn own_status() -> OwnStatus {
    match read_kernel_file("/proc/self/status") {
        Ok(s) => {
            OwnStatus { bounding: status_caps(&s, "CapBnd:"), ignored_signals: status_mask(&s, "SigIgn:") }
        }
        Err(_) => OwnStatus::default(),
    }
}

fn status_caps(status: &str, field: &str) -> Option<caps::CapsHashSet> {
    let bits = status_mask(status, field)?;
    Some(caps::all().into_iter().filter(|c| c.index() < 64 && bits & (1u64 << c.index()) != 0).collect())
}

/// A hex mask field (`CapBnd:`, `SigIgn:`, ...) of a `/proc/PID/status` text.
fn status_mask(status: &str, field: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix(field))?.trim();
    u64::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bounding_set_from_proc_is_the_kernel_s() {
        let kernel = caps::read(None, caps::CapSet::Bounding).unwrap();
        assert_eq!(bounding_set(std::process::id()).unwrap(), kernel);
        assert_eq!(status_mask("Name:\tx\nCapBnd:\t0000000000200000\n", "CapBnd:"), Some(0x200000));
        assert_eq!(status_mask("Name:\tx\n", "CapBnd:"), None);
    }

    #[test]
    fn units_from_cgroups() {
        assert_eq!(unit_from_cgroup("/system.slice/mctl@web.service/payload", "web"), "mctl@web.service");
        assert_eq!(
            unit_from_cgroup("/system.slice/mctl@web.service/payload/init.scope", "web"),
            "mctl@web.service"
        );
        assert_eq!(
            unit_from_cgroup("/user.slice/session-3.scope/mctl/web/payload", "web"),
            "session-3.scope"
        );
        assert_eq!(unit_from_cgroup("/mctl/web/payload", "web"), "");
        assert_eq!(unit_from_cgroup("/", "web"), "");
    }

    #[test]
    fn machine_cgroups() {
        let mc = machine_cgroup;
        assert_eq!(mc("/mctl/web/payload", "web"), Some("/mctl/web/payload"));
        assert_eq!(
            mc("/user.slice/session-3.scope/mctl/web/payload", "web"),
            Some("/user.slice/session-3.scope/mctl/web/payload")
        );
        assert_eq!(
            mc("/system.slice/mctl@web.service/payload/", "web"),
            Some("/system.slice/mctl@web.service/payload")
        );
        // Below the payload: the payload is the machine's cgroup.
        assert_eq!(mc("/mctl/web/payload/init.scope", "web"), Some("/mctl/web/payload"));
        // Another machine's, a service's own, a cgroup merely named `payload`, the root.
        assert_eq!(mc("/mctl/other/payload", "web"), None);
        assert_eq!(mc("/system.slice/ssh.service", "web"), None);
        assert_eq!(mc("/mh-shared/payload", "web"), None);
        assert_eq!(mc("/mctl/web/payloads", "web"), None);
        assert_eq!(mc("/payload", "web"), None);
        assert_eq!(mc("/", "web"), None);
        assert_eq!(mc("", "web"), None);
    }

    #[test]
    fn own_process_facts() {
        let me = std::process::id();
        assert!(start_time(me).is_some());
        assert!(shares_host_netns(me));
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        assert!(in_pidns_of(child.id(), me));
        assert!(!is_pidns_init(child.id()) && !is_pidns_init(me));
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(uid_shift(me).unwrap(), 0);
    }
}
