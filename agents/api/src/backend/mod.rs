//! The seams between the API and the rest of the agent: where a pod's log directories are,
//! the IPAM store, faketime control and debug containers ([`debug`]). The agent passes real
//! implementations; tests pass fakes.

pub mod debug;

use std::path::{Path, PathBuf};

use berth_common::names::K8sName;
use berth_proto::v1;

use crate::error::BackendError;
use crate::pod::PodName;

/// A file-log directory of a pod, as the agent mounted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodLogDir {
    /// Name the API addresses it by (usually the container or volume name).
    pub name: String,
    /// Absolute host path.
    pub path: PathBuf,
}

/// Where the file logs of pods live on this node.
pub trait LogsBackend: Send + Sync + 'static {
    /// The pod's log directories; an unknown pod is `BackendError::NotFound`.
    fn pod_log_dirs(&self, pod: &PodName) -> Result<Vec<PodLogDir>, BackendError>;
}

impl<T: LogsBackend + ?Sized> LogsBackend for std::sync::Arc<T> {
    fn pod_log_dirs(&self, pod: &PodName) -> Result<Vec<PodLogDir>, BackendError> {
        (**self).pod_log_dirs(pod)
    }
}

/// The plain layout `<root>/<namespace>/<pod>/<dir>/`, opened without following symlinks.
#[derive(Debug, Clone)]
pub struct DirLayout {
    root: PathBuf,
}

