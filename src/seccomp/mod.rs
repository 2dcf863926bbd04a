//! The system call filter a machine's processes run under.
//!
//! Without a user namespace a guest's root holds real capabilities, so the kernel's own checks
//! do not keep it from calls that reach past the machine: `open_by_handle_at` opens any file of
//! a host file system (or the host's root cgroup) by handle, the keyring calls reach the host
//! root's keys, `bpf` and `perf_event_open` see the whole kernel. The filter is nspawn's: an
//! allow-list of groups (systemd's `@group` names) plus calls granted by the capabilities the
//! machine keeps; every other known call fails with `EPERM`. Calls the filter does not know
//! (newer than libseccomp's tables) fail with `ENOSYS`, so C libraries fall back to older ones
//! as they do on an older kernel. A second filter makes audit netlink sockets fail with
//! `EAFNOSUPPORT`, which audit userspace reads as "audit is off", as under nspawn.
//!
//! The filter is built once in the launcher (libseccomp compiles it to classic BPF) and only
//! loaded by the child right before it executes the payload.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Seek};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use caps::{Capability, CapsHashSet};
use libseccomp::{ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};

use crate::sys::linux;

mod compact;

/// Building or loading a filter failed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// libseccomp refused a step.
    #[error("system call filter: cannot {step}: {source}")]
    Build {
        /// What was being done.
        step: &'static str,
        /// libseccomp's error.
        #[source]
        source: libseccomp::error::SeccompError,
    },
    /// Exporting the compiled program failed.
    #[error("system call filter: cannot export the compiled program: {0}")]
    Export(#[source] std::io::Error),
    /// A name in a filter list is neither a known group nor a system call.
    #[error("unknown system call or group '{0}' (groups start with '@', e.g. @mount)")]
    UnknownName(String),
}

fn build(step: &'static str) -> impl FnOnce(libseccomp::error::SeccompError) -> SeccompError {
    move |source| SeccompError::Build { step, source }
}

