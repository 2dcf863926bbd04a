//! The `mctl` command line: clap structs in [`args`], one handler module per verb group.

use std::path::PathBuf;

pub mod args;
pub mod commit;
pub mod docs;
pub mod images;
pub mod machine;
pub mod manage;
pub mod oci;
pub mod oci_bundle;
pub mod output;
pub mod resources;
pub mod settings;
pub mod shell;
pub mod transfer;
pub mod units;

pub use args::Cli;

/// Settings the CLI takes from its environment, as parameters so tests can redirect them.
#[derive(Debug, Clone)]
pub struct CliConfig {
    /// Where images live (`$MCTL_IMAGE_STORE`, default `/var/lib/machines`).
    pub image_store: PathBuf,
    /// Runtime directory for per-launch scratch mount points (`$MCTL_RUNTIME_DIR`, default
    /// `/run/mctl`).
    pub runtime_dir: PathBuf,
    /// The download cache of pulls (`$MCTL_PULL_CACHE`, default `/var/cache/mctl/pull`).
    pub pull_cache: PathBuf,
    /// State kept across boots of the host (`$MCTL_STATE_DIR`, default `/var/lib/mctl`): the id
    /// range each image had.
    pub state_dir: PathBuf,
    /// Machine settings files written by `set-property` and read first at a start
    /// (`$MCTL_CONFIG_DIR`, default `/etc/mctl`); `$MCTL_RUNTIME_DIR` is searched next.
    pub config_dir: PathBuf,
}

impl CliConfig {
    /// Reads the settings from the process environment.
    pub fn from_env() -> Self {
        Self {
            image_store: std::env::var_os("MCTL_IMAGE_STORE")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/var/lib/machines")),
            runtime_dir: std::env::var_os("MCTL_RUNTIME_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/run/mctl")),
            pull_cache: std::env::var_os("MCTL_PULL_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/var/cache/mctl/pull")),
            state_dir: std::env::var_os("MCTL_STATE_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/var/lib/mctl")),
            config_dir: std::env::var_os("MCTL_CONFIG_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/etc/mctl")),
        }
    }
}

/// A CLI failure: a message for the user and the exit status.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    /// What went wrong, and what to do.
    pub message: String,
    /// Exit status.
    pub exit_code: i32,
}

impl CliError {
    /// A failure with exit status 1.
    pub fn new(message: impl Into<String>) -> Self {
        Self { message: message.into(), exit_code: 1 }
    }
}

impl From<crate::launcher::process::LaunchError> for CliError {
    fn from(e: crate::launcher::process::LaunchError) -> Self {
        Self { exit_code: e.exit_code(), message: e.to_string() }
    }
}

/// Runs a parsed command line; returns the exit status.
pub fn run(cli: Cli, cfg: &CliConfig) -> Result<i32, CliError> {
    match cli.command {
        args::Command::Boot(a) => machine::boot(a, cfg),
        args::Command::Run(a) => machine::run(a, cfg),
        args::Command::List(a) => manage::list(&a),
        args::Command::Show(a) => manage::show(&a),
        args::Command::Status(a) => manage::status(&a.names),
        args::Command::Terminate(a) => manage::terminate(&a.names),
        args::Command::Kill(a) => manage::kill(&a),
        args::Command::Poweroff(a) => {
            manage::signal_leader(&a.names, crate::signals::SignalNumber::poweroff().0)
        }
        args::Command::Reboot(a) => manage::signal_leader(&a.names, libc::SIGINT),
        args::Command::Shell(a) => shell::shell(&a, cfg),
        args::Command::Login(a) => shell::login(&a.name),
        args::Command::Completions(a) => docs::completions(a.shell),
        args::Command::ManPages(a) => docs::man_pages(&a.dir),
        args::Command::CopyTo(a) => transfer::copy(&a, true),
        args::Command::CopyFrom(a) => transfer::copy(&a, false),
        args::Command::Bind(a) => transfer::bind(&a),
        args::Command::Commit(a) if a.oci => commit::commit_oci(&a.machine, &a.image, cfg),
        args::Command::Commit(a) => commit::commit(&a.machine, &a.image, cfg),
        args::Command::SetProperty(a) => resources::set_property(&a, cfg),
        args::Command::Top(a) => resources::top(&a),
        args::Command::Freeze(a) => manage::freeze(&a.names, true),
        args::Command::Thaw(a) => manage::freeze(&a.names, false),
        args::Command::Start(a) => units::start_stop(&a.names, cfg, true),
        args::Command::Stop(a) => units::start_stop(&a.names, cfg, false),
        args::Command::Enable(a) => units::enable_disable(&a.names, cfg, true),
        args::Command::Disable(a) => units::enable_disable(&a.names, cfg, false),
        args::Command::ListImages(a) => images::list_images(&a, cfg),
        args::Command::ImageStatus(a) => images::image_status(&a.names, a.output, cfg),
        args::Command::Clone(a) => images::clone(&a, cfg),
        args::Command::Rename(a) => images::rename(&a, cfg),
        args::Command::Remove(a) => images::remove(&a.names, cfg),
        args::Command::ReadOnly(a) => images::read_only(&a, cfg),
        args::Command::ImportTar(a) => images::import_tar(&a, cfg),
        args::Command::ExportTar(a) => images::export_tar(&a, cfg),
        args::Command::PullTar(a) => images::pull_tar(&a, cfg),
        args::Command::PullLxc(a) => images::pull_lxc(&a, cfg),
        args::Command::Bootstrap(a) => images::bootstrap(&a, cfg),
        args::Command::PullOci(a) => oci::pull_oci(&a, cfg),
        args::Command::ImportOci(a) => oci::import_oci(&a, cfg),
        args::Command::ExportOci(a) => oci::export_oci(&a, cfg),
        args::Command::PushOci(a) => oci::push_oci(&a, cfg),
        args::Command::PruneCache => oci::prune_cache(cfg),
        args::Command::OciBundle(a) => oci::oci_bundle(&a, cfg),
    }
}

/// Whether the command line asks for quiet operation (for logging set-up before parsing
/// errors can be reported).
pub fn is_quiet(cli: &Cli) -> bool {
    match &cli.command {
        args::Command::Boot(a) => a.machine.quiet,
        args::Command::Run(a) => a.machine.quiet,
        _ => false,
    }
}
