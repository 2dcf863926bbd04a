//! Networking tests: veth, bridge, zone, NAT, port forwards, bad input and stale cleanup.
//!
//! Every test runs in a forked child inside new network, mount and pid namespaces of its own
//! (the test's "host"); machines are `sleep`s started with `unshare --net` there, and the
//! "outside" is another such namespace. Nothing touches the real host's network namespace,
//! and when the test's pid namespace ends every process, link, namespace and nftables table
//! of the test goes with it, also on failure. State directories are temporary directories.
//! Tests shell out to `ip`, `nsenter`, `nft`, busybox `ping` and python3 servers; the library
//! never does.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mctl::network::{
    self, MachineNetwork, NetworkError, NetworkMode, NetworkSpec, parse_port,
    spec::{extra_macs, mac_address, parse_veth_extra},
};

static PANIC: Mutex<String> = Mutex::new(String::new());

/// Runs `f` in a child process in fresh network, mount and pid namespaces; fails the test with
/// the child's panic message if it panics, or if it takes longer than `timeout`.
fn in_test_host(timeout: Duration, f: impl FnOnce()) {
    let (r, w) = nix::unistd::pipe().unwrap();
    // SAFETY: the test binary has other threads; the child only uses its own thread's data,
    // allocates through glibc's fork-safe malloc, replaces the panic hook before anything can
    // panic (so it never takes the stderr lock another thread may hold) and leaves with _exit.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            drop(r);
            child_main(w, f)
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(w);
            let mut report = String::new();
            let deadline = Instant::now() + timeout;
            let mut file = std::fs::File::from(r);
            let fd = file.as_raw_fd();
            let mut buf = [0u8; 4096];
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let mut pfd = [nix::poll::PollFd::new(
                    // SAFETY: `file` owns this fd and outlives the poll call.
                    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
                    nix::poll::PollFlags::POLLIN,
                )];
                let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
                if left.is_zero() || nix::poll::poll(&mut pfd, ms).unwrap_or(0) == 0 {
                    if Instant::now() >= deadline {
                        let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                        let _ = nix::sys::wait::waitpid(child, None);
                        panic!("test timed out after {timeout:?}; so far: {report}");
                    }
                    continue;
                }
                match file.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => report.push_str(&String::from_utf8_lossy(&buf[..n])),
                }
            }
            let status = nix::sys::wait::waitpid(child, None).unwrap();
            assert!(report.ends_with("OK\n"), "test failed in its namespace ({status:?}):\n{report}");
        }
    }
}

fn child_main(w: OwnedFd, f: impl FnOnce()) -> ! {
    use nix::sched::{CloneFlags, unshare};
    std::panic::set_hook(Box::new(|info| {
        *PANIC.lock().unwrap_or_else(|e| e.into_inner()) = info.to_string()
    }));
    let mut out = std::fs::File::from(w);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).unwrap();
        unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID).unwrap();
        nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .unwrap();
    }));
    if result.is_err() {
        let _ = writeln!(out, "namespace setup failed: {}", PANIC.lock().unwrap());
        // SAFETY: _exit ends the process without running the parent's atexit handlers.
        unsafe { libc::_exit(1) };
    }
    // SAFETY: this child is single-threaded (fork keeps only the calling thread).
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            // PID 1 of the test's pid namespace: everything it starts dies with it.
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).unwrap();
                nix::mount::mount(
                    Some("proc"),
                    "/proc",
                    Some("proc"),
                    nix::mount::MsFlags::MS_NOSUID
                        | nix::mount::MsFlags::MS_NODEV
                        | nix::mount::MsFlags::MS_NOEXEC,
                    None::<&str>,
                )
                .unwrap();
                // sysfs shows the network namespace of whoever mounts it.
                nix::mount::mount(
                    Some("sysfs"),
                    "/sys",
                    Some("sysfs"),
                    nix::mount::MsFlags::MS_NOSUID,
                    None::<&str>,
                )
                .unwrap();
                network::loopback_up().unwrap();
                f();
            }));
            match r {
                Ok(()) => {
                    let _ = out.write_all(b"OK\n");
                }
                Err(_) => {
                    let _ = writeln!(out, "{}", PANIC.lock().unwrap_or_else(|e| e.into_inner()));
                }
            }
            // SAFETY: see above.
            unsafe { libc::_exit(0) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(out);
            let _ = nix::sys::wait::waitpid(child, None);
            // SAFETY: see above.
            unsafe { libc::_exit(0) }
        }
    }
}

/// A network namespace held by a `sleep` (a stand-in for a machine's PID 1, or "outside").
struct Ns {
    child: Child,
    pid: i32,
}

