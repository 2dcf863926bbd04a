//! [`TreeWriter`]: creates files, directories, links and device nodes inside one root
//! directory, with the kernel confining every path to it.
//!
//! Parents are opened with openat2 and `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV` relative to the root's fd: a `..` that climbs out
//! fails with EXDEV and any symlink on the way fails with ELOOP, whatever the tree contains
//! at that moment. The final component is then created with a *at() call on the parent's fd
//! that never follows it (O_NOFOLLOW, O_EXCL, AT_SYMLINK_NOFOLLOW). A well-formed archive never
//! needs to pass through a symlink (GNU tar defers symlinks for the same reason), so refusing is
//! the right answer, not clamping into the root.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps};

/// Why an entry could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// An absolute member name.
    #[error("'{0}' is an absolute path; entries must be relative to the image root")]
    Absolute(PathBuf),
    /// A path whose `..` climbs out of the root.
    #[error("'{0}' leads outside the image root")]
    Escapes(PathBuf),
    /// A path that would pass through a symbolic link.
    #[error("'{0}' leads through a symbolic link")]
    ThroughSymlink(PathBuf),
    /// A name that does not denote a file (`a/..`).
    #[error("'{0}' does not name a file")]
    BadName(PathBuf),
    /// A hard link whose target is absolute or outside the root.
    #[error("'{path}' is a hard link to '{target}', which is not inside the image")]
    LinkOutside {
        /// The link.
        path: PathBuf,
        /// Its target.
        target: PathBuf,
    },
    /// A hard link whose target was not extracted before it.
    #[error("'{path}' is a hard link to '{target}', which does not exist in the image")]
    LinkMissing {
        /// The link.
        path: PathBuf,
        /// Its target.
        target: PathBuf,
    },
    /// A file larger than the free space left.
    #[error("'{path}' claims {size} bytes, more than the {free} bytes free in the image store")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its announced size.
        size: u64,
        /// What was free.
        free: u64,
    },
    /// Less content than announced.
    #[error("'{path}' is truncated: {got} of {size} bytes")]
    Short {
        /// The file.
        path: PathBuf,
        /// Bytes received.
        got: u64,
        /// Bytes announced.
        size: u64,
    },
    /// A directory in the way of a non-directory.
    #[error("'{0}' exists as a directory and cannot be replaced by a file")]
    ReplaceDir(PathBuf),
    /// A system call failed.
    #[error("{step} '{path}': {source}")]
    Io {
        /// What was being done.
        step: &'static str,
        /// The entry.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

fn io_err<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(rustix::io::Errno) -> WriteError + 'a {
    move |e| WriteError::Io { step, path: path.to_owned(), source: e.into() }
}

/// Ownership, mode, mtime and extended attributes of an entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits including setuid, setgid and sticky.
    pub mode: u32,
    /// Numeric owner uid, applied as is (user names in archives are never looked up).
    pub uid: u32,
    /// Numeric group gid, applied as is (group names in archives are never looked up).
    pub gid: u32,
    /// Modification time: seconds and nanoseconds since the epoch.
    pub mtime: (i64, u32),
    /// Extended attributes (name, value), `security.capability` included.
    pub xattrs: Vec<(OsString, Vec<u8>)>,
}

