//! Test nodes: a private containerd (CRI + NRI) per test, started and removed through
//! `scripts/testbed`, so the Rust suites and the shell tooling share one definition of a node.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::cri::{CriClient, NodeLayout};

/// The test images every node has.
pub const PAUSE_IMAGE: &str = "berth.test/pause:1";
pub const BUSYBOX_IMAGE: &str = "berth.test/busybox:1";
pub const GLIBC_IMAGE: &str = "berth.test/glibc:1";
/// The glibc image whose config sets `LD_PRELOAD` (scripts/lib/images.sh).
pub const PRELOAD_IMAGE: &str = "berth.test/preload:1";
/// musl programs: `/bin/musl-clock` (dynamic, the entry point) and `/bin/musl-clock-static`.
pub const MUSL_IMAGE: &str = "berth.test/musl:1";
/// The clock probe built static with Go (`/clockprobe-go`) and musl (`/clockprobe-musl`),
/// and a static busybox shell (`/bin/sh`, `cat`, `date`, `sleep`, `mv`).
pub const CLOCK_IMAGE: &str = "berth.test/clock:1";

/// The containerd versions a node can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Containerd {
    V2_1,
    V1_7,
}

impl Containerd {
    pub fn as_str(self) -> &'static str {
        match self {
            Containerd::V2_1 => "2.1",
            Containerd::V1_7 => "1.7",
        }
    }

    pub const ALL: [Containerd; 2] = [Containerd::V2_1, Containerd::V1_7];
}

/// How to start a node.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    pub containerd: Containerd,
    /// The CNI conflist (JSON text); the reference bridge + host-local when `None`.
    pub conflist: Option<String>,
    /// Plugin binaries copied into the node's CNI bin dir before the conflist is written.
    pub cni_binaries: Vec<PathBuf>,
    /// Pre-registered NRI plugins: `(file name, content)` written executable into the node's
    /// NRI plugin dir (containerd's `plugin_path`) before containerd starts, which then
    /// starts them itself. The name is `<idx>-<name>`, e.g. `10-berth`. Empty by default.
    pub nri_plugins: Vec<(String, String)>,
    /// TOML appended to containerd's config, right after its NRI table (so bare keys land in
    /// that table), e.g. `plugin_request_timeout = "1s"`. `None` keeps the config unchanged.
    pub nri_config: Option<String>,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            containerd: Containerd::V2_1,
            conflist: None,
            cni_binaries: Vec::new(),
            nri_plugins: Vec::new(),
            nri_config: None,
        }
    }
}

/// The workspace root (where `scripts/` is).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A workspace binary built by `cargo build --workspace --bins` (scripts/test does this
/// before the end-to-end suites). Panics with what to run when it is missing.
pub fn binary(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let path = target.join("debug").join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test does)",
        path.display()
    );
    path
}

/// A CNI plugin (`berth-cni`, `berth-ipam`) as it ships: linked static, built by
/// `scripts/lib/plugins.sh` under `target/<triple>/debug`, the triple being musl's when Rust's
/// musl target is installed and the host's otherwise (scripts/test builds them and exports
/// `BERTH_PLUGIN_DIR`). Panics with what to run when it is missing.
pub fn plugin_binary(name: &str) -> PathBuf {
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let host = env!("BERTH_TARGET_TRIPLE");
    let musl = format!(
        "{}-unknown-linux-musl",
        host.split('-').next().unwrap_or("x86_64")
    );
    let candidates: Vec<PathBuf> = match std::env::var_os("BERTH_PLUGIN_DIR") {
        Some(dir) => vec![PathBuf::from(dir).join(name)],
        None => [musl.as_str(), host]
            .iter()
            .map(|triple| target_dir.join(triple).join("debug").join(name))
            .collect(),
    };
    match candidates.iter().find(|p| p.is_file()) {
        Some(path) => path.clone(),
        None => panic!(
            "{} is missing: run `bash -c 'source scripts/lib/common.sh; source scripts/lib/plugins.sh; build_plugins dev'` first (scripts/test does)",
            candidates[0].display()
        ),
    }
}

/// Fails the test (never skips it) unless it runs as root.
pub fn require_root() {
    assert!(
        rustix_is_root(),
        "this test needs root (network namespaces, mounts, containerd): run it through scripts/test as root"
    );
}

fn rustix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn testbed_script() -> PathBuf {
    workspace_root().join("scripts/testbed")
}

