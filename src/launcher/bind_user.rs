//! `--bind-user=NAME`, as nspawn does it: the host user's home directory bound at
//! `/run/host/home/NAME`, the user's uid and gid mapped onto a free machine id from
//! 60514..=60577 in the machine's user namespace, and minimal JSON user and group records in
//! `/run/host/userdb/`, where the guest's nss-systemd finds them.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use crate::guestfs;
use crate::userns::IdRange;

use super::mounts::Step;

/// The machine ids bound users get (systemd's range for them).
pub const MAP_MIN: u32 = 60514;
/// The last of them.
pub const MAP_MAX: u32 = 60577;

/// Where the records go.
const USERDB: &str = "/run/host/userdb";
/// Where the home directories go.
const HOMES: &str = "/run/host/home";

/// A `--bind-user` that cannot be done.
#[derive(Debug, thiserror::Error)]
pub enum BindUserError {
    /// No such host user (or the lookup failed).
    #[error("--bind-user: cannot resolve user '{name}' on the host: {reason}")]
    NoUser {
        /// The name given.
        name: String,
        /// Why.
        reason: String,
    },
    /// root or nobody.
    #[error("--bind-user: mapping the '{0}' user is not supported (as in nspawn)")]
    Special(String),
    /// The user's primary group is not its own.
    #[error("--bind-user: user '{0}' has no private group of the same name; only such users can be bound")]
    SharedGroup(String),
    /// The name is taken in the machine.
    #[error("--bind-user: the {kind} '{name}' already exists in the machine's /etc/{file}")]
    Exists {
        /// user or group.
        kind: &'static str,
        /// The name.
        name: String,
        /// passwd or group.
        file: &'static str,
    },
    /// All of 60514..=60577 are taken in the machine, or outside its range.
    #[error("--bind-user: no free id in {MAP_MIN}..{MAP_MAX} in the machine for user '{0}'")]
    NoFreeId(String),
    /// The machine's files could not be read.
    #[error("--bind-user: {0}")]
    Tree(#[from] guestfs::GuestFileError),
    /// The user's ids fall into the machine's own range.
    #[error(
        "--bind-user: the {what} {id} of '{name}' is inside the machine's id range {range}; choose another range"
    )]
    InRange {
        /// uid or gid.
        what: &'static str,
        /// The id.
        id: u32,
        /// The user.
        name: String,
        /// The machine's range.
        range: IdRange,
    },
    /// No user namespace.
    #[error("--bind-user needs a user namespace: add --private-users or -U")]
    NoUserNamespace,
}

/// A host user bound into the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundUser {
    /// The user's (and its group's) name.
    pub name: String,
    /// Its uid on the host.
    pub host_uid: u32,
    /// Its primary gid on the host.
    pub host_gid: u32,
    /// The uid and gid it has in the machine.
    pub inside: u32,
    /// Its home directory on the host.
    pub home: PathBuf,
    /// Its password hashes from the host's shadow file, if any.
    pub hashed_password: Vec<String>,
}

impl BoundUser {
    /// Its home directory in the machine.
    pub fn home_inside(&self) -> PathBuf {
        Path::new(HOMES).join(&self.name)
    }
}

