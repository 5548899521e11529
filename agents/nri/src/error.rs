use std::path::PathBuf;
use std::time::Duration;

use crate::wire::WireError;

/// Errors of the NRI connection.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot connect to the NRI socket {path}: check that the runtime runs with NRI enabled"
    )]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the NRI connection is closed")]
    Closed,
    #[error("the peer did not answer {method} within {timeout:?}")]
    Timeout { method: String, timeout: Duration },
    #[error("the peer answered {method} with status {code}: {message}")]
    Status {
        method: String,
        code: i32,
        message: String,
    },
    #[error("cannot decode {what} from the peer")]
    Decode {
        what: String,
        #[source]
        source: prost::DecodeError,
    },
    #[error("the peer broke the NRI framing")]
    Wire(#[from] WireError),
    #[error("i/o on the NRI socket failed")]
    Io(#[from] std::io::Error),
    #[error("invalid plugin options: {0}")]
    Options(String),
    #[error(
        "the connection the runtime passed (fd {fd}) {problem}: start the plugin from the runtime's plugin dir, or unset NRI_PLUGIN_SOCKET to use the NRI socket"
    )]
    Inherited {
        fd: i32,
        problem: String,
        #[source]
        source: Option<std::io::Error>,
    },
}

impl Error {
    /// The ttrpc status code when the peer answered with an error status.
    pub fn status_code(&self) -> Option<i32> {
        match self {
            Error::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// What a plugin handler returns to refuse a request; the runtime sees it as an error status
/// (for `CreateContainer`: the container is not created).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct HandlerError {
    pub message: String,
}

impl HandlerError {
    pub fn new(message: impl Into<String>) -> Self {
        HandlerError {
            message: message.into(),
        }
    }
}
