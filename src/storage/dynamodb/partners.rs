//! Partners in the legacy `gcdr-partners-<stage>` table (contract §1.4, §3.4).
//!
//! Legacy keeps a partner's API keys, OAuth clients and webhooks as lists inside the
//! partner item, so the unit read and written here is the whole `PartnerRecord`: every
//! operation reads the item, changes the record and overwrites the item conditional on
//! the version read. A credential change is therefore atomic with the status check it
//! depends on (and a rotation is one write), and, like legacy, it bumps the partner's
//! `version` and `updatedAt` (but not `updatedBy`).
//!
//! Attributes legacy did not persist are stored as extra attributes legacy readers
//! ignore: `intendedUse`, `requestedScopes` and `statusHistory` (the transitions). The
//! legacy lifecycle attributes (`approvedAt`/`approvedBy`, `rejectedAt`/`rejectedBy`/
//! `rejectionReason`, `suspendedAt`/..., `activatedAt`/...) are written from the latest
//! transition of each kind; a legacy item without `statusHistory` has its transitions
//! rebuilt from them.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Claim, DynamoStore, Expect, Item, ItemReader, ItemWriter, Overwrite, Query};
use super::{bad_cursor, check_version};
use crate::domain::partner::{
    ApiKey, CredentialStatus, LifecycleAction, NewApiKey, NewOAuthClient, NewPartner, NewWebhook,
    OAuthClient, Partner, PartnerPatch, PartnerProfile, PartnerRecord, PartnerStatus, Transition,
    Webhook, may_hold_credentials,
};
use crate::domain::{Ctx, Page, PageRequest, TenantId};
use crate::storage::{PartnerStore, StoreError, StoreResult};

/// The legacy lifecycle attributes: the status a transition leads to, and the
/// attributes of its time, actor and (for some) reason.
const LIFECYCLE: [(&str, &str, &str, Option<&str>); 4] = [
    ("APPROVED", "approvedAt", "approvedBy", None),
    (
        "REJECTED",
        "rejectedAt",
        "rejectedBy",
        Some("rejectionReason"),
    ),
    (
        "SUSPENDED",
        "suspendedAt",
        "suspendedBy",
        Some("suspensionReason"),
    ),
    ("ACTIVE", "activatedAt", "activatedBy", None),
];

/// Optional attributes an overwrite removes when the record has none.
const OPTIONAL: &[&str] = &[
    "contactPhone",
    "webhookUrl",
    "updatedBy",
    "approvedAt",
    "approvedBy",
    "rejectedAt",
    "rejectedBy",
    "rejectionReason",
    "suspendedAt",
    "suspendedBy",
    "suspensionReason",
    "activatedAt",
    "activatedBy",
];

/// The attributes of an `apiKeys` element this service models; any other attribute of
/// a stored element (e.g. `lastUsedAt`) is kept when the list is rewritten.
const API_KEY_FIELDS: &[&str] = &[
    "id",
    "keyHash",
    "keyPrefix",
    "name",
    "scopes",
    "expiresAt",
    "createdAt",
    "revokedAt",
    "status",
];

/// The modeled attributes of an `oauthClients` element.
const OAUTH_CLIENT_FIELDS: &[&str] = &[
    "clientId",
    "clientSecretHash",
    "name",
    "redirectUris",
    "scopes",
    "grantTypes",
    "createdAt",
    "revokedAt",
    "status",
];

/// The modeled attributes of a `webhooks` element. `updatedAt` and `failureCount` are
/// written with their initial values for a new webhook but otherwise belong to the
/// stored element (as do `lastDeliveryAt` and `lastDeliveryStatus`).
const WEBHOOK_FIELDS: &[&str] = &["id", "url", "events", "secretHash", "enabled", "createdAt"];

/// How many times a write is retried when the partner changed since it was read.
const ATTEMPTS: usize = 5;

const NOT_FOUND: StoreError = StoreError::NotFound { entity: "partner" };

/// A list of maps.
fn map_list(maps: Vec<Item>) -> AttributeValue {
    AttributeValue::L(maps.into_iter().map(AttributeValue::M).collect())
}

/// The legacy item of a partner with its credentials (secrets only as hashes).
/// Unset optionals are omitted, never NULL.
pub(crate) fn to_item(rec: &PartnerRecord) -> StoreResult<Item> {
    let p = &rec.partner;
    let f = &p.profile;
    let api_keys = rec
        .api_keys
        .iter()
        .map(|(k, hash)| {
            ItemWriter::default()
                .s("id", k.id.to_string())
                .s("keyHash", hash)
                .s("keyPrefix", &k.key_prefix)
                .s("name", &k.name)
                .list("scopes", &k.scopes)
                .opt_ts("expiresAt", k.expires_at)
                .ts("createdAt", k.created_at)
                .opt_ts("revokedAt", k.revoked_at)
                .s("status", k.status.as_str())
                .finish()
        })
        .collect();
    let oauth_clients = rec
        .oauth_clients
        .iter()
        .map(|(c, hash)| {
            ItemWriter::default()
                .s("clientId", &c.client_id)
                .s("clientSecretHash", hash)
                .s("name", &c.name)
                .list("redirectUris", &c.redirect_uris)
                .list("scopes", &c.scopes)
                .list("grantTypes", &c.grant_types)
                .ts("createdAt", c.created_at)
                .opt_ts("revokedAt", c.revoked_at)
                .s("status", c.status.as_str())
                .finish()
        })
        .collect();
    let webhooks = rec
        .webhooks
        .iter()
        .map(|(w, hash)| {
            ItemWriter::default()
                .s("id", w.id.to_string())
                .s("url", &w.url)
                .list("events", &w.events)
                .s("secretHash", hash)
                .b("enabled", w.enabled)
                .ts("createdAt", w.created_at)
                .ts("updatedAt", w.created_at)
                .n("failureCount", 0)
                .finish()
        })
        .collect();
    let history = p
        .transitions
        .iter()
        .map(|t| {
            ItemWriter::default()
                .s("status", &t.status)
                .s("actor", &t.actor)
                .ts("time", t.time)
                .opt_s("reason", t.reason.as_deref())
                .finish()
        })
        .collect();
    let mut w = ItemWriter::new(p.tenant_id.as_str(), &p.id.to_string())
        .s("status", p.status.as_str())
        .s("companyName", &f.company_name)
        .s("companyWebsite", &f.company_website)
        .s("companyDescription", &f.company_description)
        .s("industry", &f.industry)
        .s("country", &f.country)
        .s("contactName", &f.contact_name)
        .s("contactEmail", &f.contact_email)
        .opt_s("contactPhone", f.contact_phone.as_deref())
        .s("technicalContactEmail", &f.technical_contact_email)
        .opt_s("webhookUrl", f.webhook_url.as_deref())
        .list("ipWhitelist", &f.ip_whitelist)
        .attr("apiKeys", map_list(api_keys))
        .attr("oauthClients", map_list(oauth_clients))
        .attr("webhooks", map_list(webhooks))
        .list("scopes", &p.scopes)
        .n("rateLimitPerMinute", p.rate_limit_per_minute)
        .n("rateLimitPerDay", p.rate_limit_per_day)
        .n("monthlyQuota", p.monthly_quota)
        .s("intendedUse", &p.intended_use)
        .list("requestedScopes", &p.requested_scopes)
        .attr("statusHistory", map_list(history));
    for (status, at, by, reason) in LIFECYCLE {
        if let Some(t) = p.transitions.iter().rev().find(|t| t.status == status) {
            w = w.ts(at, t.time).s(by, &t.actor);
            if let Some(reason) = reason {
                w = w.opt_s(reason, t.reason.as_deref());
            }
        }
    }
    Ok(w.n("version", p.version)
        .ts("createdAt", p.created_at)
        .ts("updatedAt", p.updated_at)
        .s("createdBy", &p.created_by)
        .opt_s("updatedBy", p.updated_by.as_deref())
        .finish())
}

