//! Reading files a guest controls, from a privileged host process.
//!
//! Everything in a machine's tree is the guest's to change: a file can become a FIFO (whose
//! `open` blocks until someone writes), a device, a huge file, or a symlink to a host path.
//! So every such read here resolves the path inside the machine's root (the kernel keeps `..`
//! and symlinks from leaving it), opens without blocking and without taking a controlling
//! terminal, accepts only regular files, and reads at most a cap.

use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use crate::sys::linux::open_in_root;

/// What went wrong reading a guest file.
#[derive(Debug, thiserror::Error)]
pub enum GuestFileError {
    /// The path could not be opened inside the root (missing, a loop, denied).
    #[error("cannot open {}: {source}", path.display())]
    Open {
        /// The path inside the machine.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Not a regular file (a FIFO, a device, a directory, a socket).
    #[error("{} is not a regular file", path.display())]
    NotRegular {
        /// The path inside the machine.
        path: PathBuf,
    },
    /// Larger than the cap.
    #[error("{} is larger than {limit} bytes", path.display())]
    TooLarge {
        /// The path inside the machine.
        path: PathBuf,
        /// The cap.
        limit: usize,
    },
    /// Reading failed.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The path inside the machine.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl GuestFileError {
    /// Whether the file simply does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, GuestFileError::Open { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// Reads `path` (as seen inside the machine) below the machine's root directory `root`, at
/// most `limit` bytes of a regular file.
pub fn read(root: BorrowedFd<'_>, path: &Path, limit: usize) -> Result<Vec<u8>, GuestFileError> {
    let fd = open_in_root(root, path, libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY)
        .map_err(|source| GuestFileError::Open { path: path.to_owned(), source })?;
    let st = nix::sys::stat::fstat(fd.as_fd())
        .map_err(|e| GuestFileError::Read { path: path.to_owned(), source: e.into() })?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(GuestFileError::NotRegular { path: path.to_owned() });
    }
    // Sized from fstat: one read fills it and one more sees the end (an empty buffer would
    // grow through several reads).
    let size = usize::try_from(st.st_size).unwrap_or(limit).min(limit);
    let mut out = Vec::with_capacity(size + 1);
    std::fs::File::from(fd)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|source| GuestFileError::Read { path: path.to_owned(), source })?;
    if out.len() > limit {
        return Err(GuestFileError::TooLarge { path: path.to_owned(), limit });
    }
    Ok(out)
}

/// Whether `path` (as seen inside the machine, symlinks followed within it) exists below the
/// machine's root directory `root`. Opens nothing but a path handle, so no FIFO or device is
/// ever opened.
pub fn exists(root: BorrowedFd<'_>, path: &Path) -> bool {
    open_in_root(root, path, libc::O_PATH).is_ok()
}

/// [`read`] as text (invalid UTF-8 replaced).
pub fn read_string(root: BorrowedFd<'_>, path: &Path, limit: usize) -> Result<String, GuestFileError> {
    read(root, path, limit).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// The first of `paths` that exists, as text; the last error if none can be read.
pub fn read_first(root: BorrowedFd<'_>, paths: &[&str], limit: usize) -> Result<String, GuestFileError> {
    let mut last = None;
    for p in paths {
        match read_string(root, Path::new(p), limit) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| GuestFileError::Open {
        path: PathBuf::from("/"),
        source: io::ErrorKind::NotFound.into(),
    }))
}

/// Enough for any real os-release, passwd or group file.
pub const SMALL_FILE_LIMIT: usize = 1024 * 1024;

/// Directories open at once while [`remove_tree`] descends; deeper ones are moved up first.
const REMOVE_DEPTH: usize = 128;

/// Removes the tree at `path` (a directory, or any other file), never following a symlink,
/// with at most [`REMOVE_DEPTH`] directories open at once. A guest can make its tree deeper
/// than the descriptors a process may hold (std's `remove_dir_all` holds one per level, and a
/// soft limit of 1024 is common): a directory that deep is first moved up to the top of the
/// tree, relative to descriptors held (no path is resolved again, so nothing the guest renames
/// meanwhile takes the removal outside the tree), and removed from there.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    remove_tree_within(path, REMOVE_DEPTH)
}

fn remove_tree_within(path: &Path, max_depth: usize) -> io::Result<()> {
    let top = match rustix::fs::open(path, OPEN_DIR_NOFOLLOW, rustix::fs::Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP) => return std::fs::remove_file(path),
        Err(e) => return Err(e.into()),
    };
    let dev = rustix::fs::fstat(&top)?.st_dev;
    let mut removal = Removal { top: top.as_fd(), dev, max_depth, moved: 0 };
    // Each pass empties the top, except what was moved up into it meanwhile.
    while removal.empty(top.as_fd(), 1)? {}
    std::fs::remove_dir(path)
}

/// How a directory is opened when a symlink in its place must not be followed (read-only,
/// close-on-exec).
pub const OPEN_DIR_NOFOLLOW: rustix::fs::OFlags = rustix::fs::OFlags::RDONLY
    .union(rustix::fs::OFlags::DIRECTORY)
    .union(rustix::fs::OFlags::NOFOLLOW)
    .union(rustix::fs::OFlags::CLOEXEC);

