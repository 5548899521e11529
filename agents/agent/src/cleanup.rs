//! The sweeper: removes expired container dirs, enforces the disk budgets, reports usage.
//!
//! Usage is recomputed for dirs where the file watcher (inotify through `notify`) saw
//! changes, plus every dir at each full scan, instead of walking the whole log root on
//! every pass.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::events::Record;
use crate::filelogs::FileLogs;
use crate::filelogs::layout::RelPath;
use crate::fsops::FileInfo;
use crate::retention::{self, Action, Policy, Reason};

pub const USAGE_FILE: &str = "usage.json";

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    pub removed_dirs: Vec<RelPath>,
    pub removed_files: Vec<PathBuf>,
    pub skipped: Vec<String>,
    pub scanned_dirs: usize,
    pub total_bytes: u64,
}

#[derive(Debug, Serialize)]
struct PodUsage {
    namespace: String,
    pod: String,
    bytes: u64,
    over_budget: bool,
}

#[derive(Debug, Serialize)]
struct UsageReport {
    updated_at: String,
    total_bytes: u64,
    node_budget: u64,
    pod_budget: u64,
    pods: BTreeMap<String, PodUsage>,
}

pub struct Sweeper {
    filelogs: Arc<FileLogs>,
    policy: Policy,
    state_dir: PathBuf,
    usage: Mutex<BTreeMap<RelPath, Vec<FileInfo>>>,
    dirty: Arc<Mutex<BTreeSet<RelPath>>>,
    last_full: Mutex<Option<Instant>>,
    full_every: Duration,
    reported_skips: Mutex<BTreeSet<RelPath>>,
    watcher: Mutex<Option<notify::RecommendedWatcher>>,
}

impl Sweeper {
    pub fn new(
        filelogs: Arc<FileLogs>,
        policy: Policy,
        state_dir: &Path,
        full_every: Duration,
    ) -> Sweeper {
        Sweeper {
            filelogs,
            policy,
            state_dir: state_dir.to_path_buf(),
            usage: Mutex::new(BTreeMap::new()),
            dirty: Arc::new(Mutex::new(BTreeSet::new())),
            last_full: Mutex::new(None),
            full_every,
            reported_skips: Mutex::new(BTreeSet::new()),
            watcher: Mutex::new(None),
        }
    }

