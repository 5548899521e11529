//! berth-cni's network config: parsed with serde, then validated into a [`NetworkSpec`].
//!
//! Two shapes. Single NIC: the interface fields (`mode`, `bridge`, `master`, …) sit at the
//! top level and the interface is `CNI_IFNAME`. Several NICs: an `interfaces` list, each
//! with its own fields; then the top level must not carry interface fields (ambiguity is
//! refused, not guessed). Every error is code 7 and says which field to fix.

use std::collections::BTreeSet;
use std::net::IpAddr;

use berth_cni_spec::CniError;
use berth_cni_spec::IfName;
use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;

/// How a pod interface reaches the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A veth pair whose host end is a port of a Linux bridge.
    Bridge,
    /// A macvlan child (bridge mode) of a host NIC.
    Macvlan,
}

/// Who holds the gateway address in bridge mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum GatewayMode {
    /// The bridge gets the pool's gateway address (single-node networks).
    #[default]
    Bridge,
    /// The gateway is outside (a top-of-rack switch reached through the bridge's uplink).
    External,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConf {
    pub dst: IpNet,
    #[serde(default)]
    pub gw: Option<IpAddr>,
}

/// ARP behaviour around an address going live.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ArpConf {
    /// Probe for the address before using it (RFC 5227); refuse it if someone answers.
    #[serde(default)]
    pub probe: bool,
    /// Probes sent (all at once, then one wait).
    #[serde(default = "one")]
    pub probe_count: u32,
    /// How long to wait for an answer after the probes.
    #[serde(default = "probe_wait")]
    pub probe_timeout_ms: u64,
    /// Gratuitous ARPs announced after the address is up (0 = none).
    #[serde(default = "one")]
    pub garp_count: u32,
    /// Interval between gratuitous ARPs; the burst after the first runs in a detached
    /// helper so ADD does not wait for it.
    #[serde(default = "garp_interval")]
    pub garp_interval_ms: u64,
}

fn one() -> u32 {
    1
}
fn probe_wait() -> u64 {
    200
}
fn garp_interval() -> u64 {
    100
}

impl Default for ArpConf {
    fn default() -> Self {
        ArpConf {
            probe: false,
            probe_count: 1,
            probe_timeout_ms: probe_wait(),
            garp_count: 1,
            garp_interval_ms: garp_interval(),
        }
    }
}

/// One interface's fields as written (top level or in `interfaces`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IfaceConf {
    #[serde(default)]
    pub name: Option<IfName>,
    #[serde(default)]
    pub mode: Option<Mode>,
    #[serde(default)]
    pub bridge: Option<IfName>,
    #[serde(default)]
    pub gateway_mode: Option<GatewayMode>,
    #[serde(default)]
    pub uplink: Option<IfName>,
    #[serde(default)]
    pub master: Option<IfName>,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub mac: Option<String>,
    #[serde(default)]
    pub hairpin_mode: Option<bool>,
    #[serde(default)]
    pub pool: Option<String>,
    /// One pool per IP family (dual-stack), instead of `pool`.
    #[serde(default)]
    pub pools: Vec<String>,
    #[serde(default)]
    pub default_route: Option<bool>,
    #[serde(default)]
    pub routes: Vec<RouteConf>,
}

