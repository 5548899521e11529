//! Patching a process, changing its offset, and reading back what it carries.
//!
//! [`patch`] works in this order, so that the process is consistent after every step, even if
//! berth stops half-way (the agent killed, the process exiting):
//!
//! 1. read the vDSO while the process runs, check its layout and compute the plan (nothing
//!    written yet; any doubt refuses, with the reason);
//! 2. stop every thread; read the vDSO again and refuse if it changed;
//! 3. if a thread is stopped at, or would return from a signal handler to, an instruction
//!    boundary inside the 5 bytes a jump replaces, let the process go and try again a little
//!    later (a few times, then refuse);
//! 4. write berth's block (data, then code) into the unused end of the vDSO: nothing jumps
//!    there yet, so this changes no behaviour; read it back;
//! 5. write each function's jump (`clock_gettime`, then `gettimeofday`, then `time`): each is
//!    complete on its own, and all threads are stopped while the bytes change; read each back;
//! 6. let the threads go.
//!
//! The patch lives in the process's private copy of the vDSO pages, so `fork` copies it to
//! children and `exec` drops it (a new program gets a fresh vDSO).

use super::image::{self, BLOCK_SIZE, LayoutError, VdsoImage};
use super::process::{Memory, Process, ProcessError, Thread};
use super::trampoline::{
    self, BlockState, CODE_AT, INDEX_AT, PlanError, SLOT_SIZE, SLOTS_AT, Slot, TOKEN_AT,
};

/// How many times a patch waits for threads to leave the bytes it replaces.
pub const ATTEMPTS: u32 = 20;
/// How far above a thread's stack pointer signal frames are looked for.
pub const STACK_SCAN: u64 = 64 * 1024;

