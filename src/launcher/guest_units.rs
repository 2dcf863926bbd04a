//! Sessions as units of a guest's own systemd, as machined starts them: a shell becomes the
//! transient `container-shell@N.service` (a PAM login session on the tty, `User=`, utmp), a
//! login prompt a transient `container-login@N.service` running the guest's agetty once. Asked
//! of the guest's systemd with its own `systemd-run` (it speaks to PID 1 over its private socket, so no
//! D-Bus daemon is needed in the guest), run as a process of the machine, confined like it:
//! nothing the guest answers is parsed by us, only whether the tool succeeded.

/// What to start on the pty `/dev/pts/N`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionUnit {
    /// `container-login@N.service`: the guest's agetty on the pty, not restarted.
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
            // A transient unit, not the guest's container-getty@N.service: that one restarts
            // for ever, and once the client is gone its pty number is reused by the next
            // session, whose terminal a restarted getty would then share.
            SessionUnit::Getty { pty } => {
                let mut argv = unit_start(*pty, "container-login", "Login Prompt");
                argv.extend(
                    [
                        "--",
                        "agetty",
                        "-o",
                        "-p -- \\u",
                        "--noclear",
                        "--keep-baud",
                        "-",
                        "115200,38400,9600",
                        "vt220",
                    ]
                    .map(str::to_owned),
                );
                argv
            }
            SessionUnit::Shell { pty, user, path, args, env } => {
                let mut argv = unit_start(*pty, "container-shell", &format!("Shell for User {user}"));
                argv.push(format!("--uid={user}"));
                argv.extend(["PAMName=login", "WorkingDirectory=-~"].map(|p| format!("--property={p}")));
                argv.extend(env.iter().map(|e| format!("--setenv={e}")));
                argv.push("--".into());
                argv.push(path.clone());
                argv.extend(args.iter().cloned());
                argv
            }
        }
    }
}

/// `systemd-run` up to the command: the unit `PREFIX@PTY.service` on `/dev/pts/PTY`.
fn unit_start(pty: u32, prefix: &str, description: &str) -> Vec<String> {
    let mut argv: Vec<String> = vec![
        "systemd-run".into(),
        "--quiet".into(),
        "--no-ask-password".into(),
        format!("--unit={prefix}@{pty}.service"),
        format!("--description={description}"),
        "--collect".into(),
    ];
    for p in [
        format!("TTYPath=/dev/pts/{pty}"),
        "StandardInput=tty".into(),
        "StandardOutput=tty".into(),
        "StandardError=tty".into(),
        "SendSIGHUP=yes".into(),
        "IgnoreSIGPIPE=no".into(),
        "KillMode=mixed".into(),
        format!("UtmpIdentifier=pts/{pty}"),
        "UtmpMode=user".into(),
    ] {
        argv.push(format!("--property={p}"));
    }
    argv
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
        let getty = SessionUnit::Getty { pty: 7 }.command();
        assert!(getty.contains(&"--unit=container-login@7.service".to_owned()));
        assert!(getty.contains(&"--property=TTYPath=/dev/pts/7".to_owned()));
        assert_eq!(getty[getty.iter().position(|a| a == "--").unwrap() + 1], "agetty");
    }
}
