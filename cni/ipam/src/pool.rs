//! Validated pools: which addresses of a subnet may be handed out, in which order.
//!
//! Addresses are handled as `u128` so IPv4 and IPv6 share one code path; the usable set of a
//! pool is its ranges minus the network/broadcast addresses, the gateway and the exclusions,
//! all kept as sorted inclusive intervals so a scan costs O(leases + exclusions), not O(range).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::allocator::RouteSpec;
use crate::config::PoolConfig;
use crate::error::IpamError;

/// An IP family; an interface gets at most one address of each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// The narrowest IPv6 subnet a pool may have: a /120 has 255 host addresses; narrower
/// subnets leave so few that a typo (`/128` for `/64`) is far likelier than intent.
pub const MAX_V6_PREFIX: u8 = 120;

/// An inclusive interval of addresses, as numbers.
type Span = (u128, u128);

/// One validated pool.
#[derive(Clone, Debug, PartialEq)]
pub struct Pool {
    pub name: String,
    pub subnet: IpNet,
    pub gateway: Option<IpAddr>,
    pub routes: Vec<RouteSpec>,
    pub vlan: Option<u16>,
    pub racks: Vec<String>,
    pub app: Option<String>,
    /// Ranges as configured (inside the subnet), sorted.
    ranges: Vec<Span>,
    /// Never handed out: network, broadcast, gateway, exclusions; sorted, merged.
    blocked: Vec<Span>,
}

/// Why an address cannot come from a pool.
#[derive(Debug, PartialEq, Eq)]
pub enum Unusable {
    OutsideSubnet,
    OutsideRanges,
    Reserved(&'static str),
}

impl Pool {
    pub fn from_config(pc: &PoolConfig) -> Result<Pool, IpamError> {
        let bad = |m: String| IpamError::InvalidConfig(format!("pool {:?}: {m}", pc.name));
        if pc.name.is_empty()
            || pc.name.len() > 63
            || !pc
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(bad("name must be 1-63 characters of [A-Za-z0-9._-]".into()));
        }
        let subnet = pc.subnet.trunc();
        if subnet != pc.subnet {
            return Err(bad(format!(
                "subnet {} has host bits set; did you mean {subnet}?",
                pc.subnet
            )));
        }
        if subnet.addr().is_ipv6() && subnet.prefix_len() > MAX_V6_PREFIX {
            return Err(bad(format!(
                "IPv6 subnet {subnet} is narrower than /{MAX_V6_PREFIX}; use a /{MAX_V6_PREFIX} or wider (a /64 is usual)"
            )));
        }
        let (net_lo, net_hi) = span_of(&subnet);
        let mut ranges = Vec::new();
        if pc.ranges.is_empty() {
            ranges.push((net_lo, net_hi));
        }
        for r in &pc.ranges {
            let (s, e) = (num(r.start), num(r.end));
            if !subnet.contains(&r.start) || !subnet.contains(&r.end) {
                return Err(bad(format!(
                    "range {}-{} is not inside subnet {subnet}",
                    r.start, r.end
                )));
            }
            if s > e {
                return Err(bad(format!(
                    "range start {} is after end {}",
                    r.start, r.end
                )));
            }
            ranges.push((s, e));
        }
        ranges.sort();
        if ranges.windows(2).any(|w| w[1].0 <= w[0].1) {
            return Err(bad("ranges overlap".into()));
        }
        let mut blocked = Vec::new();
        let v4 = matches!(subnet, IpNet::V4(_));
        if subnet.prefix_len() < subnet.max_prefix_len().saturating_sub(1) {
            blocked.push((net_lo, net_lo));
            if v4 {
                blocked.push((net_hi, net_hi));
            }
        }
        if let Some(gw) = pc.gateway {
            if gw.is_ipv4() != subnet.addr().is_ipv4() {
                return Err(bad(format!(
                    "gateway {gw} is an {} address but subnet {subnet} is {}; give each family its own pool with a gateway of that family",
                    Family::of(gw),
                    Family::of(subnet.addr())
                )));
            }
            if !subnet.contains(&gw) {
                return Err(bad(format!("gateway {gw} is not inside subnet {subnet}")));
            }
            blocked.push((num(gw), num(gw)));
        }
        for ex in &pc.exclude {
            let span = parse_exclusion(ex).ok_or_else(|| {
                bad(format!(
                    "exclusion {ex:?} is not an address, a CIDR or a start-end range"
                ))
            })?;
            blocked.push(span);
        }
        if let Some(v) = pc.vlan
            && !(1..=4094).contains(&v)
        {
            return Err(bad(format!("vlan {v} is not in 1-4094")));
        }
        for r in &pc.routes {
            if r.dst.trunc() != r.dst {
                return Err(bad(format!(
                    "route destination {} has host bits set",
                    r.dst
                )));
            }
        }
        Ok(Pool {
            name: pc.name.clone(),
            subnet,
            gateway: pc.gateway,
            routes: pc.routes.clone(),
            vlan: pc.vlan,
            racks: pc.racks.clone(),
            app: pc.app.clone(),
            ranges,
            blocked: merge(blocked),
        })
    }

