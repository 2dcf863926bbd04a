//! User namespaces for machines (`--private-users`): which host ids a machine's ids map onto,
//! and picking a free range of them.
//!
//! A picked range is free when no user namespace on the host maps onto it (every process's
//! `/proc/PID/uid_map` and `gid_map`, so podman's and nspawn's machines count too) and no host
//! user, group or delegated range (`/etc/passwd`, `/etc/group`, `/etc/subuid`, `/etc/subgid`)
//! lies in it. Launchers pick under one lock, held until their namespace exists.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use nix::fcntl::{Flock, FlockArg};

/// The ids a machine gets by default: 0..65535, as nspawn and LXC.
pub const RANGE_SIZE: u32 = 0x10000;
/// The user whose `/etc/subuid` and `/etc/subgid` delegations `pick` takes its ranges from.
pub const DELEGATE: &str = "mctl";
/// Where picking starts and ends (nspawn's container range, 0x80000..0x6FFFFFFF), without a
/// delegation.
const PICK_FIRST: u32 = 0x0008_0000;
const PICK_LAST: u32 = 0x6FFF_0000;

/// A user namespace with the id maps `uid_map` and `gid_map` (`/proc/PID/uid_map` lines),
/// held by the returned fd alone: a child makes it and exits once the parent has it. For
/// idmapped mounts, which take their mapping from a user namespace.
pub fn mapped_namespace(uid_map: &str, gid_map: &str) -> io::Result<OwnedFd> {
    use crate::sys::linux::{self, Forked};
    use std::io::Read;
    let (wait, go) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (wait, go) = (File::from(wait), File::from(go));
    let pid = match linux::fork()? {
        Forked::Child => {
            drop(go);
            let mut byte = [0u8; 1];
            if nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).is_ok() {
                // Held until the parent has the namespace (the pipe closes).
                let _ = (&wait).read(&mut byte);
            }
            linux::exit_now(0)
        }
        Forked::Parent(pid) => pid,
    };
    drop(wait);
    let made = (|| {
        // The child is in its namespace once its map can be written.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let uid_file = format!("/proc/{pid}/uid_map");
        while let Err(e) = std::fs::write(&uid_file, uid_map) {
            if std::time::Instant::now() > deadline || e.raw_os_error() == Some(libc::EINVAL) {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot write the uid map '{}': {e}", uid_map.trim()),
                ));
            }
            std::thread::yield_now();
        }
        std::fs::write(format!("/proc/{pid}/gid_map"), gid_map).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot write the gid map '{}': {e}", gid_map.trim()))
        })?;
        File::open(format!("/proc/{pid}/ns/user")).map(OwnedFd::from)
    })();
    drop(go);
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    made
}

/// Host ids `start..start+count`, onto which a machine's ids `0..count` map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    /// The host id of the machine's root.
    pub start: u32,
    /// How many ids.
    pub count: u32,
}

impl IdRange {
    fn end(&self) -> u64 {
        u64::from(self.start) + u64::from(self.count)
    }

    /// Whether the two ranges share an id.
    pub fn overlaps(&self, other: &IdRange) -> bool {
        u64::from(self.start) < other.end() && u64::from(other.start) < self.end()
    }

    /// The line written to `uid_map`/`gid_map`.
    pub fn map_line(&self) -> String {
        format!("0 {} {}\n", self.start, self.count)
    }
}

impl fmt::Display for IdRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.start, self.count)
    }
}

/// `--private-users=`, with nspawn's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PrivateUsers {
    /// No user namespace: the machine's root is the host's root.
    #[default]
    No,
    /// `yes`: a user namespace whose range follows the owner of the tree's root directory.
    FromRoot,
    /// `identity`: a user namespace mapping 0..65535 onto the same host ids.
    Identity,
    /// `pick` (`-U`): a free range, the image's previous one when it is still free.
    Pick,
    /// `UID[:COUNT]`: exactly this range.
    Fixed(IdRange),
}

