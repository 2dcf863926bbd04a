//! The real syscalls: [`LinuxSys`] and the process-level wrappers the launcher needs.

use std::ffi::{CStr, CString};
use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};

use super::{NodeKind, Sys};

/// [`Sys`] backed by the kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxSys;

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

impl Sys for LinuxSys {
    fn mount(
        &self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        nix::mount::mount(source, target, fstype, flags, data).map_err(io::Error::from)
    }

    fn umount(&self, target: &Path, flags: MntFlags) -> io::Result<()> {
        nix::mount::umount2(target, flags).map_err(io::Error::from)
    }

    fn mkdir_all(&self, path: &Path, mode: u32) -> io::Result<()> {
        fs::DirBuilder::new().recursive(true).mode(mode).create(path)
    }

    fn mknod(&self, path: &Path, kind: NodeKind, mode: u32, major: u32, minor: u32) -> io::Result<()> {
        let kind = match kind {
            NodeKind::Char => SFlag::S_IFCHR,
            NodeKind::Block => SFlag::S_IFBLK,
            NodeKind::Fifo => SFlag::S_IFIFO,
            NodeKind::Socket => SFlag::S_IFSOCK,
        };
        let perm = Mode::from_bits_truncate(mode);
        let dev = nix::sys::stat::makedev(major.into(), minor.into());
        nix::sys::stat::mknod(path, kind, perm, dev)?;
        // mknod honours the umask; the mode must be exact.
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
    }

    fn set_fs_ids(&self, uid: u32, gid: u32) {
        // Order: the group while the fsuid still grants the capability to set it freely.
        nix::unistd::setfsgid(nix::unistd::Gid::from_raw(gid));
        nix::unistd::setfsuid(nix::unistd::Uid::from_raw(uid));
    }

    fn lchown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
    }

    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
        std::os::unix::fs::symlink(target, link)
    }

    fn read_link(&self, link: &Path) -> io::Result<std::path::PathBuf> {
        fs::read_link(link)
    }

    fn write_file(&self, path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
        let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(path)?;
        f.write_all(contents)?;
        f.set_permissions(fs::Permissions::from_mode(mode))
    }

    fn place_file(&self, path: &Path, contents: &[u8], mode: u32, replace: bool) -> io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        // The same file from the last run (resolv.conf, localtime): rewriting it would only
        // cost a journal write on a disk tree.
        if holds_exactly(path, contents, mode) {
            return Ok(());
        }
        if !replace {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)?;
            f.write_all(contents)?;
            return f.set_permissions(fs::Permissions::from_mode(mode));
        }
        let name = path.file_name().ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let tmp = path.with_file_name(format!(".#{}.{}", name.to_string_lossy(), std::process::id()));
        let written = (|| {
            let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
            f.write_all(contents)?;
            f.set_permissions(fs::Permissions::from_mode(mode))?;
            fs::rename(&tmp, path)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written
    }

    fn exists(&self, path: &Path) -> bool {
        fs::metadata(path).is_ok()
    }

    fn chmod(&self, path: &Path, mode: u32) -> io::Result<()> {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
    }

    fn file_kind(&self, path: &Path) -> io::Result<super::FileKind> {
        use super::{FileKind, NodeKind};
        use std::os::unix::fs::FileTypeExt;
        let t = fs::metadata(path)?.file_type();
        Ok(if t.is_dir() {
            FileKind::Directory
        } else if t.is_char_device() {
            FileKind::Node(NodeKind::Char)
        } else if t.is_block_device() {
            FileKind::Node(NodeKind::Block)
        } else if t.is_fifo() {
            FileKind::Node(NodeKind::Fifo)
        } else if t.is_socket() {
            FileKind::Node(NodeKind::Socket)
        } else {
            FileKind::Regular
        })
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn pivot_root(&self, new_root: &Path) -> io::Result<()> {
        // pivot_root(".", ".") stacks the old root on top of the new one. Lookups start at the
        // root (or the working directory, "/" here) without descending into what is mounted on
        // it, so the old root is out of reach until detach_old_root unmounts it.
        nix::unistd::chdir(new_root).map_err(pivot_step("change into the new root"))?;
        nix::unistd::pivot_root(".", ".").map_err(pivot_step("pivot_root"))?;
        nix::unistd::chdir("/").map_err(pivot_step("change to /"))
    }

    fn detach_old_root(&self) -> io::Result<()> {
        // "." (the new root) resolved as a mount point is the topmost mount on it: the old root.
        nix::unistd::chdir("/").map_err(pivot_step("change to /"))?;
        nix::mount::umount2(".", MntFlags::MNT_DETACH).map_err(pivot_step("detach the old root"))?;
        nix::unistd::chdir("/").map_err(pivot_step("change to /"))
    }

    fn tree_is_dir(&self, tree: BorrowedFd<'_>) -> io::Result<bool> {
        let st = nix::sys::stat::fstat(tree)?;
        Ok(SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR)
    }

    fn attach(&self, tree: BorrowedFd<'_>, target: &Path) -> io::Result<()> {
        move_mount(tree, target)
    }

    fn unshare(&self, flags: nix::sched::CloneFlags) -> io::Result<()> {
        Ok(nix::sched::unshare(flags)?)
    }

    fn setns(&self, ns: BorrowedFd<'_>, kind: nix::sched::CloneFlags) -> io::Result<()> {
        Ok(nix::sched::setns(ns, kind)?)
    }

    fn sethostname(&self, name: &str) -> io::Result<()> {
        Ok(nix::unistd::sethostname(name)?)
    }

    fn set_identity(&self, uid: u32, gid: u32, groups: &[u32]) -> io::Result<()> {
        use nix::unistd::{Gid, Uid};
        let groups: Vec<Gid> = groups.iter().map(|g| Gid::from_raw(*g)).collect();
        nix::unistd::setgroups(&groups)?;
        nix::unistd::setgid(Gid::from_raw(gid))?;
        nix::unistd::setuid(Uid::from_raw(uid))?;
        Ok(())
    }
}

fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

fn pivot_step(what: &'static str) -> impl Fn(nix::Error) -> io::Error {
    move |e| io::Error::new(io::Error::from(e).kind(), format!("{what}: {e}"))
}

/// Clones the mount at `path` (recursively when `recursive`) into a detached tree that can be
/// attached elsewhere with [`move_mount`], even after the caller changed its root.
pub fn open_tree(path: &Path, recursive: bool) -> io::Result<OwnedFd> {
    use rustix::mount::OpenTreeFlags;
    let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= OpenTreeFlags::AT_RECURSIVE;
    }
    Ok(rustix::mount::open_tree(rustix::fs::CWD, path, flags)?)
}

