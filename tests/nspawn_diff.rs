//! systemd-nspawn itself as the reference: the same probe runs under `systemd-nspawn` and under
//! `mctl run` on the same tree, and what the payload sees is compared. Where mctl differs on
//! purpose, the difference is listed here with its reason; anything else that differs fails.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;

/// What the payload reports: one `KEY VALUE` line each, `mount POINT TYPE ro|rw` per mount.
const PROBE: &str = r#"
for c in CapInh CapPrm CapEff CapBnd CapAmb NoNewPrivs Seccomp; do
    echo "$c $(awk -v k="$c:" '$1 == k { print $2 }' /proc/self/status)"
done
echo "dev $(ls /dev | tr '\n' ' ')"
echo "runhost $(ls /run/host | tr '\n' ' ')"
echo "env $(env | cut -d= -f1 | grep -v -e '^SHLVL$' -e '^PWD$' -e '^_$' | sort | tr '\n' ' ')"
echo "container $container"
echo "hostname $(hostname)"
echo "bootid $(cat /proc/sys/kernel/random/boot_id)"
awk '{ for (i = 7; i <= NF; i++) if ($i == "-") { print "mount", $5, $(i + 1), ($6 ~ /^ro/ ? "ro" : "rw") } }' /proc/self/mountinfo
"#;

/// nspawn with `--keep-unit` creates `payload` and `supervisor` in the cgroup it starts in; it
/// runs in cgroups the test makes (and removes) rather than in the host's root cgroups.
struct NspawnCgroups(Vec<PathBuf>);