    fn is_v4(&self) -> bool {
        matches!(self.subnet, IpNet::V4(_))
    }

    /// The pool's IP family.
    pub fn family(&self) -> Family {
        Family::of(self.subnet.addr())
    }

    /// Whether two pools share an address of their ranges.
    pub fn overlaps(&self, other: &Pool) -> bool {
        self.is_v4() == other.is_v4()
            && self
                .ranges
                .iter()
                .any(|a| other.ranges.iter().any(|b| a.0 <= b.1 && b.0 <= a.1))
    }

    /// Whether `ip` lies in one of the pool's ranges (usable or not).
    pub fn covers(&self, ip: IpAddr) -> bool {
        self.subnet.contains(&ip) && {
            let n = num(ip);
            self.ranges.iter().any(|r| r.0 <= n && n <= r.1)
        }
    }

    /// Whether the pool may hand out `ip`, and why not.
    pub fn check(&self, ip: IpAddr) -> Result<(), Unusable> {
        if !self.subnet.contains(&ip) {
            return Err(Unusable::OutsideSubnet);
        }
        if !self.covers(ip) {
            return Err(Unusable::OutsideRanges);
        }
        let n = num(ip);
        if self.gateway == Some(ip) {
            return Err(Unusable::Reserved("it is the pool's gateway"));
        }
        if self.blocked.iter().any(|b| b.0 <= n && n <= b.1) {
            let (lo, hi) = span_of(&self.subnet);
            if n == lo || n == hi {
                return Err(Unusable::Reserved(
                    "it is the subnet's network or broadcast address",
                ));
            }
            return Err(Unusable::Reserved("it is excluded by the pool's config"));
        }
        Ok(())
    }

    /// Whether the pool serves a node in `rack`.
    pub fn serves_rack(&self, rack: Option<&str>) -> bool {
        self.racks.is_empty() || rack.is_some_and(|r| self.racks.iter().any(|x| x == r))
    }

    /// Number of addresses the pool can hand out.
    pub fn capacity(&self) -> u128 {
        let mut total = 0u128;
        for r in &self.ranges {
            total += r.1 - r.0 + 1;
            for b in &self.blocked {
                let (lo, hi) = (b.0.max(r.0), b.1.min(r.1));
                if lo <= hi {
                    total -= hi - lo + 1;
                }
            }
        }
        total
    }

