//! `create`, `start` and the other lifecycle operations, in the runtime's own process.
//!
//! `create` forks a setup stage that enters (or makes) the container's namespaces and forks the
//! container's init (see [`super::init`]); the runtime relays the id maps and the hooks, records
//! the container once the init reports it is ready, and exits. Anything that fails before that
//! is undone: the init killed, its cgroups and state directory removed.

use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::cgroup::{ContainerCgroup, cgroup_path};
use super::console::ConsoleSocket;
use super::state::{EXEC_FIFO, Locked, Record, Status, Store, write_atomic};
use super::sync::{self, SyncEnd};
use super::{ContainerError, hooks};
use crate::cgroups::CgroupConfig;
use crate::launcher::register::{self, MachineInfo, RegisterError, RegisterMode};
use crate::sys::linux::Forked;

/// What `create` (and `run`) is asked.
#[derive(Debug)]
pub struct CreateOptions {
    /// The container id.
    pub id: String,
    /// The bundle directory.
    pub bundle: PathBuf,
    /// Where to write the init's pid.
    pub pid_file: Option<PathBuf>,
    /// Where the pty master is sent (`process.terminal`).
    pub console_socket: Option<ConsoleSocket>,
    /// Descriptors 3..3+N passed on to the container.
    pub preserve_fds: u32,
    /// Move the rootfs over `/` instead of pivot_root.
    pub no_pivot: bool,
    /// `cgroupsPath` is systemd's `slice:prefix:name`.
    pub systemd_cgroup: bool,
    /// Where cgroups are.
    pub cgroups: CgroupConfig,
    /// Whether to register the container with mctld.
    pub register: RegisterMode,
}

/// The container's namespaces: new ones, and ones joined by path.
#[derive(Debug, Clone)]
pub(crate) struct Namespaces {
    /// New namespaces other than the user namespace.
    pub new: CloneFlags,
    /// Namespaces to join, with their `/proc/PID/ns/...` (or bind-mounted) path.
    pub join: Vec<(CloneFlags, PathBuf)>,
    /// A new user namespace (the id maps come from `linux.uidMappings`/`gidMappings`).
    pub new_user: bool,
    /// A user namespace to join.
    pub join_user: Option<PathBuf>,
}

impl Default for Namespaces {
    fn default() -> Self {
        Namespaces { new: CloneFlags::empty(), join: Vec::new(), new_user: false, join_user: None }
    }
}

impl Namespaces {
    /// Whether the container gets a namespace of this kind, new or joined.
    pub fn has(&self, flag: CloneFlags) -> bool {
        self.new.contains(flag) || self.join.iter().any(|(f, _)| *f == flag)
    }
}

fn flag_of(t: LinuxNamespaceType) -> CloneFlags {
    match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Time => CLONE_NEWTIME,
    }
}

/// Reads the bundle's `config.json` and checks what the runtime relies on.
pub fn load_config(bundle: &Path) -> Result<Spec, ContainerError> {
    let path = bundle.join("config.json");
    let text = fs::read_to_string(&path).map_err(|e| ContainerError::Config {
        path: path.clone(),
        reason: if e.kind() == std::io::ErrorKind::NotFound {
            "no such file (a bundle needs a config.json; `mctl-runc spec` writes a default one)".into()
        } else {
            e.to_string()
        },
    })?;
    let spec: Spec = serde_json::from_str(&text).map_err(|e| ContainerError::Config {
        path: path.clone(),
        reason: format!("not a valid configuration: {e}"),
    })?;
    let bad = |reason: String| ContainerError::Config { path: path.clone(), reason };
    if spec.root().is_none() {
        return Err(bad("root.path is missing".into()));
    }
    let process = spec.process().as_ref().ok_or_else(|| bad("process is missing".into()))?;
    if process.args().as_deref().unwrap_or(&[]).is_empty() {
        return Err(bad("process.args is empty".into()));
    }
    if !process.cwd().as_os_str().is_empty() && !process.cwd().is_absolute() {
        return Err(bad(format!("process.cwd {} is not absolute", process.cwd().display())));
    }
    for m in spec.mounts().as_deref().unwrap_or(&[]) {
        if !m.destination().is_absolute() {
            return Err(bad(format!("mount destination {} is not absolute", m.destination().display())));
        }
        if let Some(t) = m.typ().as_deref()
            && !known_mount_type(t)
        {
            return Err(bad(format!("unknown mount type '{t}' for {}", m.destination().display())));
        }
    }
    Ok(spec)
}

