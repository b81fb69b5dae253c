//! `gcdr.v1.PartnerService`.

use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::convert::uuid;
use super::convert::{self, partner as conv};
use super::ctx;
use super::status::{finish, invalid};
use crate::domain::Violations;
use crate::domain::partner::{LifecycleAction, NewApiKey, NewOAuthClient, NewWebhook};
use crate::pb;
use crate::pb::partner_service_server::PartnerService;
use crate::storage::Store;

/// Handles PartnerService calls against the store.
pub struct PartnerServiceHandler {
    store: Store,
}

impl PartnerServiceHandler {
    /// A handler over `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    async fn transition(
        &self,
        req_ctx: crate::domain::Ctx,
        id: Uuid,
        action: LifecycleAction,
    ) -> Result<Response<pb::Partner>, Status> {
        let p = self.store.partners.transition(&req_ctx, id, action).await?;
        tracing::info!(partner.id = %p.id, partner.status = %p.status, "partner lifecycle change");
        Ok(Response::new(p.into()))
    }
}

fn reason(v: &mut Violations, r: &str) {
    let n = r.trim().chars().count();
    if !(10..=1000).contains(&n) {
        v.add("reason", "must be 10..1000 characters");
    }
}

fn limit(v: &mut Violations, field: &str, value: Option<i32>, max: i32, default: i32) -> i32 {
    let x = value.unwrap_or(default);
    if !(1..=max).contains(&x) {
        v.add(field, format!("must be between 1 and {max}"));
    }
    x
}

fn name(v: &mut Violations, n: &str) {
    v.required("name", n, 100);
}

#[tonic::async_trait]
impl PartnerService for PartnerServiceHandler {
    async fn register_partner(
        &self,
        req: Request<pb::RegisterPartnerRequest>,
    ) -> Result<Response<pb::Partner>, Status> {
        let ctx = ctx(&req)?;
        let new = conv::new_partner(req.into_inner()).map_err(invalid)?;
        let p = self.store.partners.register(&ctx, new).await?;
        tracing::info!(partner.id = %p.id, "partner registered");
        Ok(Response::new(p.into()))
    }

    async fn get_partner(
        &self,
        req: Request<pb::GetPartnerRequest>,
    ) -> Result<Response<pb::Partner>, Status> {
        let ctx = ctx(&req)?;
        let mut v = Violations::default();
        let id = uuid(&mut v, "id", &req.get_ref().id);
        let id = finish(v, id)?;
        Ok(Response::new(
            self.store.partners.get(&ctx.tenant, id).await?.into(),
        ))
    }

    async fn update_partner(
        &self,
        req: Request<pb::UpdatePartnerRequest>,
    ) -> Result<Response<pb::Partner>, Status> {
        let ctx = ctx(&req)?;
        let pb::UpdatePartnerRequest {
            id,
            partner,
            update_mask,
            expected_version,
        } = req.into_inner();
        let mut v = Violations::default();
        let id = uuid(&mut v, "id", &id);
        let paths = convert::mask_paths(&mut v, update_mask, conv::UPDATABLE);
        let expected = convert::expected_version(&mut v, expected_version);
        let patch = conv::partner_patch(&mut v, partner, &paths);
        let id = finish(v, id)?;
        Ok(Response::new(
            self.store
                .partners
                .update(&ctx, id, patch, expected)
                .await?
                .into(),
        ))
    }

    async fn list_partners(
        &self,
        req: Request<pb::ListPartnersRequest>,
    ) -> Result<Response<pb::ListPartnersResponse>, Status> {
        let ctx = ctx(&req)?;
        let pb::ListPartnersRequest {
            page_size,
            page_token,
            status,
        } = req.into_inner();
        let mut v = Violations::default();
        let status = convert::filter_enum(&mut v, "status", status, conv::partner_status);
        let scope = format!("partners:{status:?}");
        let page = convert::page_request(&mut v, page_size, &page_token, &scope);
        if !v.is_empty() {
            return Err(invalid(v));
        }
        let result = self.store.partners.list(&ctx.tenant, status, &page).await?;
        Ok(Response::new(pb::ListPartnersResponse {
            partners: result.items.into_iter().map(Into::into).collect(),
            next_page_token: convert::next_page_token(result.next_after, &scope),
        }))
    }

