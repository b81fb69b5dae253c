//! Policies, roles and role assignments in the legacy `gcdr-policies-<stage>`,
//! `gcdr-roles-<stage>` and `gcdr-role-assignments-<stage>` tables (contract §1.5-1.7,
//! §3.5-3.7), and what authorization reads from them (§4, with the real hierarchy).
//!
//! Legacy has no relation tables: a role lists its policies by key (`policies`, L of S)
//! and an assignment names its role by key (`roleKey`). A role or policy key is unique
//! per tenant, and so is the active assignment of a (user, role, scope): checked
//! through the indexes (legacy items) and claimed in the unique-keys table in the same
//! transaction as the put, released with the delete or revoke (an assignment's claim
//! also lapses with its expiry), so two concurrent writers cannot both succeed. The
//! "in use" rules (a policy named by a role, a role with an assignment in force) are
//! enforced with the parent's mark (dependents.rs). Reads tolerate what legacy data
//! leaves: of several items sharing a key the oldest is used.
//!
//! Lookups by key or user go through GSIs, which lag writes. Where that would matter,
//! the base table is asked too: an assignment that looks in force is re-read before
//! it refuses an assign, blocks a role delete or yields a grant, so a revoke takes
//! effect at once. A key lookup (role or policy just created) may still miss briefly.
//!
//! Deviations from legacy, to behave as the PostgreSQL store does: expiry is compared
//! as time, an assignment past its expiry is not active whatever its status, a revoke
//! records `revokedBy`/`revokedAt` (extra attributes legacy readers ignore) besides
//! `updatedBy`, and deleting a role deletes its (inactive) assignment history.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use aws_sdk_dynamodb::types::TransactWriteItem;
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::assets::put_new_item;
use super::dependents::{Mark, touch_item};
use super::{DynamoStore, Expect, Item, ItemReader, ItemWriter, Overwrite, Query, s};
use super::{bad_cursor, check_version};
use crate::domain::access::requests::{
    AccessFilter, AssignmentFilter, NewAssignment, NewPolicy, NewRole, PolicyPatch, RolePatch,
};
use crate::domain::access::{
    AssignmentStatus, Grant, Policy, PolicyConditions, PolicyRules, RiskLevel, Role, RoleAssignment,
};
use crate::domain::customer::set;
use crate::domain::{Ctx, Page, PageRequest, TenantId};
use crate::storage::{AssignmentStore, PolicyStore, RoleStore, StoreError, StoreResult};

/// Optional policy attributes an overwrite removes when the record has none.
const POLICY_OPTIONAL: &[&str] = &["conditions", "updatedBy"];
/// Optional role attributes an overwrite removes when the record has none.
const ROLE_OPTIONAL: &[&str] = &["updatedBy"];
/// Optional assignment attributes an overwrite removes when the record has none.
/// `updatedBy` is not among them: the domain has no such field, so a legacy value is
/// kept (it is written from `revoked_by` when there is one).
const ASSIGNMENT_OPTIONAL: &[&str] = &["expiresAt", "reason", "revokedBy", "revokedAt"];

const POLICY_NOT_FOUND: StoreError = StoreError::NotFound { entity: "policy" };
const ROLE_NOT_FOUND: StoreError = StoreError::NotFound { entity: "role" };
const ASSIGNMENT_NOT_FOUND: StoreError = StoreError::NotFound {
    entity: "role assignment",
};

/// How often a read-check-write is retried when another writer got in between.
const ATTEMPTS: usize = 5;

// ---- items ----------------------------------------------------------------------

/// The legacy item of a policy; unset optionals are omitted (never NULL).
pub(crate) fn policy_to_item(p: &Policy) -> StoreResult<Item> {
    Ok(ItemWriter::new(p.tenant_id.as_str(), &p.id.to_string())
        .s("key", &p.key)
        .s("displayName", &p.display_name)
        .s("description", &p.description)
        .list("allow", &p.allow)
        .list("deny", &p.deny)
        .opt_json("conditions", p.conditions.as_ref())?
        .s("riskLevel", p.risk_level.as_str())
        .b("isSystem", p.is_system)
        .n("version", p.version)
        .ts("createdAt", p.created_at)
        .ts("updatedAt", p.updated_at)
        .s("createdBy", &p.created_by)
        .opt_s("updatedBy", p.updated_by.as_deref())
        .finish())
}

/// A policy from a legacy item: `description`, `allow`, `deny`, `riskLevel`,
/// `isSystem` and `conditions` may be absent or NULL (as may NULLs inside
/// `conditions`), `displayName` defaults to the key.
pub(crate) fn policy_from_item(item: &Item) -> StoreResult<Policy> {
    let r = ItemReader::new("policies", item);
    let key = r.s("key")?;
    let created_at = r.ts("createdAt")?;
    Ok(Policy {
        tenant_id: tenant(&r)?,
        id: uuid(&r, "id")?,
        display_name: r.opt_s("displayName")?.unwrap_or_else(|| key.clone()),
        key,
        description: r.opt_s("description")?.unwrap_or_default(),
        allow: r.list("allow")?,
        deny: r.list("deny")?,
        conditions: conditions(&r)?,
        risk_level: risk_level(&r)?,
        is_system: r.bool_or("isSystem", false)?,
        version: r.opt_i64("version")?.unwrap_or(1),
        created_at,
        updated_at: r.opt_ts("updatedAt")?.unwrap_or(created_at),
        created_by: r.opt_s("createdBy")?.unwrap_or_else(|| "system".into()),
        updated_by: r.opt_s("updatedBy")?,
    })
}

/// The overwrite that stores `p` under the condition `expect`.
pub(crate) fn policy_overwrite(p: &Policy, expect: Expect) -> StoreResult<Overwrite> {
    Ok(Overwrite::new(policy_to_item(p)?, POLICY_OPTIONAL, expect))
}

/// The legacy item of a role: its policies as the list of their keys, in order.
pub(crate) fn role_to_item(r: &Role) -> StoreResult<Item> {
    Ok(ItemWriter::new(r.tenant_id.as_str(), &r.id.to_string())
        .s("key", &r.key)
        .s("displayName", &r.display_name)
        .s("description", &r.description)
        .list("policies", &r.policy_keys)
        .list("tags", &r.tags)
        .s("riskLevel", r.risk_level.as_str())
        .b("isSystem", r.is_system)
        .n("version", r.version)
        .ts("createdAt", r.created_at)
        .ts("updatedAt", r.updated_at)
        .s("createdBy", &r.created_by)
        .opt_s("updatedBy", r.updated_by.as_deref())
        .finish())
}

/// A role from a legacy item, lenient as `policy_from_item`; `policies` and `tags`
/// absent or NULL are empty.
pub(crate) fn role_from_item(item: &Item) -> StoreResult<Role> {
    let r = ItemReader::new("roles", item);
    let key = r.s("key")?;
    let created_at = r.ts("createdAt")?;
    Ok(Role {
        tenant_id: tenant(&r)?,
        id: uuid(&r, "id")?,
        display_name: r.opt_s("displayName")?.unwrap_or_else(|| key.clone()),
        key,
        description: r.opt_s("description")?.unwrap_or_default(),
        policy_keys: r.list("policies")?,
        tags: r.list("tags")?,
        risk_level: risk_level(&r)?,
        is_system: r.bool_or("isSystem", false)?,
        version: r.opt_i64("version")?.unwrap_or(1),
        created_at,
        updated_at: r.opt_ts("updatedAt")?.unwrap_or(created_at),
        created_by: r.opt_s("createdBy")?.unwrap_or_else(|| "system".into()),
        updated_by: r.opt_s("updatedBy")?,
    })
}

/// The overwrite that stores `r` under the condition `expect`.
pub(crate) fn role_overwrite(r: &Role, expect: Expect) -> StoreResult<Overwrite> {
    Ok(Overwrite::new(role_to_item(r)?, ROLE_OPTIONAL, expect))
}

/// The legacy item of an assignment. The domain has no audit columns of its own, so
/// they are derived as legacy wrote them: `createdAt` = `grantedAt`, `createdBy` =
/// `grantedBy`, `updatedBy` = the revoker, `updatedAt` = the last change the record
/// shows (revoke, else expiry of an expired one, else the grant).
pub(crate) fn assignment_to_item(a: &RoleAssignment) -> StoreResult<Item> {
    let changed = match (a.revoked_at, a.status, a.expires_at) {
        (Some(t), _, _) => t,
        (None, AssignmentStatus::Expired, Some(t)) => t,
        _ => a.granted_at,
    };
    Ok(assignment_item(a, changed.max(a.granted_at)))
}

