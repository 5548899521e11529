//! The plain-node install of docs/operations.md, as far as a machine whose PID 1 is not
//! systemd allows: `systemd-analyze verify` accepts the shipped unit as installed, and the
//! unit's own `ExecStart`, expanded the way systemd expands it with the shipped environment
//! file and the shipped example config, runs an agent that registers with a test-bed
//! containerd and gives a container its file-log mount.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_e2e::testbed::{Node, NodeOptions, binary, workspace_root};
use berth_e2e::{BUSYBOX_IMAGE, ContainerSpec, PodSpec};

fn unit_text() -> String {
    std::fs::read_to_string(workspace_root().join("systemd/berth-agent.service")).unwrap()
}

/// `Key=Value` lines of one `[Section]` of a unit file (later keys win, as in systemd for
/// single-valued keys).
fn section(unit: &str, name: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut inside = false;
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line == format!("[{name}]");
        } else if inside
            && !line.starts_with('#')
            && let Some((k, v)) = line.split_once('=')
        {
            out.insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    out
}

/// An EnvironmentFile: `KEY=value` lines, comments and blank lines ignored.
fn env_file(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// systemd's ExecStart expansion: `${VAR}` is one word, `$VAR` splits on whitespace.
fn expand(exec: &str, env: &BTreeMap<String, String>) -> Vec<String> {
    let mut argv = Vec::new();
    for word in exec.split_whitespace() {
        if let Some(name) = word.strip_prefix("${").and_then(|w| w.strip_suffix('}')) {
            argv.push(env.get(name).cloned().unwrap_or_default());
        } else if let Some(name) = word.strip_prefix('$') {
            argv.extend(
                env.get(name)
                    .map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
                    .unwrap_or_default(),
            );
        } else {
            argv.push(word.to_string());
        }
    }
    argv
}

#[test]
fn execstart_expansion_follows_systemd() {
    let env = env_file("# c\nA=/etc/x.toml\nB=--one 1  --two\n\nC=\n");
    assert_eq!(
        expand("/bin/p --config ${A} $B $C ${C}", &env),
        [
            "/bin/p",
            "--config",
            "/etc/x.toml",
            "--one",
            "1",
            "--two",
            ""
        ]
    );
    let unit = unit_text();
    let service = section(&unit, "Service");
    assert_eq!(service["EnvironmentFile"], "-/etc/default/berth-agent");
    assert!(service["ExecStart"].starts_with("/usr/local/bin/berth-agent "));
    assert!(
        section(&unit, "Unit")["After"].contains("containerd.service"),
        "the agent starts after containerd"
    );
}

#[test]
#[ignore = "needs root and the test bed: run by scripts/test"]
fn systemd_analyze_verifies_the_unit_as_installed() {
    let dir = tempfile::tempdir().unwrap();
    // As installed, except that the binary is this build's.
    let unit = unit_text().replace(
        "/usr/local/bin/berth-agent",
        binary("berth-agent").to_str().unwrap(),
    );
    let path = dir.path().join("berth-agent.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze runs (Debian package systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "verify failed: {stderr}");
    assert!(
        !stderr.contains("Unknown") && !stderr.contains("not executable"),
        "verify warned: {stderr}"
    );
    // The check has teeth: a typo is reported.
    let broken = dir.path().join("broken.service");
    std::fs::write(
        &broken,
        unit_text().replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&broken)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Unknown key"),
        "{out:?}"
    );
}

fn wait_for(what: &str, log: &Path, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen; agent log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills the agent on drop, even when an assertion fails.
struct Service(std::process::Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and the test bed: run by scripts/test"]
async fn the_units_execstart_with_the_shipped_env_and_config_runs_the_agent() {
    let node = Node::start("systemd-unit", NodeOptions::default()).unwrap();
    let root = workspace_root();
    let etc: PathBuf = node.dir().join("etc");
    let var: PathBuf = node.dir().join("var");
    std::fs::create_dir_all(etc.join("berth")).unwrap();
    std::fs::create_dir_all(&var).unwrap();

    // docs/operations.md: install the example config (every key at its default) and the
    // environment file, then point the flags at this node, as the env file's comment shows.
    let config = etc.join("berth/agent.toml");
    std::fs::copy(root.join("agents/agent/berth-agent.example.toml"), &config).unwrap();
    let check = Command::new(binary("berth-agent"))
        .args(["--config", config.to_str().unwrap(), "--check-config"])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "--check-config refuses the shipped example: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let shipped = std::fs::read_to_string(root.join("systemd/berth-agent.env")).unwrap();
    assert!(shipped.contains("BERTH_AGENT_CONFIG=/etc/berth/agent.toml"));
    let log_root = var.join("log/berth");
    let state = var.join("lib/berth");
    let env_text = shipped
        .replace(
            "BERTH_AGENT_CONFIG=/etc/berth/agent.toml",
            &format!("BERTH_AGENT_CONFIG={}", config.display()),
        )
        .replace(
            "BERTH_AGENT_ARGS=\n",
            &format!(
                "BERTH_AGENT_ARGS=--nri-socket {} --log-root {} --state-dir {}\n",
                node.nri_socket().display(),
                log_root.display(),
                state.display()
            ),
        );
    let env = env_file(&env_text);
    let service = section(&unit_text(), "Service");
    let mut argv = expand(&service["ExecStart"], &env);
    assert_eq!(argv[0], "/usr/local/bin/berth-agent");
    argv[0] = binary("berth-agent").display().to_string();

    let log = node.dir().join("systemd-agent.log");
    let child = Command::new(&argv[0])
        .args(&argv[1..])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(&env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _agent = Service(child);
    wait_for("NRI registration", &log, || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("nri plugin ready")
    });

    let mut cri = node.cri().await.unwrap();
    let pod = cri.run_pod(&PodSpec::new("shop", "unit-0")).await.unwrap();
    let mut spec =
        ContainerSpec::sleeper("app", BUSYBOX_IMAGE).env("KUBERNETES_FILELOGS", "/app/logs");
    spec.args = vec![
        "trap 'exit 0' TERM; echo started > /app/logs/app.log; while :; do sleep 1 & wait $!; done"
            .into(),
    ];
    cri.run_container(&pod, &spec).await.unwrap();
    let host_file = log_root.join("shop/unit-0/app/app.log");
    wait_for("the container's log file on the host", &log, || {
        host_file.exists()
    });
    assert_eq!(
        std::fs::read_to_string(&host_file).unwrap().trim(),
        "started"
    );
    cri.teardown_all().await.unwrap();
}
