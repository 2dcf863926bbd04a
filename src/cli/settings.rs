//! `--settings`: a machine's settings file (see [`crate::settings`]) merged into its command
//! line as nspawn merges a `.nspawn` file: the command line wins setting by setting, unless
//! `--settings=override`.

use std::path::{Path, PathBuf};

use clap::ValueEnum;

use crate::settings::Settings;

use super::args::{MachineArgs, YesNo};
use super::{CliConfig, CliError};

/// `--settings=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum SettingsMode {
    /// Use the machine's settings file; one beside the image grants no privileges.
    #[default]
    #[value(alias = "true")]
    Yes,
    /// Read no settings file.
    #[value(alias = "false")]
    No,
    /// Use every setting, also of a file beside the image.
    Trusted,
    /// The file's settings win over the command line's.
    Override,
}

/// Finds and loads the settings file of the machine `m` names, if any.
fn load(m: &MachineArgs, mode: SettingsMode, cfg: &CliConfig) -> Result<Option<Settings>, CliError> {
    // The same root and name the launch gets (its errors, too, come from there).
    let (dir, name) = super::machine::root_and_base_name(m, cfg)?;
    let dirs: [&Path; 2] = [&cfg.config_dir, &cfg.runtime_dir];
    let Some((path, trusted)) = crate::settings::find(name.as_str(), &dirs, &dir) else {
        return Ok(None);
    };
    let trusted = trusted || mode == SettingsMode::Trusted;
    let s = Settings::load(&path, trusted).map_err(|e| CliError::new(e.to_string()))?;
    if !s.ignored.is_empty() && !m.quiet {
        eprintln!(
            "Ignoring {} from {}: a settings file beside the image may not grant privileges (use \
             --settings=trusted, or move it to {})",
            s.ignored.iter().map(|k| format!("{k}=")).collect::<Vec<_>>().join(", "),
            path.display(),
            cfg.config_dir.display()
        );
    }
    Ok(Some(s))
}

fn opt<T>(cli: &mut Option<T>, file: Option<T>, over: bool) {
    if let Some(v) = file
        && (over || cli.is_none())
    {
        *cli = Some(v);
    }
}

fn list(cli: &mut Vec<String>, file: Vec<String>, over: bool) {
    if !file.is_empty() && (over || cli.is_empty()) {
        *cli = file;
    }
}

fn flag(cli: &mut bool, file: Option<bool>, over: bool) {
    if let Some(v) = file
        && (over || !*cli)
    {
        *cli = v;
    }
}

fn yes_no(b: bool) -> YesNo {
    if b { YesNo::Yes } else { YesNo::No }
}

