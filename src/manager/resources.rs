//! A machine's resource limits and usage, for `status`, `show`, `top` and `set-property`.

use crate::cgroups::resources::{Limits, MachineDirs, Property, Usage};
use crate::procfs;

use super::{Action, Caller, Machine, Manager, ManagerError};

/// Limits in force and what a machine uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MachineResources {
    /// Limits in force.
    pub limits: Limits,
    /// Use of CPU, memory, tasks and block I/O.
    pub usage: Usage,
    /// Bytes the machine received on its network interfaces.
    pub ip_ingress_bytes: Option<u64>,
    /// Bytes the machine sent on its network interfaces.
    pub ip_egress_bytes: Option<u64>,
}

/// A unit's properties set through its service manager (systemd's `SetUnitProperties`), given
/// to the manager by mctld's composition: the manager itself has no D-Bus types.
pub trait UnitControl: Send + Sync {
    /// Ok(true) when the service manager took them, Ok(false) when there is none.
    fn set_unit_properties(&self, unit: &str, runtime: bool, props: &[Property]) -> Result<bool, String>;
}

impl Manager {
    /// The machine's cgroups in every hierarchy, when it runs in a cgroup mctl made for it.
    /// Read from its leader's current membership (still the registered process: checked by
    /// start time), cut at the payload, so the guest cannot point mctld elsewhere.
    pub fn machine_dirs(&self, m: &Machine) -> Option<MachineDirs> {
        let membership = std::fs::read_to_string(format!("/proc/{}/cgroup", m.leader)).ok()?;
        if procfs::start_time(m.leader) != Some(m.leader_start) {
            return None;
        }
        MachineDirs::of_process(&self.hierarchies, &membership, &m.name)
    }

    /// Thaws what a machine sent SIGKILL froze through the v1 freezer, where the signal cannot
    /// reach it (see [`crate::cgroups::thaw_v1_freezer`]). A guest task not dead yet may freeze
    /// again what was thawed, so this goes on until a pass finds nothing frozen (a few rounds).
    pub(super) fn thaw_guest(&self, m: &Machine) {
        let Some(dirs) = self.machine_dirs(m) else { return };
        for (_, dir) in dirs.v1.iter().filter(|(controllers, _)| controllers.iter().any(|c| c == "freezer")) {
            for _ in 0..20 {
                if crate::cgroups::thaw_v1_freezer(dir) == 0 {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }

    /// A machine's limits and usage; empty figures for one without a cgroup of its own.
    pub fn resources(&self, m: &Machine) -> MachineResources {
        let Some(dirs) = self.machine_dirs(m) else {
            return MachineResources::default();
        };
        let (ip_ingress_bytes, ip_egress_bytes) = link_bytes(m.leader);
        MachineResources { limits: dirs.limits(), usage: dirs.usage(), ip_ingress_bytes, ip_egress_bytes }
    }

    /// Changes limits of a running machine (`set-property`); returns them as parsed. Nothing
    /// is changed unless every assignment parses.
    pub fn set_properties(
        &self,
        name: &str,
        runtime: bool,
        assignments: &[String],
        caller: &Caller,
    ) -> Result<Vec<Property>, ManagerError> {
        let m = self.get_guest(name)?;
        caller.authorize(Action::Manage)?;
        let props = assignments
            .iter()
            .map(|a| Property::parse(a).map_err(|e| ManagerError::InvalidArgs(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        if props.is_empty() {
            return Err(ManagerError::InvalidArgs("No properties given".into()));
        }
        let dirs = self.machine_dirs(&m).ok_or_else(|| {
            ManagerError::Failed(format!("Machine {name} has no cgroup of its own to limit"))
        })?;
        dirs.apply_all(&props, |unit, props| match self.units.get() {
            Some(units) => units.set_unit_properties(unit, runtime, props),
            None => Ok(false),
        })
        .map_err(|e| ManagerError::Failed(format!("Machine {name}: {e}")))?;
        tracing::info!(machine = name, properties = ?assignments, "limits changed");
        Ok(props)
    }
}

/// Bytes through the machine's network interfaces (loopback aside), counted by the kernel in
/// its network namespace: (received, sent). None for a machine on the host's network (whose
/// counters are the host's) or when its namespace cannot be read. Read from the guest's side:
/// the host sides of its links may be in a namespace mctld does not see (`ip netns exec`).
fn link_bytes(leader: u32) -> (Option<u64>, Option<u64>) {
    use std::os::unix::fs::MetadataExt;
    let ns = |p: &str| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let theirs = ns(&format!("/proc/{leader}/ns/net"));
    if theirs.is_none() || theirs == ns("/proc/self/ns/net") {
        return (None, None);
    }
    let Ok(dev) = std::fs::read_to_string(format!("/proc/{leader}/net/dev")) else { return (None, None) };
    let (mut received, mut sent) = (0u64, 0u64);
    // "  name: rx_bytes rx_packets ... (8 receive fields) tx_bytes ..."
    for line in dev.lines().skip(2) {
        let Some((name, counters)) = line.split_once(':') else { continue };
        if name.trim() == "lo" {
            continue;
        }
        let fields: Vec<u64> = counters.split_whitespace().filter_map(|f| f.parse().ok()).collect();
        if let (Some(rx), Some(tx)) = (fields.first(), fields.get(8)) {
            received = received.saturating_add(*rx);
            sent = sent.saturating_add(*tx);
        }
    }
    (Some(received), Some(sent))
}
