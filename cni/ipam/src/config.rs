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
    /// Which pods keep their address by namespace/name when not annotated `berth.io/sticky`.
    #[serde(default)]
    pub sticky: StickyDefault,
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
        /// TLS for `https://` endpoints: the cluster's CA and, when etcd runs with
        /// `--client-cert-auth`, this node's client certificate and key (PEM files).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tls: Option<EtcdTls>,
        /// etcd user authentication (`etcdctl auth enable`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        auth: Option<EtcdAuth>,
        /// Addresses per node-affine block (a power of two, 4 to 64; default 64): a node
        /// searches its own blocks of a pool and claims another when they are full.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        block_addresses: Option<u32>,
    },
}

/// `store.tls`: PEM files on the node.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EtcdTls {
    /// The CA that signed the etcd servers' certificates.
    pub ca: PathBuf,
    /// This node's client certificate (with `key`), for etcd's `--client-cert-auth`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (with `cert`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

/// `store.auth`: an etcd user and a file holding its password (so the password is not in the
/// network config, which every process on the node may read).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EtcdAuth {
    pub user: String,
    /// A file whose content (one trailing newline removed) is the password.
    #[serde(alias = "password_file")]
    pub password_file: PathBuf,
}

impl StoreConfig {
    /// Checks what can be checked without touching the files: endpoint schemes agree with each
    /// other and with `tls`, and `tls.cert` comes with `tls.key`.
    pub fn validate(&self) -> Result<(), IpamError> {
        let StoreConfig::Etcd {
            endpoints,
            tls,
            auth,
            block_addresses,
            ..
        } = self
        else {
            return Ok(());
        };
        crate::store::etcd::check_endpoints(endpoints, tls.is_some())?;
        if let Some(n) = block_addresses {
            crate::store::etcd::check_block_addresses(*n)?;
        }
        if let Some(t) = tls
            && t.cert.is_some() != t.key.is_some()
        {
            return Err(IpamError::InvalidConfig(
                "store.tls.cert and store.tls.key go together: set both (the client certificate and its private key) or neither".into(),
            ));
        }
        if let Some(a) = auth
            && a.user.is_empty()
        {
            return Err(IpamError::InvalidConfig(
                "store.auth.user is empty: name the etcd user berth logs in as".into(),
            ));
        }
        Ok(())
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig::Local {
            dir: default_local_dir(),
        }
    }
}

/// Which pods are sticky when they carry no `berth.io/sticky` annotation.
///
/// A hold only helps a pod that comes back under the same name. StatefulSet pods
/// (`web-0`) and hand-named pods do; Deployment, Job and DaemonSet pods get a generated
/// name (`web-7d9f8b6c4d-x2k9z`) every time and never do, so holding their addresses only
/// drains the pool. Holds are soft in any case: a full pool reclaims them, oldest first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StickyDefault {
    /// Every pod (`true`; berth's behaviour before 0.2).
    All,
    /// No pod (`false`): only annotated pods keep their address.
    None,
    /// Pods whose name does not end in a generated suffix (`"stable-names"`, the default).
    #[default]
    StableNames,
}

impl StickyDefault {
    /// The config spelling, also shown by `berthctl ipam list`.
    pub fn as_str(self) -> &'static str {
        match self {
            StickyDefault::All => "all",
            StickyDefault::None => "none",
            StickyDefault::StableNames => "stable-names",
        }
    }

    /// Whether a pod of this name is sticky without an annotation.
    pub fn covers(self, pod_name: &str) -> bool {
        match self {
            StickyDefault::All => true,
            StickyDefault::None => false,
            StickyDefault::StableNames => !has_generated_suffix(pod_name),
        }
    }
}

