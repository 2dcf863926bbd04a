//! `import-oci` and `export-oci`: OCI image layouts (a directory or a tar of one) and
//! `docker save` archives in, OCI layouts out.
//!
//! An archive is read once, front to back (it may come compressed): its blobs go into the
//! blob store (checked against the digest that names them, when one does), its small
//! documents stay in memory. A directory is read in place, every path resolved inside it
//! (its symlinks cannot lead out). Either way nothing is used before its digest was checked,
//! and layers are applied through the confined writer as for pulls.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use oci_spec::image::ImageIndex;

use super::OciError;
use super::apply::LayerApplier;
use super::blobs::BlobStore;
use super::diff;
use super::digest::Digest;
use super::manifest::{
    self, CONFIG_LIMIT, DOCKER_CONFIG, Desc, Kind, OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD, OCI_MANIFEST, Platform,
};
use super::meta::{self, ImageMeta};
use super::pull::check_config;
use super::registry::MANIFEST_LIMIT;
use crate::images::compress::Compression;
use crate::images::interrupt::Temporary;
use crate::images::store::{ImageInfo, ImageStore, random_suffix};
use crate::images::tar_import::{self, ImportError};

/// The annotation naming an image in a layout.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Files of an archive kept in memory up to this size (documents); larger ones are blobs.
const SMALL: u64 = 1 << 20;
/// What an archive's small files may take in memory altogether.
const SMALL_TOTAL: u64 = 256 << 20;

/// Settings of `import-oci`.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// The pull cache (blob store).
    pub cache: PathBuf,
    /// Which image of a layout or archive: a ref name, or a RepoTag.
    pub reference: Option<String>,
    /// The platform to pick from an index.
    pub platform: Platform,
}

/// A file of an archive.
#[derive(Debug)]
enum Member {
    Small(Vec<u8>),
    Blob(Digest),
    Link(String),
}

/// Where an import reads from.
enum Source {
    Dir { root: OwnedFd, path: PathBuf },
    Archive { path: PathBuf, files: HashMap<String, Member> },
}

/// A member name relative to the archive root, `..` resolved lexically; `None` if it climbs
/// out.
fn clean(name: &Path) -> Option<String> {
    let mut out: Vec<&OsStr> = Vec::new();
    for c in name.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop()?;
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    let joined: PathBuf = out.iter().collect();
    joined.to_str().map(str::to_owned)
}

impl Source {
    fn what(&self, rel: &str) -> String {
        match self {
            Source::Dir { path, .. } => path.join(rel).display().to_string(),
            Source::Archive { path, .. } => format!("{}:{rel}", path.display()),
        }
    }

    fn member(&self, rel: &str) -> Result<&Member, OciError> {
        let Source::Archive { files, .. } = self else { unreachable!("only archives have members") };
        let mut name = rel.to_owned();
        for _ in 0..16 {
            match files.get(&name) {
                Some(Member::Link(t)) => name = t.clone(),
                Some(m) => return Ok(m),
                None => break,
            }
        }
        Err(OciError::invalid(self.what(rel), "missing from the archive"))
    }

    fn exists(&self, rel: &str) -> bool {
        match self {
            Source::Dir { root, .. } => {
                crate::sys::linux::open_in_root(root.as_fd(), Path::new(rel), libc::O_PATH).is_ok()
            }
            Source::Archive { .. } => self.member(rel).is_ok(),
        }
    }

    /// A small file whole.
    fn read(&self, rel: &str, blobs: &BlobStore, limit: u64) -> Result<Vec<u8>, OciError> {
        match self {
            // A limit past the address space is no limit.
            Source::Dir { root, .. } => crate::guestfs::read(
                root.as_fd(),
                Path::new(rel),
                usize::try_from(limit).unwrap_or(usize::MAX),
            )
            .map_err(|e| OciError::invalid(self.what(rel), e)),
            Source::Archive { .. } => match self.member(rel)? {
                Member::Small(b) => Ok(b.clone()),
                Member::Blob(d) => blobs.read_small(d, limit),
                Member::Link(_) => Err(OciError::invalid(self.what(rel), "a link loop")),
            },
        }
    }

