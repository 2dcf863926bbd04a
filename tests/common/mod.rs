//! Shared helpers for the integration tests: fixtures (trees built by `bootstrap/`), a running
//! machine handle, readiness listening, and leak checks.

#![allow(dead_code)]

pub mod http;

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Where tests point the system bus when they start no bus of their own: nothing listens
/// there, so a launcher never registers with whatever manager the host runs (tests that want a
/// manager set the address of their own [`TestBus`], which overrides this).
pub const NO_BUS: &str = "unix:path=/nonexistent/mctl-tests-have-no-bus-here";

/// The mctl binary under test.
pub fn mctl() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mctl"));
    c.env("DBUS_SYSTEM_BUS_ADDRESS", NO_BUS);
    c
}

/// mctl with an image store and pull cache of a test's own, logging at info, no proxies,
/// stdin from /dev/null.
pub fn mctl_with_store(store: &Path, cache: &Path) -> Command {
    let mut c = mctl();
    c.env("MCTL_IMAGE_STORE", store).env("MCTL_PULL_CACHE", cache).env("MCTL_LOG", "info");
    for p in ["http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"] {
        c.env_remove(p);
    }
    c.stdin(Stdio::null());
    c
}

/// Runs `cmd` and asserts success.
pub fn output_ok(mut cmd: Command, args: &[&str]) -> Output {
    let o = cmd.args(args).output().expect("spawn mctl");
    assert!(o.status.success(), "mctl {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    o
}

/// Runs `cmd`, asserts failure with `needle` in its stderr.
pub fn output_fails(mut cmd: Command, args: &[&str], needle: &str) -> Output {
    let o = cmd.args(args).output().expect("spawn mctl");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "mctl {args:?} succeeded; stderr: {err}");
    assert!(err.contains(needle), "mctl {args:?}: expected '{needle}' in: {err}");
    o
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cached(recipe: &str, args: &[&str]) -> PathBuf {
    let out = Command::new(repo().join("bootstrap/cached.sh"))
        .arg(recipe)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("run bootstrap/cached.sh");
    assert!(out.status.success(), "building the {recipe} fixture failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// The cached busybox tree (read-only use: copy it before launching).
pub fn busybox_tree() -> &'static Path {
    static T: OnceLock<PathBuf> = OnceLock::new();
    T.get_or_init(|| cached("busybox", &[]))
}

/// The cached Debian bookworm tree with systemd (copy it before booting).
pub fn debian_tree() -> &'static Path {
    static T: OnceLock<PathBuf> = OnceLock::new();
    T.get_or_init(|| cached("debian", &["bookworm"]))
}

/// A scratch directory removed at drop; lives in /var/tmp (a real disk filesystem).
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("mctl-test-").tempdir_in("/var/tmp").expect("create scratch dir")
}

/// A private copy of `tree` at `<scratch>/<name>` (the directory name becomes the default
/// machine name).
pub fn copy_tree(tree: &Path, scratch: &Path, name: &str) -> PathBuf {
    let dest = scratch.join(name);
    let st = Command::new("cp").arg("-a").arg(tree).arg(&dest).status().expect("cp");
    assert!(st.success(), "copying {} failed", tree.display());
    dest
}

/// Runs `mctl run -q -D dir ARGS...` with stdin closed and returns its output.
pub fn run_in(dir: &Path, opts: &[&str], cmd: &[&str]) -> Output {
    run_from("-D", dir, opts, cmd)
}

/// Runs `mctl run -q FLAG path ARGS...` (`-D` a tree, `-i` a disk image) with stdin closed and
/// returns its output.
pub fn run_from(flag: &str, path: &Path, opts: &[&str], cmd: &[&str]) -> Output {
    mctl()
        .args(["run", "-q", flag])
        .arg(path)
        .args(opts)
        .arg("--")
        .args(cmd)
        .stdin(Stdio::null())
        .output()
        .expect("spawn mctl")
}

/// stdout as a string.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// stderr as a string.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts that nothing of machine `name` (rooted at `dir`) is left on the host: no cgroup of
/// that name below a `mctl` directory in any hierarchy (at any depth), no mount at or below its
/// directory in the host's mount namespace (this test's: the launcher's own mounts live in
/// namespaces that die with it, so a mount could only leak here). Places that cannot be read
/// fail the check. Processes: see [`machine_processes`] and [`assert_processes_gone`].
pub fn assert_no_leaks(name: &str, dir: &Path) {
    let leftovers = machine_cgroups(name);
    assert!(leftovers.is_empty(), "cgroups of machine {name} left behind: {leftovers:?}");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    let d = dir.to_string_lossy();
    let left: Vec<&str> = mountinfo
        .lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|m| m == d || m.starts_with(&format!("{d}/"))))
        .collect();
    assert!(left.is_empty(), "mounts under {d} left behind: {left:?}");
}

