//! The IPAM lifecycle on a real node, with the shipped `cni/examples/bridge.conflist` (a /24,
//! hold 10m, the default stickiness) through CRI, on containerd 2.1 and 1.7:
//!
//! - a lease leaked by a sandbox whose chain failed after berth-cni (a chained plugin missing
//!   from the CNI bin dir: containerd's teardown fails at the same plugin and removes the
//!   sandbox anyway) blocks its sticky pod with code 111 until berth-agent's `[ipam_gc]`
//!   collects it; the pod then starts with its own first address. The agent and containerd are
//!   killed (`kill -9`) and restarted in the middle; a live pod's address is never collected;
//! - churning 600 distinct pods through the /24, one live at a time, never exhausts it (holds
//!   are reclaimed), and a sticky pod re-created afterwards still gets its address back.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use berth_e2e::agent::AgentProcess;
use berth_e2e::testbed::{Containerd, Node, NodeOptions, binary, plugin_binary, workspace_root};
use berth_e2e::{CriClient, PodSpec};
use berth_ipam_core::store::local::LocalStore;
use berth_ipam_core::store::{HistoryLimits, Store};
use berth_ipam_core::{EventKind, Lease, LeaseState};
use serde_json::Value;

/// The name the example conflist's chained plugin gets here: absent from every bin dir until
/// the test "installs" it (a copy of Debian's portmap).
const CHAINED: &str = "portmap-e2e";

/// `cni/examples/bridge.conflist` as shipped, with only what a second node on this machine
/// must change: its bridge and subnet (nodes of parallel tests coexist), its store dir, and
/// the chained plugin's name.
fn example_conflist(bridge: &str, octet: u8, store: &Path) -> String {
    let text = std::fs::read_to_string(workspace_root().join("cni/examples/bridge.conflist"))
        .expect("the example conflist");
    let mut v: Value = serde_json::from_str(&text).expect("the example is JSON");
    let berth = &mut v["plugins"][0];
    berth["bridge"] = bridge.into();
    berth["ipam"]["store"]["dir"] = store.to_str().unwrap().into();
    let pool = &mut berth["ipam"]["pools"][0];
    assert_eq!(
        pool["subnet"], "10.244.0.0/24",
        "the example's pool is a /24"
    );
    pool["subnet"] = format!("10.244.{octet}.0/24").into();
    pool["gateway"] = format!("10.244.{octet}.1").into();
    assert_eq!(v["plugins"][1]["type"], "portmap");
    v["plugins"][1]["type"] = CHAINED.into();
    v.to_string()
}

/// Deletes the node's berth bridge when the test ends (node-down removes only its own).
struct BridgeGuard(String);

impl Drop for BridgeGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.0])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

struct Bed {
    // Dropped in order: the node (pods torn down) before its bridge.
    node: Node,
    _bridge: BridgeGuard,
    cri: CriClient,
    store: PathBuf,
    network: String,
}

async fn bed(name: &str, containerd: Containerd, bridge: &str, octet: u8) -> Bed {
    let guard = BridgeGuard(bridge.to_string());
    // Staged under the chained plugin's name, so the node's bin dirs get it at start.
    let staging = workspace_root().join(".run/testbed/staging").join(name);
    std::fs::create_dir_all(&staging).unwrap();
    let chained = staging.join(CHAINED);
    std::fs::copy("/usr/lib/cni/portmap", &chained).expect("Debian's portmap plugin");
    let node_dir = workspace_root().join(".run/testbed/nodes").join(name);
    let store = node_dir.join("berth-ipam");
    let conflist = example_conflist(bridge, octet, &store);
    let node = Node::start(
        name,
        NodeOptions {
            containerd,
            conflist: Some(conflist.clone()),
            cni_binaries: vec![plugin_binary("berth-cni"), chained],
            ..Default::default()
        },
    )
    .expect("node starts");
    let cri = node.cri().await.expect("CRI ready");
    let network = serde_json::from_str::<Value>(&conflist).unwrap()["name"]
        .as_str()
        .unwrap()
        .to_string();
    Bed {
        node,
        _bridge: guard,
        cri,
        store,
        network,
    }
}

