//! What the agent remembers across restarts (in its state dir): every container dir it made,
//! which containers still use it, and when its last container was removed.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::filelogs::layout::RelPath;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirRecord {
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    pub container: String,
    /// The metadata file beside the dir (removed with it).
    #[serde(default)]
    pub metadata: Option<RelPath>,
    /// Ids of containers using the dir (attempt 1, 2, … of the same container share it).
    pub live: BTreeSet<String>,
    /// Unix seconds when the last container was removed; retention counts from here.
    pub removed_at: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read the state file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the state file {path}: check that the state dir is writable")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    dirs: BTreeMap<RelPath, DirRecord>,
}

pub const STATE_FILE: &str = "filelogs-state.json";

/// The records plus the file they persist to.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    pub records: BTreeMap<RelPath, DirRecord>,
}

impl Store {
    /// Loads the state; a missing file is an empty state, a corrupt one is moved aside
    /// (`.corrupt`) with a warning so the agent still starts.
    pub fn load(state_dir: &Path) -> Result<Store, StateError> {
        let path = state_dir.join(STATE_FILE);
        let records = match std::fs::read(&path) {
            Ok(b) => match serde_json::from_slice::<OnDisk>(&b) {
                Ok(d) => d.dirs,
                Err(e) => {
                    let aside = path.with_extension("json.corrupt");
                    tracing::warn!(path = %path.display(), error = %e, aside = %aside.display(), "state file is corrupt; starting empty (retention restarts from the next Synchronize)");
                    let _ = std::fs::rename(&path, &aside);
                    BTreeMap::new()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => return Err(StateError::Read { path, source }),
        };
        Ok(Store { path, records })
    }

    /// Writes the state atomically (temp file, fsync, rename).
    pub fn save(&self) -> Result<(), StateError> {
        self.snapshot().save()
    }

    /// A copy to write without holding whatever lock guards the store.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            path: self.path.clone(),
            records: self.records.clone(),
        }
    }

    pub fn container_created(&mut self, dir: &RelPath, template: DirRecord, container_id: &str) {
        let r = self.records.entry(dir.clone()).or_insert(template);
        r.live.insert(container_id.to_string());
        r.removed_at = None;
    }

    /// Returns the dirs whose retention starts now.
    pub fn container_removed(&mut self, container_id: &str, now: u64) -> Vec<RelPath> {
        let mut started = Vec::new();
        for (dir, r) in self.records.iter_mut() {
            if r.live.remove(container_id) && r.live.is_empty() && r.removed_at.is_none() {
                r.removed_at = Some(now);
                started.push(dir.clone());
            }
        }
        started
    }

    /// The pod is gone: whatever containers were missed are gone too.
    pub fn pod_removed(&mut self, pod_uid: &str, now: u64) -> Vec<RelPath> {
        let mut started = Vec::new();
        for (dir, r) in self
            .records
            .iter_mut()
            .filter(|(_, r)| r.pod_uid == pod_uid)
        {
            r.live.clear();
            if r.removed_at.is_none() {
                r.removed_at = Some(now);
                started.push(dir.clone());
            }
        }
        started
    }

    /// After (re)connecting: only `live_ids` exist. Dirs left without a container start
    /// their retention now.
    pub fn reconcile(&mut self, live_ids: &BTreeSet<String>, now: u64) -> Vec<RelPath> {
        let mut started = Vec::new();
        for (dir, r) in self.records.iter_mut() {
            r.live.retain(|id| live_ids.contains(id));
            if r.live.is_empty() && r.removed_at.is_none() {
                r.removed_at = Some(now);
                started.push(dir.clone());
            }
        }
        started
    }

    pub fn forget(&mut self, dir: &RelPath) -> Option<DirRecord> {
        self.records.remove(dir)
    }
}

/// The records at one moment, ready to be written.
pub struct Snapshot {
    path: PathBuf,
    records: BTreeMap<RelPath, DirRecord>,
}

impl Snapshot {
    pub fn save(self) -> Result<(), StateError> {
        let data = serde_json::to_vec_pretty(&OnDisk {
            version: 1,
            dirs: self.records,
        })
        .expect("state serialises");
        let tmp = self.path.with_extension("json.tmp");
        let w = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&data)?;
            f.sync_data()?;
            std::fs::rename(&tmp, &self.path)
        };
        w().map_err(|source| StateError::Write {
            path: self.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rp(s: &str) -> RelPath {
        RelPath::try_from(s.to_string()).unwrap()
    }

    fn tmpl(uid: &str) -> DirRecord {
        DirRecord {
            namespace: "ns".into(),
            pod: "p".into(),
            pod_uid: uid.into(),
            container: "c".into(),
            metadata: Some(rp("ns/p/c.berth.json")),
            live: BTreeSet::new(),
            removed_at: None,
        }
    }

    #[test]
    fn lifecycle_and_persistence() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Store::load(d.path()).unwrap();
        assert!(s.records.is_empty());
        s.container_created(&rp("ns/p/c"), tmpl("u"), "id1");
        // Restart: attempt 2 is created before attempt 1 is removed.
        s.container_created(&rp("ns/p/c"), tmpl("u"), "id2");
        assert!(
            s.container_removed("id1", 10).is_empty(),
            "attempt 2 still uses the dir"
        );
        assert_eq!(s.container_removed("id2", 20), vec![rp("ns/p/c")]);
        assert_eq!(s.records[&rp("ns/p/c")].removed_at, Some(20));
        // Recreated (same StatefulSet pod name): retention cancelled.
        s.container_created(&rp("ns/p/c"), tmpl("u"), "id3");
        assert_eq!(s.records[&rp("ns/p/c")].removed_at, None);
        s.save().unwrap();

        let mut s2 = Store::load(d.path()).unwrap();
        assert_eq!(s2.records, s.records);
        // While the agent was down id3 vanished: reconcile starts its retention.
        assert_eq!(
            s2.reconcile(&BTreeSet::from(["other".to_string()]), 30),
            vec![rp("ns/p/c")]
        );
        assert_eq!(s2.records[&rp("ns/p/c")].removed_at, Some(30));
        // A second reconcile does not move the start.
        assert!(s2.reconcile(&BTreeSet::new(), 40).is_empty());
        assert_eq!(s2.records[&rp("ns/p/c")].removed_at, Some(30));
    }

    #[test]
    fn pod_removal_covers_missed_container_events() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Store::load(d.path()).unwrap();
        s.container_created(&rp("ns/p/a"), tmpl("u1"), "a");
        s.container_created(&rp("ns/p/b"), tmpl("u1"), "b");
        s.container_created(&rp("ns/q/a"), tmpl("u2"), "c");
        assert_eq!(s.pod_removed("u1", 5), vec![rp("ns/p/a"), rp("ns/p/b")]);
        assert_eq!(s.records[&rp("ns/q/a")].removed_at, None);
    }

    #[test]
    fn corrupt_state_is_moved_aside() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(STATE_FILE), b"{not json").unwrap();
        let s = Store::load(d.path()).unwrap();
        assert!(s.records.is_empty());
        assert!(d.path().join("filelogs-state.json.corrupt").exists());
        assert!(!d.path().join(STATE_FILE).exists());
    }
}
