//! systemd's own machinectl opening shells and logins in machines and moving files in and out
//! of them through mctld (OpenMachineShell/Login/PTY, CopyTo/FromMachine, BindMountMachine):
//! on a booted bookworm and on a busybox machine with no D-Bus inside. Paths in a machine are
//! the guest's: its symlinks must never lead a copy or a bind out to the host.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    Machine, Mctld, TestBus, assert_no_leaks, busctl, busybox_tree, copy_tree, debian_tree, expect_output,
    machinectl, pty_reader, scratch, spawn_on_pty, stderr, stdout,
};

/// `machinectl ARGS` on a pty of its own (as `machinectl` in a terminal), in the private
/// mount namespace [`machinectl`] uses.
fn machinectl_on_pty(bus: &TestBus, args: &[&str]) -> (std::process::Child, std::os::fd::OwnedFd) {
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/system && exec machinectl --no-pager \"$@\"")
        .arg("sh")
        .args(args)
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .env("TERM", "vt100");
    spawn_on_pty(cmd, 24, 80)
}

/// Logs in as root (no password) through a login client on a pty, runs a command, logs out
/// and types the escape; returns the client's exit status (`None`: it did not end).
fn log_in(
    (mut child, master): (std::process::Child, std::os::fd::OwnedFd),
    tag: &str,
) -> Option<std::process::ExitStatus> {
    let rx = pty_reader(&master);
    let mut seen = String::new();
    let mut tty = std::fs::File::from(master);
    expect_output(&rx, &mut seen, "login: ", Duration::from_secs(30));
    tty.write_all(b"root\n").unwrap();
    expect_output(&rx, &mut seen, "# ", Duration::from_secs(30));
    tty.write_all(format!("echo {tag}-$((6*7))\n").as_bytes()).unwrap();
    expect_output(&rx, &mut seen, &format!("{tag}-42"), Duration::from_secs(10));
    tty.write_all(b"exit\n").unwrap();
    expect_output(&rx, &mut seen, "logout", Duration::from_secs(10));
    tty.write_all(b"\x1d\x1d\x1d").unwrap();
    let st = common::wait_exit(&mut child, Duration::from_secs(10));
    if st.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        eprintln!("{tag} login output:\n{seen}");
    }
    st
}

/// A launcher the test started; stopped when dropped, also when the test fails.
struct Launcher(std::process::Child);

impl Launcher {
    /// `mctl run -q --register=yes -M NAME -D DIR OPTS -- /bin/sleep 600` on `bus` (with `env`
    /// added to its environment), logging to
    /// `log`; waits until the machine is registered.
    fn start(
        bus: &TestBus,
        name: &str,
        dir: &Path,
        opts: &[&str],
        env: &[(&str, &Path)],
        log: &Path,
    ) -> Launcher {
        let child = common::mctl()
            .envs(env.iter().copied())
            .args(["run", "-q", "--register=yes", "-M", name, "-D"])
            .arg(dir)
            .args(opts)
            .args(["--", "/bin/sleep", "600"])
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(log).unwrap()))
            .spawn()
            .unwrap();
        let launcher = Launcher(child);
        assert!(
            common::wait_until(Duration::from_secs(20), || stdout(&machinectl(bus, &["list"]))
                .contains(name)),
            "the machine did not register: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        launcher
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        common::stop_launcher(&mut self.0);
    }
}

fn ok(o: &std::process::Output, what: &str) {
    assert!(o.status.success(), "{what} failed: {}{}", stdout(o), stderr(o));
}

