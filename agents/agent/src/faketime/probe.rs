//! Judging whether the shim can shift a container's clock: its entry point, classified by
//! [`berth_faketime::rootfs::inspect`] in the container's root file system.
//!
//! At CreateContainer the container does not exist yet, not even in containerd's metadata
//! (containerd asks NRI while it builds the container record), but its snapshot does: CRI
//! prepares it under the container's id before. [`ContainerdProbe`] asks containerd's snapshot
//! API, over one persistent connection, for the snapshot's parent (the chain id of the image's
//! top layer) and, the first time an image + entry point is seen, for its mounts: the upper dir
//! and the image's layer dirs. Those are read as overlayfs would merge them ([`LayerRoot`]),
//! without mounting anything. The verdict is cached per image + entry point + `PATH`, so
//! every later container of the image costs one small request. Once a container runs, its entry
//! point can also be judged from `/proc/<pid>/exe` ([`inspect_process`]).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use berth_faketime::Coverage;
use berth_faketime::elf::{ElfError, inspect_in_root};
use berth_faketime::rootfs::inspect;
use berth_nri::Container;
use containerd_client::services::v1::snapshots as snap;
use containerd_client::types::Mount;
use tonic::transport::{Channel, Endpoint};

use super::layers::LayerRoot;

/// The longest CreateContainer waits for a judgement (containerd's NRI request timeout is 2 s):
/// past it the shim is injected anyway and the entry point judged after start.
pub const JUDGE_TIMEOUT: Duration = Duration::from_millis(500);
/// Verdicts kept (image + entry point + PATH); the cache starts over when it is full.
const CACHE_CAPACITY: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("the entry point was not judged at creation")]
    NotJudged,
    #[error("the container has no args: nothing to inspect")]
    NoArgs,
    #[error("containerd at {address} did not answer {call}")]
    Rpc {
        address: PathBuf,
        call: &'static str,
        #[source]
        source: tonic::Status,
    },
    #[error(
        "containerd has no snapshot {key:?} in snapshotter {snapshotter:?}: set faketime.snapshotter to the one CRI uses"
    )]
    NoSnapshot { key: String, snapshotter: String },
    #[error("containerd did not answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot understand the snapshot's mounts: {0}")]
    Mounts(String),
    #[error("cannot judge the entry point")]
    Elf(#[from] ElfError),
    #[error("the inspection thread failed: {0}")]
    Thread(String),
}

/// A judgement in progress.
pub type Judging<'a> = Pin<Box<dyn Future<Output = Result<Coverage, ProbeError>> + Send + 'a>>;

/// Judges a container's entry point before it is created.
pub trait RootfsProbe: Send + Sync {
    fn inspect<'a>(&'a self, ctr: &'a Container) -> Judging<'a>;
}

/// The two questions the probe asks containerd about a container's snapshot: a seam, so the
/// cache and the mount reading are tested without a containerd.
pub trait SnapshotApi: Send + Sync {
    /// The snapshot's parent: the chain id of the image's top layer.
    fn parent<'a>(&'a self, key: &'a str) -> ApiCall<'a, String>;
    /// What mounting the snapshot takes.
    fn mounts<'a>(&'a self, key: &'a str) -> ApiCall<'a, Vec<Mount>>;
    /// Where containerd's paths are seen from the agent (see [`containerd_root`]).
    fn host_root(&self) -> PathBuf;
}

pub type ApiCall<'a, T> = Pin<Box<dyn Future<Output = Result<T, ProbeError>> + Send + 'a>>;

/// containerd's snapshot API over its unix socket, one connection for the agent's life (made
/// on first use, made again by the channel after containerd restarts).
pub struct Containerd {
    address: PathBuf,
    namespace: String,
    snapshotter: String,
    channel: OnceLock<Channel>,
}

impl Containerd {
    pub fn new(address: PathBuf, namespace: String, snapshotter: String) -> Containerd {
        Containerd {
            address,
            namespace,
            snapshotter,
            channel: OnceLock::new(),
        }
    }

