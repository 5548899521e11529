//! The cluster-wide store on etcd v3.
//!
//! Keys under `<prefix>/<network>/`:
//! - `leases/<ip>`: one lease (JSON);
//! - `attachments/<containerID>/<ifname>`: the address of an attachment, so one attachment
//!   can never hold two addresses even when two writers race;
//! - `history/<unix-nanos>-<random>`: one event (JSON); keys sort by time, so pruning is one
//!   range delete.
//!
//! A transaction reads the network's leases (one range read at revision R), lets the caller
//! decide, then commits in one etcd `Txn` that compares every touched lease key's
//! `mod_revision` with what was read (version 0 for "absent") and every new attachment key's
//! absence. If any compare fails, nothing is written and the decision is retried with a fresh
//! snapshot. So two nodes never take the same address, and a timeout leaves nothing half
//! written: a Txn is all or nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp};
use rand::Rng;

use super::{HistoryLimits, Store, check_network_name};
use crate::error::IpamError;
use crate::state::{Event, Lease, Leases};

/// How often a transaction is retried after losing a compare-and-swap race.
const MAX_ATTEMPTS: u32 = 64;

/// etcd-backed store. Owns a private single-threaded tokio runtime so the synchronous
/// [`Store`] API can be called from plain threads and from inside other runtimes alike.
pub struct EtcdStore {
    rt: tokio::runtime::Runtime,
    client: Client,
    prefix: String,
    timeout: Duration,
    limits: HistoryLimits,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish()
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> IpamError {
    IpamError::Unavailable(format!("etcd {what}: {e}"))
}

impl EtcdStore {
    /// Connects lazily: an unreachable etcd makes the first operation fail with `Unavailable`.
    pub fn connect(
        endpoints: &[String],
        prefix: &str,
        timeout: Duration,
        limits: HistoryLimits,
    ) -> Result<EtcdStore, IpamError> {
        if endpoints.is_empty() {
            return Err(IpamError::InvalidConfig(
                "etcd store needs at least one endpoint".into(),
            ));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| IpamError::Io {
                path: "tokio runtime".into(),
                source,
            })?;
        let opts = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout);
        let eps = endpoints.to_vec();
        let client = block_on(&rt, async move {
            tokio::time::timeout(timeout, Client::connect(eps, Some(opts)))
                .await
                .map_err(|_| unavailable("connect", "timed out"))?
                .map_err(|e| unavailable("connect", e))
        })?;
        Ok(EtcdStore {
            rt,
            client,
            prefix: prefix.trim_end_matches('/').to_string(),
            timeout,
            limits,
        })
    }

    fn key(&self, network: &str, rest: &str) -> String {
        format!("{}/{network}/{rest}", self.prefix)
    }

    fn lease_key(&self, network: &str, ip: IpAddr) -> String {
        self.key(network, &format!("leases/{ip}"))
    }

    fn attachment_key(&self, network: &str, (c, i): (&str, &str)) -> String {
        self.key(network, &format!("attachments/{c}/{i}"))
    }

    fn run<T>(
        &self,
        what: &str,
        fut: impl Future<Output = Result<T, etcd_client::Error>> + Send,
    ) -> Result<T, IpamError>
    where
        T: Send,
    {
        let timeout = self.timeout;
        block_on(&self.rt, async move {
            match tokio::time::timeout(timeout, fut).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(unavailable(what, e)),
                Err(_) => Err(unavailable(what, format!("no answer within {timeout:?}"))),
            }
        })
    }

    /// Leases with their mod revisions.
    fn snapshot(&self, network: &str) -> Result<(Leases, BTreeMap<IpAddr, i64>), IpamError> {
        let prefix = self.key(network, "leases/");
        let mut kv = self.client.kv_client();
        // A serializable (local) read is enough: the commit compares every touched key's
        // revision, so a stale snapshot only costs a retry, never a wrong commit.
        let resp = self.run(
            "read",
            kv.get(
                prefix.clone(),
                Some(GetOptions::new().with_prefix().with_serializable()),
            ),
        )?;
        let mut leases = Leases::new();
        let mut revs = BTreeMap::new();
        for item in resp.kvs() {
            let key = String::from_utf8_lossy(item.key()).into_owned();
            let lease: Lease =
                serde_json::from_slice(item.value()).map_err(|e| IpamError::CorruptStore {
                    path: key.clone().into(),
                    reason: format!("etcd value is not a lease: {e}"),
                })?;
            if key != self.lease_key(network, lease.ip) {
                return Err(IpamError::CorruptStore {
                    path: key.into(),
                    reason: format!("holds the lease of {}", lease.ip),
                });
            }
            revs.insert(lease.ip, item.mod_revision());
            leases.insert(lease.ip, lease);
        }
        Ok((leases, revs))
    }

    fn prune_history(
        &self,
        network: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), IpamError> {
        let cutoff = now - self.limits.max_age;
        let start = self.key(network, "history/");
        let end = self.key(network, &format!("history/{:020}", nanos(cutoff)));
        let mut kv = self.client.kv_client();
        self.run(
            "prune history",
            kv.delete(
                start,
                Some(etcd_client::DeleteOptions::new().with_range(end)),
            ),
        )?;
        // Count bound: drop the oldest beyond max_events.
        let prefix = self.key(network, "history/");
        let resp = self.run(
            "count history",
            kv.get(
                prefix.clone(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            ),
        )?;
        let keys = resp.kvs();
        if keys.len() > self.limits.max_events {
            let last_dropped = keys[keys.len() - self.limits.max_events - 1].key().to_vec();
            let mut end = last_dropped;
            end.push(0);
            self.run(
                "prune history",
                kv.delete(
                    prefix,
                    Some(etcd_client::DeleteOptions::new().with_range(end)),
                ),
            )?;
        }
        Ok(())
    }
}