    /// Makes sure file `rel` is in the blob store; checks it against `expected` (digest and
    /// size) when given. Returns its digest and size.
    fn blob(&self, rel: &str, expected: Option<&Desc>, blobs: &BlobStore) -> Result<(Digest, u64), OciError> {
        let what = self.what(rel);
        let exp = expected.map(|d| (&d.digest, d.size));
        match self {
            Source::Dir { root, .. } => {
                if let Some(d) = expected
                    && blobs.size(&d.digest) == Some(d.size)
                {
                    return Ok((d.digest.clone(), d.size));
                }
                let fd = crate::sys::linux::open_in_root(
                    root.as_fd(),
                    Path::new(rel),
                    libc::O_RDONLY | libc::O_NONBLOCK,
                )
                .map_err(OciError::io("cannot open", &what))?;
                let mut f = std::fs::File::from(fd);
                if !f.metadata().map_err(OciError::io("cannot inspect", &what))?.is_file() {
                    return Err(OciError::invalid(&what, "not a regular file"));
                }
                blobs.ingest(&mut f, exp, &what)
            }
            Source::Archive { .. } => {
                let (d, size) = match self.member(rel)? {
                    Member::Small(b) => {
                        let d = blobs.put(b, expected.map(|e| &e.digest), &what)?;
                        (d, b.len() as u64)
                    }
                    Member::Blob(d) => (d.clone(), blobs.size(d).unwrap_or(0)),
                    Member::Link(_) => return Err(OciError::invalid(&what, "a link loop")),
                };
                if let Some(e) = expected {
                    if e.digest != d {
                        return Err(OciError::DigestMismatch {
                            what,
                            expected: e.digest.to_string(),
                            actual: d.to_string(),
                        });
                    }
                    if e.size != size {
                        return Err(OciError::Size {
                            what,
                            detail: format!("{size} bytes, but {} were announced", e.size),
                        });
                    }
                }
                Ok((d, size))
            }
        }
    }
}

/// Reads an archive once: blobs into the store, small files into memory.
fn read_archive(path: &Path, blobs: &BlobStore) -> Result<Source, OciError> {
    let file = std::fs::File::open(path).map_err(OciError::io("cannot open", path))?;
    let mut files: HashMap<String, Member> = HashMap::new();
    let mut small_total = 0u64;
    let mut failure: Option<OciError> = None;
    let r = tar_import::for_each_entry(file, false, |entry| {
        let raw = PathBuf::from(OsStr::from_bytes(&entry.path_bytes()));
        let Some(name) = clean(&raw) else {
            failure = Some(OciError::invalid(
                format!("{}:{}", path.display(), raw.display()),
                "a member name that climbs out of the archive",
            ));
            return Err(ImportError::Truncated(String::new()));
        };
        let what = format!("{}:{name}", path.display());
        let link_target = |t: &Path, hard: bool| {
            // Symlinks are relative to their directory, hard links to the archive root.
            let base = if hard {
                PathBuf::new()
            } else {
                Path::new(&name).parent().unwrap_or(Path::new("")).to_owned()
            };
            clean(&base.join(t))
        };
        let et = entry.header().entry_type();
        let member = if et.is_symlink() || et.is_hard_link() {
            let t = entry.link_name().ok().flatten().map(|t| t.into_owned()).unwrap_or_default();
            match link_target(&t, et.is_hard_link()) {
                Some(t) => Member::Link(t),
                None => return Ok(()),
            }
        } else if et.is_file() {
            let size = entry.size();
            // blobs/sha256/HEX names its own digest.
            let named =
                name.strip_prefix("blobs/sha256/").and_then(|h| Digest::parse(&format!("sha256:{h}")).ok());
            if size <= SMALL {
                small_total += size;
                if small_total > SMALL_TOTAL {
                    failure = Some(OciError::invalid(
                        path.display(),
                        "too many small files (more than 256 MiB of them)",
                    ));
                    return Err(ImportError::Truncated(String::new()));
                }
                // At most SMALL (1 MiB), just checked: the cast cannot truncate.
                #[allow(clippy::cast_possible_truncation)]
                let mut b = Vec::with_capacity(size as usize);
                entry.read_to_end(&mut b).map_err(ImportError::Read)?;
                if let Some(d) = named
                    && Digest::of(&b) != d
                {
                    failure = Some(OciError::DigestMismatch {
                        what,
                        expected: d.to_string(),
                        actual: Digest::of(&b).to_string(),
                    });
                    return Err(ImportError::Truncated(String::new()));
                }
                Member::Small(b)
            } else {
                match blobs.ingest(entry, named.as_ref().map(|d| (d, size)), &what) {
                    Ok((d, _)) => Member::Blob(d),
                    Err(e) => {
                        failure = Some(e);
                        return Err(ImportError::Truncated(String::new()));
                    }
                }
            }
        } else {
            return Ok(());
        };
        files.insert(name, member);
        Ok(())
    });
    if let Some(f) = failure {
        return Err(f);
    }
    r.map_err(|e| match e.interrupted() {
        Some(i) => OciError::Interrupted(i),
        None => OciError::invalid(path.display(), format!("not a readable tar archive: {e}")),
    })?;
    Ok(Source::Archive { path: path.to_owned(), files })
}

