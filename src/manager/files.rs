//! Files in and out of running machines: machine1's CopyToMachine, CopyFromMachine (and their
//! `WithFlags` forms) and BindMountMachine.
//!
//! Every path in a machine is resolved by the kernel inside the machine's root (`openat2`
//! with `RESOLVE_IN_ROOT` on `/proc/LEADER/root`, or in the machine's own mount namespace for a
//! bind mount): a guest's symlink, however it points, leads only to the guest's own files.
//! Entries below are created and walked with `*at` calls that never follow symlinks. A copy
//! lands under a temporary name beside its destination and is renamed into place at the end,
//! so a failed copy leaves nothing behind.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags};

use super::auth::Action;
use super::{Caller, Machine, Manager, ManagerError};
use crate::images::store::{copy_tree_mapping_ids, random_suffix};
use crate::sys::linux;
use crate::userns::IdRange;

/// The arguments of a copy.
#[derive(Debug, Clone)]
pub struct CopyRequest {
    /// Absolute path where the copy is taken from.
    pub source: String,
    /// Absolute path where it goes; empty for the same path as the source.
    pub destination: String,
    /// Replace an existing destination (`MACHINE_COPY_REPLACE`).
    pub replace: bool,
    /// Flags machine1 does not define (refused).
    pub unknown_flags: u64,
}

/// The arguments of a bind mount.
#[derive(Debug, Clone)]
pub struct BindRequest {
    /// Absolute host path of a directory or file.
    pub source: String,
    /// Absolute path in the machine; empty for the same path as the source.
    pub destination: String,
    /// Mount it read-only.
    pub read_only: bool,
    /// Create the destination (and its parents) when missing.
    pub mkdir: bool,
}

/// Checks a path argument as machined does: absolute and normalized.
fn checked_path(path: &str, what: &str) -> Result<PathBuf, ManagerError> {
    let p = Path::new(path);
    let normalized = p.is_absolute()
        && !path.contains("//")
        && p.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !normalized {
        return Err(ManagerError::InvalidArgs(format!("{what} path must be absolute and normalized.")));
    }
    Ok(p.to_owned())
}

/// Source and destination of a copy or bind, checked.
fn paths(source: &str, destination: &str) -> Result<(PathBuf, PathBuf), ManagerError> {
    let source = checked_path(source, "Source")?;
    let destination =
        if destination.is_empty() { source.clone() } else { checked_path(destination, "Destination")? };
    if destination == Path::new("/") {
        return Err(ManagerError::InvalidArgs("Destination path must not be the root directory.".into()));
    }
    Ok((source, destination))
}

fn failed(what: &str, path: &Path) -> impl FnOnce(io::Error) -> ManagerError {
    let what = format!("{what} {}", path.display());
    move |e| ManagerError::Failed(format!("Failed to {what}: {e}"))
}

/// Where a copy's temporary lands: a hidden name in the destination's directory.
fn temp_name() -> String {
    format!(".#mctl-copy-{}", random_suffix())
}

