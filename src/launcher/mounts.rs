//! The machine's filesystem as plans: lists of [`Step`]s computed from the spec (pure, so
//! tests can check them) and applied through [`Sys`] by [`apply`].
//!
//! Three plans, in the order the launcher runs them (see `boot-checklist.md` §2):
//! - [`root_plan`]: in the outer child's new mount namespace, on host paths: make the root a
//!   mount point, optionally read-only, and `pivot_root` into it.
//! - [`outer_plan`]: after the pivot, so every path resolves inside the machine (a symlink in
//!   the tree cannot point a mount at the host): `/tmp`, `/sys`, `/dev`, `/run`, `/run/host`,
//!   user mounts. Host files come in as detached mounts opened before the pivot.
//! - [`inner_plan`]: in the machine's PID 1 after it entered the new pid and cgroup
//!   namespaces: `/proc` and its protections, mqueue, cgroup2, boot id, and shared propagation.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use crate::sys::{NodeKind, Sys};

use super::spec::{LaunchSpec, Volatile};
use crate::userns::IdRange;

/// A host file or directory brought into the machine as a detached mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TreeId {
    /// The host's os-release, for `/run/host/os-release`.
    OsRelease,
    /// The resolv.conf `--resolv-conf` binds.
    ResolvConf,
    /// The host's zone file, for `--timezone=bind`.
    Localtime,
    /// The host's journal directory of the machine, for `--link-journal=host`.
    Journal,
    /// The n-th `--bind`/`--bind-ro`.
    Bind(usize),
    /// The n-th `--overlay`/`--overlay-ro`, assembled in the scratch tmpfs.
    Overlay(usize),
    /// The image's `/usr`, for `--volatile=yes`.
    ImageUsr,
    /// The image itself, idmapped for a machine with a user namespace.
    Root,
    /// The launcher's own `/sys`, when it runs in a user namespace that may not mount one.
    Sysfs,
    /// The launcher's own `/proc`, when it runs in a user namespace: attached until the
    /// machine's PID 1 has mounted its own, which the kernel allows there only while some procfs
    /// is fully visible in the mount namespace.
    VisibleProc,
    /// The launcher's own `/dev/NAME` of the n-th device node, when it runs in a user
    /// namespace, where device nodes cannot be made.
    Device(usize),
}

/// Detached mounts, opened before the root switch.
#[derive(Debug, Default)]
pub struct Trees(Vec<(TreeId, OwnedFd)>);

impl Trees {
    /// Adds a tree.
    pub fn insert(&mut self, id: TreeId, fd: OwnedFd) {
        self.0.push((id, fd));
    }

    fn get(&self, id: TreeId) -> Option<&OwnedFd> {
        self.0.iter().find(|(i, _)| *i == id).map(|(_, fd)| fd)
    }
}

