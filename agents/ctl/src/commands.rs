//! One function per command; each talks to the agent and prints the answer.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use berth_api_client::pki::{ClientSpec, InitSpec};
use berth_proto::v1;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::cli::{
    AuditCmd, CertsCmd, ConfigCmd, ConnArgs, FaketimeCmd, FaketimeTarget, IpamCmd, LogsCmd, NodeCmd,
};
use crate::context;
use crate::output::{self, Format, Table};

/// A gRPC error as one readable line.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {code}: {message}")]
pub struct RpcError {
    pub what: &'static str,
    pub code: String,
    pub message: String,
    pub status: tonic::Code,
}

/// `PermissionDenied` → `permission denied`.
fn code_words(code: tonic::Code) -> String {
    let mut out = String::new();
    for (i, ch) in format!("{code:?}").chars().enumerate() {
        if ch.is_uppercase() && i > 0 {
            out.push(' ');
        }
        out.push(ch.to_ascii_lowercase());
    }
    out
}

pub(crate) fn rpc<T>(
    what: &'static str,
    r: std::result::Result<tonic::Response<T>, tonic::Status>,
) -> Result<T> {
    r.map(|r| r.into_inner()).map_err(|s| {
        RpcError {
            what,
            code: code_words(s.code()),
            message: s.message().to_string(),
            status: s.code(),
        }
        .into()
    })
}

pub(crate) fn pod_ref(s: &str) -> Result<Option<v1::PodRef>> {
    let Some((ns, pod)) = s.split_once('/') else {
        bail!("pod must be namespace/name, got {s:?}");
    };
    Ok(Some(v1::PodRef {
        namespace: ns.to_string(),
        pod: pod.to_string(),
    }))
}

pub async fn node(ch: Channel, cmd: NodeCmd, fmt: Format, out: &mut dyn Write) -> Result<()> {
    let mut c = v1::node_client::NodeClient::new(ch);
    match cmd {
        NodeCmd::Info => {
            let i = rpc("node info", c.info(v1::NodeInfoRequest {}).await)?;
            if fmt == Format::Json {
                return Ok(output::json(out, &i)?);
            }
            let caller = i.caller.clone().unwrap_or_default();
            let mut labels: Vec<String> =
                i.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            labels.sort();
            output::pairs(
                out,
                &[
                    ("NODE", i.node_name),
                    ("RACK", i.rack),
                    ("ZONE", i.zone),
                    ("LABELS", labels.join(",")),
                    ("AGENT", i.agent_version),
                    ("API", i.api_version),
                    ("STARTED", output::time_ms(i.started_unix_ms)),
                    (
                        "YOU",
                        format!("{} via {}", caller.identity, caller.transport),
                    ),
                    ("GROUPS", caller.groups.join(",")),
                    ("ROLES", caller.roles.join(",")),
                ],
            )?;
        }
        NodeCmd::Health => {
            let h = rpc("node health", c.health(v1::HealthRequest {}).await)?;
            if fmt == Format::Json {
                return Ok(output::json(out, &h)?);
            }
            let status = v1::ServingStatus::try_from(h.status)
                .map(|s| {
                    s.as_str_name()
                        .trim_start_matches("SERVING_STATUS_")
                        .to_string()
                })
                .unwrap_or_else(|_| h.status.to_string());
            writeln!(out, "STATUS  {status}")?;
            let mut t = Table::new(&["COMPONENT", "HEALTHY", "MESSAGE"]);
            for c in h.components {
                t.row(vec![c.name, c.healthy.to_string(), c.message]);
            }
            t.write(out)?;
        }
        NodeCmd::Capabilities => {
            let c = rpc(
                "node capabilities",
                c.capabilities(v1::CapabilitiesRequest {}).await,
            )?;
            if fmt == Format::Json {
                return Ok(output::json(out, &c)?);
            }
            output::pairs(
                out,
                &[
                    ("SERVICES", c.services.join(",")),
                    ("FEATURES", c.features.join(",")),
                ],
            )?;
        }
    }
    Ok(())
}

