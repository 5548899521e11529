//! Node-affine blocks on a real etcd: an ADD costs the same requests in an empty network and
//! in one with thousands of leases; nodes allocate in their own blocks and borrow when none is
//! left; a sticky pod keeps its address on another node; a network written by the first etcd
//! store is read as it is and indexed once.

mod conformance;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use berth_ipam_core::store::etcd::EtcdStore;
use berth_ipam_core::store::{HistoryLimits, Store};
use berth_ipam_core::testsupport::EtcdServer;
use berth_ipam_core::{
    AllocateRequest, Allocator, Ipam, IpamConfig, Lease, LeaseState, ManualClock, NodeInfo, Sticky,
};
use serde_json::json;

fn store(etcd: &EtcdServer, prefix: &str, block: u32) -> Arc<EtcdStore> {
    Arc::new(
        EtcdStore::connect(
            std::slice::from_ref(&etcd.endpoint),
            prefix,
            Duration::from_secs(5),
            HistoryLimits::default(),
        )
        .unwrap()
        .with_block_addresses(block)
        .unwrap(),
    )
}

fn ipam(store: Arc<EtcdStore>, node: &str, subnet: &str) -> Ipam {
    let gateway = subnet.replace(".0/", ".1/");
    let gateway = gateway.split('/').next().unwrap();
    let config = IpamConfig::from_json(&json!({
        "hold": "10m",
        "pools": [{"name": "a", "subnet": subnet, "gateway": gateway}]
    }))
    .unwrap();
    let node = NodeInfo {
        node: node.into(),
        rack: Some("r1".into()),
    };
    let clock = Arc::new(ManualClock::new(conformance::t0()));
    Ipam::new(&config, node, store, clock).unwrap()
}

fn req(cid: &str, pod: Option<&str>) -> AllocateRequest {
    conformance::req("net1", cid, pod)
}

fn ip_of(ipam: &Ipam, r: &AllocateRequest) -> IpAddr {
    ipam.allocate(r).unwrap()[0].address.addr()
}

/// Requests one ADD and one DEL send, after the node has its block: the most common count
/// of 9 (about one commit in 200 also prunes the history, two requests more).
fn requests_per_add_and_del(s: &EtcdStore, ipam: &Ipam, tag: &str) -> (u64, u64) {
    let mut adds = Vec::new();
    let mut dels = Vec::new();
    for i in 0..9 {
        let cid = format!("{tag}-{i}");
        let before = s.round_trips();
        ipam.allocate(&req(&cid, None)).unwrap();
        let mid = s.round_trips();
        ipam.release("net1", &cid, "eth0").unwrap();
        adds.push(mid - before);
        dels.push(s.round_trips() - mid);
    }
    let mode = |v: &[u64]| {
        let mut counts = BTreeMap::new();
        for x in v {
            *counts.entry(*x).or_insert(0) += 1;
        }
        let (value, n) = counts.into_iter().max_by_key(|(_, n)| *n).unwrap();
        assert!(n >= 7, "requests per call vary: {v:?}");
        value
    };
    (mode(&adds), mode(&dels))
}

