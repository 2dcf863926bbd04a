//! [`ImageStore`]: the directory of images. Each image is a directory named by a valid
//! machine name; hidden entries (`.#import-…`, `.#clone-…`) are temporaries and never listed.
//! Read-only images carry the immutable flag (`FS_IMMUTABLE_FL`) on their directory, as
//! machined's directory images do, so the kernel itself refuses changes to their entries.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use rustix::fs::{self as rfs, AtFlags, IFlags, Mode, RenameFlags, StatxFlags};

use super::confined::{Meta, Node, TreeWriter, WriteError};
use super::interrupt::{self, Interrupted, Temporary};
use super::walk::{self, Kind, WalkError};
use crate::guestfs;
use crate::names::{self, NameError};
use crate::osrelease::parse_os_release;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Not a valid machine name.
    #[error("invalid image name '{name}': {source}")]
    BadName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        source: NameError,
    },
    /// No image of that name.
    #[error("No image '{0}' known")]
    NoSuchImage(String),
    /// The name is taken.
    #[error("Image '{0}' already exists")]
    Exists(String),
    /// The image is read-only and the operation would change it.
    #[error("Image '{0}' is read-only (make it writable with: mctl read-only {0} no)")]
    ReadOnly(String),
    /// A running machine uses the image.
    #[error("Image '{0}' is in use by a running machine")]
    InUse(String),
    /// The filesystem cannot mark images read-only.
    #[error("cannot mark '{path}' read-only: its filesystem does not support the immutable flag ({source})")]
    NoImmutable {
        /// The image directory.
        path: PathBuf,
        /// The error from FS_IOC_SETFLAGS.
        source: io::Error,
    },
    /// A system call failed.
    #[error("{step} '{path}': {source}")]
    Io {
        /// What was being done.
        step: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Reading a tree failed.
    #[error(transparent)]
    Walk(#[from] WalkError),
    /// Writing a tree failed.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// A signal arrived.
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
    /// A file inside the image (written by whatever ran in it) could not be read.
    #[error(transparent)]
    ImageFile(#[from] crate::guestfs::GuestFileError),
}

fn io_err<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io { step, path: path.to_owned(), source }
}

/// The kind of an image (only directories for now; machined also knows subvolumes and raw
/// disk images).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageType {
    /// A plain directory tree.
    Directory,
}

impl ImageType {
    /// The name machined uses.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageType::Directory => "directory",
        }
    }
}

/// What is known about an image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImageInfo {
    /// Its name.
    pub name: String,
    /// Its directory.
    pub path: PathBuf,
    /// Its kind.
    #[serde(rename = "type")]
    pub image_type: ImageType,
    /// Whether it carries the immutable flag.
    pub read_only: bool,
    /// Creation (birth) time in µs since the epoch, when the filesystem records it.
    pub created_us: Option<u64>,
    /// Modification time of the top directory in µs since the epoch.
    pub modified_us: Option<u64>,
    /// Disk usage in bytes; `None` unless asked for (it takes a walk of the tree). machined
    /// reports `u64::MAX` for unknown.
    pub usage: Option<u64>,
}

/// A directory of images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageStore {
    /// The store's directory (`/var/lib/machines` by default).
    pub root: PathBuf,
}

/// A lock on an image directory: the launcher holds an exclusive flock on the tree it runs
/// (shared with `--read-only`), so the same lock tells whether an image is in use.
#[derive(Debug)]
pub struct ImageLock {
    _lock: Flock<OwnedFd>,
}

/// A new image being built in a hidden directory of the store; removed when dropped unless
/// committed with [`ImageStore::commit`].
#[derive(Debug)]
pub struct TempImage {
    tmp: Temporary,
}

impl TempImage {
    /// Where to build the tree.
    pub fn path(&self) -> &Path {
        self.tmp.path()
    }
}

fn micros(sec: i64, nsec: u32) -> Option<u64> {
    u64::try_from(sec).ok().map(|s| s * 1_000_000 + u64::from(nsec) / 1000)
}

/// A short random suffix for temporary names.
pub(crate) fn random_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

impl ImageStore {
    /// A store rooted at `root` (which need not exist yet).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory of image `name`, after checking the name.
    pub fn image_path(&self, name: &str) -> Result<PathBuf, StoreError> {
        names::validate(name).map_err(|source| StoreError::BadName { name: name.to_owned(), source })?;
        Ok(self.root.join(name))
    }

