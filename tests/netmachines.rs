//! Machines on the network, end to end. Everything happens inside namespaces the test makes:
//! a "host" network namespace (with a private mount namespace) where the launchers run and
//! the host side of every link lives, and an "outside" namespace reached through it. Nothing
//! is added to the machine's own network namespace; traffic stays between these namespaces.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::*;

/// A namespace holder: `sleep` in new network (and mount) namespaces; commands join them with
/// nsenter. Its namespaces, and every link in them, die with it.
struct Ns {
    holder: Child,
}

impl Ns {
    fn new(with_mounts: bool) -> Ns {
        let mut c = Command::new("unshare");
        c.arg("--net");
        if with_mounts {
            c.args(["--mount", "--propagation", "private"]);
        }
        let holder = c.args(["sleep", "600"]).stdin(Stdio::null()).spawn().unwrap();
        let ns = Ns { holder };
        // The namespaces exist once sleep runs instead of unshare.
        assert!(wait_until(Duration::from_secs(5), || {
            std::fs::read_link(format!("/proc/{}/ns/net", ns.pid())).ok()
                != std::fs::read_link("/proc/self/ns/net").ok()
                && std::fs::read_to_string(format!("/proc/{}/comm", ns.pid())).unwrap_or_default().trim()
                    == "sleep"
        }));
        ns.sh("ip link set lo up");
        ns
    }

    fn pid(&self) -> u32 {
        self.holder.id()
    }

    fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t").arg(self.pid().to_string()).args(["-n", "-m", "--", prog]);
        c.stdin(Stdio::null());
        c
    }

    fn sh(&self, script: &str) -> String {
        let o = self.cmd("sh").args(["-c", script]).output().unwrap();
        assert!(o.status.success(), "`{script}` failed: {}", stderr(&o));
        stdout(&o)
    }

    fn try_sh(&self, script: &str) -> Output {
        self.cmd("sh").args(["-c", script]).output().unwrap()
    }

    fn mctl(&self, env: &Env) -> Command {
        let mut c = self.cmd(env!("CARGO_BIN_EXE_mctl"));
        c.env("MCTL_RUNTIME_DIR", &env.run);
        c
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

struct Env {
    s: tempfile::TempDir,
    run: PathBuf,
}

impl Env {
    fn new() -> Env {
        let s = scratch();
        let run = s.path().join("run");
        Env { s, run }
    }

    fn tree(&self, name: &str) -> PathBuf {
        copy_tree(busybox_tree(), self.s.path(), name)
    }
}

/// A machine running `sleep` (or `script`), launched inside `ns`; knows its PID 1.
struct Running {
    child: Child,
    leader: u32,
    name: String,
    dir: PathBuf,
}

impl Running {
    fn start(ns: &Ns, env: &Env, name: &str, opts: &[&str], script: &str) -> Running {
        Self::start_env(ns, env, name, opts, script, &[])
    }

    /// [`Running::start`] with extra environment variables for mctl.
    fn start_env(
        ns: &Ns,
        env: &Env,
        name: &str,
        opts: &[&str],
        script: &str,
        vars: &[(&str, &str)],
    ) -> Running {
        let dir = env.tree(name);
        let notify_dir = env.s.path().join(format!("notify-{name}"));
        std::fs::create_dir(&notify_dir).unwrap();
        let mut notify = NotifyListener::new(&notify_dir);
        let child = ns
            .mctl(env)
            .args(["run", "-q", "--register=no", "-D"])
            .arg(&dir)
            .args(opts)
            .args(["--", "sh", "-c", script])
            .env("NOTIFY_SOCKET", &notify.path)
            .envs(vars.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let leader = notify.wait_leader(0, Duration::from_secs(20));
        let leader_pid = u32::try_from(leader.unwrap_or(0)).unwrap();
        let mut r = Running { child, leader: leader_pid, name: name.to_owned(), dir };
        if leader.is_none() {
            let _ = r.child.kill();
            panic!("machine {name} did not start: {}", read_all(r.child.stderr.take().unwrap()));
        }
        r
    }

    /// Runs a command inside the machine (all its namespaces).
    fn exec(&self, script: &str) -> Output {
        Command::new("nsenter")
            .arg("-t")
            .arg(self.leader.to_string())
            .args(["-a", "--", "/bin/sh", "-c", script])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn ipv4(&self) -> String {
        let o = self.exec("ip -4 -o addr show host0");
        let out = stdout(&o);
        let cidr = out
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .unwrap_or_else(|| panic!("no address: {out}"));
        cidr.split('/').next().unwrap().to_owned()
    }

    fn stop(mut self) {
        stop_launcher(&mut self.child);
        assert_no_leaks(&self.name, &self.dir);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A failed assertion must not leave the machine running.
        if self.child.try_wait().ok().flatten().is_none() {
            stop_launcher(&mut self.child);
        }
    }
}

/// How long the kernel may take to dismantle a dead machine's network namespace. Usually a few
/// milliseconds, but namespaces are dismantled one batch at a time on one kernel worker, after
/// RCU grace periods: on a loaded two-CPU machine, with other tests' namespaces queued, once
/// over 3 s.
const DISMANTLE_ALLOWANCE: Duration = Duration::from_secs(15);

/// Nothing of the machines' networks is left. A veth pair goes with its machine's network
/// namespace, which the kernel dismantles a few milliseconds after the launcher's exit (as with
/// nspawn), renamed `mctl-...` meanwhile, and its state file with it: allowed a short while, not
/// forever.
fn assert_clean(ns: &Ns, env: &Env) {
    let links = || ns.sh("ip -o link show | grep -E ' (ve|vb|vz|mctl)-' || true");
    let states = || -> Vec<std::ffi::OsString> {
        std::fs::read_dir(env.run.join("network/machines"))
            .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default()
    };
    let started = std::time::Instant::now();
    wait_until(DISMANTLE_ALLOWANCE, || links().trim().is_empty() && states().is_empty());
    let left = links();
    // The global count of orphaned TCP sockets tells a namespace held by one (a connection
    // still closing) from a kernel slow to dismantle it.
    assert!(
        left.trim().is_empty(),
        "links left after {:?}: {left}\n{}",
        started.elapsed(),
        std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default()
    );
    let rules = ns.sh("nft list ruleset");
    assert!(!rules.contains("table ip mctl"), "nft table left: {rules}");
    let left = states();
    assert!(left.is_empty(), "network state left: {left:?}");
}

#[test]
fn veth_machine_talks_to_the_host_and_through_nat() {
    let env = Env::new();
    let host = Ns::new(true);
    // A second test namespace, "outside", reached through the host namespace.
    let outside = Ns::new(false);
    host.sh(&format!(
        "ip link add up0 type veth peer name out0 netns {pid} && ip addr add 198.51.100.1/24 dev up0 && ip link set up0 up",
        pid = outside.pid()
    ));
    outside.sh("ip addr add 198.51.100.2/24 dev out0 && ip link set out0 up");

    let m = Running::start(&host, &env, "vm1", &["--network-veth"], "sleep 60");
    let guest = m.ipv4();
    assert!(guest.starts_with("10.213."), "{guest}");
    let gw = stdout(&m.exec("ip route | awk '/default/ {print $3}'")).trim().to_owned();
    // The host side pings with busybox (installed for the test trees; the host may lack ping).
    assert!(
        host.try_sh(&format!("busybox ping -c1 -W2 {guest}")).status.success(),
        "host cannot ping the guest"
    );
    assert!(m.exec(&format!("ping -c1 -W2 {gw}")).status.success(), "guest cannot ping the host side");
    // IPv6 link-local works without any configuration.
    assert!(stdout(&m.exec("ip -6 addr show host0")).contains("fe80::"));

    // NAT: the outside namespace sees the host's address, not the guest's.
    let mut seen = outside
        .cmd("python3")
        .args([
            "-c",
            "import socket; s=socket.socket(); s.bind(('198.51.100.2', 9999)); s.listen(1); s.settimeout(10); print('ready', flush=True); c,a=s.accept(); print(a[0], c.recv(100).decode().strip())",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen_out = std::io::BufReader::new(seen.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut seen_out, &mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let o = m.exec("echo hello | nc -w2 198.51.100.2 9999");
    assert!(o.status.success(), "{}", stderr(&o));
    let got = read_all(seen_out);
    let _ = seen.wait();
    assert_eq!(got.trim(), "198.51.100.1 hello", "source address seen outside");
    m.stop();
    assert_clean(&host, &env);
}

#[test]
fn port_forwards_reach_the_guest_from_the_host_side_and_localhost() {
    let env = Env::new();
    let host = Ns::new(true);
    let m = Running::start(
        &host,
        &env,
        "web",
        &["--network-veth", "--port=tcp:8080:80", "--port=udp:5353:53"],
        "sleep 60",
    );
    // Services in the guest's network namespace (the host's python, the guest's network).
    let serve = |script: &str| -> Child {
        Command::new("nsenter")
            .arg("-t")
            .arg(m.leader.to_string())
            .args(["-n", "python3", "-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut tcp_server = serve(
        "import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', 80)); s.listen(8); print('ready', flush=True)\nwhile True:\n c,_=s.accept(); c.sendall(b'tcp-ok\\n'); c.close()",
    );
    let mut udp_server = serve(
        "import socket\ns=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 53)); print('ready', flush=True)\nwhile True:\n d,a=s.recvfrom(100); s.sendto(b'udp-ok', a)",
    );
    for server in [&mut tcp_server, &mut udp_server] {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(server.stdout.as_mut().unwrap()), &mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
    }
    let gw = stdout(&m.exec("ip route | awk '/default/ {print $3}'")).trim().to_owned();
    for addr in [gw.as_str(), "127.0.0.1"] {
        let tcp = host.sh(&format!(
            "python3 -c \"import socket; c=socket.create_connection(('{addr}', 8080), timeout=5); print(c.recv(100).decode().strip())\""
        ));
        assert_eq!(tcp.trim(), "tcp-ok", "tcp via {addr}");
        let udp = host.sh(&format!(
            "python3 -c \"import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5); s.sendto(b'x', ('{addr}', 5353)); print(s.recvfrom(100)[0].decode().strip())\""
        ));
        assert_eq!(udp.trim(), "udp-ok", "udp via {addr}");
    }
    let _ = tcp_server.kill();
    let _ = udp_server.kill();
    let _ = tcp_server.wait();
    let _ = udp_server.wait();

    // route_localnet on the host side must not open the host's loopback to the guest: a
    // guest that routes 127.0.0.1 out of host0 reaches nothing bound to the host's loopback.
    let mut listener = host
        .cmd("python3")
        .args([
            "-c",
            "import socket, sys\ns=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('127.0.0.1', 9999)); s.settimeout(3)\nprint('ready', flush=True)\ntry:\n print(s.recvfrom(100)[0].decode())\nexcept socket.timeout:\n print('nothing')",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(listener.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    // The host's tools (python3) in the guest's network namespace.
    let sent = Command::new("nsenter").arg("-t").arg(m.leader.to_string()).args(["-n", "sh", "-c"]).arg(format!(
        "sysctl -qw net.ipv4.conf.host0.route_localnet=1 && ip rule add pref 10 to 127.0.0.1 lookup 100 && \
         ip rule add pref 1000 lookup local && ip rule del pref 0 && \
         ip route add 127.0.0.1/32 via {gw} dev host0 table 100 && \
         python3 -c \"import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); [s.sendto(b'leak', ('127.0.0.1', 9999)) for _ in range(3)]\""
    )).output().unwrap();
    assert!(sent.status.success(), "{}", stderr(&sent));
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "nothing", "the guest reached a service on the host's loopback");
    let _ = listener.wait();

    // A port already forwarded is refused for a second machine, which leaves nothing.
    let dir = env.tree("web2");
    let o = host
        .mctl(&env)
        .args(["run", "-q", "--register=no", "--network-veth", "--port=8080", "-D"])
        .arg(&dir)
        .args(["true"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("8080"), "{}", stderr(&o));
    assert_no_leaks("web2", &dir);
    m.stop();
    assert_clean(&host, &env);
}

#[test]
fn machines_on_a_bridge_and_on_a_zone_ping_each_other() {
    let env = Env::new();
    let host = Ns::new(true);
    host.sh("ip link add br0 type bridge && ip addr add 192.0.2.1/24 dev br0 && ip link set br0 up");
    let a = Running::start(&host, &env, "ba", &["--network-bridge=br0"], "sleep 60");
    let b = Running::start(&host, &env, "bb", &["--network-bridge=br0"], "sleep 60");
    let (ia, ib) = (a.ipv4(), b.ipv4());
    assert!(ia.starts_with("192.0.2.") && ib.starts_with("192.0.2.") && ia != ib, "{ia} {ib}");
    assert!(a.exec(&format!("ping -c1 -W2 {ib}")).status.success(), "a cannot ping b");
    assert!(b.exec(&format!("ping -c1 -W2 {ia}")).status.success(), "b cannot ping a");
    a.stop();
    b.stop();
    assert!(
        wait_until(DISMANTLE_ALLOWANCE, || host.sh("ip -o link show master br0").trim().is_empty()),
        "ports left on br0"
    );

    let za = Running::start(&host, &env, "za", &["--network-zone=lab"], "sleep 60");
    let zb = Running::start(&host, &env, "zb", &["--network-zone=lab"], "sleep 60");
    assert!(host.sh("ip -o link show vz-lab").contains("vz-lab"));
    let (ia, ib) = (za.ipv4(), zb.ipv4());
    assert!(za.exec(&format!("ping -c1 -W2 {ib}")).status.success(), "za cannot ping zb");
    assert!(zb.exec(&format!("ping -c1 -W2 {ia}")).status.success(), "zb cannot ping za");
    za.stop();
    assert!(host.sh("ip -o link show vz-lab").contains("vz-lab"), "the zone went with its first machine");
    zb.stop();
    assert!(host.try_sh("ip link show vz-lab").status.code() != Some(0), "the zone outlived its machines");
    assert_clean(&host, &env);
}

#[test]
fn private_network_interfaces_and_namespaces() {
    let env = Env::new();
    let host = Ns::new(true);
    let dir = env.tree("priv");
    let run = |opts: &[&str], script: &str| -> Output {
        host.mctl(&env)
            .args(["run", "-q", "--register=no", "-D"])
            .arg(&dir)
            .args(opts)
            .args(["--", "sh", "-c", script])
            .output()
            .unwrap()
    };
    // Only loopback, up; the network sysctls are the machine's own.
    let o = run(
        &["--private-network"],
        "ip -o link | cut -d: -f2; ip -o link show lo | grep -c UP; echo 1 > /proc/sys/net/ipv4/ip_forward && echo net-rw",
    );
    assert_eq!(stdout(&o), " lo\n1\nnet-rw\n", "{}", stderr(&o));
    // A host interface moves in and comes back.
    host.sh("ip link add ext0 type ifb");
    let o = run(&["--network-interface=ext0"], "ip -o link | grep -c ext0");
    assert_eq!(stdout(&o), "1\n", "{}", stderr(&o));
    assert!(host.sh("ip -o link show ext0").contains("ext0"), "the interface did not come back");
    // An existing namespace is joined.
    let other = Ns::new(false);
    other.sh("ip link add mark0 type ifb");
    let path = format!("/proc/{}/ns/net", other.pid());
    let o = run(&[&format!("--network-namespace-path={path}")], "ip -o link | grep -c mark0");
    assert_eq!(stdout(&o), "1\n", "{}", stderr(&o));
    assert_no_leaks("priv", &dir);
    assert_clean(&host, &env);
}

#[test]
fn bad_network_input_is_refused_and_leaves_nothing() {
    let env = Env::new();
    let host = Ns::new(true);
    let dir = env.tree("badnet");
    let fails = |opts: &[&str], needle: &str| {
        let o = host
            .mctl(&env)
            .args(["run", "-q", "--register=no", "-D"])
            .arg(&dir)
            .args(opts)
            .args(["true"])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{opts:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{opts:?}: {}", stderr(&o));
        assert_eq!(stderr(&o).lines().count(), 1, "{opts:?}: {}", stderr(&o));
        assert_no_leaks("badnet", &dir);
        assert_clean(&host, &env);
    };
    fails(&["--network-bridge=nobr"], "nobr");
    fails(&["--network-interface=nosuch0"], "nosuch0");
    fails(&["--network-veth", "--address=192.168.77.2/30"], "192.168.77.2");
    fails(&["--port=80"], "--port needs --network-veth");
    fails(&["--network-veth", "--network-zone=z"], "cannot be combined");
    fails(&["--network-veth", "--port=tcp:0"], "invalid port forward");
    // An address another machine holds.
    let m = Running::start(&host, &env, "holder", &["--network-veth"], "sleep 60");
    let taken = m.ipv4();
    let o = host
        .mctl(&env)
        .args(["run", "-q", "--register=no", "--network-veth", &format!("--address={taken}/30"), "-D"])
        .arg(&dir)
        .args(["true"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains(&taken), "{}", stderr(&o));
    m.stop();
    assert_clean(&host, &env);
}

#[test]
fn a_killed_launchers_links_and_rules_are_removed_by_the_next_run() {
    let env = Env::new();
    let host = Ns::new(true);
    let mut m = Running::start(&host, &env, "doomed", &["--network-veth", "--port=9090:90"], "sleep 60");
    assert!(host.sh("nft list ruleset").contains("table ip mctl"));
    m.child.kill().unwrap();
    m.child.wait().unwrap();
    assert!(wait_until(Duration::from_secs(10), || !Path::new(&format!("/proc/{}", m.leader)).exists()));
    // Leftovers: the nft elements (and state) of a launcher that could not clean up.
    assert!(host.sh("nft list ruleset").contains("table ip mctl"), "nothing was left to clean");
    let dir = env.tree("next");
    let o = host
        .mctl(&env)
        .args(["run", "-q", "--register=no", "--private-network", "-D"])
        .arg(&dir)
        .args(["true"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_clean(&host, &env);
    assert_no_leaks("doomed", &m.dir);
}

#[test]
fn the_manager_reports_the_guests_addresses() {
    let env = Env::new();
    std::fs::set_permissions(env.s.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let bus = TestBus::start(env.s.path());
    let mctld_dir = env.s.path().join("mctld");
    std::fs::create_dir(&mctld_dir).unwrap();
    let _mctld = Mctld::start_args(&bus, &mctld_dir, &["--machined-compat"]);
    let host = Ns::new(true);
    let dir = env.tree("addr");
    let notify_dir = env.s.path().join("notify");
    std::fs::create_dir(&notify_dir).unwrap();
    let mut notify = NotifyListener::new(&notify_dir);
    let mut launcher = host
        .mctl(&env)
        .args(["run", "-q", "--register=yes", "--network-veth", "-D"])
        .arg(&dir)
        .args(["--", "sleep", "60"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .env("NOTIFY_SOCKET", &notify.path)
        .spawn()
        .unwrap();
    let leader = notify.wait_leader(0, Duration::from_secs(20)).expect("machine started");
    let guest = Command::new("nsenter")
        .arg("-t")
        .arg(leader.to_string())
        .args(["-n", "ip", "-4", "-o", "addr", "show", "host0"])
        .output()
        .unwrap();
    let guest = stdout(&guest);
    let guest = guest
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();

    let o =
        mctl().env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address).args(["list", "--no-legend"]).output().unwrap();
    let row = stdout(&o);
    assert!(row.starts_with("addr container mctl busybox 1 ") && row.contains(&guest), "{row}");
    let o = machinectl(&bus, &["list"]);
    let out = stdout(&o);
    assert!(out.contains(&format!(" {guest}")), "machinectl list: {out}");
    let o = mctl().env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address).args(["status", "addr"]).output().unwrap();
    assert!(stdout(&o).contains(&format!("Address: {guest}")), "{}", stdout(&o));
    // The host-side interface's index, as the launcher registered it.
    let ifindex = host.sh("ip -o link show ve-addr | cut -d: -f1");
    let o = busctl(
        &bus,
        &[
            "get-property",
            "org.freedesktop.machine1",
            "/org/freedesktop/machine1/machine/addr",
            "org.freedesktop.machine1.Machine",
            "NetworkInterfaces",
        ],
    );
    assert_eq!(stdout(&o).trim(), format!("ai 1 {}", ifindex.trim()), "{}", stderr(&o));
    // Its traffic: 3 pings of 1000 bytes from the host side in and out (the host's own
    // interfaces, in another namespace than this host side, are not counted).
    let bytes = |p: &str| -> u64 {
        let o = mctl()
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
            .args(["show", "--value", "-p", p, "addr"])
            .output()
            .unwrap();
        stdout(&o).trim().parse().unwrap_or_else(|_| panic!("{p}: {}", stdout(&o)))
    };
    let (rx0, tx0) = (bytes("IPIngressBytes"), bytes("IPEgressBytes"));
    host.sh(&format!("busybox ping -q -c 3 -s 1000 {guest}"));
    let (rx1, tx1) = (bytes("IPIngressBytes"), bytes("IPEgressBytes"));
    assert!(rx1 - rx0 >= 3000 && tx1 - tx0 >= 3000, "in {rx0} -> {rx1}, out {tx0} -> {tx1}");
    let o = mctl().env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address).args(["status", "addr"]).output().unwrap();
    assert!(stdout(&o).contains("\t Network: "), "{}", stdout(&o));
    stop_launcher(&mut launcher);
    assert_no_leaks("addr", &dir);
    assert_clean(&host, &env);
}

/// The guest's default gateway.
fn default_gateway(m: &Running) -> String {
    stdout(&m.exec("ip route | awk '/^default/ {print $3}'")).trim().to_owned()
}

/// `host0`'s IPv4 address with its prefix.
fn guest_cidr(m: &Running) -> String {
    let out = stdout(&m.exec("ip -4 -o addr show host0"));
    out.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .unwrap_or_else(|| panic!("no address: {out}"))
        .to_owned()
}

/// `-n` is `--network-veth` and `-p` is `--port` (a forward that carries traffic); the pool
/// comes from `--address-pool` or `$MCTL_ADDRESS_POOL`; `--address` with `--gateway` sets the
/// guest's address and the host side's (the gateway), not the pool's defaults.
#[test]
fn short_options_address_pools_and_explicit_addresses() {
    let env = Env::new();
    let host = Ns::new(true);

    let m = Running::start(&host, &env, "rcshort", &["-n", "-p", "8081:80"], "sleep 60");
    assert!(host.sh("ip -o link show ve-rcshort").contains("ve-rcshort"), "-n made no veth");
    assert!(guest_cidr(&m).starts_with("10.213."), "{}", guest_cidr(&m));
    let mut server = Command::new("nsenter")
        .arg("-t")
        .arg(m.leader.to_string())
        .args(["-n", "python3", "-c"])
        .arg(
            "import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', 80)); s.listen(1); print('ready', flush=True)\nc,_=s.accept(); c.sendall(b'forwarded\\n'); c.close()",
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(server.stdout.as_mut().unwrap()), &mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    let gw = default_gateway(&m);
    let got = host.try_sh(&format!(
        "python3 -c \"import socket; c=socket.create_connection(('{gw}', 8081), timeout=5); print(c.recv(100).decode().strip())\""
    ));
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(stdout(&got).trim(), "forwarded", "-p 8081:80 did not forward: {}", stderr(&got));
    m.stop();

    // --address-pool: a /30 from that pool, the host side .1 as the default route.
    let m = Running::start(&host, &env, "rcpool", &["-n", "--address-pool=10.77.0.0/16"], "sleep 60");
    let cidr = guest_cidr(&m);
    assert!(cidr.starts_with("10.77.") && cidr.ends_with(".2/30"), "{cidr}");
    let gw = default_gateway(&m);
    assert!(gw.starts_with("10.77.") && gw.ends_with(".1"), "{gw}");
    assert!(m.exec(&format!("ping -c1 -W2 {gw}")).status.success(), "no route to the host side");
    m.stop();

    // $MCTL_ADDRESS_POOL, the option's default.
    let m = Running::start_env(
        &host,
        &env,
        "rcenvpool",
        &["-n"],
        "sleep 60",
        &[("MCTL_ADDRESS_POOL", "10.78.0.0/24")],
    );
    let cidr = guest_cidr(&m);
    assert!(cidr.starts_with("10.78.0.") && cidr.ends_with("/30"), "{cidr}");
    m.stop();

    // --address with --gateway: the guest's address, and a gateway other than the first host.
    let m = Running::start(
        &host,
        &env,
        "rcaddr",
        &["-n", "--address=10.213.200.6/29", "--gateway=10.213.200.3"],
        "sleep 60",
    );
    assert_eq!(guest_cidr(&m), "10.213.200.6/29");
    assert_eq!(default_gateway(&m), "10.213.200.3");
    assert!(host.sh("ip -4 -o addr show ve-rcaddr").contains("inet 10.213.200.3/29"), "host side address");
    assert!(m.exec("ping -c1 -W2 10.213.200.3").status.success(), "the gateway does not answer");
    m.stop();
    assert_clean(&host, &env);
}

/// `host0`'s IPv6 link-local address, once duplicate address detection is done with it.
fn link_local(m: &Running) -> String {
    let mut last = String::new();
    let done = wait_until(Duration::from_secs(10), || {
        // The host's iproute2 in the guest's network namespace.
        let o = Command::new("nsenter")
            .arg("-t")
            .arg(m.leader.to_string())
            .args(["-n", "ip", "-6", "-o", "addr", "show", "dev", "host0", "scope", "link"])
            .output()
            .unwrap();
        last = stdout(&o);
        last.contains("fe80::") && !last.contains("tentative")
    });
    assert!(done, "{}: no usable link-local address: {last}", m.name);
    let cidr = last.split_whitespace().skip_while(|w| *w != "inet6").nth(1).unwrap();
    cidr.split('/').next().unwrap().to_owned()
}

/// Guest to guest over IPv6 link-local addresses (`fe80::…%host0`), with no configuration,
/// across a user's bridge and across a zone.
#[test]
fn ipv6_link_local_works_across_a_bridge_and_a_zone() {
    let env = Env::new();
    let host = Ns::new(true);
    host.sh("ip link add rcbr6 type bridge && ip link set rcbr6 up");
    for (a, b, opt) in
        [("rcb6a", "rcb6b", "--network-bridge=rcbr6"), ("rcz6a", "rcz6b", "--network-zone=rc6")]
    {
        let ma = Running::start(&host, &env, a, &[opt], "sleep 60");
        let mb = Running::start(&host, &env, b, &[opt], "sleep 60");
        let (la, lb) = (link_local(&ma), link_local(&mb));
        assert_ne!(la, lb);
        for (from, to) in [(&ma, &lb), (&mb, &la)] {
            let o = from.exec(&format!("ping -6 -c1 -W2 {to}%host0"));
            assert!(
                o.status.success(),
                "{opt}: {} cannot ping {to}: {}{}",
                from.name,
                stdout(&o),
                stderr(&o)
            );
        }
        ma.stop();
        mb.stop();
    }
    assert!(host.sh("ip -o link show master rcbr6").trim().is_empty(), "ports left on the bridge");
    assert!(host.try_sh("ip link show vz-rc6").status.code() != Some(0), "the zone outlived its machines");
    assert_clean(&host, &env);
}

/// With a user namespace (-U) the machine's network namespace is its own: its root configures
/// it, while the host still wires it up.
#[test]
fn a_user_namespaced_machine_owns_its_network() {
    let env = Env::new();
    let host = Ns::new(true);
    let state = env.s.path().join("state");
    let vars = [("MCTL_STATE_DIR", state.to_str().unwrap())];
    let m = Running::start_env(&host, &env, "vmu", &["--network-veth", "-U"], "sleep 60", &vars);
    let guest = m.ipv4();
    assert!(guest.starts_with("10.213."), "{guest}");
    assert!(
        host.try_sh(&format!("busybox ping -c1 -W2 {guest}")).status.success(),
        "host cannot ping the guest"
    );
    let uid_map = stdout(&m.exec("cat /proc/self/uid_map"));
    assert_ne!(uid_map.split_whitespace().nth(1), Some("0"), "not in a user namespace: {uid_map}");
    let o =
        m.exec("ip link set host0 mtu 1400 && ip addr add 10.99.0.1/32 dev host0 && ip -o link show host0");
    assert!(stdout(&o).contains("mtu 1400"), "the guest's root cannot configure its network: {}", stderr(&o));
    // Its network sysctls are its own to set.
    let o = m.exec("sysctl -w net.ipv4.conf.host0.forwarding=1 >/dev/null && echo changed");
    assert_eq!(stdout(&o).trim(), "changed", "{}", stderr(&o));
    m.stop();
    assert_clean(&host, &env);
}
