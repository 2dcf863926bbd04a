//! The launcher's parent process: preflight checks, the fork sequence, the supervision loop and
//! the translation of PID 1's end into an exit status.

use std::io;
use std::os::fd::AsFd;
use std::path::PathBuf;

use nix::sys::signal::{Signal, kill};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use sd_notify::NotifyState;

use crate::network;
use crate::signals::SignalNumber;
use crate::sys::linux::{self, Forked};

use super::channel::{self, ChannelError, ChildReport, MachineSetup, ParentEnd};
use super::console::Console;
use super::events::{self, Event, Events};
use super::identity::{Tree, TreeError};
use super::mounts::HostFacts;
use super::notify::{GuestNotice, NotifyRelay, tell_supervisor};
use super::record::{self, LaunchRecord};
use super::register::{self, MachineInfo, RegisterError, RegisterMode};
use super::spec::{ConsoleMode, LaunchSpec, Payload};
use super::{ChildContext, DEFAULT_PATH, outer, security};
use crate::cgroups::{CgroupError, MachineCgroup};
use crate::osrelease;

/// Why a launch failed before or while the machine ran.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// Not running as root.
    #[error("mctl must run as root to start machines (it creates namespaces, mounts and cgroups)")]
    NotRoot,
    /// A problem with the machine's tree.
    #[error(transparent)]
    Tree(#[from] TreeError),
    /// A disk image (`-i`) that cannot be used.
    #[error(transparent)]
    DiskImage(#[from] crate::images::disk::DiskError),
    /// A disk image whose partitions an option cannot handle.
    #[error("{0}")]
    DiskImageOption(String),
    /// A writable boot of a read-only image.
    #[error("image {0} is read-only: boot it with --ephemeral, --volatile or --read-only")]
    ReadOnlyImage(PathBuf),
    /// A `--bind` source that does not exist.
    #[error("bind mount source {0} does not exist")]
    BindSource(PathBuf),
    /// An `--overlay` layer that is not a directory.
    #[error("overlay directory {0} does not exist")]
    OverlaySource(PathBuf),
    /// A cgroup problem.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// `--bind-user` cannot be done.
    #[error(transparent)]
    BindUser(#[from] super::bind_user::BindUserError),
    /// `-S/--slice` on a systemd host: the machine's scope could not be had.
    #[error("-S/--slice: {0}")]
    Scope(String),
    /// `--private-users-ownership=chown` for an image that must stay as it is.
    #[error(
        "{0} cannot be chowned into the machine's id range: -x, --read-only and --volatile leave the image \
         as it is (its file system cannot be idmapped, or --private-users-ownership=chown was given)"
    )]
    ChownUntouched(PathBuf),
    /// No id range for `--private-users`.
    #[error(transparent)]
    PrivateUsers(#[from] crate::userns::RangeError),
    /// The system call filter could not be built.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    /// `--link-journal` could not link the journal.
    #[error("{0}")]
    LinkJournal(String),
    /// A resource limit could not be put on the machine's cgroup.
    #[error(transparent)]
    Resources(#[from] crate::cgroups::resources::ResourceError),
    /// Talking to a child failed.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// A setup step of the launcher itself.
    #[error("cannot {0}: {1}")]
    Setup(&'static str, #[source] io::Error),
    /// Setting up the machine's network failed.
    #[error(transparent)]
    Network(#[from] crate::network::NetworkError),
    /// Registration with mctld failed.
    #[error(transparent)]
    Register(#[from] RegisterError),
    /// A child reported a failed step.
    #[error("{error}")]
    Child {
        /// The child's message.
        error: String,
        /// What the launcher exits with.
        exit_code: i32,
    },
}

impl From<ChildReport> for LaunchError {
    fn from(r: ChildReport) -> Self {
        match r {
            ChildReport::Failed { error, exit_code } => LaunchError::Child { error, exit_code },
            ChildReport::Channel(e) => LaunchError::Channel(e),
        }
    }
}

impl LaunchError {
    /// The launcher's exit status for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            LaunchError::Child { exit_code, .. } => *exit_code,
            _ => 1,
        }
    }
}

/// How one run of the machine ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Exit(i32),
    Reboot,
}

/// Exit status that tells a service manager "reboot me" (`RestartForceExitStatus=133`).
pub const EXIT_REBOOT: i32 = 133;

/// Boots or runs the machine described by `spec` until it ends; returns the exit status
/// (see the CLI's documentation of `mctl boot` and `mctl run`).
pub fn launch(spec: &LaunchSpec) -> Result<i32, LaunchError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(LaunchError::NotRoot);
    }
    // Still single-threaded: a mount namespace without cgroup hierarchies (`ip netns exec`)
    // gets them mounted in a namespace of the launcher's own.
    if crate::cgroups::mount_if_missing(&spec.cgroup)? {
        tracing::debug!("mounted the cgroup hierarchies in a mount namespace of our own");
    }
    // A disk image is mounted first, in a mount namespace of the launcher's own, and is the
    // tree from here on; the image stays locked until the launcher ends.
    let (_image, mounted_spec);
    let spec = match &spec.image {
        Some(path) => {
            let image = mount_image(spec, path)?;
            let mut s = spec.clone();
            s.root = image.root.clone();
            s.read_only |= image.read_only;
            (_image, mounted_spec) = (image, s);
            &mounted_spec
        }
        None => spec,
    };
    let tree = preflight(spec)?;
    // Leftovers of launchers that were killed go first; then this launch records its own.
    record::sweep(&spec.runtime_dir);
    let workdirs =
        spec.overlays.iter().filter_map(|o| o.upper.as_deref()).map(super::mounts::overlay_workdir).collect();
    let mut record = LaunchRecord::create(&spec.runtime_dir, spec.needs_scratch(), workdirs)
        .map_err(|e| LaunchError::Setup("record the launch", e))?;
    let uuid = tree.machine_id().or(spec.uuid).unwrap_or_else(uuid::Uuid::new_v4);
    // Read once for the capabilities and for PID 1, which inherits the ignored signals.
    let own = crate::procfs::own_status();
    let capabilities = machine_capabilities(spec, own.bounding.as_ref());
    let seccomp = crate::seccomp::SyscallFilter::for_machine(
        &capabilities,
        &spec.syscall_filter,
        Some(&spec.runtime_dir.join("seccomp")),
    )?;
    let host = HostFacts {
        has_tun: std::path::Path::new("/dev/net/tun").exists(),
        in_user_namespace: crate::procfs::in_user_namespace(),
        etc: super::host_etc::HostEtc::read(),
        journal: if spec.ephemeral {
            // Nothing of a throwaway machine is linked (as nspawn).
            super::journal::JournalLink::None
        } else {
            super::journal::prepare(
                spec.link_journal,
                &spec.root,
                spec.read_only,
                &uuid,
                std::path::Path::new("/var/log/journal"),
                super::journal::host_machine_id(),
            )
            .map_err(LaunchError::LinkJournal)?
        },
    };
    let env = base_env(spec, &uuid);
    // Chosen once: a reboot keeps the range. The lock keeps other launchers from picking the
    // same range until this machine's user namespace exists.
    let mut private_users = crate::userns::choose(
        spec.private_users,
        &spec.root,
        &crate::userns::HostIds::default(),
        &spec.runtime_dir,
        // A machine that leaves its image untouched leaves no trace of it either.
        // (A disk image's tree has no stable path to remember its range by.)
        (!spec.image_untouched() && spec.image.is_none())
            .then(|| spec.state_dir.join("private-users"))
            .as_deref(),
    )?;
    let idmap = match &private_users {
        Some(chosen) => image_ownership(spec, chosen.range)?,
        None => false,
    };
    match &private_users {
        Some(chosen) => super::bind_user::check_range(&spec.bind_users, chosen.range)?,
        None if !spec.bind_users.is_empty() => {
            return Err(super::bind_user::BindUserError::NoUserNamespace.into());
        }
        None => {}
    }

    linux::set_child_subreaper().map_err(|e| LaunchError::Setup("become child subreaper", e))?;
    // Signals are handled synchronously through a signalfd; the children undo this mask.
    let sigfd = events::signalfd().map_err(|e| LaunchError::Setup("handle signals through a signalfd", e))?;

    let mut first_run = true;
    loop {
        let ctx = ChildContext {
            spec,
            uuid,
            boot_id: uuid::Uuid::new_v4(),
            join_cgroup_files: Vec::new(),
            cgroups_pending: false,
            wait_for_go: true,
            host: host.clone(),
            capabilities: capabilities.clone(),
            ignored_signals: own.ignored_signals,
            seccomp: seccomp.clone(),
            env: env.clone(),
            scratch: spec.needs_scratch().then(|| record.scratch_dir().to_owned()),
            private_users: private_users.as_ref().map(|c| c.range),
            idmap,
        };
        let announce = std::mem::take(&mut first_run) && !spec.quiet;
        match run_once(ctx, &sigfd, announce, &mut record, &mut private_users)? {
            Outcome::Exit(code) => return Ok(code),
            Outcome::Reboot if spec.keep_unit => return Ok(EXIT_REBOOT),
            Outcome::Reboot => continue,
        }
    }
}

