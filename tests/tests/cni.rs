//! berth-cni on a real containerd node: the shipped `cni/examples/bridge.conflist` (berth-cni
//! chained with portmap) gives pods addresses through CRI, honours a per-pod address
//! annotation (the `io.kubernetes.cri.pod-annotations` capability), the pods reach each other
//! and the gateway, and both DELs of a pod (StopPodSandbox with the netns, RemovePodSandbox
//! without) succeed and leave no link behind.

use std::process::Command;
use std::time::Duration;

use berth_e2e::netns::host_links;
use berth_e2e::testbed::{Containerd, Node, NodeOptions, plugin_binary, workspace_root};
use berth_e2e::{BUSYBOX_IMAGE, ContainerSpec, CriClient, PodSpec};
use serde_json::Value;

/// Deletes the bridge berth-cni created on the host when the test ends.
struct BridgeGuard(String);

impl Drop for BridgeGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.0])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// The shipped conflist with the IPAM store moved into the node's directory and, for a
/// second node on the same host, its own bridge and subnet.
fn conflist(node_dir: &std::path::Path, bridge: &str, third_octet: u8) -> String {
    let text =
        std::fs::read_to_string(workspace_root().join("cni/examples/bridge.conflist")).unwrap();
    let mut list: Value = serde_json::from_str(&text).unwrap();
    let berth = &mut list["plugins"][0];
    berth["bridge"] = bridge.into();
    berth["ipam"]["store"]["dir"] = node_dir.join("berth-ipam").to_str().unwrap().into();
    berth["ipam"]["pools"][0]["subnet"] = format!("10.244.{third_octet}.0/24").into();
    berth["ipam"]["pools"][0]["gateway"] = format!("10.244.{third_octet}.1").into();
    list.to_string()
}

