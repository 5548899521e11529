//! Node-affine blocks: a node claims an aligned block of a pool (64 addresses by default) with
//! one compare-and-swap and looks for free addresses in its own blocks first.
//!
//! Blocks steer where a node looks; they do not decide who may hold an address. Every lease
//! is still created with a compare on its own key, so two nodes that both believe they own a
//! block (or one that borrows from another's block) can never take the same address. That is
//! why borrowing is safe and simple here: berth's pools are L2 subnets behind the rack's
//! switch, not routed per block, so an address of another node's block works on this node
//! as well. A sticky pod that comes back on another node of its rack therefore keeps its
//! address wherever it lies, and a node whose blocks are full while no block is left to
//! claim decides from the whole pool (it borrows).

use std::collections::BTreeSet;
use std::net::IpAddr;

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::EtcdStore;
use super::keys::Keys;
use crate::error::IpamError;
use crate::pool::Pool;

/// A pool with more blocks than this is searched by random picks instead of in full.
const ENUMERATE_UP_TO: u128 = 1 << 14;

/// Random picks in a pool too large to enumerate.
const RANDOM_PICKS: usize = 64;

/// How long a block stays claimed with nothing in it before a GC gives it back: longer than
/// any ADD between its claim and its commit, and long enough that a node's usual churn does
/// not give back and claim again the same block.
const EMPTY_BLOCK_GRACE: chrono::Duration = chrono::Duration::minutes(10);

/// The value of a block claim.
#[derive(Debug, Serialize, Deserialize)]
struct Claim {
    node: String,
    since: chrono::DateTime<chrono::Utc>,
}

/// A block of a pool and the node it was given to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockClaim {
    pub pool: String,
    pub first: IpAddr,
    pub node: String,
    pub since: chrono::DateTime<chrono::Utc>,
}

