//! `pull-tar`: downloads a tarball over HTTP(S) and imports it, as `machinectl pull-tar` does.
//!
//! - Verification (`--verify=checksum`, the default): `SHA256SUMS` beside the file, else
//!   `FILE.sha256`; the SHA-256 of the download is computed while it streams.
//! - The download streams straight into the extraction (like `curl | tar -x`); the image is
//!   renamed into place only once the whole body arrived and its checksum matched.
//! - A download cache keyed by URL keeps the last body with its validators (ETag,
//!   Last-Modified) and SHA-256; pulling again sends If-None-Match / If-Modified-Since and, on
//!   304, imports the cached copy, so an unchanged image is not downloaded twice. Cache files
//!   are written under temporary names and renamed, and the cached body is re-hashed before
//!   use, so a crash or a corrupted file can never feed a wrong body.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use reqwest::blocking::{Client, Response};
use reqwest::header::{ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};
use reqwest::{StatusCode, Url};
use sha2::{Digest, Sha256};

use super::interrupt::{self, Interrupted, Temporary};
use super::store::{ImageInfo, ImageStore, StoreError, random_suffix};
use super::tar_import::{self, ImportError};
use crate::names;

/// How to check a download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Against a published SHA-256 checksum.
    Checksum,
    /// Not at all.
    No,
}

