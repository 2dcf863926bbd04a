//! Text the CLI prints: tables, property lines, dates. The only module that writes to stdout.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

use zbus::Variant;

/// Writes `text` to stdout as is.
#[allow(clippy::print_stdout)]
pub fn emit(text: &str) {
    print!("{text}");
}

/// `text` with its control characters escaped (`\n`, `\t`, `\u{1b}`): what a guest controls
/// (its os-release, process names and command lines, cgroup names) must neither move the
/// admin's terminal nor forge lines of the output it appears in.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return text.into();
    }
    text.chars()
        .map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() })
        .collect::<String>()
        .into()
}

/// Left-aligned columns separated by one space, the last column unpadded; cells are shown
/// [`printable`].
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> =
        rows.iter().map(|r| r.iter().map(|c| printable(c).into_owned()).collect()).collect();
    let rows = rows.as_slice();
    let columns = rows.iter().map(Vec::len).chain([header.len()]).max().unwrap_or(0);
    let mut widths = vec![0; columns];
    for (i, h) in header.iter().enumerate() {
        widths[i] = h.chars().count();
    }
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut s = String::new();
        let last = cells.len() - 1;
        for (i, c) in cells.into_iter().enumerate() {
            if i == last {
                s.push_str(c);
            } else {
                let _ = write!(s, "{c:<w$} ", w = widths[i]);
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = String::new();
    if !header.is_empty() {
        out.push_str(&line(header.to_vec()));
    }
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// `items` as one JSON array (indented when `pretty`), with a final newline.
pub fn json(items: &[serde_json::Value], pretty: bool) -> String {
    let text = if pretty { serde_json::to_string_pretty(items) } else { serde_json::to_string(items) };
    text.unwrap_or_default() + "\n"
}

/// An address from the wire (family, bytes).
pub fn address(family: i32, bytes: &[u8]) -> Option<String> {
    match (family, bytes.len()) {
        (libc::AF_INET, 4) => Some(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).to_string()),
        (libc::AF_INET6, 16) => {
            let arr: [u8; 16] = bytes.try_into().ok()?;
            Some(Ipv6Addr::from(arr).to_string())
        }
        _ => None,
    }
}

/// A realtime timestamp in µs as systemd prints it (`Mon 2026-11-30 00:34:45 UTC`).
pub fn timestamp(us: u64) -> String {
    crate::sys::linux::format_local_time(us / 1_000_000)
}

/// How long ago `us` (realtime µs) was, as systemd says it (`2s ago`, `3min 4s ago`).
pub fn relative(us: u64, now_us: u64) -> String {
    let secs = now_us.saturating_sub(us) / 1_000_000;
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let text = if d > 0 {
        format!("{d} day{} {h}h", if d == 1 { "" } else { "s" })
    } else if h > 0 {
        format!("{h}h {m}min")
    } else if m > 0 {
        if s > 0 { format!("{m}min {s}s") } else { format!("{m}min") }
    } else {
        format!("{s}s")
    };
    format!("{text} ago")
}

/// A duration as systemd prints one (`200ms`, `1s`, `1500us`).
pub fn timespan_us(us: u64) -> String {
    match us {
        0 => "0".to_owned(),
        n if n % 1_000_000 == 0 => format!("{}s", n / 1_000_000),
        n if n % 1000 == 0 => format!("{}ms", n / 1000),
        n => format!("{n}us"),
    }
}

/// Bytes as systemd prints them: base 1024, one decimal (`20.1M`, `512B`).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["K", "M", "G", "T", "P", "E"];
    if n < 1024 {
        return format!("{n}B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1}{}", UNITS[unit])
}

/// A property value as machinectl's `show` prints it; `None` for values it cannot print
/// (shown as `[unprintable]` with `--all`). Empty strings and arrays print as empty.
pub fn property_value(name: &str, v: &Variant<'_>) -> Option<String> {
    Some(match v {
        Variant::Str(s) => s.as_str().to_owned(),
        Variant::ObjectPath(p) => p.as_str().to_owned(),
        Variant::Bool(b) => if *b { "yes" } else { "no" }.to_owned(),
        Variant::U8(n) => n.to_string(),
        Variant::U16(n) => n.to_string(),
        Variant::I16(n) => n.to_string(),
        Variant::U32(n) => n.to_string(),
        Variant::I32(n) => n.to_string(),
        Variant::I64(n) => n.to_string(),
        Variant::U64(n) if name.ends_with("Timestamp") => {
            if *n == 0 {
                String::new()
            } else {
                timestamp(*n)
            }
        }
        Variant::U64(u64::MAX) if crate::cgroups::resources::is_limit(name) => "infinity".to_owned(),
        Variant::U64(u64::MAX) => "[not set]".to_owned(),
        Variant::U64(n) if name.ends_with("USec") => timespan_us(*n),
        Variant::U64(n) => n.to_string(),
        Variant::Array(a) => {
            let bytes: Option<Vec<u8>> =
                a.iter().map(|e| if let Variant::U8(b) = e { Some(*b) } else { None }).collect();
            match bytes {
                Some(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
                None if a.is_empty() => String::new(),
                None => return None,
            }
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_like_machinectl() {
        let t = table(
            &["MACHINE", "CLASS", "SERVICE", "OS", "VERSION", "ADDRESSES"],
            &[vec!["probe-1", "container", "mctl", "debian", "12", "-"]
                .into_iter()
                .map(String::from)
                .collect()],
        );
        assert_eq!(
            t,
            "MACHINE CLASS     SERVICE OS     VERSION ADDRESSES\nprobe-1 container mctl    debian 12      -\n"
        );
        let bare = table(&[], &[vec!["a".into(), "bb".into()], vec!["ccc".into(), "d".into()]]);
        let hostile = table(&[], &[vec!["m".into(), "Debian\x1b[2J\nforged 1".into()]]);
        assert_eq!(hostile, "m Debian\\u{1b}[2J\\nforged 1\n");
        assert_eq!(printable("plain"), "plain");
        assert_eq!(printable("a\tb\u{85}c\x7f"), "a\\tb\\u{85}c\\u{7f}");
        assert_eq!(bare, "a   bb\nccc d\n");
    }

    #[test]
    fn relative_times() {
        let now = 1_000_000_000_000;
        assert_eq!(relative(now - 2_000_000, now), "2s ago");
        assert_eq!(relative(now - 600_000_000, now), "10min ago");
        assert_eq!(relative(now - 3_723_000_000, now), "1h 2min ago");
    }

    #[test]
    fn property_values() {
        assert_eq!(property_value("Id", &Variant::from(vec![1u8, 0xab])), Some("01ab".into()));
        assert_eq!(property_value("NetworkInterfaces", &Variant::from(vec![1i32])), None);
        assert_eq!(
            property_value("NetworkInterfaces", &Variant::from(Vec::<i32>::new())),
            Some(String::new())
        );
        assert_eq!(property_value("Leader", &Variant::from(42u32)), Some("42".into()));
        assert_eq!(address(libc::AF_INET, &[10, 0, 0, 1]).as_deref(), Some("10.0.0.1"));
    }
}
