//! Role assignments in PostgreSQL, and what authorization reads: the grants of a user
//! and the ancestry of a resource in the hierarchy.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use futures::future::BoxFuture;
use uuid::Uuid;

use super::schema::role_assignments::{self, dsl};
use super::schema::{policies, role_policies, roles};
use super::tx;
use super::{PgStore, bad_cursor};
use crate::domain::access::requests::{AssignmentFilter, NewAssignment};
use crate::domain::access::{AssignmentStatus, Grant, PolicyRules, RoleAssignment};
use crate::domain::{Ctx, Page, PageRequest, TenantId};
use crate::storage::{AssignmentStore, StoreError, StoreResult};

/// One row of `role_assignments`.
#[derive(Clone, Debug, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = role_assignments, primary_key(tenant_id, id), treat_none_as_null = true)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub(super) struct AssignmentRow {
    pub(super) tenant_id: String,
    pub(super) id: Uuid,
    pub(super) user_id: String,
    pub(super) role_id: Uuid,
    pub(super) scope: String,
    pub(super) status: String,
    pub(super) expires_at: Option<DateTime<Utc>>,
    pub(super) granted_by: String,
    pub(super) granted_at: DateTime<Utc>,
    pub(super) reason: Option<String>,
    pub(super) revoked_by: Option<String>,
    pub(super) revoked_at: Option<DateTime<Utc>>,
    pub(super) version: i64,
    pub(super) created_at: DateTime<Utc>,
    pub(super) updated_at: DateTime<Utc>,
    pub(super) created_by: String,
    pub(super) updated_by: Option<String>,
}

impl AssignmentRow {
    pub(super) fn into_domain(self, role_key: String) -> StoreResult<RoleAssignment> {
        let bad = |what: &str, v: &str| {
            StoreError::Internal(format!("role_assignments row has bad {what} {v:?}").into())
        };
        Ok(RoleAssignment {
            tenant_id: TenantId::parse_owned(self.tenant_id).map_err(|t| bad("tenant_id", &t))?,
            id: self.id,
            user_id: self.user_id,
            role_key,
            scope: self.scope,
            status: AssignmentStatus::parse(&self.status)
                .ok_or_else(|| bad("status", &self.status))?,
            expires_at: self.expires_at,
            granted_by: self.granted_by,
            granted_at: self.granted_at,
            reason: self.reason,
            revoked_by: self.revoked_by,
            revoked_at: self.revoked_at,
            version: self.version,
        })
    }
}

const NOT_FOUND: StoreError = StoreError::NotFound {
    entity: "role assignment",
};

/// Assignments joined with their role's key.
macro_rules! with_role {
    () => {
        dsl::role_assignments.inner_join(
            roles::table.on(roles::tenant_id
                .eq(dsl::tenant_id)
                .and(roles::id.eq(dsl::role_id))),
        )
    };
}

async fn find(
    conn: &mut AsyncPgConnection,
    tenant: &TenantId,
    id: Uuid,
) -> StoreResult<RoleAssignment> {
    let (row, key): (AssignmentRow, String) = with_role!()
        .filter(dsl::tenant_id.eq(tenant.as_str()))
        .filter(dsl::id.eq(id))
        .select((AssignmentRow::as_select(), roles::key))
        .first(conn)
        .await
        .optional()?
        .ok_or(NOT_FOUND)?;
    row.into_domain(key)
}

/// Appends the ids of `path` after its first `skip` segments to `chain` as
/// `<kind>:<id>`, nearest (last) first.
fn nearest_first(chain: &mut Vec<String>, path: &str, skip: usize, kind: &str) {
    let ids: Vec<&str> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .skip(skip)
        .collect();
    chain.extend(ids.iter().rev().map(|id| format!("{kind}:{id}")));
}

/// One row of a user's grants: an assignment in force, its role's key, and one of the
/// role's policies (key, allow, deny), or none for a role without policies.
pub(super) type GrantRow = (
    AssignmentRow,
    String,
    Option<(String, Vec<String>, Vec<String>)>,
);

