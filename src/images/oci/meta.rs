//! What the store keeps about an OCI image, beside its tree: `<store>/.oci/NAME.json` holds
//! the image configuration (verbatim, so its digest stays the same), the layers the tree was
//! made of and where it came from. Hidden, so nothing that lists images sees it, and outside
//! the tree, so the machine never sees or changes it.
//!
//! The record names the image directory it belongs to (device and inode): an image removed
//! by hand and replaced by another of the same name does not inherit a stale configuration.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use oci_spec::image::ImageConfiguration;

use super::OciError;
use super::digest::Digest;
use super::manifest::Desc;
use crate::images::interrupt::Temporary;
use crate::images::store::{ImageInfo, ImageStore, TempImage, random_suffix};

/// The store's directory of OCI records.
pub const META_DIR: &str = ".oci";

/// The directory an image record is about: device, inode and, where the filesystem records
/// it, birth time (inode numbers are reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TreeId {
    /// st_dev.
    pub dev: u64,
    /// st_ino.
    pub ino: u64,
    /// Birth time in ns since the epoch.
    #[serde(default)]
    pub born_ns: Option<i128>,
}

impl TreeId {
    fn of(path: &Path) -> io::Result<TreeId> {
        use rustix::fs::{AtFlags, StatxFlags};
        let m = std::fs::symlink_metadata(path)?;
        let born_ns = rustix::fs::statx(rustix::fs::CWD, path, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::BTIME)
            .ok()
            .filter(|st| StatxFlags::from_bits_retain(st.stx_mask).contains(StatxFlags::BTIME))
            .map(|st| i128::from(st.stx_btime.tv_sec) * 1_000_000_000 + i128::from(st.stx_btime.tv_nsec));
        Ok(TreeId { dev: m.dev(), ino: m.ino(), born_ns })
    }
}

/// The OCI record of an image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageMeta {
    /// Where it came from: a reference, `oci:PATH`, `docker-archive:PATH`, `commit:MACHINE`.
    pub source: String,
    /// The registry reference the base layers came from, when it is not `source` (a commit
    /// of a pulled image): a push to the same registry mounts them from there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers_from: Option<String>,
    /// The digest of the manifest it was pulled or imported by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_digest: Option<Digest>,
    /// The configuration's descriptor.
    pub config: Desc,
    /// The configuration, byte for byte.
    pub config_text: String,
    /// The layers, lowest first.
    pub layers: Vec<Desc>,
    /// The image directory this record is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree: Option<TreeId>,
}

/// What `run` takes from an image configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunConfig {
    /// Entrypoint followed by Cmd.
    pub argv: Vec<String>,
    /// Env, in order.
    pub env: Vec<(String, String)>,
    /// WorkingDir.
    pub workdir: Option<String>,
    /// User (`name`, `uid`, `name:group`, `uid:gid`).
    pub user: Option<String>,
}

impl ImageMeta {
    /// The configuration, parsed.
    pub fn image_config(&self) -> Result<ImageConfiguration, OciError> {
        parse_config(self.config_text.as_bytes(), &format!("configuration {}", self.config.digest))
    }

    /// What `mctl run` without a command runs.
    pub fn run_config(&self) -> Result<RunConfig, OciError> {
        let c = self.image_config()?;
        let Some(cfg) = c.config() else { return Ok(RunConfig::default()) };
        let mut argv: Vec<String> = cfg.entrypoint().clone().unwrap_or_default();
        argv.extend(cfg.cmd().clone().unwrap_or_default());
        let env = cfg
            .env()
            .iter()
            .flatten()
            .filter_map(|e| {
                let (k, v) = e.split_once('=')?;
                (!k.is_empty()).then(|| (k.to_owned(), v.to_owned()))
            })
            .collect();
        let nonempty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        Ok(RunConfig { argv, env, workdir: nonempty(cfg.working_dir()), user: nonempty(cfg.user()) })
    }
}

/// Parses an image configuration; `what` names it in errors.
pub fn parse_config(data: &[u8], what: &str) -> Result<ImageConfiguration, OciError> {
    serde_json::from_slice(data)
        .map_err(|e| OciError::invalid(what, format!("not a valid image configuration: {e}")))
}

fn dir(store: &ImageStore) -> PathBuf {
    store.root.join(META_DIR)
}

fn path(store: &ImageStore, name: &str) -> PathBuf {
    dir(store).join(format!("{name}.json"))
}

/// The record of image `name`, if it has a valid one for its current directory.
pub fn load(store: &ImageStore, name: &str) -> Result<Option<ImageMeta>, OciError> {
    let image = store.image_path(name)?;
    let p = path(store, name);
    let data = match std::fs::read(&p) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(OciError::io("cannot read the image record", &p)(e)),
    };
    let meta: ImageMeta = serde_json::from_slice(&data)
        .map_err(|e| OciError::invalid(p.display(), format!("a damaged image record: {e}")))?;
    match (TreeId::of(&image), meta.tree) {
        (Ok(now), Some(was)) if now == was => Ok(Some(meta)),
        _ => {
            tracing::debug!("{} is not about the image now at {}; ignoring it", p.display(), image.display());
            Ok(None)
        }
    }
}

