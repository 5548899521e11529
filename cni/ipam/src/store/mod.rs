//! Where leases and history live. Every store applies a [`Plan`] computed from a snapshot
//! atomically: either all of it is visible afterwards or none of it, and two writers never both
//! commit a plan computed from the same state of an address.
//!
//! One conformance suite (`tests/store_conformance.rs`) runs against every implementation.

pub mod etcd;
pub mod local;
pub mod memory;

use crate::error::IpamError;
use crate::state::{Event, Lease, Leases, Plan};
use crate::view::LeaseView;

/// The decision callback of a transaction: snapshot in, plan out.
pub type Decide<'a> = dyn FnMut(&dyn LeaseView) -> Result<Plan, IpamError> + 'a;

/// A store of leases and history, partitioned by CNI network name.
pub trait Store: Send + Sync {
    /// The network's leases now.
    fn read(&self, network: &str) -> Result<Leases, IpamError>;
    /// Runs `decide` over a consistent snapshot and commits its plan atomically; on a concurrent
    /// change the store may call `decide` again with a fresh snapshot. An error from `decide`
    /// aborts without writing.
    fn transact(&self, network: &str, decide: &mut Decide<'_>) -> Result<(), IpamError>;
    /// [`Store::transact`] for a decision made on `node` about one pod (ADD, DEL, CHECK): a
    /// store that gives nodes blocks of addresses (etcd) reads only what such a decision
    /// needs — the node's blocks and the pod's own leases — instead of the whole network.
    fn transact_on(
        &self,
        node: &str,
        network: &str,
        decide: &mut Decide<'_>,
    ) -> Result<(), IpamError> {
        let _ = node;
        self.transact(network, decide)
    }
    /// Housekeeping after a garbage collection at `now` (the etcd store gives back blocks that
    /// have been empty for a while, so the blocks of nodes that left return to the pool).
    /// Returns how many things it tidied.
    fn tidy(&self, network: &str, now: chrono::DateTime<chrono::Utc>) -> Result<usize, IpamError> {
        let _ = (network, now);
        Ok(0)
    }
    /// The leases of an attachment (CNI CHECK), read as [`Store::transact_on`] reads.
    fn attached_on(
        &self,
        node: &str,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<Vec<Lease>, IpamError> {
        let _ = node;
        self.read(network)?.attached(container_id, ifname)
    }
    /// The network's retained history, oldest first.
    fn history(&self, network: &str) -> Result<Vec<Event>, IpamError>;
    /// The networks the store holds anything for.
    fn networks(&self) -> Result<Vec<String>, IpamError>;
    /// Whether the store can be used now.
    fn status(&self) -> Result<(), IpamError>;
    /// Whether concurrent writers should start their search at random points of a pool
    /// (optimistic stores), instead of lowest-first (stores that serialize writers).
    fn spreads(&self) -> bool {
        false
    }
}

/// Network names become file names and key segments: the CNI spec's rule, checked again
/// here because the API hands the store names too ([`berth_common::names::NetworkName`]).
pub fn check_network_name(network: &str) -> Result<(), IpamError> {
    berth_common::names::check_network_name(network).map_err(IpamError::InvalidConfig)
}

/// Drops events beyond the retention limits (oldest first).
pub(crate) fn prune(
    events: &mut Vec<Event>,
    limits: &HistoryLimits,
    now: chrono::DateTime<chrono::Utc>,
) {
    let cutoff = now - limits.max_age;
    events.retain(|e| e.time >= cutoff);
    if events.len() > limits.max_events {
        let extra = events.len() - limits.max_events;
        events.drain(..extra);
    }
}

/// History retention.
#[derive(Clone, Debug)]
pub struct HistoryLimits {
    pub max_events: usize,
    pub max_age: chrono::Duration,
}

impl HistoryLimits {
    pub fn from_config(h: &crate::config::HistoryConfig) -> HistoryLimits {
        HistoryLimits {
            max_events: h.max_events.max(1),
            max_age: chrono::Duration::from_std(h.retention).unwrap_or(chrono::Duration::MAX),
        }
    }
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits::from_config(&crate::config::HistoryConfig::default())
    }
}