#[test]
#[ignore = "needs root: run by scripts/test (spawns /usr/bin/etcd)"]
fn an_add_costs_the_same_requests_whatever_the_network_holds() {
    let etcd = EtcdServer::start().unwrap_or_else(|e| panic!("{e}"));
    let s = store(&etcd, "/rt", 64);
    let here = ipam(s.clone(), "here", "10.60.0.0/16");
    here.allocate(&req("warm", None)).unwrap(); // claims this node's first block
    let empty = requests_per_add_and_del(&s, &here, "empty");
    // 1,500 leases of 15 other nodes.
    let writers: Vec<_> = (0..5)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                for n in 0..3 {
                    let other = ipam(s.clone(), &format!("other-{t}-{n}"), "10.60.0.0/16");
                    for i in 0..100 {
                        other
                            .allocate(&req(&format!("o{t}-{n}-{i}"), None))
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    assert_eq!(s.read("net1").unwrap().len(), 1501);
    let full = requests_per_add_and_del(&s, &here, "full");
    assert_eq!(
        empty, full,
        "(ADD, DEL) requests in an empty vs a full network"
    );
    assert!(
        empty.0 <= 3 && empty.1 <= 3,
        "(ADD, DEL) requests: {empty:?}"
    );
}

#[test]
#[ignore = "needs root: run by scripts/test (spawns /usr/bin/etcd)"]
fn nodes_allocate_in_their_own_blocks_and_borrow_when_none_is_left() {
    let etcd = EtcdServer::start().unwrap_or_else(|e| panic!("{e}"));
    // A /26 in blocks of 16: four blocks, the first and last lose one address each.
    let s = store(&etcd, "/aff", 16);
    let nodes: Vec<Ipam> = (0..4)
        .map(|n| ipam(s.clone(), &format!("n{n}"), "10.61.0.0/26"))
        .collect();
    let block_of = |ip: IpAddr| match ip {
        IpAddr::V4(a) => a.octets()[3] / 16,
        IpAddr::V6(_) => unreachable!(),
    };
    let mut blocks = BTreeMap::new();
    for (n, node) in nodes.iter().enumerate() {
        let ips: BTreeSet<u8> = (0..8)
            .map(|i| block_of(ip_of(node, &req(&format!("n{n}-{i}"), None))))
            .collect();
        assert_eq!(ips.len(), 1, "node n{n} stays in one block: {ips:?}");
        blocks.insert(n, *ips.first().unwrap());
    }
    let distinct: BTreeSet<_> = blocks.values().collect();
    assert_eq!(
        distinct.len(),
        4,
        "each node has a block of its own: {blocks:?}"
    );
    // A fifth node finds no block left to claim and borrows; node 0 fills its block, then
    // borrows too. Every usable address is handed out exactly once.
    let fifth = ipam(s.clone(), "n4", "10.61.0.0/26");
    let borrowed = ip_of(&fifth, &req("n4-0", None));
    assert!(blocks.values().any(|b| *b == block_of(borrowed)));
    let mut i = 8;
    while nodes[0].allocate(&req(&format!("n0-{i}"), None)).is_ok() {
        i += 1;
    }
    let leases = s.read("net1").unwrap();
    // 64 addresses minus network, gateway and broadcast.
    assert_eq!(leases.len(), 61, "the pool is full, and nothing twice");
    let err = fifth.allocate(&req("n4-1", None)).unwrap_err();
    assert_eq!(err.cni_code(), 110, "{err}");
}

#[test]
#[ignore = "needs root: run by scripts/test (spawns /usr/bin/etcd)"]
fn a_sticky_pod_keeps_its_address_on_another_node() {
    let etcd = EtcdServer::start().unwrap_or_else(|e| panic!("{e}"));
    let s = store(&etcd, "/sticky", 64);
    let a = ipam(s.clone(), "node-a", "10.62.0.0/24");
    let b = ipam(s.clone(), "node-b", "10.62.0.0/24");
    let first = ip_of(&a, &req("sandbox-1", Some("web-0")));
    for i in 0..5 {
        ip_of(&b, &req(&format!("b-{i}"), None));
    }
    a.release("net1", "sandbox-1", "eth0").unwrap();
    // Rescheduled onto node b: the hold lies in node a's block, and b takes it.
    let again = ip_of(&b, &req("sandbox-2", Some("web-0")));
    assert_eq!(again, first);
    // While it runs on b, nobody else gets it from a's block.
    for i in 0..20 {
        assert_ne!(ip_of(&a, &req(&format!("a-{i}"), None)), first);
    }
    b.release("net1", "sandbox-2", "eth0").unwrap();
    assert_eq!(ip_of(&a, &req("sandbox-3", Some("web-0"))), first);
}

/// What the first etcd store wrote: leases and attachment keys, no sticky index, no blocks.
fn write_old_layout(etcd: &EtcdServer, prefix: &str, leases: &[Lease]) {
    let mut pairs = Vec::new();
    for l in leases {
        let lease = serde_json::to_vec(l).unwrap();
        pairs.push((format!("{prefix}/net1/leases/{}", l.ip), lease));
        if let Some((cid, ifname)) = l.attachment() {
            let key = format!("{prefix}/net1/attachments/{cid}/{ifname}");
            pairs.push((key, l.ip.to_string().into_bytes()));
        }
    }
    conformance::etcd_put(&etcd.endpoint, &pairs);
}

fn old_lease(ip: &str, state: LeaseState, sticky: Option<&str>) -> Lease {
    Lease {
        ip: ip.parse().unwrap(),
        pool: "a".into(),
        state,
        sticky: sticky.map(|n| Sticky {
            namespace: "ns".into(),
            name: n.into(),
            ifname: Some("eth0".into()),
        }),
        pod: None,
        node: "old-node".into(),
        rack: None,
        since: conformance::t0(),
        pinned: false,
    }
}

#[test]
#[ignore = "needs root: run by scripts/test (spawns /usr/bin/etcd)"]
fn a_network_of_the_first_etcd_store_is_read_and_indexed_once() {
    let etcd = EtcdServer::start().unwrap_or_else(|e| panic!("{e}"));
    let held_until = conformance::t0() + chrono::Duration::minutes(5);
    let old = vec![
        old_lease(
            "10.63.0.7",
            LeaseState::Held { until: held_until },
            Some("db-0"),
        ),
        old_lease(
            "10.63.0.8",
            LeaseState::Allocated {
                container_id: "old-sandbox".into(),
                ifname: "eth0".into(),
            },
            Some("db-1"),
        ),
    ];
    write_old_layout(&etcd, "/old", &old);
    let s = store(&etcd, "/old", 4);
    let new = ipam(s.clone(), "new-node", "10.63.0.0/28");
    // The old sandbox's attachment is found (CHECK and an idempotent ADD).
    assert_eq!(
        new.lookup("net1", "old-sandbox", "eth0").unwrap()[0]
            .address
            .addr(),
        old[1].ip
    );
    // The pod held by the old store gets its address back; that decision indexes the network.
    assert_eq!(ip_of(&new, &req("db0-again", Some("db-0"))), old[0].ip);
    let keys = conformance::etcd_keys(&etcd.endpoint, "/old/net1/");
    assert_eq!(keys.get("/old/net1/layout").map(String::as_str), Some("2"));
    assert!(
        keys.contains_key("/old/net1/sticky/ns/db-0/10.63.0.7"),
        "{keys:?}"
    );
    assert!(
        keys.contains_key("/old/net1/sticky/ns/db-1/10.63.0.8"),
        "{keys:?}"
    );
    assert!(
        !keys.contains_key("/old/net1/migration"),
        "the lock is gone"
    );
    // New pods never get the old store's addresses.
    let mut got = BTreeSet::new();
    while let Ok(a) = new.allocate(&req(&format!("fill-{}", got.len()), None)) {
        got.insert(a[0].address.addr());
    }
    assert!(!got.contains(&old[0].ip) && !got.contains(&old[1].ip));
    assert_eq!(
        got.len(),
        11,
        "a /28 less network, gateway, broadcast and the two"
    );
}

/// Nodes come and go (autoscaling, replacements): a block that has held nothing for a while
/// is given back by a GC, so the pool does not end up claimed by nodes that are gone, while a
/// block that still holds an allocation or a hold stays with its node.
#[test]
#[ignore = "needs root: run by scripts/test (spawns /usr/bin/etcd)"]
fn garbage_collection_gives_back_blocks_that_stay_empty() {
    let etcd = EtcdServer::start().unwrap_or_else(|e| panic!("{e}"));
    let s = store(&etcd, "/tidy", 16);
    let config = |node: &str| {
        let c = IpamConfig::from_json(&json!({
            "hold": "1h",
            "pools": [{"name": "a", "subnet": "10.64.0.0/26", "gateway": "10.64.0.1"}]
        }))
        .unwrap();
        let n = NodeInfo {
            node: node.into(),
            rack: None,
        };
        (c, n)
    };
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let open = |node: &str| {
        let (c, n) = config(node);
        Ipam::new(&c, n, s.clone(), clock.clone()).unwrap()
    };
    // A new network: indexed at once, so the sticky pod below is placed in its node's block.
    assert!(s.migrate("net1", "test").unwrap());
    let gone = open("gone");
    let stays = open("stays");
    gone.allocate(&req("gone-1", None)).unwrap();
    gone.release("net1", "gone-1", "eth0").unwrap();
    stays.allocate(&req("stays-1", None)).unwrap();
    let sticky = open("sticky");
    sticky.allocate(&req("sticky-1", Some("db-0"))).unwrap();
    sticky.release("net1", "sticky-1", "eth0").unwrap(); // a hold: its block is not empty
    let owners = |s: &EtcdStore| {
        s.block_claims("net1")
            .unwrap()
            .into_iter()
            .map(|c| c.node)
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(
        owners(&s),
        ["gone", "stays", "sticky"].map(String::from).into()
    );
    // Within the grace nothing is given back.
    stays
        .gc(
            "net1",
            &[berth_ipam_core::Attachment {
                container_id: "stays-1".into(),
                ifname: "eth0".into(),
            }],
        )
        .unwrap();
    assert_eq!(owners(&s).len(), 3);
    clock.advance(chrono::Duration::minutes(11));
    stays
        .gc(
            "net1",
            &[berth_ipam_core::Attachment {
                container_id: "stays-1".into(),
                ifname: "eth0".into(),
            }],
        )
        .unwrap();
    assert_eq!(owners(&s), ["stays", "sticky"].map(String::from).into());
    // The node that is gone has no block left in its list either; another node claims it.
    let new = open("new");
    for i in 0..3 {
        new.allocate(&req(&format!("new-{i}"), None)).unwrap();
    }
    assert!(owners(&s).contains("new"));
}

/// Before dual-stack, an IPv6-only attachment was guarded by the key IPv4 keeps
/// (`attachments/<c>/<i>`): it is still found, and its DEL removes that key too.
#[test]
#[ignore = "needs root: run by scripts/test (spawns /usr/bin/etcd)"]
fn an_ipv6_attachment_of_the_first_layout_is_found_and_released() {
    let etcd = EtcdServer::start().unwrap_or_else(|e| panic!("{e}"));
    let mut old = old_lease(
        "fd00:65::9",
        LeaseState::Allocated {
            container_id: "v6-sandbox".into(),
            ifname: "eth0".into(),
        },
        None,
    );
    old.pool = "six".into();
    write_old_layout(&etcd, "/old6", std::slice::from_ref(&old));
    let s = store(&etcd, "/old6", 64);
    let config = IpamConfig::from_json(&json!({
        "pools": [{"name": "six", "subnet": "fd00:65::/120", "gateway": "fd00:65::1"}]
    }))
    .unwrap();
    let node = NodeInfo {
        node: "new-node".into(),
        rack: None,
    };
    let clock = Arc::new(ManualClock::new(conformance::t0()));
    let ipam = Ipam::new(&config, node, s.clone(), clock).unwrap();
    let found = ipam.lookup("net1", "v6-sandbox", "eth0").unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].address.addr(), old.ip);
    // ADD again is idempotent: the same address, nothing new.
    assert_eq!(ip_of(&ipam, &req("v6-sandbox", None)), old.ip);
    ipam.release("net1", "v6-sandbox", "eth0").unwrap();
    assert!(s.read("net1").unwrap().is_empty());
    let left = conformance::etcd_keys(&etcd.endpoint, "/old6/net1/attachments/").len();
    assert_eq!(left, 0, "no attachment key is left behind");
    // The sandbox can come back and gets an address of the pool again.
    assert!(ipam.allocate(&req("v6-sandbox", None)).is_ok());
}
