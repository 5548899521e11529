//! The etcd store over TLS with client certificates (`--client-cert-auth`): failover between
//! endpoints, TLS failures (each CNI code 11, naming the endpoint and the cause, nothing
//! written) and etcd user authentication. Certificates: `tls/mod.rs` (rcgen). The conformance
//! suite over TLS is in `store_conformance.rs`.

mod conformance;
mod tls;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_ipam_core::store::etcd::{EtcdStore, Security};
use berth_ipam_core::store::{HistoryLimits, Store};
use berth_ipam_core::testsupport::{EtcdServer, ServerTls};
use berth_ipam_core::{EtcdAuth, EtcdTls, IpamError, ManualClock};
use tls::Pki;

fn start(tls: &ServerTls) -> EtcdServer {
    EtcdServer::start_with(Some(tls)).unwrap_or_else(|e| panic!("cannot start a TLS etcd: {e}"))
}

fn limits() -> HistoryLimits {
    HistoryLimits {
        max_events: 20,
        max_age: chrono::Duration::days(3650),
    }
}

fn store(
    endpoints: &[String],
    prefix: &str,
    timeout: Duration,
    tls: &EtcdTls,
    auth: Option<&EtcdAuth>,
) -> EtcdStore {
    let security = Security::load(Some(tls), auth).unwrap();
    EtcdStore::connect_with(endpoints, prefix, timeout, security, limits()).unwrap()
}

/// Allocates one address through `s`: the error, if any.
fn try_allocate(s: EtcdStore) -> Result<(), IpamError> {
    let ipam = conformance::ipam(Arc::new(s), Arc::new(ManualClock::new(conformance::t0())));
    conformance::AllocateOne::allocate_one(&ipam, &conformance::req("net1", "c1", None)).map(|_| ())
}

/// Asserts a code 11 error that names `endpoint` and contains every one of `words`.
fn assert_unavailable(err: &IpamError, endpoint: &str, words: &[&str]) {
    assert!(matches!(err, IpamError::Unavailable(_)), "{err:?}");
    assert_eq!(err.cni_code(), 11, "{err}");
    let text = err.to_string();
    assert!(text.contains(endpoint), "names the endpoint: {text}");
    for w in words {
        assert!(text.contains(w), "says {w:?}: {text}");
    }
}

#[test]
#[ignore = "needs root: run by scripts/test (spawns /usr/bin/etcd)"]
fn tls_failures_are_code_11_naming_endpoint_and_cause_and_write_nothing() {
    let pki = Pki::new();
    let good = start(&pki.server("server"));
    let expired = start(&pki.server("server-expired"));
    let wrong_name = start(&pki.server("server-wrong-name"));
    let timeout = Duration::from_secs(3);
    let cases: [(&str, &EtcdServer, EtcdTls, &[&str]); 6] = [
        (
            "unknown CA",
            &good,
            pki.tls("other-ca.crt", Some("client")),
            &["unknown CA", "store.tls.ca", "other-ca.crt"],
        ),
        (
            "no client certificate",
            &good,
            pki.tls("ca.crt", None),
            &["no client certificate", "store.tls.cert"],
        ),
        (
            "client certificate of another CA",
            &good,
            pki.tls("ca.crt", Some("client-other-ca")),
            &["client certificate", "client-other-ca.crt"],
        ),
        (
            "expired client certificate",
            &good,
            pki.tls("ca.crt", Some("client-expired")),
            &["client certificate", "client-expired.crt"],
        ),
        (
            "expired server certificate",
            &expired,
            pki.tls("ca.crt", Some("client")),
            &["server's certificate has expired"],
        ),
        (
            "name mismatch",
            &wrong_name,
            pki.tls("ca.crt", Some("client")),
            &["name mismatch", "\"127.0.0.1\""],
        ),
    ];
    for (what, server, tls, words) in cases {
        let started = Instant::now();
        let err = try_allocate(store(
            std::slice::from_ref(&server.endpoint),
            "/tls-fail",
            timeout,
            &tls,
            None,
        ))
        .expect_err(what);
        eprintln!("{what}: {err}");
        assert_unavailable(&err, &server.endpoint, words);
        assert!(
            started.elapsed() < timeout + Duration::from_secs(1),
            "{what}: fails within store.timeout ({:?})",
            started.elapsed()
        );
    }
    // Nothing was written (the other two servers never finished a handshake).
    let s = store(
        std::slice::from_ref(&good.endpoint),
        "/tls-fail",
        timeout,
        &pki.tls("ca.crt", Some("client")),
        None,
    );
    assert_eq!(s.networks().unwrap(), Vec::<String>::new());
}

