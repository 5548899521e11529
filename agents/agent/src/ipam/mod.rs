//! The node's IPAM as the agent sees it: the network named by `ipam_network`, served by the
//! API's `Ipam` service ([`backend`] over the core's admin calls: [`core`]), and the collection of leases that the runtime leaked
//! ([`collector`], fed by the pod sandboxes NRI reports: [`sandboxes`]).

pub mod backend;
pub mod collector;
pub mod core;
pub mod sandboxes;

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use berth_ipam_core::{Ipam, IpamConfig, StoreConfig};

/// A CNI network with berth's IPAM: its name (the key of its leases) and the allocator.
#[derive(Clone)]
pub struct Network {
    pub name: String,
    pub ipam: Arc<Ipam>,
    /// Whether the store holds other nodes' leases too (etcd): then only this node's are ours.
    pub shared_store: bool,
}

/// The `ipam` section of the berth-cni or berth-ipam plugin in a CNI network config.
pub fn ipam_section(netconf: &serde_json::Value) -> Option<&serde_json::Value> {
    fn from_plugin(plugin: &serde_json::Value) -> Option<&serde_json::Value> {
        let ipam = plugin.get("ipam")?;
        let type_of =
            |v: &serde_json::Value| v.get("type").and_then(|t| t.as_str()).map(str::to_owned);
        let berth = type_of(plugin).as_deref() == Some("berth-cni")
            || type_of(ipam).as_deref() == Some("berth-ipam");
        berth.then_some(ipam)
    }
    match netconf.get("plugins").and_then(|p| p.as_array()) {
        Some(plugins) => plugins.iter().find_map(from_plugin),
        None => from_plugin(netconf),
    }
}

/// Reads and checks `ipam_network`: valid JSON, a network name, a berth IPAM section.
pub fn read_network(path: &Path) -> anyhow::Result<(String, IpamConfig)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read ipam_network {}", path.display()))?;
    let netconf: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("ipam_network {} is not valid JSON", path.display()))?;
    let name = netconf
        .get("name")
        .and_then(|n| n.as_str())
        .filter(|n| !n.is_empty())
        .with_context(|| {
            format!(
                "ipam_network {} has no network \"name\": leases are kept per network name",
                path.display()
            )
        })?
        .to_string();
    let section = ipam_section(&netconf).with_context(|| {
        format!(
            "ipam_network {} has no berth-cni plugin or berth-ipam ipam section",
            path.display()
        )
    })?;
    let config = IpamConfig::from_json(section)
        .with_context(|| format!("the ipam section of {}", path.display()))?;
    config
        .pools()
        .with_context(|| format!("the ipam section of {}", path.display()))?;
    Ok((name, config))
}

/// Opens the IPAM of `ipam_network` (its store, node identity and pools).
pub fn open_network(path: &Path) -> anyhow::Result<Network> {
    let (name, config) = read_network(path)?;
    let ipam = Ipam::open(&config).with_context(|| {
        format!(
            "cannot open the IPAM store of {} (network {name})",
            path.display()
        )
    })?;
    Ok(Network {
        name,
        ipam: Arc::new(ipam),
        shared_store: matches!(config.store, StoreConfig::Etcd { .. }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_ipam_of_berth_cni_in_a_conflist() {
        let conf = serde_json::json!({"plugins": [
            {"type": "berth-cni", "ipam": {"pools": [1]}},
            {"type": "portmap"}
        ]});
        assert_eq!(
            ipam_section(&conf),
            Some(&serde_json::json!({"pools": [1]}))
        );
    }

    #[test]
    fn finds_berth_ipam_under_a_reference_plugin_and_ignores_others() {
        let conf = serde_json::json!({"plugins": [
            {"type": "bridge", "ipam": {"type": "host-local"}},
            {"type": "macvlan", "ipam": {"type": "berth-ipam", "pools": []}}
        ]});
        assert_eq!(ipam_section(&conf).unwrap()["type"], "berth-ipam");
        let plain = serde_json::json!({"type": "bridge", "ipam": {"type": "host-local"}});
        assert_eq!(ipam_section(&plain), None);
    }

    #[test]
    fn read_network_says_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let err = |p: &Path| format!("{:#}", read_network(p).unwrap_err());
        assert!(err(&dir.path().join("absent.conflist")).contains("cannot read ipam_network"));
        assert!(err(&write("bad.conflist", "{")).contains("not valid JSON"));
        let reference = write(
            "ref.conflist",
            r#"{"name": "n", "plugins": [{"type": "bridge", "ipam": {"type": "host-local"}}]}"#,
        );
        assert!(err(&reference).contains("no berth-cni plugin or berth-ipam"));
        let nameless = write(
            "nameless.conflist",
            r#"{"plugins": [{"type": "berth-cni", "ipam": {"pools": [{"name": "a", "subnet": "10.0.0.0/24"}]}}]}"#,
        );
        assert!(err(&nameless).contains("no network \"name\""));
        let no_pools = write(
            "nopools.conflist",
            r#"{"name": "n", "plugins": [{"type": "berth-cni", "ipam": {"pools": []}}]}"#,
        );
        assert!(err(&no_pools).contains("no pools"));
        let good = write(
            "good.conflist",
            r#"{"name": "berth", "plugins": [{"type": "berth-cni", "ipam": {"pools": [{"name": "a", "subnet": "10.0.0.0/24"}]}}]}"#,
        );
        assert_eq!(read_network(&good).unwrap().0, "berth");
    }
}
