//! Machines with a user namespace of their own (`-U`, `--private-users`): a real bookworm
//! boots in one through an idmapped mount, its processes run under the picked range on the
//! host, its image keeps its ownership on disk, mctld and the real machinectl report the shift,
//! and bad ranges are refused.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::*;

/// Tests take this shared, and the one that needs its image's range to be free between two
/// boots takes it alone: -U machines of the other tests, started meanwhile, would pick that
/// range first (the lowest free one).
static RANGES: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn ranges_shared() -> std::sync::RwLockReadGuard<'static, ()> {
    RANGES.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A command inside a machine, entered with all its namespaces (its user namespace included,
/// as its root) the way `nsenter -a` does.
fn exec_as_guest_root(m: &Machine, script: &str) -> Output {
    Command::new("nsenter")
        .args(["-t", &m.leader.to_string(), "-a", "--", "/bin/sh", "-c", script])
        .stdin(Stdio::null())
        .output()
        .expect("nsenter")
}

fn guest_sh(m: &Machine, script: &str) -> String {
    let o = exec_as_guest_root(m, script);
    format!("{}{}", stdout(&o), stderr(&o)).trim().to_owned()
}

/// The range (start, count) of a process's user namespace, from its uid_map.
fn uid_range(pid: i32) -> (u32, u32) {
    let map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).expect("read uid_map");
    let f: Vec<u32> = map.split_whitespace().map(|x| x.parse().unwrap()).collect();
    assert_eq!(f.len(), 3, "one line of three fields in {map:?}");
    assert_eq!(f[0], 0);
    (f[1], f[2])
}

/// The real uid of a host process (from /proc/PID/status).
fn host_uid(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().next()?.parse().ok()
}

/// Files and directories of `root` owned by an id outside 0..65535.
fn shifted_files(root: &Path) -> Vec<String> {
    let out = Command::new("find")
        .arg(root)
        .args(["-xdev", "(", "-uid", "+65535", "-o", "-gid", "+65535", ")", "-print"])
        .output()
        .unwrap();
    stdout(&out).lines().map(str::to_owned).collect()
}

