//! Fixtures of the OCI tests: Debian's distribution registry (`docker-registry`) on loopback
//! with its storage in a scratch directory, a filtering HTTP proxy in front of it (counts
//! requests, corrupts or cuts a body, demands a bearer token from a token endpoint of its
//! own), images built with umoci from the busybox fixture, and raw pushes of hand-made
//! (hostile) images.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// A distribution registry on 127.0.0.1, stopped (and its storage removed with the scratch
/// directory) when dropped, also when a test fails.
pub struct Registry {
    child: Child,
    /// host:port.
    pub addr: String,
    pub log: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Registry {
    pub fn start(dir: &Path) -> Registry {
        for _ in 0..5 {
            let port = free_port();
            let addr = format!("127.0.0.1:{port}");
            let storage = dir.join("registry-storage");
            std::fs::create_dir_all(&storage).unwrap();
            let config = dir.join("registry.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n  secret: mctl-tests\n",
                    storage.display()
                ),
            )
            .unwrap();
            let log = dir.join("registry.log");
            let child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
                .stderr(Stdio::from(std::fs::File::options().append(true).open(&log).unwrap()))
                .spawn()
                .expect("start docker-registry (apt install docker-registry)");
            let mut r = Registry { child, addr, log };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if r.child.try_wait().unwrap().is_some() {
                    break;
                }
                if http_get(&r.addr, "/v2/").is_some_and(|(s, _)| s == 200) {
                    return r;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            // The port was taken meanwhile, or the registry is slow: try another.
            let _ = r.child.kill();
        }
        panic!("docker-registry did not start");
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain GET: status and body.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut r = BufReader::new(s);
    let (status, _, body) = read_response(&mut r, false).ok()?;
    Some((status, body))
}

/// One request the proxy saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub status: u16,
}

/// What the proxy does besides forwarding.
#[derive(Debug, Default)]
pub struct Rules {
    /// Flip a byte in the body of 200 answers to paths ending in this.
    pub corrupt: Option<String>,
    /// Send only this many body bytes of the next answer to paths ending in this, then close.
    pub cut: Option<(String, usize)>,
    /// Demand `Bearer <token>`, given by /token for these Basic credentials.
    pub token: Option<TokenAuth>,
}

#[derive(Debug, Clone)]
pub struct TokenAuth {
    pub user: String,
    pub password: String,
    pub token: String,
}

struct ProxyState {
    upstream: String,
    addr: String,
    rules: Mutex<Rules>,
    seen: Mutex<Vec<Seen>>,
    /// Queries the token endpoint got, and whether their credentials were right.
    token_requests: Mutex<Vec<(String, bool)>>,
}

/// An HTTP/1.1 proxy on 127.0.0.1 in front of `upstream`; one request per connection.
pub struct Proxy {
    pub addr: String,
    state: Arc<ProxyState>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Proxy {
    pub fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(ProxyState {
            upstream: upstream.to_owned(),
            addr: addr.clone(),
            rules: Mutex::new(Rules::default()),
            seen: Mutex::new(Vec::new()),
            token_requests: Mutex::new(Vec::new()),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || {
                    let _ = handle(&st, conn);
                });
            }
        });
        Proxy { addr, state, stop, thread: Some(thread) }
    }

    pub fn rules(&self) -> std::sync::MutexGuard<'_, Rules> {
        self.state.rules.lock().unwrap()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.state.seen.lock().unwrap().clear();
    }

    pub fn token_requests(&self) -> Vec<(String, bool)> {
        self.state.token_requests.lock().unwrap().clone()
    }

    /// GETs of blobs (path ends with the digest) seen, in order.
    pub fn blob_gets(&self) -> Vec<String> {
        self.seen()
            .into_iter()
            .filter(|s| s.method == "GET" && s.path.contains("/blobs/sha256:"))
            .map(|s| s.path.rsplit('/').next().unwrap().to_owned())
            .collect()
    }

    /// GETs of manifests seen.
    pub fn manifest_gets(&self) -> Vec<String> {
        self.seen()
            .into_iter()
            .filter(|s| s.method == "GET" && s.path.contains("/manifests/"))
            .map(|s| s.path)
            .collect()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_head(r: &mut impl BufRead) -> std::io::Result<(String, Vec<(String, String)>)> {
    let mut first = String::new();
    r.read_line(&mut first)?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    Ok((first.trim_end().to_owned(), headers))
}

fn header<'a>(h: &'a [(String, String)], k: &str) -> Option<&'a str> {
    h.iter().find(|(key, _)| key.eq_ignore_ascii_case(k)).map(|(_, v)| v.as_str())
}

