//! The agent-side faketime API: read and change the offset of running containers.
//!
//! This is what the gRPC `FakeTime` service binds to, and what `berth-agent faketime …` runs.
//! It works on the agent's state dir only (the locked state file and the containers'
//! timestamp files), so it gives the same answers in the agent's process and outside it. A
//! change rewrites the container's timestamp file atomically; the shim in the container sees
//! it within `faketime.cache_duration` (1 s by default), without a restart.

use std::path::Path;

use berth_faketime::{Offset, file};
use serde::Serialize;

use super::store::{CheckedAt, Entry, Store, StoreError, now_rfc3339};

/// Which containers a call is about: every faketime container of a pod, or one of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a> {
    pub namespace: &'a str,
    pub pod: &'a str,
    pub container: Option<&'a str>,
}

impl std::fmt::Display for Target<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pod {}/{}", self.namespace, self.pod)?;
        if let Some(c) = self.container {
            write!(f, " container {c:?}")?;
        }
        Ok(())
    }
}

/// One container's faketime state, as `get`, `set` and `clear` report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    pub container_id: String,
    pub namespace: String,
    pub pod: String,
    pub container: String,
    /// The offset in force, e.g. `+2d`, `-3h`, `0`.
    pub offset: String,
    pub offset_ns: i64,
    /// The shim is in the container (its clock follows `offset`).
    pub injected: bool,
    /// Whether the shim can shift the entry point's clock; `None` until it was judged.
    pub covered: Option<bool>,
    /// `glibc`, `static`, `musl`, `go`, `foreign-arch`, `other-interpreter`, `old-glibc`.
    pub coverage: Option<String>,
    /// `create` or `start`: where the entry point was judged.
    pub checked_at: Option<CheckedAt>,
    /// A sentence: why the clock is (not) shifted.
    pub reason: String,
    pub updated_at: String,
    /// The container's running processes and how each one's clock is shifted (`get`, `set`
    /// and `clear` look them up on this node's /proc).
    pub processes: Vec<super::vdso::ProcessStatus>,
}