/// systemd's system call groups, as `SystemCallFilter=` and `--system-call-filter=` name them.
/// Names unknown on an architecture are skipped there.
pub const GROUPS: &[(&str, &[&str])] = &[
    (
        "@default",
        &[
            "clock_getres",
            "clock_getres_time64",
            "clock_gettime",
            "clock_gettime64",
            "clock_nanosleep",
            "clock_nanosleep_time64",
            "execve",
            "exit",
            "exit_group",
            "futex",
            "futex_time64",
            "futex_waitv",
            "get_robust_list",
            "get_thread_area",
            "getegid",
            "getegid32",
            "geteuid",
            "geteuid32",
            "getgid",
            "getgid32",
            "getgroups",
            "getgroups32",
            "getpgid",
            "getpgrp",
            "getpid",
            "getppid",
            "getrandom",
            "getresgid",
            "getresgid32",
            "getresuid",
            "getresuid32",
            "getrlimit",
            "getsid",
            "gettid",
            "gettimeofday",
            "getuid",
            "getuid32",
            "membarrier",
            "mmap",
            "mmap2",
            "munmap",
            "nanosleep",
            "pause",
            "prlimit64",
            "restart_syscall",
            "riscv_flush_icache",
            "rseq",
            "rt_sigreturn",
            "sched_getaffinity",
            "sched_yield",
            "set_robust_list",
            "set_thread_area",
            "set_tid_address",
            "set_tls",
            "sigreturn",
            "time",
            "ugetrlimit",
        ],
    ),
    (
        "@aio",
        &[
            "io_cancel",
            "io_destroy",
            "io_getevents",
            "io_pgetevents",
            "io_pgetevents_time64",
            "io_setup",
            "io_submit",
            "io_uring_enter",
            "io_uring_register",
            "io_uring_setup",
        ],
    ),
    (
        "@basic-io",
        &[
            "_llseek",
            "close",
            "close_range",
            "dup",
            "dup2",
            "dup3",
            "lseek",
            "pread64",
            "preadv",
            "preadv2",
            "pwrite64",
            "pwritev",
            "pwritev2",
            "read",
            "readv",
            "write",
            "writev",
        ],
    ),
    ("@chown", &["chown", "chown32", "fchown", "fchown32", "fchownat", "lchown", "lchown32"]),
    (
        "@clock",
        &[
            "adjtimex",
            "clock_adjtime",
            "clock_adjtime64",
            "clock_settime",
            "clock_settime64",
            "settimeofday",
            "stime",
        ],
    ),
    ("@cpu-emulation", &["modify_ldt", "subpage_prot", "switch_endian", "vm86", "vm86old"]),
    (
        "@debug",
        &[
            "lookup_dcookie",
            "perf_event_open",
            "pidfd_getfd",
            "ptrace",
            "rtas",
            "s390_runtime_instr",
            "sys_debug_setcontext",
        ],
    ),
    (
        "@file-system",
        &[
            "access",
            "chdir",
            "chmod",
            "close",
            "creat",
            "faccessat",
            "faccessat2",
            "fallocate",
            "fchdir",
            "fchmod",
            "fchmodat",
            "fchmodat2",
            "fcntl",
            "fcntl64",
            "fgetxattr",
            "flistxattr",
            "fremovexattr",
            "fsetxattr",
            "fstat",
            "fstat64",
            "fstatat64",
            "fstatfs",
            "fstatfs64",
            "ftruncate",
            "ftruncate64",
            "futimesat",
            "getcwd",
            "getdents",
            "getdents64",
            "getxattr",
            "inotify_add_watch",
            "inotify_init",
            "inotify_init1",
            "inotify_rm_watch",
            "lgetxattr",
            "link",
            "linkat",
            "listxattr",
            "llistxattr",
            "lremovexattr",
            "lsetxattr",
            "lstat",
            "lstat64",
            "mkdir",
            "mkdirat",
            "mknod",
            "mknodat",
            "mmap",
            "mmap2",
            "munmap",
            "newfstatat",
            "oldfstat",
            "oldlstat",
            "oldstat",
            "open",
            "openat",
            "openat2",
            "readlink",
            "readlinkat",
            "removexattr",
            "rename",
            "renameat",
            "renameat2",
            "rmdir",
            "setxattr",
            "stat",
            "stat64",
            "statfs",
            "statfs64",
            "statx",
            "symlink",
            "symlinkat",
            "truncate",
            "truncate64",
            "unlink",
            "unlinkat",
            "utime",
            "utimensat",
            "utimensat_time64",
            "utimes",
        ],
    ),
    (
        "@io-event",
        &[
            "_newselect",
            "epoll_create",
            "epoll_create1",
            "epoll_ctl",
            "epoll_ctl_old",
            "epoll_pwait",
            "epoll_pwait2",
            "epoll_wait",
            "epoll_wait_old",
            "eventfd",
            "eventfd2",
            "poll",
            "ppoll",
            "ppoll_time64",
            "pselect6",
            "pselect6_time64",
            "select",
        ],
    ),
    (
        "@ipc",
        &[
            "ipc",
            "memfd_create",
            "mq_getsetattr",
            "mq_notify",
            "mq_open",
            "mq_timedreceive",
            "mq_timedreceive_time64",
            "mq_timedsend",
            "mq_timedsend_time64",
            "mq_unlink",
            "msgctl",
            "msgget",
            "msgrcv",
            "msgsnd",
            "pipe",
            "pipe2",
            "process_vm_readv",
            "process_vm_writev",
            "semctl",
            "semget",
            "semop",
            "semtimedop",
            "semtimedop_time64",
            "shmat",
            "shmctl",
            "shmdt",
            "shmget",
        ],
    ),
    ("@keyring", &["add_key", "keyctl", "request_key"]),
    ("@memlock", &["mlock", "mlock2", "mlockall", "munlock", "munlockall"]),
    ("@module", &["delete_module", "finit_module", "init_module"]),
    (
        "@mount",
        &[
            "chroot",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "pivot_root",
            "umount",
            "umount2",
        ],
    ),
    (
        "@network-io",
        &[
            "accept",
            "accept4",
            "bind",
            "connect",
            "getpeername",
            "getsockname",
            "getsockopt",
            "listen",
            "recv",
            "recvfrom",
            "recvmmsg",
            "recvmmsg_time64",
            "recvmsg",
            "send",
            "sendmmsg",
            "sendmsg",
            "sendto",
            "setsockopt",
            "shutdown",
            "socket",
            "socketcall",
            "socketpair",
        ],
    ),
    (
        "@obsolete",
        &[
            "_sysctl",
            "afs_syscall",
            "bdflush",
            "break",
            "create_module",
            "ftime",
            "get_kernel_syms",
            "getpmsg",
            "gtty",
            "idle",
            "lock",
            "mpx",
            "prof",
            "profil",
            "putpmsg",
            "query_module",
            "security",
            "sgetmask",
            "ssetmask",
            "stty",
            "sysfs",
            "tuxcall",
            "ulimit",
            "uselib",
            "ustat",
            "vserver",
        ],
    ),
    ("@pkey", &["pkey_alloc", "pkey_free", "pkey_mprotect"]),
    (
        "@privileged",
        &[
            "@chown",
            "@clock",
            "@module",
            "@raw-io",
            "@reboot",
            "@swap",
            "_sysctl",
            "acct",
            "bpf",
            "capset",
            "chroot",
            "fanotify_init",
            "fanotify_mark",
            "nfsservctl",
            "open_by_handle_at",
            "pivot_root",
            "quotactl",
            "setdomainname",
            "setfsuid",
            "setfsuid32",
            "setgroups",
            "setgroups32",
            "sethostname",
            "setresuid",
            "setresuid32",
            "setreuid",
            "setreuid32",
            "setuid",
            "setuid32",
            "vhangup",
        ],
    ),
    (
        "@process",
        &[
            "arch_prctl",
            "capget",
            "clone",
            "clone3",
            "execveat",
            "fork",
            "getrusage",
            "kill",
            "pidfd_open",
            "pidfd_send_signal",
            "prctl",
            "rt_sigqueueinfo",
            "rt_tgsigqueueinfo",
            "setns",
            "swapcontext",
            "tgkill",
            "times",
            "tkill",
            "unshare",
            "vfork",
            "wait4",
            "waitid",
            "waitpid",
        ],
    ),
    (
        "@raw-io",
        &[
            "ioperm",
            "iopl",
            "pciconfig_iobase",
            "pciconfig_read",
            "pciconfig_write",
            "s390_pci_mmio_read",
            "s390_pci_mmio_write",
        ],
    ),
    ("@reboot", &["kexec_file_load", "kexec_load", "reboot"]),
    (
        "@resources",
        &[
            "ioprio_set",
            "mbind",
            "migrate_pages",
            "move_pages",
            "nice",
            "sched_setaffinity",
            "sched_setattr",
            "sched_setparam",
            "sched_setscheduler",
            "set_mempolicy",
            "set_mempolicy_home_node",
            "setpriority",
            "setrlimit",
        ],
    ),
    ("@sandbox", &["landlock_add_rule", "landlock_create_ruleset", "landlock_restrict_self", "seccomp"]),
    (
        "@setuid",
        &[
            "setgid",
            "setgid32",
            "setgroups",
            "setgroups32",
            "setregid",
            "setregid32",
            "setresgid",
            "setresgid32",
            "setresuid",
            "setresuid32",
            "setreuid",
            "setreuid32",
            "setuid",
            "setuid32",
        ],
    ),
    (
        "@signal",
        &[
            "rt_sigaction",
            "rt_sigpending",
            "rt_sigprocmask",
            "rt_sigsuspend",
            "rt_sigtimedwait",
            "rt_sigtimedwait_time64",
            "sigaction",
            "sigaltstack",
            "signal",
            "signalfd",
            "signalfd4",
            "sigpending",
            "sigprocmask",
            "sigsuspend",
        ],
    ),
    ("@swap", &["swapoff", "swapon"]),
    ("@sync", &["fdatasync", "fsync", "msync", "sync", "sync_file_range", "sync_file_range2", "syncfs"]),
    (
        "@system-service",
        &[
            "@aio",
            "@basic-io",
            "@chown",
            "@default",
            "@file-system",
            "@io-event",
            "@ipc",
            "@keyring",
            "@memlock",
            "@network-io",
            "@process",
            "@resources",
            "@sandbox",
            "@setuid",
            "@signal",
            "@sync",
            "@timer",
            "brk",
            "capget",
            "capset",
            "copy_file_range",
            "fadvise64",
            "fadvise64_64",
            "flock",
            "get_mempolicy",
            "getcpu",
            "getpriority",
            "ioctl",
            "ioprio_get",
            "kcmp",
            "madvise",
            "mprotect",
            "mremap",
            "name_to_handle_at",
            "oldolduname",
            "olduname",
            "personality",
            "readahead",
            "readdir",
            "remap_file_pages",
            "sched_get_priority_max",
            "sched_get_priority_min",
            "sched_getattr",
            "sched_getparam",
            "sched_getscheduler",
            "sched_rr_get_interval",
            "sched_rr_get_interval_time64",
            "sendfile",
            "sendfile64",
            "setfsgid",
            "setfsgid32",
            "setfsuid",
            "setfsuid32",
            "setpgid",
            "setsid",
            "splice",
            "sysinfo",
            "tee",
            "umask",
            "uname",
            "userfaultfd",
            "vmsplice",
        ],
    ),
    (
        "@timer",
        &[
            "alarm",
            "getitimer",
            "setitimer",
            "timer_create",
            "timer_delete",
            "timer_getoverrun",
            "timer_gettime",
            "timer_gettime64",
            "timer_settime",
            "timer_settime64",
            "timerfd_create",
            "timerfd_gettime",
            "timerfd_gettime64",
            "timerfd_settime",
            "timerfd_settime64",
            "times",
        ],
    ),
];

