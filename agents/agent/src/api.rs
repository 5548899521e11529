//! Starts the gRPC API (berth-api) beside the NRI plugin: the `[api]` section, the file-log
//! layout as the Logs backend, the node's IPAM (from `ipam_network`, with the collector of
//! leaked leases when `[ipam_gc]` is on) as the Ipam backend, and the faketime control (when
//! faketime is enabled) as the FakeTime backend.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;
use berth_api::{BackendError, FakeTimeTarget, Metrics};
use berth_proto::v1;

use crate::config::Config;
use crate::faketime::store::CheckedAt;
use crate::ipam::backend::AgentIpam;
use crate::ipam::collector::Collector;

/// `berth.v1.FakeTime` over the same [`crate::faketime::Control`] that
/// `berth-agent faketime …` runs: the state dir's locked state file and timestamp files.
pub struct FakeTimeApi {
    control: crate::faketime::Control,
}

impl FakeTimeApi {
    pub fn new(state_dir: &Path) -> FakeTimeApi {
        FakeTimeApi {
            control: crate::faketime::Control::new(state_dir),
        }
    }

    fn answer(
        r: Result<Vec<crate::faketime::Status>, crate::faketime::ControlError>,
    ) -> Result<Vec<v1::FakeTimeContainer>, BackendError> {
        use crate::faketime::ControlError;
        let statuses = r.map_err(|e| {
            if let ControlError::NotFound(target) = &e {
                // Displayed as "<what> not found".
                return BackendError::NotFound(format!(
                    "faketime container in {target} (a pod gets one from a berth.io/faketime \
                     annotation when it is created)"
                ));
            }
            let kind: fn(String) -> BackendError = match e {
                ControlError::NotFound(_) => BackendError::NotFound,
                ControlError::NotInjected { .. } => BackendError::Precondition,
                ControlError::Write { .. } | ControlError::Vdso { .. } | ControlError::Store(_) => {
                    BackendError::Internal
                }
            };
            // The whole chain: "cannot change the offset …: <io error>".
            kind(format!("{:#}", anyhow::Error::from(e)))
        })?;
        Ok(statuses.into_iter().map(to_proto).collect())
    }
}

fn to_proto(s: crate::faketime::Status) -> v1::FakeTimeContainer {
    v1::FakeTimeContainer {
        container_id: s.container_id,
        namespace: s.namespace,
        pod: s.pod,
        container: s.container,
        offset: s.offset,
        offset_ns: s.offset_ns,
        injected: s.injected,
        covered: s.covered,
        coverage: s.coverage.unwrap_or_default(),
        checked_at: match s.checked_at {
            Some(CheckedAt::Create) => "create".into(),
            Some(CheckedAt::Start) => "start".into(),
            None => String::new(),
        },
        reason: s.reason,
        updated_at: s.updated_at,
        processes: s
            .processes
            .into_iter()
            .map(|p| v1::FakeTimeProcess {
                pid: p.pid,
                exe: p.exe,
                how: p.how,
                offset: p.offset.unwrap_or_default(),
                reason: p.reason,
            })
            .collect(),
    }
}

fn control_target(t: &FakeTimeTarget) -> crate::faketime::Target<'_> {
    crate::faketime::Target {
        namespace: &t.namespace,
        pod: &t.pod,
        container: t.container.as_deref(),
    }
}

impl berth_api::FakeTimeBackend for FakeTimeApi {
    fn get(&self, t: &FakeTimeTarget) -> Result<Vec<v1::FakeTimeContainer>, BackendError> {
        Self::answer(self.control.get(&control_target(t)))
    }

    fn set(
        &self,
        t: &FakeTimeTarget,
        offset: &str,
    ) -> Result<Vec<v1::FakeTimeContainer>, BackendError> {
        // The annotation grammar: relative, or an absolute start turned into an offset now.
        let offset = berth_faketime::Offset::parse_annotation(offset, SystemTime::now())
            .map_err(|e| BackendError::Invalid(e.to_string()))?;
        Self::answer(self.control.set(&control_target(t), offset))
    }

    fn clear(&self, t: &FakeTimeTarget) -> Result<Vec<v1::FakeTimeContainer>, BackendError> {
        Self::answer(self.control.clear(&control_target(t)))
    }
}

/// The `[debug]` section as berth-debug's config (checked), if present.
pub fn debug_config(config: &Config) -> anyhow::Result<Option<berth_debug::DebugConfig>> {
    let Some(table) = &config.debug else {
        return Ok(None);
    };
    let debug: berth_debug::DebugConfig =
        table.clone().try_into().map_err(|e: toml::de::Error| {
            anyhow::anyhow!("invalid [debug] section: {}", e.message())
        })?;
    debug.validate().context("invalid [debug] section")?;
    if !wanted(config) {
        anyhow::bail!(
            "[debug] needs the API: debug sessions are started over it; add an [api] section"
        );
    }
    Ok(Some(debug))
}

