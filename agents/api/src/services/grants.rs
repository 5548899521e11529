//! `berth.v1.Grants`: temporary role grants (see [`crate::grants`]). The guard authorized and
//! audits the call; this service applies the grant rules.

use std::time::Duration;

use berth_proto::v1;
use tonic::{Request, Response, Status};

use crate::grants::{Grant, GrantAsk, GrantError, Grants, unix_ms};
use crate::policy::PolicyStore;

pub struct GrantsService {
    pub(crate) grants: Grants,
    pub(crate) policy: PolicyStore,
}

fn to_proto(g: Grant) -> v1::GrantInfo {
    v1::GrantInfo {
        id: g.id,
        identity: g.identity,
        role: g.role,
        granted_by: g.granted_by,
        reason: g.reason,
        granted_unix_ms: unix_ms(g.granted_at),
        expires_unix_ms: unix_ms(g.expires_at),
    }
}

fn status(e: GrantError) -> Status {
    match e {
        GrantError::NotFound(_) => Status::not_found(e.to_string()),
        GrantError::SelfGrant(_) => Status::permission_denied(e.to_string()),
        _ => Status::invalid_argument(e.to_string()),
    }
}

#[tonic::async_trait]
impl v1::grants_server::Grants for GrantsService {
    async fn grant(
        &self,
        req: Request<v1::GrantRequest>,
    ) -> Result<Response<v1::GrantInfo>, Status> {
        let ctx = super::context(&req)?;
        let r = req.into_inner();
        let policy = self.policy.current();
        let g = self
            .grants
            .grant(
                &ctx.caller.identity,
                &ctx.caller.names,
                &GrantAsk {
                    identity: r.identity.trim(),
                    role: r.role.trim(),
                    duration: Duration::from_secs(u64::from(r.duration_seconds)),
                    reason: &r.reason,
                },
                |role| policy.has_role(role),
            )
            .map_err(status)?;
        tracing::info!(id = %g.id, identity = %g.identity, role = %g.role, by = %g.granted_by,
            expires_in = ?Duration::from_secs(u64::from(r.duration_seconds)), "role granted");
        Ok(Response::new(to_proto(g)))
    }

    async fn list(
        &self,
        req: Request<v1::ListGrantsRequest>,
    ) -> Result<Response<v1::ListGrantsResponse>, Status> {
        let r = req.into_inner();
        let who = (!r.identity.is_empty()).then_some(r.identity.as_str());
        let grants = self.grants.list(who).into_iter().map(to_proto).collect();
        Ok(Response::new(v1::ListGrantsResponse { grants }))
    }

    async fn revoke(
        &self,
        req: Request<v1::RevokeGrantRequest>,
    ) -> Result<Response<v1::GrantInfo>, Status> {
        let r = req.into_inner();
        let g = self.grants.revoke(r.id.trim()).map_err(status)?;
        tracing::info!(id = %g.id, identity = %g.identity, role = %g.role, "grant revoked");
        Ok(Response::new(to_proto(g)))
    }
}
