//! The image store from the CLI: list/clone/rename/remove/read-only, import-tar/export-tar
//! round trips, hostile archives, pull-tar and pull-lxc from a loopback HTTP server, full and
//! read-only stores, interruption, bootstrap. Needs root.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::http::{HttpServer, Rule};
use common::*;
use sha2::{Digest, Sha256};
use tar::EntryType;

/// A scratch directory with an image store, a download cache and a canary directory outside
/// the store that hostile input must not touch.
struct Env {
    s: tempfile::TempDir,
    store: PathBuf,
    cache: PathBuf,
    canary: PathBuf,
    /// What the scratch directory held at the start (besides files tests add later).
    top: Vec<OsString>,
}

impl Env {
    fn new() -> Env {
        let s = scratch();
        let store = s.path().join("store");
        let cache = s.path().join("cache");
        let canary = s.path().join("canary");
        std::fs::create_dir(&store).unwrap();
        std::fs::create_dir(&canary).unwrap();
        std::fs::write(canary.join("secret"), "canary\n").unwrap();
        let mut e = Env { s, store, cache, canary, top: Vec::new() };
        e.top = e.listing(e.s.path());
        e
    }

    fn path(&self) -> &Path {
        self.s.path()
    }

    fn listing(&self, dir: &Path) -> Vec<OsString> {
        let mut v: Vec<OsString> = std::fs::read_dir(dir)
            .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    fn cmd(&self) -> Command {
        mctl_with_store(&self.store, &self.cache)
    }

    fn mctl(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("spawn mctl")
    }

    /// Runs mctl and asserts success.
    fn ok(&self, args: &[&str]) -> Output {
        output_ok(self.cmd(), args)
    }

    /// Runs mctl, asserts failure with `needle` in the message.
    fn fails(&self, args: &[&str], needle: &str) -> Output {
        output_fails(self.cmd(), args, needle)
    }

    /// The images (visible entries) in the store.
    fn images(&self) -> Vec<String> {
        self.listing(&self.store)
            .into_iter()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect()
    }

    fn image(&self, name: &str) -> PathBuf {
        self.store.join(name)
    }

    /// Nothing hidden left in the store or the cache, the canary untouched, nothing new beside
    /// them except `extra`.
    fn assert_clean(&self, what: &str, extra: &[&str]) {
        let hidden: Vec<_> =
            self.listing(&self.store).into_iter().filter(|n| n.as_bytes().starts_with(b".")).collect();
        assert!(hidden.is_empty(), "{what}: temporaries left in the store: {hidden:?}");
        let cache_tmp: Vec<_> =
            self.listing(&self.cache).into_iter().filter(|n| n.as_bytes().starts_with(b".")).collect();
        assert!(cache_tmp.is_empty(), "{what}: temporaries left in the cache: {cache_tmp:?}");
        assert_eq!(
            self.listing(&self.canary),
            vec![OsString::from("secret")],
            "{what}: canary directory changed"
        );
        let secret = self.canary.join("secret");
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "canary\n", "{what}: canary file changed");
        assert_eq!(std::fs::metadata(&secret).unwrap().nlink(), 1, "{what}: canary file got a hard link");
        let mut allowed: Vec<OsString> = self.top.clone();
        allowed.extend(["cache"].iter().chain(extra).map(OsString::from));
        for n in self.listing(self.path()) {
            assert!(allowed.contains(&n), "{what}: unexpected {n:?} beside the store");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Trees and their comparison

#[derive(Debug, Clone, PartialEq, Eq)]
struct Snap {
    kind: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: i64,
    rdev: u64,
    content: Option<String>,
    target: Option<PathBuf>,
    xattrs: Vec<(OsString, Vec<u8>)>,
    /// For multiply-linked files: every path of the inode.
    links: Vec<PathBuf>,
}

/// Everything about a tree that an image copy must keep.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Snap> {
    let mut out = BTreeMap::new();
    let mut inodes: HashMap<u64, Vec<PathBuf>> = HashMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let p = root.join(&rel);
        let m = std::fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        let content = ft.is_file().then(|| {
            let mut h = Sha256::new();
            h.update(std::fs::read(&p).unwrap());
            hex::encode(h.finalize())
        });
        if ft.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(rel.join(e.unwrap().file_name()));
            }
        } else if m.nlink() > 1 {
            inodes.entry(m.ino()).or_default().push(rel.clone());
        }
        out.insert(
            rel.clone(),
            Snap {
                kind: m.mode() & libc::S_IFMT,
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                size: if ft.is_dir() { 0 } else { m.size() },
                mtime: m.mtime(),
                rdev: m.rdev(),
                content,
                target: ft.is_symlink().then(|| std::fs::read_link(&p).unwrap()),
                xattrs: xattrs_of(&p),
                links: Vec::new(),
            },
        );
    }
    for mut group in inodes.into_values() {
        group.sort();
        for p in &group {
            out.get_mut(p).unwrap().links = group.clone();
        }
    }
    out
}

fn assert_same_tree(a: &Path, b: &Path) {
    let (sa, sb) = (snapshot(a), snapshot(b));
    for (k, v) in &sa {
        match sb.get(k) {
            None => panic!("{} is missing from {}", k.display(), b.display()),
            Some(w) => {
                assert_eq!(v, w, "{} differs between {} and {}", k.display(), a.display(), b.display())
            }
        }
    }
    for k in sb.keys() {
        assert!(sa.contains_key(k), "{} is extra in {}", k.display(), b.display());
    }
}