impl NspawnCgroups {
    fn new() -> NspawnCgroups {
        // One per test: the tests of this file run in parallel in one process.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("mctl-test-nspawn-{}-{n}", std::process::id());
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let path_of = |ctl: &str| {
            own.lines().find_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, c, p) = (f.next()?, f.next()?, f.next()?);
                (c == ctl).then(|| p.trim_start_matches('/').to_owned())
            })
        };
        let mut dirs = Vec::new();
        // Hybrid: cgroup2 at unified plus the named systemd hierarchy; pure v2: one hierarchy.
        let unified = if Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists() {
            Path::new("/sys/fs/cgroup/unified")
        } else {
            Path::new("/sys/fs/cgroup")
        };
        dirs.push(unified.join(path_of("").unwrap()).join(&name));
        if let Some(rel) = path_of("name=systemd") {
            dirs.push(Path::new("/sys/fs/cgroup/systemd").join(rel).join(&name));
        }
        for d in &dirs {
            std::fs::create_dir(d).unwrap();
        }
        NspawnCgroups(dirs)
    }

    /// The `cgroup.procs` files to join, space-separated.
    fn procs_files(&self) -> String {
        let cgs: Vec<String> = self.0.iter().map(|d| d.join("cgroup.procs").display().to_string()).collect();
        cgs.join(" ")
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("sh")
            .args(["-c", "for p in $CGS; do echo $$ > $p; done; exec systemd-nspawn \"$@\"", "sh"])
            .args(args)
            .env("CGS", self.procs_files())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

impl Drop for NspawnCgroups {
    fn drop(&mut self) {
        for d in &self.0 {
            for sub in ["payload", "supervisor"] {
                let _ = std::fs::remove_dir(d.join(sub));
            }
            let _ = std::fs::remove_dir(d);
        }
    }
}

fn parse(out: &str) -> (BTreeMap<String, String>, BTreeMap<String, (String, String)>) {
    let mut keys = BTreeMap::new();
    let mut mounts = BTreeMap::new();
    for line in out.lines() {
        let mut it = line.splitn(2, ' ');
        let (k, v) = (it.next().unwrap_or(""), it.next().unwrap_or("").trim().to_owned());
        if k == "mount" {
            let f: Vec<&str> = v.split(' ').collect();
            // nspawn's propagation setup lists some points twice (under different parents);
            // the read-only one is what the payload gets (checked by writing).
            let e = mounts.entry(f[0].to_owned()).or_insert((f[1].to_owned(), f[2].to_owned()));
            if f[2] == "ro" {
                e.1 = "ro".to_owned();
            }
        } else if !k.is_empty() {
            keys.insert(k.to_owned(), v);
        }
    }
    (keys, mounts)
}

fn words(s: &str) -> BTreeSet<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

/// `mctl run -q --register=no OPTS -D DIR -- CMD`.
fn mctl_run(dir: &Path, opts: &[&str], cmd: &[&str]) -> Output {
    mctl()
        .args(["run", "-q", "--register=no"])
        .args(opts)
        .arg("-D")
        .arg(dir)
        .arg("--")
        .args(cmd)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

impl NspawnCgroups {
    /// `systemd-nspawn -q --register=no --keep-unit OPTS -D DIR CMD`, in the test's cgroups.
    fn run_like(&self, dir: &Path, opts: &[&str], cmd: &[&str]) -> Output {
        let mut args = vec!["-q", "--register=no", "--keep-unit"];
        args.extend(opts);
        args.extend(["-D", dir.to_str().unwrap()]);
        args.extend(cmd);
        self.run(&args)
    }
}

#[test]
fn a_command_sees_what_it_sees_under_nspawn() {
    let s = scratch();
    let dir = copy_tree(busybox_tree(), s.path(), "nsdiff");
    std::fs::write(dir.join("probe.sh"), PROBE).unwrap();
    let cgroups = NspawnCgroups::new();
    let n = cgroups.run(&[
        "-q",
        "--register=no",
        "--keep-unit",
        "--as-pid2",
        "-D",
        dir.to_str().unwrap(),
        "/bin/sh",
        "/probe.sh",
    ]);
    assert!(n.status.success(), "nspawn failed: {}", stderr(&n));
    let m = mctl()
        .args(["run", "-q", "--register=no", "--as-pid2", "-D"])
        .arg(&dir)
        .args(["--", "/bin/sh", "/probe.sh"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(m.status.success(), "mctl failed: {}", stderr(&m));
    let (nk, nm) = parse(&stdout(&n));
    let (mk, mm) = parse(&stdout(&m));

    // Privileges: all five capability sets, no_new_privs, the filter mode.
    for k in
        ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp", "container", "hostname"]
    {
        let want = if k == "container" { "mctl" } else { nk[k].as_str() };
        if k == "container" {
            assert_eq!(nk[k], "systemd-nspawn");
        }
        assert_eq!(mk[k], want, "{k}: nspawn {:?}, mctl {:?}", nk[k], mk[k]);
    }
    assert_eq!(words(&mk["env"]), words(&nk["env"]), "environment variable names");
    // A fresh boot id, not the host's.
    let host_boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_ne!(mk["bootid"], host_boot_id.trim());
    assert_ne!(nk["bootid"], host_boot_id.trim());

    // /dev: nspawn creates /dev/console also without a terminal (its console defaults to
    // read-only there, mctl's to pipe); mctl adds the /dev/hugepages mount point systemd's
    // dev-hugepages.mount wants.
    let (nd, md) = (words(&nk["dev"]), words(&mk["dev"]));
    let missing: Vec<_> = nd.difference(&md).filter(|d| *d != "console").collect();
    let extra: Vec<_> = md.difference(&nd).filter(|d| *d != "hugepages").collect();
    assert!(missing.is_empty() && extra.is_empty(), "/dev: missing {missing:?}, extra {extra:?}");

    // /run/host: nspawn's `incoming` is where machinectl bind/copy-to propagate mounts; mctl's
    // manager enters the machine's namespaces for that instead.
    let (nh, mh) = (words(&nk["runhost"]), words(&mk["runhost"]));
    let missing: Vec<_> = nh.difference(&mh).filter(|d| *d != "incoming").collect();
    assert!(missing.is_empty() && mh.is_subset(&nh), "/run/host: nspawn {nh:?}, mctl {mh:?}");

    // Mounts: the same points with the same type and writability, except:
    let differs_on_purpose = |point: &str| {
        // The guest sees a plain cgroup2 tree on hybrid hosts too (what systemd boots best with;
        // nspawn shows the v1 hierarchies read-only).
        point.starts_with("/sys/fs/cgroup")
            || point == "/run/host/incoming"
            // mctl masks more of /proc than nspawn 252 (kernel addresses, keys, timers).
            || ["/proc/kallsyms", "/proc/keys", "/proc/timer_list", "/proc/kmsg"].contains(&point)
    };
    for (point, (ty, rw)) in &nm {
        if differs_on_purpose(point) {
            continue;
        }
        match mm.get(point) {
            Some((mty, mrw)) => assert_eq!((mty, mrw), (ty, rw), "mount {point}"),
            None => panic!("mount {point} ({ty} {rw}) is missing under mctl; mctl has {mm:?}"),
        }
    }
    for point in mm.keys() {
        assert!(nm.contains_key(point) || differs_on_purpose(point), "mount {point} only under mctl");
    }
    assert_eq!(mm["/proc/kmsg"].1, "ro");
    assert_eq!(mm["/sys/fs/cgroup"].0, "cgroup2");

    // A second run gets a boot id of its own.
    let again = mctl()
        .args(["run", "-q", "--register=no", "-D"])
        .arg(&dir)
        .args(["--", "cat", "/proc/sys/kernel/random/boot_id"])
        .output()
        .unwrap();
    assert_ne!(stdout(&again).trim(), mk["bootid"]);
    assert_no_leaks("nsdiff", &dir);
}

/// The escape probes of `tests/security.rs` under nspawn and under mctl on the Debian tree: no
/// attack gets through under mctl that does not under nspawn 252's defaults.
#[test]
fn no_attack_gets_further_than_under_nspawn() {
    let escape = Path::new(env!("CARGO_BIN_EXE_mctl")).parent().unwrap().join("examples/escape");
    assert!(escape.exists(), "{} is missing (cargo test builds examples)", escape.display());
    let s = scratch();
    let dir = copy_tree(debian_tree(), s.path(), "nsesc");
    let bind = format!("{}:/run/escape", escape.display());
    let dev = {
        use std::os::unix::fs::MetadataExt;
        let d = std::fs::metadata("/").unwrap().dev();
        format!("{}:{}", nix::sys::stat::major(d), nix::sys::stat::minor(d))
    };
    let cgroups = NspawnCgroups::new();
    let n = cgroups.run(&[
        "-q",
        "--register=no",
        "--keep-unit",
        "--bind-ro",
        &bind,
        "-D",
        dir.to_str().unwrap(),
        "/run/escape",
        "all",
        &dev,
    ]);
    let m = mctl()
        .args(["run", "-q", "--register=no", "--bind-ro", &bind, "-D"])
        .arg(&dir)
        .args(["--", "/run/escape", "all", &dev])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (nout, mout) = (stdout(&n), stdout(&m));
    assert!(mout.lines().count() >= 12, "mctl: {mout}\n{}", stderr(&m));
    for line in mout.lines() {
        let probe = line.split(':').next().unwrap();
        let under_nspawn = nout.lines().find(|l| l.starts_with(&format!("{probe}:"))).unwrap_or("");
        assert!(
            line.contains(": denied") || under_nspawn.contains("ESCAPED"),
            "{probe} gets through under mctl but not under nspawn:\nmctl:   {line}\nnspawn: {under_nspawn}"
        );
    }
    assert_no_leaks("nsesc", &dir);
}

/// The process attributes nspawn sets on the payload (resource limits, OOM score adjustment,
/// CPU affinity, personality, ambient capabilities): the same options give the same view, and
/// the values nspawn refuses are refused.
#[test]
fn process_attributes_match_nspawn() {
    const ATTRS: &str = r#"
awk '/^Max open files|^Max core file size|^Max address space/ { print "limit", $0 }' /proc/self/limits
echo "oom $(cat /proc/self/oom_score_adj)"
awk '$1 == "Cpus_allowed_list:" { print "cpus", $2 } $1 == "CapAmb:" { print "ambient", $2 } $1 == "CapEff:" { print "effective", $2 }' /proc/self/status
echo "arch $(uname -m)"
"#;
    let s = scratch();
    // Debian's tree: nspawn resolves --user with getent inside, which busybox lacks.
    let dir = copy_tree(debian_tree(), s.path(), "nsattrs");
    std::fs::write(dir.join("attrs.sh"), ATTRS).unwrap();
    let cgroups = NspawnCgroups::new();
    let personality = if std::env::consts::ARCH == "x86_64" { "x86" } else { "" };
    let mut opts = vec![
        "--rlimit=RLIMIT_NOFILE=512:1024",
        "--rlimit=CORE=1M",
        "--rlimit=RLIMIT_AS=1G:infinity",
        "--oom-score-adjust=500",
        "--cpu-affinity=0",
        "--ambient-capability=CAP_NET_RAW,CAP_CHOWN",
        "--no-pager",
    ];
    let personality_opt = format!("--personality={personality}");
    if !personality.is_empty() {
        opts.push(&personality_opt);
    }
    for user in [None, Some("daemon")] {
        let mut o = opts.clone();
        let user_opt = user.map(|u| format!("--user={u}"));
        if let Some(u) = &user_opt {
            o.push(u);
        }
        let n = cgroups.run_like(&dir, &o, &["/bin/sh", "/attrs.sh"]);
        assert!(n.status.success(), "nspawn failed: {}", stderr(&n));
        let m = mctl_run(&dir, &o, &["/bin/sh", "/attrs.sh"]);
        assert!(m.status.success(), "mctl failed: {}", stderr(&m));
        let (nout, mout) = (stdout(&n), stdout(&m));
        let lines = |s: &str| {
            s.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect::<Vec<_>>()
        };
        assert_eq!(lines(&mout), lines(&nout), "as {user:?}:\nmctl:\n{mout}\nnspawn:\n{nout}");
        assert!(mout.contains("oom 500") && mout.contains("cpus 0"), "{mout}");
        assert!(mout.contains("ambient 0000000000002001"), "{mout}");
        if !personality.is_empty() {
            assert!(mout.contains("arch i686"), "{mout}");
        }
    }

    // --suppress-sync: the sync calls succeed without syncing, O_SYNC/O_DSYNC opens fail.
    const SYNC: &str = r#"use Fcntl; use IO::Handle;
pipe(R, W); print "fsync-pipe ", (W->sync ? "ok" : "err $!"), "\n";
print "open-osync ", (sysopen(F, "/tmp/x", O_WRONLY|O_CREAT|O_SYNC) ? "ok" : "err $!"), "\n";
print "open-odsync ", (sysopen(G, "/tmp/y", O_WRONLY|O_CREAT|O_DSYNC) ? "ok" : "err $!"), "\n";
print "open-plain ", (sysopen(H, "/tmp/z", O_WRONLY|O_CREAT) ? "ok" : "err $!"), "\n";
"#;
    std::fs::write(dir.join("sync.pl"), SYNC).unwrap();
    for value in ["yes", "no"] {
        let opt = format!("--suppress-sync={value}");
        let n = cgroups.run_like(&dir, &[&opt], &["perl", "/sync.pl"]);
        let m = mctl_run(&dir, &[&opt], &["perl", "/sync.pl"]);
        assert!(n.status.success() && m.status.success(), "{}{}", stderr(&n), stderr(&m));
        // nspawn's console is a pty here (CRLF line ends).
        assert_eq!(stdout(&m), stdout(&n).replace("\r\n", "\n"), "{opt}");
        let suppressed = "fsync-pipe ok\nopen-osync err Invalid argument\nopen-odsync err Invalid argument\nopen-plain ok\n";
        assert_eq!(stdout(&m) == suppressed, value == "yes", "{opt}: {}", stdout(&m));
    }

    // What nspawn refuses, mctl refuses, before starting anything.
    for bad in [
        "--rlimit=RLIMIT_NOFILE=4096:1024",
        "--rlimit=RLIMIT_FROBS=1",
        "--rlimit=RLIMIT_NOFILE=lots",
        "--oom-score-adjust=2000",
        "--oom-score-adjust=high",
        "--cpu-affinity=a-b",
        "--personality=vax",
        "--ambient-capability=CAP_FROB",
        "--suppress-sync=maybe",
    ] {
        let n = cgroups.run_like(&dir, &[bad], &["/bin/true"]);
        assert!(!n.status.success(), "nspawn accepted {bad}");
        let m = mctl_run(&dir, &[bad], &["/bin/true"]);
        assert!(!m.status.success(), "mctl accepted {bad}");
        assert!(stderr(&m).contains(bad.split('=').next().unwrap()), "{bad}: {}", stderr(&m));
    }
    // --ambient-capability with boot: refused by both.
    let n = cgroups.run_like(&dir, &["-b", "--ambient-capability=CAP_CHOWN"], &[]);
    assert!(!n.status.success());
    let m = mctl()
        .args(["boot", "-q", "--register=no", "--ambient-capability=CAP_CHOWN", "-D"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        !m.status.success() && stderr(&m).contains("--ambient-capability cannot be used with boot"),
        "{}",
        stderr(&m)
    );
    // --capability=help lists the names, as nspawn's does.
    let n = cgroups.run(&["--capability=help"]);
    let m = mctl().args(["run", "--capability=help"]).output().unwrap();
    assert!(m.status.success() && stdout(&m).lines().any(|l| l == "cap_net_admin"), "{}", stderr(&m));
    let theirs: BTreeSet<String> = words(&stdout(&n));
    let ours: BTreeSet<String> = words(&stdout(&m));
    assert!(
        theirs.is_subset(&ours),
        "nspawn lists {:?} that mctl does not",
        theirs.difference(&ours).collect::<Vec<_>>()
    );
    assert_no_leaks("nsattrs", &dir);
}

/// `--inaccessible`: the same empty, mode-0, read-only nodes as nspawn's over a file and a
/// directory; a path the tree lacks fails under both.
#[test]
fn inaccessible_paths_match_nspawn() {
    const MASKS: &str = r#"
for p in /secret /secretdir; do
    echo "$p $(stat -c '%a %F' $p) bytes=$(cat $p 2>/dev/null | wc -c) entries=$(ls -A $p/ 2>/dev/null | wc -l)"
done
echo "write $(echo x 2>&1 > /secret | sed 's/.*: //')"
awk '$5 == "/secret" || $5 == "/secretdir" { print "mount", $5, ($6 ~ /^ro/ ? "ro" : "rw") }' /proc/self/mountinfo | sort -u
"#;
    let s = scratch();
    let dir = copy_tree(busybox_tree(), s.path(), "nsmask");
    std::fs::write(dir.join("masks.sh"), MASKS).unwrap();
    std::fs::write(dir.join("secret"), "the host's secret\n").unwrap();
    std::fs::create_dir(dir.join("secretdir")).unwrap();
    std::fs::write(dir.join("secretdir/file"), "x").unwrap();
    let cgroups = NspawnCgroups::new();
    let opts = ["--inaccessible=/secret", "--inaccessible=/secretdir"];
    let m = mctl_run(&dir, &opts, &["/bin/sh", "/masks.sh"]);
    assert!(m.status.success(), "mctl failed: {}", stderr(&m));
    // nspawn 252 takes its nodes from the host's /run/systemd/inaccessible, which only a systemd
    // PID 1 makes: on a systemd host the outputs are compared; here, its manual's words are
    // ("an empty file node of the same type ... the most restrictive access mode", read-only).
    if Path::new("/run/systemd/inaccessible/reg").exists() {
        let n = cgroups.run_like(&dir, &opts, &["/bin/sh", "/masks.sh"]);
        assert!(n.status.success(), "nspawn failed: {}", stderr(&n));
        assert_eq!(stdout(&m), stdout(&n), "mctl:\n{}\nnspawn:\n{}", stdout(&m), stdout(&n));
    }
    assert_eq!(
        stdout(&m),
        "/secret 0 regular empty file bytes=0 entries=0\n/secretdir 0 directory bytes=0 entries=0\nwrite Read-only file system\n\
         mount /secret ro\nmount /secretdir ro\n"
    );
    // The tree itself is untouched.
    assert_eq!(std::fs::read_to_string(dir.join("secret")).unwrap(), "the host's secret\n");

    let n = cgroups.run_like(&dir, &["--inaccessible=/nonexistent"], &["/bin/true"]);
    assert!(!n.status.success(), "nspawn masked a missing path"); // (here for want of its nodes, too)
    let m = mctl_run(&dir, &["--inaccessible=/nonexistent"], &["/bin/true"]);
    assert!(!m.status.success() && stderr(&m).contains("make /nonexistent inaccessible"), "{}", stderr(&m));
    let m = mctl()
        .args(["run", "-q", "--inaccessible=relative", "-D"])
        .arg(&dir)
        .arg("/bin/true")
        .output()
        .unwrap();
    assert!(!m.status.success() && stderr(&m).contains("must be an absolute path"), "{}", stderr(&m));
    assert_no_leaks("nsmask", &dir);
}

/// `--set-credential` and `--load-credential`: the same files, modes and mount as nspawn's, the
/// same `$CREDENTIALS_DIRECTORY`, and the same refusals.
#[test]
fn credentials_match_nspawn() {
    const CREDS: &str = r#"
echo "dir $CREDENTIALS_DIRECTORY"
cd /run/host/credentials && for f in . *; do echo "$f $(stat -c '%a %U %s' $f) $(od -An -c $f 2>/dev/null | tr -s ' ')"; done
# nspawn's propagation lists the point twice; the read-only one is what the payload gets.
awk '$5 == "/run/host/credentials" { t = $(NF-2); if ($6 ~ /^ro/) ro = 1 } END { print "mount", t, (ro ? "ro" : "rw") }' /proc/self/mountinfo
"#;
    let s = scratch();
    let dir = copy_tree(busybox_tree(), s.path(), "nscreds");
    std::fs::write(dir.join("creds.sh"), CREDS).unwrap();
    let file = s.path().join("cred.txt");
    std::fs::write(&file, "from a file").unwrap();
    let load = format!("--load-credential=filed:{}", file.display());
    let opts = ["--set-credential=foo:bar\\nbaz\\x21", &load];
    let cgroups = NspawnCgroups::new();
    let n = cgroups.run_like(&dir, &opts, &["/bin/sh", "/creds.sh"]);
    assert!(n.status.success(), "nspawn failed: {}", stderr(&n));
    let m = mctl_run(&dir, &opts, &["/bin/sh", "/creds.sh"]);
    assert!(m.status.success(), "mctl failed: {}", stderr(&m));
    assert_eq!(
        stdout(&m),
        stdout(&n).replace("\r\n", "\n"),
        "mctl:\n{}\nnspawn:\n{}",
        stdout(&m),
        stdout(&n)
    );
    assert!(stdout(&m).contains("foo 400 root 8  b a r \\n b a z !"), "{}", stdout(&m));
    assert!(stdout(&m).contains("mount ramfs ro"), "{}", stdout(&m));
    // Under -U the machine's root owns them.
    let m = mctl_run(
        &dir,
        &["-U", "--private-users=1966080", "-x"].iter().chain(opts.iter()).copied().collect::<Vec<_>>(),
        &["/bin/sh", "/creds.sh"],
    );
    assert!(m.status.success() && stdout(&m).contains("foo 400 root 8"), "{}{}", stdout(&m), stderr(&m));

    for bad in ["--set-credential=novalue", "--set-credential=a/b:x", "--load-credential=k:/nonexistent/file"]
    {
        let n = cgroups.run_like(&dir, &[bad], &["/bin/true"]);
        assert!(!n.status.success(), "nspawn accepted {bad}");
        let m = mctl_run(&dir, &[bad], &["/bin/true"]);
        assert!(!m.status.success(), "mctl accepted {bad}");
        assert!(stderr(&m).contains("credential"), "{bad}: {}", stderr(&m));
    }
    assert_no_leaks("nscreds", &dir);
}

/// What the payload sees at /etc/resolv.conf and /etc/localtime: the kind of file, its target
/// or a digest of its bytes, and whether (and how) something is mounted there.
const ETC_PROBE: &str = r#"
for f in /etc/resolv.conf /etc/localtime; do
    if [ -L $f ]; then t="link:$(readlink $f)"; elif [ -f $f ]; then t="file:$(md5sum < $f | cut -c1-8)"
    elif [ -e $f ]; then t=other; else t=missing; fi
    m=$(awk -v p=$f '$5 == p { m = ($6 ~ /^ro/ ? "ro" : "rw") } END { print m }' /proc/self/mountinfo)
    echo "$f $t mount=${m:-none}"
done
"#;

/// The same two files as the tree keeps them afterwards.
fn etc_in_tree(dir: &Path) -> String {
    ["etc/resolv.conf", "etc/localtime"]
        .iter()
        .map(|f| {
            let p = dir.join(f);
            let kind = match std::fs::symlink_metadata(&p) {
                Err(_) => "missing".to_owned(),
                Ok(m) if m.file_type().is_symlink() => {
                    format!("link:{}", std::fs::read_link(&p).unwrap().display())
                }
                Ok(m) => format!("file:{}", m.len()),
            };
            format!("{f} {kind}\n")
        })
        .collect()
}

/// `--resolv-conf` and `--timezone`, every mode and the auto defaults (writable, read-only,
/// private network; an image with a symlinked resolv.conf; with and without the host's zone):
/// what the payload sees and what the tree keeps afterwards are nspawn's.
#[test]
fn resolv_conf_and_timezone_match_nspawn() {
    let s = scratch();
    let base = copy_tree(busybox_tree(), s.path(), "nsetc");
    // A variant with the host's zone file and a resolv.conf that is a symlink (as under
    // systemd-resolved): copy- keeps such a link, replace- does not.
    let zoned = s.path().join("nsetc-zoned");
    assert!(Command::new("cp").arg("-a").arg(&base).arg(&zoned).status().unwrap().success());
    let zone = std::fs::canonicalize("/etc/localtime").unwrap();
    let zone_rel = zone.strip_prefix("/").unwrap();
    std::fs::create_dir_all(zoned.join(zone_rel).parent().unwrap()).unwrap();
    std::fs::copy(&zone, zoned.join(zone_rel)).unwrap();
    std::os::unix::fs::symlink("../run/resolved/resolv.conf", zoned.join("etc/resolv.conf")).unwrap();
    let cgroups = NspawnCgroups::new();
    let cases: &[(&Path, &[&str])] = &[
        (&base, &[]),
        (&base, &["--read-only"]),
        (&base, &["--private-network"]),
        (&zoned, &[]),
        (&zoned, &["--read-only"]),
        (&zoned, &["--resolv-conf=copy-host", "--timezone=copy"]),
        (&zoned, &["--resolv-conf=replace-host", "--timezone=bind"]),
        (&zoned, &["--resolv-conf=bind-host", "--timezone=symlink"]),
        (&zoned, &["--resolv-conf=delete", "--timezone=delete"]),
        (&zoned, &["--resolv-conf=off", "--timezone=off"]),
        (&zoned, &["--resolv-conf=replace-static", "--timezone=auto"]),
        (&base, &["--resolv-conf=bind-static", "--timezone=symlink"]),
        (&base, &["--resolv-conf=copy-uplink", "--timezone=copy"]),
        (&base, &["--resolv-conf=bind-stub", "--read-only"]),
    ];
    for (i, (tree, opts)) in cases.iter().enumerate() {
        let (n_dir, m_dir) = (s.path().join(format!("n{i}")), s.path().join(format!("m{i}")));
        for d in [&n_dir, &m_dir] {
            assert!(Command::new("cp").arg("-a").arg(tree).arg(d).status().unwrap().success());
            std::fs::write(d.join("etc-probe.sh"), ETC_PROBE).unwrap();
        }
        let n = cgroups.run_like(&n_dir, opts, &["/bin/sh", "/etc-probe.sh"]);
        assert!(n.status.success(), "nspawn {opts:?}: {}", stderr(&n));
        let m = mctl_run(&m_dir, opts, &["/bin/sh", "/etc-probe.sh"]);
        assert!(m.status.success(), "mctl {opts:?}: {}", stderr(&m));
        assert_eq!(stdout(&m), stdout(&n).replace("\r\n", "\n"), "what the payload sees with {opts:?}");
        assert_eq!(etc_in_tree(&m_dir), etc_in_tree(&n_dir), "what the tree keeps with {opts:?}");
        assert_no_leaks(&format!("m{i}"), &m_dir);
    }
    // The same refusals and lists.
    for bad in
        ["--resolv-conf=bogus", "--resolv-conf=copy", "--resolv-conf=", "--timezone=utc", "--timezone="]
    {
        let n = cgroups.run_like(&base, &[bad], &["/bin/true"]);
        assert!(!n.status.success(), "nspawn accepted {bad}");
        let m = mctl_run(&base, &[bad], &["/bin/true"]);
        assert!(!m.status.success(), "mctl accepted {bad}");
        assert!(stderr(&m).contains("Failed to parse /etc/"), "{bad}: {}", stderr(&m));
    }
    for help in ["--resolv-conf=help", "--timezone=help"] {
        let n = Command::new("systemd-nspawn").arg(help).output().unwrap();
        let m = mctl().args(["run", help]).output().unwrap();
        assert!(m.status.success(), "{}", stderr(&m));
        assert_eq!(stdout(&m), stdout(&n), "{help}");
    }
}

/// Every entry of a tree with its type, mode, owner, size and target or contents (no times).
fn tree_listing(root: &Path) -> BTreeMap<PathBuf, String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_owned()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let what = if m.file_type().is_symlink() {
                format!("-> {}", std::fs::read_link(&p).unwrap().display())
            } else if m.is_file() {
                format!("{:?}", std::fs::read(&p).unwrap().iter().map(|b| u64::from(*b)).sum::<u64>())
            } else {
                if m.is_dir() {
                    todo.push(p.clone());
                }
                String::new()
            };
            let rel = p.strip_prefix(root).unwrap().to_owned();
            out.insert(rel, format!("{:o} {}:{} {} {what}", m.mode(), m.uid(), m.gid(), m.size()));
        }
    }
    out
}

/// `--template`: a root directory that does not exist is made from the template as nspawn makes
/// it (owners, modes, links), an existing one is left alone, and the same refusals.
#[test]
fn a_template_populates_a_missing_root_as_under_nspawn() {
    let s = scratch();
    let tpl = copy_tree(busybox_tree(), s.path(), "tpl");
    std::fs::write(tpl.join("marker"), "from the template\n").unwrap();
    std::fs::write(tpl.join("home/owned"), "x").unwrap();
    std::os::unix::fs::chown(tpl.join("home/owned"), Some(1000), Some(1000)).unwrap();
    std::fs::set_permissions(tpl.join("home/owned"), std::os::unix::fs::PermissionsExt::from_mode(0o4750))
        .unwrap();
    std::fs::hard_link(tpl.join("marker"), tpl.join("home/marker-link")).unwrap();
    let template = format!("--template={}", tpl.display());
    // The machine's own /etc files left alone, so the trees differ only by the copy.
    let opts = [template.as_str(), "--resolv-conf=off", "--timezone=off"];
    let cgroups = NspawnCgroups::new();
    let (n_dir, m_dir) = (s.path().join("n-new"), s.path().join("m-new"));
    let n = cgroups.run_like(&n_dir, &opts, &["/bin/cat", "/marker"]);
    assert!(n.status.success(), "nspawn: {}", stderr(&n));
    let m = mctl_run(&m_dir, &opts, &["/bin/cat", "/marker"]);
    assert!(m.status.success(), "mctl: {}", stderr(&m));
    assert_eq!(stdout(&m), "from the template\n");
    assert_eq!(stdout(&m), stdout(&n).replace("\r\n", "\n"));
    // nspawn's --link-journal=auto makes /var/log/journal in any tree it runs; mctl has no
    // journal linking.
    let mut theirs = tree_listing(&n_dir);
    theirs.retain(|p, _| !p.starts_with("var/log") || m_dir.join(p).exists());
    let ours = tree_listing(&m_dir);
    let differ: Vec<_> = theirs.iter().filter(|(p, v)| ours.get(*p) != Some(v)).collect();
    let extra: Vec<_> = ours.keys().filter(|p| !theirs.contains_key(*p)).collect();
    assert!(differ.is_empty() && extra.is_empty(), "nspawn's copy has {differ:?}; only mctl's has {extra:?}");
    use std::os::unix::fs::MetadataExt;
    let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
    assert_eq!(ino(&m_dir.join("marker")), ino(&m_dir.join("home/marker-link")), "hard links kept");
    assert!(
        std::fs::read_dir(s.path())
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().starts_with(".#"))
    );

    // An existing directory is not populated again.
    std::fs::write(tpl.join("marker"), "changed\n").unwrap();
    let m = mctl_run(&m_dir, &opts, &["/bin/cat", "/marker"]);
    assert_eq!(stdout(&m), "from the template\n", "{}", stderr(&m));

    // A template that is not there, -x, a directory whose parent is missing.
    for (bad, dir) in [
        (format!("--template={}", s.path().join("nope").display()), "m-bad1"),
        (template.clone(), "m-bad2"),
        (template.clone(), "no-parent/m-bad3"),
    ] {
        let extra: &[&str] = if dir == "m-bad2" { &["-x"] } else { &[] };
        let args: Vec<&str> = std::iter::once(bad.as_str()).chain(extra.iter().copied()).collect();
        let target = s.path().join(dir);
        let n = cgroups.run_like(&target, &args, &["/bin/true"]);
        assert!(!n.status.success(), "nspawn accepted {args:?}");
        let m = mctl_run(&target, &args, &["/bin/true"]);
        assert!(!m.status.success(), "mctl accepted {args:?}");
        assert!(stderr(&m).contains("template"), "{args:?}: {}", stderr(&m));
        assert!(!target.exists(), "{args:?} left {}", target.display());
    }
}

/// Host entries under /var/log/journal for the ids a test uses, removed however it ends.
struct HostJournalEntries(Vec<PathBuf>);

impl Drop for HostJournalEntries {
    fn drop(&mut self) {
        for p in &self.0 {
            if p.is_symlink() {
                let _ = std::fs::remove_file(p);
            } else {
                let _ = std::fs::remove_dir(p);
            }
        }
    }
}

/// `--link-journal` and `-j`: what the host gets under /var/log/journal, what the tree gets and
/// what the payload sees, mode by mode, as under nspawn; and the same refusals.
#[test]
fn link_journal_matches_nspawn() {
    const PROBE: &str = r#"
id=$(cat /etc/machine-id)
echo "journal $(ls /var/log/journal 2>&1 | sed "s/$id/ID/" | tr '\n' ' ')"
awk -v p="/var/log/journal/$id" '$5 == p { print "mount", ($6 ~ /^ro/ ? "ro" : "rw") }' /proc/self/mountinfo
"#;
    let journal = Path::new("/var/log/journal");
    if !journal.is_dir() {
        // Both would only ever skip linking; nothing to compare.
        eprintln!("no /var/log/journal on this host: skipping the comparison");
        return;
    }
    let s = scratch();
    let cgroups = NspawnCgroups::new();
    let fresh_id = || uuid_simple();
    let host_side = |id: &str, tree: &Path| -> String {
        let p = journal.join(id);
        match std::fs::symlink_metadata(&p) {
            Err(_) => "missing".into(),
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(&p).unwrap().display().to_string();
                format!("link {}", target.replace(&tree.display().to_string(), "TREE").replace(id, "ID"))
            }
            Ok(m) if m.is_dir() => "dir".into(),
            Ok(_) => "other".into(),
        }
    };
    let host_id = std::fs::read_to_string("/etc/machine-id").unwrap_or_default().trim().to_owned();
    let cases: &[(&[&str], bool)] = &[
        (&[], false),
        (&["-j"], false),
        (&["--link-journal=guest"], false),
        (&["--link-journal=host"], false),
        (&["--link-journal=try-host"], false),
        (&["--link-journal=no"], false),
        (&["--link-journal=guest"], true),
        (&["--link-journal=try-guest"], true),
    ];
    for (i, (opts, host_ids)) in cases.iter().enumerate() {
        let mut outcome = Vec::new();
        for who in ["n", "m"] {
            let id = if *host_ids && !host_id.is_empty() { host_id.clone() } else { fresh_id() };
            let _cleanup = HostJournalEntries(if *host_ids { vec![] } else { vec![journal.join(&id)] });
            let dir = s.path().join(format!("{who}{i}"));
            assert!(Command::new("cp").arg("-a").arg(busybox_tree()).arg(&dir).status().unwrap().success());
            std::fs::write(dir.join("etc/machine-id"), format!("{id}\n")).unwrap();
            std::fs::write(dir.join("journal-probe.sh"), PROBE).unwrap();
            let cmd = ["/bin/sh", "/journal-probe.sh"];
            let o = if who == "n" { cgroups.run_like(&dir, opts, &cmd) } else { mctl_run(&dir, opts, &cmd) };
            let tree_dir = dir.join("var/log/journal");
            let in_tree: Vec<String> = std::fs::read_dir(&tree_dir)
                .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().replace(&id, "ID")).collect())
                .unwrap_or_else(|_| vec!["no /var/log/journal".into()]);
            outcome.push((
                o.status.success(),
                stdout(&o).replace("\r\n", "\n"),
                host_side(&id, &dir),
                in_tree,
            ));
            if !o.status.success() && who == "m" {
                assert!(stderr(&o).contains("journal"), "{opts:?}: {}", stderr(&o));
            }
            assert_no_leaks(&format!("{who}{i}"), &dir);
        }
        assert_eq!(
            outcome[1], outcome[0],
            "mctl (left) and nspawn (right) with {opts:?}, host ids {host_ids}"
        );
    }
    let n = cgroups.run_like(s.path(), &["--link-journal=sometimes"], &["/bin/true"]);
    let m = mctl_run(s.path(), &["--link-journal=sometimes"], &["/bin/true"]);
    assert!(!n.status.success() && !m.status.success());
    assert!(stderr(&m).contains("Failed to parse link journal mode sometimes"), "{}", stderr(&m));
}

