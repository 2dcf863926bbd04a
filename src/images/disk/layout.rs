//! Finding the partitions of a disk image, as systemd's dissect code does for nspawn's `-i`:
//! a GPT whose partitions carry the Discoverable Partitions Specification's type UUIDs, an MBR
//! with one bootable Linux partition, or a single file system without a table. Pure functions
//! over a [`Medium`], so tests build images in memory.

use std::io;

use uuid::{Uuid, uuid};

use super::Problem;
use super::probe::{self, FsType};

/// Something partitions are read from: an image file, a block device, or bytes in a test.
pub trait Medium {
    /// Its size in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`; reading past the end is an error.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl Medium for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start.checked_add(buf.len()).ok_or(io::ErrorKind::UnexpectedEof)?;
        let src = self.get(start..end).ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

impl Medium for std::fs::File {
    fn size(&self) -> u64 {
        use std::io::{Seek, SeekFrom};
        // Seeking works for block devices too, where the metadata says 0.
        let mut f: &std::fs::File = self;
        f.seek(SeekFrom::End(0)).unwrap_or(0)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

/// Where a partition goes in the machine (the specification's designators nspawn mounts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Designator {
    /// The root file system.
    Root,
    /// `/usr`.
    Usr,
    /// `/home`.
    Home,
    /// `/srv`.
    Srv,
    /// `/var`.
    Var,
    /// `/var/tmp` (the specification's "temporary data" partition).
    Tmp,
    /// The Extended Boot Loader partition, at `/boot`.
    Xbootldr,
    /// The EFI System Partition, at `/efi` (or an empty `/boot`: see the mount step).
    Esp,
}

impl Designator {
    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Designator::Root => "root",
            Designator::Usr => "usr",
            Designator::Home => "home",
            Designator::Srv => "srv",
            Designator::Var => "var",
            Designator::Tmp => "tmp",
            Designator::Xbootldr => "xbootldr",
            Designator::Esp => "esp",
        }
    }

    /// Where it is mounted in the machine (the ESP's place is decided when mounting).
    pub fn mount_point(self) -> &'static str {
        match self {
            Designator::Root => "/",
            Designator::Usr => "/usr",
            Designator::Home => "/home",
            Designator::Srv => "/srv",
            Designator::Var => "/var",
            Designator::Tmp => "/var/tmp",
            Designator::Xbootldr => "/boot",
            Designator::Esp => "/efi",
        }
    }

    /// Whether the GPT read-only flag applies (it does not to the boot partitions, as in systemd).
    fn honours_read_only(self) -> bool {
        !matches!(self, Designator::Esp | Designator::Xbootldr)
    }
}

// The Discoverable Partitions Specification's type UUIDs (x86-64 host; 32-bit x86 root and /usr
// are taken as the secondary architecture, as systemd does).
const ROOT_X86_64: Uuid = uuid!("4f68bce3-e8cd-4db1-96e7-fbcaf984b709");
const ROOT_X86: Uuid = uuid!("44479540-f297-41b2-9af7-d131d5f0458a");
const USR_X86_64: Uuid = uuid!("8484680c-9521-48c6-9c11-b0720656f69e");
const USR_X86: Uuid = uuid!("75250d76-8cc6-458e-bd66-bd47cc81a812");
const ROOT_VERITY_X86_64: Uuid = uuid!("2c7357ed-ebd2-46d9-aec1-23d437ec2bf5");
const USR_VERITY_X86_64: Uuid = uuid!("77ff5f63-e7b6-4633-acf4-1565b864c0e6");
const HOME: Uuid = uuid!("933ac7e1-2eb4-4f13-b844-0e14e2aef915");
const SRV: Uuid = uuid!("3b8f8425-20e0-4f3b-907f-1a25a76f98e8");
const VAR: Uuid = uuid!("4d21b016-b534-45c2-a9fb-5c16e091fd2d");
const TMP: Uuid = uuid!("7ec6f557-3bc5-4aca-b293-16ef5df639d1");
const ESP: Uuid = uuid!("c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
const XBOOTLDR: Uuid = uuid!("bc13c2ff-59e6-4262-a352-b275fd779f72");
/// "Linux filesystem data": the root when it is the only one and nothing is marked root.
const LINUX_GENERIC: Uuid = uuid!("0fc63daf-8483-4772-8e79-3d69d8477de4");

/// The type UUID of the x86-64 root partition, for callers that build images.
pub const ROOT_X86_64_TYPE: Uuid = ROOT_X86_64;

/// GPT partition attribute bits the specification defines.
pub const FLAG_GROWFS: u64 = 1 << 59;
/// Mounted read-only.
pub const FLAG_READ_ONLY: u64 = 1 << 60;
/// Not mounted automatically.
pub const FLAG_NO_AUTO: u64 = 1 << 63;

/// What a GPT type UUID means here: a designator, and a rank among candidates for it (lower wins:
/// the host's architecture before the secondary one).
fn classify(t: &Uuid) -> Option<(Designator, u8)> {
    Some(match *t {
        ROOT_X86_64 => (Designator::Root, 0),
        ROOT_X86 => (Designator::Root, 1),
        USR_X86_64 => (Designator::Usr, 0),
        USR_X86 => (Designator::Usr, 1),
        HOME => (Designator::Home, 0),
        SRV => (Designator::Srv, 0),
        VAR => (Designator::Var, 0),
        TMP => (Designator::Tmp, 0),
        ESP => (Designator::Esp, 0),
        XBOOTLDR => (Designator::Xbootldr, 0),
        _ => return None,
    })
}

/// The kind of table an image has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    /// GUID partition table.
    Gpt,
    /// DOS/MBR partition table.
    Mbr,
    /// A single file system spanning the image.
    None,
}

