//! Who may do what: anyone may look, only root (or a caller holding the capability machined
//! asks for) may change things.

use super::{ManagerError, procfs};

/// What a caller wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Register a machine (CAP_SYS_ADMIN, as machined's vtable check).
    Register,
    /// Terminate, kill or unregister (CAP_KILL, as machined's polkit short-cut).
    Manage,
    /// Remove, rename, clone or mark images (CAP_SYS_ADMIN, machined's manage-images).
    ManageImages,
}

impl Action {
    fn capability(self) -> (u32, &'static str) {
        match self {
            Action::Register => (21, "CAP_SYS_ADMIN"),
            Action::Manage => (5, "CAP_KILL"),
            Action::ManageImages => (21, "CAP_SYS_ADMIN"),
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Action::Register => "register machines",
            Action::Manage => "terminate, kill or unregister machines",
            Action::ManageImages => "change images",
        }
    }
}

/// The peer of a call, as the bus reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// Its uid.
    pub uid: u32,
    /// Its pid.
    pub pid: u32,
}

impl Caller {
    /// Checks that the caller may do `action`.
    pub fn authorize(&self, action: Action) -> Result<(), ManagerError> {
        let (cap, cap_name) = action.capability();
        let euid = nix::unistd::geteuid().as_raw();
        if self.uid == 0 || self.uid == euid || procfs::effective_caps(self.pid) & (1u64 << cap) != 0 {
            return Ok(());
        }
        Err(ManagerError::AccessDenied(format!(
            "Access denied: only root or a caller with {cap_name} may {} (caller uid {})",
            action.verb(),
            self.uid
        )))
    }
}
