//! The host's user, group and host-name databases, asked through `getent`.
//!
//! mctl's binaries link the C library statically (see `.cargo/config.toml`). A statically
//! linked glibc answers from `files` and `dns` itself, but for any other source named in
//! `/etc/nsswitch.conf` (systemd, sss, ldap, resolve, mymachines) it loads the NSS module, and
//! with it a second, dynamic C library, into the process, which then crashes: Debian's default
//! `passwd: files systemd` makes every unknown user name such a lookup. `getent` is glibc's own
//! dynamically linked client of the same databases, so its answers are exactly what
//! `getpwnam(3)`, `getgrgid(3)` and `getaddrinfo(3)` give a dynamically linked program.

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A lookup that could not be made.
#[derive(Debug, thiserror::Error)]
pub enum HostDbError {
    /// getent could not be started.
    #[error("cannot run {getent} to look up '{key}' in the host's {db} database: {source}")]
    Run {
        /// The getent binary tried.
        getent: String,
        /// passwd, group or ahosts.
        db: &'static str,
        /// What was looked up.
        key: String,
        /// Why it did not start.
        source: io::Error,
    },
    /// getent failed for another reason than "not found".
    #[error("looking up '{key}' in the host's {db} database failed ({status}){stderr}")]
    Failed {
        /// passwd, group or ahosts.
        db: &'static str,
        /// What was looked up.
        key: String,
        /// getent's exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr, with a leading ": " when anything.
        stderr: String,
    },
    /// getent printed an entry that does not have the database's fields.
    #[error("the host's {db} database gave a malformed entry for '{key}': {line:?}")]
    Malformed {
        /// passwd or group.
        db: &'static str,
        /// What was looked up.
        key: String,
        /// The entry.
        line: String,
    },
}

/// A host user, as `getpwnam(3)` gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The user name.
    pub name: String,
    /// The uid.
    pub uid: u32,
    /// The primary gid.
    pub gid: u32,
    /// The home directory.
    pub home: PathBuf,
}

/// A host group, as `getgrgid(3)` gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The group name.
    pub name: String,
    /// The gid.
    pub gid: u32,
}

/// The user named `name`, or None if the host has none.
pub fn user_by_name(name: &str) -> Result<Option<User>, HostDbError> {
    let Some(out) = getent("passwd", name)? else { return Ok(None) };
    let malformed = || HostDbError::Malformed { db: "passwd", key: name.to_owned(), line: out.clone() };
    let user = parse_passwd(&out).ok_or_else(malformed)?;
    // getent takes a number for a uid; getpwnam(3) takes names only.
    Ok((user.name == name).then_some(user))
}

/// The group with id `gid`, or None if the host has none.
pub fn group_by_gid(gid: u32) -> Result<Option<Group>, HostDbError> {
    let key = gid.to_string();
    let Some(out) = getent("group", &key)? else { return Ok(None) };
    let group =
        parse_group(&out).ok_or_else(|| HostDbError::Malformed { db: "group", key, line: out.clone() })?;
    Ok((group.gid == gid).then_some(group))
}

/// The addresses of `host` in the order the host's resolver gives them (empty when it knows
/// none).
pub fn host_addresses(host: &str) -> Result<Vec<IpAddr>, HostDbError> {
    Ok(getent("ahosts", host)?.map(|out| parse_ahosts(&out)).unwrap_or_default())
}

/// getent's output for `key` in `db`; None when the database has no such entry (exit 2).
fn getent(db: &'static str, key: &str) -> Result<Option<String>, HostDbError> {
    // A fixed path: the caller's PATH does not choose what root runs.
    let getent =
        ["/usr/bin/getent", "/bin/getent"].into_iter().find(|p| Path::new(p).exists()).unwrap_or("getent");
    let out =
        Command::new(getent).args([db, "--", key]).stdin(Stdio::null()).output().map_err(|source| {
            HostDbError::Run { getent: getent.to_owned(), db, key: key.to_owned(), source }
        })?;
    match out.status.code() {
        Some(0) => Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned())),
        Some(2) => Ok(None),
        _ => {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            let stderr = if stderr.is_empty() { stderr } else { format!(": {stderr}") };
            Err(HostDbError::Failed { db, key: key.to_owned(), status: out.status, stderr })
        }
    }
}

