//! `pull-lxc`: images from an LXC "download" image server (images.linuxcontainers.org and
//! its mirrors), the protocol `lxc-create -t download` speaks: the index
//! `<server>/meta/1.0/index-system` has one line per build,
//! `dist;release;arch;variant;timestamp;path`, and each build directory `<server><path>` holds
//! `rootfs.tar.xz` and a `SHA256SUMS` that lists it.

use reqwest::Url;

use super::pull::{self, Checksums, PullError, PullOptions, Verify};
use super::store::{ImageInfo, ImageStore};
use crate::names;

/// The public image server.
pub const DEFAULT_SERVER: &str = "https://images.linuxcontainers.org";

/// Why an LXC pull failed.
#[derive(Debug, thiserror::Error)]
pub enum LxcError {
    /// The server URL is unusable.
    #[error("invalid server URL '{url}': {reason}")]
    BadServer {
        /// The URL given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The index could not be fetched.
    #[error("cannot fetch the image index {url}: {source}")]
    Index {
        /// The index URL.
        url: String,
        /// What happened.
        source: Box<PullError>,
    },
    /// Nothing matches.
    #[error("the server {server} has no image {dist} {release} for {arch} (variant {variant})")]
    NotFound {
        /// The server.
        server: String,
        /// Distribution asked for (`debian`), matched exactly against the index.
        dist: String,
        /// Release asked for (`bookworm`).
        release: String,
        /// Architecture asked for, in Debian's names (`amd64`, `arm64`).
        arch: String,
        /// Variant asked for (`default` unless `--variant` was given).
        variant: String,
    },
    /// An index line points somewhere odd.
    #[error("the image index lists a bad path '{0}'")]
    BadPath(String),
    /// No name given and none derivable.
    #[error("cannot derive an image name from '{0}'; give one")]
    NoName(String),
    /// Downloading or importing failed.
    #[error(transparent)]
    Pull(#[from] PullError),
}

/// One line of the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// Distribution (`debian`).
    pub dist: String,
    /// Release (`bookworm`).
    pub release: String,
    /// Architecture (`amd64`).
    pub arch: String,
    /// Variant (`default`, `cloud`).
    pub variant: String,
    /// Build timestamp (`20240101_05:24`), sortable as text.
    pub timestamp: String,
    /// Build directory on the server (`/images/debian/bookworm/amd64/default/20240101_05:24/`).
    pub path: String,
}

/// Parses `index-system`; malformed lines are skipped, as lxc's download template does.
pub fn parse_index(text: &str) -> Vec<IndexEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.trim().split(';').collect();
            if f.len() < 6 || f[..6].iter().any(|x| x.is_empty()) {
                return None;
            }
            Some(IndexEntry {
                dist: f[0].into(),
                release: f[1].into(),
                arch: f[2].into(),
                variant: f[3].into(),
                timestamp: f[4].into(),
                path: f[5].into(),
            })
        })
        .collect()
}

/// The newest build matching the request.
pub fn pick<'a>(
    entries: &'a [IndexEntry],
    dist: &str,
    release: &str,
    arch: &str,
    variant: &str,
) -> Option<&'a IndexEntry> {
    entries
        .iter()
        .filter(|e| e.dist == dist && e.release == release && e.arch == arch && e.variant == variant)
        .max_by(|a, b| a.timestamp.cmp(&b.timestamp))
}

/// The host's architecture under the names the LXC image servers use (Debian's).
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "i386",
        "aarch64" => "arm64",
        "arm" => "armhf",
        "powerpc64" => "ppc64el",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        "loongarch64" => "loong64",
        other => other,
    }
}

/// What to pull from where.
#[derive(Debug, Clone)]
pub struct LxcRequest {
    /// The server's base URL.
    pub server: String,
    /// Distribution as the index names it (`debian`, `alpine`); matched exactly.
    pub dist: String,
    /// Release as the index names it (`bookworm`, `3.20`).
    pub release: String,
    /// Architecture in Debian's names (`amd64`); the CLI defaults to [`host_arch`].
    pub arch: String,
    /// Image variant (`default`, `cloud`); the CLI's default is `default`.
    pub variant: String,
}

