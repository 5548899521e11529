//! An in-process fake runtime: the containerd side of NRI, for tests of plugins.
//!
//! It listens on a unix socket, accepts plugins, serves `Runtime.RegisterPlugin` on conn 2,
//! then (like containerd) calls `Configure` and `Synchronize` on conn 1 and hands the test a
//! [`PluginHandle`] to drive container events.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::api::*;
use crate::error::Error;
use crate::session::{BoxFuture, Reply, Service, Session, status};
use crate::wire::{Code, MAX_FRAME_OUT, PLUGIN_CONN, RUNTIME_CONN};

/// How the fake runtime behaves.
#[derive(Debug, Clone)]
pub struct FakeOptions {
    pub runtime_name: String,
    pub runtime_version: String,
    /// Sent in Configure, in ms (0 = absent, as containerd 1.7 does).
    pub registration_timeout_ms: i64,
    pub request_timeout_ms: i64,
    /// Timeout the fake applies to its own calls to the plugin.
    pub request_timeout: Duration,
    /// Initial state sent with Synchronize.
    pub pods: Vec<PodSandbox>,
    pub containers: Vec<Container>,
    /// At most this many pods and containers per Synchronize message (0 = all in one).
    pub sync_chunk: usize,
    /// Largest frame payload the fake sends (to test reassembly on the plugin side).
    pub max_frame: usize,
    /// When false, RegisterPlugin is never answered (to test registration timeouts).
    pub answer_register: bool,
    /// When false, Synchronize is never sent after Configure (like containerd 1.7 with the
    /// plugins it starts itself).
    pub synchronize: bool,
}

impl Default for FakeOptions {
    fn default() -> Self {
        FakeOptions {
            runtime_name: "fake-runtime".into(),
            runtime_version: "0.0.0".into(),
            registration_timeout_ms: 5000,
            request_timeout_ms: 2000,
            request_timeout: Duration::from_secs(2),
            pods: Vec::new(),
            containers: Vec::new(),
            sync_chunk: 0,
            max_frame: MAX_FRAME_OUT,
            answer_register: true,
            synchronize: true,
        }
    }
}

/// A listening fake runtime.
pub struct FakeRuntime {
    path: PathBuf,
    plugins: mpsc::Receiver<Result<PluginHandle, Error>>,
    stop: CancellationToken,
    sessions: Arc<Mutex<Vec<Session>>>,
}

