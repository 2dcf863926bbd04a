//! The outer child: joins the payload cgroup, assembles the machine's filesystem in a new mount
//! namespace, pivots into it, then forks the machine's PID 1 into new pid, uts and ipc
//! namespaces and exits. Everything that needs host privilege or host paths happens here.

use std::fs;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, bind, setsockopt, socket, sockopt};

use crate::sys::Sys;
use crate::sys::linux::{self, Forked, LinuxSys};

use super::channel::ChildEnd;
use super::inner;
use super::mounts::{self, TreeId, Trees};
use super::private_users;
use super::spec::{ConsoleMode, LaunchSpec, Volatile};
use super::{ChildContext, ChildError};
use crate::network::NetworkMode;

/// Runs the outer child and exits; never returns.
pub(super) fn run(ctx: &ChildContext<'_>, chan: &ChildEnd) -> ! {
    match outer(ctx, chan).and_then(|()| Ok(chan.root_detached()?)) {
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
    let sys = LinuxSys;
    let userns = ctx.private_users.is_some();
    let hierarchies = open_hierarchies(ctx)?;
    // With a user namespace PID 1 is forked right away: it must be born in every cgroup.
    let mut joined = false;
    if !ctx.cgroups_pending || userns {
        join_cgroups(ctx, chan, &hierarchies)?;
        joined = true;
    }
    enter_namespaces(&sys, ctx.spec)?;
    // With a user namespace PID 1 is forked first, here in the payload cgroup (its cgroup
    // namespace's root): the image is mounted through its user namespace's id maps.
    let own_network =
        ctx.spec.network.needs_netns() && !matches!(ctx.spec.network.mode, NetworkMode::NamespacePath(_));
    let pid1 = match ctx.private_users {
        Some(range) => match private_users::fork_pid1(range, &ctx.spec.bind_users, own_network)? {
            Ok(pid1) => {
                if let Some(net) = &pid1.net {
                    // Before any mount: sysfs shows the network namespace of whoever mounts it.
                    sys.setns(net.as_fd(), CloneFlags::CLONE_NEWNET)
                        .map_err(ChildError::step("join the machine's network namespace"))?;
                }
                Some(pid1)
            }
            Err(wait) => {
                let console = (ctx.spec.console != ConsoleMode::Pipe).then_some("/dev/console");
                inner::run_in_user_namespace(ctx, chan, console, wait)
            }
        },
        None => None,
    };
    if ctx.spec.network.needs_netns() {
        crate::network::loopback_up().map_err(ChildError::step("bring up loopback"))?;
    }
    let mut trees = open_host_trees(ctx, pid1.as_ref().map(|p| p.user.as_fd()))?;
    // Without idmapping (ownership off, or a chowned tree) the machine sees the files as on disk.
    let idmap = pid1.as_ref().filter(|_| ctx.idmap).map(|p| p.user.as_fd());
    if userns {
        let root = &ctx.spec.root;
        // A disk image's other partitions are mounts below its root.
        let recursive = ctx.spec.image.is_some();
        let tree = match idmap {
            Some(userns) => private_users::idmapped_tree(root, userns, false, recursive)?,
            None => ro_tree(root, recursive, false)?,
        };
        trees.insert(TreeId::Root, tree);
    }
    if let Some(scratch) = &ctx.scratch {
        if ctx.spec.volatile == Volatile::Yes {
            // Taken before the tmpfs covers the image.
            let usr = ctx.spec.root.join("usr");
            let tree = match idmap {
                Some(userns) => private_users::idmapped_tree(&usr, userns, true, false)?,
                None => ro_tree(&usr, true, true)?,
            };
            trees.insert(TreeId::ImageUsr, tree);
        }
        mounts::apply(&sys, &trees, &mounts::scratch_plan(ctx.spec, scratch, ctx.private_users))?;
        for (i, o) in ctx.spec.overlays.iter().enumerate() {
            trees.insert(
                TreeId::Overlay(i),
                ro_tree(&mounts::overlay_staging(scratch, i), false, o.read_only)?,
            );
        }
    }
    let read_only = ctx.spec.read_only || ctx.spec.volatile == Volatile::State;
    let idmapped_root = userns && !ctx.spec.root_overlay() && ctx.spec.volatile != Volatile::Yes;
    mounts::apply(&sys, &trees, &mounts::root_plan(&ctx.spec.root, read_only, idmapped_root))?;
    if userns {
        // PID 1 copies this mount namespace as soon as the tree is complete.
        mounts::apply(&sys, &trees, &[mounts::Step::DetachOldRoot])?;
    }
    let outer_plan = mounts::outer_plan(ctx.spec, &ctx.uuid, &ctx.host, ctx.private_users);
    mounts::apply_owned(&sys, &trees, &outer_plan, ctx.private_users)?;
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
    if let Some(range) = ctx.private_users {
        // The guest's systemd sends to it as the machine's root.
        std::os::unix::fs::lchown(super::notify::GUEST_NOTIFY_PATH, Some(range.start), Some(range.start))
            .map_err(ChildError::step("hand over the notify socket"))?;
    }
    chan.notify_socket(notify.as_fd())?;
    drop(notify);

    let console = if ctx.spec.console == ConsoleMode::Pipe {
        None
    } else {
        let (master, n) = linux::open_pty_master(Path::new("/dev/pts/ptmx"))
            .map_err(ChildError::step("allocate console pty"))?;
        let slave = format!("/dev/pts/{n}");
        if let Some(range) = ctx.private_users {
            std::os::unix::fs::chown(&slave, Some(range.start), Some(range.start + mounts::TTY_GID))
                .map_err(ChildError::step("hand over the console"))?;
        }
        std::os::unix::fs::symlink(format!("pts/{n}"), "/dev/console")
            .map_err(ChildError::step("create /dev/console"))?;
        chan.console_master(master.as_fd())?;
        Some(slave)
    };

    if let Some(pid1) = pid1 {
        pid1.mount_api_filesystems()?;
        chan.pid(pid1.pid)?;
        return pid1.release();
    }
    if !joined {
        join_cgroups(ctx, chan, &hierarchies)?;
    }
    drop(hierarchies);
    machine_namespaces(&sys, ctx.spec)?;
    let (detached_rx, detached_tx) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
        .map_err(|e| ChildError::Step("create a pipe to PID 1", e.into()))?;
    // PID 1 is the launcher's child, not ours: our exit must not set off its parent death
    // signal once it runs.
    match linux::fork_sibling().map_err(ChildError::step("fork the machine's PID 1"))? {
        Forked::Child => {
            drop(detached_tx);
            inner::run(ctx, chan, console.as_deref(), detached_rx)
        }
        Forked::Parent(pid) => chan.pid(pid)?,
    }
    drop(detached_rx);
    // Now, while PID 1 mounts its API file systems: the unmount waits out an RCU grace period
    // (about 0.5 ms). Lookups from the new root never reach the old one stacked on it, and PID 1
    // executes its payload only once this process has told it that the unmount is done.
    mounts::apply(&sys, &Trees::default(), &[mounts::Step::DetachOldRoot])?;
    nix::unistd::write(&detached_tx, b"1")
        .map_err(|e| ChildError::Step("tell PID 1 the root is detached", e.into()))?;
    Ok(())
}

/// The mount points of the hierarchies whose cgroups this process joins, opened while the
/// host's file system is still in view.
fn open_hierarchies(ctx: &ChildContext<'_>) -> Result<Vec<std::os::fd::OwnedFd>, ChildError> {
    use rustix::fs::{Mode, OFlags};
    ctx.join_cgroup_files
        .iter()
        .map(|f| {
            rustix::fs::open(&f.mount, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
                .map_err(|e| ChildError::path_step("open cgroup hierarchy", &f.mount)(e.into()))
        })
        .collect()
}

/// Moves this process into the payload's cgroups (PID 1 is forked into them), once the parent
/// has made them when it makes them while we work.
fn join_cgroups(
    ctx: &ChildContext<'_>,
    chan: &ChildEnd,
    hierarchies: &[std::os::fd::OwnedFd],
) -> Result<(), ChildError> {
    use rustix::fs::{Mode, OFlags};
    if ctx.cgroups_pending && !chan.wait_cgroups()? {
        // The launcher went away (and takes us along with the parent death signal).
        linux::exit_now(1);
    }
    for (file, mount) in ctx.join_cgroup_files.iter().zip(hierarchies) {
        let path = file.mount.join(&file.relative);
        let failed = |e: rustix::io::Errno| ChildError::path_step("join cgroup", &path)(e.into());
        let fd = rustix::fs::openat(mount, &file.relative, OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty())
            .map_err(failed)?;
        rustix::io::write(&fd, b"0").map_err(failed)?;
    }
    Ok(())
}

/// The child's own mount namespace, receiving the host's mounts but sending none back, and
/// the machine's network namespace: a new one (`--private-network`, veth, bridge, zone, moved
/// interfaces) or an existing one (`--network-namespace-path`). The network namespace comes
/// before any mount: sysfs shows the network namespace of whoever mounts it.
fn enter_namespaces(sys: &impl Sys, spec: &LaunchSpec) -> Result<(), ChildError> {
    sys.unshare(CloneFlags::CLONE_NEWNS).map_err(ChildError::step("create mount namespace"))?;
    if spec.network.needs_netns() {
        if let NetworkMode::NamespacePath(path) = &spec.network.mode {
            let ns = fs::File::open(path).map_err(ChildError::path_step("open network namespace", path))?;
            sys.setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)
                .map_err(ChildError::path_step("join network namespace", path))?;
        } else if !spec.private_users.enabled() {
            // (With a user namespace, the machine's is made inside it: see private_users.)
            sys.unshare(CloneFlags::CLONE_NEWNET).map_err(ChildError::step("create network namespace"))?;
        }
    }
    mounts::apply(sys, &Trees::default(), &mounts::isolate_plan())?;
    Ok(())
}

/// The pid, uts and ipc namespaces the machine's PID 1 is forked into next, and its hostname.
fn machine_namespaces(sys: &impl Sys, spec: &LaunchSpec) -> Result<(), ChildError> {
    sys.unshare(CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC)
        .map_err(ChildError::step("create pid, uts and ipc namespaces"))?;
    sys.sethostname(spec.hostname()).map_err(ChildError::step("set hostname"))
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

/// Whether the tree at `root` has the time zone `name` (`/usr/share/zoneinfo/NAME`, looked up
/// inside the tree). If the tree changes before the link is made, the host's zone is copied
/// instead of bound.
fn guest_has_zone(root: &Path, name: &str) -> bool {
    use rustix::fs::{Mode, OFlags};
    rustix::fs::open(root, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .is_ok_and(|dir| crate::guestfs::exists(dir.as_fd(), &Path::new("/usr/share/zoneinfo").join(name)))
}

/// Host files the machine gets, opened as detached mounts while host paths are still
/// reachable; read-only ones are made so before they are attached, `idmap` binds are mounted
/// through the machine's user namespace `userns`.
fn open_host_trees(ctx: &ChildContext<'_>, userns: Option<BorrowedFd<'_>>) -> Result<Trees, ChildError> {
    let mut trees = Trees::default();
    let os_release =
        crate::osrelease::PATHS.iter().map(Path::new).find(|p| p.exists()).ok_or_else(|| {
            ChildError::Step("find the host's os-release", std::io::ErrorKind::NotFound.into())
        })?;
    trees.insert(TreeId::OsRelease, ro_tree(os_release, false, true)?);
    // Only what --resolv-conf and --timezone bind (or may fall back to binding).
    let (resolv, localtime) = super::host_etc::actions(ctx.spec, &ctx.host.etc);
    if let super::host_etc::ResolvAction::Bind(source) = resolv
        && source.path().exists()
    {
        trees.insert(TreeId::ResolvConf, ro_tree(source.path(), false, true)?);
    }
    if let super::journal::JournalLink::Bind { .. } = ctx.host.journal {
        let dir = super::journal::dir_of(Path::new("/var/log/journal"), &ctx.uuid);
        trees.insert(TreeId::Journal, ro_tree(&dir, false, false)?);
    }
    let zone = Path::new("/etc/localtime");
    let wanted = match &localtime {
        super::host_etc::LocaltimeAction::Bind => true,
        // Bound only when the guest lacks the zone (see host_etc): a detached tree closed
        // unused costs an RCU grace period to free (about 0.5 ms), on every launch.
        super::host_etc::LocaltimeAction::Symlink(name) => !guest_has_zone(&ctx.spec.root, name),
        _ => false,
    };
    if wanted && zone.exists() {
        trees.insert(TreeId::Localtime, ro_tree(zone, false, true)?);
    }
    if ctx.host.in_user_namespace {
        trees.insert(TreeId::Sysfs, ro_tree(Path::new("/sys"), true, false)?);
        trees.insert(TreeId::VisibleProc, ro_tree(Path::new("/proc"), false, true)?);
        let tun = ctx.host.has_tun.then_some("net/tun");
        for (i, name) in mounts::DEVICE_NODES.iter().map(|(n, _, _)| *n).chain(tun).enumerate() {
            trees.insert(TreeId::Device(i), ro_tree(&Path::new("/dev").join(name), false, false)?);
        }
    }
    for (i, b) in ctx.spec.binds.iter().enumerate() {
        let tree = match userns.filter(|_| b.idmap) {
            Some(userns) => private_users::idmapped_tree(&b.source, userns, b.read_only, false)?,
            None => ro_tree(&b.source, b.recursive, b.read_only)?,
        };
        trees.insert(TreeId::Bind(i), tree);
    }
    Ok(trees)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::{NetworkMode, NetworkSpec};
    use crate::sys::fake::FakeSys;

    #[test]
    fn namespaces_come_before_any_mount_and_the_network_before_sysfs() {
        let sys = FakeSys::new();
        let mut spec = LaunchSpec::for_test(Path::new("/m"));
        spec.network = NetworkSpec::new(NetworkMode::Private);
        enter_namespaces(&sys, &spec).unwrap();
        let calls = sys.calls();
        assert_eq!(calls[0], "unshare CloneFlags(CLONE_NEWNS)");
        assert_eq!(calls[1], "unshare CloneFlags(CLONE_NEWNET)");
        assert_eq!(calls[2], "mount - / - MsFlags(MS_REC | MS_SLAVE) -");
    }

    #[test]
    fn the_hosts_network_means_no_network_namespace() {
        let sys = FakeSys::new();
        enter_namespaces(&sys, &LaunchSpec::for_test(Path::new("/m"))).unwrap();
        assert!(!sys.calls().iter().any(|c| c.contains("NEWNET")), "{:?}", sys.calls());
    }

    #[test]
    fn the_machine_gets_its_namespaces_and_hostname() {
        let sys = FakeSys::new();
        let mut spec = LaunchSpec::for_test(Path::new("/m"));
        spec.hostname = Some("web1".into());
        machine_namespaces(&sys, &spec).unwrap();
        assert_eq!(
            sys.calls(),
            ["unshare CloneFlags(CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID)", "sethostname web1"]
        );
        sys.fail_on("sethostname", libc::EPERM);
        let err = machine_namespaces(&sys, &spec).unwrap_err();
        assert_eq!(err.to_string(), "cannot set hostname: Operation not permitted (os error 1)");
    }
}
