//! A layer from the difference between two trees: what `commit --oci` records of a machine.
//!
//! The current tree is walked; an entry goes into the layer when the base has nothing of the
//! same kind at its path, or differs in mode, owner, times, size, link target, device
//! number, extended attributes or content (files that are the very same inode, as an
//! overlay's untouched lower files are, are not read). Directories holding a change go in too
//! (before it), so that the layer carries their metadata. Then the base is walked: whatever
//! the current tree lacks becomes a whiteout (`DIR/.wh.NAME`), once per removed subtree.
//!
//! Without a base, every entry goes in: the tree as one layer. Both trees are read without
//! following symlinks, the base through kernel-confined lookups (it is image content).

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags};
use tar::{EntryType, Header};

use super::OciError;
use super::blobs::{BlobStore, BlobWriter};
use super::digest::{Digest, HashingWriter};
use super::manifest::{Desc, OCI_LAYER_GZIP};
use crate::images::interrupt;
use crate::images::shift::View;
use crate::images::tar_export;
use crate::images::walk::{self, Found, Kind, WalkError};

/// A layer made and stored in the blob store.
#[derive(Debug, Clone)]
pub struct NewLayer {
    /// Its descriptor (gzip).
    pub desc: Desc,
    /// The digest of its uncompressed tar (the configuration's `diff_id`).
    pub diff_id: Digest,
    /// Entries added or changed, and whiteouts.
    pub changed: u64,
    /// Whiteouts written: one per removed file or subtree (also counted in `changed`).
    pub removed: u64,
}

type Xattrs = Vec<(OsString, Vec<u8>)>;

/// Kernel-confined lookups in a tree: parents resolve beneath its root without symlinks.
struct Beneath {
    root: OwnedFd,
    path: PathBuf,
    /// The last parent opened (entries come directory by directory).
    last: Option<(PathBuf, OwnedFd)>,
}

impl Beneath {
    fn open(path: &Path) -> Result<Self, WalkError> {
        Ok(Self { root: walk::open_dir(path)?, path: path.to_owned(), last: None })
    }

    /// The parent directory of `rel` and its name; `None` when the parent is not there (or
    /// only through a symlink, which is as good as not there).
    fn parent(&mut self, rel: &Path) -> Option<(&OwnedFd, OsString)> {
        let name = rel.file_name()?.to_owned();
        let parent = rel.parent().unwrap_or(Path::new(""));
        if self.last.as_ref().is_none_or(|(p, _)| p != parent) {
            let p = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
            let flags = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
            let fd = rfs::openat2(
                &self.root,
                p,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                flags,
            )
            .ok()?;
            self.last = Some((parent.to_owned(), fd));
        }
        self.last.as_ref().map(|(_, fd)| (fd, name))
    }

    fn stat(&mut self, rel: &Path) -> Option<rfs::Stat> {
        if rel.as_os_str().is_empty() {
            return rfs::fstat(&self.root).ok();
        }
        let (fd, name) = self.parent(rel)?;
        rfs::statat(fd, &name, AtFlags::SYMLINK_NOFOLLOW).ok()
    }

    fn full(&self, rel: &Path) -> PathBuf {
        self.path.join(rel)
    }

