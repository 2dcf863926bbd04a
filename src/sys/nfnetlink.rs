//! nf_tables over its netlink socket directly: batches of messages built from attributes, and
//! the expressions mctl's rules use. libnftables would build a context, fetch the ruleset
//! into caches of hash tables (a few hundred pages to fault in) and parse text, about ten
//! times the work of sending the few fixed messages a machine's NAT entries need.
//!
//! Numbers are the kernel's `uapi/linux/netfilter/nf_tables.h` (a stable ABI); values inside
//! attributes are in network byte order, attribute headers in host order.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::net::netlink::{self, SocketAddrNetlink};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLA_F_NESTED: u16 = 0x8000;
/// A request.
pub const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
/// With `NLM_F_CREATE`: fail if it exists (nft's `create`).
pub const NLM_F_EXCL: u16 = 0x200;
/// Create if it does not exist.
pub const NLM_F_CREATE: u16 = 0x400;
/// Rules: append to the chain.
pub const NLM_F_APPEND: u16 = 0x800;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFNL_SUBSYS_NFTABLES: u16 = 10;

/// The `ip` family of nf_tables.
pub const NFPROTO_IPV4: u8 = 2;

/// nf_tables message kinds (`NFT_MSG_*`).
#[allow(missing_docs)]
pub mod msg {
    pub const NEWTABLE: u16 = 0;
    pub const DELTABLE: u16 = 2;
    pub const NEWCHAIN: u16 = 3;
    pub const NEWRULE: u16 = 6;
    pub const NEWSET: u16 = 9;
    pub const NEWSETELEM: u16 = 12;
    pub const DELSETELEM: u16 = 14;
}

/// Attribute numbers (`NFTA_*`), by the object they belong to.
#[allow(missing_docs)]
pub mod attr {
    pub const TABLE_NAME: u16 = 1;
    pub const TABLE_FLAGS: u16 = 2;
    pub const TABLE_USERDATA: u16 = 6;
    pub const CHAIN_TABLE: u16 = 1;
    pub const CHAIN_NAME: u16 = 3;
    pub const CHAIN_HOOK: u16 = 4;
    pub const CHAIN_POLICY: u16 = 5;
    pub const CHAIN_TYPE: u16 = 7;
    pub const CHAIN_USERDATA: u16 = 12;
    pub const HOOK_HOOKNUM: u16 = 1;
    pub const HOOK_PRIORITY: u16 = 2;
    pub const RULE_TABLE: u16 = 1;
    pub const RULE_CHAIN: u16 = 2;
    pub const RULE_EXPRESSIONS: u16 = 4;
    pub const SET_TABLE: u16 = 1;
    pub const SET_NAME: u16 = 2;
    pub const SET_FLAGS: u16 = 3;
    pub const SET_KEY_TYPE: u16 = 4;
    pub const SET_KEY_LEN: u16 = 5;
    pub const SET_DATA_TYPE: u16 = 6;
    pub const SET_DATA_LEN: u16 = 7;
    pub const SET_ID: u16 = 10;
    pub const SET_USERDATA: u16 = 13;
    pub const SET_ELEM_LIST_TABLE: u16 = 1;
    pub const SET_ELEM_LIST_SET: u16 = 2;
    pub const SET_ELEM_LIST_ELEMENTS: u16 = 3;
    pub const SET_ELEM_LIST_SET_ID: u16 = 4;
    pub const SET_ELEM_KEY: u16 = 1;
    pub const SET_ELEM_DATA: u16 = 2;
    pub const SET_ELEM_USERDATA: u16 = 6;
    pub const LIST_ELEM: u16 = 1;
    pub const DATA_VALUE: u16 = 1;
}

/// `NFT_SET_MAP`: the set is a map.
pub const NFT_SET_MAP: u32 = 8;
/// Verdict `accept` (a chain's policy).
pub const NF_ACCEPT: u32 = 1;
/// `NFT_REG_1`, the first 16-byte register.
pub const REG_1: u32 = 1;
/// `NFT_REG32_01`, the second 4-byte register (lets a value follow a 4-byte one in `REG_1`).
pub const REG32_01: u32 = 9;

/// Netlink attributes being built: `(length, type)` headers in host order, values padded to
/// four bytes.
#[derive(Debug, Default, Clone)]
pub struct Attrs(Vec<u8>);

