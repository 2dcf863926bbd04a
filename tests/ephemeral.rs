//! Ephemeral machines, volatile modes and overlay mounts: the image is never written.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn runtime_dir(s: &Path) -> String {
    s.join("run").display().to_string()
}

/// Leftover scratch directories of launches under the test's runtime directory.
fn assert_no_scratch_left(s: &Path) {
    // The compiled system call filters are a cache, kept on purpose.
    let left: Vec<_> = std::fs::read_dir(s.join("run"))
        .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| !p.ends_with("seccomp")).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "scratch directories left: {left:?}");
}

#[test]
fn ephemeral_boot_leaves_the_image_untouched() {
    let s = scratch();
    let dir = copy_tree(debian_tree(), s.path(), "ephimg");
    let before = tree_digest(&dir);
    let boot_dir = s.path().join("boot");
    std::fs::create_dir(&boot_dir).unwrap();
    let rt = runtime_dir(s.path());
    let mut m = Machine::boot_env(&dir, &boot_dir, &["-x"], &[("MCTL_RUNTIME_DIR", rt.as_str())]);
    let hostname = m.sh("hostname");
    assert!(hostname.starts_with("ephimg-") && hostname.len() == "ephimg-".len() + 16, "{hostname}");
    assert_eq!(m.sh("systemctl is-system-running --wait"), "running");
    assert_eq!(m.sh("systemctl --failed --no-legend --plain"), "");
    // Writes everywhere in the tree land in the overlay.
    m.sh("echo changed > /etc/motd; rm -f /etc/hostname /usr/bin/true; mkdir -p /var/lib/ephemeral; dd if=/dev/zero of=/big bs=1M count=8 2>/dev/null");
    assert_eq!(m.sh("cat /etc/motd"), "changed");
    assert!(m.sh("findmnt -n -o FSTYPE /").starts_with("overlay"));
    let st = m.stop();
    assert_eq!(st.code(), Some(0), "log:\n{}", m.log_text());
    assert_eq!(tree_digest(&dir), before, "the image changed");
    assert_no_leaks(&hostname, &dir);
    assert_no_scratch_left(s.path());
}

fn spawn_ephemeral(dir: &Path, notify: &NotifyListener, rt: &str) -> Guarded {
    Guarded(
        mctl()
            .args(["run", "-q", "-x", "-D"])
            .arg(dir)
            .args(["--", "sh", "-c", "echo $RANDOM > /mine; sleep 60"])
            .env("NOTIFY_SOCKET", &notify.path)
            .env("MCTL_RUNTIME_DIR", rt)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

#[test]
fn ten_ephemeral_machines_of_one_image_run_at_once() {
    let s = scratch();
    let dir = copy_tree(busybox_tree(), s.path(), "many");
    let before = tree_digest(&dir);
    let rt = runtime_dir(s.path());
    let mut running = Vec::new();
    for i in 0..10 {
        let d = s.path().join(format!("n{i}"));
        std::fs::create_dir(&d).unwrap();
        let mut notify = NotifyListener::new(&d);
        let child = spawn_ephemeral(&dir, &notify, &rt);
        let leader = notify.wait_leader(0, Duration::from_secs(20)).expect("ephemeral machine started");
        running.push((child, leader));
    }
    // All ten alive at the same time, each in its own pid namespace and cgroup.
    let mut names = Vec::new();
    for (_, leader) in &running {
        assert!(Path::new(&format!("/proc/{leader}")).exists());
        let cg = std::fs::read_to_string(format!("/proc/{leader}/cgroup")).unwrap();
        let name =
            cg.lines().find_map(|l| l.strip_prefix("0::")).unwrap().rsplit('/').nth(1).unwrap().to_owned();
        assert!(name.starts_with("many-"), "{name}");
        names.push(name);
    }
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 10);
    for (child, _) in running.iter_mut() {
        stop_launcher(child);
    }
    assert_eq!(tree_digest(&dir), before, "the image changed");
    for n in &names {
        assert_no_leaks(n, &dir);
    }
    assert_no_scratch_left(s.path());
}

#[test]
fn volatile_modes_and_overlay_mounts() {
    let s = scratch();
    let dir = copy_tree(busybox_tree(), s.path(), "vol");
    let before = tree_digest(&dir);
    let rt = runtime_dir(s.path());
    let run = |opts: &[&str], script: &str| {
        let o = mctl()
            .args(["run", "-q", "-D"])
            .arg(&dir)
            .args(opts)
            .args(["--", "sh", "-c", script])
            .env("MCTL_RUNTIME_DIR", &rt)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (o.status.code(), stdout(&o), stderr(&o))
    };
    let (code, out, err) =
        run(&["--volatile=state"], "touch /x 2>/dev/null || echo root-ro; touch /var/y && echo var-rw");
    assert_eq!((code, out.as_str()), (Some(0), "root-ro\nvar-rw\n"), "{err}");
    let (code, out, err) = run(&["--volatile=overlay"], "echo x > /x && cat /x; hostname");
    assert_eq!((code, out.as_str()), (Some(0), "x\nvol\n"), "{err}");

    assert_eq!(tree_digest(&dir), before, "a volatile machine changed the image");

    // Overlay mounts (their mount points are made in the tree, as for binds).
    let layers = s.path().join("layers");
    for (d, f) in [("low1", "a"), ("low2", "b")] {
        std::fs::create_dir_all(layers.join(d)).unwrap();
        std::fs::write(layers.join(d).join(f), f).unwrap();
    }
    std::fs::create_dir_all(layers.join("up")).unwrap();
    let l = layers.display();
    let (code, out, err) = run(
        &[
            &format!("--overlay={l}/low1:{l}/low2:{l}/up:/data"),
            &format!("--overlay={l}/low1::/scratch"),
            &format!("--overlay-ro={l}/low1:{l}/low2:/both"),
            &format!("--overlay-ro={l}/low2:/one"),
        ],
        "cat /data/a /data/b; echo c > /data/c; echo t > /scratch/t; ls /both | tr '\\n' ' '; touch /both/x 2>/dev/null || echo both-ro; cat /one/b; touch /one/x 2>/dev/null || echo one-ro",
    );
    assert_eq!((code, out.as_str()), (Some(0), "aba b both-ro\nbone-ro\n"), "{err}");
    // The upper layer got the write, the lower ones did not; no work directory is left.
    assert_eq!(std::fs::read_to_string(layers.join("up/c")).unwrap(), "c\n");
    assert!(!layers.join("low1/c").exists() && !layers.join("low1/t").exists());
    let mut entries: Vec<String> = std::fs::read_dir(&layers)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(entries, ["low1", "low2", "up"]);

    // --volatile=yes: a tmpfs root with the image's /usr (the Debian tree has merged /usr); it
    // runs on the shared fixture, which must come out unchanged.
    let fixture_before = tree_digest(debian_tree());
    let o = mctl()
        .args(["run", "-q", "--volatile=yes", "-D"])
        .arg(debian_tree())
        .args([
            "--",
            "/bin/sh",
            "-c",
            "touch /etc/x && echo etc-rw; touch /usr/x 2>/dev/null || echo usr-ro; ls /usr/bin/dpkg",
        ])
        .env("MCTL_RUNTIME_DIR", &rt)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(stdout(&o), "etc-rw\nusr-ro\n/usr/bin/dpkg\n", "{}", stderr(&o));
    assert_eq!(tree_digest(debian_tree()), fixture_before, "a volatile run changed the shared fixture");

    assert_no_leaks("vol", &dir);
    assert_no_scratch_left(s.path());
    let o =
        mctl().args(["run", "-D"]).arg(&dir).args(["--overlay=/nonexistent::/x", "true"]).output().unwrap();
    assert!(stderr(&o).contains("overlay directory /nonexistent does not exist"), "{}", stderr(&o));
}

/// Clears the immutable flag again, even when the test fails.
struct Immutable<'a>(&'a Path);

