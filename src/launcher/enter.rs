//! Entering a running machine: `mctl shell` (and later the OCI runtime's exec) runs a command in
//! a machine's namespaces and a cgroup below its own; `mctl commit` takes its root mount.
//!
//! Process structure: the caller (host, supervises and forwards the terminal) → helper (joins
//! the cgroup and namespaces; a pid namespace applies to children only) → the command (a
//! process of the machine). The command is in the machine's pid namespace before it executes,
//! where the guest's root can see it and, holding CAP_SYS_PTRACE, attach to it. So everything a
//! guest could reach through it is the guest's already by then: the caller runs from a sealed
//! in-memory copy of mctl (no host file behind `/proc/PID/exe`; see
//! [`ensure_running_from_sealed_copy`](crate::sys::linux::ensure_running_from_sealed_copy)), the
//! helper is non-dumpable and takes the machine's capabilities and system call filter before it
//! forks, and no guest file that could stall it is read (passwd through `guestfs`).

use std::convert::Infallible;
use std::fs;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::sys::linux::{self, Forked};

use super::channel::{self, ChildEnd, ChildReport};
use super::console::Console;
use super::events::{self, Event, Events};
use super::guest_units::{self, SessionUnit};
use super::spec::ConsoleMode;
use super::{ChildError, exec, security};

/// Entering failed.
#[derive(Debug, thiserror::Error)]
pub enum EnterError {
    /// A step on the caller's side.
    #[error("cannot {step}: {source}")]
    Step {
        /// What was being done.
        step: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The helper or the command reported a failed step.
    #[error(transparent)]
    Child(#[from] ChildReport),
}

impl EnterError {
    fn step(step: &'static str) -> impl FnOnce(std::io::Error) -> EnterError {
        move |source| EnterError::Step { step, source }
    }

    /// The exit status for this failure (127/126 for a command that cannot be found or run).
    pub fn exit_code(&self) -> i32 {
        match self {
            EnterError::Child(r) => r.exit_code(),
            EnterError::Step { .. } => 1,
        }
    }
}

/// What runs in the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// The user's login shell, as a login shell (`-bash`).
    LoginShell,
    /// A command, found through the machine's PATH.
    Command(Vec<String>),
    /// A program by absolute path with its own argv (argv\[0\] may differ from the path).
    Program {
        /// The file executed.
        path: String,
        /// Its arguments, argv\[0\] first.
        argv: Vec<String>,
    },
    /// A login prompt (the guest's agetty, else its getty or login) on the terminal.
    Getty,
    /// Nothing: only a terminal of the machine's devpts is opened and handed over.
    TerminalOnly,
}

/// What terminal the payload gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Terminal {
    /// The caller's stdin, stdout and stderr.
    Inherit,
    /// A fresh pty of the machine's devpts, forwarded to the caller's terminal.
    Forward,
    /// A fresh pty of the machine's devpts whose master goes to the caller's `handoff`
    /// (machine1's OpenMachineShell/Login/PTY hand it to a D-Bus client).
    HandOff,
}

/// What to run in which machine, and with what.
#[derive(Debug)]
pub struct EnterSpec {
    /// The machine's leader (its PID 1), whose namespaces are joined.
    pub leader: u32,
    /// The leader's start time, when known: its namespaces are used only if the pid still
    /// belongs to that process once they are open.
    pub leader_start: Option<u64>,
    /// The user to run as (name or uid in the machine's passwd).
    pub user: String,
    /// What runs.
    pub payload: Payload,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// The payload's terminal.
    pub terminal: Terminal,
    /// A cgroup2 directory below the machine's to run in (and the v1 cgroups of the leader).
    pub cgroup: Option<PathBuf>,
    /// The machine's bounding set: the most the command may hold.
    pub bounding: caps::CapsHashSet,
    /// The machine's system call filter.
    pub seccomp: crate::seccomp::SyscallFilter,
    /// The "machine" is the host (`.host`): no namespace is joined and nothing is confined
    /// (only root may ask, and gets what it has).
    pub on_host: bool,
    /// Descriptors of the caller's that must not follow it into the machine (closed first
    /// thing in the process that joins its namespaces).
    pub host_fds: Vec<RawFd>,
    /// Run the payload as a unit of the guest's systemd where one answers (a real session,
    /// as machined does it); it runs directly otherwise.
    pub via_guest_systemd: bool,
}

