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

#[cfg(not(test))]
#[unsafe(no_mangle)]
extern "C" fn main(_argc: c_int, _argv: *const *const c_char) -> c_int {
    let mut input = Vec::new();
    // An unreadable stdin is left for the executor to report (code 5) on the empty input.
    let _ = std::io::stdin().lock().read_to_end(&mut input);
    let input = berth_ipam::normalize_stdin(input);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let code = berth_cni_spec::execute(
        &berth_ipam::BerthIpam,
        |k| std::env::var(k).ok(),
        &mut input.as_slice(),
        &mut out,
    );
    let _ = out.flush();
    code
}
