//! Debug containers (`debug`, `exec`, `cp`, `sessions`) and temporary grants (`grants`).

use std::io::{IsTerminal, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use berth_proto::v1;
use berth_proto::v1::attach_request::Msg as In;
use berth_proto::v1::attach_response::Msg as Out;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::cli::{CpArgs, DebugArgs, ExecArgs, GrantsCmd, SessionsCmd};
use crate::commands::{pod_ref, rpc};
use crate::output::{self, Format, Table};

/// Chunk size of file copies and of stdin reads.
const CHUNK: usize = 64 * 1024;

/// The process should exit with this status (the remote command's); nothing to print.
#[derive(Debug, thiserror::Error)]
#[error("exit status {0}")]
pub struct ExitStatus(pub i32);

fn status_result(code: i32) -> Result<()> {
    if code == 0 {
        Ok(())
    } else {
        Err(ExitStatus(code).into())
    }
}

/// `SessionEnd` → the exit code of berthctl, and a line for stderr when the session did not
/// end by its process exiting.
pub fn end_code(end: &v1::SessionEnd) -> (i32, Option<String>) {
    let code = end.exit_status.map(|s| s.min(255) as i32);
    if end.reason == "exited" || end.reason.is_empty() {
        return (code.unwrap_or(0), None);
    }
    let status = match end.exit_status {
        Some(s) => format!(" (exit status {s})"),
        None => String::new(),
    };
    (
        code.unwrap_or(1),
        Some(format!("debug session ended: {}{status}", end.reason)),
    )
}

/// Puts a terminal into raw mode; restores its settings on drop (also on errors and panics).
struct RawMode {
    saved: rustix::termios::Termios,
}

impl RawMode {
    fn enter() -> Result<RawMode> {
        use rustix::termios::{OptionalActions, tcgetattr, tcsetattr};
        let fd = std::io::stdin();
        let saved = tcgetattr(&fd).context("cannot read the terminal's settings")?;
        let mut raw = saved.clone();
        raw.make_raw();
        tcsetattr(&fd, OptionalActions::Now, &raw).context("cannot set raw terminal mode")?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin(),
            rustix::termios::OptionalActions::Now,
            &self.saved,
        );
    }
}

/// The terminal size on stdin as (cols, rows); None when it has none.
fn term_size() -> Option<(u32, u32)> {
    let w = rustix::termios::tcgetwinsize(std::io::stdin()).ok()?;
    (w.ws_col > 0 && w.ws_row > 0).then_some((w.ws_col as u32, w.ws_row as u32))
}

/// Reads stdin on its own thread (a blocked read never holds the process back at exit) and
/// sends it as `stdin` messages; `close_stdin` at end of file.
fn pump_stdin(tx: mpsc::Sender<v1::AttachRequest>) {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = vec![0u8; CHUNK];
        loop {
            let msg = match stdin.read(&mut buf) {
                Ok(0) | Err(_) => In::CloseStdin(true),
                Ok(n) => In::Stdin(buf[..n].to_vec()),
            };
            let last = matches!(msg, In::CloseStdin(_));
            if tx
                .blocking_send(v1::AttachRequest { msg: Some(msg) })
                .is_err()
                || last
            {
                return;
            }
        }
    });
}

fn write_out(w: &mut dyn Write, data: &[u8]) -> Result<()> {
    w.write_all(data)?;
    w.flush()?;
    Ok(())
}

