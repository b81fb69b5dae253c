//! Policies in PostgreSQL.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::json::{JsonText, from_json, to_json};
use super::schema::policies::{self, dsl};
use super::schema::{role_policies, roles};
use super::{PgStore, bad_cursor, check_version};
use super::{tx, tx_if_copied};
use crate::domain::access::requests::{AccessFilter, NewPolicy, PolicyPatch};
use crate::domain::access::{Policy, RiskLevel};
use crate::domain::customer::set;
use crate::domain::{Ctx, Page, PageRequest, TenantId};
use crate::storage::{PolicyStore, StoreError, StoreResult};

/// One row of `policies`.
#[derive(Clone, Debug, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = policies, primary_key(tenant_id, id), treat_none_as_null = true)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub(super) struct PolicyRow {
    tenant_id: String,
    id: Uuid,
    key: String,
    display_name: String,
    description: String,
    allow: Vec<String>,
    deny: Vec<String>,
    conditions: Option<JsonText>,
    risk_level: String,
    is_system: bool,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    created_by: String,
    updated_by: Option<String>,
}

impl PolicyRow {
    pub(super) fn from_domain(p: &Policy) -> StoreResult<Self> {
        Ok(Self {
            tenant_id: p.tenant_id.as_str().to_owned(),
            id: p.id,
            key: p.key.clone(),
            display_name: p.display_name.clone(),
            description: p.description.clone(),
            allow: p.allow.clone(),
            deny: p.deny.clone(),
            conditions: p.conditions.as_ref().map(to_json).transpose()?,
            risk_level: p.risk_level.as_str().to_owned(),
            is_system: p.is_system,
            version: p.version,
            created_at: p.created_at,
            updated_at: p.updated_at,
            created_by: p.created_by.clone(),
            updated_by: p.updated_by.clone(),
        })
    }

