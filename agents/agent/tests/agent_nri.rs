//! berth-agent against the in-process fake runtime: file-log mounts end to end, refusals,
//! retention from container removal, reconciliation after an agent restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use berth_agent::Agent;
use berth_agent::cleanup::Sweeper;
use berth_agent::config::{Config, OnProblem, Overrides};
use berth_agent::retention::{Clock, ManualClock};
use berth_nri::fake::{FakeOptions, FakeRuntime, PluginHandle};
use berth_nri::{Container, Event, PodSandbox};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);
const DAY: Duration = Duration::from_secs(86_400);

struct Bed {
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
}

impl Bed {
    fn new() -> Bed {
        Bed {
            dir: tempfile::tempdir().unwrap(),
            clock: Arc::new(ManualClock::new(
                SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            )),
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("nri.sock")
    }

    fn log_root(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn config(&self, tweak: impl FnOnce(&mut Config)) -> Config {
        let mut c = Config::default();
        c.apply(Overrides {
            nri_socket: Some(self.socket()),
            log_root: Some(self.log_root()),
            state_dir: Some(self.state_dir()),
            listen: None,
            node_name: Some("node-1".into()),
        });
        c.nri.reconnect_max = Duration::from_millis(200);
        tweak(&mut c);
        c
    }

    /// Waits until the agent's periodic sweeper has done its first pass (it runs at start
    /// and writes the usage report), so a test's own passes do not race with it.
    async fn wait_initial_sweep(&self) {
        let deadline = std::time::Instant::now() + WAIT;
        while !self.state_dir().join("usage.json").exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "the sweeper's first pass did not run"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts an agent; returns its sweeper and a token that stops it.
    fn start_agent(&self, cfg: Config) -> (Option<Arc<Sweeper>>, CancellationToken) {
        let clock: Arc<dyn Clock> = self.clock.clone();
        let agent = Agent::new(cfg.resolve().unwrap(), clock).unwrap();
        let sweeper = agent.sweeper.clone();
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move { agent.run(s).await });
        (sweeper, stop)
    }

    fn events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.state_dir().join("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Every path under the test's temp dir except the agent's own state and the socket.
    fn outside_log_root(&self) -> Vec<PathBuf> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(self.dir.path()).unwrap() {
            let p = e.unwrap().path();
            if p != self.log_root() && p != self.state_dir() && p != self.socket() {
                v.push(p);
            }
        }
        v
    }
}

fn pod(ns: &str, name: &str, uid: &str) -> PodSandbox {
    PodSandbox {
        id: format!("sb-{uid}"),
        name: name.into(),
        uid: uid.into(),
        namespace: ns.into(),
        labels: HashMap::from([("app".to_string(), "shop".to_string())]),
        ..Default::default()
    }
}

fn ctr(p: &PodSandbox, name: &str, id: &str, filelogs: Option<&str>) -> Container {
    let mut env = vec!["PATH=/bin".to_string()];
    if let Some(v) = filelogs {
        env.push(format!("KUBERNETES_FILELOGS={v}"));
    }
    Container {
        id: id.into(),
        pod_sandbox_id: p.id.clone(),
        name: name.into(),
        env,
        ..Default::default()
    }
}

async fn connect(rt: &mut FakeRuntime) -> PluginHandle {
    rt.next_plugin(WAIT)
        .await
        .expect("agent did not register")
        .expect("admission failed")
}

fn tree(root: &Path) -> Vec<String> {
    fn walk(base: &Path, p: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(p).unwrap() {
            let e = e.unwrap();
            out.push(e.path().strip_prefix(base).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                walk(base, &e.path(), out);
            }
        }
    }
    let mut out = Vec::new();
    if root.exists() {
        walk(root, root, &mut out);
    }
    out.sort();
    out
}

#[tokio::test]
async fn create_container_with_filelogs_returns_the_mount_and_the_host_dir_exists() {
    let bed = Bed::new();
    let (_sw, stop) = bed.start_agent(bed.config(|_| {}));
    let mut rt = FakeRuntime::start(&bed.socket(), FakeOptions::default())
        .await
        .unwrap();
    let h = connect(&mut rt).await;
    assert_eq!(h.registration.plugin_name, "berth");
    assert!(h.events.contains(Event::CreateContainer) && h.events.contains(Event::RemoveContainer));
    assert!(
        !h.events.contains(Event::StartContainer),
        "subscribes only to the events it uses"
    );

    let p = pod("shop", "web-0", "uid-1");
    let resp = h
        .create_container(&p, &ctr(&p, "app", "c1", Some("/app/logs")))
        .await
        .unwrap();
    let mounts = resp.adjust.unwrap().mounts;
    assert_eq!(mounts.len(), 1);
    let root = std::fs::canonicalize(bed.log_root()).unwrap();
    let host = root.join("shop/web-0/app");
    assert_eq!(mounts[0].destination, "/app/logs");
    assert_eq!(mounts[0].r#type, "bind");
    assert_eq!(Path::new(&mounts[0].source), host);
    assert_eq!(
        mounts[0].options,
        ["rbind", "rw", "nosuid", "nodev", "noexec"]
    );
    assert!(host.is_dir());
    // The metadata file follows the answer (it is not on the runtime's critical path).
    let meta_path = root.join("shop/web-0/app.berth.json");
    let deadline = std::time::Instant::now() + WAIT;
    while !meta_path.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no metadata file {}",
            meta_path.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
    assert_eq!(meta["namespace"], "shop");
    assert_eq!(meta["pod"], "web-0");
    assert_eq!(meta["pod_uid"], "uid-1");
    assert_eq!(meta["container"], "app");
    assert_eq!(meta["container_id"], "c1");
    assert_eq!(meta["node"], "node-1");
    assert_eq!(meta["labels"]["app"], "shop");
    assert_eq!(meta["mounts"]["/app/logs"], ".");

    // No request: no adjustment, nothing created.
    let resp = h
        .create_container(&p, &ctr(&p, "plain", "c2", None))
        .await
        .unwrap();
    assert_eq!(resp.adjust, None);
    assert!(!root.join("shop/web-0/plain").exists());

    // Annotation instead of env, several dirs: a subdir each.
    let mut p2 = pod("shop", "web-1", "uid-2");
    p2.annotations.insert(
        "berth.io/filelogs.side".into(),
        "/var/log/nginx,/app/logs".into(),
    );
    let resp = h
        .create_container(&p2, &ctr(&p2, "side", "c3", None))
        .await
        .unwrap();
    let mut m: Vec<(String, String)> = resp
        .adjust
        .unwrap()
        .mounts
        .into_iter()
        .map(|m| (m.destination, m.source))
        .collect();
    m.sort();
    assert_eq!(
        m,
        vec![
            (
                "/app/logs".to_string(),
                root.join("shop/web-1/side/app_logs").display().to_string()
            ),
            (
                "/var/log/nginx".to_string(),
                root.join("shop/web-1/side/var_log_nginx")
                    .display()
                    .to_string()
            ),
        ]
    );
    assert!(
        root.join("shop/web-1/side/app_logs").is_dir()
            && root.join("shop/web-1/side/var_log_nginx").is_dir()
    );
    stop.cancel();
    rt.stop();
}

#[tokio::test]
async fn hostile_values_are_refused_recorded_and_create_nothing() {
    let bed = Bed::new();
    let (_sw, stop) = bed.start_agent(bed.config(|_| {}));
    let mut rt = FakeRuntime::start(&bed.socket(), FakeOptions::default())
        .await
        .unwrap();
    let h = connect(&mut rt).await;
    let p = pod("shop", "web-0", "uid-1");
    let cases: Vec<(PodSandbox, Container, &str)> = vec![
        (p.clone(), ctr(&p, "a", "h1", Some("/proc/self")), "/proc"),
        (
            p.clone(),
            ctr(&p, "b", "h2", Some("/app/../../etc")),
            "not normalised",
        ),
        (
            p.clone(),
            ctr(&p, "c", "h3", Some("relative/logs")),
            "not absolute",
        ),
        (
            p.clone(),
            ctr(&p, "d", "h4", Some("/app/lo\u{202e}gs")),
            "character",
        ),
        (
            pod("../../etc", "web", "uid-9"),
            ctr(&p, "e", "h5", Some("/app/logs")),
            "DNS label",
        ),
        (
            pod("shop", "..", "uid-9"),
            ctr(&p, "f", "h6", Some("/app/logs")),
            "DNS subdomain",
        ),
        (
            p.clone(),
            ctr(&p, "Bad_Name", "h7", Some("/app/logs")),
            "DNS label",
        ),
        (
            pod("shop", "web", "../x"),
            ctr(&p, "g", "h8", Some("/app/logs")),
            "pod uid",
        ),
    ];
    for (pod, c, why) in &cases {
        let e = h.create_container(pod, c).await.unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("berth refused file logs") && msg.contains(why),
            "{why}: {msg}"
        );
    }
    let events = bed.events();
    assert_eq!(events.len(), cases.len());
    assert!(events.iter().all(|e| e["kind"] == "filelogs_refused"));
    assert_eq!(events[0]["value"], "/proc/self");
    assert_eq!(events[0]["container"], "a");
    assert!(
        tree(&bed.log_root()).is_empty(),
        "something was created: {:?}",
        tree(&bed.log_root())
    );
    assert!(
        bed.outside_log_root().is_empty(),
        "{:?}",
        bed.outside_log_root()
    );
    stop.cancel();
    rt.stop();
}

#[tokio::test]
async fn allow_without_mount_creates_the_container_unadjusted() {
    let bed = Bed::new();
    let (_sw, stop) =
        bed.start_agent(bed.config(|c| c.filelogs.on_violation = OnProblem::AllowWithoutMount));
    let mut rt = FakeRuntime::start(&bed.socket(), FakeOptions::default())
        .await
        .unwrap();
    let h = connect(&mut rt).await;
    let p = pod("shop", "web-0", "uid-1");
    let resp = h
        .create_container(&p, &ctr(&p, "app", "c1", Some("/etc")))
        .await
        .unwrap();
    assert_eq!(resp.adjust, None);
    let events = bed.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["kind"], "filelogs_unmounted");
    assert!(events[0]["reason"].as_str().unwrap().contains("/etc"));
    assert!(tree(&bed.log_root()).is_empty());
    stop.cancel();
    rt.stop();
}

#[tokio::test]
async fn symlink_planted_in_the_log_root_refuses_the_mount() {
    let bed = Bed::new();
    let (_sw, stop) = bed.start_agent(bed.config(|_| {}));
    let outside = bed.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::create_dir_all(bed.log_root().join("shop")).unwrap();
    std::os::unix::fs::symlink(&outside, bed.log_root().join("shop/web-0")).unwrap();
    let mut rt = FakeRuntime::start(&bed.socket(), FakeOptions::default())
        .await
        .unwrap();
    let h = connect(&mut rt).await;
    let p = pod("shop", "web-0", "uid-1");
    let e = h
        .create_container(&p, &ctr(&p, "app", "c1", Some("/app/logs")))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("symlink"), "{e}");
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "the symlink was followed"
    );
    assert_eq!(bed.events()[0]["kind"], "filelogs_refused");
    stop.cancel();
    rt.stop();
}