pub async fn logs(ch: Channel, cmd: LogsCmd, fmt: Format, out: &mut dyn Write) -> Result<()> {
    let mut c = v1::logs_client::LogsClient::new(ch);
    match cmd {
        LogsCmd::Ls { pod } => {
            let r = rpc(
                "logs ls",
                c.list(v1::ListLogsRequest {
                    pod: pod_ref(&pod)?,
                })
                .await,
            )?;
            if fmt == Format::Json {
                return Ok(output::json(out, &r)?);
            }
            let mut t = Table::new(&["DIR", "FILE", "SIZE", "MODIFIED"]);
            for d in r.dirs {
                if d.files.is_empty() {
                    t.row(vec![
                        d.name.clone(),
                        "-".into(),
                        String::new(),
                        String::new(),
                    ]);
                }
                for f in d.files {
                    t.row(vec![
                        d.name.clone(),
                        f.path,
                        output::bytes(f.size),
                        output::time_ms(f.modified_unix_ms),
                    ]);
                }
                if d.truncated {
                    t.row(vec![
                        d.name.clone(),
                        "(listing truncated)".into(),
                        String::new(),
                        String::new(),
                    ]);
                }
            }
            t.write(out)?;
        }
        LogsCmd::Cat {
            pod,
            dir,
            path,
            offset,
        } => {
            let req = v1::ReadLogRequest {
                pod: pod_ref(&pod)?,
                dir,
                path,
                offset,
                ..Default::default()
            };
            stream_log(&mut c, req, out).await?;
        }
        LogsCmd::Tail {
            pod,
            dir,
            path,
            lines,
            follow,
        } => {
            let req = v1::ReadLogRequest {
                pod: pod_ref(&pod)?,
                dir,
                path,
                tail_lines: lines,
                follow,
                ..Default::default()
            };
            stream_log(&mut c, req, out).await?;
        }
        LogsCmd::Pull {
            pod,
            dir,
            out: file,
        } => {
            let pr = pod_ref(&pod)?;
            let default = format!(
                "{}-{dir}.tar",
                pr.as_ref().map(|p| p.pod.clone()).unwrap_or_default()
            );
            let req = v1::DownloadLogsRequest { pod: pr, dir };
            let mut s = rpc("logs pull", c.download(req).await)?;
            let to_stdout = file.as_deref() == Some(std::path::Path::new("-"));
            let path = file.unwrap_or_else(|| PathBuf::from(default));
            let tmp = path.with_extension("tar.partial");
            let mut file = if to_stdout {
                None
            } else {
                Some(
                    std::fs::File::create(&tmp)
                        .with_context(|| format!("cannot create {}", tmp.display()))?,
                )
            };
            let progress = !to_stdout && std::io::stderr().is_terminal();
            let (mut got, mut expected) = (0u64, 0u64);
            while let Some(chunk) = s.next().await {
                let chunk = match chunk {
                    Ok(c) => c,
                    Err(st) => {
                        if !to_stdout {
                            let _ = std::fs::remove_file(&tmp);
                        }
                        return rpc::<()>("logs pull", Err(st));
                    }
                };
                if chunk.expected_bytes > 0 {
                    expected = chunk.expected_bytes;
                }
                got += chunk.data.len() as u64;
                match file.as_mut() {
                    Some(f) => f.write_all(&chunk.data)?,
                    None => out.write_all(&chunk.data)?,
                }
                if progress {
                    let pct = (got * 100).checked_div(expected).unwrap_or(0);
                    eprint!(
                        "\r{} / {} ({pct}%)",
                        output::bytes(got),
                        output::bytes(expected)
                    );
                }
            }
            match file.take() {
                Some(f) => f.sync_all()?,
                None => out.flush()?,
            }
            if progress {
                eprintln!();
            }
            if !to_stdout {
                std::fs::rename(&tmp, &path).with_context(|| {
                    format!("cannot rename {} to {}", tmp.display(), path.display())
                })?;
                if fmt == Format::Json {
                    output::json(out, &serde_json::json!({"file": path, "bytes": got}))?;
                } else {
                    writeln!(out, "pulled {} into {}", output::bytes(got), path.display())?;
                }
            }
        }
    }
    Ok(())
}

