//! The manager's blocking work (reading files in guests and images, joining network
//! namespaces, waiting for the freezer, copying trees) runs here, off the async threads:
//! bounded in number, so that no caller can take up every thread, and optionally in time, so
//! that a read that hangs on something a guest controls does not hang the call.
//!
//! Privileged callers have slots of their own: no amount of unprivileged work delays them.
//! A slot stays taken until its work really ends, also after the caller gave up waiting, so
//! work that hangs for good uses up its class's slots and nothing more.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

/// Why blocking work did not produce a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// Every slot of the caller's class stayed busy while it waited.
    #[error("too many requests in progress, try again later")]
    Busy,
    /// The work did not finish in time (it goes on in its slot).
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
    /// The work panicked.
    #[error("internal error: {0}")]
    Panicked(String),
}

/// Whose work it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Root's (or mctld's own user's).
    Privileged,
    /// Anybody else's.
    Unprivileged,
}

/// Sizes of a [`BlockingPool`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Slots for privileged callers.
    pub privileged: usize,
    /// Slots shared by everybody else.
    pub unprivileged: usize,
    /// How long privileged work waits for a slot.
    pub privileged_wait: Duration,
    /// How long unprivileged work waits for a slot.
    pub unprivileged_wait: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            privileged: 8,
            unprivileged: 4,
            privileged_wait: Duration::from_secs(30),
            unprivileged_wait: Duration::from_secs(2),
        }
    }
}

impl PoolConfig {
    /// Blocking threads the runtime needs at most for this pool.
    pub fn threads(&self) -> usize {
        self.privileged + self.unprivileged
    }
}

/// Bounded slots for blocking work, by class.
#[derive(Debug)]
pub struct BlockingPool {
    cfg: PoolConfig,
    privileged: Arc<Semaphore>,
    unprivileged: Arc<Semaphore>,
}

impl BlockingPool {
    /// A pool of `cfg`'s sizes.
    pub fn new(cfg: PoolConfig) -> Self {
        Self {
            privileged: Arc::new(Semaphore::new(cfg.privileged)),
            unprivileged: Arc::new(Semaphore::new(cfg.unprivileged)),
            cfg,
        }
    }

    /// Runs `work` on a blocking thread in one of `class`'s slots, giving up after `limit`.
    pub async fn run<T, F>(&self, class: Class, limit: Option<Duration>, work: F) -> Result<T, PoolError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (slots, wait) = match class {
            Class::Privileged => (&self.privileged, self.cfg.privileged_wait),
            Class::Unprivileged => (&self.unprivileged, self.cfg.unprivileged_wait),
        };
        let permit = tokio::time::timeout(wait, slots.clone().acquire_owned())
            .await
            .map_err(|_| PoolError::Busy)?
            .map_err(|_| PoolError::Busy)?;
        let task = tokio::task::spawn_blocking(move || {
            // Held until the work ends, however long the caller waits.
            let _permit = permit;
            work()
        });
        let joined = match limit {
            Some(d) => tokio::time::timeout(d, task).await.map_err(|_| PoolError::TimedOut(d))?,
            None => task.await,
        };
        joined.map_err(|e| PoolError::Panicked(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap()
    }

    #[test]
    fn hanging_work_times_out_and_keeps_its_slot() {
        rt().block_on(async {
            let pool = BlockingPool::new(PoolConfig {
                privileged: 1,
                unprivileged: 1,
                privileged_wait: Duration::from_millis(50),
                unprivileged_wait: Duration::from_millis(50),
            });
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            // Stands in for a read that hangs until something outside lets it go.
            let hung = pool
                .run(Class::Unprivileged, Some(Duration::from_millis(50)), move || rx.recv().is_ok())
                .await;
            assert_eq!(hung, Err(PoolError::TimedOut(Duration::from_millis(50))));
            // The hung work still has the only unprivileged slot: the next caller is turned
            // away at once instead of queueing; privileged work goes on in its own slots.
            assert_eq!(pool.run(Class::Unprivileged, None, || 1).await, Err(PoolError::Busy));
            assert_eq!(pool.run(Class::Privileged, None, || 2).await, Ok(2));
            drop(tx);
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            loop {
                match pool.run(Class::Unprivileged, None, || 3).await {
                    Ok(v) => break assert_eq!(v, 3),
                    Err(PoolError::Busy) if std::time::Instant::now() < deadline => continue,
                    Err(e) => panic!("{e}"),
                }
            }
        });
    }
}
