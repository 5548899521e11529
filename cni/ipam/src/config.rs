//! The `ipam` object of a CNI network config, parsed with serde and validated into [`Pools`].
//!
//! Every key is documented in `cni/ipam/README.md`. Unknown keys are refused so a typo
//! (`"gatway"`) fails at ADD with code 7 instead of silently giving pods no gateway.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize};

use crate::allocator::RouteSpec;
use crate::error::IpamError;
use crate::pool::{Pool, Pools};

/// Default hold period after a sticky address is released.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(10 * 60);
/// Default tolerated clock difference between nodes writing the same store.
pub const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::from_secs(30);
/// Default node config path (`rack = "…"`, `node = "…"`).
pub const DEFAULT_NODE_CONFIG: &str = "/etc/berth/node.toml";
/// Default directory of the local store.
pub const DEFAULT_LOCAL_DIR: &str = "/var/lib/berth/ipam";

/// The network config's `ipam` object.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpamConfig {
    /// `"berth-ipam"` when used as a delegated IPAM plugin; ignored in-process.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub plugin_type: Option<String>,
    /// Where allocations live. Default: the local store in [`DEFAULT_LOCAL_DIR`].
    #[serde(default)]
    pub store: StoreConfig,
    /// Node config file with `rack` and `node`. Default [`DEFAULT_NODE_CONFIG`]; a missing file
    /// means "no rack" (only pools without `racks` are used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_config: Option<PathBuf>,
    /// Overrides the node config's rack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rack: Option<String>,
    /// Overrides the node config's node name (default: the hostname).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// How long a released sticky address stays reserved for its pod (`"10m"`, `"0s"`).
    #[serde(
        default = "default_hold",
        deserialize_with = "de_duration",
        serialize_with = "ser_duration"
    )]
    pub hold: Duration,
    /// Whether pods keep their address by namespace/name unless annotated `berth.io/sticky: "false"`.
    #[serde(default = "default_true")]
    pub sticky: bool,
    /// Largest tolerated difference between this node's clock and times recorded in the store.
    #[serde(
        default = "default_skew",
        deserialize_with = "de_duration",
        serialize_with = "ser_duration"
    )]
    pub max_clock_skew: Duration,
    /// History retention.
    #[serde(default)]
    pub history: HistoryConfig,
    /// The address pools, in order of preference.
    pub pools: Vec<PoolConfig>,
}

/// Which store holds the allocations.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum StoreConfig {
    /// One file per network under `dir`, guarded by `flock`, replaced atomically.
    Local {
        #[serde(default = "default_local_dir")]
        dir: PathBuf,
    },
    /// etcd v3: compare-and-swap transactions, safe across nodes.
    #[serde(rename_all = "camelCase")]
    Etcd {
        endpoints: Vec<String>,
        #[serde(default = "default_prefix")]
        prefix: String,
        /// Per-request timeout; on expiry the operation fails with code 11 and changes nothing.
        #[serde(
            default = "default_etcd_timeout",
            deserialize_with = "de_duration",
            serialize_with = "ser_duration"
        )]
        timeout: Duration,
    },
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig::Local {
            dir: default_local_dir(),
        }
    }
}

/// How much history to keep.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HistoryConfig {
    /// Newest events kept per network.
    #[serde(default = "default_max_events")]
    pub max_events: usize,
    /// Events older than this are dropped.
    #[serde(
        default = "default_retention",
        deserialize_with = "de_duration",
        serialize_with = "ser_duration"
    )]
    pub retention: Duration,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            max_events: default_max_events(),
            retention: default_retention(),
        }
    }
}

/// One address pool.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolConfig {
    pub name: String,
    pub subnet: IpNet,
    /// Address ranges inside `subnet`; default: every host address of the subnet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<RangeConfig>,
    /// The gateway (the TOR switch in underlay mode); never handed out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Addresses never handed out: `"10.0.0.5"`, `"10.0.0.64/28"` or `"10.0.0.7-10.0.0.9"`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    /// Racks this pool serves; empty: any rack (the fallback pool).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub racks: Vec<String>,
    /// When set, the pool is only used by pods annotated `berth.io/app-pool: <app>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
}

/// An inclusive address range.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RangeConfig {
    pub start: IpAddr,
    pub end: IpAddr,
}