impl Ns {
    fn new() -> Ns {
        let child = Command::new("unshare").args(["--net", "sleep", "120"]).spawn().expect("spawn unshare");
        let pid = i32::try_from(child.id()).unwrap();
        let mine = std::fs::read_link("/proc/self/ns/net").unwrap();
        let ok = wait_until(Duration::from_secs(5), || {
            std::fs::read_link(format!("/proc/{pid}/ns/net")).is_ok_and(|l| l != mine)
                && std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e.ends_with("sleep"))
        });
        assert!(ok, "namespace process did not start");
        Ns { child, pid }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t").arg(self.pid.to_string()).args(["-n", "--"]).args(args);
        c
    }

    fn sh(&self, script: &str) -> String {
        out(self.cmd(&["sh", "-c", script]).output().unwrap())
    }

    /// A second process in the namespace (a `sleep`), which keeps it alive after PID 1 exits.
    fn hold(&self) -> Child {
        let holder = self.cmd(&["sleep", "60"]).spawn().unwrap();
        let (hp, ns) = (holder.id(), std::fs::read_link(format!("/proc/{}/ns/net", self.pid)).unwrap());
        assert!(wait_until(Duration::from_secs(5), || {
            std::fs::read_link(format!("/proc/{hp}/exe")).is_ok_and(|e| e.ends_with("sleep"))
                && std::fs::read_link(format!("/proc/{hp}/ns/net")).is_ok_and(|n| n == ns)
        }));
        holder
    }

    fn ping(&self, to: &str) -> bool {
        self.cmd(&["busybox", "ping", "-c1", "-W2", to]).output().unwrap().status.success()
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn out(o: Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

fn sh(script: &str) -> String {
    out(Command::new("sh").arg("-c").arg(script).output().unwrap())
}

fn host_ping(to: &str) -> bool {
    Command::new("busybox").args(["ping", "-c1", "-W2", to]).output().unwrap().status.success()
}

fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

fn spec(mode: NetworkMode, state: &Path) -> NetworkSpec {
    let mut s = NetworkSpec::new(mode);
    s.state_dir = state.to_owned();
    s
}

/// The link names of the test host, without `lo`.
fn links() -> Vec<String> {
    sh("ip -o link show")
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap().to_owned())
        .filter(|n| n != "lo")
        .collect()
}

fn ruleset() -> String {
    sh("nft list ruleset")
}

fn state_files(state: &Path) -> Vec<String> {
    let mut v = Vec::new();
    for sub in ["machines", "segments"] {
        if let Ok(rd) = std::fs::read_dir(state.join(sub)) {
            v.extend(rd.flatten().map(|e| format!("{sub}/{}", e.file_name().to_string_lossy())));
        }
    }
    v.sort();
    v
}

fn mac_string(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// A python3 server in `ns` (`nsenter`) that answers each TCP connection or UDP datagram with
/// `PREFIX <peer address>`; returns once it listens.
fn server(ns: Option<&Ns>, proto: &str, port: u16, prefix: &str) -> Child {
    let code = format!(
        r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_{kind})
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {port}))
if "{proto}" == "tcp": s.listen(8)
print("ready", flush=True)
for _ in range(20):
    if "{proto}" == "tcp":
        c, peer = s.accept(); c.sendall(("{prefix} " + peer[0] + "\n").encode()); c.close()
    else:
        data, peer = s.recvfrom(100); s.sendto(("{prefix} " + peer[0] + "\n").encode(), peer)
"#,
        kind = if proto == "tcp" { "STREAM" } else { "DGRAM" }
    );
    let mut cmd = match ns {
        Some(ns) => ns.cmd(&["python3", "-c", &code]),
        None => {
            let mut c = Command::new("python3");
            c.args(["-c", &code]);
            c
        }
    };
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "server did not start");
    child
}

