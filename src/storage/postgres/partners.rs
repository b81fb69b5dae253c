//! Partners and their credentials in PostgreSQL. Credential tables hold only hashes;
//! their row types have no field for a secret to leak from.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::json::{JsonText, from_json, to_json};
use super::schema::partners::{self, dsl};
use super::schema::{partner_api_keys as k, partner_oauth_clients as o, partner_webhooks as w};
use super::{PgStore, bad_cursor, check_version};
use super::{tx, tx_if_copied};
use crate::domain::partner::{
    ApiKey, CredentialStatus, LifecycleAction, NewApiKey, NewOAuthClient, NewPartner, NewWebhook,
    OAuthClient, Partner, PartnerPatch, PartnerProfile, PartnerRecord, PartnerStatus, Webhook,
    may_hold_credentials,
};
use crate::domain::{Ctx, Page, PageRequest, TenantId};
use crate::storage::{PartnerStore, StoreError, StoreResult};

/// One row of `partners`.
#[derive(Clone, Debug, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = partners, primary_key(tenant_id, id), treat_none_as_null = true)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub(super) struct PartnerRow {
    tenant_id: String,
    id: Uuid,
    status: String,
    company_name: String,
    company_website: String,
    company_description: String,
    industry: String,
    country: String,
    contact_name: String,
    contact_email: String,
    contact_phone: Option<String>,
    technical_contact_email: String,
    intended_use: String,
    requested_scopes: Vec<String>,
    webhook_url: Option<String>,
    ip_whitelist: Vec<String>,
    scopes: Vec<String>,
    rate_limit_per_minute: i32,
    rate_limit_per_day: i32,
    monthly_quota: i32,
    transitions: JsonText,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    created_by: String,
    updated_by: Option<String>,
}

impl PartnerRow {
    pub(super) fn from_domain(p: &Partner) -> StoreResult<Self> {
        let f = &p.profile;
        Ok(Self {
            tenant_id: p.tenant_id.as_str().to_owned(),
            id: p.id,
            status: p.status.as_str().to_owned(),
            company_name: f.company_name.clone(),
            company_website: f.company_website.clone(),
            company_description: f.company_description.clone(),
            industry: f.industry.clone(),
            country: f.country.clone(),
            contact_name: f.contact_name.clone(),
            contact_email: f.contact_email.clone(),
            contact_phone: f.contact_phone.clone(),
            technical_contact_email: f.technical_contact_email.clone(),
            intended_use: p.intended_use.clone(),
            requested_scopes: p.requested_scopes.clone(),
            webhook_url: f.webhook_url.clone(),
            ip_whitelist: f.ip_whitelist.clone(),
            scopes: p.scopes.clone(),
            rate_limit_per_minute: p.rate_limit_per_minute,
            rate_limit_per_day: p.rate_limit_per_day,
            monthly_quota: p.monthly_quota,
            transitions: to_json(&p.transitions)?,
            version: p.version,
            created_at: p.created_at,
            updated_at: p.updated_at,
            created_by: p.created_by.clone(),
            updated_by: p.updated_by.clone(),
        })
    }

    pub(super) fn into_domain(self) -> StoreResult<Partner> {
        let bad = |what: &str, v: &str| {
            StoreError::Internal(format!("partners row has bad {what} {v:?}").into())
        };
        Ok(Partner {
            tenant_id: TenantId::parse_owned(self.tenant_id).map_err(|t| bad("tenant_id", &t))?,
            id: self.id,
            status: PartnerStatus::parse(&self.status)
                .ok_or_else(|| bad("status", &self.status))?,
            profile: PartnerProfile {
                company_name: self.company_name,
                company_website: self.company_website,
                company_description: self.company_description,
                industry: self.industry,
                country: self.country,
                contact_name: self.contact_name,
                contact_email: self.contact_email,
                contact_phone: self.contact_phone,
                technical_contact_email: self.technical_contact_email,
                webhook_url: self.webhook_url,
                ip_whitelist: self.ip_whitelist,
            },
            intended_use: self.intended_use,
            requested_scopes: self.requested_scopes,
            scopes: self.scopes,
            rate_limit_per_minute: self.rate_limit_per_minute,
            rate_limit_per_day: self.rate_limit_per_day,
            monthly_quota: self.monthly_quota,
            transitions: from_json("partners", "transitions", &self.transitions)?,
            version: self.version,
            created_at: self.created_at,
            updated_at: self.updated_at,
            created_by: self.created_by,
            updated_by: self.updated_by,
        })
    }
}

