//! The container's file system, built by its init in its own mount namespace: the rootfs bound
//! onto itself, `config.json`'s mounts in order, `/dev`'s nodes and links, then the pivot and
//! the masked and read-only paths.
//!
//! The rootfs is the image's, and its content (symlinks above all) is hostile: every mount
//! target and device node is resolved inside the rootfs by the kernel (openat2
//! RESOLVE_IN_ROOT) and mounted through `/proc/self/fd`, so a link such as `proc -> /` in an
//! image cannot put a mount on the host.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount};

use super::cgroup::ContainerCgroup;
use super::process::StepError;
use crate::sys::linux::open_in_root;

/// A mount's options split as mount(2) wants them.
#[derive(Debug, PartialEq, Eq)]
pub struct Options {
    /// Flags to set.
    pub flags: MsFlags,
    /// Propagation to apply afterwards (MS_SHARED, MS_PRIVATE, ... with MS_REC).
    pub propagation: Option<MsFlags>,
    /// `bind` or `rbind`.
    pub bind: bool,
    /// `idmap` (`Some(false)`) or `ridmap` (`Some(true)`, every submount too).
    pub idmap: Option<bool>,
    /// Options for the file system itself.
    pub data: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options { flags: MsFlags::empty(), propagation: None, bind: false, idmap: None, data: Vec::new() }
    }
}

/// Splits mount options the way runc does (`ro`, `nosuid`, `rbind`, `rprivate`, ... become flags;
/// anything else is the file system's).
pub fn parse_options(opts: &[String]) -> Options {
    let mut o = Options::default();
    for opt in opts {
        let (set, clear) = match opt.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "defaults" | "remount" => (MsFlags::empty(), MsFlags::empty()),
            "bind" => {
                o.bind = true;
                continue;
            }
            "rbind" => {
                o.bind = true;
                o.flags |= MsFlags::MS_REC;
                continue;
            }
            "idmap" | "ridmap" => {
                o.idmap = Some(opt == "ridmap");
                continue;
            }
            p if propagation(p).is_some() => {
                o.propagation = propagation(p);
                continue;
            }
            _ => {
                o.data.push(opt.clone());
                continue;
            }
        };
        o.flags = (o.flags | set) & !clear;
    }
    o
}