/// Resolves `names` on the host and allocates their machine ids against the tree at `root`
/// (its `/etc/passwd` and `/etc/group`, read confined to the tree, as a guest's files).
pub fn resolve(names: &[String], root: &Path) -> Result<Vec<BoundUser>, BindUserError> {
    let tree = std::fs::File::open(root)
        .map_err(|source| guestfs::GuestFileError::Open { path: PathBuf::from("/"), source })?;
    let read = |p: &str| match guestfs::read_string(tree.as_fd(), Path::new(p), guestfs::SMALL_FILE_LIMIT) {
        Ok(s) => Ok(s),
        Err(e) if e.is_not_found() => Ok(String::new()),
        Err(e) => Err(e),
    };
    let (passwd, group) = (read("/etc/passwd")?, read("/etc/group")?);
    let shadow = std::fs::read_to_string("/etc/shadow").unwrap_or_default();
    let mut out: Vec<BoundUser> = Vec::new();
    let mut next = MAP_MIN;
    for name in names {
        // Given twice, bound once (as nspawn).
        if out.iter().any(|u| &u.name == name) {
            continue;
        }
        let no_user = |reason: String| BindUserError::NoUser { name: name.clone(), reason };
        let u = crate::hostdb::user_by_name(name)
            .map_err(|e| no_user(e.to_string()))?
            .ok_or_else(|| no_user("no such user".into()))?;
        if u.uid == 0 || u.name == "root" {
            return Err(BindUserError::Special("root".into()));
        }
        if u.uid == 65534 || u.name == "nobody" {
            return Err(BindUserError::Special("nobody".into()));
        }
        let g = crate::hostdb::group_by_gid(u.gid)
            .map_err(|e| no_user(e.to_string()))?
            .ok_or_else(|| no_user(format!("its group {} does not exist", u.gid)))?;
        if g.name != u.name {
            return Err(BindUserError::SharedGroup(u.name));
        }
        if db_has(&passwd, Some(&u.name), None) {
            return Err(BindUserError::Exists { kind: "user", name: u.name, file: "passwd" });
        }
        if db_has(&group, Some(&g.name), None) {
            return Err(BindUserError::Exists { kind: "group", name: g.name, file: "group" });
        }
        while db_has(&passwd, None, Some(next)) || db_has(&group, None, Some(next)) {
            next += 1;
        }
        if next > MAP_MAX {
            return Err(BindUserError::NoFreeId(u.name));
        }
        out.push(BoundUser {
            hashed_password: shadow_hash(&shadow, &u.name).into_iter().collect(),
            name: u.name,
            host_uid: u.uid,
            host_gid: u.gid,
            inside: next,
            home: u.home,
        });
        next += 1;
    }
    Ok(out)
}

/// Whether a passwd/group-format database has an entry with this name or this id (field 3).
fn db_has(db: &str, name: Option<&str>, id: Option<u32>) -> bool {
    db.lines().any(|l| {
        let f: Vec<&str> = l.split(':').collect();
        name.is_some_and(|n| f.first() == Some(&n))
            || id.is_some_and(|i| f.get(2).and_then(|v| v.parse::<u32>().ok()) == Some(i))
    })
}

fn shadow_hash(shadow: &str, name: &str) -> Option<String> {
    shadow.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next() == Some(name)).then(|| f.next().unwrap_or_default().to_owned()).filter(|h| !h.is_empty())
    })
}

/// Refuses users whose host ids fall into the machine's range (the ids would be mapped twice).
pub fn check_range(users: &[BoundUser], range: IdRange) -> Result<(), BindUserError> {
    for u in users {
        for (what, id) in [("uid", u.host_uid), ("gid", u.host_gid)] {
            if range.overlaps(&IdRange { start: id, count: 1 }) {
                return Err(BindUserError::InRange { what, id, name: u.name.clone(), range });
            }
        }
        if u.inside >= range.count {
            return Err(BindUserError::NoFreeId(u.name.clone()));
        }
    }
    Ok(())
}

