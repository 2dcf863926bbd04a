//! Resource properties of a systemd unit (`SetUnitProperties`), for machines that run as a
//! unit's cgroup (`--keep-unit` under `mctl@.service`): systemd owns that cgroup's attributes
//! and rewrites them from the unit's settings, so limits go through it.

use zbus::Variant as Value;

use crate::cgroups::resources::{Property, SystemdValue};

/// Why systemd did not take the properties.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    /// No service manager answers on the system bus (not a systemd host).
    #[error("no systemd on the system bus")]
    Absent,
    /// systemd refused or the call failed.
    #[error("systemd refused the unit's new properties: {0}")]
    Refused(String),
    /// systemd did not start the machine's scope.
    #[error("systemd did not start the machine's scope: {0}")]
    ScopeRefused(String),
}

fn value(v: SystemdValue) -> Value<'static> {
    match v {
        SystemdValue::Number(n) => Value::from(n),
        SystemdValue::Bytes(b) => Value::from(b),
        SystemdValue::DeviceLimits(list) => Value::from(list),
    }
}

/// [`crate::manager::resources::UnitControl`] for mctld: systemd on the system bus.
#[derive(Debug, Clone, Copy)]
pub struct Systemd;

impl crate::manager::resources::UnitControl for Systemd {
    fn set_unit_properties(&self, unit: &str, runtime: bool, props: &[Property]) -> Result<bool, String> {
        set_if_systemd(unit, runtime, props)
    }
}

/// [`set_unit_properties`] as [`crate::cgroups::resources::MachineDirs::apply_all`] asks:
/// Ok(true) when systemd took them, Ok(false) when no systemd answers.
pub fn set_if_systemd(unit: &str, runtime: bool, props: &[Property]) -> Result<bool, String> {
    match set_unit_properties(unit, runtime, props) {
        Ok(()) => Ok(true),
        Err(SystemdError::Absent) => Ok(false),
        Err(e) => Err(e.to_string()),
    }
}

/// `SetUnitProperties(unit, runtime, props)` on the system bus, from synchronous code.
pub fn set_unit_properties(unit: &str, runtime: bool, props: &[Property]) -> Result<(), SystemdError> {
    let body: Vec<(String, Value<'static>)> =
        props.iter().map(|p| (p.systemd_name().to_owned(), value(p.systemd_value()))).collect();
    call_manager("SetUnitProperties", (unit.to_owned(), runtime, body), SystemdError::Refused)
}

/// `StartTransientUnit` of the scope `unit` in `slice` holding process `pid`, delegated (the
/// machine's cgroups are made below it), as nspawn has systemd make a machine's scope. Returns
/// once the call is answered; systemd moves the process when the job runs.
pub fn start_scope(unit: &str, slice: &str, description: &str, pid: u32) -> Result<(), SystemdError> {
    let props: Vec<(String, Value<'static>)> = vec![
        ("Slice".into(), Value::from(slice.to_owned())),
        ("Description".into(), Value::from(description.to_owned())),
        ("Delegate".into(), Value::from(true)),
        ("PIDs".into(), Value::from(vec![pid])),
    ];
    let aux: Vec<(String, Vec<(String, Value<'static>)>)> = Vec::new();
    call_manager("StartTransientUnit", (unit.to_owned(), "fail", props, aux), SystemdError::ScopeRefused)
}

/// Calls `method` of systemd's manager on the system bus from synchronous code; `refused` wraps
/// systemd's error message.
fn call_manager<B>(
    method: &'static str,
    body: B,
    refused: fn(String) -> SystemdError,
) -> Result<(), SystemdError>
where
    B: serde::Serialize + zbus::zvariant::DynamicType + Send + 'static,
{
    crate::runtime::block_on_thread(move || async move {
        let conn = super::client::system_bus().await.map_err(|_| SystemdError::Absent)?;
        let reply = conn
            .call_method(
                Some("org.freedesktop.systemd1"),
                "/org/freedesktop/systemd1",
                Some("org.freedesktop.systemd1.Manager"),
                method,
                &body,
            )
            .await;
        match reply {
            Ok(_) => Ok(()),
            Err(e) if super::client::is_no_manager(&e) => Err(SystemdError::Absent),
            Err(e) => Err(refused(super::client::error_message(&e))),
        }
    })
    .unwrap_or_else(|| Err(refused("the D-Bus client could not run".into())))
}
