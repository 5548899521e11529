//! The agent's configuration: a TOML file (`--config`), then command-line overrides.
//! Every key is documented in `agents/agent/README.md`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::filelogs::layout::{DEFAULT_LAYOUT, Layout, LayoutError};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("invalid filelogs.layout")]
    Layout(#[source] LayoutError),
    #[error("invalid {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Node name written into metadata; default `$NODE_NAME`, else the host name.
    pub node_name: String,
    pub state_dir: PathBuf,
    /// A CNI network config (`.conflist` or `.conf`) whose berth-cni or berth-ipam `ipam`
    /// section the API's `Ipam` service manages (list, history, reserve, release). Unset: the
    /// service answers UNAVAILABLE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam_network: Option<PathBuf>,
    pub log: LogConfig,
    pub nri: NriConfig,
    pub filelogs: FileLogsConfig,
    pub cleanup: CleanupConfig,
    pub faketime: FakeTimeConfig,
    pub api: ApiConfig,
    /// Debug containers (the API's `Debug` service): berth-debug's keys
    /// (`containerd_socket`, `image`, `state_dir`, `user`, `detach_grace`, …, see
    /// docs/operations.md). Present: enabled (needs `[api]`); absent: Debug is not served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug: Option<toml::Table>,
    /// Collection of leaked IPAM leases (needs `ipam_network`). Present: enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam_gc: Option<IpamGcConfig>,
}

/// `[ipam_gc]`: frees the addresses of sandboxes the runtime no longer has. containerd never
/// calls CNI GC, so a lease whose DEL failed (a broken plugin later in the chain) would block
/// its pod's sticky address forever without this.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IpamGcConfig {
    /// How often a pass runs.
    #[serde(with = "humantime_serde_compat")]
    pub interval: Duration,
    /// Leases younger than this are never collected: a sandbox reaches the agent (NRI
    /// RunPodSandbox) only after its CNI ADD has returned.
    #[serde(with = "humantime_serde_compat")]
    pub grace: Duration,
}

/// The shortest `ipam_gc.grace` accepted: an ADD can take seconds on a loaded node, and the
/// sandbox's NRI event comes after it.
pub const MIN_IPAM_GC_GRACE: Duration = Duration::from_secs(30);