impl Bed {
    fn leases(&self) -> Vec<Lease> {
        LocalStore::new(self.store.clone(), HistoryLimits::default())
            .read(&self.network)
            .expect("the store reads")
            .into_values()
            .collect()
    }

    fn lease_of(&self, pod: &str) -> Option<Lease> {
        self.leases()
            .into_iter()
            .find(|l| l.pod.as_ref().is_some_and(|p| p.name == pod))
    }

    fn history_kinds(&self, ip: IpAddr) -> Vec<EventKind> {
        LocalStore::new(self.store.clone(), HistoryLimits::default())
            .history(&self.network)
            .unwrap()
            .into_iter()
            .filter(|e| e.ip == ip)
            .map(|e| e.kind)
            .collect()
    }

    /// Adds or removes the chained plugin in both bin dirs (containerd 2.1's and 1.7's).
    fn chained_plugin(&self, installed: bool) {
        for dir in ["cni-bin", "cni-bin-1.7"] {
            let path = self.node.dir().join(dir).join(CHAINED);
            if installed {
                let tmp = self.node.dir().join(dir).join(format!(".{CHAINED}.tmp"));
                std::fs::copy("/usr/lib/cni/portmap", &tmp).unwrap();
                std::fs::rename(&tmp, &path).unwrap();
            } else if path.exists() {
                std::fs::remove_file(&path).unwrap();
            }
        }
    }

    async fn run(&mut self, ns: &str, name: &str) -> anyhow::Result<(String, IpAddr)> {
        let pod = self.cri.run_pod(&PodSpec::new(ns, name)).await?;
        let ip = self.cri.pod_ip(&pod.id).await?;
        Ok((pod.id, ip))
    }

    async fn remove(&mut self, id: &str) {
        self.cri.stop_pod(id).await.expect("StopPodSandbox");
        self.cri.remove_pod(id).await.expect("RemovePodSandbox");
    }
}

/// The agent: NRI on the node, `[ipam_gc]` on the node's network, the API on a root-only unix
/// socket with an audit log, root as admin.
fn agent_config(work: &Path, conflist: &Path, interval: &str) -> PathBuf {
    std::fs::create_dir_all(work).unwrap();
    let policy = work.join("policy.toml");
    std::fs::write(
        &policy,
        "[roles.admin]\nmethods = [\"*\"]\nnamespaces = [\"*\"]\n\
         [[bindings]]\nrole = \"admin\"\nidentities = [\"unix:uid:0\"]\n",
    )
    .unwrap();
    let config = work.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "ipam_network = {conflist:?}\n\
             [ipam_gc]\ninterval = {interval:?}\ngrace = \"30s\"\n\
             [faketime]\nenabled = false\n\
             [api]\nunix_socket = {:?}\npolicy = {policy:?}\n[api.audit]\npath = {:?}\n",
            work.join("api.sock"),
            work.join("audit.jsonl"),
        ),
    )
    .unwrap();
    config
}

fn start_agent(node: &Node, work: &Path, config: &Path) -> AgentProcess {
    AgentProcess::start(
        node,
        config,
        &work.join("logs"),
        &work.join("state"),
        &work.join("agent.log"),
    )
}

