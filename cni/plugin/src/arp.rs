//! ARP frames (RFC 826) for probes (RFC 5227) and gratuitous announcements, and the raw
//! `AF_PACKET` socket that sends and receives them inside a namespace.

use crate::detach::fork_detached;
use crate::sockwait::{Received, recv_before};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

pub const ETH_P_ARP: u16 = 0x0806;
pub const FRAME_LEN: usize = 42;
pub const BROADCAST: [u8; 6] = [0xff; 6];

pub const OP_REQUEST: u16 = 1;
pub const OP_REPLY: u16 = 2;

/// An Ethernet/IPv4 ARP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpPacket {
    pub op: u16,
    pub sender_mac: [u8; 6],
    pub sender_ip: Ipv4Addr,
    pub target_mac: [u8; 6],
    pub target_ip: Ipv4Addr,
}

impl ArpPacket {
    /// An RFC 5227 probe: "who has `ip`?" from sender address 0.0.0.0.
    pub fn probe(mac: [u8; 6], ip: Ipv4Addr) -> ArpPacket {
        ArpPacket {
            op: OP_REQUEST,
            sender_mac: mac,
            sender_ip: Ipv4Addr::UNSPECIFIED,
            target_mac: [0; 6],
            target_ip: ip,
        }
    }

    /// An RFC 5227 announcement (gratuitous ARP request): sender and target are `ip`.
    pub fn announcement(mac: [u8; 6], ip: Ipv4Addr) -> ArpPacket {
        ArpPacket {
            op: OP_REQUEST,
            sender_mac: mac,
            sender_ip: ip,
            target_mac: [0; 6],
            target_ip: ip,
        }
    }

    /// The Ethernet frame: broadcast for requests, to the target MAC for replies.
    pub fn to_frame(&self) -> [u8; FRAME_LEN] {
        let mut f = [0u8; FRAME_LEN];
        let dst = if self.op == OP_REQUEST {
            BROADCAST
        } else {
            self.target_mac
        };
        f[0..6].copy_from_slice(&dst);
        f[6..12].copy_from_slice(&self.sender_mac);
        f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
        f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
        f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
        f[18] = 6;
        f[19] = 4;
        f[20..22].copy_from_slice(&self.op.to_be_bytes());
        f[22..28].copy_from_slice(&self.sender_mac);
        f[28..32].copy_from_slice(&self.sender_ip.octets());
        f[32..38].copy_from_slice(&self.target_mac);
        f[38..42].copy_from_slice(&self.target_ip.octets());
        f
    }

    /// Reads an Ethernet frame; `None` unless it is Ethernet/IPv4 ARP.
    pub fn parse(frame: &[u8]) -> Option<ArpPacket> {
        if frame.len() < FRAME_LEN
            || frame[12..14] != ETH_P_ARP.to_be_bytes()
            || frame[14..16] != 1u16.to_be_bytes()
            || frame[16..18] != 0x0800u16.to_be_bytes()
            || frame[18] != 6
            || frame[19] != 4
        {
            return None;
        }
        let mac = |r: std::ops::Range<usize>| <[u8; 6]>::try_from(&frame[r]).expect("6 bytes");
        let ip = |r: std::ops::Range<usize>| {
            Ipv4Addr::from(<[u8; 4]>::try_from(&frame[r]).expect("4 bytes"))
        };
        Some(ArpPacket {
            op: u16::from_be_bytes([frame[20], frame[21]]),
            sender_mac: mac(22..28),
            sender_ip: ip(28..32),
            target_mac: mac(32..38),
            target_ip: ip(38..42),
        })
    }

    /// Whether this packet, seen while probing for `ip` from `mine`, shows that another host
    /// has (or is probing for) the address (RFC 5227 section 2.1.1).
    pub fn conflicts_with(&self, ip: Ipv4Addr, mine: [u8; 6]) -> bool {
        if self.sender_mac == mine {
            return false;
        }
        self.sender_ip == ip
            || (self.op == OP_REQUEST
                && self.sender_ip == Ipv4Addr::UNSPECIFIED
                && self.target_ip == ip)
    }
}

