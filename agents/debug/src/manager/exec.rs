//! One-shot commands in a live session: the deny list first, then a containerd exec whose
//! output streams back until the command exits.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::DebugManager;
use crate::audit::{AuditEvent, Caller};
use crate::error::{Error, Result};
use crate::runtime::StdioPaths;
use crate::spec;
use crate::stdio::Fifos;

/// How long an exec's output may trail its exit (a background child keeping stdout open).
const EXEC_DRAIN: Duration = Duration::from_secs(2);

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

impl DebugManager {
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
