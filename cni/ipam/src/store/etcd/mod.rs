//! The cluster-wide store on etcd v3. Key layout: `keys.rs`.
//!
//! A decision about one pod on one node (ADD, DEL, CHECK: [`Store::transact_on`]) reads lazily
//! only what it asks (`view.rs`): the attachment's lease, the pod's sticky leases through their
//! index, and free addresses in this node's blocks (`blocks.rs`). Other decisions (GC,
//! reservations, listings, and an ADD that must borrow or reclaim) read the network's leases in
//! one range read. Either way the commit is one etcd `Txn` (`commit.rs`) that compares every
//! touched lease key's `mod_revision` with what was read (version 0 for "absent") and every
//! new attachment key's absence. If any compare fails, nothing is written and the decision is
//! made again. So two nodes never take the same address, and a timeout leaves nothing half
//! written: a Txn is all or nothing.
//!
//! Connections: `https://` endpoints use rustls with the CA (and client certificate) of
//! `store.tls`; `store.auth` logs in as an etcd user. The store talks to one endpoint at a
//! time, in the configured order, and moves to the next when one cannot be reached or stops
//! answering, all within `store.timeout` per call. Because every commit compares revisions,
//! re-sending a commit whose answer was lost is safe: if the first one landed, the compare
//! fails, the decision is made again on the new state, and ADD is idempotent.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions, Txn, TxnOp};
use rand::Rng;
use tokio::time::Instant;

mod blocks;
mod commit;
mod failure;
mod keys;
mod migrate;
mod security;
mod view;

pub use blocks::BlockClaim;
pub use security::{Security, check_endpoints};

use super::{HistoryLimits, Store, check_network_name};
use crate::error::IpamError;
use crate::state::{Event, Lease, Leases};
use crate::view::LeaseView;
use failure::{Failure, unavailable};

/// How often a transaction is retried after losing a compare-and-swap race.
const MAX_ATTEMPTS: u32 = 64;

/// A value read from etcd and its key's mod revision.
type Versioned = (Vec<u8>, i64);

/// Addresses per node-affine block: a /26 of IPv4, a /122 of IPv6.
pub const DEFAULT_BLOCK_ADDRESSES: u32 = 64;

/// Blocks one transaction may claim before it widens to the whole network.
const MAX_CLAIMS: u32 = 4;

/// etcd's default `--max-txn-ops`: reads are sent in transactions of at most this many.
const MAX_TXN_OPS: usize = 128;

/// etcd-backed store. Owns a private single-threaded tokio runtime so the synchronous
/// [`Store`] API can be called from plain threads and from inside other runtimes alike.
pub struct EtcdStore {
    rt: tokio::runtime::Runtime,
    endpoints: Vec<String>,
    security: Security,
    /// The endpoint in use (its index) and its client; `None` until the first call, and after
    /// the endpoint failed.
    conn: Mutex<Option<(usize, Client)>>,
    prefix: String,
    timeout: Duration,
    limits: HistoryLimits,
    /// Addresses per node-affine block ([`DEFAULT_BLOCK_ADDRESSES`] unless configured).
    block_addresses: u128,
    /// Requests sent to etcd so far (each attempt counts): what one ADD costs is measured
    /// with this, by the tests and the benchmark.
    round_trips: AtomicU64,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .field("security", &self.security)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl EtcdStore {
    /// Plain `http://` endpoints without authentication. Connects lazily: an unreachable
    /// etcd makes the first operation fail with `Unavailable`.
    pub fn connect(
        endpoints: &[String],
        prefix: &str,
        timeout: Duration,
        limits: HistoryLimits,
    ) -> Result<EtcdStore, IpamError> {
        EtcdStore::connect_with(endpoints, prefix, timeout, Security::none(), limits)
    }

    /// Any endpoints, with the TLS material and credentials of [`Security::load`]. Connects
    /// lazily, to the first endpoint that answers.
    pub fn connect_with(
        endpoints: &[String],
        prefix: &str,
        timeout: Duration,
        security: Security,
        limits: HistoryLimits,
    ) -> Result<EtcdStore, IpamError> {
        check_endpoints(endpoints, security.tls.is_some())?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| IpamError::Io {
                path: "tokio runtime".into(),
                source,
            })?;
        let https = security.tls.is_some();
        let endpoints = endpoints
            .iter()
            .map(|e| {
                if e.contains("://") {
                    e.clone()
                } else if https {
                    format!("https://{e}")
                } else {
                    format!("http://{e}")
                }
            })
            .collect();
        Ok(EtcdStore {
            rt,
            endpoints,
            security,
            conn: Mutex::new(None),
            prefix: prefix.trim_end_matches('/').to_string(),
            timeout,
            limits,
            block_addresses: DEFAULT_BLOCK_ADDRESSES as u128,
            round_trips: AtomicU64::new(0),
        })
    }

