//! What the guard layer knows about each RPC before it runs: whether the response streams,
//! whether it changes state, and what it targets (decoded from the request message).

use berth_proto::v1;
use prost::Message;

use crate::policy::Scope;

/// The target of one call, for authorization and the audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub scope: Scope,
    /// Human-readable, e.g. `pod team-a/web-0 dir app path app.log`.
    pub describe: String,
}

pub struct MethodSpec {
    pub path: &'static str,
    /// The server streams its response.
    pub streaming: bool,
    /// The client streams its requests: the guard decides on the first message.
    pub client_streaming: bool,
    pub mutating: bool,
    target: fn(&[u8]) -> Result<Target, prost::DecodeError>,
}

impl MethodSpec {
    pub fn target(&self, msg: &[u8]) -> Result<Target, prost::DecodeError> {
        (self.target)(msg)
    }
}

fn node(_: &[u8]) -> Result<Target, prost::DecodeError> {
    Ok(Target {
        scope: Scope::Node,
        describe: String::new(),
    })
}

/// A target that is only its scope and `key value` pairs (empty values left out).
fn listed(scope: Scope, parts: &[(&str, &str)]) -> Target {
    Target {
        scope,
        describe: with(parts, String::new()),
    }
}

/// A target in a pod's namespace, described as the pod and `key value` pairs.
fn pod_target(pod: &Option<v1::PodRef>, parts: &[(&str, &str)]) -> Target {
    let (scope, d) = pod_scope(pod);
    Target {
        scope,
        describe: with(parts, d),
    }
}

fn ns_scope(ns: &str) -> Scope {
    if ns.is_empty() {
        Scope::AllNamespaces
    } else {
        Scope::Namespace(ns.to_string())
    }
}

fn pod_scope(p: &Option<v1::PodRef>) -> (Scope, String) {
    let p = p.clone().unwrap_or_default();
    (
        ns_scope(&p.namespace),
        format!("pod {}/{}", p.namespace, p.pod),
    )
}

fn with(parts: &[(&str, &str)], base: String) -> String {
    let mut s = base;
    for (k, v) in parts {
        if !v.is_empty() {
            if !s.is_empty() {
                s.push(' ');
            }
            s.push_str(k);
            s.push(' ');
            s.push_str(v);
        }
    }
    s
}

fn logs_list(b: &[u8]) -> Result<Target, prost::DecodeError> {
    let r = v1::ListLogsRequest::decode(b)?;
    let (scope, describe) = pod_scope(&r.pod);
    Ok(Target { scope, describe })
}

fn logs_read(b: &[u8]) -> Result<Target, prost::DecodeError> {
    let r = v1::ReadLogRequest::decode(b)?;
    let follow = if r.follow { "true" } else { "" };
    Ok(pod_target(
        &r.pod,
        &[("dir", &r.dir), ("path", &r.path), ("follow", follow)],
    ))
}

fn logs_download(b: &[u8]) -> Result<Target, prost::DecodeError> {
    let r = v1::DownloadLogsRequest::decode(b)?;
    Ok(pod_target(&r.pod, &[("dir", &r.dir)]))
}

fn ipam_list(b: &[u8]) -> Result<Target, prost::DecodeError> {
    let r = v1::ListAllocationsRequest::decode(b)?;
    Ok(listed(
        ns_scope(&r.namespace),
        &[
            ("network", &r.network),
            ("pool", &r.pool),
            ("namespace", &r.namespace),
        ],
    ))
}

fn ipam_show(b: &[u8]) -> Result<Target, prost::DecodeError> {
    let r = v1::ShowAddressRequest::decode(b)?;
    Ok(listed(
        ns_scope(&r.namespace),
        &[
            ("network", &r.network),
            ("address", &r.address),
            ("namespace", &r.namespace),
        ],
    ))
}

fn ipam_history(b: &[u8]) -> Result<Target, prost::DecodeError> {
    let r = v1::IpamHistoryRequest::decode(b)?;
    Ok(listed(
        ns_scope(&r.namespace),
        &[
            ("network", &r.network),
            ("address", &r.address),
            ("namespace", &r.namespace),
            ("pod", &r.pod),
        ],
    ))
}

fn ipam_reserve(b: &[u8]) -> Result<Target, prost::DecodeError> {
    let r = v1::ReserveRequest::decode(b)?;
    Ok(listed(
        ns_scope(&r.namespace),
        &[
            ("network", &r.network),
            ("address", &r.address),
            ("namespace", &r.namespace),
            ("owner", &r.owner),
        ],
    ))
}

