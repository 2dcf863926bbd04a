//! What a machine's network looks like, as a plain value: the mode, port forwards, addresses,
//! and the pure checks and derivations (interface names, MAC addresses) that need no kernel.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;

/// The most port forwards of a machine: its NAT entries are one nf_tables batch of messages
/// (see [`crate::sys::nfnetlink::MAX_MESSAGES`]).
pub const MAX_PORTS: usize = 256;

/// The kernel's IFNAMSIZ less the terminating NUL.
pub const IFNAME_MAX: usize = 15;

/// The default address pool: private, and unlikely to clash with home or office networks.
pub const DEFAULT_POOL: Ipv4Net = match Ipv4Net::new(Ipv4Addr::new(10, 213, 0, 0), 16) {
    Ok(n) => n,
    Err(_) => panic!("bad default pool"),
};

/// Where per-machine network state lives by default (tmpfs: gone after a reboot, like the
/// links it describes).
pub const DEFAULT_STATE_DIR: &str = "/run/mctl/network";

/// The guest side of a veth pair.
pub const GUEST_IFNAME: &str = "host0";

/// How the machine is connected (nspawn's `--private-network`, `--network-veth`, ...).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum NetworkMode {
    /// The host's network namespace: nothing private.
    Host,
    /// An own network namespace with only `lo`.
    Private,
    /// A veth pair: `ve-NAME` on the host, `host0` in the machine.
    Veth,
    /// A veth pair whose host side (`vb-NAME`) joins this existing bridge.
    Bridge(String),
    /// A veth pair whose host side joins the bridge `vz-ZONE`, made on first use.
    Zone(String),
    /// Join an existing network namespace (e.g. `/run/netns/NAME`).
    NamespacePath(PathBuf),
}

/// A port forward's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// Its IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// `--port=[tcp:|udp:]HOSTPORT[:GUESTPORT]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct PortForward {
    /// Protocol: TCP unless the `--port` value starts with `udp:`.
    pub proto: Proto,
    /// Port on the host's addresses (including 127.0.0.1).
    pub host_port: u16,
    /// Port in the machine.
    pub guest_port: u16,
}

impl fmt::Display for PortForward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.proto, self.host_port, self.guest_port)
    }
}

/// `--network-veth-extra=HOSTIF[:MACHINEIF]`: an extra veth pair, neither end configured.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VethExtra {
    /// The host side's name.
    pub host: String,
    /// The machine side's name (the host side's when not given).
    pub guest: String,
}

/// Parses `HOSTIF[:MACHINEIF]` as nspawn does (an empty MACHINEIF means HOSTIF's name), except
/// that an invalid MACHINEIF is refused where nspawn silently uses HOSTIF instead.
pub fn parse_veth_extra(value: &str) -> Result<VethExtra, SpecError> {
    let bad = || SpecError::BadVethExtra(value.to_owned());
    let mut parts = value.split(':');
    let host = parts.next().unwrap_or_default();
    let guest = parts.next().filter(|g| !g.is_empty()).unwrap_or(host);
    if parts.next().is_some() || host.is_empty() {
        return Err(bad());
    }
    validate_ifname(host).map_err(|_| bad())?;
    validate_ifname(guest).map_err(|_| bad())?;
    Ok(VethExtra { host: host.to_owned(), guest: guest.to_owned() })
}