/// One [`remove_tree`]: the tree's top, its file system, how deep to go before moving up.
struct Removal<'a> {
    top: BorrowedFd<'a>,
    dev: u64,
    max_depth: usize,
    /// Directories moved up so far (their new names count on).
    moved: u64,
}

impl Removal<'_> {
    /// Removes what `dir` (at `depth` below the top) holds; returns whether it moved anything
    /// up into the top instead.
    fn empty(&mut self, dir: BorrowedFd<'_>, depth: usize) -> io::Result<bool> {
        use rustix::fs::{AtFlags, FileType};
        use rustix::io::Errno;
        let entries: Vec<(std::ffi::CString, FileType)> = rustix::fs::Dir::read_from(dir)?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_bytes() != b"." && e.file_name().to_bytes() != b"..")
            .map(|e| (e.file_name().to_owned(), e.file_type()))
            .collect();
        let mut again = false;
        for (name, kind) in entries {
            if kind != FileType::Directory {
                match rustix::fs::unlinkat(dir, &name, AtFlags::empty()) {
                    Ok(()) | Err(Errno::NOENT) => continue,
                    // A directory after all (the type was unknown): handled below.
                    Err(Errno::ISDIR) if kind == FileType::Unknown => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if depth >= self.max_depth {
                self.move_up(dir, &name)?;
                again = true;
                continue;
            }
            let child = match rustix::fs::openat(dir, &name, OPEN_DIR_NOFOLLOW, rustix::fs::Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(e.into()),
            };
            // A mount point: what is mounted there is not this tree's to delete.
            if rustix::fs::fstat(&child)?.st_dev != self.dev {
                return Err(Errno::BUSY.into());
            }
            again |= self.empty(child.as_fd(), depth + 1)?;
            drop(child);
            match rustix::fs::unlinkat(dir, &name, AtFlags::REMOVEDIR) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(again)
    }

    /// Moves the directory `name` of `dir` to the top, under a name of its own there (the
    /// guest may have taken some).
    fn move_up(&mut self, dir: BorrowedFd<'_>, name: &std::ffi::CStr) -> io::Result<()> {
        loop {
            self.moved += 1;
            let up = format!(".#deep-{}", self.moved);
            match rustix::fs::renameat_with(
                dir,
                name,
                self.top,
                up.as_str(),
                rustix::fs::RenameFlags::NOREPLACE,
            ) {
                Err(rustix::io::Errno::EXIST) => continue,
                result => return Ok(result?),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(dir: &Path) -> std::fs::File {
        std::fs::File::open(dir).unwrap()
    }

    #[test]
    fn regular_files_inside_the_root_only() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(d.path().join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        nix::unistd::mkfifo(&d.path().join("etc/group"), nix::sys::stat::Mode::from_bits_truncate(0o644))
            .unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("etc/link")).unwrap();
        std::os::unix::fs::symlink("../../../../../../etc/hostname", d.path().join("etc/out")).unwrap();
        let r = root(d.path());
        assert!(read_string(r.as_fd(), Path::new("/etc/passwd"), 100).unwrap().starts_with("root:"));
        // A FIFO is refused at once, not waited on.
        assert!(matches!(
            read(r.as_fd(), Path::new("/etc/group"), 100),
            Err(GuestFileError::NotRegular { .. })
        ));
        // Absolute symlinks resolve inside the root.
        assert!(read_string(r.as_fd(), Path::new("/etc/link"), 100).unwrap().starts_with("root:"));
        // `..` stops at the root: the host's /etc/hostname is out of reach.
        assert!(read(r.as_fd(), Path::new("/etc/out"), 100).unwrap_err().is_not_found());
        assert!(matches!(
            read(r.as_fd(), Path::new("/etc/passwd"), 5),
            Err(GuestFileError::TooLarge { limit: 5, .. })
        ));
        assert!(matches!(read(r.as_fd(), Path::new("/etc"), 100), Err(GuestFileError::NotRegular { .. })));
    }

    #[test]
    fn remove_tree_moves_deep_directories_up_and_keeps_out_of_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), "x").unwrap();
        let top = tmp.path().join("top");
        let mut d = top.clone();
        for i in 0..300 {
            d.push(if i % 2 == 0 { "a" } else { "b" });
        }
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("file"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, top.join("a/link")).unwrap();
        std::os::unix::fs::symlink(&outside, d.join("link")).unwrap();
        // Names the moves would take, already taken.
        std::fs::create_dir(top.join(".#deep-1")).unwrap();
        std::fs::write(top.join(".#deep-2"), "x").unwrap();
        remove_tree_within(&top, 8).unwrap();
        assert!(!top.exists());
        assert!(outside.join("keep").exists(), "a symlink was followed");
        // A plain file, and nothing at all.
        std::fs::write(&top, "x").unwrap();
        remove_tree(&top).unwrap();
        assert_eq!(remove_tree(&top).unwrap_err().kind(), io::ErrorKind::NotFound);
    }
}
