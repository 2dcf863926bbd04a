//! Typed messages between the launcher and its children over a `SOCK_SEQPACKET` socketpair,
//! with file descriptors passed alongside (SCM_RIGHTS).

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

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
    /// Outer child → parent, its last word: the host's tree is detached from the machine's
    /// mount namespace (PID 1 has its own word for it, by a pipe).
    RootDetached,
    /// Parent → PID 1: setup on the host side is done, exec the payload.
    Go,
    /// Parent → outer child: the machine's v1 cgroups exist (hybrid hosts), join them.
    CgroupsReady,
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

/// One end of a `SOCK_SEQPACKET` socketpair carrying JSON messages with fds attached: the
/// launcher's [`Message`]s, or the messages of another protocol ([`Channel::send_as`]).
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

    /// One end made of a socket inherited from another process (`SOCK_SEQPACKET`).
    pub fn from_fd(fd: OwnedFd) -> Channel {
        Channel { fd }
    }

    /// The socket, for handing to a process that is about to execute.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Sends `msg` with `fds` attached.
    pub fn send(&self, msg: &Message, fds: &[BorrowedFd<'_>]) -> Result<(), ChannelError> {
        self.send_as(msg, fds)
    }

    /// Receives one [`Message`] (see [`Channel::recv_as`]).
    pub fn recv(&self) -> Result<Option<(Message, Vec<OwnedFd>)>, ChannelError> {
        self.recv_as()
    }

    /// Sends any serializable message with `fds` attached.
    pub fn send_as<T: serde::Serialize>(&self, msg: &T, fds: &[BorrowedFd<'_>]) -> Result<(), ChannelError> {
        let body = serde_json::to_vec(msg)?;
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let cmsgs = if raw.is_empty() { vec![] } else { vec![ControlMessage::ScmRights(&raw)] };
        sendmsg::<()>(self.fd.as_raw_fd(), &[IoSlice::new(&body)], &cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
        Ok(())
    }

    /// Receives one message and the fds that came with it; `None` when the peer closed its
    /// end (for a child that exec'ed, that is success: the channel is close-on-exec).
    pub fn recv_as<T: serde::de::DeserializeOwned>(&self) -> Result<Option<(T, Vec<OwnedFd>)>, ChannelError> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        let mut cmsg = nix::cmsg_space!([RawFd; 4]);
        let (len, fds) = loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            match recvmsg::<()>(self.fd.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
                Ok(r) => {
                    let mut fds = Vec::new();
                    for c in r.cmsgs()? {
                        if let ControlMessageOwned::ScmRights(list) = c {
                            fds.extend(list.into_iter().map(crate::sys::linux::own_received_fd));
                        }
                    }
                    break (r.bytes, fds);
                }
                // ECONNRESET: the peer closed with a message of ours unread. The error comes
                // first and is cleared by being read; what the peer sent is still queued.
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::ECONNRESET) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        if len == 0 {
            return Ok(None);
        }
        Ok(Some((serde_json::from_slice(&buf[..len])?, fds)))
    }

    /// Receives one short [`Message`] that comes without fds, by read(2).
    fn recv_without_fds(&self) -> Result<Option<Message>, ChannelError> {
        let mut buf = [0u8; 256];
        let len = loop {
            match nix::unistd::read(&self.fd, &mut buf) {
                Ok(n) => break n,
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::ECONNRESET) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        if len == 0 {
            return Ok(None);
        }
        Ok(Some(serde_json::from_slice(&buf[..len])?))
    }
}

/// A child's failure as it reported it, or a broken channel.
#[derive(Debug, thiserror::Error)]
pub enum ChildReport {
    /// The child reported a failed step.
    #[error("{error}")]
    Failed {
        /// What failed, with its cause.
        error: String,
        /// What the parent should exit with.
        exit_code: i32,
    },
    /// The channel broke or carried something unexpected.
    #[error(transparent)]
    Channel(#[from] ChannelError),
}

impl ChildReport {
    /// The exit status this report asks for.
    pub fn exit_code(&self) -> i32 {
        match self {
            ChildReport::Failed { exit_code, .. } => *exit_code,
            ChildReport::Channel(_) => 1,
        }
    }
}

/// What the outer child of a launch hands over before the payload may run.
#[derive(Debug)]
pub struct MachineSetup {
    /// The guest's notify socket (bound to `/run/host/notify` inside).
    pub notify: OwnedFd,
    /// The console pty master, unless the console is `pipe`.
    pub console: Option<OwnedFd>,
    /// The machine's PID 1 (host pid).
    pub pid1: i32,
}

/// What a process entering a machine hands over before its command runs.
#[derive(Debug, Default)]
pub struct Entered {
    /// The pty master of the command's terminal, when interactive.
    pub console: Option<OwnedFd>,
    /// The command's pid (host pid).
    pub command: Option<i32>,
}

/// A channel between a parent and the child it forks: [`ParentEnd`] stays with the parent,
/// [`ChildEnd`] goes with the child. Both ends are close-on-exec, so a child that executes its
/// payload closes its end: the parent reads that as success.
pub fn pair() -> Result<(ParentEnd, ChildEnd), ChannelError> {
    let (a, b) = Channel::pair()?;
    Ok((ParentEnd(a), ChildEnd(b)))
}

/// The parent's end: each method waits for one step of the child.
#[derive(Debug)]
pub struct ParentEnd(Channel);

impl ParentEnd {
    fn next(&self, expected: &'static str) -> Result<(Message, Vec<OwnedFd>), ChildReport> {
        match self.0.recv()? {
            Some((Message::Failed { error, exit_code }, _)) => Err(ChildReport::Failed { error, exit_code }),
            Some(m) => Ok(m),
            None => Err(ChannelError::Unexpected { expected, got: None }.into()),
        }
    }

    /// The outer child's reports, up to the machine's PID 1.
    pub fn wait_pid1(&self) -> Result<MachineSetup, ChildReport> {
        let (mut notify, mut console) = (None, None);
        loop {
            match self.next("machine setup")? {
                (Message::NotifySocket, mut fds) if fds.len() == 1 => notify = fds.pop(),
                (Message::ConsoleMaster, mut fds) if fds.len() == 1 => console = fds.pop(),
                (Message::InnerPid(pid1), _) => {
                    let notify =
                        notify.ok_or(ChannelError::Unexpected { expected: "notify socket", got: None })?;
                    return Ok(MachineSetup { notify, console, pid1 });
                }
                (other, _) => {
                    return Err(
                        ChannelError::Unexpected { expected: "machine setup", got: Some(other) }.into()
                    );
                }
            }
        }
    }

    /// Why the outer child, which exited with `status` after reporting PID 1, failed: its
    /// report, else what the status says.
    pub fn outer_failure(&self, status: Option<nix::sys::wait::WaitStatus>) -> ChildReport {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        // Without waiting: PID 1 holds the child end open, so no end of file would come.
        let mut fds = [PollFd::new(self.0.fd(), PollFlags::POLLIN)];
        let queued = poll(&mut fds, PollTimeout::ZERO).is_ok_and(|n| n > 0)
            && fds[0].revents().is_some_and(|r| r.contains(PollFlags::POLLIN));
        match queued.then(|| self.0.recv()) {
            Some(Ok(Some((Message::Failed { error, exit_code }, _)))) => {
                ChildReport::Failed { error, exit_code }
            }
            _ => ChildReport::Failed {
                error: format!("the launcher's child ended unexpectedly ({status:?})"),
                exit_code: 1,
            },
        }
    }

    /// Waits for the outer child's [`Message::RootDetached`]; `false` when it exited without
    /// one. `outer` is a pidfd of it: PID 1 holds the child end open, so no end of file would
    /// tell (without a pidfd the caller has seen it exit 0, and its word is queued). A report
    /// of PID 1's failure may come first.
    pub fn wait_root_detached(&self, outer: Option<BorrowedFd<'_>>) -> Result<bool, ChildReport> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let mut fds = vec![PollFd::new(self.0.fd(), PollFlags::POLLIN)];
        fds.extend(outer.map(|fd| PollFd::new(fd, PollFlags::POLLIN)));
        loop {
            match poll(&mut fds, PollTimeout::NONE) {
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(ChannelError::Io(e).into()),
                Ok(_) => {}
            }
            let ready = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
            // A word sent before the exit counts: the channel is read first.
            if ready(&fds[0]) {
                return match self.next("root detached")? {
                    (Message::RootDetached, _) => Ok(true),
                    (other, _) => {
                        Err(ChannelError::Unexpected { expected: "root detached", got: Some(other) }.into())
                    }
                };
            }
            if fds.get(1).is_some_and(ready) {
                return Ok(false);
            }
        }
    }

    /// Tells the machine's PID 1 to execute its payload.
    pub fn go(&self) -> Result<(), ChannelError> {
        self.0.send(&Message::Go, &[])
    }

    /// Tells the outer child that the machine's v1 cgroups exist.
    pub fn cgroups_ready(&self) -> Result<(), ChannelError> {
        self.0.send(&Message::CgroupsReady, &[])
    }

    /// Waits until the child has executed its payload (it closes its end by doing so).
    pub fn wait_exec(&self) -> Result<(), ChildReport> {
        match self.0.recv()? {
            None => Ok(()),
            Some((Message::Failed { error, exit_code }, _)) => Err(ChildReport::Failed { error, exit_code }),
            Some((other, _)) => Err(ChannelError::Unexpected { expected: "exec", got: Some(other) }.into()),
        }
    }

    /// The reports of a process entering a machine, until its command runs.
    pub fn wait_entered(&self) -> Result<Entered, ChildReport> {
        let mut entered = Entered::default();
        loop {
            match self.0.recv()? {
                None => return Ok(entered),
                Some((Message::Failed { error, exit_code }, _)) => {
                    return Err(ChildReport::Failed { error, exit_code });
                }
                Some((Message::ConsoleMaster, mut fds)) if fds.len() == 1 => entered.console = fds.pop(),
                Some((Message::InnerPid(pid), _)) => entered.command = Some(pid),
                Some((other, _)) => {
                    return Err(ChannelError::Unexpected { expected: "the command", got: Some(other) }.into());
                }
            }
        }
    }

    /// A detached mount of a machine's root, from a child in its mount namespace.
    pub fn wait_root_mount(&self) -> Result<OwnedFd, ChildReport> {
        match self.next("the machine's root")? {
            (Message::RootMount, mut fds) if fds.len() == 1 => Ok(fds.remove(0)),
            (other, _) => {
                Err(ChannelError::Unexpected { expected: "the machine's root", got: Some(other) }.into())
            }
        }
    }
}

/// The child's end: each method reports one step.
#[derive(Debug)]
pub struct ChildEnd(Channel);

impl ChildEnd {
    /// The underlying fd (to poll for the parent going away).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.0.fd()
    }

    /// Reports a failed step; the child exits next.
    pub fn failed(&self, error: &impl std::fmt::Display, exit_code: i32) {
        let _ = self.0.send(&Message::Failed { error: error.to_string(), exit_code }, &[]);
    }

    /// Hands over the guest's notify socket.
    pub fn notify_socket(&self, fd: BorrowedFd<'_>) -> Result<(), ChannelError> {
        self.0.send(&Message::NotifySocket, &[fd])
    }

    /// Hands over a console or terminal pty master.
    pub fn console_master(&self, fd: BorrowedFd<'_>) -> Result<(), ChannelError> {
        self.0.send(&Message::ConsoleMaster, &[fd])
    }

    /// The outer child's last word (see [`Message::RootDetached`]).
    pub fn root_detached(&self) -> Result<(), ChannelError> {
        self.0.send(&Message::RootDetached, &[])
    }

    /// Reports the pid of the machine's PID 1 or of an entering command.
    pub fn pid(&self, pid: i32) -> Result<(), ChannelError> {
        self.0.send(&Message::InnerPid(pid), &[])
    }

    /// Hands over a detached mount of the machine's root.
    pub fn root_mount(&self, fd: BorrowedFd<'_>) -> Result<(), ChannelError> {
        self.0.send(&Message::RootMount, &[fd])
    }

    /// Waits until the parent has made the machine's v1 cgroups; `false` when the parent went
    /// away instead.
    pub fn wait_cgroups(&self) -> Result<bool, ChannelError> {
        match self.0.recv()? {
            Some((Message::CgroupsReady, _)) => Ok(true),
            None => Ok(false),
            Some((other, _)) => Err(ChannelError::Unexpected { expected: "cgroups", got: Some(other) }),
        }
    }

    /// Waits for the parent's go; `false` when the parent went away instead. PID 1 waits
    /// under the machine's system call filter, which may deny recvmsg (`~@network-io`): the go
    /// carries no fds, so plain read(2) takes it.
    pub fn wait_go(&self) -> Result<bool, ChannelError> {
        match self.0.recv_without_fds()? {
            Some(Message::Go) => Ok(true),
            None => Ok(false),
            Some(other) => Err(ChannelError::Unexpected { expected: "go", got: Some(other) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    #[test]
    fn each_step_crosses_with_its_fds() {
        let (parent, child) = pair().unwrap();
        let mut file = tempfile_in_tmp();
        file.write_all(b"hello").unwrap();
        use std::os::fd::AsFd;
        parent.cgroups_ready().unwrap();
        assert!(child.wait_cgroups().unwrap());
        child.notify_socket(file.as_fd()).unwrap();
        child.console_master(file.as_fd()).unwrap();
        child.pid(42).unwrap();
        let setup = parent.wait_pid1().unwrap();
        assert_eq!(setup.pid1, 42);
        assert!(setup.console.is_some());
        let mut f = std::fs::File::from(setup.notify);
        f.rewind().unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello");
        parent.go().unwrap();
        assert!(child.wait_go().unwrap());
        child.failed(&"no init", 3);
        assert!(matches!(parent.wait_exec(), Err(ChildReport::Failed { exit_code: 3, .. })));
        drop(child);
        assert!(parent.wait_exec().is_ok(), "end of file means the payload runs");
    }

    #[test]
    fn a_child_that_goes_away_is_an_error_until_exec() {
        let (parent, child) = pair().unwrap();
        drop(child);
        assert!(matches!(
            parent.wait_pid1(),
            Err(ChildReport::Channel(ChannelError::Unexpected { got: None, .. }))
        ));
        let (parent, child) = pair().unwrap();
        drop(parent);
        assert!(!child.wait_go().unwrap());
    }

    #[test]
    fn a_report_outlives_a_message_the_child_never_read() {
        // The child fails, the parent's CgroupsReady lands unread, the child exits: the kernel
        // flags the parent's socket ECONNRESET, yet the report is still queued behind it.
        let (parent, child) = pair().unwrap();
        child.failed(&"make /nonexistent inaccessible", 1);
        parent.cgroups_ready().unwrap();
        drop(child);
        match parent.wait_pid1() {
            Err(ChildReport::Failed { error, exit_code: 1 }) => assert!(error.contains("inaccessible")),
            other => panic!("the child's report was lost: {other:?}"),
        }
        assert!(matches!(
            parent.wait_pid1(),
            Err(ChildReport::Channel(ChannelError::Unexpected { got: None, .. }))
        ));
    }

    #[test]
    fn an_outer_child_failing_after_pid1_is_reported_without_waiting_for_pid1() {
        // PID 1 keeps its copy of the child end open: the parent must not wait for an end of
        // file that never comes.
        let (parent, child) = pair().unwrap();
        match parent.outer_failure(None) {
            ChildReport::Failed { error, exit_code: 1 } => assert!(error.contains("ended unexpectedly")),
            other => panic!("{other:?}"),
        }
        child.failed(&"detach the old root: EBUSY", 1);
        match parent.outer_failure(None) {
            ChildReport::Failed { error, exit_code: 1 } => assert!(error.contains("old root")),
            other => panic!("{other:?}"),
        }
        drop(child);
    }

    #[test]
    fn the_root_detached_word_or_the_outer_childs_exit_ends_the_wait() {
        use std::os::fd::AsFd;
        // The child end stays open throughout, as PID 1 holds it.
        let (parent, child) = pair().unwrap();
        let mut outer = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pidfd = crate::sys::linux::pidfd_open(i32::try_from(outer.id()).unwrap()).unwrap();
        child.root_detached().unwrap();
        assert!(parent.wait_root_detached(Some(pidfd.as_fd())).unwrap());
        // Without a word: the exit ends the wait.
        outer.kill().unwrap();
        assert!(!parent.wait_root_detached(Some(pidfd.as_fd())).unwrap());
        outer.wait().unwrap();
        // PID 1's failure may be reported first.
        child.failed(&"mount /proc: EPERM", 1);
        match parent.wait_root_detached(Some(pidfd.as_fd())) {
            Err(ChildReport::Failed { error, exit_code: 1 }) => assert!(error.contains("/proc")),
            other => panic!("{other:?}"),
        }
        // Without a pidfd the word is queued (the caller saw the exit).
        child.root_detached().unwrap();
        assert!(parent.wait_root_detached(None).unwrap());
        drop(child);
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