fn tcp_ask(addr: &str, port: u16) -> String {
    let mut s =
        TcpStream::connect_timeout(&format!("{addr}:{port}").parse().unwrap(), Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("connect to {addr}:{port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    reply.trim().to_owned()
}

fn udp_ask(addr: &str, port: u16) -> String {
    let s = UdpSocket::bind("0.0.0.0:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.send_to(b"hi", format!("{addr}:{port}")).unwrap();
    let mut buf = [0u8; 200];
    let (n, _) = s.recv_from(&mut buf).unwrap_or_else(|e| panic!("no UDP reply from {addr}:{port}: {e}"));
    String::from_utf8_lossy(&buf[..n]).trim().to_owned()
}

/// Runs `f` in a forked process that is then killed with SIGKILL, like a launcher killed
/// before its teardown.
fn killed_launcher(f: impl FnOnce()) {
    // SAFETY: the caller runs inside `in_test_host`'s child, which is single-threaded.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_ok();
            if ok {
                let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
            }
            // SAFETY: leaves the forked child without running destructors.
            unsafe { libc::_exit(1) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            let st = nix::sys::wait::waitpid(child, None).unwrap();
            assert!(
                matches!(st, nix::sys::wait::WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGKILL, _)),
                "the doomed launcher failed before being killed: {st:?}"
            );
        }
    }
}

fn teardown_clean(mut net: MachineNetwork) {
    let errors = net.teardown_report();
    assert!(errors.is_empty(), "teardown problems: {errors:?}");
}

fn assert_clean(state: &Path) {
    assert_eq!(links(), Vec::<String>::new(), "links left behind");
    assert!(!ruleset().contains("table"), "nftables left behind:\n{}", ruleset());
    assert_eq!(state_files(state), Vec::<String>::new(), "state left behind");
}

#[test]
fn veth_addresses_and_ping_both_ways() {
    let state = tempfile::tempdir().unwrap();
    in_test_host(Duration::from_secs(30), || {
        let m = Ns::new();
        let net = network::setup(&spec(NetworkMode::Veth, state.path()), "m1", m.pid).expect("setup");
        assert_eq!(net.guest_addresses(), vec![std::net::IpAddr::V4(Ipv4Addr::new(10, 213, 0, 2))]);
        assert_eq!(net.host_link(), Some("ve-m1"));
        let index: i32 = sh("cat /sys/class/net/ve-m1/ifindex").trim().parse().unwrap();
        assert_eq!(net.host_ifindices(), vec![index]);

        let host = sh("ip -o addr show dev ve-m1; ip -o link show dev ve-m1");
        assert!(host.contains("inet 10.213.0.1/30"), "{host}");
        assert!(host.contains(&mac_string(mac_address("m1", "host"))), "{host}");
        assert!(host.contains("state UP"), "{host}");
        let guest = m.sh("ip -o addr show; ip -o link show; ip route");
        assert!(guest.contains("host0    inet 10.213.0.2/30"), "{guest}");
        assert!(guest.contains(&mac_string(mac_address("m1", "guest"))), "{guest}");
        assert!(guest.contains("default via 10.213.0.1 dev host0"), "{guest}");
        assert!(guest.contains("1: lo: <LOOPBACK,UP,LOWER_UP>"), "{guest}");
        assert!(guest.contains("inet 127.0.0.1/8"), "{guest}");

        assert!(host_ping("10.213.0.2"), "host cannot ping the guest");
        assert!(m.ping("10.213.0.1"), "guest cannot ping the host side");
        assert!(m.ping("127.0.0.1"), "guest loopback");
        // IPv6 link-local on both ends (the kernel's, once the links are up).
        assert!(wait_until(Duration::from_secs(5), || m
            .sh("ip -6 -o addr show dev host0")
            .contains("fe80::")));
        assert!(wait_until(Duration::from_secs(5), || sh("ip -6 -o addr show dev ve-m1").contains("fe80::")));
        assert_eq!(sh("cat /proc/sys/net/ipv4/ip_forward").trim(), "1");
        assert!(ruleset().contains("10.213.0.2 comment \"machine m1\""), "{}", ruleset());
        assert_eq!(state_files(state.path()), vec!["machines/m1.json"]);

        // A second launcher for the same machine is refused and changes nothing.
        let e = network::setup(&spec(NetworkMode::Veth, state.path()), "m1", m.pid).unwrap_err();
        assert!(e.to_string().starts_with("machine m1 already has a network"), "{e}");

        teardown_clean(net);
        assert_clean(state.path());
        assert_eq!(m.sh("ip -o link show").lines().count(), 1, "the guest keeps only lo");
    });
}

/// The launcher begins a machine's network before PID 1 exists: the state, the lease and the
/// NAT entries are there before the links; a launch that fails before PID 1 drops the
/// pending network, which takes all of it back; a finished one is the same as `setup`'s.
#[test]
fn a_begun_network_is_finished_or_taken_back() {
    let state = tempfile::tempdir().unwrap();
    in_test_host(Duration::from_secs(30), || {
        let s = spec(NetworkMode::Veth, state.path());
        let pending = network::begin(&s, "early").expect("begin");
        // The first half runs on a thread of its own: the state and the NAT entries appear.
        assert!(wait_until(Duration::from_secs(5), || state_files(state.path()) == ["machines/early.json"]));
        assert!(wait_until(Duration::from_secs(5), || ruleset().contains("comment \"machine early\"")));
        assert_eq!(links(), Vec::<String>::new(), "no link before PID 1 exists");
        drop(pending);
        assert_clean(state.path());

        let pending = network::begin(&s, "early").expect("begin");
        let m = Ns::new();
        let net = pending.finish(m.pid).expect("finish");
        assert_eq!(net.host_link(), Some("ve-early"));
        assert!(ruleset().contains("10.213.0.2 comment \"machine early\""), "{}", ruleset());
        assert!(m.ping("10.213.0.1"), "guest cannot ping the host side");
        // A second machine of the same name is refused when finished, and takes nothing back.
        let e = network::begin(&s, "early").expect("begin").finish(m.pid).map(|_| ()).unwrap_err();
        assert!(e.to_string().starts_with("machine early already has a network"), "{e}");
        assert!(m.ping("10.213.0.1"), "the refused launcher undid the first one's network");
        teardown_clean(net);
        assert_clean(state.path());
    });
}

/// The last machine's way out deletes the table over netlink directly: the table and its
/// entries go, another table stays, and a table already gone (a flushed ruleset) is fine.
#[test]
fn the_table_is_what_its_nft_declaration_makes() {
    use network::nat::{self, NatEntries};
    in_test_host(Duration::from_secs(20), || {
        let entries = |machine: &str, last_octet: u8, ports: &[&str]| NatEntries {
            machine: machine.into(),
            guest: Ipv4Addr::new(10, 213, 0, last_octet),
            ports: ports.iter().map(|p| parse_port(p).unwrap()).collect(),
        };
        let web = entries("web", 2, &["tcp:8080:80"]);
        let db = entries("db", 18, &["udp:53", "tcp:5432:5432"]);
        // nft's own rendering, of the kernel's objects and of their expressions and user data.
        let listing = || sh("nft list table ip mctl; nft --debug=netlink list table ip mctl");
        let declared = format!("{}{}", nat::table_commands(), nat::add_commands(&web));
        assert_eq!(sh(&format!("nft -f - <<'EOF'\n{declared}EOF")), "");
        let expected = listing();
        assert!(expected.contains("comment \"machine web\""), "{expected}");
        sh("nft delete table ip mctl");

        let web_sock = nat::add(&web, false).unwrap();
        assert_eq!(listing(), expected);
        // The state files' word on the table is wrong both ways at times: it is put right.
        let db_sock = nat::add(&db, false).unwrap();
        assert!(ruleset().contains("udp . 53 comment \"machine db\" : 10.213.0.18 . 53"), "{}", ruleset());
        let (sock, removed) = nat::remove(&db, false, Some(db_sock));
        removed.unwrap();
        nat::release_later(sock.expect("the socket given back"));
        assert!(!ruleset().contains("machine db") && ruleset().contains("machine web"), "{}", ruleset());
        // A host port forwarded already is refused as a whole, naming the port.
        let clash = entries("clash", 34, &["udp:53", "tcp:8080:81"]);
        let err = nat::add(&clash, true).unwrap_err().to_string();
        assert!(err.contains("forward host port tcp 8080") && err.contains("exists"), "{err}");
        assert!(!ruleset().contains("machine clash"), "{}", ruleset());
        // Entries already gone are no error.
        nat::remove(&db, false, None).1.unwrap();

        // The last machine deletes the table and only it.
        sh("nft add table ip someone_elses");
        nat::remove(&web, true, Some(web_sock)).1.unwrap();
        assert!(!ruleset().contains("mctl"), "{}", ruleset());
        assert!(ruleset().contains("table ip someone_elses"), "{}", ruleset());
        nat::remove(&web, true, None).1.expect("no table to delete is no error");
        let db_sock = nat::add(&db, true).expect("the table is made when it is missing after all");
        nat::remove(&db, true, Some(db_sock)).1.unwrap();
        assert!(!ruleset().contains("mctl"), "{}", ruleset());
        sh("nft delete table ip someone_elses");
    });
}

#[test]
fn private_namespace_path_and_host_need_nothing() {
    let state = tempfile::tempdir().unwrap();
    in_test_host(Duration::from_secs(20), || {
        let m = Ns::new();
        assert!(m.sh("ip -o link show lo").contains("state DOWN"));
        let mut s = spec(NetworkMode::Private, state.path());
        assert!(s.needs_netns());
        let net = network::setup(&s, "p1", m.pid).unwrap();
        assert!(net.host_ifindices().is_empty() && net.guest_addresses().is_empty());
        s.mode = NetworkMode::NamespacePath("/run/netns/x".into());
        assert_eq!(network::setup(&s, "p1", m.pid).unwrap().netns_path(), Some(Path::new("/run/netns/x")));
        s.mode = NetworkMode::Host;
        assert!(!s.needs_netns());
        network::setup(&s, "p1", m.pid).unwrap();
        assert_clean(state.path());
        // loopback_up in the machine's namespace, as the outer child calls it.
        let pid = m.pid;
        // SAFETY: this test process is single-threaded here (a forked child of the harness).
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).unwrap();
                let ok = nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).is_ok()
                    && network::loopback_up().is_ok();
                // SAFETY: leaves the forked child at once.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let st = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(st, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
        assert!(m.sh("ip -o link show lo").contains("UP"), "{}", m.sh("ip -o link show lo"));
        assert!(m.ping("127.0.0.1"));
    });
}

