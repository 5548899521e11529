//! Event records: one JSON object per line in `<state_dir>/events.jsonl`, for refusals,
//! cleanup and budget actions, so an operator (or the API) can see what the agent did.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

pub const EVENTS_FILE: &str = "events.jsonl";
/// The file is rotated once (to `events.jsonl.1`) beyond this size.
pub const MAX_BYTES: u64 = 10 << 20;

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Record {
    /// RFC 3339, filled in by [`EventLog::emit`].
    pub time: String,
    /// `filelogs_refused`, `filelogs_unmounted`, `filelogs_mounted`, `cleanup_removed`,
    /// `cleanup_skipped`, `budget_removed`, `retention_started`.
    pub kind: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub pod: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub pod_uid: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub container: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub container_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub path: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub value: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

pub struct EventLog {
    path: PathBuf,
    lock: Mutex<()>,
}

impl EventLog {
    pub fn new(state_dir: &Path) -> EventLog {
        EventLog {
            path: state_dir.join(EVENTS_FILE),
            lock: Mutex::new(()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends a record. Failing to record is logged, never fatal.
    pub fn emit(&self, mut r: Record) {
        r.time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut line = serde_json::to_vec(&r).expect("event serialises");
        line.push(b'\n');
        let _g = self.lock.lock().expect("event lock");
        if std::fs::metadata(&self.path)
            .map(|m| m.len() > MAX_BYTES)
            .unwrap_or(false)
        {
            let _ = std::fs::rename(&self.path, self.path.with_extension("jsonl.1"));
        }
        let res = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut f| f.write_all(&line));
        if let Err(e) = res {
            tracing::warn!(error = %e, path = %self.path.display(), "cannot record an event");
        }
    }

    /// Every record so far (for tests and the API).
    pub fn read_all(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_json_lines() {
        let d = tempfile::tempdir().unwrap();
        let log = EventLog::new(d.path());
        log.emit(Record {
            kind: "filelogs_refused".into(),
            namespace: "ns".into(),
            value: "/proc".into(),
            ..Default::default()
        });
        log.emit(Record {
            kind: "cleanup_removed".into(),
            path: "ns/p/c".into(),
            ..Default::default()
        });
        let all = log.read_all();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0]["kind"], "filelogs_refused");
        assert_eq!(all[0]["value"], "/proc");
        assert!(all[0].get("pod").is_none(), "empty fields are omitted");
        assert!(all[1]["time"].as_str().unwrap().ends_with('Z'));
    }
}
