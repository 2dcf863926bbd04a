//! The machine's PID 1 before it execs: enters its cgroup namespace, mounts what must be
//! mounted from inside the new pid namespace, waits for the launcher, sets up the console,
//! drops privileges and execs init (or the command, or the reaper with `--as-pid2`).

use std::convert::Infallible;
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};

use crate::sys::Sys;
use crate::sys::linux::{self, Forked, LinuxSys};

use super::channel::ChildEnd;
use super::exec::{self, cstring};
use super::identity::INIT_CANDIDATES;
use super::mounts::{self, Trees};
use super::private_users;
use super::security;
use super::spec::Payload;
use super::{ChildContext, ChildError};

/// Runs PID 1's setup and execs; reports failures to the launcher and exits. `root_detached`
/// is a pipe on which the outer child writes once the host's tree is detached.
pub(super) fn run(
    ctx: &ChildContext<'_>,
    chan: &ChildEnd,
    console: Option<&str>,
    root_detached: OwnedFd,
) -> ! {
    let result = mount_api_filesystems(&LinuxSys, &ctx.boot_id, ctx.spec.network.needs_netns(), &ctx.host)
        .and_then(|()| inner(ctx, chan, console, Some(root_detached)));
    fail(chan, result)
}

/// [`run`] for PID 1 in a user namespace of its own, forked before the tree was built: it waits
/// for the outer child to complete it (API file systems included), then becomes root of its
/// user namespace and sets its hostname there.
pub(super) fn run_in_user_namespace(
    ctx: &ChildContext<'_>,
    chan: &ChildEnd,
    console: Option<&str>,
    wait: private_users::Pid1Wait,
) -> ! {
    let result = wait
        .wait_until_ready()
        .and_then(|()| {
            // Made here, not locked (see protect_plan); it also makes / shared again (the copied
            // mounts became slaves of the host's).
            let protect = mounts::protect_plan(&ctx.boot_id, ctx.spec.network.needs_netns());
            mounts::apply(&LinuxSys, &Trees::default(), &protect)?;
            LinuxSys.sethostname(ctx.spec.hostname()).map_err(ChildError::step("set hostname"))
        })
        // The outer child detached the host's tree before it released us.
        .and_then(|()| inner(ctx, chan, console, None));
    fail(chan, result)
}

fn fail(chan: &ChildEnd, result: Result<Infallible, ChildError>) -> ! {
    let err = match result {
        Ok(never) => match never {},
        Err(e) => e,
    };
    chan.failed(&err, err.exit_code());
    linux::exit_now(err.exit_code())
}

fn inner(
    ctx: &ChildContext<'_>,
    chan: &ChildEnd,
    console: Option<&str>,
    root_detached: Option<OwnedFd>,
) -> Result<Infallible, ChildError> {
    // Our parent is the launcher (we were forked as the outer child's sibling), so this ties
    // the machine's life to the launcher's.
    linux::set_parent_death_signal(Signal::SIGKILL).map_err(ChildError::step("set parent death signal"))?;
    if launcher_gone(chan) {
        linux::exit_now(1);
    }
    security::apply_bounding_set(&ctx.capabilities)
        .map_err(|e| ChildError::Message(format!("cannot drop capabilities: {e}")))?;
    reset_signals(ctx.ignored_signals)?;
    if ctx.spec.no_new_privileges {
        nix::sys::prctl::set_no_new_privs().map_err(|e| ChildError::Step("set no_new_privs", e.into()))?;
    }
    // After the steps above, which may use calls the machine may not (the reaper of
    // --as-pid2 runs under the filter too).
    ctx.seccomp.load().map_err(ChildError::step("load the system call filter"))?;
    // The waits come only now (nspawn's inner child too loads its filter before its last sync
    // with the parent), so that the loading (a few hundred microseconds) overlaps the outer
    // child's unmount and the launcher's work. Both read with read(2), which no filter that
    // lets a payload run denies.
    if let Some(pipe) = root_detached
        && !outer_detached_root(pipe)
    {
        // The outer child failed (and reported why): the host's tree may still be in reach.
        linux::exit_now(1);
    }
    if ctx.wait_for_go && !chan.wait_go()? {
        // The launcher went away: nothing to run for.
        linux::exit_now(1);
    }

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

/// The cgroup namespace (the launcher placed us in the payload cgroup; that becomes the root
/// the guest sees), then what must be mounted from inside the new pid namespace (/proc, /sys).
fn mount_api_filesystems(
    sys: &impl Sys,
    boot_id: &uuid::Uuid,
    own_network: bool,
    host: &mounts::HostFacts,
) -> Result<(), ChildError> {
    sys.unshare(CloneFlags::CLONE_NEWCGROUP).map_err(ChildError::step("create cgroup namespace"))?;
    let plan = mounts::inner_plan(boot_id, own_network, host);
    mounts::apply(sys, &Trees::default(), &plan)?;
    Ok(())
}

/// Waits for the outer child's word that the host's tree is detached; false when it exited
/// without saying so.
fn outer_detached_root(pipe: OwnedFd) -> bool {
    let mut byte = [0u8; 1];
    loop {
        match nix::unistd::read(&pipe, &mut byte) {
            Err(nix::errno::Errno::EINTR) => continue,
            result => return result == Ok(1),
        }
    }
}

/// Whether the launcher's end of the channel is closed.
fn launcher_gone(chan: &ChildEnd) -> bool {
    let mut fds = [PollFd::new(chan.fd(), PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::ZERO).is_ok()
        && fds[0].revents().is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR))
}

