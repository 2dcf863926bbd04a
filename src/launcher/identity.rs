//! Who the machine is: its tree's checks (os-release, init), UUID, lock, and users.

use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::guestfs;
use crate::sys::linux::open_in_root;

/// Where nspawn (and so mctl) looks for an init, in order.
pub const INIT_CANDIDATES: [&str; 3] = ["/usr/lib/systemd/systemd", "/lib/systemd/systemd", "/sbin/init"];

/// A problem with the machine's tree.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// The directory is missing or unreadable.
    #[error("directory {path} cannot be used: {source}")]
    Open {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Not a directory.
    #[error("{0} is not a directory")]
    NotDirectory(PathBuf),
    /// No os-release: not an OS tree.
    #[error(
        "{0} does not look like an OS tree: it has neither /etc/os-release nor /usr/lib/os-release (boot needs one)"
    )]
    NoOsRelease(PathBuf),
    /// None of the init candidates.
    #[error("no init found in {0} (looked for /usr/lib/systemd/systemd, /lib/systemd/systemd, /sbin/init)")]
    NoInit(PathBuf),
    /// Another machine uses the tree.
    #[error("directory {0} is already in use by a running machine (it is locked)")]
    Locked(PathBuf),
    /// Locking failed for another reason.
    #[error("cannot lock {path}: {source}")]
    Lock {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: nix::Error,
    },
}

/// The machine's root directory, open and locked for the machine's lifetime. The lock is an
/// flock on the directory itself, so no lock file is left behind however the launcher ends.
#[derive(Debug)]
pub struct Tree {
    path: PathBuf,
    lock: Flock<OwnedFd>,
}

impl Tree {
    /// Opens `path` and takes the lock (shared when the tree is used read-only, as several
    /// read-only machines may share one tree).
    pub fn open_and_lock(path: &Path, shared: bool) -> Result<Self, TreeError> {
        let meta = fs::metadata(path).map_err(|source| TreeError::Open { path: path.to_owned(), source })?;
        if !meta.is_dir() {
            return Err(TreeError::NotDirectory(path.to_owned()));
        }
        let dir = fs::File::open(path).map_err(|source| TreeError::Open { path: path.to_owned(), source })?;
        let how = if shared { FlockArg::LockSharedNonblock } else { FlockArg::LockExclusiveNonblock };
        let lock = Flock::lock(OwnedFd::from(dir), how).map_err(|(_, e)| match e {
            nix::errno::Errno::EWOULDBLOCK => TreeError::Locked(path.to_owned()),
            source => TreeError::Lock { path: path.to_owned(), source },
        })?;
        Ok(Self { path: path.to_owned(), lock })
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open(&self, rel: &str, flags: libc::c_int) -> io::Result<OwnedFd> {
        open_in_root(self.lock.as_fd(), Path::new(rel), flags)
    }

    /// Whether the directory has the immutable attribute (a read-only image).
    pub fn is_immutable(&self) -> bool {
        crate::sys::linux::is_immutable(self.lock.as_fd()).unwrap_or(false)
    }

    /// Whether the tree has an os-release file.
    pub fn has_os_release(&self) -> bool {
        self.os_release().is_some()
    }

    /// The os-release file's contents, if any.
    pub fn os_release(&self) -> Option<String> {
        guestfs::read_first(self.lock.as_fd(), &crate::osrelease::PATHS, guestfs::SMALL_FILE_LIMIT).ok()
    }

    /// The first init candidate that is an executable file.
    pub fn find_init(&self) -> Result<&'static str, TreeError> {
        INIT_CANDIDATES
            .iter()
            .copied()
            .find(|p| self.open(p, libc::O_PATH).is_ok_and(|fd| is_executable(&fd)))
            .ok_or_else(|| TreeError::NoInit(self.path.clone()))
    }

    /// The tree's machine ID, if `/etc/machine-id` holds a valid one.
    pub fn machine_id(&self) -> Option<uuid::Uuid> {
        parse_machine_id(&guestfs::read_string(self.lock.as_fd(), Path::new("/etc/machine-id"), 64).ok()?)
    }
}

fn is_executable(fd: &OwnedFd) -> bool {
    nix::sys::stat::fstat(fd.as_fd())
        .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_mode & 0o111 != 0)
}

/// A machine ID: 32 hex digits, not all zero.
pub fn parse_machine_id(s: &str) -> Option<uuid::Uuid> {
    let s = s.trim();
    if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let id = uuid::Uuid::parse_str(s).ok()?;
    (!id.is_nil()).then_some(id)
}

/// A user inside the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Login name from the machine's passwd; the uid's digits when it has no entry there.
    pub name: String,
    /// uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// Home directory.
    pub home: String,
    /// Login shell.
    pub shell: String,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

/// Resolves `who` (a name or a numeric uid) from `passwd` and `group` file contents.
pub fn lookup_user(who: &str, passwd: &str, group: &str) -> Option<User> {
    let entry = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 7 {
            return None;
        }
        let matches = f[0] == who || who.parse::<u32>().is_ok_and(|u| f[2] == u.to_string());
        matches.then(|| {
            (f[0].to_owned(), f[2].parse().ok(), f[3].parse().ok(), f[5].to_owned(), f[6].to_owned())
        })
    });
    let (name, uid, gid, home, shell) = match entry {
        Some((n, Some(u), Some(g), h, s)) => (n, u, g, h, s),
        Some(_) => return None,
        None => {
            // A numeric uid without a passwd entry is still usable, as in nspawn.
            let uid: u32 = who.parse().ok()?;
            (who.to_owned(), uid, uid, "/".to_owned(), "/bin/sh".to_owned())
        }
    };
    let groups = group
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4 && f[3].split(',').any(|m| m == name)).then(|| f[2].parse().ok()).flatten()
        })
        .collect();
    Some(User { name, uid, gid, home, shell, groups })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_ids() {
        assert!(parse_machine_id("09ba2a74f3b44066afde17218b763fc3\n").is_some());
        assert!(parse_machine_id("").is_none());
        assert!(parse_machine_id("uninitialized").is_none());
        assert!(parse_machine_id(&"0".repeat(32)).is_none());
    }

    #[test]
    fn users() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\ntester:x:1000:1000::/home/tester:/bin/sh\n";
        let group = "root:x:0:\nusers:x:100:tester,other\n";
        let u = lookup_user("tester", passwd, group).unwrap();
        assert_eq!(
            (u.uid, u.gid, u.home.as_str(), u.groups.as_slice()),
            (1000, 1000, "/home/tester", &[100][..])
        );
        assert_eq!(lookup_user("1000", passwd, group).unwrap().name, "tester");
        assert_eq!(lookup_user("4242", passwd, group).unwrap().uid, 4242);
        assert!(lookup_user("nobody-here", passwd, group).is_none());
    }
}