/// `berthctl debug`: the Attach stream.
pub async fn debug(ch: Channel, a: DebugArgs, out: &mut dyn Write) -> Result<()> {
    let mut c = v1::debug_client::DebugClient::new(ch);
    let pod = pod_ref(&a.pod)?;
    let terminal = std::io::stdin().is_terminal();
    let first = match &a.attach {
        Some(id) => In::Attach(v1::AttachSession {
            pod,
            session_id: id.clone(),
        }),
        None => {
            let (cols, rows) = if terminal {
                term_size().unwrap_or((80, 24))
            } else {
                (0, 0)
            };
            In::Start(v1::StartSession {
                pod,
                container: a.container.clone(),
                profile: a.profile.clone(),
                image: a.image.clone(),
                command: a.command.clone(),
                tty: terminal,
                cols,
                rows,
            })
        }
    };
    let (tx, rx) = mpsc::channel::<v1::AttachRequest>(64);
    tx.send(v1::AttachRequest { msg: Some(first) })
        .await
        .expect("the receiver is alive");
    let mut stream = rpc("debug", c.attach(ReceiverStream::new(rx)).await)?;

    let session = match next(&mut stream).await? {
        Some(Out::Session(s)) => s,
        Some(Out::Exit(end)) => return finish(&end),
        Some(_) => bail!("debug: the agent sent output before the session"),
        None => bail!("debug: the agent closed the stream before the session started"),
    };
    let target = session
        .pod
        .as_ref()
        .map(|p| format!("{}/{}", p.namespace, p.pod))
        .unwrap_or_else(|| a.pod.clone());
    eprintln!(
        "berthctl: debug session {} on {target} (container {}, profile {}, image {}); \
         re-attach within the grace period: berthctl debug {target} --attach {}",
        session.id,
        if session.container.is_empty() {
            "-"
        } else {
            &session.container
        },
        session.profile,
        session.image,
        session.id,
    );

    let tty = terminal && session.tty;
    let _raw = if tty { Some(RawMode::enter()?) } else { None };
    if tty
        && a.attach.is_some()
        && let Some((cols, rows)) = term_size()
    {
        let _ = tx
            .send(v1::AttachRequest {
                msg: Some(In::Resize(v1::TerminalSize { cols, rows })),
            })
            .await;
    }
    pump_stdin(tx.clone());

    use tokio::signal::unix::{SignalKind, signal};
    let mut winch = signal(SignalKind::window_change())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut stderr = std::io::stderr();
    let mut last_int = None;
    let detached = |what: &str| {
        anyhow::anyhow!(
            "{what}: detached from debug session {} (it lives for the agent's grace period; \
             re-attach: berthctl debug {target} --attach {})",
            session.id,
            session.id
        )
    };
    loop {
        tokio::select! {
            msg = next(&mut stream) => match msg? {
                Some(Out::Stdout(b)) => write_out(out, &b)?,
                Some(Out::Stderr(b)) => write_out(&mut stderr, &b)?,
                Some(Out::Exit(end)) => {
                    drop(_raw);
                    return finish(&end);
                }
                Some(Out::Session(_)) => {}
                None => bail!("debug: the agent closed the stream without an exit status"),
            },
            _ = winch.recv() => {
                if tty && let Some((cols, rows)) = term_size() {
                    let _ = tx.send(v1::AttachRequest {
                        msg: Some(In::Resize(v1::TerminalSize { cols, rows })),
                    }).await;
                }
            }
            // Without a terminal, ^C is for the remote process (in raw mode it is a byte);
            // a second one within two seconds detaches.
            _ = int.recv() => {
                if last_int.is_some_and(|t: std::time::Instant| t.elapsed().as_secs() < 2) {
                    return Err(detached("interrupted twice"));
                }
                last_int = Some(std::time::Instant::now());
                let _ = tx.send(v1::AttachRequest { msg: Some(In::Signal(2)) }).await;
            }
            _ = term.recv() => return Err(detached("terminated")),
            _ = hup.recv() => return Err(detached("hangup")),
        }
    }
}

async fn next(
    s: &mut tonic::Streaming<v1::AttachResponse>,
) -> Result<Option<v1::attach_response::Msg>> {
    match s.next().await {
        None => Ok(None),
        Some(Ok(r)) => Ok(r.msg),
        Some(Err(st)) => rpc::<()>("debug", Err(st)).map(|_| None),
    }
}

fn finish(end: &v1::SessionEnd) -> Result<()> {
    let (code, line) = end_code(end);
    if let Some(line) = line {
        eprintln!("berthctl: {line}");
    }
    status_result(code)
}

