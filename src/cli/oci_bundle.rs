//! `--oci-bundle=DIR` for `boot` and `run`, as nspawn's: the root directory and the settings
//! come from the bundle's `config.json` (no settings file is read), and options given on the
//! command line take precedence. What a machine cannot honour (a bundle's own seccomp profile,
//! hooks, namespaces mctl always makes being shared, unknown mounts) is refused, never ignored:
//! such bundles are for `mctl-runc`.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::CliError;
use super::args::{MachineArgs, YesNo};

/// File systems mctl mounts in every machine at these places: a bundle's own entries for them
/// (runc's default config has them all) are what the machine gets anyway.
const STANDARD_MOUNTS: [&str; 7] =
    ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup"];

/// Paths mctl makes read-only or masks in every machine (those of runc's default config).
const PROTECTED: [&str; 14] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
];

fn refuse(bundle: &Path, what: impl std::fmt::Display) -> CliError {
    CliError::new(format!(
        "--oci-bundle {}: {what} (a machine cannot do that; run the bundle with mctl-runc)",
        bundle.display()
    ))
}

/// Fills `m` (and, for `run`, `argv`) from the bundle's configuration where the command line
/// left them unset.
pub fn apply(m: &mut MachineArgs, argv: Option<&mut Vec<String>>) -> Result<(), CliError> {
    let Some(bundle) = m.oci_bundle.clone() else { return Ok(()) };
    if m.directory.is_some() || m.template.is_some() {
        return Err(CliError::new("--oci-bundle cannot be combined with -D/--directory or --template"));
    }
    let bundle = std::fs::canonicalize(&bundle)
        .map_err(|e| CliError::new(format!("--oci-bundle {}: {e}", bundle.display())))?;
    let spec = crate::container::create::load_config(&bundle).map_err(|e| CliError::new(e.to_string()))?;
    let root = spec.root().as_ref().map(|r| r.path().clone()).unwrap_or_default();
    m.directory = Some(if root.is_absolute() { root } else { bundle.join(root) });
    if m.machine.is_none() {
        let base = bundle.file_name().map(|b| b.to_string_lossy().into_owned()).unwrap_or_default();
        m.machine = crate::names::MachineName::from_dir_name(&base).map(|n| n.as_str().to_owned());
    }
    if spec.root().as_ref().and_then(|r| r.readonly()).unwrap_or(false) {
        m.read_only = true;
    }
    if m.hostname.is_none() {
        m.hostname = spec.hostname().clone();
    }
    process(m, argv, &spec, &bundle)?;
    mounts(m, &spec, &bundle)?;
    linux(m, &spec, &bundle)?;
    if spec.hooks().is_some() {
        return Err(refuse(&bundle, "hooks are set"));
    }
    Ok(())
}

fn process(
    m: &mut MachineArgs,
    argv: Option<&mut Vec<String>>,
    spec: &Spec,
    bundle: &Path,
) -> Result<(), CliError> {
    let Some(p) = spec.process() else { return Ok(()) };
    if let Some(argv) = argv
        && argv.is_empty()
    {
        argv.extend(p.args().clone().unwrap_or_default());
    }
    if m.chdir.is_none() && !p.cwd().as_os_str().is_empty() {
        m.chdir = Some(p.cwd().clone());
    }
    // The command line's assignments come later and so win.
    let cli_env = std::mem::take(&mut m.setenv);
    m.setenv = p.env().clone().unwrap_or_default().into_iter().chain(cli_env).collect();
    if m.user.is_none() && p.user().uid() != 0 {
        m.user = Some(p.user().uid().to_string());
    }
    // A user's group is the one the tree's passwd gives it (`--user`): another one cannot be had.
    if p.user().gid() != 0 && p.user().uid() == 0 {
        return Err(refuse(bundle, "process.user.gid is set for root"));
    }
    if m.no_new_privileges.is_none() && p.no_new_privileges() == Some(true) {
        m.no_new_privileges = Some(YesNo::Yes);
    }
    if m.oom_score_adjust.is_none() {
        m.oom_score_adjust = p.oom_score_adj().map(|v| v.to_string());
    }
    let cli_rlimits = std::mem::take(&mut m.rlimit);
    for r in p.rlimits().as_deref().unwrap_or(&[]) {
        let name = serde_json::to_value(r.typ()).ok().and_then(|v| v.as_str().map(str::to_owned));
        let name = name.unwrap_or_default();
        let short = name.strip_prefix("RLIMIT_").unwrap_or(&name);
        m.rlimit.push(format!("{short}={}:{}", r.soft(), r.hard()));
    }
    m.rlimit.extend(cli_rlimits);
    if let Some(caps) = p.capabilities().as_ref().and_then(|c| c.bounding().clone())
        && m.capability.is_empty()
        && m.drop_capability.is_empty()
    {
        // Exactly the bounding set: what it lists added, everything else dropped.
        // oci-spec names them without the CAP_ prefix.
        let wanted: Vec<String> = caps.iter().map(|c| format!("CAP_{c}")).collect();
        m.capability = wanted.clone();
        m.drop_capability =
            caps::all().into_iter().map(|c| c.to_string()).filter(|c| !wanted.contains(c)).collect();
    }
    if p.apparmor_profile().is_some() || p.selinux_label().is_some() {
        return Err(refuse(bundle, "process.apparmorProfile/selinuxLabel are set"));
    }
    Ok(())
}