#[test]
fn bridge_and_zone_machines_ping_each_other() {
    let state = tempfile::tempdir().unwrap();
    in_test_host(Duration::from_secs(40), || {
        // A user's bridge with an address: guests get addresses in its subnet.
        sh("ip link add br0 type bridge && ip addr add 192.168.77.1/24 dev br0 && ip link set br0 up");
        let (a, b) = (Ns::new(), Ns::new());
        let mut with_port = spec(NetworkMode::Bridge("br0".into()), state.path());
        with_port.ports = vec![parse_port("9191:91").unwrap()];
        let na = network::setup(&with_port, "ba", a.pid).unwrap();
        let nb = network::setup(&spec(NetworkMode::Bridge("br0".into()), state.path()), "bb", b.pid).unwrap();
        assert_eq!(na.guest_network(), Some("192.168.77.2/24".parse().unwrap()));
        assert_eq!(nb.guest_network(), Some("192.168.77.3/24".parse().unwrap()));
        assert_eq!(na.gateway(), Some("192.168.77.1".parse().unwrap()));
        assert!(sh("ip -o link show master br0").contains("vb-ba"), "{}", sh("ip -o link show master br0"));
        assert!(wait_until(Duration::from_secs(5), || a.ping("192.168.77.3")), "ba cannot ping bb");
        assert!(b.ping("192.168.77.2"), "bb cannot ping ba");
        assert!(a.ping("192.168.77.1"), "ba cannot ping the bridge");
        // A forward into a user's bridge: route_localnet on the bridge, restored afterwards.
        let mut srv = server(Some(&a), "tcp", 91, "ba");
        assert_eq!(tcp_ask("127.0.0.1", 9191), "ba 192.168.77.1");
        assert_eq!(sh("cat /proc/sys/net/ipv4/conf/br0/route_localnet").trim(), "1");
        let _ = srv.kill();
        let _ = srv.wait();
        teardown_clean(na);
        assert_eq!(sh("cat /proc/sys/net/ipv4/conf/br0/route_localnet").trim(), "0");
        teardown_clean(nb);
        assert_eq!(links(), vec!["br0"], "the user's bridge stays, its ports go");
        sh("ip link del br0");

        // A zone: vz-lab is made with the first machine and removed with the last.
        let (c, d) = (Ns::new(), Ns::new());
        let mut zone_port = spec(NetworkMode::Zone("lab".into()), state.path());
        zone_port.ports = vec![parse_port("udp:9292:92").unwrap()];
        let nc = network::setup(&zone_port, "zc", c.pid).unwrap();
        let nd = network::setup(&spec(NetworkMode::Zone("lab".into()), state.path()), "zd", d.pid).unwrap();
        let zone = sh("ip -o addr show dev vz-lab");
        assert!(zone.contains("inet 10.213.255.1/24"), "{zone}");
        assert_eq!(nc.guest_network(), Some("10.213.255.2/24".parse().unwrap()));
        assert_eq!(nd.guest_network(), Some("10.213.255.3/24".parse().unwrap()));
        assert!(c.sh("ip route").contains("default via 10.213.255.1"));
        assert!(wait_until(Duration::from_secs(5), || c.ping("10.213.255.3")), "zc cannot ping zd");
        assert!(d.ping("10.213.255.2"), "zd cannot ping zc");
        assert!(host_ping("10.213.255.2"), "host cannot ping zc");
        let mut srv = server(Some(&c), "udp", 92, "zc");
        assert_eq!(udp_ask("127.0.0.1", 9292), "zc 10.213.255.1");
        let _ = srv.kill();
        let _ = srv.wait();
        teardown_clean(nc);
        assert!(links().contains(&"vz-lab".to_owned()), "zone removed while zd still uses it");
        let rules = ruleset();
        assert!(rules.contains("machine zd") && !rules.contains("machine zc"), "{rules}");
        assert!(d.ping("10.213.255.1"));
        teardown_clean(nd);
        assert_clean(state.path());
    });
}

