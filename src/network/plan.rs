//! Deciding a machine's links, names and addresses before anything is created: pure functions
//! of the spec, the live machines' states and what the kernel said about a user's bridge.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::NetworkError;
use super::addr::{self, Lease};
use super::link::LinkError;
use super::spec::{NetworkMode, NetworkSpec, SpecError, is_host_of, link_name};
use super::state::{MachineState, Segment};

/// What the kernel says about a user's bridge (`--network-bridge=BR`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeFacts {
    /// Its interface index.
    pub index: u32,
    /// Its link kind (`bridge` for a bridge).
    pub kind: Option<String>,
    /// Its IPv4 addresses.
    pub addresses: Vec<Ipv4Net>,
}

pub(super) fn segment_owner(key: &str) -> String {
    key.replacen('-', " ", 1)
}

pub(super) fn leases(live: &[MachineState], segments: &[Segment]) -> Vec<Lease> {
    let machines = live
        .iter()
        .filter_map(|m| m.subnet.map(|net| Lease { net, owner: format!("machine {}", m.machine) }));
    let segs = segments.iter().map(|s| Lease { net: s.subnet, owner: segment_owner(&s.key) });
    machines.chain(segs).collect()
}

/// What setup decided before touching the kernel.
#[derive(Debug)]
pub(super) struct Plan {
    /// Bridge to create (zone) with its address.
    pub zone_bridge: Option<(String, Option<Ipv4Net>)>,
    /// Index of the bridge to enslave the host side to (user's bridge).
    pub master: Option<u32>,
    /// Segment file to write before creating anything.
    pub new_segment: Option<Segment>,
    /// Where route_localnet goes (link name), if ports.
    pub localnet_link: Option<String>,
}

/// What every kind of plan reads.
struct Inputs<'a> {
    spec: &'a NetworkSpec,
    live: &'a [MachineState],
    segments: &'a [Segment],
    leases: Vec<Lease>,
}

/// Decides names and addresses; fills `st`. Pure: what it needs of the kernel (a user's bridge)
/// comes in `bridge`.
pub(super) fn plan(
    spec: &NetworkSpec,
    machine: &str,
    st: &mut MachineState,
    live: &[MachineState],
    segments: &[Segment],
    bridge: Option<&BridgeFacts>,
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
    let inputs = Inputs { spec, live, segments, leases: leases(live, segments) };
    match &spec.mode {
        NetworkMode::Veth => plan_veth(&inputs, host_link, st, &mut plan)?,
        NetworkMode::Zone(zone) => plan_zone(&inputs, zone, st, &mut plan)?,
        NetworkMode::Bridge(br) => {
            let facts = bridge.ok_or_else(|| LinkError::NoBridge(br.clone()))?;
            plan_bridge(&inputs, br, facts, st, &mut plan)?;
        }
        _ => unreachable!("host_prefix returned early"),
    }
    st.ports = spec.ports.clone();
    if spec.ports.is_empty() {
        plan.localnet_link = None;
    }
    Ok(plan)
}

/// `--network-veth`: a /30 of its own, the host side as gateway, NAT.
fn plan_veth(
    i: &Inputs<'_>,
    host_link: String,
    st: &mut MachineState,
    plan: &mut Plan,
) -> Result<(), NetworkError> {
    let p = addr::point_to_point(i.spec.pool, &i.leases, i.spec.address, i.spec.gateway)?;
    st.subnet = Some(p.subnet);
    st.host_addr = Some(p.host);
    st.guest_addr = Some(p.guest);
    st.gateway = Some(p.host.addr());
    st.nat = true;
    plan.localnet_link = Some(host_link);
    Ok(())
}

