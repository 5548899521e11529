//! CNI errors: the spec's codes, berth's own codes (100+), and the JSON the runtime reads.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::version::CniVersion;

/// A CNI error code: the spec's well-known codes plus a plugin's own (100 and up).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 1: the config's `cniVersion` is not one the plugin speaks.
    IncompatibleVersion,
    /// 2: a field the plugin does not support.
    UnsupportedField,
    /// 3: the container is unknown or does not exist.
    UnknownContainer,
    /// 4: a `CNI_*` environment variable is missing or invalid.
    InvalidEnvironment,
    /// 5: an I/O error (reading stdin, a file, a socket).
    Io,
    /// 6: the input could not be decoded (malformed JSON).
    Decode,
    /// 7: the network config is invalid.
    InvalidConfig,
    /// 11: try again later (a transient condition, e.g. a busy store).
    TryAgainLater,
    /// 50: STATUS: the plugin cannot serve ADD now.
    NotAvailable,
    /// 51: STATUS: the plugin can serve ADD only with limited connectivity.
    LimitedConnectivity,
    /// 100+: a plugin's own code.
    Plugin(u32),
}

impl ErrorCode {
    pub fn as_u32(self) -> u32 {
        match self {
            ErrorCode::IncompatibleVersion => 1,
            ErrorCode::UnsupportedField => 2,
            ErrorCode::UnknownContainer => 3,
            ErrorCode::InvalidEnvironment => 4,
            ErrorCode::Io => 5,
            ErrorCode::Decode => 6,
            ErrorCode::InvalidConfig => 7,
            ErrorCode::TryAgainLater => 11,
            ErrorCode::NotAvailable => 50,
            ErrorCode::LimitedConnectivity => 51,
            ErrorCode::Plugin(n) => n,
        }
    }

    /// The code for a number read from another plugin's error JSON.
    pub fn from_u32(n: u32) -> ErrorCode {
        match n {
            1 => ErrorCode::IncompatibleVersion,
            2 => ErrorCode::UnsupportedField,
            3 => ErrorCode::UnknownContainer,
            4 => ErrorCode::InvalidEnvironment,
            5 => ErrorCode::Io,
            6 => ErrorCode::Decode,
            7 => ErrorCode::InvalidConfig,
            11 => ErrorCode::TryAgainLater,
            50 => ErrorCode::NotAvailable,
            51 => ErrorCode::LimitedConnectivity,
            n => ErrorCode::Plugin(n),
        }
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.as_u32())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(ErrorCode::from_u32(u32::deserialize(d)?))
    }
}

/// An error as the CNI spec carries it: code, a short message, optional details.
///
/// `msg` says what went wrong, `details` what to do about it or the underlying cause.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniError {
    pub code: ErrorCode,
    pub msg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
}

impl CniError {
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: None,
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = Some(details.into());
        self
    }

    /// Code 7 with a message: the shorthand for config validation.
    pub fn invalid_config(msg: impl Into<String>) -> Self {
        CniError::new(ErrorCode::InvalidConfig, msg)
    }

    /// Code 4 with a message.
    pub fn invalid_env(msg: impl Into<String>) -> Self {
        CniError::new(ErrorCode::InvalidEnvironment, msg)
    }

    /// A Rust error turned into a CNI error, the cause chain in `details`.
    pub fn from_error(code: ErrorCode, err: &(dyn std::error::Error + 'static)) -> Self {
        let mut causes = Vec::new();
        let mut src = err.source();
        while let Some(s) = src {
            causes.push(s.to_string());
            src = s.source();
        }
        let e = CniError::new(code, err.to_string());
        if causes.is_empty() {
            e
        } else {
            e.with_details(causes.join(": "))
        }
    }

    /// The JSON the runtime reads on stdout.
    pub fn to_json(&self, version: CniVersion) -> String {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: CniVersion,
            #[serde(flatten)]
            err: &'a CniError,
        }
        serde_json::to_string(&Wire {
            cni_version: version,
            err: self,
        })
        .expect("an error always serializes")
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (CNI code {})", self.msg, self.code.as_u32())?;
        if let Some(d) = &self.details {
            write!(f, ": {d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_numbers() {
        for n in [1, 2, 3, 4, 5, 6, 7, 11, 50, 51, 100, 120] {
            assert_eq!(ErrorCode::from_u32(n).as_u32(), n);
        }
        assert_eq!(ErrorCode::from_u32(7), ErrorCode::InvalidConfig);
        assert_eq!(ErrorCode::from_u32(120), ErrorCode::Plugin(120));
    }

    #[test]
    fn json_has_version_code_msg_and_details() {
        let e = CniError::invalid_config("bad mode \"x\"").with_details("use bridge or macvlan");
        let v: serde_json::Value = serde_json::from_str(&e.to_json(CniVersion::V1_0_0)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"cniVersion": "1.0.0", "code": 7, "msg": "bad mode \"x\"",
                "details": "use bridge or macvlan"})
        );
        let v: serde_json::Value = serde_json::from_str(
            &CniError::new(ErrorCode::TryAgainLater, "busy").to_json(CniVersion::V1_1_0),
        )
        .unwrap();
        assert!(v.get("details").is_none());
        assert_eq!(v["code"], 11);
    }

    #[test]
    fn from_error_puts_the_cause_chain_in_details() {
        #[derive(Debug, thiserror::Error)]
        #[error("reading config failed")]
        struct Outer(#[source] std::io::Error);
        let e = CniError::from_error(ErrorCode::Io, &Outer(std::io::Error::other("disk on fire")));
        assert_eq!(e.msg, "reading config failed");
        assert_eq!(e.details.as_deref(), Some("disk on fire"));
    }
}
