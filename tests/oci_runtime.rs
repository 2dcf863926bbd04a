//! `mctl-runc`, the OCI runtime: bundles run through runc's command line, and podman driving it
//! as its `--runtime`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn runc_bin() -> &'static str {
    env!("CARGO_BIN_EXE_mctl-runc")
}

/// A runtime state root of the test's own, and the bundles made in it.
struct Runtime {
    dir: tempfile::TempDir,
    /// Each call sees cgroup2 alone at /sys/fs/cgroup, as on a pure cgroup v2 host.
    pure_v2: bool,
}

impl Runtime {
    fn new() -> Runtime {
        Runtime { dir: scratch(), pure_v2: false }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Runs mctl-runc with stdout and stderr in files: a container's init inherits them (as
    /// with runc), so pipes would stay open as long as it runs.
    fn cmd(&self, args: &[&str]) -> Output {
        let mut cmd = if self.pure_v2 {
            let mut c = Command::new("unshare");
            c.args(["-m", "--propagation", "private", "sh", "-c"])
                .arg("mount -t cgroup2 cgroup2 /sys/fs/cgroup && exec \"$@\"")
                .args(["sh", runc_bin()]);
            c
        } else {
            Command::new(runc_bin())
        };
        cmd.env("DBUS_SYSTEM_BUS_ADDRESS", NO_BUS).arg("--root").arg(self.root()).args(args);
        run_to_files(&mut cmd, self.dir.path())
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.cmd(args);
        assert!(o.status.success(), "mctl-runc {args:?} failed: {}", stderr(&o));
        stdout(&o)
    }

    fn fails(&self, args: &[&str], needle: &str) {
        let o = self.cmd(args);
        assert_eq!(o.status.code(), Some(1), "mctl-runc {args:?}: {} {}", stdout(&o), stderr(&o));
        assert!(stderr(&o).contains(needle), "mctl-runc {args:?}: expected '{needle}' in {}", stderr(&o));
    }

    fn state(&self, id: &str) -> Value {
        serde_json::from_str(&self.ok(&["state", id])).expect("state is JSON")
    }

    /// A bundle with a copy of the busybox tree and `mctl-runc spec`'s config, changed by `edit`.
    fn bundle(&self, name: &str, edit: impl FnOnce(&mut Value)) -> PathBuf {
        let b = self.dir.path().join(name);
        std::fs::create_dir(&b).unwrap();
        copy_tree(busybox_tree(), &b, "rootfs");
        self.ok(&["spec", "--bundle", b.to_str().unwrap()]);
        let path = b.join("config.json");
        let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        cfg["process"]["terminal"] = json!(false);
        cfg["root"]["readonly"] = json!(false);
        cfg["linux"]["cgroupsPath"] = json!(format!("/mctl-tests-oci/{name}"));
        edit(&mut cfg);
        std::fs::write(&path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
        b
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // Whatever a failed test left running.
        for id in stdout(&self.cmd(&["list", "-q"])).lines() {
            let _ = self.cmd(&["delete", "--force", id]);
        }
        // The tests' shared parent, once the last test is done with it.
        for h in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
            let _ = std::fs::remove_dir(h.path().join("mctl-tests-oci"));
            let _ = std::fs::remove_dir(h.path().join("unified/mctl-tests-oci"));
        }
        let _ = std::fs::remove_dir("/sys/fs/cgroup/mctl-tests-oci");
    }
}

fn run_to_files(cmd: &mut Command, dir: &Path) -> Output {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tag = format!("{}-{}", std::process::id(), N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let (out, err) = (dir.join(format!(".out-{tag}")), dir.join(format!(".err-{tag}")));
    let status = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .status()
        .expect("spawn mctl-runc");
    let o = Output { status, stdout: std::fs::read(&out).unwrap(), stderr: std::fs::read(&err).unwrap() };
    let _ = std::fs::remove_file(out);
    let _ = std::fs::remove_file(err);
    o
}

/// The container's cgroup directories that exist.
fn cgroups_of(name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for h in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        for d in
            [h.path().join("mctl-tests-oci").join(name), h.path().join("unified/mctl-tests-oci").join(name)]
        {
            if d.exists() {
                out.push(d);
            }
        }
    }
    if Path::new("/sys/fs/cgroup/mctl-tests-oci").join(name).exists() {
        out.push(Path::new("/sys/fs/cgroup/mctl-tests-oci").join(name));
    }
    out
}

fn alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z"))
}

/// The first block device's numbers, for I/O throttles.
fn a_block_device() -> (u64, u64) {
    let mut devs: Vec<String> = std::fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("dev")).ok())
        .collect();
    devs.sort();
    let dev = devs.first().expect("a block device");
    let (major, minor) = dev.trim().split_once(':').unwrap();
    (major.parse().unwrap(), minor.parse().unwrap())
}

/// Whether the memory controller is a v1 hierarchy (hybrid hosts such as this one).
fn v1_memory() -> bool {
    Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists()
}

/// A hook that writes the state it gets on stdin to `file`.
fn hook(file: &str) -> Value {
    json!({"path": "/bin/sh", "args": ["sh", "-c", format!("cat > {file}")], "env": ["PATH=/bin:/usr/bin"]})
}