/// One filesystem operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `mkdir -p`.
    MkDir {
        /// Directory to create with its parents (host path before the pivot, machine path after).
        path: PathBuf,
        /// Mode of created directories.
        mode: u32,
    },
    /// A mount.
    Mount {
        /// Bind source or fs name (`tmpfs`); `None` for remounts and propagation changes.
        source: Option<String>,
        /// Mount point.
        target: PathBuf,
        /// Filesystem type.
        fstype: Option<String>,
        /// mount(2)'s `MS_*` flags, bind, remount and propagation ones included.
        flags: MsFlags,
        /// mount(2)'s data string (`mode=755,size=4m`, `lowerdir=…`); `None` for none.
        data: Option<String>,
    },
    /// A device node, fifo or socket inode.
    MkNod {
        /// Where to create the node; an existing file there makes the step fail.
        path: PathBuf,
        /// Char or block device, fifo or socket (the `S_IF*` type given to mknod).
        kind: NodeKind,
        /// Exact mode.
        mode: u32,
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A symlink `link` → `target`.
    Symlink {
        /// What the link points at.
        target: PathBuf,
        /// The link.
        link: PathBuf,
    },
    /// `link` → `target` in place of whatever is at `link`, left alone when it is that link
    /// already (no write to a disk tree for an unchanged `/etc/localtime`).
    ReplaceSymlink {
        /// What the link points at.
        target: PathBuf,
        /// The link.
        link: PathBuf,
    },
    /// A file with fixed contents.
    WriteFile {
        /// File to create or truncate (its parent must exist).
        path: PathBuf,
        /// The bytes written, in full (`mctl\n` for `/run/host/container-manager`).
        contents: Vec<u8>,
        /// Exact mode.
        mode: u32,
    },
    /// Detaches the mount at `path` (and what is below it).
    Detach {
        /// The mount point.
        path: PathBuf,
    },
    /// Removes a file.
    Remove {
        /// File to unlink (not a directory); a missing one makes the step fail.
        path: PathBuf,
    },
    /// Attaches a detached host mount, creating the mount point unless `only_if_exists`.
    Attach {
        /// Which tree.
        tree: TreeId,
        /// Mount point.
        target: PathBuf,
        /// Skip when the target does not exist (or the tree was not opened).
        only_if_exists: bool,
    },
    /// Changes the owner of `path` (not following a symlink).
    Chown {
        /// The file.
        path: PathBuf,
        /// The new owner.
        uid: u32,
        /// The new group.
        gid: u32,
    },
    /// Sets permission bits.
    Chmod {
        /// The path.
        path: PathBuf,
        /// The bits.
        mode: u32,
    },
    /// Covers an existing path with an inaccessible node of its kind (`--inaccessible`).
    Mask {
        /// The path (symlinks followed).
        path: PathBuf,
    },
    /// `pivot_root` into `new_root`; the old root stays until [`Step::DetachOldRoot`].
    PivotRoot {
        /// The new root.
        new_root: PathBuf,
    },
    /// Detaches the old root a [`Step::PivotRoot`] left (waits for an RCU grace period).
    DetachOldRoot,
    /// A file copied in: with `replace` through a new file renamed over whatever is there
    /// (symlinks too), else written in place unless `path` is a symlink.
    PlaceFile {
        /// The file.
        path: PathBuf,
        /// Its bytes.
        contents: Vec<u8>,
        /// Exact mode.
        mode: u32,
        /// Replace any inode at `path`.
        replace: bool,
    },
    /// The steps in order until one succeeds; none succeeding is no error (nspawn's
    /// best-effort handling of the machine's /etc files).
    Try(Vec<Step>),
    /// `then` if `path` exists (following symlinks), else `otherwise`.
    IfExists {
        /// What is tested.
        path: PathBuf,
        /// Steps when it exists.
        then: Vec<Step>,
        /// Steps when it does not.
        otherwise: Vec<Step>,
    },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::MkDir { path, .. } => write!(f, "create directory {}", path.display()),
            Step::Mount { source, target, fstype, flags, .. } => {
                if flags.contains(MsFlags::MS_REMOUNT) {
                    write!(f, "remount {}", target.display())
                } else if flags.contains(MsFlags::MS_BIND) {
                    write!(f, "bind {} on {}", source.as_deref().unwrap_or("?"), target.display())
                } else if let Some(t) = fstype {
                    write!(f, "mount {t} on {}", target.display())
                } else {
                    write!(f, "change propagation of {}", target.display())
                }
            }
            Step::MkNod { path, .. } => write!(f, "create device node {}", path.display()),
            Step::Symlink { link, .. } | Step::ReplaceSymlink { link, .. } => {
                write!(f, "create symlink {}", link.display())
            }
            Step::WriteFile { path, .. } => write!(f, "write {}", path.display()),
            Step::Remove { path } => write!(f, "remove {}", path.display()),
            Step::Detach { path } => write!(f, "detach {}", path.display()),
            Step::Attach { tree, target, .. } => {
                write!(f, "mount host {tree:?} on {}", target.display())
            }
            Step::Chown { path, .. } => write!(f, "change the owner of {}", path.display()),
            Step::Mask { path } => write!(f, "make {} inaccessible", path.display()),
            Step::Chmod { path, .. } => write!(f, "change the mode of {}", path.display()),
            Step::PivotRoot { new_root } => write!(f, "pivot_root into {}", new_root.display()),
            Step::DetachOldRoot => f.write_str("detach the old root"),
            Step::PlaceFile { path, .. } => write!(f, "copy a file to {}", path.display()),
            Step::Try(steps) => match steps.first() {
                Some(first) => write!(f, "try to {first}"),
                None => f.write_str("nothing"),
            },
            Step::IfExists { path, .. } => write!(f, "check for {}", path.display()),
        }
    }
}

/// Covers `path` with an empty, mode-0 node of its own kind from `/run/host/inaccessible`
/// (a regular file for device nodes where none could be made), read-only: nspawn's
/// `--inaccessible`.
fn mask(sys: &dyn Sys, path: &Path) -> io::Result<()> {
    use crate::sys::{FileKind, NodeKind};
    let node = match sys.file_kind(path)? {
        FileKind::Directory => "dir",
        FileKind::Regular => "reg",
        FileKind::Node(NodeKind::Fifo) => "fifo",
        FileKind::Node(NodeKind::Socket) => "sock",
        FileKind::Node(NodeKind::Char) => "chr",
        FileKind::Node(NodeKind::Block) => "blk",
    };
    let mut source = Path::new("/run/host/inaccessible").join(node);
    if !sys.exists(&source) {
        source = Path::new("/run/host/inaccessible/reg").to_owned();
    }
    sys.mount(Some(&source.display().to_string()), path, None, MsFlags::MS_BIND, None)?;
    let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | NOSUID_NODEV_NOEXEC;
    sys.mount(None, path, None, ro, None)
}

/// A step that failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot {step}: {source}")]
pub struct MountError {
    /// The step, as text.
    pub step: String,
    /// The error.
    #[source]
    pub source: io::Error,
}

/// Runs `steps` in order, stopping at the first failure.
pub fn apply(sys: &dyn Sys, trees: &Trees, steps: &[Step]) -> Result<(), MountError> {
    apply_owned(sys, trees, steps, None)
}

/// [`apply`], creating files, directories and links as `owner` (a machine's root with a user
/// namespace): in an idmapped image host root's ids map to nothing and cannot create anything,
/// and what is created belongs to the machine. Device nodes are made as host root (making them
/// takes a capability a non-root fsuid loses) and then handed to the owner.
pub fn apply_owned(
    sys: &dyn Sys,
    trees: &Trees,
    steps: &[Step],
    owner: Option<IdRange>,
) -> Result<(), MountError> {
    for step in steps {
        apply_one(sys, trees, step, owner).map_err(|source| MountError { step: step.to_string(), source })?;
    }
    Ok(())
}