/// A raw `AF_PACKET` socket for ARP (or, [opened for](ArpSocket::open_for) `ETH_P_IPV6`, for
/// NDP); the namespace it lives in is the one it was created in.
#[derive(Debug)]
pub struct ArpSocket {
    fd: OwnedFd,
    /// The EtherType it receives (host order).
    proto: u16,
}

fn sockaddr(index: u32, proto: u16, dst: [u8; 6]) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = proto.to_be();
    sa.sll_ifindex = index as i32;
    sa.sll_halen = 6;
    sa.sll_addr[..6].copy_from_slice(&dst);
    sa
}

impl ArpSocket {
    /// Opens the socket in the calling thread's network namespace.
    pub fn open() -> io::Result<ArpSocket> {
        ArpSocket::open_for(ETH_P_ARP)
    }

    /// Opens a socket that receives frames of EtherType `proto`.
    pub fn open_for(proto: u16) -> io::Result<ArpSocket> {
        // SAFETY: plain socket(2) call; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(proto.to_be()),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor socket(2) just returned; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(ArpSocket { fd, proto })
    }

    /// Receives only from link `index` from now on.
    pub fn bind(&self, index: u32) -> io::Result<()> {
        let sa = sockaddr(index, self.proto, [0; 6]);
        // SAFETY: sa is a valid sockaddr_ll of the given size.
        let rc = unsafe {
            libc::bind(
                self.fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    pub fn send(&self, index: u32, packet: &ArpPacket) -> io::Result<()> {
        self.send_frame(index, &packet.to_frame())
    }

    /// Sends a whole Ethernet frame (its destination MAC first) from link `index`.
    pub fn send_frame(&self, index: u32, frame: &[u8]) -> io::Result<()> {
        send_raw(self.fd.as_raw_fd(), index, self.proto, frame)
    }

    /// Receives frames until `deadline`, returning the first that `want` accepts.
    pub fn recv_frame_until<T>(
        &self,
        deadline: Instant,
        want: impl Fn(&[u8]) -> Option<T>,
    ) -> io::Result<Option<T>> {
        let mut buf = [0u8; 256];
        loop {
            let n = match recv_before(self.fd.as_raw_fd(), &mut buf, deadline)? {
                Received::Data(n) => n,
                Received::Again => continue,
                Received::TimedOut => return Ok(None),
            };
            if let Some(t) = want(&buf[..n]) {
                return Ok(Some(t));
            }
        }
    }

    /// Receives ARP packets until `deadline`, returning the first that `want` accepts.
    pub fn recv_until(
        &self,
        deadline: Instant,
        want: impl Fn(&ArpPacket) -> bool,
    ) -> io::Result<Option<ArpPacket>> {
        let mut buf = [0u8; 128];
        loop {
            let n = match recv_before(self.fd.as_raw_fd(), &mut buf, deadline)? {
                Received::Data(n) => n,
                Received::Again => continue,
                Received::TimedOut => return Ok(None),
            };
            if let Some(p) = ArpPacket::parse(&buf[..n])
                && want(&p)
            {
                return Ok(Some(p));
            }
        }
    }
}

/// sendto(2) of one Ethernet frame; async-signal-safe (used after fork).
fn send_raw(fd: i32, index: u32, proto: u16, frame: &[u8]) -> io::Result<()> {
    let sa = sockaddr(
        index,
        proto,
        [frame[0], frame[1], frame[2], frame[3], frame[4], frame[5]],
    );
    // SAFETY: frame and sa are valid for their lengths.
    let rc = unsafe {
        libc::sendto(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&sa as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Keeps `sock` open in a detached child for a moment, so that this process's close is not
/// the last one (that one waits for an RCU grace period).
pub fn hold_in_background(sock: &ArpSocket) -> io::Result<()> {
    let dummy = ArpPacket::announcement([0; 6], Ipv4Addr::UNSPECIFIED).to_frame();
    announce_in_background(sock, 0, &dummy, 0, Duration::ZERO)
}

/// How long the detached helper keeps the socket after its last send, so that the plugin
/// process (exiting within milliseconds) never holds the last reference.
const HOLD: Duration = Duration::from_millis(200);

/// Sends `count` more copies of `frame` (an announcement) `interval` apart from a detached
/// child process ([`fork_detached`]), so the plugin can answer the runtime at once; the
/// child keeps the socket a little longer (see [`hold_in_background`]).
pub fn announce_in_background(
    sock: &ArpSocket,
    index: u32,
    frame: &[u8],
    count: u32,
    interval: Duration,
) -> io::Result<()> {
    let proto = sock.proto;
    let fd = sock.raw_fd();
    let ts = libc::timespec {
        tv_sec: interval.as_secs() as _, // time_t: named by the field, whatever the C library calls it
        tv_nsec: interval.subsec_nanos() as libc::c_long,
    };
    let hold = libc::timespec {
        tv_sec: 0,
        tv_nsec: HOLD.subsec_nanos() as libc::c_long,
    };
    let child = || {
        for _ in 0..count {
            // SAFETY: ts is a valid timespec; no remainder is asked for.
            unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
            let _ = send_raw(fd, index, proto, frame);
        }
        // SAFETY: as above.
        unsafe { libc::nanosleep(&hold, std::ptr::null_mut()) };
        0
    };
    // SAFETY: the child only calls nanosleep and sendto (async-signal-safe) on the frame
    // and timespecs prepared above; send_raw neither allocates nor panics.
    unsafe { fork_detached(child) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const OTHER: [u8; 6] = [2, 0, 0, 0, 0, 2];

    #[test]
    fn probe_frame_is_broadcast_with_zero_sender_ip() {
        let ip = Ipv4Addr::new(10, 1, 0, 5);
        let f = ArpPacket::probe(MAC, ip).to_frame();
        assert_eq!(&f[0..6], &BROADCAST);
        assert_eq!(&f[6..12], &MAC);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1]);
        assert_eq!(&f[28..32], &[0, 0, 0, 0]);
        assert_eq!(&f[38..42], &[10, 1, 0, 5]);
        assert_eq!(ArpPacket::parse(&f), Some(ArpPacket::probe(MAC, ip)));
    }

    #[test]
    fn announcement_has_sender_and_target_ip_equal() {
        let ip = Ipv4Addr::new(10, 1, 0, 5);
        let p = ArpPacket::parse(&ArpPacket::announcement(MAC, ip).to_frame()).unwrap();
        assert_eq!(p.sender_ip, ip);
        assert_eq!(p.target_ip, ip);
        assert_eq!(p.op, OP_REQUEST);
    }

    #[test]
    fn reply_goes_to_the_target_mac() {
        let p = ArpPacket {
            op: OP_REPLY,
            sender_mac: OTHER,
            sender_ip: Ipv4Addr::new(10, 1, 0, 5),
            target_mac: MAC,
            target_ip: Ipv4Addr::UNSPECIFIED,
        };
        assert_eq!(&p.to_frame()[0..6], &MAC);
    }

    #[test]
    fn conflicts_follow_rfc_5227() {
        let ip = Ipv4Addr::new(10, 1, 0, 5);
        let reply = ArpPacket {
            op: OP_REPLY,
            sender_mac: OTHER,
            sender_ip: ip,
            target_mac: MAC,
            target_ip: Ipv4Addr::UNSPECIFIED,
        };
        assert!(reply.conflicts_with(ip, MAC));
        assert!(ArpPacket::probe(OTHER, ip).conflicts_with(ip, MAC));
        // Our own probe echoed back, and traffic about other addresses, are no conflict.
        assert!(!ArpPacket::probe(MAC, ip).conflicts_with(ip, MAC));
        assert!(
            !ArpPacket::announcement(OTHER, Ipv4Addr::new(10, 1, 0, 6)).conflicts_with(ip, MAC)
        );
    }

    #[test]
    fn non_arp_frames_are_ignored() {
        let mut f = ArpPacket::probe(MAC, Ipv4Addr::LOCALHOST).to_frame();
        f[12] = 0x08;
        f[13] = 0x00;
        assert_eq!(ArpPacket::parse(&f), None);
        assert_eq!(ArpPacket::parse(&f[..20]), None);
    }
}