/// File system types the kernel knows here (`/proc/filesystems`) plus `bind`.
fn known_mount_type(t: &str) -> bool {
    t == "bind"
        || t == "none"
        || fs::read_to_string("/proc/filesystems")
            .is_ok_and(|list| list.lines().any(|l| l.split_whitespace().last() == Some(t)))
}

pub(crate) fn namespaces(spec: &Spec) -> Result<Namespaces, ContainerError> {
    let mut ns = Namespaces::default();
    let mut seen = CloneFlags::empty();
    let list = spec.linux().as_ref().and_then(|l| l.namespaces().clone()).unwrap_or_default();
    for n in &list {
        let flag = flag_of(n.typ());
        if seen.contains(flag) {
            return Err(ContainerError::Invalid(format!("namespace {:?} is listed twice", n.typ())));
        }
        seen |= flag;
        match (n.typ(), n.path()) {
            (LinuxNamespaceType::User, None) => ns.new_user = true,
            (LinuxNamespaceType::User, Some(p)) => ns.join_user = Some(p.clone()),
            (LinuxNamespaceType::Mount, Some(_)) => {
                return Err(ContainerError::Invalid(
                    "joining an existing mount namespace is not supported: the container needs its own"
                        .into(),
                ));
            }
            (_, None) => ns.new |= flag,
            (_, Some(p)) => {
                if !p.exists() {
                    return Err(ContainerError::Invalid(format!(
                        "the {:?} namespace path {} does not exist",
                        n.typ(),
                        p.display()
                    )));
                }
                ns.join.push((flag, p.clone()));
            }
        }
    }
    if !ns.new.contains(CloneFlags::CLONE_NEWNS) {
        return Err(ContainerError::Invalid(
            "linux.namespaces has no mount namespace; the container needs one".into(),
        ));
    }
    let offsets = time_offsets(spec)?;
    if !offsets.is_empty() && !ns.new.contains(CLONE_NEWTIME) {
        return Err(ContainerError::Invalid(
            "linux.timeOffsets needs a new time namespace in linux.namespaces".into(),
        ));
    }
    let linux = spec.linux().as_ref();
    if linux.is_some_and(|l| l.intel_rdt().is_some()) {
        return Err(ContainerError::Invalid(
            "linux.intelRdt is set, but mctl-runc does not support Intel RDT (leave it unset)".into(),
        ));
    }
    if linux.and_then(|l| l.mount_label().as_deref()).is_some_and(|l| !l.is_empty())
        && super::lsm::selinux_enabled()
    {
        return Err(ContainerError::Invalid(
            "linux.mountLabel is set, but mctl-runc does not label mounts for SELinux (leave it unset)"
                .into(),
        ));
    }
    Ok(ns)
}

/// CLONE_NEWTIME; nix has no name for it.
const CLONE_NEWTIME: CloneFlags = CloneFlags::from_bits_retain(0x80);

/// `linux.timeOffsets` as `/proc/PID/timens_offsets` lines (clock, seconds, nanoseconds).
pub(crate) fn time_offsets(spec: &Spec) -> Result<String, ContainerError> {
    let mut lines = String::new();
    let mut offsets: Vec<_> =
        spec.linux().iter().filter_map(|l| l.time_offsets().as_ref()).flatten().collect();
    offsets.sort_by(|a, b| a.0.cmp(b.0));
    for (clock, offset) in offsets {
        if clock != "monotonic" && clock != "boottime" {
            return Err(ContainerError::Invalid(format!(
                "unknown clock '{clock}' in linux.timeOffsets: use monotonic or boottime"
            )));
        }
        let nanos = offset.nanosecs().unwrap_or(0);
        let clock = clock.as_str();
        if nanos >= 1_000_000_000 {
            return Err(ContainerError::Invalid(format!(
                "nanosecs {nanos} of the {clock} offset is not below 10^9"
            )));
        }
        lines.push_str(&format!("{clock} {} {nanos}\n", offset.secs().unwrap_or(0)));
    }
    Ok(lines)
}

