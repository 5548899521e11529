//! The seam between the patch logic and a real process: its memory map, its memory, and
//! stopping and resuming all its threads.
//!
//! [`ProcMem`] reads and writes another process's memory through `/proc/<pid>/mem`, which
//! (unlike `process_vm_writev`) may write to the vDSO's read-only, executable pages: the kernel
//! copies the page for that process first (copy-on-write), the way a debugger sets a
//! breakpoint. It needs the same permission as attaching with ptrace, nothing more.
//!
//! [`Ptraced`] adds stopping: `PTRACE_SEIZE` + `PTRACE_INTERRUPT` on every thread in
//! `/proc/<pid>/task` (listing again until a pass finds no new thread: a thread can only be
//! created by a running thread, so once all listed threads are stopped the list is complete),
//! and `PTRACE_DETACH` to let them go. The patch never changes a thread's registers and never
//! makes the process run code of berth's choosing, so if the agent dies while threads are
//! stopped, the kernel detaches them and they carry on as if nothing happened. Two effects
//! remain visible, as for any debugger attach: a thread blocked in a call the kernel does not
//! restart (`epoll_wait`, `select`, …) returns `EINTR` once, as it would for a signal; and
//! ptrace calls must all come from the one thread that attached, so a [`Ptraced`] stays on the
//! thread that made it (it is not `Send`).

use std::fs::{File, OpenOptions};
use std::io;
use std::marker::PhantomData;
use std::os::unix::fs::FileExt;

/// What the patch needs to know of a stopped thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thread {
    pub tid: u32,
    pub rip: u64,
    pub rsp: u64,
}

/// Why a process could not be stopped or touched.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("the process exited")]
    Gone,
    #[error("not permitted to trace the process ({0})")]
    NotPermitted(String),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl ProcessError {
    fn io(what: impl Into<String>, source: io::Error) -> ProcessError {
        ProcessError::Io {
            what: what.into(),
            source,
        }
    }
}

/// Reading and writing a process's memory.
pub trait Memory {
    fn pid(&self) -> u32;
    /// `/proc/<pid>/maps`.
    fn maps(&self) -> Result<String, ProcessError>;
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), ProcessError>;
    fn write(&self, addr: u64, data: &[u8]) -> Result<(), ProcessError>;
}

/// A process whose threads can be stopped while it is patched.
pub trait Process: Memory {
    /// Stops every thread; returns their registers.
    fn stop(&mut self) -> Result<Vec<Thread>, ProcessError>;
    /// Lets every stopped thread go (also done on drop).
    fn resume(&mut self);
}

/// Whether the process still runs: it exists and is not a zombie (whose memory is gone).
pub fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) S ...": the command may contain spaces and parentheses; the state follows
    // the last ')'.
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].trim_start().chars().next());
    !matches!(state, Some('Z' | 'X' | 'x') | None)
}

/// A failed access to a process's files: `Gone` when it has exited.
fn proc_err(pid: u32, what: String, e: io::Error) -> ProcessError {
    if !alive(pid) || e.raw_os_error() == Some(libc::ESRCH) {
        ProcessError::Gone
    } else if e.kind() == io::ErrorKind::PermissionDenied {
        ProcessError::NotPermitted(format!("{what}: {e}"))
    } else {
        ProcessError::io(what, e)
    }
}

/// `/proc/<pid>/mem`, opened once.
pub struct ProcMem {
    pid: u32,
    mem: File,
}

impl ProcMem {
    pub fn open(pid: u32) -> Result<ProcMem, ProcessError> {
        let path = format!("/proc/{pid}/mem");
        let mem = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    ProcessError::Gone
                } else {
                    proc_err(pid, format!("cannot open {path}"), e)
                }
            })?;
        Ok(ProcMem { pid, mem })
    }
}

