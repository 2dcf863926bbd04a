//! Rewrites a compiled filter as a balanced search over runs of system call numbers.
//!
//! libseccomp decides the machine's filter call by call: some 1500 instructions for three ABIs.
//! The kernel checks, converts and JIT-compiles every instruction when PID 1 loads the filter
//! (about 0.25 µs each here, on every launch). The filter's answer depends only on the
//! architecture and the call number, and stays the same over long runs of numbers, so the
//! program is rebuilt as a binary search over those runs, about a third of the size.
//!
//! The rebuilt program is used only when it provably answers as libseccomp's does. Both load
//! nothing but the architecture and the number, and only compare them with constants, so an
//! answer can change only at a constant or one past it: evaluating both programs at every such
//! point (of both fields, in every combination) covers every input.

use std::collections::BTreeSet;

/// One classic BPF instruction (`struct sock_filter`), as the kernel takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Insn {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

const LD_W_ABS: u16 = 0x20;
const JA: u16 = 0x05;
const JEQ_K: u16 = 0x15;
const JGT_K: u16 = 0x25;
const JGE_K: u16 = 0x35;
const RET_K: u16 = 0x06;
/// Offsets into `struct seccomp_data`.
const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;

impl Insn {
    fn decode(raw: u64) -> Self {
        let b = raw.to_ne_bytes();
        Insn {
            code: u16::from_ne_bytes([b[0], b[1]]),
            jt: b[2],
            jf: b[3],
            k: u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        }
    }

    fn encode(self) -> u64 {
        let mut b = [0u8; 8];
        b[..2].copy_from_slice(&self.code.to_ne_bytes());
        b[2] = self.jt;
        b[3] = self.jf;
        b[4..].copy_from_slice(&self.k.to_ne_bytes());
        u64::from_ne_bytes(b)
    }

    fn op(code: u16, k: u32) -> Self {
        Insn { code, jt: 0, jf: 0, k }
    }
}

/// The two fields a filter of this shape looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Arch,
    Nr,
}

impl Field {
    fn load(self) -> Insn {
        Insn::op(LD_W_ABS, if self == Field::Arch { ARCH_OFFSET } else { NR_OFFSET })
    }
}

/// `program` (libseccomp's export) rebuilt as a search over number runs, or None when it does
/// more than compare the architecture and the number with constants, when the rebuilt program
/// would not be shorter, or (never expected) when it would answer differently anywhere.
pub fn compact(program: &[u64]) -> Option<Vec<u64>> {
    let original: Vec<Insn> = program.iter().map(|r| Insn::decode(*r)).collect();
    let points = Points::of(&original)?;
    let rebuilt = emit(&decision_tree(&original, &points)?, None)?;
    if rebuilt.len() >= original.len() || !agree(&original, &rebuilt, &points) {
        return None;
    }
    Some(rebuilt.into_iter().map(Insn::encode).collect())
}

/// Where each field's answers may change: 0, and every constant it is compared with and the
/// value one past it.
#[derive(Debug)]
struct Points {
    arch: Vec<u32>,
    nr: Vec<u32>,
}

impl Points {
    /// None for a program that loads anything else, computes, compares registers, tests bits,
    /// jumps backwards or out of the program, or compares a field it has not loaded.
    fn of(program: &[Insn]) -> Option<Points> {
        if program.is_empty() {
            return None;
        }
        let (mut arch, mut nr) = (BTreeSet::from([0]), BTreeSet::from([0]));
        // What the accumulator holds on entry to each instruction (jumps only go forward, so
        // every predecessor comes first). None: not reached; Some(None): nothing loaded yet.
        let mut holds: Vec<Option<Option<Field>>> = vec![None; program.len()];
        holds[0] = Some(None);
        for (pc, insn) in program.iter().enumerate() {
            let Some(a) = holds[pc] else { continue };
            match insn.code {
                LD_W_ABS => {
                    let field = match insn.k {
                        ARCH_OFFSET => Field::Arch,
                        NR_OFFSET => Field::Nr,
                        _ => return None,
                    };
                    reach(&mut holds, pc + 1, Some(field))?;
                }
                JEQ_K | JGT_K | JGE_K => {
                    let set = match a? {
                        Field::Arch => &mut arch,
                        Field::Nr => &mut nr,
                    };
                    set.insert(insn.k);
                    set.extend(insn.k.checked_add(1));
                    reach(&mut holds, pc + 1 + usize::from(insn.jt), a)?;
                    reach(&mut holds, pc + 1 + usize::from(insn.jf), a)?;
                }
                JA => reach(&mut holds, pc + 1 + usize::try_from(insn.k).ok()?, a)?,
                RET_K => {}
                _ => return None,
            }
        }
        Some(Points { arch: arch.into_iter().collect(), nr: nr.into_iter().collect() })
    }
}

