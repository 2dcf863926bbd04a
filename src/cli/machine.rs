//! `mctl boot` and `mctl run`: turn options into a [`LaunchSpec`] and launch it.

use std::io::IsTerminal;
use std::path::PathBuf;

use crate::cgroups::CgroupConfig;
use crate::cgroups::resources::Property;
use crate::launcher::attributes::{
    PayloadAttributes, Personality, Rlimit, parse_cpu_affinity, parse_oom_score_adjust,
};
use crate::launcher::security::{CapabilityAdjust, parse_caps};
use crate::launcher::spec::{self, ConsoleMode, LaunchSpec, Payload};
use crate::names::{self, MachineName};
use crate::network::{self, NetworkMode, NetworkSpec};
use crate::signals::SignalNumber;

use super::args::{BootArgs, MachineArgs, RunArgs, YesNo};
use super::{CliConfig, CliError};

/// `mctl boot`.
pub fn boot(a: BootArgs, cfg: &CliConfig) -> Result<i32, CliError> {
    let (mut machine, mut args) = (a.machine, a.init_args);
    if let Some(list) = capability_help(&machine).or_else(|| mode_help(&machine)) {
        super::output::emit(&list);
        return Ok(0);
    }
    if machine.oci_bundle.is_some() {
        super::oci_bundle::apply(&mut machine, None)?;
    } else {
        populate_from_template(&machine, cfg)?;
        super::settings::apply(&mut machine, &mut args, None, cfg)?;
    }
    let spec = build_spec(machine, Payload::Boot { args }, cfg)?;
    Ok(crate::launcher::launch(&spec)?)
}

/// `mctl run`.
pub fn run(a: RunArgs, cfg: &CliConfig) -> Result<i32, CliError> {
    let (mut machine, mut argv, mut as_pid2) = (a.machine, a.command, a.as_pid2);
    if let Some(list) = capability_help(&machine).or_else(|| mode_help(&machine)) {
        super::output::emit(&list);
        return Ok(0);
    }
    if machine.oci_bundle.is_some() {
        super::oci_bundle::apply(&mut machine, Some(&mut argv))?;
    } else {
        populate_from_template(&machine, cfg)?;
        super::settings::apply(&mut machine, &mut argv, Some(&mut as_pid2), cfg)?;
    }
    if argv.is_empty() {
        // No command: an OCI image's own (entrypoint, env, working directory, user).
        super::oci::fill_from_image(&mut machine, &mut argv, cfg)?;
    }
    let spec = build_spec(machine, Payload::Command { argv, as_pid2 }, cfg)?;
    if as_pid2 {
        // The reaper stays in the machine for its whole life; it must not map the host's binary.
        crate::sys::linux::ensure_running_from_sealed_copy()
            .map_err(|e| CliError::new(format!("cannot run from a sealed copy of mctl: {e}")))?;
    }
    Ok(crate::launcher::launch(&spec)?)
}

/// The directory of image `name` in the store. A store entry that is a symlink is refused, as
/// the image commands refuse it: following it would make `dev`, `proc`, `run`, `sys` and `tmp`
/// wherever it points.
fn store_image_dir(store: &std::path::Path, name: &str) -> Result<PathBuf, CliError> {
    let path = store.join(name);
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_symlink() => Err(CliError::new(format!(
            "image {name} ({}) is a symlink: only directories in the image store are images \
             (boot a directory elsewhere with -D DIR)",
            path.display()
        ))),
        Ok(m) if !m.is_dir() => {
            Err(CliError::new(format!("image {name} ({}) is not a directory", path.display())))
        }
        Ok(_) => Ok(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(CliError::new(format!(
            "no image {name} in {} (see mctl list-images, or give a directory with -D DIR)",
            store.display()
        ))),
        Err(e) => Err(CliError::new(format!("cannot inspect {}: {e}", path.display()))),
    }
}

fn bad(e: impl std::fmt::Display) -> CliError {
    CliError::new(e.to_string())
}

