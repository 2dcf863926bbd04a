//! nf_tables over its netlink socket directly, for the one change on every machine's path that
//! needs no expressions: deleting a table. libnftables (see [`super::linux::nft_run`]) builds
//! a context, fetches the ruleset into caches of hash tables (a few hundred pages to fault in)
//! and parses the command; three fixed messages do the same here in a tenth of the time.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::net::netlink::{self, SocketAddrNetlink};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_DELTABLE: u16 = 2;
const NFTA_TABLE_NAME: u16 = 1;
/// The `ip` family of nf_tables.
pub const NFPROTO_IPV4: u8 = 2;

/// Appends one netlink message: header, `nfgenmsg` (family, version 0, resource id in network
/// order) and the attributes, each padded to 4 bytes.
fn push_message(
    buf: &mut Vec<u8>,
    kind: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    attrs: &[(u16, &[u8])],
) {
    let start = buf.len();
    buf.extend_from_slice(&[0; NLMSG_HDRLEN]);
    buf.extend_from_slice(&[family, 0]);
    buf.extend_from_slice(&res_id.to_be_bytes());
    for (kind, value) in attrs {
        let len = u16::try_from(4 + value.len()).expect("a short attribute");
        buf.extend_from_slice(&len.to_ne_bytes());
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(value);
        buf.resize(buf.len().next_multiple_of(4), 0);
    }
    let len = u32::try_from(buf.len() - start).expect("a short message");
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    buf[start + 4..start + 6].copy_from_slice(&kind.to_ne_bytes());
    buf[start + 6..start + 8].copy_from_slice(&flags.to_ne_bytes());
    buf[start + 8..start + 12].copy_from_slice(&seq.to_ne_bytes());
}

/// The batch that deletes table `name` of `family` (an `NFPROTO_*`), acknowledged as `seq`.
fn delete_table_batch(family: u8, name: &str, seq: u32) -> Vec<u8> {
    let mut name0 = name.as_bytes().to_vec();
    name0.push(0);
    let mut buf = Vec::with_capacity(64);
    push_message(&mut buf, NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq - 1, 0, NFNL_SUBSYS_NFTABLES, &[]);
    push_message(
        &mut buf,
        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELTABLE,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        family,
        0,
        &[(NFTA_TABLE_NAME, &name0)],
    );
    push_message(&mut buf, NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq + 1, 0, NFNL_SUBSYS_NFTABLES, &[]);
    buf
}

/// The answer to message `seq` among `buf`'s messages: `Some(0)` for an acknowledgement,
/// `Some(errno)` for an error, `None` if it is not there.
fn answer_to(buf: &[u8], seq: u32) -> Option<i32> {
    let mut rest = buf;
    while rest.len() >= NLMSG_HDRLEN {
        let word = |at: usize| u32::from_ne_bytes(rest[at..at + 4].try_into().expect("4 bytes"));
        let len = usize::try_from(word(0)).ok()?;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return None;
        }
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        if kind == NLMSG_ERROR && word(8) == seq && len >= NLMSG_HDRLEN + 4 {
            let error = i32::from_ne_bytes(rest[NLMSG_HDRLEN..NLMSG_HDRLEN + 4].try_into().expect("4 bytes"));
            return Some(-error);
        }
        rest = &rest[len.next_multiple_of(4).min(rest.len())..];
    }
    None
}

/// Deletes nf_tables table `name` of `family` (an `NFPROTO_*`) in the calling thread's network
/// namespace. `Ok(None)` if there was no such table; otherwise the socket, whose release
/// flushes nf_tables' destroy work (a grace period): the caller decides who closes it.
pub fn delete_table(family: u8, name: &str) -> io::Result<Option<OwnedFd>> {
    let sock = rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::RAW,
        SocketFlags::CLOEXEC,
        Some(netlink::NETFILTER),
    )?;
    let kernel = SocketAddrNetlink::new(0, 0);
    let seq = 2;
    rustix::net::sendto(sock.as_fd(), &delete_table_batch(family, name, seq), SendFlags::empty(), &kernel)?;
    let mut buf = vec![0u8; 8192];
    loop {
        let (n, _) = rustix::net::recv(sock.as_fd(), &mut buf, RecvFlags::empty())?;
        match answer_to(&buf[..n], seq) {
            None => continue,
            Some(0) => return Ok(Some(sock)),
            Some(libc::ENOENT) => return Ok(None),
            Some(errno) => return Err(io::Error::from_raw_os_error(errno)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batch_is_begin_deltable_end() {
        let b = delete_table_batch(2, "mctl", 7);
        // Three messages of 20, 32 (20 + an 8-byte name padded from 4 + 5) and 20 bytes.
        assert_eq!(b.len(), 20 + 32 + 20);
        assert_eq!(&b[0..4], &20u32.to_ne_bytes());
        assert_eq!(&b[4..6], &16u16.to_ne_bytes());
        assert_eq!(&b[8..12], &6u32.to_ne_bytes());
        assert_eq!(&b[16..20], &[0, 0, 0, 10], "AF_UNSPEC, version 0, nftables in network order");
        let del = &b[20..52];
        assert_eq!(&del[0..4], &32u32.to_ne_bytes());
        assert_eq!(&del[4..6], &0x0a02u16.to_ne_bytes());
        assert_eq!(&del[6..8], &5u16.to_ne_bytes(), "request with acknowledgement");
        assert_eq!(&del[8..12], &7u32.to_ne_bytes());
        assert_eq!(&del[16..20], &[2, 0, 0, 0], "NFPROTO_IPV4");
        assert_eq!(&del[20..24], [9u16.to_ne_bytes(), 1u16.to_ne_bytes()].concat(), "name, 4 + 5 bytes");
        assert_eq!(&del[24..32], b"mctl\0\0\0\0");
        assert_eq!(&b[56..58], &17u16.to_ne_bytes());
    }

    #[test]
    fn answers_are_found_by_sequence_number() {
        let mut buf = Vec::new();
        let ack = |seq: u32, error: i32| {
            let mut m = Vec::new();
            m.extend_from_slice(&36u32.to_ne_bytes());
            m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            m.extend_from_slice(&0u16.to_ne_bytes());
            m.extend_from_slice(&seq.to_ne_bytes());
            m.extend_from_slice(&0u32.to_ne_bytes());
            m.extend_from_slice(&error.to_ne_bytes());
            m.extend_from_slice(&[0; 16]);
            m
        };
        buf.extend(ack(1, -libc::EPERM));
        buf.extend(ack(2, 0));
        assert_eq!(answer_to(&buf, 2), Some(0));
        assert_eq!(answer_to(&buf, 1), Some(libc::EPERM));
        assert_eq!(answer_to(&buf, 3), None);
        assert_eq!(answer_to(&buf[..30], 2), None, "a truncated message is no answer");
    }
}