/// The elements of a list-of-maps attribute (absent or NULL: none).
fn maps<'a>(r: &ItemReader<'a>, k: &str) -> StoreResult<Vec<&'a Item>> {
    match r.get(k) {
        None => Ok(Vec::new()),
        Some(AttributeValue::L(l)) => l
            .iter()
            .map(|v| match v {
                AttributeValue::M(m) => Ok(m),
                _ => Err(r.bad(k, "holds a non-map element")),
            })
            .collect(),
        Some(_) => Err(r.bad(k, "is not a list")),
    }
}

/// A UUID attribute.
fn uuid_attr(r: &ItemReader<'_>, k: &str) -> StoreResult<Uuid> {
    Uuid::parse_str(&r.s(k)?).map_err(|_| r.bad(k, "is not a UUID"))
}

/// A credential status; legacy elements without one are ACTIVE unless revoked.
fn credential_status(r: &ItemReader<'_>, revoked: bool) -> StoreResult<CredentialStatus> {
    match r.opt_s("status")? {
        Some(s) => CredentialStatus::parse(&s).ok_or_else(|| r.bad("status", "is not a status")),
        None if revoked => Ok(CredentialStatus::Revoked),
        None => Ok(CredentialStatus::Active),
    }
}

/// An `i32` attribute, legacy 0 when absent.
fn i32_or_zero(r: &ItemReader<'_>, k: &str) -> StoreResult<i32> {
    i32::try_from(r.opt_i64(k)?.unwrap_or(0)).map_err(|_| r.bad(k, "is out of range"))
}

fn api_key_from(m: &Item) -> StoreResult<(ApiKey, String)> {
    let r = ItemReader::new("partners.apiKeys", m);
    let revoked_at = r.opt_ts("revokedAt")?;
    let key = ApiKey {
        id: uuid_attr(&r, "id")?,
        name: r.opt_s("name")?.unwrap_or_default(),
        key_prefix: r.opt_s("keyPrefix")?.unwrap_or_default(),
        scopes: r.list("scopes")?,
        expires_at: r.opt_ts("expiresAt")?,
        created_at: r.ts("createdAt")?,
        revoked_at,
        status: credential_status(&r, revoked_at.is_some())?,
    };
    Ok((key, r.s("keyHash")?))
}

fn oauth_client_from(m: &Item) -> StoreResult<(OAuthClient, String)> {
    let r = ItemReader::new("partners.oauthClients", m);
    let revoked_at = r.opt_ts("revokedAt")?;
    let client = OAuthClient {
        client_id: r.s("clientId")?,
        name: r.opt_s("name")?.unwrap_or_default(),
        redirect_uris: r.list("redirectUris")?,
        scopes: r.list("scopes")?,
        grant_types: r.list("grantTypes")?,
        created_at: r.ts("createdAt")?,
        revoked_at,
        status: credential_status(&r, revoked_at.is_some())?,
    };
    Ok((client, r.s("clientSecretHash")?))
}

fn webhook_from(m: &Item) -> StoreResult<(Webhook, String)> {
    let r = ItemReader::new("partners.webhooks", m);
    let hook = Webhook {
        id: uuid_attr(&r, "id")?,
        url: r.s("url")?,
        events: r.list("events")?,
        enabled: r.bool_or("enabled", true)?,
        created_at: r.ts("createdAt")?,
    };
    Ok((hook, r.s("secretHash")?))
}

fn transition_from(m: &Item) -> StoreResult<Transition> {
    let r = ItemReader::new("partners.statusHistory", m);
    Ok(Transition {
        status: r.s("status")?,
        actor: r.opt_s("actor")?.unwrap_or_else(|| "system".into()),
        time: r.ts("time")?,
        reason: r.opt_s("reason")?,
    })
}

/// The transitions: `statusHistory`, plus a transition rebuilt from each legacy
/// lifecycle attribute set that is newer than the history's latest of its kind (a
/// legacy item has no history; a legacy writer may have moved the partner since this
/// service last wrote it). Oldest first.
fn transitions_from(r: &ItemReader<'_>) -> StoreResult<Vec<Transition>> {
    let mut history = maps(r, "statusHistory")?
        .into_iter()
        .map(transition_from)
        .collect::<StoreResult<Vec<_>>>()?;
    for (status, at, by, reason) in LIFECYCLE {
        let Some(time) = r.opt_ts(at)? else { continue };
        let latest = history
            .iter()
            .filter(|t| t.status == status)
            .map(|t| t.time)
            .max();
        if latest.is_none_or(|l| time > l) {
            history.push(Transition {
                status: status.to_owned(),
                actor: r.opt_s(by)?.unwrap_or_else(|| "system".into()),
                time,
                reason: reason.map(|k| r.opt_s(k)).transpose()?.flatten(),
            });
        }
    }
    history.sort_by_key(|t| t.time);
    Ok(history)
}

