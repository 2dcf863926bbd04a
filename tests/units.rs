//! Persistent machines under a real systemd. This host's PID 1 is not systemd, so the test
//! boots a Debian guest with mctl (the host-in-a-box), installs the freshly built mctl into it
//! with the install step, and drives nested machines there through systemd and its system bus.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn ok(m: &Machine, cmd: &[&str]) -> String {
    let o = m.exec(cmd);
    assert!(o.status.success(), "{cmd:?} failed: {}{}", common::stdout(&o), common::stderr(&o));
    common::stdout(&o)
}

fn eventually(m: &Machine, script: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        last = m.sh(script);
        if last == want {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("`{script}` gave {last:?}, not {want:?}");
}

#[test]
fn persistent_machines_under_a_real_systemd() {
    let s = scratch();
    let outer = copy_tree(debian_tree(), s.path(), "outer");
    std::fs::create_dir_all(outer.join("var/lib/machines")).unwrap();
    copy_tree(debian_tree(), &outer.join("var/lib/machines"), "inner");
    let build = Path::new(env!("CARGO_BIN_EXE_mctl")).parent().unwrap().to_str().unwrap().to_owned();
    let repo = env!("CARGO_MANIFEST_DIR");
    let boot_dir = s.path().join("boot");
    std::fs::create_dir(&boot_dir).unwrap();
    let mut m = Machine::boot(
        &outer,
        &boot_dir,
        &["--bind-ro", &format!("{repo}:/opt/mctl-src"), "--bind-ro", &format!("{build}:/opt/mctl-build")],
    );

    // The install step, as a user runs it once.
    ok(&m, &["env", "MCTL_BUILD_DIR=/opt/mctl-build", "/opt/mctl-src/bootstrap/install.sh"]);
    let o = m.exec(&[
        "systemd-analyze",
        "verify",
        "/usr/local/lib/systemd/system/mctl@.service",
        "/usr/local/lib/systemd/system/mctld.service",
        "/usr/local/lib/systemd/system/mctl-machines.target",
        "mctl@inner.service",
    ]);
    assert!(
        o.status.success() && common::stderr(&o).is_empty(),
        "systemd-analyze verify: {}",
        common::stderr(&o)
    );

    // The first call D-Bus-activates mctld.
    assert_eq!(m.sh("systemctl is-active mctld.service"), "inactive");
    assert_eq!(ok(&m, &["mctl", "list"]), "No machines.\n");
    assert_eq!(m.sh("systemctl is-active mctld.service"), "active");

    // start: systemd runs mctl@inner.service, which is active once the nested guest is ready.
    ok(
        &m,
        &["sh", "-c", "mkdir -p /etc/mctl && printf '[Resources]\\nTasksMax=66\\n' > /etc/mctl/inner.mctl"],
    );
    ok(&m, &["mctl", "start", "inner"]);
    assert_eq!(m.sh("systemctl is-active mctl@inner.service"), "active");
    assert_eq!(m.sh("mctl list --no-legend"), "inner container mctl debian 12 -");
    let status = ok(&m, &["mctl", "status", "inner"]);
    assert!(status.contains("Unit: mctl@inner.service"), "{status}");
    assert!(status.contains("CGroup: /machine.slice/mctl@inner.service/payload"), "{status}");
    // The template runs it in a user namespace of its own (-U), as nspawn's does.
    assert!(status.contains("UID Shift: "), "{status}");
    assert_eq!(m.sh("mctl shell inner systemctl is-system-running --wait"), "running");
    assert_eq!(m.sh("mctl shell inner systemctl --failed --no-legend --plain"), "");

    // Limits of a machine that is a unit's cgroup are the unit's properties: from its settings
    // file at start, and from set-property, systemd takes them (and keeps them across reloads).
    // Where the host gives cgroup2 the memory controller systemd applies them; on a hybrid host
    // the controllers stay with v1 outside this box.
    assert_eq!(m.sh("systemctl show -p TasksMax --value mctl@inner.service"), "66");
    ok(&m, &["mctl", "set-property", "--runtime", "inner", "MemoryMax=64M", "TasksMax=77"]);
    assert_eq!(
        m.sh("systemctl show -p MemoryMax -p TasksMax mctl@inner.service"),
        "MemoryMax=67108864\nTasksMax=77"
    );
    let controllers = m.sh("cat /sys/fs/cgroup/cgroup.controllers");
    if controllers.split_whitespace().any(|c| c == "memory") {
        assert_eq!(m.sh("mctl show --value -p MemoryMax inner"), "67108864");
    }
    let top = ok(&m, &["mctl", "top", "--batch", "-n", "1"]);
    assert!(top.lines().any(|l| l.starts_with("inner ")), "{top}");

    // stop (mctl's and systemctl's): a clean poweroff, the unit ends inactive, not failed.
    ok(&m, &["mctl", "stop", "inner"]);
    assert_eq!(m.sh("systemctl is-active mctl@inner.service"), "inactive");
    assert_eq!(m.sh("systemctl show -p Result --value mctl@inner.service"), "success");
    assert_eq!(ok(&m, &["mctl", "list"]), "No machines.\n");
    ok(&m, &["systemctl", "start", "mctl@inner.service"]);
    ok(&m, &["systemctl", "stop", "mctl@inner.service"]);
    assert_eq!(m.sh("systemctl is-active mctl@inner.service"), "inactive");
    assert_eq!(m.sh("systemctl show -p Result --value mctl@inner.service"), "success");
    // Without a unit, on the pure cgroup2 host the outer guest is, a machine gets mctl's own
    // cgroup and leaves nothing but the shared `mctl` directory (kept at the root). (Its
    // settings file's TasksMax is for the unit: mctl would have to apply it itself here, and
    // this box's cgroup2 has no pids controller on a hybrid host.)
    let o = m.exec(&[
        "mctl",
        "run",
        "-q",
        "--settings=no",
        "--register=no",
        "-D",
        "/var/lib/machines/inner",
        "--",
        "/bin/sh",
        "-c",
        "cat /proc/self/cgroup",
    ]);
    assert!(o.status.success() && common::stdout(&o).lines().any(|l| l == "0::/"), "{}", common::stderr(&o));
    assert_eq!(m.sh("ls -d /sys/fs/cgroup/mctl/*/ 2>/dev/null | wc -l"), "0");
    // -S on a systemd host: systemd makes the machine's scope in that slice (as for nspawn),
    // mctl lays the machine out in it, and the scope goes with the machine.
    ok(
        &m,
        &[
            "sh",
            "-c",
            "mctl run -q --settings=no --register=no -S mctltest-a.slice -D /var/lib/machines/inner -- \
         /bin/sleep 60 >/dev/null 2>&1 & echo $! > /run/slice-test.pid",
        ],
    );
    eventually(&m, "systemctl show -p Slice --value machine-inner.scope", "mctltest-a.slice");
    assert_eq!(
        m.sh("systemctl show -p ControlGroup --value machine-inner.scope"),
        "/mctltest.slice/mctltest-a.slice/machine-inner.scope"
    );
    eventually(
        &m,
        "wc -l < /sys/fs/cgroup/mctltest.slice/mctltest-a.slice/machine-inner.scope/payload/cgroup.procs",
        "1",
    );
    ok(&m, &["sh", "-c", "kill $(cat /run/slice-test.pid)"]);
    eventually(&m, "systemctl is-active machine-inner.scope", "inactive");
    assert_eq!(m.sh("ls /sys/fs/cgroup/mctltest.slice/mctltest-a.slice 2>/dev/null | grep -c scope"), "0");
    let journal = m.sh("journalctl -u mctl@inner.service --no-pager");
    assert!(
        journal.contains("Halting system") || journal.contains("Power-Off"),
        "no clean shutdown:\n{journal}"
    );

    // A reboot inside the nested guest restarts it under the same unit (exit status 133).
    ok(&m, &["mctl", "start", "inner"]);
    let first = m.sh("mctl show -p Leader --value inner");
    let _ = m.exec(&["mctl", "shell", "inner", "systemctl", "reboot"]);
    eventually(&m, "systemctl show -p NRestarts --value mctl@inner.service", "1");
    eventually(&m, "systemctl is-active mctl@inner.service", "active");
    let second = m.sh("mctl show -p Leader --value inner");
    assert!(!second.is_empty() && second != first, "leader {first} -> {second}");
    assert_eq!(m.sh("mctl shell inner systemctl is-system-running --wait"), "running");

    // enable, then a reboot of the outer guest brings the nested machine back on its own.
    let o = m.exec(&["mctl", "enable", "inner"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(
        common::stderr(&o).contains("mctl-machines.target.wants/mctl@inner.service"),
        "{}",
        common::stderr(&o)
    );
    assert_eq!(m.sh("systemctl is-enabled mctl@inner.service"), "enabled");
    let _ = m.exec(&["systemctl", "reboot"]);
    let leader = m.notify.wait_leader(1, BOOT_TIMEOUT).expect("the outer guest came back");
    m.leader = leader;
    eventually(&m, "systemctl is-active mctl@inner.service", "active");
    eventually(&m, "mctl list --no-legend", "inner container mctl debian 12 -");
    ok(&m, &["mctl", "disable", "inner"]);
    assert_eq!(m.sh("systemctl is-enabled mctl@inner.service"), "disabled");

    // Shutting the outer guest down stops the nested machine cleanly too.
    let st = m.stop();
    assert_eq!(st.code(), Some(0), "log:\n{}", m.log_text());
    assert_no_leaks("outer", &outer);
}

#[test]
fn systemd_verbs_say_when_there_is_no_systemd() {
    // A private mount namespace with an empty /run: certainly no /run/systemd/system.
    for verb in ["start", "stop", "enable", "disable"] {
        let o = Command::new("unshare")
            .args([
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                "mount -t tmpfs tmpfs /run && exec \"$@\"",
                "sh",
            ])
            .arg(env!("CARGO_BIN_EXE_mctl"))
            .args([verb, "web"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{verb}");
        let err = common::stderr(&o);
        assert!(err.contains("systemd is not running as init on this host"), "{verb}: {err}");
        assert_eq!(err.lines().count(), 1);
    }
}

/// Where `bootstrap/install.sh` puts things.
const INSTALLED: [&str; 13] = [
    "/usr/local/bin/mctl",
    "/usr/local/bin/mctld",
    "/usr/local/bin/mctl-runc",
    "/usr/local/lib/systemd/system/mctl@.service",
    "/usr/local/lib/systemd/system/mctld.service",
    "/usr/local/lib/systemd/system/mctl-machines.target",
    "/etc/dbus-1/system.d/org.mctl.Machine1.conf",
    "/usr/local/share/dbus-1/system-services/org.mctl.Machine1.service",
    "/usr/local/share/bash-completion/completions/mctl",
    "/usr/local/share/zsh/site-functions/_mctl",
    "/usr/local/share/fish/vendor_completions.d/mctl.fish",
    "/usr/local/share/man/man1/mctl.1",
    "/usr/local/share/man/man1/mctl-boot.1",
];

/// What the host has at `path` (inode, size, mtime), to show it unchanged afterwards.
fn host_state(path: &str) -> Option<(u64, u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).ok().map(|m| (m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

/// `bootstrap/install.sh` has no prefix: it installs system-wide. So it runs in a private
/// mount namespace where `/usr/local`, `/etc`, `/var/lib` and the source tree are overlays
/// whose writes land in a tmpfs, and `/run` is an empty tmpfs (no systemd, no bus to reload):
/// nothing changes on the host. Without `MCTL_BUILD_DIR` it builds with `cargo build
/// --release --locked` in the source tree and installs from `target/<host>/release`; a release
/// build takes minutes, so `cargo` is a stand-in that checks how it was called and puts the
/// binaries under test there. The files land with their modes, `systemd-analyze verify`
/// accepts the units, and `--uninstall` removes every file again.
#[test]
fn install_sh_with_its_default_build_directory() {
    let s = scratch();
    let repo = env!("CARGO_MANIFEST_DIR");
    let build = Path::new(env!("CARGO_BIN_EXE_mctl")).parent().unwrap().to_owned();
    // Where a release build lands: the build names the host as its target.
    let rustc = Command::new("rustc").arg("-vV").output().unwrap();
    let host = common::stdout(&rustc).lines().find_map(|l| l.strip_prefix("host: ")).unwrap().to_owned();
    let release = format!("target/{host}/release");
    let standin = s.path().join("bin");
    std::fs::create_dir(&standin).unwrap();
    let cargo_log = s.path().join("cargo.log");
    std::fs::write(
        standin.join("cargo"),
        // The "release build": the binaries under test, marked so that only a copy taken from
        // the release directory can match.
        "#!/bin/sh\necho \"$PWD $*\" >> \"$CARGO_LOG\"\n[ \"$*\" = \"build --release --locked\" ] || exit 2\n\
         mkdir -p \"$RELEASE\"\nfor b in mctl mctld mctl-runc; do\n\
         cp \"$BUILD/$b\" \"$RELEASE/\" && printf '\\nrc-standin-release-build\\n' >> \"$RELEASE/$b\"\ndone\n",
    )
    .unwrap();
    std::fs::set_permissions(standin.join("cargo"), std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .unwrap();
    let layers = s.path().join("layers");
    std::fs::create_dir(&layers).unwrap();
    let before: Vec<_> = INSTALLED.iter().map(|p| host_state(p)).collect();
    let release_before = host_state(&format!("{repo}/{release}/mctl"));

    let script = r#"
        set -eu
        mount -t tmpfs tmpfs "$LAYERS"
        for d in /usr/local /etc /var/lib "$REPO"; do
            n=$(echo "$d" | tr / _)
            mkdir -p "$LAYERS/$n/upper" "$LAYERS/$n/work"
            mount -t overlay overlay -o "lowerdir=$d,upperdir=$LAYERS/$n/upper,workdir=$LAYERS/$n/work" "$d"
        done
        mount -t tmpfs tmpfs /run
        PATH="$STANDIN:$PATH" "$REPO/bootstrap/install.sh"
        for f in $FILES; do stat -c "%a %u:%g %n" "$f"; done
        for b in mctl mctld mctl-runc; do
            cmp "$REPO/$RELEASE/$b" "/usr/local/bin/$b"
            [ "$(tail -n 1 "/usr/local/bin/$b")" = rc-standin-release-build ]
        done
        /usr/local/bin/mctl --version
        man -l /usr/local/share/man/man1/mctl-boot.1 2>/dev/null | grep -q 'mctl-boot - Boot' && echo "man renders"
        bash -c '. /usr/local/share/bash-completion/completions/mctl; COMP_WORDS=(mctl cop); COMP_CWORD=1; _mctl_machines mctl cop mctl; echo "completes: ${COMPREPLY[*]}"'
        cmp "$REPO/units/mctl@.service" /usr/local/lib/systemd/system/mctl@.service
        cmp "$REPO/units/mctld.service" /usr/local/lib/systemd/system/mctld.service
        cmp "$REPO/units/mctl-machines.target" /usr/local/lib/systemd/system/mctl-machines.target
        cmp "$REPO/dbus/org.mctl.Machine1.conf" /etc/dbus-1/system.d/org.mctl.Machine1.conf
        cmp "$REPO/dbus/org.mctl.Machine1.service" /usr/local/share/dbus-1/system-services/org.mctl.Machine1.service
        test -d /var/lib/machines && echo "machines dir"
        if command -v systemd-analyze >/dev/null; then
            cd /usr/local/lib/systemd/system
            if v=$(systemd-analyze verify mctl@.service mctld.service mctl-machines.target mctl@rcinst.service 2>&1); then
                echo "verify ok"
            else
                echo "verify failed"
            fi
            [ -z "$v" ] || printf 'verify said: %s\n' "$v"
        else
            echo "verify ok (no systemd-analyze)"
        fi
        "$REPO/bootstrap/install.sh" --uninstall
        for f in $FILES; do [ ! -e "$f" ] || echo "left: $f"; done
        echo done
    "#;
    let o = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", script])
        .env_remove("MCTL_BUILD_DIR")
        .env("LAYERS", &layers)
        .env("REPO", repo)
        .env("BUILD", &build)
        .env("RELEASE", &release)
        .env("STANDIN", &standin)
        .env("CARGO_LOG", &cargo_log)
        .env("FILES", INSTALLED.join(" "))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = common::stdout(&o);
    assert!(o.status.success() && out.ends_with("done\n"), "{out}{}", common::stderr(&o));
    assert_eq!(std::fs::read_to_string(&cargo_log).unwrap(), format!("{repo} build --release --locked\n"));
    let modes: Vec<String> = INSTALLED
        .iter()
        .map(|p| format!("{} 0:0 {p}", if p.contains("/bin/") { "755" } else { "644" }))
        .collect();
    for m in &modes {
        assert!(out.lines().any(|l| l == m), "not installed as `{m}`:\n{out}");
    }
    assert!(out.contains("machines dir\n"), "{out}");
    assert!(out.contains("man renders\n"), "{out}");
    // --version names the revision it was built from.
    assert!(
        out.lines().any(|l| l.starts_with("mctl 0.1.0 (") && l.ends_with(')') && !l.contains("unknown")),
        "{out}"
    );
    assert!(out.contains("completes: copy-to copy-from\n"), "{out}");
    assert!(out.contains("verify ok"), "systemd-analyze verify:\n{out}");
    assert!(!out.contains("verify said"), "systemd-analyze verify:\n{out}");
    assert!(!out.contains("left: "), "--uninstall left files:\n{out}");
    // The host is as it was.
    let after: Vec<_> = INSTALLED.iter().map(|p| host_state(p)).collect();
    assert_eq!(before, after, "the install changed the host");
    assert_eq!(host_state(&format!("{repo}/{release}/mctl")), release_before, "the source tree changed");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&*layers.to_string_lossy()), "a mount was left behind");
}