    pub(super) fn into_domain(self) -> StoreResult<Policy> {
        let bad = |what: &str, v: &str| {
            StoreError::Internal(format!("policies row has bad {what} {v:?}").into())
        };
        Ok(Policy {
            tenant_id: TenantId::parse_owned(self.tenant_id).map_err(|t| bad("tenant_id", &t))?,
            id: self.id,
            key: self.key,
            display_name: self.display_name,
            description: self.description,
            allow: self.allow,
            deny: self.deny,
            conditions: self
                .conditions
                .as_ref()
                .map(|j| from_json("policies", "conditions", j))
                .transpose()?,
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

const NOT_FOUND: StoreError = StoreError::NotFound { entity: "policy" };

async fn find(
    conn: &mut AsyncPgConnection,
    tenant: &TenantId,
    id: Uuid,
    lock: bool,
) -> StoreResult<Policy> {
    let q = dsl::policies
        .find((tenant.as_str(), id))
        .select(PolicyRow::as_select());
    let row = if lock {
        q.for_update().first(conn).await
    } else {
        q.first(conn).await
    };
    row.optional()?.ok_or(NOT_FOUND)?.into_domain()
}

fn system_policy() -> StoreError {
    StoreError::FailedPrecondition {
        reason: "SYSTEM_POLICY",
        message: "system policies cannot be changed".into(),
    }
}

#[async_trait]
impl PolicyStore for PgStore {
    async fn create(&self, ctx: &Ctx, new: NewPolicy) -> StoreResult<Policy> {
        self.timed("policies.create", async {
            let mut conn = self.conn().await?;
            let now = Utc::now();
            let policy = Policy {
                tenant_id: ctx.tenant.clone(),
                id: new.id,
                key: new.key,
                display_name: new.display_name,
                description: new.description,
                allow: new.allow,
                deny: new.deny,
                conditions: new.conditions,
                risk_level: new.risk_level,
                is_system: false,
                version: 1,
                created_at: now,
                updated_at: now,
                created_by: ctx.actor.as_str().to_owned(),
                updated_by: None,
            };
            let row = PolicyRow::from_domain(&policy)?;
            let written: PolicyRow = tx_if_copied(&mut conn, async |conn| {
                diesel::insert_into(dsl::policies)
                    .values(row)
                    .returning(PolicyRow::as_returning())
                    .get_result(conn)
                    .await
                    .map_err(StoreError::from)
            })
            .await?;
            written.into_domain()
        })
        .await
    }

    async fn get(&self, tenant: &TenantId, id: Uuid) -> StoreResult<Policy> {
        self.timed("policies.get", async {
            find(&mut *self.conn().await?, tenant, id, false).await
        })
        .await
    }

    async fn get_by_key(&self, tenant: &TenantId, key: &str) -> StoreResult<Policy> {
        self.timed("policies.get_by_key", async {
            let mut conn = self.conn().await?;
            dsl::policies
                .filter(dsl::tenant_id.eq(tenant.as_str()))
                .filter(dsl::key.eq(key))
                .select(PolicyRow::as_select())
                .first(&mut conn)
                .await
                .optional()?
                .ok_or(NOT_FOUND)?
                .into_domain()
        })
        .await
    }

    async fn update(
        &self,
        ctx: &Ctx,
        id: Uuid,
        patch: PolicyPatch,
        expected: Option<i64>,
    ) -> StoreResult<Policy> {
        self.timed("policies.update", async {
            let mut conn = self.conn().await?;
            tx(&mut conn, async |conn| {
                let mut p = find(conn, &ctx.tenant, id, true).await?;
                if p.is_system {
                    return Err(system_policy());
                }
                check_version(expected, p.version)?;
                let PolicyPatch {
                    display_name,
                    description,
                    allow,
                    deny,
                    conditions,
                    risk_level,
                } = patch;
                set(&mut p.display_name, display_name);
                set(&mut p.description, description);
                set(&mut p.allow, allow);
                set(&mut p.deny, deny);
                set(&mut p.conditions, conditions);
                set(&mut p.risk_level, risk_level);
                p.version += 1;
                p.updated_at = Utc::now();
                p.updated_by = Some(ctx.actor.as_str().to_owned());
                diesel::update(dsl::policies.find((ctx.tenant.as_str(), id)))
                    .set(&PolicyRow::from_domain(&p)?)
                    .returning(PolicyRow::as_returning())
                    .get_result(conn)
                    .await?
                    .into_domain()
            })
            .await
        })
        .await
    }

    async fn delete(&self, tenant: &TenantId, id: Uuid, expected: Option<i64>) -> StoreResult<()> {
        self.timed("policies.delete", async {
            let mut conn = self.conn().await?;
            tx(&mut conn, async |conn| {
                let p = find(conn, tenant, id, true).await?;
                if p.is_system {
                    return Err(system_policy());
                }
                check_version(expected, p.version)?;
                let users: Vec<String> = role_policies::table
                    .inner_join(
                        roles::table.on(roles::tenant_id
                            .eq(role_policies::tenant_id)
                            .and(roles::id.eq(role_policies::role_id))),
                    )
                    .filter(role_policies::tenant_id.eq(tenant.as_str()))
                    .filter(role_policies::policy_id.eq(id))
                    .order(roles::key)
                    .select(roles::key)
                    .load(conn)
                    .await?;
                if !users.is_empty() {
                    return Err(StoreError::FailedPrecondition {
                        reason: "POLICY_IN_USE",
                        message: format!("the policy is used by roles: {}", users.join(", ")),
                    });
                }
                diesel::delete(dsl::policies.find((tenant.as_str(), id)))
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
    ) -> StoreResult<Page<Policy>> {
        self.timed("policies.list", async {
            let mut conn = self.conn().await?;
            let mut q = dsl::policies
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
            let rows: Vec<PolicyRow> = q
                .order(dsl::key)
                .limit(page.size as i64 + 1)
                .select(PolicyRow::as_select())
                .load(&mut conn)
                .await?;
            let items = rows
                .into_iter()
                .map(PolicyRow::into_domain)
                .collect::<StoreResult<Vec<_>>>()?;
            Ok(Page::from_overfetch(items, page.size, |p| p.key.clone()))
        })
        .await
    }
}
