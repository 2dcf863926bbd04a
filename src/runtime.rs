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
    spawn_on_thread(f).join()
}

/// [`block_on_thread`] without waiting: the caller goes on meanwhile and takes the result
/// with [`Background::join`].
pub fn spawn_on_thread<F, Fut, T>(f: F) -> Background<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    Background(std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
        let out = rt.block_on(f());
        rt.shutdown_timeout(Duration::from_millis(200));
        Some(out)
    }))
}

/// Work running on a thread of its own (see [`spawn_on_thread`]).
#[derive(Debug)]
pub struct Background<T>(std::thread::JoinHandle<Option<T>>);

impl<T> Background<T> {
    /// Waits for the result; `None` if the thread panicked or its runtime could not start.
    pub fn join(self) -> Option<T> {
        self.0.join().ok().flatten()
    }
}
