//! Wiring: one call from the agent starts listeners, the guard layer and the services.
//!
//! ```no_run
//! # async fn f(cfg: berth_api::ApiConfig) -> Result<(), berth_api::ApiError> {
//! berth_api::Server::builder(cfg)
//!     .logs(berth_api::DirLayout::new("/var/log/berth/pods"))
//!     .serve(async { let _ = tokio::signal::ctrl_c().await; })
//!     .await
//! # }
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::v1;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::audit::AuditLog;
use crate::backend::debug::{DebugBackend, DebugEvents};
use crate::backend::{FakeTimeBackend, IpamBackend, LogsBackend};
use crate::config::ApiConfig;
use crate::error::ApiError;
use crate::grants::Grants;
use crate::layer::{Guard, GuardLayer};
use crate::metrics::Metrics;
use crate::policy::PolicyStore;
use crate::services::{
    audit::AuditService, debug::DebugService, faketime::FakeTimeService, grants::GrantsService,
    ipam::IpamService, logs::LogsService, node::NodeService,
};
use crate::transport::{self, AcceptOptions};

/// How long shutdown waits for running calls.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

pub struct Server;

impl Server {
    pub fn builder(config: ApiConfig) -> ServerBuilder {
        ServerBuilder {
            config,
            logs: None,
            ipam: None,
            faketime: None,
            debug: None,
            metrics: Metrics::new(),
        }
    }
}

/// Collects the backends; `serve` or `start` runs the server.
pub struct ServerBuilder {
    config: ApiConfig,
    logs: Option<Arc<dyn LogsBackend>>,
    ipam: Option<Arc<dyn IpamBackend>>,
    faketime: Option<Arc<dyn FakeTimeBackend>>,
    debug: Option<Arc<dyn DebugBackend>>,
    metrics: Metrics,
}

/// A running server (from [`ServerBuilder::start`]).
pub struct RunningServer {
    /// Bound TCP address (useful with port 0).
    pub tcp_addr: Option<SocketAddr>,
    pub unix_socket: Option<PathBuf>,
    pub metrics_addr: Option<SocketAddr>,
    pub policy: PolicyStore,
    /// TLS material in force (when `listen` is set).
    pub tls: Option<Arc<transport::TlsStore>>,
    pub audit: AuditLog,
    pub metrics: Metrics,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), ApiError>>,
}

impl RunningServer {
    /// Serves until `shutdown` resolves (then stops as [`RunningServer::shutdown`] does), or
    /// returns early with the error if the server itself fails.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>) -> Result<(), ApiError> {
        tokio::select! {
            _ = shutdown => self.shutdown().await,
            res = &mut self.task => {
                if let Some(p) = &self.unix_socket {
                    let _ = std::fs::remove_file(p);
                }
                match res {
                    Ok(r) => r,
                    Err(e) => Err(ApiError::Task(e.to_string())),
                }
            }
        }
    }

    /// Stops accepting, lets in-flight calls finish (up to 5 s), removes the socket.
    /// Streams still open after the grace period (e.g. `logs tail -f`) are cut.
    pub async fn shutdown(self) -> Result<(), ApiError> {
        let _ = self.shutdown.send(true);
        let mut task = self.task;
        let res = match tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(ApiError::Task(e.to_string())),
            Err(_) => {
                tracing::warn!("api calls still running after {SHUTDOWN_GRACE:?}; cutting them");
                task.abort();
                Ok(())
            }
        };
        if let Some(p) = &self.unix_socket {
            let _ = std::fs::remove_file(p);
        }
        res
    }
}

impl ServerBuilder {
    /// Serve `berth.v1.Logs` from this backend (without one, Logs answers UNIMPLEMENTED).
    pub fn logs(mut self, backend: impl LogsBackend) -> Self {
        self.logs = Some(Arc::new(backend));
        self
    }

    /// Serve `berth.v1.Ipam` from this backend (without one, Ipam answers UNIMPLEMENTED).
    pub fn ipam(mut self, backend: impl IpamBackend) -> Self {
        self.ipam = Some(Arc::new(backend));
        self
    }

    /// Serve `berth.v1.FakeTime` from this backend (without one, FakeTime answers
    /// UNIMPLEMENTED).
    pub fn faketime(mut self, backend: impl FakeTimeBackend) -> Self {
        self.faketime = Some(Arc::new(backend));
        self
    }

    /// Serve `berth.v1.Debug` from this backend (without one, Debug answers UNIMPLEMENTED).
    pub fn debug(mut self, backend: impl DebugBackend) -> Self {
        self.debug = Some(Arc::new(backend));
        self
    }

