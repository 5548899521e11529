//! The seam between a CNI plugin and the IPAM library.
//!
//! `berth-cni` (in-process) and `berth-ipam` (standalone IPAM plugin) both talk to addresses
//! only through [`Allocator`], so the plugin's tests can pass an in-memory allocator and the
//! real one can sit on the local or the etcd store without the plugin knowing.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Who a pod is, independent of its sandbox id: stickiness hangs on this.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodIdentity {
    pub namespace: String,
    pub name: String,
    /// The pod's uid as kubelet sends it; changes on re-create, so it is recorded, not keyed on.
    pub uid: Option<String>,
}

/// One address request: one interface of one sandbox on one network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllocateRequest {
    /// The CNI network name (`name` in the conflist).
    pub network: String,
    /// The sandbox id (`CNI_CONTAINERID`).
    pub container_id: String,
    /// The interface inside the pod (`CNI_IFNAME`, or the per-interface name in multi-NIC mode).
    pub ifname: String,
    /// From `K8S_POD_NAMESPACE`/`K8S_POD_NAME`/`K8S_POD_UID` in `CNI_ARGS`; absent outside Kubernetes.
    pub pod: Option<PodIdentity>,
    /// The pod's annotations (`io.kubernetes.cri.pod-annotations` capability).
    pub annotations: BTreeMap<String, String>,
    /// Pools named by the plugin's own config for this interface (multi-NIC): at most one
    /// per IP family; empty: the pools are picked by annotation, app and rack.
    pub pools: Vec<String>,
}

/// A route handed to the pod with its address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteSpec {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// One address the allocator decided for an interface (an interface has one per IP family).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// The address with the pool's prefix length.
    pub address: IpNet,
    /// The pool's gateway (the TOR switch in underlay mode, the bridge otherwise).
    pub gateway: Option<IpAddr>,
    /// The pool's routes.
    pub routes: Vec<RouteSpec>,
    /// The name of the pool the address came from.
    pub pool: String,
    /// The pool's VLAN, if it has one.
    pub vlan: Option<u16>,
}

/// An attachment the runtime still uses (`cni.dev/valid-attachments` in GC).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// What a garbage collection freed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub released: Vec<IpAddr>,
    /// The released allocations as they were (sandbox, interface, pod, since when).
    pub collected: Vec<crate::state::Lease>,
}

/// Address management for one or more networks.
///
/// Every method is safe to call from several processes at once; `release` is idempotent
/// (releasing an unknown attachment is `Ok`), as CNI DEL must be.
pub trait Allocator: Send + Sync {
    /// Gives the interface one address per IP family its pools offer (IPv4 first), the same
    /// ones again if this attachment already has them. All or nothing: on an error no
    /// address was taken.
    fn allocate(&self, request: &AllocateRequest) -> Result<Vec<Allocation>, crate::IpamError>;
    /// Frees (or starts the hold period of) the attachment's addresses.
    fn release(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<(), crate::IpamError>;
    /// The attachment's current addresses (IPv4 first; empty: none), for CHECK.
    fn lookup(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<Vec<Allocation>, crate::IpamError>;
    /// Frees every attachment of `network` that is not in `valid` (held addresses stay held).
    fn gc(&self, network: &str, valid: &[Attachment]) -> Result<GcReport, crate::IpamError>;
    /// Whether the store can be used now (CNI STATUS).
    fn status(&self) -> Result<(), crate::IpamError>;
}