#[test]
fn a_bundle_goes_through_runcs_lifecycle_with_every_hook() {
    let rt = Runtime::new();
    let out = rt.dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let o = out.to_str().unwrap().to_owned();
    let b = rt.bundle("life", |c| {
        c["process"]["args"] = json!(["/bin/sh", "-c", "echo started > /out/started; exec sleep 60"]);
        c["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"destination": "/out", "type": "bind", "source": o, "options": ["rbind", "rw"]}));
        c["annotations"] = json!({"org.example.test": "yes"});
        c["hooks"] = json!({
            "createRuntime": [hook(&format!("{o}/createRuntime"))],
            "createContainer": [hook(&format!("{o}/createContainer"))],
            // In the container, after the pivot: the container's /bin/sh and /out.
            "startContainer": [hook("/out/startContainer")],
            "poststart": [hook(&format!("{o}/poststart"))],
            "poststop": [hook(&format!("{o}/poststop"))],
        });
    });
    let bs = b.to_str().unwrap();
    let pid_file = rt.dir.path().join("pid");
    rt.ok(&["create", "--bundle", bs, "--pid-file", pid_file.to_str().unwrap(), "life"]);
    let st = rt.state("life");
    assert_eq!(st["status"], "created");
    assert_eq!(st["id"], "life");
    assert_eq!(st["bundle"], bs);
    assert_eq!(st["annotations"]["org.example.test"], "yes");
    let pid = st["pid"].as_i64().unwrap();
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), pid.to_string());
    assert!(alive(pid), "the init waits for start");
    assert!(!out.join("started").exists(), "the process must not run before start");
    for h in ["createRuntime", "createContainer"] {
        let s: Value = serde_json::from_str(&std::fs::read_to_string(out.join(h)).expect(h)).unwrap();
        assert_eq!(s["id"], "life", "{h}");
        assert_eq!(s["status"], "creating", "{h}");
        assert_eq!(s["pid"].as_i64(), Some(pid), "{h}");
    }
    assert!(!out.join("startContainer").exists());
    assert!(!cgroups_of("life").is_empty(), "the container has its cgroup");
    // A second create of the id, a start of what runs, a delete without --force.
    rt.fails(&["create", "--bundle", bs, "life"], "container with id exists: life");
    rt.ok(&["start", "life"]);
    assert!(wait_until(Duration::from_secs(10), || out.join("started").exists()), "the process ran");
    assert_eq!(rt.state("life")["status"], "running");
    for h in ["startContainer", "poststart"] {
        let s: Value = serde_json::from_str(&std::fs::read_to_string(out.join(h)).expect(h)).unwrap();
        assert_eq!(s["id"], "life", "{h}");
    }
    rt.fails(&["start", "life"], "cannot start an already running container");
    rt.fails(&["delete", "life"], "cannot delete container life that is not stopped: running");
    let pids: Vec<i64> = serde_json::from_str(&rt.ok(&["ps", "--format", "json", "life"])).unwrap();
    assert_eq!(pids, vec![pid]);
    rt.ok(&["pause", "life"]);
    assert_eq!(rt.state("life")["status"], "paused");
    rt.ok(&["resume", "life"]);
    assert_eq!(rt.state("life")["status"], "running");
    let list: Vec<Value> = serde_json::from_str(&rt.ok(&["list", "--format", "json"])).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], "life");
    rt.ok(&["kill", "life", "KILL"]);
    assert!(wait_until(Duration::from_secs(10), || rt.state("life")["status"] == "stopped"));
    assert!(!out.join("poststop").exists());
    rt.ok(&["delete", "life"]);
    let s: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("poststop")).expect("poststop")).unwrap();
    assert_eq!(s["status"], "stopped");
    rt.fails(&["state", "life"], "container does not exist: life");
    assert!(cgroups_of("life").is_empty(), "cgroups left: {:?}", cgroups_of("life"));
    assert!(!rt.root().join("life").exists(), "state left behind");
}

#[test]
fn the_process_is_set_up_as_configured() {
    let rt = Runtime::new();
    let b = rt.bundle("proc", |c| {
        c["hostname"] = json!("oci-host");
        c["process"]["args"] = json!(["/bin/sh", "-c", concat!(
            "echo host=$(hostname) foo=$FOO cwd=$(pwd) ids=$(id -u):$(id -g):$(id -G | tr ' ' ,) umask=$(umask) nofile=$(ulimit -n);",
            "grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status | tr '\\t' ' ';",
            "echo meminfo=$(wc -c < /proc/meminfo) firmware=$(ls /sys/firmware | wc -l);",
            "echo > /proc/sys/kernel/hostname 2>/dev/null && echo sys=writable || echo sys=readonly;",
            "touch /rootfs-write 2>/dev/null && echo root=writable || echo root=readonly;",
            "echo shm_rmid_forced=$(cat /proc/sys/kernel/shm_rmid_forced);",
            "echo hugetlb=$(cat /sys/fs/cgroup/unified/hugetlb.2MB.max /sys/fs/cgroup/hugetlb.2MB.max \
               /sys/fs/cgroup/hugetlb/hugetlb.2MB.limit_in_bytes 2>/dev/null);",
            "echo blkio=$(cat /sys/fs/cgroup/blkio/blkio.throttle.read_bps_device /sys/fs/cgroup/io.max 2>/dev/null | tr ' ' _);",
            "echo soft=$(cat /sys/fs/cgroup/memory/memory.soft_limit_in_bytes /sys/fs/cgroup/memory.low 2>/dev/null)",
            "   swappiness=$(cat /sys/fs/cgroup/memory/memory.swappiness 2>/dev/null || echo v2);",
            "echo uptime=$(cut -d. -f1 /proc/uptime);",
            "exit 42"
        )]);
        c["process"]["env"] = json!(["PATH=/bin:/usr/bin", "FOO=bar"]);
        c["process"]["cwd"] = json!("/tmp");
        c["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [10, 20], "umask": 63});
        c["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": 321, "hard": 321}]);
        c["process"]["noNewPrivileges"] = json!(true);
        c["process"]["capabilities"] = json!({"bounding": ["CAP_KILL", "CAP_CHOWN"], "effective": ["CAP_KILL"],
            "permitted": ["CAP_KILL"], "inheritable": ["CAP_KILL"], "ambient": ["CAP_KILL"]});
        c["root"]["readonly"] = json!(true);
        c["linux"]["maskedPaths"] = json!(["/proc/meminfo", "/sys/firmware", "/proc/no-such-file"]);
        c["linux"]["readonlyPaths"] = json!(["/proc/sys"]);
        c["linux"]["sysctl"] = json!({"kernel.shm_rmid_forced": "1"});
        c["linux"]["namespaces"].as_array_mut().unwrap().push(json!({"type": "time"}));
        c["linux"]["timeOffsets"] = json!({"boottime": {"secs": 10_000_000, "nanosecs": 0}});
        let (major, minor) = a_block_device();
        c["linux"]["resources"] = json!({
            "hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}],
            "blockIO": {"throttleReadBpsDevice": [{"major": major, "minor": minor, "rate": 1048576}]},
            "memory": {"reservation": 33554432, "swappiness": if v1_memory() { json!(10) } else { Value::Null }},
        });
    });
    let o = Command::new(runc_bin())
        .arg("--root")
        .arg(rt.root())
        .args(["run", "--bundle", b.to_str().unwrap(), "proc"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(42), "run passes the exit status on: {out} {}", stderr(&o));
    for want in [
        "host=oci-host foo=bar cwd=/tmp ids=1000:1000:1000,10,20 umask=0077 nofile=321",
        // CAP_KILL alone is bit 5, kept across the exec of a non-root user as an ambient
        // capability; the bounding set CAP_CHOWN (0) and CAP_KILL.
        "CapEff: 0000000000000020",
        "CapBnd: 0000000000000021",
        "NoNewPrivs: 1",
        "meminfo=0 firmware=0",
        "sys=readonly",
        "root=readonly",
        "shm_rmid_forced=1",
        "hugetlb=4194304",
        &format!("blkio={}:{}_", a_block_device().0, a_block_device().1),
        "soft=33554432",
        if v1_memory() { "swappiness=10" } else { "swappiness=v2" },
    ] {
        assert!(out.contains(want), "expected '{want}' in:\n{out}");
    }
    let uptime: u64 =
        out.lines().find_map(|l| l.strip_prefix("uptime=")).unwrap_or_default().parse().unwrap();
    assert!(uptime >= 10_000_000, "the boot time offset is in force: {out}");
    let blkio = out.lines().find(|l| l.starts_with("blkio=")).unwrap_or_default();
    assert!(blkio.contains("_1048576") || blkio.contains("rbps=1048576"), "{blkio}");
    assert!(cgroups_of("proc").is_empty(), "run deletes the container");
    assert!(!rt.root().join("proc").exists());
}

