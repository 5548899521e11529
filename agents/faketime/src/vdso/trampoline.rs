//! berth's block in the vDSO: the offset (data) and three trampolines (code), and the 5-byte
//! jumps that send the vDSO's `clock_gettime`, `gettimeofday` and `time` into them.
//!
//! The block sits in the unused end of the vDSO mapping (see [`super::image`]), so every
//! address in it is within a few KiB of the functions and of the kernel's `vvar` data: rel32
//! jumps and RIP-relative loads reach everything. Its layout (version 1):
//!
//! | offset | size | what |
//! |---|---|---|
//! | 0 | 8 | magic `BERTHVD1` (the layout version is part of it) |
//! | 8 | 8 | token: which container's patch this is |
//! | 16 | 1 | index of the slot in force (0 or 1) |
//! | 32 | 16 | slot 0: seconds (i64), nanoseconds (u32, 0..1e9), microseconds (u32) |
//! | 48 | 16 | slot 1 |
//! | 64 | 3×16 | each patched function: offset in the mapping (u32), length (u8), original bytes |
//! | 128 | … | code |
//!
//! **Changing the offset** without stopping the process: write the slot that is not in force,
//! then the index byte (a one-byte store is atomic). A reader loads the index, then its slot;
//! the slot it reads is rewritten only by the change after next, so a reader sees a torn
//! offset only if it stalls between those two loads for longer than the time between two
//! changes.
//!
//! **The trampolines** (System V calling convention; the vDSO functions are ordinary leaf
//! functions): `clock_gettime` calls the original (its relocated first instructions, then a
//! jump back) for the wall clocks the shim fakes (`CLOCK_REALTIME`, `_COARSE`, `_ALARM`,
//! `CLOCK_TAI`) and adds the offset to a successful result; every other clock jumps straight
//! to the original (a tail jump: the original returns to the caller). `gettimeofday` does the
//! same for a non-NULL `tv`. `time` reads `CLOCK_REALTIME_COARSE` through the original
//! `clock_gettime` (what the vDSO's `time` reads) and adds the offset with its carry, like the
//! shim. They use only the caller-saved registers and the stack below the caller's, keep the
//! stack 16-byte aligned at every call, and pair every call with a return (so a shadow stack
//! stays consistent).

use super::image::{BLOCK_SIZE, Function, VdsoImage};
use super::x86::{self, RelocateError};

pub const MAGIC: &[u8; 8] = b"BERTHVD1";
pub const TOKEN_AT: usize = 8;
pub const INDEX_AT: usize = 16;
pub const SLOTS_AT: usize = 32;
pub const SLOT_SIZE: usize = 16;
pub const SAVED_AT: usize = 64;
const SAVED_SIZE: usize = 16;
pub const CODE_AT: usize = 128;
/// The length of the jump written over each function's start.
pub const JUMP_LEN: usize = 5;

/// The clocks whose readings get the offset: bit `n` for clock id `n`. The same set as the
/// shim's (`CLOCK_REALTIME` 0, `CLOCK_REALTIME_COARSE` 5, `CLOCK_REALTIME_ALARM` 8,
/// `CLOCK_TAI` 11); the highest is [`MAX_WALL_CLOCK`].
pub const WALL_CLOCKS: u32 = (1 << 0) | (1 << 5) | (1 << 8) | (1 << 11);
pub const MAX_WALL_CLOCK: u8 = 11;

/// An offset as the trampolines read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub sec: i64,
    pub nsec: u32,
    pub usec: u32,
}

impl Slot {
    pub fn from_nanos(ns: i64) -> Slot {
        let nsec = ns.rem_euclid(1_000_000_000) as u32;
        Slot {
            sec: ns.div_euclid(1_000_000_000),
            nsec,
            usec: nsec / 1000,
        }
    }

    pub fn as_nanos(&self) -> i64 {
        self.sec
            .saturating_mul(1_000_000_000)
            .saturating_add(self.nsec as i64)
    }

    pub fn to_bytes(self) -> [u8; SLOT_SIZE] {
        let mut b = [0u8; SLOT_SIZE];
        b[..8].copy_from_slice(&self.sec.to_le_bytes());
        b[8..12].copy_from_slice(&self.nsec.to_le_bytes());
        b[12..16].copy_from_slice(&self.usec.to_le_bytes());
        b
    }

