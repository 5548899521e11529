//! `Ipam::collect_leaked`: what a node agent frees when a runtime that never calls CNI GC
//! (containerd) loses a sandbox without a successful DEL.

use std::sync::Arc;
use std::time::Duration;

use berth_ipam_core::store::memory::MemoryStore;
use berth_ipam_core::store::{HistoryLimits, Store};
use berth_ipam_core::{
    AllocateRequest, Allocator, EventKind, HistoryQuery, Ipam, IpamConfig, LeaseState, ManualClock,
    NodeInfo, PodIdentity,
};
use chrono::{TimeZone, Utc};
use serde_json::json;

const GRACE: Duration = Duration::from_secs(120);

fn config() -> IpamConfig {
    IpamConfig::from_json(&json!({
        "hold": "10m",
        "pools": [{"name": "node", "subnet": "10.244.0.0/24", "gateway": "10.244.0.1"}]
    }))
    .unwrap()
}

struct Bed {
    clock: Arc<ManualClock>,
    store: Arc<MemoryStore>,
    n1: Ipam,
    n2: Ipam,
}

/// Two nodes on one store (as on etcd), each with its own identity.
fn bed() -> Bed {
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
    ));
    let store = Arc::new(MemoryStore::new(HistoryLimits::default()));
    let node = |n: &str| NodeInfo {
        node: n.into(),
        rack: None,
    };
    let n1 = Ipam::new(&config(), node("n1"), store.clone(), clock.clone()).unwrap();
    let n2 = Ipam::new(&config(), node("n2"), store.clone(), clock.clone()).unwrap();
    Bed {
        clock,
        store,
        n1,
        n2,
    }
}

fn add(ipam: &Ipam, sandbox: &str, pod: &str) -> std::net::IpAddr {
    ipam.allocate(&AllocateRequest {
        network: "net".into(),
        container_id: sandbox.into(),
        ifname: "eth0".into(),
        pod: Some(PodIdentity {
            namespace: "shop".into(),
            name: pod.into(),
            uid: None,
        }),
        ..Default::default()
    })
    .unwrap()[0]
        .address
        .addr()
}

#[test]
fn collects_only_unknown_sandboxes_older_than_the_grace() {
    let b = bed();
    let leaked = add(&b.n1, "gone", "web-0");
    let live = add(&b.n1, "live", "web-1");
    b.clock.advance(chrono::Duration::seconds(119));
    // An ADD still in flight: its sandbox is not known yet, but it is young.
    let in_flight = add(&b.n1, "in-flight", "web-2");
    let is_live = |s: &str| s == "live";

    // Not yet past the grace: nothing.
    let r =
        b.n1.collect_leaked("net", &is_live, GRACE, false, false)
            .unwrap();
    assert!(r.collected.is_empty(), "{r:?}");

    b.clock.advance(chrono::Duration::seconds(2));
    let dry =
        b.n1.collect_leaked("net", &is_live, GRACE, false, true)
            .unwrap();
    assert_eq!(dry.released, vec![leaked]);
    let before = b.store.read("net").unwrap();
    assert!(
        matches!(before[&leaked].state, LeaseState::Allocated { .. }),
        "a dry run writes nothing"
    );

    let r =
        b.n1.collect_leaked("net", &is_live, GRACE, false, false)
            .unwrap();
    assert_eq!(r.released, vec![leaked]);
    assert_eq!(r.collected[0].attachment(), Some(("gone", "eth0")));
    assert_eq!(r.collected[0].pod.as_ref().unwrap().name, "web-0");
    let after = b.store.read("net").unwrap();
    // The sticky pod's address went into its hold, not to the next pod.
    assert!(matches!(after[&leaked].state, LeaseState::Held { .. }));
    assert!(matches!(after[&live].state, LeaseState::Allocated { .. }));
    assert!(matches!(
        after[&in_flight].state,
        LeaseState::Allocated { .. }
    ));
    let gc =
        b.n1.history(
            "net",
            &HistoryQuery {
                ip: Some(leaked),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(gc.last().unwrap().kind, EventKind::Gc);

    // The pod comes back with a new sandbox: its own address.
    assert_eq!(add(&b.n1, "again", "web-0"), leaked);
}

#[test]
fn on_a_shared_store_a_node_collects_only_its_own_leases() {
    let b = bed();
    let mine = add(&b.n1, "mine", "a-0");
    let theirs = add(&b.n2, "theirs", "b-0");
    b.clock.advance(chrono::Duration::minutes(5));
    // n1's runtime knows neither sandbox (n2's pods run on n2).
    let r =
        b.n1.collect_leaked("net", &|_| false, GRACE, true, false)
            .unwrap();
    assert_eq!(r.released, vec![mine]);
    let after = b.store.read("net").unwrap();
    assert!(matches!(after[&theirs].state, LeaseState::Allocated { .. }));
}

#[test]
fn many_leaks_are_collected_in_bounded_batches() {
    let b = bed();
    let leaked: Vec<_> = (0..60)
        .map(|i| add(&b.n1, &format!("s{i}"), &format!("p-{i}")))
        .collect();
    b.clock.advance(chrono::Duration::minutes(5));
    let r =
        b.n1.collect_leaked("net", &|_| false, GRACE, false, false)
            .unwrap();
    let mut got = r.released.clone();
    got.sort();
    let mut want = leaked.clone();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(r.collected.len(), 60);
}