impl PrivateUsers {
    /// Whether the machine gets a user namespace.
    pub fn enabled(&self) -> bool {
        *self != PrivateUsers::No
    }
}

/// A value of `--private-users` or `--private-users-ownership` that means nothing.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(String);

impl FromStr for PrivateUsers {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        match s {
            "yes" | "true" | "on" | "1" => return Ok(PrivateUsers::FromRoot),
            "no" | "false" | "off" | "0" => return Ok(PrivateUsers::No),
            "pick" => return Ok(PrivateUsers::Pick),
            "identity" => return Ok(PrivateUsers::Identity),
            _ => {}
        }
        let bad = |why: &str| {
            ParseError(format!(
                "invalid --private-users '{s}': {why} (expected yes, no, pick, identity or UID[:COUNT])"
            ))
        };
        let (start, count) = match s.split_once(':') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let start: u32 = start.parse().map_err(|_| bad("not a user id"))?;
        let count: u32 = match count {
            Some(c) => c.parse().map_err(|_| bad("not a count of ids"))?,
            None => RANGE_SIZE,
        };
        if count == 0 {
            return Err(bad("the range is empty"));
        }
        let range = IdRange { start, count };
        // uid 4294967295 is (uid_t)-1, which no map may contain.
        if range.end() > u64::from(u32::MAX) {
            return Err(bad("the range runs past the last user id"));
        }
        Ok(PrivateUsers::Fixed(range))
    }
}

/// `--private-users-ownership=`: how the image's files appear owned inside the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Ownership {
    /// `map` where the kernel and the file system allow it, else `chown`.
    #[default]
    Auto,
    /// An idmapped mount of the image: the tree on disk keeps its ownership.
    Map,
    /// The tree is chowned into the range once (and back or across on a later range change).
    Chown,
    /// Nothing: files appear as on disk, mostly as nobody inside.
    Off,
}

