//! Making a planned network real: links, addresses, routes, NAT, moved interfaces.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;

use super::link::{HostEnd, LinkError, Rt, set_sysctl};
use super::nat::{self, NatEntries};
use super::plan::{self, BridgeFacts, Plan};
use super::spec::{GUEST_IFNAME, NetworkMode, NetworkSpec, extra_macs, mac_address};
use super::state::{self, MachineState, MovedLink, StateDir, SysctlChange};
use super::teardown::{has_stale, settle, sweep, undo};
use super::{MachineNetwork, NetworkError};

/// What the first phase decided and began before the machine's namespace existed: its
/// state is written (so a crash leaves it to the sweeps), the lock is held, and its NAT
/// entries are being added on a thread of their own.
pub(super) struct Planned {
    sd: StateDir,
    rt: Rt,
    st: MachineState,
    plan: Plan,
    nat: Option<std::thread::JoinHandle<Result<OwnedFd, nat::NatError>>>,
    /// The socket that added the NAT entries, once they are in (see [`nat::add`]).
    nat_sock: Option<OwnedFd>,
}

/// The first phase: sweeps, checks the name and the ports, plans names and addresses, writes
/// the state and starts adding the NAT entries. Needs nothing of the machine's namespace.
pub(super) async fn plan_async(spec: &NetworkSpec, machine: &str) -> Result<Planned, NetworkError> {
    let sd = StateDir::lock(&spec.state_dir)?;
    let rt = Rt::connect()?;
    make_room(&rt, &sd, spec, machine).await?;
    let live = sd.machines();
    let segments = sd.segments();
    let mut st = MachineState::new(machine);
    for ifname in &spec.interfaces {
        let l = rt.link(ifname).await?.ok_or_else(|| LinkError::NoInterface(ifname.clone()))?;
        st.moved.push(MovedLink { name: ifname.clone(), index: l.index, was_up: l.up });
    }
    let bridge = match &spec.mode {
        NetworkMode::Bridge(br) => match rt.link(br).await? {
            Some(l) => Some(BridgeFacts {
                index: l.index,
                addresses: rt.ipv4_addresses(l.index, br).await?,
                kind: l.kind,
            }),
            None => None,
        },
        _ => None,
    };
    let plan = plan::plan(spec, machine, &mut st, &live, &segments, bridge.as_ref())?;
    if let Some(seg) = &plan.new_segment {
        sd.write_segment(seg)?;
    }
    if let Err(e) = sd.write_machine(&st) {
        if let Some(seg) = &plan.new_segment {
            sd.remove_segment(&seg.key);
        }
        return Err(e.into());
    }
    // nftables runs on its own thread meanwhile: it depends on the addresses, not the links.
    let table_exists = live.iter().any(|m| m.nat);
    let nat = st.guest_addr.filter(|_| st.nat).map(|g| {
        let entries = NatEntries { machine: st.machine.clone(), guest: g.addr(), ports: st.ports.clone() };
        std::thread::spawn(move || nat::add(&entries, table_exists))
    });
    Ok(Planned { sd, rt, st, plan, nat, nat_sock: None })
}

impl Planned {
    /// Its netlink connection, which lives as long as the thread's runtime.
    pub(super) fn rt(&self) -> Rt {
        self.rt.clone()
    }

    /// Waits for the NAT entries; their error, if any.
    fn join_nat(&mut self) -> Result<(), NetworkError> {
        match self.nat.take().map(|h| h.join()) {
            None => Ok(()),
            Some(Ok(r)) => {
                self.nat_sock = Some(r?);
                Ok(())
            }
            Some(Err(_)) => Err(NetworkError::Thread("nftables")),
        }
    }

    /// Undoes what the first phase made (the machine never got its links); the lock is held.
    pub(super) async fn abandon(mut self) -> Vec<NetworkError> {
        self.undo(None).await
    }

    /// Waits for the NAT entries, then undoes everything made so far; `namespaces` (the
    /// machine's and ours) once links may exist in them.
    async fn undo(&mut self, namespaces: Option<(&File, &File)>) -> Vec<NetworkError> {
        let mut errors: Vec<NetworkError> = self.join_nat().err().into_iter().collect();
        let (guest, host) = namespaces.unzip();
        errors.extend(undo(&self.rt, &self.sd, &self.st, guest, host, false, self.nat_sock.take()).await);
        errors
    }

