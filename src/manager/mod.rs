//! The manager (`mctld`'s domain, free of D-Bus types): the registry of running machines, its
//! persistence under `/run/mctl/machines`, lifetime tracking of each leader through a pidfd,
//! and the operations machinectl offers (terminate, kill, os-release, addresses).

use registry::Registry;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::sync::broadcast;

use crate::cgroups::{self, CgroupConfig};
use crate::procfs;
use crate::sys::linux;

pub mod auth;
pub mod files;
pub mod images;
pub mod machine;
pub mod pool;
pub mod registry;
pub mod resources;
pub mod sessions;
pub mod store;

pub use auth::{Action, Caller};
pub use machine::{Class, Machine, State};
use store::Store;

/// A manager operation that failed; each maps to one machined D-Bus error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManagerError {
    /// Unknown machine.
    #[error("No machine '{0}' known")]
    NoSuchMachine(String),
    /// Unknown image.
    #[error("No image '{0}' known")]
    NoSuchImage(String),
    /// Name taken.
    #[error("Machine '{0}' already exists")]
    MachineExists(String),
    /// No machine has this pid.
    #[error("PID {0} does not belong to any known machine")]
    NoMachineForPid(u32),
    /// The machine shares the host's network namespace.
    #[error("Machine {0} does not use private networking")]
    NoPrivateNetworking(String),
    /// A malformed argument.
    #[error("{0}")]
    InvalidArgs(String),
    /// The caller may not do this.
    #[error("{0}")]
    AccessDenied(String),
    /// Too much work in progress (of this caller's class); try again later.
    #[error("{0}")]
    LimitsExceeded(String),
    /// The work did not finish in time.
    #[error("{0}")]
    TimedOut(String),
    /// Not possible for this machine (the host, `.host`).
    #[error("{0}")]
    NotSupported(String),
    /// Anything else.
    #[error("{0}")]
    Failed(String),
}

impl From<pool::PoolError> for ManagerError {
    fn from(e: pool::PoolError) -> Self {
        match e {
            pool::PoolError::Busy => ManagerError::LimitsExceeded(format!("Cannot do this now: {e}")),
            pool::PoolError::TimedOut(_) => ManagerError::TimedOut(format!("Gave up: {e}")),
            pool::PoolError::Panicked(_) => ManagerError::Failed(e.to_string()),
        }
    }
}

/// Which processes belong to a machine: a registered leader may be any host process, and
/// killing its whole cgroup (a service's, say) would kill bystanders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Everything in the cgroup mctl's launcher made for the machine.
    Cgroup(PathBuf),
    /// Everything in the pid namespace whose PID 1 the leader is.
    PidNamespace,
    /// The leader alone.
    Leader,
}

impl Scope {
    /// The machine's own cgroup if it has one, else the leader's pid namespace if the leader
    /// is its PID 1 (not mctld's namespace), else the leader alone.
    pub fn decide(own_cgroup: Option<PathBuf>, leader_is_pidns_init: bool) -> Scope {
        match (own_cgroup, leader_is_pidns_init) {
            (Some(dir), _) => Scope::Cgroup(dir),
            (None, true) => Scope::PidNamespace,
            (None, false) => Scope::Leader,
        }
    }
}

/// What happened to the registry (the bus adapter turns these into signals).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A machine was registered (or re-adopted after a restart).
    New(String),
    /// A machine is gone.
    Removed(String),
}

/// Where the manager keeps state and finds cgroups; parameters so tests can redirect them.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Runtime state directory (`/run/mctl/machines`).
    pub state_dir: PathBuf,
    /// Where cgroup filesystems are mounted.
    pub cgroup: CgroupConfig,
    /// The image pool reported as `PoolPath`.
    pub pool_path: PathBuf,
    /// The program started with [`session::HELPER_FLAG`](crate::session::HELPER_FLAG) for
    /// shells, logins and terminals in machines: mctld's own binary.
    pub session_helper: PathBuf,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            state_dir: "/run/mctl/machines".into(),
            cgroup: CgroupConfig::default(),
            pool_path: "/var/lib/machines".into(),
            session_helper: "/proc/self/exe".into(),
        }
    }
}