impl Attrs {
    /// No attributes yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Attribute `kind` holding `value` as is.
    pub fn bytes(mut self, kind: u16, value: &[u8]) -> Self {
        let len = u16::try_from(4 + value.len()).expect("an attribute under 64 KiB");
        self.0.extend_from_slice(&len.to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(value);
        self.0.resize(self.0.len().next_multiple_of(4), 0);
        self
    }

    /// A NUL-terminated string.
    pub fn str(self, kind: u16, value: &str) -> Self {
        self.bytes(kind, &[value.as_bytes(), &[0]].concat())
    }

    /// A 32-bit number in network byte order.
    pub fn be32(self, kind: u16, value: u32) -> Self {
        self.bytes(kind, &value.to_be_bytes())
    }

    /// Attributes nested in attribute `kind`.
    pub fn nest(self, kind: u16, inner: Attrs) -> Self {
        self.bytes(kind | NLA_F_NESTED, &inner.0)
    }

    /// `value` as `NFTA_DATA_VALUE` nested in `kind` (keys, data, comparands).
    pub fn data(self, kind: u16, value: &[u8]) -> Self {
        self.nest(kind, Attrs::new().bytes(attr::DATA_VALUE, value))
    }
}

/// nftables' user data, the comments and type hints nft stores along with an object for its
/// own listing: `(type, length, value)` triples of one byte each for type and length.
#[derive(Debug, Default, Clone)]
pub struct UserData(Vec<u8>);

impl UserData {
    /// Empty.
    pub fn new() -> Self {
        Self::default()
    }

    /// One triple.
    pub fn push(mut self, kind: u8, value: &[u8]) -> Self {
        self.0.push(kind);
        self.0.push(u8::try_from(value.len()).expect("user data under 256 bytes"));
        self.0.extend_from_slice(value);
        self
    }

    /// A comment, NUL-terminated, as nft stores it (type 0 for tables, chains and elements).
    pub fn comment(self, kind: u8, text: &str) -> Self {
        self.push(kind, &[text.as_bytes(), &[0]].concat())
    }

    /// The encoded triples.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The expressions of rules (`NFTA_LIST_ELEM`s of `NFTA_RULE_EXPRESSIONS`).
pub mod expr {
    use super::{Attrs, attr};

    const EXPR_NAME: u16 = 1;
    const EXPR_DATA: u16 = 2;

    fn expr(name: &str, data: Attrs) -> Attrs {
        Attrs::new().nest(attr::LIST_ELEM, Attrs::new().str(EXPR_NAME, name).nest(EXPR_DATA, data))
    }

    /// `NFT_PAYLOAD_NETWORK_HEADER`.
    pub const NETWORK_HEADER: u32 = 1;
    /// `NFT_PAYLOAD_TRANSPORT_HEADER`.
    pub const TRANSPORT_HEADER: u32 = 2;

    /// Loads `len` bytes at `offset` of header `base` into `dreg`.
    pub fn payload(base: u32, offset: u32, len: u32, dreg: u32) -> Attrs {
        let data = Attrs::new().be32(1, dreg).be32(2, base).be32(3, offset).be32(4, len);
        expr("payload", data)
    }

    /// `NFT_CMP_EQ`.
    pub const EQ: u32 = 0;
    /// `NFT_CMP_NEQ`.
    pub const NEQ: u32 = 1;

    /// Compares `sreg` with `value` (`op`: [`EQ`], [`NEQ`]).
    pub fn cmp(sreg: u32, op: u32, value: &[u8]) -> Attrs {
        expr("cmp", Attrs::new().be32(1, sreg).be32(2, op).data(3, value))
    }

    /// Looks `sreg` up in set `set` (its id `set_id` when made in the same batch): a match,
    /// or with `invert` a miss, or for a map with `dreg` the value found, loaded there.
    pub fn lookup(set: &str, set_id: u32, sreg: u32, dreg: Option<u32>, invert: bool) -> Attrs {
        let mut data = Attrs::new().be32(2, sreg);
        if let Some(dreg) = dreg {
            data = data.be32(3, dreg);
        }
        data = data.str(1, set).be32(4, set_id);
        if invert {
            data = data.be32(5, 1);
        }
        expr("lookup", data)
    }

    /// `NFT_META_IIFNAME`.
    pub const META_IIFNAME: u32 = 6;
    /// `NFT_META_L4PROTO`.
    pub const META_L4PROTO: u32 = 16;

