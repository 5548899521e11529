//! Mount destinations inside the container, validated before anything touches the host.

use std::fmt;

/// Destinations that must never be covered by a log mount: the container's system dirs, the
/// kernel's pseudo file systems, and where service-account secrets live. A destination equal
/// to one of these or below it is refused. `/lib*` is matched by [`is_lib_dir`].
pub const DENIED: &[&str] = &[
    "/proc",
    "/sys",
    "/dev",
    "/etc",
    "/usr",
    "/bin",
    "/sbin",
    "/boot",
    "/run",
    "/var/run",
    "/var/run/secrets",
    "/var/lib/kubelet",
    "/root",
];

/// Longest destination accepted (Linux's PATH_MAX is 4096 including the NUL).
pub const MAX_LEN: usize = 1024;
/// Longest path component (NAME_MAX).
pub const MAX_COMPONENT: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestError {
    #[error("log dir is empty")]
    Empty,
    #[error("log dir {0:?} is longer than {MAX_LEN} bytes")]
    TooLong(String),
    #[error("log dir {0:?} is not absolute: use a path starting with '/'")]
    Relative(String),
    #[error(
        "log dir {0:?} contains a character outside [A-Za-z0-9._+@=-] (control, space, non-ASCII or NUL)"
    )]
    BadChar(String),
    #[error("log dir {0:?} is not normalised (empty, '.' or '..' component)")]
    NotNormal(String),
    #[error("log dir {0:?} has a component longer than {MAX_COMPONENT} bytes")]
    LongComponent(String),
    #[error("log dir {path:?} would cover the protected path {denied}")]
    Denied { path: String, denied: String },
}

/// A validated destination: absolute, normalised, ASCII, outside the denylist.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Destination(String);

impl Destination {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Validates `raw` against the built-in denylist plus `extra_denied`.
    pub fn parse(raw: &str, extra_denied: &[String]) -> Result<Destination, DestError> {
        if raw.is_empty() {
            return Err(DestError::Empty);
        }
        if raw.len() > MAX_LEN {
            return Err(DestError::TooLong(truncate(raw)));
        }
        if !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._+@=-".contains(&b))
        {
            return Err(DestError::BadChar(raw.to_string()));
        }
        if !raw.starts_with('/') {
            return Err(DestError::Relative(raw.to_string()));
        }
        // One trailing slash is how people type directories; anything else must already be
        // normal: `//etc`, `/a/./b`, `/a/../etc` are refused rather than rewritten.
        let trimmed = if raw.len() > 1 {
            raw.strip_suffix('/').unwrap_or(raw)
        } else {
            raw
        };
        let comps: Vec<&str> = trimmed.split('/').skip(1).collect();
        if trimmed != "/"
            && comps
                .iter()
                .any(|c| c.is_empty() || *c == "." || *c == "..")
        {
            return Err(DestError::NotNormal(raw.to_string()));
        }
        if comps.iter().any(|c| c.len() > MAX_COMPONENT) {
            return Err(DestError::LongComponent(truncate(raw)));
        }
        let denied = |d: &str| {
            trimmed == d
                || trimmed
                    .strip_prefix(d)
                    .is_some_and(|rest| rest.starts_with('/'))
        };
        if trimmed == "/" {
            return Err(DestError::Denied {
                path: raw.to_string(),
                denied: "/".into(),
            });
        }
        if let Some(d) = DENIED
            .iter()
            .map(|d| d.to_string())
            .chain(extra_denied.iter().cloned())
            .find(|d| denied(d))
        {
            return Err(DestError::Denied {
                path: raw.to_string(),
                denied: d,
            });
        }
        if is_lib_dir(comps[0]) {
            return Err(DestError::Denied {
                path: raw.to_string(),
                denied: format!("/{}", comps[0]),
            });
        }
        Ok(Destination(trimmed.to_string()))
    }

