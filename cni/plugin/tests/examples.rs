//! The shipped conflists (`cni/examples/*.conflist`) are valid berth-cni and IPAM configs.

use std::path::Path;

use berth_cni::config::{IfaceKind, NetworkSpec};
use serde_json::Value;

fn load(name: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap())
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The berth-cni entry of a conflist, as a runtime hands it to the plugin.
fn berth_entry(list: &Value) -> Value {
    let mut p = list["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["type"] == "berth-cni")
        .expect("a berth-cni plugin")
        .clone();
    p["cniVersion"] = list["cniVersion"].clone();
    p["name"] = list["name"].clone();
    p
}

fn spec(name: &str) -> (Value, NetworkSpec) {
    let list = load(name);
    let entry = berth_entry(&list);
    berth_cni_spec::NetConf::parse(entry.to_string().as_bytes())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let spec = NetworkSpec::from_value(&entry, &"eth0".parse().unwrap())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let ipam = berth_ipam_core::IpamConfig::from_json(&entry["ipam"])
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    ipam.pools().unwrap_or_else(|e| panic!("{name}: {e}"));
    (list, spec)
}

#[test]
fn bridge_conflist_is_a_single_node_bridge_chained_with_portmap() {
    let (list, s) = spec("bridge.conflist");
    assert!(
        matches!(&s.interfaces[0].kind, IfaceKind::Bridge { bridge, uplink: None, .. } if bridge == "berth0")
    );
    let plugins = list["plugins"].as_array().unwrap();
    assert_eq!(plugins[1]["type"], "portmap");
    assert_eq!(plugins[1]["capabilities"]["portMappings"], true);
    // Debian's portmap speaks up to 1.0.0; the chain must not ask for more.
    assert_eq!(list["cniVersion"], "1.0.0");
    assert_eq!(
        berth_entry(&list)["ipam"]["pools"][0]["subnet"],
        "10.244.0.0/24"
    );
}

#[test]
fn underlay_macvlan_and_multi_nic_conflists_are_valid() {
    let (_, s) = spec("underlay-bridge.conflist");
    assert!(matches!(
        &s.interfaces[0].kind,
        IfaceKind::Bridge {
            uplink: Some(_),
            ..
        }
    ));
    assert!(s.arp.probe && s.arp.garp_count == 3);
    let (_, s) = spec("macvlan.conflist");
    assert!(matches!(&s.interfaces[0].kind, IfaceKind::Macvlan { .. }));
    let (_, s) = spec("multi-nic.conflist");
    assert_eq!(s.interfaces.len(), 2);
    assert_eq!(s.interfaces.iter().filter(|i| i.default_route).count(), 1);
    assert_eq!(s.default_interface().name, "eth0");
}

#[test]
fn dual_stack_conflist_gives_the_bridge_a_gateway_of_each_family() {
    let (list, s) = spec("dual-stack.conflist");
    assert!(
        matches!(&s.interfaces[0].kind, IfaceKind::Bridge { bridge, uplink: None, gateway_mode, .. }
            if bridge == "berth0" && *gateway_mode == berth_cni::config::GatewayMode::Bridge)
    );
    let pools = berth_entry(&list)["ipam"]["pools"].clone();
    assert_eq!(pools[0]["subnet"], "10.244.0.0/24");
    assert_eq!(pools[1]["subnet"], "fd00:244::/64");
    assert_eq!(pools[1]["gateway"], "fd00:244::1");
}
