//! Faketime as the NRI handler drives it: decide at CreateContainer, judge the entry point
//! (asynchronously, through containerd), prepare the container's timestamp file on a blocking
//! thread, answer with mounts and env; check again after start when the entry point could not
//! be judged before; forget removed containers.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_common::error_chain;
use berth_faketime::env::Injection;
use berth_faketime::shim::CONTAINER_SHIM_PATH;
use berth_faketime::{Coverage, Offset, file, install_shim, plan};
use berth_nri::{Container, HandlerError, KeyValue, Mount, PodSandbox};

use super::probe::{JUDGE_TIMEOUT, ProbeError, RootfsProbe, inspect_process};
use super::store::{CheckedAt, CoverageRecord, Entry, Store, now_rfc3339, valid_container_id};
use super::vdso::Vdso;
use crate::config::{FakeTimeConfig, OnUncovered};
use crate::events::{EventLog, Record};
use crate::retention::Clock;

/// What faketime adds to a container's adjustment.
#[derive(Debug, Clone, PartialEq)]
pub struct Injected {
    pub mounts: Vec<Mount>,
    pub env: Vec<KeyValue>,
}

pub struct FakeTime {
    pub(super) cfg: FakeTimeConfig,
    pub(super) store: Store,
    /// Host path of the shim.
    shim: PathBuf,
    probe: Arc<dyn RootfsProbe>,
    pub(super) events: Arc<EventLog>,
    clock: Arc<dyn Clock>,
    /// Static, Go and musl entry points: their vDSO is patched after start ([`super::vdso`]).
    pub(super) vdso: Vdso,
}

fn ann_value(pod: &PodSandbox, container: &str) -> String {
    let key = format!(
        "{}{container}",
        berth_faketime::offset::CONTAINER_ANNOTATION_PREFIX
    );
    pod.annotations
        .get(&key)
        .or_else(|| pod.annotations.get(berth_faketime::offset::ANNOTATION))
        .cloned()
        .unwrap_or_default()
}