/// Settings of a pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Whether to check the download against its published SHA-256 (`--verify`).
    pub verify: Verify,
    /// The download cache directory; `None` for no cache.
    pub cache: Option<PathBuf>,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// Not a usable URL.
    #[error("invalid URL '{url}': {reason}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// No name given and none derivable.
    #[error("cannot derive an image name from '{0}'; give one")]
    NoName(String),
    /// The server answered with an error status.
    #[error("downloading {url} failed: HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: StatusCode,
    },
    /// The request failed (connection, TLS, …).
    #[error("downloading {url} failed: {detail}")]
    Request {
        /// The URL.
        url: String,
        /// The error with its causes.
        detail: String,
    },
    /// The body did not arrive whole.
    #[error("downloading {url} failed after {got} bytes: {detail}")]
    Transfer {
        /// The URL.
        url: String,
        /// Bytes received.
        got: u64,
        /// What happened.
        detail: String,
    },
    /// No checksum file published.
    #[error(
        "no checksum for {url}: neither {sums} nor {single} exists (use --verify=no to skip verification)"
    )]
    NoChecksum {
        /// The file.
        url: String,
        /// The SHA256SUMS URL tried.
        sums: String,
        /// The FILE.sha256 URL tried.
        single: String,
    },
    /// The checksum file does not list the file.
    #[error("'{file}' is not listed in {sums}")]
    NotListed {
        /// The file name.
        file: String,
        /// The checksum file's URL.
        sums: String,
    },
    /// The checksum file is unreadable.
    #[error("cannot parse the checksum file {0}")]
    BadSums(String),
    /// The download is not what was published.
    #[error("checksum mismatch for {url}: expected SHA-256 {expected}, got {actual}")]
    Mismatch {
        /// The URL.
        url: String,
        /// The published checksum.
        expected: String,
        /// What we got.
        actual: String,
    },
    /// Reading the cached copy failed.
    #[error("cannot read the cached download '{path}': {source}")]
    Cache {
        /// The cache file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Unpacking failed.
    #[error("import failed: {0}")]
    Import(#[from] ImportError),
    /// The store refused.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A signal arrived.
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
}

impl PullError {
    /// The interruption behind this error, if it is one.
    pub fn interrupted(&self) -> Option<Interrupted> {
        match self {
            PullError::Interrupted(i) | PullError::Store(StoreError::Interrupted(i)) => Some(*i),
            PullError::Import(e) => e.interrupted(),
            _ => None,
        }
    }
}

/// An error and its causes, joined (reqwest's own text alone is terse).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// Where the checksum comes from.
#[derive(Debug, Clone)]
pub enum Checksums {
    /// No verification.
    None,
    /// `SHA256SUMS` beside the file, else `FILE.sha256`.
    Beside,
    /// This checksum file, listing the file under this name (LXC image servers).
    File {
        /// The SHA256SUMS URL.
        url: Url,
        /// The name the file has in it.
        name: String,
    },
}

/// The image name `pull-tar` derives from a URL: its file name without archive extensions,
/// cleaned to a valid machine name.
pub fn name_from_url(url: &Url) -> Option<String> {
    name_from_file_name(url.path_segments()?.rfind(|s| !s.is_empty())?)
}

/// The image name a tarball's file name suggests: without archive extensions, cleaned to a
/// valid machine name.
pub fn name_from_file_name(file: &str) -> Option<String> {
    let lower = file.to_ascii_lowercase();
    let mut stem = file;
    for ext in [".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.zst", ".tzst", ".tar.zstd", ".tar"] {
        if lower.ends_with(ext) {
            stem = &file[..file.len() - ext.len()];
            break;
        }
    }
    let name = names::cleanup(stem);
    names::validate(&name).is_ok().then_some(name)
}

/// Parses a URL for pulling (http or https only).
pub fn parse_url(url: &str) -> Result<Url, PullError> {
    let bad = |reason: String| PullError::BadUrl { url: url.to_owned(), reason };
    let u = Url::parse(url).map_err(|e| bad(e.to_string()))?;
    if u.scheme() != "http" && u.scheme() != "https" {
        return Err(bad(format!("the scheme must be http or https, not {}", u.scheme())));
    }
    Ok(u)
}

/// Downloads the tarball at `url` and imports it as `name` (default: derived from the URL).
pub fn pull_tar(
    store: &ImageStore,
    url: &str,
    name: Option<&str>,
    opts: &PullOptions,
) -> Result<ImageInfo, PullError> {
    let u = parse_url(url)?;
    let name = match name {
        Some(n) => n.to_owned(),
        None => name_from_url(&u).ok_or_else(|| PullError::NoName(url.to_owned()))?,
    };
    let sums = match opts.verify {
        Verify::Checksum => Checksums::Beside,
        Verify::No => Checksums::None,
    };
    pull_with(store, &u, &name, &sums, opts)
}

/// A client for pulls: no overall timeout (images are large), but a bounded connect.
pub fn client() -> Result<Client, PullError> {
    super::http::client_builder()
        .build()
        .map_err(|e| PullError::Request { url: String::new(), detail: chain(&e) })
}

fn send(req: reqwest::blocking::RequestBuilder, url: &Url) -> Result<Response, PullError> {
    req.send().map_err(|e| PullError::Request { url: url.to_string(), detail: chain(&e) })
}

/// GETs a small text file; `None` on 404.
fn get_text(client: &Client, url: &Url) -> Result<Option<String>, PullError> {
    let resp = send(client.get(url.clone()), url)?;
    match resp.status() {
        StatusCode::NOT_FOUND => Ok(None),
        s if s.is_success() => resp.text().map(Some).map_err(|e| PullError::Transfer {
            url: url.to_string(),
            got: 0,
            detail: chain(&e),
        }),
        status => Err(PullError::Status { url: url.to_string(), status }),
    }
}

/// The checksum for `name` in a SHA256SUMS-style text (`HEX  NAME` or `HEX *NAME`).
fn find_sum(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (hex, file) = l.trim().split_once(char::is_whitespace)?;
        let file = file.trim_start().trim_start_matches('*');
        let file = file.strip_prefix("./").unwrap_or(file);
        (file == name && is_sha256(hex)).then(|| hex.to_ascii_lowercase())
    })
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The expected SHA-256 of `url`, or `None` without verification.
fn expected_sum(client: &Client, url: &Url, sums: &Checksums) -> Result<Option<String>, PullError> {
    let file = url.path_segments().and_then(|mut s| s.rfind(|x| !x.is_empty())).unwrap_or("").to_owned();
    match sums {
        Checksums::None => Ok(None),
        Checksums::File { url: sums_url, name } => {
            let text = get_text(client, sums_url)?.ok_or_else(|| PullError::Status {
                url: sums_url.to_string(),
                status: StatusCode::NOT_FOUND,
            })?;
            find_sum(&text, name)
                .map(Some)
                .ok_or_else(|| PullError::NotListed { file: name.clone(), sums: sums_url.to_string() })
        }
        Checksums::Beside => {
            let sums_url = url
                .join("SHA256SUMS")
                .map_err(|e| PullError::BadUrl { url: url.to_string(), reason: e.to_string() })?;
            if let Some(text) = get_text(client, &sums_url)? {
                return find_sum(&text, &file)
                    .map(Some)
                    .ok_or_else(|| PullError::NotListed { file, sums: sums_url.to_string() });
            }
            let mut single = url.clone();
            single.set_path(&format!("{}.sha256", url.path()));
            single.set_query(None);
            if let Some(text) = get_text(client, &single)? {
                // Either a bare checksum or a SHA256SUMS-style line.
                let first = text.split_whitespace().next().unwrap_or("");
                if is_sha256(first) {
                    return Ok(Some(first.to_ascii_lowercase()));
                }
                return Err(PullError::BadSums(single.to_string()));
            }
            Err(PullError::NoChecksum {
                url: url.to_string(),
                sums: sums_url.to_string(),
                single: single.to_string(),
            })
        }
    }
}

