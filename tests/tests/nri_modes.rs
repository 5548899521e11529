//! NRI registration modes end to end, on containerd 2.1 and 1.7.
//!
//! - Pre-registered: containerd starts berth-agent itself from its NRI `plugin_path` (a
//!   `10-berth` launcher script) and passes the connection as an inherited fd. The file-log
//!   mount works; when containerd dies the agent exits instead of reconnecting, and the
//!   restarted containerd starts a new agent that serves the next container.
//! - Fail-open: with no berth plugin at all, a container asking for file logs is created
//!   without the mount. `required_plugins` (NRI's default validator, containerd >= 2.2) is not
//!   implemented by containerd 2.1 or 1.7: configured or annotated, it changes nothing there,
//!   which is what docs/operations.md tells operators ("NRI registration modes").

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_e2e::testbed::{Containerd, Node, NodeOptions, binary, workspace_root};
use berth_e2e::{BUSYBOX_IMAGE, ContainerSpec, CriClient, PodSpec};

const T: Duration = Duration::from_secs(10);

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn logger(name: &str) -> ContainerSpec {
    ContainerSpec::sleeper(name, BUSYBOX_IMAGE).env("KUBERNETES_FILELOGS", "/app/logs")
}

/// Whether `/app/logs` is a mount point inside the container.
async fn has_log_mount(cri: &mut CriClient, id: &str) -> bool {
    let out = cri
        .exec(id, &["cat", "/proc/self/mounts"], T)
        .await
        .unwrap()
        .ok()
        .unwrap();
    out.lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/app/logs"))
}

/// The agent's files, outside the node dir (which containerd and the test bed own); removed,
/// and a still running agent killed, on drop.
struct Work {
    dir: PathBuf,
}

impl Work {
    fn new(name: &str) -> Work {
        let dir = workspace_root().join(".run/nri-modes").join(name);
        if let Some(pid) = Self::pid_in(&dir) {
            Self::kill_agent(pid);
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("agent.toml"),
            "node_name = \"e2e-node\"\n[faketime]\nenabled = false\n",
        )
        .unwrap();
        Work { dir }
    }

