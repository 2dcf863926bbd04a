//! OCI images against Debian's distribution registry (`docker-registry`), filled with skopeo
//! from images umoci builds out of the busybox fixture: pulls by tag and digest compared with
//! `umoci unpack`, the blob store (shared layers, unchanged tags, corruption, resumed
//! downloads), token auth, hostile images, imports of skopeo layouts and docker archives,
//! exports read by skopeo, commit --oci of an ephemeral machine pushed and pulled back, and
//! runtime bundles run by runc. Needs root.

mod common;
mod oci_support;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use oci_support::*;
use tar::EntryType;

/// A scratch directory with an image store, a pull cache, a runtime dir for credentials,
/// a canary that hostile input must not touch, a registry, and the umoci-built images
/// pushed to it as `oci/busy:v1` and `oci/busy:v2`.
struct Env {
    s: tempfile::TempDir,
    store: PathBuf,
    cache: PathBuf,
    xdg: PathBuf,
    canary: PathBuf,
    layout: PathBuf,
    registry: Registry,
}

impl Env {
    fn new() -> Env {
        let s = scratch();
        let (store, cache, xdg, canary) =
            (s.path().join("store"), s.path().join("cache"), s.path().join("xdg"), s.path().join("canary"));
        for d in [&store, &xdg, &canary] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(canary.join("secret"), "canary\n").unwrap();
        let registry = Registry::start(s.path());
        let layout = build_images(s.path(), busybox_tree());
        for tag in ["v1", "v2"] {
            skopeo_copy(
                &format!("oci:{}:{tag}", layout.display()),
                &format!("docker://{}/oci/busy:{tag}", registry.addr),
            );
        }
        Env { s, store, cache, xdg, canary, layout, registry }
    }

    fn path(&self) -> &Path {
        self.s.path()
    }

    fn cmd(&self) -> Command {
        let mut c = mctl_with_store(&self.store, &self.cache);
        // Credentials only from the test's own files.
        c.env("XDG_RUNTIME_DIR", &self.xdg)
            .env("HOME", self.path())
            .env_remove("REGISTRY_AUTH_FILE")
            .env_remove("DOCKER_CONFIG")
            .env_remove("XDG_CONFIG_HOME");
        c
    }

    fn mctl(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("spawn mctl")
    }

    fn ok(&self, args: &[&str]) -> Output {
        output_ok(self.cmd(), args)
    }

    fn fails(&self, args: &[&str], needle: &str) -> Output {
        output_fails(self.cmd(), args, needle)
    }

    fn image(&self, name: &str) -> PathBuf {
        self.store.join(name)
    }

    /// The images in the store.
    fn images(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.store)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        v.sort();
        v
    }

    /// The digests in the blob store.
    fn blobs(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.cache.join("oci/blobs/sha256"))
            .map(|rd| rd.flatten().map(|e| format!("sha256:{}", e.file_name().to_string_lossy())).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    fn partials(&self) -> Vec<OsString> {
        std::fs::read_dir(self.cache.join("oci/partial"))
            .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default()
    }

    /// No temporaries in the store or the cache, no record without its image, the canary
    /// untouched.
    fn assert_clean(&self, what: &str) {
        for n in std::fs::read_dir(&self.store).unwrap().flatten() {
            let n = n.file_name();
            assert!(!n.as_bytes().starts_with(b".") || n == ".oci", "{what}: {n:?} left in the store");
        }
        if let Ok(rd) = std::fs::read_dir(self.store.join(".oci")) {
            for r in rd.flatten() {
                let n = r.file_name().to_string_lossy().into_owned();
                let image = n.strip_suffix(".json").unwrap_or(&n);
                assert!(self.image(image).is_dir(), "{what}: record {n} without its image");
            }
        }
        let tmp: Vec<_> = std::fs::read_dir(self.cache.join("oci/tmp"))
            .map(|rd| rd.flatten().collect())
            .unwrap_or_default();
        assert!(tmp.is_empty(), "{what}: temporaries left in the cache: {tmp:?}");
        assert_eq!(std::fs::read_dir(&self.canary).unwrap().count(), 1, "{what}: canary directory changed");
        assert_eq!(
            std::fs::read_to_string(self.canary.join("secret")).unwrap(),
            "canary\n",
            "{what}: canary changed"
        );
        assert_eq!(
            std::fs::metadata(self.canary.join("secret")).unwrap().nlink(),
            1,
            "{what}: canary got a hard link"
        );
    }

    fn reference(&self, addr: &str, tag: &str) -> String {
        format!("{addr}/oci/busy:{tag}")
    }

    /// The digest of `oci/busy:TAG`'s manifest.
    fn manifest_digest(&self, tag: &str) -> String {
        let v = skopeo_inspect(&[
            "--tls-verify=false",
            &format!("docker://{}/oci/busy:{tag}", self.registry.addr),
        ]);
        v["Digest"].as_str().unwrap().to_owned()
    }

    /// The layer digests of `oci/busy:TAG`.
    fn layers(&self, repo_tag: &str) -> Vec<String> {
        let v =
            skopeo_inspect(&["--tls-verify=false", &format!("docker://{}/{repo_tag}", self.registry.addr)]);
        v["Layers"].as_array().unwrap().iter().map(|l| l.as_str().unwrap().to_owned()).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Trees

#[derive(Debug, Clone, PartialEq, Eq)]
struct Snap {
    kind: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    /// Files and links only: directory times depend on the order things were written in.
    mtime: Option<i64>,
    rdev: u64,
    content: Option<String>,
    target: Option<PathBuf>,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

fn snapshot(root: &Path) -> BTreeMap<PathBuf, Snap> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let p = root.join(&rel);
        let m = std::fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        if ft.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(rel.join(e.unwrap().file_name()));
            }
        }
        out.insert(
            rel.clone(),
            Snap {
                kind: m.mode() & libc::S_IFMT,
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                mtime: (!ft.is_dir()).then(|| m.mtime()),
                rdev: m.rdev(),
                content: ft.is_file().then(|| sha256_hex(&std::fs::read(&p).unwrap())),
                target: ft.is_symlink().then(|| std::fs::read_link(&p).unwrap()),
                xattrs: xattrs_of(&p),
            },
        );
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

fn layer_blob(env: &Env, digest: &str) -> Vec<u8> {
    std::fs::read(env.cache.join("oci/blobs/sha256").join(digest.trim_start_matches("sha256:"))).unwrap()
}

fn record(env: &Env, name: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(env.store.join(".oci").join(format!("{name}.json"))).unwrap())
        .unwrap()
}