async fn stream_log(
    c: &mut v1::logs_client::LogsClient<Channel>,
    req: v1::ReadLogRequest,
    out: &mut dyn Write,
) -> Result<()> {
    let mut s = rpc("logs read", c.read(req).await)?;
    while let Some(chunk) = s.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(st) => return rpc::<()>("logs read", Err(st)),
        };
        if chunk.truncated {
            eprintln!("berthctl: file was truncated or rotated; reading from the start");
        }
        out.write_all(&chunk.data)?;
        out.flush()?;
    }
    Ok(())
}

fn alloc_table(allocs: Vec<v1::Allocation>, out: &mut dyn Write) -> Result<()> {
    let mut t = Table::new(&[
        "NETWORK",
        "POOL",
        "ADDRESS",
        "STATE",
        "NAMESPACE",
        "POD",
        "IFNAME",
        "STICKY",
        "SINCE",
        "UNTIL",
    ]);
    for a in allocs {
        let sticky = if a.owner.is_empty() {
            "no".to_string()
        } else {
            a.owner
        };
        t.row(vec![
            a.network,
            a.pool,
            a.address,
            a.state,
            a.namespace,
            a.pod,
            a.ifname,
            sticky,
            output::time_ms(a.since_unix_ms),
            output::time_ms(a.hold_until_unix_ms),
        ]);
    }
    Ok(t.write(out)?)
}

pub async fn ipam(ch: Channel, cmd: IpamCmd, fmt: Format, out: &mut dyn Write) -> Result<()> {
    let mut c = v1::ipam_client::IpamClient::new(ch);
    match cmd {
        IpamCmd::List {
            network,
            pool,
            namespace,
        } => {
            let req = v1::ListAllocationsRequest {
                network,
                pool,
                namespace,
            };
            let r = rpc("ipam list", c.list(req).await)?;
            if fmt == Format::Json {
                return Ok(output::json(out, &r)?);
            }
            if let Some(line) = sticky_line(&r.sticky_default) {
                writeln!(out, "{line}")?;
            }
            alloc_table(r.allocations, out)?;
        }
        IpamCmd::Show {
            address,
            network,
            namespace,
        } => {
            let req = v1::ShowAddressRequest {
                network,
                address,
                namespace,
                ..Default::default()
            };
            let a = rpc("ipam show", c.show(req).await)?;
            if fmt == Format::Json {
                return Ok(output::json(out, &a)?);
            }
            alloc_table(vec![a], out)?;
        }
        IpamCmd::History {
            network,
            pool,
            address,
            namespace,
            pod,
            limit,
        } => {
            let req = v1::IpamHistoryRequest {
                network,
                pool,
                address,
                namespace,
                pod,
                limit,
            };
            let r = rpc("ipam history", c.history(req).await)?;
            if fmt == Format::Json {
                return Ok(output::json(out, &r)?);
            }
            let mut t = Table::new(&[
                "TIME",
                "ACTION",
                "NETWORK",
                "POOL",
                "ADDRESS",
                "NAMESPACE",
                "POD",
                "NODE",
                "DETAIL",
            ]);
            for e in r.events {
                t.row(vec![
                    output::time_ms(e.time_unix_ms),
                    e.action,
                    e.network,
                    e.pool,
                    e.address,
                    e.namespace,
                    e.pod,
                    e.node,
                    e.detail,
                ]);
            }
            t.write(out)?;
        }
        IpamCmd::Reserve {
            address,
            network,
            namespace,
            owner,
            ifname,
            for_,
            note,
        } => {
            let until_unix_ms = match for_ {
                Some(d) => {
                    let d = chrono::Duration::from_std(*d).context("--for is too long")?;
                    (chrono::Utc::now() + d).timestamp_millis()
                }
                None => 0,
            };
            let req = v1::ReserveRequest {
                network,
                address,
                namespace,
                owner,
                note,
                ifname,
                until_unix_ms,
                ..Default::default()
            };
            let a = rpc("ipam reserve", c.reserve(req).await)?;
            if fmt == Format::Json {
                return Ok(output::json(out, &a)?);
            }
            alloc_table(vec![a], out)?;
        }
        IpamCmd::Release {
            address,
            network,
            namespace,
        } => {
            let req = v1::ReleaseRequest {
                network,
                address,
                namespace,
                ..Default::default()
            };
            let r = rpc("ipam release", c.release(req).await)?;
            if fmt == Format::Json {
                return Ok(output::json(out, &r)?);
            }
            alloc_table(r.released.into_iter().collect(), out)?;
        }
        IpamCmd::Gc { dry_run } => {
            let r = rpc("ipam gc", c.gc(v1::IpamGcRequest { dry_run }).await)?;
            if fmt == Format::Json {
                return Ok(output::json(out, &r)?);
            }
            let verb = if dry_run {
                "would collect"
            } else {
                "collected"
            };
            writeln!(out, "{verb} {} leaked address(es)", r.collected.len())?;
            let mut t = Table::new(&[
                "NETWORK",
                "ADDRESS",
                "NAMESPACE",
                "POD",
                "SANDBOX",
                "IFNAME",
                "SINCE",
            ]);
            for a in r.collected {
                t.row(vec![
                    a.network,
                    a.address,
                    a.namespace,
                    a.pod,
                    a.container_id,
                    a.ifname,
                    output::time_ms(a.since_unix_ms),
                ]);
            }
            if !t.is_empty() {
                t.write(out)?;
            }
        }
    }
    Ok(())
}

