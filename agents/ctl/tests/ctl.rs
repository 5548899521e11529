//! berthctl against a real in-process API server: the built binary is spawned the way a
//! user runs it, with certificates made by its own `certs init`.

use std::process::Output;

use std::sync::Mutex;

use berth_api::{
    ApiConfig, AuditConfig, BackendError, DirLayout, IpamBackend, RunningServer, Server, TlsConfig,
};
use berth_proto::v1;

const POLICY: &str = r#"
[roles.admin]
methods = ["*"]
namespaces = ["*"]

[roles.viewer]
methods = ["berth.v1.Node/Info"]

[[bindings]]
role = "admin"
groups = ["ops"]

[[bindings]]
role = "viewer"
identities = ["cn:bob"]
"#;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_berthctl")
}

async fn berthctl(args: &[&str]) -> Output {
    tokio::process::Command::new(bin())
        .args(args)
        .env_remove("BERTH_ENDPOINT")
        .env_remove("BERTH_CONTEXT")
        .env("BERTH_CONFIG", "/nonexistent/berth-test-config.toml")
        .output()
        .await
        .unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "berthctl failed: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// A node IPAM in memory with one pool, `r7`: reservations and their history, as the agent's
/// store reports them (berthctl only shows them).
#[derive(Default)]
struct FakeIpam {
    allocations: Mutex<Vec<v1::Allocation>>,
    history: Mutex<Vec<v1::IpamEvent>>,
}

#[tonic::async_trait]
impl IpamBackend for FakeIpam {
    async fn list(
        &self,
        _req: &v1::ListAllocationsRequest,
    ) -> Result<Vec<v1::Allocation>, BackendError> {
        Ok(self.allocations.lock().unwrap().clone())
    }
    async fn show(&self, _network: &str, address: &str) -> Result<v1::Allocation, BackendError> {
        self.allocations
            .lock()
            .unwrap()
            .iter()
            .find(|a| a.address == address)
            .cloned()
            .ok_or_else(|| BackendError::NotFound(format!("address {address}")))
    }
    async fn history(
        &self,
        req: &v1::IpamHistoryRequest,
    ) -> Result<Vec<v1::IpamEvent>, BackendError> {
        let history = self.history.lock().unwrap();
        Ok(history
            .iter()
            .filter(|e| req.address.is_empty() || e.address == req.address)
            .cloned()
            .collect())
    }
    async fn reserve(
        &self,
        req: &v1::ReserveRequest,
        actor: &str,
    ) -> Result<v1::Allocation, BackendError> {
        let a = v1::Allocation {
            network: req.network.clone(),
            pool: "r7".into(),
            address: req.address.clone(),
            node: "node-1".into(),
            state: "reserved".into(),
            namespace: req.namespace.clone(),
            owner: format!("{}/{}", req.namespace, req.owner),
            note: format!("{} (reserved by {actor})", req.note),
            hold_until_unix_ms: req.until_unix_ms,
            ..Default::default()
        };
        self.allocations.lock().unwrap().push(a.clone());
        self.history.lock().unwrap().push(v1::IpamEvent {
            network: req.network.clone(),
            pool: "r7".into(),
            address: req.address.clone(),
            action: "reserve".into(),
            namespace: req.namespace.clone(),
            time_unix_ms: chrono::Utc::now().timestamp_millis(),
            ..Default::default()
        });
        Ok(a)
    }
    async fn release(
        &self,
        _network: &str,
        address: &str,
        _actor: &str,
    ) -> Result<v1::Allocation, BackendError> {
        let mut all = self.allocations.lock().unwrap();
        let i = all
            .iter()
            .position(|a| a.address == address)
            .ok_or_else(|| BackendError::NotFound(format!("address {address}")))?;
        Ok(all.remove(i))
    }
}

struct Bed {
    dir: tempfile::TempDir,
    srv: RunningServer,
}

impl Bed {
    /// `certs init` by the binary, then a server using exactly those files.
    async fn new() -> Bed {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        let o = berthctl(&[
            "certs",
            "init",
            "--dir",
            pki.to_str().unwrap(),
            "--server-san",
            "node-1.test",
            "--server-san",
            "127.0.0.1",
            "--client",
            "admin:ops",
            "--client",
            "bob",
        ])
        .await;
        let text = ok(&o);
        for f in [
            "ca.pem",
            "ca-key.pem",
            "server.pem",
            "server-key.pem",
            "admin.pem",
            "admin-key.pem",
            "bob.pem",
        ] {
            assert!(
                text.contains(&format!("wrote {}", pki.join(f).display())),
                "{text}"
            );
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(pki.join("admin-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "private keys must be 0600");

        // A second init without --force refuses to overwrite.
        let again = berthctl(&["certs", "init", "--dir", pki.to_str().unwrap()]).await;
        assert!(!again.status.success());
        assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

        let uid = rustix::process::getuid().as_raw();
        let policy = format!(
            "{POLICY}\n[[bindings]]\nrole = \"admin\"\nidentities = [\"unix:uid:{uid}\"]\n"
        );
        std::fs::write(dir.path().join("policy.toml"), policy).unwrap();
        let logs = dir.path().join("pods/team-a/web-0/app");
        std::fs::create_dir_all(&logs).unwrap();
        std::fs::write(logs.join("app.log"), "hello\nworld\n").unwrap();
        std::fs::write(logs.join("big.log"), vec![b'x'; 300_000]).unwrap();

        let mut cfg = ApiConfig::new(
            dir.path().join("policy.toml"),
            AuditConfig::new(dir.path().join("audit.log")),
        );
        cfg.listen = Some("127.0.0.1:0".parse().unwrap());
        cfg.tls = Some(TlsConfig {
            cert: pki.join("server.pem"),
            key: pki.join("server-key.pem"),
            client_ca: pki.join("ca.pem"),
            crl: None,
        });
        cfg.unix_socket = Some(dir.path().join("api.sock"));
        cfg.node.name = "node-1".into();
        cfg.node.rack = "r7".into();
        let srv = Server::builder(cfg)
            .logs(DirLayout::new(dir.path().join("pods")))
            .ipam(FakeIpam::default())
            .start()
            .await
            .unwrap();
        Bed { dir, srv }
    }

    fn pki(&self, f: &str) -> String {
        self.dir.path().join("pki").join(f).display().to_string()
    }

    fn flags(&self, who: &str) -> Vec<String> {
        vec![
            "--endpoint".into(),
            format!("https://{}", self.srv.tcp_addr.unwrap()),
            "--ca".into(),
            self.pki("ca.pem"),
            "--cert".into(),
            self.pki(&format!("{who}.pem")),
            "--key".into(),
            self.pki(&format!("{who}-key.pem")),
        ]
    }

    async fn run(&self, who: &str, args: &[&str]) -> Output {
        let mut all: Vec<String> = self.flags(who);
        all.extend(args.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        berthctl(&refs).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_info_table_and_json() {
    let bed = Bed::new().await;
    let table = ok(&bed.run("admin", &["node", "info"]).await);
    assert!(table.contains("NODE     node-1"), "{table}");
    assert!(table.contains("YOU      cn:admin via mtls"), "{table}");
    assert!(table.contains("ROLES    admin"), "{table}");

    let json = ok(&bed.run("admin", &["-o", "json", "node", "info"]).await);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["node_name"], "node-1");
    assert_eq!(v["rack"], "r7");
    assert_eq!(v["caller"]["identity"], "cn:admin");
    assert_eq!(v["caller"]["groups"], serde_json::json!(["ops"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_pull_writes_the_tar() {
    let bed = Bed::new().await;
    let out = bed.dir.path().join("pulled.tar");
    let text = ok(&bed
        .run(
            "admin",
            &[
                "logs",
                "pull",
                "team-a/web-0",
                "app",
                "--out",
                out.to_str().unwrap(),
            ],
        )
        .await);
    assert!(text.starts_with("pulled "), "{text}");
    assert!(!out.with_extension("tar.partial").exists());
    let mut files = Vec::new();
    let mut a = tar::Archive::new(std::fs::File::open(&out).unwrap());
    for e in a.entries().unwrap() {
        use std::io::Read;
        let mut e = e.unwrap();
        let mut d = Vec::new();
        e.read_to_end(&mut d).unwrap();
        files.push((e.path().unwrap().display().to_string(), d.len()));
    }
    assert_eq!(
        files,
        [
            ("app/app.log".to_string(), 12),
            ("app/big.log".to_string(), 300_000)
        ]
    );

    let tail = ok(&bed
        .run(
            "admin",
            &["logs", "tail", "-n", "1", "team-a/web-0", "app", "app.log"],
        )
        .await);
    assert_eq!(tail, "world\n");
    let ls = ok(&bed.run("admin", &["logs", "ls", "team-a/web-0"]).await);
    assert!(ls.lines().next().unwrap().starts_with("DIR"), "{ls}");
    let big = ls.lines().find(|l| l.contains("big.log")).unwrap();
    assert!(
        big.starts_with("app  ") && big.contains("293.0 KiB"),
        "{ls}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_tail_follow_prints_appended_lines() {
    use tokio::io::AsyncBufReadExt;
    let bed = Bed::new().await;
    let mut args = bed.flags("admin");
    args.extend(
        [
            "logs",
            "tail",
            "-f",
            "-n",
            "1",
            "team-a/web-0",
            "app",
            "app.log",
        ]
        .map(String::from),
    );
    let mut child = tokio::process::Command::new(bin())
        .args(&args)
        .env("BERTH_CONFIG", "/nonexistent/berth-test-config.toml")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let wait = std::time::Duration::from_secs(10);
    let first = tokio::time::timeout(wait, lines.next_line()).await;
    assert_eq!(
        first.expect("berthctl printed nothing").unwrap().as_deref(),
        Some("world")
    );
    let log = bed.dir.path().join("pods/team-a/web-0/app/app.log");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(b"appended\n").unwrap();
    }
    let next = tokio::time::timeout(wait, lines.next_line()).await;
    assert_eq!(
        next.expect("appended line not printed").unwrap().as_deref(),
        Some("appended")
    );
    child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_calls_exit_3_with_the_reason() {
    let bed = Bed::new().await;
    let o = bed.run("bob", &["logs", "ls", "team-a/web-0"]).await;
    assert_eq!(o.status.code(), Some(3));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("logs ls: permission denied: roles [viewer] of cn:bob do not allow method /berth.v1.Logs/List"),
        "{err}"
    );
    // And the admin sees the denial in the audit log.
    let json = ok(&bed
        .run(
            "admin",
            &[
                "-o",
                "json",
                "audit",
                "query",
                "--identity",
                "cn:bob",
                "--decision",
                "deny",
            ],
        )
        .await);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["records"].as_array().unwrap().len(), 1);
    assert_eq!(v["records"][0]["method"], "/berth.v1.Logs/List");

    // The log on disk verifies; an edited copy does not.
    let log = bed.dir.path().join("audit.log");
    let text = ok(&berthctl(&["audit", "verify", log.to_str().unwrap()]).await);
    assert!(text.starts_with("hash chain intact: "), "{text}");
    let copy = bed.dir.path().join("copy.log");
    let original = std::fs::read_to_string(&log).unwrap();
    let first = original.lines().next().unwrap();
    let forged = original.replacen(first, &first.replace("cn:bob", "cn:eve"), 1);
    std::fs::write(&copy, forged).unwrap();
    let o = berthctl(&["audit", "verify", copy.to_str().unwrap()]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("line 2: hash chain broken"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_file_selects_endpoint_and_certs() {
    let bed = Bed::new().await;
    let cfg = bed.dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "current-context = \"lab\"\n[contexts.lab]\nendpoint = \"https://{}\"\nca = \"pki/ca.pem\"\ncert = \"pki/admin.pem\"\nkey = \"pki/admin-key.pem\"\n[contexts.other]\nendpoint = \"https://127.0.0.1:1\"\n",
            bed.srv.tcp_addr.unwrap()
        ),
    )
    .unwrap();
    let o = berthctl(&[
        "--config",
        cfg.to_str().unwrap(),
        "-o",
        "json",
        "node",
        "info",
    ])
    .await;
    let v: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(v["caller"]["identity"], "cn:admin");
    // The server name is checked: the cert has node-1.test and 127.0.0.1, not "wrong.test".
    let o = berthctl(&[
        "--config",
        cfg.to_str().unwrap(),
        "--server-name",
        "wrong.test",
        "node",
        "info",
    ])
    .await;
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = berthctl(&[
        "--config",
        cfg.to_str().unwrap(),
        "--context",
        "nope",
        "node",
        "info",
    ])
    .await;
    assert!(String::from_utf8_lossy(&o.stderr).contains("(it has: lab, other)"));
}

#[tokio::test]
async fn completions_and_endpoint_validation() {
    let o = berthctl(&["completions", "bash"]).await;
    let s = ok(&o);
    assert!(s.contains("_berthctl()"), "{}", &s[..s.len().min(200)]);
    assert!(s.contains("pull"));
    let o = berthctl(&["--endpoint", "http://127.0.0.1:1", "node", "info"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("invalid endpoint"));
    let o = berthctl(&["--endpoint", "https://127.0.0.1:1", "node", "info"]).await;
    assert!(String::from_utf8_lossy(&o.stderr).contains("need a client certificate"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipam_reserve_list_history_release() {
    let bed = Bed::new().await;
    let text = ok(&bed
        .run(
            "admin",
            &[
                "ipam",
                "reserve",
                "10.77.0.40",
                "--network",
                "net1",
                "-n",
                "team-a",
                "--owner",
                "db-0",
                "--for",
                "7d",
                "--note",
                "db primary",
            ],
        )
        .await);
    let row = text.lines().nth(1).unwrap();
    assert!(
        row.starts_with("net1") && row.contains("10.77.0.40") && row.contains("reserved"),
        "{text}"
    );
    let json = ok(&bed
        .run("admin", &["-o", "json", "ipam", "list", "-n", "team-a"])
        .await);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let a = &v["allocations"][0];
    assert_eq!(a["address"], "10.77.0.40");
    assert_eq!(a["pool"], "r7");
    assert_eq!(a["owner"], "team-a/db-0");
    assert_eq!(a["note"], "db primary (reserved by cn:admin)");
    assert!(a["hold_until_unix_ms"].as_i64().unwrap() > chrono::Utc::now().timestamp_millis());
    let hist = ok(&bed
        .run("admin", &["ipam", "history", "--address", "10.77.0.40"])
        .await);
    assert!(hist.lines().nth(1).unwrap().contains("reserve"), "{hist}");
    // Releasing it as another namespace: not found, still reserved.
    let o = bed
        .run("admin", &["ipam", "release", "10.77.0.40", "-n", "team-b"])
        .await;
    assert_eq!(
        o.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    ok(&bed
        .run("admin", &["ipam", "release", "10.77.0.40", "-n", "team-a"])
        .await);
    let json = ok(&bed.run("admin", &["-o", "json", "ipam", "list"]).await);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["allocations"], serde_json::json!([]), "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_socket_endpoint() {
    let bed = Bed::new().await;
    let sock = bed.srv.unix_socket.clone().unwrap();
    let ep = format!("unix://{}", sock.display());
    let o = berthctl(&["--endpoint", &ep, "-o", "json", "node", "info"]).await;
    let v: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    let uid = rustix::process::getuid().as_raw();
    assert_eq!(v["caller"]["identity"], format!("unix:uid:{uid}"));
    assert_eq!(v["caller"]["transport"], "unix");
}
