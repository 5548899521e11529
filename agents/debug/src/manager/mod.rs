//! The session manager: finds targets, starts tools containers next to them, and removes
//! everything when a session ends or a previous agent left it behind. What runs inside a
//! session is in its own module: the session task ([`session`]), one-shot commands
//! ([`exec`]) and file copies ([`copy`]).

mod copy;
mod exec;
mod session;
#[cfg(test)]
mod tests;

pub use copy::CopiedFile;
pub use exec::{ExecOutput, ExecRequest, ExecResult, ExecStream};

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use berth_common::error_chain;
use bytes::Bytes;
use serde::Serialize;
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot};

use crate::audit::{AuditEvent, AuditSink, Caller};
use crate::config::DebugConfig;
use crate::ctrd::{Ctrd, ImageInfo};
use crate::error::{Error, Result};
use crate::profile::{Profile, Security};
use crate::runtime::{Runtime, StdioPaths};
use crate::spec::{self, SpecInput};
use crate::stdio::Fifos;

/// Labels on every tools container (also how `reconcile` recognises them in `list`).
pub const LABEL_SESSION: &str = "berth.dev/debug-session";
pub const LABEL_TARGET: &str = "berth.dev/debug-target";
pub const LABEL_CALLER: &str = "berth.dev/debug-caller";
pub const LABEL_PROFILE: &str = "berth.dev/debug-profile";

/// How long a killed task may take to exit before cleanup goes on anyway.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// What to debug.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Target {
    /// A container id in the target namespace (CRI's `k8s.io`): its task's pid is looked up.
    Container(String),
    /// A host pid the caller already resolved.
    Pid(u32),
}

impl Target {
    fn describe(&self) -> String {
        match self {
            Target::Container(id) => id.clone(),
            Target::Pid(pid) => format!("pid:{pid}"),
        }
    }
}

/// Start a session.
#[derive(Clone, Debug)]
pub struct StartRequest {
    pub target: Target,
    /// Already authorized by the API layer.
    pub profile: Profile,
    pub caller: Caller,
    /// The tools image; the configured one when `None`.
    pub image: Option<String>,
    /// The command; the image's entrypoint + cmd (or `/bin/sh`) when empty.
    pub command: Vec<String>,
    /// A TTY (interactive shell) or plain stdout/stderr pipes.
    pub tty: bool,
}

impl StartRequest {
    /// An interactive shell in the target with the default profile.
    pub fn shell(target: Target, caller: Caller) -> Self {
        StartRequest {
            target,
            profile: Profile::General,
            caller,
            image: None,
            command: Vec::new(),
            tty: true,
        }
    }
}

/// A live session as `List` reports it.
#[derive(Clone, Debug, Serialize)]
pub struct SessionInfo {
    pub id: String,
    pub target: Target,
    pub target_pid: u32,
    pub caller: Caller,
    pub profile: Profile,
    pub image: String,
    pub command: Vec<String>,
    pub tty: bool,
    pub started_at: SystemTime,
    pub attached: bool,
}

/// Client → session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    Stdin(Bytes),
    Resize { cols: u16, rows: u16 },
    Signal(i32),
    CloseStdin,
}

/// Session → client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Stdout(Bytes),
    Stderr(Bytes),
    /// The last message: the session is over and its container removed.
    Exit(SessionEnd),
}

/// Why and how a session ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SessionEnd {
    pub reason: EndReason,
    pub exit_status: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The tools process exited by itself.
    Exited,
    /// `terminate` was called.
    Terminated,
    /// The target container's process exited.
    TargetExited,
    /// No client was attached for longer than the grace period.
    Detached,
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EndReason::Exited => "exited",
            EndReason::Terminated => "terminated",
            EndReason::TargetExited => "target exited",
            EndReason::Detached => "client detached longer than the grace period",
        })
    }
}

/// A client's connection to a session. Dropping `input` detaches (the session then lives
/// for the configured grace period); `output` ends with [`Output::Exit`].
pub struct Attachment {
    pub input: mpsc::Sender<Input>,
    pub output: mpsc::Receiver<Output>,
}

/// What `reconcile` removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReconcileReport {
    pub containers: Vec<String>,
    pub snapshots: Vec<String>,
    pub stdio_dirs: Vec<String>,
    pub failures: Vec<String>,
}

