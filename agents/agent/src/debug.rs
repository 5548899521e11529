//! `berth.v1.Debug` on the agent: the API's [`DebugBackend`] over berth-debug's
//! [`DebugManager`], and the manager's lifecycle (connect to containerd with backoff, then
//! remove what a previous agent left behind). Until containerd answers, calls are
//! UNAVAILABLE.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use berth_api::{
    CopiedIn, CopiedOut, DebugAttachment, DebugBackend, DebugEvent, DebugEvents, DebugInput,
    DebugSession, DebugStart, DebugTarget, ExecOutput,
};
use berth_debug::{
    Attachment, AuditEvent, AuditSink, Caller, CopyDirection, DebugConfig, DebugManager,
    ExecRequest, Input, Output, Profile, SessionInfo, StartRequest, Target,
};
use berth_proto::v1;
use tokio::sync::{OnceCell, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

/// Longest wait between two attempts to reach containerd.
const MAX_CONNECT_DELAY: Duration = Duration::from_secs(10);
/// How many inputs may wait between the API and a session.
const INPUT_QUEUE: usize = 16;

/// The debug containers of this node, once containerd answered (the agent may start before
/// containerd does).
pub struct DebugApi {
    config: DebugConfig,
    manager: Arc<OnceCell<DebugManager>>,
}

impl DebugApi {
    pub fn new(config: DebugConfig) -> DebugApi {
        DebugApi {
            config,
            manager: Arc::new(OnceCell::new()),
        }
    }

    fn manager(&self) -> Result<&DebugManager, Status> {
        self.manager.get().ok_or_else(|| {
            Status::unavailable(format!(
                "debug containers are not ready: containerd at {} has not answered yet; retry \
                 in a few seconds",
                self.config.containerd_socket.display()
            ))
        })
    }
}

/// Connects to containerd until it answers (with backoff), reconciles, then makes the
/// manager available to calls.
async fn connect_manager(
    config: DebugConfig,
    audit: Arc<dyn AuditSink>,
    cell: Arc<OnceCell<DebugManager>>,
) {
    let mut delay = Duration::from_millis(200);
    loop {
        match DebugManager::connect(config.clone(), audit.clone()).await {
            Ok(m) => {
                match m.reconcile().await {
                    Ok(r) if !r.containers.is_empty() || !r.failures.is_empty() => {
                        tracing::info!(removed = ?r.containers, failures = ?r.failures,
                            "debug: leftovers of a previous agent reconciled");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "debug: reconcile failed"),
                }
                let _ = cell.set(m);
                tracing::info!("debug containers ready");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "debug: containerd not reachable");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_CONNECT_DELAY);
            }
        }
    }
}

fn session(info: SessionInfo) -> DebugSession {
    DebugSession {
        id: info.id,
        target_pid: info.target_pid,
        caller: info.caller.identity,
        profile: info.profile.as_str().to_string(),
        image: info.image,
        command: info.command,
        tty: info.tty,
        started_at: info.started_at,
        attached: info.attached,
    }
}

fn start_request(req: DebugStart) -> Result<StartRequest, Status> {
    let profile: Profile = req.profile.parse().map_err(|_| {
        Status::invalid_argument(format!("unknown debug profile {:?}", req.profile))
    })?;
    Ok(StartRequest {
        target: Target::Container(req.container_id),
        profile,
        caller: Caller::new(req.caller),
        image: req.image,
        command: req.command,
        tty: req.tty,
    })
}

fn input(i: DebugInput) -> Input {
    match i {
        DebugInput::Stdin(b) => Input::Stdin(b),
        DebugInput::Resize { cols, rows } => Input::Resize { cols, rows },
        DebugInput::Signal(s) => Input::Signal(s),
        DebugInput::CloseStdin => Input::CloseStdin,
    }
}

fn output(o: Output) -> v1::attach_response::Msg {
    use v1::attach_response::Msg;
    match o {
        Output::Stdout(b) => Msg::Stdout(b.to_vec()),
        Output::Stderr(b) => Msg::Stderr(b.to_vec()),
        Output::Exit(end) => Msg::Exit(v1::SessionEnd {
            reason: end.reason.to_string(),
            exit_status: end.exit_status,
        }),
    }
}

