//! The syscall layer: the only place `unsafe` lives.
//!
//! [`Sys`] covers the filesystem operations the launcher's mount plans perform, so that plans
//! can be executed against [`fake::FakeSys`] in tests. Process-level calls (fork, pidfds, ptys,
//! detached mounts) are thin safe wrappers in [`linux`].

use std::io;
use std::os::fd::BorrowedFd;
use std::path::Path;

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

#[cfg(test)]
pub mod fake;
pub mod linux;
pub mod loopdev;
pub mod nfnetlink;

/// The kind of special file [`Sys::mknod`] creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum NodeKind {
    /// A character device.
    Char,
    /// A block device.
    Block,
    /// A named pipe.
    Fifo,
    /// A unix socket inode (not bound).
    Socket,
}

/// What a path is (symlinks followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A directory.
    Directory,
    /// A regular file.
    Regular,
    /// A device node, fifo or socket.
    Node(NodeKind),
}

/// Filesystem operations performed while a machine's root is assembled.
pub trait Sys {
    /// mount(2).
    fn mount(
        &self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()>;
    /// umount2(2).
    fn umount(&self, target: &Path, flags: MntFlags) -> io::Result<()>;
    /// `mkdir -p` with `mode` for the directories it creates.
    fn mkdir_all(&self, path: &Path, mode: u32) -> io::Result<()>;
    /// mknod(2) with exactly `mode` (umask ignored).
    fn mknod(&self, path: &Path, kind: NodeKind, mode: u32, major: u32, minor: u32) -> io::Result<()>;
    /// symlink(2): `link` pointing at `target`.
    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()>;
    /// readlink(2).
    fn read_link(&self, link: &Path) -> io::Result<std::path::PathBuf>;
    /// setfsuid(2) and setfsgid(2): whom files created from now on belong to (0 again restores
    /// the file system capabilities a non-zero fsuid takes away).
    fn set_fs_ids(&self, uid: u32, gid: u32);
    /// lchown(2).
    fn lchown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()>;
    /// Creates or truncates `path` with `contents` and exactly `mode`.
    fn write_file(&self, path: &Path, contents: &[u8], mode: u32) -> io::Result<()>;
    /// Copies `contents` to `path` with exactly `mode`: with `replace` through a new file
    /// renamed over any inode there, else in place, refusing to follow a symlink at `path`.
    fn place_file(&self, path: &Path, contents: &[u8], mode: u32, replace: bool) -> io::Result<()>;
    /// Whether `path` exists (following symlinks).
    fn exists(&self, path: &Path) -> bool;
    /// Sets the permission bits of `path`.
    fn chmod(&self, path: &Path, mode: u32) -> io::Result<()>;
    /// What `path` is, following symlinks.
    fn file_kind(&self, path: &Path) -> io::Result<FileKind>;
    /// Removes the file `path`.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes `new_root` the root of the calling process's mount namespace (and its working
    /// directory). The old root stays stacked on top of the new one, where no lookup from the
    /// new root reaches it, until [`Sys::detach_old_root`].
    fn pivot_root(&self, new_root: &Path) -> io::Result<()>;
    /// Detaches the old root that [`Sys::pivot_root`] left stacked on the new one, so nothing
    /// of the host's tree stays reachable. This waits for an RCU grace period.
    fn detach_old_root(&self) -> io::Result<()>;
    /// Whether the detached mount `tree` has a directory at its root.
    fn tree_is_dir(&self, tree: BorrowedFd<'_>) -> io::Result<bool>;
    /// Attaches a detached mount (from `open_tree`) at `target`.
    fn attach(&self, tree: BorrowedFd<'_>, target: &Path) -> io::Result<()>;
    /// unshare(2).
    fn unshare(&self, flags: CloneFlags) -> io::Result<()>;
    /// setns(2) into the namespace `ns` is a handle of.
    fn setns(&self, ns: BorrowedFd<'_>, kind: CloneFlags) -> io::Result<()>;
    /// sethostname(2).
    fn sethostname(&self, name: &str) -> io::Result<()>;
    /// Becomes `uid`/`gid` with the supplementary `groups` (setgroups, setgid, setuid).
    fn set_identity(&self, uid: u32, gid: u32, groups: &[u32]) -> io::Result<()>;
}
