//! `berth.v1.Debug`: debug containers over a [`DebugBackend`].
//!
//! The guard authorized the method for the target pod's namespace (from the first message of
//! a stream); this service adds what only it can check: the profile and the image against the
//! caller's roles (`debug_profiles`, `debug_images`), and that a session id named in a request
//! belongs to the pod the caller was authorized for. What happens inside a session (lines
//! typed, execs, files copied, start and end) goes to the API audit log as `debug` events
//! (see [`crate::backend::debug::DebugEvents`]).

use std::pin::Pin;
use std::sync::Arc;

use berth_proto::v1;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::backend::debug::{
    DebugAttachment, DebugBackend, DebugInput, DebugSession, DebugStart, SessionPod, Sessions,
};
use crate::layer::CallContext;
use crate::pod::PodName;
use crate::policy::PolicyStore;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Largest data chunk sent in a CopyOut stream.
const COPY_CHUNK: usize = 64 << 10;
/// How long a one-shot session's tools process idles (it is terminated after the command).
const IDLE_COMMAND: [&str; 2] = ["sleep", "2147483647"];

pub struct DebugService {
    pub(crate) backend: Arc<dyn DebugBackend>,
    pub(crate) sessions: Sessions,
    pub(crate) policy: PolicyStore,
}

fn check_pod(pod: Option<v1::PodRef>) -> Result<v1::PodRef, Status> {
    PodName::from_request(pod).map(v1::PodRef::from)
}