#[tokio::test]
async fn retention_runs_from_removal_and_cleanup_keeps_live_dirs() {
    let bed = Bed::new();
    let (sw, stop) = bed.start_agent(bed.config(|_| {}));
    let sw = sw.unwrap();
    let mut rt = FakeRuntime::start(&bed.socket(), FakeOptions::default())
        .await
        .unwrap();
    let h = connect(&mut rt).await;
    let root = std::fs::canonicalize(bed.log_root()).unwrap();
    let p1 = pod("shop", "gone", "uid-1");
    let p2 = pod("shop", "live", "uid-2");
    let c1 = ctr(&p1, "app", "c1", Some("/app/logs"));
    let c2 = ctr(&p2, "app", "c2", Some("/app/logs"));
    h.create_container(&p1, &c1).await.unwrap();
    h.create_container(&p2, &c2).await.unwrap();
    std::fs::write(root.join("shop/gone/app/app.log"), b"bye").unwrap();
    std::fs::write(root.join("shop/live/app/app.log"), b"hi").unwrap();

    h.state_change(Event::RemoveContainer, &p1, Some(&c1))
        .await
        .unwrap();
    bed.clock.advance(DAY);
    let r = sw.sweep();
    assert!(r.removed_dirs.is_empty(), "removed a day early: {r:?}");
    bed.clock.advance(DAY);
    let r = sw.sweep();
    assert_eq!(r.removed_dirs.len(), 1);
    assert_eq!(
        tree(&root),
        [
            "shop",
            "shop/live",
            "shop/live/app",
            "shop/live/app.berth.json",
            "shop/live/app/app.log"
        ]
    );
    let kinds: Vec<_> = bed
        .events()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["retention_started", "cleanup_removed"]);

    // The pod goes away with its container event missed: RemovePodSandbox starts retention.
    h.state_change(Event::RemovePodSandbox, &p2, None)
        .await
        .unwrap();
    bed.clock.advance(2 * DAY);
    sw.sweep();
    assert!(
        tree(&root).is_empty(),
        "empty parents left: {:?}",
        tree(&root)
    );
    stop.cancel();
    rt.stop();
}

