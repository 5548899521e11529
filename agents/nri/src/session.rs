//! A multiplexed ttrpc session over one unix socket: serves one logical conn, calls on another.
//!
//! The plugin serves on conn 1 and calls on conn 2; the (fake) runtime does the opposite, so
//! both ends share this code. One writer task owns the socket's write half and sends whole
//! ttrpc messages one after another, so bytes of two messages never interleave on a conn.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::wire::{self, Code, FrameDecoder, MessageDecoder, ttrpc};

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What a served method returns: the encoded response, or a status for the caller.
pub(crate) type Reply = Result<Vec<u8>, ttrpc::Status>;

/// The service one end serves on its conn.
pub(crate) trait Service: Send + Sync + 'static {
    fn call(
        &self,
        service: String,
        method: String,
        payload: Bytes,
        timeout: Option<Duration>,
    ) -> BoxFuture<Reply>;
}

pub(crate) fn status(code: Code, message: impl Into<String>) -> ttrpc::Status {
    ttrpc::Status {
        code: code as i32,
        message: message.into(),
    }
}

#[derive(Clone)]
pub(crate) struct Session {
    inner: Arc<Inner>,
}

struct Inner {
    out: mpsc::Sender<(u32, Vec<u8>)>,
    pending: Mutex<HashMap<u32, oneshot::Sender<ttrpc::Response>>>,
    next_stream: AtomicU32,
    call_conn: u32,
    closed: CancellationToken,
    largest_frame_in: AtomicUsize,
}

impl Session {
    /// Starts the reader and writer tasks on `stream`.
    pub(crate) fn start(
        stream: UnixStream,
        serve_conn: u32,
        call_conn: u32,
        service: Arc<dyn Service>,
        max_frame_out: usize,
    ) -> Session {
        let (rd, wr) = stream.into_split();
        let (tx, rx) = mpsc::channel(64);
        let inner = Arc::new(Inner {
            out: tx,
            pending: Mutex::new(HashMap::new()),
            next_stream: AtomicU32::new(1),
            call_conn,
            closed: CancellationToken::new(),
            largest_frame_in: AtomicUsize::new(0),
        });
        tokio::spawn(writer(wr, rx, max_frame_out, inner.closed.clone()));
        tokio::spawn(reader(rd, serve_conn, service, inner.clone()));
        Session { inner }
    }

    /// Calls `service.method` on the peer and decodes its answer.
    pub(crate) async fn call<Req, Resp>(
        &self,
        service: &str,
        method: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, Error>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let payload = self
            .call_raw(service, method, req.encode_to_vec(), timeout)
            .await?;
        Resp::decode(&payload[..]).map_err(|source| Error::Decode {
            what: method.to_string(),
            source,
        })
    }

    pub(crate) async fn call_raw(
        &self,
        service: &str,
        method: &str,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, Error> {
        let id = self.inner.next_stream.fetch_add(2, Ordering::Relaxed);
        let req = ttrpc::Request {
            service: service.to_string(),
            method: method.to_string(),
            payload,
            timeout_nano: i64::try_from(timeout.as_nanos()).unwrap_or(i64::MAX),
            metadata: Vec::new(),
        };
        let msg = wire::encode_message(id, wire::MSG_REQUEST, 0, &req.encode_to_vec())?;
        let (tx, rx) = oneshot::channel();
        self.inner
            .pending
            .lock()
            .expect("pending lock")
            .insert(id, tx);
        if self.inner.closed.is_cancelled()
            || self
                .inner
                .out
                .send((self.inner.call_conn, msg))
                .await
                .is_err()
        {
            self.inner.pending.lock().expect("pending lock").remove(&id);
            return Err(Error::Closed);
        }
        let resp = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(_)) => return Err(Error::Closed),
            Err(_) => {
                self.inner.pending.lock().expect("pending lock").remove(&id);
                return Err(Error::Timeout {
                    method: method.to_string(),
                    timeout,
                });
            }
        };
        match resp.status {
            Some(s) if s.code != Code::Ok as i32 => Err(Error::Status {
                method: method.to_string(),
                code: s.code,
                message: s.message,
            }),
            _ => Ok(resp.payload),
        }
    }

    /// Resolves when the trunk is gone (peer closed, protocol error, or [`Session::close`]).
    pub(crate) async fn closed(&self) {
        self.inner.closed.cancelled().await
    }

    #[cfg_attr(not(feature = "fake-runtime"), allow(dead_code))]
    pub(crate) fn is_closed(&self) -> bool {
        self.inner.closed.is_cancelled()
    }

    pub(crate) fn close(&self) {
        self.inner.closed.cancel();
    }

    /// The largest frame payload the peer has sent so far.
    #[cfg_attr(not(feature = "fake-runtime"), allow(dead_code))]
    pub(crate) fn largest_frame_in(&self) -> usize {
        self.inner.largest_frame_in.load(Ordering::Relaxed)
    }
}