fn nanos(t: chrono::DateTime<chrono::Utc>) -> u64 {
    t.timestamp_nanos_opt().unwrap_or(0).max(0) as u64
}

/// Runs a future on the store's runtime, from a plain thread or from inside another runtime.
fn block_on<F>(rt: &tokio::runtime::Runtime, fut: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| {
            s.spawn(|| rt.block_on(fut))
                .join()
                .expect("etcd worker thread panicked")
        })
    } else {
        rt.block_on(fut)
    }
}

impl Store for EtcdStore {
    fn read(&self, network: &str) -> Result<Leases, IpamError> {
        check_network_name(network)?;
        Ok(self.snapshot(network)?.0)
    }

    fn transact(&self, network: &str, decide: &mut super::Decide<'_>) -> Result<(), IpamError> {
        check_network_name(network)?;
        let mut backoff_ms = 1u64;
        for _ in 0..MAX_ATTEMPTS {
            let (leases, revs) = self.snapshot(network)?;
            let plan = decide(&leases)?;
            if plan.is_empty() {
                return Ok(());
            }
            let mut compares = Vec::new();
            let mut ops = Vec::new();
            let touched: BTreeSet<IpAddr> = plan
                .puts
                .iter()
                .map(|l| l.ip)
                .chain(plan.deletes.iter().copied())
                .collect();
            for ip in &touched {
                let key = self.lease_key(network, *ip);
                compares.push(match revs.get(ip) {
                    Some(rev) => Compare::mod_revision(key, CompareOp::Equal, *rev),
                    None => Compare::version(key, CompareOp::Equal, 0),
                });
            }
            let mut after = leases.clone();
            plan.apply(&mut after);
            for ip in &touched {
                let old = leases.get(ip).and_then(|l| l.attachment());
                let new = after.get(ip).and_then(|l| l.attachment());
                if old == new {
                    continue;
                }
                if let Some(a) = old {
                    ops.push(TxnOp::delete(self.attachment_key(network, a), None));
                }
                if let Some(a) = new {
                    let key = self.attachment_key(network, a);
                    compares.push(Compare::version(key.clone(), CompareOp::Equal, 0));
                    ops.push(TxnOp::put(key, ip.to_string(), None));
                }
            }
            for ip in &plan.deletes {
                if !after.contains_key(ip) {
                    ops.push(TxnOp::delete(self.lease_key(network, *ip), None));
                }
            }
            for l in &plan.puts {
                let v = serde_json::to_vec(l).expect("leases always serialize");
                ops.push(TxnOp::put(self.lease_key(network, l.ip), v, None));
            }
            let tag: u32 = rand::rng().random();
            for (i, e) in plan.events.iter().enumerate() {
                let k = self.key(
                    network,
                    &format!("history/{:020}-{tag:08x}-{i:04}", nanos(e.time)),
                );
                let v = serde_json::to_vec(e).expect("events always serialize");
                ops.push(TxnOp::put(k, v, None));
            }
            let txn = Txn::new().when(compares).and_then(ops);
            let mut kv = self.client.kv_client();
            let resp = self.run("commit", kv.txn(txn))?;
            if resp.succeeded() {
                // Occasional, bounded pruning keeps history within its limits.
                if rand::rng().random_ratio(1, 200)
                    && let Some(e) = plan.events.last()
                {
                    let _ = self.prune_history(network, e.time);
                }
                return Ok(());
            }
            let sleep = rand::rng().random_range(0..=backoff_ms);
            std::thread::sleep(Duration::from_millis(sleep));
            backoff_ms = (backoff_ms * 2).min(50);
        }
        Err(IpamError::Unavailable(format!(
            "etcd: lost {MAX_ATTEMPTS} compare-and-swap races in a row on network {network:?}; retry"
        )))
    }

    fn history(&self, network: &str) -> Result<Vec<Event>, IpamError> {
        check_network_name(network)?;
        let prefix = self.key(network, "history/");
        let mut kv = self.client.kv_client();
        let resp = self.run(
            "read history",
            kv.get(prefix, Some(GetOptions::new().with_prefix())),
        )?;
        // Commit order (create revision), then the event's index inside its commit.
        let mut items: Vec<&etcd_client::KeyValue> = resp.kvs().iter().collect();
        items.sort_by(|a, b| (a.create_revision(), a.key()).cmp(&(b.create_revision(), b.key())));
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let e: Event =
                serde_json::from_slice(item.value()).map_err(|e| IpamError::CorruptStore {
                    path: String::from_utf8_lossy(item.key()).into_owned().into(),
                    reason: format!("etcd value is not a history event: {e}"),
                })?;
            out.push(e);
        }
        let now = chrono::Utc::now();
        let newest = out.last().map(|e| e.time).unwrap_or(now);
        super::prune(&mut out, &self.limits, now.max(newest));
        Ok(out)
    }

    fn networks(&self) -> Result<Vec<String>, IpamError> {
        let prefix = format!("{}/", self.prefix);
        let mut kv = self.client.kv_client();
        let resp = self.run(
            "list",
            kv.get(
                prefix.clone(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            ),
        )?;
        let mut set = BTreeSet::new();
        for item in resp.kvs() {
            let k = String::from_utf8_lossy(item.key());
            if let Some(rest) = k.strip_prefix(&prefix)
                && let Some((net, _)) = rest.split_once('/')
            {
                set.insert(net.to_string());
            }
        }
        Ok(set.into_iter().collect())
    }

    fn status(&self) -> Result<(), IpamError> {
        let mut m = self.client.maintenance_client();
        self.run("status", m.status()).map(|_| ())
    }

    fn spreads(&self) -> bool {
        true
    }
}
