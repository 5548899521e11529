//! Collection of leaked leases (`[ipam_gc]`).
//!
//! containerd never calls CNI GC. When a plugin later in the chain fails, containerd's
//! teardown fails at the same plugin and the sandbox is removed anyway, so berth's lease
//! outlives its sandbox; a sticky pod then cannot get its address back. Every interval the
//! agent frees the allocations of sandboxes the runtime does not have, once they are older
//! than the grace (an ADD still in flight has no sandbox in NRI yet), and only when its view of
//! the runtime is complete (NRI connected and synchronized, the store read whole).

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use berth_api::{AuditLog, AuditRecord, Counter, Metrics};
use berth_ipam_core::{GcReport, IpamError, Lease};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Network;
use super::sandboxes::Sandboxes;

/// Why a pass did not run or failed; nothing was freed.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error(
        "the agent's view of the runtime's sandboxes is incomplete ({0}): nothing is collected until NRI has synchronized"
    )]
    Incomplete(&'static str),
    #[error("cannot read or change the IPAM store")]
    Store(#[from] IpamError),
}

/// One node's collector: the network, the sandboxes NRI reports, and where it reports to.
pub struct Collector {
    network: Network,
    grace: Duration,
    sandboxes: Arc<Sandboxes>,
    nri: watch::Receiver<berth_nri::State>,
    collected_total: Counter,
    /// The API's audit log, once the API server runs.
    audit: OnceLock<AuditLog>,
}

impl Collector {
    pub fn new(
        network: Network,
        grace: Duration,
        sandboxes: Arc<Sandboxes>,
        nri: watch::Receiver<berth_nri::State>,
        metrics: &Metrics,
    ) -> Collector {
        let collected_total = metrics.counter(
            "berth_ipam_gc_collected_total",
            "Leaked IPAM allocations the agent freed (their sandbox was gone).",
            &[("network", network.name.as_str())],
        );
        Collector {
            network,
            grace,
            sandboxes,
            nri,
            collected_total,
            audit: OnceLock::new(),
        }
    }

    pub fn network(&self) -> &Network {
        &self.network
    }

    /// Audit each collection in the API's audit log from now on.
    pub fn audit_to(&self, log: AuditLog) {
        let _ = self.audit.set(log);
    }

    fn live(&self) -> Result<HashSet<String>, GcError> {
        if matches!(*self.nri.borrow(), berth_nri::State::Disconnected) {
            return Err(GcError::Incomplete("NRI is not connected"));
        }
        self.sandboxes
            .live()
            .ok_or(GcError::Incomplete("NRI has not synchronized yet"))
    }

    /// One pass. With `dry_run`, reports what would be freed and changes nothing.
    pub fn pass(&self, dry_run: bool) -> Result<GcReport, GcError> {
        let live = self.live()?;
        let report = self.network.ipam.collect_leaked(
            &self.network.name,
            &|sandbox| live.contains(sandbox),
            self.grace,
            self.network.shared_store,
            dry_run,
        )?;
        if !dry_run {
            for lease in &report.collected {
                self.record(lease);
            }
        }
        Ok(report)
    }

    fn record(&self, lease: &Lease) {
        let (sandbox, ifname) = lease.attachment().unwrap_or_default();
        let pod = lease
            .pod
            .as_ref()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .unwrap_or_default();
        tracing::info!(network = %self.network.name, address = %lease.ip, sandbox, ifname, pod,
            allocated = %lease.since, held = lease.sticky.is_some(),
            "collected a leaked address: its sandbox is gone");
        self.collected_total.inc();
        if let Some(audit) = self.audit.get() {
            audit.append_detached(&audit_record(&self.network.name, lease, &pod));
        }
    }
}

/// The audit line of one collection: the agent itself acting, like an allowed call.
fn audit_record(network: &str, lease: &Lease, pod: &str) -> AuditRecord {
    let (sandbox, ifname) = lease.attachment().unwrap_or_default();
    AuditRecord {
        prev: String::new(),
        time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        event: "ipam-gc".into(),
        call_id: String::new(),
        identity: "berth-agent".into(),
        groups: Vec::new(),
        transport: "internal".into(),
        peer: String::new(),
        method: "/berth.v1.Ipam/Gc".into(),
        target: format!(
            "network {network} address {} pod {pod} sandbox {sandbox}",
            lease.ip
        ),
        decision: "allow".into(),
        reason: "its sandbox is gone".into(),
        code: 0,
        duration_us: 0,
        bytes_sent: 0,
        bytes_received: 0,
        detail: Some(serde_json::json!({
            "network": network,
            "address": lease.ip.to_string(),
            "sandbox": sandbox,
            "ifname": ifname,
            "pod": pod,
            "allocated": lease.since.to_rfc3339(),
            "held": lease.sticky.is_some(),
        })),
    }
}

/// Runs a pass every `interval` until `stop`; a pass that cannot run is logged and retried
/// at the next interval.
pub async fn run(collector: Arc<Collector>, interval: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick fires at once: skip it, NRI has not synchronized yet anyway.
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        let c = collector.clone();
        match tokio::task::spawn_blocking(move || c.pass(false)).await {
            Ok(Ok(r)) if !r.collected.is_empty() => {
                tracing::info!(network = %collector.network.name, collected = r.collected.len(), "ipam gc pass")
            }
            Ok(Ok(_)) => {}
            Ok(Err(e @ GcError::Incomplete(_))) => {
                tracing::debug!(error = %e, "ipam gc pass skipped")
            }
            Ok(Err(e)) => tracing::warn!(
                error = format!("{:#}", anyhow::Error::from(e)),
                "ipam gc pass failed"
            ),
            Err(e) => tracing::error!(error = %e, "ipam gc pass panicked"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_ipam_core::{
        AllocateRequest, Allocator, Ipam, IpamConfig, LeaseState, ManualClock, NodeInfo,
    };
    use chrono::TimeZone;

    fn collector() -> (
        Collector,
        Arc<ManualClock>,
        watch::Sender<berth_nri::State>,
        Metrics,
    ) {
        let clock = Arc::new(ManualClock::new(
            chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
        ));
        let config = IpamConfig::from_json(&serde_json::json!({
            "pools": [{"name": "a", "subnet": "10.9.0.0/24"}]
        }))
        .unwrap();
        let node = NodeInfo {
            node: "n1".into(),
            rack: None,
        };
        let ipam = Arc::new(Ipam::in_memory(&config, node, clock.clone()).unwrap());
        let (tx, rx) = watch::channel(berth_nri::State::Disconnected);
        let metrics = Metrics::new();
        let network = Network {
            name: "net".into(),
            ipam,
            shared_store: false,
        };
        let c = Collector::new(
            network,
            Duration::from_secs(120),
            Arc::new(Sandboxes::new()),
            rx,
            &metrics,
        );
        (c, clock, tx, metrics)
    }

    fn add(c: &Collector, sandbox: &str) -> std::net::IpAddr {
        c.network
            .ipam
            .allocate(&AllocateRequest {
                network: "net".into(),
                container_id: sandbox.into(),
                ifname: "eth0".into(),
                pod: Some(berth_ipam_core::PodIdentity {
                    namespace: "shop".into(),
                    name: format!("web-{sandbox}"),
                    uid: None,
                }),
                ..Default::default()
            })
            .unwrap()[0]
            .address
            .addr()
    }

    #[test]
    fn never_collects_on_an_incomplete_view_and_counts_what_it_collects() {
        let (c, clock, nri, metrics) = collector();
        let leaked = add(&c, "gone");
        add(&c, "live");
        clock.advance(chrono::Duration::minutes(5));
        assert!(
            matches!(c.pass(false), Err(GcError::Incomplete(m)) if m.contains("not connected"))
        );
        nri.send_replace(berth_nri::State::Ready {
            runtime: "containerd".into(),
            version: "2.1".into(),
            connection: 1,
        });
        assert!(matches!(c.pass(false), Err(GcError::Incomplete(m)) if m.contains("synchronized")));
        c.sandboxes.synchronize(&[berth_nri::PodSandbox {
            id: "live".into(),
            ..Default::default()
        }]);
        let dry = c.pass(true).unwrap();
        assert_eq!(dry.released, vec![leaked]);
        assert!(
            !metrics
                .render()
                .contains("berth_ipam_gc_collected_total{network=\"net\"} 1")
        );
        let r = c.pass(false).unwrap();
        assert_eq!(r.released, vec![leaked]);
        let leases = c.network.ipam.list("net").unwrap();
        let l = leases.iter().find(|l| l.ip == leaked).unwrap();
        assert!(matches!(l.state, LeaseState::Held { .. }), "{l:?}");
        assert!(
            metrics
                .render()
                .contains("berth_ipam_gc_collected_total{network=\"net\"} 1"),
            "{}",
            metrics.render()
        );
        // A reconnect makes the view incomplete again until the next Synchronize.
        c.sandboxes.connecting();
        assert!(matches!(c.pass(false), Err(GcError::Incomplete(_))));
    }

    #[test]
    fn the_audit_record_names_pod_sandbox_and_address() {
        let (c, ..) = collector();
        let ip = add(&c, "sb1");
        let lease = c
            .network
            .ipam
            .list("net")
            .unwrap()
            .into_iter()
            .find(|l| l.ip == ip)
            .unwrap();
        let rec = audit_record("net", &lease, "shop/web-sb1");
        assert_eq!(rec.event, "ipam-gc");
        assert_eq!(rec.identity, "berth-agent");
        assert!(
            rec.target.contains(&ip.to_string()) && rec.target.contains("sandbox sb1"),
            "{}",
            rec.target
        );
        let d = rec.detail.unwrap();
        assert_eq!(d["pod"], "shop/web-sb1");
        assert_eq!(d["ifname"], "eth0");
    }
}
