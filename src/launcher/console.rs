//! The machine's console: forwards the pty master to the launcher's terminal (both ways in
//! interactive mode), always draining it so that a guest never blocks on console output.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use nix::sys::termios::{SetArg, Termios, cfmakeraw, tcgetattr, tcsetattr};

use crate::sys::linux;

use super::spec::ConsoleMode;

/// Console output kept while the launcher's stdout cannot take it; beyond this it is dropped
/// rather than letting the guest block.
const MAX_BUFFERED: usize = 1 << 20;
/// `^]`, pressed three times within a second, kills the machine (as in nspawn).
const ESCAPE_BYTE: u8 = 0x1d;

/// epoll tokens of the console's fds.
pub const TOKEN_MASTER: u64 = 10;
/// stdin.
pub const TOKEN_INPUT: u64 = 11;
/// stdout.
pub const TOKEN_OUTPUT: u64 = 12;

/// What the launcher should do after a console event.
#[derive(Debug, PartialEq, Eq)]
pub enum ConsoleEvent {
    /// Keep going: bytes were moved (or buffered), no escape sequence completed.
    None,
    /// The user typed the escape sequence.
    Escape,
}

/// How the launcher's stdin or stdout is driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drive {
    /// A private non-blocking reopening, watched by epoll (pipes, ttys).
    Poll,
    /// A socket: watched by epoll, read and written with MSG_DONTWAIT (a socket cannot be
    /// reopened, and its shared file description must stay blocking for the caller).
    Socket,
    /// Not pollable (regular files, /dev/null): written synchronously, read once up to EOF.
    Sync,
}

#[derive(Debug)]
struct Output {
    fd: OwnedFd,
    drive: Drive,
}