/// Every cgroup directory named `name` whose parent is a `mctl` directory, or named as the
/// machine's scope in a slice, in every hierarchy.
pub fn machine_cgroups(name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let rd = std::fs::read_dir("/sys/fs/cgroup").expect("read /sys/fs/cgroup");
    let mut roots: Vec<PathBuf> = rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
    // Pure cgroup v2: /sys/fs/cgroup itself is the hierarchy.
    roots.push(PathBuf::from("/sys/fs/cgroup"));
    for r in roots {
        find_named(&r, name, &mut out);
    }
    out.sort();
    out.dedup();
    out
}

fn find_named(dir: &Path, name: &str, out: &mut Vec<PathBuf>) {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        // A cgroup removed while we walk is fine; anything else is a check that cannot see.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => panic!("cannot read {}: {e}", dir.display()),
    };
    for e in rd.flatten() {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let p = e.path();
        // Below `mctl`, or a slice's scope (`-S`): machine-NAME.scope, the name escaped.
        let scope = format!("machine-{}.scope", name.replace('-', "\\x2d"));
        let machine = dir.ends_with("mctl");
        if (machine && p.file_name().is_some_and(|f| f == name))
            || p.file_name().is_some_and(|f| f == scope.as_str())
        {
            out.push(p);
            continue;
        }
        // Below a machine's cgroup everything is its guest's, at any depth and with names that
        // may take a path past PATH_MAX (another test's machine may be making them now).
        if !machine {
            find_named(&p, name, out);
        }
    }
}

/// Removes the cgroup subtree `dir` (a failed test's leftovers), whatever its depth or the
/// length of its names: by descriptor, as the launcher does (mctl::cgroups::tree), best effort.
pub fn remove_cgroup_tree(dir: &Path) {
    let _ = mctl::cgroups::tree::walk(dir, &mut |_| Ok(()), &mut |parent, name| {
        let _ = rustix::fs::unlinkat(parent, name, rustix::fs::AtFlags::REMOVEDIR);
        Ok(())
    });
    let _ = std::fs::remove_dir(dir);
}

/// Whether this host mounts the v1 freezer hierarchy (hybrid and legacy hosts), which a guest
/// can mount and use on itself.
pub fn has_v1_freezer() -> bool {
    std::fs::read_to_string("/proc/self/cgroup").unwrap().lines().any(|l| l.contains(":freezer:"))
}

/// Waits until the guest of machine `name` has frozen its cgroup `payload/SUB` in the v1
/// freezer hierarchy of a hybrid host (which a guest can mount and use on itself).
pub fn wait_guest_frozen(name: &str, sub: &str) {
    let state = machine_cgroups(name)
        .into_iter()
        .find(|d| d.starts_with("/sys/fs/cgroup/freezer"))
        .expect("the machine's v1 freezer cgroup")
        .join("payload")
        .join(sub)
        .join("freezer.state");
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(&state)
            .is_ok_and(|s| s.trim() == "FROZEN")),
        "the guest did not freeze {}",
        state.display()
    );
}

/// The processes of machine `name` (pid and start time), from its cgroups' `cgroup.procs`.
pub fn machine_processes(name: &str) -> Vec<(i32, u64)> {
    let mut pids = Vec::new();
    for cg in machine_cgroups(name) {
        collect_procs(&cg, &mut pids);
    }
    pids.sort();
    pids.dedup();
    pids.into_iter().filter_map(|p| start_time(p).map(|t| (p, t))).collect()
}