/// A v2 file capability granting CAP_NET_BIND_SERVICE (effective), as setcap writes it.
fn capability_xattr() -> Vec<u8> {
    [0x0200_0001u32, 1 << 10, 0, 0, 0].iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// The busybox tree plus one of every hard case, at `dest`.
fn rich_tree(dest: &Path) {
    let st = Command::new("cp").arg("-a").arg(busybox_tree()).arg(dest).status().unwrap();
    assert!(st.success());
    let w = |rel: &str, data: &[u8], mode: u32, uid: u32, gid: u32| {
        let p = dest.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        std::os::unix::fs::chown(&p, Some(uid), Some(gid)).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    };
    w("usr/bin/suid", b"#!/bin/sh\n", 0o4755, 0, 0);
    w("usr/bin/sgid", b"#!/bin/sh\n", 0o2755, 0, 1000);
    let capped = w("usr/bin/capped", b"\x7fELF not really\n", 0o755, 0, 0);
    rustix::fs::setxattr(
        &capped,
        "security.capability",
        &capability_xattr(),
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    let noted = w("etc/noted", b"data\n", 0o600, 0, 0);
    rustix::fs::setxattr(&noted, "user.mctl.note", b"hello\0binary\xff", rustix::fs::XattrFlags::empty())
        .unwrap();
    rustix::fs::setxattr(dest.join("etc"), "user.mctl.dir", b"1", rustix::fs::XattrFlags::empty()).unwrap();
    let h1 = w("usr/bin/hl1", b"same inode\n", 0o755, 0, 0);
    std::fs::hard_link(&h1, dest.join("usr/bin/hl2")).unwrap();
    std::fs::hard_link(&h1, dest.join("home/hl3")).unwrap();
    rustix::fs::mknodat(rustix::fs::CWD, dest.join("run/fifo"), rustix::fs::FileType::Fifo, 0o620.into(), 0)
        .unwrap();
    std::fs::set_permissions(dest.join("run/fifo"), std::fs::Permissions::from_mode(0o620)).unwrap();
    let dev = |rel: &str, ft, major, minor, mode: u32, gid| {
        let p = dest.join(rel);
        rustix::fs::mknodat(rustix::fs::CWD, &p, ft, 0o600.into(), rustix::fs::makedev(major, minor))
            .unwrap();
        std::os::unix::fs::chown(&p, Some(0), Some(gid)).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    dev("dev/mynull", rustix::fs::FileType::CharacterDevice, 1, 3, 0o666, 0);
    dev("dev/myloop", rustix::fs::FileType::BlockDevice, 7, 0, 0o660, 6);
    w("home/tester/file", b"owned by tester\n", 0o640, 1000, 1000);
    let sub = dest.join("home/tester/sub");
    std::fs::create_dir(&sub).unwrap();
    std::os::unix::fs::chown(&sub, Some(1000), Some(1000)).unwrap();
    std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o750)).unwrap();
    let link = dest.join("home/tester/link");
    std::os::unix::fs::symlink("../../etc/passwd", &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(1000), Some(1000)).unwrap();
    // Pseudo-random bytes: the low 8 bits of a hash, truncated on purpose.
    #[allow(clippy::cast_possible_truncation)]
    let big: Vec<u8> = (0..(1u32 << 20) + 7).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    w("var/big", &big, 0o644, 0, 0);
    let long = format!("usr/share/{}/{}", "d".repeat(90), "f".repeat(120));
    w(&long, b"long name\n", 0o644, 0, 0);
    std::os::unix::fs::symlink("t".repeat(150), dest.join("usr/longlink")).unwrap();
    // Directories' mtimes last, after their contents changed them.
    let st =
        Command::new("touch").args(["-h", "-d", "2024-01-02 03:04:05"]).arg(dest.join("usr/bin")).status();
    assert!(st.unwrap().success());
}

// ---------------------------------------------------------------------------------------------
// Archives

/// A tar stream written header by header, so that any name, size or link can be put in.
struct RawTar(Vec<u8>);

impl RawTar {
    fn new() -> Self {
        RawTar(Vec::new())
    }

    fn header(&mut self, name: &[u8], etype: EntryType, size: u64, link: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(etype);
        h.set_size(size);
        h.set_mode(if etype == EntryType::Directory { 0o755 } else { 0o644 });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name);
        old.linkname[..link.len()].copy_from_slice(link);
        h.set_cksum();
        self.0.extend_from_slice(h.as_bytes());
    }

    fn entry(mut self, name: &str, etype: EntryType, link: &str, data: &[u8]) -> Self {
        self.header(name.as_bytes(), etype, data.len() as u64, link.as_bytes());
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().div_ceil(512) * 512, 0);
        self
    }

    fn file(self, name: &str, data: &[u8]) -> Self {
        self.entry(name, EntryType::Regular, "", data)
    }

    fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0u8; 1024]);
        self.0
    }
}

fn gnu_tar(args: &[&str]) {
    let o = Command::new("tar").args(args).output().unwrap();
    assert!(o.status.success(), "tar {args:?}: {}", stderr(&o));
}

fn sha256_file(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
}

// ---------------------------------------------------------------------------------------------

