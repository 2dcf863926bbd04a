//! Shifting a tree's ownership from one id range to another: `--private-users-ownership=chown`
//! (an image chowned into its machine's range once) and commits of machines with a user
//! namespace (seen through an idmapped mount, their files carry host ids).
//!
//! Every id in `from..from+count` moves by the same offset, in the owners and in what else
//! records ids: POSIX ACL entries and the root id of namespaced file capabilities. chown(2)
//! clears setuid/setgid bits and file capabilities, so both are put back. Ids outside the range
//! are left alone. The walk stays on the tree's file system and never follows a symlink.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use super::walk::{self, Found, Kind, WalkError};
use crate::userns::IdRange;

const ACL_NAMES: [&str; 2] = ["system.posix_acl_access", "system.posix_acl_default"];
const CAPABILITY: &str = "security.capability";
const ACL_USER: u16 = 0x02;
const ACL_GROUP: u16 = 0x08;
/// `VFS_CAP_REVISION_2` and `_3` (linux/capability.h): 3 adds the namespace's root uid.
const CAP_REVISION_MASK: u32 = 0xFF00_0000;
const CAP_REVISION_2: u32 = 0x0200_0000;
const CAP_REVISION_3: u32 = 0x0300_0000;

/// Where ids move: from `from.start..` to `to..`.
#[derive(Debug, Clone, Copy)]
pub struct Shift {
    /// The range the ids are in now.
    pub from: IdRange,
    /// Where `from.start` goes.
    pub to: u32,
}

impl Shift {
    /// Where `id` goes (ids outside the range stay).
    pub fn id(&self, id: u32) -> u32 {
        if id >= self.from.start && u64::from(id) < u64::from(self.from.start) + u64::from(self.from.count) {
            id - self.from.start + self.to
        } else {
            id
        }
    }

    /// A POSIX ACL xattr with its user and group entries shifted (None: nothing to change).
    fn acl(&self, value: &[u8]) -> Option<Vec<u8>> {
        if value.len() < 4 || !(value.len() - 4).is_multiple_of(8) {
            return None;
        }
        let mut out = value.to_vec();
        let mut changed = false;
        for entry in out[4..].chunks_exact_mut(8) {
            let tag = u16::from_le_bytes([entry[0], entry[1]]);
            if tag == ACL_USER || tag == ACL_GROUP {
                let id = u32::from_le_bytes([entry[4], entry[5], entry[6], entry[7]]);
                let new = self.id(id);
                if new != id {
                    entry[4..8].copy_from_slice(&new.to_le_bytes());
                    changed = true;
                }
            }
        }
        changed.then_some(out)
    }

    /// File capabilities as they must be stored for the target range: revision 3 with the new
    /// root id, or revision 2 (no root id) when the target is the host's own ids.
    fn capability(&self, value: &[u8]) -> Vec<u8> {
        if value.len() < 20 {
            return value.to_vec();
        }
        let magic = u32::from_le_bytes([value[0], value[1], value[2], value[3]]);
        let root = match magic & CAP_REVISION_MASK {
            CAP_REVISION_3 if value.len() >= 24 => {
                self.id(u32::from_le_bytes([value[20], value[21], value[22], value[23]]))
            }
            CAP_REVISION_2 => self.id(0),
            _ => return value.to_vec(),
        };
        let flags = magic & !CAP_REVISION_MASK;
        let mut out = Vec::with_capacity(24);
        if root == 0 {
            out.extend_from_slice(&(CAP_REVISION_2 | flags).to_le_bytes());
            out.extend_from_slice(&value[4..20]);
        } else {
            out.extend_from_slice(&(CAP_REVISION_3 | flags).to_le_bytes());
            out.extend_from_slice(&value[4..20]);
            out.extend_from_slice(&root.to_le_bytes());
        }
        out
    }
}

/// Shifts the ownership of everything in `root` (itself included) by `shift`; returns how many
/// files changed owner.
pub fn shift_tree(root: &Path, shift: Shift) -> Result<u64, WalkError> {
    let mut changed = 0;
    walk::walk::<WalkError>(root, |f| {
        changed += u64::from(shift_one(f, shift)?);
        Ok(())
    })?;
    Ok(changed)
}

