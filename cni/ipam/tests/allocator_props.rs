//! Property test of the allocator state machine: random sequences of ADD/DEL/GC/time steps
//! (with sticky pods, explicit addresses and a tiny pool so exhaustion and holds happen), with
//! the invariants checked after every step against a model of what was handed out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use berth_ipam_core::store::HistoryLimits;
use berth_ipam_core::store::local::LocalStore;
use berth_ipam_core::store::memory::MemoryStore;
use berth_ipam_core::{
    AllocateRequest, Allocator, Attachment, Ipam, IpamConfig, IpamError, LeaseState, ManualClock,
    NodeInfo, PodIdentity,
};
use chrono::TimeZone;
use proptest::prelude::*;
use serde_json::json;

#[derive(Clone, Debug)]
enum Op {
    /// sandbox index, pod index (None: no pod identity), explicit address offset.
    Add {
        sandbox: u8,
        pod: Option<u8>,
        explicit: Option<u8>,
    },
    Del {
        sandbox: u8,
    },
    Gc {
        keep_mask: u16,
    },
    Advance {
        minutes: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..12, proptest::option::of(0u8..6), proptest::option::weighted(0.2, 0u8..16))
            .prop_map(|(sandbox, pod, explicit)| Op::Add { sandbox, pod, explicit }),
        3 => (0u8..12).prop_map(|sandbox| Op::Del { sandbox }),
        1 => any::<u16>().prop_map(|keep_mask| Op::Gc { keep_mask }),
        1 => (0u8..15).prop_map(|minutes| Op::Advance { minutes }),
    ]
}

fn config() -> IpamConfig {
    IpamConfig::from_json(&json!({
        "hold": "10m",
        "pools": [{"name": "p", "subnet": "10.60.0.0/28", "gateway": "10.60.0.1", "exclude": ["10.60.0.7"]}]
    }))
    .unwrap()
}

/// The sandbox that each pod index uses (a pod re-created gets another sandbox index).
fn pod_of(pod: u8) -> PodIdentity {
    PodIdentity {
        namespace: "ns".into(),
        name: format!("pod-{pod}"),
        uid: None,
    }
}

/// The address an `Op::Add` asks for by `berth.io/ip`.
fn explicit_address(offset: u8) -> String {
    format!("10.60.0.{offset}")
}

