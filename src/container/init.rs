//! The container's own processes during `create`: the setup stage (joins and makes the
//! namespaces, forks the init) and the init (file system, identity, then waits on the exec fifo
//! and executes the container's process). Each step's failure goes back to the runtime as
//! text naming the step.

use std::convert::Infallible;
use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::sched::CloneFlags;
use oci_spec::runtime::Spec;

use super::cgroup::ContainerCgroup;
use super::create::Namespaces;
use super::mounts::{self, MountContext};
use super::process::{self, StepError};
use super::sync::SyncEnd;
use crate::sys::linux::{Forked, exit_now};

/// What the setup stage and the init need; all of it was prepared by the runtime before the
/// fork.
pub struct InitContext<'a> {
    pub spec: &'a Spec,
    pub rootfs: &'a Path,
    pub bundle: &'a Path,
    pub cgroup: &'a ContainerCgroup,
    pub ns: &'a Namespaces,
    pub sync: &'a SyncEnd,
    pub console: Option<BorrowedFd<'a>>,
    pub fifo: BorrowedFd<'a>,
    pub no_pivot: bool,
    pub preserve_fds: u32,
    /// The idmapped mounts' trees, by index in the spec's mounts.
    pub idmapped: &'a [Option<OwnedFd>],
}

fn fail(sync: &SyncEnd, msg: &str) -> ! {
    let _ = sync.send(&format!("error {msg}"));
    exit_now(1)
}

fn expect(sync: &SyncEnd, wanted: &str) -> Result<String, StepError> {
    match sync.recv(None) {
        Ok(Some(m)) if m == wanted || m.starts_with(&format!("{wanted} ")) => Ok(m),
        Ok(Some(m)) => Err(format!("unexpected message '{m}' from the runtime")),
        Ok(None) => Err("the runtime went away".into()),
        Err(e) => Err(format!("cannot hear from the runtime: {e}")),
    }
}

fn open_ns(path: &Path) -> Result<OwnedFd, StepError> {
    std::fs::File::open(path)
        .map(OwnedFd::from)
        .map_err(|e| format!("cannot open namespace {}: {e}", path.display()))
}

/// The setup stage, in a child of the runtime: never returns.
pub fn setup_stage(ctx: &InitContext<'_>) -> ! {
    match setup(ctx) {
        Ok(()) => exit_now(0),
        Err(msg) => fail(ctx.sync, &msg),
    }
}

fn setup(ctx: &InitContext<'_>) -> Result<(), StepError> {
    expect(ctx.sync, "cgroup")?;
    // Every path is opened before any namespace changes what the paths mean.
    let user = ctx.ns.join_user.as_deref().map(open_ns).transpose()?;
    let joins: Vec<(CloneFlags, OwnedFd)> =
        ctx.ns.join.iter().map(|(f, p)| open_ns(p).map(|fd| (*f, fd))).collect::<Result<_, _>>()?;
    if let Some(fd) = &user {
        nix::sched::setns(fd, CloneFlags::CLONE_NEWUSER)
            .map_err(|e| format!("cannot join the user namespace: {e}"))?;
    }
    if ctx.ns.new_user {
        nix::sched::unshare(CloneFlags::CLONE_NEWUSER)
            .map_err(|e| format!("cannot make a user namespace: {e}"))?;
        ctx.sync.send("userns").map_err(|e| e.to_string())?;
        expect(ctx.sync, "mapped")?;
    }
    if user.is_some() || ctx.ns.new_user {
        // Root of the (new or joined) user namespace, if it maps one.
        let _ = nix::unistd::setresgid(0.into(), 0.into(), 0.into());
        let _ = nix::unistd::setresuid(0.into(), 0.into(), 0.into());
    }
    for (flag, fd) in &joins {
        nix::sched::setns(fd, *flag).map_err(|e| format!("cannot join namespace {flag:?}: {e}"))?;
    }
    nix::sched::unshare(ctx.ns.new).map_err(|e| format!("cannot make namespaces {:?}: {e}", ctx.ns.new))?;
    // A new time namespace takes its offsets before its first process, the init, enters it.
    let offsets = super::create::time_offsets(ctx.spec).map_err(|e| e.to_string())?;
    if !offsets.is_empty() {
        std::fs::write("/proc/self/timens_offsets", &offsets)
            .map_err(|e| format!("cannot set the time namespace's offsets ({}): {e}", offsets.trim()))?;
    }
    match crate::sys::linux::fork().map_err(|e| format!("cannot fork the init: {e}"))? {
        Forked::Parent(pid) => ctx.sync.send(&format!("pid {pid}")).map_err(|e| e.to_string()),
        Forked::Child => match init(ctx) {
            Ok(never) => match never {},
            Err(msg) => fail(ctx.sync, &msg),
        },
    }
}

