//! The real [`NetOps`]: one synchronous rtnetlink socket per namespace, raw ARP sockets.
//!
//! `setns` only moves the calling thread, so sockets for the pod namespace are created on a
//! short-lived dedicated thread that enters the namespace; a socket stays bound to the
//! namespace it was created in, so the plugin's own thread never changes namespace.

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use rtnetlink::packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoMacVlan, InfoPortData, InfoPortKind, InfoVeth,
    InfoVlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, MacVlanMode,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::arp::{ArpPacket, ArpSocket, announce_in_background};
use crate::names::bridge_mac;
use crate::ndp::{self, ETH_P_IPV6, NdpPacket};
use crate::net::{ArpNeeds, LinkState, LiveRoute, NetError, NetOps, Ns};
use crate::plan::RoutePlan;
use crate::sockwait::{Received, recv_any_before};

mod client;
mod frames;
pub use client::Netlink;
use client::RTNLGRP_LINK;

/// How long a link deletion may take before DEL reports it (the kernel normally unlists a
/// link within milliseconds; this only bounds a wedged kernel).
const DELETE_TIMEOUT: Duration = Duration::from_secs(30);

fn family(ip: &IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn route_addr(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(v) => RouteAddress::Inet(v),
        IpAddr::V6(v) => RouteAddress::Inet6(v),
    }
}

/// A pod namespace's sockets, created on a thread that entered it.
struct PodNs {
    netns: File,
    nl: Netlink,
    arp: Option<ArpSocket>,
    /// The raw socket for NDP (`ETH_P_IPV6`), opened with the ARP one.
    ndp: Option<ArpSocket>,
    /// A detached helper holds the raw socket too, so closing ours is cheap.
    arp_handed_off: bool,
    ndp_handed_off: bool,
}

type PodSockets = io::Result<(Netlink, Option<ArpSocket>, Option<ArpSocket>)>;

/// The pod's sockets being created on their dedicated thread.
struct PendingPod {
    netns: File,
    path: PathBuf,
    thread: std::thread::JoinHandle<PodSockets>,
}

/// Starts creating the pod namespace's sockets on a dedicated thread that enters it; the
/// caller goes on with host-side work (and IPAM) meanwhile.
fn start_pod(path: &Path, needs: ArpNeeds) -> Result<PendingPod, NetError> {
    let netns = File::open(path).map_err(|source| NetError::Netns {
        path: path.to_path_buf(),
        source,
    })?;
    let fd = netns.as_raw_fd();
    let thread = std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || -> PodSockets {
            // SAFETY: setns on this dedicated thread only; it exits right after. `fd` stays
            // open: the File is kept in `PendingPod` until this thread is joined.
            if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            let nl = Netlink::open()?;
            let arp = if needs.raw_socket {
                Some(ArpSocket::open()?)
            } else {
                None
            };
            let ndp = if needs.raw_socket && needs.ndp_socket {
                Some(ArpSocket::open_for(ETH_P_IPV6)?)
            } else {
                None
            };
            Ok((nl, arp, ndp))
        })
        .map_err(|e| NetError::io("starting the netns thread", e))?;
    Ok(PendingPod {
        netns,
        path: path.to_path_buf(),
        thread,
    })
}

impl PendingPod {
    fn finish(self) -> Result<PodNs, NetError> {
        let (nl, arp, ndp) = self
            .thread
            .join()
            .expect("netns thread does not panic")
            .map_err(|source| NetError::Netns {
                path: self.path.clone(),
                source,
            })?;
        Ok(PodNs {
            netns: self.netns,
            nl,
            arp,
            ndp,
            arp_handed_off: false,
            ndp_handed_off: false,
        })
    }
}

/// [`NetOps`] over netlink: one socket for the host namespace, one for the pod's.
pub struct RealNet {
    host: Netlink,
    pod: Option<PodNs>,
    pending: Option<PendingPod>,
}

