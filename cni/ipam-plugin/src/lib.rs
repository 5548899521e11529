//! berth-ipam: the CNI IPAM plugin around `berth-ipam-core`.
//!
//! Each call opens the allocator from the config's `ipam` object, builds the request from
//! `CNI_CONTAINERID`/`CNI_IFNAME`/`CNI_ARGS` (pod identity) and `runtimeConfig`
//! (pod annotations, `ips` capability), and returns `ips`/`routes`. The protocol (env, stdin,
//! versions, error JSON) is `berth-cni-spec`'s executor.

#![forbid(unsafe_code)]

use berth_cni_spec::{CniError, CniResult, Context, ErrorCode, IpConfig, Plugin, Route};
use berth_ipam_core::logic::ANN_IP;
use berth_ipam_core::{
    AllocateRequest, Allocation, Allocator, Attachment, IpamConfig, IpamError, PodIdentity,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_runtime_config_entries_are_dropped_and_the_rest_kept() {
        let out = normalize_stdin(
            br#"{"name":"n","runtimeConfig":{"io.kubernetes.cri.pod-annotations":null,"ips":["10.0.0.2"]}}"#.to_vec(),
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["runtimeConfig"], serde_json::json!({"ips": ["10.0.0.2"]}));
        assert_eq!(v["name"], "n");
        let garbage = b"{not json".to_vec();
        assert_eq!(normalize_stdin(garbage.clone()), garbage);
        let plain = br#"{"name":"n"}"#.to_vec();
        assert_eq!(normalize_stdin(plain.clone()), plain);
    }
}

/// Own error code: CHECK found the allocation different from `prevResult`.
pub const CODE_CHECK_MISMATCH: u32 = 115;

/// Drops `null` entries of `runtimeConfig` before the config is parsed: containerd sends
/// `"io.kubernetes.cri.pod-annotations": null` for a pod without annotations (a Go nil map),
/// which means "none", not "malformed". Anything that is not such JSON is passed on unchanged
/// for the executor to judge.
pub fn normalize_stdin(input: Vec<u8>) -> Vec<u8> {
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&input) else {
        return input;
    };
    let Some(rc) = v.get_mut("runtimeConfig").and_then(|r| r.as_object_mut()) else {
        return input;
    };
    let before = rc.len();
    rc.retain(|_, val| !val.is_null());
    if rc.len() == before {
        return input;
    }
    serde_json::to_vec(&v).unwrap_or(input)
}

/// The plugin. Stateless: every process opens the store named by its config.
#[derive(Clone, Copy, Debug, Default)]
pub struct BerthIpam;

/// Maps a library error to the CNI error the runtime reads.
pub fn cni_error(e: &IpamError) -> CniError {
    CniError::from_error(ErrorCode::from_u32(e.cni_code()), e)
}

fn config(ctx: &Context) -> Result<IpamConfig, CniError> {
    let ipam = ctx.config.ipam.as_ref().ok_or_else(|| {
        CniError::invalid_config("the network config has no \"ipam\" section")
            .with_details("add \"ipam\": {\"type\": \"berth-ipam\", \"pools\": [...]}")
    })?;
    IpamConfig::from_json(ipam).map_err(|e| cni_error(&e))
}

fn open(ctx: &Context) -> Result<Box<dyn Allocator>, CniError> {
    berth_ipam_core::open(&config(ctx)?).map_err(|e| cni_error(&e))
}

/// The allocation request a CNI call describes.
pub fn request(ctx: &Context) -> AllocateRequest {
    let args = &ctx.env.args;
    let pod = args.pod().map(|(ns, name)| PodIdentity {
        namespace: ns.to_string(),
        name: name.to_string(),
        uid: args.k8s_pod_uid.clone(),
    });
    let mut annotations = ctx.config.runtime_config.pod_annotations.clone();
    // The `ips` capability (and CNI_ARGS IP=) ask for addresses like the annotation does:
    // at most one per IP family.
    let ips = &ctx.config.runtime_config.ips;
    let requested = if ips.is_empty() {
        args.other.get("IP").cloned()
    } else {
        Some(ips.join(","))
    };
    if let Some(ip) = requested {
        annotations.entry(ANN_IP.to_string()).or_insert(ip);
    }
    AllocateRequest {
        network: ctx.config.name.to_string(),
        container_id: ctx.env.container_id.clone(),
        // ADD, DEL and CHECK always have one (`Env::from_vars`).
        ifname: ctx.env.ifname.as_deref().unwrap_or_default().to_string(),
        pod,
        annotations,
        pools: vec![],
    }
}

/// The CNI result for an interface's addresses (one per IP family).
pub fn result(all: &[Allocation]) -> CniResult {
    let mut res = CniResult::default();
    for a in all {
        res.ips.push(IpConfig {
            address: a.address,
            gateway: a.gateway,
            interface: None,
        });
        for r in &a.routes {
            // Routes of another family than the pool's cannot be installed with its address.
            if r.dst.addr().is_ipv4() == a.address.addr().is_ipv4()
                && !res.routes.iter().any(|x| x.dst == r.dst)
            {
                res.routes.push(Route::new(r.dst, r.gw));
            }
        }
    }
    res
}

impl Plugin for BerthIpam {
    fn add(&self, ctx: &Context) -> Result<CniResult, CniError> {
        let alloc = open(ctx)?;
        let a = alloc.allocate(&request(ctx)).map_err(|e| cni_error(&e))?;
        Ok(result(&a))
    }

    fn del(&self, ctx: &Context) -> Result<(), CniError> {
        let alloc = open(ctx)?;
        alloc
            .release(&ctx.config.name, &ctx.env.container_id, ctx.env.ifname()?)
            .map_err(|e| cni_error(&e))
    }

    fn check(&self, ctx: &Context) -> Result<(), CniError> {
        let alloc = open(ctx)?;
        let ifname = ctx.env.ifname()?;
        let all = alloc
            .lookup(&ctx.config.name, &ctx.env.container_id, ifname)
            .map_err(|e| cni_error(&e))?;
        if all.is_empty() {
            return Err(CniError::new(
                ErrorCode::UnknownContainer,
                format!(
                    "no address is allocated to {}/{} on network {}",
                    ctx.env.container_id, ifname, ctx.config.name
                ),
            ));
        }
        if let Some(prev) = &ctx.config.prev_result
            && let Some(a) = all
                .iter()
                .find(|a| !prev.ips.iter().any(|ip| ip.address == a.address))
        {
            return Err(CniError::new(
                ErrorCode::Plugin(CODE_CHECK_MISMATCH),
                format!(
                    "prevResult does not hold the allocated address {}",
                    a.address
                ),
            )
            .with_details("re-create the sandbox to get a consistent address"));
        }
        Ok(())
    }

    fn status(&self, ctx: &Context) -> Result<(), CniError> {
        let alloc = open(ctx).map_err(|e| {
            if e.code == ErrorCode::TryAgainLater {
                CniError::new(ErrorCode::NotAvailable, e.msg.clone())
            } else {
                e
            }
        })?;
        alloc.status().map_err(|e| {
            CniError::from_error(ErrorCode::NotAvailable, &e)
                .with_details(format!("IPAM store is not usable: {e}"))
        })
    }

    fn gc(&self, ctx: &Context) -> Result<(), CniError> {
        let alloc = open(ctx)?;
        let valid: Vec<Attachment> = ctx
            .config
            .valid_attachments
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|a| Attachment {
                container_id: a.container_id,
                ifname: a.ifname,
            })
            .collect();
        alloc
            .gc(&ctx.config.name, &valid)
            .map(|_| ())
            .map_err(|e| cni_error(&e))
    }
}
