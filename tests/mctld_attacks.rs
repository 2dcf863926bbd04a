//! Attacks on mctld, run for real on a test bus (issue 17): an unprivileged caller that gains a
//! capability after connecting, a guest that turns its os-release into a FIFO, an unprivileged
//! flood of huge and pipelined calls, and a machine registered with a host process as leader.
//! The hostile clients are `tests/data/mctld_attack.py` (jeepney), run as nobody.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const NOBODY: u32 = 65534;
const MANAGER: &str = "/org/freedesktop/machine1";
const MANAGER_IFACE: &str = "org.freedesktop.machine1.Manager";
const MCTL_IFACE: &str = "org.mctl.Manager1";
/// How mctld's own refusal reads; the bus policy's says "Rejected send message" instead.
const MCTLD_DENIAL: &str = "error org.freedesktop.DBus.Error.AccessDenied Access denied: only root may";
/// A bus policy that lets every call through to mctld, so that what refuses is mctld itself.
const OPEN_POLICY: &str =
    r#"<policy context="mandatory"><allow send_destination="org.mctl.Machine1"/></policy>"#;

/// A process of the test's, killed (by its pid) and reaped when the test ends, also on failure.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Clears the immutable flag of a store's images when the test ends: a successful attack
/// (MarkImageReadOnly) would otherwise leave a scratch directory nobody can remove.
struct Mutable(PathBuf);

impl Drop for Mutable {
    fn drop(&mut self) {
        for e in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
            let _ = Command::new("chattr").arg("-i").arg(e.path()).output();
        }
    }
}

/// A scratch directory anybody can enter (the attack script and binaries live there).
fn scratch_for_nobody() -> tempfile::TempDir {
    let s = scratch();
    std::fs::set_permissions(s.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    s
}

fn attack_script(dir: &Path) -> PathBuf {
    let p = dir.join("mctld_attack.py");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/mctld_attack.py"), &p).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    p
}

/// The attack script as nobody, on the test bus.
fn attacker(bus: &TestBus, script: &Path, args: &[&str]) -> Killed {
    let child = Command::new("/usr/bin/python3")
        .arg(script)
        .args(args)
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tests/data/mctld_attack.py (python3-jeepney)");
    Killed(child)
}

fn mctl_as_root(bus: &TestBus, args: &[&str]) -> Output {
    mctl().env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address).args(args).stdin(Stdio::null()).output().unwrap()
}

