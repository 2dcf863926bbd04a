//! The container's process as `config.json` (or `exec --process`) describes it: rlimits,
//! user and groups, the five capability sets, no_new_privs, working directory, environment and
//! the executable. Used by the container's init and by `exec`, in their own processes just
//! before `execve`.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use caps::{CapSet, Capability, CapsHashSet};
use oci_spec::runtime::{Capabilities, PosixRlimitType, Process};

use super::sync::SyncEnd;

/// A step of the process setup that failed, as text for the runtime to report.
pub type StepError = String;

fn step(what: &str) -> impl FnOnce(std::io::Error) -> StepError + '_ {
    move |e| format!("{what}: {e}")
}

/// The OCI capability names as the kernel's.
pub fn capability_set(set: Option<&Capabilities>) -> CapsHashSet {
    set.into_iter()
        .flatten()
        .filter_map(|c| serde_json::to_value(c).ok())
        .filter_map(|v| v.as_str().and_then(|s| s.parse::<Capability>().ok()))
        .collect()
}

fn rlimit_resource(t: PosixRlimitType) -> libc::__rlimit_resource_t {
    match t {
        PosixRlimitType::RlimitCpu => libc::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => libc::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => libc::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => libc::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => libc::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => libc::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => libc::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => libc::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => libc::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => libc::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => libc::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => libc::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => libc::RLIMIT_RTTIME,
    }
}

/// Sets `process.rlimits`.
pub fn apply_rlimits(p: &Process) -> Result<(), StepError> {
    for r in p.rlimits().as_deref().unwrap_or(&[]) {
        let lim = libc::rlimit { rlim_cur: r.soft(), rlim_max: r.hard() };
        // SAFETY: `lim` is a valid rlimit; setrlimit only reads it.
        if unsafe { libc::setrlimit(rlimit_resource(r.typ()), &lim) } != 0 {
            return Err(format!(
                "cannot set {} to {}:{}: {}",
                serde_json::to_value(r.typ())
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                r.soft(),
                r.hard(),
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// Drops every capability not in `process.capabilities.bounding` from the bounding set (while
/// still privileged), then switches to the user and groups, keeping capabilities across the
/// switch so that [`set_capabilities`] can give the configured ones.
pub fn switch_user(p: &Process) -> Result<(), StepError> {
    let bounding = capability_set(p.capabilities().as_ref().and_then(|c| c.bounding().clone()).as_ref());
    if p.capabilities().is_some() {
        for cap in caps::all() {
            if !bounding.contains(&cap) {
                match caps::drop(None, CapSet::Bounding, cap) {
                    Ok(()) => {}
                    // A capability newer than the kernel.
                    Err(_) if !caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) => {}
                    Err(e) => return Err(format!("cannot drop {cap} from the bounding set: {e}")),
                }
            }
        }
    }
    let user = p.user();
    let groups: Vec<nix::unistd::Gid> = user
        .additional_gids()
        .as_deref()
        .unwrap_or(&[])
        .iter()
        .map(|&g| nix::unistd::Gid::from_raw(g))
        .collect();
    match nix::unistd::setgroups(&groups) {
        Ok(()) => {}
        // A user namespace whose setgroups is denied: only possible without extra groups.
        Err(nix::errno::Errno::EPERM) if groups.is_empty() => {}
        Err(e) => return Err(format!("cannot set the additional groups {groups:?}: {e}")),
    }
    let gid = nix::unistd::Gid::from_raw(user.gid());
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| format!("cannot set gid {gid}: {e}"))?;
    // SAFETY: prctl(PR_SET_KEEPCAPS) takes plain integers.
    if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } != 0 {
        return Err(format!(
            "cannot keep capabilities across the uid change: {}",
            std::io::Error::last_os_error()
        ));
    }
    let uid = nix::unistd::Uid::from_raw(user.uid());
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| format!("cannot set uid {uid}: {e}"))?;
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(user.umask().unwrap_or(0o022)));
    Ok(())
}

