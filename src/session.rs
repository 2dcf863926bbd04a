//! Terminals, logins and shells in running machines for machine1's OpenMachinePTY,
//! OpenMachineLogin and OpenMachineShell.
//!
//! mctld is multi-threaded and never forks itself: it starts a helper process, its own binary
//! with [`HELPER_FLAG`], and sends it the request over a socketpair on fd 3. The helper runs
//! from a sealed copy of the binary, enters the machine with [`launcher::enter`] (namespaces, a
//! cgroup below the machine's, the machine's capabilities and system call filter), opens a pty
//! in the machine's devpts, sends the master back and stays to wait for the payload. mctld
//! hands the master to the D-Bus caller and keeps no copy: when the caller closes it the
//! terminal hangs up and the session ends, as with machined.
//!
//! Unlike machined, which asks the guest's own systemd over the guest's bus, this works in
//! guests without systemd or D-Bus too.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::launcher::channel::{Channel, ChannelError};
use crate::launcher::enter::{self, EnterSpec, Payload, Terminal};

/// The argument that makes mctld's binary the session helper.
pub const HELPER_FLAG: &str = "--session-helper";

/// The fd the helper finds its channel on.
const CHANNEL_FD: RawFd = 3;

/// How long the helper may take to open the session (it reads guest files: passwd, group).
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// What is opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionKind {
    /// A pty of the machine and nothing on it (OpenMachinePTY).
    Pty,
    /// A login prompt (OpenMachineLogin).
    Login,
    /// A program as a user (OpenMachineShell); an empty `path` is the user's login shell.
    Shell {
        /// User name or uid in the machine.
        user: String,
        /// Absolute path of the program in the machine, or empty.
        path: String,
        /// Its argv (argv\[0\] first); empty means `[path]`.
        argv: Vec<String>,
        /// Extra environment.
        env: Vec<(String, String)>,
    },
}

/// A request to the helper.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRequest {
    /// The machine's leader (host pid).
    pub leader: u32,
    /// The leader's start time, to tell it from a process that reuses its pid.
    pub leader_start: u64,
    /// The machine's own cgroup as `/proc/PID/cgroup` shows it ("" if it has none).
    pub machine_cgroup: String,
    /// The session is on the host itself (`.host`): nothing is entered or confined.
    pub on_host: bool,
    /// What to open.
    pub kind: SessionKind,
}

/// The helper's answer (the pty master travels with `Opened`).
#[derive(Debug, Serialize, Deserialize)]
enum Answer {
    Opened { pty_path: String },
    Failed { error: String },
}

/// An open session: the master of its terminal and the terminal's path inside the machine.
#[derive(Debug)]
pub struct Opened {
    /// The pty master.
    pub master: OwnedFd,
    /// `/dev/pts/N` in the machine.
    pub pty_path: String,
}

/// Opening a session failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The helper could not be started or talked to.
    #[error("cannot {step}: {source}")]
    Helper {
        /// What was being done.
        step: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The helper reported a failure.
    #[error("{0}")]
    Failed(String),
}

impl From<ChannelError> for SessionError {
    fn from(e: ChannelError) -> Self {
        SessionError::Helper { step: "talk to the session helper", source: io::Error::other(e) }
    }
}