/// Status, headers (without framing ones) and body of a response.
/// Status, headers and body.
type Response = (u16, Vec<(String, String)>, Vec<u8>);

fn read_response(r: &mut impl BufRead, head_only: bool) -> std::io::Result<Response> {
    let (first, headers) = read_head(r)?;
    let status: u16 = first.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut body = Vec::new();
    if !head_only && status != 204 && status != 304 {
        if header(&headers, "transfer-encoding").is_some_and(|t| t.contains("chunked")) {
            loop {
                let mut line = String::new();
                r.read_line(&mut line)?;
                let n = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
                let mut chunk = vec![0u8; n + 2];
                r.read_exact(&mut chunk)?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else if let Some(n) = header(&headers, "content-length").and_then(|v| v.parse::<usize>().ok()) {
            body.resize(n, 0);
            r.read_exact(&mut body)?;
        } else {
            r.read_to_end(&mut body)?;
        }
    }
    let headers = headers
        .into_iter()
        .filter(|(k, _)| {
            !["transfer-encoding", "connection", "content-length"].contains(&k.to_ascii_lowercase().as_str())
        })
        .collect();
    Ok((status, headers, body))
}

fn respond(
    out: &mut TcpStream,
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
    send: Option<usize>,
) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status} X\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n", body.len()));
    out.write_all(head.as_bytes())?;
    out.write_all(&body[..send.unwrap_or(body.len()).min(body.len())])?;
    out.flush()?;
    let _ = out.shutdown(Shutdown::Both);
    Ok(())
}

