//! The narrow seam between the plan and the kernel: every network operation berth-cni does,
//! in the host or the pod namespace. [`crate::netlink::RealNet`] does them over netlink and
//! raw sockets; tests use a recording fake.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use crate::plan::RoutePlan;

/// Which network namespace an operation runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ns {
    /// The namespace the plugin was started in (the node's).
    Host,
    /// The pod's (`CNI_NETNS`).
    Pod,
}

/// What berth-cni needs to know about a link.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkState {
    pub index: u32,
    pub name: String,
    /// `IFLA_INFO_KIND` (`bridge`, `veth`, `macvlan`, …), `None` for physical NICs.
    pub kind: Option<String>,
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    pub up: bool,
    /// Carrier and operational state up: frames can flow.
    pub oper_up: bool,
    pub controller: Option<u32>,
    pub alias: Option<String>,
}

/// A route as read back from the kernel (main table only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveRoute {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
    pub oif: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A netlink request failed.
    #[error("netlink {op} failed")]
    Netlink {
        op: String,
        #[source]
        source: std::io::Error,
    },
    /// The pod's network namespace cannot be entered.
    #[error("cannot enter network namespace {path}")]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The operation needs the pod namespace, but there is none (DEL without CNI_NETNS).
    #[error("no pod network namespace for this operation")]
    NoPodNs,
    /// A link to be created exists already.
    #[error("interface {name} already exists in the {ns:?} namespace")]
    Exists { ns: Ns, name: String },
    /// A link the operation needs is not there.
    #[error("interface {name} not found in the {ns:?} namespace")]
    NotFound { ns: Ns, name: String },
    /// A link did not reach operational state up in time.
    #[error("interface {name} did not come up within {waited:?} (no carrier?)")]
    NotUp { name: String, waited: Duration },
    /// A raw socket / sysctl / process operation failed.
    #[error("{op} failed")]
    Io {
        op: String,
        #[source]
        source: std::io::Error,
    },
}

impl NetError {
    pub fn netlink(op: impl Into<String>, source: std::io::Error) -> NetError {
        NetError::Netlink {
            op: op.into(),
            source,
        }
    }
    pub fn io(op: impl Into<String>, source: std::io::Error) -> NetError {
        NetError::Io {
            op: op.into(),
            source,
        }
    }
}

/// What ARP work the pod namespace must be ready for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArpNeeds {
    /// A raw socket for probes and gratuitous ARPs.
    pub raw_socket: bool,
    /// With `raw_socket`: a second one for NDP (the network may hand out IPv6 addresses).
    pub ndp_socket: bool,
}

/// Every kernel operation of berth-cni.
pub trait NetOps {
    /// Whether a pod namespace is open.
    fn has_pod(&self) -> bool;
    fn link(&mut self, ns: Ns, name: &str) -> Result<Option<LinkState>, NetError>;
    fn links(&mut self, ns: Ns) -> Result<Vec<LinkState>, NetError>;
    /// Creates a bridge (up, without STP); `Ok(false)` if one of that name exists.
    fn create_bridge(&mut self, name: &str, mtu: Option<u32>) -> Result<bool, NetError>;
    /// Creates a veth pair: `host` in the host namespace, `pod` directly in the pod's.
    fn create_veth(
        &mut self,
        host: &str,
        pod: &str,
        mtu: Option<u32>,
        pod_mac: Option<[u8; 6]>,
    ) -> Result<(), NetError>;
    /// Creates VLAN `id` on host link `master` (up); `Ok(false)` if `name` exists already.
    fn create_vlan(&mut self, name: &str, master: u32, id: u16) -> Result<bool, NetError>;
    /// Creates a bridge-mode macvlan of host link `master` directly in the pod namespace.
    fn create_macvlan(
        &mut self,
        master: u32,
        pod: &str,
        mtu: Option<u32>,
        mac: Option<[u8; 6]>,
    ) -> Result<(), NetError>;
    /// Sets a link up, optionally a port of `controller`, optionally with an alias.
    fn set_link(
        &mut self,
        ns: Ns,
        index: u32,
        controller: Option<u32>,
        alias: Option<&str>,
    ) -> Result<(), NetError>;
    /// Turns on hairpin mode of a bridge port (host namespace).
    fn set_hairpin(&mut self, index: u32) -> Result<(), NetError>;
    /// Adds an address; `Ok(false)` if the link had it already. IPv6 addresses are added
    /// without the kernel's duplicate address detection (usable at once, never `tentative`):
    /// [`NetOps::arp_probe`] is berth's guard against duplicates.
    fn add_address(&mut self, ns: Ns, index: u32, addr: IpNet) -> Result<bool, NetError>;
    fn addresses(&mut self, ns: Ns, index: u32) -> Result<Vec<IpNet>, NetError>;
    /// Adds a route through link `index` (existing identical routes are fine).
    fn add_route(&mut self, ns: Ns, index: u32, route: &RoutePlan) -> Result<(), NetError>;
    fn routes(&mut self, ns: Ns) -> Result<Vec<LiveRoute>, NetError>;
    /// Deletes a link by name; `Ok(false)` if it was not there.
    fn delete_link(&mut self, ns: Ns, name: &str) -> Result<bool, NetError>;
    /// Turns on IPv4 forwarding in the host namespace.
    fn enable_ip_forward(&mut self) -> Result<(), NetError>;
    /// Waits until a link can pass frames (bounded by `timeout`).
    fn wait_oper_up(&mut self, ns: Ns, name: &str, timeout: Duration) -> Result<(), NetError>;
    /// Probes for `ips` from pod link `index` before they are used, all at once: an RFC 5227
    /// ARP probe for IPv4, a neighbour solicitation from `::` (RFC 4862 DAD, sent by berth)
    /// for IPv6, then one wait of `timeout`. The first address someone claims, with the MAC
    /// that claims it.
    fn arp_probe(
        &mut self,
        index: u32,
        mac: [u8; 6],
        ips: &[IpAddr],
        count: u32,
        timeout: Duration,
    ) -> Result<Option<(IpAddr, [u8; 6])>, NetError>;
    /// Announcements of `ip` from pod link `index` (gratuitous ARP for IPv4, unsolicited
    /// neighbour advertisements for IPv6): the first now, the rest `interval` apart without
    /// making the caller wait.
    fn announce(
        &mut self,
        index: u32,
        mac: [u8; 6],
        ip: IpAddr,
        count: u32,
        interval: Duration,
    ) -> Result<(), NetError>;
}
