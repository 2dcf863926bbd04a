//! The minimal PID 1 of `mctl run --as-pid2`: forwards termination signals to the command
//! (PID 2), reaps every orphan, and exits with the command's status (128+N when a signal N
//! killed it). It is the forked launcher code itself, running from a sealed in-memory copy of
//! the mctl binary (see `ensure_running_from_sealed_copy`).

use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// Signals passed on to the command.
const FORWARDED: [Signal; 7] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// Runs the reaper for `payload`; never returns.
pub fn main(payload: i32) -> ! {
    let payload = Pid::from_raw(payload);
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    for s in FORWARDED {
        set.add(s);
    }
    // Blocked signals wait in the queue for sigwait, so none is lost between checks.
    let _ = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None);
    // The command may already have exited before the mask was in place.
    if let Some(code) = reap(payload) {
        std::process::exit(code);
    }
    loop {
        match set.wait() {
            Ok(Signal::SIGCHLD) => {
                if let Some(code) = reap(payload) {
                    std::process::exit(code);
                }
            }
            Ok(sig) => {
                let _ = kill(payload, sig);
            }
            Err(_) => {}
        }
    }
}

/// Reaps every exited child; returns the exit code once the payload is among them.
fn reap(payload: Pid) -> Option<i32> {
    loop {
        match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == payload => return Some(code),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == payload => {
                return Some(128 + sig as i32);
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}