/// The launcher's side of the console.
#[derive(Debug)]
pub struct Console {
    master: OwnedFd,
    input: Option<Output>,
    output: Option<Output>,
    to_output: Vec<u8>,
    to_master: Vec<u8>,
    dropped: usize,
    saved_termios: Option<Termios>,
    /// Stdout's terminal settings before its output was made raw (see [`Console::new`]).
    saved_output_termios: Option<Termios>,
    escape_count: u8,
    escape_since: Instant,
    last_byte: Option<u8>,
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// A private, non-blocking handle on our stdin or stdout: reopened through /proc so that the
/// caller's shared file description is never switched to non-blocking.
fn reopen_std(fd: i32, write: bool) -> io::Result<Output> {
    let path = format!("/proc/self/fd/{fd}");
    let meta = fs::metadata(&path)?;
    let ft = meta.file_type();
    if ft.is_fifo() || ft.is_char_device() {
        let f = fs::OpenOptions::new()
            .read(!write)
            .write(write)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
            .open(&path);
        if let Ok(f) = f {
            // A character device epoll refuses (/dev/null) becomes Sync in `register`.
            return Ok(Output { fd: f.into(), drive: Drive::Poll });
        }
    }
    let dup = match fd {
        0 => nix::unistd::dup(io::stdin().as_fd())?,
        _ => nix::unistd::dup(io::stdout().as_fd())?,
    };
    let drive = if ft.is_socket() { Drive::Socket } else { Drive::Sync };
    Ok(Output { fd: dup, drive })
}

/// Adds `out` to `epoll` for `flags`; an fd epoll refuses (EPERM: files, /dev/null) is driven
/// synchronously instead.
fn watch(epoll: &Epoll, out: &mut Output, flags: EpollFlags, token: u64) -> io::Result<()> {
    if out.drive == Drive::Sync {
        return Ok(());
    }
    match epoll.add(&out.fd, EpollEvent::new(flags, token)) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EPERM) => {
            out.drive = Drive::Sync;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

fn read_from(inp: &Output, buf: &mut [u8]) -> nix::Result<usize> {
    match inp.drive {
        Drive::Socket => {
            nix::sys::socket::recv(inp.fd.as_raw_fd(), buf, nix::sys::socket::MsgFlags::MSG_DONTWAIT)
        }
        _ => nix::unistd::read(&inp.fd, buf),
    }
}

fn write_to(out: &Output, buf: &[u8]) -> nix::Result<usize> {
    match out.drive {
        Drive::Socket => nix::sys::socket::send(
            out.fd.as_raw_fd(),
            buf,
            nix::sys::socket::MsgFlags::MSG_DONTWAIT | nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
        ),
        _ => nix::unistd::write(&out.fd, buf),
    }
}

/// Whether the terminal `fd` may be reconfigured without stopping us: it is not our controlling
/// terminal, or we are in its foreground.
fn may_set_terminal(fd: BorrowedFd<'_>) -> bool {
    match nix::unistd::tcgetpgrp(fd) {
        Ok(group) => group == nix::unistd::getpgrp(),
        Err(nix::errno::Errno::ENOTTY) => true,
        Err(_) => false,
    }
}

/// Puts the terminal `fd` in raw mode, except what `keep` copies back from its settings;
/// returns those settings, to restore.
fn make_raw(fd: BorrowedFd<'_>, keep: impl FnOnce(&mut Termios, &Termios)) -> io::Result<Termios> {
    let saved = tcgetattr(fd)?;
    let mut raw = saved.clone();
    cfmakeraw(&mut raw);
    keep(&mut raw, &saved);
    tcsetattr(fd, SetArg::TCSANOW, &raw)?;
    Ok(saved)
}

impl Console {
    /// Wires `master` to the launcher's stdio according to `mode` (not `Pipe`).
    pub fn new(master: OwnedFd, mode: ConsoleMode) -> io::Result<Self> {
        set_nonblocking(master.as_fd())?;
        let output = match mode {
            ConsoleMode::Passive | ConsoleMode::Pipe => None,
            ConsoleMode::Interactive | ConsoleMode::ReadOnly => Some(reopen_std(1, true)?),
        };
        let mut saved_termios = None;
        let mut input = None;
        if mode == ConsoleMode::Interactive {
            let stdin = io::stdin();
            if nix::unistd::isatty(stdin.as_fd()).unwrap_or(false) {
                let foreground = nix::unistd::tcgetpgrp(stdin.as_fd()).ok() == Some(nix::unistd::getpgrp());
                if foreground {
                    saved_termios = Some(make_raw(stdin.as_fd(), |raw, saved| {
                        raw.output_flags = saved.output_flags;
                    })?);
                }
            }
            input = Some(reopen_std(0, false)?);
        }
        // The guest's pty already turns "\n" into "\r\n": a terminal on stdout that did it
        // again showed "\r\r\n". Its output goes raw, its input and local modes stay (on a
        // terminal shared with stdin, those are raw by now), as nspawn does.
        let mut saved_output_termios = None;
        if output.is_some() {
            let stdout = io::stdout();
            if nix::unistd::isatty(stdout.as_fd()).unwrap_or(false) && may_set_terminal(stdout.as_fd()) {
                saved_output_termios = Some(make_raw(stdout.as_fd(), |raw, saved| {
                    raw.input_flags = saved.input_flags;
                    raw.local_flags = saved.local_flags;
                })?);
            }
        }
        let me = Self {
            master,
            input,
            output,
            to_output: Vec::new(),
            to_master: Vec::new(),
            dropped: 0,
            saved_termios,
            saved_output_termios,
            escape_count: 0,
            escape_since: Instant::now(),
            last_byte: None,
        };
        me.resize();
        Ok(me)
    }

    /// Registers the console's fds with `epoll`. A stdin epoll cannot watch (a regular file,
    /// /dev/null) is forwarded once, up to its end.
    pub fn register(&mut self, epoll: &Epoll) -> io::Result<ConsoleEvent> {
        let et = EpollFlags::EPOLLET;
        // Edge-triggered: while no process has the console open, the master reports a hangup
        // continuously; level-triggered polling would spin.
        epoll.add(
            &self.master,
            EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT | et, TOKEN_MASTER),
        )?;
        if let Some(out) = self.output.as_mut() {
            watch(epoll, out, EpollFlags::EPOLLOUT | et, TOKEN_OUTPUT)?;
        }
        if let Some(inp) = self.input.as_mut() {
            watch(epoll, inp, EpollFlags::EPOLLIN, TOKEN_INPUT)?;
            if inp.drive == Drive::Sync {
                let escape = self.read_input();
                self.flush_master();
                self.input = None;
                if escape {
                    return Ok(ConsoleEvent::Escape);
                }
            }
        }
        Ok(ConsoleEvent::None)
    }

    /// Copies the launcher terminal's window size to the console.
    pub fn resize(&self) {
        if self.input.is_none() && self.output.is_none() {
            return;
        }
        if let Some(ws) =
            linux::window_size(io::stdout().as_fd()).or_else(|| linux::window_size(io::stdin().as_fd()))
        {
            let _ = linux::set_window_size(self.master.as_fd(), &ws);
        }
    }

    /// Handles readiness of the fd behind `token`.
    pub fn handle(&mut self, token: u64) -> ConsoleEvent {
        match token {
            TOKEN_MASTER => {
                self.read_master();
                self.flush_master();
                self.flush_output();
            }
            TOKEN_INPUT => {
                if self.read_input() {
                    return ConsoleEvent::Escape;
                }
                self.flush_master();
            }
            TOKEN_OUTPUT => self.flush_output(),
            _ => {}
        }
        ConsoleEvent::None
    }

    fn read_master(&mut self) {
        let mut buf = [0u8; 16384];
        loop {
            match nix::unistd::read(&self.master, &mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if self.output.is_none() {
                        continue;
                    }
                    let room = MAX_BUFFERED.saturating_sub(self.to_output.len());
                    self.to_output.extend_from_slice(&buf[..n.min(room)]);
                    self.dropped += n - n.min(room);
                    self.flush_output();
                }
                // EIO: no process has the console open right now (getty restarting, vhangup);
                // data flows again once one does.
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EIO) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break,
            }
        }
    }

    /// Returns true when the escape sequence was typed.
    fn read_input(&mut self) -> bool {
        let Some(inp) = &self.input else { return false };
        let mut buf = [0u8; 4096];
        loop {
            if self.to_master.len() > 64 * 1024 {
                return false;
            }
            match read_from(inp, &mut buf) {
                Ok(0) => {
                    self.input = None;
                    return false;
                }
                Ok(n) => {
                    for &b in &buf[..n] {
                        if b == ESCAPE_BYTE {
                            if self.escape_count == 0 || self.escape_since.elapsed() > Duration::from_secs(1)
                            {
                                self.escape_count = 0;
                                self.escape_since = Instant::now();
                            }
                            self.escape_count += 1;
                            if self.escape_count >= 3 {
                                return true;
                            }
                        } else {
                            self.escape_count = 0;
                        }
                    }
                    self.to_master.extend_from_slice(&buf[..n]);
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => return false,
                Err(_) => {
                    self.input = None;
                    return false;
                }
            }
        }
    }

    fn flush_master(&mut self) {
        while !self.to_master.is_empty() {
            match nix::unistd::write(&self.master, &self.to_master) {
                Ok(n) => {
                    self.to_master.drain(..n);
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => return,
                // Nobody reads the console now: typed input is lost, as on a real console.
                Err(_) => {
                    self.to_master.clear();
                    return;
                }
            }
        }
    }

    fn flush_output(&mut self) {
        let Some(out) = &self.output else {
            self.to_output.clear();
            return;
        };
        while !self.to_output.is_empty() {
            match write_to(out, &self.to_output) {
                Ok(n) => {
                    self.last_byte = self.to_output.get(n.wrapping_sub(1)).copied().or(self.last_byte);
                    self.to_output.drain(..n);
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => return,
                // Our stdout is gone (closed pipe): keep draining the guest, show nothing.
                Err(_) => {
                    self.output = None;
                    self.to_output.clear();
                    return;
                }
            }
        }
    }

    /// Forwards what is left, restores the terminal and ends the output on a new line.
    pub fn finish(mut self) {
        self.read_master();
        if let Some(out) = &self.output
            && out.drive == Drive::Poll
        {
            // The machine is gone, so blocking cannot stall it any more: hand the rest to a
            // slow reader instead of dropping it.
            let _ =
                nix::fcntl::fcntl(out.fd.as_fd(), nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()));
        }
        self.flush_output();
        let was_raw = self.saved_termios.is_some() || self.saved_output_termios.is_some();
        self.restore_terminal();
        if (was_raw || self.last_byte.is_some_and(|b| b != b'\n'))
            && let Some(out) = &self.output
        {
            let _ = write_to(out, b"\n");
        }
        if self.dropped > 0 {
            tracing::warn!(bytes = self.dropped, "console output was dropped because stdout did not keep up");
        }
    }

    fn restore_terminal(&mut self) {
        // Stdout's first: on a shared terminal its saved settings are stdin's raw ones.
        if let Some(saved) = self.saved_output_termios.take() {
            let _ = tcsetattr(io::stdout().as_fd(), SetArg::TCSADRAIN, &saved);
        }
        if let Some(saved) = self.saved_termios.take() {
            let _ = tcsetattr(io::stdin().as_fd(), SetArg::TCSADRAIN, &saved);
        }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.restore_terminal();
    }
}
