//! Test doubles: a [`NetOps`] that models links, addresses and routes in memory and records
//! every call (with injectable failures), and an in-memory [`Allocator`].

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_cni_spec::{CniError, Context};
use berth_ipam_core::{
    AllocateRequest, Allocation, Allocator, Attachment, GcReport, IpamError, RouteSpec,
};
use ipnet::IpNet;
use serde_json::Value;

use crate::ipam::IpamOpener;
use crate::net::{LinkState, LiveRoute, NetError, NetOps, Ns};
use crate::plan::RoutePlan;
use crate::plugin::NetOpener;

#[derive(Debug, Default)]
pub struct NetState {
    pub links: Vec<(Ns, LinkState)>,
    pub addrs: Vec<(Ns, u32, IpNet)>,
    pub routes: Vec<(Ns, u32, RoutePlan)>,
    pub calls: Vec<String>,
    /// Fail the first call whose record starts with this.
    pub fail_on: Option<String>,
    /// The MAC that answers ARP probes, if any.
    pub conflict: Option<[u8; 6]>,
    /// Only probes of this address meet `conflict` (all do when unset).
    pub conflict_ip: Option<IpAddr>,
    pub announced: Vec<(u32, IpAddr, u32)>,
    pub ip_forward: bool,
    next_index: u32,
}

impl NetState {
    pub fn add_host_nic(&mut self, name: &str) -> u32 {
        self.next_index += 1;
        let index = self.next_index + 100;
        self.links.push((
            Ns::Host,
            LinkState {
                index,
                name: name.into(),
                up: true,
                oper_up: true,
                mac: Some([2, 0xaa, 0, 0, 0, index as u8]),
                mtu: 1500,
                ..LinkState::default()
            },
        ));
        index
    }

    pub fn link(&self, ns: Ns, name: &str) -> Option<&LinkState> {
        self.links
            .iter()
            .find(|(n, l)| *n == ns && l.name == name)
            .map(|(_, l)| l)
    }

    pub fn names(&self, ns: Ns) -> Vec<String> {
        let mut v: Vec<String> = self
            .links
            .iter()
            .filter(|(n, _)| *n == ns)
            .map(|(_, l)| l.name.clone())
            .collect();
        v.sort();
        v
    }
}

/// One call's view of the shared state (with or without the pod namespace).
pub struct FakeNet {
    pub state: Arc<Mutex<NetState>>,
    pub pod: bool,
}

impl FakeNet {
    fn record(&self, call: String) -> Result<(), NetError> {
        let mut s = self.state.lock().unwrap();
        let fail = s
            .fail_on
            .as_ref()
            .is_some_and(|f| call.starts_with(f.as_str()));
        s.calls.push(call.clone());
        if fail {
            s.fail_on = None;
            return Err(NetError::netlink(
                call,
                std::io::Error::from_raw_os_error(libc::EIO),
            ));
        }
        Ok(())
    }

    fn need_pod(&self, ns: Ns) -> Result<(), NetError> {
        if ns == Ns::Pod && !self.pod {
            return Err(NetError::NoPodNs);
        }
        Ok(())
    }

    fn new_link(
        &self,
        ns: Ns,
        name: &str,
        kind: &str,
        mtu: Option<u32>,
        mac: Option<[u8; 6]>,
    ) -> Result<(), NetError> {
        let mut s = self.state.lock().unwrap();
        if s.link(ns, name).is_some() {
            return Err(NetError::Exists {
                ns,
                name: name.into(),
            });
        }
        s.next_index += 1;
        let index = s.next_index;
        s.links.push((
            ns,
            LinkState {
                index,
                name: name.into(),
                kind: Some(kind.into()),
                mac: Some(mac.unwrap_or([2, 0, 0, 0, ns as u8, index as u8])),
                mtu: mtu.unwrap_or(1500),
                ..LinkState::default()
            },
        ));
        Ok(())
    }

    fn link_mut<R>(
        &self,
        ns: Ns,
        index: u32,
        f: impl FnOnce(&mut LinkState) -> R,
    ) -> Result<R, NetError> {
        let mut s = self.state.lock().unwrap();
        s.links
            .iter_mut()
            .find(|(n, l)| *n == ns && l.index == index)
            .map(|(_, l)| f(l))
            .ok_or(NetError::NotFound {
                ns,
                name: index.to_string(),
            })
    }
}

