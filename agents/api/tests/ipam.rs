//! `berth.v1.Ipam` through the API server: the namespace a caller names scopes what it sees
//! and touches.

mod support;

use std::sync::Arc;

use berth_api_client::pki::Validity;
use berth_proto::v1;
use support::*;
use tonic::Code;

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
    // An owner that is no pod name would be a key segment: refused before the backend.
    for owner in ["db/0", "../x", "DB-0"] {
        let st = c
            .reserve(v1::ReserveRequest {
                network: "net1".into(),
                pool: "p".into(),
                address: "10.9.0.6".into(),
                namespace: "team-a".into(),
                owner: owner.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(st.code(), Code::InvalidArgument, "{owner}");
        assert!(
            st.message().contains("is not a valid Kubernetes name"),
            "{owner}: {}",
            st.message()
        );
    }
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
