//! Applying OCI layers to a tree, lowest first, through the confined writer.
//!
//! The whiteout rules of the image spec: an entry `DIR/.wh.NAME` removes `DIR/NAME` (and
//! everything below it) as left by the lower layers; `DIR/.wh..wh..opq` removes everything
//! in `DIR` the lower layers put there; neither touches what the same layer adds, and
//! neither appears in the tree. Other `.wh..wh.*` names (aufs bookkeeping) are ignored. Every
//! path, whiteouts included, resolves beneath the root with the kernel's help, so a layer can
//! neither write nor remove anything outside the tree, nor go through a symlink.
//!
//! Ownership, modes, extended attributes (but `trusted.overlay.*`, see
//! [`crate::images::tar_import::add_entry`]), device nodes, fifos and hard links are kept.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use super::OciError;
use super::digest::Digest;
use crate::images::confined::TreeWriter;
use crate::images::tar_import::{self, ImportError};

const WHITEOUT: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";

/// The lexical form of a member name (`./a/../b` is `b`), for telling which paths the
/// current layer wrote. (The writer refuses anything whose `..` climbs out.)
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// Holds layer `layer`'s diff ID as applied against what the image's configuration says.
pub fn check_diff_id(layer: &Digest, expected: Option<&String>, actual: &Digest) -> Result<(), OciError> {
    match expected {
        Some(e) if e == actual.as_str() => Ok(()),
        e => Err(OciError::DigestMismatch {
            what: format!("the uncompressed layer {layer} (its diff ID in the image configuration)"),
            expected: e.cloned().unwrap_or_else(|| "no diff ID".into()),
            actual: actual.to_string(),
        }),
    }
}

/// Applies layers to one tree.
#[derive(Debug)]
pub struct LayerApplier {
    writer: TreeWriter,
    root: PathBuf,
    root_seen: bool,
    buf: Vec<u8>,
}

impl LayerApplier {
    /// An applier for the (existing, empty) directory `root`.
    pub fn new(root: &Path) -> Result<Self, ImportError> {
        Ok(Self {
            writer: TreeWriter::for_layers(root)?,
            root: root.to_owned(),
            root_seen: false,
            buf: vec![0u8; tar_import::CHUNK],
        })
    }

    /// Applies the layer read from `input` (plain, gzip or zstd tar); returns its diff ID (the
    /// digest of the uncompressed tar), for the caller to hold against the configuration's.
    pub fn apply(&mut self, input: impl Read + Send + 'static) -> Result<Digest, ImportError> {
        self.writer.refresh_free()?;
        let mut written: HashSet<PathBuf> = HashSet::new();
        let (writer, buf, root_seen) = (&mut self.writer, &mut self.buf, &mut self.root_seen);
        let sha = tar_import::for_each_entry_hashed(input, |entry| {
            let path = PathBuf::from(OsStr::from_bytes(&entry.path_bytes()));
            let name = path.file_name().map(OsStr::as_bytes).unwrap_or(b"");
            if let Some(target) = name.strip_prefix(WHITEOUT) {
                let dir = path.parent().unwrap_or(Path::new(""));
                if name == OPAQUE {
                    writer.clear_dir(dir, &|p| written.contains(&normalize(p)))?;
                } else if target.starts_with(WHITEOUT) {
                    // aufs' own files (.wh..wh.plnk, .wh..wh.aufs): nothing to do.
                } else if target.is_empty() || target == b"." || target == b".." || target.contains(&b'/') {
                    return Err(ImportError::BadEntry { path, what: "a whiteout that names no file".into() });
                } else {
                    let victim = dir.join(OsStr::from_bytes(target));
                    // Only what lower layers left is hidden.
                    if !written.contains(&normalize(&victim)) {
                        writer.remove(&victim)?;
                    }
                }
                return Ok(());
            }
            *root_seen |= tar_import::add_entry(writer, entry, buf, true)?;
            written.insert(normalize(&path));
            Ok(())
        })?;
        Ok(Digest::from_sha256(sha))
    }