/// What kind of entry to create.
#[derive(Debug, Clone, Copy)]
pub enum Node<'a> {
    /// A directory.
    Dir,
    /// A regular file of this many bytes.
    File {
        /// The size announced.
        size: u64,
    },
    /// A symbolic link with this target (stored verbatim, never followed).
    Symlink(&'a Path),
    /// A hard link to an entry already written (relative to the root).
    HardLink(&'a Path),
    /// A character device.
    Char(u64),
    /// A block device.
    Block(u64),
    /// A named pipe.
    Fifo,
}

/// How many parent directory fds to keep open; entries usually come directory by directory.
const PARENT_CACHE: usize = 64;

/// Writes entries under one root directory.
#[derive(Debug)]
pub struct TreeWriter {
    root: OwnedFd,
    /// Shared, not duplicated: a dup per entry is a syscall per entry.
    parents: HashMap<PathBuf, Rc<OwnedFd>>,
    /// Directories whose mtime is set at the end, after their contents were written.
    dir_times: Vec<(PathBuf, (i64, u32))>,
    /// Bytes free in the filesystem when we started, and what we wrote since.
    free: u64,
    used: u64,
    /// Layer mode (OCI layers applied one over the other): a non-directory replaces a
    /// directory, and directories removed by a later layer are not an error at the end.
    layers: bool,
}

/// The parent path and final name of a member name, after refusing absolute names. `None`
/// for the name means the root itself (`.` or `./`).
fn split(path: &Path) -> Result<(PathBuf, Option<&OsStr>), WriteError> {
    if path.has_root() {
        return Err(WriteError::Absolute(path.to_owned()));
    }
    let comps: Vec<Component<'_>> = path.components().filter(|c| *c != Component::CurDir).collect();
    match comps.split_last() {
        None => Ok((PathBuf::new(), None)),
        Some((Component::Normal(name), parent)) => Ok((parent.iter().collect(), Some(*name))),
        Some(_) => Err(WriteError::BadName(path.to_owned())),
    }
}

fn resolve_flags() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV
}

/// openat2 beneath `root`.
fn open_beneath(root: &OwnedFd, rel: &Path, flags: OFlags) -> rustix::io::Result<OwnedFd> {
    let rel = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
    crate::sys::linux::openat2_retrying(root, rel, flags | OFlags::CLOEXEC, resolve_flags())
}

fn proc_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

fn timestamps(mtime: (i64, u32)) -> Timestamps {
    Timestamps {
        last_access: Timespec { tv_sec: 0, tv_nsec: rfs::UTIME_OMIT },
        last_modification: Timespec { tv_sec: mtime.0, tv_nsec: mtime.1.into() },
    }
}

impl TreeWriter {
    /// A writer for the (existing, empty) directory `root`.
    pub fn new(root: &Path) -> Result<Self, WriteError> {
        let fd = rfs::open(root, crate::guestfs::OPEN_DIR_NOFOLLOW, Mode::empty())
            .map_err(io_err("cannot open", root))?;
        let vfs = rfs::fstatvfs(&fd).map_err(io_err("cannot get the free space of", root))?;
        Ok(Self {
            root: fd,
            parents: HashMap::new(),
            dir_times: Vec::new(),
            free: vfs.f_bavail.saturating_mul(vfs.f_frsize),
            used: 0,
            layers: false,
        })
    }

    /// A writer for layers applied one over the other (see [`TreeWriter::remove`] and
    /// [`TreeWriter::clear_dir`] for whiteouts): an entry replaces whatever is in its way,
    /// directories included, as OCI layers require.
    pub fn for_layers(root: &Path) -> Result<Self, WriteError> {
        let mut w = Self::new(root)?;
        w.layers = true;
        Ok(w)
    }

    /// Measures the free space again (between layers, which may have removed files).
    pub fn refresh_free(&mut self) -> Result<(), WriteError> {
        let vfs =
            rfs::fstatvfs(&self.root).map_err(io_err("cannot get the free space of", Path::new(".")))?;
        self.free = vfs.f_bavail.saturating_mul(vfs.f_frsize);
        self.used = 0;
        Ok(())
    }