#[test]
fn export_then_import_gives_an_identical_tree() {
    let env = Env::new();
    let src = env.image("rich");
    rich_tree(&src);
    let p = |n: &str| env.path().join(n).to_string_lossy().into_owned();
    for (file, name) in [
        ("r.tar", "r-tar"),
        ("r.tar.gz", "r-gz"),
        ("r.tar.xz", "r-xz"),
        ("r.tar.zst", "r-zst"),
        ("r.tgz", "r-tgz"),
    ] {
        env.ok(&["export-tar", "rich", &p(file)]);
        env.ok(&["import-tar", &p(file), name]);
        assert_same_tree(&src, &env.image(name));
    }
    // The extension decides the compression; the content is recognised by its magic.
    let mut head = [0u8; 6];
    std::fs::File::open(p("r.tar.xz")).unwrap().read_exact(&mut head).unwrap();
    assert_eq!(&head, b"\xfd7zXZ\0");
    // An existing file is not overwritten.
    env.fails(&["export-tar", "rich", &p("r.tar")], "already exists");

    // GNU tar reads our archive (xattrs and capabilities included) ...
    let gx = env.path().join("gnu-x");
    std::fs::create_dir(&gx).unwrap();
    gnu_tar(&[
        "--xattrs",
        "--xattrs-include=*",
        "--numeric-owner",
        "-xpf",
        &p("r.tar"),
        "-C",
        &gx.to_string_lossy(),
    ]);
    assert_same_tree(&src, &gx);
    // ... and we read GNU tar's.
    gnu_tar(&[
        "--xattrs",
        "--xattrs-include=*",
        "--numeric-owner",
        "-cf",
        &p("gnu.tar"),
        "-C",
        &src.to_string_lossy(),
        ".",
    ]);
    env.ok(&["import-tar", &p("gnu.tar"), "from-gnu"]);
    assert_same_tree(&src, &env.image("from-gnu"));

    // Standard input and standard output.
    let out = env.cmd().args(["export-tar", "rich", "-", "--format=zstd"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(&out.stdout[..4], b"\x28\xb5\x2f\xfd");
    let mut child = env.cmd().args(["import-tar", "-", "from-stdin"]).stdin(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    assert!(child.wait().unwrap().success());
    assert_same_tree(&src, &env.image("from-stdin"));
    env.fails(&["import-tar", "-"], "give one");

    // A copy keeps everything too.
    env.ok(&["clone", "rich", "rich-copy"]);
    assert_same_tree(&src, &env.image("rich-copy"));
    env.assert_clean(
        "round trip",
        &["r.tar", "r.tar.gz", "r.tar.xz", "r.tar.zst", "r.tgz", "gnu-x", "gnu.tar"],
    );
}

#[test]
fn hostile_archives_are_refused_and_leave_nothing() {
    let env = Env::new();
    let canary = env.canary.to_string_lossy().into_owned();
    let passwd_links = std::fs::metadata("/etc/passwd").unwrap().nlink();
    let benign = || RawTar::new().entry("ok", EntryType::Directory, "", b"").file("ok/file", b"fine\n");
    let complete = RawTar::new().file("a", &vec![7u8; 100 * 1024]).file("b", b"b").finish();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("dotdot", benign().file("../escape", b"x").finish(), "leads outside the image root"),
        ("dotdot-deep", benign().file("ok/../../../canary/pwned", b"x").finish(), "leads outside"),
        ("absolute", benign().file(&format!("{canary}/abs"), b"x").finish(), "is an absolute path"),
        (
            "through-symlink",
            benign().entry("evil", EntryType::Symlink, &canary, b"").file("evil/pwned", b"x").finish(),
            "leads through a symbolic link",
        ),
        (
            "dotdot-chain",
            benign()
                .entry("up", EntryType::Symlink, "..", b"")
                .entry("up2", EntryType::Symlink, "up/..", b"")
                .file("up2/canary/pwned", b"x")
                .finish(),
            "leads through a symbolic link",
        ),
        (
            "relative-symlink",
            benign()
                .entry("ok/s", EntryType::Symlink, "../../../..", b"")
                .file(&format!("ok/s{canary}/pwned"), b"x")
                .finish(),
            "leads through a symbolic link",
        ),
        (
            "hardlink-absolute",
            benign().entry("hl", EntryType::Link, "/etc/passwd", b"").finish(),
            "which is not inside the image",
        ),
        (
            "hardlink-dotdot",
            benign().entry("hl", EntryType::Link, "../../canary/secret", b"").finish(),
            "which is not inside the image",
        ),
        (
            "hardlink-via-symlink",
            benign()
                .entry("sd", EntryType::Symlink, &canary, b"")
                .entry("hl", EntryType::Link, "sd/secret", b"")
                .finish(),
            "leads through a symbolic link",
        ),
        (
            "huge",
            {
                let mut t = benign();
                t.header(b"big", EntryType::Regular, 1 << 40, b"");
                t.0.extend_from_slice(&[0u8; 4096]);
                t.0
            },
            "claims 1099511627776 bytes, more than the",
        ),
        ("truncated-data", complete[..512 + 50 * 1024].to_vec(), "truncated"),
        ("truncated-no-end", complete[..complete.len() - 1024].to_vec(), "end-of-archive marker"),
        (
            "truncated-gzip",
            {
                let g = gzip(&complete);
                g[..g.len() / 2].to_vec()
            },
            "truncated",
        ),
        ("empty", Vec::new(), "truncated"),
    ];
    for (name, bytes, needle) in cases {
        let file = env.path().join(format!("{name}.tar"));
        std::fs::write(&file, &bytes).unwrap();
        env.fails(&["import-tar", &file.to_string_lossy(), name], needle);
        std::fs::remove_file(&file).unwrap();
        assert!(env.images().is_empty(), "{name}: an image was left: {:?}", env.images());
        env.assert_clean(name, &[]);
        assert!(!env.store.join("escape").exists(), "{name}: wrote beside the image");
        assert_eq!(
            std::fs::metadata("/etc/passwd").unwrap().nlink(),
            passwd_links,
            "{name}: linked /etc/passwd"
        );
    }
    // The same tricks inside the tree are fine when they stay inside: a relative hard link, a
    // symlink pointing anywhere (stored, never followed), a name with a harmless "..".
    let fine = benign()
        .entry("hl", EntryType::Link, "ok/file", b"")
        .entry("abs-link", EntryType::Symlink, "/etc/passwd", b"")
        .file("ok/../inside", b"in\n")
        .finish();
    let file = env.path().join("fine.tar");
    std::fs::write(&file, fine).unwrap();
    env.ok(&["import-tar", &file.to_string_lossy(), "fine"]);
    let img = env.image("fine");
    assert_eq!(std::fs::read_to_string(img.join("inside")).unwrap(), "in\n");
    assert_eq!(
        std::fs::metadata(img.join("hl")).unwrap().ino(),
        std::fs::metadata(img.join("ok/file")).unwrap().ino()
    );
    assert_eq!(std::fs::read_link(img.join("abs-link")).unwrap(), Path::new("/etc/passwd"));
    env.assert_clean("fine", &["fine.tar"]);
}

#[test]
fn images_verbs_and_their_errors() {
    let env = Env::new();
    let o = env.ok(&["list-images"]);
    assert_eq!(stdout(&o), "No images.\n");
    let tarball = env.path().join("bb.tar");
    gnu_tar(&[
        "--numeric-owner",
        "-cf",
        &tarball.to_string_lossy(),
        "-C",
        &busybox_tree().to_string_lossy(),
        ".",
    ]);
    let tb = tarball.to_string_lossy().into_owned();
    // NAME defaults to the file name without extensions.
    env.ok(&["import-tar", &tb]);
    assert_eq!(env.images(), ["bb"]);
    env.fails(&["import-tar", &tb, "bb"], "Image 'bb' already exists");
    env.fails(&["import-tar", &tb, "bad_name"], "invalid image name 'bad_name'");
    assert_same_tree(busybox_tree(), &env.image("bb"));

    env.ok(&["clone", "bb", "bb2"]);
    env.fails(&["clone", "bb", "bb2"], "Image 'bb2' already exists");
    env.fails(&["clone", "nope", "x"], "No image 'nope' known");
    env.fails(&["rename", "bb2", "bb"], "Image 'bb' already exists");
    env.ok(&["rename", "bb2", "bb3"]);
    assert_eq!(env.images(), ["bb", "bb3"]);

    // Read-only: the immutable flag; such an image can be copied but not changed.
    env.ok(&["read-only", "bb3"]);
    let o = env.ok(&["list-images", "--no-legend"]);
    let text = stdout(&o);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{}", stdout(&o));
    assert!(lines[1].starts_with("bb3 directory yes -"), "{}", stdout(&o));
    assert!(std::fs::write(env.image("bb3").join("new"), "x").is_err(), "a read-only image took a new file");
    env.fails(&["remove", "bb3"], "Image 'bb3' is read-only");
    env.fails(&["rename", "bb3", "bb4"], "Image 'bb3' is read-only");
    env.ok(&["clone", "bb3", "bb4"]);
    // A read-only image runs only read-only (or ephemeral, see tests/ephemeral.rs).
    env.fails(
        &["run", "-q", "-M", "bb3", "--", "/bin/true"],
        "is read-only: boot it with --ephemeral, --volatile or --read-only",
    );
    let o = env.mctl(&[
        "run",
        "-q",
        "--read-only",
        "-M",
        "bb3",
        "--",
        "/bin/sh",
        "-c",
        "touch /x 2>/dev/null || echo ro",
    ]);
    assert_eq!((o.status.code(), stdout(&o).as_str()), (Some(0), "ro\n"), "{}", stderr(&o));
    env.ok(&["clone", "--read-only", "bb", "bb5"]);
    let o = env.ok(&["list-images", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let ro: Vec<(String, bool)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["name"].as_str().unwrap().into(), i["ro"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        ro,
        [("bb".into(), false), ("bb3".into(), true), ("bb4".into(), false), ("bb5".into(), true)],
        "{}",
        stdout(&o)
    );
    assert_eq!(v[0]["type"], "directory");
    assert!(v[0]["created"].as_u64().unwrap() > 1_600_000_000_000_000);
    env.ok(&["read-only", "bb3", "no"]);
    env.ok(&["read-only", "bb5", "no"]);
    env.ok(&["remove", "bb3", "bb5"]);
    assert_eq!(env.images(), ["bb", "bb4"]);

    let o = env.ok(&["image-status", "bb"]);
    let text = stdout(&o);
    assert!(text.starts_with("bb\n"), "{text}");
    assert!(text.contains("OS: BusyBox test tree"), "{text}");
    assert!(text.contains("RO: writable"), "{text}");
    assert!(text.contains("Usage: ") && !text.contains("Usage: -"), "{text}");
    let v: serde_json::Value =
        serde_json::from_str(&stdout(&env.ok(&["image-status", "-o", "json", "bb"]))).expect("JSON");
    assert_eq!(
        (v[0]["name"].as_str(), v[0]["os"].as_str(), v[0]["read_only"].as_bool()),
        (Some("bb"), Some("BusyBox test tree"), Some(false))
    );
    assert!(v[0]["usage"].as_u64().is_some_and(|u| u > 0), "{v}");
    env.fails(&["image-status", "nope"], "No image 'nope' known");
    env.fails(&["remove", "nope"], "No image 'nope' known");
    env.fails(&["read-only", "nope"], "No image 'nope' known");

    // In use: the launcher flocks the tree it runs; the store honours that lock.
    let dir = std::fs::File::open(env.image("bb")).unwrap();
    rustix::fs::flock(&dir, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
    env.fails(&["remove", "bb"], "Image 'bb' is in use by a running machine");
    env.fails(&["rename", "bb", "bb9"], "in use");
    env.fails(&["clone", "bb", "bb9"], "in use");
    drop(dir);

    // Only root may change the store.
    for args in
        [&["remove", "bb"][..], &["clone", "bb", "x"], &["import-tar", &tb, "x"], &["read-only", "bb"]]
    {
        let o = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_mctl"))
            .args(args)
            .env("MCTL_IMAGE_STORE", &env.store)
            .output()
            .unwrap();
        assert!(!o.status.success());
        assert!(stderr(&o).contains("must be run as root"), "{args:?}: {}", stderr(&o));
    }
    assert_eq!(env.images(), ["bb", "bb4"]);

    // An image runs by name from the store.
    let o = env
        .cmd()
        .args(["run", "-q", "-M", "bb4", "--", "/bin/sh", "-c", "cat /etc/os-release; exit 5"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stdout(&o).contains("BusyBox"));
    assert_no_leaks("bb4", &env.image("bb4"));
    env.ok(&["remove", "bb", "bb4"]);
    assert!(env.images().is_empty());
    env.assert_clean("verbs", &["bb.tar"]);
}

/// A guest can make its tree deeper than the descriptors a process may hold (std's removal
/// holds one per level). Removing the image must still work under a soft limit of 256, follow
/// no symlink, and leave nothing behind.
#[test]
fn an_image_deeper_than_the_descriptor_limit_is_removed() {
    let env = Env::new();
    let image = env.image("deep");
    let mut bottom = image.clone();
    for _ in 0..1500 {
        bottom.push("d");
    }
    std::fs::create_dir_all(&bottom).unwrap();
    std::fs::write(bottom.join("file"), "x").unwrap();
    std::os::unix::fs::symlink(&env.canary, bottom.join("canary")).unwrap();
    std::os::unix::fs::symlink(&env.canary, image.join("canary")).unwrap();
    let mut cmd = env.cmd();
    // SAFETY: only setrlimit, async-signal-safe, between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 256, hard)?;
            Ok(())
        });
    }
    output_ok(cmd, &["remove", "deep"]);
    assert!(!image.exists(), "the image is still there");
    env.assert_clean("removing a deep image", &[]);
}

/// A directory served over loopback: `img/bb.tar.gz` with its SHA256SUMS.
fn serve_busybox(env: &Env) -> (HttpServer, PathBuf, u64) {
    let www = env.path().join("www");
    std::fs::create_dir_all(www.join("img")).unwrap();
    let tgz = www.join("img/bb.tar.gz");
    gnu_tar(&[
        "--numeric-owner",
        "-czf",
        &tgz.to_string_lossy(),
        "-C",
        &busybox_tree().to_string_lossy(),
        ".",
    ]);
    std::fs::write(www.join("img/SHA256SUMS"), format!("{}  bb.tar.gz\n", sha256_file(&tgz))).unwrap();
    let size = std::fs::metadata(&tgz).unwrap().len();
    (HttpServer::start(&www), www, size)
}

fn cache_entries(env: &Env) -> usize {
    env.listing(&env.cache).iter().filter(|n| n.to_string_lossy().ends_with(".json")).count()
}

/// An HTTPS server on 127.0.0.1 (python's, with a leaf certificate for `localhost` signed by
/// a CA made for the test) serving `root`; killed and waited for when dropped.
struct HttpsServer {
    child: std::process::Child,
    port: u16,
    ca: PathBuf,
}

impl HttpsServer {
    fn start(root: &Path, scratch: &Path) -> HttpsServer {
        let openssl = |args: &[&str]| {
            let o = Command::new("openssl").args(args).current_dir(scratch).output().expect("run openssl");
            assert!(o.status.success(), "openssl {args:?}: {}", stderr(&o));
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
        openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &["-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=mctl test CA"],
            ]
            .concat(),
        );
        openssl(
            &[&["req"][..], &ec, &["-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=localhost"]]
                .concat(),
        );
        std::fs::write(scratch.join("leaf.ext"), "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n")
            .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "leaf.pem",
            "-days",
            "1",
            "-extfile",
            "leaf.ext",
        ]);
        const SERVER: &str = r#"
import functools, http.server, ssl, sys
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
s = http.server.HTTPServer(("127.0.0.1", 0), handler)
c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
c.load_cert_chain(sys.argv[2] + "/leaf.pem", sys.argv[2] + "/leaf.key")
s.socket = c.wrap_socket(s.socket, server_side=True)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;
        let mut child = Command::new("python3")
            .args(["-c", SERVER])
            .arg(root)
            .arg(scratch)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn python3");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line)
            .unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| panic!("no port from the HTTPS server: {line:?}"));
        HttpsServer { child, port, ca: scratch.join("ca.pem") }
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Downloads go over TLS (rustls on ring): a server whose chain ends in a CA the host trusts
/// is accepted, the same server is refused when its CA is unknown, and that refusal leaves no
/// image and no temporary behind.
#[test]
fn pull_tar_over_https_checks_the_servers_certificate() {
    let env = Env::new();
    let (_plain, www, _) = serve_busybox(&env);
    let tls = env.path().join("tls");
    std::fs::create_dir(&tls).unwrap();
    let srv = HttpsServer::start(&www, &tls);
    let url = format!("https://localhost:{}/img/bb.tar.gz", srv.port);
    let o = env.cmd().env("SSL_CERT_FILE", &srv.ca).args(["pull-tar", &url]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_same_tree(busybox_tree(), &env.image("bb"));
    let o =
        env.cmd().env("SSL_CERT_FILE", "/dev/null").args(["pull-tar", &url, "untrusted"]).output().unwrap();
    assert!(!o.status.success() && stderr(&o).contains("certificate"), "{}", stderr(&o));
    assert_eq!(env.images(), ["bb"]);
    drop(srv);
    env.ok(&["remove", "bb"]);
    env.assert_clean("https", &["www", "tls"]);
}

#[test]
fn pull_tar_verifies_and_caches() {
    let env = Env::new();
    let (srv, www, size) = serve_busybox(&env);
    let url = srv.url("/img/bb.tar.gz");
    env.ok(&["pull-tar", &url]);
    assert_eq!(env.images(), ["bb"]);
    assert_same_tree(busybox_tree(), &env.image("bb"));
    assert_eq!(srv.stats("/img/bb.tar.gz").body_bytes, size);
    assert_eq!(srv.stats("/img/SHA256SUMS").requests, 1);

    // Unchanged on the server: a conditional request, a 304, nothing downloaded.
    let o = env.ok(&["pull-tar", &url, "bb-again"]);
    let st = srv.stats("/img/bb.tar.gz");
    assert_eq!((st.requests, st.not_modified, st.body_bytes), (2, 1, size), "{}", stderr(&o));
    assert_same_tree(busybox_tree(), &env.image("bb-again"));
    assert_eq!(cache_entries(&env), 1);

    // Changed on the server (new validators): downloaded again.
    let later = std::time::SystemTime::now() + Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(www.join("img/bb.tar.gz"))
        .unwrap()
        .set_modified(later)
        .unwrap();
    env.ok(&["pull-tar", &url, "bb-third"]);
    assert_eq!(srv.stats("/img/bb.tar.gz").body_bytes, 2 * size);

    // A damaged cached copy is noticed and replaced, not imported.
    let cached: Vec<PathBuf> = std::fs::read_dir(&env.cache)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "tar"))
        .collect();
    assert_eq!(cached.len(), 1);
    let mut bytes = std::fs::read(&cached[0]).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&cached[0], bytes).unwrap();
    env.ok(&["pull-tar", &url, "bb-fourth"]);
    assert_eq!(srv.stats("/img/bb.tar.gz").body_bytes, 3 * size);
    assert_same_tree(busybox_tree(), &env.image("bb-fourth"));

    // A checksum that does not match: refused, nothing kept, not even in the cache.
    std::fs::copy(www.join("img/bb.tar.gz"), www.join("img/bad.tar.gz")).unwrap();
    let mut sums = std::fs::read_to_string(www.join("img/SHA256SUMS")).unwrap();
    sums.push_str(&format!("{}  bad.tar.gz\n", "0".repeat(64)));
    std::fs::write(www.join("img/SHA256SUMS"), sums).unwrap();
    env.fails(&["pull-tar", &srv.url("/img/bad.tar.gz")], "checksum mismatch");
    assert!(!env.images().contains(&"bad".to_owned()));
    assert_eq!(cache_entries(&env), 1);
    // Not listed at all.
    std::fs::copy(www.join("img/bb.tar.gz"), www.join("img/unlisted.tar.gz")).unwrap();
    env.fails(&["pull-tar", &srv.url("/img/unlisted.tar.gz")], "is not listed in");
    // Without verification it goes through.
    env.ok(&["pull-tar", "--verify=no", &srv.url("/img/unlisted.tar.gz")]);
    assert_eq!(env.images(), ["bb", "bb-again", "bb-fourth", "bb-third", "unlisted"]);
    env.assert_clean("pull", &["www"]);
}