#[test]
fn nat_to_outside_shows_the_host_address() {
    let state = tempfile::tempdir().unwrap();
    in_test_host(Duration::from_secs(30), || {
        let outside = Ns::new();
        let o = outside.pid.to_string();
        sh(&format!(
            "ip link add out-h type veth peer name out-o netns {o} && ip addr add 198.51.100.1/24 dev out-h \
             && ip link set out-h up"
        ));
        outside.sh("ip addr add 198.51.100.2/24 dev out-o && ip link set out-o up && ip link set lo up");
        let mut udp = server(Some(&outside), "udp", 7777, "seen");
        let mut tcp = server(Some(&outside), "tcp", 7778, "seen");
        let m = Ns::new();
        let net = network::setup(&spec(NetworkMode::Veth, state.path()), "nat1", m.pid).unwrap();
        let ask = |proto: &str, port: u16| {
            let code = format!(
                "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_{k}); s.settimeout(3); \
                 s.connect(('198.51.100.2', {port})); s.send(b'hi'); print(s.recv(100).decode().strip())",
                k = if proto == "tcp" { "STREAM" } else { "DGRAM" }
            );
            out(m.cmd(&["python3", "-c", &code]).output().unwrap()).trim().to_owned()
        };
        assert_eq!(ask("udp", 7777), "seen 198.51.100.1", "UDP source not masqueraded");
        assert_eq!(ask("tcp", 7778), "seen 198.51.100.1", "TCP source not masqueraded");
        // The machine's own subnet is not masqueraded towards the host.
        let mut local = server(None, "udp", 7779, "host saw");
        let code = "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3); \
                    s.connect(('10.213.0.1', 7779)); s.send(b'hi'); print(s.recv(100).decode().strip())";
        assert_eq!(out(m.cmd(&["python3", "-c", code]).output().unwrap()).trim(), "host saw 10.213.0.2");
        teardown_clean(net);
        for c in [&mut udp, &mut tcp, &mut local] {
            let _ = c.kill();
            let _ = c.wait();
        }
        sh("ip link del out-h");
        assert_clean(state.path());
    });
}

#[test]
fn tcp_and_udp_port_forwards_from_host_address_and_localhost() {
    let state = tempfile::tempdir().unwrap();
    in_test_host(Duration::from_secs(30), || {
        let m = Ns::new();
        let mut s = spec(NetworkMode::Veth, state.path());
        s.ports = vec![parse_port("8080:80").unwrap(), parse_port("udp:5353:53").unwrap()];
        let net = network::setup(&s, "web", m.pid).unwrap();
        let mut tcp = server(Some(&m), "tcp", 80, "guest tcp");
        let mut udp = server(Some(&m), "udp", 53, "guest udp");
        assert_eq!(sh("cat /proc/sys/net/ipv4/conf/ve-web/route_localnet").trim(), "1");
        assert_eq!(sh("cat /proc/sys/net/ipv4/conf/all/route_localnet").trim(), "0");
        assert_eq!(tcp_ask("10.213.0.1", 8080), "guest tcp 10.213.0.1");
        assert_eq!(tcp_ask("127.0.0.1", 8080), "guest tcp 10.213.0.1", "localhost is masqueraded");
        assert_eq!(udp_ask("10.213.0.1", 5353), "guest udp 10.213.0.1");
        assert_eq!(udp_ask("127.0.0.1", 5353), "guest udp 10.213.0.1");
        // The forward is gone with the machine: nothing answers on the host port any more.
        teardown_clean(net);
        assert!(
            TcpStream::connect_timeout(&"127.0.0.1:8080".parse().unwrap(), Duration::from_secs(1)).is_err()
        );
        for c in [&mut tcp, &mut udp] {
            let _ = c.kill();
            let _ = c.wait();
        }
        assert_clean(state.path());
    });
}