/// Merges the machine's settings file into its options, its payload's arguments (init's, or
/// the command) and `--as-pid2`.
pub fn apply(
    m: &mut MachineArgs,
    args: &mut Vec<String>,
    as_pid2: Option<&mut bool>,
    cfg: &CliConfig,
) -> Result<(), CliError> {
    let mode = m.settings.unwrap_or_default();
    if mode == SettingsMode::No {
        return Ok(());
    }
    let Some(s) = load(m, mode, cfg)? else { return Ok(()) };
    tracing::debug!(file = %s.path.display(), "settings file");
    let over = mode == SettingsMode::Override;
    if let Some(p) = s.parameters
        && (over || args.is_empty())
    {
        *args = p;
    }
    if let Some(two) = as_pid2 {
        flag(two, s.process_two, over);
    }
    list(&mut m.setenv, s.environment, over);
    opt(&mut m.user, s.user, over);
    opt(&mut m.chdir, s.working_directory, over);
    list(&mut m.capability, s.capability, over);
    list(&mut m.drop_capability, s.drop_capability, over);
    list(&mut m.ambient_capability, s.ambient_capability, over);
    list(&mut m.set_credential, s.set_credential, over);
    list(&mut m.load_credential, s.load_credential, over);
    opt(&mut m.oom_score_adjust, s.oom_score_adjust, over);
    let toggle = |b: bool| if b { super::args::Toggle::Yes } else { super::args::Toggle::No };
    opt(&mut m.suppress_sync, s.suppress_sync.map(toggle), over);
    opt(&mut m.cpu_affinity, s.cpu_affinity, over);
    opt(&mut m.personality, s.personality, over);
    // Limits merge limit by limit (the later one of a resource is set last, and wins).
    let cli = std::mem::take(&mut m.rlimit);
    m.rlimit = if over {
        cli.into_iter().chain(s.rlimits).collect()
    } else {
        s.rlimits.into_iter().chain(cli).collect()
    };
    opt(&mut m.kill_signal, s.kill_signal, over);
    opt(&mut m.hostname, s.hostname, over);
    opt(&mut m.resolv_conf, s.resolv_conf, over);
    opt(&mut m.link_journal, s.link_journal, over);
    opt(&mut m.pivot_root, s.pivot_root, over);
    opt(&mut m.timezone, s.timezone, over);
    if s.private_users.is_some() && (over || (m.private_users.is_none() && !m.private_users_pick)) {
        m.private_users = s.private_users;
        m.private_users_pick = false;
    }
    if let Some(n) = s.notify_ready
        && (over || m.notify_ready == YesNo::Yes)
    {
        m.notify_ready = yes_no(n);
    }
    list(&mut m.system_call_filter, s.system_call_filter, over);
    opt(&mut m.no_new_privileges, s.no_new_privileges.map(yes_no), over);
    opt(&mut m.uuid, s.machine_id, over);
    flag(&mut m.ephemeral, s.ephemeral, over);
    flag(&mut m.read_only, s.read_only, over);
    opt(&mut m.volatile, s.volatile, over);
    opt(&mut m.private_users_ownership, s.private_users_ownership, over);
    // Custom mounts are one setting, as in nspawn: the command line's or the file's.
    let file_mounts = !(s.bind.is_empty()
        && s.inaccessible.is_empty()
        && s.bind_read_only.is_empty()
        && s.tmpfs.is_empty()
        && s.overlay.is_empty()
        && s.overlay_read_only.is_empty());
    let cli_mounts = !(m.bind.is_empty()
        && m.inaccessible.is_empty()
        && m.bind_ro.is_empty()
        && m.tmpfs.is_empty()
        && m.overlay.is_empty()
        && m.overlay_ro.is_empty());
    if file_mounts && (over || !cli_mounts) {
        (m.bind, m.bind_ro, m.tmpfs) = (s.bind, s.bind_read_only, s.tmpfs);
        (m.overlay, m.overlay_ro, m.inaccessible) = (s.overlay, s.overlay_read_only, s.inaccessible);
    }
    list(&mut m.bind_user, s.bind_user, over);
    // So is the network.
    let file_net = s.private_network.is_some()
        || s.virtual_ethernet.is_some()
        || s.bridge.is_some()
        || s.zone.is_some()
        || !(s.interface.is_empty()
            && s.macvlan.is_empty()
            && s.ipvlan.is_empty()
            && s.virtual_ethernet_extra.is_empty());
    let cli_net = m.private_network
        || m.network_veth
        || m.network_bridge.is_some()
        || m.network_zone.is_some()
        || m.network_namespace_path.is_some()
        || !(m.network_interface.is_empty()
            && m.network_macvlan.is_empty()
            && m.network_ipvlan.is_empty()
            && m.network_veth_extra.is_empty());
    if file_net && (over || !cli_net) {
        m.private_network = s.private_network.unwrap_or(false);
        m.network_veth = s.virtual_ethernet.unwrap_or(false);
        (m.network_bridge, m.network_zone, m.network_interface) = (s.bridge, s.zone, s.interface);
        (m.network_macvlan, m.network_ipvlan) = (s.macvlan, s.ipvlan);
        m.network_veth_extra = s.virtual_ethernet_extra;
        if over {
            m.network_namespace_path = None;
        }
    }
    list(&mut m.port, s.port, over);
    // Limits merge setting by setting; the later assignment of one wins.
    let cli = std::mem::take(&mut m.property);
    m.property = if over {
        cli.into_iter().chain(s.resources).collect()
    } else {
        s.resources.into_iter().chain(cli).collect()
    };
    Ok(())
}

/// Where `set-property` records a machine's limits.
pub fn file_for(name: &str, cfg: &CliConfig) -> PathBuf {
    cfg.config_dir.join(format!("{name}.mctl"))
}
