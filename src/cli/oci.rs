//! OCI image verbs: pull-oci, import-oci, export-oci, push-oci, prune-cache, oci-bundle; the
//! OCI lines of image-status; and what `run -M IMAGE` without a command takes from an OCI
//! image's configuration.

use std::collections::HashSet;
use std::io::IsTerminal;

use crate::images::ImageStore;
use crate::images::oci::blobs::BlobStore;
use crate::images::oci::layout::{self, ImportOptions};
use crate::images::oci::manifest::Platform;
use crate::images::oci::meta;
use crate::images::oci::pull::{self, OciPullOptions};
use crate::images::oci::push::{self, PushOptions};
use crate::images::oci::registry::RegistryOptions;
use crate::images::oci::{OciError, auth, bundle};

use super::args::{
    ExportOciArgs, ImportOciArgs, MachineArgs, OciBundleArgs, PullOciArgs, PushOciArgs, RegistryArgs, Toggle,
};
use super::images::{catch_signals, interrupted, need_root, store};
use super::output::bytes;
use super::output::emit;
use super::{CliConfig, CliError};

/// An OCI failure for the user: an interruption keeps its exit status.
pub(super) fn oci_err(verb: &str, e: OciError) -> CliError {
    match e.interrupted() {
        Some(i) => interrupted(i),
        None => CliError::new(format!("{verb} failed: {e}")),
    }
}

fn platform(p: Option<&str>) -> Result<Platform, CliError> {
    match p {
        Some(p) => Platform::parse(p).map_err(CliError::new),
        None => Ok(Platform::host()),
    }
}

fn registry_options(a: &RegistryArgs) -> RegistryOptions {
    RegistryOptions {
        tls_verify: a.tls_verify == Toggle::Yes,
        auth_files: match &a.authfile {
            Some(f) => vec![f.clone()],
            None => auth::default_auth_files(),
        },
    }
}

/// `mctl pull-oci`.
pub fn pull_oci(a: &PullOciArgs, cfg: &CliConfig) -> Result<i32, CliError> {
    need_root("pull-oci")?;
    catch_signals()?;
    let opts = OciPullOptions {
        registry: registry_options(&a.registry),
        platform: platform(a.platform.as_deref())?,
        platform_required: a.platform.is_some(),
        cache: cfg.pull_cache.clone(),
        progress: std::io::stderr().is_terminal(),
        jobs: a.jobs,
    };
    let s = store(cfg);
    let info =
        pull::pull_oci(&s, &a.reference, a.name.as_deref(), &opts).map_err(|e| oci_err("pull-oci", e))?;
    if a.read_only {
        s.set_read_only(&info.name, true).map_err(|e| CliError::new(e.to_string()))?;
    }
    tracing::info!("pulled image '{}' to {}", info.name, info.path.display());
    Ok(0)
}

/// `mctl import-oci`.
pub fn import_oci(a: &ImportOciArgs, cfg: &CliConfig) -> Result<i32, CliError> {
    need_root("import-oci")?;
    catch_signals()?;
    let opts = ImportOptions {
        cache: cfg.pull_cache.clone(),
        reference: a.reference.clone(),
        platform: platform(a.platform.as_deref())?,
    };
    let s = store(cfg);
    let info =
        layout::import_oci(&s, &a.path, a.name.as_deref(), &opts).map_err(|e| oci_err("import-oci", e))?;
    if a.read_only {
        s.set_read_only(&info.name, true).map_err(|e| CliError::new(e.to_string()))?;
    }
    tracing::info!("imported image '{}' at {}", info.name, info.path.display());
    Ok(0)
}

/// `mctl export-oci`.
pub fn export_oci(a: &ExportOciArgs, cfg: &CliConfig) -> Result<i32, CliError> {
    catch_signals()?;
    let d = layout::export_oci(&store(cfg), &a.name, &a.path, &a.reference, &cfg.pull_cache)
        .map_err(|e| oci_err("export-oci", e))?;
    tracing::info!("exported image '{}' to {} (manifest {d})", a.name, a.path.display());
    Ok(0)
}

/// `mctl push-oci`.
pub fn push_oci(a: &PushOciArgs, cfg: &CliConfig) -> Result<i32, CliError> {
    catch_signals()?;
    let opts = PushOptions {
        registry: registry_options(&a.registry),
        cache: cfg.pull_cache.clone(),
        progress: std::io::stderr().is_terminal(),
    };
    let p = push::push_oci(&store(cfg), &a.image, &a.reference, &opts).map_err(|e| oci_err("push-oci", e))?;
    tracing::info!(
        "pushed {} as {} ({} blobs uploaded, {} already there)",
        a.image,
        a.reference,
        p.uploaded,
        p.skipped
    );
    emit(&format!("{}\n", p.digest));
    Ok(0)
}