/// One partition to mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Where it goes.
    pub designator: Designator,
    /// Its number in the table (1-based; 0 for a file system without a table).
    pub number: u32,
    /// Byte offset in the image.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
    /// Read-only by its GPT flag or because its file system cannot be written.
    pub read_only: bool,
    /// The file system found in it.
    pub fstype: FsType,
}

/// What an image holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Its table.
    pub table: TableKind,
    /// The partitions to mount, in mount order (root or /usr first).
    pub partitions: Vec<Partition>,
    /// A verity hash partition was seen (usable only with `--root-hash`).
    pub has_verity: bool,
}

impl Layout {
    /// The root partition, if the image has one (an image with only /usr gets a tmpfs root).
    pub fn root(&self) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.designator == Designator::Root)
    }
}

/// A partition found in a table, before its file system is probed.
#[derive(Debug, Clone)]
struct Candidate {
    designator: Designator,
    rank: u8,
    number: u32,
    offset: u64,
    size: u64,
    read_only: bool,
}

/// Finds the partitions of the image on `m`, as nspawn 252 does (systemd's dissect flags
/// GENERIC_ROOT, REQUIRE_ROOT, USR_NO_ROOT and RELAX_VAR_CHECK).
pub fn dissect(m: &(impl Medium + ?Sized)) -> Result<Layout, Problem> {
    let size = m.size();
    let mut sector0 = [0u8; 512];
    if size < 512 {
        return Err(Problem::Unrecognized { size });
    }
    m.read_exact_at(&mut sector0, 0).map_err(Problem::Io)?;
    let mbr = parse_mbr(&sector0);
    let (table, candidates, has_verity) = if mbr.as_ref().is_some_and(|e| e.iter().any(|p| p.kind == 0xEE)) {
        let (c, v) = gpt_candidates(m)?;
        (TableKind::Gpt, c, v)
    } else if let Some(fs) = probe::probe(m, 0, size).map_err(Problem::Io)? {
        let root = Partition {
            designator: Designator::Root,
            number: 0,
            offset: 0,
            size,
            read_only: fs.read_only_fs(),
            fstype: fs,
        };
        return Ok(Layout { table: TableKind::None, partitions: vec![root], has_verity: false });
    } else if let Some(entries) = mbr.filter(|e| !e.is_empty()) {
        (TableKind::Mbr, mbr_candidates(&entries, size)?, false)
    } else {
        return Err(Problem::Unrecognized { size });
    };
    let mut partitions = Vec::new();
    for c in candidates {
        let fstype = probe::probe(m, c.offset, c.size)
            .map_err(Problem::Io)?
            .ok_or(Problem::NoFileSystem { number: c.number, designator: c.designator })?;
        partitions.push(Partition {
            designator: c.designator,
            number: c.number,
            offset: c.offset,
            size: c.size,
            read_only: c.read_only || fstype.read_only_fs(),
            fstype,
        });
    }
    partitions.sort_by_key(|p| p.designator);
    Ok(Layout { table, partitions, has_verity })
}