/// A propagation option as mount flags.
pub fn propagation(name: &str) -> Option<MsFlags> {
    Some(match name {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

fn err(what: impl std::fmt::Display, path: &Path) -> impl FnOnce(nix::errno::Errno) -> StepError + '_ {
    let what = what.to_string();
    move |e| format!("cannot {what} {}: {e}", path.display())
}

fn ioerr(what: &str, path: &Path) -> impl FnOnce(io::Error) -> StepError {
    let msg = format!("cannot {what} {}", path.display());
    move |e| format!("{msg}: {e}")
}

/// Makes the host's mounts stop propagating into ours (`rootfsPropagation`, rslave by default)
/// and binds the rootfs onto itself so it can be pivoted to.
pub fn prepare_root(rootfs: &Path, root_propagation: Option<&str>) -> Result<(), StepError> {
    let prop = match root_propagation.filter(|p| !p.is_empty()) {
        Some(p) => propagation(p).ok_or_else(|| format!("unknown rootfsPropagation '{p}'"))?,
        None => MsFlags::MS_SLAVE | MsFlags::MS_REC,
    };
    mount(None::<&str>, "/", None::<&str>, prop, None::<&str>)
        .map_err(err("set the propagation of", Path::new("/")))?;
    mount(Some(rootfs), rootfs, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .map_err(err("bind the rootfs", rootfs))?;
    Ok(())
}

/// Opens `path` inside the rootfs, making it (and missing parents) first: a directory, or an
/// empty file when `file`.
fn make_in_root(root: BorrowedFd<'_>, path: &Path, file: bool) -> Result<OwnedFd, StepError> {
    match open_in_root(root, path, libc::O_PATH) {
        Ok(fd) => return Ok(fd),
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(ioerr("open", path)(e)),
        Err(_) => {}
    }
    let mut cur = PathBuf::from("/");
    let parts: Vec<&std::ffi::OsStr> =
        path.components().filter_map(|c| if let Component::Normal(n) = c { Some(n) } else { None }).collect();
    for (i, name) in parts.iter().enumerate() {
        let parent =
            open_in_root(root, &cur, libc::O_PATH | libc::O_DIRECTORY).map_err(ioerr("open", &cur))?;
        cur.push(name);
        let cname = CString::new(name.as_bytes()).map_err(|_| format!("bad path {}", path.display()))?;
        let last = i + 1 == parts.len();
        // SAFETY: `parent` is a live directory fd and `cname` a valid C string.
        let r = unsafe {
            if last && file {
                libc::mknodat(parent.as_raw_fd(), cname.as_ptr(), libc::S_IFREG | 0o644, 0)
            } else {
                libc::mkdirat(parent.as_raw_fd(), cname.as_ptr(), 0o755)
            }
        };
        if r != 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::AlreadyExists {
                return Err(ioerr("create", &cur)(e));
            }
        }
    }
    open_in_root(root, path, libc::O_PATH).map_err(ioerr("open", path))
}

fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// What the mounts need besides the list.
pub struct MountContext<'a> {
    /// The rootfs, opened.
    pub root: BorrowedFd<'a>,
    /// The bundle (relative bind sources are relative to it).
    pub bundle: &'a Path,
    /// The container's cgroup (for a `cgroup` mount).
    pub cgroup: &'a ContainerCgroup,
    /// The container has a user namespace of its own.
    pub userns: bool,
}

/// Mounts `config.json`'s mounts in order; `idmapped` has the trees [`idmapped_trees`] made
/// for them.
pub fn mount_all(
    ctx: &MountContext<'_>,
    mounts: &[Mount],
    idmapped: &[Option<OwnedFd>],
) -> Result<(), StepError> {
    for (i, m) in mounts.iter().enumerate() {
        mount_one(ctx, m, idmapped.get(i).and_then(Option::as_ref))?;
    }
    Ok(())
}

fn bind_source(bundle: &Path, m: &Mount) -> Result<PathBuf, String> {
    let src = m
        .source()
        .as_deref()
        .ok_or_else(|| format!("bind mount on {} has no source", m.destination().display()))?;
    Ok(if src.is_absolute() { src.to_owned() } else { bundle.join(src) })
}

/// The `idmap`/`ridmap` bind mounts of `mounts`, made by the runtime before the init exists
/// (index-aligned, `None` for the others): an idmapped mount needs privilege over the source's
/// file system, which the init may have given up with its user namespace. Each mount's own
/// `uidMappings`/`gidMappings` say how on-disk ids appear (`containerID` on disk shows as
/// `hostID`), else the container's user namespace maps do.
pub fn idmapped_trees(
    mounts: &[Mount],
    bundle: &Path,
    linux: &oci_spec::runtime::Linux,
) -> Result<Vec<Option<OwnedFd>>, super::ContainerError> {
    use super::ContainerError::{Invalid, Setup};
    let lines = |maps: Option<&Vec<oci_spec::runtime::LinuxIdMapping>>| {
        maps.map(|m| {
            m.iter().map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size())).collect()
        })
        .filter(|l: &String| !l.is_empty())
    };
    let mut namespaces: Vec<((String, String), OwnedFd)> = Vec::new();
    let mut out = Vec::new();
    for m in mounts {
        let dest = m.destination().display();
        let opts = parse_options(m.options().as_deref().unwrap_or(&[]));
        let own = (lines(m.uid_mappings().as_ref()), lines(m.gid_mappings().as_ref()));
        let Some(recursive) = opts.idmap else {
            if own.0.is_some() || own.1.is_some() {
                return Err(Invalid(format!(
                    "the mount on {dest} has id mappings but no idmap or ridmap option"
                )));
            }
            out.push(None);
            continue;
        };
        if !(opts.bind || m.typ().as_deref() == Some("bind")) {
            return Err(Invalid(format!("idmap on {dest}: only bind mounts can be idmapped")));
        }
        let maps = match own {
            (Some(u), Some(g)) => (u, g),
            (None, None) => {
                match (lines(linux.uid_mappings().as_ref()), lines(linux.gid_mappings().as_ref())) {
                    (Some(u), Some(g)) => (u, g),
                    _ => {
                        return Err(Invalid(format!(
                            "idmap on {dest} needs uidMappings and gidMappings on the mount, or a user namespace's"
                        )));
                    }
                }
            }
            _ => return Err(Invalid(format!("the mount on {dest} needs both uidMappings and gidMappings"))),
        };
        let userns = match namespaces.iter().find(|(k, _)| *k == maps) {
            Some((_, fd)) => fd,
            None => {
                let fd = crate::userns::mapped_namespace(&maps.0, &maps.1)
                    .map_err(|e| Invalid(format!("idmap on {dest}: {e}")))?;
                namespaces.push((maps, fd));
                &namespaces[namespaces.len() - 1].1
            }
        };
        let src = bind_source(bundle, m).map_err(Invalid)?;
        let tree = crate::sys::linux::open_tree(&src, opts.flags.contains(MsFlags::MS_REC))
            .map_err(super::ContainerError::io("open the mount source", &src))?;
        crate::sys::linux::set_tree_idmap(
            std::os::fd::AsFd::as_fd(&tree),
            std::os::fd::AsFd::as_fd(userns),
            recursive,
        )
        .map_err(|e| {
            let hint = if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP)) {
                " (its file system, or one mounted below it with ridmap, cannot be idmapped)"
            } else {
                ""
            };
            Setup(format!("cannot make an idmapped mount of {}: {e}{hint}", src.display()))
        })?;
        out.push(Some(tree));
    }
    Ok(out)
}