#[tokio::test]
async fn restart_reconciles_vanished_containers_and_lost_state() {
    let bed = Bed::new();
    let root;
    let p1 = pod("shop", "a", "uid-1");
    let p2 = pod("shop", "b", "uid-2");
    let c1 = ctr(&p1, "app", "c1", Some("/app/logs"));
    let c2 = ctr(&p2, "app", "c2", Some("/app/logs"));
    {
        let (_sw, stop) = bed.start_agent(bed.config(|_| {}));
        let mut rt = FakeRuntime::start(&bed.socket(), FakeOptions::default())
            .await
            .unwrap();
        let h = connect(&mut rt).await;
        h.create_container(&p1, &c1).await.unwrap();
        h.create_container(&p2, &c2).await.unwrap();
        root = std::fs::canonicalize(bed.log_root()).unwrap();
        // The agent stops (state saved on the way out).
        stop.cancel();
        assert!(h.wait_closed(WAIT).await);
        rt.stop();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(bed.state_dir().join("filelogs-state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        state["dirs"].as_object().unwrap().len(),
        2,
        "state was not persisted at shutdown"
    );

    // While it was away, c1 was removed. A dir from a lost state shows up too.
    std::fs::create_dir_all(root.join("old/pod/app")).unwrap();
    let meta = serde_json::json!({"namespace":"old","pod":"pod","pod_uid":"u-old","container":"app","container_id":"x",
        "node":"n","labels":{},"mounts":{"/l":"."},"updated_at":"2020-01-01T00:00:00Z"});
    std::fs::write(root.join("old/pod/app.berth.json"), meta.to_string()).unwrap();

    let (sw, stop) = bed.start_agent(bed.config(|_| {}));
    let opts = FakeOptions {
        pods: vec![p2.clone()],
        containers: vec![c2.clone()],
        ..Default::default()
    };
    let mut rt = FakeRuntime::start(&bed.socket(), opts).await.unwrap();
    let _h = connect(&mut rt).await;
    let started: Vec<String> = bed
        .events()
        .iter()
        .filter(|e| e["kind"] == "retention_started")
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(started, ["old/pod/app", "shop/a/app"]);
    bed.clock.advance(2 * DAY);
    sw.unwrap().sweep();
    assert_eq!(
        tree(&root),
        ["shop", "shop/b", "shop/b/app", "shop/b/app.berth.json"]
    );
    stop.cancel();
    rt.stop();
}

#[tokio::test]
async fn agent_reconnects_when_the_runtime_restarts() {
    let bed = Bed::new();
    let (_sw, stop) = bed.start_agent(bed.config(|_| {}));
    let mut rt = FakeRuntime::start(&bed.socket(), FakeOptions::default())
        .await
        .unwrap();
    let _h = connect(&mut rt).await;
    rt.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut rt = FakeRuntime::start(&bed.socket(), FakeOptions::default())
        .await
        .unwrap();
    let h = connect(&mut rt).await;
    let p = pod("shop", "web", "uid-1");
    let r = h
        .create_container(&p, &ctr(&p, "app", "c1", Some("/logs")))
        .await
        .unwrap();
    assert_eq!(r.adjust.unwrap().mounts.len(), 1);
    stop.cancel();
    rt.stop();
}

#[tokio::test]
async fn pod_budget_removes_rotated_files() {
    let bed = Bed::new();
    let (sw, stop) = bed.start_agent(bed.config(|c| c.filelogs.pod_budget = 64 * 1024));
    let mut rt = FakeRuntime::start(&bed.socket(), FakeOptions::default())
        .await
        .unwrap();
    let h = connect(&mut rt).await;
    bed.wait_initial_sweep().await;
    let p = pod("shop", "chatty", "uid-1");
    h.create_container(&p, &ctr(&p, "app", "c1", Some("/logs")))
        .await
        .unwrap();
    let dir = std::fs::canonicalize(bed.log_root())
        .unwrap()
        .join("shop/chatty/app");
    for (name, age) in [("app.log.2", 3), ("app.log.1", 2), ("app.log", 1)] {
        let f = dir.join(name);
        std::fs::write(&f, vec![b'x'; 40 * 1024]).unwrap();
        let t = SystemTime::now() - Duration::from_secs(age * 60);
        std::fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }
    let r = sw.unwrap().sweep();
    assert_eq!(
        r.removed_files,
        [
            PathBuf::from("shop/chatty/app/app.log.2"),
            PathBuf::from("shop/chatty/app/app.log.1")
        ]
    );
    assert!(dir.join("app.log").exists());
    let usage: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bed.state_dir().join("usage.json")).unwrap())
            .unwrap();
    assert_eq!(usage["pods"]["uid-1"]["pod"], "chatty");
    assert!(usage["pods"]["uid-1"]["bytes"].as_u64().unwrap() <= 64 * 1024);
    stop.cancel();
    rt.stop();
}