/// The session's channels as the API's: input is forwarded by a task that ends (and so
/// detaches the client) as soon as the API drops its sender.
fn attachment(a: Attachment) -> DebugAttachment {
    let (tx, mut rx) = mpsc::channel::<DebugInput>(INPUT_QUEUE);
    let session_input = a.input;
    tokio::spawn(async move {
        while let Some(i) = rx.recv().await {
            if session_input.send(input(i)).await.is_err() {
                break;
            }
        }
    });
    DebugAttachment {
        input: tx,
        output: Box::pin(ReceiverStream::new(a.output).map(output)),
    }
}

#[tonic::async_trait]
impl DebugBackend for DebugApi {
    fn start(&self, events: DebugEvents) {
        let sink = Arc::new(ApiAuditSink { events });
        tokio::spawn(connect_manager(
            self.config.clone(),
            sink,
            self.manager.clone(),
        ));
    }

    fn profiles(&self) -> &'static [&'static str] {
        Profile::NAMES
    }

    fn default_image(&self) -> &str {
        &self.config.image
    }

    fn copy_limit(&self) -> u64 {
        self.config.copy_limit_bytes
    }

    async fn find_target(
        &self,
        namespace: &str,
        pod: &str,
        container: Option<&str>,
    ) -> Result<DebugTarget, Status> {
        let (container_id, container) = self
            .manager()?
            .find_target(namespace, pod, container)
            .await?;
        Ok(DebugTarget {
            container_id,
            container,
        })
    }

    async fn start_session(&self, req: DebugStart) -> Result<DebugSession, Status> {
        let m = self.manager()?;
        Ok(session(m.start(start_request(req)?).await?))
    }

    async fn start_attached(
        &self,
        req: DebugStart,
    ) -> Result<(DebugSession, DebugAttachment), Status> {
        let m = self.manager()?;
        let (info, a) = m.start_attached(start_request(req)?).await?;
        Ok((session(info), attachment(a)))
    }

    async fn attach(&self, id: &str, caller: &str) -> Result<DebugAttachment, Status> {
        let a = self.manager()?.attach(id, &Caller::new(caller)).await?;
        Ok(attachment(a))
    }

    fn sessions(&self) -> Result<Vec<DebugSession>, Status> {
        Ok(self.manager()?.list().into_iter().map(session).collect())
    }

    async fn exec(&self, id: &str, argv: Vec<String>, caller: &str) -> Result<ExecOutput, Status> {
        use berth_debug::ExecOutput as Out;
        use v1::debug_exec_response::Msg;
        let req = ExecRequest {
            argv,
            caller: Caller::new(caller),
        };
        let stream = self.manager()?.exec(id, req).await?;
        Ok(Box::pin(ReceiverStream::new(stream.output).map(
            |o| match o {
                Out::Stdout(b) => Msg::Stdout(b.to_vec()),
                Out::Stderr(b) => Msg::Stderr(b.to_vec()),
                Out::Exit(s) => Msg::ExitStatus(s),
            },
        )))
    }

    async fn terminate(&self, id: &str) -> Result<(), Status> {
        Ok(self.manager()?.terminate(id).await?)
    }

    async fn wait_ended(&self, id: &str) {
        if let Some(m) = self.manager.get() {
            m.wait_ended(id).await;
        }
    }

    async fn copy_in(
        &self,
        container_id: &str,
        path: &str,
        data: Vec<u8>,
        mode: u32,
        caller: &str,
    ) -> Result<CopiedIn, Status> {
        let written = self
            .manager()?
            .copy_into(
                &Target::Container(container_id.to_string()),
                path,
                data,
                mode,
                &Caller::new(caller),
            )
            .await?;
        Ok(CopiedIn {
            size: written.size,
            sha256: written.sha256,
        })
    }

    async fn copy_out(
        &self,
        container_id: &str,
        path: &str,
        caller: &str,
    ) -> Result<CopiedOut, Status> {
        let file = self
            .manager()?
            .copy_out_of(
                &Target::Container(container_id.to_string()),
                path,
                &Caller::new(caller),
            )
            .await?;
        Ok(CopiedOut {
            data: file.data,
            mode: file.mode,
            size: file.size,
            sha256: file.sha256,
        })
    }
}

