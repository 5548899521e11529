//! `berth.v1.Node`.

use berth_proto::v1;
use tonic::{Request, Response, Status};

use crate::audit::AuditLog;
use crate::config::NodeIdentity;
use crate::policy::PolicyStore;

pub struct NodeService {
    pub(crate) node: NodeIdentity,
    pub(crate) started_unix_ms: i64,
    pub(crate) policy: PolicyStore,
    pub(crate) audit: AuditLog,
    pub(crate) tls: Option<std::sync::Arc<crate::transport::TlsStore>>,
    pub(crate) services: Vec<String>,
    pub(crate) features: Vec<String>,
}

#[tonic::async_trait]
impl v1::node_server::Node for NodeService {
    async fn info(
        &self,
        req: Request<v1::NodeInfoRequest>,
    ) -> Result<Response<v1::NodeInfo>, Status> {
        let ctx = super::context(&req)?;
        let c = &ctx.caller;
        Ok(Response::new(v1::NodeInfo {
            node_name: self.node.name.clone(),
            rack: self.node.rack.clone(),
            zone: self.node.zone.clone(),
            labels: self.node.labels.clone().into_iter().collect(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            api_version: "berth.v1".to_string(),
            started_unix_ms: self.started_unix_ms,
            caller: Some(v1::Caller {
                identity: c.identity.clone(),
                names: c.names.clone(),
                groups: c.groups.clone(),
                roles: self.policy.current().roles_of(c),
                transport: c.transport.as_str().to_string(),
            }),
        }))
    }

    async fn health(
        &self,
        _req: Request<v1::HealthRequest>,
    ) -> Result<Response<v1::HealthResponse>, Status> {
        let policy = self.policy.last_error();
        let audit = self.audit.last_error();
        let mut components = vec![
            v1::ComponentHealth {
                name: "policy".into(),
                healthy: policy.is_none(),
                message: policy
                    .map(|e| format!("last reload refused, previous policy in force: {e}"))
                    .unwrap_or_default(),
            },
            v1::ComponentHealth {
                name: "audit".into(),
                healthy: audit.is_none(),
                message: audit.unwrap_or_default(),
            },
        ];
        if let Some(tls) = &self.tls {
            let err = tls.last_error();
            components.push(v1::ComponentHealth {
                name: "tls".into(),
                healthy: err.is_none(),
                message: err
                    .map(|e| format!("last reload refused, previous certificates in force: {e}"))
                    .unwrap_or_default(),
            });
        }
        let status = if components.iter().all(|c| c.healthy) {
            v1::ServingStatus::Serving
        } else {
            v1::ServingStatus::Degraded
        };
        Ok(Response::new(v1::HealthResponse {
            status: status as i32,
            components,
        }))
    }

    async fn capabilities(
        &self,
        _req: Request<v1::CapabilitiesRequest>,
    ) -> Result<Response<v1::CapabilitiesResponse>, Status> {
        Ok(Response::new(v1::CapabilitiesResponse {
            services: self.services.clone(),
            features: self.features.clone(),
        }))
    }
}