/// "a, b or c".
fn one_of(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => (*one).to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

impl DebugService {
    /// The profile and image a caller asked for, if its roles allow them.
    fn authorize(
        &self,
        ctx: &CallContext,
        profile: &str,
        image: &str,
    ) -> Result<(String, Option<String>), Status> {
        let profile_name = if profile.is_empty() {
            "general"
        } else {
            profile
        };
        let profiles = self.backend.profiles();
        if !profiles.contains(&profile_name) {
            return Err(Status::invalid_argument(format!(
                "unknown debug profile {profile_name:?}: use {}",
                one_of(profiles)
            )));
        }
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
        let default_image = self.backend.default_image();
        if image.is_empty() || image == default_image {
            return Ok((profile_name.to_string(), None));
        }
        if !policy.allows_debug_image(&ctx.roles, image) {
            return Err(Status::permission_denied(format!(
                "roles [{}] of {} do not allow debug image {image} (the default is \
                 {default_image}; a role needs it in debug_images)",
                ctx.roles.join(", "),
                ctx.caller.identity,
            )));
        }
        Ok((profile_name.to_string(), Some(image.to_string())))
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

    async fn find(&self, pod: &v1::PodRef, container: &str) -> Result<SessionPod, Status> {
        let target = self
            .backend
            .find_target(
                &pod.namespace,
                &pod.pod,
                (!container.is_empty()).then_some(container),
            )
            .await?;
        Ok(SessionPod {
            namespace: pod.namespace.clone(),
            pod: pod.pod.clone(),
            container: target.container,
            container_id: target.container_id,
        })
    }

    /// Starts a session and remembers which pod it is for.
    async fn start(&self, target: SessionPod, req: DebugStart) -> Result<DebugSession, Status> {
        let info = self.backend.start_session(req).await?;
        self.remember(target, &info);
        Ok(info)
    }

    /// Starts a session with its caller attached from the start (see
    /// [`DebugBackend::start_attached`]).
    async fn start_attached(
        &self,
        target: SessionPod,
        req: DebugStart,
    ) -> Result<(DebugSession, DebugAttachment), Status> {
        let (info, attachment) = self.backend.start_attached(req).await?;
        self.remember(target, &info);
        Ok((info, attachment))
    }

    fn remember(&self, target: SessionPod, info: &DebugSession) {
        self.sessions
            .lock()
            .expect("sessions lock")
            .insert(info.id.clone(), target);
        // Forget the session once it is over.
        let sessions = self.sessions.clone();
        let (backend, id) = (self.backend.clone(), info.id.clone());
        tokio::spawn(async move {
            backend.wait_ended(&id).await;
            sessions.lock().expect("sessions lock").remove(&id);
        });
    }

    /// The live session `id`.
    fn live_session(&self, id: &str) -> Result<DebugSession, Status> {
        self.backend
            .sessions()?
            .into_iter()
            .find(|i| i.id == id)
            .ok_or_else(|| Status::not_found(format!("no debug session {id}")))
    }

    fn to_proto(&self, info: &DebugSession) -> v1::DebugSession {
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
            caller: info.caller.clone(),
            profile: info.profile.clone(),
            image: info.image.clone(),
            command: info.command.clone(),
            tty: info.tty,
            started_unix_ms: crate::grants::unix_ms(info.started_at),
            attached: info.attached,
        }
    }
}

fn clamp_u16(v: u32) -> u16 {
    v.min(u32::from(u16::MAX)) as u16
}

fn to_input(msg: v1::attach_request::Msg) -> Option<DebugInput> {
    use v1::attach_request::Msg;
    Some(match msg {
        Msg::Stdin(b) => DebugInput::Stdin(b.into()),
        Msg::Resize(r) => DebugInput::Resize {
            cols: clamp_u16(r.cols),
            rows: clamp_u16(r.rows),
        },
        Msg::Signal(s) => DebugInput::Signal(s),
        Msg::CloseStdin(true) => DebugInput::CloseStdin,
        // A second start/attach on the same stream, or close_stdin=false: nothing to do.
        Msg::CloseStdin(false) | Msg::Start(_) | Msg::Attach(_) => return None,
    })
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
        let caller = ctx.caller.identity.clone();
        let (info, attachment, initial_size) = match first {
            Msg::Start(s) => {
                let pod = check_pod(s.pod)?;
                let (profile, image) = self.authorize(&ctx, &s.profile, &s.image)?;
                let target = self.find(&pod, &s.container).await?;
                let req = DebugStart {
                    container_id: target.container_id.clone(),
                    profile,
                    caller,
                    image,
                    command: s.command,
                    tty: s.tty,
                };
                let (info, attachment) = self.start_attached(target, req).await?;
                let size = (s.tty && s.cols > 0 && s.rows > 0).then_some((s.cols, s.rows));
                (info, attachment, size)
            }
            Msg::Attach(a) => {
                let pod = check_pod(a.pod)?;
                self.session_of(&pod, &a.session_id)?;
                let info = self.live_session(&a.session_id)?;
                let attachment = self.backend.attach(&info.id, &caller).await?;
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
                .send(DebugInput::Resize {
                    cols: clamp_u16(cols),
                    rows: clamp_u16(rows),
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
                while let Some(msg) = output.next().await {
                    let last = matches!(msg, v1::attach_response::Msg::Exit(_));
                    let response = v1::AttachResponse { msg: Some(msg) };
                    if tx.send(Ok(response)).await.is_err() || last {
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
        let caller = ctx.caller.identity.clone();
        // In a live session, or in a session made for this command and ended after it.
        let (session, own) = if r.session_id.is_empty() {
            let (profile, image) = self.authorize(&ctx, &r.profile, &r.image)?;
            let target = self.find(&pod, &r.container).await?;
            let req = DebugStart {
                container_id: target.container_id.clone(),
                profile,
                caller: caller.clone(),
                image,
                command: IDLE_COMMAND.iter().map(|s| s.to_string()).collect(),
                tty: false,
            };
            let info = self.start(target, req).await?;
            (info.id, true)
        } else {
            self.session_of(&pod, &r.session_id)?;
            (r.session_id.clone(), false)
        };
        let backend = self.backend.clone();
        let end = move |backend: Arc<dyn DebugBackend>, id: String| async move {
            if own && let Err(e) = backend.terminate(&id).await {
                tracing::warn!(session = %id, error = %e.message(), "debug: ending an exec session failed");
            }
        };
        let mut output = match backend.exec(&session, r.command, &caller).await {
            Ok(s) => s,
            Err(e) => {
                end(backend, session).await;
                return Err(e);
            }
        };
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            while let Some(msg) = output.next().await {
                if tx
                    .send(Ok(v1::DebugExecResponse { msg: Some(msg) }))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            end(backend, session).await;
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
        let copy_limit = self.backend.copy_limit();
        if h.size > copy_limit {
            return Err(Status::resource_exhausted(format!(
                "{} is {} bytes, more than the agent's copy limit of {copy_limit} bytes",
                h.path, h.size
            )));
        }
        let target = self.find(&pod, &h.container).await?;
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
        let written = self
            .backend
            .copy_in(
                &target.container_id,
                &h.path,
                data,
                mode,
                &ctx.caller.identity,
            )
            .await?;
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
        let target = self.find(&pod, &r.container).await?;
        let file = self
            .backend
            .copy_out(&target.container_id, &r.path, &ctx.caller.identity)
            .await?;
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
        let sessions = self
            .backend
            .sessions()?
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
        let info = self
            .backend
            .sessions()?
            .into_iter()
            .find(|i| i.id == r.session_id);
        let session = info.map(|i| self.to_proto(&i));
        self.backend.terminate(&r.session_id).await?;
        Ok(Response::new(v1::TerminateResponse { session }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_of_lists_the_names_as_a_sentence() {
        assert_eq!(one_of(&[]), "");
        assert_eq!(one_of(&["general"]), "general");
        assert_eq!(
            one_of(&["general", "netadmin", "sysadmin"]),
            "general, netadmin or sysadmin"
        );
    }
}
