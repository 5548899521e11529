//! The API server end to end, in-process: real TLS on 127.0.0.1, a real unix socket,
//! certificates made here with rcgen.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_api_client::pki::{Authority, Validity};
use berth_proto::v1;
use support::*;
use tokio_stream::StreamExt;
use tonic::Code;

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
