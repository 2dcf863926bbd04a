//! Walks an image tree through directory fds, never following a symlink: what export, copies
//! and usage counts read. An image is written by its machine's root, so its symlinks may point
//! anywhere on the host; each step is an *at() call relative to the directory's fd with
//! `AT_SYMLINK_NOFOLLOW` / `O_NOFOLLOW`.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};

/// A failed step of a walk.
#[derive(Debug, thiserror::Error)]
#[error("{step} '{path}': {source}")]
pub struct WalkError {
    /// What was being done.
    pub step: &'static str,
    /// The path involved.
    pub path: PathBuf,
    /// The error.
    pub source: io::Error,
}

fn err<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(rustix::io::Errno) -> WalkError + 'a {
    move |e| WalkError { step, path: path.to_owned(), source: e.into() }
}

/// The kind of a file found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Directory, visited before its entries (a mount point inside the tree looks empty).
    Dir,
    /// Regular file.
    File,
    /// Symbolic link.
    Symlink,
    /// Character device.
    Char,
    /// Block device.
    Block,
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
}

/// One file of the tree, as the walk found it.
#[derive(Debug)]
pub struct Found<'a> {
    /// Full path (for messages).
    pub path: &'a Path,
    /// Path relative to the root; empty for the root itself.
    pub rel: &'a Path,
    /// lstat of it.
    pub stat: &'a rfs::Stat,
    /// The directory it is in (the root for the root itself) and its name there.
    parent: &'a OwnedFd,
    name: &'a OsStr,
    /// For directories: the open directory.
    dir: Option<&'a OwnedFd>,
}

