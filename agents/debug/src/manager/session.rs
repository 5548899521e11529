//! One task per session (the [`Actor`]): it moves bytes between the attached client and the
//! tools process's FIFOs, audits the lines typed, watches the tools process, the target and
//! the client, and removes everything when any of them ends the session.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{
    Attachment, Control, DebugManager, EndReason, Input, KILL_WAIT, Output, SessionEnd,
    SessionInfo, remove_everything,
};
use crate::audit::{AuditEvent, AuditSink, Caller};
use crate::error::{Error, Result};
use crate::lines::LineAssembler;
use crate::runtime::Runtime;
use crate::stdio::Fifos;

/// Output kept for a client that has not attached yet (or re-attaches).
const BACKLOG_BYTES: usize = 64 << 10;
/// How long output is still collected after a process exited.
const DRAIN: Duration = Duration::from_millis(300);
/// How long after a SIGKILLed tools process the target's death may still show up.
const TARGET_EXIT_LAG: Duration = Duration::from_millis(500);

/// A pidfd of the target that turns readable when it exits.
pub(super) fn pidfd(pid: u32) -> Result<AsyncFd<OwnedFd>> {
    let p = rustix::process::Pid::from_raw(pid as i32).ok_or(Error::TargetGone(pid))?;
    let fd = rustix::process::pidfd_open(p, rustix::process::PidfdFlags::NONBLOCK).map_err(
        |e| match e {
            rustix::io::Errno::SRCH => Error::TargetGone(pid),
            e => Error::Watch {
                pid,
                source: e.into(),
            },
        },
    )?;
    // SAFETY: the OwnedFd is moved into the AsyncFd, so it stays open and refers to the same
    // pidfd for the AsyncFd's whole lifetime.
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.map_err(|e| {
        Error::Watch {
            pid,
            source: std::io::Error::other(e.to_string()),
        }
    })
}

/// A client connected to the session.
struct Attached {
    input: mpsc::Receiver<Input>,
    output: mpsc::Sender<Output>,
}

/// The session as its audit events name it.
struct SessionLog {
    id: String,
    audit: Arc<dyn AuditSink>,
    info: Arc<Mutex<SessionInfo>>,
}

impl SessionLog {
    fn record(&self, event: AuditEvent) {
        self.audit.record(SystemTime::now(), event);
    }

    fn set_attached(&self, attached: bool) {
        self.info.lock().expect("info lock").attached = attached;
    }
}

/// The client side of a session: who is attached, the output they have not seen yet
/// (bounded), when the session gives up waiting for one, and the lines they type.
struct Client {
    attached: Option<Attached>,
    backlog: VecDeque<Output>,
    backlog_bytes: usize,
    /// When the session ends for want of a client (`None` while one is attached).
    deadline: Option<Instant>,
    grace: Duration,
    /// Who types: the caller attached now (lines are audited under their name).
    typist: Caller,
    lines: LineAssembler,
}

impl Client {
    /// Nobody attached yet: the grace period runs from now.
    fn new(starter: Caller, grace: Duration) -> Client {
        Client {
            attached: None,
            backlog: VecDeque::new(),
            backlog_bytes: 0,
            deadline: Some(Instant::now() + grace),
            grace,
            typist: starter,
            lines: LineAssembler::new(),
        }
    }

    /// Connects a client: hands it the backlog, stops the detach clock, audits who it is.
    fn attach(&mut self, caller: Caller, log: &SessionLog) -> Result<Attachment> {
        if self
            .attached
            .as_ref()
            .is_some_and(|a| !a.output.is_closed())
        {
            return Err(Error::AlreadyAttached(log.id.clone()));
        }
        if self.attached.take().is_some() {
            // The previous client is gone (its output closed) but its input end was not
            // noticed yet.
            log.record(AuditEvent::Detached {
                session: log.id.clone(),
                caller: self.typist.clone(),
            });
        }
        let (in_tx, in_rx) = mpsc::channel(64);
        let (out_tx, out_rx) = mpsc::channel(64 + self.backlog.len());
        for o in self.backlog.drain(..) {
            let _ = out_tx.try_send(o);
        }
        self.backlog_bytes = 0;
        self.attached = Some(Attached {
            input: in_rx,
            output: out_tx,
        });
        self.deadline = None;
        log.record(AuditEvent::Attached {
            session: log.id.clone(),
            caller: caller.clone(),
        });
        self.typist = caller;
        log.set_attached(true);
        Ok(Attachment {
            input: in_tx,
            output: out_rx,
        })
    }