/// What a machine may call: nspawn's allow-list, item by item, each granted always or only when
/// the machine keeps a capability. Deliberately absent, as in nspawn: `@keyring` (keys are not
/// namespaced), `bpf` (neither is bpffs), `perf_event_open`, `open_by_handle_at`, `kexec_*`,
/// `fanotify_*`, `quotactl`, `lookup_dcookie`, `nfsservctl`, `@swap`, `@obsolete`, `@pkey`,
/// `@cpu-emulation`.
const MACHINE_ALLOW: &[(Option<Capability>, &str)] = &[
    (None, "@aio"),
    (None, "@basic-io"),
    (None, "@chown"),
    (None, "@default"),
    (None, "@file-system"),
    (None, "@io-event"),
    (None, "@ipc"),
    (None, "@mount"),
    (None, "@network-io"),
    (None, "@process"),
    (None, "@resources"),
    (None, "@sandbox"),
    (None, "@setuid"),
    (None, "@signal"),
    (None, "@sync"),
    (None, "@timer"),
    (Some(Capability::CAP_SYS_TIME), "@clock"),
    (Some(Capability::CAP_SYS_MODULE), "@module"),
    (Some(Capability::CAP_SYS_RAWIO), "@raw-io"),
    (Some(Capability::CAP_IPC_LOCK), "@memlock"),
    (None, "brk"),
    (None, "capget"),
    (None, "capset"),
    (None, "copy_file_range"),
    (None, "fadvise64"),
    (None, "fadvise64_64"),
    (None, "flock"),
    (None, "get_mempolicy"),
    (None, "getcpu"),
    (None, "getpriority"),
    (None, "ioctl"),
    (None, "ioprio_get"),
    (None, "kcmp"),
    (None, "madvise"),
    (None, "mincore"),
    (None, "mprotect"),
    (None, "mremap"),
    (None, "name_to_handle_at"),
    (None, "oldolduname"),
    (None, "olduname"),
    (None, "personality"),
    (None, "readahead"),
    (None, "readdir"),
    (None, "remap_file_pages"),
    (None, "sched_get_priority_max"),
    (None, "sched_get_priority_min"),
    (None, "sched_getattr"),
    (None, "sched_getparam"),
    (None, "sched_getscheduler"),
    (None, "sched_rr_get_interval"),
    (None, "sched_rr_get_interval_time64"),
    (None, "sendfile"),
    (None, "sendfile64"),
    (None, "setdomainname"),
    (None, "setfsgid"),
    (None, "setfsgid32"),
    (None, "setfsuid"),
    (None, "setfsuid32"),
    (None, "sethostname"),
    (None, "setpgid"),
    (None, "setsid"),
    (None, "splice"),
    (None, "sysinfo"),
    (None, "tee"),
    (None, "umask"),
    (None, "uname"),
    (None, "userfaultfd"),
    (None, "vmsplice"),
    (Some(Capability::CAP_SYS_PACCT), "acct"),
    (Some(Capability::CAP_SYS_PTRACE), "process_vm_readv"),
    (Some(Capability::CAP_SYS_PTRACE), "process_vm_writev"),
    (Some(Capability::CAP_SYS_PTRACE), "ptrace"),
    (Some(Capability::CAP_SYS_PTRACE), "pidfd_getfd"),
    (Some(Capability::CAP_SYS_BOOT), "reboot"),
    (Some(Capability::CAP_SYSLOG), "syslog"),
    (Some(Capability::CAP_SYS_TTY_CONFIG), "vhangup"),
];