/// The processes in the cgroup2 cgroup of `leader` (a machine's payload cgroup) and below.
pub fn leader_cgroup_processes(leader: i32) -> Vec<(i32, u64)> {
    let own = std::fs::read_to_string(format!("/proc/{leader}/cgroup")).expect("read the leader's cgroup");
    let rel =
        own.lines().find_map(|l| l.strip_prefix("0::")).expect("a cgroup2 line").trim_start_matches('/');
    // A booted guest's systemd moves itself below the payload cgroup (init.scope): take the
    // whole payload cgroup, the root of the guest's cgroup namespace.
    let rel = match rel.rfind("/payload/") {
        Some(i) => &rel[..i + "/payload".len()],
        None => rel,
    };
    let unified = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .map(Path::new)
        .find(|p| p.join("cgroup.procs").exists())
        .expect("a cgroup2 hierarchy");
    let mut pids = Vec::new();
    collect_procs(&unified.join(rel), &mut pids);
    pids.sort();
    pids.into_iter().filter_map(|p| start_time(p).map(|t| (p, t))).collect()
}

fn collect_procs(dir: &Path, out: &mut Vec<i32>) {
    if let Ok(s) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_procs(&e.path(), out);
            }
        }
    }
}

fn start_time(pid: i32) -> Option<u64> {
    mctl::procfs::start_time(u32::try_from(pid).ok()?)
}

/// Asserts that every process of `procs` (from [`machine_processes`]) is gone (a pid reused by
/// a later process does not count).
pub fn assert_processes_gone(procs: &[(i32, u64)]) {
    let alive =
        || -> Vec<(i32, u64)> { procs.iter().copied().filter(|(p, t)| start_time(*p) == Some(*t)).collect() };
    wait_until(Duration::from_secs(5), || alive().is_empty());
    let left = alive();
    assert!(left.is_empty(), "processes of the machine outlived it: {left:?}");
}

/// A notify socket standing in for systemd: records what `mctl boot` reports upwards.
pub struct NotifyListener {
    sock: UnixDatagram,
    pub path: PathBuf,
    pub seen: Vec<String>,
}

impl NotifyListener {
    pub fn new(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        Self { sock, path, seen: Vec::new() }
    }