/// A partner record from a legacy item, as legacy data really is: optional attributes
/// absent or NULL, lists absent, rate limits 0, timestamps at any sub-second precision,
/// `intendedUse`/`requestedScopes`/`statusHistory` absent.
pub(crate) fn from_item(item: &Item) -> StoreResult<PartnerRecord> {
    let r = ItemReader::new("partners", item);
    let tenant = r.s("tenantId")?;
    let status = r.opt_s("status")?.unwrap_or_else(|| "PENDING".into());
    let created_at = r.ts("createdAt")?;
    let text = |k: &str| r.opt_s(k).map(Option::unwrap_or_default);
    let partner = Partner {
        tenant_id: TenantId::parse(&tenant).ok_or_else(|| r.bad("tenantId", "is not valid"))?,
        id: uuid_attr(&r, "id")?,
        status: PartnerStatus::parse(&status)
            .ok_or_else(|| r.bad("status", "is not a partner status"))?,
        profile: PartnerProfile {
            company_name: r.s("companyName")?,
            company_website: text("companyWebsite")?,
            company_description: text("companyDescription")?,
            industry: text("industry")?,
            country: text("country")?,
            contact_name: text("contactName")?,
            contact_email: r.s("contactEmail")?,
            contact_phone: r.opt_s("contactPhone")?,
            technical_contact_email: text("technicalContactEmail")?,
            webhook_url: r.opt_s("webhookUrl")?,
            ip_whitelist: r.list("ipWhitelist")?,
        },
        intended_use: text("intendedUse")?,
        requested_scopes: r.list("requestedScopes")?,
        scopes: r.list("scopes")?,
        rate_limit_per_minute: i32_or_zero(&r, "rateLimitPerMinute")?,
        rate_limit_per_day: i32_or_zero(&r, "rateLimitPerDay")?,
        monthly_quota: i32_or_zero(&r, "monthlyQuota")?,
        transitions: transitions_from(&r)?,
        version: r.opt_i64("version")?.unwrap_or(1),
        created_at,
        updated_at: r.opt_ts("updatedAt")?.unwrap_or(created_at),
        created_by: r.opt_s("createdBy")?.unwrap_or_else(|| "system".into()),
        updated_by: r.opt_s("updatedBy")?,
    };
    Ok(PartnerRecord {
        partner,
        api_keys: maps(&r, "apiKeys")?
            .into_iter()
            .map(api_key_from)
            .collect::<StoreResult<_>>()?,
        oauth_clients: maps(&r, "oauthClients")?
            .into_iter()
            .map(oauth_client_from)
            .collect::<StoreResult<_>>()?,
        webhooks: maps(&r, "webhooks")?
            .into_iter()
            .map(webhook_from)
            .collect::<StoreResult<_>>()?,
    })
}

/// The overwrite that stores `rec` under the condition `expect`. The credential lists
/// are written whole from the record: legacy-only element attributes (a webhook's
/// delivery statistics) are reset unless the store's own writes carry them over.
pub(crate) fn overwrite(rec: &PartnerRecord, expect: Expect) -> StoreResult<Overwrite> {
    Ok(Overwrite::new(to_item(rec)?, OPTIONAL, expect))
}

