//! `mctld`: the manager on the system bus. Wires [`crate::manager::Manager`] to the D-Bus
//! [`crate::bus::service::Service`], takes the bus names, reports readiness to systemd and runs
//! until SIGTERM or SIGINT.

use std::path::PathBuf;

use std::num::NonZeroUsize;
use std::sync::Arc;

use crate::bus::limits::Limits;
use crate::bus::service::Service;
use crate::bus::{COMPAT_NAME, OWN_NAME};
use crate::manager::pool::{BlockingPool, PoolConfig};
use crate::manager::{Manager, ManagerConfig};

/// Messages zbus may hold unread for mctld's dispatcher: each may be as large as the bus
/// allows (32 MiB on a system bus), and the dispatcher takes them off at once.
const MAX_QUEUED: usize = 4;

/// The runtime's blocking threads: the pool's slots and a few for anything else.
pub fn blocking_threads() -> usize {
    PoolConfig::default().threads() + 4
}

/// mctld's settings.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "mctld", version = crate::cli::args::VERSION, about = "The mctl machine manager (org.freedesktop.machine1 on D-Bus)")]
pub struct DaemonArgs {
    /// Also take systemd-machined's bus name, org.freedesktop.machine1 (for hosts without it).
    #[arg(long)]
    pub machined_compat: bool,
    /// Where the state of running machines is kept.
    #[arg(long, default_value = "/run/mctl/machines", value_name = "DIR")]
    pub state_dir: PathBuf,
    /// The image pool reported as PoolPath.
    #[arg(long, default_value = "/var/lib/machines", value_name = "DIR")]
    pub pool_path: PathBuf,
}

/// A daemon failure.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Connecting to the system bus failed.
    #[error("cannot connect to the system bus: {0}")]
    Connect(#[source] zbus::Error),
    /// A bus name could not be taken.
    #[error("cannot own the bus name {name}: {source}")]
    Name {
        /// The name.
        name: &'static str,
        /// The cause.
        #[source]
        source: zbus::Error,
    },
    /// The manager could not start.
    #[error("{0}")]
    Manager(#[from] crate::manager::ManagerError),
    /// The bus thread could not be started.
    #[error("cannot start the bus thread: {0}")]
    Thread(#[source] std::io::Error),
    /// Signal handling could not be set up.
    #[error("cannot handle signals: {0}")]
    Signals(#[source] std::io::Error),
}

/// Connects to the system bus from a thread of its own, where zbus's socket reader then runs:
/// mctld drains its socket at once however busy its workers are. While it does not, the bus
/// daemon queues the calls for mctld, and past its limit turns away everybody's calls to mctld
/// (root's included) and even its own replies to mctld.
async fn connect_on_own_thread() -> Result<zbus::Connection, DaemonError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("mctld-bus".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(zbus::Error::InputOutput(Arc::new(e))));
                    return;
                }
            };
            rt.block_on(async move {
                let conn = zbus::connection::Builder::system()
                    .max_queued(NonZeroUsize::new(MAX_QUEUED).expect("not zero"))
                    .build()
                    .await;
                let _ = tx.send(conn);
                // Drives the connection's reader for the life of the process.
                std::future::pending::<()>().await
            })
        })
        .map_err(DaemonError::Thread)?;
    rx.await
        .unwrap_or_else(|_| Err(zbus::Error::Failure("the bus thread ended".into())))
        .map_err(DaemonError::Connect)
}

/// Runs mctld until it is told to stop.
pub async fn run(args: DaemonArgs) -> Result<(), DaemonError> {
    let cfg =
        ManagerConfig { state_dir: args.state_dir, pool_path: args.pool_path, ..ManagerConfig::default() };
    let mgr = Manager::new(&cfg)?;
    mgr.set_unit_control(Box::new(crate::bus::systemd::Systemd));
    let conn = connect_on_own_thread().await?;
    let pool = Arc::new(BlockingPool::new(PoolConfig::default()));
    let service = Service::new(conn.clone(), mgr.clone(), pool, Limits::default());
    // Subscribe before taking names, so that calls racing the name acquisition are not lost.
    let stream = zbus::MessageStream::from(&conn);
    let events = mgr.subscribe();
    let serving = tokio::spawn({
        let service = service.clone();
        async move { service.run(stream, events).await }
    });
    // Survivors of a previous mctld are adopted (and announced) once signals can be emitted.
    let adopted = mgr.recover();
    if !adopted.is_empty() {
        tracing::info!("re-adopted running machines: {}", adopted.join(", "));
    }
    let mut names = vec![OWN_NAME];
    if args.machined_compat {
        names.push(COMPAT_NAME);
    }
    for name in names {
        conn.request_name(name).await.map_err(|source| DaemonError::Name { name, source })?;
    }
    crate::launcher::notify::tell_supervisor(&[sd_notify::NotifyState::Ready]);
    tracing::info!(
        "mctld ready on the system bus{}",
        if args.machined_compat { " (machined-compatible)" } else { "" }
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(DaemonError::Signals)?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(DaemonError::Signals)?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = serving => {}
    }
    crate::launcher::notify::tell_supervisor(&[sd_notify::NotifyState::Stopping]);
    // Machines keep running; their state files let the next mctld adopt them.
    Ok(())
}