    /// The client went away: the grace period starts.
    fn detach(&mut self, log: &SessionLog) {
        self.attached = None;
        log.record(AuditEvent::Detached {
            session: log.id.clone(),
            caller: self.typist.clone(),
        });
        log.set_attached(false);
        self.deadline = Some(Instant::now() + self.grace);
    }

    /// The next input of the attached client (`None`: it went away); pending without one.
    async fn next_input(&mut self) -> Option<Input> {
        match &mut self.attached {
            Some(a) => a.input.recv().await,
            None => std::future::pending().await,
        }
    }

    /// Audits the complete lines in what was typed.
    fn typed(&mut self, bytes: &[u8], log: &SessionLog) {
        for line in self.lines.feed(bytes) {
            log.record(AuditEvent::CommandLine {
                session: log.id.clone(),
                caller: self.typist.clone(),
                line: line.text,
                uncertain: line.uncertain,
            });
        }
    }

    /// Audits a line typed without its Enter, as the session ends.
    fn flush_line(&mut self, log: &SessionLog) {
        if let Some(pending) = self.lines.pending() {
            log.record(AuditEvent::CommandLine {
                session: log.id.clone(),
                caller: self.typist.clone(),
                line: pending.text,
                uncertain: true,
            });
        }
    }

    /// Sends to the attached client, or keeps the output (bounded) until one attaches.
    async fn deliver(&mut self, out: Output) {
        if let Some(a) = &self.attached
            && a.output.send(out.clone()).await.is_ok()
        {
            return;
        }
        let len = match &out {
            Output::Stdout(b) | Output::Stderr(b) => b.len(),
            Output::Exit(_) => 0,
        };
        self.backlog.push_back(out);
        self.backlog_bytes += len;
        while self.backlog_bytes > BACKLOG_BYTES {
            match self.backlog.pop_front() {
                Some(Output::Stdout(b) | Output::Stderr(b)) => self.backlog_bytes -= b.len(),
                Some(_) => {}
                None => break,
            }
        }
    }

    /// Tells the attached client how the session ended (its last message).
    async fn end(self, end: SessionEnd) {
        if let Some(a) = self.attached {
            let _ = a.output.send(Output::Exit(end)).await;
        }
    }
}

/// The tools process's ends of its stdio FIFOs.
pub(super) struct Pipes {
    pub(super) stdin: Option<pipe::Sender>,
    pub(super) stdout: pipe::Receiver,
    /// `None` with a TTY (one stream) or after EOF.
    pub(super) stderr: Option<pipe::Receiver>,
}

/// Why the loop of [`Actor::run`] stopped.
struct Stop {
    reason: EndReason,
    /// The tools process's exit status, when it exited.
    exit_status: Option<u32>,
    /// A `terminate` call waiting for the end.
    reply: Option<oneshot::Sender<()>>,
}

impl Stop {
    fn because(reason: EndReason) -> Stop {
        Stop {
            reason,
            exit_status: None,
            reply: None,
        }
    }
}

/// One task per session: moves bytes between the client and the FIFOs, watches the tools
/// process, the target and the client, and cleans up when any of them ends the session.
pub(super) struct Actor {
    pub(super) manager: DebugManager,
    pub(super) id: String,
    pub(super) caller: Caller,
    pub(super) info: Arc<Mutex<SessionInfo>>,
    pub(super) fifos: Fifos,
    pub(super) pipes: Pipes,
    pub(super) pidfd: AsyncFd<OwnedFd>,
    pub(super) control: mpsc::Receiver<Control>,
    pub(super) done: tokio::sync::watch::Sender<Option<Vec<String>>>,
    /// A client to attach before anything else happens (`start_attached`).
    pub(super) first_client: Option<(Caller, oneshot::Sender<Result<Attachment>>)>,
}