/// A patch that worked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patched {
    /// Start of the vDSO mapping.
    pub vdso: u64,
    /// Address of berth's block.
    pub block: u64,
    /// The process carried berth's complete patch already (its offset and token were
    /// rewritten).
    pub already: bool,
    /// How many times threads were found inside the replaced bytes first.
    pub retries: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error("the process has no vDSO")]
    NoVdso,
    #[error("the vDSO's layout is not what berth expects: {0}")]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("the vDSO holds changes berth did not make (or made by another version of berth)")]
    Foreign,
    #[error(
        "berth's time shim is loaded in the process: its C library's clock is already shifted, \
         patching the vDSO would shift it twice"
    )]
    ShimLoaded,
    #[error("the vDSO changed while berth was preparing the patch")]
    Changed,
    #[error("a thread kept stopping inside the first bytes of a clock function ({0})")]
    Busy(String),
    #[error("writing {0} did not take effect")]
    WriteCheck(&'static str),
    #[error(transparent)]
    Process(#[from] ProcessError),
}

impl PatchError {
    /// The process exited: nothing to report about its clock.
    pub fn is_gone(&self) -> bool {
        matches!(self, PatchError::Process(ProcessError::Gone))
    }
}

/// The `[vdso]` mapping in `/proc/<pid>/maps`: (start, end).
pub fn find_vdso(maps: &str) -> Option<(u64, u64)> {
    let line = maps.lines().find(|l| l.trim_end().ends_with("[vdso]"))?;
    let (a, b) = line.split_whitespace().next()?.split_once('-')?;
    let (a, b) = (
        u64::from_str_radix(a, 16).ok()?,
        u64::from_str_radix(b, 16).ok()?,
    );
    (b > a && b - a <= 1 << 20).then_some((a, b))
}

/// Whether berth's time shim is mapped (`libberth-faketime*.so` in the maps).
pub fn shim_loaded(maps: &str) -> bool {
    maps.lines().any(|l| {
        l.split_whitespace()
            .nth(5)
            .and_then(|p| p.rsplit('/').next())
            .is_some_and(|n| n.starts_with("libberth-faketime"))
    })
}

/// The mapping (start, end) that contains `addr`.
fn mapping_of(maps: &str, addr: u64) -> Option<(u64, u64)> {
    maps.lines().find_map(|l| {
        let (a, b) = l.split_whitespace().next()?.split_once('-')?;
        let (a, b) = (
            u64::from_str_radix(a, 16).ok()?,
            u64::from_str_radix(b, 16).ok()?,
        );
        (a <= addr && addr < b).then_some((a, b))
    })
}

fn read_vdso(p: &dyn Memory, maps: &str) -> Result<(u64, Vec<u8>), PatchError> {
    let (start, end) = find_vdso(maps).ok_or(PatchError::NoVdso)?;
    let mut mem = vec![0u8; (end - start) as usize];
    p.read(start, &mut mem)?;
    Ok((start, mem))
}

/// The image and, for a process berth patched before, the original bytes back in place.
fn original(mem: &[u8]) -> Result<(VdsoImage, Vec<u8>, bool), PatchError> {
    let img = image::parse(mem)?;
    image::check_tail(mem, &img)?;
    match trampoline::block_state(&mem[img.block..]) {
        BlockState::Empty => Ok((img, mem.to_vec(), false)),
        BlockState::Berth { saved, .. } => {
            let orig = trampoline::unpatched(mem, &saved, img.block);
            let again = image::parse(&orig)?;
            if again != img {
                return Err(PatchError::Foreign);
            }
            Ok((img, orig, true))
        }
        BlockState::Foreign => Err(PatchError::Foreign),
    }
}

/// A thread that must not be where a jump is written: stopped at a hazard, or with a hazard
/// on its stack (the saved instruction pointer of a signal frame: a handler is running and
/// would return into the middle of the jump). Return addresses never point there (the
/// replaced bytes contain no call), so a hazard found on a stack is a signal frame or an
/// unlucky value; either way, wait.
fn in_the_way(
    p: &dyn Memory,
    maps: &str,
    threads: &[Thread],
    hazards: &[u64],
) -> Result<Option<String>, PatchError> {
    for t in threads {
        if hazards.contains(&t.rip) {
            return Ok(Some(format!("thread {} stopped at {:#x}", t.tid, t.rip)));
        }
        let Some((_, end)) = mapping_of(maps, t.rsp) else {
            continue;
        };
        let from = t.rsp & !7;
        let len = (end - from).min(STACK_SCAN) as usize;
        let mut buf = vec![0u8; len];
        if p.read(from, &mut buf).is_err() {
            // a guard page or an unreadable stack: nothing a handler could return from
            continue;
        }
        for (i, w) in buf.chunks_exact(8).enumerate() {
            let v = u64::from_le_bytes(w.try_into().expect("8"));
            if hazards.contains(&v) {
                return Ok(Some(format!(
                    "thread {} has {v:#x} on its stack at {:#x}",
                    t.tid,
                    from + 8 * i as u64
                )));
            }
        }
    }
    Ok(None)
}

fn write_checked(
    p: &dyn Memory,
    addr: u64,
    data: &[u8],
    what: &'static str,
) -> Result<(), PatchError> {
    p.write(addr, data)?;
    let mut back = vec![0u8; data.len()];
    p.read(addr, &mut back)?;
    if back != data {
        return Err(PatchError::WriteCheck(what));
    }
    Ok(())
}

/// Patches the vDSO of `p` so that its wall clocks run `offset_ns` ahead, tagged with `token`
/// (which container the patch belongs to). A process berth patched before gets the new token
/// and offset; anything unexpected refuses with the reason and leaves the process as it was.
pub fn patch(p: &mut dyn Process, token: u64, offset_ns: i64) -> Result<Patched, PatchError> {
    let maps = p.maps()?;
    if shim_loaded(&maps) {
        return Err(PatchError::ShimLoaded);
    }
    let (base, mem) = read_vdso(p, &maps)?;
    let (img, orig, had_block) = original(&mem)?;
    let plan = trampoline::plan(&orig, &img, base, token, Slot::from_nanos(offset_ns))?;
    // Each jump is either still the original bytes or already berth's.
    let mut todo = Vec::new();
    for c in &plan.commits {
        let now = &mem[c.at..c.at + c.bytes.len()];
        if now == c.bytes.as_slice() {
            continue;
        }
        if now != c.expect.as_slice() {
            return Err(PatchError::Foreign);
        }
        todo.push(c.clone());
    }
    if !had_block && todo.len() != plan.commits.len() {
        return Err(PatchError::Foreign);
    }
    let hazards: Vec<u64> = plan.hazards.iter().map(|h| base + *h as u64).collect();
    let block_addr = base + img.block as u64;
    let mut retries = 0;
    loop {
        let threads = p.stop()?;
        let result = (|| -> Result<Option<String>, PatchError> {
            let maps = p.maps()?;
            let (base2, mem2) = read_vdso(p, &maps)?;
            if base2 != base || mem2 != mem {
                return Err(PatchError::Changed);
            }
            if !todo.is_empty()
                && let Some(why) = in_the_way(p, &maps, &threads, &hazards)?
            {
                return Ok(Some(why));
            }
            // Data first, then code: the block is reached only once a jump is written.
            write_checked(p, block_addr, &plan.block[..CODE_AT], "berth's data")?;
            write_checked(
                p,
                block_addr + CODE_AT as u64,
                &plan.block[CODE_AT..],
                "berth's trampolines",
            )?;
            for c in &todo {
                write_checked(p, base + c.at as u64, &c.bytes, c.name)?;
            }
            Ok(None)
        })();
        p.resume();
        match result? {
            None => {
                return Ok(Patched {
                    vdso: base,
                    block: block_addr,
                    already: had_block && todo.is_empty(),
                    retries,
                });
            }
            Some(why) => {
                retries += 1;
                if retries >= ATTEMPTS {
                    return Err(PatchError::Busy(why));
                }
                // Let the thread run out of the function's first instructions (or its
                // signal handler finish).
                std::thread::sleep(std::time::Duration::from_millis(2 * retries as u64));
            }
        }
    }
}

/// What a process's vDSO carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Carried {
    /// No berth patch.
    Nothing,
    /// berth's patch (at least its block), with the offset in force.
    Patch {
        token: u64,
        offset_ns: Option<i64>,
        /// The three jumps are in place.
        complete: bool,
    },
    /// Something berth did not write.
    Foreign,
}