// ---------------------------------------------------------------------------------------------

#[test]
fn pull_by_tag_and_by_digest_gives_umocis_tree_and_runs_the_entrypoint() {
    let env = Env::new();
    let reg = env.registry.addr.clone();
    env.ok(&["pull-oci", &format!("docker://{}", env.reference(&reg, "v1")), "ocitag"]);
    let reference = umoci_unpack(&env.layout, "v1", &env.path().join("umoci-v1"));
    assert_same_tree(&reference, &env.image("ocitag"));
    // The second layer's whiteouts were applied, its file added.
    assert!(!env.image("ocitag/etc/doomed").exists() && !env.image("ocitag/opt/gone").exists());
    assert_eq!(std::fs::read_to_string(env.image("ocitag/etc/added")).unwrap(), "hello\n");
    // By digest: the same tree.
    let digest = env.manifest_digest("v1");
    env.ok(&["pull-oci", &format!("{reg}/oci/busy@{digest}"), "ocidigest"]);
    assert_same_tree(&reference, &env.image("ocidigest"));
    // The record is beside the tree, not in it.
    assert_eq!(record(&env, "ocidigest")["manifest_digest"], digest.as_str());
    assert!(!env.image("ocidigest/.oci").exists());
    // The image's entrypoint and command with its environment and working directory; -E wins.
    let o = env.ok(&["run", "-q", "-M", "ocitag"]);
    assert_eq!(stdout(&o), "hi from /tmp\n");
    let o = env.ok(&["run", "-q", "-M", "ocitag", "-E", "GREETING=hey"]);
    assert_eq!(stdout(&o), "hey from /tmp\n");
    let o = env.ok(&["run", "-q", "-M", "ocitag", "--", "/bin/sh", "-c", "echo $GREETING"]);
    assert_eq!(stdout(&o), "\n", "a command of one's own runs without the image's environment");
    let status = stdout(&env.ok(&["image-status", "ocitag"]));
    for needle in [
        "Entrypoint: \"/bin/sh\" \"-c\"",
        "Env: GREETING=hi",
        "WorkingDir: /tmp",
        "Layers: 2",
        "Label: org.example.test=yes",
    ] {
        assert!(status.contains(needle), "{needle} missing from:\n{status}");
    }
    // rename, clone and remove carry the record along.
    env.ok(&["rename", "ocitag", "ocimoved"]);
    env.ok(&["clone", "ocimoved", "ociclone"]);
    assert_eq!(stdout(&env.ok(&["run", "-q", "-M", "ociclone"])), "hi from /tmp\n");
    env.ok(&["remove", "ocimoved", "ociclone", "ocidigest"]);
    assert!(env.images().is_empty());
    env.assert_clean("after removals");
    // A plain tree (no record) still needs a command.
    let plain = env.path().join("plain.tar");
    let st = Command::new("tar")
        .args(["--numeric-owner", "-cf"])
        .arg(&plain)
        .arg("-C")
        .arg(busybox_tree())
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    env.ok(&["import-tar", &plain.to_string_lossy(), "ociplain"]);
    env.fails(&["run", "-q", "-M", "ociplain"], "no command given");
}

