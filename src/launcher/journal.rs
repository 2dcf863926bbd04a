//! `--link-journal=` and `-j`: the machine's journal made visible to the host, as nspawn 252
//! does it. `guest` keeps the files in the machine's tree and links
//! `/var/log/journal/<machine id>` on the host to them; `host` keeps them on the host and binds
//! that directory into the machine; `auto` (the default) binds it when the host has one for
//! this machine id; `try-` ignores what cannot be done. The host's side ([`prepare`]) is done
//! by the launcher before the machine exists, the machine's side by plan steps ([`steps`]).

use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::mounts::{Step, TreeId};

/// `--link-journal=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LinkJournal {
    /// No linking.
    No,
    /// Bind the host's directory for this machine if there is one.
    #[default]
    Auto,
    /// Keep the journal on the host, bound into the machine (`try`: ignore failures).
    Host {
        /// `try-host`.
        try_: bool,
    },
    /// Keep the journal in the machine, linked from the host (`try`: ignore failures).
    Guest {
        /// `try-guest` (`-j`).
        try_: bool,
    },
}

impl FromStr for LinkJournal {
    type Err = String;

    fn from_str(s: &str) -> Result<LinkJournal, String> {
        Ok(match s {
            "no" => LinkJournal::No,
            "auto" => LinkJournal::Auto,
            "host" => LinkJournal::Host { try_: false },
            "try-host" => LinkJournal::Host { try_: true },
            "guest" => LinkJournal::Guest { try_: false },
            "try-guest" => LinkJournal::Guest { try_: true },
            _ => return Err(format!("Failed to parse link journal mode {s}")),
        })
    }
}

/// What the machine's side does, once the host's is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JournalLink {
    /// Nothing.
    #[default]
    None,
    /// Only `/var/log/journal` (what `auto` makes when the host has nothing to bind).
    Dirs {
        /// Failures are ignored.
        try_: bool,
    },
    /// `/var/log/journal/<id>` in the machine, which the host links to.
    GuestDir {
        /// Failures are ignored.
        try_: bool,
    },
    /// The host's `/var/log/journal/<id>` bound onto the machine's.
    Bind {
        /// Failures are ignored.
        try_: bool,
    },
}

/// The journal directory of `id` under `journal` (`/var/log/journal` on the host).
pub fn dir_of(journal: &Path, id: &uuid::Uuid) -> PathBuf {
    journal.join(id.simple().to_string())
}

/// The host's side: checks, then the host's link (`guest`) or directory (`host`). `root` is
/// the machine's tree, `journal` the host's `/var/log/journal`, `host_id` the host's machine id.
pub fn prepare(
    mode: LinkJournal,
    root: &Path,
    read_only: bool,
    id: &uuid::Uuid,
    journal: &Path,
    host_id: Option<uuid::Uuid>,
) -> Result<JournalLink, String> {
    let try_ = match mode {
        LinkJournal::No => return Ok(JournalLink::None),
        LinkJournal::Auto => true,
        LinkJournal::Host { try_ } | LinkJournal::Guest { try_ } => try_,
    };
    let give_up = |msg: String| if try_ { Ok(JournalLink::None) } else { Err(msg) };
    if host_id == Some(*id) {
        return give_up(format!(
            "Host and machine ids are equal ({}): refusing to link journals",
            id.simple()
        ));
    }
    // The machine's /var/log/journal is made first; a read-only tree that lacks it stops here.
    if read_only && !root.join("var/log/journal").is_dir() {
        return give_up("Failed to create /var/log/journal: Read-only file system".into());
    }
    let (host_dir, guest_dir) = (dir_of(journal, id), dir_of(&root.join("var/log/journal"), id));
    match std::fs::read_link(&host_dir) {
        Ok(target) => {
            let absolute = if target.is_absolute() { target } else { journal.join(target) };
            if matches!(mode, LinkJournal::Guest { .. } | LinkJournal::Auto) && absolute == guest_dir {
                return Ok(JournalLink::GuestDir { try_ });
            }
            std::fs::remove_file(&host_dir)
                .map_err(|e| format!("Failed to remove symlink {}: {e}", host_dir.display()))?;
        }
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            if matches!(mode, LinkJournal::Guest { .. })
                && let Err(e) = std::fs::remove_dir(&host_dir)
            {
                return Err(if e.raw_os_error() == Some(libc::ENOTDIR) {
                    format!("{} already exists and is neither a symlink nor a directory", host_dir.display())
                } else {
                    format!("Failed to remove {}: {e}", host_dir.display())
                });
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("readlink({}) failed: {e}", host_dir.display())),
    }
    match mode {
        LinkJournal::Guest { .. } => match std::os::unix::fs::symlink(&guest_dir, &host_dir) {
            Ok(()) => Ok(JournalLink::GuestDir { try_ }),
            Err(e) => {
                give_up(format!("Failed to symlink {} to {}: {e}", guest_dir.display(), host_dir.display()))
            }
        },
        LinkJournal::Host { .. } => match std::fs::create_dir(&host_dir) {
            // Without parents: a host without a persistent journal is not given one.
            Ok(()) => Ok(JournalLink::Bind { try_ }),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(JournalLink::Bind { try_ }),
            Err(e) => give_up(format!("Failed to create {}: {e}", host_dir.display())),
        },
        _ if host_dir.is_dir() => Ok(JournalLink::Bind { try_ }),
        _ => Ok(JournalLink::Dirs { try_ }),
    }
}

