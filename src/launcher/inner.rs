//! The machine's PID 1 before it execs: enters its cgroup namespace, mounts what must be
//! mounted from inside the new pid namespace, waits for the launcher, sets up the console,
//! drops privileges and execs init (or the command, or the reaper with `--as-pid2`).

use std::convert::Infallible;
use std::ffi::CString;
use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, sigprocmask};
use nix::unistd::{Gid, Uid};

use crate::sys::linux::{self, Forked, LinuxSys};

use super::channel::{Channel, Message};
use super::identity::{INIT_CANDIDATES, lookup_user};
use super::mounts::{self, Trees};
use super::security;
use super::spec::Payload;
use super::{ChildContext, ChildError};

/// Runs PID 1's setup and execs; reports failures to the launcher and exits.
pub(super) fn run(ctx: &ChildContext<'_>, chan: &Channel, console: Option<&str>) -> ! {
    let err = match inner(ctx, chan, console) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let _ = chan.send(&Message::Failed { error: err.to_string(), exit_code: err.exit_code() }, &[]);
    linux::exit_now(err.exit_code())
}

fn inner(ctx: &ChildContext<'_>, chan: &Channel, console: Option<&str>) -> Result<Infallible, ChildError> {
    // The launcher placed us in the payload cgroup; that becomes the root the guest sees.
    unshare(CloneFlags::CLONE_NEWCGROUP)
        .map_err(|e| ChildError::Step("create cgroup namespace", e.into()))?;
    mounts::apply(&LinuxSys, &Trees::default(), &mounts::inner_plan(&ctx.boot_id))?;

    match chan.recv()? {
        Some((Message::Go, _)) => {}
        // The launcher went away: nothing to run for.
        None => linux::exit_now(1),
        Some((other, _)) => {
            return Err(super::channel::ChannelError::Unexpected { expected: "go", got: Some(other) }.into());
        }
    }
    // By now the outer child has exited and the launcher adopted us, so this ties the
    // machine's life to the launcher's.
    linux::set_parent_death_signal(Signal::SIGKILL).map_err(ChildError::step("set parent death signal"))?;
    if launcher_gone(chan) {
        linux::exit_now(1);
    }
    security::apply_bounding_set(&ctx.capabilities)
        .map_err(|e| ChildError::Message(format!("cannot drop capabilities: {e}")))?;
    reset_signals()?;

    match &ctx.spec.payload {
        Payload::Command { as_pid2: true, .. } => {
            match linux::fork().map_err(ChildError::step("fork the command"))? {
                Forked::Child => exec_payload(ctx, console),
                Forked::Parent(pid) => {
                    // The reaper holds no fd: the launcher learns that the command runs when
                    // the channel closes. It runs from a sealed copy of mctl (see the CLI).
                    let _ = linux::close_fds_from(3);
                    super::stub_init::main(pid)
                }
            }
        }
        _ => exec_payload(ctx, console),
    }
}

/// Whether the launcher's end of the channel is closed.
fn launcher_gone(chan: &Channel) -> bool {
    let mut fds = [PollFd::new(chan.fd(), PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::ZERO).is_ok()
        && fds[0].revents().is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR))
}

/// Exec'ed programs inherit the launcher's blocked signals and ignored SIGPIPE; undo both.
fn reset_signals() -> Result<(), ChildError> {
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(|e| ChildError::Step("reset signal mask", e.into()))?;
    for sig in Signal::iterator() {
        if sig != Signal::SIGKILL && sig != Signal::SIGSTOP {
            // SAFETY: installing SIG_DFL runs no handler code, so no async-signal-safety
            // requirement applies.
            let _ = unsafe { nix::sys::signal::signal(sig, SigHandler::SigDfl) };
        }
    }
    Ok(())
}

fn cstring(s: &str) -> CString {
    CString::new(s.replace('\0', "")).unwrap_or_default()
}