fn init(ctx: &InitContext<'_>) -> Result<Infallible, StepError> {
    let spec = ctx.spec;
    let proc = spec.process().clone().unwrap_or_default();
    let linux = spec.linux().clone().unwrap_or_default();
    nix::unistd::setsid().map_err(|e| format!("cannot start a session: {e}"))?;
    process::close_on_exec_from(3 + ctx.preserve_fds)?;

    mounts::prepare_root(ctx.rootfs, linux.rootfs_propagation().as_deref())?;
    let root: OwnedFd = std::fs::File::open(ctx.rootfs)
        .map(OwnedFd::from)
        .map_err(|e| format!("cannot open the rootfs {}: {e}", ctx.rootfs.display()))?;
    let mctx = MountContext {
        root: std::os::fd::AsFd::as_fd(&root),
        bundle: ctx.bundle,
        cgroup: ctx.cgroup,
        userns: ctx.ns.new_user || ctx.ns.join_user.is_some(),
    };
    let spec_mounts = spec.mounts().clone().unwrap_or_default();
    mounts::mount_all(&mctx, &spec_mounts, ctx.idmapped)?;
    let own_dev = spec_mounts
        .iter()
        .any(|m| m.destination() == Path::new("/dev") && m.typ().as_deref() != Some("bind"));
    if own_dev {
        mounts::populate_dev(&mctx, linux.devices().as_deref().unwrap_or(&[]))?;
    }
    // Kept across the pivot: the host's /proc, through which the exec fifo is reopened for
    // writing once the container is started.
    let host_proc = open_path(Path::new("/proc"))?;

    ctx.sync.send("hooks").map_err(|e| e.to_string())?;
    let go = expect(ctx.sync, "go")?;
    let state: serde_json::Value = serde_json::from_str(go.trim_start_matches("go ")).unwrap_or_default();
    if let Some(h) = spec.hooks() {
        super::hooks::run("createContainer", h.create_container().as_deref().unwrap_or(&[]), &state)
            .map_err(|e| e.to_string())?;
    }
    if let Some(console) = ctx.console {
        open_console(&root, console, &proc)?;
    }
    drop(root);
    mounts::pivot(ctx.rootfs, ctx.no_pivot)?;
    // Before /proc/sys is made read-only.
    for (key, value) in linux.sysctl().clone().unwrap_or_default() {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        std::fs::write(&path, &value).map_err(|e| format!("cannot set sysctl {key}={value}: {e}"))?;
    }
    mounts::mask_paths(linux.masked_paths().as_deref().unwrap_or(&[]))?;
    mounts::readonly_paths(linux.readonly_paths().as_deref().unwrap_or(&[]))?;
    if spec.root().as_ref().and_then(|r| r.readonly()).unwrap_or(false) {
        mounts::readonly_root()?;
    }
    if ctx.ns.has(CloneFlags::CLONE_NEWUTS) {
        if let Some(h) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
            nix::unistd::sethostname(h).map_err(|e| format!("cannot set the hostname {h}: {e}"))?;
        }
        if let Some(d) = spec.domainname().as_deref().filter(|d| !d.is_empty()) {
            // SAFETY: the pointer and length describe `d`'s bytes.
            if unsafe { libc::setdomainname(d.as_ptr().cast(), d.len()) } != 0 {
                return Err(format!("cannot set the domain name {d}: {}", std::io::Error::last_os_error()));
            }
        }
    }
    if let Some(p) = linux.personality() {
        let persona = match p.domain() {
            oci_spec::runtime::LinuxPersonalityDomain::PerLinux32 => crate::launcher::attributes::PER_LINUX32,
            _ => crate::launcher::attributes::PER_LINUX,
        };
        crate::sys::linux::set_personality(persona)
            .map_err(|e| format!("cannot set the personality: {e}"))?;
    }
    process::apply_rlimits(&proc)?;
    super::lsm::set_exec_labels(&proc)?;
    let nnp = proc.no_new_privileges().unwrap_or(false);
    // With no_new_privs the filter comes as late as it can, just before the exec; but one that
    // notifies an agent must be loaded while the setup channel still carries its descriptor.
    let late_seccomp = nnp && !linux.seccomp().as_ref().is_some_and(super::seccomp::notifies);
    // Without no_new_privs loading a filter takes CAP_SYS_ADMIN: before the capabilities go.
    if !nnp {
        process::load_seccomp(linux.seccomp().as_ref(), ctx.sync)?;
    }
    process::switch_user(&proc)?;
    process::set_capabilities(&proc)?;
    process::set_no_new_privileges(&proc)?;
    if nnp && !late_seccomp {
        process::load_seccomp(linux.seccomp().as_ref(), ctx.sync)?;
    }
    let exec = process::prepare_exec(&proc)?;
    ctx.sync.send("ready").map_err(|e| e.to_string())?;

    wait_for_start(&host_proc, ctx.fifo);
    drop(host_proc);
    if let Some(h) = spec.hooks()
        && let Err(e) =
            super::hooks::run("startContainer", h.start_container().as_deref().unwrap_or(&[]), &state)
    {
        eprintln!("mctl-runc: {e}");
        exit_now(1);
    }
    if late_seccomp && let Err(e) = process::load_seccomp(linux.seccomp().as_ref(), ctx.sync) {
        eprintln!("mctl-runc: {e}");
        exit_now(1);
    }
    let e = process::exec(&exec);
    eprintln!("mctl-runc: exec {}: {e}", exec.path.to_string_lossy());
    exit_now(if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 })
}