/// `--pivot-root=NEW[:OLD]` (nspawn's choice of one of several bootable trees in an image, e.g.
/// OSTree deployments): the machine's root is NEW inside the tree, resolved there so that the
/// tree's links cannot lead out of it, with the whole tree mounted at OLD if given.
fn pivot_root(
    root: PathBuf,
    arg: &str,
    read_only: bool,
) -> Result<(PathBuf, Option<spec::BindMount>), CliError> {
    let (new, old) = match arg.split_once(':') {
        Some((n, o)) => (n, Some(o)),
        None => (arg, None),
    };
    let absolute = |p: &str| p.starts_with('/') && !p.split('/').any(|c| c == "..");
    if !absolute(new) || old.is_some_and(|o| !absolute(o)) {
        return Err(CliError::new(format!(
            "Failed to parse --pivot-root= argument {arg}: Invalid argument (expected NEW[:OLD], absolute paths in the machine)"
        )));
    }
    let inside = |base: &std::path::Path, path: &str| -> Result<PathBuf, CliError> {
        let missing = |e: std::io::Error| {
            CliError::new(format!("--pivot-root: {path} cannot be used in {}: {e}", base.display()))
        };
        let dir = std::fs::File::open(base).map_err(missing)?;
        let fd = crate::sys::linux::open_in_root(
            std::os::fd::AsFd::as_fd(&dir),
            std::path::Path::new(path),
            libc::O_PATH | libc::O_DIRECTORY,
        )
        .map_err(missing)?;
        std::fs::read_link(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd))).map_err(missing)
    };
    let new_root = inside(&root, new)?;
    let old_root = match old {
        Some(o) => {
            inside(&new_root, o)?;
            Some(spec::BindMount {
                source: root.clone(),
                dest: PathBuf::from(o),
                read_only,
                recursive: false,
                idmap: false,
            })
        }
        None => None,
    };
    Ok((new_root, old_root))
}

/// `--template`: a root directory that does not exist yet becomes a copy of the template. The
/// copy is made beside it and renamed into place, so a failed one leaves nothing behind.
fn populate_from_template(m: &MachineArgs, cfg: &CliConfig) -> Result<(), CliError> {
    let Some(template) = &m.template else { return Ok(()) };
    if m.image.is_some() {
        return Err(CliError::new("--template= may not be combined with -i/--image= (as in nspawn)"));
    }
    if m.ephemeral {
        return Err(CliError::new("--ephemeral and --template= may not be combined"));
    }
    let dir = match (&m.directory, &m.machine) {
        (Some(d), _) => d.clone(),
        (None, Some(n)) => {
            MachineName::new(n).map_err(|e| CliError::new(format!("invalid machine name '{n}': {e}")))?;
            cfg.image_store.join(n)
        }
        (None, None) => return Err(CliError::new("--template= needs -D DIR or -M NAME to populate")),
    };
    let source = std::fs::canonicalize(template)
        .map_err(|e| CliError::new(format!("cannot use the template {}: {e}", template.display())))?;
    if !source.is_dir() {
        return Err(CliError::new(format!("the template {} is not a directory", template.display())));
    }
    if std::fs::symlink_metadata(&dir).is_ok() {
        if !m.quiet {
            eprintln!("Directory {} already exists, not populating from template.", dir.display());
        }
        return Ok(());
    }
    let dir = std::path::absolute(&dir).map_err(|e| CliError::new(format!("{}: {e}", dir.display())))?;
    let (Some(parent), Some(base)) = (dir.parent(), dir.file_name()) else {
        return Err(CliError::new(format!("{} cannot be made from a template", dir.display())));
    };
    let staging = parent.join(format!(".#{}.mctl-template-{}", base.to_string_lossy(), std::process::id()));
    // As nspawn: the parent directory must exist.
    let copied = std::fs::create_dir(&staging)
        .map_err(|e| CliError::new(format!("cannot populate {} from the template: {e}", dir.display())))
        .and_then(|()| {
            crate::images::store::copy_tree(&source, &staging).map_err(|e| {
                CliError::new(format!(
                    "cannot copy the template {} to {}: {e}",
                    source.display(),
                    dir.display()
                ))
            })
        })
        .and_then(|()| {
            std::fs::rename(&staging, &dir)
                .map_err(|e| CliError::new(format!("cannot move the copy to {}: {e}", dir.display())))
        });
    if copied.is_err() {
        let _ = crate::guestfs::remove_tree(&staging);
    }
    copied
}