impl NetOps for FakeNet {
    fn has_pod(&self) -> bool {
        self.pod
    }

    fn link(&mut self, ns: Ns, name: &str) -> Result<Option<LinkState>, NetError> {
        self.need_pod(ns)?;
        self.record(format!("link {ns:?} {name}"))?;
        Ok(self.state.lock().unwrap().link(ns, name).cloned())
    }
    fn links(&mut self, ns: Ns) -> Result<Vec<LinkState>, NetError> {
        self.need_pod(ns)?;
        self.record(format!("links {ns:?}"))?;
        let s = self.state.lock().unwrap();
        Ok(s.links
            .iter()
            .filter(|(n, _)| *n == ns)
            .map(|(_, l)| l.clone())
            .collect())
    }
    fn create_bridge(&mut self, name: &str, mtu: Option<u32>) -> Result<bool, NetError> {
        self.record(format!("create_bridge {name}"))?;
        match self.new_link(Ns::Host, name, "bridge", mtu, None) {
            Ok(()) => {
                let mut s = self.state.lock().unwrap();
                let l = s
                    .links
                    .iter_mut()
                    .find(|(n, l)| *n == Ns::Host && l.name == name)
                    .unwrap();
                l.1.up = true;
                Ok(true)
            }
            Err(NetError::Exists { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
    fn create_veth(
        &mut self,
        host: &str,
        pod: &str,
        mtu: Option<u32>,
        pod_mac: Option<[u8; 6]>,
    ) -> Result<(), NetError> {
        self.need_pod(Ns::Pod)?;
        self.record(format!("create_veth {host} {pod}"))?;
        if self.state.lock().unwrap().link(Ns::Pod, pod).is_some() {
            return Err(NetError::Exists {
                ns: Ns::Pod,
                name: pod.into(),
            });
        }
        self.new_link(Ns::Host, host, "veth", mtu, None)?;
        self.new_link(Ns::Pod, pod, "veth", mtu, pod_mac)
    }
    fn create_vlan(&mut self, name: &str, master: u32, id: u16) -> Result<bool, NetError> {
        self.record(format!("create_vlan {name} {master} {id}"))?;
        match self.new_link(Ns::Host, name, "vlan", None, None) {
            Ok(()) => Ok(true),
            Err(NetError::Exists { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
    fn create_macvlan(
        &mut self,
        master: u32,
        pod: &str,
        mtu: Option<u32>,
        mac: Option<[u8; 6]>,
    ) -> Result<(), NetError> {
        self.need_pod(Ns::Pod)?;
        self.record(format!("create_macvlan {master} {pod}"))?;
        self.new_link(Ns::Pod, pod, "macvlan", mtu, mac)
    }
    fn set_link(
        &mut self,
        ns: Ns,
        index: u32,
        controller: Option<u32>,
        alias: Option<&str>,
    ) -> Result<(), NetError> {
        self.need_pod(ns)?;
        self.record(format!("set_link {ns:?} {index} {controller:?} {alias:?}"))?;
        self.link_mut(ns, index, |l| {
            l.up = true;
            l.oper_up = true;
            if controller.is_some() {
                l.controller = controller;
            }
            if let Some(a) = alias {
                l.alias = Some(a.into());
            }
        })
    }
    fn set_hairpin(&mut self, index: u32) -> Result<(), NetError> {
        self.record(format!("set_hairpin {index}"))
    }
    fn add_address(&mut self, ns: Ns, index: u32, addr: IpNet) -> Result<bool, NetError> {
        self.need_pod(ns)?;
        self.record(format!("add_address {ns:?} {index} {addr}"))?;
        let mut s = self.state.lock().unwrap();
        if s.addrs.contains(&(ns, index, addr)) {
            return Ok(false);
        }
        s.addrs.push((ns, index, addr));
        Ok(true)
    }
    fn addresses(&mut self, ns: Ns, index: u32) -> Result<Vec<IpNet>, NetError> {
        self.need_pod(ns)?;
        self.record(format!("addresses {ns:?} {index}"))?;
        let s = self.state.lock().unwrap();
        Ok(s.addrs
            .iter()
            .filter(|(n, i, _)| *n == ns && *i == index)
            .map(|(_, _, a)| *a)
            .collect())
    }
    fn add_route(&mut self, ns: Ns, index: u32, route: &RoutePlan) -> Result<(), NetError> {
        self.need_pod(ns)?;
        self.record(format!("add_route {ns:?} {index} {}", route.dst))?;
        self.state.lock().unwrap().routes.push((ns, index, *route));
        Ok(())
    }
    fn routes(&mut self, ns: Ns) -> Result<Vec<LiveRoute>, NetError> {
        self.need_pod(ns)?;
        self.record(format!("routes {ns:?}"))?;
        let s = self.state.lock().unwrap();
        Ok(s.routes
            .iter()
            .filter(|(n, _, _)| *n == ns)
            .map(|(_, i, r)| LiveRoute {
                dst: r.dst,
                gw: r.gw,
                oif: Some(*i),
            })
            .collect())
    }
    fn delete_link(&mut self, ns: Ns, name: &str) -> Result<bool, NetError> {
        self.need_pod(ns)?;
        self.record(format!("delete_link {ns:?} {name}"))?;
        let mut s = self.state.lock().unwrap();
        let Some(pos) = s.links.iter().position(|(n, l)| *n == ns && l.name == name) else {
            return Ok(false);
        };
        let (_, gone) = s.links.remove(pos);
        s.addrs.retain(|(n, i, _)| !(*n == ns && *i == gone.index));
        s.routes.retain(|(n, i, _)| !(*n == ns && *i == gone.index));
        // A veth's peer goes with it (the fake pairs them by creation order).
        if gone.kind.as_deref() == Some("veth") && ns == Ns::Host {
            let peer = gone.index + 1;
            s.links.retain(|(n, l)| !(*n == Ns::Pod && l.index == peer));
            s.addrs.retain(|(n, i, _)| !(*n == Ns::Pod && *i == peer));
            s.routes.retain(|(n, i, _)| !(*n == Ns::Pod && *i == peer));
        }
        Ok(true)
    }
    fn enable_ip_forward(&mut self) -> Result<(), NetError> {
        self.record("enable_ip_forward".into())?;
        self.state.lock().unwrap().ip_forward = true;
        Ok(())
    }
    fn wait_oper_up(&mut self, ns: Ns, name: &str, _timeout: Duration) -> Result<(), NetError> {
        self.record(format!("wait_oper_up {ns:?} {name}"))
    }
    fn arp_probe(
        &mut self,
        index: u32,
        _mac: [u8; 6],
        ips: &[IpAddr],
        _count: u32,
        _timeout: Duration,
    ) -> Result<Option<(IpAddr, [u8; 6])>, NetError> {
        for ip in ips {
            self.record(format!("arp_probe {index} {ip}"))?;
        }
        let s = self.state.lock().unwrap();
        Ok(s.conflict.and_then(|mac| {
            ips.iter()
                .find(|ip| s.conflict_ip.is_none_or(|c| c == **ip))
                .map(|ip| (*ip, mac))
        }))
    }
    fn announce(
        &mut self,
        index: u32,
        _mac: [u8; 6],
        ip: IpAddr,
        count: u32,
        _interval: Duration,
    ) -> Result<(), NetError> {
        self.record(format!("announce {index} {ip}"))?;
        self.state
            .lock()
            .unwrap()
            .announced
            .push((index, ip, count));
        Ok(())
    }
}

/// Hands out [`FakeNet`]s over one shared state.
#[derive(Clone, Default)]
pub struct FakeNetOpener {
    pub state: Arc<Mutex<NetState>>,
    /// Whether the pod namespace "exists" (false: opening it fails like a vanished netns).
    pub netns_gone: bool,
}

impl NetOpener for FakeNetOpener {
    fn open(
        &self,
        netns: Option<&std::path::Path>,
        _arp: crate::net::ArpNeeds,
    ) -> Result<Box<dyn NetOps>, NetError> {
        if let Some(p) = netns
            && self.netns_gone
        {
            return Err(NetError::Netns {
                path: p.to_path_buf(),
                source: std::io::Error::from_raw_os_error(libc::ENOENT),
            });
        }
        Ok(Box::new(FakeNet {
            state: self.state.clone(),
            pod: netns.is_some(),
        }))
    }
}

/// A pool of the fake allocator.
#[derive(Clone, Debug)]
pub struct FakePool {
    pub subnet: IpNet,
    pub gateway: Option<IpAddr>,
    pub routes: Vec<RouteSpec>,
}

#[derive(Debug, Default)]
pub struct AllocState {
    pub pools: BTreeMap<String, FakePool>,
    pub leases: BTreeMap<(String, String, String), Vec<Allocation>>,
    pub requests: Vec<AllocateRequest>,
    pub gc_calls: Vec<Vec<Attachment>>,
    pub status: Option<String>,
}

/// An in-memory allocator: addresses handed out lowest-first per pool, default pool "default".
#[derive(Clone, Default)]
pub struct FakeIpam(pub Arc<Mutex<AllocState>>);

impl FakeIpam {
    pub fn with_pool(self, name: &str, subnet: &str, gateway: Option<&str>) -> Self {
        self.0.lock().unwrap().pools.insert(
            name.into(),
            FakePool {
                subnet: subnet.parse().unwrap(),
                gateway: gateway.map(|g| g.parse().unwrap()),
                routes: Vec::new(),
            },
        );
        self
    }
    pub fn leases(&self) -> usize {
        self.0.lock().unwrap().leases.len()
    }
}

impl Allocator for FakeIpam {
    /// One address from each named pool; without names, from `default` (and `default6`
    /// when configured: dual-stack).
    fn allocate(&self, r: &AllocateRequest) -> Result<Vec<Allocation>, IpamError> {
        let mut s = self.0.lock().unwrap();
        s.requests.push(r.clone());
        let key = (r.network.clone(), r.container_id.clone(), r.ifname.clone());
        if let Some(a) = s.leases.get(&key) {
            return Ok(a.clone());
        }
        let names: Vec<String> = if r.pools.is_empty() {
            ["default", "default6"]
                .into_iter()
                .filter(|n| *n == "default" || s.pools.contains_key(*n))
                .map(str::to_string)
                .collect()
        } else {
            r.pools.clone()
        };
        let taken: Vec<IpAddr> = s
            .leases
            .values()
            .flatten()
            .map(|a| a.address.addr())
            .collect();
        let mut out = Vec::new();
        for name in names {
            let pool = s
                .pools
                .get(&name)
                .cloned()
                .ok_or_else(|| IpamError::UnknownPool(name.clone()))?;
            let addr = pool
                .subnet
                .hosts()
                .find(|h| Some(*h) != pool.gateway && !taken.contains(h))
                .ok_or_else(|| IpamError::Exhausted { pool: name.clone() })?;
            out.push(Allocation {
                address: IpNet::new(addr, pool.subnet.prefix_len()).unwrap(),
                gateway: pool.gateway,
                routes: pool.routes.clone(),
                pool: name,
                vlan: None,
            });
        }
        s.leases.insert(key, out.clone());
        Ok(out)
    }
    fn release(&self, network: &str, container_id: &str, ifname: &str) -> Result<(), IpamError> {
        self.0
            .lock()
            .unwrap()
            .leases
            .remove(&(network.into(), container_id.into(), ifname.into()));
        Ok(())
    }
    fn lookup(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<Vec<Allocation>, IpamError> {
        Ok(self
            .0
            .lock()
            .unwrap()
            .leases
            .get(&(network.into(), container_id.into(), ifname.into()))
            .cloned()
            .unwrap_or_default())
    }
    fn gc(&self, network: &str, valid: &[Attachment]) -> Result<GcReport, IpamError> {
        let mut s = self.0.lock().unwrap();
        s.gc_calls.push(valid.to_vec());
        let mut released = Vec::new();
        s.leases.retain(|(n, c, i), a| {
            let keep = n != network || valid.iter().any(|v| v.container_id == *c && v.ifname == *i);
            if !keep {
                released.extend(a.iter().map(|a| a.address.addr()));
            }
            keep
        });
        Ok(GcReport {
            released,
            ..Default::default()
        })
    }
    fn status(&self) -> Result<(), IpamError> {
        match &self.0.lock().unwrap().status {
            Some(m) => Err(IpamError::Unavailable(m.clone())),
            None => Ok(()),
        }
    }
}

impl IpamOpener for FakeIpam {
    fn open(&self, _ctx: &Context, _ipam: &Value) -> Result<Box<dyn Allocator>, CniError> {
        Ok(Box::new(self.clone()))
    }
}
