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
    /// Bytes the machine received on its links (what their host sides sent).
    pub ip_ingress_bytes: Option<u64>,
    /// Bytes the machine sent on its links (what their host sides received).
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

    /// A machine's limits and usage; empty figures for one without a cgroup of its own.
    pub fn resources(&self, m: &Machine) -> MachineResources {
        let Some(dirs) = self.machine_dirs(m) else {
            return MachineResources::default();
        };
        let (ip_ingress_bytes, ip_egress_bytes) = link_bytes(&m.netif);
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
        let m = self.get(name)?;
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

/// Bytes through the host sides of a machine's links: (sent to it, received from it).
fn link_bytes(ifindices: &[i32]) -> (Option<u64>, Option<u64>) {
    if ifindices.is_empty() {
        return (None, None);
    }
    let (mut to_machine, mut from_machine) = (0, 0);
    for &index in ifindices {
        let Some(name) = u32::try_from(index).ok().and_then(|i| nix::net::if_::if_indextoname(i).ok()) else {
            continue;
        };
        let stat = |f: &str| {
            std::fs::read_to_string(format!("/sys/class/net/{}/statistics/{f}", name.to_string_lossy()))
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        to_machine += stat("tx_bytes");
        from_machine += stat("rx_bytes");
    }
    (Some(to_machine), Some(from_machine))
}
