//! `-i/--image`: raw disk images built here (sfdisk for the table, `mkfs.ext4 -E offset= -d TREE`
//! for each file system, no loop device needed to build them), booted and run for real, and bad
//! images refused. Every test checks that no loop device backed by its files, no mount and no
//! cgroup is left, and a guard detaches leftovers should a test fail first.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const ROOT: &str = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709";
const SRV: &str = "3b8f8425-20e0-4f3b-907f-1a25a76f98e8";
const HOME: &str = "933ac7e1-2eb4-4f13-b844-0e14e2aef915";
const ESP: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
const LINUX_GENERIC: &str = "0fc63daf-8483-4772-8e79-3d69d8477de4";

/// One partition: its type (a GPT UUID, or an MBR type byte in hex with `*` for bootable), size
/// in MiB, and the tree its ext4 file system is made from (`None`: left empty).
struct Part<'a> {
    kind: &'a str,
    mib: u64,
    tree: Option<&'a Path>,
}

/// Writes a disk image of `mib` MiB with a `label` (gpt or dos) table holding `parts`, each
/// starting on a MiB boundary after the first MiB.
fn build_image(path: &Path, label: &str, mib: u64, parts: &[Part<'_>]) {
    let st = Command::new("truncate").arg("-s").arg(format!("{mib}M")).arg(path).status().unwrap();
    assert!(st.success());
    let mut script = format!("label: {label}\n");
    let mut start = 2048u64;
    for p in parts {
        let (kind, boot) = match p.kind.strip_suffix('*') {
            Some(k) => (k, ", bootable"),
            None => (p.kind, ""),
        };
        script.push_str(&format!("start={start}, size={}, type={kind}{boot}\n", p.mib * 2048));
        start += p.mib * 2048;
    }
    let mut sfdisk = Command::new("sfdisk")
        .args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("sfdisk (package fdisk)");
    std::io::Write::write_all(sfdisk.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
    assert!(sfdisk.wait().unwrap().success(), "sfdisk failed for {script}");
    let mut start = 2048u64;
    for p in parts {
        if let Some(tree) = p.tree {
            mkfs(path, start * 512, p.mib, tree);
        }
        start += p.mib * 2048;
    }
}

/// An ext4 file system of `mib` MiB made from `tree`, at byte `offset` of `image`.
fn mkfs(image: &Path, offset: u64, mib: u64, tree: &Path) {
    let o = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E"])
        .arg(format!("offset={offset}"))
        .arg("-d")
        .arg(tree)
        .arg(image)
        .arg(format!("{}k", mib * 1024))
        .output()
        .unwrap();
    assert!(o.status.success(), "mkfs.ext4: {}", stderr(&o));
}

/// The loop devices whose backing file lies under `dir` (`losetup -a` names it, with
/// "(deleted)" for -x's unnamed copies, which live beside the image).
fn loops_under(dir: &Path) -> Vec<String> {
    let o = Command::new("losetup").arg("-a").output().expect("losetup");
    let d = dir.to_string_lossy();
    stdout(&o).lines().filter(|l| l.contains(d.as_ref())).map(str::to_owned).collect()
}

/// Waits (the kernel detaches an auto-clearing device right after its last user) until no loop
/// device of `dir` is left; fails otherwise.
fn assert_no_loops(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !loops_under(dir).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = loops_under(dir);
    assert!(left.is_empty(), "loop devices left behind: {left:?}");
}

/// A scratch directory that, when dropped (also when a test fails), detaches any loop device
/// still backed by one of its files before the directory goes.
struct ImageScratch(tempfile::TempDir);

impl ImageScratch {
    fn new() -> ImageScratch {
        ImageScratch(scratch())
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for ImageScratch {
    fn drop(&mut self) {
        for line in loops_under(self.0.path()) {
            if let Some(dev) = line.split(':').next() {
                let _ = Command::new("losetup").arg("-d").arg(dev).status();
            }
        }
    }
}

/// A copy of the busybox fixture with a marker file, for building images from.
fn busybox_copy(s: &Path, name: &str) -> PathBuf {
    let tree = copy_tree(busybox_tree(), s, name);
    std::fs::write(tree.join("etc/marker"), "from-the-image\n").unwrap();
    tree
}

/// `mctl run -q -i IMAGE OPTS -- CMD...`.
fn run_image(image: &Path, opts: &[&str], cmd: &[&str]) -> std::process::Output {
    run_from("-i", image, opts, cmd)
}

fn ok(o: std::process::Output) -> String {
    assert!(o.status.success(), "mctl failed: {}{}", stdout(&o), stderr(&o));
    stdout(&o)
}

/// A GPT busybox image with a root and a /srv partition: the root is the ext4 on a loop device,
/// /srv the second partition; writes reach the image, except with --read-only (every partition
/// read-only, and ext4 told not to replay its journal) or -x (a copy that vanishes). The machine
/// is named after the file.
#[test]
fn a_gpt_image_runs_with_its_root_and_srv_partitions() {
    let s = ImageScratch::new();
    let tree = busybox_copy(s.path(), "tree");
    std::fs::create_dir_all(tree.join("srv")).unwrap();
    let srv = s.path().join("srvtree");
    std::fs::create_dir(&srv).unwrap();
    std::fs::write(srv.join("served"), "srv-partition\n").unwrap();
    let image = s.path().join("disk.raw");
    build_image(
        &image,
        "gpt",
        40,
        &[Part { kind: ROOT, mib: 24, tree: Some(&tree) }, Part { kind: SRV, mib: 8, tree: Some(&srv) }],
    );

    let o = mctl()
        .args(["run", "-i"])
        .arg(&image)
        .args(["--", "/bin/sh", "-c"])
        .arg("cat /etc/os-release /etc/marker; grep -E ' / | /srv ' /proc/self/mountinfo; ls /srv; hostname; echo kept > /written")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = ok(o.clone());
    assert!(out.contains("ID=busybox") && out.contains("from-the-image"), "{out}");
    let root = out.lines().find(|l| l.contains(" / ")).expect("a root mount");
    assert!(root.contains(" - ext4 /dev/loop") && root.contains(" rw"), "{root}");
    let srv_line = out.lines().find(|l| l.contains(" /srv ")).expect("the /srv partition mounted");
    assert!(srv_line.contains(" - ext4 /dev/loop"), "{srv_line}");
    assert!(out.lines().any(|l| l == "served"), "{out}");
    assert!(out.lines().any(|l| l == "disk"), "hostname after the file name: {out}");
    assert!(
        stderr(&o).contains(&format!("Spawning container disk on {}.", image.display())),
        "{}",
        stderr(&o)
    );
    assert_eq!(ok(run_image(&image, &[], &["/bin/cat", "/written"])).trim(), "kept");

    let o = run_image(
        &image,
        &["--read-only"],
        &["/bin/sh", "-c", "grep -E ' /srv ' /proc/self/mountinfo; echo x > /ro"],
    );
    assert!(!o.status.success() && stderr(&o).contains("Read-only file system"), "{}", stderr(&o));
    assert!(stdout(&o).contains(" ro,") && stdout(&o).contains("norecovery"), "{}", stdout(&o));

    let out = ok(run_image(
        &image,
        &["-x"],
        &["/bin/sh", "-c", "echo gone > /ephemeral; cat /ephemeral; hostname"],
    ));
    assert!(out.starts_with("gone\ndisk-"), "{out}");
    let o = run_image(&image, &[], &["/bin/cat", "/ephemeral"]);
    assert!(!o.status.success(), "-x wrote to the image: {}", stdout(&o));

    assert_no_loops(s.path());
    assert_no_leaks("disk", s.path());
}

/// What systemd-nspawn(1) of 252 says `-i` takes besides a GPT with the specification's types:
/// a single file system without a table, an MBR whose one bootable 0x83 partition is the root
/// (a non-bootable one is not), a GPT whose only partition is a generic Linux one; and the
/// ESP goes to /efi, or to an empty /boot when there is no /efi (noexec, nosuid there).
///
/// nspawn itself cannot be the reference here: 252 refuses `-i` unless udevd runs ("Sorry, but
/// --image= requires access to the host's /run/ hierarchy, since we need access to udev": it
/// connects to /run/udev/control, and this host runs no udev), and this kernel has no GPT
/// partition parser (CONFIG_EFI_PARTITION) for nspawn's partition-scanning loop devices anyway.
/// [`nspawn_runs_the_same_image_where_it_can`] compares where nspawn can run.
#[test]
fn naked_mbr_generic_and_esp_images_follow_the_manual() {
    let s = ImageScratch::new();
    let tree = busybox_copy(s.path(), "tree");

    let naked = s.path().join("naked.raw");
    std::fs::File::create(&naked).unwrap().set_len(24 << 20).unwrap();
    mkfs(&naked, 0, 24, &tree);
    let out =
        ok(run_image(&naked, &[], &["/bin/sh", "-c", "cat /etc/marker; grep ' / ' /proc/self/mountinfo"]));
    assert!(out.contains("from-the-image") && out.contains(" - ext4 /dev/loop"), "{out}");

    let mbr = s.path().join("mbr.raw");
    build_image(
        &mbr,
        "dos",
        40,
        &[Part { kind: "82", mib: 4, tree: None }, Part { kind: "83*", mib: 24, tree: Some(&tree) }],
    );
    assert_eq!(ok(run_image(&mbr, &[], &["/bin/cat", "/etc/marker"])).trim(), "from-the-image");
    let unbootable = s.path().join("unbootable.raw");
    build_image(&unbootable, "dos", 40, &[Part { kind: "83", mib: 24, tree: Some(&tree) }]);
    output_fails(
        mctl(),
        &["run", "-q", "-i", unbootable.to_str().unwrap(), "--", "/bin/true"],
        "needs one bootable partition of type 0x83",
    );

    let generic = s.path().join("generic.raw");
    build_image(&generic, "gpt", 40, &[Part { kind: LINUX_GENERIC, mib: 24, tree: Some(&tree) }]);
    assert_eq!(ok(run_image(&generic, &[], &["/bin/cat", "/etc/marker"])).trim(), "from-the-image");

    // The ESP as ext4 (this kernel has no vfat; the placement rule does not depend on it).
    let esp_tree = s.path().join("esptree");
    std::fs::create_dir(&esp_tree).unwrap();
    std::fs::write(esp_tree.join("loader.conf"), "timeout 3\n").unwrap();
    let boot_tree = busybox_copy(s.path(), "boottree");
    std::fs::create_dir_all(boot_tree.join("boot")).unwrap();
    let esp = s.path().join("esp.raw");
    build_image(
        &esp,
        "gpt",
        40,
        &[
            Part { kind: ROOT, mib: 24, tree: Some(&boot_tree) },
            Part { kind: ESP, mib: 8, tree: Some(&esp_tree) },
        ],
    );
    let script = "cat /boot/loader.conf; grep ' /boot ' /proc/self/mountinfo; test -e /efi || echo no-efi";
    let out = ok(run_image(&esp, &[], &["/bin/sh", "-c", script]));
    assert!(out.contains("timeout 3") && out.contains("no-efi"), "ESP at the empty /boot: {out}");
    let line = out.lines().find(|l| l.contains(" /boot ")).unwrap();
    assert!(line.contains("nosuid") && line.contains("nodev") && line.contains("noexec"), "{line}");
    // With /efi in the tree it goes there.
    ok(run_image(&esp, &[], &["/bin/mkdir", "/efi"]));
    let out = ok(run_image(&esp, &[], &["/bin/sh", "-c", "cat /efi/loader.conf; ls -A /boot | wc -l"]));
    assert_eq!(out, "timeout 3\n0\n");

    assert_no_loops(s.path());
    for name in ["naked", "mbr", "generic", "esp"] {
        assert_no_leaks(name, s.path());
    }
}

/// Where systemd-nspawn can run `-i` (a host with udevd), it and mctl see the same root file
/// system, the same /srv partition and the same files; elsewhere nspawn's refusal must be the
/// documented one (see [`naked_mbr_generic_and_esp_images_follow_the_manual`]), and mctl's side
/// is still checked.
#[test]
fn nspawn_runs_the_same_image_where_it_can() {
    let s = ImageScratch::new();
    let tree = busybox_copy(s.path(), "tree");
    std::fs::create_dir_all(tree.join("srv")).unwrap();
    let image = s.path().join("diff.raw");
    build_image(
        &image,
        "gpt",
        40,
        &[Part { kind: ROOT, mib: 24, tree: Some(&tree) }, Part { kind: SRV, mib: 8, tree: Some(&tree) }],
    );
    let script = "cat /etc/marker; cut -d' ' -f5,9 /proc/self/mountinfo | grep -E '^/(srv)? ' | sort; ls /srv/etc/marker";
    let mine = ok(run_image(&image, &["--read-only"], &["/bin/sh", "-c", script]));
    assert_eq!(mine, "from-the-image\n/ ext4\n/srv ext4\n/srv/etc/marker\n");
    let o = Command::new("systemd-nspawn")
        .args(["--register=no", "--keep-unit", "-q", "--read-only", "-i"])
        .arg(&image)
        .args(["/bin/sh", "-c", script])
        .stdin(Stdio::null())
        .output()
        .expect("systemd-nspawn");
    if stderr(&o).contains("requires access to the host's /run/ hierarchy, since we need access to udev") {
        assert!(
            !Path::new("/run/udev/control").exists(),
            "nspawn refused with udevd running: {}",
            stderr(&o)
        );
        eprintln!("nspawn cannot run -i on this host (no udevd); compared against the manual instead");
    } else {
        assert!(o.status.success(), "nspawn -i: {}", stderr(&o));
        assert_eq!(stdout(&o), mine);
    }
    assert_no_loops(s.path());
    assert_no_leaks("diff", s.path());
}

/// A bookworm image boots to systemd's "running" state and powers off cleanly on SIGTERM,
/// leaving no loop device, mount or cgroup.
#[test]
fn a_bookworm_image_boots_and_shuts_down_cleanly() {
    let s = ImageScratch::new();
    let image = s.path().join("bookworm.raw");
    // (mkfs.ext4 -d of the fixture takes about a second: no cache needed.)
    build_image(&image, "gpt", 1024, &[Part { kind: ROOT, mib: 1000, tree: Some(debian_tree()) }]);
    let notify = NotifyListener::new(s.path());
    let log = s.path().join("console.log");
    let child = mctl()
        .args(["boot", "--console=read-only", "-i"])
        .arg(&image)
        .env("NOTIFY_SOCKET", &notify.path)
        .stdin(Stdio::null())
        .stdout(std::fs::File::options().create(true).append(true).open(&log).unwrap())
        .stderr(std::fs::File::options().append(true).open(&log).unwrap())
        .spawn()
        .unwrap();
    let mut m =
        Machine { child: Some(child), leader: 0, notify, name: "bookworm".into(), dir: s.path().into(), log };
    m.leader =
        m.notify.wait_leader(0, BOOT_TIMEOUT).unwrap_or_else(|| panic!("no leader; log:\n{}", m.log_text()));
    assert!(m.notify.wait_for("READY=1", BOOT_TIMEOUT).is_some(), "not ready; log:\n{}", m.log_text());
    assert_eq!(m.sh("systemctl is-system-running --wait"), "running", "log:\n{}", m.log_text());
    assert_eq!(m.sh("findmnt -n -o FSTYPE /"), "ext4");
    assert_eq!(m.sh("hostname"), "bookworm");
    let st = m.stop();
    assert_eq!(st.code(), Some(0), "log:\n{}", m.log_text());
    assert!(m.log_text().contains("Container bookworm has been shut down."), "{}", m.log_text());
    assert_no_loops(s.path());
    assert_no_leaks("bookworm", s.path());
}

/// SIGKILL to the launcher: the machine dies with it, its mounts lived only in its namespaces,
/// and the loop devices detach themselves; the next launch sweeps the cgroup.
#[test]
fn a_killed_launcher_leaves_no_loop_device_behind() {
    let s = ImageScratch::new();
    let tree = busybox_copy(s.path(), "tree");
    let image = s.path().join("killed.raw");
    build_image(&image, "gpt", 40, &[Part { kind: ROOT, mib: 24, tree: Some(&tree) }]);
    let mut child = Guarded(
        mctl()
            .args(["run", "-q", "-i"])
            .arg(&image)
            .args(["--", "/bin/sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(wait_until(Duration::from_secs(20), || !machine_processes("killed").is_empty()), "never started");
    assert_eq!(loops_under(s.path()).len(), 1, "one loop device while it runs");
    let procs = machine_processes("killed");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_processes_gone(&procs);
    assert_no_loops(s.path());
    // The next launcher removes what the killed one could not (its cgroup).
    ok(run_image(&image, &[], &["/bin/true"]));
    assert_no_loops(s.path());
    assert_no_leaks("killed", s.path());
}

/// Bad input: each refused with a message saying what is wrong, a non-zero exit, and nothing
/// left (no loop device, mount or cgroup).
#[test]
fn bad_images_and_option_combinations_are_refused_clearly() {
    let s = ImageScratch::new();
    let tree = busybox_copy(s.path(), "tree");
    let fails = |args: &[&str], needle: &str| {
        let mut full = vec!["run", "-q"];
        full.extend_from_slice(args);
        full.extend_from_slice(&["--", "/bin/true"]);
        output_fails(mctl(), &full, needle);
    };
    let good = s.path().join("good.raw");
    build_image(&good, "gpt", 40, &[Part { kind: ROOT, mib: 24, tree: Some(&tree) }]);
    let good = good.to_str().unwrap();
    let dir = tree.to_str().unwrap();

    fails(&["-i", good, "-D", dir], "-D/--directory= and -i/--image= cannot be combined");
    fails(&["-i", good, "--template", dir], "--template= may not be combined with -i/--image=");
    fails(&["-i", "/nonexistent/disk.raw"], "disk image /nonexistent/disk.raw cannot be used: No such file");
    fails(&["-i", dir], "is not a regular file or block device: -i takes a disk image");

    let zeros = s.path().join("zeros.raw");
    std::fs::File::create(&zeros).unwrap().set_len(8 << 20).unwrap();
    fails(&["-i", zeros.to_str().unwrap()], "no partition table and no file system found");

    let noroot = s.path().join("noroot.raw");
    build_image(
        &noroot,
        "gpt",
        40,
        &[Part { kind: SRV, mib: 8, tree: Some(&tree) }, Part { kind: HOME, mib: 8, tree: Some(&tree) }],
    );
    fails(
        &["-i", noroot.to_str().unwrap()],
        "no root partition in the GPT partition table (partitions: 1 (srv), 2 (home))",
    );

    // Both headers damaged (the primary alone would be recovered from the backup, as blkid does).
    let corrupt = s.path().join("corrupt.raw");
    std::fs::copy(good, &corrupt).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&corrupt).unwrap();
    let size = f.metadata().unwrap().len();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0xFF; 4], 512 + 40).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0xFF; 4], size - 512 + 40).unwrap();
    fails(
        &["-i", corrupt.to_str().unwrap()],
        "corrupt GPT partition table: the GPT header at LBA 1 fails its CRC32 check",
    );

    let empty_root = s.path().join("emptyroot.raw");
    build_image(&empty_root, "gpt", 40, &[Part { kind: ROOT, mib: 24, tree: None }]);
    fails(&["-i", empty_root.to_str().unwrap()], "partition 1 (root) holds no file system known here");

    // Half-way: the root is mounted and a loop device attached when /srv's damaged file system
    // (an ext4 magic and nothing else) fails to mount; both must go.
    let damaged = s.path().join("damaged.raw");
    build_image(
        &damaged,
        "gpt",
        40,
        &[Part { kind: ROOT, mib: 24, tree: Some(&tree) }, Part { kind: SRV, mib: 8, tree: None }],
    );
    let f = std::fs::OpenOptions::new().write(true).open(&damaged).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &0xEF53u16.to_le_bytes(), (2048 + 24 * 2048) * 512 + 1080)
        .unwrap();
    fails(&["-i", damaged.to_str().unwrap()], "partition 2 (srv) cannot be mounted as ext4 from /dev/loop");

    let hash = "a".repeat(64);
    fails(&["-i", good, &format!("--root-hash={hash}")], "need dm-verity, which cannot be used here");
    fails(&["-i", good, "--root-hash=xyz"], "Failed to parse root hash");
    fails(&["-i", good, "--root-hash=abcd"], "Root hash must be at least 128bit long");
    fails(&[&format!("--root-hash={hash}"), "-D", dir], "apply to a disk image: give one with -i");

    // Locked by a running machine: a second writer is refused.
    let mut first = Guarded(
        mctl()
            .args(["run", "-q", "-i", good, "--", "/bin/sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(wait_until(Duration::from_secs(20), || !machine_processes("good").is_empty()), "never started");
    fails(&["-M", "other", "-i", good], "cannot lock: it is in use by another machine");
    first.kill().unwrap();
    first.wait().unwrap();
    // The lock lasts as long as the loop devices hold the image: until the machine is gone.
    assert_no_loops(s.path());
    ok(run_image(Path::new(good), &[], &["/bin/true"]));

    assert_no_loops(s.path());
    for name in ["good", "other", "zeros", "noroot", "corrupt", "emptyroot", "damaged"] {
        assert_no_leaks(name, s.path());
    }
}
