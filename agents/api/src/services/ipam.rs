//! `berth.v1.Ipam`: the guard authorized the namespace named in the request; this service
//! makes sure the addresses touched really belong to it.

use std::sync::Arc;

use berth_proto::v1;
use tonic::{Request, Response, Status};

use crate::backend::IpamBackend;
use crate::pod::PodName;

pub struct IpamService {
    pub(crate) backend: Arc<dyn IpamBackend>,
}

fn need(field: &str, v: &str) -> Result<(), Status> {
    if v.is_empty() {
        Err(Status::invalid_argument(format!("{field} is required")))
    } else {
        Ok(())
    }
}

/// An allocation outside the caller's namespace looks exactly like a missing one.
fn in_namespace(a: v1::Allocation, ns: &str, address: &str) -> Result<v1::Allocation, Status> {
    if ns.is_empty() || a.namespace == ns {
        Ok(a)
    } else {
        Err(Status::not_found(format!(
            "address {address} not found in namespace {ns:?}"
        )))
    }
}

#[tonic::async_trait]
impl v1::ipam_server::Ipam for IpamService {
    async fn list(
        &self,
        req: Request<v1::ListAllocationsRequest>,
    ) -> Result<Response<v1::ListAllocationsResponse>, Status> {
        let r = req.into_inner();
        let mut allocations = self.backend.list(&r).await?;
        allocations.retain(|a| {
            (r.namespace.is_empty() || a.namespace == r.namespace)
                && (r.pool.is_empty() || a.pool == r.pool)
        });
        Ok(Response::new(v1::ListAllocationsResponse {
            allocations,
            sticky_default: self.backend.sticky_default(),
        }))
    }

    async fn show(
        &self,
        req: Request<v1::ShowAddressRequest>,
    ) -> Result<Response<v1::Allocation>, Status> {
        let r = req.into_inner();
        need("address", &r.address)?;
        let a = self.backend.show(&r.network, &r.address).await?;
        Ok(Response::new(in_namespace(a, &r.namespace, &r.address)?))
    }

    async fn history(
        &self,
        req: Request<v1::IpamHistoryRequest>,
    ) -> Result<Response<v1::IpamHistoryResponse>, Status> {
        let r = req.into_inner();
        let mut events = self.backend.history(&r).await?;
        events.retain(|e| r.namespace.is_empty() || e.namespace == r.namespace);
        let limit = r.limit as usize;
        if limit > 0 && events.len() > limit {
            events.drain(..events.len() - limit);
        }
        Ok(Response::new(v1::IpamHistoryResponse { events }))
    }

    async fn reserve(
        &self,
        req: Request<v1::ReserveRequest>,
    ) -> Result<Response<v1::Allocation>, Status> {
        let ctx = super::context(&req)?;
        let r = req.into_inner();
        need("network", &r.network)?;
        need("address", &r.address)?;
        if r.namespace.is_empty() != r.owner.is_empty() {
            return Err(Status::invalid_argument(
                "give namespace and owner together (reserve for a pod), or neither (block the \
                 address for everyone)",
            ));
        }
        if !r.owner.is_empty() {
            // The owner becomes a key segment of the pod's sticky index: a pod name, checked
            // like every other pod reference.
            PodName::from_request(Some(v1::PodRef {
                namespace: r.namespace.clone(),
                pod: r.owner.clone(),
            }))?;
        }
        let a = self.backend.reserve(&r, &ctx.caller.identity).await?;
        Ok(Response::new(a))
    }

    async fn release(
        &self,
        req: Request<v1::ReleaseRequest>,
    ) -> Result<Response<v1::ReleaseResponse>, Status> {
        let ctx = super::context(&req)?;
        let r = req.into_inner();
        need("address", &r.address)?;
        let current = self.backend.show(&r.network, &r.address).await?;
        let current = in_namespace(current, &r.namespace, &r.address)?;
        let network = if r.network.is_empty() {
            current.network.clone()
        } else {
            r.network.clone()
        };
        let released = self
            .backend
            .release(&network, &r.address, &ctx.caller.identity)
            .await?;
        Ok(Response::new(v1::ReleaseResponse {
            released: Some(released),
        }))
    }

    async fn gc(
        &self,
        req: Request<v1::IpamGcRequest>,
    ) -> Result<Response<v1::IpamGcResponse>, Status> {
        let r = req.into_inner();
        let collected = self.backend.gc(r.dry_run).await?;
        Ok(Response::new(v1::IpamGcResponse {
            collected,
            dry_run: r.dry_run,
        }))
    }
}