/// The whole berth-cni config as written. Spec fields are read by berth-cni-spec; they are
/// listed here only so `deny_unknown_fields` can catch typos in berth's own keys. The
/// single-NIC interface fields are repeated at the top level (serde cannot combine
/// `flatten` with `deny_unknown_fields`).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BerthConf {
    #[serde(default)]
    mode: Option<Mode>,
    #[serde(default)]
    bridge: Option<IfName>,
    #[serde(default)]
    gateway_mode: Option<GatewayMode>,
    #[serde(default)]
    uplink: Option<IfName>,
    #[serde(default)]
    master: Option<IfName>,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    mac: Option<String>,
    #[serde(default)]
    hairpin_mode: Option<bool>,
    #[serde(default)]
    pool: Option<String>,
    #[serde(default)]
    pools: Vec<String>,
    #[serde(default)]
    default_route: Option<bool>,
    #[serde(default)]
    routes: Vec<RouteConf>,
    #[serde(default)]
    pub interfaces: Option<Vec<IfaceConf>>,
    #[serde(default)]
    pub ip_forward: Option<bool>,
    #[serde(default)]
    pub arp: ArpConf,
    #[serde(default)]
    pub ipam: Option<Value>,
    // Spec fields, read by berth-cni-spec.
    #[serde(rename = "cniVersion")]
    _cni_version: Value,
    #[serde(rename = "name")]
    _name: Value,
    #[serde(rename = "type")]
    _plugin_type: Value,
    #[serde(default, rename = "capabilities")]
    _capabilities: Option<Value>,
    #[serde(default, rename = "dns")]
    _dns: Option<Value>,
    #[serde(default, rename = "runtimeConfig")]
    _runtime_config: Option<Value>,
    #[serde(default, rename = "prevResult")]
    _prev_result: Option<Value>,
    #[serde(default, rename = "cni.dev/valid-attachments")]
    _valid_attachments: Option<Value>,
    #[serde(default, rename = "cni.dev/attachments")]
    _attachments: Option<Value>,
}

impl BerthConf {
    fn top_iface(&self) -> IfaceConf {
        IfaceConf {
            name: None,
            mode: self.mode,
            bridge: self.bridge.clone(),
            gateway_mode: self.gateway_mode,
            uplink: self.uplink.clone(),
            master: self.master.clone(),
            mtu: self.mtu,
            mac: self.mac.clone(),
            hairpin_mode: self.hairpin_mode,
            pool: self.pool.clone(),
            pools: self.pools.clone(),
            default_route: self.default_route,
            routes: self.routes.clone(),
        }
    }
}

/// A validated interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfaceSpec {
    /// The name inside the pod.
    pub name: IfName,
    pub kind: IfaceKind,
    pub mtu: Option<u32>,
    pub mac: Option<[u8; 6]>,
    /// Pools named for the interface (`pool`, or `pools`: one per IP family); empty: IPAM
    /// picks them.
    pub pools: Vec<String>,
    pub default_route: bool,
    pub routes: Vec<RouteConf>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IfaceKind {
    Bridge {
        bridge: IfName,
        gateway_mode: GatewayMode,
        uplink: Option<IfName>,
        hairpin: bool,
    },
    Macvlan {
        master: IfName,
    },
}

/// A validated network: what the plan is built from.
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkSpec {
    pub interfaces: Vec<IfaceSpec>,
    pub ip_forward: bool,
    pub arp: ArpConf,
    pub ipam: Option<Value>,
}

fn bad(msg: impl Into<String>) -> CniError {
    CniError::invalid_config(msg)
}

/// Parses `02:00:0a:00:00:01` into bytes; must be unicast.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(format!("mac {s:?} is not six ':'-separated hex bytes"));
    }
    let mut out = [0u8; 6];
    for (o, p) in out.iter_mut().zip(&parts) {
        if p.len() != 2 {
            return Err(format!("mac {s:?} is not six ':'-separated hex bytes"));
        }
        *o = u8::from_str_radix(p, 16)
            .map_err(|_| format!("mac {s:?} is not six ':'-separated hex bytes"))?;
    }
    if out[0] & 1 == 1 {
        return Err(format!(
            "mac {s:?} is a multicast address; use a unicast one"
        ));
    }
    if out == [0; 6] {
        return Err(format!("mac {s:?} is all zeros"));
    }
    Ok(out)
}

pub fn is_default(dst: &IpNet) -> bool {
    dst.prefix_len() == 0
}

const MIN_MTU: u32 = 68;
const MAX_MTU: u32 = 65535;

