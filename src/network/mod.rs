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
//!   subnet and link name, so nothing can be given a lingering address; the next setup of the
//!   same machine (a reboot) waits for the pair (deleting it after 1 s if something else keeps
//!   the namespace alive), and [`cleanup_stale`] forgets it once gone. Bridge and zone ports,
//!   and any pair whose PID 1 still runs, are deleted explicitly; mctl only ever deletes a
//!   veth with the machine's own name and MAC.
//!
//! # Wiring into the launcher (the order matters)
//! 1. Before forking the outer child: `spec.validate()` (cheap, pure). Right after forking it,
//!    while it builds the filesystem: [`prepare`]`(&spec, name)` (sweeps dead launchers'
//!    leftovers, loads libnftables; about 1-2 ms that then overlap with the child's work).
//! 2. Outer child, right after `unshare(CLONE_NEWNS)` and before any mount (sysfs shows the
//!    network namespace of whoever mounts it): if [`NetworkSpec::needs_netns`],
//!    `unshare(CLONE_NEWNET)`, or for [`NetworkMode::NamespacePath`] open the path and
//!    `setns(fd, CLONE_NEWNET)` (before `pivot_root`: it is a host path); then
//!    [`loopback_up`] (idempotent). `/sys` is then mounted as now and shows only the machine's
//!    links. With a namespace of its own the machine may own its network sysctls: as nspawn
//!    does, bind `/proc/sys/net` read-write over the read-only `/proc/sys`, and keep
//!    CAP_NET_ADMIN in the bounding set (nspawn adds it with a private network) so a network
//!    manager in the guest can take over; with the host's network keep both as now.
//! 3. Parent, on `InnerPid(pid)` and before `Go`: `let net = setup(&spec, name, pid)?` (an error
//!    stops the launch: the machine must not start half-connected); register with
//!    `netif = net.host_ifindices()`.
//! 4. After PID 1 has exited and was reaped (`waitpid`), and before forking a reboot's next
//!    run: `net.teardown()` (reaped first so the pair is left to the kernel: see above; forking
//!    first would let the new outer child inherit the namespace handle). Dropping it does the
//!    same; the outer child must leave with `exit_now` so it never drops a copy.
//!
//! # Cost (bench/network.py and bench/launch.py measure it)
//! Setup is a handful of netlink round trips plus one libnftables batch on a thread of its own.
//! Teardown is bound by the kernel's RCU grace periods, which the launcher does not wait for:
//! the veth pair goes with the namespace (above), and the close of the nftables socket that
//! deleted the table (which flushes nf_tables' destroy work) is left to a short-lived child
//! ([`nft_run_closing`](crate::sys::linux::nft_run_closing)).
//!
//! [`setup`] and teardown run their tokio work through
//! [`block_on_thread`](crate::bus::client::block_on_thread) (one call each), so the parent is
//! single-threaded again when they return.

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;

pub mod addr;
pub mod link;
pub mod nat;
pub mod spec;
pub mod state;

pub use link::loopback_up;
pub use spec::{NetworkMode, NetworkSpec, PortForward, Proto, parse_port};

use addr::{AddrError, Lease};
use link::{LinkError, Rt, set_sysctl};
use nat::{NatEntries, NatError};
use spec::{GUEST_IFNAME, SpecError, is_host_of, link_name, mac_address};
use state::{MachineState, MovedLink, Segment, StateDir, StateError, SysctlChange};

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
        /// Protocol.
        proto: Proto,
        /// Port.
        port: u16,
        /// The machine holding it.
        owner: String,
    },
    /// The machine already has a network (a launcher for the same name is running).
    #[error("machine {machine} already has a network, set up by launcher pid {pid}")]
    Busy {
        /// Machine.
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
        /// Why.
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
        }
    }

    /// Host-side interface indices, for registration (`NetworkInterfaces`).
    pub fn host_ifindices(&self) -> Vec<i32> {
        self.state.iter().filter_map(|s| s.host_ifindex).map(|i| i as i32).collect()
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
    pub fn teardown_after_exit(mut self) {
        for e in self.teardown_inner(true) {
            tracing::warn!("{e}");
        }
    }

    /// Like [`teardown`](Self::teardown), but returns the problems instead of logging them.
    pub fn teardown_report(&mut self) -> Vec<NetworkError> {
        self.teardown_inner(false)
    }

    fn teardown_inner(&mut self, pid1_reaped: bool) -> Vec<NetworkError> {
        let Some(st) = self.state.take() else {
            self.guest_ns = None;
            return Vec::new();
        };
        let dir = self.state_dir.clone();
        let guest_ns = self.guest_ns.take();
        let host_ns = self.host_ns.take();
        let leave_pair = pid1_reaped;
        crate::bus::client::block_on_thread(move || async move {
            let sd = match StateDir::lock(&dir) {
                Ok(sd) => sd,
                Err(e) => return vec![e.into()],
            };
            match Rt::connect() {
                Ok(rt) => undo(&rt, &sd, &st, guest_ns.as_ref(), host_ns.as_ref(), leave_pair).await,
                Err(e) => vec![e.into()],
            }
        })
        .unwrap_or_else(|| vec![NetworkError::Thread("teardown")])
    }
}