/// A busybox machine running `sleep`, registered with mctld as `name`: (launcher, leader, tree).
fn sleeping_machine(bus: &TestBus, scratch: &Path, name: &str) -> (Guarded, i32, PathBuf) {
    let dir = copy_tree(busybox_tree(), scratch, name);
    let mut notify = NotifyListener::new(scratch);
    let launcher = Guarded(
        mctl()
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
            .env("NOTIFY_SOCKET", &notify.path)
            .args(["run", "-q", "--register=yes", "-D"])
            .arg(&dir)
            .args(["--", "sleep", "120"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let leader = notify.wait_leader(0, Duration::from_secs(10)).expect("machine started");
    assert!(wait_until(Duration::from_secs(5), || {
        stdout(&mctl_as_root(bus, &["list", "--no-legend"])).contains(&format!("{name} "))
    }));
    (launcher, leader, dir)
}

fn call_spec(path: &str, iface: &str, member: &str, sig: &str, args: serde_json::Value) -> serde_json::Value {
    json!([path, iface, member, sig, args])
}

fn process_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit(')').next().is_some_and(|r| !r.trim_start().starts_with('Z')))
}

/// Issue 17 #6: a caller that connects unprivileged, then has the process the bus knows it by
/// exec a binary with file capabilities (CAP_KILL, CAP_SYS_ADMIN) while a forked child keeps
/// the connection, must still be refused everything: mctld decides on the connection's uid.
#[test]
fn a_capability_gained_after_connecting_grants_nothing() {
    let s = scratch_for_nobody();
    let bus = TestBus::start_with(s.path(), OPEN_POLICY);
    let store = s.path().join("store");
    std::fs::create_dir(&store).unwrap();
    copy_tree(busybox_tree(), &store, "mhimg");
    let _mutable = Mutable(store.clone());
    let mctld_dir = s.path().join("mctld");
    std::fs::create_dir(&mctld_dir).unwrap();
    let _mctld = Mctld::start_args(&bus, &mctld_dir, &["--pool-path", store.to_str().unwrap()]);
    let (_launcher, leader, _dir) = sleeping_machine(&bus, s.path(), "mhauth");
    let script = attack_script(s.path());
    let capsleep = s.path().join("mhcapsleep");
    std::fs::copy("/bin/sleep", &capsleep).unwrap();
    let o = Command::new("setcap").arg("cap_kill,cap_sys_admin+ep").arg(&capsleep).output().unwrap();
    assert!(o.status.success(), "setcap: {}", stderr(&o));

    let machine = format!("{MANAGER}/machine/mhauth");
    let calls = json!([
        call_spec(MANAGER, MANAGER_IFACE, "MarkImageReadOnly", "sb", json!(["mhimg", true])),
        call_spec(MANAGER, MANAGER_IFACE, "CloneImage", "ssb", json!(["mhimg", "mhimg2", false])),
        call_spec(MANAGER, MCTL_IFACE, "FreezeMachine", "s", json!(["mhauth"])),
        call_spec(MANAGER, MCTL_IFACE, "ThawMachine", "s", json!(["mhauth"])),
        call_spec(MANAGER, MANAGER_IFACE, "KillMachine", "ssi", json!(["mhauth", "all", 9])),
        call_spec(&machine, "org.freedesktop.machine1.Machine", "Kill", "si", json!(["leader", 9])),
        call_spec(
            MANAGER,
            MANAGER_IFACE,
            "RegisterMachine",
            "sayssus",
            json!(["mhevil", [], "evil", "container", 0, ""])
        ),
        call_spec(&machine, "org.freedesktop.machine1.Machine", "Terminate", "", json!([])),
        call_spec(MANAGER, MANAGER_IFACE, "TerminateMachine", "s", json!(["mhauth"])),
        call_spec(MANAGER, MANAGER_IFACE, "UnregisterMachine", "s", json!(["mhauth"])),
        call_spec(MANAGER, MANAGER_IFACE, "RemoveImage", "s", json!(["mhimg"])),
    ]);
    let mut atk = attacker(&bus, &script, &["capexec", capsleep.to_str().unwrap(), &calls.to_string()]);
    // EOF once the child is done: the exec'd parent's output goes to /dev/null.
    let out = read_all(atk.0.stdout.take().unwrap());
    let err = read_all(atk.0.stderr.take().unwrap());
    let mut lines = out.lines();
    let first = lines.next().unwrap_or_default();
    // The attack is real: the connecting process did gain the capabilities.
    let eff = first.rsplit(' ').next().and_then(|h| u64::from_str_radix(h, 16).ok()).unwrap_or(0);
    assert!(eff & (1 << 5) != 0 && eff & (1 << 21) != 0, "no capabilities gained: {out}\n{err}");
    let results: Vec<&str> = lines.collect();
    assert_eq!(results.len(), calls.as_array().unwrap().len(), "{out}\n{err}");
    for (r, c) in results.iter().zip(calls.as_array().unwrap()) {
        let member = c[2].as_str().unwrap();
        assert!(
            r.starts_with(&format!("{member} {MCTLD_DENIAL}")),
            "{member} was not refused by mctld: {r}\nall results:\n{out}"
        );
    }
    drop(atk);

    // Nothing changed: the machine runs, no machine was added, the image is untouched.
    assert!(process_alive(leader), "the machine's leader is gone");
    let list = stdout(&mctl_as_root(&bus, &["list", "--no-legend"]));
    assert!(list.contains("mhauth ") && !list.contains("mhevil"), "{list}");
    let o = busctl(
        &bus,
        &[
            "get-property",
            "org.mctl.Machine1",
            &format!("{MANAGER}/image/mhimg"),
            "org.freedesktop.machine1.Image",
            "ReadOnly",
        ],
    );
    assert_eq!(stdout(&o), "b false\n", "{}", stderr(&o));
    assert!(store.join("mhimg").is_dir() && !store.join("mhimg2").exists());
}

/// The plain case through the real policy: nobody's `mctl terminate` is refused by mctld's own
/// check (the policy lets TerminateMachine through), and says so.
#[test]
fn an_unprivileged_terminate_is_refused_by_mctld_itself() {
    let s = scratch_for_nobody();
    let bus = TestBus::start(s.path());
    let _mctld = Mctld::start(&bus, s.path(), false);
    let (_launcher, leader, _dir) = sleeping_machine(&bus, s.path(), "mhterm");
    let o = mctl()
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .args(["terminate", "mhterm"])
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("Access denied: only root may terminate") && !stderr(&o).contains("Rejected"),
        "{}",
        stderr(&o)
    );
    assert!(process_alive(leader));
}

