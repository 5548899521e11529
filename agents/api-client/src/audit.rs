//! The audit log's format and its check, shared by the server that writes it (berth-api)
//! and the tools that read it (`berthctl audit verify`): one JSON [`AuditRecord`] per line,
//! each naming the SHA-256 of the line before it (`prev`), so that an edited, removed or
//! reordered line breaks the chain; rotated files `audit.log.1` … `audit.log.<keep>`.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    #[error(
        "audit log {path} is not writable ({reason}): the call was refused; fix the disk or path"
    )]
    Write { path: PathBuf, reason: String },
    #[error("audit writer has stopped: restart the agent")]
    Stopped,
    #[error("cannot read audit log {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error(
        "audit log {path} line {line}: hash chain broken ({reason}): lines were edited, removed or reordered"
    )]
    Tampered {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// SHA-256 (hex) of the previous line in the log: the lines form a hash chain, so an
    /// edited, removed or reordered line is detected by [`verify`]. Set by the writer.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prev: String,
    /// RFC 3339, milliseconds, UTC.
    pub time: String,
    /// `call` (one per call), `intent` (before a streaming or mutating call runs) or `debug`
    /// (an event inside a debug session, with `detail`).
    pub event: String,
    pub call_id: String,
    pub identity: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    pub transport: String,
    pub peer: String,
    pub method: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target: String,
    /// `allow` or `deny`.
    pub decision: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// gRPC status code of the result.
    pub code: i32,
    pub duration_us: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Details of a `debug` event (berth-debug's event as JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

/// Where and how big.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    pub path: PathBuf,
    /// Rotate when the file would grow past this many bytes.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Rotated files kept (`audit.log.1` … `audit.log.<keep>`).
    #[serde(default = "default_keep")]
    pub keep: u32,
}

fn default_max_bytes() -> u64 {
    64 << 20
}
fn default_keep() -> u32 {
    5
}

impl AuditConfig {
    pub fn new(path: impl Into<PathBuf>) -> AuditConfig {
        AuditConfig {
            path: path.into(),
            max_bytes: default_max_bytes(),
            keep: default_keep(),
        }
    }
}

/// The `i`-th rotated file of the log at `path` (`audit.log.1` is the newest).
pub fn rotated(path: &Path, i: u32) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

/// A line's hash, as the next line's `prev` names it (hex).
pub fn sha256(b: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(b).into()
}

/// Appends `line` (a serialized record ending in '\n') to `out` with `"prev"` set to `prev`;
/// returns the new line's hash.
pub fn chain_line(prev: &[u8; 32], line: &[u8], out: &mut Vec<u8>) -> [u8; 32] {
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    let start = out.len();
    out.extend_from_slice(b"{\"prev\":\"");
    out.extend_from_slice(hex::encode(prev).as_bytes());
    out.extend_from_slice(b"\",");
    // `body` is a JSON object from serde_json: "{...}", never empty.
    out.extend_from_slice(&body[1..]);
    let h = sha256(&out[start..]);
    out.push(b'\n');
    h
}

/// The log's files, oldest first: `audit.log.<keep>` … `audit.log.1`, then `audit.log`.
pub fn files_oldest_first(config: &AuditConfig) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = (1..=config.keep)
        .rev()
        .map(|i| rotated(&config.path, i))
        .collect();
    files.push(config.path.clone());
    files
}

/// Opens one of the log's files to read it; `None` when it does not exist (rotated files
/// come and go). Anything but a regular file is refused.
pub fn open_for_reading(path: &Path) -> Result<Option<File>, AuditError> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(AuditError::Read {
                path: path.to_path_buf(),
                reason: e.to_string(),
            });
        }
    };
    if !f.metadata().is_ok_and(|m| m.is_file()) {
        return Err(AuditError::Read {
            path: path.to_path_buf(),
            reason: "not a regular file".into(),
        });
    }
    Ok(Some(f))
}

/// What [`verify`] checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub files: usize,
    pub lines: usize,
    /// Unparsable (torn) lines skipped.
    pub skipped: usize,
}

/// Checks the hash chain through the log and its rotated files, oldest first. The first
/// line's predecessor may have been rotated away, so it is taken on trust.
pub fn verify(config: &AuditConfig) -> Result<Verified, AuditError> {
    let mut report = Verified {
        files: 0,
        lines: 0,
        skipped: 0,
    };
    let mut expected: Option<[u8; 32]> = None;
    for path in files_oldest_first(config) {
        let Some(f) = open_for_reading(&path)? else {
            continue;
        };
        report.files += 1;
        for (i, line) in BufReader::new(f).split(b'\n').enumerate() {
            let line = line.map_err(|e| AuditError::Read {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            if line.is_empty() {
                continue;
            }
            let Ok(rec) = serde_json::from_slice::<AuditRecord>(&line) else {
                report.skipped += 1;
                continue;
            };
            if let Some(want) = expected
                && rec.prev != hex::encode(want)
            {
                return Err(AuditError::Tampered {
                    path,
                    line: i + 1,
                    reason: format!(
                        "prev is {:?}, the line before hashes to {}",
                        rec.prev,
                        hex::encode(want)
                    ),
                });
            }
            expected = Some(sha256(&line));
            report.lines += 1;
        }
    }
    Ok(report)
}