enum Control {
    Attach(Caller, oneshot::Sender<Result<Attachment>>),
    Terminate(oneshot::Sender<()>),
}

struct Handle {
    info: Arc<Mutex<SessionInfo>>,
    control: mpsc::Sender<Control>,
    security: Security,
    env: Vec<String>,
    cwd: String,
    done: tokio::sync::watch::Receiver<Option<Vec<String>>>,
}

struct Inner {
    config: DebugConfig,
    ctrd: Arc<dyn Runtime>,
    audit: Arc<dyn AuditSink>,
    sessions: Mutex<HashMap<String, Handle>>,
    /// Sessions being started: `reconcile` must not take their container for a leftover.
    starting: Mutex<std::collections::HashSet<String>>,
    images: tokio::sync::Mutex<HashMap<String, ImageInfo>>,
}

/// The debug session manager (one per agent). Cheap to clone.
#[derive(Clone)]
pub struct DebugManager {
    inner: Arc<Inner>,
}

impl DebugManager {
    /// Connects to containerd. Call [`DebugManager::reconcile`] once at agent start.
    pub async fn connect(config: DebugConfig, audit: Arc<dyn AuditSink>) -> Result<Self> {
        config.validate()?;
        let ctrd = Ctrd::connect(
            &config.containerd_socket,
            &config.namespace,
            &config.snapshotter,
            &config.runtime,
            config.runc_binary.as_deref(),
            config.runc_root.as_deref(),
        )
        .await?;
        Ok(Self::with_runtime(config, audit, Arc::new(ctrd)))
    }