/// The grant rows of each of `users` in one round trip, keyed by user: each assignment
/// in force with its role's policies, in (grant time, assignment, role order) order.
pub(super) fn grant_rows<'c>(
    mut conn: &'c AsyncPgConnection,
    tenant: &'c str,
    users: Vec<String>,
) -> BoxFuture<'c, StoreResult<Vec<(String, GrantRow)>>> {
    Box::pin(async move {
        let now = Utc::now();
        let rows: Vec<GrantRow> = with_role!()
            .left_join(
                role_policies::table.on(role_policies::tenant_id
                    .eq(dsl::tenant_id)
                    .and(role_policies::role_id.eq(dsl::role_id))),
            )
            .left_join(
                policies::table.on(policies::tenant_id
                    .eq(role_policies::tenant_id)
                    .and(policies::id.eq(role_policies::policy_id))),
            )
            .filter(dsl::tenant_id.eq(tenant))
            .filter(dsl::user_id.eq_any(users))
            .filter(dsl::status.eq("active"))
            .filter(dsl::expires_at.is_null().or(dsl::expires_at.gt(now)))
            .order((
                dsl::user_id,
                dsl::granted_at,
                dsl::id,
                role_policies::position,
            ))
            .select((
                AssignmentRow::as_select(),
                roles::key,
                (policies::key, policies::allow, policies::deny).nullable(),
            ))
            .load(&mut conn)
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| (row.0.user_id.clone(), row))
            .collect())
    })
}

#[async_trait]
impl AssignmentStore for PgStore {
    async fn assign(&self, ctx: &Ctx, new: NewAssignment) -> StoreResult<RoleAssignment> {
        self.timed("assignments.assign", async {
            let mut conn = self.conn().await?;
            tx(&mut conn, async |conn| {
                let tenant = ctx.tenant.as_str();
                let role: Uuid = roles::table
                    .filter(roles::tenant_id.eq(tenant))
                    .filter(roles::key.eq(&new.role_key))
                    .select(roles::id)
                    .first(conn)
                    .await
                    .optional()?
                    .ok_or(StoreError::NotFound { entity: "role" })?;
                let now = Utc::now();
                // An active assignment past its expiry is not active: record that, so
                // the one-active-per-(user, role, scope) index admits the new one.
                diesel::update(
                    dsl::role_assignments
                        .filter(dsl::tenant_id.eq(tenant))
                        .filter(dsl::user_id.eq(&new.user_id))
                        .filter(dsl::role_id.eq(role))
                        .filter(dsl::scope.eq(&new.scope))
                        .filter(dsl::status.eq("active"))
                        .filter(dsl::expires_at.le(now)),
                )
                .set((
                    dsl::status.eq("expired"),
                    dsl::version.eq(dsl::version + 1),
                    dsl::updated_at.eq(now),
                ))
                .execute(conn)
                .await?;
                let actor = ctx.actor.as_str().to_owned();
                let row = AssignmentRow {
                    tenant_id: tenant.to_owned(),
                    id: new.id,
                    user_id: new.user_id,
                    role_id: role,
                    scope: new.scope,
                    status: AssignmentStatus::Active.as_str().to_owned(),
                    expires_at: new.expires_at,
                    granted_by: actor.clone(),
                    granted_at: now,
                    reason: new.reason,
                    revoked_by: None,
                    revoked_at: None,
                    version: 1,
                    created_at: now,
                    updated_at: now,
                    created_by: actor,
                    updated_by: None,
                };
                diesel::insert_into(dsl::role_assignments)
                    .values(&row)
                    .execute(conn)
                    .await?;
                row.into_domain(new.role_key)
            })
            .await
        })
        .await
    }

    async fn get(&self, tenant: &TenantId, id: Uuid) -> StoreResult<RoleAssignment> {
        self.timed("assignments.get", async {
            find(&mut *self.conn().await?, tenant, id).await
        })
        .await
    }

    async fn revoke(&self, ctx: &Ctx, id: Uuid) -> StoreResult<RoleAssignment> {
        self.timed("assignments.revoke", async {
            let mut conn = self.conn().await?;
            tx(&mut conn, async |conn| {
                // Lock the row, so concurrent revokes serialize: the second sees NOT_ACTIVE.
                dsl::role_assignments
                    .find((ctx.tenant.as_str(), id))
                    .select(dsl::id)
                    .for_update()
                    .first::<Uuid>(conn)
                    .await
                    .optional()?
                    .ok_or(NOT_FOUND)?;
                let current = find(conn, &ctx.tenant, id).await?;
                let now = Utc::now();
                if !current.in_force(now) {
                    return Err(StoreError::FailedPrecondition {
                        reason: "NOT_ACTIVE",
                        message: format!("the assignment is {}", current.effective_status(now)),
                    });
                }
                let actor = ctx.actor.as_str();
                diesel::update(dsl::role_assignments.find((ctx.tenant.as_str(), id)))
                    .set((
                        dsl::status.eq("inactive"),
                        dsl::revoked_by.eq(actor),
                        dsl::revoked_at.eq(now),
                        dsl::version.eq(dsl::version + 1),
                        dsl::updated_at.eq(now),
                        dsl::updated_by.eq(actor),
                    ))
                    .returning(AssignmentRow::as_returning())
                    .get_result(conn)
                    .await?
                    .into_domain(current.role_key)
            })
            .await
        })
        .await
    }

