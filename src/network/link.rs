//! Links, addresses and routes over rtnetlink, and the few sysctls that go with them.
//!
//! [`Rt`] is an rtnetlink connection in the network namespace of the thread that made it (a
//! netlink socket belongs to its creator's namespace for good). The parent reaches the
//! machine's namespace with [`Rt::connect_in`]: the short-lived worker thread of
//! `block_on_thread` `setns`es into it (which moves only that thread), opens the socket and
//! comes back. [`loopback_up`] runs in a forked child instead, so it uses a plain blocking
//! socket, no runtime and no thread.

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;

use futures_util::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

/// A link, address or route operation that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The kernel refused (or netlink failed).
    #[error("cannot {step} {object}: {reason}")]
    Netlink {
        /// What was being done ("add veth").
        step: &'static str,
        /// On what ("ve-web").
        object: String,
        /// The kernel's errno text.
        reason: String,
        /// The errno, when the kernel gave one.
        errno: Option<i32>,
    },
    /// `--network-bridge` names no link.
    #[error("bridge {0} does not exist")]
    NoBridge(String),
    /// `--network-bridge` names a link of another kind.
    #[error("{name} is not a bridge (link kind: {kind})")]
    NotABridge {
        /// The link: the `--network-bridge` value, or a zone's own `vz-` bridge.
        name: String,
        /// Its kind.
        kind: String,
    },
    /// `--network-interface` names no link.
    #[error("network interface {0} does not exist")]
    NoInterface(String),
    /// A moved interface vanished while the machine ran.
    #[error("network interface {0} is gone from the machine: it cannot be given back")]
    InterfaceGone(String),
    /// A sysctl write.
    #[error("cannot set {}: {reason}", path.display())]
    Sysctl {
        /// The /proc/sys path.
        path: PathBuf,
        /// The I/O error's text, from reading or from writing the file.
        reason: String,
    },
    /// Entering the machine's namespace.
    #[error("cannot {step} the network namespace of {what}: {reason}")]
    Netns {
        /// What was being done.
        step: &'static str,
        /// Whose namespace.
        what: String,
        /// The setns(2) errno's description.
        reason: String,
    },
}

impl LinkError {
    /// The errno behind a kernel refusal.
    pub fn errno(&self) -> Option<i32> {
        match self {
            LinkError::Netlink { errno, .. } => *errno,
            _ => None,
        }
    }
}

fn errno_of(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

fn nl_err(step: &'static str, object: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> LinkError {
    let object = object.into();
    move |e| {
        let errno = errno_of(&e);
        let reason = match errno {
            Some(n) => nix::errno::Errno::from_raw(n).desc().to_owned(),
            None => e.to_string(),
        };
        LinkError::Netlink { step, object, reason, errno }
    }
}

fn is_gone(e: &rtnetlink::Error) -> bool {
    matches!(errno_of(e), Some(libc::ENODEV | libc::ENOENT | libc::ESRCH | libc::EADDRNOTAVAIL))
}

/// What [`Rt::link`] tells about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSummary {
    /// Interface index in the namespace the query ran in (`lo` is always 1).
    pub index: u32,
    /// `IFLA_INFO_KIND` ("bridge", "veth"), `None` for physical links.
    pub kind: Option<String>,
    /// Administratively up.
    pub up: bool,
    /// Hardware address.
    pub mac: Option<Vec<u8>>,
}

fn summary(msg: &LinkMessage) -> LinkSummary {
    let kind = msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k.to_string()),
            _ => None,
        }),
        _ => None,
    });
    let mac = msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(m) => Some(m.clone()),
        _ => None,
    });
    LinkSummary { index: msg.header.index, kind, up: msg.header.flags.contains(LinkFlags::Up), mac }
}

/// An rtnetlink connection in the creating thread's network namespace.
#[derive(Debug, Clone)]
pub struct Rt {
    handle: Handle,
}

/// How the host end of a new veth pair starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostEnd {
    /// Up, and enslaved to the bridge `master` if given (a machine's main pair).
    Up {
        /// The bridge's index.
        master: Option<u32>,
    },
    /// Down and unconfigured (`--network-veth-extra`, as nspawn leaves them).
    Down,
}