/// Undoes a half-made container.
struct Undo<'a> {
    cgroup: Option<&'a ContainerCgroup>,
    pid: Option<i32>,
    armed: bool,
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(pid) = self.pid {
            let _ = crate::sys::linux::send_signal(pid, libc::SIGKILL);
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        }
        if let Some(cg) = self.cgroup {
            let _ = cg.remove();
        }
    }
}

/// The state document hooks get while the container is being created.
fn creating_state(id: &str, pid: i32, bundle: &Path, spec: &Spec) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": super::OCI_VERSION,
        "id": id,
        "status": Status::Creating,
        "pid": pid,
        "bundle": bundle,
        "annotations": spec.annotations().clone().unwrap_or_default(),
    })
}

/// Creates the container; returns its init's pid.
pub fn create(store: &Store, opts: &CreateOptions) -> Result<i32, ContainerError> {
    let bundle =
        fs::canonicalize(&opts.bundle).map_err(ContainerError::io("find the bundle", &opts.bundle))?;
    let spec = load_config(&bundle)?;
    let root = spec.root().as_ref().map(|r| r.path().clone()).unwrap_or_default();
    let root = if root.is_absolute() { root } else { bundle.join(root) };
    let rootfs = fs::canonicalize(&root).map_err(ContainerError::io("find the root filesystem", &root))?;
    if !rootfs.is_dir() {
        return Err(ContainerError::Invalid(format!("root.path {} is not a directory", rootfs.display())));
    }
    let ns = namespaces(&spec)?;
    let linux = spec.linux().clone().unwrap_or_default();
    if spec.hostname().as_deref().is_some_and(|h| !h.is_empty()) && !ns.has(CloneFlags::CLONE_NEWUTS) {
        return Err(ContainerError::Invalid(
            "unable to set the hostname without a private UTS namespace".into(),
        ));
    }
    if ns.new_user && linux.uid_mappings().as_deref().unwrap_or(&[]).is_empty() {
        return Err(ContainerError::Invalid(
            "a new user namespace needs linux.uidMappings and gidMappings".into(),
        ));
    }
    // Checked here, where the error reaches the caller as bad input, rather than in the init.
    super::lsm::check(&spec.process().clone().unwrap_or_default())?;
    if let Some(s) = linux.seccomp() {
        super::seccomp::build(s).map_err(|e| ContainerError::Invalid(e.to_string()))?;
    }
    let terminal = spec.process().as_ref().and_then(|p| p.terminal()).unwrap_or(false);
    let console = match (&opts.console_socket, terminal) {
        (Some(socket), true) => Some(socket.connect()?),
        (None, true) => {
            return Err(ContainerError::Invalid(
                "process.terminal is set but no --console-socket was given to send the pty to".into(),
            ));
        }
        (Some(_), false) => {
            return Err(ContainerError::Invalid(
                "--console-socket given but process.terminal is not set".into(),
            ));
        }
        (None, false) => None,
    };
    let mut locked = store.reserve(&opts.id)?;
    let result = create_reserved(&mut locked, opts, &bundle, &rootfs, &spec, &ns, console);
    match result {
        Ok(pid) => Ok(pid),
        Err(e) => {
            let _ = locked.remove();
            Err(e)
        }
    }
}

