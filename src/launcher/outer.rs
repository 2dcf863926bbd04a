//! The outer child: joins the payload cgroup, assembles the machine's filesystem in a new mount
//! namespace, pivots into it, then forks the machine's PID 1 into new pid, uts and ipc
//! namespaces and exits. Everything that needs host privilege or host paths happens here.

use std::fs;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::Signal;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, bind, setsockopt, socket, sockopt};

use crate::sys::linux::{self, Forked, LinuxSys};

use super::channel::ChildEnd;
use super::inner;
use super::mounts::{self, TreeId, Trees};
use super::spec::{ConsoleMode, Volatile};
use super::{ChildContext, ChildError};
use crate::network::NetworkMode;

/// Runs the outer child and exits; never returns.
pub(super) fn run(ctx: &ChildContext<'_>, chan: &ChildEnd) -> ! {
    match outer(ctx, chan) {
        Ok(()) => linux::exit_now(0),
        Err(e) => {
            chan.failed(&e, e.exit_code());
            linux::exit_now(1)
        }
    }
}

fn outer(ctx: &ChildContext<'_>, chan: &ChildEnd) -> Result<(), ChildError> {
    // If the launcher dies during setup, so does its half-built machine.
    linux::set_parent_death_signal(Signal::SIGKILL).map_err(ChildError::step("set parent death signal"))?;
    for file in &ctx.join_cgroup_files {
        fs::write(file, "0").map_err(ChildError::path_step("join cgroup", file))?;
    }
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| ChildError::Step("create mount namespace", e.into()))?;
    // Before any mount: sysfs shows the network namespace of whoever mounts it.
    enter_network_namespace(ctx)?;
    let sys = LinuxSys;
    // Receive mounts from the host but never send any back to it.
    mounts::apply(&sys, &Trees::default(), &mounts::isolate_plan())?;
    let mut trees = open_host_trees(ctx)?;
    if let Some(scratch) = &ctx.scratch {
        if ctx.spec.volatile == Volatile::Yes {
            // Taken before the tmpfs covers the image.
            let usr = ctx.spec.root.join("usr");
            trees.insert(TreeId::ImageUsr, ro_tree(&usr, true, true)?);
        }
        mounts::apply(&sys, &trees, &mounts::scratch_plan(ctx.spec, scratch))?;
        for (i, o) in ctx.spec.overlays.iter().enumerate() {
            trees.insert(
                TreeId::Overlay(i),
                ro_tree(&mounts::overlay_staging(scratch, i), false, o.read_only)?,
            );
        }
    }
    let read_only = ctx.spec.read_only || ctx.spec.volatile == Volatile::State;
    mounts::apply(&sys, &trees, &mounts::root_plan(&ctx.spec.root, read_only))?;
    mounts::apply(&sys, &trees, &mounts::outer_plan(ctx.spec, &ctx.uuid, &ctx.host))?;
    drop(trees);

    let notify = socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(|e| ChildError::Step("create notify socket", e.into()))?;
    let addr = UnixAddr::new(super::notify::GUEST_NOTIFY_PATH)
        .map_err(|e| ChildError::Step("bind notify socket", e.into()))?;
    bind(notify.as_raw_fd(), &addr).map_err(|e| ChildError::Step("bind notify socket", e.into()))?;
    setsockopt(&notify, sockopt::PassCred, &true)
        .map_err(|e| ChildError::Step("enable notify credentials", e.into()))?;
    chan.notify_socket(notify.as_fd())?;
    drop(notify);

    let console = if ctx.spec.console == ConsoleMode::Pipe {
        None
    } else {
        let (master, n) = linux::open_pty_master(Path::new("/dev/pts/ptmx"))
            .map_err(ChildError::step("allocate console pty"))?;
        let slave = format!("/dev/pts/{n}");
        std::os::unix::fs::symlink(format!("pts/{n}"), "/dev/console")
            .map_err(ChildError::step("create /dev/console"))?;
        chan.console_master(master.as_fd())?;
        Some(slave)
    };

    unshare(CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC)
        .map_err(|e| ChildError::Step("create pid, uts and ipc namespaces", e.into()))?;
    nix::unistd::sethostname(ctx.spec.hostname()).map_err(|e| ChildError::Step("set hostname", e.into()))?;
    match linux::fork().map_err(ChildError::step("fork the machine's PID 1"))? {
        Forked::Child => inner::run(ctx, chan, console.as_deref()),
        Forked::Parent(pid) => chan.pid(pid)?,
    }
    Ok(())
}

/// A network namespace of the machine's own (`--private-network`, veth, bridge, zone, moved
/// interfaces) or an existing one (`--network-namespace-path`), with loopback up.
fn enter_network_namespace(ctx: &ChildContext<'_>) -> Result<(), ChildError> {
    let net = &ctx.spec.network;
    if !net.needs_netns() {
        return Ok(());
    }
    if let NetworkMode::NamespacePath(path) = &net.mode {
        let ns = fs::File::open(path).map_err(ChildError::path_step("open network namespace", path))?;
        nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| ChildError::PathStep {
            step: "join network namespace",
            path: path.clone(),
            source: e.into(),
        })?;
    } else {
        unshare(CloneFlags::CLONE_NEWNET)
            .map_err(|e| ChildError::Step("create network namespace", e.into()))?;
    }
    crate::network::loopback_up().map_err(ChildError::step("bring up loopback"))
}

/// A detached copy of the mount tree at `path` (read-only when `ro`).
fn ro_tree(path: &Path, recursive: bool, ro: bool) -> Result<std::os::fd::OwnedFd, ChildError> {
    let fd = linux::open_tree(path, recursive).map_err(ChildError::path_step("open host path", path))?;
    if ro {
        linux::set_tree_readonly(fd.as_fd(), recursive)
            .map_err(ChildError::path_step("make read-only", path))?;
    }
    Ok(fd)
}

/// Host files the machine gets, opened as detached mounts while host paths are still
/// reachable; read-only ones are made so before they are attached.
fn open_host_trees(ctx: &ChildContext<'_>) -> Result<Trees, ChildError> {
    let mut trees = Trees::default();
    let os_release =
        crate::osrelease::PATHS.iter().map(Path::new).find(|p| p.exists()).ok_or_else(|| {
            ChildError::Step("find the host's os-release", std::io::ErrorKind::NotFound.into())
        })?;
    trees.insert(TreeId::OsRelease, ro_tree(os_release, false, true)?);
    let resolv = Path::new("/etc/resolv.conf");
    if resolv.exists() {
        trees.insert(TreeId::ResolvConf, ro_tree(resolv, false, true)?);
    }
    for (i, b) in ctx.spec.binds.iter().enumerate() {
        trees.insert(TreeId::Bind(i), ro_tree(&b.source, b.recursive, b.read_only)?);
    }
    Ok(trees)
}