/// `mctl prune-cache`: removes the blobs no image of the store uses, and partial downloads.
pub fn prune_cache(cfg: &CliConfig) -> Result<i32, CliError> {
    need_root("prune-cache")?;
    let s = store(cfg);
    let blobs = BlobStore::open(&cfg.pull_cache).map_err(|e| oci_err("prune-cache", e))?;
    let mut used: HashSet<String> = HashSet::new();
    for (_, m) in meta::all(&s).map_err(|e| oci_err("prune-cache", e))? {
        used.insert(m.config.digest.to_string());
        used.extend(m.layers.iter().map(|l| l.digest.to_string()));
        used.extend(m.manifest_digest.iter().map(|d| d.to_string()));
    }
    let (mut n, mut freed) = (0, 0);
    for d in blobs.list().map_err(|e| oci_err("prune-cache", e))? {
        if !used.contains(d.as_str()) {
            freed += blobs.remove(&d).map_err(|e| oci_err("prune-cache", e))?;
            n += 1;
        }
    }
    freed += blobs.remove_partials().map_err(|e| oci_err("prune-cache", e))?;
    tracing::info!("removed {n} blobs, {} freed", bytes(freed));
    Ok(0)
}

/// `mctl oci-bundle`.
pub fn oci_bundle(a: &OciBundleArgs, cfg: &CliConfig) -> Result<i32, CliError> {
    need_root("oci-bundle")?;
    catch_signals()?;
    bundle::write_bundle(&store(cfg), &a.name, &a.dir).map_err(|e| oci_err("oci-bundle", e))?;
    Ok(0)
}

/// The OCI lines of `image-status` (none for an image without an OCI record).
pub fn status_lines(s: &ImageStore, name: &str) -> String {
    let m = match meta::load(s, name) {
        Ok(Some(m)) => m,
        Ok(None) => return String::new(),
        Err(e) => return format!("\t     OCI: {e}\n"),
    };
    let mut out = format!("\t  Source: {}\n", m.source);
    if let Some(d) = &m.manifest_digest {
        out.push_str(&format!("\tManifest: {d}\n"));
    }
    out.push_str(&format!("\t  Config: {}\n", m.config.digest));
    out.push_str(&format!("\t  Layers: {}\n", m.layers.len()));
    let c = match m.image_config() {
        Ok(c) => c,
        Err(e) => return out + &format!("\t     OCI: {e}\n"),
    };
    out.push_str(&format!("\tPlatform: {}/{}\n", c.os(), c.architecture()));
    let quote = |v: &[String]| v.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(" ");
    if let Some(cfg) = c.config() {
        if let Some(e) = cfg.entrypoint().as_ref().filter(|v| !v.is_empty()) {
            out.push_str(&format!("\tEntrypoint: {}\n", quote(e)));
        }
        if let Some(e) = cfg.cmd().as_ref().filter(|v| !v.is_empty()) {
            out.push_str(&format!("\t     Cmd: {}\n", quote(e)));
        }
        for e in cfg.env().iter().flatten() {
            out.push_str(&format!("\t     Env: {e}\n"));
        }
        if let Some(w) = cfg.working_dir().as_ref().filter(|w| !w.is_empty()) {
            out.push_str(&format!("\tWorkingDir: {w}\n"));
        }
        if let Some(u) = cfg.user().as_ref().filter(|u| !u.is_empty()) {
            out.push_str(&format!("\t    User: {u}\n"));
        }
        if let Some(p) = cfg.exposed_ports().as_ref().filter(|p| !p.is_empty()) {
            out.push_str(&format!("\t   Ports: {}\n", p.join(" ")));
        }
        let mut labels: Vec<_> = cfg.labels().iter().flatten().collect();
        labels.sort();
        for (k, v) in labels {
            out.push_str(&format!("\t   Label: {k}={v}\n"));
        }
    }
    out
}

/// `mctl run -M IMAGE` without a command: the OCI image's entrypoint and command, its
/// environment (under the -E options), working directory and user (unless given).
pub fn fill_from_image(m: &mut MachineArgs, argv: &mut Vec<String>, cfg: &CliConfig) -> Result<(), CliError> {
    let no_command =
        || CliError::new("no command given (and no OCI image given with -M whose configuration has one)");
    let (None, None, Some(name)) = (&m.directory, &m.image, &m.machine) else { return Err(no_command()) };
    let record =
        meta::load(&store(cfg), name).map_err(|e| CliError::new(e.to_string()))?.ok_or_else(no_command)?;
    let run = record.run_config().map_err(|e| CliError::new(e.to_string()))?;
    if run.argv.is_empty() {
        return Err(CliError::new(format!(
            "image {name} has neither Entrypoint nor Cmd in its configuration: give a command"
        )));
    }
    *argv = run.argv;
    let mut env: Vec<String> = Vec::new();
    for (k, v) in run.env {
        // What the launcher cannot pass is left out, with a word.
        if crate::launcher::spec::parse_setenv(&format!("{k}={v}")).is_ok() {
            env.push(format!("{k}={v}"));
        } else {
            tracing::warn!("image {name}: leaving out the environment variable '{k}' (not a valid name)");
        }
    }
    // The -E options come after, so they win.
    env.append(&mut m.setenv);
    m.setenv = env;
    if m.chdir.is_none() {
        m.chdir = run.workdir.map(Into::into);
    }
    if m.user.is_none()
        && let Some(u) = run.user
    {
        let (user, group) = u.split_once(':').map_or((u.as_str(), None), |(a, b)| (a, Some(b)));
        if let Some(g) = group {
            tracing::warn!(
                "image {name}: running as user {user} with its own groups (the group {g} of User={u} is not applied)"
            );
        }
        m.user = Some(user.to_owned());
    }
    Ok(())
}