/// A fresh 128-bit id in /etc/machine-id's form.
fn uuid_simple() -> String {
    let bytes = std::fs::read("/proc/sys/kernel/random/uuid").unwrap();
    String::from_utf8(bytes).unwrap().trim().replace('-', "")
}

/// `--network-macvlan` and `--network-ipvlan` of interfaces that are not there, or with a
/// namespace path: refused by both (their links themselves: tests/network.rs).
#[test]
fn macvlan_and_ipvlan_refuse_what_nspawn_refuses() {
    let s = scratch();
    let dir = copy_tree(busybox_tree(), s.path(), "nsvlan");
    let cgroups = NspawnCgroups::new();
    for (opts, needle) in [
        (&["--network-macvlan=mctlnope0"][..], "mctlnope0 does not exist"),
        (&["--network-ipvlan=mctlnope0"][..], "mctlnope0 does not exist"),
        (
            &["--network-macvlan=mctlnope0", "--network-namespace-path=/proc/self/ns/net"][..],
            "cannot be used with",
        ),
    ] {
        let n = cgroups.run_like(&dir, opts, &["/bin/true"]);
        assert!(!n.status.success(), "nspawn accepted {opts:?}");
        let m = mctl_run(&dir, opts, &["/bin/true"]);
        assert!(!m.status.success(), "mctl accepted {opts:?}");
        assert!(stderr(&m).contains(needle), "{opts:?}: {}", stderr(&m));
    }
    assert_no_leaks("nsvlan", &dir);
}

