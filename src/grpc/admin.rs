//! StorageAdminService: the runtime storage switch, behind a bearer token.

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use super::status::{invalid_field, status};
use crate::domain::{Actor, TenantId};
use crate::pb;
use crate::pb::storage_admin_service_server::StorageAdminService;
use crate::storage::mode::{Backend, StorageMode};
use crate::storage::postgres::GLOBAL;
use crate::storage::replica::{DivergenceLog, Outbox};
use crate::storage::router::{Metrics, ModeSync};

/// What the admin service works with.
#[derive(Clone)]
pub struct AdminState {
    pub sync: ModeSync,
    /// `GCDR_ADMIN_TOKEN`; `None`: the admin API is off.
    pub token: Option<String>,
    pub dynamodb_enabled: bool,
    pub metrics: Arc<Metrics>,
    /// Each store's divergence log.
    pub logs: Vec<(Backend, Arc<dyn DivergenceLog>)>,
    /// Each store's outbox of copies not yet confirmed.
    pub outboxes: Vec<(Backend, Arc<dyn Outbox>)>,
    /// `GCDR_OUTBOX_GRACE_MS`: an intent older than this is overdue (replayed).
    pub outbox_grace: Duration,
}

/// The most intents one status call counts per store.
const OUTBOX_COUNT_LIMIT: usize = 10_000;

/// How long a status call waits for one store's log or outbox: an unreachable store is
/// reported unreadable rather than holding the call for the SDK's retries.
const STATUS_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// `fut`, or `Unavailable` after [`STATUS_READ_TIMEOUT`].
async fn bounded<T>(
    fut: impl Future<Output = crate::storage::StoreResult<T>>,
) -> crate::storage::StoreResult<T> {
    tokio::time::timeout(STATUS_READ_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| {
            Err(crate::storage::StoreError::Unavailable(format!(
                "no answer within {STATUS_READ_TIMEOUT:?}"
            )))
        })
}

/// The StorageAdminService handler.
pub struct StorageAdminHandler {
    state: AdminState,
}

impl StorageAdminHandler {
    pub fn new(state: AdminState) -> Self {
        Self { state }
    }

    /// UNIMPLEMENTED while the admin API is off; UNAUTHENTICATED unless the request
    /// carries `authorization: Bearer <GCDR_ADMIN_TOKEN>`. Compared by hash, so the
    /// time taken does not depend on how much of the token matched.
    fn authorize<T>(&self, req: &Request<T>) -> Result<Actor, Status> {
        let Some(expected) = &self.state.token else {
            return Err(Status::unimplemented(
                "the admin API is off: start the server with GCDR_ADMIN_TOKEN set",
            ));
        };
        let given = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if Sha256::digest(given.as_bytes()) != Sha256::digest(expected.as_bytes()) {
            return Err(Status::unauthenticated(
                "admin calls need `authorization: Bearer <GCDR_ADMIN_TOKEN>`",
            ));
        }
        let actor = req
            .metadata()
            .get("x-user-id")
            .and_then(|v| v.to_str().ok())
            .and_then(Actor::parse)
            .unwrap_or_else(|| Actor::parse("admin").unwrap_or_else(Actor::system));
        Ok(actor)
    }
}

fn to_pb(m: StorageMode) -> i32 {
    (match m {
        StorageMode::Dynamodb => pb::StorageMode::Dynamodb,
        StorageMode::DualDynamodbPrimary => pb::StorageMode::DualDynamodbPrimary,
        StorageMode::DualPostgresPrimary => pb::StorageMode::DualPostgresPrimary,
        StorageMode::Postgres => pb::StorageMode::Postgres,
    }) as i32
}

fn from_pb(v: i32) -> Result<StorageMode, Status> {
    match pb::StorageMode::try_from(v) {
        Ok(pb::StorageMode::Dynamodb) => Ok(StorageMode::Dynamodb),
        Ok(pb::StorageMode::DualDynamodbPrimary) => Ok(StorageMode::DualDynamodbPrimary),
        Ok(pb::StorageMode::DualPostgresPrimary) => Ok(StorageMode::DualPostgresPrimary),
        Ok(pb::StorageMode::Postgres) => Ok(StorageMode::Postgres),
        _ => Err(invalid_field(
            "mode",
            "must be one of STORAGE_MODE_DYNAMODB, STORAGE_MODE_DUAL_DYNAMODB_PRIMARY, \
             STORAGE_MODE_DUAL_POSTGRES_PRIMARY, STORAGE_MODE_POSTGRES",
        )),
    }
}

fn tenant_field(s: &str) -> Result<Option<TenantId>, Status> {
    if s.is_empty() {
        return Ok(None);
    }
    TenantId::parse(s)
        .map(Some)
        .ok_or_else(|| invalid_field("tenant_id", "is not a valid tenant id"))
}

fn precondition(reason: &str, message: String) -> Status {
    status(tonic::Code::FailedPrecondition, reason, message)
}

#[tonic::async_trait]
impl StorageAdminService for StorageAdminHandler {
    async fn get_storage_mode(
        &self,
        req: Request<pb::GetStorageModeRequest>,
    ) -> Result<Response<pb::GetStorageModeResponse>, Status> {
        self.authorize(&req)?;
        let tenant = tenant_field(&req.get_ref().tenant_id)?;
        let s = &self.state.sync;
        let table = s.pg.load_modes(s.default).await.map_err(Status::from)?;
        let effective = match &tenant {
            Some(t) => table.for_tenant(t.as_str()),
            None => table.global,
        };
        Ok(Response::new(pb::GetStorageModeResponse {
            global_mode: to_pb(table.global),
            tenant_overrides: table
                .tenants
                .iter()
                .map(|(t, m)| pb::TenantStorageMode {
                    tenant_id: t.clone(),
                    mode: to_pb(*m),
                })
                .collect(),
            effective_mode: to_pb(effective),
        }))
    }

