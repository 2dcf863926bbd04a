//! Where a container process's pty master goes: to the engine's `--console-socket`, or, for
//! `run` and `exec` with a terminal and no socket, back to the runtime itself, which relays it
//! to and from its own stdin and stdout as runc does. The relay is the launcher's console and
//! event loop (raw mode, window size, draining), so machines and containers share one.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::ContainerError;
use crate::launcher::console::Console;
use crate::launcher::events::{self, Event, Events};
use crate::launcher::spec::ConsoleMode;

/// Where the pty master is sent.
#[derive(Debug)]
pub enum ConsoleSocket {
    /// An engine's unix socket (`--console-socket`).
    Path(PathBuf),
    /// The far end of a [`Relay`].
    Relay(UnixStream),
}

impl ConsoleSocket {
    /// A connection the container's process sends its pty master over.
    pub fn connect(&self) -> Result<OwnedFd, ContainerError> {
        match self {
            ConsoleSocket::Path(p) => UnixStream::connect(p)
                .map(OwnedFd::from)
                .map_err(ContainerError::io("connect to the console socket", p)),
            ConsoleSocket::Relay(s) => {
                s.try_clone().map(OwnedFd::from).map_err(ContainerError::io("duplicate", "the console relay"))
            }
        }
    }
}

/// The runtime's end of a console it relays itself.
#[derive(Debug)]
pub struct Relay(UnixStream);

/// A console socket whose pty master comes back to this process, and the end that takes it.
pub fn relay_pair() -> Result<(ConsoleSocket, Relay), ContainerError> {
    let (theirs, ours) =
        UnixStream::pair().map_err(ContainerError::io("create the console relay", "socketpair"))?;
    Ok((ConsoleSocket::Relay(theirs), Relay(ours)))
}

impl Relay {
    /// Relays the pty until `pid`, a child of this process, exits; returns its status as a
    /// shell reports it (128+N if killed). Signals the runtime gets go to the process; `^]`
    /// three times within a second kills it, as in mctl's other consoles.
    pub fn run(self, pid: i32) -> Result<i32, ContainerError> {
        let step = |what: &'static str| ContainerError::io(what, "the container's terminal");
        let master = match super::sync::recv_message(self.0.as_fd(), Some(Duration::from_secs(30)))
            .map_err(step("receive"))?
        {
            Some((_, Some(fd))) => fd,
            _ => return Err(ContainerError::Setup("the container's process sent no pty".into())),
        };
        let sigfd = events::signalfd().map_err(step("watch signals for"))?;
        let console = Console::new(master, ConsoleMode::Interactive).map_err(step("set up"))?;
        let mut events = Events::new(&sigfd, None, Some(console)).map_err(step("watch"))?;
        let target = Pid::from_raw(pid);
        let status = loop {
            match waitpid(target, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => break code,
                Ok(WaitStatus::Signaled(_, sig, _)) => break 128 + sig as i32,
                Err(nix::errno::Errno::ECHILD) => break 255,
                _ => {}
            }
            for event in events.wait(None).map_err(step("relay"))? {
                match event {
                    Event::Signal(sig) => {
                        let _ = crate::sys::linux::send_signal(pid, sig as i32);
                    }
                    Event::Escape => {
                        let _ = crate::sys::linux::send_signal(pid, libc::SIGKILL);
                    }
                    _ => {}
                }
            }
        };
        events.finish();
        Ok(status)
    }
}
