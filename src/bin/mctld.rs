//! The `mctld` daemon.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
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
