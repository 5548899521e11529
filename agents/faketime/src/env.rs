//! The environment a container needs for the shim: a pure function over its env list.
//!
//! The agent adds (or replaces) exactly three variables:
//!
//! - `LD_PRELOAD`: the shim's in-container path, **appended** to the value the image or pod
//!   already set (an application's own preload, e.g. jemalloc, keeps working and keeps
//!   its place in front). Not added twice.
//! - `FAKETIME_TIMESTAMP_FILE`: the in-container path of the timestamp file.
//! - `FAKETIME_CACHE_DURATION`: how often (seconds) the shim re-checks that file.
//!
//! `FAKETIME` itself is never set: in libfaketime it freezes or overrides the file, and the
//! berth shim does not read it.

use crate::shim::{CONTAINER_SHIM_PATH, CONTAINER_TIMESTAMP_FILE};

pub const LD_PRELOAD: &str = "LD_PRELOAD";
pub const TIMESTAMP_FILE_VAR: &str = "FAKETIME_TIMESTAMP_FILE";
pub const CACHE_DURATION_VAR: &str = "FAKETIME_CACHE_DURATION";

/// What to inject; `Default` is berth's fixed in-container layout with a 1 s cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Injection {
    pub shim_path: String,
    pub timestamp_file: String,
    pub cache_duration_secs: u32,
}

impl Default for Injection {
    fn default() -> Self {
        Injection {
            shim_path: CONTAINER_SHIM_PATH.to_string(),
            timestamp_file: CONTAINER_TIMESTAMP_FILE.to_string(),
            cache_duration_secs: 1,
        }
    }
}

/// The variables to set (name, full new value) on a container whose environment is
/// `existing` (`NAME=value` strings, as in the OCI spec). Setting means replacing any
/// existing variable of that name. When `LD_PRELOAD` occurs several times, the last one is
/// the one the dynamic loader honours, so that is the one extended.
pub fn env_adjustments(existing: &[String], injection: &Injection) -> Vec<(String, String)> {
    let preload = existing
        .iter()
        .rev()
        .find_map(|kv| kv.strip_prefix("LD_PRELOAD="));
    let mut out = Vec::with_capacity(3);
    match preload {
        // ld.so splits LD_PRELOAD on spaces and colons
        Some(v) if v.split([':', ' ']).any(|p| p == injection.shim_path) => {}
        Some(v) if !v.trim_matches([':', ' ']).is_empty() => out.push((
            LD_PRELOAD.to_string(),
            format!("{}:{}", v.trim_end_matches([':', ' ']), injection.shim_path),
        )),
        _ => out.push((LD_PRELOAD.to_string(), injection.shim_path.clone())),
    }
    out.push((
        TIMESTAMP_FILE_VAR.to_string(),
        injection.timestamp_file.clone(),
    ));
    out.push((
        CACHE_DURATION_VAR.to_string(),
        injection.cache_duration_secs.to_string(),
    ));
    out
}

