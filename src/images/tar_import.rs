//! `import-tar`: unpacks a tarball (plain, gzip, xz or zstd) into a new image.
//!
//! Not `tar::Archive::unpack`: every entry goes through [`TreeWriter`], which creates it
//! relative to the new root's fd with kernel-confined resolution. What is refused:
//! - absolute member names and hard-link targets (GNU tar strips the leading `/`; an image
//!   tarball made by `tar -C tree .` or by export-tar never has one, so one is a sign of a
//!   hostile or wrong archive, and we say so rather than guess);
//! - names whose `..` climbs out of the root, and names that lead through a symlink (even one
//!   the archive itself created; the kernel reports both, see [`super::confined`]);
//! - hard links to anything not already extracted inside the root;
//! - files announcing more bytes than the store has free;
//! - truncated archives: a short entry, a broken compressed stream, or a missing
//!   end-of-archive marker.
//!
//! Decompression runs on its own thread, feeding the extraction through a bounded channel,
//! as `tar -x` gets from its decompressor child. The image is built in a hidden temporary
//! directory of the store and renamed into place only when complete.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};

use sha2::{Digest as _, Sha256};
use tar::EntryType;

use super::compress::{self, CompressError, Decoder};
use super::confined::{Meta, Node, TreeWriter, WriteError};
use super::interrupt::{self, Interrupted};
use super::store::{ImageInfo, ImageStore, StoreError};

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A store-level failure (name taken, store not writable, …).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The compression is unknown or broken at the start.
    #[error(transparent)]
    Compress(#[from] CompressError),
    /// Reading or decompressing the archive failed.
    #[error("cannot read the archive: {0}")]
    Read(io::Error),
    /// The first header is not a tar header.
    #[error("this is not a tar archive (plain, gzip, xz or zstd): {0}")]
    NotTar(String),
    /// The archive ends too early.
    #[error("the archive is truncated: {0}")]
    Truncated(String),
    /// An entry was refused or could not be written.
    #[error("refusing the archive: {0}")]
    Entry(WriteError),
    /// An entry has a header we cannot use.
    #[error("archive entry '{path}': {what}")]
    BadEntry {
        /// The entry.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A signal arrived.
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
}

impl From<WriteError> for ImportError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Short { path, got, size } => {
                ImportError::Truncated(format!("'{}' has {got} of its {size} bytes", path.display()))
            }
            e => ImportError::Entry(e),
        }
    }
}

impl ImportError {
    /// The interruption behind this error, if it is one.
    pub fn interrupted(&self) -> Option<Interrupted> {
        match self {
            ImportError::Interrupted(i) | ImportError::Store(StoreError::Interrupted(i)) => Some(*i),
            _ => None,
        }
    }
}

/// A read error, with the ways the tar crate and the decoders say "ended too early" turned
/// into [`ImportError::Truncated`].
fn read_error(e: io::Error) -> ImportError {
    let text = e.to_string();
    if e.kind() == io::ErrorKind::UnexpectedEof
        || text.contains("failed to read entire block")
        || text.contains("unexpected EOF")
        || text.contains("premature eof")
        || text.contains("incomplete frame")
    {
        ImportError::Truncated(text)
    } else {
        ImportError::Read(e)
    }
}

/// Imports the tarball read from `input` as image `name`.
pub fn import_tar<R: Read + Send + 'static>(
    store: &ImageStore,
    name: &str,
    input: R,
) -> Result<ImageInfo, ImportError> {
    store.ensure_absent(name)?;
    let tmp = store.temp_image("import", name)?;
    extract(input, tmp.path())?;
    Ok(store.commit(tmp, name)?)
}

/// Size of the chunks the decompression thread hands over, and of the copy buffer.
pub(crate) const CHUNK: usize = 1 << 20;
/// Chunks in flight between the threads.
const IN_FLIGHT: usize = 4;

