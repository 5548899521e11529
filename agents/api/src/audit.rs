//! The audit log: one JSON line per call, appended with `O_APPEND`, fsynced before the
//! call's result is released, rotated by size (`audit.log` → `audit.log.1` → …).
//!
//! Writes are group-committed: a dedicated thread takes every record queued while the
//! previous fsync ran, writes them in one `write`, syncs once and then wakes all callers.
//! A caller learns whether *its* line is durable; if not, its call fails.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

pub use berth_api_client::audit::{
    AuditConfig, AuditError, AuditRecord, Verified, chain_line, files_oldest_first,
    open_for_reading, rotated, sha256, verify,
};

type Ack = oneshot::Sender<Result<(), AuditError>>;

enum Job {
    Append(Vec<u8>, Option<Ack>),
}

/// Handle to the audit log; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Job>,
    config: Arc<AuditConfig>,
    health: Arc<Mutex<Option<String>>>,
    stats: Arc<Stats>,
}

/// Counters of the writer (how well group commit works).
#[derive(Debug, Default)]
pub struct Stats {
    pub lines: std::sync::atomic::AtomicU64,
    pub syncs: std::sync::atomic::AtomicU64,
}

impl AuditLog {
    /// Starts the writer thread. The file is created (mode 0600) on the first write; the
    /// directory must exist.
    pub fn open(config: AuditConfig) -> Result<AuditLog, AuditError> {
        let (tx, rx) = mpsc::channel::<Job>();
        let health = Arc::new(Mutex::new(None));
        let stats = Arc::new(Stats::default());
        let mut writer = Writer {
            config: config.clone(),
            file: None,
            size: 0,
            health: health.clone(),
            stats: stats.clone(),
            chain: None,
        };
        // Fail fast on a path that cannot work at all.
        if let Err(e) = writer.ensure_open() {
            tracing::error!(error = %e, "audit log not writable at start-up");
        }
        std::thread::Builder::new()
            .name("berth-audit".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| AuditError::Write {
                path: config.path.clone(),
                reason: format!("cannot start writer thread: {e}"),
            })?;
        Ok(AuditLog {
            tx,
            config: Arc::new(config),
            health,
            stats,
        })
    }

    pub fn path(&self) -> &Path {
        &self.config.path
    }

    /// `(lines written, fsyncs)` since start.
    pub fn stats(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.stats.lines.load(Relaxed),
            self.stats.syncs.load(Relaxed),
        )
    }

    /// Why the last write failed, if it did (cleared by the next good write).
    pub fn last_error(&self) -> Option<String> {
        self.health.lock().expect("audit lock").clone()
    }

    /// Appends a record and waits until it is on disk.
    pub async fn append(&self, rec: &AuditRecord) -> Result<(), AuditError> {
        let line = encode(rec);
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Job::Append(line, Some(ack)))
            .map_err(|_| AuditError::Stopped)?;
        done.await.map_err(|_| AuditError::Stopped)?
    }

    /// Appends without waiting (for calls whose client went away mid-stream).
    pub fn append_detached(&self, rec: &AuditRecord) {
        let _ = self.tx.send(Job::Append(encode(rec), None));
    }

    /// Records matching `filter`, oldest first; at most `limit`, the newest ones, and
    /// whether more matched.
    pub fn query(
        &self,
        filter: &AuditFilter,
        limit: usize,
    ) -> Result<(Vec<AuditRecord>, bool), AuditError> {
        let mut out = VecDeque::new();
        let mut truncated = false;
        for path in files_oldest_first(&self.config) {
            let Some(f) = open_for_reading(&path)? else {
                continue;
            };
            for line in BufReader::new(f).split(b'\n') {
                let line = line.map_err(|e| AuditError::Read {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                // A torn line (write failed half-way) is skipped, not fatal.
                let Ok(rec) = serde_json::from_slice::<AuditRecord>(&line) else {
                    continue;
                };
                if filter.matches(&rec) {
                    if out.len() == limit {
                        out.pop_front();
                        truncated = true;
                    }
                    if limit > 0 {
                        out.push_back(rec);
                    }
                }
            }
        }
        Ok((out.into(), truncated))
    }
}

fn encode(rec: &AuditRecord) -> Vec<u8> {
    let mut line = serde_json::to_vec(rec).expect("audit record serializes");
    line.push(b'\n');
    line
}

/// The last complete, parsable line of a file (read from the end).
fn last_line(path: &Path) -> Option<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = File::open(path).ok()?;
    let meta = f.metadata().ok()?;
    if !meta.is_file() {
        return None; // e.g. /dev/full in tests: endless reads
    }
    let len = meta.len();
    let take = len.min(1 << 20);
    f.seek(SeekFrom::Start(len - take)).ok()?;
    let mut buf = Vec::new();
    f.take(take).read_to_end(&mut buf).ok()?;
    buf.split(|b| *b == b'\n')
        .rev()
        .find(|l| !l.is_empty() && serde_json::from_slice::<AuditRecord>(l).is_ok())
        .map(<[u8]>::to_vec)
}