    /// Loads packet meta data `key` into `dreg`.
    pub fn meta(key: u32, dreg: u32) -> Attrs {
        expr("meta", Attrs::new().be32(2, key).be32(1, dreg))
    }

    /// The route type of the destination address (`fib daddr type`) into `dreg`.
    pub fn fib_daddr_type(dreg: u32) -> Attrs {
        const RESULT_ADDRTYPE: u32 = 3;
        const FLAG_DADDR: u32 = 2;
        expr("fib", Attrs::new().be32(3, FLAG_DADDR).be32(2, RESULT_ADDRTYPE).be32(1, dreg))
    }

    /// IPv4 destination NAT to the address in `addr_reg` and the port in `port_reg`.
    pub fn dnat_ipv4(addr_reg: u32, port_reg: u32) -> Attrs {
        const DNAT: u32 = 1;
        let data = Attrs::new()
            .be32(1, DNAT)
            .be32(2, u32::from(super::NFPROTO_IPV4))
            .be32(3, addr_reg)
            .be32(5, port_reg);
        expr("nat", data)
    }

    /// Source NAT to the outgoing interface's address.
    pub fn masquerade() -> Attrs {
        expr("masq", Attrs::new())
    }

    /// The verdict `drop`.
    pub fn drop() -> Attrs {
        const VERDICT_REG: u32 = 0;
        const IMMEDIATE_DATA: u16 = 2;
        const DATA_VERDICT: u16 = 2;
        const VERDICT_CODE: u16 = 1;
        const NF_DROP: u32 = 0;
        let verdict = Attrs::new().nest(DATA_VERDICT, Attrs::new().be32(VERDICT_CODE, NF_DROP));
        expr("immediate", Attrs::new().be32(1, VERDICT_REG).nest(IMMEDIATE_DATA, verdict))
    }

    /// Expressions one after another (a rule's list).
    pub fn list(exprs: &[Attrs]) -> Attrs {
        Attrs(exprs.iter().flat_map(|e| e.0.iter().copied()).collect())
    }
}

/// The most messages a [`Batch`] takes (a range of sequence numbers is kept for each batch).
pub const MAX_MESSAGES: u32 = 1000;

/// One batch of nf_tables changes, applied all or nothing. The kernel answers each message it
/// refuses, and the last one in any case (it alone asks for an acknowledgement), so the
/// answers are few and the last one ends them.
#[derive(Debug)]
pub struct Batch {
    buf: Vec<u8>,
    /// Where the last message pushed starts.
    last_at: usize,
    /// What each message does, for errors, in order.
    steps: Vec<String>,
    first_seq: u32,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        // Sequence numbers unique within the process, so an answer can only be taken for its
        // own message; the batch's begin has the one before its first message's.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
        let begin = NEXT.fetch_add(MAX_MESSAGES + 2, std::sync::atomic::Ordering::Relaxed);
        let mut b =
            Batch { buf: Vec::with_capacity(2048), last_at: 0, steps: Vec::new(), first_seq: begin + 1 };
        b.push_raw(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, begin, 0, NFNL_SUBSYS_NFTABLES, &[]);
        b
    }

    fn seq_of(&self, index: usize) -> u32 {
        self.first_seq + u32::try_from(index).expect("a short batch")
    }

    /// Appends one message of `kind` (an `NFT_MSG_*`) for `family` with `flags` besides
    /// request; `step` says what it does, for errors.
    pub fn push(&mut self, kind: u16, flags: u16, family: u8, attrs: Attrs, step: impl Into<String>) {
        assert!(self.steps.len() < MAX_MESSAGES as usize, "a batch of at most {MAX_MESSAGES} messages");
        let seq = self.seq_of(self.steps.len());
        let flags = flags | NLM_F_REQUEST;
        self.last_at = self.buf.len();
        self.push_raw((NFNL_SUBSYS_NFTABLES << 8) | kind, flags, seq, family, 0, &attrs.0);
        self.steps.push(step.into());
    }

    /// How many messages were pushed.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Whether no message was pushed.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Appends a message: header, `nfgenmsg` (family, version 0, resource id in network
    /// order), attributes.
    fn push_raw(&mut self, kind: u16, flags: u16, seq: u32, family: u8, res_id: u16, attrs: &[u8]) {
        let len = u32::try_from(NLMSG_HDRLEN + 4 + attrs.len()).expect("a short message");
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&[family, 0]);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        self.buf.extend_from_slice(attrs);
    }