    async fn set_storage_mode(
        &self,
        req: Request<pb::SetStorageModeRequest>,
    ) -> Result<Response<pb::SetStorageModeResponse>, Status> {
        let actor = self.authorize(&req)?;
        let r = req.into_inner();
        let tenant = tenant_field(&r.tenant_id)?;
        if r.clear_override && tenant.is_none() {
            return Err(invalid_field(
                "tenant_id",
                "is required with clear_override",
            ));
        }
        if r.reason.chars().count() > 500 {
            return Err(invalid_field("reason", "must be at most 500 characters"));
        }
        let s = &self.state.sync;
        let table = s.pg.load_modes(s.default).await.map_err(Status::from)?;
        let previous = match &tenant {
            Some(t) => table.for_tenant(t.as_str()),
            None => table.global,
        };
        let target = if r.clear_override {
            table.global
        } else {
            from_pb(r.mode)?
        };
        if target.uses_dynamodb() && !self.state.dynamodb_enabled {
            return Err(precondition(
                "DYNAMODB_NOT_CONFIGURED",
                format!(
                    "{target} needs DynamoDB; start the server with DYNAMODB_ENDPOINT or \
                     GCDR_DYNAMODB=true"
                ),
            ));
        }
        if !r.force
            && let Some(why) = previous.refuse_transition(target)
        {
            return Err(precondition("PHASE_SKIPPED", why));
        }
        let reason = (!r.reason.is_empty()).then_some(r.reason.as_str());
        match (&tenant, r.clear_override) {
            (Some(t), true) => s.pg.clear_mode(t.as_str()).await,
            (Some(t), false) => {
                s.pg.save_mode(t.as_str(), target, actor.as_str(), reason)
                    .await
            }
            (None, _) => s.pg.save_mode(GLOBAL, target, actor.as_str(), reason).await,
        }
        .map_err(Status::from)?;
        tracing::warn!(
            scope = tenant.as_ref().map_or(GLOBAL, |t| t.as_str()),
            from = %previous,
            to = %target,
            forced = r.force,
            actor = actor.as_str(),
            "storage mode set"
        );
        // This replica applies it now; the others within their poll interval.
        s.refresh().await.map_err(Status::from)?;
        Ok(Response::new(pb::SetStorageModeResponse {
            previous_mode: to_pb(previous),
            mode: to_pb(target),
        }))
    }

    async fn get_replication_status(
        &self,
        req: Request<pb::GetReplicationStatusRequest>,
    ) -> Result<Response<pb::GetReplicationStatusResponse>, Status> {
        self.authorize(&req)?;
        let tenant = tenant_field(&req.get_ref().tenant_id)?;
        let mut counters: Vec<pb::ReplicationCounter> = self
            .state
            .metrics
            .snapshot()
            .into_iter()
            .map(|(name, value)| pb::ReplicationCounter { name, value })
            .collect();
        let mut divergences = Vec::new();
        for (backend, log) in &self.state.logs {
            // One store being down must not hide what the other recorded.
            let list = match bounded(log.list(tenant.as_ref())).await {
                Ok(list) => list,
                Err(e) => {
                    tracing::warn!(store = backend.as_str(), error = %e,
                        "cannot read a divergence log");
                    counters.push(pb::ReplicationCounter {
                        name: format!("divergence_log_unreadable{{store={}}}", backend.as_str()),
                        value: 1,
                    });
                    continue;
                }
            };
            divergences.extend(list.into_iter().map(|d| pb::ReplicationDivergence {
                tenant_id: d.key.tenant.as_str().to_owned(),
                entity: d.key.entity.as_str().to_owned(),
                entity_id: d.key.id.to_string(),
                target_store: d.target.as_str().to_owned(),
                operation: d.operation,
                error: d.error,
                failures: d.failures,
                recorded_in: backend.as_str().to_owned(),
            }));
        }
        // Copies owed, for every replica together: all intents, and those older than
        // the grace (their process died, or their copy is stuck). Reported when not 0.
        for (backend, outbox) in &self.state.outboxes {
            let store = backend.as_str();
            let counts = async {
                let pending = outbox.stale(Duration::ZERO, OUTBOX_COUNT_LIMIT).await?;
                let cutoff = self.state.outbox_grace;
                let overdue = outbox.stale(cutoff, OUTBOX_COUNT_LIMIT).await?;
                Ok::<_, crate::storage::StoreError>((pending.len(), overdue.len()))
            };
            let (pending, overdue) = match bounded(counts).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(store, error = %e, "cannot read an outbox");
                    counters.push(pb::ReplicationCounter {
                        name: format!("outbox_unreadable{{store={store}}}"),
                        value: 1,
                    });
                    continue;
                }
            };
            for (name, n) in [("outbox_pending", pending), ("outbox_overdue", overdue)] {
                if n > 0 {
                    counters.push(pb::ReplicationCounter {
                        name: format!("{name}{{store={store}}}"),
                        value: n as u64,
                    });
                }
            }
        }
        Ok(Response::new(pb::GetReplicationStatusResponse {
            counters,
            divergences,
        }))
    }
}
