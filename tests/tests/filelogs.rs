//! File logs end to end: berth-agent registered over a real containerd's NRI socket (2.1 and
//! 1.7), pods driven through CRI like kubelet does.
//!
//! A container with `KUBERNETES_FILELOGS=/app/logs` writes a file that shows up on the host at
//! `<log_root>/<ns>/<pod>/<container>/` with a metadata file beside it; a restart (attempt 1)
//! appends to the same dir; two containers of one pod get two dirs; hostile values and a
//! planted symlink create nothing outside the log root; killing and restarting the agent and
//! restarting containerd lose nothing; a dir whose container vanished is cleaned after its
//! retention while a live one stays.

use std::path::Path;
use std::time::{Duration, Instant};

use berth_e2e::agent::AgentProcess;
use berth_e2e::testbed::{Containerd, Node, NodeOptions};
use berth_e2e::{BUSYBOX_IMAGE, ContainerSpec, CriClient, Pod, PodSpec};

const T: Duration = Duration::from_secs(10);

fn tree(root: &Path) -> Vec<String> {
    fn walk(base: &Path, p: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(p) else { return };
        for e in rd {
            let e = e.unwrap();
            out.push(e.path().strip_prefix(base).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                walk(base, &e.path(), out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

fn events(state: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(state.join("events.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn logger(name: &str, attempt: u32) -> ContainerSpec {
    let mut c = ContainerSpec::sleeper(name, BUSYBOX_IMAGE).env("KUBERNETES_FILELOGS", "/app/logs");
    c.attempt = attempt;
    c
}

async fn write_line(cri: &mut CriClient, id: &str, line: &str, file: &str) {
    let cmd = format!("echo {line} >> /app/logs/{file}");
    cri.exec(id, &["sh", "-c", &cmd], T)
        .await
        .unwrap()
        .ok()
        .unwrap();
}

async fn create_refused(cri: &mut CriClient, pod: &Pod, spec: &ContainerSpec) -> String {
    let e = cri
        .create_container(pod, spec)
        .await
        .expect_err("hostile container was created");
    format!("{e:#}")
}

async fn filelogs_end_to_end(node_name: &str, containerd: Containerd) {
    let mut node = Node::start(
        node_name,
        NodeOptions {
            containerd,
            ..Default::default()
        },
    )
    .expect("node starts");
    let work = node.dir().join("filelogs-test");
    std::fs::create_dir_all(&work).unwrap();
    let log_root = work.join("logs");
    let state = work.join("state");
    let outside = work.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let config = work.join("agent.toml");
    std::fs::write(
        &config,
        "node_name = \"e2e-node\"\n[nri]\nreconnect_max = \"500ms\"\n[cleanup]\nretention = \"3s\"\ninterval = \"500ms\"\n",
    )
    .unwrap();
    let agent_log = work.join("agent.log");
    let mut agent = AgentProcess::start(&node, &config, &log_root, &state, &agent_log);
    agent.wait_ready(1);
    let mut cri = node.cri().await.expect("CRI ready");
    let root = std::fs::canonicalize(&log_root).unwrap();

    // 1. One container: the file appears on the host, with metadata beside the dir.
    let pod = cri
        .run_pod(&PodSpec::new("shop", "web-0").label("app", "shop"))
        .await
        .unwrap();
    let app0 = cri.run_container(&pod, &logger("app", 0)).await.unwrap();
    write_line(&mut cri, &app0, "first", "app.log").await;
    let host_dir = root.join("shop/web-0/app");
    assert_eq!(
        std::fs::read_to_string(host_dir.join("app.log")).unwrap(),
        "first\n"
    );
    // Written right after the agent's answer, off the runtime's critical path.
    let meta_path = root.join("shop/web-0/app.berth.json");
    wait_for("the metadata file", Duration::from_secs(5), || {
        meta_path.exists()
    });
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
    assert_eq!(meta["namespace"], "shop");
    assert_eq!(meta["pod"], "web-0");
    assert_eq!(meta["pod_uid"], pod.spec.uid.as_str());
    assert_eq!(meta["container"], "app");
    assert_eq!(meta["container_id"], app0.as_str());
    assert_eq!(meta["node"], "e2e-node");
    assert_eq!(meta["labels"]["app"], "shop");
    let mountinfo = cri
        .exec(&app0, &["cat", "/proc/self/mountinfo"], T)
        .await
        .unwrap()
        .ok()
        .unwrap();
    let line = mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/app/logs"))
        .expect("/app/logs is a mount");
    for flag in ["nosuid", "nodev", "noexec", "rw"] {
        assert!(
            line.split(' ')
                .nth(5)
                .unwrap()
                .split(',')
                .any(|f| f == flag),
            "{flag} missing: {line}"
        );
    }

    // 2. Restart: attempt 1 of the same container appends to the same dir.
    cri.stop_container(&app0, 2).await.unwrap();
    let app1 = cri.run_container(&pod, &logger("app", 1)).await.unwrap();
    write_line(&mut cri, &app1, "second", "app.log").await;
    assert_eq!(
        std::fs::read_to_string(host_dir.join("app.log")).unwrap(),
        "first\nsecond\n"
    );

    // 3. A second container of the pod: its own dir, no collision.
    let side = cri
        .run_container(&pod, &logger("sidecar", 0))
        .await
        .unwrap();
    write_line(&mut cri, &side, "side", "app.log").await;
    assert_eq!(
        std::fs::read_to_string(root.join("shop/web-0/sidecar/app.log")).unwrap(),
        "side\n"
    );
    assert_eq!(
        std::fs::read_to_string(host_dir.join("app.log")).unwrap(),
        "first\nsecond\n"
    );

    // 4. Hostile values: refused, recorded, nothing created anywhere.
    let before = tree(&root);
    let evil_env =
        ContainerSpec::sleeper("evil", BUSYBOX_IMAGE).env("KUBERNETES_FILELOGS", "/proc/self");
    let msg = create_refused(&mut cri, &pod, &evil_env).await;
    assert!(
        msg.contains("berth refused file logs") && msg.contains("/proc"),
        "{msg}"
    );
    let evil_pod = cri
        .run_pod(
            &PodSpec::new("shop", "evil-ann").annotation("berth.io/filelogs.c", "/app/../../etc"),
        )
        .await
        .unwrap();
    let msg = create_refused(
        &mut cri,
        &evil_pod,
        &ContainerSpec::sleeper("c", BUSYBOX_IMAGE),
    )
    .await;
    assert!(msg.contains("not normalised"), "{msg}");
    // A symlink planted where a pod dir would go is not followed.
    std::os::unix::fs::symlink(&outside, root.join("shop/linked")).unwrap();
    let linked = cri.run_pod(&PodSpec::new("shop", "linked")).await.unwrap();
    let msg = create_refused(&mut cri, &linked, &logger("app", 0)).await;
    assert!(msg.contains("symlink"), "{msg}");
    std::fs::remove_file(root.join("shop/linked")).unwrap();
    assert_eq!(
        tree(&root),
        before,
        "a refused container changed the log root"
    );
    assert!(
        tree(&outside).is_empty(),
        "something was created outside the log root: {:?}",
        tree(&outside)
    );
    let refused = events(&state)
        .iter()
        .filter(|e| e["kind"] == "filelogs_refused")
        .count();
    assert_eq!(refused, 3);

    // 5. Kill the agent. NRI is fail-open: a container created meanwhile has no mount.
    agent.kill();
    let late = cri.run_container(&pod, &logger("late", 0)).await.unwrap();
    let mi = cri
        .exec(&late, &["cat", "/proc/self/mountinfo"], T)
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert!(
        !mi.lines().any(|l| l.split(' ').nth(4) == Some("/app/logs")),
        "mounted without the agent?"
    );
    // The sidecar goes away while the agent is down.
    cri.stop_container(&side, 2).await.unwrap();
    cri.remove_container(&side).await.unwrap();

    // Restarted, the agent reconciles: the sidecar's retention starts; the live dir stays.
    let agent = AgentProcess::start(&node, &config, &log_root, &state, &agent_log);
    agent.wait_ready(2);
    wait_for(
        "the sidecar dir to expire and be removed",
        Duration::from_secs(15),
        || !root.join("shop/web-0/sidecar").exists(),
    );
    assert!(!root.join("shop/web-0/sidecar.berth.json").exists());
    assert_eq!(
        std::fs::read_to_string(host_dir.join("app.log")).unwrap(),
        "first\nsecond\n",
        "the live dir lost data"
    );
    let ev = events(&state);
    assert!(
        ev.iter()
            .any(|e| e["kind"] == "retention_started" && e["path"] == "shop/web-0/sidecar"),
        "{ev:?}"
    );
    assert!(
        ev.iter()
            .any(|e| e["kind"] == "cleanup_removed" && e["path"] == "shop/web-0/sidecar"),
        "{ev:?}"
    );
    let app2 = cri.run_container(&pod, &logger("app", 2)).await.unwrap();
    write_line(&mut cri, &app2, "third", "app.log").await;
    assert_eq!(
        std::fs::read_to_string(host_dir.join("app.log")).unwrap(),
        "first\nsecond\nthird\n"
    );

    // 6. Restart containerd: the agent re-registers; nothing is lost, mounts work again.
    node.restart_containerd().expect("containerd restarts");
    agent.wait_ready(3);
    let mut cri = node.cri().await.expect("CRI ready after restart");
    let app3 = cri.run_container(&pod, &logger("app", 3)).await.unwrap();
    write_line(&mut cri, &app3, "fourth", "app.log").await;
    assert_eq!(
        std::fs::read_to_string(host_dir.join("app.log")).unwrap(),
        "first\nsecond\nthird\nfourth\n"
    );
    // A few cleanup passes later the live dir is still there.
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        host_dir.join("app.log").exists(),
        "a live container's dir was cleaned"
    );

    // 7. Everything removed: the pod's dirs expire, empty parents go too.
    cri.teardown_all().await.unwrap();
    wait_for(
        "the log root to empty after retention",
        Duration::from_secs(20),
        || tree(&root).is_empty(),
    );
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and the test bed: run by scripts/test"]
async fn filelogs_on_containerd_2_1() {
    filelogs_end_to_end("filelogs-21", Containerd::V2_1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and the test bed: run by scripts/test"]
async fn filelogs_on_containerd_1_7() {
    filelogs_end_to_end("filelogs-17", Containerd::V1_7).await;
}
