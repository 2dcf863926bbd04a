//! `mctl shell [USER@]NAME [COMMAND...]`: a shell or command inside a running machine, without
//! needing D-Bus in the guest. It joins the machine's namespaces and a cgroup of its own below
//! the machine's, takes the machine's capability bounding set, and gets a pty from the
//! machine's devpts when interactive.
//!
//! Process structure: mctl (host, forwards the pty) → helper (joins the cgroup and namespaces;
//! a pid namespace applies to children only) → the command (PID in the machine).

use std::fs;
use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::bus::OWN_NAME;
use crate::bus::proxy::{self, Manager1Proxy, MctlManager1Proxy};
use crate::launcher::ChildError;
use crate::launcher::channel::{Channel, Message};
use crate::launcher::console::{Console, ConsoleEvent};
use crate::launcher::exec;
use crate::launcher::spec::{ConsoleMode, parse_setenv};
use crate::sys::linux::{self, Forked};

use super::args::ShellArgs;
use super::manage::describe;
use super::{CliConfig, CliError};

/// What `mctl shell` needs to know about the machine.
struct Target {
    leader: u32,
    cgroup: String,
}

fn lookup(name: &str) -> Result<Target, CliError> {
    let name = name.to_owned();
    crate::bus::client::block_on_thread(move || async move {
        let conn = crate::bus::client::system_bus().await.map_err(|e| {
            CliError::new(format!(
                "cannot reach mctld on the system bus: {} (is mctld running?)",
                describe(&e)
            ))
        })?;
        let mgr = Manager1Proxy::new(&conn).await.map_err(|e| CliError::new(describe(&e)))?;
        let path = mgr.get_machine(&name).await.map_err(|e| CliError::new(describe(&e)))?;
        let props = proxy::all_properties(&conn, OWN_NAME, path.as_str())
            .await
            .map_err(|e| CliError::new(describe(&e)))?;
        let leader = match props.get("Leader").map(|v| &**v) {
            Some(zbus::Variant::U32(l)) => *l,
            _ => return Err(CliError::new(format!("machine {name} has no leader"))),
        };
        let cgroup = match MctlManager1Proxy::new(&conn).await {
            Ok(p) => p.get_machine_control_group(&name).await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        Ok(Target { leader, cgroup })
    })
    .unwrap_or_else(|| Err(CliError::new("the D-Bus client could not run")))
}

/// The cgroup the shell runs in, below the machine's (removed again afterwards).
fn shell_cgroup(machine_cgroup: &str) -> Option<PathBuf> {
    if machine_cgroup.trim_matches('/').is_empty() {
        return None;
    }
    let hs = crate::cgroups::detect(&Default::default()).ok()?;
    let mount = hs.into_iter().find(|h| h.v2)?.mount;
    let dir =
        mount.join(machine_cgroup.trim_start_matches('/')).join(format!("mctl-shell-{}", std::process::id()));
    fs::create_dir(&dir).ok()?;
    Some(dir)
}

/// `mctl shell`.
pub fn shell(a: &ShellArgs, cfg: &CliConfig) -> Result<i32, CliError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(CliError::new("mctl shell must run as root (it enters the machine's namespaces)"));
    }
    // The command is visible inside the machine before it executes: it must not map the host's
    // binary (see `helper_main`). First, while single-threaded.
    linux::ensure_running_from_sealed_copy()
        .map_err(|e| CliError::new(format!("cannot run from a sealed copy of mctl: {e}")))?;
    let (user, name) = match a.target.split_once('@') {
        Some((u, n)) => (u.to_owned(), n.to_owned()),
        None => ("root".to_owned(), a.target.clone()),
    };
    let env_extra = a
        .setenv
        .iter()
        .map(|e| parse_setenv(e))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CliError::new(e.to_string()))?;
    let target = lookup(&name)?;
    // Namespaces are opened before forking: they stay valid even if the leader exits now.
    let mut namespaces = Vec::new();
    for (ns, flag) in [
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ] {
        let f = fs::File::open(format!("/proc/{}/ns/{ns}", target.leader))
            .map_err(|e| CliError::new(format!("cannot open the {ns} namespace of machine {name}: {e}")))?;
        namespaces.push((f, flag));
    }
    let bounding = leader_bounding_set(target.leader)?;
    let seccomp = crate::seccomp::SyscallFilter::for_machine(
        &bounding,
        &Default::default(),
        Some(&cfg.runtime_dir.join("seccomp")),
    )
    .map_err(|e| CliError::new(e.to_string()))?;
    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let cgroup = shell_cgroup(&target.cgroup);

    let mut mask = SigSet::empty();
    for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGWINCH] {
        mask.add(s);
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)
        .map_err(|e| CliError::new(format!("cannot block signals: {e}")))?;
    let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| CliError::new(format!("cannot create signalfd: {e}")))?;
    let (ours, theirs) = Channel::pair().map_err(|e| CliError::new(e.to_string()))?;

    let plan = Plan {
        leader: target.leader,
        user,
        command: a.command.clone(),
        env_extra,
        interactive,
        bounding,
        seccomp,
        cgroup: cgroup.clone(),
    };
    let helper = match linux::fork().map_err(|e| CliError::new(format!("cannot fork: {e}")))? {
        Forked::Child => {
            drop(ours);
            helper_main(&plan, namespaces, &theirs)
        }
        Forked::Parent(pid) => Pid::from_raw(pid),
    };
    drop(theirs);
    let result = supervise(&ours, helper, &sigfd, interactive);
    if let Some(dir) = cgroup {
        for _ in 0..100 {
            if fs::remove_dir(&dir).is_ok() || !dir.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    result
}

struct Plan {
    leader: u32,
    user: String,
    command: Vec<String>,
    env_extra: Vec<(String, String)>,
    interactive: bool,
    /// The machine's capability bounding set: the most the command may hold.
    bounding: caps::CapsHashSet,
    seccomp: crate::seccomp::SyscallFilter,
    cgroup: Option<PathBuf>,
}

fn leader_bounding_set(leader: u32) -> Result<caps::CapsHashSet, CliError> {
    let status = fs::read_to_string(format!("/proc/{leader}/status"))
        .map_err(|e| CliError::new(format!("cannot read the machine's capabilities: {e}")))?;
    let bits = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .ok_or_else(|| CliError::new("cannot read the machine's capabilities"))?;
    Ok(caps::all().into_iter().filter(|c| c.index() < 64 && bits & (1u64 << c.index()) != 0).collect())
}

fn supervise(chan: &Channel, helper: Pid, sigfd: &SignalFd, interactive: bool) -> Result<i32, CliError> {
    let child_err = |e: crate::launcher::channel::ChannelError| CliError::new(e.to_string());
    let mut console = None;
    let mut command = None;
    // The helper reports the pty master (when interactive), then the command's pid; end of
    // file means the command runs.
    loop {
        match chan.recv().map_err(child_err)? {
            Some((Message::ConsoleMaster, mut fds)) if fds.len() == 1 => {
                let master = fds.remove(0);
                console = Some(
                    Console::new(master, ConsoleMode::Interactive)
                        .map_err(|e| CliError::new(e.to_string()))?,
                );
            }
            Some((Message::InnerPid(pid), _)) => command = Some(Pid::from_raw(pid)),
            Some((Message::Failed { error, exit_code }, _)) => {
                let _ = waitpid(helper, None);
                return Err(CliError { message: error, exit_code });
            }
            Some(_) => {}
            None => break,
        }
    }
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(|e| CliError::new(e.to_string()))?;
    epoll.add(sigfd, EpollEvent::new(EpollFlags::EPOLLIN, 1)).map_err(|e| CliError::new(e.to_string()))?;
    if let Some(c) = console.as_mut()
        && c.register(&epoll).map_err(|e| CliError::new(e.to_string()))? == ConsoleEvent::Escape
        && let Some(pid) = command
    {
        let _ = linux::send_signal(pid.as_raw(), libc::SIGKILL);
    }
    let _ = interactive;
    let mut events = [EpollEvent::empty(); 16];
    let status = loop {
        if let Ok(s @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) =
            waitpid(helper, Some(WaitPidFlag::WNOHANG))
        {
            break s;
        }
        let n = match epoll.wait(&mut events, EpollTimeout::NONE) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(CliError::new(e.to_string())),
        };
        for ev in &events[..n] {
            if ev.data() == 1 {
                while let Ok(Some(info)) = sigfd.read_signal() {
                    match Signal::try_from(info.ssi_signo as i32) {
                        Ok(Signal::SIGWINCH) => {
                            if let Some(c) = &console {
                                c.resize();
                            }
                        }
                        Ok(Signal::SIGCHLD) | Err(_) => {}
                        Ok(sig) => {
                            if let Some(pid) = command {
                                let _ = linux::send_signal(pid.as_raw(), sig as i32);
                            }
                        }
                    }
                }
            } else if let Some(c) = console.as_mut()
                && c.handle(ev.data()) == ConsoleEvent::Escape
                && let Some(pid) = command
            {
                let _ = linux::send_signal(pid.as_raw(), libc::SIGKILL);
            }
        }
    };
    if let Some(c) = console {
        c.finish();
    }
    Ok(match status {
        WaitStatus::Exited(_, code) => code,
        WaitStatus::Signaled(_, sig, _) => 128 + sig as i32,
        _ => 1,
    })
}