/// Makes every mount of the detached tree `tree` read-only (recursively when `recursive`).
pub fn set_tree_readonly(tree: BorrowedFd<'_>, recursive: bool) -> io::Result<()> {
    let attr =
        libc::mount_attr { attr_set: libc::MOUNT_ATTR_RDONLY, attr_clr: 0, propagation: 0, userns_fd: 0 };
    mount_setattr(tree, recursive, &attr)
}

/// Makes the detached tree `tree` (a single mount) an idmapped mount through the id maps of the
/// user namespace `userns`: files owned by id N on disk appear owned by the host id that N maps
/// to, and files created through it are stored with the id mapped back.
/// With `recursive`, every mount of the tree.
pub fn set_tree_idmap(tree: BorrowedFd<'_>, userns: BorrowedFd<'_>, recursive: bool) -> io::Result<()> {
    // A live fd is never negative.
    #[allow(clippy::cast_sign_loss)]
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    mount_setattr(tree, recursive, &attr)
}

/// mount_setattr(2) on the detached tree `tree` (rustix has no wrapper for it).
fn mount_setattr(tree: BorrowedFd<'_>, recursive: bool, attr: &libc::mount_attr) -> io::Result<()> {
    let mut flags = libc::AT_EMPTY_PATH;
    if recursive {
        flags |= libc::AT_RECURSIVE;
    }
    // SAFETY: `attr` is a valid mount_attr borrowed for the call, its size is passed alongside,
    // the empty path is a static NUL-terminated string and `tree` (and any userns fd inside
    // `attr`) are live fds borrowed for the call.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            flags,
            attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    })?;
    Ok(())
}

/// Attaches the detached mount `tree` at `target` (resolved in the caller's root).
pub fn move_mount(tree: BorrowedFd<'_>, target: &Path) -> io::Result<()> {
    rustix::mount::move_mount(
        tree,
        "",
        rustix::fs::CWD,
        target,
        rustix::mount::MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )?;
    Ok(())
}

/// Attaches the detached mount `tree` on the file or directory `target` is open on (an
/// `O_PATH` fd will do), with no path walked.
pub fn move_mount_onto(tree: BorrowedFd<'_>, target: BorrowedFd<'_>) -> io::Result<()> {
    use rustix::mount::MoveMountFlags;
    rustix::mount::move_mount(
        tree,
        "",
        target,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )?;
    Ok(())
}

/// Opens `path` beneath `root` with the kernel confining the walk to `root`: `..`, absolute
/// symlinks and magic links cannot lead outside it.
pub fn open_in_root(root: BorrowedFd<'_>, path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    use rustix::fs::{OFlags, ResolveFlags};
    let rel = path.strip_prefix("/").unwrap_or(path);
    let rel = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
    // The same flag bits, as rustix types them.
    #[allow(clippy::cast_sign_loss)]
    let oflags = OFlags::from_bits_retain(flags as u32) | OFlags::CLOEXEC;
    Ok(openat2_retrying(root, rel, oflags, ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS)?)
}