fn shift_one(f: &Found<'_>, shift: Shift) -> Result<bool, WalkError> {
    let (uid, gid) = (f.stat.st_uid, f.stat.st_gid);
    let (new_uid, new_gid) = (shift.id(uid), shift.id(gid));
    let kind = f.kind();
    let xattrs = if kind == Kind::Symlink { Vec::new() } else { f.xattrs(None)? };
    let mut touched = false;
    if (new_uid, new_gid) != (uid, gid) {
        f.set_owner(new_uid, new_gid)?;
        // chown cleared these: put them back.
        let special = f.stat.st_mode & 0o6000;
        if kind != Kind::Symlink && special != 0 {
            f.set_mode(f.stat.st_mode & 0o7777)?;
        }
        touched = true;
    }
    for (name, value) in &xattrs {
        let name_str = name.to_string_lossy();
        if ACL_NAMES.contains(&name_str.as_ref()) {
            if let Some(new) = shift.acl(value) {
                f.set_xattr(name, Some(&new))?;
            }
        } else if name_str == CAPABILITY {
            let new = shift.capability(value);
            if touched || new != *value {
                f.set_xattr(OsStr::new(CAPABILITY), Some(&new))?;
            }
        }
    }
    Ok(touched)
}

/// How a running machine's root is read for a commit. With a user namespace its root shows host
/// ids (`shift` takes them back to the machine's own) and, cloned with the mounts locked on it,
/// the files mounted over its own (`skip`, relative paths: not the machine's, left out).
#[derive(Debug, Default)]
pub struct View {
    /// Ids back to the machine's.
    pub shift: Option<Shift>,
    /// Paths not to look at.
    pub skip: Vec<PathBuf>,
}

impl View {
    /// `st` with the machine's ids.
    pub fn stat(&self, st: &rustix::fs::Stat) -> rustix::fs::Stat {
        let mut st = *st;
        if let Some(shift) = &self.shift {
            st.st_uid = shift.id(st.st_uid);
            st.st_gid = shift.id(st.st_gid);
        }
        st
    }

    /// Makes `copy`, a plain copy of the root, what the machine has: the skipped files removed,
    /// the ids shifted back.
    pub fn settle(&self, copy: &Path) -> Result<(), WalkError> {
        for rel in &self.skip {
            let copied = copy.join(rel);
            if std::fs::symlink_metadata(&copied).is_ok_and(|m| !m.is_dir()) {
                std::fs::remove_file(&copied).map_err(|source| WalkError {
                    step: "cannot remove",
                    path: copied,
                    source,
                })?;
            }
        }
        if let Some(shift) = self.shift {
            shift_tree(copy, shift)?;
        }
        Ok(())
    }
}

/// Records an interrupted [`shift_image`] on the tree's root: `FROM TO`.
const IN_PROGRESS: &str = "trusted.mctl.chown-in-progress";

/// The range a chowned tree is in: its root directory's owner, rounded down to a multiple of
/// 65536 (nspawn's convention, so trees nspawn chowned are recognised).
pub fn tree_base(root: &Path) -> Result<u32, WalkError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(root).map_err(|source| WalkError {
        step: "cannot inspect",
        path: root.to_owned(),
        source,
    })?;
    Ok(meta.uid() & !(crate::userns::RANGE_SIZE - 1))
}

