//! `mctl-runc`: mctl's OCI runtime, with runc's command line.

// Started for every container operation: see mctl::entry.
#![cfg_attr(not(test), no_main)]

#[cfg(not(test))]
#[unsafe(no_mangle)]
extern "C" fn main(_argc: std::ffi::c_int, _argv: *const *const std::ffi::c_char) -> std::ffi::c_int {
    mctl::entry::run(|| u8::try_from(mctl::container::cli::main()).unwrap_or(1))
}
