//! Sessions as units of a guest's own systemd, as machined starts them: a shell becomes the
//! transient `container-shell@N.service` (a PAM login session on the tty, `User=`, utmp), a
//! login prompt the guest's `container-getty@N.service`. Asked of the guest's systemd with its
//! own `systemd-run` and `systemctl` (they speak to PID 1 over its private socket, so no
//! D-Bus daemon is needed in the guest), run as a process of the machine, confined like it:
//! nothing the guest answers is parsed by us, only whether the tool succeeded.

/// What to start on the pty `/dev/pts/N`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionUnit {
    /// `container-getty@N.service`.
    Getty {
        /// The pty number.
        pty: u32,
    },
    /// A transient `container-shell@N.service` running `path` with `args` as `user`.
    Shell {
        /// The pty number.
        pty: u32,
        /// User name or uid.
        user: String,
        /// The program (absolute).
        path: String,
        /// Its arguments after argv\[0\].
        args: Vec<String>,
        /// `NAME=VALUE` assignments.
        env: Vec<String>,
    },
}

/// systemd's private socket, which only a running systemd has.
pub const PRIVATE_SOCKET: &str = "/run/systemd/private";

impl SessionUnit {
    /// The command (found through the machine's PATH) that starts the unit.
    pub fn command(&self) -> Vec<String> {
        match self {
            SessionUnit::Getty { pty } => {
                vec!["systemctl".into(), "start".into(), format!("container-getty@{pty}.service")]
            }
            SessionUnit::Shell { pty, user, path, args, env } => {
                let mut argv: Vec<String> = [
                    "systemd-run".to_owned(),
                    "--quiet".into(),
                    "--no-ask-password".into(),
                    format!("--unit=container-shell@{pty}.service"),
                    format!("--description=Shell for User {user}"),
                    format!("--uid={user}"),
                    "--collect".into(),
                ]
                .into_iter()
                .collect();
                for p in [
                    format!("TTYPath=/dev/pts/{pty}"),
                    "StandardInput=tty".into(),
                    "StandardOutput=tty".into(),
                    "StandardError=tty".into(),
                    "SendSIGHUP=yes".into(),
                    "IgnoreSIGPIPE=no".into(),
                    "KillMode=mixed".into(),
                    "PAMName=login".into(),
                    "WorkingDirectory=-~".into(),
                    format!("UtmpIdentifier=pts/{pty}"),
                    "UtmpMode=user".into(),
                ] {
                    argv.push(format!("--property={p}"));
                }
                argv.extend(env.iter().map(|e| format!("--setenv={e}")));
                argv.push("--".into());
                argv.push(path.clone());
                argv.extend(args.iter().cloned());
                argv
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shell_is_a_transient_unit_on_its_tty_and_a_login_the_guests_getty() {
        let shell = SessionUnit::Shell {
            pty: 3,
            user: "daemon".into(),
            path: "/bin/echo".into(),
            args: vec!["x".into(), "--not-an-option".into()],
            env: vec!["TERM=vt100".into()],
        };
        let argv = shell.command();
        assert_eq!(argv[0], "systemd-run");
        assert!(argv.contains(&"--unit=container-shell@3.service".to_owned()));
        assert!(argv.contains(&"--uid=daemon".to_owned()));
        assert!(argv.contains(&"--property=TTYPath=/dev/pts/3".to_owned()));
        assert!(argv.contains(&"--setenv=TERM=vt100".to_owned()));
        // The command comes after "--", its options left alone.
        assert_eq!(argv[argv.len() - 4..], ["--", "/bin/echo", "x", "--not-an-option"]);
        assert_eq!(
            SessionUnit::Getty { pty: 7 }.command(),
            ["systemctl", "start", "container-getty@7.service"]
        );
    }
}