/// Whether the config asks for the API at all.
pub fn wanted(config: &Config) -> bool {
    config.api.listen.is_some() || !config.api.server.is_empty()
}

/// Validates the `[api]` section (unknown keys, TCP without TLS). Files it names (certs,
/// policy, `ipam_network`) are the node's and are checked when the agent starts.
pub fn check(config: &Config) -> anyhow::Result<()> {
    let api =
        berth_api::ApiConfig::from_agent_section(config.api.listen.as_deref(), &config.api.server)
            .context("invalid [api] section")?;
    api.validate().context("invalid [api] section")?;
    debug_config(config)?;
    Ok(())
}

/// Builds the server from the agent's config; `serve` runs it until `shutdown`. The
/// collector, when `[ipam_gc]` is on, already holds the network of `ipam_network`.
pub fn server(
    config: &Config,
    collector: Option<Arc<Collector>>,
    metrics: Metrics,
) -> anyhow::Result<berth_api::ServerBuilder> {
    let api =
        berth_api::ApiConfig::from_agent_section(config.api.listen.as_deref(), &config.api.server)
            .context("invalid [api] section")?;
    let mut builder = berth_api::Server::builder(api)
        .metrics(metrics)
        .logs(berth_api::DirLayout::new(&config.filelogs.log_root));
    let network = match (&collector, &config.ipam_network) {
        (Some(c), _) => Some(c.network().clone()),
        (None, Some(path)) => Some(crate::ipam::open_network(path)?),
        (None, None) => None,
    };
    if let Some(network) = network {
        builder = builder.ipam(AgentIpam::new(&network, collector));
    }
    if config.faketime.enabled {
        builder = builder.faketime(FakeTimeApi::new(&config.state_dir));
    }
    if let Some(debug) = debug_config(config)? {
        builder = builder.debug(crate::debug::DebugApi::new(debug));
    }
    Ok(builder)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faketime_api_maps_control_errors_and_takes_absolute_starts() {
        use crate::faketime::store::{CoverageRecord, Entry, Store};
        use berth_api::FakeTimeBackend;
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path());
        let entry = |container: &str, covered: bool| Entry {
            namespace: "shop".into(),
            pod: "web-0".into(),
            pod_uid: "u".into(),
            container: container.into(),
            offset_ns: 0,
            injected: covered,
            coverage: Some(CoverageRecord {
                covered,
                kind: if covered { "glibc" } else { "static" }.into(),
                reason: if covered {
                    "dynamic glibc"
                } else {
                    "a static binary"
                }
                .into(),
                checked_at: CheckedAt::Create,
            }),
            note: String::new(),
            updated_at: String::new(),
        };
        store
            .update(|m| {
                m.insert("c1".into(), entry("app", true));
                m.insert("c2".into(), entry("bb", false));
            })
            .unwrap();
        std::fs::create_dir_all(store.container_dir("c1")).unwrap();
        let api = FakeTimeApi::new(tmp.path());
        let target = |pod: &str, container: Option<&str>| FakeTimeTarget {
            namespace: "shop".parse().unwrap(),
            pod: pod.parse().unwrap(),
            container: container.map(str::to_owned),
        };

        let got = api.set(&target("web-0", Some("app")), "+10d").unwrap();
        assert_eq!(got[0].offset, "+10d");
        assert_eq!(got[0].checked_at, "create");
        assert_eq!(got[0].covered, Some(true));
        let start = api
            .set(&target("web-0", Some("app")), "@2099-01-01")
            .unwrap();
        assert!(
            start[0].offset_ns > 70 * 365 * 86_400 * 1_000_000_000,
            "{start:?}"
        );
        assert!(matches!(
            api.set(&target("web-0", Some("app")), "+2 days"),
            Err(BackendError::Invalid(_))
        ));
        match api.get(&target("db-0", None)) {
            Err(BackendError::NotFound(m)) => assert!(m.contains("berth.io/faketime"), "{m}"),
            other => panic!("{other:?}"),
        }
        match api.set(&target("web-0", Some("bb")), "+1d") {
            Err(BackendError::Precondition(m)) => assert!(m.contains("static binary"), "{m}"),
            other => panic!("{other:?}"),
        }
        let cleared = api.clear(&target("web-0", None)).unwrap();
        assert_eq!(cleared.len(), 2);
        assert_eq!(
            cleared
                .iter()
                .find(|c| c.container == "app")
                .unwrap()
                .offset,
            "0"
        );
    }

    #[test]
    fn check_refuses_a_typo_in_the_api_section() {
        let text = "[api]\nunix_socket = \"/run/berth/api.sock\"\npolicy = \"/p\"\n[api.audit]\npath = \"/a\"\nkep = 3\n";
        let config: Config = toml::from_str(text).unwrap();
        let err = check(&config).unwrap_err();
        assert!(format!("{err:#}").contains("kep"), "{err:#}");
        let good: Config = toml::from_str(&text.replace("kep = 3\n", "")).unwrap();
        check(&good).unwrap();
    }
}
