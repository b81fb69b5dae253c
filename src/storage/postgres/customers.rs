//! Customers in PostgreSQL: row type, conversions and the `CustomerStore` impl.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::hierarchy::{self, Tree};
use super::json::{JsonText, from_json, to_json};
use super::schema::customers::{self, dsl};
use super::tx;
use super::{PgStore, check_version};
use crate::domain::customer::customer_path;
use crate::domain::customer::{
    Customer, CustomerFilter, CustomerPatch, CustomerType, NewCustomer, ParentFilter,
};
use crate::domain::{Ctx, CustomerId, EntityStatus, Page, PageRequest, TenantId, generate_code};
use crate::storage::{CustomerStore, StoreError, StoreResult, Subtree};

/// One row of `customers`.
#[derive(Clone, Debug, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = customers, primary_key(tenant_id, id), treat_none_as_null = true)]
// None binds NULL (not DEFAULT) on insert, so a multi-row insert has one statement
// shape (one prepared statement) whatever its rows leave unset.
#[diesel(treat_none_as_default_value = false)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub(super) struct CustomerRow {
    pub tenant_id: String,
    pub id: Uuid,
    pub parent_customer_id: Option<Uuid>,
    pub path: String,
    pub depth: i32,
    pub name: String,
    pub display_name: String,
    pub code: String,
    pub type_: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub address: Option<JsonText>,
    pub settings: JsonText,
    pub theme: Option<JsonText>,
    pub metadata: JsonText,
    pub status: String,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub created_by: String,
    pub updated_by: Option<String>,
}

impl CustomerRow {
    pub(super) fn from_domain(c: &Customer) -> StoreResult<Self> {
        Ok(Self {
            tenant_id: c.tenant_id.as_str().to_owned(),
            id: c.id.0,
            parent_customer_id: c.parent_id.map(|p| p.0),
            path: c.path.clone(),
            depth: c.depth,
            name: c.name.clone(),
            display_name: c.display_name.clone(),
            code: c.code.clone(),
            type_: c.kind.as_str().to_owned(),
            email: c.email.clone(),
            phone: c.phone.clone(),
            address: c.address.as_ref().map(to_json).transpose()?,
            settings: to_json(&c.settings)?,
            theme: c.theme.as_ref().map(to_json).transpose()?,
            metadata: to_json(&c.metadata)?,
            status: c.status.as_str().to_owned(),
            version: c.version,
            created_at: c.created_at,
            updated_at: c.updated_at,
            created_by: c.created_by.clone(),
            updated_by: c.updated_by.clone(),
        })
    }

    pub(super) fn into_domain(self) -> StoreResult<Customer> {
        let bad = |what: &str, v: &str| {
            StoreError::Internal(format!("customers row has bad {what} {v:?}").into())
        };
        Ok(Customer {
            tenant_id: TenantId::parse_owned(self.tenant_id).map_err(|t| bad("tenant_id", &t))?,
            id: CustomerId(self.id),
            parent_id: self.parent_customer_id.map(CustomerId),
            path: self.path,
            depth: self.depth,
            name: self.name,
            display_name: self.display_name,
            code: self.code,
            kind: CustomerType::parse(&self.type_).ok_or_else(|| bad("type", &self.type_))?,
            email: self.email,
            phone: self.phone,
            address: self
                .address
                .as_ref()
                .map(|j| from_json("customers", "address", j))
                .transpose()?,
            settings: from_json("customers", "settings", &self.settings)?,
            theme: self
                .theme
                .as_ref()
                .map(|j| from_json("customers", "theme", j))
                .transpose()?,
            metadata: from_json("customers", "metadata", &self.metadata)?,
            status: EntityStatus::parse(&self.status).ok_or_else(|| bad("status", &self.status))?,
            version: self.version,
            created_at: self.created_at,
            updated_at: self.updated_at,
            created_by: self.created_by,
            updated_by: self.updated_by,
        })
    }
}

/// Sized up front: collecting `Result`s cannot know the length, and growing a vector
/// of a thousand large records copies them again and again.
fn rows_into(rows: Vec<CustomerRow>) -> StoreResult<Vec<Customer>> {
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        out.push(row.into_domain()?);
    }
    Ok(out)
}

const NOT_FOUND: StoreError = StoreError::NotFound { entity: "customer" };