fn mount_one(ctx: &MountContext<'_>, m: &Mount, idmapped: Option<&OwnedFd>) -> Result<(), StepError> {
    let dest = m.destination();
    if !dest.is_absolute() {
        return Err(format!("mount destination {} is not absolute", dest.display()));
    }
    let opts = parse_options(m.options().as_deref().unwrap_or(&[]));
    let typ = m.typ().as_deref().unwrap_or(if opts.bind { "bind" } else { "none" });
    if opts.bind || typ == "bind" {
        let src = bind_source(ctx.bundle, m)?;
        let is_dir = std::fs::metadata(&src).map_err(ioerr("find the bind source", &src))?.is_dir();
        let target = make_in_root(ctx.root, dest, !is_dir)?;
        let t = fd_path(&target);
        if let Some(tree) = idmapped {
            crate::sys::linux::move_mount_onto(
                std::os::fd::AsFd::as_fd(tree),
                std::os::fd::AsFd::as_fd(&target),
            )
            .map_err(ioerr(&format!("attach the idmapped mount of {} at", src.display()), dest))?;
        } else {
            mount(
                Some(&src),
                t.as_str(),
                None::<&str>,
                MsFlags::MS_BIND | (opts.flags & MsFlags::MS_REC),
                None::<&str>,
            )
            .map_err(err(format!("bind {} onto", src.display()), dest))?;
        }
        let remount = opts.flags & !MsFlags::MS_REC;
        if !remount.is_empty() {
            // The bind is now at `target`'s place: reopen to reach the new mount, not what it covers.
            let target = open_in_root(ctx.root, dest, libc::O_PATH).map_err(ioerr("open", dest))?;
            remount_bind(&fd_path(&target), remount, dest)?;
        }
        return apply_propagation(ctx, dest, opts.propagation);
    }
    if typ == "cgroup" || typ == "cgroup2" {
        return mount_cgroup(ctx, dest, &opts);
    }
    let target = make_in_root(ctx.root, dest, false)?;
    let t = fd_path(&target);
    // `tmpcopyup` (runc's and crun's extension): the tmpfs starts with what it covers.
    let copy_up = opts.data.iter().any(|d| d == "tmpcopyup") && typ == "tmpfs";
    let covered = if copy_up {
        Some(open_in_root(ctx.root, dest, libc::O_RDONLY | libc::O_DIRECTORY).map_err(ioerr("open", dest))?)
    } else {
        None
    };
    let data = opts.data.iter().filter(|d| *d != "tmpcopyup").cloned().collect::<Vec<_>>().join(",");
    let source = m.source().as_deref().map(Path::to_owned).unwrap_or_else(|| PathBuf::from(typ));
    let flags = opts.flags & !MsFlags::MS_REC;
    match mount(Some(&source), t.as_str(), Some(typ), flags, Some(data.as_str())) {
        Ok(()) => {}
        // sysfs belongs to a network namespace: one the user namespace does not own cannot
        // mount it afresh; runc binds the host's instead.
        Err(nix::errno::Errno::EPERM) if typ == "sysfs" && ctx.userns => {
            mount(Some("/sys"), t.as_str(), None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
                .map_err(err("bind /sys onto", dest))?;
            let target = open_in_root(ctx.root, dest, libc::O_PATH).map_err(ioerr("open", dest))?;
            remount_bind(&fd_path(&target), flags | MsFlags::MS_RDONLY, dest)?;
        }
        Err(e) => return Err(err(format!("mount {typ} on"), dest)(e)),
    }
    if let Some(covered) = covered {
        let fresh =
            open_in_root(ctx.root, dest, libc::O_RDONLY | libc::O_DIRECTORY).map_err(ioerr("open", dest))?;
        copy_tree(&covered, &fresh).map_err(ioerr("copy up what the tmpfs covers at", dest))?;
    }
    apply_propagation(ctx, dest, opts.propagation)
}

/// Copies the directory `from` into `to`, keeping modes, owners and links; both are fds, so
/// nothing is resolved by path (the source is covered by a mount by now).
fn copy_tree(from: &OwnedFd, to: &OwnedFd) -> io::Result<()> {
    use rustix::fs::{AtFlags, FileType, Mode, OFlags};
    let mut dir = rustix::fs::Dir::read_from(from)?;
    while let Some(entry) = dir.read() {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_bytes() == b"." || name.to_bytes() == b".." {
            continue;
        }
        let st = rustix::fs::statat(from, name, AtFlags::SYMLINK_NOFOLLOW)?;
        let mode = Mode::from_raw_mode(st.st_mode & 0o7777);
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                rustix::fs::mkdirat(to, name, mode)?;
                let src = rustix::fs::openat(from, name, crate::guestfs::OPEN_DIR_NOFOLLOW, Mode::empty())?;
                let dst = rustix::fs::openat(to, name, crate::guestfs::OPEN_DIR_NOFOLLOW, Mode::empty())?;
                copy_tree(&src, &dst)?;
            }
            FileType::RegularFile => {
                let src = rustix::fs::openat(
                    from,
                    name,
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                let dst = rustix::fs::openat(
                    to,
                    name,
                    OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
                    mode,
                )?;
                let (mut s, mut d) = (std::fs::File::from(src), std::fs::File::from(dst));
                io::copy(&mut s, &mut d)?;
            }
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(from, name, Vec::new())?;
                rustix::fs::symlinkat(target.as_c_str(), to, name)?;
            }
            // Device nodes, fifos and sockets are not copied up.
            _ => continue,
        }
        rustix::fs::chownat(
            to,
            name,
            Some(rustix::fs::Uid::from_raw(st.st_uid)),
            Some(rustix::fs::Gid::from_raw(st.st_gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
        if FileType::from_raw_mode(st.st_mode) != FileType::Symlink {
            rustix::fs::chmodat(to, name, mode, AtFlags::empty())?;
        }
    }
    Ok(())
}

fn remount_bind(target: &str, flags: MsFlags, dest: &Path) -> Result<(), StepError> {
    let r = mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | flags,
        None::<&str>,
    );
    match r {
        Ok(()) => Ok(()),
        // Flags the source mount has locked (nodev, nosuid, noexec in a user namespace) must
        // be kept: add the ones it has and try once more.
        Err(nix::errno::Errno::EPERM) => {
            let st = nix::sys::statvfs::statvfs(target).map_err(err("inspect", dest))?;
            let mut keep = MsFlags::empty();
            for (f, m) in [
                (nix::sys::statvfs::FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
                (nix::sys::statvfs::FsFlags::ST_NODEV, MsFlags::MS_NODEV),
                (nix::sys::statvfs::FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
                (nix::sys::statvfs::FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
            ] {
                if st.flags().contains(f) {
                    keep |= m;
                }
            }
            mount(
                None::<&str>,
                target,
                None::<&str>,
                MsFlags::MS_REMOUNT | MsFlags::MS_BIND | flags | keep,
                None::<&str>,
            )
            .map_err(err("remount", dest))
        }
        Err(e) => Err(err("remount", dest)(e)),
    }
}

fn apply_propagation(ctx: &MountContext<'_>, dest: &Path, prop: Option<MsFlags>) -> Result<(), StepError> {
    let Some(prop) = prop else { return Ok(()) };
    let target = open_in_root(ctx.root, dest, libc::O_PATH).map_err(ioerr("open", dest))?;
    mount(None::<&str>, fd_path(&target).as_str(), None::<&str>, prop, None::<&str>)
        .map_err(err("set the propagation of", dest))
}

/// A `cgroup` mount: the container's own cgroups, bound where the host has them (cgroup2
/// alone on a pure v2 host; a tmpfs with each v1 hierarchy and `unified` on a hybrid one), so
/// the container sees its cgroup as the root whether or not it has a cgroup namespace.
fn mount_cgroup(ctx: &MountContext<'_>, dest: &Path, opts: &Options) -> Result<(), StepError> {
    let flags = opts.flags & !MsFlags::MS_REC;
    let target = make_in_root(ctx.root, dest, false)?;
    let t = fd_path(&target);
    let bind_ro = |src: &Path, at: &Path| -> Result<(), StepError> {
        let target = make_in_root(ctx.root, at, false)?;
        let t = fd_path(&target);
        mount(Some(src), t.as_str(), None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(err(format!("bind {} onto", src.display()), at))?;
        let target = open_in_root(ctx.root, at, libc::O_PATH).map_err(ioerr("open", at))?;
        remount_bind(&fd_path(&target), flags, at)
    };
    if ctx.cgroup.v1.is_empty() {
        let unified = ctx.cgroup.unified.as_deref().ok_or("the host has no cgroup hierarchy to mount")?;
        drop(target);
        return bind_ro(unified, dest);
    }
    mount(
        Some("tmpfs"),
        t.as_str(),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=755"),
    )
    .map_err(err("mount tmpfs on", dest))?;
    for (controllers, dir) in &ctx.cgroup.v1 {
        let name = controllers.join(",");
        let name = name.strip_prefix("name=").unwrap_or(&name).to_owned();
        bind_ro(dir, &dest.join(&name))?;
        if controllers.len() > 1 {
            // `cpu` and `cpuacct` as links to `cpu,cpuacct`, as on the host.
            let parent = open_in_root(ctx.root, dest, libc::O_PATH | libc::O_DIRECTORY)
                .map_err(ioerr("open", dest))?;
            for c in controllers {
                let _ = nix::unistd::symlinkat(name.as_str(), &parent, c.as_str());
            }
        }
    }
    if let Some(unified) = &ctx.cgroup.unified {
        bind_ro(unified, &dest.join("unified"))?;
    }
    if flags.contains(MsFlags::MS_RDONLY) {
        let target = open_in_root(ctx.root, dest, libc::O_PATH).map_err(ioerr("open", dest))?;
        remount_bind(&fd_path(&target), flags, dest)?;
    }
    Ok(())
}

/// The nodes every container gets when its `/dev` is not the host's (runc's list).
const DEFAULT_DEVICES: [(&str, u64, u64); 6] =
    [("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)];

/// Makes the default device nodes, `linux.devices` and `/dev`'s links. In a user namespace,
/// where mknod is not allowed, the host's nodes are bound onto empty files instead.
pub fn populate_dev(ctx: &MountContext<'_>, devices: &[LinuxDevice]) -> Result<(), StepError> {
    for (name, major, minor) in DEFAULT_DEVICES {
        make_device(ctx, &Path::new("/dev").join(name), libc::S_IFCHR, major, minor, 0o666, 0, 0)?;
    }
    for d in devices {
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => libc::S_IFCHR,
            LinuxDeviceType::B => libc::S_IFBLK,
            LinuxDeviceType::P => libc::S_IFIFO,
            LinuxDeviceType::A => return Err(format!("device {} has type 'a'", d.path().display())),
        };
        let (Ok(major), Ok(minor)) = (u64::try_from(d.major()), u64::try_from(d.minor())) else {
            return Err(format!("device {} has a negative number", d.path().display()));
        };
        let mode = d.file_mode().unwrap_or(0o666);
        make_device(ctx, d.path(), kind, major, minor, mode, d.uid().unwrap_or(0), d.gid().unwrap_or(0))?;
    }
    let dev = open_in_root(ctx.root, Path::new("/dev"), libc::O_PATH | libc::O_DIRECTORY)
        .map_err(ioerr("open", Path::new("/dev")))?;
    let mut links = vec![
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
        ("pts/ptmx", "ptmx"),
    ];
    if Path::new("/proc/kcore").exists() {
        links.push(("/proc/kcore", "core"));
    }
    for (target, name) in links {
        match nix::unistd::symlinkat(target, &dev, name) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(format!("cannot link /dev/{name}: {e}")),
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn make_device(
    ctx: &MountContext<'_>,
    path: &Path,
    kind: libc::mode_t,
    major: u64,
    minor: u64,
    mode: u32,
    uid: u32,
    gid: u32,
) -> Result<(), StepError> {
    let parent_path = path.parent().unwrap_or(Path::new("/"));
    let name = path.file_name().ok_or_else(|| format!("bad device path {}", path.display()))?;
    let parent = make_in_root(ctx.root, parent_path, false)?;
    let cname = CString::new(name.as_bytes()).map_err(|_| format!("bad device path {}", path.display()))?;
    if ctx.userns {
        drop(parent);
        let target = make_in_root(ctx.root, path, true)?;
        let host = Path::new("/dev").join(name);
        return mount(Some(&host), fd_path(&target).as_str(), None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(err(format!("bind {} onto", host.display()), path));
    }
    let dev = libc::makedev(u32::try_from(major).unwrap_or(0), u32::try_from(minor).unwrap_or(0));
    // SAFETY: `parent` is a live directory fd and `cname` a valid C string.
    let r = unsafe { libc::mknodat(parent.as_raw_fd(), cname.as_ptr(), kind | (mode & 0o7777), dev) };
    if r != 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::AlreadyExists {
            return Ok(());
        }
        return Err(ioerr("create the device", path)(e));
    }
    // The node was just made by us in a directory of the rootfs: no link can be in the way.
    // SAFETY: as above; AT_SYMLINK_NOFOLLOW keeps a raced-in link from being followed.
    let r =
        unsafe { libc::fchownat(parent.as_raw_fd(), cname.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) };
    if r != 0 {
        return Err(ioerr("chown the device", path)(io::Error::last_os_error()));
    }
    // mknod's mode is masked by the umask; the configured one is wanted.
    // SAFETY: as above.
    let r = unsafe { libc::fchmodat(parent.as_raw_fd(), cname.as_ptr(), mode & 0o7777, 0) };
    if r != 0 {
        return Err(ioerr("chmod the device", path)(io::Error::last_os_error()));
    }
    Ok(())
}

/// Makes the rootfs the root: pivot_root, the old root detached (or, with `--no-pivot`, the
/// rootfs moved over `/` and chrooted into, for ramdisk roots where pivot_root fails).
pub fn pivot(rootfs: &Path, no_pivot: bool) -> Result<(), StepError> {
    nix::unistd::chdir(rootfs).map_err(err("change to", rootfs))?;
    if no_pivot {
        mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
            .map_err(err("move the rootfs to", Path::new("/")))?;
        nix::unistd::chroot(".").map_err(err("chroot to", rootfs))?;
    } else {
        nix::unistd::pivot_root(".", ".").map_err(err("pivot_root to", rootfs))?;
        // The old root is stacked under the new one: stop propagation, then detach it.
        mount(None::<&str>, ".", None::<&str>, MsFlags::MS_SLAVE | MsFlags::MS_REC, None::<&str>)
            .map_err(err("make the old root a slave", Path::new("/")))?;
        umount2(".", MntFlags::MNT_DETACH).map_err(err("detach the old root", Path::new("/")))?;
    }
    nix::unistd::chdir("/").map_err(err("change to", Path::new("/")))
}

/// Covers each path: a directory with an empty read-only tmpfs, anything else with
/// `/dev/null`. Paths that do not exist are skipped.
pub fn mask_paths(paths: &[String]) -> Result<(), StepError> {
    for p in paths {
        let path = Path::new(p);
        let r = match std::fs::symlink_metadata(path) {
            Err(_) => continue,
            Ok(m) if m.is_dir() => {
                mount(Some("tmpfs"), path, Some("tmpfs"), MsFlags::MS_RDONLY, Some("size=0"))
            }
            Ok(_) => mount(Some("/dev/null"), path, None::<&str>, MsFlags::MS_BIND, None::<&str>),
        };
        r.map_err(err("mask", path))?;
    }
    Ok(())
}

/// Makes each path read-only (a bind of itself, remounted read-only). Paths that do not exist
/// are skipped.
pub fn readonly_paths(paths: &[String]) -> Result<(), StepError> {
    for p in paths {
        let path = Path::new(p);
        if std::fs::symlink_metadata(path).is_err() {
            continue;
        }
        mount(Some(path), path, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
            .map_err(err("bind", path))?;
        remount_bind(
            p,
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            path,
        )?;
    }
    Ok(())
}

/// `root.readonly`: the root mount read-only (its submounts keep their own flags).
pub fn readonly_root() -> Result<(), StepError> {
    remount_bind("/", MsFlags::MS_RDONLY, Path::new("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_propagation_and_data() {
        let o = parse_options(&[
            "nosuid".into(),
            "noexec".into(),
            "mode=755".into(),
            "size=65536k".into(),
            "ro".into(),
        ]);
        assert_eq!(o.flags, MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY);
        assert_eq!(o.data, vec!["mode=755", "size=65536k"]);
        assert!(!o.bind);
        let b = parse_options(&["rbind".into(), "rprivate".into(), "rw".into()]);
        assert!(b.bind);
        assert_eq!(b.flags, MsFlags::MS_REC);
        assert_eq!(b.propagation, Some(MsFlags::MS_PRIVATE | MsFlags::MS_REC));
        assert_eq!(b.idmap, None);
        assert_eq!(parse_options(&["bind".into(), "idmap".into()]).idmap, Some(false));
        let r = parse_options(&["rbind".into(), "ridmap".into()]);
        assert_eq!((r.idmap, r.data.len()), (Some(true), 0), "not passed on as file system data");
    }
}
