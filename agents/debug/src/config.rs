//! The session manager's configuration; every host path and limit comes from here.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::denylist::DenyList;
use crate::profile::UserIds;

/// Configuration of [`crate::DebugManager`]; `Default` gives the documented defaults.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DebugConfig {
    /// containerd's gRPC socket.
    pub containerd_socket: PathBuf,
    /// The containerd namespace of the tools containers (kubelet/CRI never look there).
    pub namespace: String,
    /// The containerd namespace where target containers live (CRI's).
    pub target_namespace: String,
    /// The tools image; copied from `target_namespace` when `namespace` lacks it.
    pub image: String,
    pub snapshotter: String,
    pub runtime: String,
    /// runc binary and state root passed to the shim (`None`: the shim's defaults).
    pub runc_binary: Option<PathBuf>,
    pub runc_root: Option<PathBuf>,
    /// Where the per-session stdio FIFOs are created.
    pub state_dir: PathBuf,
    /// cgroupfs parent of the tools containers.
    pub cgroup_parent: String,
    /// The unprivileged identity of the `general` and `netadmin` profiles.
    pub user: UserIds,
    /// How long a session survives without an attached client.
    #[serde(with = "secs")]
    pub detach_grace: Duration,
    /// Largest file CopyIn/CopyOut moves.
    pub copy_limit_bytes: u64,
    pub pids_limit: i64,
    pub memory_limit_bytes: i64,
    /// Most sessions alive (or starting) at once on this node.
    pub max_sessions: usize,
    /// Refuses dangerous one-shot Exec commands.
    pub deny_list: DenyList,
}

impl Default for DebugConfig {
    fn default() -> Self {
        DebugConfig {
            containerd_socket: PathBuf::from("/run/containerd/containerd.sock"),
            namespace: "berth-debug".into(),
            target_namespace: "k8s.io".into(),
            image: "berth.test/busybox:1".into(),
            snapshotter: "overlayfs".into(),
            runtime: "io.containerd.runc.v2".into(),
            runc_binary: None,
            runc_root: None,
            state_dir: PathBuf::from("/run/berth/debug"),
            cgroup_parent: "/berth-debug".into(),
            user: UserIds {
                uid: 65534,
                gid: 65534,
            },
            detach_grace: Duration::from_secs(60),
            copy_limit_bytes: 16 << 20,
            pids_limit: 256,
            memory_limit_bytes: 512 << 20,
            max_sessions: 32,
            deny_list: DenyList::defaults(),
        }
    }
}

/// A configuration that would defeat the design; each message says what to change.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "debug `user` must not be uid 0: the general and netadmin profiles are unprivileged; use e.g. 65534"
    )]
    RootUser,
    #[error(
        "debug `namespace` must differ from `target_namespace` ({0}), or kubelet would see the tools containers"
    )]
    SharedNamespace(String),
    #[error("debug `{0}` must not be empty")]
    Empty(&'static str),
    #[error("debug `state_dir` must be an absolute path")]
    RelativeStateDir,
    #[error("debug `max_sessions` must be at least 1")]
    NoSessions,
}

impl DebugConfig {
    /// Checks the invariants the session manager relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, value) in [
            ("namespace", &self.namespace),
            ("target_namespace", &self.target_namespace),
            ("image", &self.image),
            ("snapshotter", &self.snapshotter),
            ("runtime", &self.runtime),
        ] {
            if value.is_empty() {
                return Err(ConfigError::Empty(name));
            }
        }
        if self.user.uid == 0 {
            return Err(ConfigError::RootUser);
        }
        if self.namespace == self.target_namespace {
            return Err(ConfigError::SharedNamespace(self.target_namespace.clone()));
        }
        if !self.state_dir.is_absolute() {
            return Err(ConfigError::RelativeStateDir);
        }
        if self.max_sessions == 0 {
            return Err(ConfigError::NoSessions);
        }
        Ok(())
    }
}

mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_unprivileged_and_in_their_own_namespace() {
        let c = DebugConfig::default();
        assert_eq!(c.namespace, "berth-debug");
        assert_ne!(c.namespace, c.target_namespace);
        assert_ne!(c.user.uid, 0);
        assert!(!c.deny_list.rules.is_empty());
        let parsed: DebugConfig =
            serde_json::from_str(r#"{"detach_grace": 2.5, "image": "x:1"}"#).unwrap();
        assert_eq!(parsed.detach_grace, Duration::from_millis(2500));
        assert_eq!(parsed.image, "x:1");
        assert!(serde_json::from_str::<DebugConfig>(r#"{"imgae": "x"}"#).is_err());
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn configs_that_defeat_the_design_are_refused() {
        let bad = |f: fn(&mut DebugConfig)| {
            let mut c = DebugConfig::default();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert_eq!(bad(|c| c.user.uid = 0), ConfigError::RootUser);
        assert_eq!(
            bad(|c| c.namespace = "k8s.io".into()),
            ConfigError::SharedNamespace("k8s.io".into())
        );
        assert_eq!(bad(|c| c.image.clear()), ConfigError::Empty("image"));
        assert_eq!(
            bad(|c| c.state_dir = "run/debug".into()),
            ConfigError::RelativeStateDir
        );
        assert_eq!(bad(|c| c.max_sessions = 0), ConfigError::NoSessions);
    }
}