/// Sets the permitted, inheritable, effective and ambient sets from `process.capabilities`
/// (after [`switch_user`]).
pub fn set_capabilities(p: &Process) -> Result<(), StepError> {
    let c = p.capabilities().clone().unwrap_or_default();
    let get = |s: &Option<Capabilities>| capability_set(s.as_ref());
    let (permitted, effective, inheritable, ambient) =
        (get(c.permitted()), get(c.effective()), get(c.inheritable()), get(c.ambient()));
    let fail = |set: &str, e: caps::errors::CapsError| format!("cannot set the {set} capabilities: {e}");
    // Raising everything still permitted first gives CAP_SETPCAP for the inheritable set.
    let now = caps::read(None, CapSet::Permitted).map_err(|e| fail("permitted", e))?;
    caps::set(None, CapSet::Effective, &now).map_err(|e| fail("effective", e))?;
    caps::set(None, CapSet::Inheritable, &inheritable).map_err(|e| fail("inheritable", e))?;
    // The effective set must stay within the permitted one at every step.
    caps::set(None, CapSet::Effective, &effective).map_err(|e| fail("effective", e))?;
    caps::set(None, CapSet::Permitted, &permitted).map_err(|e| fail("permitted", e))?;
    caps::clear(None, CapSet::Ambient).map_err(|e| fail("ambient", e))?;
    for cap in ambient {
        // Ambient capabilities must be permitted and inheritable; runc skips the others.
        if permitted.contains(&cap) && inheritable.contains(&cap) {
            caps::raise(None, CapSet::Ambient, cap).map_err(|e| fail("ambient", e))?;
        }
    }
    Ok(())
}