    /// All images, sorted by name.
    pub fn list(&self) -> Result<Vec<ImageInfo>, StoreError> {
        let rd = match std::fs::read_dir(&self.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("cannot read the image store", &self.root)(e)),
        };
        let mut out = Vec::new();
        for e in rd {
            let e = e.map_err(io_err("cannot read the image store", &self.root))?;
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') || names::validate(name).is_err() {
                continue;
            }
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            match self.info(name, &e.path()) {
                Ok(i) => out.push(i),
                // Removed meanwhile.
                Err(StoreError::NoSuchImage(_)) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// One image (without its usage).
    pub fn get(&self, name: &str) -> Result<ImageInfo, StoreError> {
        let path = self.image_path(name)?;
        self.info(name, &path)
    }

    /// One image with its disk usage (walks the tree).
    pub fn status(&self, name: &str) -> Result<ImageInfo, StoreError> {
        let mut info = self.get(name)?;
        info.usage = Some(walk::usage(&info.path)?);
        Ok(info)
    }

    fn info(&self, name: &str, path: &Path) -> Result<ImageInfo, StoreError> {
        let want = StatxFlags::TYPE | StatxFlags::MTIME | StatxFlags::BTIME;
        let st = match rfs::statx(rfs::CWD, path, AtFlags::SYMLINK_NOFOLLOW, want) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => return Err(StoreError::NoSuchImage(name.to_owned())),
            Err(e) => return Err(io_err("cannot inspect", path)(e.into())),
        };
        if u32::from(st.stx_mode) & libc::S_IFMT != libc::S_IFDIR {
            return Err(StoreError::NoSuchImage(name.to_owned()));
        }
        let created = if StatxFlags::from_bits_retain(st.stx_mask).contains(StatxFlags::BTIME) {
            micros(st.stx_btime.tv_sec, st.stx_btime.tv_nsec)
        } else {
            None
        };
        Ok(ImageInfo {
            name: name.to_owned(),
            path: path.to_owned(),
            image_type: ImageType::Directory,
            read_only: self.flags(path)?.is_some_and(|f| f.contains(IFlags::IMMUTABLE)),
            created_us: created,
            modified_us: micros(st.stx_mtime.tv_sec, st.stx_mtime.tv_nsec),
            usage: None,
        })
    }

    /// The inode flags of a directory; `None` where the filesystem has none.
    fn flags(&self, path: &Path) -> Result<Option<IFlags>, StoreError> {
        let fd = open_dir(path)?;
        match rfs::ioctl_getflags(&fd) {
            Ok(f) => Ok(Some(f)),
            Err(rustix::io::Errno::NOTTY | rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::INVAL) => {
                Ok(None)
            }
            Err(e) => Err(io_err("cannot read the inode flags of", path)(e.into())),
        }
    }

