//! Assets in the legacy `gcdr-assets-<stage>` table (contract §1.2, §2.2, §3.2).
//!
//! Listings of one customer's assets read the customer's (or one parent's) assets
//! through `gsi-customer` / `gsi-parent` and page them in id order, as PostgreSQL does:
//! an index orders items only by its own key, so every page reads that customer's
//! assets (never the whole tenant). Descendants and trees page through `gsi-path` in
//! path order.
//!
//! Codes are unique per customer: a create or a code change checks `gsi-customer`
//! (legacy items carry no claim) and claims `<customer> <code>` in the unique-keys
//! table in the same transaction as the write; a delete releases it. A move to
//! another customer checks the destination's codes and claims them, each claim in the
//! same transaction as its asset's write, so a create of one of those codes in the
//! destination cannot slip in between. The moved assets' old claims are not released
//! (that would make three items per asset): they turn stale, and are dropped by the
//! next writer that wants those values.

use std::collections::HashSet;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};

use super::dependents::{MOVE_READS, Mark, settled, touch_item};
use super::{
    Claim, DynamoStore, Expect, Item, ItemReader, ItemWriter, Overwrite, Query, cancellation_codes,
    n, s, sdk_error,
};
use super::{bad_cursor, check_version, first_free_code};
use crate::domain::asset::{
    Asset, AssetDestination, AssetFilter, AssetPatch, AssetType, NewAsset, asset_path,
};
use crate::domain::customer::ParentFilter;
use crate::domain::device::Device;
use crate::domain::{
    AssetId, Ctx, CustomerId, EntityStatus, Page, PageRequest, TenantId, generate_code,
};
use crate::storage::{AssetStore, StoreError, StoreResult, Subtree, ancestor_ids};

/// Optional attributes an overwrite removes when the record has none.
const OPTIONAL: &[&str] = &["parentAssetId", "description", "updatedBy"];

const NOT_FOUND: StoreError = StoreError::NotFound { entity: "asset" };

/// How many gsi-asset queries a move runs at once.
const DEVICE_QUERY_CONCURRENCY: usize = 8;

/// How often a read-check-write is retried when another writer got in between.
const ATTEMPTS: usize = 5;

/// The legacy item of an asset. A root has no `parentAssetId` (never NULL: it is a GSI
/// key attribute); `location` and `specs` are always maps (`{}` when empty).
pub(crate) fn to_item(a: &Asset) -> StoreResult<Item> {
    let parent = a.parent_id.map(|p| p.to_string());
    Ok(ItemWriter::new(a.tenant_id.as_str(), &a.id.to_string())
        .s("customerId", a.customer_id.to_string())
        .opt_s("parentAssetId", parent.as_deref())
        .s("path", &a.path)
        .n("depth", a.depth)
        .s("name", &a.name)
        .s("displayName", &a.display_name)
        .s("code", &a.code)
        .s("type", a.kind.as_str())
        .opt_s("description", a.description.as_deref())
        .json("location", &a.location)?
        .json("specs", &a.specs)?
        .list("tags", &a.tags)
        .json("metadata", &a.metadata)?
        .s("status", a.status.as_str())
        .n("version", a.version)
        .ts("createdAt", a.created_at)
        .ts("updatedAt", a.updated_at)
        .s("createdBy", &a.created_by)
        .opt_s("updatedBy", a.updated_by.as_deref())
        .finish())
}

/// An asset from a legacy item, as legacy data really is: parent absent or NULL for a
/// root, optional attributes absent or NULL, `location`/`specs` `{}` (or absent),
/// `displayName` defaulting to `name`, timestamps at any sub-second precision.
pub(crate) fn from_item(item: &Item) -> StoreResult<Asset> {
    let r = ItemReader::new("assets", item);
    let tenant = r.s("tenantId")?;
    let id = r.s("id")?;
    let customer = r.s("customerId")?;
    let name = r.s("name")?;
    let kind = r.s("type")?;
    let status = r.opt_s("status")?.unwrap_or_else(|| "ACTIVE".into());
    let created_at = r.ts("createdAt")?;
    Ok(Asset {
        tenant_id: TenantId::parse(&tenant).ok_or_else(|| r.bad("tenantId", "is not valid"))?,
        id: AssetId::parse(&id).ok_or_else(|| r.bad("id", "is not a UUID"))?,
        customer_id: CustomerId::parse(&customer)
            .ok_or_else(|| r.bad("customerId", "is not a UUID"))?,
        parent_id: r
            .opt_s("parentAssetId")?
            .filter(|p| !p.is_empty())
            .map(|p| AssetId::parse(&p).ok_or_else(|| r.bad("parentAssetId", "is not a UUID")))
            .transpose()?,
        path: r.s("path")?,
        depth: r.i32("depth")?,
        display_name: r.opt_s("displayName")?.unwrap_or_else(|| name.clone()),
        name,
        code: r.opt_s("code")?.unwrap_or_default(),
        kind: AssetType::parse(&kind).ok_or_else(|| r.bad("type", "is not an asset type"))?,
        description: r.opt_s("description")?,
        location: r.de("location")?.unwrap_or_default(),
        specs: r.de("specs")?.unwrap_or_default(),
        tags: r.list("tags")?,
        metadata: r.object("metadata")?,
        status: EntityStatus::parse(&status).ok_or_else(|| r.bad("status", "is not a status"))?,
        version: r.opt_i64("version")?.unwrap_or(1),
        created_at,
        updated_at: r.opt_ts("updatedAt")?.unwrap_or(created_at),
        created_by: r.opt_s("createdBy")?.unwrap_or_else(|| "system".into()),
        updated_by: r.opt_s("updatedBy")?,
    })
}