impl Default for IpamGcConfig {
    fn default() -> Self {
        IpamGcConfig {
            interval: Duration::from_secs(60),
            grace: Duration::from_secs(120),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter (`info`, `berth_agent=debug,info`); `RUST_LOG` overrides it.
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NriConfig {
    pub socket: PathBuf,
    pub plugin_name: String,
    pub plugin_index: String,
    #[serde(with = "humantime_serde_compat")]
    pub registration_timeout: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub reconnect_max: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnProblem {
    /// Fail CreateContainer: the container is not created (kubelet retries and reports it).
    Refuse,
    /// Create the container without the log mount (its logs stay in its own file system).
    AllowWithoutMount,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileLogsConfig {
    pub enabled: bool,
    pub log_root: PathBuf,
    pub layout: String,
    pub env_var: String,
    pub annotation_prefix: String,
    /// Hostile values: bad destination, bad names, a symlink or mount planted in the log root.
    pub on_violation: OnProblem,
    /// Plain I/O failures (disk full, permissions).
    pub on_error: OnProblem,
    /// Mode of the mounted dirs (octal string or number); 0777 like an emptyDir, so the
    /// container's user can write whatever its uid.
    #[serde(deserialize_with = "de_mode", serialize_with = "ser_mode")]
    pub dir_mode: u32,
    /// Destinations refused in addition to the built-in denylist.
    pub extra_denied: Vec<String>,
    /// Disk budget per pod over all its container dirs ("1GiB", "500MB", bytes; 0 = none).
    #[serde(deserialize_with = "de_size")]
    pub pod_budget: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CleanupConfig {
    /// Kept this long after the dir's last container is removed.
    #[serde(with = "humantime_serde_compat")]
    pub retention: Duration,
    /// Disk budget of the whole log root (0 = none).
    #[serde(deserialize_with = "de_size")]
    pub node_budget: u64,
    /// How often expiry and budgets are checked.
    #[serde(with = "humantime_serde_compat")]
    pub interval: Duration,
    /// How often the usage of every dir is recomputed; between scans only dirs where the file
    /// watcher saw writes are.
    #[serde(with = "humantime_serde_compat")]
    pub full_scan_interval: Duration,
}

/// What happens to a container that asks for faketime when the shim cannot shift its clock
/// (static, musl, Go, foreign-architecture entry point).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnUncovered {
    /// Create the container without the shim (real time); the reason is recorded.
    RunUnfaked,
    /// Fail CreateContainer with the reason (kubelet retries and shows it).
    Refuse,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FakeTimeConfig {
    pub enabled: bool,
    /// Where the shim library is installed on the host; unset: `<state_dir>/faketime`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shim_dir: Option<PathBuf>,
    pub on_uncovered: OnUncovered,
    /// How often the shim re-checks the timestamp file (whole seconds; `0s` = every read).
    #[serde(with = "humantime_serde_compat")]
    pub cache_duration: Duration,
    /// Must stay false: the shim never fakes the monotonic clock (timers and sleeps keep
    /// working). Present so that a config asking for it fails loudly instead of being ignored.
    pub fake_monotonic: bool,
    /// containerd's gRPC socket: the agent asks containerd's snapshot API for a container's
    /// layers to judge its entry point at creation. Default [`DEFAULT_CONTAINERD_ADDRESS`]
    /// (the host's; the DaemonSet mounts `/run/containerd` at the same path). When containerd
    /// cannot answer there, the shim is injected and the entry point judged after start.
    pub containerd_address: PathBuf,
    /// CRI's containerd namespace.
    pub containerd_namespace: String,
    /// The snapshotter CRI prepares containers with (the container's id is its snapshot key).
    pub snapshotter: String,
    /// Removed (berth ran `ctr snapshots mounts` through it): present only so that a config
    /// that still sets it fails with a message naming the replacement.
    #[serde(rename = "ctr", default, skip_serializing)]
    pub removed_ctr: Option<toml::Value>,
    /// Shift static, Go and musl entry points (which the shim cannot reach) by patching the
    /// vDSO of the entry-point process after it starts (ptrace; x86-64). false: such
    /// containers are "uncovered" (see `on_uncovered`).
    pub patch_vdso: bool,
}

/// Where containerd listens on a node unless configured otherwise.
pub const DEFAULT_CONTAINERD_ADDRESS: &str = "/run/containerd/containerd.sock";

impl Default for FakeTimeConfig {
    fn default() -> Self {
        FakeTimeConfig {
            enabled: true,
            shim_dir: None,
            on_uncovered: OnUncovered::RunUnfaked,
            cache_duration: Duration::from_secs(1),
            fake_monotonic: false,
            containerd_address: PathBuf::from(DEFAULT_CONTAINERD_ADDRESS),
            containerd_namespace: "k8s.io".into(),
            snapshotter: "overlayfs".into(),
            removed_ctr: None,
            patch_vdso: true,
        }
    }
}

impl FakeTimeConfig {
    /// The shim's host directory for an agent whose state dir is `state_dir`.
    pub fn shim_dir(&self, state_dir: &Path) -> PathBuf {
        self.shim_dir
            .clone()
            .unwrap_or_else(|| state_dir.join("faketime"))
    }
}

/// The gRPC API server's section. `listen` is parsed and validated here; every other key is
/// kept for the API server (berth-api) to read.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ApiConfig {
    pub listen: Option<String>,
    #[serde(flatten)]
    pub server: toml::Table,
}

/// A validated `api.listen`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Listen {
    /// `127.0.0.1:9443`, `[::1]:9443`, `tcp://0.0.0.0:9443`, `unix:///run/berth/api.sock`,
    /// `unix:/run/berth/api.sock`, or an absolute path.
    pub fn parse(s: &str) -> Result<Listen, ConfigError> {
        let s = s.trim();
        if let Some(p) = s
            .strip_prefix("unix://")
            .or_else(|| s.strip_prefix("unix:"))
            .or(s.starts_with('/').then_some(s))
        {
            let p = Path::new(p);
            if !p.is_absolute()
                || p.components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(invalid(
                    "api.listen",
                    format!("unix socket path {:?} must be absolute without '..'", p),
                ));
            }
            return Ok(Listen::Unix(p.to_path_buf()));
        }
        let a = s.strip_prefix("tcp://").unwrap_or(s);
        a.parse::<SocketAddr>().map(Listen::Tcp).map_err(|_| {
            invalid(
                "api.listen",
                format!("{s:?} is neither ip:port (e.g. 127.0.0.1:9443) nor unix:/path"),
            )
        })
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_name: String::new(),
            state_dir: PathBuf::from("/var/lib/berth/agent"),
            ipam_network: None,
            log: LogConfig::default(),
            nri: NriConfig::default(),
            filelogs: FileLogsConfig::default(),
            cleanup: CleanupConfig::default(),
            faketime: FakeTimeConfig::default(),
            api: ApiConfig::default(),
            debug: None,
            ipam_gc: None,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

impl Default for NriConfig {
    fn default() -> Self {
        NriConfig {
            socket: PathBuf::from("/var/run/nri/nri.sock"),
            plugin_name: "berth".into(),
            plugin_index: "10".into(),
            registration_timeout: Duration::from_secs(5),
            reconnect_max: Duration::from_secs(5),
        }
    }
}

impl Default for FileLogsConfig {
    fn default() -> Self {
        FileLogsConfig {
            enabled: true,
            log_root: PathBuf::from("/var/log/berth/filelogs"),
            layout: DEFAULT_LAYOUT.into(),
            env_var: "KUBERNETES_FILELOGS".into(),
            annotation_prefix: "berth.io/filelogs.".into(),
            on_violation: OnProblem::Refuse,
            on_error: OnProblem::Refuse,
            dir_mode: 0o777,
            extra_denied: Vec::new(),
            pod_budget: 0,
        }
    }
}

impl Default for CleanupConfig {
    fn default() -> Self {
        CleanupConfig {
            retention: Duration::from_secs(2 * 86_400),
            node_budget: 0,
            interval: Duration::from_secs(60),
            full_scan_interval: Duration::from_secs(3600),
        }
    }
}

/// Command-line values that override the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub nri_socket: Option<PathBuf>,
    pub log_root: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub node_name: Option<String>,
}

/// The config after validation, with parsed forms of the string keys.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub config: Config,
    pub layout: Layout,
    pub listen: Option<Listen>,
}

impl Config {
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            None => Ok(Config::default()),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                Config::from_toml(&text, p)
            }
        }
    }

