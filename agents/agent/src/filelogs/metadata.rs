//! Writes the metadata files beside the log dirs off the CreateContainer path.
//!
//! The runtime waits for the agent's answer before it creates the container; the answer needs
//! the dirs (they are bind-mounted), not the metadata file, which is for the node's log
//! collector. A file created and renamed into place is the slowest step of that answer on a
//! busy disk, so one thread writes them afterwards, in the order they were queued. Like dir
//! creation it holds the log root's lock shared: the two run side by side, and only a
//! removal (which holds it exclusively) waits for them or makes them wait.

use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};

use super::layout::RelPath;
use crate::fsops::LogFs;

enum Job {
    Write {
        path: RelPath,
        data: Vec<u8>,
        container_id: String,
    },
    Flush(mpsc::SyncSender<()>),
}

/// The queue of metadata writes and the thread that does them. Dropping it lets the thread
/// finish what is queued and end.
pub struct MetadataWriter {
    jobs: Mutex<mpsc::Sender<Job>>,
}

impl MetadataWriter {
    /// Starts the writer thread over `fs`; `fs_lock` is held shared for each write, so a
    /// write never waits for a CreateContainer's dirs, nor they for it; only removal excludes.
    pub fn start(fs: Arc<dyn LogFs>, fs_lock: Arc<RwLock<()>>) -> MetadataWriter {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("filelogs-metadata".into())
            .spawn(move || {
                for job in rx {
                    match job {
                        Job::Write {
                            path,
                            data,
                            container_id,
                        } => {
                            let _guard = fs_lock.read().expect("fs lock");
                            if let Err(e) = fs.write_file(&path, &data) {
                                // The container runs and logs either way; only the
                                // collector's tags for it are missing.
                                tracing::warn!(path = %path, id = %container_id, error = %e,
                                    "cannot write the file-log metadata; the collector will see the logs without their tags");
                            }
                        }
                        Job::Flush(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            })
            .expect("spawning the metadata writer thread");
        MetadataWriter {
            jobs: Mutex::new(tx),
        }
    }

    /// Queues a write of `data` to `path` (replacing the file).
    pub fn queue(&self, path: RelPath, data: Vec<u8>, container_id: &str) {
        let job = Job::Write {
            path,
            data,
            container_id: container_id.to_string(),
        };
        if self.jobs.lock().expect("metadata queue").send(job).is_err() {
            tracing::error!("the metadata writer thread is gone: metadata files are not written");
        }
    }

    /// Returns when every write queued before the call is done (shutdown, tests).
    pub fn flush(&self) {
        let (done, wait) = mpsc::sync_channel(1);
        if self
            .jobs
            .lock()
            .expect("metadata queue")
            .send(Job::Flush(done))
            .is_ok()
        {
            let _ = wait.recv();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsops::RealFs;

    fn rp(s: &str) -> RelPath {
        RelPath::try_from(s.to_string()).unwrap()
    }

    /// A log root with `ns/pod/app` made, its lock, and a writer over both.
    fn writer_over_a_log_root() -> (tempfile::TempDir, Arc<RwLock<()>>, MetadataWriter) {
        let dir = tempfile::tempdir().unwrap();
        let fs = Arc::new(RealFs::open(&dir.path().join("root")).unwrap());
        fs.ensure_dir(&rp("ns/pod/app"), 0o755).unwrap();
        let lock = Arc::new(RwLock::new(()));
        let writer = MetadataWriter::start(fs, lock.clone());
        (dir, lock, writer)
    }

    #[test]
    fn writes_in_queue_order_survive_a_failed_write_and_flush_waits_for_them() {
        let (dir, lock, writer) = writer_over_a_log_root();
        // Held as a removal holds it: nothing can be written until it is released, so flush
        // must really wait.
        let held = lock.write().unwrap();
        writer.queue(rp("ns/pod/app.berth.json"), b"first".to_vec(), "c1");
        writer.queue(rp("gone/pod/app.berth.json"), b"lost".to_vec(), "c2");
        writer.queue(rp("ns/pod/app.berth.json"), b"second".to_vec(), "c3");
        let meta = dir.path().join("root/ns/pod/app.berth.json");
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!meta.exists(), "written while the fs lock was held");
        drop(held);
        writer.flush();
        assert_eq!(std::fs::read(&meta).unwrap(), b"second");
        assert!(!dir.path().join("root/gone").exists());
    }

    #[test]
    fn a_write_does_not_wait_for_dirs_being_created_meanwhile() {
        let (dir, lock, writer) = writer_over_a_log_root();
        // Held as a CreateContainer holds it while it makes dirs: shared.
        let creating = lock.read().unwrap();
        writer.queue(rp("ns/pod/app.berth.json"), b"tags".to_vec(), "c1");
        // Flushed on a thread of its own, so a write that waited would fail the test, not hang it.
        let (done, wait) = mpsc::channel();
        std::thread::spawn(move || {
            writer.flush();
            let _ = done.send(());
        });
        assert!(
            wait.recv_timeout(std::time::Duration::from_secs(5)).is_ok(),
            "the metadata write waited for a CreateContainer's shared hold of the lock"
        );
        assert_eq!(
            std::fs::read(dir.path().join("root/ns/pod/app.berth.json")).unwrap(),
            b"tags"
        );
        drop(creating);
    }
}
