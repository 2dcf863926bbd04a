//! `-S/--slice`: systemd's slice names, mangled as nspawn mangles them, and the cgroup layout
//! systemd gives a slice (`a-b.slice` lives in `a.slice/a-b.slice`) and a machine's scope in it
//! (`machine-NAME.scope`, the name escaped as a unit name).

use std::fmt;
use std::path::PathBuf;

/// A `-S/--slice` value that cannot name a slice.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SliceError {
    /// Nothing given.
    #[error("-S/--slice needs a slice name, e.g. machine.slice")]
    Empty,
    /// A valid unit name of another kind (`foo.service`).
    #[error("invalid slice '{0}': it names a unit that is not a slice; give NAME or NAME.slice")]
    NotASlice(String),
    /// What systemd refuses as a slice name (`-x.slice`, `a--b.slice`, too long).
    #[error(
        "invalid slice '{0}': dash-separated parts must not be empty (no leading, trailing or double '-'), and unit names are at most 255 characters"
    )]
    Invalid(String),
}

/// systemd's unit types: a name ending in one of these is a unit name already.
const UNIT_SUFFIXES: [&str; 11] = [
    ".service",
    ".socket",
    ".target",
    ".device",
    ".mount",
    ".automount",
    ".swap",
    ".timer",
    ".path",
    ".slice",
    ".scope",
];

/// The longest unit name systemd accepts.
const UNIT_NAME_MAX: usize = 255;

/// A slice unit name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slice(String);

impl Slice {
    /// nspawn's `-S`: a valid unit name is taken as it is (and must be a slice here); anything
    /// else is escaped as `systemd-escape` does and given the `.slice` suffix (nspawn warns
    /// then, and so does the caller with [`Slice::mangled`]).
    pub fn parse(value: &str) -> Result<Slice, SliceError> {
        if value.is_empty() {
            return Err(SliceError::Empty);
        }
        let name = if is_unit_name(value) {
            if !value.ends_with(".slice") {
                return Err(SliceError::NotASlice(value.to_owned()));
            }
            value.to_owned()
        } else {
            format!("{}.slice", mangle(value))
        };
        let prefix = &name[..name.len() - ".slice".len()];
        // `-.slice` is the root slice; any other prefix is dash-separated non-empty parts.
        let parts_ok = prefix == "-" || prefix.split('-').all(|p| !p.is_empty());
        if !parts_ok || name.len() > UNIT_NAME_MAX {
            return Err(SliceError::Invalid(value.to_owned()));
        }
        Ok(Slice(name))
    }

    /// Whether the value given was not a unit name as it stood.
    pub fn mangled(&self, given: &str) -> bool {
        self.0 != given
    }

    /// The slice's directory relative to a hierarchy's root: `a.slice/a-b.slice` for
    /// `a-b.slice`; empty for the root slice.
    pub fn path(&self) -> PathBuf {
        let prefix = &self.0[..self.0.len() - ".slice".len()];
        if prefix == "-" {
            return PathBuf::new();
        }
        let parts: Vec<&str> = prefix.split('-').collect();
        (1..=parts.len()).map(|n| format!("{}.slice", parts[..n].join("-"))).collect()
    }

    /// The scope a machine gets in it: `machine-NAME.scope`, as machined names it.
    pub fn scope_of(machine: &str) -> String {
        format!("machine-{}.scope", escape(machine))
    }
}

impl fmt::Display for Slice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_unit_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || ":-_.\\@".contains(c)
}

/// A plain unit name (no template instance needed here): allowed characters, a known suffix, a
/// non-empty prefix.
fn is_unit_name(s: &str) -> bool {
    s.len() <= UNIT_NAME_MAX
        && s.chars().all(is_unit_char)
        && UNIT_SUFFIXES.iter().any(|suf| s.len() > suf.len() && s.ends_with(suf))
}

/// systemd's name mangling: `/` becomes `-`, characters not allowed in unit names `\xNN`.
fn mangle(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'/' => out.push('-'),
            b if b.is_ascii() && is_unit_char(char::from(b)) && b != b'@' => out.push(char::from(b)),
            b => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// `systemd-escape`: `/` becomes `-`, other characters outside `[a-zA-Z0-9:_.]` (and a leading
/// `.`) become `\xNN`.
fn escape(s: &str) -> String {
    let mut out = String::new();
    for (i, b) in s.bytes().enumerate() {
        match b {
            b'/' => out.push('-'),
            b'.' if i == 0 => out.push_str("\\x2e"),
            b if b.is_ascii_alphanumeric() || b == b':' || b == b'_' || b == b'.' => out.push(char::from(b)),
            b => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mangles_and_checks_as_nspawn() {
        let p = |s: &str| Slice::parse(s).map(|s| s.to_string());
        assert_eq!(p("machine.slice").as_deref(), Ok("machine.slice"));
        assert_eq!(p("foo").as_deref(), Ok("foo.slice"));
        assert_eq!(p("a b").as_deref(), Ok("a\\x20b.slice"));
        assert_eq!(p("a/b").as_deref(), Ok("a-b.slice"));
        assert_eq!(p("a-b c").as_deref(), Ok("a-b\\x20c.slice"));
        assert_eq!(p("-.slice").as_deref(), Ok("-.slice"));
        assert_eq!(p(""), Err(SliceError::Empty));
        assert_eq!(p("foo.service"), Err(SliceError::NotASlice("foo.service".into())));
        for bad in ["a--b.slice", "-a.slice", "a-.slice", "/a"] {
            assert!(matches!(p(bad), Err(SliceError::Invalid(_))), "{bad}");
        }
        assert!(Slice::parse("foo").unwrap().mangled("foo"));
        assert!(!Slice::parse("foo.slice").unwrap().mangled("foo.slice"));
    }

    #[test]
    fn lays_out_as_systemd() {
        assert_eq!(Slice::parse("machine.slice").unwrap().path(), PathBuf::from("machine.slice"));
        assert_eq!(
            Slice::parse("a-b-c.slice").unwrap().path(),
            PathBuf::from("a.slice/a-b.slice/a-b-c.slice")
        );
        assert_eq!(Slice::parse("-.slice").unwrap().path(), PathBuf::new());
        assert_eq!(Slice::scope_of("web"), "machine-web.scope");
        assert_eq!(Slice::scope_of("my-web"), "machine-my\\x2dweb.scope");
    }
}
