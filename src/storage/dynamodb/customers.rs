//! Customers in the legacy `gcdr-customers-<stage>` table (contract §1.1, §2.2).

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;

use super::dependents::{MOVE_READS, Mark, settled, touch_item};
use super::{Claim, DynamoStore, Expect, Item, ItemReader, ItemWriter, Overwrite, Query, s};
use super::{bad_cursor, check_version, first_free_code};
use crate::domain::customer::{
    Customer, CustomerFilter, CustomerPatch, CustomerType, NewCustomer, ParentFilter, customer_path,
};
use crate::domain::{Ctx, CustomerId, EntityStatus, Page, PageRequest, TenantId, generate_code};
use crate::storage::{CustomerStore, StoreError, StoreResult, Subtree, ancestor_ids};

/// Optional attributes an overwrite removes when the record has none.
const OPTIONAL: &[&str] = &[
    "parentCustomerId",
    "email",
    "phone",
    "address",
    "theme",
    "updatedBy",
];

const NOT_FOUND: StoreError = StoreError::NotFound { entity: "customer" };

/// The legacy item of a customer. A root has no `parentCustomerId` (never NULL: it is a
/// GSI key attribute).
pub(crate) fn to_item(c: &Customer) -> StoreResult<Item> {
    let parent = c.parent_id.map(|p| p.to_string());
    Ok(ItemWriter::new(c.tenant_id.as_str(), &c.id.to_string())
        .opt_s("parentCustomerId", parent.as_deref())
        .s("path", &c.path)
        .n("depth", c.depth)
        .s("name", &c.name)
        .s("displayName", &c.display_name)
        .s("code", &c.code)
        .s("type", c.kind.as_str())
        .opt_s("email", c.email.as_deref())
        .opt_s("phone", c.phone.as_deref())
        .opt_json("address", c.address.as_ref())?
        .json("settings", &c.settings)?
        .opt_json("theme", c.theme.as_ref())?
        .json("metadata", &c.metadata)?
        .s("status", c.status.as_str())
        .n("version", c.version)
        .ts("createdAt", c.created_at)
        .ts("updatedAt", c.updated_at)
        .s("createdBy", &c.created_by)
        .opt_s("updatedBy", c.updated_by.as_deref())
        .finish())
}

/// A customer from a legacy item, as legacy data really is: parent absent or NULL for a
/// root, optional attributes absent or NULL, `displayName` defaulting to `name`,
/// `settings` possibly a subset.
pub(crate) fn from_item(item: &Item) -> StoreResult<Customer> {
    let r = ItemReader::new("customers", item);
    let tenant = r.s("tenantId")?;
    let id = r.s("id")?;
    let name = r.s("name")?;
    let kind = r.s("type")?;
    let status = r.opt_s("status")?.unwrap_or_else(|| "ACTIVE".into());
    let created_at = r.ts("createdAt")?;
    Ok(Customer {
        tenant_id: TenantId::parse(&tenant).ok_or_else(|| r.bad("tenantId", "is not valid"))?,
        id: CustomerId::parse(&id).ok_or_else(|| r.bad("id", "is not a UUID"))?,
        parent_id: r
            .opt_s("parentCustomerId")?
            .filter(|p| !p.is_empty())
            .map(|p| {
                CustomerId::parse(&p).ok_or_else(|| r.bad("parentCustomerId", "is not a UUID"))
            })
            .transpose()?,
        path: r.s("path")?,
        depth: r.i32("depth")?,
        display_name: r.opt_s("displayName")?.unwrap_or_else(|| name.clone()),
        name,
        code: r.opt_s("code")?.unwrap_or_default(),
        kind: CustomerType::parse(&kind).ok_or_else(|| r.bad("type", "is not a customer type"))?,
        email: r.opt_s("email")?,
        phone: r.opt_s("phone")?,
        address: r.de("address")?,
        settings: r.de("settings")?.unwrap_or_default(),
        theme: r.de("theme")?,
        metadata: r.object("metadata")?,
        status: EntityStatus::parse(&status).ok_or_else(|| r.bad("status", "is not a status"))?,
        version: r.opt_i64("version")?.unwrap_or(1),
        created_at,
        updated_at: r.opt_ts("updatedAt")?.unwrap_or(created_at),
        created_by: r.opt_s("createdBy")?.unwrap_or_else(|| "system".into()),
        updated_by: r.opt_s("updatedBy")?,
    })
}

/// A customer read with its mark, for a move (dependents.rs).
fn marked(item: &Item) -> StoreResult<(Customer, Mark)> {
    Ok((from_item(item)?, Mark::of(item)))
}

