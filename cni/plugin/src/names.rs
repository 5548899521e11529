//! Deterministic names and aliases of host-side links, so DEL and GC find them without state.

/// Prefix of every host veth end berth-cni creates.
pub const HOST_VETH_PREFIX: &str = "bv";
/// Prefix of the alias (`IFLA_IFALIAS`) on host veth ends: `berth:<network>:<container>:<ifname>`.
pub const ALIAS_PREFIX: &str = "berth:";

fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The host end of the veth for one attachment: `bv` + 13 hex digits (15 bytes, Linux's limit).
pub fn host_veth_name(network: &str, container_id: &str, ifname: &str) -> String {
    let h = fnv1a(&[network, container_id, ifname]) & ((1u64 << 52) - 1);
    format!("{HOST_VETH_PREFIX}{h:013x}")
}

/// A fixed, locally administered MAC for a bridge berth-cni creates. Without one a Linux
/// bridge takes the lowest MAC of its ports, so the pods' gateway MAC would change whenever
/// a pod comes or goes and their ARP caches would go stale.
pub fn bridge_mac(bridge: &str) -> [u8; 6] {
    let h = fnv1a(&["bridge", bridge]).to_be_bytes();
    [0x02, h[1], h[2], h[3], h[4], h[5]]
}

/// The alias recording which attachment a host link belongs to.
pub fn attachment_alias(network: &str, container_id: &str, ifname: &str) -> String {
    format!("{ALIAS_PREFIX}{network}:{container_id}:{ifname}")
}

/// Reads an alias back into (network, container id, ifname).
pub fn parse_alias(alias: &str) -> Option<(&str, &str, &str)> {
    let rest = alias.strip_prefix(ALIAS_PREFIX)?;
    let (network, rest) = rest.split_once(':')?;
    let (container, ifname) = rest.rsplit_once(':')?;
    Some((network, container, ifname))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_are_stable_distinct_and_fit_ifnamsiz() {
        let a = host_veth_name("net", "c1", "eth0");
        assert_eq!(a, host_veth_name("net", "c1", "eth0"));
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("bv"));
        assert_ne!(a, host_veth_name("net", "c1", "eth1"));
        assert_ne!(a, host_veth_name("net", "c2", "eth0"));
        assert_ne!(a, host_veth_name("net2", "c1", "eth0"));
        // The separator keeps ("ab","c") and ("a","bc") apart.
        assert_ne!(
            host_veth_name("ab", "c", "x"),
            host_veth_name("a", "bc", "x")
        );
    }

    #[test]
    fn bridge_macs_are_stable_unicast_and_local() {
        let m = bridge_mac("berth0");
        assert_eq!(m, bridge_mac("berth0"));
        assert_ne!(m, bridge_mac("berth1"));
        assert_eq!(m[0], 0x02);
    }

    #[test]
    fn aliases_round_trip() {
        let al = attachment_alias("net-1", "abc:def", "eth0");
        assert_eq!(parse_alias(&al), Some(("net-1", "abc:def", "eth0")));
        assert_eq!(parse_alias("something else"), None);
    }
}
