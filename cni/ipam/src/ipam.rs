//! [`Ipam`]: the state machine ([`Engine`]) on a [`Store`] with a [`Clock`] — the
//! [`Allocator`] berth-cni and berth-ipam use, plus the admin calls behind `berthctl ipam`.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rand::Rng;

use crate::allocator::{AllocateRequest, Allocation, Allocator, Attachment, GcReport};
use crate::clock::{Clock, SystemClock};
use crate::config::{IpamConfig, StoreConfig};
use crate::error::IpamError;
use crate::logic::Engine;
use crate::node::NodeInfo;
use crate::state::{Event, HistoryQuery, Lease, Sticky};
use crate::store::etcd::{EtcdStore, Security};
use crate::store::local::LocalStore;
use crate::store::memory::MemoryStore;
use crate::store::{HistoryLimits, Store};

/// Lease changes per GC transaction.
const GC_BATCH: usize = 25;

/// Opens the allocator a network config's `ipam` object describes (store, node, pools).
pub fn open(config: &IpamConfig) -> Result<Box<dyn Allocator>, IpamError> {
    Ok(Box::new(Ipam::open(config)?))
}

/// The store a config names.
pub fn open_store(config: &IpamConfig) -> Result<Arc<dyn Store>, IpamError> {
    let limits = HistoryLimits::from_config(&config.history);
    Ok(match &config.store {
        StoreConfig::Local { dir } => Arc::new(LocalStore::new(dir.clone(), limits)),
        StoreConfig::Etcd {
            endpoints,
            prefix,
            timeout,
            tls,
            auth,
            block_addresses,
        } => {
            config.store.validate()?;
            let security = Security::load(tls.as_ref(), auth.as_ref())?;
            let store = EtcdStore::connect_with(endpoints, prefix, *timeout, security, limits)?;
            Arc::new(match block_addresses {
                Some(n) => store.with_block_addresses(*n)?,
                None => store,
            })
        }
    })
}

/// An operator reservation (`berthctl ipam reserve`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reservation {
    /// Reserve for this pod (namespace, name); `None`: for nobody (blocked).
    pub pod: Option<(String, String)>,
    /// Only for this interface of the pod.
    pub ifname: Option<String>,
    pub until: Option<DateTime<Utc>>,
    pub note: Option<String>,
}

/// Fixed-IP IPAM over one store.
pub struct Ipam {
    engine: Engine,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Ipam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ipam")
            .field("engine", &self.engine)
            .finish()
    }
}

impl Ipam {
    /// From config: node info from the node config, the store the config names, system clock.
    pub fn open(config: &IpamConfig) -> Result<Ipam, IpamError> {
        let node = NodeInfo::load(config)?;
        let store = open_store(config)?;
        Ipam::new(config, node, store, Arc::new(SystemClock))
    }