    /// The `10-berth` launcher containerd runs: it gets only the NRI_PLUGIN_* variables (no
    /// PATH) and no stdout/stderr, so everything is absolute and the log is redirected.
    fn launcher(&self) -> String {
        let d = self.dir.display();
        format!(
            "#!/bin/sh\n\
             echo $$ > {d}/agent.pid\n\
             echo \"NRI_PLUGIN_NAME=$NRI_PLUGIN_NAME NRI_PLUGIN_IDX=$NRI_PLUGIN_IDX NRI_PLUGIN_SOCKET=$NRI_PLUGIN_SOCKET\" >> {d}/launches\n\
             RUST_LOG=info,berth_nri=debug exec {bin} --config {d}/agent.toml --log-root {d}/logs --state-dir {d}/state 2>>{d}/agent.log\n",
            bin = binary("berth-agent").display()
        )
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    fn launches(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("launches"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn pid_in(dir: &Path) -> Option<i32> {
        std::fs::read_to_string(dir.join("agent.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn pid(&self) -> i32 {
        Self::pid_in(&self.dir).expect("the launcher wrote the agent's pid")
    }

    fn alive(pid: i32) -> bool {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains("berth-agent"))
            .unwrap_or(false)
    }

    fn kill_agent(pid: i32) {
        if Self::alive(pid) {
            // SAFETY: kill(2) of a pid whose cmdline we just checked is a berth-agent.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }

    fn wait_ready(&self, n: usize) {
        wait_for(&format!("{n} registrations of the agent"), T * 2, || {
            self.log().matches("nri plugin ready").count() >= n
        });
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        if let Some(pid) = Self::pid_in(&self.dir) {
            Self::kill_agent(pid);
        }
        if std::env::var_os("BERTH_KEEP_NODES").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

async fn preregistered(node_name: &str, containerd: Containerd) {
    let work = Work::new(node_name);
    let mut node = Node::start(
        node_name,
        NodeOptions {
            containerd,
            nri_plugins: vec![("10-berth".into(), work.launcher())],
            ..Default::default()
        },
    )
    .expect("node starts");
    // containerd starts its pre-registered plugins while it starts.
    work.wait_ready(1);
    let log = work.log();
    assert!(
        log.contains("started by the runtime as a pre-registered nri plugin"),
        "the agent did not detect the pre-registered mode:\n{log}"
    );
    assert_eq!(
        work.launches(),
        vec!["NRI_PLUGIN_NAME=berth NRI_PLUGIN_IDX=10 NRI_PLUGIN_SOCKET=3"]
    );

    let mut cri = node.cri().await.expect("CRI ready");
    let pod = cri.run_pod(&PodSpec::new("shop", "web-0")).await.unwrap();
    let app = cri.run_container(&pod, &logger("app")).await.unwrap();
    assert!(has_log_mount(&mut cri, &app).await);
    cri.exec(&app, &["sh", "-c", "echo hello >> /app/logs/app.log"], T)
        .await
        .unwrap()
        .ok()
        .unwrap();
    let host = work.dir.join("logs/shop/web-0/app/app.log");
    assert_eq!(std::fs::read_to_string(&host).unwrap(), "hello\n");

    // containerd dies: the agent it started exits by itself and never reconnects.
    let first = work.pid();
    node.kill_containerd().unwrap();
    wait_for("the pre-registered agent to exit", T, || {
        !Work::alive(first)
    });
    let log = work.log();
    assert!(
        log.contains("the runtime closed the connection it started this plugin with; exiting"),
        "{log}"
    );
    assert!(
        !log.contains("nri connection failed"),
        "a pre-registered agent must not try to connect on its own:\n{log}"
    );

    // The restarted containerd starts a new agent, which serves the next container.
    node.restart_containerd().unwrap();
    work.wait_ready(2);
    let second = work.pid();
    assert_ne!(first, second);
    assert_eq!(work.launches().len(), 2);
    let mut cri = node.cri().await.expect("CRI ready after the restart");
    let sidecar = cri.run_container(&pod, &logger("sidecar")).await.unwrap();
    assert!(has_log_mount(&mut cri, &sidecar).await);
    assert!(work.dir.join("logs/shop/web-0/sidecar").is_dir());
    // The first container's dir was adopted by the new agent through Synchronize.
    assert!(host.is_file());
    // Containers that lived through `kill -9` of containerd may not stop cleanly over CRI
    // ("ttrpc: closed"); the node's drop cleans up whatever is left.
    let _ = cri.teardown_all().await;
}

#[tokio::test]
#[ignore = "needs root and the test bed: run by scripts/test"]
async fn preregistered_agent_on_containerd_2_1() {
    preregistered("nri-prereg-21", Containerd::V2_1).await;
}

#[tokio::test]
#[ignore = "needs root and the test bed: run by scripts/test"]
async fn preregistered_agent_on_containerd_1_7() {
    preregistered("nri-prereg-17", Containerd::V1_7).await;
}

/// NRI's default validator with berth required, as containerd >= 2.2 reads it.
const REQUIRED: &str = "  [plugins.\"io.containerd.nri.v1.nri\".default_validator]\n    enable = true\n    required_plugins = [\"berth\"]\n";

async fn fail_open(node_name: &str, containerd: Containerd) {
    let node = Node::start(
        node_name,
        NodeOptions {
            containerd,
            nri_config: Some(REQUIRED.into()),
            ..Default::default()
        },
    )
    .expect("node starts");
    let config = std::fs::read_to_string(node.dir().join("config.toml")).unwrap();
    assert!(
        config.ends_with(REQUIRED),
        "the opt-in NRI config is in place"
    );
    let mut cri = node.cri().await.expect("CRI ready");

    // No berth plugin registered: the container is created, without its log mount.
    let pod = cri.run_pod(&PodSpec::new("shop", "plain")).await.unwrap();
    let app = cri.run_container(&pod, &logger("app")).await.unwrap();
    assert!(!has_log_mount(&mut cri, &app).await);

    // Neither the global list nor the pod annotation is enforced by these versions.
    let annotated = cri
        .run_pod(
            &PodSpec::new("shop", "annotated")
                .annotation("required-plugins.noderesource.dev", "[\"berth\"]"),
        )
        .await
        .unwrap();
    let app2 = cri.run_container(&annotated, &logger("app")).await.unwrap();
    assert!(!has_log_mount(&mut cri, &app2).await);
    let status = cri.container_status(&app2).await.unwrap();
    assert_eq!(status.state, 1, "CONTAINER_RUNNING");
    cri.teardown_all().await.unwrap();
}

#[tokio::test]
#[ignore = "needs root and the test bed: run by scripts/test"]
async fn fail_open_and_required_plugins_not_enforced_on_containerd_2_1() {
    fail_open("nri-open-21", Containerd::V2_1).await;
}

#[tokio::test]
#[ignore = "needs root and the test bed: run by scripts/test"]
async fn fail_open_and_required_plugins_not_enforced_on_containerd_1_7() {
    fail_open("nri-open-17", Containerd::V1_7).await;
}
