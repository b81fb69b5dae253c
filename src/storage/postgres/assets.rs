//! Assets in PostgreSQL: row type, conversions and the `AssetStore` impl.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::hierarchy::{self, Tree};
use super::json::{JsonText, from_json, to_json};
use super::schema::assets::{self, dsl};
use super::schema::customers::dsl as c;
use super::schema::devices::dsl as d;
use super::tx;
use super::{PgStore, bad_cursor, check_version};
use crate::domain::asset::{
    Asset, AssetDestination, AssetFilter, AssetPatch, AssetType, NewAsset, asset_path,
};
use crate::domain::customer::ParentFilter;
use crate::domain::{
    AssetId, Ctx, CustomerId, EntityStatus, Page, PageRequest, TenantId, generate_code,
};
use crate::storage::{AssetStore, StoreError, StoreResult, Subtree};

/// One row of `assets`.
#[derive(Clone, Debug, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = assets, primary_key(tenant_id, id), treat_none_as_null = true)]
// None binds NULL (not DEFAULT) on insert, so a multi-row insert has one statement
// shape (one prepared statement) whatever its rows leave unset.
#[diesel(treat_none_as_default_value = false)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub(super) struct AssetRow {
    pub tenant_id: String,
    pub id: Uuid,
    pub customer_id: Uuid,
    pub parent_asset_id: Option<Uuid>,
    pub path: String,
    pub depth: i32,
    pub name: String,
    pub display_name: String,
    pub code: String,
    pub type_: String,
    pub description: Option<String>,
    pub location: JsonText,
    pub specs: JsonText,
    pub tags: JsonText,
    pub metadata: JsonText,
    pub status: String,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub created_by: String,
    pub updated_by: Option<String>,
}

impl AssetRow {
    pub(super) fn from_domain(a: &Asset) -> StoreResult<Self> {
        Ok(Self {
            tenant_id: a.tenant_id.as_str().to_owned(),
            id: a.id.0,
            customer_id: a.customer_id.0,
            parent_asset_id: a.parent_id.map(|p| p.0),
            path: a.path.clone(),
            depth: a.depth,
            name: a.name.clone(),
            display_name: a.display_name.clone(),
            code: a.code.clone(),
            type_: a.kind.as_str().to_owned(),
            description: a.description.clone(),
            location: to_json(&a.location)?,
            specs: to_json(&a.specs)?,
            tags: to_json(&a.tags)?,
            metadata: to_json(&a.metadata)?,
            status: a.status.as_str().to_owned(),
            version: a.version,
            created_at: a.created_at,
            updated_at: a.updated_at,
            created_by: a.created_by.clone(),
            updated_by: a.updated_by.clone(),
        })
    }