/// The namespaces a command entering a machine joins, in the order it joins them.
const NAMESPACES: [(&str, CloneFlags); 6] = [
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

/// Runs `spec.payload` in the machine and supervises it (signals to us go to it, its terminal
/// is forwarded); returns its exit status (128+N for signal N).
pub fn run(spec: &EnterSpec) -> Result<i32, EnterError> {
    run_handing_off(spec, &mut |_, _| Ok(()))
}

/// [`run`], where a [`Terminal::HandOff`] pty master is given to `handoff` (with the path of
/// its peer in the machine, `/dev/pts/N`) once the payload runs; this keeps no copy of it.
pub fn run_handing_off(
    spec: &EnterSpec,
    handoff: &mut dyn FnMut(OwnedFd, String) -> std::io::Result<()>,
) -> Result<i32, EnterError> {
    // Opened before forking: they stay valid even if the leader exits now.
    let mut namespaces = Vec::new();
    for (ns, flag) in NAMESPACES.into_iter().filter(|_| !spec.on_host) {
        let f = fs::File::open(format!("/proc/{}/ns/{ns}", spec.leader))
            .map_err(EnterError::step("open the machine's namespaces"))?;
        namespaces.push((f, flag));
    }
    // A machine with a user namespace of its own (--private-users): joined last, once host
    // root has joined the rest, and only then does the helper hold the machine's root's ids.
    if !spec.on_host {
        let userns = fs::File::open(format!("/proc/{}/ns/user", spec.leader))
            .map_err(EnterError::step("open the machine's namespaces"))?;
        if !same_file(&userns, Path::new("/proc/self/ns/user")) {
            namespaces.push((userns, CloneFlags::CLONE_NEWUSER));
        }
    }
    if spec.leader_start.is_some() && crate::procfs::start_time(spec.leader) != spec.leader_start {
        return Err(EnterError::Step {
            step: "find the machine's leader",
            source: std::io::Error::from_raw_os_error(libc::ESRCH),
        });
    }
    let sigfd = events::signalfd().map_err(EnterError::step("handle signals through a signalfd"))?;
    let (parent, child) = channel::pair().map_err(ChildReport::Channel)?;
    let helper = match linux::fork().map_err(EnterError::step("fork"))? {
        Forked::Child => {
            drop(parent);
            helper_main(spec, namespaces, &child)
        }
        Forked::Parent(pid) => Pid::from_raw(pid),
    };
    drop(child);
    drop(namespaces);
    let entered = match parent.wait_entered() {
        Ok(e) => e,
        Err(e) => {
            let _ = waitpid(helper, None);
            return Err(e.into());
        }
    };
    let console = match (entered.console, spec.terminal) {
        (Some(m), Terminal::Forward) => {
            Some(Console::new(m, ConsoleMode::Interactive).map_err(EnterError::step("set up the terminal"))?)
        }
        (Some(m), Terminal::HandOff) => {
            let path = rustix::pty::ptsname(&m, Vec::new())
                .map_err(|e| EnterError::Step { step: "name the terminal", source: e.into() })?;
            let path = path.to_string_lossy().into_owned();
            handoff(m, path).map_err(EnterError::step("hand over the terminal"))?;
            None
        }
        _ => None,
    };
    let command = entered.command.map(Pid::from_raw);
    let mut events =
        Events::new(&sigfd, None, console).map_err(EnterError::step("watch signals and the terminal"))?;
    let status = loop {
        if let Ok(s @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) =
            waitpid(helper, Some(WaitPidFlag::WNOHANG))
        {
            break s;
        }
        for event in events.wait(None).map_err(EnterError::step("wait for events"))? {
            match (event, command) {
                (Event::Signal(sig), Some(pid)) => {
                    let _ = linux::send_signal(pid.as_raw(), sig as i32);
                }
                (Event::Escape, Some(pid)) => {
                    let _ = linux::send_signal(pid.as_raw(), libc::SIGKILL);
                }
                _ => {}
            }
        }
    };
    events.finish();
    Ok(match status {
        WaitStatus::Exited(_, code) => code,
        WaitStatus::Signaled(_, sig, _) => 128 + sig as i32,
        _ => 1,
    })
}

/// The helper: joins cgroup and namespaces, allocates the terminal, becomes no more than a
/// process of the machine, forks the command, waits for it and exits with its status.
fn helper_main(spec: &EnterSpec, namespaces: Vec<(fs::File, CloneFlags)>, chan: &ChildEnd) -> ! {
    let report = |e: ChildError| -> ! {
        chan.failed(&e, e.exit_code());
        linux::exit_now(e.exit_code())
    };
    for fd in &spec.host_fds {
        // SAFETY: the caller listed descriptors it owns and never uses in this process.
        unsafe { libc::close(*fd) };
    }
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        report(ChildError::Step("make the helper non-dumpable", e.into()));
    }
    if let Some(dir) = &spec.cgroup {
        let procs = dir.join("cgroup.procs");
        if let Err(e) = fs::write(&procs, "0") {
            report(ChildError::PathStep { step: "join cgroup", path: procs, source: e });
        }
        if let Err(e) = crate::cgroups::join_v1_cgroups_of(&Default::default(), spec.leader) {
            report(ChildError::Message(e.to_string()));
        }
    }
    for (f, flag) in &namespaces {
        if let Err(e) = setns(f.as_fd(), *flag) {
            report(ChildError::Step("enter the machine's namespaces", e.into()));
        }
        if *flag == CloneFlags::CLONE_NEWUSER
            && let Err(e) = security::become_namespace_root()
        {
            report(ChildError::Step("become root of the machine's user namespace", e));
        }
    }
    drop(namespaces);
    let user = exec::lookup_in_machine(&spec.user).unwrap_or_else(|e| report(e));
    // The pty's peer is opened only once the payload is ours to run: a peer opened and closed
    // again would make the master read EIO until the guest's systemd opened it.
    let master = if spec.terminal != Terminal::Inherit {
        let master = linux::open_pty_master(Path::new("/dev/pts/ptmx")).and_then(|(master, n)| {
            chan.console_master(master.as_fd()).map_err(std::io::Error::other)?;
            Ok((master, n))
        });
        Some(master.unwrap_or_else(|e| report(ChildError::Step("allocate a terminal in the machine", e))))
    } else {
        None
    };
    if spec.payload == Payload::TerminalOnly {
        linux::exit_now(0)
    }
    if let Err(e) = confine(spec) {
        report(e);
    }
    // Confined first: what answers on the guest's systemd socket is the guest's.
    if spec.via_guest_systemd
        && let Some((_, pty)) = &master
        && let Some(unit) = session_unit(spec, *pty)
    {
        // From a child, a process of the machine's pid namespace (systemd refuses peers whose
        // pid it cannot see; only children enter a joined pid namespace).
        match linux::fork() {
            Ok(Forked::Child) => start_unit(&unit),
            Ok(Forked::Parent(pid)) => {
                if matches!(waitpid(Pid::from_raw(pid), None), Ok(WaitStatus::Exited(_, 0))) {
                    linux::exit_now(0)
                }
            }
            Err(e) => eprintln!("session in the machine runs without its systemd: fork: {e}"),
        }
    }
    let tty = master.map(|(m, _)| {
        linux::pty_peer(m.as_fd())
            .unwrap_or_else(|e| report(ChildError::Step("open the terminal in the machine", e)))
    });
    match linux::fork() {
        Ok(Forked::Child) => {
            let e = match run_command(spec, user, tty) {
                Ok(never) => match never {},
                Err(e) => e,
            };
            report(e)
        }
        Ok(Forked::Parent(pid)) => {
            let _ = chan.pid(pid);
            let _ = linux::close_fds_from(3);
            let code = match waitpid(Pid::from_raw(pid), None) {
                Ok(WaitStatus::Exited(_, c)) => c,
                Ok(WaitStatus::Signaled(_, s, _)) => 128 + s as i32,
                _ => 1,
            };
            linux::exit_now(code)
        }
        Err(e) => report(ChildError::Step("fork the command", e)),
    }
}

