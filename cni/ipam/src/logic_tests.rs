//! Unit tests of the allocation rules over an in-memory snapshot with an injected time.

use std::collections::BTreeMap;

use chrono::{TimeZone, Utc};
use serde_json::json;

use super::*;
use crate::allocator::PodIdentity;
use crate::config::IpamConfig;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

fn engine(rack: Option<&str>, pools: serde_json::Value) -> Engine {
    let cfg = IpamConfig::from_json(&json!({"hold": "10m", "pools": pools})).unwrap();
    Engine {
        pools: cfg.pools().unwrap(),
        node: NodeInfo {
            node: "n1".into(),
            rack: rack.map(str::to_string),
        },
        hold: chrono::Duration::minutes(10),
        sticky_default: crate::config::StickyDefault::All,
        max_skew: chrono::Duration::seconds(30),
    }
}

fn small() -> Engine {
    engine(
        Some("r1"),
        json!([{"name": "a", "subnet": "10.1.0.0/29", "gateway": "10.1.0.1", "exclude": ["10.1.0.3"],
                "routes": [{"dst": "0.0.0.0/0"}], "vlan": 7}]),
    )
}

fn req(cid: &str, pod: Option<(&str, &str)>) -> AllocateRequest {
    AllocateRequest {
        network: "net".into(),
        container_id: cid.into(),
        ifname: "eth0".into(),
        pod: pod.map(|(ns, n)| PodIdentity {
            namespace: ns.into(),
            name: n.into(),
            uid: Some(format!("uid-{cid}")),
        }),
        annotations: BTreeMap::new(),
        pools: vec![],
    }
}

fn with_ann(mut r: AllocateRequest, k: &str, v: &str) -> AllocateRequest {
    r.annotations.insert(k.into(), v.into());
    r
}

/// Runs an allocation and applies its plan, like a store would; every address.
fn alloc_all(
    e: &Engine,
    leases: &mut Leases,
    r: &AllocateRequest,
    now: DateTime<Utc>,
) -> Result<Vec<Allocation>, IpamError> {
    let (plan, a) = e.allocate(leases, r, now, 0)?;
    plan.apply(leases);
    Ok(a)
}

/// [`alloc_all`] on a single-stack network: its one address.
fn alloc(
    e: &Engine,
    leases: &mut Leases,
    r: &AllocateRequest,
    now: DateTime<Utc>,
) -> Result<Allocation, IpamError> {
    let mut all = alloc_all(e, leases, r, now)?;
    assert_eq!(all.len(), 1, "single-stack: {all:?}");
    Ok(all.remove(0))
}

fn release(e: &Engine, leases: &mut Leases, cid: &str, now: DateTime<Utc>) -> Plan {
    let plan = e.release(leases, cid, "eth0", now).unwrap();
    plan.apply(leases);
    plan
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn allocates_lowest_first_skipping_gateway_and_exclusions_then_exhausts() {
    let e = small();
    let mut l = Leases::new();
    let got: Vec<String> = (0..4)
        .map(|i| {
            alloc(&e, &mut l, &req(&format!("c{i}"), None), t0())
                .unwrap()
                .address
                .to_string()
        })
        .collect();
    assert_eq!(
        got,
        ["10.1.0.2/29", "10.1.0.4/29", "10.1.0.5/29", "10.1.0.6/29"]
    );
    let a = e.allocation_of(&l[&ip("10.1.0.2")]).unwrap();
    assert_eq!(a.gateway, Some(ip("10.1.0.1")));
    assert_eq!(a.vlan, Some(7));
    assert_eq!(a.routes.len(), 1);
    let before = l.clone();
    match alloc(&e, &mut l, &req("c9", None), t0()) {
        Err(IpamError::Exhausted { pool }) => assert_eq!(pool, "a"),
        other => panic!("expected Exhausted, got {other:?}"),
    }
    assert_eq!(l, before, "a failed allocation changes nothing");
}

#[test]
fn same_attachment_gets_same_address_without_writing() {
    let e = small();
    let mut l = Leases::new();
    let a = alloc(&e, &mut l, &req("c1", None), t0()).unwrap();
    let (plan, b) = e.allocate(&l, &req("c1", None), t0(), 0).unwrap();
    assert_eq!(vec![a], b);
    assert!(plan.is_empty());
}

#[test]
fn sticky_pod_gets_its_address_back_and_others_wait_for_the_hold() {
    let e = small();
    let mut l = Leases::new();
    let first = alloc(&e, &mut l, &req("c1", Some(("ns", "web-0"))), t0()).unwrap();
    let plan = release(&e, &mut l, "c1", t0());
    assert_eq!(plan.events[0].kind, EventKind::Hold);
    assert!(matches!(
        l[&first.address.addr()].state,
        LeaseState::Held { .. }
    ));
    // Another pod does not get the held address.
    let other = alloc(&e, &mut l, &req("c2", Some(("ns", "web-1"))), t0()).unwrap();
    assert_ne!(other.address, first.address);
    // The same pod, re-created with a new sandbox, gets it back.
    let again = alloc(
        &e,
        &mut l,
        &req("c3", Some(("ns", "web-0"))),
        t0() + chrono::Duration::minutes(5),
    )
    .unwrap();
    assert_eq!(again.address, first.address);
}

#[test]
fn hold_expires_with_the_injected_clock() {
    let e = engine(None, json!([{"name": "a", "subnet": "10.1.0.0/30"}]));
    let mut l = Leases::new();
    let first = alloc(&e, &mut l, &req("c1", Some(("ns", "a"))), t0()).unwrap();
    let _second = alloc(&e, &mut l, &req("c2", Some(("ns", "b"))), t0()).unwrap();
    release(&e, &mut l, "c1", t0());
    // 9 minutes later the only free address is still held: the full pool reclaims it.
    let nine = t0() + chrono::Duration::minutes(9);
    let (plan, got) = e
        .allocate(&l, &req("c3", Some(("ns", "c"))), nine, 0)
        .unwrap();
    assert_eq!(got[0].address, first.address);
    let kinds: Vec<EventKind> = plan.events.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventKind::Reclaimed, EventKind::Allocate]);
    // 10 minutes later the hold has run out: another pod takes it, and the expiry is recorded.
    let ten = t0() + chrono::Duration::minutes(10);
    let (plan, got) = e
        .allocate(&l, &req("c3", Some(("ns", "c"))), ten, 0)
        .unwrap();
    assert_eq!(got[0].address, first.address);
    let kinds: Vec<EventKind> = plan.events.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventKind::Expire, EventKind::Allocate]);
}

