//! The test bed proves itself: real pods through CRI on containerd 2.1 and 1.7 with the
//! reference bridge get addresses and reach each other, etcd answers, a `kill -9` of
//! containerd is survived, and taking a node down leaves nothing behind.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use berth_e2e::testbed::{Containerd, Node, NodeOptions, etcd};
use berth_e2e::{BUSYBOX_IMAGE, ContainerSpec, PodSpec};

async fn two_pods_ping_each_other(node_name: &str, containerd: Containerd) {
    let node = Node::start(
        node_name,
        NodeOptions {
            containerd,
            ..Default::default()
        },
    )
    .expect("node starts");
    let mut cri = node.cri().await.expect("CRI ready");
    let version = cri.version().await.unwrap();
    assert!(
        version.runtime_version.starts_with(containerd.as_str()),
        "node runs containerd {} but {} was asked for",
        version.runtime_version,
        containerd.as_str()
    );

    let mut ips = Vec::new();
    let mut containers = Vec::new();
    for name in ["web-0", "web-1"] {
        let pod = cri.run_pod(&PodSpec::new("default", name)).await.unwrap();
        let ip = cri.pod_ip(&pod.id).await.unwrap();
        let index: u8 = node.env("BERTH_NODE_INDEX").parse().unwrap();
        assert!(
            ip.to_string().starts_with(&format!("10.99.{index}.")),
            "pod IP {ip} is not from the node's subnet 10.99.{index}.0/24"
        );
        let c = cri
            .run_container(&pod, &ContainerSpec::sleeper("app", BUSYBOX_IMAGE))
            .await
            .unwrap();
        let addr = cri
            .exec(
                &c,
                &["ip", "-4", "-o", "addr", "show", "eth0"],
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert!(
            addr.stdout.contains(&ip.to_string()),
            "eth0 lacks {ip}: {addr:?}"
        );
        ips.push(ip);
        containers.push(c);
    }
    assert_ne!(ips[0], ips[1], "two pods got the same IP");
    let out = cri
        .exec(
            &containers[0],
            &["ping", "-c", "2", "-W", "2", &ips[1].to_string()],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(
        out.exit_code, 0,
        "pod web-0 cannot ping web-1 at {}: {out:?}",
        ips[1]
    );
    assert!(out.stdout.contains("2 packets received"), "{out:?}");
    let removed = cri.teardown_all().await.unwrap();
    assert_eq!(removed, 2);
    assert!(cri.list_pods().await.unwrap().is_empty());
}

#[tokio::test]
#[ignore = "needs root and the test bed: run by scripts/test"]
async fn pods_on_containerd_2_1_get_ips_and_ping_each_other() {
    two_pods_ping_each_other("tb-ping-21", Containerd::V2_1).await;
}

#[tokio::test]
#[ignore = "needs root and the test bed: run by scripts/test"]
async fn pods_on_containerd_1_7_get_ips_and_ping_each_other() {
    two_pods_ping_each_other("tb-ping-17", Containerd::V1_7).await;
}

#[test]
#[ignore = "needs root and the test bed: run by scripts/test"]
fn etcd_answers_health_and_keeps_a_key() {
    let etcd = etcd();
    // TLS with client certificates: a client without one is turned away.
    assert!(etcd.endpoints[0].starts_with("https://"), "{etcd:?}");
    let health = etcd
        .etcdctl()
        .args(["endpoint", "health"])
        .output()
        .unwrap();
    assert!(health.status.success(), "etcd health: {health:?}");
    let anonymous = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            &format!("--endpoints={}", etcd.endpoints[0]),
            &format!("--cacert={}", etcd.ca.display()),
            "--dial-timeout=2s",
            "--command-timeout=3s",
            "get",
            "/x",
        ])
        .output()
        .unwrap();
    assert!(
        !anonymous.status.success(),
        "etcd served a client without a certificate: {anonymous:?}"
    );

    let key = format!("/berth-test/{}", std::process::id());
    let put = etcd
        .etcdctl()
        .args(["put", &key, "anchored"])
        .output()
        .expect("etcdctl runs");
    assert!(put.status.success(), "{put:?}");
    let get = etcd
        .etcdctl()
        .args(["get", "--print-value-only", &key])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "anchored");
    etcd.etcdctl().args(["del", &key]).output().unwrap();
}

