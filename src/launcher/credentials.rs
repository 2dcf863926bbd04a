//! `--set-credential=ID:VALUE` and `--load-credential=ID:PATH`: systemd credentials handed to
//! the machine, as nspawn does, in a read-only ramfs at `/run/host/credentials` (files 0400,
//! directory 0500) named by `$CREDENTIALS_DIRECTORY` for PID 1.

use std::path::Path;

/// Where the machine finds them.
pub const DIR: &str = "/run/host/credentials";

/// One credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// Its name (a file name).
    pub id: String,
    /// Its contents.
    pub value: Vec<u8>,
}

/// A credential option that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// Not `ID:VALUE`.
    #[error("invalid {option} '{arg}': expected ID:{what}")]
    Syntax {
        /// The option.
        option: &'static str,
        /// What was given.
        arg: String,
        /// VALUE or PATH.
        what: &'static str,
    },
    /// An id that is not a plain file name.
    #[error(
        "invalid credential name '{0}': expected a file name (no '/', not '.' or '..', at most 255 bytes)"
    )]
    BadId(String),
    /// A value with a bad escape.
    #[error("invalid --set-credential value for '{0}': a backslash escape is incomplete or unknown")]
    BadEscape(String),
    /// The same id twice.
    #[error("duplicate credential '{0}'")]
    Duplicate(String),
    /// A file that cannot be read.
    #[error("cannot read credential '{id}' from {path}: {message}")]
    Read {
        /// The credential.
        id: String,
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 255 && id != "." && id != ".." && !id.contains('/') && !id.contains('\0')
}

fn split<'a>(
    option: &'static str,
    arg: &'a str,
    what: &'static str,
) -> Result<(&'a str, &'a str), CredentialError> {
    let (id, rest) =
        arg.split_once(':').ok_or_else(|| CredentialError::Syntax { option, arg: arg.to_owned(), what })?;
    if !valid_id(id) {
        return Err(CredentialError::BadId(id.to_owned()));
    }
    Ok((id, rest))
}

/// `--set-credential=ID:VALUE`, VALUE with C escapes (`\n`, `\x41`, `\101`, `\\`), as systemd's.
pub fn parse_set(arg: &str) -> Result<Credential, CredentialError> {
    let (id, value) = split("--set-credential", arg, "VALUE")?;
    let value = unescape(value).ok_or_else(|| CredentialError::BadEscape(id.to_owned()))?;
    Ok(Credential { id: id.to_owned(), value })
}

/// `--load-credential=ID:PATH`: an absolute path, or one relative to our own
/// `$CREDENTIALS_DIRECTORY` (when mctl runs as a service that was given credentials).
pub fn parse_load(arg: &str) -> Result<Credential, CredentialError> {
    let (id, path) = split("--load-credential", arg, "PATH")?;
    let full = if Path::new(path).is_absolute() {
        Path::new(path).to_owned()
    } else {
        match std::env::var_os("CREDENTIALS_DIRECTORY") {
            Some(dir) if !path.is_empty() => Path::new(&dir).join(path),
            _ => {
                return Err(CredentialError::Read {
                    id: id.to_owned(),
                    path: path.to_owned(),
                    message: "not an absolute path, and mctl has no $CREDENTIALS_DIRECTORY to look in".into(),
                });
            }
        }
    };
    // Credentials are small; a FIFO or device would block or never end.
    let read = std::fs::metadata(&full).and_then(|m| {
        if m.is_file() && m.len() <= 1 << 20 {
            std::fs::read(&full)
        } else {
            Err(std::io::Error::other("not a regular file of at most 1 MiB"))
        }
    });
    let value = read.map_err(|e| CredentialError::Read {
        id: id.to_owned(),
        path: full.display().to_string(),
        message: e.to_string(),
    })?;
    Ok(Credential { id: id.to_owned(), value })
}

/// Refuses the same id twice.
pub fn check_unique(creds: &[Credential]) -> Result<(), CredentialError> {
    for (i, c) in creds.iter().enumerate() {
        if creds[..i].iter().any(|d| d.id == c.id) {
            return Err(CredentialError::Duplicate(c.id.clone()));
        }
    }
    Ok(())
}

/// systemd's C escapes.
fn unescape(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let c = *b.get(i + 1)?;
        i += 2;
        match c {
            b'a' => out.push(7),
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b's' => out.push(b' '),
            b'\\' | b'"' | b'\'' => out.push(c),
            b'x' => {
                let hex = std::str::from_utf8(b.get(i..i + 2)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b'0'..=b'7' => {
                let oct = std::str::from_utf8(b.get(i - 1..i + 2)?).ok()?;
                out.push(u8::from_str_radix(oct, 8).ok()?);
                i += 2;
            }
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_values_take_c_escapes() {
        let c = parse_set("foo:bar\\nbaz\\x41\\101\\\\").unwrap();
        assert_eq!((c.id.as_str(), c.value.as_slice()), ("foo", &b"bar\nbazAA\\"[..]));
        assert_eq!(parse_set("empty:").unwrap().value, b"");
        assert_eq!(parse_set("colon:a:b").unwrap().value, b"a:b");
        assert!(matches!(parse_set("bad"), Err(CredentialError::Syntax { .. })));
        assert!(matches!(parse_set("../x:1"), Err(CredentialError::BadId(_))));
        assert!(matches!(parse_set("a/b:1"), Err(CredentialError::BadId(_))));
        assert!(matches!(parse_set("x:\\q"), Err(CredentialError::BadEscape(_))));
        let dup = [parse_set("a:1").unwrap(), parse_set("a:2").unwrap()];
        assert_eq!(check_unique(&dup), Err(CredentialError::Duplicate("a".into())));
    }

    #[test]
    fn load_reads_regular_files_only() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("c");
        std::fs::write(&f, "secret").unwrap();
        assert_eq!(parse_load(&format!("k:{}", f.display())).unwrap().value, b"secret");
        let e = parse_load(&format!("k:{}", t.path().display())).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        assert!(
            parse_load("k:/nonexistent/x").unwrap_err().to_string().contains("cannot read credential 'k'")
        );
    }
}