#[test]
fn non_sticky_release_frees_at_once() {
    let e = small();
    let mut l = Leases::new();
    let a = alloc(
        &e,
        &mut l,
        &with_ann(req("c1", Some(("ns", "x"))), ANN_STICKY, "false"),
        t0(),
    )
    .unwrap();
    let plan = release(&e, &mut l, "c1", t0());
    assert_eq!(plan.events[0].kind, EventKind::Release);
    assert!(l.is_empty());
    let b = alloc(&e, &mut l, &req("c2", Some(("ns", "y"))), t0()).unwrap();
    assert_eq!(a.address, b.address);
    // Releasing twice, or something unknown, is fine and changes nothing.
    assert!(e.release(&l, "c1", "eth0", t0()).unwrap().is_empty());
    assert!(e.release(&l, "nope", "eth0", t0()).unwrap().is_empty());
}

#[test]
fn explicit_ip_is_honoured_and_conflicts_are_refused_with_reasons() {
    let e = small();
    let mut l = Leases::new();
    let a = alloc(
        &e,
        &mut l,
        &with_ann(req("c1", Some(("ns", "p1"))), ANN_IP, "10.1.0.5"),
        t0(),
    )
    .unwrap();
    assert_eq!(a.address.to_string(), "10.1.0.5/29");
    let reason = |r: Result<Allocation, IpamError>| match r {
        Err(IpamError::AddressUnavailable { reason, .. }) => reason,
        other => panic!("expected AddressUnavailable, got {other:?}"),
    };
    // In use by another pod.
    let r = reason(alloc(
        &e,
        &mut l,
        &with_ann(req("c2", Some(("ns", "p2"))), ANN_IP, "10.1.0.5"),
        t0(),
    ));
    assert!(r.contains("in use by ns/p1") && r.contains("c1"), "{r}");
    // Held for another pod.
    release(&e, &mut l, "c1", t0());
    let r = reason(alloc(
        &e,
        &mut l,
        &with_ann(req("c2", Some(("ns", "p2"))), ANN_IP, "10.1.0.5"),
        t0(),
    ));
    assert!(r.contains("held for ns/p1"), "{r}");
    // Excluded, gateway, outside the pool.
    assert!(
        reason(alloc(
            &e,
            &mut l,
            &with_ann(req("c3", None), ANN_IP, "10.1.0.3"),
            t0()
        ))
        .contains("excluded")
    );
    assert!(
        reason(alloc(
            &e,
            &mut l,
            &with_ann(req("c3", None), ANN_IP, "10.1.0.1"),
            t0()
        ))
        .contains("gateway")
    );
    assert!(
        reason(alloc(
            &e,
            &mut l,
            &with_ann(req("c3", None), ANN_IP, "10.9.0.1"),
            t0()
        ))
        .contains("outside every configured pool")
    );
    // The owner of the hold may take it back explicitly.
    let back = alloc(
        &e,
        &mut l,
        &with_ann(req("c4", Some(("ns", "p1"))), ANN_IP, "10.1.0.5"),
        t0(),
    )
    .unwrap();
    assert_eq!(back.address, a.address);
    // A bad value is a clear annotation error.
    assert!(matches!(
        alloc(&e, &mut l, &with_ann(req("c5", None), ANN_IP, "ten.one"), t0()),
        Err(IpamError::InvalidAnnotation { key, .. }) if key == ANN_IP
    ));
}