fn open_path(path: &Path) -> Result<OwnedFd, StepError> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| "bad path".to_owned())?;
    // SAFETY: `c` is a valid C string; the fd returned is owned by the OwnedFd below.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(format!("cannot open {}: {}", path.display(), std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by open and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Blocks until `start` opens the exec fifo, then tells it by writing a byte. Exits when the
/// fifo cannot be opened (the container was deleted meanwhile).
fn wait_for_start(host_proc: &OwnedFd, fifo: BorrowedFd<'_>) {
    let rel = CString::new(format!("self/fd/{}", fifo.as_raw_fd())).unwrap_or_default();
    // SAFETY: `host_proc` is a live directory fd and `rel` a valid C string.
    let fd = unsafe { libc::openat(host_proc.as_raw_fd(), rel.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        exit_now(1);
    }
    // SAFETY: `fd` was just returned by openat and is owned by nobody else.
    let w = unsafe { OwnedFd::from_raw_fd(fd) };
    if nix::unistd::write(&w, b"0").is_err() {
        exit_now(1);
    }
}

/// Opens a pty in the container's devpts, sends its master to the console socket and makes its
/// peer this process's controlling terminal and stdio.
fn open_console(
    root: &OwnedFd,
    console: BorrowedFd<'_>,
    proc: &oci_spec::runtime::Process,
) -> Result<(), StepError> {
    let ptmx = crate::sys::linux::open_in_root(
        std::os::fd::AsFd::as_fd(root),
        Path::new("/dev/pts/ptmx"),
        libc::O_RDWR | libc::O_NOCTTY,
    )
    .or_else(|_| {
        crate::sys::linux::open_in_root(
            std::os::fd::AsFd::as_fd(root),
            Path::new("/dev/ptmx"),
            libc::O_RDWR | libc::O_NOCTTY,
        )
    })
    .map_err(|e| format!("cannot open the container's /dev/pts/ptmx: {e}"))?;
    rustix::pty::unlockpt(&ptmx).map_err(|e| format!("cannot unlock the pty: {e}"))?;
    process::hand_over_pty(ptmx, console, proc)
}
