//! The crate's error type and its single mapping to gRPC statuses.

use std::path::PathBuf;

/// Errors starting or configuring the API server.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid api config: {0}")]
    Config(String),
    #[error("cannot read {path}: check the path and its permissions")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid TLS material in {what}: regenerate it with `berthctl certs init`")]
    Tls {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot listen on {addr}: is another agent running?")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    #[error("grpc server failed")]
    Serve(#[source] tonic::transport::Error),
    #[error("api server task ended abnormally: {0}")]
    Task(String),
}

/// Errors a backend (logs, IPAM) reports to the services.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("{0}")]
    Exhausted(String),
    #[error("{0}")]
    Precondition(String),
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    #[error("backend failed: {0}")]
    Internal(String),
}

/// Why a service call failed once its request was accepted (a malformed request is
/// answered by the service itself with INVALID_ARGUMENT saying what to fix). The one place
/// where the API's failures become gRPC statuses; the messages are the errors' own.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Path(#[from] crate::logs_fs::PathError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    /// A blocking task of the service ended abnormally.
    #[error("{what} task failed: {source}")]
    Task {
        what: &'static str,
        source: tokio::task::JoinError,
    },
    /// The same, for a task the message does not name.
    #[error(transparent)]
    Join(#[from] tokio::task::JoinError),
    #[error("reading log file: {0}")]
    ReadLog(std::io::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl From<ServiceError> for tonic::Status {
    fn from(e: ServiceError) -> Self {
        use crate::logs_fs::PathError;
        use tonic::Status;
        let msg = e.to_string();
        match e {
            ServiceError::Backend(b) => match b {
                BackendError::NotFound(_) => Status::not_found(msg),
                BackendError::Conflict(_) => Status::already_exists(msg),
                BackendError::Invalid(_) => Status::invalid_argument(msg),
                BackendError::Exhausted(_) => Status::resource_exhausted(msg),
                BackendError::Precondition(_) => Status::failed_precondition(msg),
                BackendError::Unavailable(_) => Status::unavailable(msg),
                BackendError::Internal(_) => Status::internal(msg),
            },
            ServiceError::Path(p) => match p {
                PathError::Invalid { .. } => Status::invalid_argument(msg),
                PathError::Escape(_) => Status::permission_denied(msg),
                PathError::NotFound(_) => Status::not_found(msg),
                PathError::NotRegular(_) => Status::failed_precondition(msg),
                // The cause is part of what the client sees: it is about its own file.
                PathError::Io { source, .. } => Status::internal(format!("{msg}: {source}")),
            },
            ServiceError::Audit(_)
            | ServiceError::Task { .. }
            | ServiceError::Join(_)
            | ServiceError::ReadLog(_)
            | ServiceError::Io(_) => Status::internal(msg),
        }
    }
}

/// Why the guard refused a call it had authorized: the audit record could not be written.
/// berth fails closed (no unaudited call runs), and the caller may retry: UNAVAILABLE.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    #[error("audit write task failed: {0}")]
    AuditTask(#[from] tokio::task::JoinError),
}

impl From<GuardError> for tonic::Status {
    fn from(e: GuardError) -> Self {
        tonic::Status::unavailable(e.to_string())
    }
}

/// For `?` in the services: the mapping is [`ServiceError`]'s.
impl From<BackendError> for tonic::Status {
    fn from(e: BackendError) -> Self {
        ServiceError::from(e).into()
    }
}

/// For `?` in the services: the mapping is [`ServiceError`]'s.
impl From<crate::logs_fs::PathError> for tonic::Status {
    fn from(e: crate::logs_fs::PathError) -> Self {
        ServiceError::from(e).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs_fs::PathError;
    use tonic::{Code, Status};

    #[test]
    fn service_errors_keep_their_messages_and_get_their_codes() {
        let st = Status::from(BackendError::NotFound("address 10.0.0.1".into()));
        assert_eq!(
            (st.code(), st.message()),
            (Code::NotFound, "address 10.0.0.1 not found")
        );
        let st = Status::from(PathError::Io {
            path: "app.log".into(),
            source: std::io::Error::other("disk on fire"),
        });
        assert_eq!(
            (st.code(), st.message()),
            (Code::Internal, "i/o error on \"app.log\": disk on fire")
        );
        let st = Status::from(PathError::Escape("../x".into()));
        assert_eq!(st.code(), Code::PermissionDenied);
        let st = Status::from(ServiceError::ReadLog(std::io::Error::other("EIO")));
        assert_eq!(
            (st.code(), st.message()),
            (Code::Internal, "reading log file: EIO")
        );
    }

    #[tokio::test]
    async fn a_dead_task_is_internal_and_named() {
        let join = tokio::spawn(async { panic!("boom") }).await.unwrap_err();
        let st = Status::from(ServiceError::Task {
            what: "worker",
            source: join,
        });
        assert_eq!(st.code(), Code::Internal);
        assert!(st.message().starts_with("worker task failed: "), "{st:?}");
    }

    #[tokio::test]
    async fn an_audit_the_guard_cannot_write_is_unavailable() {
        let join = tokio::spawn(async { panic!("boom") }).await.unwrap_err();
        let st = Status::from(GuardError::from(join));
        assert_eq!(st.code(), Code::Unavailable);
        assert!(
            st.message().starts_with("audit write task failed: "),
            "{st:?}"
        );
    }
}
