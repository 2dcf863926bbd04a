//! Attacks a guest's root tries on its host, run for real inside machines with the probes of
//! `examples/escape.rs`: each must fail under the default sandbox. Where a probe can show that
//! it would have worked (the system call filter opened up on purpose), the test shows that too,
//! so a green run means the defence held, not that the probe was blind.

mod common;

use std::io::{BufRead, BufReader};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The probe program, built by `cargo test` beside the binaries under test.
fn escape_binary() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_mctl")).parent().unwrap().join("examples/escape");
    assert!(p.exists(), "{} is missing: run the suite with `cargo test` (it builds examples)", p.display());
    p
}

/// `MAJOR:MINOR` of the block device the host's root file system is on.
fn host_root_device() -> String {
    let dev = std::fs::metadata("/").unwrap().dev();
    format!("{}:{}", nix::sys::stat::major(dev), nix::sys::stat::minor(dev))
}

/// Runs the probes in a read-only bookworm machine (glibc for the probe program) with `opts`.
fn probe(opts: &[&str], args: &[&str]) -> String {
    let bind = format!("{}:/run/escape", escape_binary().display());
    let o = mctl()
        .args(["run", "-q", "--register=no", "--read-only", "--tmpfs=/tmp", "--bind-ro", &bind, "-D"])
        .arg(debian_tree())
        .args(opts)
        .arg("--")
        .arg("/run/escape")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "probe run failed: {}", stderr(&o));
    stdout(&o)
}

fn result<'a>(report: &'a str, probe: &str) -> &'a str {
    report
        .lines()
        .find_map(|l| l.strip_prefix(probe).and_then(|r| r.strip_prefix(": ")))
        .unwrap_or_else(|| panic!("no result for {probe} in:\n{report}"))
}

#[test]
fn the_default_sandbox_keeps_a_guest_root_from_the_host() {
    // The probes run on the shared fixture (read-only): it must come out unchanged.
    let fixture_before = tree_digest(debian_tree());
    let dev = host_root_device();
    let report = probe(&[], &["all", &dev]);
    let probes = [
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
    ];
    for p in probes {
        assert!(result(&report, p).starts_with("denied"), "{p} got through:\n{report}");
    }
    // The host-reaching calls fail in the filter itself (EPERM before the kernel looks).
    for p in ["handle-root", "handle-cgroup", "keyring", "add-key", "bpf", "perf", "kexec", "clock", "module"]
    {
        assert_eq!(result(&report, p), "denied (EPERM)", "{p}:\n{report}");
    }

    // The same probes with those calls let through: they reach the host. (This is what a
    // machine without the filter allowed; the listing is read, nothing is changed.)
    let open =
        probe(&["--system-call-filter=open_by_handle_at keyctl bpf perf_event_open"], &["handle-root"]);
    assert!(open.starts_with("handle-root: ESCAPED"), "{open}");
    let open = probe(&["--system-call-filter=open_by_handle_at"], &["handle-cgroup"]);
    assert!(open.starts_with("handle-cgroup: ESCAPED"), "{open}");
    let open = probe(&["--system-call-filter=@keyring"], &["keyring"]);
    assert!(open.starts_with("keyring: ESCAPED"), "{open}");
    // ... and the filter can also take calls away.
    let closed = probe(&["--system-call-filter=~@mount"], &["devices-v1"]);
    assert_eq!(result(&closed, "devices-v1"), "denied (EPERM)", "{closed}");
    assert_eq!(tree_digest(debian_tree()), fixture_before, "the probes changed the shared fixture");
}

/// With a user namespace (`-U`) the guest's root holds no capability on the host: every probe
/// fails, the two that get through without one (a remounted or fresh sysfs, as under nspawn
/// without `-U`) included.
#[test]
fn in_a_user_namespace_no_probe_reaches_the_host() {
    let dev = host_root_device();
    let plain = probe(&[], &["sysfs-fresh"]);
    assert!(plain.starts_with("sysfs-fresh: ESCAPED"), "the probe is blind: {plain}");
    let report = probe(&["-U"], &["all", &dev]);
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines.len(), 18, "every probe ran:\n{report}");
    for line in lines {
        assert!(line.contains(": denied"), "got through with -U: {line}\n{report}");
    }
}