#[test]
fn bad_input_is_refused_and_leaves_nothing() {
    let state = tempfile::tempdir().unwrap();
    in_test_host(Duration::from_secs(30), || {
        let m = Ns::new();
        sh("ip link add ifb0 type ifb");
        let mut s = spec(NetworkMode::Veth, state.path());
        s.ports = vec![parse_port("8080").unwrap()];
        let first = network::setup(&s, "m1", m.pid).unwrap();
        let before = (links(), ruleset(), state_files(state.path()));
        let other = Ns::new();
        let fail = |s: &NetworkSpec, name: &str| -> String {
            let e: NetworkError = network::setup(s, name, other.pid).map(|_| ()).unwrap_err();
            assert_eq!((links(), ruleset(), state_files(state.path())), before, "leftovers after: {e}");
            assert_eq!(other.sh("ip -o link show").lines().count(), 1, "guest leftovers after: {e}");
            e.to_string()
        };
        assert_eq!(
            fail(&spec(NetworkMode::Bridge("br9".into()), state.path()), "m2"),
            "bridge br9 does not exist"
        );
        assert_eq!(
            fail(&spec(NetworkMode::Bridge("ifb0".into()), state.path()), "m2"),
            "ifb0 is not a bridge (link kind: ifb)"
        );
        assert_eq!(fail(&s, "m2"), "host port tcp:8080 is already forwarded to machine m1");
        let mut a = spec(NetworkMode::Veth, state.path());
        a.address = Some("10.99.0.2/30".parse().unwrap());
        assert_eq!(fail(&a, "m2"), "address 10.99.0.2/30 is outside the address pool 10.213.0.0/16");
        a.address = Some("10.213.0.2/30".parse().unwrap());
        assert_eq!(fail(&a, "m2"), "address 10.213.0.2/30 overlaps 10.213.0.0/30, leased to machine m1");
        let mut i = spec(NetworkMode::Veth, state.path());
        i.interfaces = vec!["eth7".into()];
        assert_eq!(fail(&i, "m2"), "network interface eth7 does not exist");
        let mut p = spec(NetworkMode::Private, state.path());
        p.ports = s.ports.clone();
        assert_eq!(fail(&p, "m2"), "--port needs --network-veth, --network-bridge or --network-zone");
        assert!(fail(&s, "bad_name").starts_with("invalid machine name 'bad_name'"));
        let me = nix::unistd::getpid().as_raw();
        let e = network::setup(&spec(NetworkMode::Veth, state.path()), "m4", me).map(|_| ()).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "pid {me} shares the launcher's network namespace: refusing to configure it as a machine's"
            )
        );
        assert_eq!((links(), ruleset(), state_files(state.path())), before);
        // A link name the kernel already has (not mctl's): the kernel's refusal, named, and
        // the other link left alone.
        sh("ip link add ve-m3 type ifb");
        let e =
            network::setup(&spec(NetworkMode::Veth, state.path()), "m3", other.pid).map(|_| ()).unwrap_err();
        assert_eq!(e.to_string(), "cannot add veth ve-m3: File exists");
        let mut expected = before.0.clone();
        expected.push("ve-m3".into());
        assert_eq!(
            (links(), ruleset(), state_files(state.path())),
            (expected, before.1.clone(), before.2.clone())
        );
        sh("ip link del ve-m3");
        // An explicit free address works.
        a.address = Some("10.213.9.6/30".parse().unwrap());
        let second = network::setup(&a, "m2", other.pid).unwrap();
        assert!(other.sh("ip -o addr show dev host0").contains("10.213.9.6/30"));
        assert!(sh("ip -o addr show dev ve-m2").contains("10.213.9.5/30"));
        assert!(other.ping("10.213.9.5"));
        teardown_clean(second);
        teardown_clean(first);
        sh("ip link del ifb0");
        assert_clean(state.path());
    });
}

#[test]
fn interfaces_move_in_and_back() {
    let state = tempfile::tempdir().unwrap();
    in_test_host(Duration::from_secs(20), || {
        let m = Ns::new();
        sh("ip link add d0 type ifb && ip link set d0 up && ip link add d1 type ifb");
        let mut s = spec(NetworkMode::Private, state.path());
        s.interfaces = vec!["d0".into(), "d1".into()];
        let net = network::setup(&s, "mv", m.pid).unwrap();
        assert_eq!(links(), Vec::<String>::new());
        let inside = m.sh("ip -o link show");
        assert!(inside.contains("d0") && inside.contains("d1"), "{inside}");
        teardown_clean(net);
        assert_eq!(links(), vec!["d0", "d1"]);
        assert!(sh("ip -o link show d0").contains(",UP"), "d0 is up again: {}", sh("ip -o link show d0"));
        assert!(!m.sh("ip -o link show").contains("d0"));

        // A link that vanished inside the machine is reported, the rest still comes back.
        let mut net = network::setup(&s, "mv", m.pid).unwrap();
        m.sh("ip link del d1");
        let errors: Vec<String> = net.teardown_report().iter().map(|e| e.to_string()).collect();
        assert_eq!(errors, vec!["network interface d1 is gone from the machine: it cannot be given back"]);
        assert_eq!(links(), vec!["d0"]);
        sh("ip link del d0");
        assert_clean(state.path());
    });
}