/// Validates the options and resolves defaults into a [`LaunchSpec`].
pub fn build_spec(m: MachineArgs, payload: Payload, cfg: &CliConfig) -> Result<LaunchSpec, CliError> {
    let (root, name) = root_and_name(&m, cfg)?;
    verity_options(&m)?;
    if m.image.is_some() && m.pivot_root.is_some() {
        return Err(CliError::new("--pivot-root= cannot be combined with -i/--image= yet"));
    }
    let (root, old_root) = match &m.pivot_root {
        Some(arg) => pivot_root(root, arg, m.read_only)?,
        None => (root, None),
    };
    if old_root.is_some() && (m.private_users.is_some() || m.private_users_pick) {
        return Err(CliError::new(
            "--pivot-root with a place for the old root cannot be combined with a user namespace yet",
        ));
    }
    if let Some(h) = &m.hostname {
        names::validate(h).map_err(|e| CliError::new(format!("invalid hostname '{h}': {e}")))?;
    }
    let mut mounts = Mounts::parse(&m)?;
    mounts.binds.extend(old_root);
    let env = m.setenv.iter().map(|e| spec::parse_setenv(e)).collect::<Result<Vec<_>, _>>().map_err(bad)?;
    let (capabilities, syscall_filter) = privileges(&m)?;
    let attributes = attributes(&m)?;
    let credentials = credentials(&m)?;
    let kill_signal = m.kill_signal.as_deref().map(str::parse::<SignalNumber>).transpose().map_err(bad)?;
    let resolv_conf =
        m.resolv_conf.as_deref().map(str::parse).transpose().map_err(CliError::new)?.unwrap_or_default();
    let timezone =
        m.timezone.as_deref().map(str::parse).transpose().map_err(CliError::new)?.unwrap_or_default();
    // -j and --link-journal: the later one counts in nspawn; clap cannot tell, so -j yields to
    // an explicit mode.
    let link_journal = match (&m.link_journal, m.j) {
        (Some(mode), _) => mode.parse().map_err(CliError::new)?,
        (None, true) => crate::launcher::journal::LinkJournal::Guest { try_: true },
        (None, false) => Default::default(),
    };
    if let Some(p) = m.inaccessible.iter().find(|p| !p.is_absolute() || *p == std::path::Path::new("/")) {
        return Err(CliError::new(format!(
            "--inaccessible '{}' must be an absolute path below /",
            p.display()
        )));
    }
    if let Some(d) = &m.chdir
        && !d.is_absolute()
    {
        return Err(CliError::new(format!("--chdir '{}' must be an absolute path", d.display())));
    }
    let network = network_spec(&m, cfg)?;
    let boot = matches!(payload, Payload::Boot { .. });
    if boot && !capabilities.ambient.is_empty() {
        return Err(CliError::new(
            "--ambient-capability cannot be used with boot (as in nspawn): init starts as root",
        ));
    }
    if boot && m.user.is_some() {
        return Err(CliError::new("--user cannot be used with boot: init must run as root"));
    }
    let console = match (m.console, m.pipe) {
        (Some(c), _) => c,
        (None, true) => ConsoleMode::Pipe,
        (None, false) => default_console(boot),
    };
    // -U is pick, unless --private-users says otherwise (nspawn's rule).
    let private_users = match (m.private_users, m.private_users_pick) {
        (Some(p), _) => p,
        (None, true) => crate::userns::PrivateUsers::Pick,
        (None, false) => crate::userns::PrivateUsers::No,
    };
    let private_users_ownership = m.private_users_ownership.unwrap_or_default();
    let slice = slice(&m)?;
    let bind_users = bind_users(&m, &root, private_users.enabled())?;
    mounts.binds.extend(bind_users.iter().map(|u| spec::BindMount {
        source: u.home.clone(),
        dest: u.home_inside(),
        read_only: false,
        recursive: true,
        idmap: false,
    }));
    if !private_users.enabled()
        && let Some(b) = mounts.binds.iter().find(|b| b.idmap)
    {
        return Err(CliError::new(format!(
            "--bind {}: idmap needs a user namespace (--private-users or -U)",
            b.source.display()
        )));
    }
    Ok(LaunchSpec {
        link_journal,
        resolv_conf,
        timezone,
        image: m.image.is_some().then(|| root.clone()),
        root,
        name,
        hostname: m.hostname,
        uuid: m.uuid,
        payload,
        binds: mounts.binds,
        tmpfs: mounts.tmpfs,
        env,
        chdir: m.chdir,
        user: m.user,
        read_only: m.read_only,
        ephemeral: m.ephemeral,
        volatile: m.volatile.unwrap_or_default(),
        overlays: mounts.overlays,
        runtime_dir: cfg.runtime_dir.clone(),
        state_dir: cfg.state_dir.clone(),
        capabilities,
        syscall_filter,
        kill_signal,
        keep_unit: m.keep_unit,
        quiet: m.quiet,
        console,
        notify_ready: m.notify_ready == YesNo::Yes,
        cgroup: CgroupConfig { slice, ..CgroupConfig::default() },
        register: m.register,
        network,
        private_users,
        private_users_ownership,
        no_new_privileges: m.no_new_privileges == Some(YesNo::Yes),
        resources: resources(&m.property)?,
        attributes,
        inaccessible: m.inaccessible.clone(),
        credentials,
        bind_users,
    })
}

