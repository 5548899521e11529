//! `berth.v1.Logs`: list, read/follow and download a pod's file-log directories, through
//! [`crate::logs_fs`] so nothing outside the directory can be reached.

use std::io::{self, SeekFrom, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_proto::v1;
use futures_util::Stream;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::backend::{LogsBackend, PodLogDir};
use crate::config::LogsLimits;
use crate::error::ServiceError;
use crate::logs_fs;
use crate::pod::PodName;

const CHUNK: usize = 64 << 10;

pub struct LogsService {
    pub(crate) backend: Arc<dyn LogsBackend>,
    pub(crate) limits: LogsLimits,
    /// Flips to true when the server shuts down: followers end their streams.
    pub(crate) shutdown: tokio::sync::watch::Receiver<bool>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Why a producer stopped early, delivered after the items already queued.
type Abort = Arc<Mutex<Option<Status>>>;

fn abortable<T: Send + 'static>(
    rx: mpsc::Receiver<Result<T, Status>>,
    abort: Abort,
) -> BoxStream<T> {
    Box::pin(futures_util::stream::unfold(
        (rx, abort, false),
        |(mut rx, abort, done)| async move {
            if done {
                return None;
            }
            match rx.recv().await {
                Some(item) => Some((item, (rx, abort, false))),
                None => {
                    let st = abort.lock().expect("abort lock").take();
                    st.map(|s| (Err(s), (rx, abort, true)))
                }
            }
        },
    ))
}

fn too_slow(t: Duration) -> Status {
    Status::deadline_exceeded(format!(
        "client read nothing for {} ms: stream aborted (raise logs.slow_client_timeout_ms or read faster)",
        t.as_millis()
    ))
}

/// Sends with the slow-client deadline. `false`: stop producing.
async fn send<T>(
    tx: &mpsc::Sender<Result<T, Status>>,
    item: T,
    t: Duration,
    abort: &Abort,
) -> bool {
    match tokio::time::timeout(t, tx.send(Ok(item))).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false, // client gone
        Err(_) => {
            *abort.lock().expect("abort lock") = Some(too_slow(t));
            false
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|source| ServiceError::Task {
            what: "worker",
            source,
        })?
}

impl LogsService {
    fn dirs(&self, pod: &PodName) -> Result<Vec<PodLogDir>, Status> {
        Ok(self.backend.pod_log_dirs(pod)?)
    }

    /// Opens the named log dir of a pod.
    async fn open(&self, pod: PodName, name: String) -> Result<(Arc<OwnedFd>, PodLogDir), Status> {
        let backend = self.backend.clone();
        blocking(move || {
            let dirs = backend.pod_log_dirs(&pod)?;
            let Some(d) = dirs.iter().find(|d| d.name == name) else {
                let have: Vec<&str> = dirs.iter().map(|d| d.name.as_str()).collect();
                return Err(Status::not_found(format!(
                    "pod {pod} has no log dir {name:?} (it has: [{}])",
                    have.join(", ")
                )));
            };
            let fd = logs_fs::open_dir(&d.path)?;
            Ok((Arc::new(fd), d.clone()))
        })
        .await
    }
}

#[tonic::async_trait]
impl v1::logs_server::Logs for LogsService {
    type ReadStream = BoxStream<v1::LogChunk>;
    type DownloadStream = BoxStream<v1::ArchiveChunk>;

    async fn list(
        &self,
        req: Request<v1::ListLogsRequest>,
    ) -> Result<Response<v1::ListLogsResponse>, Status> {
        let pod = PodName::from_request(req.into_inner().pod)?;
        let dirs = self.dirs(&pod)?;
        let max = self.limits.max_entries;
        let out = blocking(move || {
            let mut out = Vec::new();
            for d in dirs {
                let fd = logs_fs::open_dir(&d.path)?;
                let (entries, truncated) = logs_fs::walk(&fd, max)?;
                out.push(v1::LogDir {
                    name: d.name,
                    total_bytes: entries.iter().map(|e| e.size).sum(),
                    files: entries
                        .into_iter()
                        .map(|e| v1::LogFile {
                            path: e.path,
                            size: e.size,
                            modified_unix_ms: e.modified_unix_ms,
                        })
                        .collect(),
                    truncated,
                });
            }
            Ok(out)
        })
        .await?;
        Ok(Response::new(v1::ListLogsResponse { dirs: out }))
    }

    async fn read(
        &self,
        req: Request<v1::ReadLogRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let r = req.into_inner();
        let pod = PodName::from_request(r.pod.clone())?;
        logs_fs::validate_rel(&r.path)?;
        let (dir, _) = self.open(pod, r.dir.clone()).await?;
        let (d2, rel) = (dir.clone(), r.path.clone());
        let (file, start) = blocking(move || {
            let mut f = logs_fs::open_file(&d2, &rel)?;
            let len = f.metadata().map_err(ServiceError::from)?.len();
            let start = if r.tail_lines > 0 {
                logs_fs::tail_offset(&mut f, r.tail_lines).map_err(ServiceError::from)?
            } else if r.offset > len {
                return Err(Status::out_of_range(format!(
                    "offset {} is past the end of the file ({len} bytes)",
                    r.offset
                )));
            } else {
                r.offset
            };
            Ok((f, start))
        })
        .await?;
        let (tx, rx) = mpsc::channel(4);
        let abort: Abort = Arc::default();
        let follower = Follower {
            dir,
            rel: r.path,
            follow: r.follow,
            max_bytes: if r.max_bytes == 0 {
                u64::MAX
            } else {
                r.max_bytes
            },
            slow: self.limits.slow_client_timeout(),
            poll: self.limits.follow_poll(),
            abort: abort.clone(),
            shutdown: self.shutdown.clone(),
        };
        tokio::spawn(async move {
            if let Err(st) = follower.run(file, start, &tx).await {
                let _ = tx.send(Err(st)).await;
            }
        });
        Ok(Response::new(abortable(rx, abort)))
    }

    async fn download(
        &self,
        req: Request<v1::DownloadLogsRequest>,
    ) -> Result<Response<Self::DownloadStream>, Status> {
        let r = req.into_inner();
        let pod = PodName::from_request(r.pod)?;
        let (dir, d) = self.open(pod.clone(), r.dir.clone()).await?;
        let max_entries = self.limits.max_entries;
        let d2 = dir.clone();
        let (entries, truncated) = blocking(move || Ok(logs_fs::walk(&d2, max_entries)?)).await?;
        if truncated {
            return Err(Status::resource_exhausted(format!(
                "log dir {:?} of pod {pod} holds more than {max_entries} files: \
                 download single files with `berthctl logs cat` or raise logs.max_entries",
                d.name
            )));
        }
        let total: u64 = entries.iter().map(|e| e.size).sum();
        let limit = self.limits.max_download_bytes;
        if total > limit {
            return Err(Status::resource_exhausted(format!(
                "log dir {:?} of pod {pod} holds {total} bytes, over the download limit of \
                 {limit} bytes: fetch files one by one with `berthctl logs cat` or raise \
                 logs.max_download_bytes",
                d.name
            )));
        }
        let expected = logs_fs::tar_size(&entries);
        let (tx, rx) = mpsc::channel(4);
        let abort: Abort = Arc::default();
        let writer = ChannelWriter {
            tx: tx.clone(),
            handle: tokio::runtime::Handle::current(),
            slow: self.limits.slow_client_timeout(),
            abort: abort.clone(),
            buf: Vec::with_capacity(CHUNK),
            expected: Some(expected),
        };
        let abort2 = abort.clone();
        tokio::task::spawn_blocking(move || {
            let res = logs_fs::write_tar(&dir, &d.name, &entries, writer)
                .map_err(Status::from)
                .and_then(|mut w| {
                    w.flush()
                        .map(|_| ())
                        .map_err(|e| ServiceError::from(e).into())
                });
            if let Err(st) = res {
                let mut a = abort2.lock().expect("abort lock");
                // A slow-client abort is the real story; keep it.
                if a.is_none() && !tx.is_closed() {
                    *a = Some(st);
                }
            }
        });
        Ok(Response::new(abortable(rx, abort)))
    }
}

struct Follower {
    dir: Arc<OwnedFd>,
    rel: String,
    follow: bool,
    max_bytes: u64,
    slow: Duration,
    poll: Duration,
    abort: Abort,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

impl Follower {
    async fn run(
        mut self,
        file: std::fs::File,
        start: u64,
        tx: &mpsc::Sender<Result<v1::LogChunk, Status>>,
    ) -> Result<(), Status> {
        let ioe = |e: io::Error| Status::from(ServiceError::ReadLog(e));
        let mut ino = file.metadata().map_err(ioe)?.ino();
        let mut file = tokio::fs::File::from_std(file);
        let mut pos = file.seek(SeekFrom::Start(start)).await.map_err(ioe)?;
        let mut remaining = self.max_bytes;
        let mut restarted = false;
        let mut buf = vec![0u8; CHUNK];
        while remaining > 0 {
            let want = (remaining.min(CHUNK as u64)) as usize;
            let n = file.read(&mut buf[..want]).await.map_err(ioe)?;
            if n > 0 {
                let chunk = v1::LogChunk {
                    data: buf[..n].to_vec(),
                    offset: pos,
                    truncated: std::mem::take(&mut restarted),
                };
                if !send(tx, chunk, self.slow, &self.abort).await {
                    return Ok(());
                }
                pos += n as u64;
                remaining -= n as u64;
                continue;
            }
            if !self.follow {
                return Ok(());
            }
            if *self.shutdown.borrow() {
                return Err(Status::unavailable(
                    "the agent is shutting down: follow again when it is back",
                ));
            }
            tokio::select! {
                _ = tx.closed() => return Ok(()),
                // Err: the server handle is gone, which also means shutdown.
                r = self.shutdown.changed() => {
                    if r.is_err() {
                        return Err(Status::unavailable("the agent's api server stopped"));
                    }
                    continue;
                }
                _ = tokio::time::sleep(self.poll) => {}
            }
            // Truncated in place (copytruncate)?
            let len = file.metadata().await.map_err(ioe)?.len();
            if len < pos {
                pos = file.seek(SeekFrom::Start(0)).await.map_err(ioe)?;
                restarted = true;
                continue;
            }
            if len > pos {
                continue;
            }
            // Rotated (renamed away, new file at the path)? Switch once the old one is drained.
            let (dir, rel) = (self.dir.clone(), self.rel.clone());
            let reopened = tokio::task::spawn_blocking(move || logs_fs::open_file(&dir, &rel))
                .await
                .map_err(ServiceError::from)?;
            if let Ok(f) = reopened {
                let new_ino = f.metadata().map_err(ioe)?.ino();
                if new_ino != ino {
                    ino = new_ino;
                    file = tokio::fs::File::from_std(f);
                    pos = 0;
                    restarted = true;
                }
            }
        }
        Ok(())
    }
}

/// `Write` for the blocking tar producer: 64 KiB chunks onto the stream, waiting at most
/// the slow-client timeout for room.
struct ChannelWriter {
    tx: mpsc::Sender<Result<v1::ArchiveChunk, Status>>,
    handle: tokio::runtime::Handle,
    slow: Duration,
    abort: Abort,
    buf: Vec<u8>,
    expected: Option<u64>,
}

impl ChannelWriter {
    fn push(&mut self) -> io::Result<()> {
        if self.buf.is_empty() && self.expected.is_none() {
            return Ok(());
        }
        let chunk = v1::ArchiveChunk {
            data: std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)),
            expected_bytes: self.expected.take().unwrap_or(0),
        };
        let ok = self
            .handle
            .block_on(send(&self.tx, chunk, self.slow, &self.abort));
        if ok {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "download stream closed",
            ))
        }
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.push()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.push()
    }
}
