//! Attacks a machine's root may try on its host, for the security tests (`tests/security.rs`).
//! Run inside a machine; each probe prints one line `NAME: RESULT`, where RESULT is `denied
//! (ERRNO)` when the attack failed, or `ESCAPED ...` when it reached the host.
//!
//!     escape all [BLOCKDEV_MAJOR:MINOR]   every probe below that needs no argument
//!     escape PROBE [ARG]                   one probe
//!     escape watch-exec PATH               stall the next exec of PATH (fanotify) and report
//!                                          the capabilities, filter and executable of the
//!                                          process doing it
//!
//! Everything here is raw system calls on purpose: the point is what the kernel lets through.

#![allow(clippy::print_stdout, clippy::undocumented_unsafe_blocks)]

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn denied(name: &str) -> String {
    let e = std::io::Error::last_os_error();
    format!("{name}: denied ({})", errno_name(e.raw_os_error().unwrap_or(0)))
}

fn errno_name(e: i32) -> String {
    match e {
        libc::EPERM => "EPERM".into(),
        libc::EACCES => "EACCES".into(),
        libc::EINVAL => "EINVAL".into(),
        libc::EBADF => "EBADF".into(),
        libc::ENOSYS => "ENOSYS".into(),
        libc::ESTALE => "ESTALE".into(),
        libc::EROFS => "EROFS".into(),
        libc::ENOENT => "ENOENT".into(),
        libc::EFAULT => "EFAULT".into(),
        libc::ENODEV => "ENODEV".into(),
        other => format!("errno {other}"),
    }
}

fn open_raw(path: &str, flags: i32) -> Option<OwnedFd> {
    let c = CString::new(path).ok()?;
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `struct file_handle` with room for the handle bytes.
#[repr(C)]
struct Handle {
    bytes: u32,
    kind: i32,
    data: [u8; 16],
}

fn open_by_handle(mount: &str, kind: i32, data: &[u8]) -> Result<OwnedFd, ()> {
    let Some(m) = open_raw(mount, libc::O_RDONLY | libc::O_DIRECTORY) else { return Err(()) };
    let Ok(bytes) = u32::try_from(data.len()) else { return Err(()) };
    let mut h = Handle { bytes, kind, data: [0; 16] };
    h.data[..data.len()].copy_from_slice(data);
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            m.as_raw_fd(),
            &mut h as *mut Handle,
            libc::O_RDONLY | libc::O_DIRECTORY,
        )
    };
    // An int fd, only widened to long by syscall().
    #[allow(clippy::cast_possible_truncation)]
    let fd = fd as i32;
    if fd < 0 { Err(()) } else { Ok(unsafe { OwnedFd::from_raw_fd(fd) }) }
}

fn list_dir(fd: &OwnedFd) -> String {
    let dup = unsafe { libc::dup(fd.as_raw_fd()) };
    let dir = unsafe { libc::fdopendir(dup) };
    let mut names = Vec::new();
    if !dir.is_null() {
        loop {
            let ent = unsafe { libc::readdir(dir) };
            if ent.is_null() {
                break;
            }
            let name = unsafe { std::ffi::CStr::from_ptr((*ent).d_name.as_ptr()) };
            names.push(name.to_string_lossy().into_owned());
            if names.len() > 8 {
                break;
            }
        }
        unsafe { libc::closedir(dir) };
    }
    names.sort();
    names.join(",")
}

/// The host file system's root directory by handle (ext4: inode 2, FILEID_INO32_GEN), through
/// the machine's root mount, which sits on it.
fn handle_root() -> String {
    let mut data = Vec::new();
    data.extend_from_slice(&2u32.to_ne_bytes());
    data.extend_from_slice(&0u32.to_ne_bytes());
    match open_by_handle("/", 1, &data) {
        Ok(fd) => format!("handle-root: ESCAPED (host root holds {})", list_dir(&fd)),
        Err(()) => denied("handle-root"),
    }
}

/// The host's root cgroup by kernfs handle (FILEID_KERNFS, id 1) through the guest's cgroup2.
fn handle_cgroup() -> String {
    match open_by_handle("/sys/fs/cgroup", 0xfe, &1u64.to_ne_bytes()) {
        Ok(fd) => format!("handle-cgroup: ESCAPED (root cgroup holds {})", list_dir(&fd)),
        Err(()) => denied("handle-cgroup"),
    }
}

