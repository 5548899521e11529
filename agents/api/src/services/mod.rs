//! The gRPC service implementations. Authorization and audit happen before these run (see
//! [`crate::layer`]); services add the per-resource checks only they can make (e.g. that an
//! address really belongs to the namespace the caller was authorized for).

pub mod audit;
pub mod debug;
pub mod faketime;
pub mod grants;
pub mod ipam;
pub mod logs;
pub mod node;

use tonic::Request;

use crate::layer::CallContext;

/// The guard layer's context of this call; its absence is a wiring bug, so fail closed.
pub(crate) fn context<T>(req: &Request<T>) -> Result<CallContext, tonic::Status> {
    req.extensions()
        .get::<CallContext>()
        .cloned()
        .ok_or_else(|| tonic::Status::internal("call reached a service without the guard layer"))
}