/// A network option that cannot work as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// A `--port` value that does not parse.
    #[error("invalid port forward '{0}': expected [tcp:|udp:]HOSTPORT[:GUESTPORT] with ports 1-65535")]
    BadPort(String),
    /// An option that needs another network mode.
    #[error("{what} needs --network-veth, --network-bridge or --network-zone")]
    NeedsVeth {
        /// The option.
        what: &'static str,
    },
    /// `--network-interface` (or a macvlan, ipvlan) with the host's namespace.
    #[error(
        "--network-interface, --network-macvlan and --network-ipvlan cannot be used with --network-namespace-path"
    )]
    InterfaceWithNamespacePath,
    /// The machine's name for a macvlan or ipvlan link is too long for the kernel.
    #[error("the machine's link {0} would be longer than 15 characters: use a shorter interface")]
    GuestIfnameTooLong(String),
    /// A `--network-veth-extra` value that does not parse.
    #[error(
        "invalid --network-veth-extra '{0}': expected HOSTIF[:MACHINEIF], interface names of 1-15 characters"
    )]
    BadVethExtra(String),
    /// Two links of the machine, or two host sides, with the same name.
    #[error("the link name {0} is given twice")]
    DuplicateLinkName(String),
    /// The same host port twice.
    #[error("host port {0}:{1} is forwarded twice")]
    DuplicatePort(Proto, u16),
    /// More port forwards than one nftables batch takes.
    #[error("{0} port forwards given; a machine takes at most {MAX_PORTS}")]
    TooManyPorts(usize),
    /// The same interface twice.
    #[error("network interface {0} is given twice")]
    DuplicateInterface(String),
    /// Not a usable interface name.
    #[error("'{0}' is not a valid network interface name (1-15 characters, no '/', ':' or spaces)")]
    BadIfname(String),
    /// Not a usable zone name.
    #[error("'{0}' is not a valid zone name (letters, digits, '-' and '.')")]
    BadZone(String),
    /// `--address` that cannot be a host address.
    #[error(
        "address {0} is not a host address (use a prefix of at most /30, not the network or broadcast address)"
    )]
    BadAddress(Ipv4Net),
    /// `--gateway` outside the address's subnet.
    #[error("gateway {gateway} is not a host of {address}'s subnet, or is the address itself")]
    BadGateway {
        /// The `--gateway` given, or a user bridge's own address when none was.
        gateway: Ipv4Addr,
        /// The `--address` with its prefix, or the user bridge's subnet.
        address: Ipv4Net,
    },
    /// `--gateway` without `--address`.
    #[error("--gateway needs --address")]
    GatewayWithoutAddress,
    /// A pool too small to carve subnets from.
    #[error("address pool {0} is too small: it must be at least a /24")]
    SmallPool(Ipv4Net),
    /// The namespace path is relative.
    #[error("network namespace path {0} must be absolute")]
    RelativeNamespacePath(PathBuf),
}

/// Parses `[tcp:|udp:]HOSTPORT[:GUESTPORT]` (TCP by default, guest port = host port by default).
pub fn parse_port(s: &str) -> Result<PortForward, SpecError> {
    let bad = || SpecError::BadPort(s.to_owned());
    let (proto, rest) = match s.split_once(':') {
        Some(("tcp", rest)) => (Proto::Tcp, rest),
        Some(("udp", rest)) => (Proto::Udp, rest),
        _ => (Proto::Tcp, s),
    };
    let port = |p: &str| match p.parse::<u16>() {
        Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(bad()),
    };
    let (host_port, guest_port) = match rest.split_once(':') {
        Some((h, g)) => (port(h)?, port(g)?),
        None => (port(rest)?, port(rest)?),
    };
    Ok(PortForward { proto, host_port, guest_port })
}

/// Everything about one machine's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSpec {
    /// How the machine is connected.
    pub mode: NetworkMode,
    /// `--network-interface`: host links moved into the machine for its lifetime.
    pub interfaces: Vec<String>,
    /// `--network-macvlan`: host links the machine gets a macvlan (`mv-IF`, bridge mode) of.
    pub macvlan: Vec<String>,
    /// `--network-ipvlan`: host links the machine gets an ipvlan (`iv-IF`, L2 mode) of.
    pub ipvlan: Vec<String>,
    /// `--network-veth-extra`: extra veth pairs, left unconfigured.
    pub veth_extra: Vec<VethExtra>,
    /// `--address`: the guest's address instead of one from the pool.
    pub address: Option<Ipv4Net>,
    /// `--gateway`: the guest's default route (with `--address`).
    pub gateway: Option<Ipv4Addr>,
    /// `--port` forwards.
    pub ports: Vec<PortForward>,
    /// The private range addresses are leased from.
    pub pool: Ipv4Net,
    /// Where leases and per-machine state live; one directory per host network namespace.
    pub state_dir: PathBuf,
}

