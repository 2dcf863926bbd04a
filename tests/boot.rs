//! `mctl boot` of a real Debian bookworm with systemd, checked from outside.

mod common;

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use common::*;

fn host_cap_bnd() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    u64::from_str_radix(status.lines().find_map(|l| l.strip_prefix("CapBnd:")).unwrap().trim(), 16).unwrap()
}

fn proc_field(pid: i32, file: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default()
}

#[test]
fn boots_to_running_and_powers_off_cleanly() {
    let s = scratch();
    let dir = copy_tree(debian_tree(), s.path(), "bootok");
    let mut m = Machine::boot(&dir, s.path(), &[]);

    // systemd's own verdict.
    assert_eq!(m.sh("systemctl is-system-running --wait"), "running", "log:\n{}", m.log_text());
    assert_eq!(m.sh("systemctl --failed --no-legend --plain"), "");
    assert_eq!(m.sh("systemd-detect-virt --container"), "container-other");
    // PID 1 is the tree's systemd, in its own namespaces, named after the directory.
    assert_eq!(proc_field(m.leader, "comm").trim(), "systemd");
    for ns in ["mnt", "pid", "uts", "ipc", "cgroup"] {
        let host = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        let guest = std::fs::read_link(format!("/proc/{}/ns/{ns}", m.leader)).unwrap();
        assert_ne!(host, guest, "{ns} namespace is shared with the host");
    }
    assert_eq!(m.sh("hostname"), "bootok");
    let environ = proc_field(m.leader, "environ");
    assert!(environ.split('\0').any(|v| v == "container=mctl"), "{environ:?}");
    let uuid =
        environ.split('\0').find_map(|v| v.strip_prefix("container_uuid=")).expect("container_uuid set");
    assert_eq!(m.sh("cat /etc/machine-id"), uuid.replace('-', ""));
    assert_eq!(m.sh("cat /run/host/container-uuid"), uuid);
    assert_eq!(m.sh("cat /run/host/container-manager"), "mctl");

    // Mounts as the checklist wants them.
    let mounts = m.sh("findmnt -rn -o TARGET,FSTYPE,OPTIONS");
    let opts = |target: &str| -> String {
        mounts
            .lines()
            .find(|l| l.split(' ').next() == Some(target))
            .unwrap_or_else(|| panic!("{target} not mounted:\n{mounts}"))
            .to_owned()
    };
    assert!(opts("/proc/sys").contains(" ro,"), "{}", opts("/proc/sys"));
    assert!(opts("/sys").contains("sysfs ro,"), "{}", opts("/sys"));
    assert!(opts("/dev").starts_with("/dev tmpfs rw,nosuid"), "{}", opts("/dev"));
    assert!(opts("/dev/pts").contains("devpts"), "{}", opts("/dev/pts"));
    assert!(opts("/run").contains("tmpfs"));
    assert!(opts("/tmp").contains("tmpfs"));
    assert!(opts("/run/host").contains(" ro,"));
    assert!(opts("/sys/fs/cgroup").starts_with("/sys/fs/cgroup cgroup2 rw"), "{}", opts("/sys/fs/cgroup"));
    assert!(opts("/proc/kallsyms").contains(" ro,"), "kallsyms is not masked");
    assert_eq!(m.sh("readlink /dev/console"), "pts/0");
    assert_eq!(m.sh("test -e /dev/kmsg && echo present || echo absent"), "absent");
    assert_eq!(
        m.sh("echo 1 > /proc/sys/kernel/domainname 2>/dev/null && echo writable || echo denied"),
        "denied"
    );

    // Capabilities: nspawn's default set, as far as the host grants it.
    let defaults: u64 =
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 18, 19, 21, 22, 23, 24, 26, 27, 28, 29, 30, 31]
            .iter()
            .map(|b| 1u64 << b)
            .sum();
    let status = proc_field(m.leader, "status");
    let bnd = u64::from_str_radix(status.lines().find_map(|l| l.strip_prefix("CapBnd:")).unwrap().trim(), 16)
        .unwrap();
    assert_eq!(bnd, defaults & host_cap_bnd());

    // A clean poweroff on SIGTERM: systemd's halt, exit 0, nothing left.
    let leader = m.leader;
    let st = m.stop();
    assert_eq!(st.code(), Some(0), "log:\n{}", m.log_text());
    let log = m.log_text();
    assert!(log.contains("Reached target") && log.contains("System Halt"), "no clean shutdown:\n{log}");
    assert!(log.contains("Container bootok has been shut down."));
    assert!(!std::path::Path::new(&format!("/proc/{leader}")).exists());
    assert_no_leaks("bootok", &dir);
}