/// The host's machine id, if it has one.
pub fn host_machine_id() -> Option<uuid::Uuid> {
    std::fs::read_to_string("/etc/machine-id").ok().and_then(|s| uuid::Uuid::try_parse(s.trim()).ok())
}

/// The machine's side, after the pivot: its `/var/log/journal` (and `<id>` in it), the host's
/// directory bound there for `Bind`.
pub fn steps(link: JournalLink, id: &uuid::Uuid) -> Vec<Step> {
    let (try_, own_dir, bind) = match link {
        JournalLink::None => return Vec::new(),
        JournalLink::Dirs { try_ } => (try_, false, false),
        JournalLink::GuestDir { try_ } => (try_, true, false),
        JournalLink::Bind { try_ } => (try_, true, true),
    };
    let dir = dir_of(Path::new("/var/log/journal"), id);
    let optional = |s: Step, optional: bool| if optional { Step::Try(vec![s]) } else { s };
    let mut steps =
        vec![optional(Step::MkDir { path: PathBuf::from("/var/log/journal"), mode: 0o755 }, try_)];
    if own_dir {
        // The directory a guest link leads to failing is only a warning to nspawn.
        steps.push(optional(Step::MkDir { path: dir.clone(), mode: 0o755 }, try_ || !bind));
    }
    if bind {
        steps
            .push(optional(Step::Attach { tree: TreeId::Journal, target: dir, only_if_exists: false }, try_));
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_as_nspawn_names_them() {
        assert_eq!("try-guest".parse(), Ok(LinkJournal::Guest { try_: true }));
        assert_eq!("host".parse(), Ok(LinkJournal::Host { try_: false }));
        assert_eq!("bogus".parse::<LinkJournal>().unwrap_err(), "Failed to parse link journal mode bogus");
    }

    #[test]
    fn the_hosts_side_links_or_makes_the_directory() {
        let t = tempfile::tempdir().unwrap();
        let (journal, root) = (t.path().join("journal"), t.path().join("root"));
        std::fs::create_dir_all(&journal).unwrap();
        std::fs::create_dir_all(root.join("var/log/journal")).unwrap();
        let id = uuid::Uuid::new_v4();
        let host_dir = dir_of(&journal, &id);
        assert_eq!(
            prepare(LinkJournal::Auto, &root, false, &id, &journal, None),
            Ok(JournalLink::Dirs { try_: true })
        );
        let guest = LinkJournal::Guest { try_: false };
        assert_eq!(
            prepare(guest, &root, false, &id, &journal, None),
            Ok(JournalLink::GuestDir { try_: false })
        );
        assert_eq!(std::fs::read_link(&host_dir).unwrap(), dir_of(&root.join("var/log/journal"), &id));
        // Linked already: auto keeps it.
        assert_eq!(
            prepare(LinkJournal::Auto, &root, false, &id, &journal, None),
            Ok(JournalLink::GuestDir { try_: true })
        );
        // host replaces the link with a directory of its own.
        let host = LinkJournal::Host { try_: false };
        assert_eq!(prepare(host, &root, false, &id, &journal, None), Ok(JournalLink::Bind { try_: false }));
        assert!(host_dir.is_dir() && !host_dir.is_symlink());
        assert_eq!(
            prepare(LinkJournal::Auto, &root, false, &id, &journal, None),
            Ok(JournalLink::Bind { try_: true })
        );
        // Equal ids: refused, or skipped with try-.
        let e = prepare(guest, &root, false, &id, &journal, Some(id)).unwrap_err();
        assert!(e.contains("Host and machine ids are equal"), "{e}");
        assert_eq!(
            prepare(LinkJournal::Guest { try_: true }, &root, false, &id, &journal, Some(id)),
            Ok(JournalLink::None)
        );
        assert_eq!(prepare(LinkJournal::No, &root, false, &id, &journal, None), Ok(JournalLink::None));
        let missing = t.path().join("no-journal");
        let e = prepare(host, &root, false, &id, &missing, None).unwrap_err();
        assert!(e.contains("Failed to create"), "{e}");
    }
}
