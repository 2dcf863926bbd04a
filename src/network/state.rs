//! Per-machine network state files: what setup made (links, leases, NAT entries, forwards), so
//! that teardown and, after a launcher was killed, [`super::cleanup_stale`] can undo exactly
//! that. The files are the leases too: an address or subnet is taken while a state file with
//! a live owner names it.
//!
//! Layout of the state directory (one per host network namespace):
//! - `lock`: flock'd around every change, so concurrent launchers allocate, create zone
//!   bridges and create or delete the nftables table one at a time;
//! - `machines/NAME.json`: a [`MachineState`], written atomically (temporary file + rename);
//! - `segments/KEY.json`: a [`Segment`], the subnet shared by a zone's or an address-less
//!   bridge's machines, removed with its last machine.

use std::fs::{self, File};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use nix::fcntl::{Flock, FlockArg};

use super::spec::PortForward;

/// A state file problem.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// An I/O step on a state path.
    #[error("cannot {step} {}: {source}", path.display())]
    Io {
        /// What was being done.
        step: &'static str,
        /// The path.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// A state file that does not parse.
    #[error("cannot parse network state {}: {source}", path.display())]
    Parse {
        /// The path.
        path: PathBuf,
        /// The JSON error, with its line and column in the file.
        #[source]
        source: serde_json::Error,
    },
}

fn io_err<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StateError + 'a {
    move |source| StateError::Io { step, path: path.to_owned(), source }
}

/// The launcher that holds a state: its pid and the pid's start time, so a recycled pid is
/// not mistaken for a live owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Owner {
    /// Launcher pid (as seen in the state directory's pid namespace).
    pub pid: i32,
    /// Field 22 of `/proc/PID/stat` (clock ticks since boot).
    pub start: u64,
}

impl Owner {
    /// This process.
    pub fn current() -> Owner {
        let pid = nix::unistd::getpid().as_raw();
        Owner { pid, start: start_time(pid).unwrap_or(0) }
    }

    /// Process `pid`, if it exists.
    pub fn of(pid: i32) -> Option<Owner> {
        start_time(pid).map(|start| Owner { pid, start })
    }

    /// Whether the owner still runs.
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start)
    }
}

fn start_time(pid: i32) -> Option<u64> {
    crate::procfs::start_time(u32::try_from(pid).ok()?)
}

/// A link moved into the machine with `--network-interface`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MovedLink {
    /// Its name.
    pub name: String,
    /// Its index (kept across the move unless the target namespace had it taken).
    pub index: u32,
    /// Whether it was up on the host, to restore on return.
    pub was_up: bool,
}

/// `route_localnet` changed on a link mctl does not own (a user's bridge), with the value to
/// restore.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SysctlChange {
    /// The link.
    pub ifname: String,
    /// The value before mctl's first change.
    pub previous: String,
}

/// Everything setup made for one machine.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MachineState {
    /// Machine name.
    pub machine: String,
    /// The launcher.
    pub owner: Owner,
    /// The machine's PID 1, through which a dead launcher's moved links can still be given
    /// back while the machine runs.
    #[serde(default)]
    pub leader: Option<Owner>,
    /// The host side of the veth pair (`ve-`/`vb-`), which mctl created.
    pub host_link: Option<String>,
    /// Its index once created.
    pub host_ifindex: Option<u32>,
    /// The bridge the host side joined (a user's, or a zone's `vz-`).
    pub bridge: Option<String>,
    /// The shared segment (zone or address-less bridge) whose subnet the address is from.
    pub segment: Option<String>,
    /// A subnet leased for this machine alone (veth).
    pub subnet: Option<Ipv4Net>,
    /// The host side's address (veth).
    pub host_addr: Option<Ipv4Net>,
    /// `host0`'s address.
    pub guest_addr: Option<Ipv4Net>,
    /// The guest's default route.
    pub gateway: Option<Ipv4Addr>,
    /// Whether the guest address is in the NAT table's `guests` set.
    pub nat: bool,
    /// Port forwards in the NAT table's `ports` map.
    pub ports: Vec<PortForward>,
    /// `route_localnet` set on a user's bridge.
    pub route_localnet: Option<SysctlChange>,
    /// Links moved into the machine.
    pub moved: Vec<MovedLink>,
    /// The host sides of `--network-veth-extra` pairs, which mctl created.
    #[serde(default)]
    pub extra_links: Vec<String>,
    /// Torn down except for the veth pair, which the kernel removes with the machine's
    /// namespace; the state stays (holding the subnet and the link name) until the pair is gone.
    #[serde(default)]
    pub dismantling: bool,
    /// The name a dismantling pair is given (by a short-lived child, off the launcher's path)
    /// so that the machine can start again before the kernel has removed the pair.
    #[serde(default)]
    pub retired_as: Option<String>,
    /// For a retired pair's own entry (filed under its retired name when the machine started
    /// again): the machine it was, whose MAC the pair has.
    #[serde(default)]
    pub retired_from: Option<String>,
}

impl MachineState {
    /// An empty state for `machine` owned by this process.
    pub fn new(machine: &str) -> Self {
        MachineState {
            machine: machine.to_owned(),
            owner: Owner::current(),
            leader: None,
            host_link: None,
            host_ifindex: None,
            bridge: None,
            segment: None,
            subnet: None,
            host_addr: None,
            guest_addr: None,
            gateway: None,
            nat: false,
            ports: Vec::new(),
            route_localnet: None,
            moved: Vec::new(),
            extra_links: Vec::new(),
            dismantling: false,
            retired_as: None,
            retired_from: None,
        }
    }