/// The unit of the guest's systemd that runs `spec.payload` on `/dev/pts/PTY`, if it is one a
/// unit can run.
fn session_unit(spec: &EnterSpec, pty: u32) -> Option<SessionUnit> {
    let shell = |path: &str, args: &[String]| SessionUnit::Shell {
        pty,
        user: spec.user.clone(),
        path: path.to_owned(),
        args: args.to_vec(),
        env: spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
    };
    match &spec.payload {
        Payload::Getty => Some(SessionUnit::Getty { pty }),
        // systemd sets $SHELL from the user's passwd entry.
        Payload::LoginShell => Some(shell("/bin/sh", &["-c".into(), "exec \"$SHELL\" -l".into()])),
        Payload::Program { path, argv } => Some(shell(path, argv.get(1..).unwrap_or_default())),
        Payload::Command(_) | Payload::TerminalOnly => None,
    }
}

/// Runs the guest's own tool that starts `unit` (in a child that is a process of the
/// machine); exits 0 when the guest's systemd took it. Its output goes nowhere: the guest's.
fn start_unit(unit: &SessionUnit) -> ! {
    if !Path::new(guest_units::PRIVATE_SOCKET).exists() {
        linux::exit_now(1)
    }
    let null = fs::OpenOptions::new().read(true).write(true).open("/dev/null");
    if let Ok(null) = null {
        let _ = nix::unistd::dup2_stdin(&null).and_then(|()| nix::unistd::dup2_stdout(&null));
        let _ = nix::unistd::dup2_stderr(&null);
    }
    let env = vec![("PATH".to_owned(), super::DEFAULT_PATH.to_owned())];
    let _ = linux::cloexec_fds_from(3);
    let _ = exec::exec_search(&unit.command(), &env, &exec::envp(&env));
    linux::exit_now(1)
}