/// The machine's root directory (`-D`, or the image `-M` names) and its name before `-x` makes
/// it unique (`-M`, or derived from the directory): also the name its settings file has.
pub(super) fn root_and_base_name(
    m: &MachineArgs,
    cfg: &CliConfig,
) -> Result<(PathBuf, MachineName), CliError> {
    let given_name = m
        .machine
        .as_deref()
        .map(|n| MachineName::new(n).map_err(|e| CliError::new(format!("invalid machine name '{n}': {e}"))))
        .transpose()?;
    if let Some(image) = &m.image {
        return image_and_name(image, m, given_name);
    }
    let dir = match (&m.directory, &given_name) {
        (Some(d), _) => d.clone(),
        (None, Some(n)) => store_image_dir(&cfg.image_store, n.as_str())?,
        (None, None) => {
            return Err(CliError::new(
                "no machine given: use -D DIR (a root directory) or -M NAME (an image)",
            ));
        }
    };
    let root = std::fs::canonicalize(&dir)
        .map_err(|e| CliError::new(format!("directory {} cannot be used: {e}", dir.display())))?;
    if !root.is_dir() {
        return Err(CliError::new(format!("{} is not a directory", dir.display())));
    }
    let name = match given_name {
        Some(n) => n,
        None => {
            let base = root.file_name().map(|b| b.to_string_lossy().into_owned()).unwrap_or_default();
            MachineName::from_dir_name(&base).ok_or_else(|| {
                CliError::new(format!(
                    "cannot derive a machine name from directory '{base}'; give one with -M NAME"
                ))
            })?
        }
    };
    Ok((root, name))
}

/// `-i`: the disk image (canonical) and the machine's name, `-M` or the image's file name without
/// its suffix (nspawn's `disk.raw` -> `disk`).
fn image_and_name(
    image: &std::path::Path,
    m: &MachineArgs,
    given_name: Option<MachineName>,
) -> Result<(PathBuf, MachineName), CliError> {
    if m.directory.is_some() {
        return Err(CliError::new(
            "-D/--directory= and -i/--image= cannot be combined (as in nspawn): give either a directory \
             tree or a disk image",
        ));
    }
    let path = std::fs::canonicalize(image)
        .map_err(|e| CliError::new(format!("disk image {} cannot be used: {e}", image.display())))?;
    let kind = std::fs::metadata(&path)
        .map_err(|e| CliError::new(format!("disk image {} cannot be used: {e}", image.display())))?
        .file_type();
    if !kind.is_file() && !std::os::unix::fs::FileTypeExt::is_block_device(&kind) {
        return Err(CliError::new(format!(
            "{} is not a regular file or block device: -i takes a disk image (-D takes a directory)",
            image.display()
        )));
    }
    let name = match given_name {
        Some(n) => n,
        None => {
            let base = crate::images::disk::base_name(&path).unwrap_or_default();
            MachineName::from_dir_name(&base).ok_or_else(|| {
                CliError::new(format!(
                    "cannot derive a machine name from disk image '{}'; give one with -M NAME",
                    image.display()
                ))
            })?
        }
    };
    Ok((path, name))
}