/// What an import found: the image's configuration and layers, its name, where it is from.
struct Found {
    config: Desc,
    config_bytes: Vec<u8>,
    layers: Vec<Desc>,
    manifest_digest: Option<Digest>,
    name: Option<String>,
    source: String,
}

fn blob_path(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// The name a full reference or RepoTag suggests: its repository's last component (a bare
/// tag like `latest` suggests nothing).
fn name_from_ref(r: &str) -> Option<String> {
    if !r.contains('/') {
        return None;
    }
    name_from_tag(r)
}

/// The name a `[REGISTRY/]REPO:TAG` suggests.
fn name_from_tag(r: &str) -> Option<String> {
    let repo = match r.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => r,
    };
    let last = repo.rsplit('/').next()?;
    let n = crate::names::cleanup(last);
    crate::names::validate(&n).is_ok().then_some(n)
}

fn oci_layout(src: &Source, blobs: &BlobStore, opts: &ImportOptions) -> Result<Found, OciError> {
    let index_bytes = src.read("index.json", blobs, MANIFEST_LIMIT)?;
    let what = src.what("index.json");
    let idx: ImageIndex = serde_json::from_slice(&index_bytes)
        .map_err(|e| OciError::invalid(&what, format!("not a valid image index: {e}")))?;
    let entries: Vec<(Option<String>, &oci_spec::image::Descriptor)> = idx
        .manifests()
        .iter()
        .map(|m| (m.annotations().as_ref().and_then(|a| a.get(REF_NAME)).cloned(), m))
        .collect();
    let chosen = match &opts.reference {
        Some(r) => entries.iter().find(|(n, _)| n.as_deref() == Some(r.as_str())).ok_or_else(|| {
            let names: Vec<&str> = entries.iter().filter_map(|(n, _)| n.as_deref()).collect();
            OciError::invalid(&what, format!("no image named '{r}' (it has: {})", names.join(", ")))
        })?,
        None if entries.len() == 1 => &entries[0],
        None => {
            let names: Vec<&str> = entries.iter().filter_map(|(n, _)| n.as_deref()).collect();
            return Err(OciError::invalid(
                &what,
                format!("{} images; choose one with --ref (names: {})", entries.len(), names.join(", ")),
            ));
        }
    };
    let (ref_name, d) = chosen;
    let mut desc = Desc {
        media_type: d.media_type().to_string(),
        digest: Digest::parse(d.digest().as_ref()).map_err(|e| OciError::invalid(&what, e))?,
        size: d.size(),
    };
    for _ in 0..4 {
        let rel = blob_path(&desc.digest);
        if desc.size > MANIFEST_LIMIT {
            return Err(OciError::Size {
                what: src.what(&rel),
                detail: format!("a manifest of {} bytes", desc.size),
            });
        }
        src.blob(&rel, Some(&desc), blobs)?;
        let body = blobs.read_small(&desc.digest, MANIFEST_LIMIT)?;
        match manifest::classify(&body, Some(&desc.media_type), &src.what(&rel))? {
            Kind::Index => desc = manifest::select_platform(&body, &opts.platform, &src.what(&rel))?,
            Kind::Manifest => {
                let (config, layers) = manifest::parse_manifest(&body, &src.what(&rel))?;
                src.blob(&blob_path(&config.digest), Some(&config), blobs)?;
                let config_bytes = blobs.read_small(&config.digest, CONFIG_LIMIT)?;
                for l in &layers {
                    src.blob(&blob_path(&l.digest), Some(l), blobs)?;
                }
                return Ok(Found {
                    config,
                    config_bytes,
                    layers,
                    manifest_digest: Some(desc.digest),
                    name: ref_name.as_deref().and_then(name_from_ref),
                    source: String::new(),
                });
            }
        }
    }
    Err(OciError::invalid(&what, "indexes nested too deep"))
}