    /// Finishes the tree: directory times, and the usual root mode if no layer gave one.
    pub fn finish(self) -> Result<(), ImportError> {
        if !self.root_seen {
            tar_import::set_root_mode(&self.root)?;
        }
        self.writer.finish()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own() -> (u64, u64) {
        (u64::from(rustix::process::geteuid().as_raw()), u64::from(rustix::process::getegid().as_raw()))
    }

    /// A tar of (name, kind, content); kind: 'f' file, 'd' dir, 'l' symlink to content.
    /// Names are written raw (the tar crate refuses `..`, a hostile layer does not).
    fn layer(entries: &[(&str, char, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let (uid, gid) = own();
        for (name, kind, content) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(uid);
            h.set_gid(gid);
            h.set_mtime(1_700_000_000);
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            let data: &[u8] = match kind {
                'd' => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    &[]
                }
                'l' => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.as_old_mut().linkname[..content.len()].copy_from_slice(content.as_bytes());
                    &[]
                }
                _ => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(0o644);
                    content.as_bytes()
                }
            };
            h.set_size(data.len() as u64);
            h.set_cksum();
            b.append(&h, data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn listing(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_owned()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                out.push(p.strip_prefix(root).unwrap().display().to_string());
                if e.file_type().unwrap().is_dir() {
                    stack.push(p);
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn whiteouts_hide_lower_layers_only() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let mut a = LayerApplier::new(&root).unwrap();
        a.apply(std::io::Cursor::new(layer(&[
            ("etc", 'd', ""),
            ("etc/keep", 'f', "k"),
            ("etc/gone", 'f', "g"),
            ("opq", 'd', ""),
            ("opq/old", 'f', "o"),
            ("opq/sub", 'd', ""),
            ("opq/sub/deep", 'f', "d"),
            ("dir2file", 'd', ""),
            ("dir2file/x", 'f', "x"),
        ])))
        .unwrap();
        a.apply(std::io::Cursor::new(layer(&[
            ("etc/.wh.gone", 'f', ""),
            ("opq/new", 'f', "n"),
            ("opq/.wh..wh..opq", 'f', ""),
            ("opq/sub", 'd', ""),
            ("dir2file", 'f', "now a file"),
            ("again", 'f', "same layer"),
            (".wh.again", 'f', ""),
            ("etc/.wh.missing", 'f', ""),
            (".wh..wh.plnk", 'd', ""),
        ])))
        .unwrap();
        a.finish().unwrap();
        assert_eq!(listing(&root), ["again", "dir2file", "etc", "etc/keep", "opq", "opq/new", "opq/sub"],);
        assert_eq!(std::fs::read_to_string(root.join("dir2file")).unwrap(), "now a file");
    }

    #[test]
    fn hostile_layers_stay_inside() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("victim"), "v").unwrap();
        let root = t.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let out = outside.display().to_string();
        let mut a = LayerApplier::new(&root).unwrap();
        a.apply(std::io::Cursor::new(layer(&[("up", 'l', ".."), ("abs", 'l', &out)]))).unwrap();
        for evil in [
            layer(&[("../outside/.wh.victim", 'f', "")]),
            layer(&[("abs/.wh.victim", 'f', "")]),
            layer(&[("up/outside/.wh.victim", 'f', "")]),
            layer(&[("abs/.wh..wh..opq", 'f', "")]),
            layer(&[(".wh...", 'f', "")]),
            layer(&[("abs/x", 'f', "x")]),
        ] {
            assert!(a.apply(std::io::Cursor::new(evil)).is_err());
        }
        // A whiteout of the symlink itself removes the link, not its target.
        a.apply(std::io::Cursor::new(layer(&[(".wh.abs", 'f', "")]))).unwrap();
        assert!(!root.join("abs").exists() && outside.join("victim").exists());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
    }
}