/// Reads the chunks the decompression thread sends, and hands the emptied buffers back (new
/// 1 MiB buffers would cost a page fault per page, every time).
pub(crate) struct ChannelReader {
    rx: Receiver<io::Result<Vec<u8>>>,
    back: Sender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    done: bool,
    /// Whether the stream ended (rather than the tar reader stopping at its end marker).
    hit_eof: bool,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.pos == self.cur.len() {
            if self.done {
                self.hit_eof = true;
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    let _ = self.back.send(std::mem::replace(&mut self.cur, chunk));
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                Err(_) => self.done = true,
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Decompresses `input` into the channel, then reads the raw input to its end (so a caller
/// hashing it sees every byte). With `drain_on_abort`, it also reads the raw input to its end
/// when the extraction stopped early, so that a download's checksum can still be computed.
fn pump<R: Read>(
    mut d: Decoder<R>,
    tx: SyncSender<io::Result<Vec<u8>>>,
    back: Receiver<Vec<u8>>,
    drain_on_abort: bool,
    mut hasher: Option<Sha256>,
) -> Option<[u8; 32]> {
    let drain = |d: Decoder<R>| io::copy(&mut d.into_source(), &mut io::sink());
    loop {
        let mut chunk = back.try_recv().unwrap_or_default();
        chunk.resize(CHUNK, 0);
        let mut filled = 0;
        while filled < CHUNK {
            match d.read(&mut chunk[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.send(Err(e));
                    if drain_on_abort {
                        let _ = drain(d);
                    }
                    return None;
                }
            }
        }
        if filled == 0 {
            break;
        }
        chunk.truncate(filled);
        if let Some(h) = hasher.as_mut() {
            h.update(&chunk);
        }
        if tx.send(Ok(chunk)).is_err() {
            // The extraction stopped.
            if drain_on_abort {
                let _ = drain(d);
            }
            return None;
        }
    }
    if let Err(e) = drain(d) {
        let _ = tx.send(Err(e));
        return None;
    }
    hasher.map(|h| h.finalize().into())
}

/// Unpacks the tarball read from `input` into the existing empty directory `dest`.
pub fn extract<R: Read + Send + 'static>(input: R, dest: &Path) -> Result<(), ImportError> {
    extract_with(input, dest, false)
}

/// [`extract`]; with `drain_on_abort`, `input` is read to its end even when the extraction
/// fails, and only then does this return (a download's checksum can then tell whether the
/// archive was damaged on the way). Not for inputs that may block forever, like a terminal.
pub fn extract_with<R: Read + Send + 'static>(
    input: R,
    dest: &Path,
    drain_on_abort: bool,
) -> Result<(), ImportError> {
    let mut writer = TreeWriter::new(dest)?;
    let mut buf = vec![0u8; CHUNK];
    let mut root_seen = false;
    for_each_entry(input, drain_on_abort, |entry| {
        root_seen |= add_entry(&mut writer, entry, &mut buf, false)?;
        Ok(())
    })?;
    if !root_seen {
        // No "./" entry: the root gets the usual mode instead of the temporary's 0700.
        set_root_mode(dest)?;
    }
    writer.finish()?;
    Ok(())
}

/// Gives `dest` mode 0755 (an image root whose archive had no entry for it).
pub(crate) fn set_root_mode(dest: &Path) -> Result<(), ImportError> {
    std::fs::set_permissions(dest, std::os::unix::fs::PermissionsExt::from_mode(0o755)).map_err(|e| {
        ImportError::Entry(WriteError::Io {
            step: "cannot set the mode of",
            path: dest.to_owned(),
            source: e,
        })
    })
}

/// The entry of the tarball being read.
pub(crate) type StreamEntry<'a> = tar::Entry<'a, ChannelReader>;

/// Calls `each` on every entry of the tarball read from `input` (plain, gzip, xz or zstd,
/// decompressed on a thread of its own), then checks that the archive ended properly.
pub(crate) fn for_each_entry<R: Read + Send + 'static>(
    input: R,
    drain_on_abort: bool,
    each: impl FnMut(&mut StreamEntry<'_>) -> Result<(), ImportError>,
) -> Result<(), ImportError> {
    each_entry(input, drain_on_abort, None, each).map(drop)
}

/// [`for_each_entry`], also returning the SHA-256 of the whole uncompressed stream (an OCI
/// layer's diff ID), hashed on the decompressing thread.
pub(crate) fn for_each_entry_hashed<R: Read + Send + 'static>(
    input: R,
    each: impl FnMut(&mut StreamEntry<'_>) -> Result<(), ImportError>,
) -> Result<[u8; 32], ImportError> {
    let digest = each_entry(input, false, Some(Sha256::new()), each)?;
    Ok(digest.unwrap_or_default())
}

fn each_entry<R: Read + Send + 'static>(
    input: R,
    drain_on_abort: bool,
    hasher: Option<Sha256>,
    each: impl FnMut(&mut StreamEntry<'_>) -> Result<(), ImportError>,
) -> Result<Option<[u8; 32]>, ImportError> {
    let (format, peeked) = compress::peek(input)?;
    let decoder = Decoder::new(format, peeked)?;
    let (tx, rx) = sync_channel(IN_FLIGHT);
    let (back_tx, back_rx) = channel();
    let pumper = std::thread::Builder::new()
        .name("mctl-decompress".into())
        .spawn(move || pump(decoder, tx, back_rx, drain_on_abort, hasher))
        .map_err(ImportError::Read)?;
    let reader = ChannelReader { rx, back: back_tx, cur: Vec::new(), pos: 0, done: false, hit_eof: false };
    // Dropping the archive (inside) closes the channel, which lets the thread end; on success
    // it has ended already.
    let result = entries(tar::Archive::new(reader), each);
    if result.is_ok() || drain_on_abort {
        let digest = pumper.join().ok().flatten();
        return result.map(|()| digest);
    }
    result.map(|()| None)
}

fn entries(
    mut archive: tar::Archive<ChannelReader>,
    mut each: impl FnMut(&mut StreamEntry<'_>) -> Result<(), ImportError>,
) -> Result<(), ImportError> {
    let mut entries = 0u64;
    for entry in archive.entries().map_err(read_error)? {
        interrupt::check()?;
        let mut entry = entry.map_err(|e| match read_error(e) {
            // The tar crate's words for a header that is not one; say it plainly.
            ImportError::Read(e) if entries == 0 && e.kind() != io::ErrorKind::Interrupted => {
                ImportError::NotTar(e.to_string().chars().take(80).collect())
            }
            e => e,
        })?;
        entries += 1;
        each(&mut entry)?;
    }
    let mut reader = archive.into_inner();
    if reader.hit_eof {
        return Err(ImportError::Truncated(if entries == 0 {
            "it is empty".into()
        } else {
            "it ends without an end-of-archive marker".into()
        }));
    }
    // Whatever follows the end marker (padding, the compressed stream's trailer with its
    // checksum) must still read cleanly.
    io::copy(&mut reader, &mut io::sink()).map_err(read_error)?;
    Ok(())
}

fn bad(path: &Path, what: impl std::fmt::Display) -> ImportError {
    ImportError::BadEntry { path: path.to_owned(), what: what.to_string() }
}

/// Writes one entry; returns whether it was the root directory itself. With
/// `drop_overlay_xattrs`, `trusted.overlay.*` attributes are left out: they steer overlayfs
/// (redirects, opaque directories, metacopy) when the tree is used as a lower layer, and an
/// OCI layer has no business setting them.
pub(crate) fn add_entry<R: Read>(
    writer: &mut TreeWriter,
    entry: &mut tar::Entry<'_, R>,
    buf: &mut [u8],
    drop_overlay_xattrs: bool,
) -> Result<bool, ImportError> {
    let path = PathBuf::from(OsStr::from_bytes(&entry.path_bytes())).to_owned();
    let mut meta = entry_meta(entry, &path)?;
    if drop_overlay_xattrs {
        meta.xattrs.retain(|(k, _)| !k.as_bytes().starts_with(b"trusted.overlay."));
    }
    let link = entry.link_name_bytes().map(|l| PathBuf::from(OsStr::from_bytes(&l)));
    let h = entry.header();
    let etype = h.entry_type();
    let dev = || -> Result<u64, ImportError> {
        let major = h.device_major().map_err(|e| bad(&path, e))?.unwrap_or(0);
        let minor = h.device_minor().map_err(|e| bad(&path, e))?.unwrap_or(0);
        Ok(rustix::fs::makedev(major, minor))
    };
    let need_link = || link.as_deref().ok_or_else(|| bad(&path, "the link has no target"));
    let node = match etype {
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
            Node::File { size: entry.size() }
        }
        EntryType::Directory => Node::Dir,
        EntryType::Symlink => Node::Symlink(need_link()?),
        EntryType::Link => Node::HardLink(need_link()?),
        EntryType::Char => Node::Char(dev()?),
        EntryType::Block => Node::Block(dev()?),
        EntryType::Fifo => Node::Fifo,
        // Global PAX headers carry nothing we use.
        EntryType::XGlobalHeader => return Ok(false),
        other => return Err(bad(&path, format!("unsupported entry type {:?}", other.as_byte() as char))),
    };
    let is_root = matches!(node, Node::Dir) && is_root_path(&path);
    let mut source_error = None;
    let result = writer.add(&path, node, &meta, |out| copy_entry(entry, out, buf, &mut source_error));
    if let Err(e) = result {
        interrupt::check()?;
        if let Some(e) = source_error {
            return Err(read_error(e));
        }
        return Err(e.into());
    }
    Ok(is_root)
}

/// Whether a member name denotes the root itself (`.`, `./`, empty).
pub(crate) fn is_root_path(path: &Path) -> bool {
    path.components().all(|c| c == std::path::Component::CurDir)
}

/// Copies an entry's data, checking for signals between chunks. Read errors are kept in
/// `source_error` so that they are reported as the archive's fault, not the target's.
fn copy_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    out: &mut File,
    buf: &mut [u8],
    source_error: &mut Option<io::Error>,
) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        if interrupt::received().is_some() {
            return Err(io::Error::from(io::ErrorKind::Interrupted));
        }
        let n = match entry.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let kind = e.kind();
                *source_error = Some(e);
                return Err(io::Error::from(kind));
            }
        };
        out.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// Owner, mode, mtime and xattrs from the header and its PAX records (which override the