    /// Waits until a datagram containing `needle` arrives; returns it.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Option<String> {
        if let Some(s) = self.seen.iter().find(|s| s.contains(needle)) {
            return Some(s.clone());
        }
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            self.sock.set_read_timeout(Some(deadline - Instant::now())).ok();
            match self.sock.recv(&mut buf) {
                Ok(n) => {
                    let s = String::from_utf8_lossy(&buf[..n]).into_owned();
                    self.seen.push(s.clone());
                    if s.contains(needle) {
                        return Some(s);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    break;
                }
                Err(e) => panic!("reading the notify socket {}: {e}", self.path.display()),
            }
        }
        None
    }

    /// Waits for a new `X_MCTL_LEADER_PID` announcement and returns the pid.
    pub fn wait_leader(&mut self, after: usize, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            let leaders: Vec<i32> = self
                .seen
                .iter()
                .filter_map(|s| s.lines().find_map(|l| l.strip_prefix("X_MCTL_LEADER_PID=")))
                .filter_map(|p| p.parse().ok())
                .collect();
            if leaders.len() > after {
                return Some(leaders[after]);
            }
            if Instant::now() >= deadline {
                return None;
            }
            let mut buf = [0u8; 4096];
            self.sock.set_read_timeout(Some(Duration::from_millis(200))).ok();
            if let Ok(n) = self.sock.recv(&mut buf) {
                self.seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    }

    /// How many `READY=1` datagrams arrived so far (after draining pending ones).
    pub fn ready_count(&mut self) -> usize {
        self.sock.set_nonblocking(true).ok();
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.sock.recv(&mut buf) {
            self.seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        self.sock.set_nonblocking(false).ok();
        self.seen.iter().filter(|s| s.lines().any(|l| l == "READY=1")).count()
    }
}

/// A booted machine: `mctl boot` running in the background with its readiness observed.
pub struct Machine {
    pub child: Option<Child>,
    pub leader: i32,
    pub notify: NotifyListener,
    pub name: String,
    pub dir: PathBuf,
    pub log: PathBuf,
}

/// How long a bookworm boot may take in CI.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

impl Machine {
    /// Boots `dir` with `opts`; waits for READY=1.
    pub fn boot(dir: &Path, scratch: &Path, opts: &[&str]) -> Machine {
        Self::boot_on(None, dir, scratch, opts)
    }

    /// Boots with the system bus at `bus` (a [`TestBus`] address), if given.
    pub fn boot_on(bus: Option<&str>, dir: &Path, scratch: &Path, opts: &[&str]) -> Machine {
        match bus {
            Some(address) => Self::boot_env(dir, scratch, opts, &[("DBUS_SYSTEM_BUS_ADDRESS", address)]),
            None => Self::boot_env(dir, scratch, opts, &[]),
        }
    }

    /// Boots with extra environment variables for mctl.
    pub fn boot_env(dir: &Path, scratch: &Path, opts: &[&str], env: &[(&str, &str)]) -> Machine {
        let notify = NotifyListener::new(scratch);
        let log = scratch.join("console.log");
        let mut cmd = mctl();
        cmd.arg("boot");
        if !opts.iter().any(|o| o.starts_with("--console")) {
            cmd.arg("--console=read-only");
        }
        cmd.envs(env.iter().copied());
        let child = cmd
            .arg("-D")
            .arg(dir)
            .args(opts)
            .env("NOTIFY_SOCKET", &notify.path)
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::fs::File::options().create(true).append(true).open(&log).unwrap()))
            .stderr(Stdio::from(std::fs::File::options().append(true).open(&log).unwrap()))
            .spawn()
            .expect("spawn mctl boot");
        let name = opts
            .windows(2)
            .find(|w| w[0] == "-M")
            .map(|w| w[1].to_owned())
            .unwrap_or_else(|| dir.file_name().unwrap().to_string_lossy().into_owned());
        let mut m = Machine { child: Some(child), leader: 0, notify, name, dir: dir.to_owned(), log };
        m.leader = m
            .notify
            .wait_leader(0, BOOT_TIMEOUT)
            .unwrap_or_else(|| panic!("no leader pid; log:\n{}", m.log_text()));
        assert!(
            m.notify.wait_for("READY=1", BOOT_TIMEOUT).is_some(),
            "machine did not become ready; log:\n{}",
            m.log_text()
        );
        m
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs a command inside the machine (all its namespaces) and returns its output.
    pub fn exec(&self, cmd: &[&str]) -> Output {
        Command::new("nsenter")
            .arg("-t")
            .arg(self.leader.to_string())
            .args(["-m", "-u", "-i", "-p", "-C", "-r", "-w", "--"])
            .args(cmd)
            .stdin(Stdio::null())
            .output()
            .expect("nsenter")
    }

    /// stdout of a command inside, trimmed.
    pub fn sh(&self, script: &str) -> String {
        stdout(&self.exec(&["/bin/sh", "-c", script])).trim().to_owned()
    }

    /// Sends `sig` to mctl itself.
    pub fn signal_launcher(&self, sig: i32) {
        let pid = i32::try_from(self.child.as_ref().unwrap().id()).unwrap();
        // SAFETY-free: a plain kill of our own child.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::try_from(sig).unwrap(),
        )
        .unwrap();
    }

    /// Waits for mctl to exit.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let st = wait_exit(self.child.as_mut()?, timeout)?;
        self.child = None;
        Some(st)
    }

    /// SIGTERM to mctl and wait for its exit status; every process the machine had is gone then.
    pub fn stop(&mut self) -> ExitStatus {
        let procs = leader_cgroup_processes(self.leader);
        assert!(!procs.is_empty(), "machine {} has no processes in its cgroup", self.name);
        self.signal_launcher(libc::SIGTERM);
        let st = self
            .wait(Duration::from_secs(60))
            .unwrap_or_else(|| panic!("mctl did not exit after SIGTERM; log:\n{}", self.log_text()));
        assert_processes_gone(&procs);
        st
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // No unwrap in a drop, which may run while a test panics.
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Reads everything a child wrote to a pipe.
pub fn read_all(mut r: impl Read) -> String {
    let mut s = String::new();
    let _ = r.read_to_string(&mut s);
    s
}

/// A private dbus-daemon configured like Debian's system bus, with mctl's own policy from
/// `dbus/` included.
pub struct TestBus {
    child: Child,
    pub address: String,
}

impl TestBus {
    pub fn start(dir: &Path) -> TestBus {
        Self::start_with(dir, "")
    }

    /// A bus with `extra` configuration after mctl's policy (e.g. a mandatory policy that lets
    /// every call through to mctld, so that mctld's own checks are what a test sees).
    pub fn start_with(dir: &Path, extra: &str) -> TestBus {
        let socket = dir.join("system_bus_socket");
        let config = dir.join("bus.conf");
        let policy = repo().join("dbus/org.mctl.Machine1.conf");
        let template = include_str!("../data/system-bus.conf.in");
        let text = template
            .replace("@SOCKET@", &socket.display().to_string())
            .replace("@EXTRA@", &format!("<include>{}</include>{extra}", policy.display()));
        std::fs::write(&config, text).unwrap();
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--print-address=1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dbus-daemon");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line)
            .unwrap();
        assert!(line.starts_with("unix:"), "dbus-daemon did not start: {line:?}");
        TestBus { child, address: format!("unix:path={}", socket.display()) }
    }
}

impl Drop for TestBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running mctld on a test bus.
pub struct Mctld {
    child: Option<Child>,
    pub state_dir: PathBuf,
}

impl Mctld {
    pub fn start(bus: &TestBus, dir: &Path, compat: bool) -> Mctld {
        let state_dir = dir.join("state");
        Self::start_with_state(bus, dir, compat, &state_dir)
    }

    /// Starts mctld with extra arguments (its state in `dir/state`).
    pub fn start_args(bus: &TestBus, dir: &Path, args: &[&str]) -> Mctld {
        let mut all = vec!["--state-dir".to_owned(), dir.join("state").display().to_string()];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        Self::spawn(bus, dir, &all)
    }

    pub fn start_with_state(bus: &TestBus, dir: &Path, compat: bool, state_dir: &Path) -> Mctld {
        let mut args = vec!["--state-dir".to_owned(), state_dir.display().to_string()];
        if compat {
            args.push("--machined-compat".into());
        }
        let mut m = Self::spawn(bus, dir, &args);
        m.state_dir = state_dir.to_owned();
        m
    }

    fn spawn(bus: &TestBus, dir: &Path, args: &[String]) -> Mctld {
        let notify_dir = tempfile::Builder::new().prefix("mctld-ready-").tempdir_in(dir).unwrap();
        let mut notify = NotifyListener::new(notify_dir.path());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mctld"));
        cmd.args(args).env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address).env("NOTIFY_SOCKET", &notify.path);
        let log = std::fs::File::create(dir.join("mctld.log")).unwrap();
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::from(log)).spawn().expect("start mctld");
        assert!(notify.wait_for("READY=1", Duration::from_secs(20)).is_some(), "mctld did not become ready");
        Mctld { child: Some(child), state_dir: dir.join("state") }
    }

    /// mctld's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("mctld running").id()
    }

    /// Kills mctld with SIGKILL (machines keep running).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Mctld {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // No unwrap in a drop, which may run while a test panics.
            if let Ok(pid) = i32::try_from(c.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            // A wedged mctld (the bug a test found) must not hang the test run.
            if wait_exit(&mut c, Duration::from_secs(10)).is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// `machinectl --no-pager ARGS` against the test bus. machinectl refuses to run unless
/// `/run/systemd/system` exists, so it runs in a private mount namespace with a tmpfs on /run
/// that has one (nothing changes on the host).
pub fn machinectl(bus: &TestBus, args: &[&str]) -> Output {
    Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/system && exec machinectl --no-pager \"$@\"")
        .arg("sh")
        .args(args)
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .stdin(Stdio::null())
        .output()
        .expect("run machinectl")
}