#[tokio::test]
async fn usage_is_remeasured_only_where_the_watcher_saw_writes() {
    let bed = Bed::new();
    let (sw, stop) = bed.start_agent(bed.config(|_| {}));
    let sw = sw.unwrap();
    let mut rt = FakeRuntime::start(&bed.socket(), FakeOptions::default())
        .await
        .unwrap();
    let h = connect(&mut rt).await;
    bed.wait_initial_sweep().await;
    for (name, uid) in [("quiet", "uid-1"), ("busy", "uid-2")] {
        let p = pod("shop", name, uid);
        h.create_container(&p, &ctr(&p, "app", &format!("c-{name}"), Some("/logs")))
            .await
            .unwrap();
    }
    // The first pass measures every dir; the events of their creation may still be in
    // flight, so passes go on (bounded) until one has nothing to re-measure.
    assert_eq!(sw.sweep().scanned_dirs, 2);
    let deadline = std::time::Instant::now() + WAIT;
    while sw.sweep().scanned_dirs != 0 {
        assert!(std::time::Instant::now() < deadline, "passes never settle");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Quiet dirs stay quiet.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        sw.sweep().scanned_dirs,
        0,
        "nothing changed, nothing re-measured"
    );
    let busy = std::fs::canonicalize(bed.log_root())
        .unwrap()
        .join("shop/busy/app");
    std::fs::write(busy.join("app.log"), vec![b'x'; 100_000]).unwrap();
    // inotify events arrive asynchronously: poll (bounded) until the pass sees the change.
    let deadline = std::time::Instant::now() + WAIT;
    let report = loop {
        let r = sw.sweep();
        if r.scanned_dirs > 0 {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the watcher never reported the write"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        report.scanned_dirs, 1,
        "only the written dir is re-measured"
    );
    assert!(report.total_bytes >= 100_000, "{report:?}");
    stop.cancel();
    rt.stop();
}

/// Faketime and file logs answer CreateContainer together: one adjustment with both mounts
/// and the shim's env; a container refused by file logs leaves no faketime state behind;
/// PostStart judges the entry point; RemoveContainer removes the container's state dir.
#[tokio::test]
async fn faketime_and_filelogs_share_one_adjustment() {
    let bed = Bed::new();
    let (_sw, stop) = bed.start_agent(bed.config(|_| {}));
    let mut rt = FakeRuntime::start(&bed.socket(), FakeOptions::default())
        .await
        .unwrap();
    let h = connect(&mut rt).await;
    assert!(h.events.contains(Event::PostStartContainer));

    let mut p = pod("shop", "web-0", "uid-1");
    p.annotations
        .insert("berth.io/faketime".into(), "+2d".into());
    let mut c = ctr(&p, "app", "c1", Some("/app/logs"));
    c.env.push("LD_PRELOAD=/usr/lib/libjemalloc.so.2".into());
    let adjust = h.create_container(&p, &c).await.unwrap().adjust.unwrap();
    let dests: Vec<&str> = adjust
        .mounts
        .iter()
        .map(|m| m.destination.as_str())
        .collect();
    assert_eq!(
        dests,
        [
            "/app/logs",
            "/.berth/faketime/libberth-faketime.so",
            "/.berth/faketime/state"
        ]
    );
    let env: HashMap<&str, &str> = adjust
        .env
        .iter()
        .map(|kv| (kv.key.as_str(), kv.value.as_str()))
        .collect();
    assert_eq!(
        env["LD_PRELOAD"],
        "/usr/lib/libjemalloc.so.2:/.berth/faketime/libberth-faketime.so"
    );
    assert_eq!(
        env["FAKETIME_TIMESTAMP_FILE"],
        "/.berth/faketime/state/offset"
    );
    assert_eq!(env["FAKETIME_CACHE_DURATION"], "1");
    assert!(!env.contains_key("FAKETIME"));
    let state_dir = bed.state_dir().join("faketime/containers/c1");
    assert!(state_dir.join("offset").is_file());
    let control = berth_agent::faketime::Control::new(&bed.state_dir());
    let target = berth_agent::faketime::Target {
        namespace: "shop",
        pod: "web-0",
        container: None,
    };
    let st = control.get(&target).unwrap();
    assert_eq!(
        (st.len(), st[0].offset.as_str(), st[0].covered),
        (1, "+2d", None)
    );

    // PostStart with a pid: judged from /proc (this test binary is a glibc program).
    c.pid = std::process::id();
    h.state_change(Event::PostStartContainer, &p, Some(&c))
        .await
        .unwrap();
    let st = control.get(&target).unwrap();
    assert_eq!(st[0].covered, Some(true));
    assert_eq!(st[0].coverage.as_deref(), Some("glibc"));

    // File logs refuse a hostile request: the container fails, faketime keeps nothing.
    let bad = ctr(&p, "evil", "c2", Some("/proc/self"));
    h.create_container(&p, &bad).await.unwrap_err();
    assert!(!bed.state_dir().join("faketime/containers/c2").exists());
    assert_eq!(control.get(&target).unwrap().len(), 1);

    // Removal takes the state dir.
    h.state_change(Event::RemoveContainer, &p, Some(&c))
        .await
        .unwrap();
    assert!(!state_dir.exists());
    assert!(control.get(&target).is_err());
    stop.cancel();
}