impl Status {
    fn new(id: &str, e: &Entry) -> Status {
        let reason = match (&e.coverage, e.note.is_empty()) {
            (_, false) => e.note.clone(),
            (Some(c), true) => c.reason.clone(),
            (None, true) => String::new(),
        };
        Status {
            container_id: id.to_string(),
            namespace: e.namespace.clone(),
            pod: e.pod.clone(),
            container: e.container.clone(),
            offset: Offset::from_nanos(e.offset_ns).to_string(),
            offset_ns: e.offset_ns,
            injected: e.injected,
            covered: e.coverage.as_ref().map(|c| c.covered),
            coverage: e.coverage.as_ref().map(|c| c.kind.clone()),
            checked_at: e.coverage.as_ref().map(|c| c.checked_at),
            reason,
            updated_at: e.updated_at.clone(),
            processes: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "no faketime container in {0}: the pod needs a berth.io/faketime annotation when it is created"
    )]
    NotFound(String),
    #[error("{target}: no container has the shim ({reason})")]
    NotInjected { target: String, reason: String },
    #[error("cannot change the offset of container {container_id}")]
    Write {
        container_id: String,
        #[source]
        source: file::FileError,
    },
    #[error("cannot change the offset in the processes of container {container_id}")]
    Vdso {
        container_id: String,
        #[source]
        source: berth_faketime::vdso::PatchError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The faketime API over one agent state dir.
#[derive(Debug, Clone)]
pub struct Control {
    store: Store,
}

fn matches(t: &Target<'_>, e: &Entry) -> bool {
    e.namespace == t.namespace && e.pod == t.pod && t.container.is_none_or(|c| c == e.container)
}

impl Control {
    pub fn new(state_dir: &Path) -> Control {
        Control {
            store: Store::new(state_dir),
        }
    }

    /// The state of the matching containers (ordered by container name, then id).
    pub fn get(&self, t: &Target<'_>) -> Result<Vec<Status>, ControlError> {
        let entries = self.store.read()?;
        let mut out: Vec<Status> = entries
            .iter()
            .filter(|(_, e)| matches(t, e))
            .map(|(id, e)| Status {
                processes: super::vdso::processes(&self.store, id, e),
                ..Status::new(id, e)
            })
            .collect();
        if out.is_empty() {
            return Err(ControlError::NotFound(t.to_string()));
        }
        out.sort_by(|a, b| (&a.container, &a.container_id).cmp(&(&b.container, &b.container_id)));
        Ok(out)
    }

    /// Sets the offset of every matching container that has the shim (others are returned
    /// unchanged, with their reason). Fails when no matching container has the shim.
    pub fn set(&self, t: &Target<'_>, offset: Offset) -> Result<Vec<Status>, ControlError> {
        let r = self.store.update(|m| -> Result<(), ControlError> {
            let ids: Vec<String> = m
                .iter()
                .filter(|(_, e)| matches(t, e))
                .map(|(id, _)| id.clone())
                .collect();
            if ids.is_empty() {
                return Err(ControlError::NotFound(t.to_string()));
            }
            let mut changed = 0;
            for id in &ids {
                let e = m.get_mut(id).expect("listed");
                let vdso = super::vdso::is_vdso_entry(e);
                if !(e.injected || vdso) || e.coverage.as_ref().is_some_and(|c| !c.covered) {
                    continue;
                }
                let f = self.store.container_dir(id).join(file::TIMESTAMP_FILE_NAME);
                file::write_timestamp_file(&f, offset).map_err(|source| ControlError::Write {
                    container_id: id.clone(),
                    source,
                })?;
                if vdso || super::vdso::patched_at_start(&self.store, id) {
                    // Under the state lock, like the patch at start: no process is missed.
                    super::vdso::apply_offset(&self.store, id, offset.as_nanos()).map_err(
                        |source| ControlError::Vdso {
                            container_id: id.clone(),
                            source,
                        },
                    )?;
                }
                e.offset_ns = offset.as_nanos();
                e.updated_at = now_rfc3339();
                changed += 1;
            }
            if changed == 0 {
                let e = &m[&ids[0]];
                return Err(ControlError::NotInjected {
                    target: t.to_string(),
                    reason: Status::new(&ids[0], e).reason,
                });
            }
            Ok(())
        })?;
        r?;
        let out = self.get(t)?;
        for s in &out {
            tracing::info!(namespace = %s.namespace, pod = %s.pod, container = %s.container,
                id = %s.container_id, offset = %s.offset, injected = s.injected, "faketime offset set");
        }
        Ok(out)
    }

    /// Back to the real clock (offset 0; the shim stays, so `set` works again later).
    pub fn clear(&self, t: &Target<'_>) -> Result<Vec<Status>, ControlError> {
        self.set(t, Offset::ZERO)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faketime::store::CoverageRecord;

    fn seed(dir: &Path) -> Store {
        let s = Store::new(dir);
        let mk = |c: &str, injected: bool, covered: Option<bool>| Entry {
            namespace: "ns".into(),
            pod: "p".into(),
            pod_uid: "u".into(),
            container: c.into(),
            offset_ns: 2 * 86_400 * 1_000_000_000,
            injected,
            coverage: covered.map(|c| CoverageRecord {
                covered: c,
                kind: if c { "glibc" } else { "static" }.into(),
                reason: if c { "fine" } else { "static binary" }.into(),
                checked_at: CheckedAt::Create,
            }),
            note: String::new(),
            updated_at: now_rfc3339(),
        };
        s.update(|m| {
            m.insert("c1".into(), mk("app", true, Some(true)));
            m.insert("c2".into(), mk("side", true, None));
            m.insert("c3".into(), mk("bb", false, Some(false)));
        })
        .unwrap();
        for id in ["c1", "c2"] {
            std::fs::create_dir_all(s.container_dir(id)).unwrap();
        }
        s
    }

    fn read(s: &Store, id: &str) -> Offset {
        file::read_timestamp_file(&s.container_dir(id).join(file::TIMESTAMP_FILE_NAME)).unwrap()
    }

    fn t<'a>(c: Option<&'a str>) -> Target<'a> {
        Target {
            namespace: "ns",
            pod: "p",
            container: c,
        }
    }

    #[test]
    fn set_rewrites_the_files_of_injected_containers_only() {
        let tmp = tempfile::tempdir().unwrap();
        let s = seed(tmp.path());
        let c = Control::new(tmp.path());
        let ten: Offset = "+10d".parse().unwrap();
        let out = c.set(&t(None), ten).unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(read(&s, "c1"), ten);
        assert_eq!(read(&s, "c2"), ten);
        assert!(
            !s.container_dir("c3").exists(),
            "nothing written for the uninjected one"
        );
        let by: std::collections::BTreeMap<_, _> =
            out.iter().map(|s| (s.container.as_str(), s)).collect();
        assert_eq!(by["app"].offset, "+10d");
        assert_eq!(by["bb"].offset, "+2d", "uninjected container unchanged");
        assert_eq!(by["bb"].covered, Some(false));
        assert_eq!(by["bb"].reason, "static binary");
        // persisted
        assert_eq!(c.get(&t(Some("app"))).unwrap()[0].offset_ns, ten.as_nanos());
        // clear = 0
        let out = c.clear(&t(Some("side"))).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].offset, "0");
        assert_eq!(read(&s, "c2"), Offset::ZERO);
        assert_eq!(read(&s, "c1"), ten, "other containers untouched");
    }

    #[test]
    fn unknown_and_uninjected_targets_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        seed(tmp.path());
        let c = Control::new(tmp.path());
        match c.get(&Target {
            namespace: "ns",
            pod: "other",
            container: None,
        }) {
            Err(ControlError::NotFound(w)) => assert_eq!(w, "pod ns/other"),
            other => panic!("{other:?}"),
        }
        match c.set(&t(Some("bb")), Offset::ZERO) {
            Err(ControlError::NotInjected { reason, .. }) => assert_eq!(reason, "static binary"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            c.set(&t(Some("nope")), Offset::ZERO),
            Err(ControlError::NotFound(_))
        ));
    }
}
