//! The file-log feature as the NRI handler drives it: validate, create the host dirs, write
//! metadata, answer with the bind mounts; track container lifetimes for cleanup.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use berth_nri::{Container, CreateContainerResponse, HandlerError, Mount, PodSandbox};

use super::layout::{Layout, Names, RelPath};
use super::metadata::MetadataWriter;
use super::plan::{self, META_SUFFIX, Metadata, Plan};
use super::spec::{self, Request};
use crate::config::{FileLogsConfig, OnProblem};
use crate::events::{EventLog, Record};
use crate::fsops::{FsError, LogFs};
use crate::names;
use crate::retention::{Clock, unix_secs};
use crate::state::{DirRecord, Store};

/// Mount options of every log dir: writable, but no setuid binaries, devices or executables.
pub const MOUNT_OPTIONS: [&str; 5] = ["rbind", "rw", "nosuid", "nodev", "noexec"];

/// Largest metadata file read back during reconciliation.
const MAX_META: usize = 64 << 10;

/// Why a container's file logs were not set up.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("invalid file-log request")]
    Spec(#[from] spec::SpecError),
    #[error("invalid pod or container name")]
    Name(#[from] names::NameError),
    #[error("cannot place the log dir")]
    Layout(#[from] super::layout::LayoutError),
    #[error("cannot prepare the log dir")]
    Fs(#[from] FsError),
}

impl Refusal {
    fn hostile(&self) -> bool {
        match self {
            Refusal::Fs(e) => e.is_hostile(),
            _ => true,
        }
    }

    /// The whole chain in one line, for the runtime's error message and the event record.
    pub fn chain(&self) -> String {
        berth_common::error_chain(self)
    }
}

pub struct FileLogs {
    cfg: FileLogsConfig,
    layout: Layout,
    node: String,
    fs: Arc<dyn LogFs>,
    pub(crate) store: Mutex<Store>,
    /// Held exclusively while the sweeper deletes a dir, shared while dirs are created for a
    /// container or a metadata file is written: a dir that expires just as its pod comes back
    /// is never deleted under the new container, and creations never queue behind each
    /// other's background metadata writes.
    pub(crate) fs_lock: Arc<RwLock<()>>,
    /// Metadata files are written after the answer (see `metadata`).
    metadata: MetadataWriter,
    save_lock: Mutex<()>,
    store_dirty: AtomicBool,
    events: Arc<EventLog>,
    clock: Arc<dyn Clock>,
}

impl FileLogs {
    pub fn new(
        cfg: FileLogsConfig,
        layout: Layout,
        node: String,
        fs: Arc<dyn LogFs>,
        store: Store,
        events: Arc<EventLog>,
        clock: Arc<dyn Clock>,
    ) -> FileLogs {
        let fs_lock = Arc::new(RwLock::new(()));
        FileLogs {
            cfg,
            layout,
            node,
            metadata: MetadataWriter::start(fs.clone(), fs_lock.clone()),
            fs,
            store: Mutex::new(store),
            fs_lock,
            save_lock: Mutex::new(()),
            store_dirty: AtomicBool::new(false),
            events,
            clock,
        }
    }

    pub fn fs(&self) -> &Arc<dyn LogFs> {
        &self.fs
    }

    /// Returns when the metadata files of every container answered so far are written.
    pub fn flush_metadata(&self) {
        self.metadata.flush();
    }

    pub fn events(&self) -> &Arc<EventLog> {
        &self.events
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Persists the state if it changed since the last call (called by the sweeper and at
    /// shutdown; the create path does not wait for a disk sync).
    pub fn save_if_dirty(&self) {
        if self.store_dirty.swap(false, Ordering::AcqRel) {
            // One writer at a time; the store itself is locked only to copy it, so the
            // CreateContainer path never waits for the fsync.
            let _saving = self.save_lock.lock().expect("save lock");
            let snapshot = self.store.lock().expect("store").snapshot();
            if let Err(e) = snapshot.save() {
                self.store_dirty.store(true, Ordering::Release);
                tracing::error!(error = %e, "cannot persist the file-log state");
            }
        }
    }

    pub(crate) fn mark_dirty(&self) {
        self.store_dirty.store(true, Ordering::Release);
    }

    fn annotation_key(&self, container: &str) -> String {
        format!("{}{}", self.cfg.annotation_prefix, container)
    }

    fn request(
        &self,
        pod: &PodSandbox,
        ctr: &Container,
    ) -> Result<Option<Request>, spec::SpecError> {
        let ann = self.annotation_key(&ctr.name);
        spec::collect(
            &self.cfg.env_var,
            ctr.env_var(&self.cfg.env_var),
            &ann,
            pod.annotations.get(&ann).map(String::as_str),
            &self.cfg.extra_denied,
        )
    }

    fn plan_for(&self, pod: &PodSandbox, ctr: &Container, req: &Request) -> Result<Plan, Refusal> {
        names::label("namespace", &pod.namespace)?;
        names::subdomain("pod name", &pod.name)?;
        names::uid("pod uid", &pod.uid)?;
        names::label("container name", &ctr.name)?;
        let names = Names {
            namespace: &pod.namespace,
            pod: &pod.name,
            pod_uid: &pod.uid,
            container: &ctr.name,
            node: &self.node,
        };
        Ok(plan::plan(&self.layout, &names, &req.dirs)?)
    }

    /// Creates the container's dirs (the mount sources: they must exist before the answer).
    fn prepare(&self, plan: &Plan) -> Result<(), FsError> {
        let multi = plan.mounts.len() > 1;
        self.fs.ensure_dir(
            &plan.container_dir,
            if multi { 0o755 } else { self.cfg.dir_mode },
        )?;
        if multi {
            for m in &plan.mounts {
                self.fs.ensure_dir(&m.source, self.cfg.dir_mode)?;
            }
        }
        Ok(())
    }

    /// The metadata file's content: who the logs belong to, for the collector's tags.
    fn metadata(&self, pod: &PodSandbox, ctr: &Container, plan: &Plan) -> Vec<u8> {
        let meta = Metadata {
            namespace: pod.namespace.clone(),
            pod: pod.name.clone(),
            pod_uid: pod.uid.clone(),
            container: ctr.name.clone(),
            container_id: ctr.id.clone(),
            node: self.node.clone(),
            labels: pod
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            mounts: plan
                .mounts
                .iter()
                .map(|m| {
                    let rel = if m.source == plan.container_dir {
                        ".".to_string()
                    } else {
                        m.source.file_name().unwrap_or(".").to_string()
                    };
                    (m.destination.to_string(), rel)
                })
                .collect(),
            updated_at: chrono::DateTime::<chrono::Utc>::from(self.clock.now())
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        };
        serde_json::to_vec_pretty(&meta).expect("metadata serialises")
    }

    fn record(pod: &PodSandbox, ctr: &Container) -> Record {
        Record {
            namespace: pod.namespace.clone(),
            pod: pod.name.clone(),
            pod_uid: pod.uid.clone(),
            container: ctr.name.clone(),
            container_id: ctr.id.clone(),
            ..Default::default()
        }
    }

    /// CreateContainer: the adjustment with the log mounts, or a refusal per configuration.
    pub fn create_container(
        &self,
        pod: &PodSandbox,
        ctr: &Container,
    ) -> Result<CreateContainerResponse, HandlerError> {
        let req = match self.request(pod, ctr) {
            Ok(None) => return Ok(CreateContainerResponse::default()),
            Ok(Some(r)) => r,
            Err(e) => {
                let raw = [
                    ctr.env_var(&self.cfg.env_var),
                    pod.annotations
                        .get(&self.annotation_key(&ctr.name))
                        .map(String::as_str),
                ]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" | ");
                return self.refuse(pod, ctr, &raw, Refusal::Spec(e));
            }
        };
        let raw = req
            .raw
            .iter()
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
            .join(" | ");
        let plan = match self.plan_for(pod, ctr, &req) {
            Ok(p) => p,
            Err(e) => return self.refuse(pod, ctr, &raw, e),
        };
        let started = std::time::Instant::now();
        let guard = self.fs_lock.read().expect("fs lock");
        if let Err(e) = self.prepare(&plan) {
            drop(guard);
            return self.refuse(pod, ctr, &raw, Refusal::Fs(e));
        }
        {
            let mut store = self.store.lock().expect("store");
            let template = DirRecord {
                namespace: pod.namespace.clone(),
                pod: pod.name.clone(),
                pod_uid: pod.uid.clone(),
                container: ctr.name.clone(),
                metadata: Some(plan.metadata.clone()),
                live: BTreeSet::new(),
                removed_at: None,
            };
            store.container_created(&plan.container_dir, template, &ctr.id);
        }
        drop(guard);
        self.metadata.queue(
            plan.metadata.clone(),
            self.metadata(pod, ctr, &plan),
            &ctr.id,
        );
        let prepare_us = started.elapsed().as_micros() as u64;
        self.mark_dirty();
        let mounts: Vec<Mount> = plan
            .mounts
            .iter()
            .map(|m| Mount {
                destination: m.destination.to_string(),
                r#type: "bind".into(),
                source: self.fs.host_path(&m.source).to_string_lossy().into_owned(),
                options: MOUNT_OPTIONS.iter().map(|s| s.to_string()).collect(),
            })
            .collect();
        for m in &mounts {
            if ctr
                .mounts
                .iter()
                .any(|existing| existing.destination == m.destination)
            {
                tracing::info!(namespace = %pod.namespace, pod = %pod.name, container = %ctr.name, destination = %m.destination,
                    "the log mount replaces a mount the container already had at this destination");
            }
        }
        tracing::info!(namespace = %pod.namespace, pod = %pod.name, container = %ctr.name, id = %ctr.id,
            dir = %plan.container_dir, mounts = mounts.len(),
            prepare_us, "file logs mounted");
        Ok(CreateContainerResponse {
            adjust: Some(berth_nri::ContainerAdjustment {
                mounts,
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn refuse(
        &self,
        pod: &PodSandbox,
        ctr: &Container,
        raw: &str,
        why: Refusal,
    ) -> Result<CreateContainerResponse, HandlerError> {
        let hostile = why.hostile();
        let mode = if hostile {
            self.cfg.on_violation
        } else {
            self.cfg.on_error
        };
        let reason = why.chain();
        let (kind, action) = match mode {
            OnProblem::Refuse => ("filelogs_refused", "container refused"),
            OnProblem::AllowWithoutMount => (
                "filelogs_unmounted",
                "container created without its log mount",
            ),
        };
        tracing::warn!(namespace = %pod.namespace, pod = %pod.name, container = %ctr.name, id = %ctr.id, value = %raw,
            hostile, action, reason = %reason, "file logs not set up");
        self.events.emit(Record {
            kind: kind.into(),
            value: raw.to_string(),
            reason: reason.clone(),
            ..Self::record(pod, ctr)
        });
        match mode {
            OnProblem::Refuse => Err(HandlerError::new(format!(
                "berth refused file logs of container {:?} in pod {}/{}: {reason}",
                ctr.name, pod.namespace, pod.name
            ))),
            OnProblem::AllowWithoutMount => Ok(CreateContainerResponse::default()),
        }
    }

    pub fn container_removed(&self, ctr: &Container) {
        let now = unix_secs(self.clock.now());
        let started = self
            .store
            .lock()
            .expect("store")
            .container_removed(&ctr.id, now);
        self.retention_started(&started, "container removed");
    }

    pub fn pod_removed(&self, pod: &PodSandbox) {
        if pod.uid.is_empty() {
            return;
        }
        let now = unix_secs(self.clock.now());
        let started = self.store.lock().expect("store").pod_removed(&pod.uid, now);
        self.retention_started(&started, "pod removed");
    }

    fn retention_started(&self, dirs: &[RelPath], why: &str) {
        if dirs.is_empty() {
            return;
        }
        self.mark_dirty();
        for d in dirs {
            tracing::info!(dir = %d, why, "log dir retention started");
            self.events.emit(Record {
                kind: "retention_started".into(),
                path: d.to_string(),
                reason: why.into(),
                ..Default::default()
            });
        }
    }

    /// Synchronize: adopt live containers the state does not know, find dirs on disk the
    /// state lost, and start the retention of every dir whose containers are gone.
    pub fn synchronize(&self, pods: &[PodSandbox], containers: &[Container]) {
        let by_id: BTreeMap<&str, &PodSandbox> = pods.iter().map(|p| (p.id.as_str(), p)).collect();
        let live: BTreeSet<String> = containers.iter().map(|c| c.id.clone()).collect();
        let now = unix_secs(self.clock.now());
        let on_disk = self.scan_metadata();
        let started = {
            let mut store = self.store.lock().expect("store");
            for c in containers {
                let Some(pod) = by_id.get(c.pod_sandbox_id.as_str()) else {
                    continue;
                };
                let Ok(Some(req)) = self.request(pod, c) else {
                    continue;
                };
                let Ok(plan) = self.plan_for(pod, c, &req) else {
                    continue;
                };
                let template = DirRecord {
                    namespace: pod.namespace.clone(),
                    pod: pod.name.clone(),
                    pod_uid: pod.uid.clone(),
                    container: c.name.clone(),
                    metadata: Some(plan.metadata.clone()),
                    live: BTreeSet::new(),
                    removed_at: None,
                };
                store.container_created(&plan.container_dir, template, &c.id);
            }
            for (dir, rec) in on_disk {
                store.records.entry(dir).or_insert(rec);
            }
            store.reconcile(&live, now)
        };
        self.mark_dirty();
        self.retention_started(&started, "container gone while the agent was away");
        self.save_if_dirty();
        tracing::info!(
            pods = pods.len(),
            containers = containers.len(),
            retention_started = started.len(),
            "file logs synchronized"
        );
    }

    /// Container dirs found on disk through their metadata files.
    fn scan_metadata(&self) -> Vec<(RelPath, DirRecord)> {
        let mut out = Vec::new();
        let meta_depth = self.layout.depth() - 1;
        let mut frontier = vec![RelPath::new(Vec::new()).expect("root")];
        for _ in 0..meta_depth {
            let mut next = Vec::new();
            for d in &frontier {
                for (name, is_dir) in self.fs.list_dir(d).ok().flatten().unwrap_or_default() {
                    if let (true, Some(n)) = (is_dir, name.to_str())
                        && let Ok(p) = d.join(n)
                    {
                        next.push(p);
                    }
                }
            }
            frontier = next;
        }
        for d in frontier {
            for (name, is_dir) in self.fs.list_dir(&d).ok().flatten().unwrap_or_default() {
                let Some(n) = name.to_str() else { continue };
                let Some(container) = n.strip_suffix(META_SUFFIX) else {
                    continue;
                };
                if is_dir || names::label("container", container).is_err() {
                    continue;
                }
                let (Ok(meta_path), Ok(dir)) = (d.join(n), d.join(container)) else {
                    continue;
                };
                let meta: Option<Metadata> = self
                    .fs
                    .read_file(&meta_path, MAX_META)
                    .ok()
                    .flatten()
                    .and_then(|b| serde_json::from_slice(&b).ok());
                let Some(meta) = meta else {
                    tracing::warn!(path = %meta_path, "unreadable metadata file; its dir is left alone");
                    continue;
                };
                out.push((
                    dir,
                    DirRecord {
                        namespace: meta.namespace,
                        pod: meta.pod,
                        pod_uid: meta.pod_uid,
                        container: meta.container,
                        metadata: Some(meta_path),
                        live: BTreeSet::new(),
                        removed_at: None,
                    },
                ));
            }
        }
        out
    }
}

/// The NRI plugin of the agent: file logs and faketime, merged into one adjustment; and the
/// runtime's pod sandboxes, for the collection of leaked IPAM leases.
pub struct AgentPlugin {
    pub filelogs: Option<Arc<FileLogs>>,
    pub faketime: Option<Arc<crate::faketime::FakeTime>>,
    pub sandboxes: Option<Arc<crate::ipam::sandboxes::Sandboxes>>,
}

impl berth_nri::Plugin for AgentPlugin {
    fn events(&self) -> berth_nri::EventMask {
        use berth_nri::Event::*;
        let mut events = vec![
            CreateContainer,
            PostStartContainer,
            RemoveContainer,
            RemovePodSandbox,
        ];
        if self.sandboxes.is_some() {
            events.extend([RunPodSandbox, StopPodSandbox]);
        }
        berth_nri::EventMask::of(&events)
    }

    async fn configure(
        &self,
        req: berth_nri::api::ConfigureRequest,
    ) -> berth_nri::HandlerResult<()> {
        tracing::info!(runtime = %req.runtime_name, version = %req.runtime_version,
            request_timeout_ms = req.request_timeout, "nri runtime configured the agent");
        if let Some(s) = &self.sandboxes {
            s.connecting();
        }
        Ok(())
    }

    async fn synchronize(
        &self,
        pods: Vec<PodSandbox>,
        containers: Vec<Container>,
    ) -> berth_nri::HandlerResult<Vec<berth_nri::ContainerUpdate>> {
        if let Some(s) = &self.sandboxes {
            s.synchronize(&pods);
        }
        if let Some(f) = &self.filelogs {
            f.synchronize(&pods, &containers);
        }
        if let Some(ft) = &self.faketime {
            ft.synchronize(&pods, &containers);
        }
        Ok(Vec::new())
    }

    async fn create_container(
        &self,
        pod: PodSandbox,
        ctr: Container,
    ) -> berth_nri::HandlerResult<CreateContainerResponse> {
        // Faketime first: it may refuse. It asks containerd without blocking this thread and
        // writes its files on a blocking one.
        let injected = match &self.faketime {
            Some(ft) if ft.applies(&pod, &ctr) => ft.create(pod.clone(), ctr.clone()).await?,
            // No annotation: nothing to inject, and no hop to a blocking thread (two thread
            // wake-ups, each a scheduling delay on a busy node) on the CreateContainer path.
            _ => None,
        };
        let mut resp = match &self.filelogs {
            Some(f) => match f.create_container(&pod, &ctr) {
                Ok(r) => r,
                Err(e) => {
                    if let (Some(ft), Some(_)) = (&self.faketime, &injected) {
                        ft.undo_create(&ctr);
                    }
                    return Err(e);
                }
            },
            None => CreateContainerResponse::default(),
        };
        if let Some(inj) = injected {
            let adjust = resp.adjust.get_or_insert_with(Default::default);
            adjust.mounts.extend(inj.mounts);
            adjust.env.extend(inj.env);
        }
        Ok(resp)
    }

    async fn event(
        &self,
        event: berth_nri::Event,
        pod: PodSandbox,
        ctr: Option<Container>,
    ) -> berth_nri::HandlerResult<()> {
        if let Some(s) = &self.sandboxes {
            match event {
                berth_nri::Event::RunPodSandbox => s.started(&pod.id),
                berth_nri::Event::StopPodSandbox | berth_nri::Event::RemovePodSandbox => {
                    s.gone(&pod.id)
                }
                _ => {}
            }
        }
        if let Some(ft) = &self.faketime {
            match (event, &ctr) {
                (berth_nri::Event::PostStartContainer, Some(c)) => {
                    let (ft, c) = (ft.clone(), c.clone());
                    let _ = tokio::task::spawn_blocking(move || ft.container_started(&c)).await;
                }
                (berth_nri::Event::RemoveContainer, Some(c)) => ft.container_removed(c),
                (berth_nri::Event::RemovePodSandbox, _) => ft.pod_removed(&pod),
                _ => {}
            }
        }
        let Some(f) = &self.filelogs else {
            return Ok(());
        };
        match (event, ctr) {
            (berth_nri::Event::RemoveContainer, Some(c)) => f.container_removed(&c),
            (berth_nri::Event::RemovePodSandbox, _) => f.pod_removed(&pod),
            _ => {}
        }
        Ok(())
    }

    async fn shutdown(&self) {
        tracing::info!("nri runtime is shutting down");
        if let Some(f) = &self.filelogs {
            f.flush_metadata();
            f.save_if_dirty();
        }
    }
}