    /// The first usable address at or after position `start` (an offset into the pool's
    /// usable addresses, wrapping around), skipping everything `taken` says is taken.
    /// Returns `None` when every usable address is taken.
    pub fn find_free(&self, start: u128, taken: &dyn Fn(IpAddr) -> bool) -> Option<IpAddr> {
        let cap = self.capacity();
        if cap == 0 {
            return None;
        }
        let begin = self.nth_usable(start % cap)?;
        // Walk from `begin` to the end, then from the first usable address up to `begin`.
        let mut n = Some(begin);
        while let Some(x) = n {
            if !taken(self.addr(x)) {
                return Some(self.addr(x));
            }
            n = self.next_usable(x);
        }
        let mut n = self.nth_usable(0);
        while let Some(x) = n.filter(|x| *x < begin) {
            if !taken(self.addr(x)) {
                return Some(self.addr(x));
            }
            n = self.next_usable(x);
        }
        None
    }

    /// The usable address after `n`, if any.
    fn next_usable(&self, n: u128) -> Option<u128> {
        let mut cand = n.checked_add(1)?;
        loop {
            let r = self.ranges.iter().find(|r| r.1 >= cand)?;
            cand = cand.max(r.0);
            match self.blocked.iter().find(|b| b.0 <= cand && cand <= b.1) {
                Some(b) => cand = b.1.checked_add(1)?,
                None => return Some(cand),
            }
        }
    }

    /// The `k`-th usable address (0-based).
    fn nth_usable(&self, mut k: u128) -> Option<u128> {
        for r in &self.ranges {
            // usable spans of this range
            let mut lo = r.0;
            for b in self.blocked.iter().filter(|b| b.1 >= r.0 && b.0 <= r.1) {
                if b.0 > lo {
                    let len = b.0 - lo;
                    if k < len {
                        return Some(lo + k);
                    }
                    k -= len;
                }
                lo = lo.max(b.1.saturating_add(1));
                if b.1 == u128::MAX {
                    return None;
                }
            }
            if lo <= r.1 {
                let len = r.1 - lo + 1;
                if k < len {
                    return Some(lo + k);
                }
                k -= len;
            }
        }
        None
    }

    fn addr(&self, n: u128) -> IpAddr {
        if self.is_v4() {
            IpAddr::V4(Ipv4Addr::from(n as u32))
        } else {
            IpAddr::V6(Ipv6Addr::from(n))
        }
    }

    /// The address with the pool's prefix length.
    pub fn with_prefix(&self, ip: IpAddr) -> IpNet {
        IpNet::new(ip, self.subnet.prefix_len()).expect("prefix length comes from the subnet")
    }

    /// The block size a store that hands out blocks of `size` addresses uses in this pool:
    /// `size` rounded up to a power of two, at most the subnet.
    pub fn block_size(&self, size: u128) -> u128 {
        let (lo, hi) = span_of(&self.subnet);
        size.max(1)
            .checked_next_power_of_two()
            .unwrap_or(u128::MAX)
            .min((hi - lo).saturating_add(1))
    }

    /// The first address of the block of `size` ([`Pool::block_size`]) addresses that holds
    /// `ip`: blocks are aligned on multiples of their size inside the subnet.
    pub fn block_of(&self, ip: IpAddr, size: u128) -> IpAddr {
        let size = self.block_size(size);
        self.addr(num(ip) - num(ip) % size)
    }

    /// The blocks that hold a usable address, by position among the subnet's blocks:
    /// `(first, last)` positions (inclusive) between which they all lie.
    pub fn block_positions(&self, size: u128) -> (u128, u128) {
        let size = self.block_size(size);
        let base = span_of(&self.subnet).0 / size;
        let first = self.ranges.first().map_or(0, |r| r.0 / size - base);
        let last = self.ranges.last().map_or(0, |r| r.1 / size - base);
        (first, last)
    }

    /// The first address of the block at `position` among the subnet's blocks.
    pub fn block_at(&self, position: u128, size: u128) -> IpAddr {
        let size = self.block_size(size);
        self.addr(span_of(&self.subnet).0 + position * size)
    }

    /// The usable addresses of the block that starts at `block`, starting at its `offset`-th
    /// address and wrapping around (so concurrent writers spread over the block).
    pub fn usable_in_block(&self, block: IpAddr, size: u128, offset: u128) -> Vec<IpAddr> {
        let size = self.block_size(size);
        let lo = num(block);
        let mut out = Vec::new();
        for i in 0..size {
            let n = lo + (offset + i) % size;
            let ip = self.addr(n);
            if self.check(ip).is_ok() {
                out.push(ip);
            }
        }
        out
    }
}

