//! The node's identity and rack, from `/etc/berth/node.toml` (or the ipam config).

use std::path::Path;

use serde::Deserialize;

use crate::config::{DEFAULT_NODE_CONFIG, IpamConfig};
use crate::error::IpamError;

/// Who is allocating: recorded in every lease and event, and the rack picks the default pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub node: String,
    pub rack: Option<String>,
}

/// Unknown keys are refused: a typo such as `rak = "r1"` would otherwise silently mean
/// "no rack" and hand out addresses from the wrong pools.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeFile {
    #[serde(default)]
    node: Option<String>,
    #[serde(default)]
    rack: Option<String>,
}

impl NodeInfo {
    /// Reads the node config named by `config` (or the default path; a missing file means no
    /// rack), then applies the config's `rack`/`node` overrides; the node defaults to the hostname.
    pub fn load(config: &IpamConfig) -> Result<NodeInfo, IpamError> {
        let path = config
            .node_config
            .as_deref()
            .unwrap_or(Path::new(DEFAULT_NODE_CONFIG));
        let file = match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str::<NodeFile>(&text).map_err(|e| {
                IpamError::InvalidConfig(format!("node config {}: {}", path.display(), e.message()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && config.node_config.is_none() => {
                NodeFile {
                    node: None,
                    rack: None,
                }
            }
            Err(source) => {
                return Err(IpamError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let node = match config.node.clone().or(file.node) {
            Some(n) => n,
            None => hostname(),
        };
        Ok(NodeInfo {
            node,
            rack: config.rack.clone().or(file.rack),
        })
    }
}

/// The kernel's hostname (of this UTS namespace) by `uname`: one system call, where reading
/// `/proc/sys/kernel/hostname` costs five on every plugin start.
fn hostname() -> String {
    let name = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .trim()
        .to_string();
    if name.is_empty() {
        "unknown".into()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_rack_from_file_and_config_overrides_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "rack = \"r12\"\nnode = \"n7\"\n").unwrap();
        let mut cfg = IpamConfig::from_json(&json!({"nodeConfig": path, "pools": []})).unwrap();
        assert_eq!(
            NodeInfo::load(&cfg).unwrap(),
            NodeInfo {
                node: "n7".into(),
                rack: Some("r12".into())
            }
        );
        cfg.rack = Some("r13".into());
        assert_eq!(NodeInfo::load(&cfg).unwrap().rack.as_deref(), Some("r13"));
    }

    #[test]
    fn a_misspelled_key_is_refused_not_read_as_no_rack() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "rak = \"r12\"\n").unwrap();
        let cfg = IpamConfig::from_json(&json!({"nodeConfig": path, "pools": []})).unwrap();
        match NodeInfo::load(&cfg) {
            Err(IpamError::InvalidConfig(m)) => {
                assert!(m.contains("node.toml") && m.contains("rak"), "{m}")
            }
            other => panic!("expected InvalidConfig naming the key, got {other:?}"),
        }
    }

    #[test]
    fn bad_or_missing_named_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "rack = r12\n").unwrap();
        let cfg = IpamConfig::from_json(&json!({"nodeConfig": path, "pools": []})).unwrap();
        match NodeInfo::load(&cfg) {
            Err(IpamError::InvalidConfig(m)) => assert!(m.contains("node.toml"), "{m}"),
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
        let missing = IpamConfig::from_json(
            &json!({"nodeConfig": dir.path().join("nope.toml"), "pools": []}),
        )
        .unwrap();
        assert!(
            matches!(NodeInfo::load(&missing), Err(IpamError::Io { path, .. }) if path.ends_with("nope.toml"))
        );
    }
}