#[test]
fn reboot_restarts_or_exits_133_with_keep_unit() {
    let s = scratch();
    let dir = copy_tree(debian_tree(), s.path(), "bootre");

    let mut m = Machine::boot(&dir, s.path(), &["--keep-unit"]);
    m.exec(&["systemctl", "reboot"]);
    let st = m.wait(Duration::from_secs(60)).expect("mctl exits after reboot");
    assert_eq!(st.code(), Some(133), "log:\n{}", m.log_text());
    assert_no_leaks("bootre", &dir);
    drop(m);

    let s2 = scratch();
    let mut m = Machine::boot(&dir, s2.path(), &[]);
    let first = m.leader;
    m.exec(&["systemctl", "reboot"]);
    let second = m.notify.wait_leader(1, BOOT_TIMEOUT).expect("machine came back after reboot");
    assert_ne!(first, second);
    m.leader = second;
    let deadline = Instant::now() + BOOT_TIMEOUT;
    while m.notify.ready_count() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(m.notify.ready_count(), 2, "second boot not ready; log:\n{}", m.log_text());
    assert_eq!(m.sh("systemctl is-system-running --wait"), "running");
    // A poweroff from inside ends mctl with success.
    m.exec(&["systemctl", "poweroff"]);
    let st = m.wait(Duration::from_secs(60)).expect("mctl exits after poweroff");
    assert_eq!(st.code(), Some(0), "log:\n{}", m.log_text());
    assert_no_leaks("bootre", &dir);
}

#[test]
fn pid1_dying_abnormally_is_an_error() {
    let s = scratch();
    let dir = copy_tree(debian_tree(), s.path(), "bootkill");
    let mut m = Machine::boot(&dir, s.path(), &["--console=passive"]);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(m.leader), nix::sys::signal::Signal::SIGKILL).unwrap();
    let st = m.wait(Duration::from_secs(30)).expect("mctl exits");
    assert_eq!(st.code(), Some(137));
    assert!(m.log_text().contains("terminated by signal SIGKILL"));
    assert_no_leaks("bootkill", &dir);
}

#[test]
fn interactive_console_logs_in_and_escape_kills() {
    let s = scratch();
    let dir = copy_tree(debian_tree(), s.path(), "bootcon");
    let mut cmd = mctl();
    cmd.args(["boot", "-D"]).arg(&dir);
    let (mut child, master) = spawn_on_pty(cmd, 40, 123);
    let rx = pty_reader(&master);
    let mut seen = String::new();
    let mut master = std::fs::File::from(master);
    expect_output(&rx, &mut seen, "Press ^] three times within 1s", Duration::from_secs(10));
    expect_output(&rx, &mut seen, "bootcon login:", BOOT_TIMEOUT);
    master.write_all(b"root\r").unwrap();
    expect_output(&rx, &mut seen, "root@bootcon", Duration::from_secs(30));
    master.write_all(b"echo sum-$((6*7)); stty size\r").unwrap();
    expect_output(&rx, &mut seen, "sum-42", Duration::from_secs(10));
    expect_output(&rx, &mut seen, "40 123", Duration::from_secs(10));
    master.write_all(&[0x1d, 0x1d, 0x1d]).unwrap();
    let st = wait_exit(&mut child, Duration::from_secs(20)).expect("escape sequence did not end mctl");
    assert_eq!(st.code(), Some(137), "{st:?} {:?}", st.signal());
    assert_no_leaks("bootcon", &dir);
}