    /// The image's os-release fields (`/etc/os-release`, else `/usr/lib/os-release`; none if
    /// neither exists). Whatever ran in the image may have made them FIFOs, devices, huge files
    /// or symlinks out of it: they are read as guest files (confined, regular files only).
    pub fn os_release(&self, name: &str) -> Result<Vec<(String, String)>, StoreError> {
        let info = self.get(name)?;
        let root = open_dir(&info.path)?;
        match guestfs::read_first(root.as_fd(), &crate::osrelease::PATHS, guestfs::SMALL_FILE_LIMIT) {
            Ok(text) => Ok(parse_os_release(&text)),
            Err(e) if e.is_not_found() => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether image `name` is read-only.
    pub fn is_read_only(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.get(name)?.read_only)
    }

    /// Marks image `name` read-only or writable.
    pub fn set_read_only(&self, name: &str, read_only: bool) -> Result<(), StoreError> {
        let info = self.get(name)?;
        let fd = open_dir(&info.path)?;
        let flags = match rfs::ioctl_getflags(&fd) {
            Ok(f) => f,
            Err(e) => return Err(StoreError::NoImmutable { path: info.path, source: e.into() }),
        };
        let want = if read_only { flags | IFlags::IMMUTABLE } else { flags - IFlags::IMMUTABLE };
        if want != flags {
            rfs::ioctl_setflags(&fd, want).map_err(|e| match e {
                rustix::io::Errno::NOTTY | rustix::io::Errno::OPNOTSUPP => {
                    StoreError::NoImmutable { path: info.path.clone(), source: e.into() }
                }
                e => StoreError::Io {
                    step: "cannot change the inode flags of",
                    path: info.path.clone(),
                    source: e.into(),
                },
            })?;
        }
        Ok(())
    }

    /// Locks image `name` against use by a machine (or, `shared`, against writable use).
    pub fn lock(&self, name: &str, shared: bool) -> Result<ImageLock, StoreError> {
        let info = self.get(name)?;
        let fd = open_dir(&info.path)?;
        let how = if shared { FlockArg::LockSharedNonblock } else { FlockArg::LockExclusiveNonblock };
        match Flock::lock(fd, how) {
            Ok(l) => Ok(ImageLock { _lock: l }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(StoreError::InUse(name.to_owned())),
            Err((_, e)) => Err(io_err("cannot lock", &info.path)(e.into())),
        }
    }

    /// Fails with [`StoreError::Exists`] when `name` is taken.
    pub fn ensure_absent(&self, name: &str) -> Result<PathBuf, StoreError> {
        let path = self.image_path(name)?;
        match std::fs::symlink_metadata(&path) {
            Ok(_) => Err(StoreError::Exists(name.to_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(path),
            Err(e) => Err(io_err("cannot inspect", &path)(e)),
        }
    }

    /// A new hidden directory `.#PURPOSE-NAME-RANDOM` in the store (creating the store if
    /// needed), removed again unless committed.
    pub fn temp_image(&self, purpose: &str, name: &str) -> Result<TempImage, StoreError> {
        if !self.root.is_dir() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.root)
                .map_err(io_err("cannot create the image store", &self.root))?;
        }
        let path = self.root.join(format!(".#{purpose}-{name}-{}", random_suffix()));
        let tmp = Temporary::register(path.clone());
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(io_err("cannot create a temporary directory in the image store", &path))?;
        Ok(TempImage { tmp })
    }

    /// Renames a finished temporary image to `name`; fails if the name was taken meanwhile.
    pub fn commit(&self, tmp: TempImage, name: &str) -> Result<ImageInfo, StoreError> {
        let dest = self.image_path(name)?;
        tmp.tmp.commit(|from| {
            rfs::renameat_with(rfs::CWD, from, rfs::CWD, &dest, RenameFlags::NOREPLACE).map_err(|e| match e {
                rustix::io::Errno::EXIST => StoreError::Exists(name.to_owned()),
                e => StoreError::Io {
                    step: "cannot move the new image into place at",
                    path: dest.clone(),
                    source: e.into(),
                },
            })
        })?;
        self.get(name)
    }

    /// Copies image `src` to a new image `dst` (everything: ownership, modes, xattrs, hard
    /// links, device nodes, symlinks, times), writable unless `read_only`.
    pub fn clone_image(&self, src: &str, dst: &str, read_only: bool) -> Result<ImageInfo, StoreError> {
        let from = self.get(src)?;
        self.ensure_absent(dst)?;
        // A machine writing to the tree would make the copy inconsistent.
        let _lock = self.lock(src, true)?;
        let tmp = self.temp_image("clone", dst)?;
        copy_tree(&from.path, tmp.path())?;
        let info = self.commit(tmp, dst)?;
        super::oci::meta::cloned(self, src, dst);
        if read_only {
            self.set_read_only(dst, true)?;
            return self.get(dst);
        }
        Ok(info)
    }

    /// Renames image `old` to `new`.
    pub fn rename(&self, old: &str, new: &str) -> Result<ImageInfo, StoreError> {
        let from = self.get(old)?;
        let to = self.image_path(new)?;
        if from.read_only {
            return Err(StoreError::ReadOnly(old.to_owned()));
        }
        let _lock = self.lock(old, false)?;
        rfs::renameat_with(rfs::CWD, &from.path, rfs::CWD, &to, RenameFlags::NOREPLACE).map_err(
            |e| match e {
                rustix::io::Errno::EXIST => StoreError::Exists(new.to_owned()),
                rustix::io::Errno::PERM => StoreError::ReadOnly(old.to_owned()),
                e => StoreError::Io { step: "cannot rename", path: from.path.clone(), source: e.into() },
            },
        )?;
        super::oci::meta::renamed(self, old, new);
        self.get(new)
    }

    /// Removes image `name`. It first disappears under a hidden name, so a removal that fails
    /// half-way never leaves a half-image visible under the old name... unless renaming back
    /// is possible, which it tries, so that what is left can be looked at.
    pub fn remove(&self, name: &str) -> Result<(), StoreError> {
        let info = self.get(name)?;
        if info.read_only {
            return Err(StoreError::ReadOnly(name.to_owned()));
        }
        let _lock = self.lock(name, false)?;
        let hidden = self.root.join(format!(".#remove-{name}-{}", random_suffix()));
        rfs::renameat_with(rfs::CWD, &info.path, rfs::CWD, &hidden, RenameFlags::NOREPLACE).map_err(|e| {
            match e {
                rustix::io::Errno::PERM => StoreError::ReadOnly(name.to_owned()),
                e => StoreError::Io { step: "cannot remove", path: info.path.clone(), source: e.into() },
            }
        })?;
        // The guest's tree: any depth (see guestfs::remove_tree).
        if let Err(e) = crate::guestfs::remove_tree(&hidden) {
            let _ = rfs::renameat_with(rfs::CWD, &hidden, rfs::CWD, &info.path, RenameFlags::NOREPLACE);
            return Err(io_err("cannot remove", &info.path)(e));
        }
        super::oci::meta::forget(self, name);
        Ok(())
    }
}

fn open_dir(path: &Path) -> Result<OwnedFd, StoreError> {
    rfs::open(path, crate::guestfs::OPEN_DIR_NOFOLLOW, Mode::empty())
        .map_err(|e| io_err("cannot open", path)(e.into()))
}

/// The metadata of a file found by a walk, without xattrs.
pub(crate) fn meta_of(st: &rfs::Stat) -> Meta {
    Meta {
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        // Nanoseconds are below 10^9; a value that does not even fit a u32 counts as 0.
        mtime: (st.st_mtime, u32::try_from(st.st_mtime_nsec).unwrap_or(0)),
        xattrs: Vec::new(),
    }
}

/// Copies the tree at `src` into the empty directory `dst` through a [`TreeWriter`].
pub fn copy_tree(src: &Path, dst: &Path) -> Result<(), StoreError> {
    copy_tree_mapping_ids(src, dst, &|id| id)
}

/// [`copy_tree`], with every owner and group id passed through `ids` (a copy out of a machine
/// with a user namespace gives its ids back their meaning on the host).
pub fn copy_tree_mapping_ids(src: &Path, dst: &Path, ids: &dyn Fn(u32) -> u32) -> Result<(), StoreError> {
    let mut writer = TreeWriter::new(dst)?;
    // First path seen of each multiply-linked inode.
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    walk::walk::<StoreError>(src, |f| {
        interrupt::check()?;
        let mut meta = meta_of(f.stat);
        (meta.uid, meta.gid) = (ids(meta.uid), ids(meta.gid));
        let kind = f.kind();
        if kind != Kind::Dir && f.stat.st_nlink > 1 {
            let key = (f.stat.st_dev, f.stat.st_ino);
            if let Some(first) = links.get(&key) {
                writer.add(f.rel, Node::HardLink(first), &meta, |_| Ok(0))?;
                return Ok(());
            }
            links.insert(key, f.rel.to_owned());
        }
        match kind {
            Kind::Dir => {
                meta.xattrs = f.xattrs(None)?;
                writer.add(f.rel, Node::Dir, &meta, |_| Ok(0))?;
            }
            Kind::File => {
                let mut file = f.open_file()?;
                meta.xattrs = f.xattrs(Some(&file))?;
                // File to file: std uses copy_file_range, which reflinks where it can.
                writer.add(f.rel, Node::File { size: f.size()? }, &meta, |out| io::copy(&mut file, out))?;
            }
            Kind::Symlink => {
                let target = f.read_link()?;
                meta.xattrs = f.xattrs(None)?;
                writer.add(f.rel, Node::Symlink(&target), &meta, |_| Ok(0))?;
            }
            Kind::Char | Kind::Block | Kind::Fifo => {
                meta.xattrs = f.xattrs(None)?;
                let node = match kind {
                    Kind::Char => Node::Char(f.stat.st_rdev),
                    Kind::Block => Node::Block(f.stat.st_rdev),
                    _ => Node::Fifo,
                };
                writer.add(f.rel, node, &meta, |_| Ok(0))?;
            }
            Kind::Socket => {
                tracing::warn!("skipping socket {} (sockets cannot be copied)", f.path.display());
            }
        }
        Ok(())
    })?;
    writer.finish()?;
    Ok(())
}

/// Whether `name` is a store-internal temporary (never an image).
pub fn is_hidden(name: &OsStr) -> bool {
    name.as_bytes().starts_with(b".")
}