impl Rt {
    /// Connects; must run inside a tokio runtime (the connection is a task on it).
    pub fn connect() -> Result<Rt, LinkError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| LinkError::Netlink {
            step: "open",
            object: "an rtnetlink socket".into(),
            reason: e.to_string(),
            errno: e.raw_os_error(),
        })?;
        tokio::spawn(conn);
        Ok(Rt { handle })
    }

    /// Connects in the network namespace `netns`: the calling thread enters it only to create
    /// the socket (a netlink socket stays in the namespace it was made in, and `setns` moves
    /// just the calling thread), then goes back to `home`. Cheaper than a thread and runtime of
    /// its own; must run inside a tokio runtime.
    pub fn connect_in(netns: &File, home: &File, what: &str) -> Result<Rt, LinkError> {
        let enter = |ns: &File| nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET);
        enter(netns).map_err(|e| LinkError::Netns {
            step: "enter",
            what: what.to_owned(),
            reason: e.desc().into(),
        })?;
        let rt = Rt::connect();
        if let Err(e) = enter(home) {
            // Going on would configure the machine's namespace as if it were the host's.
            panic!("cannot return to the launcher's network namespace after entering {what}'s: {e}");
        }
        rt
    }

    /// The link called `name`, if any.
    pub async fn link(&self, name: &str) -> Result<Option<LinkSummary>, LinkError> {
        let mut s = self.handle.link().get().match_name(name.to_owned()).execute();
        match s.try_next().await {
            Ok(m) => Ok(m.as_ref().map(summary)),
            Err(e) if is_gone(&e) => Ok(None),
            Err(e) => Err(nl_err("look up link", name)(e)),
        }
    }

    /// Creates the veth pair `host` / `guest`, the guest end created directly in the namespace
    /// `netns`: one request, so there is no moment with a half-made pair. The guest end cannot
    /// be set up in the same request (the kernel opens it before the pair is linked: ENOTCONN).
    pub async fn add_veth(
        &self,
        host: &str,
        host_mac: [u8; 6],
        guest: &str,
        guest_mac: [u8; 6],
        netns: &File,
        host_end: HostEnd,
    ) -> Result<(), LinkError> {
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(guest.to_owned())
            .address(guest_mac.to_vec())
            .setns_by_fd(netns.as_raw_fd())
            .build();
        let mut b = LinkVeth::new(host, guest)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .address(host_mac.to_vec());
        if let HostEnd::Up { master } = host_end {
            b = b.up();
            if let Some(m) = master {
                b = b.controller(m);
            }
        }
        self.handle.link().add(b.build()).execute().await.map_err(nl_err("add veth", host))
    }

    /// Creates the macvlan `name` of the host link `parent` (bridge mode, as nspawn) directly in
    /// the namespace `netns`.
    pub async fn add_macvlan(
        &self,
        name: &str,
        parent: u32,
        mac: [u8; 6],
        netns: &File,
    ) -> Result<(), LinkError> {
        let b = rtnetlink::LinkMacVlan::new(name, parent, rtnetlink::packet_route::link::MacVlanMode::Bridge)
            .address(mac.to_vec())
            .setns_by_fd(netns.as_raw_fd());
        self.handle.link().add(b.build()).execute().await.map_err(nl_err("add macvlan", name))
    }

    /// Creates the ipvlan `name` of the host link `parent` (L2 mode, as nspawn) directly in the
    /// namespace `netns`.
    pub async fn add_ipvlan(&self, name: &str, parent: u32, netns: &File) -> Result<(), LinkError> {
        let b = rtnetlink::LinkIpVlan::new(name, parent, rtnetlink::packet_route::link::IpVlanMode::L2)
            .setns_by_fd(netns.as_raw_fd());
        self.handle.link().add(b.build()).execute().await.map_err(|e| {
            let mut err = nl_err("add ipvlan", name)(e);
            if let LinkError::Netlink { errno: Some(libc::EOPNOTSUPP), reason, .. } = &mut err {
                reason.push_str(" (this kernel has no ipvlan support)");
            }
            err
        })
    }

    /// Creates a bridge, up, with forwarding delay 0 (no STP: ports forward at once).
    pub async fn add_bridge(&self, name: &str) -> Result<(), LinkError> {
        let b = rtnetlink::LinkBridge::new(name).forward_delay(0).up();
        self.handle.link().add(b.build()).execute().await.map_err(nl_err("add bridge", name))
    }

    /// Deletes the link `name` (for a veth, both ends); a missing link is not an error.
    pub async fn delete(&self, name: &str) -> Result<(), LinkError> {
        let msg = LinkUnspec::new_with_name(name).build();
        match self.handle.link().del_with_message(msg).execute().await {
            Err(e) if is_gone(&e) => Ok(()),
            other => other.map_err(nl_err("delete link", name)),
        }
    }

    /// Adds an IPv4 address to link `index` (`ifname` for messages).
    pub async fn add_address(&self, index: u32, ifname: &str, net: Ipv4Net) -> Result<(), LinkError> {
        self.handle
            .address()
            .add(index, IpAddr::V4(net.addr()), net.prefix_len())
            .execute()
            .await
            .map_err(nl_err("add address", format!("{net} to {ifname}")))
    }

    /// The IPv4 addresses of link `index`.
    pub async fn ipv4_addresses(&self, index: u32, ifname: &str) -> Result<Vec<Ipv4Net>, LinkError> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(nl_err("list addresses of", ifname))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.index == index)
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(IpAddr::V4(ip)) | AddressAttribute::Address(IpAddr::V4(ip)) => {
                        Ipv4Net::new(*ip, m.header.prefix_len).ok()
                    }
                    _ => None,
                })
            })
            .collect())
    }

    /// Sets link `index` up (or down).
    pub async fn set_up(&self, index: u32, ifname: &str, up: bool) -> Result<(), LinkError> {
        let b = LinkUnspec::new_with_index(index);
        let b = if up { b.up() } else { b.down() };
        self.handle.link().set(b.build()).execute().await.map_err(nl_err("set up", ifname))
    }

    /// Adds the default route via `gateway` on link `index`.
    pub async fn add_default_route(&self, index: u32, gateway: Ipv4Addr) -> Result<(), LinkError> {
        let r = RouteMessageBuilder::<Ipv4Addr>::new().gateway(gateway).output_interface(index).build();
        self.handle
            .route()
            .add(r)
            .execute()
            .await
            .map_err(nl_err("add default route via", gateway.to_string()))
    }

    /// Moves link `index` into the namespace `netns`.
    pub async fn move_to(&self, index: u32, ifname: &str, netns: &File) -> Result<(), LinkError> {
        let msg = LinkUnspec::new_with_index(index).setns_by_fd(netns.as_raw_fd()).build();
        self.handle.link().set(msg).execute().await.map_err(nl_err("move network interface", ifname))
    }
}