#[test]
fn shared_layers_and_unchanged_tags_transfer_only_what_is_new() {
    let env = Env::new();
    let proxy = Proxy::start(&env.registry.addr);
    let v1_layers = env.layers("oci/busy:v1");
    let v2_layers = env.layers("oci/busy:v2");
    assert_eq!(v2_layers.len(), 3);
    assert_eq!(&v2_layers[..2], &v1_layers[..]);
    env.ok(&["pull-oci", &env.reference(&proxy.addr, "v1"), "ocione"]);
    let mut got = proxy.blob_gets();
    got.sort();
    let v1_config = record(&env, "ocione")["config"]["digest"].as_str().unwrap().to_owned();
    let mut want = v1_layers.clone();
    want.push(v1_config);
    want.sort();
    assert_eq!(got, want, "the first pull fetches the configuration and both layers once");
    // v2 shares two layers: only its new layer and its configuration come down.
    proxy.clear();
    env.ok(&["pull-oci", &env.reference(&proxy.addr, "v2"), "ocitwo"]);
    let got = proxy.blob_gets();
    let v2_config = record(&env, "ocitwo")["config"]["digest"].as_str().unwrap().to_owned();
    assert_eq!(counts(&got), counts(&[v2_layers[2].clone(), v2_config]), "downloaded: {got:?}");
    assert_eq!(std::fs::read_to_string(env.image("ocitwo/etc/second")).unwrap(), "second\n");
    // The same tag again: the manifest is the only transfer.
    proxy.clear();
    env.ok(&["pull-oci", &env.reference(&proxy.addr, "v1"), "ocithree"]);
    assert!(proxy.blob_gets().is_empty(), "blobs fetched again: {:?}", proxy.seen());
    assert_eq!(proxy.manifest_gets(), vec!["/v2/oci/busy/manifests/v1".to_owned()]);
    assert_same_tree(&env.image("ocione"), &env.image("ocithree"));
    // prune-cache keeps what images use and drops the rest.
    let before = env.blobs();
    env.ok(&["remove", "ocitwo"]);
    env.ok(&["prune-cache"]);
    let after = env.blobs();
    assert!(!after.contains(&v2_layers[2]), "v2's own layer survived the prune");
    for l in &v1_layers {
        assert!(after.contains(l), "a layer in use was pruned");
    }
    assert!(after.len() < before.len());
    env.ok(&["remove", "ocione", "ocithree"]);
    env.ok(&["prune-cache"]);
    assert!(env.blobs().is_empty(), "left after pruning everything: {:?}", env.blobs());
    env.assert_clean("after pruning");
}

#[test]
fn corrupted_blobs_and_manifests_are_refused_and_not_cached() {
    let env = Env::new();
    let proxy = Proxy::start(&env.registry.addr);
    let layers = env.layers("oci/busy:v1");
    // A manifest asked for by digest that is not what its digest says (first, while the
    // cache does not have it).
    let digest = env.manifest_digest("v1");
    proxy.rules().corrupt = Some(format!("/manifests/{digest}"));
    env.fails(&["pull-oci", &format!("{}/oci/busy@{digest}", proxy.addr), "ocibad"], "digest mismatch");
    assert!(env.blobs().is_empty(), "{:?}", env.blobs());
    // By tag: not what the registry says it is (Docker-Content-Digest).
    proxy.rules().corrupt = Some("/manifests/v1".into());
    env.fails(&["pull-oci", &env.reference(&proxy.addr, "v1"), "ocibad"], "digest mismatch");
    assert!(env.blobs().is_empty(), "{:?}", env.blobs());
    env.assert_clean("after corrupted manifests");
    // A layer.
    proxy.rules().corrupt = Some(layers[0].clone());
    let o = env.fails(&["pull-oci", &env.reference(&proxy.addr, "v1"), "ocibad"], "digest mismatch");
    assert!(stderr(&o).contains(&layers[0]), "{}", stderr(&o));
    assert!(env.images().is_empty());
    assert!(!env.blobs().contains(&layers[0]), "the damaged layer was cached");
    // (Other layers in flight when it failed may be kept, to resume.)
    let partial_of = |d: &str| OsString::from(d.replace(':', "-"));
    assert!(
        !env.partials().contains(&partial_of(&layers[0])),
        "the damaged download was kept: {:?}",
        env.partials()
    );
    env.assert_clean("after a corrupted layer");
    // Without the corruption the same pull works.
    proxy.rules().corrupt = None;
    env.ok(&["pull-oci", &env.reference(&proxy.addr, "v1"), "ocigood"]);
    assert!(env.blobs().contains(&layers[0]));
}

#[test]
fn an_interrupted_download_resumes_where_it_stopped() {
    let env = Env::new();
    let proxy = Proxy::start(&env.registry.addr);
    let layers = env.layers("oci/busy:v1");
    proxy.rules().cut = Some((layers[0].clone(), 300_000));
    env.fails(&["pull-oci", &env.reference(&proxy.addr, "v1"), "ociresume"], "pull again to resume");
    assert!(env.images().is_empty());
    let partial = OsString::from(layers[0].replace(':', "-"));
    assert!(env.partials().contains(&partial), "the partial download was not kept: {:?}", env.partials());
    proxy.clear();
    env.ok(&["pull-oci", &env.reference(&proxy.addr, "v1"), "ociresume"]);
    let ranged: Vec<_> = proxy.seen().into_iter().filter(|s| s.path.ends_with(&layers[0])).collect();
    assert_eq!(ranged.len(), 1);
    assert_eq!(ranged[0].range.as_deref(), Some("bytes=300000-"), "not resumed: {ranged:?}");
    assert_eq!(ranged[0].status, 206);
    assert!(env.partials().is_empty());
    let reference = umoci_unpack(&env.layout, "v1", &env.path().join("umoci-v1"));
    assert_same_tree(&reference, &env.image("ociresume"));
}

