//! `mctl copy-to`, `mctl copy-from` and `mctl bind`: thin clients of mctld's CopyToMachine,
//! CopyFromMachine and BindMountMachine (which resolve every path in the machine inside it).
//! Host paths are made absolute here, against our working directory, as machinectl does:
//! mctld has a working directory of its own.

use std::path::Path;

use crate::bus::proxy::Manager1Proxy;

use super::CliError;
use super::args::{BindArgs, CopyArgs};
use super::manage::{call_error, unreachable, with_bus};

/// machine1's copy flag: replace an existing destination.
const COPY_REPLACE: u64 = 1;

/// `path` made absolute against the working directory (not resolved: the host path is the
/// caller's own, and mctld opens it as given).
fn absolute(path: &str) -> Result<String, CliError> {
    std::path::absolute(Path::new(path))
        .map(|p| p.display().to_string())
        .map_err(|e| CliError::new(format!("invalid path '{path}': {e}")))
}

/// A path in the machine: absolute, as machine1 requires.
fn in_machine(path: &str) -> Result<String, CliError> {
    if !path.starts_with('/') {
        return Err(CliError::new(format!("'{path}' is not an absolute path in the machine")));
    }
    Ok(path.to_owned())
}

/// `mctl copy-to` (`to_machine`) or `mctl copy-from`.
pub fn copy(a: &CopyArgs, to_machine: bool) -> Result<i32, CliError> {
    let (source, destination) = if to_machine {
        let dest = a.destination.as_deref().map_or_else(|| absolute(&a.source), in_machine)?;
        (absolute(&a.source)?, dest)
    } else {
        let dest = absolute(a.destination.as_deref().unwrap_or(&a.source))?;
        (in_machine(&a.source)?, dest)
    };
    let name = a.name.clone();
    let flags = if a.force { COPY_REPLACE } else { 0 };
    with_bus(move |conn| async move {
        let mgr = Manager1Proxy::new(&conn).await.map_err(unreachable)?;
        let done = if to_machine {
            mgr.copy_to_machine_with_flags(&name, &source, &destination, flags).await
        } else {
            mgr.copy_from_machine_with_flags(&name, &source, &destination, flags).await
        };
        done.map_err(|e| call_error("Failed to copy", e))?;
        Ok(0)
    })
}

/// `mctl bind`.
pub fn bind(a: &BindArgs) -> Result<i32, CliError> {
    let source = absolute(&a.source)?;
    let destination = a.destination.as_deref().map_or_else(|| Ok(source.clone()), in_machine)?;
    let (name, read_only, mkdir) = (a.name.clone(), a.read_only, a.mkdir);
    with_bus(move |conn| async move {
        let mgr = Manager1Proxy::new(&conn).await.map_err(unreachable)?;
        mgr.bind_mount_machine(&name, &source, &destination, read_only, mkdir)
            .await
            .map_err(|e| call_error("Failed to bind mount", e))?;
        Ok(0)
    })
}