impl NetworkSpec {
    /// A spec for `mode` with the default pool and state directory.
    pub fn new(mode: NetworkMode) -> Self {
        NetworkSpec {
            mode,
            interfaces: Vec::new(),
            macvlan: Vec::new(),
            ipvlan: Vec::new(),
            veth_extra: Vec::new(),
            address: None,
            gateway: None,
            ports: Vec::new(),
            pool: DEFAULT_POOL,
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
        }
    }

    /// The mode in effect: `--network-interface`, `--network-macvlan` or `--network-ipvlan`
    /// alone implies a private namespace (as in nspawn).
    pub fn effective_mode(&self) -> NetworkMode {
        match self.mode {
            NetworkMode::Host if self.has_host_links() => NetworkMode::Private,
            ref m => m.clone(),
        }
    }

    /// Whether host links are moved in, have links made of them in the machine, or extra veth
    /// pairs join the two.
    pub fn has_host_links(&self) -> bool {
        !(self.interfaces.is_empty()
            && self.macvlan.is_empty()
            && self.ipvlan.is_empty()
            && self.veth_extra.is_empty())
    }

    /// Whether the machine gets a network namespace other than the host's (created, or joined
    /// for [`NetworkMode::NamespacePath`]).
    pub fn needs_netns(&self) -> bool {
        self.effective_mode() != NetworkMode::Host
    }

    /// Whether the machine has a veth pair (and so addresses, NAT and forwards).
    pub fn has_veth(&self) -> bool {
        matches!(self.mode, NetworkMode::Veth | NetworkMode::Bridge(_) | NetworkMode::Zone(_))
    }

    /// Checks that need no kernel: option combinations, names, address shapes.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.pool.prefix_len() > 24 {
            return Err(SpecError::SmallPool(self.pool));
        }
        if !self.has_veth() {
            if !self.ports.is_empty() {
                return Err(SpecError::NeedsVeth { what: "--port" });
            }
            if self.address.is_some() {
                return Err(SpecError::NeedsVeth { what: "--address" });
            }
            if self.gateway.is_some() {
                return Err(SpecError::NeedsVeth { what: "--gateway" });
            }
        }
        match &self.mode {
            NetworkMode::Bridge(br) => validate_ifname(br)?,
            NetworkMode::Zone(z) => validate_zone(z)?,
            NetworkMode::NamespacePath(p) => {
                if !p.is_absolute() {
                    return Err(SpecError::RelativeNamespacePath(p.clone()));
                }
                if self.has_host_links() {
                    return Err(SpecError::InterfaceWithNamespacePath);
                }
            }
            _ => {}
        }
        for (i, ifname) in self.interfaces.iter().enumerate() {
            validate_ifname(ifname)?;
            if self.interfaces[..i].contains(ifname) {
                return Err(SpecError::DuplicateInterface(ifname.clone()));
            }
        }
        for (prefix, list) in [("mv-", &self.macvlan), ("iv-", &self.ipvlan)] {
            for (i, ifname) in list.iter().enumerate() {
                validate_ifname(ifname)?;
                if list[..i].contains(ifname) {
                    return Err(SpecError::DuplicateInterface(ifname.clone()));
                }
                let inside = format!("{prefix}{ifname}");
                if inside.len() > IFNAME_MAX {
                    return Err(SpecError::GuestIfnameTooLong(inside));
                }
            }
        }
        self.validate_link_names()?;
        if self.ports.len() > MAX_PORTS {
            return Err(SpecError::TooManyPorts(self.ports.len()));
        }
        for (i, p) in self.ports.iter().enumerate() {
            if self.ports[..i].iter().any(|q| q.proto == p.proto && q.host_port == p.host_port) {
                return Err(SpecError::DuplicatePort(p.proto, p.host_port));
            }
        }
        if let Some(a) = self.address {
            if !is_host_address(a) {
                return Err(SpecError::BadAddress(a));
            }
            if let Some(gw) = self.gateway
                && (!is_host_of(gw, a) || gw == a.addr())
            {
                return Err(SpecError::BadGateway { gateway: gw, address: a });
            }
        } else if self.gateway.is_some() {
            return Err(SpecError::GatewayWithoutAddress);
        }
        Ok(())
    }
}