/// `--network-macvlan` and `--network-ipvlan`: links of a host interface made in the machine
/// (nspawn 252 cannot be run for these here: without udev it finds no interface initialized,
/// "Failed to get device p0: No data available"; its manual is the reference: mv-IF in bridge
/// mode, iv-IF in L2 mode, a private network implied).
#[test]
fn macvlan_and_ipvlan_links_of_host_interfaces() {
    let state = tempfile::tempdir().unwrap();
    in_test_host(Duration::from_secs(20), || {
        let m = Ns::new();
        sh("ip link add p0 type ifb && ip link set p0 up");
        let mut s = spec(NetworkMode::Host, state.path());
        s.macvlan = vec!["p0".into()];
        assert_eq!(s.effective_mode(), NetworkMode::Private);
        let net = network::setup(&s, "mvl", m.pid).unwrap();
        let inside = m.sh("ip -d -o link show mv-p0");
        assert!(inside.contains("macvlan mode bridge"), "{inside}");
        let mac = mac_address("mvl", "mv-p0").map(|b| format!("{b:02x}")).join(":");
        assert!(inside.contains(&mac), "the machine's own stable address {mac}: {inside}");
        assert_eq!(links(), vec!["p0"], "nothing made on the host side");
        teardown_clean(net);

        // ipvlan where the kernel has it; a clear refusal where it does not (as on this VM).
        let supported = sh(
            "ip link add ivprobe link p0 type ipvlan mode l2 2>/dev/null && ip link del ivprobe && echo yes",
        )
        .contains("yes");
        let mut s = spec(NetworkMode::Host, state.path());
        s.ipvlan = vec!["p0".into()];
        let m2 = Ns::new();
        match network::setup(&s, "ivl", m2.pid) {
            Ok(net) => {
                assert!(supported, "ipvlan made where the probe failed");
                let inside = m2.sh("ip -d -o link show iv-p0");
                assert!(inside.contains("ipvlan") && inside.contains("mode l2"), "{inside}");
                teardown_clean(net);
            }
            Err(e) => {
                assert!(!supported, "ipvlan refused on a kernel that has it: {e}");
                assert!(e.to_string().contains("ipvlan"), "{e}");
            }
        }
        // Bad input: a missing parent, a name too long for the machine's link, a duplicate.
        s.ipvlan.clear();
        s.macvlan = vec!["nope0".into()];
        let e = network::setup(&s, "mvl2", m.pid).unwrap_err().to_string();
        assert!(e.contains("nope0 does not exist"), "{e}");
        s.macvlan = vec!["abcdefghijklm".into()];
        let e = network::setup(&s, "mvl2", m.pid).unwrap_err().to_string();
        assert!(e.contains("longer than 15"), "{e}");
        s.macvlan = vec!["p0".into(), "p0".into()];
        assert!(network::setup(&s, "mvl2", m.pid).unwrap_err().to_string().contains("twice"));
        sh("ip link del p0");
        assert_clean(state.path());
    });
}

/// `--network-veth-extra`: the pair is made with the machine's stable addresses and removed at
/// teardown; a link of that name that is not the machine's is never touched; a killed
/// launcher's pair is removed by the next run's sweep.
#[test]
fn veth_extra_pairs_come_and_go() {
    let state = tempfile::tempdir().unwrap();
    in_test_host(Duration::from_secs(20), || {
        let m = Ns::new();
        let mut s = spec(NetworkMode::Host, state.path());
        s.veth_extra = vec![parse_veth_extra("vx0:in0").unwrap()];
        let net = network::setup(&s, "vxm", m.pid).unwrap();
        let (host_mac, guest_mac) = extra_macs("vxm", "vx0");
        let host = sh("ip -o link show vx0");
        assert!(host.contains(&mac_string(host_mac)) && host.contains("state DOWN"), "{host}");
        let inside = m.sh("ip -o link show in0");
        assert!(inside.contains(&mac_string(guest_mac)), "{inside}");
        teardown_clean(net);
        assert!(links().is_empty(), "{:?}", links());

        // Someone else's vx0: setup fails and leaves it alone.
        sh("ip link add vx0 type ifb");
        let e = network::setup(&s, "vxm", m.pid).unwrap_err().to_string();
        assert!(e.contains("vx0"), "{e}");
        assert_eq!(links(), vec!["vx0"]);
        sh("ip link del vx0");
        assert_clean(state.path());

        let dir = state.path().to_owned();
        let mp = m.pid;
        let s2 = s.clone();
        killed_launcher(|| std::mem::forget(network::setup(&s2, "vxdead", mp).unwrap()));
        assert_eq!(links(), vec!["vx0"]);
        assert!(network::cleanup_stale_report(&dir).is_empty());
        assert!(links().is_empty(), "{:?}", links());
        assert_clean(state.path());
    });
}

#[test]
fn a_killed_launcher_is_cleaned_up_by_the_next_run() {
    let state = tempfile::tempdir().unwrap();
    in_test_host(Duration::from_secs(30), || {
        let (m, z) = (Ns::new(), Ns::new());
        let dir = state.path().to_owned();
        let (mp, zp) = (m.pid, z.pid);
        killed_launcher(|| {
            let mut s = spec(NetworkMode::Veth, &dir);
            s.ports = vec![parse_port("udp:6000").unwrap()];
            let a = network::setup(&s, "dead1", mp).unwrap();
            let b = network::setup(&spec(NetworkMode::Zone("z".into()), &dir), "dead2", zp).unwrap();
            std::mem::forget((a, b));
        });
        let mut left = links();
        left.sort();
        assert_eq!(left, vec!["vb-dead2", "ve-dead1", "vz-z"], "the killed launcher's links");
        assert!(ruleset().contains("machine dead1"));
        assert_eq!(
            state_files(state.path()),
            vec!["machines/dead1.json", "machines/dead2.json", "segments/zone-z.json"]
        );
        let report = network::cleanup_stale_report(state.path());
        assert!(report.is_empty(), "{report:?}");
        assert_clean(state.path());
        // The next launch of the same machine works, with the same addresses.
        let net = network::setup(&spec(NetworkMode::Veth, state.path()), "dead1", m.pid).unwrap();
        assert_eq!(net.guest_network(), Some("10.213.0.2/30".parse().unwrap()));
        assert!(m.ping("10.213.0.1"));
        drop(net);
        assert_clean(state.path());

        // A killed launcher whose machine still runs: its moved link comes back.
        sh("ip link add i5 type ifb");
        let mut moving = spec(NetworkMode::Private, &dir);
        moving.interfaces = vec!["i5".into()];
        killed_launcher(|| std::mem::forget(network::setup(&moving, "dead4", zp).unwrap()));
        assert!(!links().contains(&"i5".to_owned()) && z.sh("ip -o link show").contains("i5"));
        assert!(network::cleanup_stale_report(state.path()).is_empty());
        assert_eq!(links(), vec!["i5"]);
        sh("ip link del i5");
        assert_clean(state.path());

        // setup sweeps by itself too, before allocating.
        killed_launcher(|| {
            std::mem::forget(network::setup(&spec(NetworkMode::Veth, &dir), "dead3", mp).unwrap())
        });
        assert_eq!(links(), vec!["ve-dead3"]);
        let net = network::setup(&spec(NetworkMode::Veth, state.path()), "alive", z.pid).unwrap();
        assert_eq!(links(), vec!["ve-alive"]);
        assert_eq!(state_files(state.path()), vec!["machines/alive.json"]);
        assert_eq!(
            net.guest_network(),
            Some("10.213.0.2/30".parse().unwrap()),
            "the dead lease is free again"
        );
        drop(net);
        assert_clean(state.path());
    });
}

