//! Roles in PostgreSQL, with their ordered policies in `role_policies`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::schema::roles::{self, dsl};
use super::schema::{policies, role_assignments, role_policies};
use super::tx;
use super::{PgStore, bad_cursor, check_version};
use crate::domain::access::requests::{AccessFilter, NewRole, RolePatch};
use crate::domain::access::{RiskLevel, Role};
use crate::domain::customer::set;
use crate::domain::{Ctx, Page, PageRequest, TenantId};
use crate::storage::{RoleStore, StoreError, StoreResult};

/// One row of `roles` (the policy keys live in `role_policies`).
#[derive(Clone, Debug, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = roles, primary_key(tenant_id, id), treat_none_as_null = true)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub(super) struct RoleRow {
    tenant_id: String,
    id: Uuid,
    key: String,
    display_name: String,
    description: String,
    tags: Vec<String>,
    risk_level: String,
    is_system: bool,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    created_by: String,
    updated_by: Option<String>,
}

impl RoleRow {
    pub(super) fn from_domain(r: &Role) -> Self {
        Self {
            tenant_id: r.tenant_id.as_str().to_owned(),
            id: r.id,
            key: r.key.clone(),
            display_name: r.display_name.clone(),
            description: r.description.clone(),
            tags: r.tags.clone(),
            risk_level: r.risk_level.as_str().to_owned(),
            is_system: r.is_system,
            version: r.version,
            created_at: r.created_at,
            updated_at: r.updated_at,
            created_by: r.created_by.clone(),
            updated_by: r.updated_by.clone(),
        }
    }

    pub(super) fn into_domain(self, policy_keys: Vec<String>) -> StoreResult<Role> {
        let bad = |what: &str, v: &str| {
            StoreError::Internal(format!("roles row has bad {what} {v:?}").into())
        };
        Ok(Role {
            tenant_id: TenantId::parse_owned(self.tenant_id).map_err(|t| bad("tenant_id", &t))?,
            id: self.id,
            key: self.key,
            display_name: self.display_name,
            description: self.description,
            policy_keys,
            tags: self.tags,
            risk_level: RiskLevel::parse(&self.risk_level)
                .ok_or_else(|| bad("risk_level", &self.risk_level))?,
            is_system: self.is_system,
            version: self.version,
            created_at: self.created_at,
            updated_at: self.updated_at,
            created_by: self.created_by,
            updated_by: self.updated_by,
        })
    }
}

const NOT_FOUND: StoreError = StoreError::NotFound { entity: "role" };

/// Attaches each role's policy keys (one query for all of them).
async fn with_policies(
    conn: &mut AsyncPgConnection,
    tenant: &TenantId,
    rows: Vec<RoleRow>,
) -> StoreResult<Vec<Role>> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let links: Vec<(Uuid, String)> = role_policies::table
        .inner_join(
            policies::table.on(policies::tenant_id
                .eq(role_policies::tenant_id)
                .and(policies::id.eq(role_policies::policy_id))),
        )
        .filter(role_policies::tenant_id.eq(tenant.as_str()))
        .filter(role_policies::role_id.eq_any(ids))
        .order((role_policies::role_id, role_policies::position))
        .select((role_policies::role_id, policies::key))
        .load(conn)
        .await?;
    rows.into_iter()
        .map(|r| {
            let keys = links
                .iter()
                .filter(|(id, _)| *id == r.id)
                .map(|(_, k)| k.clone())
                .collect();
            r.into_domain(keys)
        })
        .collect()
}

async fn find(
    conn: &mut AsyncPgConnection,
    tenant: &TenantId,
    id: Uuid,
    lock: bool,
) -> StoreResult<Role> {
    let q = dsl::roles
        .find((tenant.as_str(), id))
        .select(RoleRow::as_select());
    let row = if lock {
        q.for_update().first(conn).await
    } else {
        q.first(conn).await
    };
    let row = row.optional()?.ok_or(NOT_FOUND)?;
    Ok(with_policies(conn, tenant, vec![row]).await?.remove(0))
}

/// Replaces a role's policy links; every key must name an existing policy.
async fn link_policies(
    conn: &mut AsyncPgConnection,
    tenant: &TenantId,
    role: Uuid,
    keys: &[String],
) -> StoreResult<()> {
    let found: Vec<(Uuid, String)> = policies::table
        .filter(policies::tenant_id.eq(tenant.as_str()))
        .filter(policies::key.eq_any(keys))
        .select((policies::id, policies::key))
        .load(conn)
        .await?;
    let missing: Vec<&str> = keys
        .iter()
        .filter(|k| !found.iter().any(|(_, f)| f == *k))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(StoreError::InvalidArgument {
            field: "role.policy_keys",
            message: format!("unknown policies: {}", missing.join(", ")),
        });
    }
    diesel::delete(
        role_policies::table
            .filter(role_policies::tenant_id.eq(tenant.as_str()))
            .filter(role_policies::role_id.eq(role)),
    )
    .execute(conn)
    .await?;
    let links: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let policy = found
                .iter()
                .find(|(_, f)| f == k)
                .map(|(id, _)| *id)
                .expect("checked above");
            (
                role_policies::tenant_id.eq(tenant.as_str()),
                role_policies::role_id.eq(role),
                role_policies::policy_id.eq(policy),
                role_policies::position.eq(i as i32),
            )
        })
        .collect();
    diesel::insert_into(role_policies::table)
        .values(links)
        .execute(conn)
        .await?;
    Ok(())
}

fn system_role() -> StoreError {
    StoreError::FailedPrecondition {
        reason: "SYSTEM_ROLE",
        message: "system roles cannot be changed".into(),
    }
}

