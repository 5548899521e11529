//! Shifting the wall clock of programs the shim cannot reach (static binaries, Go, musl) by
//! patching their vDSO, x86-64 only.
//!
//! Such programs read the time from the vDSO, the kernel's small shared object mapped into
//! every process, without going through a C library `LD_PRELOAD` could wrap. berth patches the
//! vDSO of a running process instead: its `clock_gettime`, `gettimeofday` and `time` get a
//! 5-byte jump at their start into a block berth writes into the unused end of the vDSO
//! mapping. The block holds the offset and three trampolines that call the original function
//! (its first instructions moved into the block, then a jump back) and add the offset for the
//! wall clocks the shim fakes; every other clock, `CLOCK_MONOTONIC` included, runs the original
//! code untouched. No system call, no extra mapping, no code of berth's runs in the process
//! outside these functions: a faked `clock_gettime(CLOCK_REALTIME)` costs a few nanoseconds
//! more than a real one (`scripts/bench faketime`).
//!
//! - [`image`]: the vDSO's ELF layout, checked before anything is written;
//! - [`x86`]: the few instructions berth knows how to move (anything else: not patched);
//! - [`trampoline`]: the block's layout and code;
//! - [`process`]: the seam to a real process (`/proc/<pid>/mem`, ptrace to stop threads);
//! - [`patch`]: the order of operations, changing the offset later, reading back the state.
//!
//! What it reaches: the patched process and every child it forks afterwards (they inherit a
//! copy of the patched pages; each copy is updated on its own when the offset changes). What
//! it does not: a program started by `exec` (it gets a fresh vDSO), so neither CRI exec nor a
//! process that execs another; and anything that makes the `clock_gettime` system call itself.

pub mod image;
pub mod patch;
pub mod process;
pub mod trampoline;
pub mod x86;

pub use patch::{Carried, PatchError, Patched, SetOutcome, carried, patch, set_offset};
pub use process::{Memory, ProcMem, Process, ProcessError, Ptraced, Thread};

use crate::Coverage;

impl Coverage {
    /// Whether patching the vDSO of the running entry point can shift its clock: x86-64
    /// programs the shim does not cover because they read the vDSO themselves (static, Go)
    /// or cannot load the shim (musl).
    pub fn vdso_patchable(&self) -> bool {
        matches!(
            self,
            Coverage::Static | Coverage::Musl { .. } | Coverage::GoRuntime { .. }
        )
    }
}

/// The token that marks a container's patch: FNV-1a of its id, so an agent that lost its
/// state still recognises its containers' processes.
pub fn token_for(container_id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h | 1 // never 0, which an empty block has
}

/// Whether the running kernel's vDSO can be patched: its layout checked and the plan computed
/// on this process's own (identical) vDSO, without writing anything. The agent asks once at
/// start; a process's own vDSO is checked again before it is patched.
pub fn check_kernel() -> Result<(), PatchError> {
    if !cfg!(target_arch = "x86_64") {
        return Err(PatchError::Layout(image::LayoutError::NotX86_64Elf));
    }
    let pid = std::process::id();
    let maps = std::fs::read_to_string("/proc/self/maps").map_err(|e| {
        PatchError::Process(ProcessError::Io {
            what: "cannot read /proc/self/maps".into(),
            source: e,
        })
    })?;
    let (start, end) = patch::find_vdso(&maps).ok_or(PatchError::NoVdso)?;
    let mem = ProcMem::open(pid)?;
    let mut bytes = vec![0u8; (end - start) as usize];
    mem.read(start, &mut bytes)?;
    let img = image::parse(&bytes)?;
    image::check_tail(&bytes, &img)?;
    if trampoline::block_state(&bytes[img.block..]) != trampoline::BlockState::Empty {
        return Err(PatchError::Foreign);
    }
    trampoline::plan(&bytes, &img, start, 1, trampoline::Slot::from_nanos(0))?;
    process::ptrace_allowed()?;
    Ok(())
}

/// Patches process `pid` (stopping its threads with ptrace while the jumps are written).
pub fn patch_pid(pid: u32, token: u64, offset_ns: i64) -> Result<Patched, PatchError> {
    let mut p = Ptraced::open(pid)?;
    patch(&mut p, token, offset_ns)
}

/// Changes the offset of process `pid` if it carries the patch of `token`.
pub fn set_offset_pid(pid: u32, token: u64, offset_ns: i64) -> Result<SetOutcome, PatchError> {
    set_offset(&ProcMem::open(pid)?, token, offset_ns)
}

/// What process `pid`'s vDSO carries.
pub fn carried_pid(pid: u32) -> Result<Carried, PatchError> {
    carried(&ProcMem::open(pid)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_stable_and_never_zero() {
        assert_eq!(token_for("abc"), token_for("abc"));
        assert_ne!(token_for("abc"), token_for("abd"));
        assert_ne!(token_for(""), 0);
    }

    #[test]
    fn patchable_coverages() {
        assert!(Coverage::Static.vdso_patchable());
        assert!(
            Coverage::GoRuntime {
                interpreter: "/lib64/ld-linux-x86-64.so.2".into()
            }
            .vdso_patchable()
        );
        assert!(
            !Coverage::ForeignArch {
                machine: 183,
                class64: true
            }
            .vdso_patchable()
        );
        assert!(
            !Coverage::Glibc {
                interpreter: "/lib64/ld-linux-x86-64.so.2".into(),
                glibc: None
            }
            .vdso_patchable()
        );
    }
}