/// An asset read with its mark, for a move (dependents.rs).
fn marked(item: &Item) -> StoreResult<(Asset, Mark)> {
    Ok((from_item(item)?, Mark::of(item)))
}

/// The overwrite that stores `a` if the stored item still meets `expect`.
pub(crate) fn overwrite(a: &Asset, expect: Expect) -> StoreResult<Overwrite> {
    Ok(Overwrite::new(to_item(a)?, OPTIONAL, expect))
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

fn code_taken() -> StoreError {
    StoreError::AlreadyExists {
        reason: "ASSET_CODE_EXISTS",
        field: "asset.code",
    }
}

/// Another writer kept winning the race between our read and our conditional write.
pub(super) fn keeps_changing(what: &str) -> StoreError {
    StoreError::Unavailable(format!("the {what} keeps changing; retry"))
}

/// Maps `NotFound` to `NotFound { entity }` (the entity as the caller named it).
pub(super) fn not_found_as(entity: &'static str) -> impl Fn(StoreError) -> StoreError {
    move |e| match e {
        StoreError::NotFound { .. } => StoreError::NotFound { entity },
        e => e,
    }
}

/// A transaction item that puts `item` unless an item with its key exists.
pub(super) fn put_new_item(table: &str, item: Item) -> StoreResult<TransactWriteItem> {
    let put = Put::builder()
        .table_name(table)
        .set_item(Some(item))
        .condition_expression("attribute_not_exists(id)")
        .build()
        .map_err(|e| StoreError::Internal(Box::new(e)))?;
    Ok(TransactWriteItem::builder().put(put).build())
}

/// The check that asset `a` still exists with the customer and path that were read,
/// marking it as having gained a dependent.
pub(super) fn asset_check(table: &str, a: &Asset) -> StoreResult<TransactWriteItem> {
    touch_item(
        table,
        a.tenant_id.as_str(),
        &a.id.to_string(),
        &[
            ("customerId", s(a.customer_id.to_string())),
            ("path", s(a.path.clone())),
        ],
    )
}

impl DynamoStore {
    /// Runs one TransactWriteItems (at most 100 items). `Ok(None)`: it committed;
    /// `Ok(Some(i))`: it was cancelled because the condition of item `i` failed.
    /// A cancellation for any other reason (a conflicting transaction, throttling) is
    /// `Unavailable`.
    pub(super) async fn transact_once(
        &self,
        items: Vec<TransactWriteItem>,
    ) -> StoreResult<Option<usize>> {
        let result = self.transact_write(items).await;
        match result {
            Ok(_) => Ok(None),
            Err(e) => match cancellation_codes(&e) {
                Some(codes) => match codes.iter().position(|c| c == "ConditionalCheckFailed") {
                    Some(i) => Ok(Some(i)),
                    None => Err(StoreError::Unavailable(format!(
                        "DynamoDB transaction cancelled ({}); retry",
                        codes.join(", ")
                    ))),
                },
                None => Err(sdk_error(e)),
            },
        }
    }

    /// Strongly consistent read of one asset.
    pub(super) async fn find_asset(&self, tenant: &TenantId, id: AssetId) -> StoreResult<Asset> {
        let table = &self.tables.assets;
        match self
            .get_item(table, tenant.as_str(), &id.to_string())
            .await?
        {
            Some(item) => from_item(&item),
            None => Err(NOT_FOUND),
        }
    }

    /// True when the customer exists (strongly consistent).
    async fn asset_customer_exists(&self, tenant: &TenantId, id: CustomerId) -> StoreResult<bool> {
        let table = &self.tables.customers;
        Ok(self
            .get_item(table, tenant.as_str(), &id.to_string())
            .await?
            .is_some())
    }

    /// The assets of `customer` holding `code`, in id order. The index is only a hint:
    /// each candidate is re-read, so a just-deleted or just-recoded asset is not taken.
    async fn assets_with_code(
        &self,
        tenant: &TenantId,
        customer: CustomerId,
        code: &str,
    ) -> StoreResult<Vec<Asset>> {
        let mut q = Query::index_eq(
            &self.tables.assets,
            "gsi-customer",
            tenant.as_str(),
            "customerId",
            &customer.to_string(),
        );
        q.filter_eq("code", Some(code));
        let mut ids: Vec<AssetId> = self
            .query(&q, usize::MAX)
            .await?
            .iter()
            .map(|i| {
                let r = ItemReader::new("assets", i);
                let id = r.s("id")?;
                AssetId::parse(&id).ok_or_else(|| r.bad("id", "is not a UUID"))
            })
            .collect::<StoreResult<_>>()?;
        ids.sort();
        ids.dedup();
        let mut found = Vec::new();
        for id in ids {
            match self.find_asset(tenant, id).await {
                Ok(a) if a.customer_id == customer && a.code == code => found.push(a),
                Ok(_) | Err(StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(found)
    }

    /// The first free code of `customer` for `base` (`base`, `base-2`, ...).
    async fn free_asset_code(
        &self,
        tenant: &TenantId,
        customer: CustomerId,
        base: &str,
        lost: &[String],
    ) -> StoreResult<String> {
        let mut q = Query::index_eq(
            &self.tables.assets,
            "gsi-customer",
            tenant.as_str(),
            "customerId",
            &customer.to_string(),
        );
        q.and_filter(
            "begins_with(#code, :base)",
            &[("#code", "code")],
            vec![(":base", s(base))],
        );
        let mut taken: Vec<String> = self
            .query(&q, usize::MAX)
            .await?
            .iter()
            .filter_map(|i| match i.get("code") {
                Some(AttributeValue::S(c)) => Some(c.clone()),
                _ => None,
            })
            .collect();
        taken.extend(lost.iter().cloned());
        Ok(first_free_code(base, &taken))
    }

    /// Assets whose path starts with `prefix` (which ends with `/`), in path order,
    /// at most `max_depth` deep (absolute), after the path `after`, at most `want`.
    async fn assets_under<T>(
        &self,
        tenant: &TenantId,
        prefix: &str,
        max_depth: Option<i32>,
        after: Option<&str>,
        want: usize,
        read: fn(&Item) -> StoreResult<T>,
    ) -> StoreResult<Vec<T>> {
        let mut q = Query::index_prefix(
            &self.tables.assets,
            "gsi-path",
            tenant.as_str(),
            "path",
            prefix,
        );
        if let Some(max) = max_depth {
            q.and_filter(
                "#depth <= :maxd",
                &[("#depth", "depth")],
                vec![(":maxd", n(max))],
            );
        }
        if let Some(after) = after {
            if !after.starts_with(prefix) {
                return Err(bad_cursor());
            }
            let id = after.rsplit('/').next().unwrap_or_default();
            q.start = Some(
                [
                    ("tenantId", s(tenant.as_str())),
                    ("id", s(id)),
                    ("path", s(after)),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            );
        }
        self.query(&q, want).await?.iter().map(read).collect()
    }

    /// The devices on `asset` (gsi-asset), in id order.
    pub(super) async fn devices_on_asset(
        &self,
        tenant: &TenantId,
        asset: AssetId,
    ) -> StoreResult<Vec<Device>> {
        let q = Query::index_eq(
            &self.tables.devices,
            "gsi-asset",
            tenant.as_str(),
            "assetId",
            &asset.to_string(),
        );
        let mut devices: Vec<Device> = self
            .query(&q, usize::MAX)
            .await?
            .iter()
            .map(super::devices::from_item)
            .collect::<StoreResult<_>>()?;
        devices.sort_by_key(|d| d.id);
        Ok(devices)
    }
}

/// Creates an asset whose customer and parent were read as `parent`: the put commits
/// only together with checks that the customer still exists and the parent still has
/// the customer and path read (so a concurrent move of the parent cannot leave the new
/// asset with a stale path). `Ok(false)` when a check failed (read again and retry).
/// The value of an asset code's claim: codes are unique per customer.
fn code_value(customer: CustomerId, code: &str) -> String {
    Claim::value(&[&customer.to_string(), code])
}

impl DynamoStore {
    /// The claim of `value` ([`code_value`]) in tenant `t` by asset `owner`.
    fn asset_code_claim<'a>(
        &'a self,
        t: &'a TenantId,
        value: &'a str,
        owner: &'a str,
    ) -> Claim<'a> {
        let attrs: &[&str] = &["customerId", "code"];
        let guarded: super::Guarded = ("asset-code", self.tables.assets.as_str(), attrs);
        Claim::new(&self.tables, t.as_str(), guarded, value, owner)
    }
}

/// What putting a new asset came to.
enum Placed {
    Done,
    /// Its code is claimed by another asset.
    CodeTaken,
    /// The customer or parent changed, or a stale claim was dropped: read again.
    Changed,
}

/// Puts a new asset with the checks that its customer and parent still are, and the
/// claim of its code.
async fn put_asset(
    store: &DynamoStore,
    asset: &Asset,
    parent: Option<&Asset>,
) -> StoreResult<Placed> {
    let t = asset.tenant_id.as_str();
    let mut items = vec![touch_item(
        &store.tables.customers,
        t,
        &asset.customer_id.to_string(),
        &[],
    )?];
    if let Some(p) = parent {
        items.push(asset_check(&store.tables.assets, p)?);
    }
    let put_index = items.len();
    items.push(put_new_item(&store.tables.assets, to_item(asset)?)?);
    let (value, sid) = (
        code_value(asset.customer_id, &asset.code),
        asset.id.to_string(),
    );
    let claim = store.asset_code_claim(&asset.tenant_id, &value, &sid);
    items.push(claim.take()?);
    match store.transact_once(items).await? {
        None => Ok(Placed::Done),
        Some(i) if i == put_index => Err(StoreError::AlreadyExists {
            reason: "ASSET_EXISTS",
            field: "asset.id",
        }),
        Some(i) if i == put_index + 1 && store.claim_taken(&claim).await? => Ok(Placed::CodeTaken),
        Some(_) => Ok(Placed::Changed),
    }
}

#[async_trait]
impl AssetStore for DynamoStore {
    async fn create(&self, ctx: &Ctx, new: NewAsset) -> StoreResult<Asset> {
        self.timed("assets.create", async {
            let mut lost: Vec<String> = Vec::new();
            for _ in 0..ATTEMPTS {
                if !self
                    .asset_customer_exists(&ctx.tenant, new.customer_id)
                    .await?
                {
                    return Err(StoreError::NotFound { entity: "customer" });
                }
                let parent = match new.parent_id {
                    Some(pid) => {
                        let p = self
                            .find_asset(&ctx.tenant, pid)
                            .await
                            .map_err(not_found_as("parent asset"))?;
                        if p.customer_id != new.customer_id {
                            return Err(other_customer());
                        }
                        Some(p)
                    }
                    None => None,
                };
                let (path, depth) = asset_path(
                    &ctx.tenant,
                    new.customer_id,
                    parent.as_ref().map(|p| (p.path.as_str(), p.depth)),
                    new.id,
                );
                // Legacy never checked codes. Uniqueness per customer: checked through
                // gsi-customer (legacy items have no claim), then claimed in the
                // unique-keys table with the put, so two concurrent creates of one code
                // cannot both succeed.
                let code = match &new.code {
                    Some(code) => {
                        if !self
                            .assets_with_code(&ctx.tenant, new.customer_id, code)
                            .await?
                            .is_empty()
                        {
                            return Err(code_taken());
                        }
                        code.clone()
                    }
                    None => {
                        self.free_asset_code(
                            &ctx.tenant,
                            new.customer_id,
                            &generate_code(&new.name),
                            &lost,
                        )
                        .await?
                    }
                };
                let now = super::item::now();
                let new = new.clone();
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
                match put_asset(self, &asset, parent.as_ref()).await? {
                    Placed::Done => return Ok(asset),
                    Placed::CodeTaken if new.code.is_some() => return Err(code_taken()),
                    // A generated code another asset holds (its item not yet in the
                    // index): the next attempt generates past it.
                    Placed::CodeTaken => lost.push(asset.code),
                    Placed::Changed => {}
                }
            }
            Err(keeps_changing("parent asset"))
        })
        .await
    }

    async fn get(&self, tenant: &TenantId, id: AssetId) -> StoreResult<Asset> {
        self.timed("assets.get", self.find_asset(tenant, id)).await
    }

    async fn get_by_code(
        &self,
        tenant: &TenantId,
        customer: CustomerId,
        code: &str,
    ) -> StoreResult<Asset> {
        self.timed("assets.get_by_code", async {
            self.assets_with_code(tenant, customer, code)
                .await?
                .into_iter()
                .next()
                .ok_or(NOT_FOUND)
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
            // Read, apply, write conditional on the version read; a concurrent write in
            // between (a move bumps the version too) is retried when the caller did not
            // pin a version.
            for _ in 0..ATTEMPTS {
                let mut asset = self.find_asset(&ctx.tenant, id).await?;
                check_version(expected, asset.version)?;
                let read_version = asset.version;
                let old_code = asset.code.clone();
                patch
                    .clone()
                    .apply(&mut asset, &ctx.actor, super::item::now());
                let w = overwrite(&asset, Expect::Version(read_version))?;
                if asset.code == old_code {
                    if self.overwrite(&self.tables.assets, w).await? {
                        return Ok(asset);
                    }
                    continue;
                }
                // A new code: checked, claimed, and the old one released, with the write.
                if self
                    .assets_with_code(&ctx.tenant, asset.customer_id, &asset.code)
                    .await?
                    .iter()
                    .any(|other| other.id != id)
                {
                    return Err(code_taken());
                }
                let sid = id.to_string();
                let new_value = code_value(asset.customer_id, &asset.code);
                let old_value = code_value(asset.customer_id, &old_code);
                let claim = self.asset_code_claim(&ctx.tenant, &new_value, &sid);
                let old = self.asset_code_claim(&ctx.tenant, &old_value, &sid);
                let mut items = vec![claim.take()?, w.transact_item(&self.tables.assets)?];
                items.extend(self.releases(&old).await?);
                let Some(codes) = self.transact(items).await? else {
                    return Ok(asset);
                };
                if codes.first().is_some_and(|c| c == "ConditionalCheckFailed")
                    && self.claim_taken(&claim).await?
                {
                    return Err(code_taken());
                }
            }
            Err(keeps_changing("asset"))
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
            // Refused while it has children or devices, enforced by the mark a child
            // or device write leaves on it (dependents.rs).
            let t = tenant.as_str();
            let sid = id.to_string();
            for _ in 0..ATTEMPTS {
                let item = self.get_item(&self.tables.assets, t, &sid).await?;
                let item = item.ok_or(NOT_FOUND)?;
                let (asset, mark) = (from_item(&item)?, Mark::of(&item));
                check_version(expected, asset.version)?;
                mark.settle(self.index_settle).await;
                if self
                    .exists_in_index(&self.tables.assets, "gsi-parent", t, "parentAssetId", &sid)
                    .await?
                {
                    return Err(StoreError::FailedPrecondition {
                        reason: "HAS_CHILDREN",
                        message: "the asset has child assets; move or delete them first".into(),
                    });
                }
                if self
                    .exists_in_index(&self.tables.devices, "gsi-asset", t, "assetId", &sid)
                    .await?
                {
                    return Err(StoreError::FailedPrecondition {
                        reason: "HAS_DEVICES",
                        message: "the asset has devices; move or delete them first".into(),
                    });
                }
                // The delete and the release of its code's claim, together.
                let value = code_value(asset.customer_id, &asset.code);
                let mut items =
                    vec![mark.delete_item(&self.tables.assets, t, &sid, asset.version)?];
                let old = self.asset_code_claim(tenant, &value, &sid);
                items.extend(self.releases(&old).await?);
                if self.transact(items).await?.is_none() {
                    return Ok(());
                }
            }
            Err(keeps_changing("asset"))
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
            if !self
                .asset_customer_exists(tenant, filter.customer_id)
                .await?
            {
                return Err(StoreError::NotFound { entity: "customer" });
            }
            let after = page
                .after
                .as_deref()
                .map(|a| AssetId::parse(a).ok_or_else(bad_cursor))
                .transpose()?;
            let table = &self.tables.assets;
            let t = tenant.as_str();
            let customer = filter.customer_id.to_string();
            let mut q = match filter.parent {
                ParentFilter::ChildrenOf(p) => {
                    let mut q =
                        Query::index_eq(table, "gsi-parent", t, "parentAssetId", &p.to_string());
                    q.filter_eq("customerId", Some(&customer));
                    q
                }
                _ => Query::index_eq(table, "gsi-customer", t, "customerId", &customer),
            };
            q.filter_eq("type", filter.kind.map(AssetType::as_str));
            q.filter_eq("status", filter.status.map(EntityStatus::as_str));
            if filter.parent == ParentFilter::RootsOnly {
                q.and_filter(
                    "attribute_not_exists(#p) OR attribute_type(#p, :null)",
                    &[("#p", "parentAssetId")],
                    vec![(":null", s("NULL"))],
                );
            }
            // The index orders by customer (or parent) only: read them all and page in
            // id order like every other listing.
            let mut all: Vec<Asset> = self
                .query(&q, usize::MAX)
                .await?
                .iter()
                .map(from_item)
                .collect::<StoreResult<_>>()?;
            all.sort_by_key(|a| a.id);
            if let Some(after) = after {
                all.retain(|a| a.id > after);
            }
            all.truncate(page.size + 1);
            Ok(Page::from_overfetch(all, page.size, |a| a.id.to_string()))
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
            let top = self.find_asset(tenant, id).await?;
            let max_abs = max_depth.map(|m| top.depth.saturating_add(m));
            let rows = self
                .assets_under(
                    tenant,
                    &format!("{}/", top.path),
                    max_abs,
                    page.after.as_deref(),
                    page.size + 1,
                    from_item,
                )
                .await?;
            Ok(Page::from_overfetch(rows, page.size, |a| a.path.clone()))
        })
        .await
    }

    async fn ancestors(&self, tenant: &TenantId, id: AssetId) -> StoreResult<Vec<Asset>> {
        self.timed("assets.ancestors", async {
            let node = self.find_asset(tenant, id).await?;
            let reads = ancestor_ids(&node.path, 2)
                .into_iter()
                .map(|a| self.find_asset(tenant, AssetId(a)));
            let mut found = Vec::new();
            for r in futures::future::join_all(reads).await {
                match r {
                    Ok(a) => found.push(a),
                    // A stale legacy path may name a deleted ancestor: skip it.
                    Err(StoreError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            found.sort_by_key(|a| a.depth);
            Ok(found)
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
            let top = self.find_asset(tenant, id).await?;
            let max_abs = top.depth.saturating_add(max_depth);
            let mut rows = self
                .assets_under(
                    tenant,
                    &format!("{}/", top.path),
                    Some(max_abs),
                    None,
                    limit,
                    from_item,
                )
                .await?;
            // At most `limit` nodes with the top one: `limit - 1` descendants, and the
            // one more that was read only says the subtree was cut off.
            let truncated = rows.len() >= limit;
            rows.truncate(limit.saturating_sub(1));
            let mut nodes = vec![top];
            nodes.extend(rows);
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
            if !self.asset_customer_exists(tenant, customer).await? {
                return Err(StoreError::NotFound { entity: "customer" });
            }
            // Every asset path of the customer starts with /<tenant>/<customer>/.
            let prefix = format!("/{tenant}/{customer}/");
            let mut nodes = self
                .assets_under(
                    tenant,
                    &prefix,
                    Some(max_depth),
                    None,
                    limit.saturating_add(1),
                    from_item,
                )
                .await?;
            let truncated = nodes.len() > limit;
            nodes.truncate(limit);
            Ok(Subtree { nodes, truncated })
        })
        .await
    }

    /// A move on DynamoDB is not one transaction. When the customer changes, the
    /// devices of every moved asset take the new customer too (found through gsi-asset,
    /// each written conditional on the version read, its version bumped). The writes
    /// run in TransactWriteItems of at most 100, in path order, each asset's devices
    /// just before the asset; the descendants first, then the node's devices, and last
    /// the node itself together with a check that the new parent still has the path
    /// and customer read (so no cycle can form; for a move to a root, that the new
    /// customer still exists). Every asset write is conditional on the version read
    /// and bumps it, as in PostgreSQL.
    ///
    /// A move to another customer also claims each moved asset's code there, in the
    /// transaction of its asset (a code held twice in the subtree, which legacy data
    /// can have, is refused, as PostgreSQL's constraint would).
    ///
    /// A move of up to 98 items (descendants, devices and claims) is therefore atomic; a
    /// larger one that fails part-way (PARTIAL_MOVE) has some descendants (with their
    /// devices) under the new path while the node is still in place, and retrying the
    /// same move finishes it. An asset or device added under the subtree meanwhile
    /// changes its parent's mark, and every write is conditioned on the mark read
    /// (dependents.rs), so it is never left with the old path or customer.
    async fn move_to(
        &self,
        ctx: &Ctx,
        id: AssetId,
        to: AssetDestination,
        expected: Option<i64>,
    ) -> StoreResult<Asset> {
        self.timed("assets.move", async {
            let table = &self.tables.assets;
            let (t, sid) = (ctx.tenant.as_str(), id.to_string());
            // Reads of the subtree: `attempt` counts those after a fresh mark (the
            // index may lag), `stale_reads` those after a stale claim was dropped.
            let (mut attempt, mut stale_reads) = (0, 0);
            while attempt < MOVE_READS {
                let item = self.get_item(table, t, &sid).await?.ok_or(NOT_FOUND)?;
                let (mut node, node_mark) = (from_item(&item)?, Mark::of(&item));
                check_version(expected, node.version)?;
                let (customer, parent) = match to {
                    AssetDestination::UnderParent(pid) if pid == id => return Err(cycle()),
                    AssetDestination::UnderParent(pid) => {
                        let p = self
                            .find_asset(&ctx.tenant, pid)
                            .await
                            .map_err(not_found_as("new parent asset"))?;
                        if p.path.starts_with(&format!("{}/", node.path)) {
                            return Err(cycle());
                        }
                        (p.customer_id, Some(p))
                    }
                    AssetDestination::RootOf(customer) => {
                        if !self.asset_customer_exists(&ctx.tenant, customer).await? {
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
                    parent.as_ref().map(|p| (p.path.as_str(), p.depth)),
                    id,
                );
                let now = super::item::now();
                let actor = ctx.actor.as_str().to_owned();
                let customer_changes = customer != node.customer_id;
                let prefix = format!("{}/", node.path);
                let descendants = self
                    .assets_under(&ctx.tenant, &prefix, None, None, usize::MAX, marked)
                    .await?;
                // A child or device added to the subtree just before may not show in
                // gsi-path / gsi-asset yet: wait for it and read again (dependents.rs). One
                // added later changes its parent's mark, which the writes are conditioned on.
                let marks = std::iter::once(&node_mark).chain(descendants.iter().map(|d| &d.1));
                if !settled(attempt, self.index_settle, marks).await? {
                    attempt += 1;
                    continue;
                }
                // Codes are unique per customer: a move into a customer that already has
                // one of the moved codes is refused, as PostgreSQL's constraint refuses it.
                // Checked here (legacy items carry no claim), claimed with the writes.
                // A code held twice in the subtree (legacy data) would be twice in the
                // destination: refused too.
                if customer_changes {
                    let codes: Vec<&String> = std::iter::once(&node.code)
                        .chain(descendants.iter().map(|d| &d.0.code))
                        .collect();
                    if codes.iter().collect::<HashSet<_>>().len() < codes.len() {
                        return Err(code_taken());
                    }
                    let q = Query::index_eq(
                        table,
                        "gsi-customer",
                        ctx.tenant.as_str(),
                        "customerId",
                        &customer.to_string(),
                    );
                    let held: HashSet<String> = self
                        .query(&q, usize::MAX)
                        .await?
                        .iter()
                        .filter_map(|i| i.get("code").and_then(|v| v.as_s().ok()).cloned())
                        .collect();
                    if codes.iter().any(|c| held.contains(*c)) {
                        return Err(code_taken());
                    }
                }
                // The devices of every moved asset, the node's last, when they change
                // customer.
                let mut devices: Vec<Vec<Device>> = if customer_changes {
                    let ids: Vec<AssetId> = descendants
                        .iter()
                        .map(|d| d.0.id)
                        .chain(std::iter::once(id))
                        .collect();
                    futures::stream::iter(ids)
                        .map(|a| self.devices_on_asset(&ctx.tenant, a))
                        .buffered(DEVICE_QUERY_CONCURRENCY)
                        .try_collect()
                        .await?
                } else {
                    Vec::new()
                };
                let mut seen = HashSet::new();
                let mut device_writes = |list: Option<Vec<Device>>| -> StoreResult<Vec<_>> {
                    let mut out = Vec::new();
                    for d in list.unwrap_or_default() {
                        // The index may briefly show a just-moved device under two assets;
                        // one transaction must not name an item twice.
                        if !seen.insert(d.id) {
                            continue;
                        }
                        out.push(
                            device_move_write(d, customer, now, &actor)?
                                .transact_item(&self.tables.devices)?,
                        );
                    }
                    Ok(out)
                };
                let node_devices = if customer_changes {
                    devices.pop()
                } else {
                    None
                };
                let mut devices = devices.into_iter();
                let delta = new_depth - node.depth;
                // Groups of writes that commit together: a device, or an asset with the
                // claim of its code in the destination.
                let mut writes = Groups::default();
                for (mut d, mark) in descendants {
                    writes.singles(device_writes(devices.next())?);
                    let read_version = d.version;
                    d.customer_id = customer;
                    d.path = format!("{new_path}{}", &d.path[node.path.len()..]);
                    d.depth += delta;
                    d.version += 1;
                    d.updated_at = now;
                    d.updated_by = Some(actor.clone());
                    let w = mark.guard(overwrite(&d, Expect::Version(read_version))?);
                    let claim = customer_changes.then(|| (code_value(customer, &d.code), d.id));
                    writes.asset(self, &ctx.tenant, claim, w.transact_item(table)?)?;
                }
                writes.singles(device_writes(node_devices)?);
                // The node goes last, in the final chunk. The destination check (and
                // mark) is in every chunk: each moves assets under it.
                let destination = match &parent {
                    Some(p) => asset_check(table, p)?,
                    None => touch_item(
                        &self.tables.customers,
                        ctx.tenant.as_str(),
                        &customer.to_string(),
                        &[],
                    )?,
                };
                let read_version = node.version;
                node.customer_id = customer;
                node.parent_id = parent.as_ref().map(|p| p.id);
                node.path = new_path;
                node.depth = new_depth;
                node.version += 1;
                node.updated_at = now;
                node.updated_by = Some(actor);
                let w = node_mark.guard(overwrite(&node, Expect::Version(read_version))?);
                let claim = customer_changes.then(|| (code_value(customer, &node.code), id));
                writes.asset(self, &ctx.tenant, claim, w.transact_item(table)?)?;
                let Groups { groups, claims, .. } = writes;
                let cancelled = match self.transact_groups(groups, Some(destination)).await? {
                    Ok(()) => return Ok(node),
                    Err(c) => c,
                };
                // A failed claim: the code is another asset's now, or its claim was
                // stale (dropped by claim_taken: read again and retry).
                let mut stale = false;
                for (_, value, owner) in claims.iter().filter(|c| cancelled.failed.contains(&c.0)) {
                    let claim = self.asset_code_claim(&ctx.tenant, value, owner);
                    if !self.claim_taken(&claim).await? {
                        stale = true;
                    } else if cancelled.partial {
                        return Err(StoreError::FailedPrecondition {
                            reason: "PARTIAL_MOVE",
                            message: "an asset code of the subtree was taken in the destination \
                                      while it was being moved; part of it was rewritten: move \
                                      it back, or free the code and retry"
                                .into(),
                        });
                    } else {
                        return Err(code_taken());
                    }
                }
                if !stale {
                    return Err(cancelled.into_error());
                }
                // Claims are dropped chunk by chunk: a few reads more, then give up.
                stale_reads += 1;
                if stale_reads >= MOVE_READS {
                    return Err(keeps_changing("claim on a moved code in the destination"));
                }
            }
            Err(super::dependents::still_gaining())
        })
        .await
    }
}

/// A move's writes in groups that commit together, with the claims among them.
#[derive(Default)]
struct Groups {
    groups: Vec<Vec<TransactWriteItem>>,
    /// Each claim's index in the groups flattened, its value and its owner.
    claims: Vec<(usize, String, String)>,
    len: usize,
}

impl Groups {
    /// Writes that commit on their own.
    fn singles(&mut self, items: Vec<TransactWriteItem>) {
        self.len += items.len();
        self.groups.extend(items.into_iter().map(|i| vec![i]));
    }

    /// An asset's write, with the claim (value, owner) of its code when it changes
    /// customer.
    fn asset(
        &mut self,
        store: &DynamoStore,
        tenant: &TenantId,
        claim: Option<(String, AssetId)>,
        write: TransactWriteItem,
    ) -> StoreResult<()> {
        let mut group = Vec::with_capacity(2);
        if let Some((value, owner)) = claim {
            let owner = owner.to_string();
            group.push(store.asset_code_claim(tenant, &value, &owner).take()?);
            self.claims.push((self.len, value, owner));
        }
        group.push(write);
        self.len += group.len();
        self.groups.push(group);
        Ok(())
    }
}

/// The overwrite that moves a device to `customer` (its asset's new customer).
fn device_move_write(
    mut d: Device,
    customer: CustomerId,
    now: DateTime<Utc>,
    actor: &str,
) -> StoreResult<Overwrite> {
    let read_version = d.version;
    d.customer_id = customer;
    d.version += 1;
    d.updated_at = now;
    d.updated_by = Some(actor.to_owned());
    super::devices::overwrite(&d, Expect::Version(read_version))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::asset::Location;
    use std::collections::HashMap;

    const TENANT: &str = "tenant-default";
    const CUSTOMER: &str = "33333333-3333-4333-8333-333333333333";
    const ROOT: &str = "aaaaaaaa-0000-4000-8000-000000000001";
    const ROOT2: &str = "aaaaaaaa-0000-4000-8000-000000000002";
    const CHILD: &str = "aaaaaaaa-0000-4000-8000-000000000003";

    /// A legacy-shaped asset item as other tooling wrote it: no milliseconds, `{}`
    /// maps, no `displayName`, `updatedBy` absent.
    fn legacy(id: &str, path: &str, depth: i32) -> ItemWriter {
        ItemWriter::new(TENANT, id)
            .s("customerId", CUSTOMER)
            .s("path", path)
            .n("depth", depth)
            .s("name", "Building A")
            .s("code", "BUILDING-A")
            .s("type", "BUILDING")
            .attr("location", AttributeValue::M(HashMap::new()))
            .attr("specs", AttributeValue::M(HashMap::new()))
            .attr("tags", AttributeValue::L(vec![]))
            .attr("metadata", AttributeValue::M(HashMap::new()))
            .s("status", "ACTIVE")
            .n("version", 1)
            .s("createdAt", "2026-03-01T00:00:00Z")
            .s("updatedAt", "2026-03-01T00:00:00Z")
            .s("createdBy", "system")
    }

    fn assert_no_null(item: &Item) {
        for (k, v) in item {
            assert!(!matches!(v, AttributeValue::Null(_)), "{k} written as NULL");
        }
    }

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-03-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn a_root_with_the_parent_absent_reads_and_writes_back_without_it() {
        let item = legacy(ROOT, &format!("/{TENANT}/{CUSTOMER}/{ROOT}"), 0).finish();
        let a = from_item(&item).unwrap();
        assert_eq!(a.id.to_string(), ROOT);
        assert_eq!(a.customer_id.to_string(), CUSTOMER);
        assert_eq!(a.parent_id, None);
        assert_eq!(a.depth, 0);
        assert_eq!(a.display_name, "Building A");
        assert_eq!(a.kind, AssetType::Building);
        assert_eq!(a.location, Location::default());
        assert_eq!(a.created_at, t0());
        assert_eq!(a.updated_at, t0());
        assert_eq!(a.updated_by, None);
        assert_eq!(a.description, None);

        let back = to_item(&a).unwrap();
        assert_no_null(&back);
        assert!(!back.contains_key("parentAssetId"));
        assert!(!back.contains_key("description"));
        assert!(!back.contains_key("updatedBy"));
        assert_eq!(back["location"], AttributeValue::M(HashMap::new()));
        assert_eq!(back["specs"], AttributeValue::M(HashMap::new()));
        assert_eq!(back["createdAt"], s("2026-03-01T00:00:00.000Z"));
        assert_eq!(back["customerId"], s(CUSTOMER));
        assert_eq!(from_item(&back).unwrap(), a);
    }

    #[test]
    fn a_root_with_null_parent_and_null_optionals_reads_as_root_and_writes_no_null() {
        let item = legacy(ROOT2, &format!("/{TENANT}/{CUSTOMER}/{ROOT2}"), 0)
            .attr("parentAssetId", AttributeValue::Null(true))
            .attr("description", AttributeValue::Null(true))
            .attr("updatedBy", AttributeValue::Null(true))
            .attr("displayName", AttributeValue::Null(true))
            .s("updatedAt", "2026-03-02T10:11:12.123456Z")
            .finish();
        let a = from_item(&item).unwrap();
        assert_eq!(a.parent_id, None);
        assert_eq!(a.description, None);
        assert_eq!(a.updated_by, None);
        assert_eq!(a.display_name, "Building A");
        assert_eq!(
            a.updated_at.to_rfc3339(),
            "2026-03-02T10:11:12.123456+00:00"
        );

        let back = to_item(&a).unwrap();
        assert_no_null(&back);
        assert!(!back.contains_key("parentAssetId"));
        assert_eq!(back["updatedAt"], s("2026-03-02T10:11:12.123Z"));

        // The overwrite of a root removes whatever parent attribute is stored.
        let w = overwrite(&a, Expect::Version(1)).unwrap();
        assert!(w.expression.contains(" REMOVE "));
        assert!(w.names.values().any(|v| v == "parentAssetId"));
        assert!(
            w.values
                .values()
                .all(|v| !matches!(v, AttributeValue::Null(_)))
        );
    }

    #[test]
    fn a_child_with_location_and_specs_round_trips() {
        let coordinates = AttributeValue::M(HashMap::from([
            ("lat".to_owned(), n("-22.9")),
            ("lng".to_owned(), n("-47.06")),
        ]));
        let item = legacy(CHILD, &format!("/{TENANT}/{CUSTOMER}/{ROOT}/{CHILD}"), 1)
            .s("parentAssetId", ROOT)
            .s("type", "FLOOR")
            .s("description", "first floor")
            .attr(
                "location",
                AttributeValue::M(HashMap::from([
                    ("city".to_owned(), s("Campinas")),
                    ("coordinates".to_owned(), coordinates),
                ])),
            )
            .attr(
                "specs",
                AttributeValue::M(HashMap::from([
                    ("area".to_owned(), n("120")),
                    ("installationDate".to_owned(), s("2026-03-01T00:00:00Z")),
                ])),
            )
            .attr("tags", AttributeValue::L(vec![s("hvac")]))
            .s("updatedBy", "user-1")
            .n("version", 3)
            .finish();
        let a = from_item(&item).unwrap();
        assert_eq!(a.parent_id.map(|p| p.to_string()).as_deref(), Some(ROOT));
        assert_eq!(a.depth, 1);
        assert_eq!(a.location.city.as_deref(), Some("Campinas"));
        assert_eq!(a.location.coordinates.map(|c| c.lat), Some(-22.9));
        assert_eq!(a.specs.area, Some(120.0));
        assert_eq!(a.specs.installation_date, Some(t0()));
        assert_eq!(a.tags, vec!["hvac".to_owned()]);
        assert_eq!(a.version, 3);

        let back = to_item(&a).unwrap();
        assert_no_null(&back);
        assert_eq!(back["parentAssetId"], s(ROOT));
        assert_eq!(back["description"], s("first floor"));
        assert_eq!(from_item(&back).unwrap(), a);
    }

    #[test]
    fn a_malformed_item_is_an_internal_error() {
        let item = legacy(ROOT, "/x", 0).s("type", "SPACESHIP").finish();
        assert!(matches!(from_item(&item), Err(StoreError::Internal(_))));
    }
}
