//! The local store's earlier formats, read once to be migrated: `<net>.json` (`berth-ipam/1`
//! or `/2`, every lease in one JSON document) and, for version 2, the journal
//! `<net>.journal.jsonl` (one JSON line per transaction).
//!
//! After the migration `<net>.json` says `berth-ipam/3`: a build that knows only the older
//! formats then refuses the store ("unknown format") instead of reading an empty or stale
//! network and handing out addresses in use.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::IpamError;
use crate::state::{Lease, Leases};

const FORMAT_V2: &str = "berth-ipam/2";
const FORMAT_V1: &str = "berth-ipam/1";
/// What `<net>.json` says once its leases live in `<net>.leases`.
pub(super) const FORMAT_MOVED: &str = "berth-ipam/3";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile<'a> {
    format: Cow<'a, str>,
    leases: Vec<Lease>,
}

/// One transaction of a version 2 journal.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JournalEntry {
    #[serde(default)]
    puts: Vec<Lease>,
    #[serde(default)]
    deletes: Vec<IpAddr>,
}

/// The marker `<net>.json` holds after a migration.
pub(super) fn moved_marker() -> Vec<u8> {
    serde_json::to_vec(&StateFile {
        format: FORMAT_MOVED.into(),
        leases: vec![],
    })
    .expect("the marker serializes")
}

/// What an older-format store holds.
pub(super) enum Legacy {
    /// No `<net>.json`: nothing was ever written in an older format.
    Absent,
    /// The marker: the leases were moved to the current format.
    Moved,
    /// Leases to migrate.
    Leases(Leases),
}

/// Reads `<net>.json` and replays `<net>.journal.jsonl` over it.
pub(super) fn load(state_path: &Path, journal_path: &Path) -> Result<Legacy, IpamError> {
    let text = match std::fs::read(state_path) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Legacy::Absent),
        Err(source) => {
            return Err(IpamError::Io {
                path: state_path.to_path_buf(),
                source,
            });
        }
    };
    let corrupt = |path: &Path, reason: String| IpamError::CorruptStore {
        path: path.to_path_buf(),
        reason,
    };
    let file: StateFile = serde_json::from_slice(&text)
        .map_err(|e| corrupt(state_path, format!("not valid JSON: {e}")))?;
    if file.format == FORMAT_MOVED {
        return Ok(Legacy::Moved);
    }
    if file.format != FORMAT_V2 && file.format != FORMAT_V1 {
        return Err(corrupt(
            state_path,
            format!(
                "unknown format {:?}, expected {FORMAT_V2:?} or {FORMAT_V1:?}",
                file.format
            ),
        ));
    }
    let mut leases = Leases::new();
    for l in file.leases {
        let ip = l.ip;
        if leases.insert(ip, l).is_some() {
            return Err(corrupt(state_path, format!("address {ip} is listed twice")));
        }
    }
    check_attachments(&leases).map_err(|r| corrupt(state_path, r))?;
    let text = match std::fs::read(journal_path) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound => Vec::new(),
        Err(source) => {
            return Err(IpamError::Io {
                path: journal_path.to_path_buf(),
                source,
            });
        }
    };
    // Only complete lines were committed; a torn last line was never acknowledged.
    let end = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    for (n, line) in text[..end].split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let entry: JournalEntry = serde_json::from_slice(line).map_err(|e| {
            corrupt(
                journal_path,
                format!("line {} is not a journal entry: {e}", n + 1),
            )
        })?;
        for ip in &entry.deletes {
            leases.remove(ip);
        }
        for l in entry.puts {
            leases.insert(l.ip, l);
        }
    }
    check_attachments(&leases).map_err(|r| corrupt(journal_path, r))?;
    Ok(Legacy::Leases(leases))
}

/// Refuses a state in which one attachment holds two addresses of one IP family.
fn check_attachments(leases: &Leases) -> Result<(), String> {
    let mut attachments = BTreeSet::new();
    for l in leases.values() {
        let family = crate::pool::Family::of(l.ip);
        if let Some(a) = l.attachment()
            && !attachments.insert((a, family))
        {
            return Err(format!(
                "attachment {}/{} holds two {family} addresses",
                a.0, a.1
            ));
        }
    }
    Ok(())
}