impl Manager {
    /// The machine's root directory as its leader sees it, and its id range if it has a user namespace; checks the
    /// leader is still the registered process once the root is open.
    fn machine_root(&self, m: &Machine) -> Result<(OwnedFd, Option<IdRange>), ManagerError> {
        let proc_root = PathBuf::from(format!("/proc/{}/root", m.leader));
        let root =
            rustix::fs::open(&proc_root, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
                .map_err(|e| failed("open the root of machine", Path::new(&m.name))(e.into()))?;
        self.check_leader(m)?;
        let range = crate::procfs::user_namespace_range(m.leader)
            .map_err(failed("read the user namespace of", Path::new(&m.name)))?;
        Ok((root, range))
    }

    /// What both copies check and open first: the machine (never `.host`), the caller's
    /// right, the flags, both paths, the machine's root and id range.
    fn copy_ends(
        &self,
        name: &str,
        req: &CopyRequest,
        caller: &Caller,
    ) -> Result<(PathBuf, PathBuf, OwnedFd, Option<IdRange>), ManagerError> {
        let m = self.get_guest(name)?;
        caller.authorize(Action::Enter)?;
        check_flags(req)?;
        let (source, destination) = paths(&req.source, &req.destination)?;
        let (root, range) = self.machine_root(&m)?;
        Ok((source, destination, root, range))
    }

    /// Copies `req.source` in the machine to `req.destination` on the host (CopyFromMachine).
    pub fn copy_from(&self, name: &str, req: CopyRequest, caller: &Caller) -> Result<(), ManagerError> {
        let (source, destination, root, range) = self.copy_ends(name, &req, caller)?;
        let src = linux::open_in_root(root.as_fd(), &source, libc::O_PATH)
            .map_err(failed("open in the machine", &source))?;
        let (parent, file_name) = split(&destination)?;
        let parent_fd =
            rustix::fs::open(parent, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
                .map_err(|e| failed("open the destination directory", parent)(e.into()))?;
        // The host sees a user-namespaced machine's files with its ids shifted: give them
        // back the meaning they have inside.
        let unshift = move |id: u32| range.map_or(id, |r| from_machine(r, id));
        place(&parent_fd, parent, file_name, req.replace, |tmp_path| {
            copy_entry(&fd_path(&src), tmp_path, &unshift)
                .map_err(|e| format!("copy {}: {e}", source.display()))
        })
    }

    /// Copies `req.source` on the host to `req.destination` in the machine (CopyToMachine).
    pub fn copy_to(&self, name: &str, req: CopyRequest, caller: &Caller) -> Result<(), ManagerError> {
        let (source, destination, root, range) = self.copy_ends(name, &req, caller)?;
        fs::metadata(&source).map_err(failed("read", &source))?;
        let (parent, file_name) = split(&destination)?;
        let parent_fd = linux::open_in_root(root.as_fd(), parent, libc::O_PATH | libc::O_DIRECTORY)
            .map_err(failed("open in the machine the directory", parent))?;
        let copy = move || {
            let shift = move |id: u32| range.map_or(id, |r| into_machine(r, id));
            place(&parent_fd, parent, file_name, req.replace, |tmp_path| {
                copy_entry(&source, tmp_path, &shift).map_err(|e| format!("copy {}: {e}", source.display()))
            })
        };
        let Some(r) = range else { return copy() };
        // Into a machine with a user namespace, files are created as its root, whose ids its
        // (possibly idmapped) tree can hold: in a thread of its own, whose credentials end
        // with it.
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    linux::thread_creates_files_as(r.start, r.start).map_err(|e| {
                        ManagerError::Failed(format!("Failed to act as the root of machine {name}: {e}"))
                    })?;
                    copy()
                })
                .join()
                .unwrap_or_else(|_| Err(ManagerError::Failed("the copy thread panicked".into())))
        })
    }
}

/// A host id of a machine's range, as the machine knows it (ids outside are left alone).
fn from_machine(r: IdRange, id: u32) -> u32 {
    if id >= r.start && id - r.start < r.count { id - r.start } else { id }
}

/// A machine's id as the host stores it; ids beyond the range become its nobody (65534).
fn into_machine(r: IdRange, id: u32) -> u32 {
    let inside = if id < r.count { id } else { 65534.min(r.count.saturating_sub(1)) };
    r.start + inside
}

fn check_flags(req: &CopyRequest) -> Result<(), ManagerError> {
    if req.unknown_flags != 0 {
        return Err(ManagerError::InvalidArgs(format!("Invalid 'flags' parameter '{}'", req.unknown_flags)));
    }
    Ok(())
}

/// A path's directory and last name.
fn split(path: &Path) -> Result<(&Path, &std::ffi::OsStr), ManagerError> {
    match (path.parent(), path.file_name()) {
        (Some(p), Some(n)) => Ok((p, n)),
        _ => Err(ManagerError::InvalidArgs(format!("Invalid path {}", path.display()))),
    }
}

/// The path of an open file through `/proc/self/fd` (its final component followed).
fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Makes `name` in the directory `dir` (opened as `dir_fd`) by `fill`ing a temporary beside it
/// and renaming that into place; the temporary is removed when anything fails.
fn place(
    dir_fd: &OwnedFd,
    dir: &Path,
    name: &std::ffi::OsStr,
    replace: bool,
    fill: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<(), ManagerError> {
    let target = dir.join(name);
    let exists = rustix::fs::statat(dir_fd, name, AtFlags::SYMLINK_NOFOLLOW).is_ok();
    if exists && !replace {
        return Err(ManagerError::Failed(format!("Failed to copy: {} exists", target.display())));
    }
    let tmp = temp_name();
    let tmp_path = fd_path(dir_fd).join(&tmp);
    let filled = fill(&tmp_path).map_err(|e| ManagerError::Failed(format!("Failed to {e}")));
    let renamed = filled.and_then(|()| {
        let flags = if exists { RenameFlags::EXCHANGE } else { RenameFlags::NOREPLACE };
        rustix::fs::renameat_with(dir_fd, tmp.as_str(), dir_fd, name, flags)
            .map_err(|e| ManagerError::Failed(format!("Failed to copy to {}: {e}", target.display())))
    });
    // After an exchange the temporary name holds what was replaced (a file or a whole tree).
    let _ = crate::guestfs::remove_tree(&tmp_path);
    renamed
}

/// Copies the directory or regular file at `src` to the new path `dst` with owner, mode and
/// times (a tree also with extended attributes: a single file without); `ids` maps owners and
/// groups.
fn copy_entry(src: &Path, dst: &Path, ids: &dyn Fn(u32) -> u32) -> Result<(), String> {
    let meta = fs::metadata(src).map_err(|e| e.to_string())?;
    if meta.is_dir() {
        fs::create_dir(dst).map_err(|e| e.to_string())?;
        // `/.` makes the walk enter a directory reached through a /proc/self/fd link.
        let src = src.join(".");
        return copy_tree_mapping_ids(&src, dst, ids).map_err(|e| e.to_string());
    }
    if !meta.is_file() {
        return Err("only directories and regular files can be copied".into());
    }
    // Non-blocking: a guest's FIFO swapped in meanwhile cannot stall us (checked again below).
    let mut input = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(src)
        .map_err(|e| e.to_string())?;
    if !input.metadata().map_err(|e| e.to_string())?.is_file() {
        return Err("only directories and regular files can be copied".into());
    }
    let mut output = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dst)
        .map_err(|e| e.to_string())?;
    io::copy(&mut input, &mut output).map_err(|e| e.to_string())?;
    let fd = output.as_fd();
    let (uid, gid) = (rustix::fs::Uid::from_raw(ids(meta.uid())), rustix::fs::Gid::from_raw(ids(meta.gid())));
    rustix::fs::fchown(fd, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
    // After chown, which clears setuid and setgid bits.
    output.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777)).map_err(|e| e.to_string())?;
    let times = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec { tv_sec: meta.atime(), tv_nsec: meta.atime_nsec() },
        last_modification: rustix::fs::Timespec { tv_sec: meta.mtime(), tv_nsec: meta.mtime_nsec() },
    };
    rustix::fs::futimens(fd, &times).map_err(|e| e.to_string())?;
    Ok(())
}

