//! Registration of the machine with mctld over the system bus.
//!
//! The launcher forks after registering (again on every reboot), and forking is only sound
//! while single-threaded, so each call goes through [`block_on_thread`].

use crate::bus::client::{error_message, is_no_manager, system_bus, system_bus_missing};
use crate::bus::proxy::Manager1Proxy;
use crate::runtime::block_on_thread;

/// `--register=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RegisterMode {
    /// Register when a manager answers; otherwise warn once and carry on.
    Auto,
    /// Register, or fail.
    Yes,
    /// Do not register.
    No,
}

/// What the manager learns about a machine.
#[derive(Debug, Clone)]
pub struct MachineInfo {
    /// Machine name, already validated; mctld lists and looks the machine up by it.
    pub name: String,
    /// UUID.
    pub id: uuid::Uuid,
    /// PID 1, as a host pid.
    pub leader: i32,
    /// Root directory.
    pub root: String,
    /// Host-side interfaces.
    pub netif: Vec<i32>,
    /// What started it (`mctl`; an OCI container's engine, e.g. `podman`).
    pub service: String,
}

/// A registration that failed.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// No manager is reachable (no bus, or nobody owns mctld's name).
    #[error("no machine manager answers on the system bus ({0})")]
    NoManager(String),
    /// The manager refused.
    #[error("cannot register machine {name}: {message}")]
    Refused {
        /// Machine name.
        name: String,
        /// The manager's message.
        message: String,
    },
    /// The leader's pid is not one (negative).
    #[error("cannot register machine {name}: {pid} is not a leader pid")]
    BadLeader {
        /// Machine name.
        name: String,
        /// The pid given.
        pid: i32,
    },
}

/// Registers the machine. [`RegisterError::NoManager`] tells "nobody to register with" (fine
/// in [`RegisterMode::Auto`]) from a manager that refused.
pub fn register(info: &MachineInfo) -> Result<(), RegisterError> {
    let info = info.clone();
    let leader = u32::try_from(info.leader)
        .map_err(|_| RegisterError::BadLeader { name: info.name.clone(), pid: info.leader })?;
    if let Some(reason) = system_bus_missing() {
        return Err(RegisterError::NoManager(reason));
    }
    block_on_thread(move || async move {
        {
            let conn = system_bus().await.map_err(|e| RegisterError::NoManager(error_message(&e)))?;
            let proxy =
                Manager1Proxy::new(&conn).await.map_err(|e| RegisterError::NoManager(error_message(&e)))?;
            let root = info.root.as_str();
            proxy
                .register_machine_with_network(
                    &info.name,
                    info.id.as_bytes(),
                    &info.service,
                    "container",
                    leader,
                    root,
                    &info.netif,
                )
                .await
                .map(|_| ())
                .map_err(|e| {
                    if is_no_manager(&e) {
                        RegisterError::NoManager(error_message(&e))
                    } else {
                        RegisterError::Refused { name: info.name.clone(), message: error_message(&e) }
                    }
                })
        }
    })
    .unwrap_or_else(|| Err(RegisterError::NoManager("the bus client could not run".into())))
}

/// Tells the manager the machine is gone (errors are ignored: the manager also notices on
/// its own when the leader exits).
pub fn unregister(name: &str) {
    let name = name.to_owned();
    block_on_thread(move || async move {
        if let Ok(conn) = system_bus().await
            && let Ok(proxy) = Manager1Proxy::new(&conn).await
        {
            let _ = proxy.unregister_machine(&name).await;
        }
    });
}