impl RealNet {
    /// Opens the host socket and, when `pod_netns` is given, starts opening the pod's (and
    /// what `needs` asks); pod operations wait for it on first use.
    pub fn open(pod_netns: Option<&Path>, needs: ArpNeeds) -> Result<RealNet, NetError> {
        let pending = pod_netns.map(|p| start_pod(p, needs)).transpose()?;
        let host = Netlink::open().map_err(|e| NetError::io("opening a netlink socket", e))?;
        Ok(RealNet {
            host,
            pod: None,
            pending,
        })
    }

    fn pod(&mut self) -> Result<&mut PodNs, NetError> {
        if let Some(p) = self.pending.take() {
            self.pod = Some(p.finish()?);
        }
        self.pod.as_mut().ok_or(NetError::NoPodNs)
    }

    fn nl(&mut self, ns: Ns) -> Result<&mut Netlink, NetError> {
        match ns {
            Ns::Host => Ok(&mut self.host),
            Ns::Pod => Ok(&mut self.pod()?.nl),
        }
    }

    fn arp(&mut self) -> Result<&ArpSocket, NetError> {
        self.pod()?.arp.as_ref().ok_or(NetError::NoPodNs)
    }

    fn ndp(&mut self) -> Result<&ArpSocket, NetError> {
        self.pod()?.ndp.as_ref().ok_or_else(|| {
            NetError::io(
                "NDP on the pod interface",
                io::Error::other(
                    "no NDP socket was opened: the network's IPAM config has no IPv6 pool but handed out an IPv6 address",
                ),
            )
        })
    }

    fn pod_fd(&mut self) -> Result<i32, NetError> {
        Ok(self.pod()?.netns.as_raw_fd())
    }
}

impl Drop for RealNet {
    fn drop(&mut self) {
        if let Some(p) = self.pending.take() {
            let _ = p.finish();
        }
        // Closing the last reference to a packet socket waits for an RCU grace period
        // (~10 ms, more on a busy node). Let a detached helper own the last reference.
        if let Some(p) = self.pod.as_mut() {
            let open = [(&p.arp, p.arp_handed_off), (&p.ndp, p.ndp_handed_off)];
            for (sock, handed_off) in open {
                if let Some(sock) = sock
                    && !handed_off
                {
                    let _ = crate::arp::hold_in_background(sock);
                }
            }
        }
    }
}

fn new_link_msg(name: &str, mtu: Option<u32>, mac: Option<[u8; 6]>) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(name.to_string()));
    if let Some(mtu) = mtu {
        m.attributes.push(LinkAttribute::Mtu(mtu));
    }
    if let Some(mac) = mac {
        m.attributes.push(LinkAttribute::Address(mac.to_vec()));
    }
    m
}

fn exists_or(ns: Ns, name: &str, op: &str, e: io::Error) -> NetError {
    if e.raw_os_error() == Some(libc::EEXIST) {
        NetError::Exists {
            ns,
            name: name.to_string(),
        }
    } else {
        NetError::netlink(format!("{op} {name}"), e)
    }
}

impl NetOps for RealNet {
    fn has_pod(&self) -> bool {
        self.pod.is_some() || self.pending.is_some()
    }

    fn link(&mut self, ns: Ns, name: &str) -> Result<Option<LinkState>, NetError> {
        self.nl(ns)?
            .get_link(name)
            .map_err(|e| NetError::netlink(format!("get link {name}"), e))
    }

    fn links(&mut self, ns: Ns) -> Result<Vec<LinkState>, NetError> {
        self.nl(ns)?
            .dump_links()
            .map_err(|e| NetError::netlink("dump links", e))
    }

    fn create_bridge(&mut self, name: &str, mtu: Option<u32>) -> Result<bool, NetError> {
        let mut m = new_link_msg(name, mtu, Some(bridge_mac(name)));
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        m.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        match self
            .host
            .request(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)
        {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(NetError::netlink(format!("create bridge {name}"), e)),
        }
    }

