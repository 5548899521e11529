//! The store conformance suite against the memory, local and etcd stores (plain, and over
//! mutual TLS as production etcd runs).

mod conformance;
mod tls;

use std::sync::Arc;

use berth_ipam_core::store::etcd::{EtcdStore, Security};
use berth_ipam_core::store::local::LocalStore;
use berth_ipam_core::store::memory::MemoryStore;
use berth_ipam_core::store::{HistoryLimits, Store};
use berth_ipam_core::testsupport::EtcdServer;
use tls::Pki;

const MAX_EVENTS: usize = 20;

fn limits() -> HistoryLimits {
    HistoryLimits {
        max_events: MAX_EVENTS,
        max_age: chrono::Duration::days(3650),
    }
}

#[test]
fn memory_store_conforms() {
    conformance::run_all(
        &|| Arc::new(MemoryStore::new(limits())) as Arc<dyn Store>,
        MAX_EVENTS,
    );
}

#[test]
fn local_store_conforms() {
    let root = tempfile::tempdir().unwrap();
    let n = std::sync::atomic::AtomicUsize::new(0);
    conformance::run_all(
        &|| {
            let dir = root.path().join(
                n.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                    .to_string(),
            );
            Arc::new(LocalStore::new(dir, limits())) as Arc<dyn Store>
        },
        MAX_EVENTS,
    );
}

#[test]
#[ignore = "needs root: run by scripts/test (spawns /usr/bin/etcd)"]
fn etcd_store_conforms() {
    let etcd = EtcdServer::start()
        .unwrap_or_else(|e| panic!("cannot run the etcd conformance suite: {e}"));
    let n = std::sync::atomic::AtomicUsize::new(0);
    conformance::run_all(
        &|| {
            let prefix = format!(
                "/conf-{}",
                n.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            );
            Arc::new(
                EtcdStore::connect(
                    std::slice::from_ref(&etcd.endpoint),
                    &prefix,
                    std::time::Duration::from_secs(5),
                    limits(),
                )
                .unwrap(),
            ) as Arc<dyn Store>
        },
        MAX_EVENTS,
    );
}

#[test]
#[ignore = "needs root: run by scripts/test (spawns /usr/bin/etcd)"]
fn etcd_store_conforms_over_mutual_tls() {
    let pki = Pki::new();
    let etcd = EtcdServer::start_with(Some(&pki.server("server")))
        .unwrap_or_else(|e| panic!("cannot run the etcd conformance suite over TLS: {e}"));
    assert!(etcd.endpoint.starts_with("https://"));
    let tls = pki.tls("ca.crt", Some("client"));
    let n = std::sync::atomic::AtomicUsize::new(0);
    conformance::run_all(
        &|| {
            let prefix = format!(
                "/tls-conf-{}",
                n.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            );
            let security = Security::load(Some(&tls), None).unwrap();
            Arc::new(
                EtcdStore::connect_with(
                    std::slice::from_ref(&etcd.endpoint),
                    &prefix,
                    std::time::Duration::from_secs(5),
                    security,
                    limits(),
                )
                .unwrap(),
            ) as Arc<dyn Store>
        },
        MAX_EVENTS,
    );
}
