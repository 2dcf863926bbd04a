//! The content-addressed blob store: `<pull cache>/oci/blobs/sha256/<hex>`, shared by every
//! image (manifests, configurations and layers alike), so an image that shares layers with
//! one pulled before downloads only the new ones.
//!
//! A blob enters the store only under the digest its content has: written to a temporary
//! file while hashed, renamed into place only if the digest is the one expected. Downloads
//! in progress live in `oci/partial/` under the digest they should have, locked while
//! written, so an interrupted download resumes where it stopped (HTTP Range); a partial file
//! whose content turns out wrong is deleted. Readers hash again what they read (see
//! [`BlobStore::open_verified`]), so a blob damaged on disk is noticed and dropped.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

use super::OciError;
use sha2::{Digest as _, Sha256};

use super::digest::{Digest, HashingWriter};
use crate::images::interrupt::{self, Temporary};
use crate::images::store::random_suffix;

/// The blob store under a pull cache directory.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

fn mkdir(path: &Path) -> Result<(), OciError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(OciError::io("cannot create the blob store directory", path))
}

impl BlobStore {
    /// The blob store of the pull cache `cache` (created if missing).
    pub fn open(cache: &Path) -> Result<Self, OciError> {
        let root = cache.join("oci");
        for d in ["blobs/sha256", "partial", "tmp"] {
            mkdir(&root.join(d))?;
        }
        Ok(Self { root })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where blob `d` lives.
    pub fn path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    fn partial_path(&self, d: &Digest) -> PathBuf {
        self.root.join("partial").join(format!("sha256-{}", d.hex()))
    }

    /// Whether blob `d` is stored.
    pub fn has(&self, d: &Digest) -> bool {
        std::fs::symlink_metadata(self.path(d)).is_ok_and(|m| m.is_file())
    }

    /// The size of blob `d`, if stored.
    pub fn size(&self, d: &Digest) -> Option<u64> {
        std::fs::symlink_metadata(self.path(d)).ok().filter(|m| m.is_file()).map(|m| m.len())
    }

    /// Opens blob `d`; the reader checks the digest when read to its end (see
    /// [`VerifiedReader`]).
    pub fn open_verified(&self, d: &Digest) -> Result<VerifiedReader, OciError> {
        let path = self.path(d);
        let f = File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| self.missing(d, &path, e))?;
        Ok(VerifiedReader { file: f, hasher: Some(Sha256::new()), expected: d.clone(), path })
    }

    fn missing(&self, d: &Digest, path: &Path, e: io::Error) -> OciError {
        if e.kind() == io::ErrorKind::NotFound {
            OciError::Invalid {
                what: format!("blob {d}"),
                detail: format!(
                    "it is not in the blob store {} (the pull cache was cleared?): pull the image again",
                    self.root.display()
                ),
            }
        } else {
            OciError::Io { step: "cannot open the blob", path: path.to_owned(), source: e }
        }
    }