    pub fn from_bytes(b: &[u8]) -> Option<Slot> {
        let s = Slot {
            sec: i64::from_le_bytes(b.get(..8)?.try_into().ok()?),
            nsec: u32::from_le_bytes(b.get(8..12)?.try_into().ok()?),
            usec: u32::from_le_bytes(b.get(12..16)?.try_into().ok()?),
        };
        (s.nsec < 1_000_000_000 && s.usec == s.nsec / 1000).then_some(s)
    }
}

/// One function's jump: write `bytes` at `at` (offset in the mapping) where `expect` is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub name: &'static str,
    pub at: usize,
    pub expect: Vec<u8>,
    pub bytes: Vec<u8>,
}

/// Everything a patch writes, computed from the unpatched image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The whole block, data and code, for offset [`VdsoImage::block`].
    pub block: Vec<u8>,
    /// The jumps, in the order they are written (`clock_gettime` first).
    pub commits: Vec<Commit>,
    /// Offsets in the mapping where no thread may be stopped, nor return to from a signal
    /// handler, when the jumps are written: instruction boundaries inside the 5 bytes each
    /// jump replaces.
    pub hazards: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("cannot move the first instructions of {name}: {source}")]
    Relocate {
        name: &'static str,
        #[source]
        source: RelocateError,
    },
    #[error(
        "a branch at vDSO offset {at:#x} may jump into the first bytes of {name}, which the jump would replace"
    )]
    BranchInto { name: &'static str, at: usize },
    #[error("berth's trampolines need {0} bytes, more than the block's {BLOCK_SIZE}")]
    TooBig(usize),
}

/// A tiny assembler: bytes, labels, and rel8/rel32 fix-ups to labels or absolute addresses.
struct Asm {
    base: u64,
    code: Vec<u8>,
    labels: Vec<Option<usize>>,
    fixups: Vec<(usize, u8, Target)>,
}

#[derive(Clone, Copy)]
enum Target {
    Label(usize),
    Abs(u64),
}

impl Asm {
    fn new(base: u64) -> Asm {
        Asm {
            base,
            code: Vec::new(),
            labels: Vec::new(),
            fixups: Vec::new(),
        }
    }
    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }
    fn bind(&mut self, l: usize) {
        self.labels[l] = Some(self.code.len());
    }
    fn b(&mut self, bytes: &[u8]) -> &mut Asm {
        self.code.extend_from_slice(bytes);
        self
    }
    /// A 4-byte displacement relative to the end of the instruction, which these 4 bytes end.
    fn rel32(&mut self, t: Target) -> &mut Asm {
        self.fixups.push((self.code.len(), 4, t));
        self.code.extend_from_slice(&[0; 4]);
        self
    }
    fn rel8(&mut self, l: usize) -> &mut Asm {
        self.fixups.push((self.code.len(), 1, Target::Label(l)));
        self.code.push(0);
        self
    }
    fn finish(mut self) -> Vec<u8> {
        for (at, width, t) in std::mem::take(&mut self.fixups) {
            let target = match t {
                Target::Label(l) => self.base + self.labels[l].expect("label bound") as u64,
                Target::Abs(a) => a,
            };
            let end = self.base + (at + width as usize) as u64;
            let rel = target.wrapping_sub(end) as i64;
            if width == 1 {
                let r = i8::try_from(rel).expect("short branch within reach");
                self.code[at] = r as u8;
            } else {
                let r = i32::try_from(rel).expect("the block is within 2 GiB of the vDSO");
                self.code[at..at + 4].copy_from_slice(&r.to_le_bytes());
            }
        }
        self.code
    }
}

/// `rdx` = address of the slot in force (clobbers `rcx`).
fn load_slot(a: &mut Asm, data: u64) {
    a.b(&[0x0f, 0xb6, 0x0d])
        .rel32(Target::Abs(data + INDEX_AT as u64)); // movzx ecx, byte [index]
    a.b(&[0x83, 0xe1, 0x01]); // and ecx, 1
    a.b(&[0xc1, 0xe1, 0x04]); // shl ecx, 4
    a.b(&[0x48, 0x8d, 0x15])
        .rel32(Target::Abs(data + SLOTS_AT as u64)); // lea rdx, [slot 0]
    a.b(&[0x48, 0x01, 0xca]); // add rdx, rcx
}