    /// Use this metrics registry (so the agent can add its own counters to it).
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Starts everything and runs until `shutdown` resolves.
    /// Returns early with the error if the server itself fails.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), ApiError> {
        self.start().await?.run_until(shutdown).await
    }

    /// Validates the config, loads policy, opens the audit log, binds listeners and starts
    /// serving in the background.
    pub async fn start(self) -> Result<RunningServer, ApiError> {
        let cfg = self.config;
        cfg.validate()?;
        let policy = PolicyStore::load(&cfg.policy)?;
        policy.watch()?;
        let audit = AuditLog::open(cfg.audit.clone())?;
        let grants = Grants::new(cfg.max_grant_duration);
        let metrics = self.metrics;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (conn_tx, conn_rx) = mpsc::channel(64);

        let mut tcp_addr = None;
        let mut tls_store = None;
        if let Some(addr) = cfg.listen {
            let tls_cfg = cfg.tls.as_ref().expect("validated: listen requires tls");
            let tls = transport::TlsStore::load(tls_cfg)?;
            tls.watch()?;
            tls_store = Some(tls.clone());
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ApiError::Listen {
                    addr: addr.to_string(),
                    source,
                })?;
            tcp_addr = listener.local_addr().ok();
            transport::spawn_tls_acceptor(
                listener,
                tls,
                AcceptOptions {
                    handshake_timeout: Duration::from_millis(cfg.handshake_timeout_ms),
                    max_handshakes: cfg.max_concurrent_handshakes,
                },
                metrics.clone(),
                conn_tx.clone(),
                shutdown_rx.clone(),
            );
        }
        if let Some(path) = &cfg.unix_socket {
            let listener = transport::bind_unix(path, cfg.unix_socket_mode)?;
            transport::spawn_unix_acceptor(listener, conn_tx.clone(), shutdown_rx.clone());
        }
        drop(conn_tx);

        let mut metrics_addr = None;
        if let Some(addr) = cfg.metrics.listen {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ApiError::Listen {
                    addr: addr.to_string(),
                    source,
                })?;
            metrics_addr = l.local_addr().ok();
            tokio::spawn(metrics.clone().serve(l, shutdown_rx.clone()));
        }

        let mut services = vec![
            "berth.v1.Node".to_string(),
            "berth.v1.Audit".to_string(),
            "berth.v1.Grants".to_string(),
        ];
        let mut features = vec!["audit.query".to_string(), "audit.hashchain".to_string()];
        if cfg.tls.as_ref().is_some_and(|t| t.crl.is_some()) {
            features.push("tls.crl".into());
        }
        if self.logs.is_some() {
            services.push("berth.v1.Logs".into());
            features.extend(["logs.follow".into(), "logs.download".into()]);
        }
        if self.ipam.is_some() {
            services.push("berth.v1.Ipam".into());
        }
        if self.faketime.is_some() {
            services.push("berth.v1.FakeTime".into());
            features.push("faketime.runtime-offset".into());
        }
        if self.debug.is_some() {
            services.push("berth.v1.Debug".into());
            features.extend(["debug.tty".into(), "debug.copy".into(), "grants".into()]);
        }
        if cfg.metrics.listen.is_some() {
            features.push("metrics".into());
        }
        let node = NodeService {
            node: cfg.node.clone(),
            started_unix_ms: chrono::Utc::now().timestamp_millis(),
            policy: policy.clone(),
            audit: audit.clone(),
            tls: tls_store.clone(),
            services,
            features,
        };
        let guard = Arc::new(Guard {
            policy: policy.clone(),
            grants: grants.clone(),
            audit: audit.clone(),
            metrics: metrics.clone(),
        });

        let mut router = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .layer(GuardLayer::new(guard))
            .add_service(v1::node_server::NodeServer::new(node))
            .add_service(v1::audit_server::AuditServer::new(AuditService {
                log: audit.clone(),
            }))
            .add_service(v1::grants_server::GrantsServer::new(GrantsService {
                grants: grants.clone(),
                policy: policy.clone(),
            }));
        if let Some(logs) = self.logs {
            router = router.add_service(v1::logs_server::LogsServer::new(LogsService {
                backend: logs,
                limits: cfg.logs.clone(),
                shutdown: shutdown_rx.clone(),
            }));
        }
        if let Some(ipam) = self.ipam {
            router = router.add_service(v1::ipam_server::IpamServer::new(IpamService {
                backend: ipam,
            }));
        }
        if let Some(faketime) = self.faketime {
            router =
                router.add_service(v1::fake_time_server::FakeTimeServer::new(FakeTimeService {
                    backend: faketime,
                }));
        }
        if let Some(debug) = self.debug {
            let sessions = crate::backend::debug::Sessions::default();
            debug.start(DebugEvents::new(audit.clone(), sessions.clone()));
            router = router.add_service(v1::debug_server::DebugServer::new(DebugService {
                backend: debug,
                sessions,
                policy: policy.clone(),
            }));
        }
        let mut stop = shutdown_rx.clone();
        let task = tokio::spawn(async move {
            router
                .serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), async move {
                    let _ = stop.changed().await;
                })
                .await
                .map_err(ApiError::Serve)
        });
        tracing::info!(tcp = ?tcp_addr, unix = ?cfg.unix_socket, metrics = ?metrics_addr, "berth api serving");
        Ok(RunningServer {
            tcp_addr,
            unix_socket: cfg.unix_socket.clone(),
            metrics_addr,
            policy,
            tls: tls_store,
            audit,
            metrics,
            shutdown: shutdown_tx,
            task,
        })
    }
}
