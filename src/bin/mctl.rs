//! The `mctl` command.

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = mctl::cli::Cli::parse_args(std::env::args_os().collect());
    mctl::logging::init(mctl::cli::is_quiet(&cli));
    match mctl::cli::run(cli, &mctl::cli::CliConfig::from_env()) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("mctl: {e}");
            ExitCode::from(u8::try_from(e.exit_code).unwrap_or(1))
        }
    }
}