/// Where each function's jump goes and what it replaces.
struct Site {
    name: &'static str,
    f: Function,
    /// Offset of the jump: the function's start, or after its `endbr64` (kept so that an
    /// indirect call still lands on one if indirect branch tracking is ever enforced).
    at: usize,
}

fn site(name: &'static str, f: Function, mem: &[u8]) -> Site {
    let endbr = mem[f.offset..].starts_with(&[0xf3, 0x0f, 0x1e, 0xfa]);
    Site {
        name,
        f,
        at: f.offset + if endbr { 4 } else { 0 },
    }
}

/// Computes the block and the jumps for `mem`, the unpatched vDSO mapped at `base`, with
/// `token` and the offset `slot`.
pub fn plan(
    mem: &[u8],
    image: &VdsoImage,
    base: u64,
    token: u64,
    slot: Slot,
) -> Result<Plan, PlanError> {
    let data = base + image.block as u64;
    let sites = [
        site("clock_gettime", image.clock_gettime, mem),
        site("gettimeofday", image.gettimeofday, mem),
        site("time", image.time, mem),
    ];
    let mut a = Asm::new(data + CODE_AT as u64);
    let mut entries = Vec::new();
    let mut hazards: Vec<(&'static str, usize)> = Vec::new();
    let mut originals = Vec::new();

    // Each function: its trampoline T, then O (its relocated first instructions + jump back).
    let o_cgt = a.label();
    let o_gtod = a.label();
    let o_time = a.label();
    for (i, s) in sites.iter().enumerate() {
        let entry = a.label();
        a.bind(entry);
        entries.push(entry);
        match i {
            0 => {
                let (ret, store) = (a.label(), a.label());
                a.b(&[0x83, 0xff, MAX_WALL_CLOCK]); // cmp edi, 11
                a.b(&[0x0f, 0x87]).rel32(Target::Label(o_cgt)); // ja O (unsigned: also id < 0)
                a.b(&[0xb8]).b(&WALL_CLOCKS.to_le_bytes()); // mov eax, WALL_CLOCKS
                a.b(&[0x0f, 0xa3, 0xf8]); // bt eax, edi
                a.b(&[0x0f, 0x83]).rel32(Target::Label(o_cgt)); // jnc O
                a.b(&[0x56]); // push rsi
                a.b(&[0xe8]).rel32(Target::Label(o_cgt)); // call O
                a.b(&[0x5e]); // pop rsi
                a.b(&[0x85, 0xc0]); // test eax, eax
                a.b(&[0x75]).rel8(ret); // jnz ret
                load_slot(&mut a, data);
                a.b(&[0x48, 0x8b, 0x0a]); // mov rcx, [rdx]        offset seconds
                a.b(&[0x44, 0x8b, 0x42, 0x08]); // mov r8d, [rdx+8]  offset nanoseconds
                a.b(&[0x48, 0x03, 0x0e]); // add rcx, [rsi]         + tv_sec
                a.b(&[0x4c, 0x03, 0x46, 0x08]); // add r8, [rsi+8]  + tv_nsec
                a.b(&[0x49, 0x81, 0xf8]).b(&1_000_000_000u32.to_le_bytes()); // cmp r8, 1e9
                a.b(&[0x7c]).rel8(store); // jl store
                a.b(&[0x49, 0x81, 0xe8]).b(&1_000_000_000u32.to_le_bytes()); // sub r8, 1e9
                a.b(&[0x48, 0xff, 0xc1]); // inc rcx
                a.bind(store);
                a.b(&[0x48, 0x89, 0x0e]); // mov [rsi], rcx
                a.b(&[0x4c, 0x89, 0x46, 0x08]); // mov [rsi+8], r8
                a.bind(ret);
                a.b(&[0xc3]); // ret
            }
            1 => {
                let (ret, store) = (a.label(), a.label());
                a.b(&[0x48, 0x85, 0xff]); // test rdi, rdi
                a.b(&[0x0f, 0x84]).rel32(Target::Label(o_gtod)); // jz O
                a.b(&[0x57]); // push rdi
                a.b(&[0xe8]).rel32(Target::Label(o_gtod)); // call O
                a.b(&[0x5f]); // pop rdi
                a.b(&[0x85, 0xc0]); // test eax, eax
                a.b(&[0x75]).rel8(ret); // jnz ret
                load_slot(&mut a, data);
                a.b(&[0x48, 0x8b, 0x0a]); // mov rcx, [rdx]         offset seconds
                a.b(&[0x44, 0x8b, 0x42, 0x0c]); // mov r8d, [rdx+12]  offset microseconds
                a.b(&[0x48, 0x03, 0x0f]); // add rcx, [rdi]          + tv_sec
                a.b(&[0x4c, 0x03, 0x47, 0x08]); // add r8, [rdi+8]   + tv_usec
                a.b(&[0x49, 0x81, 0xf8]).b(&1_000_000u32.to_le_bytes()); // cmp r8, 1e6
                a.b(&[0x7c]).rel8(store); // jl store
                a.b(&[0x49, 0x81, 0xe8]).b(&1_000_000u32.to_le_bytes()); // sub r8, 1e6
                a.b(&[0x48, 0xff, 0xc1]); // inc rcx
                a.bind(store);
                a.b(&[0x48, 0x89, 0x0f]); // mov [rdi], rcx
                a.b(&[0x4c, 0x89, 0x47, 0x08]); // mov [rdi+8], r8
                a.bind(ret);
                a.b(&[0xc3]); // ret
            }
            _ => {
                let (fallback, no_carry, no_store) = (a.label(), a.label(), a.label());
                a.b(&[0x57]); // push rdi                      (the caller's time_t *)
                a.b(&[0x48, 0x83, 0xec, 0x10]); // sub rsp, 16   (a struct timespec)
                a.b(&[0xbf, 5, 0, 0, 0]); // mov edi, CLOCK_REALTIME_COARSE
                a.b(&[0x48, 0x89, 0xe6]); // mov rsi, rsp
                a.b(&[0xe8]).rel32(Target::Label(o_cgt)); // call O of clock_gettime
                a.b(&[0x85, 0xc0]); // test eax, eax
                a.b(&[0x75]).rel8(fallback); // jnz fallback
                load_slot(&mut a, data);
                a.b(&[0x48, 0x8b, 0x04, 0x24]); // mov rax, [rsp]    tv_sec
                a.b(&[0x48, 0x03, 0x02]); // add rax, [rdx]          + offset seconds
                a.b(&[0x8b, 0x4a, 0x08]); // mov ecx, [rdx+8]        offset nanoseconds
                a.b(&[0x48, 0x03, 0x4c, 0x24, 0x08]); // add rcx, [rsp+8]  + tv_nsec
                a.b(&[0x48, 0x81, 0xf9]).b(&1_000_000_000u32.to_le_bytes()); // cmp rcx, 1e9
                a.b(&[0x7c]).rel8(no_carry); // jl no_carry
                a.b(&[0x48, 0xff, 0xc0]); // inc rax
                a.bind(no_carry);
                a.b(&[0x48, 0x83, 0xc4, 0x10]); // add rsp, 16
                a.b(&[0x5f]); // pop rdi
                a.b(&[0x48, 0x85, 0xff]); // test rdi, rdi
                a.b(&[0x74]).rel8(no_store); // jz no_store
                a.b(&[0x48, 0x89, 0x07]); // mov [rdi], rax
                a.bind(no_store);
                a.b(&[0xc3]); // ret
                // The coarse clock failed (it does not): behave like the original time().
                a.bind(fallback);
                a.b(&[0x48, 0x83, 0xc4, 0x10]); // add rsp, 16
                a.b(&[0x5f]); // pop rdi
                a.b(&[0xe9]).rel32(Target::Label(o_time)); // jmp O of time
            }
        }
        // O: the first instructions, moved, then back to the rest of the function.
        let o = [o_cgt, o_gtod, o_time][i];
        a.bind(o);
        let here = a.base + a.code.len() as u64;
        let from = base + s.at as u64;
        let avail = s.f.offset + s.f.size - s.at;
        let r = x86::relocate(&mem[s.at..], avail, from, JUMP_LEN, here).map_err(|source| {
            PlanError::Relocate {
                name: s.name,
                source,
            }
        })?;
        a.b(&r.code);
        a.b(&[0xe9]).rel32(Target::Abs(from + r.consumed as u64));
        // Boundaries at or past the jump's end resume in intact original instructions.
        hazards.extend(
            r.inner_boundaries
                .iter()
                .filter(|b| **b < JUMP_LEN)
                .map(|b| (s.name, s.at + b)),
        );
        originals.push(mem[s.at..s.at + JUMP_LEN].to_vec());
    }
    let entry_addrs: Vec<u64> = entries
        .iter()
        .map(|l| a.base + a.labels[*l].expect("bound") as u64)
        .collect();
    let code = a.finish();
    if CODE_AT + code.len() > BLOCK_SIZE {
        return Err(PlanError::TooBig(CODE_AT + code.len()));
    }

    // No branch anywhere in the executable code may land on a hazard.
    for (name, h) in &hazards {
        let target = [base + *h as u64];
        for t in &image.text {
            if let Some(hit) =
                x86::branches_to(&mem[t.clone()], base + t.start as u64, &target).first()
            {
                let at = (hit - base) as usize;
                return Err(PlanError::BranchInto { name, at });
            }
        }
    }

    let mut block = vec![0u8; BLOCK_SIZE];
    block[..8].copy_from_slice(MAGIC);
    block[TOKEN_AT..TOKEN_AT + 8].copy_from_slice(&token.to_le_bytes());
    block[INDEX_AT] = 0;
    for i in 0..2 {
        let at = SLOTS_AT + i * SLOT_SIZE;
        block[at..at + SLOT_SIZE].copy_from_slice(&slot.to_bytes());
    }
    for (i, (s, orig)) in sites.iter().zip(&originals).enumerate() {
        let at = SAVED_AT + i * SAVED_SIZE;
        block[at..at + 4].copy_from_slice(&(s.at as u32).to_le_bytes());
        block[at + 4] = JUMP_LEN as u8;
        block[at + 8..at + 8 + JUMP_LEN].copy_from_slice(orig);
    }
    block[CODE_AT..CODE_AT + code.len()].copy_from_slice(&code);

    let commits = sites
        .iter()
        .zip(&originals)
        .zip(&entry_addrs)
        .map(|((s, orig), target)| {
            let end = base + (s.at + JUMP_LEN) as u64;
            let rel = i32::try_from(target.wrapping_sub(end) as i64).expect("within the mapping");
            let mut bytes = vec![0xe9];
            bytes.extend_from_slice(&rel.to_le_bytes());
            Commit {
                name: s.name,
                at: s.at,
                expect: orig.clone(),
                bytes,
            }
        })
        .collect();
    Ok(Plan {
        block,
        commits,
        hazards: hazards.into_iter().map(|(_, h)| h).collect(),
    })
}

/// What a vDSO's block says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockState {
    /// Zeros: never patched.
    Empty,
    /// berth's block of this layout version.
    Berth {
        token: u64,
        index: u8,
        slot: Option<Slot>,
        /// `(offset in the mapping, original bytes)` of each function.
        saved: Vec<(usize, Vec<u8>)>,
    },
    /// Something else.
    Foreign,
}

