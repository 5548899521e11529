//! Where berth-cni gets addresses: the [`Allocator`] seam.
//!
//! The `ipam` section picks the allocator: without a `type` (or with `"berth-ipam"`) it is
//! berth's own IPAM library, in-process; any other `type` is a CNI IPAM plugin found in
//! `CNI_PATH` (e.g. Debian's `host-local`), executed the standard way and wrapped as an
//! [`Allocator`] so the rest of berth-cni does not know the difference.

use std::path::PathBuf;

use berth_cni_spec::delegate::{DelegateEnv, exec_plugin, find_plugin};
use berth_cni_spec::{CniError, CniResult, Command, Context};
use berth_ipam_core::{
    AllocateRequest, Allocation, Allocator, Attachment, GcReport, IpamConfig, IpamError, RouteSpec,
};
use serde_json::{Value, json};

use crate::error::from_ipam;

/// Opens the allocator for one call. The plugin takes this as a seam so tests can hand in
/// an in-memory allocator.
pub trait IpamOpener {
    fn open(&self, ctx: &Context, ipam: &Value) -> Result<Box<dyn Allocator>, CniError>;
}

/// The production choice described in the module docs.
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultIpam;

impl IpamOpener for DefaultIpam {
    fn open(&self, ctx: &Context, ipam: &Value) -> Result<Box<dyn Allocator>, CniError> {
        match ipam.get("type").and_then(Value::as_str) {
            None | Some("berth-ipam") => {
                let cfg = IpamConfig::from_json(ipam).map_err(|e| from_ipam(&e))?;
                berth_ipam_core::open(&cfg).map_err(|e| from_ipam(&e))
            }
            Some(plugin) => Ok(Box::new(ExecAllocator::new(ctx, plugin, ipam)?)),
        }
    }
}

/// A CNI IPAM plugin run as a child process, seen as an [`Allocator`].
pub struct ExecAllocator {
    plugin: PathBuf,
    conf: Vec<u8>,
    base: DelegateEnv,
}

impl ExecAllocator {
    pub fn new(ctx: &Context, plugin: &str, ipam: &Value) -> Result<ExecAllocator, CniError> {
        let path = find_plugin(plugin, &ctx.env.path)?;
        let conf = json!({
            "cniVersion": ctx.config.cni_version.as_str(),
            "name": ctx.config.name,
            "type": ctx.config.plugin_type,
            "ipam": ipam,
        });
        Ok(ExecAllocator {
            plugin: path,
            conf: conf.to_string().into_bytes(),
            base: DelegateEnv {
                container_id: ctx.env.container_id.clone(),
                netns: ctx.env.netns.clone(),
                ifname: ctx.env.ifname.as_deref().unwrap_or_default().to_string(),
                args: raw_args(ctx),
                path: ctx.env.path.clone(),
            },
        })
    }

    fn env(&self, container_id: &str, ifname: &str) -> DelegateEnv {
        DelegateEnv {
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
            ..self.base.clone()
        }
    }

    fn fail(e: CniError) -> IpamError {
        if e.code == berth_cni_spec::ErrorCode::TryAgainLater {
            IpamError::Unavailable(e.to_string())
        } else {
            IpamError::InvalidConfig(e.to_string())
        }
    }
}

fn raw_args(ctx: &Context) -> String {
    let a = &ctx.env.args;
    let mut parts = Vec::new();
    if a.ignore_unknown {
        parts.push("IgnoreUnknown=1".to_string());
    }
    for (k, v) in [
        ("K8S_POD_NAMESPACE", a.k8s_pod_namespace.as_deref()),
        ("K8S_POD_NAME", a.k8s_pod_name.as_deref()),
        (
            "K8S_POD_INFRA_CONTAINER_ID",
            a.k8s_pod_infra_container_id.as_deref(),
        ),
        ("K8S_POD_UID", a.k8s_pod_uid.as_deref()),
    ] {
        if let Some(v) = v {
            parts.push(format!("{k}={v}"));
        }
    }
    parts.extend(a.other.iter().map(|(k, v)| format!("{k}={v}")));
    parts.join(";")
}

impl Allocator for ExecAllocator {
    fn allocate(&self, req: &AllocateRequest) -> Result<Vec<Allocation>, IpamError> {
        if let Some(pool) = req.pools.first() {
            return Err(IpamError::InvalidConfig(format!(
                "pool {pool:?} needs berth's own IPAM; delegated IPAM plugins have no pools"
            )));
        }
        let out = exec_plugin(
            &self.plugin,
            Command::Add,
            &self.env(&req.container_id, &req.ifname),
            &self.conf,
        )
        .map_err(Self::fail)?
        .ok_or_else(|| IpamError::InvalidConfig("IPAM plugin printed no result".into()))?;
        let res = CniResult::from_value(&out).map_err(Self::fail)?;
        if res.ips.is_empty() {
            return Err(IpamError::InvalidConfig(
                "IPAM plugin returned no address".into(),
            ));
        }
        let pool = self
            .plugin
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        // One address per family (host-local gives one per range set), IPv4 first; each
        // carries the routes of its family.
        let mut out: Vec<Allocation> = Vec::new();
        for ip in &res.ips {
            let v4 = ip.address.addr().is_ipv4();
            if out.iter().any(|a| a.address.addr().is_ipv4() == v4) {
                return Err(IpamError::InvalidConfig(format!(
                    "IPAM plugin {pool} returned two {} addresses for one interface; configure one range set per IP family",
                    if v4 { "IPv4" } else { "IPv6" }
                )));
            }
            out.push(Allocation {
                address: ip.address,
                gateway: ip.gateway,
                routes: res
                    .routes
                    .iter()
                    .filter(|r| r.dst.addr().is_ipv4() == v4)
                    .map(|r| RouteSpec {
                        dst: r.dst,
                        gw: r.gw,
                    })
                    .collect(),
                pool: pool.clone(),
                vlan: None,
            });
        }
        out.sort_by_key(|a| a.address.addr().is_ipv6());
        Ok(out)
    }

    fn release(&self, _network: &str, container_id: &str, ifname: &str) -> Result<(), IpamError> {
        exec_plugin(
            &self.plugin,
            Command::Del,
            &self.env(container_id, ifname),
            &self.conf,
        )
        .map(|_| ())
        .map_err(Self::fail)
    }

    fn lookup(&self, _: &str, _: &str, _: &str) -> Result<Vec<Allocation>, IpamError> {
        // CNI IPAM plugins have no lookup; CHECK relies on the live state only.
        Ok(Vec::new())
    }

    fn gc(&self, _network: &str, _valid: &[Attachment]) -> Result<GcReport, IpamError> {
        // Reference IPAM plugins before CNI 1.1 have no GC; there is nothing to call.
        Ok(GcReport::default())
    }

    fn status(&self) -> Result<(), IpamError> {
        if self.plugin.is_file() {
            Ok(())
        } else {
            Err(IpamError::Unavailable(format!(
                "IPAM plugin {} is gone",
                self.plugin.display()
            )))
        }
    }
}