    /// Removes the entry `path` (a directory with everything in it) if it exists; returns
    /// whether it did. The path resolves beneath the root like every other, so a whiteout can
    /// neither climb out nor pass through a symlink.
    pub fn remove(&mut self, path: &Path) -> Result<bool, WriteError> {
        let (parent_rel, Some(name)) = split(path)? else {
            return Err(WriteError::BadName(path.to_owned()));
        };
        let parent = match open_beneath(&self.root, &parent_rel, OFlags::PATH | OFlags::DIRECTORY) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => return Ok(false),
            Err(e) => return Err(self.resolve_error(path, e)),
        };
        let st = match rfs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => return Ok(false),
            Err(e) => return Err(io_err("cannot inspect", path)(e)),
        };
        // Cached parents may be what goes away.
        self.parents.clear();
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            self.remove_tree(&parent_rel.join(name))?;
        } else {
            rfs::unlinkat(&parent, name, AtFlags::empty()).map_err(io_err("cannot remove", path))?;
        }
        Ok(true)
    }

    /// Removes everything below the directory `dir` for which `keep` (given the path relative
    /// to the root) is false; kept directories are searched too. An opaque whiteout: `keep`
    /// says what the current layer itself wrote.
    pub fn clear_dir(&mut self, dir: &Path, keep: &dyn Fn(&Path) -> bool) -> Result<(), WriteError> {
        self.parents.clear();
        let (parent_rel, name) = split(dir)?;
        let dir = match name {
            Some(n) => parent_rel.join(n),
            None => PathBuf::new(),
        };
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            let fd = match open_beneath(&self.root, &d, OFlags::RDONLY | OFlags::DIRECTORY) {
                Ok(fd) => fd,
                // Nothing below to hide.
                Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => continue,
                Err(e) => return Err(self.resolve_error(&d, e)),
            };
            for name in dir_names(&fd, &d)? {
                let child = d.join(&name);
                let st = rfs::statat(&fd, &name, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(io_err("cannot inspect", &child))?;
                let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
                if keep(&child) {
                    if is_dir {
                        stack.push(child);
                    }
                } else if is_dir {
                    self.remove_tree(&child)?;
                } else {
                    rfs::unlinkat(&fd, &name, AtFlags::empty()).map_err(io_err("cannot remove", &child))?;
                }
            }
        }
        Ok(())
    }

    /// Removes the directory `rel` and everything in it, depth first without recursion (a
    /// hostile tree may be deep) and without holding a descriptor per level.
    fn remove_tree(&mut self, rel: &Path) -> Result<(), WriteError> {
        let mut stack: Vec<(PathBuf, bool)> = vec![(rel.to_owned(), false)];
        while let Some((dir, emptied)) = stack.pop() {
            if emptied {
                let (parent_rel, Some(name)) = split(&dir)? else { continue };
                let parent = open_beneath(&self.root, &parent_rel, OFlags::PATH | OFlags::DIRECTORY)
                    .map_err(|e| self.resolve_error(&dir, e))?;
                rfs::unlinkat(&parent, name, AtFlags::REMOVEDIR).map_err(io_err("cannot remove", &dir))?;
                continue;
            }
            stack.push((dir.clone(), true));
            let fd = open_beneath(&self.root, &dir, OFlags::RDONLY | OFlags::DIRECTORY)
                .map_err(|e| self.resolve_error(&dir, e))?;
            for name in dir_names(&fd, &dir)? {
                match rfs::unlinkat(&fd, &name, AtFlags::empty()) {
                    Ok(()) => {}
                    Err(rustix::io::Errno::ISDIR) => stack.push((dir.join(&name), false)),
                    Err(e) => return Err(io_err("cannot remove", &dir.join(&name))(e)),
                }
            }
        }
        Ok(())
    }

    /// Creates the entry `path` (relative to the root). For files, `content` writes the data
    /// and returns how many bytes it wrote.
    pub fn add(
        &mut self,
        path: &Path,
        node: Node<'_>,
        meta: &Meta,
        content: impl FnOnce(&mut File) -> io::Result<u64>,
    ) -> Result<(), WriteError> {
        let (parent_rel, name) = split(path)?;
        let Some(name) = name else {
            // The root itself: only a directory entry makes sense ("./").
            return match node {
                Node::Dir => {
                    let fd = self.root.try_clone().map_err(|e| WriteError::Io {
                        step: "cannot duplicate the fd of",
                        path: path.to_owned(),
                        source: e,
                    })?;
                    self.set_meta_fd(&fd, path, meta)?;
                    self.dir_times.push((PathBuf::new(), meta.mtime));
                    Ok(())
                }
                _ => Err(WriteError::BadName(path.to_owned())),
            };
        };
        let parent = self.parent(path, &parent_rel)?;
        match node {
            Node::Dir => self.add_dir(&parent, name, path, &parent_rel.join(name), meta),
            Node::File { size } => self.add_file(&parent, name, path, size, meta, content),
            Node::Symlink(target) => self.add_symlink(&parent, name, path, target, meta),
            Node::HardLink(target) => self.add_hardlink(&parent, name, path, target),
            Node::Char(dev) => self.add_special(&parent, name, path, FileType::CharacterDevice, dev, meta),
            Node::Block(dev) => self.add_special(&parent, name, path, FileType::BlockDevice, dev, meta),
            Node::Fifo => self.add_special(&parent, name, path, FileType::Fifo, 0, meta),
        }
    }

    fn add_symlink(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        path: &Path,
        target: &Path,
        meta: &Meta,
    ) -> Result<(), WriteError> {
        self.create(parent, name, path, false, |p| rfs::symlinkat(target, p, name))?;
        rfs::chownat(parent, name, Some(uid(meta.uid)), Some(gid(meta.gid)), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(io_err("cannot change the owner of", path))?;
        if !meta.xattrs.is_empty() {
            let fd =
                rfs::openat(parent, name, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
                    .map_err(io_err("cannot open", path))?;
            set_xattrs_path(&proc_path(&fd), path, meta)?;
        }
        rfs::utimensat(parent, name, &timestamps(meta.mtime), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(io_err("cannot set the times of", path))
    }

    /// A device node or a fifo.
    fn add_special(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        path: &Path,
        ft: FileType,
        dev: u64,
        meta: &Meta,
    ) -> Result<(), WriteError> {
        self.create(parent, name, path, false, |p| {
            rfs::mknodat(p, name, ft, Mode::from_raw_mode(0o600), dev)
        })?;
        rfs::chownat(parent, name, Some(uid(meta.uid)), Some(gid(meta.gid)), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(io_err("cannot change the owner of", path))?;
        // No fchmodat(AT_SYMLINK_NOFOLLOW) on older kernels, and opening a device or a fifo for
        // real could block or act: go through an O_PATH fd's /proc entry, which names exactly
        // the inode we created.
        let fd = rfs::openat(parent, name, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
            .map_err(io_err("cannot open", path))?;
        let p = proc_path(&fd);
        set_xattrs_path(&p, path, meta)?;
        rfs::chmod(p.as_str(), Mode::from_raw_mode(meta.mode & 0o7777))
            .map_err(io_err("cannot set the mode of", path))?;
        rfs::utimensat(parent, name, &timestamps(meta.mtime), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(io_err("cannot set the times of", path))
    }

    /// Sets directory mtimes (after their contents changed them). Call once at the end.
    pub fn finish(mut self) -> Result<(), WriteError> {
        self.parents.clear();
        // Deepest first does not matter for mtimes of the directories themselves: setting a
        // directory's times does not touch its parent's.
        for (rel, mtime) in std::mem::take(&mut self.dir_times) {
            let fd = match open_beneath(&self.root, &rel, OFlags::RDONLY | OFlags::DIRECTORY) {
                Ok(fd) => fd,
                // A later layer removed or replaced it.
                Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP)
                    if self.layers =>
                {
                    continue;
                }
                Err(e) => return Err(io_err("cannot open", &rel)(e)),
            };
            rfs::futimens(&fd, &timestamps(mtime)).map_err(io_err("cannot set the times of", &rel))?;
        }
        Ok(())
    }

    /// The fd of the directory `rel` (the parent of `entry`), creating missing directories
    /// (root-owned, 0755, as tar does) when the archive did not list them.
    fn parent(&mut self, entry: &Path, rel: &Path) -> Result<Rc<OwnedFd>, WriteError> {
        if let Some(fd) = self.parents.get(rel) {
            return Ok(fd.clone());
        }
        let fd = match open_beneath(&self.root, rel, OFlags::PATH | OFlags::DIRECTORY) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => self.make_parents(entry, rel)?,
            Err(e) => return Err(self.resolve_error(entry, e)),
        };
        if self.parents.len() >= PARENT_CACHE {
            self.parents.clear();
        }
        let fd = Rc::new(fd);
        self.parents.insert(rel.to_owned(), fd.clone());
        Ok(fd)
    }

    fn make_parents(&mut self, entry: &Path, rel: &Path) -> Result<OwnedFd, WriteError> {
        let mut prefix = PathBuf::new();
        let mut fd = open_beneath(&self.root, &prefix, OFlags::PATH | OFlags::DIRECTORY)
            .map_err(|e| self.resolve_error(entry, e))?;
        for c in rel.components() {
            prefix.push(c);
            fd = match open_beneath(&self.root, &prefix, OFlags::PATH | OFlags::DIRECTORY) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::NOENT) => {
                    let Component::Normal(name) = c else {
                        return Err(WriteError::BadName(entry.to_owned()));
                    };
                    match rfs::mkdirat(&fd, name, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => return Err(io_err("cannot create the directory", &prefix)(e)),
                    }
                    open_beneath(&self.root, &prefix, OFlags::PATH | OFlags::DIRECTORY)
                        .map_err(|e| self.resolve_error(entry, e))?
                }
                Err(e) => return Err(self.resolve_error(entry, e)),
            };
        }
        Ok(fd)
    }

    fn resolve_error(&self, entry: &Path, e: rustix::io::Errno) -> WriteError {
        match e {
            rustix::io::Errno::XDEV => WriteError::Escapes(entry.to_owned()),
            rustix::io::Errno::LOOP => WriteError::ThroughSymlink(entry.to_owned()),
            e => WriteError::Io {
                step: "cannot open the parent directory of",
                path: entry.to_owned(),
                source: e.into(),
            },
        }
    }

    /// Runs `make` to create the final component `name`; if something is in the way, removes
    /// it (a directory only counts as in the way unless `dir_ok`) and tries once more. Returns
    /// whether an existing directory was kept.
    fn create(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        path: &Path,
        dir_ok: bool,
        make: impl Fn(&OwnedFd) -> rustix::io::Result<()>,
    ) -> Result<bool, WriteError> {
        match make(parent) {
            Ok(()) => Ok(false),
            Err(rustix::io::Errno::EXIST) => {
                if self.clear_existing(parent, name, path, dir_ok)? {
                    return Ok(true);
                }
                make(parent).map_err(io_err("cannot create", path))?;
                Ok(false)
            }
            Err(e) => Err(io_err("cannot create", path)(e)),
        }
    }

    /// Removes a non-directory at `name` (a later archive member replaces an earlier one, as
    /// with tar). Returns true, removing nothing, for a directory when `dir_ok`.
    fn clear_existing(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        path: &Path,
        dir_ok: bool,
    ) -> Result<bool, WriteError> {
        let st =
            rfs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW).map_err(io_err("cannot inspect", path))?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            if dir_ok {
                return Ok(true);
            }
            if !self.layers {
                return Err(WriteError::ReplaceDir(path.to_owned()));
            }
            self.parents.clear();
            let (parent_rel, _) = split(path)?;
            self.remove_tree(&parent_rel.join(name))?;
            return Ok(false);
        }
        rfs::unlinkat(parent, name, AtFlags::empty()).map_err(io_err("cannot replace", path))?;
        // A cached parent may have been reached through what we just replaced.
        self.parents.clear();
        Ok(false)
    }

    fn add_dir(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        path: &Path,
        rel: &Path,
        meta: &Meta,
    ) -> Result<(), WriteError> {
        self.create(parent, name, path, true, |p| rfs::mkdirat(p, name, Mode::from_raw_mode(0o700)))?;
        let fd = rfs::openat(parent, name, crate::guestfs::OPEN_DIR_NOFOLLOW, Mode::empty())
            .map_err(io_err("cannot open", path))?;
        self.set_meta_fd(&fd, path, meta)?;
        self.dir_times.push((rel.to_owned(), meta.mtime));
        Ok(())
    }

    fn add_file(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        path: &Path,
        size: u64,
        meta: &Meta,
        content: impl FnOnce(&mut File) -> io::Result<u64>,
    ) -> Result<(), WriteError> {
        let free = self.free.saturating_sub(self.used);
        if size > free {
            return Err(WriteError::TooLarge { path: path.to_owned(), size, free });
        }
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let open = |p: &OwnedFd| rfs::openat(p, name, flags, Mode::from_raw_mode(0o600));
        let fd = match open(parent) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::EXIST) => {
                self.clear_existing(parent, name, path, false)?;
                open(parent).map_err(io_err("cannot create", path))?
            }
            Err(e) => return Err(io_err("cannot create", path)(e)),
        };
        let mut file = File::from(fd);
        let got = content(&mut file).map_err(|e| WriteError::Io {
            step: "cannot write",
            path: path.to_owned(),
            source: e,
        })?;
        if got != size {
            return Err(WriteError::Short { path: path.to_owned(), got, size });
        }
        // Accounted in blocks, as the filesystem does.
        self.used += size.div_ceil(4096) * 4096;
        // Order matters: writing drops setuid bits and file capabilities, chown drops them
        // again; so content, then owner, then xattrs (security.capability), then the mode.
        self.set_meta_fd(file.as_fd(), path, meta)?;
        rfs::futimens(&file, &timestamps(meta.mtime)).map_err(io_err("cannot set the times of", path))
    }

    fn add_hardlink(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        path: &Path,
        target: &Path,
    ) -> Result<(), WriteError> {
        let outside = || WriteError::LinkOutside { path: path.to_owned(), target: target.to_owned() };
        let (tparent_rel, tname) = match split(target) {
            Ok((p, Some(n))) => (p, n),
            Ok((_, None)) | Err(WriteError::BadName(_)) => {
                return Err(WriteError::BadName(target.to_owned()));
            }
            Err(_) => return Err(outside()),
        };
        let tparent = match open_beneath(&self.root, &tparent_rel, OFlags::PATH | OFlags::DIRECTORY) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::XDEV) => return Err(outside()),
            Err(rustix::io::Errno::LOOP) => return Err(WriteError::ThroughSymlink(target.to_owned())),
            Err(rustix::io::Errno::NOENT) => {
                return Err(WriteError::LinkMissing { path: path.to_owned(), target: target.to_owned() });
            }
            Err(e) => return Err(io_err("cannot open the directory of the link target of", path)(e)),
        };
        // Without AT_SYMLINK_FOLLOW linkat links a symlink itself, never what it points to.
        let link = |p: &OwnedFd| rfs::linkat(&tparent, tname, p, name, AtFlags::empty());
        match link(parent) {
            Err(rustix::io::Errno::NOENT) => {
                Err(WriteError::LinkMissing { path: path.to_owned(), target: target.to_owned() })
            }
            Err(rustix::io::Errno::EXIST) => {
                self.create(parent, name, path, false, link)?;
                Ok(())
            }
            other => other.map_err(io_err("cannot create the hard link", path)),
        }
    }

    fn set_meta_fd(&self, fd: impl AsFd, path: &Path, meta: &Meta) -> Result<(), WriteError> {
        let fd = fd.as_fd();
        rfs::fchown(fd, Some(uid(meta.uid)), Some(gid(meta.gid)))
            .map_err(io_err("cannot change the owner of", path))?;
        for (k, v) in &meta.xattrs {
            rfs::fsetxattr(fd, k.as_os_str(), v, rfs::XattrFlags::empty()).map_err(|e| WriteError::Io {
                step: "cannot set an extended attribute on",
                path: path.join(format!("[{}]", k.to_string_lossy())),
                source: e.into(),
            })?;
        }
        rfs::fchmod(fd, Mode::from_raw_mode(meta.mode & 0o7777))
            .map_err(io_err("cannot set the mode of", path))
    }
}

