//! The seam between `berth.v1.Debug` and the debug containers the agent runs. The API keeps
//! what is about the wire and the caller (authorization, which pod a session belongs to,
//! the audit log); the backend starts, attaches, execs and copies. The agent implements it
//! over berth-debug; the API's tests over a fake.
//!
//! Errors are gRPC statuses already: the backend's own error type decides the code and the
//! message, so that the answer a client sees is the same whichever crate reports it.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use berth_proto::v1;
use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::mpsc;
use tonic::Status;

use crate::audit::{AuditLog, AuditRecord};

/// The container a session is for, as the backend found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebugTarget {
    pub container_id: String,
    /// The container's name in its pod.
    pub container: String,
}

/// Start a session; the API has authorized the profile and the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebugStart {
    pub container_id: String,
    /// One of [`DebugBackend::profiles`].
    pub profile: String,
    /// The caller's identity, for the session's audit events.
    pub caller: String,
    /// The tools image; the backend's default when `None`.
    pub image: Option<String>,
    /// The command; the image's own when empty.
    pub command: Vec<String>,
    pub tty: bool,
}

/// A live session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebugSession {
    pub id: String,
    pub target_pid: u32,
    pub caller: String,
    pub profile: String,
    pub image: String,
    pub command: Vec<String>,
    pub tty: bool,
    pub started_at: SystemTime,
    pub attached: bool,
}

/// Client → session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DebugInput {
    Stdin(Bytes),
    Resize { cols: u16, rows: u16 },
    Signal(i32),
    CloseStdin,
}

/// Session → client, in wire form; `Exit` is the last message.
pub type DebugOutput = Pin<Box<dyn Stream<Item = v1::attach_response::Msg> + Send + 'static>>;

/// An exec's output in wire form; `ExitStatus` is the last message.
pub type ExecOutput = Pin<Box<dyn Stream<Item = v1::debug_exec_response::Msg> + Send + 'static>>;

/// A client's connection to a session. Dropping `input` detaches the client (the session
/// then lives for the backend's grace period).
pub struct DebugAttachment {
    pub input: mpsc::Sender<DebugInput>,
    pub output: DebugOutput,
}

/// A file written into a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopiedIn {
    pub size: u64,
    pub sha256: String,
}

/// A file read out of a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopiedOut {
    pub data: Vec<u8>,
    pub mode: u32,
    pub size: u64,
    pub sha256: String,
}

/// Debug containers. `NotFound`, `PermissionDenied` (a denied command) and the other codes
/// come from the backend; `Unavailable` while it cannot serve yet (e.g. containerd has not
/// answered since the agent started).
#[tonic::async_trait]
pub trait DebugBackend: Send + Sync + 'static {
    /// Called once as the server starts: from then on the backend reports what happens
    /// inside sessions to `events`.
    fn start(&self, events: DebugEvents);
    /// The profiles a session can have, as callers name them (`general`, …).
    fn profiles(&self) -> &'static [&'static str];
    /// The tools image used when a caller names none (any role may use it).
    fn default_image(&self) -> &str;
    /// Largest file a CopyIn may carry.
    fn copy_limit(&self) -> u64;
    /// The pod's container to debug: the named one, or the only one.
    async fn find_target(
        &self,
        namespace: &str,
        pod: &str,
        container: Option<&str>,
    ) -> Result<DebugTarget, Status>;
    /// Starts a session nobody is attached to yet.
    async fn start_session(&self, req: DebugStart) -> Result<DebugSession, Status>;
    /// Starts a session with its caller attached from the start, so no output is lost.
    async fn start_attached(
        &self,
        req: DebugStart,
    ) -> Result<(DebugSession, DebugAttachment), Status>;
    async fn attach(&self, session: &str, caller: &str) -> Result<DebugAttachment, Status>;
    /// The live sessions.
    fn sessions(&self) -> Result<Vec<DebugSession>, Status>;
    async fn exec(
        &self,
        session: &str,
        argv: Vec<String>,
        caller: &str,
    ) -> Result<ExecOutput, Status>;
    async fn terminate(&self, session: &str) -> Result<(), Status>;
    /// Resolves once the session is over (at once for an unknown one).
    async fn wait_ended(&self, session: &str);
    async fn copy_in(
        &self,
        container_id: &str,
        path: &str,
        data: Vec<u8>,
        mode: u32,
        caller: &str,
    ) -> Result<CopiedIn, Status>;
    async fn copy_out(
        &self,
        container_id: &str,
        path: &str,
        caller: &str,
    ) -> Result<CopiedOut, Status>;
}