    /// Watches the log root (without following symlinks) and marks the container dir of
    /// every change as dirty. Without a watcher every pass is a full scan.
    pub fn watch(&self, log_root: &Path) {
        use notify::Watcher;
        let dirty = self.dirty.clone();
        let root = log_root.to_path_buf();
        let depth = self.filelogs.layout().depth();
        let handler = move |res: notify::Result<notify::Event>| {
            let Ok(ev) = res else { return };
            // Opens and reads (the sweeper's own walks among them) change no usage.
            use notify::event::{AccessKind, AccessMode, EventKind};
            if matches!(ev.kind, EventKind::Access(k) if k != AccessKind::Close(AccessMode::Write))
            {
                return;
            }
            let mut d = dirty.lock().expect("dirty");
            for p in ev.paths {
                let Ok(rel) = p.strip_prefix(&root) else {
                    continue;
                };
                let comps: Vec<String> = rel
                    .components()
                    .take(depth)
                    .filter_map(|c| c.as_os_str().to_str().map(str::to_string))
                    .collect();
                if comps.len() == depth
                    && let Ok(r) = RelPath::new(comps)
                {
                    d.insert(r);
                }
            }
        };
        let cfg = notify::Config::default().with_follow_symlinks(false);
        match notify::RecommendedWatcher::new(handler, cfg).and_then(|mut w| {
            w.watch(log_root, notify::RecursiveMode::Recursive)
                .map(|()| w)
        }) {
            Ok(w) => *self.watcher.lock().expect("watcher") = Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the log root; usage is recomputed by full scans only (raise fs.inotify.max_user_watches?)")
            }
        }
    }

    fn has_watcher(&self) -> bool {
        self.watcher.lock().expect("watcher").is_some()
    }

    fn remove_dir(&self, dir: &RelPath, reason: Reason, report: &mut SweepReport) {
        let fs = self.filelogs.fs();
        // Exclusive: no dir is created or metadata written while this one goes.
        let _guard = self.filelogs.fs_lock.write().expect("fs lock");
        // Decided without the lock: a container may have come back for this dir meanwhile.
        let meta = {
            let store = self.filelogs.store.lock().expect("store");
            match store.records.get(dir) {
                Some(r) if !r.live.is_empty() => return,
                Some(r) => r.metadata.clone(),
                None => None,
            }
        };
        let r = fs.remove_tree(dir);
        match r {
            Ok(rep) if rep.complete() => {
                if let Some(m) = &meta
                    && let Err(e) = fs.remove_tree(m)
                {
                    tracing::warn!(error = %e, path = %m, "cannot remove a metadata file");
                }
                if let Err(e) = fs.remove_empty_parents(dir) {
                    tracing::warn!(error = %e, dir = %dir, "cannot remove empty parents");
                }
                let rec = self.filelogs.store.lock().expect("store").forget(dir);
                self.filelogs.mark_dirty();
                self.usage.lock().expect("usage").remove(dir);
                let rec = rec.unwrap_or_else(|| crate::state::DirRecord {
                    namespace: String::new(),
                    pod: String::new(),
                    pod_uid: String::new(),
                    container: String::new(),
                    metadata: None,
                    live: BTreeSet::new(),
                    removed_at: None,
                });
                tracing::info!(dir = %dir, reason = reason.as_str(), files = rep.files, dirs = rep.dirs, "log dir removed");
                self.filelogs.events().emit(Record {
                    kind: "cleanup_removed".into(),
                    namespace: rec.namespace,
                    pod: rec.pod,
                    pod_uid: rec.pod_uid,
                    container: rec.container,
                    path: dir.to_string(),
                    reason: reason.as_str().into(),
                    ..Default::default()
                });
                report.removed_dirs.push(dir.clone());
            }
            Ok(rep) => {
                report.skipped.extend(rep.skipped.iter().cloned());
                if self
                    .reported_skips
                    .lock()
                    .expect("skips")
                    .insert(dir.clone())
                {
                    tracing::warn!(dir = %dir, skipped = ?rep.skipped, "log dir only partly removed; left in place");
                    self.filelogs.events().emit(Record {
                        kind: "cleanup_skipped".into(),
                        path: dir.to_string(),
                        reason: rep.skipped.join("; "),
                        ..Default::default()
                    });
                }
            }
            Err(e) => {
                report.skipped.push(format!("{dir}: {e}"));
                if self
                    .reported_skips
                    .lock()
                    .expect("skips")
                    .insert(dir.clone())
                {
                    tracing::warn!(dir = %dir, error = %e, "cannot remove a log dir");
                    self.filelogs.events().emit(Record {
                        kind: "cleanup_skipped".into(),
                        path: dir.to_string(),
                        reason: e.to_string(),
                        ..Default::default()
                    });
                }
            }
        }
    }

    /// One pass: expiry, usage refresh, budgets, usage report, state save.
    pub fn sweep(&self) -> SweepReport {
        let mut report = SweepReport::default();
        // Metadata still queued belongs to the dirs this pass looks at.
        self.filelogs.flush_metadata();
        let now = self.filelogs.clock().now();

        let expired = {
            let store = self.filelogs.store.lock().expect("store");
            retention::expired(&store.records, now, self.policy.retention)
        };
        for dir in expired {
            self.remove_dir(&dir, Reason::Expired, &mut report);
        }

        // Usage refresh.
        let full = {
            let mut last = self.last_full.lock().expect("last");
            let due = !self.has_watcher() || last.is_none_or(|t| t.elapsed() >= self.full_every);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        let dirty: BTreeSet<RelPath> = std::mem::take(&mut *self.dirty.lock().expect("dirty"));
        let known: Vec<RelPath> = self
            .filelogs
            .store
            .lock()
            .expect("store")
            .records
            .keys()
            .cloned()
            .collect();
        {
            let mut usage = self.usage.lock().expect("usage");
            usage.retain(|d, _| known.contains(d));
            for d in &known {
                if full || dirty.contains(d) || !usage.contains_key(d) {
                    match self.filelogs.fs().files(d) {
                        Ok(files) => {
                            usage.insert(d.clone(), files);
                        }
                        Err(e) => tracing::warn!(dir = %d, error = %e, "cannot measure a log dir"),
                    }
                    report.scanned_dirs += 1;
                }
            }
        }

        // Budgets.
        let actions = {
            let usage = self.usage.lock().expect("usage");
            let store = self.filelogs.store.lock().expect("store");
            retention::budget(&usage, &store.records, &self.policy)
        };
        for a in actions {
            match a {
                Action::RemoveDir { dir, reason } => self.remove_dir(&dir, reason, &mut report),
                Action::RemoveFile {
                    path,
                    bytes,
                    reason,
                } => match self.filelogs.fs().remove_file(&path) {
                    Ok(true) => {
                        tracing::info!(path = %path.display(), bytes, reason = reason.as_str(), "rotated log file removed");
                        self.filelogs.events().emit(Record {
                            kind: "budget_removed".into(),
                            path: path.display().to_string(),
                            reason: reason.as_str().into(),
                            ..Default::default()
                        });
                        let mut usage = self.usage.lock().expect("usage");
                        for files in usage.values_mut() {
                            files.retain(|f| f.path != path);
                        }
                        report.removed_files.push(path);
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cannot remove a rotated log file")
                    }
                },
            }
        }

        report.total_bytes = self.write_usage_report();
        self.filelogs.save_if_dirty();
        report
    }

    fn write_usage_report(&self) -> u64 {
        let usage = self.usage.lock().expect("usage");
        let store = self.filelogs.store.lock().expect("store");
        let by_uid = retention::pod_usage(&usage, &store.records);
        let mut pods = BTreeMap::new();
        for (uid, bytes) in &by_uid {
            let rec = store.records.values().find(|r| &r.pod_uid == uid);
            let over = self.policy.pod_budget.is_some_and(|b| *bytes > b);
            if over {
                tracing::warn!(pod_uid = %uid, bytes, budget = self.policy.pod_budget, "pod is over its log disk budget and has no rotated files left to remove");
            }
            pods.insert(
                uid.clone(),
                PodUsage {
                    namespace: rec.map(|r| r.namespace.clone()).unwrap_or_default(),
                    pod: rec.map(|r| r.pod.clone()).unwrap_or_default(),
                    bytes: *bytes,
                    over_budget: over,
                },
            );
        }
        let total = by_uid.values().sum();
        let rep = UsageReport {
            updated_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            total_bytes: total,
            node_budget: self.policy.node_budget.unwrap_or(0),
            pod_budget: self.policy.pod_budget.unwrap_or(0),
            pods,
        };
        let path = self.state_dir.join(USAGE_FILE);
        let tmp = path.with_extension("json.tmp");
        let res = std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(&rep).expect("usage serialises"),
        )
        .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = res {
            tracing::warn!(error = %e, path = %path.display(), "cannot write the usage report");
        }
        total
    }
}
