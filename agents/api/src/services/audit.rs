//! `berth.v1.Audit`.

use berth_proto::v1;
use tonic::{Request, Response, Status};

use crate::audit::{AuditFilter, AuditLog};
use crate::error::ServiceError;

const DEFAULT_LIMIT: usize = 1000;
const MAX_LIMIT: usize = 10_000;

pub struct AuditService {
    pub(crate) log: AuditLog,
}

#[tonic::async_trait]
impl v1::audit_server::Audit for AuditService {
    async fn query(
        &self,
        req: Request<v1::AuditQueryRequest>,
    ) -> Result<Response<v1::AuditQueryResponse>, Status> {
        let q = req.into_inner();
        if !q.decision.is_empty() && q.decision != "allow" && q.decision != "deny" {
            return Err(Status::invalid_argument(
                "decision must be \"allow\", \"deny\" or empty",
            ));
        }
        let limit = match q.limit as usize {
            0 => DEFAULT_LIMIT,
            n => n.min(MAX_LIMIT),
        };
        let filter = AuditFilter {
            since_unix_ms: q.since_unix_ms,
            until_unix_ms: q.until_unix_ms,
            identity: q.identity,
            method: q.method,
            decision: q.decision,
        };
        let log = self.log.clone();
        let (records, truncated) = tokio::task::spawn_blocking(move || log.query(&filter, limit))
            .await
            .map_err(|source| ServiceError::Task {
                what: "audit query",
                source,
            })?
            .map_err(ServiceError::from)?;
        Ok(Response::new(v1::AuditQueryResponse {
            records: records
                .into_iter()
                .map(|r| v1::AuditRecord {
                    prev: r.prev,
                    time: r.time,
                    event: r.event,
                    call_id: r.call_id,
                    identity: r.identity,
                    groups: r.groups,
                    transport: r.transport,
                    peer: r.peer,
                    method: r.method,
                    target: r.target,
                    decision: r.decision,
                    reason: r.reason,
                    code: r.code,
                    duration_us: r.duration_us,
                    bytes_sent: r.bytes_sent,
                    bytes_received: r.bytes_received,
                    detail_json: r.detail.map(|d| d.to_string()).unwrap_or_default(),
                })
                .collect(),
            truncated,
        }))
    }
}
