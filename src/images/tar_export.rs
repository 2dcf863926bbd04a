//! `export-tar`: writes an image as a tarball that GNU tar and `import-tar` both read.
//!
//! Members are named by their path relative to the image (the root is `.`), ownership is numeric only (no
//! user or group names, which GNU tar would otherwise map through the host's passwd), hard
//! links are stored once plus link entries, and extended attributes (file capabilities
//! included) go into PAX `SCHILY.xattr.*` records, the form GNU tar's `--xattrs` and bsdtar
//! read.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

use super::compress::{Compression, Encoder};
use super::interrupt::{self, Interrupted, Temporary};
use super::store::{ImageStore, StoreError, random_suffix};
use super::walk::{self, Found, Kind, WalkError};

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The image is unknown, in use, …
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reading the tree failed.
    #[error(transparent)]
    Walk(#[from] WalkError),
    /// Writing the archive failed.
    #[error("cannot write the archive{}: {source}", path.as_ref().map(|p| format!(" '{}'", p.display())).unwrap_or_default())]
    Write {
        /// The output file (none for stdout).
        path: Option<PathBuf>,
        /// The error.
        source: io::Error,
    },
    /// Adding a member failed.
    #[error("cannot add '{path}' to the archive: {source}")]
    Member {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A file changed size while it was archived.
    #[error("'{0}' changed while it was being archived")]
    Changed(PathBuf),
    /// The output file exists.
    #[error("'{0}' already exists")]
    Exists(PathBuf),
    /// A signal arrived.
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
}

/// Counts what passes through.
struct Counting<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

/// Writes image `name` as a tarball compressed with `format` to `out`, and returns `out`.
pub fn export_tar<W: Write>(
    store: &ImageStore,
    name: &str,
    out: W,
    format: Compression,
) -> Result<W, ExportError> {
    let info = store.get(name)?;
    // A machine writing to the tree meanwhile would make the archive inconsistent.
    let _lock = store.lock(name, true)?;
    let werr = |source| ExportError::Write { path: None, source };
    let enc = Encoder::new(format, BufWriter::with_capacity(1 << 20, out)).map_err(werr)?;
    let mut b = tar::Builder::new(enc);
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    walk::walk::<ExportError>(&info.path, |f| {
        interrupt::check()?;
        add(&mut b, f, &mut links)
    })?;
    let enc = b.into_inner().map_err(werr)?;
    let buf = enc.finish().map_err(werr)?;
    buf.into_inner().map_err(|e| werr(e.into_error()))
}

/// Writes image `name` to the new file `path`, compressed as `format` or as its extension says
/// (plain tar for unknown extensions). The file appears only when complete.
pub fn export_tar_file(
    store: &ImageStore,
    name: &str,
    path: &Path,
    format: Option<Compression>,
) -> Result<(), ExportError> {
    let format = format.or_else(|| Compression::from_file_name(path)).unwrap_or(Compression::None);
    if path.symlink_metadata().is_ok() {
        return Err(ExportError::Exists(path.to_owned()));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let base = path.file_name().map(|b| b.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp_path = dir.join(format!(".#{base}.{}", random_suffix()));
    let werr = |source| ExportError::Write { path: Some(path.to_owned()), source };
    let tmp = Temporary::register(tmp_path.clone());
    let file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(&tmp_path).map_err(werr)?;
    let file = export_tar(store, name, file, format).map_err(|e| match e {
        ExportError::Write { path: None, source } => werr(source),
        e => e,
    })?;
    file.sync_all().map_err(werr)?;
    drop(file);
    tmp.commit(|from| {
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            from,
            rustix::fs::CWD,
            path,
            rustix::fs::RenameFlags::NOREPLACE,
        )
        .map_err(|e| match e {
            rustix::io::Errno::EXIST => ExportError::Exists(path.to_owned()),
            e => werr(e.into()),
        })
    })
}

fn header(f: &Found<'_>, etype: EntryType) -> Header {
    let st = f.stat;
    let mut h = Header::new_gnu();
    h.set_entry_type(etype);
    h.set_mode(st.st_mode & 0o7777);
    h.set_uid(st.st_uid.into());
    h.set_gid(st.st_gid.into());
    h.set_mtime(u64::try_from(st.st_mtime).unwrap_or(0));
    h.set_size(0);
    h
}

/// `.` for the root, the relative path otherwise. Not `./path`: the tar crate drops the `./`
/// from names that fit the header but keeps it in GNU long names, and GNU tar, which matches
/// directories to their contents by name, would then restore directory times too early.
fn member_name(rel: &Path) -> PathBuf {
    if rel.as_os_str().is_empty() { PathBuf::from(".") } else { rel.to_owned() }
}

pub(crate) fn add<W: Write>(
    b: &mut tar::Builder<W>,
    f: &Found<'_>,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<(), ExportError> {
    let name = member_name(f.rel);
    let merr = |source| ExportError::Member { path: f.path.to_owned(), source };
    let kind = f.kind();
    if kind == Kind::Socket {
        tracing::warn!("skipping socket {} (tar cannot store sockets)", f.path.display());
        return Ok(());
    }
    if kind != Kind::Dir && f.stat.st_nlink > 1 {
        let key = (f.stat.st_dev, f.stat.st_ino);
        if let Some(first) = links.get(&key) {
            let mut h = header(f, EntryType::Link);
            return b.append_link(&mut h, &name, first).map_err(merr);
        }
        links.insert(key, name.clone());
    }
    let mut file = None;
    if kind == Kind::File {
        file = Some(f.open_file()?);
    }
    let xattrs = f.xattrs(file.as_ref())?;
    if !xattrs.is_empty() {
        let mut records = Vec::new();
        for (k, v) in &xattrs {
            let Some(k) = k.to_str() else {
                tracing::warn!("skipping extended attribute with a non-UTF-8 name on {}", f.path.display());
                continue;
            };
            records.push((format!("SCHILY.xattr.{k}"), v.as_slice()));
        }
        b.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v))).map_err(merr)?;
    }
    match kind {
        Kind::Dir => b.append_data(&mut header(f, EntryType::Directory), &name, io::empty()).map_err(merr),
        Kind::File => {
            let size = f.size()?;
            let mut h = header(f, EntryType::Regular);
            h.set_size(size);
            let file: File = file.take().expect("opened above");
            let mut data = Counting { inner: file.take(size), n: 0 };
            b.append_data(&mut h, &name, &mut data).map_err(merr)?;
            if data.n != size {
                return Err(ExportError::Changed(f.path.to_owned()));
            }
            Ok(())
        }
        Kind::Symlink => {
            let target = f.read_link()?;
            b.append_link(&mut header(f, EntryType::Symlink), &name, &target).map_err(merr)
        }
        Kind::Char | Kind::Block | Kind::Fifo => {
            let etype = match kind {
                Kind::Char => EntryType::Char,
                Kind::Block => EntryType::Block,
                _ => EntryType::Fifo,
            };
            let mut h = header(f, etype);
            if kind != Kind::Fifo {
                let rdev = f.stat.st_rdev;
                h.set_device_major(rustix::fs::major(rdev)).map_err(merr)?;
                h.set_device_minor(rustix::fs::minor(rdev)).map_err(merr)?;
            }
            b.append_data(&mut h, &name, io::empty()).map_err(merr)
        }
        Kind::Socket => Ok(()),
    }
}