fn apply_one(sys: &dyn Sys, trees: &Trees, step: &Step, owner: Option<IdRange>) -> io::Result<()> {
    match step {
        Step::Try(steps) => {
            for s in steps {
                match apply_one(sys, trees, s, owner) {
                    Ok(()) => return Ok(()),
                    Err(e) => tracing::debug!("could not {s}, going on: {e}"),
                }
            }
            return Ok(());
        }
        Step::IfExists { path, then, otherwise } => {
            let branch = if sys.exists(path) { then } else { otherwise };
            return branch.iter().try_for_each(|s| apply_one(sys, trees, s, owner));
        }
        _ => {}
    }
    let as_owner = owner.filter(|_| {
        matches!(
            step,
            Step::MkDir { .. }
                | Step::Symlink { .. }
                | Step::ReplaceSymlink { .. }
                | Step::WriteFile { .. }
                | Step::Attach { .. }
                | Step::PlaceFile { .. }
        )
    });
    if let Some(r) = as_owner {
        sys.set_fs_ids(r.start, r.start);
    }
    let mut done = apply_leaf(sys, trees, step);
    if as_owner.is_some() {
        sys.set_fs_ids(0, 0);
    }
    if let (Some(r), Step::MkNod { path, .. }, Ok(())) = (owner, step, &done) {
        done = sys.lchown(path, r.start, r.start);
    }
    done
}

fn apply_leaf(sys: &dyn Sys, trees: &Trees, step: &Step) -> io::Result<()> {
    match step {
        Step::Try(_) | Step::IfExists { .. } => Ok(()),
        Step::PlaceFile { path, contents, mode, replace } => sys.place_file(path, contents, *mode, *replace),
        Step::MkDir { path, mode } => sys.mkdir_all(path, *mode),
        Step::Mount { source, target, fstype, flags, data } => {
            sys.mount(source.as_deref(), target, fstype.as_deref(), *flags, data.as_deref())
        }
        Step::MkNod { path, kind, mode, major, minor } => sys.mknod(path, *kind, *mode, *major, *minor),
        Step::Symlink { target, link } => sys.symlink(target, link),
        Step::ReplaceSymlink { target, link } => {
            if sys.read_link(link).is_ok_and(|now| now == *target) {
                return Ok(());
            }
            match sys.remove_file(link) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            sys.symlink(target, link)
        }
        Step::WriteFile { path, contents, mode } => sys.write_file(path, contents, *mode),
        Step::Remove { path } => sys.remove_file(path),
        Step::Mask { path } => mask(sys, path),
        Step::Chmod { path, mode } => sys.chmod(path, *mode),
        Step::Detach { path } => sys.umount(path, nix::mount::MntFlags::MNT_DETACH),
        Step::Attach { tree, target, only_if_exists } => {
            let Some(fd) = trees.get(*tree) else {
                return if *only_if_exists {
                    Ok(())
                } else {
                    Err(io::Error::new(io::ErrorKind::NotFound, "host source was not opened"))
                };
            };
            if !sys.exists(target) {
                if *only_if_exists {
                    return Ok(());
                }
                if sys.tree_is_dir(fd.as_fd())? {
                    sys.mkdir_all(target, 0o755)?;
                } else {
                    if let Some(parent) = target.parent() {
                        sys.mkdir_all(parent, 0o755)?;
                    }
                    sys.write_file(target, b"", 0o644)?;
                }
            }
            sys.attach(fd.as_fd(), target)
        }
        Step::Chown { path, uid, gid } => sys.lchown(path, *uid, *gid),
        Step::PivotRoot { new_root } => sys.pivot_root(new_root),
        Step::DetachOldRoot => sys.detach_old_root(),
    }
}

fn p(s: &str) -> PathBuf {
    PathBuf::from(s)
}

fn mount(fstype: &str, target: &str, flags: MsFlags, data: &str) -> Step {
    Step::Mount {
        source: Some(fstype.to_owned()),
        target: p(target),
        fstype: Some(fstype.to_owned()),
        flags,
        data: (!data.is_empty()).then(|| data.to_owned()),
    }
}

fn bind_self(target: &Path) -> Step {
    Step::Mount {
        source: Some(target.display().to_string()),
        target: target.to_owned(),
        fstype: None,
        flags: MsFlags::MS_BIND | MsFlags::MS_REC,
        data: None,
    }
}

fn remount_ro(target: &Path, extra: MsFlags) -> Step {
    Step::Mount {
        source: None,
        target: target.to_owned(),
        fstype: None,
        flags: MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | extra,
        data: None,
    }
}

fn mkdir(path: &str, mode: u32) -> Step {
    Step::MkDir { path: p(path), mode }
}

const NOSUID_NODEV: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);
const NOSUID_NODEV_NOEXEC: MsFlags = NOSUID_NODEV.union(MsFlags::MS_NOEXEC);