/// Issue 17 #7: a guest replaces its os-release with a FIFO; unprivileged callers asking for it
/// get an answer at once, and root's calls are served meanwhile.
#[test]
fn a_guest_fifo_os_release_ties_up_nothing() {
    let s = scratch_for_nobody();
    let bus = TestBus::start(s.path());
    let _mctld = Mctld::start(&bus, s.path(), false);
    let (_launcher, _leader, dir) = sleeping_machine(&bus, s.path(), "mhfifo");
    // What the guest's root can do to its own tree at any time.
    let fifo_mode = nix::sys::stat::Mode::from_bits_truncate(0o644);
    std::fs::remove_file(dir.join("etc/os-release")).unwrap();
    nix::unistd::mkfifo(&dir.join("etc/os-release"), fifo_mode).unwrap();
    std::fs::create_dir_all(dir.join("usr/lib")).unwrap();
    nix::unistd::mkfifo(&dir.join("usr/lib/os-release"), fifo_mode).unwrap();

    let script = attack_script(s.path());
    let spec = call_spec(MANAGER, MANAGER_IFACE, "GetMachineOSRelease", "s", json!(["mhfifo"]));
    let mut atk = attacker(&bus, &script, &["stall", "6", &spec.to_string()]);
    let mut lines = BufReader::new(atk.0.stdout.take().unwrap()).lines().map_while(Result::ok);
    assert_eq!(lines.next().as_deref(), Some("sent"));
    for _ in 0..3 {
        let t = Instant::now();
        let o = busctl(
            &bus,
            &["--timeout=5", "call", "org.mctl.Machine1", MANAGER, MANAGER_IFACE, "ListMachines"],
        );
        assert!(o.status.success(), "root's ListMachines failed: {}", stderr(&o));
        assert!(t.elapsed() < Duration::from_secs(1), "root's ListMachines took {:?}", t.elapsed());
    }
    let t = Instant::now();
    let o = mctl_as_root(&bus, &["list", "--no-legend"]);
    assert!(stdout(&o).starts_with("mhfifo container"), "{}{}", stdout(&o), stderr(&o));
    assert!(t.elapsed() < Duration::from_secs(2), "root's mctl list took {:?}", t.elapsed());
    let results: Vec<String> = lines.collect();
    assert_eq!(results.len(), 6, "{results:?}");
    for r in &results {
        let secs: f64 = r.rsplit(' ').next().unwrap().trim_end_matches('s').parse().unwrap();
        assert!(r.starts_with("GetMachineOSRelease error ") && secs < 2.0, "{results:?}");
    }
}