impl NetworkSpec {
    /// Reads and validates the config. `ifname` is `CNI_IFNAME` (the single NIC's name, and
    /// the first NIC's default name).
    pub fn from_value(raw: &Value, ifname: &IfName) -> Result<NetworkSpec, CniError> {
        // The path names the field a bad value sits in (`interfaces[1].master`): names are
        // checked by their types while they are read.
        let conf: BerthConf = serde_path_to_error::deserialize(raw.clone()).map_err(|e| match e
            .path()
            .to_string()
        {
            path if path == "." => bad(format!("invalid berth-cni config: {}", e.inner())),
            path => bad(format!("invalid berth-cni config at {path}: {}", e.inner())),
        })?;
        NetworkSpec::from_conf(conf, ifname)
    }

    pub fn from_conf(conf: BerthConf, ifname: &IfName) -> Result<NetworkSpec, CniError> {
        let top = conf.top_iface();
        let listed = conf.interfaces.is_some();
        let raw_ifaces = match conf.interfaces {
            Some(list) => {
                if top != IfaceConf::default() {
                    return Err(bad(
                        "interface fields (mode, bridge, master, …) are set both at the top level and in \"interfaces\"",
                    )
                    .with_details("move them into the entries of \"interfaces\""));
                }
                if list.is_empty() {
                    return Err(bad("\"interfaces\" is empty: list at least one interface"));
                }
                list
            }
            None => vec![top],
        };
        let mut interfaces = Vec::with_capacity(raw_ifaces.len());
        for (i, c) in raw_ifaces.into_iter().enumerate() {
            let name = match (&c.name, i) {
                (Some(n), _) => n.clone(),
                (None, 0) => ifname.clone(),
                (None, i) => IfName::try_from(format!("eth{i}"))
                    .map_err(|e| bad(format!("interfaces[{i}]: {e}; give it a \"name\"")))?,
            };
            let at = if listed {
                format!("interfaces[{i}] ({name})")
            } else {
                "config".to_string()
            };
            interfaces.push(iface_spec(c, name, &at)?);
        }
        check_interfaces(&mut interfaces)?;
        let arp = conf.arp;
        if arp.probe && (arp.probe_count == 0 || arp.probe_count > 10) {
            return Err(bad(format!(
                "arp.probeCount {} is out of range: use 1 to 10",
                arp.probe_count
            )));
        }
        if arp.probe && (arp.probe_timeout_ms == 0 || arp.probe_timeout_ms > 5000) {
            return Err(bad(format!(
                "arp.probeTimeoutMs {} is out of range: use 1 to 5000",
                arp.probe_timeout_ms
            )));
        }
        if arp.garp_count > 20 {
            return Err(bad(format!(
                "arp.garpCount {} is out of range: use 0 to 20",
                arp.garp_count
            )));
        }
        if arp.garp_count > 1 && !(1..=10_000).contains(&arp.garp_interval_ms) {
            return Err(bad(format!(
                "arp.garpIntervalMs {} is out of range: use 1 to 10000",
                arp.garp_interval_ms
            )));
        }
        Ok(NetworkSpec {
            interfaces,
            ip_forward: conf.ip_forward.unwrap_or(false),
            arp,
            ipam: conf.ipam,
        })
    }

    /// The interface that carries the default route.
    pub fn default_interface(&self) -> &IfaceSpec {
        self.interfaces
            .iter()
            .find(|i| i.default_route)
            .expect("validated: exactly one default interface")
    }
}