/// Sets no_new_privs when asked.
pub fn set_no_new_privileges(p: &Process) -> Result<(), StepError> {
    if p.no_new_privileges().unwrap_or(false) {
        // SAFETY: prctl(PR_SET_NO_NEW_PRIVS) takes plain integers.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(format!("cannot set no_new_privs: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// What `execve` gets.
#[derive(Debug)]
pub struct Exec {
    /// The executable, resolved against `PATH`.
    pub path: CString,
    /// argv.
    pub argv: Vec<CString>,
    /// envp.
    pub env: Vec<CString>,
}

fn cstring(s: &str, what: &str) -> Result<CString, StepError> {
    CString::new(s).map_err(|_| format!("{what} '{s}' contains a NUL byte"))
}

/// Changes to `process.cwd` and finds the executable as the shell would, with the process's
/// own `PATH`: runc's message when there is none.
pub fn prepare_exec(p: &Process) -> Result<Exec, StepError> {
    let cwd = if p.cwd().as_os_str().is_empty() { Path::new("/") } else { p.cwd().as_path() };
    nix::unistd::chdir(cwd)
        .map_err(|e| format!("cannot change to the working directory {}: {e}", cwd.display()))?;
    let args = p.args().as_deref().unwrap_or(&[]);
    let Some(first) = args.first() else {
        return Err("process.args is empty: there is nothing to run".into());
    };
    let env: Vec<String> = p.env().clone().unwrap_or_default();
    let path_var = env
        .iter()
        .find_map(|kv| kv.strip_prefix("PATH="))
        .unwrap_or(crate::launcher::DEFAULT_PATH)
        .to_owned();
    let path = find_executable(first, &path_var).ok_or_else(|| {
        if first.contains('/') {
            format!("exec: \"{first}\": stat {first}: no such file or directory")
        } else {
            format!("exec: \"{first}\": executable file not found in $PATH")
        }
    })?;
    Ok(Exec {
        path: CString::new(path.as_os_str().as_bytes()).map_err(|_| "path with a NUL byte".to_owned())?,
        argv: args.iter().map(|a| cstring(a, "argument")).collect::<Result<_, _>>()?,
        env: env.iter().map(|e| cstring(e, "environment entry")).collect::<Result<_, _>>()?,
    })
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn find_executable(name: &str, path_var: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.exists().then_some(p);
    }
    path_var.split(':').filter(|d| !d.is_empty()).map(|d| Path::new(d).join(name)).find(|p| is_executable(p))
}

/// Replaces this process with the container's process; returns only on failure.
pub fn exec(e: &Exec) -> std::io::Error {
    crate::sys::linux::execve(&e.path, &e.argv, &e.env)
}

/// Gives the process the pty whose master is `master`: its peer sized as the process asks,
/// the master sent to the engine's console socket, the peer made stdio and the controlling
/// terminal. Call in a new session.
pub fn hand_over_pty(
    master: std::os::fd::OwnedFd,
    console: std::os::fd::BorrowedFd<'_>,
    proc: &Process,
) -> Result<(), StepError> {
    use std::os::fd::AsFd;
    let peer = crate::sys::linux::pty_peer(master.as_fd())
        .map_err(|e| format!("cannot open the pty's peer: {e}"))?;
    if let Some(size) = proc.console_size() {
        let ws = libc::winsize {
            ws_row: u16::try_from(size.height()).unwrap_or(u16::MAX),
            ws_col: u16::try_from(size.width()).unwrap_or(u16::MAX),
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let _ = crate::sys::linux::set_window_size(peer.as_fd(), &ws);
    }
    super::sync::send_fd(console, master.as_fd(), "/dev/ptmx")
        .map_err(|e| format!("cannot send the pty to the console socket: {e}"))?;
    drop(master);
    make_stdio(peer.as_fd())?;
    crate::sys::linux::set_controlling_tty(peer.as_fd())
        .map_err(|e| format!("cannot make the pty the controlling terminal: {e}"))
}

/// Makes `fd` this process's stdin, stdout and stderr.
pub fn make_stdio(fd: std::os::fd::BorrowedFd<'_>) -> Result<(), StepError> {
    use std::os::fd::AsRawFd;
    for target in 0..3 {
        // SAFETY: dup2 onto 0..2 replaces this process's stdio, which no Rust object owns.
        if unsafe { libc::dup2(fd.as_raw_fd(), target) } < 0 {
            return Err(format!("cannot make the pty stdio: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Loads the container's system call filter.
pub fn load_seccomp(cfg: Option<&oci_spec::runtime::LinuxSeccomp>, sync: &SyncEnd) -> Result<(), StepError> {
    let Some(cfg) = cfg else { return Ok(()) };
    let filter = super::seccomp::build(cfg).map_err(|e| e.to_string())?;
    filter.load().map_err(|e| format!("cannot load the seccomp filter: {e}"))?;
    if super::seccomp::notifies(cfg) {
        // The runtime passes it on to the agent. libseccomp keeps it (close-on-exec), so it
        // is only borrowed here.
        let raw =
            filter.get_notify_fd().map_err(|e| format!("cannot get the seccomp notification fd: {e}"))?;
        // SAFETY: libseccomp opened `raw` when it loaded the filter and keeps it open for the
        // life of `filter`, which outlives this borrow.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) };
        sync.send_with_fd("seccomp", fd)
            .map_err(|e| format!("cannot pass on the seccomp notification fd: {e}"))?;
    }
    Ok(())
}

/// Makes every descriptor from `first` on close at exec, so the process gets only stdio and
/// the preserved ones.
pub fn close_on_exec_from(first: u32) -> Result<(), StepError> {
    crate::sys::linux::cloexec_fds_from(first).map_err(step("cannot mark descriptors close-on-exec"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_capability_names_map_to_the_kernels() {
        let set: Capabilities = serde_json::from_str(r#"["CAP_CHOWN","CAP_NET_RAW"]"#).unwrap();
        let caps = capability_set(Some(&set));
        assert!(caps.contains(&Capability::CAP_CHOWN) && caps.contains(&Capability::CAP_NET_RAW));
        assert_eq!(caps.len(), 2);
    }

    #[test]
    fn executables_are_found_on_the_processes_path() {
        assert_eq!(find_executable("sh", "/nonexistent:/bin"), Some(PathBuf::from("/bin/sh")));
        assert_eq!(find_executable("no-such-program-here", "/bin:/usr/bin"), None);
        assert_eq!(find_executable("/bin/sh", ""), Some(PathBuf::from("/bin/sh")));
    }
}
