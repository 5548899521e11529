//! Structured audit events. The API layer implements [`AuditSink`] (it knows the caller's
//! certificate and writes the audit log); this crate reports what happened in a session.

use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

use crate::profile::Profile;

/// Who asked, as the API layer authenticated them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Caller {
    /// E.g. the client certificate's subject.
    pub identity: String,
}

impl Caller {
    pub fn new(identity: impl Into<String>) -> Self {
        Caller {
            identity: identity.into(),
        }
    }
}

/// Which way a file went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyDirection {
    In,
    Out,
}

/// One audit record. Every event carries the session id and the caller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AuditEvent {
    SessionStarted {
        session: String,
        caller: Caller,
        /// The target container id (or `pid:<n>` when a pid was given).
        target: String,
        target_pid: u32,
        image: String,
        profile: Profile,
        command: Vec<String>,
    },
    SessionEnded {
        session: String,
        caller: Caller,
        reason: String,
        exit_status: Option<u32>,
    },
    /// A client attached to the session (lines typed from now on are theirs).
    Attached { session: String, caller: Caller },
    /// The attached client went away (the grace period starts).
    Detached { session: String, caller: Caller },
    /// A line typed into the session's TTY (best effort, see `lines`), by the attached caller.
    CommandLine {
        session: String,
        caller: Caller,
        line: String,
        uncertain: bool,
    },
    Exec {
        session: String,
        caller: Caller,
        argv: Vec<String>,
        /// The deny-list rule that refused it, if any.
        denied_by: Option<String>,
        exit_status: Option<u32>,
    },
    FileCopy {
        session: String,
        caller: Caller,
        direction: CopyDirection,
        path: String,
        size: u64,
        sha256: String,
    },
    /// A copy that was refused or failed (hostile symlink, size limit, missing file).
    FileCopyFailed {
        session: String,
        caller: Caller,
        direction: CopyDirection,
        path: String,
        error: String,
    },
}

impl AuditEvent {
    /// The session the event is about, and who caused it.
    pub fn session_and_caller(&self) -> (&str, &Caller) {
        match self {
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
            }
            | AuditEvent::Exec {
                session, caller, ..
            }
            | AuditEvent::FileCopy {
                session, caller, ..
            }
            | AuditEvent::FileCopyFailed {
                session, caller, ..
            } => (session, caller),
        }
    }
}

/// Where audit events go. Called synchronously on the session's task: keep it fast (queue
/// the event, write it elsewhere).
pub trait AuditSink: Send + Sync + 'static {
    fn record(&self, at: SystemTime, event: AuditEvent);
}

/// Discards events (for callers that audit elsewhere).
pub struct NoAudit;

impl AuditSink for NoAudit {
    fn record(&self, _at: SystemTime, _event: AuditEvent) {}
}

/// Keeps events in memory: for tests of this crate and of the API layer.
#[derive(Default)]
pub struct MemoryAudit {
    events: Mutex<Vec<AuditEvent>>,
}

impl MemoryAudit {
    pub fn events(&self) -> Vec<AuditEvent> {
        self.events.lock().expect("audit lock").clone()
    }
}

impl AuditSink for MemoryAudit {
    fn record(&self, _at: SystemTime, event: AuditEvent) {
        self.events.lock().expect("audit lock").push(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_with_a_tag_and_lowercase_fields() {
        let e = AuditEvent::FileCopy {
            session: "s1".into(),
            caller: Caller::new("alice"),
            direction: CopyDirection::Out,
            path: "/etc/hosts".into(),
            size: 3,
            sha256: "ab".into(),
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["event"], "file_copy");
        assert_eq!(v["direction"], "out");
        assert_eq!(v["caller"]["identity"], "alice");
        let audit = MemoryAudit::default();
        audit.record(SystemTime::now(), e.clone());
        assert_eq!(audit.events(), vec![e]);
    }
}
