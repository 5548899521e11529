//! A synchronous rtnetlink client: requests and their answers, link dumps, and waiting for
//! link events, on a socket bound to the namespace it was opened in.

use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkInfo, LinkMessage, State};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use super::frames::frames;
use crate::detach::fork_detached;
use crate::net::LinkState;
use crate::sockwait::{Received, recv_before};

/// The rtnetlink multicast group of link changes.
pub(super) const RTNLGRP_LINK: u32 = 1;

/// A synchronous rtnetlink client bound to the namespace it was opened in.
pub struct Netlink {
    pub(super) sock: Socket,
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
    pub(super) fn exchange(
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
            for msg in frames(&self.buf[..n as usize]) {
                let msg = msg?;
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

    pub(super) fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
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
    pub(super) fn wait_oper_up(
        &mut self,
        name: &str,
        deadline: Instant,
    ) -> io::Result<Option<bool>> {
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
            // Events that do not parse are not this link's.
            for msg in frames(&self.buf[..n]).flatten() {
                if let NetlinkPayload::InnerMessage(m) = msg.payload
                    && let Some(l) = link_state(m)
                    && l.index == index
                    && l.oper_up
                {
                    return Ok(Some(true));
                }
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
            // Events that do not parse are not the ones awaited.
            for msg in frames(&self.buf[..n]).flatten() {
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

/// Sends the serialized netlink request `req` on `fd` from a detached child process
/// ([`fork_detached`]), which exits once the kernel has processed it.
fn spawn_detached_send(fd: i32, req: &[u8]) -> io::Result<()> {
    let child = || {
        // SAFETY: req is valid for its length.
        let rc = unsafe { libc::send(fd, req.as_ptr().cast(), req.len(), 0) };
        if rc < 0 { 1 } else { 0 }
    };
    // SAFETY: the child only calls send(2) (async-signal-safe) on the request serialized
    // before the fork.
    unsafe { fork_detached(child) }
}

pub(super) fn link_state(m: RouteNetlinkMessage) -> Option<LinkState> {
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