/// `--private-users-ownership=chown`: shifts the tree at `root` into the 65536 ids from `to`,
/// from wherever it is now; nothing to do when it is there already. An interrupted shift is
/// recorded on the root and finished first. Returns whether anything changed.
pub fn shift_image(root: &Path, to: u32) -> Result<bool, WalkError> {
    let io = |step: &'static str| {
        move |e: rustix::io::Errno| WalkError { step, path: root.to_owned(), source: e.into() }
    };
    let mut buf = [0u8; 32];
    if let Ok(n) = rustix::fs::getxattr(root, IN_PROGRESS, &mut buf) {
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        let ids: Vec<u32> = text.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        if let [from, target] = ids[..] {
            tracing::info!("finishing an interrupted change of ownership of {}", root.display());
            shift_tree(
                root,
                Shift { from: IdRange { start: from, count: crate::userns::RANGE_SIZE }, to: target },
            )?;
        }
        rustix::fs::removexattr(root, IN_PROGRESS).map_err(io("cannot clear the chown record of"))?;
    }
    let from = tree_base(root)?;
    if from == to {
        return Ok(false);
    }
    tracing::info!(
        "changing the ownership of {} to the ids {to}..{} (once)",
        root.display(),
        u64::from(to) + 65535
    );
    let record = format!("{from} {to}");
    // A file system without extended attributes cannot keep the record: an interrupted shift
    // there leaves the tree half-shifted, as nspawn's does.
    let recorded =
        match rustix::fs::setxattr(root, IN_PROGRESS, record.as_bytes(), rustix::fs::XattrFlags::empty()) {
            Ok(()) => true,
            Err(rustix::io::Errno::OPNOTSUPP) => false,
            Err(e) => return Err(io("cannot record the chown on")(e)),
        };
    shift_tree(root, Shift { from: IdRange { start: from, count: crate::userns::RANGE_SIZE }, to })?;
    if recorded {
        rustix::fs::removexattr(root, IN_PROGRESS).map_err(io("cannot clear the chown record of"))?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    const TO_MACHINE: Shift = Shift { from: IdRange { start: 0, count: 65536 }, to: 0x90000 };

    #[test]
    fn owners_modes_acls_and_capabilities_move_and_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("t");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("suid"), "x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).unwrap();
        std::fs::write(root.join("outside"), "x").unwrap();
        std::os::unix::fs::chown(root.join("outside"), Some(70000), Some(70000)).unwrap();
        // An ACL granting uid 1000 and a revision 2 capability (cap_net_raw=ep).
        let mut acl = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in [
            (0x01u16, 7u16, u32::MAX),
            (ACL_USER, 5, 1000),
            (0x04, 5, u32::MAX),
            (0x10, 7, u32::MAX),
            (0x20, 5, u32::MAX),
        ] {
            acl.extend_from_slice(&tag.to_le_bytes());
            acl.extend_from_slice(&perm.to_le_bytes());
            acl.extend_from_slice(&id.to_le_bytes());
        }
        let acl_ok = rustix::fs::setxattr(
            root.join("suid"),
            "system.posix_acl_access",
            &acl,
            rustix::fs::XattrFlags::empty(),
        )
        .is_ok();
        std::os::unix::fs::chown(root.join("suid"), Some(1000), Some(100)).unwrap();
        std::fs::set_permissions(root.join("suid"), std::fs::Permissions::from_mode(0o4755)).unwrap();
        let mut cap = (CAP_REVISION_2 | 1).to_le_bytes().to_vec();
        cap.extend_from_slice(&(1u32 << 13).to_le_bytes());
        cap.extend_from_slice(&[0; 12]);
        rustix::fs::setxattr(root.join("suid"), CAPABILITY, &cap, rustix::fs::XattrFlags::empty()).unwrap();

        assert_eq!(shift_tree(&root, TO_MACHINE).unwrap(), 3);
        let m = std::fs::symlink_metadata(root.join("suid")).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (0x90000 + 1000, 0x90000 + 100, 0o4755));
        assert_eq!(std::fs::symlink_metadata(root.join("link")).unwrap().uid(), 0x90000);
        assert_eq!(std::fs::metadata(&root).unwrap().uid(), 0x90000);
        assert_eq!(std::fs::metadata(root.join("outside")).unwrap().uid(), 70000);
        let mut buf = [0u8; 64];
        let n = rustix::fs::getxattr(root.join("suid"), CAPABILITY, &mut buf).unwrap();
        assert_eq!(n, 24, "revision 3 with a root id");
        assert_eq!(u32::from_le_bytes(buf[20..24].try_into().unwrap()), 0x90000);
        if acl_ok {
            let n = rustix::fs::getxattr(root.join("suid"), "system.posix_acl_access", &mut buf).unwrap();
            assert_eq!(
                u32::from_le_bytes(buf[16..20].try_into().unwrap()),
                0x90000 + 1000,
                "{:?}",
                &buf[..n]
            );
        }

        // As an image: already there, then back to the host's ids, recorded while it runs.
        assert!(!shift_image(&root, 0x90000).unwrap());
        assert!(shift_image(&root, 0).unwrap());
        assert!(rustix::fs::getxattr(&root, IN_PROGRESS, &mut buf).is_err());
        let m = std::fs::symlink_metadata(root.join("suid")).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1000, 100, 0o4755));
        let n = rustix::fs::getxattr(root.join("suid"), CAPABILITY, &mut buf).unwrap();
        assert_eq!(&buf[..n], &cap[..], "back to revision 2");
        assert_eq!(std::fs::metadata(root.join("outside")).unwrap().uid(), 70000);
    }
}
