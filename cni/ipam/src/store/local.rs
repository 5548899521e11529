//! The embedded store: one JSON file per network, replaced atomically.
//!
//! Layout under the configured directory, per network `<net>`:
//! - `<net>.lock`: never replaced; every transaction holds `flock(LOCK_EX)` on it;
//! - `<net>.json`: the leases, written as `.<net>.json.tmp` + rename under the lock, then
//!   fdatasync + fsync(dir) after the lock is released and before the caller answers, so a
//!   `kill -9` at any point leaves the old or the new file, never a mix, and an acknowledged
//!   change is on disk;
//! - `<net>.history.jsonl`: events, one JSON line each, appended after the state is renamed,
//!   compacted (write-temp + rename) when it grows past the retention limits.
//!
//! A state file that does not parse is refused with [`IpamError::CorruptStore`] naming it; it is
//! never reset. The lock is released by the kernel when a holder dies.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{HistoryLimits, Store, check_network_name, prune};
use crate::error::IpamError;
use crate::state::{Event, Lease, Leases};

const FORMAT: &str = "berth-ipam/1";
/// Rough size of one history line, to decide when to compact without counting lines.
const EVENT_BYTES: u64 = 512;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    format: String,
    leases: Vec<Lease>,
}

/// Files under one directory, one set per network.
#[derive(Debug, Clone)]
pub struct LocalStore {
    dir: PathBuf,
    limits: HistoryLimits,
}

impl LocalStore {
    /// A store under `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>, limits: HistoryLimits) -> LocalStore {
        LocalStore {
            dir: dir.into(),
            limits,
        }
    }

    /// The state file of a network (for operators and error messages).
    pub fn state_path(&self, network: &str) -> PathBuf {
        self.dir.join(format!("{network}.json"))
    }
    fn lock_path(&self, network: &str) -> PathBuf {
        self.dir.join(format!("{network}.lock"))
    }
    fn history_path(&self, network: &str) -> PathBuf {
        self.dir.join(format!("{network}.history.jsonl"))
    }

    fn lock(&self, network: &str) -> Result<File, IpamError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| IpamError::Io {
            path: self.dir.clone(),
            source,
        })?;
        let path = self.lock_path(network);
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| IpamError::Io {
                path: path.clone(),
                source,
            })?;
        loop {
            match rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive) {
                Ok(()) => return Ok(f),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    return Err(IpamError::Io {
                        path,
                        source: e.into(),
                    });
                }
            }
        }
    }

    fn load(&self, network: &str) -> Result<Leases, IpamError> {
        let path = self.state_path(network);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Leases::new()),
            Err(source) => return Err(IpamError::Io { path, source }),
        };
        let corrupt = |reason: String| IpamError::CorruptStore {
            path: path.clone(),
            reason,
        };
        let file: StateFile =
            serde_json::from_slice(&text).map_err(|e| corrupt(format!("not valid JSON: {e}")))?;
        if file.format != FORMAT {
            return Err(corrupt(format!(
                "unknown format {:?}, expected {FORMAT:?}",
                file.format
            )));
        }
        let mut leases = Leases::new();
        for l in file.leases {
            let ip = l.ip;
            if leases.insert(ip, l).is_some() {
                return Err(corrupt(format!("address {ip} is listed twice")));
            }
        }
        let mut attachments = BTreeSet::new();
        for l in leases.values() {
            if let Some(a) = l.attachment()
                && !attachments.insert(a)
            {
                return Err(corrupt(format!(
                    "attachment {}/{} holds two addresses",
                    a.0, a.1
                )));
            }
        }
        Ok(leases)
    }

    /// Writes the new state to a temp file and renames it over the state file; returns the
    /// written file so the caller can make it durable after releasing the lock.
    fn save(&self, network: &str, leases: &Leases) -> Result<File, IpamError> {
        let path = self.state_path(network);
        let tmp = self.dir.join(format!(".{network}.json.tmp"));
        let file = StateFile {
            format: FORMAT.into(),
            leases: leases.values().cloned().collect(),
        };
        let bytes = serde_json::to_vec(&file).expect("leases always serialize");
        write_replace(&tmp, &path, &bytes)
    }

    fn append_history(&self, network: &str, events: &[Event]) -> Result<(), IpamError> {
        if events.is_empty() {
            return Ok(());
        }
        let path = self.history_path(network);
        let io = |source| IpamError::Io {
            path: path.clone(),
            source,
        };
        let mut buf = Vec::with_capacity(events.len() * 300);
        for e in events {
            serde_json::to_writer(&mut buf, e).expect("events always serialize");
            buf.push(b'\n');
        }
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        // A writer killed mid-append leaves a torn last line that was never acknowledged: cut
        // it off so the next line does not glue onto it (we hold the lock: nobody is writing).
        let end = complete_len(&mut f).map_err(io)?;
        f.set_len(end).map_err(io)?;
        f.seek(SeekFrom::Start(end)).map_err(io)?;
        f.write_all(&buf).map_err(io)?;
        let len = end + buf.len() as u64;
        if len > 2 * EVENT_BYTES * self.limits.max_events as u64 {
            let now = events
                .last()
                .map(|e| e.time)
                .unwrap_or_else(chrono::Utc::now);
            // A corrupt history is left for the operator to look at, never rewritten.
            if let Ok(mut all) = self.read_history(network) {
                prune(&mut all, &self.limits, now);
                let mut out = Vec::with_capacity(all.len() * 300);
                for e in &all {
                    serde_json::to_writer(&mut out, e).expect("events always serialize");
                    out.push(b'\n');
                }
                let tmp = self.dir.join(format!(".{network}.history.tmp"));
                write_atomic(&self.dir, &tmp, &path, &out)?;
            }
        }
        Ok(())
    }

    fn read_history(&self, network: &str) -> Result<Vec<Event>, IpamError> {
        let path = self.history_path(network);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(IpamError::Io { path, source }),
        };
        let complete = match text.iter().rposition(|b| *b == b'\n') {
            Some(i) => &text[..=i],
            // Only a torn (never acknowledged) first line: nothing to read yet.
            None => &[][..],
        };
        let mut out = Vec::new();
        for (n, line) in complete.split(|b| *b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let e: Event = serde_json::from_slice(line).map_err(|e| IpamError::CorruptStore {
                path: path.clone(),
                reason: format!("line {} is not a history event: {e}", n + 1),
            })?;
            out.push(e);
        }
        Ok(out)
    }
}

