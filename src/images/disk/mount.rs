//! Mounting a disk image's partitions for a launch: in a mount namespace of the launcher's own
//! (the machine's is copied from it), on loop devices that detach themselves when the last mount
//! of them goes. Nothing is mounted on the host and no loop device outlives the machine, whether
//! the launcher exits, fails half-way or is killed.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use super::layout::{Designator, Layout, Partition};
use super::{DiskError, FsType, Problem};
use crate::sys::loopdev;

/// How to mount an image.
#[derive(Debug, Clone)]
pub struct MountOptions<'a> {
    /// `--read-only`: every partition read-only, the image opened read-only and locked shared.
    pub read_only: bool,
    /// `-x`: the machine runs on a copy of the image that is deleted when it ends (nspawn's way).
    pub ephemeral: bool,
    /// The launcher's runtime directory (`/run/mctl`): the mount point lives beneath it.
    pub runtime_dir: &'a Path,
}

/// An image mounted in the launcher's mount namespace.
#[derive(Debug)]
pub struct MountedImage {
    /// The machine's tree (only visible in this process's mount namespace and its children's).
    pub root: PathBuf,
    /// Whether the root file system is mounted read-only.
    pub read_only: bool,
    /// What was found in the image.
    pub layout: Layout,
    /// Where each partition went in the machine, in mount order.
    pub mounted: Vec<(Designator, PathBuf)>,
    /// The image's BSD lock (exclusive, shared when read-only), held while the machine runs.
    _lock: File,
}

/// Opens, locks and dissects `image` (a regular file or block device), then mounts its
/// partitions in a new mount namespace of the calling process, which must be single-threaded.
pub fn mount_privately(image: &Path, opts: &MountOptions<'_>) -> Result<MountedImage, DiskError> {
    let writable = !opts.read_only && !opts.ephemeral;
    let file = open_image(image, writable)?;
    let lock = lock(image, &file, writable)?;
    let backing = if opts.ephemeral { private_copy(image, &file)? } else { file };
    let layout =
        super::dissect(&backing).map_err(|p| DiskError::new("read its partition table", image, p))?;
    if let Some(p) = layout.partitions.iter().find(|p| !mountable(p.fstype).is_empty()) {
        let why = mountable(p.fstype);
        return Err(DiskError::new(
            "mount it",
            image,
            Problem::CannotMount { number: p.number, designator: p.designator, why },
        ));
    }
    let base = private_namespace(opts.runtime_dir)
        .map_err(DiskError::io("set up a private mount point for", image))?;
    let root = base.join("root");
    let result = mount_all(image, &backing, &layout, &root, opts.read_only);
    match result {
        Ok(mounted) => {
            let read_only = opts.read_only || layout.root().is_some_and(|r| r.read_only);
            Ok(MountedImage { root, read_only, layout, mounted, _lock: lock })
        }
        Err(e) => {
            // Unmounting releases the loop devices, which then detach themselves.
            let _ = nix::mount::umount2(&base, MntFlags::MNT_DETACH);
            Err(e)
        }
    }
}

/// Opens the image, read-write when the machine may write it.
fn open_image(image: &Path, writable: bool) -> Result<File, DiskError> {
    let file = OpenOptions::new()
        .read(true)
        .write(writable)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(image)
        .map_err(|e| {
            let problem = match e.raw_os_error() {
                Some(libc::EROFS | libc::EACCES | libc::EPERM) if writable => Problem::Io(io::Error::new(
                    e.kind(),
                    format!("{e}; the image cannot be written: boot it with --read-only or -x"),
                )),
                _ => Problem::Io(e),
            };
            DiskError::new("open it", image, problem)
        })?;
    let kind = file.metadata().map_err(DiskError::io("inspect it", image))?.file_type();
    if !kind.is_file() && !kind.is_block_device() {
        return Err(DiskError::new(
            "use it",
            image,
            Problem::Io(io::Error::other("not a regular file or block device (-D takes directories)")),
        ));
    }
    Ok(file)
}

