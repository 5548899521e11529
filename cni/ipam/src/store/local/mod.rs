//! The embedded store: per network, a state file ([`state_file`]: fixed-size headers in
//! front of the leases' JSON) plus an append-only journal of the transactions since it was
//! written (text lines of [`records`]).
//!
//! Layout under the configured directory, per network `<net>`:
//! - `<net>.lock`: never replaced; every transaction holds `flock(LOCK_EX)` on it, readers
//!   `LOCK_SH`;
//! - `<net>.leases`: the leases as of the last compaction (written as `.<net>.leases.tmp`,
//!   fdatasync, rename, fsync(dir));
//! - `<net>.journal`: one line per committed transaction since then (the leases it put, the
//!   addresses it deleted). A transaction is one `write` of one line under the lock, made
//!   durable (fdatasync) after the lock is released and before the caller answers. A line
//!   without its newline was never acknowledged (its writer died mid-write): readers ignore it
//!   and the next writer cuts it off. Every [`JOURNAL_COMPACT_AFTER`] lines the state is
//!   folded into `<net>.leases` and the journal emptied: the transaction's own line is
//!   appended and synced first, then the new state file is made durable, then the journal is
//!   truncated, so a crash in between replays lines the state file already contains, which
//!   changes nothing (every line sets leases to absolute values). An append costs one small
//!   write and one fdatasync, where a replaced file costs a new inode, a rename that frees the
//!   old one, and two syncs;
//! - `<net>.history.jsonl`: events, one JSON line each, appended after the state is committed,
//!   compacted (write-temp + rename) when it grows past the retention limits;
//! - `<net>.json`: `{"format":"berth-ipam/3"}`, so that a build of the earlier formats
//!   refuses the store instead of reading it as empty. A store of an earlier format
//!   ([`legacy`]) is migrated by its first transaction, under the lock.
//!
//! A transaction reads the headers, not the leases: it reads and decodes only the leases its
//! decision looks at, so its cost hardly grows with the network's holds and reservations.
//!
//! So a `kill -9` at any point leaves the last committed state, never a mix, and an
//! acknowledged change is on disk. A state file or a complete journal line that does not
//! parse is refused with [`IpamError::CorruptStore`] naming the file; it is never reset. The
//! lock is released by the kernel when a holder dies.

mod index;
mod legacy;
mod records;
mod state_file;

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{HistoryLimits, Store, check_network_name, prune};
use crate::error::IpamError;
use crate::state::{Event, Leases, Plan};
use crate::view::LeaseView;
use index::Index;
use legacy::Legacy;
use state_file::StateFile;

/// Rough size of one history line, to decide when to compact without counting lines.
const EVENT_BYTES: u64 = 512;

/// Journal lines a network collects before they are folded into its state file.
pub const JOURNAL_COMPACT_AFTER: usize = 32;

/// A network's files as a transaction read them.
struct Raw {
    /// The state file; `None` when the network has none yet.
    state: Option<StateFile>,
    /// The journal's bytes.
    journal: Vec<u8>,
}