#[test]
fn a_bad_system_call_filter_is_refused() {
    let o = mctl()
        .args(["run", "-q", "--register=no", "--read-only", "--system-call-filter=@nonsense", "-D"])
        .arg(debian_tree())
        .args(["--", "/bin/true"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("unknown system call or group '@nonsense'"), "{}", stderr(&o));
}

/// PID 1 loads the filter before its last waits (for the outer child's word that the host's
/// tree is detached, and with a network of its own for the launcher's go): a filter that takes
/// the socket calls away (`~@network-io`, so recvmsg) must not keep it from hearing either.
#[test]
fn a_filter_without_socket_calls_still_lets_the_machine_start() {
    for network in [None, Some("--private-network")] {
        let o = mctl()
            .args(["run", "-q", "--register=no", "--read-only", "-M", "nosockets"])
            .arg("--system-call-filter=~@network-io")
            .args(network)
            .arg("-D")
            .arg(debian_tree())
            .args(["--", "/bin/sh", "-c", "echo started; exit 3"])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(3), "{network:?}: {}", stderr(&o));
        assert_eq!(String::from_utf8_lossy(&o.stdout), "started\n", "{network:?}");
    }
}

/// The device program alone (no v1 controller involved): a shell moved into a cgroup2 directory
/// that carries it may open /dev/zero but not /dev/kmsg, and may not create a block device.
#[test]
fn the_cgroup2_device_program_holds_the_list() {
    let unified = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .map(Path::new)
        .find(|p| p.join("cgroup.procs").exists() && p.join("cgroup.controllers").exists())
        .expect("a cgroup2 hierarchy");
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let own = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap().trim_start_matches('/').to_owned();
    let parent = unified.join(own);
    let cg = parent.join(format!("mctl-devtest-{}", std::process::id()));
    std::fs::create_dir(&cg).unwrap();
    struct Remove(PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let _remove = Remove(cg.clone());
    let prog = mctl::sys::linux::bpf_load_device_program(
        &mctl::cgroups::devices::program(&mctl::cgroups::devices::MACHINE_DEVICES).unwrap(),
        "mctl_test",
    )
    .unwrap();
    let dir = std::fs::File::open(&cg).unwrap();
    mctl::sys::linux::bpf_attach_device_program(prog.as_fd(), dir.as_fd()).unwrap();

    let s = scratch();
    let nodes = s.path();
    let st = Command::new("mknod").arg(nodes.join("kmsg")).args(["c", "1", "11"]).status().unwrap();
    assert!(st.success());
    let st = Command::new("mknod").arg(nodes.join("zero")).args(["c", "1", "5"]).status().unwrap();
    assert!(st.success());
    let script = format!(
        "echo $$ > {procs}; \
         head -c1 {d}/zero >/dev/null 2>&1 && echo zero=ok || echo zero=denied; \
         echo x 2>/dev/null > {d}/kmsg && echo kmsg=ok || echo kmsg=denied; \
         mknod {d}/disk b {dev} 2>/dev/null && echo mknod=ok || echo mknod=denied",
        procs = cg.join("cgroup.procs").display(),
        d = nodes.display(),
        dev = host_root_device().replace(':', " "),
    );
    let o = Command::new("sh").args(["-c", &script]).output().unwrap();
    assert_eq!(stdout(&o), "zero=ok\nkmsg=denied\nmknod=denied\n", "{}", stderr(&o));
}

/// `mctl shell` is visible inside the machine before it executes its command: a guest that
/// stalls that exec (a fanotify permission event, allowed here on purpose) finds a process with
/// no more than the machine's capabilities, under its system call filter, running from a sealed
/// in-memory copy of mctl (nothing to reopen for writing through `/proc/PID/exe`).
#[test]
fn mctl_shell_enters_with_nothing_of_the_host() {
    let s = scratch();
    let bus = TestBus::start(s.path());
    let _mctld = Mctld::start(&bus, s.path(), false);
    let bind = format!("{}:/run/escape", escape_binary().display());
    let mut watcher = Guarded(
        mctl()
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
            .args(["run", "-q", "--register=yes", "-M", "shwatch", "--read-only", "--bind-ro", &bind, "-D"])
            .arg(debian_tree())
            .args(["--system-call-filter=fanotify_init fanotify_mark", "--", "/run/escape", "watch-exec"])
            .arg("/usr/bin/true")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(watcher.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "watching");
    let leader_bounding = {
        let o = mctl()
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
            .args(["show", "-p", "Leader", "--value", "shwatch"])
            .output()
            .unwrap();
        let leader = stdout(&o).trim().to_owned();
        let status = std::fs::read_to_string(format!("/proc/{leader}/status")).unwrap();
        status.lines().find_map(|l| l.strip_prefix("CapBnd:")).unwrap().trim().to_owned()
    };
    let shell = mctl()
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .args(["shell", "shwatch", "/usr/bin/true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let seen = lines.next().unwrap().unwrap();
    assert!(shell.status.success(), "{:?} {}", shell.status, stderr(&shell));
    assert!(seen.starts_with("exec by pid"), "{seen}");
    let field = |k: &str| {
        seen.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .unwrap_or_else(|| panic!("{k} in {seen}"))
            .to_owned()
    };
    assert_eq!(field("caps="), leader_bounding, "the entering process holds more than the machine: {seen}");
    assert_eq!(field("bounding="), leader_bounding, "{seen}");
    assert_eq!(field("seccomp="), "2", "the entering process runs without the filter: {seen}");
    assert!(field("exe=").starts_with("/memfd:"), "the entering process maps a host file: {seen}");
    let status = wait_exit(&mut watcher, Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "the watching machine ended with {status:?}");
}

/// A guest's `/etc/passwd` that is a FIFO (or anything but a regular file) does not stall
/// `mctl shell`: it says what is wrong at once.
#[test]
fn mctl_shell_refuses_a_fifo_passwd_at_once() {
    let s = scratch();
    let bus = TestBus::start(s.path());
    let _mctld = Mctld::start(&bus, s.path(), false);
    let dir = copy_tree(busybox_tree(), s.path(), "fifopw");
    std::fs::remove_file(dir.join("etc/passwd")).unwrap();
    nix::unistd::mkfifo(&dir.join("etc/passwd"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let _machine = Guarded(
        mctl()
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
            .args(["run", "-q", "--register=yes", "-D"])
            .arg(&dir)
            .args(["--", "sleep", "300"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(wait_until(Duration::from_secs(20), || {
        mctl()
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
            .args(["show", "fifopw"])
            .output()
            .unwrap()
            .status
            .success()
    }));
    let started = Instant::now();
    let mut shell = Guarded(
        mctl()
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
            .args(["shell", "fifopw", "/bin/true"])
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let status =
        wait_exit(&mut shell, Duration::from_secs(10)).expect("mctl shell hangs on a FIFO /etc/passwd");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(status.code(), Some(1));
    let err = read_all(shell.stderr.take().unwrap());
    assert!(err.contains("/etc/passwd is not a regular file"), "{err}");
}

/// `--no-new-privileges` (nspawn's option): off by default, as nspawn; on when asked, and then
/// neither setuid binaries nor file capabilities give anything.
#[test]
fn no_new_privileges_is_set_when_asked() {
    let status = |opts: &[&str]| {
        let mut all = vec!["--register=no", "--read-only", "-M", "nnp"];
        all.extend_from_slice(opts);
        let o = run_in(busybox_tree(), &all, &["grep", "NoNewPrivs", "/proc/self/status"]);
        assert!(o.status.success(), "{opts:?}: {}", stderr(&o));
        stdout(&o).split_whitespace().last().unwrap_or_default().to_owned()
    };
    assert_eq!(status(&[]), "0");
    assert_eq!(status(&["--no-new-privileges"]), "1");
    assert_eq!(status(&["--no-new-privileges=yes", "-U"]), "1");
    assert_eq!(status(&["--no-new-privileges=no"]), "0");
}