#[async_trait]
impl RoleStore for PgStore {
    async fn create(&self, ctx: &Ctx, new: NewRole) -> StoreResult<Role> {
        self.timed("roles.create", async {
            let mut conn = self.conn().await?;
            tx(&mut conn, async |conn| {
                let now = Utc::now();
                let role = Role {
                    tenant_id: ctx.tenant.clone(),
                    id: new.id,
                    key: new.key,
                    display_name: new.display_name,
                    description: new.description,
                    policy_keys: new.policy_keys,
                    tags: new.tags,
                    risk_level: new.risk_level,
                    is_system: false,
                    version: 1,
                    created_at: now,
                    updated_at: now,
                    created_by: ctx.actor.as_str().to_owned(),
                    updated_by: None,
                };
                diesel::insert_into(dsl::roles)
                    .values(RoleRow::from_domain(&role))
                    .execute(conn)
                    .await?;
                link_policies(conn, &ctx.tenant, role.id, &role.policy_keys).await?;
                find(conn, &ctx.tenant, role.id, false).await
            })
            .await
        })
        .await
    }

    async fn get(&self, tenant: &TenantId, id: Uuid) -> StoreResult<Role> {
        self.timed("roles.get", async {
            find(&mut *self.conn().await?, tenant, id, false).await
        })
        .await
    }

    async fn get_by_key(&self, tenant: &TenantId, key: &str) -> StoreResult<Role> {
        self.timed("roles.get_by_key", async {
            let mut conn = self.conn().await?;
            let row = dsl::roles
                .filter(dsl::tenant_id.eq(tenant.as_str()))
                .filter(dsl::key.eq(key))
                .select(RoleRow::as_select())
                .first(&mut conn)
                .await
                .optional()?
                .ok_or(NOT_FOUND)?;
            Ok(with_policies(&mut conn, tenant, vec![row]).await?.remove(0))
        })
        .await
    }

    async fn update(
        &self,
        ctx: &Ctx,
        id: Uuid,
        patch: RolePatch,
        expected: Option<i64>,
    ) -> StoreResult<Role> {
        self.timed("roles.update", async {
            let mut conn = self.conn().await?;
            tx(&mut conn, async |conn| {
                let mut r = find(conn, &ctx.tenant, id, true).await?;
                if r.is_system {
                    return Err(system_role());
                }
                check_version(expected, r.version)?;
                let RolePatch {
                    display_name,
                    description,
                    policy_keys,
                    tags,
                    risk_level,
                } = patch;
                if let Some(keys) = &policy_keys {
                    link_policies(conn, &ctx.tenant, id, keys).await?;
                }
                set(&mut r.display_name, display_name);
                set(&mut r.description, description);
                set(&mut r.tags, tags);
                set(&mut r.risk_level, risk_level);
                r.version += 1;
                r.updated_at = Utc::now();
                r.updated_by = Some(ctx.actor.as_str().to_owned());
                diesel::update(dsl::roles.find((ctx.tenant.as_str(), id)))
                    .set(&RoleRow::from_domain(&r))
                    .execute(conn)
                    .await?;
                find(conn, &ctx.tenant, id, false).await
            })
            .await
        })
        .await
    }

    async fn delete(&self, tenant: &TenantId, id: Uuid, expected: Option<i64>) -> StoreResult<()> {
        self.timed("roles.delete", async {
            let mut conn = self.conn().await?;
            tx(&mut conn, async |conn| {
                let r = find(conn, tenant, id, true).await?;
                if r.is_system {
                    return Err(system_role());
                }
                check_version(expected, r.version)?;
                let now = Utc::now();
                let active: i64 = role_assignments::table
                    .filter(role_assignments::tenant_id.eq(tenant.as_str()))
                    .filter(role_assignments::role_id.eq(id))
                    .filter(role_assignments::status.eq("active"))
                    .filter(
                        role_assignments::expires_at
                            .is_null()
                            .or(role_assignments::expires_at.gt(now)),
                    )
                    .count()
                    .get_result(conn)
                    .await?;
                if active > 0 {
                    return Err(StoreError::FailedPrecondition {
                        reason: "ROLE_IN_USE",
                        message: format!(
                            "the role has {active} active assignments; revoke them first"
                        ),
                    });
                }
                diesel::delete(dsl::roles.find((tenant.as_str(), id)))
                    .execute(conn)
                    .await?;
                Ok(())
            })
            .await
        })
        .await
    }

    async fn list(
        &self,
        tenant: &TenantId,
        filter: &AccessFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<Role>> {
        self.timed("roles.list", async {
            let mut conn = self.conn().await?;
            let mut q = dsl::roles
                .filter(dsl::tenant_id.eq(tenant.as_str()))
                .into_boxed();
            if let Some(r) = filter.risk_level {
                q = q.filter(dsl::risk_level.eq(r.as_str()));
            }
            if let Some(s) = filter.is_system {
                q = q.filter(dsl::is_system.eq(s));
            }
            if let Some(after) = &page.after {
                if after.is_empty() {
                    return Err(bad_cursor());
                }
                q = q.filter(dsl::key.gt(after.clone()));
            }
            let rows: Vec<RoleRow> = q
                .order(dsl::key)
                .limit(page.size as i64 + 1)
                .select(RoleRow::as_select())
                .load(&mut conn)
                .await?;
            let items = with_policies(&mut conn, tenant, rows).await?;
            Ok(Page::from_overfetch(items, page.size, |r| r.key.clone()))
        })
        .await
    }
}