/// Reads what the vDSO of the process behind `m` carries (the process keeps running).
pub fn carried(m: &dyn Memory) -> Result<Carried, PatchError> {
    let maps = m.maps()?;
    let (base, mem) = read_vdso(m, &maps)?;
    let img = match image::parse(&mem) {
        Ok(i) => i,
        Err(_) => return Ok(Carried::Foreign),
    };
    match trampoline::block_state(&mem[img.block..]) {
        BlockState::Empty => Ok(Carried::Nothing),
        BlockState::Foreign => Ok(Carried::Foreign),
        BlockState::Berth { token, slot, .. } => {
            let complete = match original(&mem) {
                Ok((img, orig, _)) => {
                    match trampoline::plan(
                        &orig,
                        &img,
                        base,
                        token,
                        slot.unwrap_or(Slot::from_nanos(0)),
                    ) {
                        Ok(plan) => plan
                            .commits
                            .iter()
                            .all(|c| mem[c.at..c.at + c.bytes.len()] == c.bytes[..]),
                        Err(_) => false,
                    }
                }
                Err(_) => false,
            };
            Ok(Carried::Patch {
                token,
                offset_ns: slot.map(|s| s.as_nanos()),
                complete,
            })
        }
    }
}

/// What [`set_offset`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOutcome {
    /// The offset was changed.
    Changed,
    /// The process carries berth's patch with this offset already.
    Unchanged,
    /// The process carries no patch of this token (it was started by `exec`, or belongs to
    /// another container).
    NotPatched,
}

/// Changes the offset of a patched process while it runs: the slot not in force first, then
/// the index byte (see [`super::trampoline`]).
pub fn set_offset(m: &dyn Memory, token: u64, offset_ns: i64) -> Result<SetOutcome, PatchError> {
    let maps = m.maps()?;
    let (_, end) = find_vdso(&maps).ok_or(PatchError::NoVdso)?;
    let block = end
        .checked_sub(BLOCK_SIZE as u64)
        .ok_or(PatchError::NoVdso)?;
    let mut head = [0u8; CODE_AT];
    m.read(block, &mut head)?;
    if &head[..8] != trampoline::MAGIC
        || u64::from_le_bytes(head[TOKEN_AT..TOKEN_AT + 8].try_into().expect("8")) != token
    {
        return Ok(SetOutcome::NotPatched);
    }
    let index = head[INDEX_AT] & 1;
    let slot = Slot::from_nanos(offset_ns);
    let cur = SLOTS_AT + index as usize * SLOT_SIZE;
    if Slot::from_bytes(&head[cur..cur + SLOT_SIZE]) == Some(slot) {
        return Ok(SetOutcome::Unchanged);
    }
    let next = 1 - index;
    let at = block + (SLOTS_AT + next as usize * SLOT_SIZE) as u64;
    write_checked(m, at, &slot.to_bytes(), "the offset")?;
    write_checked(m, block + INDEX_AT as u64, &[next], "the offset's index")?;
    Ok(SetOutcome::Changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_are_read_for_the_vdso_and_the_shim() {
        let maps = "\
5566aa000000-5566aa001000 r--p 00000000 08:01 123 /usr/bin/app
7f0000000000-7f0000001000 r-xp 00000000 08:01 456 /.berth/faketime/libberth-faketime.so
7ffd8a1f6000-7ffd8a1f8000 r-xp 00000000 00:00 0                          [vdso]
";
        assert_eq!(find_vdso(maps), Some((0x7ffd8a1f6000, 0x7ffd8a1f8000)));
        assert!(shim_loaded(maps));
        assert!(!shim_loaded(&maps.replace("libberth-faketime", "libother")));
        assert_eq!(find_vdso("5566aa000000-5566aa001000 r--p 0 0 0 /x\n"), None);
        assert_eq!(
            mapping_of(maps, 0x7f0000000800),
            Some((0x7f0000000000, 0x7f0000001000))
        );
    }
}