/// openat2, tried again on the EAGAIN a scoped lookup (RESOLVE_IN_ROOT or _BENEATH) returns
/// when any mount or rename on the system raced with its walk (openat2(2)): other machines
/// starting do exactly that.
pub fn openat2_retrying(
    dir: impl AsFd,
    path: &Path,
    flags: rustix::fs::OFlags,
    how: rustix::fs::ResolveFlags,
) -> rustix::io::Result<OwnedFd> {
    let dir = dir.as_fd();
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(dir, path, flags, rustix::fs::Mode::empty(), how) {
            Err(rustix::io::Errno::AGAIN) if tries < 64 => tries += 1,
            r => return r,
        }
    }
}

/// A pidfd for `pid`.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    let pid =
        rustix::process::Pid::from_raw(pid).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    Ok(rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())?)
}

/// A pidfd for `pid`, registered with the current tokio runtime: it becomes readable when
/// the process exits. Must be called inside a runtime.
pub fn async_pidfd(pid: i32) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    let fd = pidfd_open(pid)?;
    // SAFETY: the OwnedFd is moved into the AsyncFd, which keeps it open, and its as_raw_fd
    // returns the same fd, until the AsyncFd is dropped.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

/// kill(2) with any signal number (realtime ones included).
pub fn send_signal(pid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    if unsafe { libc::kill(pid, signal) } < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// The time of `clock` in microseconds.
pub fn clock_us(clock: libc::clockid_t) -> u64 {
    // SAFETY: timespec is plain data; zeroed is valid.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is a valid, writable timespec on our stack.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    // A realtime clock set before the epoch reads as the epoch; tv_nsec is never negative.
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0) / 1000
}

/// `secs` since the epoch in local time, as systemd prints timestamps
/// (`Mon 2026-11-30 00:34:45 UTC`).
pub fn format_local_time(secs: u64) -> String {
    let Ok(t) = libc::time_t::try_from(secs) else { return secs.to_string() };
    // SAFETY: tm is plain data; zeroed is valid.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers refer to live locals; localtime_r is the reentrant variant.
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        return secs.to_string();
    }
    let mut buf = [0u8; 64];
    // SAFETY: the buffer and its length match, the format is NUL-terminated and `tm` was
    // filled by localtime_r.
    let n = unsafe {
        libc::strftime(buf.as_mut_ptr().cast(), buf.len(), c"%a %Y-%m-%d %H:%M:%S %Z".as_ptr(), &tm)
    };
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Whether the open file or directory `fd` has the immutable attribute (`chattr +i`), which
/// marks a read-only image.
pub fn is_immutable(fd: BorrowedFd<'_>) -> io::Result<bool> {
    match rustix::fs::ioctl_getflags(fd) {
        Ok(flags) => Ok(flags.contains(rustix::fs::IFlags::IMMUTABLE)),
        // Filesystems without inode flags cannot mark anything immutable.
        Err(rustix::io::Errno::NOTTY) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The result of [`fork`].
#[derive(Debug)]
pub enum Forked {
    /// In the parent, with the child's pid.
    Parent(i32),
    /// In the child.
    Child,
}

/// Waits briefly for threads that were joined to be gone from the kernel's view, then fails if
/// others still run: forking is only sound while single-threaded.
fn ensure_single_threaded() -> io::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        let threads = fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(1);
        if threads <= 1 {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(io::Error::other(format!("cannot fork while {threads} threads run")));
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
}

/// fork(2). The launcher is single-threaded while it forks, which is what makes running
/// arbitrary code in the child sound; this refuses to fork otherwise.
pub fn fork() -> io::Result<Forked> {
    ensure_single_threaded()?;
    // SAFETY: the launcher calls this only while single-threaded (see above), so the child
    // cannot inherit a lock held by another thread.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent(child.as_raw())),
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
    }
}

/// clone3(2)'s argument block (linux/sched.h).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
const CLONE_PARENT: u64 = 0x8000;

/// fork(2) whose child starts life in the cgroup2 directory `cgroup` (clone3 with
/// CLONE_INTO_CGROUP). Moving a running process between cgroups takes a global lock whose
/// first taker waits for an RCU grace period (about 10 ms); being born there does not.
/// Fails with ENOSYS or EINVAL on kernels before 5.7. Call only while single-threaded.
pub fn fork_into_cgroup(cgroup: BorrowedFd<'_>) -> io::Result<Forked> {
    // A live fd is never negative.
    #[allow(clippy::cast_sign_loss)]
    let cgroup = cgroup.as_raw_fd() as u64;
    clone3_fork(CLONE_INTO_CGROUP, cgroup)
}

/// fork(2) whose child is the caller's sibling: its parent, which gets its exit signal, is the
/// caller's parent (CLONE_PARENT). Call only while single-threaded.
pub fn fork_sibling() -> io::Result<Forked> {
    clone3_fork(CLONE_PARENT, 0)
}

/// fork(2) whose child starts in new namespaces (`CLONE_NEW*` flags). With CLONE_NEWUSER the
/// other new namespaces are owned by the new user namespace, whose root the child is. Call
/// only while single-threaded.
pub fn fork_into_namespaces(namespaces: nix::sched::CloneFlags) -> io::Result<Forked> {
    // The flag bits as they are: through u32, so that bit 31 is not sign-extended.
    #[allow(clippy::cast_sign_loss)]
    let flags = namespaces.bits() as u32;
    clone3_fork(u64::from(flags), 0)
}

fn clone3_fork(flags: u64, cgroup: u64) -> io::Result<Forked> {
    ensure_single_threaded()?;
    // A sibling's exit signal is the caller's own (clone3 refuses to be given one).
    let exit_signal = if flags & CLONE_PARENT == 0 { libc::SIGCHLD as u64 } else { 0 };
    let args = CloneArgs { flags, exit_signal, cgroup, ..CloneArgs::default() };
    // SAFETY: `args` is a valid clone_args of the size passed. Without CLONE_VM the child gets
    // a copy-on-write copy of this single-threaded process and returns here on the same stack,
    // exactly as with fork(). glibc's fork-time bookkeeping is skipped: there are no other
    // threads whose locks could be held, and glibc (>= 2.34) signals the current thread by
    // asking the kernel for its tid rather than trusting its cached one.
    let r = unsafe {
        libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>())
    };
    match r {
        r if r < 0 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        // A pid_t, only widened to long by syscall().
        #[allow(clippy::cast_possible_truncation)]
        pid => Ok(Forked::Parent(pid as i32)),
    }
}