#[test]
fn seccomp_actions_and_conditions_hold() {
    let rt = Runtime::new();
    let b = rt.bundle("filter", |c| {
        c["process"]["args"] = json!(["/bin/sh", "-c", concat!(
            "mkdir /tmp/d 2>&1; echo mkdir=$?;",
            "touch /tmp/f; chmod 777 /tmp/f 2>&1; echo chmod777=$?; chmod 755 /tmp/f; echo chmod755=$?"
        )]);
        c["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
            "syscalls": [
                {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 95},
                {"names": ["fchmodat"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 2, "value": 511, "op": "SCMP_CMP_EQ"}]},
                {"names": ["chmod"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 1, "value": 511, "op": "SCMP_CMP_EQ"}]},
                {"names": ["no_such_call_anywhere"], "action": "SCMP_ACT_KILL"}
            ]
        });
    });
    let o = rt.cmd(&["run", "--bundle", b.to_str().unwrap(), "filter"]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out} {}", stderr(&o));
    assert!(
        out.contains("not supported") || out.contains("Not supported"),
        "errnoRet 95 (EOPNOTSUPP): {out}"
    );
    assert!(out.contains("mkdir=1"), "{out}");
    assert!(out.contains("chmod777=1"), "a matching argument is refused: {out}");
    assert!(out.contains("chmod755=0"), "another value passes: {out}");

    // A process killed by its filter: getppid, which the shell calls at start.
    let b = rt.bundle("killed", |c| {
        c["process"]["args"] = json!(["/bin/sh", "-c", "echo $PPID"]);
        c["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_KILL_PROCESS"}]});
    });
    let o = rt.cmd(&["run", "--bundle", b.to_str().unwrap(), "killed"]);
    assert_eq!(o.status.code(), Some(128 + libc::SIGSYS), "killed by SIGSYS: {}", stderr(&o));
}

#[test]
fn a_user_namespace_maps_the_containers_ids() {
    const BASE: u32 = 3_014_656;
    let rt = Runtime::new();
    let b = rt.bundle("mapped", |c| {
        c["process"]["args"] =
            json!(["/bin/sh", "-c", "cat /proc/self/uid_map /proc/self/gid_map; id -u; exec sleep 60"]);
        c["linux"]["namespaces"].as_array_mut().unwrap().push(json!({"type": "user"}));
        c["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": BASE, "size": 65536}]);
        c["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": BASE, "size": 65536}]);
    });
    let log = rt.dir.path().join("mapped.out");
    let st = Command::new(runc_bin())
        .arg("--root")
        .arg(rt.root())
        .args(["create", "--bundle", b.to_str().unwrap(), "mapped"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(rt.dir.path().join("mapped.err")).unwrap())
        .status()
        .unwrap();
    assert!(st.success(), "{}", std::fs::read_to_string(rt.dir.path().join("mapped.err")).unwrap());
    let pid = rt.state("mapped")["pid"].as_i64().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap().to_owned();
    assert!(uid_line.contains(&BASE.to_string()), "the init is the range's first id on the host: {uid_line}");
    rt.ok(&["start", "mapped"]);
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(&log).unwrap().lines().count() >= 3)
    );
    let out = std::fs::read_to_string(&log).unwrap();
    let fields: Vec<Vec<&str>> = out.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(fields[0], vec!["0", &BASE.to_string(), "65536"], "{out}");
    assert_eq!(fields[2], vec!["0"], "root inside: {out}");
    rt.ok(&["delete", "--force", "mapped"]);
    assert!(!alive(pid));
    assert!(cgroups_of("mapped").is_empty());
}

#[test]
fn idmapped_mounts_show_the_mapped_owners() {
    use std::os::unix::fs::MetadataExt;
    let rt = Runtime::new();
    let shared = rt.dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("root-file"), "").unwrap();
    std::fs::write(shared.join("user-file"), "").unwrap();
    std::os::unix::fs::chown(shared.join("user-file"), Some(1000), Some(1000)).unwrap();
    let maps = json!([{"containerID": 0, "hostID": 2000, "size": 1000}]);

    // The mount's own mapping: on-disk 0 shows as 2000, ids it does not map as nobody; a file
    // made through it by 2000 lands on disk as 0.
    let b = rt.bundle("idmap", |c| {
        c["process"]["args"] = json!([
            "/bin/sh",
            "-c",
            "stat -c '%u:%g %n' /mnt/root-file /mnt/user-file; touch /mnt/made 2>&1; echo write=$?"
        ]);
        c["process"]["user"] = json!({"uid": 2000, "gid": 2000});
        c["mounts"].as_array_mut().unwrap().push(json!({"destination": "/mnt", "type": "bind",
            "source": shared, "options": ["bind", "idmap"], "uidMappings": maps, "gidMappings": maps}));
    });
    let out = rt.ok(&["run", "--bundle", b.to_str().unwrap(), "idmap"]);
    assert!(out.contains("2000:2000 /mnt/root-file"), "{out}");
    assert!(out.contains("65534:65534 /mnt/user-file"), "{out}");
    assert!(out.contains("write=0"), "{out}");
    let made = std::fs::metadata(shared.join("made")).unwrap();
    assert_eq!((made.uid(), made.gid()), (0, 0), "stored with the id mapped back");

    // No mapping of its own: the container's user namespace's, so its root owns root's files.
    const BASE: u32 = 3_080_192;
    let b = rt.bundle("ridmap", |c| {
        // Existing directories: the image's root (host root's) is not the container root's to
        // make mount points in.
        c["process"]["args"] =
            json!(["/bin/sh", "-c", "stat -c '%u %n' /home/root-file /home/user-file /run/root-file"]);
        c["linux"]["namespaces"].as_array_mut().unwrap().push(json!({"type": "user"}));
        c["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": BASE, "size": 65536}]);
        c["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": BASE, "size": 65536}]);
        c["mounts"].as_array_mut().unwrap().push(json!({"destination": "/home", "type": "bind",
            "source": shared, "options": ["rbind", "ridmap"]}));
        c["mounts"].as_array_mut().unwrap().push(json!({"destination": "/run", "type": "bind",
            "source": shared, "options": ["rbind"]}));
    });
    let out = rt.ok(&["run", "--bundle", b.to_str().unwrap(), "ridmap"]);
    assert!(out.contains("0 /home/root-file") && out.contains("1000 /home/user-file"), "{out}");
    assert!(out.contains("65534 /run/root-file"), "without idmap the host's root is nobody: {out}");

    // Refused before anything is made.
    for (name, mount, needle) in [
        (
            "on-tmpfs",
            json!({"destination": "/mnt", "type": "tmpfs", "source": "tmpfs", "options": ["idmap"]}),
            "only bind mounts",
        ),
        (
            "no-option",
            json!({"destination": "/mnt", "type": "bind", "source": shared, "options": ["bind"],
            "uidMappings": maps, "gidMappings": maps}),
            "no idmap or ridmap option",
        ),
        (
            "no-maps",
            json!({"destination": "/mnt", "type": "bind", "source": shared, "options": ["bind", "idmap"]}),
            "needs uidMappings and gidMappings",
        ),
        (
            "half",
            json!({"destination": "/mnt", "type": "bind", "source": shared, "options": ["bind", "idmap"],
            "uidMappings": maps}),
            "needs both uidMappings and gidMappings",
        ),
    ] {
        let b = rt.bundle(name, |c| c["mounts"].as_array_mut().unwrap().push(mount));
        rt.fails(&["create", "--bundle", b.to_str().unwrap(), name], needle);
        assert!(cgroups_of(name).is_empty(), "{name}: cgroups left");
        assert!(!rt.root().join(name).exists(), "{name}: state left");
    }
}

