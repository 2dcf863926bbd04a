//! Address allocation from the pool, as pure functions over what is leased (the callers read
//! leases from the state files under the state directory's lock).
//!
//! Layout of the pool (default 10.213.0.0/16): veth machines take /30s from the bottom (host
//! side .1, guest .2 of each /30); zones, and user bridges without an IPv4 address, take /24s
//! from the top (bridge .1 where mctl owns the bridge, machines .2 and up). Growing from both
//! ends keeps the small subnets from fragmenting the large ones.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::spec::is_host_of;

/// Prefix of a veth machine's own subnet: two hosts, the host side and the guest.
pub const VETH_PREFIX: u8 = 30;
/// Prefix of a zone's (or address-less bridge's) subnet.
pub const SEGMENT_PREFIX: u8 = 24;

/// An address that cannot be leased.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    /// `--address` outside the pool.
    #[error("address {address} is outside the address pool {pool}")]
    OutsidePool {
        /// The `--address` as given, with its prefix (`10.99.0.2/30`).
        address: Ipv4Net,
        /// The address pool (`--address-pool`, default 10.213.0.0/16).
        pool: Ipv4Net,
    },
    /// `--address` outside the subnet of the bridge or zone the machine joins.
    #[error("address {address} is outside the subnet {subnet} of {owner}")]
    OutsideSubnet {
        /// The `--address` host, its prefix dropped (the segment's prefix applies).
        address: Ipv4Addr,
        /// The segment's subnet.
        subnet: Ipv4Net,
        /// The bridge or zone.
        owner: String,
    },
    /// `--address` whose subnet overlaps a lease.
    #[error("address {address} overlaps {leased}, leased to {owner}")]
    Overlaps {
        /// The `--address` as given, with its prefix (its whole subnet must be free).
        address: Ipv4Net,
        /// The lease in the way.
        leased: Ipv4Net,
        /// Its holder.
        owner: String,
    },
    /// `--address` already given to someone on the same segment.
    #[error("address {address} is already used by {owner}")]
    InUse {
        /// The `--address` host, its prefix dropped.
        address: Ipv4Addr,
        /// Its holder.
        owner: String,
    },
    /// Nothing left of the requested size.
    #[error("address pool {pool} has no free /{prefix} subnet left")]
    PoolExhausted {
        /// The address pool searched (`--address-pool`, default 10.213.0.0/16).
        pool: Ipv4Net,
        /// Requested size.
        prefix: u8,
    },
    /// A segment without a free host address.
    #[error("subnet {subnet} of {owner} has no free address left")]
    SubnetFull {
        /// The segment's subnet.
        subnet: Ipv4Net,
        /// The bridge or zone.
        owner: String,
    },
}

/// A subnet or address someone holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// What is held (a /32 for a single address).
    pub net: Ipv4Net,
    /// Who holds it, for error messages ("machine web", "zone lab").
    pub owner: String,
}

/// The veth pair's addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PointToPoint {
    /// The machine's own lease.
    pub subnet: Ipv4Net,
    /// The host side (`ve-NAME`), the guest's gateway.
    pub host: Ipv4Net,
    /// `host0`.
    pub guest: Ipv4Net,
}

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The `i`-th aligned subnet of `prefix` in `pool`.
fn nth_subnet(pool: Ipv4Net, prefix: u8, i: u32) -> Ipv4Net {
    // A /0 is the whole address space: only its first subnet exists.
    let size = 1u32.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    let base = u32::from(pool.network());
    Ipv4Net::new(Ipv4Addr::from(base + i * size), prefix).expect("prefix <= 32")
}

/// The lowest (or, `from_top`, highest) aligned `/prefix` of `pool` that overlaps no lease.
pub fn allocate_subnet(
    pool: Ipv4Net,
    prefix: u8,
    leases: &[Lease],
    from_top: bool,
) -> Result<Ipv4Net, AddrError> {
    let exhausted = AddrError::PoolExhausted { pool, prefix };
    if prefix < pool.prefix_len() || prefix > 32 {
        return Err(exhausted);
    }
    let count = 1u64 << (prefix - pool.prefix_len());
    // i < count <= 2^32, so the cast cannot truncate.
    #[allow(clippy::cast_possible_truncation)]
    let pick = |i: u64| {
        let i = if from_top { count - 1 - i } else { i };
        nth_subnet(pool, prefix, i as u32)
    };
    (0..count).map(pick).find(|n| !leases.iter().any(|l| overlaps(*n, l.net))).ok_or(exhausted)
}