#[test]
fn explicit_ip_outside_the_named_pool_is_refused() {
    let e = engine(
        None,
        json!([{"name": "a", "subnet": "10.1.0.0/24", "ranges": [{"start": "10.1.0.10", "end": "10.1.0.20"}]},
                                {"name": "b", "subnet": "10.2.0.0/24"}]),
    );
    let mut l = Leases::new();
    let r = with_ann(
        with_ann(req("c1", None), ANN_POOL, "b"),
        ANN_IP,
        "10.1.0.12",
    );
    assert!(
        matches!(alloc(&e, &mut l, &r, t0()), Err(IpamError::AddressUnavailable { reason, .. }) if reason.contains("outside pool \"b\""))
    );
    let r = with_ann(req("c1", None), ANN_IP, "10.1.0.30");
    assert!(
        matches!(alloc(&e, &mut l, &r, t0()), Err(IpamError::AddressUnavailable { reason, .. }) if reason.contains("outside the ranges of pool \"a\""))
    );
    assert!(l.is_empty());
}

#[test]
fn per_interface_annotations() {
    let e = engine(
        None,
        json!([{"name": "a", "subnet": "10.1.0.0/24"}, {"name": "b", "subnet": "10.2.0.0/24"}]),
    );
    let mut l = Leases::new();
    let mut r = with_ann(req("c1", None), ANN_IP, "eth0=10.1.0.9, eth1=10.2.0.9");
    assert_eq!(
        alloc(&e, &mut l, &r, t0()).unwrap().address.to_string(),
        "10.1.0.9/24"
    );
    r.ifname = "eth1".into();
    assert_eq!(
        alloc(&e, &mut l, &r, t0()).unwrap().address.to_string(),
        "10.2.0.9/24"
    );
    r.ifname = "eth2".into();
    r.annotations.insert(ANN_POOL.into(), "eth2=b".into());
    assert_eq!(alloc(&e, &mut l, &r, t0()).unwrap().pool, "b");
    let bad = with_ann(req("c2", None), ANN_POOL, "eth0=a,eth1");
    assert!(matches!(
        alloc(&e, &mut l, &bad, t0()),
        Err(IpamError::InvalidAnnotation { .. })
    ));
}

fn racked() -> serde_json::Value {
    json!([
        {"name": "r1", "subnet": "10.1.0.0/24", "gateway": "10.1.0.1", "racks": ["r1"]},
        {"name": "r2", "subnet": "10.2.0.0/24", "gateway": "10.2.0.1", "racks": ["r2"]},
        {"name": "pay-r2", "subnet": "10.40.2.0/24", "racks": ["r2"], "app": "pay"},
        {"name": "pay-any", "subnet": "10.40.0.0/24", "app": "pay"},
        {"name": "spill", "subnet": "10.99.0.0/30"}
    ])
}

#[test]
fn pool_selection_by_rack_app_and_annotation() {
    let mut l = Leases::new();
    let r2 = engine(Some("r2"), racked());
    assert_eq!(
        alloc(&r2, &mut l, &req("c1", None), t0()).unwrap().pool,
        "r2"
    );
    assert_eq!(
        alloc(
            &r2,
            &mut l,
            &with_ann(req("c2", None), ANN_APP_POOL, "pay"),
            t0()
        )
        .unwrap()
        .pool,
        "pay-r2"
    );
    let r1 = engine(Some("r1"), racked());
    assert_eq!(
        alloc(
            &r1,
            &mut l,
            &with_ann(req("c3", None), ANN_APP_POOL, "pay"),
            t0()
        )
        .unwrap()
        .pool,
        "pay-any"
    );
    assert_eq!(
        alloc(&r1, &mut l, &req("c4", None), t0()).unwrap().pool,
        "r1"
    );
    // A rackless node uses the rackless default pool.
    let none = engine(None, racked());
    assert_eq!(
        alloc(&none, &mut l, &req("c5", None), t0()).unwrap().pool,
        "spill"
    );
    // The per-interface pool from the plugin config is honoured.
    let mut r = req("c6", None);
    r.pools = vec!["spill".into()];
    assert_eq!(alloc(&r1, &mut l, &r, t0()).unwrap().pool, "spill");
    // Explicit pool of another rack: refused, naming the racks.
    match alloc(
        &r1,
        &mut l,
        &with_ann(req("c7", None), ANN_POOL, "r2"),
        t0(),
    ) {
        Err(IpamError::NoPool { hint, rack, .. }) => {
            assert_eq!(rack, "r1");
            assert!(hint.contains("r2 serves racks [r2]"), "{hint}");
        }
        other => panic!("expected NoPool, got {other:?}"),
    }
    // Unknown pool and unknown app.
    assert!(
        matches!(alloc(&r1, &mut l, &with_ann(req("c8", None), ANN_POOL, "zz"), t0()), Err(IpamError::UnknownPool(p)) if p == "zz")
    );
    assert!(
        matches!(alloc(&r1, &mut l, &with_ann(req("c8", None), ANN_APP_POOL, "zz"), t0()), Err(IpamError::UnknownPool(p)) if p == "zz")
    );
}

