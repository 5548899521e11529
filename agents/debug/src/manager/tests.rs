use std::path::PathBuf;

use tokio::time::Instant;

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
