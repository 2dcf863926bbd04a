//! `mctl start/stop/enable/disable NAME`: persistent machines as `mctl@NAME.service`, through
//! systemd's own D-Bus API as machinectl does it.

use futures_util::StreamExt;

use crate::bus::client::{error_message, system_bus};
use crate::bus::proxy::Systemd1Proxy;
use crate::names;
use crate::runtime::block_on_thread;

use super::{CliConfig, CliError};

/// The unit of machine `name`.
pub fn unit_name(name: &str) -> String {
    format!("mctl@{name}.service")
}

fn require_systemd(verb: &str) -> Result<(), CliError> {
    // sd_booted(): what systemd's own tools check.
    if std::path::Path::new("/run/systemd/system").is_dir() {
        Ok(())
    } else {
        Err(CliError::new(format!(
            "systemd is not running as init on this host: mctl {verb} manages mctl@NAME.service units \
             and needs it (use `mctl boot -M NAME` to run a machine directly)"
        )))
    }
}

fn checked_names(names: &[String], cfg: &CliConfig, need_image: bool) -> Result<Vec<String>, CliError> {
    for n in names {
        names::validate(n).map_err(|e| CliError::new(format!("invalid machine name '{n}': {e}")))?;
        if need_image && !cfg.image_store.join(n).is_dir() {
            return Err(CliError::new(format!(
                "No image '{n}' known (expected a directory {})",
                cfg.image_store.join(n).display()
            )));
        }
    }
    Ok(names.to_vec())
}

fn systemd_error(what: &str, e: zbus::Error) -> CliError {
    CliError::new(format!("{what}: {}", error_message(&e)))
}

/// `mctl start` / `mctl stop`: queue the job and wait for its result, as systemctl does.
pub fn start_stop(names: &[String], cfg: &CliConfig, start: bool) -> Result<i32, CliError> {
    let verb = if start { "start" } else { "stop" };
    require_systemd(verb)?;
    let names = checked_names(names, cfg, start)?;
    block_on_thread(move || async move {
        let conn = system_bus().await.map_err(|e| systemd_error("cannot connect to the system bus", e))?;
        let systemd = Systemd1Proxy::new(&conn).await.map_err(|e| systemd_error("cannot reach systemd", e))?;
        systemd.subscribe().await.map_err(|e| systemd_error("cannot subscribe to systemd", e))?;
        for name in names {
            let unit = unit_name(&name);
            // Listen before queueing, so the job's end cannot be missed.
            let mut removed = systemd.receive_job_removed().await.map_err(|e| systemd_error("cannot watch jobs", e))?;
            let job = if start {
                systemd.start_unit(&unit, "replace").await
            } else {
                systemd.stop_unit(&unit, "replace").await
            }
            .map_err(|e| systemd_error(&format!("Failed to {verb} {unit}"), e))?;
            while let Some(sig) = removed.next().await {
                let Ok(args) = sig.args() else { continue };
                if args.job.as_str() != job.as_str() {
                    continue;
                }
                if args.result != "done" {
                    return Err(CliError::new(format!(
                        "Job for {unit} failed ({}). See \"systemctl status {unit}\" and \"journalctl -u {unit}\" for details.",
                        args.result
                    )));
                }
                break;
            }
        }
        Ok(0)
    })
    .unwrap_or_else(|| Err(CliError::new("the D-Bus client could not run")))
}

/// `mctl enable` / `mctl disable`: the machine's unit (and the target that starts machines at
/// boot) in or out of the boot transaction.
pub fn enable_disable(names: &[String], cfg: &CliConfig, enable: bool) -> Result<i32, CliError> {
    let verb = if enable { "enable" } else { "disable" };
    require_systemd(verb)?;
    let names = checked_names(names, cfg, enable)?;
    let changes = block_on_thread(move || async move {
        let conn = system_bus().await.map_err(|e| systemd_error("cannot connect to the system bus", e))?;
        let systemd =
            Systemd1Proxy::new(&conn).await.map_err(|e| systemd_error("cannot reach systemd", e))?;
        let units: Vec<String> = names.iter().map(|n| unit_name(n)).collect();
        let refs: Vec<&str> = units.iter().map(String::as_str).collect();
        let changes = if enable {
            let mut with_target = refs.clone();
            with_target.push("mctl-machines.target");
            systemd.enable_unit_files(&with_target, false, false).await.map(|(_, c)| c)
        } else {
            systemd.disable_unit_files(&refs, false).await
        }
        .map_err(|e| systemd_error(&format!("Failed to {verb} {}", refs.join(" ")), e))?;
        systemd.reload().await.map_err(|e| systemd_error("Failed to reload systemd", e))?;
        Ok::<_, CliError>(changes)
    })
    .unwrap_or_else(|| Err(CliError::new("the D-Bus client could not run")))?;
    for (kind, link, target) in changes {
        match kind.as_str() {
            "symlink" => eprintln!("Created symlink {link} → {target}."),
            "unlink" => eprintln!("Removed \"{link}\"."),
            _ => {}
        }
    }
    Ok(0)
}
