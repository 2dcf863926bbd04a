//! A tiny HTTP/1.1 server on 127.0.0.1 for the pull tests: serves the files of a directory
//! with ETag and Last-Modified, answers conditional GETs with 304, can be told to answer 404
//! for a path or to close the connection half-way through a body, and counts what it served.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// A special behaviour for one path.
#[derive(Debug, Clone, Copy)]
pub enum Rule {
    /// Answer 404 even if the file exists.
    NotFound,
    /// Announce the full length, send this many body bytes, then close the connection.
    CutAfter(u64),
    /// Send no ETag: Last-Modified is the only validator (a conditional request can only
    /// succeed through If-Modified-Since).
    NoEtag,
}

/// What the server did for one path.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Requests received.
    pub requests: u32,
    /// 304 answers.
    pub not_modified: u32,
    /// Body bytes sent.
    pub body_bytes: u64,
}

struct State {
    root: PathBuf,
    rules: Mutex<HashMap<String, Rule>>,
    stats: Mutex<HashMap<String, Stats>>,
}

pub struct HttpServer {
    pub addr: SocketAddr,
    state: Arc<State>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Serves `root` on 127.0.0.1, on a free port.
    pub fn start(root: &Path) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            root: root.to_owned(),
            rules: Mutex::new(HashMap::new()),
            stats: Mutex::new(HashMap::new()),
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
        HttpServer { addr, state, stop, thread: Some(thread) }
    }

    /// The URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn set_rule(&self, path: &str, rule: Rule) {
        self.state.rules.lock().unwrap().insert(path.to_owned(), rule);
    }

    pub fn clear_rule(&self, path: &str) {
        self.state.rules.lock().unwrap().remove(path);
    }

    pub fn stats(&self, path: &str) -> Stats {
        self.state.stats.lock().unwrap().get(path).copied().unwrap_or_default()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// RFC 7231 date (`Sun, 06 Nov 1994 08:49:37 GMT`) of a Unix time.
pub fn http_date(secs: i64) -> String {
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    // rem_euclid(7) is in 0..7 and m in 1..=12: the indices cannot truncate or be negative.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let wd = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize];
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let mon = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        [(m - 1) as usize];
    format!("{wd}, {d:02} {mon} {y} {:02}:{:02}:{:02} GMT", rem / 3600, rem / 60 % 60, rem % 60)
}

fn handle(st: &State, conn: TcpStream) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/").to_owned());
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let mut out = conn;
    let count = |f: &dyn Fn(&mut Stats)| f(st.stats.lock().unwrap().entry(path.clone()).or_default());
    count(&|s| s.requests += 1);
    let rule = st.rules.lock().unwrap().get(&path).copied();
    let file = st.root.join(path.trim_start_matches('/'));
    let meta = std::fs::metadata(&file).ok().filter(|m| m.is_file());
    let (Some(meta), false) =
        (meta, matches!(rule, Some(Rule::NotFound)) || path.contains("..") || method != "GET")
    else {
        let body = b"not found\n";
        write!(out, "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())?;
        out.write_all(body)?;
        return Ok(());
    };
    let etag = format!("\"{:x}-{:x}-{:x}\"", meta.len(), meta.mtime(), meta.mtime_nsec());
    let last_modified = http_date(meta.mtime());
    let fresh = headers.get("if-none-match").is_some_and(|v| v.split(',').any(|t| t.trim() == etag))
        || (!headers.contains_key("if-none-match")
            && headers.get("if-modified-since") == Some(&last_modified));
    let etag_header =
        if matches!(rule, Some(Rule::NoEtag)) { String::new() } else { format!("ETag: {etag}\r\n") };
    if fresh {
        count(&|s| s.not_modified += 1);
        write!(out, "HTTP/1.1 304 Not Modified\r\n{etag_header}Connection: close\r\n\r\n")?;
        return Ok(());
    }
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n{etag_header}\
         Last-Modified: {last_modified}\r\nConnection: close\r\n\r\n",
        meta.len()
    )?;
    let limit = match rule {
        Some(Rule::CutAfter(n)) => n.min(meta.len()),
        _ => meta.len(),
    };
    let mut f = std::fs::File::open(&file)?.take(limit);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])?;
        count(&|s| s.body_bytes += n as u64);
    }
    out.flush()?;
    let _ = out.shutdown(Shutdown::Both);
    Ok(())
}