/// Changes to the default allow-list (`--system-call-filter=` in nspawn's syntax).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterChanges {
    /// Calls and groups allowed in addition.
    pub allow: Vec<String>,
    /// Calls and groups denied even if the default list allows them (wins over `allow`).
    pub deny: Vec<String>,
    /// `--suppress-sync`: the sync calls do nothing and succeed, opening with O_SYNC or
    /// O_DSYNC fails with EINVAL (nspawn's behaviour).
    pub suppress_sync: bool,
}

impl FilterChanges {
    /// Adds one `--system-call-filter=` value: space-separated names, all denied when the value
    /// starts with `~`. Unknown names are refused.
    pub fn add_option(&mut self, value: &str) -> Result<(), SeccompError> {
        let (deny, list) = match value.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, value),
        };
        for name in list.split_whitespace() {
            if expand(name).is_none() {
                return Err(SeccompError::UnknownName(name.to_owned()));
            }
            if deny { self.deny.push(name.to_owned()) } else { self.allow.push(name.to_owned()) }
        }
        Ok(())
    }
}

/// The system call names of a group or a single call; `None` for an unknown name.
pub fn expand(name: &str) -> Option<BTreeSet<&str>> {
    let mut out = BTreeSet::new();
    expand_into(name, &mut out, 0, true)?;
    Some(out)
}

/// [`expand`] for the built-in lists, whose names a unit test checks once: looking every
/// name up in libseccomp's tables costs a `mctl run` a quarter of a millisecond.
fn expand_builtin<'a>(name: &'a str, out: &mut BTreeSet<&'a str>) {
    let _ = expand_into(name, out, 0, false);
}