/// `-i`: mounts the image's partitions privately (still single-threaded, as unsharing the mount
/// namespace wants).
fn mount_image(
    spec: &LaunchSpec,
    path: &std::path::Path,
) -> Result<crate::images::disk::MountedImage, LaunchError> {
    use crate::images::disk::{MountOptions, mount_privately};
    let opts =
        MountOptions { read_only: spec.read_only, ephemeral: spec.ephemeral, runtime_dir: &spec.runtime_dir };
    let image = mount_privately(path, &opts)?;
    if spec.volatile == super::spec::Volatile::Overlay && image.mounted.len() > 1 {
        let places: Vec<String> =
            image.mounted.iter().skip(1).map(|(_, p)| p.display().to_string()).collect();
        return Err(LaunchError::DiskImageOption(format!(
            "--volatile=overlay covers the root partition only, and {} has more ({}): not supported yet \
             (use -x, which runs on a copy of the image)",
            path.display(),
            places.join(", ")
        )));
    }
    Ok(image)
}

/// Checks what must hold before anything is created; returns the machine's tree, locked
/// (shared by machines that never write the image).
fn preflight(spec: &LaunchSpec) -> Result<Tree, LaunchError> {
    let tree = Tree::open_and_lock(&spec.root, spec.image_untouched())?;
    if !spec.image_untouched() && tree.is_immutable() {
        return Err(LaunchError::ReadOnlyImage(spec.root.clone()));
    }
    if spec.is_boot() {
        if !tree.has_os_release() {
            return Err(TreeError::NoOsRelease(spec.root.clone()).into());
        }
        tree.find_init()?;
    }
    if let Some(b) = spec.binds.iter().find(|b| !b.source.exists()) {
        return Err(LaunchError::BindSource(b.source.clone()));
    }
    for o in &spec.overlays {
        if let Some(missing) = o.lowers.iter().chain(o.upper.iter()).find(|p| !p.is_dir()) {
            return Err(LaunchError::OverlaySource(missing.clone()));
        }
    }
    Ok(tree)
}