/// Copies into the credential lists of `item` the element attributes this service does
/// not model (e.g. `lastUsedAt`, a webhook's `updatedAt`, `failureCount`,
/// `lastDeliveryAt`) from the matching elements of `stored`, the item as read.
fn keep_legacy_element_attributes(item: &mut Item, stored: &Item) {
    for (list, id, modeled) in [
        ("apiKeys", "id", API_KEY_FIELDS),
        ("oauthClients", "clientId", OAUTH_CLIENT_FIELDS),
        ("webhooks", "id", WEBHOOK_FIELDS),
    ] {
        let Some(AttributeValue::L(old)) = stored.get(list) else {
            continue;
        };
        let old: HashMap<&str, &Item> = old
            .iter()
            .filter_map(|v| match v {
                AttributeValue::M(m) => match m.get(id) {
                    Some(AttributeValue::S(id)) => Some((id.as_str(), m)),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        let Some(AttributeValue::L(new)) = item.get_mut(list) else {
            continue;
        };
        for element in new {
            let AttributeValue::M(m) = element else {
                continue;
            };
            let Some(AttributeValue::S(key)) = m.get(id) else {
                continue;
            };
            let Some(before) = old.get(key.as_str()) else {
                continue;
            };
            for (k, v) in before.iter() {
                if !modeled.contains(&k.as_str()) && !matches!(v, AttributeValue::Null(_)) {
                    m.insert(k.clone(), v.clone());
                }
            }
        }
    }
}

/// `keep_legacy_element_attributes` on the credential lists an overwrite sets (each
/// attribute `#aN` of an overwrite is set to the value `:aN`).
fn keep_legacy_in_overwrite(w: &mut Overwrite, stored: &Item) {
    let placeholders: Vec<(String, String)> = w
        .names
        .iter()
        .filter(|(_, attr)| matches!(attr.as_str(), "apiKeys" | "oauthClients" | "webhooks"))
        .map(|(name, attr)| (name.replacen('#', ":", 1), attr.clone()))
        .collect();
    let mut lists: Item = placeholders
        .iter()
        .filter_map(|(value, attr)| Some((attr.clone(), w.values.remove(value)?)))
        .collect();
    keep_legacy_element_attributes(&mut lists, stored);
    for (value, attr) in placeholders {
        if let Some(v) = lists.remove(&attr) {
            w.values.insert(value, v);
        }
    }
}

fn email_taken() -> StoreError {
    StoreError::AlreadyExists {
        reason: "PARTNER_EMAIL_EXISTS",
        field: "partner.contact_email",
    }
}

/// A key that the PostgreSQL schema makes unique (there an unmapped unique violation,
/// so `Internal` as well); ids are generated, so only a bug can hit it.
fn duplicate(what: &str) -> StoreError {
    StoreError::Internal(format!("unique violation: partner {what} already exists").into())
}

fn kept_changing() -> StoreError {
    StoreError::Unavailable("the partner keeps changing; retry".into())
}

/// Checks the partner may hold credentials with `scopes` (as PostgreSQL does).
fn credential_owner(p: &Partner, scopes: &[String]) -> StoreResult<()> {
    if !may_hold_credentials(p.status) {
        return Err(StoreError::FailedPrecondition {
            reason: "INVALID_PARTNER_STATUS",
            message: format!(
                "the partner is {}; credentials need APPROVED or ACTIVE",
                p.status
            ),
        });
    }
    let outside: Vec<&str> = scopes
        .iter()
        .filter(|s| !p.scopes.contains(s))
        .map(String::as_str)
        .collect();
    if !outside.is_empty() {
        return Err(StoreError::InvalidArgument {
            field: "scopes",
            message: format!("not granted to the partner: {}", outside.join(", ")),
        });
    }
    Ok(())
}

/// A credential change: the partner's version and `updatedAt` move, as in legacy
/// (which did not set `updatedBy` on these).
fn touch(p: &mut Partner, now: DateTime<Utc>) {
    p.version += 1;
    p.updated_at = now;
}

/// Revokes the API key `key` in the record.
fn revoke_key(rec: &mut PartnerRecord, key: Uuid, now: DateTime<Utc>) -> StoreResult<ApiKey> {
    let (k, _) = rec
        .api_keys
        .iter_mut()
        .find(|(k, _)| k.id == key)
        .ok_or(StoreError::NotFound { entity: "api key" })?;
    if k.status == CredentialStatus::Revoked {
        return Err(StoreError::FailedPrecondition {
            reason: "ALREADY_REVOKED",
            message: "the API key is revoked".into(),
        });
    }
    k.status = CredentialStatus::Revoked;
    k.revoked_at = Some(now);
    Ok(k.clone())
}

/// Appends a new active API key to the record.
fn add_key(rec: &mut PartnerRecord, key: &NewApiKey, now: DateTime<Utc>) -> StoreResult<ApiKey> {
    if rec.api_keys.iter().any(|(k, _)| k.id == key.id) {
        return Err(duplicate("api key id"));
    }
    let k = ApiKey {
        id: key.id,
        name: key.name.clone(),
        key_prefix: key.key_prefix.clone(),
        scopes: key.scopes.clone(),
        expires_at: key.expires_at,
        created_at: now,
        revoked_at: None,
        status: CredentialStatus::Active,
    };
    rec.api_keys.push((k.clone(), key.key_hash.clone()));
    Ok(k)
}

impl DynamoStore {
    /// The partner's record and the item it was read from.
    async fn read_partner(
        &self,
        tenant: &TenantId,
        id: Uuid,
    ) -> StoreResult<(PartnerRecord, Item)> {
        let table = &self.tables.partners;
        match self
            .get_item(table, tenant.as_str(), &id.to_string())
            .await?
        {
            Some(item) => Ok((from_item(&item)?, item)),
            None => Err(NOT_FOUND),
        }
    }

    /// Writes `rec` if the stored version is still `read_version`, keeping the legacy
    /// attributes of credential elements from `read` (the item as read); `Ok(false)`
    /// when the partner changed meanwhile.
    async fn write_partner(
        &self,
        rec: &PartnerRecord,
        read: &Item,
        read_version: i64,
    ) -> StoreResult<bool> {
        let mut w = overwrite(rec, Expect::Version(read_version))?;
        keep_legacy_in_overwrite(&mut w, read);
        self.overwrite(&self.tables.partners, w).await
    }

    /// Read, `change`, write conditional on the version read; a concurrent write in
    /// between is retried (with `expected` pinned the re-read then answers Conflict).
    /// Returns what `change` returned and the record written.
    async fn change_partner<T>(
        &self,
        tenant: &TenantId,
        id: Uuid,
        expected: Option<i64>,
        mut change: impl FnMut(&mut PartnerRecord, DateTime<Utc>) -> StoreResult<T>,
    ) -> StoreResult<(T, PartnerRecord)> {
        for _ in 0..ATTEMPTS {
            let (mut rec, read) = self.read_partner(tenant, id).await?;
            check_version(expected, rec.partner.version)?;
            let read_version = rec.partner.version;
            let out = change(&mut rec, super::item::now())?;
            if self.write_partner(&rec, &read, read_version).await? {
                return Ok((out, rec));
            }
        }
        Err(kept_changing())
    }

    /// The claim of `email` (a partner's `contactEmail`) in tenant `t` by partner `owner`.
    fn email_claim<'a>(&'a self, t: &'a TenantId, email: &'a str, owner: &'a str) -> Claim<'a> {
        let guarded: super::Guarded = (
            "partner-email",
            self.tables.partners.as_str(),
            &["contactEmail"],
        );
        Claim::new(&self.tables, t.as_str(), guarded, email, owner)
    }

    /// True when a partner of the tenant other than `except` has `email` as its
    /// contact email (a base-table query with a filter, following every page).
    async fn partner_email_taken(
        &self,
        tenant: &TenantId,
        email: &str,
        except: Option<Uuid>,
    ) -> StoreResult<bool> {
        let mut q = Query::tenant(&self.tables.partners, tenant.as_str());
        q.filter_eq("contactEmail", Some(email));
        let except = except.map(|id| id.to_string());
        let found = self.query(&q, 2).await?;
        Ok(found.iter().any(|i| match i.get("id") {
            Some(AttributeValue::S(id)) => Some(id) != except.as_ref(),
            _ => true,
        }))
    }
}

#[async_trait]
impl PartnerStore for DynamoStore {
    async fn register(&self, ctx: &Ctx, new: NewPartner) -> StoreResult<Partner> {
        self.timed("partners.register", async {
            // Checked through the table (legacy items have no claim), then claimed in
            // the unique-keys table in the same transaction as the put, so two
            // concurrent registrations with one email cannot both succeed.
            if self
                .partner_email_taken(&ctx.tenant, &new.profile.contact_email, None)
                .await?
            {
                return Err(email_taken());
            }
            let now = super::item::now();
            let partner = Partner {
                tenant_id: ctx.tenant.clone(),
                id: new.id,
                status: PartnerStatus::Pending,
                profile: new.profile,
                intended_use: new.intended_use,
                requested_scopes: new.requested_scopes,
                scopes: Vec::new(),
                rate_limit_per_minute: 0,
                rate_limit_per_day: 0,
                monthly_quota: 0,
                transitions: Vec::new(),
                version: 1,
                created_at: now,
                updated_at: now,
                created_by: ctx.actor.as_str().to_owned(),
                updated_by: None,
            };
            let rec = PartnerRecord {
                partner,
                api_keys: Vec::new(),
                oauth_clients: Vec::new(),
                webhooks: Vec::new(),
            };
            let mut item = to_item(&rec)?;
            // Legacy creates these empty; this service does not model them and keeps
            // whatever a legacy writer puts there later.
            for k in ["subscribedPackages", "publishedPackages"] {
                item.insert(k.to_owned(), AttributeValue::L(Vec::new()));
            }
            let sid = rec.partner.id.to_string();
            let claim = self.email_claim(&ctx.tenant, &rec.partner.profile.contact_email, &sid);
            let items = vec![
                super::assets::put_new_item(&self.tables.partners, item)?,
                claim.take()?,
            ];
            for _ in 0..ATTEMPTS {
                match self.transact_once(items.clone()).await? {
                    None => return Ok(rec.partner),
                    Some(0) => return Err(duplicate("id")),
                    Some(_) if self.claim_taken(&claim).await? => return Err(email_taken()),
                    // A stale claim, dropped: again.
                    Some(_) => {}
                }
            }
            Err(kept_changing())
        })
        .await
    }

    async fn get(&self, tenant: &TenantId, id: Uuid) -> StoreResult<Partner> {
        self.timed("partners.get", async {
            Ok(self.read_partner(tenant, id).await?.0.partner)
        })
        .await
    }

    async fn update(
        &self,
        ctx: &Ctx,
        id: Uuid,
        patch: PartnerPatch,
        expected: Option<i64>,
    ) -> StoreResult<Partner> {
        self.timed("partners.update", async {
            for _ in 0..ATTEMPTS {
                let (mut rec, read) = self.read_partner(&ctx.tenant, id).await?;
                check_version(expected, rec.partner.version)?;
                let read_version = rec.partner.version;
                let old_email = rec.partner.profile.contact_email.clone();
                let p = &mut rec.partner;
                patch.clone().apply(&mut p.profile);
                p.version += 1;
                p.updated_at = super::item::now();
                p.updated_by = Some(ctx.actor.as_str().to_owned());
                if p.profile.contact_email == old_email {
                    if self.write_partner(&rec, &read, read_version).await? {
                        return Ok(rec.partner);
                    }
                    continue;
                }
                // A new email, as in register: checked, claimed, and the old one
                // released, with the write.
                if self
                    .partner_email_taken(&ctx.tenant, &p.profile.contact_email, Some(id))
                    .await?
                {
                    return Err(email_taken());
                }
                let sid = id.to_string();
                let new_email = p.profile.contact_email.clone();
                let claim = self.email_claim(&ctx.tenant, &new_email, &sid);
                let old = self.email_claim(&ctx.tenant, &old_email, &sid);
                let mut w = overwrite(&rec, Expect::Version(read_version))?;
                keep_legacy_in_overwrite(&mut w, &read);
                let mut items = vec![claim.take()?, w.transact_item(&self.tables.partners)?];
                items.extend(self.releases(&old).await?);
                let Some(codes) = self.transact(items).await? else {
                    return Ok(rec.partner);
                };
                if codes.first().is_some_and(|c| c == "ConditionalCheckFailed")
                    && self.claim_taken(&claim).await?
                {
                    return Err(email_taken());
                }
            }
            Err(kept_changing())
        })
        .await
    }

    async fn list(
        &self,
        tenant: &TenantId,
        status: Option<PartnerStatus>,
        page: &PageRequest,
    ) -> StoreResult<Page<Partner>> {
        self.timed("partners.list", async {
            let t = tenant.as_str();
            // The base table in id order with the status as a filter (not gsi-status,
            // whose order within one status is not the id order pages follow).
            let mut q = Query::tenant(&self.tables.partners, t);
            q.filter_eq("status", status.map(PartnerStatus::as_str));
            if let Some(after) = &page.after {
                let after = Uuid::parse_str(after).map_err(|_| bad_cursor())?;
                q.start = Some(super::key(t, &after.to_string()));
            }
            let rows = self
                .query(&q, page.size + 1)
                .await?
                .iter()
                .map(|i| from_item(i).map(|r| r.partner))
                .collect::<StoreResult<Vec<_>>>()?;
            Ok(Page::from_overfetch(rows, page.size, |p| p.id.to_string()))
        })
        .await
    }

    async fn transition(
        &self,
        ctx: &Ctx,
        id: Uuid,
        action: LifecycleAction,
    ) -> StoreResult<Partner> {
        self.timed("partners.transition", async {
            let (_, rec) = self
                .change_partner(&ctx.tenant, id, None, |rec, now| {
                    let p = &mut rec.partner;
                    if !action.allowed_from(p.status) {
                        return Err(StoreError::FailedPrecondition {
                            reason: "INVALID_PARTNER_STATUS",
                            message: format!(
                                "cannot move a {} partner to {}",
                                p.status,
                                action.target()
                            ),
                        });
                    }
                    action.clone().apply(p, ctx.actor.as_str(), now);
                    Ok(())
                })
                .await?;
            Ok(rec.partner)
        })
        .await
    }

    async fn create_api_key(
        &self,
        ctx: &Ctx,
        partner: Uuid,
        key: NewApiKey,
    ) -> StoreResult<ApiKey> {
        self.timed("partners.create_api_key", async {
            let (created, _) = self
                .change_partner(&ctx.tenant, partner, None, |rec, now| {
                    credential_owner(&rec.partner, &key.scopes)?;
                    let created = add_key(rec, &key, now)?;
                    touch(&mut rec.partner, now);
                    Ok(created)
                })
                .await?;
            Ok(created)
        })
        .await
    }

    async fn list_api_keys(
        &self,
        tenant: &TenantId,
        partner: Uuid,
        status: Option<CredentialStatus>,
    ) -> StoreResult<Vec<ApiKey>> {
        self.timed("partners.list_api_keys", async {
            let (rec, _) = self.read_partner(tenant, partner).await?;
            let mut keys: Vec<ApiKey> = rec
                .api_keys
                .into_iter()
                .map(|(k, _)| k)
                .filter(|k| status.is_none_or(|s| k.status == s))
                .collect();
            keys.sort_by_key(|k| (k.created_at, k.id));
            Ok(keys)
        })
        .await
    }

    async fn revoke_api_key(&self, ctx: &Ctx, partner: Uuid, key: Uuid) -> StoreResult<ApiKey> {
        self.timed("partners.revoke_api_key", async {
            let (revoked, _) = self
                .change_partner(&ctx.tenant, partner, None, |rec, now| {
                    let revoked = revoke_key(rec, key, now)?;
                    touch(&mut rec.partner, now);
                    Ok(revoked)
                })
                .await?;
            Ok(revoked)
        })
        .await
    }

    /// One conditional write revokes the old key and appends the new one: atomic,
    /// unlike legacy's two updates, because both live in the partner item.
    async fn rotate_api_key(
        &self,
        ctx: &Ctx,
        partner: Uuid,
        old: Uuid,
        new: NewApiKey,
    ) -> StoreResult<ApiKey> {
        self.timed("partners.rotate_api_key", async {
            let (created, _) = self
                .change_partner(&ctx.tenant, partner, None, |rec, now| {
                    credential_owner(&rec.partner, &[])?;
                    let revoked = revoke_key(rec, old, now)?;
                    let mut new = new.clone();
                    new.name = revoked.name;
                    new.scopes = revoked.scopes;
                    new.expires_at = revoked.expires_at;
                    let created = add_key(rec, &new, now)?;
                    touch(&mut rec.partner, now);
                    Ok(created)
                })
                .await?;
            Ok(created)
        })
        .await
    }

    async fn create_oauth_client(
        &self,
        ctx: &Ctx,
        partner: Uuid,
        c: NewOAuthClient,
    ) -> StoreResult<OAuthClient> {
        self.timed("partners.create_oauth_client", async {
            let (created, _) = self
                .change_partner(&ctx.tenant, partner, None, |rec, now| {
                    credential_owner(&rec.partner, &c.scopes)?;
                    if rec
                        .oauth_clients
                        .iter()
                        .any(|(o, _)| o.client_id == c.client_id)
                    {
                        return Err(duplicate("oauth client id"));
                    }
                    let client = OAuthClient {
                        client_id: c.client_id.clone(),
                        name: c.name.clone(),
                        redirect_uris: c.redirect_uris.clone(),
                        scopes: c.scopes.clone(),
                        grant_types: c.grant_types.clone(),
                        created_at: now,
                        revoked_at: None,
                        status: CredentialStatus::Active,
                    };
                    rec.oauth_clients
                        .push((client.clone(), c.secret_hash.clone()));
                    touch(&mut rec.partner, now);
                    Ok(client)
                })
                .await?;
            Ok(created)
        })
        .await
    }

    async fn list_oauth_clients(
        &self,
        tenant: &TenantId,
        partner: Uuid,
        status: Option<CredentialStatus>,
    ) -> StoreResult<Vec<OAuthClient>> {
        self.timed("partners.list_oauth_clients", async {
            let (rec, _) = self.read_partner(tenant, partner).await?;
            let mut clients: Vec<OAuthClient> = rec
                .oauth_clients
                .into_iter()
                .map(|(c, _)| c)
                .filter(|c| status.is_none_or(|s| c.status == s))
                .collect();
            clients.sort_by(|a, b| (a.created_at, &a.client_id).cmp(&(b.created_at, &b.client_id)));
            Ok(clients)
        })
        .await
    }

    async fn revoke_oauth_client(
        &self,
        ctx: &Ctx,
        partner: Uuid,
        client_id: &str,
    ) -> StoreResult<OAuthClient> {
        self.timed("partners.revoke_oauth_client", async {
            let (revoked, _) = self
                .change_partner(&ctx.tenant, partner, None, |rec, now| {
                    let (c, _) = rec
                        .oauth_clients
                        .iter_mut()
                        .find(|(c, _)| c.client_id == client_id)
                        .ok_or(StoreError::NotFound {
                            entity: "oauth client",
                        })?;
                    if c.status == CredentialStatus::Revoked {
                        return Err(StoreError::FailedPrecondition {
                            reason: "ALREADY_REVOKED",
                            message: "the OAuth client is revoked".into(),
                        });
                    }
                    c.status = CredentialStatus::Revoked;
                    c.revoked_at = Some(now);
                    let revoked = c.clone();
                    touch(&mut rec.partner, now);
                    Ok(revoked)
                })
                .await?;
            Ok(revoked)
        })
        .await
    }

    async fn create_webhook(
        &self,
        ctx: &Ctx,
        partner: Uuid,
        hook: NewWebhook,
    ) -> StoreResult<Webhook> {
        self.timed("partners.create_webhook", async {
            let (created, _) = self
                .change_partner(&ctx.tenant, partner, None, |rec, now| {
                    credential_owner(&rec.partner, &[])?;
                    if rec.webhooks.iter().any(|(w, _)| w.id == hook.id) {
                        return Err(duplicate("webhook id"));
                    }
                    let created = Webhook {
                        id: hook.id,
                        url: hook.url.clone(),
                        events: hook.events.clone(),
                        enabled: hook.enabled,
                        created_at: now,
                    };
                    rec.webhooks
                        .push((created.clone(), hook.secret_hash.clone()));
                    touch(&mut rec.partner, now);
                    Ok(created)
                })
                .await?;
            Ok(created)
        })
        .await
    }

    async fn list_webhooks(&self, tenant: &TenantId, partner: Uuid) -> StoreResult<Vec<Webhook>> {
        self.timed("partners.list_webhooks", async {
            let (rec, _) = self.read_partner(tenant, partner).await?;
            let mut hooks: Vec<Webhook> = rec.webhooks.into_iter().map(|(w, _)| w).collect();
            hooks.sort_by_key(|w| (w.created_at, w.id));
            Ok(hooks)
        })
        .await
    }

    async fn delete_webhook(&self, ctx: &Ctx, partner: Uuid, webhook: Uuid) -> StoreResult<()> {
        self.timed("partners.delete_webhook", async {
            self.change_partner(&ctx.tenant, partner, None, |rec, now| {
                let at = rec
                    .webhooks
                    .iter()
                    .position(|(w, _)| w.id == webhook)
                    .ok_or(StoreError::NotFound { entity: "webhook" })?;
                rec.webhooks.remove(at);
                touch(&mut rec.partner, now);
                Ok(())
            })
            .await?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> AttributeValue {
        AttributeValue::S(v.to_owned())
    }

    fn l(v: &[&str]) -> AttributeValue {
        AttributeValue::L(v.iter().map(|x| s(x)).collect())
    }

    fn m(pairs: Vec<(&str, AttributeValue)>) -> AttributeValue {
        AttributeValue::M(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }

    fn t(v: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(v).unwrap().with_timezone(&Utc)
    }

    const PARTNER: &str = "6f1c2a9e-3b4d-4e5f-8a7b-1c2d3e4f5a6b";
    const KEY: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
    const REVOKED_KEY: &str = "1a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
    const HOOK: &str = "2a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
    const HASH_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const HASH_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const HASH_C: &str = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";
    const HASH_D: &str = "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd";

    /// An approved partner as the legacy Node code left it: no statusHistory, no
    /// intendedUse, contactPhone NULL, timestamps without milliseconds.
    fn legacy_item() -> Item {
        let attrs = vec![
            ("tenantId", s("tenant-default")),
            ("id", s(PARTNER)),
            ("status", s("APPROVED")),
            ("companyName", s("Acme Integrations")),
            ("companyWebsite", s("https://acme.example")),
            ("companyDescription", s("We integrate things")),
            ("industry", s("IoT")),
            ("country", s("BR")),
            ("contactName", s("Ana")),
            ("contactEmail", s("ana@acme.example")),
            ("contactPhone", AttributeValue::Null(true)),
            ("technicalContactEmail", s("tech@acme.example")),
            (
                "apiKeys",
                AttributeValue::L(vec![
                    m(vec![
                        ("id", s(KEY)),
                        ("keyHash", s(HASH_A)),
                        ("keyPrefix", s("gcdr_liv")),
                        ("name", s("prod")),
                        ("scopes", l(&["devices:read"])),
                        ("expiresAt", s("2027-01-01T00:00:00Z")),
                        ("createdAt", s("2026-01-21T10:00:00Z")),
                        ("status", s("ACTIVE")),
                    ]),
                    m(vec![
                        ("id", s(REVOKED_KEY)),
                        ("keyHash", s(HASH_B)),
                        ("keyPrefix", s("gcdr_liv")),
                        ("name", s("old")),
                        ("scopes", l(&[])),
                        ("createdAt", s("2026-01-20T10:00:00Z")),
                        ("revokedAt", s("2026-01-21T09:00:00.5Z")),
                        ("status", s("REVOKED")),
                    ]),
                ]),
            ),
            (
                "oauthClients",
                AttributeValue::L(vec![m(vec![
                    ("clientId", s("gcdr_3a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d")),
                    ("clientSecretHash", s(HASH_C)),
                    ("name", s("backend")),
                    ("redirectUris", l(&[])),
                    ("scopes", l(&["devices:read"])),
                    ("grantTypes", l(&["client_credentials"])),
                    ("createdAt", s("2026-01-21T11:00:00Z")),
                    ("status", s("ACTIVE")),
                ])]),
            ),
            (
                "webhooks",
                AttributeValue::L(vec![m(vec![
                    ("id", s(HOOK)),
                    ("url", s("https://acme.example/hook")),
                    ("events", l(&["device.created"])),
                    ("secretHash", s(HASH_D)),
                    ("enabled", AttributeValue::Bool(true)),
                    ("createdAt", s("2026-01-21T12:00:00Z")),
                    ("updatedAt", s("2026-01-22T12:00:00Z")),
                    ("lastDeliveryAt", s("2026-01-23T12:00:00Z")),
                    ("lastDeliveryStatus", s("success")),
                    ("failureCount", AttributeValue::N("2".into())),
                ])]),
            ),
            ("scopes", l(&["devices:read", "assets:read"])),
            ("rateLimitPerMinute", AttributeValue::N("100".into())),
            ("rateLimitPerDay", AttributeValue::N("10000".into())),
            ("monthlyQuota", AttributeValue::N("100000".into())),
            ("subscribedPackages", l(&[])),
            ("publishedPackages", l(&[])),
            ("approvedAt", s("2026-01-20T15:00:00Z")),
            ("approvedBy", s("admin-1")),
            ("version", AttributeValue::N("5".into())),
            ("createdAt", s("2026-01-19T08:00:00Z")),
            ("updatedAt", s("2026-01-21T12:00:00Z")),
            ("createdBy", s("system")),
        ];
        attrs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    fn element<'a>(item: &'a Item, list: &str, i: usize) -> &'a Item {
        match item.get(list) {
            Some(AttributeValue::L(l)) => match &l[i] {
                AttributeValue::M(m) => m,
                other => panic!("{list}[{i}] is {other:?}"),
            },
            other => panic!("{list} is {other:?}"),
        }
    }

    fn has_null(v: &AttributeValue) -> bool {
        match v {
            AttributeValue::Null(_) => true,
            AttributeValue::L(l) => l.iter().any(has_null),
            AttributeValue::M(m) => m.values().any(has_null),
            _ => false,
        }
    }

    #[test]
    fn a_legacy_item_is_read_with_its_credentials_and_rebuilt_transitions() {
        let rec = from_item(&legacy_item()).unwrap();
        let p = &rec.partner;
        assert_eq!(p.id.to_string(), PARTNER);
        assert_eq!(p.status, PartnerStatus::Approved);
        assert_eq!(p.profile.company_name, "Acme Integrations");
        assert_eq!(p.profile.contact_phone, None);
        assert_eq!(p.profile.webhook_url, None);
        assert!(p.profile.ip_whitelist.is_empty());
        assert_eq!(p.intended_use, "");
        assert!(p.requested_scopes.is_empty());
        assert_eq!(p.scopes, ["devices:read", "assets:read"]);
        assert_eq!(
            (
                p.rate_limit_per_minute,
                p.rate_limit_per_day,
                p.monthly_quota
            ),
            (100, 10000, 100000)
        );
        assert_eq!(p.version, 5);
        assert_eq!(p.created_at, t("2026-01-19T08:00:00Z"));
        assert_eq!(p.updated_by, None);
        assert_eq!(
            p.transitions,
            [Transition {
                status: "APPROVED".into(),
                actor: "admin-1".into(),
                time: t("2026-01-20T15:00:00Z"),
                reason: None,
            }]
        );

        assert_eq!(rec.api_keys.len(), 2);
        let (key, hash) = &rec.api_keys[0];
        assert_eq!(key.id.to_string(), KEY);
        assert_eq!(hash, HASH_A);
        assert_eq!(key.status, CredentialStatus::Active);
        assert_eq!(key.expires_at, Some(t("2027-01-01T00:00:00Z")));
        assert_eq!(key.revoked_at, None);
        let (old, hash) = &rec.api_keys[1];
        assert_eq!(hash, HASH_B);
        assert_eq!(old.status, CredentialStatus::Revoked);
        assert_eq!(old.revoked_at, Some(t("2026-01-21T09:00:00.500Z")));

        let (client, hash) = &rec.oauth_clients[0];
        assert_eq!(hash, HASH_C);
        assert_eq!(client.grant_types, ["client_credentials"]);
        assert!(client.redirect_uris.is_empty());
        let (hook, hash) = &rec.webhooks[0];
        assert_eq!(hash, HASH_D);
        assert!(hook.enabled);
        assert_eq!(hook.events, ["device.created"]);
    }

    #[test]
    fn a_legacy_item_is_written_back_without_null_with_hashes_and_lifecycle_attributes() {
        let legacy = legacy_item();
        let rec = from_item(&legacy).unwrap();
        let item = to_item(&rec).unwrap();
        assert!(!item.values().any(has_null), "no NULL attribute: {item:?}");
        assert!(!item.contains_key("contactPhone"));
        assert!(!item.contains_key("webhookUrl"));
        assert_eq!(item["approvedAt"], s("2026-01-20T15:00:00.000Z"));
        assert_eq!(item["approvedBy"], s("admin-1"));
        assert!(!item.contains_key("rejectedAt") && !item.contains_key("suspendedAt"));
        assert_eq!(item["status"], s("APPROVED"));
        assert_eq!(item["version"], AttributeValue::N("5".into()));
        assert_eq!(element(&item, "apiKeys", 0)["keyHash"], s(HASH_A));
        assert_eq!(element(&item, "apiKeys", 1)["keyHash"], s(HASH_B));
        assert_eq!(
            element(&item, "apiKeys", 1)["revokedAt"],
            s("2026-01-21T09:00:00.500Z")
        );
        assert!(!element(&item, "apiKeys", 1).contains_key("expiresAt"));
        assert_eq!(
            element(&item, "oauthClients", 0)["clientSecretHash"],
            s(HASH_C)
        );
        assert_eq!(element(&item, "webhooks", 0)["secretHash"], s(HASH_D));
        assert_eq!(element(&item, "statusHistory", 0)["status"], s("APPROVED"));
        // No secret or plaintext-looking attribute besides the hashes.
        let text = format!("{item:?}");
        assert!(!text.contains("gcdr_live_") && !text.contains("whsec_"));
        // The record survives a round trip through the item.
        assert_eq!(from_item(&item).unwrap(), rec);

        // An overwrite of the record removes what it no longer has, and the store's
        // own writes keep the legacy-only element attributes of the item read.
        let mut w = overwrite(&rec, Expect::Version(5)).unwrap();
        assert!(w.expression.contains(" REMOVE "));
        assert!(w.names.values().any(|n| n == "contactPhone"));
        assert!(!w.values.values().any(has_null));
        keep_legacy_in_overwrite(&mut w, &legacy);
        let (name, _) = w.names.iter().find(|(_, a)| *a == "webhooks").unwrap();
        let hooks: Item = [(
            "webhooks".to_owned(),
            w.values[&name.replacen('#', ":", 1)].clone(),
        )]
        .into_iter()
        .collect();
        let hook = element(&hooks, "webhooks", 0);
        assert_eq!(hook["failureCount"], AttributeValue::N("2".into()));
        assert_eq!(hook["updatedAt"], s("2026-01-22T12:00:00Z"));
        assert_eq!(hook["lastDeliveryStatus"], s("success"));
        assert_eq!(hook["url"], s("https://acme.example/hook"));
        assert_eq!(hook["secretHash"], s(HASH_D));
    }

    #[test]
    fn lifecycle_attributes_follow_the_latest_transition_of_each_kind() {
        let mut rec = from_item(&legacy_item()).unwrap();
        let p = &mut rec.partner;
        LifecycleAction::Suspend {
            reason: "abuse of the API".into(),
        }
        .apply(p, "admin-2", t("2026-02-01T00:00:00Z"));
        LifecycleAction::Activate.apply(p, "admin-3", t("2026-02-02T00:00:00Z"));
        LifecycleAction::Suspend {
            reason: "again, abuse".into(),
        }
        .apply(p, "admin-4", t("2026-02-03T00:00:00Z"));
        let item = to_item(&rec).unwrap();
        assert_eq!(item["status"], s("SUSPENDED"));
        assert_eq!(item["suspendedAt"], s("2026-02-03T00:00:00.000Z"));
        assert_eq!(item["suspendedBy"], s("admin-4"));
        assert_eq!(item["suspensionReason"], s("again, abuse"));
        assert_eq!(item["activatedBy"], s("admin-3"));
        assert_eq!(item["approvedBy"], s("admin-1"));
        let back = from_item(&item).unwrap();
        assert_eq!(back.partner.transitions.len(), 4);
        assert_eq!(back, rec);

        // A legacy writer then activates it: the history gains the newer activation.
        let mut item = item;
        item.insert("status".into(), s("ACTIVE"));
        item.insert("activatedAt".into(), s("2026-02-04T00:00:00Z"));
        item.insert("activatedBy".into(), s("legacy-admin"));
        let back = from_item(&item).unwrap();
        let last = back.partner.transitions.last().unwrap();
        assert_eq!(
            (last.status.as_str(), last.actor.as_str()),
            ("ACTIVE", "legacy-admin")
        );
        assert_eq!(back.partner.transitions.len(), 5);
    }

    #[test]
    fn rotation_and_credential_checks_work_on_the_record() {
        let mut rec = from_item(&legacy_item()).unwrap();
        let now = t("2026-03-01T00:00:00Z");
        let err = revoke_key(&mut rec, Uuid::parse_str(REVOKED_KEY).unwrap(), now).unwrap_err();
        assert!(matches!(
            err,
            StoreError::FailedPrecondition {
                reason: "ALREADY_REVOKED",
                ..
            }
        ));
        let err = revoke_key(&mut rec, Uuid::new_v4(), now).unwrap_err();
        assert!(matches!(err, StoreError::NotFound { entity: "api key" }));
        let err = credential_owner(&rec.partner, &["rules:write".into()]).unwrap_err();
        assert!(matches!(
            err,
            StoreError::InvalidArgument {
                field: "scopes",
                ..
            }
        ));
        rec.partner.status = PartnerStatus::Suspended;
        assert!(matches!(
            credential_owner(&rec.partner, &[]),
            Err(StoreError::FailedPrecondition {
                reason: "INVALID_PARTNER_STATUS",
                ..
            })
        ));
    }
}
