//! `mctl run` in the busybox tree: exit statuses, signals, stdio, the sandbox's shape, options.

mod common;

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use common::*;

fn tree(name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let s = scratch();
    let dir = copy_tree(busybox_tree(), s.path(), name);
    (s, dir)
}

#[test]
fn exit_status_and_signals_pass_through() {
    let (_s, dir) = tree("rexit");
    assert_eq!(run_in(&dir, &[], &["sh", "-c", "exit 3"]).status.code(), Some(3));
    assert_eq!(run_in(&dir, &[], &["true"]).status.code(), Some(0));
    // Killed by signal N: 128+N. (A PID 1 cannot be killed from inside its namespace, so the
    // command runs as PID 2 here; a PID 1 killed from outside is covered below.)
    let o = run_in(&dir, &["--as-pid2"], &["sh", "-c", "kill -KILL $$"]);
    assert_eq!(o.status.code(), Some(137), "{}", stderr(&o));
    let o = run_in(&dir, &["--as-pid2"], &["sh", "-c", "kill -TERM $$"]);
    assert_eq!(o.status.code(), Some(143), "{}", stderr(&o));
    assert_eq!(run_in(&dir, &["--as-pid2"], &["sh", "-c", "exit 7"]).status.code(), Some(7));
    assert_no_leaks("rexit", &dir);
}

