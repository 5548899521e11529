//! berth-ipam end to end: pods through CRI on containerd 2.1 with Debian's reference `bridge`
//! delegating IPAM to the `berth-ipam` binary. A pod removed and re-created with the same
//! namespace/name gets its address back; another pod does not get a held address; an
//! annotation-requested address is honoured. Two nodes (two containerds) allocating from one
//! pool on the test bed's etcd at the same time never hand out the same address.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use berth_e2e::testbed::{Containerd, Node, NodeOptions, TestbedEtcd, etcd, plugin_binary};
use berth_e2e::{BUSYBOX_IMAGE, ContainerSpec, CriClient, PodSpec};
use berth_ipam_core::store::local::LocalStore;
use berth_ipam_core::store::{HistoryLimits, Store};
use serde_json::{Value, json};

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

/// The lease states the local store holds ("allocated", "held", ...), read through the store
/// as the plugin reads it (its files are binary).
fn local_lease_states(store: &Path, network: &str) -> Vec<String> {
    let store = LocalStore::new(store, HistoryLimits::default());
    store
        .read(network)
        .unwrap()
        .values()
        .map(|l| {
            let v = serde_json::to_value(l).unwrap();
            v["state"].as_str().unwrap().to_string()
        })
        .collect()
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
            cni_binaries: vec![plugin_binary("berth-ipam")],
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
    let state = store.join("tb-ipam.leases");
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
    let states = local_lease_states(&store, "tb-ipam");
    assert!(
        states.iter().all(|s| s == "held"),
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

/// Pods each node starts at once in the two-node test.
const PODS_PER_NODE: usize = 4;

/// The etcd keys and host bridges of one run of the two-node test, removed when it ends
/// (also when it fails), so reruns never meet leftovers.
struct EtcdRun {
    etcd: TestbedEtcd,
    /// `<prefix>/` (the store's keys are `<prefix>/<network>/…`).
    prefix: String,
    bridges: Vec<String>,
}

impl EtcdRun {
    /// Every key under the run's prefix and network, in key order: `(key suffix, value)`.
    fn keys(&self, network: &str) -> BTreeMap<String, String> {
        let under = format!("{}{network}/", self.prefix);
        let out = self
            .etcd
            .etcdctl()
            .args(["get", "--prefix", &under])
            .output()
            .expect("etcdctl (the etcd-client package) is needed to read the test bed's etcd");
        assert!(
            out.status.success(),
            "etcdctl get failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).expect("etcd keys and values are UTF-8");
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines.len().is_multiple_of(2),
            "etcdctl prints key/value pairs: {text}"
        );
        lines
            .chunks(2)
            .map(|kv| {
                let key = kv[0].strip_prefix(&under).expect("key under the prefix");
                (key.to_string(), kv[1].to_string())
            })
            .collect()
    }
}

impl Drop for EtcdRun {
    fn drop(&mut self) {
        let _ = self
            .etcd
            .etcdctl()
            .args(["del", "--prefix", &self.prefix])
            .output();
        for b in &self.bridges {
            let _ = Command::new("ip")
                .args(["link", "del", b])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// One pool shared by every node through etcd; each node has its own bridge (without an
/// address: the nodes' bridges share the subnet) and records its own node name.
fn etcd_conflist(
    network: &str,
    bridge: &str,
    node: &str,
    etcd: &TestbedEtcd,
    prefix: &str,
) -> String {
    json!({
        "cniVersion": "1.0.0",
        "name": network,
        "plugins": [{
            "type": "bridge",
            "bridge": bridge,
            "isGateway": false,
            "ipMasq": false,
            "ipam": {
                "type": "berth-ipam",
                "store": etcd.store_json(prefix, "5s"),
                "node": node,
                "hold": "0s",
                "pools": [{
                    "name": "shared",
                    "subnet": "10.97.0.0/24",
                    "gateway": "10.97.0.1",
                    "ranges": [{"start": "10.97.0.10", "end": "10.97.0.60"}]
                }]
            }
        }]
    })
    .to_string()
}

/// A pod as one node created it: sandbox id, address from CRI, and what eth0 has inside it.
struct PlacedPod {
    node: String,
    id: String,
    ip: IpAddr,
    eth0: String,
}

/// Runs a pod with a busybox container and reads eth0's addresses from inside the pod.
async fn place_pod(node: String, mut cri: CriClient, name: String) -> PlacedPod {
    let pod = cri
        .run_pod(&PodSpec::new("default", &name))
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox {name} on {node}: {e:#}"));
    let ip = cri.pod_ip(&pod.id).await.expect("pod IP");
    let c = cri
        .run_container(&pod, &ContainerSpec::sleeper("app", BUSYBOX_IMAGE))
        .await
        .expect("container in the pod");
    let eth0 = cri
        .exec(
            &c,
            &["ip", "-4", "-o", "addr", "show", "eth0"],
            Duration::from_secs(5),
        )
        .await
        .expect("exec ip addr")
        .ok()
        .expect("ip addr in the pod");
    PlacedPod {
        node,
        id: pod.id,
        ip,
        eth0,
    }
}

#[tokio::test]
#[ignore = "needs root and the test bed: run by scripts/test"]
async fn two_nodes_on_one_etcd_never_collide() {
    // Over TLS with client certificates, as the test bed's etcd requires.
    let etcd = etcd();
    assert!(etcd.endpoints[0].starts_with("https://"), "{etcd:?}");
    // Unique per run: leftovers of an earlier (killed) run are never read or collided with.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let run = format!("{:x}", (nanos ^ u128::from(std::process::id())) & 0xff_ffff);
    let network = format!("tb-etcd-{run}");
    let prefix = format!("/berth-e2e/ipam-{run}");
    let guard = EtcdRun {
        etcd: etcd.clone(),
        prefix: format!("{prefix}/"),
        bridges: vec![format!("tbe{run}a"), format!("tbe{run}b")],
    };
    let nodes: Vec<(String, Containerd)> = vec![
        ("ipam-etcd-a".into(), Containerd::V2_1),
        ("ipam-etcd-b".into(), Containerd::V1_7),
    ];
    let mut starting = Vec::new();
    for ((name, containerd), bridge) in nodes.into_iter().zip(guard.bridges.clone()) {
        let conflist = etcd_conflist(&network, &bridge, &name, &etcd, &prefix);
        starting.push(tokio::task::spawn_blocking(move || {
            Node::start(
                &name,
                NodeOptions {
                    containerd,
                    conflist: Some(conflist),
                    cni_binaries: vec![plugin_binary("berth-ipam")],
                    ..Default::default()
                },
            )
            .unwrap_or_else(|e| panic!("node {name} starts: {e:#}"))
        }));
    }
    let mut started = Vec::new();
    for s in starting {
        started.push(s.await.expect("node start task"));
    }

    // Both nodes create their pods at the same time, each pod on its own CRI connection.
    let mut tasks = Vec::new();
    for node in &started {
        for i in 0..PODS_PER_NODE {
            let cri = node.cri().await.expect("CRI ready");
            let (node_name, pod_name) = (node.name.clone(), format!("{}-{i}", node.name));
            tasks.push(tokio::spawn(place_pod(node_name, cri, pod_name)));
        }
    }
    let mut pods = Vec::new();
    for t in tasks {
        pods.push(t.await.expect("pod task"));
    }

    let distinct: BTreeSet<IpAddr> = pods.iter().map(|p| p.ip).collect();
    assert_eq!(
        distinct.len(),
        pods.len(),
        "two pods got the same address: {:?}",
        pods.iter().map(|p| (&p.node, p.ip)).collect::<Vec<_>>()
    );
    let records = guard.keys(&network);
    for p in &pods {
        let octets = match p.ip {
            IpAddr::V4(v4) => v4.octets(),
            IpAddr::V6(v6) => panic!("{v6} is not from the IPv4 pool"),
        };
        assert!(
            octets[..3] == [10, 97, 0] && (10..=60).contains(&octets[3]),
            "{} is not from the pool's range",
            p.ip
        );
        assert!(
            p.eth0.contains(&format!(" {}/24 ", p.ip)),
            "eth0 of {} on {} lacks {}: {}",
            p.id,
            p.node,
            p.ip,
            p.eth0
        );
        // What IPAM recorded in etcd: the attachment's address, and the lease naming the node.
        let attachment = records.get(&format!("attachments/{}/eth0", p.id));
        assert_eq!(
            attachment.map(String::as_str),
            Some(p.ip.to_string().as_str()),
            "etcd does not record {} for {}: {records:?}",
            p.ip,
            p.id
        );
        let lease: Value = serde_json::from_str(
            records
                .get(&format!("leases/{}", p.ip))
                .unwrap_or_else(|| panic!("no lease for {} in etcd: {records:?}", p.ip)),
        )
        .expect("lease JSON");
        assert_eq!(lease["state"], "allocated", "{lease}");
        assert_eq!(lease["containerID"], p.id.as_str(), "{lease}");
        assert_eq!(lease["node"], p.node.as_str(), "{lease}");
    }

    // Pods gone on both nodes: every address is released (hold 0s) and nothing is left.
    for node in &started {
        let mut cri = node.cri().await.expect("CRI ready");
        cri.teardown_all().await.expect("pods removed");
        assert!(cri.list_pods().await.unwrap().is_empty());
    }
    let left: Vec<String> = guard
        .keys(&network)
        .into_keys()
        .filter(|k| k.starts_with("leases/") || k.starts_with("attachments/"))
        .collect();
    assert!(left.is_empty(), "addresses not released: {left:?}");
    let history = guard.keys(&network);
    let events: Vec<Value> = history
        .iter()
        .filter(|(k, _)| k.starts_with("history/"))
        .map(|(_, v)| serde_json::from_str(v).expect("event JSON"))
        .collect();
    for kind in ["allocate", "release"] {
        let n = events.iter().filter(|e| e["kind"] == kind).count();
        assert_eq!(n, pods.len(), "{kind} events: {events:?}");
    }
    drop(started);
}

/// The shipped (static) berth-ipam reaches etcd by a host name: a static glibc program
/// resolves through `/etc/hosts` and DNS without loading NSS modules, and the endpoint as
/// operators write it (`localhost`, a Service name) must work, not only an address.
#[test]
#[ignore = "needs the test bed's etcd: run by scripts/test"]
fn static_berth_ipam_reaches_etcd_by_host_name() {
    // The server certificate names localhost too, so TLS checks the name as written.
    let mut etcd = etcd();
    let endpoint = etcd.endpoints[0].replace("127.0.0.1", "localhost");
    assert!(endpoint.starts_with("https://localhost:"), "{endpoint}");
    etcd.endpoints = vec![endpoint];
    let prefix = format!("/e2e-static-{}", std::process::id());
    let conf = json!({
        "cniVersion": "1.0.0", "name": "static-etcd", "type": "bridge",
        "ipam": {"type": "berth-ipam", "node": "e2e",
                 "store": etcd.store_json(&prefix, "5s"),
                 "pools": [{"name": "p", "subnet": "10.98.7.0/24", "gateway": "10.98.7.1"}]}
    })
    .to_string();
    let call = |command: &str| {
        let mut child = Command::new(plugin_binary("berth-ipam"))
            .env_clear()
            .envs([
                ("CNI_COMMAND", command),
                ("CNI_CONTAINERID", "static-etcd-1"),
                ("CNI_NETNS", "/var/run/netns/none"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", "/usr/lib/cni"),
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let add = call("ADD");
    assert!(add.status.success(), "ADD: {add:?}");
    let v: Value = serde_json::from_slice(&add.stdout).unwrap();
    let address = v["ips"][0]["address"].as_str().unwrap();
    assert!(address.starts_with("10.98.7."), "{v}");
    let del = call("DEL");
    assert!(del.status.success(), "DEL: {del:?}");
}
