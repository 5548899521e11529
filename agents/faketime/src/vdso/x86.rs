//! Just enough x86-64 to move the first instructions of a vDSO function somewhere else.
//!
//! This is not a disassembler. [`decode`] knows a small, closed set of instructions that
//! compilers emit at the start of the kernel's vDSO functions (stack frame set-up, register
//! moves and arithmetic, loads with RIP-relative addresses, compares, conditional branches)
//! and says [`Unknown`] for everything else, so the caller leaves the function alone instead
//! of guessing. For each known instruction it returns the exact length and whether its meaning
//! depends on where it sits (a RIP-relative operand, a relative branch): [`relocate`] rewrites
//! those so that the copy does what the original did.

use std::fmt;

/// One decoded instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub len: usize,
    pub kind: Kind,
}

/// What matters about an instruction when it moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Means the same wherever it sits.
    Plain,
    /// Has a `[rip + disp32]` operand; the displacement's four bytes start at `disp_at`.
    RipRelative { disp_at: usize },
    /// `jcc rel8` / `jcc rel32`: condition code `cc` (0..=15), target relative to the end.
    CondBranch { cc: u8, rel: i32 },
    /// `jmp rel8` / `jmp rel32`.
    Jump { rel: i32 },
    /// `ret`: nothing after it in the copy runs.
    Return,
}

/// Bytes [`decode`] does not know: the function is left alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unknown {
    pub bytes: Vec<u8>,
}