    /// A manager over any runtime (the seam unit tests use).
    pub(crate) fn with_runtime(
        config: DebugConfig,
        audit: Arc<dyn AuditSink>,
        ctrd: Arc<dyn Runtime>,
    ) -> Self {
        DebugManager {
            inner: Arc::new(Inner {
                config,
                ctrd,
                audit,
                sessions: Mutex::new(HashMap::new()),
                starting: Mutex::new(std::collections::HashSet::new()),
                images: tokio::sync::Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn config(&self) -> &DebugConfig {
        &self.inner.config
    }

    /// Live sessions.
    pub fn list(&self) -> Vec<SessionInfo> {
        let mut v: Vec<SessionInfo> = self
            .inner
            .sessions
            .lock()
            .expect("sessions lock")
            .values()
            .map(|h| h.info.lock().expect("info lock").clone())
            .collect();
        v.sort_by_key(|s| s.started_at);
        v
    }

    /// The running app container `container` of pod `pod_namespace/pod` (any, when the pod
    /// runs exactly one), as (container id, container name), from the labels CRI puts on
    /// containers in the target namespace. The newest wins when an old attempt is listed.
    pub async fn find_target(
        &self,
        pod_namespace: &str,
        pod: &str,
        container: Option<&str>,
    ) -> Result<(String, String)> {
        let ns = &self.inner.config.target_namespace;
        let mut running = Vec::new();
        for c in self
            .inner
            .ctrd
            .pod_containers(ns, pod_namespace, pod)
            .await?
        {
            if self.inner.ctrd.task_pid(ns, &c.id).await?.is_some() {
                running.push(c);
            }
        }
        running.sort_by_key(|c| std::cmp::Reverse(c.created_unix_ns));
        let mut names: Vec<&str> = running.iter().map(|c| c.name.as_str()).collect();
        names.sort();
        names.dedup();
        let pick = match container {
            Some(name) => running.iter().find(|c| c.name == name).ok_or_else(|| {
                Error::TargetNotFound(format!(
                    "pod {pod_namespace}/{pod} has no running container {name:?} on this node \
                     (running: [{}])",
                    names.join(", ")
                ))
            })?,
            None => match names.as_slice() {
                [] => {
                    return Err(Error::TargetNotFound(format!(
                        "pod {pod_namespace}/{pod} has no running container on this node: check \
                         the name and that the pod runs here"
                    )));
                }
                [_] => &running[0],
                many => {
                    return Err(Error::AmbiguousTarget(format!(
                        "pod {pod_namespace}/{pod} runs containers [{}]: name one",
                        many.join(", ")
                    )));
                }
            },
        };
        Ok((pick.id.clone(), pick.name.clone()))
    }

    /// Starts a tools container joined to the target's namespaces. Its output is kept
    /// (up to 64 KiB) until a client attaches.
    pub async fn start(&self, req: StartRequest) -> Result<SessionInfo> {
        self.start_with(req, None).await
    }

    /// [`DebugManager::start`] with the caller attached from the first instant, so a command
    /// that ends at once still delivers its output and exit status (a separate `attach` could
    /// come too late and find the session over).
    pub async fn start_attached(&self, req: StartRequest) -> Result<(SessionInfo, Attachment)> {
        let (tx, rx) = oneshot::channel();
        let caller = req.caller.clone();
        let info = self.start_with(req, Some((caller, tx))).await?;
        let attachment = rx
            .await
            .map_err(|_| Error::SessionEnded(info.id.clone()))??;
        Ok((info, attachment))
    }

    async fn start_with(
        &self,
        req: StartRequest,
        attach: Option<(Caller, oneshot::Sender<Result<Attachment>>)>,
    ) -> Result<SessionInfo> {
        let inner = &self.inner;
        let target_pid = self.resolve_pid(&req.target).await?;
        let pidfd = session::pidfd(target_pid)?;
        // Everything made before the container record references it lives under a lease.
        let ctrd = inner.ctrd.leased("start").await?;
        let started = self
            .start_leased(&*ctrd, req, target_pid, pidfd, attach)
            .await;
        if let Err(e) = ctrd.release().await {
            tracing::warn!(error = %e, "releasing the start lease; it expires by itself");
        }
        started
    }

    async fn start_leased(
        &self,
        ctrd: &dyn Runtime,
        req: StartRequest,
        target_pid: u32,
        pidfd: AsyncFd<OwnedFd>,
        attach: Option<(Caller, oneshot::Sender<Result<Attachment>>)>,
    ) -> Result<SessionInfo> {
        let inner = &self.inner;
        let cfg = &inner.config;
        let image_name = req.image.clone().unwrap_or_else(|| cfg.image.clone());
        let image = self.image(ctrd, &image_name).await?;

        let id = format!("dbg-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let _starting = Starting::new(inner, &id)?;
        let security = req.profile.security(cfg.user);
        let command = if !req.command.is_empty() {
            req.command.clone()
        } else if !image.cmd.is_empty() {
            image.cmd.clone()
        } else {
            vec!["/bin/sh".to_string()]
        };
        let mut env = image.env.clone();
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
        }
        env.push(format!(
            "HOME={}",
            if security.user.uid == 0 {
                "/root"
            } else {
                "/tmp"
            }
        ));
        if req.tty {
            env.push("TERM=xterm".into());
        }
        let spec = spec::runtime_spec(&SpecInput {
            target_pid,
            security: security.clone(),
            args: command.clone(),
            env: env.clone(),
            cwd: image.cwd.clone(),
            terminal: req.tty,
            cgroups_path: format!("{}/{id}", cfg.cgroup_parent.trim_end_matches('/')),
            pids_limit: cfg.pids_limit,
            memory_limit_bytes: cfg.memory_limit_bytes,
        });

        // Our FIFO ends are open before the shim opens its ends (it waits for a reader).
        let fifos = Fifos::create(&cfg.state_dir.join(&id), true, !req.tty)?;
        let opened = fifos.open();
        let started = match opened {
            Ok(ends) => self
                .create_and_start(ctrd, &id, &image, &spec, &req, &fifos)
                .await
                .map(|()| ends),
            Err(e) => Err(e),
        };
        let ends = match started {
            Ok(ends) => ends,
            Err(e) => {
                let failures = remove_everything(&*inner.ctrd, &id).await;
                let _ = fifos.remove();
                if !failures.is_empty() {
                    tracing::warn!(session = %id, ?failures, "cleanup after a failed start");
                }
                return Err(e);
            }
        };

        let info = SessionInfo {
            id: id.clone(),
            target: req.target.clone(),
            target_pid,
            caller: req.caller.clone(),
            profile: req.profile,
            image: image_name.clone(),
            command: command.clone(),
            tty: req.tty,
            started_at: SystemTime::now(),
            attached: false,
        };
        inner.audit.record(
            SystemTime::now(),
            AuditEvent::SessionStarted {
                session: id.clone(),
                caller: req.caller.clone(),
                target: req.target.describe(),
                target_pid,
                image: image_name,
                profile: req.profile,
                command,
            },
        );
        let shared = Arc::new(Mutex::new(info.clone()));
        let (control_tx, control_rx) = mpsc::channel(8);
        let (done_tx, done_rx) = tokio::sync::watch::channel(None);
        inner.sessions.lock().expect("sessions lock").insert(
            id.clone(),
            Handle {
                info: shared.clone(),
                control: control_tx,
                security,
                env,
                cwd: image.cwd.clone(),
                done: done_rx,
            },
        );
        let actor = session::Actor {
            manager: self.clone(),
            id,
            caller: req.caller,
            info: shared,
            fifos,
            pipes: session::Pipes {
                stdin: ends.stdin,
                stdout: ends.stdout,
                stderr: ends.stderr,
            },
            pidfd,
            control: control_rx,
            done: done_tx,
            first_client: attach,
        };
        tokio::spawn(actor.run());
        Ok(info)
    }

    async fn create_and_start(
        &self,
        ctrd: &dyn Runtime,
        id: &str,
        image: &ImageInfo,
        spec: &serde_json::Value,
        req: &StartRequest,
        fifos: &Fifos,
    ) -> Result<()> {
        let mounts = match ctrd.prepare(id, &image.chain_id).await {
            Ok(m) => m,
            Err(e) if e.is_not_found() => {
                // The unpacked image went away (GC, manual cleanup): unpack again.
                self.inner.images.lock().await.remove(&image.name);
                let image = self.image(ctrd, &image.name).await?;
                ctrd.prepare(id, &image.chain_id).await?
            }
            Err(e) => return Err(e),
        };
        let mut labels = HashMap::new();
        labels.insert(LABEL_SESSION.to_string(), id.to_string());
        labels.insert(LABEL_TARGET.to_string(), req.target.describe());
        labels.insert(LABEL_CALLER.to_string(), req.caller.identity.clone());
        labels.insert(LABEL_PROFILE.to_string(), req.profile.to_string());
        ctrd.create_container(id, &image.name, spec, labels).await?;
        let (stdin, stdout, stderr) = (
            Fifos::path_str(&fifos.stdin),
            fifos.stdout.display().to_string(),
            Fifos::path_str(&fifos.stderr),
        );
        ctrd.create_task(
            id,
            mounts,
            StdioPaths {
                stdin: &stdin,
                stdout: &stdout,
                stderr: &stderr,
                terminal: req.tty,
            },
        )
        .await?;
        ctrd.start(id, "").await?;
        Ok(())
    }

    async fn image(&self, ctrd: &dyn Runtime, name: &str) -> Result<ImageInfo> {
        let mut cache = self.inner.images.lock().await;
        if let Some(i) = cache.get(name) {
            return Ok(i.clone());
        }
        let info = ctrd
            .ensure_image(name, &self.inner.config.target_namespace)
            .await?;
        cache.insert(name.to_string(), info.clone());
        Ok(info)
    }

    /// Attaches a client to a session (one at a time).
    pub async fn attach(&self, id: &str, caller: &Caller) -> Result<Attachment> {
        let control = self.handle(id, |h| h.control.clone())?;
        let (tx, rx) = oneshot::channel();
        control
            .send(Control::Attach(caller.clone(), tx))
            .await
            .map_err(|_| Error::SessionEnded(id.to_string()))?;
        rx.await.map_err(|_| Error::SessionEnded(id.to_string()))?
    }

    /// Ends a session and waits until its container is removed.
    pub async fn terminate(&self, id: &str) -> Result<()> {
        let (control, mut done) = self.handle(id, |h| (h.control.clone(), h.done.clone()))?;
        let (tx, rx) = oneshot::channel();
        if control.send(Control::Terminate(tx)).await.is_ok() {
            let _ = rx.await;
        }
        let failures = match done.wait_for(|d| d.is_some()).await {
            Ok(d) => d.clone().unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        if failures.is_empty() {
            Ok(())
        } else {
            Err(Error::Cleanup {
                what: format!("debug session {id}"),
                failures,
            })
        }
    }

    /// Waits until a session has ended and been cleaned up (or is unknown).
    pub async fn wait_ended(&self, id: &str) {
        if let Ok(mut done) = self.handle(id, |h| h.done.clone()) {
            let _ = done.wait_for(|d| d.is_some()).await;
        }
    }

    fn handle<T>(&self, id: &str, f: impl FnOnce(&Handle) -> T) -> Result<T> {
        let sessions = self.inner.sessions.lock().expect("sessions lock");
        sessions
            .get(id)
            .map(f)
            .ok_or_else(|| Error::NoSession(id.to_string()))
    }

    /// The host pid of a target's running task.
    async fn resolve_pid(&self, target: &Target) -> Result<u32> {
        let cfg = &self.inner.config;
        match target {
            Target::Pid(pid) => Ok(*pid),
            Target::Container(id) => self
                .inner
                .ctrd
                .task_pid(&cfg.target_namespace, id)
                .await?
                .ok_or_else(|| Error::TargetNotRunning {
                    id: id.clone(),
                    namespace: cfg.target_namespace.clone(),
                }),
        }
    }

    /// Removes every tools container, task, session snapshot and stdio directory that no
    /// live session owns (leftovers of a previous agent). Call at agent start.
    pub async fn reconcile(&self) -> Result<ReconcileReport> {
        let inner = &self.inner;
        // No unpack runs while we look: its `extract-*` snapshot is not a leftover.
        let _no_unpack = inner.images.lock().await;
        let mut live: Vec<String> = inner
            .sessions
            .lock()
            .expect("sessions lock")
            .keys()
            .cloned()
            .collect();
        live.extend(
            inner
                .starting
                .lock()
                .expect("starting lock")
                .iter()
                .cloned(),
        );
        let mut report = ReconcileReport::default();
        for id in inner.ctrd.list_containers().await? {
            if live.contains(&id) {
                continue;
            }
            let failures = remove_everything(&*inner.ctrd, &id).await;
            if failures.is_empty() {
                report.containers.push(id);
            } else {
                report.failures.extend(failures);
            }
        }
        for key in inner.ctrd.active_snapshots().await? {
            if live.contains(&key) {
                continue;
            }
            match inner.ctrd.remove_snapshot(&key).await {
                Ok(()) => report.snapshots.push(key),
                Err(e) => report.failures.push(error_chain(&e)),
            }
        }
        if let Ok(dir) = std::fs::read_dir(&inner.config.state_dir) {
            for entry in dir.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let owner = name.split("-exec-").next().unwrap_or(&name);
                if !name.starts_with("dbg-") || live.iter().any(|l| l == owner) {
                    continue;
                }
                match std::fs::remove_dir_all(entry.path()) {
                    Ok(()) => report.stdio_dirs.push(name),
                    Err(e) => report.failures.push(format!("removing {name}: {e}")),
                }
            }
        }
        report.containers.sort();
        Ok(report)
    }
}

/// Marks a session id as being started for as long as it lives.
struct Starting<'a> {
    inner: &'a Inner,
    id: String,
}

impl<'a> Starting<'a> {
    /// Refuses when the node already has `max_sessions` sessions live or starting.
    fn new(inner: &'a Inner, id: &str) -> Result<Self> {
        let live = inner.sessions.lock().expect("sessions lock").len();
        let mut starting = inner.starting.lock().expect("starting lock");
        let max = inner.config.max_sessions;
        if live + starting.len() >= max {
            return Err(Error::TooManySessions(max));
        }
        starting.insert(id.to_string());
        Ok(Starting {
            inner,
            id: id.to_string(),
        })
    }
}

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        self.inner
            .starting
            .lock()
            .expect("starting lock")
            .remove(&self.id);
    }
}

/// Kills, waits for and deletes the task, then the container and its snapshot. Every step
/// runs; the failures are returned together.
async fn remove_everything(ctrd: &dyn Runtime, id: &str) -> Vec<String> {
    let mut failures = Vec::new();
    let mut note = |r: Result<()>| {
        if let Err(e) = r {
            failures.push(error_chain(&e));
        }
    };
    note(ctrd.kill(id, "", libc::SIGKILL as u32, true).await);
    match tokio::time::timeout(KILL_WAIT, ctrd.wait(id, "")).await {
        Ok(Err(e)) if !e.is_not_found() => note(Err(e)),
        _ => {}
    }
    note(ctrd.delete_task(id).await);
    note(ctrd.delete_container(id).await);
    note(ctrd.remove_snapshot(id).await);
    failures
}
