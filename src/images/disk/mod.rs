//! Disk images for `mctl boot -i` and `mctl run -i` (nspawn's `-i/--image`): a raw image file or
//! block device whose partitions ([`layout`], found as systemd's dissect code finds them, with
//! the file systems [`probe`] recognizes) are attached to auto-clearing loop devices and mounted
//! in the launcher's own mount namespace ([`mount`]), so that they vanish with the machine.

use std::io;
use std::path::PathBuf;

pub mod layout;
pub mod mount;
pub mod probe;

pub use layout::{Designator, Layout, Partition, TableKind, dissect};
pub use mount::{MountOptions, MountedImage, mount_privately};
pub use probe::FsType;

/// What is wrong with an image, or which operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    /// An I/O error.
    #[error("{0}")]
    Io(#[source] io::Error),
    /// Neither a partition table nor a file system.
    #[error(
        "no partition table and no file system found ({size} bytes): -i takes a raw disk image with a GPT \
         or MBR partition table, or a single file system (ext4, btrfs, xfs, squashfs, erofs, vfat)"
    )]
    Unrecognized {
        /// The image's size.
        size: u64,
    },
    /// A GPT that fails its checks, primary and backup.
    #[error("corrupt GPT partition table: {0}")]
    CorruptGpt(String),
    /// No partition to use as the root.
    #[error(
        "no root partition in the {table} partition table (partitions: {}); {}",
        if found.is_empty() { "none".to_owned() } else { found.join(", ") },
        if *table == "MBR" {
            "an MBR image needs one bootable partition of type 0x83"
        } else {
            "a GPT image needs a partition of the x86-64 root type 4f68bce3-e8cd-4db1-96e7-fbcaf984b709 \
             (or /usr's 8484680c-9521-48c6-9c11-b0720656f69e), or a single Linux data partition"
        }
    )]
    NoRoot {
        /// `GPT` or `MBR`.
        table: &'static str,
        /// The partitions it has, with their types.
        found: Vec<String>,
    },
    /// Several generic Linux partitions and none marked as the root.
    #[error(
        "several Linux partitions in the {table} partition table and none marked as the root: \
         cannot tell which one is (give the root the Discoverable Partitions type)"
    )]
    SeveralGeneric {
        /// `GPT` or `MBR`.
        table: &'static str,
    },
    /// A partition that ends after the image does.
    #[error(
        "partition {number} ends at byte {end}, beyond the end of the image ({size} bytes): truncated image?"
    )]
    BeyondEnd {
        /// The partition's number.
        number: u32,
        /// Where it ends.
        end: u64,
        /// The image's size.
        size: u64,
    },
    /// A partition to mount holds no file system mctl recognizes.
    #[error("partition {number} ({}) holds no file system known here (ext4, btrfs, xfs, squashfs, erofs, vfat)", designator.name())]
    NoFileSystem {
        /// The partition's number.
        number: u32,
        /// What it was for.
        designator: Designator,
    },
    /// A partition holds something that cannot be mounted here.
    #[error("partition {number} ({}) {why}", designator.name())]
    CannotMount {
        /// The partition's number (0: the whole image).
        number: u32,
        /// What it was for.
        designator: Designator,
        /// Why.
        why: String,
    },
}

/// A step of opening, checking or mounting a disk image that failed, naming the image.
#[derive(Debug, thiserror::Error)]
#[error("disk image {}: cannot {step}: {problem}", path.display())]
pub struct DiskError {
    /// What was being done.
    pub step: &'static str,
    /// The image.
    pub path: PathBuf,
    /// What went wrong.
    #[source]
    pub problem: Problem,
}

impl DiskError {
    pub(crate) fn new(step: &'static str, path: &std::path::Path, problem: Problem) -> Self {
        DiskError { step, path: path.to_owned(), problem }
    }

    pub(crate) fn io<'a>(
        step: &'static str,
        path: &'a std::path::Path,
    ) -> impl FnOnce(io::Error) -> Self + 'a {
        move |e| DiskError::new(step, path, Problem::Io(e))
    }
}

/// The machine name nspawn derives from an image file: its file name without `.raw` (or any
/// other suffix).
pub fn base_name(path: &std::path::Path) -> Option<String> {
    let file = path.file_name()?.to_string_lossy().into_owned();
    let stem = match file.split_once('.') {
        Some((s, _)) if !s.is_empty() => s.to_owned(),
        _ => file,
    };
    Some(stem)
}

/// Why dm-verity (`--root-hash`, `--root-hash-sig`, `--verity-data`) cannot be used on this
/// host; `None` if the kernel has a device mapper with the verity target.
pub fn verity_unavailable() -> Option<String> {
    if !std::path::Path::new("/dev/mapper/control").exists() {
        let dm = std::fs::read_to_string("/proc/misc").unwrap_or_default();
        if !dm.lines().any(|l| l.ends_with(" device-mapper")) {
            return Some(
                "this kernel has no device mapper (no /dev/mapper/control, no device-mapper in /proc/misc)"
                    .into(),
            );
        }
    }
    if !std::path::Path::new("/sys/module/dm_verity").exists() {
        return Some("the kernel's dm-verity target is not loaded (no /sys/module/dm_verity)".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn the_name_is_the_file_name_without_suffixes() {
        assert_eq!(base_name(Path::new("/x/disk.raw")).as_deref(), Some("disk"));
        assert_eq!(base_name(Path::new("/x/fedora.raw.xz")).as_deref(), Some("fedora"));
        assert_eq!(base_name(Path::new("/dev/sdb")).as_deref(), Some("sdb"));
        assert_eq!(base_name(Path::new(".hidden")).as_deref(), Some(".hidden"));
    }

    #[test]
    fn errors_name_the_step_the_image_and_the_problem() {
        let e = DiskError::new(
            "read its partition table",
            Path::new("/i.raw"),
            Problem::Unrecognized { size: 4 },
        );
        let text = e.to_string();
        assert!(
            text.starts_with("disk image /i.raw: cannot read its partition table: no partition table"),
            "{text}"
        );
        assert!(text.contains("no partition table and no file system"), "{text}");
    }
}