    /// Sets the addresses per node-affine block (a power of two, 4 to 64; see
    /// [`crate::config::StoreConfig`]).
    pub fn with_block_addresses(mut self, n: u32) -> Result<EtcdStore, IpamError> {
        check_block_addresses(n)?;
        self.block_addresses = n as u128;
        Ok(self)
    }

    /// Requests sent to etcd since the store was opened.
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    fn keys(&self, network: &str) -> keys::Keys {
        keys::Keys::new(&self.prefix, network)
    }

    fn key(&self, network: &str, rest: &str) -> String {
        format!("{}/{network}/{rest}", self.prefix)
    }

    /// Opens a connection to one endpoint: TCP, TLS handshake, HTTP/2, then the login.
    async fn open(&self, endpoint: &str, budget: Duration) -> Result<Client, Failure> {
        let fail = |e: &(dyn std::error::Error + 'static)| self.failure(endpoint, e, true);
        let mut ep = tonic::transport::Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| fail(&e))?
            .connect_timeout(budget)
            .keep_alive_while_idle(false);
        if let Some(tls) = &self.security.tls {
            let mut cfg = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&tls.ca))
                .assume_http2(true);
            if let Some((_, cert, key)) = &tls.identity {
                cfg = cfg.identity(tonic::transport::Identity::from_pem(cert, key));
            }
            ep = ep.tls_config(cfg).map_err(|e| fail(&e))?;
        }
        let channel = match tokio::time::timeout(budget, ep.connect()).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(fail(&e)),
            Err(_) => return Err(self.no_answer(endpoint, budget)),
        };
        let mut opts = ConnectOptions::new();
        if let Some((user, password)) = &self.security.user {
            opts = opts.with_user(user.clone(), password.clone());
        }
        let login = Client::from_channel(etcd_client::Channel::Tonic(channel), Some(opts));
        match tokio::time::timeout(budget, login).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(fail(&e)),
            Err(_) => Err(self.no_answer(endpoint, budget)),
        }
    }

    fn no_answer(&self, endpoint: &str, budget: Duration) -> Failure {
        let ms = Duration::from_millis(budget.as_millis() as u64);
        Failure {
            endpoint: endpoint.to_string(),
            cause: format!("no answer within {ms:?}"),
            fail_over: true,
            relogin: false,
        }
    }

    /// One range read of the keys under `prefix` (`opts` adds the prefix flag), through
    /// [`Self::run`]'s failover.
    fn get_prefix(
        &self,
        what: &str,
        prefix: &str,
        opts: GetOptions,
    ) -> Result<etcd_client::GetResponse, IpamError> {
        self.run(what, |c| {
            let (prefix, opts) = (prefix.to_string(), opts.clone().with_prefix());
            async move { c.kv_client().get(prefix, Some(opts)).await }
        })
    }

    /// Several reads in one request (a transaction without compares, so they see one
    /// revision): their answers, in order.
    fn read_together(
        &self,
        what: &str,
        reads: Vec<TxnOp>,
    ) -> Result<Vec<etcd_client::GetResponse>, IpamError> {
        let txn = Txn::new().and_then(reads);
        let resp = self.run(what, |c| {
            let txn = txn.clone();
            async move { c.kv_client().txn(txn).await }
        })?;
        Ok(resp
            .op_responses()
            .into_iter()
            .filter_map(|r| match r {
                etcd_client::TxnOpResponse::Get(g) => Some(g),
                _ => None,
            })
            .collect())
    }

    /// The values and mod revisions of `keys` (`None`: absent), read [`MAX_TXN_OPS`] at a
    /// time.
    fn get_keys(&self, what: &str, keys: &[String]) -> Result<Vec<Option<Versioned>>, IpamError> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(MAX_TXN_OPS) {
            let reads = chunk
                .iter()
                .map(|k| TxnOp::get(k.clone(), Some(GetOptions::new().with_serializable())))
                .collect();
            for g in self.read_together(what, reads)? {
                out.push(
                    g.kvs()
                        .first()
                        .map(|kv| (kv.value().to_vec(), kv.mod_revision())),
                );
            }
        }
        Ok(out)
    }

    /// Runs one request on the endpoint in use, moving on to the next endpoints when it fails
    /// for reasons another endpoint may not share, all within `store.timeout`.
    fn run<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, IpamError>
    where
        T: Send,
        F: FnMut(Client) -> Fut + Send,
        Fut: Future<Output = Result<T, etcd_client::Error>> + Send,
    {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let timeout = self.timeout;
        let n = self.endpoints.len();
        block_on(&self.rt, async move {
            let deadline = Instant::now() + timeout;
            let mut failures: Vec<Failure> = Vec::new();
            let current = self.conn.lock().expect("etcd conn lock").clone();
            let start = current.as_ref().map_or(0, |(i, _)| *i);
            let mut current = current.map(|(_, c)| c);
            let mut relogged = false;
            let mut tried = 0;
            while tried < n {
                let index = (start + tried) % n;
                let endpoint = &self.endpoints[index];
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                // The endpoints not tried yet share what is left of the timeout.
                let budget = left / (n - tried) as u32;
                let attempt = async {
                    let (client, fresh) = match current.take() {
                        Some(c) => (c, false),
                        None => (self.open(endpoint, budget).await?, true),
                    };
                    *self.conn.lock().expect("etcd conn lock") = Some((index, client.clone()));
                    op(client)
                        .await
                        .map_err(|e| self.failure(endpoint, &e, fresh))
                };
                let result = match tokio::time::timeout(budget, attempt).await {
                    Ok(r) => r,
                    Err(_) => Err(self.no_answer(endpoint, budget)),
                };
                match result {
                    Ok(v) => return Ok(v),
                    Err(f) => {
                        if f.fail_over || f.relogin {
                            // Broken, or its login expired: the next request opens a new one.
                            *self.conn.lock().expect("etcd conn lock") = None;
                        }
                        if f.relogin && !relogged {
                            // Same endpoint, new connection and token.
                            relogged = true;
                            continue;
                        }
                        let fail_over = f.fail_over;
                        failures.push(f);
                        if !fail_over {
                            break;
                        }
                        tried += 1;
                    }
                }
            }
            Err(unavailable(what, timeout, n, failures))
        })
    }

    /// Leases with their mod revisions.
    fn snapshot(&self, network: &str) -> Result<(Leases, BTreeMap<IpAddr, i64>), IpamError> {
        let keys = self.keys(network);
        // A serializable (local) read is enough: the commit compares every touched key's
        // revision, so a stale snapshot only costs a retry, never a wrong commit.
        let resp = self.get_prefix(
            "read",
            &keys.leases(),
            GetOptions::new().with_serializable(),
        )?;
        let mut leases = Leases::new();
        let mut revs = BTreeMap::new();
        for item in resp.kvs() {
            let key = String::from_utf8_lossy(item.key()).into_owned();
            let lease = decode_lease(&key, item.value(), &keys)?;
            revs.insert(lease.ip, item.mod_revision());
            leases.insert(lease.ip, lease);
        }
        Ok((leases, revs))
    }

    /// One decision from the whole network. `Ok(false)`: lost a race, decide again.
    fn decide_from_everything(
        &self,
        network: &str,
        decide: &mut super::Decide<'_>,
    ) -> Result<bool, IpamError> {
        let (leases, revs) = self.snapshot(network)?;
        let plan = decide(&leases)?;
        if plan.is_empty() {
            return Ok(true);
        }
        let read = |ip: IpAddr| {
            Some((
                leases.get(&ip).cloned(),
                revs.get(&ip).copied().unwrap_or(0),
            ))
        };
        self.commit(network, &read, &plan)
    }

    fn prune_history(
        &self,
        network: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), IpamError> {
        let cutoff = now - self.limits.max_age;
        let start = self.key(network, "history/");
        let end = self.key(network, &format!("history/{:020}", nanos(cutoff)));
        self.run("prune history", |c| {
            let (start, end) = (start.clone(), end.clone());
            async move {
                c.kv_client()
                    .delete(
                        start,
                        Some(etcd_client::DeleteOptions::new().with_range(end)),
                    )
                    .await
            }
        })?;
        // Count bound: drop the oldest beyond max_events.
        let prefix = self.key(network, "history/");
        let resp = self.get_prefix("count history", &prefix, GetOptions::new().with_keys_only())?;
        let keys = resp.kvs();
        if keys.len() > self.limits.max_events {
            let last_dropped = keys[keys.len() - self.limits.max_events - 1].key().to_vec();
            let mut end = last_dropped;
            end.push(0);
            self.run("prune history", |c| {
                let (prefix, end) = (prefix.clone(), end.clone());
                async move {
                    c.kv_client()
                        .delete(
                            prefix,
                            Some(etcd_client::DeleteOptions::new().with_range(end)),
                        )
                        .await
                }
            })?;
        }
        Ok(())
    }
}

