//! Cleanup decisions, pure: which container dirs expired, which files go to meet the per-pod
//! and node-wide disk budgets. The sweeper ([`crate::cleanup`]) applies them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::filelogs::layout::RelPath;
use crate::fsops::FileInfo;
use crate::state::DirRecord;

/// Where "now" comes from; tests inject a manual clock.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> SystemTime;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told to.
pub struct ManualClock(Mutex<SystemTime>);

impl ManualClock {
    pub fn new(t: SystemTime) -> Self {
        ManualClock(Mutex::new(t))
    }

    pub fn advance(&self, d: Duration) {
        *self.0.lock().expect("clock") += d;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().expect("clock")
    }
}

pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Counted from the removal of a dir's last container.
    pub retention: Duration,
    pub pod_budget: Option<u64>,
    pub node_budget: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Expired,
    PodBudget,
    NodeBudget,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Expired => "retention expired",
            Reason::PodBudget => "pod over its disk budget",
            Reason::NodeBudget => "node over its disk budget",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    RemoveDir {
        dir: RelPath,
        reason: Reason,
    },
    RemoveFile {
        path: PathBuf,
        bytes: u64,
        reason: Reason,
    },
}

/// Dirs whose last container was removed at least `retention` ago.
pub fn expired(
    records: &BTreeMap<RelPath, DirRecord>,
    now: SystemTime,
    retention: Duration,
) -> Vec<RelPath> {
    let now = unix_secs(now);
    records
        .iter()
        .filter(|(_, r)| r.live.is_empty())
        .filter_map(|(dir, r)| {
            r.removed_at
                .filter(|t| now >= t.saturating_add(retention.as_secs()))
                .map(|_| dir.clone())
        })
        .collect()
}

/// Whether a file name looks like a rotated (no longer written) log: a numeric dotted
/// component (`app.log.1`, `app.3.log`), a date stamp (`20240101`, `2024-01-01`), or a
/// compression suffix.
pub fn is_rotated(name: &str) -> bool {
    const COMPRESSED: &[&str] = &[".gz", ".xz", ".zst", ".bz2", ".lz4", ".zip"];
    if COMPRESSED.iter().any(|s| name.ends_with(s)) {
        return true;
    }
    if name
        .split('.')
        .skip(1)
        .any(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()))
    {
        return true;
    }
    let b = name.as_bytes();
    let digits_run = b.windows(8).any(|w| w.iter().all(u8::is_ascii_digit));
    let dashed_date = b.windows(10).any(|w| {
        w.iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-' || *c == b'_' || *c == b'.'
            } else {
                c.is_ascii_digit()
            }
        })
    });
    digits_run || dashed_date
}

/// Rotated files that may be deleted, oldest first. The newest file of each directory is
/// never a candidate (it is the one being written, whatever its name).
fn candidates<'a>(files: impl Iterator<Item = &'a FileInfo>) -> Vec<&'a FileInfo> {
    let files: Vec<&FileInfo> = files.collect();
    let mut newest: BTreeMap<PathBuf, &FileInfo> = BTreeMap::new();
    for f in &files {
        let dir = f.path.parent().map(PathBuf::from).unwrap_or_default();
        let e = newest.entry(dir).or_insert(f);
        if (f.mtime, &f.path) > (e.mtime, &e.path) {
            *e = f;
        }
    }
    let mut c: Vec<&FileInfo> = files
        .into_iter()
        .filter(|f| {
            let dir = f.path.parent().map(PathBuf::from).unwrap_or_default();
            newest.get(&dir).is_none_or(|n| n.path != f.path)
        })
        .filter(|f| {
            f.path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(is_rotated)
        })
        .collect();
    c.sort_by(|a, b| (a.mtime, &a.path).cmp(&(b.mtime, &b.path)));
    c
}

/// Usage of each pod (by uid), from the usage of its container dirs.
pub fn pod_usage(
    usage: &BTreeMap<RelPath, Vec<FileInfo>>,
    records: &BTreeMap<RelPath, DirRecord>,
) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (dir, files) in usage {
        let uid = records
            .get(dir)
            .map(|r| r.pod_uid.clone())
            .unwrap_or_default();
        *out.entry(uid).or_insert(0) += files.iter().map(|f| f.bytes).sum::<u64>();
    }
    out
}