impl FakeTime {
    /// Installs the shim in `shim_dir` (an unchanged file is left alone).
    pub fn new(
        cfg: FakeTimeConfig,
        state_dir: &Path,
        shim_dir: &Path,
        probe: Arc<dyn RootfsProbe>,
        events: Arc<EventLog>,
        clock: Arc<dyn Clock>,
    ) -> Result<FakeTime, berth_faketime::shim::InstallError> {
        let shim = install_shim(shim_dir)?;
        Ok(FakeTime {
            vdso: Vdso::new(cfg.patch_vdso),
            cfg,
            store: Store::new(state_dir),
            shim,
            probe,
            events,
            clock,
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub(super) fn record(pod: &PodSandbox, ctr: &Container) -> Record {
        Record {
            namespace: pod.namespace.clone(),
            pod: pod.name.clone(),
            pod_uid: pod.uid.clone(),
            container: ctr.name.clone(),
            container_id: ctr.id.clone(),
            ..Default::default()
        }
    }

    fn entry(pod: &PodSandbox, ctr: &Container, offset: Offset) -> Entry {
        Entry {
            namespace: pod.namespace.clone(),
            pod: pod.name.clone(),
            pod_uid: pod.uid.clone(),
            container: ctr.name.clone(),
            offset_ns: offset.as_nanos(),
            injected: false,
            coverage: None,
            note: String::new(),
            updated_at: now_rfc3339(),
        }
    }

    pub(super) fn refuse(
        &self,
        pod: &PodSandbox,
        ctr: &Container,
        value: &str,
        reason: &str,
    ) -> HandlerError {
        tracing::warn!(namespace = %pod.namespace, pod = %pod.name, container = %ctr.name, id = %ctr.id,
            value, reason, "faketime: container refused");
        self.events.emit(Record {
            kind: "faketime_refused".into(),
            value: value.into(),
            reason: reason.into(),
            ..Self::record(pod, ctr)
        });
        HandlerError::new(format!(
            "berth refused faketime for container {:?} in pod {}/{}: {reason}",
            ctr.name, pod.namespace, pod.name
        ))
    }

    /// The offset the pod's faketime annotations ask for `ctr` (`None`: none names it).
    fn wanted_offset(
        &self,
        pod: &PodSandbox,
        ctr: &Container,
    ) -> Result<Option<Offset>, berth_faketime::offset::OffsetError> {
        berth_faketime::offset::offset_from_annotations(
            pod.annotations
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
            &ctr.name,
            self.clock.now(),
        )
    }

    /// Whether [`FakeTime::create`] has anything to do for `ctr`: a faketime annotation of its
    /// pod names it (or the whole pod). No I/O, so CreateContainer skips the faketime path for
    /// every other container.
    pub fn applies(&self, pod: &PodSandbox, ctr: &Container) -> bool {
        !ann_value(pod, &ctr.name).is_empty() || !matches!(self.wanted_offset(pod, ctr), Ok(None))
    }

    /// Whether the entry point is worth judging: the annotation is valid and asks for faketime.
    fn wants_judgement(&self, pod: &PodSandbox, ctr: &Container) -> bool {
        valid_container_id(&ctr.id) && matches!(self.wanted_offset(pod, ctr), Ok(Some(_)))
    }

    /// The entry point's coverage, from the probe, given at most [`JUDGE_TIMEOUT`]. Runs on the
    /// NRI thread without blocking it: containerd is asked asynchronously, and file reads (first
    /// container of an image) happen on a blocking thread.
    pub async fn judge(&self, ctr: &Container) -> Result<Coverage, ProbeError> {
        match tokio::time::timeout(JUDGE_TIMEOUT, self.probe.inspect(ctr)).await {
            Ok(r) => r,
            Err(_) => Err(ProbeError::Timeout(JUDGE_TIMEOUT)),
        }
    }

    /// CreateContainer: judges the entry point, then prepares the container on a blocking
    /// thread (see [`FakeTime::create_container`]).
    pub async fn create(
        self: &Arc<Self>,
        pod: PodSandbox,
        ctr: Container,
    ) -> Result<Option<Injected>, HandlerError> {
        let started = std::time::Instant::now();
        let judged = if self.wants_judgement(&pod, &ctr) {
            Some(self.judge(&ctr).await)
        } else {
            None
        };
        let judge_us = started.elapsed().as_micros() as u64;
        let ft = self.clone();
        tokio::task::spawn_blocking(move || ft.create_container(&pod, &ctr, judged, judge_us))
            .await
            .map_err(|e| HandlerError::new(format!("faketime handler failed: {e}")))?
    }

    /// CreateContainer once the entry point was judged (`judged`: `None` when the annotation
    /// asks for nothing or is invalid; `judge_us`: how long judging took, for the log).
    /// `None` when the container gets no shim (no annotation, or its entry point cannot be
    /// shifted and `on_uncovered = "run-unfaked"`); an error refuses it. A judgement that failed
    /// injects the shim all the same: it loads into any glibc program and is inert elsewhere,
    /// and the entry point is judged again once it runs.
    pub fn create_container(
        &self,
        pod: &PodSandbox,
        ctr: &Container,
        judged: Option<Result<Coverage, ProbeError>>,
        judge_us: u64,
    ) -> Result<Option<Injected>, HandlerError> {
        let value = ann_value(pod, &ctr.name);
        let injection = Injection {
            cache_duration_secs: u32::try_from(self.cfg.cache_duration.as_secs())
                .unwrap_or(u32::MAX),
            ..Injection::default()
        };
        if !valid_container_id(&ctr.id) {
            if value.is_empty() {
                return Ok(None);
            }
            return Err(self.refuse(pod, ctr, &value, "container id is not a plain identifier"));
        }
        let dir = self.store.container_dir(&ctr.id);
        // Cheap first: does an annotation apply at all?
        let wanted = self.wanted_offset(pod, ctr);
        match wanted {
            Ok(None) => return Ok(None),
            Ok(Some(_)) => {}
            Err(e) => return Err(self.refuse(pod, ctr, &value, &error_chain(&e))),
        }
        let started = std::time::Instant::now();
        let probed = judged.unwrap_or(Err(ProbeError::NotJudged));
        let planned = plan::plan_with(
            pod.annotations
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
            &ctr.name,
            &ctr.env,
            self.clock.now(),
            &self.shim,
            &dir,
            &injection,
        );
        let p = match planned {
            Ok(None) => return Ok(None),
            Ok(Some(p)) => p,
            Err(e) => return Err(self.refuse(pod, ctr, &value, &error_chain(&e))),
        };
        let mut entry = Self::entry(pod, ctr, p.offset);
        match probed {
            Ok(cov) => {
                entry.coverage = Some(CoverageRecord::new(&cov, CheckedAt::Create));
                if !cov.is_covered() && self.vdso.will_patch(&cov) {
                    entry.coverage = Some(super::vdso::covered_record(&cov, CheckedAt::Create));
                    return self.vdso_planned(pod, ctr, &value, entry, &p);
                }
                if !cov.is_covered() {
                    return self.uncovered(pod, ctr, &value, entry, &cov);
                }
            }
            Err(e) => {
                entry.note = format!(
                    "injected before the entry point could be judged ({}); checked when it starts",
                    error_chain(&e)
                );
                tracing::info!(namespace = %pod.namespace, pod = %pod.name, container = %ctr.name,
                    reason = %error_chain(&e), "faketime: entry point not judged at creation");
            }
        }
        if let Err(e) = p.prepare_host() {
            return Err(self.refuse(pod, ctr, &value, &error_chain(&e)));
        }
        entry.injected = true;
        let id = ctr.id.clone();
        if let Err(e) = self.store.update(|m| {
            m.insert(id, entry.clone());
        }) {
            let _ = plan::remove_state_dir(&dir);
            return Err(self.refuse(pod, ctr, &value, &error_chain(&e)));
        }
        let prepare_us = started.elapsed().as_micros() as u64;
        tracing::info!(namespace = %pod.namespace, pod = %pod.name, container = %ctr.name, id = %ctr.id,
            offset = %p.offset, covered = ?entry.coverage.as_ref().map(|c| c.covered), judge_us, prepare_us,
            "faketime injected");
        self.events.emit(Record {
            kind: "faketime_injected".into(),
            value,
            path: dir.display().to_string(),
            reason: entry
                .coverage
                .as_ref()
                .map(|c| c.reason.clone())
                .unwrap_or(entry.note.clone()),
            ..Self::record(pod, ctr)
        });
        let mounts = p
            .mounts
            .iter()
            .map(|m| Mount {
                destination: m.destination.to_string(),
                r#type: "bind".into(),
                source: m.source.to_string_lossy().into_owned(),
                options: m.options.iter().map(|s| s.to_string()).collect(),
            })
            .collect();
        let env = p
            .set_env
            .into_iter()
            .map(|(key, value)| KeyValue { key, value })
            .collect();
        Ok(Some(Injected { mounts, env }))
    }

    fn uncovered(
        &self,
        pod: &PodSandbox,
        ctr: &Container,
        value: &str,
        mut entry: Entry,
        cov: &Coverage,
    ) -> Result<Option<Injected>, HandlerError> {
        let reason = format!(
            "entry point {:?} is not covered: {}",
            ctr.args.first().map(String::as_str).unwrap_or(""),
            cov.reason()
        );
        if self.cfg.on_uncovered == OnUncovered::Refuse {
            return Err(self.refuse(pod, ctr, value, &reason));
        }
        entry.note = format!("runs with the real clock: {reason}");
        let id = ctr.id.clone();
        let kept = entry.clone();
        if let Err(e) = self.store.update(|m| {
            m.insert(id, kept);
        }) {
            tracing::error!(error = %error_chain(&e), "cannot record faketime state");
        }
        tracing::warn!(namespace = %pod.namespace, pod = %pod.name, container = %ctr.name, id = %ctr.id,
            value, reason = %reason, "faketime not injected: the container runs with the real clock");
        self.events.emit(Record {
            kind: "faketime_uncovered".into(),
            value: value.into(),
            reason,
            ..Self::record(pod, ctr)
        });
        Ok(None)
    }

    /// Undoes [`Self::create_container`] when another feature refused the container.
    pub fn undo_create(&self, ctr: &Container) {
        self.forget(&ctr.id);
    }

    fn forget(&self, id: &str) {
        if !valid_container_id(id) {
            return;
        }
        let had = self
            .store
            .update(|m| m.remove(id).is_some())
            .unwrap_or_else(|e| {
                tracing::error!(error = %error_chain(&e), "cannot update faketime state");
                false
            });
        let dir = self.store.container_dir(id);
        if let Err(e) = plan::remove_state_dir(&dir) {
            tracing::error!(dir = %dir.display(), error = %e, "cannot remove a faketime state dir");
        } else if had {
            tracing::debug!(id, "faketime state removed");
        }
    }

    /// PostStartContainer: judge the entry point now if it was not judged at creation.
    pub fn container_started(&self, ctr: &Container) {
        self.vdso_started(ctr);
        let Ok(entries) = self.store.read() else {
            return;
        };
        let Some(e) = entries.get(&ctr.id) else {
            return;
        };
        if e.coverage.is_some() || !e.injected {
            return;
        }
        if ctr.pid == 0 {
            tracing::warn!(id = %ctr.id, "faketime: the runtime gave no pid; the entry point stays unjudged");
            return;
        }
        let cov = match inspect_process(ctr.pid) {
            Ok(c) => c,
            Err(err) => {
                tracing::warn!(id = %ctr.id, error = %error_chain(&err), "faketime: cannot judge the running entry point");
                return;
            }
        };
        let rec = CoverageRecord::new(&cov, CheckedAt::Start);
        let mut note = String::new();
        if !cov.is_covered() {
            // Too late not to inject: make it harmless and honest. Offset 0 means any covered
            // child sees the same (real) time as the uncovered entry point.
            note = format!(
                "the shim was injected but cannot work for the entry point; offset set to 0 (real clock): {}",
                cov.reason()
            );
            let f = self
                .store
                .container_dir(&ctr.id)
                .join(file::TIMESTAMP_FILE_NAME);
            if let Err(e) = file::write_timestamp_file(&f, Offset::ZERO) {
                tracing::error!(error = %error_chain(&e), "cannot reset the faketime offset");
            }
            if self.cfg.on_uncovered == OnUncovered::Refuse {
                tracing::error!(id = %ctr.id, "faketime: on_uncovered = \"refuse\" cannot stop a container that already runs; it was not judged at creation because containerd did not answer at faketime.containerd_address (see the container's note)");
            }
        }
        let id = ctr.id.clone();
        let (rec2, note2) = (rec.clone(), note.clone());
        let _ = self.store.update(|m| {
            if let Some(e) = m.get_mut(&id) {
                e.coverage = Some(rec2);
                e.note = note2;
                if !e.coverage.as_ref().is_some_and(|c| c.covered) {
                    e.offset_ns = 0;
                }
                e.updated_at = now_rfc3339();
            }
        });
        tracing::info!(id = %ctr.id, covered = rec.covered, reason = %rec.reason, "faketime: entry point judged after start");
        if !rec.covered {
            self.events.emit(Record {
                kind: "faketime_uncovered".into(),
                namespace: e.namespace.clone(),
                pod: e.pod.clone(),
                pod_uid: e.pod_uid.clone(),
                container: e.container.clone(),
                container_id: ctr.id.clone(),
                reason: note,
                ..Default::default()
            });
        }
    }

    /// RemoveContainer: its state dir and record go.
    pub fn container_removed(&self, ctr: &Container) {
        self.forget(&ctr.id);
    }

    /// RemovePodSandbox: containers of the pod whose removal was missed go too.
    pub fn pod_removed(&self, pod: &PodSandbox) {
        if pod.uid.is_empty() {
            return;
        }
        let ids: Vec<String> = match self.store.read() {
            Ok(m) => m
                .iter()
                .filter(|(_, e)| e.pod_uid == pod.uid)
                .map(|(id, _)| id.clone())
                .collect(),
            Err(e) => {
                tracing::error!(error = %error_chain(&e), "cannot read faketime state");
                return;
            }
        };
        for id in ids {
            self.forget(&id);
        }
    }

    /// Synchronize: drop the state of containers that vanished while the agent was away, keep
    /// live ones, re-adopt live injected containers whose record was lost.
    pub fn synchronize(&self, pods: &[PodSandbox], containers: &[Container]) {
        let live: BTreeSet<&str> = containers.iter().map(|c| c.id.as_str()).collect();
        let mut gone: Vec<String> = Vec::new();
        let mut adopted = 0usize;
        let r = self.store.update(|m| {
            m.retain(|id, _| {
                let keep = live.contains(id.as_str());
                if !keep {
                    gone.push(id.clone());
                }
                keep
            });
            for c in containers {
                if m.contains_key(&c.id) || !valid_container_id(&c.id) {
                    continue;
                }
                let injected = c
                    .env_var("LD_PRELOAD")
                    .is_some_and(|v| v.split([':', ' ']).any(|p| p == CONTAINER_SHIM_PATH));
                let f = self
                    .store
                    .container_dir(&c.id)
                    .join(file::TIMESTAMP_FILE_NAME);
                let Some(pod) = pods.iter().find(|p| p.id == c.pod_sandbox_id) else {
                    continue;
                };
                if let (true, Ok(offset)) = (injected, file::read_timestamp_file(&f)) {
                    let mut e = Self::entry(pod, c, offset);
                    e.injected = true;
                    e.note = "re-adopted after the agent lost its state".into();
                    m.insert(c.id.clone(), e);
                    adopted += 1;
                }
            }
        });
        if let Err(e) = r {
            tracing::error!(error = %error_chain(&e), "cannot reconcile faketime state");
            return;
        }
        // Dirs on disk without a live container (state lost, or removal missed).
        if let Ok(rd) = std::fs::read_dir(self.store.containers_root()) {
            for d in rd.flatten() {
                let name = d.file_name().to_string_lossy().into_owned();
                if valid_container_id(&name)
                    && !live.contains(name.as_str())
                    && !gone.contains(&name)
                {
                    gone.push(name);
                }
            }
        }
        for id in &gone {
            let _ = plan::remove_state_dir(&self.store.container_dir(id));
        }
        self.vdso_synchronize(containers);
        tracing::info!(
            containers = containers.len(),
            removed = gone.len(),
            adopted,
            "faketime synchronized"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retention::SystemClock;
    use std::sync::Mutex;

    /// Answers with a fixed judgement and counts calls.
    struct FakeProbe {
        answer: Mutex<Option<Coverage>>,
        calls: Mutex<u32>,
    }

    impl FakeProbe {
        fn new(answer: Option<Coverage>) -> Arc<FakeProbe> {
            Arc::new(FakeProbe {
                answer: Mutex::new(answer),
                calls: Mutex::new(0),
            })
        }
    }

    impl RootfsProbe for FakeProbe {
        fn inspect<'a>(&'a self, _ctr: &'a Container) -> super::super::probe::Judging<'a> {
            *self.calls.lock().unwrap() += 1;
            let answer = self.answer.lock().unwrap().clone().ok_or(ProbeError::Rpc {
                address: "/run/containerd/containerd.sock".into(),
                call: "Snapshots.Stat",
                source: tonic::Status::unavailable("connection refused"),
            });
            Box::pin(async move { answer })
        }
    }

    /// Never answers: CreateContainer must stop waiting.
    struct SilentProbe;

    impl RootfsProbe for SilentProbe {
        fn inspect<'a>(&'a self, _ctr: &'a Container) -> super::super::probe::Judging<'a> {
            Box::pin(std::future::pending())
        }
    }

    fn glibc() -> Coverage {
        Coverage::Glibc {
            interpreter: "/lib64/ld-linux-x86-64.so.2".into(),
            glibc: None,
        }
    }

    struct Bed {
        tmp: tempfile::TempDir,
        ft: Arc<FakeTime>,
        probe: Arc<FakeProbe>,
    }

    impl Bed {
        /// CreateContainer as the NRI thread runs it: on a current-thread runtime.
        fn create(
            &self,
            pod: &PodSandbox,
            ctr: &Container,
        ) -> Result<Option<Injected>, HandlerError> {
            runtime().block_on(self.ft.create(pod.clone(), ctr.clone()))
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn bed(answer: Option<Coverage>, on_uncovered: OnUncovered) -> Bed {
        bed_with(answer, on_uncovered, None)
    }

    fn bed_with(
        answer: Option<Coverage>,
        on_uncovered: OnUncovered,
        probe_override: Option<Arc<dyn RootfsProbe>>,
    ) -> Bed {
        let tmp = tempfile::tempdir().unwrap();
        let probe = FakeProbe::new(answer);
        let cfg = FakeTimeConfig {
            on_uncovered,
            cache_duration: std::time::Duration::from_secs(3),
            // the shim's behaviour; the vDSO path has its own tests (super::vdso)
            patch_vdso: false,
            ..FakeTimeConfig::default()
        };
        let used: Arc<dyn RootfsProbe> = probe_override.unwrap_or_else(|| probe.clone());
        let ft = Arc::new(
            FakeTime::new(
                cfg,
                tmp.path(),
                &tmp.path().join("faketime"),
                used,
                Arc::new(EventLog::new(tmp.path())),
                Arc::new(SystemClock),
            )
            .unwrap(),
        );
        Bed { tmp, ft, probe }
    }

    fn pod(ann: &[(&str, &str)]) -> PodSandbox {
        PodSandbox {
            id: "pod1".into(),
            name: "web-0".into(),
            namespace: "shop".into(),
            uid: "uid-1".into(),
            annotations: ann
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    fn ctr(id: &str, name: &str, env: &[&str]) -> Container {
        Container {
            id: id.into(),
            pod_sandbox_id: "pod1".into(),
            name: name.into(),
            args: vec!["/bin/sh".into()],
            env: env.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn kinds(b: &Bed) -> Vec<String> {
        std::fs::read_to_string(b.tmp.path().join("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"].to_string())
            .collect()
    }

    #[test]
    fn covered_container_gets_mounts_env_and_a_timestamp_file() {
        let b = bed(Some(glibc()), OnUncovered::RunUnfaked);
        let p = pod(&[
            ("berth.io/faketime", "+2d"),
            ("berth.io/faketime.db", "-3h"),
        ]);
        let c = ctr(
            "c1",
            "app",
            &["PATH=/bin", "LD_PRELOAD=/usr/lib/libjemalloc.so"],
        );
        let inj = b.create(&p, &c).unwrap().expect("injected");
        let env: Vec<(String, String)> = inj
            .env
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect();
        assert_eq!(
            env,
            vec![
                (
                    "LD_PRELOAD".into(),
                    format!("/usr/lib/libjemalloc.so:{CONTAINER_SHIM_PATH}")
                ),
                (
                    "FAKETIME_TIMESTAMP_FILE".into(),
                    "/.berth/faketime/state/offset".into()
                ),
                ("FAKETIME_CACHE_DURATION".into(), "3".into()),
            ]
        );
        let dir = b.ft.store().container_dir("c1");
        assert_eq!(inj.mounts.len(), 2);
        assert_eq!(
            inj.mounts[0].source,
            b.tmp
                .path()
                .join("faketime/libberth-faketime.so")
                .display()
                .to_string(),
            "the one shim"
        );
        assert_eq!(inj.mounts[1].source, dir.display().to_string());
        assert!(
            inj.mounts
                .iter()
                .all(|m| m.options.contains(&"ro".to_string()))
        );
        assert_eq!(
            file::read_timestamp_file(&dir.join("offset")).unwrap(),
            "+2d".parse().unwrap()
        );
        let e = &b.ft.store().read().unwrap()["c1"];
        assert!(e.injected);
        assert_eq!(e.coverage.as_ref().unwrap().checked_at, CheckedAt::Create);
        assert_eq!((e.namespace.as_str(), e.pod.as_str()), ("shop", "web-0"));
        // the container's own annotation wins
        b.create(&p, &ctr("c2", "db", &[])).unwrap().unwrap();
        assert_eq!(
            file::read_timestamp_file(&b.ft.store().container_dir("c2").join("offset")).unwrap(),
            "-3h".parse().unwrap()
        );
        assert_eq!(
            kinds(&b),
            vec!["\"faketime_injected\"", "\"faketime_injected\""]
        );
    }

    #[test]
    fn no_annotation_means_no_probe_and_no_state() {
        let b = bed(Some(glibc()), OnUncovered::RunUnfaked);
        assert_eq!(b.create(&pod(&[]), &ctr("c1", "app", &[])).unwrap(), None);
        assert_eq!(*b.probe.calls.lock().unwrap(), 0);
        assert!(b.ft.store().read().unwrap().is_empty());
        assert!(!b.ft.store().containers_root().exists());
    }

    #[test]
    fn uncovered_runs_unfaked_and_says_why() {
        let b = bed(Some(Coverage::Static), OnUncovered::RunUnfaked);
        let p = pod(&[("berth.io/faketime", "+2d")]);
        assert_eq!(b.create(&p, &ctr("c1", "bb", &[])).unwrap(), None);
        let e = &b.ft.store().read().unwrap()["c1"];
        assert!(!e.injected);
        assert_eq!(e.coverage.as_ref().unwrap().kind, "static");
        assert!(e.note.contains("statically linked"), "{}", e.note);
        assert!(!b.ft.store().container_dir("c1").exists());
        assert_eq!(kinds(&b), vec!["\"faketime_uncovered\""]);
    }

    #[test]
    fn uncovered_is_refused_when_configured() {
        let b = bed(
            Some(Coverage::Musl {
                interpreter: "/lib/ld-musl-x86_64.so.1".into(),
            }),
            OnUncovered::Refuse,
        );
        let p = pod(&[("berth.io/faketime", "+2d")]);
        let err = b.create(&p, &ctr("c1", "app", &[])).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("berth refused faketime for container \"app\" in pod shop/web-0"),
            "{msg}"
        );
        assert!(msg.contains("musl"), "{msg}");
        assert!(b.ft.store().read().unwrap().is_empty());
        assert!(!b.ft.store().container_dir("c1").exists());
        assert_eq!(kinds(&b), vec!["\"faketime_refused\""]);
    }

    #[test]
    fn a_bad_annotation_refuses_naming_the_key() {
        let b = bed(Some(glibc()), OnUncovered::RunUnfaked);
        let p = pod(&[("berth.io/faketime.app", "2 days")]);
        let msg = b
            .create(&p, &ctr("c1", "app", &[]))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("annotation berth.io/faketime.app is invalid"),
            "{msg}"
        );
        assert!(b.ft.store().read().unwrap().is_empty());
    }

    #[test]
    fn unjudged_container_is_injected_and_removal_cleans_up() {
        let b = bed(None, OnUncovered::RunUnfaked);
        let p = pod(&[("berth.io/faketime", "+1h")]);
        let inj = b.create(&p, &ctr("c1", "app", &[])).unwrap().unwrap();
        assert!(
            inj.mounts[0].source.ends_with("/libberth-faketime.so"),
            "the one shim, whatever the judgement"
        );
        let e = &b.ft.store().read().unwrap()["c1"];
        assert!(e.injected && e.coverage.is_none());
        assert!(e.note.contains("checked when it starts"), "{}", e.note);
        assert!(
            e.note
                .contains("containerd at /run/containerd/containerd.sock"),
            "the note says why: {}",
            e.note
        );
        // started without a pid: stays unjudged, nothing breaks
        b.ft.container_started(&ctr("c1", "app", &[]));
        assert!(b.ft.store().read().unwrap()["c1"].coverage.is_none());
        b.ft.container_removed(&ctr("c1", "app", &[]));
        assert!(b.ft.store().read().unwrap().is_empty());
        assert!(!b.ft.store().container_dir("c1").exists());
        // a missed RemoveContainer is caught by RemovePodSandbox
        b.create(&p, &ctr("c2", "app", &[])).unwrap().unwrap();
        let mut other = pod(&[]);
        other.uid = "uid-other".into();
        b.ft.pod_removed(&other);
        assert!(
            b.ft.store().container_dir("c2").exists(),
            "another pod's removal"
        );
        b.ft.pod_removed(&p);
        assert!(b.ft.store().read().unwrap().is_empty());
        assert!(!b.ft.store().container_dir("c2").exists());
    }

    #[test]
    fn a_probe_that_does_not_answer_is_given_up_and_the_shim_injected() {
        let b = bed_with(None, OnUncovered::Refuse, Some(Arc::new(SilentProbe)));
        let p = pod(&[("berth.io/faketime", "+1h")]);
        let started = std::time::Instant::now();
        let inj = b.create(&p, &ctr("c1", "app", &[])).unwrap();
        let took = started.elapsed();
        assert!(
            inj.is_some(),
            "injected: the shim is harmless where it cannot work"
        );
        assert!(
            took >= JUDGE_TIMEOUT && took < JUDGE_TIMEOUT + std::time::Duration::from_secs(2),
            "{took:?}"
        );
        let e = &b.ft.store().read().unwrap()["c1"];
        assert!(e.injected && e.coverage.is_none());
        assert!(e.note.contains("did not answer within 500ms"), "{}", e.note);
    }

    #[test]
    fn an_invalid_annotation_is_refused_without_asking_containerd() {
        let b = bed(Some(glibc()), OnUncovered::RunUnfaked);
        let p = pod(&[("berth.io/faketime", "soon")]);
        assert!(b.create(&p, &ctr("c1", "app", &[])).is_err());
        assert_eq!(*b.probe.calls.lock().unwrap(), 0);
    }

    #[test]
    fn started_container_is_judged_from_proc() {
        let b = bed(None, OnUncovered::RunUnfaked);
        let p = pod(&[("berth.io/faketime", "+1h")]);
        let mut c = ctr("c1", "app", &[]);
        b.create(&p, &c).unwrap().unwrap();
        c.pid = std::process::id(); // this test binary: glibc
        b.ft.container_started(&c);
        let e = &b.ft.store().read().unwrap()["c1"];
        let cov = e.coverage.as_ref().unwrap();
        assert!(cov.covered);
        assert_eq!(cov.checked_at, CheckedAt::Start);
        assert_eq!(
            e.offset_ns, 3_600_000_000_000,
            "a covered container keeps its offset"
        );
    }

    #[test]
    fn synchronize_keeps_live_and_drops_vanished_state() {
        let b = bed(Some(glibc()), OnUncovered::RunUnfaked);
        let p = pod(&[("berth.io/faketime", "+2d")]);
        for id in ["live", "gone"] {
            b.create(&p, &ctr(id, id, &[])).unwrap().unwrap();
        }
        // a stray dir nobody knows (state lost while its container went away)
        std::fs::create_dir_all(b.ft.store().container_dir("stray")).unwrap();
        let live = ctr("live", "live", &[]);
        b.ft.synchronize(std::slice::from_ref(&p), std::slice::from_ref(&live));
        let entries = b.ft.store().read().unwrap();
        assert_eq!(entries.keys().collect::<Vec<_>>(), vec!["live"]);
        assert!(b.ft.store().container_dir("live").join("offset").exists());
        assert!(!b.ft.store().container_dir("gone").exists());
        assert!(!b.ft.store().container_dir("stray").exists());
    }

    #[test]
    fn synchronize_readopts_an_injected_container_after_state_loss() {
        let b = bed(Some(glibc()), OnUncovered::RunUnfaked);
        let p = pod(&[("berth.io/faketime", "+2d")]);
        let inj = b.create(&p, &ctr("c1", "app", &[])).unwrap().unwrap();
        std::fs::remove_file(b.tmp.path().join(super::super::store::STATE_FILE)).unwrap();
        let mut running = ctr("c1", "app", &[]);
        running.env = inj
            .env
            .iter()
            .map(|kv| format!("{}={}", kv.key, kv.value))
            .collect();
        b.ft.synchronize(std::slice::from_ref(&p), &[running]);
        let e = &b.ft.store().read().unwrap()["c1"];
        assert!(e.injected);
        assert_eq!(e.offset_ns, 2 * 86_400 * 1_000_000_000);
        assert_eq!(e.container, "app");
    }
}