fn ipam_release(b: &[u8]) -> Result<Target, prost::DecodeError> {
    let r = v1::ReleaseRequest::decode(b)?;
    Ok(listed(
        ns_scope(&r.namespace),
        &[
            ("network", &r.network),
            ("address", &r.address),
            ("namespace", &r.namespace),
        ],
    ))
}

fn audit_query(b: &[u8]) -> Result<Target, prost::DecodeError> {
    let r = v1::AuditQueryRequest::decode(b)?;
    Ok(listed(
        Scope::Node,
        &[("identity", &r.identity), ("method", &r.method)],
    ))
}

fn faketime_get(b: &[u8]) -> Result<Target, prost::DecodeError> {
    let r = v1::FakeTimeRequest::decode(b)?;
    Ok(pod_target(&r.pod, &[("container", &r.container)]))
}

fn faketime_set(b: &[u8]) -> Result<Target, prost::DecodeError> {
    let r = v1::SetFakeTimeRequest::decode(b)?;
    Ok(pod_target(
        &r.pod,
        &[("container", &r.container), ("offset", &r.offset)],
    ))
}

const fn spec(
    path: &'static str,
    streaming: bool,
    mutating: bool,
    target: fn(&[u8]) -> Result<Target, prost::DecodeError>,
) -> MethodSpec {
    MethodSpec {
        path,
        streaming,
        client_streaming: false,
        mutating,
        target,
    }
}

/// A client-streaming method: authorized and audited on its first request message.
const fn client_stream(
    path: &'static str,
    streaming: bool,
    target: fn(&[u8]) -> Result<Target, prost::DecodeError>,
) -> MethodSpec {
    MethodSpec {
        path,
        streaming,
        client_streaming: true,
        mutating: true,
        target,
    }
}

fn debug_attach(b: &[u8]) -> Result<Target, prost::DecodeError> {
    use v1::attach_request::Msg;
    let r = v1::AttachRequest::decode(b)?;
    Ok(match r.msg {
        Some(Msg::Start(s)) => {
            let command = s.command.join(" ");
            pod_target(
                &s.pod,
                &[
                    ("container", &s.container),
                    ("profile", &s.profile),
                    ("image", &s.image),
                    ("command", &command),
                ],
            )
        }
        Some(Msg::Attach(a)) => pod_target(&a.pod, &[("session", &a.session_id)]),
        // Anything else first is refused by the service; authorize it as "every namespace"
        // so that only a fully scoped role gets that far.
        _ => Target {
            scope: Scope::AllNamespaces,
            describe: "no start or attach message".into(),
        },
    })
}

fn debug_exec(b: &[u8]) -> Result<Target, prost::DecodeError> {
    let r = v1::DebugExecRequest::decode(b)?;
    let command = r.command.join(" ");
    Ok(pod_target(
        &r.pod,
        &[
            ("container", &r.container),
            ("session", &r.session_id),
            ("profile", &r.profile),
            ("image", &r.image),
            ("command", &command),
        ],
    ))
}

fn debug_copy_in(b: &[u8]) -> Result<Target, prost::DecodeError> {
    use v1::copy_in_request::Msg;
    let r = v1::CopyInRequest::decode(b)?;
    Ok(match r.msg {
        Some(Msg::Header(h)) => {
            let size = h.size.to_string();
            pod_target(
                &h.pod,
                &[
                    ("container", &h.container),
                    ("path", &h.path),
                    ("size", &size),
                ],
            )
        }
        _ => Target {
            scope: Scope::AllNamespaces,
            describe: "no header message".into(),
        },
    })
}

fn debug_copy_out(b: &[u8]) -> Result<Target, prost::DecodeError> {
    let r = v1::CopyOutRequest::decode(b)?;
    Ok(pod_target(
        &r.pod,
        &[("container", &r.container), ("path", &r.path)],
    ))
}

fn debug_list(b: &[u8]) -> Result<Target, prost::DecodeError> {
    let r = v1::ListSessionsRequest::decode(b)?;
    Ok(listed(
        ns_scope(&r.namespace),
        &[("namespace", &r.namespace)],
    ))
}

fn debug_terminate(b: &[u8]) -> Result<Target, prost::DecodeError> {
    let r = v1::TerminateRequest::decode(b)?;
    Ok(pod_target(&r.pod, &[("session", &r.session_id)]))
}

fn grants_grant(b: &[u8]) -> Result<Target, prost::DecodeError> {
    let r = v1::GrantRequest::decode(b)?;
    let secs = format!("{}s", r.duration_seconds);
    Ok(listed(
        Scope::Node,
        &[
            ("identity", &r.identity),
            ("role", &r.role),
            ("for", &secs),
            ("reason", &r.reason),
        ],
    ))
}

