//! What the agent remembers about faketime containers, in `<state_dir>/faketime-state.json`:
//! one entry per container id with its names, offset, whether the shim was injected and the
//! coverage of its entry point.
//!
//! Every change is a read-modify-write under an exclusive `flock` on
//! `<state_dir>/faketime-state.lock`, so the running agent and `berth-agent faketime …` (another
//! process working on the same state dir) never lose each other's writes. The file is replaced
//! atomically (temp file, rename), without fsync: it describes running containers only, which a
//! host crash (the one thing that loses unsynced writes) ends; the next Synchronize drops what
//! they left, and a torn file is moved aside. Syncing cost several milliseconds of every
//! annotated CreateContainer on a busy disk (`scripts/bench nri`).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const STATE_FILE: &str = "faketime-state.json";
pub const LOCK_FILE: &str = "faketime-state.lock";
/// Per-container directories (each holds the timestamp file) under the state dir.
pub const CONTAINERS_DIR: &str = "faketime/containers";

/// Where a container's entry point was judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckedAt {
    /// In its root filesystem before it was created (the shim was injected only if covered).
    Create,
    /// In the running process (`/proc/<pid>/exe`) after it started.
    Start,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoverageRecord {
    pub covered: bool,
    /// `glibc`, `static`, `musl`, `go`, `foreign-arch`, `other-interpreter`, `old-glibc`.
    pub kind: String,
    pub reason: String,
    pub checked_at: CheckedAt,
}

impl CoverageRecord {
    pub fn new(c: &berth_faketime::Coverage, checked_at: CheckedAt) -> CoverageRecord {
        use berth_faketime::Coverage::*;
        let kind = match c {
            Glibc { .. } => "glibc",
            Static => "static",
            Musl { .. } => "musl",
            GoRuntime { .. } => "go",
            ForeignArch { .. } => "foreign-arch",
            OtherInterpreter { .. } => "other-interpreter",
            OldGlibc { .. } => "old-glibc",
        };
        CoverageRecord {
            covered: c.is_covered(),
            kind: kind.into(),
            reason: c.reason(),
            checked_at,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub namespace: String,
    pub pod: String,
    #[serde(default)]
    pub pod_uid: String,
    pub container: String,
    /// The offset in force (what the timestamp file holds when injected).
    pub offset_ns: i64,
    /// True when the shim, its env and mounts were added to the container.
    pub injected: bool,
    /// `None` while the entry point could not be inspected yet (checked at start).
    pub coverage: Option<CoverageRecord>,
    /// Why the container runs unfaked, or what is still pending; empty when all is well.
    #[serde(default)]
    pub note: String,
    /// RFC 3339 time of the last change.
    pub updated_at: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot lock the faketime state {path}: check that the state dir exists and is writable"
    )]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the faketime state {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the faketime state {path}: check free space and permissions")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    containers: BTreeMap<String, Entry>,
}

pub type Entries = BTreeMap<String, Entry>;

/// The faketime state of one agent state dir.
#[derive(Debug, Clone)]
pub struct Store {
    state_dir: PathBuf,
}

/// Container ids become directory names: only `[A-Za-z0-9_-]`, 1 to 128 bytes.
pub fn valid_container_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Store {
    pub fn new(state_dir: &Path) -> Store {
        Store {
            state_dir: state_dir.to_path_buf(),
        }
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The host directory of a container (mounted read-only at `/.berth/faketime/state`).
    /// `id` must pass [`valid_container_id`].
    pub fn container_dir(&self, id: &str) -> PathBuf {
        debug_assert!(valid_container_id(id));
        self.state_dir.join(CONTAINERS_DIR).join(id)
    }

    pub fn containers_root(&self) -> PathBuf {
        self.state_dir.join(CONTAINERS_DIR)
    }

    fn lock(&self, exclusive: bool) -> Result<File, StoreError> {
        let path = self.state_dir.join(LOCK_FILE);
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| StoreError::Lock {
                path: path.clone(),
                source,
            })?;
        let op = if exclusive {
            rustix::fs::FlockOperation::LockExclusive
        } else {
            rustix::fs::FlockOperation::LockShared
        };
        rustix::fs::flock(&f, op).map_err(|e| StoreError::Lock {
            path,
            source: e.into(),
        })?;
        Ok(f)
    }

    fn load(&self) -> Result<Entries, StoreError> {
        let path = self.state_dir.join(STATE_FILE);
        match fs::read(&path) {
            Ok(b) => match serde_json::from_slice::<OnDisk>(&b) {
                Ok(d) => Ok(d.containers),
                Err(e) => {
                    let aside = path.with_extension("json.corrupt");
                    tracing::warn!(path = %path.display(), error = %e, aside = %aside.display(),
                        "faketime state is corrupt; starting empty (Synchronize re-adopts running containers)");
                    let _ = fs::rename(&path, &aside);
                    Ok(Entries::new())
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Entries::new()),
            Err(source) => Err(StoreError::Read { path, source }),
        }
    }

    fn save(&self, entries: &Entries) -> Result<(), StoreError> {
        let path = self.state_dir.join(STATE_FILE);
        let tmp = self.state_dir.join(format!(".{STATE_FILE}.tmp"));
        let data = serde_json::to_vec_pretty(&OnDisk {
            version: 1,
            containers: entries.clone(),
        })
        .expect("state serialises");
        let write = || -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&data)?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|source| {
            let _ = fs::remove_file(&tmp);
            StoreError::Write {
                path: path.clone(),
                source,
            }
        })
    }

