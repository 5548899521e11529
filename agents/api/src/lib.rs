//! berth's agent API server: mTLS, per-caller authorization, audit.
//!
//! - [`transport`]: TCP + mutual TLS (rustls) and a local unix socket (SO_PEERCRED);
//! - [`identity`]: callers from client certificates (CN, OU, SANs) or unix uids;
//! - [`policy`]: roles → methods and namespaces, default deny, hot reload;
//! - [`audit`]: one fsynced JSON line per call, rotation, queries;
//! - [`layer`]: the tower layer that applies policy and audit to every RPC;
//! - [`services`]: `berth.v1.{Node,Logs,Ipam,Audit,FakeTime,Debug,Grants}` over the
//!   [`backend`] seams (each feature is the agent's: this crate depends on none of them);
//! - [`metrics`]: Prometheus text on a separate port;
//!
//! The agent starts it with [`Server::builder`].

#![forbid(unsafe_code)]

pub mod audit;
pub mod backend;
pub mod config;
pub mod error;
pub mod grants;
pub mod identity;
pub mod layer;
pub mod logs_fs;
pub mod methods;
pub mod metrics;
pub mod pod;
pub mod policy;
pub mod server;
pub mod services;
pub mod transport;
pub mod watch;

pub use audit::{AuditConfig, AuditLog, AuditRecord};
pub use backend::debug::{
    CopiedIn, CopiedOut, DebugAttachment, DebugBackend, DebugEvent, DebugEvents, DebugInput,
    DebugOutput, DebugSession, DebugStart, DebugTarget, ExecOutput,
};
pub use backend::{
    DirLayout, FakeTimeBackend, FakeTimeTarget, IpamBackend, LogsBackend, PodLogDir,
};
pub use config::{ApiConfig, LogsLimits, MetricsConfig, NodeIdentity, TlsConfig};
pub use error::{ApiError, BackendError, ServiceError};
pub use identity::Caller;
pub use metrics::{Counter, Gauge, Metrics};
pub use server::{RunningServer, Server, ServerBuilder};