fn expand_into<'a>(name: &'a str, out: &mut BTreeSet<&'a str>, depth: u32, check: bool) -> Option<()> {
    if let Some((_, members)) = GROUPS.iter().find(|(g, _)| *g == name) {
        if depth > 4 {
            return None;
        }
        for m in *members {
            expand_into(m, out, depth + 1, check)?;
        }
        return Some(());
    }
    if name.starts_with('@') || (check && !is_known_call(name)) {
        return None;
    }
    out.insert(name);
    Some(())
}

/// Whether `name` is a system call libseccomp knows (on any architecture) or one the groups list.
fn is_known_call(name: &str) -> bool {
    ScmpSyscall::from_name(name).is_ok() || GROUPS.iter().any(|(_, members)| members.contains(&name))
}

/// A compiled filter, ready to load: classic BPF programs, loaded in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyscallFilter {
    /// Each program's 8-byte instructions, one per `u64` (aligned as the kernel wants them).
    programs: Vec<Vec<u64>>,
}

/// The architectures whose system calls a process of this build may make.
fn local_archs() -> &'static [ScmpArch] {
    if cfg!(target_arch = "x86_64") {
        &[ScmpArch::X8664, ScmpArch::X86, ScmpArch::X32]
    } else if cfg!(target_arch = "aarch64") {
        &[ScmpArch::Aarch64, ScmpArch::Arm]
    } else {
        &[ScmpArch::Native]
    }
}

/// The calls a machine keeping `caps` may make, after `changes`.
pub fn allowed_calls(caps: &CapsHashSet, changes: &FilterChanges) -> Result<BTreeSet<String>, SeccompError> {
    let mut builtin = BTreeSet::new();
    for (cap, item) in MACHINE_ALLOW {
        if cap.is_none_or(|c| caps.contains(&c)) {
            expand_builtin(item, &mut builtin);
        }
    }
    let mut allowed: BTreeSet<String> = builtin.into_iter().map(str::to_owned).collect();
    for item in &changes.allow {
        let names = expand(item).ok_or_else(|| SeccompError::UnknownName(item.clone()))?;
        allowed.extend(names.into_iter().map(str::to_owned));
    }
    for item in &changes.deny {
        let names = expand(item).ok_or_else(|| SeccompError::UnknownName(item.clone()))?;
        for n in names {
            allowed.remove(n);
        }
    }
    Ok(allowed)
}

impl SyscallFilter {
    /// The filter for a machine that keeps the capabilities `caps`, after `changes`.
    ///
    /// libseccomp needs about 20 ms to compile it, as much as the rest of a `mctl run`, so a
    /// compiled filter is kept in `cache` (a root-only directory), named by a digest of
    /// everything it is compiled from. The digest is of the inputs, not of the list of allowed
    /// calls they expand to: expanding costs a launch 0.15 ms.
    pub fn for_machine(
        caps: &CapsHashSet,
        changes: &FilterChanges,
        cache: Option<&Path>,
    ) -> Result<Self, SeccompError> {
        let key = cache_key(caps, changes);
        let cached = cache.map(|dir| dir.join(format!("{key}.bpf")));
        if let Some(f) = cached.as_deref().and_then(|p| fs::read(p).ok()).and_then(|b| Self::decode(&b)) {
            return Ok(f);
        }
        let allowed = allowed_calls(caps, changes)?;
        let filter = Self::compile(&allowed, changes.suppress_sync)?;
        if let (Some(dir), Some(path)) = (cache, cached)
            && let Some(bytes) = filter.encode()
        {
            // A cache that cannot be written only costs time.
            let _ = store(dir, &path, &bytes);
        }
        Ok(filter)
    }

    fn compile(allowed: &BTreeSet<String>, suppress_sync: bool) -> Result<Self, SeccompError> {
        let main = export(&main_filter(allowed)?)?;
        let mut audit =
            ScmpFilterContext::new(ScmpAction::Allow).map_err(build("create the audit filter"))?;
        add_local_archs(&mut audit)?;
        let socket = ScmpSyscall::from_name("socket").map_err(build("resolve socket"))?;
        audit
            .add_rule_conditional(
                ScmpAction::Errno(libc::EAFNOSUPPORT),
                socket,
                &[
                    ScmpArgCompare::new(0, ScmpCompareOp::Equal, libc::AF_NETLINK as u64),
                    ScmpArgCompare::new(2, ScmpCompareOp::Equal, libc::NETLINK_AUDIT as u64),
                ],
            )
            .map_err(build("add the audit socket rule"))?;
        let mut programs = vec![compact::compact(&main).unwrap_or(main), export(&audit)?];
        if suppress_sync {
            programs.push(export(&sync_suppression()?)?);
        }
        Ok(Self { programs })
    }

