//! A client of the OCI distribution API (registry v2): `/v2/` ping, anonymous access, Basic
//! auth, and bearer tokens got through the `WWW-Authenticate` challenge; manifests, blobs
//! (with HTTP Range), uploads with cross-repository mounts, manifest pushes.
//!
//! HTTPS always, except for loopback registries (tried after HTTPS, as docker does for
//! `localhost`) and with `--tls-verify=no` (which also accepts any certificate). Credentials
//! go to a token server only over HTTPS, or plain HTTP under the same exceptions.

use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, LOCATION, RANGE, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode, Url};

use super::OciError;
use super::auth::{self, Challenge, Credentials};
use super::digest::Digest;
use super::manifest::MANIFEST_ACCEPT;
use crate::images::pull::chain;

/// The most a manifest, index or token answer may weigh.
pub const MANIFEST_LIMIT: u64 = 4 << 20;

/// How to reach a registry.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Check TLS certificates and refuse plain HTTP to non-loopback hosts.
    pub tls_verify: bool,
    /// Credential files to search (see [`auth::default_auth_files`]).
    pub auth_files: Vec<PathBuf>,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        Self { tls_verify: true, auth_files: auth::default_auth_files() }
    }
}

/// A connection to one registry, for a set of repository scopes.
#[derive(Debug)]
pub struct Registry {
    /// `host[:port]` as the user wrote it (for messages and credentials).
    pub name: String,
    base: Url,
    client: Client,
    insecure_ok: bool,
    creds: Option<Credentials>,
    challenge: Mutex<Option<Challenge>>,
    /// The Authorization header value in use.
    authorization: Mutex<Option<String>>,
    scopes: Vec<String>,
}

/// Whether `host` (without port) is a loopback name or address.
pub fn is_loopback(host_port: &str) -> bool {
    let host = match host_port.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !h.is_empty() => h,
        _ => host_port,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|a| a.is_loopback())
}

/// `pull` on `repo`.
pub fn pull_scope(repo: &str) -> String {
    format!("repository:{repo}:pull")
}

/// `pull,push` on `repo`.
pub fn push_scope(repo: &str) -> String {
    format!("repository:{repo}:pull,push")
}