/// `berthctl exec`: the Exec stream, passed through.
pub async fn exec(ch: Channel, a: ExecArgs, out: &mut dyn Write) -> Result<()> {
    let mut c = v1::debug_client::DebugClient::new(ch);
    let req = v1::DebugExecRequest {
        pod: pod_ref(&a.pod)?,
        container: a.container,
        session_id: a.session,
        command: a.command,
        profile: a.profile,
        image: a.image,
    };
    let mut s = rpc("exec", c.exec(req).await)?;
    let mut stderr = std::io::stderr();
    while let Some(r) = s.next().await {
        let r = match r {
            Ok(r) => r,
            Err(st) => return rpc::<()>("exec", Err(st)),
        };
        match r.msg {
            Some(v1::debug_exec_response::Msg::Stdout(b)) => write_out(out, &b)?,
            Some(v1::debug_exec_response::Msg::Stderr(b)) => write_out(&mut stderr, &b)?,
            Some(v1::debug_exec_response::Msg::ExitStatus(code)) => {
                return status_result(code.min(255) as i32);
            }
            None => {}
        }
    }
    bail!("exec: the agent closed the stream without an exit status")
}

/// One side of `cp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpEnd {
    /// namespace, pod, absolute path inside the container.
    Remote {
        namespace: String,
        pod: String,
        path: String,
    },
    Local(PathBuf),
    /// stdin or stdout.
    Std,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CpArgError {
    #[error(
        "the path inside the pod must be absolute, got {0:?} (NAMESPACE/POD:/PATH; prefix ./ \
         for a local file whose name holds ':')"
    )]
    RelativeRemote(String),
    #[error("{0:?} names no pod: use NAMESPACE/POD:/PATH")]
    BadRemote(String),
    #[error("both {0:?} and {1:?} are in a pod: cp copies between this machine and one pod")]
    BothRemote(String, String),
    #[error("neither {0:?} nor {1:?} is in a pod: one side must be NAMESPACE/POD:/PATH")]
    NoRemote(String, String),
    #[error("an empty path is not a file")]
    Empty,
}

/// Parses one side: `ns/pod:/path` is remote; `-` is stdin/stdout; `./…`, `/…`, `~…`
/// and anything without `ns/pod:` in front is local.
pub fn parse_cp_end(s: &str) -> std::result::Result<CpEnd, CpArgError> {
    if s.is_empty() {
        return Err(CpArgError::Empty);
    }
    if s == "-" {
        return Ok(CpEnd::Std);
    }
    if s.starts_with('.') || s.starts_with('/') || s.starts_with('~') {
        return Ok(CpEnd::Local(PathBuf::from(s)));
    }
    let Some((head, path)) = s.split_once(':') else {
        return Ok(CpEnd::Local(PathBuf::from(s)));
    };
    // A pod reference is exactly one '/' between two non-empty names.
    let Some((namespace, pod)) = head.split_once('/') else {
        return Ok(CpEnd::Local(PathBuf::from(s)));
    };
    if pod.contains('/') {
        return Ok(CpEnd::Local(PathBuf::from(s)));
    }
    if namespace.is_empty() || pod.is_empty() {
        return Err(CpArgError::BadRemote(s.to_string()));
    }
    if !path.starts_with('/') {
        return Err(CpArgError::RelativeRemote(s.to_string()));
    }
    Ok(CpEnd::Remote {
        namespace: namespace.to_string(),
        pod: pod.to_string(),
        path: path.to_string(),
    })
}

/// Which way a `cp` goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpPlan {
    /// Local (or stdin when None) → pod.
    In {
        from: Option<PathBuf>,
        pod: v1::PodRef,
        path: String,
    },
    /// Pod → local (or stdout when None).
    Out {
        pod: v1::PodRef,
        path: String,
        to: Option<PathBuf>,
    },
}

