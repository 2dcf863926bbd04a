//! Registry authentication: `WWW-Authenticate` challenges and the credential files podman,
//! skopeo and docker write (`auth.json`, `~/.docker/config.json`).

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;

use super::OciError;

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Bearer realm=...,service=...,scope=...`: get a token from the realm.
    Bearer {
        /// The token endpoint.
        realm: String,
        /// The service parameter to pass on.
        service: Option<String>,
        /// The scope the registry asks for, if it says.
        scope: Option<String>,
    },
    /// `Basic realm=...`: send the credentials with every request.
    Basic,
}

/// Parses the first challenge mctl can answer from a `WWW-Authenticate` value.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(char::is_whitespace).unwrap_or((header, ""));
    let params = parse_params(rest);
    let get = |k: &str| params.iter().find(|(key, _)| key.eq_ignore_ascii_case(k)).map(|(_, v)| v.clone());
    if scheme.eq_ignore_ascii_case("bearer") {
        Some(Challenge::Bearer { realm: get("realm")?, service: get("service"), scope: get("scope") })
    } else if scheme.eq_ignore_ascii_case("basic") {
        Some(Challenge::Basic)
    } else {
        None
    }
}

/// `key=value` and `key="quoted, \"value\""` pairs, comma-separated.
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ',')).collect();
        if key.is_empty() {
            break;
        }
        if chars.next() != Some('=') {
            continue;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect::<String>().trim().to_owned();
        }
        out.push((key.trim().to_owned(), value));
    }
    out
}

/// A user name and password (or token) for a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
    /// The file they came from.
    pub source: PathBuf,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the password: errors and logs may show this.
        f.debug_struct("Credentials").field("username", &self.username).field("source", &self.source).finish()
    }
}

/// The credential files, in the order podman searches them: `$REGISTRY_AUTH_FILE`,
/// `$XDG_RUNTIME_DIR/containers/auth.json`, `$XDG_CONFIG_HOME/containers/auth.json` (default
/// `~/.config`), then docker's `$DOCKER_CONFIG/config.json` (default `~/.docker`).
pub fn default_auth_files() -> Vec<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let home = env("HOME");
    let mut v = Vec::new();
    v.extend(env("REGISTRY_AUTH_FILE"));
    v.extend(env("XDG_RUNTIME_DIR").map(|d| d.join("containers/auth.json")));
    match env("XDG_CONFIG_HOME") {
        Some(d) => v.push(d.join("containers/auth.json")),
        None => v.extend(home.as_ref().map(|h| h.join(".config/containers/auth.json"))),
    }
    match env("DOCKER_CONFIG") {
        Some(d) => v.push(d.join("config.json")),
        None => v.extend(home.as_ref().map(|h| h.join(".docker/config.json"))),
    }
    v
}

/// The key an `auths` entry is for, without scheme and Docker Hub's legacy spellings.
fn normalize_key(k: &str) -> String {
    let k = k.strip_prefix("https://").or_else(|| k.strip_prefix("http://")).unwrap_or(k);
    let k = k.trim_end_matches('/');
    let k = k.strip_suffix("/v1").or_else(|| k.strip_suffix("/v2")).unwrap_or(k);
    match k {
        "index.docker.io" | "registry-1.docker.io" => super::reference::DOCKER_HUB.to_owned(),
        k => k.to_owned(),
    }
}

/// Credentials for `registry/repository` from the first of `files` that has some: the
/// longest matching `registry/namespace` key wins, then the registry itself.
pub fn lookup(files: &[PathBuf], registry: &str, repository: &str) -> Result<Option<Credentials>, OciError> {
    let mut wanted = vec![format!("{registry}/{repository}")];
    let mut path = repository;
    while let Some((head, _)) = path.rsplit_once('/') {
        wanted.push(format!("{registry}/{head}"));
        path = head;
    }
    wanted.push(registry.to_owned());
    for f in files {
        if let Some(c) = lookup_file(f, &wanted)? {
            return Ok(Some(c));
        }
    }
    Ok(None)
}

fn lookup_file(file: &Path, wanted: &[String]) -> Result<Option<Credentials>, OciError> {
    let data = match std::fs::read(file) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(OciError::io("cannot read the credentials file", file)(e)),
    };
    let bad = |d: String| OciError::invalid(format!("credentials file {}", file.display()), d);
    let v: serde_json::Value = serde_json::from_slice(&data).map_err(|e| bad(e.to_string()))?;
    let Some(auths) = v.get("auths").and_then(|a| a.as_object()) else { return Ok(None) };
    for w in wanted {
        for (k, entry) in auths {
            if normalize_key(k) != *w {
                continue;
            }
            if let Some(auth) = entry.get("auth").and_then(|a| a.as_str()).filter(|a| !a.is_empty()) {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .map_err(|e| bad(format!("the entry for {k} is not base64: {e}")))?;
                let text =
                    String::from_utf8(raw).map_err(|_| bad(format!("the entry for {k} is not UTF-8")))?;
                let (u, p) = text
                    .split_once(':')
                    .ok_or_else(|| bad(format!("the entry for {k} is not user:password")))?;
                return Ok(Some(Credentials {
                    username: u.to_owned(),
                    password: p.to_owned(),
                    source: file.to_owned(),
                }));
            }
            if entry.get("identitytoken").is_some() {
                tracing::warn!("{}: identity tokens (for {k}) are not supported; skipping", file.display());
            }
        }
    }
    if v.get("credsStore").is_some() || v.get("credHelpers").is_some() {
        tracing::debug!("{}: credential helpers are not supported", file.display());
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.example/token",service="reg, \"x\"",scope="repository:a/b:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("reg, \"x\"".into()),
                scope: Some("repository:a/b:pull".into()),
            })
        );
        assert_eq!(parse_challenge("Basic realm=registry"), Some(Challenge::Basic));
        assert_eq!(parse_challenge("Bearer service=x"), None);
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn credential_files() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("auth.json");
        let enc = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        std::fs::write(
            &f,
            serde_json::json!({"auths": {
                "reg.example:5000": {"auth": enc("all:one")},
                "reg.example:5000/team": {"auth": enc("team:two")},
                "https://index.docker.io/v1/": {"auth": enc("hub:three")},
            }})
            .to_string(),
        )
        .unwrap();
        let files = vec![d.path().join("missing.json"), f];
        let user = |r: &str, repo: &str| lookup(&files, r, repo).unwrap().map(|c| c.username);
        assert_eq!(user("reg.example:5000", "team/app").as_deref(), Some("team"));
        assert_eq!(user("reg.example:5000", "other/app").as_deref(), Some("all"));
        assert_eq!(user("docker.io", "library/debian").as_deref(), Some("hub"));
        assert_eq!(user("elsewhere", "x"), None);
        let c = lookup(&files, "reg.example:5000", "team/app").unwrap().unwrap();
        assert!(!format!("{c:?}").contains("two"), "the password shows in Debug");
    }
}