#[test]
fn stdio_passes_through_when_not_a_terminal() {
    let (_s, dir) = tree("rstdio");
    let mut child = mctl()
        .args(["run", "-q", "-D"])
        .arg(&dir)
        .args(["--", "sh", "-c", "tr a-z A-Z; echo oops >&2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hello machine\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    assert_eq!(stdout(&o), "HELLO MACHINE\n");
    assert_eq!(stderr(&o), "oops\n");
}

/// Signals the caller ignores (nohup's SIGHUP, SIGINT and SIGQUIT for a shell's background job,
/// realtime ones) or blocks are not the command's: it starts with every disposition at its
/// default and nothing blocked.
#[test]
fn the_command_starts_with_default_signal_dispositions() {
    use std::os::unix::process::CommandExt;
    let (_s, dir) = tree("rsignals");
    let mut cmd = mctl();
    cmd.args(["run", "-q", "-D"]).arg(&dir).args(["--", "grep", "-E", "^Sig(Blk|Ign):", "/proc/self/status"]);
    // SAFETY: between fork and exec the closure calls only signal(2), sigemptyset,
    // sigaddset and sigprocmask(2), which are async-signal-safe and touch no shared state.
    unsafe {
        cmd.pre_exec(|| {
            for sig in [libc::SIGHUP, libc::SIGINT, libc::SIGQUIT, libc::SIGUSR1, libc::SIGRTMIN() + 2] {
                libc::signal(sig, libc::SIG_IGN);
            }
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGUSR2);
            libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n");
}

#[test]
fn command_is_pid1_or_pid2_in_its_own_namespaces() {
    let (_s, dir) = tree("rpid");
    let o = run_in(&dir, &[], &["sh", "-c", "echo $$; hostname; echo $(cat /proc/1/comm)"]);
    assert_eq!(stdout(&o), "1\nrpid\nsh\n");
    let o =
        run_in(&dir, &["--as-pid2", "-M", "other", "--hostname", "h1"], &["sh", "-c", "echo $$; hostname"]);
    assert_eq!(stdout(&o), "2\nh1\n", "{}", stderr(&o));
    // The reaper collects orphans: a backgrounded child that outlives its parent is reaped,
    // and the command's status still comes through.
    let o = run_in(
        &dir,
        &["--as-pid2"],
        &["sh", "-c", "(sleep 0.2 &) ; sleep 0.5; ps -o stat,comm | grep -c Z; exit 4"],
    );
    assert_eq!(o.status.code(), Some(4));
    assert_eq!(stdout(&o).trim(), "0", "zombies remain: {}", stdout(&o));
    // Our own pid namespace: no host process is visible.
    let o = run_in(&dir, &[], &["sh", "-c", "ls -d /proc/[0-9]* | wc -l"]);
    let visible: u32 = stdout(&o).trim().parse().unwrap();
    assert!(visible <= 3, "{visible} processes visible");
}

/// Runs `sh -c "<trap>; echo up; loop"` in the machine and returns once "up" was printed.
fn run_until_up(
    dir: &std::path::Path,
    opts: &[&str],
    trap: &str,
) -> (std::process::Child, std::process::ChildStdout) {
    let mut child = mctl()
        .args(["run", "-q", "-D"])
        .arg(dir)
        .args(opts)
        .args(["--", "sh", "-c", &format!("{trap}; echo up; while :; do sleep 0.1; done")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut buf = [0u8; 3];
    std::io::Read::read_exact(&mut out, &mut buf).unwrap();
    assert_eq!(&buf, b"up\n");
    (child, out)
}

#[test]
fn sigterm_to_mctl_reaches_the_command_with_kill_signal_sigterm() {
    let (_s, dir) = tree("rsig");
    let (mut child, out) =
        run_until_up(&dir, &["--kill-signal=SIGTERM"], "trap 'echo got-term; exit 42' TERM");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(read_all(out), "got-term\n");
    assert_eq!(child.wait().unwrap().code(), Some(42));
}

/// A command is PID 1 of its namespace and ignores signals it has no handler for; by default
/// SIGTERM to mctl therefore sends SIGKILL (nspawn's default for non-boot machines), so stopping
/// the launcher always stops the command.
#[test]
fn sigterm_to_mctl_stops_a_command_without_handlers() {
    let (_s, dir) = tree("rsigk");
    for sig in [nix::sys::signal::Signal::SIGTERM, nix::sys::signal::Signal::SIGINT] {
        let mut child = mctl()
            .args(["run", "-q", "-D"])
            .arg(&dir)
            .args(["--", "sh", "-c", "echo up; exec sleep 100"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let mut buf = [0u8; 3];
        std::io::Read::read_exact(&mut out, &mut buf).unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()), sig).unwrap();
        let st = wait_exit(&mut child, Duration::from_secs(10)).unwrap_or_else(|| {
            let _ = child.kill();
            panic!("mctl run ignored {sig}: the command kept running");
        });
        assert_eq!(st.code(), Some(137), "{sig}");
        assert_no_leaks("rsigk", &dir);
    }
}

/// On a hybrid host a guest can mount the v1 freezer hierarchy (its cgroup namespace shows it
/// its own part) and freeze itself, and a task frozen there does not die of SIGKILL. Stopping
/// the launcher must still end the machine and leave nothing behind, also while a second guest
/// process keeps freezing PID 1 again: the launcher kills every guest process and thaws what
/// the guest froze, until PID 1 is gone.
#[test]
fn a_guest_frozen_through_the_v1_freezer_still_stops() {
    if !has_v1_freezer() {
        eprintln!("no v1 freezer hierarchy on this host: nothing for a guest to freeze itself with");
        return;
    }
    let (_s, dir) = tree("rfrozen");
    let freeze = "{ mkdir -p /tmp/f && mount -t cgroup -o freezer none /tmp/f && mkdir /tmp/f/a /tmp/f/b \
                  && echo $$ > /tmp/f/a/cgroup.procs \
                  && sh -c 'echo $$ > /tmp/f/b/cgroup.procs; while :; do echo FROZEN > /tmp/f/a/freezer.state; done' & }";
    let (mut child, _out) = run_until_up(&dir, &["--register=no"], freeze);
    wait_guest_frozen("rfrozen", "a");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let st = wait_exit(&mut child, Duration::from_secs(10)).unwrap_or_else(|| {
        // Free what the launcher left frozen, so that the failed test leaves nothing behind.
        for _ in 0..100 {
            machine_cgroups("rfrozen").iter().for_each(|d| kill_and_thaw(d));
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the launcher did not end a machine frozen through the v1 freezer");
    });
    assert_eq!(st.code(), Some(137));
    assert_no_leaks("rfrozen", &dir);
}

/// Below its payload cgroup every directory is the guest's, with any names at any depth. A
/// chain whose host path is longer than PATH_MAX, and one deeper than a descriptor per level
/// allows, in cgroup2 and (on a hybrid host) in the v1 freezer hierarchy the guest mounts, must
/// all go when the machine ends. (Walked by path, they stayed on the host for good.)
#[test]
fn cgroups_the_guest_made_beyond_path_max_are_removed() {
    let (_s, dir) = tree("rdeep");
    // Guest paths stay under PATH_MAX (4087 bytes); the host's are longer by its prefix.
    let script = "set -e
        long() { cd $1; n=$(printf %0240d 0); for i in $(seq 16); do mkdir $n; cd $n; done; mkdir $(printf %0215d 0); }
        deep() { cd $1; for i in $(seq 1100); do mkdir d; cd d; done; }
        (long /sys/fs/cgroup); (deep /sys/fs/cgroup)
        if [ -n \"$V1\" ]; then
            mkdir -p /tmp/v1 && mount -t cgroup -o freezer none /tmp/v1
            (long /tmp/v1); (deep /tmp/v1)
        fi
        echo made";
    let v1 = if has_v1_freezer() { "--setenv=V1=1" } else { "--setenv=V1=" };
    let o = run_in(&dir, &[v1], &["sh", "-c", script]);
    let leftovers = machine_cgroups("rdeep");
    leftovers.iter().for_each(|d| remove_cgroup_tree(d));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "made\n");
    assert!(leftovers.is_empty(), "cgroups the guest made were left behind: {leftovers:?}");
    assert_no_leaks("rdeep", &dir);
}

/// Kills every process of a cgroup subtree and thaws it (a failed test's machine).
fn kill_and_thaw(dir: &std::path::Path) {
    for pid in std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default().lines() {
        if let Ok(pid) = pid.parse() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
    let _ = std::fs::write(dir.join("freezer.state"), "THAWED");
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            kill_and_thaw(&e.path());
        }
    }
}

#[test]
fn second_sigterm_kills_a_command_that_ignores_the_first() {
    let (_s, dir) = tree("rsig2");
    let (mut child, mut out) = run_until_up(&dir, &["--kill-signal=SIGTERM"], "trap 'echo ignored' TERM");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    // The command saw it and carries on.
    let mut buf = [0u8; 8];
    std::io::Read::read_exact(&mut out, &mut buf).unwrap();
    assert_eq!(&buf, b"ignored\n");
    assert!(child.try_wait().unwrap().is_none(), "the first SIGTERM should only be passed on");
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(137));
    assert_no_leaks("rsig2", &dir);
}

#[test]
fn sandbox_shape() {
    let (_s, dir) = tree("rshape");
    let script = r#"
        echo x > /proc/sys/kernel/domainname 2>/dev/null && echo procsys-writable
        touch /sys/x 2>/dev/null && echo sys-writable
        [ -s /proc/kallsyms ] && echo kallsyms-visible
        grep -q ' /dev tmpfs ' /proc/mounts || echo dev-not-tmpfs
        [ -c /dev/null ] && [ -c /dev/urandom ] && [ -c /dev/tty ] && [ -L /dev/ptmx ] || echo nodes-missing
        [ -e /dev/kmsg ] && echo kmsg-present
        grep -q 'devpts /dev/pts' /proc/mounts || echo no-devpts
        grep -q 'cgroup2 /sys/fs/cgroup' /proc/mounts || echo no-cgroup2
        cat /run/host/container-manager
        grep -q '^ID=' /run/host/os-release || echo no-host-os-release
        [ "$(cat /run/host/container-uuid)" = "$container_uuid" ] || echo uuid-mismatch
        echo "$container"
        grep -q ' / ' /proc/self/mountinfo && grep ' / ' /proc/self/mountinfo | grep -q shared || echo root-not-shared
        [ "$(awk '$5 == "/"' /proc/self/mountinfo | wc -l)" = 1 ] || echo host-root-still-mounted
        cat /proc/self/cgroup | grep '^0::'
    "#;
    let o = run_in(&dir, &[], &["sh", "-c", script]);
    assert_eq!(stdout(&o), "mctl\nmctl\n0::/\n", "stderr: {}", stderr(&o));
}

#[test]
fn capabilities_follow_nspawn_defaults_and_options() {
    let (_s, dir) = tree("rcaps");
    let bnd = |opts: &[&str]| -> u64 {
        let o = run_in(&dir, opts, &["sh", "-c", "grep CapBnd /proc/self/status"]);
        u64::from_str_radix(stdout(&o).split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    let host = u64::from_str_radix(
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("CapBnd:"))
            .unwrap()
            .trim(),
        16,
    )
    .unwrap();
    // nspawn's 26 default capabilities, as far as the host grants them.
    let defaults: u64 =
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 18, 19, 21, 22, 23, 24, 26, 27, 28, 29, 30, 31]
            .iter()
            .map(|b| 1u64 << b)
            .sum();
    assert_eq!(bnd(&[]), defaults & host);
    assert_eq!(bnd(&["--drop-capability=CAP_NET_RAW,sys_admin"]), defaults & host & !(1 << 13) & !(1 << 21));
    assert_eq!(bnd(&["--capability=CAP_NET_ADMIN"]), (defaults | 1 << 12) & host);
}

#[test]
fn mounts_env_user_and_directory_options() {
    let (s, dir) = tree("ropts");
    let shared = s.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("f"), "from-host\n").unwrap();
    let bind = format!("{}:/mnt/rw", shared.display());
    let bind_ro = format!("{}:/mnt/ro", shared.display());
    let o = run_in(
        &dir,
        &[
            "--bind",
            &bind,
            "--bind-ro",
            &bind_ro,
            "--tmpfs=/scratch:mode=0700",
            "-E",
            "FOO=bar",
            "--chdir=/mnt",
        ],
        &[
            "sh",
            "-c",
            "cat /mnt/ro/f; echo new > /mnt/rw/g; touch /mnt/ro/h 2>/dev/null || echo ro-denied; stat -c %a /scratch; echo $FOO; pwd",
        ],
    );
    assert_eq!(stdout(&o), "from-host\nro-denied\n700\nbar\n/mnt\n", "stderr: {}", stderr(&o));
    assert_eq!(std::fs::read_to_string(shared.join("g")).unwrap(), "new\n");
    // Mount points created for binds live in the machine's tree, the host's /mnt is untouched.
    assert!(dir.join("mnt/rw").is_dir());

    let o = run_in(&dir, &["--user=tester"], &["sh", "-c", "id -u; id -G; echo $HOME $USER; pwd"]);
    assert_eq!(stdout(&o), "1000\n1000 100\n/home/tester tester\n/home/tester\n", "stderr: {}", stderr(&o));

    let o = run_in(
        &dir,
        &["--read-only"],
        &["sh", "-c", "touch /x 2>/dev/null || echo root-ro; touch /tmp/x && echo tmp-rw"],
    );
    assert_eq!(stdout(&o), "root-ro\ntmp-rw\n");

    let o = run_in(&dir, &["--user=nosuchuser"], &["true"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("user 'nosuchuser' does not exist"), "{}", stderr(&o));
    assert_no_leaks("ropts", &dir);
}

#[test]
fn missing_command_exits_127() {
    let (_s, dir) = tree("rmissing");
    let o = run_in(&dir, &[], &["no-such-command"]);
    assert_eq!(o.status.code(), Some(127));
    assert!(stderr(&o).contains("command 'no-such-command' not found"), "{}", stderr(&o));
    let o = run_in(&dir, &["--as-pid2"], &["/no/such"]);
    assert_eq!(o.status.code(), Some(127));
    assert_no_leaks("rmissing", &dir);
}

#[test]
fn killing_the_launcher_takes_the_machine_down() {
    let (s, dir) = tree("rkill");
    let mut notify = NotifyListener::new(s.path());
    let mut child = mctl()
        .args(["run", "-q", "-D"])
        .arg(&dir)
        .args(["--", "sleep", "60"])
        .env("NOTIFY_SOCKET", &notify.path)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let pid1 = notify.wait_leader(0, Duration::from_secs(10)).expect("machine started");
    child.kill().unwrap();
    child.wait().unwrap();
    let gone = || !std::path::Path::new(&format!("/proc/{pid1}")).exists();
    for _ in 0..250 {
        if gone() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(gone(), "machine survived its launcher");
    // The next launch of the same name removes the stale cgroup the killed launcher left.
    assert_eq!(run_in(&dir, &[], &["true"]).status.code(), Some(0));
    assert_no_leaks("rkill", &dir);
}

/// `-S/--slice` on a host without systemd: the machine's cgroups are where systemd would put a
/// machine scope of that slice, in every hierarchy; they and the slice directories mctl made go
/// with the machine, also after a killed launcher (the next launch's sweep).
#[test]
fn a_slice_places_the_machine_as_systemd_would() {
    let (_s, dir) = tree("rslice");
    let scope_dirs = || -> Vec<std::path::PathBuf> {
        let rd = std::fs::read_dir("/sys/fs/cgroup").unwrap();
        let mut roots: Vec<_> = rd.flatten().map(|e| e.path()).collect();
        roots.push("/sys/fs/cgroup".into());
        roots
            .iter()
            .map(|r| r.join("mctltest.slice/mctltest-a.slice/machine-rslice.scope"))
            .filter(|p| p.is_dir())
            .collect()
    };
    let (mut child, _out) = run_until_up(&dir, &["-S", "mctltest-a.slice"], "true");
    let found = scope_dirs();
    let unified = found
        .iter()
        .find(|p| p.join("payload/cgroup.procs").exists() && p.join("cgroup.controllers").exists());
    let unified = unified.expect("the machine's cgroup2 directory in the slice");
    let procs = std::fs::read_to_string(unified.join("payload/cgroup.procs")).unwrap();
    assert!(!procs.trim().is_empty(), "the payload runs in the slice's scope");
    if std::path::Path::new("/sys/fs/cgroup/unified").is_dir() {
        assert!(found.len() > 2, "hybrid: a scope in the v1 hierarchies too: {found:?}");
    }
    assert_eq!(stop_launcher(&mut child).code(), Some(137), "SIGKILL to the command");
    assert!(scope_dirs().is_empty(), "left: {:?}", scope_dirs());
    let slices: Vec<_> = machine_slice_dirs();
    assert!(slices.is_empty(), "slice directories left: {slices:?}");

    let (mut child, _out) = run_until_up(&dir, &["-S", "mctltest-a.slice"], "true");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(wait_until(Duration::from_secs(5), || scope_dirs().iter().all(|d| {
        std::fs::read_to_string(d.join("payload/cgroup.procs")).map_or(true, |p| p.trim().is_empty())
    })));
    assert_eq!(run_in(&dir, &[], &["true"]).status.code(), Some(0));
    assert!(scope_dirs().is_empty() && machine_slice_dirs().is_empty(), "the sweep removes them");

    for (bad, needle) in
        [("", "needs a slice name"), ("x.service", "not a slice"), ("a--b.slice", "invalid slice")]
    {
        let o = run_in(&dir, &["-S", bad], &["true"]);
        assert_eq!(o.status.code(), Some(1), "-S '{bad}'");
        assert!(stderr(&o).contains(needle), "-S '{bad}': {}", stderr(&o));
    }
    assert_no_leaks("rslice", &dir);
}

fn machine_slice_dirs() -> Vec<std::path::PathBuf> {
    let rd = std::fs::read_dir("/sys/fs/cgroup").unwrap();
    let mut roots: Vec<_> = rd.flatten().map(|e| e.path()).collect();
    roots.push("/sys/fs/cgroup".into());
    roots.iter().map(|r| r.join("mctltest.slice")).filter(|p| p.is_dir()).collect()
}

/// `ip netns exec NS mctl ...` mounts a fresh /sys without /sys/fs/cgroup; mctl mounts the
/// hierarchies in a mount namespace of its own and runs the machine in NS's network.
#[test]
fn runs_under_ip_netns_exec() {
    let (_s, dir) = tree("rnetns");
    let ns = format!("mctl-test-{}", std::process::id());
    struct Netns(String);
    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    assert!(std::process::Command::new("ip").args(["netns", "add", &ns]).status().unwrap().success());
    let _guard = Netns(ns.clone());
    let o = std::process::Command::new("ip")
        .args(["netns", "exec", &ns, env!("CARGO_BIN_EXE_mctl"), "run", "-q", "--register=no", "-D"])
        .arg(&dir)
        .args(["--", "sh", "-c", "grep -c '^0::/$' /proc/self/cgroup; ip -o link | grep -c ': '"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    // Its own cgroup (the root of its cgroup namespace) and only NS's loopback.
    assert_eq!(stdout(&o), "1\n1\n", "{}", stderr(&o));
    assert_no_leaks("rnetns", &dir);
}

/// `mctl run -q -M NAME OPTS -D DIR -- sleep 60` in the background; returns once PID 1 runs.
fn start_sleeper(
    dir: &std::path::Path,
    notify_dir: &std::path::Path,
    name: &str,
    opts: &[&str],
) -> (Guarded, i32) {
    std::fs::create_dir_all(notify_dir).unwrap();
    let mut notify = NotifyListener::new(notify_dir);
    let mut child = Guarded(
        mctl()
            .args(["run", "-q", "-M", name])
            .args(opts)
            .arg("-D")
            .arg(dir)
            .args(["--", "sleep", "60"])
            .env("NOTIFY_SOCKET", &notify.path)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let Some(leader) = notify.wait_leader(0, Duration::from_secs(20)) else {
        stop_launcher(&mut child);
        panic!("machine {name} did not start: {}", read_all(child.stderr.take().unwrap()));
    };
    (child, leader)
}

fn alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// `--read-only` machines take a shared lock on their tree: two run on one tree at once, while
/// a writable launch of it is refused as locked (and a writable machine locks out read-only ones).
#[test]
fn read_only_machines_share_a_tree_a_writable_launch_finds_locked() {
    let (s, dir) = tree("rcshared");
    let (mut a, leader_a) = start_sleeper(&dir, &s.path().join("a"), "rcsha", &["--read-only"]);
    let (mut b, leader_b) = start_sleeper(&dir, &s.path().join("b"), "rcshb", &["--read-only"]);
    assert!(alive(leader_a) && alive(leader_b), "both read-only machines run at once");
    let o = run_in(&dir, &["-M", "rcshw"], &["true"]);
    assert_eq!(o.status.code(), Some(1), "a writable launch ran beside read-only ones: {}", stderr(&o));
    assert!(stderr(&o).contains("is already in use by a running machine (it is locked)"), "{}", stderr(&o));
    assert_no_leaks("rcshw", &dir);
    assert!(alive(leader_a) && alive(leader_b));
    assert_eq!(stop_launcher(&mut a).code(), Some(137));
    assert_eq!(stop_launcher(&mut b).code(), Some(137));

    // Once they are gone the writable launch works, and holds the lock alone.
    let (mut w, _) = start_sleeper(&dir, &s.path().join("w"), "rcshw", &[]);
    let o = run_in(&dir, &["-M", "rcsha", "--read-only"], &["true"]);
    assert_eq!(o.status.code(), Some(1), "a read-only launch ran beside a writable one: {}", stderr(&o));
    assert!(stderr(&o).contains("it is locked"), "{}", stderr(&o));
    assert_eq!(stop_launcher(&mut w).code(), Some(137));
    for name in ["rcsha", "rcshb", "rcshw"] {
        assert_no_leaks(name, &dir);
    }
}

/// What a command sees of its identity: `/dev/shm` a tmpfs, `/run/host/notify` a socket, the
/// UUID in `/run/host/container-uuid` and `$container_uuid`: `--uuid` for a tree without a
/// machine ID, a fresh random one per run without it, the tree's own machine ID when it has one.
#[test]
fn dev_shm_notify_socket_and_the_machine_uuid() {
    let (_s, dir) = tree("rcuuid");
    assert_eq!(std::fs::read(dir.join("etc/machine-id")).unwrap(), b"", "the fixture has a machine ID");
    let script = "awk '$2 == \"/dev/shm\" {print $3}' /proc/mounts; [ -S /run/host/notify ] && echo notify-socket; \
                  cat /run/host/container-uuid; echo \"$container_uuid\"";
    let ids = |opts: &[&str]| -> String {
        let o = run_in(&dir, opts, &["sh", "-c", script]);
        assert!(o.status.success(), "{}", stderr(&o));
        let out = stdout(&o);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert_eq!(&lines[..2], ["tmpfs", "notify-socket"], "{out}");
        assert_eq!(lines[2], lines[3], "/run/host/container-uuid and $container_uuid differ");
        lines[2].to_owned()
    };
    assert_eq!(ids(&["--uuid=0123456789abcdef0123456789abcdef"]), "01234567-89ab-cdef-0123-456789abcdef");
    let (r1, r2) = (ids(&[]), ids(&[]));
    for r in [&r1, &r2] {
        let u = uuid::Uuid::parse_str(r).unwrap_or_else(|e| panic!("{r}: {e}"));
        assert_eq!(u.get_version_num(), 4, "{r} is not random");
    }
    assert_ne!(r1, r2, "two runs of a tree without a machine ID got the same UUID");
    // The tree's machine ID takes precedence over --uuid (as with nspawn).
    std::fs::write(dir.join("etc/machine-id"), "fedcba9876543210fedcba9876543210\n").unwrap();
    assert_eq!(ids(&["--uuid=0123456789abcdef0123456789abcdef"]), "fedcba98-7654-3210-fedc-ba9876543210");
    assert_eq!(ids(&[]), "fedcba98-7654-3210-fedc-ba9876543210");
    assert_no_leaks("rcuuid", &dir);
}

/// The v1 hierarchies mounted on this host: (mount point, super options), one mount each.
fn v1_hierarchies() -> Vec<(std::path::PathBuf, Vec<String>)> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut seen = std::collections::HashSet::new();
    mountinfo
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mut r = right.split(' ');
            if r.next()? != "cgroup" {
                return None;
            }
            let opts: Vec<String> = r.nth(1)?.split(',').map(str::to_owned).collect();
            Some((std::path::PathBuf::from(left.split(' ').nth(4)?), opts))
        })
        .filter(|(_, opts)| seen.insert(opts.clone()))
        .collect()
}

/// `/proc/PID/cgroup` as (hierarchy id, controllers, path).
fn proc_cgroups(pid: u32) -> Vec<(String, String, String)> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut f = l.splitn(3, ':');
            (f.next().unwrap().to_owned(), f.next().unwrap().to_owned(), f.next().unwrap().to_owned())
        })
        .collect()
}

/// Checks the layout of this (hybrid) host: on a hybrid host (v1 controllers, the named
/// systemd hierarchy, cgroup2 at /sys/fs/cgroup/unified) the machine has
/// `<launcher's cgroup>/mctl/NAME/payload` in every v1 hierarchy and in cgroup2 while it runs,
/// and the v1 `devices.list` of the payload (and of the machine cgroup) is exactly the
/// allow-list of `src/cgroups/devices.rs`. On a pure-v2 host it asserts that there is no v1
/// hierarchy at all, and checks the cgroup2 path alone.
#[test]
fn on_hybrid_hosts_the_machine_has_a_cgroup_in_every_v1_hierarchy_and_the_device_list() {
    let (s, dir) = tree("rccgroups");
    let v1 = v1_hierarchies();
    let own = proc_cgroups(std::process::id());
    let hybrid = !v1.is_empty();
    if hybrid {
        // What a hybrid host looks like (this VM's layout).
        assert!(
            std::path::Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists(),
            "no cgroup2 at unified"
        );
        assert!(v1.iter().any(|(_, o)| o.iter().any(|o| o == "name=systemd")), "no named systemd hierarchy");
        assert!(v1.iter().any(|(_, o)| o.iter().any(|o| o == "devices")), "no v1 devices controller");
        assert_eq!(own.iter().filter(|(id, _, _)| id != "0").count(), v1.len(), "{own:?} vs {v1:?}");
    } else {
        // Pure cgroup v2: the kernel shows this process in the unified hierarchy only.
        assert_eq!(own.iter().map(|(id, c, _)| (id.as_str(), c.as_str())).collect::<Vec<_>>(), [("0", "")]);
    }

    let (mut child, leader) = start_sleeper(&dir, &s.path().join("n"), "rccgroups", &[]);
    let launcher = proc_cgroups(child.id());
    let machine = proc_cgroups(u32::try_from(leader).unwrap());
    assert_eq!(launcher.len(), machine.len(), "{launcher:?} vs {machine:?}");
    for ((id, controllers, path), (mid, mcontrollers, mpath)) in launcher.iter().zip(&machine) {
        assert_eq!((id, controllers), (mid, mcontrollers));
        let want = format!("{}/mctl/rccgroups/payload", path.trim_end_matches('/'));
        assert_eq!(*mpath, want, "hierarchy {id}:{controllers}");
        // The directory is there and holds PID 1.
        let mount = if id == "0" {
            ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
                .iter()
                .map(std::path::PathBuf::from)
                .find(|p| p.join("cgroup.procs").exists() && p.join("cgroup.controllers").exists())
                .expect("a cgroup2 mount")
        } else {
            v1.iter()
                .find(|(_, opts)| controllers.split(',').all(|c| opts.iter().any(|o| o == c)))
                .unwrap_or_else(|| panic!("no mount for hierarchy {id}:{controllers}"))
                .0
                .clone()
        };
        let payload = mount.join(want.trim_start_matches('/'));
        let procs = std::fs::read_to_string(payload.join("cgroup.procs"))
            .unwrap_or_else(|e| panic!("{}: {e}", payload.display()));
        assert!(procs.lines().any(|l| l == leader.to_string()), "PID 1 not in {}", payload.display());
        if controllers == "devices" {
            let mut allowed: Vec<String> =
                mctl::cgroups::devices::MACHINE_DEVICES.iter().map(|r| r.v1_line()).collect();
            allowed.sort();
            assert!(allowed.contains(&"c 1:3 rwm".to_owned()) && allowed.contains(&"c 136:* rw".to_owned()));
            for cg in [payload.clone(), payload.parent().unwrap().to_owned()] {
                let mut list: Vec<String> = std::fs::read_to_string(cg.join("devices.list"))
                    .unwrap()
                    .lines()
                    .map(str::to_owned)
                    .collect();
                list.sort();
                assert_eq!(list, allowed, "devices.list of {}", cg.display());
            }
        }
    }
    if hybrid {
        let v1_seen = machine.iter().filter(|(id, _, _)| id != "0").count();
        assert_eq!(v1_seen, v1.len(), "the machine is not in every v1 hierarchy: {machine:?}");
        assert!(machine.iter().any(|(_, c, _)| c == "devices"));
    }
    assert_eq!(stop_launcher(&mut child).code(), Some(137));
    assert_no_leaks("rccgroups", &dir);
}

/// A cgroup of the test's own in every hierarchy, as a session, a service or a CI job has one;
/// removed (with whatever a launcher left in it) when dropped.
struct OwnerCgroups(Vec<std::path::PathBuf>);

impl Drop for OwnerCgroups {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = std::fs::remove_dir(dir.join("mctl"));
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// The shared `mctl` directory stays once made at a hierarchy's root (making it anew for every
/// launch cost 0.4 ms), but below a cgroup of whoever runs the launcher it goes when empty:
/// left behind, it would keep that cgroup's owner from removing it.
#[test]
fn the_shared_mctl_cgroup_goes_when_empty_except_at_a_root() {
    let (_s, dir) = tree("rparent");
    let unified = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.join("cgroup.controllers").exists())
        .expect("a cgroup2 mount");
    let mounts: Vec<std::path::PathBuf> =
        v1_hierarchies().into_iter().map(|(m, _)| m).chain(std::iter::once(unified.clone())).collect();
    let owner = OwnerCgroups(
        mounts.iter().map(|m| m.join(format!("mctltest-owner-{}", std::process::id()))).collect(),
    );
    for d in &owner.0 {
        std::fs::create_dir(d).unwrap();
        // A new v1 cpuset cgroup takes no process until it has CPUs and memory nodes.
        for f in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(v) = std::fs::read_to_string(d.parent().unwrap().join(f)) {
                std::fs::write(d.join(f), v.trim()).unwrap();
            }
        }
    }
    let join: String =
        owner.0.iter().map(|d| format!("echo $$ > {}/cgroup.procs && ", d.display())).collect();
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{join} exec \"$0\" run -q -D \"$1\" true"))
        .arg(env!("CARGO_BIN_EXE_mctl"))
        .arg(&dir)
        .env("DBUS_SYSTEM_BUS_ADDRESS", NO_BUS)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    for d in &owner.0 {
        assert!(!d.join("mctl").exists(), "{}/mctl outlived the machine", d.display());
        std::fs::remove_dir(d).unwrap_or_else(|e| panic!("the owner cannot remove {}: {e}", d.display()));
    }

    // From a hierarchy's root (where this test runs, in the hierarchies where it does), the
    // directory stays for the next launch.
    assert_eq!(run_in(&dir, &[], &["true"]).status.code(), Some(0));
    let at_root: Vec<_> = proc_cgroups(std::process::id())
        .into_iter()
        .filter(|(_, _, path)| path == "/")
        .map(|(id, controllers, _)| (id, controllers))
        .collect();
    assert!(!at_root.is_empty(), "this test runs below a cgroup in every hierarchy");
    if at_root.iter().any(|(id, _)| id == "0") {
        assert!(unified.join("mctl").is_dir(), "the shared directory went at the root");
    }
    assert_no_leaks("rparent", &dir);
}