/// Up to one buffer of what a pipe holds; `None` at EOF (or on a read error).
async fn read_chunk(r: &mut pipe::Receiver, buf: &mut [u8]) -> Option<Bytes> {
    match r.read(buf).await {
        Ok(0) | Err(_) => None,
        Ok(n) => Some(Bytes::copy_from_slice(&buf[..n])),
    }
}

/// [`read_chunk`] of a pipe that may be gone (pending forever then).
async fn read_chunk_opt(r: &mut Option<pipe::Receiver>, buf: &mut [u8]) -> Option<Bytes> {
    match r {
        Some(r) => read_chunk(r, buf).await,
        None => std::future::pending().await,
    }
}

/// Passes a client's input to the tools process (and audits what was typed).
async fn apply_input(
    input: Input,
    stdin: &mut Option<pipe::Sender>,
    client: &mut Client,
    ctrd: &dyn Runtime,
    log: &SessionLog,
) {
    let id = &log.id;
    match input {
        Input::Stdin(bytes) => {
            client.typed(&bytes, log);
            if let Some(pipe) = stdin
                && pipe.write_all(&bytes).await.is_err()
            {
                *stdin = None;
            }
        }
        Input::Resize { cols, rows } => {
            if let Err(e) = ctrd.resize(id, "", cols.into(), rows.into()).await {
                tracing::debug!(session = %id, error = %e, "resize");
            }
        }
        Input::Signal(sig) => {
            if let Ok(sig) = u32::try_from(sig) {
                let _ = ctrd.kill(id, "", sig, false).await;
            }
        }
        Input::CloseStdin => {
            *stdin = None;
            let _ = ctrd.close_stdin(id, "").await;
        }
    }
}