    /// The connection, created lazily in the caller's runtime (the NRI thread's), so the
    /// agent starts whether containerd is up or not.
    fn client(&self) -> snap::snapshots_client::SnapshotsClient<Channel> {
        let channel = self.channel.get_or_init(|| {
            let path = self.address.clone();
            Endpoint::from_static("http://[::]")
                .connect_timeout(JUDGE_TIMEOUT)
                .connect_with_connector_lazy(tower::service_fn(move |_: tonic::transport::Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(
                            tokio::net::UnixStream::connect(path).await?,
                        ))
                    }
                }))
        });
        snap::snapshots_client::SnapshotsClient::new(channel.clone())
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Ok(ns) = self.namespace.parse() {
            r.metadata_mut().insert("containerd-namespace", ns);
        }
        r
    }

    fn failed(&self, call: &'static str, key: &str, source: tonic::Status) -> ProbeError {
        if source.code() == tonic::Code::NotFound {
            return ProbeError::NoSnapshot {
                key: key.to_string(),
                snapshotter: self.snapshotter.clone(),
            };
        }
        ProbeError::Rpc {
            address: self.address.clone(),
            call,
            source,
        }
    }
}

impl SnapshotApi for Containerd {
    fn parent<'a>(&'a self, key: &'a str) -> ApiCall<'a, String> {
        Box::pin(async move {
            let info = self
                .client()
                .stat(self.request(snap::StatSnapshotRequest {
                    snapshotter: self.snapshotter.clone(),
                    key: key.to_string(),
                }))
                .await
                .map_err(|e| self.failed("Snapshots.Stat", key, e))?
                .into_inner()
                .info
                .unwrap_or_default();
            Ok(info.parent)
        })
    }

    fn mounts<'a>(&'a self, key: &'a str) -> ApiCall<'a, Vec<Mount>> {
        Box::pin(async move {
            Ok(self
                .client()
                .mounts(self.request(snap::MountsRequest {
                    snapshotter: self.snapshotter.clone(),
                    key: key.to_string(),
                }))
                .await
                .map_err(|e| self.failed("Snapshots.Mounts", key, e))?
                .into_inner()
                .mounts)
        })
    }

    fn host_root(&self) -> PathBuf {
        containerd_root(&self.address)
    }
}

/// Where the paths containerd names are, seen from the agent: `/` when both see the same root
/// (the agent on the host), else containerd's own root through `/proc/<pid>/root` (the agent
/// in a container with the host's pid namespace, as the DaemonSet runs it). containerd's pid
/// comes from the socket's peer credentials.
pub fn containerd_root(address: &Path) -> PathBuf {
    let root = PathBuf::from("/");
    let Ok(sock) = std::os::unix::net::UnixStream::connect(address) else {
        return root;
    };
    let Ok(cred) = rustix::net::sockopt::socket_peercred(&sock) else {
        return root;
    };
    let theirs = PathBuf::from(format!("/proc/{}/root", cred.pid.as_raw_nonzero()));
    match (std::fs::metadata(&root), std::fs::metadata(&theirs)) {
        (Ok(a), Ok(b)) if !same_file(&a, &b) => theirs,
        _ => root,
    }
}

fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev() && a.ino() == b.ino()
}

/// The container's root as its snapshot's mounts describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotRoot {
    /// A directory that is the root as it is (a bind mount: native snapshotter, one layer).
    Dir(PathBuf),
    /// overlayfs layers, topmost (the container's upper dir) first.
    Layers(Vec<PathBuf>),
}

impl SnapshotRoot {
    /// The same root with containerd's paths seen under `host_root`.
    fn under(self, host_root: &Path) -> SnapshotRoot {
        let at = |p: PathBuf| host_root.join(p.strip_prefix("/").unwrap_or(&p));
        match self {
            SnapshotRoot::Dir(d) => SnapshotRoot::Dir(at(d)),
            SnapshotRoot::Layers(l) => SnapshotRoot::Layers(l.into_iter().map(at).collect()),
        }
    }
}

