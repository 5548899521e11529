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

impl From<BackendError> for tonic::Status {
    fn from(e: BackendError) -> Self {
        use tonic::Status;
        let msg = e.to_string();
        match e {
            BackendError::NotFound(_) => Status::not_found(msg),
            BackendError::Conflict(_) => Status::already_exists(msg),
            BackendError::Invalid(_) => Status::invalid_argument(msg),
            BackendError::Exhausted(_) => Status::resource_exhausted(msg),
            BackendError::Precondition(_) => Status::failed_precondition(msg),
            BackendError::Unavailable(_) => Status::unavailable(msg),
            BackendError::Internal(_) => Status::internal(msg),
        }
    }
}