/// nspawn 252 makes `/tmp/nspawn-pivot-XXXXXX` on the host for `--pivot-root` and leaves it
/// there when it fails (as it does here for `NEW:OLD`). The test removes the ones that appeared
/// while it ran, also when it fails; other tests do not use `--pivot-root` with nspawn.
struct NspawnPivotLeftovers(BTreeSet<PathBuf>);

impl NspawnPivotLeftovers {
    fn snapshot() -> BTreeSet<PathBuf> {
        std::fs::read_dir("/tmp")
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("nspawn-pivot-"))
            .map(|e| e.path())
            .collect()
    }
}

impl Drop for NspawnPivotLeftovers {
    fn drop(&mut self) {
        for dir in Self::snapshot().difference(&self.0) {
            // Empty when nspawn left it; never remove what it may still have mounted on.
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// `--pivot-root=NEW[:OLD]`: the payload sees NEW as its root, as under nspawn; with OLD the
/// whole tree is there (nspawn 252 cannot do that here: its MS_MOVE of the old root fails with
/// EINVAL on this host, so mctl is held to the manual); the same refusals.
#[test]
fn pivot_root_matches_nspawn() {
    let s = scratch();
    let dir = copy_tree(busybox_tree(), s.path(), "nspivot");
    let deploy = copy_tree(busybox_tree(), &dir, "deploy");
    std::fs::write(deploy.join("marker"), "the deployment\n").unwrap();
    std::fs::create_dir(deploy.join("sysroot")).unwrap();
    let show = ["/bin/sh", "-c", "cat /marker; ls / | tr '\\n' ' '; echo; ls /sysroot | tr '\\n' ' '"];
    let _leftovers = NspawnPivotLeftovers(NspawnPivotLeftovers::snapshot());
    let cgroups = NspawnCgroups::new();
    let n = cgroups.run_like(&dir, &["--pivot-root=/deploy"], &show);
    assert!(n.status.success(), "nspawn: {}", stderr(&n));
    let m = mctl_run(&dir, &["--pivot-root=/deploy"], &show);
    assert!(m.status.success(), "mctl: {}", stderr(&m));
    assert!(stdout(&m).starts_with("the deployment\n"), "{}", stdout(&m));
    assert_eq!(stdout(&m), stdout(&n).replace("\r\n", "\n"));

    let m = mctl_run(&dir, &["--pivot-root=/deploy:/sysroot", "--read-only"], &show);
    assert!(m.status.success(), "mctl: {}", stderr(&m));
    let out = stdout(&m);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "the deployment");
    assert!(lines[2].split_whitespace().any(|f| f == "deploy"), "the whole tree at /sysroot: {out}");
    let m = mctl_run(&dir, &["--pivot-root=/deploy:/sysroot", "--read-only"], &["touch", "/sysroot/x"]);
    assert!(!m.status.success(), "the old root is read-only with --read-only");

    for bad in [
        "--pivot-root=deploy",
        "--pivot-root=/nope",
        "--pivot-root=/deploy:/nope",
        "--pivot-root=/deploy:sysroot",
    ] {
        let n = cgroups.run_like(&dir, &[bad], &["/bin/true"]);
        assert!(!n.status.success(), "nspawn accepted {bad}");
        let m = mctl_run(&dir, &[bad], &["/bin/true"]);
        assert!(!m.status.success(), "mctl accepted {bad}");
        assert!(stderr(&m).contains("pivot-root"), "{bad}: {}", stderr(&m));
    }
    assert_no_leaks("nspivot", &dir);
}

/// Runs `launcher...` in a network namespace of its own (the "host" of the test), with a payload
/// that reports its links and waits for the host side to have reported its own.
const VETH_EXTRA_HOST: &str = r#"
for p in $CGS; do echo $$ > $p; done
"$@" & pid=$!
i=0; while [ ! -e "$TREE/ready" ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done
ip -br link | awk '{ sub(/@.*/, "", $1); print "host", $1, $2 }' | sort
ip -4 -o addr show | awk '$2 != "lo" { print "hostaddr", $2 }'
touch "$TREE/go"
wait $pid; echo "status $?"
ip -br link | awk '{ sub(/@.*/, "", $1); print "after", $1 }' | sort
"#;

const VETH_EXTRA_GUEST: &str = r#"
for n in $(ls /sys/class/net); do echo "guest $n $(cat /sys/class/net/$n/operstate)"; done
echo "guestaddrs $(ip -4 addr show | grep 'inet ' | grep -vc 'inet 127\.')"
touch /ready
while [ ! -e /go ]; do sleep 0.05; done
"#;

/// `--network-veth-extra`: the same pairs as under nspawn (names on both sides, both ends down
/// and without addresses, a private network implied), removed at the end; the same refusals,
/// except that mctl also refuses an invalid machine-side name, which nspawn 252 silently
/// replaces with the host side's (`a:b/c` gives the machine a link `a`).
#[test]
fn veth_extra_matches_nspawn() {
    let s = scratch();
    let dir = copy_tree(busybox_tree(), s.path(), "nsvx");
    std::fs::write(dir.join("probe.sh"), VETH_EXTRA_GUEST).unwrap();
    let host = s.path().join("host.sh");
    std::fs::write(&host, VETH_EXTRA_HOST).unwrap();
    let cgroups = NspawnCgroups::new();
    let opts = ["--network-veth-extra=vx-a:inner0", "--network-veth-extra=vx-b"];
    let launch = |cgs: String, launcher: Vec<String>| {
        for f in ["ready", "go"] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        let o = Command::new("unshare")
            .args(["-n", "sh"])
            .arg(&host)
            .args(launcher)
            .env("CGS", cgs)
            .env("TREE", &dir)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let mut lines: Vec<String> = stdout(&o).replace("\r\n", "\n").lines().map(str::to_owned).collect();
        lines.sort();
        lines
    };
    let mut nspawn: Vec<String> =
        ["systemd-nspawn", "-q", "--register=no", "--keep-unit"].map(String::from).into();
    nspawn.extend(opts.map(String::from));
    nspawn.extend(["-D", dir.to_str().unwrap(), "/bin/sh", "/probe.sh"].map(String::from));
    let n = launch(cgroups.procs_files(), nspawn);
    let mut m_args: Vec<String> = vec![env!("CARGO_BIN_EXE_mctl").into()];
    m_args.extend(["run", "-q", "--register=no"].map(String::from));
    m_args.extend(opts.map(String::from));
    m_args.extend(["-D", dir.to_str().unwrap(), "--", "/bin/sh", "/probe.sh"].map(String::from));
    let m = launch(String::new(), m_args);
    for want in [
        "guest inner0 down",
        "guest vx-b down",
        "guest lo unknown",
        "guestaddrs 0",
        "host vx-a DOWN",
        "host vx-b DOWN",
        "status 0",
        "after lo",
    ] {
        assert!(n.iter().any(|l| l == want), "nspawn: no '{want}' in {n:?}");
    }
    assert_eq!(m, n, "mctl vs nspawn");

    for bad in ["", ":", ":b", "a:b:c", "abcdefghijklmnopq", "a/b"] {
        let opt = format!("--network-veth-extra={bad}");
        let n = cgroups.run_like(&dir, &[&opt], &["/bin/true"]);
        assert!(!n.status.success(), "nspawn accepted {opt}");
        let m = mctl_run(&dir, &[&opt], &["/bin/true"]);
        assert!(!m.status.success(), "mctl accepted {opt}");
        assert!(stderr(&m).contains("--network-veth-extra"), "{opt}: {}", stderr(&m));
    }
    // With the host's own namespace there is nowhere to put the other end.
    let m = mctl_run(
        &dir,
        &["--network-veth-extra=vx-c", "--network-namespace-path=/proc/self/ns/net"],
        &["/bin/true"],
    );
    assert!(stderr(&m).contains("cannot be used with"), "{}", stderr(&m));
    assert_no_leaks("nsvx", &dir);
}

/// Runs `launcher...` in a mount namespace of its own where the host's user database is the
/// test's (a user `mctlbind` with a home directory in the scratch directory), so no host user
/// is added or changed.
const BIND_USER_HOST: &str = r#"
mount --bind "$PASSWD" /etc/passwd && mount --bind "$GROUP" /etc/group && mount --bind "$SHADOW" /etc/shadow || exit 99
for p in $CGS; do echo $$ > $p; done
exec "$@"
"#;

const BIND_USER_GUEST: &str = r#"
for m in uid_map gid_map; do
    awk -v m=$m '{ print m, $1, ($2 < 100000 ? $2 : "RANGE"), $3 }' /proc/self/$m
done
ls -ln /run/host/home | awk 'NR > 1 { print "home", $1, $3, $4, $NF }'
cd /run/host/userdb
for f in *; do
    if [ -L "$f" ]; then echo "link $f -> $(readlink $f)"; else echo "file $f $(stat -c '%a %u %g' $f) $(cat $f)"; fi
done
echo "owner $(stat -c '%u %g' /run/host/home/mctlbind/hello)"
# (nspawn's propagation setup lists it twice)
awk '$5 == "/run/host/home/mctlbind" && !seen[$5]++ { print "mount", $5, ($6 ~ /^ro/ ? "ro" : "rw") }' /proc/self/mountinfo
touch /run/host/home/mctlbind/made-$LAUNCHER && echo "made it"
"#;

/// `--bind-user`: the same uid/gid maps (a hole at 60514 mapping the host user), home
/// directory, and user records in /run/host/userdb as nspawn; writes reach the host's home;
/// the same refusals.
#[test]
fn bind_user_matches_nspawn() {
    let s = scratch();
    let dir = copy_tree(busybox_tree(), s.path(), "nsbu");
    std::fs::write(dir.join("probe.sh"), BIND_USER_GUEST).unwrap();
    let home = s.path().join("home/mctlbind");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("hello"), "hi\n").unwrap();
    std::os::unix::fs::chown(&home, Some(4242), Some(4242)).unwrap();
    std::os::unix::fs::chown(home.join("hello"), Some(4242), Some(4242)).unwrap();
    let db = |name: &str, extra: &str| {
        let host = std::fs::read_to_string(format!("/etc/{name}")).unwrap_or_default();
        let p = s.path().join(name);
        std::fs::write(&p, format!("{host}{extra}")).unwrap();
        p
    };
    let home_s = home.to_str().unwrap();
    let passwd = db(
        "passwd",
        &format!("mctlbind:x:4242:4242::{home_s}:/bin/sh\nmctlshared:x:4243:4242::{home_s}:/bin/sh\n"),
    );
    let group = db("group", "mctlbind:x:4242:\n");
    let shadow = db("shadow", "mctlbind:$y$j9T$mctltest$notarealhash:19000:0:99999:7:::\n");
    let host = s.path().join("host.sh");
    std::fs::write(&host, BIND_USER_HOST).unwrap();
    let cgroups = NspawnCgroups::new();
    let launch = |cgs: String, launcher: Vec<String>, who: &str| {
        Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh"])
            .arg(&host)
            .args(launcher)
            .env("CGS", cgs)
            .env("PASSWD", &passwd)
            .env("GROUP", &group)
            .env("SHADOW", &shadow)
            .env("LAUNCHER", who)
            // -U remembers the tree's range: not in the host's state directory.
            .env("MCTL_STATE_DIR", s.path().join("state"))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let nspawn_args = |opts: &[&str], cmd: &[&str]| -> Vec<String> {
        let mut a: Vec<String> =
            ["systemd-nspawn", "-q", "--register=no", "--keep-unit", "-E", "LAUNCHER=nspawn"]
                .map(String::from)
                .into();
        a.extend(opts.iter().map(|o| o.to_string()));
        a.extend(["-D", dir.to_str().unwrap()].map(String::from));
        a.extend(cmd.iter().map(|c| c.to_string()));
        a
    };
    let mctl_args = |opts: &[&str], cmd: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = vec![env!("CARGO_BIN_EXE_mctl").into()];
        a.extend(["run", "-q", "--register=no", "-E", "LAUNCHER=mctl"].map(String::from));
        a.extend(opts.iter().map(|o| o.to_string()));
        a.extend(["-D", dir.to_str().unwrap(), "--"].map(String::from));
        a.extend(cmd.iter().map(|c| c.to_string()));
        a
    };
    let probe = ["/bin/sh", "/probe.sh"];
    let opts = ["-U", "--bind-user=mctlbind"];
    let n = launch(cgroups.procs_files(), nspawn_args(&opts, &probe), "nspawn");
    assert!(n.status.success(), "nspawn: {}", stderr(&n));
    let m = launch(String::new(), mctl_args(&opts, &probe), "mctl");
    assert!(m.status.success(), "mctl: {}", stderr(&m));
    let (n, m) = (stdout(&n).replace("\r\n", "\n"), stdout(&m));
    for want in [
        "uid_map 60514 4242 1",
        "gid_map 60514 4242 1",
        "home drwxr-xr-x 60514 60514 mctlbind",
        "link 60514.user -> mctlbind.user",
        "file mctlbind.user-privileged 600 0 0 {\"privileged\":{\"hashedPassword\":[\"$y$j9T$mctltest$notarealhash\"]}}",
        "owner 60514 60514",
        "mount /run/host/home/mctlbind rw",
        "made it",
    ] {
        assert!(n.lines().any(|l| l == want), "nspawn: no '{want}' in\n{n}");
    }
    assert_eq!(m, n, "mctl vs nspawn");
    for who in ["nspawn", "mctl"] {
        assert!(home.join(format!("made-{who}")).exists(), "{who}: writes reach the host's home");
    }

    // Refused by both: no user namespace, root, nobody, an unknown user, a user without a
    // private group, a user the machine has already.
    let cases: [(&[&str], &str); 5] = [
        (&["--bind-user=mctlbind"], "needs a user namespace"),
        (&["-U", "--bind-user=root"], "'root' user is not supported"),
        (&["-U", "--bind-user=nobody"], "'nobody' user is not supported"),
        (&["-U", "--bind-user=mctlnosuch"], "cannot resolve user 'mctlnosuch'"),
        (&["-U", "--bind-user=mctlshared"], "no private group"),
    ];
    for (opts, needle) in cases {
        let n = launch(cgroups.procs_files(), nspawn_args(opts, &["/bin/true"]), "nspawn");
        assert!(!n.status.success(), "nspawn accepted {opts:?}");
        let m = launch(String::new(), mctl_args(opts, &["/bin/true"]), "mctl");
        assert!(!m.status.success(), "mctl accepted {opts:?}");
        assert!(stderr(&m).contains(needle), "{opts:?}: {}", stderr(&m));
    }
    // Given twice, bound once, by both.
    let opts = ["-U", "--bind-user=mctlbind", "--bind-user=mctlbind"];
    let count = ["/bin/sh", "-c", "ls /run/host/userdb | wc -l"];
    let n = launch(cgroups.procs_files(), nspawn_args(&opts, &count), "nspawn");
    let m = launch(String::new(), mctl_args(&opts, &count), "mctl");
    assert_eq!((stdout(&m).trim(), stdout(&n).trim()), ("6", "6"), "{}", stderr(&m));
    let mut tree_passwd = std::fs::read_to_string(dir.join("etc/passwd")).unwrap();
    tree_passwd.push_str("mctlbind:x:1234:1234::/home/mctlbind:/bin/sh\n");
    std::fs::write(dir.join("etc/passwd"), tree_passwd).unwrap();
    let opts = ["-U", "--bind-user=mctlbind"];
    let n = launch(cgroups.procs_files(), nspawn_args(&opts, &["/bin/true"]), "nspawn");
    assert!(!n.status.success(), "nspawn accepted a user the machine has");
    let m = launch(String::new(), mctl_args(&opts, &["/bin/true"]), "mctl");
    assert!(stderr(&m).contains("already exists in the machine's /etc/passwd"), "{}", stderr(&m));
    assert_no_leaks("nsbu", &dir);
}

/// `--oci-bundle`: the root and the settings from config.json, the command line first, no
/// settings file read. nspawn 252 cannot run a bundle here (it registers the machine's scope
/// through the system bus whatever --register and --keep-unit say, and exits 1 without one), so
/// mctl is held to nspawn's manual.
#[test]
fn an_oci_bundle_gives_root_and_settings() {
    let s = scratch();
    let bundle = s.path().join("ocib");
    std::fs::create_dir(&bundle).unwrap();
    let rootfs = copy_tree(busybox_tree(), &bundle, "rootfs");
    std::fs::create_dir(rootfs.join("data")).unwrap();
    let spec =
        Command::new(env!("CARGO_BIN_EXE_mctl-runc")).arg("spec").current_dir(&bundle).output().unwrap();
    assert!(spec.status.success(), "{}", stderr(&spec));
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.join("config.json")).unwrap()).unwrap();
    config["process"]["args"] = serde_json::json!([
        "/bin/sh",
        "-c",
        "hostname; pwd; echo \"FOO=$FOO\"; ulimit -n; grep -E 'CapBnd|NoNewPrivs' /proc/self/status; \
         ls /sys/class/net | tr '\\n' ' '; echo; grep ' /data ' /proc/self/mountinfo | cut -d' ' -f5,9; \
         touch /x 2>/dev/null || echo read-only"
    ]);
    config["process"]["env"].as_array_mut().unwrap().push("FOO=bar".into());
    config["process"]["cwd"] = "/tmp".into();
    config["process"]["noNewPrivileges"] = true.into();
    config["hostname"] = "bundlehost".into();
    config["root"]["readonly"] = true.into();
    config["mounts"].as_array_mut().unwrap().push(serde_json::json!({
        "destination": "/data", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m"]
    }));
    let write = |c: &serde_json::Value| std::fs::write(bundle.join("config.json"), c.to_string()).unwrap();
    write(&config);
    // Beside the image, where a settings file would be found: a bundle's machine reads none.
    std::fs::write(bundle.join("ocib.mctl"), "[Exec]\nHostname=fromsettings\n").unwrap();
    let b = format!("--oci-bundle={}", bundle.display());

