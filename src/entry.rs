//! The commands' start, without std's runtime start-up.
//!
//! std's `main` shim installs a stack-overflow handler first: glibc's `pthread_getattr_np` reads
//! `/proc/self/maps` for the main thread's stack, and an alternate signal stack is mapped. That
//! is some 15 system calls and 0.04 ms before every `mctl run`, for a nicer message on a stack
//! overflow (without it the process still dies, of SIGSEGV). The rest of what the shim does
//! for a command is kept here.

use std::io::Write;

/// Runs `main` as std's shim would and returns its exit status: standard descriptors that
/// were closed are opened on `/dev/null` first (so that no file the command opens becomes its
/// stdout), SIGPIPE is ignored (a closed pipe is an error to report, not a death), a panic
/// exits with 101, and stdout is flushed at the end.
pub fn run(main: impl FnOnce() -> u8 + std::panic::UnwindSafe) -> i32 {
    reopen_closed_standard_fds();
    // SAFETY: SIG_IGN installs no handler, so there is no handler code whose async-signal
    // safety would matter; no other thread exists yet to race on the disposition.
    unsafe {
        let _ =
            nix::sys::signal::signal(nix::sys::signal::Signal::SIGPIPE, nix::sys::signal::SigHandler::SigIgn);
    }
    let code = match std::panic::catch_unwind(main) {
        Ok(code) => i32::from(code),
        // The panic hook has printed the message.
        Err(_) => 101,
    };
    let _ = std::io::stdout().flush();
    code
}

fn reopen_closed_standard_fds() {
    let mut fds = [0, 1, 2].map(|fd| libc::pollfd { fd, events: 0, revents: 0 });
    // SAFETY: `fds` is an array of three initialized pollfd, its length is passed, and poll
    // writes only their `revents`.
    let polled = unsafe { libc::poll(fds.as_mut_ptr(), 3, 0) };
    let closed = |p: &libc::pollfd| {
        if polled >= 0 {
            p.revents & libc::POLLNVAL != 0
        } else {
            // SAFETY: F_GETFD only reads the descriptor's flags; an invalid number is an error.
            unsafe { libc::fcntl(p.fd, libc::F_GETFD) == -1 }
        }
    };
    for _ in fds.iter().filter(|p| closed(p)) {
        // The lowest free number is the lowest closed one; kept open for good.
        if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
            std::mem::forget(null);
        }
    }
}
