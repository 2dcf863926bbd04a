//! Undoing a machine's network, at its end or for a launcher that died, and sweeping what dead
//! launchers left.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::NetworkError;
use super::link::{self, LinkError, Rt, set_sysctl};
use super::nat::{self, NatEntries};
use super::spec::{extra_macs, mac_address};
use super::state::{MachineState, Segment, StateDir};

pub(super) fn has_stale(sd: &StateDir) -> bool {
    let machines = sd.machines();
    machines.iter().any(|m| !m.owner.alive() || m.dismantling)
        || sd.segments().iter().any(|s| !machines.iter().any(|m| m.segment.as_ref() == Some(&s.key)))
}

/// Undoes the states of dead owners and drops segments nobody uses; the lock is held.
pub(super) async fn sweep(rt: &Rt, sd: &StateDir) -> Vec<NetworkError> {
    let mut errors = Vec::new();
    // Pairs left to the kernel (the normal end of a veth machine): forget them once gone.
    for st in sd.machines().into_iter().filter(|m| m.dismantling) {
        match (our_pair(rt, &st).await, retired_pair(rt, &st).await) {
            (Ok(None), Ok(None)) => sd.remove_machine(&st.machine),
            (Err(e), _) | (_, Err(e)) => errors.push(e.into()),
            _ => {}
        }
    }
    // A pair being dismantled is the kernel's to remove (deleting it here would wait out the
    // RCU grace periods the launcher spared itself); only the others are undone.
    for st in sd.machines().into_iter().filter(|m| !m.owner.alive() && !m.dismantling) {
        tracing::info!(
            "removing the network leftovers of machine {} (launcher pid {} is gone)",
            st.machine,
            st.owner.pid
        );
        // If the machine outlived its launcher, its namespace is still reachable.
        let guest =
            st.leader.filter(|l| l.alive()).and_then(|l| File::open(format!("/proc/{}/ns/net", l.pid)).ok());
        let host = File::open("/proc/thread-self/ns/net").ok();
        errors.extend(undo(rt, sd, &st, guest.as_ref(), host.as_ref(), false, None).await);
    }
    let machines = sd.machines();
    for seg in sd.segments() {
        if !machines.iter().any(|m| m.segment.as_ref() == Some(&seg.key)) {
            errors.extend(drop_segment(rt, sd, &seg).await);
        }
    }
    errors
}

/// Undoes `st` (also a half-made one); the lock is held. `guest_ns` is `None` for a dead
/// launcher's machine that is gone too: its moved links went back to the kernel (physical
/// ones to the initial namespace) or were destroyed with the namespace. `nat_sock` is the
/// socket that added the NAT entries, if at hand (see [`nat::add`]).
pub(super) async fn undo(
    rt: &Rt,
    sd: &StateDir,
    st: &MachineState,
    guest_ns: Option<&File>,
    host_ns: Option<&File>,
    leave_pair: bool,
    nat_sock: Option<OwnedFd>,
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
        std::thread::spawn(move || nat::remove(&entries, last, nat_sock))
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
    errors.extend(remove_extra_pairs(rt, st).await);
    let nat_sock = match nat.map(|h| h.join()) {
        Some(Ok((sock, result))) => {
            errors.extend(result.err().map(NetworkError::from));
            sock
        }
        Some(Err(_)) => {
            errors.push(NetworkError::Thread("nftables"));
            None
        }
        None => None,
    };
    if let Some(key) = &st.segment
        && !others.iter().any(|m| m.segment.as_ref() == Some(key))
        && let Some(seg) = sd.segment(key)
    {
        errors.extend(drop_segment(rt, sd, &seg).await);
    }
    errors.extend(restore_route_localnet(st, &others));
    errors.extend(forget_or_dismantle(sd, st, leave_pair, nat_sock));
    errors
}

/// Gives a user's bridge its `route_localnet` back once no live machine needs it.
fn restore_route_localnet(st: &MachineState, others: &[MachineState]) -> Vec<NetworkError> {
    let mut errors = Vec::new();
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
    errors
}

