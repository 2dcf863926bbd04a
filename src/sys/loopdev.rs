//! Loop devices: a byte range of a file (a partition of a disk image) as a block device that can
//! be mounted. Attached with `LO_FLAGS_AUTOCLEAR`, so the kernel detaches a device by itself when
//! its last opener goes (our fd, then the mount that holds it): nothing to detach, also after a
//! SIGKILL.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

// <linux/loop.h>; not in the libc crate.
const LOOP_SET_FD: libc::Ioctl = 0x4C00;
const LOOP_CLR_FD: libc::Ioctl = 0x4C01;
const LOOP_SET_STATUS64: libc::Ioctl = 0x4C04;
const LOOP_CONFIGURE: libc::Ioctl = 0x4C0A;
const LOOP_CTL_GET_FREE: libc::Ioctl = 0x4C82;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_NAME_SIZE: usize = 64;
const LO_KEY_SIZE: usize = 32;

/// `struct loop_info64`.
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; LO_KEY_SIZE],
    lo_init: [u64; 2],
}

/// `struct loop_config`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// An attached loop device, open. Dropping it closes our fd: the device detaches itself then,
/// unless a mount holds it.
#[derive(Debug)]
pub struct LoopDevice {
    /// `/dev/loopN`.
    pub path: PathBuf,
    fd: OwnedFd,
}

impl LoopDevice {
    /// The open device.
    pub fn fd(&self) -> BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.fd)
    }
}

/// What to attach: `size` bytes at `offset` of `backing`.
#[derive(Debug, Clone, Copy)]
pub struct Range {
    /// Byte offset in the backing file.
    pub offset: u64,
    /// Length in bytes.
    pub size: u64,
    /// A read-only device (needed when `backing` is open read-only).
    pub read_only: bool,
}

fn ioctl_ptr<T>(fd: BorrowedFd<'_>, request: libc::Ioctl, arg: *const T) -> io::Result<libc::c_int> {
    // SAFETY: every caller passes a request whose argument is a pointer to a T of the layout the
    // kernel expects for it (the #[repr(C)] structs above), live for the duration of the call;
    // the kernel only reads it.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), request, arg) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

fn ioctl_int(fd: BorrowedFd<'_>, request: libc::Ioctl, arg: libc::c_ulong) -> io::Result<libc::c_int> {
    // SAFETY: the requests used with this (LOOP_CTL_GET_FREE, LOOP_SET_FD, LOOP_CLR_FD) take an
    // integer argument, not a pointer: no memory of ours is touched.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), request, arg) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

/// Attaches `range` of `backing` to a free loop device, auto-clearing.
pub fn attach(backing: &File, range: Range) -> io::Result<LoopDevice> {
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/loop-control")
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open /dev/loop-control: {e}")))?;
    // Another process may take the device between GET_FREE and our configure: try again then.
    let mut last = None;
    for _ in 0..32 {
        let n = ioctl_int(std::os::fd::AsFd::as_fd(&control), LOOP_CTL_GET_FREE, 0)?;
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let dev = OpenOptions::new()
            .read(true)
            .write(!range.read_only)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display())))?;
        match configure(&dev, backing, range) {
            Ok(()) => return Ok(LoopDevice { path, fd: dev.into() }),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EBUSY)))
}

fn info(range: Range) -> LoopInfo64 {
    let mut flags = LO_FLAGS_AUTOCLEAR;
    if range.read_only {
        flags |= LO_FLAGS_READ_ONLY;
    }
    LoopInfo64 {
        lo_device: 0,
        lo_inode: 0,
        lo_rdevice: 0,
        lo_offset: range.offset,
        lo_sizelimit: range.size,
        lo_number: 0,
        lo_encrypt_type: 0,
        lo_encrypt_key_size: 0,
        lo_flags: flags,
        lo_file_name: [0; LO_NAME_SIZE],
        lo_crypt_name: [0; LO_NAME_SIZE],
        lo_encrypt_key: [0; LO_KEY_SIZE],
        lo_init: [0; 2],
    }
}

/// LOOP_CONFIGURE (one atomic call), or on kernels without it (EINVAL) LOOP_SET_FD followed
/// by LOOP_SET_STATUS64.
fn configure(dev: &File, backing: &File, range: Range) -> io::Result<()> {
    let dev_fd = std::os::fd::AsFd::as_fd(dev);
    let backing_fd =
        u32::try_from(backing.as_raw_fd()).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    let config = LoopConfig { fd: backing_fd, block_size: 0, info: info(range), reserved: [0; 8] };
    match ioctl_ptr(dev_fd, LOOP_CONFIGURE, &config) {
        Ok(_) => return Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOTTY)) => {}
        Err(e) => return Err(e),
    }
    ioctl_int(dev_fd, LOOP_SET_FD, libc::c_ulong::from(backing_fd))?;
    let status = info(range);
    if let Err(e) = ioctl_ptr(dev_fd, LOOP_SET_STATUS64, &status) {
        // Not configured as asked: give the device back rather than leave it bound.
        let _ = ioctl_int(dev_fd, LOOP_CLR_FD, 0);
        return Err(e);
    }
    Ok(())
}
