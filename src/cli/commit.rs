//! `mctl commit MACHINE IMAGE`: a new image from a running machine's root filesystem. The
//! machine is frozen while its tree is copied, so the copy is consistent; an ephemeral
//! machine's root is its overlay, so its merged view is what gets committed.
//!
//! The root is taken as a detached clone of the machine's root mount alone (made inside the
//! machine's mount namespace and passed back as a file descriptor), so neither the API
//! filesystems nor bind mounts on top of the tree end up in the image.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use crate::bus::OWN_NAME;
use crate::bus::client::system_bus;
use crate::bus::proxy::{self, Manager1Proxy, MctlManager1Proxy};
use crate::images::interrupt;
use crate::images::shift::{Shift, View};
use crate::images::store::{self, ImageStore};
use crate::runtime::block_on_thread;

use super::manage::describe;
use super::{CliConfig, CliError};

fn leader_of(machine: &str) -> Result<u32, CliError> {
    Ok(leader_and_root(machine)?.0)
}

/// The machine's leader and its root directory (as the launcher registered it).
fn leader_and_root(machine: &str) -> Result<(u32, String), CliError> {
    let machine = machine.to_owned();
    block_on_thread(move || async move {
        let conn =
            system_bus().await.map_err(|e| CliError::new(format!("cannot reach mctld: {}", describe(&e))))?;
        let mgr = Manager1Proxy::new(&conn).await.map_err(|e| CliError::new(describe(&e)))?;
        let path = mgr.get_machine(&machine).await.map_err(|e| CliError::new(describe(&e)))?;
        let props = proxy::all_properties(&conn, OWN_NAME, path.as_str())
            .await
            .map_err(|e| CliError::new(describe(&e)))?;
        let root = match props.get("RootDirectory").map(|v| &**v) {
            Some(zbus::Variant::Str(r)) => r.to_string(),
            _ => String::new(),
        };
        match props.get("Leader").map(|v| &**v) {
            Some(zbus::Variant::U32(l)) => Ok((*l, root)),
            _ => Err(CliError::new(format!("machine {machine} has no leader"))),
        }
    })
    .unwrap_or_else(|| Err(CliError::new("the D-Bus client could not run")))
}

fn set_frozen(machine: &str, frozen: bool) -> Result<(), CliError> {
    let machine = machine.to_owned();
    block_on_thread(move || async move {
        let conn = system_bus().await.map_err(|e| CliError::new(describe(&e)))?;
        let mctl = MctlManager1Proxy::new(&conn).await.map_err(|e| CliError::new(describe(&e)))?;
        let r = if frozen { mctl.freeze_machine(&machine).await } else { mctl.thaw_machine(&machine).await };
        r.map_err(|e| {
            CliError::new(format!(
                "cannot {} machine {machine}: {}",
                if frozen { "freeze" } else { "thaw" },
                describe(&e)
            ))
        })
    })
    .unwrap_or_else(|| Err(CliError::new("the D-Bus client could not run")))
}

/// Thaws the machine again however the copy ends.
struct Frozen<'a>(&'a str);

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        if let Err(e) = set_frozen(self.0, false) {
            tracing::warn!("{e}");
        }
    }
}

/// The image store as an absolute path (the copy runs with the working directory in the
/// machine's root), after checking that we are root (commit reads a machine's tree).
fn absolute_store(cfg: &CliConfig) -> Result<std::path::PathBuf, CliError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(CliError::new(
            "mctl commit must run as root (it reads a machine's tree and writes the image store)",
        ));
    }
    std::path::absolute(&cfg.image_store).map_err(|e| {
        CliError::new(format!("cannot resolve the image store {}: {e}", cfg.image_store.display()))
    })
}

/// `mctl commit MACHINE IMAGE`.
pub fn commit(machine: &str, image: &str, cfg: &CliConfig) -> Result<i32, CliError> {
    let store_root = absolute_store(cfg)?;
    let store = ImageStore::new(store_root);
    store.ensure_absent(image).map_err(|e| CliError::new(e.to_string()))?;
    let leader = leader_of(machine)?;
    let root = crate::launcher::enter::root_mount_of(leader)
        .map_err(|e| CliError::new(format!("cannot take the root of machine {machine}: {e}")))?;
    // Signals from here on remove the half-made image (and the guard thaws the machine).
    interrupt::install().map_err(|e| CliError::new(format!("cannot install signal handlers: {e}")))?;
    let tmp = store.temp_image("commit", image).map_err(|e| CliError::new(e.to_string()))?;
    {
        set_frozen(machine, true)?;
        let _thaw = Frozen(machine);
        // The detached mount is reachable only through its fd: make it the working directory.
        nix::unistd::fchdir(root.as_fd())
            .map_err(|e| CliError::new(format!("cannot enter the machine's root: {e}")))?;
        store::copy_tree(Path::new("."), tmp.path())
            .map_err(|e| CliError::new(format!("cannot copy machine {machine}: {e}")))?;
    }
    view_of(leader)?
        .settle(tmp.path())
        .map_err(|e| CliError::new(format!("cannot give the commit of {machine} its own ids: {e}")))?;
    store.commit(tmp, image).map_err(|e| CliError::new(e.to_string()))?;
    Ok(0)
}