/// Checks copy-to, copy-from and bind on a running machine whose root is `root`, with a guest
/// symlink `/root/evil -> /etc` (absolute: on the host it would mean the host's /etc).
fn files_in_and_out(bus: &TestBus, name: &str, root: &Path, s: &Path) {
    let host_src = s.join("from-host.txt");
    std::fs::write(&host_src, "hello machine\n").unwrap();
    std::os::unix::fs::symlink("/etc", root.join("root/evil")).unwrap();
    let host_src = host_src.display().to_string();

    // copy-to: lands in the guest, with the source's mode.
    std::fs::set_permissions(&host_src, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    ok(&machinectl(bus, &["copy-to", name, &host_src, "/root/copied.txt"]), "copy-to");
    assert_eq!(std::fs::read_to_string(root.join("root/copied.txt")).unwrap(), "hello machine\n");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(root.join("root/copied.txt")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o7777, 0o640);
    // An existing destination is refused without --force, and nothing is left half-written.
    let o = machinectl(bus, &["copy-to", name, &host_src, "/root/copied.txt"]);
    assert!(!o.status.success() && stderr(&o).contains("exists"), "{}", stderr(&o));
    ok(&machinectl(bus, &["copy-to", "--force", name, &host_src, "/root/copied.txt"]), "copy-to --force");
    // A whole directory.
    let tree = s.join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("sub/leaf"), "leaf").unwrap();
    ok(&machinectl(bus, &["copy-to", name, &tree.display().to_string(), "/root/tree"]), "copy-to a tree");
    assert_eq!(std::fs::read_to_string(root.join("root/tree/sub/leaf")).unwrap(), "leaf");

    // Through the guest's symlink: the guest's /etc, never the host's.
    ok(&machinectl(bus, &["copy-to", name, &host_src, "/root/evil/mctl-pwned"]), "copy-to via symlink");
    assert!(root.join("etc/mctl-pwned").exists());
    assert!(!Path::new("/etc/mctl-pwned").exists(), "a guest symlink redirected a copy to the host");

    // copy-from: the guest's files, its relative and absolute symlinks followed inside it.
    std::fs::write(root.join("etc/mctl-guest-only"), "guest\n").unwrap();
    std::os::unix::fs::symlink("../etc/mctl-guest-only", root.join("root/rel-link")).unwrap();
    let out = s.join("rel-link.copy");
    ok(&machinectl(bus, &["copy-from", name, "/root/rel-link", &out.display().to_string()]), "copy-from");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "guest\n");
    let out = s.join("via-evil");
    ok(
        &machinectl(bus, &["copy-from", name, "/root/evil/mctl-guest-only", &out.display().to_string()]),
        "copy-from via symlink",
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "guest\n");
    let o = machinectl(
        bus,
        &["copy-from", name, "/root/evil/shadow-of-nothing", &s.join("none").display().to_string()],
    );
    assert!(!o.status.success(), "copying a missing file succeeded");
    assert!(!s.join("none").exists());
    let leftovers: Vec<_> = std::fs::read_dir(root.join("root"))
        .unwrap()
        .chain(std::fs::read_dir(s).unwrap())
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".#mctl-copy"))
        .collect();
    assert!(leftovers.is_empty(), "temporaries left: {leftovers:?}");

    // bind: a host directory, read-only, at a new mount point.
    let share = s.join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("f"), "shared\n").unwrap();
    let share = share.display().to_string();
    ok(&machinectl(bus, &["bind", "--read-only", "--mkdir", name, &share, "/mnt/share"]), "bind");
    let o = machinectl(
        bus,
        &["shell", name, "/bin/sh", "-c", "cat /mnt/share/f; touch /mnt/share/g && echo WROTE"],
    );
    let text = stdout(&o);
    assert!(text.contains("shared") && !text.contains("WROTE"), "{text}{}", stderr(&o));
    assert!(!Path::new(&share).join("g").exists());
    // Through the guest's symlink: mounted on the guest's /etc/mctl-bound, the host's /etc untouched.
    ok(&machinectl(bus, &["bind", "--mkdir", name, &share, "/root/evil/mctl-bound"]), "bind via symlink");
    assert!(root.join("etc/mctl-bound").is_dir());
    assert!(!Path::new("/etc/mctl-bound").exists(), "a guest symlink redirected a bind to the host");
    let o = machinectl(bus, &["shell", name, "/bin/cat", "/etc/mctl-bound/f"]);
    assert!(stdout(&o).contains("shared"), "{}{}", stdout(&o), stderr(&o));
}

