//! The allocation state machine: pure functions from a snapshot of a network's leases, a
//! request and the time to a [`Plan`] (what to write) and an answer. Stores apply plans
//! atomically; nothing here does I/O, so every rule is unit-tested with an injected time.
//!
//! An interface gets one address per IP family its candidate pools offer (dual-stack: an
//! IPv4 and an IPv6 address; the rules below run once per family, in one transaction).
//!
//! Rules, in order, for ADD:
//! 1. an attachment that already has addresses gets the same ones again (ADD is idempotent);
//! 2. an explicit address (`berth.io/ip`) is given only if its pool serves this node's rack and
//!    nobody else holds it;
//! 3. otherwise the pod's sticky address (held or reserved for its namespace/name) in one of the
//!    candidate pools;
//! 4. otherwise the first free address of the candidate pools, in order;
//! 5. otherwise, in the first candidate pool that has one, the address held longest for
//!    another pod (holds are soft: a full pool reclaims them; reservations and addresses
//!    pinned by `berth.io/ip` are never reclaimed).
//!
//! Candidate pools of a family: the pool of the explicit address, else the `berth.io/pool`
//! annotation, else the plugin's per-interface pools (named pools: at most one per family),
//! else `berth.io/app-pool` (pools named so or labelled `app`),
//! else the node's rack pools, then the pools without racks.

use std::collections::BTreeMap;
use std::net::IpAddr;

use chrono::{DateTime, Utc};

use crate::allocator::{AllocateRequest, Allocation, GcReport};
use crate::config::StickyDefault;
use crate::error::IpamError;
use crate::node::NodeInfo;
use crate::pool::{Family, Pool, Pools, Unusable};
use crate::state::{Event, EventKind, Lease, LeaseState, Leases, Plan, Sticky};
use crate::view::LeaseView;

/// Explicit address: `10.1.2.3`, or per interface `eth0=10.1.2.3,eth1=10.2.0.9`.
pub const ANN_IP: &str = "berth.io/ip";
/// Explicit pool: `pool-a`, or per interface `eth0=pool-a,eth1=pool-b`.
pub const ANN_POOL: &str = "berth.io/pool";
/// Application pool: a pool name or a pool's `app` label, picked by the node's rack.
pub const ANN_APP_POOL: &str = "berth.io/app-pool";
/// Stickiness: `true` (by namespace/name), `false` (none), or an app key shared by re-creations.
pub const ANN_STICKY: &str = "berth.io/sticky";

/// Policy and identity: everything a decision needs besides the snapshot and the time.
#[derive(Clone, Debug)]
pub struct Engine {
    pub pools: Pools,
    pub node: NodeInfo,
    pub hold: chrono::Duration,
    pub sticky_default: StickyDefault,
    pub max_skew: chrono::Duration,
}

/// One IP family's candidate pools for an interface, and its explicit address if any.
type FamilyChoice<'a> = (Vec<&'a Pool>, Option<IpAddr>);

/// A GC decision: what to write, and which allocations it releases.
pub struct Released {
    pub plan: Plan,
    pub report: GcReport,
}

impl Engine {
    /// Decides an ADD: one address per IP family the interface's pools offer (IPv4 first).
    /// `start` spreads concurrent writers over the pool (0: lowest first).
    pub fn allocate(
        &self,
        leases: &dyn LeaseView,
        req: &AllocateRequest,
        now: DateTime<Utc>,
        start: u128,
    ) -> Result<(Plan, Vec<Allocation>), IpamError> {
        for (what, v) in [
            ("network", &req.network),
            ("container id", &req.container_id),
            ("ifname", &req.ifname),
        ] {
            if v.is_empty() {
                return Err(IpamError::InvalidConfig(format!(
                    "the request has an empty {what}"
                )));
            }
        }
        let decided = self.decide_add(leases, req, now, start);
        // After the decision: a store that reads lazily has by now read every lease the
        // decision looked at, which are the ones whose times matter.
        self.check_skew(leases, now)?;
        decided
    }

