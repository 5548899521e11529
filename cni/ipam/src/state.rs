//! What the store holds: one [`Lease`] per address in use, held or reserved, and [`Event`]s.

use std::collections::BTreeMap;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::allocator::PodIdentity;

/// The leases of one network, keyed by address.
pub type Leases = BTreeMap<IpAddr, Lease>;

/// The key an address sticks to: a pod (namespace/name) or an app key, per interface.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Sticky {
    pub namespace: String,
    /// The pod name, or `app:<key>` when the pod is annotated `berth.io/sticky: <key>`.
    pub name: String,
    /// The pod's interface; `None` in an admin reservation matches any interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
}

impl Sticky {
    /// Whether a lease stuck to `self` may be taken by a request stuck to `other`.
    pub fn matches(&self, other: &Sticky) -> bool {
        self.namespace == other.namespace
            && self.name == other.name
            && (self.ifname.is_none() || other.ifname.is_none() || self.ifname == other.ifname)
    }
}

impl std::fmt::Display for Sticky {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if let Some(i) = &self.ifname {
            write!(f, " ({i})")?;
        }
        Ok(())
    }
}

/// What an address is doing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum LeaseState {
    /// In use by a sandbox's interface.
    Allocated {
        #[serde(rename = "containerID")]
        container_id: String,
        ifname: String,
    },
    /// Released, kept for its sticky key until `until`.
    Held { until: DateTime<Utc> },
    /// Reserved by an operator for `sticky` (or for nobody), optionally until a time.
    Reserved {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<DateTime<Utc>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
}

/// One address's record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub ip: IpAddr,
    pub pool: String,
    #[serde(flatten)]
    pub state: LeaseState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<Sticky>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodIdentity>,
    /// The node and rack that last changed the lease.
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rack: Option<String>,
    /// When the lease entered its current state.
    pub since: DateTime<Utc>,
    /// Given through `berth.io/ip`: its hold is never reclaimed for another pod.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pinned: bool,
}

impl Lease {
    /// The attachment using the address, if allocated.
    pub fn attachment(&self) -> Option<(&str, &str)> {
        match &self.state {
            LeaseState::Allocated {
                container_id,
                ifname,
            } => Some((container_id, ifname)),
            _ => None,
        }
    }

    /// When a hold or timed reservation ends.
    pub fn expires(&self) -> Option<DateTime<Utc>> {
        match &self.state {
            LeaseState::Held { until } => Some(*until),
            LeaseState::Reserved { until, .. } => *until,
            LeaseState::Allocated { .. } => None,
        }
    }

    /// Whether a hold or timed reservation has run out at `now`.
    pub fn expired(&self, now: DateTime<Utc>) -> bool {
        self.expires().is_some_and(|u| u <= now)
    }

    /// Whether a full pool may take this address from its owner: a hold (soft, unlike an
    /// operator's reservation) that was not pinned by `berth.io/ip`.
    pub fn reclaimable(&self) -> bool {
        matches!(self.state, LeaseState::Held { .. }) && !self.pinned
    }
}

/// Kinds of history events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// An address was given to an attachment.
    Allocate,
    /// An address was freed at once.
    Release,
    /// An address was released into its hold period.
    Hold,
    /// A hold or timed reservation ran out.
    Expire,
    /// GC or reconciliation released an attachment the runtime no longer has.
    Gc,
    /// An operator reserved an address.
    Reserve,
    /// An operator freed an address.
    Free,
    /// A full pool took a held address from the pod it was held for.
    Reclaimed,
}

/// One history record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub time: DateTime<Utc>,
    pub kind: EventKind,
    pub ip: IpAddr,
    pub pool: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodIdentity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<Sticky>,
    #[serde(
        default,
        rename = "containerID",
        skip_serializing_if = "Option::is_none"
    )]
    pub container_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rack: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A set of changes computed from a snapshot, applied by a store atomically.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Leases to create or replace.
    pub puts: Vec<Lease>,
    /// Addresses whose lease is removed.
    pub deletes: Vec<IpAddr>,
    pub events: Vec<Event>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.puts.is_empty() && self.deletes.is_empty() && self.events.is_empty()
    }

    /// Keeps the first `n` lease changes (and their events), for stores that bound the size of
    /// one transaction; only for plans whose changes are independent (GC). Returns whether
    /// anything was cut.
    pub fn truncate_changes(&mut self, n: usize) -> bool {
        let mut keep = std::collections::BTreeSet::new();
        for ip in self.deletes.iter().chain(self.puts.iter().map(|l| &l.ip)) {
            if keep.len() < n {
                keep.insert(*ip);
            }
        }
        let before = self.puts.len() + self.deletes.len();
        self.puts.retain(|l| keep.contains(&l.ip));
        self.deletes.retain(|ip| keep.contains(ip));
        self.events.retain(|e| keep.contains(&e.ip));
        self.puts.len() + self.deletes.len() < before
    }

    /// Applies the plan to a snapshot (what every store does inside its transaction).
    pub fn apply(&self, leases: &mut Leases) {
        for ip in &self.deletes {
            leases.remove(ip);
        }
        for l in &self.puts {
            leases.insert(l.ip, l.clone());
        }
    }
}

/// Which history to return.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    pub ip: Option<IpAddr>,
    /// `(namespace, name)` of a pod.
    pub pod: Option<(String, String)>,
    pub container_id: Option<String>,
    /// Newest events kept in the answer (all when `None`).
    pub limit: Option<usize>,
}

impl HistoryQuery {
    pub fn matches(&self, e: &Event) -> bool {
        self.ip.is_none_or(|ip| ip == e.ip)
            && self.pod.as_ref().is_none_or(|(ns, name)| {
                e.pod
                    .as_ref()
                    .is_some_and(|p| &p.namespace == ns && &p.name == name)
                    || e.sticky
                        .as_ref()
                        .is_some_and(|s| &s.namespace == ns && &s.name == name)
            })
            && self
                .container_id
                .as_ref()
                .is_none_or(|c| e.container_id.as_ref() == Some(c))
    }
}
