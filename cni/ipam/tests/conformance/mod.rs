//! The one store conformance suite: every `Store` implementation must pass all of it.
#![allow(dead_code)] // each test file uses a part of the shared helpers

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use berth_ipam_core::state::{Leases, Plan};
use berth_ipam_core::store::Store;
use berth_ipam_core::{
    AllocateRequest, Allocation, Allocator, Event, EventKind, HistoryQuery, Ipam, IpamConfig,
    IpamError, Lease, LeaseState, ManualClock, NodeInfo, PodIdentity,
};
use chrono::{TimeZone, Utc};
use serde_json::json;

/// The one address of a single-stack allocation.
pub trait AllocateOne {
    fn allocate_one(&self, r: &AllocateRequest) -> Result<Allocation, IpamError>;
}

impl<A: Allocator + ?Sized> AllocateOne for A {
    fn allocate_one(&self, r: &AllocateRequest) -> Result<Allocation, IpamError> {
        let mut all = self.allocate(r)?;
        assert_eq!(
            all.len(),
            1,
            "a single-stack network gives one address: {all:?}"
        );
        Ok(all.remove(0))
    }
}

pub fn t0() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
}

pub fn config() -> IpamConfig {
    IpamConfig::from_json(&json!({
        "hold": "10m",
        "history": {"maxEvents": 50},
        "pools": [{"name": "a", "subnet": "10.50.0.0/24", "gateway": "10.50.0.1"}]
    }))
    .unwrap()
}

pub fn node() -> NodeInfo {
    NodeInfo {
        node: "n1".into(),
        rack: Some("r1".into()),
    }
}

pub fn ipam(store: Arc<dyn Store>, clock: Arc<ManualClock>) -> Ipam {
    Ipam::new(&config(), node(), store, clock).unwrap()
}

pub fn req(net: &str, cid: &str, pod: Option<&str>) -> AllocateRequest {
    AllocateRequest {
        network: net.into(),
        container_id: cid.into(),
        ifname: "eth0".into(),
        pod: pod.map(|n| PodIdentity {
            namespace: "ns".into(),
            name: n.into(),
            uid: None,
        }),
        annotations: BTreeMap::new(),
        pools: vec![],
    }
}

/// Writes keys straight into etcd, as another program (or an older berth) would.
pub fn etcd_put(endpoint: &str, pairs: &[(String, Vec<u8>)]) {
    with_etcd(endpoint, |mut c| async move {
        for (k, v) in pairs {
            c.put(k.as_str(), v.clone(), None).await.unwrap();
        }
    });
}

/// Every key under `prefix` with its value, read straight from etcd.
pub fn etcd_keys(endpoint: &str, prefix: &str) -> BTreeMap<String, String> {
    with_etcd(endpoint, |mut c| async move {
        let r = c
            .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
            .await
            .unwrap();
        r.kvs()
            .iter()
            .map(|kv| {
                (
                    kv.key_str().unwrap().to_string(),
                    kv.value_str().unwrap().to_string(),
                )
            })
            .collect()
    })
}

fn with_etcd<T, F, Fut>(endpoint: &str, f: F) -> T
where
    F: FnOnce(etcd_client::Client) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = etcd_client::Client::connect([endpoint.to_string()], None)
            .await
            .unwrap();
        f(c).await
    })
}

fn lease(ip: &str, cid: &str) -> Lease {
    Lease {
        ip: ip.parse().unwrap(),
        pool: "a".into(),
        state: LeaseState::Allocated {
            container_id: cid.into(),
            ifname: "eth0".into(),
        },
        sticky: None,
        pod: None,
        node: "n1".into(),
        rack: None,
        since: t0(),
        pinned: false,
    }
}

fn event(ip: &str, n: i64) -> Event {
    Event {
        time: t0() + chrono::Duration::seconds(n),
        kind: EventKind::Allocate,
        ip: ip.parse().unwrap(),
        pool: "a".into(),
        pod: None,
        sticky: None,
        container_id: Some(format!("c{n}")),
        ifname: Some("eth0".into()),
        node: "n1".into(),
        rack: None,
        detail: None,
    }
}

fn commit(store: &dyn Store, net: &str, plan: Plan) {
    store.transact(net, &mut |_| Ok(plan.clone())).unwrap();
}