/// How the image's files get the machine's ids (`--private-users-ownership`): returns whether
/// the root is mounted idmapped; `chown` (and `auto` where the file system cannot be
/// idmapped) shifts the tree itself into `range` first.
fn image_ownership(spec: &LaunchSpec, range: crate::userns::IdRange) -> Result<bool, LaunchError> {
    use crate::userns::Ownership;
    let chown = match spec.private_users_ownership {
        Ownership::Off => return Ok(false),
        Ownership::Map => return Ok(true),
        Ownership::Chown => true,
        Ownership::Auto => !super::private_users::idmap_supported(&spec.root),
    };
    if !chown {
        return Ok(true);
    }
    if spec.image_untouched() {
        return Err(LaunchError::ChownUntouched(spec.root.clone()));
    }
    crate::images::shift::shift_image(&spec.root, range.start)
        .map_err(|e| LaunchError::Setup("change the ownership of the image", e.source))?;
    Ok(false)
}

/// The capabilities the machine keeps: the spec's set (plus CAP_NET_ADMIN with a network of its
/// own, as nspawn), as far as the host grants them.
fn machine_capabilities(spec: &LaunchSpec, bounding: Option<&caps::CapsHashSet>) -> caps::CapsHashSet {
    let mut wanted = spec.capabilities.wanted();
    if spec.network.needs_netns() && !spec.capabilities.drop.contains(&caps::Capability::CAP_NET_ADMIN) {
        // Its own network is the machine's to configure (nspawn does the same).
        wanted.insert(caps::Capability::CAP_NET_ADMIN);
    }
    if spec.private_users.enabled()
        && !spec.network.needs_netns()
        && !spec.capabilities.add.contains(&caps::Capability::CAP_NET_BIND_SERVICE)
    {
        // Held in its own user namespace it would not reach the host's network namespace
        // anyway; nspawn drops it too.
        wanted.remove(&caps::Capability::CAP_NET_BIND_SERVICE);
    }
    let (capabilities, missing) = security::grantable(&wanted, bounding);
    if !missing.is_empty() {
        // Only what was asked for explicitly deserves a warning; a default capability the
        // host lacks (CAP_SYS_RESOURCE on some VMs) is routine.
        let names: Vec<String> = missing.iter().map(|c| c.to_string()).collect();
        if missing.iter().any(|c| spec.capabilities.add.contains(c)) {
            tracing::warn!("the host does not grant {}; the machine runs without", names.join(", "));
        } else {
            tracing::debug!("the host does not grant {}; the machine runs without", names.join(", "));
        }
    }
    capabilities
}