impl Raw {
    /// The length of the journal's complete lines (a killed writer may have left a torn
    /// line after them).
    fn journal_end(&self) -> usize {
        self.journal
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1)
    }
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
        self.dir.join(format!("{network}.leases"))
    }
    fn lock_path(&self, network: &str) -> PathBuf {
        self.dir.join(format!("{network}.lock"))
    }
    /// The journal of a network (for operators and error messages).
    pub fn journal_path(&self, network: &str) -> PathBuf {
        self.dir.join(format!("{network}.journal"))
    }
    /// The state file of the earlier formats, a marker after the migration.
    pub fn legacy_state_path(&self, network: &str) -> PathBuf {
        self.dir.join(format!("{network}.json"))
    }
    /// The journal of the earlier format (version 2).
    pub fn legacy_journal_path(&self, network: &str) -> PathBuf {
        self.dir.join(format!("{network}.journal.jsonl"))
    }
    fn history_path(&self, network: &str) -> PathBuf {
        self.dir.join(format!("{network}.history.jsonl"))
    }

    fn lock(&self, network: &str) -> Result<File, IpamError> {
        let path = self.lock_path(network);
        let open = || open_read_write(&path);
        // The directory exists after the first write: create it only when it is missing
        // instead of a mkdir per transaction.
        let f = match open() {
            Err(e) if e.kind() == ErrorKind::NotFound => {
                std::fs::create_dir_all(&self.dir).map_err(|source| IpamError::Io {
                    path: self.dir.clone(),
                    source,
                })?;
                open()
            }
            r => r,
        }
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

    /// A shared lock for readers: the state file and the journal are then read as one
    /// state (a compaction between the two reads would otherwise drop journal lines).
    /// `None` when nothing was ever written to the network.
    fn lock_shared(&self, network: &str) -> Result<Option<File>, IpamError> {
        let path = self.lock_path(network);
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(IpamError::Io { path, source }),
        };
        loop {
            match rustix::fs::flock(&f, rustix::fs::FlockOperation::LockShared) {
                Ok(()) => return Ok(Some(f)),
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

    /// Opens (creating) the journal for a transaction, which reads and appends through this
    /// one descriptor.
    fn open_journal(&self, network: &str) -> Result<File, IpamError> {
        let path = self.journal_path(network);
        open_read_write(&path).map_err(|source| IpamError::Io { path, source })
    }

    /// The state file, `None` when it does not exist.
    fn read_state(&self, network: &str) -> Result<Option<StateFile>, IpamError> {
        StateFile::open(&self.state_path(network))
    }

    /// A network without a state file: empty, or of an earlier format (its leases).
    fn read_legacy(&self, network: &str) -> Result<Option<Leases>, IpamError> {
        match legacy::load(
            &self.legacy_state_path(network),
            &self.legacy_journal_path(network),
        )? {
            Legacy::Absent => Ok(None),
            Legacy::Leases(leases) => Ok(Some(leases)),
            Legacy::Moved => Err(IpamError::CorruptStore {
                path: self.state_path(network),
                reason: format!(
                    "it is missing, and {} says the leases were moved there; restore it from a backup",
                    self.legacy_state_path(network).display()
                ),
            }),
        }
    }

    /// Moves a store of an earlier format to this one (under the transaction's lock): the
    /// new state file first, then the marker, then the old journal goes. A crash in between
    /// leaves a state file, which wins from then on. Returns the new state file.
    fn migrate(&self, network: &str, leases: &Leases) -> Result<StateFile, IpamError> {
        self.write_state(network, &index::state_of(leases))?;
        self.write_marker(network)?;
        let old = self.legacy_journal_path(network);
        match std::fs::remove_file(&old) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                return Err(IpamError::Io {
                    path: old,
                    source: e,
                });
            }
            _ => {}
        }
        self.read_state(network)?
            .ok_or_else(|| IpamError::CorruptStore {
                path: self.state_path(network),
                reason: "it vanished right after it was written".into(),
            })
    }

    fn write_state(&self, network: &str, bytes: &[u8]) -> Result<(), IpamError> {
        let tmp = self.dir.join(format!(".{network}.leases.tmp"));
        write_atomic(&self.dir, &tmp, &self.state_path(network), bytes)
    }

    fn write_marker(&self, network: &str) -> Result<(), IpamError> {
        let tmp = self.dir.join(format!(".{network}.json.tmp"));
        write_atomic(
            &self.dir,
            &tmp,
            &self.legacy_state_path(network),
            &legacy::moved_marker(),
        )
    }

    /// The index over a network's files, the journal's lines replayed; with the number of
    /// journal lines.
    fn index<'a>(
        raw: &'a Raw,
        state_path: &'a Path,
        journal_path: &'a Path,
    ) -> Result<(Index<'a>, usize), IpamError> {
        let complete = &raw.journal[..raw.journal_end()];
        Index::load(raw.state.as_ref(), complete, state_path, journal_path)
    }

    /// Appends one transaction's line to the journal at the end of its complete lines
    /// (cutting off a torn line a killed writer left).
    fn append_journal(
        &self,
        network: &str,
        journal: &File,
        raw: &Raw,
        plan: &Plan,
    ) -> Result<(), IpamError> {
        let io = |source| IpamError::Io {
            path: self.journal_path(network),
            source,
        };
        let end = raw.journal_end() as u64;
        if raw.journal.len() as u64 != end {
            journal.set_len(end).map_err(io)?;
        }
        journal
            .write_all_at(&records::journal_line(plan), end)
            .map_err(io)
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
        let (end, len) = complete_len(&mut f).map_err(io)?;
        if end != len {
            f.set_len(end).map_err(io)?;
        }
        f.write_all_at(&buf, end).map_err(io)?;
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

/// The length of the file up to and including its last newline (its complete lines), and
/// its whole length.
fn complete_len(f: &mut File) -> std::io::Result<(u64, u64)> {
    let len = f.metadata()?.len();
    // Almost always the file ends with a newline: one byte tells.
    let mut last = [0u8; 1];
    if len == 0 || (f.read_exact_at(&mut last, len - 1).is_ok() && last[0] == b'\n') {
        return Ok((len, len));
    }
    let mut pos = len;
    let mut chunk = vec![0u8; 4096];
    while pos > 0 {
        let n = chunk.len().min(pos as usize);
        pos -= n as u64;
        f.seek(SeekFrom::Start(pos))?;
        f.read_exact(&mut chunk[..n])?;
        if let Some(i) = chunk[..n].iter().rposition(|b| *b == b'\n') {
            return Ok((pos + i as u64 + 1, len));
        }
    }
    Ok((0, len))
}

/// Opens `path` for reading and writing, creating it (owner-only) when missing; never
/// truncates.
fn open_read_write(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .open(path)
}

/// Replaces `path` with `bytes` atomically and durably: written to `tmp`, its data synced,
/// renamed over `path`, then the directory synced. A `kill -9` or a power loss at any point
/// leaves the old file or the new one whole; syncing only after the rename could leave a
/// renamed file whose data never reached the disk (for rare rewrites such as compaction).
fn write_atomic(dir: &Path, tmp: &Path, path: &Path, bytes: &[u8]) -> Result<(), IpamError> {
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
    f.sync_data().map_err(io_tmp)?;
    std::fs::rename(tmp, path).map_err(|source| IpamError::Io {
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

impl Store for LocalStore {
    fn read(&self, network: &str) -> Result<Leases, IpamError> {
        check_network_name(network)?;
        let _lock = self.lock_shared(network)?;
        let Some(state) = self.read_state(network)? else {
            if let Some(leases) = self.read_legacy(network)? {
                return Ok(leases);
            }
            // A journal without a state file is never written: nothing yet.
            return Ok(Leases::new());
        };
        let journal_path = self.journal_path(network);
        let journal = match std::fs::read(&journal_path) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(IpamError::Io {
                    path: journal_path,
                    source,
                });
            }
        };
        let raw = Raw {
            state: Some(state),
            journal,
        };
        let state_path = self.state_path(network);
        let (index, _) = Self::index(&raw, &state_path, &journal_path)?;
        index.all()
    }

    fn transact(&self, network: &str, decide: &mut super::Decide<'_>) -> Result<(), IpamError> {
        check_network_name(network)?;
        let lock = self.lock(network)?;
        let state = match self.read_state(network)? {
            Some(s) => Some(s),
            None => match self.read_legacy(network)? {
                Some(leases) => Some(self.migrate(network, &leases)?),
                None => None,
            },
        };
        let journal_file = self.open_journal(network)?;
        let mut journal = Vec::with_capacity(16 << 10);
        (&journal_file)
            .read_to_end(&mut journal)
            .map_err(|source| IpamError::Io {
                path: self.journal_path(network),
                source,
            })?;
        let raw = Raw { state, journal };
        let (state_path, journal_path) = (self.state_path(network), self.journal_path(network));
        let (index, lines) = Self::index(&raw, &state_path, &journal_path)?;
        let plan = decide(&index)?;
        if plan.is_empty() {
            return Ok(());
        }
        let mut appended = false;
        if !plan.puts.is_empty() || !plan.deletes.is_empty() {
            if raw.state.is_some() && lines + 1 < JOURNAL_COMPACT_AFTER {
                self.append_journal(network, &journal_file, &raw, &plan)?;
                appended = true;
            } else {
                // Compaction (or the network's first write). The journal first holds this
                // transaction durably, so that a crash before the truncate below replays
                // lines the new state file already contains.
                let io = |source| IpamError::Io {
                    path: journal_path.clone(),
                    source,
                };
                if lines > 0 {
                    self.append_journal(network, &journal_file, &raw, &plan)?;
                    journal_file.sync_data().map_err(io)?;
                }
                self.write_state(network, &index.compacted(&plan)?)?;
                if raw.state.is_none() {
                    self.write_marker(network)?;
                }
                if !raw.journal.is_empty() {
                    journal_file.set_len(0).map_err(io)?;
                }
            }
        }
        // The state is committed; history follows under the same lock.
        self.append_history(network, &plan.events)?;
        drop(lock);
        // Durability outside the lock, before the caller answers: concurrent writers' syncs
        // then overlap instead of queueing behind the lock. The next writer already sees this
        // line; a later line is written after it in the same file, and its writer syncs
        // before answering too.
        if appended {
            journal_file.sync_data().map_err(|source| IpamError::Io {
                path: journal_path,
                source,
            })?;
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
        // Networks of this format and of earlier ones (not migrated yet).
        let out: std::collections::BTreeSet<String> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let net = name
                    .strip_suffix(".leases")
                    .or_else(|| name.strip_suffix(".json"))?;
                (!net.starts_with('.')).then(|| net.to_string())
            })
            .collect();
        Ok(out.into_iter().collect())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Lease, LeaseState};

    fn lease(ip: &str, cid: &str) -> Lease {
        Lease {
            ip: ip.parse().unwrap(),
            pool: "a".into(),
            state: LeaseState::Allocated {
                container_id: cid.into(),
                ifname: "eth0".into(),
            },
            sticky: None,
            pod: None,
            node: "n1".into(),
            rack: None,
            since: "2026-03-01T12:00:00Z".parse().unwrap(),
            pinned: false,
        }
    }

    fn commit(store: &LocalStore, plan: Plan) {
        store.transact("net1", &mut |_| Ok(plan.clone())).unwrap();
    }

    #[test]
    fn replaying_journal_lines_the_state_file_already_holds_changes_nothing() {
        // A compaction killed after renaming the new state file but before emptying the
        // journal: the journal's lines are replayed over a state that holds them.
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path(), HistoryLimits::default());
        for i in 2..8 {
            commit(
                &store,
                Plan {
                    puts: vec![lease(&format!("10.0.0.{i}"), &format!("c{i}"))],
                    ..Plan::default()
                },
            );
        }
        commit(
            &store,
            Plan {
                deletes: vec!["10.0.0.3".parse().unwrap()],
                ..Plan::default()
            },
        );
        let before = store.read("net1").unwrap();
        assert_eq!(before.len(), 5);
        let journal = std::fs::read(store.journal_path("net1")).unwrap();
        assert!(journal.iter().filter(|b| **b == b'\n').count() >= 6);
        std::fs::write(store.state_path("net1"), index::state_of(&before)).unwrap();
        assert_eq!(store.read("net1").unwrap(), before);
        // And the next transaction works on it.
        commit(
            &store,
            Plan {
                puts: vec![lease("10.0.0.3", "c9")],
                ..Plan::default()
            },
        );
        assert_eq!(store.read("net1").unwrap().len(), 6);
    }
}