/// Checks that `net` (an explicitly requested subnet) lies in the pool and overlaps no lease.
pub fn check_subnet(pool: Ipv4Net, net: Ipv4Net, leases: &[Lease]) -> Result<(), AddrError> {
    if !pool.contains(&net.trunc()) {
        return Err(AddrError::OutsidePool { address: net, pool });
    }
    match leases.iter().find(|l| overlaps(net.trunc(), l.net)) {
        Some(l) => Err(AddrError::Overlaps { address: net, leased: l.net, owner: l.owner.clone() }),
        None => Ok(()),
    }
}

/// A veth machine's addresses: a fresh /30 from the pool, or the subnet of `--address`
/// (with `--gateway`, or else the subnet's first other host, as the host side).
pub fn point_to_point(
    pool: Ipv4Net,
    leases: &[Lease],
    address: Option<Ipv4Net>,
    gateway: Option<Ipv4Addr>,
) -> Result<PointToPoint, AddrError> {
    match address {
        None => {
            let subnet = allocate_subnet(pool, VETH_PREFIX, leases, false)?;
            let host = Ipv4Net::new(host_n(subnet, 1), VETH_PREFIX).expect("valid prefix");
            let guest = Ipv4Net::new(host_n(subnet, 2), VETH_PREFIX).expect("valid prefix");
            Ok(PointToPoint { subnet, host, guest })
        }
        Some(a) => {
            let subnet = a.trunc();
            check_subnet(pool, a, leases)?;
            let gw = gateway.unwrap_or_else(|| {
                let first = host_n(subnet, if a.prefix_len() >= 31 { 0 } else { 1 });
                if first == a.addr() { next_host(subnet, first) } else { first }
            });
            let host = Ipv4Net::new(gw, a.prefix_len()).expect("valid prefix");
            Ok(PointToPoint { subnet, host, guest: a })
        }
    }
}

fn host_n(subnet: Ipv4Net, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + n)
}

fn next_host(subnet: Ipv4Net, ip: Ipv4Addr) -> Ipv4Addr {
    let next = Ipv4Addr::from(u32::from(ip) + 1);
    if is_host_of(next, subnet) { next } else { host_n(subnet, 0) }
}

