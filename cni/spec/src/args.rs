//! `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`, as kubelet/containerd send them.

use std::collections::BTreeMap;

use berth_common::names::K8sName;

use crate::error::CniError;

/// Parsed `CNI_ARGS`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CniArgs {
    /// `IgnoreUnknown=1|true`: keys the plugin does not know must be ignored, not refused.
    pub ignore_unknown: bool,
    /// `K8S_POD_NAMESPACE` and `K8S_POD_NAME` become key and file-name segments in IPAM, so
    /// only Kubernetes names are kept. Runtimes outside Kubernetes fill them with their own
    /// names (Podman: the container's, which may hold `_` or capitals); such a call is
    /// treated like one without a pod, as the reference plugins do, and never refused.
    pub k8s_pod_namespace: Option<K8sName>,
    pub k8s_pod_name: Option<K8sName>,
    /// The `K8S_POD_*` keys whose values were dropped because they are no Kubernetes names.
    pub not_kubernetes_names: Vec<String>,
    pub k8s_pod_uid: Option<String>,
    pub k8s_pod_infra_container_id: Option<String>,
    /// Every other key, in order of name.
    pub other: BTreeMap<String, String>,
}

impl CniArgs {
    /// Parses `CNI_ARGS`. An empty string is no arguments; a pair without `=` is code 4.
    pub fn parse(s: &str) -> Result<CniArgs, CniError> {
        let mut args = CniArgs::default();
        for pair in s.split(';').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(|| {
                CniError::invalid_env(format!("CNI_ARGS entry {pair:?} is not KEY=VALUE"))
                    .with_details("separate entries with ';' and give each a value")
            })?;
            if k.is_empty() {
                return Err(CniError::invalid_env(format!(
                    "CNI_ARGS entry {pair:?} has an empty key"
                )));
            }
            let v = v.to_string();
            match k {
                "IgnoreUnknown" => {
                    args.ignore_unknown = match v.to_ascii_lowercase().as_str() {
                        "1" | "true" => true,
                        "0" | "false" | "" => false,
                        _ => {
                            return Err(CniError::invalid_env(format!(
                                "CNI_ARGS IgnoreUnknown={v:?} is not a boolean"
                            ))
                            .with_details("use 1, true, 0 or false"));
                        }
                    }
                }
                "K8S_POD_NAMESPACE" => args.k8s_pod_namespace = args.k8s_name(k, v),
                "K8S_POD_NAME" => args.k8s_pod_name = args.k8s_name(k, v),
                "K8S_POD_UID" => args.k8s_pod_uid = Some(v),
                "K8S_POD_INFRA_CONTAINER_ID" => args.k8s_pod_infra_container_id = Some(v),
                _ => {
                    args.other.insert(k.to_string(), v);
                }
            }
        }
        Ok(args)
    }

    /// Refuses keys outside `known` (and the K8S_* ones) unless `IgnoreUnknown` is set.
    pub fn check_unknown(&self, known: &[&str]) -> Result<(), CniError> {
        if self.ignore_unknown {
            return Ok(());
        }
        let unknown: Vec<&str> = self
            .other
            .keys()
            .map(String::as_str)
            .filter(|k| !known.contains(k))
            .collect();
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(
                CniError::invalid_env(format!("unknown CNI_ARGS keys: {}", unknown.join(", ")))
                    .with_details("remove them or add IgnoreUnknown=1"),
            )
        }
    }

    /// A `K8S_POD_*` value as a Kubernetes name; empty, or no Kubernetes name: none (the
    /// latter noted in `not_kubernetes_names`).
    fn k8s_name(&mut self, key: &str, value: String) -> Option<K8sName> {
        if value.is_empty() {
            return None;
        }
        let name = K8sName::try_from(value).ok();
        if name.is_none() {
            self.not_kubernetes_names.push(key.to_string());
        }
        name
    }

    /// The pod's namespace and name, when both were sent as Kubernetes names.
    pub fn pod(&self) -> Option<(&K8sName, &K8sName)> {
        Some((
            self.k8s_pod_namespace.as_ref()?,
            self.k8s_pod_name.as_ref()?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn parses_what_containerd_sends() {
        let a = CniArgs::parse(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;\
             K8S_POD_INFRA_CONTAINER_ID=abc123;K8S_POD_UID=u-1",
        )
        .unwrap();
        assert!(a.ignore_unknown);
        assert_eq!(
            a.pod().map(|(ns, n)| (ns.as_str(), n.as_str())),
            Some(("default", "web-0"))
        );
        assert_eq!(a.k8s_pod_uid.as_deref(), Some("u-1"));
        assert_eq!(a.k8s_pod_infra_container_id.as_deref(), Some("abc123"));
        assert!(a.other.is_empty());
        a.check_unknown(&[]).unwrap();
    }

    #[test]
    fn empty_is_nothing_and_values_may_contain_equals() {
        assert_eq!(CniArgs::parse("").unwrap(), CniArgs::default());
        let a = CniArgs::parse("X=a=b;;").unwrap();
        assert_eq!(a.other["X"], "a=b");
    }

    #[test]
    fn unknown_keys_are_refused_unless_ignored() {
        let a = CniArgs::parse("FOO=1;IP=10.0.0.1").unwrap();
        let e = a.check_unknown(&["IP"]).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidEnvironment);
        assert!(e.msg.contains("FOO"), "{}", e.msg);
        assert!(!e.msg.contains("IP"), "{}", e.msg);
        CniArgs::parse("FOO=1;IgnoreUnknown=true")
            .unwrap()
            .check_unknown(&[])
            .unwrap();
    }

    #[test]
    fn pod_names_that_are_no_kubernetes_names_make_no_pod() {
        for (args, dropped) in [
            ("K8S_POD_NAMESPACE=../x;K8S_POD_NAME=p", "K8S_POD_NAMESPACE"),
            ("K8S_POD_NAMESPACE=ns;K8S_POD_NAME=a/b", "K8S_POD_NAME"),
            // What Podman sends: the container's name.
            (
                "K8S_POD_NAMESPACE=My_App;K8S_POD_NAME=My_App",
                "K8S_POD_NAMESPACE",
            ),
        ] {
            let a = CniArgs::parse(args).unwrap();
            assert_eq!(a.pod(), None, "{args}");
            assert!(
                a.not_kubernetes_names.iter().any(|k| k == dropped),
                "{args}"
            );
        }
        let a = CniArgs::parse("K8S_POD_NAMESPACE=;K8S_POD_NAME=p").unwrap();
        assert_eq!(a.pod(), None);
        assert!(a.not_kubernetes_names.is_empty());
    }

    #[test]
    fn malformed_pairs_are_code_4() {
        for bad in ["FOO", "=x", "IgnoreUnknown=maybe"] {
            assert_eq!(
                CniArgs::parse(bad).unwrap_err().code,
                ErrorCode::InvalidEnvironment,
                "{bad}"
            );
        }
    }
}
