//! `berth.v1.FakeTime`: the guard authorized the pod's namespace; this service checks the
//! names and runs the backend (file work in the agent's state dir) off the async threads.

use std::sync::Arc;

use berth_proto::v1;
use tonic::{Request, Response, Status};

use crate::backend::{FakeTimeBackend, FakeTimeTarget};
use crate::error::{BackendError, ServiceError};
use crate::pod::PodName;

pub struct FakeTimeService {
    pub(crate) backend: Arc<dyn FakeTimeBackend>,
}

/// Container names are DNS labels (RFC 1123).
fn valid_container_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn target(pod: Option<v1::PodRef>, container: String) -> Result<FakeTimeTarget, Status> {
    let pod = PodName::from_request(pod)?;
    if !container.is_empty() && !valid_container_name(&container) {
        return Err(Status::invalid_argument(format!(
            "container {container:?} is not a valid container name"
        )));
    }
    Ok(FakeTimeTarget {
        namespace: pod.namespace,
        pod: pod.pod,
        container: (!container.is_empty()).then_some(container),
    })
}

impl FakeTimeService {
    async fn run(
        &self,
        f: impl FnOnce(&dyn FakeTimeBackend) -> Result<Vec<v1::FakeTimeContainer>, BackendError>
        + Send
        + 'static,
    ) -> Result<Response<v1::FakeTimeResponse>, Status> {
        let backend = self.backend.clone();
        let containers = tokio::task::spawn_blocking(move || f(backend.as_ref()))
            .await
            .map_err(|source| ServiceError::Task {
                what: "faketime",
                source,
            })??;
        Ok(Response::new(v1::FakeTimeResponse { containers }))
    }
}

#[tonic::async_trait]
impl v1::fake_time_server::FakeTime for FakeTimeService {
    async fn get(
        &self,
        req: Request<v1::FakeTimeRequest>,
    ) -> Result<Response<v1::FakeTimeResponse>, Status> {
        let r = req.into_inner();
        let t = target(r.pod, r.container)?;
        self.run(move |b| b.get(&t)).await
    }

    async fn set(
        &self,
        req: Request<v1::SetFakeTimeRequest>,
    ) -> Result<Response<v1::FakeTimeResponse>, Status> {
        let r = req.into_inner();
        let t = target(r.pod, r.container)?;
        if r.offset.trim().is_empty() {
            return Err(Status::invalid_argument(
                "offset is required, e.g. \"+10d\", \"-3h\" or \"@2030-01-01 00:00:00\"",
            ));
        }
        let offset = r.offset;
        self.run(move |b| b.set(&t, &offset)).await
    }

    async fn clear(
        &self,
        req: Request<v1::FakeTimeRequest>,
    ) -> Result<Response<v1::FakeTimeResponse>, Status> {
        let r = req.into_inner();
        let t = target(r.pod, r.container)?;
        self.run(move |b| b.clear(&t)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_checked_before_the_backend_runs() {
        let pod = |ns: &str, p: &str| {
            Some(v1::PodRef {
                namespace: ns.into(),
                pod: p.into(),
            })
        };
        let t = target(pod("shop", "web-0"), "app".into()).unwrap();
        assert_eq!(t.container.as_deref(), Some("app"));
        assert_eq!(
            target(pod("shop", "web-0"), String::new())
                .unwrap()
                .container,
            None
        );
        for (p, c) in [
            (None, ""),
            (pod("", "web-0"), ""),
            (pod("shop", "../x"), ""),
            (pod("shop", "web-0"), "App"),
            (pod("shop", "web-0"), "a/b"),
            (pod("shop", "web-0"), "-x"),
        ] {
            let err = target(p.clone(), c.into()).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{p:?} {c:?}");
        }
    }
}
