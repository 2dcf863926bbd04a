//! Who may do what: anyone may look; only root, or the user mctld itself runs as, may change
//! things.
//!
//! The decision rests on the uid the bus daemon recorded for the caller's connection, never on
//! what a pid looks like now: the process the bus names for a connection may have exec'd a
//! setuid or file-capability binary since, while another process keeps using the connection.

use super::ManagerError;

/// What a caller wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Register a machine.
    Register,
    /// Terminate, kill, freeze, thaw, limit or unregister a machine.
    Manage,
    /// Remove, rename, clone or mark images.
    ManageImages,
    /// Open terminals, logins or shells in machines, copy files in or out, bind-mount into them.
    Enter,
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Action::Register => "register machines",
            Action::Manage => "terminate, kill, freeze, limit or unregister machines",
            Action::ManageImages => "change images",
            Action::Enter => "open shells in machines or move files in and out of them",
        }
    }
}

/// The peer of a call, as the bus daemon reports its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// The uid the connection authenticated as (`UnixUserID`).
    pub uid: u32,
    /// The pid that connected (`ProcessID`): for finding the caller's machine, never for
    /// deciding what it may do.
    pub pid: u32,
}

/// Whether a caller of `uid` may change things in an mctld whose effective uid is `own_euid`.
pub fn may_change(uid: u32, own_euid: u32) -> bool {
    uid == 0 || uid == own_euid
}

impl Caller {
    /// Checks that the caller may do `action`.
    pub fn authorize(&self, action: Action) -> Result<(), ManagerError> {
        if may_change(self.uid, nix::unistd::geteuid().as_raw()) {
            return Ok(());
        }
        Err(ManagerError::AccessDenied(format!(
            "Access denied: only root may {} (caller uid {})",
            action.verb(),
            self.uid
        )))
    }

    /// Whether the caller may change things (root or mctld's own user): such callers are not
    /// held to the limits on unprivileged work.
    pub fn is_privileged(&self) -> bool {
        may_change(self.uid, nix::unistd::geteuid().as_raw())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_root_and_our_own_user_may_change_things() {
        assert!(may_change(0, 0));
        assert!(may_change(0, 1000));
        assert!(may_change(1000, 1000));
        assert!(!may_change(65534, 0));
        assert!(!may_change(1000, 1001));
    }

    #[test]
    fn the_pid_grants_nothing() {
        // Our own pid runs as root with every capability (the tests run as root, or at least
        // as mctld would); a caller of another uid naming it is refused all the same.
        let uid = nix::unistd::geteuid().as_raw().wrapping_add(1).max(1);
        let caller = Caller { uid, pid: std::process::id() };
        for action in [Action::Register, Action::Manage, Action::ManageImages, Action::Enter] {
            let e = caller.authorize(action).unwrap_err();
            assert!(
                matches!(&e, ManagerError::AccessDenied(m) if m.starts_with("Access denied: only root may ")),
                "{e}"
            );
        }
        let root = Caller { uid: 0, pid: u32::MAX };
        assert!(root.authorize(Action::Manage).is_ok());
    }
}
