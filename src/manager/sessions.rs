//! Sessions in machines (machine1's OpenMachinePTY, OpenMachineLogin, OpenMachineShell): the
//! checks machined makes on the arguments, then [`crate::session`] opens them.

use super::auth::Action;
use super::{Caller, Machine, Manager, ManagerError};
use crate::session::{self, Opened, SessionKind, SessionRequest};

/// The arguments of OpenMachineShell.
#[derive(Debug, Clone, Default)]
pub struct ShellRequest {
    /// User name or uid in the machine; empty for root.
    pub user: String,
    /// Absolute path of the program in the machine; empty for the user's login shell.
    pub path: String,
    /// argv (argv\[0\] first); empty for `[path]`.
    pub args: Vec<String>,
    /// `NAME=VALUE` assignments.
    pub environment: Vec<String>,
}

impl ShellRequest {
    /// Checks the arguments as machined does and turns them into a session.
    fn into_kind(self) -> Result<SessionKind, ManagerError> {
        if !self.path.is_empty() && !self.path.starts_with('/') {
            return Err(ManagerError::InvalidArgs(format!("Specified path '{}' is not absolute", self.path)));
        }
        if self.path.is_empty() && !self.args.is_empty() {
            return Err(ManagerError::InvalidArgs("Arguments given without a path".into()));
        }
        let mut env = Vec::new();
        for a in &self.environment {
            match a.split_once('=') {
                Some((k, v)) if valid_env_name(k) && !v.contains('\0') => {
                    env.push((k.to_owned(), v.to_owned()))
                }
                _ => return Err(ManagerError::InvalidArgs("Invalid environment assignments".into())),
            }
        }
        let user = if self.user.is_empty() { "root".to_owned() } else { self.user };
        if user.contains(['/', '\0', ':', '\n']) {
            return Err(ManagerError::InvalidArgs(format!("Invalid user name '{user}'")));
        }
        Ok(SessionKind::Shell { user, path: self.path, argv: self.args, env })
    }
}

fn valid_env_name(k: &str) -> bool {
    !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Manager {
    /// A pty of the machine with nothing on it (OpenMachinePTY).
    pub fn open_pty(&self, name: &str, caller: &Caller) -> Result<Opened, ManagerError> {
        self.open_session(name, SessionKind::Pty, caller)
    }

    /// A login prompt on a fresh pty of the machine (OpenMachineLogin).
    pub fn open_login(&self, name: &str, caller: &Caller) -> Result<Opened, ManagerError> {
        self.open_session(name, SessionKind::Login, caller)
    }

    /// A program or login shell on a fresh pty of the machine (OpenMachineShell).
    pub fn open_shell(&self, name: &str, req: ShellRequest, caller: &Caller) -> Result<Opened, ManagerError> {
        let m = self.get(name)?;
        caller.authorize(Action::Enter)?;
        let kind = req.into_kind()?;
        self.open_in(&m, kind)
    }

    fn open_session(&self, name: &str, kind: SessionKind, caller: &Caller) -> Result<Opened, ManagerError> {
        let m = self.get(name)?;
        caller.authorize(Action::Enter)?;
        self.open_in(&m, kind)
    }

    fn open_in(&self, m: &Machine, kind: SessionKind) -> Result<Opened, ManagerError> {
        // `.host`: a session on the host itself, for root (as machined's host-shell).
        let on_host = m.class == super::Class::Host;
        let leader_start = if on_host { 0 } else { self.check_leader(m)? };
        let req = SessionRequest {
            leader: m.leader,
            leader_start,
            machine_cgroup: if on_host {
                String::new()
            } else {
                self.control_group(&m.name).unwrap_or_default()
            },
            on_host,
            kind,
        };
        session::open(&self.session_helper, &req)
            .map_err(|e| ManagerError::Failed(format!("Failed to open a session in machine {}: {e}", m.name)))
    }

    /// The start time of the machine's leader; fails unless the leader is still the process
    /// that registered (state recovered from an old mctld may not know its start time).
    pub(super) fn check_leader(&self, m: &Machine) -> Result<u64, ManagerError> {
        match crate::procfs::start_time(m.leader) {
            Some(t) if m.leader_start == 0 || t == m.leader_start => Ok(t),
            _ => Err(ManagerError::Failed(format!("Machine {} has no running leader", m.name))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(user: &str, path: &str, args: &[&str], env: &[&str]) -> Result<SessionKind, ManagerError> {
        ShellRequest {
            user: user.into(),
            path: path.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            environment: env.iter().map(|s| s.to_string()).collect(),
        }
        .into_kind()
    }

    #[test]
    fn shell_arguments_are_checked_as_machined_does() {
        assert!(
            matches!(shell("", "bin/sh", &[], &[]), Err(ManagerError::InvalidArgs(m)) if m.contains("not absolute"))
        );
        assert!(matches!(shell("", "/bin/sh", &[], &["NOEQUALS"]), Err(ManagerError::InvalidArgs(_))));
        assert!(matches!(shell("", "/bin/sh", &[], &["1X=y"]), Err(ManagerError::InvalidArgs(_))));
        assert!(matches!(shell("../x", "", &[], &[]), Err(ManagerError::InvalidArgs(_))));
        assert_eq!(
            shell("", "/bin/echo", &["echo", "x"], &["TERM=vt100"]).unwrap(),
            SessionKind::Shell {
                user: "root".into(),
                path: "/bin/echo".into(),
                argv: vec!["echo".into(), "x".into()],
                env: vec![("TERM".into(), "vt100".into())],
            }
        );
    }
}
