//! The one-time migration of a network written by the first etcd store (leases, attachments
//! and history only): it builds the sticky index, then writes `layout`.
//!
//! Until `layout` says the index is complete, decisions that need a pod's sticky leases read
//! the whole network, as the first store did, so nothing is missed while the index is built.
//! The migration runs under a lock key attached to an etcd lease (so a killed migrator's lock
//! expires) and writes the index in batches, each compared against the mod revisions of the
//! leases it indexes: a lease changed meanwhile by another writer (who maintains the index for
//! what it touches) makes the batch fail, and the migration starts over from a fresh read.

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};

use super::EtcdStore;
use super::keys::LAYOUT_INDEXED;
use crate::error::IpamError;

/// Seconds a migration lock outlives a migrator that was killed.
const LOCK_TTL_SECS: i64 = 30;

/// Leases indexed per transaction (a compare and a put each, under etcd's 128 operations).
const BATCH: usize = 50;

/// Fresh starts after a batch lost a race.
const MAX_RESTARTS: u32 = 8;

impl EtcdStore {
    /// Whether the sticky index of `network` is complete.
    pub(super) fn indexed(&self, network: &str) -> Result<bool, IpamError> {
        let layout = self.get_keys("read", &[self.keys(network).layout()])?;
        Ok(layout
            .first()
            .and_then(|v| v.as_ref())
            .is_some_and(|(v, _)| v == LAYOUT_INDEXED.as_bytes()))
    }

    /// Builds the sticky index of `network` unless it is complete or another node is building
    /// it now. Returns whether the index is complete afterwards.
    pub fn migrate(&self, network: &str, node: &str) -> Result<bool, IpamError> {
        if self.indexed(network)? {
            return Ok(true);
        }
        let keys = self.keys(network);
        let lease_id = self
            .run("migration lock", |c| async move {
                c.lease_client().grant(LOCK_TTL_SECS, None).await
            })?
            .id();
        let lock = keys.migration();
        let take = Txn::new()
            .when(vec![Compare::version(lock.clone(), CompareOp::Equal, 0)])
            .and_then(vec![TxnOp::put(
                lock.clone(),
                node,
                Some(PutOptions::new().with_lease(lease_id)),
            )]);
        let taken = self
            .run("migration lock", |c| {
                let take = take.clone();
                async move { c.kv_client().txn(take).await }
            })?
            .succeeded();
        if !taken {
            return Ok(false);
        }
        let result = self.build_sticky_index(network);
        let _ = self.run("migration unlock", |c| async move {
            c.lease_client().revoke(lease_id).await
        });
        result
    }

    fn build_sticky_index(&self, network: &str) -> Result<bool, IpamError> {
        let keys = self.keys(network);
        'fresh: for _ in 0..MAX_RESTARTS {
            let (leases, revs) = self.snapshot(network)?;
            let sticky: Vec<_> = leases
                .values()
                .filter_map(|l| l.sticky.as_ref().map(|s| (l.ip, s)))
                .collect();
            for batch in sticky.chunks(BATCH) {
                let mut compares = Vec::new();
                let mut puts = Vec::new();
                for (ip, s) in batch {
                    let rev = revs.get(ip).copied().unwrap_or(0);
                    compares.push(Compare::mod_revision(
                        keys.lease(*ip),
                        CompareOp::Equal,
                        rev,
                    ));
                    puts.push(TxnOp::put(keys.sticky(s, *ip), "", None));
                }
                let txn = Txn::new().when(compares).and_then(puts);
                let done = self
                    .run("build the sticky index", |c| {
                        let txn = txn.clone();
                        async move { c.kv_client().txn(txn).await }
                    })?
                    .succeeded();
                if !done {
                    continue 'fresh;
                }
            }
            self.run("build the sticky index", |c| {
                let key = keys.layout();
                async move { c.kv_client().put(key, LAYOUT_INDEXED, None).await }
            })?;
            return Ok(true);
        }
        Ok(false)
    }
}