    /// Installs the filter on the calling thread (inherited by children and kept across exec).
    /// Needs CAP_SYS_ADMIN or no_new_privs.
    pub fn load(&self) -> std::io::Result<()> {
        for p in &self.programs {
            linux::load_seccomp_program(p)?;
        }
        Ok(())
    }

    /// Cache file layout: for each program, its instruction count (u32, little-endian), then
    /// its instructions. None for a program too long to count so (then there is no cache).
    fn encode(&self) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        for p in &self.programs {
            out.extend_from_slice(&u32::try_from(p.len()).ok()?.to_le_bytes());
            for insn in p {
                out.extend_from_slice(&insn.to_ne_bytes());
            }
        }
        Some(out)
    }

    fn decode(mut bytes: &[u8]) -> Option<Self> {
        let mut programs = Vec::new();
        while !bytes.is_empty() {
            let (count, rest) = bytes.split_first_chunk::<4>()?;
            let count = u32::from_le_bytes(*count) as usize;
            let body = rest.get(..count.checked_mul(8)?)?;
            programs.push(
                body.chunks_exact(8).map(|c| u64::from_ne_bytes(c.try_into().expect("8 bytes"))).collect(),
            );
            bytes = &rest[body.len()..];
        }
        (programs.len() == 2 || programs.len() == 3).then_some(Self { programs })
    }
}

/// The allow-list itself: `allowed` calls allowed, every other known call EPERM, unknown
/// numbers ENOSYS.
fn main_filter(allowed: &BTreeSet<String>) -> Result<ScmpFilterContext, SeccompError> {
    let mut main =
        ScmpFilterContext::new(ScmpAction::Errno(libc::ENOSYS)).map_err(build("create the filter"))?;
    // A binary tree instead of a linear list: every call is decided in a few comparisons.
    main.set_ctl_optimize(2).map_err(build("set the optimizer level"))?;
    add_local_archs(&mut main)?;
    // Every call known by name is decided explicitly; only unknown numbers get ENOSYS.
    for name in known_names() {
        let Ok(call) = ScmpSyscall::from_name(&name) else { continue };
        let action =
            if allowed.contains(name.as_str()) { ScmpAction::Allow } else { ScmpAction::Errno(libc::EPERM) };
        // A call missing on one of the architectures is simply not added there.
        let _ = main.add_rule(action, call);
    }
    Ok(main)
}

/// A program of its own for `--suppress-sync` (the kernel takes the strictest answer of all
/// programs: an errno here wins over the main filter's allow): the sync calls return 0 without
/// doing anything, opens asking for O_SYNC or O_DSYNC (O_SYNC includes its bit) fail with
/// EINVAL, and openat2, whose flags a filter cannot see, is reported missing so callers use
/// openat.
fn sync_suppression() -> Result<ScmpFilterContext, SeccompError> {
    let mut ctx = ScmpFilterContext::new(ScmpAction::Allow).map_err(build("create the sync filter"))?;
    add_local_archs(&mut ctx)?;
    for name in ["sync", "syncfs", "fsync", "fdatasync", "sync_file_range", "sync_file_range2", "msync"] {
        if let Ok(call) = ScmpSyscall::from_name(name) {
            // Missing on some architectures: nothing to suppress there.
            let _ = ctx.add_rule(ScmpAction::Errno(0), call);
        }
    }
    let dsync = libc::O_DSYNC as u64;
    for (name, arg) in [("open", 1), ("openat", 2)] {
        if let Ok(call) = ScmpSyscall::from_name(name) {
            let cmp = ScmpArgCompare::new(arg, ScmpCompareOp::MaskedEqual(dsync), dsync);
            let _ = ctx.add_rule_conditional(ScmpAction::Errno(libc::EINVAL), call, &[cmp]);
        }
    }
    if let Ok(call) = ScmpSyscall::from_name("openat2") {
        let _ = ctx.add_rule(ScmpAction::Errno(libc::ENOSYS), call);
    }
    Ok(ctx)
}

fn add_local_archs(ctx: &mut ScmpFilterContext) -> Result<(), SeccompError> {
    for arch in local_archs() {
        if *arch != ScmpArch::Native && !ctx.is_arch_present(*arch).map_err(build("check an architecture"))? {
            ctx.add_arch(*arch).map_err(build("add an architecture"))?;
        }
    }
    Ok(())
}

