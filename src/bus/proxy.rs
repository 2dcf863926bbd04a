//! Client side of the machine1 API, for the CLI and the launcher.

use std::collections::HashMap;

use zbus::{OwnedObjectPath, OwnedVariant};

use super::paths::MANAGER_PATH;

/// `org.freedesktop.machine1.Manager`, reached under mctld's own bus name.
#[zbus::proxy(
    interface = "org.freedesktop.machine1.Manager",
    default_service = "org.mctl.Machine1",
    default_path = "/org/freedesktop/machine1"
)]
pub trait Manager1 {
    /// All machines: name, class, service, object path.
    fn list_machines(&self) -> zbus::Result<Vec<(String, String, String, OwnedObjectPath)>>;
    /// A machine's object path.
    fn get_machine(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    /// Registers a machine.
    #[allow(clippy::too_many_arguments)]
    fn register_machine_with_network(
        &self,
        name: &str,
        id: &[u8],
        service: &str,
        class: &str,
        leader: u32,
        root_directory: &str,
        ifindices: &[i32],
    ) -> zbus::Result<OwnedObjectPath>;
    /// Forgets a machine.
    fn unregister_machine(&self, name: &str) -> zbus::Result<()>;
    /// Ends a machine.
    fn terminate_machine(&self, name: &str) -> zbus::Result<()>;
    /// Signals a machine's leader or all its processes.
    fn kill_machine(&self, name: &str, who: &str, signal: i32) -> zbus::Result<()>;
    /// A machine's addresses.
    fn get_machine_addresses(&self, name: &str) -> zbus::Result<Vec<(i32, Vec<u8>)>>;
    /// A machine's os-release.
    #[zbus(name = "GetMachineOSRelease")]
    fn get_machine_os_release(&self, name: &str) -> zbus::Result<HashMap<String, String>>;
    /// A machine's UID shift.
    #[zbus(name = "GetMachineUIDShift")]
    fn get_machine_uid_shift(&self, name: &str) -> zbus::Result<u32>;
    /// A login prompt on a new pty of the machine: its master and the pty's path inside.
    fn open_machine_login(&self, name: &str) -> zbus::Result<(zbus::OwnedFd, String)>;
    /// Copies from the host into the machine (flags: 1 = replace).
    fn copy_to_machine_with_flags(
        &self,
        name: &str,
        source: &str,
        destination: &str,
        flags: u64,
    ) -> zbus::Result<()>;
    /// Copies from the machine to the host (flags: 1 = replace).
    fn copy_from_machine_with_flags(
        &self,
        name: &str,
        source: &str,
        destination: &str,
        flags: u64,
    ) -> zbus::Result<()>;
    /// Bind-mounts a host path into the running machine.
    fn bind_mount_machine(
        &self,
        name: &str,
        source: &str,
        destination: &str,
        read_only: bool,
        mkdir: bool,
    ) -> zbus::Result<()>;
}

/// A row of `ListMachinesDetailed`: name, class, service, os-release ID and VERSION_ID (empty
/// when unknown), addresses (family, bytes).
pub type MachineDetails = (String, String, String, String, String, crate::manager::Addresses);

/// A row of `ListMachineUsage`: name, CPU ns, memory bytes, tasks, block I/O bytes read and
/// written, bytes into and out of the machine's links, MemoryMax, OOM kills (`u64::MAX`:
/// unknown, or no limit).
pub type UsageRow = (String, u64, u64, u64, u64, u64, u64, u64, u64, u64);

/// mctl's additions.
#[zbus::proxy(
    interface = "org.mctl.Manager1",
    default_service = "org.mctl.Machine1",
    default_path = "/org/freedesktop/machine1"
)]
pub trait MctlManager1 {
    /// The machine's payload cgroup (cgroup2 path).
    fn get_machine_control_group(&self, name: &str) -> zbus::Result<String>;
    /// Freezes every process of the machine.
    fn freeze_machine(&self, name: &str) -> zbus::Result<()>;
    /// Thaws the machine.
    fn thaw_machine(&self, name: &str) -> zbus::Result<()>;
    /// Whether the machine is frozen.
    fn is_machine_frozen(&self, name: &str) -> zbus::Result<bool>;
    /// Every machine with its os-release ID and VERSION_ID and its addresses, in one call.
    fn list_machines_detailed(&self) -> zbus::Result<Vec<MachineDetails>>;
    /// Changes a running machine's resource limits (`NAME=VALUE`, systemd's names).
    fn set_machine_properties(&self, name: &str, runtime: bool, properties: &[String]) -> zbus::Result<()>;
    /// Every machine's resource use, in one call.
    fn list_machine_usage(&self) -> zbus::Result<Vec<UsageRow>>;
}

/// `Properties.GetAll("")` on `path`: every property of every interface, as machinectl asks.
pub async fn all_properties(
    conn: &zbus::Connection,
    destination: &str,
    path: &str,
) -> zbus::Result<HashMap<String, OwnedVariant>> {
    let reply = conn
        .call_method(Some(destination), path, Some("org.freedesktop.DBus.Properties"), "GetAll", &("",))
        .await?;
    reply.body().deserialize()
}

/// The manager object's path.
pub fn manager_path() -> &'static str {
    MANAGER_PATH
}

/// The parts of systemd's `org.freedesktop.systemd1.Manager` that `mctl start/stop/enable/
/// disable` use, as machinectl does.
#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
pub trait Systemd1 {
    /// Starts a unit; returns the job.
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    /// Stops a unit; returns the job.
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    /// Enables unit files.
    fn enable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
        force: bool,
    ) -> zbus::Result<(bool, Vec<(String, String, String)>)>;
    /// Disables unit files.
    fn disable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
    ) -> zbus::Result<Vec<(String, String, String)>>;
    /// Reloads unit files.
    fn reload(&self) -> zbus::Result<()>;
    /// Asks for job signals.
    fn subscribe(&self) -> zbus::Result<()>;
    /// A job ended: id, job path, unit, result.
    #[zbus(signal)]
    fn job_removed(&self, id: u32, job: OwnedObjectPath, unit: String, result: String) -> zbus::Result<()>;
}