fn create_reserved(
    locked: &mut Locked,
    opts: &CreateOptions,
    bundle: &Path,
    rootfs: &Path,
    spec: &Spec,
    ns: &Namespaces,
    console: Option<OwnedFd>,
) -> Result<i32, ContainerError> {
    let linux = spec.linux().clone().unwrap_or_default();
    let path = cgroup_path(linux.cgroups_path().as_deref(), opts.systemd_cgroup, &opts.id)?;
    let cgroup = ContainerCgroup::resolve(&opts.cgroups, &path)?;
    let mut undo = Undo { cgroup: None, pid: None, armed: true };
    cgroup.create(&opts.cgroups)?;
    undo.cgroup = Some(&cgroup);
    cgroup.apply(&linux.resources().clone().unwrap_or_default(), true)?;
    let fifo = locked.dir.join(EXEC_FIFO);
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o622))
        .map_err(|e| ContainerError::io("create the exec fifo", &fifo)(e.into()))?;
    // mkfifo's mode went through the umask; the init may run as any user.
    fs::set_permissions(&fifo, std::os::unix::fs::PermissionsExt::from_mode(0o622))
        .map_err(ContainerError::io("chmod", &fifo))?;
    // Opened here: in a user namespace the init could not reach it through the state directory.
    let fifo_fd = OwnedFd::from(
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
            .open(&fifo)
            .map_err(ContainerError::io("open", &fifo))?,
    );
    let idmapped = super::mounts::idmapped_trees(spec.mounts().as_deref().unwrap_or(&[]), bundle, &linux)?;
    let (parent, child) =
        sync::pair().map_err(ContainerError::io("create the setup channel", "socketpair"))?;
    // The init is re-parented to us when the setup stage exits, so a failed setup can be reaped.
    crate::sys::linux::set_child_subreaper().map_err(ContainerError::io("become a subreaper", "prctl"))?;
    let ctx = super::init::InitContext {
        spec,
        rootfs,
        bundle,
        cgroup: &cgroup,
        ns,
        sync: &child,
        console: console.as_ref().map(AsFd::as_fd),
        fifo: fifo_fd.as_fd(),
        no_pivot: opts.no_pivot,
        preserve_fds: opts.preserve_fds,
        idmapped: &idmapped,
    };
    let stage = match crate::sys::linux::fork().map_err(ContainerError::io("fork", "the setup stage"))? {
        Forked::Child => super::init::setup_stage(&ctx),
        Forked::Parent(pid) => pid,
    };
    drop(child);
    drop(console);
    drop(idmapped);
    let pid = relay_setup(&parent, stage, &cgroup, ns, spec, &opts.id, bundle, &mut undo)?;
    let proc_oom = PathBuf::from(format!("/proc/{pid}/oom_score_adj"));
    if let Some(adj) = spec.process().as_ref().and_then(|p| p.oom_score_adj()) {
        fs::write(&proc_oom, adj.to_string()).map_err(ContainerError::io("write", &proc_oom))?;
    }
    expect_ready(&parent, spec, &opts.id, bundle, pid)?;
    let start_time = u32::try_from(pid)
        .ok()
        .and_then(crate::procfs::start_time)
        .ok_or_else(|| ContainerError::Setup("the container's init exited during setup".into()))?;
    let record = Record {
        id: opts.id.clone(),
        pid,
        start_time,
        bundle: bundle.to_owned(),
        rootfs: rootfs.to_owned(),
        created: now_rfc3339(),
        annotations: spec.annotations().clone().unwrap_or_default().into_iter().collect(),
        cgroup: cgroup.clone(),
        config: spec.clone(),
        registered_as: None,
    };
    let registered_as = register_container(&record, spec, opts.register)?;
    locked.save(Record { registered_as, ..record })?;
    if let Some(pid_file) = &opts.pid_file {
        write_atomic(pid_file, pid.to_string().as_bytes(), 0o644)?;
    }
    undo.armed = false;
    Ok(pid)
}

/// The engine that created the container, from its annotations or where its bundle is (what
/// machinectl shows as the machine's service).
fn engine(spec: &Spec, bundle: &Path) -> &'static str {
    let empty = std::collections::HashMap::new();
    let a = spec.annotations().as_ref().unwrap_or(&empty);
    // containerd's shims keep bundles under its state directory, in one per runtime API.
    let containerd_bundle = bundle.components().any(|c| {
        c.as_os_str()
            .to_str()
            .is_some_and(|c| c.starts_with("io.containerd.runtime.") && c.ends_with(".task"))
    });
    if a.get("io.container.manager").is_some_and(|m| m == "libpod") {
        "podman"
    } else if containerd_bundle || a.keys().any(|k| k.starts_with("io.kubernetes.cri.")) {
        "containerd"
    } else if a.keys().any(|k| k.starts_with("io.kubernetes.cri-o.")) {
        "cri-o"
    } else {
        "mctl-runc"
    }
}