/// The overwrite that stores `c` if the stored version is still `read_version`.
pub(crate) fn overwrite(c: &Customer, expect: Expect) -> StoreResult<Overwrite> {
    Ok(Overwrite::new(to_item(c)?, OPTIONAL, expect))
}

fn cycle() -> StoreError {
    StoreError::FailedPrecondition {
        reason: "HIERARCHY_CYCLE",
        message: "the new parent is the customer itself or one of its descendants".into(),
    }
}

fn code_taken() -> StoreError {
    StoreError::AlreadyExists {
        reason: "CUSTOMER_CODE_EXISTS",
        field: "customer.code",
    }
}

impl DynamoStore {
    async fn find_customer(&self, tenant: &TenantId, id: CustomerId) -> StoreResult<Customer> {
        let table = &self.tables.customers;
        match self
            .get_item(table, tenant.as_str(), &id.to_string())
            .await?
        {
            Some(item) => from_item(&item),
            None => Err(NOT_FOUND),
        }
    }

    /// Ids of the customers holding `code` (gsi-code is KEYS_ONLY).
    async fn customer_ids_with_code(
        &self,
        tenant: &TenantId,
        code: &str,
    ) -> StoreResult<Vec<String>> {
        let q = Query::index_eq(
            &self.tables.customers,
            "gsi-code",
            tenant.as_str(),
            "code",
            code,
        );
        let items = self.query(&q, usize::MAX).await?;
        items
            .iter()
            .map(|i| ItemReader::new("customers", i).s("id"))
            .collect()
    }

