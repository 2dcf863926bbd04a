//! A machine with a user namespace of its own (`--private-users`).
//!
//! Every other namespace of the machine must be owned by its user namespace, or the guest's
//! root could not use them (set its hostname, configure its network, mount in its mount
//! namespace, mount a procfs of its own). So the outer child forks PID 1 early, straight into
//! new user, pid, uts, ipc and cgroup namespaces (and network, unless it joins one), writes its
//! id maps, and builds the machine's tree as host root while PID 1 waits: the image through an
//! idmapped mount made with PID 1's user namespace, sysfs from inside its network namespace.
//! A short-lived helper forked into PID 1's pid namespace mounts `/proc` and the rest of the
//! API file systems. Then PID 1 becomes root of its user namespace and takes a mount namespace
//! of its own there, in which every mount made so far is locked: the guest cannot unmount a
//! mask or make a read-only mount writable.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::sched::CloneFlags;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::sys::Sys;
use crate::sys::linux::{self, Forked, LinuxSys};
use crate::userns::IdRange;

use super::ChildError;
use super::mounts::{self, Trees};

/// PID 1 of a machine with a user namespace, waiting until its tree is ready.
#[derive(Debug)]
pub(super) struct WaitingPid1 {
    /// Its pid on the host.
    pub pid: i32,
    /// Its user namespace (for idmapped mounts).
    pub user: OwnedFd,
    /// Its network namespace, when it has one of its own.
    pub net: Option<OwnedFd>,
    /// Its pid, cgroup and ipc namespaces (opened while the host's /proc is still reachable).
    pid_cgroup_ipc: [OwnedFd; 3],
    go: File,
}

/// What the forked PID 1 gets: the end it waits on.
#[derive(Debug)]
pub(super) struct Pid1Wait(File);

/// Forks PID 1 into its namespaces (a network namespace of its own with `own_network`) and maps
/// `range` into its user namespace. The child returns `Err(wait)`, and must call
/// [`Pid1Wait::wait_until_ready`] before anything else.
pub(super) fn fork_pid1(
    range: IdRange,
    bound: &[super::bind_user::BoundUser],
    own_network: bool,
) -> Result<Result<WaitingPid1, Pid1Wait>, ChildError> {
    let step = ChildError::step;
    let (wait, go) = pipe()?;
    // The launcher's child, as without a user namespace (see outer.rs).
    let mut flags = CloneFlags::CLONE_PARENT
        | CloneFlags::CLONE_NEWUSER
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWCGROUP;
    if own_network {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    let pid = match linux::fork_into_namespaces(flags).map_err(step("fork the machine's PID 1"))? {
        Forked::Child => {
            drop(go);
            return Ok(Err(Pid1Wait(wait)));
        }
        Forked::Parent(pid) => pid,
    };
    drop(wait);
    // From here on, a failure drops `go`: PID 1 sees the pipe close and exits.
    // A privileged writer may map any range, and setgroups(2) stays allowed inside.
    for (map, gid) in [("uid_map", false), ("gid_map", true)] {
        let path = format!("/proc/{pid}/{map}");
        std::fs::write(&path, super::bind_user::map_lines(range, bound, gid))
            .map_err(|e| ChildError::Message(format!("cannot write {path} ({range}): {e}")))?;
    }
    Ok(Ok(WaitingPid1 {
        pid,
        user: open_ns(pid, "user")?,
        net: own_network.then(|| open_ns(pid, "net")).transpose()?,
        pid_cgroup_ipc: [open_ns(pid, "pid")?, open_ns(pid, "cgroup")?, open_ns(pid, "ipc")?],
        go,
    }))
}

fn open_ns(pid: i32, ns: &str) -> Result<OwnedFd, ChildError> {
    let path = format!("/proc/{pid}/ns/{ns}");
    File::open(&path).map(OwnedFd::from).map_err(|e| ChildError::PathStep {
        step: "open namespace",
        path: path.into(),
        source: e,
    })
}

fn pipe() -> Result<(File, File), ChildError> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| ChildError::Step("create a pipe", e.into()))?;
    Ok((File::from(r), File::from(w)))
}