pub fn plan_cp(src: &str, dst: &str) -> std::result::Result<CpPlan, CpArgError> {
    let (a, b) = (parse_cp_end(src)?, parse_cp_end(dst)?);
    let local = |e: CpEnd| match e {
        CpEnd::Local(p) => Some(p),
        _ => None,
    };
    match (a, b) {
        (CpEnd::Remote { .. }, CpEnd::Remote { .. }) => {
            Err(CpArgError::BothRemote(src.into(), dst.into()))
        }
        (
            CpEnd::Remote {
                namespace,
                pod,
                path,
            },
            to,
        ) => Ok(CpPlan::Out {
            pod: v1::PodRef { namespace, pod },
            path,
            to: local(to),
        }),
        (
            from,
            CpEnd::Remote {
                namespace,
                pod,
                path,
            },
        ) => Ok(CpPlan::In {
            from: local(from),
            pod: v1::PodRef { namespace, pod },
            path,
        }),
        _ => Err(CpArgError::NoRemote(src.into(), dst.into())),
    }
}

/// Where a download goes: into a directory under the remote file's name, else the path.
pub fn local_target(to: &Path, remote: &str) -> PathBuf {
    if to.is_dir() {
        let name = Path::new(remote)
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_else(|| "download".into());
        to.join(name)
    } else {
        to.to_path_buf()
    }
}

/// `berthctl cp`.
pub async fn cp(ch: Channel, a: CpArgs, fmt: Format, out: &mut dyn Write) -> Result<()> {
    let mut c = v1::debug_client::DebugClient::new(ch);
    match plan_cp(&a.src, &a.dst)? {
        CpPlan::In { from, pod, path } => {
            let (data_src, size, mode): (Box<dyn Read + Send>, u64, u32) = match &from {
                Some(p) => {
                    let f = std::fs::File::open(p)
                        .with_context(|| format!("cannot open {}", p.display()))?;
                    let meta = f.metadata()?;
                    if !meta.is_file() {
                        bail!("{} is not a regular file", p.display());
                    }
                    (Box::new(f), meta.len(), meta.permissions().mode() & 0o7777)
                }
                None => {
                    let mut buf = Vec::new();
                    std::io::stdin()
                        .read_to_end(&mut buf)
                        .context("cannot read stdin")?;
                    let n = buf.len() as u64;
                    (Box::new(std::io::Cursor::new(buf)), n, 0o644)
                }
            };
            let (tx, rx) = mpsc::channel::<v1::CopyInRequest>(4);
            let header = v1::CopyInHeader {
                pod: Some(pod),
                container: a.container,
                path: path.clone(),
                mode,
                size,
            };
            // Read and hash on a thread; the hash is what we sent, to compare with the agent's.
            let reader = std::thread::spawn(move || -> Result<(u64, String)> {
                use v1::copy_in_request::Msg;
                let mut src = data_src;
                let _ = tx.blocking_send(v1::CopyInRequest {
                    msg: Some(Msg::Header(header)),
                });
                let mut hash = Sha256::new();
                let mut sent = 0u64;
                let mut buf = vec![0u8; CHUNK];
                loop {
                    let n = src.read(&mut buf).context("cannot read the local file")?;
                    if n == 0 {
                        break;
                    }
                    hash.update(&buf[..n]);
                    sent += n as u64;
                    let msg = v1::CopyInRequest {
                        msg: Some(Msg::Data(buf[..n].to_vec())),
                    };
                    if tx.blocking_send(msg).is_err() {
                        break;
                    }
                }
                Ok((sent, hex::encode(hash.finalize())))
            });
            let r = c.copy_in(ReceiverStream::new(rx)).await;
            let (sent, sha) = reader
                .join()
                .map_err(|_| anyhow::anyhow!("the file reader panicked"))??;
            let r = rpc("cp", r)?;
            if sent != size {
                bail!("the local file changed size while it was sent ({size} → {sent} bytes)");
            }
            if r.size != sent || !r.sha256.eq_ignore_ascii_case(&sha) {
                bail!(
                    "cp: the copy in the pod does not match what was sent: sent {sent} bytes \
                     sha256 {sha}, the agent wrote {} bytes sha256 {}",
                    r.size,
                    r.sha256
                );
            }
            if fmt == Format::Json {
                output::json(out, &r)?;
            } else {
                eprintln!(
                    "copied {} to {} (sha256 {})",
                    output::bytes(r.size),
                    r.path,
                    r.sha256
                );
            }
        }
        CpPlan::Out { pod, path, to } => {
            let req = v1::CopyOutRequest {
                pod: Some(pod),
                container: a.container,
                path,
            };
            let mut s = rpc("cp", c.copy_out(req).await)?;
            let header = match s.next().await {
                Some(Ok(v1::CopyOutResponse {
                    msg: Some(v1::copy_out_response::Msg::Header(h)),
                })) => h,
                Some(Err(st)) => return rpc::<()>("cp", Err(st)),
                _ => bail!("cp: the agent did not start with a header"),
            };
            let dest = to.as_deref().map(|t| local_target(t, &header.path));
            let mut tmp = match &dest {
                Some(d) => Some(TempFile::create(d)?),
                None => None,
            };
            let mut hash = Sha256::new();
            let mut got = 0u64;
            while let Some(r) = s.next().await {
                let r = match r {
                    Ok(r) => r,
                    Err(st) => return rpc::<()>("cp", Err(st)),
                };
                if let Some(v1::copy_out_response::Msg::Data(b)) = r.msg {
                    hash.update(&b);
                    got += b.len() as u64;
                    match tmp.as_mut() {
                        Some(t) => t.file.write_all(&b)?,
                        None => out.write_all(&b)?,
                    }
                }
            }
            let sha = hex::encode(hash.finalize());
            if got != header.size || !header.sha256.eq_ignore_ascii_case(&sha) {
                bail!(
                    "cp: the download is corrupt, nothing written: the agent announced {} bytes \
                     sha256 {}, received {got} bytes sha256 {sha}",
                    header.size,
                    header.sha256
                );
            }
            match (tmp, &dest) {
                (Some(t), Some(d)) => {
                    let mode = if header.mode == 0 {
                        0o644
                    } else {
                        header.mode & 0o7777
                    };
                    t.commit(d, mode)?;
                    if fmt == Format::Json {
                        output::json(
                            out,
                            &serde_json::json!({"file": d, "size": got, "sha256": sha}),
                        )?;
                    } else {
                        eprintln!(
                            "copied {} from {} into {} (sha256 {sha})",
                            output::bytes(got),
                            header.path,
                            d.display()
                        );
                    }
                }
                _ => out.flush()?,
            }
        }
    }
    Ok(())
}

