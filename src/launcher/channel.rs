//! Typed messages between the launcher and its children over a `SOCK_SEQPACKET` socketpair,
//! with file descriptors passed alongside (SCM_RIGHTS).

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg, sendmsg,
    socketpair,
};

/// What the parent and its children tell each other.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Message {
    /// Outer child → parent: the notify socket (fd attached).
    NotifySocket,
    /// Outer child → parent: the console pty master (fd attached).
    ConsoleMaster,
    /// Child → parent: a detached mount of a machine's root (fd attached), for `mctl commit`.
    RootMount,
    /// Outer child → parent: the machine's PID 1, as a host pid.
    InnerPid(i32),
    /// Parent → PID 1: setup on the host side is done, exec the payload.
    Go,
    /// Child → parent: a setup step failed; `exit_code` is what the launcher should exit with.
    Failed {
        /// What failed, with its cause.
        error: String,
        /// Suggested exit status of the launcher.
        exit_code: i32,
    },
}

/// A channel error.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The socket call failed.
    #[error("launcher channel: {0}")]
    Io(#[from] nix::Error),
    /// Undecodable message.
    #[error("launcher channel: bad message: {0}")]
    Decode(#[from] serde_json::Error),
    /// Something else than expected arrived.
    #[error("launcher channel: expected {expected}, got {got:?}")]
    Unexpected {
        /// The message that was expected.
        expected: &'static str,
        /// What arrived instead (`None`: the peer closed the channel).
        got: Option<Message>,
    },
}

/// One end of the channel.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

const MAX_MESSAGE: usize = 64 * 1024;

impl Channel {
    /// A connected pair (both ends close-on-exec).
    pub fn pair() -> Result<(Channel, Channel), ChannelError> {
        let (a, b) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)?;
        Ok((Channel { fd: a }, Channel { fd: b }))
    }

    /// The underlying fd (for polling).
    pub fn fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }

    /// Sends `msg` with `fds` attached.
    pub fn send(&self, msg: &Message, fds: &[BorrowedFd<'_>]) -> Result<(), ChannelError> {
        let body = serde_json::to_vec(msg)?;
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let cmsgs = if raw.is_empty() { vec![] } else { vec![ControlMessage::ScmRights(&raw)] };
        sendmsg::<()>(self.fd.as_raw_fd(), &[IoSlice::new(&body)], &cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
        Ok(())
    }

    /// Receives one message and the fds that came with it; `None` when the peer closed its
    /// end (for a child that exec'ed, that is success: the channel is close-on-exec).
    pub fn recv(&self) -> Result<Option<(Message, Vec<OwnedFd>)>, ChannelError> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        let mut cmsg = nix::cmsg_space!([RawFd; 4]);
        let (len, fds) = loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            match recvmsg::<()>(self.fd.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
                Ok(r) => {
                    let mut fds = Vec::new();
                    for c in r.cmsgs()? {
                        if let ControlMessageOwned::ScmRights(list) = c {
                            // SAFETY: SCM_RIGHTS just installed these fds in our table; nothing
                            // else refers to them, so wrapping them hands us sole ownership.
                            fds.extend(list.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                        }
                    }
                    break (r.bytes, fds);
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        if len == 0 {
            return Ok(None);
        }
        Ok(Some((serde_json::from_slice(&buf[..len])?, fds)))
    }

    /// Receives a message that must carry exactly one fd.
    pub fn recv_fd(&self, expected: &'static str, want: &Message) -> Result<OwnedFd, ChannelError> {
        match self.recv()? {
            Some((m, mut fds)) if &m == want && fds.len() == 1 => Ok(fds.remove(0)),
            Some((m, _)) => Err(ChannelError::Unexpected { expected, got: Some(m) }),
            None => Err(ChannelError::Unexpected { expected, got: None }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    #[test]
    fn messages_and_fds_cross() {
        let (a, b) = Channel::pair().unwrap();
        let mut file = tempfile_in_tmp();
        file.write_all(b"hello").unwrap();
        use std::os::fd::AsFd;
        a.send(&Message::NotifySocket, &[file.as_fd()]).unwrap();
        let fd = b.recv_fd("notify socket", &Message::NotifySocket).unwrap();
        let mut f = std::fs::File::from(fd);
        f.rewind().unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello");
        a.send(&Message::Failed { error: "x".into(), exit_code: 3 }, &[]).unwrap();
        assert!(matches!(b.recv().unwrap(), Some((Message::Failed { exit_code: 3, .. }, _))));
        drop(a);
        assert!(b.recv().unwrap().is_none());
    }

    fn tempfile_in_tmp() -> std::fs::File {
        let path = std::env::temp_dir().join(format!("mctl-chan-{}", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }
}