#[test]
fn a_bearer_token_challenge_is_answered_with_the_users_credentials() {
    let env = Env::new();
    let proxy = Proxy::start(&env.registry.addr);
    proxy.rules().token =
        Some(TokenAuth { user: "tester".into(), password: "s3cret".into(), token: "tok-4242".into() });
    // No credentials: the token server refuses, mctl says what to do.
    env.fails(&["pull-oci", &env.reference(&proxy.addr, "v1"), "ociauth"], "log in");
    // Wrong ones, in podman's auth.json under $XDG_RUNTIME_DIR.
    use base64::Engine as _;
    let auth = |user: &str, pw: &str| {
        let enc = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"));
        serde_json::json!({"auths": {proxy.addr.clone(): {"auth": enc}}}).to_string()
    };
    std::fs::create_dir_all(env.xdg.join("containers")).unwrap();
    std::fs::write(env.xdg.join("containers/auth.json"), auth("tester", "wrong")).unwrap();
    env.fails(&["pull-oci", &env.reference(&proxy.addr, "v1"), "ociauth"], "credentials of tester");
    std::fs::write(env.xdg.join("containers/auth.json"), auth("tester", "s3cret")).unwrap();
    env.ok(&["pull-oci", &env.reference(&proxy.addr, "v1"), "ociauth"]);
    let asked = proxy.token_requests();
    let good: Vec<_> = asked.iter().filter(|(_, ok)| *ok).collect();
    assert!(!good.is_empty());
    assert!(
        good.iter().all(
            |(q, _)| q.contains("scope=repository%3Aoci%2Fbusy%3Apull") && q.contains("service=oci-test")
        ),
        "{asked:?}"
    );
    // Every registry request after the challenge carried the token (the proxy let it through).
    assert!(proxy.seen().iter().any(|s| s.path.contains("/blobs/") && s.status == 200));
    // docker's config.json works too, and --authfile.
    std::fs::remove_file(env.xdg.join("containers/auth.json")).unwrap();
    std::fs::create_dir_all(env.path().join(".docker")).unwrap();
    std::fs::write(env.path().join(".docker/config.json"), auth("tester", "s3cret")).unwrap();
    env.ok(&["pull-oci", &env.reference(&proxy.addr, "v1"), "ocidocker"]);
    std::fs::remove_file(env.path().join(".docker/config.json")).unwrap();
    let file = env.path().join("creds.json");
    std::fs::write(&file, auth("tester", "s3cret")).unwrap();
    env.ok(&[
        "pull-oci",
        "--authfile",
        &file.to_string_lossy(),
        &env.reference(&proxy.addr, "v2"),
        "ocifile",
    ]);
    env.assert_clean("after authenticated pulls");
}

#[test]
fn bad_references_and_hostile_images_fail_cleanly() {
    let env = Env::new();
    let reg = env.registry.addr.clone();
    // What does not exist.
    env.fails(&["pull-oci", &format!("{reg}/oci/busy:nosuchtag"), "ocix"], "no such tag");
    env.fails(&["pull-oci", &format!("{reg}/oci/nosuchrepo:v1"), "ocix"], "check its name");
    env.fails(&["pull-oci", "127.0.0.1:1/oci/busy:v1", "ocix"], "reaching the registry");
    env.fails(&["pull-oci", "registry.invalid/oci/busy:v1", "ocix"], "reaching the registry");
    env.fails(&["pull-oci", "Bad/Name", "ocix"], "invalid image reference");
    env.fails(&["pull-oci", &format!("{reg}/oci/busy:v1"), "bad/name"], "invalid image name");
    env.fails(&["pull-oci", "--platform", "linux/s390x", &format!("{reg}/oci/busy:v1"), "ocix"], "s390x");
    let canary = env.canary.display().to_string();
    let gz = |t: RawTar| gzip(&t.finish());
    let diff = |t: &[u8]| format!("sha256:{}", sha256_hex(t));
    let hostile: Vec<(&str, Vec<u8>, &str)> = vec![
        ("climb", gz(RawTar::new().file("../../canary/evil", b"x")), "leads outside the image root"),
        ("absolute", gz(RawTar::new().file(&format!("{canary}/evil"), b"x")), "absolute path"),
        (
            "symlink",
            gz(RawTar::new().symlink("escape", &canary).file("escape/evil", b"x")),
            "leads through a symbolic link",
        ),
        (
            "whiteout-through-symlink",
            gz(RawTar::new().symlink("escape", &canary).file("escape/.wh.secret", b"")),
            "leads through a symbolic link",
        ),
        (
            "whiteout-outside",
            gz(RawTar::new().file("../canary/.wh.secret", b"")),
            "leads outside the image root",
        ),
        (
            "opaque-outside",
            gz(RawTar::new().file("../canary/.wh..wh..opq", b"")),
            "leads outside the image root",
        ),
        ("hardlink-outside", gz(RawTar::new().hardlink("h", "../canary/secret")), "not inside the image"),
        (
            "huge",
            gz(RawTar::new().entry("big", EntryType::Regular, "", b"", Some(1 << 45))),
            "claims 35184372088832 bytes",
        ),
        (
            "not-a-tar",
            gzip(b"this is not a tar archive at all, but it is long enough to look at"),
            "layer sha256:",
        ),
    ];
    for (tag, blob, needle) in &hostile {
        let plain = {
            use std::io::Read;
            let mut v = Vec::new();
            flate2::read::GzDecoder::new(&blob[..]).read_to_end(&mut v).unwrap();
            v
        };
        push_raw(
            &reg,
            "oci/hostile",
            tag,
            &config_for(&[diff(&plain)]),
            &[("application/vnd.oci.image.layer.v1.tar+gzip", blob.clone())],
        );
        let o = env.mctl(&["pull-oci", &format!("{reg}/oci/hostile:{tag}"), "ocihostile"]);
        assert!(!o.status.success(), "{tag} was accepted");
        let err = stderr(&o);
        assert!(err.contains(needle), "{tag}: expected '{needle}' in: {err}");
        assert!(env.images().is_empty(), "{tag} left an image");
        env.assert_clean(tag);
    }
    // An unsupported layer type: refused before anything is downloaded.
    let layer = gz(RawTar::new().file("x", b"x"));
    let zero = format!("sha256:{}", "0".repeat(64));
    push_raw(
        &reg,
        "oci/hostile",
        "mediatype",
        &config_for(&[zero]),
        &[("application/vnd.example.evil", layer.clone())],
    );
    env.fails(
        &["pull-oci", &format!("{reg}/oci/hostile:mediatype"), "ocihostile"],
        "application/vnd.example.evil",
    );
    assert!(!env.blobs().contains(&diff(&layer)));
    // A configuration that does not match the manifest.
    push_raw(
        &reg,
        "oci/hostile",
        "diffids",
        &config_for(&[]),
        &[("application/vnd.oci.image.layer.v1.tar+gzip", layer)],
    );
    env.fails(&["pull-oci", &format!("{reg}/oci/hostile:diffids"), "ocihostile"], "lists 0 layers");
    env.assert_clean("after hostile images");
}

