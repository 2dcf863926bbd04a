//! The channel between the runtime and the container's setup processes: a `SOCK_SEQPACKET`
//! socketpair carrying one short text message per packet (and, for the console, a file
//! descriptor).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use nix::sys::socket::{self, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType};

/// One end.
#[derive(Debug)]
pub struct SyncEnd(OwnedFd);

/// A connected pair (both ends close on exec).
pub fn pair() -> io::Result<(SyncEnd, SyncEnd)> {
    let (a, b) = socket::socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)?;
    Ok((SyncEnd(a), SyncEnd(b)))
}

impl SyncEnd {
    /// Sends one message.
    pub fn send(&self, msg: &str) -> io::Result<()> {
        socket::send(self.0.as_raw_fd(), msg.as_bytes(), MsgFlags::MSG_NOSIGNAL)?;
        Ok(())
    }

    /// Receives one message; `None` when the other end is closed. With a timeout, an error of
    /// kind `TimedOut` when nothing came.
    pub fn recv(&self, timeout: Option<Duration>) -> io::Result<Option<String>> {
        if let Some(t) = timeout {
            let mut fds =
                [nix::poll::PollFd::new(std::os::fd::AsFd::as_fd(&self.0), nix::poll::PollFlags::POLLIN)];
            let ms = u16::try_from(t.as_millis()).unwrap_or(u16::MAX);
            if nix::poll::poll(&mut fds, ms)? == 0 {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer"));
            }
        }
        let mut buf = vec![0u8; 64 * 1024];
        let n = loop {
            match socket::recv(self.0.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Err(nix::errno::Errno::EINTR) => {}
                r => break r?,
            }
        };
        if n == 0 {
            return Ok(None);
        }
        Ok(Some(String::from_utf8_lossy(&buf[..n]).into_owned()))
    }
}

/// Sends `fd` over the unix socket `sock` with `name` as the payload (runc's console socket
/// protocol: the pty master, named `/dev/ptmx`).
pub fn send_fd(sock: BorrowedFd<'_>, fd: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    let fds = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let iov = [io::IoSlice::new(name.as_bytes())];
    socket::sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None)?;
    Ok(())
}