fn mounts(m: &mut MachineArgs, spec: &Spec, bundle: &Path) -> Result<(), CliError> {
    for mount in spec.mounts().as_deref().unwrap_or(&[]) {
        let dest = mount.destination().to_string_lossy().into_owned();
        let typ = mount.typ().as_deref().unwrap_or("");
        let options = mount.options().clone().unwrap_or_default();
        if STANDARD_MOUNTS.contains(&dest.as_str()) {
            continue;
        }
        let is_bind = typ == "bind" || options.iter().any(|o| o == "bind" || o == "rbind");
        if is_bind {
            let source = mount.source().clone().unwrap_or_default();
            let source = if source.is_absolute() { source } else { bundle.join(source) };
            let recursive = if options.iter().any(|o| o == "rbind") { "rbind" } else { "norbind" };
            let value = format!("{}:{dest}:{recursive}", source.display());
            if options.iter().any(|o| o == "ro") {
                m.bind_ro.push(value);
            } else {
                m.bind.push(value);
            }
        } else if typ == "tmpfs" {
            let opts: Vec<&str> = options.iter().map(String::as_str).filter(|o| *o != "rw").collect();
            m.tmpfs.push(if opts.is_empty() { dest } else { format!("{dest}:{}", opts.join(",")) });
        } else {
            return Err(refuse(bundle, format!("mount of type '{typ}' at {dest}")));
        }
    }
    Ok(())
}

fn linux(m: &mut MachineArgs, spec: &Spec, bundle: &Path) -> Result<(), CliError> {
    let Some(l) = spec.linux() else { return Ok(()) };
    if l.seccomp().is_some() {
        return Err(refuse(bundle, "linux.seccomp is set (machines get nspawn's filter)"));
    }
    for ns in l.namespaces().as_deref().unwrap_or(&[]) {
        match (ns.typ(), ns.path()) {
            (LinuxNamespaceType::Network, None) if m.network_namespace_path.is_none() => {
                m.private_network = true
            }
            (LinuxNamespaceType::Network, Some(p)) if m.network_namespace_path.is_none() => {
                m.network_namespace_path = Some(p.clone());
            }
            (LinuxNamespaceType::User, None) if m.private_users.is_none() && !m.private_users_pick => {
                let maps = l.uid_mappings().as_deref().unwrap_or(&[]);
                m.private_users = Some(match maps {
                    [] => crate::userns::PrivateUsers::Pick,
                    [one] if one.container_id() == 0 => {
                        crate::userns::PrivateUsers::Fixed(crate::userns::IdRange {
                            start: one.host_id(),
                            count: one.size(),
                        })
                    }
                    _ => return Err(refuse(bundle, "linux.uidMappings other than one range from 0")),
                });
            }
            (_, Some(p)) => {
                return Err(refuse(bundle, format!("joining the namespace {}", p.display())));
            }
            _ => {}
        }
    }
    for p in l.masked_paths().as_deref().unwrap_or(&[]) {
        if !PROTECTED.contains(&p.as_str()) {
            m.inaccessible.push(PathBuf::from(p));
        }
    }
    if let Some(p) =
        l.readonly_paths().as_deref().unwrap_or(&[]).iter().find(|p| !PROTECTED.contains(&p.as_str()))
    {
        return Err(refuse(bundle, format!("linux.readonlyPaths has {p}")));
    }
    if let Some(r) = l.resources() {
        let cli = std::mem::take(&mut m.property);
        if let Some(limit) = r.memory().as_ref().and_then(|mem| mem.limit()) {
            m.property
                .push(format!("MemoryMax={}", if limit < 0 { "infinity".into() } else { limit.to_string() }));
        }
        if let Some(pids) = r.pids().as_ref().map(|p| p.limit()) {
            m.property
                .push(format!("TasksMax={}", if pids < 0 { "infinity".into() } else { pids.to_string() }));
        }
        if let Some(cpu) = r.cpu()
            && let (Some(quota), Some(period)) = (cpu.quota(), cpu.period())
            && quota > 0
            && period > 0
        {
            m.property.push(format!("CPUQuota={}%", quota.unsigned_abs() * 100 / period));
        }
        m.property.extend(cli);
    }
    Ok(())
}
