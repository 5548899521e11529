//! The guard: a tower layer around every RPC that authenticates (identity from the
//! connection), authorizes (policy), and audits (one durable line per call) — in one place
//! no handler can bypass.
//!
//! Order for an allowed call:
//! 1. read the (single) request message — for client streams, the first one — and decode
//!    its target;
//! 2. decide; a denial is audited and answered with PERMISSION_DENIED;
//! 3. streaming or mutating calls: an `intent` line must be durable before the handler runs;
//! 4. unary responses are held until their `call` line is durable; if the audit write fails,
//!    the caller gets UNAVAILABLE instead of the result;
//! 5. streams are counted and their `call` line is written when they end; an audit failure
//!    turns the final status into UNAVAILABLE.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, Request, Response};
use http_body::Frame;
use http_body_util::BodyExt;
use tonic::body::Body;
use tonic::{Code, Status};

use crate::audit::{AuditLog, AuditRecord};
use crate::error::GuardError;
use crate::grants::Grants;
use crate::identity::Caller;
use crate::methods;
use crate::metrics::Metrics;
use crate::policy::{Decision, PolicyStore};
use crate::transport::ConnInfo;

/// Largest request message accepted (no berth RPC needs more).
const MAX_REQUEST_BYTES: usize = 64 << 10;

/// Per-call facts handlers may read from `request.extensions()`.
#[derive(Debug, Clone)]
pub struct CallContext {
    pub caller: Arc<Caller>,
    /// Roles that granted this call.
    pub roles: Vec<String>,
    pub call_id: String,
}

pub(crate) struct Guard {
    pub policy: PolicyStore,
    pub grants: Grants,
    pub audit: AuditLog,
    pub metrics: Metrics,
}

#[derive(Clone)]
pub struct GuardLayer {
    guard: Arc<Guard>,
}

impl GuardLayer {
    pub(crate) fn new(guard: Arc<Guard>) -> GuardLayer {
        GuardLayer { guard }
    }
}

impl<S> tower::Layer<S> for GuardLayer {
    type Service = GuardService<S>;
    fn layer(&self, inner: S) -> GuardService<S> {
        GuardService {
            inner,
            guard: self.guard.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GuardService<S> {
    inner: S,
    guard: Arc<Guard>,
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn status_response(status: Status) -> Response<Body> {
    status.into_http::<Body>()
}

fn code_of(headers: &HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .map(|v| Code::from_bytes(v.as_bytes()))
}

/// The (percent-decoded) `grpc-message` of a failed call, for the audit record.
fn message_of(headers: &HeaderMap) -> String {
    if headers.get("grpc-message").is_none() {
        return String::new();
    }
    // Only our own tonic services produce these headers, so they are well formed.
    tonic::Status::from_header_map(headers)
        .map(|s| s.message().to_string())
        .unwrap_or_default()
}

/// Exactly one uncompressed gRPC message.
fn single_message(buf: &Bytes) -> Result<Bytes, Status> {
    let m = leading_message(buf)?;
    if buf.len() != 5 + m.len() {
        return Err(Status::invalid_argument(
            "request must be exactly one gRPC message",
        ));
    }
    Ok(m)
}

/// The first gRPC message of a buffer that may hold more (a client stream's start).
fn leading_message(buf: &Bytes) -> Result<Bytes, Status> {
    if buf.len() < 5 {
        return Err(Status::invalid_argument("request carries no gRPC message"));
    }
    if buf[0] != 0 {
        return Err(Status::unimplemented(
            "compressed requests are not supported: disable request compression",
        ));
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if buf.len() < 5 + len {
        return Err(Status::invalid_argument("request message is truncated"));
    }
    Ok(buf.slice(5..5 + len))
}

/// Reads a client stream until its first message is complete (at most
/// `MAX_REQUEST_BYTES`); returns what was read and the rest of the stream.
async fn first_message(mut body: Body) -> Result<(Bytes, Body), Status> {
    let mut buf = bytes::BytesMut::new();
    loop {
        if buf.len() >= 5 {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if len > MAX_REQUEST_BYTES {
                return Err(Status::invalid_argument(format!(
                    "first request message is {len} bytes, more than the {MAX_REQUEST_BYTES} allowed"
                )));
            }
            if buf.len() >= 5 + len {
                return Ok((buf.freeze(), body));
            }
        }
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
            }
            Some(Err(e)) => {
                return Err(Status::invalid_argument(format!(
                    "cannot read request: {e}"
                )));
            }
            None => return Err(Status::invalid_argument("request carries no gRPC message")),
        }
    }
}

/// A client stream handed to the service: the bytes the guard read, then the rest, counted.
struct Replayed {
    prefix: Option<Bytes>,
    inner: Body,
    received: Arc<AtomicU64>,
}

impl http_body::Body for Replayed {
    type Data = Bytes;
    type Error = Status;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(p) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        let polled = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(frame)) = &polled
            && let Some(d) = frame.data_ref()
        {
            self.received.fetch_add(d.len() as u64, Ordering::Relaxed);
        }
        Poll::Ready(polled)
    }
    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.inner.is_end_stream()
    }
}

