//! [`IpamBackend`] over berth-ipam-core's admin calls (`Ipam::{networks, list, show,
//! history, reserve, release_ip}`). The core is synchronous (file locks, etcd round trips), so
//! every call runs on the blocking pool.

use std::net::IpAddr;
use std::sync::Arc;

use berth_ipam_core::{Event, HistoryQuery, Ipam, IpamError, Lease, LeaseState, Reservation};
use berth_proto::v1;

use berth_api::{BackendError, IpamBackend};

/// The agent's IPAM, served by `berth.v1.Ipam`.
#[derive(Clone)]
pub struct CoreIpam {
    ipam: Arc<Ipam>,
}

impl CoreIpam {
    pub fn new(ipam: Arc<Ipam>) -> CoreIpam {
        CoreIpam { ipam }
    }
}

/// The one mapping of the IPAM core's errors to what `berth.v1.Ipam` answers, with the whole
/// chain as the message.
pub fn backend_error(e: IpamError) -> BackendError {
    let msg = berth_common::error_chain(&e);
    match e {
        IpamError::UnknownPool(_) => BackendError::NotFound(msg),
        IpamError::Exhausted { .. } => BackendError::Exhausted(msg),
        IpamError::AddressUnavailable { .. } | IpamError::NoPool { .. } => {
            BackendError::Precondition(msg)
        }
        IpamError::InvalidAnnotation { .. } => BackendError::Invalid(msg),
        IpamError::Unavailable(_) | IpamError::ClockSkew { .. } => BackendError::Unavailable(msg),
        #[allow(unreachable_patterns)]
        _ => BackendError::Internal(msg),
    }
}

fn ms(t: &chrono::DateTime<chrono::Utc>) -> i64 {
    t.timestamp_millis()
}

/// A lease as the API shows it.
pub fn allocation(network: &str, l: &Lease) -> v1::Allocation {
    let mut a = v1::Allocation {
        network: network.to_string(),
        pool: l.pool.clone(),
        address: l.ip.to_string(),
        since_unix_ms: ms(&l.since),
        node: l.node.clone(),
        rack: l.rack.clone().unwrap_or_default(),
        ..Default::default()
    };
    #[allow(unreachable_patterns)]
    match &l.state {
        LeaseState::Allocated {
            container_id,
            ifname,
        } => {
            a.state = "allocated".into();
            a.container_id = container_id.clone();
            a.ifname = ifname.clone();
        }
        LeaseState::Held { until } => {
            a.state = "held".into();
            a.hold_until_unix_ms = ms(until);
        }
        LeaseState::Reserved { until, note } => {
            a.state = "reserved".into();
            a.hold_until_unix_ms = until.as_ref().map(ms).unwrap_or(0);
            a.note = note.clone().unwrap_or_default();
        }
        _ => a.state = "unknown".into(),
    }
    if let Some(s) = &l.sticky {
        a.namespace = s.namespace.clone();
        a.pod = s.name.clone();
        a.owner = format!("{}/{}", s.namespace, s.name);
        if a.ifname.is_empty() {
            a.ifname = s.ifname.clone().unwrap_or_default();
        }
    }
    if let Some(p) = &l.pod {
        a.namespace = p.namespace.clone();
        a.pod = p.name.clone();
    }
    a
}

fn event(network: &str, e: &Event) -> v1::IpamEvent {
    let kind = serde_json::to_value(e.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_lowercase))
        .unwrap_or_else(|| format!("{:?}", e.kind).to_lowercase());
    let (namespace, pod) = match (&e.pod, &e.sticky) {
        (Some(p), _) => (p.namespace.clone(), p.name.clone()),
        (None, Some(s)) => (s.namespace.clone(), s.name.clone()),
        (None, None) => (String::new(), String::new()),
    };
    v1::IpamEvent {
        time_unix_ms: ms(&e.time),
        action: kind,
        pool: e.pool.clone(),
        address: e.ip.to_string(),
        namespace,
        pod,
        container_id: e.container_id.clone().unwrap_or_default(),
        node: e.node.clone(),
        rack: e.rack.clone().unwrap_or_default(),
        network: network.to_string(),
        detail: e.detail.clone().unwrap_or_default(),
    }
}