impl FakeRuntime {
    pub async fn start(path: &Path, opts: FakeOptions) -> std::io::Result<FakeRuntime> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        let (tx, rx) = mpsc::channel(16);
        let stop = CancellationToken::new();
        let sessions = Arc::new(Mutex::new(Vec::new()));
        let opts = Arc::new(opts);
        {
            let stop = stop.clone();
            let sessions = sessions.clone();
            tokio::spawn(async move {
                loop {
                    let stream = tokio::select! {
                        r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => break },
                        _ = stop.cancelled() => break,
                    };
                    adopt(stream, &opts, &sessions, &tx);
                }
            });
        }
        Ok(FakeRuntime {
            path: path.to_path_buf(),
            plugins: rx,
            stop,
            sessions,
        })
    }

    /// A runtime that "starts" one plugin itself, like containerd does with the plugins in
    /// its plugin dir: serves one end of a socket pair and returns the other end, which the
    /// plugin gets instead of an NRI socket (see [`crate::Runner::launched`]). There is no
    /// socket to connect to: [`FakeRuntime::socket`] is empty.
    pub fn launch(
        opts: FakeOptions,
    ) -> std::io::Result<(FakeRuntime, std::os::unix::net::UnixStream)> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        ours.set_nonblocking(true)?;
        let stream = tokio::net::UnixStream::from_std(ours)?;
        let (tx, rx) = mpsc::channel(16);
        let sessions = Arc::new(Mutex::new(Vec::new()));
        adopt(stream, &Arc::new(opts), &sessions, &tx);
        Ok((
            FakeRuntime {
                path: PathBuf::new(),
                plugins: rx,
                stop: CancellationToken::new(),
                sessions,
            },
            theirs,
        ))
    }

    pub fn socket(&self) -> &Path {
        &self.path
    }

    /// The next plugin that registered, was configured and synchronized (or the error that
    /// stopped it), or `None` after `timeout`.
    pub async fn next_plugin(&mut self, timeout: Duration) -> Option<Result<PluginHandle, Error>> {
        tokio::time::timeout(timeout, self.plugins.recv())
            .await
            .ok()
            .flatten()
    }

    /// Stops listening, drops every connection and removes the socket: the runtime "exits".
    pub fn stop(self) {
        self.stop.cancel();
        for s in self.sessions.lock().expect("sessions").drain(..) {
            s.close();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Serves the runtime's side of one plugin connection and reports the admitted plugin.
fn adopt(
    stream: tokio::net::UnixStream,
    opts: &Arc<FakeOptions>,
    sessions: &Arc<Mutex<Vec<Session>>>,
    tx: &mpsc::Sender<Result<PluginHandle, Error>>,
) {
    let (reg_tx, reg_rx) = oneshot::channel();
    let svc = Arc::new(RuntimeService {
        register: Mutex::new(Some(reg_tx)),
        answer: opts.answer_register,
    });
    let session = Session::start(stream, RUNTIME_CONN, PLUGIN_CONN, svc, opts.max_frame);
    sessions.lock().expect("sessions").push(session.clone());
    let tx = tx.clone();
    let opts = opts.clone();
    tokio::spawn(async move {
        let r = admit(session, reg_rx, &opts).await;
        let _ = tx.send(r).await;
    });
}

struct RuntimeService {
    register: Mutex<Option<oneshot::Sender<RegisterPluginRequest>>>,
    answer: bool,
}

impl Service for RuntimeService {
    fn call(
        &self,
        service: String,
        method: String,
        payload: Bytes,
        _timeout: Option<Duration>,
    ) -> BoxFuture<Reply> {
        if service != RUNTIME_SERVICE || method != "RegisterPlugin" {
            return Box::pin(async move {
                Err(status(Code::Unimplemented, format!("{service}/{method}")))
            });
        }
        let req = match RegisterPluginRequest::decode(&payload[..]) {
            Ok(r) => r,
            Err(e) => {
                return Box::pin(async move { Err(status(Code::InvalidArgument, e.to_string())) });
            }
        };
        if let Some(tx) = self.register.lock().expect("register").take() {
            let _ = tx.send(req);
        }
        let answer = self.answer;
        Box::pin(async move {
            if !answer {
                std::future::pending::<()>().await;
            }
            Ok(Empty {}.encode_to_vec())
        })
    }
}

async fn admit(
    session: Session,
    reg: oneshot::Receiver<RegisterPluginRequest>,
    opts: &FakeOptions,
) -> Result<PluginHandle, Error> {
    let registration = tokio::time::timeout(Duration::from_secs(10), reg)
        .await
        .map_err(|_| Error::Timeout {
            method: "RegisterPlugin".into(),
            timeout: Duration::from_secs(10),
        })?
        .map_err(|_| Error::Closed)?;
    if !opts.answer_register {
        // containerd would give up on it; keep the session so the plugin sees its own timeout.
        return Err(Error::Options(
            "fake runtime told not to answer RegisterPlugin".into(),
        ));
    }
    let t = opts.request_timeout;
    let cfg = ConfigureRequest {
        config: String::new(),
        runtime_name: opts.runtime_name.clone(),
        runtime_version: opts.runtime_version.clone(),
        registration_timeout: opts.registration_timeout_ms,
        request_timeout: opts.request_timeout_ms,
        nri_version: String::new(),
    };
    let configured: ConfigureResponse = session.call(PLUGIN_SERVICE, "Configure", &cfg, t).await?;
    let chunk = if opts.sync_chunk == 0 {
        usize::MAX
    } else {
        opts.sync_chunk
    };
    let (mut pods, mut ctrs) = (&opts.pods[..], &opts.containers[..]);
    let mut sync_replies = Vec::new();
    let mut more = opts.synchronize;
    while more {
        let (p, pr) = pods.split_at(pods.len().min(chunk));
        let (c, cr) = ctrs.split_at(ctrs.len().min(chunk));
        more = !pr.is_empty() || !cr.is_empty();
        let req = SynchronizeRequest {
            pods: p.to_vec(),
            containers: c.to_vec(),
            more,
        };
        let resp: SynchronizeResponse =
            session.call(PLUGIN_SERVICE, "Synchronize", &req, t).await?;
        sync_replies.push(resp);
        (pods, ctrs) = (pr, cr);
    }
    Ok(PluginHandle {
        session,
        registration,
        events: EventMask::from_wire(configured.events),
        sync_replies,
        timeout: t,
    })
}

/// A plugin connected to the fake runtime.
pub struct PluginHandle {
    session: Session,
    pub registration: RegisterPluginRequest,
    /// Events the plugin subscribed to in Configure.
    pub events: EventMask,
    /// The plugin's answers to each part of Synchronize.
    pub sync_replies: Vec<SynchronizeResponse>,
    timeout: Duration,
}

impl PluginHandle {
    pub async fn create_container(
        &self,
        pod: &PodSandbox,
        ctr: &Container,
    ) -> Result<CreateContainerResponse, Error> {
        let req = ContainerRequest {
            pod: Some(pod.clone()),
            container: Some(ctr.clone()),
        };
        self.session
            .call(PLUGIN_SERVICE, "CreateContainer", &req, self.timeout)
            .await
    }

    pub async fn update_container(
        &self,
        pod: &PodSandbox,
        ctr: &Container,
    ) -> Result<UpdateContainerResponse, Error> {
        let req = ContainerRequest {
            pod: Some(pod.clone()),
            container: Some(ctr.clone()),
        };
        self.session
            .call(PLUGIN_SERVICE, "UpdateContainer", &req, self.timeout)
            .await
    }

    pub async fn stop_container(
        &self,
        pod: &PodSandbox,
        ctr: &Container,
    ) -> Result<StopContainerResponse, Error> {
        let req = ContainerRequest {
            pod: Some(pod.clone()),
            container: Some(ctr.clone()),
        };
        self.session
            .call(PLUGIN_SERVICE, "StopContainer", &req, self.timeout)
            .await
    }

    /// An event as containerd 1.7 and 2.1 send it: `StateChange`.
    pub async fn state_change(
        &self,
        event: Event,
        pod: &PodSandbox,
        ctr: Option<&Container>,
    ) -> Result<(), Error> {
        let req = StateChangeEvent {
            event: event as i32,
            pod: Some(pod.clone()),
            container: ctr.cloned(),
        };
        self.session
            .call::<_, Empty>(PLUGIN_SERVICE, "StateChange", &req, self.timeout)
            .await
            .map(|_| ())
    }

    /// An event as newer NRI sends it: its dedicated RPC.
    pub async fn event_rpc(
        &self,
        event: Event,
        pod: &PodSandbox,
        ctr: Option<&Container>,
    ) -> Result<(), Error> {
        let req = ContainerRequest {
            pod: Some(pod.clone()),
            container: ctr.cloned(),
        };
        self.session
            .call::<_, Empty>(PLUGIN_SERVICE, event.method(), &req, self.timeout)
            .await
            .map(|_| ())
    }

    pub async fn shutdown(&self) -> Result<(), Error> {
        self.session
            .call::<_, Empty>(PLUGIN_SERVICE, "Shutdown", &Empty {}, self.timeout)
            .await
            .map(|_| ())
    }

    /// Any method of any service, with a raw payload and a chosen timeout.
    pub async fn call_raw(
        &self,
        service: &str,
        method: &str,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, Error> {
        self.session
            .call_raw(service, method, payload, timeout)
            .await
    }

    /// The largest frame payload the plugin sent on this connection.
    pub fn largest_frame_from_plugin(&self) -> usize {
        self.session.largest_frame_in()
    }

    pub fn is_closed(&self) -> bool {
        self.session.is_closed()
    }

    /// Waits (bounded) for the plugin to drop the connection.
    pub async fn wait_closed(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.session.closed())
            .await
            .is_ok()
    }

    /// Drops the connection from the runtime side.
    pub fn close(&self) {
        self.session.close();
    }
}