impl Guard {
    fn record(&self, caller: &Caller, method: &str, call_id: &str) -> AuditRecord {
        AuditRecord {
            prev: String::new(),
            time: now_rfc3339(),
            event: "call".into(),
            call_id: call_id.to_string(),
            identity: caller.identity.clone(),
            groups: caller.groups.clone(),
            transport: caller.transport.as_str().into(),
            peer: caller.peer.clone(),
            method: method.to_string(),
            target: String::new(),
            decision: "deny".into(),
            reason: String::new(),
            code: Code::Unknown as i32,
            duration_us: 0,
            bytes_sent: 0,
            bytes_received: 0,
            detail: None,
        }
    }

    /// Writes the final line of a call; on failure the call must fail.
    async fn finish(
        &self,
        mut rec: AuditRecord,
        code: Code,
        started: Instant,
        sent: u64,
    ) -> Result<(), Status> {
        let elapsed = started.elapsed();
        if code == Code::Ok {
            rec.reason.clear();
        }
        rec.code = code as i32;
        rec.duration_us = elapsed.as_micros() as u64;
        rec.bytes_sent = sent;
        self.metrics.observe_call(&rec.method, code, elapsed);
        self.audit.append(&rec).await.map_err(|e| {
            self.metrics.audit_failed();
            GuardError::from(e).into()
        })
    }