/// nspawn's lock: exclusive for a machine that writes the image, shared otherwise. A BSD lock
/// belongs to the open file, which the loop devices hold too: it lasts as long as the machine.
fn lock(image: &Path, file: &File, exclusive: bool) -> Result<File, DiskError> {
    use rustix::fs::FlockOperation;
    let how = if exclusive {
        FlockOperation::NonBlockingLockExclusive
    } else {
        FlockOperation::NonBlockingLockShared
    };
    rustix::fs::flock(file, how).map_err(|e| {
        let problem = if e == rustix::io::Errno::WOULDBLOCK {
            Problem::Io(io::Error::other("it is in use by another machine"))
        } else {
            Problem::Io(e.into())
        };
        DiskError::new("lock", image, problem)
    })?;
    file.try_clone().map_err(DiskError::io("lock", image))
}

/// `-x`: a copy of the image as an unnamed file beside it (reflinked where the file system can),
/// so that it is gone once the loop devices let go of it, however the launcher ends.
fn private_copy(image: &Path, file: &File) -> Result<File, DiskError> {
    let dir = image.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let copy = OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
        .open(dir)
        .map_err(DiskError::io("make the -x copy (an unnamed file beside it) of", image))?;
    if rustix::fs::ioctl_ficlone(&copy, file).is_err() {
        let mut from = file;
        let mut to = &copy;
        io::copy(&mut from, &mut to).map_err(DiskError::io("copy for -x", image))?;
    }
    Ok(copy)
}

/// Why the kernel cannot mount `fs` here (empty when it can).
fn mountable(fs: FsType) -> String {
    match fs {
        FsType::Luks => "is encrypted (LUKS): mctl does not decrypt partitions".into(),
        FsType::Swap => "is swap space, not a file system".into(),
        fs if !kernel_has(fs.name()) => format!("holds {}, which this kernel cannot mount", fs.name()),
        _ => String::new(),
    }
}

fn kernel_has(fs: &str) -> bool {
    let list = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    list.lines().any(|l| l.split_whitespace().last() == Some(fs))
}

/// Moves the calling process into a mount namespace of its own that receives the host's mounts
/// but sends none back, with a private tmpfs on `RUNTIME_DIR/disk-image` (the same empty host
/// directory for every launcher: each covers it in its own namespace). Returns that directory.
fn private_namespace(runtime_dir: &Path) -> io::Result<PathBuf> {
    let base = runtime_dir.join("disk-image");
    std::fs::create_dir_all(&base)?;
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
    nix::mount::mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)?;
    nix::mount::mount(
        Some("tmpfs"),
        &base,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0700"),
    )?;
    std::fs::create_dir(base.join("root"))?;
    Ok(base)
}

/// Mounts the root (or a tmpfs for a /usr-only image), then the other partitions inside it,
/// in systemd's order; returns where each went.
fn mount_all(
    image: &Path,
    backing: &File,
    layout: &Layout,
    root: &Path,
    read_only: bool,
) -> Result<Vec<(Designator, PathBuf)>, DiskError> {
    let mut mounted = Vec::new();
    match layout.root() {
        Some(p) => mount_partition(image, backing, p, root, read_only)?,
        None => nix::mount::mount(Some("rootfs"), root, Some("tmpfs"), MsFlags::MS_NODEV, Some("mode=0755"))
            .map_err(|e| DiskError::io("mount a tmpfs root for", image)(e.into()))?,
    }
    mounted.push((Designator::Root, PathBuf::from("/")));
    let root_dir = File::open(root).map_err(DiskError::io("open the mounted root of", image))?;
    for p in layout.partitions.iter().filter(|p| p.designator != Designator::Root) {
        let place = match p.designator {
            Designator::Esp => esp_place(&root_dir, mounted.iter().any(|(d, _)| *d == Designator::Xbootldr)),
            d => PathBuf::from(d.mount_point()),
        };
        let dir = mount_point_in(&root_dir, &place).map_err(|e| {
            DiskError::new(
                "mount it",
                image,
                Problem::CannotMount {
                    number: p.number,
                    designator: p.designator,
                    why: format!("has no mount point {} in the root file system: {e}", place.display()),
                },
            )
        })?;
        let target = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        mount_partition(image, backing, p, &target, read_only)?;
        mounted.push((p.designator, place));
    }
    Ok(mounted)
}