/// Samples a process's VmRSS (KiB) and thread count until stopped; returns the maxima.
fn sample_peak(pid: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(u64, u64)> {
    std::thread::spawn(move || {
        let (mut rss, mut threads) = (0, 0);
        while !stop.load(Ordering::Relaxed) {
            let Ok(st) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { break };
            let field = |k: &str| -> u64 {
                st.lines()
                    .find_map(|l| l.strip_prefix(k))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
                    .unwrap_or(0)
            };
            rss = rss.max(field("VmRSS:"));
            threads = threads.max(field("Threads:"));
            std::thread::sleep(Duration::from_millis(10));
        }
        (rss, threads)
    })
}

/// Issue 17 #8: nobody floods mctld with 30 MiB arguments and deep pipelines of expensive calls
/// on many connections; mctld's memory and threads stay bounded and root's `mctl list` keeps
/// answering quickly.
#[test]
fn an_unprivileged_flood_stays_bounded_and_root_is_served() {
    let s = scratch_for_nobody();
    let bus = TestBus::start(s.path());
    let mctld = Mctld::start(&bus, s.path(), false);
    let (_launcher, _leader, _dir) = sleeping_machine(&bus, s.path(), "mhflood");
    let script = attack_script(s.path());
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_peak(mctld.pid(), stop.clone());

    // 12 connections with 30 MiB strings, 12 more with ListMachinesDetailed, 50 deep each.
    let mut atk = attacker(&bus, &script, &["flood", "10", "12", "50", "30", "mhflood"]);
    let mut lines = BufReader::new(atk.0.stdout.take().unwrap()).lines().map_while(Result::ok);
    assert_eq!(lines.next().as_deref(), Some("flooding"));
    let mut slowest = Duration::ZERO;
    let mut calls = 0;
    while atk.0.try_wait().unwrap().is_none() {
        let t = Instant::now();
        let o = mctl_as_root(&bus, &["list", "--no-legend"]);
        assert!(stdout(&o).starts_with("mhflood container"), "root's list failed: {}", stderr(&o));
        slowest = slowest.max(t.elapsed());
        calls += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let (rss_kib, threads) = sampler.join().unwrap();
    let summary: Vec<String> = lines.collect();
    eprintln!(
        "flood: mctld peak RSS {} MiB, peak threads {threads}; root's mctl list: {calls} calls, slowest {slowest:?}; flooder saw {summary:?}",
        rss_kib / 1024
    );
    // The flood did reach mctld (and was turned away there).
    assert!(summary.iter().any(|l| l.starts_with("GetMachine error")), "{summary:?}");
    assert!(summary.iter().any(|l| l.starts_with("ListMachinesDetailed")), "{summary:?}");
    // Bounds: a few messages of the bus's maximum size in zbus's queue, 16 blocking threads.
    assert!(rss_kib < 256 * 1024, "mctld grew to {} MiB", rss_kib / 1024);
    assert!(threads < 32, "mctld ran {threads} threads");
    assert!(
        calls >= 5 && slowest < Duration::from_secs(2),
        "root's mctl list: {calls} calls, slowest {slowest:?}"
    );
}

/// A cgroup the test makes below its own cgroup2 cgroup, with `sleep`s in it; the sleeps are
/// killed and the cgroup removed when the test ends, also on failure.
struct SharedCgroup {
    dir: PathBuf,
    sleeps: Vec<Child>,
}

impl SharedCgroup {
    fn new(name: &str) -> SharedCgroup {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let own = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap().trim_start_matches('/').to_owned();
        let mount = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .find(|m| {
                Path::new(m).join("cgroup.procs").exists()
                    && Path::new(m).join("cgroup.subtree_control").exists()
            })
            .unwrap();
        let dir = Path::new(mount).join(own).join(name);
        std::fs::create_dir(&dir).unwrap();
        SharedCgroup { dir, sleeps: Vec::new() }
    }

    /// Starts a `sleep` in the cgroup; returns its index.
    fn sleep(&mut self) -> usize {
        let child = Command::new("sleep").arg("120").spawn().unwrap();
        self.sleeps.push(child);
        std::fs::write(self.dir.join("cgroup.procs"), self.sleeps.last().unwrap().id().to_string()).unwrap();
        self.sleeps.len() - 1
    }

    fn pid(&self, i: usize) -> u32 {
        self.sleeps[i].id()
    }

    fn exited(&mut self, i: usize) -> bool {
        self.sleeps[i].try_wait().unwrap().is_some()
    }

    fn frozen(&self) -> bool {
        std::fs::read_to_string(self.dir.join("cgroup.events")).unwrap().contains("frozen 1")
    }
}

impl Drop for SharedCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("cgroup.freeze"), "0");
        for c in &mut self.sleeps {
            let _ = c.kill();
            let _ = c.wait();
        }
        wait_until(Duration::from_secs(5), || {
            std::fs::read_to_string(self.dir.join("cgroup.procs")).is_ok_and(|p| p.trim().is_empty())
        });
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn register(bus: &TestBus, name: &str, leader: u32) {
    let o = busctl(
        bus,
        &[
            "call",
            "org.mctl.Machine1",
            MANAGER,
            MANAGER_IFACE,
            "RegisterMachine",
            "sayssus",
            name,
            "0",
            "test",
            "container",
            &leader.to_string(),
            "",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Issue 17 #11: root registers a plain host process that shares its cgroup with an unrelated
/// one; status, freeze, kill --kill-whom=all and terminate touch the leader only.
#[test]
fn a_host_process_machine_spares_its_cgroup_neighbours() {
    let s = scratch();
    let bus = TestBus::start(s.path());
    let _mctld = Mctld::start(&bus, s.path(), false);
    let mut cg = SharedCgroup::new(&format!("mh-shared-{}", std::process::id()));
    let leader = cg.sleep();
    let bystander = cg.sleep();
    register(&bus, "mhshared", cg.pid(leader));

    // status shows no process list of a cgroup that is not the machine's own.
    let o = mctl_as_root(&bus, &["status", "mhshared"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stdout(&o).contains(&cg.pid(bystander).to_string()), "{}", stdout(&o));
    // freeze is refused: there is no cgroup of the machine's own to freeze.
    let o = mctl_as_root(&bus, &["freeze", "mhshared"]);
    assert_eq!(o.status.code(), Some(1), "freeze was not refused");
    assert!(stderr(&o).contains("no cgroup of its own"), "{}", stderr(&o));
    assert!(!cg.frozen(), "the shared cgroup was frozen");
    // kill --kill-whom=all signals the leader alone.
    let o = mctl_as_root(&bus, &["kill", "--kill-whom=all", "-s", "SIGUSR1", "mhshared"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(wait_until(Duration::from_secs(5), || cg.exited(leader)), "the leader was not signalled");
    assert!(!cg.exited(bystander), "kill --kill-whom=all killed a process outside the machine");

    // terminate ends the leader alone.
    let leader2 = cg.sleep();
    assert!(wait_until(Duration::from_secs(5), || {
        !stdout(&mctl_as_root(&bus, &["list", "--no-legend"])).contains("mhshared ")
    }));
    register(&bus, "mhshared2", cg.pid(leader2));
    let o = mctl_as_root(&bus, &["terminate", "mhshared2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(wait_until(Duration::from_secs(5), || cg.exited(leader2)), "terminate did not end the leader");
    assert!(!cg.exited(bystander), "terminate killed a process outside the machine");
    assert!(wait_until(Duration::from_secs(5), || {
        stdout(&mctl_as_root(&bus, &["list"])) == "No machines.\n"
    }));
}
