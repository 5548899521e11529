//! berth-ipam: the fixed-IP IPAM library as a standalone CNI IPAM plugin
//! (`"ipam": {"type": "berth-ipam", …}` under bridge, macvlan, …).
//!
//! The runtime starts one process per ADD/DEL, so start-up is part of every operation: `main`
//! is the C entry point (`no_main`), which skips the Rust runtime's set-up of a stack-overflow
//! handler for the main thread (it reads `/proc/self/maps` and maps an alternate signal
//! stack on every start). A stack overflow is then a plain SIGSEGV instead of a message;
//! nothing else changes: arguments, environment, stdio and panics work as usual.

// The test harness of this target brings its own `main`.
#![cfg_attr(not(test), no_main)]

#[cfg(not(test))]
use std::ffi::{c_char, c_int};
#[cfg(not(test))]
use std::io::{Read, Write};

/// One process per CNI call: its few hundred allocations come from a static arena and are
/// never freed one by one (`berth_cni_spec::arena`).
#[cfg(not(test))]
#[global_allocator]
static ALLOCATOR: berth_cni_spec::arena::OneShotArena = berth_cni_spec::arena::OneShotArena::new();

#[cfg(not(test))]
#[unsafe(no_mangle)]
extern "C" fn main(_argc: c_int, _argv: *const *const c_char) -> c_int {
    use std::os::fd::FromRawFd;
    // The descriptors as plain files: std's stdin and stdout would allocate and lock buffers
    // this one read and one write do not need. ManuallyDrop: fds 0 and 1 are not ours to close.
    // SAFETY: fds 0 and 1 are open for the process's lifetime (the runtime passes pipes; a
    // closed one makes the calls fail, which is handled) and nothing else owns them here.
    let mut stdin = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(0) });
    // SAFETY: as for fd 0 just above.
    let mut stdout = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(1) });
    // Network configs are a few hundred bytes: room up front reads one in one call instead of
    // read_to_end's growing probes.
    let mut input = Vec::with_capacity(16 << 10);
    // An unreadable stdin is left for the executor to report (code 5) on the empty input.
    let _ = stdin.read_to_end(&mut input);
    let input = berth_ipam::normalize_stdin(input);
    let mut out = Vec::with_capacity(4 << 10);
    let code = berth_cni_spec::execute(
        &berth_ipam::BerthIpam,
        |k| std::env::var(k).ok(),
        &mut input.as_slice(),
        &mut out,
    );
    // The runtime reads the result to EOF; a failed write leaves it an empty result, which
    // it reports as the plugin's failure.
    let _ = stdout.write_all(&out);
    code
}