fn handle(st: &ProxyState, conn: TcpStream) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut out = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    let (first, headers) = read_head(&mut r)?;
    let mut parts = first.split_whitespace();
    let (method, path) = (parts.next().unwrap_or("").to_owned(), parts.next().unwrap_or("/").to_owned());
    let mut body = vec![0u8; header(&headers, "content-length").and_then(|v| v.parse().ok()).unwrap_or(0)];
    r.read_exact(&mut body)?;
    let record = |status: u16| {
        st.seen.lock().unwrap().push(Seen {
            method: method.clone(),
            path: path.clone(),
            range: header(&headers, "range").map(str::to_owned),
            status,
        })
    };
    let token = st.rules.lock().unwrap().token.clone();
    if let Some(t) = &token {
        if path.starts_with("/token") {
            use base64::Engine as _;
            let good = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", t.user, t.password))
            );
            let ok = header(&headers, "authorization") == Some(good.as_str());
            st.token_requests.lock().unwrap().push((path.clone(), ok));
            record(if ok { 200 } else { 401 });
            return if ok {
                let b = format!("{{\"token\":\"{}\",\"expires_in\":300}}", t.token);
                respond(
                    &mut out,
                    200,
                    &[("Content-Type".into(), "application/json".into())],
                    b.as_bytes(),
                    None,
                )
            } else {
                respond(
                    &mut out,
                    401,
                    &[],
                    b"{\"errors\":[{\"code\":\"UNAUTHORIZED\",\"message\":\"bad credentials\"}]}",
                    None,
                )
            };
        }
        if header(&headers, "authorization") != Some(format!("Bearer {}", t.token).as_str()) {
            let repo = path
                .strip_prefix("/v2/")
                .and_then(|p| p.split("/manifests/").next())
                .and_then(|p| p.split("/blobs/").next());
            let scope = match repo {
                Some(r) if !r.is_empty() => format!(",scope=\"repository:{r}:pull\""),
                _ => String::new(),
            };
            record(401);
            let challenge = format!("Bearer realm=\"http://{}/token\",service=\"oci-test\"{scope}", st.addr);
            return respond(
                &mut out,
                401,
                &[("WWW-Authenticate".into(), challenge)],
                b"{\"errors\":[{\"code\":\"UNAUTHORIZED\",\"message\":\"token needed\"}]}",
                None,
            );
        }
    }
    // Forward.
    let mut up = TcpStream::connect(&st.upstream)?;
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    for (k, v) in &headers {
        if !["connection", "authorization"].contains(&k.to_ascii_lowercase().as_str()) {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    req.push_str("Connection: close\r\n\r\n");
    up.write_all(req.as_bytes())?;
    up.write_all(&body)?;
    let mut ur = BufReader::new(up);
    let (status, rheaders, mut rbody) = read_response(&mut ur, method == "HEAD")?;
    record(status);
    let mut send = None;
    {
        let mut rules = st.rules.lock().unwrap();
        if status == 200
            && method == "GET"
            && rules.corrupt.as_ref().is_some_and(|c| path.ends_with(c.as_str()))
            && !rbody.is_empty()
        {
            let i = rbody.len() / 2;
            rbody[i] ^= 0x40;
        }
        if method == "GET" && rules.cut.as_ref().is_some_and(|(p, _)| path.ends_with(p.as_str())) {
            send = rules.cut.take().map(|(_, n)| n);
        }
    }
    if method == "HEAD" {
        // Keep the length the registry announced.
        let mut head = format!("HTTP/1.1 {status} X\r\n");
        for (k, v) in &rheaders {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("Connection: close\r\n\r\n");
        out.write_all(head.as_bytes())?;
        let _ = out.shutdown(Shutdown::Both);
        return Ok(());
    }
    respond(&mut out, status, &rheaders, &rbody, send)
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn run(cmd: &mut Command) -> String {
    let o = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(o.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Builds, with umoci, the OCI layout `<dir>/layout` holding
/// - `v1`: the busybox tree plus `/etc/doomed` in a first layer, and a second layer that
///   deletes `/etc/doomed`, replaces `/opt/gone` (a directory) and adds `/etc/added`;
///   Entrypoint `/bin/sh -c`, Cmd printing `$GREETING` and the working directory, Env
///   `GREETING=hi`, WorkingDir `/tmp`;
/// - `v2`: v1 plus a third layer adding `/etc/second`.
pub fn build_images(dir: &Path, busybox: &Path) -> PathBuf {
    let layout = dir.join("layout");
    let l = |tag: &str| format!("{}:{tag}", layout.display());
    run(Command::new("umoci").arg("init").arg("--layout").arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &l("v1")]));
    let unpack = |tag: &str, b: &Path| run(Command::new("umoci").args(["unpack", "--image", &l(tag)]).arg(b));
    let repack = |tag: &str, b: &Path| run(Command::new("umoci").args(["repack", "--image", &l(tag)]).arg(b));
    let b1 = dir.join("bundle1");
    unpack("v1", &b1);
    run(Command::new("cp").arg("-a").arg(format!("{}/.", busybox.display())).arg(b1.join("rootfs")));
    std::fs::write(b1.join("rootfs/etc/doomed"), "doomed\n").unwrap();
    std::fs::create_dir_all(b1.join("rootfs/opt/gone/sub")).unwrap();
    std::fs::write(b1.join("rootfs/opt/gone/sub/file"), "x\n").unwrap();
    repack("v1", &b1);
    let b2 = dir.join("bundle2");
    unpack("v1", &b2);
    std::fs::remove_file(b2.join("rootfs/etc/doomed")).unwrap();
    std::fs::remove_dir_all(b2.join("rootfs/opt/gone")).unwrap();
    std::fs::write(b2.join("rootfs/etc/added"), "hello\n").unwrap();
    repack("v1", &b2);
    run(Command::new("umoci").args([
        "config",
        "--image",
        &l("v1"),
        "--config.entrypoint",
        "/bin/sh",
        "--config.entrypoint",
        "-c",
        "--config.cmd",
        "echo \"$GREETING from $PWD\"",
        "--config.env",
        "GREETING=hi",
        "--config.workingdir",
        "/tmp",
        "--config.label",
        "org.example.test=yes",
    ]));
    let b3 = dir.join("bundle3");
    unpack("v1", &b3);
    std::fs::write(b3.join("rootfs/etc/second"), "second\n").unwrap();
    repack("v2", &b3);
    for b in [b1, b2, b3] {
        let _ = std::fs::remove_dir_all(b);
    }
    layout
}

/// `umoci unpack` of `tag` into `dest`: the reference tree.
pub fn umoci_unpack(layout: &Path, tag: &str, dest: &Path) -> PathBuf {
    run(Command::new("umoci").args(["unpack", "--image", &format!("{}:{tag}", layout.display())]).arg(dest));
    dest.join("rootfs")
}

/// `skopeo copy SRC DST` (no TLS anywhere).
pub fn skopeo_copy(src: &str, dst: &str) {
    run(Command::new("skopeo").args(["copy", "--src-tls-verify=false", "--dest-tls-verify=false", src, dst]));
}

/// `skopeo inspect [--raw|--config] docker://...` as JSON.
pub fn skopeo_inspect(args: &[&str]) -> serde_json::Value {
    let out = run(Command::new("skopeo").arg("inspect").args(args));
    serde_json::from_str(&out).unwrap()
}

/// Pushes a hand-made image straight through the registry API: `layers` are (media type,
/// blob), the configuration is `config`.
pub fn push_raw(addr: &str, repo: &str, tag: &str, config: &[u8], layers: &[(&str, Vec<u8>)]) -> String {
    let c = mctl::images::http::client_builder().build().unwrap();
    let put_blob = |data: &[u8]| -> String {
        let d = format!("sha256:{}", sha256_hex(data));
        let r = c.post(format!("http://{addr}/v2/{repo}/blobs/uploads/")).send().unwrap();
        assert_eq!(r.status().as_u16(), 202, "start upload");
        let loc = r.headers()["location"].to_str().unwrap().to_owned();
        let loc = if loc.starts_with("http") { loc } else { format!("http://{addr}{loc}") };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let r = c.put(format!("{loc}{sep}digest={d}")).body(data.to_vec()).send().unwrap();
        assert_eq!(r.status().as_u16(), 201, "finish upload: {:?}", r.text());
        d
    };
    let config_digest = put_blob(config);
    let mut ls = Vec::new();
    for (mt, data) in layers {
        let d = put_blob(data);
        ls.push(serde_json::json!({"mediaType": mt, "digest": d, "size": data.len()}));
    }
    let m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": ls,
    });
    let body = serde_json::to_vec(&m).unwrap();
    let r = c
        .put(format!("http://{addr}/v2/{repo}/manifests/{tag}"))
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(body.clone())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "push manifest: {:?}", r.text());
    format!("sha256:{}", sha256_hex(&body))
}

