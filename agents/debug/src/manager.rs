//! The session manager: starts tools containers next to targets, runs their TTY sessions,
//! execs and file copies, audits all of it, and removes everything when a session ends.

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use berth_common::error_chain;
use bytes::Bytes;
use serde::Serialize;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::audit::{AuditEvent, AuditSink, Caller, CopyDirection};
use crate::config::DebugConfig;
use crate::ctrd::{Ctrd, ImageInfo};
use crate::error::{Error, Result};
use crate::fsroot::{FsError, Root};
use crate::lines::LineAssembler;
use crate::profile::{Profile, Security};
use crate::runtime::{Runtime, StdioPaths};
use crate::spec::{self, SpecInput};
use crate::stdio::Fifos;

/// Labels on every tools container (also how `reconcile` recognises them in `list`).
pub const LABEL_SESSION: &str = "berth.dev/debug-session";
pub const LABEL_TARGET: &str = "berth.dev/debug-target";
pub const LABEL_CALLER: &str = "berth.dev/debug-caller";
pub const LABEL_PROFILE: &str = "berth.dev/debug-profile";

/// Output kept for a client that has not attached yet (or re-attaches).
const BACKLOG_BYTES: usize = 64 << 10;
/// How long output is still collected after a process exited.
const DRAIN: Duration = Duration::from_millis(300);
/// How long a killed task may take to exit before cleanup goes on anyway.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How long after a SIGKILLed tools process the target's death may still show up.
const TARGET_EXIT_LAG: Duration = Duration::from_millis(500);
/// How long an exec's output may trail its exit (a background child keeping stdout open).
const EXEC_DRAIN: Duration = Duration::from_secs(2);

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

/// A one-shot command in a session.
#[derive(Clone, Debug)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    pub caller: Caller,
}

/// Output of an exec, streamed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecOutput {
    Stdout(Bytes),
    Stderr(Bytes),
    Exit(u32),
}

pub struct ExecStream {
    pub output: mpsc::Receiver<ExecOutput>,
}

/// Everything an exec said, collected.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecResult {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_status: Option<u32>,
}

impl ExecStream {
    pub async fn collect(mut self) -> ExecResult {
        let mut r = ExecResult::default();
        while let Some(o) = self.output.recv().await {
            match o {
                ExecOutput::Stdout(b) => r.stdout.extend_from_slice(&b),
                ExecOutput::Stderr(b) => r.stderr.extend_from_slice(&b),
                ExecOutput::Exit(s) => r.exit_status = Some(s),
            }
        }
        r
    }
}