#[test]
fn a_stop_request_before_systemd_is_up_still_powers_off() {
    // SIGTERM as soon as the launcher starts: the halt request reaches systemd before it
    // has set up its signal handlers, and PID 1 drops signals it has no handler for.
    let s = scratch();
    let dir = copy_tree(debian_tree(), s.path(), "bootearly");
    let mut child = Guarded(
        mctl()
            .args(["boot", "--register=no", "--console=passive", "-D"])
            .arg(&dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut log = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut log, &mut first).unwrap();
    assert!(first.starts_with("Spawning container bootearly"), "{first}");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let st = wait_exit(&mut child, Duration::from_secs(30)).expect("the machine ignored the stop request");
    let rest = read_all(log);
    assert_eq!(st.code(), Some(0), "{first}{rest}");
    assert!(rest.contains("Container bootearly has been shut down."), "{first}{rest}");
    assert_no_leaks("bootearly", &dir);
}

/// Every process of a booted machine: PID 1's cgroup (`init.scope` under systemd, so
/// `leader_cgroup_processes` alone sees only PID 1) and everything in the machine's cgroups.
fn all_processes(m: &Machine) -> Vec<(i32, u64)> {
    let mut procs = leader_cgroup_processes(m.leader);
    procs.extend(machine_processes(&m.name));
    procs.sort();
    procs.dedup();
    procs
}

/// Whether a process of the machine has `needle` as its command line (arguments joined by
/// spaces, with a trailing one).
fn machine_runs(m: &Machine, needle: &str) -> bool {
    all_processes(m).iter().any(|(pid, _)| proc_field(*pid, "cmdline").replace('\0', " ") == needle)
}

/// SIGINT to `mctl boot` is the same halt request as SIGTERM: systemd shuts down, mctl exits 0.
#[test]
fn sigint_powers_the_guest_off_cleanly() {
    let s = scratch();
    let dir = copy_tree(debian_tree(), s.path(), "rcsigint");
    let mut m = Machine::boot(&dir, s.path(), &[]);
    let procs = all_processes(&m);
    assert!(procs.len() > 3, "a booted systemd has more processes: {procs:?}");
    m.signal_launcher(libc::SIGINT);
    let st = m
        .wait(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("mctl did not exit after SIGINT; log:\n{}", m.log_text()));
    let log = m.log_text();
    assert_eq!(st.code(), Some(0), "{st:?}; log:\n{log}");
    assert!(log.contains("Reached target") && log.contains("System Halt"), "no clean shutdown:\n{log}");
    assert!(log.contains("Container rcsigint has been shut down."), "{log}");
    assert_processes_gone(&procs);
    assert_no_leaks("rcsigint", &dir);
}

/// A unit whose stop takes ten minutes: a guest that stops cleanly keeps running that long.
fn add_slow_stop_unit(dir: &std::path::Path) {
    let units = dir.join("etc/systemd/system");
    std::fs::write(
        units.join("rc-slowstop.service"),
        "[Service]\nExecStart=/bin/sleep infinity\nExecStop=/bin/sleep 600\nTimeoutStopSec=900\n\
         [Install]\nWantedBy=multi-user.target\n",
    )
    .unwrap();
    let wants = units.join("multi-user.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink("../rc-slowstop.service", wants.join("rc-slowstop.service")).unwrap();
}

/// The first SIGTERM asks systemd to halt; a second one while it is shutting down kills PID 1
/// at once (the guest's slow unit would keep a clean shutdown going for ten minutes).
#[test]
fn a_second_sigterm_kills_a_shutting_down_guest_at_once() {
    let s = scratch();
    let dir = copy_tree(debian_tree(), s.path(), "rcsigterm2");
    add_slow_stop_unit(&dir);
    let mut m = Machine::boot(&dir, s.path(), &[]);
    assert_eq!(m.sh("systemctl is-active rc-slowstop.service"), "active", "log:\n{}", m.log_text());
    let mut procs = all_processes(&m);
    m.signal_launcher(libc::SIGTERM);
    // The shutdown has begun: the slow unit's stop command runs.
    assert!(
        wait_until(Duration::from_secs(30), || machine_runs(&m, "/bin/sleep 600 ")),
        "the guest did not start shutting down; log:\n{}",
        m.log_text()
    );
    procs.extend(all_processes(&m));
    assert!(m.child.as_mut().unwrap().try_wait().unwrap().is_none(), "mctl ended after one SIGTERM");
    let t = Instant::now();
    m.signal_launcher(libc::SIGTERM);
    let st = m
        .wait(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("a second SIGTERM did not kill the guest; log:\n{}", m.log_text()));
    assert!(t.elapsed() < Duration::from_secs(10));
    let log = m.log_text();
    assert_eq!(st.code(), Some(137), "{st:?}; log:\n{log}");
    assert!(log.contains("Container rcsigterm2 terminated by signal SIGKILL."), "{log}");
    assert_processes_gone(&procs);
    assert_no_leaks("rcsigterm2", &dir);
}

/// Removes the cgroups a killed launcher left for machine `name`, should the test fail before
/// the next launch of that name removes them itself.
struct StaleCgroups(&'static str);

impl Drop for StaleCgroups {
    fn drop(&mut self) {
        let mut dirs: Vec<std::path::PathBuf> =
            machine_cgroups(self.0).iter().flat_map(|d| dirs_below(d)).collect();
        // Deepest first; a cgroup that still has processes stays (and the test failed anyway).
        dirs.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for d in dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// `dir` and every directory below it.
fn dirs_below(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_owned()];
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(dirs_below(&e.path()));
            }
        }
    }
    out
}

/// SIGKILL to `mctl boot` takes the booted guest down with it (every process of the machine
/// ends, not only PID 1), and the next launch of the same name boots.
#[test]
fn a_killed_launcher_takes_its_booted_guest_down_and_the_name_boots_again() {
    let _stale = StaleCgroups("rckilled");
    let s = scratch();
    let dir = copy_tree(debian_tree(), s.path(), "rckilled");
    let first = s.path().join("first");
    std::fs::create_dir(&first).unwrap();
    let mut m = Machine::boot(&dir, &first, &[]);
    assert_eq!(m.sh("systemctl is-system-running --wait"), "running", "log:\n{}", m.log_text());
    let procs = all_processes(&m);
    assert!(procs.len() > 3, "a booted systemd has more processes: {procs:?}");
    let mut child = m.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_processes_gone(&procs);
    drop(m);

    let second = s.path().join("second");
    std::fs::create_dir(&second).unwrap();
    let mut m = Machine::boot(&dir, &second, &[]);
    assert_eq!(m.sh("systemctl is-system-running --wait"), "running", "log:\n{}", m.log_text());
    assert_eq!(m.sh("hostname"), "rckilled");
    let st = m.stop();
    assert_eq!(st.code(), Some(0), "log:\n{}", m.log_text());
    assert_no_leaks("rckilled", &dir);
}

/// A tree without a machine ID takes `--uuid` as its UUID, and the booted systemd takes it as
/// its machine ID; `/dev/shm` is a tmpfs and `/run/host/notify` the notify socket.
#[test]
fn uuid_becomes_the_machine_id_of_a_tree_without_one() {
    let s = scratch();
    let dir = copy_tree(debian_tree(), s.path(), "rcuuidboot");
    assert_eq!(std::fs::read(dir.join("etc/machine-id")).unwrap(), b"", "the fixture has a machine ID");
    let uuid = "5a1e7c0d-2b3f-4e6a-9c8d-0f1e2d3c4b5a";
    let mut m = Machine::boot(&dir, s.path(), &[&format!("--uuid={uuid}")]);
    let environ = proc_field(m.leader, "environ");
    assert!(environ.split('\0').any(|v| v == format!("container_uuid={uuid}")), "{environ:?}");
    assert_eq!(m.sh("cat /run/host/container-uuid"), uuid);
    assert_eq!(m.sh("cat /etc/machine-id"), uuid.replace('-', ""));
    assert_eq!(m.sh("findmnt -n -o FSTYPE /dev/shm"), "tmpfs");
    assert_eq!(m.sh("test -S /run/host/notify && echo socket"), "socket");
    let st = m.stop();
    assert_eq!(st.code(), Some(0), "log:\n{}", m.log_text());
    assert_no_leaks("rcuuidboot", &dir);
}

/// `mctl boot -M NAME` without `-D` boots `<store>/NAME`, the store being `$MCTL_IMAGE_STORE`.
#[test]
fn boot_by_name_alone_boots_the_image_in_the_store() {
    let s = scratch();
    let store = s.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let dir = copy_tree(debian_tree(), &store, "rcbyname");
    std::fs::write(dir.join("etc/rc-marker"), "from-the-store\n").unwrap();
    let notify = NotifyListener::new(s.path());
    let log = s.path().join("console.log");
    let child = mctl()
        .args(["boot", "--console=read-only", "-M", "rcbyname"])
        .env("MCTL_IMAGE_STORE", &store)
        .env("NOTIFY_SOCKET", &notify.path)
        .current_dir(s.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::options().create(true).append(true).open(&log).unwrap())
        // Both appending, so the console output that follows does not overwrite stderr's first line.
        .stderr(std::fs::File::options().append(true).open(&log).unwrap())
        .spawn()
        .unwrap();
    let mut m =
        Machine { child: Some(child), leader: 0, notify, name: "rcbyname".into(), dir: dir.clone(), log };
    m.leader =
        m.notify.wait_leader(0, BOOT_TIMEOUT).unwrap_or_else(|| panic!("no leader; log:\n{}", m.log_text()));
    assert!(m.notify.wait_for("READY=1", BOOT_TIMEOUT).is_some(), "not ready; log:\n{}", m.log_text());
    assert!(
        m.log_text().contains(&format!("Spawning container rcbyname on {}.", dir.display())),
        "{}",
        m.log_text()
    );
    assert_eq!(m.sh("cat /etc/rc-marker"), "from-the-store");
    assert_eq!(m.sh("hostname"), "rcbyname");
    let st = m.stop();
    assert_eq!(st.code(), Some(0), "log:\n{}", m.log_text());
    assert_no_leaks("rcbyname", &dir);
}