    let cgroups = NspawnCgroups::new();
    let n = cgroups.run(&["-q", "--register=no", "--keep-unit", &b]);
    assert!(!n.status.success(), "nspawn ran a bundle here: compare with it instead ({})", stdout(&n));

    let o = mctl().args(["run", "-q", "--register=no", &b]).stdin(Stdio::null()).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..4], ["bundlehost", "/tmp", "FOO=bar", "1024"], "{out}");
    // runc's default bounding set: CAP_AUDIT_WRITE, CAP_KILL, CAP_NET_BIND_SERVICE.
    assert!(out.contains("CapBnd:\t0000000020000420"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(lines.contains(&"lo "), "a network namespace of its own: {out}");
    assert!(lines.contains(&"/data tmpfs"), "{out}");
    assert!(lines.contains(&"read-only"), "{out}");

    // The command line takes precedence.
    let o = mctl()
        .args(["run", "-q", "--register=no", &b, "--hostname=cli", "-E", "FOO=cli", "--", "/bin/sh", "-c"])
        .arg("hostname; echo $FOO")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(stdout(&o), "cli\ncli\n", "{}", stderr(&o));

    // What a machine cannot honour is refused, not ignored.
    let refused = |c: &serde_json::Value, needle: &str| {
        write(c);
        let o = mctl().args(["run", "-q", "--register=no", &b]).stdin(Stdio::null()).output().unwrap();
        assert_eq!(o.status.code(), Some(1), "{needle}: {}", stdout(&o));
        assert!(stderr(&o).contains(needle), "{needle}: {}", stderr(&o));
    };
    let mut c = config.clone();
    c["linux"]["seccomp"] = serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW"});
    refused(&c, "linux.seccomp");
    let mut c = config.clone();
    c["hooks"] = serde_json::json!({"poststart": [{"path": "/bin/true"}]});
    refused(&c, "hooks");
    let mut c = config.clone();
    c["mounts"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"destination": "/mnt", "type": "sysfs", "source": "sysfs"}));
    refused(&c, "mount of type 'sysfs' at /mnt");
    let mut c = config.clone();
    c["linux"]["readonlyPaths"].as_array_mut().unwrap().push("/etc".into());
    refused(&c, "readonlyPaths has /etc");
    std::fs::remove_file(bundle.join("config.json")).unwrap();
    let o = mctl().args(["run", "-q", "--register=no", &b]).stdin(Stdio::null()).output().unwrap();
    assert!(stderr(&o).contains("config.json"), "{}", stderr(&o));
    let o = mctl().args(["run", "-q", &b, "-D", "/tmp", "--", "true"]).stdin(Stdio::null()).output().unwrap();
    assert!(stderr(&o).contains("cannot be combined"), "{}", stderr(&o));
    assert_no_leaks("ocib", &rootfs);
}
