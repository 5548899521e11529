//! The API server end to end, in-process: real TLS on 127.0.0.1, a real unix socket,
//! certificates made here with rcgen.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_api::{BackendError, Server};
use berth_api_client::pki::{Authority, Validity};
use berth_proto::v1;
use support::*;
use tokio_stream::StreamExt;
use tonic::Code;

fn pod(ns: &str, name: &str) -> Option<v1::PodRef> {
    Some(v1::PodRef {
        namespace: ns.into(),
        pod: name.into(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_call_works_and_is_audited() {
    let bed = Bed::new(POLICY);
    let srv = bed.start(bed.config()).await;
    let info = node(&srv, &bed.alice())
        .await
        .info(v1::NodeInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.node_name, "node-1");
    assert_eq!(info.rack, "rack-7");
    let caller = info.caller.unwrap();
    assert_eq!(caller.identity, "cn:alice");
    assert_eq!(caller.groups, vec!["ops"]);
    assert_eq!(caller.roles, vec!["admin"]);
    assert_eq!(caller.transport, "mtls");
    let caps = node(&srv, &bed.alice())
        .await
        .capabilities(v1::CapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        caps.services,
        [
            "berth.v1.Node",
            "berth.v1.Audit",
            "berth.v1.Grants",
            "berth.v1.Logs",
            "berth.v1.Ipam"
        ]
    );
    assert!(caps.features.iter().any(|f| f == "logs.follow"));
    assert!(!caps.features.iter().any(|f| f == "tls.crl"));

    let lines = bed.audit_lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let l = &lines[0];
    assert_eq!(l["event"], "call");
    assert_eq!(l["identity"], "cn:alice");
    assert_eq!(l["method"], "/berth.v1.Node/Info");
    assert_eq!(l["decision"], "allow");
    assert_eq!(l["code"], 0);
    assert!(l["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(l["bytes_sent"].as_u64().unwrap() > 0);
    srv.shutdown().await.unwrap();
}

async fn assert_refused(
    bed: &Bed,
    srv: &berth_api::RunningServer,
    files: &berth_api_client::TlsFiles,
    reason: &str,
) {
    assert_refused_after(bed, srv, files, reason, 0).await
}

/// Like [`assert_refused`], when `audited` lines were written before.
async fn assert_refused_after(
    bed: &Bed,
    srv: &berth_api::RunningServer,
    files: &berth_api_client::TlsFiles,
    reason: &str,
    audited: usize,
) {
    let res = async {
        let ch = tls_channel(srv, files).await.map_err(|e| e.to_string())?;
        v1::node_client::NodeClient::new(ch)
            .info(v1::NodeInfoRequest {})
            .await
            .map_err(|e| e.to_string())
    }
    .await;
    assert!(res.is_err(), "call with a bad certificate succeeded");
    assert!(
        // tonic reconnects after a refused handshake, so it may be refused several times.
        eventually(Duration::from_secs(5), || srv
            .metrics
            .handshake_failures(reason)
            >= 1)
        .await,
        "server did not refuse the handshake for {reason}: {}",
        srv.metrics.render()
    );
    assert_eq!(
        bed.audit_lines().len(),
        audited,
        "a refused handshake reached the RPC layer"
    );
    let text = srv.metrics.render();
    let kinds = text
        .lines()
        .filter(|l| l.starts_with("berth_api_tls_handshake_failures_total{"))
        .count();
    assert_eq!(kinds, 1, "refused for another reason too: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_cert_is_refused_at_handshake() {
    let bed = Bed::new(POLICY);
    let srv = bed.start(bed.config()).await;
    let ca = bed.path("ca.pem");
    let cfg = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(
            std::fs::read(ca).unwrap(),
        ))
        .domain_name("localhost");
    let res = async {
        let ch =
            tonic::transport::Endpoint::from_shared(format!("https://{}", srv.tcp_addr.unwrap()))
                .unwrap()
                .tls_config(cfg)
                .unwrap()
                .connect()
                .await?;
        Ok::<_, Box<dyn std::error::Error>>(
            v1::node_client::NodeClient::new(ch)
                .info(v1::NodeInfoRequest {})
                .await?,
        )
    }
    .await;
    assert!(res.is_err());
    assert!(
        eventually(Duration::from_secs(5), || srv
            .metrics
            .handshake_failures("no_client_cert")
            >= 1)
        .await,
        "{}",
        srv.metrics.render()
    );
    assert!(bed.audit_lines().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_from_another_ca_is_refused() {
    let bed = Bed::new(POLICY);
    let srv = bed.start(bed.config()).await;
    let rogue = Authority::new("rogue CA", Validity::days(1)).unwrap();
    // Same CN and group as the admin: only the issuer differs.
    let files = bed.client_files(&rogue, "alice", &["ops"], Validity::days(1));
    assert_refused(&bed, &srv, &files, "unknown_ca").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_cert_is_refused() {
    let bed = Bed::new(POLICY);
    let srv = bed.start(bed.config()).await;
    let files = bed.client_files(&bed.ca, "alice", &["ops"], Validity::expired());
    assert_refused(&bed, &srv, &files, "expired").await;
}

/// A CRL written while the server runs revokes a client at once; the others still connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_cert_is_refused_after_crl_reload() {
    let bed = Bed::new(POLICY);
    let mut cfg = bed.config();
    let crl = bed.path("ca.crl");
    std::fs::write(&crl, bed.ca.crl(&[], 1, 1).unwrap()).unwrap();
    cfg.tls.as_mut().unwrap().crl = Some(crl.clone());
    let srv = bed.start(cfg).await;
    let bob_cert = berth_api_client::pki::ClientSpec {
        common_name: "bob".into(),
        ..Default::default()
    };
    let issued = bed.ca.issue_client(&bob_cert, Validity::days(1)).unwrap();
    let bob = bed.write_client("bob", &issued);
    node(&srv, &bob)
        .await
        .info(v1::NodeInfoRequest {})
        .await
        .unwrap();

    let tls = srv.tls.clone().unwrap();
    let gen0 = tls.generation();
    std::fs::write(
        bed.path("ca.crl.new"),
        bed.ca.crl(&[&issued.serial], 2, 1).unwrap(),
    )
    .unwrap();
    std::fs::rename(bed.path("ca.crl.new"), &crl).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || tls.generation() > gen0).await,
        "CRL change not picked up"
    );
    assert_refused_after(&bed, &srv, &bob, "revoked", 1).await;
    node(&srv, &bed.alice())
        .await
        .info(v1::NodeInfoRequest {})
        .await
        .unwrap();

    // A broken CRL is refused; the revocation stays in force.
    let gen1 = tls.generation();
    std::fs::write(&crl, "not a crl").unwrap();
    assert!(eventually(Duration::from_secs(5), || tls.last_error().is_some()).await);
    assert_eq!(tls.generation(), gen1);
    let res = async {
        let ch = tls_channel(&srv, &bob).await.map_err(|e| e.to_string())?;
        v1::node_client::NodeClient::new(ch)
            .info(v1::NodeInfoRequest {})
            .await
            .map_err(|e| e.to_string())
    }
    .await;
    assert!(
        res.is_err(),
        "revoked client accepted after a bad CRL write"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_without_the_rpc_is_denied_and_audited() {
    let bed = Bed::new(POLICY);
    let ipam = Arc::new(FakeIpam::default());
    let srv = bed.start_with(bed.config(), ipam.clone()).await;
    let ch = tls_channel(&srv, &bed.bob()).await.unwrap();

    let st = v1::node_client::NodeClient::new(ch.clone())
        .health(v1::HealthRequest {})
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied);
    assert_eq!(
        st.message(),
        "roles [reader] of cn:bob do not allow method /berth.v1.Node/Health"
    );

    let st = v1::ipam_client::IpamClient::new(ch.clone())
        .reserve(v1::ReserveRequest {
            pool: "p".into(),
            address: "10.9.0.5".into(),
            namespace: "team-a".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied);
    assert!(
        ipam.calls.lock().unwrap().is_empty(),
        "denied call reached the backend"
    );

    // Right method, wrong namespace.
    let st = v1::logs_client::LogsClient::new(ch)
        .list(v1::ListLogsRequest {
            pod: pod("kube-system", "etcd-0"),
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied);
    assert!(
        st.message().contains("not in namespace \"kube-system\""),
        "{}",
        st.message()
    );

    let lines = bed.audit_lines();
    assert_eq!(lines.len(), 3, "{lines:?}");
    for l in &lines {
        assert_eq!(l["decision"], "deny");
        assert_eq!(l["code"], Code::PermissionDenied as i32);
        assert_eq!(l["identity"], "cn:bob");
        assert!(!l["reason"].as_str().unwrap().is_empty());
    }
    assert_eq!(lines[1]["method"], "/berth.v1.Ipam/Reserve");
    assert_eq!(lines[1]["target"], "address 10.9.0.5 namespace team-a");
    assert_eq!(lines[2]["target"], "pod kube-system/etcd-0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_reload_changes_the_decision_without_restart() {
    let bed = Bed::new(POLICY);
    let srv = bed.start(bed.config()).await;
    let mut bob = node(&srv, &bed.bob()).await;
    assert_eq!(
        bob.health(v1::HealthRequest {}).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let gen0 = srv.policy.generation();
    let new = POLICY.replace(
        "methods = [\"berth.v1.Logs/*\", \"berth.v1.Node/Info\"]",
        "methods = [\"berth.v1.Logs/*\", \"berth.v1.Node/*\"]",
    );
    assert_ne!(new, POLICY);
    // Write-then-rename, as editors and config management do.
    std::fs::write(bed.path("policy.toml.new"), &new).unwrap();
    std::fs::rename(bed.path("policy.toml.new"), bed.path("policy.toml")).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || srv.policy.generation() > gen0).await,
        "watcher did not reload the policy"
    );
    // Same connection, new decision.
    let h = bob.health(v1::HealthRequest {}).await.unwrap().into_inner();
    assert_eq!(h.status, v1::ServingStatus::Serving as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_new_policy_keeps_the_old_one() {
    let bed = Bed::new(POLICY);
    let srv = bed.start(bed.config()).await;
    let mut alice = node(&srv, &bed.alice()).await;
    alice.info(v1::NodeInfoRequest {}).await.unwrap();
    let gen0 = srv.policy.generation();
    // Would deny everyone if it were taken: it names an undefined role.
    std::fs::write(
        bed.path("policy.toml"),
        "[[bindings]]\nrole = \"ghost\"\ngroups = [\"ops\"]\n",
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || srv.policy.last_error().is_some()).await,
        "watcher did not see the change"
    );
    assert!(srv.policy.last_error().unwrap().contains("not defined"));
    assert_eq!(srv.policy.generation(), gen0);
    alice.info(v1::NodeInfoRequest {}).await.unwrap();
    // Health reports the refused reload.
    let h = alice
        .health(v1::HealthRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h.status, v1::ServingStatus::Degraded as i32);
    let p = h.components.iter().find(|c| c.name == "policy").unwrap();
    assert!(
        !p.healthy && p.message.contains("previous policy in force"),
        "{p:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_write_failure_fails_the_call() {
    let bed = Bed::new(POLICY);
    let mut cfg = bed.config();
    // Every write to /dev/full fails with ENOSPC.
    cfg.audit = berth_api::AuditConfig::new("/dev/full");
    let ipam = Arc::new(FakeIpam::default());
    let srv = bed.start_with(cfg, ipam.clone()).await;
    let ch = tls_channel(&srv, &bed.alice()).await.unwrap();
    let st = v1::node_client::NodeClient::new(ch.clone())
        .info(v1::NodeInfoRequest {})
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::Unavailable);
    assert!(
        st.message().contains("audit log /dev/full is not writable"),
        "{}",
        st.message()
    );
    // A mutating call never runs: its intent line could not be written.
    let st = v1::ipam_client::IpamClient::new(ch.clone())
        .reserve(v1::ReserveRequest {
            pool: "p".into(),
            address: "10.9.0.5".into(),
            namespace: "team-a".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::Unavailable);
    assert!(
        ipam.calls.lock().unwrap().is_empty(),
        "unaudited action ran"
    );
    // A stream never starts.
    let st = v1::logs_client::LogsClient::new(ch)
        .read(v1::ReadLogRequest {
            pod: pod("team-a", "web-0"),
            dir: "app".into(),
            path: "app.log".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::Unavailable);
    assert!(
        srv.metrics
            .render()
            .contains("berth_api_audit_write_failures_total 3")
    );
}

/// The final line of a stream cannot be written: the stream ends UNAVAILABLE, not OK, even
/// though its data was sent (its intent line is on disk).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_whose_final_audit_line_fails_ends_unavailable() {
    let bed = Bed::new(POLICY);
    let mut cfg = bed.config();
    cfg.audit.max_bytes = 4096;
    cfg.audit.keep = 1;
    // 3500 bytes already there: the intent line (~400 B) fits, the call line does not, so
    // the log rotates then — into a non-empty directory, which fails.
    std::fs::write(bed.audit_path(), format!("{}\n", "x".repeat(3499))).unwrap();
    std::fs::create_dir_all(bed.path("audit.log.1/blocker")).unwrap();
    let srv = bed.start(cfg).await;
    let mut c = v1::logs_client::LogsClient::new(tls_channel(&srv, &bed.alice()).await.unwrap());
    let mut s = c
        .read(v1::ReadLogRequest {
            pod: pod("team-a", "web-0"),
            dir: "app".into(),
            path: "app.log".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut data = Vec::new();
    let st = loop {
        match s.next().await {
            Some(Ok(c)) => data.extend(c.data),
            Some(Err(st)) => break st,
            None => panic!(
                "stream ended OK without its audit line: {}",
                std::fs::read_to_string(bed.audit_path()).unwrap()
            ),
        }
    };
    assert_eq!(data, b"one\ntwo\nthree\n");
    assert_eq!(st.code(), Code::Unavailable, "{st:?}");
    assert!(st.message().contains("audit log"), "{}", st.message());
    let text = std::fs::read_to_string(bed.audit_path()).unwrap();
    assert!(text.contains("\"event\":\"intent\""), "{text}");
    assert!(!text.contains("\"event\":\"call\""));
}

async fn read_all(
    c: &mut v1::logs_client::LogsClient<tonic::transport::Channel>,
    req: v1::ReadLogRequest,
) -> Result<Vec<u8>, tonic::Status> {
    let mut s = c.read(req).await?.into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend(chunk?.data);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_cannot_escape_the_pod_dir() {
    let bed = Bed::new(POLICY);
    let srv = bed.start(bed.config()).await;
    let mut c = v1::logs_client::LogsClient::new(tls_channel(&srv, &bed.bob()).await.unwrap());
    let req = |path: &str| v1::ReadLogRequest {
        pod: pod("team-a", "web-0"),
        dir: "app".into(),
        path: path.into(),
        ..Default::default()
    };
    assert_eq!(
        read_all(&mut c, req("app.log")).await.unwrap(),
        b"one\ntwo\nthree\n"
    );
    assert_eq!(read_all(&mut c, req("sub/x.log")).await.unwrap(), b"x");
    for (path, code, says) in [
        ("../../../../host-secret", Code::InvalidArgument, "'..'"),
        ("sub/../../x", Code::InvalidArgument, "'..'"),
        ("/etc/passwd", Code::InvalidArgument, "absolute"),
        ("evil", Code::PermissionDenied, "symlink"),
        ("evil-dir/host-secret", Code::PermissionDenied, "symlink"),
        ("nope.log", Code::NotFound, "does not exist"),
    ] {
        let st = read_all(&mut c, req(path)).await.unwrap_err();
        assert_eq!(st.code(), code, "{path}: {st:?}");
        assert!(st.message().contains(says), "{path}: {}", st.message());
    }
    // The dir name is looked up among the pod's dirs, never joined as a path.
    let mut bad_dir = req("app.log");
    bad_dir.dir = "../../kube-system/etcd-0/etcd".into();
    let st = read_all(&mut c, bad_dir).await.unwrap_err();
    assert_eq!(st.code(), Code::NotFound, "{st:?}");

    // The listing shows only regular files; symlinks are not listed.
    let list = c
        .list(v1::ListLogsRequest {
            pod: pod("team-a", "web-0"),
        })
        .await
        .unwrap()
        .into_inner();
    let files: Vec<&str> = list.dirs[0].files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(files, ["app.log", "sub/x.log"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_and_follow_stream_appended_lines_and_audit_bytes() {
    let bed = Bed::new(POLICY);
    let mut cfg = bed.config();
    cfg.logs.follow_poll_ms = 20;
    let srv = bed.start(cfg).await;
    let mut c = v1::logs_client::LogsClient::new(tls_channel(&srv, &bed.alice()).await.unwrap());
    let mut s = c
        .read(v1::ReadLogRequest {
            pod: pod("team-a", "web-0"),
            dir: "app".into(),
            path: "app.log".into(),
            tail_lines: 1,
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = s.next().await.unwrap().unwrap();
    assert_eq!(first.data, b"three\n");
    assert_eq!(first.offset, 8);
    let log = bed.logs_root.join("team-a/web-0/app/app.log");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(b"four\n").unwrap();
    }
    let next = tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .expect("appended line not streamed")
        .unwrap()
        .unwrap();
    assert_eq!(next.data, b"four\n");
    assert_eq!(next.offset, 14);
    // Truncation (copytruncate) restarts at 0 and says so.
    std::fs::write(&log, "new\n").unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(next.truncated);
    assert_eq!((next.offset, next.data.as_slice()), (0, &b"new\n"[..]));
    // Rotation by rename: the follower drains the old file, then switches to the new one.
    std::fs::rename(&log, log.with_extension("log.1")).unwrap();
    std::fs::write(&log, "rotated\n").unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .expect("rotation not followed")
        .unwrap()
        .unwrap();
    assert!(next.truncated);
    assert_eq!((next.offset, next.data.as_slice()), (0, &b"rotated\n"[..]));
    drop(s);
    // Intent before, call line (CANCELLED: the client hung up) after, with the bytes sent.
    assert!(
        eventually(Duration::from_secs(5), || bed.audit_lines().len() == 2).await,
        "{:?}",
        bed.audit_lines()
    );
    let lines = bed.audit_lines();
    assert_eq!(lines[0]["event"], "intent");
    assert_eq!(lines[1]["event"], "call");
    assert_eq!(lines[1]["code"], Code::Cancelled as i32);
    assert!(lines[1]["bytes_sent"].as_u64().unwrap() >= 23);
}

fn untar(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    use std::io::Read;
    let mut a = tar::Archive::new(bytes);
    a.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let mut d = Vec::new();
            e.read_to_end(&mut d).unwrap();
            (e.path().unwrap().display().to_string(), d)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_is_a_tar_and_oversize_is_refused_clearly() {
    let bed = Bed::new(POLICY);
    let mut cfg = bed.config();
    cfg.logs.max_download_bytes = 1000;
    let srv = bed.start(cfg).await;
    let mut c = v1::logs_client::LogsClient::new(tls_channel(&srv, &bed.alice()).await.unwrap());
    let req = v1::DownloadLogsRequest {
        pod: pod("team-a", "web-0"),
        dir: "app".into(),
    };
    let mut s = c.download(req.clone()).await.unwrap().into_inner();
    let mut tar_bytes = Vec::new();
    let mut expected = 0;
    while let Some(chunk) = s.next().await {
        let chunk = chunk.unwrap();
        if expected == 0 {
            expected = chunk.expected_bytes;
        }
        tar_bytes.extend(chunk.data);
    }
    assert_eq!(tar_bytes.len() as u64, expected);
    assert_eq!(
        untar(&tar_bytes),
        vec![
            ("app/app.log".to_string(), b"one\ntwo\nthree\n".to_vec()),
            ("app/sub/x.log".to_string(), b"x".to_vec())
        ]
    );
    std::fs::write(
        bed.logs_root.join("team-a/web-0/app/big.log"),
        vec![b'z'; 2000],
    )
    .unwrap();
    let st = c.download(req).await.unwrap_err();
    assert_eq!(st.code(), Code::ResourceExhausted);
    assert!(
        st.message()
            .contains("holds 2015 bytes, over the download limit of 1000 bytes"),
        "{}",
        st.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_download_client_times_out() {
    let bed = Bed::new(POLICY);
    let mut cfg = bed.config();
    cfg.logs.slow_client_timeout_ms = 300;
    let srv = bed.start(cfg).await;
    // 8 MiB: far more than the HTTP/2 windows and the stream buffer hold.
    std::fs::write(
        bed.logs_root.join("team-a/web-0/app/big.log"),
        vec![b'z'; 8 << 20],
    )
    .unwrap();
    let mut c = v1::logs_client::LogsClient::new(tls_channel(&srv, &bed.alice()).await.unwrap());
    let mut s = c
        .download(v1::DownloadLogsRequest {
            pod: pod("team-a", "web-0"),
            dir: "app".into(),
        })
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut got = 0usize;
    let err = loop {
        match tokio::time::timeout(Duration::from_secs(10), s.next())
            .await
            .unwrap()
        {
            Some(Ok(c)) => got += c.data.len(),
            Some(Err(st)) => break st,
            None => panic!("stream ended without an error after {got} bytes"),
        }
    };
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains("client read nothing for 300 ms"));
    assert!(got < 8 << 20);
    // The call is audited with its failure code.
    assert!(
        eventually(Duration::from_secs(5), || {
            bed.audit_lines().iter().any(|l| {
                l["event"] == "call"
                    && l["code"] == Code::DeadlineExceeded as i32
                    && l["reason"]
                        .as_str()
                        .unwrap()
                        .contains("client read nothing")
            })
        })
        .await,
        "{:?}",
        bed.audit_lines()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipam_is_scoped_to_the_namespace_the_caller_named() {
    let policy = format!(
        "{POLICY}\n[roles.netops]\nmethods = [\"berth.v1.Ipam/*\"]\nnamespaces = [\"team-a\"]\n\
         [[bindings]]\nrole = \"netops\"\nidentities = [\"cn:nina\"]\n"
    );
    let bed = Bed::new(&policy);
    let theirs = v1::Allocation {
        pool: "p".into(),
        address: "10.9.0.7".into(),
        state: "allocated".into(),
        namespace: "team-b".into(),
        ..Default::default()
    };
    let ipam = Arc::new(FakeIpam::with(vec![theirs]));
    let srv = bed.start_with(bed.config(), ipam.clone()).await;
    let nina = bed.client_files(&bed.ca, "nina", &[], Validity::days(1));
    let mut c = v1::ipam_client::IpamClient::new(tls_channel(&srv, &nina).await.unwrap());
    let a = c
        .reserve(v1::ReserveRequest {
            network: "net1".into(),
            pool: "p".into(),
            address: "10.9.0.5".into(),
            namespace: "team-a".into(),
            owner: "db-0".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (a.state.as_str(), a.namespace.as_str()),
        ("reserved", "team-a")
    );
    // Claiming team-a while releasing team-b's address: looks like it does not exist.
    let st = c
        .release(v1::ReleaseRequest {
            network: "net1".into(),
            pool: "p".into(),
            address: "10.9.0.7".into(),
            namespace: "team-a".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::NotFound);
    let failed = bed
        .audit_lines()
        .into_iter()
        .find(|l| l["event"] == "call" && l["method"] == "/berth.v1.Ipam/Release")
        .unwrap();
    assert_eq!(failed["decision"], "allow");
    assert_eq!(failed["code"], Code::NotFound as i32);
    assert_eq!(
        failed["reason"],
        "address 10.9.0.7 not found in namespace \"team-a\""
    );
    let calls = ipam.calls.lock().unwrap().clone();
    assert_eq!(calls, ["reserve 10.9.0.5 by cn:nina", "show 10.9.0.7"]);
    // Listing every namespace needs a "*" scope.
    let st = c
        .list(v1::ListAllocationsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied);
    let mine = c
        .list(v1::ListAllocationsRequest {
            namespace: "team-a".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mine.allocations.len(), 1);
    // Mutations have an intent line before the call line.
    let lines = bed.audit_lines();
    assert_eq!(lines[0]["event"], "intent");
    assert_eq!(lines[0]["method"], "/berth.v1.Ipam/Reserve");
    assert_eq!(lines[1]["event"], "call");
    assert_eq!(lines[1]["call_id"], lines[0]["call_id"]);
}

/// A client that hangs up while a call runs cannot skip its audit line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hang_up_mid_call_is_still_audited() {
    let bed = Bed::new(POLICY);
    let ipam = Arc::new(FakeIpam::default());
    *ipam.reserve_delay.lock().unwrap() = Duration::from_millis(400);
    let srv = bed.start_with(bed.config(), ipam.clone()).await;
    let mut c = v1::ipam_client::IpamClient::new(tls_channel(&srv, &bed.alice()).await.unwrap());
    let call = c.reserve(v1::ReserveRequest {
        network: "net1".into(),
        address: "10.9.0.5".into(),
        namespace: "team-a".into(),
        owner: "db-0".into(),
        ..Default::default()
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(100), call)
            .await
            .is_err(),
        "call should still be running"
    );
    // The client gave up (stream reset); the server finishes the call and audits it.
    assert!(
        eventually(Duration::from_secs(5), || bed.audit_lines().len() == 2).await,
        "{:?}",
        bed.audit_lines()
    );
    let lines = bed.audit_lines();
    assert_eq!(lines[0]["event"], "intent");
    assert_eq!(lines[1]["event"], "call");
    assert_eq!(lines[1]["code"], 0);
    assert_eq!(ipam.calls.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_identity_is_the_peer_uid() {
    let uid = rustix::process::getuid().as_raw();
    let policy = format!(
        "[roles.local]\nmethods = [\"berth.v1.Node/Info\"]\n[[bindings]]\nrole = \"local\"\nidentities = [\"unix:uid:{uid}\"]\n"
    );
    let bed = Bed::new(&policy);
    let mut cfg = bed.config();
    cfg.listen = None;
    cfg.tls = None;
    let sock = bed.path("run/api.sock");
    cfg.unix_socket = Some(sock.clone());
    let srv = bed.start(cfg).await;
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let ch = berth_api_client::connect(&format!("unix://{}", sock.display()), None)
        .await
        .unwrap();
    let mut n = v1::node_client::NodeClient::new(ch);
    let info = n.info(v1::NodeInfoRequest {}).await.unwrap().into_inner();
    let caller = info.caller.unwrap();
    assert_eq!(caller.identity, format!("unix:uid:{uid}"));
    assert_eq!(caller.transport, "unix");
    assert_eq!(caller.roles, vec!["local"]);
    // The same uid is denied what its role lacks.
    assert_eq!(
        n.health(v1::HealthRequest {}).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let lines = bed.audit_lines();
    assert_eq!(lines[0]["transport"], "unix");
    assert_eq!(lines[0]["peer"], format!("unix:pid:{}", std::process::id()));
    srv.shutdown().await.unwrap();
    assert!(!sock.exists(), "socket left behind after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tcp_peer_is_dropped_after_the_handshake_timeout() {
    use tokio::io::AsyncReadExt;
    let bed = Bed::new(POLICY);
    let mut cfg = bed.config();
    cfg.handshake_timeout_ms = 200;
    let srv = bed.start(cfg).await;
    let mut s = tokio::net::TcpStream::connect(srv.tcp_addr.unwrap())
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    // Says nothing: the server closes the socket (read returns EOF) after ~200 ms.
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("server kept a silent connection open")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(srv.metrics.handshake_failures("timeout"), 1);
    // The listener still serves real clients.
    node(&srv, &bed.alice())
        .await
        .info(v1::NodeInfoRequest {})
        .await
        .unwrap();
}

/// Shutdown does not hang on a follower that never ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cuts_open_follow_streams() {
    let bed = Bed::new(POLICY);
    let srv = bed.start(bed.config()).await;
    let mut c = v1::logs_client::LogsClient::new(tls_channel(&srv, &bed.alice()).await.unwrap());
    let mut s = c
        .read(v1::ReadLogRequest {
            pod: pod("team-a", "web-0"),
            dir: "app".into(),
            path: "app.log".into(),
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    s.next().await.unwrap().unwrap();
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), srv.shutdown())
        .await
        .expect("shutdown hung")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(8));
    // The client sees its stream end (with an error or not), not hang.
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = s.next().await {}
    })
    .await;
    assert!(end.is_ok(), "client stream still open after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_method_is_denied_and_audited() {
    let bed = Bed::new(POLICY);
    let srv = bed.start(bed.config()).await;
    let ch = tls_channel(&srv, &bed.alice()).await.unwrap();
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<v1::NodeInfoRequest, v1::NodeInfo>::default();
    let st = grpc
        .unary(
            tonic::Request::new(v1::NodeInfoRequest {}),
            http::uri::PathAndQuery::from_static("/berth.v1.Node/Reboot"),
            codec,
        )
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::Unimplemented);
    let lines = bed.audit_lines();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["method"], "/berth.v1.Node/Reboot");
    assert_eq!(lines[0]["decision"], "deny");
    assert_eq!(lines[0]["code"], Code::Unimplemented as i32);
}

#[tokio::test]
async fn plaintext_tcp_refused_at_start() {
    let bed = Bed::new(POLICY);
    let mut cfg = bed.config();
    cfg.tls = None;
    let err = berth_api::Server::builder(cfg).start().await.err().unwrap();
    assert!(matches!(err, berth_api::ApiError::Config(_)), "{err:?}");
    assert!(err.to_string().contains("no plaintext remote mode"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_query_and_metrics_endpoint() {
    let bed = Bed::new(POLICY);
    let mut cfg = bed.config();
    cfg.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    let srv = bed.start(cfg).await;
    let mut bob = node(&srv, &bed.bob()).await;
    bob.info(v1::NodeInfoRequest {}).await.unwrap();
    bob.health(v1::HealthRequest {}).await.unwrap_err();
    let ch = tls_channel(&srv, &bed.alice()).await.unwrap();
    let r = v1::audit_client::AuditClient::new(ch)
        .query(v1::AuditQueryRequest {
            identity: "cn:bob".into(),
            decision: "deny".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.records.len(), 1);
    assert_eq!(r.records[0].method, "/berth.v1.Node/Health");

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(srv.metrics_addr.unwrap())
        .await
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(
        text.contains("berth_api_calls_total{method=\"/berth.v1.Node/Info\",code=\"OK\"} 1"),
        "{text}"
    );
    assert!(text.contains(
        "berth_api_calls_total{method=\"/berth.v1.Node/Health\",code=\"PERMISSION_DENIED\"} 1"
    ));
}

/// LOAD: 1,000 concurrent calls over loopback mTLS, every one audited, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_1000_concurrent_calls_all_audited() {
    const CALLS: usize = 1000;
    const CONNS: usize = 8;
    let bed = Bed::new(POLICY);
    let srv = bed.start(bed.config()).await;
    let alice = bed.alice();
    let bob = bed.bob();
    let mut channels = Vec::new();
    for i in 0..CONNS {
        let f = if i % 2 == 0 { &alice } else { &bob };
        channels.push(tls_channel(&srv, f).await.unwrap());
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..CALLS {
        let mut n = v1::node_client::NodeClient::new(channels[(i / 2) % CONNS].clone());
        tasks.spawn(async move {
            // Even i: Info (allowed for both); odd i: Health (denied for bob).
            if i % 2 == 0 {
                n.info(v1::NodeInfoRequest {})
                    .await
                    .map(|_| ())
                    .map_err(|s| s.code())
            } else {
                n.health(v1::HealthRequest {})
                    .await
                    .map(|_| ())
                    .map_err(|s| s.code())
            }
        });
    }
    let mut ok = 0;
    let mut denied = 0;
    let all = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(r) = tasks.join_next().await {
            match r.unwrap() {
                Ok(()) => ok += 1,
                Err(Code::PermissionDenied) => denied += 1,
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    assert!(all.is_ok(), "load did not finish in 120 s");
    let elapsed = started.elapsed();
    // bob's Health calls: odd i on odd channels.
    let bob_health = (0..CALLS)
        .filter(|i| i % 2 == 1 && ((i / 2) % CONNS) % 2 == 1)
        .count();
    assert_eq!(denied, bob_health);
    assert_eq!(ok, CALLS - bob_health);
    let lines = bed.audit_lines();
    assert_eq!(lines.len(), CALLS, "audit lines lost");
    let mut ids: Vec<&str> = lines
        .iter()
        .map(|l| l["call_id"].as_str().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), CALLS);
    assert_eq!(
        lines.iter().filter(|l| l["decision"] == "deny").count(),
        bob_health
    );
    let (written, syncs) = srv.audit.stats();
    assert_eq!(written, CALLS as u64);
    assert!(syncs <= written);
    eprintln!(
        "load: {CALLS} calls over {CONNS} mTLS connections in {:?} ({:.0} calls/s); \
         {written} audit lines in {syncs} fsyncs",
        elapsed,
        CALLS as f64 / elapsed.as_secs_f64()
    );
}

/// A faketime backend that records calls: `team-a/web-0` has an injected `app` container,
/// `team-a/static-0` a container the shim cannot cover, every other pod is unknown.
#[derive(Default)]
struct FakeClock {
    calls: std::sync::Mutex<Vec<String>>,
}

impl berth_api::FakeTimeBackend for FakeClock {
    fn get(
        &self,
        t: &berth_api::FakeTimeTarget,
    ) -> Result<Vec<v1::FakeTimeContainer>, BackendError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("get {}/{}", t.namespace, t.pod));
        self.lookup(t, "+2d")
    }
    fn set(
        &self,
        t: &berth_api::FakeTimeTarget,
        offset: &str,
    ) -> Result<Vec<v1::FakeTimeContainer>, BackendError> {
        self.calls.lock().unwrap().push(format!(
            "set {}/{} {:?} {offset}",
            t.namespace, t.pod, t.container
        ));
        if t.pod == "static-0" {
            return Err(BackendError::Precondition(
                "pod team-a/static-0: no container has the shim (static binary)".into(),
            ));
        }
        self.lookup(t, offset)
    }
    fn clear(
        &self,
        t: &berth_api::FakeTimeTarget,
    ) -> Result<Vec<v1::FakeTimeContainer>, BackendError> {
        self.set(t, "0")
    }
}

impl FakeClock {
    fn lookup(
        &self,
        t: &berth_api::FakeTimeTarget,
        offset: &str,
    ) -> Result<Vec<v1::FakeTimeContainer>, BackendError> {
        if (t.namespace.as_str(), t.pod.as_str()) != ("team-a", "web-0") {
            return Err(BackendError::NotFound(format!(
                "faketime container of pod {}/{}",
                t.namespace, t.pod
            )));
        }
        Ok(vec![v1::FakeTimeContainer {
            namespace: t.namespace.clone(),
            pod: t.pod.clone(),
            container: "app".into(),
            offset: offset.into(),
            injected: true,
            covered: Some(true),
            ..Default::default()
        }])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faketime_calls_are_scoped_mapped_and_audited() {
    let policy = format!(
        "{POLICY}\n[roles.clock]\nmethods = [\"berth.v1.FakeTime/*\"]\nnamespaces = [\"team-a\"]\n\
         [[bindings]]\nrole = \"clock\"\nidentities = [\"cn:tess\"]\n"
    );
    let bed = Bed::new(&policy);
    let clock = Arc::new(FakeClock::default());
    let srv = Server::builder(bed.config())
        .faketime(clock.clone())
        .start()
        .await
        .unwrap();
    let tess = bed.client_files(&bed.ca, "tess", &[], Validity::days(1));
    let mut c = v1::fake_time_client::FakeTimeClient::new(tls_channel(&srv, &tess).await.unwrap());
    let set = |ns: &str, name: &str, offset: &str| v1::SetFakeTimeRequest {
        pod: pod(ns, name),
        container: "app".into(),
        offset: offset.into(),
    };

    let r = c
        .set(set("team-a", "web-0", "+10d"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.containers.len(), 1);
    assert_eq!(r.containers[0].offset, "+10d");
    let got = c
        .get(v1::FakeTimeRequest {
            pod: pod("team-a", "web-0"),
            container: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.containers[0].container, "app");

    // Another namespace: denied before the backend runs.
    let st = c.set(set("team-b", "web-0", "+1d")).await.unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied);
    // Unknown pod, uncovered pod, malformed names and a missing offset.
    let st = c.set(set("team-a", "nope-0", "+1d")).await.unwrap_err();
    assert_eq!(st.code(), Code::NotFound, "{st:?}");
    let st = c.set(set("team-a", "static-0", "+1d")).await.unwrap_err();
    assert_eq!(st.code(), Code::FailedPrecondition, "{st:?}");
    assert!(st.message().contains("static binary"), "{st:?}");
    let st = c.set(set("team-a", "web-0", " ")).await.unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument, "{st:?}");
    let st = c.set(set("team-a", "Web_0", "+1d")).await.unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument, "{st:?}");
    c.clear(v1::FakeTimeRequest {
        pod: pod("team-a", "web-0"),
        container: String::new(),
    })
    .await
    .unwrap();

    assert_eq!(
        clock.calls.lock().unwrap().clone(),
        [
            "set team-a/web-0 Some(\"app\") +10d",
            "get team-a/web-0",
            "set team-a/nope-0 Some(\"app\") +1d",
            "set team-a/static-0 Some(\"app\") +1d",
            "set team-a/web-0 None 0",
        ]
    );
    let lines = bed.audit_lines();
    let calls: Vec<_> = lines.iter().filter(|l| l["event"] == "call").collect();
    assert_eq!(calls[0]["method"], "/berth.v1.FakeTime/Set");
    assert_eq!(calls[0]["identity"], "cn:tess");
    assert_eq!(
        calls[0]["target"],
        "pod team-a/web-0 container app offset +10d"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["event"] == "intent" && l["method"] == "/berth.v1.FakeTime/Set"),
        "a change has an intent line before it runs"
    );
    let denied = calls
        .iter()
        .find(|l| l["decision"] == "deny")
        .expect("the team-b call is audited as denied");
    assert_eq!(
        denied["target"],
        "pod team-b/web-0 container app offset +1d"
    );
    let caps = v1::node_client::NodeClient::new(tls_channel(&srv, &bed.alice()).await.unwrap())
        .capabilities(v1::CapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        caps.services.iter().any(|s| s == "berth.v1.FakeTime"),
        "{caps:?}"
    );
}

/// Debug sessions are authorized on the first message of the Attach stream (namespace by the
/// guard, profile and image by the service), and a temporary grant widens a caller's roles
/// until it is revoked or expires. The backend is a fake: an allowed start reaches it (and the
/// session's output reaches the client), a denied one never does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_is_authorized_on_the_first_message_and_grants_widen_roles() {
    let policy = format!(
        "{POLICY}\n[roles.debugger]\nmethods = [\"berth.v1.Debug/*\"]\nnamespaces = [\"team-a\"]\n\
         [roles.debug-root]\nmethods = [\"berth.v1.Debug/*\"]\nnamespaces = [\"team-a\"]\n\
         debug_profiles = [\"sysadmin\"]\ndebug_images = [\"berth.test/*\"]\n\
         [[bindings]]\nrole = \"debugger\"\nidentities = [\"cn:dora\"]\n"
    );
    let bed = Bed::new(&policy);
    let debug = Arc::new(FakeDebug::default());
    let srv = Server::builder(bed.config())
        .debug(debug.clone())
        .start()
        .await
        .unwrap();
    let dora = bed.client_files(&bed.ca, "dora", &[], Validity::days(1));
    let mut c = v1::debug_client::DebugClient::new(tls_channel(&srv, &dora).await.unwrap());
    let start = |ns: &str, profile: &str, image: &str| {
        let first = v1::AttachRequest {
            msg: Some(v1::attach_request::Msg::Start(v1::StartSession {
                pod: pod(ns, "web-0"),
                container: "app".into(),
                profile: profile.into(),
                image: image.into(),
                tty: true,
                ..Default::default()
            })),
        };
        let stdin = v1::AttachRequest {
            msg: Some(v1::attach_request::Msg::Stdin(b"id\n".to_vec())),
        };
        let close = v1::AttachRequest {
            msg: Some(v1::attach_request::Msg::CloseStdin(true)),
        };
        tokio_stream::iter(vec![first, stdin, close])
    };
    // An allowed start: the session's first message, its output, its end.
    let run_allowed = async |c: &mut v1::debug_client::DebugClient<_>, profile, image| {
        let mut out = c
            .attach(start("team-a", profile, image))
            .await
            .unwrap()
            .into_inner();
        let mut msgs = Vec::new();
        while let Some(m) = out.message().await.unwrap() {
            msgs.push(m.msg.unwrap());
        }
        msgs
    };
    let code =
        |r: Result<tonic::Response<tonic::Streaming<v1::AttachResponse>>, tonic::Status>| match r {
            Ok(_) => Code::Ok,
            Err(s) => s.code(),
        };

    assert_eq!(
        code(c.attach(start("team-b", "", "")).await),
        Code::PermissionDenied
    );
    let st = c.attach(start("team-a", "sysadmin", "")).await.unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied, "{st:?}");
    assert!(st.message().contains("debug profile sysadmin"), "{st:?}");
    let st = c
        .attach(start("team-a", "", "docker.io/library/alpine"))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied, "{st:?}");
    assert!(st.message().contains("debug image"), "{st:?}");
    assert!(
        debug.starts.lock().unwrap().is_empty(),
        "denied starts never reach the backend"
    );
    let msgs = run_allowed(&mut c, "", "").await;
    use v1::attach_response::Msg;
    match &msgs[..] {
        [Msg::Session(s), Msg::Stdout(ready), Msg::Exit(end)] => {
            assert_eq!(
                (s.id.as_str(), s.container.as_str(), s.container_id.as_str()),
                ("s-1", "app", "ctr-web-0")
            );
            assert_eq!(
                (s.profile.as_str(), s.caller.as_str()),
                ("general", "cn:dora")
            );
            assert_eq!(s.image, FAKE_DEBUG_IMAGE);
            assert_eq!(ready, b"ready");
            assert_eq!(end.exit_status, Some(0));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        debug.starts.lock().unwrap()[0],
        berth_api::DebugStart {
            container_id: "ctr-web-0".into(),
            profile: "general".into(),
            caller: "cn:dora".into(),
            image: None,
            command: vec![],
            tty: true,
        }
    );
    assert_eq!(
        debug.typed.lock().unwrap().clone(),
        [("s-1".to_string(), b"id\n".to_vec())]
    );

    // Temporary privilege: alice (ops) grants dora debug-root; dora cannot grant herself.
    let mut dora_grants =
        v1::grants_client::GrantsClient::new(tls_channel(&srv, &dora).await.unwrap());
    let grant = |who: &str, secs: u32| v1::GrantRequest {
        identity: who.into(),
        role: "debug-root".into(),
        duration_seconds: secs,
        reason: "INC-42".into(),
    };
    assert_eq!(
        dora_grants
            .grant(grant("cn:dora", 60))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied,
        "dora has no role for Grants at all"
    );
    let mut alice =
        v1::grants_client::GrantsClient::new(tls_channel(&srv, &bed.alice()).await.unwrap());
    assert_eq!(
        alice.grant(grant("cn:alice", 60)).await.unwrap_err().code(),
        Code::PermissionDenied,
        "nobody grants to themselves"
    );
    assert_eq!(
        alice
            .grant(grant("cn:dora", 10 * 3600))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument,
        "longer than max_grant_duration"
    );
    let g = alice
        .grant(grant("cn:dora", 60))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (g.identity.as_str(), g.granted_by.as_str()),
        ("cn:dora", "cn:alice")
    );
    assert!(g.expires_unix_ms - g.granted_unix_ms == 60_000, "{g:?}");
    let msgs = run_allowed(&mut c, "sysadmin", "berth.test/tools:1").await;
    assert!(
        matches!(&msgs[0], Msg::Session(s) if s.profile == "sysadmin" && s.image == "berth.test/tools:1"),
        "granted: {msgs:?}"
    );
    let granted_start = debug.starts.lock().unwrap()[1].clone();
    assert_eq!(
        (
            granted_start.profile.as_str(),
            granted_start.image.as_deref()
        ),
        ("sysadmin", Some("berth.test/tools:1"))
    );
    let listed = alice
        .list(v1::ListGrantsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.grants, vec![g.clone()]);
    alice
        .revoke(v1::RevokeGrantRequest { id: g.id.clone() })
        .await
        .unwrap();
    let st = c.attach(start("team-a", "sysadmin", "")).await.unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied, "revoked: {st:?}");

    // Every decision is in the audit log, with what was asked for. A refused stream's line
    // is written as its (empty) body ends, which can be just after the client saw the status.
    let attach_lines = || {
        bed.audit_lines()
            .into_iter()
            .filter(|l| l["event"] == "call" && l["method"] == "/berth.v1.Debug/Attach")
            .count()
    };
    assert!(
        eventually(Duration::from_secs(5), || attach_lines() == 6).await,
        "{} Attach call lines, want 6",
        attach_lines()
    );
    let lines = bed.audit_lines();
    let attach: Vec<_> = lines
        .iter()
        .filter(|l| l["event"] == "call" && l["method"] == "/berth.v1.Debug/Attach")
        .collect();
    assert_eq!(attach[0]["decision"], "deny");
    assert_eq!(attach[0]["target"], "pod team-b/web-0 container app");
    assert_eq!(attach[1]["decision"], "allow");
    assert_eq!(attach[1]["code"], Code::PermissionDenied as i32);
    assert_eq!(
        attach[1]["target"],
        "pod team-a/web-0 container app profile sysadmin"
    );
    assert!(attach[1]["bytes_received"].as_u64().unwrap() > 0);
    assert_eq!(
        (attach[3]["decision"].as_str(), attach[3]["code"].as_i64()),
        (Some("allow"), Some(0))
    );
    assert_eq!(attach[4]["code"], 0, "granted");
    assert_eq!(
        attach[5]["code"],
        Code::PermissionDenied as i32,
        "revoked: the profile check refuses it"
    );
    // What the backend reported inside the session, with the pod the API knows it by.
    let typed = lines
        .iter()
        .find(|l| l["event"] == "debug")
        .expect("the session's event is audited");
    assert_eq!(
        typed["target"],
        "pod team-a/web-0 container app session s-1"
    );
    assert_eq!(
        (typed["identity"].as_str(), typed["decision"].as_str()),
        (Some("cn:dora"), Some("allow"))
    );
    assert_eq!(typed["detail"]["typed"], 3);
    assert!(lines.iter().any(|l| l["event"] == "call"
        && l["method"] == "/berth.v1.Grants/Grant"
        && l["identity"] == "cn:alice"
        && l["target"] == "identity cn:dora role debug-root for 60s reason INC-42"
        && l["code"] == 0));
}