/// `busctl --system ARGS` against the test bus.
pub fn busctl(bus: &TestBus, args: &[&str]) -> Output {
    Command::new("busctl")
        .arg("--system")
        .args(args)
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .stdin(Stdio::null())
        .output()
        .expect("run busctl")
}

/// Waits until `cond` holds, polling.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    cond()
}

/// `child`'s exit status, if it exits within `timeout`.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops a launcher: SIGTERM (the machine's stop request), and once more after a while (kill)
/// if the payload ignored the first; returns its exit status.
pub fn stop_launcher(child: &mut Child) -> ExitStatus {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    for patience in [Duration::from_secs(1), Duration::from_secs(10)] {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        if let Some(st) = wait_exit(child, patience) {
            return st;
        }
    }
    let _ = child.kill();
    child.wait().unwrap()
}

/// A digest of a tree: every entry's path, type, mode, owner, size, mtime, content and link
/// target (not atime, which reading changes). Equal digests mean an untouched tree.
pub fn tree_digest(root: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt;
    fn walk(dir: &Path, root: &Path, h: &mut std::collections::hash_map::DefaultHasher) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            p.strip_prefix(root).unwrap().hash(h);
            (m.mode(), m.uid(), m.gid(), m.size(), m.mtime(), m.mtime_nsec(), m.rdev()).hash(h);
            if m.file_type().is_symlink() {
                std::fs::read_link(&p).unwrap().hash(h);
            } else if m.is_file() {
                std::fs::read(&p).unwrap().hash(h);
            } else if m.is_dir() {
                walk(&p, root, h);
            }
        }
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    walk(root, root, &mut h);
    h.finish()
}

