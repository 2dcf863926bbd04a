//! `pull-oci`: an image from a registry into the store.
//!
//! The manifest (through an index, for the platform asked for), then the configuration, then
//! the layers: those the blob store lacks are downloaded in parallel, each checked against
//! its digest while it streams and resumed with HTTP Range where an earlier pull stopped;
//! layers are applied in order as soon as each is whole and verified, while the later ones
//! still download. The tree is built in a hidden temporary of the store and appears, with
//! its record, only when complete. Manifests, configurations and layers stay in the blob
//! store, so pulling an unchanged tag again transfers the manifest alone.

use std::collections::{HashSet, VecDeque};
use std::io::{Read, Seek, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, mpsc};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::StatusCode;
use reqwest::header::CONTENT_RANGE;
use sha2::{Digest as _, Sha256};

use super::OciError;
use super::apply::{LayerApplier, check_diff_id};
use super::blobs::BlobStore;
use super::digest::Digest;
use super::manifest::{self, CONFIG_LIMIT, Desc, Kind, Platform};
use super::meta::{self, ImageMeta};
use super::reference::Reference;
use super::registry::{self, MANIFEST_LIMIT, Registry, RegistryOptions};
use crate::images::interrupt;
use crate::images::store::{ImageInfo, ImageStore};

/// Settings of an OCI pull.
#[derive(Debug, Clone)]
pub struct OciPullOptions {
    /// How to reach the registry.
    pub registry: RegistryOptions,
    /// The platform to pick from an index.
    pub platform: Platform,
    /// The platform was asked for (--platform): an image for another one is refused rather
    /// than pulled with a warning.
    pub platform_required: bool,
    /// The pull cache (the blob store is its `oci/`).
    pub cache: PathBuf,
    /// Show progress on stderr.
    pub progress: bool,
    /// Parallel layer downloads.
    pub jobs: usize,
}

/// Indexes may nest; this deep at most.
const MAX_INDEX_DEPTH: usize = 4;

/// Progress display: one bar per download, under one [`MultiProgress`].
#[derive(Debug, Clone)]
pub struct Progress(Option<MultiProgress>);

impl Progress {
    /// Shown on stderr when `show`, else nothing.
    pub fn new(show: bool) -> Self {
        Progress(show.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())))
    }

    /// A byte bar for `len` bytes.
    pub fn bar(&self, len: u64, msg: String) -> ProgressBar {
        let Some(mp) = &self.0 else { return ProgressBar::hidden() };
        let pb = mp.add(ProgressBar::new(len));
        if let Ok(style) =
            ProgressStyle::with_template("{msg:24} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {eta}")
        {
            pb.set_style(style);
        }
        pb.set_message(msg);
        pb
    }

    /// A status line.
    pub fn line(&self, msg: String) -> ProgressBar {
        let Some(mp) = &self.0 else { return ProgressBar::hidden() };
        let pb = mp.add(ProgressBar::new_spinner());
        pb.set_message(msg);
        pb
    }
}

fn short(d: &Digest) -> String {
    d.hex()[..12].to_owned()
}

/// A manifest or index from the registry, or from the blob store when it is named by a
/// digest already stored; checked against its digest and kept in the blob store.
fn fetch_manifest(
    reg: &Registry,
    blobs: &BlobStore,
    repo: &str,
    reference: &str,
    expected: Option<&Digest>,
) -> Result<(Vec<u8>, Kind, Digest), OciError> {
    let what = format!("{}/{repo}@{reference}", reg.name);
    if let Some(d) = expected
        && blobs.has(d)
        && let Ok(body) = blobs.read_small(d, MANIFEST_LIMIT)
    {
        let kind = manifest::classify(&body, None, &what)?;
        return Ok((body, kind, d.clone()));
    }
    let (body, ctype, claimed) = reg.get_manifest(repo, reference)?;
    let url = reg.url(&format!("{repo}/manifests/{reference}")).to_string();
    let actual = Digest::of(&body);
    let want = match expected {
        Some(d) => Some(d.clone()),
        // By tag: the registry's own claim, when it makes one, must hold too.
        None => claimed.as_deref().and_then(|c| Digest::parse(c).ok()),
    };
    if let Some(w) = want
        && w != actual
    {
        return Err(OciError::DigestMismatch {
            what: url,
            expected: w.to_string(),
            actual: actual.to_string(),
        });
    }
    let kind = manifest::classify(&body, ctype.as_deref(), &url)?;
    blobs.put(&body, Some(&actual), &url)?;
    Ok((body, kind, actual))
}