    /// The machine whose pair this entry leases (its MACs are derived from that name).
    pub fn pair_owner(&self) -> &str {
        self.retired_from.as_deref().unwrap_or(&self.machine)
    }
}

/// A subnet shared by the machines of a zone or of a bridge without an IPv4 address.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Segment {
    /// `zone-ZONE` or `bridge-BR`.
    pub key: String,
    /// The bridge link.
    pub bridge: String,
    /// The subnet leased from the pool.
    pub subnet: Ipv4Net,
    /// The bridge's own address (zones): the machines' gateway.
    pub gateway: Option<Ipv4Addr>,
    /// Whether mctl created the bridge (and so deletes it with the last machine).
    pub owns_bridge: bool,
}

/// The state directory, locked for as long as this value lives.
#[derive(Debug)]
pub struct StateDir {
    root: PathBuf,
    _lock: Flock<File>,
}

impl StateDir {
    /// Creates the directory if needed and takes its lock (blocking).
    pub fn lock(root: &Path) -> Result<StateDir, StateError> {
        for sub in ["machines", "segments"] {
            let d = root.join(sub);
            fs::create_dir_all(&d).map_err(io_err("create state directory", &d))?;
        }
        let path = root.join("lock");
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("open lock file", &path))?;
        let lock = Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| StateError::Io {
            step: "lock",
            path: path.clone(),
            source: e.into(),
        })?;
        Ok(StateDir { root: root.to_owned(), _lock: lock })
    }

    /// The lock file.
    pub fn lock_path(&self) -> PathBuf {
        self.root.join("lock")
    }

    /// The state file of machine `name`.
    pub fn machine_path(&self, name: &str) -> PathBuf {
        self.root.join("machines").join(format!("{name}.json"))
    }

    fn segment_path(&self, key: &str) -> PathBuf {
        self.root.join("segments").join(format!("{key}.json"))
    }

    /// Every machine state (unparsable files are reported and skipped).
    pub fn machines(&self) -> Vec<MachineState> {
        self.read_all("machines")
    }

    /// Every segment.
    pub fn segments(&self) -> Vec<Segment> {
        self.read_all("segments")
    }

    fn read_all<T: serde::de::DeserializeOwned>(&self, sub: &str) -> Vec<T> {
        let Ok(rd) = fs::read_dir(self.root.join(sub)) else { return Vec::new() };
        let mut out = Vec::new();
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_none_or(|x| x != "json") {
                continue;
            }
            match read_json(&p) {
                Ok(v) => out.push(v),
                Err(e) => tracing::warn!("{e}"),
            }
        }
        out
    }

    /// One machine's state.
    pub fn machine(&self, name: &str) -> Option<MachineState> {
        read_json(&self.machine_path(name)).ok()
    }

    /// One segment.
    pub fn segment(&self, key: &str) -> Option<Segment> {
        read_json(&self.segment_path(key)).ok()
    }

    /// Writes a machine's state atomically.
    pub fn write_machine(&self, s: &MachineState) -> Result<(), StateError> {
        write_json(&self.machine_path(&s.machine), s)
    }

    /// Writes a segment atomically.
    pub fn write_segment(&self, s: &Segment) -> Result<(), StateError> {
        write_json(&self.segment_path(&s.key), s)
    }

    /// Removes a machine's state.
    pub fn remove_machine(&self, name: &str) {
        let _ = fs::remove_file(self.machine_path(name));
    }

    /// Removes a segment.
    pub fn remove_segment(&self, key: &str) {
        let _ = fs::remove_file(self.segment_path(key));
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, StateError> {
    let text = fs::read(path).map_err(io_err("read network state", path))?;
    serde_json::from_slice(&text).map_err(|source| StateError::Parse { path: path.to_owned(), source })
}

fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    let tmp = path.with_extension("tmp");
    let body = serde_json::to_vec_pretty(value).expect("state serializes");
    let mut f = File::create(&tmp).map_err(io_err("write network state", &tmp))?;
    f.write_all(&body).map_err(io_err("write network state", &tmp))?;
    // The rename is the commit point: a reader sees the old file or the whole new one.
    fs::rename(&tmp, path).map_err(io_err("write network state", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_liveness_uses_start_time() {
        let me = Owner::current();
        assert!(me.start > 0);
        assert!(me.alive());
        assert!(!Owner { start: me.start + 1, ..me }.alive());
        assert!(!Owner { pid: i32::MAX, start: 1 }.alive());
    }

    #[test]
    fn states_round_trip_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::lock(dir.path()).unwrap();
        let mut s = MachineState::new("web");
        s.guest_addr = Some("10.213.0.2/30".parse().unwrap());
        s.ports.push(super::super::spec::parse_port("udp:53").unwrap());
        sd.write_machine(&s).unwrap();
        assert_eq!(sd.machine("web"), Some(s.clone()));
        assert_eq!(sd.machines(), vec![s]);
        fs::write(dir.path().join("machines/junk.json"), "{").unwrap();
        assert_eq!(sd.machines().len(), 1);
        sd.remove_machine("web");
        assert!(sd.machine("web").is_none());
        let seg = Segment {
            key: "zone-lab".into(),
            bridge: "vz-lab".into(),
            subnet: "10.213.255.0/24".parse().unwrap(),
            gateway: Some("10.213.255.1".parse().unwrap()),
            owns_bridge: true,
        };
        sd.write_segment(&seg).unwrap();
        assert_eq!(sd.segments(), vec![seg]);
        assert!(
            fs::read_dir(dir.path().join("segments"))
                .unwrap()
                .all(|e| { e.unwrap().path().extension().unwrap() == "json" })
        );
    }
}