/// Reads the pty master on a thread; chunks arrive on the channel.
pub fn pty_reader(master: &std::os::fd::OwnedFd) -> std::sync::mpsc::Receiver<Vec<u8>> {
    let fd = nix::unistd::dup(master).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut f = std::fs::File::from(fd);
        let mut buf = [0u8; 4096];
        while let Ok(n) = std::io::Read::read(&mut f, &mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    rx
}

pub fn expect_output(
    rx: &std::sync::mpsc::Receiver<Vec<u8>>,
    seen: &mut String,
    needle: &str,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    while !seen.contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(chunk) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            Err(_) => panic!("{needle:?} did not appear; output so far:\n{seen}"),
        }
    }
}

/// Spawns `cmd` as the session leader of a new pty of `rows`x`cols`, its controlling terminal;
/// returns the child and the master.
pub fn spawn_on_pty(mut cmd: Command, rows: u16, cols: u16) -> (Child, std::os::fd::OwnedFd) {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let ws = nix::pty::Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    let pty = nix::pty::openpty(Some(&ws), None).unwrap();
    let slave_fd = pty.slave.as_raw_fd();
    cmd.stdin(Stdio::from(pty.slave.try_clone().unwrap()))
        .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
        .stderr(Stdio::from(pty.slave.try_clone().unwrap()));
    // SAFETY: only async-signal-safe calls between fork and exec (setsid, ioctl).
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            if libc::ioctl(slave_fd, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    drop(pty.slave);
    (child, pty.master)
}

/// Watches a test bus for signals named `member`; subscribed (AddMatch done) when `new`
/// returns, so no signal emitted afterwards is missed. Each signal's first argument (a string)
/// arrives on the channel.
pub struct SignalWatch {
    pub rx: std::sync::mpsc::Receiver<String>,
}

impl SignalWatch {
    pub fn new(address: &str, member: &'static str) -> SignalWatch {
        let (tx, rx) = std::sync::mpsc::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let address = address.to_owned();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                use futures_util::StreamExt;
                let conn = zbus::connection::Builder::address(address.as_str()).build().await.unwrap();
                let rule = zbus::MatchRule::builder()
                    .msg_type(zbus::message::Type::Signal)
                    .member(member)
                    .build()
                    .unwrap();
                let mut stream = zbus::MessageStream::for_match_rule(rule, &conn, None).await.unwrap();
                let _ = ready_tx.send(());
                while let Some(Ok(msg)) = stream.next().await {
                    let body = msg.body();
                    if let Ok((name, _)) = body.deserialize::<(String, zbus::OwnedObjectPath)>()
                        && tx.send(name).is_err()
                    {
                        break;
                    }
                }
            });
        });
        ready_rx.recv_timeout(Duration::from_secs(10)).expect("signal watch subscribed");
        SignalWatch { rx }
    }

    /// Waits for a signal about `name`.
    pub fn wait_for(&self, name: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while let Ok(n) = self.rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            if n == name {
                return true;
            }
        }
        false
    }
}

/// A launcher child that is stopped (and its machine with it) when the test ends, also when an
/// assertion fails first.
pub struct Guarded(pub Child);

impl std::ops::Deref for Guarded {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Guarded {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            stop_launcher(&mut self.0);
        }
    }
}

/// Every extended attribute of `p` (not following a symlink), sorted by name.
pub fn xattrs_of(p: &Path) -> Vec<(OsString, Vec<u8>)> {
    let mut names = vec![0u8; 64 * 1024];
    let n = match rustix::fs::llistxattr(p, &mut names[..]) {
        Ok(n) => n,
        Err(_) => return Vec::new(),
    };
    let mut out: Vec<(OsString, Vec<u8>)> = names[..n]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(|name| {
            let name = std::ffi::OsStr::from_bytes(name).to_owned();
            let mut v = vec![0u8; 64 * 1024];
            let len = rustix::fs::lgetxattr(p, name.as_os_str(), &mut v[..]).unwrap();
            v.truncate(len);
            (name, v)
        })
        .collect();
    out.sort();
    out
}

/// `data` gzip-compressed.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}