#[test]
fn rack_pool_overflows_into_rackless_pool() {
    let e = engine(
        Some("r1"),
        json!([{"name": "r1", "subnet": "10.1.0.0/30", "racks": ["r1"]}, {"name": "any", "subnet": "10.9.0.0/24"}]),
    );
    let mut l = Leases::new();
    let pools: Vec<String> = (0..3)
        .map(|i| {
            alloc(&e, &mut l, &req(&format!("c{i}"), None), t0())
                .unwrap()
                .pool
        })
        .collect();
    assert_eq!(pools, ["r1", "r1", "any"]);
}

#[test]
fn node_without_a_matching_pool_gets_a_clear_error() {
    let e = engine(
        Some("r7"),
        json!([{"name": "r1", "subnet": "10.1.0.0/24", "racks": ["r1"]}]),
    );
    match alloc(&e, &mut Leases::new(), &req("c1", None), t0()) {
        Err(err @ IpamError::NoPool { .. }) => {
            assert_eq!(err.cni_code(), 7);
            assert!(err.to_string().contains("rack r7"), "{err}");
        }
        other => panic!("expected NoPool, got {other:?}"),
    }
}

#[test]
fn sticky_address_still_allocated_to_an_old_sandbox_is_refused_not_duplicated() {
    let e = small();
    let mut l = Leases::new();
    let a = alloc(&e, &mut l, &req("old", Some(("ns", "db-0"))), t0()).unwrap();
    match alloc(&e, &mut l, &req("new", Some(("ns", "db-0"))), t0()) {
        Err(IpamError::AddressUnavailable { address, reason }) => {
            assert_eq!(address, a.address.addr());
            assert!(reason.contains("sandbox old"), "{reason}");
        }
        other => panic!("expected AddressUnavailable, got {other:?}"),
    }
    // GC of the old sandbox puts it into hold; then the new sandbox gets it.
    let r = e.gc(
        &l,
        &|l| l.attachment().is_some_and(|(c, _)| c == "new"),
        t0(),
    );
    assert_eq!(r.report.released, vec![a.address.addr()]);
    assert_eq!(r.plan.events[0].kind, EventKind::Gc);
    r.plan.apply(&mut l);
    assert_eq!(
        alloc(&e, &mut l, &req("new", Some(("ns", "db-0"))), t0())
            .unwrap()
            .address,
        a.address
    );
}

#[test]
fn gc_releases_unknown_attachments_and_drops_expired_holds() {
    let e = small();
    let mut l = Leases::new();
    alloc(&e, &mut l, &req("keep", None), t0()).unwrap();
    let gone = alloc(&e, &mut l, &req("gone", None), t0()).unwrap();
    let held = alloc(&e, &mut l, &req("held", Some(("ns", "h"))), t0()).unwrap();
    release(&e, &mut l, "held", t0());
    let r = e.gc(
        &l,
        &|l| l.attachment().is_some_and(|(c, _)| c == "keep"),
        t0() + chrono::Duration::minutes(11),
    );
    assert_eq!(r.report.released, vec![gone.address.addr()]);
    assert_eq!(
        r.plan.deletes.len(),
        2,
        "the gone allocation and the expired hold"
    );
    assert!(r.plan.deletes.contains(&held.address.addr()));
    r.plan.apply(&mut l);
    assert_eq!(l.len(), 1);
}