    /// With every seam passed in (tests, the agent).
    pub fn new(
        config: &IpamConfig,
        node: NodeInfo,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> Result<Ipam, IpamError> {
        let dur = |d: std::time::Duration, what: &str| {
            chrono::Duration::from_std(d)
                .map_err(|_| IpamError::InvalidConfig(format!("{what} is too long")))
        };
        Ok(Ipam {
            engine: Engine {
                pools: config.pools()?,
                node,
                hold: dur(config.hold, "hold")?,
                sticky_default: config.sticky,
                max_skew: dur(config.max_clock_skew, "maxClockSkew")?,
            },
            store,
            clock,
        })
    }

    /// An in-memory IPAM for tests of code built on it.
    pub fn in_memory(
        config: &IpamConfig,
        node: NodeInfo,
        clock: Arc<dyn Clock>,
    ) -> Result<Ipam, IpamError> {
        let store = Arc::new(MemoryStore::new(HistoryLimits::from_config(
            &config.history,
        )));
        Ipam::new(config, node, store, clock)
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    fn start(&self) -> u128 {
        if self.store.spreads() {
            rand::rng().random::<u64>() as u128
        } else {
            0
        }
    }

    /// Every lease of a network (`berthctl ipam list`).
    pub fn list(&self, network: &str) -> Result<Vec<Lease>, IpamError> {
        Ok(self.store.read(network)?.into_values().collect())
    }

    /// The lease of one address (`berthctl ipam show`).
    pub fn show(&self, network: &str, ip: IpAddr) -> Result<Option<Lease>, IpamError> {
        Ok(self.store.read(network)?.remove(&ip))
    }

    /// The networks the store knows.
    pub fn networks(&self) -> Result<Vec<String>, IpamError> {
        self.store.networks()
    }

    /// History of an address, a pod or a sandbox, oldest first (`berthctl ipam history`).
    pub fn history(&self, network: &str, query: &HistoryQuery) -> Result<Vec<Event>, IpamError> {
        let mut events: Vec<Event> = self
            .store
            .history(network)?
            .into_iter()
            .filter(|e| query.matches(e))
            .collect();
        if let Some(limit) = query.limit
            && events.len() > limit
        {
            events.drain(..events.len() - limit);
        }
        Ok(events)
    }

    /// Reserves an address for a pod or for nobody (`berthctl ipam reserve`).
    pub fn reserve(&self, network: &str, ip: IpAddr, r: &Reservation) -> Result<Lease, IpamError> {
        let now = self.clock.now();
        let sticky = r.pod.as_ref().map(|(ns, name)| Sticky {
            namespace: ns.clone(),
            name: name.clone(),
            ifname: r.ifname.clone(),
        });
        let mut out = None;
        self.store.transact(network, &mut |leases| {
            self.engine.check_skew(leases, now)?;
            let all = leases.all()?;
            let plan =
                self.engine
                    .reserve(&all, ip, sticky.clone(), r.until, r.note.clone(), now)?;
            out = plan.puts.first().cloned();
            Ok(plan)
        })?;
        Ok(out.expect("a reservation plan puts its lease"))
    }

    /// Frees an address whatever it is doing (`berthctl ipam release`); returns what it was.
    pub fn release_ip(&self, network: &str, ip: IpAddr) -> Result<Option<Lease>, IpamError> {
        let now = self.clock.now();
        let mut was = None;
        self.store.transact(network, &mut |leases| {
            let all = leases.all()?;
            was = all.get(&ip).cloned();
            Ok(self.engine.free(&all, ip, now))
        })?;
        Ok(was)
    }

    /// Reconciles a network with the sandboxes the runtime still has: allocations of other
    /// sandboxes are released; expired holds are dropped.
    pub fn reconcile(
        &self,
        network: &str,
        live_sandboxes: &[String],
    ) -> Result<GcReport, IpamError> {
        let live: HashSet<&str> = live_sandboxes.iter().map(String::as_str).collect();
        self.gc_with(network, &|l| {
            l.attachment().is_some_and(|(c, _)| live.contains(c))
        })
    }

    /// Collects the allocations a node agent knows to be leaked: of sandboxes `is_live` says
    /// the runtime does not have, allocated longer than `grace` ago (an ADD still in flight is
    /// younger: its sandbox reaches the agent only after the ADD returns), and, when
    /// `this_node_only`, written by this node (an etcd store holds every node's leases).
    /// A collected sticky allocation goes into its hold. With `dry_run`, nothing is written
    /// and the report says what would be collected.
    pub fn collect_leaked(
        &self,
        network: &str,
        is_live: &dyn Fn(&str) -> bool,
        grace: std::time::Duration,
        this_node_only: bool,
        dry_run: bool,
    ) -> Result<GcReport, IpamError> {
        let grace = chrono::Duration::from_std(grace)
            .map_err(|_| IpamError::InvalidConfig("the GC grace is too long".into()))?;
        let node = self.engine.node.node.clone();
        let settled_before = self.clock.now() - grace;
        let keep = |l: &Lease| {
            let Some((sandbox, _)) = l.attachment() else {
                return true;
            };
            is_live(sandbox) || l.since > settled_before || (this_node_only && l.node != node)
        };
        if dry_run {
            let leases = self.store.read(network)?;
            let mut report = self.engine.gc(&leases, &keep, self.clock.now()).report;
            // Expired holds are no leak: a dry run reports allocations only.
            report.released = report.collected.iter().map(|l| l.ip).collect();
            return Ok(report);
        }
        self.gc_with(network, &keep)
    }

    fn gc_with(&self, network: &str, keep: &dyn Fn(&Lease) -> bool) -> Result<GcReport, IpamError> {
        let now = self.clock.now();
        let mut report = GcReport::default();
        // Bounded batches: etcd refuses transactions over 128 operations. Each release is
        // independent, so a GC may commit in several steps; it loops until nothing is left.
        loop {
            let mut cut = false;
            let mut batch = GcReport::default();
            self.store.transact(network, &mut |leases| {
                self.engine.check_skew(leases, now)?;
                let mut r = self.engine.gc(&leases.all()?, keep, now);
                cut = r.plan.truncate_changes(GC_BATCH);
                let kept: HashSet<IpAddr> = r
                    .plan
                    .puts
                    .iter()
                    .map(|l| l.ip)
                    .chain(r.plan.deletes.iter().copied())
                    .collect();
                r.report.released.retain(|ip| kept.contains(ip));
                r.report.collected.retain(|l| kept.contains(&l.ip));
                batch = r.report;
                Ok(r.plan)
            })?;
            report.released.extend(batch.released);
            report.collected.extend(batch.collected);
            if !cut {
                // What GC freed may have emptied blocks; giving them back is best effort and
                // retried by the next GC, so its failure does not fail this one.
                let _ = self.store.tidy(network, now);
                return Ok(report);
            }
        }
    }
}

impl Allocator for Ipam {
    fn allocate(&self, request: &AllocateRequest) -> Result<Vec<Allocation>, IpamError> {
        let now = self.clock.now();
        let start = self.start();
        let mut out = None;
        let node = &self.engine.node.node;
        self.store
            .transact_on(node, &request.network, &mut |leases| {
                let (plan, alloc) = self.engine.allocate(leases, request, now, start)?;
                out = Some(alloc);
                Ok(plan)
            })?;
        Ok(out.expect("allocate decided"))
    }

    fn release(&self, network: &str, container_id: &str, ifname: &str) -> Result<(), IpamError> {
        let now = self.clock.now();
        self.store
            .transact_on(&self.engine.node.node, network, &mut |leases| {
                self.engine.release(leases, container_id, ifname, now)
            })
    }

    fn lookup(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<Vec<Allocation>, IpamError> {
        // By address, so IPv4 comes first.
        let mut leases =
            self.store
                .attached_on(&self.engine.node.node, network, container_id, ifname)?;
        leases.sort_by_key(|l| l.ip);
        leases
            .iter()
            .map(|l| self.engine.allocation_of(l))
            .collect()
    }

    fn gc(&self, network: &str, valid: &[Attachment]) -> Result<GcReport, IpamError> {
        let valid: HashSet<(&str, &str)> = valid
            .iter()
            .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
            .collect();
        self.gc_with(network, &|l| {
            l.attachment().is_some_and(|a| valid.contains(&a))
        })
    }

    fn status(&self) -> Result<(), IpamError> {
        self.store.status()
    }
}
