//! The ADD result (and CHECK's `prevResult`), held in the 1.1.0 shape and rendered per version.
//!
//! Differences by version: before 1.0.0 every IP carries `"version": "4"|"6"`; 1.1.0 adds
//! the interface's `mtu`, `socketPath` and `pciID` and the route's `mtu`, `advmss`,
//! `priority`, `table` and `scope`, which older versions leave out.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::{CniError, ErrorCode};
use crate::version::CniVersion;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path for interfaces inside the container; `None` for host-side ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    #[serde(
        default,
        rename = "socketPath",
        skip_serializing_if = "Option::is_none"
    )]
    pub socket_path: Option<String>,
    #[serde(default, rename = "pciID", skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address with prefix length, e.g. `10.244.0.5/24`.
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

impl Route {
    pub fn new(dst: IpNet, gw: Option<IpAddr>) -> Route {
        Route {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::config::null_default"
    )]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::config::null_default"
    )]
    pub search: Vec<String>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::config::null_default"
    )]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        *self == Dns::default()
    }
}

/// A plugin's result, version-independent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(default, deserialize_with = "crate::config::null_default")]
    pub interfaces: Vec<Interface>,
    #[serde(default, deserialize_with = "crate::config::null_default")]
    pub ips: Vec<IpConfig>,
    #[serde(default, deserialize_with = "crate::config::null_default")]
    pub routes: Vec<Route>,
    #[serde(
        default,
        skip_serializing_if = "Dns::is_empty",
        deserialize_with = "crate::config::null_default"
    )]
    pub dns: Dns,
}

impl CniResult {
    /// Renders the result as `version` defines it, with `cniVersion` set.
    pub fn to_value(&self, version: CniVersion) -> Value {
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(version.as_str()));
        let new_fields = version >= CniVersion::V1_1_0;
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut v = serde_json::to_value(i).expect("interface serializes");
                if !new_fields {
                    let m = v.as_object_mut().expect("object");
                    for k in ["mtu", "socketPath", "pciID"] {
                        m.remove(k);
                    }
                }
                v
            })
            .collect();
        if !interfaces.is_empty() {
            out.insert("interfaces".into(), Value::Array(interfaces));
        }
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut v = serde_json::to_value(ip).expect("ip serializes");
                if version.ip_has_version_field() {
                    let fam = if ip.address.addr().is_ipv4() {
                        "4"
                    } else {
                        "6"
                    };
                    v.as_object_mut()
                        .expect("object")
                        .insert("version".into(), json!(fam));
                }
                v
            })
            .collect();
        if !ips.is_empty() {
            out.insert("ips".into(), Value::Array(ips));
        }
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut v = serde_json::to_value(r).expect("route serializes");
                if !new_fields {
                    let m = v.as_object_mut().expect("object");
                    for k in ["mtu", "advmss", "priority", "table", "scope"] {
                        m.remove(k);
                    }
                }
                v
            })
            .collect();
        if !routes.is_empty() {
            out.insert("routes".into(), Value::Array(routes));
        }
        if !self.dns.is_empty() {
            out.insert(
                "dns".into(),
                serde_json::to_value(&self.dns).expect("dns serializes"),
            );
        }
        Value::Object(out)
    }

    /// Reads a result (e.g. `prevResult`) of any spoken version.
    pub fn from_value(v: &Value) -> Result<CniResult, CniError> {
        if let Some(ver) = v.get("cniVersion").and_then(Value::as_str) {
            ver.parse::<CniVersion>()?;
        }
        if v.get("ip4").is_some() || v.get("ip6").is_some() {
            return Err(CniError::new(
                ErrorCode::IncompatibleVersion,
                "prevResult uses the pre-0.3.0 ip4/ip6 shape",
            )
            .with_details("use cniVersion 0.3.0 or newer"));
        }
        serde_json::from_value(v.clone()).map_err(|e| {
            CniError::new(ErrorCode::Decode, "cannot decode result").with_details(e.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: Some("02:00:00:00:00:01".into()),
                mtu: Some(1500),
                sandbox: Some("/var/run/netns/x".into()),
                socket_path: None,
                pci_id: None,
            }],
            ips: vec![
                IpConfig {
                    address: "10.1.0.5/24".parse().unwrap(),
                    gateway: Some("10.1.0.1".parse().unwrap()),
                    interface: Some(0),
                },
                IpConfig {
                    address: "fd00::5/64".parse().unwrap(),
                    gateway: None,
                    interface: Some(0),
                },
            ],
            routes: vec![Route {
                priority: Some(10),
                ..Route::new(
                    "0.0.0.0/0".parse().unwrap(),
                    Some("10.1.0.1".parse().unwrap()),
                )
            }],
            dns: Dns {
                nameservers: vec!["10.1.0.53".into()],
                ..Dns::default()
            },
        }
    }

    #[test]
    fn v1_1_keeps_new_fields_and_has_no_ip_version() {
        let v = sample().to_value(CniVersion::V1_1_0);
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["interfaces"][0]["mtu"], 1500);
        assert_eq!(v["routes"][0]["priority"], 10);
        assert!(v["ips"][0].get("version").is_none());
        assert_eq!(v["ips"][0]["address"], "10.1.0.5/24");
        assert_eq!(v["dns"]["nameservers"][0], "10.1.0.53");
    }

    #[test]
    fn v1_0_drops_1_1_fields() {
        let v = sample().to_value(CniVersion::V1_0_0);
        assert_eq!(v["cniVersion"], "1.0.0");
        assert!(v["interfaces"][0].get("mtu").is_none());
        assert!(v["routes"][0].get("priority").is_none());
        assert_eq!(v["routes"][0]["gw"], "10.1.0.1");
        assert!(v["ips"][0].get("version").is_none());
    }

    #[test]
    fn pre_1_0_versions_add_ip_version_per_family() {
        for ver in [CniVersion::V0_3_0, CniVersion::V0_3_1, CniVersion::V0_4_0] {
            let v = sample().to_value(ver);
            assert_eq!(v["cniVersion"], ver.as_str());
            assert_eq!(v["ips"][0]["version"], "4");
            assert_eq!(v["ips"][1]["version"], "6");
            assert_eq!(v["ips"][0]["interface"], 0);
            assert!(v["interfaces"][0].get("mtu").is_none());
        }
    }

    #[test]
    fn every_version_parses_back_to_what_it_can_carry() {
        let full = sample();
        let back = CniResult::from_value(&full.to_value(CniVersion::V1_1_0)).unwrap();
        assert_eq!(back, full);
        for ver in [CniVersion::V0_3_1, CniVersion::V0_4_0, CniVersion::V1_0_0] {
            let back = CniResult::from_value(&full.to_value(ver)).unwrap();
            assert_eq!(back.ips, full.ips, "{ver}");
            assert_eq!(back.interfaces[0].mtu, None);
            assert_eq!(back.routes[0].priority, None);
            assert_eq!(back.routes[0].dst, full.routes[0].dst);
        }
    }

    #[test]
    fn bad_prev_results_say_why() {
        let e = CniResult::from_value(&json!({"cniVersion": "0.2.0", "ip4": {}})).unwrap_err();
        assert_eq!(e.code, ErrorCode::IncompatibleVersion);
        let e =
            CniResult::from_value(&json!({"cniVersion": "1.0.0", "ips": [{"address": "nope"}]}))
                .unwrap_err();
        assert_eq!(e.code, ErrorCode::Decode);
    }
}
