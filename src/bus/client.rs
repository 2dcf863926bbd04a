//! Running D-Bus client calls from synchronous code that forks afterwards (the launcher, the
//! CLI's `shell`): each runs on a short-lived thread with its own current-thread runtime,
//! which is joined, so the caller is single-threaded again when it returns.

use std::future::Future;
use std::time::{Duration, Instant};

/// Runs `f` to completion on a fresh thread and runtime; `None` if the thread panicked or the
/// runtime could not start.
pub fn block_on_thread<F, Fut, T>(f: F) -> Option<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let out = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
        let out = rt.block_on(f());
        rt.shutdown_timeout(Duration::from_millis(200));
        Some(out)
    })
    .join()
    .ok()
    .flatten();
    wait_single_threaded();
    out
}

/// Waits (briefly) until this process has no thread but the main one.
pub fn wait_single_threaded() {
    let deadline = Instant::now() + Duration::from_secs(1);
    while std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(1) > 1
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Connects to the system bus (`$DBUS_SYSTEM_BUS_ADDRESS`, or the standard socket).
pub async fn system_bus() -> zbus::Result<zbus::Connection> {
    zbus::connection::Builder::system().build().await
}
