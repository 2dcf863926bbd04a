//! The event loop of a process that supervises something running in a machine (the launcher
//! supervising PID 1, `mctl shell` supervising its command): signals through a signalfd, an
//! optional console or terminal forwarded both ways, and one more fd the caller watches (the
//! guest's notify socket). Console traffic and window-size changes are handled here; the
//! caller gets what it must decide on.

use std::io;
use std::os::fd::BorrowedFd;

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use super::console::{Console, ConsoleEvent};

const TOKEN_SIGNAL: u64 = 1;
const TOKEN_EXTRA: u64 = 2;

/// The signals a supervising process takes through its signalfd (blocked for normal delivery;
/// children must unblock them before they execute anything).
pub const SUPERVISED_SIGNALS: [Signal; 5] =
    [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGWINCH];

/// Blocks [`SUPERVISED_SIGNALS`] and returns a signalfd that reads them. Call before forking.
pub fn signalfd() -> io::Result<SignalFd> {
    let mut mask = SigSet::empty();
    for s in SUPERVISED_SIGNALS {
        mask.add(s);
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)?;
    Ok(SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?)
}

/// What the caller must act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A signal other than SIGCHLD (check the child) or SIGWINCH (handled here).
    Signal(Signal),
    /// SIGCHLD: some child changed state.
    Child,
    /// The extra fd is readable.
    Extra,
    /// The user typed the console's escape sequence (`^]` three times).
    Escape,
    /// The wait timed out.
    Timeout,
}

/// The loop's state: epoll set, signalfd, console.
#[derive(Debug)]
pub struct Events<'a> {
    epoll: Epoll,
    sigfd: &'a SignalFd,
    console: Option<Console>,
    pending: Vec<Event>,
}

impl<'a> Events<'a> {
    /// Watches `sigfd`, `extra` (if any) and `console` (if any).
    pub fn new(
        sigfd: &'a SignalFd,
        extra: Option<BorrowedFd<'_>>,
        console: Option<Console>,
    ) -> io::Result<Self> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        epoll.add(sigfd, EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_SIGNAL))?;
        if let Some(fd) = extra {
            epoll.add(fd, EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_EXTRA))?;
        }
        let mut me = Events { epoll, sigfd, console, pending: Vec::new() };
        if let Some(c) = me.console.as_mut()
            && c.register(&me.epoll)? == ConsoleEvent::Escape
        {
            me.pending.push(Event::Escape);
        }
        Ok(me)
    }

    /// Waits for the next events (`timeout_ms`: `None` waits for ever).
    pub fn wait(&mut self, timeout_ms: Option<u16>) -> io::Result<Vec<Event>> {
        if !self.pending.is_empty() {
            return Ok(std::mem::take(&mut self.pending));
        }
        let mut ready = [EpollEvent::empty(); 16];
        let timeout = timeout_ms.map_or(EpollTimeout::NONE, EpollTimeout::from);
        let n = match self.epoll.wait(&mut ready, timeout) {
            Ok(0) if timeout_ms.is_some() => return Ok(vec![Event::Timeout]),
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for ev in &ready[..n] {
            match ev.data() {
                TOKEN_SIGNAL => {
                    while let Ok(Some(info)) = self.sigfd.read_signal() {
                        // A number past i32 is no signal: 0, which is none either, stands for it.
                        match Signal::try_from(i32::try_from(info.ssi_signo).unwrap_or(0)) {
                            Ok(Signal::SIGWINCH) => {
                                if let Some(c) = &self.console {
                                    c.resize();
                                }
                            }
                            Ok(Signal::SIGCHLD) => out.push(Event::Child),
                            Ok(sig) => out.push(Event::Signal(sig)),
                            Err(_) => {}
                        }
                    }
                }
                TOKEN_EXTRA => out.push(Event::Extra),
                token => {
                    if let Some(c) = self.console.as_mut()
                        && c.handle(token) == ConsoleEvent::Escape
                    {
                        out.push(Event::Escape);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Forwards what the console still has and restores the terminal.
    pub fn finish(self) {
        if let Some(c) = self.console {
            c.finish();
        }
    }
}