/// On this hybrid host, a mount namespace whose /sys/fs/cgroup is the cgroup2 hierarchy alone
/// (with no controllers: the v1 hierarchies hold them) stands in for a pure v2 host; on a pure
/// v2 host it is the host's own layout.
#[test]
fn a_pure_cgroup_v2_layout_is_used_as_such() {
    let mut rt = Runtime::new();
    let b = rt.bundle("v2only", |c| c["process"]["args"] = json!(["/bin/sleep", "60"]));
    rt.pure_v2 = true;
    rt.ok(&["run", "--detach", "--bundle", b.to_str().unwrap(), "v2only"]);
    let unified = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .map(|h| Path::new(h).join("mctl-tests-oci/v2only"))
        .find(|d| d.join("cgroup.procs").exists())
        .expect("the container's cgroup2 directory");
    let pid = rt.state("v2only")["pid"].as_i64().unwrap();
    assert_eq!(std::fs::read_to_string(unified.join("cgroup.procs")).unwrap().trim(), pid.to_string());
    let v1: Vec<PathBuf> = cgroups_of("v2only").into_iter().filter(|d| !d.starts_with(&unified)).collect();
    assert!(v1.is_empty(), "cgroups made in hierarchies the runtime cannot see: {v1:?}");
    // pause and resume through cgroup.freeze
    rt.ok(&["pause", "v2only"]);
    assert_eq!(rt.state("v2only")["status"], "paused");
    assert_eq!(std::fs::read_to_string(unified.join("cgroup.freeze")).unwrap().trim(), "1");
    rt.ok(&["resume", "v2only"]);
    assert_eq!(rt.state("v2only")["status"], "running");
    rt.ok(&["kill", "v2only", "KILL"]);
    assert!(wait_until(Duration::from_secs(10), || rt.state("v2only")["status"] == "stopped"));
    rt.ok(&["delete", "v2only"]);
    assert!(!unified.exists(), "the container's cgroup outlives it");
}

/// Without a cgroupsPath the container's cgroup is made beside the runtime's own and is gone
/// with the container: no parent of mctl's is left behind.
#[test]
fn a_default_cgroup_leaves_nothing_behind() {
    let rt = Runtime::new();
    let b = rt.bundle("nopath", |c| {
        c["process"]["args"] = json!(["/bin/sleep", "60"]);
        c["linux"].as_object_mut().unwrap().remove("cgroupsPath");
    });
    rt.ok(&["run", "--detach", "--bundle", b.to_str().unwrap(), "nopath"]);
    let pid = rt.state("nopath")["pid"].as_i64().unwrap();
    let v2_of = |pid: &str| {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        text.lines().find_map(|l| l.strip_prefix("0::")).unwrap().to_owned()
    };
    let (ours, theirs) = (v2_of("self"), v2_of(&pid.to_string()));
    assert_eq!(theirs, format!("{}/nopath", ours.trim_end_matches('/')), "beside the runtime's own cgroup");
    rt.ok(&["kill", "nopath", "KILL"]);
    assert!(wait_until(Duration::from_secs(10), || rt.state("nopath")["status"] == "stopped"));
    rt.ok(&["delete", "nopath"]);
    let hierarchy = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .find(|h| Path::new(h).join("cgroup.procs").exists())
        .unwrap();
    let dir = format!("{hierarchy}{theirs}");
    assert!(!Path::new(&dir).exists(), "{dir} outlives the container");
}

/// A seccomp agent (runtime-spec's listener): takes each container's notification fd and the
/// state sent with it (logged, one JSON line per container), and answers every notified call
/// with EDQUOT without running it.
const SECCOMP_AGENT: &str = r#"
import array, fcntl, json, os, select, socket, struct, sys, threading
path, log = sys.argv[1], sys.argv[2]
NOTIF_RECV, NOTIF_SEND = 0xC0502100, 0xC0182101
def serve(fd):
    while True:
        events = select.poll()
        events.register(fd, select.POLLIN)
        if not any(e & select.POLLIN for _, e in events.poll()):
            return
        req = bytearray(80)
        try:
            fcntl.ioctl(fd, NOTIF_RECV, req)
        except OSError:
            continue
        nid, pid, _, nr = struct.unpack_from("=QIIi", req)
        try:
            fcntl.ioctl(fd, NOTIF_SEND, bytearray(struct.pack("=QqiI", nid, 0, -122, 0)))
        except OSError:
            pass
        with open(log, "a") as f:
            f.write(json.dumps({"call": nr, "pid": pid}) + "\n")
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path + ".tmp")
srv.listen(8)
os.rename(path + ".tmp", path)
while True:
    conn, _ = srv.accept()
    msg, anc, _, _ = conn.recvmsg(65536, socket.CMSG_SPACE(16))
    fds = array.array("i")
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % 4])
    with open(log, "a") as f:
        f.write(json.dumps({"message": json.loads(msg), "fds": len(fds)}) + "\n")
    threading.Thread(target=serve, args=(fds[0],), daemon=True).start()
"#;

