//! The embedded store: per network, a JSON state file plus an append-only journal of the
//! transactions since it was written.
//!
//! Layout under the configured directory, per network `<net>`:
//! - `<net>.lock`: never replaced; every transaction holds `flock(LOCK_EX)` on it, readers
//!   `LOCK_SH`;
//! - `<net>.json`: the leases as of the last compaction (written as `.<net>.json.tmp`,
//!   fdatasync, rename, fsync(dir));
//! - `<net>.journal.jsonl`: one line per committed transaction since then (the leases it put,
//!   the addresses it deleted). A transaction is one `write` of one line under the lock,
//!   made durable (fdatasync) after the lock is released and before the caller answers. A
//!   line without its newline was never acknowledged (its writer died mid-write): readers
//!   ignore it and the next writer cuts it off. Every [`JOURNAL_COMPACT_AFTER`] lines the
//!   state is folded into `<net>.json` and the journal emptied: the transaction's own line is
//!   appended and synced first, then the new state file is made durable, then the journal is
//!   truncated, so a crash in between replays lines the state file already contains, which
//!   changes nothing (every line sets leases to absolute values). An append costs one small
//!   write and one fdatasync, where a replaced file costs a new inode, a rename that frees the
//!   old one, and two syncs;
//! - `<net>.history.jsonl`: events, one JSON line each, appended after the state is committed,
//!   compacted (write-temp + rename) when it grows past the retention limits.
//!
//! So a `kill -9` at any point leaves the last committed state, never a mix, and an
//! acknowledged change is on disk. A state file or a complete journal line that does not
//! parse is refused with [`IpamError::CorruptStore`] naming the file; it is never reset. The
//! lock is released by the kernel when a holder dies.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::net::IpAddr;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{HistoryLimits, Store, check_network_name, prune};
use crate::error::IpamError;
use crate::state::{Event, Lease, Leases};

/// The state file's format. Version 2 means "read with the journal": a build that only knows
/// version 1 (no journal) refuses the store with a clear error instead of reading a state that
/// misses the journal's changes. Version 1 files (no journal yet) are read as they are.
const FORMAT: &str = "berth-ipam/2";
const FORMAT_V1: &str = "berth-ipam/1";
/// Rough size of one history line, to decide when to compact without counting lines.
const EVENT_BYTES: u64 = 512;

/// Journal lines a network collects before they are folded into its state file.
pub const JOURNAL_COMPACT_AFTER: usize = 32;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    format: String,
    leases: Vec<Lease>,
}

/// One committed transaction in the journal: the leases it put and the addresses it removed.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JournalEntry<'a> {
    #[serde(default, skip_serializing_if = "<[Lease]>::is_empty")]
    puts: std::borrow::Cow<'a, [Lease]>,
    #[serde(default, skip_serializing_if = "<[IpAddr]>::is_empty")]
    deletes: std::borrow::Cow<'a, [IpAddr]>,
}