    /// Reads a small blob whole (at most `limit` bytes), checking its digest; a damaged copy is
    /// removed.
    pub fn read_small(&self, d: &Digest, limit: u64) -> Result<Vec<u8>, OciError> {
        let path = self.path(d);
        let mut f = File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| self.missing(d, &path, e))?;
        let mut data = Vec::new();
        (&mut f)
            .take(limit + 1)
            .read_to_end(&mut data)
            .map_err(OciError::io("cannot read the blob", &path))?;
        if data.len() as u64 > limit {
            return Err(OciError::Size {
                what: path.display().to_string(),
                detail: format!("larger than {limit} bytes"),
            });
        }
        let actual = Digest::of(&data);
        if &actual != d {
            let _ = std::fs::remove_file(&path);
            return Err(OciError::DigestMismatch {
                what: format!("the cached blob {} (removed; pull again)", path.display()),
                expected: d.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(data)
    }

    /// Stores `data`; if `expected` is given it must be its digest.
    pub fn put(&self, data: &[u8], expected: Option<&Digest>, what: &str) -> Result<Digest, OciError> {
        let actual = Digest::of(data);
        if let Some(e) = expected
            && e != &actual
        {
            return Err(OciError::DigestMismatch {
                what: what.to_owned(),
                expected: e.to_string(),
                actual: actual.to_string(),
            });
        }
        if self.has(&actual) {
            return Ok(actual);
        }
        let mut w = self.writer()?;
        w.write_all(data).map_err(OciError::io("cannot write to the blob store", &w.path))?;
        w.commit(Some(&actual), what)
    }

    /// A new blob written through a hashing temporary file.
    pub fn writer(&self) -> Result<BlobWriter, OciError> {
        let path = self.root.join("tmp").join(format!(".#blob.{}", random_suffix()));
        let tmp = Temporary::register(path.clone());
        let f = File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(OciError::io("cannot create a file in the blob store", &path))?;
        Ok(BlobWriter { inner: HashingWriter::new(f), tmp, path, store: self.clone() })
    }

    /// Copies what `r` yields into the store, checking it against `expected` (digest and
    /// size) when given; refuses more than the size expected.
    pub fn ingest(
        &self,
        r: &mut dyn Read,
        expected: Option<(&Digest, u64)>,
        what: &str,
    ) -> Result<(Digest, u64), OciError> {
        if let Some((d, _)) = expected
            && self.has(d)
        {
            // Still read through: callers streaming an archive expect the entry consumed.
            io::copy(r, &mut io::sink()).map_err(OciError::io("cannot read", what))?;
            return Ok((d.clone(), self.size(d).unwrap_or(0)));
        }
        let mut w = self.writer()?;
        let limit = expected.map_or(u64::MAX, |(_, s)| s);
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        loop {
            interrupt::check()?;
            let n = match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(OciError::io("cannot read", what)(e)),
            };
            got += n as u64;
            if got > limit {
                return Err(OciError::Size {
                    what: what.to_owned(),
                    detail: format!("more than the {limit} bytes announced"),
                });
            }
            w.write_all(&buf[..n]).map_err(OciError::io("cannot write to the blob store", &w.path))?;
        }
        if let Some((_, size)) = expected
            && got != size
        {
            return Err(OciError::Size {
                what: what.to_owned(),
                detail: format!("{got} bytes, but {size} were announced"),
            });
        }
        let d = w.commit(expected.map(|(d, _)| d), what)?;
        Ok((d, got))
    }

    /// The partial download of `d`, locked against other mctl processes pulling the same
    /// blob (waiting for them, with signals still heard); `None` if the blob is stored meanwhile.
    pub fn partial(&self, d: &Digest) -> Result<Option<Partial>, OciError> {
        let path = self.partial_path(d);
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(OciError::io("cannot open the partial download", &path))?;
        let mut file = file;
        let lock = loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(l) => break l,
                Err((f, nix::errno::Errno::EWOULDBLOCK)) => {
                    interrupt::check()?;
                    file = f;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err((_, e)) => return Err(OciError::io("cannot lock the partial download", &path)(e.into())),
            }
        };
        if self.has(d) {
            // Another process finished it: the file we locked may be a fresh empty one.
            if let (Ok(ours), Ok(there)) = (lock.metadata(), std::fs::symlink_metadata(&path))
                && ours.ino() == there.ino()
            {
                let _ = std::fs::remove_file(&path);
            }
            return Ok(None);
        }
        Ok(Some(Partial { file: lock, path, store: self.clone(), digest: d.clone() }))
    }