#[test]
fn clock_skew_is_refused() {
    let e = small();
    let mut l = Leases::new();
    alloc(&e, &mut l, &req("c1", None), t0()).unwrap();
    let behind = t0() - chrono::Duration::minutes(5);
    match e.allocate(&l, &req("c2", None), behind, 0) {
        Err(err @ IpamError::ClockSkew { .. }) => {
            assert_eq!(err.cni_code(), 113);
            assert!(
                err.to_string().contains("node n1 recorded a change"),
                "{err}"
            );
        }
        other => panic!("expected ClockSkew, got {other:?}"),
    }
    // Within the tolerance is fine.
    assert!(
        e.allocate(
            &l,
            &req("c2", None),
            t0() - chrono::Duration::seconds(10),
            0
        )
        .is_ok()
    );
}

#[test]
fn app_sticky_key_survives_a_pod_name_change() {
    let e = small();
    let mut l = Leases::new();
    let a = alloc(
        &e,
        &mut l,
        &with_ann(req("c1", Some(("ns", "web-abc"))), ANN_STICKY, "web-slot-1"),
        t0(),
    )
    .unwrap();
    release(&e, &mut l, "c1", t0());
    let b = alloc(
        &e,
        &mut l,
        &with_ann(req("c2", Some(("ns", "web-xyz"))), ANN_STICKY, "web-slot-1"),
        t0(),
    )
    .unwrap();
    assert_eq!(a.address, b.address);
    assert!(matches!(
        alloc(
            &e,
            &mut l,
            &with_ann(req("c3", Some(("ns", "w"))), ANN_STICKY, "bad key!"),
            t0()
        ),
        Err(IpamError::InvalidAnnotation { .. })
    ));
}

#[test]
fn reservations_block_others_and_serve_their_pod() {
    let e = small();
    let mut l = Leases::new();
    let s = Sticky {
        namespace: "ns".into(),
        name: "vip".into(),
        ifname: None,
    };
    let plan = e
        .reserve(
            &l,
            ip("10.1.0.2"),
            Some(s),
            None,
            Some("for vip".into()),
            t0(),
        )
        .unwrap();
    plan.apply(&mut l);
    let other = alloc(&e, &mut l, &req("c1", Some(("ns", "x"))), t0()).unwrap();
    assert_eq!(other.address.addr(), ip("10.1.0.4"));
    let mine = alloc(&e, &mut l, &req("c2", Some(("ns", "vip"))), t0()).unwrap();
    assert_eq!(mine.address.addr(), ip("10.1.0.2"));
    // Reserving an address in use is refused; freeing works whatever the state.
    assert!(matches!(
        e.reserve(&l, ip("10.1.0.2"), None, None, None, t0()),
        Err(IpamError::AddressUnavailable { .. })
    ));
    let f = e.free(&l, ip("10.1.0.2"), t0());
    assert_eq!(f.deletes, vec![ip("10.1.0.2")]);
    assert_eq!(f.events[0].kind, EventKind::Free);
}

#[test]
fn history_events_record_who_where_and_when() {
    let e = small();
    let l = Leases::new();
    let (plan, _) = e
        .allocate(&l, &req("c1", Some(("ns", "p"))), t0(), 0)
        .unwrap();
    let ev = &plan.events[0];
    assert_eq!(
        (ev.kind, ev.time, ev.node.as_str(), ev.rack.as_deref()),
        (EventKind::Allocate, t0(), "n1", Some("r1"))
    );
    assert_eq!(ev.container_id.as_deref(), Some("c1"));
    assert_eq!(ev.pod.as_ref().unwrap().name, "p");
    let q = crate::state::HistoryQuery {
        pod: Some(("ns".into(), "p".into())),
        ..Default::default()
    };
    assert!(q.matches(ev));
    let q = crate::state::HistoryQuery {
        ip: Some(ip("10.1.0.9")),
        ..Default::default()
    };
    assert!(!q.matches(ev));
}

#[test]
fn spread_start_still_finds_every_address() {
    let e = small();
    let mut l = Leases::new();
    for i in 0..4u128 {
        let (plan, _) = e
            .allocate(&l, &req(&format!("c{i}"), None), t0(), 1_000_003 * (i + 1))
            .unwrap();
        plan.apply(&mut l);
    }
    assert_eq!(l.len(), 4);
    assert!(matches!(
        e.allocate(&l, &req("c9", None), t0(), 77),
        Err(IpamError::Exhausted { .. })
    ));
}

#[test]
fn a_pod_moving_to_another_rack_gets_that_racks_address_and_its_old_hold_stays() {
    let mut l = Leases::new();
    let r1 = engine(Some("r1"), racked());
    let r2 = engine(Some("r2"), racked());
    let first = alloc(&r1, &mut l, &req("c1", Some(("ns", "db-0"))), t0()).unwrap();
    assert_eq!(first.pool, "r1");
    release(&r1, &mut l, "c1", t0());
    let moved = alloc(&r2, &mut l, &req("c2", Some(("ns", "db-0"))), t0()).unwrap();
    assert_eq!(moved.pool, "r2", "the TOR of rack r2 is the gateway now");
    assert_eq!(moved.gateway, Some(ip("10.2.0.1")));
    assert!(matches!(
        l[&first.address.addr()].state,
        LeaseState::Held { .. }
    ));
    // Back on rack r1 within the hold: the old address again.
    release(&r2, &mut l, "c2", t0());
    let back = alloc(&r1, &mut l, &req("c3", Some(("ns", "db-0"))), t0()).unwrap();
    assert_eq!(back.address, first.address);
}