/// Device nodes every machine gets: (name, major, minor); `net/tun` follows where the host
/// has it.
pub const DEVICE_NODES: [(&str, u32, u32); 6] =
    [("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)];

/// Host facts the plans depend on.
#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    /// The host has `/dev/net/tun`.
    pub has_tun: bool,
    /// The launcher runs in a user namespace other than the host's (inside another machine):
    /// it binds its own `/sys` and device nodes instead of making them.
    pub in_user_namespace: bool,
    /// What the host offers the machine's /etc (resolv.conf, localtime).
    pub etc: super::host_etc::HostEtc,
    /// What `--link-journal` leaves the machine's side to do.
    pub journal: super::journal::JournalLink,
}

/// Makes every mount in the new namespace a slave: it still receives mounts from the host
/// but sends none back. Runs before host trees are cloned, so their clones are slaves too.
pub fn isolate_plan() -> Vec<Step> {
    vec![Step::Mount {
        source: None,
        target: p("/"),
        fstype: None,
        flags: MsFlags::MS_SLAVE | MsFlags::MS_REC,
        data: None,
    }]
}

/// Makes `root` a mount point of its own (read-only with `read_only`) and pivots into it;
/// `idmapped`: the mount is the detached idmapped tree [`TreeId::Root`].
pub fn root_plan(root: &Path, read_only: bool, idmapped: bool) -> Vec<Step> {
    let mut steps = vec![if idmapped {
        Step::Attach { tree: TreeId::Root, target: root.to_owned(), only_if_exists: false }
    } else {
        bind_self(root)
    }];
    if read_only {
        steps.push(remount_ro(root, MsFlags::empty()));
    }
    steps.push(Step::PivotRoot { new_root: root.to_owned() });
    steps
}

/// Where the overlay `n` of `--overlay` is assembled inside the scratch tmpfs.
pub fn overlay_staging(scratch: &Path, n: usize) -> PathBuf {
    scratch.join(format!("overlay{n}"))
}

/// The work directory overlayfs needs beside an explicit upper directory (same filesystem);
/// removed again when the machine ends.
pub fn overlay_workdir(upper: &Path) -> PathBuf {
    let name = upper.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    upper.with_file_name(format!(".#{name}.mctl-work"))
}

fn overlay_step(lowers: &[PathBuf], upper_work: Option<(PathBuf, PathBuf)>, target: PathBuf) -> Step {
    // overlayfs lists the top-most lower layer first; the command line lists the lowest first.
    let lower: Vec<String> = lowers.iter().rev().map(|p| p.display().to_string()).collect();
    let mut data = format!("lowerdir={}", lower.join(":"));
    if let Some((u, w)) = upper_work {
        data.push_str(&format!(",upperdir={},workdir={}", u.display(), w.display()));
    }
    Step::Mount {
        source: Some("overlay".into()),
        target,
        fstype: Some("overlay".into()),
        flags: MsFlags::empty(),
        data: Some(data),
    }
}

/// Before the pivot, on host paths: a scratch tmpfs (private to the launch's mount namespace)
/// holding throwaway overlay layers, the root overlay for `-x`/`--volatile=overlay`, the tmpfs
/// root of `--volatile=yes`, and the `--overlay` mounts, assembled for attaching later. With a
/// user namespace (`owner`), the root overlay's lower layer is the idmapped image and the
/// machine's root owns the tmpfs root and upper layer.
pub fn scratch_plan(spec: &LaunchSpec, scratch: &Path, owner: Option<IdRange>) -> Vec<Step> {
    let mut s = vec![Step::Mount {
        source: Some("tmpfs".into()),
        target: scratch.to_owned(),
        fstype: Some("tmpfs".into()),
        flags: NOSUID_NODEV,
        data: Some("mode=0700".into()),
    }];
    if spec.root_overlay() {
        let (upper, work) = (scratch.join("root.upper"), scratch.join("root.work"));
        s.push(Step::MkDir { path: upper.clone(), mode: 0o755 });
        s.push(Step::MkDir { path: work.clone(), mode: 0o700 });
        let lower = match owner {
            Some(range) => {
                let lower = scratch.join("root.lower");
                s.push(Step::Attach { tree: TreeId::Root, target: lower.clone(), only_if_exists: false });
                s.push(Step::Chown { path: upper.clone(), uid: range.start, gid: range.start });
                lower
            }
            None => spec.root.clone(),
        };
        s.push(overlay_step(std::slice::from_ref(&lower), Some((upper, work)), spec.root.clone()));
    } else if spec.volatile == Volatile::Yes {
        s.push(Step::Mount {
            source: Some("tmpfs".into()),
            target: spec.root.clone(),
            fstype: Some("tmpfs".into()),
            flags: MsFlags::MS_NOSUID,
            data: Some(owned("mode=0755", owner)),
        });
    }
    for (i, o) in spec.overlays.iter().enumerate() {
        let mnt = overlay_staging(scratch, i);
        s.push(Step::MkDir { path: mnt.clone(), mode: 0o755 });
        let layers = match (&o.upper, o.read_only) {
            (_, true) => None,
            (Some(u), false) => Some((u.clone(), overlay_workdir(u))),
            (None, false) => {
                Some((scratch.join(format!("overlay{i}.upper")), scratch.join(format!("overlay{i}.work"))))
            }
        };
        if let Some((u, w)) = &layers {
            s.push(Step::MkDir { path: u.clone(), mode: 0o755 });
            s.push(Step::MkDir { path: w.clone(), mode: 0o700 });
            if let (Some(r), None) = (owner, &o.upper) {
                // A throwaway upper layer is the machine's root's to write in.
                s.push(Step::Chown { path: u.clone(), uid: r.start, gid: r.start });
            }
        }
        if layers.is_none() && o.lowers.len() == 1 {
            // overlayfs wants two lower layers when there is no upper; one read-only layer is
            // just a read-only bind mount.
            s.push(Step::Mount {
                source: Some(o.lowers[0].display().to_string()),
                target: mnt,
                fstype: None,
                flags: MsFlags::MS_BIND | MsFlags::MS_REC,
                data: None,
            });
        } else {
            s.push(overlay_step(&o.lowers, layers, mnt));
        }
    }
    s
}

/// A tmpfs's mount options, owned by the machine's root when it has a user namespace.
fn owned(options: &str, owner: Option<IdRange>) -> String {
    match owner {
        Some(r) => format!("{options},uid={},gid={}", r.start, r.start),
        None => options.to_owned(),
    }
}

/// Where [`TreeId::VisibleProc`] is attached while the machine's PID 1 mounts its `/proc`.
const VISIBLE_PROC: &str = "/run/host/.proc";

/// The `tty` group of Debian and systemd (`/dev/pts/*` belong to it).
pub const TTY_GID: u32 = 5;

/// API filesystems and user mounts, run after the pivot; `uuid` is the machine's UUID, `owner`
/// its user namespace's range (its root owns the file systems made here).
pub fn outer_plan(
    spec: &LaunchSpec,
    uuid: &uuid::Uuid,
    host: &HostFacts,
    owner: Option<IdRange>,
) -> Vec<Step> {
    let mount = |fstype: &str, target: &str, flags: MsFlags, data: &str| {
        let data = if fstype == "tmpfs" { owned(data, owner) } else { data.to_owned() };
        mount(fstype, target, flags, &data)
    };
    let tty_gid = owner.map_or(TTY_GID, |r| r.start + TTY_GID);
    let strict = MsFlags::MS_STRICTATIME;
    let mut s = Vec::new();
    if spec.volatile == Volatile::Yes {
        // A tmpfs root: the image's /usr, and the merged-/usr links an OS expects.
        s.push(Step::Attach { tree: TreeId::ImageUsr, target: p("/usr"), only_if_exists: false });
        for dir in ["bin", "sbin", "lib", "lib64"] {
            let link = p(&format!("/{dir}"));
            s.push(Step::Symlink { target: p(&format!("usr/{dir}")), link: link.clone() });
            if let Some(r) = owner {
                s.push(Step::Chown { path: link, uid: r.start, gid: r.start });
            }
        }
        for (dir, mode) in [("/etc", 0o755), ("/var", 0o755), ("/root", 0o700)] {
            s.push(mkdir(dir, mode));
            if let Some(r) = owner {
                s.push(Step::Chown { path: p(dir), uid: r.start, gid: r.start });
            }
        }
    }
    s.extend([
        mkdir("/tmp", 0o1777),
        mount("tmpfs", "/tmp", NOSUID_NODEV | strict, "mode=1777,size=10%,nr_inodes=400k"),
        mkdir("/sys", 0o755),
        if host.in_user_namespace {
            // Read-only already, and locked so: the enclosing machine's.
            Step::Attach { tree: TreeId::Sysfs, target: p("/sys"), only_if_exists: false }
        } else {
            mount("sysfs", "/sys", NOSUID_NODEV_NOEXEC | MsFlags::MS_RDONLY, "")
        },
        mkdir("/dev", 0o755),
        mount("tmpfs", "/dev", MsFlags::MS_NOSUID | strict, "mode=755,size=4m,nr_inodes=64k"),
    ]);
    let mut nodes: Vec<(String, u32, u32)> =
        DEVICE_NODES.iter().map(|(n, a, b)| ((*n).to_owned(), *a, *b)).collect();
    if host.has_tun {
        s.push(mkdir("/dev/net", 0o755));
        nodes.push(("net/tun".to_owned(), 10, 200));
    }
    s.push(mkdir("/dev/char", 0o755));
    for (i, (name, major, minor)) in nodes.iter().enumerate() {
        let path = p(&format!("/dev/{name}"));
        s.push(if host.in_user_namespace {
            Step::Attach { tree: TreeId::Device(i), target: path, only_if_exists: false }
        } else {
            Step::MkNod { path, kind: NodeKind::Char, mode: 0o666, major: *major, minor: *minor }
        });
        s.push(Step::Symlink {
            target: p(&format!("../{name}")),
            link: p(&format!("/dev/char/{major}:{minor}")),
        });
    }
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
        ("/dev/ptmx", "pts/ptmx"),
    ] {
        s.push(Step::Symlink { target: p(target), link: p(link) });
    }
    s.extend([
        mkdir("/dev/shm", 0o1777),
        mount("tmpfs", "/dev/shm", NOSUID_NODEV | strict, "mode=1777,size=10%,nr_inodes=400k"),
        mkdir("/dev/pts", 0o755),
        mount(
            "devpts",
            "/dev/pts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            &format!("newinstance,ptmxmode=0666,mode=620,gid={tty_gid}"),
        ),
        mkdir("/dev/mqueue", 0o755),
        mkdir("/dev/hugepages", 0o755),
        mkdir("/run", 0o755),
        mount("tmpfs", "/run", NOSUID_NODEV | strict, "mode=755,size=20%,nr_inodes=800k"),
        mkdir("/run/host", 0o755),
        mount("tmpfs", "/run/host", NOSUID_NODEV | strict, "mode=755,size=1m,nr_inodes=1k"),
        Step::Attach { tree: TreeId::OsRelease, target: p("/run/host/os-release"), only_if_exists: false },
    ]);
    if host.in_user_namespace {
        s.push(Step::Attach { tree: TreeId::VisibleProc, target: p(VISIBLE_PROC), only_if_exists: false });
    }
    s.extend([
        Step::WriteFile { path: p("/run/host/container-manager"), contents: b"mctl\n".to_vec(), mode: 0o444 },
        Step::WriteFile {
            path: p("/run/host/container-uuid"),
            contents: format!("{}\n", uuid.hyphenated()).into_bytes(),
            mode: 0o444,
        },
        mkdir("/run/host/inaccessible", 0o755),
        Step::WriteFile { path: p("/run/host/inaccessible/reg"), contents: Vec::new(), mode: 0 },
        mkdir("/run/host/inaccessible/dir", 0),
    ]);
    for (name, kind) in [
        ("fifo", NodeKind::Fifo),
        ("sock", NodeKind::Socket),
        ("chr", NodeKind::Char),
        ("blk", NodeKind::Block),
    ] {
        if host.in_user_namespace && matches!(kind, NodeKind::Char | NodeKind::Block) {
            // No device node can be made there (nspawn leaves them out too).
            continue;
        }
        s.push(Step::MkNod {
            path: p(&format!("/run/host/inaccessible/{name}")),
            kind,
            mode: 0,
            major: 0,
            minor: 0,
        });
    }
    if !spec.credentials.is_empty() {
        // A ramfs: never swapped out, unlike a tmpfs.
        let dir = p(super::credentials::DIR);
        s.push(Step::MkDir { path: dir.clone(), mode: 0o700 });
        s.push(Step::Mount {
            source: Some("ramfs".into()),
            target: dir.clone(),
            fstype: Some("ramfs".into()),
            flags: NOSUID_NODEV_NOEXEC,
            data: Some("mode=700".into()),
        });
        if let Some(r) = owner {
            s.push(Step::Chown { path: dir.clone(), uid: r.start, gid: r.start });
        }
        for c in &spec.credentials {
            s.push(Step::WriteFile { path: dir.join(&c.id), contents: c.value.clone(), mode: 0o400 });
        }
        s.push(Step::Chmod { path: dir.clone(), mode: 0o500 });
        s.push(remount_ro(&dir, NOSUID_NODEV_NOEXEC));
    }
    s.extend(super::bind_user::steps(&spec.bind_users));
    let (resolv, localtime) = super::host_etc::actions(spec, &host.etc);
    s.extend(super::host_etc::steps(resolv, &localtime, &host.etc));
    s.extend(super::journal::steps(host.journal, uuid));
    for (i, b) in spec.binds.iter().enumerate() {
        s.push(Step::Attach { tree: TreeId::Bind(i), target: b.dest.clone(), only_if_exists: false });
    }
    if spec.volatile == Volatile::State {
        s.push(mkdir("/var", 0o755));
        s.push(mount("tmpfs", "/var", NOSUID_NODEV | strict, "mode=755"));
    }
    for (i, o) in spec.overlays.iter().enumerate() {
        s.push(Step::Attach { tree: TreeId::Overlay(i), target: o.dest.clone(), only_if_exists: false });
    }
    for t in &spec.tmpfs {
        s.push(Step::MkDir { path: t.dest.clone(), mode: 0o755 });
        s.push(Step::Mount {
            source: Some("tmpfs".into()),
            target: t.dest.clone(),
            fstype: Some("tmpfs".into()),
            flags: NOSUID_NODEV,
            data: Some(owned(&t.options, owner)),
        });
    }
    // Last, so that they cover whatever the mounts above put there.
    s.extend(spec.inaccessible.iter().map(|path| Step::Mask { path: path.clone() }));
    s
}