/// The length of the file up to and including its last newline (its complete lines).
fn complete_len(f: &mut File) -> std::io::Result<u64> {
    let len = f.metadata()?.len();
    let mut pos = len;
    let mut chunk = vec![0u8; 4096];
    while pos > 0 {
        let n = chunk.len().min(pos as usize);
        pos -= n as u64;
        f.seek(SeekFrom::Start(pos))?;
        f.read_exact(&mut chunk[..n])?;
        if let Some(i) = chunk[..n].iter().rposition(|b| *b == b'\n') {
            return Ok(pos + i as u64 + 1);
        }
    }
    Ok(0)
}

/// Writes `bytes` to `tmp` and renames it over `path` (atomic: readers and the next writer
/// see the old or the new file, also after a `kill -9` at any point). Not yet durable.
fn write_replace(tmp: &Path, path: &Path, bytes: &[u8]) -> Result<File, IpamError> {
    let io_tmp = |source| IpamError::Io {
        path: tmp.to_path_buf(),
        source,
    };
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(tmp)
        .map_err(io_tmp)?;
    f.write_all(bytes).map_err(io_tmp)?;
    std::fs::rename(tmp, path).map_err(|source| IpamError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(f)
}

/// Makes a replaced file durable: its data, then the directory entry.
fn make_durable(f: &File, path: &Path, dir: &Path) -> Result<(), IpamError> {
    f.sync_data().map_err(|source| IpamError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| IpamError::Io {
            path: dir.to_path_buf(),
            source,
        })
}

/// Writes, fsyncs, renames and fsyncs the directory (for rare rewrites such as compaction).
fn write_atomic(dir: &Path, tmp: &Path, path: &Path, bytes: &[u8]) -> Result<(), IpamError> {
    let f = write_replace(tmp, path, bytes)?;
    make_durable(&f, path, dir)
}

impl Store for LocalStore {
    fn read(&self, network: &str) -> Result<Leases, IpamError> {
        check_network_name(network)?;
        self.load(network)
    }

    fn transact(&self, network: &str, decide: &mut super::Decide<'_>) -> Result<(), IpamError> {
        check_network_name(network)?;
        let lock = self.lock(network)?;
        let mut leases = self.load(network)?;
        let plan = decide(&leases)?;
        if plan.is_empty() {
            return Ok(());
        }
        let mut written = None;
        if !plan.puts.is_empty() || !plan.deletes.is_empty() {
            plan.apply(&mut leases);
            written = Some(self.save(network, &leases)?);
        }
        // The state is committed (renamed); history follows under the same lock.
        self.append_history(network, &plan.events)?;
        drop(lock);
        // Durability outside the lock, before the caller answers: concurrent writers' fsyncs
        // then share journal commits instead of queueing behind each other. The next writer
        // already sees this state (the rename is done); a later writer's rename over this file
        // is ordered after its own data by the filesystem's replace-via-rename rule (ext4's
        // default `auto_da_alloc`), and it syncs before answering too.
        if let Some(f) = written {
            make_durable(&f, &self.state_path(network), &self.dir)?;
        }
        Ok(())
    }

    fn history(&self, network: &str) -> Result<Vec<Event>, IpamError> {
        check_network_name(network)?;
        self.read_history(network)
    }

    fn networks(&self) -> Result<Vec<String>, IpamError> {
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(vec![]),
            Err(source) => {
                return Err(IpamError::Io {
                    path: self.dir.clone(),
                    source,
                });
            }
        };
        let mut out: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let net = name.strip_suffix(".json")?;
                (!net.starts_with('.')).then(|| net.to_string())
            })
            .collect();
        out.sort();
        Ok(out)
    }

    fn status(&self) -> Result<(), IpamError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| IpamError::Io {
            path: self.dir.clone(),
            source,
        })?;
        rustix::fs::access(&self.dir, rustix::fs::Access::WRITE_OK).map_err(|e| IpamError::Io {
            path: self.dir.clone(),
            source: e.into(),
        })
    }
}
