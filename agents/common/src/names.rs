//! Names that arrive from outside (configs, `CNI_ARGS`, API requests) and end up in paths,
//! keys and kernel calls, as types that can only hold a valid value: a name is checked once,
//! where it enters, and code that holds one never checks it again.
//!
//! [`validated_name!`](crate::validated_name) makes such a type from a check function; this
//! module defines [`K8sName`] and [`NetworkName`]; the CNI spec crate defines interface
//! names with it.

use std::fmt;

/// Why a name was refused: the value and the rule, ready for a message
/// (`namespace "A" is not a valid Kubernetes name: …`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidName(pub String);

impl fmt::Display for InvalidName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidName {}

/// Defines a string newtype that only holds values `$check` accepts.
///
/// `$check: fn(&str) -> Result<(), String>` returns the reason a value is refused. The type
/// gets `TryFrom<String>`/`TryFrom<&str>`/`FromStr` (the only ways in), serde through
/// `try_from` (a bad value fails deserialization with the check's reason), `Deref<Target =
/// str>`, `Display`, and comparisons with `str`. The calling crate needs `serde` as a
/// dependency.
#[macro_export]
macro_rules! validated_name {
    ($(#[$meta:meta])* $vis:vis struct $name:ident, $check:path) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        $vis struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = $crate::names::InvalidName;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                $check(&s).map_err($crate::names::InvalidName)?;
                Ok($name(s))
            }
        }

        impl TryFrom<&str> for $name {
            type Error = $crate::names::InvalidName;
            fn try_from(s: &str) -> Result<Self, Self::Error> {
                Self::try_from(s.to_string())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::names::InvalidName;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::try_from(s)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<std::ffi::OsStr> for $name {
            fn as_ref(&self) -> &std::ffi::OsStr {
                self.0.as_ref()
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        /// Like the string: messages quote a name as `"eth0"`.
        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Debug::fmt(&self.0, f)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<$name> for str {
            fn eq(&self, other: &$name) -> bool {
                self == other.0
            }
        }

        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }
    };
}

/// Longest Kubernetes object name (a DNS subdomain).
pub const K8S_NAME_MAX: usize = 253;

/// The rule for Kubernetes namespace and pod names (RFC 1123 subdomain): lowercase letters,
/// digits, `-` and `.`, at most 253, starting and ending with a letter or digit.
pub fn check_k8s_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= K8S_NAME_MAX
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
        && !s.contains("..");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a valid Kubernetes name: use lowercase letters, digits, '-' and '.', \
             at most {K8S_NAME_MAX}, starting and ending with a letter or digit"
        ))
    }
}

validated_name! {
    /// A Kubernetes namespace or pod name. It is a path segment and a key segment, so it
    /// never holds `/`, `..` or an empty string.
    pub struct K8sName, check_k8s_name
}

/// Longest network name berth accepts: it becomes a file name and a key segment.
pub const NETWORK_NAME_MAX: usize = 128;

/// A network name as the spec requires (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`), at most 128 bytes.
pub fn check_network_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && name.len() <= NETWORK_NAME_MAX;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid network name {name:?}: start with a letter or digit and use only letters, \
             digits, '_', '.' and '-', at most {NETWORK_NAME_MAX}"
        ))
    }
}

validated_name! {
    /// A CNI network name (see [`check_network_name`]). It names the IPAM store's files and
    /// keys, so it never holds `/` or starts with a dot.
    pub struct NetworkName, check_network_name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_names_follow_rfc_1123_subdomains() {
        for good in [
            "default",
            "web-0",
            "a",
            "kube-system",
            "a.b-c",
            &"a".repeat(253),
        ] {
            let n = K8sName::try_from(good).unwrap();
            assert_eq!(n, *good);
        }
        for bad in [
            "",
            "A",
            "a/b",
            "..",
            ".a",
            "a.",
            "-a",
            "a-",
            "a..b",
            "a_b",
            "a b",
            "ä",
            &"a".repeat(254),
        ] {
            let e = K8sName::try_from(bad).unwrap_err();
            assert!(
                e.to_string().contains("not a valid Kubernetes name"),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn network_names_follow_the_spec() {
        for good in ["net1", "berth-underlay", "a.b_c-d", "0", &"n".repeat(128)] {
            assert_eq!(NetworkName::try_from(good).unwrap(), *good);
        }
        for bad in [
            "",
            ".x",
            "-x",
            "_x",
            "a/b",
            "a b",
            "..",
            "ä",
            &"n".repeat(129),
        ] {
            let e = NetworkName::try_from(bad).unwrap_err().to_string();
            assert!(e.starts_with("invalid network name"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn serde_goes_through_the_check() {
        let n: K8sName = serde_json::from_str("\"web-0\"").unwrap();
        assert_eq!(
            format!("{n:?} {n}"),
            "\"web-0\" web-0",
            "quoted like the string"
        );
        assert_eq!(n.as_str(), "web-0");
        assert_eq!(serde_json::to_string(&n).unwrap(), "\"web-0\"");
        let e = serde_json::from_str::<K8sName>("\"../etc\"").unwrap_err();
        assert!(
            e.to_string()
                .contains("\"../etc\" is not a valid Kubernetes name"),
            "{e}"
        );
    }
}