    /// The whole batch, closed.
    fn finish(mut self) -> (Vec<u8>, Vec<String>, u32) {
        if !self.steps.is_empty() {
            let flags = &mut self.buf[self.last_at + 6..self.last_at + 8];
            let acked = u16::from_ne_bytes([flags[0], flags[1]]) | NLM_F_ACK;
            flags.copy_from_slice(&acked.to_ne_bytes());
        }
        let end_seq = self.seq_of(self.steps.len());
        self.push_raw(NFNL_MSG_BATCH_END, NLM_F_REQUEST, end_seq, 0, NFNL_SUBSYS_NFTABLES, &[]);
        (self.buf, self.steps, self.first_seq)
    }
}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a batch was refused: the first message the kernel refused and its error.
#[derive(Debug)]
pub struct BatchError {
    /// Index of the message among those pushed (`None`: the batch as a whole, or no answer).
    pub index: Option<usize>,
    /// What that message does.
    pub step: String,
    /// The kernel's error.
    pub error: io::Error,
}

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.step, self.error)
    }
}

/// The acknowledgements and errors among `buf`'s messages: `(seq, errno)`, 0 for success.
fn answers(buf: &[u8]) -> impl Iterator<Item = (u32, i32)> + '_ {
    let mut rest = buf;
    std::iter::from_fn(move || {
        while rest.len() >= NLMSG_HDRLEN {
            let word = |at: usize| u32::from_ne_bytes(rest[at..at + 4].try_into().expect("4 bytes"));
            let len = usize::try_from(word(0)).ok()?;
            if len < NLMSG_HDRLEN || len > rest.len() {
                return None;
            }
            let kind = u16::from_ne_bytes([rest[4], rest[5]]);
            let seq = word(8);
            let body = &rest[NLMSG_HDRLEN..len];
            rest = &rest[len.next_multiple_of(4).min(rest.len())..];
            if kind == NLMSG_ERROR && body.len() >= 4 {
                let error = i32::from_ne_bytes(body[..4].try_into().expect("4 bytes"));
                return Some((seq, -error));
            }
        }
        None
    })
}

/// A socket for [`send`], in the calling thread's network namespace (for good: a socket keeps
/// the namespace it was made in). Its release flushes nf_tables' destroy work, which waits for
/// an RCU grace period after a change: whoever holds it decides who closes it and when.
pub fn socket() -> io::Result<OwnedFd> {
    Ok(rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::RAW,
        SocketFlags::CLOEXEC,
        Some(netlink::NETFILTER),
    )?)
}

/// Sends `batch` over `sock` and waits for the kernel's answers (it processes a batch while
/// it is being sent, so they are there at once).
pub fn send(sock: &OwnedFd, batch: Batch) -> Result<(), BatchError> {
    if batch.is_empty() {
        return Ok(());
    }
    let (buf, steps, first_seq) = batch.finish();
    let whole = |error: io::Error| BatchError { index: None, step: "send an nf_tables batch".into(), error };
    let kernel = SocketAddrNetlink::new(0, 0);
    rustix::net::sendto(sock.as_fd(), &buf, SendFlags::empty(), &kernel).map_err(|e| whole(e.into()))?;
    let last = first_seq + u32::try_from(steps.len()).expect("a short batch") - 1;
    let mut refused = None;
    let mut rbuf = vec![0u8; 16384];
    loop {
        let (n, _) = rustix::net::recv(sock.as_fd(), &mut rbuf, RecvFlags::DONTWAIT).map_err(|e| {
            // Everything was answered within the send: silence means the batch was dropped.
            let error = if e == rustix::io::Errno::AGAIN {
                io::Error::other("nf_tables did not answer")
            } else {
                e.into()
            };
            whole(error)
        })?;
        for (seq, errno) in answers(&rbuf[..n]) {
            if seq == first_seq - 1 && errno != 0 {
                return Err(whole(io::Error::from_raw_os_error(errno)));
            }
            if !(first_seq..=last).contains(&seq) {
                continue;
            }
            let index = usize::try_from(seq - first_seq).expect("a short batch");
            if errno != 0 && refused.is_none() {
                refused = Some(BatchError {
                    index: Some(index),
                    step: steps[index].clone(),
                    error: io::Error::from_raw_os_error(errno),
                });
            }
            if seq == last {
                return refused.map_or(Ok(()), Err);
            }
        }
    }
}

