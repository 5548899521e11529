//! NDP frames (RFC 4861) for IPv6's twins of the ARP probe and gratuitous ARP: berth's own
//! duplicate address probe (a neighbour solicitation from `::` to the target's
//! solicited-node group, as RFC 4862 section 5.4 sends it) and unsolicited neighbour
//! advertisements (RFC 4861 section 7.2.6). They travel on an [`ArpSocket`] opened for
//! `ETH_P_IPV6`.
//!
//! berth adds pod IPv6 addresses without the kernel's own DAD (`IFA_F_NODAD`), so they are
//! usable when ADD returns instead of `tentative` for about a second; in the underlay modes
//! this probe guards against duplicates instead.
//!
//! [`ArpSocket`]: crate::arp::ArpSocket

use std::net::Ipv6Addr;

pub const ETH_P_IPV6: u16 = 0x86dd;

const ICMPV6: u8 = 58;
const NEIGHBOR_SOLICITATION: u8 = 135;
const NEIGHBOR_ADVERTISEMENT: u8 = 136;
/// The Override flag of an advertisement: replace cached link-layer addresses.
const FLAG_OVERRIDE: u8 = 0x20;
const OPT_TARGET_LL: u8 = 2;
const ETH: usize = 14;
const IP6: usize = 40;
/// Every node on the link.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// The solicited-node multicast group of `ip` (`ff02::1:ffXX:XXXX`).
pub fn solicited_node(ip: Ipv6Addr) -> Ipv6Addr {
    let o = ip.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// The Ethernet address of an IPv6 multicast group (`33:33` and its last 32 bits).
pub fn multicast_mac(group: Ipv6Addr) -> [u8; 6] {
    let o = group.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// What a received NDP frame says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NdpPacket {
    /// A solicitation (else an advertisement).
    pub solicitation: bool,
    /// The Ethernet source.
    pub sender_mac: [u8; 6],
    pub source: Ipv6Addr,
    pub target: Ipv6Addr,
}

impl NdpPacket {
    /// Whether this packet, seen while probing for `ip` from `mine`, shows that another node
    /// has the address (an advertisement of it) or is probing for it too (a solicitation
    /// from `::`), as RFC 4862 section 5.4.3 and 5.4.4 count them.
    pub fn conflicts_with(&self, ip: Ipv6Addr, mine: [u8; 6]) -> bool {
        self.sender_mac != mine
            && self.target == ip
            && (!self.solicitation || self.source == Ipv6Addr::UNSPECIFIED)
    }

    /// Reads an Ethernet frame; `None` unless it is a well-formed neighbour solicitation or
    /// advertisement (hop limit 255, checksum right).
    pub fn parse(frame: &[u8]) -> Option<NdpPacket> {
        if frame.len() < ETH + IP6 + 24
            || frame[12..14] != ETH_P_IPV6.to_be_bytes()
            || frame[ETH] >> 4 != 6
            || frame[ETH + 6] != ICMPV6
            || frame[ETH + 7] != 255
        {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([frame[ETH + 4], frame[ETH + 5]]));
        let icmp = frame.get(ETH + IP6..ETH + IP6 + len)?;
        let addr = |b: &[u8]| Ipv6Addr::from(<[u8; 16]>::try_from(b).expect("16 bytes"));
        let source = addr(&frame[ETH + 8..ETH + 24]);
        let dest = addr(&frame[ETH + 24..ETH + 40]);
        if icmp.len() < 24 || checksum(source, dest, icmp) != 0 || icmp[1] != 0 {
            return None;
        }
        let solicitation = match icmp[0] {
            NEIGHBOR_SOLICITATION => true,
            NEIGHBOR_ADVERTISEMENT => false,
            _ => return None,
        };
        Some(NdpPacket {
            solicitation,
            sender_mac: <[u8; 6]>::try_from(&frame[6..12]).expect("6 bytes"),
            source,
            target: addr(&icmp[8..24]),
        })
    }
}

/// The probe for `target` from `mac`: a solicitation from `::` (no source link-layer
/// option, as RFC 4861 requires then) to the target's solicited-node group.
pub fn probe_frame(mac: [u8; 6], target: Ipv6Addr) -> Vec<u8> {
    let group = solicited_node(target);
    let mut icmp = vec![NEIGHBOR_SOLICITATION, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&target.octets());
    frame(
        mac,
        multicast_mac(group),
        Ipv6Addr::UNSPECIFIED,
        group,
        icmp,
    )
}

/// An unsolicited advertisement of `ip` at `mac` to every node, with Override set so
/// neighbours replace a stale cache entry (the MAC a re-created pod had before).
pub fn advertisement_frame(mac: [u8; 6], ip: Ipv6Addr) -> Vec<u8> {
    let mut icmp = vec![NEIGHBOR_ADVERTISEMENT, 0, 0, 0, FLAG_OVERRIDE, 0, 0, 0];
    icmp.extend_from_slice(&ip.octets());
    icmp.extend_from_slice(&[OPT_TARGET_LL, 1]);
    icmp.extend_from_slice(&mac);
    frame(mac, multicast_mac(ALL_NODES), ip, ALL_NODES, icmp)
}

fn frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    mut icmp: Vec<u8>,
) -> Vec<u8> {
    let sum = checksum(src, dst, &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut f = Vec::with_capacity(ETH + IP6 + icmp.len());
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    f.extend_from_slice(&[ICMPV6, 255]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&icmp);
    f
}

/// The ICMPv6 checksum over the pseudo-header and `icmp` (0 when `icmp` carries a right one).
fn checksum(src: Ipv6Addr, dst: Ipv6Addr, icmp: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(icmp.len() as u32).to_be_bytes());
    add(&[0, 0, 0, ICMPV6]);
    add(icmp);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const OTHER: [u8; 6] = [2, 0, 0, 0, 0, 2];

    fn ip(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn solicited_node_group_and_its_mac() {
        let g = solicited_node(ip("fd00:244::12:3456"));
        assert_eq!(g, ip("ff02::1:ff12:3456"));
        assert_eq!(multicast_mac(g), [0x33, 0x33, 0xff, 0x12, 0x34, 0x56]);
        assert_eq!(multicast_mac(ALL_NODES), [0x33, 0x33, 0, 0, 0, 1]);
    }

    #[test]
    fn probe_is_a_solicitation_from_unspecified_to_the_group() {
        let f = probe_frame(MAC, ip("fd00:244::20"));
        assert_eq!(&f[0..6], &[0x33, 0x33, 0xff, 0, 0, 0x20]);
        assert_eq!(f.len(), 14 + 40 + 24, "no link-layer option from ::");
        let p = NdpPacket::parse(&f).expect("parses back, checksum right");
        assert!(p.solicitation);
        assert_eq!(p.source, Ipv6Addr::UNSPECIFIED);
        assert_eq!(p.target, ip("fd00:244::20"));
        // Our own probe is no conflict; another node's probe for the same address is.
        assert!(!p.conflicts_with(ip("fd00:244::20"), MAC));
        assert!(p.conflicts_with(ip("fd00:244::20"), OTHER));
        assert!(!p.conflicts_with(ip("fd00:244::21"), OTHER));
    }

    #[test]
    fn advertisement_overrides_and_carries_the_mac() {
        let f = advertisement_frame(MAC, ip("fd00:244::20"));
        assert_eq!(&f[0..6], &[0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!(f[14 + 40 + 4], FLAG_OVERRIDE);
        assert_eq!(&f[f.len() - 8..], &[2, 1, 2, 0, 0, 0, 0, 1]);
        let p = NdpPacket::parse(&f).unwrap();
        assert!(!p.solicitation);
        assert_eq!(p.source, ip("fd00:244::20"));
        assert!(p.conflicts_with(ip("fd00:244::20"), OTHER));
        // A solicitation from a configured address (address resolution) is no conflict.
        let mut ns = probe_frame(OTHER, ip("fd00:244::20"));
        ns[14 + 8..14 + 24].copy_from_slice(&ip("fd00:244::9").octets());
        let icmp_sum = checksum(ip("fd00:244::9"), solicited_node(ip("fd00:244::20")), &{
            let mut c = ns[54..].to_vec();
            c[2] = 0;
            c[3] = 0;
            c
        });
        ns[56..58].copy_from_slice(&icmp_sum.to_be_bytes());
        let p = NdpPacket::parse(&ns).expect("valid");
        assert!(!p.conflicts_with(ip("fd00:244::20"), MAC));
    }

    #[test]
    fn damaged_or_foreign_frames_are_ignored() {
        let mut f = advertisement_frame(MAC, ip("fd00::1"));
        f[60] ^= 1;
        assert_eq!(NdpPacket::parse(&f), None, "bad checksum");
        let mut hop = advertisement_frame(MAC, ip("fd00::1"));
        hop[14 + 7] = 64;
        assert_eq!(NdpPacket::parse(&hop), None, "hop limit must be 255");
        assert_eq!(NdpPacket::parse(&[0u8; 20]), None);
        let arp = crate::arp::ArpPacket::probe(MAC, "10.0.0.1".parse().unwrap()).to_frame();
        assert_eq!(NdpPacket::parse(&arp), None);
    }
}