fn docker_archive(src: &Source, blobs: &BlobStore, opts: &ImportOptions) -> Result<Found, OciError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Entry {
        config: String,
        #[serde(default)]
        repo_tags: Option<Vec<String>>,
        layers: Vec<String>,
    }
    let what = src.what("manifest.json");
    let entries: Vec<Entry> = serde_json::from_slice(&src.read("manifest.json", blobs, MANIFEST_LIMIT)?)
        .map_err(|e| OciError::invalid(&what, format!("not a docker archive manifest: {e}")))?;
    let tags = |e: &Entry| e.repo_tags.clone().unwrap_or_default();
    let chosen = match &opts.reference {
        Some(r) => entries
            .iter()
            .find(|e| tags(e).iter().any(|t| t == r || t.ends_with(&format!("/{r}"))))
            .ok_or_else(|| OciError::invalid(&what, format!("no image tagged '{r}'")))?,
        None if entries.len() == 1 => &entries[0],
        None => {
            let all: Vec<String> = entries.iter().flat_map(tags).collect();
            return Err(OciError::invalid(
                &what,
                format!("{} images; choose one with --ref (tags: {})", entries.len(), all.join(", ")),
            ));
        }
    };
    let base = |p: &str| {
        clean(Path::new(p)).ok_or_else(|| OciError::invalid(&what, format!("'{p}' leads out of the archive")))
    };
    let config_rel = base(&chosen.config)?;
    let config_bytes = src.read(&config_rel, blobs, CONFIG_LIMIT)?;
    let config_digest = blobs.put(&config_bytes, None, &src.what(&config_rel))?;
    let config =
        Desc { media_type: DOCKER_CONFIG.into(), digest: config_digest, size: config_bytes.len() as u64 };
    let parsed = meta::parse_config(&config_bytes, &src.what(&config_rel))?;
    let diff_ids = parsed.rootfs().diff_ids();
    if chosen.layers.len() > manifest::MAX_LAYERS {
        return Err(OciError::invalid(&what, "too many layers"));
    }
    let mut layers = Vec::new();
    for (i, l) in chosen.layers.iter().enumerate() {
        let rel = base(l)?;
        let (digest, size) = src.blob(&rel, None, blobs)?;
        let mut head = [0u8; 8];
        let n = blobs
            .open_verified(&digest)?
            .read(&mut head)
            .map_err(OciError::io("cannot read", src.what(&rel)))?;
        let media_type = match Compression::detect(&head[..n]) {
            Ok(Compression::None) => OCI_LAYER,
            Ok(Compression::Gzip) => OCI_LAYER_GZIP,
            Ok(Compression::Zstd) => OCI_LAYER_ZSTD,
            _ => {
                return Err(OciError::Unsupported {
                    what: src.what(&rel),
                    media_type: "xz or bzip2 compressed".into(),
                    hint: "layers are tar, gzip or zstd".into(),
                });
            }
        };
        // An uncompressed layer's digest is its diff_id: the configuration must agree.
        if media_type == OCI_LAYER && diff_ids.get(i).is_some_and(|id| id != digest.as_str()) {
            return Err(OciError::DigestMismatch {
                what: format!("{} (layer {} of the configuration)", src.what(&rel), i + 1),
                expected: diff_ids[i].clone(),
                actual: digest.to_string(),
            });
        }
        layers.push(Desc { media_type: media_type.into(), digest, size });
    }
    Ok(Found {
        config,
        config_bytes,
        layers,
        manifest_digest: None,
        name: chosen.repo_tags.as_ref().and_then(|t| t.first()).and_then(|t| name_from_tag(t)),
        source: String::new(),
    })
}

