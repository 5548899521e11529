//! The handler trait a plugin implements, and the served `Plugin` service that calls it.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tokio::sync::watch;

use crate::api::*;
use crate::error::HandlerError;
use crate::session::{BoxFuture, Reply, Service, status};
use crate::wire::Code;

pub type HandlerResult<T> = Result<T, HandlerError>;

/// What a plugin does on each runtime request. Every method has a default that does nothing,
/// so a plugin implements only the events it subscribed to in [`Plugin::events`].
///
/// Handlers must answer within the runtime's request timeout (2 s by default): a late answer
/// is ignored by the runtime, which then goes on without the plugin (fail-open).
pub trait Plugin: Send + Sync + 'static {
    /// Events to subscribe to. Only these reach [`Plugin::event`]; `CreateContainer`,
    /// `UpdateContainer` and `StopContainer` must be listed for their handlers to be called.
    fn events(&self) -> EventMask;

    /// The runtime introduced itself (sent on every (re)connection).
    fn configure(&self, _req: ConfigureRequest) -> impl Future<Output = HandlerResult<()>> + Send {
        async { Ok(()) }
    }

    /// The runtime's current pods and containers (every part already joined).
    fn synchronize(
        &self,
        _pods: Vec<PodSandbox>,
        _containers: Vec<Container>,
    ) -> impl Future<Output = HandlerResult<Vec<ContainerUpdate>>> + Send {
        async { Ok(Vec::new()) }
    }

    fn create_container(
        &self,
        _pod: PodSandbox,
        _container: Container,
    ) -> impl Future<Output = HandlerResult<CreateContainerResponse>> + Send {
        async { Ok(CreateContainerResponse::default()) }
    }

    fn update_container(
        &self,
        _pod: PodSandbox,
        _container: Container,
    ) -> impl Future<Output = HandlerResult<UpdateContainerResponse>> + Send {
        async { Ok(UpdateContainerResponse::default()) }
    }

    fn stop_container(
        &self,
        _pod: PodSandbox,
        _container: Container,
    ) -> impl Future<Output = HandlerResult<StopContainerResponse>> + Send {
        async { Ok(StopContainerResponse::default()) }
    }

    /// Every other lifecycle event, whether the runtime sent it as `StateChange` (containerd
    /// 1.7 and 2.1) or as its dedicated RPC (newer NRI). `container` is `None` for pod events.
    fn event(
        &self,
        _event: Event,
        _pod: PodSandbox,
        _container: Option<Container>,
    ) -> impl Future<Output = HandlerResult<()>> + Send {
        async { Ok(()) }
    }

    /// The runtime is shutting down; the connection closes next.
    fn shutdown(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Progress of one connection, reported to the runner.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Progress {
    pub configured: Option<(String, String)>,
    pub synchronized: bool,
    pub request_timeout: Option<Duration>,
}

pub(crate) struct PluginService<P> {
    plugin: Arc<P>,
    events: EventMask,
    sync_parts: Arc<Mutex<Option<SynchronizeRequest>>>,
    progress: watch::Sender<Progress>,
}

impl<P: Plugin> PluginService<P> {
    pub(crate) fn new(plugin: Arc<P>, progress: watch::Sender<Progress>) -> Self {
        let events = plugin.events();
        PluginService {
            plugin,
            events,
            sync_parts: Arc::new(Mutex::new(None)),
            progress,
        }
    }
}

fn decode<M: Message + Default>(method: &str, payload: &[u8]) -> Result<M, crate::session::Reply> {
    M::decode(payload).map_err(|e| {
        Err(status(
            Code::InvalidArgument,
            format!("cannot decode {method} request: {e}"),
        ))
    })
}

fn reply<M: Message>(r: HandlerResult<M>) -> Reply {
    r.map(|m| m.encode_to_vec())
        .map_err(|e| status(Code::Unknown, e.message))
}

impl<P: Plugin> Service for PluginService<P> {
    fn call(
        &self,
        service: String,
        method: String,
        payload: Bytes,
        timeout: Option<Duration>,
    ) -> BoxFuture<Reply> {
        let plugin = self.plugin.clone();
        let events = self.events;
        let sync_parts = self.sync_parts.clone();
        let progress = self.progress.clone();
        Box::pin(async move {
            if service != PLUGIN_SERVICE {
                return Err(status(
                    Code::Unimplemented,
                    format!("service {service} is not served by this plugin"),
                ));
            }
            let started = std::time::Instant::now();
            let r = dispatch(&*plugin, events, &sync_parts, &progress, &method, &payload).await;
            let took = started.elapsed();
            tracing::debug!(
                method,
                took_us = took.as_micros() as u64,
                bytes = payload.len(),
                ok = r.is_ok(),
                "nri request handled"
            );
            if let Some(t) = timeout
                && took > t
            {
                tracing::warn!(
                    method,
                    ?took,
                    timeout = ?t,
                    "nri handler answered after the runtime's timeout; the runtime went on without it"
                );
            }
            r
        })
    }
}

async fn dispatch<P: Plugin>(
    plugin: &P,
    events: EventMask,
    sync_parts: &Mutex<Option<SynchronizeRequest>>,
    progress: &watch::Sender<Progress>,
    method: &str,
    payload: &[u8],
) -> Reply {
    macro_rules! req {
        ($t:ty) => {
            match decode::<$t>(method, payload) {
                Ok(r) => r,
                Err(e) => return e,
            }
        };
    }
    match method {
        "Configure" => {
            let req = req!(ConfigureRequest);
            let timeout = (req.request_timeout > 0)
                .then(|| Duration::from_millis(req.request_timeout as u64));
            let who = (req.runtime_name.clone(), req.runtime_version.clone());
            let r = plugin.configure(req).await;
            if r.is_ok() {
                progress.send_modify(|p| {
                    p.configured = Some(who);
                    p.request_timeout = timeout;
                });
            }
            reply(r.map(|()| ConfigureResponse {
                events: events.wire(),
            }))
        }
        "Synchronize" => {
            let req = req!(SynchronizeRequest);
            if req.more {
                let mut parts = sync_parts.lock().expect("sync lock");
                let acc = parts.get_or_insert_with(SynchronizeRequest::default);
                acc.pods.extend(req.pods);
                acc.containers.extend(req.containers);
                return reply(Ok(SynchronizeResponse {
                    update: Vec::new(),
                    more: true,
                }));
            }
            let mut all = sync_parts
                .lock()
                .expect("sync lock")
                .take()
                .unwrap_or_default();
            all.pods.extend(req.pods);
            all.containers.extend(req.containers);
            let r = plugin.synchronize(all.pods, all.containers).await;
            if r.is_ok() {
                progress.send_modify(|p| p.synchronized = true);
            }
            reply(r.map(|update| SynchronizeResponse {
                update,
                more: false,
            }))
        }
        "Shutdown" => {
            plugin.shutdown().await;
            reply(Ok(Empty {}))
        }
        "CreateContainer" => {
            let req = req!(ContainerRequest);
            if !events.contains(Event::CreateContainer) {
                return reply(Ok(CreateContainerResponse::default()));
            }
            reply(
                plugin
                    .create_container(
                        req.pod.unwrap_or_default(),
                        req.container.unwrap_or_default(),
                    )
                    .await,
            )
        }
        "UpdateContainer" => {
            let req = req!(ContainerRequest);
            if !events.contains(Event::UpdateContainer) {
                return reply(Ok(UpdateContainerResponse::default()));
            }
            reply(
                plugin
                    .update_container(
                        req.pod.unwrap_or_default(),
                        req.container.unwrap_or_default(),
                    )
                    .await,
            )
        }
        "StopContainer" => {
            let req = req!(ContainerRequest);
            if !events.contains(Event::StopContainer) {
                return reply(Ok(StopContainerResponse::default()));
            }
            reply(
                plugin
                    .stop_container(
                        req.pod.unwrap_or_default(),
                        req.container.unwrap_or_default(),
                    )
                    .await,
            )
        }
        "StateChange" => {
            let req = req!(StateChangeEvent);
            let Some(event) = Event::from_wire(req.event) else {
                // An event newer than this crate: acknowledge it, there is nothing to do.
                tracing::debug!(event = req.event, "ignoring an unknown nri event");
                return reply(Ok(Empty {}));
            };
            if events.contains(event) {
                let ctr = if event.is_pod_event() {
                    None
                } else {
                    req.container
                };
                if let Err(e) = plugin.event(event, req.pod.unwrap_or_default(), ctr).await {
                    return reply::<Empty>(Err(e));
                }
            }
            reply(Ok(Empty {}))
        }
        "ValidateContainerAdjustment" => {
            // berth-nri plugins are not validators: never reject another plugin's adjustment.
            reply(Ok(ValidateContainerAdjustmentResponse {
                reject: false,
                reason: String::new(),
            }))
        }
        m => {
            let Some(event) = Event::ALL.into_iter().find(|e| e.method() == m) else {
                return Err(status(
                    Code::Unimplemented,
                    format!("method {m} is not implemented by this plugin"),
                ));
            };
            // A dedicated event RPC: the same request shapes as StateChange's pod/container.
            let (pod, ctr) = if event.is_pod_event() {
                (req!(PodSandboxRequest).pod, None)
            } else {
                let r = req!(ContainerRequest);
                (r.pod, r.container)
            };
            if events.contains(event)
                && let Err(e) = plugin.event(event, pod.unwrap_or_default(), ctr).await
            {
                return reply::<Empty>(Err(e));
            }
            // Every dedicated event response is an empty message.
            reply(Ok(Empty {}))
        }
    }
}