/// `/proc` files hidden behind an empty, unreadable file (kernel internals and host-wide
/// triggers a container must not reach).
pub const PROC_MASKED: [&str; 6] =
    ["/proc/kallsyms", "/proc/kcore", "/proc/keys", "/proc/sysrq-trigger", "/proc/timer_list", "/proc/kmsg"];

/// `/proc` directories made read-only.
pub const PROC_READ_ONLY: [&str; 8] = [
    "/proc/sys",
    "/proc/acpi",
    "/proc/apm",
    "/proc/asound",
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/scsi",
];

/// Mounts done by the machine's PID 1 inside its namespaces; `boot_id` is fresh per boot. With
/// a network namespace of its own (`own_netns`) the machine keeps `/proc/sys/net` writable, as
/// under nspawn, so it can configure its own network.
pub fn inner_plan(boot_id: &uuid::Uuid, own_netns: bool, host: &HostFacts) -> Vec<Step> {
    let mut s = api_plan(host);
    s.extend(protect_plan(boot_id, own_netns));
    s
}

/// The first part of [`inner_plan`]: `/proc`, mqueue and cgroup2. For a machine with a user
/// namespace host root mounts these (in its pid, ipc and cgroup namespaces).
pub fn api_plan(host: &HostFacts) -> Vec<Step> {
    let mut s = vec![mkdir("/proc", 0o555), mount("proc", "/proc", NOSUID_NODEV_NOEXEC, "")];
    if host.in_user_namespace {
        // Our own /proc is in place: the launcher's, kept visible for it, can go.
        s.push(Step::Detach { path: p(VISIBLE_PROC) });
    }
    s.push(mount("mqueue", "/dev/mqueue", NOSUID_NODEV_NOEXEC, ""));
    if host.in_user_namespace {
        // The bound /sys brings the enclosing machine's cgroup2 along, on which the same file
        // system cannot be mounted again (EBUSY): a tmpfs goes between.
        s.push(mount("tmpfs", "/sys/fs/cgroup", NOSUID_NODEV_NOEXEC, "mode=755"));
    }
    s.push(mount("cgroup2", "/sys/fs/cgroup", NOSUID_NODEV_NOEXEC, ""));
    s
}