fn ip(s: &str) -> Result<IpAddr, BackendError> {
    s.parse()
        .map_err(|_| BackendError::Invalid(format!("{s:?} is not an IP address")))
}

impl CoreIpam {
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Ipam) -> Result<T, BackendError> + Send + 'static,
    ) -> Result<T, BackendError> {
        let ipam = self.ipam.clone();
        tokio::task::spawn_blocking(move || f(&ipam))
            .await
            .map_err(|e| BackendError::Internal(format!("ipam task failed: {e}")))?
    }
}

fn networks(ipam: &Ipam, network: &str) -> Result<Vec<String>, BackendError> {
    if network.is_empty() {
        ipam.networks().map_err(backend_error)
    } else {
        Ok(vec![network.to_string()])
    }
}

#[tonic::async_trait]
impl IpamBackend for CoreIpam {
    fn sticky_default(&self) -> String {
        self.ipam.engine().sticky_default.as_str().to_string()
    }

    async fn list(
        &self,
        req: &v1::ListAllocationsRequest,
    ) -> Result<Vec<v1::Allocation>, BackendError> {
        let network = req.network.clone();
        self.run(move |ipam| {
            let mut out = Vec::new();
            for n in networks(ipam, &network)? {
                let mut leases = ipam.list(&n).map_err(backend_error)?;
                leases.sort_by_key(|l| l.ip);
                out.extend(leases.iter().map(|l| allocation(&n, l)));
            }
            Ok(out)
        })
        .await
    }

    async fn show(&self, network: &str, address: &str) -> Result<v1::Allocation, BackendError> {
        let (network, addr) = (network.to_string(), ip(address)?);
        self.run(move |ipam| {
            for n in networks(ipam, &network)? {
                if let Some(l) = ipam.show(&n, addr).map_err(backend_error)? {
                    return Ok(allocation(&n, &l));
                }
            }
            Err(BackendError::NotFound(format!("address {addr}")))
        })
        .await
    }

    async fn history(
        &self,
        req: &v1::IpamHistoryRequest,
    ) -> Result<Vec<v1::IpamEvent>, BackendError> {
        let query = HistoryQuery {
            ip: if req.address.is_empty() {
                None
            } else {
                Some(ip(&req.address)?)
            },
            pod: (!req.namespace.is_empty() && !req.pod.is_empty())
                .then(|| (req.namespace.clone(), req.pod.clone())),
            container_id: None,
            limit: None,
        };
        let (network, pool) = (req.network.clone(), req.pool.clone());
        self.run(move |ipam| {
            let mut out = Vec::new();
            for n in networks(ipam, &network)? {
                out.extend(
                    ipam.history(&n, &query)
                        .map_err(backend_error)?
                        .iter()
                        .filter(|e| pool.is_empty() || e.pool == pool)
                        .map(|e| event(&n, e)),
                );
            }
            out.sort_by_key(|e| e.time_unix_ms);
            Ok(out)
        })
        .await
    }

    async fn reserve(
        &self,
        req: &v1::ReserveRequest,
        actor: &str,
    ) -> Result<v1::Allocation, BackendError> {
        let addr = ip(&req.address)?;
        let until = match req.until_unix_ms {
            0 => None,
            t => Some(
                chrono::DateTime::from_timestamp_millis(t)
                    .ok_or_else(|| BackendError::Invalid(format!("until {t} is out of range")))?,
            ),
        };
        let note = if req.note.is_empty() {
            format!("reserved by {actor}")
        } else {
            format!("{} (reserved by {actor})", req.note)
        };
        let r = Reservation {
            pod: (!req.namespace.is_empty()).then(|| (req.namespace.clone(), req.owner.clone())),
            ifname: (!req.ifname.is_empty()).then(|| req.ifname.clone()),
            until,
            note: Some(note),
        };
        let network = req.network.clone();
        self.run(move |ipam| {
            Ok(allocation(
                &network,
                &ipam.reserve(&network, addr, &r).map_err(backend_error)?,
            ))
        })
        .await
    }