    fn open_file(&mut self, rel: &Path) -> Result<File, WalkError> {
        let full = self.full(rel);
        let err =
            |e: rustix::io::Errno| WalkError { step: "cannot open", path: full.clone(), source: e.into() };
        let (fd, name) = self.parent(rel).ok_or(err(rustix::io::Errno::NOENT))?;
        let f = rfs::openat(
            fd,
            &name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(err)?;
        Ok(File::from(f))
    }

    fn read_link(&mut self, rel: &Path) -> Option<PathBuf> {
        let (fd, name) = self.parent(rel)?;
        let t = rfs::readlinkat(fd, &name, Vec::new()).ok()?;
        Some(PathBuf::from(std::ffi::OsStr::from_bytes(t.as_bytes())))
    }

    fn xattrs(&mut self, rel: &Path) -> Result<Xattrs, WalkError> {
        let full = self.full(rel);
        if rel.as_os_str().is_empty() {
            return walk::fd_xattrs(self.root.as_fd(), &full);
        }
        let Some((fd, name)) = self.parent(rel) else { return Ok(Vec::new()) };
        let p = rfs::openat(fd, &name, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| WalkError { step: "cannot open", path: full.clone(), source: e.into() })?;
        use std::os::fd::AsRawFd;
        walk::path_xattrs(&format!("/proc/self/fd/{}", p.as_raw_fd()), &full)
    }
}

fn kind_of(st: &rfs::Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

fn same_content(a: &mut File, b: &mut File) -> io::Result<bool> {
    let (mut x, mut y) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = read_full(a, &mut x)?;
        let m = read_full(b, &mut y)?;
        if n != m || x[..n] != y[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// The output: a tar, hashed (diff_id), gzip-compressed into the blob store.
type LayerTar = tar::Builder<HashingWriter<flate2::write::GzEncoder<BlobWriter>>>;

struct Differ<'a> {
    tar: LayerTar,
    base: Option<Beneath>,
    /// Hard links among what went into the layer.
    links: HashMap<(u64, u64), PathBuf>,
    /// Directories already in the layer.
    dirs_in: HashSet<PathBuf>,
    /// Ancestors of the entry being looked at: path, stat, xattrs, whether in the layer.
    pending: Vec<(PathBuf, rfs::Stat, Xattrs, bool)>,
    current: &'a Path,
    view: &'a View,
    changed: u64,
    removed: u64,
}

fn member_err(path: &Path) -> impl FnOnce(io::Error) -> OciError + '_ {
    move |e| OciError::Io { step: "cannot add to the layer", path: path.to_owned(), source: e }
}

fn dir_header(st: &rfs::Stat) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(EntryType::Directory);
    h.set_mode(st.st_mode & 0o7777);
    h.set_uid(st.st_uid.into());
    h.set_gid(st.st_gid.into());
    h.set_mtime(u64::try_from(st.st_mtime).unwrap_or(0));
    h.set_size(0);
    h
}

impl Differ<'_> {
    /// Whether `f` differs from the base's entry at the same path.
    fn changed(&mut self, f: &Found<'_>) -> Result<bool, OciError> {
        let Some(base) = self.base.as_mut() else { return Ok(true) };
        let Some(b) = base.stat(f.rel) else { return Ok(true) };
        let c = f.stat;
        let k = kind_of(c);
        if kind_of(&b) != k
            || b.st_mode & 0o7777 != c.st_mode & 0o7777
            || b.st_uid != c.st_uid
            || b.st_gid != c.st_gid
        {
            return Ok(true);
        }
        if (b.st_mtime, b.st_mtime_nsec) != (c.st_mtime, c.st_mtime_nsec) {
            return Ok(true);
        }
        if k == FileType::Directory {
            return Ok(base.xattrs(f.rel)? != f.xattrs(None)?);
        }
        // An overlay shows an untouched lower file as the lower inode itself.
        if (b.st_dev, b.st_ino) == (c.st_dev, c.st_ino) {
            return Ok(false);
        }
        if base.xattrs(f.rel)? != f.xattrs(None)? {
            return Ok(true);
        }
        Ok(match k {
            FileType::RegularFile => {
                b.st_size != c.st_size
                    || !same_content(&mut base.open_file(f.rel)?, &mut f.open_file()?).map_err(|e| {
                        OciError::Io { step: "cannot compare", path: f.path.to_owned(), source: e }
                    })?
            }
            FileType::Symlink => base.read_link(f.rel) != Some(f.read_link()?),
            FileType::CharacterDevice | FileType::BlockDevice => b.st_rdev != c.st_rdev,
            _ => false,
        })
    }

    /// Puts the directories above `rel` that are not in the layer yet into it.
    fn flush_parents(&mut self) -> Result<(), OciError> {
        for i in 0..self.pending.len() {
            if self.pending[i].3 {
                continue;
            }
            let (rel, st, xattrs, _) = &self.pending[i];
            let name = if rel.as_os_str().is_empty() { PathBuf::from(".") } else { rel.clone() };
            add_dir(&mut self.tar, &name, st, xattrs)?;
            self.dirs_in.insert(rel.clone());
            self.pending[i].3 = true;
        }
        Ok(())
    }