/// A temp file next to its destination, removed unless committed (renamed into place).
struct TempFile {
    path: PathBuf,
    file: std::fs::File,
    done: bool,
}

impl TempFile {
    fn create(dest: &Path) -> Result<TempFile> {
        let name = dest
            .file_name()
            .with_context(|| format!("{} is not a file name", dest.display()))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".berthctl-{}", std::process::id()));
        let path = dest.with_file_name(tmp_name);
        let file = std::fs::File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(TempFile {
            path,
            file,
            done: false,
        })
    }

    fn commit(mut self, dest: &Path, mode: u32) -> Result<()> {
        self.file
            .set_permissions(std::fs::Permissions::from_mode(mode))?;
        self.file.sync_all()?;
        std::fs::rename(&self.path, dest).with_context(|| {
            format!(
                "cannot rename {} to {}",
                self.path.display(),
                dest.display()
            )
        })?;
        self.done = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn session_table(sessions: Vec<v1::DebugSession>, out: &mut dyn Write) -> Result<()> {
    let mut t = Table::new(&[
        "ID",
        "POD",
        "CONTAINER",
        "PROFILE",
        "CALLER",
        "IMAGE",
        "TTY",
        "ATTACHED",
        "STARTED",
    ]);
    for s in sessions {
        let pod = s
            .pod
            .map(|p| format!("{}/{}", p.namespace, p.pod))
            .unwrap_or_default();
        t.row(vec![
            s.id,
            pod,
            s.container,
            s.profile,
            s.caller,
            s.image,
            yes_no(s.tty),
            yes_no(s.attached),
            output::time_ms(s.started_unix_ms),
        ]);
    }
    Ok(t.write(out)?)
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

/// `berthctl sessions`.
pub async fn sessions(
    ch: Channel,
    cmd: SessionsCmd,
    fmt: Format,
    out: &mut dyn Write,
) -> Result<()> {
    let mut c = v1::debug_client::DebugClient::new(ch);
    match cmd {
        SessionsCmd::Ls { namespace } => {
            let r = rpc(
                "sessions ls",
                c.list(v1::ListSessionsRequest { namespace }).await,
            )?;
            if fmt == Format::Json {
                return Ok(output::json(out, &r)?);
            }
            session_table(r.sessions, out)
        }
        SessionsCmd::Kill { pod, session_id } => {
            let r = rpc(
                "sessions kill",
                c.terminate(v1::TerminateRequest {
                    pod: pod_ref(&pod)?,
                    session_id,
                })
                .await,
            )?;
            if fmt == Format::Json {
                return Ok(output::json(out, &r)?);
            }
            session_table(r.session.into_iter().collect(), out)
        }
    }
}

fn grant_table(grants: Vec<v1::GrantInfo>, out: &mut dyn Write) -> Result<()> {
    let mut t = Table::new(&[
        "ID",
        "IDENTITY",
        "ROLE",
        "GRANTED-BY",
        "GRANTED",
        "EXPIRES",
        "REASON",
    ]);
    for g in grants {
        t.row(vec![
            g.id,
            g.identity,
            g.role,
            g.granted_by,
            output::time_ms(g.granted_unix_ms),
            output::time_ms(g.expires_unix_ms),
            g.reason,
        ]);
    }
    Ok(t.write(out)?)
}

/// `--for` as whole seconds for `GrantRequest` (at least 1).
pub fn grant_seconds(d: std::time::Duration) -> Result<u32> {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    if secs == 0 {
        bail!("--for must be at least one second");
    }
    u32::try_from(secs).context("--for is too long")
}

/// `berthctl grants`.
pub async fn grants(ch: Channel, cmd: GrantsCmd, fmt: Format, out: &mut dyn Write) -> Result<()> {
    let mut c = v1::grants_client::GrantsClient::new(ch);
    let list = match cmd {
        GrantsCmd::Grant {
            identity,
            role,
            for_,
            reason,
        } => {
            let req = v1::GrantRequest {
                identity,
                role,
                duration_seconds: grant_seconds(*for_)?,
                reason,
            };
            vec![rpc("grants grant", c.grant(req).await)?]
        }
        GrantsCmd::Ls { identity } => {
            rpc(
                "grants ls",
                c.list(v1::ListGrantsRequest { identity }).await,
            )?
            .grants
        }
        GrantsCmd::Revoke { id } => {
            vec![rpc(
                "grants revoke",
                c.revoke(v1::RevokeGrantRequest { id }).await,
            )?]
        }
    };
    if fmt == Format::Json {
        return Ok(output::json(out, &list)?);
    }
    grant_table(list, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(ns: &str, pod: &str, path: &str) -> CpEnd {
        CpEnd::Remote {
            namespace: ns.into(),
            pod: pod.into(),
            path: path.into(),
        }
    }

    #[test]
    fn cp_ends_tell_pods_from_local_paths() {
        assert_eq!(
            parse_cp_end("shop/web-0:/etc/hosts"),
            Ok(remote("shop", "web-0", "/etc/hosts"))
        );
        assert_eq!(
            parse_cp_end("shop/web-0:/a:b"),
            Ok(remote("shop", "web-0", "/a:b"))
        );
        assert_eq!(parse_cp_end("-"), Ok(CpEnd::Std));
        for local in [
            "out.txt",
            "./shop/web-0:/x",
            "/tmp/a:b",
            "dir/sub/file:/x",
            "a:b",
            "~/x",
        ] {
            assert_eq!(
                parse_cp_end(local),
                Ok(CpEnd::Local(local.into())),
                "{local}"
            );
        }
        assert_eq!(
            parse_cp_end("shop/web-0:etc/hosts"),
            Err(CpArgError::RelativeRemote("shop/web-0:etc/hosts".into()))
        );
        assert_eq!(
            parse_cp_end("shop/:/x"),
            Err(CpArgError::BadRemote("shop/:/x".into()))
        );
        assert_eq!(parse_cp_end(""), Err(CpArgError::Empty));
        let e = parse_cp_end("shop/web-0:etc").unwrap_err().to_string();
        assert!(e.contains("must be absolute") && e.contains("./"), "{e}");
    }

    #[test]
    fn cp_plans_one_direction() {
        let pod = v1::PodRef {
            namespace: "ns".into(),
            pod: "p".into(),
        };
        assert_eq!(
            plan_cp("ns/p:/etc/passwd", "out"),
            Ok(CpPlan::Out {
                pod: pod.clone(),
                path: "/etc/passwd".into(),
                to: Some("out".into())
            })
        );
        assert_eq!(
            plan_cp("ns/p:/etc/passwd", "-"),
            Ok(CpPlan::Out {
                pod: pod.clone(),
                path: "/etc/passwd".into(),
                to: None
            })
        );
        assert_eq!(
            plan_cp("./in", "ns/p:/tmp/in"),
            Ok(CpPlan::In {
                from: Some("./in".into()),
                pod: pod.clone(),
                path: "/tmp/in".into()
            })
        );
        assert_eq!(
            plan_cp("-", "ns/p:/tmp/in"),
            Ok(CpPlan::In {
                from: None,
                pod,
                path: "/tmp/in".into()
            })
        );
        assert!(matches!(
            plan_cp("a/b:/x", "c/d:/y"),
            Err(CpArgError::BothRemote(..))
        ));
        assert!(matches!(plan_cp("a", "b"), Err(CpArgError::NoRemote(..))));
        assert!(matches!(plan_cp("-", "-"), Err(CpArgError::NoRemote(..))));
    }

    #[test]
    fn downloads_into_a_directory_keep_the_name() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            local_target(dir.path(), "/etc/hosts"),
            dir.path().join("hosts")
        );
        let file = dir.path().join("x");
        assert_eq!(local_target(&file, "/etc/hosts"), file);
    }

    #[test]
    fn session_end_maps_to_an_exit_code() {
        let end = |reason: &str, s: Option<u32>| v1::SessionEnd {
            reason: reason.into(),
            exit_status: s,
        };
        assert_eq!(end_code(&end("exited", Some(3))), (3, None));
        assert_eq!(end_code(&end("exited", Some(0))), (0, None));
        assert_eq!(end_code(&end("exited", Some(300))), (255, None));
        let (code, line) = end_code(&end("target exited", None));
        assert_eq!(code, 1);
        assert!(line.unwrap().contains("target exited"));
        let (code, line) = end_code(&end("terminated", Some(137)));
        assert_eq!(code, 137);
        assert!(line.unwrap().contains("exit status 137"));
    }

    #[test]
    fn grant_durations_are_whole_seconds() {
        use std::time::Duration;
        assert_eq!(grant_seconds(Duration::from_secs(600)).unwrap(), 600);
        assert_eq!(grant_seconds(Duration::from_millis(1500)).unwrap(), 2);
        assert!(grant_seconds(Duration::ZERO).is_err());
        assert!(grant_seconds(Duration::from_secs(u64::from(u32::MAX) + 1)).is_err());
    }

    #[test]
    fn a_failed_download_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f");
        {
            let mut t = TempFile::create(&dest).unwrap();
            t.file.write_all(b"partial").unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let mut t = TempFile::create(&dest).unwrap();
        t.file.write_all(b"whole").unwrap();
        t.commit(&dest, 0o600).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"whole");
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