    async fn approve_partner(
        &self,
        req: Request<pb::ApprovePartnerRequest>,
    ) -> Result<Response<pb::Partner>, Status> {
        let ctx = ctx(&req)?;
        let pb::ApprovePartnerRequest {
            id,
            scopes,
            rate_limit_per_minute,
            rate_limit_per_day,
            monthly_quota,
        } = req.into_inner();
        let mut v = Violations::default();
        let id = uuid(&mut v, "id", &id);
        conv::check_scopes(&mut v, "scopes", &scopes, true);
        let per_minute = limit(
            &mut v,
            "rate_limit_per_minute",
            rate_limit_per_minute,
            10_000,
            100,
        );
        let per_day = limit(
            &mut v,
            "rate_limit_per_day",
            rate_limit_per_day,
            1_000_000,
            10_000,
        );
        let monthly = limit(&mut v, "monthly_quota", monthly_quota, 100_000_000, 100_000);
        let id = finish(v, id)?;
        self.transition(
            ctx,
            id,
            LifecycleAction::Approve {
                scopes,
                per_minute,
                per_day,
                monthly,
            },
        )
        .await
    }

    async fn reject_partner(
        &self,
        req: Request<pb::RejectPartnerRequest>,
    ) -> Result<Response<pb::Partner>, Status> {
        let ctx = ctx(&req)?;
        let pb::RejectPartnerRequest { id, reason: why } = req.into_inner();
        let mut v = Violations::default();
        let id = uuid(&mut v, "id", &id);
        reason(&mut v, &why);
        let id = finish(v, id)?;
        self.transition(ctx, id, LifecycleAction::Reject { reason: why })
            .await
    }

    async fn suspend_partner(
        &self,
        req: Request<pb::SuspendPartnerRequest>,
    ) -> Result<Response<pb::Partner>, Status> {
        let ctx = ctx(&req)?;
        let pb::SuspendPartnerRequest { id, reason: why } = req.into_inner();
        let mut v = Violations::default();
        let id = uuid(&mut v, "id", &id);
        reason(&mut v, &why);
        let id = finish(v, id)?;
        self.transition(ctx, id, LifecycleAction::Suspend { reason: why })
            .await
    }

    async fn activate_partner(
        &self,
        req: Request<pb::ActivatePartnerRequest>,
    ) -> Result<Response<pb::Partner>, Status> {
        let ctx = ctx(&req)?;
        let mut v = Violations::default();
        let id = uuid(&mut v, "id", &req.get_ref().id);
        let id = finish(v, id)?;
        self.transition(ctx, id, LifecycleAction::Activate).await
    }

    async fn create_api_key(
        &self,
        req: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let ctx = ctx(&req)?;
        let pb::CreateApiKeyRequest {
            partner_id,
            name: key_name,
            scopes,
            expire_time,
        } = req.into_inner();
        let mut v = Violations::default();
        let partner = uuid(&mut v, "partner_id", &partner_id);
        name(&mut v, &key_name);
        conv::check_scopes(&mut v, "scopes", &scopes, true);
        let expires = convert::access::expiry(&mut v, expire_time);
        let partner = finish(v, partner)?;
        let (new, key) = NewApiKey::generate(key_name, scopes, expires);
        let created = self
            .store
            .partners
            .create_api_key(&ctx, partner, new)
            .await?;
        tracing::info!(partner.id = %partner, api_key.id = %created.id, "API key created");
        Ok(Response::new(pb::CreateApiKeyResponse {
            api_key: Some(created.into()),
            key,
        }))
    }

