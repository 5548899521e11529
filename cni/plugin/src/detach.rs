//! One way to hand work to a detached child process, for the sends that must outlive (or
//! must not delay) the plugin's answer to the runtime: a link deletion whose kernel teardown
//! takes tens of milliseconds, the gratuitous ARP/NA burst after ADD.

use std::io;
use std::os::fd::AsRawFd;

/// Forks a child that detaches (stdin/stdout/stderr on `/dev/null`, its own session), runs
/// `child` and exits with the status `child` returns. The child is not waited for: it
/// outlives this process and is reaped by init (waiting would put a scheduling round trip
/// on the runtime's path).
///
/// The runtime reads our stdout until EOF, so the child must not keep it open; `setsid`
/// keeps the runtime's signals to our process group from reaching it.
///
/// # Safety
///
/// The caller may be multi-threaded, so `child` runs where only async-signal-safe calls are
/// allowed: it must not allocate, take locks, panic or return into code that does; it may
/// use memory prepared before the fork.
pub unsafe fn fork_detached(child: impl FnOnce() -> i32) -> io::Result<()> {
    let devnull = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    let null = devnull.as_raw_fd();
    // SAFETY: fork itself has no preconditions; the child below only makes
    // async-signal-safe calls (the caller's contract for `child`) and ends in _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: dup2 and setsid are async-signal-safe and touch only descriptors.
        unsafe {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
            libc::dup2(null, 2);
            libc::setsid();
        }
        let status = child();
        // SAFETY: _exit is async-signal-safe and never returns (no atexit handlers, no
        // unwinding into the parent's copy of the stack).
        unsafe { libc::_exit(status) }
    }
    Ok(())
}