/// The names in a directory, without `.` and `..` (read whole before anything is changed).
fn dir_names(fd: &OwnedFd, path: &Path) -> Result<Vec<OsString>, WriteError> {
    let mut out = Vec::new();
    for e in rfs::Dir::read_from(fd).map_err(io_err("cannot read the directory", path))? {
        let e = e.map_err(io_err("cannot read the directory", path))?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(<OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(n).to_owned());
        }
    }
    Ok(out)
}

fn set_xattrs_path(proc: &str, path: &Path, meta: &Meta) -> Result<(), WriteError> {
    for (k, v) in &meta.xattrs {
        rfs::setxattr(proc, k.as_os_str(), v, rfs::XattrFlags::empty()).map_err(|e| WriteError::Io {
            step: "cannot set an extended attribute on",
            path: path.join(format!("[{}]", k.to_string_lossy())),
            source: e.into(),
        })?;
    }
    Ok(())
}

fn uid(n: u32) -> rfs::Uid {
    rfs::Uid::from_raw(n)
}

fn gid(n: u32) -> rfs::Gid {
    rfs::Gid::from_raw(n)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn own_meta(mode: u32) -> Meta {
        Meta {
            mode,
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
            mtime: (1_700_000_000, 5),
            xattrs: Vec::new(),
        }
    }

    fn file(w: &mut TreeWriter, path: &str, data: &[u8]) -> Result<(), WriteError> {
        let size = data.len() as u64;
        w.add(Path::new(path), Node::File { size }, &own_meta(0o640), |f| {
            io::Write::write_all(f, data)?;
            Ok(size)
        })
    }

    #[test]
    fn writes_inside_and_refuses_ways_out() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let outside = outer.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let mut w = TreeWriter::new(&root).unwrap();
        // Missing parents are made; names with a harmless ".." are fine.
        file(&mut w, "a/b/c", b"abc").unwrap();
        file(&mut w, "a/../d", b"d").unwrap();
        assert_eq!(std::fs::read(root.join("a/b/c")).unwrap(), b"abc");
        assert_eq!(std::fs::read(root.join("d")).unwrap(), b"d");
        let out = outside.to_string_lossy().into_owned();
        let link = |w: &mut TreeWriter, p: &str, t: &str| {
            w.add(Path::new(p), Node::Symlink(Path::new(t)), &own_meta(0o777), |_| Ok(0))
        };
        link(&mut w, "evil", &out).unwrap();
        link(&mut w, "up", "..").unwrap();
        assert!(matches!(file(&mut w, "../x", b"x"), Err(WriteError::Escapes(_))));
        assert!(matches!(file(&mut w, "a/../../x", b"x"), Err(WriteError::Escapes(_))));
        assert!(matches!(file(&mut w, &format!("{out}/x"), b"x"), Err(WriteError::Absolute(_))));
        assert!(matches!(file(&mut w, "evil/x", b"x"), Err(WriteError::ThroughSymlink(_))));
        assert!(matches!(file(&mut w, "up/outside/x", b"x"), Err(WriteError::ThroughSymlink(_))));
        std::fs::write(outside.join("secret"), "s").unwrap();
        let hard = |w: &mut TreeWriter, t: &str| {
            w.add(Path::new("h"), Node::HardLink(Path::new(t)), &own_meta(0), |_| Ok(0))
        };
        assert!(matches!(hard(&mut w, "../outside/secret"), Err(WriteError::LinkOutside { .. })));
        assert!(matches!(hard(&mut w, &format!("{out}/secret")), Err(WriteError::LinkOutside { .. })));
        assert!(matches!(hard(&mut w, "evil/secret"), Err(WriteError::ThroughSymlink(_))));
        assert!(matches!(hard(&mut w, "nope"), Err(WriteError::LinkMissing { .. })));
        hard(&mut w, "a/b/c").unwrap();
        // A symlink entry is replaced, not followed, by a later file of the same name.
        file(&mut w, "evil", b"now a file").unwrap();
        assert!(std::fs::symlink_metadata(root.join("evil")).unwrap().is_file());
        // More than the free space, and less content than announced.
        let huge = w.add(Path::new("big"), Node::File { size: 1 << 60 }, &own_meta(0o644), |_| Ok(0));
        assert!(matches!(huge, Err(WriteError::TooLarge { .. })));
        let short = w.add(Path::new("short"), Node::File { size: 10 }, &own_meta(0o644), |_| Ok(3));
        assert!(matches!(short, Err(WriteError::Short { got: 3, size: 10, .. })));
        w.finish().unwrap();
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1, "something was written outside");
        assert_eq!(std::fs::metadata(outside.join("secret")).unwrap().nlink(), 1);
        assert_eq!(
            std::fs::metadata(root.join("h")).unwrap().ino(),
            std::fs::metadata(root.join("a/b/c")).unwrap().ino()
        );
        let m = std::fs::metadata(root.join("a/b/c")).unwrap();
        assert_eq!((m.mode() & 0o7777, m.mtime(), m.mtime_nsec()), (0o640, 1_700_000_000, 5));
    }

    #[test]
    fn splits_member_names() {
        assert_eq!(split(Path::new("./")).unwrap(), (PathBuf::new(), None));
        assert_eq!(split(Path::new("a/./b/")).unwrap(), (PathBuf::from("a"), Some(OsStr::new("b"))));
        assert_eq!(split(Path::new("a/../b")).unwrap(), (PathBuf::from("a/.."), Some(OsStr::new("b"))));
        assert!(matches!(split(Path::new("/etc/x")), Err(WriteError::Absolute(_))));
        assert!(matches!(split(Path::new("a/..")), Err(WriteError::BadName(_))));
    }
}