    /// Every strict descendant of `path`, in path order, at most `want`.
    async fn customer_descendant_items<T>(
        &self,
        tenant: &TenantId,
        path: &str,
        max_depth: Option<i32>,
        after: Option<&str>,
        want: usize,
        read: fn(&Item) -> StoreResult<T>,
    ) -> StoreResult<Vec<T>> {
        let prefix = format!("{path}/");
        let mut q = Query::index_prefix(
            &self.tables.customers,
            "gsi-path",
            tenant.as_str(),
            "path",
            &prefix,
        );
        if let Some(max) = max_depth {
            q.and_filter(
                "#depth <= :maxd",
                &[("#depth", "depth")],
                vec![(":maxd", super::n(max))],
            );
        }
        if let Some(after) = after {
            if !after.starts_with(&prefix) {
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
}

impl DynamoStore {
    /// The claim of `code` in `tenant` by customer `owner`.
    fn code_claim<'a>(&'a self, tenant: &'a TenantId, code: &'a str, owner: &'a str) -> Claim<'a> {
        let guarded: super::Guarded = ("customer-code", self.tables.customers.as_str(), &["code"]);
        Claim::new(&self.tables, tenant.as_str(), guarded, code, owner)
    }
}

#[async_trait]
impl CustomerStore for DynamoStore {
    async fn create(&self, ctx: &Ctx, new: NewCustomer) -> StoreResult<Customer> {
        self.timed("customers.create", async {
            // Codes are unique per tenant: checked through gsi-code (legacy items) and
            // claimed in the unique-keys table in the same transaction as the put, so
            // two concurrent creates of one code cannot both succeed. The parent is
            // checked (and marked, dependents.rs) in that transaction too.
            let sid = new.id.to_string();
            let mut lost: Vec<String> = Vec::new();
            for _ in 0..8 {
                let parent =
                    match new.parent_id {
                        Some(pid) => Some(self.find_customer(&ctx.tenant, pid).await.map_err(
                            |e| match e {
                                StoreError::NotFound { .. } => StoreError::NotFound {
                                    entity: "parent customer",
                                },
                                e => e,
                            },
                        )?),
                        None => None,
                    };
                let (path, depth) = customer_path(
                    &ctx.tenant,
                    parent.as_ref().map(|p| (p.path.as_str(), p.depth)),
                    new.id,
                );
                let code = match &new.code {
                    Some(code) => {
                        if self
                            .customer_ids_with_code(&ctx.tenant, code)
                            .await?
                            .iter()
                            .any(|other| *other != sid)
                        {
                            return Err(code_taken());
                        }
                        code.clone()
                    }
                    None => {
                        let base = generate_code(&new.name);
                        let q = Query::index_prefix(
                            &self.tables.customers,
                            "gsi-code",
                            ctx.tenant.as_str(),
                            "code",
                            &base,
                        );
                        let mut taken: Vec<String> = self
                            .query(&q, usize::MAX)
                            .await?
                            .iter()
                            .map(|i| ItemReader::new("customers", i).s("code"))
                            .collect::<StoreResult<_>>()?;
                        taken.extend(lost.iter().cloned());
                        first_free_code(&base, &taken)
                    }
                };
                let now = super::item::now();
                let customer = Customer {
                    tenant_id: ctx.tenant.clone(),
                    id: new.id,
                    parent_id: new.parent_id,
                    path,
                    depth,
                    name: new.name.clone(),
                    display_name: new.display_name.clone(),
                    code: code.clone(),
                    kind: new.kind,
                    email: new.email.clone(),
                    phone: new.phone.clone(),
                    address: new.address.clone(),
                    settings: new.settings.clone(),
                    theme: None,
                    metadata: new.metadata.clone(),
                    status: EntityStatus::Active,
                    version: 1,
                    created_at: now,
                    updated_at: now,
                    created_by: ctx.actor.as_str().to_owned(),
                    updated_by: None,
                };
                let claim = self.code_claim(&ctx.tenant, &code, &sid);
                let put = super::assets::put_new_item(&self.tables.customers, to_item(&customer)?)?;
                let mut items = vec![claim.take()?, put];
                if let Some(p) = &parent {
                    items.push(parent_touch(&self.tables.customers, p)?);
                }
                let Some(codes) = self.transact(items).await? else {
                    return Ok(customer);
                };
                let failed = |i: usize| codes.get(i).is_some_and(|c| c == "ConditionalCheckFailed");
                if failed(1) {
                    return Err(StoreError::AlreadyExists {
                        reason: "CUSTOMER_EXISTS",
                        field: "customer.id",
                    });
                }
                // The parent moved or went away: read it again.
                if failed(2) {
                    continue;
                }
                // Claimed by another customer: taken, unless that claim was stale.
                if !self.claim_taken(&claim).await? {
                    continue;
                }
                if new.code.is_some() {
                    return Err(code_taken());
                }
                lost.push(code);
            }
            Err(StoreError::Unavailable(
                "could not claim a customer code; retry".into(),
            ))
        })
        .await
    }

    async fn get(&self, tenant: &TenantId, id: CustomerId) -> StoreResult<Customer> {
        self.timed("customers.get", self.find_customer(tenant, id))
            .await
    }

    async fn get_by_code(&self, tenant: &TenantId, code: &str) -> StoreResult<Customer> {
        self.timed("customers.get_by_code", async {
            let ids = self.customer_ids_with_code(tenant, code).await?;
            for id in ids {
                let Some(id) = CustomerId::parse(&id) else {
                    continue;
                };
                match self.find_customer(tenant, id).await {
                    Err(StoreError::NotFound { .. }) => continue,
                    other => return other,
                }
            }
            Err(NOT_FOUND)
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
            // Read, apply, write conditional on the version read; a concurrent write in
            // between is retried when the caller did not pin a version.
            for _ in 0..5 {
                let mut customer = self.find_customer(&ctx.tenant, id).await?;
                check_version(expected, customer.version)?;
                let read_version = customer.version;
                let old_code = customer.code.clone();
                patch
                    .clone()
                    .apply(&mut customer, &ctx.actor, super::item::now());
                let w = overwrite(&customer, Expect::Version(read_version))?;
                if customer.code == old_code {
                    if self.overwrite(&self.tables.customers, w).await? {
                        return Ok(customer);
                    }
                    continue;
                }
                // A new code: checked, claimed, and the old one released, with the write.
                let sid = id.to_string();
                if self
                    .customer_ids_with_code(&ctx.tenant, &customer.code)
                    .await?
                    .iter()
                    .any(|other| *other != sid)
                {
                    return Err(code_taken());
                }
                let claim = self.code_claim(&ctx.tenant, &customer.code, &sid);
                let old = self.code_claim(&ctx.tenant, &old_code, &sid);
                let mut items = vec![claim.take()?, w.transact_item(&self.tables.customers)?];
                items.extend(self.releases(&old).await?);
                let Some(codes) = self.transact(items).await? else {
                    return Ok(customer);
                };
                if codes.first().is_some_and(|c| c == "ConditionalCheckFailed")
                    && self.claim_taken(&claim).await?
                {
                    return Err(code_taken());
                }
            }
            Err(StoreError::Unavailable(
                "the customer keeps changing; retry".into(),
            ))
        })
        .await
    }

    async fn delete(
        &self,
        tenant: &TenantId,
        id: CustomerId,
        expected: Option<i64>,
    ) -> StoreResult<()> {
        self.timed("customers.delete", async {
            // Refused while it has child customers or assets, enforced by the mark a
            // child or asset write leaves on it (dependents.rs).
            let t = tenant.as_str();
            let sid = id.to_string();
            for _ in 0..5 {
                let item = self.get_item(&self.tables.customers, t, &sid).await?;
                let item = item.ok_or(NOT_FOUND)?;
                let (customer, mark) = (from_item(&item)?, Mark::of(&item));
                check_version(expected, customer.version)?;
                mark.settle(self.index_settle).await;
                if self
                    .exists_in_index(
                        &self.tables.customers,
                        "gsi-parent",
                        t,
                        "parentCustomerId",
                        &sid,
                    )
                    .await?
                {
                    return Err(StoreError::FailedPrecondition {
                        reason: "HAS_CHILDREN",
                        message: "the customer has child customers; move or delete them first"
                            .into(),
                    });
                }
                if self
                    .exists_in_index(&self.tables.assets, "gsi-customer", t, "customerId", &sid)
                    .await?
                {
                    return Err(StoreError::FailedPrecondition {
                        reason: "HAS_ASSETS",
                        message: "the customer has assets; move or delete them first".into(),
                    });
                }
                // The delete and the release of its code claim, together.
                let mut items =
                    vec![mark.delete_item(&self.tables.customers, t, &sid, customer.version)?];
                let old = self.code_claim(tenant, &customer.code, &sid);
                items.extend(self.releases(&old).await?);
                if self.transact(items).await?.is_none() {
                    return Ok(());
                }
            }
            Err(StoreError::Unavailable(
                "the customer keeps changing; retry".into(),
            ))
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
            let table = &self.tables.customers;
            let t = tenant.as_str();
            let mut q = match filter.parent {
                ParentFilter::ChildrenOf(p) => {
                    Query::index_eq(table, "gsi-parent", t, "parentCustomerId", &p.to_string())
                }
                _ => Query::tenant(table, t),
            };
            q.filter_eq("type", filter.kind.map(CustomerType::as_str));
            q.filter_eq("status", filter.status.map(EntityStatus::as_str));
            if filter.parent == ParentFilter::RootsOnly {
                q.and_filter(
                    "attribute_not_exists(#p) OR attribute_type(#p, :null)",
                    &[("#p", "parentCustomerId")],
                    vec![(":null", s("NULL"))],
                );
            }
            if let Some(after) = &page.after {
                CustomerId::parse(after).ok_or_else(bad_cursor)?;
            }
            let rows = match filter.parent {
                // The index orders children by parent only: read them all (one
                // parent's children) and page in id order like every other listing.
                ParentFilter::ChildrenOf(_) => {
                    let mut all: Vec<Customer> = self
                        .query(&q, usize::MAX)
                        .await?
                        .iter()
                        .map(from_item)
                        .collect::<StoreResult<_>>()?;
                    all.sort_by_key(|c| c.id);
                    if let Some(after) = page.after.as_deref().and_then(CustomerId::parse) {
                        all.retain(|c| c.id > after);
                    }
                    all.truncate(page.size + 1);
                    all
                }
                _ => {
                    if let Some(after) = &page.after {
                        q.start = Some(super::key(t, after));
                    }
                    self.query(&q, page.size + 1)
                        .await?
                        .iter()
                        .map(from_item)
                        .collect::<StoreResult<_>>()?
                }
            };
            Ok(Page::from_overfetch(rows, page.size, |c| c.id.to_string()))
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
            let top = self.find_customer(tenant, id).await?;
            let max_abs = max_depth.map(|m| top.depth.saturating_add(m));
            let rows = self
                .customer_descendant_items(
                    tenant,
                    &top.path,
                    max_abs,
                    page.after.as_deref(),
                    page.size + 1,
                    from_item,
                )
                .await?;
            Ok(Page::from_overfetch(rows, page.size, |c| c.path.clone()))
        })
        .await
    }

    async fn ancestors(&self, tenant: &TenantId, id: CustomerId) -> StoreResult<Vec<Customer>> {
        self.timed("customers.ancestors", async {
            let node = self.find_customer(tenant, id).await?;
            let reads = ancestor_ids(&node.path, 1)
                .into_iter()
                .map(|a| self.find_customer(tenant, CustomerId(a)));
            let mut found = Vec::new();
            for r in futures::future::join_all(reads).await {
                match r {
                    Ok(c) => found.push(c),
                    // A stale legacy path may name a deleted ancestor: skip it.
                    Err(StoreError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            found.sort_by_key(|c| c.depth);
            Ok(found)
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
            let top = self.find_customer(tenant, id).await?;
            let max_abs = top.depth.saturating_add(max_depth);
            let mut rows = self
                .customer_descendant_items(tenant, &top.path, Some(max_abs), None, limit, from_item)
                .await?;
            let truncated = rows.len() >= limit;
            rows.truncate(limit.saturating_sub(1));
            let mut nodes = vec![top];
            nodes.extend(rows);
            Ok(Subtree { nodes, truncated })
        })
        .await
    }

    /// A move on DynamoDB is not one transaction: the descendants are rewritten first,
    /// in path order and in TransactWriteItems of at most 100 (each conditional on the
    /// version read and each with a check that the new parent's path has not changed,
    /// so no cycle can form), the node itself in the last. A subtree of up to 98
    /// descendants therefore moves atomically; a larger one that fails part-way
    /// (PARTIAL_MOVE) has some descendants under the new path while the node is still
    /// in place, and retrying the same move finishes it.
    async fn move_to(
        &self,
        ctx: &Ctx,
        id: CustomerId,
        new_parent: Option<CustomerId>,
        expected: Option<i64>,
    ) -> StoreResult<Customer> {
        self.timed("customers.move", async {
            let table = &self.tables.customers;
            let (t, sid) = (ctx.tenant.as_str(), id.to_string());
            for attempt in 0..MOVE_READS {
                let item = self.get_item(table, t, &sid).await?.ok_or(NOT_FOUND)?;
                let (mut node, node_mark) = (from_item(&item)?, Mark::of(&item));
                check_version(expected, node.version)?;
                let parent = match new_parent {
                    Some(pid) if pid == id => return Err(cycle()),
                    Some(pid) => {
                        let p =
                            self.find_customer(&ctx.tenant, pid)
                                .await
                                .map_err(|e| match e {
                                    StoreError::NotFound { .. } => StoreError::NotFound {
                                        entity: "new parent customer",
                                    },
                                    e => e,
                                })?;
                        if p.path.starts_with(&format!("{}/", node.path)) {
                            return Err(cycle());
                        }
                        Some(p)
                    }
                    None => None,
                };
                let (new_path, new_depth) = customer_path(
                    &ctx.tenant,
                    parent.as_ref().map(|p| (p.path.as_str(), p.depth)),
                    id,
                );
                let now = super::item::now();
                let descendants = self
                    .customer_descendant_items(
                        &ctx.tenant,
                        &node.path,
                        None,
                        None,
                        usize::MAX,
                        marked,
                    )
                    .await?;
                // A child added to the subtree just before may not show in gsi-path yet:
                // wait for it and read again (dependents.rs). One added later changes
                // its parent's mark, which every write below is conditioned on.
                let marks = std::iter::once(&node_mark).chain(descendants.iter().map(|d| &d.1));
                if !settled(attempt, self.index_settle, marks).await? {
                    continue;
                }
                let delta = new_depth - node.depth;
                let mut writes = Vec::with_capacity(descendants.len() + 2);
                for (mut d, mark) in descendants {
                    let read_version = d.version;
                    d.path = format!("{new_path}{}", &d.path[node.path.len()..]);
                    d.depth += delta;
                    d.version += 1;
                    d.updated_at = now;
                    d.updated_by = Some(ctx.actor.as_str().to_owned());
                    let w = mark.guard(overwrite(&d, Expect::Version(read_version))?);
                    writes.push(w.transact_item(table)?);
                }
                let read_version = node.version;
                node.parent_id = new_parent;
                node.path = new_path;
                node.depth = new_depth;
                node.version += 1;
                node.updated_at = now;
                node.updated_by = Some(ctx.actor.as_str().to_owned());
                // The node goes last, in the final chunk; the parent check (and mark)
                // in every chunk.
                let w = node_mark.guard(overwrite(&node, Expect::Version(read_version))?);
                writes.push(w.transact_item(table)?);
                let check = parent
                    .as_ref()
                    .map(|p| parent_touch(table, p))
                    .transpose()?;
                self.transact_chunks(writes, check).await?;
                return Ok(node);
            }
            Err(super::dependents::still_gaining())
        })
        .await
    }
}

/// A transaction item that holds only if parent `p` still exists with the path that
/// was read, marking it as having gained a dependent.
fn parent_touch(
    table: &str,
    p: &Customer,
) -> StoreResult<aws_sdk_dynamodb::types::TransactWriteItem> {
    touch_item(
        table,
        p.tenant_id.as_str(),
        &p.id.to_string(),
        &[("path", AttributeValue::S(p.path.clone()))],
    )
}