    async fn handle<S>(
        self: Arc<Self>,
        mut inner: S,
        req: Request<Body>,
    ) -> Result<Response<Body>, S::Error>
    where
        S: tower::Service<Request<Body>, Response = Response<Body>> + Send,
        S::Future: Send,
    {
        let started = Instant::now();
        let method = req.uri().path().to_string();
        let call_id = uuid::Uuid::new_v4().to_string();
        let Some(conn) = req.extensions().get::<ConnInfo>().cloned() else {
            // Every listener attaches ConnInfo; reaching this is a wiring bug. Fail closed,
            // and still leave a trace in the audit log.
            tracing::error!(%method, "call without connection identity refused");
            let nobody = Caller {
                identity: "unknown".into(),
                names: Vec::new(),
                groups: Vec::new(),
                transport: crate::identity::Transport::Unix,
                peer: "unknown".into(),
            };
            let mut rec = self.record(&nobody, &method, &call_id);
            rec.transport = "unknown".into();
            let st = Status::unauthenticated("no caller identity on this connection");
            rec.reason = st.message().to_string();
            return Ok(match self.finish(rec, st.code(), started, 0).await {
                Ok(()) => status_response(st),
                Err(audit) => status_response(audit),
            });
        };
        let caller = conn.caller;
        let mut rec = self.record(&caller, &method, &call_id);

        let (parts, body) = req.into_parts();
        let guard = self.clone();
        let deny = move |rec: AuditRecord, status: Status| {
            let guard = guard.clone();
            async move {
                let mut rec = rec;
                rec.reason = status.message().to_string();
                match guard.finish(rec, status.code(), started, 0).await {
                    Ok(()) => status_response(status),
                    Err(audit) => status_response(audit),
                }
            }
        };
        let Some(spec) = methods::lookup(&method) else {
            let st = Status::unimplemented(format!("unknown method {method}"));
            return Ok(deny(rec, st).await);
        };
        // A unary request is read whole; a client stream up to its first message, which is
        // what the call is authorized and audited on (the rest is replayed to the handler).
        let (first, rest) = if spec.client_streaming {
            match first_message(body).await {
                Ok((head, rest)) => (head, Some(rest)),
                Err(st) => return Ok(deny(rec, st).await),
            }
        } else {
            match http_body_util::Limited::new(body, MAX_REQUEST_BYTES)
                .collect()
                .await
            {
                Ok(c) => (c.to_bytes(), None),
                Err(e) => {
                    let st = Status::invalid_argument(format!("cannot read request: {e}"));
                    return Ok(deny(rec, st).await);
                }
            }
        };
        rec.bytes_received = first.len() as u64;
        let message = if spec.client_streaming {
            leading_message(&first)
        } else {
            single_message(&first)
        };
        let target = match message.and_then(|m| {
            spec.target(&m)
                .map_err(|e| Status::invalid_argument(format!("cannot decode request: {e}")))
        }) {
            Ok(t) => t,
            Err(st) => return Ok(deny(rec, st).await),
        };
        rec.target = target.describe.clone();
        let granted = self.grants.roles_of(&caller.names);
        let roles = match self.policy.current().decide_with_grants(
            &caller,
            &method,
            &target.scope,
            &granted,
        ) {
            Decision::Allow { roles } => roles,
            Decision::Deny(d) => {
                return Ok(deny(rec, Status::permission_denied(d.to_string())).await);
            }
        };
        rec.decision = "allow".into();

        if spec.streaming || spec.mutating {
            let mut intent = rec.clone();
            intent.event = "intent".into();
            intent.code = Code::Ok as i32;
            if let Err(e) = self.audit.append(&intent).await {
                self.metrics.audit_failed();
                let st = Status::from(GuardError::from(e));
                self.metrics
                    .observe_call(&method, st.code(), started.elapsed());
                return Ok(status_response(st));
            }
        }

        let received = Arc::new(AtomicU64::new(first.len() as u64));
        let body = match rest {
            Some(rest) => Body::new(Replayed {
                prefix: Some(first),
                inner: rest,
                received: received.clone(),
            }),
            None => Body::new(http_body_util::Full::new(first)),
        };
        let mut req = Request::from_parts(parts, body);
        req.extensions_mut().insert(CallContext {
            caller: caller.clone(),
            roles,
            call_id,
        });
        let resp = match inner.call(req).await {
            Ok(r) => r,
            Err(e) => {
                let _ = self.finish(rec, Code::Internal, started, 0).await;
                return Err(e);
            }
        };
        let (parts, body) = resp.into_parts();
        let header_code = code_of(&parts.headers);
        rec.reason = message_of(&parts.headers);

        if spec.streaming {
            let body = AuditedBody {
                inner: body,
                finish: Some(Finish {
                    guard: self.clone(),
                    rec,
                    started,
                    header_code,
                    received,
                }),
                sent: 0,
                pending: None,
                done: false,
            };
            return Ok(Response::from_parts(parts, Body::new(body)));
        }

        // Unary: hold the answer until its audit line is durable.
        let (data, trailers, code) = match body.collect().await {
            Ok(c) => {
                let trailers = c.trailers().cloned();
                if let Some(t) = &trailers {
                    let m = message_of(t);
                    if !m.is_empty() {
                        rec.reason = m;
                    }
                }
                let code = trailers
                    .as_ref()
                    .and_then(code_of)
                    .or(header_code)
                    .unwrap_or(Code::Unknown);
                (c.to_bytes(), trailers, code)
            }
            Err(st) => (Bytes::new(), None, st.code()),
        };
        rec.bytes_received = received.load(Ordering::Relaxed);
        if let Err(audit) = self.finish(rec, code, started, data.len() as u64).await {
            return Ok(status_response(audit));
        }
        let body = Buffered {
            data: (!data.is_empty()).then_some(data),
            trailers,
        };
        Ok(Response::from_parts(parts, Body::new(body)))
    }
}

impl<S> tower::Service<Request<Body>> for GuardService<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // The clone that was made ready is the one that serves this call.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        // Spawned, so a client that hangs up cannot cancel the call half-way: the handler
        // and its audit line always complete.
        let task = tokio::spawn(self.guard.clone().handle(inner, req));
        Box::pin(async move {
            match task.await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "call task failed");
                    Ok(status_response(Status::internal(
                        "call failed inside the agent",
                    )))
                }
            }
        })
    }
}

