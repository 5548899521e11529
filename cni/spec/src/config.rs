//! The network config on stdin: the fields every plugin shares, and a typed view for the rest.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{CniError, ErrorCode};
use crate::names::NetworkName;
use crate::result::{CniResult, Dns};
use crate::version::CniVersion;

/// The annotation capability containerd fills with the pod's annotations.
pub const POD_ANNOTATIONS: &str = "io.kubernetes.cri.pod-annotations";
/// GC's list of attachments still in use (CNI 1.1).
pub const VALID_ATTACHMENTS: &str = "cni.dev/valid-attachments";
/// The older spelling of [`VALID_ATTACHMENTS`], still accepted.
pub const ATTACHMENTS_LEGACY: &str = "cni.dev/attachments";

/// `capabilities` as a conflist declares them (which `runtimeConfig` keys it wants).
pub type Capabilities = BTreeMap<String, bool>;

/// One `portMappings` entry: berth passes these on untouched (portmap does the work).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    #[serde(default = "tcp")]
    pub protocol: String,
    #[serde(default, rename = "hostIP", skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<IpAddr>,
}

fn tcp() -> String {
    "tcp".into()
}

/// Reads `null` as the type's default: runtimes send e.g. `"io.kubernetes.cri.pod-annotations":
/// null` for a pod without annotations.
pub(crate) fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// What the runtime put in `runtimeConfig` for the capabilities the conflist asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeConfig {
    /// The pod's annotations (`io.kubernetes.cri.pod-annotations`).
    #[serde(
        default,
        rename = "io.kubernetes.cri.pod-annotations",
        deserialize_with = "null_default"
    )]
    pub pod_annotations: BTreeMap<String, String>,
    #[serde(default, rename = "portMappings", deserialize_with = "null_default")]
    pub port_mappings: Vec<PortMapping>,
    /// Requested addresses (`ips` capability), with or without prefix length.
    #[serde(default, deserialize_with = "null_default")]
    pub ips: Vec<String>,
    /// Requested MAC address (`mac` capability).
    #[serde(default)]
    pub mac: Option<String>,
    /// Every other capability, untouched.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// An attachment GC must keep.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GcAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The fields of a network config that the spec defines.
#[derive(Clone, Debug, PartialEq)]
pub struct NetConf {
    pub cni_version: CniVersion,
    pub name: NetworkName,
    pub plugin_type: String,
    pub capabilities: Capabilities,
    /// The `ipam` section, for the plugin (or a delegated IPAM plugin) to read.
    pub ipam: Option<Value>,
    pub dns: Option<Dns>,
    pub runtime_config: RuntimeConfig,
    /// `prevResult` (CHECK, DEL and chained ADD), decoded from whatever version it was in.
    pub prev_result: Option<CniResult>,
    /// `cni.dev/valid-attachments` (GC only).
    pub valid_attachments: Option<Vec<GcAttachment>>,
    /// The whole config as received, for [`NetConf::plugin_config`] and for delegation.
    pub raw: Value,
}

#[derive(Deserialize)]
struct Common {
    #[serde(rename = "cniVersion")]
    cni_version: Option<String>,
    name: Option<String>,
    #[serde(rename = "type")]
    plugin_type: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    capabilities: Capabilities,
    #[serde(default)]
    ipam: Option<Value>,
    #[serde(default)]
    dns: Option<Dns>,
    #[serde(default, rename = "runtimeConfig")]
    runtime_config: Option<RuntimeConfig>,
    #[serde(default, rename = "prevResult")]
    prev_result: Option<Value>,
    #[serde(default, rename = "cni.dev/valid-attachments")]
    valid: Option<Vec<GcAttachment>>,
    #[serde(default, rename = "cni.dev/attachments")]
    legacy: Option<Vec<GcAttachment>>,
}

/// The `cniVersion` of a config if it can be read and is spoken (to answer errors in it).
pub fn peek_version(stdin: &[u8]) -> Option<CniVersion> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    v.get("cniVersion")?.as_str()?.parse().ok()
}