/// Session events into the API's audit log: which RPC each belongs to, and whether it was a
/// refusal.
struct ApiAuditSink {
    events: DebugEvents,
}

/// The RPC an event happened under.
fn method_of(event: &AuditEvent) -> &'static str {
    match event {
        AuditEvent::SessionStarted { .. }
        | AuditEvent::SessionEnded { .. }
        | AuditEvent::Attached { .. }
        | AuditEvent::Detached { .. }
        | AuditEvent::CommandLine { .. } => "/berth.v1.Debug/Attach",
        AuditEvent::Exec { .. } => "/berth.v1.Debug/Exec",
        AuditEvent::FileCopy { direction, .. } | AuditEvent::FileCopyFailed { direction, .. } => {
            match direction {
                CopyDirection::In => "/berth.v1.Debug/CopyIn",
                CopyDirection::Out => "/berth.v1.Debug/CopyOut",
            }
        }
    }
}

impl AuditSink for ApiAuditSink {
    fn record(&self, at: SystemTime, event: AuditEvent) {
        let (session, caller) = event.session_and_caller();
        let denied = matches!(
            &event,
            AuditEvent::Exec {
                denied_by: Some(_),
                ..
            } | AuditEvent::FileCopyFailed { .. }
        );
        let record = DebugEvent {
            session: session.to_string(),
            identity: caller.identity.clone(),
            method: method_of(&event),
            denied,
            detail: serde_json::to_value(&event).ok(),
        };
        self.events.record(at, record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_filed_under_the_rpc_they_happened_in() {
        let caller = Caller::new("cn:dora");
        let copy = |direction| AuditEvent::FileCopyFailed {
            session: "s".into(),
            caller: caller.clone(),
            direction,
            path: "/etc/x".into(),
            error: "refused".into(),
        };
        let exec = AuditEvent::Exec {
            session: "s".into(),
            caller: caller.clone(),
            argv: vec!["id".into()],
            denied_by: None,
            exit_status: Some(0),
        };
        let line = AuditEvent::CommandLine {
            session: "s".into(),
            caller: caller.clone(),
            line: "id".into(),
            uncertain: false,
        };
        assert_eq!(
            method_of(&copy(CopyDirection::In)),
            "/berth.v1.Debug/CopyIn"
        );
        assert_eq!(
            method_of(&copy(CopyDirection::Out)),
            "/berth.v1.Debug/CopyOut"
        );
        assert_eq!(method_of(&exec), "/berth.v1.Debug/Exec");
        assert_eq!(method_of(&line), "/berth.v1.Debug/Attach");
        assert_eq!(exec.session_and_caller(), ("s", &caller));
    }

    #[tokio::test]
    async fn an_attachment_forwards_input_and_detaches_when_the_api_drops_it() {
        let (session_tx, mut session_rx) = mpsc::channel(4);
        let (out_tx, out_rx) = mpsc::channel(4);
        let a = attachment(Attachment {
            input: session_tx,
            output: out_rx,
        });
        a.input
            .send(DebugInput::Resize { cols: 80, rows: 24 })
            .await
            .unwrap();
        assert_eq!(
            session_rx.recv().await,
            Some(Input::Resize { cols: 80, rows: 24 })
        );
        out_tx.send(Output::Stdout(bytes_of("hi"))).await.unwrap();
        let mut output = a.output;
        assert_eq!(
            output.next().await,
            Some(v1::attach_response::Msg::Stdout(b"hi".to_vec()))
        );
        drop(a.input);
        assert_eq!(session_rx.recv().await, None, "the session sees the detach");
    }

    fn bytes_of(s: &str) -> bytes::Bytes {
        bytes::Bytes::copy_from_slice(s.as_bytes())
    }
}
