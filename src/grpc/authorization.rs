//! `gcdr.v1.AuthorizationService`: the check itself is `domain::access::check`; this
//! file loads what it needs (the user's grants, the resource's ancestry) once per call.

use tonic::{Request, Response, Status};

use super::assignment::{check_scope, check_user};
use super::convert::access as conv;
use super::ctx;
use super::status::invalid;
use crate::domain::access::{self, CheckOutcome, Decision, Grant, valid_permission};
use crate::domain::{Ctx, Violations};
use crate::pb;
use crate::pb::authorization_service_server::AuthorizationService;
use crate::storage::{Store, StoreResult};

/// Most permissions one CheckBatch may ask about.
pub const MAX_BATCH: usize = 100;

/// Handles AuthorizationService calls against the store.
pub struct AuthorizationServiceHandler {
    store: Store,
}

impl AuthorizationServiceHandler {
    /// A handler over `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// The user's grants and the resource's ancestry, read concurrently: a check
    /// waits for the slower of the two reads, not for both in turn.
    async fn load(
        &self,
        ctx: &Ctx,
        user: &str,
        resource: &str,
    ) -> StoreResult<(Vec<Grant>, Vec<String>)> {
        let assignments = &self.store.assignments;
        tokio::try_join!(
            assignments.grants(&ctx.tenant, user),
            assignments.ancestry(&ctx.tenant, resource)
        )
    }
}

fn check_permission(v: &mut Violations, field: &str, p: &str) {
    if !valid_permission(p) {
        v.add(field, "must be domain.function.action in lowercase letters");
    }
}

fn outcome_pb(o: CheckOutcome) -> pb::CheckResponse {
    let decision = match o.decision {
        Decision::Allowed => pb::Decision::Allowed,
        Decision::ExplicitlyDenied => pb::Decision::ExplicitlyDenied,
        Decision::NoAssignment => pb::Decision::NoAssignment,
        Decision::NotGranted => pb::Decision::NotGranted,
    };
    pb::CheckResponse {
        allowed: o.allowed(),
        decision: decision as i32,
        reason: o.reason,
        matched_policies: o.matched_policies,
    }
}

#[tonic::async_trait]
impl AuthorizationService for AuthorizationServiceHandler {
    async fn check(
        &self,
        req: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        let ctx = ctx(&req)?;
        let pb::CheckRequest {
            user_id,
            permission,
            resource,
        } = req.into_inner();
        let mut v = Violations::default();
        check_user(&mut v, "user_id", &user_id);
        check_permission(&mut v, "permission", &permission);
        check_scope(&mut v, "resource", &resource);
        if !v.is_empty() {
            return Err(invalid(v));
        }
        let (grants, ancestry) = self.load(&ctx, &user_id, &resource).await?;
        let outcome = access::check(&grants, &permission, &resource, &ancestry);
        tracing::debug!(authz.allowed = outcome.allowed(), "permission evaluated");
        Ok(Response::new(outcome_pb(outcome)))
    }

    async fn check_batch(
        &self,
        req: Request<pb::CheckBatchRequest>,
    ) -> Result<Response<pb::CheckBatchResponse>, Status> {
        let ctx = ctx(&req)?;
        let pb::CheckBatchRequest {
            user_id,
            permissions,
            resource,
        } = req.into_inner();
        let mut v = Violations::default();
        check_user(&mut v, "user_id", &user_id);
        check_scope(&mut v, "resource", &resource);
        if permissions.is_empty() || permissions.len() > MAX_BATCH {
            v.add(
                "permissions",
                format!(
                    "must hold 1..{MAX_BATCH} permissions (got {})",
                    permissions.len()
                ),
            );
        }
        for (i, p) in permissions.iter().enumerate() {
            check_permission(&mut v, &format!("permissions[{i}]"), p);
        }
        if !v.is_empty() {
            return Err(invalid(v));
        }
        let (grants, ancestry) = self.load(&ctx, &user_id, &resource).await?;
        let results: Vec<pb::CheckBatchResult> = permissions
            .into_iter()
            .map(|p| {
                let result = outcome_pb(access::check(&grants, &p, &resource, &ancestry));
                pb::CheckBatchResult {
                    permission: p,
                    result: Some(result),
                }
            })
            .collect();
        let allowed = results
            .iter()
            .filter(|r| r.result.as_ref().is_some_and(|r| r.allowed))
            .count() as i32;
        let denied = results.len() as i32 - allowed;
        Ok(Response::new(pb::CheckBatchResponse {
            results,
            allowed_count: allowed,
            denied_count: denied,
        }))
    }

    async fn effective_permissions(
        &self,
        req: Request<pb::EffectivePermissionsRequest>,
    ) -> Result<Response<pb::EffectivePermissionsResponse>, Status> {
        let ctx = ctx(&req)?;
        let pb::EffectivePermissionsRequest { user_id, resource } = req.into_inner();
        let mut v = Violations::default();
        check_user(&mut v, "user_id", &user_id);
        if let Some(r) = &resource {
            check_scope(&mut v, "resource", r);
        }
        if !v.is_empty() {
            return Err(invalid(v));
        }
        let (grants, ancestry) = match &resource {
            Some(r) => self.load(&ctx, &user_id, r).await?,
            None => (
                self.store.assignments.grants(&ctx.tenant, &user_id).await?,
                Vec::new(),
            ),
        };
        let applicable: Vec<&Grant> = match &resource {
            Some(r) => access::applicable_grants(&grants, r, &ancestry),
            None => grants.iter().collect(),
        };
        let (allowed, denied) = access::effective_patterns(&applicable);
        let now = chrono::Utc::now();
        let assignments = applicable
            .into_iter()
            .map(|g| conv::assignment_pb(g.assignment.clone(), now))
            .collect();
        Ok(Response::new(pb::EffectivePermissionsResponse {
            allowed,
            denied,
            assignments,
        }))
    }
}