#[test]
fn a_full_disk_fails_the_pull_and_leaves_nothing() {
    let env = Env::new();
    let reg = env.registry.addr.clone();
    let run = |script: &str| {
        Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", script])
            .env("MCTL", env!("CARGO_BIN_EXE_mctl"))
            .env("MCTL_IMAGE_STORE", &env.store)
            .env("MCTL_PULL_CACHE", &env.cache)
            .env("DBUS_SYSTEM_BUS_ADDRESS", NO_BUS)
            .env("REF", format!("{reg}/oci/busy:v1"))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    std::fs::create_dir_all(&env.cache).unwrap();
    // The cache on a 600 KiB tmpfs: the first layer (1 MiB) does not fit.
    let o = run(r#"mount -t tmpfs -o size=600k tmpfs "$MCTL_PULL_CACHE" || exit 99
                  "$MCTL" pull-oci "$REF" ocifull; echo "rc=$?"
                  echo "blobs:$(ls -A "$MCTL_PULL_CACHE/oci/blobs/sha256" | tr '\n' ' ') partial:$(ls -A "$MCTL_PULL_CACHE/oci/partial")""#);
    let out = stdout(&o);
    let first = env.layers("oci/busy:v1")[0].trim_start_matches("sha256:").to_owned();
    assert!(
        out.contains("rc=1") && out.contains("partial:\n") && !out.contains(&first),
        "{out}\n{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("free some space"), "{}", stderr(&o));
    assert!(env.images().is_empty());
    // The store on a small tmpfs: the tree does not fit; nothing is left in the store.
    let o = run(r#"mount -t tmpfs -o size=1m tmpfs "$MCTL_IMAGE_STORE" || exit 99
                  "$MCTL" pull-oci "$REF" ocifull; echo "rc=$?"
                  echo "left:$(ls -A "$MCTL_IMAGE_STORE")""#);
    let out = stdout(&o);
    assert!(out.contains("rc=1") && out.contains("left:\n"), "{out}\n{}", stderr(&o));
    assert!(stderr(&o).contains("bytes free") || stderr(&o).contains("No space left"), "{}", stderr(&o));
}

#[test]
fn import_of_skopeo_layouts_and_docker_archives_and_export_read_by_skopeo() {
    let env = Env::new();
    let reg = env.registry.addr.clone();
    let reference = umoci_unpack(&env.layout, "v1", &env.path().join("umoci-v1"));
    // An OCI layout directory skopeo wrote.
    let dir = env.path().join("skopeo-layout");
    skopeo_copy(&format!("docker://{reg}/oci/busy:v1"), &format!("oci:{}:v1", dir.display()));
    env.ok(&["import-oci", &dir.to_string_lossy(), "ocilayout"]);
    assert_same_tree(&reference, &env.image("ocilayout"));
    assert_eq!(stdout(&env.ok(&["run", "-q", "-M", "ocilayout"])), "hi from /tmp\n");
    // The same layout as a tar, and the image picked by its ref name among two.
    skopeo_copy(&format!("docker://{reg}/oci/busy:v2"), &format!("oci:{}:v2", dir.display()));
    env.fails(&["import-oci", &dir.to_string_lossy(), "ocitwo"], "choose one with --ref");
    let tar = env.path().join("layout.tar");
    let st = Command::new("tar").arg("-C").arg(&dir).arg("-cf").arg(&tar).arg(".").status().unwrap();
    assert!(st.success());
    env.ok(&["import-oci", "--ref", "v2", &tar.to_string_lossy(), "ocilayouttar"]);
    assert_eq!(std::fs::read_to_string(env.image("ocilayouttar/etc/second")).unwrap(), "second\n");
    // A docker archive (docker save's format), named after its tag.
    let archive = env.path().join("busy-docker.tar");
    skopeo_copy(
        &format!("docker://{reg}/oci/busy:v1"),
        &format!("docker-archive:{}:oci/busy:v1", archive.display()),
    );
    env.ok(&["import-oci", &archive.to_string_lossy()]);
    assert_same_tree(&reference, &env.image("busy"));
    assert_eq!(stdout(&env.ok(&["run", "-q", "-M", "busy"])), "hi from /tmp\n");
    // A damaged layout blob is refused.
    let bad = env.path().join("bad-layout");
    skopeo_copy(&format!("docker://{reg}/oci/busy:v1"), &format!("oci:{}:v1", bad.display()));
    let big = std::fs::read_dir(bad.join("blobs/sha256"))
        .unwrap()
        .flatten()
        .max_by_key(|e| e.metadata().unwrap().len())
        .unwrap();
    let mut data = std::fs::read(big.path()).unwrap();
    let i = data.len() / 2;
    data[i] ^= 1;
    std::fs::write(big.path(), data).unwrap();
    let fresh_cache = env.path().join("cache2");
    let o = env
        .cmd()
        .env("MCTL_PULL_CACHE", &fresh_cache)
        .args(["import-oci", &bad.to_string_lossy(), "ocidamaged"])
        .output()
        .unwrap();
    assert!(!o.status.success() && stderr(&o).contains("digest mismatch"), "{}", stderr(&o));
    env.assert_clean("after a damaged layout");
    // export-oci writes a layout skopeo reads and copies back into the registry.
    let out = env.path().join("export");
    env.ok(&["export-oci", "busy", &out.to_string_lossy()]);
    let v = skopeo_inspect(&[&format!("oci:{}:latest", out.display())]);
    assert_eq!(v["Layers"].as_array().unwrap().len(), 2, "{v}");
    skopeo_copy(&format!("oci:{}:latest", out.display()), &format!("docker://{reg}/oci/exported:v1"));
    env.ok(&["pull-oci", &format!("{reg}/oci/exported:v1"), "ociexported"]);
    assert_same_tree(&reference, &env.image("ociexported"));
    // A plain image (no layers of its own) exports as one layer, as a tar too.
    let plain = env.path().join("plain.tar");
    let st = Command::new("tar")
        .args(["--numeric-owner", "-cf"])
        .arg(&plain)
        .arg("-C")
        .arg(busybox_tree())
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    env.ok(&["import-tar", &plain.to_string_lossy(), "ociplain"]);
    let out_tar = env.path().join("plain-export.tar");
    env.ok(&["export-oci", "ociplain", &out_tar.to_string_lossy()]);
    env.ok(&["import-oci", &out_tar.to_string_lossy(), "ociplainback"]);
    assert_same_tree(&env.image("ociplain"), &env.image("ociplainback"));
    env.assert_clean("after imports and exports");
}

#[test]
fn oci_bundle_runs_under_runc() {
    let env = Env::new();
    env.ok(&["pull-oci", &env.reference(&env.registry.addr, "v1"), "ocibundle"]);
    let dir = env.path().join("bundle");
    env.ok(&["oci-bundle", "ocibundle", &dir.to_string_lossy()]);
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        config["process"]["args"],
        serde_json::json!(["/bin/sh", "-c", "echo \"$GREETING from $PWD\""])
    );
    assert_eq!(config["process"]["cwd"], "/tmp");
    assert_eq!(config["root"]["path"], "rootfs");
    assert_same_tree(&env.image("ocibundle"), &dir.join("rootfs"));
    let id = format!("oci-test-{}", std::process::id());
    let state = env.path().join("runc-state");
    let o = Command::new("runc")
        .arg("--root")
        .arg(&state)
        .args(["run", "--bundle"])
        .arg(&dir)
        .arg(&id)
        .stdin(Stdio::null())
        .output()
        .expect("runc (apt install runc)");
    // Whatever happened, no container stays behind.
    let _ = Command::new("runc").arg("--root").arg(&state).args(["delete", "--force", &id]).output();
    assert!(o.status.success(), "runc failed: {}", stderr(&o));
    assert_eq!(stdout(&o), "hi from /tmp\n");
    env.fails(&["oci-bundle", "ocibundle", &dir.to_string_lossy()], "exists");
}

#[test]
fn commit_oci_of_an_ephemeral_machine_is_one_layer_that_pushes_and_pulls_back() {
    let env = Env::new();
    let reg = env.registry.addr.clone();
    let proxy = Proxy::start(&reg);
    let bus = TestBus::start(env.path());
    let _mctld = Mctld::start(&bus, env.path(), false);
    // Through the proxy, so that the push below goes to the registry the base came from.
    env.ok(&["pull-oci", &env.reference(&proxy.addr, "v1"), "ocibase"]);
    let base_digest = common::tree_digest(&env.image("ocibase"));
    let script = "rm /etc/added && rm -r /home && echo fresh > /etc/fresh && mkdir -p /srv/new && echo f > /srv/new/f \
                  && chmod 600 /etc/passwd && touch /tmp/ready; sleep 120";
    let (mut machine, _) = changed_ephemeral_machine(&env, &bus, "ocibase", &[], script);
    commit_oci_of_the_machine(&env, &bus, "ocicommitted");
    stop_launcher(&mut machine);
    assert_eq!(
        common::tree_digest(&env.image("ocibase")),
        base_digest,
        "the ephemeral machine changed its image"
    );

    // One layer more than the image's, holding exactly the changes.
    let rec = record(&env, "ocicommitted");
    let layers: Vec<String> =
        rec["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_owned()).collect();
    let base_layers = env.layers("oci/busy:v1");
    assert_eq!(layers.len(), 3);
    assert_eq!(&layers[..2], &base_layers[..]);
    let members = layer_members(&layer_blob(&env, &layers[2]));
    for m in ["etc/fresh", "etc/.wh.added", ".wh.home", "srv/new/f", "etc/passwd"] {
        assert!(members.iter().any(|x| x == m), "{m} not in the new layer: {members:?}");
    }
    // Unchanged files are not in it, nor what the machine wrote to its API filesystems.
    for m in ["bin/busybox", "etc/group", "tmp/ready"] {
        assert!(!members.iter().any(|x| x == m), "{m} in the layer: {members:?}");
    }
    assert!(!env.image("ocicommitted/etc/added").exists() && env.image("ocicommitted/etc/fresh").exists());
    assert_eq!(std::fs::metadata(env.image("ocicommitted/etc/passwd")).unwrap().mode() & 0o777, 0o600);

    // Pushed (through the proxy, to see what goes over the wire): the base layers are mounted
    // from oci/busy, only the new layer and the configuration are uploaded.
    let o = env.ok(&["push-oci", "ocicommitted", &format!("{}/oci/committed:v1", proxy.addr)]);
    let pushed_digest = stdout(&o).trim().to_owned();
    let uploads: Vec<_> = proxy
        .seen()
        .into_iter()
        .filter(|s| s.method == "PUT" && s.path.contains("/blobs/uploads/"))
        .collect();
    assert_eq!(uploads.len(), 2, "uploads: {uploads:?}");
    // (A mount the registry cannot make answers 202 with the upload session the PUT uses.)
    let mounts = proxy
        .seen()
        .into_iter()
        .filter(|s| s.method == "POST" && s.path.contains("mount=") && s.status == 201)
        .count();
    assert_eq!(mounts, 2, "{:?}", proxy.seen());
    // Again: the registry has everything, nothing is sent.
    proxy.clear();
    env.ok(&["push-oci", "ocicommitted", &format!("{}/oci/committed:v1", proxy.addr)]);
    assert!(
        !proxy.seen().iter().any(|s| s.method == "PUT" && s.path.contains("/blobs/")),
        "{:?}",
        proxy.seen()
    );
    // skopeo sees the three layers, the last one ours.
    let v = skopeo_inspect(&["--tls-verify=false", &format!("docker://{reg}/oci/committed:v1")]);
    assert_eq!(v["Digest"], pushed_digest.as_str());
    let seen: Vec<&str> = v["Layers"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    assert_eq!(seen, layers.iter().map(String::as_str).collect::<Vec<_>>());
    // Pulled back: the committed tree, and it still runs the image's entrypoint.
    env.ok(&["pull-oci", &format!("{reg}/oci/committed:v1"), "ocipulledback"]);
    assert_same_tree(&env.image("ocicommitted"), &env.image("ocipulledback"));
    assert_eq!(stdout(&env.ok(&["run", "-q", "-M", "ocipulledback"])), "hi from /tmp\n");
    // A machine that does not exist: a clear error, no image.
    let o = env
        .cmd()
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .args(["commit", "--oci", "nosuchmachine", "ocinone"])
        .output()
        .unwrap();
    assert!(!o.status.success() && stderr(&o).contains("nosuchmachine"), "{}", stderr(&o));
    env.assert_clean("after commit and push");
}

#[test]
fn gzip_zstd_and_plain_layers_apply_in_order() {
    let env = Env::new();
    let reg = env.registry.addr.clone();
    let first = RawTar::new().dir("data").file("data/gz", b"from gzip\n").file("data/doomed", b"x").finish();
    let second = RawTar::new().file("data/zst", b"from zstd\n").file("data/.wh.doomed", b"").finish();
    let third = RawTar::new().file("data/plain", b"from a plain tar\n").finish();
    let diff = |t: &[u8]| format!("sha256:{}", sha256_hex(t));
    push_raw(
        &reg,
        "oci/codecs",
        "v1",
        &config_for(&[diff(&first), diff(&second), diff(&third)]),
        &[
            ("application/vnd.oci.image.layer.v1.tar+gzip", gzip(&first)),
            ("application/vnd.oci.image.layer.v1.tar+zstd", zstd::encode_all(&second[..], 3).unwrap()),
            ("application/vnd.oci.image.layer.v1.tar", third.clone()),
        ],
    );
    env.ok(&["pull-oci", &format!("{reg}/oci/codecs:v1"), "ocicodecs"]);
    let read = |p: &str| std::fs::read_to_string(env.image(&format!("ocicodecs/{p}"))).unwrap();
    assert_eq!(read("data/gz"), "from gzip\n");
    assert_eq!(read("data/zst"), "from zstd\n");
    assert_eq!(read("data/plain"), "from a plain tar\n");
    assert!(!env.image("ocicodecs/data/doomed").exists(), "the zstd layer's whiteout was not applied");
    assert!(!env.image("ocicodecs/data/.wh.doomed").exists());
    // A zstd layer whose content is not what the configuration's diff ID says: refused.
    let other = RawTar::new().file("data/zst", b"something else\n").finish();
    push_raw(
        &reg,
        "oci/codecs",
        "lying",
        &config_for(&[diff(&first), diff(&second)]),
        &[
            ("application/vnd.oci.image.layer.v1.tar+gzip", gzip(&first)),
            ("application/vnd.oci.image.layer.v1.tar+zstd", zstd::encode_all(&other[..], 3).unwrap()),
        ],
    );
    let o = env.mctl(&["pull-oci", &format!("{reg}/oci/codecs:lying"), "ocilying"]);
    assert!(
        !o.status.success() && stderr(&o).contains("diff ID"),
        "a layer that is not its diff ID: {}",
        stderr(&o)
    );
    assert!(!env.images().contains(&"ocilying".to_owned()));
    env.ok(&["remove", "ocicodecs"]);
    env.assert_clean("after codecs");
}

/// `commit --oci` of an ephemeral machine with a user namespace: its root shows host ids through
/// the idmapped mount, yet the layer holds only what changed, with the machine's own ids, and
/// nothing of the files the host mounted over its own.
#[test]
fn commit_oci_of_a_user_namespaced_machine_records_its_own_ids() {
    let env = Env::new();
    let reg = env.registry.addr.clone();
    let bus = TestBus::start(env.path());
    let _mctld = Mctld::start(&bus, env.path(), false);
    env.ok(&["pull-oci", &env.reference(&reg, "v1"), "ocibaseu"]);
    let script = "echo fresh > /etc/fresh && chown 1000:1000 /etc/fresh && touch /tmp/ready; sleep 120";
    let (mut machine, leader) = changed_ephemeral_machine(&env, &bus, "ocibaseu", &["-U"], script);
    let shift = std::fs::read_to_string(format!("/proc/{leader}/uid_map")).unwrap();
    assert_ne!(shift.split_whitespace().nth(1), Some("0"), "not in a user namespace: {shift}");
    commit_oci_of_the_machine(&env, &bus, "ocicommittedu");
    stop_launcher(&mut machine);

    let rec = record(&env, "ocicommittedu");
    let layers: Vec<String> =
        rec["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_owned()).collect();
    let members = layer_members(&layer_blob(&env, layers.last().unwrap()));
    assert!(members.iter().any(|x| x == "etc/fresh"), "{members:?}");
    for m in ["bin/busybox", "etc/group", "etc/resolv.conf", "tmp/ready"] {
        assert!(!members.iter().any(|x| x == m), "{m} in the layer: {members:?}");
    }
    let fresh = std::fs::metadata(env.image("ocicommittedu/etc/fresh")).unwrap();
    assert_eq!((fresh.uid(), fresh.gid()), (1000, 1000));
    assert_eq!(std::fs::metadata(env.image("ocicommittedu/bin")).unwrap().uid(), 0);
}

/// An ephemeral machine of `image` (with `opts`) registered on `bus`, once `script` has made its
/// changes (it touches /tmp/ready, then sleeps); returns it and its leader.
fn changed_ephemeral_machine(
    env: &Env,
    bus: &TestBus,
    image: &str,
    opts: &[&str],
    script: &str,
) -> (Guarded, i32) {
    let mut notify = NotifyListener::new(env.path());
    let machine = Guarded(
        env.cmd()
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
            .env("MCTL_RUNTIME_DIR", env.path().join("run"))
            .env("NOTIFY_SOCKET", &notify.path)
            .args(["run", "-q", "-x"])
            .args(opts)
            .args(["-M", image, "--", "/bin/sh", "-c", script])
            .spawn()
            .unwrap(),
    );
    let leader = notify.wait_leader(0, Duration::from_secs(20)).expect("the machine started");
    assert!(
        wait_until(Duration::from_secs(20), || Path::new(&format!("/proc/{leader}/root/tmp/ready")).exists()),
        "the machine did not make its changes"
    );
    (machine, leader)
}

/// `mctl commit --oci` of the one machine registered on `bus`, as `image`.
fn commit_oci_of_the_machine(env: &Env, bus: &TestBus, image: &str) {
    let list = env
        .cmd()
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .args(["list", "--no-legend"])
        .output()
        .unwrap();
    let name = stdout(&list).split_whitespace().next().expect("the machine is registered").to_owned();
    let o = env
        .cmd()
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .args(["commit", "--oci", &name, image])
        .output()
        .unwrap();
    assert!(o.status.success(), "commit --oci: {}", stderr(&o));
}