    fn visit(&mut self, found: &Found<'_>) -> Result<(), OciError> {
        interrupt::check()?;
        if self.view.skip.iter().any(|p| p == found.rel) {
            return Ok(());
        }
        let stat = self.view.stat(found.stat);
        let f = &found.with_stat(&stat);
        while self.pending.last().is_some_and(|(p, ..)| !f.rel.starts_with(p) || p == f.rel) {
            self.pending.pop();
        }
        let changed = self.changed(f)?;
        if f.kind() == Kind::Socket {
            return Ok(());
        }
        if changed {
            self.flush_parents()?;
            tar_export::add(&mut self.tar, f, &mut self.links).map_err(|e| OciError::Io {
                step: "cannot add to the layer",
                path: f.path.to_owned(),
                source: io::Error::other(e.to_string()),
            })?;
            self.changed += 1;
            if f.kind() == Kind::Dir {
                self.dirs_in.insert(f.rel.to_owned());
            }
        }
        if f.kind() == Kind::Dir {
            let xattrs = f.xattrs(None)?;
            self.pending.push((f.rel.to_owned(), *f.stat, xattrs, changed));
        }
        Ok(())
    }

    /// Whiteouts for what the base has and the current tree lacks.
    fn whiteouts(&mut self, base_path: &Path) -> Result<(), OciError> {
        let mut current = Beneath::open(self.current)?;
        let mut gone: Option<PathBuf> = None;
        let mut missing: Vec<PathBuf> = Vec::new();
        walk::walk::<OciError>(base_path, |f| {
            interrupt::check()?;
            if f.rel.as_os_str().is_empty() || gone.as_ref().is_some_and(|g| f.rel.starts_with(g)) {
                return Ok(());
            }
            match current.stat(f.rel) {
                None => {
                    missing.push(f.rel.to_owned());
                    gone = Some(f.rel.to_owned());
                }
                // Replaced by a non-directory: the entry in the layer replaces the subtree.
                Some(st) if f.kind() == Kind::Dir && kind_of(&st) != FileType::Directory => {
                    gone = Some(f.rel.to_owned());
                }
                Some(_) => {}
            }
            Ok(())
        })?;
        for rel in missing {
            let parent = rel.parent().unwrap_or(Path::new("")).to_owned();
            // The directories down to the whiteout, with their current metadata.
            let mut chain: Vec<PathBuf> = parent.ancestors().map(Path::to_path_buf).collect();
            chain.reverse();
            for d in chain {
                if self.dirs_in.contains(&d) {
                    continue;
                }
                let st = current.stat(&d).map(|st| self.view.stat(&st)).ok_or_else(|| {
                    OciError::invalid(
                        self.current.join(&d).display(),
                        "a directory disappeared while the layer was made",
                    )
                })?;
                let xattrs = current.xattrs(&d)?;
                let name = if d.as_os_str().is_empty() { PathBuf::from(".") } else { d.clone() };
                add_dir(&mut self.tar, &name, &st, &xattrs)?;
                self.dirs_in.insert(d);
            }
            let mut wh = OsString::from(".wh.");
            wh.push(rel.file_name().unwrap_or_default());
            let member = parent.join(wh);
            let mut h = Header::new_gnu();
            h.set_entry_type(EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(0);
            h.set_mtime(0);
            self.tar.append_data(&mut h, &member, io::empty()).map_err(member_err(&member))?;
            self.removed += 1;
            self.changed += 1;
        }
        Ok(())
    }
}

fn add_dir(tar: &mut LayerTar, name: &Path, st: &rfs::Stat, xattrs: &Xattrs) -> Result<(), OciError> {
    let records: Vec<(String, &[u8])> = xattrs
        .iter()
        .filter_map(|(k, v)| Some((format!("SCHILY.xattr.{}", k.to_str()?), v.as_slice())))
        .collect();
    if !records.is_empty() {
        tar.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v))).map_err(member_err(name))?;
    }
    tar.append_data(&mut dir_header(st), name, io::empty()).map_err(member_err(name))
}