/// Whether a pod name ends like the names Kubernetes generates (`generateName`): a dash and
/// five characters of the API server's random alphabet, which has no vowels and none of
/// `0`, `1`, `3` (so `web-0`, `db-12` or `cache-primary` are never taken for one).
pub fn has_generated_suffix(pod_name: &str) -> bool {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    pod_name.rsplit_once('-').is_some_and(|(head, tail)| {
        !head.is_empty() && tail.len() == 5 && tail.bytes().all(|b| ALPHABET.contains(&b))
    })
}

impl Serialize for StickyDefault {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for StickyDefault {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(true) => Ok(StickyDefault::All),
            Raw::Bool(false) => Ok(StickyDefault::None),
            Raw::Text(t) => match t.as_str() {
                "all" | "true" => Ok(StickyDefault::All),
                "none" | "false" => Ok(StickyDefault::None),
                "stable-names" => Ok(StickyDefault::StableNames),
                other => Err(serde::de::Error::custom(format!(
                    "sticky {other:?} is not one of \"stable-names\", \"all\", \"none\" (or true/false)"
                ))),
            },
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
        self.store.validate()?;
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
        assert_eq!(c.sticky, StickyDefault::StableNames);
        assert_eq!(c.max_clock_skew, DEFAULT_MAX_CLOCK_SKEW);
        assert_eq!(
            c.store,
            StoreConfig::Etcd {
                endpoints: vec!["http://127.0.0.1:2379".into()],
                prefix: "/berth/ipam".into(),
                timeout: Duration::from_secs(2),
                tls: None,
                auth: None,
                block_addresses: None,
            }
        );
        assert_eq!(c.pools().unwrap().iter().count(), 1);
    }