/// `existing` with [`env_adjustments`] applied: every variable set replaces all earlier
/// entries of its name (the first keeps its position), new ones are appended. The order of
/// everything else is kept.
pub fn apply_env(existing: &[String], injection: &Injection) -> Vec<String> {
    let mut env: Vec<String> = existing.to_vec();
    for (name, value) in env_adjustments(existing, injection) {
        let entry = format!("{name}={value}");
        let is_name = |kv: &String| kv.split_once('=').map_or(kv == &name, |(k, _)| k == name);
        match env.iter().position(is_name) {
            Some(first) => {
                env[first] = entry;
                let mut i = 0;
                env.retain(|kv| {
                    i += 1;
                    i - 1 == first || !is_name(kv)
                });
            }
            None => env.push(entry),
        }
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    const SHIM: &str = "/.berth/faketime/libberth-faketime.so";

    #[test]
    fn fresh_env_gets_three_variables() {
        let env = strings(&["PATH=/usr/bin", "HOME=/root"]);
        assert_eq!(
            apply_env(&env, &Injection::default()),
            strings(&[
                "PATH=/usr/bin",
                "HOME=/root",
                &format!("LD_PRELOAD={SHIM}"),
                "FAKETIME_TIMESTAMP_FILE=/.berth/faketime/state/offset",
                "FAKETIME_CACHE_DURATION=1",
            ])
        );
    }

    #[test]
    fn existing_preload_is_kept_in_front() {
        let env = strings(&["LD_PRELOAD=/usr/lib/libjemalloc.so.2", "A=1"]);
        let adj = env_adjustments(&env, &Injection::default());
        assert_eq!(
            adj[0],
            (
                "LD_PRELOAD".to_string(),
                format!("/usr/lib/libjemalloc.so.2:{SHIM}")
            )
        );
        let applied = apply_env(&env, &Injection::default());
        assert_eq!(
            applied[0],
            format!("LD_PRELOAD=/usr/lib/libjemalloc.so.2:{SHIM}")
        );
        assert_eq!(applied[1], "A=1");
        // space-separated lists and trailing separators
        let env = strings(&["LD_PRELOAD=/a.so /b.so: "]);
        assert_eq!(
            env_adjustments(&env, &Injection::default())[0].1,
            format!("/a.so /b.so:{SHIM}")
        );
        // an empty value is replaced
        let env = strings(&["LD_PRELOAD="]);
        assert_eq!(env_adjustments(&env, &Injection::default())[0].1, SHIM);
    }

    #[test]
    fn shim_is_not_added_twice_and_is_idempotent() {
        let once = apply_env(&strings(&["LD_PRELOAD=/x.so"]), &Injection::default());
        let twice = apply_env(&once, &Injection::default());
        assert_eq!(once, twice);
        assert_eq!(
            twice
                .iter()
                .filter(|kv| kv.starts_with("LD_PRELOAD="))
                .count(),
            1
        );
        assert!(
            !env_adjustments(&once, &Injection::default())
                .iter()
                .any(|(k, _)| k == "LD_PRELOAD")
        );
        // a path that merely contains the shim's path is a different library
        let env = strings(&[&format!("LD_PRELOAD={SHIM}.bak")]);
        assert_eq!(
            env_adjustments(&env, &Injection::default())[0].1,
            format!("{SHIM}.bak:{SHIM}")
        );
    }

    #[test]
    fn last_preload_wins_and_duplicates_collapse() {
        let env = strings(&["LD_PRELOAD=/first.so", "X=1", "LD_PRELOAD=/last.so"]);
        let applied = apply_env(&env, &Injection::default());
        assert_eq!(
            applied,
            strings(&[
                &format!("LD_PRELOAD=/last.so:{SHIM}"),
                "X=1",
                "FAKETIME_TIMESTAMP_FILE=/.berth/faketime/state/offset",
                "FAKETIME_CACHE_DURATION=1",
            ])
        );
    }

    #[test]
    fn existing_faketime_variables_are_replaced_and_faketime_is_never_set() {
        let env = strings(&[
            "FAKETIME_TIMESTAMP_FILE=/etc/faketimerc",
            "FAKETIME=2020-01-01 00:00:00",
            "FAKETIME_CACHE_DURATION=60",
        ]);
        let inj = Injection {
            cache_duration_secs: 5,
            ..Injection::default()
        };
        let applied = apply_env(&env, &inj);
        assert_eq!(
            applied,
            strings(&[
                "FAKETIME_TIMESTAMP_FILE=/.berth/faketime/state/offset",
                "FAKETIME=2020-01-01 00:00:00",
                "FAKETIME_CACHE_DURATION=5",
                &format!("LD_PRELOAD={SHIM}"),
            ])
        );
        assert!(
            !env_adjustments(&env, &inj)
                .iter()
                .any(|(k, _)| k == "FAKETIME")
        );
    }
}
