//! `mctl commit MACHINE IMAGE`: a new image from a running machine's root filesystem. The
//! machine is frozen while its tree is copied, so the copy is consistent; an ephemeral
//! machine's root is its overlay, so its merged view is what gets committed.
//!
//! The root is taken as a detached clone of the machine's root mount alone (made inside the
//! machine's mount namespace and passed back as a file descriptor), so neither the API
//! filesystems nor bind mounts on top of the tree end up in the image.

use std::os::fd::AsFd;
use std::path::Path;

use crate::bus::OWN_NAME;
use crate::bus::client::system_bus;
use crate::bus::proxy::{self, Manager1Proxy, MctlManager1Proxy};
use crate::images::interrupt;
use crate::images::store::{self, ImageStore};
use crate::runtime::block_on_thread;

use super::manage::describe;
use super::{CliConfig, CliError};

fn leader_of(machine: &str) -> Result<u32, CliError> {
    let machine = machine.to_owned();
    block_on_thread(move || async move {
        let conn =
            system_bus().await.map_err(|e| CliError::new(format!("cannot reach mctld: {}", describe(&e))))?;
        let mgr = Manager1Proxy::new(&conn).await.map_err(|e| CliError::new(describe(&e)))?;
        let path = mgr.get_machine(&machine).await.map_err(|e| CliError::new(describe(&e)))?;
        let props = proxy::all_properties(&conn, OWN_NAME, path.as_str())
            .await
            .map_err(|e| CliError::new(describe(&e)))?;
        match props.get("Leader").map(|v| &**v) {
            Some(zbus::Variant::U32(l)) => Ok(*l),
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

/// `mctl commit MACHINE IMAGE`.
pub fn commit(machine: &str, image: &str, cfg: &CliConfig) -> Result<i32, CliError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(CliError::new(
            "mctl commit must run as root (it reads a machine's tree and writes the image store)",
        ));
    }
    // Absolute, because the copy below runs with the working directory in the machine's root.
    let store_root = std::path::absolute(&cfg.image_store).map_err(|e| {
        CliError::new(format!("cannot resolve the image store {}: {e}", cfg.image_store.display()))
    })?;
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
    store.commit(tmp, image).map_err(|e| CliError::new(e.to_string()))?;
    Ok(0)
}
