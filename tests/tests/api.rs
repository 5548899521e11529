//! The agent's API end to end: berth-agent on a test-bed node serves its gRPC API over mTLS
//! and a root unix socket; `berthctl` (certificates from `berthctl certs init`) reads node info
//! and pulls a real pod's file logs; a caller without a role is denied and audited.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use berth_e2e::agent::AgentProcess;
use berth_e2e::testbed::{Node, NodeOptions, binary};
use berth_e2e::{BUSYBOX_IMAGE, ContainerSpec, PodSpec};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn berthctl(args: &[&str]) -> Output {
    Command::new(binary("berthctl"))
        .args(args)
        .env_remove("BERTH_ENDPOINT")
        .env("HOME", "/nonexistent")
        .output()
        .expect("berthctl runs")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "berthctl failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_until(what: &str, agent: &AgentProcess, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen; agent log:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
#[ignore = "needs root and the test bed: run by scripts/test"]
async fn berthctl_reads_node_info_and_pulls_a_pods_file_logs_over_mtls() {
    let node = Node::start("api-e2e", NodeOptions::default()).unwrap();
    let work = node.dir().join("agent");
    let certs = work.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    ok(berthctl(&[
        "certs",
        "init",
        "--dir",
        certs.to_str().unwrap(),
        "--client",
        "admin:ops",
        "--client",
        "bob:dev",
    ]));
    let policy = work.join("policy.toml");
    std::fs::write(
        &policy,
        r#"
[roles.admin]
methods = ["*"]
namespaces = ["*"]

[roles.other-team-logs]
methods = ["berth.v1.Logs/*"]
namespaces = ["other-team"]

[[bindings]]
role = "admin"
identities = ["unix:uid:0"]
groups = ["ops"]

[[bindings]]
role = "other-team-logs"
groups = ["dev"]
"#,
    )
    .unwrap();
    let port = free_port();
    let socket = work.join("api.sock");
    let audit = work.join("audit.jsonl");
    let log_root = work.join("filelogs");
    let cert = |name: &str| certs.join(name).display().to_string();
    let config = work.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[api]
listen = "127.0.0.1:{port}"
unix_socket = "{socket}"
policy = "{policy}"

[api.audit]
path = "{audit}"

[api.tls]
cert = "{server}"
key = "{server_key}"
client_ca = "{ca}"

[api.node]
name = "api-e2e-node"
rack = "r7"
"#,
            socket = socket.display(),
            policy = policy.display(),
            audit = audit.display(),
            server = cert("server.pem"),
            server_key = cert("server-key.pem"),
            ca = cert("ca.pem"),
        ),
    )
    .unwrap();

    let agent = AgentProcess::start(
        &node,
        &config,
        &log_root,
        &work.join("state"),
        &work.join("agent.log"),
    );
    wait_until("NRI registration", &agent, || {
        agent.log_text().contains("nri plugin ready")
    });
    wait_until("the API socket", &agent, || socket.exists());

    let mut cri = node.cri().await.unwrap();
    let pod = cri.run_pod(&PodSpec::new("shop", "web-0")).await.unwrap();
    let mut spec =
        ContainerSpec::sleeper("app", BUSYBOX_IMAGE).env("KUBERNETES_FILELOGS", "/app/logs");
    spec.args = vec![
        "trap 'exit 0' TERM; echo 'order 42 accepted' > /app/logs/orders.log; while :; do sleep 1 & wait $!; done"
            .into(),
    ];
    cri.run_container(&pod, &spec).await.unwrap();
    let host_file = log_root.join("shop/web-0/app/orders.log");
    wait_until("the pod's log file on the host", &agent, || {
        host_file.exists()
    });

    let endpoint = format!("https://127.0.0.1:{port}");
    let mtls = |client: &str| -> Vec<String> {
        vec![
            "--endpoint".into(),
            endpoint.clone(),
            "--cert".into(),
            cert(&format!("{client}.pem")),
            "--key".into(),
            cert(&format!("{client}-key.pem")),
            "--ca".into(),
            cert("ca.pem"),
        ]
    };
    let with = |base: &[String], rest: &[&str]| -> Vec<String> {
        base.iter()
            .cloned()
            .chain(rest.iter().map(|s| s.to_string()))
            .collect()
    };
    let run = |args: Vec<String>| berthctl(&args.iter().map(String::as_str).collect::<Vec<_>>());

    // node info over mTLS, as the admin client.
    let info = ok(run(with(&mtls("admin"), &["-o", "json", "node", "info"])));
    assert!(
        info.contains("api-e2e-node"),
        "node info lacks the node name: {info}"
    );
    assert!(info.contains("r7"), "node info lacks the rack: {info}");
    assert!(
        info.contains("cn:admin"),
        "node info does not say who the caller is: {info}"
    );

    // logs pull of the pod's file-log dir, checked by unpacking the tar.
    let tarball = work.join("web-0-app.tar");
    ok(run(with(
        &mtls("admin"),
        &[
            "logs",
            "pull",
            "shop/web-0",
            "app",
            "--out",
            tarball.to_str().unwrap(),
        ],
    )));
    let listing = Command::new("tar")
        .arg("-tf")
        .arg(&tarball)
        .output()
        .unwrap();
    assert!(listing.status.success(), "not a tar file: {listing:?}");
    let content = Command::new("tar")
        .args([
            "-xOf",
            tarball.to_str().unwrap(),
            "--wildcards",
            "*orders.log",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&content.stdout).trim(),
        "order 42 accepted",
        "tar listing: {}",
        String::from_utf8_lossy(&listing.stdout)
    );

    // The unix socket gives root its own identity.
    let local = ok(berthctl(&[
        "--endpoint",
        &format!("unix://{}", socket.display()),
        "-o",
        "json",
        "node",
        "info",
    ]));
    assert!(local.contains("unix:uid:0"), "{local}");

    // bob's role covers another namespace only: denied, and the denial is audited.
    let denied = run(with(&mtls("bob"), &["logs", "ls", "shop/web-0"]));
    assert!(!denied.status.success(), "bob must be denied");
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(
        stderr.contains("PERMISSION_DENIED") || stderr.to_lowercase().contains("permission denied"),
        "bob's denial should say PERMISSION_DENIED: {stderr}"
    );
    assert!(
        stderr.contains("shop"),
        "the denial should name the namespace: {stderr}"
    );
    let audit_text = std::fs::read_to_string(&audit).unwrap();
    assert!(
        audit_text
            .lines()
            .any(|l| l.contains("\"identity\":\"cn:bob\"") && l.contains("\"decision\":\"deny\"")),
        "no deny line for cn:bob in the audit log:\n{audit_text}"
    );
    assert!(
        audit_text
            .lines()
            .any(|l| l.contains("\"identity\":\"cn:admin\"") && l.contains("/berth.v1.Logs/")),
        "the admin's log download is not audited:\n{audit_text}"
    );
    drop(agent);
    assert!(Path::new(&host_file).exists());
    cri.teardown_all().await.unwrap();
}