/// The validated pools of one config, in preference order.
#[derive(Clone, Debug, PartialEq)]
pub struct Pools(Vec<Pool>);

impl Pools {
    pub fn new(pools: Vec<Pool>) -> Pools {
        Pools(pools)
    }
    pub fn iter(&self) -> impl Iterator<Item = &Pool> {
        self.0.iter()
    }
    pub fn get(&self, name: &str) -> Option<&Pool> {
        self.0.iter().find(|p| p.name == name)
    }
    /// The pool whose ranges cover `ip`.
    pub fn covering(&self, ip: IpAddr) -> Option<&Pool> {
        self.0.iter().find(|p| p.covers(ip))
    }
    /// The pool whose subnet contains `ip` (for "outside the ranges" messages).
    pub fn containing(&self, ip: IpAddr) -> Option<&Pool> {
        self.0.iter().find(|p| p.subnet.contains(&ip))
    }
}

pub(crate) fn num(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

fn span_of(net: &IpNet) -> Span {
    (num(net.network()), num(net.broadcast()))
}

fn parse_exclusion(s: &str) -> Option<Span> {
    let s = s.trim();
    if let Some((a, b)) = s.split_once('-') {
        let (a, b): (IpAddr, IpAddr) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
        (a.is_ipv4() == b.is_ipv4() && num(a) <= num(b)).then(|| (num(a), num(b)))
    } else if s.contains('/') {
        let n: IpNet = s.parse().ok()?;
        Some(span_of(&n.trunc()))
    } else {
        let a: IpAddr = s.parse().ok()?;
        Some((num(a), num(a)))
    }
}

fn merge(mut spans: Vec<Span>) -> Vec<Span> {
    spans.sort();
    let mut out: Vec<Span> = Vec::with_capacity(spans.len());
    for s in spans {
        match out.last_mut() {
            Some(last) if s.0 <= last.1.saturating_add(1) => last.1 = last.1.max(s.1),
            _ => out.push(s),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RangeConfig;

    fn pool(subnet: &str, ranges: &[(&str, &str)], gw: Option<&str>, ex: &[&str]) -> Pool {
        Pool::from_config(&PoolConfig {
            name: "p".into(),
            subnet: subnet.parse().unwrap(),
            ranges: ranges
                .iter()
                .map(|(a, b)| RangeConfig {
                    start: a.parse().unwrap(),
                    end: b.parse().unwrap(),
                })
                .collect(),
            gateway: gw.map(|g| g.parse().unwrap()),
            exclude: ex.iter().map(|s| s.to_string()).collect(),
            routes: vec![],
            vlan: None,
            racks: vec![],
            app: None,
        })
        .unwrap()
    }

    fn all(p: &Pool) -> Vec<String> {
        let mut taken = std::collections::BTreeSet::new();
        while let Some(ip) = p.find_free(0, &|ip| taken.contains(&ip)) {
            taken.insert(ip);
        }
        taken.iter().map(|i| i.to_string()).collect()
    }

    #[test]
    fn usable_set_skips_network_broadcast_gateway_and_exclusions() {
        let p = pool(
            "10.0.0.0/28",
            &[],
            Some("10.0.0.1"),
            &["10.0.0.4", "10.0.0.8/30", "10.0.0.13-10.0.0.13"],
        );
        assert_eq!(
            all(&p),
            [
                "10.0.0.2",
                "10.0.0.3",
                "10.0.0.5",
                "10.0.0.6",
                "10.0.0.7",
                "10.0.0.12",
                "10.0.0.14"
            ]
        );
        assert_eq!(p.capacity(), 7);
        assert_eq!(
            p.check("10.0.0.1".parse().unwrap()),
            Err(Unusable::Reserved("it is the pool's gateway"))
        );
        assert_eq!(
            p.check("10.0.0.9".parse().unwrap()),
            Err(Unusable::Reserved("it is excluded by the pool's config"))
        );
        assert_eq!(
            p.check("10.0.1.9".parse().unwrap()),
            Err(Unusable::OutsideSubnet)
        );
    }

    #[test]
    fn ranges_limit_and_order_addresses_and_start_wraps() {
        let p = pool(
            "10.0.0.0/24",
            &[("10.0.0.200", "10.0.0.201"), ("10.0.0.10", "10.0.0.11")],
            None,
            &["10.0.0.11"],
        );
        assert_eq!(all(&p), ["10.0.0.10", "10.0.0.200", "10.0.0.201"]);
        assert_eq!(
            p.check("10.0.0.12".parse().unwrap()),
            Err(Unusable::OutsideRanges)
        );
        let second = p.find_free(1, &|_| false).unwrap();
        assert_eq!(second.to_string(), "10.0.0.200");
        let wrapped = p
            .find_free(2, &|ip| ip.to_string() == "10.0.0.201")
            .unwrap();
        assert_eq!(wrapped.to_string(), "10.0.0.10");
        assert_eq!(p.find_free(5, &|_| true), None);
    }

    #[test]
    fn ipv6_and_tiny_subnets() {
        let p = pool("fd00::/120", &[("fd00::1", "fd00::3")], None, &[]);
        assert_eq!(all(&p), ["fd00::1", "fd00::2", "fd00::3"]);
        let p31 = pool("10.0.0.0/31", &[], None, &[]);
        assert_eq!(all(&p31), ["10.0.0.0", "10.0.0.1"]);
        let big = pool("fd00::/64", &[], None, &[]);
        assert_eq!(big.find_free(0, &|_| false).unwrap().to_string(), "fd00::1");
    }

    #[test]
    fn refuses_bad_pools() {
        let mk = |subnet: &str, start: &str, end: &str, gw: Option<&str>| {
            Pool::from_config(&PoolConfig {
                name: "p".into(),
                subnet: subnet.parse().unwrap(),
                ranges: vec![RangeConfig {
                    start: start.parse().unwrap(),
                    end: end.parse().unwrap(),
                }],
                gateway: gw.map(|g| g.parse().unwrap()),
                exclude: vec![],
                routes: vec![],
                vlan: None,
                racks: vec![],
                app: None,
            })
        };
        let e = |r: Result<Pool, IpamError>| match r {
            Err(IpamError::InvalidConfig(m)) => m,
            other => panic!("expected InvalidConfig, got {other:?}"),
        };
        assert!(e(mk("10.0.0.0/24", "10.0.1.1", "10.0.1.2", None)).contains("not inside subnet"));
        assert!(e(mk("10.0.0.0/24", "10.0.0.9", "10.0.0.2", None)).contains("after end"));
        assert!(e(mk("10.0.0.0/24", "10.0.0.1", "10.0.0.2", Some("10.1.0.1"))).contains("gateway"));
        assert!(e(mk("10.0.0.1/24", "10.0.0.1", "10.0.0.2", None)).contains("host bits"));
        let other = e(mk("fd00::/64", "fd00::2", "fd00::9", Some("10.0.0.1")));
        assert!(
            other.contains("gateway 10.0.0.1 is an IPv4 address but subnet fd00::/64 is IPv6"),
            "{other}"
        );
        let other = e(mk("10.0.0.0/24", "10.0.0.2", "10.0.0.9", Some("fd00::1")));
        assert!(other.contains("is an IPv6 address"), "{other}");
        let narrow = e(mk("fd00::/121", "fd00::2", "fd00::9", None));
        assert!(
            narrow.contains("IPv6 subnet fd00::/121 is narrower than /120"),
            "{narrow}"
        );
        assert!(mk("fd00::/120", "fd00::2", "fd00::9", None).is_ok());
    }
}
