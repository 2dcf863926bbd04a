//! `exec`: another process in a running container, in its namespaces and cgroup, with its own
//! `process` (from `--process` or the command line on top of the container's).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, Signal};
use oci_spec::runtime::{LinuxSeccomp, Process};

use super::ContainerError;
use super::console::{ConsoleSocket, Relay};
use super::process::{self, StepError};
use super::state::{Status, Store, write_atomic};
use super::sync::{self, SyncEnd};
use crate::sys::linux::{Forked, exit_now};

/// What `exec` is asked.
#[derive(Debug, Default)]
pub struct ExecOptions {
    /// The process to run.
    pub process: Process,
    /// Where the pty master goes (`process.terminal`).
    pub console_socket: Option<ConsoleSocket>,
    /// Relay the pty here (a terminal without `--console-socket`).
    pub relay: Option<Relay>,
    /// Return once the process runs, instead of waiting for it.
    pub detach: bool,
    /// Where to write its pid.
    pub pid_file: Option<PathBuf>,
    /// Descriptors 3..3+N passed on.
    pub preserve_fds: u32,
}

/// The namespaces of the container's init that differ from ours, in joining order: the user
/// namespace first (it owns the others), the mount namespace last.
const KINDS: [(&str, CloneFlags); 8] = [
    ("user", CloneFlags::CLONE_NEWUSER),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("time", CloneFlags::from_bits_retain(0x80)),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

fn namespaces_of(pid: i32) -> Result<Vec<(CloneFlags, OwnedFd)>, ContainerError> {
    let mut out = Vec::new();
    for (name, flag) in KINDS {
        let theirs = PathBuf::from(format!("/proc/{pid}/ns/{name}"));
        let (Ok(t), Ok(o)) = (std::fs::metadata(&theirs), std::fs::metadata(format!("/proc/self/ns/{name}")))
        else {
            continue;
        };
        if t.ino() == o.ino() && t.dev() == o.dev() {
            continue;
        }
        let fd = std::fs::File::open(&theirs).map_err(ContainerError::io("open", &theirs))?;
        out.push((flag, OwnedFd::from(fd)));
    }
    Ok(out)
}

/// Runs the process; returns its exit status (0 with `detach`).
pub fn exec(store: &Store, id: &str, opts: ExecOptions) -> Result<i32, ContainerError> {
    let locked = store.open(id)?;
    let rec = locked.record.clone().ok_or_else(|| ContainerError::NotFound(id.into()))?;
    let status = rec.status(&locked.dir);
    match status {
        Status::Created | Status::Running => {}
        s => return Err(ContainerError::WrongStatus(format!("cannot exec in a {s} container"))),
    }
    if opts.process.args().as_deref().unwrap_or(&[]).is_empty() {
        return Err(ContainerError::Invalid("no command to run: give one, or args in --process".into()));
    }
    let namespaces = namespaces_of(rec.pid)?;
    let root_path = PathBuf::from(format!("/proc/{}/root", rec.pid));
    let root =
        OwnedFd::from(std::fs::File::open(&root_path).map_err(ContainerError::io("open", &root_path))?);
    let terminal = opts.process.terminal().unwrap_or(false);
    let console = match (&opts.console_socket, terminal) {
        (Some(socket), true) => Some(socket.connect()?),
        (Some(_), false) => {
            return Err(ContainerError::Invalid(
                "--console-socket given but the process has no terminal".into(),
            ));
        }
        // Without a socket the caller's own terminal (if any) is the process's.
        (None, _) => None,
    };
    // Checked before anything is started, as create does.
    super::lsm::check(&opts.process)?;
    let seccomp = rec.config.linux().as_ref().and_then(|l| l.seccomp().clone());
    if let Some(s) = &seccomp {
        super::seccomp::build(s).map_err(|e| ContainerError::Invalid(e.to_string()))?;
    }
    drop(locked);
    let (parent, child) =
        sync::pair().map_err(ContainerError::io("create the setup channel", "socketpair"))?;
    crate::sys::linux::set_child_subreaper().map_err(ContainerError::io("become a subreaper", "prctl"))?;
    let ctx = Ctx {
        namespaces: &namespaces,
        root: root.as_fd(),
        sync: &child,
        console: console.as_ref().map(AsFd::as_fd),
        process: &opts.process,
        seccomp: seccomp.as_ref(),
        preserve_fds: opts.preserve_fds,
    };
    let stage = match crate::sys::linux::fork().map_err(ContainerError::io("fork", "the exec stage"))? {
        Forked::Child => stage_main(&ctx),
        Forked::Parent(pid) => pid,
    };
    drop(child);
    drop(console);
    let reap = |pid: i32| {
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    };
    let started = (|| {
        rec.cgroup.add(stage)?;
        parent.send("cgroup").map_err(ContainerError::io("talk to", "the exec stage"))?;
        // The stage's "pid N" and the process's "ready" come in either order: the process
        // may run before its parent, the stage, is scheduled again.
        // A filter that notifies an agent sends its descriptor before "ready".
        let (mut pid, mut ready, mut agent_fd) = (None, false, None);
        while pid.is_none() || !ready {
            match recv(&parent)? {
                Some((m, _)) if m.starts_with("pid ") && pid.is_none() => {
                    pid = Some(m[4..].parse::<i32>().map_err(|_| bad(Some(m.clone())))?);
                    reap(stage);
                }
                Some((m, Some(fd))) if m == "seccomp" && agent_fd.is_none() => agent_fd = Some(fd),
                Some((m, _)) if m == "ready" && !ready => ready = true,
                other => {
                    if let Some(pid) = pid {
                        reap(pid);
                    }
                    return Err(bad(other.map(|(m, _)| m)));
                }
            }
        }
        let pid = pid.ok_or_else(|| bad(None))?;
        if let (Some(fd), Some(cfg)) = (agent_fd, &seccomp) {
            let state = rec.state_json(status);
            super::seccomp::hand_to_agent(cfg, fd.as_fd(), pid, &state)
                .map_err(|e| ContainerError::Setup(e.to_string()))?;
        }
        Ok(pid)
    })();
    let pid = match started {
        Ok(pid) => pid,
        Err(e) => {
            let _ = crate::sys::linux::send_signal(stage, libc::SIGKILL);
            reap(stage);
            return Err(e);
        }
    };
    if let Some(f) = &opts.pid_file {
        write_atomic(f, pid.to_string().as_bytes(), 0o644)?;
    }
    if opts.detach {
        return Ok(0);
    }
    match opts.relay {
        Some(relay) => relay.run(pid),
        None => Ok(wait_forwarding_signals(pid)),
    }
}

fn recv(chan: &SyncEnd) -> Result<Option<(String, Option<OwnedFd>)>, ContainerError> {
    chan.recv_with_fd(Some(Duration::from_secs(60)))
        .map_err(ContainerError::io("hear from", "the exec stage"))
}

fn bad(got: Option<String>) -> ContainerError {
    match got {
        Some(m) if m.starts_with("error ") => ContainerError::Setup(m["error ".len()..].to_owned()),
        Some(m) => ContainerError::Setup(format!("unexpected message '{m}'")),
        None => ContainerError::Setup("the exec stage ended before the process started".into()),
    }
}

struct Ctx<'a> {
    namespaces: &'a [(CloneFlags, OwnedFd)],
    root: BorrowedFd<'a>,
    sync: &'a SyncEnd,
    console: Option<BorrowedFd<'a>>,
    process: &'a Process,
    seccomp: Option<&'a LinuxSeccomp>,
    preserve_fds: u32,
}