/// A /29 with gateway .1: five addresses (.2 … .6), all held for pods that left.
fn full_of_holds(e: &Engine, l: &mut Leases) -> Vec<IpAddr> {
    let mut held = Vec::new();
    for i in 0..5 {
        let at = t0() + chrono::Duration::seconds(i);
        let a = alloc(
            e,
            l,
            &req(&format!("c{i}"), Some(("ns", &format!("gone-{i}")))),
            at,
        )
        .unwrap();
        release(e, l, &format!("c{i}"), at);
        held.push(a.address.addr());
    }
    held
}

#[test]
fn a_full_pool_reclaims_the_oldest_hold_and_says_for_whom() {
    let e = engine(
        None,
        json!([{"name": "a", "subnet": "10.1.0.0/29", "gateway": "10.1.0.1"}]),
    );
    let mut l = Leases::new();
    let held = full_of_holds(&e, &mut l);
    // Make the hold of gone-3 the oldest one.
    if let Some(lease) = l.get_mut(&held[3]) {
        lease.since = t0() - chrono::Duration::minutes(1);
    }
    let now = t0() + chrono::Duration::minutes(1);
    let (plan, got) = e
        .allocate(&l, &req("new", Some(("ns", "web-7"))), now, 0)
        .unwrap();
    assert_eq!(got[0].address.addr(), held[3]);
    let reclaimed = &plan.events[0];
    assert_eq!(reclaimed.kind, EventKind::Reclaimed);
    assert_eq!(reclaimed.sticky.as_ref().unwrap().name, "gone-3");
    let detail = reclaimed.detail.as_deref().unwrap();
    assert!(
        detail.contains("held for ns/gone-3") && detail.contains("given to ns/web-7"),
        "{detail}"
    );
    assert_eq!(
        plan.events[1].detail.as_deref(),
        Some("new (reclaimed a hold: the pool had no free address)")
    );
    plan.apply(&mut l);
    // gone-3 comes back: its address is taken, so it gets another (a hold reclaimed again),
    // and its history tells why.
    let (plan, back) = e
        .allocate(&l, &req("again", Some(("ns", "gone-3"))), now, 0)
        .unwrap();
    assert_ne!(back[0].address.addr(), held[3]);
    plan.apply(&mut l);
    let q = crate::state::HistoryQuery {
        pod: Some(("ns".into(), "gone-3".into())),
        ..Default::default()
    };
    let mine: Vec<EventKind> = plan
        .events
        .iter()
        .chain(std::iter::once(reclaimed))
        .filter(|e| q.matches(e))
        .map(|e| e.kind)
        .collect();
    assert!(
        mine.contains(&EventKind::Reclaimed) && mine.contains(&EventKind::Allocate),
        "{mine:?}"
    );
}

#[test]
fn reservations_and_pinned_holds_are_never_reclaimed() {
    let e = engine(
        None,
        json!([{"name": "a", "subnet": "10.1.0.0/29", "gateway": "10.1.0.1"}]),
    );
    let mut l = Leases::new();
    // .2 pinned by berth.io/ip, then released into its hold.
    alloc(
        &e,
        &mut l,
        &with_ann(req("p", Some(("ns", "pinned-0"))), ANN_IP, "10.1.0.2"),
        t0(),
    )
    .unwrap();
    release(&e, &mut l, "p", t0());
    assert!(l[&ip("10.1.0.2")].pinned);
    // .3 reserved by an operator, .4-.6 allocated.
    e.reserve(&l, ip("10.1.0.3"), None, None, None, t0())
        .unwrap()
        .apply(&mut l);
    for i in 4..7 {
        alloc(&e, &mut l, &req(&format!("live{i}"), None), t0()).unwrap();
    }
    let before = l.clone();
    match e.allocate(&l, &req("new", Some(("ns", "web-1"))), t0(), 0) {
        Err(IpamError::Exhausted { pool }) => assert_eq!(pool, "a"),
        other => panic!("expected Exhausted, got {other:?}"),
    }
    assert_eq!(l, before);
    // The pinned pod still gets its address back.
    let back = alloc(&e, &mut l, &req("p2", Some(("ns", "pinned-0"))), t0()).unwrap();
    assert_eq!(back.address.addr(), ip("10.1.0.2"));
}