fn keyring() -> String {
    // KEYCTL_GET_KEYRING_ID of KEY_SPEC_USER_KEYRING: the host root's user keyring.
    let id = unsafe { libc::syscall(libc::SYS_keyctl, 0, -4i64, 0) };
    if id >= 0 {
        return format!("keyring: ESCAPED (user keyring {id})");
    }
    denied("keyring")
}

fn add_key() -> String {
    let (ty, desc, payload) = (c"user", c"mctl-escape-test", b"x");
    let id = unsafe {
        libc::syscall(libc::SYS_add_key, ty.as_ptr(), desc.as_ptr(), payload.as_ptr(), 1usize, -4i64)
    };
    if id >= 0 {
        // Take it out again: the point was to show it could be added.
        unsafe { libc::syscall(libc::SYS_keyctl, 21, id, -4i64) };
        return format!("add-key: ESCAPED (key {id} added to the host's user keyring)");
    }
    denied("add-key")
}

fn bpf() -> String {
    let attr = [0u8; 64];
    let r = unsafe { libc::syscall(libc::SYS_bpf, 0, attr.as_ptr(), attr.len()) };
    if r >= 0 || errno() != libc::EPERM {
        return format!("bpf: ESCAPED (bpf reached the kernel: {})", errno_name(errno()));
    }
    denied("bpf")
}

fn perf() -> String {
    let attr = [0u8; 128];
    let r = unsafe { libc::syscall(libc::SYS_perf_event_open, attr.as_ptr(), -1i64, 0i64, -1i64, 0i64) };
    if r >= 0 || errno() != libc::EPERM {
        return format!("perf: ESCAPED (perf_event_open reached the kernel: {})", errno_name(errno()));
    }
    denied("perf")
}

fn kexec() -> String {
    let r =
        unsafe { libc::syscall(libc::SYS_kexec_file_load, -1i64, -1i64, 0i64, std::ptr::null::<u8>(), 0i64) };
    if r >= 0 || errno() != libc::EPERM {
        return format!("kexec: ESCAPED (kexec_file_load reached the kernel: {})", errno_name(errno()));
    }
    denied("kexec")
}

fn clock() -> String {
    // An invalid time: a kernel that gets this far answers EINVAL and changes nothing.
    let ts = libc::timespec { tv_sec: 0, tv_nsec: -1 };
    // Raw: the C library would refuse the invalid time itself.
    let r =
        unsafe { libc::syscall(libc::SYS_clock_settime, libc::CLOCK_REALTIME, &ts as *const libc::timespec) };
    if r >= 0 || errno() != libc::EPERM {
        return format!("clock: ESCAPED (clock_settime reached the kernel: {})", errno_name(errno()));
    }
    denied("clock")
}

fn module() -> String {
    let r = unsafe { libc::syscall(libc::SYS_finit_module, -1i64, c"".as_ptr(), 0i64) };
    if r >= 0 || errno() != libc::EPERM {
        return format!("module: ESCAPED (finit_module reached the kernel: {})", errno_name(errno()));
    }
    denied("module")
}

fn mknod_and_open(name: &str, path: &str, mode: u32, major: u32, minor: u32, write: bool) -> String {
    let c = CString::new(path).unwrap();
    unsafe { libc::unlink(c.as_ptr()) };
    if unsafe { libc::mknod(c.as_ptr(), mode | 0o600, libc::makedev(major, minor)) } < 0 {
        return denied(name);
    }
    let fd = unsafe {
        libc::open(c.as_ptr(), if write { libc::O_WRONLY } else { libc::O_RDONLY } | libc::O_CLOEXEC)
    };
    let result = if fd < 0 {
        denied(name)
    } else {
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        if write {
            let msg = b"mctl escape test\n";
            let n = unsafe { libc::write(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len()) };
            if n < 0 { denied(name) } else { format!("{name}: ESCAPED (wrote {n} bytes)") }
        } else {
            let mut buf = [0u8; 512];
            let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 { denied(name) } else { format!("{name}: ESCAPED (read {n} bytes)") }
        }
    };
    unsafe { libc::unlink(c.as_ptr()) };
    result
}

