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