/// The image manifest for the platform, following indexes: its bytes and digest.
pub(crate) fn resolve_manifest(
    reg: &Registry,
    blobs: &BlobStore,
    r: &Reference,
    platform: &Platform,
) -> Result<(Vec<u8>, Digest), OciError> {
    let (mut body, mut kind, mut digest) =
        fetch_manifest(reg, blobs, &r.repository, &r.manifest_ref(), r.digest.as_ref())?;
    for _ in 0..MAX_INDEX_DEPTH {
        if kind == Kind::Manifest {
            return Ok((body, digest));
        }
        let child = manifest::select_platform(&body, platform, &r.to_string())?;
        (body, kind, digest) =
            fetch_manifest(reg, blobs, &r.repository, child.digest.as_str(), Some(&child.digest))?;
    }
    Err(OciError::invalid(r, format!("indexes nested more than {MAX_INDEX_DEPTH} deep")))
}

/// Downloads blob `desc` into the blob store, resuming a partial download, checking size and
/// digest while it streams.
pub(crate) fn download(
    reg: &Registry,
    repo: &str,
    desc: &Desc,
    blobs: &BlobStore,
    pb: &ProgressBar,
    abort: &AtomicBool,
) -> Result<(), OciError> {
    let Some(mut part) = blobs.partial(&desc.digest)? else { return Ok(()) };
    let ppath = part.path().to_owned();
    let mut have = part.len();
    if have > desc.size {
        part.reset()?;
        have = 0;
    }
    let mut hasher = Sha256::new();
    if have > 0 {
        // What is there already counts toward the digest.
        let f = part.file();
        f.seek(std::io::SeekFrom::Start(0))
            .map_err(OciError::io("cannot read the partial download", &ppath))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut left = have;
        while left > 0 {
            let n = f
                .read(&mut buf[..left.min(1 << 20) as usize])
                .map_err(OciError::io("cannot read the partial download", &ppath))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            left -= n as u64;
        }
    }
    let (url, mut resp) = loop {
        let (url, resp) = reg.get_blob(repo, &desc.digest, have)?;
        let status = resp.status();
        let range_ok = status == StatusCode::PARTIAL_CONTENT
            && resp
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with(&format!("bytes {have}-")));
        if have > 0 && !range_ok {
            // No usable range answer (or none wanted any more): start over.
            part.reset()?;
            have = 0;
            hasher = Sha256::new();
            if status.is_success() && status != StatusCode::PARTIAL_CONTENT {
                break (url, resp);
            }
            // Ask again for the whole blob.
            continue;
        }
        if !status.is_success() {
            return Err(registry::status_error("downloading", &url, resp));
        }
        break (url, resp);
    };
    if have > 0 {
        tracing::info!("resuming {url} at byte {have}");
    }
    let f = part.file();
    f.seek(std::io::SeekFrom::End(0))
        .map_err(OciError::io("cannot append to the partial download", &ppath))?;
    pb.set_length(desc.size);
    pb.set_position(have);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        interrupt::check()?;
        if abort.load(Ordering::Relaxed) {
            return Err(OciError::Request {
                step: "downloading",
                url: url.to_string(),
                detail: "stopped: another step failed".into(),
            });
        }
        let n = match resp.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(OciError::Request {
                    step: "downloading",
                    url: url.to_string(),
                    detail: format!(
                        "the transfer broke after {have} of {} bytes ({e}); pull again to resume",
                        desc.size
                    ),
                });
            }
        };
        if have + n as u64 > desc.size {
            part.discard();
            return Err(OciError::Size {
                what: url.to_string(),
                detail: format!(
                    "the registry sent more than the {} bytes the manifest announces; refused",
                    desc.size
                ),
            });
        }
        if let Err(e) = part.file().write_all(&buf[..n]) {
            // A partial download on a full disk only takes space: drop it.
            part.discard();
            return Err(OciError::io("cannot write the download to", &ppath)(e));
        }
        hasher.update(&buf[..n]);
        have += n as u64;
        pb.set_position(have);
    }
    if have != desc.size {
        return Err(OciError::Request {
            step: "downloading",
            url: url.to_string(),
            detail: format!("the connection ended after {have} of {} bytes; pull again to resume", desc.size),
        });
    }
    let actual = Digest::from_hasher(hasher);
    if actual != desc.digest {
        part.discard();
        return Err(OciError::DigestMismatch {
            what: url.to_string(),
            expected: desc.digest.to_string(),
            actual: actual.to_string(),
        });
    }
    part.install()?;
    pb.finish_and_clear();
    Ok(())
}