/// `--network-zone=ZONE`: the zone's bridge `vz-ZONE` (made by its first machine) with a /24,
/// the bridge as gateway, NAT.
fn plan_zone(i: &Inputs<'_>, zone: &str, st: &mut MachineState, plan: &mut Plan) -> Result<(), NetworkError> {
    let spec = i.spec;
    let key = format!("zone-{zone}");
    let bridge = link_name("vz-", zone);
    if let Some(o) = i.segments.iter().find(|s| s.bridge == bridge && s.key != key) {
        return Err(NetworkError::LinkNameTaken {
            link: bridge,
            what: format!("zone {zone}"),
            owner: segment_owner(&o.key),
        });
    }
    let seg = match i.segments.iter().find(|s| s.key == key) {
        Some(s) => s.clone(),
        None => {
            let (subnet, gateway) = match spec.address {
                Some(a) => {
                    let subnet = a.trunc();
                    addr::check_subnet(spec.pool, a, &i.leases)?;
                    (subnet, addr::segment_host(subnet, "", &[(a.addr(), String::new())], None)?)
                }
                None => {
                    let subnet = addr::allocate_subnet(spec.pool, addr::SEGMENT_PREFIX, &i.leases, true)?;
                    (subnet, addr::segment_host(subnet, "", &[], None)?)
                }
            };
            let seg =
                Segment { key, bridge: bridge.clone(), subnet, gateway: Some(gateway), owns_bridge: true };
            plan.new_segment = Some(seg.clone());
            seg
        }
    };
    let gw = seg.gateway.expect("zones have a gateway");
    let mut used = vec![(gw, format!("zone {zone}'s bridge {bridge}"))];
    used.extend(members(i.live, &seg.key));
    let guest =
        addr::segment_host(seg.subnet, &format!("zone {zone}"), &used, spec.address.map(|a| a.addr()))?;
    st.guest_addr = Some(Ipv4Net::new(guest, seg.subnet.prefix_len()).expect("valid prefix"));
    st.gateway = Some(spec.gateway.unwrap_or(gw));
    st.segment = Some(seg.key.clone());
    st.bridge = Some(bridge.clone());
    st.nat = true;
    plan.zone_bridge =
        Some((bridge.clone(), Some(Ipv4Net::new(gw, seg.subnet.prefix_len()).expect("valid"))));
    plan.localnet_link = Some(bridge);
    Ok(())
}

