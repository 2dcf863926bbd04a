//! Readiness: the guest's `sd_notify` socket at `/run/host/notify`, relayed upwards to the
//! launcher's own `$NOTIFY_SOCKET` (a `Type=notify` unit, or a test).

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, UnixCredentials, recvmsg};

/// Where the guest finds the notify socket (its `$NOTIFY_SOCKET`).
pub const GUEST_NOTIFY_PATH: &str = "/run/host/notify";

/// What the guest's PID 1 reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestNotice {
    /// `READY=1`.
    Ready,
    /// `STATUS=...`.
    Status(String),
    /// `STOPPING=1`.
    Stopping,
}

/// The launcher's end of the guest's notify socket.
#[derive(Debug)]
pub struct NotifyRelay {
    sock: OwnedFd,
    leader: i32,
}

impl NotifyRelay {
    /// Accepts messages only from `leader`, the machine's PID 1 as a host pid (the kernel
    /// translates the sender's pid into our namespace).
    pub fn new(sock: OwnedFd, leader: i32) -> Self {
        Self { sock, leader }
    }

    /// The socket, for polling.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.sock.as_fd()
    }

    /// Reads every pending datagram and returns what PID 1 said.
    pub fn drain(&self) -> Vec<GuestNotice> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 4096];
        loop {
            let mut cmsg = nix::cmsg_space!(UnixCredentials, [RawFd; 16]);
            let mut iov = [IoSliceMut::new(&mut buf)];
            let Ok(msg) = recvmsg::<()>(
                self.sock.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_TRUNC,
            ) else {
                break;
            };
            let mut sender = None;
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    match c {
                        ControlMessageOwned::ScmCredentials(cred) => sender = Some(cred.pid()),
                        ControlMessageOwned::ScmRights(fds) => {
                            for fd in fds {
                                let _ = nix::unistd::close(fd);
                            }
                        }
                        _ => {}
                    }
                }
            }
            let len = msg.bytes;
            if sender != Some(self.leader) || len > buf.len() {
                continue;
            }
            out.extend(parse(&String::from_utf8_lossy(&buf[..len])));
        }
        out
    }
}

/// Parses one notify datagram.
pub fn parse(datagram: &str) -> Vec<GuestNotice> {
    datagram
        .lines()
        .filter_map(|l| match l.split_once('=') {
            Some(("READY", "1")) => Some(GuestNotice::Ready),
            Some(("STOPPING", "1")) => Some(GuestNotice::Stopping),
            Some(("STATUS", s)) => Some(GuestNotice::Status(s.to_owned())),
            _ => None,
        })
        .collect()
}

/// Sends `state` to the launcher's own supervisor (`$NOTIFY_SOCKET`), if it has one.
pub fn tell_supervisor(state: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        // A supervisor that went away is not the machine's problem.
        let _ = sd_notify::notify(state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_datagrams() {
        assert_eq!(
            parse("READY=1\nSTATUS=Ready.\nMAINPID=3"),
            vec![GuestNotice::Ready, GuestNotice::Status("Ready.".into())]
        );
        assert_eq!(parse("STOPPING=1"), vec![GuestNotice::Stopping]);
        assert!(parse("READY=0").is_empty());
    }
}