/// Reads a small file of a kernel file system (`/proc`, cgroupfs) whole. These report a size
/// of 0, for which std's reader stats the file and grows its buffer from 32 bytes, one read per
/// doubling (eight reads for a mount table); a page takes most in one read.
pub fn read_kernel_file(path: impl AsRef<Path>) -> io::Result<String> {
    read_all(std::fs::File::open(path)?.into())
}

/// [`read_kernel_file`] of an open file.
pub fn read_all(file: OwnedFd) -> io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::from(file);
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(len * 2, 0);
        }
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(len);
    String::from_utf8(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Ends the calling process at once, without unwinding or running exit handlers; what forked
/// children use so they never run the parent's cleanup.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(code) }
}

/// Sets the execution domain (`PER_LINUX32` makes `uname -m` report the 32-bit architecture).
pub fn set_personality(persona: libc::c_ulong) -> io::Result<()> {
    // SAFETY: personality takes a plain integer and touches no memory of ours.
    let r = unsafe { libc::personality(persona) };
    if r == -1 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Asks for `signal` when the parent thread of this process dies.
pub fn set_parent_death_signal(signal: nix::sys::signal::Signal) -> io::Result<()> {
    nix::sys::prctl::set_pdeathsig(signal).map_err(io::Error::from)
}

/// Makes this process adopt orphaned descendants (the container's PID 1 after the
/// intermediate child exits).
pub fn set_child_subreaper() -> io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(io::Error::from)
}