    fn create_veth(
        &mut self,
        host: &str,
        pod: &str,
        mtu: Option<u32>,
        pod_mac: Option<[u8; 6]>,
    ) -> Result<(), NetError> {
        let pod_fd = self.pod_fd()?;
        let mut peer = new_link_msg(pod, mtu, pod_mac);
        peer.attributes.push(LinkAttribute::NetNsFd(pod_fd));
        let mut m = new_link_msg(host, mtu, None);
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        self.host
            .request(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)
            .map_err(|e| exists_or(Ns::Host, host, "create veth", e))
    }

    fn create_vlan(&mut self, name: &str, master: u32, id: u16) -> Result<bool, NetError> {
        let mut m = new_link_msg(name, None, None);
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        m.attributes.push(LinkAttribute::Link(master));
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vlan),
            LinkInfo::Data(InfoData::Vlan(vec![InfoVlan::Id(id)])),
        ]));
        match self
            .host
            .request(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)
        {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Err(NetError::io(
                format!(
                    "creating VLAN link {name} (the kernel has no 802.1Q support: load module 8021q)"
                ),
                e,
            )),
            Err(e) => Err(NetError::netlink(format!("create vlan {name}"), e)),
        }
    }

    fn create_macvlan(
        &mut self,
        master: u32,
        pod: &str,
        mtu: Option<u32>,
        mac: Option<[u8; 6]>,
    ) -> Result<(), NetError> {
        let pod_fd = self.pod_fd()?;
        let mut m = new_link_msg(pod, mtu, mac);
        m.attributes.push(LinkAttribute::Link(master));
        m.attributes.push(LinkAttribute::NetNsFd(pod_fd));
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::MacVlan),
            LinkInfo::Data(InfoData::MacVlan(vec![InfoMacVlan::Mode(
                MacVlanMode::Bridge,
            )])),
        ]));
        self.host
            .request(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)
            .map_err(|e| exists_or(Ns::Pod, pod, "create macvlan", e))
    }

    fn set_link(
        &mut self,
        ns: Ns,
        index: u32,
        controller: Option<u32>,
        alias: Option<&str>,
    ) -> Result<(), NetError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        if let Some(c) = controller {
            m.attributes.push(LinkAttribute::Controller(c));
        }
        if let Some(a) = alias {
            m.attributes.push(LinkAttribute::IfAlias(a.to_string()));
        }
        self.nl(ns)?
            .request(RouteNetlinkMessage::SetLink(m), 0)
            .map_err(|e| NetError::netlink(format!("set link {index} up"), e))
    }

    fn set_hairpin(&mut self, index: u32) -> Result<(), NetError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                true,
            )])),
        ]));
        self.host
            .request(RouteNetlinkMessage::NewLink(m), 0)
            .map_err(|e| NetError::netlink(format!("set hairpin on link {index}"), e))
    }

    fn add_address(&mut self, ns: Ns, index: u32, addr: IpNet) -> Result<bool, NetError> {
        let ip = addr.addr();
        let mut m = AddressMessage::default();
        m.header.family = family(&ip);
        m.header.prefix_len = addr.prefix_len();
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(ip));
        m.attributes.push(AddressAttribute::Address(ip));
        if ip.is_ipv6() {
            // Usable at once: no `tentative` second of kernel DAD (see `NetOps::add_address`).
            m.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        if let IpNet::V4(v4) = addr
            && v4.prefix_len() < 31
        {
            m.attributes
                .push(AddressAttribute::Broadcast(v4.broadcast()));
        }
        match self.nl(ns)?.request(
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(NetError::netlink(format!("add address {addr}"), e)),
        }
    }

    fn addresses(&mut self, ns: Ns, index: u32) -> Result<Vec<IpNet>, NetError> {
        let v = self
            .nl(ns)?
            .exchange(
                RouteNetlinkMessage::GetAddress(AddressMessage::default()),
                NLM_F_DUMP,
            )
            .map_err(|e| NetError::netlink("dump addresses", e))?;
        let mut out = Vec::new();
        for m in v {
            let RouteNetlinkMessage::NewAddress(m) = m else {
                continue;
            };
            if m.header.index != index {
                continue;
            }
            let ip = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let ip = ip.or_else(|| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(ip) = ip
                && let Ok(net) = IpNet::new(ip, m.header.prefix_len)
            {
                out.push(net);
            }
        }
        Ok(out)
    }

    fn add_route(&mut self, ns: Ns, index: u32, route: &RoutePlan) -> Result<(), NetError> {
        let mut m = RouteMessage::default();
        m.header.address_family = family(&route.dst.addr());
        m.header.destination_prefix_length = route.dst.prefix_len();
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Boot;
        m.header.kind = RouteType::Unicast;
        m.header.scope = if route.gw.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        if route.dst.prefix_len() > 0 {
            m.attributes
                .push(RouteAttribute::Destination(route_addr(route.dst.network())));
        }
        if let Some(gw) = route.gw {
            m.attributes.push(RouteAttribute::Gateway(route_addr(gw)));
        }
        m.attributes.push(RouteAttribute::Oif(index));
        match self
            .nl(ns)?
            .request(RouteNetlinkMessage::NewRoute(m), NLM_F_CREATE | NLM_F_EXCL)
        {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(NetError::netlink(format!("add route to {}", route.dst), e)),
        }
    }

    fn routes(&mut self, ns: Ns) -> Result<Vec<LiveRoute>, NetError> {
        let nl = self.nl(ns)?;
        let mut out = Vec::new();
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut m = RouteMessage::default();
            m.header.address_family = fam;
            let v = nl
                .exchange(RouteNetlinkMessage::GetRoute(m), NLM_F_DUMP)
                .map_err(|e| NetError::netlink("dump routes", e))?;
            for m in v {
                let RouteNetlinkMessage::NewRoute(m) = m else {
                    continue;
                };
                let table = m
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        RouteAttribute::Table(t) => Some(*t),
                        _ => None,
                    })
                    .unwrap_or(u32::from(m.header.table));
                if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
                    continue;
                }
                let to_ip = |a: &RouteAddress| match a {
                    RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
                    RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
                    _ => None,
                };
                let mut dst = None;
                let mut gw = None;
                let mut oif = None;
                for a in &m.attributes {
                    match a {
                        RouteAttribute::Destination(d) => dst = to_ip(d),
                        RouteAttribute::Gateway(g) => gw = to_ip(g),
                        RouteAttribute::Oif(i) => oif = Some(*i),
                        _ => {}
                    }
                }
                let dst = dst.unwrap_or(if fam == AddressFamily::Inet {
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
                } else {
                    IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
                });
                if let Ok(dst) = IpNet::new(dst, m.header.destination_prefix_length) {
                    out.push(LiveRoute { dst, gw, oif });
                }
            }
        }
        Ok(out)
    }

    fn delete_link(&mut self, ns: Ns, name: &str) -> Result<bool, NetError> {
        self.nl(ns)?
            .delete_link_unlisted(name, DELETE_TIMEOUT)
            .map_err(|e| NetError::netlink(format!("delete link {name}"), e))
    }

    fn enable_ip_forward(&mut self) -> Result<(), NetError> {
        const P: &str = "/proc/sys/net/ipv4/ip_forward";
        let cur =
            std::fs::read_to_string(P).map_err(|e| NetError::io(format!("reading {P}"), e))?;
        if cur.trim() != "1" {
            std::fs::write(P, "1").map_err(|e| NetError::io(format!("writing {P}"), e))?;
        }
        Ok(())
    }

    fn wait_oper_up(&mut self, ns: Ns, name: &str, timeout: Duration) -> Result<(), NetError> {
        let nl = self.nl(ns)?;
        nl.sock
            .add_membership(RTNLGRP_LINK)
            .map_err(|e| NetError::netlink("subscribing to link events", e))?;
        let r = nl.wait_oper_up(name, Instant::now() + timeout);
        let _ = nl.sock.drop_membership(RTNLGRP_LINK);
        match r {
            Ok(Some(true)) => Ok(()),
            Ok(Some(false)) => Err(NetError::NotUp {
                name: name.to_string(),
                waited: timeout,
            }),
            Ok(None) => Err(NetError::NotFound {
                ns,
                name: name.to_string(),
            }),
            Err(e) => Err(NetError::netlink(
                format!("waiting for {name} to come up"),
                e,
            )),
        }
    }

    fn arp_probe(
        &mut self,
        index: u32,
        mac: [u8; 6],
        ips: &[IpAddr],
        count: u32,
        timeout: Duration,
    ) -> Result<Option<(IpAddr, [u8; 6])>, NetError> {
        let has = |v4: bool| ips.iter().any(|ip| ip.is_ipv4() == v4);
        let mut fds = Vec::new();
        if has(true) {
            let sock = self.arp()?;
            sock.bind(index)
                .map_err(|e| NetError::io("binding the ARP socket", e))?;
            for ip in ips {
                if let IpAddr::V4(v4) = ip {
                    let probe = ArpPacket::probe(mac, *v4);
                    for _ in 0..count {
                        sock.send(index, &probe)
                            .map_err(|e| NetError::io("sending an ARP probe", e))?;
                    }
                }
            }
            fds.push(sock.raw_fd());
        }
        if has(false) {
            let sock = self.ndp()?;
            sock.bind(index)
                .map_err(|e| NetError::io("binding the NDP socket", e))?;
            for ip in ips {
                if let IpAddr::V6(v6) = ip {
                    let probe = ndp::probe_frame(mac, *v6);
                    for _ in 0..count {
                        sock.send_frame(index, &probe)
                            .map_err(|e| NetError::io("sending an NDP probe", e))?;
                    }
                }
            }
            fds.push(sock.raw_fd());
        }
        // One wait for every answer, on whichever socket it arrives.
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 256];
        loop {
            let (_, got) = recv_any_before(&fds, &mut buf, deadline)
                .map_err(|e| NetError::io("receiving probe answers", e))?;
            let n = match got {
                Received::Data(n) => n,
                Received::Again => continue,
                Received::TimedOut => return Ok(None),
            };
            let frame = &buf[..n];
            if let Some(p) = ArpPacket::parse(frame)
                && let Some(ip) = ips.iter().find(|ip| match ip {
                    IpAddr::V4(v4) => p.conflicts_with(*v4, mac),
                    IpAddr::V6(_) => false,
                })
            {
                return Ok(Some((*ip, p.sender_mac)));
            }
            if let Some(p) = NdpPacket::parse(frame)
                && let Some(ip) = ips.iter().find(|ip| match ip {
                    IpAddr::V6(v6) => p.conflicts_with(*v6, mac),
                    IpAddr::V4(_) => false,
                })
            {
                return Ok(Some((*ip, p.sender_mac)));
            }
        }
    }

    fn announce(
        &mut self,
        index: u32,
        mac: [u8; 6],
        ip: IpAddr,
        count: u32,
        interval: Duration,
    ) -> Result<(), NetError> {
        if count == 0 {
            return Ok(());
        }
        let (sock, frame, what) = match ip {
            IpAddr::V4(v4) => (
                self.arp()?,
                ArpPacket::announcement(mac, v4).to_frame().to_vec(),
                "gratuitous ARP",
            ),
            IpAddr::V6(v6) => (
                self.ndp()?,
                ndp::advertisement_frame(mac, v6),
                "unsolicited neighbour advertisement",
            ),
        };
        sock.send_frame(index, &frame)
            .map_err(|e| NetError::io(format!("sending a {what}"), e))?;
        // The rest (if any) from a detached helper, which also takes over the socket's
        // close (see `Drop for RealNet`).
        announce_in_background(sock, index, &frame, count - 1, interval)
            .map_err(|e| NetError::io(format!("starting the {what} burst"), e))?;
        if let Some(p) = self.pod.as_mut() {
            match ip {
                IpAddr::V4(_) => p.arp_handed_off = true,
                IpAddr::V6(_) => p.ndp_handed_off = true,
            }
        }
        Ok(())
    }
}
