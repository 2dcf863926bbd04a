//! Resource control: limits from a settings file and `--property` on a booted bookworm, held
//! against what runs inside (an allocation past MemoryMax, a fork loop, a busy loop) and
//! against the guest's root raising them; `set-property`, `show -p`, `status`, `top`; and the
//! settings files' precedence and errors.

mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn mctl_on(bus: &TestBus, config: &Path) -> Command {
    let mut c = mctl();
    c.env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address).env("MCTL_CONFIG_DIR", config).stdin(Stdio::null());
    c
}

fn run(bus: &TestBus, config: &Path, args: &[&str]) -> Output {
    mctl_on(bus, config).args(args).output().unwrap()
}

fn ok(bus: &TestBus, config: &Path, args: &[&str]) -> String {
    let o = run(bus, config, args);
    assert!(o.status.success(), "mctl {args:?}: {}{}", stdout(&o), stderr(&o));
    stdout(&o)
}

fn prop(bus: &TestBus, config: &Path, name: &str) -> u64 {
    let v = ok(bus, config, &["show", "--value", "-p", name, "limited"]);
    v.trim().parse().unwrap_or_else(|_| panic!("{name}={v}"))
}

#[test]
fn a_booted_machine_is_held_to_its_limits() {
    let s = scratch();
    let bus = TestBus::start(s.path());
    let _mctld = Mctld::start(&bus, s.path(), false);
    let config = s.path().join("etc-mctl");
    let shared = s.path().join("shared");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("hello"), "from the host\n").unwrap();
    // Limits, environment, a bind and the network from the machine's settings file; one more
    // limit on the command line.
    std::fs::write(
        config.join("limited.mctl"),
        format!(
            "[Exec]\nEnvironment=GREETING=hi\n\n[Files]\nBindReadOnly={}:/mnt/shared\n\n[Network]\nPrivate=yes\n\n\
             [Resources]\nMemoryMax=64M\nTasksMax=50\n",
            shared.display()
        ),
    )
    .unwrap();
    let boot_dir = s.path().join("boot");
    std::fs::create_dir(&boot_dir).unwrap();
    let config_s = config.display().to_string();
    let m = Machine::boot_env(
        debian_tree(),
        &boot_dir,
        &["-x", "-M", "limited", "--property=CPUQuota=20%"],
        &[("DBUS_SYSTEM_BUS_ADDRESS", &bus.address), ("MCTL_CONFIG_DIR", &config_s)],
    );
    assert_eq!(m.sh("tr '\\0' '\\n' < /proc/1/environ | grep GREETING"), "GREETING=hi");
    assert_eq!(m.sh("cat /mnt/shared/hello"), "from the host");
    assert_eq!(m.sh("ls /sys/class/net"), "lo");

    let shown =
        ok(&bus, &config, &["show", "-p", "MemoryMax,TasksMax", "-p", "CPUQuotaPerSecUSec", "limited"]);
    assert_eq!(shown, "MemoryMax=67108864\nTasksMax=50\nCPUQuotaPerSecUSec=200ms\n");
    let shell = |args: &[&str]| {
        let mut all = vec!["shell", "limited"];
        all.extend_from_slice(args);
        run(&bus, &config, &all)
    };

    // The guest's root raises the limit of its own cgroup root through a v1 mount of the memory
    // controller: that is the payload's, below the machine's cgroup, which keeps its 64M.
    let raised = shell(&[
        "/bin/sh",
        "-c",
        "mkdir -p /run/m && mount -t cgroup -o memory none /run/m && echo -1 > /run/m/memory.limit_in_bytes \
         && cat /run/m/memory.limit_in_bytes; umount /run/m",
    ]);
    assert!(raised.status.success(), "{}", stderr(&raised));
    assert!(stdout(&raised).trim().parse::<u64>().unwrap() > 1 << 40, "{}", stdout(&raised));
    // 200M past the 64M limit: the kernel kills the allocator inside; the machine runs on.
    let oom = shell(&["/bin/dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1"]);
    assert!(!oom.status.success(), "dd of 200M succeeded under MemoryMax=64M");
    assert!(prop(&bus, &config, "OOMKills") >= 1);
    assert_eq!(stdout(&shell(&["/bin/systemctl", "is-system-running"])).trim(), "running");
    let status = ok(&bus, &config, &["status", "limited"]);
    for needle in [
        "\t   Tasks: ",
        " (limit: 50)",
        "\t  Memory: ",
        "(max: 64.0M, peak: ",
        "\t     CPU: ",
        "(quota: 20%)",
        "\tOOM kills: ",
    ] {
        assert!(status.contains(needle), "{needle:?} not in:\n{status}");
    }

    // A fork loop stops at 50 tasks (the shell's own included).
    let mut forks = mctl_on(&bus, &config)
        .args(["shell", "limited", "/bin/sh", "-c", "for i in $(seq 100); do sleep 4 & done; wait"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut most = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while forks.try_wait().unwrap().is_none() && Instant::now() < deadline {
        most = most.max(prop(&bus, &config, "TasksCurrent"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let forks = forks.wait_with_output().unwrap();
    assert!((45..=50).contains(&most), "most tasks at once: {most}");
    assert!(stderr(&forks).to_lowercase().contains("fork"), "{}", stderr(&forks));

    // A busy loop gets 20% of a CPU; meanwhile top shows the machine with figures.
    let before = prop(&bus, &config, "CPUUsageNSec");
    let start = Instant::now();
    let top = mctl_on(&bus, &config)
        .args(["top", "--batch", "-n", "2", "-d", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let busy = shell(&["/usr/bin/timeout", "3", "/bin/sh", "-c", "while :; do :; done"]);
    let (used, elapsed) = (prop(&bus, &config, "CPUUsageNSec") - before, start.elapsed());
    assert_eq!(busy.status.code(), Some(124), "{}", stderr(&busy));
    let share = used as f64 / elapsed.as_nanos() as f64;
    assert!((0.12..0.3).contains(&share), "CPUQuota=20%: the machine used {share:.2} of a CPU");
    let top = top.wait_with_output().unwrap();
    let tables = stdout(&top);
    let last = tables.lines().rfind(|l| l.starts_with("limited ")).unwrap_or_else(|| panic!("{tables}"));
    let cols: Vec<&str> = last.split_whitespace().collect();
    let cpu: f64 = cols[2].parse().unwrap_or_else(|_| panic!("{tables}"));
    assert!(cpu > 5.0 && cpu < 30.0, "{tables}");
    assert!(cols[3].ends_with('M') && cols[1].parse::<u64>().unwrap() > 0, "{tables}");

    let json = ok(&bus, &config, &["top", "-o", "json", "-n", "1"]);
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    let row = rows.as_array().unwrap().iter().find(|r| r["machine"] == "limited").expect(&json);
    assert_eq!(row["memory_max"], 64 << 20, "{json}");
    assert!(row["cpu_usage_nsec"].as_u64() > Some(0) && row["oom_kills"].as_u64() >= Some(1), "{json}");

    // set-property: raised for the running machine only, the 200M fit; lowered and recorded.
    ok(&bus, &config, &["set-property", "--runtime", "limited", "MemoryMax=512M"]);
    assert_eq!(prop(&bus, &config, "MemoryMax"), 512 << 20);
    let fits = shell(&["/bin/dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1"]);
    assert!(fits.status.success(), "{}", stderr(&fits));
    let file = std::fs::read_to_string(config.join("limited.mctl")).unwrap();
    assert!(file.contains("MemoryMax=64M\n"), "--runtime changed the file:\n{file}");
    ok(&bus, &config, &["set-property", "limited", "MemoryMax=96M", "TasksMax=infinity"]);
    assert_eq!(prop(&bus, &config, "MemoryMax"), 96 << 20);
    assert_eq!(ok(&bus, &config, &["show", "--value", "-p", "TasksMax", "limited"]), "infinity\n");
    let file = std::fs::read_to_string(config.join("limited.mctl")).unwrap();
    assert!(file.ends_with("[Resources]\nMemoryMax=100663296\nTasksMax=infinity\n"), "{file}");

    // Refused: a caller that is not root, and a bad value (nothing changes either way).
    let o = mctl_on(&bus, &config)
        .args(["set-property", "--runtime", "limited", "MemoryMax=1G"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(!o.status.success() && stderr(&o).contains("Access denied"), "{}", stderr(&o));
    let o = run(&bus, &config, &["set-property", "limited", "MemoryMax=1G", "CPUWeight=0"]);
    assert!(!o.status.success() && stderr(&o).contains("invalid CPUWeight=0"), "{}", stderr(&o));
    assert_eq!(prop(&bus, &config, "MemoryMax"), 96 << 20);
    drop(m);
}

/// A run on the shared fixture, read-only (a writable run would get the host's resolv.conf
/// and zone copied in, as under nspawn).
fn busybox_run(config: &Path, opts: &[&str], script: &str) -> Output {
    let mut c = mctl();
    c.env("MCTL_CONFIG_DIR", config).args(["run", "-q", "--read-only", "-D"]).arg(busybox_tree()).args(opts);
    c.args(["/bin/sh", "-c", script]).stdin(Stdio::null()).output().unwrap()
}

#[test]
fn settings_files_follow_nspawns_precedence() {
    let s = scratch();
    let config = s.path().join("etc");
    std::fs::create_dir(&config).unwrap();
    let file = config.join("settled.mctl");
    std::fs::write(&file, "[Exec]\nEnvironment=FROM=file\nHostname=filehost\n[Network]\nPrivate=yes\n")
        .unwrap();
    let script = "echo $FROM $(hostname) $(ls /sys/class/net | tr '\\n' ' ')";
    let o = busybox_run(&config, &["-M", "settled"], script);
    assert_eq!(stdout(&o).trim(), "file filehost lo", "{}", stderr(&o));
    // The command line wins setting by setting; --settings=override turns that around.
    let o = busybox_run(&config, &["-M", "settled", "-E", "FROM=cli"], script);
    assert_eq!(stdout(&o).trim(), "cli filehost lo", "{}", stderr(&o));
    let o = busybox_run(&config, &["-M", "settled", "-E", "FROM=cli", "--settings=override"], script);
    assert_eq!(stdout(&o).trim(), "file filehost lo", "{}", stderr(&o));
    // --settings=no: the file is not read.
    let o = busybox_run(&config, &["-M", "settled", "--settings=no"], "echo ${FROM:-none} $(hostname)");
    assert_eq!(stdout(&o).trim(), "none settled", "{}", stderr(&o));

    // A malformed file is refused with file:line and key; nothing is started or left.
    std::fs::write(&file, "[Exec]\nEnvironment=A=b\n\n[Resources]\nMemoryMax=plenty\n").unwrap();
    let o = busybox_run(&config, &["-M", "settled"], "echo started");
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(&format!("{}:5: MemoryMax=plenty: expected bytes", file.display())),
        "{}",
        stderr(&o)
    );
    assert!(!stdout(&o).contains("started"));
    assert!(machine_cgroups("settled").is_empty(), "{:?}", machine_cgroups("settled"));

    // A file beside the image is untrusted: its bind is ignored (said so), its limit kept.
    std::fs::remove_file(&file).unwrap();
    let store = s.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let image = copy_tree(busybox_tree(), &store, "beside");
    std::fs::write(
        store.join("beside.mctl"),
        "[Files]\nBind=/etc:/mnt/host-etc\n[Resources]\nTasksMax=7\n[Exec]\nEnvironment=FROM=beside\n",
    )
    .unwrap();
    let mut c = mctl();
    c.env("MCTL_CONFIG_DIR", &config).args(["run", "-D"]).arg(&image);
    let o = c
        .args(["/bin/sh", "-c", "echo $FROM; ls /mnt/host-etc 2>&1 | head -1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(stderr(&o).contains("Ignoring Bind= from"), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("beside\n"), "{}", stdout(&o));
    assert!(!stdout(&o).contains("passwd"), "the untrusted bind was made: {}", stdout(&o));
    let mut c = mctl();
    c.env("MCTL_CONFIG_DIR", &config).args(["run", "-q", "--settings=trusted", "-D"]).arg(&image);
    let o = c.args(["/bin/ls", "/mnt/host-etc/passwd"]).stdin(Stdio::null()).output().unwrap();
    assert!(o.status.success(), "--settings=trusted: {}", stderr(&o));
    // The limit applies: more than 7 tasks cannot start.
    let mut c = mctl();
    c.env("MCTL_CONFIG_DIR", &config).args(["run", "-q", "-D"]).arg(&image);
    let o = c
        .args(["/bin/sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 1 & done; wait"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(stderr(&o).to_lowercase().contains("fork"), "TasksMax=7 did not hold: {}", stderr(&o));
}

#[test]
fn limits_the_host_cannot_apply_are_refused_by_name() {
    let s = scratch();
    let o = busybox_run(s.path(), &["-M", "refused", "--property=MemoryHigh=10M"], "echo started");
    let hybrid = Path::new("/sys/fs/cgroup/unified").is_dir();
    if hybrid {
        assert!(!o.status.success());
        assert!(
            stderr(&o).contains(
                "MemoryHigh=10485760 cannot be applied on this host: the memory controller is cgroup v1"
            ),
            "{}",
            stderr(&o)
        );
    } else {
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let o = busybox_run(s.path(), &["-M", "refused", "--property=MemoryMax=lots"], "echo started");
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--property: invalid MemoryMax=lots: expected bytes"), "{}", stderr(&o));
    let o = busybox_run(s.path(), &["-M", "refused", "--property=Frobs=1"], "echo started");
    assert!(stderr(&o).contains("unknown resource property 'Frobs=1'"), "{}", stderr(&o));
}
