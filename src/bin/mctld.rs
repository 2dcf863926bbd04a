//! The `mctld` daemon.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = mctl::daemon::DaemonArgs::parse();
    mctl::logging::init(false);
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
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