impl NetworkSpec {
    /// The names the machine's links will have, and the host sides of extra pairs, each once.
    fn validate_link_names(&self) -> Result<(), SpecError> {
        for e in &self.veth_extra {
            validate_ifname(&e.host)?;
            validate_ifname(&e.guest)?;
        }
        let mut inside: Vec<String> = vec!["lo".into()];
        if matches!(self.mode, NetworkMode::Veth | NetworkMode::Bridge(_) | NetworkMode::Zone(_)) {
            inside.push(GUEST_IFNAME.into());
        }
        inside.extend(self.interfaces.iter().cloned());
        inside.extend(self.macvlan.iter().map(|i| format!("mv-{i}")));
        inside.extend(self.ipvlan.iter().map(|i| format!("iv-{i}")));
        let extra_start = inside.len();
        inside.extend(self.veth_extra.iter().map(|e| e.guest.clone()));
        for (i, name) in inside.iter().enumerate().skip(extra_start) {
            if inside[..i].contains(name) {
                return Err(SpecError::DuplicateLinkName(name.clone()));
            }
        }
        for (i, e) in self.veth_extra.iter().enumerate() {
            if self.veth_extra[..i].iter().any(|o| o.host == e.host) || self.interfaces.contains(&e.host) {
                return Err(SpecError::DuplicateLinkName(e.host.clone()));
            }
        }
        Ok(())
    }
}

/// Whether `a` names a host (not the network or broadcast address) in a subnet of at least
/// two hosts; /31 (point-to-point, RFC 3021) has no network or broadcast address.
pub fn is_host_address(a: Ipv4Net) -> bool {
    match a.prefix_len() {
        31 => true,
        0..=30 => a.addr() != a.network() && a.addr() != a.broadcast(),
        _ => false,
    }
}

/// Whether `ip` is a host address in `net`'s subnet.
pub fn is_host_of(ip: Ipv4Addr, net: Ipv4Net) -> bool {
    let n = net.trunc();
    n.contains(&ip) && (n.prefix_len() >= 31 || (ip != n.network() && ip != n.broadcast()))
}

/// The kernel's rules for link names (`dev_valid_name`).
pub fn validate_ifname(name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= IFNAME_MAX
        && name != "."
        && name != ".."
        && !name.bytes().any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0);
    if ok { Ok(()) } else { Err(SpecError::BadIfname(name.to_owned())) }
}

/// Zone names follow machine-name rules so `vz-ZONE` is always a valid link name.
pub fn validate_zone(zone: &str) -> Result<(), SpecError> {
    crate::names::validate(zone).map_err(|_| SpecError::BadZone(zone.to_owned()))
}

