//! The tracing subscriber: plain lines on stderr, filtered by `$MCTL_LOG` (default `info`).

use tracing_subscriber::EnvFilter;

/// Installs the subscriber; `quiet` raises the default level to warnings.
pub fn init(quiet: bool) {
    let default = if quiet { "warn" } else { "info" };
    let filter = EnvFilter::try_from_env("MCTL_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .with_target(false)
        .try_init();
}