/// A pull whose server sends Last-Modified and no ETag: the second pull of an unchanged file
/// revalidates with If-Modified-Since alone, gets a 304 and downloads nothing; a changed file
/// is downloaded again.
#[test]
fn pull_revalidated_by_last_modified_alone_downloads_nothing() {
    let env = Env::new();
    let (srv, www, size) = serve_busybox(&env);
    srv.set_rule("/img/bb.tar.gz", Rule::NoEtag);
    let url = srv.url("/img/bb.tar.gz");
    env.ok(&["pull-tar", &url, "rclm"]);
    assert_eq!(srv.stats("/img/bb.tar.gz").body_bytes, size);
    // What the cache kept to revalidate with: a date, no entity tag.
    let meta: Vec<PathBuf> = std::fs::read_dir(&env.cache)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    assert_eq!(meta.len(), 1);
    let meta = std::fs::read_to_string(&meta[0]).unwrap();
    assert!(meta.contains("GMT") && !meta.contains(&format!("{size:x}-")), "cache record: {meta}");

    // The server answers 304 only to an If-Modified-Since that matches (there is no ETag to send).
    let o = env.ok(&["pull-tar", &url, "rclm-again"]);
    let st = srv.stats("/img/bb.tar.gz");
    assert_eq!((st.requests, st.not_modified, st.body_bytes), (2, 1, size), "{}", stderr(&o));
    assert_same_tree(busybox_tree(), &env.image("rclm-again"));

    // A newer Last-Modified: downloaded again.
    let later = std::time::SystemTime::now() + Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(www.join("img/bb.tar.gz"))
        .unwrap()
        .set_modified(later)
        .unwrap();
    env.ok(&["pull-tar", &url, "rclm-third"]);
    let st = srv.stats("/img/bb.tar.gz");
    assert_eq!((st.requests, st.not_modified, st.body_bytes), (3, 1, 2 * size));
    assert_eq!(env.images(), ["rclm", "rclm-again", "rclm-third"]);
    env.assert_clean("pull by Last-Modified", &["www"]);
}