/// Closes every fd from `first` upwards.
pub fn close_fds_from(first: u32) -> io::Result<()> {
    // SAFETY: close_range takes plain integers; the caller owns no Rust object referring to
    // these fds any more (it is about to exec).
    let r = unsafe { libc::close_range(first, u32::MAX, 0) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Marks every fd from `first` upwards close-on-exec, so an exec leaves only stdio open
/// while a failed exec can still report through them.
pub fn cloexec_fds_from(first: u32) -> io::Result<()> {
    // The flag is the constant 4: it cannot wrap.
    #[allow(clippy::cast_possible_wrap)]
    let cloexec = libc::CLOSE_RANGE_CLOEXEC as libc::c_int;
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on fds; none is closed.
    let r = unsafe { libc::close_range(first, u32::MAX, cloexec) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Opens a new pty master from the devpts instance whose `ptmx` is at `ptmx`, unlocks it and
/// returns it with the slave's number.
pub fn open_pty_master(ptmx: &Path) -> io::Result<(OwnedFd, u32)> {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(ptmx)?;
    let fd = OwnedFd::from(f);
    rustix::pty::unlockpt(&fd)?;
    // The slave's name in this devpts instance is its number.
    let name = rustix::pty::ptsname(&fd, Vec::new())?;
    let n = name
        .to_str()
        .ok()
        .and_then(|s| s.rsplit('/').next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| io::Error::other("the pty has no number"))?;
    Ok((fd, n))
}

/// Makes the calling *thread* (not the process) create files as `uid`/`gid` (its filesystem
/// ids), keeping the file capabilities root has: for writing into a machine with a user
/// namespace as the machine's root. The thread must end afterwards (its credentials stay).
pub fn thread_creates_files_as(uid: u32, gid: u32) -> io::Result<()> {
    // Raw system calls: glibc's wrappers are per thread too, but say nothing of it. Each
    // returns the previous id; whether it took is checked by asking again (-1 changes nothing).
    // SAFETY: setfsuid/setfsgid take plain integers and change only this thread's credentials.
    unsafe {
        libc::syscall(libc::SYS_setfsgid, gid);
        libc::syscall(libc::SYS_setfsuid, uid);
    }
    // SAFETY: as above; -1 (u32::MAX) is the documented "no change" query.
    let (now_uid, now_gid) =
        unsafe { (libc::syscall(libc::SYS_setfsuid, u32::MAX), libc::syscall(libc::SYS_setfsgid, u32::MAX)) };
    if now_uid != i64::from(uid) || now_gid != i64::from(gid) {
        return Err(io::Error::from_raw_os_error(libc::EPERM));
    }
    // A non-zero fsuid drops these from the effective set; they are still permitted.
    for cap in [
        caps::Capability::CAP_CHOWN,
        caps::Capability::CAP_DAC_OVERRIDE,
        caps::Capability::CAP_DAC_READ_SEARCH,
        caps::Capability::CAP_FOWNER,
        caps::Capability::CAP_FSETID,
        caps::Capability::CAP_MKNOD,
    ] {
        caps::raise(None, caps::CapSet::Effective, cap).map_err(io::Error::other)?;
    }
    Ok(())
}

/// Makes the terminal on `fd` the controlling terminal of this (session leader) process.
pub fn set_controlling_tty(fd: BorrowedFd<'_>) -> io::Result<()> {
    Ok(rustix::process::ioctl_tiocsctty(fd)?)
}

/// The window size of the terminal on `fd`, if it is one.
pub fn window_size(fd: BorrowedFd<'_>) -> Option<libc::winsize> {
    let ws = rustix::termios::tcgetwinsize(fd).ok()?;
    Some(libc::winsize {
        ws_row: ws.ws_row,
        ws_col: ws.ws_col,
        ws_xpixel: ws.ws_xpixel,
        ws_ypixel: ws.ws_ypixel,
    })
}

/// Sets the window size of the terminal on `fd`.
pub fn set_window_size(fd: BorrowedFd<'_>, ws: &libc::winsize) -> io::Result<()> {
    let ws = rustix::termios::Winsize {
        ws_row: ws.ws_row,
        ws_col: ws.ws_col,
        ws_xpixel: ws.ws_xpixel,
        ws_ypixel: ws.ws_ypixel,
    };
    Ok(rustix::termios::tcsetwinsize(fd, ws)?)
}

/// Makes this process run from a sealed in-memory copy of its executable, re-executing itself
/// once if needed. A process that stays inside a machine (the reaper of `run --as-pid2`) must
/// not reference the host's binary: a container root could reopen it through `/proc/PID/exe`
/// and overwrite it (CVE-2019-5736). Call only while single-threaded.
pub fn ensure_running_from_sealed_copy() -> io::Result<()> {
    let exe = fs::read_link("/proc/self/exe")?;
    if exe.as_os_str().as_bytes().starts_with(b"/memfd:") {
        return Ok(());
    }
    let mut src = fs::File::open("/proc/self/exe")?;
    use rustix::fs::{MemfdFlags, SealFlags};
    let memfd = rustix::fs::memfd_create("mctl", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    io::copy(&mut src, &mut fs::File::from(memfd.try_clone()?))?;
    rustix::fs::fcntl_add_seals(
        &memfd,
        SealFlags::SEAL | SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE,
    )?;
    let argv: Vec<CString> = std::env::args_os().filter_map(|a| CString::new(a.as_bytes()).ok()).collect();
    let envp: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).ok()
        })
        .collect();
    Err(fexecve(memfd.as_fd(), &argv, &envp))
}

/// execve(2) of the file behind `fd`.
pub fn fexecve(fd: BorrowedFd<'_>, argv: &[CString], envp: &[CString]) -> io::Error {
    match nix::unistd::fexecve(fd.as_fd(), argv, envp) {
        Err(e) => e.into(),
        Ok(never) => match never {},
    }
}

/// execve(2) of `path`.
pub fn execve(path: &CStr, argv: &[CString], envp: &[CString]) -> io::Error {
    match nix::unistd::execve(path, argv, envp) {
        Err(e) => e.into(),
        Ok(never) => match never {},
    }
}

/// This process's open file descriptors.
fn open_fds() -> Vec<RawFd> {
    fs::read_dir("/proc/thread-self/fd")
        .map(|rd| rd.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

/// Waits for an RCU grace period (MEMBARRIER_CMD_GLOBAL is synchronize_rcu); async-signal-safe,
/// for forked children. Before releasing an nf_tables socket: the release flushes nf_tables'
/// destroy work while holding the namespace's nftables commit mutex, which every rename or
/// removal of a link in that namespace takes under the RTNL lock, so a full grace period there
/// stalls all link changes (and the creation of network namespaces) on the host. Waited out
/// first, the destroy work finishes unlocked and the release finds nothing left to flush.
fn wait_grace_period() {
    // SAFETY: a system call without pointers; on failure (nohz_full) the caller goes on at once.
    unsafe { libc::syscall(libc::SYS_membarrier, libc::MEMBARRIER_CMD_GLOBAL, 0, 0) };
}

/// Forks a child that closes every descriptor but `keep` at once and exits a grace period
/// later, so that the last reference to `keep`'s files goes with it rather than with us. For
/// an nf_tables socket after a deletion, whose release waits for the destroy work.
pub fn hold_and_exit_child(keep: &[RawFd]) {
    let max = open_fds().into_iter().max().unwrap_or(0);
    // SAFETY: the child runs only async-signal-safe calls (close, membarrier, _exit) on integers computed
    // before the fork, so the parent's other threads and their locks cannot matter to it. If
    // the fork fails, the parent simply pays for the close itself.
    if unsafe { libc::fork() } == 0 {
        for fd in 0..=max {
            if !keep.contains(&fd) {
                // SAFETY: closing descriptors of this single-threaded child only.
                unsafe { libc::close(fd) };
            }
        }
        wait_grace_period();
        // SAFETY: _exit ends the child without running the parent's atexit handlers.
        unsafe { libc::_exit(0) }
    }
}

/// Installs a classic BPF seccomp program on the calling thread (inherited across fork and
/// exec). `program` holds the 8-byte `struct sock_filter` instructions as libseccomp exports
/// them, one per `u64` so that they are aligned.
pub fn load_seccomp_program(program: &[u64]) -> io::Result<()> {
    let len = u16::try_from(program.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "seccomp program too long"))?;
    let prog = libc::sock_fprog { len, filter: program.as_ptr() as *mut libc::sock_filter };
    // SAFETY: `prog` points at `len` instructions that live for the call (u64 has the size and
    // a stricter alignment than sock_filter); the kernel copies the program before returning.
    check(unsafe {
        libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &prog as *const libc::sock_fprog)
    })?;
    Ok(())
}

/// Whether `path` is a regular file of its own (not a link, one name) with exactly `mode`
/// and `contents`.
fn holds_exactly(path: &Path, contents: &[u8], mode: u32) -> bool {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    // Only a regular file is opened at all (a device node's open can act).
    if !fs::symlink_metadata(path).is_ok_and(|m| m.is_file()) {
        return false;
    }
    let Ok(mut f) =
        fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path)
    else {
        return false;
    };
    let Ok(meta) = f.metadata() else { return false };
    if !meta.is_file()
        || meta.nlink() != 1
        || meta.mode() & 0o7777 != mode
        || meta.len() != contents.len() as u64
    {
        return false;
    }
    let mut now = Vec::with_capacity(contents.len());
    f.read_to_end(&mut now).is_ok() && now == contents
}

/// Makes a raw system call with up to three integer arguments and returns its errno, if it
/// failed: lets tests probe what a filter does with calls that take no memory.
#[cfg(test)]
pub fn raw_syscall_errno3(nr: libc::c_long, a: i64, b: i64, c: i64) -> Option<i32> {
    // SAFETY: only used with calls whose arguments are plain integers (no pointers the kernel
    // could write through); an invalid argument makes the call fail, not touch our memory.
    let r = unsafe { libc::syscall(nr, a, b, c) };
    (r < 0).then(|| io::Error::last_os_error().raw_os_error().unwrap_or(0))
}

/// [`raw_syscall_errno3`] with one argument.
#[cfg(test)]
pub fn raw_syscall_errno(nr: libc::c_long, a: i64) -> Option<i32> {
    raw_syscall_errno3(nr, a, 0, 0)
}

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BpfInsn {
    /// Opcode: class, operation and source bits OR'd (`0xb7` = `BPF_ALU64 | BPF_MOV | BPF_K`).
    pub code: u8,
    /// Destination register (low nibble) and source register (high nibble).
    pub regs: u8,
    /// Signed offset (jumps, memory).
    pub off: i16,
    /// Signed immediate.
    pub imm: i32,
}

/// `union bpf_attr` as BPF_PROG_LOAD reads it (the fields up to `expected_attach_type`).
#[repr(C)]
#[derive(Default)]
struct BpfProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` as BPF_PROG_ATTACH and BPF_PROG_DETACH read it.
#[repr(C)]
#[derive(Default)]
struct BpfAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// Loads a `BPF_PROG_TYPE_CGROUP_DEVICE` program; a verifier refusal carries its log (the load
/// is repeated with logging only then: a logged load costs the verifier milliseconds).
pub fn bpf_load_device_program(insns: &[BpfInsn], name: &str) -> io::Result<OwnedFd> {
    bpf_load_device_program_logged(insns, name, false)
        .or_else(|_| bpf_load_device_program_logged(insns, name, true))
}

fn bpf_load_device_program_logged(insns: &[BpfInsn], name: &str, logged: bool) -> io::Result<OwnedFd> {
    let license = c"MIT";
    let mut log = vec![0u8; if logged { 64 * 1024 } else { 0 }];
    // log_size: the log is 64 KiB at most.
    #[allow(clippy::cast_possible_truncation)]
    let mut attr = BpfProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: u32::try_from(insns.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: u32::from(logged),
        log_size: log.len() as u32,
        log_buf: if logged { log.as_mut_ptr() as u64 } else { 0 },
        expected_attach_type: BPF_CGROUP_DEVICE,
        ..Default::default()
    };
    for (d, s) in attr.prog_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    // SAFETY: `attr` is a correctly laid out prefix of union bpf_attr whose pointers (insns,
    // license, log buffer of log_size bytes) stay valid for the call; the kernel writes only
    // into the log buffer and returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &mut attr as *mut BpfProgLoadAttr,
            std::mem::size_of::<BpfProgLoadAttr>(),
        )
    };
    if fd < 0 {
        let err = io::Error::last_os_error();
        let text =
            String::from_utf8_lossy(&log[..log.iter().position(|b| *b == 0).unwrap_or(0)]).into_owned();
        return Err(if text.trim().is_empty() {
            err
        } else {
            io::Error::new(err.kind(), format!("{err}; verifier: {}", text.trim()))
        });
    }
    // An int fd, only widened to long by syscall().
    #[allow(clippy::cast_possible_truncation)]
    let fd = fd as RawFd;
    // SAFETY: the kernel just returned this fd to us; we are its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn bpf_attach_call(cmd: libc::c_long, prog: BorrowedFd<'_>, cgroup: BorrowedFd<'_>) -> io::Result<()> {
    // Live fds are never negative.
    #[allow(clippy::cast_sign_loss)]
    let mut attr = BpfAttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: if cmd == BPF_PROG_ATTACH { BPF_F_ALLOW_MULTI } else { 0 },
        replace_bpf_fd: 0,
    };
    // SAFETY: `attr` is a correctly laid out prefix of union bpf_attr holding only integers;
    // both fds are live for the call.
    check(unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            &mut attr as *mut BpfAttachAttr,
            std::mem::size_of::<BpfAttachAttr>(),
        )
    })?;
    Ok(())
}

/// Attaches a device program to a cgroup2 directory, beside (`BPF_F_ALLOW_MULTI`) programs
/// already there; descendants are held to every program on the way up.
pub fn bpf_attach_device_program(prog: BorrowedFd<'_>, cgroup: BorrowedFd<'_>) -> io::Result<()> {
    bpf_attach_call(BPF_PROG_ATTACH, prog, cgroup)
}

/// Detaches a device program attached by [`bpf_attach_device_program`].
pub fn bpf_detach_device_program(prog: BorrowedFd<'_>, cgroup: BorrowedFd<'_>) -> io::Result<()> {
    bpf_attach_call(BPF_PROG_DETACH, prog, cgroup)
}

/// The slave side of the pty whose master is `master` (TIOCGPTPEER): no path lookup, so nothing
/// mounted over `/dev/pts` can hand back another file.
pub fn pty_peer(master: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    use rustix::pty::OpenptFlags;
    Ok(rustix::pty::ioctl_tiocgptpeer(
        master,
        OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC,
    )?)
}

/// Forks a child that outlives the caller's work for a moment: it renames the link `ifname`
/// to `rename_to` when given (SIOCSIFNAME; the rename waits for an RCU grace period, which the
/// caller does not), then waits (up to `patience`) until this thread's network namespace has
/// no link of that name (the new one if the rename worked), then, holding the flock of `lock`,
/// removes `file` if it is still the inode `ino` (nobody replaced it), and exits.
/// The child holds no other descriptor of ours (pipes of the caller close on time), except
/// `release`, which it releases after the rename as [`hold_and_exit_child`] would (one fork
/// for both); if no child can be made, `release` goes to [`hold_and_exit_child`].
pub fn forget_when_link_gone(
    ifname: &str,
    rename_to: Option<&str>,
    lock: &Path,
    file: &Path,
    ino: u64,
    patience: std::time::Duration,
    release: Option<OwnedFd>,
) {
    let release_alone = |release: Option<OwnedFd>| {
        if let Some(fd) = release {
            hold_and_exit_child(&[fd.as_raw_fd()]);
        }
    };
    let (Ok(name), Ok(lock), Ok(file)) = (CString::new(ifname), cpath(lock), cpath(file)) else {
        return release_alone(release);
    };
    if name.as_bytes().len() >= libc::IFNAMSIZ {
        return release_alone(release);
    }
    let new_name =
        rename_to.and_then(|n| CString::new(n).ok()).filter(|n| n.as_bytes().len() < libc::IFNAMSIZ);
    // SAFETY: socket(2) with constant arguments; the fd is checked below.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return release_alone(release);
    }
    let released = release.as_ref().map_or(-1, AsRawFd::as_raw_fd);
    // SAFETY: ifreq is plain data; zeroed is valid. The name fits (checked above).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let fill = |dst: &mut [libc::c_char; libc::IFNAMSIZ], src: &CString| {
        for (d, s) in dst.iter_mut().zip(src.as_bytes()) {
            // The byte as a C char, bit for bit.
            #[allow(clippy::cast_possible_wrap)]
            let c = *s as libc::c_char;
            *d = c;
        }
    };
    fill(&mut req.ifr_name, &name);
    // The same request with the new name, for the rename and then for the watch.
    let renamed = new_name.as_ref().map(|n| {
        let mut r = req;
        // SAFETY: writing the union's name member of a zeroed, plain-data request.
        fill(unsafe { &mut r.ifr_ifru.ifru_newname }, n);
        let mut after = req;
        after.ifr_name = [0; libc::IFNAMSIZ];
        fill(&mut after.ifr_name, n);
        (r, after)
    });
    // The child's polls start 2 ms apart (the usual case is over within a few) and back off
    // to 64 ms, for when the kernel is slow to dismantle namespaces.
    let patience_ns = i128::try_from(patience.as_nanos()).unwrap_or(i128::MAX);
    let max = open_fds().into_iter().max().unwrap_or(0);
    // SAFETY: fork(2); what the child does is below.
    match unsafe { libc::fork() } {
        // SAFETY: the child uses only async-signal-safe system calls (close, ioctl, membarrier,
        // nanosleep, clock_gettime, open, flock, stat, unlink, _exit) on data prepared before the
        // fork, so the parent's other threads and their locks cannot matter to it; `req`, `lock`
        // and `file` are live copies in the child's memory.
        0 => unsafe {
            for fd in 0..=max {
                if fd != sock && fd != released {
                    libc::close(fd);
                }
            }
            if let Some((rename, after)) = renamed
                && libc::ioctl(sock, libc::SIOCSIFNAME, &rename) == 0
            {
                req = after;
            }
            if released >= 0 {
                // After the rename, which needs the commit mutex the release's flush holds.
                wait_grace_period();
                libc::close(released);
            }
            let now = || {
                let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
                libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t);
                i128::from(t.tv_sec) * 1_000_000_000 + i128::from(t.tv_nsec)
            };
            let start = now();
            let mut pause = libc::timespec { tv_sec: 0, tv_nsec: 2_000_000 };
            let mut gone = false;
            loop {
                if libc::ioctl(sock, libc::SIOCGIFINDEX, &mut req) < 0 {
                    gone = true;
                    break;
                }
                if now() - start >= patience_ns {
                    break;
                }
                libc::nanosleep(&pause, std::ptr::null_mut());
                pause.tv_nsec = (pause.tv_nsec * 2).min(64_000_000);
            }
            if gone {
                let l = libc::open(lock.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if l >= 0 && libc::flock(l, libc::LOCK_EX) == 0 {
                    let mut st: libc::stat = std::mem::zeroed();
                    if libc::stat(file.as_ptr(), &mut st) == 0 && st.st_ino == ino {
                        libc::unlink(file.as_ptr());
                    }
                }
            }
            libc::_exit(0)
        },
        -1 => {
            // SAFETY: our copy of the socket, not used again.
            unsafe { libc::close(sock) };
            release_alone(release);
        }
        _ => {
            // SAFETY: our copy of the socket, not used again.
            unsafe { libc::close(sock) };
        }
    }
}

/// Takes ownership of a descriptor that SCM_RIGHTS just installed in our table.
pub fn own_received_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: the kernel installed this fd for us with the message; nothing else refers to it,
    // so wrapping it hands us sole ownership.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Puts the signals in `ignored` (bit N-1 for signal N) back to their default disposition:
/// exec keeps ignored signals ignored (realtime ones too) and resets caught ones itself.
/// Knowing which are ignored spares a sigaction call per signal; without it (None), every
/// signal is reset.
pub fn reset_signal_dispositions(ignored: Option<u64>) {
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP || ignored.is_some_and(|m| m & (1 << (sig - 1)) == 0)
        {
            continue;
        }
        // The raw call: glibc's sigaction refuses the two realtime signals it reserves (32 and
        // 33), which whoever started mctl may still have left ignored.
        let default = [0u64; 4];
        // SAFETY: an all-zero kernel sigaction is SIG_DFL with no flags, no restorer and an
        // empty mask whatever the architecture's field order, and `default` is as large as the
        // largest (four words); with a null old action the kernel writes nothing back.
        unsafe {
            libc::syscall(libc::SYS_rt_sigaction, sig, default.as_ptr(), std::ptr::null::<u64>(), 8usize);
        }
    }
}