impl IpamConfig {
    /// Parses the `ipam` object of a network config.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, IpamError> {
        IpamConfig::deserialize(value).map_err(|e| IpamError::InvalidConfig(e.to_string()))
    }

    /// Validates the pools (ranges inside subnets, no overlaps, gateway in subnet, …).
    pub fn pools(&self) -> Result<Pools, IpamError> {
        if self.pools.is_empty() {
            return Err(IpamError::InvalidConfig(
                "no pools: add at least one entry to \"pools\"".into(),
            ));
        }
        let mut pools: Vec<Pool> = Vec::with_capacity(self.pools.len());
        for pc in &self.pools {
            let pool = Pool::from_config(pc)?;
            if let Some(other) = pools.iter().find(|p| p.name == pool.name) {
                return Err(IpamError::InvalidConfig(format!(
                    "pool name {:?} is used twice",
                    other.name
                )));
            }
            if let Some(other) = pools.iter().find(|p| p.overlaps(&pool)) {
                return Err(IpamError::InvalidConfig(format!(
                    "pools {:?} and {:?} overlap: an address must belong to one pool",
                    other.name, pool.name
                )));
            }
            pools.push(pool);
        }
        if let StoreConfig::Etcd { endpoints, .. } = &self.store
            && endpoints.is_empty()
        {
            return Err(IpamError::InvalidConfig(
                "etcd store needs at least one endpoint".into(),
            ));
        }
        if self.history.max_events == 0 {
            return Err(IpamError::InvalidConfig(
                "history.maxEvents must be at least 1".into(),
            ));
        }
        Ok(Pools::new(pools))
    }
}

fn default_hold() -> Duration {
    DEFAULT_HOLD
}
fn default_skew() -> Duration {
    DEFAULT_MAX_CLOCK_SKEW
}
fn default_true() -> bool {
    true
}
fn default_local_dir() -> PathBuf {
    PathBuf::from(DEFAULT_LOCAL_DIR)
}
fn default_prefix() -> String {
    "/berth/ipam".into()
}
fn default_etcd_timeout() -> Duration {
    Duration::from_secs(3)
}
fn default_max_events() -> usize {
    10_000
}
fn default_retention() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s)
        .map_err(|e| serde::de::Error::custom(format!("bad duration {s:?}: {e}")))
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_full_config_with_defaults() {
        let c = IpamConfig::from_json(&json!({
            "type": "berth-ipam",
            "store": {"type": "etcd", "endpoints": ["http://127.0.0.1:2379"], "timeout": "2s"},
            "rack": "r12",
            "hold": "5m",
            "pools": [{"name": "a", "subnet": "10.12.0.0/24", "gateway": "10.12.0.1",
                       "exclude": ["10.12.0.5"], "racks": ["r12"], "vlan": 12,
                       "routes": [{"dst": "0.0.0.0/0"}]}]
        }))
        .unwrap();
        assert_eq!(c.hold, Duration::from_secs(300));
        assert!(c.sticky);
        assert_eq!(c.max_clock_skew, DEFAULT_MAX_CLOCK_SKEW);
        assert_eq!(
            c.store,
            StoreConfig::Etcd {
                endpoints: vec!["http://127.0.0.1:2379".into()],
                prefix: "/berth/ipam".into(),
                timeout: Duration::from_secs(2)
            }
        );
        assert_eq!(c.pools().unwrap().iter().count(), 1);
    }

    #[test]
    fn refuses_typos_and_bad_pools() {
        let typo = IpamConfig::from_json(
            &json!({"pools": [{"name": "a", "subnet": "10.0.0.0/24", "gatway": "10.0.0.1"}]}),
        );
        assert!(matches!(typo, Err(IpamError::InvalidConfig(m)) if m.contains("gatway")));
        let overlap = IpamConfig::from_json(&json!({"pools": [
            {"name": "a", "subnet": "10.0.0.0/24"}, {"name": "b", "subnet": "10.0.0.128/25"}]}))
        .unwrap()
        .pools();
        assert!(matches!(overlap, Err(IpamError::InvalidConfig(m)) if m.contains("overlap")));
        let dup = IpamConfig::from_json(&json!({"pools": [
            {"name": "a", "subnet": "10.0.0.0/24"}, {"name": "a", "subnet": "10.0.1.0/24"}]}))
        .unwrap()
        .pools();
        assert!(matches!(dup, Err(IpamError::InvalidConfig(m)) if m.contains("twice")));
        let none = IpamConfig::from_json(&json!({"pools": []}))
            .unwrap()
            .pools();
        assert!(matches!(none, Err(IpamError::InvalidConfig(m)) if m.contains("no pools")));
        let dur = IpamConfig::from_json(&json!({"hold": "ten minutes", "pools": []}));
        assert!(matches!(dur, Err(IpamError::InvalidConfig(m)) if m.contains("bad duration")));
    }

    #[test]
    fn round_trips_through_json() {
        let c = IpamConfig::from_json(&json!({"pools": [{"name": "a", "subnet": "10.0.0.0/24"}]}))
            .unwrap();
        let back = IpamConfig::from_json(&serde_json::to_value(&c).unwrap()).unwrap();
        assert_eq!(c, back);
    }
}