/// The files (relative paths) something is mounted over in the machine whose leader is `leader`:
/// a copy of its root taken with its mounts holds the mounted file there (the host's
/// resolv.conf, a bound file), not the machine's own.
fn files_mounted_over(leader: u32) -> Result<Vec<PathBuf>, CliError> {
    let path = format!("/proc/{leader}/mountinfo");
    let text =
        std::fs::read_to_string(&path).map_err(|e| CliError::new(format!("cannot read {path}: {e}")))?;
    let root = format!("/proc/{leader}/root");
    Ok(text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(crate::procfs::unescape_mountinfo)
        .filter(|p| p != "/")
        .filter(|p| std::fs::symlink_metadata(format!("{root}{p}")).is_ok_and(|m| !m.is_dir()))
        .map(|p| PathBuf::from(p.trim_start_matches('/')))
        .collect())
}

/// How to read the root of the machine whose leader is `leader` (see [`View`]): as it is, or,
/// with a user namespace, with the ids shifted back and the files mounted over its own left out.
fn view_of(leader: u32) -> Result<View, CliError> {
    let range = crate::procfs::user_namespace_range(leader)
        .map_err(|e| CliError::new(format!("cannot read the id map of process {leader}: {e}")))?;
    Ok(match range {
        Some(range) => View { shift: Some(Shift { from: range, to: 0 }), skip: files_mounted_over(leader)? },
        None => View::default(),
    })
}

/// Whether the root mount of the machine whose leader is `leader` is an overlay over
/// `lower` (an ephemeral or `--volatile=overlay` machine of that image).
fn root_is_overlay_of(leader: u32, lower: &Path) -> Result<bool, CliError> {
    let path = format!("/proc/{leader}/mountinfo");
    let text =
        std::fs::read_to_string(&path).map_err(|e| CliError::new(format!("cannot read {path}: {e}")))?;
    // The last mount on / is the one on top.
    let root = text.lines().rfind(|l| l.split(' ').nth(4) == Some("/"));
    let Some((_, tail)) = root.and_then(|l| l.split_once(" - ")) else { return Ok(false) };
    let mut f = tail.split(' ');
    let (fstype, _source, options) = (f.next(), f.next(), f.next().unwrap_or(""));
    let lower = lower.to_string_lossy();
    Ok(fstype == Some("overlay") && options.split(',').any(|o| o.strip_prefix("lowerdir=") == Some(&lower)))
}

/// `mctl commit --oci MACHINE IMAGE`: the machine's changes since its image become one new
/// layer on top of the image's layers. For an ephemeral machine the image directory is the
/// overlay's unchanged lower layer and the comparison is against it; a machine that runs its
/// image directly is compared with the image's layers unpacked afresh. (The overlay's upper
/// directory itself lives in the launcher's private scratch tmpfs, out of reach.)
pub fn commit_oci(machine: &str, image: &str, cfg: &CliConfig) -> Result<i32, CliError> {
    use crate::images::oci::{blobs::BlobStore, commit as oci_commit};
    let store_root = absolute_store(cfg)?;
    let store = ImageStore::new(&store_root);
    store.ensure_absent(image).map_err(|e| CliError::new(e.to_string()))?;
    let (leader, root_dir) = leader_and_root(machine)?;
    let root_dir = Path::new(&root_dir);
    let canonical_store = std::fs::canonicalize(&store_root).unwrap_or(store_root.clone());
    let base = root_dir
        .parent()
        .filter(|p| *p == canonical_store)
        .and_then(|_| root_dir.file_name())
        .and_then(|n| n.to_str())
        .filter(|n| crate::names::validate(n).is_ok())
        .ok_or_else(|| {
            CliError::new(format!(
                "machine {machine} runs {}, which is not an image of the store {}: commit --oci records changes \
                 against the image a machine was started from (mctl run/boot -M IMAGE)",
                root_dir.display(),
                store_root.display()
            ))
        })?
        .to_owned();
    let ephemeral = root_is_overlay_of(leader, root_dir)?;
    let root = crate::launcher::enter::root_mount_of(leader)
        .map_err(|e| CliError::new(format!("cannot take the root of machine {machine}: {e}")))?;
    interrupt::install().map_err(|e| CliError::new(format!("cannot install signal handlers: {e}")))?;
    let blobs = BlobStore::open(&cfg.pull_cache).map_err(|e| super::oci::oci_err("commit --oci", e))?;
    set_frozen(machine, true)?;
    let _thaw = Frozen(machine);
    nix::unistd::fchdir(root.as_fd())
        .map_err(|e| CliError::new(format!("cannot enter the machine's root: {e}")))?;
    let view = view_of(leader)?;
    let info = oci_commit::commit_layer(
        &store,
        &base,
        ephemeral,
        oci_commit::Current { path: Path::new("."), view: &view },
        image,
        &format!("commit:{machine}"),
        &blobs,
    )
    .map_err(|e| super::oci::oci_err("commit --oci", e))?;
    tracing::info!("committed machine {machine} as image '{}' (one layer over {base})", info.name);
    Ok(0)
}
