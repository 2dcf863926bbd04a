//! OCI containers: the runc-compatible runtime (`mctl-runc`) that podman, containerd and CRI-O
//! drive.
//!
//! A container is a bundle (a `config.json` and a root filesystem) run as the runtime
//! specification says. `create` ([`create`]) forks a setup stage that enters the container's
//! namespaces and forks the container's init ([`init`]), which mounts, pivots, drops to the
//! configured process and waits on the exec fifo until `start` opens it; the runtime itself
//! exits once the container is created, as runc does, so the engine's monitor (conmon, the
//! containerd shim) becomes the init's parent. State lives under `--root` ([`state`]), one
//! locked directory per container. The container's cgroup, resources and freezer are
//! [`cgroup`]'s; the system call filter from `config.json` is [`seccomp`]'s.

use std::io;
use std::path::PathBuf;

pub mod cgroup;
pub mod cli;
pub mod console;
pub mod create;
pub mod exec;
pub mod hooks;
mod init;
pub mod lsm;
mod mounts;
pub mod process;
pub mod seccomp;
pub mod state;
mod sync;

/// The OCI runtime specification version this runtime implements.
pub const OCI_VERSION: &str = "1.2.0";

/// A runtime operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// `config.json` could not be read or is not a valid configuration.
    #[error("{}: {reason}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A container id that runc would refuse.
    #[error("invalid container id '{0}': use letters, digits, '_', '+', '-' and '.'")]
    BadId(String),
    /// `create` of an id that exists.
    #[error("container with id exists: {0}")]
    Exists(String),
    /// An id with no state.
    #[error("container does not exist: {0}")]
    NotFound(String),
    /// The operation is not allowed in the container's status.
    #[error("{0}")]
    WrongStatus(String),
    /// A filesystem or process step on the host failed.
    #[error("cannot {step} {}: {source}", path.display())]
    Io {
        /// What was being done.
        step: &'static str,
        /// The path (or process) involved.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The container's setup failed in one of its own processes; the message names the step.
    #[error("container init: {0}")]
    Setup(String),
    /// A hook failed.
    #[error("{0}")]
    Hook(String),
    /// Registration with mctld was asked for (`--register=yes`) and failed.
    #[error(
        "cannot register the container with the machine manager (use --register=auto or no to go without): {0}"
    )]
    Register(#[source] crate::launcher::register::RegisterError),
    /// The container's cgroups.
    #[error(transparent)]
    Cgroup(#[from] crate::cgroups::CgroupError),
    /// Bad input on the command line or in a process or resources file.
    #[error("{0}")]
    Invalid(String),
}

impl ContainerError {
    pub(crate) fn io(
        step: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> ContainerError {
        let path = path.into();
        move |source| ContainerError::Io { step, path, source }
    }
}

/// Whether `id` is a container id runc accepts (`^[\w+\-.]+$`, not `.` or `..`).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id != "."
        && id != ".."
        && id.len() <= 1024
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_+-.".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_as_runc_takes_them() {
        for good in ["a", "abc-DEF_1.2+3", "82eb1250a492df0fed9b10e29e23b1c9"] {
            assert!(valid_id(good), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "../x", "a b", "ä"] {
            assert!(!valid_id(bad), "{bad}");
        }
    }
}
