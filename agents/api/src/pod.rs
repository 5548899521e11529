//! The pod a request names, checked once for every service.

use std::fmt;

use berth_common::names::K8sName;
use berth_proto::v1;
use tonic::Status;

/// A pod's namespace and name, both valid Kubernetes names: safe as path and key segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodName {
    pub namespace: K8sName,
    pub pod: K8sName,
}

impl PodName {
    /// Checks a request's `pod` field: missing or empty is "required", a name that is no
    /// Kubernetes name says which one and why. Both are INVALID_ARGUMENT.
    pub fn from_request(pod: Option<v1::PodRef>) -> Result<PodName, Status> {
        let pod =
            pod.ok_or_else(|| Status::invalid_argument("pod is required (namespace/name)"))?;
        if pod.namespace.is_empty() || pod.pod.is_empty() {
            return Err(Status::invalid_argument(
                "pod.namespace and pod.pod are required",
            ));
        }
        let name = |what: &str, value: String| {
            K8sName::try_from(value).map_err(|e| Status::invalid_argument(format!("{what} {e}")))
        };
        Ok(PodName {
            namespace: name("namespace", pod.namespace)?,
            pod: name("pod", pod.pod)?,
        })
    }
}

impl From<PodName> for v1::PodRef {
    fn from(p: PodName) -> v1::PodRef {
        v1::PodRef {
            namespace: p.namespace.into(),
            pod: p.pod.into(),
        }
    }
}

impl fmt::Display for PodName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.pod)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_ref(namespace: &str, pod: &str) -> Option<v1::PodRef> {
        Some(v1::PodRef {
            namespace: namespace.into(),
            pod: pod.into(),
        })
    }

    #[test]
    fn every_bad_pod_reference_is_invalid_argument_naming_the_field() {
        for (pod, says) in [
            (None, "pod is required"),
            (pod_ref("", "web-0"), "are required"),
            (pod_ref("team-a", ""), "are required"),
            (
                pod_ref("..", "web-0"),
                "namespace \"..\" is not a valid Kubernetes name",
            ),
            (
                pod_ref("team-a", "a/b"),
                "pod \"a/b\" is not a valid Kubernetes name",
            ),
            (pod_ref("Team", "web-0"), "namespace \"Team\""),
        ] {
            let e = PodName::from_request(pod.clone()).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{pod:?}");
            assert!(e.message().contains(says), "{pod:?}: {}", e.message());
        }
        let ok = PodName::from_request(pod_ref("team-a", "web-0")).unwrap();
        assert_eq!(ok.to_string(), "team-a/web-0");
        assert_eq!(v1::PodRef::from(ok), pod_ref("team-a", "web-0").unwrap());
    }
}