/// A unary response released after its audit line.
struct Buffered {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl http_body::Body for Buffered {
    type Data = Bytes;
    type Error = Status;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }
    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}

struct Finish {
    guard: Arc<Guard>,
    rec: AuditRecord,
    started: Instant,
    header_code: Option<Code>,
    /// Request bytes so far (client streams keep counting while the response streams).
    received: Arc<AtomicU64>,
}

/// The final audit write (a task: it completes even if the body is dropped) and the trailers
/// to release after it.
type Pending = (
    tokio::task::JoinHandle<Result<(), Status>>,
    Option<HeaderMap>,
);

/// A streaming response that counts what it sends and audits how it ended.
struct AuditedBody {
    inner: Body,
    finish: Option<Finish>,
    sent: u64,
    pending: Option<Pending>,
    done: bool,
}

impl AuditedBody {
    fn start_finish(&mut self, code: Code, trailers: Option<HeaderMap>) {
        if let Some(f) = self.finish.as_mut()
            && let Some(t) = &trailers
        {
            let m = message_of(t);
            if !m.is_empty() {
                f.rec.reason = m;
            }
        }
        if let Some(mut f) = self.finish.take() {
            f.rec.bytes_received = f.received.load(Ordering::Relaxed);
            let sent = self.sent;
            let task =
                tokio::spawn(async move { f.guard.finish(f.rec, code, f.started, sent).await });
            self.pending = Some((task, trailers));
        } else {
            self.done = true;
        }
    }
}

impl http_body::Body for AuditedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        loop {
            if let Some((task, _)) = this.pending.as_mut() {
                let res = std::task::ready!(Pin::new(task).poll(cx))
                    .unwrap_or_else(|e| Err(GuardError::from(e).into()));
                let (_, trailers) = this.pending.take().expect("pending");
                this.done = true;
                return Poll::Ready(match res {
                    Ok(()) => trailers.map(|t| Ok(Frame::trailers(t))),
                    Err(st) => {
                        let mut h = HeaderMap::new();
                        let _ = st.add_header(&mut h);
                        Some(Ok(Frame::trailers(h)))
                    }
                });
            }
            if this.done {
                return Poll::Ready(None);
            }
            match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(d) => {
                        this.sent += d.len() as u64;
                        return Poll::Ready(Some(Ok(Frame::data(d))));
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            let code = code_of(&t).unwrap_or(Code::Unknown);
                            this.start_finish(code, Some(t));
                        }
                    }
                },
                Some(Err(st)) => {
                    // Audit the failure, then surface it.
                    let mut h = HeaderMap::new();
                    let _ = st.add_header(&mut h);
                    this.start_finish(st.code(), Some(h));
                }
                None => {
                    let code = this
                        .finish
                        .as_ref()
                        .and_then(|f| f.header_code)
                        .unwrap_or(Code::Unknown);
                    this.start_finish(code, None);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

impl Drop for AuditedBody {
    fn drop(&mut self) {
        // The client went away (or the connection broke) before the stream ended.
        if let Some(f) = self.finish.take() {
            let mut rec = f.rec;
            let elapsed: Duration = f.started.elapsed();
            rec.code = Code::Cancelled as i32;
            rec.duration_us = elapsed.as_micros() as u64;
            rec.bytes_sent = self.sent;
            rec.bytes_received = f.received.load(Ordering::Relaxed);
            f.guard
                .metrics
                .observe_call(&rec.method, Code::Cancelled, elapsed);
            f.guard.audit.append_detached(&rec);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_message_framing() {
        let ok = Bytes::from_static(&[0, 0, 0, 0, 2, 8, 1]);
        assert_eq!(&single_message(&ok).unwrap()[..], &[8, 1]);
        let compressed = Bytes::from_static(&[1, 0, 0, 0, 0]);
        assert_eq!(
            single_message(&compressed).unwrap_err().code(),
            Code::Unimplemented
        );
        let two = Bytes::from_static(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            single_message(&two).unwrap_err().code(),
            Code::InvalidArgument
        );
        assert_eq!(
            single_message(&Bytes::new()).unwrap_err().code(),
            Code::InvalidArgument
        );
    }
}
