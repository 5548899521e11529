//! The etcd keys of one network, all under `<prefix>/<network>/`:
//!
//! | key | value | what |
//! |---|---|---|
//! | `leases/<ip>` | lease (JSON) | one per address in use, held or reserved |
//! | `attachments/<containerID>/<ifname>` and `…/<ifname>/ipv6` | `<ip>` | the attachment's address of each family, so one attachment never holds two of one family |
//! | `sticky/<namespace>/<name>/<ip>` | empty | the addresses stuck to a pod or app key, so a returning pod finds them without reading the network |
//! | `blocks/<pool>/<first ip>` | claim (JSON: node, since) | a block of a pool given to one node |
//! | `nodes/<node>/<pool>/<first ip>` | empty | the blocks of a node, so it finds them with one read |
//! | `layout` | `2` | the sticky index is complete (written once by the migration) |
//! | `migration` | node | the lock of the migration, attached to an etcd lease |
//! | `history/<unix-nanos>-<tag>-<n>` | event (JSON) | keys sort by time, so pruning is one range delete |
//!
//! Leases and attachments have kept the layout of the first etcd store, so a node that still
//! runs an older berth reads and writes the same addresses safely during a rolling upgrade.

use std::net::IpAddr;

use crate::state::Sticky;

/// The value of `layout` once the sticky index is complete.
pub(super) const LAYOUT_INDEXED: &str = "2";

/// Key builder for one network.
#[derive(Clone, Debug)]
pub(super) struct Keys {
    base: String,
}

impl Keys {
    pub fn new(prefix: &str, network: &str) -> Keys {
        Keys {
            base: format!("{prefix}/{network}/"),
        }
    }

    fn key(&self, rest: std::fmt::Arguments<'_>) -> String {
        format!("{}{rest}", self.base)
    }

    pub fn leases(&self) -> String {
        self.key(format_args!("leases/"))
    }

    pub fn lease(&self, ip: IpAddr) -> String {
        self.key(format_args!("leases/{ip}"))
    }

    /// The guard key of an attachment's address of `ip`'s family. IPv4 keeps the key of
    /// single-stack berth, which also held an IPv6-only attachment's address before
    /// dual-stack (see `commit.rs`).
    pub fn attachment(&self, (container_id, ifname): (&str, &str), ip: IpAddr) -> String {
        match ip {
            IpAddr::V4(_) => self.key(format_args!("attachments/{container_id}/{ifname}")),
            IpAddr::V6(_) => self.key(format_args!("attachments/{container_id}/{ifname}/ipv6")),
        }
    }

    /// The guard keys of both families, IPv4 first.
    pub fn attachments(&self, a: (&str, &str)) -> [String; 2] {
        [
            self.attachment(a, IpAddr::from([0u8; 4])),
            self.attachment(a, IpAddr::from([0u16; 8])),
        ]
    }

    /// The index keys of every interface of a pod (or app key) start with this.
    pub fn sticky_prefix(&self, namespace: &str, name: &str) -> String {
        self.key(format_args!("sticky/{namespace}/{name}/"))
    }

    pub fn sticky(&self, sticky: &Sticky, ip: IpAddr) -> String {
        format!(
            "{}{ip}",
            self.sticky_prefix(&sticky.namespace, &sticky.name)
        )
    }

    pub fn pool_blocks(&self, pool: &str) -> String {
        self.key(format_args!("blocks/{pool}/"))
    }

    pub fn block(&self, pool: &str, first: IpAddr) -> String {
        self.key(format_args!("blocks/{pool}/{first}"))
    }

    pub fn node_blocks(&self, node: &str) -> String {
        self.key(format_args!("nodes/{node}/"))
    }

    pub fn node_block(&self, node: &str, pool: &str, first: IpAddr) -> String {
        self.key(format_args!("nodes/{node}/{pool}/{first}"))
    }

    pub fn history(&self, nanos: u64, tag: u32, n: usize) -> String {
        self.key(format_args!("history/{nanos:020}-{tag:08x}-{n:04}"))
    }

    pub fn layout(&self) -> String {
        self.key(format_args!("layout"))
    }

    pub fn migration(&self) -> String {
        self.key(format_args!("migration"))
    }

    /// The address a key ends with (`…/<ip>`), if it does.
    pub fn trailing_ip(key: &[u8]) -> Option<IpAddr> {
        let key = std::str::from_utf8(key).ok()?;
        key.rsplit('/').next()?.parse().ok()
    }

    /// The `(pool, first ip)` of a key under [`Keys::node_blocks`].
    pub fn node_block_of(&self, node: &str, key: &[u8]) -> Option<(String, IpAddr)> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(&self.node_blocks(node))?;
        let (pool, ip) = rest.split_once('/')?;
        Some((pool.to_string(), ip.parse().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_a_network() {
        let k = Keys::new("/berth/ipam", "net1");
        let ip: IpAddr = "10.1.0.5".parse().unwrap();
        assert_eq!(k.lease(ip), "/berth/ipam/net1/leases/10.1.0.5");
        assert_eq!(
            k.attachments(("c1", "eth0")),
            [
                "/berth/ipam/net1/attachments/c1/eth0",
                "/berth/ipam/net1/attachments/c1/eth0/ipv6"
            ]
        );
        let s = Sticky {
            namespace: "ns".into(),
            name: "web-0".into(),
            ifname: Some("eth0".into()),
        };
        assert_eq!(
            k.sticky(&s, ip),
            "/berth/ipam/net1/sticky/ns/web-0/10.1.0.5"
        );
        assert!(
            k.sticky(&s, ip)
                .starts_with(&k.sticky_prefix("ns", "web-0"))
        );
        assert!(!k.sticky(&s, ip).starts_with(&k.sticky_prefix("ns", "web")));
        let v6: IpAddr = "fd00::40".parse().unwrap();
        let nb = k.node_block("n1", "a", v6);
        assert_eq!(nb, "/berth/ipam/net1/nodes/n1/a/fd00::40");
        assert_eq!(k.node_block_of("n1", nb.as_bytes()), Some(("a".into(), v6)));
        assert_eq!(k.node_block_of("n2", nb.as_bytes()), None);
        assert_eq!(Keys::trailing_ip(k.block("a", v6).as_bytes()), Some(v6));
    }
}
