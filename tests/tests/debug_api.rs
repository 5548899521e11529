//! Debug containers through the agent's API, end to end: berth-agent with `[api]` and
//! `[debug]` on a test-bed node, `berthctl debug|exec|cp|sessions|grants` as the callers
//! (alice and bob over mTLS, root over the unix socket), a CRI pod as the target, and `ctr -n
//! berth-debug` as an independent view of what runs.
//!
//! Covered: the tools container sees the target's network, processes and (with sysadmin)
//! files; non-root by default; root only with a temporary grant that can be revoked; an
//! unauthorized caller is denied and nothing starts; the deny-list refuses `rm -rf /` over
//! Exec and the refusal is audited; an interactive session on a pseudo-terminal prompts,
//! resizes, runs a command, exits with its status, restores the terminal, and its command
//! lines are audited; a client that goes away loses its session after the grace period
//! (and may re-attach before); a killed agent's leftovers are reaped at its next start; a
//! deleted target pod ends the session; `cp` through a symlink to /etc/shadow never reads
//! the host's file.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_e2e::agent::AgentProcess;
use berth_e2e::testbed::{Node, NodeOptions, binary};
use berth_e2e::{BUSYBOX_IMAGE, ContainerSpec, CriClient, Pod, PodSpec};

/// How long a berthctl call may take (the first session imports and unpacks the image).
const CALL: Duration = Duration::from_secs(60);
/// The agent's `detach_grace`.
const GRACE: Duration = Duration::from_secs(3);

const POLICY: &str = r#"
[roles.admin]
methods = ["*"]
namespaces = ["*"]
debug_profiles = ["netadmin", "sysadmin"]

[roles.shop-debug]
methods = ["berth.v1.Debug/*"]
namespaces = ["shop"]

# No binding: only ever held through a temporary grant.
[roles.shop-root]
methods = ["berth.v1.Debug/*"]
namespaces = ["shop"]
debug_profiles = ["sysadmin"]

[roles.viewer]
methods = ["berth.v1.Node/*"]

[[bindings]]
role = "admin"
identities = ["unix:uid:0"]
groups = ["ops"]

[[bindings]]
role = "shop-debug"
groups = ["dev"]

[[bindings]]
role = "viewer"
groups = ["guests"]
"#;

/// Who calls: root on the unix socket, or a client certificate over mTLS.
#[derive(Clone, Copy)]
enum Who {
    Root,
    Alice,
    Bob,
    Carol,
}

struct Bed {
    node: Node,
    cri: CriClient,
    pod: Pod,
    target: String,
    agent: Option<AgentProcess>,
    work: PathBuf,
    config: PathBuf,
    port: u16,
}