#[test]
fn a_seccomp_agent_answers_the_calls_a_filter_notifies() {
    let rt = Runtime::new();
    let (sock, log) = (rt.dir.path().join("agent.sock"), rt.dir.path().join("agent.log"));
    let agent =
        Guarded(Command::new("python3").arg("-c").arg(SECCOMP_AGENT).arg(&sock).arg(&log).spawn().unwrap());
    assert!(wait_until(Duration::from_secs(10), || sock.exists()), "the agent listens");
    let filter = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "listenerPath": sock,
        "listenerMetadata": "from-the-bundle",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"}]
    });
    let script = "mkdir /tmp/n 2>&1; echo rc=$?; test -d /tmp/n && echo made || echo absent";
    let b = rt.bundle("agent", |c| {
        c["process"]["args"] = json!(["/bin/sh", "-c", script]);
        c["process"]["noNewPrivileges"] = json!(true);
        c["linux"]["seccomp"] = filter.clone();
    });
    let o = rt.cmd(&["run", "--bundle", b.to_str().unwrap(), "agent"]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out} {}", stderr(&o));
    assert!(out.contains("Disk quota exceeded") && out.contains("rc=1") && out.contains("absent"), "{out}");
    let lines: Vec<Value> =
        std::fs::read_to_string(&log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let first = &lines[0];
    assert_eq!(first["fds"], 1, "{first}");
    let msg = &first["message"];
    assert_eq!(msg["fds"], json!(["seccompFd"]), "{msg}");
    assert_eq!(msg["metadata"], "from-the-bundle", "{msg}");
    assert_eq!(msg["state"]["id"], "agent", "{msg}");
    assert_eq!(msg["state"]["status"], "creating", "{msg}");
    assert_eq!(msg["pid"], msg["state"]["pid"], "{msg}");
    assert!(lines.iter().any(|l| l.get("call").is_some()), "the agent answered: {lines:?}");

    // exec'd processes keep the filter, and the agent gets their fd too.
    let b = rt.bundle("agent-exec", |c| {
        c["process"]["args"] = json!(["/bin/sleep", "60"]);
        c["linux"]["seccomp"] = filter.clone();
    });
    rt.ok(&["run", "--detach", "--bundle", b.to_str().unwrap(), "agent-exec"]);
    let out = rt.ok(&["exec", "agent-exec", "/bin/sh", "-c", script]);
    assert!(out.contains("rc=1") && out.contains("absent"), "{out}");
    let log_text = std::fs::read_to_string(&log).unwrap();
    let exec_msg: Vec<Value> = log_text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l["message"]["state"]["id"] == "agent-exec")
        .collect();
    assert_eq!(exec_msg.len(), 2, "the init's and the exec'd process's fds: {log_text}");
    assert_eq!(exec_msg[1]["message"]["state"]["status"], "running");
    rt.ok(&["delete", "--force", "agent-exec"]);
    drop(agent);

    // Refused before anything is made: no agent socket, an agent that is not there, and a
    // call the runtime needs.
    for (name, seccomp, needle) in [
        (
            "no-listener",
            json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]}),
            "listenerPath",
        ),
        ("gone", filter.clone(), "cannot connect to the seccomp agent"),
        (
            "write",
            json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": sock, "syscalls": [{"names": ["write"], "action": "SCMP_ACT_NOTIFY"}]}),
            "cannot be used for write",
        ),
    ] {
        let b = rt.bundle(name, |c| c["linux"]["seccomp"] = seccomp);
        rt.fails(&["create", "--bundle", b.to_str().unwrap(), name], needle);
        assert!(cgroups_of(name).is_empty(), "{name}: cgroups left");
        assert!(!rt.root().join(name).exists(), "{name}: state left");
    }
}