/// nspawn's `--root-hash=`, `--root-hash-sig=` and `--verity-data=`: checked as nspawn parses
/// them, then refused, naming why: mctl sets up no dm-verity device (and where the kernel has no
/// dm-verity, nothing could).
fn verity_options(m: &MachineArgs) -> Result<(), CliError> {
    if m.root_hash.is_none() && m.root_hash_sig.is_none() && m.verity_data.is_none() {
        return Ok(());
    }
    if let Some(h) = &m.root_hash {
        let bytes =
            hex::decode(h).map_err(|e| CliError::new(format!("Failed to parse root hash: {h}: {e}")))?;
        if bytes.len() < 16 {
            return Err(CliError::new(format!("Root hash must be at least 128bit long: {h}")));
        }
    }
    if let Some(s) = &m.root_hash_sig {
        match s.strip_prefix("base64:") {
            Some(data) => {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .map_err(|e| CliError::new(format!("Failed to parse root hash signature '{s}': {e}")))?;
            }
            None => {
                std::fs::metadata(s).map_err(|e| {
                    CliError::new(format!("Failed to read root hash signature file '{s}': {e}"))
                })?;
            }
        }
    }
    if m.image.is_none() {
        return Err(CliError::new(
            "--root-hash=, --root-hash-sig= and --verity-data= apply to a disk image: give one with -i",
        ));
    }
    let why = crate::images::disk::verity_unavailable()
        .unwrap_or_else(|| "mctl does not set up dm-verity devices yet".to_owned());
    Err(CliError::new(format!(
        "--root-hash=, --root-hash-sig= and --verity-data= need dm-verity, which cannot be used here: {why}"
    )))
}

/// [`root_and_base_name`], with the fresh name `-x` gives a machine of an image (no `-D`) or of a
/// directory without `-M`.
fn root_and_name(m: &MachineArgs, cfg: &CliConfig) -> Result<(PathBuf, MachineName), CliError> {
    let (root, base) = root_and_base_name(m, cfg)?;
    if !(m.ephemeral && (m.machine.is_none() || m.directory.is_none())) {
        return Ok((root, base));
    }
    let base = MachineName::from_dir_name(base.as_str()).unwrap_or(base);
    Ok((root, ephemeral_name(&base)?))
}

/// `--bind`, `--bind-ro`, `--overlay`, `--overlay-ro`, `--tmpfs`.
struct Mounts {
    binds: Vec<spec::BindMount>,
    overlays: Vec<spec::OverlayMount>,
    tmpfs: Vec<spec::TmpfsMount>,
}

impl Mounts {
    fn parse(m: &MachineArgs) -> Result<Mounts, CliError> {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        let mut binds = Vec::new();
        for b in &m.bind {
            binds.push(spec::parse_bind(b, false, &cwd).map_err(bad)?);
        }
        for b in &m.bind_ro {
            binds.push(spec::parse_bind(b, true, &cwd).map_err(bad)?);
        }
        let mut overlays = Vec::new();
        for o in &m.overlay {
            overlays.push(spec::parse_overlay(o, false).map_err(bad)?);
        }
        for o in &m.overlay_ro {
            overlays.push(spec::parse_overlay(o, true).map_err(bad)?);
        }
        let tmpfs =
            m.tmpfs.iter().map(|t| spec::parse_tmpfs(t)).collect::<Result<Vec<_>, _>>().map_err(bad)?;
        Ok(Mounts { binds, overlays, tmpfs })
    }
}

/// `--bind-user`: the users resolved on the host, their machine ids chosen against the tree.
fn bind_users(
    m: &MachineArgs,
    root: &std::path::Path,
    userns: bool,
) -> Result<Vec<crate::launcher::bind_user::BoundUser>, CliError> {
    use crate::launcher::bind_user::{BindUserError, resolve};
    if m.bind_user.is_empty() {
        return Ok(Vec::new());
    }
    if !userns {
        return Err(bad(BindUserError::NoUserNamespace));
    }
    if m.image.is_some() {
        // The machine's /etc/passwd is inside the image, mounted only by the launcher.
        return Err(CliError::new("--bind-user cannot be combined with -i/--image yet"));
    }
    resolve(&m.bind_user, root).map_err(bad)
}

