//! A recording, error-injecting [`Sys`] for tests of mount plans.

use std::cell::RefCell;
use std::collections::HashSet;
use std::io;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use super::{NodeKind, Sys};

/// Records each call as one line of text; fails calls whose target is in `fail_on`.
#[derive(Debug, Default)]
pub struct FakeSys {
    calls: RefCell<Vec<String>>,
    existing: RefCell<HashSet<PathBuf>>,
    fail_on: RefCell<Option<(PathBuf, i32)>>,
    trees_are_dirs: bool,
}

impl FakeSys {
    /// A fake in which no path exists yet and detached trees are files.
    pub fn new() -> Self {
        Self::default()
    }

    /// A fake whose detached trees are directories.
    pub fn with_dir_trees() -> Self {
        Self { trees_are_dirs: true, ..Self::default() }
    }

    /// Marks `path` as existing.
    pub fn add_existing(&self, path: impl Into<PathBuf>) {
        self.existing.borrow_mut().insert(path.into());
    }

    /// Makes the next call on `path` fail with `errno`.
    pub fn fail_on(&self, path: impl Into<PathBuf>, errno: i32) {
        *self.fail_on.borrow_mut() = Some((path.into(), errno));
    }

    /// The calls made so far.
    pub fn calls(&self) -> Vec<String> {
        self.calls.borrow().clone()
    }

    fn record(&self, path: &Path, line: String) -> io::Result<()> {
        if let Some((p, errno)) = self.fail_on.borrow().as_ref()
            && p == path
        {
            return Err(io::Error::from_raw_os_error(*errno));
        }
        self.calls.borrow_mut().push(line);
        self.existing.borrow_mut().insert(path.to_path_buf());
        Ok(())
    }
}

impl Sys for FakeSys {
    fn mount(
        &self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        self.record(
            target,
            format!(
                "mount {} {} {} {:?} {}",
                source.unwrap_or("-"),
                target.display(),
                fstype.unwrap_or("-"),
                flags,
                data.unwrap_or("-")
            ),
        )
    }

    fn umount(&self, target: &Path, flags: MntFlags) -> io::Result<()> {
        self.record(target, format!("umount {} {:?}", target.display(), flags))
    }

    fn mkdir_all(&self, path: &Path, mode: u32) -> io::Result<()> {
        self.record(path, format!("mkdir {} {:o}", path.display(), mode))
    }

    fn mknod(&self, path: &Path, kind: NodeKind, mode: u32, major: u32, minor: u32) -> io::Result<()> {
        self.record(path, format!("mknod {} {:?} {:o} {}:{}", path.display(), kind, mode, major, minor))
    }

    fn set_fs_ids(&self, uid: u32, gid: u32) {
        let _ = self.record(Path::new("/"), format!("setfsids {uid}:{gid}"));
    }

    fn lchown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
        self.record(path, format!("lchown {} {uid}:{gid}", path.display()))
    }

    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
        self.record(link, format!("symlink {} -> {}", link.display(), target.display()))
    }

    fn read_link(&self, _link: &Path) -> io::Result<std::path::PathBuf> {
        Err(io::ErrorKind::NotFound.into())
    }

    fn write_file(&self, path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
        self.record(
            path,
            format!("write {} {:o} {:?}", path.display(), mode, String::from_utf8_lossy(contents)),
        )
    }

    fn place_file(&self, path: &Path, contents: &[u8], mode: u32, replace: bool) -> io::Result<()> {
        self.record(
            path,
            format!(
                "place {} {:o} {:?}{}",
                path.display(),
                mode,
                String::from_utf8_lossy(contents),
                if replace { " replacing" } else { "" }
            ),
        )
    }

    fn exists(&self, path: &Path) -> bool {
        self.existing.borrow().contains(path)
    }

    fn chmod(&self, path: &Path, mode: u32) -> io::Result<()> {
        self.record(path, format!("chmod {} {mode:o}", path.display()))
    }

    fn file_kind(&self, path: &Path) -> io::Result<super::FileKind> {
        // The fake knows only whether a path exists.
        match self.existing.borrow().contains(path) {
            true => Ok(super::FileKind::Regular),
            false => Err(io::Error::from_raw_os_error(libc::ENOENT)),
        }
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.record(path, format!("rm {}", path.display()))
    }

    fn pivot_root(&self, new_root: &Path) -> io::Result<()> {
        self.record(new_root, format!("pivot_root {}", new_root.display()))
    }

    fn detach_old_root(&self) -> io::Result<()> {
        self.record(Path::new("/"), "detach the old root".to_owned())
    }

    fn tree_is_dir(&self, _tree: BorrowedFd<'_>) -> io::Result<bool> {
        Ok(self.trees_are_dirs)
    }

    fn attach(&self, _tree: BorrowedFd<'_>, target: &Path) -> io::Result<()> {
        self.record(target, format!("attach {}", target.display()))
    }

    fn unshare(&self, flags: CloneFlags) -> io::Result<()> {
        self.record(Path::new("unshare"), format!("unshare {flags:?}"))
    }

    fn setns(&self, _ns: BorrowedFd<'_>, kind: CloneFlags) -> io::Result<()> {
        self.record(Path::new("setns"), format!("setns {kind:?}"))
    }

    fn sethostname(&self, name: &str) -> io::Result<()> {
        self.record(Path::new("sethostname"), format!("sethostname {name}"))
    }

    fn set_identity(&self, uid: u32, gid: u32, groups: &[u32]) -> io::Result<()> {
        self.record(Path::new("identity"), format!("identity {uid}:{gid} {groups:?}"))
    }
}