impl NetConf {
    /// Decodes stdin: malformed JSON is code 6, a missing or wrong common field code 7, an
    /// unknown `cniVersion` code 1.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let raw: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                ErrorCode::Decode,
                "network config on stdin is not valid JSON",
            )
            .with_details(e.to_string())
        })?;
        if !raw.is_object() {
            return Err(CniError::new(
                ErrorCode::Decode,
                "network config on stdin is not a JSON object",
            ));
        }
        let c: Common = serde_json::from_value(raw.clone()).map_err(|e| {
            CniError::invalid_config("network config has a malformed common field")
                .with_details(e.to_string())
        })?;
        let version = c.cni_version.ok_or_else(|| {
            CniError::invalid_config("network config has no cniVersion")
                .with_details("add \"cniVersion\": \"1.1.0\"")
        })?;
        let cni_version: CniVersion = version.parse()?;
        let name = c.name.ok_or_else(|| {
            CniError::invalid_config("network config has no name")
                .with_details("add a \"name\" for the network")
        })?;
        let name = NetworkName::try_from(name).map_err(|e| {
            CniError::invalid_config(e.to_string())
                .with_details("name the network in the config's \"name\"")
        })?;
        let plugin_type = c.plugin_type.ok_or_else(|| {
            CniError::invalid_config("network config has no type")
                .with_details("\"type\" names the plugin binary")
        })?;
        let prev_result = c
            .prev_result
            .as_ref()
            .map(CniResult::from_value)
            .transpose()?;
        Ok(NetConf {
            cni_version,
            name,
            plugin_type,
            capabilities: c.capabilities,
            ipam: c.ipam,
            dns: c.dns,
            runtime_config: c.runtime_config.unwrap_or_default(),
            prev_result,
            valid_attachments: c.valid.or(c.legacy),
            raw,
        })
    }

    /// The whole config read as the plugin's own type; a mismatch is code 7 naming the field.
    pub fn plugin_config<T: DeserializeOwned>(&self) -> Result<T, CniError> {
        serde_json::from_value(self.raw.clone()).map_err(|e| {
            CniError::invalid_config(format!("invalid {} config: {e}", self.plugin_type))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<NetConf, CniError> {
        NetConf::parse(v.to_string().as_bytes())
    }

    #[test]
    fn full_config_with_runtime_config_and_prev_result() {
        let c = parse(json!({
            "cniVersion": "1.1.0", "name": "berth", "type": "berth-cni",
            "capabilities": {"io.kubernetes.cri.pod-annotations": true, "portMappings": true},
            "ipam": {"pool": "a"},
            "runtimeConfig": {
                "io.kubernetes.cri.pod-annotations": {"berth.dev/ip": "10.0.0.9"},
                "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
                "bandwidth": {"ingressRate": 1}
            },
            "prevResult": {"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "10.0.0.9/24"}]}
        }))
        .unwrap();
        assert_eq!(c.cni_version, CniVersion::V1_1_0);
        assert_eq!(c.name, "berth");
        assert_eq!(c.plugin_type, "berth-cni");
        assert_eq!(c.capabilities.get(POD_ANNOTATIONS), Some(&true));
        assert_eq!(c.runtime_config.pod_annotations["berth.dev/ip"], "10.0.0.9");
        assert_eq!(c.runtime_config.port_mappings[0].host_port, 8080);
        assert!(c.runtime_config.other.contains_key("bandwidth"));
        assert_eq!(
            c.prev_result.unwrap().ips[0].address,
            "10.0.0.9/24".parse::<ipnet::IpNet>().unwrap()
        );
        assert_eq!(c.ipam, Some(json!({"pool": "a"})));
    }

    #[test]
    fn nulls_from_runtimes_read_as_empty() {
        let c = parse(json!({"cniVersion": "1.0.0", "name": "n", "type": "t", "capabilities": null,
            "dns": {"nameservers": null},
            "runtimeConfig": {"io.kubernetes.cri.pod-annotations": null, "portMappings": null, "ips": null}}))
        .unwrap();
        assert!(c.runtime_config.pod_annotations.is_empty());
        assert!(c.runtime_config.port_mappings.is_empty());
        assert!(c.capabilities.is_empty());
        assert!(c.dns.unwrap().nameservers.is_empty());
    }

    #[test]
    fn gc_attachments_in_both_spellings() {
        let c = parse(json!({"cniVersion": "1.1.0", "name": "n", "type": "t",
            "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]}))
        .unwrap();
        assert_eq!(c.valid_attachments.unwrap()[0].container_id, "c1");
        let c = parse(json!({"cniVersion": "1.1.0", "name": "n", "type": "t",
            "cni.dev/attachments": [{"containerID": "c2", "ifname": "eth1"}]}))
        .unwrap();
        assert_eq!(c.valid_attachments.unwrap()[0].ifname, "eth1");
    }

    #[test]
    fn each_bad_input_has_its_code() {
        assert_eq!(
            NetConf::parse(b"{not json").unwrap_err().code,
            ErrorCode::Decode
        );
        assert_eq!(NetConf::parse(b"[1]").unwrap_err().code, ErrorCode::Decode);
        let cases = [
            (
                json!({"name": "n", "type": "t"}),
                ErrorCode::InvalidConfig,
                "cniVersion",
            ),
            (
                json!({"cniVersion": "9.9.9", "name": "n", "type": "t"}),
                ErrorCode::IncompatibleVersion,
                "9.9.9",
            ),
            (
                json!({"cniVersion": "1.1.0", "type": "t"}),
                ErrorCode::InvalidConfig,
                "name",
            ),
            (
                json!({"cniVersion": "1.1.0", "name": "-x", "type": "t"}),
                ErrorCode::InvalidConfig,
                "name",
            ),
            (
                json!({"cniVersion": "1.1.0", "name": "n"}),
                ErrorCode::InvalidConfig,
                "type",
            ),
            (
                json!({"cniVersion": 1, "name": "n", "type": "t"}),
                ErrorCode::InvalidConfig,
                "common field",
            ),
            (
                json!({"cniVersion": "1.1.0", "name": "n", "type": "t",
                "prevResult": {"ips": [{"address": "x"}]}}),
                ErrorCode::Decode,
                "result",
            ),
        ];
        for (v, code, needle) in cases {
            let e = parse(v.clone()).unwrap_err();
            assert_eq!(e.code, code, "{v}");
            assert!(e.to_string().contains(needle), "{v}: {e}");
        }
    }

    #[test]
    fn plugin_config_errors_are_code_7_and_name_the_problem() {
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct Mine {
            mtu: u32,
        }
        let c =
            parse(json!({"cniVersion": "1.0.0", "name": "n", "type": "t", "mtu": "big"})).unwrap();
        let e = c.plugin_config::<Mine>().unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidConfig);
        assert!(e.msg.contains("invalid type"), "{}", e.msg);
    }

    #[test]
    fn peek_version_reads_only_spoken_versions() {
        assert_eq!(
            peek_version(br#"{"cniVersion":"0.4.0"}"#),
            Some(CniVersion::V0_4_0)
        );
        assert_eq!(peek_version(br#"{"cniVersion":"7"}"#), None);
        assert_eq!(peek_version(b"garbage"), None);
    }
}