    #[test]
    fn block_addresses_must_be_a_power_of_two_up_to_64() {
        for bad in [0, 3, 48, 128] {
            let c = IpamConfig::from_json(&json!({
                "store": {"type": "etcd", "endpoints": ["http://127.0.0.1:2379"], "blockAddresses": bad},
                "pools": [{"name": "a", "subnet": "10.0.0.0/24"}]
            }))
            .unwrap();
            let err = c.store.validate().unwrap_err();
            assert_eq!(err.cni_code(), 7, "{err}");
            assert!(
                err.to_string().contains("power of two from 4 to 64"),
                "{err}"
            );
        }
        let ok = IpamConfig::from_json(&json!({
            "store": {"type": "etcd", "endpoints": ["http://127.0.0.1:2379"], "blockAddresses": 16},
            "pools": [{"name": "a", "subnet": "10.0.0.0/24"}]
        }))
        .unwrap();
        ok.store.validate().unwrap();
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
    fn sticky_takes_the_old_booleans_and_the_policies() {
        let parse = |v: serde_json::Value| {
            IpamConfig::from_json(&json!({"sticky": v, "pools": []})).map(|c| c.sticky)
        };
        assert_eq!(parse(json!(true)).unwrap(), StickyDefault::All);
        assert_eq!(parse(json!(false)).unwrap(), StickyDefault::None);
        assert_eq!(parse(json!("all")).unwrap(), StickyDefault::All);
        assert_eq!(
            parse(json!("stable-names")).unwrap(),
            StickyDefault::StableNames
        );
        let bad = parse(json!("sometimes"));
        assert!(
            matches!(&bad, Err(IpamError::InvalidConfig(m)) if m.contains("stable-names")),
            "{bad:?}"
        );
    }

    #[test]
    fn generated_names_are_told_from_stable_ones() {
        for generated in ["web-7d9f8b6c4d-x2k9z", "job-bcdfg", "ds-2m4xz", "a-bbbbb"] {
            assert!(has_generated_suffix(generated), "{generated}");
            assert!(!StickyDefault::StableNames.covers(generated));
        }
        for stable in [
            "web-0",
            "db-12",
            "cache-primary",
            "churn-00042",
            "web-abcde",
            "pod",
            "-bcdfg",
            "x-bcdf",
        ] {
            assert!(!has_generated_suffix(stable), "{stable}");
            assert!(StickyDefault::StableNames.covers(stable));
        }
        assert!(StickyDefault::All.covers("web-7d9f8b6c4d-x2k9z"));
        assert!(!StickyDefault::None.covers("web-0"));
    }

    #[test]
    fn etcd_tls_and_auth_parse_and_refuse_contradictions() {
        let store = |v: serde_json::Value| {
            IpamConfig::from_json(
                &json!({"store": v, "pools": [{"name": "a", "subnet": "10.0.0.0/24"}]}),
            )
            .and_then(|c| c.pools().map(|_| c.store))
        };
        let ok = store(
            json!({"type": "etcd", "endpoints": ["https://e1:2379", "https://e2:2379"],
            "tls": {"ca": "/etc/berth/etcd/ca.crt", "cert": "/etc/berth/etcd/client.crt",
                    "key": "/etc/berth/etcd/client.key"},
            "auth": {"user": "berth", "passwordFile": "/etc/berth/etcd/password"}}),
        )
        .unwrap();
        let StoreConfig::Etcd { tls, auth, .. } = &ok else {
            panic!("{ok:?}")
        };
        assert_eq!(
            tls.as_ref().unwrap().key.as_deref(),
            Some(std::path::Path::new("/etc/berth/etcd/client.key"))
        );
        assert_eq!(auth.as_ref().unwrap().user, "berth");
        // The spelling of the issue (`password_file`) is accepted too.
        let alias = store(json!({"type": "etcd", "endpoints": ["http://e1:2379"],
            "auth": {"user": "berth", "password_file": "/p"}}))
        .unwrap();
        assert!(matches!(alias, StoreConfig::Etcd { auth: Some(_), .. }));

        let tls = json!({"ca": "/ca.crt"});
        for (v, says) in [
            (
                json!({"type": "etcd", "endpoints": ["http://e1:2379"], "tls": tls}),
                "store.tls is set but etcd endpoint \"http://e1:2379\" is http://",
            ),
            (
                json!({"type": "etcd", "endpoints": ["https://e1:2379"]}),
                "set store.tls.ca",
            ),
            (
                json!({"type": "etcd", "endpoints": ["https://e1:2379", "http://e2:2379"], "tls": tls}),
                "mix http and https",
            ),
            (
                json!({"type": "etcd", "endpoints": ["http://e1:2379", "https://e2:2379"]}),
                "mix http and https",
            ),
            (
                json!({"type": "etcd", "endpoints": ["unix:///run/etcd.sock"]}),
                "is not http://host:port or https://host:port",
            ),
            (
                json!({"type": "etcd", "endpoints": ["https://e1:2379"],
                    "tls": {"ca": "/ca.crt", "cert": "/c.crt"}}),
                "store.tls.cert and store.tls.key go together",
            ),
            (
                json!({"type": "etcd", "endpoints": ["https://e1:2379"],
                    "tls": {"ca": "/ca.crt", "certificate": "/c.crt"}}),
                "unknown field `certificate`",
            ),
            (
                json!({"type": "etcd", "endpoints": ["http://e1:2379"],
                    "auth": {"user": "", "passwordFile": "/p"}}),
                "store.auth.user is empty",
            ),
        ] {
            let err = store(v.clone()).unwrap_err();
            assert_eq!(err.cni_code(), 7, "{v}: {err}");
            assert!(err.to_string().contains(says), "{v}: {err}");
        }
        // Without a scheme an endpoint takes the one store.tls implies.
        assert!(store(json!({"type": "etcd", "endpoints": ["e1:2379"], "tls": tls})).is_ok());
        assert!(store(json!({"type": "etcd", "endpoints": ["e1:2379"]})).is_ok());
    }

    #[test]
    fn round_trips_through_json() {
        let c = IpamConfig::from_json(&json!({"pools": [{"name": "a", "subnet": "10.0.0.0/24"}]}))
            .unwrap();
        let back = IpamConfig::from_json(&serde_json::to_value(&c).unwrap()).unwrap();
        assert_eq!(c, back);
    }
}