impl Bed {
    async fn new(name: &str) -> Bed {
        let node = Node::start(name, NodeOptions::default()).expect("test node starts");
        let work = node.dir().join("agent");
        let certs = work.join("certs");
        std::fs::create_dir_all(&certs).unwrap();
        let init = run_ctl(
            &[
                "certs",
                "init",
                "--dir",
                certs.to_str().unwrap(),
                "--client",
                "alice:ops",
                "--client",
                "bob:dev",
                "--client",
                "carol:guests",
            ],
            CALL,
        );
        ok(&init);
        let policy = work.join("policy.toml");
        std::fs::write(&policy, POLICY).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = work.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[api]
listen = "127.0.0.1:{port}"
unix_socket = {socket:?}
policy = {policy:?}

[api.audit]
path = {audit:?}

[api.tls]
cert = {server:?}
key = {server_key:?}
client_ca = {ca:?}

[debug]
containerd_socket = {containerd:?}
state_dir = {state:?}
runc_binary = "/usr/sbin/runc"
runc_root = {runc_root:?}
cgroup_parent = "{cgroup}/berth-debug"
detach_grace = {grace}
"#,
                socket = work.join("api.sock"),
                audit = work.join("audit.jsonl"),
                server = certs.join("server.pem"),
                server_key = certs.join("server-key.pem"),
                ca = certs.join("ca.pem"),
                containerd = node.containerd_socket(),
                state = node.dir().join("debug-state"),
                runc_root = node.dir().join("runc"),
                cgroup = node.env("BERTH_CGROUP_PARENT"),
                grace = GRACE.as_secs(),
            ),
        )
        .unwrap();

        let mut cri = node.cri().await.expect("CRI ready");
        let pod = cri.run_pod(&PodSpec::new("shop", "web-0")).await.unwrap();
        let target = cri
            .run_container(&pod, &ContainerSpec::sleeper("app", BUSYBOX_IMAGE))
            .await
            .unwrap();
        let mut bed = Bed {
            node,
            cri,
            pod,
            target,
            agent: None,
            work,
            config,
            port,
        };
        bed.start_agent(1);
        bed
    }

    /// Starts the agent (the `n`th time) and waits until it answers on its socket.
    fn start_agent(&mut self, n: usize) {
        let agent = AgentProcess::start(
            &self.node,
            &self.config,
            &self.work.join("filelogs"),
            &self.work.join("state"),
            &self.work.join("agent.log"),
        );
        agent.wait_ready(n);
        self.agent = Some(agent);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.ctl(Who::Root, &["node", "info"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "the agent does not answer on its socket; its log:\n{}",
                self.agent_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.work.join("agent.log")).unwrap_or_default()
    }

    /// The audit log once it has settled: session events and the final lines of streams are
    /// appended a moment after the client saw the result, so read until two reads 200 ms
    /// apart agree.
    fn audit(&self) -> Vec<serde_json::Value> {
        let read = || -> Vec<serde_json::Value> {
            std::fs::read_to_string(self.work.join("audit.jsonl"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()
        };
        let mut last = read();
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let now = read();
            if now.len() == last.len() {
                return now;
            }
            last = now;
        }
    }

    /// The `detail` objects of the audit log's debug events.
    fn debug_events(&self) -> Vec<serde_json::Value> {
        self.audit()
            .into_iter()
            .filter(|r| r["event"] == "debug")
            .map(|r| r["detail"].clone())
            .collect()
    }

    fn conn(&self, who: Who) -> Vec<String> {
        let name = match who {
            Who::Root => {
                return vec![
                    "--endpoint".into(),
                    format!("unix://{}", self.work.join("api.sock").display()),
                ];
            }
            Who::Alice => "alice",
            Who::Bob => "bob",
            Who::Carol => "carol",
        };
        let certs = self.work.join("certs");
        let file = |f: String| certs.join(f).display().to_string();
        vec![
            "--endpoint".into(),
            format!("https://127.0.0.1:{}", self.port),
            "--cert".into(),
            file(format!("{name}.pem")),
            "--key".into(),
            file(format!("{name}-key.pem")),
            "--ca".into(),
            file("ca.pem".into()),
        ]
    }

    fn command(&self, who: Who, args: &[&str]) -> Command {
        let mut c = Command::new(binary("berthctl"));
        c.args(self.conn(who))
            .args(args)
            .env_remove("BERTH_ENDPOINT")
            .env_remove("BERTH_CONTEXT")
            .env("HOME", "/nonexistent");
        c
    }

    /// berthctl as `who`, stdin closed, bounded by [`CALL`].
    fn ctl(&self, who: Who, args: &[&str]) -> Output {
        let mut c = self.command(who, args);
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        wait_output(c.spawn().expect("berthctl runs"), CALL, args)
    }

    /// stdout of a berthctl call that must succeed.
    fn ctl_ok(&self, who: Who, args: &[&str]) -> String {
        let out = self.ctl(who, args);
        assert!(
            out.status.success(),
            "berthctl {args:?} failed ({}): {}{}\nagent log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.agent_log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ctr -n berth-debug containers ls -q`: what containerd really runs for debugging.
    fn tools_containers(&self) -> Vec<String> {
        let out = Command::new(self.node.env("BERTH_CTR"))
            .arg("-a")
            .arg(self.node.containerd_socket())
            .args(["-n", "berth-debug", "containers", "ls", "-q"])
            .output()
            .expect("ctr runs");
        assert!(out.status.success(), "ctr: {out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Waits until `ctr` lists exactly `n` tools containers; returns how long it took.
    fn wait_tools(&self, n: usize, within: Duration) -> Duration {
        let t0 = Instant::now();
        loop {
            let now = self.tools_containers();
            if now.len() == n {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < within,
                "expected {n} tools containers within {within:?}, have {now:?}; agent log:\n{}",
                self.agent_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    async fn target_exec(&mut self, cmd: &[&str]) -> String {
        self.cri
            .exec(&self.target, cmd, Duration::from_secs(10))
            .await
            .unwrap()
            .ok()
            .unwrap_or_else(|e| panic!("{cmd:?} in the target: {e:#}"))
    }
}

impl Drop for Bed {
    /// Whatever a failing test left in berth-debug goes before the node does.
    fn drop(&mut self) {
        self.agent.take();
        let ctr = |args: &[&str]| {
            let _ = Command::new(self.node.env("BERTH_CTR"))
                .arg("-a")
                .arg(self.node.containerd_socket())
                .args(["-n", "berth-debug"])
                .args(args)
                .output();
        };
        if let Ok(left) =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.tools_containers()))
        {
            for id in left {
                ctr(&["tasks", "kill", "-s", "SIGKILL", &id]);
                std::thread::sleep(Duration::from_millis(200));
                ctr(&["tasks", "rm", "-f", &id]);
                ctr(&["containers", "rm", &id]);
            }
        }
    }
}

fn run_ctl(args: &[&str], limit: Duration) -> Output {
    let child = Command::new(binary("berthctl"))
        .args(args)
        .env_remove("BERTH_ENDPOINT")
        .env("HOME", "/nonexistent")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("berthctl runs");
    wait_output(child, limit, args)
}

/// Waits for a child with piped stdout/stderr, killing it (and failing) after `limit`.
fn wait_output(mut child: Child, limit: Duration, what: &[&str]) -> Output {
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stdout.read_to_end(&mut b);
        b
    });
    let err_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stderr.read_to_end(&mut b);
        b
    });
    let status = wait_status(&mut child, limit)
        .unwrap_or_else(|| panic!("berthctl {what:?} did not finish within {limit:?}"));
    Output {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

/// The child's status, or None (and the child killed) after `limit`.
fn wait_status(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "berthctl failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn assert_denied(out: &Output, what: &str) {
    let said = text(out);
    assert!(!out.status.success(), "{what} must be refused: {said}");
    assert!(
        said.to_lowercase().contains("permission denied") || said.contains("PERMISSION_DENIED"),
        "{what}: the refusal should say PERMISSION_DENIED: {said}"
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "{what}: berthctl exits 3 on PERMISSION_DENIED: {said}"
    );
}

/// A berthctl process that keeps running (a session), with its output collected.
struct Running {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Running {
    fn spawn(bed: &Bed, who: Who, args: &[&str]) -> Running {
        let mut c = bed.command(who, args);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("berthctl runs");
        let collect = |mut r: Box<dyn Read + Send>| {
            let buf = Arc::new(Mutex::new(Vec::new()));
            let b = buf.clone();
            std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = r.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    b.lock().unwrap().extend_from_slice(&chunk[..n]);
                }
            });
            buf
        };
        let stdout = collect(Box::new(child.stdout.take().unwrap()));
        let stderr = collect(Box::new(child.stderr.take().unwrap()));
        Running {
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
        }
    }

    fn said(&self) -> (String, String) {
        (
            String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned(),
            String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned(),
        )
    }

    fn wait_stdout(&self, needle: &str, bed: &Bed) {
        let deadline = Instant::now() + CALL;
        while !self.said().0.contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} from berthctl: {:?}; agent log:\n{}",
                self.said(),
                bed.agent_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The session id berthctl printed on stderr at start.
    fn session_id(&self, bed: &Bed) -> String {
        let deadline = Instant::now() + CALL;
        loop {
            let err = self.said().1;
            if let Some(rest) = err.split("debug session ").nth(1)
                && let Some(id) = rest.split_whitespace().next()
            {
                return id.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "berthctl printed no session id: {:?}; agent log:\n{}",
                self.said(),
                bed.agent_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn write(&mut self, data: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin.write_all(data.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    fn wait(&mut self, limit: Duration) -> ExitStatus {
        wait_status(&mut self.child, limit)
            .unwrap_or_else(|| panic!("berthctl did not end within {limit:?}: {:?}", self.said()))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
#[ignore = "needs root and the test bed: run by scripts/test"]
async fn debug_sessions_see_the_target_and_root_needs_a_temporary_grant() {
    let mut bed = Bed::new("dapi-join").await;
    let pod_ip = bed.cri.pod_ip(&bed.pod.id).await.unwrap().to_string();
    bed.target_exec(&[
        "sh",
        "-c",
        "echo target-secret > /etc/marker && chmod 600 /etc/marker && \
         echo container-shadow > /etc/shadow && ln -s /etc/shadow /tmp/evil && \
         ln -s ../../../../../../etc/shadow /tmp/evil-rel",
    ])
    .await;
    let pod = "shop/web-0";

    // The network: the pod's IP, through Attach without a terminal.
    let ip = bed.ctl_ok(
        Who::Bob,
        &["debug", pod, "--", "ip", "-4", "-o", "addr", "show", "eth0"],
    );
    assert!(ip.contains(&pod_ip), "ip addr shows {ip:?}, not {pod_ip}");
    // Exit statuses come through Attach and Exec.
    let out = bed.ctl(Who::Bob, &["debug", pod, "--", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    let out = bed.ctl(
        Who::Bob,
        &[
            "exec",
            pod,
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 5",
        ],
    );
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("err\n"));
    // Stdin is piped in when it is not a terminal.
    let mut cat = Running::spawn(&bed, Who::Bob, &["debug", pod, "--", "cat"]);
    cat.write("piped through\n");
    cat.stdin.take(); // EOF → close_stdin → cat ends
    assert_eq!(cat.wait(CALL).code(), Some(0), "{:?}", cat.said());
    assert_eq!(cat.said().0, "piped through\n");

    // The processes: PID 1 is the target's.
    let ps = bed.ctl_ok(Who::Bob, &["exec", pod, "--", "ps", "-o", "pid,args"]);
    let pid1 = ps
        .lines()
        .find(|l| l.trim_start().starts_with("1 "))
        .unwrap_or("");
    assert!(
        pid1.contains("trap 'exit 0'"),
        "PID 1 is not the target: {ps}"
    );
    // Not root by default, and the root target's files are out of reach.
    let uid = bed.ctl_ok(Who::Bob, &["exec", pod, "--", "id", "-u"]);
    assert_ne!(uid.trim(), "0", "the default profile must not be root");
    assert_eq!(uid.trim(), "65534");
    let out = bed.ctl(
        Who::Bob,
        &["exec", pod, "--", "cat", "/proc/1/root/etc/marker"],
    );
    assert!(!out.status.success(), "general read the target's file");

    // root (sysadmin) is refused to bob, and nothing starts.
    bed.wait_tools(0, Duration::from_secs(20));
    let out = bed.ctl(
        Who::Bob,
        &["exec", pod, "--profile", "sysadmin", "--", "id", "-u"],
    );
    assert_denied(&out, "sysadmin for bob without a grant");
    assert!(bed.tools_containers().is_empty());

    // Nobody grants themselves a role.
    let out = bed.ctl(
        Who::Alice,
        &[
            "grants",
            "grant",
            "cn:alice",
            "shop-root",
            "--for",
            "10m",
            "--reason",
            "self",
        ],
    );
    assert!(!out.status.success(), "a self-grant must be refused");
    // alice grants bob shop-root for ten minutes.
    let granted = bed.ctl_ok(
        Who::Alice,
        &[
            "-o",
            "json",
            "grants",
            "grant",
            "cn:bob",
            "shop-root",
            "--for",
            "10m",
            "--reason",
            "INC-42",
        ],
    );
    let granted: serde_json::Value = serde_json::from_str(&granted).unwrap();
    let grant_id = granted[0]["id"].as_str().expect("a grant id").to_string();
    assert_eq!(granted[0]["granted_by"], "cn:alice", "{granted}");
    let listed = bed.ctl_ok(Who::Alice, &["grants", "ls", "--identity", "cn:bob"]);
    assert!(
        listed.contains(&grant_id) && listed.contains("INC-42"),
        "{listed}"
    );
    let uid = bed.ctl_ok(
        Who::Bob,
        &["exec", pod, "--profile", "sysadmin", "--", "id", "-u"],
    );
    assert_eq!(uid.trim(), "0");
    let marker = bed.ctl_ok(
        Who::Bob,
        &[
            "exec",
            pod,
            "--profile",
            "sysadmin",
            "--",
            "cat",
            "/proc/1/root/etc/marker",
        ],
    );
    assert_eq!(marker.trim(), "target-secret");
    bed.ctl_ok(Who::Alice, &["grants", "revoke", &grant_id]);
    let out = bed.ctl(
        Who::Bob,
        &["exec", pod, "--profile", "sysadmin", "--", "id", "-u"],
    );
    assert_denied(&out, "sysadmin for bob after the revoke");

    // carol may read node info, not debug: denied, audited, and nothing starts.
    bed.wait_tools(0, Duration::from_secs(20));
    assert_denied(
        &bed.ctl(Who::Carol, &["exec", pod, "--", "true"]),
        "exec for carol",
    );
    assert_denied(
        &bed.ctl(Who::Carol, &["debug", pod, "--", "true"]),
        "debug for carol",
    );
    assert!(bed.tools_containers().is_empty());
    assert!(
        bed.audit()
            .iter()
            .any(|r| r["identity"] == "cn:carol" && r["decision"] == "deny"),
        "carol's denial is not audited"
    );

    // The deny-list: refused before anything runs, and audited.
    let out = bed.ctl(Who::Bob, &["exec", pod, "--", "rm", "-rf", "/"]);
    assert_denied(&out, "rm -rf /");
    let events = bed.debug_events();
    assert!(
        events.iter().any(|d| d["event"] == "exec"
            && d["argv"][0] == "rm"
            && d["denied_by"].as_str().is_some_and(|r| !r.is_empty())),
        "the refused rm -rf / is not audited: {events:?}"
    );

    // cp out through symlinks to /etc/shadow: the container's file, never the host's.
    let host_shadow = std::fs::read("/etc/shadow").unwrap_or_default();
    let dl = bed.work.join("downloads");
    std::fs::create_dir_all(&dl).unwrap();
    for link in ["/tmp/evil", "/tmp/evil-rel"] {
        let out_file = dl.join(link.trim_start_matches("/tmp/"));
        bed.ctl_ok(
            Who::Bob,
            &["cp", &format!("{pod}:{link}"), out_file.to_str().unwrap()],
        );
        let got = std::fs::read(&out_file).unwrap();
        assert_eq!(got, b"container-shadow\n", "{link}");
        assert_ne!(got, host_shadow);
    }
    let to_stdout = bed.ctl_ok(Who::Bob, &["cp", &format!("{pod}:/tmp/evil"), "-"]);
    assert_eq!(to_stdout, "container-shadow\n");
    // Without the container's file the answer is a refusal, and nothing is written.
    bed.target_exec(&["rm", "/etc/shadow"]).await;
    let gone = dl.join("gone");
    let out = bed.ctl(
        Who::Bob,
        &["cp", &format!("{pod}:/tmp/evil"), gone.to_str().unwrap()],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(!gone.exists());
    assert_eq!(
        std::fs::read_dir(&dl).unwrap().count(),
        2,
        "a temp file was left behind"
    );

    // cp in and back out: content, mode and the sha256 the agent reports.
    let local = dl.join("payload.bin");
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&local, &payload).unwrap();
    std::fs::set_permissions(&local, std::fs::Permissions::from_mode(0o640)).unwrap();
    bed.ctl_ok(
        Who::Bob,
        &[
            "cp",
            local.to_str().unwrap(),
            &format!("{pod}:/tmp/payload.bin"),
        ],
    );
    let stat = bed
        .target_exec(&["stat", "-c", "%a %s", "/tmp/payload.bin"])
        .await;
    assert_eq!(stat.trim(), "640 200000");
    let back = dl.join("back.bin");
    bed.ctl_ok(
        Who::Bob,
        &[
            "cp",
            &format!("{pod}:/tmp/payload.bin"),
            back.to_str().unwrap(),
        ],
    );
    assert_eq!(std::fs::read(&back).unwrap(), payload);
    assert_eq!(
        std::fs::metadata(&back).unwrap().permissions().mode() & 0o777,
        0o640
    );
    let events = bed.debug_events();
    assert!(
        events.iter().any(|d| d["event"] == "file_copy"
            && d["path"] == "/tmp/payload.bin"
            && d["size"] == 200_000
            && d["sha256"].as_str().is_some_and(|s| s.len() == 64)),
        "the copy is not audited with its size and hash: {events:?}"
    );
    // Bad cp arguments fail before any call.
    let out = bed.ctl(Who::Bob, &["cp", &format!("{pod}:etc/hosts"), "x"]);
    assert!(
        !out.status.success() && text(&out).contains("absolute"),
        "{}",
        text(&out)
    );

    // sessions ls shows a live session; sessions kill ends it (and its berthctl).
    let mut live = Running::spawn(&bed, Who::Bob, &["debug", pod, "--", "sleep", "300"]);
    let id = live.session_id(&bed);
    let listed = bed.ctl_ok(Who::Alice, &["-o", "json", "sessions", "ls", "-n", "shop"]);
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let s = listed["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id.as_str())
        .unwrap_or_else(|| panic!("session {id} not listed: {listed}"))
        .clone();
    assert!(s["caller"].as_str().unwrap().contains("bob"), "{s}");
    assert_eq!(s["profile"], "general");
    let table = bed.ctl_ok(Who::Alice, &["sessions", "ls", "-n", "shop"]);
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.contains(&id), "{table}");
    bed.ctl_ok(Who::Alice, &["sessions", "kill", pod, &id]);
    let status = live.wait(Duration::from_secs(20));
    assert!(!status.success(), "{:?}", live.said());
    assert!(live.said().1.contains("terminated"), "{:?}", live.said());
    bed.wait_tools(0, Duration::from_secs(20));
    bed.cri.teardown_all().await.unwrap();
}

/// A pseudo-terminal: the master side for the test, the slave side for berthctl.
struct Pty {
    master: std::fs::File,
    slave: OwnedFd,
}

impl Pty {
    fn open(rows: u16, cols: u16) -> Pty {
        let (mut m, mut s) = (0, 0);
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: out-pointers to live locals; the name buffer and termios are optional.
        let rc =
            unsafe { libc::openpty(&mut m, &mut s, std::ptr::null_mut(), std::ptr::null(), &ws) };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: openpty returned two fresh descriptors we now own.
        let (master, slave) = unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) };
        Pty {
            master: master.into(),
            slave,
        }
    }

    fn resize(&self, rows: u16, cols: u16) {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from a live local.
        let rc = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        assert_eq!(rc, 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
    }

    /// Whether the slave side is in canonical mode with echo (a shell's usual settings).
    fn cooked(&self) -> bool {
        // SAFETY: termios is plain integers, for which all-zero bytes are a valid value.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr fills the termios for a descriptor we own.
        let rc = unsafe { libc::tcgetattr(self.slave.as_raw_fd(), &mut t) };
        assert_eq!(rc, 0);
        t.c_lflag & libc::ICANON != 0 && t.c_lflag & libc::ECHO != 0
    }
}

#[tokio::test]
#[ignore = "needs root and the test bed: run by scripts/test"]
async fn an_interactive_session_on_a_terminal_prompts_resizes_runs_and_exits() {
    let bed = Bed::new("dapi-tty").await;
    // Warm the image import so the measured session is what a user sees on a second try.
    bed.ctl_ok(Who::Bob, &["exec", "shop/web-0", "--", "true"]);

    let pty = Pty::open(30, 100);
    assert!(pty.cooked());
    let stderr_file = bed.work.join("tty-stderr");
    let mut cmd = bed.command(Who::Bob, &["debug", "shop/web-0"]);
    cmd.stdin(Stdio::from(pty.slave.try_clone().unwrap()))
        .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
        .stderr(std::fs::File::create(&stderr_file).unwrap());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            // Its own session with the pty as controlling terminal: the kernel then sends
            // SIGWINCH on resize, as a terminal emulator's does.
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let t0 = Instant::now();
    let mut child = cmd.spawn().expect("berthctl runs");
    let seen = Arc::new(Mutex::new(Vec::<u8>::new()));
    let mut reader = pty.master.try_clone().unwrap();
    let sink = seen.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = reader.read(&mut chunk) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    let stderr = || std::fs::read_to_string(&stderr_file).unwrap_or_default();
    let wait_for = |needle: &str, from: usize| -> usize {
        let deadline = Instant::now() + CALL;
        loop {
            let s = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
            if let Some(at) = s.get(from..).and_then(|rest| rest.find(needle)) {
                return from + at + needle.len();
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} on the terminal: {s:?}; berthctl stderr: {}; agent log:\n{}",
                stderr(),
                bed.agent_log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let mut at = wait_for("$ ", 0);
    let latency = t0.elapsed();
    eprintln!(
        "berthctl debug: first prompt {latency:?} after spawning berthctl (target <= 500 ms)"
    );
    assert!(latency < CALL, "{latency:?}");
    assert!(
        stderr().contains("--attach"),
        "berthctl did not say how to re-attach: {}",
        stderr()
    );
    assert!(
        !pty.cooked(),
        "berthctl did not put the terminal in raw mode"
    );
    let mut master = pty.master.try_clone().unwrap();
    let mut type_in = |s: &[u8]| {
        master.write_all(s).unwrap();
        master.flush().unwrap();
    };
    // The initial size came with the start.
    type_in(b"stty size\r");
    at = wait_for("30 100", at);
    at = wait_for("$ ", at);
    // A resize reaches the remote terminal.
    pty.resize(45, 123);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        type_in(b"stty size\r");
        let next = wait_for("$ ", wait_for("stty size", at));
        let s = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
        if s[at..next].contains("45 123") {
            at = next;
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the resize never arrived: {:?}",
            &s[at..]
        );
        at = next;
    }
    // A command typed with a correction.
    type_in(b"echo hellp\x7fo-$((6*7))\r");
    at = wait_for("hello-42", at);
    let _ = at;
    type_in(b"exit 3\r");
    let status = wait_status(&mut child, CALL).expect("berthctl ends after exit");
    assert_eq!(
        status.code(),
        Some(3),
        "berthctl exits with the shell's status ({status:?}, signal {:?}); stderr: {}",
        status.signal(),
        stderr()
    );
    assert!(pty.cooked(), "berthctl did not restore the terminal");
    bed.wait_tools(0, Duration::from_secs(20));

    // Killed by SIGTERM mid-session: the terminal is restored too (the session detaches).
    let mut cmd = bed.command(Who::Bob, &["debug", "shop/web-0"]);
    cmd.stdin(Stdio::from(pty.slave.try_clone().unwrap()))
        .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
        .stderr(std::fs::File::create(&stderr_file).unwrap());
    let mut child = cmd.spawn().expect("berthctl runs");
    let before = seen.lock().unwrap().len();
    wait_for("$ ", before);
    assert!(!pty.cooked());
    // SAFETY: a plain kill(2) of our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = wait_status(&mut child, CALL).expect("berthctl ends on SIGTERM");
    assert!(!status.success(), "{status:?}");
    assert!(
        pty.cooked(),
        "berthctl did not restore the terminal on SIGTERM"
    );
    assert!(stderr().contains("detached"), "{}", stderr());
    bed.wait_tools(0, GRACE + Duration::from_secs(15));

    let lines: Vec<String> = bed
        .debug_events()
        .into_iter()
        .filter(|d| d["event"] == "command_line")
        .filter_map(|d| d["line"].as_str().map(str::to_string))
        .collect();
    for want in ["stty size", "echo hello-$((6*7))", "exit 3"] {
        assert!(
            lines.iter().any(|l| l == want),
            "{want:?} is not in the audited command lines {lines:?}"
        );
    }
    let methods: Vec<String> = bed
        .audit()
        .iter()
        .filter(|r| r["event"] == "debug")
        .filter_map(|r| r["method"].as_str().map(str::to_string))
        .collect();
    assert!(
        methods.iter().any(|m| m.contains("Debug/Attach")),
        "{methods:?}"
    );
}

#[tokio::test]
#[ignore = "needs root and the test bed: run by scripts/test"]
async fn sessions_end_with_their_client_their_agent_and_their_target() {
    let mut bed = Bed::new("dapi-life").await;
    let pod = "shop/web-0";

    // A client that goes away: the session waits the grace period for a re-attach...
    let mut first = Running::spawn(&bed, Who::Bob, &["debug", pod, "--", "sh"]);
    let id = first.session_id(&bed);
    first.write("echo first-$((1+1))\n");
    first.wait_stdout("first-2", &bed);
    bed.wait_tools(1, Duration::from_secs(5));
    drop(first); // SIGKILL: no exit, no goodbye
    let mut again = Running::spawn(&bed, Who::Bob, &["debug", pod, "--attach", &id]);
    again.write("echo again-$((2+2))\n");
    again.wait_stdout("again-4", &bed);
    // ...and without one, it is removed after the grace period.
    let gone_at = Instant::now();
    drop(again);
    let took = bed.wait_tools(0, GRACE + Duration::from_secs(15));
    eprintln!(
        "debug session removed {:?} after its client was killed (grace {GRACE:?})",
        gone_at.elapsed().max(took)
    );
    let events = bed.debug_events();
    assert!(
        events.iter().any(|d| d["event"] == "session_ended"
            && d["session"] == id.as_str()
            && d["reason"].as_str().is_some_and(|r| r.contains("grace"))),
        "the grace-period end is not audited: {events:?}"
    );

    // An agent killed mid-session leaves its tools container; the next agent reaps it.
    let mut orphan = Running::spawn(&bed, Who::Bob, &["debug", pod, "--", "sleep", "300"]);
    orphan.session_id(&bed);
    bed.wait_tools(1, Duration::from_secs(5));
    bed.agent.as_mut().unwrap().kill();
    let status = orphan.wait(Duration::from_secs(20));
    assert!(!status.success(), "berthctl must fail when the agent dies");
    assert_eq!(
        bed.tools_containers().len(),
        1,
        "the killed agent's container should still be there for the next start to reap"
    );
    bed.start_agent(2);
    bed.wait_tools(0, Duration::from_secs(20));

    // The target pod deleted: the session ends cleanly, berthctl says why.
    let mut watcher = Running::spawn(&bed, Who::Bob, &["debug", pod, "--", "sleep", "300"]);
    watcher.session_id(&bed);
    bed.wait_tools(1, Duration::from_secs(5));
    let target = bed.target.clone();
    let pod_id = bed.pod.id.clone();
    bed.cri.stop_container(&target, 2).await.unwrap();
    bed.cri.remove_container(&target).await.unwrap();
    bed.cri.stop_pod(&pod_id).await.unwrap();
    bed.cri.remove_pod(&pod_id).await.unwrap();
    let status = watcher.wait(Duration::from_secs(20));
    assert!(!status.success(), "{:?}", watcher.said());
    assert!(
        watcher.said().1.contains("target exited"),
        "berthctl should say the target exited: {:?}",
        watcher.said()
    );
    bed.wait_tools(0, Duration::from_secs(20));
}
