//! Outbound NAT and port forwards in one nftables table owned by mctl, `table ip mctl`.
//!
//! The table's rules are fixed; machines only add and remove set elements, each tagged with
//! a `comment "machine NAME"`:
//! - `set guests`: machine addresses; `postrouting` masquerades traffic from them that goes to
//!   anything but another machine, and traffic from 127.0.0.0/8 to them (port forwards used
//!   from the host's own localhost, once DNAT sent them out of the host-side link);
//! - `map ports`: `proto . host port : machine address . machine port`; `prerouting` (traffic
//!   arriving from outside) and `output` (the host's own traffic, including to 127.0.0.1) DNAT
//!   anything addressed to a local address of the host through it;
//! - `chain loopback_guard`: forwards from the host's localhost need `route_localnet` on the
//!   host side of the link, which would also let the guest (and anyone on a user's bridge) send
//!   packets to 127.0.0.1 and reach services the host binds to loopback only. Before conntrack
//!   and NAT (priority raw) every packet for 127.0.0.0/8 that did not arrive on `lo` is
//!   dropped; replies to forwarded localhost connections still carry the host side's address
//!   at that point, so forwards keep working.
//!
//! A machine's teardown deletes exactly its elements (their keys are unique to it: its
//! address, its host ports); the launcher that removes the last user deletes the table. The
//! table is created by the first user. All of this runs under the state directory's lock.
//!
//! The changes go to the kernel as nf_tables netlink batches built here
//! ([`crate::sys::nfnetlink`]), not through libnftables or the `nft` binary: `nft`'s fork and
//! exec cost about 4 ms per change, and libnftables, in-process, still builds a context,
//! fetches the ruleset into its caches and parses text, 1 to 2 ms of a veth machine's start.
//! The messages are those nft 1.0.6 sends for [`table_commands`] and [`add_commands`] (the
//! same table in nft's language), user data included, so `nft list` shows the table as
//! declared there; a test compares the two listings.

use std::fmt::Write;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::sys::nfnetlink::{
    self, Attrs, Batch, NF_ACCEPT, NFPROTO_IPV4, NFT_SET_MAP, NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL, REG_1,
    REG32_01, UserData, attr, expr, msg,
};

use super::spec::PortForward;

/// The table's name (family `ip`).
pub const TABLE: &str = "mctl";

/// An nftables change that failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot {step} for machine {machine} in nftables table ip {TABLE}: {refused}")]
pub struct NatError {
    /// What was being done.
    step: &'static str,
    /// Machine whose elements (commented `machine NAME`) were being changed.
    machine: String,
    /// The message the kernel refused, and why.
    refused: nfnetlink::BatchError,
}

/// One machine's entries in the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatEntries {
    /// Machine name (element comments).
    pub machine: String,
    /// The guest address to masquerade and forward to.
    pub guest: Ipv4Addr,
    /// Forwards to it.
    pub ports: Vec<PortForward>,
}

const TABLE_COMMENT: &str = "NAT and port forwards of mctl machines; managed by mctl";
const GUESTS_COMMENT: &str = "machine addresses";
const PORTS_COMMENT: &str = "host port to machine address and port";
const LOOPBACK_GUARD_COMMENT: &str = "route_localnet lets 127.0.0.0/8 in from outside: only lo may";

