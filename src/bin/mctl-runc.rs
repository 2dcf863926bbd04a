//! `mctl-runc`: mctl's OCI runtime, with runc's command line.

use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::from(u8::try_from(mctl::container::cli::main()).unwrap_or(1))
}