/// Mounts the v1 devices controller and asks its root (the guest's cgroup root) to allow all.
fn devices_v1() -> String {
    let have = std::fs::read_to_string("/proc/cgroups")
        .map(|s| s.lines().any(|l| l.split_whitespace().next() == Some("devices")))
        .unwrap_or(false);
    if !have {
        return "devices-v1: denied (no v1 devices controller on this host)".into();
    }
    let dir = "/tmp/mctl-escape-devices";
    let _ = std::fs::create_dir_all(dir);
    let (src, target, fstype, data) = (c"none", CString::new(dir).unwrap(), c"cgroup", c"devices");
    if unsafe { libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, data.as_ptr().cast()) } < 0 {
        return denied("devices-v1");
    }
    let r = std::fs::write(format!("{dir}/devices.allow"), "a");
    unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    match r {
        Ok(()) => "devices-v1: ESCAPED (the guest allowed itself every device)".into(),
        Err(e) => format!("devices-v1: denied ({})", errno_name(e.raw_os_error().unwrap_or(0))),
    }
}

/// A host kernel setting written with the value it has (nothing changes if the write works).
const SYSFS_SETTING: &str = "kernel/mm/ksm/sleep_millisecs";
const PROC_SETTING: &str = "/proc/sys/vm/swappiness";

/// Writes `path` its own current value; `ESCAPED` if the kernel took it.
fn write_back(name: &str, path: &str) -> String {
    let value = match std::fs::read(path) {
        Ok(v) => v,
        Err(e) => {
            return format!(
                "{name}: denied (cannot read {path}: {})",
                errno_name(e.raw_os_error().unwrap_or(0))
            );
        }
    };
    match std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &value))
    {
        Ok(()) => format!("{name}: ESCAPED (wrote {path})"),
        Err(e) => format!("{name}: denied ({})", errno_name(e.raw_os_error().unwrap_or(0))),
    }
}

fn mount_at(fstype: &std::ffi::CStr, dir: &str) -> Result<CString, ()> {
    let _ = std::fs::create_dir_all(dir);
    let target = CString::new(dir).unwrap();
    let r = unsafe { libc::mount(fstype.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if r < 0 { Err(()) } else { Ok(target) }
}

/// Makes the machine's /sys writable again, then writes a host setting through it.
fn sysfs_remount() -> String {
    let flags = libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    if unsafe { libc::mount(c"sysfs".as_ptr(), c"/sys".as_ptr(), std::ptr::null(), flags, std::ptr::null()) }
        < 0
    {
        let bind = flags | libc::MS_BIND;
        if unsafe {
            libc::mount(std::ptr::null(), c"/sys".as_ptr(), std::ptr::null(), bind, std::ptr::null())
        } < 0
        {
            return denied("sysfs-remount");
        }
    }
    write_back("sysfs-remount", &format!("/sys/{SYSFS_SETTING}"))
}

/// Mounts a sysfs of its own and writes a host setting through it.
fn sysfs_fresh() -> String {
    let dir = "/tmp/mctl-escape-sysfs";
    let Ok(target) = mount_at(c"sysfs", dir) else { return denied("sysfs-fresh") };
    let r = write_back("sysfs-fresh", &format!("{dir}/{SYSFS_SETTING}"));
    unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    r
}

/// Mounts cgroup2 afresh and looks for cgroups above the machine's own (the host's
/// `init.scope`, `system.slice`, `machine.slice` sit at the top of the hierarchy).
fn cgroup_outside() -> String {
    let dir = "/tmp/mctl-escape-cgroup";
    let Ok(target) = mount_at(c"cgroup2", dir) else { return denied("cgroup-outside") };
    let outside = ["init.scope", "system.slice", "machine.slice", "user.slice"].iter().find(|d| {
        Path::new(&format!("{dir}/{d}")).exists() && !Path::new(&format!("/sys/fs/cgroup/{d}")).exists()
    });
    unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    match outside {
        Some(d) => format!("cgroup-outside: ESCAPED (sees the host's {d})"),
        None => "cgroup-outside: denied (only its own cgroups)".into(),
    }
}

/// Counts the processes /proc shows (the machine's own are a handful).
fn host_processes() -> String {
    let n = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
                .count()
        })
        .unwrap_or(0);
    if n > 20 {
        format!("host-processes: ESCAPED (sees {n} processes)")
    } else {
        format!("host-processes: denied (sees {n})")
    }
}

