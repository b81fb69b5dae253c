//! `gcdr.v1.RoleAssignmentService`.

use tonic::{Request, Response, Status};

use super::convert::uuid;
use super::convert::{self, access as conv};
use super::ctx;
use super::status::{finish, invalid};
use crate::domain::access::requests::{AssignmentFilter, NewAssignment};
use crate::domain::{Actor, Violations};
use crate::pb;
use crate::pb::role_assignment_service_server::RoleAssignmentService;
use crate::storage::Store;

/// Handles RoleAssignmentService calls against the store.
pub struct RoleAssignmentServiceHandler {
    store: Store,
}

impl RoleAssignmentServiceHandler {
    /// A handler over `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

/// Checks a user id: 1..255 characters without control characters.
pub(super) fn check_user(v: &mut Violations, field: &str, user: &str) {
    if Actor::parse(user).is_none() {
        v.add(
            field,
            "must be 1..255 characters without control characters",
        );
    }
}

/// Checks a scope or resource: 1..500 characters without whitespace.
pub(super) fn check_scope(v: &mut Violations, field: &str, scope: &str) {
    if scope.is_empty() || scope.chars().count() > 500 || scope.chars().any(char::is_whitespace) {
        v.add(
            field,
            "must be 1..500 characters without whitespace (e.g. customer:<id>, *)",
        );
    }
}

#[tonic::async_trait]
impl RoleAssignmentService for RoleAssignmentServiceHandler {
    async fn assign_role(
        &self,
        req: Request<pb::AssignRoleRequest>,
    ) -> Result<Response<pb::RoleAssignment>, Status> {
        let ctx = ctx(&req)?;
        let pb::AssignRoleRequest {
            user_id,
            role_key,
            scope,
            expire_time,
            reason,
        } = req.into_inner();
        let mut v = Violations::default();
        check_user(&mut v, "user_id", &user_id);
        conv::check_key_ref(&mut v, "role_key", &role_key);
        check_scope(&mut v, "scope", &scope);
        let expires_at = conv::expiry(&mut v, expire_time);
        if let Some(r) = &reason {
            v.max_len("reason", r, 500);
        }
        let new = v
            .finish(NewAssignment {
                id: uuid::Uuid::new_v4(),
                user_id,
                role_key,
                scope,
                expires_at,
                reason,
            })
            .map_err(invalid)?;
        let a = self.store.assignments.assign(&ctx, new).await?;
        tracing::info!(assignment.id = %a.id, "role assigned");
        Ok(Response::new(conv::assignment_pb(a, chrono::Utc::now())))
    }

    async fn get_role_assignment(
        &self,
        req: Request<pb::GetRoleAssignmentRequest>,
    ) -> Result<Response<pb::RoleAssignment>, Status> {
        let ctx = ctx(&req)?;
        let mut v = Violations::default();
        let id = uuid(&mut v, "id", &req.get_ref().id);
        let id = finish(v, id)?;
        let a = self.store.assignments.get(&ctx.tenant, id).await?;
        Ok(Response::new(conv::assignment_pb(a, chrono::Utc::now())))
    }

    async fn revoke_role_assignment(
        &self,
        req: Request<pb::RevokeRoleAssignmentRequest>,
    ) -> Result<Response<pb::RoleAssignment>, Status> {
        let ctx = ctx(&req)?;
        let mut v = Violations::default();
        let id = uuid(&mut v, "id", &req.get_ref().id);
        let id = finish(v, id)?;
        let a = self.store.assignments.revoke(&ctx, id).await?;
        tracing::info!(assignment.id = %a.id, "role assignment revoked");
        Ok(Response::new(conv::assignment_pb(a, chrono::Utc::now())))
    }

    async fn list_role_assignments(
        &self,
        req: Request<pb::ListRoleAssignmentsRequest>,
    ) -> Result<Response<pb::ListRoleAssignmentsResponse>, Status> {
        let ctx = ctx(&req)?;
        let pb::ListRoleAssignmentsRequest {
            page_size,
            page_token,
            user_id,
            role_key,
            scope,
            status,
        } = req.into_inner();
        let mut v = Violations::default();
        if let Some(u) = &user_id {
            check_user(&mut v, "user_id", u);
        }
        if let Some(k) = &role_key {
            conv::check_key_ref(&mut v, "role_key", k);
        }
        if let Some(s) = &scope {
            check_scope(&mut v, "scope", s);
        }
        let status = convert::filter_enum(&mut v, "status", status, conv::assignment_status);
        let filter = AssignmentFilter {
            user_id,
            role_key,
            scope,
            status,
        };
        let scope = format!("assignments:{filter:?}");
        let page = convert::page_request(&mut v, page_size, &page_token, &scope);
        if !v.is_empty() {
            return Err(invalid(v));
        }
        let result = self
            .store
            .assignments
            .list(&ctx.tenant, &filter, &page)
            .await?;
        let now = chrono::Utc::now();
        Ok(Response::new(pb::ListRoleAssignmentsResponse {
            role_assignments: result
                .items
                .into_iter()
                .map(|a| conv::assignment_pb(a, now))
                .collect(),
            next_page_token: convert::next_page_token(result.next_after, &scope),
        }))
    }
}
