//! The view of a network that an ADD, DEL or CHECK on one node decides from: it reads lazily
//! what the decision asks, never the whole network.
//!
//! - the lease of an attachment: its `attachments/` key, then the lease it names;
//! - a pod's sticky leases: its `sticky/<ns>/<name>/` index keys, then those leases;
//! - a free address of a pool: this node's blocks of the pool (`nodes/<node>/`), then the
//!   leases of one block at a time, searched from a random point.
//!
//! So an ADD costs the same handful of requests whether the network holds ten leases or a
//! hundred thousand. When the view cannot answer — the node's blocks are full, a full pool
//! must give up its oldest hold, the sticky index is not built yet — it asks its store to
//! [widen](Widen) (claim a block, or read the whole network) and the decision is made again.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use etcd_client::{GetOptions, TxnOp};

use super::EtcdStore;
use super::commit::Read;
use super::keys::{Keys, LAYOUT_INDEXED};
use crate::error::IpamError;
use crate::pool::Pool;
use crate::state::{Lease, Leases, Sticky};
use crate::view::LeaseView;

/// What the store must do before the decision is asked again.
#[derive(Debug)]
pub(super) enum Widen {
    /// This node has no free address left in its blocks of the pool: claim another block.
    Claim(Pool),
    /// Decide from the whole network.
    Everything,
}

pub(super) struct NodeView<'s> {
    store: &'s EtcdStore,
    keys: Keys,
    node: &'s str,
    /// Every lease key read so far.
    read: RefCell<Read>,
    /// This node's blocks, by pool, once read.
    blocks: RefCell<Option<BTreeMap<String, Vec<IpAddr>>>>,
    widen: RefCell<Option<Widen>>,
    /// An error met where the trait cannot return one ([`LeaseView::taken`]).
    failure: RefCell<Option<IpamError>>,
}

impl<'s> NodeView<'s> {
    pub fn new(store: &'s EtcdStore, network: &str, node: &'s str) -> NodeView<'s> {
        NodeView {
            store,
            keys: store.keys(network),
            node,
            read: RefCell::default(),
            blocks: RefCell::default(),
            widen: RefCell::default(),
            failure: RefCell::default(),
        }
    }

    /// What the store must do first, if the decision could not be made from this view.
    pub fn take_widen(&self) -> Option<Widen> {
        self.widen.take()
    }

    pub fn take_failure(&self) -> Option<IpamError> {
        self.failure.take()
    }

    /// What this view read of `ip`, if it read it.
    pub fn read_of(&self, ip: IpAddr) -> Option<(Option<Lease>, i64)> {
        self.read.borrow().get(&ip).cloned()
    }

    /// Asks the store to widen; the error only unwinds the decision (the store looks at the
    /// request first and never returns it).
    fn widen(&self, w: Widen) -> IpamError {
        self.widen.borrow_mut().get_or_insert(w);
        IpamError::Unavailable("etcd: the decision needs a wider view; retry".into())
    }

    /// Reads the leases of `ips` that were not read yet, in one request.
    fn load(&self, ips: &[IpAddr]) -> Result<(), IpamError> {
        let missing: Vec<IpAddr> = {
            let read = self.read.borrow();
            ips.iter()
                .copied()
                .filter(|ip| !read.contains_key(ip))
                .collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = missing.iter().map(|ip| self.keys.lease(*ip)).collect();
        let values = self.store.get_keys("read", &keys)?;
        let mut read = self.read.borrow_mut();
        for ((ip, key), value) in missing.into_iter().zip(&keys).zip(values) {
            let entry = match value {
                None => (None, 0),
                Some((v, rev)) => (Some(super::decode_lease(key, &v, &self.keys)?), rev),
            };
            read.insert(ip, entry);
        }
        Ok(())
    }

    fn lease(&self, ip: IpAddr) -> Option<Lease> {
        self.read.borrow().get(&ip).and_then(|(l, _)| l.clone())
    }

    /// The read of this node's block list (small: keys only), to send with another read.
    fn node_blocks_read(&self) -> TxnOp {
        TxnOp::get(
            self.keys.node_blocks(self.node),
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_keys_only()
                    .with_serializable(),
            ),
        )
    }

    fn keep_node_blocks(&self, resp: &etcd_client::GetResponse) {
        let mut by_pool: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        for kv in resp.kvs() {
            if let Some((p, first)) = self.keys.node_block_of(self.node, kv.key()) {
                by_pool.entry(p).or_default().push(first);
            }
        }
        *self.blocks.borrow_mut() = Some(by_pool);
    }

    /// This node's blocks of `pool`, read once per view.
    fn node_blocks(&self, pool: &str) -> Result<Vec<IpAddr>, IpamError> {
        if self.blocks.borrow().is_none() {
            let answers = self
                .store
                .read_together("read", vec![self.node_blocks_read()])?;
            if let Some(resp) = answers.first() {
                self.keep_node_blocks(resp);
            }
        }
        Ok(self
            .blocks
            .borrow()
            .as_ref()
            .and_then(|b| b.get(pool).cloned())
            .unwrap_or_default())
    }
}

