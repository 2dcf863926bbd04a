//! Which file system a partition holds, from its superblock's magic (what blkid reports for
//! the types systemd's dissect code will mount, and the two it must recognize to refuse).

use std::io;

use super::layout::Medium;

/// A file system (or other content) found in a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsType {
    /// ext2, ext3 or ext4 (all mounted by the ext4 driver).
    Ext4,
    /// btrfs.
    Btrfs,
    /// XFS.
    Xfs,
    /// FAT (ESPs).
    Vfat,
    /// squashfs (read-only).
    Squashfs,
    /// EROFS (read-only).
    Erofs,
    /// A LUKS container: needs decryption, which mctl does not do.
    Luks,
    /// Swap space: nothing to mount.
    Swap,
}

impl FsType {
    /// The kernel's name for it (mount(2)'s type, /proc/filesystems).
    pub fn name(self) -> &'static str {
        match self {
            FsType::Ext4 => "ext4",
            FsType::Btrfs => "btrfs",
            FsType::Xfs => "xfs",
            FsType::Vfat => "vfat",
            FsType::Squashfs => "squashfs",
            FsType::Erofs => "erofs",
            FsType::Luks => "crypto_LUKS",
            FsType::Swap => "swap",
        }
    }

    /// File systems that cannot be written at all.
    pub fn read_only_fs(self) -> bool {
        matches!(self, FsType::Squashfs | FsType::Erofs)
    }

    /// Whether a read-only mount needs `norecovery` to keep the driver from replaying its
    /// journal into the image (systemd's list).
    pub fn needs_norecovery(self) -> bool {
        matches!(self, FsType::Ext4 | FsType::Xfs | FsType::Btrfs)
    }
}

/// The magic numbers, each at its offset from the start of the file system.
const MAGICS: &[(u64, &[u8], FsType)] = &[
    (0, b"LUKS\xba\xbe", FsType::Luks),
    (0, b"XFSB", FsType::Xfs),
    (0, b"hsqs", FsType::Squashfs),
    (1024, &0xE0F5_E1E2u32.to_le_bytes(), FsType::Erofs),
    (1080, &0xEF53u16.to_le_bytes(), FsType::Ext4),
    (65_600, b"_BHRfS_M", FsType::Btrfs),
    (4086, b"SWAPSPACE2", FsType::Swap),
];

/// Probes the `size` bytes at `offset` of `m`; `None` when nothing known is there.
pub fn probe(m: &(impl Medium + ?Sized), offset: u64, size: u64) -> io::Result<Option<FsType>> {
    for (at, magic, fs) in MAGICS {
        let len = magic.len() as u64;
        if at + len > size {
            continue;
        }
        let mut buf = vec![0u8; magic.len()];
        m.read_exact_at(&mut buf, offset + at)?;
        if buf == *magic {
            return Ok(Some(*fs));
        }
    }
    if size >= 512 {
        let mut boot = [0u8; 512];
        m.read_exact_at(&mut boot, offset)?;
        if is_fat(&boot) {
            return Ok(Some(FsType::Vfat));
        }
    }
    Ok(None)
}

/// A FAT boot sector: a jump instruction, the boot signature, a power-of-two sector size and
/// the type string of FAT12/16 or FAT32 (a DOS partition table has none of the last two).
fn is_fat(b: &[u8; 512]) -> bool {
    let jump = b[0] == 0xEB || b[0] == 0xE9;
    let signature = b[510..512] == [0x55, 0xAA];
    let sector = u16::from_le_bytes([b[11], b[12]]);
    let sector_ok = (512..=4096).contains(&sector) && sector.is_power_of_two();
    let label = &b[54..57] == b"FAT" || &b[82..87] == b"FAT32";
    jump && signature && sector_ok && label
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(at: usize, bytes: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; 128 * 1024];
        v[at..at + bytes.len()].copy_from_slice(bytes);
        v
    }

    #[test]
    fn each_magic_is_recognized_at_its_offset() {
        let cases: [(usize, &[u8], FsType); 6] = [
            (1080, &[0x53, 0xEF], FsType::Ext4),
            (65_600, b"_BHRfS_M", FsType::Btrfs),
            (0, b"XFSB", FsType::Xfs),
            (0, b"hsqs", FsType::Squashfs),
            (1024, &[0xE2, 0xE1, 0xF5, 0xE0], FsType::Erofs),
            (0, b"LUKS\xba\xbe", FsType::Luks),
        ];
        for (at, magic, fs) in cases {
            let img = with(at, magic);
            assert_eq!(probe(img.as_slice(), 0, img.len() as u64).unwrap(), Some(fs), "{fs:?}");
        }
        let zeros = vec![0u8; 128 * 1024];
        assert_eq!(probe(zeros.as_slice(), 0, zeros.len() as u64).unwrap(), None);
    }

    #[test]
    fn probing_honours_the_partition_offset_and_size() {
        let mut img = vec![0u8; 8192];
        img[4096 + 1080..4096 + 1082].copy_from_slice(&[0x53, 0xEF]);
        assert_eq!(probe(img.as_slice(), 4096, 4096).unwrap(), Some(FsType::Ext4));
        assert_eq!(probe(img.as_slice(), 0, 4096).unwrap(), None);
        // btrfs's magic lies beyond a small partition: not looked for, and no read past it.
        assert_eq!(probe(img.as_slice(), 4096, 1000).unwrap(), None);
    }

    #[test]
    fn a_fat_boot_sector_is_vfat_but_a_partition_table_is_not() {
        let mut b = vec![0u8; 4096];
        b[0] = 0xEB;
        b[11..13].copy_from_slice(&512u16.to_le_bytes());
        b[82..87].copy_from_slice(b"FAT32");
        b[510] = 0x55;
        b[511] = 0xAA;
        assert_eq!(probe(b.as_slice(), 0, 4096).unwrap(), Some(FsType::Vfat));
        b[0] = 0;
        assert_eq!(probe(b.as_slice(), 0, 4096).unwrap(), None);
    }
}