/// `-S/--slice`, with nspawn's warnings: a name that had to be mangled, no effect with
/// `--keep-unit`.
fn slice(m: &MachineArgs) -> Result<Option<crate::cgroups::Slice>, CliError> {
    let Some(given) = &m.slice else { return Ok(None) };
    let slice = crate::cgroups::Slice::parse(given).map_err(bad)?;
    if slice.mangled(given) {
        tracing::warn!(
            "invalid unit name \"{given}\" escaped as \"{slice}\" (maybe you should use systemd-escape?)"
        );
    }
    if m.keep_unit {
        tracing::warn!("--slice has no effect with --keep-unit: the machine stays in mctl's unit");
        return Ok(None);
    }
    Ok(Some(slice))
}

/// `--set-credential`, `--load-credential` (files read now, as root, on the host).
fn credentials(m: &MachineArgs) -> Result<Vec<crate::launcher::credentials::Credential>, CliError> {
    use crate::launcher::credentials::{check_unique, parse_load, parse_set};
    let mut out = Vec::new();
    for c in &m.set_credential {
        out.push(parse_set(c).map_err(bad)?);
    }
    for c in &m.load_credential {
        out.push(parse_load(c).map_err(bad)?);
    }
    check_unique(&out).map_err(bad)?;
    Ok(out)
}

/// `--rlimit`, `--oom-score-adjust`, `--cpu-affinity`, `--personality`.
fn attributes(m: &MachineArgs) -> Result<PayloadAttributes, CliError> {
    Ok(PayloadAttributes {
        rlimits: m.rlimit.iter().map(|r| Rlimit::parse(r)).collect::<Result<_, _>>().map_err(bad)?,
        oom_score_adjust: m
            .oom_score_adjust
            .as_deref()
            .map(parse_oom_score_adjust)
            .transpose()
            .map_err(bad)?,
        cpu_affinity: m.cpu_affinity.as_deref().map(parse_cpu_affinity).transpose().map_err(bad)?,
        personality: m.personality.as_deref().map(Personality::parse).transpose().map_err(bad)?,
    })
}

/// `--resolv-conf=help`, `--timezone=help`: nspawn prints the modes.
pub fn mode_help(m: &MachineArgs) -> Option<String> {
    if m.resolv_conf.as_deref() == Some("help") {
        return Some(crate::launcher::host_etc::ResolvConf::names().join("\n") + "\n");
    }
    (m.timezone.as_deref() == Some("help"))
        .then(|| crate::launcher::host_etc::Timezone::NAMES.join("\n") + "\n")
}

/// `--capability=help` (and the same for the other capability options): nspawn prints the
/// capability names it knows.
pub fn capability_help(m: &MachineArgs) -> Option<String> {
    let asked =
        m.capability.iter().chain(&m.drop_capability).chain(&m.ambient_capability).any(|c| c == "help");
    asked.then(|| {
        let mut names: Vec<String> = caps::all().iter().map(|c| c.to_string().to_ascii_lowercase()).collect();
        names.sort();
        names.join("\n") + "\n"
    })
}

/// `--property`: later assignments of a setting replace earlier ones.
pub fn resources(assignments: &[String]) -> Result<Vec<Property>, CliError> {
    let mut out: Vec<Property> = Vec::new();
    for a in assignments {
        let p = Property::parse(a).map_err(|e| CliError::new(format!("--property: {e}")))?;
        out.retain(|q| !q.same_setting(&p));
        out.push(p);
    }
    Ok(out)
}