/// Whether `f` is the file at `path` (namespaces compare by inode).
fn same_file(f: &fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (f.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Takes this process down to the machine's privileges: its bounding set, its system call
/// filter, and no capability outside that set in any set.
fn confine(spec: &EnterSpec) -> Result<(), ChildError> {
    if spec.on_host {
        return Ok(());
    }
    security::apply_bounding_set(&spec.bounding)
        .map_err(|e| ChildError::Message(format!("cannot drop capabilities: {e}")))?;
    // Loaded while CAP_SYS_ADMIN is still effective (the machine may not keep it).
    spec.seccomp.load().map_err(ChildError::step("load the system call filter"))?;
    security::limit_capabilities(&spec.bounding)
        .map_err(|e| ChildError::Message(format!("cannot drop capabilities: {e}")))
}

fn run_command(
    spec: &EnterSpec,
    user: super::identity::User,
    tty: Option<OwnedFd>,
) -> Result<Infallible, ChildError> {
    nix::unistd::setsid().map_err(|e| ChildError::Step("create session", e.into()))?;
    if let Some(tty) = tty {
        exec::attach_terminal_fd(tty)?;
    }
    let mut signals = SigSet::empty();
    for s in Signal::iterator() {
        signals.add(s);
    }
    let _ = sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&signals), None);
    let mut env = vec![
        ("PATH".to_owned(), super::DEFAULT_PATH.to_owned()),
        ("container".to_owned(), "mctl".to_owned()),
    ];
    if let Ok(term) = std::env::var("TERM") {
        env.push(("TERM".to_owned(), term));
    }
    let home = exec::become_user(&crate::sys::linux::LinuxSys, user, &mut env)?;
    for (k, v) in &spec.env {
        exec::set_env(&mut env, k, v);
    }
    if nix::unistd::chdir(home.as_str()).is_err() {
        let _ = nix::unistd::chdir("/");
    }
    let envp = exec::envp(&env);
    linux::cloexec_fds_from(3).map_err(ChildError::step("close inherited file descriptors"))?;
    match &spec.payload {
        Payload::LoginShell | Payload::TerminalOnly => {
            // The user's login shell, named with a leading '-' as login(1) does.
            let shell = env
                .iter()
                .find(|(k, _)| k == "SHELL")
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| "/bin/sh".into());
            let base =
                Path::new(&shell).file_name().map(|b| b.to_string_lossy().into_owned()).unwrap_or_default();
            let argv = [exec::cstring(&format!("-{base}"))];
            let err = linux::execve(&exec::cstring(&shell), &argv, &envp);
            Err(ChildError::Exec(shell, err))
        }
        Payload::Command(argv) => Err(exec::exec_search(argv, &env, &envp)),
        Payload::Program { path, argv } => {
            let argv: Vec<_> = argv.iter().map(|a| exec::cstring(a)).collect();
            Err(ChildError::Exec(path.clone(), linux::execve(&exec::cstring(path), &argv, &envp)))
        }
        Payload::Getty => Err(exec_getty(&env, &envp)),
    }
}