    async fn release(
        &self,
        network: &str,
        address: &str,
        _actor: &str,
    ) -> Result<v1::Allocation, BackendError> {
        let (network, addr) = (network.to_string(), ip(address)?);
        self.run(
            move |ipam| match ipam.release_ip(&network, addr).map_err(backend_error)? {
                Some(l) => Ok(allocation(&network, &l)),
                None => Err(BackendError::NotFound(format!("address {addr}"))),
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_ipam_core::{IpamConfig, ManualClock, NodeInfo};

    fn core() -> CoreIpam {
        let cfg = IpamConfig::from_json(&serde_json::json!({
            "type": "berth-ipam",
            "store": {"type": "local", "dir": "/nonexistent"},
            "pools": [{"name": "p1", "subnet": "10.77.0.0/24", "gateway": "10.77.0.1"}]
        }))
        .unwrap();
        let node = NodeInfo {
            node: "node-1".into(),
            rack: Some("r1".into()),
        };
        let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
        CoreIpam::new(Arc::new(Ipam::in_memory(&cfg, node, clock).unwrap()))
    }

    #[tokio::test]
    async fn reserve_show_list_history_release_through_the_core() {
        let c = core();
        let a = c
            .reserve(
                &v1::ReserveRequest {
                    network: "net1".into(),
                    address: "10.77.0.9".into(),
                    namespace: "team-a".into(),
                    owner: "db-0".into(),
                    note: "db primary".into(),
                    ..Default::default()
                },
                "cn:alice",
            )
            .await
            .unwrap();
        assert_eq!(a.state, "reserved");
        assert_eq!((a.network.as_str(), a.pool.as_str()), ("net1", "p1"));
        assert_eq!(
            (a.namespace.as_str(), a.owner.as_str()),
            ("team-a", "team-a/db-0")
        );
        assert_eq!(a.note, "db primary (reserved by cn:alice)");
        assert_eq!(a.node, "node-1");

        // Empty network: searched across the store's networks.
        let shown = c.show("", "10.77.0.9").await.unwrap();
        assert_eq!(shown, a);
        let listed = c
            .list(&v1::ListAllocationsRequest::default())
            .await
            .unwrap();
        assert_eq!(listed, vec![a.clone()]);
        let h = c
            .history(&v1::IpamHistoryRequest {
                network: "net1".into(),
                address: "10.77.0.9".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h[0].action, "reserve");
        assert_eq!(h[0].namespace, "team-a");

        let gone = c.release("net1", "10.77.0.9", "cn:alice").await.unwrap();
        assert_eq!(gone.state, "reserved");
        assert!(matches!(
            c.show("net1", "10.77.0.9").await,
            Err(BackendError::NotFound(_))
        ));
        assert!(matches!(
            c.release("net1", "10.77.0.9", "cn:alice").await,
            Err(BackendError::NotFound(_))
        ));
        assert!(matches!(
            c.show("net1", "nope").await,
            Err(BackendError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn core_errors_map_to_statuses() {
        let c = core();
        let e = c
            .reserve(
                &v1::ReserveRequest {
                    network: "net1".into(),
                    address: "10.88.0.9".into(),
                    ..Default::default()
                },
                "cn:alice",
            )
            .await
            .unwrap_err();
        let st = tonic::Status::from(e);
        assert!(
            matches!(
                st.code(),
                tonic::Code::FailedPrecondition | tonic::Code::NotFound
            ),
            "{st:?}"
        );
    }
}