    async fn list(
        &self,
        tenant: &TenantId,
        filter: &AssignmentFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<RoleAssignment>> {
        self.timed("assignments.list", async {
            let mut conn = self.conn().await?;
            let now = Utc::now();
            let mut q = with_role!()
                .filter(dsl::tenant_id.eq(tenant.as_str()))
                .into_boxed();
            if let Some(u) = &filter.user_id {
                q = q.filter(dsl::user_id.eq(u.clone()));
            }
            if let Some(r) = &filter.role_key {
                q = q.filter(roles::key.eq(r.clone()));
            }
            if let Some(s) = &filter.scope {
                q = q.filter(dsl::scope.eq(s.clone()));
            }
            let live = dsl::status
                .eq("active")
                .and(dsl::expires_at.is_null().or(dsl::expires_at.gt(now)));
            q = match filter.status {
                None => q,
                Some(AssignmentStatus::Active) => q.filter(live),
                Some(AssignmentStatus::Inactive) => q.filter(dsl::status.eq("inactive")),
                Some(AssignmentStatus::Expired) => q.filter(
                    dsl::status
                        .eq("expired")
                        .or(dsl::status.eq("active").and(dsl::expires_at.le(now))),
                ),
            };
            if let Some(after) = &page.after {
                q = q.filter(dsl::id.gt(Uuid::parse_str(after).map_err(|_| bad_cursor())?));
            }
            let rows: Vec<(AssignmentRow, String)> = q
                .order(dsl::id)
                .limit(page.size as i64 + 1)
                .select((AssignmentRow::as_select(), roles::key))
                .load(&mut conn)
                .await?;
            let items = rows
                .into_iter()
                .map(|(r, k)| r.into_domain(k))
                .collect::<StoreResult<Vec<_>>>()?;
            Ok(Page::from_overfetch(items, page.size, |a| a.id.to_string()))
        })
        .await
    }

    async fn grants(&self, tenant: &TenantId, user_id: &str) -> StoreResult<Vec<Grant>> {
        self.timed("assignments.grants", async {
            let rows = self
                .reads
                .grants
                .get(tenant.as_str(), user_id.to_owned())
                .await?;
            let mut grants: Vec<Grant> = Vec::new();
            for (row, role_key, policy) in rows {
                if grants.last().is_none_or(|g| g.assignment.id != row.id) {
                    grants.push(Grant {
                        assignment: row.into_domain(role_key)?,
                        policies: Vec::new(),
                    });
                }
                if let (Some(grant), Some((key, allow, deny))) = (grants.last_mut(), policy) {
                    grant.policies.push(PolicyRules { key, allow, deny });
                }
            }
            Ok(grants)
        })
        .await
    }

    async fn ancestry(&self, tenant: &TenantId, resource: &str) -> StoreResult<Vec<String>> {
        self.timed("assignments.ancestry", async {
            let mut chain = vec![resource.to_owned()];
            let Some((kind, id)) = resource.split_once(':') else {
                return Ok(chain);
            };
            let Ok(id) = Uuid::parse_str(id) else {
                return Ok(chain);
            };
            let (asset, customer) = match kind {
                "customer" => (None, Some(id)),
                "asset" => (Some(id), None),
                "device" => (
                    self.reads
                        .devices
                        .one(tenant.as_str(), id)
                        .await?
                        .map(|d| d.asset_id),
                    None,
                ),
                _ => return Ok(chain),
            };
            let customer = match asset {
                Some(a) => {
                    let Some(asset) = self.reads.assets.one(tenant.as_str(), a).await? else {
                        return Ok(chain);
                    };
                    // /<tenant>/<customer>/<root asset>/.../<asset>
                    nearest_first(&mut chain, &asset.path, 2, "asset");
                    Some(asset.customer_id)
                }
                None => customer,
            };
            if let Some(c) = customer {
                if let Some(customer) = self.reads.customers.one(tenant.as_str(), c).await? {
                    // /<tenant>/<root customer>/.../<customer>
                    nearest_first(&mut chain, &customer.path, 1, "customer");
                }
            }
            chain.dedup();
            Ok(chain)
        })
        .await
    }
}