/// What `ipam list` says above its table about the pods that keep their address.
fn sticky_line(policy: &str) -> Option<String> {
    let meaning = match policy {
        "stable-names" => {
            "pods with a stable name (StatefulSet web-0, hand-named pods) keep their address; \
             generated names (Deployment, Job, DaemonSet pods) do not"
        }
        "all" => "every pod keeps its address by namespace/name",
        "none" => "only pods annotated berth.io/sticky keep their address",
        _ => return None,
    };
    Some(format!(
        "sticky by default: {policy} ({meaning}; berth.io/sticky overrides; holds are reclaimed when a pool is full)"
    ))
}

pub async fn faketime(
    ch: Channel,
    cmd: FaketimeCmd,
    fmt: Format,
    out: &mut dyn Write,
) -> Result<()> {
    let mut c = v1::fake_time_client::FakeTimeClient::new(ch);
    let req = |t: FaketimeTarget| -> Result<v1::FakeTimeRequest> {
        Ok(v1::FakeTimeRequest {
            pod: pod_ref(&t.pod)?,
            container: t.container,
        })
    };
    let r = match cmd {
        FaketimeCmd::Get(t) => rpc("faketime get", c.get(req(t)?).await)?,
        FaketimeCmd::Set { target, offset } => {
            let r = req(target)?;
            let set = v1::SetFakeTimeRequest {
                pod: r.pod,
                container: r.container,
                offset,
            };
            rpc("faketime set", c.set(set).await)?
        }
        FaketimeCmd::Clear(t) => rpc("faketime clear", c.clear(req(t)?).await)?,
    };
    if fmt == Format::Json {
        return Ok(output::json(out, &r)?);
    }
    // CLOCK: what the container's wall clock reads now (this machine's clock plus the offset),
    // for a container whose clock follows the offset; "real" for one that runs unfaked.
    let now_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
    let mut t = Table::new(&[
        "CONTAINER",
        "OFFSET",
        "CLOCK",
        "INJECTED",
        "COVERED",
        "REASON",
    ]);
    // How each running process gets its time: the shim, the vDSO patch, or not at all.
    let mut procs = Table::new(&["CONTAINER", "PID", "HOW", "OFFSET", "EXE", "REASON"]);
    let mut any_proc = false;
    for f in &r.containers {
        for p in &f.processes {
            any_proc = true;
            procs.row(vec![
                f.container.clone(),
                p.pid.to_string(),
                p.how.clone(),
                if p.offset.is_empty() {
                    "-".into()
                } else {
                    p.offset.clone()
                },
                p.exe.clone(),
                p.reason.clone(),
            ]);
        }
    }
    for f in r.containers {
        let covered = match f.covered {
            Some(true) => format!("yes ({})", f.coverage),
            Some(false) => format!("no ({})", f.coverage),
            None => "not yet judged".to_string(),
        };
        let follows = f.covered != Some(false) && (f.injected || f.covered == Some(true));
        let clock = if follows {
            shifted_clock(now_ns, f.offset_ns)
        } else {
            "real".to_string()
        };
        t.row(vec![
            f.container,
            f.offset,
            clock,
            if f.injected { "yes" } else { "no" }.into(),
            covered,
            f.reason,
        ]);
    }
    t.write(out)?;
    if any_proc {
        writeln!(out)?;
        procs.write(out)?;
    }
    Ok(())
}