    /// The entries as they are on disk now.
    pub fn read(&self) -> Result<Entries, StoreError> {
        let _lock = self.lock(false)?;
        self.load()
    }

    /// Runs `f` on the entries under the exclusive lock and saves them if `f` changed them.
    pub fn update<R>(&self, f: impl FnOnce(&mut Entries) -> R) -> Result<R, StoreError> {
        let _lock = self.lock(true)?;
        let mut entries = self.load()?;
        let before = entries.clone();
        let r = f(&mut entries);
        if entries != before {
            self.save(&entries)?;
        }
        Ok(r)
    }
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(container: &str) -> Entry {
        Entry {
            namespace: "ns".into(),
            pod: "p".into(),
            pod_uid: "u".into(),
            container: container.into(),
            offset_ns: 7,
            injected: true,
            coverage: None,
            note: String::new(),
            updated_at: now_rfc3339(),
        }
    }

    #[test]
    fn update_persists_and_survives_a_new_store() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::new(tmp.path());
        assert!(s.read().unwrap().is_empty());
        s.update(|e| {
            e.insert("c1".into(), entry("app"));
        })
        .unwrap();
        let again = Store::new(tmp.path()).read().unwrap();
        let e = &again["c1"];
        assert_eq!(
            (e.container.as_str(), e.offset_ns, e.injected),
            ("app", 7, true)
        );
        // no temp file left behind
        let names: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(!names.iter().any(|n| n.contains(".tmp")), "{names:?}");
    }

    #[test]
    fn corrupt_state_is_moved_aside() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join(STATE_FILE), b"{not json").unwrap();
        assert!(Store::new(tmp.path()).read().unwrap().is_empty());
        assert!(tmp.path().join("faketime-state.json.corrupt").exists());
    }

    #[test]
    fn container_ids_are_checked_before_they_name_a_dir() {
        assert!(valid_container_id(&"a".repeat(64)));
        assert!(valid_container_id("abc-DEF_09"));
        for bad in ["", "..", "a/b", "a.b", &"x".repeat(129), "a b"] {
            assert!(!valid_container_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn concurrent_updates_lose_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    for i in 0..10 {
                        Store::new(&dir)
                            .update(|e| {
                                e.insert(format!("c{t}-{i}"), entry("x"));
                            })
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(Store::new(&dir).read().unwrap().len(), 40);
    }
}