/// What the cache keeps about a download, beside its body.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct CacheMeta {
    url: String,
    etag: Option<String>,
    last_modified: Option<String>,
    sha256: String,
    size: u64,
}

/// The cache files of one URL.
#[derive(Debug)]
struct CacheEntry {
    dir: PathBuf,
    data: PathBuf,
    meta: PathBuf,
}

impl CacheEntry {
    fn new(dir: &Path, url: &Url) -> Self {
        let key = hex::encode(&Sha256::digest(url.as_str().as_bytes())[..16]);
        Self {
            dir: dir.to_owned(),
            data: dir.join(format!("{key}.tar")),
            meta: dir.join(format!("{key}.json")),
        }
    }

    fn load(&self, url: &Url) -> Option<CacheMeta> {
        let m: CacheMeta = serde_json::from_slice(&std::fs::read(&self.meta).ok()?).ok()?;
        (m.url == url.as_str() && self.data.is_file()).then_some(m)
    }

    fn forget(&self) {
        let _ = std::fs::remove_file(&self.meta);
        let _ = std::fs::remove_file(&self.data);
    }

    /// Writes the metadata under a temporary name and renames it into place.
    fn store_meta(&self, meta: &CacheMeta) -> io::Result<()> {
        let tmp = Temporary::register(self.dir.join(format!(".#meta.{}", random_suffix())));
        std::fs::write(tmp.path(), serde_json::to_vec(meta).map_err(io::Error::other)?)?;
        tmp.commit(|p| std::fs::rename(p, &self.meta))
    }
}

/// What the download stream saw, for after the import.
#[derive(Debug, Default)]
struct TeeState {
    got: u64,
    eof: bool,
    error: Option<String>,
    digest: Option<String>,
    cache_error: Option<io::Error>,
}

/// The response body on its way to the extraction: hashed, counted, copied to the cache.
struct Tee<R> {
    inner: R,
    hasher: Sha256,
    got: u64,
    cache: Option<File>,
    progress: indicatif::ProgressBar,
    state: Arc<Mutex<TeeState>>,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Also stops the draining of a failed import's body.
        interrupt::check()?;
        match self.inner.read(buf) {
            Ok(0) if !buf.is_empty() => {
                let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                st.eof = true;
                Ok(0)
            }
            Ok(n) => {
                self.hasher.update(&buf[..n]);
                self.got += n as u64;
                self.progress.inc(n as u64);
                if let Some(f) = self.cache.as_mut()
                    && let Err(e) = f.write_all(&buf[..n])
                {
                    // A full cache must not fail the pull; it only stops caching.
                    self.cache = None;
                    self.state.lock().unwrap_or_else(|e| e.into_inner()).cache_error = Some(e);
                }
                Ok(n)
            }
            Err(e) => {
                let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                if st.error.is_none() {
                    st.error = Some(chain(&e));
                }
                Err(e)
            }
        }
    }
}

impl<R> Drop for Tee<R> {
    fn drop(&mut self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.got = self.got;
        st.digest = Some(hex::encode(std::mem::take(&mut self.hasher).finalize()));
    }
}

fn progress_bar(show: bool, len: Option<u64>, what: &str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let pb = match len {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    };
    pb.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {eta}")
    {
        pb.set_style(style);
    }
    pb.set_message(what.to_owned());
    pb
}

