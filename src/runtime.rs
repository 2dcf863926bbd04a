//! Async code for synchronous callers: the launcher and the CLI are synchronous (the launcher
//! must stay single-threaded while it forks), but zbus and rtnetlink are async. Each such call
//! runs on a thread and a current-thread runtime of its own, gone when it returns.

use std::future::Future;
use std::time::Duration;

/// Runs `f` to completion on a fresh thread and runtime; `None` if the thread panicked or the
/// runtime could not start.
pub fn block_on_thread<F, Fut, T>(f: F) -> Option<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
        let out = rt.block_on(f());
        rt.shutdown_timeout(Duration::from_millis(200));
        Some(out)
    })
    .join()
    .ok()
    .flatten()
}
