//! Machine networking: private namespaces, veth pairs, bridges and zones, addresses without
//! networkd or DHCP, outbound NAT and port forwards, and the cleanup of all of it.
//!
//! # Shape
//! - [`spec`]: [`NetworkSpec`] and parsing (`--port`), pure checks, link names, MAC addresses;
//! - [`addr`]: allocation from the pool; [`state`]: state files (also the leases) and the lock;
//! - [`link`]: rtnetlink (links, addresses, routes), sysctls, [`loopback_up`];
//! - [`nat`]: the nftables table `ip mctl`;
//! - here: [`setup`], [`MachineNetwork::teardown`], [`cleanup_stale`].
//!
//! # Decisions
//! - Names: host side `ve-NAME` (veth) or `vb-NAME` (bridge, zone), zone bridge `vz-ZONE`,
//!   guest side `host0`. Names longer than IFNAMSIZ become prefix + first characters + `_` +
//!   8 hex digits of a hash; machine and zone names have no `_`, so a shortened name never
//!   equals a plain one, and setup refuses a name another live machine holds.
//! - MACs: locally administered unicast, from a stable hash (FNV-1a) of the machine name and
//!   the end, so a machine keeps its MACs across restarts and mctl versions.
//! - Addresses (see [`addr`]): pool 10.213.0.0/16 by default; veth: a /30 per machine from
//!   the bottom (host side .1, guest .2, default route via .1); zone: a /24 from the top, the
//!   bridge .1 (gateway), machines .2 and up; a user's bridge with an IPv4 address: guests in
//!   its subnet with the bridge's address as gateway; without one: a /24 from the pool and no
//!   default route. `--address`/`--gateway` override; an address outside the pool (or the
//!   bridge's subnet) or already leased is an error. Everything is set before init starts; a
//!   network manager in the guest can still replace it. IPv6 link-local comes from the
//!   kernel once the links are up (both ends are created up).
//! - NAT (see [`nat`]): one table `ip mctl` with fixed rules and per-machine set elements,
//!   created by the first user, deleted by the last; `net.ipv4.ip_forward=1` is set in the
//!   launcher's own namespace (per-namespace sysctl) and left on, as networkd does. Port
//!   forwards also work from the host's localhost: DNAT in `output` too, `route_localnet` on
//!   the host-side link the guest is reached through, and masquerading of 127.0.0.0/8 sources
//!   towards machines.
//! - State (see [`state`]): `STATE_DIR/machines/NAME.json` records what was made, written
//!   before anything is created, so a killed launcher's leftovers are found by
//!   [`cleanup_stale`] (its pid and start time no longer match a process).
//! - The machine's namespace is held (an fd of `/proc/PID/ns/net`) from setup to teardown, so
//!   teardown can still give `--network-interface` links back after PID 1 exited.
//! - The veth pair of a plain veth machine whose PID 1 has exited (and was reaped) is left to
//!   the kernel: closing the namespace handle lets the namespace die, and the kernel removes
//!   the pair with it (as with nspawn), sparing the launcher the RCU grace periods an explicit
//!   deletion waits for. Until the pair is gone its state stays (`dismantling`), holding the
//!   subnet, so nothing can be given a lingering address. A short-lived child renames the pair
//!   to `mctl-` and ten random hex digits (the rename waits for an RCU grace period, off the
//!   launcher's path), so the next setup of the same machine (a reboot, or a run right after)
//!   finds the link name free and files the retired pair's lease under its new name; on a
//!   kernel that cannot rename a link that is up, that setup waits for the pair (deleting it
//!   after 1 s if something else keeps the namespace alive). Sweeps ([`cleanup_stale`]) forget
//!   a dismantling pair once gone and never delete one. Bridge and zone ports, and any pair
//!   whose PID 1 still runs, are deleted explicitly; mctl only ever deletes or renames a veth
//!   with the machine's own name (or retired name) and MAC.
//!
//! # Wiring into the launcher (the order matters)
//! 1. Before forking the outer child: `spec.validate()` (cheap, pure). Right after forking it,
//!    while it builds the filesystem: [`begin`]`(&spec, name)`, whose thread sweeps dead
//!    launchers' leftovers, plans names and addresses, writes the state and adds the NAT
//!    entries (2-4 ms that then overlap with the child's work).
//! 2. Outer child, right after `unshare(CLONE_NEWNS)` and before any mount (sysfs shows the
//!    network namespace of whoever mounts it): if [`NetworkSpec::needs_netns`],
//!    `unshare(CLONE_NEWNET)`, or for [`NetworkMode::NamespacePath`] open the path and
//!    `setns(fd, CLONE_NEWNET)` (before `pivot_root`: it is a host path); then
//!    [`loopback_up`] (idempotent). `/sys` is then mounted as now and shows only the machine's
//!    links. With a namespace of its own the machine may own its network sysctls: as nspawn
//!    does, bind `/proc/sys/net` read-write over the read-only `/proc/sys`, and keep
//!    CAP_NET_ADMIN in the bounding set (nspawn adds it with a private network) so a network
//!    manager in the guest can take over; with the host's network keep both as now.
//! 3. Parent, on `InnerPid(pid)` and before `Go`: `let net = pending.finish(pid)?` (links,
//!    addresses, routes; an error stops the launch: the machine must not start
//!    half-connected); register with `netif = net.host_ifindices()`. A launch that fails
//!    before drops the pending network, which undoes what its first half made.
//! 4. After PID 1 has exited and was reaped (`waitpid`), and before forking a reboot's next
//!    run: `net.teardown()` (reaped first so the pair is left to the kernel: see above; forking
//!    first would let the new outer child inherit the namespace handle). Dropping it does the
//!    same; the outer child must leave with `exit_now` so it never drops a copy.
//!
//! # Cost (bench/network.py and bench/launch.py measure it)
//! Setup is a handful of netlink round trips plus one nf_tables batch on a thread of its own,
//! whose socket is kept until the machine's end, when it removes the entries: closing it at
//! once would wait for the destroy work of the batch (a grace period, 1 to 2 ms in a launch).
//! Teardown is bound by the kernel's RCU grace periods, which the launcher does not wait for:
//! the veth pair goes with the namespace (above), and the close of the nftables socket (which
//! flushes nf_tables' destroy work after every change) is left to a short-lived child
//! ([`hold_and_exit_child`](crate::sys::linux::hold_and_exit_child)). That child waits out a grace
//! period before the close: the flush holds the host's nftables commit mutex, which a link
//! rename or removal takes under the RTNL lock, so an early close stalled every link change
//! and network namespace creation on the host (the next launch's among them) for 3-8 ms.
//!
//! [`begin`] and teardown run their tokio work on a thread of their own
//! ([`spawn_on_thread`](crate::runtime::spawn_on_thread)), joined by [`PendingNetwork::finish`]
//! and by the teardown's wait, so the parent is single-threaded again when they return.

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;