#[test]
fn a_terminal_without_a_console_socket_is_relayed_by_the_runtime() {
    let rt = Runtime::new();
    // The caller's stdin goes to the pty, the pty's output to the caller's stdout.
    let b = rt.bundle("relay", |c| {
        c["process"]["terminal"] = json!(true);
        c["process"]["args"] = json!(["/bin/sh"]);
    });
    let input = rt.dir.path().join("input");
    std::fs::write(&input, "tty; echo relayed-$((40+2)); exit 7\n").unwrap();
    let o = Command::new(runc_bin())
        .arg("--root")
        .arg(rt.root())
        .args(["run", "--bundle", b.to_str().unwrap(), "relay"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", NO_BUS)
        .stdin(std::fs::File::open(&input).unwrap())
        .output()
        .unwrap();
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(7), "the shell's exit status: {out} {}", stderr(&o));
    assert!(out.contains("/dev/pts/0") && out.contains("relayed-42"), "{out}");
    assert!(!rt.root().join("relay").exists(), "run deletes the container");

    // exec -t, likewise; detached it has nobody to relay to.
    let b = rt.bundle("relay-exec", |c| c["process"]["args"] = json!(["/bin/sleep", "60"]));
    rt.ok(&["run", "--detach", "--bundle", b.to_str().unwrap(), "relay-exec"]);
    let o = rt.cmd(&["exec", "-t", "relay-exec", "/bin/sh", "-c", "tty; exit 3"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stdout(&o).contains("/dev/pts/"), "{}", stdout(&o));
    rt.fails(&["exec", "-t", "-d", "relay-exec", "/bin/true"], "without --console-socket");
    rt.ok(&["delete", "--force", "relay-exec"]);
    // run -d with a terminal and no socket: refused, nothing left.
    let b = rt.bundle("relay-detached", |c| c["process"]["terminal"] = json!(true));
    rt.fails(&["run", "-d", "--bundle", b.to_str().unwrap(), "relay-detached"], "without --console-socket");
    assert!(!rt.root().join("relay-detached").exists());
    assert!(cgroups_of("relay-detached").is_empty());
}

#[test]
fn exec_joins_a_running_container() {
    let rt = Runtime::new();
    let b = rt.bundle("host", |c| {
        c["hostname"] = json!("exec-target");
        c["process"]["args"] = json!(["/bin/sleep", "60"]);
    });
    rt.ok(&["run", "--detach", "--bundle", b.to_str().unwrap(), "host"]);
    let out = rt.ok(&[
        "exec",
        "--env",
        "X=1",
        "--cwd",
        "/etc",
        "--user",
        "1000:1000",
        "host",
        "/bin/sh",
        "-c",
        "echo $(hostname) $X $(pwd) $(id -u) $$",
    ]);
    assert_eq!(out.trim_end().rsplit_once(' ').unwrap().0, "exec-target 1 /etc 1000", "{out}");
    let pid: i64 = out.trim().rsplit(' ').next().unwrap().parse().unwrap();
    assert!(pid > 1, "a process of the container's pid namespace beside its init");
    // Exit statuses come back; a --process file works too.
    let o = rt.cmd(&["exec", "host", "/bin/sh", "-c", "exit 5"]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    let pf = rt.dir.path().join("process.json");
    std::fs::write(&pf, json!({"args": ["/bin/sh", "-c", "exit 6"], "cwd": "/", "user": {"uid": 0, "gid": 0}, "env": ["PATH=/bin"]}).to_string()).unwrap();
    let o = rt.cmd(&["exec", "--process", pf.to_str().unwrap(), "host"]);
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    rt.fails(&["exec", "host", "/no/such/program"], "no such file or directory");
    rt.fails(&["exec", "nosuch", "/bin/true"], "container does not exist: nosuch");
    rt.ok(&["kill", "host", "9"]);
    assert!(wait_until(Duration::from_secs(10), || rt.state("host")["status"] == "stopped"));
    rt.fails(&["exec", "host", "/bin/true"], "cannot exec in a stopped container");
    rt.ok(&["delete", "host"]);
    assert!(cgroups_of("host").is_empty());
}

#[test]
fn bad_input_is_refused_and_leaves_nothing() {
    let rt = Runtime::new();
    let empty = rt.dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    rt.fails(&["create", "--bundle", empty.to_str().unwrap(), "bad1"], "config.json: no such file");
    std::fs::write(empty.join("config.json"), "{ not json").unwrap();
    rt.fails(&["create", "--bundle", empty.to_str().unwrap(), "bad2"], "not a valid configuration");
    let ns = rt.bundle("bad3", |c| {
        c["linux"]["namespaces"].as_array_mut().unwrap().push(json!({"type": "nosuchns"}))
    });
    rt.fails(&["create", "--bundle", ns.to_str().unwrap(), "bad3"], "not a valid configuration");
    let mt = rt.bundle("bad4", |c| {
        c["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"destination": "/x", "type": "nosuchfs", "source": "x"}))
    });
    rt.fails(&["create", "--bundle", mt.to_str().unwrap(), "bad4"], "unknown mount type 'nosuchfs'");
    let tty = rt.bundle("bad5", |c| c["process"]["terminal"] = json!(true));
    rt.fails(
        &["create", "--bundle", tty.to_str().unwrap(), "--console-socket", "/nonexistent/sock", "bad5"],
        "cannot connect to the console socket /nonexistent/sock",
    );
    let nocmd = rt.bundle("bad6", |c| c["process"]["args"] = json!(["no-such-command"]));
    rt.fails(&["create", "--bundle", nocmd.to_str().unwrap(), "bad6"], "executable file not found in $PATH");
    // A symlink in the image may not carry a mount out of the rootfs.
    let esc = rt.bundle("bad7", |c| {
        c["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"destination": "/evil/x", "type": "tmpfs", "source": "tmpfs"}))
    });
    let target = rt.dir.path().join("outside");
    std::fs::create_dir(&target).unwrap();
    std::os::unix::fs::symlink(&target, esc.join("rootfs/evil")).unwrap();
    // (runc would make the directory inside the rootfs; mctl refuses the link that leads nowhere.)
    rt.fails(&["run", "--bundle", esc.to_str().unwrap(), "bad7"], "/evil");
    assert!(!target.join("x").exists(), "the mount target was made outside the rootfs");
    rt.fails(&["create", "--bundle", esc.to_str().unwrap(), "../x"], "invalid container id");
    // Registration asked for and impossible (no bus here): the create fails and is undone.
    let reg = rt.bundle("bad8", |c| c["process"]["args"] = json!(["sleep", "100"]));
    rt.fails(&["--register=yes", "create", "--bundle", reg.to_str().unwrap(), "bad8"], "register");
    // A security label for a module the host does not run is not dropped silently (with the
    // module enabled, the profile does not exist: refused either way).
    let aa = rt.bundle("bad9", |c| c["process"]["apparmorProfile"] = json!("mctl-no-such-profile"));
    let needle = if Path::new("/sys/kernel/security/apparmor").exists() {
        "mctl-no-such-profile"
    } else {
        "AppArmor is not enabled"
    };
    rt.fails(&["create", "--bundle", aa.to_str().unwrap(), "bad9"], needle);
    if !Path::new("/sys/fs/selinux/enforce").exists() {
        let se =
            rt.bundle("bad10", |c| c["process"]["selinuxLabel"] = json!("system_u:system_r:container_t:s0"));
        rt.fails(&["create", "--bundle", se.to_str().unwrap(), "bad10"], "SELinux is not enabled");
    }
    let t = rt.bundle("bad11", |c| c["linux"]["timeOffsets"] = json!({"monotonic": {"secs": 5}}));
    rt.fails(&["create", "--bundle", t.to_str().unwrap(), "bad11"], "needs a new time namespace");
    let rdt = rt.bundle("bad12", |c| c["linux"]["intelRdt"] = json!({"closID": "x"}));
    rt.fails(&["create", "--bundle", rdt.to_str().unwrap(), "bad12"], "Intel RDT");
    rt.fails(&["start", "nosuch"], "container does not exist: nosuch");
    rt.fails(&["delete", "nosuch"], "container does not exist: nosuch");
    rt.ok(&["delete", "--force", "nosuch"]);
    for id in
        ["bad1", "bad2", "bad3", "bad4", "bad5", "bad6", "bad7", "bad8", "bad9", "bad10", "bad11", "bad12"]
    {
        assert!(!rt.root().join(id).exists(), "state of {id} left behind");
        assert!(cgroups_of(id).is_empty(), "cgroups of {id} left behind: {:?}", cgroups_of(id));
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(rt.dir.path().to_str().unwrap()), "mounts left behind");
}

#[test]
fn features_and_version_describe_the_runtime() {
    let rt = Runtime::new();
    let f: Value = serde_json::from_str(&rt.ok(&["features"])).unwrap();
    assert_eq!(f["ociVersionMax"], "1.2.0");
    assert!(f["linux"]["namespaces"].as_array().unwrap().contains(&json!("user")));
    assert!(f["linux"]["capabilities"].as_array().unwrap().contains(&json!("CAP_SYS_ADMIN")));
    assert_eq!(f["linux"]["mountExtensions"]["idmap"]["enabled"], true);
    assert!(f["linux"]["seccomp"]["actions"].as_array().unwrap().contains(&json!("SCMP_ACT_NOTIFY")));
    assert!(rt.ok(&["--version"]).contains("spec: 1.2.0"));
    let b = rt.dir.path().join("specdir");
    std::fs::create_dir(&b).unwrap();
    rt.ok(&["spec", "--bundle", b.to_str().unwrap()]);
    rt.fails(&["spec", "--bundle", b.to_str().unwrap()], "exists. Remove it first");
    // --log --log-format=json writes runc's line, which conmon shows.
    let log = rt.dir.path().join("log.json");
    let o = Command::new(runc_bin())
        .args([
            "--root",
            rt.root().to_str().unwrap(),
            "--log",
            log.to_str().unwrap(),
            "--log-format",
            "json",
            "start",
            "nosuch",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let line: Value =
        serde_json::from_str(std::fs::read_to_string(&log).unwrap().lines().last().unwrap()).unwrap();
    assert_eq!(line["level"], "error");
    assert!(line["msg"].as_str().unwrap().contains("container does not exist"));
}

/// podman with a storage, run root and containers.conf of the test's own; containers get no
/// network (netns none), so podman never touches the host's network.
struct Podman {
    dir: tempfile::TempDir,
    runroot: PathBuf,
    bus: String,
}

impl Podman {
    fn new() -> Podman {
        let dir = scratch();
        // podman wants a run root path under 50 characters.
        let runroot = tempfile::Builder::new().prefix("mro-").tempdir_in("/tmp").unwrap().keep();
        let pm = Podman { dir, runroot, bus: NO_BUS.into() };
        pm.write_conf();
        pm
    }

    /// Points podman, conmon and so the runtime at a bus of the test's own (conmon passes
    /// the runtime only the environment containers.conf names).
    fn use_bus(&mut self, address: &str) {
        self.bus = address.into();
        self.write_conf();
    }

    fn write_conf(&self) {
        std::fs::write(
            self.dir.path().join("containers.conf"),
            format!(
                "[containers]\nnetns = \"none\"\n\
                 # This host's bounding set lacks CAP_SYS_RESOURCE: podman's default limits cannot be set.\n\
                 default_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]\n\
                 [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 conmon_env_vars = [\"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\", \
                 \"DBUS_SYSTEM_BUS_ADDRESS={}\"]\n",
                self.bus
            ),
        )
        .unwrap();
    }

    fn cmd(&self, args: &[&str]) -> Output {
        Command::new("podman")
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.bus)
            .env("CONTAINERS_CONF", self.dir.path().join("containers.conf"))
            .arg("--root")
            .arg(self.dir.path().join("storage"))
            .arg("--runroot")
            .arg(&self.runroot)
            .args(["--storage-driver", "vfs", "--runtime", runc_bin()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("spawn podman")
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.cmd(args);
        assert!(o.status.success(), "podman {args:?} failed: {} {}", stdout(&o), stderr(&o));
        stdout(&o)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cmd(&["rm", "--all", "--force", "--time", "0"]);
        let _ = self.cmd(&["system", "reset", "--force"]);
        let _ = std::fs::remove_dir_all(&self.runroot);
        // podman's default cgroup parent, which the runtime made for its containers, and the
        // one podman makes in it for conmon.
        let roots = std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten().map(|h| h.path());
        for root in roots.flat_map(|r| [r.join("unified"), r]).chain([PathBuf::from("/sys/fs/cgroup")]) {
            let _ = std::fs::remove_dir(root.join("libpod_parent/conmon"));
            let _ = std::fs::remove_dir(root.join("libpod_parent"));
        }
    }
}

#[test]
fn podman_runs_containers_with_mctl_runc() {
    let mut pm = Podman::new();
    // mctld on a bus of the test's own: podman's containers register there.
    let bus = TestBus::start(pm.dir.path());
    let _mctld = Mctld::start(&bus, pm.dir.path(), true);
    pm.use_bus(&bus.address);
    let tar = pm.dir.path().join("bb.tar");
    let st =
        Command::new("tar").arg("-C").arg(busybox_tree()).arg("-cf").arg(&tar).arg(".").status().unwrap();
    assert!(st.success());
    pm.ok(&["import", tar.to_str().unwrap(), "localhost/mctl-bb"]);
    let img = "localhost/mctl-bb";

    assert_eq!(pm.cmd(&["run", "--rm", img, "/bin/sh", "-c", "echo hi; exit 3"]).status.code(), Some(3));
    assert_eq!(pm.ok(&["run", "--rm", img, "echo", "hello"]).trim(), "hello");
    // A pty through the console socket.
    assert_eq!(pm.ok(&["run", "--rm", "-t", img, "tty"]).trim(), "/dev/pts/0");
    let limits = pm.ok(&["run", "--rm", "--memory", "64m", "--pids-limit", "30", img, "sh", "-c",
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max; cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max"]);
    assert_eq!(limits.split_whitespace().collect::<Vec<_>>(), vec!["67108864", "30"], "{limits}");
    let caps = pm.ok(&[
        "run",
        "--rm",
        "--cap-drop",
        "all",
        "--cap-add",
        "chown",
        img,
        "grep",
        "CapEff",
        "/proc/self/status",
    ]);
    assert!(caps.contains("0000000000000001"), "{caps}");
    let ro = pm.ok(&[
        "run",
        "--rm",
        "--read-only",
        img,
        "sh",
        "-c",
        "touch /x 2>/dev/null; echo root=$?; touch /tmp/y; echo tmp=$?",
    ]);
    assert!(ro.contains("root=1") && ro.contains("tmp=0"), "{ro}");
    assert_eq!(pm.ok(&["run", "--rm", "--user", "1000:1000", img, "id", "-u"]).trim(), "1000");
    let vol = pm.dir.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    std::fs::write(vol.join("f"), "from the host\n").unwrap();
    let v = format!("{}:/vol:ro", vol.display());
    let vo =
        pm.ok(&["run", "--rm", "-v", &v, img, "sh", "-c", "cat /vol/f; touch /vol/g 2>/dev/null; echo w=$?"]);
    assert!(vo.contains("from the host") && vo.contains("w=1"), "{vo}");
    let links = pm.ok(&["run", "--rm", "--network=none", img, "ls", "/sys/class/net"]);
    assert_eq!(links.trim(), "lo");

    // A detached container: exec, pause, top, inspect, stop.
    let id = pm.ok(&["run", "-d", "--name", "mctl-d", img, "sleep", "300"]).trim().to_owned();
    assert_eq!(
        pm.ok(&["exec", "mctl-d", "sh", "-c", "echo $$ in $(hostname)"]).split_whitespace().nth(1),
        Some("in")
    );
    assert_eq!(pm.cmd(&["exec", "mctl-d", "sh", "-c", "exit 4"]).status.code(), Some(4));
    assert_eq!(pm.ok(&["exec", "-t", "mctl-d", "tty"]).trim(), "/dev/pts/0");
    pm.ok(&["pause", "mctl-d"]);
    assert_eq!(pm.ok(&["inspect", "--format", "{{.State.Status}}", "mctl-d"]).trim(), "paused");
    pm.ok(&["unpause", "mctl-d"]);
    assert!(pm.ok(&["top", "mctl-d"]).contains("sleep 300"));
    let ps = pm.ok(&["ps", "--format", "{{.Names}} {{.Status}}"]);
    assert!(ps.lines().any(|l| l.starts_with("mctl-d Up")), "podman ps:\n{ps}");
    let inspect = pm.ok(&["inspect", "--format", "{{.State.Status}} {{.OCIRuntime}}", "mctl-d"]);
    assert_eq!(inspect.trim(), format!("running {}", runc_bin()));
    let listed = stdout(&machinectl(&bus, &["list", "--no-legend"]));
    let line = listed
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{id} not in machinectl list:\n{listed}"));
    assert!(line.contains("container") && line.contains("podman"), "{line}");
    let mut ours = mctl();
    ours.env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address).stdin(Stdio::null());
    let listed = stdout(&output_ok(ours, &["list"]));
    assert!(listed.lines().any(|l| l.starts_with(&id) && l.contains("podman")), "mctl list:\n{listed}");
    pm.ok(&["stop", "--time", "1", "mctl-d"]);
    assert_eq!(pm.ok(&["inspect", "--format", "{{.State.Status}}", "mctl-d"]).trim(), "exited");
    pm.ok(&["rm", "mctl-d"]);
    let listed = stdout(&machinectl(&bus, &["list", "--no-legend"]));
    assert!(!listed.contains(&id), "the container stays listed after podman removed it:\n{listed}");
    let cg = format!("libpod-{id}");
    let left: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|h| h.path().join("libpod_parent").join(&cg))
        .chain([PathBuf::from("/sys/fs/cgroup/unified/libpod_parent").join(&cg)])
        .filter(|p| p.exists())
        .collect();
    assert!(left.is_empty(), "the container's cgroups outlive it: {left:?}");
    drop(pm);
    let parents: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .flat_map(|h| [h.path().join("libpod_parent"), h.path().join("unified/libpod_parent")])
        .chain([PathBuf::from("/sys/fs/cgroup/libpod_parent")])
        .filter(|p| p.exists())
        .collect();
    assert!(parents.is_empty(), "podman's cgroup parent left behind: {parents:?}");
}

/// A containerd of the test's own: root, state and sockets in the test's directory, in a mount
/// namespace whose `/run` is a fresh tmpfs (shims put their sockets and ctr its fifos under
/// `/run/containerd`, which the host does not get). Its containers live in one namespace,
/// whose cgroups are `/mctl-tests-ctd/<id>`.
struct Containerd {
    dir: tempfile::TempDir,
    child: std::process::Child,
}

const CTD_NS: &str = "mctl-tests-ctd";

impl Containerd {
    fn start(bus: &str) -> Containerd {
        let dir = scratch();
        let d = dir.path().display();
        std::fs::write(
            dir.path().join("config.toml"),
            format!(
                "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\naddress = \"{d}/c.sock\"\n[ttrpc]\naddress = \"{d}/c.sock.ttrpc\"\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("containerd.log")).unwrap();
        let child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c"])
            .arg("mount -t tmpfs tmpfs /run && exec containerd --config \"$1\"")
            .arg("sh")
            .arg(dir.path().join("config.toml"))
            .env("DBUS_SYSTEM_BUS_ADDRESS", bus)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let ctd = Containerd { dir, child };
        assert!(
            wait_until(Duration::from_secs(20), || ctd.ctr(&["version"]).status.success()),
            "containerd did not start: {}",
            std::fs::read_to_string(ctd.dir.path().join("containerd.log")).unwrap_or_default()
        );
        ctd
    }

    /// `ctr ARGS` in containerd's mount namespace (where the fifos are).
    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("timeout")
            .args(["120", "nsenter", "-t", &self.child.id().to_string(), "-m", "ctr", "-a"])
            .arg(self.dir.path().join("c.sock"))
            .args(["-n", CTD_NS])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.ctr(args);
        assert!(
            o.status.success(),
            "ctr {args:?} failed: {}{}",
            stderr(&o),
            std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
        );
        stdout(&o)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Whatever a failed test left: tasks, containers, then containerd and its shims.
        for id in stdout(&self.ctr(&["containers", "ls", "-q"])).lines() {
            let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
            let _ = self.ctr(&["task", "delete", "--force", id]);
            let _ = self.ctr(&["containers", "delete", id]);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let sock = self.dir.path().join("c.sock").display().to_string();
        for p in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else { continue };
            let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&sock) {
                // SAFETY: kill(2) with a pid read from /proc; a shim of this test's containerd.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        for h in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
            let _ = std::fs::remove_dir(h.path().join(CTD_NS));
            let _ = std::fs::remove_dir(h.path().join("unified").join(CTD_NS));
        }
        let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(CTD_NS));
    }
}

#[test]
fn containerd_runs_tasks_with_mctl_runc() {
    let bus_dir = scratch();
    let bus = TestBus::start(bus_dir.path());
    let _mctld = Mctld::start(&bus, bus_dir.path(), true);
    let ctd = Containerd::start(&bus.address);
    // An OCI image of the busybox tree, made with umoci and imported.
    let layout = ctd.dir.path().join("layout");
    let umoci = |args: &[&str]| {
        let st = Command::new("umoci").args(args).stdout(Stdio::null()).status().unwrap();
        assert!(st.success(), "umoci {args:?}");
    };
    let l = format!("{}:v1", layout.display());
    let unpacked = ctd.dir.path().join("unpacked");
    umoci(&["init", "--layout", layout.to_str().unwrap()]);
    umoci(&["new", "--image", &l]);
    umoci(&["unpack", "--image", &l, unpacked.to_str().unwrap()]);
    let st = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", busybox_tree().display()))
        .arg(unpacked.join("rootfs"))
        .status()
        .unwrap();
    assert!(st.success());
    umoci(&["repack", "--image", &l, unpacked.to_str().unwrap()]);
    let tar = ctd.dir.path().join("image.tar");
    assert!(
        Command::new("tar").arg("-C").arg(&layout).arg("-cf").arg(&tar).arg(".").status().unwrap().success()
    );
    ctd.ok(&["image", "import", "--base-name", "example.org/bb", tar.to_str().unwrap()]);
    let runtime = ["--runc-binary", runc_bin()];

    // run --rm: output and exit status come back through the shim.
    let o = ctd.ctr(
        &[
            &["run", "--rm"],
            &runtime[..],
            &["example.org/bb:v1", "ctd-once", "sh", "-c", "echo hi from $$; exit 3"],
        ]
        .concat(),
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "hi from 1", "the command is its pid namespace's init");

    // A detached task: exec into it, list it, kill and delete it.
    ctd.ok(&[&["run", "-d"], &runtime[..], &["example.org/bb:v1", "ctd-d", "sleep", "300"]].concat());
    assert!(ctd.ok(&["task", "ls"]).lines().any(|l| l.starts_with("ctd-d") && l.contains("RUNNING")));
    let o = ctd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "ctd-d",
        "sh",
        "-c",
        "echo in; cat /proc/1/cmdline; exit 5",
    ]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert_eq!(stdout(&o), "in\nsleep\x00300\x00");
    let listed = stdout(&machinectl(&bus, &["list", "--no-legend"]));
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("ctd-d ") && l.contains("container") && l.contains("containerd")),
        "ctd-d not in machinectl list:\n{listed}"
    );
    // The shim's runtime root holds mctl-runc's state.
    assert!(ctd.ok(&["task", "ps", "ctd-d"]).lines().count() >= 2);
    ctd.ok(&["task", "kill", "-s", "SIGKILL", "ctd-d"]);
    assert!(wait_until(Duration::from_secs(10), || ctd
        .ok(&["task", "ls"])
        .lines()
        .any(|l| l.starts_with("ctd-d") && l.contains("STOPPED"))));
    ctd.ok(&["task", "delete", "ctd-d"]);
    ctd.ok(&["containers", "delete", "ctd-d"]);
    let listed = stdout(&machinectl(&bus, &["list", "--no-legend"]));
    assert!(!listed.contains("ctd-d"), "the task stays listed after containerd deleted it:\n{listed}");
    for id in ["ctd-once", "ctd-d"] {
        let left: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
            .unwrap()
            .flatten()
            .flat_map(|h| [h.path().join(CTD_NS).join(id), h.path().join("unified").join(CTD_NS).join(id)])
            .filter(|p| p.exists())
            .collect();
        assert!(left.is_empty(), "cgroups of {id} outlive it: {left:?}");
    }
}
