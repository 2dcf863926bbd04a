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
//! Why libnftables in-process (`crate::sys::linux::nft_run`) and not the `nftables` crate or
//! a netlink crate: the `nftables` crate drives the `nft` binary, whose fork and exec cost
//! about 4 ms per change, most of this module's budget; netlink crates (rustables) would mean
//! re-encoding `fib`, concatenated maps and `masquerade` expressions by hand. libnftables is
//! the library `nft` itself is built on (same package, same language, atomic batches), so
//! each change is one in-process call of about a millisecond. The exception is the deletion
//! of the table, which needs no expressions and is on every veth machine's way out: three
//! fixed netlink messages ([`crate::sys::nfnetlink`]) instead of a context and its caches.

use std::fmt::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

use crate::sys::linux::{NftError, nft_run};

use super::spec::PortForward;

/// The table's name (family `ip`).
pub const TABLE: &str = "mctl";

/// An nftables change that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NatError {
    /// libnftables is missing.
    #[error("cannot use nftables for machine {machine}: {message} (is the nftables package installed?)")]
    Unavailable {
        /// Machine the change or preload was for (used in the message only).
        machine: String,
        /// The loader's message.
        message: String,
    },
    /// nft refused a batch.
    #[error("cannot {step} for machine {machine} in nftables table ip {TABLE}: {message}")]
    Failed {
        /// What was being done.
        step: &'static str,
        /// Machine whose elements (commented `machine NAME`) were being changed.
        machine: String,
        /// nft's message.
        message: String,
    },
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

/// The table with its sets, chains and fixed rules, created only when absent (`create` fails
/// otherwise, so rules are never added twice).
pub fn table_commands() -> String {
    let t = TABLE;
    format!(
        "create table ip {t} {{ comment \"NAT and port forwards of mctl machines; managed by mctl\"; }}
add set ip {t} guests {{ type ipv4_addr; comment \"machine addresses\"; }}
add map ip {t} ports {{ type inet_proto . inet_service : ipv4_addr . inet_service; comment \"host port to machine address and port\"; }}
add chain ip {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}
add rule ip {t} postrouting ip saddr @guests ip daddr != @guests masquerade
add rule ip {t} postrouting ip saddr 127.0.0.0/8 ip daddr @guests masquerade
add chain ip {t} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}
add rule ip {t} prerouting fib daddr type local dnat ip to meta l4proto . th dport map @ports
add chain ip {t} output {{ type nat hook output priority -100; policy accept; }}
add rule ip {t} output fib daddr type local dnat ip to meta l4proto . th dport map @ports
add chain ip {t} loopback_guard {{ type filter hook prerouting priority raw; policy accept; comment \"route_localnet lets 127.0.0.0/8 in from outside: only lo may\"; }}
add rule ip {t} loopback_guard iifname != \"lo\" ip daddr 127.0.0.0/8 drop
"
    )
}

/// Adds `e`'s elements; `create` for ports, so a host port someone else forwards fails.
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

/// Deletes `e`'s elements, one command each.
pub fn delete_commands(e: &NatEntries) -> Vec<String> {
    let t = TABLE;
    let mut v = vec![format!("delete element ip {t} guests {{ {} }}", e.guest)];
    v.extend(
        e.ports.iter().map(|p| format!("delete element ip {t} ports {{ {} . {} }}", p.proto, p.host_port)),
    );
    v
}

/// Loads libnftables ahead of the first change (see [`super::begin`]).
pub fn preload(machine: &str) -> Result<(), NatError> {
    crate::sys::linux::nft_preload()
        .map_err(|e| match e {
            NftError::Unavailable(message) | NftError::Failed(message) => message,
        })
        .map_err(|message| NatError::Unavailable { machine: machine.to_owned(), message })
}

fn run(step: &'static str, machine: &str, cmds: &str) -> Result<(), NatError> {
    nft_run(cmds).map_err(|e| match e {
        NftError::Unavailable(message) => NatError::Unavailable { machine: machine.to_owned(), message },
        NftError::Failed(message) => NatError::Failed { step, machine: machine.to_owned(), message },
    })
}

/// Adds a machine's entries. `table_exists` is what the state files say (another live
/// machine uses the table); when that is wrong (someone flushed the ruleset, or a killed
/// launcher left the table) the other way is tried, in one batch each time.
pub fn add(e: &NatEntries, table_exists: bool) -> Result<(), NatError> {
    let elements = add_commands(e);
    let full = table_commands() + &elements;
    let (first, second) = if table_exists { (&elements, &full) } else { (&full, &elements) };
    match run("add NAT and port-forward entries", &e.machine, first) {
        Ok(()) => Ok(()),
        Err(first_err @ NatError::Unavailable { .. }) => Err(first_err),
        Err(first_err) => run("add NAT and port-forward entries", &e.machine, second).map_err(|_| first_err),
    }
}

/// Deletes the table (and with it every entry), directly over netlink: libnftables would take
/// ten times as long on every veth machine's way out. Its destruction completes in the kernel
/// when the socket is released, which a short-lived child does a grace period later, so
/// that neither the launcher nor the host's link changes wait for it (see
/// [`hold_and_exit_child`](crate::sys::linux::hold_and_exit_child)).
fn delete_table(machine: &str) -> Result<(), NatError> {
    match crate::sys::nfnetlink::delete_table(crate::sys::nfnetlink::NFPROTO_IPV4, TABLE) {
        Ok(None) => Ok(()),
        Ok(Some(sock)) => {
            crate::sys::linux::hold_and_exit_child(&[sock.as_raw_fd()]);
            Ok(())
        }
        Err(e) => Err(NatError::Failed {
            step: "delete table",
            machine: machine.to_owned(),
            message: e.to_string(),
        }),
    }
}

/// Removes a machine's entries, or the whole table when `last` (no other machine uses it).
/// Entries already gone are fine: this also runs for half-done setups and stale states.
pub fn remove(e: &NatEntries, last: bool) -> Result<(), NatError> {
    if last {
        return delete_table(&e.machine);
    }
    let cmds = delete_commands(e);
    if run("delete NAT and port-forward entries", &e.machine, &cmds.join("\n")).is_ok() {
        return Ok(());
    }
    // One batch fails as a whole if any element is missing: retry one by one.
    let mut result = Ok(());
    for c in &cmds {
        match run("delete NAT and port-forward entries", &e.machine, c) {
            Err(NatError::Failed { message, .. }) if message.contains("No such file or directory") => {}
            Err(err) => result = Err(err),
            Ok(()) => {}
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
        assert_eq!(
            delete_commands(&e),
            vec![
                "delete element ip mctl guests { 10.213.0.2 }",
                "delete element ip mctl ports { tcp . 8080 }",
                "delete element ip mctl ports { udp . 53 }"
            ]
        );
        assert!(table_commands().starts_with("create table ip mctl"));
    }
}
