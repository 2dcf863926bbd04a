//! Interruption: SIGINT, SIGTERM or SIGHUP during an image operation must leave nothing behind.
//!
//! A signal sets a flag that the copy loops check between entries and chunks, so they stop
//! and drop their temporaries the normal way. A loop can also be stuck in a blocking read (a
//! stalled download, an idle stdin) where it never sees the flag; so temporaries are also
//! registered here, and a watchdog thread removes whatever is still registered after a grace
//! period and exits with 128+signal. Renames into place happen under the registry lock after a
//! last look at the flag, so the watchdog never removes something that was just committed and
//! nothing is committed after the watchdog started cleaning.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

/// How long the operation gets to clean up by itself before the watchdog does it.
const GRACE: Duration = Duration::from_secs(3);

static SIGNAL: AtomicI32 = AtomicI32::new(0);
static REGISTRY: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();

/// The operation was interrupted by signal `.0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("interrupted by signal {0}")]
pub struct Interrupted(pub i32);

impl Interrupted {
    /// The exit status a shell reports for this signal.
    pub fn exit_code(self) -> i32 {
        128 + self.0
    }
}

impl From<Interrupted> for io::Error {
    fn from(i: Interrupted) -> Self {
        io::Error::new(io::ErrorKind::Interrupted, i)
    }
}

/// Installs the signal handling (once per process; later calls are no-ops). Library users
/// that never call it get no signal handling: signals keep their default action.
pub fn install() -> io::Result<()> {
    INSTALLED
        .get_or_init(|| {
            use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
            let mut signals =
                signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]).map_err(|e| e.to_string())?;
            std::thread::Builder::new()
                .name("mctl-interrupt".into())
                .spawn(move || {
                    if let Some(sig) = signals.forever().next() {
                        SIGNAL.store(sig, Ordering::SeqCst);
                        std::thread::sleep(GRACE);
                        // Still running: the main thread is stuck. Clean up for it, holding the
                        // lock so that no commit can happen meanwhile, and end the process.
                        let reg = lock();
                        for p in reg.iter() {
                            let _ = crate::guestfs::remove_tree(p);
                        }
                        std::process::exit(128 + sig);
                    }
                })
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(io::Error::other)
}

/// The signal that interrupted us, if any.
pub fn received() -> Option<i32> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// `Err` once a signal arrived; copy loops call it between steps.
pub fn check() -> Result<(), Interrupted> {
    received().map_or(Ok(()), |s| Err(Interrupted(s)))
}

fn lock() -> MutexGuard<'static, Vec<PathBuf>> {
    // A panic while holding the lock leaves a usable list; keep going.
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// A temporary file or directory that must not survive the operation: removed when dropped
/// unless [`Temporary::commit`] moved it into place.
#[derive(Debug)]
pub struct Temporary {
    path: PathBuf,
    armed: bool,
}

impl Temporary {
    /// Registers `path` (which the caller is about to create, or just created).
    pub fn register(path: PathBuf) -> Self {
        lock().push(path.clone());
        Self { path, armed: true }
    }

    /// The temporary's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `rename` (which moves the temporary into place) unless a signal arrived, under the
    /// registry lock; on success the temporary is no longer removed.
    pub fn commit<T, E: From<Interrupted>>(
        mut self,
        rename: impl FnOnce(&Path) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut reg = lock();
        check()?;
        let out = rename(&self.path)?;
        reg.retain(|p| p != &self.path);
        self.armed = false;
        Ok(out)
    }
}

impl Drop for Temporary {
    fn drop(&mut self) {
        if self.armed {
            // Under the lock: a watchdog that wakes up meanwhile waits for this removal to end
            // instead of racing it.
            let mut reg = lock();
            let _ = crate::guestfs::remove_tree(&self.path);
            reg.retain(|p| p != &self.path);
        }
    }
}