/// Forgets the machine's state, or with `leave_pair` marks it `dismantling` (the pair's name
/// and subnet stay leased until the kernel has removed the pair with the namespace).
/// `nat_sock`, the nftables socket that removed the NAT entries, is released by the child
/// that watches the pair if there is one, else by one of its own ([`nat::release_later`]).
fn forget_or_dismantle(
    sd: &StateDir,
    st: &MachineState,
    leave_pair: bool,
    nat_sock: Option<OwnedFd>,
) -> Vec<NetworkError> {
    let mut errors = Vec::new();
    if let Some(host) = st.host_link.as_ref().filter(|_| leave_pair) {
        // The kernel takes a few to some tens of milliseconds to remove the pair once the
        // namespace is gone, and the machine's next start needs the link name: the pair is
        // renamed to a name of its own (`mctl-` and ten random hex digits), off our path.
        let retired = format!("mctl-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        // Keeps the subnet and the link name leased until the pair is gone.
        let left = MachineState {
            dismantling: true,
            retired_as: Some(retired.clone()),
            nat: false,
            ports: Vec::new(),
            route_localnet: None,
            moved: Vec::new(),
            extra_links: Vec::new(),
            segment: None,
            ..st.clone()
        };
        match sd.write_machine(&left) {
            Err(e) => {
                errors.push(e.into());
                if let Some(sock) = nat_sock {
                    nat::release_later(sock);
                }
            }
            Ok(()) => forget_once_gone(sd, &st.machine, host, Some(&retired), nat_sock),
        }
    } else {
        sd.remove_machine(&st.machine);
        if let Some(sock) = nat_sock {
            nat::release_later(sock);
        }
    }
    errors
}

/// Has the state entry `entry` (as written just now) forgotten as soon as the kernel has
/// removed the pair `link` (a few ms after the namespace's last user is gone), by a child that
/// outlives us that long and first renames the pair to `rename_to` when given; else the next
/// launch's sweep forgets it. The child also releases `release` (see
/// [`forget_when_link_gone`](crate::sys::linux::forget_when_link_gone)).
fn forget_once_gone(
    sd: &StateDir,
    entry: &str,
    link: &str,
    rename_to: Option<&str>,
    release: Option<OwnedFd>,
) {
    let Ok(meta) = std::fs::metadata(sd.machine_path(entry)) else {
        if let Some(sock) = release {
            nat::release_later(sock);
        }
        return;
    };
    crate::sys::linux::forget_when_link_gone(
        link,
        rename_to,
        &sd.lock_path(),
        &sd.machine_path(entry),
        meta.ino(),
        // Usually milliseconds; seconds when the kernel has many namespaces to dismantle.
        std::time::Duration::from_secs(30),
        release,
    );
}

/// The machine's veth pair, if it still exists: the host-side link with the machine's name,
/// kind veth and the machine's MAC. A link that merely has the name (setup failed because it
/// existed) is someone else's and is never touched.
async fn our_pair(rt: &Rt, st: &MachineState) -> Result<Option<link::LinkSummary>, LinkError> {
    let Some(host) = &st.host_link else { return Ok(None) };
    veth_with_mac(rt, host, mac_address(st.pair_owner(), "host")).await
}

/// A dismantling machine's pair under its retired name, if it was renamed and still exists.
async fn retired_pair(rt: &Rt, st: &MachineState) -> Result<Option<link::LinkSummary>, LinkError> {
    let Some(retired) = &st.retired_as else { return Ok(None) };
    veth_with_mac(rt, retired, mac_address(st.pair_owner(), "host")).await
}

/// The link `name` if it is a veth with address `mac`: one a machine made.
async fn veth_with_mac(rt: &Rt, name: &str, mac: [u8; 6]) -> Result<Option<link::LinkSummary>, LinkError> {
    Ok(rt
        .link(name)
        .await?
        .filter(|l| l.kind.as_deref() == Some("veth") && l.mac.as_deref() == Some(&mac[..])))
}

/// Deletes the machine's `--network-veth-extra` pairs that still exist (as nspawn does at exit:
/// left to the namespace's end, a pair could outlive a reboot's next setup, which makes it
/// again). Only a veth with the machine's address for it is the machine's.
async fn remove_extra_pairs(rt: &Rt, st: &MachineState) -> Vec<NetworkError> {
    let mut errors = Vec::new();
    for host in &st.extra_links {
        match veth_with_mac(rt, host, extra_macs(&st.machine, host).0).await {
            Ok(Some(_)) => {
                if let Err(e) = rt.delete(host).await {
                    errors.push(e.into());
                }
            }
            Ok(None) => {}
            Err(e) => errors.push(e.into()),
        }
    }
    errors
}

/// Waits up to `patience` for a dismantling machine's pair to give up the machine's link name
/// (renamed, or gone with its namespace), deletes it if it does not (something else holds the
/// namespace and the rename did not happen), and frees the machine's name: a pair still there
/// under its retired name keeps its lease as an entry of its own.
pub(super) async fn settle(
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
    match retired_pair(rt, st).await {
        Ok(Some(_)) => {
            let retired = st.retired_as.clone().unwrap_or_default();
            let own = MachineState {
                machine: retired.clone(),
                host_link: Some(retired),
                retired_as: None,
                retired_from: Some(st.pair_owner().to_owned()),
                ..st.clone()
            };
            // The retired pair's lease is written first: its subnet is never free meanwhile.
            if let Err(e) = sd.write_machine(&own) {
                errors.push(e.into());
                return errors;
            }
            forget_once_gone(sd, &own.machine, &own.machine, None, None);
        }
        Ok(None) => {}
        Err(e) => errors.push(e.into()),
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
