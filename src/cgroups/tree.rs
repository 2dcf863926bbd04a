//! Walks cgroup subtrees by directory descriptor, never by path.
//!
//! Below a machine's payload cgroup every directory is the guest's: it may make them as deep
//! and with names as long as it likes. A path built from them soon passes PATH_MAX (4096
//! bytes: 17 levels of 240-byte names did), and a descriptor held per level runs out of file
//! descriptors a thousand levels down; either way a walk by path fails, and the machine's
//! cgroups stayed behind on the host. Here each step opens one name relative to the directory
//! above it, and only the current directory is held open: the walk goes back up through `..`
//! (a cgroup directory can only be renamed within its parent, so `..` is the parent it was
//! entered from).

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags};

/// Opens the directory `name` below `dir` (no symlinks).
fn open_dir_at(dir: BorrowedFd<'_>, name: &std::ffi::OsStr) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(dir, name, crate::guestfs::OPEN_DIR_NOFOLLOW, Mode::empty())?)
}

/// The names of the subdirectories of `dir`.
fn subdirectories(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    use std::os::unix::ffi::OsStrExt;
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if entry.file_type() == rustix::fs::FileType::Directory && name != b"." && name != b".." {
            names.push(std::ffi::OsStr::from_bytes(name).to_owned());
        }
    }
    Ok(names)
}

/// Calls `enter` for `top` and every directory below it, parents before children, and `leave`
/// for every directory below `top` once its children are done, with the directory above it
/// and its name there (so that `leave` may remove it). A directory that vanishes during the
/// walk is passed over; the first other error (or one of the callbacks') ends it.
pub fn walk(
    top: &Path,
    enter: &mut dyn FnMut(BorrowedFd<'_>) -> io::Result<()>,
    leave: &mut dyn FnMut(BorrowedFd<'_>, &std::ffi::OsStr) -> io::Result<()>,
) -> io::Result<()> {
    struct Level {
        /// This directory's name in its parent (empty for `top`).
        name: OsString,
        /// Its subdirectories not yet walked.
        pending: Vec<OsString>,
    }
    let top_fd = open_dir_at(rustix::fs::CWD, top.as_os_str())?;
    enter(top_fd.as_fd())?;
    let mut current = top_fd;
    let mut levels = vec![Level { name: OsString::new(), pending: subdirectories(current.as_fd())? }];
    loop {
        let level = levels.last_mut().expect("the walk ends when the top is left");
        if let Some(child) = level.pending.pop() {
            let fd = match open_dir_at(current.as_fd(), &child) {
                Ok(fd) => fd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            enter(fd.as_fd())?;
            let pending = subdirectories(fd.as_fd())?;
            current = fd;
            levels.push(Level { name: child, pending });
            continue;
        }
        let done = levels.pop().expect("a level was current");
        if levels.is_empty() {
            return Ok(());
        }
        let parent = open_dir_at(current.as_fd(), std::ffi::OsStr::new(".."))?;
        drop(std::mem::replace(&mut current, parent));
        leave(current.as_fd(), &done.name)?;
    }
}

/// Calls `enter` for `top` and every directory below it, parents first, as far as the walk
/// gets: for readers and best-effort writers, which pass over what they cannot reach.
pub fn each(top: &Path, enter: &mut dyn FnMut(BorrowedFd<'_>)) {
    let _ = walk(
        top,
        &mut |dir| {
            enter(dir);
            Ok(())
        },
        &mut |_, _| Ok(()),
    );
}

/// Reads the file `name` of the cgroup directory `dir`.
pub fn read_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<String> {
    let fd =
        rustix::fs::openat(dir, name, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())?;
    crate::sys::linux::read_all(fd)
}

/// Writes `value` to the file `name` of the cgroup directory `dir` (no O_CREAT: the kernel
/// makes a cgroup's files).
pub fn write_at(dir: BorrowedFd<'_>, name: &str, value: &str) -> io::Result<()> {
    let fd =
        rustix::fs::openat(dir, name, OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())?;
    rustix::io::write(&fd, value.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tree of ordinary directories stands in for a cgroup tree: deeper than PATH_MAX allows
    /// a path to reach, and deeper than a descriptor per level would allow.
    #[test]
    fn walks_and_removes_a_tree_too_deep_for_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let top = tmp.path().join("top");
        std::fs::create_dir(&top).unwrap();
        let long = "d".repeat(200);
        let mut dir = open_dir_at(rustix::fs::CWD, top.as_os_str()).unwrap();
        for i in 0..1100 {
            rustix::fs::mkdirat(&dir, long.as_str(), Mode::from_raw_mode(0o755)).unwrap();
            if i % 100 == 0 {
                rustix::fs::mkdirat(&dir, "side", Mode::from_raw_mode(0o755)).unwrap();
            }
            dir = open_dir_at(dir.as_fd(), std::ffi::OsStr::new(&long)).unwrap();
        }
        drop(dir);
        let (mut entered, mut left) = (0, 0);
        walk(
            &top,
            &mut |_| {
                entered += 1;
                Ok(())
            },
            &mut |parent, name| {
                left += 1;
                Ok(rustix::fs::unlinkat(parent, name, rustix::fs::AtFlags::REMOVEDIR)?)
            },
        )
        .unwrap();
        assert_eq!((entered, left), (1 + 1100 + 11, 1100 + 11));
        std::fs::remove_dir(&top).unwrap();
    }

    #[test]
    fn a_missing_top_is_an_error_and_files_are_read_and_written_relative() {
        let tmp = tempfile::tempdir().unwrap();
        let err = walk(&tmp.path().join("none"), &mut |_| Ok(()), &mut |_, _| Ok(())).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        std::fs::write(tmp.path().join("f"), "").unwrap();
        let dir = open_dir_at(rustix::fs::CWD, tmp.path().as_os_str()).unwrap();
        write_at(dir.as_fd(), "f", "THAWED").unwrap();
        assert_eq!(read_at(dir.as_fd(), "f").unwrap(), "THAWED");
        assert!(write_at(dir.as_fd(), "g", "x").is_err(), "write_at must not create files");
    }
}
