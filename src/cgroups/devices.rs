//! The devices a machine may create and open: one allow-list, written as the v1 `devices`
//! controller's rules and compiled into the cgroup2 device program (`BPF_PROG_TYPE_CGROUP_DEVICE`)
//! that runc and systemd attach on pure cgroup v2 hosts.
//!
//! Both go on the machine's cgroup, the parent of the payload cgroup that is the root of the
//! guest's cgroup namespace: a guest can see and write the files of its own root (and mount
//! the v1 `devices` hierarchy to do so), but a cgroup may never allow more than its parent.

use std::io;

use crate::sys::linux::BpfInsn;

/// Character or block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// `c`
    Char,
    /// `b`
    Block,
}

/// Access bits, as the kernel numbers them for device programs.
pub const MKNOD: u8 = 1;
/// Read access.
pub const READ: u8 = 2;
/// Write access.
pub const WRITE: u8 = 4;

/// One allowed device (or range of minors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRule {
    /// Character or block.
    pub kind: DeviceKind,
    /// Major number.
    pub major: u32,
    /// Minor number, `None` for all of them.
    pub minor: Option<u32>,
    /// [`MKNOD`] | [`READ`] | [`WRITE`].
    pub access: u8,
}

const fn chr(major: u32, minor: u32) -> DeviceRule {
    DeviceRule { kind: DeviceKind::Char, major, minor: Some(minor), access: MKNOD | READ | WRITE }
}

const fn pty_slaves(major: u32) -> DeviceRule {
    DeviceRule { kind: DeviceKind::Char, major, minor: None, access: READ | WRITE }
}

/// nspawn's `DevicePolicy=closed` list (null, zero, full, random, urandom, tty, ptmx, net/tun, the
/// inaccessible 0:0 nodes) plus every pty slave major.
pub const MACHINE_DEVICES: [DeviceRule; 18] = [
    chr(1, 3),
    chr(1, 5),
    chr(1, 7),
    chr(1, 8),
    chr(1, 9),
    chr(5, 0),
    chr(5, 2),
    chr(10, 200),
    chr(0, 0),
    DeviceRule { kind: DeviceKind::Block, major: 0, minor: Some(0), access: MKNOD | READ | WRITE },
    pty_slaves(136),
    pty_slaves(137),
    pty_slaves(138),
    pty_slaves(139),
    pty_slaves(140),
    pty_slaves(141),
    pty_slaves(142),
    pty_slaves(143),
];

impl DeviceRule {
    /// The rule as a line for v1 `devices.allow`, e.g. `c 1:3 rwm`.
    pub fn v1_line(&self) -> String {
        let kind = match self.kind {
            DeviceKind::Char => 'c',
            DeviceKind::Block => 'b',
        };
        let minor = self.minor.map_or("*".to_owned(), |m| m.to_string());
        let mut access = String::new();
        for (bit, ch) in [(READ, 'r'), (WRITE, 'w'), (MKNOD, 'm')] {
            if self.access & bit != 0 {
                access.push(ch);
            }
        }
        format!("{kind} {}:{minor} {access}", self.major)
    }
}

// eBPF opcodes used below (linux/bpf.h, linux/bpf_common.h).
const LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const ALU32_AND_K: u8 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const ALU32_RSH_K: u8 = 0x74; // BPF_ALU | BPF_RSH | BPF_K
const ALU64_AND_K: u8 = 0x57; // BPF_ALU64 | BPF_AND | BPF_K
const MOV64_X: u8 = 0xbf; // BPF_ALU64 | BPF_MOV | BPF_X
const MOV64_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const JEQ_K: u8 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JGT_K: u8 = 0x25; // BPF_JMP | BPF_JGT | BPF_K (unsigned)
const JLT_K: u8 = 0xa5; // BPF_JMP | BPF_JLT | BPF_K (unsigned)
const JA: u8 = 0x05; // BPF_JMP | BPF_JA
const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

// Registers the program keeps the request in (r1 holds the context on entry, then scratch).
const R_TYPE: u8 = 2;
const R_ACCESS: u8 = 3;
const R_MAJOR: u8 = 4;
const R_MINOR: u8 = 5;

const BPF_DEVCG_DEV_BLOCK: i32 = 1;
const BPF_DEVCG_DEV_CHAR: i32 = 2;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> BpfInsn {
    BpfInsn { code, regs: dst | (src << 4), off, imm }
}

/// Rules that test alike, merged so the program stays short: the kernel's verifier takes about
/// 50 µs per rule block, as much as the rest of a `mctl run` for the full list unmerged.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Block {
    kind: DeviceKind,
    access: u8,
    /// Inclusive range of majors.
    majors: (u32, u32),
    /// Allowed minors (empty: all).
    minors: Vec<u32>,
}