/// Downloads `url` (or takes it from the cache), checks it against `sums` and imports it as
/// `name`.
pub fn pull_with(
    store: &ImageStore,
    url: &Url,
    name: &str,
    sums: &Checksums,
    opts: &PullOptions,
) -> Result<ImageInfo, PullError> {
    store.ensure_absent(name)?;
    let client = client()?;
    let cache = opts.cache.as_deref().and_then(|dir| match std::fs::create_dir_all(dir) {
        Ok(()) => Some(CacheEntry::new(dir, url)),
        Err(e) => {
            tracing::warn!("not caching the download: cannot create {}: {e}", dir.display());
            None
        }
    });
    let cached = cache.as_ref().and_then(|c| c.load(url));
    let mut req = client.get(url.clone());
    if let Some(m) = &cached {
        if let Some(etag) = &m.etag {
            req = req.header(IF_NONE_MATCH, etag);
        }
        if let Some(lm) = &m.last_modified {
            req = req.header(IF_MODIFIED_SINCE, lm);
        }
    }
    // The file first: a missing file is a 404 for it, not a complaint about the checksums.
    // Its body waits on the connection while the checksum is fetched.
    let resp = send(req, url)?;
    let status = resp.status();
    if !status.is_success() && status != StatusCode::NOT_MODIFIED {
        return Err(PullError::Status { url: url.to_string(), status });
    }
    let expected = expected_sum(&client, url, sums)?;
    interrupt::check()?;
    if status == StatusCode::NOT_MODIFIED
        && let (Some(c), Some(m)) = (&cache, &cached)
    {
        drop(resp);
        match import_cached(store, url, name, c, m, expected.as_deref())? {
            Some(info) => return Ok(info),
            // The cached body was damaged: forget it and download (and cache) it afresh.
            None => {
                c.forget();
                let resp = send(client.get(url.clone()), url)?;
                return download(store, url, name, resp, Some(c), expected.as_deref(), opts);
            }
        }
    }
    download(store, url, name, resp, cache.as_ref(), expected.as_deref(), opts)
}

/// Imports the cached body after checking it is what was cached (and what was published).
/// `Ok(None)` when the cached body does not match its own record.
fn import_cached(
    store: &ImageStore,
    url: &Url,
    name: &str,
    cache: &CacheEntry,
    meta: &CacheMeta,
    expected: Option<&str>,
) -> Result<Option<ImageInfo>, PullError> {
    let cerr = |source| PullError::Cache { path: cache.data.clone(), source };
    let actual = hash_file(&cache.data).map_err(cerr)?;
    if actual != meta.sha256 {
        tracing::warn!("the cached copy of {url} is damaged; downloading it again");
        return Ok(None);
    }
    if let Some(exp) = expected
        && exp != actual
    {
        return Err(PullError::Mismatch { url: url.to_string(), expected: exp.to_owned(), actual });
    }
    tracing::info!("{url} is unchanged; using the cached copy");
    let f = File::open(&cache.data).map_err(cerr)?;
    Ok(Some(tar_import::import_tar(store, name, f)?))
}

fn hash_file(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match f.read(&mut buf)? {
            0 => return Ok(hex::encode(h.finalize())),
            n => h.update(&buf[..n]),
        }
    }
}