/// Filters of `Audit/Query`; empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub since_unix_ms: i64,
    pub until_unix_ms: i64,
    pub identity: String,
    /// Exact method, or a prefix ending in '/'.
    pub method: String,
    pub decision: String,
}

impl AuditFilter {
    fn matches(&self, r: &AuditRecord) -> bool {
        if !self.identity.is_empty() && r.identity != self.identity {
            return false;
        }
        if !self.decision.is_empty() && r.decision != self.decision {
            return false;
        }
        if !self.method.is_empty() {
            let ok = if self.method.ends_with('/') {
                r.method.starts_with(&self.method)
            } else {
                r.method == self.method
            };
            if !ok {
                return false;
            }
        }
        if self.since_unix_ms > 0 || self.until_unix_ms > 0 {
            let Ok(t) = chrono::DateTime::parse_from_rfc3339(&r.time) else {
                return false;
            };
            let ms = t.timestamp_millis();
            if self.since_unix_ms > 0 && ms < self.since_unix_ms {
                return false;
            }
            if self.until_unix_ms > 0 && ms > self.until_unix_ms {
                return false;
            }
        }
        true
    }
}

struct Writer {
    config: AuditConfig,
    file: Option<File>,
    size: u64,
    health: Arc<Mutex<Option<String>>>,
    stats: Arc<Stats>,
    /// Hash of the last line written (None until read from the existing log).
    chain: Option<[u8; 32]>,
}