/// What went wrong choosing a range.
#[derive(Debug, thiserror::Error)]
pub enum RangeError {
    /// Asked-for ids already in use.
    #[error(
        "the id range {range} overlaps {what}; choose another with --private-users=UID[:COUNT] or use -U"
    )]
    InUse {
        /// The asked-for range.
        range: IdRange,
        /// What uses it.
        what: String,
    },
    /// Every candidate is taken.
    #[error(
        "no free range of {RANGE_SIZE} user ids is left to pick (between {PICK_FIRST} and {PICK_LAST}, or in the \
         ranges /etc/subuid and /etc/subgid delegate to {DELEGATE})"
    )]
    Exhausted,
    /// Inside a machine with a user namespace of its own: only its ids can be mapped again.
    #[error(
        "the id range {range} is not among the {available} ids this machine's user namespace maps; a nested \
         machine needs a range inside them (--private-users=UID:COUNT), or none"
    )]
    OutsideNamespace {
        /// The asked-for range.
        range: IdRange,
        /// How many ids this namespace maps (0..available).
        available: u32,
    },
    /// A file needed for the choice could not be read or locked.
    #[error("cannot {step} {}: {source}", path.display())]
    Io {
        /// The step.
        step: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Where the host's id users are: `/etc` and `/proc` (parameters so tests can fake a host).
#[derive(Debug, Clone)]
pub struct HostIds {
    /// The directory holding passwd, group, subuid and subgid.
    pub etc: PathBuf,
    /// procfs.
    pub proc: PathBuf,
}

impl Default for HostIds {
    fn default() -> Self {
        HostIds { etc: PathBuf::from("/etc"), proc: PathBuf::from("/proc") }
    }
}

/// A taken id range and who takes it, for the error message.
type Taken = (IdRange, String);

impl HostIds {
    /// Ids named in passwd and group (one each) and ranges delegated in subuid and subgid.
    fn reserved(&self) -> Vec<Taken> {
        let mut out = Vec::new();
        for (file, field) in [("passwd", 2), ("group", 2)] {
            let text = std::fs::read_to_string(self.etc.join(file)).unwrap_or_default();
            for line in text.lines() {
                let fields: Vec<&str> = line.split(':').collect();
                if let Some(id) = fields.get(field).and_then(|f| f.parse::<u32>().ok()) {
                    let who = format!(
                        "host {} {} ({id})",
                        if file == "passwd" { "user" } else { "group" },
                        fields[0]
                    );
                    out.push((IdRange { start: id, count: 1 }, who));
                }
            }
        }
        for file in ["subuid", "subgid"] {
            for (who, range) in self.delegations(file) {
                // mctl's own delegation is where it picks, not someone else's ids.
                if who != DELEGATE {
                    out.push((range, format!("the range delegated to {who} in /etc/{file}")));
                }
            }
        }
        out
    }

    /// The ranges `/etc/FILE` (subuid or subgid) delegates, with whom to.
    fn delegations(&self, file: &str) -> Vec<(String, IdRange)> {
        let text = std::fs::read_to_string(self.etc.join(file)).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split(':').collect();
                match fields[..] {
                    [who, start, count] => Some((
                        who.to_owned(),
                        IdRange { start: start.parse().ok()?, count: count.parse().ok()? },
                    )),
                    _ => None,
                }
            })
            .collect()
    }

    /// Where `pick` looks: the 65536-id blocks delegated to the user `mctl` in both subuid and
    /// subgid (as LXC and podman read them) when there are any, else nspawn's container range.
    fn pick_candidates(&self) -> Vec<IdRange> {
        let mine = |file| -> Vec<IdRange> {
            self.delegations(file).into_iter().filter(|(who, _)| who == DELEGATE).map(|(_, r)| r).collect()
        };
        let (uids, gids) = (mine("subuid"), mine("subgid"));
        let blocks = |r: &IdRange| {
            let first = r.start.div_ceil(RANGE_SIZE);
            // Blocks lie in the 32-bit id space: a line reaching past it ends there (else
            // `b * RANGE_SIZE` would wrap to ids from 0). So `last` is at most 2^16.
            #[allow(clippy::cast_possible_truncation)]
            let last = (r.end().min(1 << 32) / u64::from(RANGE_SIZE)) as u32;
            (first..last).map(|b| IdRange { start: b * RANGE_SIZE, count: RANGE_SIZE }).collect::<Vec<_>>()
        };
        let delegated: Vec<IdRange> = uids
            .iter()
            .flat_map(blocks)
            .filter(|b| gids.iter().any(|g| g.start <= b.start && g.end() >= b.end()))
            .collect();
        if uids.is_empty() && gids.is_empty() {
            (PICK_FIRST..=PICK_LAST)
                .step_by(RANGE_SIZE as usize)
                .map(|start| IdRange { start, count: RANGE_SIZE })
                .collect()
        } else {
            delegated
        }
    }

    /// The host ids every user namespace on the host maps onto, except the host's own.
    fn mapped(&self) -> Vec<Taken> {
        let mut out = Vec::new();
        let Ok(dir) = std::fs::read_dir(&self.proc) else { return out };
        let mut seen = std::collections::HashSet::new();
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) else { continue };
            // One namespace is shared by many processes: read each once.
            let Ok(ns) = std::fs::read_link(entry.path().join("ns/user")) else { continue };
            if !seen.insert(ns) {
                continue;
            }
            for map in ["uid_map", "gid_map"] {
                let text = std::fs::read_to_string(entry.path().join(map)).unwrap_or_default();
                for range in parse_map(&text) {
                    out.push((range, format!("the user namespace of process {pid}")));
                }
            }
        }
        out
    }

    /// The first of `candidates` that nothing on the host uses.
    fn first_free(&self, candidates: impl Iterator<Item = IdRange>) -> Option<IdRange> {
        let taken: Vec<Taken> = self.reserved().into_iter().chain(self.mapped()).collect();
        candidates.into_iter().find(|c| !taken.iter().any(|(t, _)| t.overlaps(c)))
    }

    /// What uses part of `range`, if anything.
    fn user_of(&self, range: &IdRange) -> Option<String> {
        self.reserved().into_iter().chain(self.mapped()).find(|(t, _)| t.overlaps(range)).map(|(_, w)| w)
    }
}