#[test]
fn machinectl_shell_login_copy_and_bind_on_a_booted_guest() {
    let s = scratch();
    // The unprivileged caller below must reach the bus socket in it.
    std::fs::set_permissions(s.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let bus = TestBus::start(s.path());
    let _mctld = Mctld::start(&bus, s.path(), true);
    let dir = copy_tree(debian_tree(), s.path(), "msess");
    // root logs in without a password (Debian's pam_unix takes an empty one: nullok).
    let shadow = std::fs::read_to_string(dir.join("etc/shadow")).unwrap();
    let shadow: String = shadow
        .lines()
        .map(|l| match l.strip_prefix("root:") {
            Some(rest) => format!("root::{}\n", rest.split_once(':').map_or("", |(_, r)| r)),
            None => format!("{l}\n"),
        })
        .collect();
    std::fs::write(dir.join("etc/shadow"), shadow).unwrap();
    let boot_dir = s.path().join("boot");
    std::fs::create_dir(&boot_dir).unwrap();
    let mut m = Machine::boot_on(Some(&bus.address), &dir, &boot_dir, &[]);

    // shell: a command as machinectl runs it, its output through the pty.
    let o = machinectl(&bus, &["shell", "msess", "/bin/echo", "x-from-shell"]);
    assert!(stdout(&o).contains("x-from-shell"), "{}{}", stdout(&o), stderr(&o));
    let o = machinectl(
        &bus,
        &["shell", "msess", "/bin/sh", "-c", "tty; id -u; cat /proc/1/comm; cat /proc/self/cgroup"],
    );
    let text = stdout(&o);
    assert!(
        // A unit of the guest's own systemd, as machined makes it.
        text.contains("/dev/pts/")
            && text.contains("\n0")
            && text.contains("systemd")
            && text.contains("container-shell@"),
        "{text}{}",
        stderr(&o)
    );
    // A user of the guest, by name.
    let o = machinectl(&bus, &["shell", "daemon@msess", "/usr/bin/id", "-un"]);
    assert!(stdout(&o).contains("daemon"), "{}{}", stdout(&o), stderr(&o));
    let o = machinectl(&bus, &["shell", "nosuchuser@msess", "/bin/true"]);
    assert!(!o.status.success(), "a missing user got a shell: {}", stdout(&o));

    // login: the guest's getty prompts on a fresh pty; root logs in; exit ends the session.
    // machinectl stays after a logout (it ignores the getty's hangups) until its escape.
    let st = log_in(machinectl_on_pty(&bus, &["login", "msess"]), "machinectl");
    assert!(st.is_some(), "machinectl login did not end");
    // mctl login: the same through mctl's own client.
    let mut cmd = common::mctl();
    cmd.args(["login", "msess"]).env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address).env("TERM", "vt100");
    let st = log_in(spawn_on_pty(cmd, 24, 80), "mctl");
    assert!(st.is_some_and(|s| s.success()), "mctl login did not end cleanly ({st:?})");

    files_in_and_out(&bus, "msess", &dir, s.path());

    // Bad input and unknown machines: clear errors.
    let o = machinectl(&bus, &["shell", "nosuch", "/bin/true"]);
    assert!(!o.status.success() && stderr(&o).contains("nosuch"), "{}", stderr(&o));
    let o = busctl(
        &bus,
        &[
            "call",
            "org.freedesktop.machine1",
            "/org/freedesktop/machine1",
            "org.freedesktop.machine1.Manager",
            "OpenMachineShell",
            "sssasas",
            "msess",
            "",
            "bin/sh",
            "0",
            "0",
        ],
    );
    assert!(!o.status.success() && stderr(&o).contains("not absolute"), "{}", stderr(&o));
    // An unprivileged caller gets mctld's access-denied, for a shell, a copy and a bind.
    // (dbus-send prints the error's own message; busctl shortens it to the errno's text.)
    let nobody_copy = format!("string:{}", s.path().join("nobody-copy").display());
    for call in [
        vec![
            "OpenMachineShell",
            "string:msess",
            "string:",
            "string:/bin/sh",
            "array:string:",
            "array:string:",
        ],
        vec!["CopyFromMachine", "string:msess", "string:/etc/hostname", &nobody_copy],
        vec![
            "BindMountMachine",
            "string:msess",
            "string:/tmp",
            "string:/mnt",
            "boolean:false",
            "boolean:true",
        ],
    ] {
        let o = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "dbus-send",
                "--system",
                "--print-reply",
                "--dest=org.freedesktop.machine1",
                "/org/freedesktop/machine1",
            ])
            .arg(format!("org.freedesktop.machine1.Manager.{}", call[0]))
            .args(&call[1..])
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            !o.status.success() && stderr(&o).contains("only root may open shells"),
            "{call:?}: {}{}",
            stdout(&o),
            stderr(&o)
        );
    }
    assert!(!s.path().join("nobody-copy").exists());
    m.stop();
    assert_no_leaks("msess", &dir);
}