/// Starts the helper (`exe`, mctld's own binary) for `req` and waits until the session is open.
/// The helper is reaped by a thread of its own once its payload ends.
pub fn open(exe: &Path, req: &SessionRequest) -> Result<Opened, SessionError> {
    let (ours, theirs) = Channel::pair()?;
    let theirs = theirs.into_fd();
    let theirs_raw = theirs.as_raw_fd();
    let mut cmd = Command::new(exe);
    cmd.arg(HELPER_FLAG).env_clear().stdin(Stdio::null()).stdout(Stdio::null());
    // SAFETY: the closure runs in the forked child before exec and calls only dup2 and fcntl,
    // which are async-signal-safe; `theirs_raw` stays open in the parent until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if theirs_raw == CHANNEL_FD {
                if libc::fcntl(CHANNEL_FD, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(theirs_raw, CHANNEL_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child =
        cmd.spawn().map_err(|source| SessionError::Helper { step: "start the session helper", source })?;
    drop(theirs);
    let answer = ours.send_as(req, &[]).map_err(SessionError::from).and_then(|()| receive(&ours));
    if answer.is_err() {
        let _ = child.kill();
    }
    // The helper lives as long as the payload; it is reaped whenever that is.
    let _ = std::thread::Builder::new().name("session-reaper".into()).spawn(move || child.wait());
    answer
}

/// The helper's answer, within [`OPEN_TIMEOUT`].
fn receive(chan: &Channel) -> Result<Opened, SessionError> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let timeout = PollTimeout::try_from(OPEN_TIMEOUT).unwrap_or(PollTimeout::MAX);
    let mut fds = [PollFd::new(chan.fd(), PollFlags::POLLIN)];
    let ready = poll(&mut fds, timeout)
        .map_err(|e| SessionError::Helper { step: "wait for the session helper", source: e.into() })?;
    if ready == 0 {
        return Err(SessionError::Failed("the machine did not open the session in time".into()));
    }
    match chan.recv_as::<Answer>()? {
        Some((Answer::Opened { pty_path }, mut fds)) if fds.len() == 1 => {
            Ok(Opened { master: fds.remove(0), pty_path })
        }
        Some((Answer::Failed { error }, _)) => Err(SessionError::Failed(error)),
        Some((Answer::Opened { .. }, _)) | None => {
            Err(SessionError::Failed("the session helper ended without opening a terminal".into()))
        }
    }
}

/// The helper process: reads the request from fd 3, opens the session, answers, and waits for
/// the payload. Returns the exit status.
pub fn helper_main() -> i32 {
    // Its child joins the machine: no host binary may stand behind /proc/PID/exe.
    if let Err(e) = crate::sys::linux::ensure_running_from_sealed_copy() {
        eprintln!("mctld session helper: cannot run from a sealed copy: {e}");
        return 1;
    }
    // SAFETY: `open` put our end of the socketpair on fd 3 and nothing else in this process
    // owns it; a helper started any other way finds no channel there and fails to read.
    let chan = Channel::from_fd(unsafe { OwnedFd::from_raw_fd(CHANNEL_FD) });
    // SAFETY: fd 3 is open (owned by `chan`); setting close-on-exec changes nothing else.
    unsafe { libc::fcntl(CHANNEL_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
    let req = match chan.recv_as::<SessionRequest>() {
        Ok(Some((req, _))) => req,
        _ => return 1,
    };
    let mut answered = false;
    let result = serve(&req, &mut |master, pty_path| {
        answered = true;
        chan.send_as(&Answer::Opened { pty_path }, &[master.as_fd()]).map_err(io::Error::other)
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            if !answered {
                let _ = chan.send_as(&Answer::Failed { error: e.to_string() }, &[]);
            }
            e.exit_code()
        }
    }
}

fn serve(
    req: &SessionRequest,
    handoff: &mut dyn FnMut(OwnedFd, String) -> io::Result<()>,
) -> Result<i32, enter::EnterError> {
    let failed = |step: &'static str| move |source: io::Error| enter::EnterError::Step { step, source };
    let bounding = if req.on_host {
        caps::all()
    } else {
        crate::procfs::bounding_set(req.leader).map_err(failed("read the machine's capabilities"))?
    };
    let seccomp = crate::seccomp::SyscallFilter::for_machine(&bounding, &Default::default(), None)
        .map_err(|e| failed("build the system call filter")(io::Error::other(e)))?;
    let (user, payload, env) = match &req.kind {
        SessionKind::Pty => ("root".to_owned(), Payload::TerminalOnly, Vec::new()),
        SessionKind::Login => ("root".to_owned(), Payload::Getty, Vec::new()),
        SessionKind::Shell { user, path, argv, env } => {
            let payload = if path.is_empty() {
                Payload::LoginShell
            } else {
                let argv = if argv.is_empty() { vec![path.clone()] } else { argv.clone() };
                Payload::Program { path: path.clone(), argv }
            };
            (user.clone(), payload, env.clone())
        }
    };
    let cgroup = if req.on_host {
        None
    } else {
        crate::cgroups::EntryCgroup::create(&Default::default(), &req.machine_cgroup, "mctl-session")
    };
    let spec = EnterSpec {
        leader: req.leader,
        leader_start: (!req.on_host).then_some(req.leader_start),
        user,
        payload,
        env,
        terminal: Terminal::HandOff,
        cgroup: cgroup.as_ref().map(|c| c.path().to_owned()),
        bounding,
        seccomp,
        host_fds: vec![CHANNEL_FD],
        on_host: req.on_host,
        via_guest_systemd: true,
    };
    enter::run_handing_off(&spec, handoff)
}