/// The environment PID 1 starts with (nspawn's set, `container=mctl`).
fn base_env(spec: &LaunchSpec, uuid: &uuid::Uuid) -> Vec<(String, String)> {
    let mut env = vec![
        ("PATH".to_owned(), DEFAULT_PATH.to_owned()),
        ("container".to_owned(), "mctl".to_owned()),
        ("container_uuid".to_owned(), uuid.hyphenated().to_string()),
        ("HOME".to_owned(), "/root".to_owned()),
        ("USER".to_owned(), "root".to_owned()),
        ("LOGNAME".to_owned(), "root".to_owned()),
        ("NOTIFY_SOCKET".to_owned(), super::notify::GUEST_NOTIFY_PATH.to_owned()),
    ];
    if let Ok(term) = std::env::var("TERM") {
        env.push(("TERM".to_owned(), term));
    }
    if !spec.is_boot() {
        env.push(("LANG".to_owned(), "C.UTF-8".to_owned()));
    }
    if !spec.credentials.is_empty() {
        env.push(("CREDENTIALS_DIRECTORY".to_owned(), super::credentials::DIR.to_owned()));
    }
    env.extend(osrelease::host_os_env(&osrelease::host().unwrap_or_default()));
    env
}

/// Registers with mctld as `spec.register` asks; returns whether the machine is registered.
fn register_machine(
    spec: &LaunchSpec,
    uuid: &uuid::Uuid,
    leader: i32,
    netif: Vec<i32>,
) -> Result<bool, LaunchError> {
    if spec.register == RegisterMode::No {
        return Ok(false);
    }
    let info = MachineInfo {
        name: spec.name.to_string(),
        id: *uuid,
        leader,
        // nspawn registers a machine of a disk image without a root directory: its tree exists
        // only in the machine's mount namespace.
        root: if spec.image.is_some() { String::new() } else { spec.root.to_string_lossy().into_owned() },
        netif,
        service: "mctl".into(),
    };
    match register::register(&info) {
        Ok(()) => Ok(true),
        Err(e @ RegisterError::NoManager(_)) if spec.register == RegisterMode::Auto => {
            warn_not_registered(spec, &e);
            Ok(false)
        }
        Err(e) => Err(LaunchError::Register(e)),
    }
}

/// Whether PID 1, which runs its payload once the old root is detached, waits for the
/// launcher's go too: only when the launcher connects something first, the machine's network or
/// its registration (`no_bus`: `--register=auto` found no system bus).
fn pid1_waits_for_go(spec: &LaunchSpec, no_bus: bool) -> bool {
    spec.network.needs_netns() || (spec.register != RegisterMode::No && !no_bus)
}

fn warn_not_registered(spec: &LaunchSpec, e: &RegisterError) {
    if !spec.quiet {
        tracing::warn!("{e}; the machine is not registered (start mctld, or use --register=no)");
    }
}

/// Children that must not outlive a failed launch.
#[derive(Debug, Default)]
struct Reaper {
    pids: Vec<Pid>,
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in self.pids.drain(..) {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
    }
}

/// One run of the machine, phase by phase: [`spawn`](Run::spawn) (its cgroup and the outer
/// child), [`connect`](Run::connect) (PID 1, network, registration), [`start`](Run::start) (the
/// payload executes), [`supervise`], [`end`](Run::end). Whatever a failed phase leaves is undone
/// when the run is dropped, in field order: children killed, network torn down, cgroup removed.
struct Run<'a> {
    spec: &'a LaunchSpec,
    children: Reaper,
    /// The outer child until it is reaped.
    outer: Option<Pid>,
    /// The network's first half, begun as soon as the outer child is forked (see
    /// [`network::begin`]) and finished by [`Run::connect`].
    pending_net: Option<network::PendingNetwork>,
    net: Option<network::MachineNetwork>,
    /// Whether `--register=auto` found no system bus to register on (checked once, before PID 1
    /// exists: PID 1 does not wait for a registration decided against).
    no_bus: bool,
    registered: bool,
    /// Always present until [`Run::end`] removes it.
    cgroup: Option<MachineCgroup>,
}

