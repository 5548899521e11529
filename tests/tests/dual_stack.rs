//! Dual-stack pods through CRI, with the shipped `cni/examples/dual-stack.conflist` (bridge
//! mode, an IPv4 and an IPv6 pool, the bridge the gateway of both), on containerd 2.1 and 1.7:
//!
//! - every pod gets an IPv4 and an IPv6 address and a default route of each family, and CRI
//!   reports both pod IPs (the second in `additional_ips`, kubelet's second `podIPs` entry);
//! - the IPv6 address is not `tentative` when the sandbox is up: pods ping each other and the
//!   node (the bridge) over IPv4 and IPv6 right after start;
//! - a pod annotated `berth.io/ip: eth0=<v4>,eth0=<v6>` gets exactly those;
//! - CNI GC (twice) frees both addresses and the veth of an attachment the runtime no longer
//!   lists; both DELs of a pod (with the netns, then with an empty one) succeed afterwards;
//! - a sticky pod's two addresses are held when it goes and come back when it returns.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use berth_e2e::netns::host_links;
use berth_e2e::testbed::{Containerd, Node, NodeOptions, plugin_binary, workspace_root};
use berth_e2e::{BUSYBOX_IMAGE, ContainerSpec, CriClient, PodSpec};
use berth_ipam_core::store::local::LocalStore;
use berth_ipam_core::store::{HistoryLimits, Store};
use berth_ipam_core::{Lease, LeaseState};
use serde_json::{Value, json};

/// Deletes the bridge berth-cni created on the host when the test ends.
struct BridgeGuard(String);

impl Drop for BridgeGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

/// The shipped conflist with what a second node on this machine must change: its bridge,
/// its subnets, its store dir, and its network name (CNI GC removes the host veths of every
/// attachment of the network it is not told about, so two nodes on one host must not share
/// a network name).
fn conflist(store: &Path, network: &str, bridge: &str, octet: u8) -> Value {
    let text =
        std::fs::read_to_string(workspace_root().join("cni/examples/dual-stack.conflist")).unwrap();
    let mut list: Value = serde_json::from_str(&text).unwrap();
    list["name"] = network.into();
    let berth = &mut list["plugins"][0];
    berth["bridge"] = bridge.into();
    berth["ipam"]["store"]["dir"] = store.to_str().unwrap().into();
    let pools = &mut berth["ipam"]["pools"];
    pools[0]["subnet"] = format!("10.244.{octet}.0/24").into();
    pools[0]["gateway"] = format!("10.244.{octet}.1").into();
    pools[1]["subnet"] = format!("fd00:244:{octet:x}::/64").into();
    pools[1]["gateway"] = format!("fd00:244:{octet:x}::1").into();
    list
}

/// berth-cni's GC verb (no runtime calls it yet), with `valid` as the attachments in use.
fn cni_gc(list: &Value, cni_path: &Path, valid: &[(&str, &str)]) {
    let mut conf = list["plugins"][0].clone();
    conf["cniVersion"] = "1.1.0".into();
    conf["name"] = list["name"].clone();
    conf["cni.dev/valid-attachments"] = valid
        .iter()
        .map(|(c, i)| json!({"containerID": c, "ifname": i}))
        .collect();
    let mut child = Command::new(plugin_binary("berth-cni"))
        .env_clear()
        .env("CNI_COMMAND", "GC")
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "GC failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn leases(store: &Path, network: &str) -> Vec<Lease> {
    LocalStore::new(store.to_path_buf(), HistoryLimits::default())
        .read(network)
        .expect("the store reads")
        .into_values()
        .collect()
}

async fn sh(cri: &mut CriClient, c: &str, cmd: &[&str]) -> berth_e2e::ExecOutput {
    cri.exec(c, cmd, Duration::from_secs(10)).await.unwrap()
}