/// Marks instruction `at` reached with `a` in the accumulator; None when it lies past the end
/// or is reached holding something else too.
fn reach(holds: &mut [Option<Option<Field>>], at: usize, a: Option<Field>) -> Option<()> {
    match holds.get(at)? {
        Some(seen) if *seen != a => None,
        _ => {
            holds[at] = Some(a);
            Some(())
        }
    }
}

/// Runs `program` on a call; None if it runs off its end (a program the kernel would refuse).
fn run(program: &[Insn], arch: u32, nr: u32) -> Option<u32> {
    let (mut pc, mut a) = (0usize, 0u32);
    loop {
        let insn = program.get(pc)?;
        pc += 1;
        match insn.code {
            LD_W_ABS => a = if insn.k == ARCH_OFFSET { arch } else { nr },
            JA => pc += usize::try_from(insn.k).ok()?,
            JEQ_K | JGT_K | JGE_K => {
                let taken = match insn.code {
                    JEQ_K => a == insn.k,
                    JGT_K => a > insn.k,
                    _ => a >= insn.k,
                };
                pc += usize::from(if taken { insn.jt } else { insn.jf });
            }
            RET_K => return Some(insn.k),
            _ => return None,
        }
    }
}

/// Whether both programs answer alike at every point where either's answer may change.
fn agree(a: &[Insn], b: &[Insn], points: &Points) -> bool {
    points.arch.iter().all(|&arch| points.nr.iter().all(|&nr| run(a, arch, nr) == run(b, arch, nr)))
}

/// A decision: an answer, or a split of one field's values at a point.
#[derive(Debug, PartialEq, Eq)]
enum Node {
    Ret(u32),
    Split { field: Field, at: u32, below: Box<Node>, from: Box<Node> },
}

/// The program's decisions as a tree: a search over the architecture's runs, each leading to
/// a search over the number's runs (or straight to an answer where the number does not
/// matter).
fn decision_tree(program: &[Insn], points: &Points) -> Option<Node> {
    let mut arch_runs: Vec<(u32, Node)> = Vec::new();
    for &arch in &points.arch {
        let mut nr_runs: Vec<(u32, Node)> = Vec::new();
        for &nr in &points.nr {
            let answer = run(program, arch, nr)?;
            if nr_runs.last().is_none_or(|(_, last)| *last != Node::Ret(answer)) {
                nr_runs.push((nr, Node::Ret(answer)));
            }
        }
        let node = balanced(Field::Nr, nr_runs);
        if arch_runs.last().is_none_or(|(_, last)| *last != node) {
            arch_runs.push((arch, node));
        }
    }
    Some(balanced(Field::Arch, arch_runs))
}

/// A balanced search over `runs` (each starting where the previous ends, the first at 0).
fn balanced(field: Field, mut runs: Vec<(u32, Node)>) -> Node {
    if runs.len() == 1 {
        return runs.pop().expect("one run").1;
    }
    let upper = runs.split_off(runs.len() / 2);
    let at = upper[0].0;
    Node::Split { field, at, below: Box::new(balanced(field, runs)), from: Box::new(balanced(field, upper)) }
}