#[tonic::async_trait]
impl<T: DebugBackend + ?Sized> DebugBackend for Arc<T> {
    fn start(&self, events: DebugEvents) {
        (**self).start(events)
    }
    fn profiles(&self) -> &'static [&'static str] {
        (**self).profiles()
    }
    fn default_image(&self) -> &str {
        (**self).default_image()
    }
    fn copy_limit(&self) -> u64 {
        (**self).copy_limit()
    }
    async fn find_target(
        &self,
        namespace: &str,
        pod: &str,
        container: Option<&str>,
    ) -> Result<DebugTarget, Status> {
        (**self).find_target(namespace, pod, container).await
    }
    async fn start_session(&self, req: DebugStart) -> Result<DebugSession, Status> {
        (**self).start_session(req).await
    }
    async fn start_attached(
        &self,
        req: DebugStart,
    ) -> Result<(DebugSession, DebugAttachment), Status> {
        (**self).start_attached(req).await
    }
    async fn attach(&self, session: &str, caller: &str) -> Result<DebugAttachment, Status> {
        (**self).attach(session, caller).await
    }
    fn sessions(&self) -> Result<Vec<DebugSession>, Status> {
        (**self).sessions()
    }
    async fn exec(
        &self,
        session: &str,
        argv: Vec<String>,
        caller: &str,
    ) -> Result<ExecOutput, Status> {
        (**self).exec(session, argv, caller).await
    }
    async fn terminate(&self, session: &str) -> Result<(), Status> {
        (**self).terminate(session).await
    }
    async fn wait_ended(&self, session: &str) {
        (**self).wait_ended(session).await
    }
    async fn copy_in(
        &self,
        container_id: &str,
        path: &str,
        data: Vec<u8>,
        mode: u32,
        caller: &str,
    ) -> Result<CopiedIn, Status> {
        (**self)
            .copy_in(container_id, path, data, mode, caller)
            .await
    }
    async fn copy_out(
        &self,
        container_id: &str,
        path: &str,
        caller: &str,
    ) -> Result<CopiedOut, Status> {
        (**self).copy_out(container_id, path, caller).await
    }
}

/// Where a session's target is, as the API named it.
#[derive(Debug, Clone)]
pub(crate) struct SessionPod {
    pub(crate) namespace: String,
    pub(crate) pod: String,
    pub(crate) container: String,
    pub(crate) container_id: String,
}

/// Session id → the pod it was started for.
pub(crate) type Sessions = Arc<Mutex<HashMap<String, SessionPod>>>;

/// Something that happened inside a session, for the API's audit log.
#[derive(Debug, Clone)]
pub struct DebugEvent {
    pub session: String,
    /// The caller's identity.
    pub identity: String,
    /// The RPC it happened under (`/berth.v1.Debug/Exec`, …).
    pub method: &'static str,
    /// A command refused by the deny list, or a failed copy.
    pub denied: bool,
    /// The event itself, as the backend describes it.
    pub detail: Option<serde_json::Value>,
}

/// Session events into the API's hash-chained audit log, with the pod each session is for.
#[derive(Clone)]
pub struct DebugEvents {
    audit: AuditLog,
    sessions: Sessions,
}

impl DebugEvents {
    pub(crate) fn new(audit: AuditLog, sessions: Sessions) -> DebugEvents {
        DebugEvents { audit, sessions }
    }

    pub fn record(&self, at: SystemTime, event: DebugEvent) {
        let pod = self
            .sessions
            .lock()
            .expect("sessions lock")
            .get(&event.session)
            .cloned();
        let session = &event.session;
        let target = match pod {
            Some(p) => format!(
                "pod {}/{} container {} session {session}",
                p.namespace, p.pod, p.container
            ),
            None => format!("session {session}"),
        };
        let rec = AuditRecord {
            prev: String::new(),
            time: chrono::DateTime::<chrono::Utc>::from(at)
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            event: "debug".into(),
            call_id: String::new(),
            identity: event.identity,
            groups: Vec::new(),
            transport: "debug".into(),
            peer: String::new(),
            method: event.method.into(),
            target,
            decision: if event.denied { "deny" } else { "allow" }.into(),
            reason: String::new(),
            code: 0,
            duration_us: 0,
            bytes_sent: 0,
            bytes_received: 0,
            detail: event.detail,
        };
        self.audit.append_detached(&rec);
    }
}
