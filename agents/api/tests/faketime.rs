//! `berth.v1.FakeTime` through the API server, over a recording fake backend.

mod support;

use std::sync::Arc;

use berth_api::{BackendError, Server};
use berth_api_client::pki::Validity;
use berth_proto::v1;
use support::*;
use tonic::Code;

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
            namespace: t.namespace.to_string(),
            pod: t.pod.to_string(),
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