fn run_testbed(args: &[&str]) -> Result<()> {
    let output = Command::new(testbed_script())
        .args(args)
        .output()
        .with_context(|| format!("running scripts/testbed {args:?}"))?;
    if !output.status.success() {
        bail!(
            "scripts/testbed {} failed ({}):\n{}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Reads a `KEY=VALUE` file written by the test bed.
pub fn read_env_file(path: &Path) -> Result<HashMap<String, String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

/// The shared test bed's etcd, brought up by `scripts/testbed up`: it serves clients over TLS
/// and requires client certificates (`--client-cert-auth`), with certificates the test bed made.
#[derive(Clone, Debug)]
pub struct TestbedEtcd {
    pub endpoints: Vec<String>,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestbedEtcd {
    /// The IPAM config's `store.tls` for this etcd.
    pub fn tls_json(&self) -> serde_json::Value {
        serde_json::json!({"ca": self.ca, "cert": self.cert, "key": self.key})
    }

    /// The IPAM config's `store` for this etcd.
    pub fn store_json(&self, prefix: &str, timeout: &str) -> serde_json::Value {
        serde_json::json!({"type": "etcd", "endpoints": self.endpoints, "prefix": prefix,
                           "timeout": timeout, "tls": self.tls_json()})
    }

    /// `etcdctl` (v3 API) pointed at this etcd with the client certificate.
    pub fn etcdctl(&self) -> Command {
        let mut c = Command::new("etcdctl");
        c.env("ETCDCTL_API", "3").args([
            format!("--endpoints={}", self.endpoints.join(",")),
            format!("--cacert={}", self.ca.display()),
            format!("--cert={}", self.cert.display()),
            format!("--key={}", self.key.display()),
        ]);
        c
    }
}

/// The test bed's etcd.
pub fn etcd() -> TestbedEtcd {
    let env = read_env_file(&workspace_root().join(".run/testbed/env"))
        .expect("the test bed is not up: run scripts/testbed up (scripts/test does)");
    let get = |k: &str| {
        env.get(k).cloned().unwrap_or_else(|| {
            panic!("{k} is missing from .run/testbed/env: the test bed is older than this test; run scripts/testbed down && scripts/testbed up")
        })
    };
    TestbedEtcd {
        endpoints: get("BERTH_ETCD_ENDPOINTS")
            .split(',')
            .map(str::to_string)
            .collect(),
        ca: get("BERTH_ETCD_CA").into(),
        cert: get("BERTH_ETCD_CERT").into(),
        key: get("BERTH_ETCD_KEY").into(),
    }
}

/// One running test node; taken down (pods over CRI, then everything it made) on drop.
pub struct Node {
    pub name: String,
    pub containerd: Containerd,
    env: HashMap<String, String>,
    keep: bool,
}

impl Node {
    /// Starts a node named `name` (unique per test: nodes of parallel tests coexist).
    pub fn start(name: &str, options: NodeOptions) -> Result<Node> {
        require_root();
        let dir = workspace_root().join(".run/testbed/nodes").join(name);
        // A leftover from an aborted run would carry stale pods: start clean.
        if dir.exists() {
            run_testbed(&["node-down", name])?;
        }
        let mut args = vec!["node-up", name, "--containerd", options.containerd.as_str()];
        let conflist_file;
        if let Some(conflist) = &options.conflist {
            let staging = workspace_root().join(".run/testbed/staging");
            std::fs::create_dir_all(&staging)?;
            conflist_file = staging.join(format!("{name}.conflist"));
            std::fs::write(&conflist_file, conflist)?;
            args.push("--conflist");
            args.push(conflist_file.to_str().expect("utf-8 path"));
        }
        // Binaries first: containerd may read the conflist the moment it appears.
        if !options.cni_binaries.is_empty() {
            for dir_name in ["cni-bin", "cni-bin-1.7"] {
                let bin_dir = dir.join(dir_name);
                std::fs::create_dir_all(&bin_dir)?;
                for binary in &options.cni_binaries {
                    let file_name = binary.file_name().expect("binary has a file name");
                    let target = bin_dir.join(file_name);
                    let staging = bin_dir.join(format!(".{}.tmp", file_name.to_string_lossy()));
                    std::fs::copy(binary, &staging)
                        .with_context(|| format!("copying {}", binary.display()))?;
                    std::fs::rename(&staging, &target)?;
                }
            }
        }
        let nri_config_file;
        if let Some(extra) = &options.nri_config {
            let staging = workspace_root().join(".run/testbed/staging");
            std::fs::create_dir_all(&staging)?;
            nri_config_file = staging.join(format!("{name}.nri.toml"));
            std::fs::write(&nri_config_file, extra)?;
            args.push("--nri-config");
            args.push(nri_config_file.to_str().expect("utf-8 path"));
        }
        if !options.nri_plugins.is_empty() {
            use std::os::unix::fs::PermissionsExt;
            let plugin_dir = dir.join("nri-plugins");
            std::fs::create_dir_all(&plugin_dir)?;
            for (file_name, content) in &options.nri_plugins {
                let staging = plugin_dir.join(format!(".{file_name}.tmp"));
                std::fs::write(&staging, content)?;
                std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o755))?;
                std::fs::rename(&staging, plugin_dir.join(file_name))?;
            }
        }
        run_testbed(&args)?;
        let env = read_env_file(&dir.join("env"))?;
        Ok(Node {
            name: name.to_string(),
            containerd: options.containerd,
            env,
            keep: std::env::var_os("BERTH_KEEP_NODES").is_some(),
        })
    }

    pub fn env(&self, key: &str) -> &str {
        self.env
            .get(key)
            .unwrap_or_else(|| panic!("node env has no {key}"))
    }

    pub fn dir(&self) -> PathBuf {
        PathBuf::from(self.env("BERTH_NODE_DIR"))
    }

    pub fn containerd_socket(&self) -> PathBuf {
        PathBuf::from(self.env("BERTH_CONTAINERD_SOCKET"))
    }

    pub fn nri_socket(&self) -> PathBuf {
        PathBuf::from(self.env("BERTH_NRI_SOCKET"))
    }

    pub fn cni_conf_dir(&self) -> PathBuf {
        PathBuf::from(self.env("BERTH_CNI_CONF_DIR"))
    }

    pub fn cni_bin_dir(&self) -> PathBuf {
        PathBuf::from(self.env("BERTH_CNI_BIN_DIR"))
    }

    pub fn layout(&self) -> NodeLayout {
        NodeLayout {
            pod_log_root: PathBuf::from(self.env("BERTH_POD_LOG_ROOT")),
            cgroup_parent: self.env("BERTH_CGROUP_PARENT").to_string(),
        }
    }

    /// A CRI client, once the node is ready (runtime, network, test images).
    pub async fn cri(&self) -> Result<CriClient> {
        let mut client = CriClient::connect(&self.containerd_socket(), self.layout()).await?;
        client
            .wait_ready(
                &[
                    PAUSE_IMAGE,
                    BUSYBOX_IMAGE,
                    GLIBC_IMAGE,
                    PRELOAD_IMAGE,
                    MUSL_IMAGE,
                ],
                Duration::from_secs(30),
            )
            .await
            .with_context(|| {
                format!(
                    "node {} (containerd {})",
                    self.name,
                    self.containerd.as_str()
                )
            })?;
        Ok(client)
    }

    /// The pid of this node's containerd.
    pub fn containerd_pid(&self) -> Result<i32> {
        let text = std::fs::read_to_string(self.dir().join("containerd.pid"))?;
        Ok(text.trim().parse()?)
    }

    /// `kill -9` of this node's containerd (its shims and pods live on).
    pub fn kill_containerd(&self) -> Result<()> {
        let pid = self.containerd_pid()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))?;
        assert!(
            String::from_utf8_lossy(&cmdline).contains(&*self.dir().to_string_lossy()),
            "pid {pid} is not this node's containerd"
        );
        // SAFETY: kill(2) with a pid we just verified belongs to our containerd.
        let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
        assert_eq!(rc, 0, "kill -9 {pid} failed");
        for _ in 0..100 {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("containerd {pid} still runs after kill -9")
    }

    /// Restarts containerd with the same config (it adopts running pods).
    pub fn restart_containerd(&mut self) -> Result<()> {
        run_testbed(&["node-restart", &self.name])?;
        self.env = read_env_file(&self.dir().join("env"))?;
        Ok(())
    }

    /// Replaces the node's CNI conflist atomically; containerd reloads it.
    pub fn set_conflist(&self, conflist: &str) -> Result<()> {
        let tmp = self.cni_conf_dir().join(".10-net.conflist.tmp");
        std::fs::write(&tmp, conflist)?;
        std::fs::rename(&tmp, self.cni_conf_dir().join("10-net.conflist"))?;
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("BERTH_KEEP_NODES set: leaving node {} up", self.name);
            return;
        }
        if let Err(e) = run_testbed(&["node-down", &self.name]) {
            eprintln!("taking node {} down failed: {e:#}", self.name);
        }
    }
}