fn blocks(rules: &[DeviceRule]) -> Vec<Block> {
    let mut out: Vec<Block> = Vec::new();
    for r in rules {
        let minors = r.minor.map(|m| vec![m]).unwrap_or_default();
        if let Some(last) = out.last_mut()
            && last.kind == r.kind
            && last.access == r.access
        {
            // Same major, more minors.
            if last.majors == (r.major, r.major) && !last.minors.is_empty() && !minors.is_empty() {
                last.minors.extend(minors);
                continue;
            }
            // The next major, all minors.
            if last.minors.is_empty() && minors.is_empty() && last.majors.1.checked_add(1) == Some(r.major) {
                last.majors.1 = r.major;
                continue;
            }
        }
        out.push(Block { kind: r.kind, access: r.access, majors: (r.major, r.major), minors });
    }
    out
}

/// The device program for `rules`: returns 1 (allow) when one rule covers the request, else 0.
/// The context is `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }` with
/// `access_type = access << 16 | type`.
///
/// Fails for a device number above `i32::MAX` (the 64-bit jumps sign-extend their immediate, so
/// it could not be compared with the zero-extended context; the kernel's numbers are 12 and 20
/// bits) and for a block too long for a jump's 16-bit offset.
pub fn program(rules: &[DeviceRule]) -> io::Result<Vec<BpfInsn>> {
    let mut p = vec![
        insn(LDX_MEM_W, R_TYPE, 1, 0, 0),
        insn(ALU32_AND_K, R_TYPE, 0, 0, 0xffff),
        insn(LDX_MEM_W, R_ACCESS, 1, 0, 0),
        insn(ALU32_RSH_K, R_ACCESS, 0, 0, 16),
        insn(LDX_MEM_W, R_MAJOR, 1, 4, 0),
        insn(LDX_MEM_W, R_MINOR, 1, 8, 0),
    ];
    for b in blocks(rules) {
        // Each test jumps past the rest of the block when it does not match (`skip`), or to the
        // block's "allow" when a minor matches (`hit`); offsets are filled in at the end.
        let mut block = Vec::new();
        let (mut skip, mut hit) = (Vec::new(), Vec::new());
        let kind = match b.kind {
            DeviceKind::Char => BPF_DEVCG_DEV_CHAR,
            DeviceKind::Block => BPF_DEVCG_DEV_BLOCK,
        };
        skip.push(block.len());
        block.push(insn(JNE_K, R_TYPE, 0, 0, kind));
        if b.access & (MKNOD | READ | WRITE) != MKNOD | READ | WRITE {
            // Any requested bit outside the rule's: no match.
            block.push(insn(MOV64_X, 1, R_ACCESS, 0, 0));
            block.push(insn(ALU64_AND_K, 1, 0, 0, i32::from(!b.access & 7)));
            skip.push(block.len());
            block.push(insn(JNE_K, 1, 0, 0, 0));
        }
        if b.majors.0 == b.majors.1 {
            skip.push(block.len());
            block.push(insn(JNE_K, R_MAJOR, 0, 0, imm(b.majors.0)?));
        } else {
            skip.push(block.len());
            block.push(insn(JLT_K, R_MAJOR, 0, 0, imm(b.majors.0)?));
            skip.push(block.len());
            block.push(insn(JGT_K, R_MAJOR, 0, 0, imm(b.majors.1)?));
        }
        if !b.minors.is_empty() {
            for m in &b.minors {
                hit.push(block.len());
                block.push(insn(JEQ_K, R_MINOR, 0, 0, imm(*m)?));
            }
            skip.push(block.len());
            block.push(insn(JA, 0, 0, 0, 0));
        }
        let allow = block.len();
        block.push(insn(MOV64_K, 0, 0, 0, 1));
        block.push(insn(EXIT, 0, 0, 0, 0));
        let len = block.len();
        for j in skip {
            block[j].off = jump(len - j - 1)?;
        }
        for j in hit {
            block[j].off = jump(allow - j - 1)?;
        }
        p.extend(block);
    }
    p.push(insn(MOV64_K, 0, 0, 0, 0));
    p.push(insn(EXIT, 0, 0, 0, 0));
    Ok(p)
}

/// A device number as a jump's immediate.
fn imm(n: u32) -> io::Result<i32> {
    i32::try_from(n).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("device number {n} out of range for the device program"),
        )
    })
}

