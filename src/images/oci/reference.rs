//! Image references: `[docker://]REGISTRY/REPO[:TAG][@sha256:DIGEST]`, with Docker's
//! defaults (a first component without a dot or a port, other than `localhost`, is a Docker
//! Hub repository; one-component Hub names are under `library/`; no tag means `latest`).

use std::fmt;

use super::OciError;
use super::digest::Digest;

/// The registry Docker Hub names resolve to.
pub const DOCKER_HUB: &str = "docker.io";
/// Where Docker Hub's API really is.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]` as written (`docker.io` for Hub names).
    pub registry: String,
    /// The repository path (`library/debian`).
    pub repository: String,
    /// The tag, unless the reference is by digest only.
    pub tag: Option<String>,
    /// The digest, when given.
    pub digest: Option<Digest>,
}

impl Reference {
    /// Parses `s`; a reference with neither tag nor digest gets the tag `latest`.
    pub fn parse(s: &str) -> Result<Self, OciError> {
        let bad =
            |reason: &str| OciError::BadReference { reference: s.to_owned(), reason: reason.to_owned() };
        let rest = s.strip_prefix("docker://").unwrap_or(s);
        if rest.is_empty() {
            return Err(bad("it is empty"));
        }
        let (rest, digest) = match rest.split_once('@') {
            Some((r, d)) => (r, Some(Digest::parse(d).map_err(|e| bad(&e))?)),
            None => (rest, None),
        };
        // A tag is after the last ':' that comes after the last '/' (a port has a '/' after it).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(rest[last_slash + i + 1..].to_owned())),
            None => (rest, None),
        };
        if let Some(t) = &tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
                && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
            if !ok {
                return Err(bad(&format!(
                    "'{t}' is not a valid tag (letters, digits, '_', '.', '-'; at most 128)"
                )));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, path)) if first.contains('.') || first.contains(':') || first == "localhost" => {
                (first.to_owned(), path.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if !valid_host(&registry) {
            return Err(bad(&format!("'{registry}' is not a valid registry host[:port]")));
        }
        if !valid_repository(&repository) {
            return Err(bad(&format!(
                "'{repository}' is not a valid repository (lowercase letters, digits and separators ._- between them, components joined by '/')"
            )));
        }
        let tag = if tag.is_none() && digest.is_none() { Some("latest".to_owned()) } else { tag };
        Ok(Reference { registry, repository, tag, digest })
    }

    /// The host[:port] the API is reached at.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB { DOCKER_HUB_API } else { &self.registry }
    }

    /// What to ask the manifests endpoint for: the digest when known, else the tag.
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_owned(),
        }
    }

    /// The image name `pull-oci` derives: the repository's last component.
    pub fn default_name(&self) -> Option<String> {
        let last = self.repository.rsplit('/').next()?;
        let name = crate::names::cleanup(last);
        crate::names::validate(&name).is_ok().then_some(name)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn valid_host(h: &str) -> bool {
    let (host, port) = match h.rsplit_once(':') {
        Some((host, port)) if !host.contains(']') || host.ends_with(']') => (host, Some(port)),
        _ => (h, None),
    };
    if port.is_some_and(|p| p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit())) {
        return false;
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|x| x.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !host.is_empty()
        && host.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The distribution spec's `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`.
fn valid_repository(r: &str) -> bool {
    r.len() <= 255
        && r.split('/').all(|c| {
            let b = c.as_bytes();
            if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
                return false;
            }
            let mut prev_sep = false;
            let mut underscores = 0;
            for &x in b {
                if x.is_ascii_lowercase() || x.is_ascii_digit() {
                    prev_sep = false;
                    underscores = 0;
                } else if x == b'.' || x == b'-' || x == b'_' {
                    if x == b'_' {
                        underscores += 1;
                        if underscores > 2 {
                            return false;
                        }
                    }
                    if prev_sep && x == b'.' {
                        return false;
                    }
                    prev_sep = true;
                } else {
                    return false;
                }
            }
            true
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Reference {
        Reference::parse(s).unwrap()
    }

    #[test]
    fn references() {
        let r = p("debian");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("docker.io", "library/debian", Some("latest"))
        );
        assert_eq!(r.api_host(), "registry-1.docker.io");
        let r = p("docker://127.0.0.1:5000/oci/busy:v1");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "oci/busy", Some("v1"))
        );
        assert_eq!(r.default_name().as_deref(), Some("busy"));
        let d = format!("sha256:{}", "0".repeat(64));
        let r = p(&format!("localhost/x@{d}"));
        assert_eq!((r.registry.as_str(), r.tag.clone(), r.manifest_ref()), ("localhost", None, d.clone()));
        let r = p(&format!("quay.io/a/b:t@{d}"));
        assert_eq!((r.tag.as_deref(), r.manifest_ref()), (Some("t"), d.clone()));
        assert_eq!(r.to_string(), format!("quay.io/a/b:t@{d}"));
        assert_eq!(p("user/app").repository, "user/app");
        assert_eq!(p("[::1]:5000/a").registry, "[::1]:5000");
        for bad in [
            "",
            "UPPER/x",
            "host:5000/a:",
            "a/../b",
            "a//b",
            "host/a:bad tag",
            "x@sha256:12",
            "h:99999999/a",
            "a/b/",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad} was accepted");
        }
    }
}
