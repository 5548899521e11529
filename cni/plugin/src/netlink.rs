//! The real [`NetOps`]: one synchronous rtnetlink socket per namespace, raw ARP sockets.
//!
//! `setns` only moves the calling thread, so sockets for the pod namespace are created on a
//! short-lived dedicated thread that enters the namespace; a socket stays bound to the
//! namespace it was created in, so the plugin's own thread never changes namespace.

use crate::sockwait::{Received, recv_before};
use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use rtnetlink::packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoMacVlan, InfoPortData, InfoPortKind, InfoVeth,
    InfoVlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, MacVlanMode, State,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::arp::{ArpPacket, ArpSocket, announce_in_background};
use crate::names::bridge_mac;
use crate::ndp::{self, ETH_P_IPV6, NdpPacket};
use crate::net::{ArpNeeds, LinkState, LiveRoute, NetError, NetOps, Ns};
use crate::plan::RoutePlan;
use crate::sockwait::recv_any_before;

/// The rtnetlink multicast group of link changes.
const RTNLGRP_LINK: u32 = 1;

/// How long a link deletion may take before DEL reports it (the kernel normally unlists a
/// link within milliseconds; this only bounds a wedged kernel).
const DELETE_TIMEOUT: Duration = Duration::from_secs(30);

/// A synchronous rtnetlink client bound to the namespace it was opened in.
pub struct Netlink {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    pub fn open() -> io::Result<Netlink> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(Netlink {
            sock,
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        self.sock.send(&buf, 0)?;
        Ok(self.seq)
    }

    /// Sends a request and collects replies until the ACK (or DONE for dumps).
    fn exchange(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        let seq = self.send(msg, flags | NLM_F_REQUEST)?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut out = Vec::new();
        loop {
            // SAFETY: the buffer is writable for its whole length.
            let n = unsafe {
                libc::recv(
                    self.sock.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let buf = &self.buf[..n as usize];
            let mut off = 0;
            while off + 16 <= buf.len() {
                let len =
                    u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4 bytes")) as usize;
                if len < 16 || off + len > buf.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "truncated netlink message",
                    ));
                }
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[off..off + len])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                off += (len + 3) & !3;
                if msg.header.sequence_number != seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(_) => Err(e.to_io()),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::InnerMessage(m) => {
                        out.push(m);
                        if !dump && flags & NLM_F_ACK == 0 {
                            return Ok(out);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.exchange(msg, flags | NLM_F_ACK).map(|_| ())
    }

    pub fn get_link(&mut self, name: &str) -> io::Result<Option<LinkState>> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.exchange(RouteNetlinkMessage::GetLink(m), 0) {
            Ok(v) => Ok(v.into_iter().find_map(link_state)),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// With link events subscribed: whether link `name` is (or becomes, before `deadline`)
    /// operationally up; `None` if it does not exist. Event-driven: no polling, no sleeps.
    fn wait_oper_up(&mut self, name: &str, deadline: Instant) -> io::Result<Option<bool>> {
        // Subscribed first, then asked: a change between the two is in the queue.
        let index = match self.get_link(name)? {
            Some(l) if l.oper_up => return Ok(Some(true)),
            Some(l) => l.index,
            None => return Ok(None),
        };
        loop {
            let n = match recv_before(self.sock.as_raw_fd(), &mut self.buf, deadline) {
                Ok(Received::Data(n)) => n,
                Ok(Received::Again) => continue,
                Ok(Received::TimedOut) => return Ok(Some(false)),
                // Events were dropped: ask again.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    if self.get_link(name)?.is_some_and(|l| l.oper_up) {
                        return Ok(Some(true));
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut off = 0;
            let buf = &self.buf[..n];
            while off + 16 <= buf.len() {
                let len =
                    u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4 bytes")) as usize;
                if len < 16 || off + len > buf.len() {
                    break;
                }
                if let Ok(msg) =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[off..off + len])
                    && let NetlinkPayload::InnerMessage(m) = msg.payload
                    && let Some(l) = link_state(m)
                    && l.index == index
                    && l.oper_up
                {
                    return Ok(Some(true));
                }
                off += (len + 3) & !3;
            }
        }
    }

    /// Deletes link `name` and returns once the kernel has unlisted it (with a veth, its
    /// peer too): `Ok(false)` if there was no such link.
    ///
    /// The kernel answers a link deletion only after the teardown that follows the
    /// unlisting: an RCU barrier and waiting for the last references (10–40 ms, more on a
    /// busy node), during which the name is already free and the link invisible. So the
    /// request is sent by a detached child process, which sits out that wait, while this
    /// process waits only for the link's `RTM_DELLINK` event (or the request's error).
    pub fn delete_link_unlisted(&mut self, name: &str, timeout: Duration) -> io::Result<bool> {
        self.sock.add_membership(RTNLGRP_LINK)?;
        let r = self.delete_detached(name, Instant::now() + timeout);
        let _ = self.sock.drop_membership(RTNLGRP_LINK);
        r
    }

    fn delete_detached(&mut self, name: &str, deadline: Instant) -> io::Result<bool> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK;
        header.sequence_number = seq;
        let mut nl = NetlinkMessage::new(
            header,
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(m)),
        );
        nl.finalize();
        let mut req = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut req);
        spawn_detached_send(self.sock.as_raw_fd(), &req)?;
        loop {
            let n = match recv_before(self.sock.as_raw_fd(), &mut self.buf, deadline) {
                Ok(Received::Data(n)) => n,
                Ok(Received::Again) => continue,
                Ok(Received::TimedOut) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("link {name} was not removed in time"),
                    ));
                }
                // Events (or the answer) were dropped: ask whether the link is still there,
                // on this socket (it is in the link's namespace); if it is, its RTM_DELLINK
                // is still to come.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    if self.get_link(name)?.is_none() {
                        return Ok(true);
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            let buf = &self.buf[..n];
            let mut off = 0;
            while off + 16 <= buf.len() {
                let len =
                    u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4 bytes")) as usize;
                if len < 16 || off + len > buf.len() {
                    break;
                }
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[off..off + len]);
                off += (len + 3) & !3;
                let Ok(msg) = msg else { continue };
                match msg.payload {
                    NetlinkPayload::Error(e) if msg.header.sequence_number == seq => {
                        return match e.code {
                            None => Ok(true),
                            Some(_) => {
                                let e = e.to_io();
                                if e.raw_os_error() == Some(libc::ENODEV) {
                                    Ok(false)
                                } else {
                                    Err(e)
                                }
                            }
                        };
                    }
                    // The generic (not a bridge's per-port) notification of the link's end.
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l))
                        if l.header.interface_family == AddressFamily::Unspec
                            && l.attributes
                                .iter()
                                .any(|a| matches!(a, LinkAttribute::IfName(n) if n == name)) =>
                    {
                        return Ok(true);
                    }
                    _ => {}
                }
            }
        }
    }

    pub fn dump_links(&mut self) -> io::Result<Vec<LinkState>> {
        let v = self.exchange(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(v.into_iter().filter_map(link_state).collect())
    }
}