/// Puts, replaces and deletes are visible to the next read; networks are separate.
pub fn put_replace_delete(store: &dyn Store) {
    assert_eq!(store.read("conf-a").unwrap(), Leases::new());
    commit(
        store,
        "conf-a",
        Plan {
            puts: vec![lease("10.50.0.2", "c1"), lease("10.50.0.3", "c2")],
            ..Plan::default()
        },
    );
    let got = store.read("conf-a").unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(
        got[&"10.50.0.2".parse::<IpAddr>().unwrap()],
        lease("10.50.0.2", "c1")
    );
    commit(
        store,
        "conf-a",
        Plan {
            puts: vec![lease("10.50.0.2", "c9")],
            deletes: vec!["10.50.0.3".parse().unwrap()],
            ..Plan::default()
        },
    );
    let got = store.read("conf-a").unwrap();
    assert_eq!(
        got.values().cloned().collect::<Vec<_>>(),
        vec![lease("10.50.0.2", "c9")]
    );
    assert!(
        store.read("conf-b").unwrap().is_empty(),
        "networks do not share leases"
    );
    assert!(store.networks().unwrap().contains(&"conf-a".to_string()));
    store.status().unwrap();
}

/// A decision error aborts the transaction; an empty plan writes nothing.
pub fn failed_or_empty_decisions_write_nothing(store: &dyn Store) {
    commit(
        store,
        "conf-c",
        Plan {
            puts: vec![lease("10.50.0.2", "c1")],
            events: vec![event("10.50.0.2", 1)],
            ..Plan::default()
        },
    );
    let before = (
        store.read("conf-c").unwrap(),
        store.history("conf-c").unwrap(),
    );
    let err = store
        .transact("conf-c", &mut |_| {
            Err(IpamError::Exhausted { pool: "a".into() })
        })
        .unwrap_err();
    assert!(matches!(err, IpamError::Exhausted { .. }));
    store
        .transact("conf-c", &mut |_| Ok(Plan::default()))
        .unwrap();
    assert_eq!(
        (
            store.read("conf-c").unwrap(),
            store.history("conf-c").unwrap()
        ),
        before
    );
}

/// The decision sees the committed state (read-your-writes inside transact).
pub fn decisions_see_committed_state(store: &dyn Store) {
    for i in 0..5 {
        store
            .transact("conf-d", &mut |leases| {
                assert_eq!(
                    leases.all().unwrap().len(),
                    i,
                    "the snapshot holds every earlier commit"
                );
                Ok(Plan {
                    puts: vec![lease(&format!("10.50.0.{}", i + 2), &format!("c{i}"))],
                    ..Plan::default()
                })
            })
            .unwrap();
    }
}

/// History is appended in order and bounded.
pub fn history_in_order_and_bounded(store: &dyn Store, max_events: usize) {
    for n in 0..(max_events as i64 + 10) {
        commit(
            store,
            "conf-h",
            Plan {
                events: vec![event("10.50.0.2", n)],
                ..Plan::default()
            },
        );
    }
    let h = store.history("conf-h").unwrap();
    assert!(
        h.len() <= max_events + max_events,
        "history is bounded (got {})",
        h.len()
    );
    assert!(h.windows(2).all(|w| w[0].time <= w[1].time), "oldest first");
    assert_eq!(
        h.last().unwrap().time,
        t0() + chrono::Duration::seconds(max_events as i64 + 9)
    );
}

/// Bad network names never reach a path or a key.
pub fn refuses_bad_network_names(store: &dyn Store) {
    for bad in ["../etc", "", ".hidden", "a/b"] {
        assert!(
            matches!(store.read(bad), Err(IpamError::InvalidConfig(_))),
            "{bad:?}"
        );
        assert!(
            matches!(
                store.transact(bad, &mut |_| Ok(Plan::default())),
                Err(IpamError::InvalidConfig(_))
            ),
            "{bad:?}"
        );
    }
}