/// header for values too large for it).
fn entry_meta<R: Read>(entry: &mut tar::Entry<'_, R>, path: &Path) -> Result<Meta, ImportError> {
    let h = entry.header();
    let num = |v: io::Result<u64>, what: &str| -> Result<u64, ImportError> {
        v.map_err(|e| bad(path, format!("bad {what}: {e}")))
    };
    let id =
        |v: u64, what: &str| u32::try_from(v).map_err(|_| bad(path, format!("{what} {v} is out of range")));
    let mut meta = Meta {
        mode: h.mode().map_err(|e| bad(path, format!("bad mode: {e}")))? & 0o7777,
        uid: id(num(h.uid(), "uid")?, "uid")?,
        gid: id(num(h.gid(), "gid")?, "gid")?,
        mtime: (i64::try_from(num(h.mtime(), "mtime")?).unwrap_or(i64::MAX), 0),
        xattrs: Vec::new(),
    };
    let Some(exts) = entry.pax_extensions().map_err(read_error)? else { return Ok(meta) };
    for ext in exts {
        let ext = ext.map_err(|e| bad(path, format!("bad PAX record: {e}")))?;
        let key = ext.key_bytes();
        let text = || std::str::from_utf8(ext.value_bytes()).unwrap_or("");
        if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
            meta.xattrs.push((OsStr::from_bytes(name).to_owned(), ext.value_bytes().to_vec()));
        } else if key == b"uid" {
            meta.uid = id(text().parse().map_err(|_| bad(path, "bad PAX uid"))?, "uid")?;
        } else if key == b"gid" {
            meta.gid = id(text().parse().map_err(|_| bad(path, "bad PAX gid"))?, "gid")?;
        } else if key == b"mtime" {
            meta.mtime = parse_pax_time(text()).ok_or_else(|| bad(path, "bad PAX mtime"))?;
        }
    }
    Ok(meta)
}

/// A PAX time: decimal seconds with an optional fraction.
fn parse_pax_time(s: &str) -> Option<(i64, u32)> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    let (mut ns, mut scale) = (0u32, 100_000_000u32);
    for c in frac.chars().take(9) {
        ns += c.to_digit(10)? * scale;
        scale /= 10;
    }
    Some((secs, ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time("1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(parse_pax_time("1700000000.5"), Some((1_700_000_000, 500_000_000)));
        assert_eq!(parse_pax_time("12.000000001"), Some((12, 1)));
        assert_eq!(parse_pax_time("x"), None);
    }
}