const MAX_BATCH: usize = 1024;

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(j) => batch.push(j),
                    Err(_) => break,
                }
            }
            let lines = batch.len() as u64;
            let mut buf = Vec::new();
            let mut acks = Vec::new();
            let mut hash = self.chain.unwrap_or_else(|| self.seed_chain());
            for Job::Append(line, ack) in batch {
                hash = chain_line(&hash, &line, &mut buf);
                acks.extend(ack);
            }
            let result = self.write(&buf);
            if result.is_ok() {
                self.chain = Some(hash);
                use std::sync::atomic::Ordering::Relaxed;
                self.stats.lines.fetch_add(lines, Relaxed);
                self.stats.syncs.fetch_add(1, Relaxed);
            } else {
                // Lines that may be torn on disk do not count; the chain goes on from the last
                // line known written (verify skips unparsable lines).
            }
            *self.health.lock().expect("audit lock") = result.as_ref().err().map(|e| e.to_string());
            if let Err(e) = &result {
                tracing::error!(error = %e, "audit write failed");
            }
            for ack in acks {
                let _ = ack.send(result.clone());
            }
        }
    }

    /// Hash of the newest complete line already in the log (current file, else the newest
    /// rotated one), so the chain continues across restarts.
    fn seed_chain(&self) -> [u8; 32] {
        let mut files = vec![self.config.path.clone()];
        files.extend((1..=self.config.keep).map(|i| rotated(&self.config.path, i)));
        for f in files {
            if let Some(line) = last_line(&f) {
                return sha256(&line);
            }
        }
        [0; 32]
    }

    fn fail(&self, reason: impl std::fmt::Display) -> AuditError {
        AuditError::Write {
            path: self.config.path.clone(),
            reason: reason.to_string(),
        }
    }

    fn ensure_open(&mut self) -> Result<(), AuditError> {
        // Removed or replaced behind our back (a stray logrotate, an operator)? Writing on
        // into the unlinked inode would lose the lines: reopen at the path instead.
        if let Some(f) = &self.file {
            use std::os::unix::fs::MetadataExt;
            let same = match (f.metadata(), std::fs::symlink_metadata(&self.config.path)) {
                (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
                _ => false,
            };
            if !same {
                tracing::warn!(path = %self.config.path.display(), "audit log was moved or removed; reopening it");
                self.file = None;
            }
        }
        if self.file.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
                .open(&self.config.path)
                .map_err(|e| self.fail(e))?;
            self.size = f.metadata().map_err(|e| self.fail(e))?.len();
            self.file = Some(f);
        }
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), AuditError> {
        self.file = None;
        let path = &self.config.path.clone();
        if self.config.keep == 0 {
            std::fs::remove_file(path).map_err(|e| self.fail(e))?;
        } else {
            for i in (1..self.config.keep).rev() {
                let from = rotated(path, i);
                if from.exists() {
                    std::fs::rename(&from, rotated(path, i + 1)).map_err(|e| self.fail(e))?;
                }
            }
            std::fs::rename(path, rotated(path, 1)).map_err(|e| self.fail(e))?;
        }
        self.ensure_open()?;
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| self.fail(e))?;
        }
        Ok(())
    }

    fn write(&mut self, buf: &[u8]) -> Result<(), AuditError> {
        self.ensure_open()?;
        if self.size > 0 && self.size + buf.len() as u64 > self.config.max_bytes {
            self.rotate()?;
        }
        let file = self.file.as_mut().expect("opened above");
        let res = file.write_all(buf).and_then(|_| file.sync_data());
        match res {
            Ok(()) => {
                self.size += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Reopen next time: the file may have been replaced or the disk fixed.
                self.file = None;
                Err(self.fail(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: usize, identity: &str, decision: &str) -> AuditRecord {
        AuditRecord {
            prev: String::new(),
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            event: "call".into(),
            call_id: format!("c{i}"),
            identity: identity.into(),
            groups: vec![],
            transport: "mtls".into(),
            peer: "127.0.0.1:1".into(),
            method: "/berth.v1.Node/Info".into(),
            target: String::new(),
            decision: decision.into(),
            reason: String::new(),
            code: 0,
            duration_us: 1,
            bytes_sent: 2,
            bytes_received: 3,
            detail: None,
        }
    }

    #[tokio::test]
    async fn appends_rotates_and_queries_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = AuditConfig {
            path: dir.path().join("audit.log"),
            max_bytes: 2000,
            keep: 3,
        };
        let log = AuditLog::open(cfg.clone()).unwrap();
        for i in 0..30 {
            let who = if i % 2 == 0 { "cn:a" } else { "cn:b" };
            log.append(&rec(i, who, "allow")).await.unwrap();
        }
        assert!(rotated(&cfg.path, 1).exists());
        assert!(
            !rotated(&cfg.path, 4).exists(),
            "keep=3 must bound the files"
        );
        for f in [cfg.path.clone(), rotated(&cfg.path, 1)] {
            assert!(std::fs::metadata(&f).unwrap().len() <= 2000);
        }
        let (all, _) = log.query(&AuditFilter::default(), 1000).unwrap();
        // Lines in the dropped files are gone, the rest are in order and complete.
        let ids: Vec<usize> = all
            .iter()
            .map(|r| r.call_id[1..].parse().unwrap())
            .collect();
        assert_eq!(*ids.last().unwrap(), 29);
        assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
        let f = AuditFilter {
            identity: "cn:b".into(),
            ..Default::default()
        };
        let (bs, truncated) = log.query(&f, 2).unwrap();
        assert!(truncated);
        assert_eq!(
            bs.iter().map(|r| r.call_id.as_str()).collect::<Vec<_>>(),
            ["c27", "c29"]
        );
    }

    #[tokio::test]
    async fn hash_chain_survives_rotation_and_restart_and_catches_edits() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = AuditConfig {
            path: dir.path().join("audit.log"),
            max_bytes: 2000,
            keep: 3,
        };
        {
            let log = AuditLog::open(cfg.clone()).unwrap();
            for i in 0..8 {
                log.append(&rec(i, "cn:a", "allow")).await.unwrap();
            }
        }
        // A restarted writer continues the chain from the last line on disk.
        let log = AuditLog::open(cfg.clone()).unwrap();
        for i in 8..12 {
            log.append(&rec(i, "cn:a", "allow")).await.unwrap();
        }
        assert!(rotated(&cfg.path, 1).exists());
        let ok = verify(&cfg).unwrap();
        assert_eq!(ok.lines, 12);
        assert!(ok.files >= 2);
        let (recs, _) = log.query(&AuditFilter::default(), 100).unwrap();
        assert!(recs.iter().all(|r| r.prev.len() == 64));

        // Edit one field of a line in the middle of the current file.
        let text = std::fs::read_to_string(&cfg.path).unwrap();
        let victim = text.lines().nth(1).unwrap();
        let edited = text.replacen(victim, &victim.replace("\"cn:a\"", "\"cn:b\""), 1);
        std::fs::write(&cfg.path, &edited).unwrap();
        match verify(&cfg) {
            Err(AuditError::Tampered { path, line, .. }) => {
                assert_eq!(path, cfg.path);
                assert_eq!(line, 3, "the line after the edited one no longer chains");
            }
            other => panic!("{other:?}"),
        }
        // Removing a line is caught too.
        let removed: Vec<&str> = text
            .lines()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, l)| l)
            .collect();
        std::fs::write(&cfg.path, removed.join("\n") + "\n").unwrap();
        assert!(matches!(
            verify(&cfg),
            Err(AuditError::Tampered { line: 2, .. })
        ));
        // A torn (unparsable) line is skipped, not a break.
        std::fs::write(&cfg.path, format!("{text}{{\"torn\n")).unwrap();
        assert_eq!(verify(&cfg).unwrap().skipped, 1);
    }

    #[tokio::test]
    async fn a_removed_log_is_recreated_not_written_into_the_void() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(AuditConfig::new(&path)).unwrap();
        log.append(&rec(0, "cn:a", "allow")).await.unwrap();
        std::fs::rename(&path, dir.path().join("moved.log")).unwrap();
        log.append(&rec(1, "cn:a", "allow")).await.unwrap();
        let (now, _) = log.query(&AuditFilter::default(), 10).unwrap();
        assert_eq!(
            now.iter().map(|r| r.call_id.as_str()).collect::<Vec<_>>(),
            ["c1"]
        );
        let moved = std::fs::read_to_string(dir.path().join("moved.log")).unwrap();
        assert_eq!(moved.lines().count(), 1);
    }

    #[tokio::test]
    async fn write_failure_is_reported_to_the_caller() {
        // /dev/full accepts open(O_APPEND) but every write fails with ENOSPC.
        let log = AuditLog::open(AuditConfig::new("/dev/full")).unwrap();
        let e = log.append(&rec(0, "cn:a", "allow")).await.unwrap_err();
        match &e {
            AuditError::Write { reason, .. } => assert!(reason.contains("No space"), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert!(log.last_error().is_some());
    }

    #[tokio::test]
    async fn missing_directory_fails_the_write() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(AuditConfig::new(dir.path().join("nope/audit.log"))).unwrap();
        assert!(matches!(
            log.append(&rec(0, "cn:a", "allow")).await,
            Err(AuditError::Write { .. })
        ));
    }
}