impl Manager {
    /// The machine's root directory, opened (OpenMachineRootDirectory); the host's `/` for
    /// `.host`.
    pub fn open_root_directory(&self, name: &str, caller: &Caller) -> Result<OwnedFd, ManagerError> {
        let m = self.get(name)?;
        caller.authorize(Action::Enter)?;
        let path =
            if m.class == super::Class::Host { "/".to_owned() } else { format!("/proc/{}/root", m.leader) };
        let root = rustix::fs::open(
            path.as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| failed("open the root directory of machine", Path::new(name))(e.into()))?;
        if m.class != super::Class::Host {
            self.check_leader(&m)?;
        }
        Ok(root)
    }

    /// Bind-mounts a host directory or file into the running machine (BindMountMachine): a
    /// detached copy of the source's mount is moved into the machine's mount namespace by a
    /// thread that joins it alone.
    pub fn bind_mount(&self, name: &str, req: BindRequest, caller: &Caller) -> Result<(), ManagerError> {
        let m = self.get_guest(name)?;
        caller.authorize(Action::Enter)?;
        let (source, destination) = paths(&req.source, &req.destination)?;
        let source_meta = fs::metadata(&source).map_err(failed("read", &source))?;
        let mntns = fs::File::open(format!("/proc/{}/ns/mnt", m.leader))
            .map_err(failed("open the mount namespace of machine", Path::new(name)))?;
        self.check_leader(&m)?;
        let tree = linux::open_tree(&source, true).map_err(failed("take a copy of the mount of", &source))?;
        if req.read_only {
            linux::set_tree_readonly(tree.as_fd(), true)
                .map_err(failed("make read-only the bind of", &source))?;
        }
        let is_dir = source_meta.is_dir();
        let mkdir = req.mkdir;
        let dest = destination.clone();
        let joined = std::thread::Builder::new()
            .name("bind-mount".into())
            .spawn(move || mount_in_namespace(&mntns, &tree, &dest, is_dir, mkdir))
            .map_err(failed("start a thread for", &destination))?
            .join()
            .map_err(|_| ManagerError::Failed("the bind mount thread panicked".into()))?;
        joined.map_err(|e| {
            ManagerError::Failed(format!(
                "Failed to mount on {} in machine {name}: {e}",
                destination.display()
            ))
        })
    }
}

/// Runs in a thread of its own, which ends afterwards: leaves the process's shared filesystem
/// attributes, joins the machine's mount namespace (its root becomes ours), creates the
/// destination if asked, and attaches `tree` there.
fn mount_in_namespace(
    mntns: &fs::File,
    tree: &OwnedFd,
    dest: &Path,
    is_dir: bool,
    mkdir: bool,
) -> io::Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)?;
    nix::sched::setns(mntns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNS)?;
    if mkdir {
        if is_dir {
            fs::create_dir_all(dest)?;
        } else {
            if let Some(parent) = dest.parent() {
                fs::create_dir_all(parent)?;
            }
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .custom_flags(libc::O_NOFOLLOW)
                .open(dest)
            {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
        }
    }
    let target = fs::symlink_metadata(dest)?;
    if target.is_dir() != is_dir {
        return Err(io::Error::other(if is_dir {
            "the destination is not a directory"
        } else {
            "the destination is a directory, the source is not"
        }));
    }
    linux::move_mount(tree.as_fd(), dest)
}