/// Registers the container with mctld as a machine of class container (its id as the name,
/// made a valid machine name if it is not one). Without a manager (`auto`) nothing happens;
/// a refusal fails the create only with `yes`.
fn register_container(
    rec: &Record,
    spec: &Spec,
    mode: RegisterMode,
) -> Result<Option<String>, ContainerError> {
    if mode == RegisterMode::No {
        return Ok(None);
    }
    let name = crate::names::MachineName::new(&rec.id)
        .map(|n| n.to_string())
        .unwrap_or_else(|_| crate::names::cleanup(&rec.id));
    // A podman or containerd id is 64 hex digits: its first 32 are the machine's UUID.
    let id = rec.id.get(..32).and_then(|h| uuid::Uuid::try_parse(h).ok()).unwrap_or_else(uuid::Uuid::new_v4);
    let info = MachineInfo {
        name: name.clone(),
        id,
        leader: rec.pid,
        root: rec.rootfs.to_string_lossy().into_owned(),
        netif: Vec::new(),
        service: engine(spec, &rec.bundle).into(),
    };
    match register::register(&info) {
        Ok(()) => Ok(Some(name)),
        Err(RegisterError::NoManager(why)) if mode == RegisterMode::Auto => {
            tracing::debug!("not registered: {why}");
            Ok(None)
        }
        Err(e) if mode == RegisterMode::Auto => {
            tracing::warn!("{e}");
            Ok(None)
        }
        Err(e) => Err(ContainerError::Register(e)),
    }
}

pub(crate) fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = i64::try_from(now.as_secs()).unwrap_or(0);
    let base = crate::images::oci::layout::rfc3339(secs);
    // "...:SSZ" with the nanoseconds runc prints.
    format!("{}.{:09}Z", base.trim_end_matches('Z'), now.subsec_nanos())
}

fn protocol(got: Option<String>, wanted: &str) -> ContainerError {
    match got {
        Some(m) if m.starts_with("error ") => ContainerError::Setup(m["error ".len()..].to_owned()),
        Some(m) => ContainerError::Setup(format!("unexpected message '{m}' while waiting for '{wanted}'")),
        None => ContainerError::Setup("the container's setup ended before it was done".into()),
    }
}

fn recv(chan: &SyncEnd) -> Result<Option<String>, ContainerError> {
    Ok(recv_with_fd(chan)?.map(|(m, _)| m))
}

fn recv_with_fd(chan: &SyncEnd) -> Result<Option<(String, Option<OwnedFd>)>, ContainerError> {
    chan.recv_with_fd(Some(Duration::from_secs(60)))
        .map_err(ContainerError::io("hear from", "the container's setup"))
}

/// Runs the runtime's side of the setup stage: cgroup, id maps, and the init's pid.
#[allow(clippy::too_many_arguments)]
fn relay_setup(
    chan: &SyncEnd,
    stage: i32,
    cgroup: &ContainerCgroup,
    ns: &Namespaces,
    spec: &Spec,
    id: &str,
    bundle: &Path,
    undo: &mut Undo<'_>,
) -> Result<i32, ContainerError> {
    let reap_stage = || {
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(stage), None);
    };
    undo.pid = Some(stage);
    cgroup.add(stage)?;
    let send = |m: &str| chan.send(m).map_err(ContainerError::io("talk to", "the container's setup"));
    send("cgroup")?;
    if ns.new_user {
        match recv(chan)? {
            Some(m) if m == "userns" => {}
            other => return Err(protocol(other, "userns")),
        }
        write_id_maps(stage, spec)?;
        send("mapped")?;
    }
    // The stage's "pid N" and the init's "hooks" come in either order: the init may get as far
    // as its mounts before its parent, the stage, is scheduled again.
    let (mut pid, mut at_hooks) = (None, false);
    while pid.is_none() || !at_hooks {
        match recv(chan)? {
            Some(m) if m.starts_with("pid ") && pid.is_none() => {
                let p = m[4..].parse::<i32>().map_err(|_| protocol(Some(m.clone()), "pid"))?;
                reap_stage();
                undo.pid = Some(p);
                pid = Some(p);
            }
            Some(m) if m == "hooks" && !at_hooks => at_hooks = true,
            other => {
                if pid.is_none() {
                    reap_stage();
                }
                return Err(protocol(other, if pid.is_none() { "pid" } else { "hooks" }));
            }
        }
    }
    let pid = pid.ok_or_else(|| protocol(None, "pid"))?;
    let state = creating_state(id, pid, bundle, spec);
    if let Some(h) = spec.hooks() {
        #[allow(deprecated)]
        hooks::run("prestart", h.prestart().as_deref().unwrap_or(&[]), &state)?;
        hooks::run("createRuntime", h.create_runtime().as_deref().unwrap_or(&[]), &state)?;
    }
    send(&format!("go {state}"))?;
    Ok(pid)
}