impl Memory for ProcMem {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn maps(&self) -> Result<String, ProcessError> {
        let path = format!("/proc/{}/maps", self.pid);
        let s = std::fs::read_to_string(&path)
            .map_err(|e| proc_err(self.pid, format!("cannot read {path}"), e))?;
        // The maps of a process that has exited (a zombie) are empty.
        if s.is_empty() {
            return Err(ProcessError::Gone);
        }
        Ok(s)
    }

    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), ProcessError> {
        self.mem.read_exact_at(buf, addr).map_err(|e| {
            proc_err(
                self.pid,
                format!("cannot read {} bytes at {addr:#x}", buf.len()),
                e,
            )
        })
    }

    fn write(&self, addr: u64, data: &[u8]) -> Result<(), ProcessError> {
        self.mem.write_all_at(data, addr).map_err(|e| {
            proc_err(
                self.pid,
                format!("cannot write {} bytes at {addr:#x}", data.len()),
                e,
            )
        })
    }
}

/// Checks the kernel's ptrace policy: Yama's `ptrace_scope = 3` forbids every attach.
pub fn ptrace_allowed() -> Result<(), ProcessError> {
    match std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope") {
        Ok(s) if s.trim() == "3" => Err(ProcessError::NotPermitted(
            "kernel.yama.ptrace_scope is 3: no process may attach to another until reboot".into(),
        )),
        _ => Ok(()),
    }
}

#[derive(Debug, Clone, Copy)]
struct Seized {
    tid: u32,
    stopped: bool,
    gone: bool,
    /// A signal the thread stopped with, given back when it is detached.
    signal: i32,
}

/// A process whose threads this thread has seized.
pub struct Ptraced {
    mem: ProcMem,
    seized: Vec<Seized>,
    /// ptrace requests must come from the thread that attached.
    _not_send: PhantomData<*const ()>,
}

fn ptrace(req: libc::c_uint, tid: u32, data: usize) -> io::Result<libc::c_long> {
    // SAFETY: the requests used here (SEIZE, INTERRUPT, DETACH) take no pointer, GETREGS gets
    // a pointer to a live user_regs_struct (see regs below).
    let r = unsafe {
        libc::ptrace(
            req,
            tid as libc::pid_t,
            std::ptr::null_mut::<libc::c_void>(),
            data as *mut libc::c_void,
        )
    };
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn tasks(pid: u32) -> Result<Vec<u32>, ProcessError> {
    let dir = format!("/proc/{pid}/task");
    let rd = std::fs::read_dir(&dir).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            ProcessError::Gone
        } else {
            proc_err(pid, format!("cannot list {dir}"), e)
        }
    })?;
    Ok(rd
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect())
}

impl Ptraced {
    pub fn open(pid: u32) -> Result<Ptraced, ProcessError> {
        ptrace_allowed()?;
        Ok(Ptraced {
            mem: ProcMem::open(pid)?,
            seized: Vec::new(),
            _not_send: PhantomData,
        })
    }

    /// Waits until a seized thread reports its first stop.
    fn wait_stopped(s: &mut Seized) -> Result<(), ProcessError> {
        loop {
            let mut status = 0;
            // SAFETY: waitpid writes the status into a local.
            let r = unsafe { libc::waitpid(s.tid as libc::pid_t, &mut status, libc::__WALL) };
            if r == -1 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::ECHILD) => {
                        s.gone = true;
                        return Ok(());
                    }
                    _ => return Err(ProcessError::io(format!("waitpid({})", s.tid), e)),
                }
            }
            if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
                s.gone = true;
                return Ok(());
            }
            if libc::WIFSTOPPED(status) {
                // An event stop (our interrupt, or a group stop) has the event in bits 16+; a
                // plain stop is a signal on its way to the thread, to be given back on detach.
                if status >> 16 == 0 {
                    s.signal = libc::WSTOPSIG(status);
                }
                s.stopped = true;
                return Ok(());
            }
        }
    }

    /// Collects the exit of a traced thread that was killed (bounded: a thread that is
    /// neither stopped nor dying is not ours to wait for).
    fn reap(tid: u32) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            let mut status = 0;
            // SAFETY: waitpid writes the status into a local.
            let r = unsafe {
                libc::waitpid(
                    tid as libc::pid_t,
                    &mut status,
                    libc::__WALL | libc::WNOHANG,
                )
            };
            if r != 0 || std::time::Instant::now() > deadline {
                // collected, or ECHILD: nothing left to collect
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    fn regs(tid: u32) -> io::Result<libc::user_regs_struct> {
        // SAFETY: user_regs_struct is plain data; zeroed is a valid value.
        let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
        ptrace(
            libc::PTRACE_GETREGS,
            tid,
            &mut regs as *mut libc::user_regs_struct as usize,
        )?;
        Ok(regs)
    }
}

