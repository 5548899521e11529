//! Which log dirs a container asks for: env `KUBERNETES_FILELOGS=<dir>[,<dir>…]` and/or the
//! pod annotation `berth.io/filelogs.<container>` with the same syntax.

use super::dest::{DestError, Destination};

/// At most this many log dirs per container.
pub const MAX_DIRS: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("{source_name}: {error}")]
    Dest {
        source_name: String,
        error: DestError,
    },
    #[error("{source_name} names {count} log dirs; at most {MAX_DIRS} are allowed")]
    TooMany { source_name: String, count: usize },
    #[error("log dirs {a} and {b} are nested: a mount would hide the other")]
    Nested { a: String, b: String },
}

/// Where the request came from, for messages and events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub dirs: Vec<Destination>,
    /// Raw values, for the event record of a refusal.
    pub raw: Vec<(String, String)>,
}

/// Parses a comma-separated list. Blank items are skipped; surrounding ASCII whitespace is
/// trimmed; duplicates collapse.
pub fn parse_list(
    source_name: &str,
    value: &str,
    extra_denied: &[String],
) -> Result<Vec<Destination>, SpecError> {
    let items: Vec<&str> = value
        .split(',')
        .map(|s| s.trim_ascii())
        .filter(|s| !s.is_empty())
        .collect();
    if items.len() > MAX_DIRS {
        return Err(SpecError::TooMany {
            source_name: source_name.to_string(),
            count: items.len(),
        });
    }
    let mut out = Vec::new();
    for item in items {
        let d = Destination::parse(item, extra_denied).map_err(|error| SpecError::Dest {
            source_name: source_name.to_string(),
            error,
        })?;
        if !out.contains(&d) {
            out.push(d);
        }
    }
    Ok(out)
}

/// Collects the log dirs of one container from its env value and its pod's annotation value.
/// Returns `Ok(None)` when neither asks for file logs.
pub fn collect(
    env_name: &str,
    env_value: Option<&str>,
    annotation_name: &str,
    annotation_value: Option<&str>,
    extra_denied: &[String],
) -> Result<Option<Request>, SpecError> {
    if env_value.is_none() && annotation_value.is_none() {
        return Ok(None);
    }
    let mut dirs: Vec<Destination> = Vec::new();
    let mut raw = Vec::new();
    for (name, value) in [(env_name, env_value), (annotation_name, annotation_value)] {
        let Some(value) = value else { continue };
        raw.push((name.to_string(), value.to_string()));
        for d in parse_list(name, value, extra_denied)? {
            if !dirs.contains(&d) {
                dirs.push(d);
            }
        }
    }
    if dirs.len() > MAX_DIRS {
        return Err(SpecError::TooMany {
            source_name: format!("{env_name} + {annotation_name}"),
            count: dirs.len(),
        });
    }
    for (i, a) in dirs.iter().enumerate() {
        for b in &dirs[i + 1..] {
            let nested = |x: &str, y: &str| y.strip_prefix(x).is_some_and(|r| r.starts_with('/'));
            if nested(a.as_str(), b.as_str()) || nested(b.as_str(), a.as_str()) {
                return Err(SpecError::Nested {
                    a: a.to_string(),
                    b: b.to_string(),
                });
            }
        }
    }
    if dirs.is_empty() {
        return Ok(None);
    }
    Ok(Some(Request { dirs, raw }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENV: &str = "KUBERNETES_FILELOGS";
    const ANN: &str = "berth.io/filelogs.app";

    fn dirs(r: Option<Request>) -> Vec<String> {
        r.map(|r| r.dirs.iter().map(|d| d.to_string()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn env_only_single_and_several() {
        assert_eq!(
            dirs(collect(ENV, Some("/app/logs"), ANN, None, &[]).unwrap()),
            vec!["/app/logs"]
        );
        assert_eq!(
            dirs(
                collect(
                    ENV,
                    Some(" /app/logs , /var/log/app/,,/app/logs"),
                    ANN,
                    None,
                    &[]
                )
                .unwrap()
            ),
            vec!["/app/logs", "/var/log/app"]
        );
    }

    #[test]
    fn annotation_only_and_union_with_env() {
        assert_eq!(
            dirs(collect(ENV, None, ANN, Some("/data/log"), &[]).unwrap()),
            vec!["/data/log"]
        );
        let r = collect(
            ENV,
            Some("/app/logs"),
            ANN,
            Some("/data/log,/app/logs"),
            &[],
        )
        .unwrap()
        .unwrap();
        assert_eq!(dirs(Some(r.clone())), vec!["/app/logs", "/data/log"]);
        assert_eq!(r.raw.len(), 2);
    }

    #[test]
    fn absent_or_blank_is_no_request() {
        assert_eq!(collect(ENV, None, ANN, None, &[]).unwrap(), None);
        assert_eq!(collect(ENV, Some(""), ANN, None, &[]).unwrap(), None);
        assert_eq!(collect(ENV, Some(" , ,"), ANN, None, &[]).unwrap(), None);
    }

    #[test]
    fn one_hostile_item_refuses_the_whole_request() {
        let e = collect(ENV, Some("/app/logs,/proc/self"), ANN, None, &[]).unwrap_err();
        assert!(
            matches!(&e, SpecError::Dest { source_name, error: DestError::Denied { denied, .. } }
            if source_name == ENV && denied == "/proc"),
            "{e:?}"
        );
        let e = collect(ENV, Some("/app/logs"), ANN, Some("../../etc"), &[]).unwrap_err();
        assert!(
            matches!(&e, SpecError::Dest { source_name, error: DestError::Relative(_) } if source_name == ANN),
            "{e:?}"
        );
    }

    #[test]
    fn too_many_and_nested() {
        let many = (0..9)
            .map(|i| format!("/l{i}"))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(
            collect(ENV, Some(&many), ANN, None, &[]).unwrap_err(),
            SpecError::TooMany {
                source_name: ENV.into(),
                count: 9
            }
        );
        let e = collect(ENV, Some("/app,/app/logs"), ANN, None, &[]).unwrap_err();
        assert_eq!(
            e,
            SpecError::Nested {
                a: "/app".into(),
                b: "/app/logs".into()
            }
        );
        // Prefix without a slash boundary is not nesting.
        assert_eq!(
            dirs(collect(ENV, Some("/app,/apple"), ANN, None, &[]).unwrap()),
            vec!["/app", "/apple"]
        );
    }
}
