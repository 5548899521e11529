//! etcd-store specifics on a real etcd: unreachable or hung server → code 11, nothing
//! half-written; corrupt values refused naming the key; TLS and password files that cannot be
//! used are invalid config (code 7) before anything is sent. (TLS on a real etcd:
//! `tests/etcd_tls.rs`.)

mod conformance;

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_ipam_core::store::etcd::EtcdStore;
use berth_ipam_core::store::{HistoryLimits, Store};
use berth_ipam_core::testsupport::EtcdServer;
use berth_ipam_core::{Allocator, IpamError, ManualClock};
use conformance::AllocateOne;

fn store(endpoint: &str, prefix: &str) -> Arc<EtcdStore> {
    Arc::new(
        EtcdStore::connect(
            &[endpoint.to_string()],
            prefix,
            Duration::from_millis(800),
            HistoryLimits::default(),
        )
        .unwrap(),
    )
}

#[test]
fn unreachable_etcd_is_try_again_later() {
    // A port nobody listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let err = match EtcdStore::connect(
        &[endpoint],
        "/x",
        Duration::from_millis(500),
        HistoryLimits::default(),
    ) {
        Err(e) => e,
        Ok(s) => {
            let ipam =
                conformance::ipam(Arc::new(s), Arc::new(ManualClock::new(conformance::t0())));
            assert!(matches!(ipam.status(), Err(IpamError::Unavailable(_))));
            ipam.allocate_one(&conformance::req("net1", "c1", None))
                .unwrap_err()
        }
    };
    assert_eq!(err.cni_code(), 11, "{err}");
    assert!(matches!(err, IpamError::Unavailable(_)));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "fails within the timeout"
    );
}

#[test]
#[ignore = "needs root: run by scripts/test (spawns /usr/bin/etcd)"]
fn hung_etcd_fails_with_code_11_and_recovers_consistent() {
    let etcd = EtcdServer::start().unwrap_or_else(|e| panic!("{e}"));
    let s = store(&etcd.endpoint, "/hung");
    let ipam = conformance::ipam(s.clone(), Arc::new(ManualClock::new(conformance::t0())));
    let a = ipam
        .allocate_one(&conformance::req("net1", "c1", None))
        .unwrap();
    // Freeze etcd: every call must time out as Unavailable.
    let pid = etcd.pid() as i32;
    struct Cont(i32);
    impl Drop for Cont {
        fn drop(&mut self) {
            // SAFETY: kill(2) takes plain integers; the pid is the test's own etcd child.
            unsafe { libc::kill(self.0, libc::SIGCONT) };
        }
    }
    // SAFETY: kill(2) takes plain integers; the pid is the test's own etcd child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let guard = Cont(pid);
    for r in [
        ipam.allocate_one(&conformance::req("net1", "c2", None))
            .map(|_| ()),
        ipam.release("net1", "c1", "eth0"),
        ipam.status(),
    ] {
        let err = r.unwrap_err();
        assert!(matches!(err, IpamError::Unavailable(_)), "{err:?}");
        assert_eq!(err.cni_code(), 11);
    }
    drop(guard);
    // After it thaws: c1 still has its address (the release did not half-happen) and c2 has
    // nothing unless the commit had reached etcd, in which case ADD again returns the same.
    let leases = s.read("net1").unwrap();
    assert!(
        leases
            .values()
            .any(|l| l.attachment() == Some(("c1", "eth0")) && l.ip == a.address.addr())
            || leases
                .values()
                .all(|l| l.attachment() != Some(("c1", "eth0")))
    );
    let again = ipam
        .allocate_one(&conformance::req("net1", "c2", None))
        .unwrap();
    assert_ne!(again.address, a.address);
    let ips: Vec<_> = s.read("net1").unwrap().keys().copied().collect();
    let unique: std::collections::BTreeSet<_> = ips.iter().collect();
    assert_eq!(ips.len(), unique.len());
}

#[test]
#[ignore = "needs root: run by scripts/test (spawns /usr/bin/etcd)"]
fn corrupt_etcd_value_is_refused_naming_the_key() {
    let etcd = EtcdServer::start().unwrap_or_else(|e| panic!("{e}"));
    let s = store(&etcd.endpoint, "/corrupt");
    let ipam = conformance::ipam(s.clone(), Arc::new(ManualClock::new(conformance::t0())));
    let a = ipam
        .allocate_one(&conformance::req("net1", "c1", None))
        .unwrap();
    let key = format!("/corrupt/net1/leases/{}", a.address.addr());
    conformance::etcd_put(&etcd.endpoint, &[(key.clone(), b"{nope".to_vec())]);
    // An ADD reads only the leases it decides about (its node's block): the sandbox whose
    // lease is damaged meets the damage, on ADD again, DEL and CHECK alike.
    let again = ipam
        .allocate_one(&conformance::req("net1", "c1", None))
        .unwrap_err();
    let del = ipam.release("net1", "c1", "eth0").unwrap_err();
    let check = ipam.lookup("net1", "c1", "eth0").unwrap_err();
    for err in [again, del, check] {
        assert_eq!(err.cni_code(), 112, "{err}");
        assert!(err.to_string().contains(&key), "{err}");
    }
    assert_eq!(s.read("net1").unwrap_err().cni_code(), 112);
}

#[test]
fn unusable_tls_and_password_files_are_invalid_config() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let garbage = file("garbage.crt", "not a certificate\n");
    let key_as_cert = file(
        "key.pem",
        "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n-----END PRIVATE KEY-----\n",
    );
    let empty = file("empty", "");
    let missing = dir.path().join("missing.crt").display().to_string();
    let open = |store: serde_json::Value| {
        let config = berth_ipam_core::IpamConfig::from_json(&serde_json::json!({
            "store": store,
            "pools": [{"name": "a", "subnet": "10.50.0.0/24"}]
        }))
        .unwrap();
        berth_ipam_core::open_store(&config)
            .map(|_| ())
            .unwrap_err()
    };
    let https = |tls: serde_json::Value| serde_json::json!({"type": "etcd", "endpoints": ["https://127.0.0.1:1"], "tls": tls});
    for (store, says) in [
        (
            https(serde_json::json!({"ca": missing})),
            format!("store.tls.ca {missing}: cannot read it"),
        ),
        (
            https(serde_json::json!({"ca": garbage})),
            format!("store.tls.ca {garbage}: holds no PEM certificate"),
        ),
        (
            https(serde_json::json!({"ca": key_as_cert})),
            "holds no PEM certificate".to_string(),
        ),
        (
            https(serde_json::json!({"ca": key_as_cert, "cert": garbage, "key": key_as_cert})),
            "store.tls.ca".to_string(),
        ),
        (
            serde_json::json!({"type": "etcd", "endpoints": ["http://127.0.0.1:1"],
                "auth": {"user": "berth", "passwordFile": missing}}),
            format!("store.auth.passwordFile {missing}: cannot read it"),
        ),
        (
            serde_json::json!({"type": "etcd", "endpoints": ["http://127.0.0.1:1"],
                "auth": {"user": "berth", "passwordFile": empty}}),
            "is empty".to_string(),
        ),
    ] {
        let err = open(store.clone());
        assert_eq!(err.cni_code(), 7, "{store}: {err}");
        assert!(matches!(err, IpamError::InvalidConfig(_)), "{err:?}");
        assert!(err.to_string().contains(&says), "{store}: {err}");
    }
}
