//! The `[api]` section of the agent's config.
//!
//! ```toml
//! listen = "0.0.0.0:7443"          # TCP, always mutual TLS
//! unix_socket = "/run/berth/api.sock"
//! policy = "/etc/berth/policy.toml"
//! [tls]
//! cert = "/etc/berth/pki/server.pem"
//! key = "/etc/berth/pki/server-key.pem"
//! client_ca = "/etc/berth/pki/ca.pem"
//! crl = "/etc/berth/pki/ca.crl"      # optional
//! [audit]
//! path = "/var/log/berth/audit.log"
//! [metrics]
//! listen = "127.0.0.1:9464"
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::audit::AuditConfig;
use crate::error::ApiError;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA bundle that client certificates must chain to.
    pub client_ca: PathBuf,
    /// Optional CRL file(s) (PEM) of that CA: revoked client certificates are refused.
    #[serde(default)]
    pub crl: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeIdentity {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub rack: String,
    #[serde(default)]
    pub zone: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsLimits {
    /// Largest directory `Logs/Download` will send (sum of file sizes).
    #[serde(default = "default_max_download")]
    pub max_download_bytes: u64,
    /// A stream whose client reads nothing for this long is aborted (DEADLINE_EXCEEDED).
    #[serde(default = "default_slow_client_ms")]
    pub slow_client_timeout_ms: u64,
    /// Most files listed or archived per directory.
    #[serde(default = "default_max_entries")]
    pub max_entries: usize,
    /// How often a follower checks for appended data, rotation and truncation.
    #[serde(default = "default_follow_poll_ms")]
    pub follow_poll_ms: u64,
}

fn default_max_download() -> u64 {
    1 << 30
}
fn default_slow_client_ms() -> u64 {
    30_000
}
fn default_max_entries() -> usize {
    10_000
}
fn default_follow_poll_ms() -> u64 {
    250
}

impl Default for LogsLimits {
    fn default() -> Self {
        LogsLimits {
            max_download_bytes: default_max_download(),
            slow_client_timeout_ms: default_slow_client_ms(),
            max_entries: default_max_entries(),
            follow_poll_ms: default_follow_poll_ms(),
        }
    }
}

impl LogsLimits {
    pub fn slow_client_timeout(&self) -> Duration {
        Duration::from_millis(self.slow_client_timeout_ms)
    }
    pub fn follow_poll(&self) -> Duration {
        Duration::from_millis(self.follow_poll_ms)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Off unless set.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// TCP address for remote callers; requires `[tls]`.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Local socket for root on the node (identity from SO_PEERCRED).
    #[serde(default)]
    pub unix_socket: Option<PathBuf>,
    /// Mode of the local socket (default 0600: root only).
    #[serde(default = "default_socket_mode")]
    pub unix_socket_mode: u32,
    pub policy: PathBuf,
    pub audit: AuditConfig,
    #[serde(default)]
    pub node: NodeIdentity,
    #[serde(default)]
    pub logs: LogsLimits,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default = "default_handshake_ms")]
    pub handshake_timeout_ms: u64,
    #[serde(default = "default_max_handshakes")]
    pub max_concurrent_handshakes: usize,
    /// Longest temporary role grant (`Grants/Grant`), e.g. "8h".
    #[serde(default = "default_max_grant", with = "humantime_serde_str")]
    pub max_grant_duration: Duration,
}

fn default_max_grant() -> Duration {
    Duration::from_secs(8 * 3600)
}

/// Durations as humantime strings ("8h", "30m").
mod humantime_serde_str {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!("{text:?} is not a duration like \"8h\" ({e})"))
        })
    }
}

fn default_socket_mode() -> u32 {
    0o600
}
fn default_handshake_ms() -> u64 {
    10_000
}
fn default_max_handshakes() -> usize {
    256
}

impl ApiConfig {
    /// A config with only the required parts; listeners are added by the caller.
    pub fn new(policy: impl Into<PathBuf>, audit: AuditConfig) -> ApiConfig {
        ApiConfig {
            listen: None,
            tls: None,
            unix_socket: None,
            unix_socket_mode: default_socket_mode(),
            policy: policy.into(),
            audit,
            node: NodeIdentity::default(),
            logs: LogsLimits::default(),
            metrics: MetricsConfig::default(),
            handshake_timeout_ms: default_handshake_ms(),
            max_concurrent_handshakes: default_max_handshakes(),
            max_grant_duration: default_max_grant(),
        }
    }

