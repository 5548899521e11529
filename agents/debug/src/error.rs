//! The crate's error type. Display says what failed at this layer and what to do next; the
//! cause is in `source`.

use std::path::PathBuf;

use crate::denylist::Denied;
use crate::fsroot::FsError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(
        "cannot connect to containerd at {path}; is containerd running and the socket path right?"
    )]
    Connect {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("containerd {op} failed")]
    Containerd {
        op: String,
        #[source]
        source: tonic::Status,
    },
    #[error(
        "target container {id} has no running task in containerd namespace {namespace}; check that the pod is running"
    )]
    TargetNotRunning { id: String, namespace: String },
    #[error("target pid {0} is not running; pick a live container")]
    TargetGone(u32),
    #[error(
        "image {image} is in neither containerd namespace {namespace} nor {source_namespace}; import it (ctr -n {namespace} images import)"
    )]
    ImageNotFound {
        image: String,
        namespace: String,
        source_namespace: String,
    },
    #[error("image {image} cannot be used: {reason}")]
    BadImage { image: String, reason: String },
    #[error("{0}")]
    TargetNotFound(String),
    #[error("{0}")]
    AmbiguousTarget(String),
    #[error("no debug session {0}; list the sessions to see the live ones")]
    NoSession(String),
    #[error("debug session {0} already has an attached client; detach it first")]
    AlreadyAttached(String),
    #[error("debug session {0} has ended")]
    SessionEnded(String),
    #[error("this node already runs {0} debug sessions, its limit; end one first")]
    TooManySessions(usize),
    #[error("an empty command cannot be run; give a program and its arguments")]
    EmptyCommand,
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error(transparent)]
    File(#[from] FsError),
    #[error("setting up the session's stdio in {path}")]
    Stdio {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("watching target pid {pid}")]
    Watch {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("cleanup of {what} failed in {} steps: {}; run reconcile to retry", .failures.len(), .failures.join("; "))]
    Cleanup { what: String, failures: Vec<String> },
}

impl Error {
    pub(crate) fn containerd(op: impl Into<String>) -> impl FnOnce(tonic::Status) -> Error {
        let op = op.into();
        move |source| Error::Containerd { op, source }
    }

    /// The gRPC status code the agent's `Debug` service should answer with.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Error::Connect { .. } => Code::Unavailable,
            Error::Config(_) => Code::FailedPrecondition,
            Error::Containerd { source, .. } => source.code(),
            Error::TargetNotRunning { .. }
            | Error::TargetGone(_)
            | Error::ImageNotFound { .. }
            | Error::NoSession(_)
            | Error::TargetNotFound(_) => Code::NotFound,
            Error::BadImage { .. } => Code::FailedPrecondition,
            Error::AlreadyAttached(_) | Error::SessionEnded(_) => Code::FailedPrecondition,
            Error::EmptyCommand | Error::AmbiguousTarget(_) => Code::InvalidArgument,
            Error::TooManySessions(_) => Code::ResourceExhausted,
            Error::Denied(_) => Code::PermissionDenied,
            Error::File(e) => match e {
                FsError::NotAbsolute(_) | FsError::NotRegular { .. } => Code::InvalidArgument,
                FsError::NotFound { .. } => Code::NotFound,
                FsError::TooLarge { .. } => Code::ResourceExhausted,
                FsError::Escape { .. } => Code::PermissionDenied,
                FsError::Unsupported => Code::Unimplemented,
                FsError::Root(..) | FsError::Io { .. } => Code::Internal,
            },
            Error::Stdio { .. } | Error::Watch { .. } | Error::Cleanup { .. } => Code::Internal,
        }
    }

    /// containerd answered NotFound (for idempotent cleanup).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Containerd { source, .. } if source.code() == tonic::Code::NotFound)
    }
}

/// The one mapping of this crate's errors to what the agent's `Debug` service answers: the
/// code of [`Error::code`], this layer's message.
impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        tonic::Status::new(e.code(), e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_the_grpc_codes_the_api_answers_with() {
        let denied = Error::Denied(Denied {
            rule: "rm-root".into(),
            command: "rm -rf /".into(),
        });
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(denied.to_string().contains("rm-root"));
        assert_eq!(Error::NoSession("x".into()).code(), tonic::Code::NotFound);
        let big = Error::File(FsError::TooLarge {
            path: "/a".into(),
            size: 2,
            limit: 1,
        });
        assert_eq!(big.code(), tonic::Code::ResourceExhausted);
        let escape = Error::File(FsError::Escape { path: "/a".into() });
        assert_eq!(escape.code(), tonic::Code::PermissionDenied);
        let ctrd = Error::Containerd {
            op: "creating task x".into(),
            source: tonic::Status::deadline_exceeded("slow shim"),
        };
        assert_eq!(ctrd.code(), tonic::Code::DeadlineExceeded);
        // Display is this layer only; the cause stays in source().
        assert_eq!(ctrd.to_string(), "containerd creating task x failed");
        assert!(std::error::Error::source(&ctrd).is_some());
        let not_found = Error::Containerd {
            op: "x".into(),
            source: tonic::Status::not_found("gone"),
        };
        assert!(not_found.is_not_found() && !ctrd.is_not_found());
    }
}
