//! `berth.v1.Debug`: debug containers over [`berth_debug::DebugManager`].
//!
//! The guard authorized the method for the target pod's namespace (from the first message of
//! a stream); this service adds what only it can check: the profile and the image against the
//! caller's roles (`debug_profiles`, `debug_images`), and that a session id named in a request
//! belongs to the pod the caller was authorized for. What happens inside a session (lines
//! typed, execs, files copied, start and end) goes to the API audit log as `debug` events.

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use berth_debug::{
    AuditEvent, AuditSink, Caller as DebugCaller, CopyDirection, DebugConfig, DebugManager,
    ExecOutput, ExecRequest, Input, Output, Profile, SessionInfo, StartRequest, Target,
};
use berth_proto::v1;
use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::{OnceCell, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::audit::{AuditLog, AuditRecord};
use crate::backend::valid_k8s_name;
use crate::layer::CallContext;
use crate::policy::PolicyStore;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Largest data chunk sent in a CopyOut stream.
const COPY_CHUNK: usize = 64 << 10;
/// How long a one-shot session's tools process idles (it is terminated after the command).
const IDLE_COMMAND: [&str; 2] = ["sleep", "2147483647"];

/// Where a session's target is, as the API named it.
#[derive(Debug, Clone)]
pub(crate) struct SessionPod {
    namespace: String,
    pod: String,
    container: String,
    container_id: String,
}

pub(crate) type Sessions = Arc<Mutex<HashMap<String, SessionPod>>>;

/// The manager, once containerd answered (the agent may start before containerd).
#[derive(Clone)]
pub struct DebugHandle {
    manager: Arc<OnceCell<DebugManager>>,
    socket: PathBuf,
    default_image: String,
    copy_limit: u64,
}

impl DebugHandle {
    fn get(&self) -> Result<&DebugManager, Status> {
        self.manager.get().ok_or_else(|| {
            Status::unavailable(format!(
                "debug containers are not ready: containerd at {} has not answered yet; retry \
                 in a few seconds",
                self.socket.display()
            ))
        })
    }
}

/// Starts connecting to containerd in the background (with backoff), then removes what a
/// previous agent left behind. Calls before that answer UNAVAILABLE.
pub(crate) fn start_manager(config: DebugConfig, audit: AuditLog) -> (DebugHandle, Sessions) {
    let sessions: Sessions = Arc::default();
    let handle = DebugHandle {
        manager: Arc::new(OnceCell::new()),
        socket: config.containerd_socket.clone(),
        default_image: config.image.clone(),
        copy_limit: config.copy_limit_bytes,
    };
    let sink = Arc::new(ApiDebugAudit {
        audit,
        sessions: sessions.clone(),
    });
    let cell = handle.manager.clone();
    tokio::spawn(async move {
        let mut delay = Duration::from_millis(200);
        loop {
            match DebugManager::connect(config.clone(), sink.clone()).await {
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
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    });
    (handle, sessions)
}

/// Session events into the API's hash-chained audit log.
struct ApiDebugAudit {
    audit: AuditLog,
    sessions: Sessions,
}

impl AuditSink for ApiDebugAudit {
    fn record(&self, at: SystemTime, event: AuditEvent) {
        let (session, caller, method) = match &event {
            AuditEvent::SessionStarted {
                session, caller, ..
            }
            | AuditEvent::SessionEnded {
                session, caller, ..
            }
            | AuditEvent::Attached { session, caller }
            | AuditEvent::Detached { session, caller }
            | AuditEvent::CommandLine {
                session, caller, ..
            } => (session, caller, "/berth.v1.Debug/Attach"),
            AuditEvent::Exec {
                session, caller, ..
            } => (session, caller, "/berth.v1.Debug/Exec"),
            AuditEvent::FileCopy {
                session,
                caller,
                direction,
                ..
            }
            | AuditEvent::FileCopyFailed {
                session,
                caller,
                direction,
                ..
            } => (
                session,
                caller,
                match direction {
                    CopyDirection::In => "/berth.v1.Debug/CopyIn",
                    CopyDirection::Out => "/berth.v1.Debug/CopyOut",
                },
            ),
        };
        let pod = self
            .sessions
            .lock()
            .expect("sessions lock")
            .get(session)
            .cloned();
        let target = match pod {
            Some(p) => format!(
                "pod {}/{} container {} session {session}",
                p.namespace, p.pod, p.container
            ),
            None => format!("session {session}"),
        };
        let denied = matches!(
            &event,
            AuditEvent::Exec {
                denied_by: Some(_),
                ..
            }
        ) || matches!(&event, AuditEvent::FileCopyFailed { .. });
        let rec = AuditRecord {
            prev: String::new(),
            time: chrono::DateTime::<chrono::Utc>::from(at)
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            event: "debug".into(),
            call_id: String::new(),
            identity: caller.identity.clone(),
            groups: Vec::new(),
            transport: "debug".into(),
            peer: String::new(),
            method: method.into(),
            target,
            decision: if denied { "deny" } else { "allow" }.into(),
            reason: String::new(),
            code: 0,
            duration_us: 0,
            bytes_sent: 0,
            bytes_received: 0,
            detail: serde_json::to_value(&event).ok(),
        };
        self.audit.append_detached(&rec);
    }
}

pub struct DebugService {
    pub(crate) handle: DebugHandle,
    pub(crate) sessions: Sessions,
    pub(crate) policy: PolicyStore,
}

fn debug_status(e: berth_debug::Error) -> Status {
    Status::new(e.code(), e.to_string())
}

fn check_pod(pod: Option<v1::PodRef>) -> Result<v1::PodRef, Status> {
    let pod = pod.ok_or_else(|| Status::invalid_argument("pod is required (namespace/name)"))?;
    for (what, v) in [("namespace", &pod.namespace), ("pod", &pod.pod)] {
        if !valid_k8s_name(v) {
            return Err(Status::invalid_argument(format!(
                "{what} {v:?} is not a valid Kubernetes name"
            )));
        }
    }
    Ok(pod)
}

fn caller_of(ctx: &CallContext) -> DebugCaller {
    DebugCaller::new(ctx.caller.identity.clone())
}

impl DebugService {
    /// The profile and image a caller asked for, if its roles allow them.
    fn authorize(
        &self,
        ctx: &CallContext,
        profile: &str,
        image: &str,
    ) -> Result<(Profile, Option<String>), Status> {
        let profile_name = if profile.is_empty() {
            "general"
        } else {
            profile
        };
        let parsed: Profile = profile_name.parse().map_err(|_| {
            Status::invalid_argument(format!(
                "unknown debug profile {profile_name:?}: use general, netadmin or sysadmin"
            ))
        })?;
        let policy = self.policy.current();
        if !policy.allows_debug_profile(&ctx.roles, profile_name) {
            return Err(Status::permission_denied(format!(
                "roles [{}] of {} do not allow debug profile {profile_name} (a role needs \
                 debug_profiles = [\"{profile_name}\"], or a temporary grant of such a role)",
                ctx.roles.join(", "),
                ctx.caller.identity
            )));
        }
        let image = image.trim();
        if image.is_empty() || image == self.handle.default_image {
            return Ok((parsed, None));
        }
        if !policy.allows_debug_image(&ctx.roles, image) {
            return Err(Status::permission_denied(format!(
                "roles [{}] of {} do not allow debug image {image} (the default is {}; a role \
                 needs it in debug_images)",
                ctx.roles.join(", "),
                ctx.caller.identity,
                self.handle.default_image
            )));
        }
        Ok((parsed, Some(image.to_string())))
    }

    /// The session `id`, which must target `pod`: another pod's session looks missing.
    fn session_of(&self, pod: &v1::PodRef, id: &str) -> Result<SessionPod, Status> {
        let s = self
            .sessions
            .lock()
            .expect("sessions lock")
            .get(id)
            .cloned();
        match s {
            Some(s) if s.namespace == pod.namespace && s.pod == pod.pod => Ok(s),
            _ => Err(Status::not_found(format!(
                "no debug session {id} in pod {}/{}",
                pod.namespace, pod.pod
            ))),
        }
    }

    async fn find(
        &self,
        pod: &v1::PodRef,
        container: &str,
    ) -> Result<(DebugManager, SessionPod), Status> {
        let m = self.handle.get()?.clone();
        let (id, name) = m
            .find_target(
                &pod.namespace,
                &pod.pod,
                (!container.is_empty()).then_some(container),
            )
            .await
            .map_err(debug_status)?;
        Ok((
            m,
            SessionPod {
                namespace: pod.namespace.clone(),
                pod: pod.pod.clone(),
                container: name,
                container_id: id,
            },
        ))
    }

    /// Starts a session and remembers which pod it is for.
    async fn start(
        &self,
        m: &DebugManager,
        target: SessionPod,
        req: StartRequest,
    ) -> Result<SessionInfo, Status> {
        let info = m.start(req).await.map_err(debug_status)?;
        self.remember(m, target, &info);
        Ok(info)
    }

    /// Starts a session with its caller attached from the start (see
    /// [`DebugManager::start_attached`]).
    async fn start_attached(
        &self,
        m: &DebugManager,
        target: SessionPod,
        req: StartRequest,
    ) -> Result<(SessionInfo, berth_debug::Attachment), Status> {
        let (info, attachment) = m.start_attached(req).await.map_err(debug_status)?;
        self.remember(m, target, &info);
        Ok((info, attachment))
    }

    fn remember(&self, m: &DebugManager, target: SessionPod, info: &SessionInfo) {
        self.sessions
            .lock()
            .expect("sessions lock")
            .insert(info.id.clone(), target.clone());
        // Forget the session once it is over.
        let sessions = self.sessions.clone();
        let (m2, id) = (m.clone(), info.id.clone());
        tokio::spawn(async move {
            m2.wait_ended(&id).await;
            sessions.lock().expect("sessions lock").remove(&id);
        });
    }

    fn to_proto(&self, info: &SessionInfo) -> v1::DebugSession {
        let pod = self
            .sessions
            .lock()
            .expect("sessions lock")
            .get(&info.id)
            .cloned();
        v1::DebugSession {
            id: info.id.clone(),
            pod: pod.as_ref().map(|p| v1::PodRef {
                namespace: p.namespace.clone(),
                pod: p.pod.clone(),
            }),
            container: pod
                .as_ref()
                .map(|p| p.container.clone())
                .unwrap_or_default(),
            container_id: pod
                .as_ref()
                .map(|p| p.container_id.clone())
                .unwrap_or_default(),
            target_pid: info.target_pid,
            caller: info.caller.identity.clone(),
            profile: info.profile.as_str().into(),
            image: info.image.clone(),
            command: info.command.clone(),
            tty: info.tty,
            started_unix_ms: crate::grants::unix_ms(info.started_at),
            attached: info.attached,
        }
    }
}

fn to_input(msg: v1::attach_request::Msg) -> Option<Input> {
    use v1::attach_request::Msg;
    Some(match msg {
        Msg::Stdin(b) => Input::Stdin(b.into()),
        Msg::Resize(r) => Input::Resize {
            cols: r.cols.min(u32::from(u16::MAX)) as u16,
            rows: r.rows.min(u32::from(u16::MAX)) as u16,
        },
        Msg::Signal(s) => Input::Signal(s),
        Msg::CloseStdin(true) => Input::CloseStdin,
        // A second start/attach on the same stream, or close_stdin=false: nothing to do.
        Msg::CloseStdin(false) | Msg::Start(_) | Msg::Attach(_) => return None,
    })
}

fn to_output(o: Output) -> v1::AttachResponse {
    use v1::attach_response::Msg;
    v1::AttachResponse {
        msg: Some(match o {
            Output::Stdout(b) => Msg::Stdout(b.to_vec()),
            Output::Stderr(b) => Msg::Stderr(b.to_vec()),
            Output::Exit(end) => Msg::Exit(v1::SessionEnd {
                reason: end.reason.to_string(),
                exit_status: end.exit_status,
            }),
        }),
    }
}

#[tonic::async_trait]
impl v1::debug_server::Debug for DebugService {
    type AttachStream = BoxStream<v1::AttachResponse>;
    type ExecStream = BoxStream<v1::DebugExecResponse>;
    type CopyOutStream = BoxStream<v1::CopyOutResponse>;

    async fn attach(
        &self,
        req: Request<Streaming<v1::AttachRequest>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        use v1::attach_request::Msg;
        let ctx = super::context(&req)?;
        let mut inbound = req.into_inner();
        let first = inbound
            .message()
            .await?
            .and_then(|m| m.msg)
            .ok_or_else(|| Status::invalid_argument("Attach needs a first message"))?;
        let caller = caller_of(&ctx);
        let (info, attachment, initial_size) = match first {
            Msg::Start(s) => {
                let pod = check_pod(s.pod)?;
                let (profile, image) = self.authorize(&ctx, &s.profile, &s.image)?;
                let (m, target) = self.find(&pod, &s.container).await?;
                let req = StartRequest {
                    target: Target::Container(target.container_id.clone()),
                    profile,
                    caller: caller.clone(),
                    image,
                    command: s.command,
                    tty: s.tty,
                };
                let (info, attachment) = self.start_attached(&m, target, req).await?;
                let size = (s.tty && s.cols > 0 && s.rows > 0).then_some((s.cols, s.rows));
                (info, attachment, size)
            }
            Msg::Attach(a) => {
                let pod = check_pod(a.pod)?;
                self.session_of(&pod, &a.session_id)?;
                let m = self.handle.get()?.clone();
                let info = m
                    .list()
                    .into_iter()
                    .find(|i| i.id == a.session_id)
                    .ok_or_else(|| {
                        Status::not_found(format!("no debug session {}", a.session_id))
                    })?;
                let attachment = m.attach(&info.id, &caller).await.map_err(debug_status)?;
                (info, attachment, None)
            }
            _ => {
                return Err(Status::invalid_argument(
                    "the first Attach message must be start or attach",
                ));
            }
        };
        let input = attachment.input;
        let mut output = attachment.output;
        if let Some((cols, rows)) = initial_size {
            let _ = input
                .send(Input::Resize {
                    cols: cols.min(u32::from(u16::MAX)) as u16,
                    rows: rows.min(u32::from(u16::MAX)) as u16,
                })
                .await;
        }
        let first_msg = v1::AttachResponse {
            msg: Some(v1::attach_response::Msg::Session(self.to_proto(&info))),
        };
        let (tx, rx) = mpsc::channel::<Result<v1::AttachResponse, Status>>(64);
        let (done_tx, mut done_rx) = watch::channel(false);
        // Session output → client, `exit` last.
        tokio::spawn(async move {
            if tx.send(Ok(first_msg)).await.is_ok() {
                while let Some(o) = output.recv().await {
                    let last = matches!(o, Output::Exit(_));
                    if tx.send(Ok(to_output(o))).await.is_err() || last {
                        break;
                    }
                }
            }
            let _ = done_tx.send(true);
        });
        // Client → session. A client that half-closes stays attached until the output ends;
        // one that goes away detaches at once (the session's grace period starts).
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    m = inbound.message() => match m {
                        Ok(Some(v1::AttachRequest { msg: Some(msg) })) => {
                            if let Some(i) = to_input(msg)
                                && input.send(i).await.is_err()
                            {
                                break;
                            }
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => {
                            let _ = done_rx.wait_for(|d| *d).await;
                            break;
                        }
                        Err(_) => break,
                    },
                    _ = done_rx.changed() => break,
                }
            }
            drop(input);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn exec(
        &self,
        req: Request<v1::DebugExecRequest>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let ctx = super::context(&req)?;
        let r = req.into_inner();
        let pod = check_pod(r.pod)?;
        if r.command.is_empty() {
            return Err(Status::invalid_argument("Exec needs a command"));
        }
        let caller = caller_of(&ctx);
        // In a live session, or in a session made for this command and ended after it.
        let (m, session, own) = if r.session_id.is_empty() {
            let (profile, image) = self.authorize(&ctx, &r.profile, &r.image)?;
            let (m, target) = self.find(&pod, &r.container).await?;
            let req = StartRequest {
                target: Target::Container(target.container_id.clone()),
                profile,
                caller: caller.clone(),
                image,
                command: IDLE_COMMAND.iter().map(|s| s.to_string()).collect(),
                tty: false,
            };
            let info = self.start(&m, target, req).await?;
            (m, info.id, true)
        } else {
            self.session_of(&pod, &r.session_id)?;
            (self.handle.get()?.clone(), r.session_id.clone(), false)
        };
        let end = move |m: DebugManager, id: String| async move {
            if own && let Err(e) = m.terminate(&id).await {
                tracing::warn!(session = %id, error = %e, "debug: ending an exec session failed");
            }
        };
        let stream = match m
            .exec(
                &session,
                ExecRequest {
                    argv: r.command,
                    caller,
                },
            )
            .await
        {
            Ok(s) => s,
            Err(e) => {
                end(m, session).await;
                return Err(debug_status(e));
            }
        };
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            use v1::debug_exec_response::Msg;
            let mut output = stream.output;
            while let Some(o) = output.recv().await {
                let msg = match o {
                    ExecOutput::Stdout(b) => Msg::Stdout(b.to_vec()),
                    ExecOutput::Stderr(b) => Msg::Stderr(b.to_vec()),
                    ExecOutput::Exit(s) => Msg::ExitStatus(s),
                };
                if tx
                    .send(Ok(v1::DebugExecResponse { msg: Some(msg) }))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            end(m, session).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn copy_in(
        &self,
        req: Request<Streaming<v1::CopyInRequest>>,
    ) -> Result<Response<v1::CopyInResponse>, Status> {
        use v1::copy_in_request::Msg;
        let ctx = super::context(&req)?;
        let mut inbound = req.into_inner();
        let Some(Msg::Header(h)) = inbound.message().await?.and_then(|m| m.msg) else {
            return Err(Status::invalid_argument(
                "CopyIn starts with a header message",
            ));
        };
        let pod = check_pod(h.pod)?;
        if h.size > self.handle.copy_limit {
            return Err(Status::resource_exhausted(format!(
                "{} is {} bytes, more than the agent's copy limit of {} bytes",
                h.path, h.size, self.handle.copy_limit
            )));
        }
        let (m, target) = self.find(&pod, &h.container).await?;
        let mut data = Vec::with_capacity(h.size as usize);
        while let Some(msg) = inbound.message().await? {
            if let Some(Msg::Data(d)) = msg.msg {
                if data.len() + d.len() > h.size as usize {
                    return Err(Status::invalid_argument(format!(
                        "more data than the {} bytes the header announced",
                        h.size
                    )));
                }
                data.extend_from_slice(&d);
            }
        }
        if data.len() as u64 != h.size {
            return Err(Status::invalid_argument(format!(
                "the stream ended after {} of the {} bytes the header announced; nothing was \
                 written",
                data.len(),
                h.size
            )));
        }
        let mode = if h.mode == 0 { 0o644 } else { h.mode & 0o7777 };
        let written = m
            .copy_into(
                &Target::Container(target.container_id),
                &h.path,
                data,
                mode,
                &caller_of(&ctx),
            )
            .await
            .map_err(debug_status)?;
        Ok(Response::new(v1::CopyInResponse {
            path: h.path,
            size: written.size,
            sha256: written.sha256,
        }))
    }

    async fn copy_out(
        &self,
        req: Request<v1::CopyOutRequest>,
    ) -> Result<Response<Self::CopyOutStream>, Status> {
        use v1::copy_out_response::Msg;
        let ctx = super::context(&req)?;
        let r = req.into_inner();
        let pod = check_pod(r.pod)?;
        let (m, target) = self.find(&pod, &r.container).await?;
        let file = m
            .copy_out_of(
                &Target::Container(target.container_id),
                &r.path,
                &caller_of(&ctx),
            )
            .await
            .map_err(debug_status)?;
        let header = v1::CopyOutResponse {
            msg: Some(Msg::Header(v1::CopyOutHeader {
                path: r.path,
                size: file.size,
                mode: file.mode,
                sha256: file.sha256,
            })),
        };
        let data = Bytes::from(file.data);
        let mut messages = vec![Ok(header)];
        let mut at = 0;
        while at < data.len() {
            let end = (at + COPY_CHUNK).min(data.len());
            messages.push(Ok(v1::CopyOutResponse {
                msg: Some(Msg::Data(data.slice(at..end).to_vec())),
            }));
            at = end;
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(messages))))
    }

    async fn list(
        &self,
        req: Request<v1::ListSessionsRequest>,
    ) -> Result<Response<v1::ListSessionsResponse>, Status> {
        let r = req.into_inner();
        let m = self.handle.get()?;
        let sessions = m
            .list()
            .iter()
            .map(|i| self.to_proto(i))
            .filter(|s| {
                r.namespace.is_empty() || s.pod.as_ref().is_some_and(|p| p.namespace == r.namespace)
            })
            .collect();
        Ok(Response::new(v1::ListSessionsResponse { sessions }))
    }

    async fn terminate(
        &self,
        req: Request<v1::TerminateRequest>,
    ) -> Result<Response<v1::TerminateResponse>, Status> {
        let r = req.into_inner();
        let pod = check_pod(r.pod)?;
        self.session_of(&pod, &r.session_id)?;
        let m = self.handle.get()?;
        let info = m.list().into_iter().find(|i| i.id == r.session_id);
        let session = info.map(|i| self.to_proto(&i));
        m.terminate(&r.session_id).await.map_err(debug_status)?;
        Ok(Response::new(v1::TerminateResponse { session }))
    }
}
