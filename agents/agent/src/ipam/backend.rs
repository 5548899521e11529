//! `berth.v1.Ipam` on the agent: berth-api's store calls, plus collection from
//! [`super::collector`] (which needs the NRI view only the agent has).

use std::sync::Arc;

use berth_api::{BackendError, IpamBackend};
use berth_proto::v1;

use super::collector::{Collector, GcError};
use super::core::{CoreIpam, allocation, backend_error};

pub struct AgentIpam {
    core: CoreIpam,
    network: String,
    collector: Option<Arc<Collector>>,
}

impl AgentIpam {
    pub fn new(network: &super::Network, collector: Option<Arc<Collector>>) -> AgentIpam {
        AgentIpam {
            core: CoreIpam::new(network.ipam.clone()),
            network: network.name.clone(),
            collector,
        }
    }
}

#[tonic::async_trait]
impl IpamBackend for AgentIpam {
    async fn list(
        &self,
        req: &v1::ListAllocationsRequest,
    ) -> Result<Vec<v1::Allocation>, BackendError> {
        self.core.list(req).await
    }

    async fn show(&self, network: &str, address: &str) -> Result<v1::Allocation, BackendError> {
        self.core.show(network, address).await
    }

    async fn history(
        &self,
        req: &v1::IpamHistoryRequest,
    ) -> Result<Vec<v1::IpamEvent>, BackendError> {
        self.core.history(req).await
    }

    async fn reserve(
        &self,
        req: &v1::ReserveRequest,
        actor: &str,
    ) -> Result<v1::Allocation, BackendError> {
        self.core.reserve(req, actor).await
    }

    async fn release(
        &self,
        network: &str,
        address: &str,
        actor: &str,
    ) -> Result<v1::Allocation, BackendError> {
        self.core.release(network, address, actor).await
    }

    fn sticky_default(&self) -> String {
        self.core.sticky_default()
    }

    async fn gc(&self, dry_run: bool) -> Result<Vec<v1::Allocation>, BackendError> {
        let Some(collector) = self.collector.clone() else {
            return Err(BackendError::Unavailable(
                "leaked-lease collection is off on this agent: add an [ipam_gc] section to its config".into(),
            ));
        };
        let report = tokio::task::spawn_blocking(move || collector.pass(dry_run))
            .await
            .map_err(|e| BackendError::Internal(format!("ipam gc task failed: {e}")))?
            .map_err(|e| match e {
                GcError::Incomplete(_) => BackendError::Unavailable(e.to_string()),
                GcError::Store(s) => backend_error(s),
            })?;
        Ok(report
            .collected
            .iter()
            .map(|l| allocation(&self.network, l))
            .collect())
    }
}
