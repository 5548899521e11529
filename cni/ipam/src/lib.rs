//! Fixed-IP IPAM: rack-aware pools, sticky addresses, hold periods, history, GC; local and etcd stores.

pub mod allocator;
pub mod error;

pub use allocator::{
    AllocateRequest, Allocation, Allocator, Attachment, GcReport, PodIdentity, RouteSpec,
};
pub use error::IpamError;