/// One MBR entry.
#[derive(Debug, Clone, Copy)]
struct MbrEntry {
    number: u32,
    bootable: bool,
    kind: u8,
    start: u32,
    sectors: u32,
}

/// The used primary entries of a DOS table, or `None` without the boot signature (or with an
/// entry whose status byte no table has, which means a boot sector, not a table).
fn parse_mbr(sector: &[u8; 512]) -> Option<Vec<MbrEntry>> {
    if sector[510..512] != [0x55, 0xAA] {
        return None;
    }
    let mut out = Vec::new();
    for (i, e) in sector[446..510].chunks_exact(16).enumerate() {
        if e[0] != 0 && e[0] != 0x80 {
            return None;
        }
        let kind = e[4];
        let start = u32::from_le_bytes([e[8], e[9], e[10], e[11]]);
        let sectors = u32::from_le_bytes([e[12], e[13], e[14], e[15]]);
        if kind != 0 && sectors != 0 {
            let number = u32::try_from(i).unwrap_or(0) + 1;
            out.push(MbrEntry { number, bootable: e[0] == 0x80, kind, start, sectors });
        }
    }
    Some(out)
}

/// systemd's MBR rule: the one bootable Linux (0x83) partition is the root; a 0xEA partition is
/// the Extended Boot Loader partition. Extended partitions are not followed.
fn mbr_candidates(entries: &[MbrEntry], size: u64) -> Result<Vec<Candidate>, Problem> {
    let mut out: Vec<Candidate> = Vec::new();
    let mut roots = 0;
    for e in entries {
        let designator = match (e.kind, e.bootable) {
            (0x83, true) => Designator::Root,
            (0xEA, _) => Designator::Xbootldr,
            _ => continue,
        };
        let (offset, len) = (u64::from(e.start) * 512, u64::from(e.sectors) * 512);
        if offset + len > size {
            return Err(Problem::BeyondEnd { number: e.number, end: offset + len, size });
        }
        if designator == Designator::Root {
            roots += 1;
        }
        if out.iter().any(|c| c.designator == designator) {
            continue;
        }
        out.push(Candidate { designator, rank: 0, number: e.number, offset, size: len, read_only: false });
    }
    if roots > 1 {
        return Err(Problem::SeveralGeneric { table: "MBR" });
    }
    if roots == 0 {
        let found = entries.iter().map(|e| format!("{} (type 0x{:02x})", e.number, e.kind)).collect();
        return Err(Problem::NoRoot { table: "MBR", found });
    }
    Ok(out)
}