async fn dual_stack_pods(node_name: &str, containerd: Containerd, bridge: &str, octet: u8) {
    let node_dir = workspace_root().join(".run/testbed/nodes").join(node_name);
    let store: PathBuf = node_dir.join("berth-ipam");
    let _bridge = BridgeGuard(bridge.to_string());
    let network = bridge;
    let list = conflist(&store, network, bridge, octet);
    let node = Node::start(
        node_name,
        NodeOptions {
            containerd,
            conflist: Some(list.to_string()),
            cni_binaries: vec![plugin_binary("berth-cni")],
            ..NodeOptions::default()
        },
    )
    .expect("node starts with berth-cni");
    let mut cri = node.cri().await.expect("CRI ready");
    let gw4 = format!("10.244.{octet}.1");
    let gw6 = format!("fd00:244:{octet:x}::1");
    let wanted: [IpAddr; 2] = [
        format!("10.244.{octet}.20").parse().unwrap(),
        format!("fd00:244:{octet:x}::20").parse().unwrap(),
    ];

    let mut pods = Vec::new();
    let mut containers = Vec::new();
    let mut ips: Vec<Vec<IpAddr>> = Vec::new();
    for name in ["web-0", "web-1", "job-bcdfg"] {
        let mut spec = PodSpec::new("default", name);
        if name == "web-1" {
            spec = spec.annotation(
                "berth.io/ip",
                &format!("eth0={},eth0={}", wanted[0], wanted[1]),
            );
        }
        let pod = cri.run_pod(&spec).await.unwrap();
        let got = cri.pod_ips(&pod.id).await.unwrap();
        assert_eq!(got.len(), 2, "CRI reports both pod IPs of {name}: {got:?}");
        assert!(
            got[0].is_ipv4() && got[1].is_ipv6(),
            "{name}: IPv4 first, then IPv6: {got:?}"
        );
        assert!(got[0].to_string().starts_with(&format!("10.244.{octet}.")));
        assert!(
            got[1]
                .to_string()
                .starts_with(&format!("fd00:244:{octet:x}::"))
        );
        let c = cri
            .run_container(&pod, &ContainerSpec::sleeper("app", BUSYBOX_IMAGE))
            .await
            .unwrap();
        let addr = sh(
            &mut cri,
            &c,
            &["ip", "-o", "addr", "show", "eth0", "scope", "global"],
        )
        .await;
        assert!(addr.stdout.contains(&format!("{}/24", got[0])), "{addr:?}");
        assert!(addr.stdout.contains(&format!("{}/64", got[1])), "{addr:?}");
        assert!(
            !addr.stdout.contains("tentative"),
            "the IPv6 address must be usable when the sandbox is up: {addr:?}"
        );
        let r4 = sh(&mut cri, &c, &["ip", "-4", "route"]).await;
        assert!(
            r4.stdout.contains(&format!("default via {gw4} dev eth0")),
            "{r4:?}"
        );
        let r6 = sh(&mut cri, &c, &["ip", "-6", "route"]).await;
        assert!(
            r6.stdout.contains(&format!("default via {gw6} dev eth0")),
            "{r6:?}"
        );
        ips.push(got);
        containers.push(c);
        pods.push(pod);
    }
    assert_eq!(ips[1], wanted, "berth.io/ip gave both addresses");
    assert_ne!(ips[0], ips[2]);

    // Right after start, over both families: each other and the node (the bridge).
    for (from, to) in [
        (0, ips[1][0].to_string()),
        (0, ips[1][1].to_string()),
        (1, ips[0][1].to_string()),
        (2, ips[0][1].to_string()),
        (0, gw4.clone()),
        (0, gw6.clone()),
        (2, gw6.clone()),
    ] {
        let out = sh(
            &mut cri,
            &containers[from],
            &["ping", "-c", "1", "-W", "2", &to],
        )
        .await;
        assert_eq!(out.exit_code, 0, "pod {from} cannot ping {to}: {out:?}");
    }
    // The node reaches a pod over IPv6 too.
    let out = Command::new("ping")
        .args(["-c", "1", "-W", "2", &ips[0][1].to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "node cannot ping {}: {out:?}",
        ips[0][1]
    );

    // GC, twice, with the runtime listing only web-0 and web-1: the job pod's two addresses
    // and its veth go.
    let valid: Vec<(&str, &str)> = pods[..2].iter().map(|p| (p.id.as_str(), "eth0")).collect();
    let cni_path = node.cni_bin_dir();
    cni_gc(&list, &cni_path, &valid);
    cni_gc(&list, &cni_path, &valid);
    let left = leases(&store, network);
    assert!(
        !left
            .iter()
            .any(|l| ips[2].contains(&l.ip) && l.attachment().is_some()),
        "GC freed both addresses of the job pod: {left:?}"
    );
    assert!(!host_links().contains(&format!("berth:{network}:{}:", pods[2].id)));
    for l in left.iter().filter(|l| l.attachment().is_some()) {
        assert!(ips[0].contains(&l.ip) || ips[1].contains(&l.ip), "{l:?}");
    }

    // StopPodSandbox (DEL with the netns) then RemovePodSandbox (DEL with an empty netns), also
    // for the pod GC already cleaned up.
    for (pod, c) in pods.iter().zip(&containers) {
        cri.delete_pod_like_kubelet(&pod.id, c).await.unwrap();
        assert!(
            !host_links().contains(&format!("berth:{network}:{}:", pod.id)),
            "{} left its veth",
            pod.id
        );
    }
    assert!(cri.list_pods().await.unwrap().is_empty());
    // The sticky pods' addresses are held, both families; nothing is allocated.
    let left = leases(&store, network);
    assert!(left.iter().all(|l| l.attachment().is_none()), "{left:?}");
    let held: Vec<IpAddr> = left
        .iter()
        .filter(|l| matches!(l.state, LeaseState::Held { .. }))
        .map(|l| l.ip)
        .collect();
    for ip in ips[0].iter().chain(&ips[1]) {
        assert!(held.contains(ip), "{ip} is held: {left:?}");
    }

    // web-0 comes back: both addresses again.
    let again = cri
        .run_pod(&PodSpec::new("default", "web-0"))
        .await
        .unwrap();
    assert_eq!(cri.pod_ips(&again.id).await.unwrap(), ips[0]);
    assert_eq!(cri.teardown_all().await.unwrap(), 1);
    assert!(!host_links().contains(&format!("berth:{network}:{}:", again.id)));
}

#[tokio::test]
#[ignore = "needs root and the test bed: run by scripts/test"]
async fn dual_stack_pods_on_containerd_2_1() {
    dual_stack_pods("ds-21", Containerd::V2_1, "berthds21", 40).await;
}

#[tokio::test]
#[ignore = "needs root and the test bed: run by scripts/test"]
async fn dual_stack_pods_on_containerd_1_7() {
    dual_stack_pods("ds-17", Containerd::V1_7, "berthds17", 41).await;
}