/// The helper: joins cgroup and namespaces, allocates the pty, becomes no more than a process
/// of the machine, forks the command, waits for it and exits with its status.
///
/// The command is in the machine's pid namespace before it executes, where the guest's root can
/// see it and, holding CAP_SYS_PTRACE, attach to it. So everything a guest could reach through it
/// is the guest's already by then: it runs from a sealed in-memory copy of mctl (no host file
/// behind `/proc/PID/exe`), with the machine's capabilities and system call filter, and it reads
/// no guest file that could stall it.
fn helper_main(plan: &Plan, namespaces: Vec<(fs::File, CloneFlags)>, chan: &Channel) -> ! {
    let report = |e: ChildError| -> ! {
        let _ = chan.send(&Message::Failed { error: e.to_string(), exit_code: e.exit_code() }, &[]);
        linux::exit_now(e.exit_code())
    };
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        report(ChildError::Step("make the helper non-dumpable", e.into()));
    }
    if let Some(dir) = &plan.cgroup {
        let procs = dir.join("cgroup.procs");
        if let Err(e) = fs::write(&procs, "0") {
            report(ChildError::PathStep { step: "join cgroup", path: procs, source: e });
        }
        if let Err(e) = crate::cgroups::join_v1_cgroups_of(&Default::default(), plan.leader) {
            report(ChildError::Message(e.to_string()));
        }
    }
    for (f, flag) in &namespaces {
        if let Err(e) = setns(f.as_fd(), *flag) {
            report(ChildError::Step("enter the machine's namespaces", e.into()));
        }
    }
    drop(namespaces);
    let user = exec::lookup_in_machine(&plan.user).unwrap_or_else(|e| report(e));
    let tty = if plan.interactive {
        let slave = linux::open_pty_master(Path::new("/dev/pts/ptmx")).and_then(|(master, _)| {
            let slave = linux::pty_peer(master.as_fd())?;
            chan.send(&Message::ConsoleMaster, &[master.as_fd()]).map_err(std::io::Error::other)?;
            Ok(slave)
        });
        Some(slave.unwrap_or_else(|e| report(ChildError::Step("allocate a terminal in the machine", e))))
    } else {
        None
    };
    if let Err(e) = confine(plan) {
        report(e);
    }
    match linux::fork() {
        Ok(Forked::Child) => {
            let e = match run_command(plan, user, tty) {
                Ok(never) => match never {},
                Err(e) => e,
            };
            report(e)
        }
        Ok(Forked::Parent(pid)) => {
            let _ = chan.send(&Message::InnerPid(pid), &[]);
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

/// Takes this process down to the machine's privileges: its bounding set, its system call
/// filter, and no capability outside that set in any set.
fn confine(plan: &Plan) -> Result<(), ChildError> {
    crate::launcher::security::apply_bounding_set(&plan.bounding)
        .map_err(|e| ChildError::Message(format!("cannot drop capabilities: {e}")))?;
    // Loaded while CAP_SYS_ADMIN is still effective (the machine may not keep it).
    plan.seccomp.load().map_err(ChildError::step("load the system call filter"))?;
    crate::launcher::security::limit_capabilities(&plan.bounding)
        .map_err(|e| ChildError::Message(format!("cannot drop capabilities: {e}")))
}

fn run_command(
    plan: &Plan,
    user: crate::launcher::identity::User,
    tty: Option<std::os::fd::OwnedFd>,
) -> Result<std::convert::Infallible, ChildError> {
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
        ("PATH".to_owned(), crate::launcher::DEFAULT_PATH.to_owned()),
        ("container".to_owned(), "mctl".to_owned()),
    ];
    if let Ok(term) = std::env::var("TERM") {
        env.push(("TERM".to_owned(), term));
    }
    let home = exec::become_user(user, &mut env)?;
    for (k, v) in &plan.env_extra {
        exec::set_env(&mut env, k, v);
    }
    if nix::unistd::chdir(home.as_str()).is_err() {
        let _ = nix::unistd::chdir("/");
    }
    let envp = exec::envp(&env);
    linux::cloexec_fds_from(3).map_err(ChildError::step("close inherited file descriptors"))?;
    if plan.command.is_empty() {
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
        return Err(ChildError::Exec(shell, err));
    }
    Err(exec::exec_search(&plan.command, &env, &envp))
}