impl Drop for Run<'_> {
    fn drop(&mut self) {
        if self.registered {
            register::unregister(self.spec.name.as_str());
        }
    }
}

fn run_once(
    mut ctx: ChildContext<'_>,
    sigfd: &SignalFd,
    announce: bool,
    record: &mut LaunchRecord,
    private_users: &mut Option<crate::userns::Chosen>,
) -> Result<Outcome, LaunchError> {
    let (mut run, parent) = Run::spawn(&mut ctx, announce, record)?;
    let setup = run.connect(&parent, &ctx)?;
    if let Some(chosen) = private_users {
        // PID 1 runs in the user namespace now: other launchers see its range as taken.
        chosen.release();
    }
    let pid1 = Pid::from_raw(setup.pid1);
    let (notify, console) = run.start(&parent, setup)?;
    let kill_guest = || run.cgroup.as_ref().map_or(0, MachineCgroup::kill_guest);
    let status = supervise(ctx.spec, pid1, sigfd, &notify, console, &kill_guest);
    run.end(status?, record)
}

/// With `-S/--slice` on a host run by systemd, the launcher moves into a delegated scope
/// `machine-NAME.scope` of the slice that systemd makes (as nspawn has it made), and the machine
/// is laid out in it as in a kept unit. Elsewhere (false) the cgroups layer makes the slice's
/// directories itself.
fn enter_slice_scope(spec: &LaunchSpec) -> Result<bool, LaunchError> {
    let Some(slice) = spec.cgroup.slice.as_ref().filter(|_| !spec.keep_unit) else { return Ok(false) };
    if !std::path::Path::new("/run/systemd/system").is_dir() {
        return Ok(false);
    }
    let scope = crate::cgroups::Slice::scope_of(spec.name.as_str());
    let inside = || {
        std::fs::read_to_string(&spec.cgroup.self_cgroup)
            .is_ok_and(|c| c.lines().any(|l| l.starts_with("0::") && l.ends_with(&format!("/{scope}"))))
    };
    // After a reboot inside, the launcher is in its scope already.
    if inside() {
        return Ok(true);
    }
    let description = format!("Container {}", spec.name);
    crate::bus::systemd::start_scope(&scope, &slice.to_string(), &description, std::process::id())
        .map_err(|e| LaunchError::Scope(e.to_string()))?;
    // systemd moves the process when the start job runs, just after it answered.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !inside() {
        if std::time::Instant::now() > deadline {
            return Err(LaunchError::Scope(format!("systemd did not move mctl into {scope}")));
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    Ok(true)
}

impl<'a> Run<'a> {
    /// The machine's cgroup and the outer child, forked into it; returns the parent's end of
    /// the channel to it.
    fn spawn(
        ctx: &mut ChildContext<'a>,
        announce: bool,
        record: &mut LaunchRecord,
    ) -> Result<(Run<'a>, ParentEnd), LaunchError> {
        let spec = ctx.spec;
        let no_bus =
            (spec.register == RegisterMode::Auto).then(crate::bus::client::system_bus_missing).flatten();
        ctx.wait_for_go = pid1_waits_for_go(spec, no_bus.is_some());
        let keep_unit = spec.keep_unit || enter_slice_scope(spec)?;
        // The cgroup2 part now (the child is born in it), the v1 ones of a hybrid host while the
        // child builds the file system; the record names them all before any is made.
        let cgroup = MachineCgroup::create_unified(&spec.cgroup, spec.name.as_str(), keep_unit)?;
        let (dirs, parents) = cgroup.owned_dirs();
        record.set_cgroups(dirs, parents).map_err(|e| LaunchError::Setup("record the launch", e))?;
        if announce {
            eprintln!(
                "Spawning container {} on {}.",
                spec.name,
                spec.image.as_ref().unwrap_or(&spec.root).display()
            );
            if spec.console == ConsoleMode::Interactive {
                eprintln!("Press ^] three times within 1s to kill container.");
            }
        }
        if let Some(reason) = &no_bus {
            warn_not_registered(spec, &RegisterError::NoManager(reason.clone()));
        }
        ctx.join_cgroup_files = cgroup.payload_v1_tasks();
        ctx.cgroups_pending = !ctx.join_cgroup_files.is_empty();
        if let Some(range) = ctx.private_users {
            cgroup.delegate_payload(range.start, range.start)?;
        }
        let unified = cgroup.unified_payload_dir();
        let cgroup_procs = cgroup.unified_payload_procs();
        let mut run = Run {
            spec,
            children: Reaper::default(),
            outer: None,
            pending_net: None,
            net: None,
            no_bus: no_bus.is_some(),
            registered: false,
            cgroup: Some(cgroup),
        };
        let (parent, child) = channel::pair()?;
        let unified_fd =
            std::fs::File::open(&unified).map_err(|e| LaunchError::Setup("open the payload cgroup", e))?;
        let forked = match linux::fork_into_cgroup(unified_fd.as_fd()) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EINVAL | libc::E2BIG)) => {
                // Kernel without CLONE_INTO_CGROUP: the child moves itself.
                ctx.join_cgroup_files.insert(0, cgroup_procs);
                linux::fork()
            }
            other => other,
        };
        match forked.map_err(|e| LaunchError::Setup("fork", e))? {
            Forked::Child => {
                drop(parent);
                outer::run(ctx, &child)
            }
            Forked::Parent(pid) => {
                run.children.pids.push(Pid::from_raw(pid));
                run.outer = Some(Pid::from_raw(pid));
            }
        }
        // Sweeps, plans and adds the NAT entries while the child builds the tree and the v1
        // cgroups are made; dropped on an error before it is finished, it undoes what it made.
        run.pending_net = spec
            .network
            .needs_netns()
            .then(|| network::begin(&spec.network, spec.name.as_str()))
            .transpose()?;
        if let Some(cgroup) = run.cgroup.as_mut() {
            cgroup.create_v1()?;
            if !spec.resources.is_empty() {
                // Under a unit, systemd takes them (for this run: the unit file keeps its own).
                cgroup.dirs().apply_all(&spec.resources, |unit, props| {
                    crate::bus::systemd::set_if_systemd(unit, true, props)
                })?;
            }
        }
        if ctx.cgroups_pending {
            // A child that failed meanwhile has closed its end; its report is read next.
            let _ = parent.cgroups_ready();
        }
        Ok((run, parent))
    }

    /// Waits for the machine's PID 1, then connects it: its network, its registration. Both
    /// happen before the payload runs: a machine must not start half-connected, and a refused
    /// registration stops it before it starts.
    fn connect(&mut self, parent: &ParentEnd, ctx: &ChildContext<'_>) -> Result<MachineSetup, LaunchError> {
        let spec = self.spec;
        let pending = self.pending_net.take();
        let setup = parent.wait_pid1()?;
        self.children.pids.push(Pid::from_raw(setup.pid1));
        if let Some(pending) = pending {
            self.net = Some(pending.finish(setup.pid1)?);
        }
        let netif = self.net.as_ref().map(|n| n.host_ifindices()).unwrap_or_default();
        self.registered = !self.no_bus && register_machine(spec, &ctx.uuid, setup.pid1, netif)?;
        // The outer child detaches the old root after reporting PID 1: only its word that it
        // did says the host's tree is out of the machine's reach. It exits right after (and is
        // reaped once PID 1 has been let go); without a pidfd its exit is awaited here.
        // Unreaped, its pid stays its own. None on kernels before 5.3.
        let pidfd = self.outer.and_then(|pid| linux::pidfd_open(pid.as_raw()).ok());
        if pidfd.is_none() {
            self.reap_outer(parent)?;
        }
        if !parent.wait_root_detached(pidfd.as_ref().map(|fd| fd.as_fd()))? {
            self.reap_outer(parent)?;
            return Err(ChannelError::Unexpected { expected: "root detached", got: None }.into());
        }
        Ok(setup)
    }

    /// Waits for the outer child's exit, which must be 0.
    fn reap_outer(&mut self, parent: &ParentEnd) -> Result<(), LaunchError> {
        match self.wait_outer() {
            None | Some(Ok(WaitStatus::Exited(_, 0))) => Ok(()),
            Some(status) => Err(parent.outer_failure(status.ok()).into()),
        }
    }

    /// Reaps the outer child, if not yet; returns how it ended.
    fn wait_outer(&mut self) -> Option<nix::Result<WaitStatus>> {
        let outer = self.outer.take()?;
        let status = waitpid(outer, None);
        self.children.pids.retain(|p| *p != outer);
        Some(status)
    }

    /// Lets PID 1 execute the payload and wires up its notify socket and console.
    fn start(
        &mut self,
        parent: &ParentEnd,
        setup: MachineSetup,
    ) -> Result<(NotifyRelay, Option<Console>), LaunchError> {
        let spec = self.spec;
        if pid1_waits_for_go(spec, self.no_bus) {
            parent.go()?;
        }
        // Gone by now, or nearly: it said its last word before PID 1 was let go.
        let _ = self.wait_outer();
        parent.wait_exec()?;
        // From here on PID 1 lives until the machine ends; it is no failed launch's leftover.
        self.children.pids.clear();
        let notify = NotifyRelay::new(setup.notify, setup.pid1);
        let console = match setup.console {
            Some(m) if spec.console != ConsoleMode::Pipe => {
                Some(Console::new(m, spec.console).map_err(|e| LaunchError::Setup("set up the console", e))?)
            }
            _ => None,
        };
        tell_supervisor(&[
            NotifyState::Status("Container running."),
            NotifyState::Custom(&format!("X_MCTL_LEADER_PID={}", setup.pid1)),
        ]);
        if !spec.notify_ready || !spec.is_boot() {
            tell_supervisor(&[NotifyState::Ready]);
        }
        Ok((notify, console))
    }

    /// PID 1 has exited and was reaped: the machine is unregistered, its network and cgroup
    /// go (before a reboot's next run).
    fn end(mut self, status: WaitStatus, record: &mut LaunchRecord) -> Result<Outcome, LaunchError> {
        // The network goes on a thread of its own meanwhile.
        let network = self.net.take().map(network::MachineNetwork::start_teardown_after_exit);
        if std::mem::take(&mut self.registered) {
            register::unregister(self.spec.name.as_str());
        }
        let outcome = decode(self.spec, status);
        tell_supervisor(&[
            NotifyState::Stopping,
            NotifyState::Status(if outcome == Outcome::Reboot { "Restarting..." } else { "Terminating..." }),
        ]);
        match self.cgroup.take().map(MachineCgroup::remove) {
            Some(Err(e)) => tracing::warn!("{e}"),
            // Nothing left for the record to clean up at the launcher's exit.
            Some(Ok(())) => record.forget_cgroups(),
            None => {}
        }
        if let Some(teardown) = network {
            teardown.wait();
        }
        Ok(outcome)
    }
}