    /// Builds the config from berth-agent's `[api]` section as the agent parses it: its
    /// `listen` string (`ip:port`, `tcp://ip:port`, `unix:///path`, `unix:/path` or `/path`)
    /// and the section's other keys. Validates the result.
    pub fn from_agent_section(
        listen: Option<&str>,
        rest: &toml::Table,
    ) -> Result<ApiConfig, ApiError> {
        let mut cfg: ApiConfig = rest
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| ApiError::Config(format!("[api]: {}", e.message())))?;
        if let Some(l) = listen.map(str::trim).filter(|l| !l.is_empty()) {
            let unix = l
                .strip_prefix("unix://")
                .or_else(|| l.strip_prefix("unix:"))
                .or(l.starts_with('/').then_some(l));
            match unix {
                Some(p) => {
                    let p = PathBuf::from(p);
                    if cfg.unix_socket.as_ref().is_some_and(|u| *u != p) {
                        return Err(ApiError::Config(format!(
                            "api.listen names unix socket {} but api.unix_socket is {}: keep one",
                            p.display(),
                            cfg.unix_socket
                                .as_ref()
                                .map(|u| u.display().to_string())
                                .unwrap_or_default()
                        )));
                    }
                    cfg.unix_socket = Some(p);
                }
                None => {
                    let a = l.strip_prefix("tcp://").unwrap_or(l);
                    cfg.listen = Some(a.parse().map_err(|_| {
                        ApiError::Config(format!(
                            "api.listen {l:?} is neither ip:port nor unix:///path"
                        ))
                    })?);
                }
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Refuses configs berth will not run: plaintext TCP, no listener at all, zero limits.
    pub fn validate(&self) -> Result<(), ApiError> {
        let bad = |s: &str| Err(ApiError::Config(s.to_string()));
        if self.listen.is_some() && self.tls.is_none() {
            return bad(
                "listen is set without [tls]: berth has no plaintext remote mode; add tls.cert, \
                 tls.key and tls.client_ca, or use unix_socket for local access",
            );
        }
        if self.listen.is_none() && self.unix_socket.is_none() {
            return bad("neither listen nor unix_socket is set: the API would be unreachable");
        }
        if self.unix_socket_mode & 0o002 != 0 {
            return bad("unix_socket_mode must not be world-writable");
        }
        if self.logs.slow_client_timeout_ms == 0 || self.logs.max_entries == 0 {
            return bad("logs.slow_client_timeout_ms and logs.max_entries must be > 0");
        }
        if self.handshake_timeout_ms == 0 || self.max_concurrent_handshakes == 0 {
            return bad("handshake_timeout_ms and max_concurrent_handshakes must be > 0");
        }
        if self.audit.max_bytes < 4096 {
            return bad("audit.max_bytes must be at least 4096");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_tcp_is_refused() {
        let text = r#"
listen = "0.0.0.0:7443"
policy = "/etc/berth/policy.toml"
[audit]
path = "/var/log/berth/audit.log"
"#;
        let cfg: ApiConfig = toml::from_str(text).unwrap();
        let e = cfg.validate().unwrap_err();
        assert!(e.to_string().contains("no plaintext remote mode"), "{e}");
    }

    #[test]
    fn from_the_agent_section() {
        let rest: toml::Table = toml::from_str(
            "policy = \"/p.toml\"\n[tls]\ncert = \"c\"\nkey = \"k\"\nclient_ca = \"ca\"\n[audit]\npath = \"/a.log\"\n",
        )
        .unwrap();
        let c = ApiConfig::from_agent_section(Some("tcp://0.0.0.0:7443"), &rest).unwrap();
        assert_eq!(c.listen, Some("0.0.0.0:7443".parse().unwrap()));
        let c = ApiConfig::from_agent_section(Some("unix:///run/berth/api.sock"), &rest).unwrap();
        assert_eq!(c.listen, None);
        assert_eq!(c.unix_socket, Some(PathBuf::from("/run/berth/api.sock")));
        let e = ApiConfig::from_agent_section(Some("nonsense"), &rest).unwrap_err();
        assert!(e.to_string().contains("neither ip:port"), "{e}");
        let mut no_tls = rest.clone();
        no_tls.remove("tls");
        let e = ApiConfig::from_agent_section(Some("0.0.0.0:7443"), &no_tls).unwrap_err();
        assert!(e.to_string().contains("no plaintext remote mode"), "{e}");
        let mut typo = rest.clone();
        typo.insert("polcy".into(), "x".into());
        let e = ApiConfig::from_agent_section(Some("0.0.0.0:7443"), &typo).unwrap_err();
        assert!(e.to_string().contains("unknown field `polcy`"), "{e}");
    }

    #[test]
    fn full_config_parses_and_validates() {
        let text = r#"
listen = "127.0.0.1:7443"
unix_socket = "/run/berth/api.sock"
policy = "/etc/berth/policy.toml"
[tls]
cert = "s.pem"
key = "k.pem"
client_ca = "ca.pem"
[audit]
path = "/var/log/berth/audit.log"
max_bytes = 1048576
[node]
name = "n1"
rack = "r7"
[logs]
max_download_bytes = 1000
[metrics]
listen = "127.0.0.1:9464"
"#;
        let cfg: ApiConfig = toml::from_str(text).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.unix_socket_mode, 0o600);
        assert_eq!(cfg.logs.max_download_bytes, 1000);
        assert_eq!(cfg.audit.keep, 5);
        let mut none = cfg.clone();
        none.listen = None;
        none.unix_socket = None;
        assert!(
            none.validate()
                .unwrap_err()
                .to_string()
                .contains("unreachable")
        );
    }
}