#[test]
fn churn_of_distinct_pods_never_exhausts_a_pool_of_holds() {
    let e = engine(
        None,
        json!([{"name": "node", "subnet": "10.244.0.0/24", "gateway": "10.244.0.1"}]),
    );
    let mut l = Leases::new();
    for i in 0..600 {
        let at = t0() + chrono::Duration::milliseconds(100 * i);
        let cid = format!("sandbox-{i}");
        alloc(
            &e,
            &mut l,
            &req(&cid, Some(("churn", &format!("job-{i}")))),
            at,
        )
        .unwrap_or_else(|err| panic!("ADD {i} failed: {err}"));
        release(&e, &mut l, &cid, at);
    }
    assert!(l.len() <= 253, "one lease per address at most: {}", l.len());
}

#[test]
fn generated_pod_names_are_not_held_by_default() {
    let mut e = small();
    e.sticky_default = crate::config::StickyDefault::StableNames;
    let mut l = Leases::new();
    let a = alloc(
        &e,
        &mut l,
        &req("c1", Some(("ns", "web-7d9f8b6c4d-x2k9z"))),
        t0(),
    )
    .unwrap();
    assert_eq!(l[&a.address.addr()].sticky, None);
    let plan = release(&e, &mut l, "c1", t0());
    assert_eq!(plan.events[0].kind, EventKind::Release);
    assert!(l.is_empty());
    // A StatefulSet-style name keeps its address.
    let b = alloc(&e, &mut l, &req("c2", Some(("ns", "web-0"))), t0()).unwrap();
    release(&e, &mut l, "c2", t0());
    assert!(matches!(
        l[&b.address.addr()].state,
        LeaseState::Held { .. }
    ));
    // The annotation still wins over the default.
    let c = alloc(
        &e,
        &mut l,
        &with_ann(req("c3", Some(("ns", "job-bcdfg"))), ANN_STICKY, "true"),
        t0(),
    )
    .unwrap();
    assert!(l[&c.address.addr()].sticky.is_some());
}

fn dual() -> Engine {
    engine(
        None,
        json!([{"name": "v4", "subnet": "10.244.0.0/24", "gateway": "10.244.0.1"},
               {"name": "v6", "subnet": "fd00:244::/64", "gateway": "fd00:244::1"}]),
    )
}

fn addrs(all: &[Allocation]) -> Vec<String> {
    all.iter().map(|a| a.address.to_string()).collect()
}

#[test]
fn dual_stack_gives_one_address_per_family_ipv4_first() {
    let e = dual();
    let mut l = Leases::new();
    let a = alloc_all(&e, &mut l, &req("c1", None), t0()).unwrap();
    assert_eq!(addrs(&a), ["10.244.0.2/24", "fd00:244::2/64"]);
    assert_eq!(a[1].gateway, Some(ip("fd00:244::1")));
    assert_eq!(a[1].pool, "v6");
    assert_eq!(l.len(), 2);
    // ADD again: the same two, nothing written.
    let (plan, again) = e.allocate(&l, &req("c1", None), t0(), 0).unwrap();
    assert!(plan.is_empty());
    assert_eq!(again, a);
    // Another sandbox gets the next of each.
    let b = alloc_all(&e, &mut l, &req("c2", None), t0()).unwrap();
    assert_eq!(addrs(&b), ["10.244.0.3/24", "fd00:244::3/64"]);
    // DEL frees both, with an event each.
    let plan = release(&e, &mut l, "c1", t0());
    assert_eq!(plan.deletes, vec![ip("10.244.0.2"), ip("fd00:244::2")]);
    assert_eq!(plan.events.len(), 2);
    assert!(e.release(&l, "c1", "eth0", t0()).unwrap().is_empty());
}

#[test]
fn dual_stack_sticky_pod_gets_both_addresses_back_and_gc_holds_both() {
    let e = dual();
    let mut l = Leases::new();
    let first = alloc_all(&e, &mut l, &req("c1", Some(("ns", "web-0"))), t0()).unwrap();
    release(&e, &mut l, "c1", t0());
    assert!(
        l.values()
            .all(|x| matches!(x.state, LeaseState::Held { .. }))
    );
    let other = alloc_all(&e, &mut l, &req("c2", Some(("ns", "web-1"))), t0()).unwrap();
    assert_ne!(other[0].address, first[0].address);
    assert_ne!(other[1].address, first[1].address);
    let back = alloc_all(&e, &mut l, &req("c3", Some(("ns", "web-0"))), t0()).unwrap();
    assert_eq!(back, first, "both addresses come back");
    // GC of c3: both go into their hold, both are reported.
    let r = e.gc(&l, &|x| x.attachment() != Some(("c3", "eth0")), t0());
    assert_eq!(
        r.report.released,
        vec![first[0].address.addr(), first[1].address.addr()]
    );
    r.plan.apply(&mut l);
    assert_eq!(
        l.values()
            .filter(|x| matches!(x.state, LeaseState::Held { .. }))
            .count(),
        2
    );
}