/// Imports the image of the OCI layout or docker archive at `path` (a directory or a tar,
/// possibly compressed) as `name` (default: from the image's ref name or tag, else the file
/// name).
pub fn import_oci(
    store: &ImageStore,
    path: &Path,
    name: Option<&str>,
    opts: &ImportOptions,
) -> Result<ImageInfo, OciError> {
    if let Some(n) = name {
        store.ensure_absent(n)?;
    }
    let blobs = BlobStore::open(&opts.cache)?;
    let meta = std::fs::metadata(path).map_err(OciError::io("cannot open", path))?;
    let src = if meta.is_dir() {
        let root = crate::images::walk::open_dir(path)?;
        Source::Dir { root, path: path.to_owned() }
    } else {
        read_archive(path, &blobs)?
    };
    let (mut found, kind) = if src.exists("index.json") && src.exists("oci-layout") {
        (oci_layout(&src, &blobs, opts)?, "oci")
    } else if src.exists("manifest.json") {
        (docker_archive(&src, &blobs, opts)?, "docker-archive")
    } else {
        return Err(OciError::invalid(
            path.display(),
            "neither an OCI image layout (oci-layout, index.json) nor a docker archive (manifest.json)",
        ));
    };
    found.source =
        format!("{kind}:{}", std::path::absolute(path).unwrap_or_else(|_| path.to_owned()).display());
    let name = match name {
        Some(n) => n.to_owned(),
        None => found
            .name
            .clone()
            .or_else(|| crate::images::pull::name_from_file_name(&path.file_name()?.to_string_lossy()))
            .ok_or_else(|| {
                OciError::invalid(path.display(), "no image name can be derived from it; give one")
            })?,
    };
    store.ensure_absent(&name)?;
    let what = path.display().to_string();
    let config_text = check_config(&found.config_bytes, &found.config, &found.layers, &what)?;
    let tmp = store.temp_image("import", &name)?;
    let mut applier =
        LayerApplier::new(tmp.path()).map_err(|e| OciError::Layer { digest: "-".into(), source: e })?;
    let parsed = super::meta::parse_config(&found.config_bytes, &what)?;
    let diff_ids = parsed.rootfs().diff_ids();
    for (i, l) in found.layers.iter().enumerate() {
        let input = blobs.open_verified(&l.digest)?;
        let diff_id =
            applier.apply(input).map_err(|e| OciError::Layer { digest: l.digest.to_string(), source: e })?;
        super::apply::check_diff_id(&l.digest, diff_ids.get(i), &diff_id)?;
    }
    applier.finish().map_err(|e| OciError::Layer { digest: "-".into(), source: e })?;
    let record = ImageMeta {
        source: found.source,
        layers_from: None,
        manifest_digest: found.manifest_digest,
        config: found.config,
        config_text,
        layers: found.layers,
        tree: None,
    };
    meta::commit_image(store, tmp, &name, &record)
}

/// RFC 3339 UTC time of a Unix time.
pub(crate) fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

/// Now, in RFC 3339.
pub(crate) fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    rfc3339(secs)
}

/// The OCI record of image `name`; for an image that has none (imported from a tarball,
/// bootstrapped, committed without --oci), one made now: its tree as one layer and a minimal
/// configuration, stored in the blob store. The configuration blob is put back into the
/// blob store if it was pruned (the record keeps it verbatim).
pub fn record_or_tree_layer(
    store: &ImageStore,
    name: &str,
    blobs: &BlobStore,
) -> Result<ImageMeta, OciError> {
    let info = store.get(name)?;
    if let Some(m) = meta::load(store, name)? {
        blobs.put(
            m.config_text.as_bytes(),
            Some(&m.config.digest),
            &format!("the configuration of {name}"),
        )?;
        for l in &m.layers {
            if blobs.size(&l.digest) != Some(l.size) {
                return Err(OciError::invalid(
                    format!("layer {} of image {name}", l.digest),
                    format!(
                        "it is not in the blob store {} any more: pull or import the image again",
                        blobs.root().display()
                    ),
                ));
            }
        }
        return Ok(m);
    }
    let _lock = store.lock(name, true)?;
    let layer = diff::diff_layer(None, &info.path, &crate::images::shift::View::default(), blobs)?;
    let host = Platform::host();
    let config = serde_json::json!({
        "created": now_rfc3339(),
        "architecture": host.arch,
        "os": host.os,
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id.to_string()]},
        "history": [{"created": now_rfc3339(), "created_by": format!("mctl: the tree of image {name}")}],
    });
    let text = serde_json::to_string(&config).expect("JSON serializes");
    let digest = blobs.put(text.as_bytes(), None, name)?;
    Ok(ImageMeta {
        source: format!("image:{name}"),
        layers_from: None,
        manifest_digest: None,
        config: Desc { media_type: OCI_CONFIG.into(), digest, size: text.len() as u64 },
        config_text: text,
        layers: vec![layer.desc],
        tree: None,
    })
}