#[test]
#[ignore = "needs root: run by scripts/test (spawns /usr/bin/etcd)"]
fn failover_serves_from_the_next_endpoint_within_the_timeout() {
    let pki = Pki::new();
    let first = start(&pki.server("server"));
    let second = start(&pki.server("server"));
    let tls = pki.tls("ca.crt", Some("client"));
    let timeout = Duration::from_secs(2);
    // A port nobody listens on (bound, then released): connection refused.
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = format!("https://127.0.0.1:{dead_port}");

    // The first endpoint down: the second serves.
    let started = Instant::now();
    let s = store(
        &[dead.clone(), second.endpoint.clone()],
        "/failover",
        timeout,
        &tls,
        None,
    );
    s.status().unwrap();
    assert!(started.elapsed() < timeout, "{:?}", started.elapsed());

    // The first endpoint hung (SIGSTOP: it accepts TCP but never answers): the second serves
    // within store.timeout, and allocations made through either are the same store.
    struct Cont(i32);
    impl Drop for Cont {
        fn drop(&mut self) {
            // SAFETY: kill(2) takes plain integers; the pid is the test's own etcd child.
            unsafe { libc::kill(self.0, libc::SIGCONT) };
        }
    }
    let both = [first.endpoint.clone(), second.endpoint.clone()];
    let s = Arc::new(store(&both, "/failover", timeout, &tls, None));
    let ipam = conformance::ipam(s.clone(), Arc::new(ManualClock::new(conformance::t0())));
    let a = conformance::AllocateOne::allocate_one(&ipam, &conformance::req("net1", "c1", None))
        .unwrap();
    // SAFETY: kill(2) takes plain integers; the pid is the test's own etcd child.
    assert_eq!(unsafe { libc::kill(first.pid() as i32, libc::SIGSTOP) }, 0);
    let guard = Cont(first.pid() as i32);
    let started = Instant::now();
    let b = conformance::AllocateOne::allocate_one(&ipam, &conformance::req("net1", "c2", None))
        .unwrap();
    let took = started.elapsed();
    assert!(took < timeout, "served by the second endpoint in {took:?}");
    assert_ne!(a.address, b.address);
    eprintln!("failover to the second endpoint took {took:?}");
    // Both down: code 11 naming both endpoints.
    drop(second);
    let err = conformance::AllocateOne::allocate_one(&ipam, &conformance::req("net1", "c3", None))
        .unwrap_err();
    assert_unavailable(&err, &first.endpoint, &["no answer"]);
    assert!(err.to_string().contains(&both[1]), "{err}");
    drop(guard);
    // Thawed, the first endpoint serves again (these are two one-member clusters, so it has
    // only what it got before it hung).
    let leases = s.read("net1").unwrap();
    assert!(
        leases
            .values()
            .any(|l| l.attachment() == Some(("c1", "eth0")))
    );
}

#[test]
#[ignore = "needs root: run by scripts/test (spawns /usr/bin/etcd)"]
fn user_and_password_over_tls_and_a_wrong_password_is_clear() {
    let pki = Pki::new();
    // Auth tokens live 1 s here (etcd's default is 5 min): the store must log in again.
    let etcd = EtcdServer::start_with_args(Some(&pki.server("server")), &["--auth-token-ttl=1"])
        .unwrap_or_else(|e| panic!("cannot start a TLS etcd: {e}"));
    let tls = pki.tls("ca.crt", Some("client"));
    enable_auth(&etcd, &pki, "berth", "s3cret");
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let auth = |file: &Path| EtcdAuth {
        user: "berth".into(),
        password_file: file.to_path_buf(),
    };
    let timeout = Duration::from_secs(3);
    let ep = std::slice::from_ref(&etcd.endpoint);

    // Right password (with the trailing newline `echo` leaves): allocations work.
    let right = auth(&write("right", "s3cret\n"));
    try_allocate(store(ep, "/auth", timeout, &tls, Some(&right))).unwrap();
    let s = store(ep, "/auth", timeout, &tls, Some(&right));
    assert_eq!(s.read("net1").unwrap().len(), 1);
    // Idle longer than the token lives (as the agent is between calls): still served.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(s.read("net1").unwrap().len(), 1);

    // Wrong password: code 11 naming the endpoint, the user and what to check.
    let wrong = auth(&write("wrong", "guess\n"));
    let err = try_allocate(store(ep, "/auth", timeout, &tls, Some(&wrong))).unwrap_err();
    eprintln!("wrong password: {err}");
    assert_unavailable(
        &err,
        &etcd.endpoint,
        &["refused user \"berth\"", "store.auth.passwordFile"],
    );
    // No credentials at all on an etcd that requires them.
    let err = try_allocate(store(ep, "/auth", timeout, &tls, None)).unwrap_err();
    eprintln!("no credentials: {err}");
    assert_unavailable(
        &err,
        &etcd.endpoint,
        &["permission denied", "set store.auth"],
    );
    // Nothing more was written.
    assert_eq!(s.read("net1").unwrap().len(), 1);
}

/// Adds `root` and `user` (granted read-write on everything) and enables authentication.
fn enable_auth(etcd: &EtcdServer, pki: &Pki, user: &str, password: &str) {
    use etcd_client::{Client, ConnectOptions, Identity, Permission, TlsOptions};
    let read = |n: &str| std::fs::read(pki.path(n)).unwrap();
    let tls = TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(read("ca.crt")))
        .identity(Identity::from_pem(read("client.crt"), read("client.key")));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = Client::connect(
            [etcd.endpoint.clone()],
            Some(ConnectOptions::new().with_tls(tls)),
        )
        .await
        .unwrap();
        c.user_add("root", "root-pw", None).await.unwrap();
        c.user_grant_role("root", "root").await.unwrap();
        c.role_add("berth-rw").await.unwrap();
        c.role_grant_permission("berth-rw", Permission::read_write("").with_all_keys())
            .await
            .unwrap();
        c.user_add(user, password, None).await.unwrap();
        c.user_grant_role(user, "berth-rw").await.unwrap();
        c.auth_enable().await.unwrap();
    });
}
