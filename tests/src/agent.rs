//! berth-agent as a child process of an end-to-end test, registered over a test node's NRI
//! socket; killed (by the pid we own) on drop.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::testbed::{Node, binary};

pub struct AgentProcess {
    child: Child,
    log: PathBuf,
}

/// Mounts, in the agent's own mount namespace, a small tmpfs on `/run/containerd` holding the
/// node's containerd socket at `/run/containerd/containerd.sock` (`$1`), then runs the agent
/// (`$2…`). `/run/containerd` is created on the host when missing (empty; containerd's shims
/// use it anyway).
const DEFAULT_CONTAINERD: &str = "mkdir -p /run/containerd \
    && mount -t tmpfs -o size=64k,mode=0755 berth-test /run/containerd \
    && : >/run/containerd/containerd.sock \
    && mount --bind \"$1\" /run/containerd/containerd.sock \
    && shift && exec \"$@\"";

impl AgentProcess {
    /// Starts `target/debug/berth-agent` against `node` with `config`, appending its log to `log`.
    pub fn start(
        node: &Node,
        config: &Path,
        log_root: &Path,
        state: &Path,
        log: &Path,
    ) -> AgentProcess {
        Self::spawn(
            Command::new(binary("berth-agent")),
            node,
            config,
            log_root,
            state,
            log,
        )
    }

    /// [`AgentProcess::start`], with the node's containerd socket where containerd's is on a
    /// node (`/run/containerd/containerd.sock`), as the DaemonSet's hostPath mount of
    /// `/run/containerd` gives it to the agent: the agent's default `faketime.containerd_address`
    /// then reaches the node's containerd. The agent runs in a mount namespace of its own
    /// (`unshare`), so nothing of this is seen outside it.
    pub fn start_with_default_containerd(
        node: &Node,
        config: &Path,
        log_root: &Path,
        state: &Path,
        log: &Path,
    ) -> AgentProcess {
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(DEFAULT_CONTAINERD)
            .arg("berth-test")
            .arg(node.containerd_socket())
            .arg(binary("berth-agent"));
        Self::spawn(cmd, node, config, log_root, state, log)
    }

    fn spawn(
        mut cmd: Command,
        node: &Node,
        config: &Path,
        log_root: &Path,
        state: &Path,
        log: &Path,
    ) -> AgentProcess {
        let out = File::options().create(true).append(true).open(log).unwrap();
        let child = cmd
            .arg("--config")
            .arg(config)
            .arg("--nri-socket")
            .arg(node.nri_socket())
            .arg("--log-root")
            .arg(log_root)
            .arg("--state-dir")
            .arg(state)
            .env("RUST_LOG", "info,berth_nri=debug")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("berth-agent starts");
        AgentProcess {
            child,
            log: log.to_path_buf(),
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the agent logged `n` successful NRI registrations in total (the log file
    /// is appended across restarts of the agent).
    pub fn wait_ready(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let count = self.log_text().matches("nri plugin ready").count();
            if count >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "agent did not register ({count}/{n}); its log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
