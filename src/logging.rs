//! The tracing subscriber: plain lines on stderr, filtered by `$MCTL_LOG` (default `info`).

use tracing::Level;
use tracing_subscriber::EnvFilter;

/// Installs the subscriber; `quiet` raises the default level to warnings.
pub fn init(quiet: bool) {
    let fmt = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .with_target(false);
    // A plain level unless $MCTL_LOG asks for more: parsing directives costs every command.
    let _ = match EnvFilter::try_from_env("MCTL_LOG") {
        Ok(filter) => fmt.with_env_filter(filter).try_init(),
        Err(_) => fmt.with_max_level(if quiet { Level::WARN } else { Level::INFO }).try_init(),
    };
}