/// Names a compiled filter by what it is compiled from: the layout of [`SyscallFilter::compile`]
/// (bump [`FILTER_LAYOUT`] when it changes), this file's lists and code (a digest the build
/// script takes of it), libseccomp's version (its tables decide which calls are known), the
/// architectures, the capabilities kept and the changes asked for.
fn cache_key(caps: &CapsHashSet, changes: &FilterChanges) -> String {
    let mut h = Fnv128::default();
    h.update(FILTER_LAYOUT.to_le_bytes());
    h.update(concat!(env!("MCTL_SECCOMP_SOURCE_DIGEST"), "\n"));
    if changes.suppress_sync {
        h.update(b"suppress-sync\n");
    }
    if let Ok(v) = libseccomp::ScmpVersion::current() {
        h.update(format!("libseccomp {}.{}.{}\n", v.major, v.minor, v.micro));
    }
    h.update(format!("{:?}\n", local_archs()));
    let mut kept: Vec<String> = caps.iter().map(ToString::to_string).collect();
    kept.sort();
    for (what, names) in [("cap", &kept), ("allow", &changes.allow), ("deny", &changes.deny)] {
        for name in names {
            h.update(format!("{what} {name}\n"));
        }
    }
    format!("{:032x}", h.0)
}

/// FNV-1a over 128 bits. The key only tells the files of root's own cache directory apart, and
/// unlike SHA-256 it asks nothing of the CPU: the sha2 crate's feature probe executes `cpuid`,
/// which traps to the hypervisor in a VM (about 45 µs of every launch here).
struct Fnv128(u128);

impl Default for Fnv128 {
    fn default() -> Self {
        Fnv128(0x6c62_272e_07bb_0142_62b8_2175_6295_c58d)
    }
}

impl Fnv128 {
    fn update(&mut self, bytes: impl AsRef<[u8]>) {
        for b in bytes.as_ref() {
            self.0 = (self.0 ^ u128::from(*b)).wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
        }
    }
}

/// The version of the compiled filter's layout (default actions, rule kinds, programs).
const FILTER_LAYOUT: u32 = 4;

fn store(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let tmp = dir.join(format!(".{}.tmp", std::process::id()));
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// Every system call name libseccomp knows for this build's architectures, plus those the
/// group tables list.
fn known_names() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for arch in local_archs() {
        for nr in 0..1024 {
            let base = if *arch == ScmpArch::X32 { 0x4000_0000 } else { 0 };
            if let Ok(name) = ScmpSyscall::from(base + nr).get_name_by_arch(*arch) {
                names.insert(name);
            }
        }
    }
    for (_, members) in GROUPS {
        names.extend(members.iter().filter(|m| !m.starts_with('@')).map(|m| (*m).to_owned()));
    }
    names.extend(MACHINE_ALLOW.iter().filter(|(_, m)| !m.starts_with('@')).map(|(_, m)| (*m).to_owned()));
    names
}