fn grants_list(b: &[u8]) -> Result<Target, prost::DecodeError> {
    let r = v1::ListGrantsRequest::decode(b)?;
    Ok(listed(Scope::Node, &[("identity", &r.identity)]))
}

/// Collection frees leases of every namespace: a role scoped to "*" only.
fn ipam_gc(b: &[u8]) -> Result<Target, prost::DecodeError> {
    let r = v1::IpamGcRequest::decode(b)?;
    Ok(listed(
        Scope::AllNamespaces,
        &[("dry_run", if r.dry_run { "true" } else { "" })],
    ))
}

fn grants_revoke(b: &[u8]) -> Result<Target, prost::DecodeError> {
    let r = v1::RevokeGrantRequest::decode(b)?;
    Ok(listed(Scope::Node, &[("id", &r.id)]))
}

/// Every RPC the server knows. A call to anything else is denied (and audited).
pub static METHODS: &[MethodSpec] = &[
    spec("/berth.v1.Node/Info", false, false, node),
    spec("/berth.v1.Node/Health", false, false, node),
    spec("/berth.v1.Node/Capabilities", false, false, node),
    spec("/berth.v1.Logs/List", false, false, logs_list),
    spec("/berth.v1.Logs/Read", true, false, logs_read),
    spec("/berth.v1.Logs/Download", true, false, logs_download),
    spec("/berth.v1.Ipam/List", false, false, ipam_list),
    spec("/berth.v1.Ipam/Show", false, false, ipam_show),
    spec("/berth.v1.Ipam/History", false, false, ipam_history),
    spec("/berth.v1.Ipam/Reserve", false, true, ipam_reserve),
    spec("/berth.v1.Ipam/Release", false, true, ipam_release),
    spec("/berth.v1.Ipam/Gc", false, true, ipam_gc),
    spec("/berth.v1.Audit/Query", false, false, audit_query),
    spec("/berth.v1.FakeTime/Get", false, false, faketime_get),
    spec("/berth.v1.FakeTime/Set", false, true, faketime_set),
    spec("/berth.v1.FakeTime/Clear", false, true, faketime_get),
    client_stream("/berth.v1.Debug/Attach", true, debug_attach),
    spec("/berth.v1.Debug/Exec", true, true, debug_exec),
    client_stream("/berth.v1.Debug/CopyIn", false, debug_copy_in),
    spec("/berth.v1.Debug/CopyOut", true, false, debug_copy_out),
    spec("/berth.v1.Debug/List", false, false, debug_list),
    spec("/berth.v1.Debug/Terminate", false, true, debug_terminate),
    spec("/berth.v1.Grants/Grant", false, true, grants_grant),
    spec("/berth.v1.Grants/List", false, false, grants_list),
    spec("/berth.v1.Grants/Revoke", false, true, grants_revoke),
];

pub fn lookup(path: &str) -> Option<&'static MethodSpec> {
    METHODS.iter().find(|m| m.path == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rpc_of_the_proto_has_a_spec_with_the_right_streaming_flag() {
        assert_eq!(METHODS.len(), berth_proto::METHODS.len());
        for (path, streaming, client_streaming) in berth_proto::METHODS {
            let spec = lookup(path).unwrap_or_else(|| panic!("{path} has no MethodSpec"));
            assert_eq!(spec.streaming, *streaming, "{path}");
            assert_eq!(spec.client_streaming, *client_streaming, "{path}");
            // An empty message decodes for every method.
            spec.target(&[]).unwrap();
        }
    }

    #[test]
    fn targets_are_decoded_from_the_request() {
        let req = v1::ReadLogRequest {
            pod: Some(v1::PodRef {
                namespace: "team-a".into(),
                pod: "web-0".into(),
            }),
            dir: "app".into(),
            path: "x.log".into(),
            follow: true,
            ..Default::default()
        };
        let t = lookup("/berth.v1.Logs/Read")
            .unwrap()
            .target(&req.encode_to_vec())
            .unwrap();
        assert_eq!(t.scope, Scope::Namespace("team-a".into()));
        assert_eq!(
            t.describe,
            "pod team-a/web-0 dir app path x.log follow true"
        );
        let list = v1::ListAllocationsRequest::default();
        let t = lookup("/berth.v1.Ipam/List")
            .unwrap()
            .target(&list.encode_to_vec())
            .unwrap();
        assert_eq!(t.scope, Scope::AllNamespaces);
        assert!(lookup("/berth.v1.Ipam/Reserve").unwrap().mutating);
        assert!(lookup("/berth.v1.Nope/X").is_none());
    }
}