/// Deletes nf_tables table `name` of `family` (an `NFPROTO_*`) over `sock`; false if there was
/// no such table.
pub fn delete_table(sock: &OwnedFd, family: u8, name: &str) -> io::Result<bool> {
    let mut b = Batch::new();
    b.push(
        msg::DELTABLE,
        0,
        family,
        Attrs::new().str(attr::TABLE_NAME, name),
        format!("delete table {name}"),
    );
    match send(sock, b) {
        Ok(()) => Ok(true),
        Err(e) if e.error.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e.error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_begin_messages_end_with_running_sequence_numbers() {
        let mut b = Batch::new();
        b.push(msg::DELTABLE, 0, NFPROTO_IPV4, Attrs::new().str(attr::TABLE_NAME, "mctl"), "delete");
        let (buf, steps, first) = b.finish();
        assert_eq!(steps, ["delete"]);
        // Three messages of 20, 32 (20 + an 8-byte name padded from 4 + 5) and 20 bytes.
        assert_eq!(buf.len(), 20 + 32 + 20);
        assert_eq!(&buf[0..4], &20u32.to_ne_bytes());
        assert_eq!(&buf[4..6], &16u16.to_ne_bytes());
        assert_eq!(&buf[8..12], &(first - 1).to_ne_bytes());
        assert_eq!(&buf[16..20], &[0, 0, 0, 10], "AF_UNSPEC, version 0, nftables in network order");
        let del = &buf[20..52];
        assert_eq!(&del[0..4], &32u32.to_ne_bytes());
        assert_eq!(&del[4..6], &0x0a02u16.to_ne_bytes());
        assert_eq!(&del[6..8], &5u16.to_ne_bytes(), "request with acknowledgement (the last message)");
        assert_eq!(&del[8..12], &first.to_ne_bytes());
        assert_eq!(&del[16..20], &[2, 0, 0, 0], "NFPROTO_IPV4");
        assert_eq!(&del[20..24], [9u16.to_ne_bytes(), 1u16.to_ne_bytes()].concat(), "name, 4 + 5 bytes");
        assert_eq!(&del[24..32], b"mctl\0\0\0\0");
        assert_eq!(&buf[56..58], &17u16.to_ne_bytes());
        assert_eq!(&buf[60..64], &(first + 1).to_ne_bytes());
    }

    #[test]
    fn nested_attributes_carry_the_flag_and_their_padded_length() {
        let a = Attrs::new().nest(3, Attrs::new().be32(1, 2).str(2, "ab"));
        // 4 + (8 + 8) bytes: a u32 and a 3-byte string padded to 4.
        assert_eq!(a.0.len(), 20);
        assert_eq!(&a.0[0..4], [20u16.to_ne_bytes(), (3 | NLA_F_NESTED).to_ne_bytes()].concat());
        assert_eq!(&a.0[8..12], &[0, 0, 0, 2], "values in network order");
        assert_eq!(&a.0[12..14], &7u16.to_ne_bytes(), "the length leaves the padding out");
        assert_eq!(&a.0[16..20], b"ab\0\0");
    }

    #[test]
    fn expressions_match_what_nft_sends() {
        // From `nft --debug=mnl` of `ip saddr != @guests` (nftables 1.0.6): a lookup whose
        // set has id 1, inverted.
        let expected: &[u8] = &[
            0x38, 0, 0x01, 0x80, 0x0b, 0, 0x01, 0, b'l', b'o', b'o', b'k', b'u', b'p', 0, 0, 0x28, 0, 0x02,
            0x80, 0x08, 0, 0x02, 0, 0, 0, 0, 1, 0x0b, 0, 0x01, 0, b'g', b'u', b'e', b's', b't', b's', 0, 0,
            0x08, 0, 0x04, 0, 0, 0, 0, 1, 0x08, 0, 0x05, 0, 0, 0, 0, 1,
        ];
        if cfg!(target_endian = "little") {
            assert_eq!(expr::lookup("guests", 1, REG_1, None, true).0, expected);
        }
        // `masq`: a name and empty data.
        let masq = expr::masquerade().0;
        assert_eq!(masq.len(), 20);
        assert_eq!(&masq[12..16], b"\0\0\0\0");
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
        assert_eq!(answers(&buf).collect::<Vec<_>>(), [(1, libc::EPERM), (2, 0)]);
        assert_eq!(
            answers(&buf[..50]).collect::<Vec<_>>(),
            [(1, libc::EPERM)],
            "a truncated message is none"
        );
    }
}