/// Runs the event loop until PID 1 has exited; returns its wait status. Once PID 1 is sent
/// SIGKILL, `kill_guest` kills every guest process and thaws what the guest froze through the
/// v1 freezer, where SIGKILL does not reach (see [`MachineCgroup::kill_guest`]).
fn supervise(
    spec: &LaunchSpec,
    pid1: Pid,
    sigfd: &SignalFd,
    notify: &NotifyRelay,
    console: Option<Console>,
    kill_guest: &dyn Fn() -> usize,
) -> Result<WaitStatus, LaunchError> {
    let mut events = Events::new(sigfd, Some(notify.fd()), console)
        .map_err(|e| LaunchError::Setup("watch signals, the notify socket and the console", e))?;
    let mut stop_requests = 0;
    let mut ready = false;
    // Once PID 1 is sent SIGKILL: until it is gone, a guest task not yet dead could freeze it
    // again, so killing and thawing are repeated.
    let mut killing = false;
    let status = 'run: loop {
        if let Some(status) = exited(pid1) {
            break 'run status;
        }
        // A halt request that reaches systemd before it has set up its signal handlers is
        // dropped (PID 1 ignores signals it has no handler for), so until the guest has said
        // READY=1 the request is repeated.
        let unconfirmed_stop = spec.is_boot() && stop_requests == 1 && !ready;
        let timeout = if killing { Some(THAW_REPEAT_MS) } else { unconfirmed_stop.then_some(STOP_REPEAT_MS) };
        for event in events.wait(timeout).map_err(|e| LaunchError::Setup("wait for events", e))? {
            match event {
                Event::Timeout if killing => {
                    kill_guest();
                }
                Event::Timeout => {
                    request_stop(spec, pid1, Signal::SIGTERM, REPEAT_STOP);
                }
                Event::Child => {}
                Event::Signal(sig) => {
                    stop_requests += 1;
                    if request_stop(spec, pid1, sig, stop_requests) == libc::SIGKILL {
                        killing = true;
                        kill_guest();
                    }
                }
                Event::Extra => {
                    for notice in notify.drain() {
                        match notice {
                            GuestNotice::Ready if !ready => {
                                ready = true;
                                if stop_requests == 1 {
                                    // The request may have come too early (see above).
                                    request_stop(spec, pid1, Signal::SIGTERM, REPEAT_STOP);
                                }
                                if spec.notify_ready {
                                    tell_supervisor(&[NotifyState::Ready]);
                                }
                            }
                            GuestNotice::Status(s) => {
                                tell_supervisor(&[NotifyState::Status(&format!("Container running: {s}"))]);
                            }
                            _ => {}
                        }
                    }
                }
                Event::Escape => {
                    let _ = kill(pid1, Signal::SIGKILL);
                    killing = true;
                    kill_guest();
                }
            }
        }
    };
    events.finish();
    report(spec, status);
    Ok(status)
}