#[tokio::test]
#[ignore = "needs root and the test bed: run by scripts/test"]
async fn kill_9_of_containerd_is_survived_and_pods_are_adopted() {
    let mut node = Node::start("tb-kill9", NodeOptions::default()).unwrap();
    let mut cri = node.cri().await.unwrap();
    let pod = cri
        .run_pod(&PodSpec::new("default", "survivor"))
        .await
        .unwrap();
    let ip = cri.pod_ip(&pod.id).await.unwrap();
    let c = cri
        .run_container(&pod, &ContainerSpec::sleeper("app", BUSYBOX_IMAGE))
        .await
        .unwrap();
    cri.exec(
        &c,
        &["sh", "-c", "echo before > /tmp/mark"],
        Duration::from_secs(5),
    )
    .await
    .unwrap()
    .ok()
    .unwrap();
    drop(cri);

    node.kill_containerd().unwrap();
    node.restart_containerd().unwrap();

    let mut cri = node.cri().await.unwrap();
    let pods = cri.list_pods().await.unwrap();
    assert_eq!(pods.len(), 1, "the pod is adopted after restart");
    assert_eq!(pods[0].state, 0, "the pod is still ready");
    assert_eq!(
        cri.pod_ip(&pod.id).await.unwrap(),
        ip,
        "the pod keeps its IP"
    );
    assert_eq!(
        cri.container_status(&c).await.unwrap().state,
        1,
        "the container still runs"
    );
    let mark = cri
        .exec(&c, &["cat", "/tmp/mark"], Duration::from_secs(5))
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(
        mark.trim(),
        "before",
        "the same container process state survived"
    );
    cri.teardown_all().await.unwrap();
}

#[tokio::test]
#[ignore = "needs root and the test bed: run by scripts/test"]
async fn node_down_leaves_no_process_mount_netns_link_or_cgroup() {
    let node = Node::start("tb-clean", NodeOptions::default()).unwrap();
    let dir = node.dir();
    let socket = node.containerd_socket();
    let index = node.env("BERTH_NODE_INDEX").to_string();
    let cgroup = node.env("BERTH_CGROUP_PARENT").to_string();
    let mut cri = node.cri().await.unwrap();
    // Leave a running pod behind on purpose: node-down must tear it down over CRI.
    let pod = cri
        .run_pod(&PodSpec::new("default", "left-running"))
        .await
        .unwrap();
    cri.run_container(&pod, &ContainerSpec::sleeper("app", BUSYBOX_IMAGE))
        .await
        .unwrap();
    drop(cri);
    drop(node);

    assert!(!dir.exists(), "node dir {} remains", dir.display());
    let procs = Command::new("pgrep")
        .args(["-f", &socket.to_string_lossy()])
        .output()
        .unwrap();
    assert!(
        procs.stdout.is_empty(),
        "processes of the node remain: {}",
        String::from_utf8_lossy(&procs.stdout)
    );
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(&*dir.to_string_lossy()),
        "mounts under the node dir remain"
    );
    let link = Command::new("ip")
        .args(["link", "show", &format!("tb{index}")])
        .output()
        .unwrap();
    assert!(!link.status.success(), "bridge tb{index} remains");
    let veths = Command::new("ip")
        .args(["-o", "link", "show", "master", &format!("tb{index}")])
        .output()
        .unwrap();
    assert!(veths.stdout.is_empty(), "veths remain");
    for controller in ["memory", "pids", "cpu"] {
        let path = format!("/sys/fs/cgroup/{controller}{cgroup}");
        assert!(!Path::new(&path).exists(), "cgroup {path} remains");
    }
    let cni_cache = Command::new("sh")
        .args([
            "-c",
            "ls /var/lib/cni/results 2>/dev/null | grep -c tb-tb-clean || true",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&cni_cache.stdout).trim(),
        "0",
        "libcni cache entries remain"
    );
}
