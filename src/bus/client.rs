//! Running D-Bus client calls from synchronous code that forks afterwards (the launcher, the
//! CLI's `shell`): each runs on a short-lived thread with its own current-thread runtime,
//! which is joined, so the caller is single-threaded again when it returns (the fork wrappers
//! in `sys::linux` wait for the thread to be fully gone).

use std::future::Future;
use std::time::Duration;

/// Connects to the system bus (`$DBUS_SYSTEM_BUS_ADDRESS`, or the standard socket).
pub async fn system_bus() -> zbus::Result<zbus::Connection> {
    zbus::connection::Builder::system().build().await
}

/// Why no system bus can answer, when that is clear without connecting: its address is a
/// single unix socket path and nothing is there. Spares a caller the bus client (a thread
/// and an async runtime) on hosts without a bus.
pub fn system_bus_missing() -> Option<String> {
    let address = std::env::var("DBUS_SYSTEM_BUS_ADDRESS")
        .unwrap_or_else(|_| "unix:path=/var/run/dbus/system_bus_socket".to_owned());
    let path = address.strip_prefix("unix:path=").filter(|p| !p.contains([';', ',', '%']))?;
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(format!("no system bus socket at {path}")),
        _ => None,
    }
}

/// The D-Bus error name of a failed call, if the peer answered with an error.
pub fn error_name(e: &zbus::Error) -> Option<String> {
    use zbus::DBusError;
    match e {
        zbus::Error::MethodError(name, _, _) => Some(name.to_string()),
        zbus::Error::FDO(f) => Some(f.name().to_string()),
        _ => None,
    }
}

/// The human part of an error: the peer's message for a D-Bus error (what machined's clients
/// print), the error itself otherwise.
pub fn error_message(e: &zbus::Error) -> String {
    use zbus::DBusError;
    match e {
        zbus::Error::MethodError(_, Some(msg), _) => msg.clone(),
        zbus::Error::FDO(f) => f.description().map(str::to_owned).unwrap_or_else(|| f.to_string()),
        other => other.to_string(),
    }
}

/// Whether the error means nobody serves the name (no manager running).
pub fn is_no_manager(e: &zbus::Error) -> bool {
    matches!(
        error_name(e).as_deref(),
        Some("org.freedesktop.DBus.Error.ServiceUnknown" | "org.freedesktop.DBus.Error.NameHasNoOwner")
    ) || matches!(e, zbus::Error::InputOutput(_) | zbus::Error::Address(_) | zbus::Error::Handshake(_))
}

/// Makes a read-only call, asking again for up to `patience` while it is turned away for load:
/// the bus daemon refuses calls to a manager whose queue there is full (another caller
/// flooding it), and mctld refuses calls beyond its limits; neither call was carried out.
pub async fn retry_when_busy<T, F, Fut>(patience: Duration, mut call: F) -> zbus::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = zbus::Result<T>>,
{
    let deadline = std::time::Instant::now() + patience;
    let mut pause = Duration::from_millis(20);
    loop {
        match call().await {
            Err(e)
                if error_name(&e).as_deref() == Some("org.freedesktop.DBus.Error.LimitsExceeded")
                    && std::time::Instant::now() + pause < deadline =>
            {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            other => return other,
        }
    }
}
