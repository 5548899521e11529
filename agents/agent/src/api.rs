//! Starts the gRPC API (berth-api) beside the NRI plugin: the `[api]` section, the file-log
//! layout as the Logs backend, and the node's IPAM (from `ipam_network`) as the Ipam backend.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use crate::config::Config;

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

fn open_ipam(path: &Path) -> anyhow::Result<berth_ipam_core::Ipam> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read ipam_network {}", path.display()))?;
    let netconf: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("ipam_network {} is not valid JSON", path.display()))?;
    let section = ipam_section(&netconf).with_context(|| {
        format!(
            "ipam_network {} has no berth-cni plugin or berth-ipam ipam section",
            path.display()
        )
    })?;
    let config = berth_ipam_core::IpamConfig::from_json(section)
        .with_context(|| format!("the ipam section of {}", path.display()))?;
    Ok(berth_ipam_core::Ipam::open(&config)?)
}

/// Whether the config asks for the API at all.
pub fn wanted(config: &Config) -> bool {
    config.api.listen.is_some() || !config.api.server.is_empty()
}

/// Validates the `[api]` section (unknown keys, TCP without TLS). Files it names (certs,
/// policy, `ipam_network`) are the node's and are checked when the agent starts.
pub fn check(config: &Config) -> anyhow::Result<()> {
    let api =
        berth_api::ApiConfig::from_agent_section(config.api.listen.as_deref(), &config.api.server)
            .context("invalid [api] section")?;
    api.validate().context("invalid [api] section")?;
    Ok(())
}

/// Builds the server from the agent's config; `serve` runs it until `shutdown`.
pub fn server(config: &Config) -> anyhow::Result<berth_api::ServerBuilder> {
    let api =
        berth_api::ApiConfig::from_agent_section(config.api.listen.as_deref(), &config.api.server)
            .context("invalid [api] section")?;
    let mut builder =
        berth_api::Server::builder(api).logs(berth_api::DirLayout::new(&config.filelogs.log_root));
    if let Some(path) = &config.ipam_network {
        builder = builder.ipam(berth_api::CoreIpam::new(Arc::new(open_ipam(path)?)));
    }
    Ok(builder)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_refuses_a_typo_in_the_api_section() {
        let text = "[api]\nunix_socket = \"/run/berth/api.sock\"\npolicy = \"/p\"\n[api.audit]\npath = \"/a\"\nkep = 3\n";
        let config: Config = toml::from_str(text).unwrap();
        let err = check(&config).unwrap_err();
        assert!(format!("{err:#}").contains("kep"), "{err:#}");
        let good: Config = toml::from_str(&text.replace("kep = 3\n", "")).unwrap();
        check(&good).unwrap();
    }

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
}