#[test]
fn sessions_and_copies_work_without_dbus_in_the_guest() {
    let s = scratch();
    let bus = TestBus::start(s.path());
    let _mctld = Mctld::start(&bus, s.path(), true);
    let dir = copy_tree(busybox_tree(), s.path(), "mbusy");
    std::fs::create_dir_all(dir.join("root")).unwrap();
    let launcher = Launcher::start(&bus, "mbusy", &dir, &[], &[], &s.path().join("run.log"));
    let o = machinectl(&bus, &["shell", "mbusy", "/bin/echo", "x-from-busybox"]);
    assert!(stdout(&o).contains("x-from-busybox"), "{}{}", stdout(&o), stderr(&o));
    files_in_and_out(&bus, "mbusy", &dir, s.path());

    // OpenMachineRootDirectory (and OpenRootDirectory on the object): an fd of its root.
    use std::os::unix::fs::MetadataExt;
    let root_meta = std::fs::metadata(&dir).unwrap();
    let script = r#"
import os, sys
from jeepney import DBusAddress, new_method_call
from jeepney.io.blocking import open_dbus_connection
conn = open_dbus_connection(bus="SYSTEM", enable_fds=True)
for path, iface, method, sig, args in [
    ("/org/freedesktop/machine1", "org.freedesktop.machine1.Manager", "OpenMachineRootDirectory", "s", ("mbusy",)),
    ("/org/freedesktop/machine1/machine/mbusy", "org.freedesktop.machine1.Machine", "OpenRootDirectory", "", ()),
]:
    addr = DBusAddress(path, bus_name="org.freedesktop.machine1", interface=iface)
    reply = conn.send_and_get_reply(new_method_call(addr, method, sig, args))
    fd = reply.body[0].to_raw_fd()
    st = os.fstat(fd)
    print(st.st_dev, st.st_ino, sorted(os.listdir(fd))[:3] != [])
"#;
    let o = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .output()
        .unwrap();
    let want = format!("{} {} True\n", root_meta.dev(), root_meta.ino());
    assert_eq!(stdout(&o), want.repeat(2), "{}", stderr(&o));

    // mctl's verbs: host paths relative to its working directory, as machinectl takes them.
    let mctl_in = |args: &[&str]| {
        let o = common::mctl()
            .args(args)
            .current_dir(s.path())
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (o.status.code(), stdout(&o), stderr(&o))
    };
    std::fs::write(s.path().join("rel.txt"), "relative\n").unwrap();
    assert_eq!(mctl_in(&["copy-to", "mbusy", "rel.txt", "/root/rel.txt"]).0, Some(0));
    assert_eq!(std::fs::read_to_string(dir.join("root/rel.txt")).unwrap(), "relative\n");
    let (code, _, err) = mctl_in(&["copy-to", "mbusy", "rel.txt", "/root/rel.txt"]);
    assert!(code == Some(1) && err.contains("exists"), "{err}");
    assert_eq!(mctl_in(&["copy-to", "--force", "mbusy", "rel.txt", "/root/rel.txt"]).0, Some(0));
    assert_eq!(mctl_in(&["copy-from", "mbusy", "/root/rel.txt", "back.txt"]).0, Some(0));
    assert_eq!(std::fs::read_to_string(s.path().join("back.txt")).unwrap(), "relative\n");
    let (code, _, err) = mctl_in(&["copy-from", "mbusy", "/no/such/file", "never.txt"]);
    assert!(code == Some(1) && err.contains("/no/such/file"), "{err}");
    assert!(!s.path().join("never.txt").exists());
    let (code, _, err) = mctl_in(&["copy-to", "nosuch", "rel.txt", "/x"]);
    assert!(code == Some(1) && err.contains("nosuch"), "{err}");
    std::fs::create_dir(s.path().join("bindme")).unwrap();
    std::fs::write(s.path().join("bindme/inside"), "bound\n").unwrap();
    assert_eq!(mctl_in(&["bind", "--mkdir", "mbusy", "bindme", "/srv/bound"]).0, Some(0));
    let o = machinectl(&bus, &["shell", "mbusy", "/bin/cat", "/srv/bound/inside"]);
    assert!(stdout(&o).contains("bound"), "{}{}", stdout(&o), stderr(&o));
    // bash completes running machines' names where a verb takes one.
    let script = s.path().join("mctl.bash");
    std::fs::write(&script, mctl_in(&["completions", "bash"]).1).unwrap();
    let o = Command::new("bash")
        .arg("-c")
        .arg(format!(
            ". {}; COMP_WORDS=(mctl shell mb); COMP_CWORD=2; _mctl_machines; echo \"[${{COMPREPLY[*]}}]\"",
            script.display()
        ))
        .env(
            "PATH",
            format!(
                "{}:/usr/sbin:/usr/bin:/sbin:/bin",
                Path::new(env!("CARGO_BIN_EXE_mctl")).parent().unwrap().display()
            ),
        )
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .output()
        .unwrap();
    assert_eq!(stdout(&o), "[mbusy]\n", "{}", stderr(&o));
    let (code, _, err) = mctl_in(&["bind", "mbusy", "bindme", "/srv/missing"]);
    assert!(code == Some(1) && err.contains("/srv/missing"), "{err}");
    drop(launcher);
    assert_no_leaks("mbusy", &dir);
}