/// A registration request (the arguments of `RegisterMachineWithNetwork`).
#[derive(Debug, Clone)]
pub struct RegisterRequest {
    /// Machine name as the caller sent it, unchecked until `registry::validate`.
    pub name: String,
    /// 0 or 16 bytes.
    pub id: Vec<u8>,
    /// Registering service.
    pub service: String,
    /// Class string.
    pub class: String,
    /// Leader pid (0: the caller).
    pub leader: u32,
    /// Root directory ("" or absolute).
    pub root_directory: String,
    /// Host-side interface indices.
    pub netif: Vec<i32>,
}

/// The machine's leader as a pid_t. Registration found it in /proc, so it fits; were it ever not,
/// it must not wrap to a negative pid, which kill() takes for a process group or every process.
fn leader_pid(m: &Machine) -> Result<i32, ManagerError> {
    i32::try_from(m.leader).map_err(|_| ManagerError::Failed(format!("Leader PID {} out of range", m.leader)))
}

/// The task watching a machine's leader, aborted when the machine leaves the registry.
#[derive(Debug)]
struct Watcher(Option<tokio::task::AbortHandle>);

impl Watcher {
    /// Lets the task run on (it is the one ending).
    fn disarm(mut self) {
        self.0.take();
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

/// The registry of machines.
pub struct Manager {
    machines: Mutex<Registry<Watcher>>,
    store: Store,
    events: broadcast::Sender<Event>,
    unified_mount: Option<PathBuf>,
    /// The host's cgroup hierarchies, for finding machines' cgroups.
    hierarchies: Vec<cgroups::Hierarchy>,
    /// systemd, for machines whose cgroup is a unit's.
    units: std::sync::OnceLock<Box<dyn resources::UnitControl>>,
    pool_path: PathBuf,
    images: crate::images::store::ImageStore,
    session_helper: PathBuf,
    /// The `.host` pseudo-machine machined reports.
    host: Machine,
    me: Weak<Manager>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("machines", &self.lock().machines().map(|m| &m.name).collect::<Vec<_>>())
            .finish()
    }
}

impl Manager {
    /// Gives the manager the service manager of units (once; later calls are ignored).
    pub fn set_unit_control(&self, units: Box<dyn resources::UnitControl>) {
        let _ = self.units.set(units);
    }