/// The rest of [`inner_plan`]: the protections of `/proc`, the boot id, a read-only `/run/host`
/// and shared propagation. A machine with a user namespace makes these itself, as its root in
/// its own mount namespace: mounts made there are not locked on top of its `/proc`, so it can
/// still mount a procfs of its own (nested machines, `unshare --mount-proc`), which the kernel
/// allows only while an existing one is fully visible. (Its root cannot write what they guard
/// anyway: those files belong to host root.)
pub fn protect_plan(boot_id: &uuid::Uuid, own_netns: bool) -> Vec<Step> {
    let mut s = Vec::new();
    if own_netns {
        // A mount of its own, made before /proc/sys is bound and made read-only, stays writable.
        s.push(bind_self(Path::new("/proc/sys/net")));
    }
    // What the kernel lacks is skipped, looked up once for both steps.
    let if_exists =
        |path: &str, then: Vec<Step>| Step::IfExists { path: p(path), then, otherwise: Vec::new() };
    for dir in PROC_READ_ONLY {
        let steps = vec![bind_self(Path::new(dir)), remount_ro(Path::new(dir), NOSUID_NODEV_NOEXEC)];
        if dir == "/proc/sys" {
            s.extend(steps);
        } else {
            s.push(if_exists(dir, steps));
        }
    }
    for file in PROC_MASKED {
        s.push(if_exists(
            file,
            vec![
                Step::Mount {
                    source: Some("/run/host/inaccessible/reg".into()),
                    target: p(file),
                    fstype: None,
                    flags: MsFlags::MS_BIND,
                    data: None,
                },
                remount_ro(Path::new(file), NOSUID_NODEV_NOEXEC),
            ],
        ));
    }
    let boot_id_file = p("/run/host/.boot_id");
    s.extend([
        Step::WriteFile {
            path: boot_id_file.clone(),
            contents: format!("{}\n", boot_id.hyphenated()).into_bytes(),
            mode: 0o444,
        },
        Step::Mount {
            source: Some(boot_id_file.display().to_string()),
            target: p("/proc/sys/kernel/random/boot_id"),
            fstype: None,
            flags: MsFlags::MS_BIND,
            data: None,
        },
        remount_ro(Path::new("/proc/sys/kernel/random/boot_id"), NOSUID_NODEV_NOEXEC),
        Step::Remove { path: boot_id_file },
        // Its atime mode as mounted: in a user namespace it is locked.
        remount_ro(Path::new("/run/host"), NOSUID_NODEV_NOEXEC | MsFlags::MS_STRICTATIME),
        share_root(),
    ]);
    s
}