/// Reads one customer row, optionally locking it for the rest of the transaction.
async fn find(
    conn: &mut AsyncPgConnection,
    tenant: &TenantId,
    id: CustomerId,
    lock: bool,
) -> StoreResult<CustomerRow> {
    let q = dsl::customers
        .find((tenant.as_str(), id.0))
        .select(CustomerRow::as_select());
    let row = if lock {
        q.for_update().first(conn).await
    } else {
        q.first(conn).await
    };
    row.optional()?.ok_or(NOT_FOUND)
}

/// The first free code among `base`, `base-2`, `base-3`, ... in the tenant.
async fn free_code(
    conn: &mut AsyncPgConnection,
    tenant: &TenantId,
    base: &str,
) -> StoreResult<String> {
    let taken: Vec<String> = dsl::customers
        .filter(dsl::tenant_id.eq(tenant.as_str()))
        .filter(dsl::code.eq(base).or(dsl::code.like(format!("{base}-%"))))
        .select(dsl::code)
        .load(conn)
        .await?;
    Ok(super::first_free_code(base, &taken))
}

#[async_trait]
impl CustomerStore for PgStore {
    async fn create(&self, ctx: &Ctx, new: NewCustomer) -> StoreResult<Customer> {
        self.timed("customers.create", async {
            let mut conn = self.conn().await?;
            // A generated code can lose a race with a concurrent create; try the next one.
            let generated_code = new.code.is_none();
            for attempt in 0..5 {
                let new = new.clone();
                let result = tx(&mut conn, async |conn| {
                    let parent = match new.parent_id {
                        Some(pid) => {
                            hierarchy::lock(conn, Tree::Customers, &ctx.tenant, false).await?;
                            let p = dsl::customers
                                .find((ctx.tenant.as_str(), pid.0))
                                .select((dsl::path, dsl::depth))
                                .first::<(String, i32)>(conn)
                                .await
                                .optional()?
                                .ok_or(StoreError::NotFound {
                                    entity: "parent customer",
                                })?;
                            Some(p)
                        }
                        None => None,
                    };
                    let (path, depth) = customer_path(
                        &ctx.tenant,
                        parent.as_ref().map(|(p, d)| (p.as_str(), *d)),
                        new.id,
                    );
                    let code = match new.code {
                        Some(code) => code,
                        None => free_code(conn, &ctx.tenant, &generate_code(&new.name)).await?,
                    };
                    let now = Utc::now();
                    let customer = Customer {
                        tenant_id: ctx.tenant.clone(),
                        id: new.id,
                        parent_id: new.parent_id,
                        path,
                        depth,
                        name: new.name,
                        display_name: new.display_name,
                        code,
                        kind: new.kind,
                        email: new.email,
                        phone: new.phone,
                        address: new.address,
                        settings: new.settings,
                        theme: None,
                        metadata: new.metadata,
                        status: EntityStatus::Active,
                        version: 1,
                        created_at: now,
                        updated_at: now,
                        created_by: ctx.actor.as_str().to_owned(),
                        updated_by: None,
                    };
                    let row = diesel::insert_into(dsl::customers)
                        .values(CustomerRow::from_domain(&customer)?)
                        .returning(CustomerRow::as_returning())
                        .get_result(conn)
                        .await?;
                    row.into_domain()
                })
                .await;
                match result {
                    Err(StoreError::AlreadyExists {
                        reason: "CUSTOMER_CODE_EXISTS",
                        ..
                    }) if generated_code && attempt < 4 => {}
                    other => return other,
                }
            }
            unreachable!("the last attempt returns")
        })
        .await
    }

    async fn get(&self, tenant: &TenantId, id: CustomerId) -> StoreResult<Customer> {
        self.timed("customers.get", async {
            self.reads
                .customers
                .one(tenant.as_str(), id.0)
                .await?
                .ok_or(NOT_FOUND)?
                .into_domain()
        })
        .await
    }