/// A free host address of a shared segment (zone or bridge): the lowest one nobody uses, or
/// the requested one after checking it is inside and free. `used` holds the bridge's own
/// address(es) and the other machines'.
pub fn segment_host(
    subnet: Ipv4Net,
    owner: &str,
    used: &[(Ipv4Addr, String)],
    requested: Option<Ipv4Addr>,
) -> Result<Ipv4Addr, AddrError> {
    let holder = |ip: Ipv4Addr| used.iter().find(|(u, _)| *u == ip).map(|(_, o)| o.clone());
    if let Some(ip) = requested {
        if !is_host_of(ip, subnet) {
            return Err(AddrError::OutsideSubnet { address: ip, subnet, owner: owner.to_owned() });
        }
        return match holder(ip) {
            Some(o) => Err(AddrError::InUse { address: ip, owner: o }),
            None => Ok(ip),
        };
    }
    subnet
        .hosts()
        .find(|ip| holder(*ip).is_none())
        .ok_or_else(|| AddrError::SubnetFull { subnet, owner: owner.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn lease(s: &str) -> Lease {
        Lease { net: net(s), owner: format!("machine {s}") }
    }

    #[test]
    fn veth_subnets_from_the_bottom_segments_from_the_top() {
        let pool = net("10.213.0.0/16");
        let p = point_to_point(pool, &[], None, None).unwrap();
        assert_eq!(
            (p.subnet, p.host, p.guest),
            (net("10.213.0.0/30"), net("10.213.0.1/30"), net("10.213.0.2/30"))
        );
        let taken = [lease("10.213.0.0/30"), lease("10.213.0.8/30")];
        assert_eq!(point_to_point(pool, &taken, None, None).unwrap().subnet, net("10.213.0.4/30"));
        assert_eq!(allocate_subnet(pool, 24, &taken, true).unwrap(), net("10.213.255.0/24"));
        let taken = [lease("10.213.255.0/24"), lease("10.213.254.7/32")];
        assert_eq!(allocate_subnet(pool, 24, &taken, true).unwrap(), net("10.213.253.0/24"));
    }

    #[test]
    fn explicit_addresses() {
        let pool = net("10.213.0.0/16");
        let p = point_to_point(pool, &[], Some(net("10.213.7.6/30")), None).unwrap();
        assert_eq!((p.subnet, p.host), (net("10.213.7.4/30"), net("10.213.7.5/30")));
        let p = point_to_point(pool, &[], Some(net("10.213.7.5/30")), None).unwrap();
        assert_eq!(p.host, net("10.213.7.6/30"));
        let p = point_to_point(pool, &[], Some(net("10.213.7.9/24")), Some("10.213.7.200".parse().unwrap()))
            .unwrap();
        assert_eq!(p.host, net("10.213.7.200/24"));
        let p = point_to_point(pool, &[], Some(net("10.213.7.1/31")), None).unwrap();
        assert_eq!(p.host, net("10.213.7.0/31"));
        assert_eq!(
            point_to_point(pool, &[], Some(net("10.99.0.2/30")), None).unwrap_err().to_string(),
            "address 10.99.0.2/30 is outside the address pool 10.213.0.0/16"
        );
        let taken = [Lease { net: net("10.213.0.0/30"), owner: "machine a".into() }];
        assert_eq!(
            point_to_point(pool, &taken, Some(net("10.213.0.2/30")), None).unwrap_err().to_string(),
            "address 10.213.0.2/30 overlaps 10.213.0.0/30, leased to machine a"
        );
        assert!(point_to_point(pool, &[lease("10.213.0.0/24")], Some(net("10.213.0.6/30")), None).is_err());
    }

    #[test]
    fn exhaustion() {
        let pool = net("10.0.0.0/24");
        let taken: Vec<Lease> = (0..64).map(|i| lease(&format!("10.0.0.{}/30", i * 4))).collect();
        assert_eq!(
            point_to_point(pool, &taken, None, None).unwrap_err(),
            AddrError::PoolExhausted { pool, prefix: 30 }
        );
        assert!(allocate_subnet(pool, 24, &[lease("10.0.0.128/30")], true).is_err());
    }

    #[test]
    fn segment_hosts() {
        let subnet = net("10.213.255.0/24");
        let used = vec![("10.213.255.1".parse().unwrap(), "zone lab".to_owned())];
        assert_eq!(
            segment_host(subnet, "zone lab", &used, None).unwrap(),
            "10.213.255.2".parse::<Ipv4Addr>().unwrap()
        );
        let used2 = [used.clone(), vec![("10.213.255.2".parse().unwrap(), "machine a".to_owned())]].concat();
        assert_eq!(
            segment_host(subnet, "zone lab", &used2, None).unwrap(),
            "10.213.255.3".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(
            segment_host(subnet, "zone lab", &used2, Some("10.213.255.2".parse().unwrap()))
                .unwrap_err()
                .to_string(),
            "address 10.213.255.2 is already used by machine a"
        );
        assert_eq!(
            segment_host(subnet, "zone lab", &used2, Some("10.213.254.2".parse().unwrap()))
                .unwrap_err()
                .to_string(),
            "address 10.213.254.2 is outside the subnet 10.213.255.0/24 of zone lab"
        );
        assert!(segment_host(subnet, "zone lab", &used2, Some("10.213.255.255".parse().unwrap())).is_err());
        let tiny = net("10.0.0.0/30");
        let full = vec![
            ("10.0.0.1".parse().unwrap(), "x".to_owned()),
            ("10.0.0.2".parse().unwrap(), "y".to_owned()),
        ];
        assert!(matches!(segment_host(tiny, "zone t", &full, None), Err(AddrError::SubnetFull { .. })));
    }
}