/// The registry's error codes and messages from an error body, if it has the usual form.
fn error_codes(body: &[u8]) -> Vec<(String, String)> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else { return Vec::new() };
    v.get("errors")
        .and_then(|e| e.as_array())
        .map(|a| {
            a.iter()
                .map(|e| {
                    let s =
                        |k: &str| e.get(k).and_then(|x| x.as_str()).unwrap_or("").chars().take(200).collect();
                    (s("code"), s("message"))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn hint_for(status: StatusCode, codes: &[(String, String)]) -> &'static str {
    let has = |c: &str| codes.iter().any(|(code, _)| code == c);
    if has("NAME_UNKNOWN") {
        "the repository does not exist on this registry: check its name"
    } else if has("MANIFEST_UNKNOWN") {
        "no such tag or digest in the repository: check the tag (skopeo list-tags lists them)"
    } else if has("BLOB_UNKNOWN") {
        "the registry does not have a blob the image needs"
    } else if has("DENIED")
        || has("UNAUTHORIZED")
        || status == StatusCode::UNAUTHORIZED
        || status == StatusCode::FORBIDDEN
    {
        "access denied: log in (podman login or docker login write the credentials mctl reads) or check your rights"
    } else if has("TOOMANYREQUESTS") || status == StatusCode::TOO_MANY_REQUESTS {
        "the registry limits requests: wait and try again"
    } else if status == StatusCode::NOT_FOUND {
        "not found: check the registry, repository and tag"
    } else if status.is_server_error() {
        "the registry failed: try again later"
    } else {
        ""
    }
}

/// A response turned into an error naming the status, the registry's codes and what to do.
pub fn status_error(step: &'static str, url: &Url, resp: Response) -> OciError {
    let status = resp.status();
    let mut body = Vec::new();
    let _ = resp.take(64 << 10).read_to_end(&mut body);
    let codes = error_codes(&body);
    let mut detail = format!("HTTP {status}");
    for (c, m) in &codes {
        detail.push_str(&format!(" ({c}: {m})"));
    }
    let hint = hint_for(status, &codes);
    if !hint.is_empty() {
        detail.push_str(": ");
        detail.push_str(hint);
    }
    OciError::Registry { step, url: url.to_string(), detail }
}

fn request_error(step: &'static str, url: &Url, e: &reqwest::Error) -> OciError {
    OciError::Request { step, url: url.to_string(), detail: chain(e) }
}

/// A manifest's bytes, its Content-Type and the digest the registry claims for it.
pub type FetchedManifest = (Vec<u8>, Option<String>, Option<String>);

impl Registry {
    /// Connects to `registry` (its API at `api_host`) for `scopes`, answering the auth
    /// challenge the `/v2/` ping returns; credentials are those for `registry/cred_repo`.
    pub fn connect(
        registry: &str,
        api_host: &str,
        cred_repo: &str,
        scopes: Vec<String>,
        opts: &RegistryOptions,
    ) -> Result<Registry, OciError> {
        let insecure_ok = is_loopback(api_host) || !opts.tls_verify;
        let client = crate::images::http::client_builder()
            .tls_danger_accept_invalid_certs(!opts.tls_verify)
            .build()
            .map_err(|e| OciError::Request {
                step: "set up the HTTP client for",
                url: registry.to_owned(),
                detail: chain(&e),
            })?;
        let creds = auth::lookup(&opts.auth_files, registry, cred_repo)?;
        let mut reg = Registry {
            name: registry.to_owned(),
            base: Url::parse(&format!("https://{api_host}/")).map_err(|e| OciError::BadReference {
                reference: registry.to_owned(),
                reason: e.to_string(),
            })?,
            client,
            insecure_ok,
            creds,
            challenge: Mutex::new(None),
            authorization: Mutex::new(None),
            scopes,
        };
        reg.ping()?;
        Ok(reg)
    }

    /// `GET /v2/`: finds the scheme (HTTPS, or HTTP where allowed) and the auth challenge.
    fn ping(&mut self) -> Result<(), OciError> {
        let https = self.base.join("v2/").expect("a valid path");
        let resp = match self.client.get(https.clone()).send() {
            Ok(r) => r,
            Err(e) if self.insecure_ok && (e.is_connect() || e.is_request()) => {
                let mut http = self.base.clone();
                let _ = http.set_scheme("http");
                let url = http.join("v2/").expect("a valid path");
                match self.client.get(url.clone()).send() {
                    Ok(r) => {
                        self.base = http;
                        r
                    }
                    Err(e2) => {
                        return Err(OciError::Request {
                            step: "reaching the registry at",
                            url: url.to_string(),
                            detail: format!("{} (and over HTTPS: {})", chain(&e2), chain(&e)),
                        });
                    }
                }
            }
            Err(e) => {
                let mut err = request_error("reaching the registry at", &https, &e);
                if let OciError::Request { detail, .. } = &mut err
                    && !self.insecure_ok
                    && (e.is_connect() || e.is_request())
                {
                    detail.push_str(
                        " (plain HTTP is used only for loopback registries or with --tls-verify=no)",
                    );
                }
                return Err(err);
            }
        };
        let url = resp.url().clone();
        match resp.status() {
            s if s.is_success() => Ok(()),
            StatusCode::UNAUTHORIZED => {
                let ch = resp
                    .headers()
                    .get_all(WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .find_map(auth::parse_challenge)
                    .ok_or_else(|| OciError::Auth {
                        registry: self.name.clone(),
                        detail: format!(
                            "{url} asks for authentication mctl does not know (only Bearer and Basic)"
                        ),
                    })?;
                self.answer(&ch, None)?;
                *self.challenge.lock().unwrap_or_else(|e| e.into_inner()) = Some(ch);
                Ok(())
            }
            _ => Err(status_error("pinging the registry at", &url, resp)),
        }
    }

    /// Sets the Authorization header for challenge `ch`, asking a token server if needed;
    /// `extra_scope` is a scope the registry named in a later challenge.
    fn answer(&self, ch: &Challenge, extra_scope: Option<&str>) -> Result<(), OciError> {
        let value = match ch {
            Challenge::Basic => {
                let c = self.creds.as_ref().ok_or_else(|| self.login_needed())?;
                let raw = format!("{}:{}", c.username, c.password);
                use base64::Engine as _;
                format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
            }
            Challenge::Bearer { realm, service, .. } => {
                format!("Bearer {}", self.token(realm, service.as_deref(), extra_scope)?)
            }
        };
        *self.authorization.lock().unwrap_or_else(|e| e.into_inner()) = Some(value);
        Ok(())
    }

    fn login_needed(&self) -> OciError {
        OciError::Auth {
            registry: self.name.clone(),
            detail: "the registry wants credentials and none were found: log in with podman login or \
                     docker login (mctl reads $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json, \
                     ~/.config/containers/auth.json and ~/.docker/config.json), or give --authfile"
                .into(),
        }
    }

    /// A token from the token server `realm` for our scopes.
    fn token(
        &self,
        realm: &str,
        service: Option<&str>,
        extra_scope: Option<&str>,
    ) -> Result<String, OciError> {
        let auth_err = |detail: String| OciError::Auth { registry: self.name.clone(), detail };
        let mut url = Url::parse(realm)
            .map_err(|e| auth_err(format!("the token realm '{realm}' is not a URL: {e}")))?;
        let realm_host = url.host_str().unwrap_or("").to_owned();
        match url.scheme() {
            "https" => {}
            "http" if self.insecure_ok || is_loopback(&realm_host) => {}
            s => {
                return Err(auth_err(format!(
                    "refusing the token realm {realm}: credentials and tokens go only over HTTPS ({s} is allowed only \
                     for loopback or with --tls-verify=no)"
                )));
            }
        }
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            for s in self.scopes.iter().map(String::as_str).chain(extra_scope) {
                q.append_pair("scope", s);
            }
        }
        let mut req = self.client.get(url.clone());
        if let Some(c) = &self.creds {
            req = req.basic_auth(&c.username, Some(&c.password));
        }
        let resp = req.send().map_err(|e| request_error("getting a token from", &url, &e))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let mut err = status_error("getting a token from", &url, resp);
            if let (OciError::Registry { detail, .. }, true) = (&mut err, status == StatusCode::UNAUTHORIZED)
            {
                match &self.creds {
                    Some(c) => detail.push_str(&format!(
                        " (the credentials of {} from {} were refused)",
                        c.username,
                        c.source.display()
                    )),
                    None => detail.push_str(" (anonymous access was refused: log in first)"),
                }
            }
            return Err(err);
        }
        let mut body = Vec::new();
        resp.take(MANIFEST_LIMIT).read_to_end(&mut body).map_err(|e| OciError::Request {
            step: "reading the token from",
            url: url.to_string(),
            detail: e.to_string(),
        })?;
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
            auth_err(format!("the token server {url} answered something that is not JSON: {e}"))
        })?;
        let token = v
            .get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| auth_err(format!("the token server {url} sent no usable token")))?;
        Ok(token.to_owned())
    }

    /// The URL of `path` below `/v2/`.
    pub fn url(&self, path: &str) -> Url {
        self.base.join(&format!("v2/{path}")).expect("registry paths are valid URLs")
    }

    /// Sends the request `build` makes (again after answering a new challenge on 401).
    pub fn send(
        &self,
        step: &'static str,
        url: &Url,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Response, OciError> {
        let mut retried = false;
        loop {
            let mut req = build();
            // Credentials only to the registry itself (an upload Location may be elsewhere).
            if url.host_str() == self.base.host_str()
                && url.port_or_known_default() == self.base.port_or_known_default()
                && let Some(a) = self.authorization.lock().unwrap_or_else(|e| e.into_inner()).clone()
            {
                req = req.header(AUTHORIZATION, a);
            }
            let resp = req.send().map_err(|e| request_error(step, url, &e))?;
            if resp.status() != StatusCode::UNAUTHORIZED || retried {
                return Ok(resp);
            }
            let Some(ch) = resp
                .headers()
                .get_all(WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(auth::parse_challenge)
            else {
                return Ok(resp);
            };
            let scope = match &ch {
                Challenge::Bearer { scope, .. } => scope.clone(),
                Challenge::Basic => None,
            };
            self.answer(&ch, scope.as_deref())?;
            retried = true;
        }
    }

    /// Fetches a manifest or index: its bytes, the Content-Type and the digest the registry
    /// claims for it (Docker-Content-Digest).
    pub fn get_manifest(&self, repo: &str, reference: &str) -> Result<FetchedManifest, OciError> {
        let url = self.url(&format!("{repo}/manifests/{reference}"));
        let resp = self.send("fetching the manifest", &url, || {
            self.client.get(url.clone()).header(ACCEPT, MANIFEST_ACCEPT)
        })?;
        if resp.status() == StatusCode::NOT_FOUND && !self.repository_exists(repo) {
            // Registries answer MANIFEST_UNKNOWN for a repository they never heard of too:
            // name the wrong part.
            return Err(OciError::Registry {
                step: "fetching the manifest",
                url: url.to_string(),
                detail: "HTTP 404 Not Found: the repository does not exist on this registry: check its name"
                    .into(),
            });
        }
        if !resp.status().is_success() {
            return Err(status_error("fetching the manifest", &url, resp));
        }
        let header = |h: &str| resp.headers().get(h).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let (ctype, claimed) = (header("content-type"), header("docker-content-digest"));
        let mut body = Vec::new();
        resp.take(MANIFEST_LIMIT + 1).read_to_end(&mut body).map_err(|e| OciError::Request {
            step: "reading the manifest",
            url: url.to_string(),
            detail: e.to_string(),
        })?;
        if body.len() as u64 > MANIFEST_LIMIT {
            return Err(OciError::Size {
                what: url.to_string(),
                detail: format!("a manifest larger than {MANIFEST_LIMIT} bytes"),
            });
        }
        Ok((body, ctype, claimed))
    }

    /// Whether the registry knows `repo` (its tag list is there); `true` when that cannot be
    /// told, so that only a clear answer changes an error message.
    fn repository_exists(&self, repo: &str) -> bool {
        let url = self.url(&format!("{repo}/tags/list"));
        match self.send("listing the tags", &url, || self.client.get(url.clone())) {
            Ok(resp) => resp.status() != StatusCode::NOT_FOUND,
            Err(_) => true,
        }
    }

    /// `GET` blob `d`, from byte `from` on (a Range request when not 0). The caller checks
    /// whether the answer is 206 (the rest) or 200 (everything).
    pub fn get_blob(&self, repo: &str, d: &Digest, from: u64) -> Result<(Url, Response), OciError> {
        let url = self.url(&format!("{repo}/blobs/{d}"));
        let resp = self.send("downloading", &url, || {
            let r = self.client.get(url.clone());
            if from > 0 { r.header(RANGE, format!("bytes={from}-")) } else { r }
        })?;
        let s = resp.status();
        if !s.is_success() && s != StatusCode::RANGE_NOT_SATISFIABLE {
            return Err(status_error("downloading", &url, resp));
        }
        Ok((url, resp))
    }

    /// A small blob (a configuration) whole, checked against its digest and size.
    pub fn get_small_blob(&self, repo: &str, d: &Digest, size: u64, limit: u64) -> Result<Vec<u8>, OciError> {
        let (url, resp) = self.get_blob(repo, d, 0)?;
        if size > limit {
            return Err(OciError::Size {
                what: url.to_string(),
                detail: format!("{size} bytes announced, more than the {limit} allowed"),
            });
        }
        let mut body = Vec::new();
        resp.take(size + 1).read_to_end(&mut body).map_err(|e| OciError::Request {
            step: "downloading",
            url: url.to_string(),
            detail: e.to_string(),
        })?;
        if body.len() as u64 != size {
            return Err(OciError::Size {
                what: url.to_string(),
                // At most size + 1: `take` stopped there.
                detail: format!("{} bytes, but the manifest says {size}", body.len()),
            });
        }
        let actual = Digest::of(&body);
        if &actual != d {
            return Err(OciError::DigestMismatch {
                what: url.to_string(),
                expected: d.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(body)
    }

    /// Whether the registry has blob `d` in `repo` (HEAD).
    pub fn has_blob(&self, repo: &str, d: &Digest) -> Result<bool, OciError> {
        let url = self.url(&format!("{repo}/blobs/{d}"));
        let resp = self.send("checking for", &url, || self.client.head(url.clone()))?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(status_error("checking for", &url, resp)),
        }
    }

    /// Starts an upload of `d` to `repo`, mounting it from `from` (a repository of the same
    /// registry) when given: `None` if the mount made it present, else the upload URL.
    pub fn start_upload(&self, repo: &str, d: &Digest, from: Option<&str>) -> Result<Option<Url>, OciError> {
        let mut url = self.url(&format!("{repo}/blobs/uploads/"));
        if let Some(src) = from {
            url.query_pairs_mut().append_pair("mount", d.as_str()).append_pair("from", src);
        }
        let resp = self.send("starting an upload to", &url, || {
            self.client.request(Method::POST, url.clone()).header("content-length", "0")
        })?;
        match resp.status() {
            StatusCode::CREATED if from.is_some() => Ok(None),
            StatusCode::ACCEPTED => {
                let loc = resp
                    .headers()
                    .get(LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| OciError::invalid(&url, "the registry gave no upload location"))?;
                let loc = url
                    .join(loc)
                    .map_err(|e| OciError::invalid(&url, format!("bad upload location '{loc}': {e}")))?;
                Ok(Some(loc))
            }
            _ => Err(status_error("starting an upload to", &url, resp)),
        }
    }

    /// Uploads the file `path` (blob `d`) in one request to the upload URL `location`.
    pub fn finish_upload(&self, location: &Url, d: &Digest, path: &Path) -> Result<(), OciError> {
        let mut url = location.clone();
        url.query_pairs_mut().append_pair("digest", d.as_str());
        let resp = self.send("uploading to", &url, || {
            let body = match std::fs::File::open(path) {
                Ok(f) => reqwest::blocking::Body::from(f),
                Err(_) => reqwest::blocking::Body::from(Vec::new()),
            };
            self.client.put(url.clone()).header(CONTENT_TYPE, "application/octet-stream").body(body)
        })?;
        if resp.status() != StatusCode::CREATED && !resp.status().is_success() {
            return Err(status_error("uploading to", &url, resp));
        }
        Ok(())
    }

    /// Pushes a manifest under `reference` (a tag or its digest).
    pub fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Result<(), OciError> {
        let url = self.url(&format!("{repo}/manifests/{reference}"));
        let resp = self.send("pushing the manifest to", &url, || {
            self.client.put(url.clone()).header(CONTENT_TYPE, media_type).body(body.to_vec())
        })?;
        if !resp.status().is_success() {
            return Err(status_error("pushing the manifest to", &url, resp));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in ["127.0.0.1:5000", "localhost", "localhost:1", "[::1]:5000", "127.9.9.9"] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["example.com", "10.0.0.1:5000", "localhost.example", "[::2]:1"] {
            assert!(!is_loopback(h), "{h}");
        }
    }

    #[test]
    fn registry_errors_say_what_to_do() {
        let codes = error_codes(br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#);
        assert_eq!(codes, vec![("MANIFEST_UNKNOWN".to_owned(), "manifest unknown".to_owned())]);
        assert!(hint_for(StatusCode::NOT_FOUND, &codes).contains("no such tag"));
        assert!(hint_for(StatusCode::UNAUTHORIZED, &[]).contains("log in"));
    }
}