/// Writes `meta` for the image directory at `tree` under the name `name`; returns the
/// temporary record, to be moved into place with [`install`].
fn prepare(store: &ImageStore, name: &str, meta: &ImageMeta, tree: &Path) -> Result<Temporary, OciError> {
    let d = dir(store);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&d)
        .map_err(OciError::io("cannot create the image record directory", &d))?;
    let mut meta = meta.clone();
    meta.tree = Some(TreeId::of(tree).map_err(OciError::io("cannot inspect", tree))?);
    let tmp = Temporary::register(d.join(format!(".#{name}.json.{}", random_suffix())));
    let text = serde_json::to_vec_pretty(&meta).expect("a record serializes");
    std::fs::write(tmp.path(), text).map_err(OciError::io("cannot write the image record", tmp.path()))?;
    Ok(tmp)
}

fn install(store: &ImageStore, name: &str, tmp: Temporary) -> Result<(), OciError> {
    let dest = path(store, name);
    tmp.commit(|p| std::fs::rename(p, &dest))
        .map_err(OciError::io("cannot move the image record into place", &dest))
}

/// Moves the finished tree `tmp` into the store as `name` with its record: the record is
/// written first (about the tree's inode, which the rename keeps), so the image never shows
/// without it for long and a failure leaves neither.
pub fn commit_image(
    store: &ImageStore,
    tmp: TempImage,
    name: &str,
    meta: &ImageMeta,
) -> Result<ImageInfo, OciError> {
    let record = prepare(store, name, meta, tmp.path())?;
    let info = store.commit(tmp, name)?;
    if let Err(e) = install(store, name, record) {
        let _ = store.remove(name);
        return Err(e);
    }
    Ok(info)
}

/// Records `meta` for the existing image `name`.
pub fn save(store: &ImageStore, name: &str, meta: &ImageMeta) -> Result<(), OciError> {
    let tree = store.image_path(name)?;
    let tmp = prepare(store, name, meta, &tree)?;
    install(store, name, tmp)
}

/// The record follows a removed image.
pub fn forget(store: &ImageStore, name: &str) {
    let p = path(store, name);
    if let Err(e) = std::fs::remove_file(&p)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!("cannot remove the image record {}: {e}", p.display());
    }
}

/// The record follows a renamed image.
pub fn renamed(store: &ImageStore, old: &str, new: &str) {
    let (from, to) = (path(store, old), path(store, new));
    match std::fs::rename(&from, &to) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => forget(store, new),
        Err(e) => tracing::warn!("cannot rename the image record {}: {e}", from.display()),
    }
}

/// A clone gets a copy of the record, about its own directory.
pub fn cloned(store: &ImageStore, src: &str, dst: &str) {
    match load(store, src) {
        Ok(Some(meta)) => {
            if let Err(e) = save(store, dst, &meta) {
                tracing::warn!("cannot copy the OCI record of {src} to {dst}: {e}");
            }
        }
        Ok(None) => {}
        Err(e) => tracing::warn!("cannot copy the OCI record of {src}: {e}"),
    }
}

/// Every record in the store (for the blob store's garbage collection), by image name;
/// records of images that are gone are left out.
pub fn all(store: &ImageStore) -> Result<Vec<(String, ImageMeta)>, OciError> {
    let d = dir(store);
    let rd = match std::fs::read_dir(&d) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(OciError::io("cannot read the image records", &d)(e)),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(OciError::io("cannot read the image records", &d))?;
        let Some(name) = e.file_name().to_str().and_then(|n| n.strip_suffix(".json")).map(str::to_owned)
        else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        if let Ok(Some(m)) = load(store, &name) {
            out.push((name, m));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_config_from_the_configuration() {
        let text = r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},
            "config":{"Entrypoint":["/bin/sh","-c"],"Cmd":["echo hi"],"Env":["PATH=/bin","A=b=c","bad"],
            "WorkingDir":"/srv","User":"1000:1000","ExposedPorts":{"80/tcp":{}}}}"#;
        let m = ImageMeta {
            source: "x".into(),
            layers_from: None,
            manifest_digest: None,
            config: Desc {
                media_type: super::super::manifest::OCI_CONFIG.into(),
                digest: Digest::of(text.as_bytes()),
                size: text.len() as u64,
            },
            config_text: text.into(),
            layers: Vec::new(),
            tree: None,
        };
        let r = m.run_config().unwrap();
        assert_eq!(r.argv, ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(r.env, [("PATH".to_owned(), "/bin".to_owned()), ("A".to_owned(), "b=c".to_owned())]);
        assert_eq!((r.workdir.as_deref(), r.user.as_deref()), (Some("/srv"), Some("1000:1000")));
    }

    #[test]
    fn a_record_belongs_to_its_directory() {
        let d = tempfile::tempdir().unwrap();
        let store = ImageStore::new(d.path());
        std::fs::create_dir(d.path().join("img")).unwrap();
        let text = "{}";
        let m = ImageMeta {
            source: "x".into(),
            layers_from: None,
            manifest_digest: None,
            config: Desc { media_type: "t".into(), digest: Digest::of(text.as_bytes()), size: 2 },
            config_text: text.into(),
            layers: Vec::new(),
            tree: None,
        };
        save(&store, "img", &m).unwrap();
        assert!(load(&store, "img").unwrap().is_some());
        renamed(&store, "img", "other");
        std::fs::rename(d.path().join("img"), d.path().join("other")).unwrap();
        assert!(load(&store, "other").unwrap().is_some());
        // Replaced by hand: the record is not about the new directory.
        std::fs::remove_dir(d.path().join("other")).unwrap();
        std::fs::create_dir(d.path().join("other")).unwrap();
        assert!(load(&store, "other").unwrap().is_none());
        assert_eq!(all(&store).unwrap().len(), 0);
    }
}