pub fn block_state(block: &[u8]) -> BlockState {
    if block.iter().all(|b| *b == 0) {
        return BlockState::Empty;
    }
    if block.len() < CODE_AT || &block[..8] != MAGIC {
        return BlockState::Foreign;
    }
    let token = u64::from_le_bytes(block[TOKEN_AT..TOKEN_AT + 8].try_into().expect("8"));
    let index = block[INDEX_AT];
    let slot = (index <= 1)
        .then(|| {
            let at = SLOTS_AT + index as usize * SLOT_SIZE;
            Slot::from_bytes(&block[at..at + SLOT_SIZE])
        })
        .flatten();
    let mut saved = Vec::new();
    for i in 0..3 {
        let at = SAVED_AT + i * SAVED_SIZE;
        let off = u32::from_le_bytes(block[at..at + 4].try_into().expect("4")) as usize;
        let len = (block[at + 4] as usize).min(8);
        saved.push((off, block[at + 8..at + 8 + len].to_vec()));
    }
    BlockState::Berth {
        token,
        index,
        slot,
        saved,
    }
}

/// The image as it was before berth patched it: the saved original bytes put back.
pub fn unpatched(mem: &[u8], saved: &[(usize, Vec<u8>)], block: usize) -> Vec<u8> {
    let mut m = mem.to_vec();
    for (off, bytes) in saved {
        if off + bytes.len() <= block {
            m[*off..off + bytes.len()].copy_from_slice(bytes);
        }
    }
    m[block..].fill(0);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fake vDSO functions in executable memory of this process, patched with a plan and
    /// called: the trampolines' arithmetic, clock selection and relocations, without ptrace.
    struct FakeVdso {
        base: *mut u8,
        len: usize,
        image: VdsoImage,
    }

    const CGT: usize = 0x100;
    const GTOD: usize = 0x180;
    const TIME: usize = 0x200;

    impl FakeVdso {
        fn new() -> FakeVdso {
            let len = 8192;
            // SAFETY: a fresh private anonymous mapping; unmapped in Drop.
            let base = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(base, libc::MAP_FAILED);
            let mut m = vec![0u8; len];
            // clock_gettime: push rbp; mov rbp, rsp; push r14; clock 99 -> -22, else
            // {1000 + clock, 999999990}
            let cgt: &[u8] = &[
                0x55, 0x48, 0x89, 0xe5, 0x41, 0x56, 0x83, 0xff, 0x63, 0x74, 0x1a, 0x48, 0x63, 0xc7,
                0x48, 0x05, 0xe8, 0x03, 0x00, 0x00, 0x48, 0x89, 0x06, 0x48, 0xc7, 0x46, 0x08, 0xf6,
                0xc9, 0x9a, 0x3b, 0x31, 0xc0, 0x41, 0x5e, 0x5d, 0xc3, 0xb8, 0xea, 0xff, 0xff, 0xff,
                0x41, 0x5e, 0x5d, 0xc3,
            ];
            // gettimeofday: push rbp; lea r10, [rip -> 0x300]; mov rbp, rsp; tv ? {[r10],
            // 999990} : nothing; return 0
            let gtod: &[u8] = &[
                0x55, 0x4c, 0x8d, 0x15, 0x78, 0x01, 0x00, 0x00, 0x48, 0x89, 0xe5, 0x48, 0x85, 0xff,
                0x74, 0x0e, 0x49, 0x8b, 0x02, 0x48, 0x89, 0x07, 0x48, 0xc7, 0x47, 0x08, 0x36, 0x42,
                0x0f, 0x00, 0x31, 0xc0, 0x5d, 0xc3,
            ];
            // time: cmp dword [rip -> 0x308], 0x7fffffff; mov eax, 3000; store if non-NULL
            let time: &[u8] = &[
                0x81, 0x3d, 0xfe, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0x7f, 0xb8, 0xb8, 0x0b, 0x00,
                0x00, 0x48, 0x85, 0xff, 0x74, 0x03, 0x48, 0x89, 0x07, 0xc3,
            ];
            m[CGT..CGT + cgt.len()].copy_from_slice(cgt);
            m[GTOD..GTOD + gtod.len()].copy_from_slice(gtod);
            m[TIME..TIME + time.len()].copy_from_slice(time);
            m[0x300..0x308].copy_from_slice(&2000u64.to_le_bytes());
            // SAFETY: the mapping is `len` bytes long and writable.
            unsafe { std::ptr::copy_nonoverlapping(m.as_ptr(), base as *mut u8, len) };
            let f = |offset, size| Function { offset, size };
            FakeVdso {
                base: base as *mut u8,
                len,
                image: VdsoImage {
                    clock_gettime: f(CGT, cgt.len()),
                    gettimeofday: f(GTOD, gtod.len()),
                    time: f(TIME, time.len()),
                    text: std::iter::once(CGT..0x280).collect(),
                    image_end: 0x400,
                    block: len - BLOCK_SIZE,
                },
            }
        }
        fn addr(&self) -> u64 {
            self.base as u64
        }
        fn bytes(&self) -> Vec<u8> {
            // SAFETY: the mapping is readable and `len` bytes long.
            unsafe { std::slice::from_raw_parts(self.base, self.len) }.to_vec()
        }
        fn write(&self, at: usize, data: &[u8]) {
            assert!(at + data.len() <= self.len);
            // SAFETY: within the writable mapping.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.base.add(at), data.len()) };
        }
        fn apply(&self, p: &Plan) {
            self.write(self.image.block, &p.block);
            for c in &p.commits {
                assert_eq!(&self.bytes()[c.at..c.at + 5], &c.expect[..]);
                self.write(c.at, &c.bytes);
            }
        }
        fn cgt(&self, clock: i32) -> (i32, i64, i64) {
            let mut ts = libc::timespec {
                tv_sec: -1,
                tv_nsec: -1,
            };
            // SAFETY: the function at CGT follows the C ABI of clock_gettime.
            let f: extern "C" fn(i32, *mut libc::timespec) -> i32 =
                unsafe { std::mem::transmute(self.base.add(CGT)) };
            let r = f(clock, &mut ts);
            (r, ts.tv_sec, ts.tv_nsec)
        }
        fn gtod(&self, null: bool) -> (i32, i64, i64) {
            let mut tv = libc::timeval {
                tv_sec: -1,
                tv_usec: -1,
            };
            let p = if null {
                std::ptr::null_mut()
            } else {
                &mut tv as *mut libc::timeval
            };
            // SAFETY: the function at GTOD follows the C ABI of gettimeofday.
            let f: extern "C" fn(*mut libc::timeval, *mut libc::c_void) -> i32 =
                unsafe { std::mem::transmute(self.base.add(GTOD)) };
            let r = f(p, std::ptr::null_mut());
            (r, tv.tv_sec, tv.tv_usec)
        }
        fn time(&self) -> (i64, i64) {
            let mut t: i64 = -1;
            // SAFETY: the function at TIME follows the C ABI of time.
            let f: extern "C" fn(*mut i64) -> i64 =
                unsafe { std::mem::transmute(self.base.add(TIME)) };
            let r = f(&mut t);
            let r2 = f(std::ptr::null_mut());
            assert_eq!(r, r2);
            (r, t)
        }
        /// What the agent does to change the offset: the other slot, then the index.
        fn set(&self, ns: i64) {
            let b = self.bytes();
            let next = 1 - (b[self.image.block + INDEX_AT] & 1) as usize;
            self.write(
                self.image.block + SLOTS_AT + next * SLOT_SIZE,
                &Slot::from_nanos(ns).to_bytes(),
            );
            self.write(self.image.block + INDEX_AT, &[next as u8]);
        }
    }

    impl Drop for FakeVdso {
        fn drop(&mut self) {
            // SAFETY: the mapping made in new().
            unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
        }
    }

    #[test]
    fn trampolines_shift_wall_clocks_only_and_follow_changes() {
        let v = FakeVdso::new();
        // unpatched behaviour of the fakes
        assert_eq!(v.cgt(0), (0, 1000, 999_999_990));
        assert_eq!(v.gtod(false), (0, 2000, 999_990));
        assert_eq!(v.time(), (3000, 3000));
        let mem = v.bytes();
        let p = plan(&mem, &v.image, v.addr(), 7, Slot::from_nanos(2_500_000_000)).unwrap();
        assert_eq!(
            p.hazards,
            vec![CGT + 1, CGT + 4, GTOD + 1],
            "boundaries inside the first 5 bytes"
        );
        v.apply(&p);
        // +2.5 s: the wall clocks carry into the next second
        for clock in [0, 5, 8, 11] {
            assert_eq!(
                v.cgt(clock),
                (0, 1000 + clock as i64 + 3, 499_999_990),
                "clock {clock}"
            );
        }
        // every other clock, negative (CPU-time) ids and failures pass through
        for clock in [1, 2, 3, 4, 6, 7, 9, 10, 12, 23, -6, i32::MIN] {
            assert_eq!(
                v.cgt(clock),
                (0, 1000 + clock as i64, 999_999_990),
                "clock {clock}"
            );
        }
        assert_eq!(v.cgt(99), (-22, -1, -1), "an error is returned as it is");
        assert_eq!(v.gtod(false), (0, 2003, 499_990));
        assert_eq!(v.gtod(true), (0, -1, -1), "NULL tv: nothing written");
        // time(): the coarse realtime clock (1005.99999999) + 2.5 s
        assert_eq!(v.time(), (1008, 1008));
        // a change while "running": the other slot, then the index
        v.set(-10_800_000_000_000); // -3h
        assert_eq!(v.cgt(0), (0, 1000 - 10_800, 999_999_990));
        assert_eq!(v.gtod(false), (0, 2000 - 10_800, 999_990));
        assert_eq!(v.time(), (1005 - 10_800, 1005 - 10_800));
        v.set(-1); // -1 ns: borrows from the seconds
        assert_eq!(v.cgt(0), (0, 1000, 999_999_989));
        assert_eq!(
            v.gtod(false),
            (0, 2000, 999_989),
            "-1 ns = -1 s + 999999 µs"
        );
        v.set(0);
        assert_eq!(v.cgt(0), (0, 1000, 999_999_990));
        assert_eq!(v.cgt(1), (0, 1001, 999_999_990));
        assert_eq!(v.gtod(false), (0, 2000, 999_990));
        assert_eq!(v.time(), (1005, 1005));
    }

    #[test]
    fn a_branch_into_the_replaced_bytes_refuses_the_plan() {
        let v = FakeVdso::new();
        // a jmp elsewhere in the text to clock_gettime + 1 (after its push rbp)
        let at = 0x260;
        let rel = (CGT + 1) as i64 - (at + 5) as i64;
        let mut jmp = vec![0xe9];
        jmp.extend_from_slice(&(rel as i32).to_le_bytes());
        v.write(at, &jmp);
        assert_eq!(
            plan(&v.bytes(), &v.image, v.addr(), 7, Slot::from_nanos(0)),
            Err(PlanError::BranchInto {
                name: "clock_gettime",
                at
            })
        );
        // an unknown first instruction: a call
        let v = FakeVdso::new();
        v.write(GTOD, &[0xe8, 0, 0, 0, 0]);
        let err = plan(&v.bytes(), &v.image, v.addr(), 7, Slot::from_nanos(0)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot move the first instructions of gettimeofday: at +0: an instruction berth does not relocate (e8 00 00 00 00 01 00 00)"
        );
    }

    #[test]
    fn slots_normalise_offsets() {
        assert_eq!(
            Slot::from_nanos(2 * 86_400 * 1_000_000_000),
            Slot {
                sec: 172_800,
                nsec: 0,
                usec: 0
            }
        );
        assert_eq!(
            Slot::from_nanos(-1_500_000_001),
            Slot {
                sec: -2,
                nsec: 499_999_999,
                usec: 499_999
            }
        );
        for ns in [0, 1, -1, 999_999_999, -10_800_000_000_000, i64::MAX / 2] {
            let s = Slot::from_nanos(ns);
            assert_eq!(s.as_nanos(), ns);
            assert_eq!(Slot::from_bytes(&s.to_bytes()), Some(s));
        }
        // an impossible slot is not read as an offset
        let mut b = Slot::from_nanos(5).to_bytes();
        b[8..12].copy_from_slice(&2_000_000_000u32.to_le_bytes());
        assert_eq!(Slot::from_bytes(&b), None);
    }

    #[test]
    fn the_running_kernels_vdso_gets_a_plan_that_fits() {
        let mem = super::super::image::tests::own_vdso();
        let img = super::super::image::parse(&mem).unwrap();
        let base = 0x7fff_1234_0000u64;
        let p = plan(&mem, &img, base, 42, Slot::from_nanos(5)).unwrap();
        assert_eq!(p.block.len(), BLOCK_SIZE);
        assert_eq!(p.commits.len(), 3);
        for c in &p.commits {
            assert_eq!(c.bytes.len(), JUMP_LEN);
            assert_eq!(c.bytes[0], 0xe9);
            let rel = i32::from_le_bytes(c.bytes[1..5].try_into().unwrap());
            let target = (c.at + JUMP_LEN) as i64 + rel as i64;
            assert!(
                target as usize >= img.block + CODE_AT
                    && (target as usize) < img.block + BLOCK_SIZE,
                "{} jumps into the block's code",
                c.name
            );
            assert_eq!(&mem[c.at..c.at + JUMP_LEN], &c.expect[..]);
        }
        match block_state(&p.block) {
            BlockState::Berth {
                token,
                index,
                slot,
                saved,
            } => {
                assert_eq!((token, index), (42, 0));
                assert_eq!(slot, Some(Slot::from_nanos(5)));
                let back = unpatched(&mem, &saved, img.block);
                assert_eq!(back, mem, "the saved bytes give the original image back");
            }
            other => panic!("{other:?}"),
        }
        // deterministic: the same image and base give the same bytes
        assert_eq!(plan(&mem, &img, base, 42, Slot::from_nanos(5)).unwrap(), p);
        assert_eq!(block_state(&vec![0; BLOCK_SIZE]), BlockState::Empty);
        assert_eq!(block_state(&vec![1; BLOCK_SIZE]), BlockState::Foreign);
    }
}