fn nanos(t: chrono::DateTime<chrono::Utc>) -> u64 {
    t.timestamp_nanos_opt().unwrap_or(0).max(0) as u64
}

/// Checks `store.blockAddresses`.
pub fn check_block_addresses(n: u32) -> Result<(), IpamError> {
    if (4..=64).contains(&n) && n.is_power_of_two() {
        Ok(())
    } else {
        Err(IpamError::InvalidConfig(format!(
            "store.blockAddresses {n}: use a power of two from 4 to 64 (64 is a /26 of IPv4 or a /122 of IPv6; a block is given back with one transaction that checks each of its addresses, and etcd allows 128 checks)"
        )))
    }
}

/// A lease read from `key`; refused (naming the key) unless it is a lease of that key's address.
fn decode_lease(key: &str, value: &[u8], keys: &keys::Keys) -> Result<Lease, IpamError> {
    let lease: Lease = serde_json::from_slice(value).map_err(|e| IpamError::CorruptStore {
        path: key.into(),
        reason: format!("etcd value is not a lease: {e}"),
    })?;
    if key != keys.lease(lease.ip) {
        return Err(IpamError::CorruptStore {
            path: key.into(),
            reason: format!("holds the lease of {}", lease.ip),
        });
    }
    Ok(lease)
}