/// The outside ranges of a uid_map/gid_map, leaving out the host's own identity map.
fn parse_map(text: &str) -> Vec<IdRange> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<u32> = l.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            match f[..] {
                [inside, outside, count] if !(inside == 0 && outside == 0 && count == u32::MAX) => {
                    Some(IdRange { start: outside, count })
                }
                _ => None,
            }
        })
        .collect()
}

/// A chosen range, with the lock that keeps other launchers from choosing it until the
/// machine's user namespace exists (drop it after that).
#[derive(Debug)]
pub struct Chosen {
    /// The range.
    pub range: IdRange,
    _lock: Option<Flock<File>>,
}

impl Chosen {
    /// Lets other launchers choose again (call once the machine's namespace exists).
    pub fn release(&mut self) {
        self._lock = None;
    }
}

/// Resolves `--private-users` for the tree at `root` (None: no user namespace). `lock_dir` holds
/// the lock file shared by every launcher; `memory` the range each tree picked last, so an
/// image boots under the same ids each time (nspawn keeps this in the tree's ownership; here the
/// image stays as it is). None: the launch neither reads nor records it.
pub fn choose(
    mode: PrivateUsers,
    root: &Path,
    host: &HostIds,
    lock_dir: &Path,
    memory: Option<&Path>,
) -> Result<Option<Chosen>, RangeError> {
    let fixed = |range| Chosen { range, _lock: None };
    let chosen = match mode {
        PrivateUsers::No => return Ok(None),
        PrivateUsers::Identity => fixed(IdRange { start: 0, count: RANGE_SIZE }),
        PrivateUsers::FromRoot => {
            use std::os::unix::fs::MetadataExt;
            let uid = std::fs::metadata(root)
                .map_err(|e| RangeError::Io { step: "read the owner of", path: root.to_owned(), source: e })?
                .uid();
            fixed(IdRange { start: uid & !(RANGE_SIZE - 1), count: RANGE_SIZE })
        }
        PrivateUsers::Fixed(range) => {
            let lock = lock(lock_dir)?;
            // The identity range is the host's own ids; a fixed range elsewhere must be free.
            if range.start != 0
                && let Some(what) = host.user_of(&range)
            {
                return Err(RangeError::InUse { range, what });
            }
            Chosen { range, _lock: Some(lock) }
        }
        PrivateUsers::Pick => {
            let lock = lock(lock_dir)?;
            let memory = memory.map(|dir| memory_file(dir, root));
            let previous = memory.as_deref().and_then(remembered);
            let pool = host.pick_candidates();
            // The remembered range only while it is still one mctl may pick from.
            let previous = previous.filter(|p| pool.contains(p));
            let candidates = previous.into_iter().chain(pool);
            let range = host.first_free(candidates).ok_or(RangeError::Exhausted)?;
            if let Some(file) = &memory
                && previous != Some(range)
            {
                record(file, root, &range);
            }
            Chosen { range, _lock: Some(lock) }
        }
    };
    // Inside a user namespace (a nested machine) only the ids it maps exist.
    if let Ok(Some(own)) = crate::procfs::user_namespace_range(std::process::id())
        && chosen.range.end() > u64::from(own.count)
    {
        return Err(RangeError::OutsideNamespace { range: chosen.range, available: own.count });
    }
    Ok(Some(chosen))
}

fn lock(dir: &Path) -> Result<Flock<File>, RangeError> {
    let path = dir.join("userns.lock");
    let io = |step, source| RangeError::Io { step, path: path.clone(), source };
    std::fs::create_dir_all(dir).map_err(|e| io("create the directory of", e))?;
    let file =
        File::options().create(true).truncate(false).write(true).open(&path).map_err(|e| io("open", e))?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| io("lock", e.into()))
}