/// Sets every mtime under `root` to whole seconds (what a tar header keeps), so that trees
/// compare by [`tree_digest`] after a round trip through an archive.
fn whole_second_mtimes(root: &Path) {
    let mut stack = vec![root.to_owned()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        if m.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().flatten().map(|e| e.path()));
        }
        let t = |s: i64| rustix::fs::Timespec { tv_sec: s, tv_nsec: 0 };
        let times = rustix::fs::Timestamps { last_access: t(m.atime()), last_modification: t(m.mtime()) };
        rustix::fs::utimensat(rustix::fs::CWD, &p, &times, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).unwrap();
    }
}

/// `export-tar --format=tar|gzip|xz|zstd` writes what `file` recognises and GNU tar extracts
/// (compression detected by tar itself), whatever the file's name; each imports back to the
/// same tree.
#[test]
fn export_formats_are_read_by_file_and_gnu_tar_and_import_back() {
    let env = Env::new();
    let src = env.image("rcexp");
    rich_tree(&src);
    whole_second_mtimes(&src);
    let digest = tree_digest(&src);
    let mut extra = Vec::new();
    for (format, file_says) in [
        ("tar", "POSIX tar archive"),
        ("gzip", "gzip compressed data"),
        ("xz", "XZ compressed data"),
        ("zstd", "Zstandard compressed data"),
    ] {
        // No extension: the option alone decides.
        let archive = env.path().join(format!("rcexp-{format}.img"));
        env.ok(&["export-tar", "rcexp", &archive.to_string_lossy(), &format!("--format={format}")]);
        let o = Command::new("file").arg("-b").arg(&archive).output().unwrap();
        assert!(stdout(&o).starts_with(file_says), "{format}: file says {}", stdout(&o));
        // Decompressed by the format's own tool, the content is a tar archive.
        let tool = match format {
            "gzip" => "gzip -dc",
            "xz" => "xz -dc",
            "zstd" => "zstd -qdc",
            _ => "cat",
        };
        let o = Command::new("sh")
            .arg("-c")
            .arg(format!("{tool} \"$1\" | file -b -"))
            .arg("sh")
            .arg(&archive)
            .output()
            .unwrap();
        assert!(
            stdout(&o).starts_with("POSIX tar archive"),
            "{format}: {tool} | file says {}{}",
            stdout(&o),
            stderr(&o)
        );
        let extracted = env.path().join(format!("gnu-{format}"));
        std::fs::create_dir(&extracted).unwrap();
        gnu_tar(&[
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "-xpf",
            &archive.to_string_lossy(),
            "-C",
            &extracted.to_string_lossy(),
        ]);
        // GNU tar gives the top directory the archive's "." entry; the rest is compared whole.
        assert_eq!(tree_digest(&extracted), digest, "{format}: GNU tar extracted a different tree");
        assert_same_tree(&src, &extracted);
        let name = format!("rcexp-back-{format}");
        env.ok(&["import-tar", &archive.to_string_lossy(), &name]);
        assert_eq!(tree_digest(&env.image(&name)), digest, "{format}: imported a different tree");
        assert_same_tree(&src, &env.image(&name));
        extra.push(format!("rcexp-{format}.img"));
        extra.push(format!("gnu-{format}"));
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    env.assert_clean("export formats", &extra);
}

#[test]
fn pull_tar_failures_leave_nothing() {
    let env = Env::new();
    let (srv, www, size) = serve_busybox(&env);
    let url = srv.url("/img/bb.tar.gz");

    env.fails(&["pull-tar", &srv.url("/img/missing.tar.gz"), "m"], "HTTP 404");
    srv.set_rule("/img/bb.tar.gz", Rule::NotFound);
    env.fails(&["pull-tar", &url], "HTTP 404 Not Found");
    srv.clear_rule("/img/bb.tar.gz");

    // The server closes the connection half-way through the body.
    srv.set_rule("/img/bb.tar.gz", Rule::CutAfter(size / 2));
    let o = env.fails(&["pull-tar", &url], "failed after");
    assert!(stderr(&o).contains(&url), "{}", stderr(&o));
    assert_eq!(srv.stats("/img/bb.tar.gz").body_bytes, size / 2);
    assert_eq!(cache_entries(&env), 0, "a cut download was cached");
    srv.clear_rule("/img/bb.tar.gz");

    // No SHA256SUMS and no FILE.sha256: refused unless --verify=no; FILE.sha256 alone works.
    std::fs::create_dir(www.join("nosums")).unwrap();
    std::fs::copy(www.join("img/bb.tar.gz"), www.join("nosums/bb.tar.gz")).unwrap();
    env.fails(&["pull-tar", &srv.url("/nosums/bb.tar.gz"), "ns"], "no checksum for");
    std::fs::write(
        www.join("nosums/bb.tar.gz.sha256"),
        format!("{}\n", sha256_file(&www.join("img/bb.tar.gz"))),
    )
    .unwrap();
    env.ok(&["pull-tar", &srv.url("/nosums/bb.tar.gz"), "ns"]);
    env.ok(&["remove", "ns"]);

    // A body that is not a tarball, and bad URLs.
    std::fs::write(www.join("img/junk.tar"), vec![0x55u8; 10_000]).unwrap();
    env.fails(
        &["pull-tar", "--verify=no", &srv.url("/img/junk.tar")],
        "import failed: this is not a tar archive",
    );
    env.fails(&["pull-tar", "ftp://127.0.0.1/x.tar"], "must be http or https");
    env.fails(
        &["pull-tar", "http://127.0.0.1:1/x.tar", "--verify=no"],
        "downloading http://127.0.0.1:1/x.tar failed",
    );

    assert!(env.images().is_empty(), "{:?}", env.images());
    env.assert_clean("pull failures", &["www"]);
    // And then the same pull works.
    env.ok(&["pull-tar", &url]);
    assert_eq!(env.images(), ["bb"]);
}

#[test]
fn pull_lxc_from_a_local_index_and_run() {
    let env = Env::new();
    let www = env.path().join("www");
    let build = "/images/busybox/1.36/amd64/default/20240301_05:24/";
    let dir = www.join(build.trim_start_matches('/'));
    std::fs::create_dir_all(&dir).unwrap();
    let rootfs = dir.join("rootfs.tar.xz");
    // Compressed here rather than by tar -J, which would need the xz program.
    let plain = env.path().join("rootfs.tar");
    gnu_tar(&[
        "--numeric-owner",
        "-cf",
        &plain.to_string_lossy(),
        "-C",
        &busybox_tree().to_string_lossy(),
        ".",
    ]);
    let mut xz = xz2::write::XzEncoder::new(std::fs::File::create(&rootfs).unwrap(), 6);
    xz.write_all(&std::fs::read(&plain).unwrap()).unwrap();
    xz.finish().unwrap();
    std::fs::write(
        dir.join("SHA256SUMS"),
        format!("{}  meta.tar.xz\n{}  rootfs.tar.xz\n", "1".repeat(64), sha256_file(&rootfs)),
    )
    .unwrap();
    std::fs::create_dir_all(www.join("meta/1.0")).unwrap();
    // An older build that does not exist: picking it would fail.
    std::fs::write(
        www.join("meta/1.0/index-system"),
        format!(
            "busybox;1.36;amd64;default;20240101_05:24;/images/busybox/1.36/amd64/default/20240101_05:24/\n\
             busybox;1.36;amd64;default;20240301_05:24;{build}\n\
             busybox;1.36;arm64;default;20240401_05:24;/images/busybox/1.36/arm64/default/20240401_05:24/\n"
        ),
    )
    .unwrap();
    let srv = HttpServer::start(&www);
    let server = format!("http://{}", srv.addr);
    env.ok(&["pull-lxc", "busybox", "1.36", "--server", &server, "--arch", "amd64"]);
    assert_eq!(env.images(), ["busybox-1.36"]);
    assert_same_tree(busybox_tree(), &env.image("busybox-1.36"));
    env.fails(
        &["pull-lxc", "busybox", "1.37", "--server", &server, "--arch", "amd64", "x"],
        "has no image busybox 1.37",
    );
    env.fails(&["pull-lxc", "busybox", "1.36", "--server", &server, "--arch", "arm64", "y"], "HTTP 404");

    // The pulled image runs.
    let o = env.cmd().args(["run", "-q", "-M", "busybox-1.36", "--", "/bin/true"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_no_leaks("busybox-1.36", &env.image("busybox-1.36"));

    // A tampered rootfs is refused.
    std::fs::write(&rootfs, b"tampered").unwrap();
    env.fails(
        &["pull-lxc", "busybox", "1.36", "--server", &server, "--arch", "amd64", "z"],
        "checksum mismatch",
    );
    assert_eq!(env.images(), ["busybox-1.36"]);
    env.assert_clean("pull-lxc", &["www", "rootfs.tar"]);
}

/// Runs a shell script in a private mount namespace (mounts vanish with it), with
/// $STORE, $MCTL and the given variables.
fn in_mount_ns(env: &Env, script: &str, vars: &[(&str, &Path)]) -> Output {
    let mut c = Command::new("unshare");
    c.args(["-m", "--propagation", "private", "sh", "-c", script])
        .env("STORE", &env.store)
        .env("MCTL", env!("CARGO_BIN_EXE_mctl"))
        .env("MCTL_IMAGE_STORE", &env.store)
        .env("MCTL_PULL_CACHE", &env.cache);
    for (k, v) in vars {
        c.env(k, v);
    }
    c.stdin(Stdio::null()).output().unwrap()
}

#[test]
fn full_and_read_only_stores_are_refused_cleanly() {
    let env = Env::new();
    let many = env.path().join("many.tar");
    let mut t = RawTar::new();
    // Small enough for the byte budget; the inodes run out (ENOSPC from the kernel).
    for i in 0..64 {
        t = t.file(&format!("f{i}"), b"");
    }
    std::fs::write(&many, t.finish()).unwrap();
    let one = env.path().join("one.tar");
    std::fs::write(&one, RawTar::new().file("big", &vec![1u8; 4 << 20]).finish()).unwrap();
    let o = in_mount_ns(
        &env,
        r#"mount -t tmpfs -o size=1m,nr_inodes=32 tmpfs "$STORE" || exit 99
           "$MCTL" import-tar "$MANY" many; echo "many=$?"
           "$MCTL" import-tar "$ONE" one; echo "one=$?"
           echo "left:$(ls -A "$STORE")""#,
        &[("MANY", &many), ("ONE", &one)],
    );
    let out = stdout(&o);
    assert!(
        out.contains("many=1") && out.contains("one=1") && out.contains("left:\n"),
        "{out}\n{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("No space left on device"), "{}", stderr(&o));
    assert!(stderr(&o).contains("'big' claims 4194304 bytes, more than the"), "{}", stderr(&o));

    // A read-only store: imports and changes fail with the kernel's reason, nothing changes.
    let bb = env.path().join("bb.tar");
    gnu_tar(&["--numeric-owner", "-cf", &bb.to_string_lossy(), "-C", &busybox_tree().to_string_lossy(), "."]);
    env.ok(&["import-tar", &bb.to_string_lossy(), "bb"]);
    let o = in_mount_ns(
        &env,
        r#"mount --bind "$STORE" "$STORE" && mount -o remount,bind,ro "$STORE" || exit 99
           "$MCTL" import-tar "$BB" other; echo "import=$?"
           "$MCTL" clone bb copy; echo "clone=$?"
           "$MCTL" remove bb; echo "remove=$?"
           "$MCTL" rename bb moved; echo "rename=$?"
           echo "left:$(ls -A "$STORE")""#,
        &[("BB", &bb)],
    );
    let out = stdout(&o);
    for verb in ["import", "clone", "remove", "rename"] {
        assert!(out.contains(&format!("{verb}=1")), "{verb}: {out}\n{}", stderr(&o));
    }
    assert!(out.contains("left:bb\n"), "{out}");
    assert!(stderr(&o).contains("Read-only file system"), "{}", stderr(&o));
    assert_eq!(env.images(), ["bb"]);
    assert_same_tree(busybox_tree(), &env.image("bb"));
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&*env.store.to_string_lossy()), "a mount was left behind");
    env.assert_clean("full store", &["many.tar", "one.tar", "bb.tar"]);
}

/// Sends `sig` to an import whose input stalls half-way; asserts it ends with 128+`sig` and
/// leaves nothing in the store.
fn interrupt_an_import(env: &Env, sig: i32) {
    // An archive that arrives slowly: half of it, then the writer stalls.
    let archive = RawTar::new().file("a", &vec![1u8; 256 * 1024]).file("b", &vec![2u8; 256 * 1024]).finish();
    let mut child = env
        .cmd()
        .args(["import-tar", "-", "slow"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(&archive[..300 * 1024]).unwrap();
    input.flush().unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || env
            .listing(&env.store)
            .iter()
            .any(|n| n.to_string_lossy().starts_with(".#import-slow"))),
        "the import did not start"
    );
    let t = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::try_from(sig).unwrap(),
    )
    .unwrap();
    let mut killed = false;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t.elapsed() > Duration::from_secs(15) && !killed {
            let _ = child.kill();
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(input);
    assert!(!killed, "mctl did not end after signal {sig}");
    assert_eq!(status.code(), Some(128 + sig), "signal {sig}: {status:?}");
    assert!(env.images().is_empty());
    env.assert_clean(&format!("import interrupted by signal {sig}"), &[]);
}

#[test]
fn an_interrupted_import_leaves_nothing() {
    let env = Env::new();
    for sig in [libc::SIGTERM, libc::SIGINT] {
        interrupt_an_import(&env, sig);
    }
}

/// SIGHUP (the terminal going away) interrupts an import as cleanly as SIGINT and SIGTERM.
#[test]
fn sighup_during_an_import_leaves_nothing() {
    let env = Env::new();
    interrupt_an_import(&env, libc::SIGHUP);
}

#[test]
fn bootstrap_runs_the_recipe_and_cleans_up_on_failure() {
    let env = Env::new();
    // Stand-ins for debootstrap (the real one needs the network): one that builds a tree from
    // the busybox fixture, one that fails half-way.
    let good = env.path().join("good-bin");
    let bad = env.path().join("bad-bin");
    let none = env.path().join("no-bin");
    for d in [&good, &bad, &none] {
        std::fs::create_dir(d).unwrap();
    }
    let script = |dir: &Path, body: &str| {
        let p = dir.join("debootstrap");
        std::fs::write(&p, format!("#!/bin/sh\n# args: OPTIONS SUITE TARGET MIRROR\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    script(
        &good,
        &format!(
            "eval target=\\${{$(($# - 1))}}\ncp -a {}/. \"$target\"/\necho \"suite=$3\" > \"$target/etc/suite\"",
            busybox_tree().display()
        ),
    );
    script(&bad, "eval target=\\${$(($# - 1))}\nmkdir -p \"$target/half\"\nexit 3");
    let path = |first: &Path| format!("{}:/usr/bin:/bin:/usr/sbin:/sbin", first.display());
    let run = |first: &Path, args: &[&str]| env.cmd().env("PATH", path(first)).args(args).output().unwrap();

    let o = run(&good, &["bootstrap", "debian", "bookworm", "deb"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(env.image("deb").join("etc/suite")).unwrap(), "suite=bookworm\n");
    assert!(env.ok(&["list-images"]).stdout.starts_with(b"NAME"));

    let o = run(&bad, &["bootstrap", "debian", "bookworm", "broken"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("failed"), "{}", stderr(&o));
    let o = run(&good, &["bootstrap", "debian", "bookworm", "deb"]);
    assert!(stderr(&o).contains("Image 'deb' already exists"), "{}", stderr(&o));
    let o = run(&good, &["bootstrap", "fedora", "40", "f"]);
    assert!(stderr(&o).contains("no bootstrap recipe for 'fedora'"), "{}", stderr(&o));
    // Neither tool on PATH (debootstrap lives in /usr/sbin, left out here).
    let o = env
        .cmd()
        .env("PATH", format!("{}:/usr/bin:/bin", none.display()))
        .args(["bootstrap", "debian", "bookworm", "n"])
        .output()
        .unwrap();
    assert!(stderr(&o).contains("neither debootstrap nor mmdebstrap is installed"), "{}", stderr(&o));
    assert_eq!(env.images(), ["deb"]);
    env.assert_clean("bootstrap", &["good-bin", "bad-bin", "no-bin"]);
}

#[test]
fn a_pulled_debian_image_boots() {
    let env = Env::new();
    let www = env.path().join("www");
    std::fs::create_dir_all(www.join("img")).unwrap();
    let tarball = www.join("img/bookworm.tar");
    let st = Command::new("tar")
        .args(["--xattrs", "--numeric-owner", "-C"])
        .arg(debian_tree())
        .args(["-cf"])
        .arg(&tarball)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let sum = Command::new("sha256sum").arg("bookworm.tar").current_dir(www.join("img")).output().unwrap();
    std::fs::write(www.join("img/SHA256SUMS"), &sum.stdout).unwrap();
    let srv = HttpServer::start(&www);
    env.ok(&["pull-tar", &srv.url("/img/bookworm.tar"), "deb"]);
    let boot = env.path().join("boot");
    std::fs::create_dir(&boot).unwrap();
    let store = env.store.display().to_string();
    let mut m = Machine::boot_env(&env.image("deb"), &boot, &[], &[("MCTL_IMAGE_STORE", store.as_str())]);
    assert_eq!(m.sh("systemctl is-system-running --wait"), "running", "log:\n{}", m.log_text());
    assert_eq!(m.sh("systemctl --failed --no-legend --plain"), "");
    assert_eq!(m.stop().code(), Some(0));
    assert_no_leaks("deb", &env.image("deb"));
}