async fn pods_on_berth_cni(node_name: &str, containerd: Containerd, bridge: &str, octet: u8) {
    let node_dir = workspace_root().join(".run/testbed/nodes").join(node_name);
    let _bridge = BridgeGuard(bridge.to_string());
    let node = Node::start(
        node_name,
        NodeOptions {
            containerd,
            conflist: Some(conflist(&node_dir, bridge, octet)),
            cni_binaries: vec![plugin_binary("berth-cni")],
            ..NodeOptions::default()
        },
    )
    .expect("node starts with berth-cni");
    let mut cri = node.cri().await.expect("CRI ready");
    let wanted = format!("10.244.{octet}.77");
    let mut pods = Vec::new();
    let mut ips = Vec::new();
    let mut containers = Vec::new();
    for name in ["web-0", "web-1"] {
        let mut spec = PodSpec::new("default", name);
        if name == "web-1" {
            spec = spec.annotation("berth.io/ip", &wanted);
        }
        let pod = cri.run_pod(&spec).await.unwrap();
        let ip = cri.pod_ip(&pod.id).await.unwrap();
        assert!(
            ip.to_string().starts_with(&format!("10.244.{octet}.")),
            "pod {name} got {ip}, not an address of 10.244.{octet}.0/24"
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
            addr.stdout.contains(&format!("{ip}/24")),
            "eth0 lacks {ip}: {addr:?}"
        );
        ips.push(ip);
        containers.push(c);
        pods.push(pod);
    }
    assert_eq!(
        ips[1].to_string(),
        wanted,
        "the berth.io/ip annotation was not honoured"
    );
    assert_ne!(ips[0], ips[1]);
    let links = host_links();
    for pod in &pods {
        assert!(
            links.contains(&format!("alias berth:berth:{}:eth0", pod.id)),
            "no host veth for {}",
            pod.id
        );
    }
    for (from, to) in [
        (0, ips[1].to_string()),
        (1, ips[0].to_string()),
        (0, format!("10.244.{octet}.1")),
    ] {
        let out = cri
            .exec(
                &containers[from],
                &["ping", "-c", "2", "-W", "2", &to],
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        assert_eq!(out.exit_code, 0, "pod {from} cannot ping {to}: {out:?}");
    }
    // StopPodSandbox (DEL with the netns) then RemovePodSandbox (DEL with an empty netns).
    for (pod, c) in pods.iter().zip(&containers) {
        cri.delete_pod_like_kubelet(&pod.id, c).await.unwrap();
        assert!(
            !host_links().contains(&format!("berth:berth:{}:", pod.id)),
            "{} left its veth",
            pod.id
        );
    }
    assert!(cri.list_pods().await.unwrap().is_empty());
    // The address the annotation asked for is free again for the same pod.
    let again = cri
        .run_pod(&PodSpec::new("default", "web-1").annotation("berth.io/ip", &wanted))
        .await
        .unwrap();
    assert_eq!(cri.pod_ip(&again.id).await.unwrap().to_string(), wanted);
    assert_eq!(cri.teardown_all().await.unwrap(), 1);
    assert!(!host_links().contains(&format!("berth:berth:{}:", again.id)));
}

#[tokio::test]
#[ignore = "needs root and the test bed: run by scripts/test"]
async fn berth_cni_pods_on_containerd_2_1() {
    pods_on_berth_cni("cni-21", Containerd::V2_1, "berth0", 0).await;
}

#[tokio::test]
#[ignore = "needs root and the test bed: run by scripts/test"]
async fn berth_cni_pods_on_containerd_1_7() {
    pods_on_berth_cni("cni-17", Containerd::V1_7, "berth17", 17).await;
}

/// containerd 2.x asks CNI STATUS (cniVersion 1.1.0) for NetworkReady: berth-cni answers from
/// its IPAM store's health.
#[tokio::test]
#[ignore = "needs root and the test bed: run by scripts/test"]
async fn containerd_reports_network_ready_from_berth_cni_status() {
    let node_name = "cni-status";
    let node_dir = workspace_root().join(".run/testbed/nodes").join(node_name);
    let _bridge = BridgeGuard("berthst".to_string());
    let mut list: Value = serde_json::from_str(&conflist(&node_dir, "berthst", 31)).unwrap();
    list["cniVersion"] = "1.1.0".into();
    // portmap 1.1.1 speaks only up to 1.0.0: STATUS needs 1.1.0, so berth-cni alone.
    list["plugins"].as_array_mut().unwrap().truncate(1);
    let node = Node::start(
        node_name,
        NodeOptions {
            containerd: Containerd::V2_1,
            conflist: Some(list.to_string()),
            cni_binaries: vec![plugin_binary("berth-cni")],
            ..NodeOptions::default()
        },
    )
    .expect("node starts");
    // Healthy store: the node becomes ready (NetworkReady comes from STATUS).
    let mut cri = node
        .cri()
        .await
        .expect("NetworkReady with a healthy IPAM store");
    let pod = cri.run_pod(&PodSpec::new("default", "st-0")).await.unwrap();
    assert!(
        cri.pod_ip(&pod.id)
            .await
            .unwrap()
            .to_string()
            .starts_with("10.244.31.")
    );
    assert_eq!(cri.teardown_all().await.unwrap(), 1);
    // An unreachable store: STATUS fails with code 50 and containerd reports it.
    list["plugins"][0]["ipam"]["store"] = serde_json::json!({"type": "etcd", "endpoints": ["http://127.0.0.1:1"], "timeout": "300ms"});
    node.set_conflist(&list.to_string()).unwrap();
    let mut cri = CriClient::connect(&node.containerd_socket(), node.layout())
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let conditions = cri.conditions().await.unwrap();
        let network = conditions.get("NetworkReady").cloned().unwrap_or_default();
        if !network.0 && network.1.contains("berth-cni cannot add pods now") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "NetworkReady never reflected the broken store: {conditions:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The ELF program header types of an executable (PT_INTERP = 3, PT_DYNAMIC = 2, ...).
fn program_header_types(elf: &[u8]) -> Vec<u32> {
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(elf[4], 2, "not a 64-bit ELF");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (entsize, count) = (u16_at(0x36), u16_at(0x38));
    (0..count)
        .map(|i| {
            let o = phoff + i * entsize;
            u32::from_le_bytes(elf[o..o + 4].try_into().unwrap())
        })
        .collect()
}

/// Both plugins ship linked static and non-PIE: no loader to name (PT_INTERP), nothing to
/// link at start (PT_DYNAMIC), so a node's CNI dir needs no particular glibc and every ADD or
/// DEL process starts without a loader. Each answers VERSION with an empty environment.
#[test]
#[ignore = "needs the static plugins scripts/test builds"]
fn plugins_ship_as_static_executables() {
    const PT_DYNAMIC: u32 = 2;
    const PT_INTERP: u32 = 3;
    for name in ["berth-cni", "berth-ipam"] {
        let path = plugin_binary(name);
        let types = program_header_types(&std::fs::read(&path).unwrap());
        assert!(
            !types.contains(&PT_INTERP) && !types.contains(&PT_DYNAMIC),
            "{} is dynamically linked (program headers {types:?})",
            path.display()
        );
        let out = std::process::Command::new(&path)
            .env_clear()
            .env("CNI_COMMAND", "VERSION")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{name} VERSION: {out:?}");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(
            v["supportedVersions"]
                .as_array()
                .unwrap()
                .contains(&Value::from("1.1.0")),
            "{name}: {v}"
        );
    }
}