/// The file remembering the range of the tree at `root`: named by a hash of its path.
fn memory_file(dir: &Path, root: &Path) -> PathBuf {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(root.as_os_str().as_encoded_bytes());
    dir.join(hex::encode(&digest[..16]))
}

/// The range the image booted with last time, if one was recorded that may be picked.
fn remembered(file: &Path) -> Option<IdRange> {
    let text = std::fs::read_to_string(file).ok()?;
    let start: u32 = text.lines().next()?.trim().parse().ok()?;
    let valid = (PICK_FIRST..=PICK_LAST).contains(&start) && start.is_multiple_of(RANGE_SIZE);
    valid.then_some(IdRange { start, count: RANGE_SIZE })
}

/// Records the picked range (best effort: without it the next boot picks afresh).
fn record(file: &Path, root: &Path, range: &IdRange) {
    let text = format!("{}\n{}\n", range.start, root.display());
    let written = file.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| {
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, file)
    });
    if let Err(e) = written {
        tracing::debug!("cannot record the picked id range in {}: {e}", file.display());
    }
}

/// A user namespace fd for idmapped mounts and the machine, with its range.
#[derive(Debug)]
pub struct UserNamespace {
    /// The range mapped.
    pub range: IdRange,
    /// An fd of the namespace (`/proc/PID/ns/user`).
    pub fd: OwnedFd,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_host(passwd: &str, subuid: &str) -> (tempfile::TempDir, HostIds) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("passwd"), passwd).unwrap();
        std::fs::write(dir.path().join("subuid"), subuid).unwrap();
        let proc = dir.path().join("proc");
        std::fs::create_dir_all(proc.join("42/ns")).unwrap();
        std::fs::write(proc.join("42/uid_map"), "         0     524288      65536\n").unwrap();
        std::os::unix::fs::symlink("user:[4026531837]", proc.join("42/ns/user")).unwrap();
        let host = HostIds { etc: dir.path().to_owned(), proc };
        (dir, host)
    }

    #[test]
    fn values_follow_nspawn() {
        assert_eq!("no".parse::<PrivateUsers>().unwrap(), PrivateUsers::No);
        assert_eq!("yes".parse::<PrivateUsers>().unwrap(), PrivateUsers::FromRoot);
        assert_eq!("pick".parse::<PrivateUsers>().unwrap(), PrivateUsers::Pick);
        assert_eq!("identity".parse::<PrivateUsers>().unwrap(), PrivateUsers::Identity);
        assert_eq!(
            "1000000".parse::<PrivateUsers>().unwrap(),
            PrivateUsers::Fixed(IdRange { start: 1_000_000, count: 65536 })
        );
        assert_eq!(
            "1000000:1000".parse::<PrivateUsers>().unwrap(),
            PrivateUsers::Fixed(IdRange { start: 1_000_000, count: 1000 })
        );
        for bad in ["maybe", "-1", "5:0", "4294967290:10", "7:x"] {
            let e = bad.parse::<PrivateUsers>().unwrap_err().to_string();
            assert!(e.contains(&format!("'{bad}'")), "{e}");
        }
    }

    #[test]
    fn the_hosts_own_map_is_not_a_taken_range() {
        assert!(parse_map("         0          0 4294967295\n").is_empty());
        assert_eq!(
            parse_map("0 100000 65536\n1 2 3\n"),
            [IdRange { start: 100000, count: 65536 }, IdRange { start: 2, count: 3 }]
        );
    }

    #[test]
    fn picking_skips_mapped_ranges_host_users_and_delegations() {
        // 524288.. is mapped by process 42; a host user sits in the next range; subuid
        // delegates the one after.
        let (dir, host) =
            fake_host("root:x:0:0::/root:/bin/sh\nbig:x:600000:600000::/:/bin/sh\n", "lxd:655360:65536\n");
        let root = tempfile::tempdir().unwrap();
        let chosen =
            choose(PrivateUsers::Pick, root.path(), &host, dir.path(), Some(dir.path())).unwrap().unwrap();
        assert_eq!(chosen.range, IdRange { start: 0xB0000, count: RANGE_SIZE });
    }

    #[test]
    fn a_tree_gets_its_previous_range_while_it_is_free() {
        let (dir, host) = fake_host("", "");
        let memory = dir.path().join("memory");
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let pick = |root: &Path| {
            choose(PrivateUsers::Pick, root, &host, dir.path(), Some(&memory)).unwrap().unwrap().range
        };
        let first = pick(a.path());
        assert_eq!(first.start, 0x90000);
        // Another tree, while the first one's range is taken by its machine.
        std::fs::write(dir.path().join("proc/42/uid_map"), "0 589824 65536\n").unwrap();
        let other = pick(b.path());
        assert_eq!(other.start, 0x80000);
        // Free again: the first tree gets its range back, the other keeps its own.
        std::fs::write(dir.path().join("proc/42/uid_map"), "0 0 4294967295\n").unwrap();
        assert_eq!(pick(a.path()), first);
        assert_eq!(pick(b.path()), other);
        // A bad record is ignored: the first free range.
        std::fs::write(memory_file(&memory, a.path()), "12345\n").unwrap();
        assert_eq!(pick(a.path()).start, 0x80000);
    }

    #[test]
    fn ranges_delegated_to_mctl_are_where_it_picks() {
        let (dir, host) = fake_host("", "other:600000:65536\nmctl:655360:131072\n");
        // Only the part also delegated in subgid counts.
        std::fs::write(dir.path().join("subgid"), "mctl:720896:65536\n").unwrap();
        let root = tempfile::tempdir().unwrap();
        let memory = dir.path().join("memory");
        let pick = || choose(PrivateUsers::Pick, root.path(), &host, dir.path(), Some(&memory));
        assert_eq!(pick().unwrap().unwrap().range, IdRange { start: 720896, count: RANGE_SIZE });
        // Taken by a running machine: none left.
        std::fs::write(dir.path().join("proc/42/uid_map"), "0 720896 65536\n").unwrap();
        let e = pick().unwrap_err().to_string();
        assert!(e.contains("delegate to mctl"), "{e}");
    }

    #[test]
    fn a_delegation_past_the_last_id_ends_there() {
        let (dir, host) = fake_host("", "mctl:4294901760:131072\n");
        std::fs::write(dir.path().join("subgid"), "mctl:4294901760:131072\n").unwrap();
        assert_eq!(host.pick_candidates(), [IdRange { start: 0xFFFF_0000, count: RANGE_SIZE }]);
    }

    #[test]
    fn a_fixed_range_in_use_is_refused_with_its_user() {
        let (dir, host) = fake_host("big:x:600000:600000::/:/bin/sh\n", "");
        let root = tempfile::tempdir().unwrap();
        let fixed = |start, count| {
            choose(
                PrivateUsers::Fixed(IdRange { start, count }),
                root.path(),
                &host,
                dir.path(),
                Some(dir.path()),
            )
        };
        let e = fixed(530000, 10).unwrap_err().to_string();
        assert!(e.contains("process 42"), "{e}");
        let e = fixed(589824, 65536).unwrap_err().to_string();
        assert!(e.contains("host user big (600000)"), "{e}");
        assert!(fixed(0x200000, 65536).is_ok());
    }

    #[test]
    fn from_root_follows_the_owner_of_the_root_directory() {
        let (dir, host) = fake_host("", "");
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::chown(root.path(), Some(0x90000 + 5), None).ok();
        let chosen = choose(PrivateUsers::FromRoot, root.path(), &host, dir.path(), Some(dir.path()))
            .unwrap()
            .unwrap();
        use std::os::unix::fs::MetadataExt;
        let owner = std::fs::metadata(root.path()).unwrap().uid();
        assert_eq!(chosen.range, IdRange { start: owner & 0xFFFF_0000, count: RANGE_SIZE });
    }
}
