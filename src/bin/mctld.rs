//! The `mctld` daemon.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // The helper mctld starts for a session in a machine (see `mctl::session`), before anything
    // else: it must stay single-threaded.
    if std::env::args_os().nth(1).is_some_and(|a| a == mctl::session::HELPER_FLAG) {
        return ExitCode::from(u8::try_from(mctl::session::helper_main()).unwrap_or(1));
    }
    let args = mctl::daemon::DaemonArgs::parse();
    mctl::logging::init(false);
    // Blocking threads are bounded (tokio's default is 512): a flood of calls must not become
    // a flood of threads.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(mctl::daemon::blocking_threads())
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mctld: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(mctl::daemon::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mctld: {e}");
            ExitCode::FAILURE
        }
    }
}