/// Sends the serialized netlink request `req` on `fd` from a detached child process, which
/// exits once the kernel has processed it. The child closes stdin/stdout/stderr first (the
/// runtime waits for EOF on our stdout) and only makes async-signal-safe calls.
fn spawn_detached_send(fd: i32, req: &[u8]) -> io::Result<()> {
    let devnull = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    let null = devnull.as_raw_fd();
    // SAFETY: after fork the child only calls async-signal-safe functions (dup2, setsid,
    // send, _exit) on memory prepared before the fork, and never returns into Rust code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: see above.
        unsafe {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
            libc::dup2(null, 2);
            libc::setsid();
            let rc = libc::send(fd, req.as_ptr().cast(), req.len(), 0);
            libc::_exit(if rc < 0 { 1 } else { 0 });
        }
    }
    // Not waited for: it outlives this process and is reaped by init (or the runtime).
    Ok(())
}

fn link_state(m: RouteNetlinkMessage) -> Option<LinkState> {
    let RouteNetlinkMessage::NewLink(m) = m else {
        return None;
    };
    let mut s = LinkState {
        index: m.header.index,
        up: m.header.flags.contains(LinkFlags::Up),
        ..LinkState::default()
    };
    let mut lower_up = m.header.flags.contains(LinkFlags::LowerUp);
    for a in m.attributes {
        match a {
            LinkAttribute::IfName(n) => s.name = n,
            LinkAttribute::Mtu(v) => s.mtu = v,
            LinkAttribute::Address(a) if a.len() == 6 => {
                s.mac = Some(a.try_into().expect("6 bytes"));
            }
            LinkAttribute::Controller(c) => s.controller = Some(c),
            LinkAttribute::IfAlias(a) => s.alias = Some(a),
            LinkAttribute::OperState(st) => lower_up &= matches!(st, State::Up | State::Unknown),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        s.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    s.oper_up = s.up && lower_up;
    Some(s)
}

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