/// Makes the layer that turns `base` (none: an empty tree) into `current` (read through
/// `view`: ids as the machine has them, files mounted over its own left out), stores it in `blobs` and returns it.
pub fn diff_layer(
    base: Option<&Path>,
    current: &Path,
    view: &View,
    blobs: &BlobStore,
) -> Result<NewLayer, OciError> {
    let out = blobs.writer()?;
    let gz = flate2::write::GzEncoder::new(out, flate2::Compression::new(5));
    let tar = tar::Builder::new(HashingWriter::new(gz));
    let mut d = Differ {
        tar,
        base: base.map(Beneath::open).transpose()?,
        links: HashMap::new(),
        dirs_in: HashSet::new(),
        pending: Vec::new(),
        current,
        view,
        changed: 0,
        removed: 0,
    };
    walk::walk::<OciError>(current, |f| d.visit(f))?;
    if let Some(b) = base {
        d.whiteouts(b)?;
    }
    let (changed, removed) = (d.changed, d.removed);
    let werr = |e: io::Error| OciError::Io {
        step: "cannot write the layer",
        path: PathBuf::from("(blob store)"),
        source: e,
    };
    let hashing = d.tar.into_inner().map_err(werr)?;
    let (gz, diff_id, _) = hashing.finish();
    let blob = gz.finish().map_err(werr)?;
    let digest = blob.commit(None, "the new layer")?;
    let size = blobs.size(&digest).unwrap_or(0);
    Ok(NewLayer { desc: Desc { media_type: OCI_LAYER_GZIP.into(), digest, size }, diff_id, changed, removed })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::oci::apply::LayerApplier;

    fn snapshot(root: &Path) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = Vec::new();
        walk::walk::<WalkError>(root, |f| {
            let content = match f.kind() {
                Kind::File => std::fs::read(f.path).unwrap(),
                Kind::Symlink => f.read_link()?.into_os_string().into_encoded_bytes(),
                _ => Vec::new(),
            };
            out.push((f.rel.display().to_string(), f.stat.st_mode, content));
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn the_diff_applied_to_the_base_gives_the_current_tree() {
        let t = tempfile::tempdir().unwrap();
        let (base, cur) = (t.path().join("base"), t.path().join("cur"));
        for r in [&base, &cur] {
            std::fs::create_dir_all(r.join("etc/sub")).unwrap();
            std::fs::create_dir_all(r.join("gone/deep")).unwrap();
            std::fs::write(r.join("etc/same"), "same").unwrap();
            std::fs::write(r.join("etc/edit"), "old").unwrap();
            std::fs::write(r.join("etc/sub/rm"), "x").unwrap();
            std::fs::write(r.join("gone/deep/f"), "f").unwrap();
            std::os::unix::fs::symlink("target", r.join("link")).unwrap();
        }
        // Same size and times, other content: only a content comparison sees it.
        std::fs::write(cur.join("etc/edit"), "new").unwrap();
        let times = std::fs::metadata(base.join("etc/edit")).unwrap().modified().unwrap();
        File::options().write(true).open(cur.join("etc/edit")).unwrap().set_modified(times).unwrap();
        std::fs::remove_file(cur.join("etc/sub/rm")).unwrap();
        std::fs::remove_dir_all(cur.join("gone")).unwrap();
        std::fs::write(cur.join("added"), "a").unwrap();
        std::fs::remove_file(cur.join("link")).unwrap();
        std::os::unix::fs::symlink("elsewhere", cur.join("link")).unwrap();
        // Make the untouched files' times equal in both trees.
        for p in ["etc/same", "etc/sub", "etc", ""] {
            let m = std::fs::metadata(base.join(p)).unwrap().modified().unwrap();
            let _ = File::open(cur.join(p)).and_then(|f| f.set_modified(m));
        }
        let cache = t.path().join("cache");
        let blobs = BlobStore::open(&cache).unwrap();
        let layer = diff_layer(Some(&base), &cur, &View::default(), &blobs).unwrap();
        assert_eq!(layer.removed, 2, "one whiteout per removed file or subtree");
        // Base as a layer, then the diff: the current tree.
        let full = diff_layer(None, &base, &View::default(), &blobs).unwrap();
        let out = t.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let mut a = LayerApplier::new(&out).unwrap();
        a.apply(blobs.open_verified(&full.desc.digest).unwrap()).unwrap();
        a.apply(blobs.open_verified(&layer.desc.digest).unwrap()).unwrap();
        a.finish().unwrap();
        assert_eq!(snapshot(&out), snapshot(&cur));
        // Nothing changed: an empty layer.
        let none = diff_layer(Some(&cur), &cur, &View::default(), &blobs).unwrap();
        assert_eq!(none.changed, 0);
    }
}