/// `berthctl --endpoint unix://<socket> ipam gc [args]`: (exit ok, output).
fn berthctl(work: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(binary("berthctl"))
        .arg("--endpoint")
        .arg(format!("unix://{}", work.join("api.sock").display()))
        .args(args)
        .env("HOME", "/nonexistent")
        .output()
        .expect("berthctl runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `kill -9` of the agent and of containerd; both come back, and the agent has registered
/// `registrations` times in all.
async fn restart_both(
    b: &mut Bed,
    agent: AgentProcess,
    work: &Path,
    config: &Path,
    registrations: usize,
) -> AgentProcess {
    drop(agent);
    b.node.kill_containerd().unwrap();
    b.node.restart_containerd().unwrap();
    b.cri = b.node.cri().await.expect("CRI ready again");
    let agent = start_agent(&b.node, work, config);
    agent.wait_ready(registrations);
    agent
}

async fn a_leaked_lease_is_collected_and_its_pod_gets_its_address_back(
    name: &str,
    containerd: Containerd,
    bridge: &str,
    octet: u8,
) {
    let mut b = bed(name, containerd, bridge, octet).await;
    let work = b.node.dir().join("agent");
    let conflist = b.node.cni_conf_dir().join("10-net.conflist");
    let config = agent_config(&work, &conflist, "2s");
    let agent = start_agent(&b.node, &work, &config);
    agent.wait_ready(1);

    // A live pod, while the chain works.
    let (live_id, live_ip) = b.run("shop", "db-0").await.expect("db-0 runs");

    // containerd 1.7 keeps a sandbox whose network setup failed (NotReady) and lists it at
    // NRI Synchronize, where 2.1 removes it. An agent that (re)connects after the failure
    // therefore counts it as existing until kubelet stops it — and kubelet's stop runs the
    // DEL that frees the lease itself once the chain works. So on 1.7 the restarts come
    // before the failure, and the agent collects a lease it never saw run.
    let restart_after_leak = containerd == Containerd::V2_1;
    let mut agent = agent;
    if !restart_after_leak {
        agent = restart_both(&mut b, agent, &work, &config, 2).await;
    }

    // The chained plugin goes missing: RunPodSandbox fails after berth-cni's ADD, and the
    // teardown fails at the same plugin. berth's lease outlives the sandbox.
    b.chained_plugin(false);
    let err = b
        .run("shop", "web-0")
        .await
        .expect_err("the chain is broken");
    assert!(format!("{err:#}").contains(CHAINED), "{err:#}");
    let leaked = b
        .lease_of("web-0")
        .expect("the failed sandbox left its lease");
    let (leaked_sandbox, _) = leaked.attachment().expect("still allocated");
    let leaked_sandbox = leaked_sandbox.to_string();
    // 2.1 removes the failed sandbox; 1.7 keeps it, never ready.
    let ready: Vec<String> = b
        .cri
        .list_pods()
        .await
        .unwrap()
        .into_iter()
        .filter(|p| p.state == 0)
        .map(|p| p.id)
        .collect();
    assert!(
        !ready.contains(&leaked_sandbox),
        "the failed sandbox never became ready: {ready:?}"
    );

    // The operator installs the plugin; the pod is still blocked by its own leaked lease.
    b.chained_plugin(true);
    let blocked = b
        .run("shop", "web-0")
        .await
        .expect_err("blocked by the leak");
    assert!(
        format!("{blocked:#}").contains("still has it on sandbox"),
        "{blocked:#}"
    );

    // Within the grace the lease is never collected: it could be an ADD in flight.
    let (ok, text) = berthctl(&work, &["ipam", "gc", "--dry-run"]);
    assert!(ok, "{text}");
    assert!(text.contains("would collect 0"), "{text}");

    // kill -9 of the agent and of containerd in the middle; both come back.
    if restart_after_leak {
        agent = restart_both(&mut b, agent, &work, &config, 2).await;
    }

    // Within interval + grace (plus the restarts) the pod starts with its own first address.
    let deadline = Instant::now() + Duration::from_secs(90);
    let (web_id, web_ip) = loop {
        match b.run("shop", "web-0").await {
            Ok(ok) => break ok,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "web-0 still blocked after 90 s: {e:#}\nagent log:\n{}",
                    agent.log_text()
                );
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    assert_eq!(web_ip, leaked.ip, "web-0 came back with another address");

    // The live pod was never touched.
    assert_eq!(b.cri.pod_ip(&live_id).await.unwrap(), live_ip);
    let live = b.lease_of("db-0").unwrap();
    assert_eq!(
        live.attachment().map(|(s, _)| s.to_string()),
        Some(live_id.clone())
    );
    assert!(!b.history_kinds(live_ip).contains(&EventKind::Gc));
    assert!(b.history_kinds(leaked.ip).contains(&EventKind::Gc));

    // Logged and audited, with the pod, sandbox and address.
    let log = agent.log_text();
    assert!(
        log.lines().any(|l| l.contains("collected a leaked address")
            && l.contains(&leaked_sandbox)
            && l.contains("shop/web-0")),
        "{log}"
    );
    let audit = std::fs::read_to_string(work.join("audit.jsonl")).unwrap();
    assert!(
        audit.lines().any(|l| l.contains("\"event\":\"ipam-gc\"")
            && l.contains(&leaked_sandbox)
            && l.contains(&leaked.ip.to_string())),
        "{audit}"
    );
    // The call itself is audited too.
    assert!(audit.contains("/berth.v1.Ipam/Gc"), "{audit}");
    let (ok, text) = berthctl(&work, &["ipam", "history", "-n", "shop", "--pod", "web-0"]);
    assert!(ok && text.contains("gc"), "{text}");

    b.remove(&web_id).await;
    b.remove(&live_id).await;
    // Nothing allocated is left; the sticky pods' addresses are held.
    assert!(
        b.leases()
            .iter()
            .all(|l| matches!(l.state, LeaseState::Held { .. })),
        "{:?}",
        b.leases()
    );
}

#[tokio::test]
#[ignore = "needs root and the test bed: run by scripts/test"]
async fn a_leaked_lease_is_collected_on_containerd_2_1() {
    a_leaked_lease_is_collected_and_its_pod_gets_its_address_back(
        "ipam-gc-21",
        Containerd::V2_1,
        "berthgc21",
        121,
    )
    .await;
}

#[tokio::test]
#[ignore = "needs root and the test bed: run by scripts/test"]
async fn a_leaked_lease_is_collected_on_containerd_1_7() {
    a_leaked_lease_is_collected_and_its_pod_gets_its_address_back(
        "ipam-gc-17",
        Containerd::V1_7,
        "berthgc17",
        117,
    )
    .await;
}

async fn churn_never_exhausts_the_example_pool(
    name: &str,
    containerd: Containerd,
    bridge: &str,
    octet: u8,
) {
    let mut b = bed(name, containerd, bridge, octet).await;
    const PODS: usize = 600;
    let started = Instant::now();
    for i in 0..PODS {
        let (id, _) = b
            .run("churn", &format!("job-{i}"))
            .await
            .unwrap_or_else(|e| panic!("ADD {i} of {PODS} failed: {e:#}"));
        b.remove(&id).await;
    }
    eprintln!("{PODS} pods through the /24 in {:?}", started.elapsed());
    let leases = b.leases();
    assert!(leases.len() <= 253, "{} leases in a /24", leases.len());
    let history = LocalStore::new(b.store.clone(), HistoryLimits::default())
        .history(&b.network)
        .unwrap();
    assert!(
        history.iter().any(|e| e.kind == EventKind::Reclaimed),
        "600 sticky pods through 253 addresses must have reclaimed holds"
    );

    // A sticky pod re-created while the pool has room for it gets its address back.
    let (first_id, first_ip) = b.run("shop", "web-0").await.unwrap();
    b.remove(&first_id).await;
    let (again_id, again_ip) = b.run("shop", "web-0").await.unwrap();
    assert_eq!(again_ip, first_ip);
    b.remove(&again_id).await;
}

#[tokio::test]
#[ignore = "needs root and the test bed: run by scripts/test"]
async fn churn_never_exhausts_the_example_pool_on_containerd_2_1() {
    churn_never_exhausts_the_example_pool("ipam-churn-21", Containerd::V2_1, "berthch21", 221)
        .await;
}

#[tokio::test]
#[ignore = "needs root and the test bed: run by scripts/test"]
async fn churn_never_exhausts_the_example_pool_on_containerd_1_7() {
    churn_never_exhausts_the_example_pool("ipam-churn-17", Containerd::V1_7, "berthch17", 217)
        .await;
}