/// The stored metadata of an API key: deliberately no hash column.
#[derive(Queryable, Selectable)]
#[diesel(table_name = k)]
#[diesel(check_for_backend(diesel::pg::Pg))]
struct ApiKeyRow {
    id: Uuid,
    name: String,
    key_prefix: String,
    scopes: Vec<String>,
    expires_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
    status: String,
}

impl ApiKeyRow {
    pub(super) fn into_domain(self) -> StoreResult<ApiKey> {
        Ok(ApiKey {
            id: self.id,
            name: self.name,
            key_prefix: self.key_prefix,
            scopes: self.scopes,
            expires_at: self.expires_at,
            created_at: self.created_at,
            revoked_at: self.revoked_at,
            status: credential_status(&self.status)?,
        })
    }
}

/// The stored metadata of an OAuth client: no secret column.
#[derive(Queryable, Selectable)]
#[diesel(table_name = o)]
#[diesel(check_for_backend(diesel::pg::Pg))]
struct OAuthClientRow {
    client_id: String,
    name: String,
    redirect_uris: Vec<String>,
    scopes: Vec<String>,
    grant_types: Vec<String>,
    created_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
    status: String,
}

impl OAuthClientRow {
    pub(super) fn into_domain(self) -> StoreResult<OAuthClient> {
        Ok(OAuthClient {
            client_id: self.client_id,
            name: self.name,
            redirect_uris: self.redirect_uris,
            scopes: self.scopes,
            grant_types: self.grant_types,
            created_at: self.created_at,
            revoked_at: self.revoked_at,
            status: credential_status(&self.status)?,
        })
    }
}

/// The stored metadata of a webhook: no secret column.
#[derive(Queryable, Selectable)]
#[diesel(table_name = w)]
#[diesel(check_for_backend(diesel::pg::Pg))]
struct WebhookRow {
    id: Uuid,
    url: String,
    events: Vec<String>,
    enabled: bool,
    created_at: DateTime<Utc>,
}

impl From<WebhookRow> for Webhook {
    fn from(r: WebhookRow) -> Self {
        Webhook {
            id: r.id,
            url: r.url,
            events: r.events,
            enabled: r.enabled,
            created_at: r.created_at,
        }
    }
}

fn credential_status(s: &str) -> StoreResult<CredentialStatus> {
    CredentialStatus::parse(s)
        .ok_or_else(|| StoreError::Internal(format!("bad credential status {s:?}").into()))
}

const NOT_FOUND: StoreError = StoreError::NotFound { entity: "partner" };

async fn find(
    conn: &mut AsyncPgConnection,
    tenant: &TenantId,
    id: Uuid,
    lock: bool,
) -> StoreResult<Partner> {
    let q = dsl::partners
        .find((tenant.as_str(), id))
        .select(PartnerRow::as_select());
    let row = if lock {
        q.for_update().first(conn).await
    } else {
        q.first(conn).await
    };
    row.optional()?.ok_or(NOT_FOUND)?.into_domain()
}

async fn write(conn: &mut AsyncPgConnection, p: &Partner) -> StoreResult<Partner> {
    diesel::update(dsl::partners.find((p.tenant_id.as_str(), p.id)))
        .set(&PartnerRow::from_domain(p)?)
        .returning(PartnerRow::as_returning())
        .get_result(conn)
        .await?
        .into_domain()
}

