//! `berth.v1.Debug` and `berth.v1.Grants` through the API server, over a fake debug backend.

mod support;

use std::sync::Arc;
use std::time::Duration;

use berth_api::Server;
use berth_api_client::pki::Validity;
use berth_proto::v1;
use support::*;
use tonic::Code;

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