fn stage_main(ctx: &Ctx<'_>) -> ! {
    if let Err(msg) = stage(ctx) {
        let _ = ctx.sync.send(&format!("error {msg}"));
        exit_now(1);
    }
    exit_now(0)
}

fn stage(ctx: &Ctx<'_>) -> Result<(), StepError> {
    match ctx.sync.recv(None) {
        Ok(Some(m)) if m == "cgroup" => {}
        _ => return Err("the runtime went away".into()),
    }
    for (flag, fd) in ctx.namespaces {
        nix::sched::setns(fd, *flag)
            .map_err(|e| format!("cannot join the container's namespace {flag:?}: {e}"))?;
    }
    // The init's root, which is not the mount namespace's after a --no-pivot create.
    nix::unistd::fchdir(ctx.root).map_err(|e| format!("cannot change to the container's root: {e}"))?;
    nix::unistd::chroot(".").map_err(|e| format!("cannot chroot to the container's root: {e}"))?;
    match crate::sys::linux::fork().map_err(|e| format!("cannot fork: {e}"))? {
        Forked::Parent(pid) => ctx.sync.send(&format!("pid {pid}")).map_err(|e| e.to_string()),
        Forked::Child => {
            if let Err(msg) = process_main(ctx) {
                let _ = ctx.sync.send(&format!("error {msg}"));
                exit_now(1);
            }
            unreachable!("process_main returns only errors")
        }
    }
}

fn process_main(ctx: &Ctx<'_>) -> Result<(), StepError> {
    let p = ctx.process;
    process::close_on_exec_from(3 + ctx.preserve_fds)?;
    if let Some(console) = ctx.console {
        nix::unistd::setsid().map_err(|e| format!("cannot start a session: {e}"))?;
        let (master, _) = crate::sys::linux::open_pty_master(Path::new("/dev/pts/ptmx"))
            .or_else(|_| crate::sys::linux::open_pty_master(Path::new("/dev/ptmx")))
            .map_err(|e| format!("cannot open a pty in the container: {e}"))?;
        process::hand_over_pty(master, console, p)?;
    }
    process::apply_rlimits(p)?;
    super::lsm::set_exec_labels(p)?;
    let nnp = p.no_new_privileges().unwrap_or(false);
    if !nnp {
        process::load_seccomp(ctx.seccomp, ctx.sync)?;
    }
    process::switch_user(p)?;
    process::set_capabilities(p)?;
    process::set_no_new_privileges(p)?;
    let exec = process::prepare_exec(p)?;
    if nnp {
        process::load_seccomp(ctx.seccomp, ctx.sync)?;
    }
    ctx.sync.send("ready").map_err(|e| e.to_string())?;
    let e = process::exec(&exec);
    eprintln!("mctl-runc: exec {}: {e}", exec.path.to_string_lossy());
    exit_now(if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 })
}

/// Waits for `pid` (a child, or one re-parented to us as subreaper), passing the signals a
/// caller sends us on to it; returns its exit status as a shell reports it (128+N if killed).
pub fn wait_forwarding_signals(pid: i32) -> i32 {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
    ] {
        set.add(s);
    }
    let _ = set.thread_block();
    let target = nix::unistd::Pid::from_raw(pid);
    loop {
        match nix::sys::wait::waitpid(target, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => return code,
            Ok(nix::sys::wait::WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) => {}
            Err(nix::errno::Errno::ECHILD) => return 255,
            Err(_) => {}
        }
        let timeout = libc::timespec { tv_sec: 0, tv_nsec: 20_000_000 };
        // SAFETY: `set` is a valid sigset; `timeout` a valid timespec; no siginfo is wanted.
        let sig = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &timeout) };
        if sig > 0 {
            let _ = crate::sys::linux::send_signal(pid, sig);
        }
    }
}