fn header_string(resp: &Response, h: reqwest::header::HeaderName) -> Option<String> {
    resp.headers().get(h).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

fn download(
    store: &ImageStore,
    url: &Url,
    name: &str,
    resp: Response,
    cache: Option<&CacheEntry>,
    expected: Option<&str>,
    opts: &PullOptions,
) -> Result<ImageInfo, PullError> {
    if !resp.status().is_success() {
        return Err(PullError::Status { url: url.to_string(), status: resp.status() });
    }
    let len = resp.content_length();
    let etag = header_string(&resp, ETAG);
    let last_modified = header_string(&resp, LAST_MODIFIED);
    let mut cache_tmp =
        cache.map(|c| Temporary::register(c.dir.join(format!(".#download.{}", random_suffix()))));
    let cache_file = match cache_tmp.as_ref().map(|t| File::create(t.path())) {
        Some(Ok(f)) => Some(f),
        Some(Err(e)) => {
            tracing::warn!("not caching the download: {e}");
            cache_tmp = None;
            None
        }
        None => None,
    };
    let state = Arc::new(Mutex::new(TeeState::default()));
    let progress = progress_bar(opts.progress, len, name);
    let tee = Tee {
        inner: resp,
        hasher: Sha256::new(),
        got: 0,
        cache: cache_file,
        progress: progress.clone(),
        state: state.clone(),
    };
    let tmp = store.temp_image("import", name)?;
    // With a checksum to compare, a failed extraction still reads the whole body: a damaged
    // download is then reported as what it is.
    let result = tar_import::extract_with(tee, tmp.path(), expected.is_some());
    progress.finish_and_clear();
    let st = std::mem::take(&mut *state.lock().unwrap_or_else(|e| e.into_inner()));
    let digest = verify(url, result, &st, len, expected)?;
    if let (Some(c), Some(t)) = (cache, cache_tmp) {
        if let Some(e) = &st.cache_error {
            tracing::warn!("not caching the download: {e}");
        } else {
            let meta = CacheMeta { url: url.to_string(), etag, last_modified, sha256: digest, size: st.got };
            let saved = t.commit(|p| std::fs::rename(p, &c.data)).and_then(|()| c.store_meta(&meta));
            if let Err(e) = saved {
                tracing::warn!("cannot save the download in the cache {}: {e}", c.dir.display());
                c.forget();
            }
        }
    }
    Ok(store.commit(tmp, name)?)
}

/// Checks that the extraction succeeded on the whole, announced body with the expected digest;
/// returns the digest. A failure says what really happened (a broken connection or a damaged
/// download shows up as a broken archive first).
fn verify(
    url: &Url,
    extracted: Result<(), tar_import::ImportError>,
    st: &TeeState,
    len: Option<u64>,
    expected: Option<&str>,
) -> Result<String, PullError> {
    let transfer = |detail: String| PullError::Transfer { url: url.to_string(), got: st.got, detail };
    if let Err(e) = extracted {
        if let Some(i) = e.interrupted() {
            return Err(i.into());
        }
        if let Some(detail) = &st.error {
            return Err(transfer(detail.clone()));
        }
        if let (Some(exp), Some(digest), true) = (expected, &st.digest, st.eof)
            && exp != digest
        {
            return Err(PullError::Mismatch {
                url: url.to_string(),
                expected: exp.to_owned(),
                actual: digest.clone(),
            });
        }
        return Err(e.into());
    }
    if !st.eof {
        return Err(transfer("the body was not read to its end".into()));
    }
    if let Some(n) = len
        && st.got != n
    {
        return Err(transfer(format!("the server announced {n} bytes")));
    }
    let digest = st.digest.clone().unwrap_or_default();
    if let Some(exp) = expected
        && exp != digest
    {
        return Err(PullError::Mismatch { url: url.to_string(), expected: exp.to_owned(), actual: digest });
    }
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_urls() {
        let n = |u: &str| name_from_url(&Url::parse(u).unwrap());
        assert_eq!(n("http://h/x/debian-12.tar.xz").as_deref(), Some("debian-12"));
        assert_eq!(n("http://h/images/my_image.tgz").as_deref(), Some("myimage"));
        assert_eq!(n("http://h/a/rootfs.tar").as_deref(), Some("rootfs"));
        assert_eq!(n("http://h/a/b.tar.zst/").as_deref(), Some("b"));
        assert_eq!(n("http://h/"), None);
        assert_eq!(n("http://h/___.tar"), None);
    }

    #[test]
    fn checksum_lines() {
        let h = "a".repeat(64);
        let text = format!("{h}  other.tar\n{}  ./img.tar.xz\n{} *bin.tar\n", "B".repeat(64), "c".repeat(64));
        assert_eq!(find_sum(&text, "img.tar.xz"), Some("b".repeat(64)));
        assert_eq!(find_sum(&text, "bin.tar"), Some("c".repeat(64)));
        assert_eq!(find_sum(&text, "other.tar"), Some(h));
        assert_eq!(find_sum(&text, "missing"), None);
        assert_eq!(find_sum("nothex  x", "x"), None);
    }
}