impl Found<'_> {
    /// Its kind.
    pub fn kind(&self) -> Kind {
        match FileType::from_raw_mode(self.stat.st_mode) {
            FileType::Directory => Kind::Dir,
            FileType::Symlink => Kind::Symlink,
            FileType::CharacterDevice => Kind::Char,
            FileType::BlockDevice => Kind::Block,
            FileType::Fifo => Kind::Fifo,
            FileType::Socket => Kind::Socket,
            _ => Kind::File,
        }
    }

    /// The same file, described by `stat` instead (a view with other owners).
    pub fn with_stat<'b>(&'b self, stat: &'b rfs::Stat) -> Found<'b> {
        Found { path: self.path, rel: self.rel, stat, parent: self.parent, name: self.name, dir: self.dir }
    }

    /// Its size in bytes, refusing a negative one.
    pub fn size(&self) -> Result<u64, WalkError> {
        u64::try_from(self.stat.st_size).map_err(|_| WalkError {
            step: "cannot read",
            path: self.path.to_owned(),
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                format!("negative size {}", self.stat.st_size),
            ),
        })
    }

    /// Opens a regular file for reading, refusing anything that is not one any more.
    pub fn open_file(&self) -> Result<File, WalkError> {
        let fd = rfs::openat(
            self.parent,
            self.name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(err("cannot open", self.path))?;
        let st = rfs::fstat(&fd).map_err(err("cannot inspect", self.path))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(WalkError {
                step: "cannot read",
                path: self.path.to_owned(),
                source: io::Error::other("it was replaced by something that is not a regular file"),
            });
        }
        Ok(File::from(fd))
    }

    /// Changes its owner (a symlink's own, not its target's).
    pub fn set_owner(&self, uid: u32, gid: u32) -> Result<(), WalkError> {
        let (u, g) = (rustix::process::Uid::from_raw(uid), rustix::process::Gid::from_raw(gid));
        rfs::chownat(self.parent, self.name, Some(u), Some(g), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(err("cannot change the owner of", self.path))
    }

    /// Sets its mode (not for symlinks, which have none of their own).
    pub fn set_mode(&self, mode: u32) -> Result<(), WalkError> {
        rfs::chmodat(self.parent, self.name, Mode::from_raw_mode(mode), AtFlags::empty())
            .map_err(err("cannot change the mode of", self.path))
    }

    /// An O_PATH fd of the inode itself (never a symlink's target, never opening a device) and
    /// the /proc path naming it, for calls that take paths.
    fn inode_path(&self) -> Result<(OwnedFd, String), WalkError> {
        let fd = rfs::openat(
            self.parent,
            self.name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(err("cannot open", self.path))?;
        let proc = format!("/proc/self/fd/{}", fd.as_raw_fd());
        Ok((fd, proc))
    }

    /// Sets (or with `None` removes) an extended attribute, through an fd of the inode itself.
    pub fn set_xattr(&self, name: &OsStr, value: Option<&[u8]>) -> Result<(), WalkError> {
        let (_fd, proc) = self.inode_path()?;
        match value {
            Some(v) => rfs::setxattr(proc.as_str(), name, v, rfs::XattrFlags::empty()),
            None => rfs::removexattr(proc.as_str(), name),
        }
        .map_err(err("cannot set an extended attribute of", self.path))
    }

    /// A symlink's target.
    pub fn read_link(&self) -> Result<PathBuf, WalkError> {
        let t = rfs::readlinkat(self.parent, self.name, Vec::new())
            .map_err(err("cannot read the link", self.path))?;
        Ok(PathBuf::from(OsStr::from_bytes(t.as_bytes())))
    }

    /// Extended attributes, from `file` when the caller has it open already.
    pub fn xattrs(&self, file: Option<&File>) -> Result<Vec<(OsString, Vec<u8>)>, WalkError> {
        if let Some(f) = file {
            return fd_xattrs(f.as_fd(), self.path);
        }
        if let Some(d) = self.dir {
            return fd_xattrs(d.as_fd(), self.path);
        }
        // Symlinks, devices, fifos: through the inode's O_PATH fd.
        let (_fd, proc) = self.inode_path()?;
        path_xattrs(&proc, self.path)
    }
}

fn no_xattrs(e: rustix::io::Errno) -> bool {
    matches!(e, rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::PERM)
}

fn parse_names(buf: &[u8]) -> Vec<OsString> {
    buf.split(|b| *b == 0).filter(|n| !n.is_empty()).map(|n| OsStr::from_bytes(n).to_owned()).collect()
}

/// Calls `get(buf)` with a buffer large enough, growing it on ERANGE. (rustix treats an
/// empty buffer as "nothing to read", not as the kernel's size query.)
fn sized(mut get: impl FnMut(&mut [u8]) -> rustix::io::Result<usize>) -> rustix::io::Result<Vec<u8>> {
    let mut size = 4096;
    loop {
        let mut buf = vec![0u8; size];
        match get(&mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(rustix::io::Errno::RANGE) if size < 1 << 24 => size *= 8,
            Err(e) => return Err(e),
        }
    }
}

pub(crate) fn fd_xattrs(
    fd: std::os::fd::BorrowedFd<'_>,
    path: &Path,
) -> Result<Vec<(OsString, Vec<u8>)>, WalkError> {
    let names = match sized(|b| rfs::flistxattr(fd, b)) {
        Ok(n) => n,
        Err(e) if no_xattrs(e) => return Ok(Vec::new()),
        Err(e) => return Err(err("cannot list the extended attributes of", path)(e)),
    };
    let mut out = Vec::new();
    for name in parse_names(&names) {
        match sized(|b| rfs::fgetxattr(fd, name.as_os_str(), b)) {
            Ok(v) => out.push((name, v)),
            // Removed since listing.
            Err(rustix::io::Errno::NODATA) => {}
            Err(e) => return Err(err("cannot read an extended attribute of", path)(e)),
        }
    }
    Ok(out)
}

pub(crate) fn path_xattrs(proc: &str, path: &Path) -> Result<Vec<(OsString, Vec<u8>)>, WalkError> {
    let names = match sized(|b| rfs::listxattr(proc, b)) {
        Ok(n) => n,
        Err(e) if no_xattrs(e) => return Ok(Vec::new()),
        Err(e) => return Err(err("cannot list the extended attributes of", path)(e)),
    };
    let mut out = Vec::new();
    for name in parse_names(&names) {
        match sized(|b| rfs::getxattr(proc, name.as_os_str(), b)) {
            Ok(v) => out.push((name, v)),
            Err(rustix::io::Errno::NODATA) => {}
            Err(e) => return Err(err("cannot read an extended attribute of", path)(e)),
        }
    }
    Ok(out)
}

/// Opens `root` as a directory (not through a final symlink).
pub fn open_dir(root: &Path) -> Result<OwnedFd, WalkError> {
    rfs::open(root, crate::guestfs::OPEN_DIR_NOFOLLOW, Mode::empty()).map_err(err("cannot open", root))
}

/// Visits `root` and everything below it, parents before children, names sorted. The walk
/// stays on the root's filesystem (a mount point inside is visited as an empty directory).
pub fn walk<E: From<WalkError>>(
    root: &Path,
    mut visit: impl FnMut(&Found<'_>) -> Result<(), E>,
) -> Result<(), E> {
    let fd = open_dir(root)?;
    let st = rfs::fstat(&fd).map_err(err("cannot inspect", root))?;
    visit(&Found {
        path: root,
        rel: Path::new(""),
        stat: &st,
        parent: &fd,
        name: OsStr::new("."),
        dir: Some(&fd),
    })?;
    let mut rel = PathBuf::new();
    walk_dir(root, &fd, st.st_dev, &mut rel, &mut visit)
}

fn walk_dir<E: From<WalkError>>(
    root: &Path,
    dir: &OwnedFd,
    dev: u64,
    rel: &mut PathBuf,
    visit: &mut impl FnMut(&Found<'_>) -> Result<(), E>,
) -> Result<(), E> {
    let here = root.join(&*rel);
    let mut names: Vec<OsString> = Vec::new();
    for e in rfs::Dir::read_from(dir).map_err(err("cannot read the directory", &here))? {
        let e = e.map_err(err("cannot read the directory", &here))?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(OsStr::from_bytes(n).to_owned());
        }
    }
    names.sort();
    for name in names {
        rel.push(&name);
        let path = root.join(&*rel);
        let st = rfs::statat(dir, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(err("cannot inspect", &path))?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            let sub = rfs::openat(dir, name.as_os_str(), crate::guestfs::OPEN_DIR_NOFOLLOW, Mode::empty())
                .map_err(err("cannot open", &path))?;
            visit(&Found { path: &path, rel, stat: &st, parent: dir, name: &name, dir: Some(&sub) })?;
            if st.st_dev == dev {
                walk_dir(root, &sub, dev, rel, visit)?;
            }
        } else {
            visit(&Found { path: &path, rel, stat: &st, parent: dir, name: &name, dir: None })?;
        }
        rel.pop();
    }
    Ok(())
}

/// Disk usage of the tree in bytes: allocated blocks, each inode counted once.
pub fn usage(root: &Path) -> Result<u64, WalkError> {
    let mut seen = HashSet::new();
    let mut total = 0u64;
    walk::<WalkError>(root, |f| {
        if f.stat.st_nlink <= 1 || f.kind() == Kind::Dir || seen.insert((f.stat.st_dev, f.stat.st_ino)) {
            // A negative block count, which no sane filesystem reports, occupies nothing.
            total += u64::try_from(f.stat.st_blocks).unwrap_or(0) * 512;
        }
        Ok(())
    })?;
    Ok(total)
}