    /// Every stored blob.
    pub fn list(&self) -> Result<Vec<Digest>, OciError> {
        let dir = self.root.join("blobs/sha256");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(OciError::io("cannot read the blob store", &dir))? {
            let e = e.map_err(OciError::io("cannot read the blob store", &dir))?;
            if let Some(n) = e.file_name().to_str()
                && let Ok(d) = Digest::parse(&format!("sha256:{n}"))
            {
                out.push(d);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes blob `d`; returns the bytes freed.
    pub fn remove(&self, d: &Digest) -> Result<u64, OciError> {
        let path = self.path(d);
        let size = self.size(d).unwrap_or(0);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(size),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(OciError::io("cannot remove the blob", &path)(e)),
        }
    }

    /// Removes partial downloads nobody is writing; returns the bytes freed.
    pub fn remove_partials(&self) -> Result<u64, OciError> {
        let dir = self.root.join("partial");
        let mut freed = 0;
        for e in std::fs::read_dir(&dir).map_err(OciError::io("cannot read", &dir))?.flatten() {
            let Ok(f) = File::options().read(true).custom_flags(libc::O_NOFOLLOW).open(e.path()) else {
                continue;
            };
            if let Ok(l) = Flock::lock(f, FlockArg::LockExclusiveNonblock) {
                freed += l.metadata().map(|m| m.len()).unwrap_or(0);
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(freed)
    }

    /// The free space of the filesystem the store is on.
    pub fn free_space(&self) -> Option<u64> {
        let vfs = rustix::fs::statvfs(&self.root).ok()?;
        Some(vfs.f_bavail.saturating_mul(vfs.f_frsize))
    }

    fn install(&self, from: &Path, d: &Digest) -> io::Result<()> {
        std::fs::rename(from, self.path(d))
    }
}

/// A new blob being written; removed unless committed.
#[derive(Debug)]
pub struct BlobWriter {
    inner: HashingWriter<File>,
    tmp: Temporary,
    path: PathBuf,
    store: BlobStore,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl BlobWriter {
    /// Moves the blob into place under its digest, which must be `expected` when given.
    pub fn commit(self, expected: Option<&Digest>, what: &str) -> Result<Digest, OciError> {
        let (_f, d, _) = self.inner.finish();
        if let Some(e) = expected
            && e != &d
        {
            return Err(OciError::DigestMismatch {
                what: what.to_owned(),
                expected: e.to_string(),
                actual: d.to_string(),
            });
        }
        let store = self.store;
        self.tmp
            .commit(|p| store.install(p, &d))
            .map_err(OciError::io("cannot move a blob into the blob store", &self.path))?;
        Ok(d)
    }
}

/// A locked partial download.
#[derive(Debug)]
pub struct Partial {
    file: Flock<File>,
    path: PathBuf,
    store: BlobStore,
    digest: Digest,
}

impl Partial {
    /// How much is there already.
    pub fn len(&self) -> u64 {
        self.file.metadata().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether nothing was downloaded yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Its path (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file, for appending and re-reading.
    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// Starts over.
    pub fn reset(&mut self) -> Result<(), OciError> {
        self.file.set_len(0).map_err(OciError::io("cannot truncate the partial download", &self.path))?;
        use std::io::Seek;
        self.file
            .seek(io::SeekFrom::Start(0))
            .map_err(OciError::io("cannot rewind the partial download", &self.path))?;
        Ok(())
    }

    /// Drops the partial download (its content was wrong).
    pub fn discard(self) {
        let _ = std::fs::remove_file(&self.path);
    }

    /// Moves the finished download into the store; its digest was checked by the caller.
    pub fn install(self) -> Result<(), OciError> {
        self.store
            .install(&self.path, &self.digest)
            .map_err(OciError::io("cannot move a download into the blob store", &self.path))
    }
}

/// A stored blob being read; at its end the digest is checked, and a mismatch is an error
/// (the damaged blob is removed).
#[derive(Debug)]
pub struct VerifiedReader {
    file: File,
    hasher: Option<Sha256>,
    expected: Digest,
    path: PathBuf,
}

impl Read for VerifiedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        if n > 0 {
            if let Some(h) = self.hasher.as_mut() {
                h.update(&buf[..n]);
            }
        } else if !buf.is_empty()
            && let Some(h) = self.hasher.take()
        {
            let d = Digest::from_hasher(h);
            if d != self.expected {
                let _ = std::fs::remove_file(&self.path);
                return Err(io::Error::other(format!(
                    "the cached blob {} is damaged (digest {d}, expected {}); it was removed: pull again",
                    self.path.display(),
                    self.expected
                )));
            }
        }
        Ok(n)
    }
}