fn iface_spec(c: IfaceConf, name: IfName, at: &str) -> Result<IfaceSpec, CniError> {
    let pools = match (c.pool.clone(), c.pools.clone()) {
        (Some(_), p) if !p.is_empty() => {
            return Err(bad(format!("{at}: both \"pool\" and \"pools\" are set"))
                .with_details("name one pool in \"pool\", or one per IP family in \"pools\""));
        }
        (Some(p), _) => vec![p],
        (None, p) => p,
    };
    let mode = c.mode.ok_or_else(|| {
        bad(format!("{at}: \"mode\" is missing"))
            .with_details("set \"mode\" to \"bridge\" or \"macvlan\"")
    })?;
    if let Some(mtu) = c.mtu
        && !(MIN_MTU..=MAX_MTU).contains(&mtu)
    {
        return Err(bad(format!(
            "{at}: mtu {mtu} is out of range: use {MIN_MTU} to {MAX_MTU}"
        )));
    }
    let mac = c
        .mac
        .as_deref()
        .map(parse_mac)
        .transpose()
        .map_err(|m| bad(format!("{at}: {m}")))?;
    let kind = match mode {
        Mode::Bridge => {
            if c.master.is_some() {
                return Err(bad(format!("{at}: \"master\" is for macvlan mode"))
                    .with_details("in bridge mode name the host NIC to enslave in \"uplink\""));
            }
            let bridge = c.bridge.ok_or_else(|| {
                bad(format!(
                    "{at}: bridge mode needs \"bridge\" (the bridge's name, e.g. berth0)"
                ))
            })?;
            if let Some(up) = &c.uplink
                && *up == bridge
            {
                return Err(bad(format!("{at}: uplink and bridge are both {up:?}")));
            }
            let gateway_mode = c.gateway_mode.unwrap_or(if c.uplink.is_some() {
                GatewayMode::External
            } else {
                GatewayMode::Bridge
            });
            IfaceKind::Bridge {
                bridge,
                gateway_mode,
                uplink: c.uplink,
                hairpin: c.hairpin_mode.unwrap_or(false),
            }
        }
        Mode::Macvlan => {
            for (field, set) in [
                ("bridge", c.bridge.is_some()),
                ("uplink", c.uplink.is_some()),
                ("gatewayMode", c.gateway_mode.is_some()),
                ("hairpinMode", c.hairpin_mode.is_some()),
            ] {
                if set {
                    return Err(bad(format!(
                        "{at}: \"{field}\" is for bridge mode, not macvlan"
                    )));
                }
            }
            let master = c.master.ok_or_else(|| {
                bad(format!("{at}: macvlan mode needs \"master\"")).with_details(
                    "name the host NIC the macvlan sits on, e.g. \"master\": \"eth1\"",
                )
            })?;
            IfaceKind::Macvlan { master }
        }
    };
    for r in &c.routes {
        if r.gw
            .is_some_and(|gw| gw.is_ipv4() != r.dst.addr().is_ipv4())
        {
            return Err(bad(format!(
                "{at}: route {} has a gateway of the other IP family",
                r.dst
            )));
        }
        if r.dst != r.dst.trunc() {
            return Err(bad(format!(
                "{at}: route destination {} has host bits set; did you mean {}?",
                r.dst,
                r.dst.trunc()
            )));
        }
    }
    Ok(IfaceSpec {
        name,
        kind,
        mtu: c.mtu,
        mac,
        pools,
        default_route: c.default_route.unwrap_or(false),
        routes: c.routes,
    })
}