/// Pulls the newest matching build as image `name` (default: `DIST-RELEASE`).
pub fn pull_lxc(
    store: &ImageStore,
    req: &LxcRequest,
    name: Option<&str>,
    opts: &PullOptions,
) -> Result<ImageInfo, LxcError> {
    let mut base = req.server.trim_end_matches('/').to_owned();
    base.push('/');
    let server = Url::parse(&base)
        .map_err(|e| LxcError::BadServer { url: req.server.clone(), reason: e.to_string() })?;
    if server.scheme() != "http" && server.scheme() != "https" {
        return Err(LxcError::BadServer {
            url: req.server.clone(),
            reason: "the scheme must be http or https".into(),
        });
    }
    let name = match name {
        Some(n) => n.to_owned(),
        None => {
            let n = names::cleanup(&format!("{}-{}", req.dist, req.release));
            names::validate(&n).map_err(|_| LxcError::NoName(format!("{}-{}", req.dist, req.release)))?;
            n
        }
    };
    // Fail before any download when the name is taken or bad.
    store.ensure_absent(&name).map_err(PullError::from)?;
    let index_url = server
        .join("meta/1.0/index-system")
        .map_err(|e| LxcError::BadServer { url: req.server.clone(), reason: e.to_string() })?;
    let index_err = |e: PullError| LxcError::Index { url: index_url.to_string(), source: Box::new(e) };
    let client = pull::client()?;
    let resp = client
        .get(index_url.clone())
        .send()
        .map_err(|e| index_err(PullError::Request { url: index_url.to_string(), detail: pull::chain(&e) }))?;
    if !resp.status().is_success() {
        return Err(index_err(PullError::Status { url: index_url.to_string(), status: resp.status() }));
    }
    let text = resp.text().map_err(|e| {
        index_err(PullError::Transfer { url: index_url.to_string(), got: 0, detail: pull::chain(&e) })
    })?;
    let entries = parse_index(&text);
    let entry = pick(&entries, &req.dist, &req.release, &req.arch, &req.variant).ok_or_else(|| {
        LxcError::NotFound {
            server: req.server.clone(),
            dist: req.dist.clone(),
            release: req.release.clone(),
            arch: req.arch.clone(),
            variant: req.variant.clone(),
        }
    })?;
    // The path is absolute on the server; it must not take us to another host.
    if !entry.path.starts_with('/') || entry.path.starts_with("//") || entry.path.contains("..") {
        return Err(LxcError::BadPath(entry.path.clone()));
    }
    let dir = format!("{}/", entry.path.trim_end_matches('/'));
    let build =
        server.join(dir.trim_start_matches('/')).map_err(|_| LxcError::BadPath(entry.path.clone()))?;
    let rootfs = build.join("rootfs.tar.xz").map_err(|_| LxcError::BadPath(entry.path.clone()))?;
    let sums = match opts.verify {
        Verify::No => Checksums::None,
        Verify::Checksum => Checksums::File {
            url: build.join("SHA256SUMS").map_err(|_| LxcError::BadPath(entry.path.clone()))?,
            name: "rootfs.tar.xz".into(),
        },
    };
    tracing::info!(
        "pulling {} {} {} ({}) built {}",
        entry.dist,
        entry.release,
        entry.arch,
        entry.variant,
        entry.timestamp
    );
    Ok(pull::pull_with(store, &rootfs, &name, &sums, opts)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_newest_matching_build() {
        let idx = "debian;bookworm;amd64;default;20240101_05:24;/images/debian/bookworm/amd64/default/20240101_05:24/\n\
                   debian;bookworm;amd64;default;20240301_05:24;/images/debian/bookworm/amd64/default/20240301_05:24/\n\
                   debian;bookworm;arm64;default;20240401_05:24;/images/debian/bookworm/arm64/default/20240401_05:24/\n\
                   debian;bookworm;amd64;cloud;20240501_05:24;/images/debian/bookworm/amd64/cloud/20240501_05:24/\n\
                   broken;line\n";
        let e = parse_index(idx);
        assert_eq!(e.len(), 4);
        let p = pick(&e, "debian", "bookworm", "amd64", "default").unwrap();
        assert_eq!(p.timestamp, "20240301_05:24");
        assert_eq!(pick(&e, "debian", "bookworm", "amd64", "cloud").unwrap().timestamp, "20240501_05:24");
        assert!(pick(&e, "debian", "trixie", "amd64", "default").is_none());
    }
}