/// The fields of a GPT header that matter here.
#[derive(Debug, Clone, Copy)]
struct GptHeader {
    my_lba: u64,
    first_usable: u64,
    last_usable: u64,
    entries_lba: u64,
    entries: u32,
    entry_size: u32,
    entries_crc: u32,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The sector size whose LBA 1 holds a GPT signature (512 to 4096, as systemd probes it).
fn gpt_sector_size(m: &(impl Medium + ?Sized)) -> Result<u64, Problem> {
    let mut found = None;
    for sz in [512u64, 1024, 2048, 4096] {
        let mut sig = [0u8; 8];
        if sz * 2 > m.size() {
            break;
        }
        m.read_exact_at(&mut sig, sz).map_err(Problem::Io)?;
        if &sig == b"EFI PART" {
            if found.is_some() {
                return Err(Problem::CorruptGpt("GPT headers for several sector sizes".into()));
            }
            found = Some(sz);
        }
    }
    // A protective MBR without any header: nothing to fall back on either.
    found.ok_or_else(|| Problem::CorruptGpt("a protective MBR but no GPT header at LBA 1".into()))
}

/// Reads and checks the header at `lba` (CRC32 of the header and of its entry array, as blkid
/// does); returns it with its entry array.
fn read_gpt(m: &(impl Medium + ?Sized), sector: u64, lba: u64) -> Result<(GptHeader, Vec<u8>), String> {
    let mut s = vec![0u8; usize::try_from(sector).unwrap_or(512)];
    let end = lba.checked_add(1).and_then(|n| n.checked_mul(sector)).unwrap_or(u64::MAX);
    if end > m.size() {
        return Err(format!("the header at LBA {lba} lies beyond the end of the image"));
    }
    m.read_exact_at(&mut s, lba * sector).map_err(|e| format!("cannot read LBA {lba}: {e}"))?;
    if &s[0..8] != b"EFI PART" {
        return Err(format!("no GPT signature at LBA {lba}"));
    }
    if le32(&s, 8) != 0x0001_0000 {
        return Err(format!("unknown GPT revision 0x{:08x} at LBA {lba}", le32(&s, 8)));
    }
    let header_size = le32(&s, 12) as usize;
    if header_size < 92 || header_size > s.len() {
        return Err(format!("implausible GPT header size {header_size} at LBA {lba}"));
    }
    let stored = le32(&s, 16);
    let mut copy = s[..header_size].to_vec();
    copy[16..20].fill(0);
    if crc32fast::hash(&copy) != stored {
        return Err(format!("the GPT header at LBA {lba} fails its CRC32 check"));
    }
    let h = GptHeader {
        my_lba: le64(&s, 24),
        first_usable: le64(&s, 40),
        last_usable: le64(&s, 48),
        entries_lba: le64(&s, 72),
        entries: le32(&s, 80),
        entry_size: le32(&s, 84),
        entries_crc: le32(&s, 88),
    };
    if h.my_lba != lba {
        return Err(format!("the GPT header at LBA {lba} claims to be at LBA {}", h.my_lba));
    }
    if h.entry_size < 128 || !h.entry_size.is_power_of_two() || h.entries > 4096 {
        return Err(format!(
            "implausible GPT entry array at LBA {lba} ({} entries of {} bytes)",
            h.entries, h.entry_size
        ));
    }
    let len = u64::from(h.entries) * u64::from(h.entry_size);
    if h.entries_lba.saturating_mul(sector).saturating_add(len) > m.size() {
        return Err(format!(
            "the GPT entry array of the header at LBA {lba} lies beyond the end of the image"
        ));
    }
    let mut entries = vec![0u8; usize::try_from(len).unwrap_or(0)];
    m.read_exact_at(&mut entries, h.entries_lba * sector)
        .map_err(|e| format!("cannot read the GPT entries at LBA {}: {e}", h.entries_lba))?;
    if crc32fast::hash(&entries) != h.entries_crc {
        return Err(format!("the GPT entry array of the header at LBA {lba} fails its CRC32 check"));
    }
    Ok((h, entries))
}

/// The partitions of a GPT: the primary header, else the backup at the end of the image.
fn gpt_candidates(m: &(impl Medium + ?Sized)) -> Result<(Vec<Candidate>, bool), Problem> {
    let sector = gpt_sector_size(m)?;
    let (h, entries) = match read_gpt(m, sector, 1) {
        Ok(found) => found,
        Err(primary) => {
            let last = m.size() / sector - 1;
            read_gpt(m, sector, last).map_err(|backup| {
                Problem::CorruptGpt(format!("{primary}, and the backup header: {backup}"))
            })?
        }
    };
    let mut found: Vec<Candidate> = Vec::new();
    let (mut generic, mut generics, mut has_verity) = (None, 0, false);
    let mut seen = Vec::new();
    for (i, e) in entries.chunks_exact(h.entry_size as usize).enumerate() {
        let number = u32::try_from(i).unwrap_or(u32::MAX) + 1;
        let kind = Uuid::from_bytes_le(e[0..16].try_into().expect("16 bytes"));
        if kind.is_nil() {
            continue;
        }
        let (first, last, flags) = (le64(e, 32), le64(e, 40), le64(e, 48));
        if first > last || first < h.first_usable || last > h.last_usable {
            return Err(Problem::CorruptGpt(format!(
                "partition {number} spans LBA {first}..{last}, outside the usable {}..{}",
                h.first_usable, h.last_usable
            )));
        }
        let (offset, len) = (first * sector, (last - first + 1) * sector);
        if offset + len > m.size() {
            return Err(Problem::BeyondEnd { number, end: offset + len, size: m.size() });
        }
        seen.push(format!("{number} ({})", type_name(&kind)));
        if flags & FLAG_NO_AUTO != 0 {
            continue;
        }
        if kind == ROOT_VERITY_X86_64 || kind == USR_VERITY_X86_64 {
            has_verity = true;
            continue;
        }
        if kind == LINUX_GENERIC {
            generics += 1;
            generic.get_or_insert(Candidate {
                designator: Designator::Root,
                rank: u8::MAX,
                number,
                offset,
                size: len,
                read_only: flags & FLAG_READ_ONLY != 0,
            });
            continue;
        }
        let Some((designator, rank)) = classify(&kind) else { continue };
        let read_only = designator.honours_read_only() && flags & FLAG_READ_ONLY != 0;
        let candidate = Candidate { designator, rank, number, offset, size: len, read_only };
        match found.iter_mut().find(|c| c.designator == designator) {
            // The first of a kind wins, except that the host's architecture beats another.
            Some(c) if rank < c.rank => *c = candidate,
            Some(_) => {}
            None => found.push(candidate),
        }
    }
    let root_or_usr =
        |f: &[Candidate]| f.iter().any(|c| matches!(c.designator, Designator::Root | Designator::Usr));
    if !root_or_usr(&found) {
        if generics > 1 {
            return Err(Problem::SeveralGeneric { table: "GPT" });
        }
        found.extend(generic);
    }
    if !root_or_usr(&found) {
        return Err(Problem::NoRoot { table: "GPT", found: seen });
    }
    Ok((found, has_verity))
}

/// A GPT type's name in messages.
fn type_name(t: &Uuid) -> String {
    match classify(t) {
        Some((d, _)) => d.name().to_owned(),
        None if *t == LINUX_GENERIC => "linux-generic".into(),
        None if *t == ROOT_VERITY_X86_64 || *t == USR_VERITY_X86_64 => "verity".into(),
        None => t.to_string(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A GPT disk image of `sectors` 512-byte sectors with `parts` (type, first LBA, last LBA,
    /// attribute flags), primary and backup headers, and a protective MBR.
    pub(crate) fn gpt_image(sectors: u64, parts: &[(Uuid, u64, u64, u64)]) -> Vec<u8> {
        let mut img = vec![0u8; usize::try_from(sectors * 512).unwrap()];
        img[446 + 4] = 0xEE;
        img[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
        img[446 + 12..446 + 16].copy_from_slice(&u32::try_from(sectors - 1).unwrap().to_le_bytes());
        img[510] = 0x55;
        img[511] = 0xAA;
        let mut entries = vec![0u8; 128 * 128];
        for (i, (t, first, last, flags)) in parts.iter().enumerate() {
            let e = &mut entries[i * 128..(i + 1) * 128];
            e[0..16].copy_from_slice(&t.to_bytes_le());
            e[16..32].copy_from_slice(Uuid::new_v4().as_bytes());
            e[32..40].copy_from_slice(&first.to_le_bytes());
            e[40..48].copy_from_slice(&last.to_le_bytes());
            e[48..56].copy_from_slice(&flags.to_le_bytes());
        }
        let last = sectors - 1;
        let backup_entries = last - 32;
        for (my, alt, entries_lba) in [(1, last, 2), (last, 1, backup_entries)] {
            let at = usize::try_from(entries_lba * 512).unwrap();
            img[at..at + entries.len()].copy_from_slice(&entries);
            let mut h = [0u8; 92];
            h[0..8].copy_from_slice(b"EFI PART");
            h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
            h[12..16].copy_from_slice(&92u32.to_le_bytes());
            h[24..32].copy_from_slice(&u64::to_le_bytes(my));
            h[32..40].copy_from_slice(&u64::to_le_bytes(alt));
            h[40..48].copy_from_slice(&34u64.to_le_bytes());
            h[48..56].copy_from_slice(&(last - 33).to_le_bytes());
            h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
            h[80..84].copy_from_slice(&128u32.to_le_bytes());
            h[84..88].copy_from_slice(&128u32.to_le_bytes());
            h[88..92].copy_from_slice(&crc32fast::hash(&entries).to_le_bytes());
            let crc = crc32fast::hash(&h);
            h[16..20].copy_from_slice(&crc.to_le_bytes());
            let at = usize::try_from(my * 512).unwrap();
            img[at..at + 92].copy_from_slice(&h);
        }
        img
    }

    /// Puts an ext4 superblock magic into the partition at `lba`.
    pub(crate) fn put_ext4(img: &mut [u8], lba: u64) {
        let at = usize::try_from(lba * 512).unwrap() + 1080;
        img[at..at + 2].copy_from_slice(&0xEF53u16.to_le_bytes());
    }

    fn put_squashfs(img: &mut [u8], lba: u64) {
        let at = usize::try_from(lba * 512).unwrap();
        img[at..at + 4].copy_from_slice(b"hsqs");
    }

    const SECTORS: u64 = 2048;

    #[test]
    fn gpt_root_and_srv_are_found_with_offsets_and_flags() {
        let mut img = gpt_image(SECTORS, &[(ROOT_X86_64, 64, 1023, 0), (SRV, 1024, 1900, FLAG_READ_ONLY)]);
        put_ext4(&mut img, 64);
        put_ext4(&mut img, 1024);
        let l = dissect(img.as_slice()).unwrap();
        assert_eq!(l.table, TableKind::Gpt);
        assert_eq!(l.partitions.len(), 2);
        let root = l.root().unwrap();
        assert_eq!((root.number, root.offset, root.size, root.read_only), (1, 64 * 512, 960 * 512, false));
        assert_eq!(root.fstype, FsType::Ext4);
        let srv = &l.partitions[1];
        assert_eq!((srv.designator, srv.number, srv.read_only), (Designator::Srv, 2, true));
        assert_eq!(srv.designator.mount_point(), "/srv");
    }

    #[test]
    fn no_auto_partitions_are_skipped_and_growfs_ignored() {
        let mut img =
            gpt_image(SECTORS, &[(ROOT_X86_64, 64, 1023, FLAG_GROWFS), (HOME, 1024, 1900, FLAG_NO_AUTO)]);
        put_ext4(&mut img, 64);
        let l = dissect(img.as_slice()).unwrap();
        assert_eq!(l.partitions.len(), 1);
        assert!(!l.partitions[0].read_only);
    }

    #[test]
    fn read_only_file_systems_are_read_only_and_the_tmp_partition_goes_to_var_tmp() {
        let mut img = gpt_image(SECTORS, &[(ROOT_X86_64, 64, 1023, 0), (TMP, 1024, 1900, 0)]);
        put_squashfs(&mut img, 64);
        put_ext4(&mut img, 1024);
        let l = dissect(img.as_slice()).unwrap();
        assert!(l.root().unwrap().read_only);
        assert_eq!(l.partitions[1].designator.mount_point(), "/var/tmp");
    }

    #[test]
    fn a_single_generic_linux_partition_is_the_root_but_two_are_ambiguous() {
        let mut img = gpt_image(SECTORS, &[(LINUX_GENERIC, 64, 1023, 0), (HOME, 1024, 1900, 0)]);
        put_ext4(&mut img, 64);
        put_ext4(&mut img, 1024);
        let l = dissect(img.as_slice()).unwrap();
        assert_eq!(l.root().unwrap().number, 1);
        let img = gpt_image(SECTORS, &[(LINUX_GENERIC, 64, 1023, 0), (LINUX_GENERIC, 1024, 1900, 0)]);
        assert!(matches!(dissect(img.as_slice()), Err(Problem::SeveralGeneric { .. })));
    }

    #[test]
    fn the_hosts_architecture_wins_over_the_secondary_one() {
        let mut img = gpt_image(SECTORS, &[(ROOT_X86, 64, 1023, 0), (ROOT_X86_64, 1024, 1900, 0)]);
        put_ext4(&mut img, 64);
        put_ext4(&mut img, 1024);
        assert_eq!(dissect(img.as_slice()).unwrap().root().unwrap().number, 2);
    }

    #[test]
    fn a_gpt_without_a_root_partition_is_refused_naming_what_it_has() {
        let mut img = gpt_image(SECTORS, &[(SRV, 64, 1023, 0), (ESP, 1024, 1900, 0)]);
        put_ext4(&mut img, 64);
        let err = dissect(img.as_slice()).unwrap_err();
        assert!(matches!(err, Problem::NoRoot { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains("1 (srv)") && text.contains("2 (esp)"), "{text}");
        assert!(text.contains("4f68bce3-e8cd-4db1-96e7-fbcaf984b709"), "{text}");
    }

    #[test]
    fn usr_alone_is_enough_as_in_nspawn() {
        let mut img = gpt_image(SECTORS, &[(USR_X86_64, 64, 1023, 0)]);
        put_ext4(&mut img, 64);
        let l = dissect(img.as_slice()).unwrap();
        assert!(l.root().is_none());
        assert_eq!(l.partitions[0].designator, Designator::Usr);
    }

    #[test]
    fn a_corrupt_primary_header_falls_back_to_the_backup_and_both_corrupt_is_refused() {
        let mut img = gpt_image(SECTORS, &[(ROOT_X86_64, 64, 1023, 0)]);
        put_ext4(&mut img, 64);
        img[512 + 40] ^= 0xFF; // first usable LBA: the header CRC no longer matches
        assert_eq!(dissect(img.as_slice()).unwrap().root().unwrap().number, 1);
        let backup = usize::try_from((SECTORS - 1) * 512).unwrap();
        img[backup + 40] ^= 0xFF;
        let err = dissect(img.as_slice()).unwrap_err();
        assert!(matches!(err, Problem::CorruptGpt(_)), "{err}");
        assert!(err.to_string().contains("CRC32"), "{err}");
    }

    #[test]
    fn a_corrupt_entry_array_is_refused() {
        let mut img = gpt_image(SECTORS, &[(ROOT_X86_64, 64, 1023, 0)]);
        put_ext4(&mut img, 64);
        img[2 * 512 + 33] ^= 1; // primary entries
        let backup_entries = usize::try_from((SECTORS - 33) * 512).unwrap();
        img[backup_entries + 33] ^= 1;
        let err = dissect(img.as_slice()).unwrap_err().to_string();
        assert!(err.contains("entry array") && err.contains("CRC32"), "{err}");
    }

    #[test]
    fn a_partition_without_a_file_system_is_named() {
        let img = gpt_image(SECTORS, &[(ROOT_X86_64, 64, 1023, 0)]);
        let err = dissect(img.as_slice()).unwrap_err();
        assert!(matches!(err, Problem::NoFileSystem { number: 1, designator: Designator::Root }), "{err}");
    }

    fn mbr_image(entries: &[(u8, u8, u32, u32)]) -> Vec<u8> {
        let mut img = vec![0u8; usize::try_from(SECTORS * 512).unwrap()];
        for (i, (status, kind, start, n)) in entries.iter().enumerate() {
            let e = &mut img[446 + i * 16..446 + (i + 1) * 16];
            e[0] = *status;
            e[4] = *kind;
            e[8..12].copy_from_slice(&start.to_le_bytes());
            e[12..16].copy_from_slice(&n.to_le_bytes());
        }
        img[510] = 0x55;
        img[511] = 0xAA;
        img
    }

    #[test]
    fn mbr_takes_the_bootable_linux_partition() {
        let mut img = mbr_image(&[(0, 0x82, 64, 100), (0x80, 0x83, 200, 1000)]);
        put_ext4(&mut img, 200);
        let l = dissect(img.as_slice()).unwrap();
        assert_eq!(l.table, TableKind::Mbr);
        let root = l.root().unwrap();
        assert_eq!((root.number, root.offset, root.size), (2, 200 * 512, 1000 * 512));
    }

    #[test]
    fn mbr_without_a_bootable_linux_partition_has_no_root() {
        let mut img = mbr_image(&[(0, 0x83, 64, 1000)]);
        put_ext4(&mut img, 64);
        let err = dissect(img.as_slice()).unwrap_err();
        assert!(matches!(err, Problem::NoRoot { table: "MBR", .. }), "{err}");
        assert!(err.to_string().contains("bootable"), "{err}");
        let img = mbr_image(&[(0x80, 0x83, 64, 100), (0x80, 0x83, 200, 100)]);
        assert!(matches!(dissect(img.as_slice()), Err(Problem::SeveralGeneric { table: "MBR" })));
        let img = mbr_image(&[(0x80, 0x83, 64, 100_000)]);
        assert!(matches!(dissect(img.as_slice()), Err(Problem::BeyondEnd { number: 1, .. })));
    }

    #[test]
    fn a_naked_file_system_is_the_root() {
        let mut img = vec![0u8; 1 << 20];
        put_ext4(&mut img, 0);
        let l = dissect(img.as_slice()).unwrap();
        assert_eq!(l.table, TableKind::None);
        let root = l.root().unwrap();
        assert_eq!((root.number, root.offset, root.size, root.fstype), (0, 0, 1 << 20, FsType::Ext4));
    }

    #[test]
    fn nothing_recognizable_is_refused() {
        let img = vec![0u8; 1 << 20];
        assert!(matches!(dissect(img.as_slice()), Err(Problem::Unrecognized { .. })));
        assert!(matches!(dissect(&[0u8; 100][..]), Err(Problem::Unrecognized { .. })));
    }
}