/// `assignment_to_item` with an explicit `updatedAt`.
fn assignment_item(a: &RoleAssignment, updated_at: DateTime<Utc>) -> Item {
    ItemWriter::new(a.tenant_id.as_str(), &a.id.to_string())
        .s("userId", &a.user_id)
        .s("roleKey", &a.role_key)
        .s("scope", &a.scope)
        .s("status", a.status.as_str())
        .opt_ts("expiresAt", a.expires_at)
        .s("grantedBy", &a.granted_by)
        .ts("grantedAt", a.granted_at)
        .opt_s("reason", a.reason.as_deref())
        .opt_s("revokedBy", a.revoked_by.as_deref())
        .opt_ts("revokedAt", a.revoked_at)
        .n("version", a.version)
        .ts("createdAt", a.granted_at)
        .ts("updatedAt", updated_at)
        .s("createdBy", &a.granted_by)
        .opt_s("updatedBy", a.revoked_by.as_deref())
        .finish()
}

/// An assignment from a legacy item: `status` in any case (absent: not active),
/// `expiresAt` absent, NULL or empty meaning "never", at any sub-second precision. A
/// legacy revoke recorded only `updatedBy`/`updatedAt`, so an inactive item without
/// `revokedBy`/`revokedAt` takes those as its revoke.
pub(crate) fn assignment_from_item(item: &Item) -> StoreResult<RoleAssignment> {
    let r = ItemReader::new("role-assignments", item);
    let status = match r.opt_s("status")? {
        // Fail closed: a record without a status grants nothing.
        None => AssignmentStatus::Inactive,
        Some(s) => parse_status(&s).ok_or_else(|| r.bad("status", "is not a status"))?,
    };
    let created_at = opt_ts_nonempty(&r, "createdAt")?;
    let granted_at = match opt_ts_nonempty(&r, "grantedAt")?.or(created_at) {
        Some(t) => t,
        None => return Err(r.bad("grantedAt", "is missing")),
    };
    let granted_by = match r.opt_s("grantedBy")? {
        Some(g) => g,
        None => r.opt_s("createdBy")?.unwrap_or_else(|| "system".into()),
    };
    let mut revoked_by = r.opt_s("revokedBy")?;
    let mut revoked_at = opt_ts_nonempty(&r, "revokedAt")?;
    if status == AssignmentStatus::Inactive && revoked_by.is_none() && revoked_at.is_none() {
        revoked_by = r.opt_s("updatedBy")?;
        revoked_at = revoked_by
            .as_ref()
            .map(|_| opt_ts_nonempty(&r, "updatedAt"))
            .transpose()?
            .flatten();
    }
    Ok(RoleAssignment {
        tenant_id: tenant(&r)?,
        id: uuid(&r, "id")?,
        user_id: r.s("userId")?,
        role_key: r.s("roleKey")?,
        scope: r.s("scope")?,
        status,
        expires_at: opt_ts_nonempty(&r, "expiresAt")?,
        granted_by,
        granted_at,
        reason: r.opt_s("reason")?,
        revoked_by,
        revoked_at,
        version: r.opt_i64("version")?.unwrap_or(1),
    })
}

/// The overwrite that stores `a` under the condition `expect`.
pub(crate) fn assignment_overwrite(a: &RoleAssignment, expect: Expect) -> StoreResult<Overwrite> {
    Ok(Overwrite::new(
        assignment_to_item(a)?,
        ASSIGNMENT_OPTIONAL,
        expect,
    ))
}

fn tenant(r: &ItemReader<'_>) -> StoreResult<TenantId> {
    TenantId::parse(&r.s("tenantId")?).ok_or_else(|| r.bad("tenantId", "is not valid"))
}

fn uuid(r: &ItemReader<'_>, k: &str) -> StoreResult<Uuid> {
    Uuid::parse_str(&r.s(k)?).map_err(|_| r.bad(k, "is not a UUID"))
}

/// `riskLevel` in any case; absent or NULL is the legacy default `low`.
fn risk_level(r: &ItemReader<'_>) -> StoreResult<RiskLevel> {
    match r.opt_s("riskLevel")? {
        None => Ok(RiskLevel::Low),
        Some(s) => RiskLevel::parse(&s.to_ascii_lowercase())
            .ok_or_else(|| r.bad("riskLevel", "is not a risk level")),
    }
}

/// `conditions`, with NULL members read as absent.
fn conditions(r: &ItemReader<'_>) -> StoreResult<Option<PolicyConditions>> {
    let Some(mut v) = r.json("conditions")? else {
        return Ok(None);
    };
    if let Value::Object(m) = &mut v {
        m.retain(|_, v| !v.is_null());
    }
    serde_json::from_value(v)
        .map(Some)
        .map_err(|e| r.bad("conditions", &format!("has an unexpected shape: {e}")))
}

/// A legacy status in any case; `revoked` (the legacy OpenAPI's word) is inactive.
fn parse_status(s: &str) -> Option<AssignmentStatus> {
    match s.to_ascii_lowercase().as_str() {
        "revoked" => Some(AssignmentStatus::Inactive),
        lower => AssignmentStatus::parse(lower),
    }
}

/// An optional timestamp where an empty string means absent (legacy `isExpired`).
fn opt_ts_nonempty(r: &ItemReader<'_>, k: &str) -> StoreResult<Option<DateTime<Utc>>> {
    match r.opt_s(k)? {
        Some(v) if v.trim().is_empty() => Ok(None),
        _ => r.opt_ts(k),
    }
}

// ---- pure rules -----------------------------------------------------------------

fn system_policy() -> StoreError {
    StoreError::FailedPrecondition {
        reason: "SYSTEM_POLICY",
        message: "system policies cannot be changed".into(),
    }
}

fn system_role() -> StoreError {
    StoreError::FailedPrecondition {
        reason: "SYSTEM_ROLE",
        message: "system roles cannot be changed".into(),
    }
}

fn keeps_changing(what: &str) -> StoreError {
    StoreError::Unavailable(format!("the {what} keeps changing; retry"))
}

/// An id that is new by construction but already stored (as PostgreSQL reports it).
fn policy_key_taken() -> StoreError {
    StoreError::AlreadyExists {
        reason: "POLICY_KEY_EXISTS",
        field: "policy.key",
    }
}

fn role_key_taken() -> StoreError {
    StoreError::AlreadyExists {
        reason: "ROLE_KEY_EXISTS",
        field: "role.key",
    }
}

impl DynamoStore {
    /// The claim of a role or policy `key` (held in `key` of the `records` table) in
    /// `tenant` by record `owner`.
    fn key_claim<'a>(
        &'a self,
        records: &'a str,
        what: &'static str,
        tenant: &'a TenantId,
        key: &'a str,
        owner: &'a str,
    ) -> super::Claim<'a> {
        super::Claim::new(
            &self.tables,
            tenant.as_str(),
            (what, records, &["key"]),
            key,
            owner,
        )
    }

    /// Puts a new item together with the claim of its key and the marks on what it
    /// depends on, `touches` (retried when the claim in the way was stale); `taken` is
    /// the error when it is not. `Ok(false)`: a touched item changed or went away.
    async fn put_claimed(
        &self,
        table: &str,
        item: Item,
        claim: &super::Claim<'_>,
        taken: fn() -> StoreError,
        touches: Vec<TransactWriteItem>,
    ) -> StoreResult<bool> {
        let mut items = vec![put_new_item(table, item)?, claim.take()?];
        items.extend(touches);
        for _ in 0..ATTEMPTS {
            match self.transact_once(items.clone()).await? {
                None => return Ok(true),
                Some(0) => return Err(id_taken(table)),
                Some(1) if self.claim_taken(claim).await? => return Err(taken()),
                // A stale claim, dropped: again.
                Some(1) => {}
                // A role or policy just deleted may still show in gsi-key, where the
                // mark was found: let the index catch up before the caller reads again.
                Some(_) => {
                    tokio::time::sleep(INDEX_CATCH_UP).await;
                    return Ok(false);
                }
            }
        }
        Err(keeps_changing("key claim"))
    }
}

/// The pause before retrying a write whose mark on a role or policy failed: long
/// enough, over the attempts, for gsi-key to stop showing one just deleted.
const INDEX_CATCH_UP: std::time::Duration = std::time::Duration::from_millis(250);

fn assignment_exists() -> StoreError {
    StoreError::AlreadyExists {
        reason: "ASSIGNMENT_EXISTS",
        field: "role_assignment",
    }
}

