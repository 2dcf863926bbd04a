//! The last steps before a payload runs, shared by PID 1 of a new machine and by `mctl shell`:
//! terminal, user, environment, and the exec with the machine's PATH.

use std::ffi::CString;
use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::sys::{Sys, linux};

use super::identity::{User, lookup_user};
use super::{ChildError, DEFAULT_PATH};
use crate::guestfs;

/// A C string from `s` (NUL bytes dropped: they cannot be passed).
pub(crate) fn cstring(s: &str) -> CString {
    CString::new(s.replace('\0', "")).unwrap_or_default()
}

/// Makes the terminal at `path` this session leader's stdin, stdout, stderr and controlling
/// terminal.
pub(crate) fn attach_terminal(path: &str) -> Result<(), ChildError> {
    let tty = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(path)
        .map_err(ChildError::path_step("open terminal", Path::new(path)))?;
    attach_terminal_fd(tty.into())
}

/// [`attach_terminal`] for a terminal already open.
pub(crate) fn attach_terminal_fd(tty: std::os::fd::OwnedFd) -> Result<(), ChildError> {
    nix::unistd::dup2_stdin(&tty)
        .and_then(|()| nix::unistd::dup2_stdout(&tty))
        .and_then(|()| nix::unistd::dup2_stderr(&tty))
        .map_err(|e| ChildError::Step("attach terminal", e.into()))?;
    drop(tty);
    // fd 0 is now a duplicate of the terminal.
    linux::set_controlling_tty(std::io::stdin().as_fd())
        .map_err(ChildError::step("make the terminal the controlling terminal"))
}

/// Looks `who` (a name or uid) up in the passwd and group files of the machine whose root is
/// this process's root. The files are the guest's: read with [`guestfs`] (no FIFO, no device,
/// nothing huge, nothing outside the root).
pub(crate) fn lookup_in_machine(who: &str) -> Result<User, ChildError> {
    let root = fs::File::open("/").map_err(ChildError::step("open the machine's root"))?;
    let read =
        |path: &str| match guestfs::read_string(root.as_fd(), Path::new(path), guestfs::SMALL_FILE_LIMIT) {
            Ok(s) => Ok(s),
            Err(e) if e.is_not_found() => Ok(String::new()),
            Err(e) => Err(ChildError::Message(format!("cannot look up user '{who}': {e}"))),
        };
    let (passwd, group) = (read("/etc/passwd")?, read("/etc/group")?);
    lookup_user(who, &passwd, &group)
        .ok_or_else(|| ChildError::Message(format!("user '{who}' does not exist in the machine")))
}

/// Switches to `user`; sets HOME, USER, LOGNAME and SHELL in `env`; returns the home directory.
pub(crate) fn become_user(
    sys: &impl Sys,
    user: User,
    env: &mut Vec<(String, String)>,
) -> Result<String, ChildError> {
    sys.set_identity(user.uid, user.gid, &user.groups).map_err(|e| {
        ChildError::Message(format!("cannot become user {} ({}:{}): {e}", user.name, user.uid, user.gid))
    })?;
    set_env(env, "HOME", &user.home);
    set_env(env, "USER", &user.name);
    set_env(env, "LOGNAME", &user.name);
    set_env(env, "SHELL", &user.shell);
    Ok(user.home)
}

/// Sets `key` in `env`, replacing an earlier value.
pub(crate) fn set_env(env: &mut Vec<(String, String)>, key: &str, value: &str) {
    match env.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value.to_owned(),
        None => env.push((key.to_owned(), value.to_owned())),
    }
}

/// `env` as execve wants it.
pub(crate) fn envp(env: &[(String, String)]) -> Vec<CString> {
    env.iter().map(|(k, v)| cstring(&format!("{k}={v}"))).collect()
}

/// execvp's PATH search with the machine's PATH from `env` (glibc's would use the caller's);
/// returns only on failure.
pub(crate) fn exec_search(argv: &[String], env: &[(String, String)], envp: &[CString]) -> ChildError {
    let cmd = &argv[0];
    let argv: Vec<CString> = argv.iter().map(|a| cstring(a)).collect();
    if cmd.contains('/') {
        return ChildError::Exec(cmd.to_owned(), linux::execve(&cstring(cmd), &argv, envp));
    }
    let path = env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str()).unwrap_or(DEFAULT_PATH);
    let mut denied = None;
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let full = format!("{dir}/{cmd}");
        let err = linux::execve(&cstring(&full), &argv, envp);
        if err.raw_os_error() == Some(libc::EACCES) {
            denied = Some((full, err));
        }
    }
    match denied {
        Some((full, err)) => ChildError::Exec(full, err),
        None => ChildError::NotFound(cmd.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::FakeSys;

    #[test]
    fn becoming_a_user_sets_the_identity_and_the_environment() {
        let sys = FakeSys::new();
        let user = User {
            name: "tester".into(),
            uid: 1000,
            gid: 1000,
            home: "/home/tester".into(),
            shell: "/bin/sh".into(),
            groups: vec![100],
        };
        let mut env = vec![("HOME".to_owned(), "/root".to_owned())];
        assert_eq!(become_user(&sys, user.clone(), &mut env).unwrap(), "/home/tester");
        assert_eq!(sys.calls(), ["identity 1000:1000 [100]"]);
        assert!(
            env.contains(&("HOME".into(), "/home/tester".into()))
                && env.contains(&("USER".into(), "tester".into()))
        );
        sys.fail_on("identity", libc::EPERM);
        let err = become_user(&sys, user, &mut env).unwrap_err();
        assert!(err.to_string().starts_with("cannot become user tester (1000:1000)"), "{err}");
    }
}