#[test]
fn bookworm_boots_in_a_user_namespace_and_its_image_keeps_its_ownership() {
    let _alone = RANGES.write().unwrap_or_else(std::sync::PoisonError::into_inner);
    let s = scratch();
    let dir = copy_tree(debian_tree(), s.path(), "usern");
    let bus = TestBus::start(s.path());
    let _mctld = Mctld::start(&bus, s.path(), true);
    let boot_dir = s.path().join("boot");
    std::fs::create_dir(&boot_dir).unwrap();
    let state = s.path().join("state");
    let env =
        [("DBUS_SYSTEM_BUS_ADDRESS", bus.address.as_str()), ("MCTL_STATE_DIR", state.to_str().unwrap())];
    let mut m = Machine::boot_env(&dir, &boot_dir, &["-U"], &env);
    let (start, count) = uid_range(m.leader);
    assert_eq!(count, 65536);
    assert!(start >= 0x80000 && start % 65536 == 0, "picked {start}");

    // systemd is fully up, nothing failed.
    let state = guest_sh(&m, "systemctl is-system-running --wait");
    assert_eq!(state, "running", "failed units: {}", guest_sh(&m, "systemctl --failed --no-pager"));
    assert_eq!(guest_sh(&m, "systemctl list-units --state=failed --plain --no-legend"), "");
    // Inside it is root; on the host every process of it runs under the range.
    assert_eq!(guest_sh(&m, "id -u; cat /proc/self/uid_map | tr -s ' '"), format!("0\n 0 {start} 65536"));
    let procs = leader_cgroup_processes(m.leader);
    assert!(procs.len() > 3, "a booted systemd has services: {procs:?}");
    for (pid, _) in &procs {
        if let Some(uid) = host_uid(*pid) {
            assert!((start..start + 65536).contains(&uid), "process {pid} runs as host uid {uid}");
        }
    }
    // Its root has capabilities only in its own namespace: the host's hostname stays.
    let host_name = nix::unistd::gethostname().unwrap();
    assert_eq!(guest_sh(&m, "hostname renamed-inside && hostname"), "renamed-inside");
    assert_eq!(nix::unistd::gethostname().unwrap(), host_name);

    // mctld and the real machinectl report the shift.
    let o = busctl(
        &bus,
        &[
            "call",
            "org.freedesktop.machine1",
            "/org/freedesktop/machine1",
            "org.freedesktop.machine1.Manager",
            "GetMachineUIDShift",
            "s",
            "usern",
        ],
    );
    assert_eq!(stdout(&o).trim(), format!("u {start}"), "{}", stderr(&o));
    let o = machinectl(&bus, &["status", "usern"]);
    assert!(stdout(&o).contains(&format!("UID Shift: {start}")), "{}", stdout(&o));
    let o = mctl().env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address).args(["status", "usern"]).output().unwrap();
    assert!(stdout(&o).contains(&format!("UID Shift: {start}")), "{}{}", stdout(&o), stderr(&o));

    // mctl shell enters as a process of the machine: its root inside, the range's on the host.
    let o = mctl()
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .args(["shell", "nobody@usern", "/bin/sh", "-c", "id -un; id -u; cat /proc/self/uid_map | tr -s ' '"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(stdout(&o), format!("nobody\n65534\n 0 {start} 65536\n"), "{}", stderr(&o));
    let o = mctl()
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .args(["shell", "usern", "/bin/sh", "-c", "touch /root/by-shell; stat -c %u /root/by-shell"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(stdout(&o), "0\n", "{}", stderr(&o));

    // A commit of it is an image with the machine's own ids, not the host ids it runs under.
    let store = s.path().join("store");
    std::fs::create_dir(&store).unwrap();
    assert_eq!(guest_sh(&m, "touch /root/committed && chown 1000:1000 /root/committed && echo ok"), "ok");
    let o = mctl()
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .env("MCTL_IMAGE_STORE", &store)
        .args(["commit", "usern", "usern-copy"])
        .output()
        .unwrap();
    assert!(o.status.success(), "commit: {}", stderr(&o));
    let copied = std::fs::metadata(store.join("usern-copy/root/committed")).unwrap();
    assert_eq!((copied.uid(), copied.gid()), (1000, 1000));
    assert!(shifted_files(&store.join("usern-copy")).is_empty(), "host ids in the commit");

    // What the guest writes lands on disk with the guest's ids, not the host's.
    assert_eq!(guest_sh(&m, "touch /root/made-inside && chown 1000:1000 /root/made-inside && echo ok"), "ok");
    m.stop();
    let made = std::fs::metadata(dir.join("root/made-inside")).unwrap();
    assert_eq!((made.uid(), made.gid()), (1000, 1000));
    assert_eq!(std::fs::metadata(dir.join("root/by-shell")).unwrap().uid(), 0);
    let shifted = shifted_files(&dir);
    assert!(shifted.is_empty(), "files with host ids in the image: {shifted:?}");
    assert_no_leaks("usern", &dir);

    // The image keeps its range (remembered outside it): the next -U boot gets the same one.
    let boot_again = s.path().join("boot-again");
    std::fs::create_dir(&boot_again).unwrap();
    let mut again = Machine::boot_env(&dir, &boot_again, &["-U"], &env);
    assert_eq!(uid_range(again.leader), (start, 65536));
    again.stop();
}

#[test]
fn two_ephemeral_machines_of_one_image_run_at_once_under_different_ranges() {
    let _shared = ranges_shared();
    let before = tree_digest(debian_tree());
    let s = scratch();
    let (d1, d2) = (s.path().join("one"), s.path().join("two"));
    std::fs::create_dir(&d1).unwrap();
    std::fs::create_dir(&d2).unwrap();
    let mut one = Machine::boot(debian_tree(), &d1, &["-U", "-x", "-M", "userns-one", "--register=no"]);
    let mut two = Machine::boot(debian_tree(), &d2, &["-U", "-x", "-M", "userns-two", "--register=no"]);
    let (a, b) = (uid_range(one.leader), uid_range(two.leader));
    assert_ne!(a.0, b.0, "both machines got {a:?}");
    assert!(a.0.abs_diff(b.0) >= 65536, "ranges {a:?} and {b:?} overlap");
    for m in [&one, &two] {
        assert_eq!(guest_sh(m, "systemctl is-system-running --wait"), "running");
        // The overlay's writes are the guest's root's.
        assert_eq!(guest_sh(m, "touch /etc/scratch && stat -c %u:%g /etc/scratch /etc/passwd"), "0:0\n0:0");
    }
    one.stop();
    two.stop();
    assert_eq!(tree_digest(debian_tree()), before, "an ephemeral boot changed the image");
}

// Fixed ranges, one set per test (tests run in parallel, and a range in use is refused):
// values 1900544 (0x1D0000), bad ranges 2031616.. (0x1F0000, 0x200000), chown 2752512 and
// 2818048 (0x2A0000, 0x2B0000), ramfs 2883584 (0x2C0000). Picks start at 524288.

#[test]
fn private_users_values_and_ranges_follow_nspawn() {
    let _shared = ranges_shared();
    let tree = busybox_tree();
    let map = |opts: &[&str]| {
        let mut all = vec!["--register=no", "--read-only", "-M", "userns-values"];
        all.extend_from_slice(opts);
        let o = run_in(tree, &all, &["cat", "/proc/self/uid_map"]);
        assert!(o.status.success(), "{opts:?}: {}", stderr(&o));
        stdout(&o).split_whitespace().map(str::to_owned).collect::<Vec<_>>().join(" ")
    };
    assert_eq!(map(&[]), "0 0 4294967295");
    assert_eq!(map(&["--private-users=no"]), "0 0 4294967295");
    assert_eq!(map(&["--private-users=identity"]), "0 0 65536");
    assert_eq!(map(&["--private-users=1900544:1000"]), "0 1900544 1000");
    // yes: the range of the owner of the root directory (0 here).
    assert_eq!(map(&["--private-users"]), "0 0 65536");

    // Without an idmapped mount (ownership off) the image's files are nobody's inside.
    let o = run_in(
        tree,
        &[
            "--register=no",
            "--read-only",
            "-M",
            "userns-values",
            "--private-users=1900544",
            "--private-users-ownership=off",
        ],
        &["stat", "-c", "%u", "/bin"],
    );
    assert_eq!(stdout(&o).trim(), "65534", "{}", stderr(&o));
    let o = run_in(
        tree,
        &["--register=no", "--read-only", "-M", "userns-values", "-U"],
        &["stat", "-c", "%u", "/bin"],
    );
    assert_eq!(stdout(&o).trim(), "0", "{}", stderr(&o));
}

#[test]
fn bad_ranges_and_values_are_refused_with_nothing_changed() {
    let _shared = ranges_shared();
    let tree = busybox_tree();
    let before = tree_digest(tree);
    for (opt, needle) in [
        ("--private-users=maybe", "invalid --private-users 'maybe'"),
        ("--private-users=100000:0", "the range is empty"),
        ("--private-users=4294967000:65536", "runs past the last user id"),
        // The host's own users.
        ("--private-users=1:1000", "overlaps host user"),
        ("--private-users-ownership=sideways", "invalid value 'sideways'"),
    ] {
        let o = run_in(tree, &["--register=no", "--read-only", "-M", "userns-bad", opt], &["/bin/true"]);
        assert!(!o.status.success(), "{opt} was accepted");
        assert!(stderr(&o).contains(needle), "{opt}: {}", stderr(&o));
    }
    // A range a running user-namespaced machine uses.
    let s = scratch();
    let mut sleeper = mctl()
        .args([
            "run",
            "-q",
            "--register=no",
            "--read-only",
            "-M",
            "userns-first",
            "--private-users=2031616",
            "-D",
        ])
        .arg(tree)
        .args(["--", "sleep", "60"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let leader_up = wait_until(std::time::Duration::from_secs(10), || {
        std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            std::fs::read_to_string(e.path().join("uid_map"))
                .is_ok_and(|m| m.split_whitespace().nth(1) == Some("2031616"))
        })
    });
    assert!(leader_up, "the first machine did not start");
    let o = run_in(
        tree,
        &["--register=no", "--read-only", "-M", "userns-bad", "--private-users=2097152:65536"],
        &["/bin/true"],
    );
    assert!(o.status.success(), "a free range next to it: {}", stderr(&o));
    let o = run_in(
        tree,
        &["--register=no", "--read-only", "-M", "userns-bad", "--private-users=2040000:100"],
        &["/bin/true"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("overlaps the user namespace of process"), "{}", stderr(&o));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(sleeper.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = wait_exit(&mut sleeper, std::time::Duration::from_secs(10));
    drop(s);
    assert_eq!(tree_digest(tree), before, "a refused launch changed the image");
}

#[test]
fn chown_ownership_shifts_the_tree_once_and_across_ranges() {
    let _shared = ranges_shared();
    let s = scratch();
    let dir = copy_tree(busybox_tree(), s.path(), "userns-chown");
    let owner = |p: &str| std::fs::symlink_metadata(dir.join(p)).unwrap().uid();
    let inside = |opts: &[&str]| {
        // The tree's own /etc files and journal directory left alone (nspawn's defaults would
        // copy the host's resolv.conf in and make /var/log/journal): only ownership changes.
        let mut all = vec!["--register=no", "--resolv-conf=off", "--timezone=off", "--link-journal=no"];
        all.extend_from_slice(opts);
        let o = run_in(&dir, &all, &["stat", "-c", "%u", "/bin", "/etc/passwd"]);
        assert!(o.status.success(), "{opts:?}: {}", stderr(&o));
        stdout(&o).split_whitespace().map(str::to_owned).collect::<Vec<_>>()
    };
    assert_eq!(inside(&["--private-users=2752512", "--private-users-ownership=chown"]), ["0", "0"]);
    assert_eq!((owner("bin"), owner("etc/passwd"), owner("")), (2752512, 2752512, 2752512));
    // Again: nothing to do. Another range: shifted across.
    assert_eq!(inside(&["--private-users=2752512", "--private-users-ownership=chown"]), ["0", "0"]);
    assert_eq!(inside(&["--private-users=2818048", "--private-users-ownership=chown"]), ["0", "0"]);
    assert_eq!((owner("bin"), owner("etc/passwd")), (2818048, 2818048));
    // yes: the range follows the tree's owner, so a chowned tree finds its own.
    assert_eq!(inside(&["--private-users=yes", "--private-users-ownership=off"]), ["0", "0"]);
    // Back to the host's ids.
    assert_eq!(inside(&["--private-users=identity", "--private-users-ownership=chown"]), ["0", "0"]);
    assert_eq!((owner("bin"), owner("")), (0, 0));
    assert_eq!(tree_digest(&dir), tree_digest(busybox_tree()), "the round trip changed the tree");

    // An image that must stay as it is cannot be chowned.
    let o = run_in(&dir, &["--register=no", "-x", "-U", "--private-users-ownership=chown"], &["/bin/true"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("cannot be chowned"), "{}", stderr(&o));
    assert_eq!(owner("bin"), 0);
}

#[test]
fn an_idmap_bind_shows_host_files_with_the_machines_ids() {
    let _shared = ranges_shared();
    let s = scratch();
    let shared = s.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("note"), "hello").unwrap();
    let tree = busybox_tree();
    // (The tree is shared read-only: the bind goes on a directory it has.)
    let script = "stat -c %u /home/note; touch /home/written 2>/dev/null && echo wrote || echo refused";
    let base = ["--register=no", "--read-only", "-M", "userns-bind", "-U"];
    let plain = format!("{}:/home", shared.display());
    let o = run_in(tree, &[&base[..], &["--bind", &plain]].concat(), &["sh", "-c", script]);
    assert_eq!(stdout(&o), "65534\nrefused\n", "{}", stderr(&o));
    let idmapped = format!("{}:/home:idmap", shared.display());
    let o = run_in(tree, &[&base[..], &["--bind", &idmapped]].concat(), &["sh", "-c", script]);
    assert_eq!(stdout(&o), "0\nwrote\n", "{}", stderr(&o));
    // Written as the machine's root, stored as the host's: the ids map back.
    assert_eq!(std::fs::metadata(shared.join("written")).unwrap().uid(), 0);
    // An overlay of host directories: its throwaway upper layer is the machine's root's.
    let overlay = format!("--overlay={}::/home", shared.display());
    let o = run_in(
        tree,
        &[&base[..], &[overlay.as_str()]].concat(),
        &["sh", "-c", "echo x > /home/new && cat /home/note"],
    );
    assert_eq!(stdout(&o), "hello", "{}", stderr(&o));
    let o =
        run_in(tree, &["--register=no", "--read-only", "-M", "userns-bind", "--bind", &idmapped], &["true"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("idmap needs a user namespace"), "{}", stderr(&o));
}

/// The payload cgroup (host path) of a booted machine whose leader is `leader`.
fn payload_cgroup(leader: i32) -> std::path::PathBuf {
    let own = std::fs::read_to_string(format!("/proc/{leader}/cgroup")).unwrap();
    let rel = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap().trim_start_matches('/');
    let rel = &rel[..rel.rfind("/payload").expect("a payload cgroup") + "/payload".len()];
    let unified = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .map(Path::new)
        .find(|p| p.join("cgroup.procs").exists())
        .unwrap();
    unified.join(rel)
}

#[test]
fn a_user_namespaced_machine_runs_machines_of_its_own() {
    let _shared = ranges_shared();
    let s = scratch();
    let dir = copy_tree(debian_tree(), s.path(), "userns-nest");
    std::fs::create_dir_all(dir.join("var/lib/machines")).unwrap();
    copy_tree(busybox_tree(), &dir.join("var/lib/machines"), "inner");
    let boot_dir = s.path().join("boot");
    std::fs::create_dir(&boot_dir).unwrap();
    let bind = format!("{}:/usr/local/bin/mctl", env!("CARGO_BIN_EXE_mctl"));
    let state = s.path().join("state");
    let env = [("MCTL_STATE_DIR", state.to_str().unwrap())];
    let mut m = Machine::boot_env(&dir, &boot_dir, &["-U", "--register=no", "--bind-ro", &bind], &env);
    // As a process of the machine (in its cgroup, all its namespaces), as its root.
    let inside = |script: &str| {
        let cg = payload_cgroup(m.leader);
        let o = Command::new("sh")
            .args([
                "-c",
                "echo $$ > \"$1/cgroup.procs\" && exec nsenter -t \"$2\" -a -- /bin/sh -c \"$3\"",
                "sh",
            ])
            .arg(&cg)
            .arg(m.leader.to_string())
            .arg(script)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        format!("{}{}", stdout(&o), stderr(&o))
    };
    // A procfs of its own (what pid namespaces inside need) can be mounted, and shows its
    // namespace alone: the shell is PID 1 and, when it has become ls, the only process there.
    assert_eq!(
        inside("unshare -p -f --mount-proc sh -c 'echo $$; exec ls -d /proc/[0-9]*'").trim(),
        "1\n/proc/1"
    );
    let out = inside(
        "mctl run -q --register=no -D /var/lib/machines/inner -- sh -c 'ps > /tmp/ps; wc -l < /tmp/ps; cat /dev/null && echo devices; hostname'",
    );
    // ps: its header, sh and ps: the nested machine's own processes only. (Piped to wc, ps
    // could list wc or not, as the shell forked it in time.)
    assert_eq!(out, "3\ndevices\ninner\n");
    // Its ids are all there is: a nested user namespace must fit in them.
    let out = inside("mctl run -q --register=no -U -D /var/lib/machines/inner -- true; echo rc=$?");
    assert!(out.contains("a nested machine needs a range inside them") && out.contains("rc=1"), "{out}");
    m.stop();
    assert_no_leaks("userns-nest", &dir);
}

/// A file system that cannot be mounted idmapped (ramfs): `map` is refused with what to do,
/// `auto` chowns the tree instead. (In a mount namespace of the test's own.)
#[test]
fn without_idmapped_mounts_map_is_refused_and_auto_chowns() {
    let _shared = ranges_shared();
    let s = scratch();
    let dir = s.path().join("ramfs");
    std::fs::create_dir(&dir).unwrap();
    let script = r#"
        mount -t ramfs ramfs "$1" && cp -a "$2"/. "$1"/ || exit 9
        "$3" run -q --register=no -M userns-ramfs -D "$1" -U --private-users-ownership=map -- true
        echo "map=$?"
        "$3" run -q --register=no -M userns-ramfs -D "$1" --private-users=2883584 -- stat -c %u /bin
        echo "auto=$? disk=$(stat -c %u "$1/bin")"
    "#;
    let o = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", script, "sh"])
        .arg(&dir)
        .arg(busybox_tree())
        .arg(env!("CARGO_BIN_EXE_mctl"))
        .env("MCTL_STATE_DIR", s.path().join("state"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = format!("{}{}", stdout(&o), stderr(&o));
    assert!(out.contains("cannot idmap mounts; use --private-users-ownership=chown"), "{out}");
    assert!(out.contains("map=1"), "{out}");
    assert!(out.contains("0\nauto=0 disk=2883584"), "{out}");
}

/// Launchers picking at the same moment get different ranges.
#[test]
fn launchers_picking_at_once_get_different_ranges() {
    let _shared = ranges_shared();
    let children: Vec<_> = (0..4)
        .map(|i| {
            mctl()
                .args([
                    "run",
                    "-q",
                    "--register=no",
                    "--read-only",
                    "-M",
                    &format!("userns-race{i}"),
                    "-U",
                    "-D",
                ])
                .arg(busybox_tree())
                .args(["--", "sh", "-c", "cat /proc/self/uid_map; sleep 1"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut starts: Vec<String> = children
        .into_iter()
        .map(|c| {
            let o = c.wait_with_output().unwrap();
            assert!(o.status.success());
            stdout(&o).split_whitespace().nth(1).unwrap().to_owned()
        })
        .collect();
    starts.sort();
    starts.dedup();
    assert_eq!(starts.len(), 4, "ranges shared: {starts:?}");
}