fn run(probe: &str, arg: Option<&str>) -> String {
    match probe {
        "handle-root" => handle_root(),
        "handle-cgroup" => handle_cgroup(),
        "keyring" => keyring(),
        "add-key" => add_key(),
        "bpf" => bpf(),
        "perf" => perf(),
        "kexec" => kexec(),
        "clock" => clock(),
        "module" => module(),
        "kmsg" => mknod_and_open("kmsg", "/tmp/mctl-escape-kmsg", libc::S_IFCHR, 1, 11, true),
        "block" => {
            let (maj, min) = arg.and_then(|a| a.split_once(':')).expect("block needs MAJOR:MINOR");
            mknod_and_open(
                "block",
                "/tmp/mctl-escape-block",
                libc::S_IFBLK,
                maj.parse().unwrap(),
                min.parse().unwrap(),
                false,
            )
        }
        "devices-v1" => devices_v1(),
        "proc-sys" => write_back("proc-sys", PROC_SETTING),
        "sysfs-write" => write_back("sysfs-write", &format!("/sys/{SYSFS_SETTING}")),
        "sysfs-remount" => sysfs_remount(),
        "sysfs-fresh" => sysfs_fresh(),
        "cgroup-outside" => cgroup_outside(),
        "host-processes" => host_processes(),
        other => format!("{other}: unknown probe"),
    }
}

const ALL: [&str; 18] = [
    "handle-root",
    "handle-cgroup",
    "keyring",
    "add-key",
    "bpf",
    "perf",
    "kexec",
    "clock",
    "module",
    "kmsg",
    "devices-v1",
    "block",
    "proc-sys",
    "sysfs-write",
    "cgroup-outside",
    "host-processes",
    // Last: in a machine without a user namespace these may make its /sys writable.
    "sysfs-fresh",
    "sysfs-remount",
];

/// Stalls the next exec of `path` with a fanotify permission event and reports the process
/// that was about to run it, as the guest sees it: `caps=CapEff seccomp=MODE exe=LINK`.
fn watch_exec(path: &str) {
    let fan =
        unsafe { libc::fanotify_init(libc::FAN_CLASS_CONTENT | libc::FAN_CLOEXEC, libc::O_RDONLY as u32) };
    if fan < 0 {
        println!("watch-exec: {}", denied("fanotify"));
        return;
    }
    let fan = unsafe { OwnedFd::from_raw_fd(fan) };
    let c = CString::new(path).unwrap();
    if unsafe {
        libc::fanotify_mark(
            fan.as_raw_fd(),
            libc::FAN_MARK_ADD,
            libc::FAN_OPEN_EXEC_PERM,
            libc::AT_FDCWD,
            c.as_ptr(),
        )
    } < 0
    {
        println!("watch-exec: {}", denied("fanotify_mark"));
        return;
    }
    println!("watching");
    let mut buf = [0u8; 4096];
    let n = unsafe { libc::read(fan.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    // A struct of 24 bytes: its size cannot wrap.
    #[allow(clippy::cast_possible_wrap)]
    let meta_size = std::mem::size_of::<libc::fanotify_event_metadata>() as isize;
    if n < meta_size {
        println!("watch-exec: no event");
        return;
    }
    let meta: libc::fanotify_event_metadata = unsafe { std::ptr::read_unaligned(buf.as_ptr().cast()) };
    let pid = meta.pid;
    let mut status = String::new();
    let _ =
        std::fs::File::open(format!("/proc/{pid}/status")).and_then(|mut f| f.read_to_string(&mut status));
    let field = |k: &str| {
        status.lines().find_map(|l| l.strip_prefix(k)).map(|v| v.trim().to_owned()).unwrap_or_default()
    };
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|e| format!("unreadable ({e})"));
    println!(
        "exec by pid {pid}: caps={} bounding={} seccomp={} exe={exe}",
        field("CapEff:"),
        field("CapBnd:"),
        field("Seccomp:")
    );
    let resp = libc::fanotify_response { fd: meta.fd, response: libc::FAN_ALLOW };
    unsafe {
        libc::write(
            fan.as_raw_fd(),
            (&resp as *const libc::fanotify_response).cast(),
            std::mem::size_of::<libc::fanotify_response>(),
        );
        libc::close(meta.fd);
    }
    // Stay until that process is gone: the machine (and its pid namespace) ends with us.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while Path::new(&format!("/proc/{pid}")).exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("all") => {
            for p in ALL {
                if p == "block" && args.get(1).is_none() {
                    continue;
                }
                println!("{}", run(p, args.get(1).map(String::as_str)));
            }
        }
        Some("watch-exec") => watch_exec(args.get(1).map(String::as_str).unwrap_or("/usr/bin/true")),
        Some(p) => println!("{}", run(p, args.get(1).map(String::as_str))),
        None => {
            eprintln!("usage: escape all [MAJ:MIN] | escape PROBE [ARG] | escape watch-exec PATH");
            std::process::exit(2);
        }
    }
}