/// Cross-interface rules: unique names, exactly one default route, no default route among
/// another interface's static routes, no two static routes to the same destination.
fn check_interfaces(ifaces: &mut [IfaceSpec]) -> Result<(), CniError> {
    let mut names = BTreeSet::new();
    for i in ifaces.iter() {
        if !names.insert(i.name.as_str()) {
            return Err(bad(format!("two interfaces are named {:?}", i.name))
                .with_details("give each entry of \"interfaces\" its own \"name\""));
        }
    }
    let marked: Vec<&str> = ifaces
        .iter()
        .filter(|i| i.default_route)
        .map(|i| i.name.as_str())
        .collect();
    if marked.len() > 1 {
        return Err(bad(format!(
            "two default routes: interfaces {} all set \"defaultRoute\": true",
            marked.join(", ")
        ))
        .with_details(
            "exactly one interface may carry the default route; give the others static \"routes\"",
        ));
    }
    if marked.is_empty() {
        ifaces[0].default_route = true;
    }
    let default_name = ifaces
        .iter()
        .find(|i| i.default_route)
        .map(|i| i.name.clone());
    for i in ifaces.iter() {
        if !i.default_route
            && let Some(r) = i.routes.iter().find(|r| is_default(&r.dst))
        {
            return Err(bad(format!(
                "two default routes: interface {} has a static route to {} but {} carries the default route",
                i.name,
                r.dst,
                default_name.as_deref().unwrap_or("?")
            ))
            .with_details("remove it, or move \"defaultRoute\": true to this interface"));
        }
    }
    let mut dsts = BTreeSet::new();
    for i in ifaces.iter() {
        for r in &i.routes {
            if !dsts.insert(r.dst) {
                return Err(bad(format!(
                    "route to {} is listed twice (last on {})",
                    r.dst, i.name
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_cni_spec::ErrorCode;
    use serde_json::json;

    fn base() -> Value {
        json!({"cniVersion": "1.1.0", "name": "net", "type": "berth-cni",
               "ipam": {"pools": []}})
    }

    fn with(fields: Value) -> Value {
        let mut v = base();
        for (k, val) in fields.as_object().unwrap() {
            v[k] = val.clone();
        }
        v
    }

    fn parse(fields: Value) -> Result<NetworkSpec, CniError> {
        NetworkSpec::from_value(&with(fields), &"eth0".parse().unwrap())
    }

    #[test]
    fn single_bridge_nic_takes_cni_ifname_and_defaults() {
        let s = parse(json!({"mode": "bridge", "bridge": "berth0"})).unwrap();
        assert_eq!(s.interfaces.len(), 1);
        let i = &s.interfaces[0];
        assert_eq!(i.name, "eth0");
        assert!(i.default_route);
        assert_eq!(
            i.kind,
            IfaceKind::Bridge {
                bridge: "berth0".parse().unwrap(),
                gateway_mode: GatewayMode::Bridge,
                uplink: None,
                hairpin: false
            }
        );
        assert!(!s.ip_forward);
        assert_eq!(s.arp, ArpConf::default());
        assert!(s.ipam.is_some());
    }

    #[test]
    fn uplink_means_external_gateway_unless_told_otherwise() {
        let s = parse(
            json!({"mode": "bridge", "bridge": "br-ext", "uplink": "eth1", "hairpinMode": true,
            "mtu": 9000, "mac": "02:00:00:00:00:05", "ipForward": true}),
        )
        .unwrap();
        let i = &s.interfaces[0];
        assert!(
            matches!(&i.kind, IfaceKind::Bridge { gateway_mode: GatewayMode::External, uplink: Some(u), hairpin: true, .. } if u == "eth1")
        );
        assert_eq!(i.mtu, Some(9000));
        assert_eq!(i.mac, Some([2, 0, 0, 0, 0, 5]));
        assert!(s.ip_forward);
        let s = parse(
            json!({"mode": "bridge", "bridge": "b", "uplink": "eth1", "gatewayMode": "bridge"}),
        )
        .unwrap();
        assert!(matches!(
            s.interfaces[0].kind,
            IfaceKind::Bridge {
                gateway_mode: GatewayMode::Bridge,
                ..
            }
        ));
    }

    #[test]
    fn macvlan_and_arp_settings() {
        let s = parse(json!({"mode": "macvlan", "master": "eth1",
            "arp": {"probe": true, "probeCount": 2, "probeTimeoutMs": 50, "garpCount": 3, "garpIntervalMs": 100}}))
        .unwrap();
        assert_eq!(
            s.interfaces[0].kind,
            IfaceKind::Macvlan {
                master: "eth1".parse().unwrap()
            }
        );
        assert_eq!(
            s.arp,
            ArpConf {
                probe: true,
                probe_count: 2,
                probe_timeout_ms: 50,
                garp_count: 3,
                garp_interval_ms: 100
            }
        );
    }

    #[test]
    fn several_nics_with_one_default_route() {
        let s = parse(json!({"interfaces": [
            {"name": "ext0", "mode": "macvlan", "master": "eth1", "pool": "ext"},
            {"name": "int0", "mode": "bridge", "bridge": "br-int", "pool": "int", "defaultRoute": true,
             "routes": [{"dst": "10.50.0.0/16"}]},
            {"mode": "bridge", "bridge": "br-x", "routes": [{"dst": "10.60.0.0/16", "gw": "10.61.0.1"}]}
        ]}))
        .unwrap();
        let names: Vec<_> = s.interfaces.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["ext0", "int0", "eth2"]);
        assert_eq!(s.default_interface().name, "int0");
        assert!(!s.interfaces[0].default_route);
        assert_eq!(s.interfaces[0].pools, ["ext"]);
        // Without a mark, the first interface carries the default route.
        let s = parse(json!({"interfaces": [
            {"mode": "bridge", "bridge": "a"}, {"mode": "bridge", "bridge": "b"}]}))
        .unwrap();
        assert_eq!(s.default_interface().name, "eth0");
        assert_eq!(s.interfaces[1].name, "eth1");
    }

    #[test]
    fn every_bad_value_is_code_7_naming_the_fix() {
        let cases: Vec<(Value, &str)> = vec![
            (
                json!({"mode": "ipvlan", "master": "eth1"}),
                "unknown variant `ipvlan`",
            ),
            (json!({"bridge": "b"}), "\"mode\" is missing"),
            (json!({"mode": "bridge"}), "needs \"bridge\""),
            (json!({"mode": "macvlan"}), "needs \"master\""),
            (
                json!({"mode": "macvlan", "master": "eth1", "bridge": "b"}),
                "\"bridge\" is for bridge mode",
            ),
            (
                json!({"mode": "macvlan", "master": "eth1", "hairpinMode": true}),
                "\"hairpinMode\" is for bridge mode",
            ),
            (
                json!({"mode": "bridge", "bridge": "b", "master": "eth1"}),
                "\"master\" is for macvlan",
            ),
            (
                json!({"mode": "bridge", "bridge": "b", "uplink": "b"}),
                "uplink and bridge",
            ),
            (
                json!({"mode": "bridge", "bridge": "a-very-long-bridge"}),
                "at most 15",
            ),
            (
                json!({"mode": "macvlan", "master": "eth1/x"}),
                "does not allow",
            ),
            (
                json!({"mode": "bridge", "bridge": "b", "mtu": 10}),
                "mtu 10 is out of range",
            ),
            (
                json!({"mode": "bridge", "bridge": "b", "mtu": 70000}),
                "mtu 70000 is out of range",
            ),
            (
                json!({"mode": "bridge", "bridge": "b", "mac": "zz:00:00:00:00:00"}),
                "hex bytes",
            ),
            (
                json!({"mode": "bridge", "bridge": "b", "mac": "01:00:00:00:00:01"}),
                "multicast",
            ),
            (
                json!({"mode": "bridge", "bridge": "b", "mac": "00:00:00:00:00:00"}),
                "all zeros",
            ),
            (
                json!({"mode": "bridge", "bridge": "b", "brigde": "x"}),
                "unknown field `brigde`",
            ),
            (
                json!({"mode": "bridge", "bridge": "b", "routes": [{"dst": "10.0.0.1/8"}]}),
                "host bits",
            ),
            (
                json!({"mode": "bridge", "bridge": "b", "routes": [{"dst": "10.0.0.0/8", "gw": "fd00::1"}]}),
                "other IP family",
            ),
            (
                json!({"mode": "bridge", "bridge": "b", "routes": [{"dst": "10.0.0.0/8"}, {"dst": "10.0.0.0/8"}]}),
                "listed twice",
            ),
            (
                json!({"mode": "bridge", "bridge": "b", "arp": {"probe": true, "probeCount": 0}}),
                "probeCount 0",
            ),
            (
                json!({"mode": "bridge", "bridge": "b", "arp": {"probe": true, "probeTimeoutMs": 9000}}),
                "probeTimeoutMs 9000",
            ),
            (
                json!({"mode": "bridge", "bridge": "b", "arp": {"garpCount": 21}}),
                "garpCount 21",
            ),
            (
                json!({"mode": "bridge", "bridge": "b", "arp": {"garpCount": 3, "garpIntervalMs": 0}}),
                "garpIntervalMs 0",
            ),
            (
                json!({"mode": "bridge", "bridge": "b", "arp": {"probes": 1}}),
                "unknown field `probes`",
            ),
            (
                json!({"mode": "bridge", "interfaces": [{"mode": "bridge", "bridge": "b"}]}),
                "both at the top level",
            ),
            (json!({"interfaces": []}), "is empty"),
            (
                json!({"interfaces": [{"name": "eth0123456789012", "mode": "bridge", "bridge": "b"}]}),
                "at interfaces[0].name: interface name \"eth0123456789012\" is 16 bytes",
            ),
            (
                json!({"interfaces": [
                {"name": "a", "mode": "bridge", "bridge": "b", "defaultRoute": true},
                {"name": "c", "mode": "macvlan", "master": "eth0:1"}]}),
                "at interfaces[1].master: interface name \"eth0:1\" contains ':'",
            ),
            (
                json!({"mode": "bridge", "bridge": "br/0"}),
                "at bridge: interface name \"br/0\" contains '/'",
            ),
            (
                json!({"mode": "bridge", "bridge": "b", "uplink": ""}),
                "at uplink: interface name is empty",
            ),
            (
                json!({"interfaces": [{"name": "a", "mode": "bridge", "bridge": "b"}, {"name": "a", "mode": "bridge", "bridge": "c"}]}),
                "two interfaces are named",
            ),
            (
                json!({"interfaces": [
                {"name": "a", "mode": "bridge", "bridge": "b", "defaultRoute": true},
                {"name": "c", "mode": "bridge", "bridge": "d", "defaultRoute": true}]}),
                "two default routes",
            ),
            (
                json!({"interfaces": [
                {"name": "a", "mode": "bridge", "bridge": "b"},
                {"name": "c", "mode": "bridge", "bridge": "d", "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}]}]}),
                "two default routes",
            ),
            (
                json!({"interfaces": [{"name": "a", "mode": "bridge", "bridge": "b", "master": "x"}]}),
                "interfaces[0] (a)",
            ),
            (
                json!({"mode": "bridge", "bridge": "b", "mtu": "big"}),
                "invalid type",
            ),
        ];
        for (fields, needle) in cases {
            let e = parse(fields.clone()).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidConfig, "{fields}");
            let text = e.to_string();
            assert!(text.contains(needle), "{fields}: {text}");
        }
    }

    #[test]
    fn pools_name_one_pool_per_family_and_exclude_pool() {
        let s = parse(json!({"interfaces": [
            {"name": "eth0", "mode": "bridge", "bridge": "b0", "pools": ["v4", "v6"], "defaultRoute": true}]}))
        .unwrap();
        assert_eq!(s.interfaces[0].pools, ["v4", "v6"]);
        let e = parse(json!({"mode": "bridge", "bridge": "b0", "pool": "v4", "pools": ["v6"]}))
            .unwrap_err();
        assert_eq!(e.code, berth_cni_spec::ErrorCode::InvalidConfig);
        assert!(e.to_string().contains("both \"pool\" and \"pools\""), "{e}");
    }

    #[test]
    fn mac_parsing() {
        assert_eq!(
            parse_mac("02:AB:cd:00:00:01").unwrap(),
            [2, 0xab, 0xcd, 0, 0, 1]
        );
        for bad in [
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "2:0:0:0:0:1",
            "02-00-00-00-00-01",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
    }
}