    /// Undoes everything after `e`, logging what could not be undone; returns `e`.
    async fn fail(mut self, e: NetworkError, namespaces: Option<(&File, &File)>) -> NetworkError {
        for u in self.undo(namespaces).await {
            tracing::warn!("{u}");
        }
        e
    }

    /// The second phase, once PID 1 (`pid`) exists in its own network namespace: the links,
    /// addresses and routes, and the NAT entries' completion. On error everything is undone.
    pub(super) async fn finish(
        mut self,
        spec: &NetworkSpec,
        pid: i32,
    ) -> Result<MachineNetwork, NetworkError> {
        let (guest_ns, host_ns) = match open_namespaces(pid) {
            Ok(ns) => ns,
            Err(e) => return Err(self.fail(e, None).await),
        };
        let namespaces = Some((&guest_ns, &host_ns));
        self.st.leader = state::Owner::of(pid);
        if !self.st.moved.is_empty()
            && let Err(e) = self.sd.write_machine(&self.st)
        {
            // The leader is on record before links move into its namespace.
            return Err(self.fail(e.into(), namespaces).await);
        }
        let links = setup_links(&self.rt, spec, &mut self.st, &self.plan, &guest_ns, &host_ns).await;
        let nat = self.join_nat();
        match links.and(nat).and_then(|()| self.sd.write_machine(&self.st).map_err(NetworkError::from)) {
            Ok(()) => Ok(MachineNetwork {
                state_dir: spec.state_dir.clone(),
                state: Some(self.st),
                guest_ns: Some(guest_ns),
                host_ns: Some(host_ns),
                netns_path: None,
                nat_sock: self.nat_sock.take(),
                worker: None,
            }),
            Err(e) => Err(self.fail(e, Some((&guest_ns, &host_ns))).await),
        }
    }
}

/// The machine's network namespace (through its PID 1) and this thread's, which must differ.
fn open_namespaces(pid: i32) -> Result<(File, File), NetworkError> {
    let open = |p: String| File::open(p).map_err(|source| NetworkError::Netns { pid, source });
    let guest_ns = open(format!("/proc/{pid}/ns/net"))?;
    // This thread was spawned by the launcher's thread: it is in the launcher's namespace.
    let host_ns = open("/proc/thread-self/ns/net".to_owned())?;
    let id = |f: &File| f.metadata().map(|m| (m.dev(), m.ino())).ok();
    if id(&guest_ns) == id(&host_ns) {
        return Err(NetworkError::SharedNetns(pid));
    }
    Ok((guest_ns, host_ns))
}

/// Clears the way for `machine`: dead launchers' leftovers go, the previous run's pair (a
/// reboot) is waited for; the name and the host ports must not be another live machine's.
async fn make_room(rt: &Rt, sd: &StateDir, spec: &NetworkSpec, machine: &str) -> Result<(), NetworkError> {
    if has_stale(sd) {
        for e in sweep(rt, sd).await {
            tracing::warn!("{e}");
        }
    }
    if let Some(s) = sd.machine(machine) {
        if !s.dismantling {
            return Err(NetworkError::Busy { machine: machine.to_owned(), pid: s.owner.pid });
        }
        // The previous run's pair is on its way out with its namespace (a reboot): wait for
        // it, or remove it if something keeps that namespace alive.
        for e in settle(rt, sd, &s, std::time::Duration::from_secs(1)).await {
            tracing::warn!("{e}");
        }
    }
    let live = sd.machines();
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
    Ok(())
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
            HostEnd::Up { master },
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
    // Made in the machine's namespace, they go with it: nothing to undo or give back.
    for (ifname, macvlan) in
        spec.macvlan.iter().map(|i| (i, true)).chain(spec.ipvlan.iter().map(|i| (i, false)))
    {
        let parent = rt.link(ifname).await?.ok_or_else(|| LinkError::NoInterface(ifname.clone()))?.index;
        if macvlan {
            let name = format!("mv-{ifname}");
            rt.add_macvlan(&name, parent, mac_address(&st.machine, &name), guest_ns).await?;
        } else {
            rt.add_ipvlan(&format!("iv-{ifname}"), parent, guest_ns).await?;
        }
    }
    for e in &spec.veth_extra {
        // Recorded first: a pair made before a later step fails is removed by the undo.
        st.extra_links.push(e.host.clone());
        let (host_mac, guest_mac) = extra_macs(&st.machine, &e.host);
        rt.add_veth(&e.host, host_mac, &e.guest, guest_mac, guest_ns, HostEnd::Down).await?;
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