/// Waits for the init to be ready to start; a seccomp filter that notifies an agent sends its
/// descriptor first, which goes on to the agent.
fn expect_ready(
    chan: &SyncEnd,
    spec: &Spec,
    id: &str,
    bundle: &Path,
    pid: i32,
) -> Result<(), ContainerError> {
    let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref());
    let mut handed = false;
    loop {
        match recv_with_fd(chan)? {
            Some((m, _)) if m == "ready" => return Ok(()),
            Some((m, Some(fd))) if m == "seccomp" && !handed => {
                let cfg = seccomp.ok_or_else(|| protocol(Some(m), "ready"))?;
                super::seccomp::hand_to_agent(cfg, fd.as_fd(), pid, &creating_state(id, pid, bundle, spec))
                    .map_err(|e| ContainerError::Setup(e.to_string()))?;
                handed = true;
            }
            other => return Err(protocol(other.map(|(m, _)| m), "ready")),
        }
    }
}

fn write_id_maps(pid: i32, spec: &Spec) -> Result<(), ContainerError> {
    let linux = spec.linux().clone().unwrap_or_default();
    let lines = |maps: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| {
        maps.as_deref()
            .unwrap_or(&[])
            .iter()
            .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
            .collect::<String>()
    };
    for (file, text) in [("uid_map", lines(linux.uid_mappings())), ("gid_map", lines(linux.gid_mappings()))] {
        let path = PathBuf::from(format!("/proc/{pid}/{file}"));
        fs::write(&path, text).map_err(ContainerError::io("write", &path))?;
    }
    Ok(())
}

/// `start`: lets a created container's init go on to run its process.
pub fn start(store: &Store, id: &str) -> Result<(), ContainerError> {
    let locked = store.open(id)?;
    let rec = locked.record.clone().ok_or_else(|| ContainerError::NotFound(id.into()))?;
    match rec.status(&locked.dir) {
        Status::Created => {}
        Status::Stopped => {
            return Err(ContainerError::WrongStatus("cannot start a container that has stopped".into()));
        }
        Status::Running => {
            return Err(ContainerError::WrongStatus("cannot start an already running container".into()));
        }
        s => return Err(ContainerError::WrongStatus(format!("cannot start a container that is {s}"))),
    }
    let fifo = locked.dir.join(EXEC_FIFO);
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&fifo)
        .map_err(ContainerError::io("open", &fifo))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut fds = [nix::poll::PollFd::new(f.as_fd(), nix::poll::PollFlags::POLLIN)];
        let ready =
            nix::poll::poll(&mut fds, 100u16).map_err(|e| ContainerError::io("wait on", &fifo)(e.into()))?;
        if ready > 0 {
            let mut byte = [0u8; 1];
            match nix::unistd::read(&f, &mut byte) {
                Ok(1) => break,
                Ok(_) => {
                    return Err(ContainerError::WrongStatus(
                        "the container's init exited before it was started".into(),
                    ));
                }
                Err(nix::errno::Errno::EAGAIN) => {}
                Err(e) => return Err(ContainerError::io("read", &fifo)(e.into())),
            }
        }
        if !rec.init_alive() {
            return Err(ContainerError::WrongStatus(
                "the container's init exited before it was started".into(),
            ));
        }
        if Instant::now() > deadline {
            return Err(ContainerError::WrongStatus(
                "the container's init did not take the start within 30 s".into(),
            ));
        }
    }
    fs::remove_file(&fifo).map_err(ContainerError::io("remove", &fifo))?;
    if let Some(h) = rec.config.hooks() {
        hooks::run_warning(
            "poststart",
            h.poststart().as_deref().unwrap_or(&[]),
            &rec.state_json(Status::Running),
        );
    }
    Ok(())
}

/// `kill`: a signal to the init, or with `all` to every process of the container.
pub fn kill(store: &Store, id: &str, signal: i32, all: bool) -> Result<(), ContainerError> {
    let locked = store.open(id)?;
    let rec = locked.record.as_ref().ok_or_else(|| ContainerError::NotFound(id.into()))?;
    if rec.status(&locked.dir) == Status::Stopped {
        return Err(ContainerError::WrongStatus("container not running".into()));
    }
    signal_container(rec, signal, all)
}