fn lost_races(network: &str) -> IpamError {
    IpamError::Unavailable(format!(
        "etcd: lost {MAX_ATTEMPTS} compare-and-swap races in a row on network {network:?}; retry"
    ))
}

/// Random sleeps that grow after each lost race, up to 50 ms.
struct Backoff {
    max_ms: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { max_ms: 1 }
    }
}

impl Backoff {
    fn sleep(&mut self) {
        let ms = rand::rng().random_range(0..=self.max_ms);
        std::thread::sleep(Duration::from_millis(ms));
        self.max_ms = (self.max_ms * 2).min(50);
    }
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
        let mut backoff = Backoff::default();
        for _ in 0..MAX_ATTEMPTS {
            if self.decide_from_everything(network, decide)? {
                return Ok(());
            }
            backoff.sleep();
        }
        Err(lost_races(network))
    }

    fn transact_on(
        &self,
        node: &str,
        network: &str,
        decide: &mut super::Decide<'_>,
    ) -> Result<(), IpamError> {
        check_network_name(network)?;
        let mut backoff = Backoff::default();
        let mut everything = false;
        let mut claims = 0;
        for _ in 0..MAX_ATTEMPTS {
            if everything {
                if self.decide_from_everything(network, decide)? {
                    if !self.indexed(network)? {
                        // A network of the first etcd store: index it for the next decisions.
                        self.migrate(network, node)?;
                    }
                    return Ok(());
                }
                backoff.sleep();
                continue;
            }
            let view = view::NodeView::new(self, network, node);
            let decided = decide(&view);
            match view.take_widen() {
                Some(view::Widen::Claim(pool)) if claims < MAX_CLAIMS => {
                    claims += 1;
                    // No block left to claim: decide from the whole pool (borrow).
                    everything = !self.claim_block(network, node, &pool)?;
                    continue;
                }
                Some(_) => {
                    everything = true;
                    continue;
                }
                None => {}
            }
            if let Some(e) = view.take_failure() {
                return Err(e);
            }
            let plan = decided?;
            if plan.is_empty() {
                return Ok(());
            }
            if self.commit(network, &|ip| view.read_of(ip), &plan)? {
                return Ok(());
            }
            backoff.sleep();
        }
        Err(lost_races(network))
    }

    fn tidy(&self, network: &str, now: chrono::DateTime<chrono::Utc>) -> Result<usize, IpamError> {
        check_network_name(network)?;
        self.release_empty_blocks(network, now)
    }

    fn attached_on(
        &self,
        node: &str,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<Vec<Lease>, IpamError> {
        check_network_name(network)?;
        view::NodeView::new(self, network, node).attached(container_id, ifname)
    }

    fn history(&self, network: &str) -> Result<Vec<Event>, IpamError> {
        check_network_name(network)?;
        let prefix = self.key(network, "history/");
        let resp = self.get_prefix("read history", &prefix, GetOptions::new())?;
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
        let resp = self.get_prefix("list", &prefix, GetOptions::new().with_keys_only())?;
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
        self.run("status", |c| async move {
            c.maintenance_client().status().await
        })
        .map(|_| ())
    }

    fn spreads(&self) -> bool {
        true
    }
}
