//! Linux security modules: the AppArmor profile and SELinux label a container's process runs
//! under (`process.apparmorProfile`, `process.selinuxLabel`). Each takes effect at the
//! process's exec, set through `/proc/thread-self/attr`. A label for a module this host does
//! not run is refused rather than dropped: the container would run less confined than its
//! configuration says.

use std::path::Path;

use oci_spec::runtime::Process;

use super::ContainerError;
use super::process::StepError;

/// Whether AppArmor is enabled on this host.
pub fn apparmor_enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled").is_ok_and(|s| s.trim() == "Y")
        && Path::new("/sys/kernel/security/apparmor").exists()
}

/// Whether SELinux is enabled (its file system mounted, a policy loaded).
pub fn selinux_enabled() -> bool {
    Path::new("/sys/fs/selinux/enforce").exists()
}

fn set(value: Option<&String>) -> Option<&str> {
    value.map(String::as_str).filter(|v| !v.is_empty())
}

/// Refuses labels for modules the host lacks.
pub fn check(process: &Process) -> Result<(), ContainerError> {
    if let Some(profile) = set(process.apparmor_profile().as_ref())
        && !apparmor_enabled()
    {
        return Err(ContainerError::Invalid(format!(
            "process.apparmorProfile '{profile}' is set but AppArmor is not enabled on this host (leave it unset)"
        )));
    }
    if let Some(label) = set(process.selinux_label().as_ref())
        && !selinux_enabled()
    {
        return Err(ContainerError::Invalid(format!(
            "process.selinuxLabel '{label}' is set but SELinux is not enabled on this host (leave it unset)"
        )));
    }
    Ok(())
}

/// Makes the next exec of this thread change to the configured profile and label.
pub fn set_exec_labels(process: &Process) -> Result<(), StepError> {
    let write = |file: &str, value: String| {
        std::fs::write(file, value.as_bytes()).map_err(|e| format!("cannot write {file} ({value}): {e}"))
    };
    if let Some(profile) = set(process.apparmor_profile().as_ref()) {
        // The module's own directory on kernels that stack modules; the shared file before.
        let file = if Path::new("/proc/thread-self/attr/apparmor/exec").exists() {
            "/proc/thread-self/attr/apparmor/exec"
        } else {
            "/proc/thread-self/attr/exec"
        };
        write(file, format!("exec {profile}"))?;
    }
    if let Some(label) = set(process.selinux_label().as_ref()) {
        write("/proc/thread-self/attr/exec", label.to_owned())?;
    }
    Ok(())
}
