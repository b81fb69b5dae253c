//! `gcdr.v1.PolicyService`.

use tonic::{Request, Response, Status};

use super::convert::uuid;
use super::convert::{self, access as conv};
use super::ctx;
use super::status::{finish, invalid};
use crate::domain::Violations;
use crate::domain::access::requests::AccessFilter;
use crate::pb;
use crate::pb::policy_service_server::PolicyService;
use crate::storage::Store;

/// Handles PolicyService calls against the store.
pub struct PolicyServiceHandler {
    store: Store,
}

impl PolicyServiceHandler {
    /// A handler over `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

/// Validates the filters and page of ListRoles / ListPolicies.
pub(super) fn access_list(
    kind: &str,
    risk_level: i32,
    is_system: Option<bool>,
    page_size: i32,
    page_token: &str,
) -> Result<(AccessFilter, crate::domain::PageRequest, String), Status> {
    let mut v = Violations::default();
    let filter = AccessFilter {
        risk_level: convert::filter_enum(&mut v, "risk_level", risk_level, conv::risk_level),
        is_system,
    };
    let scope = format!("{kind}:{filter:?}");
    let page = convert::page_request(&mut v, page_size, page_token, &scope);
    if !v.is_empty() {
        return Err(invalid(v));
    }
    Ok((filter, page, scope))
}

#[tonic::async_trait]
impl PolicyService for PolicyServiceHandler {
    async fn create_policy(
        &self,
        req: Request<pb::CreatePolicyRequest>,
    ) -> Result<Response<pb::Policy>, Status> {
        let ctx = ctx(&req)?;
        let new = conv::new_policy(req.into_inner()).map_err(invalid)?;
        Ok(Response::new(
            self.store.policies.create(&ctx, new).await?.into(),
        ))
    }

    async fn get_policy(
        &self,
        req: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::Policy>, Status> {
        let ctx = ctx(&req)?;
        let mut v = Violations::default();
        let id = uuid(&mut v, "id", &req.get_ref().id);
        let id = finish(v, id)?;
        Ok(Response::new(
            self.store.policies.get(&ctx.tenant, id).await?.into(),
        ))
    }

    async fn get_policy_by_key(
        &self,
        req: Request<pb::GetPolicyByKeyRequest>,
    ) -> Result<Response<pb::Policy>, Status> {
        let ctx = ctx(&req)?;
        let mut v = Violations::default();
        conv::check_key_ref(&mut v, "key", &req.get_ref().key);
        if !v.is_empty() {
            return Err(invalid(v));
        }
        Ok(Response::new(
            self.store
                .policies
                .get_by_key(&ctx.tenant, &req.get_ref().key)
                .await?
                .into(),
        ))
    }

    async fn update_policy(
        &self,
        req: Request<pb::UpdatePolicyRequest>,
    ) -> Result<Response<pb::Policy>, Status> {
        let ctx = ctx(&req)?;
        let pb::UpdatePolicyRequest {
            id,
            policy,
            update_mask,
            expected_version,
        } = req.into_inner();
        let mut v = Violations::default();
        let id = uuid(&mut v, "id", &id);
        let paths = convert::mask_paths(&mut v, update_mask, conv::POLICY_UPDATABLE);
        let expected = convert::expected_version(&mut v, expected_version);
        let patch = conv::policy_patch(&mut v, policy, &paths);
        let id = finish(v, id)?;
        Ok(Response::new(
            self.store
                .policies
                .update(&ctx, id, patch, expected)
                .await?
                .into(),
        ))
    }

    async fn delete_policy(
        &self,
        req: Request<pb::DeletePolicyRequest>,
    ) -> Result<Response<()>, Status> {
        let ctx = ctx(&req)?;
        let pb::DeletePolicyRequest {
            id,
            expected_version,
        } = req.into_inner();
        let mut v = Violations::default();
        let id = uuid(&mut v, "id", &id);
        let expected = convert::expected_version(&mut v, expected_version);
        let id = finish(v, id)?;
        self.store
            .policies
            .delete(&ctx.tenant, id, expected)
            .await?;
        Ok(Response::new(()))
    }

    async fn list_policies(
        &self,
        req: Request<pb::ListPoliciesRequest>,
    ) -> Result<Response<pb::ListPoliciesResponse>, Status> {
        let ctx = ctx(&req)?;
        let pb::ListPoliciesRequest {
            page_size,
            page_token,
            risk_level,
            is_system,
        } = req.into_inner();
        let (filter, page, scope) =
            access_list("policies", risk_level, is_system, page_size, &page_token)?;
        let result = self
            .store
            .policies
            .list(&ctx.tenant, &filter, &page)
            .await?;
        Ok(Response::new(pb::ListPoliciesResponse {
            policies: result.items.into_iter().map(Into::into).collect(),
            next_page_token: convert::next_page_token(result.next_after, &scope),
        }))
    }
}