impl Drop for MachineNetwork {
    fn drop(&mut self) {
        for e in self.teardown_report() {
            tracing::warn!("{e}");
        }
    }
}

/// What the launcher does before the machine's namespace exists, ideally right after forking
/// the outer child (so it overlaps with the child's filesystem work): checks the spec and the
/// name, removes dead launchers' leftovers, and loads libnftables when NAT will be needed, so
/// that [`setup`] does not pay for it. Optional: [`setup`] checks and sweeps by itself.
pub fn prepare(spec: &NetworkSpec, machine: &str) -> Result<(), NetworkError> {
    spec.validate()?;
    crate::names::validate(machine).map_err(|e| NetworkError::Name(machine.to_owned(), e))?;
    if spec.has_veth() {
        nat::preload(machine)?;
    }
    if spec.needs_netns() {
        cleanup_stale(&spec.state_dir);
    }
    Ok(())
}

/// Sets up machine `machine`'s network; `pid` is its PID 1 (host pid), whose network
/// namespace exists already. Runs in the launcher's parent before the payload starts. On
/// error nothing is left behind.
pub fn setup(spec: &NetworkSpec, machine: &str, pid: i32) -> Result<MachineNetwork, NetworkError> {
    spec.validate()?;
    crate::names::validate(machine).map_err(|e| NetworkError::Name(machine.to_owned(), e))?;
    let mut net = MachineNetwork::empty(&spec.state_dir);
    match spec.effective_mode() {
        NetworkMode::Host => return Ok(net),
        NetworkMode::NamespacePath(p) => {
            net.netns_path = Some(p);
            return Ok(net);
        }
        NetworkMode::Private if spec.interfaces.is_empty() => return Ok(net),
        _ => {}
    }
    let spec = spec.clone();
    let machine = machine.to_owned();
    crate::bus::client::block_on_thread(move || async move { setup_async(&spec, &machine, pid).await })
        .unwrap_or(Err(NetworkError::Thread("setup")))
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
    crate::bus::client::block_on_thread(move || async move {
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

fn has_stale(sd: &StateDir) -> bool {
    let machines = sd.machines();
    machines.iter().any(|m| !m.owner.alive() || m.dismantling)
        || sd.segments().iter().any(|s| !machines.iter().any(|m| m.segment.as_ref() == Some(&s.key)))
}

/// Undoes the states of dead owners and drops segments nobody uses; the lock is held.
async fn sweep(rt: &Rt, sd: &StateDir) -> Vec<NetworkError> {
    let mut errors = Vec::new();
    // Pairs left to the kernel (the normal end of a veth machine): forget them once gone.
    for st in sd.machines().into_iter().filter(|m| m.dismantling) {
        match our_pair(rt, &st).await {
            Ok(None) => sd.remove_machine(&st.machine),
            Ok(Some(_)) => {}
            Err(e) => errors.push(e.into()),
        }
    }
    for st in sd.machines().into_iter().filter(|m| !m.owner.alive()) {
        tracing::info!(
            "removing the network leftovers of machine {} (launcher pid {} is gone)",
            st.machine,
            st.owner.pid
        );
        // If the machine outlived its launcher, its namespace is still reachable.
        let guest =
            st.leader.filter(|l| l.alive()).and_then(|l| File::open(format!("/proc/{}/ns/net", l.pid)).ok());
        let host = File::open("/proc/thread-self/ns/net").ok();
        errors.extend(undo(rt, sd, &st, guest.as_ref(), host.as_ref(), false).await);
    }
    let machines = sd.machines();
    for seg in sd.segments() {
        if !machines.iter().any(|m| m.segment.as_ref() == Some(&seg.key)) {
            errors.extend(drop_segment(rt, sd, &seg).await);
        }
    }
    errors
}

fn segment_owner(key: &str) -> String {
    key.replacen('-', " ", 1)
}

fn leases(live: &[MachineState], segments: &[Segment]) -> Vec<Lease> {
    let machines = live
        .iter()
        .filter_map(|m| m.subnet.map(|net| Lease { net, owner: format!("machine {}", m.machine) }));
    let segs = segments.iter().map(|s| Lease { net: s.subnet, owner: segment_owner(&s.key) });
    machines.chain(segs).collect()
}

/// What setup decided before touching the kernel.
struct Plan {
    /// Bridge to create (zone) with its address.
    zone_bridge: Option<(String, Option<Ipv4Net>)>,
    /// Index of the bridge to enslave the host side to (user's bridge).
    master: Option<u32>,
    /// Segment file to write before creating anything.
    new_segment: Option<Segment>,
    /// Where route_localnet goes (link name), if ports.
    localnet_link: Option<String>,
}

async fn setup_async(spec: &NetworkSpec, machine: &str, pid: i32) -> Result<MachineNetwork, NetworkError> {
    let open = |p: String| File::open(p).map_err(|source| NetworkError::Netns { pid, source });
    let guest_ns = open(format!("/proc/{pid}/ns/net"))?;
    // This thread was spawned by the launcher's thread: it is in the launcher's namespace.
    let host_ns = open("/proc/thread-self/ns/net".to_owned())?;
    let id = |f: &File| f.metadata().map(|m| (m.dev(), m.ino())).ok();
    if id(&guest_ns) == id(&host_ns) {
        return Err(NetworkError::SharedNetns(pid));
    }
    let sd = StateDir::lock(&spec.state_dir)?;
    let rt = Rt::connect()?;
    if has_stale(&sd) {
        for e in sweep(&rt, &sd).await {
            tracing::warn!("{e}");
        }
    }
    if let Some(s) = sd.machine(machine) {
        if !s.dismantling {
            return Err(NetworkError::Busy { machine: machine.to_owned(), pid: s.owner.pid });
        }
        // The previous run's pair is on its way out with its namespace (a reboot): wait for
        // it, or remove it if something keeps that namespace alive.
        for e in settle(&rt, &sd, &s, std::time::Duration::from_secs(1)).await {
            tracing::warn!("{e}");
        }
    }
    let live = sd.machines();
    let segments = sd.segments();
    for p in &spec.ports {
        if let Some(o) =
            live.iter().find(|m| m.ports.iter().any(|q| q.proto == p.proto && q.host_port == p.host_port))
        {
            return Err(NetworkError::PortTaken {
                proto: p.proto,
                port: p.host_port,
                owner: o.machine.clone(),
            });
        }
    }
    let mut st = MachineState::new(machine);
    st.leader = state::Owner::of(pid);
    for ifname in &spec.interfaces {
        let l = rt.link(ifname).await?.ok_or_else(|| LinkError::NoInterface(ifname.clone()))?;
        st.moved.push(MovedLink { name: ifname.clone(), index: l.index, was_up: l.up });
    }
    let plan = plan(&rt, spec, machine, &mut st, &live, &segments).await?;
    if let Some(seg) = &plan.new_segment {
        sd.write_segment(seg)?;
    }
    if let Err(e) = sd.write_machine(&st) {
        if let Some(seg) = &plan.new_segment {
            sd.remove_segment(&seg.key);
        }
        return Err(e.into());
    }
    let table_exists = live.iter().any(|m| m.nat);
    let done = execute(&rt, spec, &mut st, &plan, &guest_ns, &host_ns, table_exists).await;
    match done.and_then(|()| sd.write_machine(&st).map_err(NetworkError::from)) {
        Ok(()) => Ok(MachineNetwork {
            state_dir: spec.state_dir.clone(),
            state: Some(st),
            guest_ns: Some(guest_ns),
            host_ns: Some(host_ns),
            netns_path: None,
        }),
        Err(e) => {
            for u in undo(&rt, &sd, &st, Some(&guest_ns), Some(&host_ns), false).await {
                tracing::warn!("{u}");
            }
            Err(e)
        }
    }
}

/// Decides names and addresses; fills `st`. Reads the kernel (bridges) but changes nothing.
async fn plan(
    rt: &Rt,
    spec: &NetworkSpec,
    machine: &str,
    st: &mut MachineState,
    live: &[MachineState],
    segments: &[Segment],
) -> Result<Plan, NetworkError> {
    let mut plan = Plan { zone_bridge: None, master: None, new_segment: None, localnet_link: None };
    let host_prefix = match &spec.mode {
        NetworkMode::Veth => "ve-",
        NetworkMode::Bridge(_) | NetworkMode::Zone(_) => "vb-",
        _ => return Ok(plan),
    };
    let host_link = link_name(host_prefix, machine);
    if let Some(o) = live.iter().find(|m| m.host_link.as_deref() == Some(&host_link)) {
        return Err(NetworkError::LinkNameTaken {
            link: host_link,
            what: format!("machine {machine}"),
            owner: format!("machine {}", o.machine),
        });
    }
    st.host_link = Some(host_link.clone());
    let leases = leases(live, segments);
    match &spec.mode {
        NetworkMode::Veth => {
            let p = addr::point_to_point(spec.pool, &leases, spec.address, spec.gateway)?;
            st.subnet = Some(p.subnet);
            st.host_addr = Some(p.host);
            st.guest_addr = Some(p.guest);
            st.gateway = Some(p.host.addr());
            st.nat = true;
            plan.localnet_link = Some(host_link);
        }
        NetworkMode::Zone(zone) => {
            let key = format!("zone-{zone}");
            let bridge = link_name("vz-", zone);
            if let Some(o) = segments.iter().find(|s| s.bridge == bridge && s.key != key) {
                return Err(NetworkError::LinkNameTaken {
                    link: bridge,
                    what: format!("zone {zone}"),
                    owner: segment_owner(&o.key),
                });
            }
            let seg = match segments.iter().find(|s| s.key == key) {
                Some(s) => s.clone(),
                None => {
                    let (subnet, gateway) = match spec.address {
                        Some(a) => {
                            let subnet = a.trunc();
                            addr::check_subnet(spec.pool, a, &leases)?;
                            let gw = addr::segment_host(subnet, "", &[(a.addr(), String::new())], None)?;
                            (subnet, gw)
                        }
                        None => {
                            let subnet =
                                addr::allocate_subnet(spec.pool, addr::SEGMENT_PREFIX, &leases, true)?;
                            (subnet, addr::segment_host(subnet, "", &[], None)?)
                        }
                    };
                    let seg = Segment {
                        key,
                        bridge: bridge.clone(),
                        subnet,
                        gateway: Some(gateway),
                        owns_bridge: true,
                    };
                    plan.new_segment = Some(seg.clone());
                    seg
                }
            };
            let gw = seg.gateway.expect("zones have a gateway");
            let mut used = vec![(gw, format!("zone {zone}'s bridge {bridge}"))];
            used.extend(members(live, &seg.key));
            let guest = addr::segment_host(
                seg.subnet,
                &format!("zone {zone}"),
                &used,
                spec.address.map(|a| a.addr()),
            )?;
            st.guest_addr = Some(Ipv4Net::new(guest, seg.subnet.prefix_len()).expect("valid prefix"));
            st.gateway = Some(spec.gateway.unwrap_or(gw));
            st.segment = Some(seg.key.clone());
            st.bridge = Some(bridge.clone());
            st.nat = true;
            plan.zone_bridge =
                Some((bridge.clone(), Some(Ipv4Net::new(gw, seg.subnet.prefix_len()).expect("valid"))));
            plan.localnet_link = Some(bridge);
        }
        NetworkMode::Bridge(br) => {
            let l = rt.link(br).await?.ok_or_else(|| LinkError::NoBridge(br.clone()))?;
            if l.kind.as_deref() != Some("bridge") {
                return Err(LinkError::NotABridge {
                    name: br.clone(),
                    kind: l.kind.unwrap_or_else(|| "physical".into()),
                }
                .into());
            }
            plan.master = Some(l.index);
            st.bridge = Some(br.clone());
            let own = rt.ipv4_addresses(l.index, br).await?;
            let owner = format!("bridge {br}");
            if let Some(first) = own.first() {
                let subnet = first.trunc();
                let mut used: Vec<(Ipv4Addr, String)> =
                    own.iter().map(|a| (a.addr(), format!("bridge {br} itself"))).collect();
                used.extend(
                    live.iter()
                        .filter(|m| m.bridge.as_deref() == Some(br))
                        .filter_map(|m| m.guest_addr.map(|a| (a.addr(), format!("machine {}", m.machine)))),
                );
                let guest = addr::segment_host(subnet, &owner, &used, spec.address.map(|a| a.addr()))?;
                st.guest_addr = Some(Ipv4Net::new(guest, subnet.prefix_len()).expect("valid prefix"));
                let gw = spec.gateway.unwrap_or(first.addr());
                if !is_host_of(gw, subnet) {
                    return Err(SpecError::BadGateway { gateway: gw, address: subnet }.into());
                }
                st.gateway = Some(gw);
                st.nat = true;
                plan.localnet_link = Some(br.clone());
            } else {
                if !spec.ports.is_empty() {
                    return Err(NetworkError::PortsNeedBridgeAddress(br.clone()));
                }
                let key = format!("bridge-{br}");
                let seg = match segments.iter().find(|s| s.key == key) {
                    Some(s) => s.clone(),
                    None => {
                        let subnet = match spec.address {
                            Some(a) => {
                                addr::check_subnet(spec.pool, a, &leases)?;
                                a.trunc()
                            }
                            None => addr::allocate_subnet(spec.pool, addr::SEGMENT_PREFIX, &leases, true)?,
                        };
                        let seg =
                            Segment { key, bridge: br.clone(), subnet, gateway: None, owns_bridge: false };
                        plan.new_segment = Some(seg.clone());
                        seg
                    }
                };
                let used: Vec<_> = members(live, &seg.key).collect();
                let guest = addr::segment_host(seg.subnet, &owner, &used, spec.address.map(|a| a.addr()))?;
                st.guest_addr = Some(Ipv4Net::new(guest, seg.subnet.prefix_len()).expect("valid prefix"));
                st.gateway = spec.gateway;
                st.segment = Some(seg.key);
            }
        }
        _ => unreachable!("host_prefix returned early"),
    }
    st.ports = spec.ports.clone();
    if spec.ports.is_empty() {
        plan.localnet_link = None;
    }
    Ok(plan)
}

fn members<'a>(live: &'a [MachineState], key: &'a str) -> impl Iterator<Item = (Ipv4Addr, String)> + 'a {
    live.iter()
        .filter(move |m| m.segment.as_deref() == Some(key))
        .filter_map(|m| m.guest_addr.map(|a| (a.addr(), format!("machine {}", m.machine))))
}

/// Makes it so; `st` is updated with what the kernel assigned (indices, previous sysctls).
async fn execute(
    rt: &Rt,
    spec: &NetworkSpec,
    st: &mut MachineState,
    plan: &Plan,
    guest_ns: &File,
    host_ns: &File,
    table_exists: bool,
) -> Result<(), NetworkError> {
    // nftables runs on its own thread meanwhile: it does not depend on the links.
    let nat = st.guest_addr.filter(|_| st.nat).map(|g| {
        let entries = NatEntries { machine: st.machine.clone(), guest: g.addr(), ports: st.ports.clone() };
        std::thread::spawn(move || nat::add(&entries, table_exists))
    });
    let links = setup_links(rt, spec, st, plan, guest_ns, host_ns).await;
    let nat = match nat.map(|h| h.join()) {
        None => Ok(()),
        Some(Ok(r)) => r.map_err(NetworkError::from),
        Some(Err(_)) => Err(NetworkError::Thread("nftables")),
    };
    links?;
    nat
}

async fn setup_links(
    rt: &Rt,
    spec: &NetworkSpec,
    st: &mut MachineState,
    plan: &Plan,
    guest_ns: &File,
    host_ns: &File,
) -> Result<(), NetworkError> {
    let mut master = plan.master;
    if let Some((bridge, addr)) = &plan.zone_bridge {
        let index = match rt.link(bridge).await? {
            Some(l) if l.kind.as_deref() == Some("bridge") => l.index,
            Some(l) => {
                return Err(LinkError::NotABridge {
                    name: bridge.clone(),
                    kind: l.kind.unwrap_or_else(|| "physical".into()),
                }
                .into());
            }
            None => {
                rt.add_bridge(bridge).await?;
                rt.link(bridge).await?.ok_or_else(|| LinkError::NoBridge(bridge.clone()))?.index
            }
        };
        if let Some(a) = addr
            && !rt.ipv4_addresses(index, bridge).await?.contains(a)
        {
            rt.add_address(index, bridge, *a).await?;
        }
        master = Some(index);
    }
    if let Some(host) = st.host_link.clone() {
        let machine = st.machine.clone();
        rt.add_veth(
            &host,
            mac_address(&machine, "host"),
            GUEST_IFNAME,
            mac_address(&machine, "guest"),
            guest_ns,
            master,
        )
        .await?;
        let index = rt.link(&host).await?.ok_or_else(|| LinkError::NoInterface(host.clone()))?.index;
        st.host_ifindex = Some(index);
        if let Some(a) = st.host_addr {
            rt.add_address(index, &host, a).await?;
        }
    }
    if let Some(l) = &plan.localnet_link {
        let path = format!("/proc/sys/net/ipv4/conf/{l}/route_localnet");
        let previous = set_sysctl(&path, "1")?;
        // Only a user's bridge outlives the machine; mctl's own links take the value along.
        if let NetworkMode::Bridge(br) = &spec.mode {
            st.route_localnet = Some(SysctlChange { ifname: br.clone(), previous });
        }
    }
    if st.nat {
        set_sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
    }
    for m in &st.moved {
        rt.move_to(m.index, &m.name, guest_ns).await?;
    }
    let g = Rt::connect_in(guest_ns, host_ns, &format!("machine {}", st.machine))?;
    g.set_up(1, "lo", true).await?;
    if st.host_link.is_some() {
        let index =
            g.link(GUEST_IFNAME).await?.ok_or_else(|| LinkError::NoInterface(GUEST_IFNAME.into()))?.index;
        g.set_up(index, GUEST_IFNAME, true).await?;
        if let Some(a) = st.guest_addr {
            g.add_address(index, GUEST_IFNAME, a).await?;
        }
        if let Some(gw) = st.gateway {
            g.add_default_route(index, gw).await?;
        }
    }
    Ok(())
}

/// Undoes `st` (also a half-made one); the lock is held. `guest_ns` is `None` for a dead
/// launcher's machine that is gone too: its moved links went back to the kernel (physical
/// ones to the initial namespace) or were destroyed with the namespace.
async fn undo(
    rt: &Rt,
    sd: &StateDir,
    st: &MachineState,
    guest_ns: Option<&File>,
    host_ns: Option<&File>,
    leave_pair: bool,
) -> Vec<NetworkError> {
    let mut errors: Vec<NetworkError> = Vec::new();
    let others: Vec<MachineState> =
        sd.machines().into_iter().filter(|m| m.machine != st.machine && m.owner.alive()).collect();
    // Links go back first, while the machine's namespace is certainly alive.
    if !st.moved.is_empty() {
        match (guest_ns, host_ns) {
            (Some(g), Some(h)) => errors.extend(give_back(rt, st, g, h).await),
            _ => {
                for m in &st.moved {
                    if rt.link(&m.name).await.ok().flatten().is_none() {
                        errors.push(LinkError::InterfaceGone(m.name.clone()).into());
                    }
                }
            }
        }
    }
    // NAT entries and the veth pair are removed in parallel: both wait for an RCU grace
    // period in the kernel, and the waits overlap.
    let nat = st.guest_addr.filter(|_| st.nat).map(|g| {
        let entries = NatEntries { machine: st.machine.clone(), guest: g.addr(), ports: st.ports.clone() };
        let last = !others.iter().any(|m| m.nat);
        std::thread::spawn(move || nat::remove(&entries, last))
    });
    if let Some(host) = st.host_link.as_ref().filter(|_| !leave_pair) {
        match our_pair(rt, st).await {
            Ok(Some(_)) => {
                if let Err(e) = rt.delete(host).await {
                    errors.push(e.into());
                }
            }
            Ok(None) => {}
            Err(e) => errors.push(e.into()),
        }
    }
    match nat.map(|h| h.join()) {
        Some(Ok(Err(e))) => errors.push(e.into()),
        Some(Err(_)) => errors.push(NetworkError::Thread("nftables")),
        _ => {}
    }
    if let Some(key) = &st.segment
        && !others.iter().any(|m| m.segment.as_ref() == Some(key))
        && let Some(seg) = sd.segment(key)
    {
        errors.extend(drop_segment(rt, sd, &seg).await);
    }
    if let Some(ch) = &st.route_localnet {
        let still_used =
            others.iter().any(|m| m.route_localnet.as_ref().is_some_and(|o| o.ifname == ch.ifname));
        if !still_used {
            let path = format!("/proc/sys/net/ipv4/conf/{}/route_localnet", ch.ifname);
            if let Err(e) = set_sysctl(&path, &ch.previous)
                && Path::new(&path).exists()
            {
                errors.push(e.into());
            }
        }
    }
    if leave_pair && st.host_link.is_some() {
        // Keeps the subnet and the link name leased until the pair is gone.
        let left = MachineState {
            dismantling: true,
            nat: false,
            ports: Vec::new(),
            route_localnet: None,
            moved: Vec::new(),
            segment: None,
            ..st.clone()
        };
        if let Err(e) = sd.write_machine(&left) {
            errors.push(e.into());
        } else if let (Some(host), Ok(meta)) =
            (&st.host_link, std::fs::metadata(sd.machine_path(&st.machine)))
        {
            // Forgotten as soon as the kernel has removed the pair (a few ms after the
            // namespace's last user is gone), by a child that outlives us that long; else by
            // the next launch's sweep.
            crate::sys::linux::forget_when_link_gone(
                host,
                &sd.lock_path(),
                &sd.machine_path(&st.machine),
                meta.ino(),
                std::time::Duration::from_secs(2),
            );
        }
    } else {
        sd.remove_machine(&st.machine);
    }
    errors
}

/// The machine's veth pair, if it still exists: the host-side link with the machine's name,
/// kind veth and the machine's MAC. A link that merely has the name (setup failed because it
/// existed) is someone else's and is never touched.
async fn our_pair(rt: &Rt, st: &MachineState) -> Result<Option<link::LinkSummary>, LinkError> {
    let Some(host) = &st.host_link else { return Ok(None) };
    let mine = mac_address(&st.machine, "host").to_vec();
    Ok(rt.link(host).await?.filter(|l| l.kind.as_deref() == Some("veth") && l.mac.as_ref() == Some(&mine)))
}

/// Waits up to `patience` for a dismantling machine's pair to go with its namespace, deletes
/// it if it does not (something else holds the namespace), and forgets the state.
async fn settle(
    rt: &Rt,
    sd: &StateDir,
    st: &MachineState,
    patience: std::time::Duration,
) -> Vec<NetworkError> {
    let deadline = std::time::Instant::now() + patience;
    let mut errors: Vec<NetworkError> = Vec::new();
    loop {
        match our_pair(rt, st).await {
            Ok(None) => break,
            Ok(Some(_)) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            Ok(Some(_)) => {
                if let Some(host) = &st.host_link
                    && let Err(e) = rt.delete(host).await
                {
                    errors.push(e.into());
                }
                break;
            }
            Err(e) => {
                errors.push(e.into());
                break;
            }
        }
    }
    sd.remove_machine(&st.machine);
    errors
}

async fn drop_segment(rt: &Rt, sd: &StateDir, seg: &Segment) -> Vec<NetworkError> {
    let mut errors = Vec::new();
    if seg.owns_bridge
        && let Err(e) = rt.delete(&seg.bridge).await
    {
        errors.push(e.into());
    }
    sd.remove_segment(&seg.key);
    errors
}

/// Moves `--network-interface` links back from the machine to the launcher's namespace.
async fn give_back(rt: &Rt, st: &MachineState, guest_ns: &File, host_ns: &File) -> Vec<NetworkError> {
    let result = async {
        let g = Rt::connect_in(guest_ns, host_ns, &format!("machine {}", st.machine))?;
        let mut missing = Vec::new();
        for m in &st.moved {
            match g.link(&m.name).await? {
                Some(l) => g.move_to(l.index, &m.name, host_ns).await?,
                None => missing.push(m.name.clone()),
            }
        }
        Ok::<_, LinkError>(missing)
    }
    .await;
    let mut errors = Vec::new();
    match result {
        Ok(missing) => {
            for m in &st.moved {
                if missing.contains(&m.name) {
                    // Never moved (setup failed before), or gone from the machine.
                    if rt.link(&m.name).await.ok().flatten().is_none() {
                        errors.push(LinkError::InterfaceGone(m.name.clone()).into());
                    }
                } else if m.was_up
                    && let Ok(Some(l)) = rt.link(&m.name).await
                    && let Err(e) = rt.set_up(l.index, &m.name, true).await
                {
                    errors.push(e.into());
                }
            }
        }
        Err(e) => errors.push(e.into()),
    }
    errors
}