/// The whole allocator on the store: sticky round trip, history query, GC, admin calls.
pub fn allocator_round_trip(store: Arc<dyn Store>) {
    let clock = Arc::new(ManualClock::new(t0()));
    let ipam = ipam(store, clock.clone());
    let a = ipam
        .allocate_one(&req("conf-r", "c1", Some("web-0")))
        .unwrap();
    assert_eq!(
        ipam.lookup("conf-r", "c1", "eth0").unwrap(),
        vec![a.clone()]
    );
    ipam.release("conf-r", "c1", "eth0").unwrap();
    ipam.release("conf-r", "c1", "eth0").unwrap();
    assert_eq!(ipam.lookup("conf-r", "c1", "eth0").unwrap(), vec![]);
    let other = ipam
        .allocate_one(&req("conf-r", "c2", Some("web-1")))
        .unwrap();
    assert_ne!(other.address, a.address, "held for web-0");
    clock.advance(chrono::Duration::minutes(3));
    let back = ipam
        .allocate_one(&req("conf-r", "c3", Some("web-0")))
        .unwrap();
    assert_eq!(back.address, a.address, "web-0 gets its address back");
    let h = ipam
        .history(
            "conf-r",
            &HistoryQuery {
                pod: Some(("ns".into(), "web-0".into())),
                ..Default::default()
            },
        )
        .unwrap();
    let kinds: Vec<EventKind> = h.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [EventKind::Allocate, EventKind::Hold, EventKind::Allocate]
    );
    // GC keeps c3, releases c2.
    let report = ipam
        .gc(
            "conf-r",
            &[berth_ipam_core::Attachment {
                container_id: "c3".into(),
                ifname: "eth0".into(),
            }],
        )
        .unwrap();
    assert_eq!(report.released, vec![other.address.addr()]);
    // Reconcile with the live sandboxes: c3 is gone too now.
    let report = ipam
        .reconcile("conf-r", &["unrelated".to_string()])
        .unwrap();
    assert_eq!(report.released, vec![a.address.addr()]);
    assert_eq!(ipam.lookup("conf-r", "c3", "eth0").unwrap(), vec![]);
    // Admin: reserve, list, show, free.
    let r = ipam
        .reserve(
            "conf-r",
            "10.50.0.200".parse().unwrap(),
            &berth_ipam_core::Reservation {
                note: Some("vip".into()),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(matches!(r.state, LeaseState::Reserved { .. }));
    assert!(ipam.list("conf-r").unwrap().iter().any(|l| l.ip == r.ip));
    assert_eq!(ipam.show("conf-r", r.ip).unwrap(), Some(r.clone()));
    assert_eq!(ipam.release_ip("conf-r", r.ip).unwrap(), Some(r.clone()));
    assert_eq!(ipam.show("conf-r", r.ip).unwrap(), None);
    // Clock skew: a node whose clock is 10 minutes behind is refused, and nothing changes.
    let before = ipam.list("conf-r").unwrap();
    clock.advance(chrono::Duration::minutes(-10));
    assert!(matches!(
        ipam.allocate_one(&req("conf-r", "c4", None)),
        Err(IpamError::ClockSkew { .. })
    ));
    assert_eq!(ipam.list("conf-r").unwrap(), before);
}

/// Threads allocating at once never get the same address, and nothing is lost.
pub fn concurrent_allocations_are_unique(store: Arc<dyn Store>) {
    let ipam = Arc::new(ipam(store, Arc::new(ManualClock::new(t0()))));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let ipam = ipam.clone();
            std::thread::spawn(move || {
                (0..15)
                    .map(|i| {
                        ipam.allocate_one(&req("conf-x", &format!("t{t}-{i}"), None))
                            .unwrap()
                            .address
                            .addr()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let all: Vec<IpAddr> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let unique: BTreeSet<IpAddr> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len(), "no address handed out twice");
    assert_eq!(
        ipam.list("conf-x").unwrap().len(),
        60,
        "every allocation is stored"
    );
}

/// Runs every case against stores made by `make` (a fresh, empty store per case).
pub fn run_all(make: &dyn Fn() -> Arc<dyn Store>, max_events: usize) {
    put_replace_delete(&*make());
    failed_or_empty_decisions_write_nothing(&*make());
    decisions_see_committed_state(&*make());
    history_in_order_and_bounded(&*make(), max_events);
    refuses_bad_network_names(&*make());
    allocator_round_trip(make());
    dual_stack_round_trip(make());
    concurrent_allocations_are_unique(make());
}

/// Dual-stack on the store: one address per family per attachment, both held and given
/// back, both in history, both freed by GC, an explicit pair honoured.
pub fn dual_stack_round_trip(store: Arc<dyn Store>) {
    let clock = Arc::new(ManualClock::new(t0()));
    let config = IpamConfig::from_json(&json!({
        "hold": "10m",
        "pools": [{"name": "a", "subnet": "10.50.0.0/24", "gateway": "10.50.0.1"},
                  {"name": "a6", "subnet": "fd00:50::/64", "gateway": "fd00:50::1"}]
    }))
    .unwrap();
    let ipam = Ipam::new(&config, node(), store, clock.clone()).unwrap();
    let net = "conf-ds";
    let a = ipam.allocate(&req(net, "c1", Some("web-0"))).unwrap();
    assert_eq!(a.len(), 2, "{a:?}");
    assert!(a[0].address.addr().is_ipv4() && a[1].address.addr().is_ipv6());
    assert_eq!(ipam.allocate(&req(net, "c1", Some("web-0"))).unwrap(), a);
    assert_eq!(ipam.lookup(net, "c1", "eth0").unwrap(), a);
    ipam.release(net, "c1", "eth0").unwrap();
    ipam.release(net, "c1", "eth0").unwrap();
    assert_eq!(ipam.lookup(net, "c1", "eth0").unwrap(), vec![]);
    let held: Vec<_> = ipam.list(net).unwrap();
    assert_eq!(held.len(), 2);
    assert!(
        held.iter()
            .all(|l| matches!(l.state, LeaseState::Held { .. }))
    );
    let other = ipam.allocate(&req(net, "c2", Some("web-1"))).unwrap();
    assert!(other.iter().all(|o| !a.contains(o)), "held for web-0");
    let back = ipam.allocate(&req(net, "c3", Some("web-0"))).unwrap();
    assert_eq!(back, a, "web-0 gets both addresses back");
    let mut explicit = req(net, "c4", None);
    explicit.annotations.insert(
        "berth.io/ip".into(),
        "eth0=10.50.0.20,eth0=fd00:50::20".into(),
    );
    let e = ipam.allocate(&explicit).unwrap();
    let got: Vec<String> = e.iter().map(|x| x.address.to_string()).collect();
    assert_eq!(got, ["10.50.0.20/24", "fd00:50::20/64"]);
    // Every address has its own history.
    let v6 = ipam
        .history(
            net,
            &HistoryQuery {
                ip: Some(a[1].address.addr()),
                ..Default::default()
            },
        )
        .unwrap();
    let kinds: Vec<EventKind> = v6.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [EventKind::Allocate, EventKind::Hold, EventKind::Allocate]
    );
    // GC keeps c3 and frees the others, both families.
    let report = ipam
        .gc(
            net,
            &[berth_ipam_core::Attachment {
                container_id: "c3".into(),
                ifname: "eth0".into(),
            }],
        )
        .unwrap();
    let mut freed = report.released.clone();
    freed.sort();
    let mut want: Vec<IpAddr> = other.iter().chain(&e).map(|x| x.address.addr()).collect();
    want.sort();
    assert_eq!(freed, want);
    assert_eq!(ipam.lookup(net, "c3", "eth0").unwrap(), a);
    // The admin calls take IPv6 addresses like IPv4 ones.
    let v6 = a[1].address.addr();
    assert!(matches!(
        ipam.show(net, v6).unwrap().map(|l| l.state),
        Some(LeaseState::Allocated { .. })
    ));
    let spare: IpAddr = "fd00:50::99".parse().unwrap();
    let r = ipam
        .reserve(
            net,
            spare,
            &berth_ipam_core::Reservation {
                pod: Some(("ns".into(), "web-9".into())),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(r.pool, "a6");
    let mut web9 = req(net, "c9", Some("web-9"));
    web9.annotations.clear();
    let got = ipam.allocate(&web9).unwrap();
    assert_eq!(
        got[1].address.addr(),
        spare,
        "the reservation serves its pod"
    );
    assert!(ipam.release_ip(net, spare).unwrap().is_some());
    assert_eq!(ipam.show(net, spare).unwrap(), None);
}