/// A file copied out of the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopiedFile {
    pub data: Vec<u8>,
    pub mode: u32,
    pub size: u64,
    pub sha256: String,
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
        let cfg = &inner.config;
        let target_pid = match &req.target {
            Target::Pid(pid) => *pid,
            Target::Container(id) => inner
                .ctrd
                .task_pid(&cfg.target_namespace, id)
                .await?
                .ok_or_else(|| Error::TargetNotRunning {
                    id: id.clone(),
                    namespace: cfg.target_namespace.clone(),
                })?,
        };
        let pidfd = pidfd(target_pid)?;
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
        let actor = Actor {
            manager: self.clone(),
            id,
            caller: req.caller,
            info: shared,
            fifos,
            stdin: ends.stdin,
            stdout: ends.stdout,
            stderr: ends.stderr,
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

    /// Runs a one-shot command in a session (the deny-list applies), streaming its output.
    pub async fn exec(&self, id: &str, req: ExecRequest) -> Result<ExecStream> {
        let inner = &self.inner;
        if req.argv.is_empty() {
            return Err(Error::EmptyCommand);
        }
        let (security, env, cwd) =
            self.handle(id, |h| (h.security.clone(), h.env.clone(), h.cwd.clone()))?;
        if let Err(denied) = inner.config.deny_list.check(&req.argv) {
            inner.audit.record(
                SystemTime::now(),
                AuditEvent::Exec {
                    session: id.to_string(),
                    caller: req.caller.clone(),
                    argv: req.argv.clone(),
                    denied_by: Some(denied.rule.clone()),
                    exit_status: None,
                },
            );
            return Err(denied.into());
        }
        let exec_id = format!("exec-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let env: Vec<String> = env
            .into_iter()
            .filter(|e| !e.starts_with("TERM="))
            .collect();
        let process = spec::process(&security, &req.argv, &env, &cwd, false);
        let fifos = Fifos::create(
            &inner.config.state_dir.join(format!("{id}-{exec_id}")),
            false,
            true,
        )?;
        let ends = match fifos.open() {
            Ok(e) => e,
            Err(e) => {
                let _ = fifos.remove();
                return Err(e);
            }
        };
        let ctrd = inner.ctrd.clone();
        let started = async {
            let (stdout, stderr) = (
                fifos.stdout.display().to_string(),
                Fifos::path_str(&fifos.stderr),
            );
            ctrd.exec(
                id,
                &exec_id,
                &process,
                StdioPaths {
                    stdin: "",
                    stdout: &stdout,
                    stderr: &stderr,
                    terminal: false,
                },
            )
            .await?;
            ctrd.start(id, &exec_id).await
        }
        .await;
        if let Err(e) = started {
            let _ = ctrd.delete_process(id, &exec_id).await;
            let _ = fifos.remove();
            return Err(e);
        }
        let (tx, rx) = mpsc::channel(64);
        let audit = inner.audit.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            let wait = ctrd.wait(&id, &exec_id);
            tokio::pin!(wait);
            let mut stdout = ends.stdout;
            let mut stderr = ends.stderr.expect("exec has stderr");
            let pumps = async {
                tokio::join!(
                    pump(&mut stdout, &tx, ExecOutput::Stdout),
                    pump(&mut stderr, &tx, ExecOutput::Stderr)
                )
            };
            tokio::pin!(pumps);
            let status = tokio::select! {
                s = &mut wait => {
                    // Output ends at EOF; a background child holding stdout must not hang us.
                    let _ = tokio::time::timeout(EXEC_DRAIN, &mut pumps).await;
                    s.ok()
                }
                _ = &mut pumps => (&mut wait).await.ok(),
            };
            if let Some(s) = status {
                let _ = tx.send(ExecOutput::Exit(s)).await;
            }
            let _ = ctrd.delete_process(&id, &exec_id).await;
            let _ = fifos.remove();
            audit.record(
                SystemTime::now(),
                AuditEvent::Exec {
                    session: id.clone(),
                    caller: req.caller,
                    argv: req.argv,
                    denied_by: None,
                    exit_status: status,
                },
            );
        });
        Ok(ExecStream { output: rx })
    }

    fn target_root(&self, id: &str) -> Result<(u32, PathBuf)> {
        let pid = self.handle(id, |h| h.info.lock().expect("info lock").target_pid)?;
        Ok((pid, PathBuf::from(format!("/proc/{pid}/root"))))
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

    /// [`DebugManager::copy_out`] without a session: the target's root comes from its running
    /// task. Audited with the session `direct:<target>`.
    pub async fn copy_out_of(
        &self,
        target: &Target,
        path: &str,
        caller: &Caller,
    ) -> Result<CopiedFile> {
        let pid = self.resolve_pid(target).await?;
        let label = format!("direct:{}", target.describe());
        self.copy_out_at(
            &label,
            PathBuf::from(format!("/proc/{pid}/root")),
            path,
            caller,
        )
        .await
    }

    /// [`DebugManager::copy_in`] without a session (see [`DebugManager::copy_out_of`]).
    pub async fn copy_into(
        &self,
        target: &Target,
        path: &str,
        data: Vec<u8>,
        mode: u32,
        caller: &Caller,
    ) -> Result<crate::fsroot::Written> {
        let pid = self.resolve_pid(target).await?;
        let label = format!("direct:{}", target.describe());
        self.copy_in_at(
            &label,
            PathBuf::from(format!("/proc/{pid}/root")),
            path,
            data,
            mode,
            caller,
        )
        .await
    }

    /// Reads a file from the target container's filesystem (resolved inside its root).
    pub async fn copy_out(&self, id: &str, path: &str, caller: &Caller) -> Result<CopiedFile> {
        let (_, root) = self.target_root(id)?;
        self.copy_out_at(id, root, path, caller).await
    }

    async fn copy_out_at(
        &self,
        id: &str,
        root: PathBuf,
        path: &str,
        caller: &Caller,
    ) -> Result<CopiedFile> {
        let limit = self.inner.config.copy_limit_bytes;
        let p = path.to_string();
        let got = tokio::task::spawn_blocking(move || Root::open(&root)?.read_file(&p, limit))
            .await
            .expect("copy task does not panic");
        self.audit_copy(
            id,
            caller,
            CopyDirection::Out,
            path,
            got.as_ref()
                .map(|f| (f.data.len() as u64, f.sha256.clone())),
        );
        let f = got?;
        Ok(CopiedFile {
            size: f.data.len() as u64,
            data: f.data,
            mode: f.mode,
            sha256: f.sha256,
        })
    }

    /// Writes a file into the target container's filesystem (resolved inside its root).
    pub async fn copy_in(
        &self,
        id: &str,
        path: &str,
        data: Vec<u8>,
        mode: u32,
        caller: &Caller,
    ) -> Result<crate::fsroot::Written> {
        let (_, root) = self.target_root(id)?;
        self.copy_in_at(id, root, path, data, mode, caller).await
    }

    async fn copy_in_at(
        &self,
        id: &str,
        root: PathBuf,
        path: &str,
        data: Vec<u8>,
        mode: u32,
        caller: &Caller,
    ) -> Result<crate::fsroot::Written> {
        let limit = self.inner.config.copy_limit_bytes;
        let p = path.to_string();
        let got = tokio::task::spawn_blocking(move || {
            Root::open(&root)?.write_file(&p, &data, mode, limit)
        })
        .await
        .expect("copy task does not panic");
        self.audit_copy(
            id,
            caller,
            CopyDirection::In,
            path,
            got.as_ref().map(|w| (w.size, w.sha256.clone())),
        );
        Ok(got?)
    }

    fn audit_copy(
        &self,
        id: &str,
        caller: &Caller,
        direction: CopyDirection,
        path: &str,
        result: std::result::Result<(u64, String), &FsError>,
    ) {
        let event = match result {
            Ok((size, sha256)) => AuditEvent::FileCopy {
                session: id.to_string(),
                caller: caller.clone(),
                direction,
                path: path.to_string(),
                size,
                sha256,
            },
            Err(e) => AuditEvent::FileCopyFailed {
                session: id.to_string(),
                caller: caller.clone(),
                direction,
                path: path.to_string(),
                error: e.to_string(),
            },
        };
        self.inner.audit.record(SystemTime::now(), event);
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

fn pidfd(pid: u32) -> Result<AsyncFd<OwnedFd>> {
    let p = rustix::process::Pid::from_raw(pid as i32).ok_or(Error::TargetGone(pid))?;
    let fd = rustix::process::pidfd_open(p, rustix::process::PidfdFlags::NONBLOCK).map_err(
        |e| match e {
            rustix::io::Errno::SRCH => Error::TargetGone(pid),
            e => Error::Watch {
                pid,
                source: e.into(),
            },
        },
    )?;
    // SAFETY: the OwnedFd is moved into the AsyncFd, so it stays open and refers to the same
    // pidfd for the AsyncFd's whole lifetime.
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.map_err(|e| {
        Error::Watch {
            pid,
            source: std::io::Error::other(e.to_string()),
        }
    })
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

/// Copies a pipe into a channel until EOF (or the receiver is gone).
async fn pump<T>(
    r: &mut tokio::net::unix::pipe::Receiver,
    tx: &mpsc::Sender<T>,
    wrap: fn(Bytes) -> T,
) {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx
                    .send(wrap(Bytes::copy_from_slice(&buf[..n])))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

struct Attached {
    input: mpsc::Receiver<Input>,
    output: mpsc::Sender<Output>,
}

/// One task per session: moves bytes between the client and the FIFOs, watches the tools
/// process, the target and the client, and cleans up when any of them ends the session.
struct Actor {
    manager: DebugManager,
    id: String,
    caller: Caller,
    info: Arc<Mutex<SessionInfo>>,
    fifos: Fifos,
    stdin: Option<tokio::net::unix::pipe::Sender>,
    stdout: tokio::net::unix::pipe::Receiver,
    stderr: Option<tokio::net::unix::pipe::Receiver>,
    pidfd: AsyncFd<OwnedFd>,
    control: mpsc::Receiver<Control>,
    done: tokio::sync::watch::Sender<Option<Vec<String>>>,
    /// A client to attach before anything else happens (`start_attached`).
    first_client: Option<(Caller, oneshot::Sender<Result<Attachment>>)>,
}

async fn next_input(a: &mut Option<Attached>) -> Option<Input> {
    match a {
        Some(a) => a.input.recv().await,
        None => std::future::pending().await,
    }
}

async fn read_opt(r: &mut Option<tokio::net::unix::pipe::Receiver>, buf: &mut [u8]) -> usize {
    match r {
        Some(r) => r.read(buf).await.unwrap_or(0),
        None => std::future::pending().await,
    }
}

impl Actor {
    /// Connects a client: hands it the backlog, stops the detach clock, audits who it is.
    fn attach_client(
        &self,
        caller: Caller,
        attached: &mut Option<Attached>,
        backlog: &mut VecDeque<Output>,
        backlog_bytes: &mut usize,
        deadline: &mut Option<Instant>,
        typist: &mut Caller,
    ) -> Result<Attachment> {
        let audit = &self.manager.inner.audit;
        if attached.as_ref().is_some_and(|a| !a.output.is_closed()) {
            return Err(Error::AlreadyAttached(self.id.clone()));
        }
        if attached.take().is_some() {
            // The previous client is gone (its output closed) but its input end was not
            // noticed yet.
            audit.record(
                SystemTime::now(),
                AuditEvent::Detached {
                    session: self.id.clone(),
                    caller: typist.clone(),
                },
            );
        }
        let (in_tx, in_rx) = mpsc::channel(64);
        let (out_tx, out_rx) = mpsc::channel(64 + backlog.len());
        for o in backlog.drain(..) {
            let _ = out_tx.try_send(o);
        }
        *backlog_bytes = 0;
        *attached = Some(Attached {
            input: in_rx,
            output: out_tx,
        });
        *deadline = None;
        audit.record(
            SystemTime::now(),
            AuditEvent::Attached {
                session: self.id.clone(),
                caller: caller.clone(),
            },
        );
        *typist = caller;
        self.info.lock().expect("info lock").attached = true;
        Ok(Attachment {
            input: in_tx,
            output: out_rx,
        })
    }

    async fn run(mut self) {
        let inner = self.manager.inner.clone();
        let ctrd = inner.ctrd.clone();
        let grace = inner.config.detach_grace;
        let mut attached: Option<Attached> = None;
        let mut backlog: VecDeque<Output> = VecDeque::new();
        let mut backlog_bytes = 0usize;
        let mut deadline = Some(Instant::now() + grace);
        let mut lines = LineAssembler::new();
        // Who typed: the caller attached right now (lines are audited under their name).
        let mut typist = self.caller.clone();
        let mut out_buf = vec![0u8; 16 << 10];
        let mut err_buf = vec![0u8; 16 << 10];
        let mut stdout_open = true;
        let mut terminate_reply: Option<oneshot::Sender<()>> = None;
        let wait_ctrd = ctrd.clone();
        let wait_id = self.id.clone();
        let wait = async move { wait_ctrd.wait(&wait_id, "").await };
        tokio::pin!(wait);
        let pidfd = &self.pidfd;
        let target_exit = async move {
            let _ = pidfd.readable().await;
        };
        tokio::pin!(target_exit);

        // A session started attached gets its client before any output or exit is seen.
        if let Some((caller, reply)) = self.first_client.take() {
            let r = self.attach_client(
                caller,
                &mut attached,
                &mut backlog,
                &mut backlog_bytes,
                &mut deadline,
                &mut typist,
            );
            let _ = reply.send(r);
        }
        let (reason, mut exit_status) = loop {
            tokio::select! {
                n = self.stdout.read(&mut out_buf), if stdout_open => {
                    match n {
                        Ok(0) | Err(_) => stdout_open = false,
                        Ok(n) => deliver(&mut attached, &mut backlog, &mut backlog_bytes,
                            Output::Stdout(Bytes::copy_from_slice(&out_buf[..n]))).await,
                    }
                }
                n = read_opt(&mut self.stderr, &mut err_buf) => {
                    if n == 0 {
                        self.stderr = None;
                    } else {
                        deliver(&mut attached, &mut backlog, &mut backlog_bytes,
                            Output::Stderr(Bytes::copy_from_slice(&err_buf[..n]))).await;
                    }
                }
                input = next_input(&mut attached) => match input {
                    Some(Input::Stdin(bytes)) => {
                        for line in lines.feed(&bytes) {
                            inner.audit.record(SystemTime::now(), AuditEvent::CommandLine {
                                session: self.id.clone(),
                                caller: typist.clone(),
                                line: line.text,
                                uncertain: line.uncertain,
                            });
                        }
                        if let Some(stdin) = &mut self.stdin
                            && stdin.write_all(&bytes).await.is_err()
                        {
                            self.stdin = None;
                        }
                    }
                    Some(Input::Resize { cols, rows }) => {
                        if let Err(e) = ctrd.resize(&self.id, "", cols.into(), rows.into()).await {
                            tracing::debug!(session = %self.id, error = %e, "resize");
                        }
                    }
                    Some(Input::Signal(sig)) => {
                        if let Ok(sig) = u32::try_from(sig) {
                            let _ = ctrd.kill(&self.id, "", sig, false).await;
                        }
                    }
                    Some(Input::CloseStdin) => {
                        self.stdin = None;
                        let _ = ctrd.close_stdin(&self.id, "").await;
                    }
                    None => {
                        attached = None;
                        inner.audit.record(SystemTime::now(), AuditEvent::Detached {
                            session: self.id.clone(),
                            caller: typist.clone(),
                        });
                        self.info.lock().expect("info lock").attached = false;
                        deadline = Some(Instant::now() + grace);
                    }
                },
                ctl = self.control.recv() => match ctl {
                    Some(Control::Attach(caller, reply)) => {
                        let r = self.attach_client(caller, &mut attached, &mut backlog,
                            &mut backlog_bytes, &mut deadline, &mut typist);
                        let _ = reply.send(r);
                    }
                    Some(Control::Terminate(reply)) => {
                        terminate_reply = Some(reply);
                        break (EndReason::Terminated, None);
                    }
                    None => break (EndReason::Terminated, None),
                },
                status = &mut wait => {
                    let status = status.ok();
                    // When the target (its pid namespace's init) dies, the kernel SIGKILLs the
                    // tools process a moment before the target's pidfd turns readable.
                    let target_gone = target_dead(&self.pidfd)
                        || (status == Some(128 + libc::SIGKILL as u32)
                            && tokio::time::timeout(TARGET_EXIT_LAG, &mut target_exit)
                                .await
                                .is_ok());
                    let reason = if target_gone { EndReason::TargetExited } else { EndReason::Exited };
                    break (reason, status);
                }
                () = &mut target_exit => break (EndReason::TargetExited, None),
                () = sleep_until(deadline) => break (EndReason::Detached, None),
            }
        };

        // Stop the tools process if it still runs, then collect its last words.
        if exit_status.is_none() {
            let _ = ctrd.kill(&self.id, "", libc::SIGKILL as u32, true).await;
            if let Ok(Ok(s)) = tokio::time::timeout(KILL_WAIT, &mut wait).await {
                exit_status = Some(s);
            }
        }
        if stdout_open {
            let _ = tokio::time::timeout(DRAIN, async {
                loop {
                    match self.stdout.read(&mut out_buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            deliver(
                                &mut attached,
                                &mut backlog,
                                &mut backlog_bytes,
                                Output::Stdout(Bytes::copy_from_slice(&out_buf[..n])),
                            )
                            .await
                        }
                    }
                }
            })
            .await;
        }
        if let Some(pending) = lines.pending() {
            inner.audit.record(
                SystemTime::now(),
                AuditEvent::CommandLine {
                    session: self.id.clone(),
                    caller: typist.clone(),
                    line: pending.text,
                    uncertain: true,
                },
            );
        }
        drop(self.stdin.take());
        let mut failures = remove_everything(&*ctrd, &self.id).await;
        if let Err(e) = self.fifos.remove() {
            failures.push(format!("removing {}: {e}", self.fifos.dir.display()));
        }
        if !failures.is_empty() {
            tracing::warn!(session = %self.id, ?failures, "debug session cleanup incomplete; reconcile will retry");
        }
        inner.audit.record(
            SystemTime::now(),
            AuditEvent::SessionEnded {
                session: self.id.clone(),
                caller: self.caller.clone(),
                reason: reason.to_string(),
                exit_status,
            },
        );
        inner
            .sessions
            .lock()
            .expect("sessions lock")
            .remove(&self.id);
        if let Some(a) = attached {
            let _ = a
                .output
                .send(Output::Exit(SessionEnd {
                    reason,
                    exit_status,
                }))
                .await;
        }
        if let Some(reply) = terminate_reply {
            let _ = reply.send(());
        }
        let _ = self.done.send(Some(failures));
    }
}

fn target_dead(pidfd: &AsyncFd<OwnedFd>) -> bool {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd {
        fd: pidfd.get_ref().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd that lives across the call; a zero timeout never blocks.
    unsafe { libc::poll(&mut p, 1, 0) > 0 }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Sends to the attached client, or keeps the output (bounded) until one attaches.
async fn deliver(
    attached: &mut Option<Attached>,
    backlog: &mut VecDeque<Output>,
    backlog_bytes: &mut usize,
    out: Output,
) {
    if let Some(a) = attached
        && a.output.send(out.clone()).await.is_ok()
    {
        return;
    }
    let len = match &out {
        Output::Stdout(b) | Output::Stderr(b) => b.len(),
        Output::Exit(_) => 0,
    };
    backlog.push_back(out);
    *backlog_bytes += len;
    while *backlog_bytes > BACKLOG_BYTES {
        match backlog.pop_front() {
            Some(Output::Stdout(b) | Output::Stderr(b)) => *backlog_bytes -= b.len(),
            Some(_) => {}
            None => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    #[allow(dead_code)]
    async fn futures_are_send(m: DebugManager) {
        // The API layer runs these inside tonic handlers: they must be Send.
        assert_send(&m.start(StartRequest::shell(Target::Pid(1), Caller::new("x"))));
        assert_send(&m.attach("x", &Caller::new("x")));
        assert_send(&m.exec(
            "x",
            ExecRequest {
                argv: vec![],
                caller: Caller::new("x"),
            },
        ));
        assert_send(&m.copy_out("x", "/", &Caller::new("x")));
        assert_send(&m.reconcile());
        assert_send(&m.terminate("x"));
    }

    use crate::audit::MemoryAudit;
    use crate::runtime::fake::Fake;

    /// A live process standing in for the target container (killed on drop).
    struct TargetProcess(std::process::Child);

    impl TargetProcess {
        fn start() -> Self {
            TargetProcess(
                std::process::Command::new("sleep")
                    .arg("60")
                    .spawn()
                    .expect("sleep runs"),
            )
        }
        fn pid(&self) -> u32 {
            self.0.id()
        }
        fn die(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    impl Drop for TargetProcess {
        fn drop(&mut self) {
            self.die();
        }
    }

    struct Rig {
        fake: Fake,
        audit: Arc<MemoryAudit>,
        manager: DebugManager,
        target: TargetProcess,
        _state: tempfile::TempDir,
        state_dir: PathBuf,
    }

    fn rig(fake: Fake, grace: Duration) -> Rig {
        let state = tempfile::tempdir().unwrap();
        let state_dir = state.path().join("debug");
        let config = DebugConfig {
            state_dir: state_dir.clone(),
            detach_grace: grace,
            ..DebugConfig::default()
        };
        let audit = Arc::new(MemoryAudit::default());
        let manager = DebugManager::with_runtime(config, audit.clone(), Arc::new(fake.clone()));
        Rig {
            fake,
            audit,
            manager,
            target: TargetProcess::start(),
            _state: state,
            state_dir,
        }
    }

    impl Rig {
        fn request(&self, tty: bool) -> StartRequest {
            StartRequest {
                tty,
                ..StartRequest::shell(Target::Pid(self.target.pid()), Caller::new("bob"))
            }
        }

        /// Nothing of any session is left in the runtime or on disk.
        fn assert_clean(&self) {
            let s = self.fake.state.lock().unwrap();
            assert!(s.containers.is_empty(), "containers {:?}", s.containers);
            assert!(s.snapshots.is_empty(), "snapshots {:?}", s.snapshots);
            assert!(s.tasks.is_empty(), "tasks {:?}", s.tasks.keys());
            assert_eq!(s.leases, 0, "a lease was not released");
            let dirs: Vec<_> = std::fs::read_dir(&self.state_dir)
                .map(|d| d.flatten().map(|e| e.file_name()).collect())
                .unwrap_or_default();
            assert!(dirs.is_empty(), "stdio dirs left: {dirs:?}");
        }

        fn end_reasons(&self) -> Vec<String> {
            self.audit
                .events()
                .into_iter()
                .filter_map(|e| match e {
                    AuditEvent::SessionEnded { reason, .. } => Some(reason),
                    _ => None,
                })
                .collect()
        }
    }

    async fn read_until(out: &mut mpsc::Receiver<Output>, needle: &str) -> String {
        let mut seen = String::new();
        while !seen.contains(needle) {
            match tokio::time::timeout(Duration::from_secs(5), out.recv()).await {
                Ok(Some(Output::Stdout(b) | Output::Stderr(b))) => {
                    seen.push_str(&String::from_utf8_lossy(&b))
                }
                other => panic!("no {needle:?} (got {other:?}); output {seen:?}"),
            }
        }
        seen
    }

    async fn exit_of(out: &mut mpsc::Receiver<Output>) -> SessionEnd {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), out.recv()).await {
                Ok(Some(Output::Exit(end))) => return end,
                Ok(Some(_)) => continue,
                other => panic!("no exit: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_command_that_ends_at_once_still_reaches_a_client_started_attached() {
        let fake = Fake::default();
        fake.state.lock().unwrap().exit_at_start = true;
        let r = rig(fake, Duration::from_secs(60));
        // Attaching afterwards can come too late: the session is over and gone.
        let info = r.manager.start(r.request(false)).await.unwrap();
        r.manager.wait_ended(&info.id).await;
        let late = r.manager.attach(&info.id, &Caller::new("bob")).await;
        assert!(late.is_err(), "the session should be over");
        // Started attached, the client gets the output and the exit status.
        let (info, mut a) = r.manager.start_attached(r.request(false)).await.unwrap();
        let end = exit_of(&mut a.output).await;
        assert_eq!(end.reason, EndReason::Exited, "{end:?}");
        assert_eq!(end.exit_status, Some(0));
        r.manager.wait_ended(&info.id).await;
        r.assert_clean();
    }

    #[tokio::test]
    async fn targets_are_found_by_pod_and_container_name() {
        use crate::ctrd::PodContainer;
        let fake = Fake::default();
        {
            let mut s = fake.state.lock().unwrap();
            let c = |id: &str, name: &str, t: i64| PodContainer {
                id: id.into(),
                name: name.into(),
                created_unix_ns: t,
            };
            s.pods.insert(
                "shop/web-0".into(),
                vec![
                    c("old-app", "app", 1),
                    c("new-app", "app", 2),
                    c("side", "sidecar", 1),
                ],
            );
            s.pods
                .insert("shop/one-0".into(), vec![c("only", "app", 1)]);
            s.pods
                .insert("shop/dead-0".into(), vec![c("gone", "app", 1)]);
            for id in ["old-app", "new-app", "side", "only"] {
                s.target_pids.insert(id.into(), 42);
            }
        }
        let r = rig(fake, Duration::from_secs(60));
        let m = &r.manager;
        assert_eq!(
            m.find_target("shop", "web-0", Some("app")).await.unwrap(),
            ("new-app".to_string(), "app".to_string())
        );
        assert_eq!(
            m.find_target("shop", "one-0", None).await.unwrap().0,
            "only"
        );
        let e = m.find_target("shop", "web-0", None).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.to_string().contains("[app, sidecar]"), "{e}");
        let e = m
            .find_target("shop", "web-0", Some("db"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        assert!(e.to_string().contains("running: [app, sidecar]"), "{e}");
        for pod in ["dead-0", "nope-0"] {
            let e = m.find_target("shop", pod, None).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::NotFound, "{pod}: {e}");
        }
    }

    #[tokio::test]
    async fn a_session_runs_audits_its_lines_and_leaves_nothing_behind() {
        let r = rig(Fake::default(), Duration::from_secs(60));
        let info = r.manager.start(r.request(true)).await.unwrap();
        assert_eq!(r.manager.list()[0].id, info.id);
        assert!(!r.manager.list()[0].attached);
        // The prompt was printed before anyone attached: the backlog keeps it.
        let mut a = r
            .manager
            .attach(&info.id, &Caller::new("bob"))
            .await
            .unwrap();
        read_until(&mut a.output, "$ ").await;
        assert!(r.manager.list()[0].attached);
        a.input
            .send(Input::Resize { cols: 80, rows: 24 })
            .await
            .unwrap();
        a.input
            .send(Input::Stdin(Bytes::from_static(b"echo hi\r")))
            .await
            .unwrap();
        read_until(&mut a.output, "echo hi").await;
        // bob leaves; carol attaches to the same session and types: the lines are hers.
        drop(a);
        let mut a = loop {
            match r.manager.attach(&info.id, &Caller::new("carol")).await {
                Ok(a) => break a,
                Err(Error::AlreadyAttached(_)) => tokio::task::yield_now().await,
                Err(e) => panic!("{e}"),
            }
        };
        a.input
            .send(Input::Stdin(Bytes::from_static(b"exit\r")))
            .await
            .unwrap();
        let end = exit_of(&mut a.output).await;
        assert_eq!(end.reason, EndReason::Exited);
        assert_eq!(end.exit_status, Some(0));
        r.manager.wait_ended(&info.id).await;
        assert!(r.manager.list().is_empty());
        r.assert_clean();

        let calls = r.fake.calls();
        let pos = |prefix: &str| {
            calls
                .iter()
                .position(|c| c.starts_with(prefix))
                .unwrap_or_else(|| panic!("no {prefix} in {calls:?}"))
        };
        assert!(pos("lease") < pos("prepare") && pos("prepare") < pos("create_container"));
        assert!(
            pos("create_task") < pos("release"),
            "the lease outlives the records"
        );
        assert!(calls.contains(&format!("resize {} 80x24", info.id)));
        let trail: Vec<String> = r
            .audit
            .events()
            .into_iter()
            .filter_map(|e| match e {
                AuditEvent::CommandLine { line, caller, .. } => {
                    Some(format!("{}: {line}", caller.identity))
                }
                AuditEvent::Attached { caller, .. } => Some(format!("+{}", caller.identity)),
                AuditEvent::Detached { caller, .. } => Some(format!("-{}", caller.identity)),
                _ => None,
            })
            .collect();
        assert_eq!(
            trail,
            ["+bob", "bob: echo hi", "-bob", "+carol", "carol: exit"]
        );
        assert_eq!(r.end_reasons(), ["exited"]);
    }

    #[tokio::test]
    async fn a_failed_start_rolls_back_every_step() {
        let r = rig(Fake::failing("create_task"), Duration::from_secs(60));
        let err = r.manager.start(r.request(true)).await.unwrap_err();
        assert!(
            matches!(&err, Error::Containerd { op, .. } if op == "create_task"),
            "{err:?}"
        );
        assert!(r.manager.list().is_empty());
        r.assert_clean();
        let calls = r.fake.calls();
        assert!(
            calls.iter().any(|c| c.starts_with("delete_container")),
            "{calls:?}"
        );
        assert!(
            calls.iter().any(|c| c.starts_with("remove_snapshot")),
            "{calls:?}"
        );
        assert!(
            r.audit.events().is_empty(),
            "a session that never started is not audited as started"
        );
    }

    #[tokio::test]
    async fn cleanup_does_every_step_and_reports_all_failures() {
        let r = rig(Fake::failing("delete_container"), Duration::from_secs(60));
        let info = r.manager.start(r.request(false)).await.unwrap();
        let err = r.manager.terminate(&info.id).await.unwrap_err();
        match &err {
            Error::Cleanup { failures, .. } => {
                assert_eq!(failures.len(), 1, "{failures:?}");
                assert!(failures[0].contains("delete_container"), "{failures:?}");
            }
            other => panic!("expected a cleanup error, got {other:?}"),
        }
        let calls = r.fake.calls();
        let last_delete = calls
            .iter()
            .rposition(|c| c.starts_with("delete_container"))
            .unwrap();
        assert!(
            calls[last_delete..]
                .iter()
                .any(|c| c.starts_with("remove_snapshot")),
            "the snapshot step still ran after the failure: {calls:?}"
        );
        assert!(r.fake.state.lock().unwrap().snapshots.is_empty());
        assert_eq!(r.end_reasons(), ["terminated"]);
        assert!(matches!(
            r.manager.terminate(&info.id).await,
            Err(Error::NoSession(_))
        ));
    }

    #[tokio::test]
    async fn a_client_that_stays_away_ends_the_session_after_the_grace_period() {
        let r = rig(Fake::default(), Duration::from_millis(300));
        let info = r.manager.start(r.request(true)).await.unwrap();
        let mut a = r
            .manager
            .attach(&info.id, &Caller::new("bob"))
            .await
            .unwrap();
        read_until(&mut a.output, "$ ").await;
        assert!(matches!(
            r.manager.attach(&info.id, &Caller::new("bob")).await,
            Err(Error::AlreadyAttached(_))
        ));
        let left = Instant::now();
        drop(a);
        // Re-attach within the grace period keeps the session; leave again.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let again = r
            .manager
            .attach(&info.id, &Caller::new("bob"))
            .await
            .unwrap();
        drop(again);
        r.manager.wait_ended(&info.id).await;
        assert!(
            left.elapsed() >= Duration::from_millis(400),
            "{:?}",
            left.elapsed()
        );
        r.assert_clean();
        assert_eq!(
            r.end_reasons(),
            ["client detached longer than the grace period"]
        );
    }

    #[tokio::test]
    async fn the_death_of_the_target_ends_the_session() {
        let mut r = rig(Fake::default(), Duration::from_secs(60));
        let info = r.manager.start(r.request(true)).await.unwrap();
        let mut a = r
            .manager
            .attach(&info.id, &Caller::new("bob"))
            .await
            .unwrap();
        read_until(&mut a.output, "$ ").await;
        r.target.die();
        let end = exit_of(&mut a.output).await;
        assert_eq!(end.reason, EndReason::TargetExited);
        assert_eq!(
            end.exit_status,
            Some(128 + 9),
            "the tools process was killed"
        );
        r.manager.wait_ended(&info.id).await;
        r.assert_clean();
        // A dead target cannot be debugged.
        let err = r.manager.start(r.request(true)).await.unwrap_err();
        assert!(matches!(err, Error::TargetGone(_)), "{err:?}");
        r.assert_clean();
    }

    #[tokio::test]
    async fn exec_streams_output_and_the_deny_list_stops_before_the_runtime() {
        let r = rig(Fake::default(), Duration::from_secs(60));
        let info = r.manager.start(r.request(false)).await.unwrap();
        let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let res = r
            .manager
            .exec(
                &info.id,
                ExecRequest {
                    argv: argv(&["ip", "addr"]),
                    caller: Caller::new("bob"),
                },
            )
            .await
            .unwrap()
            .collect()
            .await;
        assert_eq!(res.stdout, b"ran: ip addr");
        assert_eq!(res.exit_status, Some(0));
        let err = r
            .manager
            .exec(
                &info.id,
                ExecRequest {
                    argv: argv(&["sh", "-c", "rm -rf /"]),
                    caller: Caller::new("bob"),
                },
            )
            .await
            .err()
            .expect("denied");
        assert!(
            matches!(err, Error::Denied(ref d) if d.rule == "rm-root"),
            "{err:?}"
        );
        let execs: Vec<String> = r
            .fake
            .calls()
            .into_iter()
            .filter(|c| c.starts_with("exec "))
            .collect();
        assert_eq!(
            execs,
            ["exec ip addr"],
            "the denied command never reached the runtime"
        );
        r.manager.terminate(&info.id).await.unwrap();
        r.assert_clean();
        let audited: Vec<(Vec<String>, Option<String>)> = r
            .audit
            .events()
            .into_iter()
            .filter_map(|e| match e {
                AuditEvent::Exec {
                    argv, denied_by, ..
                } => Some((argv, denied_by)),
                _ => None,
            })
            .collect();
        assert!(audited.contains(&(argv(&["ip", "addr"]), None)));
        assert!(audited.contains(&(argv(&["sh", "-c", "rm -rf /"]), Some("rm-root".into()))));
    }

    #[tokio::test]
    async fn the_session_limit_refuses_more_and_frees_up_when_one_ends() {
        let mut r = rig(Fake::default(), Duration::from_secs(60));
        r.manager = DebugManager::with_runtime(
            DebugConfig {
                max_sessions: 2,
                ..r.manager.config().clone()
            },
            r.audit.clone(),
            Arc::new(r.fake.clone()),
        );
        let a = r.manager.start(r.request(false)).await.unwrap();
        let _b = r.manager.start(r.request(false)).await.unwrap();
        let err = r.manager.start(r.request(false)).await.unwrap_err();
        assert!(matches!(err, Error::TooManySessions(2)), "{err:?}");
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert_eq!(r.fake.state.lock().unwrap().containers.len(), 2);
        r.manager.terminate(&a.id).await.unwrap();
        let c = r.manager.start(r.request(false)).await.unwrap();
        assert_eq!(r.manager.list().len(), 2);
        for s in r.manager.list() {
            r.manager.terminate(&s.id).await.unwrap();
        }
        assert!(r.manager.list().iter().all(|s| s.id != c.id));
        r.assert_clean();
    }

    #[tokio::test]
    async fn reconcile_removes_what_no_session_owns_and_spares_live_sessions() {
        let r = rig(Fake::default(), Duration::from_secs(60));
        let live = r.manager.start(r.request(true)).await.unwrap();
        {
            let mut s = r.fake.state.lock().unwrap();
            s.containers.insert("dbg-old".into());
            s.snapshots.insert("dbg-old".into());
            s.snapshots.insert("extract-abc".into());
            let (tx, _) = tokio::sync::watch::channel(None);
            s.tasks.insert("dbg-old".into(), tx);
        }
        std::fs::create_dir_all(r.state_dir.join("dbg-stale")).unwrap();
        std::fs::create_dir_all(r.state_dir.join(format!("{}-exec-1", live.id))).unwrap();
        let report = r.manager.reconcile().await.unwrap();
        assert_eq!(report.containers, ["dbg-old"]);
        assert_eq!(report.snapshots, ["extract-abc"]);
        assert_eq!(report.stdio_dirs, ["dbg-stale"]);
        assert!(report.failures.is_empty(), "{report:?}");
        {
            let s = r.fake.state.lock().unwrap();
            assert_eq!(s.containers.iter().collect::<Vec<_>>(), [&live.id]);
            assert_eq!(s.snapshots.iter().collect::<Vec<_>>(), [&live.id]);
        }
        assert!(
            r.state_dir.join(&live.id).exists(),
            "the live session's FIFOs stay"
        );
        std::fs::remove_dir(r.state_dir.join(format!("{}-exec-1", live.id))).unwrap();
        r.manager.terminate(&live.id).await.unwrap();
        r.assert_clean();
    }

    #[tokio::test]
    async fn backlog_keeps_the_newest_output_within_its_bound() {
        let mut attached = None;
        let mut backlog = VecDeque::new();
        let mut bytes = 0;
        for i in 0..100u8 {
            deliver(
                &mut attached,
                &mut backlog,
                &mut bytes,
                Output::Stdout(Bytes::from(vec![i; 1024])),
            )
            .await;
        }
        assert_eq!(bytes, BACKLOG_BYTES);
        assert_eq!(backlog.len(), 64);
        assert_eq!(
            backlog.back(),
            Some(&Output::Stdout(Bytes::from(vec![99u8; 1024])))
        );
    }
}