#[test]
fn dual_stack_explicit_addresses_per_family() {
    let e = dual();
    let mut l = Leases::new();
    let both = with_ann(
        req("c1", Some(("ns", "p"))),
        ANN_IP,
        "eth0=10.244.0.20,eth0=fd00:244::20",
    );
    let a = alloc_all(&e, &mut l, &both, t0()).unwrap();
    assert_eq!(addrs(&a), ["10.244.0.20/24", "fd00:244::20/64"]);
    assert!(l.values().all(|x| x.pinned));
    // One family named: the other comes from its pool.
    let v6 = with_ann(req("c2", None), ANN_IP, "fd00:244::99");
    let a = alloc_all(&e, &mut l, &v6, t0()).unwrap();
    assert_eq!(addrs(&a), ["10.244.0.2/24", "fd00:244::99/64"]);
    // Two addresses of one family: refused, nothing written.
    let before = l.clone();
    let two = with_ann(req("c3", None), ANN_IP, "eth0=10.244.0.30,eth0=10.244.0.31");
    let err = alloc_all(&e, &mut l, &two, t0()).unwrap_err();
    assert!(
        matches!(&err, IpamError::InvalidAnnotation { key, reason, .. }
            if key == ANN_IP && reason.contains("two IPv4 addresses (10.244.0.30 and 10.244.0.31)")),
        "{err}"
    );
    assert_eq!(err.cni_code(), 114);
    // The IPv6 address is in use by c1: refused as a whole, the IPv4 one is not taken.
    let taken = with_ann(req("c4", None), ANN_IP, "10.244.0.40,fd00:244::20");
    assert!(matches!(
        alloc_all(&e, &mut l, &taken, t0()),
        Err(IpamError::AddressUnavailable { address, .. }) if address == ip("fd00:244::20")
    ));
    assert_eq!(l, before);
}

#[test]
fn dual_stack_named_pools_are_one_per_family() {
    let e = engine(
        None,
        json!([{"name": "v4", "subnet": "10.244.0.0/24"}, {"name": "v4b", "subnet": "10.245.0.0/24"},
               {"name": "v6", "subnet": "fd00:244::/64"}]),
    );
    let mut l = Leases::new();
    // Two IPv4 pools, chosen by the network config: refused, naming both.
    let mut r = req("c1", None);
    r.pools = vec!["v4".into(), "v4b".into()];
    let err = alloc_all(&e, &mut l, &r, t0()).unwrap_err();
    assert!(
        matches!(&err, IpamError::InvalidConfig(m) if m.contains("two IPv4 pools for interface eth0: \"v4\" and \"v4b\"")),
        "{err}"
    );
    assert_eq!(err.cni_code(), 7);
    // The same by annotation.
    let ann = with_ann(req("c1", None), ANN_POOL, "eth0=v4,eth0=v4b");
    assert!(matches!(
        alloc_all(&e, &mut l, &ann, t0()),
        Err(IpamError::InvalidAnnotation { key, reason, .. }) if key == ANN_POOL && reason.contains("two IPv4 pools")
    ));
    assert!(l.is_empty());
    // One per family: both; one pool named: that family only.
    r.pools = vec!["v4b".into(), "v6".into()];
    let a = alloc_all(&e, &mut l, &r, t0()).unwrap();
    assert_eq!(addrs(&a), ["10.245.0.1/24", "fd00:244::1/64"]);
    let only = with_ann(req("c2", None), ANN_POOL, "v6");
    assert_eq!(
        addrs(&alloc_all(&e, &mut l, &only, t0()).unwrap()),
        ["fd00:244::2/64"]
    );
}

#[test]
fn dual_stack_exhausted_family_takes_nothing() {
    let e = engine(
        None,
        json!([{"name": "v4", "subnet": "10.244.0.0/24"},
               {"name": "v6", "subnet": "fd00:244::/120", "ranges": [{"start": "fd00:244::10", "end": "fd00:244::10"}]}]),
    );
    let mut l = Leases::new();
    alloc_all(&e, &mut l, &req("c1", None), t0()).unwrap();
    let before = l.clone();
    let err = alloc_all(&e, &mut l, &req("c2", None), t0()).unwrap_err();
    assert!(
        matches!(&err, IpamError::Exhausted { pool } if pool == "v6"),
        "{err}"
    );
    assert_eq!(l, before, "the IPv4 address was not taken either");
}