/// `--network-bridge=BR`: a port on the user's bridge; addresses in the bridge's own subnet
/// when it has one (and NAT through it), else in a segment of its own from the pool.
fn plan_bridge(
    i: &Inputs<'_>,
    br: &str,
    facts: &BridgeFacts,
    st: &mut MachineState,
    plan: &mut Plan,
) -> Result<(), NetworkError> {
    let spec = i.spec;
    if facts.kind.as_deref() != Some("bridge") {
        return Err(LinkError::NotABridge {
            name: br.to_owned(),
            kind: facts.kind.clone().unwrap_or_else(|| "physical".into()),
        }
        .into());
    }
    plan.master = Some(facts.index);
    st.bridge = Some(br.to_owned());
    let owner = format!("bridge {br}");
    let Some(first) = facts.addresses.first() else {
        return plan_bare_bridge(i, br, st, plan);
    };
    let subnet = first.trunc();
    let mut used: Vec<(Ipv4Addr, String)> =
        facts.addresses.iter().map(|a| (a.addr(), format!("bridge {br} itself"))).collect();
    used.extend(
        i.live
            .iter()
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
    plan.localnet_link = Some(br.to_owned());
    Ok(())
}

/// A user's bridge without an IPv4 address: its machines share a segment from the pool and
/// talk among themselves (no NAT, no forwards: the host has no address there).
fn plan_bare_bridge(
    i: &Inputs<'_>,
    br: &str,
    st: &mut MachineState,
    plan: &mut Plan,
) -> Result<(), NetworkError> {
    let spec = i.spec;
    if !spec.ports.is_empty() {
        return Err(NetworkError::PortsNeedBridgeAddress(br.to_owned()));
    }
    let key = format!("bridge-{br}");
    let seg = match i.segments.iter().find(|s| s.key == key) {
        Some(s) => s.clone(),
        None => {
            let subnet = match spec.address {
                Some(a) => {
                    addr::check_subnet(spec.pool, a, &i.leases)?;
                    a.trunc()
                }
                None => addr::allocate_subnet(spec.pool, addr::SEGMENT_PREFIX, &i.leases, true)?,
            };
            let seg = Segment { key, bridge: br.to_owned(), subnet, gateway: None, owns_bridge: false };
            plan.new_segment = Some(seg.clone());
            seg
        }
    };
    let used: Vec<_> = members(i.live, &seg.key).collect();
    let guest =
        addr::segment_host(seg.subnet, &format!("bridge {br}"), &used, spec.address.map(|a| a.addr()))?;
    st.guest_addr = Some(Ipv4Net::new(guest, seg.subnet.prefix_len()).expect("valid prefix"));
    st.gateway = spec.gateway;
    st.segment = Some(seg.key);
    Ok(())
}

fn members<'a>(live: &'a [MachineState], key: &'a str) -> impl Iterator<Item = (Ipv4Addr, String)> + 'a {
    live.iter()
        .filter(move |m| m.segment.as_deref() == Some(key))
        .filter_map(|m| m.guest_addr.map(|a| (a.addr(), format!("machine {}", m.machine))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::spec::parse_port;

    fn planned(
        spec: &NetworkSpec,
        live: &[MachineState],
        segs: &[Segment],
        br: Option<&BridgeFacts>,
    ) -> Result<(Plan, MachineState), NetworkError> {
        let mut st = MachineState::new("web");
        plan(spec, "web", &mut st, live, segs, br).map(|p| (p, st))
    }

    fn running(name: &str, subnet: &str) -> MachineState {
        let mut m = MachineState::new(name);
        m.subnet = Some(subnet.parse().unwrap());
        m.host_link = Some(format!("ve-{name}"));
        m
    }

    #[test]
    fn a_veth_machine_gets_the_next_free_point_to_point_subnet() {
        let mut spec = NetworkSpec::new(NetworkMode::Veth);
        spec.ports.push(parse_port("8080:80").unwrap());
        let live = [running("db", "10.213.0.0/30")];
        let (p, st) = planned(&spec, &live, &[], None).unwrap();
        assert_eq!(st.host_link.as_deref(), Some("ve-web"));
        assert_eq!(st.subnet, Some("10.213.0.4/30".parse().unwrap()));
        assert_eq!(st.host_addr, Some("10.213.0.5/30".parse().unwrap()));
        assert_eq!(st.guest_addr, Some("10.213.0.6/30".parse().unwrap()));
        assert_eq!(st.gateway, Some("10.213.0.5".parse().unwrap()));
        assert!(st.nat);
        // Forwards from the host's localhost need route_localnet on the host side.
        assert_eq!(p.localnet_link.as_deref(), Some("ve-web"));
        let (p, _) = planned(&NetworkSpec::new(NetworkMode::Veth), &live, &[], None).unwrap();
        assert_eq!(p.localnet_link, None);
    }

    #[test]
    fn a_taken_link_name_is_refused() {
        let mut other = running("other", "10.213.0.0/30");
        other.host_link = Some("ve-web".into());
        let err = planned(&NetworkSpec::new(NetworkMode::Veth), &[other], &[], None).err().unwrap();
        assert!(matches!(err, NetworkError::LinkNameTaken { .. }), "{err}");
    }

    #[test]
    fn the_first_zone_machine_makes_the_segment_the_next_joins_it() {
        let spec = NetworkSpec::new(NetworkMode::Zone("lab".into()));
        let (p, st) = planned(&spec, &[], &[], None).unwrap();
        let seg = p.new_segment.clone().expect("a new segment");
        assert_eq!(seg.bridge, "vz-lab");
        assert_eq!(st.host_link.as_deref(), Some("vb-web"));
        assert_eq!(st.gateway, seg.gateway);
        assert!(seg.subnet.contains(&st.guest_addr.unwrap().addr()));
        let mut first = st.clone();
        first.machine = "first".into();
        first.host_link = Some("vb-first".into());
        let (p2, st2) = planned(&spec, &[first], std::slice::from_ref(&seg), None).unwrap();
        assert!(p2.new_segment.is_none(), "the zone's segment exists already");
        assert_ne!(st2.guest_addr, st.guest_addr, "two machines of a zone get different addresses");
    }

    #[test]
    fn a_users_bridge_with_an_address_gives_addresses_in_its_subnet() {
        let spec = NetworkSpec::new(NetworkMode::Bridge("br0".into()));
        let br = BridgeFacts {
            index: 7,
            kind: Some("bridge".into()),
            addresses: vec!["192.168.50.1/24".parse().unwrap()],
        };
        let (p, st) = planned(&spec, &[], &[], Some(&br)).unwrap();
        assert_eq!(p.master, Some(7));
        assert_eq!(st.gateway, Some("192.168.50.1".parse().unwrap()));
        assert!(st.guest_addr.unwrap().to_string().starts_with("192.168.50."));
        assert_ne!(st.guest_addr.unwrap().addr(), "192.168.50.1".parse::<Ipv4Addr>().unwrap());
    }

    #[test]
    fn a_users_bridge_must_exist_be_a_bridge_and_have_an_address_for_forwards() {
        let spec = NetworkSpec::new(NetworkMode::Bridge("br0".into()));
        assert!(matches!(planned(&spec, &[], &[], None), Err(NetworkError::Link(LinkError::NoBridge(_)))));
        let eth = BridgeFacts { index: 2, kind: None, addresses: vec![] };
        assert!(matches!(
            planned(&spec, &[], &[], Some(&eth)),
            Err(NetworkError::Link(LinkError::NotABridge { .. }))
        ));
        let mut fwd = spec.clone();
        fwd.ports.push(parse_port("80").unwrap());
        let bare = BridgeFacts { index: 3, kind: Some("bridge".into()), addresses: vec![] };
        assert!(matches!(planned(&fwd, &[], &[], Some(&bare)), Err(NetworkError::PortsNeedBridgeAddress(_))));
        // Without forwards a bare bridge gets a segment of its own from the pool.
        let (p, st) = planned(&spec, &[], &[], Some(&bare)).unwrap();
        assert!(p.new_segment.is_some() && st.guest_addr.is_some() && !st.nat);
    }
}
