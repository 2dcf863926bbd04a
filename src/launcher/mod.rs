//! The launcher: `mctl boot` and `mctl run`.
//!
//! The parent ([`process`]) stays in the host's namespaces. It forks the outer child
//! ([`outer`]: new mount namespace, filesystem, pivot), which forks the machine's PID 1
//! ([`inner`]: new pid, uts, ipc and cgroup namespaces) as its sibling, the parent's own
//! child, detaches the host's tree and exits. The parent relays readiness ([`notify`]) and the
//! console ([`console`]), turns SIGTERM into the guest's halt request, and removes the
//! machine's cgroup when PID 1 is gone.
//! The parent is single-threaded until every fork is done.

use std::io;
use std::path::{Path, PathBuf};

pub mod attributes;
pub mod bind_user;
pub mod channel;
pub mod console;
pub mod credentials;
pub mod enter;
pub mod events;
pub(crate) mod exec;
pub mod guest_units;
pub mod host_etc;
pub mod identity;
mod inner;
pub mod journal;
pub mod mounts;
pub mod notify;
mod outer;
mod private_users;
pub mod process;
pub mod record;
pub mod register;
pub mod security;
pub mod spec;
pub mod stub_init;

pub use process::launch;
pub use spec::LaunchSpec;

/// The PATH a machine's payload starts with.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the children need, prepared by the parent before forking.
#[derive(Debug)]
struct ChildContext<'a> {
    spec: &'a LaunchSpec,
    uuid: uuid::Uuid,
    boot_id: uuid::Uuid,
    /// cgroup files the outer child writes `0` to, to move itself into the payload cgroup:
    /// v1 `tasks` files, plus cgroup2's `cgroup.procs` when it could not be born there.
    join_cgroup_files: Vec<crate::cgroups::CgroupFile>,
    /// The parent makes the v1 cgroups while the outer child builds the file system: the
    /// child joins once told they exist ([`channel::ChildEnd::wait_cgroups`]).
    cgroups_pending: bool,
    /// Whether PID 1 waits for the launcher's go: only when the launcher has something to
    /// connect first (the machine's network, its registration).
    wait_for_go: bool,
    host: mounts::HostFacts,
    capabilities: caps::CapsHashSet,
    /// The signals the launcher ignores (a mask, bit N-1 for signal N): PID 1 inherits them
    /// and resets them to default before it executes.
    ignored_signals: Option<u64>,
    /// The system call filter PID 1 loads right before it executes the payload.
    seccomp: crate::seccomp::SyscallFilter,
    /// An empty host directory the outer child mounts its scratch tmpfs on (private to its
    /// mount namespace), when the spec needs one.
    scratch: Option<PathBuf>,
    env: Vec<(String, String)>,
    /// The host ids the machine's user namespace maps onto (`--private-users`).
    private_users: Option<crate::userns::IdRange>,
    /// Whether the image is mounted idmapped through that user namespace.
    idmap: bool,
}

/// A setup step in a child that failed; reported to the parent as text.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ChildError {
    #[error("cannot {0}: {1}")]
    Step(&'static str, #[source] io::Error),
    #[error("cannot {step} {}: {source}", path.display())]
    PathStep {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Mount(#[from] mounts::MountError),
    #[error(transparent)]
    Channel(#[from] channel::ChannelError),
    #[error("{0}")]
    Message(String),
    #[error("cannot execute {0}: {1}")]
    Exec(String, #[source] io::Error),
    #[error("command '{0}' not found in the machine")]
    NotFound(String),
}

impl ChildError {
    pub(crate) fn step(what: &'static str) -> impl FnOnce(io::Error) -> ChildError {
        move |e| ChildError::Step(what, e)
    }

    pub(crate) fn path_step<'a>(
        what: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(io::Error) -> ChildError + 'a {
        move |e| ChildError::PathStep { step: what, path: path.to_owned(), source: e }
    }

    /// The launcher's exit status for this failure: 127 and 126 as a shell reports a missing
    /// or unexecutable command, 1 otherwise.
    pub(crate) fn exit_code(&self) -> i32 {
        match self {
            ChildError::NotFound(_) => 127,
            ChildError::Exec(_, e) if e.raw_os_error() == Some(libc::ENOENT) => 127,
            ChildError::Exec(..) => 126,
            _ => 1,
        }
    }
}