impl fmt::Display for Unknown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an instruction berth does not relocate (")?;
        for (i, b) in self.bytes.iter().enumerate() {
            if i > 0 {
                write!(f, " ")?;
            }
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

fn unknown(code: &[u8]) -> Unknown {
    Unknown {
        bytes: code.iter().copied().take(8).collect(),
    }
}

/// Immediate operand size of an instruction.
#[derive(Clone, Copy)]
enum Imm {
    None,
    B1,
    /// 4 bytes, or 2 with the operand-size prefix.
    Z,
}

/// The ModR/M part of an instruction at `code[at..]`: its length (ModR/M, SIB, displacement)
/// and where a RIP-relative displacement is.
fn modrm(code: &[u8], at: usize) -> Option<(usize, Option<usize>)> {
    let m = *code.get(at)?;
    let (md, rm) = (m >> 6, m & 7);
    if md == 3 {
        return Some((1, None));
    }
    let mut len = 1;
    let mut rip = None;
    if rm == 4 {
        let sib = *code.get(at + 1)?;
        len += 1;
        if md == 0 && sib & 7 == 5 {
            len += 4; // [index*scale + disp32], no base: absolute, not RIP-relative
        }
    } else if md == 0 && rm == 5 {
        rip = Some(at + 1);
        len += 4;
    }
    match md {
        1 => len += 1,
        2 => len += 4,
        _ => {}
    }
    Some((len, rip))
}

/// Decodes the instruction at the start of `code` if it belongs to the known set.
pub fn decode(code: &[u8]) -> Result<Insn, Unknown> {
    decode_inner(code).ok_or_else(|| unknown(code))
}

fn decode_inner(code: &[u8]) -> Option<Insn> {
    let plain = |len| {
        Some(Insn {
            len,
            kind: Kind::Plain,
        })
    };
    // endbr64: a marker for indirect branch tracking; does nothing else.
    if code.starts_with(&[0xf3, 0x0f, 0x1e, 0xfa]) {
        return plain(4);
    }
    let mut i = 0;
    let mut opsize16 = false;
    if code.first() == Some(&0x66) {
        opsize16 = true;
        i += 1;
    }
    let mut rex_w = false;
    if let Some(&b) = code.get(i)
        && (0x40..=0x4f).contains(&b)
    {
        rex_w = b & 8 != 0;
        i += 1;
    }
    let op = *code.get(i)?;
    i += 1;
    let with_modrm = |i: usize, imm: Imm| -> Option<Insn> {
        let (mlen, rip) = modrm(code, i)?;
        let imm_len = match imm {
            Imm::None => 0,
            Imm::B1 => 1,
            Imm::Z if opsize16 => 2,
            Imm::Z => 4,
        };
        let len = i + mlen + imm_len;
        if code.len() < len {
            return None;
        }
        Some(Insn {
            len,
            kind: match rip {
                Some(disp_at) => Kind::RipRelative { disp_at },
                None => Kind::Plain,
            },
        })
    };
    let reg_field = |i: usize| code.get(i).map(|m| (m >> 3) & 7);
    let rel8 = |i: usize| code.get(i).map(|b| *b as i8 as i32);
    let rel32 = |i: usize| {
        code.get(i..i + 4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    match op {
        // add/or/adc/sbb/and/sub/xor/cmp between a register and r/m (not the AL/eAX forms)
        0x00..=0x03
        | 0x08..=0x0b
        | 0x10..=0x13
        | 0x18..=0x1b
        | 0x20..=0x23
        | 0x28..=0x2b
        | 0x30..=0x33
        | 0x38..=0x3b => with_modrm(i, Imm::None),
        // push/pop a register
        0x50..=0x5f => plain(i),
        // movsxd
        0x63 => with_modrm(i, Imm::None),
        // push imm32 / imm8
        0x68 => (code.len() >= i + 4).then_some(Insn {
            len: i + 4,
            kind: Kind::Plain,
        }),
        0x6a => (code.len() > i).then_some(Insn {
            len: i + 1,
            kind: Kind::Plain,
        }),
        // imul r, r/m, imm32 / imm8
        0x69 => with_modrm(i, Imm::Z),
        0x6b => with_modrm(i, Imm::B1),
        // jcc rel8
        0x70..=0x7f => Some(Insn {
            len: i + 1,
            kind: Kind::CondBranch {
                cc: op - 0x70,
                rel: rel8(i)?,
            },
        }),
        // group 1 with imm8 / imm32 / imm8
        0x80 | 0x83 => with_modrm(i, Imm::B1),
        0x81 => with_modrm(i, Imm::Z),
        // test, xchg, mov between register and r/m
        0x84..=0x8b => with_modrm(i, Imm::None),
        // lea: only with a memory operand
        0x8d if code.get(i).is_some_and(|m| m >> 6 != 3) => with_modrm(i, Imm::None),
        0x90 => plain(i),
        // mov r, imm (imm64 with REX.W)
        0xb8..=0xbf => {
            let len = i + if rex_w {
                8
            } else if opsize16 {
                2
            } else {
                4
            };
            (code.len() >= len).then_some(Insn {
                len,
                kind: Kind::Plain,
            })
        }
        // shifts by imm8, by 1, by cl
        0xc0 | 0xc1 => with_modrm(i, Imm::B1),
        0xd0..=0xd3 => with_modrm(i, Imm::None),
        0xc3 => Some(Insn {
            len: i,
            kind: Kind::Return,
        }),
        // mov r/m, imm8 / imm32 (only /0 is defined)
        0xc6 if reg_field(i)? == 0 => with_modrm(i, Imm::B1),
        0xc7 if reg_field(i)? == 0 => with_modrm(i, Imm::Z),
        // jmp rel32 / rel8
        0xe9 => Some(Insn {
            len: i + 4,
            kind: Kind::Jump { rel: rel32(i)? },
        }),
        0xeb => Some(Insn {
            len: i + 1,
            kind: Kind::Jump { rel: rel8(i)? },
        }),
        // group 3: test with an immediate (/0, /1), not/neg/mul/imul/div/idiv (/2../7)
        0xf6 => with_modrm(
            i,
            if reg_field(i)? <= 1 {
                Imm::B1
            } else {
                Imm::None
            },
        ),
        0xf7 => with_modrm(
            i,
            if reg_field(i)? <= 1 {
                Imm::Z
            } else {
                Imm::None
            },
        ),
        // inc/dec r/m and push r/m; the indirect calls and jumps (/2../5) are not known
        0xfe if reg_field(i)? <= 1 => with_modrm(i, Imm::None),
        0xff if matches!(reg_field(i)?, 0 | 1 | 6) => with_modrm(i, Imm::None),
        0x0f => {
            let op2 = *code.get(i)?;
            let i = i + 1;
            match op2 {
                // multi-byte nop
                0x1f if reg_field(i)? == 0 => with_modrm(i, Imm::None),
                // cmovcc
                0x40..=0x4f => with_modrm(i, Imm::None),
                // jcc rel32
                0x80..=0x8f => Some(Insn {
                    len: i + 4,
                    kind: Kind::CondBranch {
                        cc: op2 - 0x80,
                        rel: rel32(i)?,
                    },
                }),
                // bt/bts/btr/btc r/m, r; imul r, r/m; movzx; movsx
                0xa3 | 0xab | 0xb3 | 0xbb | 0xaf | 0xb6 | 0xb7 | 0xbe | 0xbf => {
                    with_modrm(i, Imm::None)
                }
                // bt/bts/btr/btc r/m, imm8
                0xba if reg_field(i)? >= 4 => with_modrm(i, Imm::B1),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Why a function's first instructions cannot be moved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelocateError {
    #[error("at +{at}: {unknown}")]
    Unknown { at: usize, unknown: Unknown },
    #[error("the function is only {size} bytes long: too short for a 5-byte jump")]
    TooShort { size: usize },
    #[error("the function returns within its first {at} bytes")]
    EarlyReturn { at: usize },
    #[error("the branch at +{at} jumps into the bytes that would be replaced")]
    BranchIntoPatch { at: usize },
    #[error("the instruction at +{at} addresses memory out of reach of the trampoline")]
    OutOfReach { at: usize },
}

/// The first instructions of a function, rewritten to run somewhere else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relocated {
    /// The rewritten instructions (without the jump back).
    pub code: Vec<u8>,
    /// How many bytes of the original they replace: at least the jump's 5, on an
    /// instruction boundary.
    pub consumed: usize,
    /// The instruction boundaries strictly inside the replaced bytes: a thread stopped at
    /// one of them (or returning to one from a signal handler) would resume in the middle of
    /// the jump written over them.
    pub inner_boundaries: Vec<usize>,
}

fn rel32_to(from_end: u64, target: u64) -> Option<i32> {
    i32::try_from(target.wrapping_sub(from_end) as i64).ok()
}

/// Rewrites whole instructions from the start of `code` (a function of `size` bytes that sits
/// at address `from`) until at least `min_len` bytes are covered, so that they run at address
/// `to` with the same effect. Branches are turned into their rel32 forms; RIP-relative operands
/// get new displacements.
pub fn relocate(
    code: &[u8],
    size: usize,
    from: u64,
    min_len: usize,
    to: u64,
) -> Result<Relocated, RelocateError> {
    if size < min_len || code.len() < min_len {
        return Err(RelocateError::TooShort { size });
    }
    let mut out = Vec::new();
    let mut at = 0;
    let mut inner = Vec::new();
    let mut insns = Vec::new();
    while at < min_len {
        if at > 0 {
            inner.push(at);
        }
        let window = &code[at..size.min(code.len())];
        let insn = decode(window).map_err(|unknown| match decode(&code[at..]) {
            // a whole instruction, but it runs past the function's end
            Ok(_) => RelocateError::TooShort { size },
            Err(_) => RelocateError::Unknown { at, unknown },
        })?;
        if insn.kind == Kind::Return {
            return Err(RelocateError::EarlyReturn { at });
        }
        insns.push((at, insn));
        at += insn.len;
    }
    if at > size {
        return Err(RelocateError::TooShort { size });
    }
    let consumed = at;
    for (at, insn) in insns {
        let orig = &code[at..at + insn.len];
        let orig_end = from + (at + insn.len) as u64;
        match insn.kind {
            Kind::Plain | Kind::Return => out.extend_from_slice(orig),
            Kind::RipRelative { disp_at } => {
                let d = i32::from_le_bytes(orig[disp_at..disp_at + 4].try_into().expect("4"));
                let target = orig_end.wrapping_add(d as i64 as u64);
                let new_end = to + (out.len() + insn.len) as u64;
                let nd = rel32_to(new_end, target).ok_or(RelocateError::OutOfReach { at })?;
                let start = out.len();
                out.extend_from_slice(orig);
                out[start + disp_at..start + disp_at + 4].copy_from_slice(&nd.to_le_bytes());
            }
            Kind::CondBranch { rel, .. } | Kind::Jump { rel } => {
                let target = orig_end.wrapping_add(rel as i64 as u64);
                if (from..from + consumed as u64).contains(&target) {
                    return Err(RelocateError::BranchIntoPatch { at });
                }
                let cond;
                let (prefix, len): (&[u8], usize) = match insn.kind {
                    Kind::CondBranch { cc, .. } => {
                        cond = [0x0f, 0x80 + cc];
                        (&cond[..], 6)
                    }
                    _ => (&[0xe9][..], 5),
                };
                let new_end = to + (out.len() + len) as u64;
                let nr = rel32_to(new_end, target).ok_or(RelocateError::OutOfReach { at })?;
                out.extend_from_slice(prefix);
                out.extend_from_slice(&nr.to_le_bytes());
            }
        }
    }
    Ok(Relocated {
        code: out,
        consumed,
        inner_boundaries: inner,
    })
}

/// Positions in `code` (loaded at `base`) of byte patterns that would be relative branches or
/// calls to one of `targets` if they were instructions. A linear scan of every byte, so it
/// finds every real branch and maybe some that are only data: a hit means "do not patch",
/// never "patch".
pub fn branches_to(code: &[u8], base: u64, targets: &[u64]) -> Vec<u64> {
    let mut hits = Vec::new();
    let at = |p: usize, len: usize, rel: i64| {
        let t = (base + (p + len) as u64).wrapping_add(rel as u64);
        targets.contains(&t)
    };
    for p in 0..code.len() {
        let b = code[p];
        let hit = match b {
            0x70..=0x7f | 0xe3 | 0xeb => code.get(p + 1).is_some_and(|r| at(p, 2, *r as i8 as i64)),
            0xe8 | 0xe9 => code
                .get(p + 1..p + 5)
                .is_some_and(|r| at(p, 5, i32::from_le_bytes([r[0], r[1], r[2], r[3]]) as i64)),
            0x0f => {
                code.get(p + 1).is_some_and(|c| (0x80..=0x8f).contains(c))
                    && code.get(p + 2..p + 6).is_some_and(|r| {
                        at(p, 6, i32::from_le_bytes([r[0], r[1], r[2], r[3]]) as i64)
                    })
            }
            _ => false,
        };
        if hit {
            hits.push(base + p as u64);
        }
    }
    hits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn len(b: &[u8]) -> usize {
        decode(b).unwrap_or_else(|e| panic!("{e}")).len
    }

    #[test]
    fn lengths_of_the_known_prologue_instructions() {
        // the kernel 6.x prologues: clock_gettime, gettimeofday, time
        assert_eq!(len(&[0x55]), 1); // push rbp
        assert_eq!(len(&[0x48, 0x89, 0xe5]), 3); // mov rbp, rsp
        assert_eq!(len(&[0x41, 0x56]), 2); // push r14
        assert_eq!(len(&[0x48, 0x83, 0xe4, 0xf0]), 4); // and rsp, -16
        assert_eq!(len(&[0x48, 0x83, 0xec, 0x10]), 4); // sub rsp, 16
        assert_eq!(len(&[0x83, 0xff, 0x17]), 3); // cmp edi, 23
        assert_eq!(len(&[0xf3, 0x0f, 0x1e, 0xfa]), 4); // endbr64
        assert_eq!(len(&[0x89, 0xf9]), 2); // mov ecx, edi
        assert_eq!(len(&[0xb8, 1, 0, 0, 0]), 5); // mov eax, 1
        assert_eq!(len(&[0x48, 0xb8, 1, 2, 3, 4, 5, 6, 7, 8]), 10); // movabs rax, imm64
        assert_eq!(len(&[0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00]), 6); // nop word [rax+rax]
        assert_eq!(len(&[0x48, 0x8b, 0x44, 0x24, 0x08]), 5); // mov rax, [rsp+8]
        assert_eq!(len(&[0x48, 0x8b, 0x84, 0x24, 1, 0, 0, 0]), 8); // mov rax, [rsp+disp32]
        assert_eq!(len(&[0x8b, 0x04, 0x25, 0, 0, 0, 0]), 7); // mov eax, [abs32]: not RIP-relative
        assert_eq!(
            decode(&[0x8b, 0x04, 0x25, 0, 0, 0, 0]).unwrap().kind,
            Kind::Plain
        );
        // lea r10, [rip - 0x6838]
        let lea = [0x4c, 0x8d, 0x15, 0xc8, 0x97, 0xff, 0xff];
        assert_eq!(
            decode(&lea).unwrap(),
            Insn {
                len: 7,
                kind: Kind::RipRelative { disp_at: 3 }
            }
        );
        // cmp dword [rip - 0x6ae6], 0x7fffffff: the displacement comes before the immediate
        let cmp = [0x81, 0x3d, 0x1a, 0x95, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
        assert_eq!(
            decode(&cmp).unwrap(),
            Insn {
                len: 10,
                kind: Kind::RipRelative { disp_at: 2 }
            }
        );
        assert_eq!(
            decode(&[0x77, 0x67]).unwrap().kind,
            Kind::CondBranch { cc: 7, rel: 0x67 }
        );
        assert_eq!(
            decode(&[0x0f, 0x87, 0xd2, 0, 0, 0]).unwrap(),
            Insn {
                len: 6,
                kind: Kind::CondBranch { cc: 7, rel: 0xd2 }
            }
        );
    }

    #[test]
    fn unknown_and_truncated_instructions_are_refused() {
        for b in [
            &[0xe8, 0, 0, 0, 0][..],   // call
            &[0xff, 0x15, 0, 0, 0, 0], // call [rip+0]
            &[0xff, 0xe0],             // jmp rax
            &[0x0f, 0x05],             // syscall
            &[0xcc],                   // int3
            &[0x0f, 0x01, 0xf9],       // rdtscp
            &[0x8d, 0xc0],             // lea with a register operand is invalid
            &[0x48, 0x89],             // truncated
            &[0x81, 0x3d, 1, 2, 3],    // truncated displacement
            &[],
        ] {
            assert!(decode(b).is_err(), "{b:02x?}");
        }
        assert_eq!(
            decode(&[0xe8, 1, 2, 3, 4, 5, 6, 7, 8])
                .unwrap_err()
                .to_string(),
            "an instruction berth does not relocate (e8 01 02 03 04 05 06 07)"
        );
    }

    #[test]
    fn relocation_keeps_rip_relative_targets_and_branches() {
        // push rbp; lea r10, [rip-0x6838]; mov rbp, rsp  (gettimeofday on 6.18)
        let code = [
            0x55, 0x4c, 0x8d, 0x15, 0xc8, 0x97, 0xff, 0xff, 0x48, 0x89, 0xe5,
        ];
        let from = 0x7fff_0000_0830u64;
        let to = 0x7fff_0000_1c00u64;
        let r = relocate(&code, 0x2ab, from, 5, to).unwrap();
        assert_eq!(r.consumed, 8, "push rbp + lea");
        assert_eq!(r.inner_boundaries, vec![1]);
        let old_target = from + 8 - 0x6838;
        let nd = i32::from_le_bytes(r.code[4..8].try_into().unwrap());
        assert_eq!((to + 8).wrapping_add(nd as i64 as u64), old_target);
        assert_eq!(&r.code[..4], &[0x55, 0x4c, 0x8d, 0x15]);

        // cmp edi, 23; ja +0x67 (clock_getres on 6.18): the rel8 becomes a rel32
        let code = [0x83, 0xff, 0x17, 0x77, 0x67, 0x81];
        let r = relocate(&code, 0x7f, from, 5, to).unwrap();
        assert_eq!(r.consumed, 5);
        assert_eq!(&r.code[..5], &[0x83, 0xff, 0x17, 0x0f, 0x87]);
        let nr = i32::from_le_bytes(r.code[5..9].try_into().unwrap());
        assert_eq!((to + 9).wrapping_add(nr as i64 as u64), from + 5 + 0x67);
    }

    #[test]
    fn relocation_refuses_what_it_cannot_keep() {
        let from = 0x1000u64;
        // jumps back into the replaced bytes
        assert_eq!(
            relocate(&[0x90, 0x90, 0x90, 0xeb, 0xfb, 0x90], 6, from, 5, 0x2000),
            Err(RelocateError::BranchIntoPatch { at: 3 })
        );
        // returns early
        assert_eq!(
            relocate(&[0x31, 0xc0, 0xc3, 0x90, 0x90, 0x90], 6, from, 5, 0x2000),
            Err(RelocateError::EarlyReturn { at: 2 })
        );
        // a function shorter than the jump
        assert_eq!(
            relocate(&[0x31, 0xc0, 0x90, 0x90], 4, from, 5, 0x2000),
            Err(RelocateError::TooShort { size: 4 })
        );
        // an instruction running past the function's end
        assert_eq!(
            relocate(
                &[0x90, 0x90, 0x90, 0x90, 0xb8, 1, 0, 0, 0],
                6,
                from,
                5,
                0x2000
            ),
            Err(RelocateError::TooShort { size: 6 })
        );
        // a RIP-relative operand more than 2 GiB away from the copy
        assert_eq!(
            relocate(&[0x8b, 0x05, 0, 0, 0, 0], 6, from, 5, from + (3 << 30)),
            Err(RelocateError::OutOfReach { at: 0 })
        );
        assert!(matches!(
            relocate(&[0x55, 0xe8, 0, 0, 0, 0], 6, from, 5, 0x2000),
            Err(RelocateError::Unknown { at: 1, .. })
        ));
    }

    #[test]
    fn branch_scan_finds_rel8_rel32_and_calls() {
        let base = 0x1000u64;
        // 0: jne -> 0x1011; 2: jmp rel32 -> 0x1011; 7: call -> 0x1011; 12: jcc rel32 -> 0x1014
        let mut code = vec![0x75, 0x0f];
        code.extend([0xe9, 0x0a, 0, 0, 0]);
        code.extend([0xe8, 0x05, 0, 0, 0]);
        code.extend([0x0f, 0x84, 0x02, 0, 0, 0]);
        code.extend([0x90; 8]);
        assert_eq!(
            branches_to(&code, base, &[0x1011]),
            vec![0x1000, 0x1002, 0x1007]
        );
        assert_eq!(branches_to(&code, base, &[0x1014]), vec![0x100c]);
        assert!(branches_to(&code, base, &[0x1013]).is_empty());
    }
}