/// Exec'ed programs inherit the launcher's blocked signals and ignored SIGPIPE; undo both.
fn reset_signals(ignored: Option<u64>) -> Result<(), ChildError> {
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(|e| ChildError::Step("reset signal mask", e.into()))?;
    linux::reset_signal_dispositions(ignored);
    Ok(())
}

fn exec_payload(ctx: &ChildContext<'_>, console: Option<&str>) -> Result<Infallible, ChildError> {
    nix::unistd::setsid().map_err(|e| ChildError::Step("create session", e.into()))?;
    if let Some(console) = console {
        exec::attach_terminal(console)?;
    }
    security::apply_machine_rlimits().map_err(|e| ChildError::Step("set resource limits", e.into()))?;
    ctx.spec.attributes.apply().map_err(|(step, e)| ChildError::Step(step, e))?;

    let mut env = ctx.env.clone();
    let ambient = &ctx.spec.capabilities.ambient;
    let home = match &ctx.spec.user {
        Some(who) => {
            let user = exec::lookup_in_machine(who)?;
            if !ambient.is_empty() {
                security::keep_capabilities_across_setuid()
                    .map_err(|e| ChildError::Step("keep capabilities for the ambient set", e.into()))?;
            }
            Some(exec::become_user(&LinuxSys, user, &mut env)?)
        }
        None => None,
    };
    security::raise_ambient(ambient)
        .map_err(|e| ChildError::Message(format!("cannot raise the ambient capabilities: {e}")))?;
    // User-given variables win over everything mctl sets.
    for (k, v) in &ctx.spec.env {
        exec::set_env(&mut env, k, v);
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
    let envp = exec::envp(&env);
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
        Payload::Command { argv, .. } => Err(exec::exec_search(argv, &env, &envp)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::FakeSys;

    #[test]
    fn the_cgroup_namespace_comes_before_proc_sys_and_cgroup2() {
        let sys = FakeSys::new();
        mount_api_filesystems(&sys, &uuid::Uuid::nil(), false, &Default::default()).unwrap();
        let calls = sys.calls();
        assert_eq!(calls[0], "unshare CloneFlags(CLONE_NEWCGROUP)");
        let cgroup2 = calls.iter().position(|c| c.contains(" cgroup2 ")).expect("cgroup2 mounted");
        assert!(cgroup2 > 0);
        sys.fail_on("unshare", libc::EPERM);
        let err = mount_api_filesystems(&sys, &uuid::Uuid::nil(), false, &Default::default()).unwrap_err();
        assert!(err.to_string().starts_with("cannot create cgroup namespace"), "{err}");
    }
}