    pub(super) fn into_domain(self) -> StoreResult<Asset> {
        let bad = |what: &str, v: &str| {
            StoreError::Internal(format!("assets row has bad {what} {v:?}").into())
        };
        Ok(Asset {
            tenant_id: TenantId::parse_owned(self.tenant_id).map_err(|t| bad("tenant_id", &t))?,
            id: AssetId(self.id),
            customer_id: CustomerId(self.customer_id),
            parent_id: self.parent_asset_id.map(AssetId),
            path: self.path,
            depth: self.depth,
            name: self.name,
            display_name: self.display_name,
            code: self.code,
            kind: AssetType::parse(&self.type_).ok_or_else(|| bad("type", &self.type_))?,
            description: self.description,
            location: from_json("assets", "location", &self.location)?,
            specs: from_json("assets", "specs", &self.specs)?,
            tags: from_json("assets", "tags", &self.tags)?,
            metadata: from_json("assets", "metadata", &self.metadata)?,
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
fn rows_into(rows: Vec<AssetRow>) -> StoreResult<Vec<Asset>> {
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        out.push(row.into_domain()?);
    }
    Ok(out)
}

const NOT_FOUND: StoreError = StoreError::NotFound { entity: "asset" };

async fn find(
    conn: &mut AsyncPgConnection,
    tenant: &TenantId,
    id: AssetId,
    lock: bool,
) -> StoreResult<AssetRow> {
    let q = dsl::assets
        .find((tenant.as_str(), id.0))
        .select(AssetRow::as_select());
    let row = if lock {
        q.for_update().first(conn).await
    } else {
        q.first(conn).await
    };
    row.optional()?.ok_or(NOT_FOUND)
}

async fn customer_exists(
    conn: &mut AsyncPgConnection,
    tenant: &TenantId,
    id: CustomerId,
) -> StoreResult<bool> {
    Ok(diesel::select(diesel::dsl::exists(
        c::customers.find((tenant.as_str(), id.0)),
    ))
    .get_result(conn)
    .await?)
}

async fn free_code(
    conn: &mut AsyncPgConnection,
    tenant: &TenantId,
    customer: CustomerId,
    base: &str,
) -> StoreResult<String> {
    let taken: Vec<String> = dsl::assets
        .filter(dsl::tenant_id.eq(tenant.as_str()))
        .filter(dsl::customer_id.eq(customer.0))
        .filter(dsl::code.eq(base).or(dsl::code.like(format!("{base}-%"))))
        .select(dsl::code)
        .load(conn)
        .await?;
    Ok(super::first_free_code(base, &taken))
}

fn cycle() -> StoreError {
    StoreError::FailedPrecondition {
        reason: "HIERARCHY_CYCLE",
        message: "the new parent is the asset itself or one of its descendants".into(),
    }
}

fn other_customer() -> StoreError {
    StoreError::InvalidArgument {
        field: "parent_asset_id",
        message: "the parent asset belongs to another customer".into(),
    }
}

#[async_trait]
impl AssetStore for PgStore {
    async fn create(&self, ctx: &Ctx, new: NewAsset) -> StoreResult<Asset> {
        self.timed("assets.create", async {
            let mut conn = self.conn().await?;
            let generated_code = new.code.is_none();
            for attempt in 0..5 {
                let new = new.clone();
                let result = tx(&mut conn, async |conn| {
                    if !customer_exists(conn, &ctx.tenant, new.customer_id).await? {
                        return Err(StoreError::NotFound { entity: "customer" });
                    }
                    let parent = match new.parent_id {
                        Some(pid) => {
                            hierarchy::lock(conn, Tree::Assets, &ctx.tenant, false).await?;
                            let p = find(conn, &ctx.tenant, pid, false).await.map_err(|_| {
                                StoreError::NotFound {
                                    entity: "parent asset",
                                }
                            })?;
                            if p.customer_id != new.customer_id.0 {
                                return Err(other_customer());
                            }
                            Some((p.path, p.depth))
                        }
                        None => None,
                    };
                    let (path, depth) = asset_path(
                        &ctx.tenant,
                        new.customer_id,
                        parent.as_ref().map(|(p, d)| (p.as_str(), *d)),
                        new.id,
                    );
                    let code = match new.code {
                        Some(code) => code,
                        None => {
                            free_code(
                                conn,
                                &ctx.tenant,
                                new.customer_id,
                                &generate_code(&new.name),
                            )
                            .await?
                        }
                    };
                    let now = Utc::now();
                    let asset = Asset {
                        tenant_id: ctx.tenant.clone(),
                        id: new.id,
                        customer_id: new.customer_id,
                        parent_id: new.parent_id,
                        path,
                        depth,
                        name: new.name,
                        display_name: new.display_name,
                        code,
                        kind: new.kind,
                        description: new.description,
                        location: new.location,
                        specs: new.specs,
                        tags: new.tags,
                        metadata: new.metadata,
                        status: EntityStatus::Active,
                        version: 1,
                        created_at: now,
                        updated_at: now,
                        created_by: ctx.actor.as_str().to_owned(),
                        updated_by: None,
                    };
                    diesel::insert_into(dsl::assets)
                        .values(AssetRow::from_domain(&asset)?)
                        .returning(AssetRow::as_returning())
                        .get_result(conn)
                        .await?
                        .into_domain()
                })
                .await;
                match result {
                    Err(StoreError::AlreadyExists {
                        reason: "ASSET_CODE_EXISTS",
                        ..
                    }) if generated_code && attempt < 4 => {}
                    other => return other,
                }
            }
            unreachable!("the last attempt returns")
        })
        .await
    }

    async fn get(&self, tenant: &TenantId, id: AssetId) -> StoreResult<Asset> {
        self.timed("assets.get", async {
            self.reads
                .assets
                .one(tenant.as_str(), id.0)
                .await?
                .ok_or(NOT_FOUND)?
                .into_domain()
        })
        .await
    }

    async fn get_by_code(
        &self,
        tenant: &TenantId,
        customer: CustomerId,
        code: &str,
    ) -> StoreResult<Asset> {
        self.timed("assets.get_by_code", async {
            let mut conn = self.conn().await?;
            dsl::assets
                .filter(dsl::tenant_id.eq(tenant.as_str()))
                .filter(dsl::customer_id.eq(customer.0))
                .filter(dsl::code.eq(code))
                .select(AssetRow::as_select())
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
        id: AssetId,
        patch: AssetPatch,
        expected: Option<i64>,
    ) -> StoreResult<Asset> {
        self.timed("assets.update", async {
            let mut conn = self.conn().await?;
            tx(&mut conn, async |conn| {
                let mut asset = find(conn, &ctx.tenant, id, true).await?.into_domain()?;
                check_version(expected, asset.version)?;
                patch.apply(&mut asset, &ctx.actor, Utc::now());
                diesel::update(dsl::assets.find((ctx.tenant.as_str(), id.0)))
                    .set(&AssetRow::from_domain(&asset)?)
                    .returning(AssetRow::as_returning())
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
        id: AssetId,
        expected: Option<i64>,
    ) -> StoreResult<()> {
        self.timed("assets.delete", async {
            let mut conn = self.conn().await?;
            tx(&mut conn, async |conn| {
                let row = find(conn, tenant, id, true).await?;
                check_version(expected, row.version)?;
                let has_children: bool = diesel::select(diesel::dsl::exists(
                    dsl::assets
                        .filter(dsl::tenant_id.eq(tenant.as_str()))
                        .filter(dsl::parent_asset_id.eq(id.0)),
                ))
                .get_result(conn)
                .await?;
                if has_children {
                    return Err(StoreError::FailedPrecondition {
                        reason: "HAS_CHILDREN",
                        message: "the asset has child assets; move or delete them first".into(),
                    });
                }
                let has_devices: bool = diesel::select(diesel::dsl::exists(
                    d::devices
                        .filter(d::tenant_id.eq(tenant.as_str()))
                        .filter(d::asset_id.eq(id.0)),
                ))
                .get_result(conn)
                .await?;
                if has_devices {
                    return Err(StoreError::FailedPrecondition {
                        reason: "HAS_DEVICES",
                        message: "the asset has devices; move or delete them first".into(),
                    });
                }
                diesel::delete(dsl::assets.find((tenant.as_str(), id.0)))
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
        filter: &AssetFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<Asset>> {
        self.timed("assets.list", async {
            let mut conn = self.conn().await?;
            if !customer_exists(&mut conn, tenant, filter.customer_id).await? {
                return Err(StoreError::NotFound { entity: "customer" });
            }
            let mut q = dsl::assets
                .filter(dsl::tenant_id.eq(tenant.as_str()))
                .filter(dsl::customer_id.eq(filter.customer_id.0))
                .into_boxed();
            if let Some(kind) = filter.kind {
                q = q.filter(dsl::type_.eq(kind.as_str()));
            }
            if let Some(status) = filter.status {
                q = q.filter(dsl::status.eq(status.as_str()));
            }
            q = match filter.parent {
                ParentFilter::Any => q,
                ParentFilter::RootsOnly => q.filter(dsl::parent_asset_id.is_null()),
                ParentFilter::ChildrenOf(p) => q.filter(dsl::parent_asset_id.eq(p.0)),
            };
            if let Some(after) = &page.after {
                q = q.filter(dsl::id.gt(Uuid::parse_str(after).map_err(|_| bad_cursor())?));
            }
            let rows = q
                .order(dsl::id)
                .limit(page.size as i64 + 1)
                .select(AssetRow::as_select())
                .load(&mut conn)
                .await?;
            Ok(Page::from_overfetch(rows_into(rows)?, page.size, |a| {
                a.id.to_string()
            }))
        })
        .await
    }

    async fn descendants(
        &self,
        tenant: &TenantId,
        id: AssetId,
        max_depth: Option<i32>,
        page: &PageRequest,
    ) -> StoreResult<Page<Asset>> {
        self.timed("assets.descendants", async {
            let mut conn = self.conn().await?;
            let top = find(&mut conn, tenant, id, false).await?;
            let (lower, upper) = hierarchy::descendant_bounds(&top.path);
            let lower = match &page.after {
                Some(after) if after.starts_with(&lower) => after.clone(),
                Some(_) => return Err(bad_cursor()),
                None => lower,
            };
            let max_abs = max_depth.map_or(i32::MAX, |m| top.depth.saturating_add(m));
            let rows: Vec<AssetRow> = hierarchy::descendants_query!(
                assets,
                AssetRow,
                tenant.as_str(),
                &lower,
                &upper,
                max_abs,
                page.size as i64 + 1
            )
            .load(&mut conn)
            .await?;
            Ok(Page::from_overfetch(rows_into(rows)?, page.size, |a| {
                a.path.clone()
            }))
        })
        .await
    }

    async fn ancestors(&self, tenant: &TenantId, id: AssetId) -> StoreResult<Vec<Asset>> {
        self.timed("assets.ancestors", async {
            let mut conn = self.conn().await?;
            let top = find(&mut conn, tenant, id, false).await?;
            let rows = dsl::assets
                .filter(dsl::tenant_id.eq(tenant.as_str()))
                .filter(dsl::id.eq_any(hierarchy::ancestor_ids(&top.path, 2)))
                .order(dsl::depth)
                .select(AssetRow::as_select())
                .load(&mut conn)
                .await?;
            rows_into(rows)
        })
        .await
    }

    async fn subtree(
        &self,
        tenant: &TenantId,
        id: AssetId,
        max_depth: i32,
        limit: usize,
    ) -> StoreResult<Subtree<Asset>> {
        self.timed("assets.subtree", async {
            let mut conn = self.conn().await?;
            let top = find(&mut conn, tenant, id, false).await?;
            let (lower, upper) = hierarchy::descendant_bounds(&top.path);
            let max_abs = top.depth.saturating_add(max_depth);
            let rows: Vec<AssetRow> = hierarchy::descendants_query!(
                assets,
                AssetRow,
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

    async fn customer_forest(
        &self,
        tenant: &TenantId,
        customer: CustomerId,
        max_depth: i32,
        limit: usize,
    ) -> StoreResult<Subtree<Asset>> {
        self.timed("assets.customer_forest", async {
            let mut conn = self.conn().await?;
            if !customer_exists(&mut conn, tenant, customer).await? {
                return Err(StoreError::NotFound { entity: "customer" });
            }
            // Every asset path of the customer starts with /<tenant>/<customer>/.
            let (lower, upper) = hierarchy::descendant_bounds(&format!("/{tenant}/{customer}"));
            let rows: Vec<AssetRow> = hierarchy::descendants_query!(
                assets,
                AssetRow,
                tenant.as_str(),
                &lower,
                &upper,
                max_depth,
                limit as i64 + 1
            )
            .load(&mut conn)
            .await?;
            let truncated = rows.len() > limit;
            let mut nodes = rows_into(rows)?;
            nodes.truncate(limit);
            Ok(Subtree { nodes, truncated })
        })
        .await
    }

    async fn move_to(
        &self,
        ctx: &Ctx,
        id: AssetId,
        to: AssetDestination,
        expected: Option<i64>,
    ) -> StoreResult<Asset> {
        self.timed("assets.move", async {
            let mut conn = self.conn().await?;
            tx(&mut conn, async |conn| {
                hierarchy::lock(conn, Tree::Assets, &ctx.tenant, true).await?;
                let node = find(conn, &ctx.tenant, id, true).await?;
                check_version(expected, node.version)?;
                let (customer, parent) = match to {
                    AssetDestination::UnderParent(pid) if pid == id => return Err(cycle()),
                    AssetDestination::UnderParent(pid) => {
                        let p = find(conn, &ctx.tenant, pid, false).await.map_err(|_| {
                            StoreError::NotFound {
                                entity: "new parent asset",
                            }
                        })?;
                        if p.path.starts_with(&format!("{}/", node.path)) {
                            return Err(cycle());
                        }
                        (CustomerId(p.customer_id), Some((p.path, p.depth)))
                    }
                    AssetDestination::RootOf(customer) => {
                        if !customer_exists(conn, &ctx.tenant, customer).await? {
                            return Err(StoreError::NotFound {
                                entity: "new customer",
                            });
                        }
                        (customer, None)
                    }
                };
                let (new_path, new_depth) = asset_path(
                    &ctx.tenant,
                    customer,
                    parent.as_ref().map(|(p, d)| (p.as_str(), *d)),
                    id,
                );
                let now = Utc::now();
                let actor = ctx.actor.as_str();
                let customer_changes = customer.0 != node.customer_id;
                if customer_changes {
                    // The subtree and its devices change customer in separate statements;
                    // the same-customer foreign keys are checked at commit instead.
                    diesel::sql_query(
                        "SET CONSTRAINTS assets_parent_fkey, devices_asset_fkey DEFERRED",
                    )
                    .execute(conn)
                    .await?;
                    let (lower, upper) = hierarchy::descendant_bounds(&node.path);
                    diesel::update(
                        dsl::assets
                            .filter(dsl::tenant_id.eq(ctx.tenant.as_str()))
                            .filter(dsl::path.gt(&lower))
                            .filter(dsl::path.lt(&upper)),
                    )
                    .set(dsl::customer_id.eq(customer.0))
                    .execute(conn)
                    .await?;
                    let subtree_ids = dsl::assets
                        .filter(dsl::tenant_id.eq(ctx.tenant.as_str()))
                        .filter(
                            dsl::path
                                .eq(&node.path)
                                .or(dsl::path.gt(&lower).and(dsl::path.lt(&upper))),
                        )
                        .select(dsl::id);
                    diesel::update(
                        d::devices
                            .filter(d::tenant_id.eq(ctx.tenant.as_str()))
                            .filter(d::asset_id.eq_any(subtree_ids)),
                    )
                    .set((
                        d::customer_id.eq(customer.0),
                        d::version.eq(d::version + 1),
                        d::updated_at.eq(now),
                        d::updated_by.eq(actor),
                    ))
                    .execute(conn)
                    .await?;
                }
                hierarchy::rewrite_descendants(
                    conn,
                    Tree::Assets,
                    ctx,
                    &node.path,
                    &new_path,
                    new_depth - node.depth,
                    now,
                )
                .await?;
                diesel::update(dsl::assets.find((ctx.tenant.as_str(), id.0)))
                    .set((
                        dsl::customer_id.eq(customer.0),
                        dsl::parent_asset_id.eq(parent.as_ref().and(match to {
                            AssetDestination::UnderParent(p) => Some(p.0),
                            AssetDestination::RootOf(_) => None,
                        })),
                        dsl::path.eq(&new_path),
                        dsl::depth.eq(new_depth),
                        dsl::version.eq(dsl::version + 1),
                        dsl::updated_at.eq(now),
                        dsl::updated_by.eq(actor),
                    ))
                    .returning(AssetRow::as_returning())
                    .get_result(conn)
                    .await?
                    .into_domain()
            })
            .await
        })
        .await
    }
}
