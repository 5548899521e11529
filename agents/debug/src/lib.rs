//! Debug containers next to a target container, through containerd.
//!
//! A [`DebugManager`] starts a *tools container* in its own containerd namespace
//! (`berth-debug`, which kubelet/CRI never list) from a tools image, joined to the target's
//! pid, network, ipc and uts namespaces by path (`/proc/<pid>/ns/*`). Inside it the target's
//! processes are visible (`ps`), its network is the pod's (`ip addr`), and its root
//! filesystem is `/proc/1/root`. Sessions are interactive (TTY, resize, signals) or one-shot
//! execs; files are copied with paths resolved inside the target's root. Everything is
//! reported to an [`AuditSink`], and a session's container, task, snapshot and FIFOs are
//! removed when it ends, when its client stays away longer than the grace period, when the
//! target dies, or by [`DebugManager::reconcile`] at agent start.
//!
//! See `README.md` for the API and how it maps onto the agent's `Debug` gRPC service.

pub mod audit;
pub mod config;
mod ctrd;
pub mod denylist;
pub mod error;
pub mod fsroot;
pub mod lines;
mod manager;
pub mod profile;
mod runtime;
pub mod spec;
mod stdio;

pub use audit::{AuditEvent, AuditSink, Caller, CopyDirection, MemoryAudit, NoAudit};
pub use config::{ConfigError, DebugConfig};
pub use denylist::{Denied, DenyList, DenyRule};
pub use error::{Error, Result};
pub use fsroot::{FsError, Written};
pub use lines::{CommandLine, LineAssembler};
pub use manager::{
    Attachment, CopiedFile, DebugManager, EndReason, ExecOutput, ExecRequest, ExecResult,
    ExecStream, Input, LABEL_CALLER, LABEL_PROFILE, LABEL_SESSION, LABEL_TARGET, Output,
    ReconcileReport, SessionEnd, SessionInfo, StartRequest, Target,
};
pub use profile::{Profile, Security, UserIds};