    fn decide_add(
        &self,
        leases: &dyn LeaseView,
        req: &AllocateRequest,
        now: DateTime<Utc>,
        start: u128,
    ) -> Result<(Plan, Vec<Allocation>), IpamError> {
        let attached = leases.attached(&req.container_id, &req.ifname)?;
        if !attached.is_empty() {
            let mut out = attached
                .iter()
                .map(|l| self.allocation_of(l))
                .collect::<Result<Vec<_>, _>>()?;
            out.sort_by_key(|a| Family::of(a.address.addr()));
            return Ok((Plan::default(), out));
        }
        let sticky = self.sticky_of(req)?;
        let explicit = explicit_ips(req)?;
        let mut plan = Plan::default();
        let mut out = Vec::new();
        for (candidates, ip) in self.families(req, &explicit)? {
            let (p, a) =
                self.allocate_family(leases, req, &candidates, ip, sticky.clone(), now, start)?;
            plan.puts.extend(p.puts);
            plan.deletes.extend(p.deletes);
            plan.events.extend(p.events);
            out.push(a);
        }
        Ok((plan, out))
    }

    /// The candidate pools of each IP family the interface gets an address of, with the
    /// family's explicit address (`berth.io/ip`), IPv4 first.
    fn families(
        &self,
        req: &AllocateRequest,
        explicit: &[IpAddr],
    ) -> Result<Vec<FamilyChoice<'_>>, IpamError> {
        let base = self.candidates(req);
        if let Err(e) = &base
            && explicit.is_empty()
        {
            return Err(clone_err(e));
        }
        let mut out = Vec::new();
        for family in [Family::V4, Family::V6] {
            let ip = explicit
                .iter()
                .copied()
                .find(|ip| Family::of(*ip) == family);
            let chosen: Vec<&Pool> = match &base {
                Ok((pools, _)) => pools
                    .iter()
                    .copied()
                    .filter(|p| p.family() == family)
                    .collect(),
                Err(_) => Vec::new(),
            };
            let named = matches!(&base, Ok((_, true)));
            let candidates = match ip {
                // A pool named for this family (berth.io/pool, the plugin's) must hold the
                // address; otherwise the pool that covers it.
                Some(_) if named && !chosen.is_empty() => chosen,
                Some(ip) => vec![self.covering_pool(ip)?],
                None => chosen,
            };
            if !candidates.is_empty() {
                out.push((candidates, ip));
            }
        }
        Ok(out)
    }

    /// Decides one family's address among `candidates` (all of that family).
    #[allow(clippy::too_many_arguments)]
    fn allocate_family(
        &self,
        leases: &dyn LeaseView,
        req: &AllocateRequest,
        candidates: &[&Pool],
        explicit: Option<IpAddr>,
        sticky: Option<Sticky>,
        now: DateTime<Utc>,
        start: u128,
    ) -> Result<(Plan, Allocation), IpamError> {
        if let Some(ip) = explicit {
            let pool = candidates[0];
            pool.check(ip)
                .map_err(|why| IpamError::AddressUnavailable {
                    address: ip,
                    reason: match why {
                        Unusable::OutsideSubnet => format!(
                            "it is outside pool {:?} ({}); pick an address of that pool",
                            pool.name, pool.subnet
                        ),
                        Unusable::OutsideRanges => format!(
                            "it is outside the ranges of pool {:?}; pick an address inside them",
                            pool.name
                        ),
                        Unusable::Reserved(r) => r.to_string(),
                    },
                })?;
            let previous = leases.get(ip)?;
            if let Some(l) = &previous {
                self.may_take(l, sticky.as_ref(), now)?;
            }
            return Ok(self.take(
                previous.as_ref(),
                pool,
                ip,
                req,
                sticky,
                now,
                Take::Requested,
            ));
        }

        if let Some(s) = &sticky {
            let stuck = leases.stuck_to(s)?;
            for l in stuck
                .iter()
                .filter(|l| candidates.iter().any(|p| p.name == l.pool))
            {
                if let LeaseState::Allocated { container_id, .. } = &l.state {
                    return Err(IpamError::AddressUnavailable {
                        address: l.ip,
                        reason: format!(
                            "pod {s} still has it on sandbox {container_id}; it is freed when that sandbox is deleted or garbage-collected, retry then"
                        ),
                    });
                }
            }
            let mine = stuck.iter().find(|l| {
                candidates
                    .iter()
                    .any(|p| p.name == l.pool && p.check(l.ip).is_ok())
            });
            if let Some(l) = mine {
                let pool = candidates
                    .iter()
                    .find(|p| p.name == l.pool)
                    .expect("filtered above");
                return Ok(self.take(Some(l), pool, l.ip, req, sticky, now, Take::Sticky));
            }
        }

        for pool in candidates {
            // Expired holds and reservations are free for anyone; allocations never expire.
            if let Some(ip) = leases.find_free(pool, start, now)? {
                let previous = leases.get(ip)?;
                return Ok(self.take(previous.as_ref(), pool, ip, req, sticky, now, Take::New));
            }
        }
        for pool in candidates {
            let oldest_hold =
                leases.oldest_reclaimable(&pool.name, &|ip| pool.check(ip).is_ok())?;
            if let Some(l) = oldest_hold {
                return Ok(self.take(Some(&l), pool, l.ip, req, sticky, now, Take::Reclaimed));
            }
        }
        Err(IpamError::Exhausted {
            pool: candidates
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(","),
        })
    }

    /// Whether a request stuck to `sticky` may take the address of lease `l`.
    fn may_take(
        &self,
        l: &Lease,
        sticky: Option<&Sticky>,
        now: DateTime<Utc>,
    ) -> Result<(), IpamError> {
        let unavailable = |reason: String| IpamError::AddressUnavailable {
            address: l.ip,
            reason,
        };
        let ours = matches!((&l.sticky, sticky), (Some(a), Some(b)) if a.matches(b));
        match &l.state {
            LeaseState::Allocated { container_id, .. } => Err(unavailable(format!(
                "it is in use by {} (sandbox {container_id})",
                who(l)
            ))),
            LeaseState::Held { until } if !ours && *until > now => Err(unavailable(format!(
                "it is held for {} until {until}",
                who(l)
            ))),
            LeaseState::Reserved { until, .. } if !ours && until.is_none_or(|u| u > now) => {
                Err(unavailable(format!("it is reserved for {}", who(l))))
            }
            _ => Ok(()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn take(
        &self,
        previous: Option<&Lease>,
        pool: &Pool,
        ip: IpAddr,
        req: &AllocateRequest,
        sticky: Option<Sticky>,
        now: DateTime<Utc>,
        how: Take,
    ) -> (Plan, Allocation) {
        let mut plan = Plan::default();
        if let Some(prev) = previous {
            let ours = matches!((&prev.sticky, &sticky), (Some(a), Some(b)) if a.matches(b));
            if how == Take::Reclaimed {
                let taker = req
                    .pod
                    .as_ref()
                    .map(|p| format!("{}/{}", p.namespace, p.name))
                    .unwrap_or_else(|| format!("sandbox {}", req.container_id));
                let until = prev
                    .expires()
                    .map(|u| format!(" until {u}"))
                    .unwrap_or_default();
                plan.events.push(self.event(
                    EventKind::Reclaimed,
                    prev,
                    now,
                    Some(format!(
                        "held for {}{until}, given to {taker}: pool {:?} had no free address; {} gets a new address when it comes back",
                        who(prev),
                        pool.name,
                        who(prev)
                    )),
                ));
            } else if !ours {
                plan.events.push(self.event(
                    EventKind::Expire,
                    prev,
                    now,
                    Some("taken over after its hold ran out".into()),
                ));
            }
        }
        let lease = Lease {
            ip,
            pool: pool.name.clone(),
            state: LeaseState::Allocated {
                container_id: req.container_id.clone(),
                ifname: req.ifname.clone(),
            },
            sticky,
            pod: req.pod.clone(),
            node: self.node.node.clone(),
            rack: self.node.rack.clone(),
            since: now,
            pinned: how == Take::Requested,
        };
        plan.events
            .push(self.event(EventKind::Allocate, &lease, now, Some(how.detail())));
        plan.puts.push(lease);
        (plan, allocation(pool, ip))
    }

    /// Decides a DEL: the attachment's addresses (one per family) go into its hold period (sticky) or is freed.
    pub fn release(
        &self,
        leases: &dyn LeaseView,
        container_id: &str,
        ifname: &str,
        now: DateTime<Utc>,
    ) -> Result<Plan, IpamError> {
        let mut plan = Plan::default();
        for l in leases.attached(container_id, ifname)? {
            self.release_lease(&mut plan, &l, now, false);
        }
        Ok(plan)
    }

    fn release_lease(&self, plan: &mut Plan, l: &Lease, now: DateTime<Utc>, gc: bool) {
        if l.sticky.is_some() && self.hold > chrono::Duration::zero() {
            let until = now + self.hold;
            let kind = if gc { EventKind::Gc } else { EventKind::Hold };
            plan.events
                .push(self.event(kind, l, now, Some(format!("held until {until}"))));
            plan.puts.push(Lease {
                state: LeaseState::Held { until },
                node: self.node.node.clone(),
                rack: self.node.rack.clone(),
                since: now,
                ..l.clone()
            });
        } else {
            let kind = if gc {
                EventKind::Gc
            } else {
                EventKind::Release
            };
            plan.events
                .push(self.event(kind, l, now, Some("freed".into())));
            plan.deletes.push(l.ip);
        }
    }

    /// Decides a GC: allocations for which `keep` is false are released (a sticky one into
    /// its hold, so its pod still gets it back); expired holds and timed reservations are
    /// removed.
    pub fn gc(
        &self,
        leases: &Leases,
        keep: &dyn Fn(&Lease) -> bool,
        now: DateTime<Utc>,
    ) -> Released {
        let mut plan = Plan::default();
        let mut report = GcReport::default();
        for l in leases.values() {
            match l.attachment() {
                Some(_) if !keep(l) => {
                    self.release_lease(&mut plan, l, now, true);
                    report.released.push(l.ip);
                    report.collected.push(l.clone());
                }
                Some(_) => {}
                None if l.expired(now) => {
                    plan.events
                        .push(self.event(EventKind::Expire, l, now, None));
                    plan.deletes.push(l.ip);
                }
                None => {}
            }
        }
        Released { plan, report }
    }

    /// Decides an operator reservation of `ip` for `sticky` (or for nobody).
    pub fn reserve(
        &self,
        leases: &Leases,
        ip: IpAddr,
        sticky: Option<Sticky>,
        until: Option<DateTime<Utc>>,
        note: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<Plan, IpamError> {
        let pool = self
            .pools
            .covering(ip)
            .ok_or_else(|| IpamError::AddressUnavailable {
                address: ip,
                reason: "it is outside every configured pool".into(),
            })?;
        pool.check(ip)
            .map_err(|why| IpamError::AddressUnavailable {
                address: ip,
                reason: match why {
                    Unusable::Reserved(r) => r.to_string(),
                    _ => "it is outside the pool's ranges".into(),
                },
            })?;
        if let Some(l) = leases.get(&ip) {
            self.may_take(l, sticky.as_ref(), now)?;
        }
        let lease = Lease {
            ip,
            pool: pool.name.clone(),
            state: LeaseState::Reserved { until, note },
            sticky,
            pod: None,
            node: self.node.node.clone(),
            rack: self.node.rack.clone(),
            since: now,
            pinned: false,
        };
        Ok(Plan {
            events: vec![self.event(EventKind::Reserve, &lease, now, None)],
            puts: vec![lease],
            deletes: vec![],
        })
    }

    /// Decides an operator release: whatever the address does, it becomes free.
    pub fn free(&self, leases: &Leases, ip: IpAddr, now: DateTime<Utc>) -> Plan {
        let mut plan = Plan::default();
        if let Some(l) = leases.get(&ip) {
            let was = match &l.state {
                LeaseState::Allocated { container_id, .. } => {
                    format!("was allocated to sandbox {container_id}")
                }
                LeaseState::Held { .. } => "was held".to_string(),
                LeaseState::Reserved { .. } => "was reserved".to_string(),
            };
            plan.events
                .push(self.event(EventKind::Free, l, now, Some(was)));
            plan.deletes.push(ip);
        }
        plan
    }

    /// The answer for an existing lease.
    pub fn allocation_of(&self, l: &Lease) -> Result<Allocation, IpamError> {
        let pool = self.pools.get(&l.pool).ok_or_else(|| {
            IpamError::InvalidConfig(format!(
                "address {} belongs to pool {:?}, which is no longer configured; restore the pool or free the address",
                l.ip, l.pool
            ))
        })?;
        Ok(allocation(pool, l.ip))
    }

    /// Refuses to decide when the store holds times from this node's future.
    pub fn check_skew(&self, leases: &dyn LeaseView, now: DateTime<Utc>) -> Result<(), IpamError> {
        if let Some(latest) = leases.newest_after(now + self.max_skew)? {
            return Err(IpamError::ClockSkew {
                writer: latest.node.clone(),
                record: latest.since,
                now,
                max_secs: self.max_skew.num_seconds().max(0) as u64,
            });
        }
        Ok(())
    }

    fn sticky_of(&self, req: &AllocateRequest) -> Result<Option<Sticky>, IpamError> {
        let Some(pod) = &req.pod else {
            return Ok(None);
        };
        let name = match annotation_for(req, ANN_STICKY)?.as_deref() {
            None if self.sticky_default.covers(&pod.name) => pod.name.clone(),
            None | Some("false") => return Ok(None),
            Some("true") => pod.name.clone(),
            Some(key) => {
                if key.len() > 253
                    || !key
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                {
                    return Err(IpamError::InvalidAnnotation {
                        key: ANN_STICKY.into(),
                        value: key.into(),
                        reason: "use true, false, or an app key of [A-Za-z0-9._-] (at most 253)"
                            .into(),
                    });
                }
                format!("app:{key}")
            }
        };
        Ok(Some(Sticky {
            namespace: pod.namespace.clone(),
            name,
            ifname: Some(req.ifname.clone()),
        }))
    }

    /// The pools an interface may take addresses from, in preference order, and whether
    /// they were named (`berth.io/pool`, the plugin's per-interface pools: at most one per
    /// family) rather than picked by app and rack.
    fn candidates(&self, req: &AllocateRequest) -> Result<(Vec<&Pool>, bool), IpamError> {
        let rack = self.node.rack.as_deref();
        let named = |names: &[String], what: &str| -> Result<(Vec<&Pool>, bool), IpamError> {
            let mut out: Vec<&Pool> = Vec::new();
            for name in names {
                let p = self
                    .pools
                    .get(name)
                    .ok_or_else(|| IpamError::UnknownPool(name.to_string()))?;
                self.serves(p, rack)?;
                if let Some(other) = out.iter().find(|o| o.family() == p.family()) {
                    return Err(IpamError::InvalidConfig(format!(
                        "{what} names two {} pools for interface {}: {:?} and {:?}; name one pool per IP family",
                        p.family(),
                        req.ifname,
                        other.name,
                        p.name
                    )));
                }
                out.push(p);
            }
            Ok((out, true))
        };
        let annotated = annotation_values(req, ANN_POOL)?;
        if !annotated.is_empty() {
            return named(&annotated, &format!("annotation {ANN_POOL}")).map_err(|e| match e {
                IpamError::InvalidConfig(reason) => IpamError::InvalidAnnotation {
                    key: ANN_POOL.into(),
                    value: req.annotations.get(ANN_POOL).cloned().unwrap_or_default(),
                    reason,
                },
                other => other,
            });
        }
        if !req.pools.is_empty() {
            return named(&req.pools, "the network config");
        }
        if let Some(app) = annotation_for(req, ANN_APP_POOL)? {
            let all: Vec<&Pool> = self
                .pools
                .iter()
                .filter(|p| p.name == app || p.app.as_deref() == Some(app.as_str()))
                .collect();
            if all.is_empty() {
                return Err(IpamError::UnknownPool(app));
            }
            let ok = rack_first(all.iter().copied().filter(|p| p.serves_rack(rack)));
            if ok.is_empty() {
                return Err(self.no_pool(format!("app {app}"), &all));
            }
            return Ok((ok, false));
        }
        let ok = rack_first(
            self.pools
                .iter()
                .filter(|p| p.app.is_none() && p.serves_rack(rack)),
        );
        if ok.is_empty() {
            let all: Vec<&Pool> = self.pools.iter().filter(|p| p.app.is_none()).collect();
            return Err(self.no_pool("the node's rack".into(), &all));
        }
        Ok((ok, false))
    }

    /// The pool holding an explicitly requested address, if it serves this node.
    fn covering_pool(&self, ip: IpAddr) -> Result<&Pool, IpamError> {
        let p = self
            .pools
            .covering(ip)
            .ok_or_else(|| IpamError::AddressUnavailable {
                address: ip,
                reason: match self.pools.containing(ip) {
                    Some(p) => format!(
                        "it is outside the ranges of pool {:?}; pick an address inside them",
                        p.name
                    ),
                    None => format!(
                        "it is outside every configured pool ({}); pick an address of one of them",
                        self.pool_list()
                    ),
                },
            })?;
        self.serves(p, self.node.rack.as_deref())?;
        Ok(p)
    }

    fn serves(&self, p: &Pool, rack: Option<&str>) -> Result<(), IpamError> {
        if p.serves_rack(rack) {
            Ok(())
        } else {
            Err(self.no_pool(format!("pool {:?}", p.name), &[p]))
        }
    }

    fn no_pool(&self, what: String, pools: &[&Pool]) -> IpamError {
        let served: Vec<String> = pools
            .iter()
            .map(|p| format!("{} serves racks [{}]", p.name, p.racks.join(",")))
            .collect();
        IpamError::NoPool {
            what,
            node: self.node.node.clone(),
            rack: self.node.rack.clone().unwrap_or_else(|| "unset".into()),
            hint: if served.is_empty() {
                "add a pool for this rack or one without racks".into()
            } else {
                format!(
                    "{}; set the node's rack in its node config or add a pool for it",
                    served.join("; ")
                )
            },
        }
    }

    fn pool_list(&self) -> String {
        self.pools
            .iter()
            .map(|p| format!("{} {}", p.name, p.subnet))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn event(
        &self,
        kind: EventKind,
        l: &Lease,
        now: DateTime<Utc>,
        detail: Option<String>,
    ) -> Event {
        let (container_id, ifname) = match l.attachment() {
            Some((c, i)) => (Some(c.to_string()), Some(i.to_string())),
            None => (None, l.sticky.as_ref().and_then(|s| s.ifname.clone())),
        };
        Event {
            time: now,
            kind,
            ip: l.ip,
            pool: l.pool.clone(),
            pod: l.pod.clone(),
            sticky: l.sticky.clone(),
            container_id,
            ifname,
            node: self.node.node.clone(),
            rack: self.node.rack.clone(),
            detail,
        }
    }
}

/// How an address was chosen (the allocate event's detail).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Take {
    /// Named by `berth.io/ip`: pinned, its hold is never reclaimed.
    Requested,
    /// The pod's own held or reserved address.
    Sticky,
    /// A free address.
    New,
    /// Another pod's hold, taken because the pool was full.
    Reclaimed,
}

impl Take {
    fn detail(self) -> String {
        match self {
            Take::Requested => "requested",
            Take::Sticky => "sticky",
            Take::New => "new",
            Take::Reclaimed => "new (reclaimed a hold: the pool had no free address)",
        }
        .to_string()
    }
}

/// Rack-specific pools first, then the pools without racks, each in config order.
fn rack_first<'a>(pools: impl Iterator<Item = &'a Pool>) -> Vec<&'a Pool> {
    let (mut specific, generic): (Vec<&Pool>, Vec<&Pool>) =
        pools.partition(|p| !p.racks.is_empty());
    specific.extend(generic);
    specific
}

fn who(l: &Lease) -> String {
    match (&l.sticky, &l.pod) {
        (Some(s), _) => s.to_string(),
        (None, Some(p)) => format!("{}/{}", p.namespace, p.name),
        (None, None) => "an operator reservation".into(),
    }
}

fn allocation(pool: &Pool, ip: IpAddr) -> Allocation {
    Allocation {
        address: pool.with_prefix(ip),
        gateway: pool.gateway,
        routes: pool.routes.clone(),
        pool: pool.name.clone(),
        vlan: pool.vlan,
    }
}

fn parse_ip(v: &str) -> Result<IpAddr, IpamError> {
    v.parse::<IpAddr>()
        .or_else(|_| v.parse::<ipnet::IpNet>().map(|n| n.addr()))
        .map_err(|_| IpamError::InvalidAnnotation {
            key: ANN_IP.into(),
            value: v.into(),
            reason: "not an IP address".into(),
        })
}

/// The interface's addresses from `berth.io/ip`: at most one per IP family.
fn explicit_ips(req: &AllocateRequest) -> Result<Vec<IpAddr>, IpamError> {
    let mut out: Vec<IpAddr> = Vec::new();
    for v in annotation_values(req, ANN_IP)? {
        let ip = parse_ip(&v)?;
        if let Some(other) = out.iter().find(|o| Family::of(**o) == Family::of(ip)) {
            return Err(IpamError::InvalidAnnotation {
                key: ANN_IP.into(),
                value: req.annotations.get(ANN_IP).cloned().unwrap_or_default(),
                reason: format!(
                    "it gives interface {} two {} addresses ({other} and {ip}); give at most one per IP family",
                    req.ifname,
                    Family::of(ip)
                ),
            });
        }
        out.push(ip);
    }
    Ok(out)
}

/// An error the caller reports as it is (the error type is not `Clone`).
fn clone_err(e: &IpamError) -> IpamError {
    match e {
        IpamError::UnknownPool(p) => IpamError::UnknownPool(p.clone()),
        IpamError::NoPool {
            what,
            node,
            rack,
            hint,
        } => IpamError::NoPool {
            what: what.clone(),
            node: node.clone(),
            rack: rack.clone(),
            hint: hint.clone(),
        },
        IpamError::InvalidAnnotation { key, value, reason } => IpamError::InvalidAnnotation {
            key: key.clone(),
            value: value.clone(),
            reason: reason.clone(),
        },
        other => IpamError::InvalidConfig(other.to_string()),
    }
}

/// The annotation's value for the request's interface: a plain value applies to every
/// interface, the form `eth0=a,eth1=b` to the named ones.
pub fn annotation_for(req: &AllocateRequest, key: &str) -> Result<Option<String>, IpamError> {
    let Some(raw) = req.annotations.get(key).map(|v| v.trim()) else {
        return Ok(None);
    };
    if raw.is_empty() {
        return Ok(None);
    }
    if !raw.contains('=') {
        return Ok(Some(raw.to_string()));
    }
    let mut per_if = BTreeMap::new();
    for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (ifname, value) =
            entry
                .split_once('=')
                .ok_or_else(|| IpamError::InvalidAnnotation {
                    key: key.into(),
                    value: raw.into(),
                    reason: format!("entry {entry:?} is not ifname=value"),
                })?;
        if per_if.insert(ifname.trim(), value.trim()).is_some() {
            return Err(IpamError::InvalidAnnotation {
                key: key.into(),
                value: raw.into(),
                reason: format!("interface {ifname:?} is named twice"),
            });
        }
    }
    Ok(per_if
        .get(req.ifname.as_str())
        .filter(|v| !v.is_empty())
        .map(|v| v.to_string()))
}

/// The annotation's values for the request's interface, for keys that take one value per IP
/// family: `a`, `a,b` (every interface), or `eth0=a,eth0=b,eth1=c` (the named ones).
pub fn annotation_values(req: &AllocateRequest, key: &str) -> Result<Vec<String>, IpamError> {
    let Some(raw) = req.annotations.get(key).map(|v| v.trim()) else {
        return Ok(Vec::new());
    };
    let entries = raw.split(',').map(str::trim).filter(|e| !e.is_empty());
    if !raw.contains('=') {
        return Ok(entries.map(str::to_string).collect());
    }
    let mut out = Vec::new();
    for entry in entries {
        let (ifname, value) =
            entry
                .split_once('=')
                .ok_or_else(|| IpamError::InvalidAnnotation {
                    key: key.into(),
                    value: raw.into(),
                    reason: format!("entry {entry:?} is not ifname=value"),
                })?;
        if ifname.trim() == req.ifname && !value.trim().is_empty() {
            out.push(value.trim().to_string());
        }
    }
    Ok(out)
}

#[cfg(test)]
#[path = "logic_tests.rs"]
mod tests;