/// What to delete so every pod fits its budget and the node fits its own.
pub fn budget(
    usage: &BTreeMap<RelPath, Vec<FileInfo>>,
    records: &BTreeMap<RelPath, DirRecord>,
    policy: &Policy,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let mut deleted: BTreeSet<PathBuf> = BTreeSet::new();
    let mut freed_total = 0u64;

    if let Some(limit) = policy.pod_budget {
        let mut by_pod: BTreeMap<String, Vec<&RelPath>> = BTreeMap::new();
        for dir in usage.keys() {
            let uid = records
                .get(dir)
                .map(|r| r.pod_uid.clone())
                .unwrap_or_default();
            by_pod.entry(uid).or_default().push(dir);
        }
        for dirs in by_pod.values() {
            let mut total: u64 = dirs.iter().flat_map(|d| &usage[*d]).map(|f| f.bytes).sum();
            if total <= limit {
                continue;
            }
            for f in candidates(dirs.iter().flat_map(|d| &usage[*d])) {
                if total <= limit {
                    break;
                }
                total -= f.bytes;
                freed_total += f.bytes;
                deleted.insert(f.path.clone());
                actions.push(Action::RemoveFile {
                    path: f.path.clone(),
                    bytes: f.bytes,
                    reason: Reason::PodBudget,
                });
            }
        }
    }

    if let Some(limit) = policy.node_budget {
        let dir_bytes = |d: &RelPath| {
            usage
                .get(d)
                .map(|v| {
                    v.iter()
                        .filter(|f| !deleted.contains(&f.path))
                        .map(|f| f.bytes)
                        .sum::<u64>()
                })
                .unwrap_or(0)
        };
        let mut total: u64 = usage.values().flatten().map(|f| f.bytes).sum::<u64>() - freed_total;
        if total > limit {
            // First the dirs of removed containers, longest removed first.
            let mut removed: Vec<(&RelPath, u64)> = records
                .iter()
                .filter(|(_, r)| r.live.is_empty())
                .map(|(d, r)| (d, r.removed_at.unwrap_or(0)))
                .collect();
            removed.sort_by_key(|(d, t)| (*t, (*d).clone()));
            let mut gone: BTreeSet<&RelPath> = BTreeSet::new();
            for (d, _) in removed {
                if total <= limit {
                    break;
                }
                total -= dir_bytes(d);
                gone.insert(d);
                actions.push(Action::RemoveDir {
                    dir: d.clone(),
                    reason: Reason::NodeBudget,
                });
            }
            // Then rotated files of live containers, oldest first, node-wide.
            let live_files = usage
                .iter()
                .filter(|(d, _)| !gone.contains(d))
                .flat_map(|(_, v)| v)
                .filter(|f| !deleted.contains(&f.path));
            for f in candidates(live_files) {
                if total <= limit {
                    break;
                }
                total -= f.bytes;
                actions.push(Action::RemoveFile {
                    path: f.path.clone(),
                    bytes: f.bytes,
                    reason: Reason::NodeBudget,
                });
            }
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;

    fn rp(s: &str) -> RelPath {
        RelPath::try_from(s.to_string()).unwrap()
    }

    fn rec(uid: &str, live: &[&str], removed_at: Option<u64>) -> DirRecord {
        DirRecord {
            namespace: "ns".into(),
            pod: "p".into(),
            pod_uid: uid.into(),
            container: "c".into(),
            metadata: None,
            live: live.iter().map(|s| s.to_string()).collect(),
            removed_at,
        }
    }

    fn file(path: &str, bytes: u64, mtime: u64) -> FileInfo {
        FileInfo {
            path: path.into(),
            bytes,
            mtime: SystemTime::UNIX_EPOCH + Duration::from_secs(mtime),
        }
    }

    #[test]
    fn retention_counts_from_removal_with_an_injected_clock() {
        let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(100 * DAY));
        let removed = unix_secs(clock.now());
        let mut records = BTreeMap::new();
        records.insert(rp("ns/a/c"), rec("a", &[], Some(removed)));
        records.insert(rp("ns/b/c"), rec("b", &["live-id"], None));
        // Live but with an old removal mark (restarted container): never expires.
        records.insert(rp("ns/d/c"), rec("d", &["x"], Some(0)));
        let two_days = Duration::from_secs(2 * DAY);
        assert!(expired(&records, clock.now(), two_days).is_empty());
        clock.advance(Duration::from_secs(2 * DAY - 1));
        assert!(
            expired(&records, clock.now(), two_days).is_empty(),
            "one second early"
        );
        clock.advance(Duration::from_secs(1));
        assert_eq!(expired(&records, clock.now(), two_days), vec![rp("ns/a/c")]);
        // A dir without a removal time (never seen removed) does not expire.
        records.insert(rp("ns/e/c"), rec("e", &[], None));
        clock.advance(Duration::from_secs(365 * DAY));
        assert_eq!(expired(&records, clock.now(), two_days), vec![rp("ns/a/c")]);
    }

    #[test]
    fn rotated_names() {
        for yes in [
            "app.log.1",
            "app.1.log",
            "app.log.20240101",
            "app-2024-01-01.log",
            "app.log.gz",
            "x.zst",
            "a_2024.01.31.txt",
        ] {
            assert!(is_rotated(yes), "{yes}");
        }
        for no in [
            "app.log",
            "error.log",
            "out",
            "app-v2.log",
            "log.txt",
            "1234567.log",
        ] {
            assert!(!is_rotated(no), "{no}");
        }
    }

    #[test]
    fn pod_budget_removes_oldest_rotated_files_but_never_the_active_one() {
        let mut records = BTreeMap::new();
        records.insert(rp("ns/p/a"), rec("u1", &["1"], None));
        records.insert(rp("ns/p/b"), rec("u1", &["2"], None));
        records.insert(rp("ns/q/a"), rec("u2", &["3"], None));
        let mut usage = BTreeMap::new();
        usage.insert(
            rp("ns/p/a"),
            vec![
                file("ns/p/a/app.log", 100, 50),
                file("ns/p/a/app.log.2", 300, 10),
                file("ns/p/a/app.log.1", 300, 20),
            ],
        );
        usage.insert(rp("ns/p/b"), vec![file("ns/p/b/x.log", 400, 5)]);
        usage.insert(
            rp("ns/q/a"),
            vec![
                file("ns/q/a/app.log.1", 5000, 1),
                file("ns/q/a/app.log", 1, 2),
            ],
        );
        let policy = Policy {
            retention: Duration::ZERO,
            pod_budget: Some(800),
            node_budget: None,
        };
        let actions = budget(&usage, &records, &policy);
        // u1 has 1100 bytes: the oldest rotated (app.log.2, 300) brings it to 800.
        // u2 has 5001: its only rotated file goes; its active file stays.
        assert_eq!(
            actions,
            vec![
                Action::RemoveFile {
                    path: "ns/p/a/app.log.2".into(),
                    bytes: 300,
                    reason: Reason::PodBudget
                },
                Action::RemoveFile {
                    path: "ns/q/a/app.log.1".into(),
                    bytes: 5000,
                    reason: Reason::PodBudget
                },
            ]
        );
        assert_eq!(pod_usage(&usage, &records)["u1"], 1100);
    }

    #[test]
    fn newest_file_is_kept_even_if_it_looks_rotated() {
        let mut records = BTreeMap::new();
        records.insert(rp("ns/p/a"), rec("u1", &["1"], None));
        let mut usage = BTreeMap::new();
        usage.insert(
            rp("ns/p/a"),
            vec![
                file("ns/p/a/app-2024-01-01.log", 100, 1),
                file("ns/p/a/app-2024-01-02.log", 100, 2),
            ],
        );
        let policy = Policy {
            retention: Duration::ZERO,
            pod_budget: Some(1),
            node_budget: None,
        };
        assert_eq!(
            budget(&usage, &records, &policy),
            vec![Action::RemoveFile {
                path: "ns/p/a/app-2024-01-01.log".into(),
                bytes: 100,
                reason: Reason::PodBudget
            }]
        );
    }

    #[test]
    fn node_budget_removes_removed_dirs_first_then_rotated_files() {
        let mut records = BTreeMap::new();
        records.insert(rp("ns/old/c"), rec("u1", &[], Some(10)));
        records.insert(rp("ns/older/c"), rec("u2", &[], Some(5)));
        records.insert(rp("ns/live/c"), rec("u3", &["id"], None));
        let mut usage = BTreeMap::new();
        usage.insert(rp("ns/old/c"), vec![file("ns/old/c/a.log", 100, 1)]);
        usage.insert(rp("ns/older/c"), vec![file("ns/older/c/a.log", 100, 1)]);
        usage.insert(
            rp("ns/live/c"),
            vec![
                file("ns/live/c/a.log", 100, 9),
                file("ns/live/c/a.log.1", 100, 8),
            ],
        );
        let mut policy = Policy {
            retention: Duration::ZERO,
            pod_budget: None,
            node_budget: Some(350),
        };
        assert_eq!(
            budget(&usage, &records, &policy),
            vec![Action::RemoveDir {
                dir: rp("ns/older/c"),
                reason: Reason::NodeBudget
            }]
        );
        policy.node_budget = Some(150);
        assert_eq!(
            budget(&usage, &records, &policy),
            vec![
                Action::RemoveDir {
                    dir: rp("ns/older/c"),
                    reason: Reason::NodeBudget
                },
                Action::RemoveDir {
                    dir: rp("ns/old/c"),
                    reason: Reason::NodeBudget
                },
                Action::RemoveFile {
                    path: "ns/live/c/a.log.1".into(),
                    bytes: 100,
                    reason: Reason::NodeBudget
                },
            ]
        );
        policy.node_budget = Some(10_000);
        assert!(budget(&usage, &records, &policy).is_empty());
    }
}
