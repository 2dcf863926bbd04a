//! The `mctl` command.

// Started for every machine: its own entry skips std's runtime start-up (see mctl::entry).
#![cfg_attr(not(test), no_main)]

#[cfg(not(test))]
#[unsafe(no_mangle)]
extern "C" fn main(_argc: std::ffi::c_int, _argv: *const *const std::ffi::c_char) -> std::ffi::c_int {
    mctl::entry::run(|| {
        // (std reads the arguments for args_os() from its .init_array hook, shim or not.)
        let cli = mctl::cli::Cli::parse_args(std::env::args_os().collect());
        mctl::logging::init(mctl::cli::is_quiet(&cli));
        match mctl::cli::run(cli, &mctl::cli::CliConfig::from_env()) {
            Ok(code) => u8::try_from(code).unwrap_or(1),
            Err(e) => {
                eprintln!("mctl: {e}");
                u8::try_from(e.exit_code).unwrap_or(1)
            }
        }
    })
}