/// A login prompt on the terminal (stdin): the guest's agetty as systemd's container-getty
/// runs it, else a busybox-style getty, else login itself.
fn exec_getty(env: &[(String, String)], envp: &[std::ffi::CString]) -> ChildError {
    let term = env.iter().find(|(k, _)| k == "TERM").map_or("vt220", |(_, v)| v.as_str());
    let candidates: [&[&str]; 3] = [
        &["agetty", "-o", "-p -- \\u", "--noclear", "--keep-baud", "-", "115200,38400,9600", term],
        &["getty", "115200", "-", term],
        &["login"],
    ];
    let mut last = ChildError::NotFound("agetty".into());
    for argv in candidates {
        let argv: Vec<String> = argv.iter().map(|a| (*a).to_owned()).collect();
        match exec::exec_search(&argv, env, envp) {
            ChildError::NotFound(_) => {}
            e => last = e,
        }
    }
    last
}

/// A detached clone of the root mount of `leader`'s mount namespace (its root alone, or with the
/// mounts locked on top of it in a machine with a user namespace), taken by a child that joins
/// only that namespace (it is never visible in the machine's pid namespace).
pub fn root_mount_of(leader: u32) -> Result<OwnedFd, EnterError> {
    let ns = fs::File::open(format!("/proc/{leader}/ns/mnt"))
        .map_err(EnterError::step("open the machine's mount namespace"))?;
    let (parent, child) = channel::pair().map_err(ChildReport::Channel)?;
    match linux::fork().map_err(EnterError::step("fork"))? {
        Forked::Child => {
            drop(parent);
            // Only in the machine's own mount namespace may its mounts be cloned. In a machine
            // with a user namespace the mounts on top are locked to its root, which cannot be
            // cloned without them (EINVAL): then with them (the walks that read the tree stay
            // on its file system; files mounted over its own are lost to them).
            let taken =
                setns(ns.as_fd(), CloneFlags::CLONE_NEWNS).map_err(std::io::Error::from).and_then(|()| {
                    match linux::open_tree(Path::new("/"), false) {
                        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                            linux::open_tree(Path::new("/"), true)
                        }
                        other => other,
                    }
                });
            let code = match taken {
                Ok(fd) => child.root_mount(fd.as_fd()).map(|_| 0).unwrap_or(1),
                Err(e) => {
                    child.failed(&format!("cannot take the machine's root mount: {e}"), 1);
                    1
                }
            };
            linux::exit_now(code)
        }
        Forked::Parent(pid) => {
            drop(child);
            let got = parent.wait_root_mount();
            let _ = waitpid(Pid::from_raw(pid), None);
            Ok(got?)
        }
    }
}
