//! Committing a plan: one etcd `Txn` that compares every touched lease key's `mod_revision`
//! with what the decision read (version 0 for "absent") and every new attachment key's
//! absence, then writes the leases, the attachment and sticky index keys that follow from
//! them, and the plan's events. If any compare fails, nothing is written.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use rand::Rng;

use super::EtcdStore;
use super::keys::Keys;
use crate::error::IpamError;
use crate::state::{Lease, Plan};

/// What a decision read of the addresses its plan touches: the lease (or its absence) and the
/// key's mod revision (0: absent).
pub(super) type Read = BTreeMap<IpAddr, (Option<Lease>, i64)>;

impl EtcdStore {
    /// Commits `plan`, decided from `read`. `Ok(false)`: another writer changed a touched
    /// key first; nothing was written and the decision must be made again.
    pub(super) fn commit(
        &self,
        network: &str,
        read: &dyn Fn(IpAddr) -> Option<(Option<Lease>, i64)>,
        plan: &Plan,
    ) -> Result<bool, IpamError> {
        let keys = self.keys(network);
        let txn = build(&keys, read, plan)?;
        let resp = self.run("commit", |c| {
            let txn = txn.clone();
            async move { c.kv_client().txn(txn).await }
        })?;
        if resp.succeeded() {
            // Occasional, bounded pruning keeps history within its limits.
            if rand::rng().random_ratio(1, 200)
                && let Some(e) = plan.events.last()
            {
                let _ = self.prune_history(network, e.time);
            }
        }
        Ok(resp.succeeded())
    }
}

/// The transaction of a plan. A touched address the decision did not read is a bug in the
/// caller's view: refused rather than committed without its compare.
fn build(
    keys: &Keys,
    read: &dyn Fn(IpAddr) -> Option<(Option<Lease>, i64)>,
    plan: &Plan,
) -> Result<Txn, IpamError> {
    let touched: BTreeSet<IpAddr> = plan
        .puts
        .iter()
        .map(|l| l.ip)
        .chain(plan.deletes.iter().copied())
        .collect();
    let mut compares = Vec::new();
    let mut ops = Vec::new();
    // etcd refuses a Txn that names a key twice: guard keys removed, and those put.
    let (mut unguard, mut guard) = (BTreeSet::new(), BTreeSet::new());
    // IPv6 addresses released whose attachment may still have the IPv4 key of a berth before
    // dual-stack, which guarded an IPv6-only attachment too.
    let mut legacy_guards = Vec::new();
    for ip in &touched {
        let (before, rev) = read(*ip).ok_or_else(|| {
            IpamError::Unavailable(format!(
                "etcd commit: address {ip} was changed without being read first (a bug in berth); retry"
            ))
        })?;
        let key = keys.lease(*ip);
        compares.push(if rev > 0 {
            Compare::mod_revision(key.clone(), CompareOp::Equal, rev)
        } else {
            Compare::version(key.clone(), CompareOp::Equal, 0)
        });
        // Puts win over deletes of the same address, as in `Plan::apply`.
        let after = plan.puts.iter().rev().find(|l| l.ip == *ip);
        match after {
            Some(l) => {
                let v = serde_json::to_vec(l).expect("leases always serialize");
                ops.push(TxnOp::put(key, v, None));
            }
            None => ops.push(TxnOp::delete(key, None)),
        }
        let old = before.as_ref().and_then(|l| l.attachment());
        let new = after.and_then(|l| l.attachment());
        if old != new {
            if let Some(a) = old {
                unguard.insert(keys.attachment(a, *ip));
                if ip.is_ipv6() {
                    legacy_guards.push((keys.attachment(a, IpAddr::from([0u8; 4])), *ip));
                }
            }
            if let Some(a) = new {
                let key = keys.attachment(a, *ip);
                compares.push(Compare::version(key.clone(), CompareOp::Equal, 0));
                guard.insert(key.clone());
                ops.push(TxnOp::put(key, ip.to_string(), None));
            }
        }
        let old = before.as_ref().and_then(|l| l.sticky.as_ref());
        let new = after.and_then(|l| l.sticky.as_ref());
        let (old_key, new_key) = (
            old.map(|s| keys.sticky(s, *ip)),
            new.map(|s| keys.sticky(s, *ip)),
        );
        if old_key != new_key {
            if let Some(k) = old_key {
                ops.push(TxnOp::delete(k, None));
            }
            if let Some(k) = new_key {
                ops.push(TxnOp::put(k, "", None));
            }
        }
    }
    for key in &unguard {
        if !guard.contains(key) {
            ops.push(TxnOp::delete(key.clone(), None));
        }
    }
    for (key, ip) in legacy_guards {
        if unguard.contains(&key) || guard.contains(&key) {
            continue;
        }
        // Removed only if it names this address: a nested transaction decides at commit.
        ops.push(TxnOp::txn(
            Txn::new()
                .when(vec![Compare::value(
                    key.clone(),
                    CompareOp::Equal,
                    ip.to_string(),
                )])
                .and_then(vec![TxnOp::delete(key, None)]),
        ));
    }
    let tag: u32 = rand::rng().random();
    for (i, e) in plan.events.iter().enumerate() {
        let k = keys.history(super::nanos(e.time), tag, i);
        let v = serde_json::to_vec(e).expect("events always serialize");
        ops.push(TxnOp::put(k, v, None));
    }
    Ok(Txn::new().when(compares).and_then(ops))
}
