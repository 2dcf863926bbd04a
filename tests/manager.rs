//! mctld on a real dbus-daemon (configured like a system bus, with mctl's policy), with real
//! machines, driven by mctl's CLI and by systemd's own machinectl and busctl.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;

fn mctl_on(bus: &TestBus) -> Command {
    let mut c = mctl();
    c.env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address).stdin(Stdio::null());
    c
}

fn run_mctl(bus: &TestBus, args: &[&str]) -> Output {
    mctl_on(bus).args(args).output().unwrap()
}

/// The `<interface name=...>` block of an introspection document.
fn interface_block<'a>(xml: &'a str, name: &str) -> &'a str {
    let start = xml.find(&format!("<interface name=\"{name}\">")).unwrap_or_else(|| panic!("{name} missing"));
    let end = start + xml[start..].find("</interface>").unwrap();
    &xml[start..end]
}

/// A `<method name="X">...</method>` block.
fn method_block<'a>(xml: &'a str, name: &str) -> &'a str {
    let needle = format!("<method name=\"{name}\"");
    let start = xml.find(&needle).unwrap_or_else(|| panic!("method {name} missing"));
    let end = start + xml[start..].find("</method>").map(|e| e + "</method>".len()).unwrap();
    &xml[start..end]
}

/// What the real systemd-machined 252 answered (recorded on Debian 12, see the README there).
fn reference(file: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/data/machined-252/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// machined 252 Manager methods mctld does not serve yet (CreateMachine needs systemd as PID 1
/// to make the scope; the pool, image-metadata and user-mapping calls are not planned yet).
const MANAGER_NOT_YET: [&str; 12] = [
    "CreateMachine",
    "CreateMachineWithNetwork",
    "GetImageHostname",
    "GetImageMachineID",
    "GetImageMachineInfo",
    "SetPoolLimit",
    "SetImageLimit",
    "CleanPool",
    "MapFromMachineUser",
    "MapToMachineUser",
    "MapFromMachineGroup",
    "MapToMachineGroup",
];

/// The same for a machine object.
const MACHINE_NOT_YET: [&str; 0] = [];

/// The method names of an interface block.
fn method_names(block: &str) -> Vec<String> {
    block
        .match_indices("<method name=\"")
        .map(|(i, m)| block[i + m.len()..].split('"').next().unwrap().to_owned())
        .collect()
}

/// The lines of an interface block that start with `tag` (signals, properties), trimmed.
fn member_lines(block: &str, tag: &str) -> Vec<String> {
    block.lines().map(str::trim).filter(|l| l.starts_with(tag)).map(str::to_owned).collect()
}

#[test]
fn machinectl_and_busctl_work_against_mctld() {
    let s = scratch();
    let bus = TestBus::start(s.path());
    let _mctld = Mctld::start(&bus, s.path(), true);
    let dir = copy_tree(debian_tree(), s.path(), "mcompat");
    let boot_dir = s.path().join("boot");
    std::fs::create_dir(&boot_dir).unwrap();
    let mut m = Machine::boot_on(Some(&bus.address), &dir, &boot_dir, &[]);

    // list: machinectl's own table, OS from the guest.
    let o = machinectl(&bus, &["list"]);
    assert_eq!(
        common::stdout(&o),
        "MACHINE CLASS     SERVICE OS     VERSION ADDRESSES\nmcompat container mctl    debian 12      -\n\n1 machines listed.\n",
        "stderr: {}",
        common::stderr(&o)
    );
    let o = machinectl(&bus, &["list", "-o", "json"]);
    assert_eq!(
        common::stdout(&o).trim(),
        r#"[{"machine":"mcompat","class":"container","service":"mctl","os":"debian","version":"12","addresses":null}]"#
    );

    // show: machined's keys, in machined's order (Unit is empty, so left out).
    let o = machinectl(&bus, &["show", "mcompat"]);
    let out = common::stdout(&o);
    let keys: Vec<&str> = out.lines().map(|l| l.split('=').next().unwrap()).collect();
    assert_eq!(
        keys,
        [
            "Name",
            "Id",
            "Timestamp",
            "TimestampMonotonic",
            "Service",
            "Leader",
            "Class",
            "RootDirectory",
            "State"
        ],
        "{out}"
    );
    assert!(out.contains(&format!("Leader={}\n", m.leader)));
    assert!(out.contains(&format!("RootDirectory={}\n", dir.display())));
    assert!(out.contains("State=running\n") && out.contains("Service=mctl\n"));
    let id = out.lines().find_map(|l| l.strip_prefix("Id=")).unwrap();
    assert_eq!(id.len(), 32);
    let o = machinectl(&bus, &["show", "--all", "mcompat"]);
    assert!(common::stdout(&o).contains("NetworkInterfaces=[unprintable]\nState=running\n"));
    let o = machinectl(&bus, &["show"]);
    assert_eq!(
        common::stdout(&o),
        "PoolPath=/var/lib/machines\nPoolUsage=18446744073709551615\nPoolLimit=18446744073709551615\n"
    );
    let o = machinectl(&bus, &["show", "-p", "State", "--value", "mcompat"]);
    assert_eq!(common::stdout(&o), "running\n");

    // status: the header block, with the leader's command read locally.
    let o = machinectl(&bus, &["status", "mcompat"]);
    let out = common::stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{}", common::stderr(&o));
    assert!(out.starts_with(&format!("mcompat({id})\n")), "{out}");
    assert!(out.contains(&format!("Leader: {} (systemd)", m.leader)), "{out}");
    assert!(out.contains("Service: mctl; class container"), "{out}");
    assert!(out.contains("OS: Debian GNU/Linux 12 (bookworm)"), "{out}");
    let o = machinectl(&bus, &["status", "nosuch"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(common::stderr(&o), "Could not get path to machine: No machine 'nosuch' known\n");
    let o = machinectl(&bus, &["terminate", "nosuch"]);
    assert_eq!(common::stderr(&o), "Could not terminate machine: No machine 'nosuch' known\n");

    // busctl: tree, introspection (compared with the real machined's), properties.
    let o = busctl(
        &bus,
        &["introspect", "--xml-interface", "org.freedesktop.machine1", "/org/freedesktop/machine1/machine"],
    );
    let dir_xml = common::stdout(&o);
    let theirs_dir = reference("machine-dir-introspect.xml");
    assert_eq!(
        dir_xml.trim_end(),
        // machined's has `.host` only; ours has the machine too.
        theirs_dir
            .trim_end()
            .replace("<node name=\"_2ehost\"/>", "<node name=\"_2ehost\"/>\n <node name=\"mcompat\"/>"),
        "child nodes of the machine directory differ from machined's"
    );
    let o = busctl(&bus, &["tree", "org.freedesktop.machine1"]);
    assert!(
        common::stdout(&o).contains("/org/freedesktop/machine1/machine/mcompat"),
        "{}",
        common::stdout(&o)
    );
    let o = busctl(
        &bus,
        &[
            "get-property",
            "org.freedesktop.machine1",
            "/org/freedesktop/machine1/machine/mcompat",
            "org.freedesktop.machine1.Machine",
            "Leader",
        ],
    );
    assert_eq!(common::stdout(&o), format!("u {}\n", m.leader));
    let o = busctl(
        &bus,
        &["introspect", "--xml-interface", "org.freedesktop.machine1", "/org/freedesktop/machine1"],
    );
    let ours = common::stdout(&o);
    let o = busctl(
        &bus,
        &[
            "introspect",
            "--xml-interface",
            "org.freedesktop.machine1",
            "/org/freedesktop/machine1/machine/mcompat",
        ],
    );
    let ours_machine = common::stdout(&o);
    {
        let (theirs, theirs_machine) =
            (reference("manager-introspect.xml"), reference("host-machine-introspect.xml"));
        for std_iface in [
            "org.freedesktop.DBus.Peer",
            "org.freedesktop.DBus.Introspectable",
            "org.freedesktop.DBus.Properties",
        ] {
            assert_eq!(interface_block(&ours, std_iface), interface_block(&theirs, std_iface));
        }
        // Every method of machined's Manager and Machine interfaces: the same signature and
        // annotations, or listed here as not implemented yet (and then really absent).
        let manager_iface = "org.freedesktop.machine1.Manager";
        let machine_iface = "org.freedesktop.machine1.Machine";
        for (iface, theirs_xml, ours_xml, missing) in [
            (manager_iface, &theirs, &ours, MANAGER_NOT_YET.as_slice()),
            (machine_iface, &theirs_machine, &ours_machine, MACHINE_NOT_YET.as_slice()),
        ] {
            let their_block = interface_block(theirs_xml, iface);
            let our_block = interface_block(ours_xml, iface);
            for method in method_names(their_block) {
                if missing.contains(&method.as_str()) {
                    assert!(
                        !our_block.contains(&format!("<method name=\"{method}\"")),
                        "{method} is listed as missing"
                    );
                } else {
                    assert_eq!(
                        method_block(our_block, &method),
                        method_block(their_block, &method),
                        "{iface}.{method}"
                    );
                }
            }
            // Signals and properties likewise, in machined's order.
            assert_eq!(
                member_lines(our_block, "<signal"),
                member_lines(their_block, "<signal"),
                "{iface} signals"
            );
            assert_eq!(
                member_lines(our_block, "<property"),
                member_lines(their_block, "<property"),
                "{iface} properties"
            );
        }
        let props = |x: &str| -> String {
            let block = interface_block(x, "org.freedesktop.machine1.Machine");
            block[..block.find("<method").unwrap()].to_owned()
        };
        assert_eq!(props(&ours_machine), props(&theirs_machine));
        assert!(
            ours.trim_end().ends_with(" <node name=\"image\"/>\n <node name=\"machine\"/>\n</node>"),
            "{ours}"
        );
    }

    // poweroff goes to the guest's init as machinectl's SIGRTMIN+4; the machine shuts down
    // cleanly and disappears from the list.
    let o = machinectl(&bus, &["poweroff", "mcompat"]);
    assert_eq!(o.status.code(), Some(0), "{}", common::stderr(&o));
    let st = m.wait(Duration::from_secs(60)).expect("machine powered off");
    assert_eq!(st.code(), Some(0), "log:\n{}", m.log_text());
    assert!(wait_until(Duration::from_secs(5), || common::stdout(&machinectl(&bus, &["list"]))
        == "No machines.\n"));
    assert_no_leaks("mcompat", &dir);

    // terminate through machinectl ends a running machine too.
    let mut m = Machine::boot_on(Some(&bus.address), &dir, &boot_dir, &["--console=passive"]);
    let o = machinectl(&bus, &["terminate", "mcompat"]);
    assert_eq!(o.status.code(), Some(0), "{}", common::stderr(&o));
    assert!(m.wait(Duration::from_secs(30)).is_some(), "terminate did not end the machine");
    assert!(wait_until(Duration::from_secs(5), || common::stdout(&machinectl(&bus, &["list"]))
        == "No machines.\n"));
    assert_no_leaks("mcompat", &dir);
}

#[test]
fn mctl_cli_manages_machines() {
    let s = scratch();
    let bus = TestBus::start(s.path());
    let _mctld = Mctld::start(&bus, s.path(), false);
    let dir = copy_tree(debian_tree(), s.path(), "mcli");
    let boot_dir = s.path().join("boot");
    std::fs::create_dir(&boot_dir).unwrap();
    let mut m = Machine::boot_on(Some(&bus.address), &dir, &boot_dir, &[]);

    let o = run_mctl(&bus, &["list"]);
    assert_eq!(
        common::stdout(&o),
        "MACHINE CLASS     SERVICE OS     VERSION ADDRESSES\nmcli    container mctl    debian 12      -\n\n1 machines listed.\n"
    );
    assert_eq!(
        common::stdout(&run_mctl(&bus, &["list", "--no-legend"])),
        "mcli container mctl debian 12 -\n"
    );
    let o = run_mctl(&bus, &["show", "-p", "Leader", "--value", "mcli"]);
    assert_eq!(common::stdout(&o), format!("{}\n", m.leader));
    // -o json: one object per machine, numbers as numbers.
    let o = run_mctl(&bus, &["show", "-o", "json", "mcli"]);
    let v: serde_json::Value = serde_json::from_str(&common::stdout(&o)).expect("show -o json is JSON");
    assert_eq!(v[0]["Name"], "mcli");
    assert_eq!(v[0]["Leader"], serde_json::json!(m.leader));
    assert_eq!(v[0]["Class"], "container");
    let o = run_mctl(&bus, &["status", "mcli"]);
    let out = common::stdout(&o);
    assert!(out.contains(&format!("Leader: {} (systemd)", m.leader)), "{out}");
    assert!(out.contains("OS: Debian GNU/Linux 12 (bookworm)"), "{out}");
    // The process tree comes from the machine's cgroup.
    assert!(
        out.contains("CGroup: ") && out.contains("init.scope") && out.contains("systemd-journald"),
        "{out}"
    );
    let shell = |script: &str| run_mctl(&bus, &["shell", "mcli", "/bin/sh", "-c", script]);
    // What the guest names and runs reaches the admin's terminal escaped.
    let o = shell(
        "d=/sys/fs/cgroup/$(printf 'e\\033[2Jx'); mkdir $d && { sleep 1000 </dev/null >/dev/null 2>&1 & echo $! > $d/cgroup.procs; }",
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    let out = common::stdout(&run_mctl(&bus, &["status", "mcli"]));
    assert!(out.contains("─e\\u{1b}[2Jx\n") && out.contains("sleep 1000"), "{out}");
    assert!(!out.contains('\x1b'), "{out:?}");

    // shell: inside the machine's namespaces, its cgroup, its capability bounding set.
    let o = shell("hostname; cat /proc/1/comm; cat /proc/self/cgroup; grep CapBnd /proc/self/status; exit 7");
    let out = common::stdout(&o);
    assert_eq!(o.status.code(), Some(7), "{}", common::stderr(&o));
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("mcli"));
    assert_eq!(lines.next(), Some("systemd"));
    assert!(out.contains("0::/mctl-shell-"), "{out}");
    let leader_bnd = std::fs::read_to_string(format!("/proc/{}/status", m.leader)).unwrap();
    let leader_bnd = leader_bnd.lines().find(|l| l.starts_with("CapBnd:")).unwrap();
    assert!(out.contains(leader_bnd), "{out}");
    let o = run_mctl(&bus, &["shell", "nobody@mcli", "/usr/bin/id", "-un"]);
    assert_eq!(common::stdout(&o), "nobody\n", "{}", common::stderr(&o));
    // On a terminal the shell gets a pty of the machine's own devpts, with our window size.
    let mut cmd = mctl();
    cmd.env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address).args(["shell", "mcli"]);
    let (mut shell, master) = spawn_on_pty(cmd, 33, 101);
    let rx = pty_reader(&master);
    let mut master = std::fs::File::from(master);
    let mut seen = String::new();
    std::io::Write::write_all(&mut master, b"echo in-$((6*7)) $(tty) $(stty size); exit 5\r").unwrap();
    expect_output(&rx, &mut seen, "in-42 /dev/pts/1 33 101", Duration::from_secs(20));
    assert!(wait_until(Duration::from_secs(10), || shell.try_wait().unwrap().is_some()), "{seen}");
    assert_eq!(shell.wait().unwrap().code(), Some(5));

    // freeze/thaw: the cgroup freezer stops every process of the machine and resumes it.
    assert_eq!(run_mctl(&bus, &["freeze", "mcli"]).status.code(), Some(0));
    assert!(common::stdout(&run_mctl(&bus, &["status", "mcli"])).contains("Frozen: yes"));
    let cg = common::stdout(&run_mctl(&bus, &["status", "mcli"]));
    let cg = cg.lines().find_map(|l| l.trim().strip_prefix("CGroup: ")).unwrap().to_owned();
    let events = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .find_map(|root| std::fs::read_to_string(format!("{root}{cg}/cgroup.events")).ok())
        .unwrap();
    assert!(events.contains("frozen 1"), "{events}");
    assert_eq!(run_mctl(&bus, &["thaw", "mcli"]).status.code(), Some(0));
    assert!(!common::stdout(&run_mctl(&bus, &["status", "mcli"])).contains("Frozen"));
    assert_eq!(common::stdout(&run_mctl(&bus, &["shell", "mcli", "/bin/echo", "thawed"])), "thawed\n");

    // kill: signals reach the named processes, and only them. A guest service records what
    // it gets; the leader alone (systemd: SIGUSR2 dumps its state) must not reach it, all
    // must. The leader-only signal goes first, so had it reached the service, its file would be
    // there by the time the second signal's is.
    m.sh("rm -f /run/got-usr1 /run/got-usr2; systemd-run --unit=trapper sh -c 'trap \"touch /run/got-usr1\" USR1; trap \"touch /run/got-usr2\" USR2; touch /run/trapping; while :; do sleep 0.1; done'");
    assert!(wait_until(Duration::from_secs(10), || m.sh("test -e /run/trapping && echo yes") == "yes"));
    let o = run_mctl(&bus, &["kill", "--kill-whom=leader", "-s", "SIGUSR2", "mcli"]);
    assert_eq!(o.status.code(), Some(0), "{}", common::stderr(&o));
    let o = run_mctl(&bus, &["kill", "--kill-whom=all", "-s", "SIGUSR1", "mcli"]);
    assert_eq!(o.status.code(), Some(0), "{}", common::stderr(&o));
    assert!(
        wait_until(Duration::from_secs(10), || m.sh("test -e /run/got-usr1 && echo yes") == "yes"),
        "--kill-whom=all did not reach the guest's service"
    );
    assert_eq!(m.sh("test -e /run/got-usr2 && echo reached"), "", "--kill-whom=leader reached a service");
    m.sh("systemctl stop trapper");
    let o = run_mctl(&bus, &["kill", "-s", "NOPE", "mcli"]);
    assert!(common::stderr(&o).contains("unknown signal"));

    // reboot: the guest reboots, the launcher boots it again and re-registers.
    let first = m.leader;
    assert_eq!(run_mctl(&bus, &["reboot", "mcli"]).status.code(), Some(0));
    let second = m.notify.wait_leader(1, BOOT_TIMEOUT).expect("machine rebooted");
    assert_ne!(first, second);
    m.leader = second;
    assert!(wait_until(Duration::from_secs(30), || {
        common::stdout(&run_mctl(&bus, &["show", "-p", "Leader", "--value", "mcli"])) == format!("{second}\n")
    }));

    // terminate: every process ends, the launcher cleans up, the entry goes. On a hybrid host
    // the guest first freezes its PID 1 through the v1 freezer (its cgroup namespace shows it
    // its part), where SIGKILL does not reach: mctld thaws what the guest froze.
    if has_v1_freezer() {
        m.sh("mkdir -p /run/f && mount -t cgroup -o freezer none /run/f && mkdir /run/f/a \
              && echo 1 > /run/f/a/cgroup.procs && echo FROZEN > /run/f/a/freezer.state");
        wait_guest_frozen("mcli", "a");
    }
    assert_eq!(run_mctl(&bus, &["terminate", "mcli"]).status.code(), Some(0));
    assert!(m.wait(Duration::from_secs(30)).is_some());
    assert!(
        wait_until(Duration::from_secs(5), || common::stdout(&run_mctl(&bus, &["list"])) == "No machines.\n")
    );
    assert_no_leaks("mcli", &dir);

    // Unknown machines get machined's message and exit 1.
    for verb in [
        &["status", "ghost"][..],
        &["terminate", "ghost"],
        &["show", "ghost"],
        &["poweroff", "ghost"],
        &["shell", "ghost"],
    ] {
        let o = run_mctl(&bus, verb);
        assert_eq!(o.status.code(), Some(1), "{verb:?}");
        assert!(common::stderr(&o).contains("No machine 'ghost' known"), "{verb:?}: {}", common::stderr(&o));
    }
}

#[test]
fn restarted_mctld_readopts_live_machines_and_drops_dead_ones() {
    let s = scratch();
    let bus = TestBus::start(s.path());
    let mut mctld = Mctld::start(&bus, s.path(), false);
    let dir = copy_tree(busybox_tree(), s.path(), "mlive");
    let mut notify = NotifyListener::new(s.path());
    let mut launcher = Guarded(
        mctl_on(&bus)
            .args(["run", "-q", "--register=yes", "-D"])
            .arg(&dir)
            .args(["--", "sleep", "60"])
            .env("NOTIFY_SOCKET", &notify.path)
            .spawn()
            .unwrap(),
    );
    let leader = notify.wait_leader(0, Duration::from_secs(10)).expect("machine started");
    assert!(wait_until(Duration::from_secs(5), || common::stdout(&run_mctl(&bus, &["list", "--no-legend"]))
        .starts_with("mlive ")));

    mctld.kill9();
    // A state file of a machine whose leader is long gone.
    std::fs::write(
        mctld.state_dir.join("ghost"),
        "NAME=ghost\nLEADER=999999\nLEADER_START=1\nCLASS=container\nSERVICE=mctl\n",
    )
    .unwrap();
    let new_machines = SignalWatch::new(&bus.address, "MachineNew");
    let _mctld = Mctld::start_with_state(&bus, s.path(), false, &mctld.state_dir.clone());
    let o = run_mctl(&bus, &["list", "--no-legend"]);
    assert_eq!(common::stdout(&o), "mlive container mctl busybox 1 -\n");
    assert!(!mctld.state_dir.join("ghost").exists(), "the dead machine's state file was kept");
    assert_eq!(
        common::stdout(&run_mctl(&bus, &["show", "-p", "Leader", "--value", "mlive"])),
        format!("{leader}\n")
    );
    assert!(new_machines.wait_for("mlive", Duration::from_secs(10)), "no MachineNew re-announced");

    // When the machine ends, the new mctld notices at once (pidfd) and drops it.
    stop_launcher(&mut launcher);
    assert!(
        wait_until(Duration::from_secs(2), || common::stdout(&run_mctl(&bus, &["list"])) == "No machines.\n")
    );
    assert!(std::fs::read_dir(&mctld.state_dir).unwrap().next().is_none());
    assert_no_leaks("mlive", &dir);
}

#[test]
fn registration_modes_and_authorization() {
    let s = scratch();
    std::fs::set_permissions(s.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bus = TestBus::start(s.path());
    let dir = copy_tree(busybox_tree(), s.path(), "mreg");

    // No manager: auto warns once and runs, yes refuses and leaves nothing.
    let o = run_mctl(&bus, &["run", "-D", dir.to_str().unwrap(), "true"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(common::stderr(&o).matches("not registered").count(), 1, "{}", common::stderr(&o));
    let o = run_mctl(&bus, &["run", "--register=yes", "-D", dir.to_str().unwrap(), "true"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(common::stderr(&o).contains("no machine manager answers"), "{}", common::stderr(&o));
    assert_no_leaks("mreg", &dir);

    let _mctld = Mctld::start(&bus, s.path(), false);
    // A name the manager already has is refused before the payload runs.
    let mut stand_in = Command::new("sleep").arg("30").spawn().unwrap();
    let o = busctl(
        &bus,
        &[
            "call",
            "org.mctl.Machine1",
            "/org/freedesktop/machine1",
            "org.freedesktop.machine1.Manager",
            "RegisterMachine",
            "sayssus",
            "clash",
            "0",
            "other",
            "container",
            &stand_in.id().to_string(),
            "",
        ],
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    let o = run_mctl(&bus, &["run", "-M", "clash", "-D", dir.to_str().unwrap(), "--", "touch", "/ran"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(common::stderr(&o).contains("Machine 'clash' already exists"), "{}", common::stderr(&o));
    assert!(!dir.join("ran").exists(), "the payload ran although registration failed");
    assert_no_leaks("clash", &dir);

    // Anyone may look; only root may change things.
    let as_nobody = |args: &[&str]| -> Output {
        let mut c = mctl_on(&bus);
        c.args(args).uid(65534).gid(65534);
        c.output().unwrap()
    };
    let o = as_nobody(&["list", "--no-legend"]);
    assert!(common::stdout(&o).contains("clash"), "{}", common::stderr(&o));
    let o = as_nobody(&["terminate", "clash"]);
    assert_eq!(o.status.code(), Some(1));
    // mctld's own refusal (the policy lets TerminateMachine through), not the bus policy's.
    assert!(
        common::stderr(&o).contains("Access denied: only root may terminate")
            && !common::stderr(&o).contains("Rejected send message"),
        "{}",
        common::stderr(&o)
    );
    let o = Command::new("busctl")
        .args([
            "--system",
            "call",
            "org.mctl.Machine1",
            "/org/freedesktop/machine1",
            "org.freedesktop.machine1.Manager",
        ])
        .args(["RegisterMachine", "sayssus", "evil", "0", "x", "container", "0", ""])
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        common::stderr(&o).contains("Access denied") || common::stderr(&o).contains("rejected"),
        "{}",
        common::stderr(&o)
    );

    // --register=no: the machine stays off the list.
    let mut notify = NotifyListener::new(s.path());
    let mut hidden = Guarded(
        mctl_on(&bus)
            .args(["run", "-q", "--register=no", "-M", "hidden", "-D"])
            .arg(&dir)
            .args(["--", "sleep", "30"])
            .env("NOTIFY_SOCKET", &notify.path)
            .spawn()
            .unwrap(),
    );
    notify.wait_leader(0, Duration::from_secs(10)).expect("machine started");
    assert_eq!(
        common::stdout(&run_mctl(&bus, &["list", "--no-legend"])),
        "clash container other debian 12 -\n"
    );
    stop_launcher(&mut hidden);
    let _ = stand_in.kill();
    let _ = stand_in.wait();
    assert!(
        wait_until(Duration::from_secs(5), || common::stdout(&run_mctl(&bus, &["list"])) == "No machines.\n")
    );
    assert_no_leaks("hidden", &dir);
}

#[test]
fn images_over_dbus_and_commit() {
    let s = scratch();
    std::fs::set_permissions(s.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bus = TestBus::start(s.path());
    let store = s.path().join("store");
    std::fs::create_dir(&store).unwrap();
    copy_tree(busybox_tree(), &store, "bb");
    let before = tree_digest(&store.join("bb"));
    let mctld_dir = s.path().join("mctld");
    std::fs::create_dir(&mctld_dir).unwrap();
    let _mctld =
        Mctld::start_args(&bus, &mctld_dir, &["--machined-compat", "--pool-path", store.to_str().unwrap()]);
    let mctl_store = |args: &[&str]| -> Output {
        mctl_on(&bus).env("MCTL_IMAGE_STORE", &store).args(args).output().unwrap()
    };
    let clean = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&store)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };

    // machinectl's image verbs, served by mctld.
    let o = machinectl(&bus, &["list-images"]);
    let out = common::stdout(&o);
    assert!(
        out.starts_with("NAME TYPE      RO USAGE CREATED") && out.contains("\nbb   directory no"),
        "{out}"
    );
    assert!(out.ends_with("1 images listed.\n"), "{out}");
    assert_eq!(machinectl(&bus, &["clone", "bb", "bb2"]).status.code(), Some(0));
    assert_eq!(tree_digest(&store.join("bb2")), before);
    assert_eq!(machinectl(&bus, &["rename", "bb2", "bb3"]).status.code(), Some(0));
    assert_eq!(machinectl(&bus, &["read-only", "bb3"]).status.code(), Some(0));
    assert!(common::stdout(&machinectl(&bus, &["list-images"])).contains("bb3  directory yes"));
    let o = machinectl(&bus, &["remove", "bb3"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(common::stderr(&o).contains("read-only"), "{}", common::stderr(&o));
    let o = busctl(
        &bus,
        &[
            "get-property",
            "org.freedesktop.machine1",
            "/org/freedesktop/machine1/image/bb3",
            "org.freedesktop.machine1.Image",
            "ReadOnly",
        ],
    );
    assert_eq!(common::stdout(&o), "b true\n");
    assert_eq!(machinectl(&bus, &["read-only", "bb3", "no"]).status.code(), Some(0));
    // Only root may change images.
    let o = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/system && exec setpriv --reuid=65534 --regid=65534 --clear-groups machinectl --no-pager remove bb3"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(common::stderr(&o).contains("Access denied"), "{}", common::stderr(&o));
    assert_eq!(machinectl(&bus, &["remove", "bb3"]).status.code(), Some(0));
    assert_eq!(clean(), ["bb"]);
    assert_eq!(machinectl(&bus, &["image-status", "nope"]).status.code(), Some(1));

    // commit: the merged view of an ephemeral machine becomes a new image.
    let mut notify = NotifyListener::new(s.path());
    let mut eph = Guarded(
        mctl_on(&bus)
            .env("MCTL_IMAGE_STORE", &store)
            .env("MCTL_RUNTIME_DIR", s.path().join("run"))
            .env("NOTIFY_SOCKET", &notify.path)
            .args(["run", "-q", "-x", "-M", "bb", "--", "sh", "-c", "echo committed > /etc/marker; sleep 60"])
            .spawn()
            .unwrap(),
    );
    notify.wait_leader(0, Duration::from_secs(10)).expect("ephemeral machine started");
    let name = common::stdout(&run_mctl(&bus, &["list", "--no-legend"]))
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    assert!(wait_until(Duration::from_secs(5), || {
        common::stdout(&mctl_on(&bus).args(["shell", &name, "cat", "/etc/marker"]).output().unwrap())
            == "committed\n"
    }));
    let o = mctl_store(&["commit", &name, "bbc"]);
    assert_eq!(o.status.code(), Some(0), "{}", common::stderr(&o));
    assert_eq!(std::fs::read_to_string(store.join("bbc/etc/marker")).unwrap(), "committed\n");
    assert_eq!(std::fs::read_dir(store.join("bbc/proc")).unwrap().count(), 0, "API filesystems were copied");
    assert!(!common::stdout(&run_mctl(&bus, &["status", &name])).contains("Frozen"), "machine left frozen");
    let o = mctl_store(&["commit", &name, "bbc"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(common::stderr(&o).contains("Image 'bbc' already exists"), "{}", common::stderr(&o));
    stop_launcher(&mut eph);
    assert_eq!(clean(), ["bb", "bbc"]);
    assert_eq!(tree_digest(&store.join("bb")), before, "the ephemeral machine changed its image");
    // The committed image runs.
    let o = mctl_store(&["run", "-q", "-M", "bbc", "--", "cat", "/etc/marker"]);
    assert_eq!(common::stdout(&o), "committed\n", "{}", common::stderr(&o));
}

/// The real systemd-machined 252 on a bus of its own, in a private mount namespace with an
/// empty tmpfs on /run (its state directory): nothing of it reaches the host.
struct RealMachined {
    child: std::process::Child,
}

impl RealMachined {
    fn start(bus: &TestBus) -> RealMachined {
        let child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c"])
            .arg("mount -t tmpfs tmpfs /run && exec /lib/systemd/systemd-machined")
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start systemd-machined");
        let up = wait_until(Duration::from_secs(20), || {
            busctl(
                bus,
                &[
                    "call",
                    "org.freedesktop.machine1",
                    "/org/freedesktop/machine1",
                    "org.freedesktop.machine1.Manager",
                    "ListMachines",
                ],
            )
            .status
            .success()
        });
        assert!(up, "systemd-machined did not come up on its bus");
        RealMachined { child }
    }
}

impl Drop for RealMachined {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `.host`, the pseudo-machine machined always has: machinectl's list --all, show and status
/// of it, and the refusals to terminate or kill it, against mctld and against the real
/// systemd-machined on a second bus, side by side.
#[test]
fn dot_host_answers_like_the_real_machined() {
    let s = scratch();
    let ours_dir = s.path().join("ours");
    let theirs_dir = s.path().join("theirs");
    std::fs::create_dir(&ours_dir).unwrap();
    std::fs::create_dir(&theirs_dir).unwrap();
    let ours = TestBus::start(&ours_dir);
    let _mctld = Mctld::start(&ours, &ours_dir, true);
    let theirs = TestBus::start(&theirs_dir);
    let _machined = RealMachined::start(&theirs);
    // "Since: DATE; 13h ago" may cross a second between the two calls. machined maps the
    // host's boot (BOOTTIME 0) to MONOTONIC from two clock reads, which gives 0 or 1 µs by
    // chance: either counts as the boot.
    let since = |o: &Output| -> String {
        common::stdout(o)
            .lines()
            .map(|l| match l.trim_start() {
                t if t.starts_with("Since:") => "Since: ...",
                "TimestampMonotonic=0" | "TimestampMonotonic=1" => "TimestampMonotonic=0 or 1",
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    for args in [
        &["list", "--all"][..],
        &["list", "--all", "-o", "json"],
        &["list"],
        &["show", ".host"],
        &["status", ".host"],
        &["terminate", ".host"],
        &["kill", ".host"],
        &["show", "-p", "Class", "--value", ".host"],
    ] {
        let (a, b) = (machinectl(&ours, args), machinectl(&theirs, args));
        assert_eq!(
            (since(&a), common::stderr(&a), a.status.code()),
            (since(&b), common::stderr(&b), b.status.code()),
            "machinectl {args:?}: mctld (left) differs from systemd-machined (right)"
        );
    }
    // And on the bus: the same entry in ListMachines, the same object path.
    let list = [
        "call",
        "org.freedesktop.machine1",
        "/org/freedesktop/machine1",
        "org.freedesktop.machine1.Manager",
        "ListMachines",
    ];
    assert_eq!(common::stdout(&busctl(&ours, &list)), common::stdout(&busctl(&theirs, &list)));
    // A shell on the host itself, for root (machined's host-shell): the host's namespaces.
    let o = machinectl(
        &ours,
        &["shell", ".host", "/bin/sh", "-c", "echo on-host-$((6*7)); readlink /proc/self/ns/mnt"],
    );
    let own_mnt = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    let text = common::stdout(&o);
    assert!(
        text.contains("on-host-42") && text.contains(&*own_mnt.to_string_lossy()),
        "{text}{}",
        common::stderr(&o)
    );
    // mctld moves no file to or from the host in the host's name: it does that for machines.
    let copy_dest = s.path().join("host-copy").display().to_string();
    for args in [&["copy-from", ".host", "/etc/hostname", &copy_dest][..], &["bind", ".host", "/tmp", "/mnt"]]
    {
        let o = machinectl(&ours, args);
        assert!(
            !o.status.success() && common::stderr(&o).contains("Operation not supported"),
            "{args:?}: {}",
            common::stderr(&o)
        );
    }
    assert!(!s.path().join("host-copy").exists());
    // The host is never acted on: terminate above was refused, and PID 1 is alive.
    assert!(std::path::Path::new("/proc/1").exists());
}