impl EtcdStore {
    /// Every block claim of `network` (`berthctl ipam`, tests).
    pub fn block_claims(&self, network: &str) -> Result<Vec<BlockClaim>, IpamError> {
        super::check_network_name(network)?;
        let keys = self.keys(network);
        let prefix = keys.pool_blocks("");
        let prefix = prefix.trim_end_matches('/');
        let resp = self.get_prefix("read block claims", prefix, GetOptions::new())?;
        let mut out = Vec::new();
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let corrupt = |reason: String| IpamError::CorruptStore {
                path: key.clone().into(),
                reason,
            };
            let rest = key
                .strip_prefix(prefix)
                .unwrap_or(&key)
                .trim_start_matches('/');
            let (pool, first) = rest
                .split_once('/')
                .and_then(|(p, ip)| Some((p.to_string(), ip.parse().ok()?)))
                .ok_or_else(|| corrupt("not blocks/<pool>/<first address>".into()))?;
            let claim: Claim = serde_json::from_slice(kv.value())
                .map_err(|e| corrupt(format!("etcd value is not a block claim: {e}")))?;
            out.push(BlockClaim {
                pool,
                first,
                node: claim.node,
                since: claim.since,
            });
        }
        Ok(out)
    }

    /// Claims a block of `pool` for `node`. `Ok(false)`: every block of the pool with a usable
    /// address is claimed already.
    pub(super) fn claim_block(
        &self,
        network: &str,
        node: &str,
        pool: &Pool,
    ) -> Result<bool, IpamError> {
        let keys = self.keys(network);
        let size = self.block_addresses;
        let claimed: BTreeSet<IpAddr> = self
            .get_prefix(
                "read block claims",
                &keys.pool_blocks(&pool.name),
                GetOptions::new().with_keys_only(),
            )?
            .kvs()
            .iter()
            .filter_map(|kv| Keys::trailing_ip(kv.key()))
            .collect();
        let (first, last) = pool.block_positions(size);
        let count = last - first + 1;
        let mut rng = rand::rng();
        let offset = rng.random_range(0..count);
        let positions: Box<dyn Iterator<Item = u128>> = if count <= ENUMERATE_UP_TO {
            // From a random block, so nodes that claim at the same time rarely collide.
            Box::new((0..count).map(move |k| first + (offset + k) % count))
        } else {
            let picks: Vec<u128> = (0..RANDOM_PICKS)
                .map(|_| first + rng.random_range(0..count))
                .collect();
            Box::new(picks.into_iter())
        };
        for position in positions {
            let block = pool.block_at(position, size);
            if claimed.contains(&block) || pool.usable_in_block(block, size, 0).is_empty() {
                continue;
            }
            if self.claim(&keys, node, pool, block)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Gives back the blocks of `network` that hold no lease and were claimed more than
    /// [`EMPTY_BLOCK_GRACE`] before `now`: each with one transaction that compares the claim's
    /// revision and the absence of every lease key of the block, so a block in which any node
    /// allocated meanwhile stays claimed. Returns how many were given back.
    pub(super) fn release_empty_blocks(
        &self,
        network: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<usize, IpamError> {
        let keys = self.keys(network);
        let prefix = keys.pool_blocks("");
        let claims = self.get_prefix(
            "read block claims",
            prefix.trim_end_matches('/'),
            GetOptions::new(),
        )?;
        let mut stale = Vec::new();
        for kv in claims.kvs() {
            let Ok(claim) = serde_json::from_slice::<Claim>(kv.value()) else {
                continue;
            };
            let Some(first) = Keys::trailing_ip(kv.key()) else {
                continue;
            };
            if claim.since + EMPTY_BLOCK_GRACE < now {
                stale.push((kv.key().to_vec(), kv.mod_revision(), first, claim.node));
            }
        }
        if stale.is_empty() {
            return Ok(0);
        }
        let (leases, _) = self.snapshot(network)?;
        let size = self.block_addresses;
        let mut released = 0;
        for (key, rev, first, node) in stale {
            let addresses: Vec<IpAddr> = (0..size).filter_map(|i| offset(first, i)).collect();
            if addresses.iter().any(|ip| leases.contains_key(ip)) {
                continue;
            }
            let pool = String::from_utf8_lossy(&key)
                .strip_prefix(prefix.as_str())
                .and_then(|rest| rest.split_once('/'))
                .map(|(pool, _)| pool.to_string())
                .unwrap_or_default();
            let mut compares = vec![Compare::mod_revision(key.clone(), CompareOp::Equal, rev)];
            compares.extend(
                addresses
                    .iter()
                    .map(|ip| Compare::version(keys.lease(*ip), CompareOp::Equal, 0)),
            );
            let txn = Txn::new().when(compares).and_then(vec![
                TxnOp::delete(key, None),
                TxnOp::delete(keys.node_block(&node, &pool, first), None),
            ]);
            let done = self
                .run("give back a block", |c| {
                    let txn = txn.clone();
                    async move { c.kv_client().txn(txn).await }
                })?
                .succeeded();
            released += usize::from(done);
        }
        Ok(released)
    }

    /// One compare-and-swap: the claim key must not exist.
    fn claim(
        &self,
        keys: &Keys,
        node: &str,
        pool: &Pool,
        block: IpAddr,
    ) -> Result<bool, IpamError> {
        let key = keys.block(&pool.name, block);
        let claim = Claim {
            node: node.to_string(),
            since: chrono::Utc::now(),
        };
        let value = serde_json::to_vec(&claim).expect("claims always serialize");
        let txn = Txn::new()
            .when(vec![Compare::version(key.clone(), CompareOp::Equal, 0)])
            .and_then(vec![
                TxnOp::put(key, value, None),
                TxnOp::put(keys.node_block(node, &pool.name, block), "", None),
            ]);
        let resp = self.run("claim a block", |c| {
            let txn = txn.clone();
            async move { c.kv_client().txn(txn).await }
        })?;
        Ok(resp.succeeded())
    }
}

/// The address `n` after `ip`, if there is one.
fn offset(ip: IpAddr, n: u128) -> Option<IpAddr> {
    match ip {
        IpAddr::V4(a) => u32::try_from(u32::from(a) as u128 + n)
            .ok()
            .map(|x| IpAddr::V4(x.into())),
        IpAddr::V6(a) => u128::from(a).checked_add(n).map(|x| IpAddr::V6(x.into())),
    }
}