impl WaitingPid1 {
    /// Mounts `/proc`, cgroup2 and mqueue for PID 1 (`mounts::api_plan`; it protects them
    /// itself), as host root, from a helper forked into PID 1's pid namespace that joins its
    /// cgroup and ipc namespaces. The outer child stays in the pid namespace it was born in.
    pub(super) fn mount_api_filesystems(&self) -> Result<(), ChildError> {
        let [pidns, cgroupns, ipcns] = &self.pid_cgroup_ipc;
        nix::sched::setns(pidns.as_fd(), CloneFlags::CLONE_NEWPID)
            .map_err(|e| ChildError::Step("join the machine's pid namespace", e.into()))?;
        let (mut report, mut failure) = pipe()?;
        match linux::fork().map_err(ChildError::step("fork the API file system helper"))? {
            Forked::Child => {
                drop(report);
                let done = nix::sched::setns(ipcns.as_fd(), CloneFlags::CLONE_NEWIPC)
                    .map_err(|e| ChildError::Step("join the machine's ipc namespace", e.into()))
                    .and_then(|()| {
                        let sys = LinuxSys;
                        sys.setns(cgroupns.as_fd(), CloneFlags::CLONE_NEWCGROUP)
                            .map_err(ChildError::step("join the machine's cgroup namespace"))?;
                        Ok(mounts::apply(&sys, &Trees::default(), &mounts::api_plan(&Default::default()))?)
                    });
                match done {
                    Ok(()) => linux::exit_now(0),
                    Err(e) => {
                        let _ = failure.write_all(e.to_string().as_bytes());
                        linux::exit_now(1)
                    }
                }
            }
            Forked::Parent(helper) => {
                drop(failure);
                let mut message = String::new();
                let _ = report.read_to_string(&mut message);
                let status = waitpid(Pid::from_raw(helper), None);
                if !message.is_empty() {
                    return Err(ChildError::Message(message));
                }
                if !matches!(status, Ok(WaitStatus::Exited(_, 0))) {
                    return Err(ChildError::Message(format!("the API file system helper ended: {status:?}")));
                }
                Ok(())
            }
        }
    }

    /// Lets PID 1 go on: its tree is complete.
    pub(super) fn release(mut self) -> Result<(), ChildError> {
        self.go.write_all(b"g").map_err(ChildError::step("let the machine's PID 1 go on"))
    }
}

impl Pid1Wait {
    /// Waits for the outer child to complete the tree (exits quietly if it failed: it reports),
    /// then becomes root of the user namespace, and takes a mount namespace of its own in it.
    pub(super) fn wait_until_ready(mut self) -> Result<(), ChildError> {
        let mut byte = [0u8; 1];
        if self.0.read(&mut byte).ok() != Some(1) {
            linux::exit_now(1);
        }
        super::security::become_namespace_root().map_err(ChildError::step("become the machine's root"))?;
        nix::sched::unshare(CloneFlags::CLONE_NEWNS)
            .map_err(|e| ChildError::Step("create the machine's mount namespace", e.into()))?;
        Ok(())
    }
}

/// Whether the file system at `path` can be mounted idmapped (`--private-users-ownership=auto`
/// chooses between map and chown by this): known for the common file systems, else probed.
pub(super) fn idmap_supported(path: &Path) -> bool {
    known_idmappable(path) || probe_idmap(path)
}

/// File systems that take idmapped mounts on any kernel since 6.3 (tmpfs being the last of them),
/// so the common case needs no probe.
fn known_idmappable(path: &Path) -> bool {
    const EXT4: i64 = 0xEF53;
    const XFS: i64 = 0x5846_5342;
    const BTRFS: i64 = 0x9123_683E;
    const TMPFS: i64 = 0x0102_1994;
    const F2FS: i64 = 0xF2F5_2010;
    let release =
        nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    let mut version = release.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse::<u32>().ok());
    let recent = (version.next().unwrap_or(0), version.next().unwrap_or(0)) >= (6, 3);
    // f_type's integer type differs between architectures.
    #[allow(clippy::unnecessary_cast)]
    let known = |st: rustix::fs::StatFs| [EXT4, XFS, BTRFS, TMPFS, F2FS].contains(&(st.f_type as i64));
    recent && rustix::fs::statfs(path).is_ok_and(known)
}

/// Makes an idmapped clone of `path` and drops it, through a throwaway user namespace.
fn probe_idmap(path: &Path) -> bool {
    let probe_range = IdRange { start: crate::userns::RANGE_SIZE, count: crate::userns::RANGE_SIZE };
    let Ok(userns) = crate::userns::mapped_namespace(&probe_range.map_line(), &probe_range.map_line()) else {
        return false;
    };
    linux::open_tree(path, false)
        .is_ok_and(|tree| linux::set_tree_idmap(tree.as_fd(), userns.as_fd(), false).is_ok())
}

/// A detached, idmapped clone of the mount at `path` (read-only when `read_only`): the files of
/// the image appear owned by the machine's ids, while the tree on disk keeps its own.
pub(super) fn idmapped_tree(
    path: &Path,
    userns: BorrowedFd<'_>,
    read_only: bool,
    recursive: bool,
) -> Result<OwnedFd, ChildError> {
    let fd = linux::open_tree(path, recursive).map_err(ChildError::path_step("open", path))?;
    linux::set_tree_idmap(fd.as_fd(), userns, recursive).map_err(|e| {
        let hint = match e.raw_os_error() {
            Some(libc::EINVAL | libc::EOPNOTSUPP | libc::ENOSYS) => {
                " (the file system or kernel cannot idmap mounts; use --private-users-ownership=chown)"
            }
            _ => "",
        };
        ChildError::Message(format!("cannot make an idmapped mount of {}: {e}{hint}", path.display()))
    })?;
    if read_only {
        linux::set_tree_readonly(fd.as_fd(), recursive)
            .map_err(ChildError::path_step("make read-only", path))?;
    }
    Ok(fd)
}
