//! Watching config files (policy, TLS material) for changes: the parent directories are
//! watched, so editors' write-then-rename is seen, and so is the way kubelet updates mounted
//! Secrets and ConfigMaps (the files are symlinks through `..data`, which is swapped by
//! renaming `..data_tmp` over it). Reloads wait until the files have been quiet for a moment.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Quiet time after the last change before `on_change` runs.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// How often the fallback poller looks at the files when inotify is unavailable (e.g. the
/// node ran out of inotify instances).
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// A running watch; dropping it stops it.
pub type FileWatcher = Box<dyn notify::Watcher + Send>;

/// Calls `on_change` (on a dedicated thread) after changes to any of `files`; returns
/// `false` from `on_change` to stop. The watch lasts as long as the returned watcher.
/// Uses inotify, or polling every [`POLL_INTERVAL`] if inotify cannot be set up.
pub fn watch_files(
    files: &[PathBuf],
    on_change: impl Fn() -> bool + Send + 'static,
) -> Result<FileWatcher, notify::Error> {
    watch_files_with(files, on_change, false)
}

fn watch_files_with(
    files: &[PathBuf],
    on_change: impl Fn() -> bool + Send + 'static,
    force_poll: bool,
) -> Result<FileWatcher, notify::Error> {
    use notify::{RecursiveMode, Watcher};
    let names: BTreeSet<OsString> = files
        .iter()
        .filter_map(|f| f.file_name().map(|n| n.to_os_string()))
        .collect();
    let dirs: BTreeSet<PathBuf> = files
        .iter()
        .map(|f| {
            f.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf()
        })
        .collect();
    let (kick, kicked) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("berth-watch".into())
        .spawn(move || {
            while kicked.recv().is_ok() {
                while kicked.recv_timeout(DEBOUNCE).is_ok() {}
                if !on_change() {
                    return;
                }
            }
        })
        .map_err(notify::Error::io)?;
    let handler = move |ev: notify::Result<notify::Event>| {
        let Ok(ev) = ev else { return };
        if ev.kind.is_access() {
            return;
        }
        let ours = ev.paths.iter().any(|p| {
            p.file_name()
                .is_some_and(|n| names.contains(n) || n.as_encoded_bytes().starts_with(b".."))
        });
        if ours {
            let _ = kick.send(());
        }
    };
    let inotify = if force_poll {
        Err(notify::Error::generic("polling forced"))
    } else {
        notify::RecommendedWatcher::new(handler.clone(), notify::Config::default())
    }
    .and_then(|mut w| {
        for d in &dirs {
            w.watch(d, RecursiveMode::NonRecursive)?;
        }
        Ok(w)
    });
    match inotify {
        Ok(w) => Ok(Box::new(w)),
        Err(e) => {
            tracing::warn!(error = %e, "inotify unavailable; polling config files every {POLL_INTERVAL:?}");
            let cfg = notify::Config::default()
                .with_poll_interval(POLL_INTERVAL)
                .with_compare_contents(true);
            let mut w = notify::PollWatcher::new(handler, cfg)?;
            for d in &dirs {
                w.watch(d, RecursiveMode::NonRecursive)?;
            }
            Ok(Box::new(w))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn fires_on_rewrite(force_poll: bool) {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("policy.toml");
        std::fs::write(&f, "a").unwrap();
        let n = Arc::new(AtomicUsize::new(0));
        let n2 = n.clone();
        let _w = watch_files_with(
            std::slice::from_ref(&f),
            move || {
                n2.fetch_add(1, Ordering::SeqCst);
                true
            },
            force_poll,
        )
        .unwrap();
        // Let a poller take its first snapshot.
        std::thread::sleep(Duration::from_millis(if force_poll { 500 } else { 50 }));
        std::fs::write(dir.path().join("unrelated.log"), "x").unwrap();
        std::fs::write(&f, "bb").unwrap();
        let deadline = std::time::Instant::now() + POLL_INTERVAL * 3;
        while n.load(Ordering::SeqCst) == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            n.load(Ordering::SeqCst) >= 1,
            "change not seen (poll={force_poll})"
        );
    }

    #[test]
    fn inotify_sees_a_rewrite() {
        fires_on_rewrite(false);
    }

    #[test]
    fn polling_fallback_sees_a_rewrite() {
        fires_on_rewrite(true);
    }
}