/// Fetches the blobs in `wanted` that the store lacks, `jobs` at a time, and calls `ready`
/// for each layer of `layers` in order as soon as it (and those before it) are stored.
pub(crate) fn fetch_in_order(
    reg: &Registry,
    repo: &str,
    blobs: &BlobStore,
    layers: &[Desc],
    jobs: usize,
    progress: &Progress,
    mut ready: impl FnMut(usize, &Desc) -> Result<(), OciError>,
) -> Result<(), OciError> {
    let mut seen = HashSet::new();
    let missing: VecDeque<Desc> =
        layers.iter().filter(|l| !blobs.has(&l.digest) && seen.insert(l.digest.clone())).cloned().collect();
    let need: u64 = missing.iter().map(|l| l.size).sum();
    if let Some(free) = blobs.free_space()
        && need > free
    {
        return Err(OciError::Size {
            what: format!("the pull cache {}", blobs.root().display()),
            detail: format!(
                "the layers to download need {need} bytes and only {free} are free: free some space (mctl prune-cache removes unused downloads)"
            ),
        });
    }
    let workers = jobs.clamp(1, 16).min(missing.len());
    let queue = Mutex::new(missing);
    let abort = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel::<(Digest, Result<(), OciError>)>();
    std::thread::scope(|s| {
        for _ in 0..workers {
            let tx = tx.clone();
            let (queue, abort) = (&queue, &abort);
            s.spawn(move || {
                loop {
                    if abort.load(Ordering::Relaxed) {
                        break;
                    }
                    let Some(l) = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front() else { break };
                    let pb = progress.bar(l.size, short(&l.digest));
                    let r = download(reg, repo, &l, blobs, &pb, abort);
                    pb.finish_and_clear();
                    if r.is_err() {
                        abort.store(true, Ordering::Relaxed);
                    }
                    if tx.send((l.digest.clone(), r)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let result = (|| {
            let mut done: HashSet<Digest> = HashSet::new();
            for (i, l) in layers.iter().enumerate() {
                while !done.contains(&l.digest) && !blobs.has(&l.digest) {
                    match rx.recv() {
                        Ok((d, Ok(()))) => {
                            done.insert(d);
                        }
                        Ok((_, Err(e))) => return Err(e),
                        Err(_) => {
                            return Err(OciError::invalid(&l.digest, "its download ended without a result"));
                        }
                    }
                }
                ready(i, l)?;
            }
            Ok(())
        })();
        if result.is_err() {
            abort.store(true, Ordering::Relaxed);
        }
        result
    })
}

/// Pulls `reference` into the store as `name` (default: the repository's last component).
pub fn pull_oci(
    store: &ImageStore,
    reference: &str,
    name: Option<&str>,
    opts: &OciPullOptions,
) -> Result<ImageInfo, OciError> {
    let r = Reference::parse(reference)?;
    let name = match name {
        Some(n) => n.to_owned(),
        None => r.default_name().ok_or_else(|| OciError::BadReference {
            reference: reference.to_owned(),
            reason: "no image name can be derived from it; give one".into(),
        })?,
    };
    store.ensure_absent(&name)?;
    let blobs = BlobStore::open(&opts.cache)?;
    let reg = Registry::connect(
        &r.registry,
        r.api_host(),
        &r.repository,
        vec![registry::pull_scope(&r.repository)],
        &opts.registry,
    )?;
    let (body, manifest_digest) = resolve_manifest(&reg, &blobs, &r, &opts.platform)?;
    let what = format!("{}/{}@{manifest_digest}", r.registry, r.repository);
    let (config, layers) = manifest::parse_manifest(&body, &what)?;
    let config_bytes = match blobs.read_small(&config.digest, CONFIG_LIMIT) {
        Ok(b) => b,
        Err(_) => {
            let b = reg.get_small_blob(&r.repository, &config.digest, config.size, CONFIG_LIMIT)?;
            blobs.put(&b, Some(&config.digest), &what)?;
            b
        }
    };
    let config_text = check_config(&config_bytes, &config, &layers, &what)?;
    let image_config = meta::parse_config(&config_bytes, &format!("the configuration of {what}"))?;
    let (os, arch) = (image_config.os().to_string(), image_config.architecture().to_string());
    if (os != opts.platform.os || arch != opts.platform.arch) && opts.platform_required {
        return Err(OciError::NoPlatform {
            reference: r.to_string(),
            wanted: opts.platform.to_string(),
            available: format!("{os}/{arch}"),
        });
    }
    if os != opts.platform.os || arch != opts.platform.arch {
        tracing::warn!("{r} is an image for {os}/{arch}, not {}", opts.platform);
    }
    let progress = Progress::new(opts.progress);
    let tmp = store.temp_image("pull", &name)?;
    let mut applier =
        LayerApplier::new(tmp.path()).map_err(|e| OciError::Layer { digest: "-".into(), source: e })?;
    let status = progress.line(String::new());
    let diff_ids = image_config.rootfs().diff_ids();
    fetch_in_order(&reg, &r.repository, &blobs, &layers, opts.jobs, &progress, |i, l| {
        status.set_message(format!("applying layer {}/{} ({})", i + 1, layers.len(), short(&l.digest)));
        let input = blobs.open_verified(&l.digest)?;
        let diff_id =
            applier.apply(input).map_err(|e| OciError::Layer { digest: l.digest.to_string(), source: e })?;
        check_diff_id(&l.digest, diff_ids.get(i), &diff_id)
    })?;
    status.finish_and_clear();
    applier.finish().map_err(|e| OciError::Layer { digest: "-".into(), source: e })?;
    let record = ImageMeta {
        source: r.to_string(),
        layers_from: None,
        manifest_digest: Some(manifest_digest),
        config,
        config_text,
        layers,
        tree: None,
    };
    meta::commit_image(store, tmp, &name, &record)
}

/// The configuration as text, checked: UTF-8 JSON whose `rootfs.diff_ids` has one entry per
/// layer.
pub(crate) fn check_config(
    bytes: &[u8],
    _config: &Desc,
    layers: &[Desc],
    what: &str,
) -> Result<String, OciError> {
    let text = String::from_utf8(bytes.to_vec())
        .map_err(|_| OciError::invalid(what, "its configuration is not UTF-8"))?;
    let c = meta::parse_config(bytes, &format!("the configuration of {what}"))?;
    let n = c.rootfs().diff_ids().len();
    if n != layers.len() {
        return Err(OciError::invalid(
            what,
            format!("its configuration lists {n} layers (diff_ids) but its manifest {}", layers.len()),
        ));
    }
    Ok(text)
}