/// How often an unconfirmed halt request is repeated.
const STOP_REPEAT_MS: u16 = 250;
/// How often a killed guest is killed and thawed again until PID 1 is gone.
const THAW_REPEAT_MS: u16 = 50;
/// `request_stop`'s count for a repeated first request.
const REPEAT_STOP: u32 = 0;

/// First SIGTERM/SIGINT: ask PID 1 to stop (`--kill-signal`; by default the guest's halt
/// request when booted, SIGKILL for a command, as nspawn); second: kill it. `count` 0 repeats
/// the first request quietly. Returns the signal sent.
fn request_stop(spec: &LaunchSpec, pid1: Pid, received: Signal, count: u32) -> i32 {
    let first = spec.kill_signal.unwrap_or(if spec.is_boot() {
        SignalNumber::halt()
    } else {
        SignalNumber(libc::SIGKILL)
    });
    let sig = if count <= 1 { first.0 } else { Signal::SIGKILL as i32 };
    // nix's Signal cannot name realtime signals (the halt request is one).
    let _ = linux::send_signal(pid1.as_raw(), sig);
    if count == 1 && !spec.quiet && sig != libc::SIGKILL {
        tracing::info!(
            "sent {} to the machine's PID 1; send {} again to kill it at once",
            SignalNumber(sig).name(),
            received.as_str()
        );
    }
    sig
}