/// Locks the partner (so credential changes serialize with lifecycle changes) and
/// checks it may hold credentials with `scopes`.
async fn credential_owner(
    conn: &mut AsyncPgConnection,
    tenant: &TenantId,
    id: Uuid,
    scopes: &[String],
) -> StoreResult<()> {
    let p = find(conn, tenant, id, true).await?;
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

/// A credential change moves the partner's version and `updated_at`, as the legacy
/// service (and the DynamoDB backend) does, which did not set `updated_by` on these.
async fn touch(conn: &mut AsyncPgConnection, tenant: &TenantId, id: Uuid) -> StoreResult<()> {
    diesel::update(
        dsl::partners
            .filter(dsl::tenant_id.eq(tenant.as_str()))
            .filter(dsl::id.eq(id)),
    )
    .set((
        dsl::version.eq(dsl::version + 1),
        dsl::updated_at.eq(Utc::now()),
    ))
    .execute(conn)
    .await?;
    Ok(())
}

async fn exists(conn: &mut AsyncPgConnection, tenant: &TenantId, id: Uuid) -> StoreResult<()> {
    let found: bool = diesel::select(diesel::dsl::exists(
        dsl::partners.find((tenant.as_str(), id)),
    ))
    .get_result(conn)
    .await?;
    if found { Ok(()) } else { Err(NOT_FOUND) }
}

async fn insert_api_key(
    conn: &mut AsyncPgConnection,
    tenant: &TenantId,
    partner: Uuid,
    key: &NewApiKey,
) -> StoreResult<ApiKey> {
    diesel::insert_into(k::table)
        .values((
            k::tenant_id.eq(tenant.as_str()),
            k::partner_id.eq(partner),
            k::id.eq(key.id),
            k::name.eq(&key.name),
            k::key_hash.eq(&key.key_hash),
            k::key_prefix.eq(&key.key_prefix),
            k::scopes.eq(&key.scopes),
            k::expires_at.eq(key.expires_at),
            k::created_at.eq(Utc::now()),
            k::status.eq(CredentialStatus::Active.as_str()),
        ))
        .returning(ApiKeyRow::as_returning())
        .get_result(conn)
        .await?
        .into_domain()
}

async fn revoke_key(
    conn: &mut AsyncPgConnection,
    tenant: &TenantId,
    partner: Uuid,
    key: Uuid,
) -> StoreResult<ApiKey> {
    let current: ApiKey = k::table
        .find((tenant.as_str(), partner, key))
        .select(ApiKeyRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()?
        .ok_or(StoreError::NotFound { entity: "api key" })?
        .into_domain()?;
    if current.status == CredentialStatus::Revoked {
        return Err(StoreError::FailedPrecondition {
            reason: "ALREADY_REVOKED",
            message: "the API key is revoked".into(),
        });
    }
    diesel::update(k::table.find((tenant.as_str(), partner, key)))
        .set((
            k::status.eq(CredentialStatus::Revoked.as_str()),
            k::revoked_at.eq(Utc::now()),
        ))
        .returning(ApiKeyRow::as_returning())
        .get_result(conn)
        .await?
        .into_domain()
}

#[async_trait]
impl PartnerStore for PgStore {
    async fn register(&self, ctx: &Ctx, new: NewPartner) -> StoreResult<Partner> {
        self.timed("partners.register", async {
            let mut conn = self.conn().await?;
            let now = Utc::now();
            let p = Partner {
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
            let row = PartnerRow::from_domain(&p)?;
            let written: PartnerRow = tx_if_copied(&mut conn, async |conn| {
                diesel::insert_into(dsl::partners)
                    .values(row)
                    .returning(PartnerRow::as_returning())
                    .get_result(conn)
                    .await
                    .map_err(StoreError::from)
            })
            .await?;
            written.into_domain()
        })
        .await
    }

    async fn get(&self, tenant: &TenantId, id: Uuid) -> StoreResult<Partner> {
        self.timed("partners.get", async {
            find(&mut *self.conn().await?, tenant, id, false).await
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
            let mut conn = self.conn().await?;
            tx(&mut conn, async |conn| {
                let mut p = find(conn, &ctx.tenant, id, true).await?;
                check_version(expected, p.version)?;
                patch.apply(&mut p.profile);
                p.version += 1;
                p.updated_at = Utc::now();
                p.updated_by = Some(ctx.actor.as_str().to_owned());
                write(conn, &p).await
            })
            .await
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
            let mut conn = self.conn().await?;
            let mut q = dsl::partners
                .filter(dsl::tenant_id.eq(tenant.as_str()))
                .into_boxed();
            if let Some(s) = status {
                q = q.filter(dsl::status.eq(s.as_str()));
            }
            if let Some(after) = &page.after {
                q = q.filter(dsl::id.gt(Uuid::parse_str(after).map_err(|_| bad_cursor())?));
            }
            let rows: Vec<PartnerRow> = q
                .order(dsl::id)
                .limit(page.size as i64 + 1)
                .select(PartnerRow::as_select())
                .load(&mut conn)
                .await?;
            let items = rows
                .into_iter()
                .map(PartnerRow::into_domain)
                .collect::<StoreResult<Vec<_>>>()?;
            Ok(Page::from_overfetch(items, page.size, |p| p.id.to_string()))
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
            let mut conn = self.conn().await?;
            tx(&mut conn, async |conn| {
                let mut p = find(conn, &ctx.tenant, id, true).await?;
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
                action.apply(&mut p, ctx.actor.as_str(), Utc::now());
                write(conn, &p).await
            })
            .await
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
            let mut conn = self.conn().await?;
            tx(&mut conn, async |conn| {
                credential_owner(conn, &ctx.tenant, partner, &key.scopes).await?;
                touch(conn, &ctx.tenant, partner).await?;
                insert_api_key(conn, &ctx.tenant, partner, &key).await
            })
            .await
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
            let mut conn = self.conn().await?;
            exists(&mut conn, tenant, partner).await?;
            let mut q = k::table
                .filter(k::tenant_id.eq(tenant.as_str()))
                .filter(k::partner_id.eq(partner))
                .into_boxed();
            if let Some(s) = status {
                q = q.filter(k::status.eq(s.as_str()));
            }
            let rows: Vec<ApiKeyRow> = q
                .order((k::created_at, k::id))
                .select(ApiKeyRow::as_select())
                .load(&mut conn)
                .await?;
            rows.into_iter().map(ApiKeyRow::into_domain).collect()
        })
        .await
    }

    async fn revoke_api_key(&self, ctx: &Ctx, partner: Uuid, key: Uuid) -> StoreResult<ApiKey> {
        self.timed("partners.revoke_api_key", async {
            let mut conn = self.conn().await?;
            tx(&mut conn, async |conn| {
                find(conn, &ctx.tenant, partner, true).await?;
                touch(conn, &ctx.tenant, partner).await?;
                revoke_key(conn, &ctx.tenant, partner, key).await
            })
            .await
        })
        .await
    }

    async fn rotate_api_key(
        &self,
        ctx: &Ctx,
        partner: Uuid,
        old: Uuid,
        mut new: NewApiKey,
    ) -> StoreResult<ApiKey> {
        self.timed("partners.rotate_api_key", async {
            let mut conn = self.conn().await?;
            tx(&mut conn, async |conn| {
                let revoked = {
                    credential_owner(conn, &ctx.tenant, partner, &[]).await?;
                    touch(conn, &ctx.tenant, partner).await?;
                    revoke_key(conn, &ctx.tenant, partner, old).await?
                };
                new.name = revoked.name;
                new.scopes = revoked.scopes;
                new.expires_at = revoked.expires_at;
                insert_api_key(conn, &ctx.tenant, partner, &new).await
            })
            .await
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
            let mut conn = self.conn().await?;
            tx(&mut conn, async |conn| {
                credential_owner(conn, &ctx.tenant, partner, &c.scopes).await?;
                touch(conn, &ctx.tenant, partner).await?;
                diesel::insert_into(o::table)
                    .values((
                        o::tenant_id.eq(ctx.tenant.as_str()),
                        o::partner_id.eq(partner),
                        o::client_id.eq(&c.client_id),
                        o::name.eq(&c.name),
                        o::client_secret_hash.eq(&c.secret_hash),
                        o::redirect_uris.eq(&c.redirect_uris),
                        o::scopes.eq(&c.scopes),
                        o::grant_types.eq(&c.grant_types),
                        o::created_at.eq(Utc::now()),
                        o::status.eq(CredentialStatus::Active.as_str()),
                    ))
                    .returning(OAuthClientRow::as_returning())
                    .get_result(conn)
                    .await?
                    .into_domain()
            })
            .await
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
            let mut conn = self.conn().await?;
            exists(&mut conn, tenant, partner).await?;
            let mut q = o::table
                .filter(o::tenant_id.eq(tenant.as_str()))
                .filter(o::partner_id.eq(partner))
                .into_boxed();
            if let Some(s) = status {
                q = q.filter(o::status.eq(s.as_str()));
            }
            let rows: Vec<OAuthClientRow> = q
                .order((o::created_at, o::client_id))
                .select(OAuthClientRow::as_select())
                .load(&mut conn)
                .await?;
            rows.into_iter().map(OAuthClientRow::into_domain).collect()
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
            let mut conn = self.conn().await?;
            tx(&mut conn, async |conn| {
                find(conn, &ctx.tenant, partner, true).await?;
                touch(conn, &ctx.tenant, partner).await?;
                let updated = diesel::update(
                    o::table
                        .find((ctx.tenant.as_str(), partner, client_id))
                        .filter(o::status.eq(CredentialStatus::Active.as_str())),
                )
                .set((
                    o::status.eq(CredentialStatus::Revoked.as_str()),
                    o::revoked_at.eq(Utc::now()),
                ))
                .returning(OAuthClientRow::as_returning())
                .get_result(conn)
                .await
                .optional()?;
                match updated {
                    Some(row) => row.into_domain(),
                    None => {
                        let known: bool = diesel::select(diesel::dsl::exists(o::table.find((
                            ctx.tenant.as_str(),
                            partner,
                            client_id,
                        ))))
                        .get_result(conn)
                        .await?;
                        Err(if known {
                            StoreError::FailedPrecondition {
                                reason: "ALREADY_REVOKED",
                                message: "the OAuth client is revoked".into(),
                            }
                        } else {
                            StoreError::NotFound {
                                entity: "oauth client",
                            }
                        })
                    }
                }
            })
            .await
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
            let mut conn = self.conn().await?;
            tx(&mut conn, async |conn| {
                credential_owner(conn, &ctx.tenant, partner, &[]).await?;
                touch(conn, &ctx.tenant, partner).await?;
                let row: WebhookRow = diesel::insert_into(w::table)
                    .values((
                        w::tenant_id.eq(ctx.tenant.as_str()),
                        w::partner_id.eq(partner),
                        w::id.eq(hook.id),
                        w::url.eq(&hook.url),
                        w::events.eq(&hook.events),
                        w::secret_hash.eq(&hook.secret_hash),
                        w::enabled.eq(hook.enabled),
                        w::created_at.eq(Utc::now()),
                    ))
                    .returning(WebhookRow::as_returning())
                    .get_result(conn)
                    .await?;
                Ok(row.into())
            })
            .await
        })
        .await
    }

    async fn list_webhooks(&self, tenant: &TenantId, partner: Uuid) -> StoreResult<Vec<Webhook>> {
        self.timed("partners.list_webhooks", async {
            let mut conn = self.conn().await?;
            exists(&mut conn, tenant, partner).await?;
            let rows: Vec<WebhookRow> = w::table
                .filter(w::tenant_id.eq(tenant.as_str()))
                .filter(w::partner_id.eq(partner))
                .order((w::created_at, w::id))
                .select(WebhookRow::as_select())
                .load(&mut conn)
                .await?;
            Ok(rows.into_iter().map(Into::into).collect())
        })
        .await
    }

    async fn delete_webhook(&self, ctx: &Ctx, partner: Uuid, webhook: Uuid) -> StoreResult<()> {
        self.timed("partners.delete_webhook", async {
            let mut conn = self.conn().await?;
            tx(&mut conn, async |conn| {
                find(conn, &ctx.tenant, partner, true).await?;
                let n = diesel::delete(w::table.find((ctx.tenant.as_str(), partner, webhook)))
                    .execute(conn)
                    .await?;
                if n == 0 {
                    return Err(StoreError::NotFound { entity: "webhook" });
                }
                touch(conn, &ctx.tenant, partner).await
            })
            .await
        })
        .await
    }
}

/// The whole partner record, secrets' hashes included (for replication only).
pub(super) async fn load_record(
    conn: &mut AsyncPgConnection,
    tenant: &TenantId,
    id: Uuid,
) -> StoreResult<Option<PartnerRecord>> {
    let partner = match find(conn, tenant, id, false).await {
        Ok(p) => p,
        Err(StoreError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let keys: Vec<(ApiKeyRow, String)> = k::table
        .filter(k::tenant_id.eq(tenant.as_str()))
        .filter(k::partner_id.eq(id))
        .order((k::created_at, k::id))
        .select((ApiKeyRow::as_select(), k::key_hash))
        .load(conn)
        .await?;
    let clients: Vec<(OAuthClientRow, String)> = o::table
        .filter(o::tenant_id.eq(tenant.as_str()))
        .filter(o::partner_id.eq(id))
        .order((o::created_at, o::client_id))
        .select((OAuthClientRow::as_select(), o::client_secret_hash))
        .load(conn)
        .await?;
    let hooks: Vec<(WebhookRow, String)> = w::table
        .filter(w::tenant_id.eq(tenant.as_str()))
        .filter(w::partner_id.eq(id))
        .order((w::created_at, w::id))
        .select((WebhookRow::as_select(), w::secret_hash))
        .load(conn)
        .await?;
    Ok(Some(PartnerRecord {
        partner,
        api_keys: keys
            .into_iter()
            .map(|(r, h)| Ok((r.into_domain()?, h)))
            .collect::<StoreResult<_>>()?,
        oauth_clients: clients
            .into_iter()
            .map(|(r, h)| Ok((r.into_domain()?, h)))
            .collect::<StoreResult<_>>()?,
        webhooks: hooks.into_iter().map(|(r, h)| (r.into(), h)).collect(),
    }))
}

/// Writes the whole record unless the stored partner is newer (with `force`: whatever
/// the stored version); its keys, clients and webhooks are replaced with the record's.
/// Runs inside the caller's transaction.
pub(super) async fn write_record(
    conn: &mut AsyncPgConnection,
    rec: &PartnerRecord,
    force: bool,
) -> StoreResult<bool> {
    use diesel::upsert::excluded;
    let row = PartnerRow::from_domain(&rec.partner)?;
    let insert = diesel::insert_into(partners::table)
        .values(&row)
        .on_conflict((dsl::tenant_id, dsl::id))
        .do_update()
        .set(&row);
    let written = if force {
        insert.execute(conn).await?
    } else {
        diesel::query_dsl::methods::FilterDsl::filter(
            insert,
            dsl::version.le(excluded(dsl::version)),
        )
        .execute(conn)
        .await?
    } > 0;
    if !written {
        return Ok(false);
    }
    let tenant = rec.partner.tenant_id.as_str();
    let pid = rec.partner.id;
    diesel::delete(
        k::table
            .filter(k::tenant_id.eq(tenant))
            .filter(k::partner_id.eq(pid)),
    )
    .execute(conn)
    .await?;
    diesel::delete(
        o::table
            .filter(o::tenant_id.eq(tenant))
            .filter(o::partner_id.eq(pid)),
    )
    .execute(conn)
    .await?;
    diesel::delete(
        w::table
            .filter(w::tenant_id.eq(tenant))
            .filter(w::partner_id.eq(pid)),
    )
    .execute(conn)
    .await?;
    for (key, hash) in &rec.api_keys {
        diesel::insert_into(k::table)
            .values((
                k::tenant_id.eq(tenant),
                k::partner_id.eq(pid),
                k::id.eq(key.id),
                k::name.eq(&key.name),
                k::key_hash.eq(hash),
                k::key_prefix.eq(&key.key_prefix),
                k::scopes.eq(&key.scopes),
                k::expires_at.eq(key.expires_at),
                k::created_at.eq(key.created_at),
                k::revoked_at.eq(key.revoked_at),
                k::status.eq(key.status.as_str()),
            ))
            .execute(conn)
            .await?;
    }
    for (c, hash) in &rec.oauth_clients {
        diesel::insert_into(o::table)
            .values((
                o::tenant_id.eq(tenant),
                o::partner_id.eq(pid),
                o::client_id.eq(&c.client_id),
                o::name.eq(&c.name),
                o::client_secret_hash.eq(hash),
                o::redirect_uris.eq(&c.redirect_uris),
                o::scopes.eq(&c.scopes),
                o::grant_types.eq(&c.grant_types),
                o::created_at.eq(c.created_at),
                o::revoked_at.eq(c.revoked_at),
                o::status.eq(c.status.as_str()),
            ))
            .execute(conn)
            .await?;
    }
    for (h, hash) in &rec.webhooks {
        diesel::insert_into(w::table)
            .values((
                w::tenant_id.eq(tenant),
                w::partner_id.eq(pid),
                w::id.eq(h.id),
                w::url.eq(&h.url),
                w::events.eq(&h.events),
                w::secret_hash.eq(hash),
                w::enabled.eq(h.enabled),
                w::created_at.eq(h.created_at),
            ))
            .execute(conn)
            .await?;
    }
    Ok(true)
}