async fn writer(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<(u32, Vec<u8>)>,
    max_frame: usize,
    closed: CancellationToken,
) {
    let mut buf = Vec::new();
    loop {
        let (conn, msg) = tokio::select! {
            m = rx.recv() => match m { Some(m) => m, None => break },
            _ = closed.cancelled() => break,
        };
        buf.clear();
        wire::encode_frames(conn, &msg, max_frame, &mut buf);
        if let Err(e) = wr.write_all(&buf).await {
            tracing::debug!(error = %e, "nri trunk write failed");
            break;
        }
    }
    closed.cancel();
    let _ = wr.shutdown().await;
}

async fn reader(
    mut rd: OwnedReadHalf,
    serve_conn: u32,
    service: Arc<dyn Service>,
    inner: Arc<Inner>,
) {
    let mut frames = FrameDecoder::default();
    let mut served = MessageDecoder::default();
    let mut called = MessageDecoder::default();
    let result: Result<(), Error> = async {
        loop {
            let n = tokio::select! {
                r = rd.read_buf(frames.buffer_mut()) => r?,
                _ = inner.closed.cancelled() => return Ok(()),
            };
            if n == 0 {
                return Err(Error::Closed);
            }
            while let Some((conn, payload)) = frames.next_frame()? {
                inner
                    .largest_frame_in
                    .fetch_max(payload.len(), Ordering::Relaxed);
                if conn == serve_conn {
                    served.push(&payload);
                    while let Some(m) = served.next_message()? {
                        handle_request(m, serve_conn, &service, &inner);
                    }
                } else if conn == inner.call_conn {
                    called.push(&payload);
                    while let Some(m) = called.next_message()? {
                        handle_response(m, &inner)?;
                    }
                } else {
                    // Like the runtime's mux: frames for conns nobody opened are dropped.
                    tracing::debug!(conn, "dropping nri frame for an unknown conn");
                }
            }
        }
    }
    .await;
    if let Err(e) = result {
        match e {
            Error::Closed => tracing::debug!("nri trunk closed by the peer"),
            e => tracing::warn!(error = %e, "nri trunk failed; dropping the connection"),
        }
    }
    inner.closed.cancel();
    // Wake every caller still waiting: their senders are dropped here.
    inner.pending.lock().expect("pending lock").clear();
}

fn handle_request(m: wire::Message, conn: u32, service: &Arc<dyn Service>, inner: &Arc<Inner>) {
    if m.kind != wire::MSG_REQUEST {
        tracing::debug!(
            kind = m.kind,
            stream = m.stream_id,
            "ignoring non-request message on the served conn"
        );
        return;
    }
    let out = inner.out.clone();
    let fut = match ttrpc::Request::decode(&m.body[..]) {
        Ok(req) => {
            let timeout =
                (req.timeout_nano > 0).then(|| Duration::from_nanos(req.timeout_nano as u64));
            service.call(req.service, req.method, Bytes::from(req.payload), timeout)
        }
        Err(e) => {
            let s = status(
                Code::InvalidArgument,
                format!("cannot decode ttrpc request: {e}"),
            );
            Box::pin(async move { Err(s) })
        }
    };
    let stream_id = m.stream_id;
    tokio::spawn(async move {
        let resp = match fut.await {
            Ok(payload) => ttrpc::Response {
                status: None,
                payload,
            },
            Err(s) => ttrpc::Response {
                status: Some(s),
                payload: Vec::new(),
            },
        };
        match wire::encode_message(stream_id, wire::MSG_RESPONSE, 0, &resp.encode_to_vec()) {
            Ok(msg) => {
                let _ = out.send((conn, msg)).await;
            }
            Err(e) => tracing::warn!(error = %e, "cannot send an nri response"),
        }
    });
}

fn handle_response(m: wire::Message, inner: &Inner) -> Result<(), Error> {
    if m.kind != wire::MSG_RESPONSE {
        return Ok(());
    }
    let resp = ttrpc::Response::decode(&m.body[..]).map_err(|source| Error::Decode {
        what: "ttrpc response".into(),
        source,
    })?;
    let waiter = inner
        .pending
        .lock()
        .expect("pending lock")
        .remove(&m.stream_id);
    match waiter {
        Some(tx) => {
            let _ = tx.send(resp);
        }
        // A late answer to a call that already timed out.
        None => tracing::debug!(stream = m.stream_id, "dropping a response nobody waits for"),
    }
    Ok(())
}