/// The table with its sets, chains and fixed rules in nft's language: what [`add`] makes
/// when the table is absent (`create` fails otherwise, so rules are never added twice).
pub fn table_commands() -> String {
    let t = TABLE;
    format!(
        "create table ip {t} {{ comment \"{TABLE_COMMENT}\"; }}
add set ip {t} guests {{ type ipv4_addr; comment \"{GUESTS_COMMENT}\"; }}
add map ip {t} ports {{ type inet_proto . inet_service : ipv4_addr . inet_service; comment \"{PORTS_COMMENT}\"; }}
add chain ip {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}
add rule ip {t} postrouting ip saddr @guests ip daddr != @guests masquerade
add rule ip {t} postrouting ip saddr 127.0.0.0/8 ip daddr @guests masquerade
add chain ip {t} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}
add rule ip {t} prerouting fib daddr type local dnat ip to meta l4proto . th dport map @ports
add chain ip {t} output {{ type nat hook output priority -100; policy accept; }}
add rule ip {t} output fib daddr type local dnat ip to meta l4proto . th dport map @ports
add chain ip {t} loopback_guard {{ type filter hook prerouting priority raw; policy accept; comment \"{LOOPBACK_GUARD_COMMENT}\"; }}
add rule ip {t} loopback_guard iifname != \"lo\" ip daddr 127.0.0.0/8 drop
"
    )
}

/// `e`'s elements in nft's language, as [`add`] adds them.
pub fn add_commands(e: &NatEntries) -> String {
    let t = TABLE;
    let m = &e.machine;
    let mut s = format!("add element ip {t} guests {{ {} comment \"machine {m}\" }}\n", e.guest);
    for p in &e.ports {
        let _ = writeln!(
            s,
            "create element ip {t} ports {{ {} . {} comment \"machine {m}\" : {} . {} }}",
            p.proto, p.host_port, e.guest, p.guest_port
        );
    }
    s
}

const GUESTS: &str = "guests";
const PORTS: &str = "ports";
/// Ids of the sets within a batch that makes them (rules and elements refer to them so).
const GUESTS_ID: u32 = 1;
const PORTS_ID: u32 = 2;

/// nft's user data types: `NFTNL_UDATA_{TABLE,CHAIN,SET_ELEM}_COMMENT` are 0; sets carry key
/// and data byte orders (0, 1), type hints (3, 4), whether data is an interval (6) and
/// their comment (7).
const UDATA_COMMENT: u8 = 0;
const UDATA_SET_KEYBYTEORDER: u8 = 0;
const UDATA_SET_DATABYTEORDER: u8 = 1;
const UDATA_SET_KEY_TYPEOF: u8 = 3;
const UDATA_SET_DATA_TYPEOF: u8 = 4;
const UDATA_SET_DATA_INTERVAL: u8 = 6;
const UDATA_SET_COMMENT: u8 = 7;
/// nft's `BYTEORDER_BIG_ENDIAN`, and its "no single byte order" of a concatenation.
const BIG_ENDIAN: u32 = 2;
const MIXED_ORDER: u32 = 0;
/// The type hint nft 1.0.6 records for both halves of the `ports` map, which its listing
/// reads back: nested user data, a record 0 holding 13 (`inet_service`, the last part) and an
/// empty record 1.
fn concat_typeof() -> UserData {
    UserData::new().push(0, &13u32.to_ne_bytes()).push(1, &[])
}
/// nft's data types: `ipv4_addr`, and the concatenations `inet_proto . inet_service` and
/// `ipv4_addr . inet_service` (6 bits per part).
const TYPE_IPV4_ADDR: u32 = 7;
const TYPE_PROTO_SERVICE: u32 = (12 << 6) | 13;
const TYPE_ADDR_SERVICE: u32 = (7 << 6) | 13;
/// Hooks (`NF_INET_*`) and priorities of the chains.
const HOOK_PRE_ROUTING: u32 = 0;
const HOOK_LOCAL_OUT: u32 = 3;
const HOOK_POST_ROUTING: u32 = 4;
const PRIORITY_RAW: i32 = -300;
const PRIORITY_DSTNAT: i32 = -100;
const PRIORITY_SRCNAT: i32 = 100;
/// `RTN_LOCAL`, the route type `fib daddr type local` compares with.
const RTN_LOCAL: u32 = 2;

fn chain(b: &mut Batch, name: &str, kind: &str, hook: u32, priority: i32, comment: Option<&str>) {
    let hook =
        Attrs::new().be32(attr::HOOK_HOOKNUM, hook).bytes(attr::HOOK_PRIORITY, &priority.to_be_bytes());
    let mut a = Attrs::new()
        .str(attr::CHAIN_TABLE, TABLE)
        .str(attr::CHAIN_NAME, name)
        .str(attr::CHAIN_TYPE, kind)
        .be32(attr::CHAIN_POLICY, NF_ACCEPT)
        .nest(attr::CHAIN_HOOK, hook);
    if let Some(c) = comment {
        a = a.bytes(attr::CHAIN_USERDATA, UserData::new().comment(UDATA_COMMENT, c).as_bytes());
    }
    b.push(msg::NEWCHAIN, NLM_F_CREATE, NFPROTO_IPV4, a, format!("add chain {name}"));
}

fn rule(b: &mut Batch, chain: &str, exprs: &[Attrs]) {
    let a = Attrs::new()
        .str(attr::RULE_TABLE, TABLE)
        .str(attr::RULE_CHAIN, chain)
        .nest(attr::RULE_EXPRESSIONS, expr::list(exprs));
    b.push(
        msg::NEWRULE,
        NLM_F_CREATE | NLM_F_APPEND,
        NFPROTO_IPV4,
        a,
        format!("add a rule to chain {chain}"),
    );
}

/// `ip saddr`, `ip daddr`: the addresses' offsets in the IPv4 header.
const SADDR: u32 = 12;
const DADDR: u32 = 16;

/// `fib daddr type local dnat ip to meta l4proto . th dport map @ports`
fn dnat_rule(b: &mut Batch, chain: &str) {
    rule(
        b,
        chain,
        &[
            expr::fib_daddr_type(REG_1),
            expr::cmp(REG_1, expr::EQ, &RTN_LOCAL.to_ne_bytes()),
            expr::meta(expr::META_L4PROTO, REG_1),
            expr::payload(expr::TRANSPORT_HEADER, 2, 2, REG32_01),
            expr::lookup(PORTS, PORTS_ID, REG_1, Some(REG_1), false),
            expr::dnat_ipv4(REG_1, REG32_01),
        ],
    );
}

/// Appends the messages that make the table, its sets, chains and rules ([`table_commands`]).
fn push_table(b: &mut Batch) {
    let comment = UserData::new().comment(UDATA_COMMENT, TABLE_COMMENT);
    let table = Attrs::new()
        .str(attr::TABLE_NAME, TABLE)
        .be32(attr::TABLE_FLAGS, 0)
        .bytes(attr::TABLE_USERDATA, comment.as_bytes());
    // `create`: fails if it exists, so the rules are never added twice.
    b.push(msg::NEWTABLE, NLM_F_EXCL, NFPROTO_IPV4, table, format!("create table ip {TABLE}"));
    let guests = Attrs::new()
        .str(attr::SET_TABLE, TABLE)
        .str(attr::SET_NAME, GUESTS)
        .be32(attr::SET_FLAGS, 0)
        .be32(attr::SET_KEY_TYPE, TYPE_IPV4_ADDR)
        .be32(attr::SET_KEY_LEN, 4)
        .be32(attr::SET_ID, GUESTS_ID)
        .bytes(
            attr::SET_USERDATA,
            UserData::new()
                .push(UDATA_SET_KEYBYTEORDER, &BIG_ENDIAN.to_ne_bytes())
                .comment(UDATA_SET_COMMENT, GUESTS_COMMENT)
                .as_bytes(),
        );
    b.push(msg::NEWSET, NLM_F_CREATE, NFPROTO_IPV4, guests, format!("add set {GUESTS}"));
    let ports = Attrs::new()
        .str(attr::SET_TABLE, TABLE)
        .str(attr::SET_NAME, PORTS)
        .be32(attr::SET_FLAGS, NFT_SET_MAP)
        .be32(attr::SET_KEY_TYPE, TYPE_PROTO_SERVICE)
        .be32(attr::SET_KEY_LEN, 8)
        .be32(attr::SET_DATA_TYPE, TYPE_ADDR_SERVICE)
        .be32(attr::SET_DATA_LEN, 8)
        .be32(attr::SET_ID, PORTS_ID)
        .bytes(
            attr::SET_USERDATA,
            UserData::new()
                .push(UDATA_SET_KEYBYTEORDER, &MIXED_ORDER.to_ne_bytes())
                .push(UDATA_SET_DATABYTEORDER, &MIXED_ORDER.to_ne_bytes())
                .push(UDATA_SET_KEY_TYPEOF, concat_typeof().as_bytes())
                .push(UDATA_SET_DATA_TYPEOF, concat_typeof().as_bytes())
                .push(UDATA_SET_DATA_INTERVAL, &0u32.to_ne_bytes())
                .comment(UDATA_SET_COMMENT, PORTS_COMMENT)
                .as_bytes(),
        );
    b.push(msg::NEWSET, NLM_F_CREATE, NFPROTO_IPV4, ports, format!("add map {PORTS}"));
    let saddr = || expr::payload(expr::NETWORK_HEADER, SADDR, 4, REG_1);
    let daddr = || expr::payload(expr::NETWORK_HEADER, DADDR, 4, REG_1);
    // The first byte of the address, for 127.0.0.0/8.
    let daddr_net8 = || expr::payload(expr::NETWORK_HEADER, DADDR, 1, REG_1);
    let saddr_net8 = || expr::payload(expr::NETWORK_HEADER, SADDR, 1, REG_1);
    let is_loopback = || expr::cmp(REG_1, expr::EQ, &[127]);
    let in_guests = |invert| expr::lookup(GUESTS, GUESTS_ID, REG_1, None, invert);
    chain(b, "postrouting", "nat", HOOK_POST_ROUTING, PRIORITY_SRCNAT, None);
    rule(b, "postrouting", &[saddr(), in_guests(false), daddr(), in_guests(true), expr::masquerade()]);
    rule(b, "postrouting", &[saddr_net8(), is_loopback(), daddr(), in_guests(false), expr::masquerade()]);
    chain(b, "prerouting", "nat", HOOK_PRE_ROUTING, PRIORITY_DSTNAT, None);
    dnat_rule(b, "prerouting");
    chain(b, "output", "nat", HOOK_LOCAL_OUT, PRIORITY_DSTNAT, None);
    dnat_rule(b, "output");
    chain(b, "loopback_guard", "filter", HOOK_PRE_ROUTING, PRIORITY_RAW, Some(LOOPBACK_GUARD_COMMENT));
    let mut lo = [0u8; 16];
    lo[..2].copy_from_slice(b"lo");
    rule(
        b,
        "loopback_guard",
        &[
            expr::meta(expr::META_IIFNAME, REG_1),
            expr::cmp(REG_1, expr::NEQ, &lo),
            daddr_net8(),
            is_loopback(),
            expr::drop(),
        ],
    );
}

/// A port forward's key, `proto . host port`, and value, `guest . guest port`, as nft lays
/// out concatenations: each part in 4-byte registers, a protocol number in host order.
fn port_key(p: &PortForward) -> [u8; 8] {
    let mut k = [0u8; 8];
    k[..4].copy_from_slice(&u32::from(p.proto.number()).to_ne_bytes());
    k[4..6].copy_from_slice(&p.host_port.to_be_bytes());
    k
}

fn port_value(guest: Ipv4Addr, p: &PortForward) -> [u8; 8] {
    let mut v = [0u8; 8];
    v[..4].copy_from_slice(&guest.octets());
    v[4..6].copy_from_slice(&p.guest_port.to_be_bytes());
    v
}

/// One element of set `set` (also by its id within the batch, when given).
fn elements(set: &str, set_id: Option<u32>, element: Attrs) -> Attrs {
    let mut a = Attrs::new().str(attr::SET_ELEM_LIST_TABLE, TABLE).str(attr::SET_ELEM_LIST_SET, set);
    if let Some(id) = set_id {
        a = a.be32(attr::SET_ELEM_LIST_SET_ID, id);
    }
    a.nest(attr::SET_ELEM_LIST_ELEMENTS, Attrs::new().nest(attr::LIST_ELEM, element))
}

/// Appends the messages that add `e`'s elements ([`add_commands`]); `create` for ports, so
/// a host port someone else forwards fails.
fn push_elements(b: &mut Batch, e: &NatEntries) {
    let comment = UserData::new().comment(UDATA_COMMENT, &format!("machine {}", e.machine));
    let guest = Attrs::new()
        .data(attr::SET_ELEM_KEY, &e.guest.octets())
        .bytes(attr::SET_ELEM_USERDATA, comment.as_bytes());
    b.push(
        msg::NEWSETELEM,
        NLM_F_CREATE,
        NFPROTO_IPV4,
        elements(GUESTS, Some(GUESTS_ID), guest),
        format!("add {} to set {GUESTS}", e.guest),
    );
    for p in &e.ports {
        let element = Attrs::new()
            .data(attr::SET_ELEM_KEY, &port_key(p))
            .data(attr::SET_ELEM_DATA, &port_value(e.guest, p))
            .bytes(attr::SET_ELEM_USERDATA, comment.as_bytes());
        b.push(
            msg::NEWSETELEM,
            NLM_F_CREATE | NLM_F_EXCL,
            NFPROTO_IPV4,
            elements(PORTS, Some(PORTS_ID), element),
            format!("forward host port {} {}", p.proto, p.host_port),
        );
    }
}

/// Appends the messages that delete `e`'s elements; `only` picks some by index (0 the guest
/// address, then the ports).
fn push_deletions(b: &mut Batch, e: &NatEntries, only: Option<usize>) {
    let by_name = |set: &str, key: &[u8]| elements(set, None, Attrs::new().data(attr::SET_ELEM_KEY, key));
    if only.is_none_or(|i| i == 0) {
        b.push(
            msg::DELSETELEM,
            0,
            NFPROTO_IPV4,
            by_name(GUESTS, &e.guest.octets()),
            format!("delete {} from set {GUESTS}", e.guest),
        );
    }
    for (i, p) in e.ports.iter().enumerate() {
        if only.is_none_or(|o| o == i + 1) {
            b.push(
                msg::DELSETELEM,
                0,
                NFPROTO_IPV4,
                by_name(PORTS, &port_key(p)),
                format!("delete the forward of host port {} {}", p.proto, p.host_port),
            );
        }
    }
}

/// Sends the batch `fill` makes over `sock`.
fn send(
    sock: &OwnedFd,
    step: &'static str,
    machine: &str,
    fill: impl FnOnce(&mut Batch),
) -> Result<(), NatError> {
    let mut b = Batch::new();
    fill(&mut b);
    nfnetlink::send(sock, b).map_err(|refused| NatError { step, machine: machine.to_owned(), refused })
}

fn socket(step: &'static str, machine: &str) -> Result<OwnedFd, NatError> {
    nfnetlink::socket().map_err(|error| NatError {
        step,
        machine: machine.to_owned(),
        refused: nfnetlink::BatchError {
            index: None,
            step: "open an nf_tables netlink socket".into(),
            error,
        },
    })
}

/// Whether `e` failed at the table itself (its creation, or finding it): the premise of the
/// batch was wrong, not its entries.
fn table_was_wrong(e: &NatError, skeleton: usize) -> bool {
    match e.refused.index {
        Some(i) if i < skeleton => e.refused.error.raw_os_error() == Some(libc::EEXIST),
        Some(_) => e.refused.error.raw_os_error() == Some(libc::ENOENT),
        None => false,
    }
}

/// Adds a machine's entries. `table_exists` is what the state files say (another live
/// machine uses the table); when that is wrong (someone flushed the ruleset, or a killed
/// launcher left the table) the other way is tried, in one batch each time.
///
/// Returns the socket, to be handed to [`remove`] at the machine's end: its release waits for
/// nf_tables' destroy work (an RCU grace period, 1 to 15 ms), which the machine's start should
/// not, and [`remove`] has it released by a child.
pub fn add(e: &NatEntries, table_exists: bool) -> Result<OwnedFd, NatError> {
    const STEP: &str = "add NAT and port-forward entries";
    let sock = socket(STEP, &e.machine)?;
    // Also how many of the batch's messages make the table.
    let attempt = |with_table: bool| {
        let mut skeleton = 0;
        let sent = send(&sock, STEP, &e.machine, |b| {
            if with_table {
                push_table(b);
                skeleton = b.len();
            }
            push_elements(b, e);
        });
        (sent, skeleton)
    };
    match attempt(!table_exists) {
        (Err(first), skeleton) if table_was_wrong(&first, skeleton) => attempt(table_exists).0,
        (other, _) => other,
    }?;
    Ok(sock)
}

/// Releases an nf_tables socket in a short-lived child a grace period from now, so that
/// neither the caller nor the host's link changes wait for the destroy work its release
/// flushes (see [`hold_and_exit_child`](crate::sys::linux::hold_and_exit_child)).
pub fn release_later(sock: OwnedFd) {
    crate::sys::linux::hold_and_exit_child(&[sock.as_raw_fd()]);
}

/// Removes a machine's entries, or the whole table when `last` (no other machine uses it),
/// over `sock` ([`add`]'s) or a socket of its own. Entries already gone are fine: this also
/// runs for half-done setups and stale states. Returns the socket with the result, to be
/// released with [`release_later`] (or by a child the caller forks anyway).
pub fn remove(e: &NatEntries, last: bool, sock: Option<OwnedFd>) -> (Option<OwnedFd>, Result<(), NatError>) {
    let sock = match sock.map_or_else(|| socket("delete NAT and port-forward entries", &e.machine), Ok) {
        Ok(s) => s,
        Err(err) => return (None, Err(err)),
    };
    let result = remove_over(&sock, e, last);
    (Some(sock), result)
}

fn remove_over(sock: &OwnedFd, e: &NatEntries, last: bool) -> Result<(), NatError> {
    const STEP: &str = "delete NAT and port-forward entries";
    if last {
        return nfnetlink::delete_table(sock, NFPROTO_IPV4, TABLE).map(drop).map_err(|error| NatError {
            step: STEP,
            machine: e.machine.clone(),
            refused: nfnetlink::BatchError { index: None, step: format!("delete table ip {TABLE}"), error },
        });
    }
    let first = match send(sock, STEP, &e.machine, |b| push_deletions(b, e, None)) {
        Ok(()) => return Ok(()),
        Err(err) => err,
    };
    // One batch fails as a whole if any element is missing: retry one by one.
    if first.refused.error.raw_os_error() != Some(libc::ENOENT) {
        return Err(first);
    }
    let mut result = Ok(());
    for i in 0..=e.ports.len() {
        match send(sock, STEP, &e.machine, |b| push_deletions(b, e, Some(i))) {
            Err(err) if err.refused.error.raw_os_error() != Some(libc::ENOENT) => result = Err(err),
            _ => {}
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::spec::parse_port;

    #[test]
    fn element_commands_are_tagged_and_exact() {
        let e = NatEntries {
            machine: "web".into(),
            guest: "10.213.0.2".parse().unwrap(),
            ports: vec![parse_port("8080:80").unwrap(), parse_port("udp:53").unwrap()],
        };
        assert_eq!(
            add_commands(&e),
            "add element ip mctl guests { 10.213.0.2 comment \"machine web\" }\n\
             create element ip mctl ports { tcp . 8080 comment \"machine web\" : 10.213.0.2 . 80 }\n\
             create element ip mctl ports { udp . 53 comment \"machine web\" : 10.213.0.2 . 53 }\n"
        );
        assert!(table_commands().starts_with("create table ip mctl"));
    }
}