    async fn get_by_code(&self, tenant: &TenantId, code: &str) -> StoreResult<Customer> {
        self.timed("customers.get_by_code", async {
            let mut conn = self.conn().await?;
            dsl::customers
                .filter(dsl::tenant_id.eq(tenant.as_str()))
                .filter(dsl::code.eq(code))
                .select(CustomerRow::as_select())
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
        id: CustomerId,
        patch: CustomerPatch,
        expected: Option<i64>,
    ) -> StoreResult<Customer> {
        self.timed("customers.update", async {
            let mut conn = self.conn().await?;
            tx(&mut conn, async |conn| {
                let mut customer = find(conn, &ctx.tenant, id, true).await?.into_domain()?;
                check_version(expected, customer.version)?;
                patch.apply(&mut customer, &ctx.actor, Utc::now());
                let row = CustomerRow::from_domain(&customer)?;
                diesel::update(dsl::customers.find((ctx.tenant.as_str(), id.0)))
                    .set(&row)
                    .returning(CustomerRow::as_returning())
                    .get_result(conn)
                    .await?
                    .into_domain()
            })
            .await
        })
        .await
    }

    async fn delete(
        &self,
        tenant: &TenantId,
        id: CustomerId,
        expected: Option<i64>,
    ) -> StoreResult<()> {
        use super::schema::assets::dsl as a;
        self.timed("customers.delete", async {
            let mut conn = self.conn().await?;
            tx(&mut conn, async |conn| {
                let row = find(conn, tenant, id, true).await?;
                check_version(expected, row.version)?;
                let has_children: bool = diesel::select(diesel::dsl::exists(
                    dsl::customers
                        .filter(dsl::tenant_id.eq(tenant.as_str()))
                        .filter(dsl::parent_customer_id.eq(id.0)),
                ))
                .get_result(conn)
                .await?;
                if has_children {
                    return Err(StoreError::FailedPrecondition {
                        reason: "HAS_CHILDREN",
                        message: "the customer has child customers; move or delete them first"
                            .into(),
                    });
                }
                let has_assets: bool = diesel::select(diesel::dsl::exists(
                    a::assets
                        .filter(a::tenant_id.eq(tenant.as_str()))
                        .filter(a::customer_id.eq(id.0)),
                ))
                .get_result(conn)
                .await?;
                if has_assets {
                    return Err(StoreError::FailedPrecondition {
                        reason: "HAS_ASSETS",
                        message: "the customer has assets; move or delete them first".into(),
                    });
                }
                diesel::delete(dsl::customers.find((tenant.as_str(), id.0)))
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
        filter: &CustomerFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<Customer>> {
        self.timed("customers.list", async {
            let mut conn = self.conn().await?;
            let mut q = dsl::customers
                .filter(dsl::tenant_id.eq(tenant.as_str()))
                .into_boxed();
            if let Some(kind) = filter.kind {
                q = q.filter(dsl::type_.eq(kind.as_str()));
            }
            if let Some(status) = filter.status {
                q = q.filter(dsl::status.eq(status.as_str()));
            }
            q = match filter.parent {
                ParentFilter::Any => q,
                ParentFilter::RootsOnly => q.filter(dsl::parent_customer_id.is_null()),
                ParentFilter::ChildrenOf(p) => q.filter(dsl::parent_customer_id.eq(p.0)),
            };
            if let Some(after) = &page.after {
                let after = Uuid::parse_str(after).map_err(|_| super::bad_cursor())?;
                q = q.filter(dsl::id.gt(after));
            }
            let rows = q
                .order(dsl::id)
                .limit(page.size as i64 + 1)
                .select(CustomerRow::as_select())
                .load(&mut conn)
                .await?;
            Ok(Page::from_overfetch(rows_into(rows)?, page.size, |c| {
                c.id.to_string()
            }))
        })
        .await
    }

    async fn descendants(
        &self,
        tenant: &TenantId,
        id: CustomerId,
        max_depth: Option<i32>,
        page: &PageRequest,
    ) -> StoreResult<Page<Customer>> {
        self.timed("customers.descendants", async {
            let mut conn = self.conn().await?;
            let (path, depth) = dsl::customers
                .find((tenant.as_str(), id.0))
                .select((dsl::path, dsl::depth))
                .first::<(String, i32)>(&mut conn)
                .await
                .optional()?
                .ok_or(NOT_FOUND)?;
            let (lower, upper) = hierarchy::descendant_bounds(&path);
            let lower = match &page.after {
                Some(after) if after.starts_with(&lower) => after.clone(),
                Some(_) => return Err(super::bad_cursor()),
                None => lower,
            };
            let max_abs = max_depth.map_or(i32::MAX, |m| depth.saturating_add(m));
            let rows: Vec<CustomerRow> = hierarchy::descendants_query!(
                customers,
                CustomerRow,
                tenant.as_str(),
                &lower,
                &upper,
                max_abs,
                page.size as i64 + 1
            )
            .load(&mut conn)
            .await?;
            Ok(Page::from_overfetch(rows_into(rows)?, page.size, |c| {
                c.path.clone()
            }))
        })
        .await
    }

    async fn ancestors(&self, tenant: &TenantId, id: CustomerId) -> StoreResult<Vec<Customer>> {
        self.timed("customers.ancestors", async {
            let mut conn = self.conn().await?;
            let path: String = dsl::customers
                .find((tenant.as_str(), id.0))
                .select(dsl::path)
                .first(&mut conn)
                .await
                .optional()?
                .ok_or(NOT_FOUND)?;
            let ids = hierarchy::ancestor_ids(&path, 1);
            let rows = dsl::customers
                .filter(dsl::tenant_id.eq(tenant.as_str()))
                .filter(dsl::id.eq_any(ids))
                .order(dsl::depth)
                .select(CustomerRow::as_select())
                .load(&mut conn)
                .await?;
            rows_into(rows)
        })
        .await
    }

    async fn subtree(
        &self,
        tenant: &TenantId,
        id: CustomerId,
        max_depth: i32,
        limit: usize,
    ) -> StoreResult<Subtree<Customer>> {
        self.timed("customers.subtree", async {
            let mut conn = self.conn().await?;
            let top = find(&mut conn, tenant, id, false).await?;
            let (lower, upper) = hierarchy::descendant_bounds(&top.path);
            let max_abs = top.depth.saturating_add(max_depth);
            let rows: Vec<CustomerRow> = hierarchy::descendants_query!(
                customers,
                CustomerRow,
                tenant.as_str(),
                &lower,
                &upper,
                max_abs,
                limit as i64
            )
            .load(&mut conn)
            .await?;
            // At most `limit` nodes with the top one: `limit - 1` descendants, and the
            // one more that was read only says the subtree was cut off.
            let truncated = rows.len() >= limit;
            let mut rows = rows;
            rows.truncate(limit.saturating_sub(1));
            let mut nodes = vec![top.into_domain()?];
            nodes.extend(rows_into(rows)?);
            Ok(Subtree { nodes, truncated })
        })
        .await
    }

    async fn move_to(
        &self,
        ctx: &Ctx,
        id: CustomerId,
        new_parent: Option<CustomerId>,
        expected: Option<i64>,
    ) -> StoreResult<Customer> {
        self.timed("customers.move", async {
            let mut conn = self.conn().await?;
            tx(&mut conn, async |conn| {
                hierarchy::lock(conn, Tree::Customers, &ctx.tenant, true).await?;
                let node = find(conn, &ctx.tenant, id, true).await?;
                check_version(expected, node.version)?;
                let parent = match new_parent {
                    Some(pid) if pid == id => return Err(cycle()),
                    Some(pid) => {
                        let (ppath, pdepth) = dsl::customers
                            .find((ctx.tenant.as_str(), pid.0))
                            .select((dsl::path, dsl::depth))
                            .first::<(String, i32)>(conn)
                            .await
                            .optional()?
                            .ok_or(StoreError::NotFound {
                                entity: "new parent customer",
                            })?;
                        if ppath.starts_with(&format!("{}/", node.path)) {
                            return Err(cycle());
                        }
                        Some((ppath, pdepth))
                    }
                    None => None,
                };
                let (new_path, new_depth) = customer_path(
                    &ctx.tenant,
                    parent.as_ref().map(|(p, d)| (p.as_str(), *d)),
                    id,
                );
                let now = Utc::now();
                let actor = ctx.actor.as_str();
                hierarchy::rewrite_descendants(
                    conn,
                    Tree::Customers,
                    ctx,
                    &node.path,
                    &new_path,
                    new_depth - node.depth,
                    now,
                )
                .await?;
                diesel::update(dsl::customers.find((ctx.tenant.as_str(), id.0)))
                    .set((
                        dsl::parent_customer_id.eq(new_parent.map(|p| p.0)),
                        dsl::path.eq(&new_path),
                        dsl::depth.eq(new_depth),
                        dsl::version.eq(dsl::version + 1),
                        dsl::updated_at.eq(now),
                        dsl::updated_by.eq(actor),
                    ))
                    .returning(CustomerRow::as_returning())
                    .get_result(conn)
                    .await?
                    .into_domain()
            })
            .await
        })
        .await
    }
}

fn cycle() -> StoreError {
    StoreError::FailedPrecondition {
        reason: "HIERARCHY_CYCLE",
        message: "the new parent is the customer itself or one of its descendants".into(),
    }
}