/// Reads the mounts containerd's snapshotter returns for a container: one `bind` (or `rbind`)
/// of a directory, or one `overlay` with `upperdir` and `lowerdir` options.
pub fn snapshot_root(mounts: &[Mount]) -> Result<SnapshotRoot, ProbeError> {
    let describe = || {
        mounts
            .iter()
            .map(|m| format!("{} {} {}", m.r#type, m.source, m.options.join(",")))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let bad = |why: &str| ProbeError::Mounts(format!("{why} ({})", describe()));
    let [m] = mounts else {
        return Err(bad("expected exactly one mount"));
    };
    let absolute = |p: &str| -> Result<PathBuf, ProbeError> {
        let p = PathBuf::from(p);
        if p.is_absolute() {
            Ok(p)
        } else {
            Err(bad("a relative path"))
        }
    };
    match m.r#type.as_str() {
        "bind" | "rbind" => Ok(SnapshotRoot::Dir(absolute(&m.source)?)),
        "overlay" => {
            let mut layers = Vec::new();
            for o in &m.options {
                if let Some(u) = o.strip_prefix("upperdir=") {
                    layers.insert(0, absolute(u)?);
                }
            }
            for o in &m.options {
                if let Some(l) = o.strip_prefix("lowerdir=") {
                    for d in l.split(':') {
                        layers.push(absolute(d)?);
                    }
                }
            }
            if layers.is_empty() {
                return Err(bad("an overlay without layers"));
            }
            Ok(SnapshotRoot::Layers(layers))
        }
        other => Err(bad(&format!("mount type {other:?} is not one berth reads"))),
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct CacheKey {
    image: String,
    program: String,
    path: Option<String>,
}

/// Verdicts by image + entry point + PATH; counts for the logs.
#[derive(Default)]
struct Cache {
    verdicts: HashMap<CacheKey, Coverage>,
    hits: u64,
    misses: u64,
}

/// Judges entry points through containerd's snapshot API (see the module docs).
pub struct ContainerdProbe<A: SnapshotApi + 'static> {
    api: Arc<A>,
    cache: Arc<Mutex<Cache>>,
}

impl<A: SnapshotApi + 'static> ContainerdProbe<A> {
    pub fn new(api: A) -> Self {
        ContainerdProbe {
            api: Arc::new(api),
            cache: Arc::default(),
        }
    }

    /// (hits, misses) of the verdict cache so far.
    pub fn cache_counts(&self) -> (u64, u64) {
        let c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        (c.hits, c.misses)
    }

    async fn judge(&self, ctr: &Container) -> Result<Coverage, ProbeError> {
        let program = ctr.args.first().ok_or(ProbeError::NoArgs)?.clone();
        let path = ctr.env_var("PATH").map(str::to_string);
        let image = self.api.parent(&ctr.id).await?;
        let key = (!image.is_empty()).then(|| CacheKey {
            image,
            program: program.clone(),
            path: path.clone(),
        });
        if let Some(k) = &key {
            let mut c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(v) = c.verdicts.get(k).cloned() {
                c.hits += 1;
                return Ok(v);
            }
            c.misses += 1;
        }
        let root = snapshot_root(&self.api.mounts(&ctr.id).await?)?;
        let (api, cache) = (self.api.clone(), self.cache.clone());
        // File reads: off the NRI thread. The verdict is cached even when CreateContainer
        // stopped waiting for it, so the image's next container finds it.
        tokio::task::spawn_blocking(move || {
            let verdict = match root.under(&api.host_root()) {
                SnapshotRoot::Dir(d) => inspect_in_root(&d, &program, path.as_deref()),
                SnapshotRoot::Layers(l) => inspect(&LayerRoot::new(l), &program, path.as_deref()),
            }?;
            if let Some(k) = key {
                let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
                if c.verdicts.len() >= CACHE_CAPACITY {
                    c.verdicts.clear();
                }
                c.verdicts.insert(k, verdict.clone());
            }
            Ok(verdict)
        })
        .await
        .map_err(|e| ProbeError::Thread(e.to_string()))?
    }
}

impl<A: SnapshotApi + 'static> RootfsProbe for ContainerdProbe<A> {
    fn inspect<'a>(&'a self, ctr: &'a Container) -> Judging<'a> {
        Box::pin(self.judge(ctr))
    }
}

/// Judges a running container's entry point from `/proc/<pid>/exe`, resolved in its root.
pub fn inspect_process(pid: u32) -> Result<Coverage, ProbeError> {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let exe = std::fs::read_link(proc.join("exe")).map_err(|source| {
        ProbeError::Elf(ElfError::Io {
            path: proc.join("exe"),
            source,
        })
    })?;
    let exe = exe.to_string_lossy();
    let exe = exe.strip_suffix(" (deleted)").unwrap_or(&exe);
    Ok(inspect_in_root(&proc.join("root"), exe, None)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn mount(kind: &str, source: &str, options: &[&str]) -> Mount {
        Mount {
            r#type: kind.into(),
            source: source.into(),
            target: String::new(),
            options: options.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn overlay_and_bind_mounts_are_read() {
        let m = mount(
            "overlay",
            "overlay",
            &[
                "index=off",
                "workdir=/s/5/work",
                "upperdir=/s/5/fs",
                "lowerdir=/s/3/fs:/s/1/fs",
            ],
        );
        assert_eq!(
            snapshot_root(&[m]).unwrap(),
            SnapshotRoot::Layers(vec!["/s/5/fs".into(), "/s/3/fs".into(), "/s/1/fs".into()])
        );
        assert_eq!(
            snapshot_root(&[mount("bind", "/s/1/fs", &["rbind", "ro"])]).unwrap(),
            SnapshotRoot::Dir("/s/1/fs".into())
        );
        // containerd's paths as the DaemonSet's agent sees them
        assert_eq!(
            SnapshotRoot::Layers(vec!["/s/5/fs".into()]).under(Path::new("/proc/7/root")),
            SnapshotRoot::Layers(vec!["/proc/7/root/s/5/fs".into()])
        );
    }

    #[test]
    fn mounts_berth_cannot_read_are_errors_that_show_them() {
        for (mounts, why) in [
            (vec![], "exactly one"),
            (
                vec![mount("bind", "/a", &[]), mount("bind", "/b", &[])],
                "exactly one",
            ),
            (vec![mount("tmpfs", "tmpfs", &["size=1"])], "\"tmpfs\""),
            (
                vec![mount("overlay", "overlay", &["index=off"])],
                "without layers",
            ),
            (vec![mount("bind", "rel", &["rbind"])], "relative"),
            (
                vec![mount("overlay", "overlay", &["lowerdir=a:/b"])],
                "relative",
            ),
        ] {
            match snapshot_root(&mounts) {
                Err(ProbeError::Mounts(m)) => assert!(m.contains(why), "{m}"),
                other => panic!("{mounts:?}: {other:?}"),
            }
        }
    }

    /// Answers from a directory tree standing for containerd's snapshots; counts the calls.
    struct FakeApi {
        parent: String,
        mounts: Vec<Mount>,
        parents: AtomicU32,
        mount_calls: AtomicU32,
    }

    impl SnapshotApi for FakeApi {
        fn parent<'a>(&'a self, key: &'a str) -> ApiCall<'a, String> {
            self.parents.fetch_add(1, Ordering::SeqCst);
            let r = if key == "gone" {
                Err(ProbeError::NoSnapshot {
                    key: key.into(),
                    snapshotter: "overlayfs".into(),
                })
            } else {
                Ok(self.parent.clone())
            };
            Box::pin(async move { r })
        }
        fn mounts<'a>(&'a self, _key: &'a str) -> ApiCall<'a, Vec<Mount>> {
            self.mount_calls.fetch_add(1, Ordering::SeqCst);
            let m = self.mounts.clone();
            Box::pin(async move { Ok(m) })
        }
        fn host_root(&self) -> PathBuf {
            PathBuf::from("/")
        }
    }

    fn ctr(id: &str, program: &str, path: &str) -> Container {
        Container {
            id: id.into(),
            args: vec![program.into()],
            env: vec![format!("PATH={path}")],
            ..Default::default()
        }
    }

    fn run<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn verdicts_are_cached_per_image_and_entry_point() {
        let tmp = tempfile::tempdir().unwrap();
        let (upper, lower) = (tmp.path().join("upper"), tmp.path().join("lower"));
        std::fs::create_dir_all(lower.join("bin")).unwrap();
        std::fs::create_dir_all(&upper).unwrap();
        std::fs::copy("/bin/busybox", lower.join("bin/busybox")).unwrap();
        std::fs::copy("/usr/bin/python3", lower.join("bin/python3")).unwrap();
        let probe = ContainerdProbe::new(FakeApi {
            parent: "sha256:top".into(),
            mounts: vec![mount(
                "overlay",
                "overlay",
                &[
                    &format!("upperdir={}", upper.display()),
                    &format!("lowerdir={}", lower.display()),
                ],
            )],
            parents: AtomicU32::new(0),
            mount_calls: AtomicU32::new(0),
        });
        run(async {
            let c = probe.inspect(&ctr("c1", "busybox", "/bin")).await.unwrap();
            assert_eq!(c, Coverage::Static);
            // the same image and entry point: one Stat, no Mounts, no file read
            std::fs::remove_file(lower.join("bin/busybox")).unwrap();
            let c = probe.inspect(&ctr("c2", "busybox", "/bin")).await.unwrap();
            assert_eq!(c, Coverage::Static);
            assert_eq!(probe.api.mount_calls.load(Ordering::SeqCst), 1);
            assert_eq!(probe.cache_counts(), (1, 1));
            // another entry point of the image is judged on its own
            let c = probe.inspect(&ctr("c3", "python3", "/bin")).await.unwrap();
            assert!(matches!(c, Coverage::Glibc { .. }), "{c:?}");
            // PATH is part of the key: a bare name may resolve elsewhere
            match probe.inspect(&ctr("c4", "busybox", "/usr/bin")).await {
                Err(ProbeError::Elf(ElfError::NotFound { searched, .. })) => {
                    assert_eq!(searched, "/usr/bin/busybox")
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(probe.api.parents.load(Ordering::SeqCst), 4);
            assert_eq!(probe.api.mount_calls.load(Ordering::SeqCst), 3);
            // errors are not cached, and say what to set
            match probe.inspect(&ctr("gone", "busybox", "/bin")).await {
                Err(e @ ProbeError::NoSnapshot { .. }) => {
                    assert!(e.to_string().contains("faketime.snapshotter"), "{e}")
                }
                other => panic!("{other:?}"),
            }
            let none = Container {
                id: "c5".into(),
                ..Default::default()
            };
            assert!(matches!(
                probe.inspect(&none).await,
                Err(ProbeError::NoArgs)
            ));
        });
    }

    #[test]
    fn containerd_that_is_not_there_is_an_error_not_a_hang() {
        let tmp = tempfile::tempdir().unwrap();
        let probe = ContainerdProbe::new(Containerd::new(
            tmp.path().join("containerd.sock"),
            "k8s.io".into(),
            "overlayfs".into(),
        ));
        let started = std::time::Instant::now();
        let r = run(async { probe.inspect(&ctr("c1", "/bin/sh", "/bin")).await });
        match r {
            Err(e @ ProbeError::Rpc { .. }) => {
                let text = berth_common::error_chain(&e);
                assert!(text.contains("containerd.sock"), "{text}");
                assert!(text.contains("Snapshots.Stat"), "{text}");
            }
            other => panic!("{other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        // no socket: containerd's paths are taken as the agent's own
        assert_eq!(
            containerd_root(&tmp.path().join("containerd.sock")),
            Path::new("/")
        );
    }

    #[test]
    fn own_process_is_judged_through_proc() {
        // the test binary is a dynamically linked glibc program
        let c = inspect_process(std::process::id()).unwrap();
        assert!(matches!(c, Coverage::Glibc { .. }), "{c:?}");
    }
}