    async fn list_api_keys(
        &self,
        req: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        let ctx = ctx(&req)?;
        let pb::ListApiKeysRequest { partner_id, status } = req.into_inner();
        let mut v = Violations::default();
        let partner = uuid(&mut v, "partner_id", &partner_id);
        let status = convert::filter_enum(&mut v, "status", status, conv::credential_status);
        let partner = finish(v, partner)?;
        let keys = self
            .store
            .partners
            .list_api_keys(&ctx.tenant, partner, status)
            .await?;
        Ok(Response::new(pb::ListApiKeysResponse {
            api_keys: keys.into_iter().map(Into::into).collect(),
        }))
    }

    async fn revoke_api_key(
        &self,
        req: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::ApiKey>, Status> {
        let ctx = ctx(&req)?;
        let pb::RevokeApiKeyRequest { partner_id, key_id } = req.into_inner();
        let mut v = Violations::default();
        let ids = uuid(&mut v, "partner_id", &partner_id).zip(uuid(&mut v, "key_id", &key_id));
        let (partner, key) = finish(v, ids)?;
        Ok(Response::new(
            self.store
                .partners
                .revoke_api_key(&ctx, partner, key)
                .await?
                .into(),
        ))
    }

    async fn rotate_api_key(
        &self,
        req: Request<pb::RotateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let ctx = ctx(&req)?;
        let pb::RotateApiKeyRequest { partner_id, key_id } = req.into_inner();
        let mut v = Violations::default();
        let ids = uuid(&mut v, "partner_id", &partner_id).zip(uuid(&mut v, "key_id", &key_id));
        let (partner, old) = finish(v, ids)?;
        // Name, scopes and expiry are copied from the old key inside the transaction.
        let (new, key) = NewApiKey::generate(String::new(), Vec::new(), None);
        let created = self
            .store
            .partners
            .rotate_api_key(&ctx, partner, old, new)
            .await?;
        tracing::info!(partner.id = %partner, api_key.id = %created.id, "API key rotated");
        Ok(Response::new(pb::CreateApiKeyResponse {
            api_key: Some(created.into()),
            key,
        }))
    }

    async fn create_o_auth_client(
        &self,
        req: Request<pb::CreateOAuthClientRequest>,
    ) -> Result<Response<pb::CreateOAuthClientResponse>, Status> {
        let ctx = ctx(&req)?;
        let pb::CreateOAuthClientRequest {
            partner_id,
            name: client_name,
            redirect_uris,
            scopes,
            grant_types,
        } = req.into_inner();
        let mut v = Violations::default();
        let partner = uuid(&mut v, "partner_id", &partner_id);
        name(&mut v, &client_name);
        conv::check_scopes(&mut v, "scopes", &scopes, true);
        if redirect_uris.len() > 20 {
            v.add("redirect_uris", "must hold at most 20 URIs");
        }
        for (i, u) in redirect_uris.iter().enumerate() {
            conv::check_url(&mut v, &format!("redirect_uris[{i}]"), u, 500);
        }
        let grant_types = if grant_types.is_empty() {
            vec!["client_credentials".to_owned()]
        } else {
            grant_types
        };
        for (i, g) in grant_types.iter().enumerate() {
            if !matches!(g.as_str(), "client_credentials" | "authorization_code") {
                v.add(
                    format!("grant_types[{i}]"),
                    "must be client_credentials or authorization_code",
                );
            }
        }
        let partner = finish(v, partner)?;
        let (new, secret) =
            NewOAuthClient::generate(client_name, redirect_uris, scopes, grant_types);
        let client = self
            .store
            .partners
            .create_oauth_client(&ctx, partner, new)
            .await?;
        Ok(Response::new(pb::CreateOAuthClientResponse {
            client: Some(client.into()),
            client_secret: secret,
        }))
    }

    async fn list_o_auth_clients(
        &self,
        req: Request<pb::ListOAuthClientsRequest>,
    ) -> Result<Response<pb::ListOAuthClientsResponse>, Status> {
        let ctx = ctx(&req)?;
        let pb::ListOAuthClientsRequest { partner_id, status } = req.into_inner();
        let mut v = Violations::default();
        let partner = uuid(&mut v, "partner_id", &partner_id);
        let status = convert::filter_enum(&mut v, "status", status, conv::credential_status);
        let partner = finish(v, partner)?;
        let clients = self
            .store
            .partners
            .list_oauth_clients(&ctx.tenant, partner, status)
            .await?;
        Ok(Response::new(pb::ListOAuthClientsResponse {
            clients: clients.into_iter().map(Into::into).collect(),
        }))
    }

    async fn revoke_o_auth_client(
        &self,
        req: Request<pb::RevokeOAuthClientRequest>,
    ) -> Result<Response<pb::OAuthClient>, Status> {
        let ctx = ctx(&req)?;
        let pb::RevokeOAuthClientRequest {
            partner_id,
            client_id,
        } = req.into_inner();
        let mut v = Violations::default();
        let partner = uuid(&mut v, "partner_id", &partner_id);
        v.required("client_id", &client_id, 64);
        let partner = finish(v, partner)?;
        Ok(Response::new(
            self.store
                .partners
                .revoke_oauth_client(&ctx, partner, &client_id)
                .await?
                .into(),
        ))
    }

    async fn create_webhook(
        &self,
        req: Request<pb::CreateWebhookRequest>,
    ) -> Result<Response<pb::CreateWebhookResponse>, Status> {
        let ctx = ctx(&req)?;
        let pb::CreateWebhookRequest {
            partner_id,
            url,
            events,
            secret,
            enabled,
        } = req.into_inner();
        let mut v = Violations::default();
        let partner = uuid(&mut v, "partner_id", &partner_id);
        conv::check_url(&mut v, "url", &url, 500);
        if events.is_empty() || events.len() > 50 {
            v.add("events", "must hold 1..50 event types");
        }
        for (i, e) in events.iter().enumerate() {
            v.required(&format!("events[{i}]"), e, 100);
        }
        if let Some(s) = &secret
            && !(16..=256).contains(&s.chars().count())
        {
            v.add("secret", "must be 16..256 characters");
        }
        let partner = finish(v, partner)?;
        let (new, secret) = NewWebhook::new(url, events, enabled.unwrap_or(true), secret);
        let hook = self
            .store
            .partners
            .create_webhook(&ctx, partner, new)
            .await?;
        Ok(Response::new(pb::CreateWebhookResponse {
            webhook: Some(hook.into()),
            secret,
        }))
    }

    async fn list_webhooks(
        &self,
        req: Request<pb::ListWebhooksRequest>,
    ) -> Result<Response<pb::ListWebhooksResponse>, Status> {
        let ctx = ctx(&req)?;
        let mut v = Violations::default();
        let partner = uuid(&mut v, "partner_id", &req.get_ref().partner_id);
        let partner = finish(v, partner)?;
        let hooks = self
            .store
            .partners
            .list_webhooks(&ctx.tenant, partner)
            .await?;
        Ok(Response::new(pb::ListWebhooksResponse {
            webhooks: hooks.into_iter().map(Into::into).collect(),
        }))
    }

    async fn delete_webhook(
        &self,
        req: Request<pb::DeleteWebhookRequest>,
    ) -> Result<Response<()>, Status> {
        let ctx = ctx(&req)?;
        let pb::DeleteWebhookRequest {
            partner_id,
            webhook_id,
        } = req.into_inner();
        let mut v = Violations::default();
        let ids =
            uuid(&mut v, "partner_id", &partner_id).zip(uuid(&mut v, "webhook_id", &webhook_id));
        let (partner, hook) = finish(v, ids)?;
        self.store
            .partners
            .delete_webhook(&ctx, partner, hook)
            .await?;
        Ok(Response::new(()))
    }
}