/// The `uid_map` (or with `gid`, `gid_map`) of a machine with bound users: its range with a
/// hole at each bound user's machine id, which maps to the user's host id instead.
pub fn map_lines(range: IdRange, users: &[BoundUser], gid: bool) -> String {
    let mut holes: Vec<(u32, u32)> =
        users.iter().map(|u| (u.inside, if gid { u.host_gid } else { u.host_uid })).collect();
    holes.sort_unstable();
    let mut out = String::new();
    let mut from = 0u32;
    for (inside, host) in holes {
        if inside > from {
            out.push_str(&format!("{from} {} {}\n", range.start + from, inside - from));
        }
        out.push_str(&format!("{inside} {host} 1\n"));
        from = inside + 1;
    }
    if from < range.count {
        out.push_str(&format!("{from} {} {}\n", range.start + from, range.count - from));
    }
    out
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// The records, as nspawn writes them: `NAME.group`, `NAME.user-privileged` (the password
/// hashes, root only, when there are any), `NAME.user`, each with a `ID.suffix` link to it.
pub fn records(u: &BoundUser) -> Vec<(String, String, u32)> {
    let service = "\"service\":\"io.systemd.NSpawn\"";
    let mut out = vec![(
        ".group".to_owned(),
        format!("{{\"groupName\":{},\"gid\":{},{service}}}\n", json_string(&u.name), u.inside),
        0o644,
    )];
    if !u.hashed_password.is_empty() {
        let hashes: Vec<String> = u.hashed_password.iter().map(|h| json_string(h)).collect();
        out.push((
            ".user-privileged".to_owned(),
            format!("{{\"privileged\":{{\"hashedPassword\":[{}]}}}}\n", hashes.join(",")),
            0o600,
        ));
    }
    out.push((
        ".user".to_owned(),
        format!(
            "{{\"userName\":{},\"uid\":{},\"gid\":{},\"homeDirectory\":{},{service}}}\n",
            json_string(&u.name),
            u.inside,
            u.inside,
            json_string(&u.home_inside().to_string_lossy())
        ),
        0o644,
    ));
    out
}

/// Steps of the outer plan that make `/run/host/home` and the records (before the home
/// directories are attached there).
pub fn steps(users: &[BoundUser]) -> Vec<Step> {
    if users.is_empty() {
        return Vec::new();
    }
    let mut s = vec![
        Step::MkDir { path: HOMES.into(), mode: 0o755 },
        Step::MkDir { path: USERDB.into(), mode: 0o755 },
    ];
    for u in users {
        for (suffix, contents, mode) in records(u) {
            let file = format!("{}{suffix}", u.name);
            s.push(Step::WriteFile {
                path: Path::new(USERDB).join(&file),
                contents: contents.into_bytes(),
                mode,
            });
            s.push(Step::Symlink {
                target: file.into(),
                link: Path::new(USERDB).join(format!("{}{suffix}", u.inside)),
            });
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(inside: u32, host: u32) -> BoundUser {
        BoundUser {
            name: "alice".into(),
            host_uid: host,
            host_gid: host,
            inside,
            home: "/home/alice".into(),
            hashed_password: vec!["!".into()],
        }
    }

    #[test]
    fn maps_have_a_hole_per_user() {
        let r = IdRange { start: 790757376, count: 65536 };
        assert_eq!(
            map_lines(r, &[user(60514, 1000)], false),
            "0 790757376 60514\n60514 1000 1\n60515 790817891 5021\n"
        );
        let mut b = user(60515, 1001);
        b.host_gid = 2001;
        assert_eq!(
            map_lines(r, &[b, user(60514, 1000)], true),
            "0 790757376 60514\n60514 1000 1\n60515 2001 1\n60516 790817892 5020\n"
        );
        assert_eq!(map_lines(r, &[], false), r.map_line());
        assert!(check_range(&[user(60514, 790757400)], r).is_err());
        assert!(check_range(&[user(60514, 1000)], r).is_ok());
        assert!(check_range(&[user(60514, 1000)], IdRange { start: 100000, count: 1000 }).is_err());
    }

    #[test]
    fn records_are_nspawns() {
        let r = records(&user(60514, 1000));
        assert_eq!(r[0].1, "{\"groupName\":\"alice\",\"gid\":60514,\"service\":\"io.systemd.NSpawn\"}\n");
        assert_eq!((r[1].1.as_str(), r[1].2), ("{\"privileged\":{\"hashedPassword\":[\"!\"]}}\n", 0o600));
        assert_eq!(
            r[2].1,
            "{\"userName\":\"alice\",\"uid\":60514,\"gid\":60514,\"homeDirectory\":\"/run/host/home/alice\",\"service\":\"io.systemd.NSpawn\"}\n"
        );
        let mut u = user(60514, 1000);
        u.hashed_password.clear();
        assert_eq!(records(&u).len(), 2, "no privileged record without hashes");
    }

    #[test]
    fn databases() {
        let db = "root:x:0:0::/root:/bin/sh\nalice:x:60514:60514::/home/alice:/bin/sh\n";
        assert!(db_has(db, Some("alice"), None) && db_has(db, None, Some(60514)));
        assert!(!db_has(db, Some("bob"), None) && !db_has(db, None, Some(60515)));
        assert_eq!(shadow_hash("alice:$y$abc:1::::::\nbob::1::::::\n", "alice").as_deref(), Some("$y$abc"));
        assert_eq!(shadow_hash("bob::1::::::\n", "bob"), None);
    }
}