/// Writes image `name` as an OCI image layout at `path` (which must not exist): a directory,
/// or a tar of one when `path` ends in `.tar`. The manifest is annotated with `ref_name`.
pub fn export_oci(
    store: &ImageStore,
    name: &str,
    path: &Path,
    ref_name: &str,
    cache: &Path,
) -> Result<Digest, OciError> {
    if path.symlink_metadata().is_ok() {
        return Err(OciError::Io {
            step: "cannot export to",
            path: path.to_owned(),
            source: io::Error::from(io::ErrorKind::AlreadyExists),
        });
    }
    let blobs = BlobStore::open(cache)?;
    let m = record_or_tree_layer(store, name, &blobs)?;
    let manifest = manifest::oci_manifest(&m.config, &m.layers);
    let mdigest = blobs.put(&manifest, None, "the manifest")?;
    let platform = m
        .image_config()
        .ok()
        .map(|c| serde_json::json!({"os": c.os().to_string(), "architecture": c.architecture().to_string()}));
    let mut entry = serde_json::json!({
        "mediaType": OCI_MANIFEST,
        "digest": mdigest.to_string(),
        "size": manifest.len(),
        "annotations": {REF_NAME: ref_name},
    });
    if let Some(p) = platform {
        entry["platform"] = p;
    }
    let index = serde_json::to_vec(
        &serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]}),
    )
    .expect("JSON serializes");
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec();
    let mut files: Vec<(String, PathBuf)> = vec![
        (blob_path(&mdigest), blobs.path(&mdigest)),
        (blob_path(&m.config.digest), blobs.path(&m.config.digest)),
    ];
    for l in &m.layers {
        if !files.iter().any(|(n, _)| *n == blob_path(&l.digest)) {
            files.push((blob_path(&l.digest), blobs.path(&l.digest)));
        }
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let base = path.file_name().map(|b| b.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = Temporary::register(dir.join(format!(".#{base}.{}", random_suffix())));
    let werr = |step| OciError::io(step, path);
    if base.ends_with(".tar") {
        let f = std::fs::File::options()
            .write(true)
            .create_new(true)
            .open(tmp.path())
            .map_err(werr("cannot create"))?;
        let mut b = tar::Builder::new(io::BufWriter::new(f));
        let small = |b: &mut tar::Builder<_>, n: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, n, data)
        };
        small(&mut b, "oci-layout", &layout).map_err(werr("cannot write"))?;
        small(&mut b, "index.json", &index).map_err(werr("cannot write"))?;
        for (n, from) in &files {
            crate::images::interrupt::check()?;
            let mut f = std::fs::File::open(from).map_err(OciError::io("cannot read the blob", from))?;
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(f.metadata().map_err(OciError::io("cannot read the blob", from))?.len());
            b.append_data(&mut h, n, &mut f).map_err(werr("cannot write"))?;
        }
        let w = b.into_inner().map_err(werr("cannot write"))?;
        w.into_inner()
            .map_err(|e| werr("cannot write")(e.into_error()))?
            .sync_all()
            .map_err(werr("cannot write"))?;
    } else {
        std::fs::create_dir(tmp.path()).map_err(werr("cannot create"))?;
        std::fs::create_dir_all(tmp.path().join("blobs/sha256")).map_err(werr("cannot create"))?;
        std::fs::write(tmp.path().join("oci-layout"), &layout).map_err(werr("cannot write"))?;
        std::fs::write(tmp.path().join("index.json"), &index).map_err(werr("cannot write"))?;
        for (n, from) in &files {
            crate::images::interrupt::check()?;
            // copy_file_range: a reflink where the filesystem can.
            std::fs::copy(from, tmp.path().join(n)).map_err(OciError::io("cannot copy the blob", from))?;
        }
    }
    tmp.commit(|p| {
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            p,
            rustix::fs::CWD,
            path,
            rustix::fs::RenameFlags::NOREPLACE,
        )
        .map_err(|e| OciError::Io {
            step: "cannot move the export into place at",
            path: path.to_owned(),
            source: e.into(),
        })
    })?;
    Ok(mdigest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_and_refs() {
        assert_eq!(clean(Path::new("./a/../b/c")).as_deref(), Some("b/c"));
        assert_eq!(clean(Path::new("../x")), None);
        assert_eq!(clean(Path::new("/blobs/sha256/x")).as_deref(), Some("blobs/sha256/x"));
        assert_eq!(name_from_ref("docker.io/library/busybox:latest").as_deref(), Some("busybox"));
        assert_eq!(name_from_ref("127.0.0.1:5000/oci/app").as_deref(), Some("app"));
        assert_eq!(name_from_ref("v1"), None);
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