/// `--capability`, `--drop-capability`, `--system-call-filter`.
fn privileges(m: &MachineArgs) -> Result<(CapabilityAdjust, crate::seccomp::FilterChanges), CliError> {
    let mut capabilities = CapabilityAdjust::default();
    let parse = |option: &str, list: &str| {
        parse_caps(list).map_err(|e| CliError::new(format!("invalid {option} '{list}': {e}")))
    };
    for c in &m.capability {
        capabilities.add.extend(parse("--capability", c)?);
    }
    for c in &m.drop_capability {
        capabilities.drop.extend(parse("--drop-capability", c)?);
    }
    for c in &m.ambient_capability {
        capabilities.ambient.extend(parse("--ambient-capability", c)?);
    }
    let mut syscall_filter = crate::seccomp::FilterChanges {
        suppress_sync: m.suppress_sync == Some(super::args::Toggle::Yes),
        ..Default::default()
    };
    for f in &m.system_call_filter {
        syscall_filter
            .add_option(f)
            .map_err(|e| CliError::new(format!("invalid --system-call-filter '{f}': {e}")))?;
    }
    Ok((capabilities, syscall_filter))
}

/// The network options as a [`NetworkSpec`]; one mode at most.
fn network_spec(m: &MachineArgs, cfg: &CliConfig) -> Result<NetworkSpec, CliError> {
    let mut modes = Vec::new();
    if m.private_network {
        modes.push(("--private-network", NetworkMode::Private));
    }
    if m.network_veth {
        modes.push(("--network-veth", NetworkMode::Veth));
    }
    if let Some(b) = &m.network_bridge {
        modes.push(("--network-bridge", NetworkMode::Bridge(b.clone())));
    }
    if let Some(z) = &m.network_zone {
        modes.push(("--network-zone", NetworkMode::Zone(z.clone())));
    }
    if let Some(p) = &m.network_namespace_path {
        modes.push(("--network-namespace-path", NetworkMode::NamespacePath(p.clone())));
    }
    if modes.len() > 1 {
        let names: Vec<&str> = modes.iter().map(|(n, _)| *n).collect();
        return Err(CliError::new(format!("{} cannot be combined: choose one", names.join(" and "))));
    }
    let mode = modes.pop().map(|(_, m)| m).unwrap_or(NetworkMode::Host);
    let mut spec = NetworkSpec::new(mode);
    spec.state_dir = cfg.runtime_dir.join("network");
    spec.interfaces = m.network_interface.clone();
    spec.macvlan = m.network_macvlan.clone();
    spec.ipvlan = m.network_ipvlan.clone();
    for v in &m.network_veth_extra {
        spec.veth_extra.push(network::spec::parse_veth_extra(v).map_err(bad)?);
    }
    if let Some(a) = &m.address {
        spec.address = Some(a.parse().map_err(|_| {
            CliError::new(format!(
                "invalid --address '{a}': expected an IPv4 address with a prefix length, e.g. 10.213.7.2/24"
            ))
        })?);
    }
    if let Some(g) = &m.gateway {
        spec.gateway = Some(
            g.parse()
                .map_err(|_| CliError::new(format!("invalid --gateway '{g}': expected an IPv4 address")))?,
        );
    }
    if let Some(p) = &m.address_pool {
        spec.pool = p.parse().map_err(|_| {
            CliError::new(format!("invalid address pool '{p}': expected an IPv4 network, e.g. 10.213.0.0/16"))
        })?;
    }
    for p in &m.port {
        spec.ports.push(network::parse_port(p).map_err(bad)?);
    }
    spec.validate().map_err(bad)?;
    Ok(spec)
}

/// An ephemeral machine's name: the image's plus a random suffix, so that many machines of one
/// image can run at once.
fn ephemeral_name(base: &MachineName) -> Result<MachineName, CliError> {
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..16];
    let mut b = base.as_str().to_owned();
    b.truncate(crate::names::NAME_MAX - 17);
    let b = b.trim_end_matches(['-', '.']);
    MachineName::new(&format!("{b}-{suffix}"))
        .map_err(|e| CliError::new(format!("invalid machine name: {e}")))
}

/// nspawn's default: interactive on a terminal; otherwise the console is shown read-only for
/// a boot, and a command simply gets the launcher's stdio.
fn default_console(boot: bool) -> ConsoleMode {
    if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
        ConsoleMode::Interactive
    } else if boot {
        ConsoleMode::ReadOnly
    } else {
        ConsoleMode::Pipe
    }
}