pub mod addr;
pub mod link;
pub mod nat;
mod plan;
mod setup;
pub mod spec;
pub mod state;
mod teardown;

pub use link::loopback_up;
pub use spec::{NetworkMode, NetworkSpec, PortForward, Proto, parse_port};

use crate::runtime::Background;
use addr::AddrError;
use link::{LinkError, Rt};
use nat::NatError;
use setup::plan_async;
use spec::SpecError;
use state::{MachineState, StateDir, StateError};
use teardown::{has_stale, sweep, undo};

/// Why a machine's network could not be set up (or fully torn down).
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The spec is inconsistent.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// An address problem.
    #[error(transparent)]
    Addr(#[from] AddrError),
    /// A link, address, route or sysctl step.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// An nftables step.
    #[error(transparent)]
    Nat(#[from] NatError),
    /// A state file step.
    #[error(transparent)]
    State(#[from] StateError),
    /// The machine name is not valid.
    #[error("invalid machine name '{0}': {1}")]
    Name(String, crate::names::NameError),
    /// A host port another machine forwards.
    #[error("host port {proto}:{port} is already forwarded to machine {owner}")]
    PortTaken {
        /// Protocol of the clashing forward (`tcp` or `udp`).
        proto: Proto,
        /// The host port, already in another live machine's forwards.
        port: u16,
        /// The machine holding it.
        owner: String,
    },
    /// The machine already has a network (a launcher for the same name is running).
    #[error("machine {machine} already has a network, set up by launcher pid {pid}")]
    Busy {
        /// Machine name whose network state another live launcher still holds.
        machine: String,
        /// The launcher holding it.
        pid: i32,
    },
    /// A generated link name another machine holds.
    #[error("link name {link} for {what} is already used by {owner}")]
    LinkNameTaken {
        /// The link name.
        link: String,
        /// Whose link it was to be.
        what: String,
        /// Who holds it.
        owner: String,
    },
    /// Forwards into a bridge the host has no address on cannot be routed.
    #[error("port forwards on bridge {0} need an IPv4 address on the bridge")]
    PortsNeedBridgeAddress(String),
    /// The machine's namespace cannot be opened.
    #[error("cannot open the network namespace of pid {pid}: {source}")]
    Netns {
        /// Machine PID 1.
        pid: i32,
        /// The error opening `/proc/PID/ns/net` (or the launcher's own namespace file).
        #[source]
        source: io::Error,
    },
    /// PID 1 is not in a namespace of its own: configuring "the machine" would configure the
    /// launcher's own network.
    #[error("pid {0} shares the launcher's network namespace: refusing to configure it as a machine's")]
    SharedNetns(i32),
    /// The worker thread died.
    #[error("the network {0} thread failed")]
    Thread(&'static str),
}

/// A machine's network as set up; undone by [`MachineNetwork::teardown`] or on drop.
#[derive(Debug)]
pub struct MachineNetwork {
    state_dir: PathBuf,
    /// `None` when there is nothing to undo (host network, bare private namespace, joined
    /// namespace) or after teardown.
    state: Option<MachineState>,
    /// The machine's namespace, held until teardown (see the module docs).
    guest_ns: Option<File>,
    /// The launcher's namespace, where moved links go back to.
    host_ns: Option<File>,
    /// The nf_tables socket that added the machine's NAT entries, which removes them (see
    /// [`nat::add`]).
    nat_sock: Option<std::os::fd::OwnedFd>,
    /// The thread that set the network up, when [`begin`] did: it waits to undo it, with its
    /// runtime and netlink connection at hand.
    worker: Option<Worker>,
    netns_path: Option<PathBuf>,
}

impl MachineNetwork {
    fn empty(state_dir: &Path) -> Self {
        MachineNetwork {
            state_dir: state_dir.to_owned(),
            state: None,
            guest_ns: None,
            host_ns: None,
            netns_path: None,
            nat_sock: None,
            worker: None,
        }
    }

    /// Host-side interface indices, for registration (`NetworkInterfaces`).
    pub fn host_ifindices(&self) -> Vec<i32> {
        // The kernel's ifindex is a positive int; one that is not (from a bad state file) is left out.
        self.state.iter().filter_map(|s| s.host_ifindex).filter_map(|i| i32::try_from(i).ok()).collect()
    }

    /// The guest addresses configured by setup (IPv4; link-local IPv6 is the kernel's).
    pub fn guest_addresses(&self) -> Vec<IpAddr> {
        self.state.iter().filter_map(|s| s.guest_addr).map(|a| IpAddr::V4(a.addr())).collect()
    }

    /// The guest address with its prefix, if any.
    pub fn guest_network(&self) -> Option<Ipv4Net> {
        self.state.as_ref().and_then(|s| s.guest_addr)
    }

    /// The guest's default gateway, if any.
    pub fn gateway(&self) -> Option<Ipv4Addr> {
        self.state.as_ref().and_then(|s| s.gateway)
    }

    /// The host side of the veth pair (`ve-NAME`/`vb-NAME`), if any.
    pub fn host_link(&self) -> Option<&str> {
        self.state.as_ref().and_then(|s| s.host_link.as_deref())
    }

    /// The namespace the machine joins, for [`NetworkMode::NamespacePath`].
    pub fn netns_path(&self) -> Option<&Path> {
        self.netns_path.as_deref()
    }

    /// Undoes everything setup made, best effort; problems are logged. Idempotent.
    pub fn teardown(mut self) {
        for e in self.teardown_report() {
            tracing::warn!("{e}");
        }
    }

    /// [`teardown`](Self::teardown) once PID 1 has exited and was reaped: the veth pair is left
    /// to die with the machine's namespace (as with nspawn), sparing the launcher the RCU grace
    /// period an explicit deletion waits for; its state stays `dismantling` (holding the link
    /// name and subnet) until the kernel has removed it, so nothing can reuse them early.
    pub fn teardown_after_exit(self) {
        self.start_teardown_after_exit().wait();
    }

    /// [`teardown_after_exit`](Self::teardown_after_exit) on a thread of its own, so that the
    /// launcher removes the machine's cgroups meanwhile.
    pub fn start_teardown_after_exit(mut self) -> Teardown {
        Teardown(self.start_teardown(true))
    }

    /// Like [`teardown`](Self::teardown), but returns the problems instead of logging them.
    pub fn teardown_report(&mut self) -> Vec<NetworkError> {
        Teardown(self.start_teardown(false)).report()
    }

    fn start_teardown(&mut self, pid1_reaped: bool) -> Option<Background<Vec<NetworkError>>> {
        let worker = self.worker.take();
        let Some(st) = self.state.take() else {
            self.guest_ns = None;
            // Told nothing, the worker ends.
            return worker.map(|w| w.thread);
        };
        let order = TeardownOrder {
            dir: self.state_dir.clone(),
            st,
            guest_ns: self.guest_ns.take(),
            host_ns: self.host_ns.take(),
            nat_sock: self.nat_sock.take(),
            leave_pair: pid1_reaped,
        };
        let order = match worker {
            Some(w) => match w.order.send(order) {
                Ok(()) => return Some(w.thread),
                // The worker is gone (it panicked): a thread of its own does it.
                Err(order) => order,
            },
            None => order,
        };
        Some(crate::runtime::spawn_on_thread(move || async move {
            match Rt::connect() {
                Ok(rt) => order.run(&rt).await,
                Err(e) => vec![e.into()],
            }
        }))
    }
}

/// The thread that set a machine's network up and undoes it when told.
#[derive(Debug)]
struct Worker {
    order: tokio::sync::oneshot::Sender<TeardownOrder>,
    thread: Background<Vec<NetworkError>>,
}

/// What undoing a machine's network needs ([`MachineNetwork`]'s parts).
#[derive(Debug)]
struct TeardownOrder {
    dir: PathBuf,
    st: MachineState,
    guest_ns: Option<File>,
    host_ns: Option<File>,
    nat_sock: Option<std::os::fd::OwnedFd>,
    leave_pair: bool,
}

impl TeardownOrder {
    async fn run(self, rt: &Rt) -> Vec<NetworkError> {
        match StateDir::lock(&self.dir) {
            Ok(sd) => {
                let (guest, host) = (self.guest_ns.as_ref(), self.host_ns.as_ref());
                undo(rt, &sd, &self.st, guest, host, self.leave_pair, self.nat_sock).await
            }
            Err(e) => vec![e.into()],
        }
    }
}

/// A machine's network being undone on a thread of its own.
#[derive(Debug)]
#[must_use = "the teardown is waited for with wait"]
pub struct Teardown(Option<Background<Vec<NetworkError>>>);

impl Teardown {
    /// Waits for the teardown; problems are logged.
    pub fn wait(self) {
        for e in self.report() {
            tracing::warn!("{e}");
        }
    }

    fn report(self) -> Vec<NetworkError> {
        match self.0 {
            None => Vec::new(),
            Some(work) => work.join().unwrap_or_else(|| vec![NetworkError::Thread("teardown")]),
        }
    }
}

impl Drop for MachineNetwork {
    fn drop(&mut self) {
        for e in self.teardown_report() {
            tracing::warn!("{e}");
        }
    }
}

/// A machine's network begun before its namespace exists ([`begin`]): completed by
/// [`finish`](Self::finish) once PID 1 exists, undone if dropped instead.
#[derive(Debug)]
#[must_use = "a pending network is completed with finish (dropping it undoes it)"]
pub struct PendingNetwork {
    spec: NetworkSpec,
    /// The network's thread, which gets PID 1 (or `None`: undo) once planned and answers with
    /// the finished network; `None` when there are no links to make.
    work: Option<(PidSender, FinishedReceiver, Background<Vec<NetworkError>>)>,
}

type PidSender = tokio::sync::oneshot::Sender<Option<i32>>;
/// The finished network, and where to send the order to undo it.
type Finished = Result<(MachineNetwork, tokio::sync::oneshot::Sender<TeardownOrder>), NetworkError>;
type FinishedReceiver = tokio::sync::oneshot::Receiver<Finished>;

/// Begins machine `machine`'s network before its namespace exists, ideally right after forking
/// the outer child (so it overlaps with the child's filesystem work): checks the spec and the
/// name, then, on a thread of its own, removes dead launchers' leftovers, plans names and
/// addresses (the state is written and locked from here on) and adds the NAT entries. The
/// same thread and netlink connection make the links once PID 1 is known
/// ([`PendingNetwork::finish`]), which also reports the first half's problems, and stay to
/// undo the network at the machine's end (sparing that a thread, a runtime and a connection).
pub fn begin(spec: &NetworkSpec, machine: &str) -> Result<PendingNetwork, NetworkError> {
    spec.validate()?;
    crate::names::validate(machine).map_err(|e| NetworkError::Name(machine.to_owned(), e))?;
    let makes_links = match spec.effective_mode() {
        NetworkMode::Host | NetworkMode::NamespacePath(_) => false,
        NetworkMode::Private => spec.has_host_links(),
        _ => true,
    };
    let work = if makes_links {
        let (spec, machine) = (spec.clone(), machine.to_owned());
        let (pid_tx, pid_rx) = tokio::sync::oneshot::channel();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Finished>();
        let thread = crate::runtime::spawn_on_thread(move || async move {
            let planned = match plan_async(&spec, &machine).await {
                Ok(p) => p,
                Err(e) => {
                    let _ = done_tx.send(Err(e));
                    return Vec::new();
                }
            };
            let Some(pid) = pid_rx.await.ok().flatten() else {
                for e in planned.abandon().await {
                    tracing::warn!("{e}");
                }
                return Vec::new();
            };
            let rt = planned.rt();
            let net = match planned.finish(&spec, pid).await {
                Ok(net) => net,
                Err(e) => {
                    let _ = done_tx.send(Err(e));
                    return Vec::new();
                }
            };
            let (order_tx, order_rx) = tokio::sync::oneshot::channel();
            if let Err(Ok((unsent, _))) = done_tx.send(Ok((net, order_tx))) {
                // Nobody waits for it (the launch was given up): undone here and now.
                drop(unsent);
                return Vec::new();
            }
            match order_rx.await {
                Ok(order) => order.run(&rt).await,
                Err(_) => Vec::new(),
            }
        });
        Some((pid_tx, done_rx, thread))
    } else {
        if spec.needs_netns() {
            cleanup_stale(&spec.state_dir);
        }
        None
    };
    Ok(PendingNetwork { spec: spec.clone(), work })
}

impl PendingNetwork {
    /// Completes the network once `pid`, the machine's PID 1 (host pid), exists in its own
    /// network namespace: links, addresses, routes. Runs in the launcher's parent before the
    /// payload starts. On error nothing is left behind.
    pub fn finish(mut self, pid: i32) -> Result<MachineNetwork, NetworkError> {
        let Some((pid_tx, done_rx, thread)) = self.work.take() else {
            let mut net = MachineNetwork::empty(&self.spec.state_dir);
            if let NetworkMode::NamespacePath(p) = self.spec.effective_mode() {
                net.netns_path = Some(p);
            }
            return Ok(net);
        };
        // Refused when the first half failed: its error is on its way.
        let _ = pid_tx.send(Some(pid));
        match done_rx.blocking_recv() {
            Ok(Ok((mut net, order))) => {
                net.worker = Some(Worker { order, thread });
                Ok(net)
            }
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(NetworkError::Thread("setup"))
            }
        }
    }
}

impl Drop for PendingNetwork {
    fn drop(&mut self) {
        if let Some((pid_tx, _, thread)) = self.work.take() {
            // The first half's own error, if any, is moot: the launch failed before.
            let _ = pid_tx.send(None);
            let _ = thread.join();
        }
    }
}

/// Sets up machine `machine`'s network at once ([`begin`], then [`PendingNetwork::finish`]);
/// `pid` is its PID 1 (host pid), whose network namespace exists already. On error nothing is
/// left behind.
pub fn setup(spec: &NetworkSpec, machine: &str, pid: i32) -> Result<MachineNetwork, NetworkError> {
    begin(spec, machine)?.finish(pid)
}

/// Removes what launchers that died left behind (links, zone bridges, NAT entries, leases).
/// Cheap when there is nothing to do: no netlink connection is made then.
pub fn cleanup_stale(state_dir: &Path) {
    for e in cleanup_stale_report(state_dir) {
        tracing::warn!("{e}");
    }
}

/// Like [`cleanup_stale`], returning the problems.
pub fn cleanup_stale_report(state_dir: &Path) -> Vec<NetworkError> {
    if !state_dir.join("machines").is_dir() {
        return Vec::new();
    }
    let sd = match StateDir::lock(state_dir) {
        Ok(sd) => sd,
        Err(e) => return vec![e.into()],
    };
    if !has_stale(&sd) {
        return Vec::new();
    }
    drop(sd);
    let dir = state_dir.to_owned();
    crate::runtime::block_on_thread(move || async move {
        let sd = match StateDir::lock(&dir) {
            Ok(sd) => sd,
            Err(e) => return vec![e.into()],
        };
        match Rt::connect() {
            Ok(rt) => sweep(&rt, &sd).await,
            Err(e) => vec![e.into()],
        }
    })
    .unwrap_or_else(|| vec![NetworkError::Thread("cleanup")])
}