fn export(ctx: &ScmpFilterContext) -> Result<Vec<u64>, SeccompError> {
    let fd = rustix::fs::memfd_create("mctl-seccomp", rustix::fs::MemfdFlags::CLOEXEC)
        .map_err(|e| SeccompError::Export(e.into()))?;
    let mut file = std::fs::File::from(fd);
    ctx.export_bpf(&file).map_err(build("export the program"))?;
    file.rewind().map_err(SeccompError::Export)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(SeccompError::Export)?;
    if bytes.len() % 8 != 0 {
        return Err(SeccompError::Export(std::io::Error::other("the program is not whole instructions")));
    }
    Ok(bytes.chunks_exact(8).map(|c| u64::from_ne_bytes(c.try_into().expect("chunks of 8"))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_caps() -> CapsHashSet {
        crate::launcher::security::DEFAULT_CAPS.into_iter().collect()
    }

    #[test]
    fn every_group_member_is_a_group_or_known_somewhere() {
        for (g, members) in GROUPS {
            for m in *members {
                if m.starts_with('@') {
                    assert!(GROUPS.iter().any(|(n, _)| n == m), "{g} names unknown group {m}");
                }
            }
            assert!(expand(g).is_some(), "{g} does not expand");
        }
        for (_, item) in MACHINE_ALLOW {
            assert!(expand(item).is_some(), "the machine's list names unknown {item}");
        }
    }

    #[test]
    fn the_default_list_keeps_host_reaching_calls_out() {
        let allowed = allowed_calls(&default_caps(), &FilterChanges::default()).unwrap();
        for denied in [
            "open_by_handle_at",
            "keyctl",
            "add_key",
            "request_key",
            "bpf",
            "perf_event_open",
            "kexec_load",
            "kexec_file_load",
            "init_module",
            "finit_module",
            "swapon",
            "settimeofday",
            "clock_settime",
            "iopl",
            "fanotify_init",
            "quotactl",
        ] {
            assert!(!allowed.contains(denied), "{denied} is allowed");
        }
        for needed in [
            "execve",
            "openat2",
            "clone3",
            "mount",
            "setns",
            "reboot",
            "ptrace",
            "statx",
            "close_range",
            "epoll_pwait2",
            "seccomp",
            "name_to_handle_at",
            "io_uring_setup",
        ] {
            assert!(allowed.contains(needed), "{needed} is not allowed");
        }
    }

    #[test]
    fn capabilities_and_changes_move_calls_in_and_out() {
        let mut caps = default_caps();
        caps.insert(Capability::CAP_SYS_TIME);
        caps.remove(&Capability::CAP_SYS_PTRACE);
        let allowed = allowed_calls(&caps, &FilterChanges::default()).unwrap();
        assert!(allowed.contains("settimeofday") && !allowed.contains("ptrace"));

        let mut changes = FilterChanges::default();
        changes.add_option("@keyring bpf").unwrap();
        changes.add_option("~@mount").unwrap();
        let allowed = allowed_calls(&default_caps(), &changes).unwrap();
        assert!(allowed.contains("keyctl") && allowed.contains("bpf"));
        assert!(!allowed.contains("mount") && !allowed.contains("pivot_root"));
        assert!(matches!(changes.add_option("no_such_call"), Err(SeccompError::UnknownName(_))));
        assert!(matches!(changes.add_option("@nope"), Err(SeccompError::UnknownName(_))));
    }

    #[test]
    fn the_cache_key_is_fnv1a_128() {
        // The published test vector of FNV-1a, 128 bits, for "a".
        let mut h = Fnv128::default();
        h.update("a");
        assert_eq!(format!("{:032x}", h.0), "d228cb696f1a8caf78912b704e4a8964");
    }

    #[test]
    fn the_cache_tells_apart_every_input_a_filter_is_made_from() {
        let cache = tempfile::tempdir().unwrap();
        let make = |caps: &CapsHashSet, changes: &FilterChanges| {
            SyscallFilter::for_machine(caps, changes, Some(cache.path())).unwrap()
        };
        let plain = make(&default_caps(), &FilterChanges::default());
        let mut fewer = default_caps();
        fewer.remove(&Capability::CAP_SYS_PTRACE);
        let mut denied = FilterChanges::default();
        denied.add_option("~getpid").unwrap();
        let synced = FilterChanges { suppress_sync: true, ..FilterChanges::default() };
        let variants = [
            make(&fewer, &FilterChanges::default()),
            make(&default_caps(), &denied),
            make(&default_caps(), &synced),
        ];
        for (i, v) in variants.iter().enumerate() {
            assert_ne!(*v, plain, "variant {i} got the default filter from the cache");
        }
        assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 4);
        // Each comes back from the cache as compiled.
        assert_eq!(make(&fewer, &FilterChanges::default()), variants[0]);
        assert_eq!(make(&default_caps(), &denied), variants[1]);
        assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 4);
    }

    #[test]
    fn the_machine_filter_is_loaded_compacted() {
        let allowed = allowed_calls(&default_caps(), &FilterChanges::default()).unwrap();
        let libseccomps = export(&main_filter(&allowed).unwrap()).unwrap();
        let filter = SyscallFilter::compile(&allowed, false).unwrap();
        // compact() itself checks that both programs answer alike everywhere.
        assert_eq!(Some(&filter.programs[0]), compact::compact(&libseccomps).as_ref());
        eprintln!("libseccomp: {} instructions, compacted: {}", libseccomps.len(), filter.programs[0].len());
        assert!(filter.programs[0].len() * 2 < libseccomps.len());
    }

    #[test]
    fn a_loaded_filter_denies_with_eperm_and_allows_the_rest() {
        let cache = tempfile::tempdir().unwrap();
        let started = std::time::Instant::now();
        let filter =
            SyscallFilter::for_machine(&default_caps(), &FilterChanges::default(), Some(cache.path()))
                .unwrap();
        let compiled = started.elapsed();
        let started = std::time::Instant::now();
        let again =
            SyscallFilter::for_machine(&default_caps(), &FilterChanges::default(), Some(cache.path()))
                .unwrap();
        eprintln!("compiled in {compiled:?}, from the cache in {:?}", started.elapsed());
        assert_eq!(again, filter);
        assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 1);
        // Without TSYNC a filter binds only the thread that loads it: a thread of its own.
        let probe = std::thread::spawn(move || {
            filter.load().expect("load the filter");
            [
                linux::raw_syscall_errno(libc::SYS_keyctl, 0),
                linux::raw_syscall_errno(libc::SYS_open_by_handle_at, 0),
                // An audit netlink socket looks like a kernel without audit.
                linux::raw_syscall_errno3(
                    libc::SYS_socket,
                    libc::AF_NETLINK.into(),
                    libc::SOCK_RAW.into(),
                    libc::NETLINK_AUDIT.into(),
                ),
                // A number no kernel has yet: ENOSYS, as on an older kernel.
                linux::raw_syscall_errno(1000, 0),
                linux::raw_syscall_errno(libc::SYS_getpid, 0),
            ]
        });
        let got = probe.join().unwrap();
        assert_eq!(
            got,
            [Some(libc::EPERM), Some(libc::EPERM), Some(libc::EAFNOSUPPORT), Some(libc::ENOSYS), None]
        );
    }
}