/// PID 1's status once it has exited (also reaps any other child).
fn exited(pid1: Pid) -> Option<WaitStatus> {
    match waitpid(pid1, Some(WaitPidFlag::WNOHANG)) {
        Ok(s @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => Some(s),
        _ => None,
    }
}

/// Maps PID 1's end to an exit status; for a booted machine systemd's reboot() shows up as
/// death by SIGINT (halt, poweroff) or SIGHUP (reboot).
fn decode(spec: &LaunchSpec, status: WaitStatus) -> Outcome {
    let boot = matches!(spec.payload, Payload::Boot { .. });
    match status {
        // A payload exiting 133 by itself must not look like a reboot to a service manager.
        WaitStatus::Exited(_, EXIT_REBOOT) if spec.keep_unit => Outcome::Exit(1),
        WaitStatus::Exited(_, code) => Outcome::Exit(code),
        WaitStatus::Signaled(_, Signal::SIGINT, _) if boot => Outcome::Exit(0),
        WaitStatus::Signaled(_, Signal::SIGHUP, _) if boot => Outcome::Reboot,
        WaitStatus::Signaled(_, sig, _) => Outcome::Exit(128 + sig as i32),
        _ => Outcome::Exit(1),
    }
}

fn report(spec: &LaunchSpec, status: WaitStatus) {
    if spec.quiet {
        return;
    }
    let boot = spec.is_boot();
    let name = &spec.name;
    match status {
        WaitStatus::Exited(_, 0) => eprintln!("Container {name} exited successfully."),
        WaitStatus::Exited(_, code) => eprintln!("Container {name} failed with error code {code}."),
        WaitStatus::Signaled(_, Signal::SIGINT, _) if boot => {
            eprintln!("Container {name} has been shut down.")
        }
        WaitStatus::Signaled(_, Signal::SIGHUP, _) if boot => {
            eprintln!("Container {name} is being rebooted.")
        }
        WaitStatus::Signaled(_, sig, _) => {
            eprintln!("Container {name} terminated by signal {}.", sig.as_str())
        }
        _ => {}
    }
}