/// The value of an active assignment's claim: one per role, scope and user (role keys
/// and scopes cannot contain whitespace, so the user, which can, goes last).
fn assignment_value(a: &RoleAssignment) -> String {
    super::Claim::value(&[&a.role_key, &a.scope, &a.user_id])
}

/// Whether an assignment item is in force now (so still holds its claim).
fn assignment_in_force(item: &Item) -> bool {
    assignment_from_item(item).is_ok_and(|a| a.in_force(super::item::now()))
}

impl DynamoStore {
    /// The claim of `value` ([`assignment_value`]) in tenant `t` by assignment
    /// `owner`, held while that assignment is in force.
    fn assignment_claim<'a>(
        &'a self,
        t: &'a TenantId,
        value: &'a str,
        owner: &'a str,
    ) -> super::Claim<'a> {
        let attrs: &[&str] = &["roleKey", "scope", "userId"];
        let records = self.tables.role_assignments.as_str();
        super::Claim::new(
            &self.tables,
            t.as_str(),
            ("active-assignment", records, attrs),
            value,
            owner,
        )
        .while_live(assignment_in_force)
    }
}

fn id_taken(table: &str) -> StoreError {
    StoreError::Internal(format!("unique violation on {table} id").into())
}

fn matches_access(f: &AccessFilter, risk: RiskLevel, system: bool) -> bool {
    f.risk_level.is_none_or(|r| r == risk) && f.is_system.is_none_or(|s| s == system)
}

/// Records sharing a key (a legacy race), oldest first (then by id).
fn oldest_first<T>(mut found: Vec<T>, order: impl Fn(&T) -> (DateTime<Utc>, Uuid)) -> Vec<T> {
    found.sort_by_key(|t| order(t));
    found
}

/// The grants of `assignments` (the user's, any order): those in force at `now`,
/// by grant time then id, each with its role's policies in role order. An assignment
/// whose role is missing is no grant; a missing policy is skipped.
fn assemble_grants(
    mut assignments: Vec<RoleAssignment>,
    roles: &HashMap<String, Role>,
    policies: &HashMap<String, PolicyRules>,
    now: DateTime<Utc>,
) -> Vec<Grant> {
    assignments.retain(|a| a.in_force(now));
    assignments.sort_by_key(|a| (a.granted_at, a.id));
    assignments
        .into_iter()
        .filter_map(|a| {
            let role = roles.get(&a.role_key)?;
            let policies = role
                .policy_keys
                .iter()
                .filter_map(|k| policies.get(k).cloned())
                .collect();
            Some(Grant {
                assignment: a,
                policies,
            })
        })
        .collect()
}

/// The ids in a path after `skip` leading segments, root first.
fn path_ids(path: &str, skip: usize) -> Vec<String> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .skip(skip)
        .map(str::to_owned)
        .collect()
}

/// The scope chain of `resource`: itself, then its asset chain and customer chain,
/// nearest first (both given root first, each including the resource's own node).
fn scope_chain(resource: &str, assets: &[String], customers: &[String]) -> Vec<String> {
    let mut chain = vec![resource.to_owned()];
    chain.extend(assets.iter().rev().map(|a| format!("asset:{a}")));
    chain.extend(customers.iter().rev().map(|c| format!("customer:{c}")));
    chain.dedup();
    chain
}

/// The exclusive start key that resumes a query after `item` (`range`: the index's
/// sort attribute, for a GSI query).
fn resume_after(item: &Item, range: Option<&str>) -> Item {
    ["tenantId", "id"]
        .into_iter()
        .chain(range)
        .filter_map(|k| item.get(k).map(|v| (k.to_owned(), v.clone())))
        .collect()
}

/// All of a tenant's items of a key-indexed table in key order (gsi-key), strictly
/// after `after` when given.
fn by_key_order(table: &str, tenant: &TenantId, after: Option<&str>) -> StoreResult<Query> {
    let mut q = Query::tenant(table, tenant.as_str());
    q.index = Some("gsi-key");
    if let Some(after) = after {
        if after.is_empty() {
            return Err(bad_cursor());
        }
        q.key_condition = "tenantId = :t AND #k > :k".into();
        q.names.insert("#k".into(), "key".into());
        q.values.insert(":k".into(), s(after));
    }
    Ok(q)
}

// ---- store helpers --------------------------------------------------------------

impl DynamoStore {
    /// Reads `q` in its order until `want` parsed items pass `keep` or the range ends.
    /// Unlike a DynamoDB filter, `keep` judges the lenient domain value (any-case
    /// statuses, expiry as time).
    async fn read_matching<T>(
        &self,
        mut q: Query,
        range: Option<&str>,
        want: usize,
        parse: impl Fn(&Item) -> StoreResult<T>,
        keep: impl Fn(&T) -> bool,
    ) -> StoreResult<Vec<T>> {
        let mut out = Vec::new();
        let mut batch = want.max(1);
        loop {
            let items = self.query(&q, batch).await?;
            let exhausted = items.len() < batch;
            for item in &items {
                let t = parse(item)?;
                if keep(&t) {
                    out.push(t);
                }
            }
            match items.last() {
                Some(last) if !exhausted && out.len() < want => {
                    q.start = Some(resume_after(last, range));
                    batch = (batch * 2).clamp(want - out.len(), 1000.max(want - out.len()));
                }
                _ => break,
            }
        }
        out.truncate(want);
        Ok(out)
    }

    /// Every item of `table` (roles or policies) holding `key`, via gsi-key.
    async fn items_with_access_key(
        &self,
        table: &str,
        tenant: &TenantId,
        key: &str,
    ) -> StoreResult<Vec<Item>> {
        let q = Query::index_eq(table, "gsi-key", tenant.as_str(), "key", key);
        self.query(&q, usize::MAX).await
    }

    async fn find_policy(&self, tenant: &TenantId, id: Uuid) -> StoreResult<Policy> {
        let table = &self.tables.policies;
        match self
            .get_item(table, tenant.as_str(), &id.to_string())
            .await?
        {
            Some(item) => policy_from_item(&item),
            None => Err(POLICY_NOT_FOUND),
        }
    }

    async fn find_role(&self, tenant: &TenantId, id: Uuid) -> StoreResult<Role> {
        let table = &self.tables.roles;
        match self
            .get_item(table, tenant.as_str(), &id.to_string())
            .await?
        {
            Some(item) => role_from_item(&item),
            None => Err(ROLE_NOT_FOUND),
        }
    }

    async fn find_assignment(&self, tenant: &TenantId, id: Uuid) -> StoreResult<RoleAssignment> {
        let table = &self.tables.role_assignments;
        match self
            .get_item(table, tenant.as_str(), &id.to_string())
            .await?
        {
            Some(item) => assignment_from_item(&item),
            None => Err(ASSIGNMENT_NOT_FOUND),
        }
    }

    /// The role holding `key` as the index shows it (the oldest of duplicates).
    async fn indexed_role(&self, tenant: &TenantId, key: &str) -> StoreResult<Option<Role>> {
        let items = self
            .items_with_access_key(&self.tables.roles, tenant, key)
            .await?;
        let roles = items
            .iter()
            .map(role_from_item)
            .collect::<StoreResult<_>>()?;
        Ok(oldest_first(roles, |r: &Role| (r.created_at, r.id))
            .into_iter()
            .next())
    }

    /// The rules of the policy holding `key` as the index shows it.
    async fn indexed_policy(
        &self,
        tenant: &TenantId,
        key: &str,
    ) -> StoreResult<Option<PolicyRules>> {
        let items = self
            .items_with_access_key(&self.tables.policies, tenant, key)
            .await?;
        let policies = items
            .iter()
            .map(policy_from_item)
            .collect::<StoreResult<_>>()?;
        Ok(oldest_first(policies, |p: &Policy| (p.created_at, p.id))
            .into_iter()
            .next()
            .map(|p| PolicyRules {
                key: p.key,
                allow: p.allow,
                deny: p.deny,
            }))
    }

