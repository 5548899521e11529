//! What a decision may ask of a network's leases inside a transaction.
//!
//! A decision asks a handful of questions (the lease of an address, of an attachment, of a
//! sticky key; whether an address is taken; the oldest hold of a pool; the newest record),
//! so a store can answer them from an index without decoding every lease of the network:
//! the local store decodes only the leases a decision actually looks at, which keeps an ADD
//! in a pool full of holds as cheap as one in an empty pool. A materialized [`Leases`] map
//! answers them by scanning (the memory and etcd stores, and the unit tests).

use std::net::IpAddr;

use chrono::{DateTime, Utc};

use crate::error::IpamError;
use crate::pool::Pool;
use crate::state::{Lease, Leases, Sticky};

/// A consistent snapshot of one network's leases, as a transaction sees it.
///
/// Methods that hand out leases may fail: a store that decodes lazily finds a corrupt
/// record only when it is read ([`IpamError::CorruptStore`]).
pub trait LeaseView {
    /// The lease of `ip`.
    fn get(&self, ip: IpAddr) -> Result<Option<Lease>, IpamError>;
    /// The leases allocated to an attachment: at most one per IP family, by address.
    fn attached(&self, container_id: &str, ifname: &str) -> Result<Vec<Lease>, IpamError>;
    /// The leases whose sticky key [matches](Sticky::matches) `sticky`, by address.
    fn stuck_to(&self, sticky: &Sticky) -> Result<Vec<Lease>, IpamError>;
    /// Whether `ip` has a lease that has not run out at `now` (allocations never do).
    fn taken(&self, ip: IpAddr, now: DateTime<Utc>) -> bool;
    /// A free address of `pool` ([`Pool::find_free`] from `start`), if the pool has one.
    ///
    /// A store that searches only part of a pool (the etcd store's node-affine blocks) may
    /// instead fail and widen its view before it asks the decision again.
    fn find_free(
        &self,
        pool: &Pool,
        start: u128,
        now: DateTime<Utc>,
    ) -> Result<Option<IpAddr>, IpamError> {
        Ok(pool.find_free(start, &|ip| self.taken(ip, now)))
    }
    /// The [reclaimable](Lease::reclaimable) hold of pool `pool` with the smallest
    /// `(since, ip)` among the addresses `usable` accepts.
    fn oldest_reclaimable(
        &self,
        pool: &str,
        usable: &dyn Fn(IpAddr) -> bool,
    ) -> Result<Option<Lease>, IpamError>;
    /// The lease that entered its state last, if it did after `t` (the clock-skew check:
    /// a record from this node's future).
    fn newest_after(&self, t: DateTime<Utc>) -> Result<Option<Lease>, IpamError>;
    /// Every lease (GC, reservations, listings: calls that look at the whole network).
    fn all(&self) -> Result<Leases, IpamError>;
}

impl LeaseView for Leases {
    fn get(&self, ip: IpAddr) -> Result<Option<Lease>, IpamError> {
        Ok(Leases::get(self, &ip).cloned())
    }

    fn attached(&self, container_id: &str, ifname: &str) -> Result<Vec<Lease>, IpamError> {
        Ok(self
            .values()
            .filter(|l| l.attachment() == Some((container_id, ifname)))
            .cloned()
            .collect())
    }

    fn stuck_to(&self, sticky: &Sticky) -> Result<Vec<Lease>, IpamError> {
        Ok(self
            .values()
            .filter(|l| l.sticky.as_ref().is_some_and(|s| s.matches(sticky)))
            .cloned()
            .collect())
    }

    fn taken(&self, ip: IpAddr, now: DateTime<Utc>) -> bool {
        Leases::get(self, &ip).is_some_and(|l| !l.expired(now))
    }

    fn oldest_reclaimable(
        &self,
        pool: &str,
        usable: &dyn Fn(IpAddr) -> bool,
    ) -> Result<Option<Lease>, IpamError> {
        Ok(self
            .values()
            .filter(|l| l.pool == pool && l.reclaimable() && usable(l.ip))
            .min_by_key(|l| (l.since, l.ip))
            .cloned())
    }

    fn newest_after(&self, t: DateTime<Utc>) -> Result<Option<Lease>, IpamError> {
        Ok(self
            .values()
            .max_by_key(|l| l.since)
            .filter(|l| l.since > t)
            .cloned())
    }

    fn all(&self) -> Result<Leases, IpamError> {
        Ok(self.clone())
    }
}