/// `now_ns + offset_ns` as a UTC date to the second.
fn shifted_clock(now_ns: i64, offset_ns: i64) -> String {
    let t = chrono::DateTime::from_timestamp_nanos(now_ns.saturating_add(offset_ns));
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

pub async fn audit(ch: Channel, cmd: AuditCmd, fmt: Format, out: &mut dyn Write) -> Result<()> {
    let mut c = v1::audit_client::AuditClient::new(ch);
    let AuditCmd::Query {
        identity,
        method,
        decision,
        since,
        limit,
    } = cmd
    else {
        return audit_verify(cmd, fmt, out);
    };
    let since_unix_ms = match since {
        Some(d) => {
            let d = chrono::Duration::from_std(*d).context("--since is too long")?;
            (chrono::Utc::now() - d).timestamp_millis()
        }
        None => 0,
    };
    let req = v1::AuditQueryRequest {
        since_unix_ms,
        until_unix_ms: 0,
        identity,
        method,
        decision,
        limit,
    };
    let r = rpc("audit query", c.query(req).await)?;
    if fmt == Format::Json {
        return Ok(output::json(out, &r)?);
    }
    let mut t = Table::new(&[
        "TIME", "IDENTITY", "METHOD", "TARGET", "DECISION", "CODE", "MS", "BYTES",
    ]);
    for a in r.records.iter().filter(|a| a.event == "call") {
        t.row(vec![
            a.time.clone(),
            a.identity.clone(),
            a.method.clone(),
            a.target.clone(),
            a.decision.clone(),
            format!("{:?}", tonic::Code::from(a.code)),
            format!("{:.1}", a.duration_us as f64 / 1000.0),
            a.bytes_sent.to_string(),
        ]);
    }
    t.write(out)?;
    if r.truncated {
        writeln!(
            out,
            "(more records matched; raise --limit or narrow the query)"
        )?;
    }
    Ok(())
}

/// `audit verify`: local, no agent involved.
pub fn audit_verify(cmd: AuditCmd, fmt: Format, out: &mut dyn Write) -> Result<()> {
    let AuditCmd::Verify { path, keep } = cmd else {
        bail!("not a verify command");
    };
    let mut cfg = berth_api_client::audit::AuditConfig::new(&path);
    cfg.keep = keep;
    let v = berth_api_client::audit::verify(&cfg)?;
    if v.files == 0 {
        bail!("no audit log at {}", path.display());
    }
    if fmt == Format::Json {
        output::json(
            out,
            &serde_json::json!({"files": v.files, "lines": v.lines, "skipped": v.skipped, "intact": true}),
        )?;
    } else {
        writeln!(
            out,
            "hash chain intact: {} lines in {} files ({} torn lines skipped)",
            v.lines, v.files, v.skipped
        )?;
    }
    Ok(())
}

/// `certs init`: parses `NAME[:g1,g2]` client specs and writes the files.
pub fn certs(cmd: CertsCmd, fmt: Format, out: &mut dyn Write) -> Result<()> {
    let CertsCmd::Init {
        dir,
        server_sans,
        clients,
        days,
        force,
    } = cmd;
    let clients = clients
        .iter()
        .map(|c| {
            let (name, groups) = c.split_once(':').unwrap_or((c, ""));
            ClientSpec {
                common_name: name.to_string(),
                groups: groups
                    .split(',')
                    .filter(|g| !g.is_empty())
                    .map(str::to_string)
                    .collect(),
                ..Default::default()
            }
        })
        .collect();
    let spec = InitSpec {
        server_sans,
        clients,
        days,
        force,
    };
    let files = berth_api_client::pki::init_dir(&dir, &spec)?;
    if fmt == Format::Json {
        return Ok(output::json(out, &files)?);
    }
    for f in files {
        writeln!(out, "wrote {}", f.display())?;
    }
    Ok(())
}

/// `berthctl config …`: reads and edits the context file only (no agent is called).
pub fn config(conn: &ConnArgs, cmd: ConfigCmd, fmt: Format, out: &mut dyn Write) -> Result<()> {
    let (path, explicit) = crate::context_file(conn);
    match cmd {
        ConfigCmd::CurrentContext => {
            let file = context::load(&path, explicit)?;
            let Some(name) = file.current_context else {
                return Err(context::ContextError::NoCurrent(path).into());
            };
            writeln!(out, "{name}")?;
        }
        ConfigCmd::GetContexts => {
            let file = context::load(&path, explicit)?;
            let current = file.current_context.unwrap_or_default();
            if fmt == Format::Json {
                #[derive(serde::Serialize)]
                struct Listed<'a> {
                    current_context: &'a str,
                    file: &'a std::path::Path,
                    contexts: &'a std::collections::BTreeMap<String, context::Context>,
                }
                return Ok(output::json(
                    out,
                    &Listed {
                        current_context: &current,
                        file: &path,
                        contexts: &file.contexts,
                    },
                )?);
            }
            let mut t = Table::new(&["CURRENT", "NAME", "ENDPOINT", "CLIENT CERT"]);
            for (name, c) in &file.contexts {
                t.row(vec![
                    if *name == current { "*" } else { "" }.to_string(),
                    name.clone(),
                    c.endpoint.clone().unwrap_or_default(),
                    c.cert
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                ]);
            }
            if t.is_empty() {
                writeln!(
                    out,
                    "no contexts in {}: add one with `berthctl --endpoint … config set-context NAME`",
                    path.display()
                )?;
            } else {
                t.write(out)?;
            }
        }
        ConfigCmd::SetContext { name } => {
            let ctx = context::Context {
                endpoint: conn.endpoint.clone(),
                ca: conn.ca.clone(),
                cert: conn.cert.clone(),
                key: conn.key.clone(),
                server_name: conn.server_name.clone(),
            };
            if ctx.endpoint.is_none() {
                bail!(
                    "set-context saves the connection flags given with it: pass at least --endpoint (unix:///path/to/api.sock or https://host:port with --ca, --cert, --key)"
                );
            }
            if [&ctx.ca, &ctx.cert, &ctx.key].iter().any(|p| p.is_some())
                && ![&ctx.ca, &ctx.cert, &ctx.key].iter().all(|p| p.is_some())
            {
                bail!("--cert, --key and --ca go together: give all three or none");
            }
            context::set_context(&path, &name, &ctx)?;
            writeln!(out, "context {name:?} written to {}", path.display())?;
        }
        ConfigCmd::UseContext { name } => {
            context::use_context(&path, &name)?;
            writeln!(out, "current context is now {name:?} ({})", path.display())?;
        }
        ConfigCmd::DeleteContext { name } => {
            let d = context::delete_context(&path, &name)?;
            match (d.existed, d.was_current) {
                (false, false) => writeln!(out, "no context {name:?} in {}", path.display())?,
                (_, true) => writeln!(
                    out,
                    "context {name:?} deleted from {}; it was current: no context is current now",
                    path.display()
                )?,
                (true, false) => writeln!(out, "context {name:?} deleted from {}", path.display())?,
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifted_clock_adds_the_offset_to_now() {
        let now = 1_796_300_000 * 1_000_000_000; // 2026-12-03 12:13:20 UTC
        assert_eq!(shifted_clock(now, 0), "2026-12-03 12:13:20 UTC");
        assert_eq!(
            shifted_clock(now, 86_400 * 1_000_000_000),
            "2026-12-04 12:13:20 UTC"
        );
        assert_eq!(
            shifted_clock(now, -3 * 3_600 * 1_000_000_000),
            "2026-12-03 09:13:20 UTC"
        );
    }
}