    /// The marks (dependents.rs) on every item of `table` (roles or policies) holding
    /// `key` (legacy may hold duplicates), each conditioned on still holding it, with
    /// the ids marked; none when no item holds it.
    async fn touch_key_holders(
        &self,
        (what, table): (&'static str, &str),
        tenant: &TenantId,
        key: &str,
    ) -> StoreResult<Vec<(String, TransactWriteItem)>> {
        let items = self.items_with_access_key(table, tenant, key).await?;
        items
            .iter()
            .map(|item| {
                let id = ItemReader::new(what, item).s("id")?;
                let touch = touch_item(table, tenant.as_str(), &id, &[("key", s(key))])?;
                Ok((id, touch))
            })
            .collect()
    }

    /// The marks (dependents.rs) that a role now names the policies of `keys`, one on
    /// each item holding one of them (legacy may hold duplicates); `InvalidArgument`
    /// naming every key without a policy (as PostgreSQL's check).
    async fn touch_policies(
        &self,
        tenant: &TenantId,
        keys: &[String],
    ) -> StoreResult<Vec<TransactWriteItem>> {
        let table = &self.tables.policies;
        let found = futures::future::join_all(
            keys.iter()
                .map(|k| self.touch_key_holders(("policies", table), tenant, k)),
        )
        .await;
        let (mut missing, mut touches, mut seen) = (Vec::new(), Vec::new(), HashSet::new());
        for (k, holders) in keys.iter().zip(found) {
            let holders = holders?;
            if holders.is_empty() {
                missing.push(k.as_str());
            }
            for (id, touch) in holders {
                if seen.insert(id) {
                    touches.push(touch);
                }
            }
        }
        // One TransactWriteItems carries the role, its key claim and these marks.
        if touches.len() > super::TRANSACTION_LIMIT - 2 {
            return Err(StoreError::InvalidArgument {
                field: "role.policy_keys",
                message: format!(
                    "on DynamoDB a role names at most {} policies",
                    super::TRANSACTION_LIMIT - 2
                ),
            });
        }
        if missing.is_empty() {
            return Ok(touches);
        }
        Err(StoreError::InvalidArgument {
            field: "role.policy_keys",
            message: format!("unknown policies: {}", missing.join(", ")),
        })
    }

    /// Every assignment of `user`, via gsi-user, optionally only of `role` and `scope`.
    async fn user_assignments(
        &self,
        tenant: &TenantId,
        user: &str,
        role: Option<&str>,
        scope: Option<&str>,
    ) -> StoreResult<Vec<RoleAssignment>> {
        let table = &self.tables.role_assignments;
        let mut q = Query::index_eq(table, "gsi-user", tenant.as_str(), "userId", user);
        q.filter_eq("roleKey", role);
        q.filter_eq("scope", scope);
        self.query(&q, usize::MAX)
            .await?
            .iter()
            .map(assignment_from_item)
            .collect()
    }

    /// Every assignment of the role `key`, via gsi-role.
    async fn role_assignment_items(&self, tenant: &TenantId, key: &str) -> StoreResult<Vec<Item>> {
        let table = &self.tables.role_assignments;
        let q = Query::index_eq(table, "gsi-role", tenant.as_str(), "roleKey", key);
        self.query(&q, usize::MAX).await
    }

    /// `found` (read through an index, which may lag a write) with each assignment that
    /// looks in force at `now` re-read from the base table: a revoke just made is seen,
    /// an assignment since deleted is dropped.
    async fn confirm_in_force(
        &self,
        tenant: &TenantId,
        found: Vec<RoleAssignment>,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<RoleAssignment>> {
        let reads = found.into_iter().map(|a| async move {
            if !a.in_force(now) {
                return Ok(Some(a));
            }
            match self.find_assignment(tenant, a.id).await {
                Ok(fresh) => Ok(Some(fresh)),
                Err(StoreError::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        });
        let mut out = Vec::new();
        for r in futures::future::join_all(reads).await {
            out.extend(r?);
        }
        Ok(out)
    }
}

// ---- policies -------------------------------------------------------------------

#[async_trait]
impl PolicyStore for DynamoStore {
    async fn create(&self, ctx: &Ctx, new: NewPolicy) -> StoreResult<Policy> {
        self.timed("policies.create", async {
            let table = &self.tables.policies;
            // Checked through gsi-key (legacy items have no claim), then claimed in the
            // same transaction as the put (module doc).
            if self
                .exists_in_index(table, "gsi-key", ctx.tenant.as_str(), "key", &new.key)
                .await?
            {
                return Err(policy_key_taken());
            }
            let now = super::item::now();
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
            let sid = policy.id.to_string();
            let claim = self.key_claim(table, "policy-key", &ctx.tenant, &policy.key, &sid);
            self.put_claimed(
                table,
                policy_to_item(&policy)?,
                &claim,
                policy_key_taken,
                vec![],
            )
            .await?;
            Ok(policy)
        })
        .await
    }

    async fn get(&self, tenant: &TenantId, id: Uuid) -> StoreResult<Policy> {
        self.timed("policies.get", self.find_policy(tenant, id))
            .await
    }

    async fn get_by_key(&self, tenant: &TenantId, key: &str) -> StoreResult<Policy> {
        self.timed("policies.get_by_key", async {
            let items = self
                .items_with_access_key(&self.tables.policies, tenant, key)
                .await?;
            let found = items
                .iter()
                .map(policy_from_item)
                .collect::<StoreResult<Vec<_>>>()?;
            // The index may lag: re-read the base item (as legacy did).
            for p in oldest_first(found, |p| (p.created_at, p.id)) {
                match self.find_policy(tenant, p.id).await {
                    Err(StoreError::NotFound { .. }) => continue,
                    other => return other,
                }
            }
            Err(POLICY_NOT_FOUND)
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
            for _ in 0..ATTEMPTS {
                let mut p = self.find_policy(&ctx.tenant, id).await?;
                if p.is_system {
                    return Err(system_policy());
                }
                check_version(expected, p.version)?;
                let read_version = p.version;
                let PolicyPatch {
                    display_name,
                    description,
                    allow,
                    deny,
                    conditions,
                    risk_level,
                } = patch.clone();
                set(&mut p.display_name, display_name);
                set(&mut p.description, description);
                set(&mut p.allow, allow);
                set(&mut p.deny, deny);
                set(&mut p.conditions, conditions);
                set(&mut p.risk_level, risk_level);
                p.version += 1;
                p.updated_at = super::item::now();
                p.updated_by = Some(ctx.actor.as_str().to_owned());
                let w = policy_overwrite(&p, Expect::Version(read_version))?;
                if self.overwrite(&self.tables.policies, w).await? {
                    return Ok(p);
                }
            }
            Err(keeps_changing("policy"))
        })
        .await
    }

    async fn delete(&self, tenant: &TenantId, id: Uuid, expected: Option<i64>) -> StoreResult<()> {
        self.timed("policies.delete", async {
            let table = &self.tables.policies;
            let sid = id.to_string();
            for _ in 0..ATTEMPTS {
                let item = self.get_item(table, tenant.as_str(), &sid).await?;
                let item = item.ok_or(POLICY_NOT_FOUND)?;
                let (p, mark) = (policy_from_item(&item)?, Mark::of(&item));
                if p.is_system {
                    return Err(system_policy());
                }
                check_version(expected, p.version)?;
                // Every role of the tenant, not legacy's first 1000, read strongly
                // consistent from the table. A role created or updated onto this key
                // after this read changes the policy's mark and cancels the delete.
                let mut q = Query::tenant(&self.tables.roles, tenant.as_str());
                q.and_filter(
                    "contains(#pol, :pk)",
                    &[("#pol", "policies")],
                    vec![(":pk", s(&p.key))],
                );
                let mut users = self
                    .query(&q, usize::MAX)
                    .await?
                    .iter()
                    .map(|i| ItemReader::new("roles", i).s("key"))
                    .collect::<StoreResult<Vec<_>>>()?;
                if !users.is_empty() {
                    users.sort();
                    return Err(StoreError::FailedPrecondition {
                        reason: "POLICY_IN_USE",
                        message: format!("the policy is used by roles: {}", users.join(", ")),
                    });
                }
                // The delete and the release of the key's claim, together.
                let mut items = vec![mark.delete_item(table, tenant.as_str(), &sid, p.version)?];
                let old = self.key_claim(table, "policy-key", tenant, &p.key, &sid);
                items.extend(self.releases(&old).await?);
                if self.transact(items).await?.is_none() {
                    return Ok(());
                }
            }
            Err(keeps_changing("policy"))
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
            let q = by_key_order(&self.tables.policies, tenant, page.after.as_deref())?;
            let rows = self
                .read_matching(q, Some("key"), page.size + 1, policy_from_item, |p| {
                    matches_access(filter, p.risk_level, p.is_system)
                })
                .await?;
            Ok(Page::from_overfetch(rows, page.size, |p| p.key.clone()))
        })
        .await
    }
}

// ---- roles ----------------------------------------------------------------------

#[async_trait]
impl RoleStore for DynamoStore {
    async fn create(&self, ctx: &Ctx, new: NewRole) -> StoreResult<Role> {
        self.timed("roles.create", async {
            let table = &self.tables.roles;
            // Key first, then the policies, in PostgreSQL's order. The key is also
            // claimed with the put, and the policies are marked with it (dependents.rs).
            if self
                .exists_in_index(table, "gsi-key", ctx.tenant.as_str(), "key", &new.key)
                .await?
            {
                return Err(role_key_taken());
            }
            let now = super::item::now();
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
            let sid = role.id.to_string();
            let claim = self.key_claim(table, "role-key", &ctx.tenant, &role.key, &sid);
            // The role is put together with the marks on its policies (dependents.rs);
            // a policy deleted or re-keyed meanwhile: look the keys up again.
            for _ in 0..ATTEMPTS {
                let touches = self.touch_policies(&ctx.tenant, &role.policy_keys).await?;
                let item = role_to_item(&role)?;
                if self
                    .put_claimed(table, item, &claim, role_key_taken, touches)
                    .await?
                {
                    return Ok(role);
                }
            }
            Err(keeps_changing("policy"))
        })
        .await
    }

    async fn get(&self, tenant: &TenantId, id: Uuid) -> StoreResult<Role> {
        self.timed("roles.get", self.find_role(tenant, id)).await
    }

    async fn get_by_key(&self, tenant: &TenantId, key: &str) -> StoreResult<Role> {
        self.timed("roles.get_by_key", async {
            let items = self
                .items_with_access_key(&self.tables.roles, tenant, key)
                .await?;
            let found = items
                .iter()
                .map(role_from_item)
                .collect::<StoreResult<Vec<_>>>()?;
            for r in oldest_first(found, |r| (r.created_at, r.id)) {
                match self.find_role(tenant, r.id).await {
                    Err(StoreError::NotFound { .. }) => continue,
                    other => return other,
                }
            }
            Err(ROLE_NOT_FOUND)
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
            for _ in 0..ATTEMPTS {
                let mut r = self.find_role(&ctx.tenant, id).await?;
                if r.is_system {
                    return Err(system_role());
                }
                check_version(expected, r.version)?;
                let read_version = r.version;
                let RolePatch {
                    display_name,
                    description,
                    policy_keys,
                    tags,
                    risk_level,
                } = patch.clone();
                // Only policies the role did not name yet gain a dependent.
                let added: Vec<String> = policy_keys
                    .iter()
                    .flatten()
                    .filter(|k| !r.policy_keys.contains(k))
                    .cloned()
                    .collect();
                let mut items = self.touch_policies(&ctx.tenant, &added).await?;
                set(&mut r.display_name, display_name);
                set(&mut r.description, description);
                set(&mut r.policy_keys, policy_keys);
                set(&mut r.tags, tags);
                set(&mut r.risk_level, risk_level);
                r.version += 1;
                r.updated_at = super::item::now();
                r.updated_by = Some(ctx.actor.as_str().to_owned());
                let w = role_overwrite(&r, Expect::Version(read_version))?;
                items.insert(0, w.transact_item(&self.tables.roles)?);
                match self.transact_once(items).await? {
                    None => return Ok(r),
                    // The role changed: read it again.
                    Some(0) => {}
                    // A policy just deleted may still show in gsi-key: let it catch up.
                    Some(_) => tokio::time::sleep(INDEX_CATCH_UP).await,
                }
            }
            Err(keeps_changing("role"))
        })
        .await
    }

    /// Refused while an assignment is in force (expiry compared as time, unlike
    /// legacy). Then, as PostgreSQL's cascade, the role's remaining (inactive or
    /// expired) assignments are deleted, unless another role still holds the key (a
    /// legacy duplicate), since assignments name roles by key.
    async fn delete(&self, tenant: &TenantId, id: Uuid, expected: Option<i64>) -> StoreResult<()> {
        self.timed("roles.delete", async {
            let t = tenant.as_str();
            let sid = id.to_string();
            for _ in 0..ATTEMPTS {
                let item = self.get_item(&self.tables.roles, t, &sid).await?;
                let item = item.ok_or(ROLE_NOT_FOUND)?;
                let (r, mark) = (role_from_item(&item)?, Mark::of(&item));
                if r.is_system {
                    return Err(system_role());
                }
                check_version(expected, r.version)?;
                // An assignment made just before may not show in gsi-role yet; one made
                // after this read changes the mark and cancels the delete.
                mark.settle(self.index_settle).await;
                let now = super::item::now();
                let items = self.role_assignment_items(tenant, &r.key).await?;
                let history = items
                    .iter()
                    .map(assignment_from_item)
                    .collect::<StoreResult<Vec<_>>>()?;
                let history = self.confirm_in_force(tenant, history, now).await?;
                let active = history.iter().filter(|a| a.in_force(now)).count();
                if active > 0 {
                    return Err(StoreError::FailedPrecondition {
                        reason: "ROLE_IN_USE",
                        message: format!(
                            "the role has {active} active assignments; revoke them first"
                        ),
                    });
                }
                // The delete and the release of the key's claim, together.
                let table = &self.tables.roles;
                let mut items = vec![mark.delete_item(table, t, &sid, r.version)?];
                let old = self.key_claim(table, "role-key", tenant, &r.key, &sid);
                items.extend(self.releases(&old).await?);
                if self.transact(items).await?.is_some() {
                    continue;
                }
                // The index may still show the role just deleted: only another id counts.
                let holders = self
                    .items_with_access_key(&self.tables.roles, tenant, &r.key)
                    .await?;
                let other = holders
                    .iter()
                    .map(|i| ItemReader::new("roles", i).s("id"))
                    .collect::<StoreResult<Vec<_>>>()?;
                if other.iter().any(|o| *o != sid) {
                    return Ok(());
                }
                // An assignment changed since it was read keeps its record.
                let ids: Vec<(String, i64)> = history
                    .iter()
                    .map(|a| (a.id.to_string(), a.version))
                    .collect();
                let deletes = ids.iter().map(|(aid, version)| {
                    self.delete_versioned(&self.tables.role_assignments, t, aid, *version)
                });
                for result in futures::future::join_all(deletes).await {
                    result?;
                }
                return Ok(());
            }
            Err(keeps_changing("role"))
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
            let q = by_key_order(&self.tables.roles, tenant, page.after.as_deref())?;
            let rows = self
                .read_matching(q, Some("key"), page.size + 1, role_from_item, |r| {
                    matches_access(filter, r.risk_level, r.is_system)
                })
                .await?;
            Ok(Page::from_overfetch(rows, page.size, |r| r.key.clone()))
        })
        .await
    }
}

// ---- assignments ----------------------------------------------------------------

#[async_trait]
impl AssignmentStore for DynamoStore {
    /// The role must exist; an assignment of the same user, role and scope in force
    /// refuses the call, and one active but past its expiry is marked `expired` first
    /// (as PostgreSQL). The put claims the (role, scope, user) in the same
    /// transaction, so of two concurrent identical calls one fails with
    /// ASSIGNMENT_EXISTS (module doc).
    async fn assign(&self, ctx: &Ctx, new: NewAssignment) -> StoreResult<RoleAssignment> {
        self.timed("assignments.assign", async {
            let table = &self.tables.role_assignments;
            for _ in 0..ATTEMPTS {
                // The role is marked as assigned (dependents.rs) in the put's
                // transaction: every item holding the key (legacy may hold duplicates).
                let roles = self
                    .touch_key_holders(("roles", &self.tables.roles), &ctx.tenant, &new.role_key)
                    .await?;
                if roles.is_empty() {
                    return Err(ROLE_NOT_FOUND);
                }
                let touches = roles.into_iter().map(|(_, touch)| touch).collect();
                let now = super::item::now();
                let same = self
                    .user_assignments(
                        &ctx.tenant,
                        &new.user_id,
                        Some(&new.role_key),
                        Some(&new.scope),
                    )
                    .await?;
                let same = self.confirm_in_force(&ctx.tenant, same, now).await?;
                if same.iter().any(|a| a.in_force(now)) {
                    return Err(assignment_exists());
                }
                for mut old in same {
                    if old.status != AssignmentStatus::Active {
                        continue;
                    }
                    let read_version = old.version;
                    old.status = AssignmentStatus::Expired;
                    old.version += 1;
                    let item = assignment_item(&old, now);
                    let w =
                        Overwrite::new(item, ASSIGNMENT_OPTIONAL, Expect::Version(read_version));
                    // A concurrent change (a revoke) leaves it not active either way.
                    self.overwrite(table, w).await?;
                }
                let new = new.clone();
                let a = RoleAssignment {
                    tenant_id: ctx.tenant.clone(),
                    id: new.id,
                    user_id: new.user_id,
                    role_key: new.role_key,
                    scope: new.scope,
                    status: AssignmentStatus::Active,
                    expires_at: new.expires_at,
                    granted_by: ctx.actor.as_str().to_owned(),
                    granted_at: now,
                    reason: new.reason,
                    revoked_by: None,
                    revoked_at: None,
                    version: 1,
                };
                // Claimed with the put: of concurrent assigns of one (user, role, scope)
                // one wins, the others find its claim held by an assignment in force.
                let (value, sid) = (assignment_value(&a), a.id.to_string());
                let claim = self.assignment_claim(&ctx.tenant, &value, &sid);
                let item = assignment_item(&a, now);
                if self
                    .put_claimed(table, item, &claim, assignment_exists, touches)
                    .await?
                {
                    return Ok(a);
                }
            }
            Err(keeps_changing("role"))
        })
        .await
    }

    async fn get(&self, tenant: &TenantId, id: Uuid) -> StoreResult<RoleAssignment> {
        self.timed("assignments.get", self.find_assignment(tenant, id))
            .await
    }

    /// A conditional write on the version read, so of concurrent revokes one wins and
    /// the others see NOT_ACTIVE (as PostgreSQL's row lock).
    async fn revoke(&self, ctx: &Ctx, id: Uuid) -> StoreResult<RoleAssignment> {
        self.timed("assignments.revoke", async {
            for _ in 0..ATTEMPTS {
                let mut a = self.find_assignment(&ctx.tenant, id).await?;
                let now = super::item::now();
                if !a.in_force(now) {
                    return Err(StoreError::FailedPrecondition {
                        reason: "NOT_ACTIVE",
                        message: format!("the assignment is {}", a.effective_status(now)),
                    });
                }
                let read_version = a.version;
                a.status = AssignmentStatus::Inactive;
                a.revoked_by = Some(ctx.actor.as_str().to_owned());
                a.revoked_at = Some(now);
                a.version += 1;
                let item = assignment_item(&a, now);
                let w = Overwrite::new(item, ASSIGNMENT_OPTIONAL, Expect::Version(read_version));
                // The revoke and the release of the assignment's claim, together.
                let (value, sid) = (assignment_value(&a), id.to_string());
                let mut items = vec![w.transact_item(&self.tables.role_assignments)?];
                let old = self.assignment_claim(&ctx.tenant, &value, &sid);
                items.extend(self.releases(&old).await?);
                if self.transact(items).await?.is_none() {
                    return Ok(a);
                }
            }
            Err(keeps_changing("role assignment"))
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
            let table = &self.tables.role_assignments;
            let t = tenant.as_str();
            let now = super::item::now();
            let after = page
                .after
                .as_deref()
                .map(|a| Uuid::parse_str(a).map_err(|_| bad_cursor()))
                .transpose()?;
            let keep =
                |a: &RoleAssignment| filter.status.is_none_or(|s| a.effective_status(now) == s);
            let indexed = match (&filter.user_id, &filter.role_key) {
                (Some(u), _) => {
                    let mut q = Query::index_eq(table, "gsi-user", t, "userId", u);
                    q.filter_eq("roleKey", filter.role_key.as_deref());
                    Some(q)
                }
                (None, Some(r)) => Some(Query::index_eq(table, "gsi-role", t, "roleKey", r)),
                (None, None) => None,
            };
            let rows = match indexed {
                // An index orders by user or role only: read that user's or role's
                // assignments and page them in id order like the base table.
                Some(mut q) => {
                    q.filter_eq("scope", filter.scope.as_deref());
                    let mut all = self
                        .query(&q, usize::MAX)
                        .await?
                        .iter()
                        .map(assignment_from_item)
                        .collect::<StoreResult<Vec<_>>>()?;
                    all.retain(|a| keep(a) && after.is_none_or(|after| a.id > after));
                    all.sort_by_key(|a| a.id);
                    all.truncate(page.size + 1);
                    all
                }
                None => {
                    let mut q = Query::tenant(table, t);
                    q.filter_eq("scope", filter.scope.as_deref());
                    if let Some(after) = after {
                        q.start = Some(super::key(t, &after.to_string()));
                    }
                    self.read_matching(q, None, page.size + 1, assignment_from_item, keep)
                        .await?
                }
            };
            Ok(Page::from_overfetch(rows, page.size, |a| a.id.to_string()))
        })
        .await
    }

    /// Roles and policies are read through their key index (eventually consistent, so
    /// a change may take a moment to show in decisions).
    async fn grants(&self, tenant: &TenantId, user_id: &str) -> StoreResult<Vec<Grant>> {
        self.timed("assignments.grants", async {
            let now = super::item::now();
            let mut assignments = self.user_assignments(tenant, user_id, None, None).await?;
            assignments.retain(|a| a.in_force(now));
            // A revoke must take effect at once, whatever the index shows.
            let assignments = self.confirm_in_force(tenant, assignments, now).await?;
            let mut seen = HashSet::new();
            let role_keys: Vec<&str> = assignments
                .iter()
                .map(|a| a.role_key.as_str())
                .filter(|k| seen.insert(*k))
                .collect();
            let found =
                futures::future::join_all(role_keys.iter().map(|k| self.indexed_role(tenant, k)))
                    .await;
            let mut roles = HashMap::new();
            for (k, role) in role_keys.iter().zip(found) {
                if let Some(role) = role? {
                    roles.insert((*k).to_owned(), role);
                }
            }
            let mut seen = HashSet::new();
            let policy_keys: Vec<&str> = roles
                .values()
                .flat_map(|r| r.policy_keys.iter().map(String::as_str))
                .filter(|k| seen.insert(*k))
                .collect();
            let found = futures::future::join_all(
                policy_keys.iter().map(|k| self.indexed_policy(tenant, k)),
            )
            .await;
            let mut policies = HashMap::new();
            for (k, policy) in policy_keys.iter().zip(found) {
                if let Some(policy) = policy? {
                    policies.insert((*k).to_owned(), policy);
                }
            }
            Ok(assemble_grants(assignments, &roles, &policies, now))
        })
        .await
    }

    /// Resolved through the stored items, as PostgreSQL: a device through its
    /// `assetId`, an asset through its `path` (and `customerId`), a customer through
    /// its `path`. A missing item ends the chain where it is.
    async fn ancestry(&self, tenant: &TenantId, resource: &str) -> StoreResult<Vec<String>> {
        self.timed("assignments.ancestry", async {
            let only = || -> StoreResult<Vec<String>> { Ok(vec![resource.to_owned()]) };
            let Some((kind, id)) = resource.split_once(':') else {
                return only();
            };
            let Ok(id) = Uuid::parse_str(id) else {
                return only();
            };
            let t = tenant.as_str();
            let (asset, customer) = match kind {
                "customer" => (None, Some(id.to_string())),
                "asset" => (Some(id.to_string()), None),
                "device" => {
                    let item = self
                        .get_item(&self.tables.devices, t, &id.to_string())
                        .await?;
                    let asset = match &item {
                        Some(item) => ItemReader::new("devices", item).opt_s("assetId")?,
                        None => None,
                    };
                    (asset.filter(|a| !a.is_empty()), None)
                }
                _ => return only(),
            };
            let mut assets = Vec::new();
            let customer = match asset {
                Some(a) => {
                    let Some(item) = self.get_item(&self.tables.assets, t, &a).await? else {
                        return only();
                    };
                    let r = ItemReader::new("assets", &item);
                    let path = r.opt_s("path")?;
                    assets = match &path {
                        Some(p) => path_ids(p, 2),
                        None => vec![a],
                    };
                    let from_path = path
                        .as_deref()
                        .and_then(|p| path_ids(p, 1).first().cloned());
                    r.opt_s("customerId")?.or(from_path)
                }
                None => customer,
            };
            let mut customers = Vec::new();
            if let Some(c) = customer
                && let Some(item) = self.get_item(&self.tables.customers, t, &c).await?
            {
                customers = match ItemReader::new("customers", &item).opt_s("path")? {
                    Some(p) => path_ids(&p, 1),
                    None => vec![c],
                };
            }
            Ok(scope_chain(resource, &assets, &customers))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_dynamodb::types::AttributeValue;
    use chrono::TimeZone;

    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn null() -> AttributeValue {
        AttributeValue::Null(true)
    }

    fn strings(v: &[&str]) -> AttributeValue {
        AttributeValue::L(v.iter().map(|s| AttributeValue::S((*s).into())).collect())
    }

    /// A hand-written item: key plus the given attributes.
    fn legacy(id: &str, attrs: Vec<(&str, AttributeValue)>) -> Item {
        let mut item = ItemWriter::new("tenant-default", id).finish();
        for (k, v) in attrs {
            item.insert(k.to_owned(), v);
        }
        item
    }

    fn has_null(v: &AttributeValue) -> bool {
        match v {
            AttributeValue::Null(_) => true,
            AttributeValue::L(l) => l.iter().any(has_null),
            AttributeValue::M(m) => m.values().any(has_null),
            _ => false,
        }
    }

    fn assert_no_null(item: &Item) {
        for (k, v) in item {
            assert!(!has_null(v), "attribute {k} holds NULL: {v:?}");
        }
    }

    fn str_attr<'a>(item: &'a Item, k: &str) -> &'a str {
        match item.get(k) {
            Some(AttributeValue::S(s)) => s,
            other => panic!("{k} is {other:?}"),
        }
    }

    const P1: &str = "0b6e1c1e-6a36-4b5e-9d0e-3f1b2a3c4d5e";
    const R1: &str = "1c7f2d2f-7b47-4c6f-8e1f-4a2c3b4d5e6f";
    const A1: &str = "2d8a3e3a-8c58-4d7a-9f2a-5b3d4c5e6f7a";

    #[test]
    fn a_legacy_policy_with_absent_and_null_optionals_reads_and_writes_back_without_null() {
        let item = legacy(
            P1,
            vec![
                ("key", s("energy_read")),
                ("displayName", s("Energy read")),
                ("allow", strings(&["energy.*.read"])),
                ("conditions", null()),
                ("riskLevel", s("low")),
                ("version", AttributeValue::N("3".into())),
                ("createdAt", s("2026-01-20T12:00:00Z")),
                ("updatedAt", s("2026-01-21T08:30:15.5Z")),
                ("updatedBy", null()),
            ],
        );
        let p = policy_from_item(&item).unwrap();
        assert_eq!(p.tenant_id.as_str(), "tenant-default");
        assert_eq!(p.key, "energy_read");
        assert_eq!(p.description, "");
        assert_eq!(p.allow, vec!["energy.*.read"]);
        assert!(p.deny.is_empty());
        assert_eq!(p.conditions, None);
        assert!(!p.is_system);
        assert_eq!(p.version, 3);
        assert_eq!(p.created_at, t("2026-01-20T12:00:00Z"));
        assert_eq!(p.updated_at, t("2026-01-21T08:30:15.500Z"));
        assert_eq!(p.created_by, "system");
        assert_eq!(p.updated_by, None);

        let out = policy_to_item(&p).unwrap();
        assert_no_null(&out);
        assert!(!out.contains_key("conditions") && !out.contains_key("updatedBy"));
        assert_eq!(str_attr(&out, "description"), "");
        assert_eq!(str_attr(&out, "createdAt"), "2026-01-20T12:00:00.000Z");
        assert_eq!(policy_from_item(&out).unwrap(), p);
    }

    #[test]
    fn policy_conditions_with_null_members_read_as_absent_and_round_trip() {
        let conditions = AttributeValue::M(HashMap::from([
            ("requiresMFA".to_owned(), AttributeValue::Bool(true)),
            ("ipAllowlist".to_owned(), null()),
            (
                "maxSessionDuration".to_owned(),
                AttributeValue::N("3600".into()),
            ),
        ]));
        let item = legacy(
            P1,
            vec![
                ("key", s("policy:admin")),
                ("deny", AttributeValue::L(vec![])),
                ("conditions", conditions),
                ("riskLevel", s("CRITICAL")),
                ("isSystem", AttributeValue::Bool(true)),
                ("createdAt", s("2026-01-20T12:00:00.123456Z")),
            ],
        );
        let p = policy_from_item(&item).unwrap();
        let c = p.conditions.clone().unwrap();
        assert_eq!(c.requires_mfa, Some(true));
        assert!(c.ip_allowlist.is_empty());
        assert_eq!(c.max_session_duration, Some(3600));
        assert_eq!(p.risk_level, RiskLevel::Critical);
        assert!(p.is_system);
        assert_eq!(p.display_name, "policy:admin");
        assert_eq!(p.updated_at, p.created_at);

        let out = policy_to_item(&p).unwrap();
        assert_no_null(&out);
        assert_eq!(str_attr(&out, "riskLevel"), "critical");
        assert_eq!(policy_from_item(&out).unwrap().conditions, Some(c));
    }

    #[test]
    fn a_policy_overwrite_removes_cleared_optionals_and_is_conditional_on_the_version() {
        let p = policy_from_item(&legacy(
            P1,
            vec![("key", s("k")), ("createdAt", s("2026-01-20T12:00:00Z"))],
        ))
        .unwrap();
        let w = policy_overwrite(&p, Expect::Version(1)).unwrap();
        assert!(w.expression.contains(" REMOVE "));
        assert!(w.names.values().any(|n| n == "conditions"));
        assert!(
            w.condition
                .as_deref()
                .unwrap_or_default()
                .contains("#ver = :expected")
        );
        assert!(!w.values.values().any(has_null));
    }

    #[test]
    fn a_legacy_role_with_absent_and_null_optionals_reads_and_writes_back_without_null() {
        let item = legacy(
            R1,
            vec![
                ("key", s("technician_maintenance")),
                ("displayName", s("Technician")),
                (
                    "policies",
                    strings(&["energy_read", "policy:device-management"]),
                ),
                ("tags", null()),
                ("riskLevel", s("Medium")),
                ("version", AttributeValue::N("2".into())),
                ("createdAt", s("2026-01-20T12:00:00Z")),
                ("updatedAt", s("2026-01-20T12:00:01Z")),
                ("createdBy", s("user-joao")),
                ("updatedBy", s("user-maria")),
                ("someLegacyExtra", s("kept by overwrites")),
            ],
        );
        let r = role_from_item(&item).unwrap();
        assert_eq!(r.key, "technician_maintenance");
        assert_eq!(
            r.policy_keys,
            vec!["energy_read", "policy:device-management"]
        );
        assert!(r.tags.is_empty());
        assert_eq!(r.description, "");
        assert_eq!(r.risk_level, RiskLevel::Medium);
        assert!(!r.is_system);
        assert_eq!(r.updated_at, t("2026-01-20T12:00:01.000Z"));
        assert_eq!(r.created_by, "user-joao");
        assert_eq!(r.updated_by.as_deref(), Some("user-maria"));

        let out = role_to_item(&r).unwrap();
        assert_no_null(&out);
        assert_eq!(out.get("policies"), item.get("policies"));
        assert_eq!(out.get("tags"), Some(&AttributeValue::L(vec![])));
        assert!(!out.contains_key("someLegacyExtra"));
        assert_eq!(role_from_item(&out).unwrap(), r);
        let w = role_overwrite(&r, Expect::Version(2)).unwrap();
        assert!(!w.names.values().any(|n| n == "someLegacyExtra"));
    }

    #[test]
    fn a_legacy_active_assignment_in_uppercase_without_millis_reads_as_active() {
        let item = legacy(
            A1,
            vec![
                ("userId", s("user-joao")),
                ("roleKey", s("technician_maintenance")),
                ("scope", s("customer:3333")),
                ("status", s("ACTIVE")),
                ("expiresAt", s("2026-03-01T00:00:00Z")),
                ("grantedBy", s("system")),
                ("grantedAt", s("2026-01-20T12:00:00.000Z")),
                ("reason", null()),
                ("version", AttributeValue::N("1".into())),
                ("createdAt", s("2026-01-20T12:00:00.000Z")),
                ("updatedAt", s("2026-01-20T12:00:00.000Z")),
                ("createdBy", s("system")),
            ],
        );
        let a = assignment_from_item(&item).unwrap();
        assert_eq!(a.status, AssignmentStatus::Active);
        assert_eq!(a.expires_at, Some(t("2026-03-01T00:00:00.000Z")));
        assert_eq!(a.reason, None);
        assert_eq!(a.revoked_by, None);
        assert!(a.in_force(t("2026-02-28T23:59:59.999Z")));
        // Past expiry it is not active, whatever its status says.
        assert!(!a.in_force(t("2026-03-01T00:00:00Z")));
        assert_eq!(
            a.effective_status(t("2026-03-02T00:00:00Z")),
            AssignmentStatus::Expired
        );

        let out = assignment_to_item(&a).unwrap();
        assert_no_null(&out);
        assert_eq!(str_attr(&out, "status"), "active");
        assert_eq!(str_attr(&out, "expiresAt"), "2026-03-01T00:00:00.000Z");
        assert_eq!(str_attr(&out, "createdAt"), str_attr(&out, "grantedAt"));
        assert_eq!(str_attr(&out, "createdBy"), "system");
        for k in ["reason", "revokedBy", "revokedAt", "updatedBy"] {
            assert!(!out.contains_key(k), "{k} written");
        }
        assert_eq!(assignment_from_item(&out).unwrap(), a);
    }

    #[test]
    fn a_legacy_revoked_assignment_takes_its_revoke_from_updated_by_and_at() {
        let item = legacy(
            A1,
            vec![
                ("userId", s("user-maria")),
                ("roleKey", s("energy_analyst")),
                ("scope", s("*")),
                ("status", s("inactive")),
                ("grantedBy", s("admin")),
                ("grantedAt", s("2026-01-20T12:00:00Z")),
                ("version", AttributeValue::N("2".into())),
                ("createdAt", s("2026-01-20T12:00:00Z")),
                ("updatedAt", s("2026-01-22T10:00:00.25Z")),
                ("updatedBy", s("admin-2")),
            ],
        );
        let a = assignment_from_item(&item).unwrap();
        assert_eq!(a.status, AssignmentStatus::Inactive);
        assert_eq!(a.revoked_by.as_deref(), Some("admin-2"));
        assert_eq!(a.revoked_at, Some(t("2026-01-22T10:00:00.250Z")));
        assert_eq!(a.expires_at, None);

        let out = assignment_to_item(&a).unwrap();
        assert_no_null(&out);
        assert_eq!(str_attr(&out, "status"), "inactive");
        assert_eq!(str_attr(&out, "revokedBy"), "admin-2");
        assert_eq!(str_attr(&out, "updatedBy"), "admin-2");
        assert_eq!(str_attr(&out, "revokedAt"), "2026-01-22T10:00:00.250Z");
        assert_eq!(str_attr(&out, "updatedAt"), "2026-01-22T10:00:00.250Z");
        assert_eq!(assignment_from_item(&out).unwrap(), a);
    }

    #[test]
    fn statuses_read_in_any_case_and_empty_or_null_expiry_means_never() {
        let base = |status: AttributeValue, expires: AttributeValue| {
            legacy(
                A1,
                vec![
                    ("userId", s("u")),
                    ("roleKey", s("r")),
                    ("scope", s("*")),
                    ("status", status),
                    ("expiresAt", expires),
                    ("createdAt", s("2026-01-20T12:00:00Z")),
                ],
            )
        };
        let cases = [
            ("Expired", AssignmentStatus::Expired),
            ("EXPIRED", AssignmentStatus::Expired),
            ("REVOKED", AssignmentStatus::Inactive),
            ("active", AssignmentStatus::Active),
        ];
        for (raw, want) in cases {
            let a = assignment_from_item(&base(s(raw), s(""))).unwrap();
            assert_eq!(a.status, want, "{raw}");
            assert_eq!(a.expires_at, None);
            // grantedAt/grantedBy absent: the creation stands for the grant.
            assert_eq!(a.granted_at, t("2026-01-20T12:00:00Z"));
            assert_eq!(a.granted_by, "system");
            assert_no_null(&assignment_to_item(&a).unwrap());
        }
        let a = assignment_from_item(&base(null(), null())).unwrap();
        assert_eq!(a.status, AssignmentStatus::Inactive);
        assert!(assignment_from_item(&base(s("pending"), null())).is_err());
    }

    #[test]
    fn an_expired_assignment_is_written_as_changed_at_its_expiry() {
        let granted = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let expiry = Utc.with_ymd_and_hms(2026, 2, 1, 0, 0, 0).unwrap();
        let a = RoleAssignment {
            tenant_id: TenantId::parse("t1").unwrap(),
            id: Uuid::parse_str(A1).unwrap(),
            user_id: "u".into(),
            role_key: "r".into(),
            scope: "*".into(),
            status: AssignmentStatus::Expired,
            expires_at: Some(expiry),
            granted_by: "g".into(),
            granted_at: granted,
            reason: Some("temp".into()),
            revoked_by: None,
            revoked_at: None,
            version: 2,
        };
        let out = assignment_to_item(&a).unwrap();
        assert_eq!(str_attr(&out, "updatedAt"), "2026-02-01T00:00:00.000Z");
        assert_eq!(str_attr(&out, "status"), "expired");
        let w = assignment_overwrite(&a, Expect::NotNewer(2)).unwrap();
        assert!(w.expression.contains("REMOVE"));
        assert!(w.names.values().any(|n| n == "revokedBy"));
        assert!(!w.names.values().any(|n| n == "updatedBy"));
    }

    fn assignment(
        id: u128,
        role: &str,
        granted_secs: i64,
        status: AssignmentStatus,
    ) -> RoleAssignment {
        RoleAssignment {
            tenant_id: TenantId::parse("t1").unwrap(),
            id: Uuid::from_u128(id),
            user_id: "u".into(),
            role_key: role.into(),
            scope: "*".into(),
            status,
            expires_at: None,
            granted_by: "g".into(),
            granted_at: DateTime::from_timestamp(granted_secs, 0).unwrap(),
            reason: None,
            revoked_by: None,
            revoked_at: None,
            version: 1,
        }
    }

    #[test]
    fn grants_keep_assignments_in_force_in_grant_order_and_skip_missing_roles_and_policies() {
        let now = DateTime::from_timestamp(1_000, 0).unwrap();
        let mut expired = assignment(1, "viewer", 10, AssignmentStatus::Active);
        expired.expires_at = Some(now);
        let assignments = vec![
            assignment(5, "viewer", 30, AssignmentStatus::Active),
            assignment(4, "admin", 20, AssignmentStatus::Active),
            assignment(3, "ghost", 5, AssignmentStatus::Active),
            assignment(2, "admin", 1, AssignmentStatus::Inactive),
            expired,
        ];
        let role = |key: &str, policies: &[&str]| {
            let item = legacy(
                R1,
                vec![
                    ("key", s(key)),
                    ("policies", strings(policies)),
                    ("createdAt", s("2026-01-20T12:00:00Z")),
                ],
            );
            (key.to_owned(), role_from_item(&item).unwrap())
        };
        let roles = HashMap::from([
            role("viewer", &["p_viewer", "p_missing"]),
            role("admin", &["p_admin"]),
        ]);
        let rules = |key: &str, allow: &str| {
            let p = PolicyRules {
                key: key.into(),
                allow: vec![allow.into()],
                deny: vec![],
            };
            (key.to_owned(), p)
        };
        let policies = HashMap::from([rules("p_viewer", "*.*.read"), rules("p_admin", "*.*.*")]);
        let grants = assemble_grants(assignments, &roles, &policies, now);
        let ids: Vec<u128> = grants.iter().map(|g| g.assignment.id.as_u128()).collect();
        assert_eq!(ids, vec![4, 5]);
        assert_eq!(grants[0].policies, vec![policies["p_admin"].clone()]);
        assert_eq!(grants[1].policies, vec![policies["p_viewer"].clone()]);
    }

    #[test]
    fn the_scope_chain_follows_stored_paths_nearest_first() {
        let assets = path_ids("/tenant-default/C2/A1/A2", 2);
        let customers = path_ids("/tenant-default/C1/C2", 1);
        assert_eq!(
            scope_chain("device:D", &assets, &customers),
            vec![
                "device:D",
                "asset:A2",
                "asset:A1",
                "customer:C2",
                "customer:C1"
            ]
        );
        assert_eq!(
            scope_chain("asset:A2", &assets, &customers)[..3],
            ["asset:A2", "asset:A1", "customer:C2"]
        );
        assert_eq!(
            scope_chain("customer:C2", &[], &customers),
            vec!["customer:C2", "customer:C1"]
        );
        assert_eq!(scope_chain("tenant:x", &[], &[]), vec!["tenant:x"]);
    }

    #[test]
    fn of_duplicate_keys_the_oldest_comes_first() {
        let at = |secs| DateTime::from_timestamp(secs, 0).unwrap();
        let found = vec![(at(20), Uuid::from_u128(1)), (at(10), Uuid::from_u128(2))];
        let sorted = oldest_first(found, |x| *x);
        assert_eq!(sorted[0].1, Uuid::from_u128(2));
    }
}