/// Writes a sysctl under /proc/sys (in the calling thread's network namespace for net.*);
/// returns the previous value.
pub fn set_sysctl(path: &str, value: &str) -> Result<String, LinkError> {
    let p = PathBuf::from(path);
    let err = |e: io::Error| LinkError::Sysctl { path: p.clone(), reason: e.to_string() };
    let previous = std::fs::read_to_string(&p).map_err(err)?.trim().to_owned();
    // Written only when different: writing ip_forward resets per-link settings even when equal.
    if previous != value {
        std::fs::write(&p, value).map_err(err)?;
    }
    Ok(previous)
}

/// Brings up `lo` in the calling process's network namespace. For the machine's outer child
/// right after it made or joined the namespace: no runtime, no threads, just one netlink
/// request on a blocking socket (`lo` is always index 1 in a namespace).
pub fn loopback_up() -> io::Result<()> {
    use rtnetlink::packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
    use rtnetlink::packet_route::RouteNetlinkMessage;
    use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

    let mut sock = Socket::new(NETLINK_ROUTE)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    let link = LinkUnspec::new_with_index(1).up().build();
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::SetLink(link));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    req.header.sequence_number = 1;
    req.finalize();
    let mut buf = vec![0u8; req.buffer_len()];
    req.serialize(&mut buf);
    sock.send(&buf, 0)?;
    loop {
        let (reply, _) = sock.recv_from_full()?;
        let mut off = 0;
        while off < reply.len() {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[off..])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = msg.header.length as usize;
            if let NetlinkPayload::Error(e) = msg.payload {
                return match e.code {
                    None => Ok(()),
                    Some(c) => Err(io::Error::from_raw_os_error(-c.get())),
                };
            }
            if len == 0 {
                break;
            }
            off += len;
        }
    }
}
