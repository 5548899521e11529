//! Kubernetes object names as the API server enforces them (RFC 1123), checked again here
//! because they become host path components: a value that the API server would have refused
//! cannot come from a real kubelet and is treated as hostile.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error(
        "{what} {value:?} is not a DNS label (1-63 lowercase letters, digits or '-', starting and ending alphanumeric)"
    )]
    NotLabel { what: &'static str, value: String },
    #[error(
        "{what} {value:?} is not a DNS subdomain (1-253 characters of dot-separated DNS labels)"
    )]
    NotSubdomain { what: &'static str, value: String },
    #[error("{what} {value:?} is not a pod uid (1-64 characters of letters, digits or '-')")]
    NotUid { what: &'static str, value: String },
}

fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// RFC 1123 label: namespaces and container names.
pub fn label(what: &'static str, value: &str) -> Result<(), NameError> {
    if is_label(value) {
        Ok(())
    } else {
        Err(NameError::NotLabel {
            what,
            value: value.to_string(),
        })
    }
}

/// RFC 1123 subdomain: pod names. Never `.` or `..` (labels are not empty).
pub fn subdomain(what: &'static str, value: &str) -> Result<(), NameError> {
    if !value.is_empty() && value.len() <= 253 && value.split('.').all(is_label) {
        Ok(())
    } else {
        Err(NameError::NotSubdomain {
            what,
            value: value.to_string(),
        })
    }
}

/// Pod uids are UUIDs from the API server; static pods get hashes. Letters, digits, '-'.
pub fn uid(what: &'static str, value: &str) -> Result<(), NameError> {
    if !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-')
    {
        Ok(())
    } else {
        Err(NameError::NotUid {
            what,
            value: value.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        for ok in ["a", "web", "web-1", "0abc", &"a".repeat(63)] {
            assert_eq!(label("container", ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a.b",
            "..",
            ".",
            "a/b",
            "é",
            "a\0",
            &"a".repeat(64),
            "a b",
        ] {
            assert!(
                matches!(label("container", bad), Err(NameError::NotLabel { .. })),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn subdomains() {
        for ok in [
            "web",
            "web-0.db",
            "a.b.c",
            &format!("{}.{}", "a".repeat(63), "b".repeat(63)),
        ] {
            assert_eq!(subdomain("pod", ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a..b",
            ".a",
            "a.",
            "a/b",
            "A.b",
            &"a.".repeat(127).to_string(),
            "a\u{200b}",
        ] {
            assert!(
                matches!(subdomain("pod", bad), Err(NameError::NotSubdomain { .. })),
                "{bad:?} accepted"
            );
        }
        let too_long = vec!["a".repeat(63); 4].join(".") + ".ab";
        assert!(too_long.len() > 253);
        assert!(subdomain("pod", &too_long).is_err());
    }

    #[test]
    fn uids() {
        assert_eq!(uid("uid", "4f1c2d3e-0000-4000-8000-123456789abc"), Ok(()));
        assert_eq!(uid("uid", "6c1d9e0f8a7b"), Ok(()));
        for bad in ["", "..", "a/b", "a.b", &"a".repeat(65)] {
            assert!(uid("uid", bad).is_err(), "{bad:?} accepted");
        }
    }
}