impl LeaseView for NodeView<'_> {
    fn get(&self, ip: IpAddr) -> Result<Option<Lease>, IpamError> {
        self.load(&[ip])?;
        Ok(self.lease(ip))
    }

    fn attached(&self, container_id: &str, ifname: &str) -> Result<Vec<Lease>, IpamError> {
        let guards = self.keys.attachments((container_id, ifname));
        // Every ADD asks this first, and a new pod's ADD then needs this node's blocks: one
        // request reads both families' keys and the block list.
        let mut reads: Vec<TxnOp> = guards
            .iter()
            .map(|k| TxnOp::get(k.clone(), Some(GetOptions::new().with_serializable())))
            .collect();
        let with_blocks = self.blocks.borrow().is_none();
        if with_blocks {
            reads.push(self.node_blocks_read());
        }
        let answers = self.store.read_together("read", reads)?;
        if with_blocks && let Some(resp) = answers.get(2) {
            self.keep_node_blocks(resp);
        }
        let mut named: Vec<(String, IpAddr)> = Vec::new();
        for (key, answer) in guards.iter().zip(&answers) {
            let Some(kv) = answer.kvs().first() else {
                continue;
            };
            let ip: IpAddr = std::str::from_utf8(kv.value())
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| IpamError::CorruptStore {
                    path: key.clone().into(),
                    reason: "etcd value is not an address".into(),
                })?;
            // Before dual-stack, the IPv4 key also guarded an IPv6-only attachment.
            if !named.iter().any(|(_, seen)| *seen == ip) {
                named.push((key.clone(), ip));
            }
        }
        let ips: Vec<IpAddr> = named.iter().map(|(_, ip)| *ip).collect();
        self.load(&ips)?;
        let mut out = Vec::new();
        for (key, ip) in named {
            match self.lease(ip) {
                Some(l) if l.attachment() == Some((container_id, ifname)) => out.push(l),
                _ => {
                    return Err(IpamError::CorruptStore {
                        path: key.into(),
                        reason: format!(
                            "names {ip}, whose lease is not this attachment's: free the address (berthctl ipam release) and delete the key"
                        ),
                    });
                }
            }
        }
        out.sort_by_key(|l| l.ip);
        Ok(out)
    }

    fn stuck_to(&self, sticky: &Sticky) -> Result<Vec<Lease>, IpamError> {
        let prefix = self.keys.sticky_prefix(&sticky.namespace, &sticky.name);
        let answers = self.store.read_together(
            "read",
            vec![
                TxnOp::get(
                    self.keys.layout(),
                    Some(GetOptions::new().with_serializable()),
                ),
                TxnOp::get(
                    prefix,
                    Some(
                        GetOptions::new()
                            .with_prefix()
                            .with_keys_only()
                            .with_serializable(),
                    ),
                ),
            ],
        )?;
        let indexed = answers
            .first()
            .and_then(|g| g.kvs().first())
            .is_some_and(|kv| kv.value() == LAYOUT_INDEXED.as_bytes());
        if !indexed {
            // A network of the first etcd store, before its migration.
            return Err(self.widen(Widen::Everything));
        }
        let ips: Vec<IpAddr> = answers
            .get(1)
            .map(|g| {
                g.kvs()
                    .iter()
                    .filter_map(|kv| Keys::trailing_ip(kv.key()))
                    .collect()
            })
            .unwrap_or_default();
        self.load(&ips)?;
        // The index names candidates; the leases decide.
        Ok(ips
            .iter()
            .filter_map(|ip| self.lease(*ip))
            .filter(|l| l.sticky.as_ref().is_some_and(|s| s.matches(sticky)))
            .collect())
    }

    fn taken(&self, ip: IpAddr, now: DateTime<Utc>) -> bool {
        if let Err(e) = self.load(&[ip]) {
            self.failure.borrow_mut().get_or_insert(e);
            return true;
        }
        self.lease(ip).is_some_and(|l| !l.expired(now))
    }

    fn find_free(
        &self,
        pool: &Pool,
        start: u128,
        now: DateTime<Utc>,
    ) -> Result<Option<IpAddr>, IpamError> {
        let blocks = self.node_blocks(&pool.name)?;
        let size = self.store.block_addresses;
        let n = blocks.len() as u128;
        // A random block first, then the others; inside a block from a random address, so
        // the node's concurrent ADDs rarely race for one address.
        for k in 0..n {
            let block = blocks[((start + k) % n.max(1)) as usize];
            let usable = pool.usable_in_block(block, size, start / n.max(1));
            self.load(&usable)?;
            if let Some(ip) = usable
                .into_iter()
                .find(|ip| self.lease(*ip).is_none_or(|l: Lease| l.expired(now)))
            {
                return Ok(Some(ip));
            }
        }
        Err(self.widen(Widen::Claim(pool.clone())))
    }

    fn oldest_reclaimable(
        &self,
        _pool: &str,
        _usable: &dyn Fn(IpAddr) -> bool,
    ) -> Result<Option<Lease>, IpamError> {
        // The pool is full: its oldest hold, wherever it lies, is reclaimed.
        Err(self.widen(Widen::Everything))
    }

    fn newest_after(&self, t: DateTime<Utc>) -> Result<Option<Lease>, IpamError> {
        Ok(self
            .read
            .borrow()
            .values()
            .filter_map(|(l, _)| l.as_ref())
            .max_by_key(|l| l.since)
            .filter(|l| l.since > t)
            .cloned())
    }

    fn all(&self) -> Result<Leases, IpamError> {
        Err(self.widen(Widen::Everything))
    }
}