/// A forward jump over `n` instructions.
fn jump(n: usize) -> io::Result<i16> {
    i16::try_from(n).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("device program block of {n} instructions too long"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the subset of eBPF that [`program`] emits.
    fn run(prog: &[BpfInsn], kind: DeviceKind, access: u8, major: u32, minor: u32) -> u64 {
        let ty = match kind {
            DeviceKind::Char => 2u64,
            DeviceKind::Block => 1,
        };
        let ctx = [(u64::from(access) << 16) | ty, u64::from(major), u64::from(minor)];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            // eBPF sign-extends the 32-bit immediate to 64 bits: the reinterpretation is the point.
            #[allow(clippy::cast_sign_loss)]
            let imm = i64::from(i.imm) as u64;
            match i.code {
                LDX_MEM_W => {
                    assert_eq!(src, 1, "loads come from the context");
                    r[dst] = ctx[usize::try_from(i.off / 4).expect("a context offset")] & 0xffff_ffff;
                }
                ALU32_AND_K => r[dst] = (r[dst] & imm) & 0xffff_ffff,
                ALU32_RSH_K => r[dst] = (r[dst] & 0xffff_ffff) >> imm,
                ALU64_AND_K => r[dst] &= imm,
                MOV64_X => r[dst] = r[src],
                MOV64_K => r[dst] = imm,
                JNE_K | JEQ_K | JGT_K | JLT_K | JA => {
                    let taken = match i.code {
                        JNE_K => r[dst] != imm,
                        JEQ_K => r[dst] == imm,
                        JGT_K => r[dst] > imm,
                        JLT_K => r[dst] < imm,
                        _ => true,
                    };
                    if taken {
                        pc += usize::try_from(i.off).expect("the program only jumps forward");
                    }
                }
                EXIT => return r[0],
                other => panic!("unexpected opcode {other:#x}"),
            }
            pc += 1;
        }
    }

    #[test]
    fn v1_lines_match_the_kernel_syntax() {
        let lines: Vec<String> = MACHINE_DEVICES.iter().map(DeviceRule::v1_line).collect();
        assert_eq!(lines[0], "c 1:3 rwm");
        assert_eq!(lines[9], "b 0:0 rwm");
        assert_eq!(lines[10], "c 136:* rw");
    }

    #[test]
    fn the_program_allows_exactly_the_list() {
        let p = program(&MACHINE_DEVICES).unwrap();
        let rw = READ | WRITE;
        assert_eq!(run(&p, DeviceKind::Char, rw, 1, 3), 1, "/dev/null");
        assert_eq!(run(&p, DeviceKind::Char, MKNOD, 1, 9), 1, "mknod /dev/urandom");
        assert_eq!(run(&p, DeviceKind::Char, rw, 136, 7), 1, "a pty slave");
        assert_eq!(run(&p, DeviceKind::Char, MKNOD, 136, 7), 0, "mknod of a pty slave");
        assert_eq!(run(&p, DeviceKind::Char, WRITE, 1, 11), 0, "/dev/kmsg");
        assert_eq!(run(&p, DeviceKind::Block, READ, 1, 3), 0, "a block device with null's numbers");
        assert_eq!(run(&p, DeviceKind::Block, READ, 254, 0), 0, "a disk");
        assert_eq!(run(&p, DeviceKind::Block, MKNOD, 8, 0), 0, "mknod of a disk");
        assert_eq!(run(&p, DeviceKind::Char, READ, 10, 229), 0, "/dev/fuse");
        assert_eq!(run(&p, DeviceKind::Char, READ, 0, 0), 1, "the inaccessible node");
        assert_eq!(run(&p, DeviceKind::Char, rw, 143, 1), 1, "the last pty major");
        assert_eq!(run(&p, DeviceKind::Char, rw, 144, 1), 0, "past the pty majors");
        assert_eq!(run(&p, DeviceKind::Char, rw, 135, 1), 0, "before the pty majors");
        assert_eq!(run(&p, DeviceKind::Char, rw, 1, 4), 0, "/dev/port's neighbour between allowed minors");
        assert_eq!(run(&p, DeviceKind::Char, rw, 5, 1), 0, "/dev/console");
        assert_eq!(run(&p, DeviceKind::Char, rw, 5, 2), 1, "/dev/ptmx");
        // Merged: one block each for 1:*, 5:*, 10:200, c 0:0, b 0:0 and the pty majors.
        assert_eq!(blocks(&MACHINE_DEVICES).len(), 6);
        assert!(p.len() < 60, "{} instructions", p.len());
    }

    #[test]
    fn numbers_the_program_cannot_compare_are_refused() {
        let big = DeviceRule { kind: DeviceKind::Char, major: 1 << 31, minor: None, access: READ };
        assert!(program(&[big]).is_err());
        assert!(program(&[DeviceRule { major: 1, minor: Some(u32::MAX), ..big }]).is_err());
    }
}