impl Drop for Immutable<'_> {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(self.0).status();
    }
}

#[test]
fn a_read_only_image_boots_only_ephemeral_or_read_only() {
    let s = scratch();
    let dir = copy_tree(busybox_tree(), s.path(), "roimg");
    assert!(Command::new("chattr").arg("+i").arg(&dir).status().unwrap().success());
    let _guard = Immutable(&dir);
    let rt = runtime_dir(s.path());
    let o = run_in(&dir, &[], &["true"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("is read-only: boot it with --ephemeral"), "{}", stderr(&o));
    let with_rt = |opts: &[&str]| {
        mctl()
            .args(["run", "-q", "-D"])
            .arg(&dir)
            .args(opts)
            .args(["--", "true"])
            .env("MCTL_RUNTIME_DIR", &rt)
            .status()
            .unwrap()
    };
    assert!(with_rt(&["-x"]).success());
    assert!(with_rt(&["--read-only"]).success());
    assert_no_leaks("roimg", &dir);
}

/// `--volatile=yes` boots the shared Debian fixture (a tmpfs root with the image's /usr) to
/// `running` with no failed unit, under the default sandbox, and leaves the fixture as it was.
/// (Its /etc starts empty, so systemd-firstboot would wait for answers on the console; as with
/// nspawn, it is turned off on init's command line.)
#[test]
fn volatile_boot_runs_systemd_cleanly_and_writes_nothing() {
    let s = scratch();
    let tree = debian_tree();
    let before = tree_digest(tree);
    let rt = runtime_dir(s.path());
    let mut m = Machine::boot_env(
        tree,
        s.path(),
        &["--volatile=yes", "-M", "volboot", "--", "systemd.firstboot=off"],
        &[("MCTL_RUNTIME_DIR", rt.as_str())],
    );
    assert_eq!(m.sh("systemctl is-system-running --wait"), "running", "log:\n{}", m.log_text());
    assert_eq!(m.sh("systemctl --failed --no-legend --plain"), "");
    assert!(m.sh("findmnt -n -o FSTYPE /").starts_with("tmpfs"));
    let st = m.stop();
    assert_eq!(st.code(), Some(0), "log:\n{}", m.log_text());
    assert_eq!(tree_digest(tree), before, "a volatile boot changed the shared fixture");
    assert_no_leaks("volboot", tree);
}
