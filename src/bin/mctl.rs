//! The `mctl` command.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    // The reaper of `mctl run --as-pid2`, exec'ed from a sealed copy of this binary.
    if args.get(1).map(String::as_str) == Some("__stub-init") {
        let pid = args.get(2).and_then(|p| p.parse().ok()).unwrap_or(2);
        mctl::launcher::stub_init::main(pid);
    }
    let cli = mctl::cli::Cli::parse();
    mctl::logging::init(mctl::cli::is_quiet(&cli));
    match mctl::cli::run(cli, &mctl::cli::CliConfig::from_env()) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("mctl: {e}");
            ExitCode::from(u8::try_from(e.exit_code).unwrap_or(1))
        }
    }
}