fn exec_payload(ctx: &ChildContext<'_>, console: Option<&str>) -> Result<Infallible, ChildError> {
    nix::unistd::setsid().map_err(|e| ChildError::Step("create session", e.into()))?;
    if let Some(console) = console {
        let tty = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(console)
            .map_err(ChildError::path_step("open console", Path::new(console)))?;
        nix::unistd::dup2_stdin(&tty)
            .and_then(|()| nix::unistd::dup2_stdout(&tty))
            .and_then(|()| nix::unistd::dup2_stderr(&tty))
            .map_err(|e| ChildError::Step("attach console", e.into()))?;
        drop(tty);
        // SAFETY: fd 0 was just made a duplicate of the console tty and stays open.
        let stdin = unsafe { std::os::fd::BorrowedFd::borrow_raw(0) };
        linux::set_controlling_tty(stdin)
            .map_err(ChildError::step("make the console the controlling terminal"))?;
    }
    security::apply_machine_rlimits().map_err(|e| ChildError::Step("set resource limits", e.into()))?;

    let mut env = ctx.env.clone();
    let mut home = None;
    if let Some(who) = &ctx.spec.user {
        let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
        let group = fs::read_to_string("/etc/group").unwrap_or_default();
        let user = lookup_user(who, &passwd, &group)
            .ok_or_else(|| ChildError::Message(format!("user '{who}' does not exist in the machine")))?;
        let groups: Vec<Gid> = user.groups.iter().map(|g| Gid::from_raw(*g)).collect();
        nix::unistd::setgroups(&groups)
            .map_err(|e| ChildError::Step("set supplementary groups", e.into()))?;
        nix::unistd::setgid(Gid::from_raw(user.gid))
            .map_err(|e| ChildError::Step("set group id", e.into()))?;
        nix::unistd::setuid(Uid::from_raw(user.uid))
            .map_err(|e| ChildError::Step("set user id", e.into()))?;
        set_env(&mut env, "HOME", &user.home);
        set_env(&mut env, "USER", &user.name);
        set_env(&mut env, "LOGNAME", &user.name);
        set_env(&mut env, "SHELL", &user.shell);
        home = Some(user.home);
    }
    // User-given variables win over everything mctl sets.
    for (k, v) in &ctx.spec.env {
        set_env(&mut env, k, v);
    }
    let dir = ctx.spec.chdir.as_deref().map(Path::to_path_buf).or_else(|| home.map(Into::into));
    match dir {
        Some(d) => nix::unistd::chdir(&d).map_err(|e| ChildError::PathStep {
            step: "change directory to",
            path: d.clone(),
            source: e.into(),
        })?,
        None => nix::unistd::chdir("/").map_err(|e| ChildError::Step("change directory to /", e.into()))?,
    }
    let envp: Vec<CString> = env.iter().map(|(k, v)| cstring(&format!("{k}={v}"))).collect();
    linux::cloexec_fds_from(3).map_err(ChildError::step("close inherited file descriptors"))?;

    match &ctx.spec.payload {
        Payload::Boot { args } => {
            let mut last = None;
            for init in INIT_CANDIDATES {
                let mut argv = vec![cstring(init)];
                argv.extend(args.iter().map(|a| cstring(a)));
                let err = linux::execve(&cstring(init), &argv, &envp);
                last = Some((init, err));
            }
            let (init, err) = last.expect("INIT_CANDIDATES is not empty");
            Err(ChildError::Exec(init.to_owned(), err))
        }
        Payload::Command { argv, .. } => {
            let argv_c: Vec<CString> = argv.iter().map(|a| cstring(a)).collect();
            let path =
                env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str()).unwrap_or(super::DEFAULT_PATH);
            Err(exec_search(&argv[0], path, &argv_c, &envp))
        }
    }
}

fn set_env(env: &mut Vec<(String, String)>, key: &str, value: &str) {
    match env.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value.to_owned(),
        None => env.push((key.to_owned(), value.to_owned())),
    }
}

/// execvp's PATH search, with the machine's PATH (glibc's would use the launcher's).
fn exec_search(cmd: &str, path: &str, argv: &[CString], envp: &[CString]) -> ChildError {
    if cmd.contains('/') {
        return ChildError::Exec(cmd.to_owned(), linux::execve(&cstring(cmd), argv, envp));
    }
    let mut denied = None;
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let full = format!("{dir}/{cmd}");
        let err = linux::execve(&cstring(&full), argv, envp);
        if err.raw_os_error() == Some(libc::EACCES) {
            denied = Some((full, err));
        }
    }
    match denied {
        Some((full, err)) => ChildError::Exec(full, err),
        None => ChildError::NotFound(cmd.to_owned()),
    }
}