/// A network's state as a transaction found it.
struct Loaded {
    leases: Leases,
    /// Whether the state file exists.
    has_state_file: bool,
    /// The journal's complete lines: their byte length and count; and the file's whole length
    /// (longer when a killed writer left a torn line).
    journal_end: u64,
    journal_lines: usize,
    journal_len: u64,
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
    /// The journal of a network (for operators and error messages).
    pub fn journal_path(&self, network: &str) -> PathBuf {
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

    /// The state file and the journal replayed over it (under a lock). `journal`: the
    /// transaction's open journal; readers pass `None` and the file is opened if it exists.
    fn load(&self, network: &str, journal: Option<&File>) -> Result<Loaded, IpamError> {
        let state = self.load_state_file(network)?;
        let has_state_file = state.is_some();
        let mut leases = state.unwrap_or_default();
        let path = self.journal_path(network);
        let read = match journal {
            Some(mut f) => {
                let mut text = Vec::with_capacity(8 << 10);
                f.read_to_end(&mut text).map(|_| text)
            }
            None => std::fs::read(&path),
        };
        let text = match read {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(IpamError::Io { path, source }),
        };
        // Only complete lines were committed; a torn last line was never acknowledged.
        let end = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let mut lines = 0;
        for (n, line) in text[..end].split(|b| *b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let entry: JournalEntry =
                serde_json::from_slice(line).map_err(|e| IpamError::CorruptStore {
                    path: path.clone(),
                    reason: format!("line {} is not a journal entry: {e}", n + 1),
                })?;
            for ip in entry.deletes.iter() {
                leases.remove(ip);
            }
            for l in entry.puts.into_owned() {
                leases.insert(l.ip, l);
            }
            lines += 1;
        }
        if lines > 0 {
            check_attachments(&leases).map_err(|reason| IpamError::CorruptStore {
                path: path.clone(),
                reason,
            })?;
        }
        Ok(Loaded {
            leases,
            has_state_file,
            journal_end: end as u64,
            journal_lines: lines,
            journal_len: text.len() as u64,
        })
    }

    /// The state file's leases; `None` when there is none yet.
    fn load_state_file(&self, network: &str) -> Result<Option<Leases>, IpamError> {
        let path = self.state_path(network);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(IpamError::Io { path, source }),
        };
        let corrupt = |reason: String| IpamError::CorruptStore {
            path: path.clone(),
            reason,
        };
        let file: StateFile =
            serde_json::from_slice(&text).map_err(|e| corrupt(format!("not valid JSON: {e}")))?;
        if file.format != FORMAT && file.format != FORMAT_V1 {
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
        check_attachments(&leases).map_err(corrupt)?;
        Ok(Some(leases))
    }

    /// Writes the whole state to the state file durably (temp file, fdatasync, rename,
    /// fsync of the directory).
    fn save(&self, network: &str, leases: &Leases) -> Result<(), IpamError> {
        let path = self.state_path(network);
        let tmp = self.dir.join(format!(".{network}.json.tmp"));
        let file = StateFile {
            format: FORMAT.into(),
            leases: leases.values().cloned().collect(),
        };
        let bytes = serde_json::to_vec(&file).expect("leases always serialize");
        write_atomic(&self.dir, &tmp, &path, &bytes)
    }

    /// Appends one transaction's line to the journal at its end (after its complete lines,
    /// cutting off a torn line a killed writer left).
    fn append_journal(
        &self,
        network: &str,
        journal: &File,
        loaded: &Loaded,
        plan: &crate::state::Plan,
    ) -> Result<(), IpamError> {
        let io = |source| IpamError::Io {
            path: self.journal_path(network),
            source,
        };
        let entry = JournalEntry {
            puts: std::borrow::Cow::Borrowed(&plan.puts),
            deletes: std::borrow::Cow::Borrowed(&plan.deletes),
        };
        let mut line = serde_json::to_vec(&entry).expect("journal entries always serialize");
        line.push(b'\n');
        if loaded.journal_len != loaded.journal_end {
            journal.set_len(loaded.journal_end).map_err(io)?;
        }
        journal.write_all_at(&line, loaded.journal_end).map_err(io)
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

/// Refuses a state in which one attachment holds two addresses.
fn check_attachments(leases: &Leases) -> Result<(), String> {
    let mut attachments = BTreeSet::new();
    for l in leases.values() {
        if let Some(a) = l.attachment()
            && !attachments.insert(a)
        {
            return Err(format!("attachment {}/{} holds two addresses", a.0, a.1));
        }
    }
    Ok(())
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
        Ok(self.load(network, None)?.leases)
    }

    fn transact(&self, network: &str, decide: &mut super::Decide<'_>) -> Result<(), IpamError> {
        check_network_name(network)?;
        let lock = self.lock(network)?;
        let journal = self.open_journal(network)?;
        let loaded = self.load(network, Some(&journal))?;
        let plan = decide(&loaded.leases)?;
        if plan.is_empty() {
            return Ok(());
        }
        let mut appended = false;
        if !plan.puts.is_empty() || !plan.deletes.is_empty() {
            if loaded.has_state_file && loaded.journal_lines + 1 < JOURNAL_COMPACT_AFTER {
                self.append_journal(network, &journal, &loaded, &plan)?;
                appended = true;
            } else {
                // Compaction (or the network's first write). The journal first holds this
                // transaction durably, so that a crash before the truncate below replays
                // lines the new state file already contains.
                if loaded.journal_lines > 0 {
                    self.append_journal(network, &journal, &loaded, &plan)?;
                    journal.sync_data().map_err(|source| IpamError::Io {
                        path: self.journal_path(network),
                        source,
                    })?;
                }
                let mut leases = loaded.leases;
                plan.apply(&mut leases);
                self.save(network, &leases)?;
                if loaded.journal_len > 0 {
                    journal.set_len(0).map_err(|source| IpamError::Io {
                        path: self.journal_path(network),
                        source,
                    })?;
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
            journal.sync_data().map_err(|source| IpamError::Io {
                path: self.journal_path(network),
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