fn signal_container(rec: &Record, signal: i32, all: bool) -> Result<(), ContainerError> {
    if all {
        // A frozen process gets the signal only when thawed; SIGKILL must work on a paused one.
        let paused = rec.cgroup.is_frozen();
        for pid in rec.cgroup.pids() {
            let _ = crate::sys::linux::send_signal(pid, signal);
        }
        if paused && signal == libc::SIGKILL {
            let _ = rec.cgroup.freeze(false);
        }
        return Ok(());
    }
    crate::sys::linux::send_signal(rec.pid, signal)
        .map_err(ContainerError::io("signal", PathBuf::from(format!("pid {}", rec.pid))))
}

/// `delete`: removes a stopped (or, with `force`, any) container: its processes, cgroups,
/// poststop hooks and state.
pub fn delete(store: &Store, id: &str, force: bool) -> Result<(), ContainerError> {
    let locked = match store.open(id) {
        Err(ContainerError::NotFound(_)) if force => return Ok(()),
        other => other?,
    };
    let Some(rec) = locked.record.clone() else {
        // A create that died before recording anything.
        return locked.remove();
    };
    let status = rec.status(&locked.dir);
    match status {
        Status::Stopped | Status::Created => {}
        _ if force => {}
        s => {
            return Err(ContainerError::WrongStatus(format!(
                "cannot delete container {id} that is not stopped: {s}"
            )));
        }
    }
    if status != Status::Stopped {
        signal_container(&rec, libc::SIGKILL, true)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while rec.init_alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    rec.cgroup.remove()?;
    if let Some(name) = &rec.registered_as {
        register::unregister(name);
    }
    if let Some(h) = rec.config.hooks() {
        hooks::run_warning(
            "poststop",
            h.poststop().as_deref().unwrap_or(&[]),
            &rec.state_json(Status::Stopped),
        );
    }
    locked.remove()
}

/// `state`: the state document.
pub fn state(store: &Store, id: &str) -> Result<serde_json::Value, ContainerError> {
    let locked = store.open(id)?;
    let rec = locked.record.as_ref().ok_or_else(|| ContainerError::NotFound(id.into()))?;
    Ok(rec.state_json(rec.status(&locked.dir)))
}

/// `pause` (`true`) and `resume`.
pub fn pause(store: &Store, id: &str, paused: bool) -> Result<(), ContainerError> {
    let locked = store.open(id)?;
    let rec = locked.record.as_ref().ok_or_else(|| ContainerError::NotFound(id.into()))?;
    match (rec.status(&locked.dir), paused) {
        (Status::Running | Status::Created, true) | (Status::Paused, false) => rec.cgroup.freeze(paused),
        (s, true) => Err(ContainerError::WrongStatus(format!("container not running: {s}"))),
        (s, false) => Err(ContainerError::WrongStatus(format!("container not paused: {s}"))),
    }
}

/// `update`: new resources for a live container.
pub fn update(
    store: &Store,
    id: &str,
    res: &oci_spec::runtime::LinuxResources,
) -> Result<(), ContainerError> {
    let locked = store.open(id)?;
    let rec = locked.record.as_ref().ok_or_else(|| ContainerError::NotFound(id.into()))?;
    if rec.status(&locked.dir) == Status::Stopped {
        return Err(ContainerError::WrongStatus("container not running".into()));
    }
    rec.cgroup.apply(res, false)
}

/// Every container's record and status (records that cannot be read are skipped).
pub fn list(store: &Store) -> Vec<(Record, Status)> {
    store
        .ids()
        .iter()
        .filter_map(|id| store.open(id).ok())
        .filter_map(|l| l.record.clone().map(|r| (r.status(&l.dir), r)))
        .map(|(s, r)| (r, s))
        .collect()
}

/// `ps`: the container's processes.
pub fn pids(store: &Store, id: &str) -> Result<Vec<i32>, ContainerError> {
    let locked = store.open(id)?;
    let rec = locked.record.as_ref().ok_or_else(|| ContainerError::NotFound(id.into()))?;
    Ok(rec.cgroup.pids())
}