    pub fn apply(&mut self, o: Overrides) {
        if let Some(v) = o.nri_socket {
            self.nri.socket = v;
        }
        if let Some(v) = o.log_root {
            self.filelogs.log_root = v;
        }
        if let Some(v) = o.state_dir {
            self.state_dir = v;
        }
        if let Some(v) = o.listen {
            self.api.listen = Some(v);
        }
        if let Some(v) = o.node_name {
            self.node_name = v;
        }
    }

    pub fn resolve(mut self) -> Result<Resolved, ConfigError> {
        let layout = Layout::parse(&self.filelogs.layout).map_err(ConfigError::Layout)?;
        for (key, p) in [
            ("state_dir", &self.state_dir),
            ("filelogs.log_root", &self.filelogs.log_root),
            ("nri.socket", &self.nri.socket),
        ] {
            if !p.is_absolute() {
                return Err(invalid(
                    key,
                    format!("{} must be an absolute path", p.display()),
                ));
            }
        }
        if self.filelogs.log_root == Path::new("/") {
            return Err(invalid("filelogs.log_root", "the log root cannot be /"));
        }
        if self.state_dir.starts_with(&self.filelogs.log_root) {
            return Err(invalid(
                "state_dir",
                "must not be inside filelogs.log_root (cleanup owns the log root)",
            ));
        }
        let idx = &self.nri.plugin_index;
        if idx.len() != 2 || !idx.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(
                "nri.plugin_index",
                format!("{idx:?} must be two digits, e.g. \"10\""),
            ));
        }
        if self.filelogs.env_var.is_empty() || self.filelogs.env_var.contains('=') {
            return Err(invalid(
                "filelogs.env_var",
                "must be a non-empty variable name",
            ));
        }
        if self.filelogs.dir_mode & !0o7777 != 0 {
            return Err(invalid(
                "filelogs.dir_mode",
                format!("{:o} is not a file mode", self.filelogs.dir_mode),
            ));
        }
        for d in &self.filelogs.extra_denied {
            if !d.starts_with('/') || d.len() < 2 || d.ends_with('/') {
                return Err(invalid(
                    "filelogs.extra_denied",
                    format!("{d:?} must be an absolute path without a trailing '/'"),
                ));
            }
        }
        if self.cleanup.interval.is_zero() || self.cleanup.full_scan_interval.is_zero() {
            return Err(invalid("cleanup.interval", "intervals must be positive"));
        }
        if self.faketime.fake_monotonic {
            return Err(invalid(
                "faketime.fake_monotonic",
                "berth's shim never fakes the monotonic clock (it breaks timers and sleeps); remove the key or set it to false",
            ));
        }
        if self.faketime.cache_duration.subsec_nanos() != 0
            || self.faketime.cache_duration.as_secs() > u64::from(u32::MAX)
        {
            return Err(invalid(
                "faketime.cache_duration",
                "must be whole seconds, e.g. \"1s\" or \"0s\"",
            ));
        }
        if let Some(d) = &self.faketime.shim_dir
            && !d.is_absolute()
        {
            return Err(invalid("faketime.shim_dir", "must be an absolute path"));
        }
        if let Some(gc) = &self.ipam_gc {
            if gc.interval.is_zero() {
                return Err(invalid("ipam_gc.interval", "must be positive, e.g. \"1m\""));
            }
            if gc.grace < MIN_IPAM_GC_GRACE {
                return Err(invalid(
                    "ipam_gc.grace",
                    format!(
                        "{} is too short: an ADD still in flight would be collected; use at least 30s (default 2m)",
                        humantime::format_duration(gc.grace)
                    ),
                ));
            }
            if self.ipam_network.is_none() {
                return Err(invalid(
                    "ipam_gc",
                    "needs ipam_network: the CNI network config whose berth IPAM leases are collected",
                ));
            }
        }
        if self.faketime.removed_ctr.is_some() {
            return Err(invalid(
                "faketime.ctr",
                "was removed: the agent asks containerd's API itself (faketime.containerd_address, \
                 default /run/containerd/containerd.sock) and needs no ctr binary; delete the key",
            ));
        }
        if !self.faketime.containerd_address.is_absolute() {
            return Err(invalid(
                "faketime.containerd_address",
                "must be the absolute path of containerd's socket, e.g. \"/run/containerd/containerd.sock\"",
            ));
        }
        if self.faketime.containerd_namespace.is_empty() || self.faketime.snapshotter.is_empty() {
            return Err(invalid(
                "faketime.containerd_namespace",
                "containerd_namespace and snapshotter must not be empty (CRI's are \"k8s.io\" and \"overlayfs\")",
            ));
        }
        let listen = self.api.listen.as_deref().map(Listen::parse).transpose()?;
        if self.node_name.is_empty() {
            self.node_name = std::env::var("NODE_NAME")
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(hostname);
        }
        Ok(Resolved {
            config: self,
            layout,
            listen,
        })
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Parses "1GiB", "500MB", "10k", "1234" into bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 512MiB"))?;
    let mul: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        u => {
            return Err(format!(
                "unknown size unit {u:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
            ));
        }
    };
    n.checked_mul(mul)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrStr {
    Num(u64),
    Str(String),
}

fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match NumOrStr::deserialize(d)? {
        NumOrStr::Num(n) => Ok(n),
        NumOrStr::Str(s) => parse_size(&s).map_err(serde::de::Error::custom),
    }
}

fn ser_mode<S: serde::Serializer>(m: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{m:04o}"))
}

fn de_mode<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    match NumOrStr::deserialize(d)? {
        NumOrStr::Num(n) => u32::try_from(n).map_err(serde::de::Error::custom),
        NumOrStr::Str(s) => u32::from_str_radix(s.trim_start_matches("0o"), 8).map_err(|_| {
            serde::de::Error::custom(format!("{s:?} is not an octal mode like \"0777\""))
        }),
    }
}

mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "{s:?} is not a duration like \"2d\" or \"30s\": {e}"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::from_toml(s, Path::new("test.toml"))
    }

    #[test]
    fn empty_file_gives_documented_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.nri.socket, Path::new("/var/run/nri/nri.sock"));
        assert_eq!(c.cleanup.retention, Duration::from_secs(172_800));
        assert_eq!(c.filelogs.on_violation, OnProblem::Refuse);
        assert_eq!(c.filelogs.dir_mode, 0o777);
        assert!(c.faketime.enabled);
        assert_eq!(c.faketime.on_uncovered, OnUncovered::RunUnfaked);
        assert_eq!(c.faketime.cache_duration, Duration::from_secs(1));
        assert!(!c.faketime.fake_monotonic);
        assert_eq!(
            c.faketime.shim_dir(&c.state_dir),
            Path::new("/var/lib/berth/agent/faketime")
        );
        assert_eq!(
            c.faketime.containerd_address,
            Path::new("/run/containerd/containerd.sock")
        );
        assert_eq!(c.faketime.snapshotter, "overlayfs");
    }

    #[test]
    fn the_removed_ctr_key_is_refused_naming_the_replacement() {
        let e = parse(
            "[faketime]
ctr = \"/usr/bin/ctr\"\n",
        )
        .unwrap()
        .resolve()
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("invalid faketime.ctr: was removed"),
            "{msg}"
        );
        assert!(msg.contains("faketime.containerd_address"), "{msg}");
        assert!(msg.contains("delete the key"), "{msg}");
        // and it is never printed back
        let c = parse("").unwrap();
        assert!(!toml::to_string_pretty(&c).unwrap().contains("ctr ="));
    }

    #[test]
    fn faketime_section_parses() {
        let c = parse(
            "[faketime]\non_uncovered = \"refuse\"\ncache_duration = \"0s\"\nshim_dir = \"/opt/berth\"\ncontainerd_address = \"/run/containerd/containerd.sock\"\n",
        )
        .unwrap();
        assert_eq!(c.faketime.on_uncovered, OnUncovered::Refuse);
        assert_eq!(c.faketime.cache_duration, Duration::ZERO);
        assert_eq!(
            c.faketime.shim_dir(Path::new("/x")),
            Path::new("/opt/berth")
        );
        let text = toml::to_string_pretty(&c).unwrap();
        assert_eq!(parse(&text).unwrap(), c);
        c.resolve().unwrap();
    }

    #[test]
    fn ipam_gc_defaults_and_refusals() {
        let net = "ipam_network = \"/etc/cni/net.d/10-berth.conflist\"\n";
        let c = parse(&format!("{net}[ipam_gc]\n")).unwrap();
        assert_eq!(c.ipam_gc, Some(IpamGcConfig::default()));
        assert_eq!(IpamGcConfig::default().interval, Duration::from_secs(60));
        assert_eq!(IpamGcConfig::default().grace, Duration::from_secs(120));
        c.resolve().unwrap();
        let err = |text: &str| parse(text).unwrap().resolve().unwrap_err().to_string();
        assert!(err(&format!("{net}[ipam_gc]\ninterval = \"0s\"\n")).contains("ipam_gc.interval"));
        let short = err(&format!("{net}[ipam_gc]\ngrace = \"10s\"\n"));
        assert!(
            short.contains("ipam_gc.grace") && short.contains("30s"),
            "{short}"
        );
        let alone = err("[ipam_gc]\n");
        assert!(alone.contains("needs ipam_network"), "{alone}");
        assert!(parse(&format!("{net}[ipam_gc]\nintervall = \"1m\"\n")).is_err());
    }

    #[test]
    fn printed_config_parses_back_to_itself() {
        let c = parse("[filelogs]\ndir_mode = \"0750\"\n[cleanup]\nretention = \"36h\"").unwrap();
        let text = toml::to_string_pretty(&c).unwrap();
        assert!(text.contains("dir_mode = \"0750\""), "{text}");
        assert_eq!(parse(&text).unwrap(), c);
    }

    #[test]
    fn example_file_is_the_defaults() {
        let c = parse(include_str!("../berth-agent.example.toml")).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn full_file_parses() {
        let c = parse(
            r#"
            node_name = "node-a"
            state_dir = "/srv/berth/state"
            [log]
            format = "json"
            level = "debug"
            [nri]
            socket = "/run/nri/alt.sock"
            plugin_name = "berth-test"
            plugin_index = "05"
            registration_timeout = "3s"
            reconnect_max = "30s"
            [filelogs]
            log_root = "/srv/logs"
            layout = "{namespace}_{pod}_{pod_uid}/{container}"
            on_violation = "allow-without-mount"
            on_error = "refuse"
            dir_mode = "0770"
            extra_denied = ["/data"]
            pod_budget = "1GiB"
            [cleanup]
            retention = "7d"
            node_budget = "50GB"
            interval = "30s"
            full_scan_interval = "10m"
            [api]
            listen = "127.0.0.1:9443"
            tls_dir = "/etc/berth/pki"
            "#,
        )
        .unwrap();
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.nri.reconnect_max, Duration::from_secs(30));
        assert_eq!(c.filelogs.on_violation, OnProblem::AllowWithoutMount);
        assert_eq!(c.filelogs.dir_mode, 0o770);
        assert_eq!(c.filelogs.pod_budget, 1 << 30);
        assert_eq!(c.cleanup.node_budget, 50_000_000_000);
        assert_eq!(c.cleanup.retention, Duration::from_secs(7 * 86_400));
        assert_eq!(
            c.api.server.get("tls_dir").and_then(|v| v.as_str()),
            Some("/etc/berth/pki"),
            "api keys kept for berth-api"
        );
        let r = c.resolve().unwrap();
        assert_eq!(
            r.listen,
            Some(Listen::Tcp("127.0.0.1:9443".parse().unwrap()))
        );
        assert_eq!(r.layout.depth(), 2);
        assert_eq!(r.config.node_name, "node-a");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        assert!(matches!(
            parse("nri_socket = \"/x\""),
            Err(ConfigError::Parse { .. })
        ));
        assert!(matches!(
            parse("[filelogs]\nlogroot = \"/x\""),
            Err(ConfigError::Parse { .. })
        ));
        assert!(matches!(
            parse("[cleanup]\nretention = \"two days\""),
            Err(ConfigError::Parse { .. })
        ));
        assert!(matches!(
            parse("[filelogs]\npod_budget = \"1 lightyear\""),
            Err(ConfigError::Parse { .. })
        ));
        assert!(matches!(
            parse("[filelogs]\non_violation = \"ignore\""),
            Err(ConfigError::Parse { .. })
        ));
        let bad = |toml: &str, key: &str| {
            let e = parse(toml).unwrap().resolve().unwrap_err();
            match e {
                ConfigError::Invalid { key: k, .. } => assert_eq!(k, key, "{toml}"),
                ConfigError::Layout(_) => assert_eq!("filelogs.layout", key, "{toml}"),
                e => panic!("{toml}: {e:?}"),
            }
        };
        bad("state_dir = \"rel\"", "state_dir");
        bad("[filelogs]\nlog_root = \"/\"", "filelogs.log_root");
        bad("state_dir = \"/var/log/berth/filelogs/state\"", "state_dir");
        bad("[nri]\nplugin_index = \"1\"", "nri.plugin_index");
        bad(
            "[filelogs]\nlayout = \"{pod}/{container}\"",
            "filelogs.layout",
        );
        bad(
            "[filelogs]\nextra_denied = [\"data\"]",
            "filelogs.extra_denied",
        );
        bad("[api]\nlisten = \"localhost\"", "api.listen");
        bad(
            "[faketime]\nfake_monotonic = true",
            "faketime.fake_monotonic",
        );
        bad(
            "[faketime]\ncache_duration = \"500ms\"",
            "faketime.cache_duration",
        );
        bad("[faketime]\nshim_dir = \"lib\"", "faketime.shim_dir");
        bad(
            "[faketime]\ncontainerd_address = \"containerd.sock\"",
            "faketime.containerd_address",
        );
        bad(
            "[faketime]\nsnapshotter = \"\"",
            "faketime.containerd_namespace",
        );
        assert!(matches!(
            parse("[faketime]\non_uncovered = \"ignore\""),
            Err(ConfigError::Parse { .. })
        ));
        bad("[api]\nlisten = \"unix:relative.sock\"", "api.listen");
    }

    #[test]
    fn flags_override_the_file() {
        let mut c = parse("[nri]\nsocket = \"/a.sock\"\n[api]\nlisten = \"127.0.0.1:1\"").unwrap();
        c.apply(Overrides {
            nri_socket: Some("/b.sock".into()),
            log_root: Some("/logs".into()),
            state_dir: Some("/state".into()),
            listen: Some("unix:///run/berth.sock".into()),
            node_name: None,
        });
        let r = c.resolve().unwrap();
        assert_eq!(r.config.nri.socket, Path::new("/b.sock"));
        assert_eq!(r.config.filelogs.log_root, Path::new("/logs"));
        assert_eq!(r.config.state_dir, Path::new("/state"));
        assert_eq!(r.listen, Some(Listen::Unix("/run/berth.sock".into())));
        assert!(
            !r.config.node_name.is_empty(),
            "node name defaults to the host's"
        );
    }

    #[test]
    fn listen_forms() {
        assert_eq!(
            Listen::parse("tcp://[::1]:9443").unwrap(),
            Listen::Tcp("[::1]:9443".parse().unwrap())
        );
        assert_eq!(
            Listen::parse("/run/a.sock").unwrap(),
            Listen::Unix("/run/a.sock".into())
        );
        assert!(Listen::parse("unix:///run/../a.sock").is_err());
        assert!(Listen::parse("0.0.0.0").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("10k"), Ok(10_000));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("1.5GiB").is_err());
        assert!(parse_size("99999999999TiB").is_err());
    }
}