    /// Opens the state directory; call [`Manager::recover`] next (inside the runtime).
    pub fn new(cfg: &ManagerConfig) -> Result<Arc<Self>, ManagerError> {
        let store = Store::open(&cfg.state_dir).map_err(|e| ManagerError::Failed(e.to_string()))?;
        let hierarchies = cgroups::detect(&cfg.cgroup).unwrap_or_default();
        let unified_mount = hierarchies.iter().find(|h| h.v2).map(|h| h.mount.clone());
        let (events, _) = broadcast::channel(256);
        Ok(Arc::new_cyclic(|me| Manager {
            machines: Mutex::new(Registry::default()),
            store,
            events,
            unified_mount,
            hierarchies,
            units: std::sync::OnceLock::new(),
            pool_path: cfg.pool_path.clone(),
            images: crate::images::store::ImageStore::new(cfg.pool_path.clone()),
            session_helper: cfg.session_helper.clone(),
            host: host_machine(),
            me: me.clone(),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Registry<Watcher>> {
        self.machines.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Subscribes to registry events.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// The image pool path.
    pub fn pool_path(&self) -> &Path {
        &self.pool_path
    }

    /// Re-adopts every machine whose state file survived a restart and whose leader is still
    /// the same process; drops the rest. Emits `New` for each survivor, as machined does.
    pub fn recover(&self) -> Vec<String> {
        let mut adopted = Vec::new();
        for m in self.store.load_all() {
            let alive =
                procfs::start_time(m.leader).is_some_and(|t| m.leader_start == 0 || t == m.leader_start);
            if !alive {
                let _ = self.store.remove(&m.name);
                continue;
            }
            let name = m.name.clone();
            let watcher = self.watch(&m);
            if watcher.is_none() {
                let _ = self.store.remove(&name);
                continue;
            }
            if self.lock().insert(m, watcher).is_err() {
                continue;
            }
            let _ = self.events.send(Event::New(name.clone()));
            adopted.push(name);
        }
        adopted
    }

    /// Watches the leader's pidfd; when it exits, the machine is removed at once.
    fn watch(&self, m: &Machine) -> Option<Watcher> {
        let afd = linux::async_pidfd(leader_pid(m).ok()?).ok()?;
        let me = self.me.clone();
        let (name, leader) = (m.name.clone(), m.leader);
        let task = tokio::spawn(async move {
            // A pidfd becomes readable when the process exits.
            let _ = afd.readable().await;
            if let Some(me) = me.upgrade() {
                me.leader_exited(&name, leader);
            }
        });
        Some(Watcher(Some(task.abort_handle())))
    }

    fn leader_exited(&self, name: &str, leader: u32) {
        let removed = self.lock().remove_exited(name, leader).map(|(m, watcher)| {
            // This task is the watcher itself: it must not abort itself on the way out.
            if let Some(w) = watcher {
                w.disarm();
            }
            m
        });
        if removed.is_some() {
            let _ = self.store.remove(name);
            let _ = self.events.send(Event::Removed(name.to_owned()));
        }
    }

    /// Registers a machine (`RegisterMachine[WithNetwork]`), validating as machined does.
    pub fn register(&self, req: RegisterRequest, caller: &Caller) -> Result<Machine, ManagerError> {
        caller.authorize(Action::Register)?;
        let v = registry::validate(req, caller.pid)?;
        let leader = v.leader;
        let leader_start = procfs::start_time(leader)
            .ok_or_else(|| ManagerError::InvalidArgs(format!("Leader PID {leader} does not exist")))?;
        let cgroup = procfs::cgroup2_path(leader).unwrap_or_default();
        let machine = Machine {
            unit: procfs::unit_from_cgroup(&cgroup, &v.name),
            name: v.name.clone(),
            id: v.id,
            timestamp: linux::clock_us(libc::CLOCK_REALTIME),
            timestamp_monotonic: linux::clock_us(libc::CLOCK_MONOTONIC),
            service: v.service,
            leader,
            leader_start,
            class: v.class,
            root_directory: v.root_directory,
            netif: v.netif,
            state: State::Running,
            cgroup,
        };
        {
            let mut map = self.lock();
            if map.contains(&v.name) {
                return Err(ManagerError::MachineExists(v.name));
            }
            let watcher = self
                .watch(&machine)
                .ok_or_else(|| ManagerError::InvalidArgs(format!("Leader PID {leader} does not exist")))?;
            self.store.save(&machine).map_err(|e| ManagerError::Failed(e.to_string()))?;
            map.insert(machine.clone(), Some(watcher))?;
        }
        let _ = self.events.send(Event::New(v.name));
        Ok(machine)
    }

    /// Forgets a machine without stopping it (`UnregisterMachine`).
    pub fn unregister(&self, name: &str, caller: &Caller) -> Result<(), ManagerError> {
        self.get_guest(name)?;
        caller.authorize(Action::Manage)?;
        if self.lock().remove(name).is_some() {
            let _ = self.store.remove(name);
            let _ = self.events.send(Event::Removed(name.to_owned()));
        }
        Ok(())
    }

    /// Ends every process of the machine (`TerminateMachine`), and nothing else (see
    /// [`Scope`]); the machine disappears when its leader is gone, and its launcher cleans up.
    pub fn terminate(&self, name: &str, caller: &Caller) -> Result<(), ManagerError> {
        let m = self.get_guest(name)?;
        caller.authorize(Action::Manage)?;
        self.set_state(name, State::Closing);
        let failed = |e: std::io::Error| ManagerError::Failed(format!("Failed to kill machine {name}: {e}"));
        match self.scope(&m) {
            Scope::Cgroup(dir) => cgroups::kill_all(&dir),
            // As PID 1 of its namespace, the leader takes every other process there with it.
            Scope::PidNamespace | Scope::Leader => {
                linux::send_signal(leader_pid(&m)?, libc::SIGKILL).map_err(failed)?;
            }
        }
        self.thaw_guest(&m);
        Ok(())
    }

    /// Sends `signal` to the leader or to every process of the machine (`KillMachine`).
    pub fn kill(&self, name: &str, who: &str, signal: i32, caller: &Caller) -> Result<(), ManagerError> {
        let m = self.get_guest(name)?;
        let all = match who {
            "leader" => false,
            "" | "all" => true,
            other => return Err(ManagerError::InvalidArgs(format!("Invalid kill parameter '{other}'"))),
        };
        if !(1..=64).contains(&signal) {
            return Err(ManagerError::InvalidArgs(format!("Invalid signal {signal}")));
        }
        caller.authorize(Action::Manage)?;
        let leader = leader_pid(&m)?;
        let targets = if all { self.processes(&m) } else { vec![leader] };
        for pid in targets {
            // Processes may exit while we go; only the leader's absence is an error.
            if let Err(e) = linux::send_signal(pid, signal)
                && pid == leader
            {
                return Err(ManagerError::Failed(format!("Failed to kill machine {name}: {e}")));
            }
        }
        if signal == libc::SIGKILL {
            self.thaw_guest(&m);
        }
        Ok(())
    }

    /// Freezes (`true`) or thaws every process of the machine through its cgroup's freezer,
    /// waiting until the kernel reports the new state.
    pub fn freeze(&self, name: &str, frozen: bool, caller: &Caller) -> Result<(), ManagerError> {
        let m = self.get_guest(name)?;
        caller.authorize(Action::Manage)?;
        let Scope::Cgroup(dir) = self.scope(&m) else {
            return Err(ManagerError::Failed(format!("Machine {name} has no cgroup of its own to freeze")));
        };
        let verb = if frozen { "freeze" } else { "thaw" };
        let reached = crate::cgroups::freeze(&dir, frozen, std::time::Duration::from_secs(10))
            .map_err(|e| ManagerError::Failed(format!("Failed to {verb} machine {name}: {e}")))?;
        if reached {
            Ok(())
        } else {
            Err(ManagerError::Failed(format!("Machine {name} did not reach the requested freezer state")))
        }
    }

    /// Whether the machine is frozen.
    pub fn is_frozen(&self, m: &Machine) -> bool {
        self.machine_cgroup_dir(m).is_some_and(|d| crate::cgroups::is_frozen(&d))
    }

    /// Every process of the machine (see [`Scope`]).
    pub fn processes(&self, m: &Machine) -> Vec<i32> {
        match self.scope(m) {
            Scope::Cgroup(dir) => {
                let pids = cgroups::pids_in(&dir);
                if pids.is_empty() { leader_pid(m).into_iter().collect() } else { pids }
            }
            Scope::PidNamespace => procfs::pids_in_pidns(m.leader),
            Scope::Leader => leader_pid(m).into_iter().collect(),
        }
    }

    /// What belongs to the machine, for killing, freezing and listing its processes.
    pub fn scope(&self, m: &Machine) -> Scope {
        Scope::decide(self.machine_cgroup_dir(m), procfs::is_pidns_init(m.leader))
    }

    /// The machine's own cgroup directory, if it has one: a cgroup mctl's launcher made for it,
    /// never one its leader merely shares with other processes.
    pub fn machine_cgroup_dir(&self, m: &Machine) -> Option<PathBuf> {
        let own = procfs::machine_cgroup(&m.cgroup, &m.name)?;
        let dir = self.unified_mount.as_ref()?.join(own.trim_start_matches('/'));
        dir.is_dir().then_some(dir)
    }

    /// The machine's own cgroup (`GetMachineControlGroup`): empty when it has none, so that
    /// no client lists, enters or changes another cgroup in its name.
    pub fn control_group(&self, name: &str) -> Result<String, ManagerError> {
        let m = self.get(name)?;
        let own = procfs::machine_cgroup(&m.cgroup, &m.name).unwrap_or_default().to_owned();
        Ok(if self.machine_cgroup_dir(&m).is_some() { own } else { String::new() })
    }

    fn set_state(&self, name: &str, state: State) {
        let mut map = self.lock();
        if let Some(e) = map.get_mut(name) {
            e.state = state;
            let _ = self.store.save(e);
        }
    }

    /// One machine, `.host` included.
    pub fn get(&self, name: &str) -> Result<Machine, ManagerError> {
        if name == HOST_NAME {
            return Ok(self.host.clone());
        }
        self.lock().get(name).cloned().ok_or_else(|| ManagerError::NoSuchMachine(name.to_owned()))
    }

    /// One registered machine, to act on: the host (`.host`) cannot be terminated, killed,
    /// frozen, limited, unregistered or written to through mctld.
    pub fn get_guest(&self, name: &str) -> Result<Machine, ManagerError> {
        if name == HOST_NAME {
            return Err(ManagerError::NotSupported("Operation not supported".into()));
        }
        self.get(name)
    }

    /// Every registered machine, by name (without `.host`).
    pub fn list(&self) -> Vec<Machine> {
        self.lock().machines().cloned().collect()
    }

    /// Every machine as machined lists them: `.host` first, then the registered ones.
    pub fn list_with_host(&self) -> Vec<Machine> {
        let mut all = vec![self.host.clone()];
        all.extend(self.list());
        all
    }

    /// The machine `pid` belongs to (`GetMachineByPID`).
    pub fn by_pid(&self, pid: u32) -> Result<Machine, ManagerError> {
        let machines = self.list();
        if let Some(m) = machines.iter().find(|m| m.leader == pid) {
            return Ok(m.clone());
        }
        let cg = procfs::cgroup2_path(pid).unwrap_or_default();
        machines
            .into_iter()
            .find(|m| {
                registry::in_machine_cgroup(&m.cgroup, &cg)
                    || (!procfs::in_pidns_of(m.leader, std::process::id())
                        && procfs::in_pidns_of(pid, m.leader))
            })
            .ok_or(ManagerError::NoMachineForPid(pid))
    }

    /// The machine's os-release fields.
    pub fn os_release(&self, name: &str) -> Result<Vec<(String, String)>, ManagerError> {
        let m = self.get(name)?;
        // The host's own, as machined reads it (PID 1 may be beyond our reach in /proc).
        let fields =
            if m.class == Class::Host { procfs::os_release_under("/") } else { procfs::os_release(m.leader) };
        fields.map_err(|e| {
            let what = "Machine does not contain OS release information";
            ManagerError::Failed(if e.is_not_found() { what.into() } else { format!("{what}: {e}") })
        })
    }

    /// The machine's UID shift.
    pub fn uid_shift(&self, name: &str) -> Result<u32, ManagerError> {
        let m = self.get(name)?;
        if m.class == Class::Host {
            return Ok(0);
        }
        procfs::uid_shift(m.leader).map_err(|e| ManagerError::Failed(e.to_string()))
    }

    /// The machine's IP addresses (family, bytes), read inside its network namespace.
    pub fn addresses(&self, name: &str) -> Result<Vec<(i32, Vec<u8>)>, ManagerError> {
        let m = self.get(name)?;
        if m.class != Class::Host && procfs::shares_host_netns(m.leader) {
            return Err(ManagerError::NoPrivateNetworking(name.to_owned()));
        }
        let found = if m.class == Class::Host { interface_addresses() } else { addresses_in_netns(m.leader) };
        found.map_err(|e| ManagerError::Failed(format!("Failed to get addresses: {e}")))
    }
}

/// The name of the pseudo-machine that stands for the host.
pub const HOST_NAME: &str = ".host";

/// The host as machined reports it: class host, leader 1, unit `-.slice`, root `/`, its
/// machine id, registered at boot.
fn host_machine() -> Machine {
    let id = fs::read_to_string("/etc/machine-id").ok().and_then(|s| machine::parse_hex_id(s.trim()));
    Machine {
        name: HOST_NAME.into(),
        id,
        timestamp: boot_time_us(),
        timestamp_monotonic: 0,
        service: String::new(),
        unit: "-.slice".into(),
        leader: 1,
        leader_start: procfs::start_time(1).unwrap_or(0),
        class: Class::Host,
        root_directory: "/".into(),
        netif: Vec::new(),
        state: State::Running,
        cgroup: "/".into(),
    }
}

/// CLOCK_REALTIME of the boot in µs (`btime` of `/proc/stat`).
fn boot_time_us() -> u64 {
    fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse::<u64>().ok())
        })
        .map_or(0, |secs| secs.saturating_mul(1_000_000))
}

/// Addresses as machine1 reports them: (address family, address bytes).
pub type Addresses = Vec<(i32, Vec<u8>)>;

/// One row of [`Manager::overview`]: what `mctl list` shows of a machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineOverview {
    /// Machine name; [`Manager::overview`] returns the rows sorted by it.
    pub name: String,
    /// Class (`container`, `vm`).
    pub class: String,
    /// Service that registered it.
    pub service: String,
    /// os-release `ID` (empty when unknown).
    pub os_id: String,
    /// os-release `VERSION_ID` (empty when unknown).
    pub version_id: String,
    /// Its addresses (family, bytes); empty when it shares the host's network.
    pub addresses: Addresses,
}

impl Manager {
    /// Every machine with its OS and addresses, gathered in one pass: what `mctl list`
    /// would otherwise ask for with two calls per machine.
    pub fn overview(&self) -> Vec<MachineOverview> {
        let mut machines = self.list();
        machines.sort_by(|a, b| a.name.cmp(&b.name));
        let host_netns = procfs::netns_inode(std::process::id());
        // Per machine, from one open of its /proc directory: whether it has a network of its
        // own, and its os-release. Most of the cost is in the kernel's /proc lookups, so the
        // machines are spread over the CPUs.
        let facts_of = |part: &[Machine]| -> Vec<(bool, (String, String))> {
            part.iter()
                .map(|m| match procfs::ProcDir::open(m.leader) {
                    Ok(dir) => {
                        let private = dir.ns_inode("net").is_some_and(|i| Some(i) != host_netns);
                        (private, os_id_and_version(dir.os_release().unwrap_or_default()))
                    }
                    Err(_) => (false, Default::default()),
                })
                .collect()
        };
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(4);
        let chunk = machines.len().div_ceil(threads).max(64);
        let facts: Vec<(bool, (String, String))> = if machines.len() <= chunk {
            // One chunk: no thread of its own (the caller's is a bounded blocking one).
            facts_of(&machines)
        } else {
            std::thread::scope(|scope| {
                let workers: Vec<_> =
                    machines.chunks(chunk).map(|part| scope.spawn(move || facts_of(part))).collect();
                workers.into_iter().flat_map(|w| w.join().unwrap_or_default()).collect()
            })
        };
        let (private, os): (Vec<bool>, Vec<(String, String)>) = facts.into_iter().unzip();
        let leaders: Vec<u32> =
            machines.iter().zip(&private).filter(|(_, p)| **p).map(|(m, _)| m.leader).collect();
        let mut addresses = addresses_in_netns_of(&leaders).into_iter();
        machines
            .into_iter()
            .zip(private)
            .zip(os)
            .map(|((m, private), (os_id, version_id))| MachineOverview {
                os_id,
                version_id,
                addresses: if private {
                    addresses.next().and_then(|r| r.ok()).unwrap_or_default()
                } else {
                    Vec::new()
                },
                class: m.class.as_str().to_owned(),
                service: m.service,
                name: m.name,
            })
            .collect()
    }
}

/// os-release `ID` and `VERSION_ID` (empty when unknown).
fn os_id_and_version(os: Vec<(String, String)>) -> (String, String) {
    let field = |k: &str| os.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone()).unwrap_or_default();
    (field("ID"), field("VERSION_ID"))
}

/// Lists addresses from a dedicated thread that joins the leader's network namespace (setns
/// of a network namespace affects only the calling thread, which then ends).
fn addresses_in_netns(leader: u32) -> std::io::Result<Addresses> {
    addresses_in_netns_of(&[leader]).pop().unwrap_or_else(|| Err(std::io::Error::other("no answer")))
}

/// Addresses of each leader's network namespace, in order, from one thread that joins the
/// namespaces one after another.
fn addresses_in_netns_of(leaders: &[u32]) -> Vec<std::io::Result<Addresses>> {
    if leaders.is_empty() {
        return Vec::new();
    }
    let namespaces: Vec<std::io::Result<fs::File>> =
        leaders.iter().map(|l| fs::File::open(format!("/proc/{l}/ns/net"))).collect();
    std::thread::spawn(move || {
        namespaces
            .into_iter()
            .map(|ns| {
                nix::sched::setns(&ns?, nix::sched::CloneFlags::CLONE_NEWNET)?;
                interface_addresses()
            })
            .collect()
    })
    .join()
    .unwrap_or_else(|_| {
        leaders.iter().map(|_| Err(std::io::Error::other("address lookup thread panicked"))).collect()
    })
}

/// The calling thread's network namespace's addresses, loopback left out.
fn interface_addresses() -> std::io::Result<Addresses> {
    let mut out = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs()? {
        let Some(addr) = ifa.address else { continue };
        if let Some(v4) = addr.as_sockaddr_in() {
            let ip = v4.ip();
            if !ip.is_loopback() {
                out.push((libc::AF_INET, ip.octets().to_vec()));
            }
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            let ip = v6.ip();
            if !ip.is_loopback() {
                out.push((libc::AF_INET6, ip.octets().to_vec()));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_scope() {
        let dir = PathBuf::from("/sys/fs/cgroup/mctl/web/payload");
        assert_eq!(Scope::decide(Some(dir.clone()), true), Scope::Cgroup(dir.clone()));
        assert_eq!(Scope::decide(Some(dir.clone()), false), Scope::Cgroup(dir));
        assert_eq!(Scope::decide(None, true), Scope::PidNamespace);
        assert_eq!(Scope::decide(None, false), Scope::Leader);
    }
}