/// The ADD of sandbox `sb-<sandbox>` for pod `pod-<pod>`, with `berth.io/ip` when `explicit`.
fn add_request(sandbox: u8, pod: Option<u8>, explicit: Option<u8>) -> AllocateRequest {
    let annotations = explicit
        .map(|o| ("berth.io/ip".to_string(), explicit_address(o)))
        .into_iter()
        .collect();
    AllocateRequest {
        network: "net".into(),
        container_id: format!("sb-{sandbox}"),
        ifname: "eth0".into(),
        pod: pod.map(pod_of),
        annotations,
        pools: vec![],
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn allocator_state_machine_keeps_its_invariants(ops in proptest::collection::vec(op(), 1..60)) {
        let clock = Arc::new(ManualClock::new(chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()));
        let store = Arc::new(MemoryStore::new(HistoryLimits::default()));
        let ipam = Ipam::new(&config(), NodeInfo { node: "n".into(), rack: None }, store, clock.clone()).unwrap();
        let pool = config().pools().unwrap().get("p").unwrap().clone();
        // Model: live attachment (sandbox) -> (address, pod).
        let mut live: BTreeMap<u8, (IpAddr, Option<u8>)> = BTreeMap::new();
        for op in ops {
            let before = ipam.list("net").unwrap();
            match op {
                Op::Add { sandbox, pod, explicit } => {
                    let explicit_ip: Option<IpAddr> = explicit.map(|o| explicit_address(o).parse().unwrap());
                    // A sandbox index keeps one pod: re-using it for another pod is not a thing.
                    let pod = live.get(&sandbox).map(|(_, p)| *p).unwrap_or(pod);
                    let req = add_request(sandbox, pod, explicit);
                    match ipam.allocate(&req) {
                        Ok(all) => {
                            prop_assert_eq!(all.len(), 1, "an IPv4-only network gives one address");
                            let a = &all[0];
                            let ip = a.address.addr();
                            prop_assert!(pool.check(ip).is_ok(), "{ip} is usable");
                            if let Some((prev, _)) = live.get(&sandbox) {
                                prop_assert_eq!(*prev, ip, "ADD is idempotent per attachment");
                            } else {
                                if let Some(e) = explicit_ip { prop_assert_eq!(ip, e); }
                                // Nobody else held it (unexpired) for another pod.
                                if let Some(l) = before.iter().find(|l| l.ip == ip) {
                                    let other = l.sticky.as_ref().map(|s| s.name.clone()) != pod.map(|p| format!("pod-{p}"));
                                    // Holds are soft: a full pool gives its oldest hold away.
                                    let now = clock_now(&clock);
                                    let full = before.iter().filter(|l| !l.expired(now)).count() as u128 == pool.capacity();
                                    let oldest_hold = before.iter().filter(|l| l.reclaimable())
                                        .min_by_key(|l| (l.since, l.ip)).map(|l| l.ip);
                                    let reclaimed = full && oldest_hold == Some(ip);
                                    prop_assert!(l.expired(now) || !other || reclaimed,
                                        "{ip} was taken from {:?} while not expired and the pool had room", l);
                                    let was_allocated = matches!(l.state, LeaseState::Allocated { .. });
                                    prop_assert!(!was_allocated, "{ip} was allocated already");
                                }
                                // Stickiness: a pod with a held address in the pool gets it back.
                                if let (Some(p), None) = (pod, explicit_ip) {
                                    let held = before.iter().find(|l| l.sticky.as_ref().is_some_and(|s| s.name == format!("pod-{p}"))
                                        && matches!(l.state, LeaseState::Held { .. }));
                                    if let Some(h) = held { prop_assert_eq!(h.ip, ip, "sticky address returned"); }
                                }
                                live.insert(sandbox, (ip, pod));
                            }
                        }
                        Err(IpamError::Exhausted { .. }) => {
                            prop_assert!(explicit_ip.is_none());
                            let blocked = before.iter().filter(|l| !l.expired(clock_now(&clock))).count() as u128;
                            prop_assert_eq!(blocked, pool.capacity(), "exhausted only when every address is taken");
                        }
                        Err(IpamError::AddressUnavailable { address, .. }) => {
                            // Explicit address in use/held/blocked, or the pod's address still on another sandbox.
                            let explicit_blocked = explicit_ip == Some(address)
                                && (pool.check(address).is_err() || before.iter().any(|l| l.ip == address));
                            let sticky_busy = before.iter().any(|l| l.ip == address && matches!(l.state, LeaseState::Allocated { .. })
                                && l.sticky.as_ref().map(|s| s.name.clone()) == pod.map(|p| format!("pod-{p}")));
                            prop_assert!(explicit_blocked || sticky_busy, "refusal of {address} has a cause");
                            prop_assert!(!live.contains_key(&sandbox));
                        }
                        Err(e) => prop_assert!(false, "unexpected error {e}"),
                    }
                }
                Op::Del { sandbox } => {
                    ipam.release("net", &format!("sb-{sandbox}"), "eth0").unwrap();
                    live.remove(&sandbox);
                }
                Op::Gc { keep_mask } => {
                    let keep: Vec<Attachment> = (0u8..12).filter(|i| keep_mask & (1 << i) != 0)
                        .map(|i| Attachment { container_id: format!("sb-{i}"), ifname: "eth0".into() }).collect();
                    let report = ipam.gc("net", &keep).unwrap();
                    let dropped: BTreeSet<IpAddr> = live.iter().filter(|(i, _)| keep_mask & (1 << **i) == 0).map(|(_, (ip, _))| *ip).collect();
                    prop_assert_eq!(report.released.iter().copied().collect::<BTreeSet<_>>(), dropped);
                    live.retain(|i, _| keep_mask & (1 << i) != 0);
                }
                Op::Advance { minutes } => clock.advance(chrono::Duration::minutes(minutes as i64)),
            }
            // Invariants: the store's allocations are exactly the model's, no address twice.
            let after = ipam.list("net").unwrap();
            let allocated: BTreeMap<String, IpAddr> = after.iter()
                .filter_map(|l| l.attachment().map(|(c, _)| (c.to_string(), l.ip))).collect();
            let model: BTreeMap<String, IpAddr> = live.iter().map(|(i, (ip, _))| (format!("sb-{i}"), *ip)).collect();
            prop_assert_eq!(&allocated, &model);
            let ips: BTreeSet<IpAddr> = after.iter().map(|l| l.ip).collect();
            prop_assert_eq!(ips.len(), after.len());
            prop_assert!(after.iter().all(|l| pool.check(l.ip).is_ok()));
        }
    }
}

fn clock_now(c: &ManualClock) -> chrono::DateTime<chrono::Utc> {
    berth_ipam_core::Clock::now(c)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The local store answers a decision from its headers, decoding only the leases it
    /// hands out; the memory store scans a map. Fed the same operations, they decide alike:
    /// same answers, same leases, same history.
    #[test]
    fn the_local_store_decides_as_the_memory_store(ops in proptest::collection::vec(op(), 1..80)) {
        let dir = tempfile::tempdir().unwrap();
        let t0 = chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let (clock_m, clock_l) = (Arc::new(ManualClock::new(t0)), Arc::new(ManualClock::new(t0)));
        let node = || NodeInfo { node: "n".into(), rack: None };
        let memory = Ipam::new(&config(), node(), Arc::new(MemoryStore::new(HistoryLimits::default())), clock_m.clone()).unwrap();
        let local = Ipam::new(&config(), node(), Arc::new(LocalStore::new(dir.path(), HistoryLimits::default())), clock_l.clone()).unwrap();
        for op in ops {
            match op {
                Op::Add { sandbox, pod, explicit } => {
                    let req = add_request(sandbox, pod, explicit);
                    let answer = |i: &Ipam| i.allocate(&req).map_err(|e| e.to_string());
                    prop_assert_eq!(answer(&memory), answer(&local));
                }
                Op::Del { sandbox } => {
                    memory.release("net", &format!("sb-{sandbox}"), "eth0").unwrap();
                    local.release("net", &format!("sb-{sandbox}"), "eth0").unwrap();
                }
                Op::Gc { keep_mask } => {
                    let keep: Vec<Attachment> = (0u8..12).filter(|i| keep_mask & (1 << i) != 0)
                        .map(|i| Attachment { container_id: format!("sb-{i}"), ifname: "eth0".into() }).collect();
                    let released = |i: &Ipam| i.gc("net", &keep).unwrap().released;
                    prop_assert_eq!(released(&memory), released(&local));
                }
                Op::Advance { minutes } => {
                    clock_m.advance(chrono::Duration::minutes(minutes as i64));
                    clock_l.advance(chrono::Duration::minutes(minutes as i64));
                }
            }
            prop_assert_eq!(memory.list("net").unwrap(), local.list("net").unwrap());
        }
        let all = berth_ipam_core::HistoryQuery::default();
        prop_assert_eq!(memory.history("net", &all).unwrap(), local.history("net", &all).unwrap());
    }
}