    /// A directory name for this destination when a container has several: `/app/logs` →
    /// `app_logs`. Not injective (`/a_b` and `/a/b` collide); see [`super::plan`].
    pub fn flat_name(&self) -> String {
        self.0.trim_start_matches('/').replace('/', "_")
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `/lib`, `/lib32`, `/lib64`, `/libx32`, `/libexec`, …
fn is_lib_dir(first: &str) -> bool {
    first.starts_with("lib")
}

fn truncate(s: &str) -> String {
    let mut end = 64.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Destination, DestError> {
        Destination::parse(s, &[])
    }

    #[test]
    fn good_destinations() {
        for (raw, want) in [
            ("/app/logs", "/app/logs"),
            ("/app/logs/", "/app/logs"),
            ("/var/log/my_app", "/var/log/my_app"),
            ("/data/app-1.2@x+y=z", "/data/app-1.2@x+y=z"),
        ] {
            assert_eq!(p(raw).map(|d| d.0), Ok(want.to_string()), "{raw}");
        }
        assert_eq!(p("/var/logs").unwrap().as_str(), "/var/logs");
        assert_eq!(p("/tmp/logs").unwrap().as_str(), "/tmp/logs");
        assert_eq!(
            p("/runner/logs").unwrap().as_str(),
            "/runner/logs",
            "/run is a prefix only per component"
        );
        assert_eq!(p("/etcd-logs").unwrap().as_str(), "/etcd-logs");
    }

    /// Hostile values, each with the error it must produce.
    #[test]
    fn hostile_destinations_table() {
        let long_component = format!("/app/{}", "a".repeat(256));
        let four_k = format!("/{}", "a/".repeat(2048));
        let denied = |d: &str| DestError::Denied {
            path: String::new(),
            denied: d.into(),
        };
        let table: Vec<(&str, DestError)> = vec![
            ("", DestError::Empty),
            ("..", DestError::Relative("..".into())),
            ("app/logs", DestError::Relative("app/logs".into())),
            ("./logs", DestError::Relative("./logs".into())),
            ("/app/../etc", DestError::NotNormal("/app/../etc".into())),
            ("/..", DestError::NotNormal("/..".into())),
            ("/app/..", DestError::NotNormal("/app/..".into())),
            ("/app/./logs", DestError::NotNormal("/app/./logs".into())),
            ("//etc", DestError::NotNormal("//etc".into())),
            ("/app//logs", DestError::NotNormal("/app//logs".into())),
            ("/app/logs//", DestError::NotNormal("/app/logs//".into())),
            ("/", denied("/")),
            ("//", denied("/")),
            ("/proc", denied("/proc")),
            ("/proc/self", denied("/proc")),
            ("/proc/self/root", denied("/proc")),
            ("/sys/fs/cgroup", denied("/sys")),
            ("/dev/shm", denied("/dev")),
            ("/etc", denied("/etc")),
            ("/etc/", denied("/etc")),
            ("/etc/cron.d", denied("/etc")),
            ("/usr/local/bin", denied("/usr")),
            ("/bin", denied("/bin")),
            ("/sbin", denied("/sbin")),
            ("/lib", denied("/lib")),
            ("/lib64", denied("/lib64")),
            ("/libx32/x", denied("/libx32")),
            ("/boot", denied("/boot")),
            ("/run", denied("/run")),
            ("/run/secrets", denied("/run")),
            ("/var/run", denied("/var/run")),
            (
                "/var/run/secrets/kubernetes.io/serviceaccount",
                denied("/var/run"),
            ),
            ("/root/.ssh", denied("/root")),
            ("/app/log\0s", DestError::BadChar("/app/log\0s".into())),
            ("/app/ｌogs", DestError::BadChar("/app/ｌogs".into())),
            (
                "/app/logs\u{200b}",
                DestError::BadChar("/app/logs\u{200b}".into()),
            ),
            ("/\u{202e}sgol", DestError::BadChar("/\u{202e}sgol".into())),
            ("/app/lo gs", DestError::BadChar("/app/lo gs".into())),
            ("/app/logs\n", DestError::BadChar("/app/logs\n".into())),
            ("/app\\..\\etc", DestError::BadChar("/app\\..\\etc".into())),
            ("/app/*", DestError::BadChar("/app/*".into())),
            ("/app,logs", DestError::BadChar("/app,logs".into())),
            ("/app/$(id)", DestError::BadChar("/app/$(id)".into())),
        ];
        for (raw, want) in table {
            let got = p(raw).expect_err(raw);
            match (&got, &want) {
                (DestError::Denied { denied: g, .. }, DestError::Denied { denied: w, .. }) => {
                    assert_eq!(g, w, "{raw:?}")
                }
                _ => assert_eq!(got, want, "{raw:?}"),
            }
        }
        assert!(matches!(
            p(&long_component),
            Err(DestError::LongComponent(_))
        ));
        assert!(matches!(p(&four_k), Err(DestError::TooLong(_))));
        let four_k_name = format!("/{}", "a".repeat(4096));
        assert!(matches!(p(&four_k_name), Err(DestError::TooLong(_))));
    }

    #[test]
    fn extra_denied_from_config() {
        let extra = vec!["/data".to_string()];
        assert!(
            matches!(Destination::parse("/data/logs", &extra), Err(DestError::Denied { denied, .. }) if denied == "/data")
        );
        assert!(Destination::parse("/database", &extra).is_ok());
    }

    #[test]
    fn flat_names() {
        assert_eq!(p("/app/logs").unwrap().flat_name(), "app_logs");
        assert_eq!(p("/logs").unwrap().flat_name(), "logs");
    }
}