/// The instructions of `node`, entered with `loaded` in the accumulator. A split is
/// `JGE at` falling through to the lower half, whose end the jump to the upper half must
/// clear: beyond a conditional jump's 255 instructions it goes through a `JA`.
fn emit(node: &Node, loaded: Option<Field>) -> Option<Vec<Insn>> {
    let (field, at, below, from) = match node {
        Node::Ret(answer) => return Some(vec![Insn::op(RET_K, *answer)]),
        Node::Split { field, at, below, from } => (field, at, below, from),
    };
    let mut out = Vec::new();
    if loaded != Some(*field) {
        out.push(field.load());
    }
    let below = emit(below, Some(*field))?;
    let from = emit(from, Some(*field))?;
    match u8::try_from(below.len()) {
        Ok(skip) => out.push(Insn { code: JGE_K, jt: skip, jf: 0, k: *at }),
        Err(_) => {
            out.push(Insn { code: JGE_K, jt: 0, jf: 1, k: *at });
            out.push(Insn::op(JA, u32::try_from(below.len()).ok()?));
        }
    }
    out.extend(below);
    out.extend(from);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALLOW: u32 = 0x7fff_0000;
    const KILL: u32 = 0;
    const EPERM: u32 = 0x0005_0001;

    fn jmp(code: u16, k: u32, jt: u8, jf: u8) -> Insn {
        Insn { code, jt, jf, k }
    }

    /// A libseccomp-shaped program: one architecture, numbers 0..n decided one by one (the
    /// even ones allowed), anything else EPERM; other architectures killed.
    fn one_by_one(n: u32) -> Vec<Insn> {
        let mut p =
            vec![Field::Arch.load(), jmp(JEQ_K, 0xc000_003e, 1, 0), Insn::op(RET_K, KILL), Field::Nr.load()];
        for nr in 0..n {
            p.push(jmp(JEQ_K, nr, 0, 1));
            p.push(Insn::op(RET_K, if nr % 2 == 0 { ALLOW } else { EPERM }));
        }
        p.push(Insn::op(RET_K, EPERM));
        p
    }

    #[test]
    fn a_program_comes_back_shorter_and_answering_alike_everywhere() {
        // Runs of equal answers: 0..100 allowed, 100..300 EPERM, 300..600 allowed.
        let mut p =
            vec![Field::Arch.load(), jmp(JEQ_K, 0xc000_003e, 1, 0), Insn::op(RET_K, KILL), Field::Nr.load()];
        for nr in 0..600 {
            p.push(jmp(JEQ_K, nr, 0, 1));
            p.push(Insn::op(RET_K, if (100..300).contains(&nr) { EPERM } else { ALLOW }));
        }
        p.push(Insn::op(RET_K, EPERM));
        let raw: Vec<u64> = p.iter().map(|i| i.encode()).collect();
        let compacted: Vec<Insn> = compact(&raw).unwrap().into_iter().map(Insn::decode).collect();
        assert!(compacted.len() < 20, "{} instructions", compacted.len());
        for (arch, nr) in
            [(0xc000_003e, 0), (0xc000_003e, 99), (0xc000_003e, 100), (0xc000_003e, 299), (0xc000_003e, 300)]
                .into_iter()
                .chain([
                    (0xc000_003e, 599),
                    (0xc000_003e, 600),
                    (0xc000_003e, u32::MAX),
                    (3, 5),
                    (u32::MAX, 0),
                ])
        {
            assert_eq!(run(&compacted, arch, nr), run(&p, arch, nr), "arch {arch:#x} nr {nr}");
        }
    }

    #[test]
    fn long_lower_halves_are_cleared_with_an_unconditional_jump() {
        // Alternating answers: every number a run of its own, so the search's halves are long.
        let p = one_by_one(700);
        let raw: Vec<u64> = p.iter().map(|i| i.encode()).collect();
        // Not shorter (as many runs as calls), so not taken; the emitter is checked directly.
        assert_eq!(compact(&raw), None);
        let points = Points::of(&p).unwrap();
        let rebuilt = emit(&decision_tree(&p, &points).unwrap(), None).unwrap();
        assert!(rebuilt.iter().any(|i| i.code == JA), "no long jump was needed");
        assert!(agree(&p, &rebuilt, &points));
    }

    #[test]
    fn anything_but_comparing_the_architecture_and_number_is_left_alone() {
        let base = one_by_one(4);
        let with = |at: usize, insn: Insn| {
            let mut p = base.clone();
            p[at] = insn;
            p.iter().map(|i| i.encode()).collect::<Vec<u64>>()
        };
        // An argument (offset 16), the instruction pointer (8), a bit test, arithmetic.
        assert_eq!(compact(&with(3, Insn::op(LD_W_ABS, 16))), None);
        assert_eq!(compact(&with(3, Insn::op(LD_W_ABS, 8))), None);
        assert_eq!(compact(&with(4, jmp(0x45, 1, 0, 1))), None);
        assert_eq!(compact(&with(4, Insn::op(0x04, 1))), None);
        // A jump past the end, and a comparison before anything is loaded.
        assert_eq!(compact(&with(4, jmp(JEQ_K, 0, 200, 1))), None);
        assert_eq!(compact(&with(0, jmp(JEQ_K, 0, 0, 0))), None);
    }

    #[test]
    fn the_check_catches_a_single_wrong_answer() {
        let p = one_by_one(40);
        let points = Points::of(&p).unwrap();
        let mut rebuilt = emit(&decision_tree(&p, &points).unwrap(), None).unwrap();
        assert!(agree(&p, &rebuilt, &points));
        let ret = rebuilt.iter().rposition(|i| i.code == RET_K && i.k == ALLOW).unwrap();
        rebuilt[ret].k = EPERM;
        assert!(!agree(&p, &rebuilt, &points));
    }
}