/// The launcher's end of a veth machine (`teardown_after_exit`): the pair is left to the
/// kernel and renamed out of the machine's way by a short-lived child, so the same machine
/// starts again at once, even while something keeps the old namespace (and so the old pair)
/// alive. The retired pair keeps its subnet until it is gone; nothing is left after.
#[test]
fn a_machine_starts_again_while_its_old_pair_goes() {
    let state = tempfile::tempdir().unwrap();
    in_test_host(Duration::from_secs(60), || {
        let s = spec(NetworkMode::Veth, state.path());
        let m = Ns::new();
        let net = network::setup(&s, "again", m.pid).unwrap();
        let mut holder = m.hold();
        drop(m);
        net.teardown_after_exit();
        assert!(
            wait_until(Duration::from_secs(5), || {
                let l = links();
                l.len() == 1 && l[0].starts_with("mctl-") && l[0].len() == 15
            }),
            "the pair was not renamed: {:?}",
            links()
        );
        let m2 = Ns::new();
        let started = Instant::now();
        let net2 = network::setup(&s, "again", m2.pid).unwrap();
        assert!(started.elapsed() < Duration::from_millis(900), "setup waited for the old pair");
        assert_eq!(
            net2.guest_network(),
            Some("10.213.0.6/30".parse().unwrap()),
            "the retired pair's subnet was given out again"
        );
        let retired = links().into_iter().find(|l| l.starts_with("mctl-")).expect("retired pair");
        assert!(
            state_files(state.path()).contains(&format!("machines/{retired}.json")),
            "{:?}",
            state_files(state.path())
        );
        assert!(m2.ping("10.213.0.5"));
        drop(m2);
        teardown_clean(net2);
        let _ = holder.kill();
        let _ = holder.wait();
        assert!(wait_until(Duration::from_secs(5), || links().is_empty()), "{:?}", links());
        assert!(wait_until(Duration::from_secs(5), || {
            assert!(network::cleanup_stale_report(state.path()).is_empty());
            state_files(state.path()).is_empty()
        }));
        assert_clean(state.path());
    });
}

#[test]
fn a_machine_that_exited_takes_its_pair_along() {
    let state = tempfile::tempdir().unwrap();
    in_test_host(Duration::from_secs(30), || {
        let s = spec(NetworkMode::Veth, state.path());
        // PID 1 exits (and is reaped) before teardown, as in the launcher: teardown deletes the
        // pair and frees the lease.
        let m = Ns::new();
        let net = network::setup(&s, "gone", m.pid).unwrap();
        drop(m);
        teardown_clean(net);
        assert!(!ruleset().contains("table"), "NAT entries go at once");
        assert!(wait_until(Duration::from_secs(5), || links().is_empty()), "the pair outlived its namespace");
        assert!(network::cleanup_stale_report(state.path()).is_empty());
        assert_clean(state.path());

        // A reboot: the same machine again right away; setup waits for the old pair.
        for _ in 0..3 {
            let m = Ns::new();
            let net = network::setup(&s, "again", m.pid).unwrap();
            assert_eq!(net.guest_network(), Some("10.213.0.2/30".parse().unwrap()));
            assert!(m.ping("10.213.0.1"));
            drop(m);
            teardown_clean(net);
        }
        let m = Ns::new();
        let net = network::setup(&s, "again", m.pid).unwrap();
        assert_eq!(links(), vec!["ve-again"]);
        teardown_clean(net);
        assert_clean(state.path());

        // Something else keeps the exited machine's namespace: teardown still deletes the pair
        // at once (nothing of the machine outlives its launch), and frees its subnet.
        let m = Ns::new();
        let net = network::setup(&s, "held", m.pid).unwrap();
        let mut holder = m.hold();
        drop(m);
        teardown_clean(net);
        assert!(links().is_empty(), "the pair outlived teardown: {:?}", links());
        let other = Ns::new();
        let net2 = network::setup(&s, "other", other.pid).unwrap();
        assert_eq!(net2.guest_network(), Some("10.213.0.2/30".parse().unwrap()), "the subnet was not freed");
        teardown_clean(net2);
        let _ = holder.kill();
        let _ = holder.wait();
        assert_clean(state.path());
    });
}
