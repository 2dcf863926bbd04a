//! The channel between the runtime and the container's setup processes: a `SOCK_SEQPACKET`
//! socketpair carrying one short text message per packet (and, for the console, a file
//! descriptor: the console's pty, a seccomp filter's notification fd).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
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

    /// Sends one message with a file descriptor.
    pub fn send_with_fd(&self, msg: &str, fd: BorrowedFd<'_>) -> io::Result<()> {
        send_fd(self.0.as_fd(), fd, msg)
    }

    /// Receives one message; `None` when the other end is closed. With a timeout, an error of
    /// kind `TimedOut` when nothing came.
    pub fn recv(&self, timeout: Option<Duration>) -> io::Result<Option<String>> {
        Ok(self.recv_with_fd(timeout)?.map(|(msg, _)| msg))
    }

    /// Receives one message and the descriptor that came with it, if one did.
    pub fn recv_with_fd(&self, timeout: Option<Duration>) -> io::Result<Option<(String, Option<OwnedFd>)>> {
        recv_message(self.0.as_fd(), timeout)
    }
}

/// Receives one message from the socket `sock` and the descriptor that came with it, if one
/// did; `None` when the other end is closed. With a timeout, an error of kind `TimedOut` when
/// nothing came.
pub fn recv_message(
    sock: BorrowedFd<'_>,
    timeout: Option<Duration>,
) -> io::Result<Option<(String, Option<OwnedFd>)>> {
    if let Some(t) = timeout {
        let mut fds = [nix::poll::PollFd::new(sock, nix::poll::PollFlags::POLLIN)];
        let ms = u16::try_from(t.as_millis()).unwrap_or(u16::MAX);
        if nix::poll::poll(&mut fds, ms)? == 0 {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer"));
        }
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let (n, fd) = loop {
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        match socket::recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        {
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
            Ok(msg) => {
                let mut fd = None;
                for c in msg.cmsgs()? {
                    if let socket::ControlMessageOwned::ScmRights(fds) = c {
                        for raw in fds {
                            // SAFETY: the kernel just installed `raw` in this process for this
                            // message; nothing else owns it.
                            let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                            fd.get_or_insert(owned);
                        }
                    }
                }
                break (msg.bytes, fd);
            }
        }
    };
    if n == 0 {
        return Ok(None);
    }
    Ok(Some((String::from_utf8_lossy(&buf[..n]).into_owned(), fd)))
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