/// Into and out of a machine with a user namespace (an idmapped image): what is copied in
/// belongs to the machine's root inside, and its files come out with the ids they have inside.
#[test]
fn copies_in_and_out_of_a_user_namespaced_machine() {
    let s = scratch();
    let bus = TestBus::start(s.path());
    let _mctld = Mctld::start(&bus, s.path(), true);
    let dir = copy_tree(busybox_tree(), s.path(), "muser");
    std::fs::create_dir_all(dir.join("root")).unwrap();
    let state = s.path().join("state-launcher");
    let opts = ["--private-users=2949120:65536"];
    // Where a writable image's id range is remembered: the test's own place.
    let env = [("MCTL_STATE_DIR", state.as_path())];
    let launcher = Launcher::start(&bus, "muser", &dir, &opts, &env, &s.path().join("run.log"));
    let src = s.path().join("in.txt");
    std::fs::write(&src, "into a user namespace\n").unwrap();
    ok(&machinectl(&bus, &["copy-to", "muser", &src.display().to_string(), "/root/in.txt"]), "copy-to");
    let o = machinectl(
        &bus,
        &["shell", "muser", "/bin/sh", "-c", "stat -c %u:%g /root/in.txt; cat /root/in.txt"],
    );
    let text = stdout(&o);
    assert!(text.contains("0:0") && text.contains("into a user namespace"), "{text}{}", stderr(&o));
    // A file of the guest's user 1000 comes out owned by 1000, not by its host id.
    ok(
        &machinectl(
            &bus,
            &["shell", "muser", "/bin/sh", "-c", "echo out > /root/out.txt; chown 1000:1000 /root/out.txt"],
        ),
        "make a guest file",
    );
    let out = s.path().join("out.txt");
    ok(&machinectl(&bus, &["copy-from", "muser", "/root/out.txt", &out.display().to_string()]), "copy-from");
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&out).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1000, 1000));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "out\n");
    drop(launcher);
    assert_no_leaks("muser", &dir);
}