impl Actor {
    pub(super) async fn run(self) {
        let Actor {
            manager,
            id,
            caller,
            info,
            fifos,
            mut pipes,
            pidfd,
            mut control,
            done,
            first_client,
        } = self;
        let inner = manager.inner.clone();
        let ctrd = inner.ctrd.clone();
        let log = SessionLog {
            id,
            audit: inner.audit.clone(),
            info,
        };
        let mut client = Client::new(caller.clone(), inner.config.detach_grace);
        let mut out_buf = vec![0u8; 16 << 10];
        let mut err_buf = vec![0u8; 16 << 10];
        let mut stdout_open = true;
        let wait = ctrd.wait(&log.id, "");
        tokio::pin!(wait);
        let target_exit = async {
            let _ = pidfd.readable().await;
        };
        tokio::pin!(target_exit);

        // A session started attached gets its client before any output or exit is seen.
        if let Some((caller, reply)) = first_client {
            let _ = reply.send(client.attach(caller, &log));
        }
        let mut stop = loop {
            let deadline = client.deadline;
            tokio::select! {
                out = read_chunk(&mut pipes.stdout, &mut out_buf), if stdout_open => match out {
                    Some(b) => client.deliver(Output::Stdout(b)).await,
                    None => stdout_open = false,
                },
                err = read_chunk_opt(&mut pipes.stderr, &mut err_buf) => match err {
                    Some(b) => client.deliver(Output::Stderr(b)).await,
                    None => pipes.stderr = None,
                },
                input = client.next_input() => match input {
                    Some(input) => {
                        apply_input(input, &mut pipes.stdin, &mut client, &*ctrd, &log).await;
                    }
                    None => client.detach(&log),
                },
                ctl = control.recv() => match ctl {
                    Some(Control::Attach(caller, reply)) => {
                        let _ = reply.send(client.attach(caller, &log));
                    }
                    Some(Control::Terminate(reply)) => {
                        break Stop { reply: Some(reply), ..Stop::because(EndReason::Terminated) };
                    }
                    None => break Stop::because(EndReason::Terminated),
                },
                status = &mut wait => {
                    let exit_status = status.ok();
                    let reason = exit_reason(exit_status, &pidfd, &mut target_exit).await;
                    break Stop { exit_status, ..Stop::because(reason) };
                }
                () = &mut target_exit => break Stop::because(EndReason::TargetExited),
                () = sleep_until(deadline) => break Stop::because(EndReason::Detached),
            }
        };

        // Stop the tools process if it still runs, then collect its last words.
        if stop.exit_status.is_none() {
            let _ = ctrd.kill(&log.id, "", libc::SIGKILL as u32, true).await;
            if let Ok(Ok(s)) = tokio::time::timeout(KILL_WAIT, &mut wait).await {
                stop.exit_status = Some(s);
            }
        }
        if stdout_open {
            let _ = tokio::time::timeout(DRAIN, async {
                while let Some(b) = read_chunk(&mut pipes.stdout, &mut out_buf).await {
                    client.deliver(Output::Stdout(b)).await;
                }
            })
            .await;
        }
        client.flush_line(&log);
        drop(pipes.stdin.take());
        let failures = clean_up(&*ctrd, &log.id, &fifos).await;
        log.record(AuditEvent::SessionEnded {
            session: log.id.clone(),
            caller,
            reason: stop.reason.to_string(),
            exit_status: stop.exit_status,
        });
        inner
            .sessions
            .lock()
            .expect("sessions lock")
            .remove(&log.id);
        client
            .end(SessionEnd {
                reason: stop.reason,
                exit_status: stop.exit_status,
            })
            .await;
        if let Some(reply) = stop.reply {
            let _ = reply.send(());
        }
        let _ = done.send(Some(failures));
    }
}

/// Why the tools process exited: by itself, or because the target died. When the target
/// (its pid namespace's init) dies, the kernel SIGKILLs the tools process a moment before
/// the target's pidfd turns readable.
async fn exit_reason(
    status: Option<u32>,
    pidfd: &AsyncFd<OwnedFd>,
    target_exit: &mut (impl Future<Output = ()> + Unpin),
) -> EndReason {
    let target_gone = target_dead(pidfd)
        || (status == Some(128 + libc::SIGKILL as u32)
            && tokio::time::timeout(TARGET_EXIT_LAG, target_exit)
                .await
                .is_ok());
    if target_gone {
        EndReason::TargetExited
    } else {
        EndReason::Exited
    }
}

/// Removes the session's container, task, snapshot and FIFOs; the failures, all of them.
async fn clean_up(ctrd: &dyn Runtime, id: &str, fifos: &Fifos) -> Vec<String> {
    let mut failures = remove_everything(ctrd, id).await;
    if let Err(e) = fifos.remove() {
        failures.push(format!("removing {}: {e}", fifos.dir.display()));
    }
    if !failures.is_empty() {
        tracing::warn!(session = %id, ?failures, "debug session cleanup incomplete; reconcile will retry");
    }
    failures
}

fn target_dead(pidfd: &AsyncFd<OwnedFd>) -> bool {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd {
        fd: pidfd.get_ref().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd that lives across the call; a zero timeout never blocks.
    unsafe { libc::poll(&mut p, 1, 0) > 0 }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn backlog_keeps_the_newest_output_within_its_bound() {
        let mut client = Client::new(Caller::new("x"), Duration::from_secs(1));
        for i in 0..100u8 {
            client
                .deliver(Output::Stdout(Bytes::from(vec![i; 1024])))
                .await;
        }
        assert_eq!(client.backlog_bytes, BACKLOG_BYTES);
        assert_eq!(client.backlog.len(), 64);
        assert_eq!(
            client.backlog.back(),
            Some(&Output::Stdout(Bytes::from(vec![99u8; 1024])))
        );
    }
}
