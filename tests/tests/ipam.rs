//! berth-ipam end to end: pods through CRI on containerd 2.1 with Debian's reference `bridge`
//! delegating IPAM to the `berth-ipam` binary. A pod removed and re-created with the same
//! namespace/name gets its address back; another pod does not get a held address; an
//! annotation-requested address is honoured.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use berth_e2e::testbed::{Containerd, Node, NodeOptions, binary};
use berth_e2e::{CriClient, PodSpec};
use serde_json::json;

fn conflist(index: &str, store: &Path) -> String {
    json!({
        "cniVersion": "1.0.0",
        "name": "tb-ipam",
        "plugins": [{
            "type": "bridge",
            "bridge": format!("tb{index}"),
            "isGateway": true,
            "ipMasq": false,
            "capabilities": {"io.kubernetes.cri.pod-annotations": true},
            "ipam": {
                "type": "berth-ipam",
                "store": {"type": "local", "dir": store},
                "node": "e2e",
                "hold": "10m",
                "pools": [{
                    "name": "tb",
                    "subnet": format!("10.99.{index}.0/24"),
                    "gateway": format!("10.99.{index}.1"),
                    "ranges": [{"start": format!("10.99.{index}.10"), "end": format!("10.99.{index}.200")}],
                    "routes": [{"dst": "0.0.0.0/0"}]
                }]
            }
        }]
    })
    .to_string()
}

async fn run_pod_ip(cri: &mut CriClient, spec: &PodSpec) -> (String, IpAddr) {
    let pod = cri.run_pod(spec).await.expect("RunPodSandbox");
    let ip = cri.pod_ip(&pod.id).await.expect("pod IP");
    (pod.id, ip)
}

async fn remove(cri: &mut CriClient, id: &str) {
    cri.stop_pod(id).await.expect("StopPodSandbox");
    cri.remove_pod(id).await.expect("RemovePodSandbox");
}

async fn pods_keep_their_address(node_name: &str, containerd: Containerd) {
    let node = Node::start(
        node_name,
        NodeOptions {
            containerd,
            cni_binaries: vec![binary("berth-ipam")],
            ..Default::default()
        },
    )
    .expect("node starts");
    let index = node.env("BERTH_NODE_INDEX").to_string();
    let store = node.dir().join("berth-ipam");
    node.set_conflist(&conflist(&index, &store))
        .expect("conflist");
    let mut cri = node.cri().await.expect("CRI ready");

    // containerd reloads the conflist on its own: wait until pods get berth-ipam addresses.
    let deadline = Instant::now() + Duration::from_secs(20);
    let state = store.join("tb-ipam.json");
    let (first_id, first_ip) = loop {
        let (id, ip) = run_pod_ip(&mut cri, &PodSpec::new("default", "web-0")).await;
        if state.exists() {
            break (id, ip);
        }
        remove(&mut cri, &id).await;
        assert!(
            Instant::now() < deadline,
            "containerd did not switch to the berth-ipam conflist within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let prefix = format!("10.99.{index}.");
    assert!(
        first_ip.to_string().starts_with(&prefix),
        "{first_ip} not from the pool"
    );

    // Removed and re-created with the same namespace/name: the same address.
    remove(&mut cri, &first_id).await;
    let (again_id, again_ip) = run_pod_ip(&mut cri, &PodSpec::new("default", "web-0")).await;
    assert_eq!(again_ip, first_ip, "web-0 re-created got another address");
    remove(&mut cri, &again_id).await;

    // Another pod does not get the held address.
    let (other_id, other_ip) = run_pod_ip(&mut cri, &PodSpec::new("default", "web-1")).await;
    assert_ne!(other_ip, first_ip, "web-1 got web-0's held address");

    // An annotation-requested address is honoured.
    let wanted: IpAddr = format!("{prefix}150").parse().unwrap();
    let (asked_id, asked_ip) = run_pod_ip(
        &mut cri,
        &PodSpec::new("default", "fixed").annotation("berth.io/ip", &wanted.to_string()),
    )
    .await;
    assert_eq!(asked_ip, wanted);

    // The store recorded every step, and after the pods are gone only holds remain.
    remove(&mut cri, &other_id).await;
    remove(&mut cri, &asked_id).await;
    let text = std::fs::read_to_string(&state).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let states: Vec<&str> = v["leases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["state"].as_str().unwrap())
        .collect();
    assert!(
        states.iter().all(|s| *s == "held"),
        "after every pod is gone only holds remain: {states:?}"
    );
    let history = std::fs::read_to_string(store.join("tb-ipam.history.jsonl")).unwrap();
    assert!(history.lines().count() >= 8, "{history}");
    assert!(cri.list_pods().await.unwrap().is_empty());
}

#[tokio::test]
#[ignore = "needs root and the test bed: run by scripts/test"]
async fn pods_keep_their_address_on_containerd_2_1() {
    pods_keep_their_address("ipam-e2e-21", Containerd::V2_1).await;
}

#[tokio::test]
#[ignore = "needs root and the test bed: run by scripts/test"]
async fn pods_keep_their_address_on_containerd_1_7() {
    pods_keep_their_address("ipam-e2e-17", Containerd::V1_7).await;
}
