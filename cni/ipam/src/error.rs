//! The IPAM library's errors, each mapped to a CNI error code by [`IpamError::cni_code`].

use std::path::PathBuf;

/// Everything that can go wrong while managing addresses.
///
/// Helpers extending this enum: keep `cni_code` exhaustive and the messages actionable.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// The IPAM config is wrong (CNI code 7).
    #[error("invalid IPAM config: {0}")]
    InvalidConfig(String),
    /// A named pool does not exist (CNI code 7).
    #[error("unknown pool {0:?}: name one of the pools in the network's ipam config")]
    UnknownPool(String),
    /// Every address of the pool is taken or held (berth code 110).
    #[error("pool {pool:?} is exhausted: free addresses or add a range")]
    Exhausted { pool: String },
    /// An explicitly requested address cannot be given (berth code 111).
    #[error("address {address} cannot be assigned: {reason}")]
    AddressUnavailable {
        address: std::net::IpAddr,
        reason: String,
    },
    /// The store is corrupt; it is never reset silently (berth code 112).
    #[error(
        "IPAM store {path} is corrupt ({reason}); repair or move it aside, nothing was changed"
    )]
    CorruptStore { path: PathBuf, reason: String },
    /// The store is busy or unreachable right now (CNI code 11, try again later).
    #[error("IPAM store unavailable, try again: {0}")]
    Unavailable(String),
    /// No configured pool serves this pod on this node (CNI code 7).
    #[error("no pool for {what} on node {node} (rack {rack}): {hint}")]
    NoPool {
        what: String,
        node: String,
        rack: String,
        hint: String,
    },
    /// A `berth.io/*` pod annotation cannot be parsed (berth code 114).
    #[error("pod annotation {key}={value:?} is invalid: {reason}")]
    InvalidAnnotation {
        key: String,
        value: String,
        reason: String,
    },
    /// The store holds a time later than this node's clock allows (berth code 113).
    #[error(
        "clock skew: node {writer} recorded a change at {record} but this node's clock says {now} (more than {max_secs}s apart); fix time sync (NTP) on the node whose clock is off"
    )]
    ClockSkew {
        writer: String,
        record: chrono::DateTime<chrono::Utc>,
        now: chrono::DateTime<chrono::Utc>,
        max_secs: u64,
    },
    /// Local I/O failed (CNI code 5).
    #[error("IPAM store I/O failed on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl IpamError {
    /// The CNI error code for this error (spec codes below 100, berth's own from 110).
    pub fn cni_code(&self) -> u32 {
        match self {
            IpamError::InvalidConfig(_) | IpamError::UnknownPool(_) | IpamError::NoPool { .. } => 7,
            IpamError::Io { .. } => 5,
            IpamError::Unavailable(_) => 11,
            IpamError::Exhausted { .. } => 110,
            IpamError::AddressUnavailable { .. } => 111,
            IpamError::CorruptStore { .. } => 112,
            IpamError::ClockSkew { .. } => 113,
            IpamError::InvalidAnnotation { .. } => 114,
        }
    }
}