/// 64-bit FNV-1a: small and stable across Rust releases (std's hasher is not), which matters
/// because names and MAC addresses derived from it must not change between mctl versions.
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.iter().chain(std::iter::once(&0u8)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// `PREFIX` + `name` when it fits IFNAMSIZ; otherwise `PREFIX`, the name's first characters,
/// `_` and 8 hex digits of its hash. Machine and zone names cannot contain `_`, so a hashed
/// name never equals an unhashed one; two hashed names collide only if both their prefix and
/// 32-bit hash are equal (setup still refuses a name another machine holds).
pub fn link_name(prefix: &str, name: &str) -> String {
    let full = format!("{prefix}{name}");
    if full.len() <= IFNAME_MAX {
        return full;
    }
    // The hash's low 32 bits, truncated on purpose (names already made depend on them).
    #[allow(clippy::cast_possible_truncation)]
    let hash = stable_hash(&[prefix.as_bytes(), name.as_bytes()]) as u32;
    let keep = IFNAME_MAX - prefix.len() - 9;
    // Names are ASCII (hostname rules), so byte slicing is at a character boundary.
    format!("{prefix}{}_{hash:08x}", &name[..keep])
}

/// A stable MAC address for one end of a machine's veth pair: locally administered, unicast,
/// derived from the machine name and `role` (so the two ends differ).
pub fn mac_address(machine: &str, role: &str) -> [u8; 6] {
    let h = stable_hash(&[b"mctl-mac", role.as_bytes(), machine.as_bytes()]).to_be_bytes();
    let mut mac = [h[0], h[1], h[2], h[3], h[4], h[5]];
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

/// The stable MAC addresses of the `--network-veth-extra` pair whose host side is `host`: how
/// teardown tells the machine's pair from a link someone else made with that name.
pub fn extra_macs(machine: &str, host: &str) -> ([u8; 6], [u8; 6]) {
    (
        mac_address(machine, &format!("extra-host-{host}")),
        mac_address(machine, &format!("extra-guest-{host}")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_veth_extra_as_nspawn() {
        let v = |h: &str, g: &str| Ok(VethExtra { host: h.into(), guest: g.into() });
        assert_eq!(parse_veth_extra("vx-a:inner0"), v("vx-a", "inner0"));
        assert_eq!(parse_veth_extra("vx-b"), v("vx-b", "vx-b"));
        assert_eq!(parse_veth_extra("a:"), v("a", "a"));
        for bad in
            ["", ":", ":b", "a:b:c", "a:b:", "abcdefghijklmnopq", "a/b", "a:b/c", "a:abcdefghijklmnopq"]
        {
            assert!(parse_veth_extra(bad).is_err(), "{bad}");
        }
        let mut s = NetworkSpec::new(NetworkMode::Veth);
        s.veth_extra = vec![parse_veth_extra("x:host0").unwrap()];
        assert_eq!(s.validate(), Err(SpecError::DuplicateLinkName("host0".into())));
        s.veth_extra = vec![parse_veth_extra("x:y").unwrap(), parse_veth_extra("x:z").unwrap()];
        assert_eq!(s.validate(), Err(SpecError::DuplicateLinkName("x".into())));
        s.veth_extra = vec![parse_veth_extra("x:y").unwrap(), parse_veth_extra("z:y").unwrap()];
        assert_eq!(s.validate(), Err(SpecError::DuplicateLinkName("y".into())));
        s.veth_extra = vec![parse_veth_extra("x:y").unwrap(), parse_veth_extra("z").unwrap()];
        assert_eq!(s.validate(), Ok(()));
        let mut s = NetworkSpec::new(NetworkMode::Host);
        s.veth_extra = vec![parse_veth_extra("x").unwrap()];
        assert_eq!(s.effective_mode(), NetworkMode::Private);
    }

    #[test]
    fn parses_ports() {
        let p = |proto, h, g| PortForward { proto, host_port: h, guest_port: g };
        assert_eq!(parse_port("80"), Ok(p(Proto::Tcp, 80, 80)));
        assert_eq!(parse_port("8080:80"), Ok(p(Proto::Tcp, 8080, 80)));
        assert_eq!(parse_port("tcp:2222:22"), Ok(p(Proto::Tcp, 2222, 22)));
        assert_eq!(parse_port("udp:53"), Ok(p(Proto::Udp, 53, 53)));
        assert_eq!(parse_port("udp:5353:53"), Ok(p(Proto::Udp, 5353, 53)));
        for bad in ["", "0", "65536", "tcp:", "sctp:80", "80:", ":80", "1:2:3", "+80", "udp:x", "tcp:80:0"] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_port("sctp:80").unwrap_err().to_string(),
            "invalid port forward 'sctp:80': expected [tcp:|udp:]HOSTPORT[:GUESTPORT] with ports 1-65535"
        );
    }

    #[test]
    fn validates_combinations() {
        let mut s = NetworkSpec::new(NetworkMode::Private);
        s.ports.push(parse_port("80").unwrap());
        assert_eq!(s.validate(), Err(SpecError::NeedsVeth { what: "--port" }));
        s.mode = NetworkMode::Veth;
        assert_eq!(s.validate(), Ok(()));
        s.ports.push(parse_port("80:81").unwrap());
        assert_eq!(s.validate(), Err(SpecError::DuplicatePort(Proto::Tcp, 80)));
        s.ports.pop();
        s.ports.push(parse_port("udp:80").unwrap());
        assert_eq!(s.validate(), Ok(()));
        let ports = s.ports.clone();
        s.ports.extend(
            (1000..1000 + u16::try_from(MAX_PORTS).unwrap()).map(|p| parse_port(&p.to_string()).unwrap()),
        );
        assert_eq!(s.validate(), Err(SpecError::TooManyPorts(MAX_PORTS + 2)));
        s.ports = ports;
        s.gateway = Some(Ipv4Addr::new(10, 213, 0, 1));
        assert_eq!(s.validate(), Err(SpecError::GatewayWithoutAddress));
        s.address = Some("10.213.0.2/30".parse().unwrap());
        assert_eq!(s.validate(), Ok(()));
        s.gateway = Some(Ipv4Addr::new(10, 213, 0, 3));
        assert!(matches!(s.validate(), Err(SpecError::BadGateway { .. })));
        s.gateway = None;
        s.address = Some("10.213.0.3/30".parse().unwrap());
        assert!(matches!(s.validate(), Err(SpecError::BadAddress(_))));
        s.address = Some("10.213.0.3/32".parse().unwrap());
        assert!(matches!(s.validate(), Err(SpecError::BadAddress(_))));
        s.address = None;
        s.interfaces = vec!["eth1".into(), "eth1".into()];
        assert_eq!(s.validate(), Err(SpecError::DuplicateInterface("eth1".into())));
        s.interfaces = vec!["a/b".into()];
        assert!(matches!(s.validate(), Err(SpecError::BadIfname(_))));
        s.interfaces = vec!["x".repeat(16)];
        assert!(matches!(s.validate(), Err(SpecError::BadIfname(_))));
        s.interfaces.clear();
        s.mode = NetworkMode::Zone("bad_zone".into());
        assert!(matches!(s.validate(), Err(SpecError::BadZone(_))));
        s.mode = NetworkMode::Bridge("br:0".into());
        assert!(matches!(s.validate(), Err(SpecError::BadIfname(_))));
        s.mode = NetworkMode::Veth;
        s.pool = "10.0.0.0/25".parse().unwrap();
        assert!(matches!(s.validate(), Err(SpecError::SmallPool(_))));
    }

    #[test]
    fn interface_alone_implies_private() {
        let mut s = NetworkSpec::new(NetworkMode::Host);
        assert!(!s.needs_netns());
        s.interfaces.push("eth1".into());
        assert!(s.needs_netns());
        assert_eq!(s.effective_mode(), NetworkMode::Private);
        assert!(NetworkSpec::new(NetworkMode::NamespacePath("/run/netns/x".into())).needs_netns());
    }

    #[test]
    fn link_names_fit_and_do_not_collide() {
        assert_eq!(link_name("ve-", "web"), "ve-web");
        assert_eq!(link_name("ve-", "abcdefghijkl"), "ve-abcdefghijkl");
        let long = link_name("ve-", "abcdefghijklm");
        assert_eq!(long.len(), IFNAME_MAX);
        assert!(long.starts_with("ve-abc_"), "{long}");
        assert_ne!(link_name("ve-", "abcdefghijklm"), link_name("ve-", "abcdefghijkln"));
        assert_ne!(link_name("ve-", "abcdefghijklm"), link_name("vb-", "abcdefghijklm"));
        assert_eq!(link_name("vz-", &"z".repeat(64)).len(), IFNAME_MAX);
        for n in ["a", "abcdefghijklmnopq", &"q".repeat(64)] {
            validate_ifname(&link_name("vb-", n)).unwrap();
        }
    }

    #[test]
    fn macs_are_stable_local_unicast_and_distinct() {
        let host = mac_address("web", "host");
        let guest = mac_address("web", "guest");
        assert_ne!(host, guest);
        assert_eq!(host, mac_address("web", "host"));
        assert_ne!(host, mac_address("web2", "host"));
        for m in [host, guest] {
            assert_eq!(m[0] & 0x03, 0x02, "{m:x?}");
        }
        // Pinned: a change here changes every machine's MAC address.
        assert_eq!(stable_hash(&[b"a"]), 0x089b_e207_b544_f1e4);
    }
}