impl DirLayout {
    pub fn new(root: impl Into<PathBuf>) -> DirLayout {
        DirLayout { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl LogsBackend for DirLayout {
    fn pod_log_dirs(&self, pod: &PodName) -> Result<Vec<PodLogDir>, BackendError> {
        use rustix::fs::{AtFlags, FileType, Mode, OFlags};
        let io =
            |e: rustix::io::Errno| BackendError::Internal(format!("{}: {e}", self.root.display()));
        let root = rustix::fs::open(
            &self.root,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io)?;
        // Both names are Kubernetes names (no '/', no '..'): one segment each.
        let rel = pod.to_string();
        let pod_dir = match berth_common::fs::openat2_beneath(
            &root,
            rel.as_str(),
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => {
                return Err(BackendError::NotFound(format!("file logs of pod {rel}")));
            }
            Err(e) => return Err(io(e)),
        };
        let mut out = Vec::new();
        for ent in rustix::fs::Dir::read_from(&pod_dir).map_err(io)? {
            let ent = ent.map_err(io)?;
            let Ok(name) = ent.file_name().to_str() else {
                continue;
            };
            if name == "." || name == ".." {
                continue;
            }
            let Ok(st) = rustix::fs::statat(&pod_dir, name, AtFlags::SYMLINK_NOFOLLOW) else {
                continue;
            };
            if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                out.push(PodLogDir {
                    name: name.to_string(),
                    path: self.root.join(&rel).join(name),
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

/// The IPAM store as the API sees it. The agent implements it over berth-ipam-core; tests
/// use fakes. An empty `network` means every network.
#[tonic::async_trait]
pub trait IpamBackend: Send + Sync + 'static {
    /// Leases matching the request's network and pool (the service filters namespaces too).
    async fn list(
        &self,
        req: &v1::ListAllocationsRequest,
    ) -> Result<Vec<v1::Allocation>, BackendError>;
    /// One address; `NotFound` when no lease holds it.
    async fn show(&self, network: &str, address: &str) -> Result<v1::Allocation, BackendError>;
    /// Events oldest first, filtered by the request (the service applies namespace and limit).
    async fn history(
        &self,
        req: &v1::IpamHistoryRequest,
    ) -> Result<Vec<v1::IpamEvent>, BackendError>;
    /// `actor` is the caller's identity, for the IPAM history.
    async fn reserve(
        &self,
        req: &v1::ReserveRequest,
        actor: &str,
    ) -> Result<v1::Allocation, BackendError>;
    /// Frees the address; returns what it was.
    async fn release(
        &self,
        network: &str,
        address: &str,
        actor: &str,
    ) -> Result<v1::Allocation, BackendError>;
    /// Which pods are sticky without an annotation (`stable-names`, `all`, `none`).
    fn sticky_default(&self) -> String {
        String::new()
    }
    /// One pass of leaked-lease collection (the node agent's `[ipam_gc]`); the allocations
    /// freed, or with `dry_run` those that would be.
    async fn gc(&self, _dry_run: bool) -> Result<Vec<v1::Allocation>, BackendError> {
        Err(BackendError::Unavailable(
            "leaked-lease collection is off on this agent: add an [ipam_gc] section (with ipam_network) to its config".into(),
        ))
    }
}

#[tonic::async_trait]
impl<T: IpamBackend + ?Sized> IpamBackend for std::sync::Arc<T> {
    async fn list(
        &self,
        req: &v1::ListAllocationsRequest,
    ) -> Result<Vec<v1::Allocation>, BackendError> {
        (**self).list(req).await
    }
    async fn show(&self, network: &str, address: &str) -> Result<v1::Allocation, BackendError> {
        (**self).show(network, address).await
    }
    async fn history(
        &self,
        query: &v1::IpamHistoryRequest,
    ) -> Result<Vec<v1::IpamEvent>, BackendError> {
        (**self).history(query).await
    }
    async fn reserve(
        &self,
        req: &v1::ReserveRequest,
        actor: &str,
    ) -> Result<v1::Allocation, BackendError> {
        (**self).reserve(req, actor).await
    }
    async fn release(
        &self,
        pool: &str,
        address: &str,
        actor: &str,
    ) -> Result<v1::Allocation, BackendError> {
        (**self).release(pool, address, actor).await
    }
    fn sticky_default(&self) -> String {
        (**self).sticky_default()
    }
    async fn gc(&self, dry_run: bool) -> Result<Vec<v1::Allocation>, BackendError> {
        (**self).gc(dry_run).await
    }
}

/// Which containers a faketime call is about: every faketime container of a pod, or one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeTimeTarget {
    pub namespace: K8sName,
    pub pod: K8sName,
    pub container: Option<String>,
}

/// The agent's faketime control: offsets of containers it injected its time shim into.
/// Calls touch files in the agent's state dir, so the service runs them off the async
/// threads. `NotFound`: no faketime container matches; `Precondition`: none has the shim;
/// `Invalid`: a malformed offset.
pub trait FakeTimeBackend: Send + Sync + 'static {
    fn get(&self, target: &FakeTimeTarget) -> Result<Vec<v1::FakeTimeContainer>, BackendError>;
    /// `offset` as the caller spelled it (relative `+2d` or absolute start `@2030-01-01`).
    fn set(
        &self,
        target: &FakeTimeTarget,
        offset: &str,
    ) -> Result<Vec<v1::FakeTimeContainer>, BackendError>;
    fn clear(&self, target: &FakeTimeTarget) -> Result<Vec<v1::FakeTimeContainer>, BackendError>;
}

impl<T: FakeTimeBackend + ?Sized> FakeTimeBackend for std::sync::Arc<T> {
    fn get(&self, target: &FakeTimeTarget) -> Result<Vec<v1::FakeTimeContainer>, BackendError> {
        (**self).get(target)
    }
    fn set(
        &self,
        target: &FakeTimeTarget,
        offset: &str,
    ) -> Result<Vec<v1::FakeTimeContainer>, BackendError> {
        (**self).set(target, offset)
    }
    fn clear(&self, target: &FakeTimeTarget) -> Result<Vec<v1::FakeTimeContainer>, BackendError> {
        (**self).clear(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(namespace: &str, pod: &str) -> PodName {
        PodName {
            namespace: namespace.parse().unwrap(),
            pod: pod.parse().unwrap(),
        }
    }

    /// Names that are no Kubernetes names cannot reach the layout ([`PodName`] refuses
    /// them; its tests cover "..", "a/b" and the rest).
    #[test]
    fn dir_layout_lists_dirs_and_refuses_symlinked_pods() {
        let t = tempfile::tempdir().unwrap();
        let pod = t.path().join("team-a/web-0");
        std::fs::create_dir_all(pod.join("app")).unwrap();
        std::fs::create_dir_all(pod.join("sidecar")).unwrap();
        std::fs::write(pod.join("stray.log"), "").unwrap();
        std::os::unix::fs::symlink("/etc", pod.join("etc")).unwrap();
        let l = DirLayout::new(t.path());
        let dirs = l.pod_log_dirs(&self::pod("team-a", "web-0")).unwrap();
        assert_eq!(
            dirs,
            vec![
                PodLogDir {
                    name: "app".into(),
                    path: pod.join("app")
                },
                PodLogDir {
                    name: "sidecar".into(),
                    path: pod.join("sidecar")
                },
            ]
        );
        assert!(matches!(
            l.pod_log_dirs(&self::pod("team-a", "web-1")),
            Err(BackendError::NotFound(_))
        ));
        // A symlinked pod dir is not followed.
        std::os::unix::fs::symlink(&pod, t.path().join("team-a/alias")).unwrap();
        assert!(matches!(
            l.pod_log_dirs(&self::pod("team-a", "alias")),
            Err(BackendError::Internal(_))
        ));
    }
}
