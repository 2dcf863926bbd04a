//! Machine names: validation and cleanup with systemd's hostname rules (v252
//! `hostname_is_valid(s, 0)` and `hostname_cleanup()`), shared by launcher, manager and CLI.

use std::fmt;

/// Longest valid machine name (HOST_NAME_MAX).
pub const NAME_MAX: usize = 64;

/// Why a string is not a valid machine name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty name.
    #[error("the name is empty")]
    Empty,
    /// Longer than [`NAME_MAX`].
    #[error("the name is {0} characters long, at most 64 are allowed")]
    TooLong(usize),
    /// A character outside `A-Za-z0-9-.`.
    #[error("'{0}' is not allowed (only letters, digits, '-' and '.')")]
    BadChar(char),
    /// Dots or hyphens in a place hostname rules forbid.
    #[error("labels between dots must be non-empty and must not start or end with '-'")]
    BadLabel,
}

/// A validated machine name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MachineName(String);

impl MachineName {
    /// Validates `name` with hostname rules.
    pub fn new(name: &str) -> Result<Self, NameError> {
        validate(name)?;
        Ok(Self(name.to_owned()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Derives a name from a directory's base name the way nspawn does: invalid characters
    /// dropped, runs of dots and hyphens collapsed, leading and trailing ones stripped.
    /// Returns `None` when nothing valid is left.
    pub fn from_dir_name(base: &str) -> Option<Self> {
        let cleaned = cleanup(base);
        Self::new(&cleaned).ok()
    }
}

impl fmt::Display for MachineName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for MachineName {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        validate(&s)?;
        Ok(Self(s))
    }
}

impl From<MachineName> for String {
    fn from(n: MachineName) -> String {
        n.0
    }
}

impl std::str::FromStr for MachineName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        Self::new(s)
    }
}

/// Checks `name` against systemd 252's hostname rules.
pub fn validate(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.')) {
        return Err(NameError::BadChar(c));
    }
    if name.len() > NAME_MAX {
        return Err(NameError::TooLong(name.len()));
    }
    for label in name.split('.') {
        if label.is_empty() || label.starts_with('-') || label.ends_with('-') {
            return Err(NameError::BadLabel);
        }
    }
    Ok(())
}

/// nspawn's `hostname_cleanup()`: keeps letters, digits, single dots and hyphens between
/// labels, and truncates to [`NAME_MAX`].
pub fn cleanup(raw: &str) -> String {
    let mut out = String::new();
    let mut last_sep: Option<char> = None;
    for c in raw.chars() {
        if c.is_ascii_alphanumeric() {
            if let Some(sep) = last_sep.take()
                && !out.is_empty()
            {
                out.push(sep);
            }
            out.push(c);
        } else if c == '.' {
            last_sep = Some('.');
        } else if c == '-' && last_sep != Some('.') {
            last_sep = Some('-');
        }
        if out.len() >= NAME_MAX {
            break;
        }
    }
    out.truncate(NAME_MAX);
    while out.ends_with(['-', '.']) {
        out.pop();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_hostnames() {
        for ok in ["foo", "my-box", "web.01", "0abc", "A1", "1234", &"a".repeat(64)] {
            assert_eq!(validate(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn rejects_what_machined_rejects() {
        assert_eq!(validate(""), Err(NameError::Empty));
        assert_eq!(validate("bad_name"), Err(NameError::BadChar('_')));
        assert_eq!(validate(".host"), Err(NameError::BadLabel));
        assert_eq!(validate("-a"), Err(NameError::BadLabel));
        assert_eq!(validate("a-"), Err(NameError::BadLabel));
        assert_eq!(validate("a..b"), Err(NameError::BadLabel));
        assert_eq!(validate("a.-b"), Err(NameError::BadLabel));
        assert_eq!(validate("a."), Err(NameError::BadLabel));
        assert_eq!(validate("a b"), Err(NameError::BadChar(' ')));
        assert_eq!(validate(&"a".repeat(65)), Err(NameError::TooLong(65)));
    }

    #[test]
    fn cleans_directory_names() {
        assert_eq!(cleanup("rootfs"), "rootfs");
        assert_eq!(cleanup("my_tree"), "mytree");
        assert_eq!(cleanup("..weird--name.."), "weird-name");
        assert_eq!(cleanup("a.-b"), "a.b");
        assert_eq!(cleanup("-x-"), "x");
        assert_eq!(cleanup("___"), "");
        assert_eq!(cleanup(&"b".repeat(80)).len(), 64);
        assert!(MachineName::from_dir_name("___").is_none());
        assert_eq!(MachineName::from_dir_name("deb 12").unwrap().as_str(), "deb12");
    }
}