/// systemd's rule for the ESP: `/efi` if the tree has it; else `/boot` if it exists, is empty
/// and holds no XBOOTLDR partition; else `/efi`, made.
fn esp_place(root: &File, xbootldr: bool) -> PathBuf {
    let open = |p: &str| {
        crate::sys::linux::open_in_root(root.as_fd(), Path::new(p), libc::O_RDONLY | libc::O_DIRECTORY)
    };
    if open("/efi").is_ok() || xbootldr {
        return PathBuf::from("/efi");
    }
    let empty_boot = open("/boot").ok().and_then(|fd| {
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        std::fs::read_dir(path).ok().map(|mut d| d.next().is_none())
    });
    PathBuf::from(if empty_boot == Some(true) { "/boot" } else { "/efi" })
}

/// Opens (making it where missing, as systemd does) the directory `place` of the tree at
/// `root`, resolved inside that tree so that the image's symlinks cannot lead the mount out.
fn mount_point_in(root: &File, place: &Path) -> io::Result<OwnedFd> {
    let flags = libc::O_PATH | libc::O_DIRECTORY;
    let mut dir = crate::sys::linux::open_in_root(root.as_fd(), Path::new("/"), flags)?;
    let mut walked = PathBuf::from("/");
    for c in place.components().skip(1) {
        walked.push(c);
        match crate::sys::linux::open_in_root(root.as_fd(), &walked, flags) {
            Ok(fd) => dir = fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                match rustix::fs::mkdirat(&dir, c.as_os_str(), rustix::fs::Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                dir = crate::sys::linux::open_in_root(root.as_fd(), &walked, flags)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(dir)
}

/// Attaches `p` to a loop device and mounts it on `target` with systemd's options: nodev;
/// read-only (with `norecovery`, so no journal is replayed into the image) when asked or
/// flagged; nosuid, noexec, nosymfollow and umask=0077 for the boot partitions; nosuid for
/// /var/tmp.
fn mount_partition(
    image: &Path,
    backing: &File,
    p: &Partition,
    target: &Path,
    all_read_only: bool,
) -> Result<(), DiskError> {
    let read_only = p.read_only || all_read_only;
    let range = loopdev::Range { offset: p.offset, size: p.size, read_only };
    let failed = |step: &'static str, what: String, e: io::Error| {
        DiskError::new(
            step,
            image,
            Problem::CannotMount { number: p.number, designator: p.designator, why: format!("{what}: {e}") },
        )
    };
    let dev = loopdev::attach(backing, range)
        .map_err(|e| failed("attach a loop device to it", "cannot be attached to a loop device".into(), e))?;
    let mut flags = MsFlags::MS_NODEV;
    let mut data = Vec::new();
    if read_only {
        flags |= MsFlags::MS_RDONLY;
        if p.fstype.needs_norecovery() {
            data.push("norecovery");
        }
    }
    match p.designator {
        Designator::Esp | Designator::Xbootldr => {
            flags |=
                MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::from_bits_retain(libc::MS_NOSYMFOLLOW);
            if p.fstype == FsType::Vfat {
                data.push("umask=0077");
            }
        }
        Designator::Tmp => flags |= MsFlags::MS_NOSUID,
        _ => {}
    }
    let data = data.join(",");
    nix::mount::mount(
        Some(&dev.path),
        target,
        Some(p.fstype.name()),
        flags,
        (!data.is_empty()).then_some(data.as_str()),
    )
    .map_err(|e| {
        failed(
            "mount it",
            format!("cannot be mounted as {} from {}", p.fstype.name(), dev.path.display()),
            e.into(),
        )
    })?;
    // The mount holds the device now; our fd goes, and with the mount the device.
    drop(dev);
    Ok(())
}
