//! CNI spec versions: which ones berth speaks and what each allows.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{CniError, ErrorCode};

/// A CNI spec version a runtime may send (`cniVersion`).
///
/// 0.1.0/0.2.0 (the `ip4`/`ip6` result shape) are not spoken: no runtime still in use sends
/// them, and answering them wrongly is worse than refusing with code 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CniVersion {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl CniVersion {
    /// Every version this crate can parse and render, oldest first.
    pub const ALL: [CniVersion; 5] = [
        CniVersion::V0_3_0,
        CniVersion::V0_3_1,
        CniVersion::V0_4_0,
        CniVersion::V1_0_0,
        CniVersion::V1_1_0,
    ];
    /// The newest version: what errors and `VERSION` answer in when nothing else was asked.
    pub const LATEST: CniVersion = CniVersion::V1_1_0;

    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_3_0 => "0.3.0",
            CniVersion::V0_3_1 => "0.3.1",
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
            CniVersion::V1_1_0 => "1.1.0",
        }
    }

    /// CHECK exists from 0.4.0 on.
    pub fn supports_check(self) -> bool {
        self >= CniVersion::V0_4_0
    }

    /// STATUS and GC exist from 1.1.0 on.
    pub fn supports_status_gc(self) -> bool {
        self >= CniVersion::V1_1_0
    }

    /// Results before 1.0.0 carry `"version": "4"|"6"` on every IP.
    pub fn ip_has_version_field(self) -> bool {
        self < CniVersion::V1_0_0
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CniVersion {
    type Err = CniError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CniVersion::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                CniError::new(
                    ErrorCode::IncompatibleVersion,
                    format!("unsupported cniVersion {s:?}"),
                )
                .with_details(format!(
                    "set cniVersion to one of {}",
                    CniVersion::ALL.map(|v| v.as_str()).join(", ")
                ))
            })
    }
}

impl Serialize for CniVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for CniVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|e: CniError| serde::de::Error::custom(e.msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_known_version_and_round_trips() {
        for v in CniVersion::ALL {
            assert_eq!(v.as_str().parse::<CniVersion>().unwrap(), v);
        }
    }

    #[test]
    fn unknown_version_is_code_1_and_lists_the_known_ones() {
        for bad in ["0.2.0", "1.2.0", "", "1.1", "v1.1.0"] {
            let e = bad.parse::<CniVersion>().unwrap_err();
            assert_eq!(e.code, ErrorCode::IncompatibleVersion, "{bad}");
            assert!(e.details.as_deref().unwrap().contains("1.1.0"));
        }
    }

    #[test]
    fn verb_support_follows_the_spec() {
        assert!(!CniVersion::V0_3_1.supports_check());
        assert!(CniVersion::V0_4_0.supports_check());
        assert!(!CniVersion::V1_0_0.supports_status_gc());
        assert!(CniVersion::V1_1_0.supports_status_gc());
        assert!(CniVersion::V0_4_0.ip_has_version_field());
        assert!(!CniVersion::V1_0_0.ip_has_version_field());
    }
}