/// The first entry of passwd(5)-format text: `name:password:uid:gid:gecos:home:shell`.
fn parse_passwd(text: &str) -> Option<User> {
    let f: Vec<&str> = text.lines().next()?.split(':').collect();
    let [name, _, uid, gid, _, home, _] = f.as_slice() else { return None };
    Some(User { name: (*name).to_owned(), uid: uid.parse().ok()?, gid: gid.parse().ok()?, home: home.into() })
}

/// The first entry of group(5)-format text: `name:password:gid:members`.
fn parse_group(text: &str) -> Option<Group> {
    let f: Vec<&str> = text.lines().next()?.split(':').collect();
    let [name, _, gid, _] = f.as_slice() else { return None };
    Some(Group { name: (*name).to_owned(), gid: gid.parse().ok()? })
}

/// The distinct addresses of `getent ahosts` output (`ADDRESS SOCKTYPE [NAME]` lines, each
/// address once per socket type), in order. Scoped IPv6 addresses (`fe80::1%eth0`) are left
/// out: a socket address without its scope would not reach them.
fn parse_ahosts(text: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for addr in text.lines().filter_map(|l| l.split_whitespace().next()?.parse::<IpAddr>().ok()) {
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    out
}

/// A resolver for reqwest that asks the host's `hosts` database through getent, so downloads
/// resolve names as every other program on the host does (see the module's text).
#[derive(Debug, Default)]
pub struct HostResolver;

impl reqwest::dns::Resolve for HostResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let lookup = host.clone();
            let addrs = tokio::task::spawn_blocking(move || host_addresses(&lookup)).await??;
            if addrs.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no address known for host '{host}'"),
                )
                .into());
            }
            // reqwest puts the URL's port in.
            let addrs: reqwest::dns::Addrs =
                Box::new(addrs.into_iter().map(|ip| std::net::SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_getent_entries() {
        let user = parse_passwd("web:x:1000:1001:Web Site,,,:/home/web:/bin/bash\n").unwrap();
        assert_eq!(user, User { name: "web".into(), uid: 1000, gid: 1001, home: "/home/web".into() });
        assert_eq!(parse_passwd("web:x:1000:1001:/home/web:/bin/sh\n"), None, "six fields");
        assert_eq!(parse_passwd("web:x:-1:1001::/home/web:/bin/sh\n"), None);
        assert_eq!(parse_group("web:x:1001:alice,bob\n").unwrap(), Group { name: "web".into(), gid: 1001 });
        assert_eq!(parse_group("web:x:1001\n"), None);
        let ahosts = "::1             STREAM localhost\n::1             DGRAM  \n::1             RAW    \n\
                      127.0.0.1       STREAM \n127.0.0.1       DGRAM  \nfe80::1%eth0    STREAM \n";
        assert_eq!(parse_ahosts(ahosts), ["::1".parse::<IpAddr>().unwrap(), "127.0.0.1".parse().unwrap()]);
    }

    #[test]
    fn asks_the_host_databases() {
        let root = user_by_name("root").unwrap().expect("every host has root");
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(group_by_gid(0).unwrap().map(|g| g.name), Some("root".to_owned()));
        // A number is a uid to getent, never a name to getpwnam.
        assert_eq!(user_by_name("0").unwrap(), None);
        assert_eq!(user_by_name("mctl-no-such-user").unwrap(), None);
        assert_eq!(user_by_name("--help").unwrap(), None);
        // From /etc/hosts: no query leaves the machine.
        assert!(host_addresses("localhost").unwrap().iter().any(|a| a.is_loopback()));
    }
}