/// A minimal image configuration for `diff_ids`.
pub fn config_for(diff_ids: &[String]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap()
}

/// A tar written byte by byte, so that names a well-behaved writer refuses (`..`, absolute)
/// can be in it.
pub struct RawTar(pub Vec<u8>);

impl RawTar {
    pub fn new() -> Self {
        RawTar(Vec::new())
    }

    pub fn entry(
        mut self,
        name: &str,
        etype: tar::EntryType,
        link: &str,
        data: &[u8],
        claimed: Option<u64>,
    ) -> Self {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(etype);
        h.set_size(claimed.unwrap_or(data.len() as u64));
        h.set_mode(if etype == tar::EntryType::Directory { 0o755 } else { 0o644 });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_cksum();
        self.0.extend_from_slice(h.as_bytes());
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().div_ceil(512) * 512, 0);
        self
    }

    pub fn file(self, name: &str, data: &[u8]) -> Self {
        self.entry(name, tar::EntryType::Regular, "", data, None)
    }

    pub fn dir(self, name: &str) -> Self {
        self.entry(name, tar::EntryType::Directory, "", b"", None)
    }

    pub fn symlink(self, name: &str, target: &str) -> Self {
        self.entry(name, tar::EntryType::Symlink, target, b"", None)
    }

    pub fn hardlink(self, name: &str, target: &str) -> Self {
        self.entry(name, tar::EntryType::Link, target, b"", None)
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0u8; 1024]);
        self.0
    }
}

/// The member names of a gzip'd layer.
pub fn layer_members(gz: &[u8]) -> Vec<String> {
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(gz));
    a.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect()
}

/// Counts by key.
pub fn counts(items: &[String]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for i in items {
        *m.entry(i.clone()).or_default() += 1;
    }
    m
}