impl Memory for Ptraced {
    fn pid(&self) -> u32 {
        self.mem.pid
    }
    fn maps(&self) -> Result<String, ProcessError> {
        self.mem.maps()
    }
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), ProcessError> {
        self.mem.read(addr, buf)
    }
    fn write(&self, addr: u64, data: &[u8]) -> Result<(), ProcessError> {
        self.mem.write(addr, data)
    }
}

impl Process for Ptraced {
    fn stop(&mut self) -> Result<Vec<Thread>, ProcessError> {
        let pid = self.mem.pid;
        loop {
            let new: Vec<u32> = tasks(pid)?
                .into_iter()
                .filter(|t| !self.seized.iter().any(|s| s.tid == *t))
                .collect();
            if new.is_empty() {
                break;
            }
            for tid in new {
                match ptrace(libc::PTRACE_SEIZE, tid, 0) {
                    Ok(_) => {}
                    // exited between the listing and now
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => continue,
                    Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                        return Err(ProcessError::NotPermitted(format!(
                            "PTRACE_SEIZE of thread {tid}: {e} (another tracer such as a \
                             debugger, no CAP_SYS_PTRACE, or a Yama/LSM policy)"
                        )));
                    }
                    Err(e) => {
                        return Err(ProcessError::io(format!("PTRACE_SEIZE of thread {tid}"), e));
                    }
                }
                let mut s = Seized {
                    tid,
                    stopped: false,
                    gone: false,
                    signal: 0,
                };
                if let Err(e) = ptrace(libc::PTRACE_INTERRUPT, tid, 0) {
                    if e.raw_os_error() != Some(libc::ESRCH) {
                        self.seized.push(s);
                        return Err(ProcessError::io(
                            format!("PTRACE_INTERRUPT of thread {tid}"),
                            e,
                        ));
                    }
                    s.gone = true;
                }
                self.seized.push(s);
            }
            for s in self.seized.iter_mut().filter(|s| !s.stopped && !s.gone) {
                Self::wait_stopped(s)?;
            }
        }
        let leader = self.seized.iter().find(|s| s.tid == pid);
        if leader.is_none_or(|s| s.gone) {
            return Err(ProcessError::Gone);
        }
        let mut out = Vec::new();
        for s in self.seized.iter_mut().filter(|s| !s.gone) {
            match Self::regs(s.tid) {
                Ok(r) => out.push(Thread {
                    tid: s.tid,
                    rip: r.rip,
                    rsp: r.rsp,
                }),
                // killed while stopped (SIGKILL ends even a ptrace stop)
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => s.gone = true,
                Err(e) => {
                    return Err(ProcessError::io(
                        format!("PTRACE_GETREGS of thread {}", s.tid),
                        e,
                    ));
                }
            }
        }
        if !alive(pid) {
            return Err(ProcessError::Gone);
        }
        Ok(out)
    }

    fn resume(&mut self) {
        for mut s in std::mem::take(&mut self.seized) {
            if s.gone {
                continue;
            }
            if !s.stopped {
                // Seized but never seen stopped (an error cut the wait short): it stops on
                // the pending interrupt; wait for that, or PTRACE_DETACH would fail and leave
                // it stopped for as long as this thread lives.
                if Self::wait_stopped(&mut s).is_err() || s.gone {
                    continue;
                }
            }
            if let Err(e) = ptrace(libc::PTRACE_DETACH, s.tid, s.signal as usize)
                && e.raw_os_error() == Some(libc::ESRCH)
            {
                // No longer stopped: it was killed (SIGKILL ends a ptrace stop). A traced
                // thread that dies waits for its tracer to collect it, and until every thread
                // is collected its parent (the container's shim) cannot reap the process.
                Self::reap(s.tid);
            }
        }
    }
}

impl Drop for Ptraced {
    fn drop(&mut self) {
        self.resume();
    }
}