/// Makes every mount shared. systemd does not make / shared inside a container; without it,
/// mounts made later never reach services that run in their own mount namespace.
pub fn share_root() -> Step {
    Step::Mount {
        source: None,
        target: p("/"),
        fstype: None,
        flags: MsFlags::MS_SHARED | MsFlags::MS_REC,
        data: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::FakeSys;

    fn index_of(steps: &[Step], pred: impl Fn(&Step) -> bool) -> usize {
        steps.iter().position(pred).expect("step present")
    }

    #[test]
    fn root_plan_pivots_last_and_honours_read_only() {
        let rw = root_plan(Path::new("/m/root"), false, false);
        assert!(matches!(rw.last(), Some(Step::PivotRoot { .. })));
        assert_eq!(rw.len(), 2);
        let ro = root_plan(Path::new("/m/root"), true, false);
        assert_eq!(ro.len(), 3);
        assert!(matches!(&ro[1], Step::Mount { flags, .. } if flags.contains(MsFlags::MS_RDONLY)));
        let idmapped = root_plan(Path::new("/m/root"), true, true);
        assert!(matches!(&idmapped[0], Step::Attach { tree: TreeId::Root, .. }));
        assert!(matches!(&idmapped[1], Step::Mount { flags, .. } if flags.contains(MsFlags::MS_RDONLY)));
    }

    #[test]
    fn an_owner_creates_files_and_gets_the_device_nodes_root_makes() {
        let sys = FakeSys::new();
        let owner = Some(IdRange { start: 0x90000, count: 65536 });
        let steps = [
            mkdir("/dev/char", 0o755),
            Step::MkNod { path: p("/dev/null"), kind: NodeKind::Char, mode: 0o666, major: 1, minor: 3 },
        ];
        apply_owned(&sys, &Trees::default(), &steps, owner).unwrap();
        assert_eq!(
            sys.calls(),
            [
                "setfsids 589824:589824",
                "mkdir /dev/char 755",
                "setfsids 0:0",
                "mknod /dev/null Char 666 1:3",
                "lchown /dev/null 589824:589824",
            ]
        );
        let plain = FakeSys::new();
        apply(&plain, &Trees::default(), &steps).unwrap();
        assert!(!plain.calls().iter().any(|c| c.starts_with("setfsids") || c.starts_with("lchown")));
    }

    #[test]
    fn a_user_namespaces_root_owns_the_machines_file_systems() {
        let range = IdRange { start: 0x90000, count: 65536 };
        let mut spec = LaunchSpec::for_test(Path::new("/m/root"));
        spec.tmpfs.push(super::super::spec::TmpfsMount { dest: p("/srv"), options: "mode=0755".into() });
        let steps = outer_plan(&spec, &uuid::Uuid::nil(), &HostFacts::default(), Some(range));
        let data_of = |target: &str| {
            steps
                .iter()
                .find_map(|s| match s {
                    Step::Mount { target: t, data, .. } if t == Path::new(target) => data.clone(),
                    _ => None,
                })
                .expect("mounted")
        };
        for tmpfs in ["/tmp", "/dev", "/dev/shm", "/run", "/run/host", "/srv"] {
            assert!(data_of(tmpfs).ends_with(",uid=589824,gid=589824"), "{tmpfs}: {}", data_of(tmpfs));
        }
        assert!(data_of("/dev/pts").contains("gid=589829"), "{}", data_of("/dev/pts"));
        let plain = outer_plan(&spec, &uuid::Uuid::nil(), &HostFacts::default(), None);
        assert!(!plain.iter().any(|s| matches!(s, Step::Mount { data: Some(d), .. } if d.contains("uid="))));

        // -x: the overlay's lower layer is the idmapped image, its upper layer the machine's.
        spec.ephemeral = true;
        let scratch = scratch_plan(&spec, Path::new("/s"), Some(range));
        assert!(scratch.iter().any(
            |s| matches!(s, Step::Attach { tree: TreeId::Root, target, .. } if target == Path::new("/s/root.lower"))
        ));
        assert!(scratch.iter().any(|s| matches!(s, Step::Chown { uid: 589824, .. })));
        assert!(scratch.iter().any(
            |s| matches!(s, Step::Mount { data: Some(d), .. } if d.starts_with("lowerdir=/s/root.lower,"))
        ));
    }

    #[test]
    fn inner_plan_masks_after_proc_and_shares_last() {
        let steps = inner_plan(&uuid::Uuid::nil(), false, &HostFacts::default());
        let proc_at = index_of(&steps, |s| matches!(s, Step::Mount { fstype: Some(t), .. } if t == "proc"));
        let mask_at = index_of(&steps, |s| {
            matches!(s, Step::IfExists { path, then, .. }
                if path == Path::new("/proc/sysrq-trigger")
                    && matches!(&then[0], Step::Mount { target, .. } if target == path))
        });
        assert!(proc_at < mask_at);
        assert!(
            matches!(steps.last(), Some(Step::Mount { flags, .. }) if flags.contains(MsFlags::MS_SHARED))
        );
    }

    #[test]
    fn own_network_keeps_proc_sys_net_writable() {
        let steps = inner_plan(&uuid::Uuid::nil(), true, &HostFacts::default());
        let net = index_of(
            &steps,
            |s| matches!(s, Step::Mount { target, .. } if target == Path::new("/proc/sys/net")),
        );
        let sys =
            index_of(&steps, |s| matches!(s, Step::Mount { target, .. } if target == Path::new("/proc/sys")));
        assert!(net < sys);
        assert!(
            !inner_plan(&uuid::Uuid::nil(), false, &HostFacts::default())
                .iter()
                .any(|s| matches!(s, Step::Mount { target, .. } if target == Path::new("/proc/sys/net")))
        );
    }

    #[test]
    fn applying_records_and_reports_the_failing_step() {
        let sys = FakeSys::new();
        let steps = inner_plan(&uuid::Uuid::nil(), false, &HostFacts::default());
        sys.fail_on("/sys/fs/cgroup", libc::EPERM);
        let err = apply(&sys, &Trees::default(), &steps).unwrap_err();
        assert_eq!(err.step, "mount cgroup2 on /sys/fs/cgroup");
        assert_eq!(err.source.raw_os_error(), Some(libc::EPERM));
        let calls = sys.calls();
        assert!(calls[0].starts_with("mkdir /proc"));
        // Optional masks are skipped when the fake has no such file.
        assert!(!calls.iter().any(|c| c.contains("/proc/kcore")));
    }

    #[test]
    fn missing_optional_attach_is_skipped_and_required_one_fails() {
        let sys = FakeSys::new();
        let optional =
            [Step::Attach { tree: TreeId::ResolvConf, target: p("/etc/resolv.conf"), only_if_exists: true }];
        apply(&sys, &Trees::default(), &optional).unwrap();
        let required = [Step::Attach {
            tree: TreeId::OsRelease,
            target: p("/run/host/os-release"),
            only_if_exists: false,
        }];
        let err = apply(&sys, &Trees::default(), &required).unwrap_err();
        assert!(err.to_string().contains("/run/host/os-release"));
    }
}
