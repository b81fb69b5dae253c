//! `gcdr.v1.RoleService`.

use tonic::{Request, Response, Status};

use super::convert::uuid;
use super::convert::{self, access as conv};
use super::ctx;
use super::policy::access_list;
use super::status::{finish, invalid};
use crate::domain::Violations;
use crate::pb;
use crate::pb::role_service_server::RoleService;
use crate::storage::Store;

/// Handles RoleService calls against the store.
pub struct RoleServiceHandler {
    store: Store,
}

impl RoleServiceHandler {
    /// A handler over `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

#[tonic::async_trait]
impl RoleService for RoleServiceHandler {
    async fn create_role(
        &self,
        req: Request<pb::CreateRoleRequest>,
    ) -> Result<Response<pb::Role>, Status> {
        let ctx = ctx(&req)?;
        let new = conv::new_role(req.into_inner()).map_err(invalid)?;
        Ok(Response::new(
            self.store.roles.create(&ctx, new).await?.into(),
        ))
    }

    async fn get_role(
        &self,
        req: Request<pb::GetRoleRequest>,
    ) -> Result<Response<pb::Role>, Status> {
        let ctx = ctx(&req)?;
        let mut v = Violations::default();
        let id = uuid(&mut v, "id", &req.get_ref().id);
        let id = finish(v, id)?;
        Ok(Response::new(
            self.store.roles.get(&ctx.tenant, id).await?.into(),
        ))
    }

    async fn get_role_by_key(
        &self,
        req: Request<pb::GetRoleByKeyRequest>,
    ) -> Result<Response<pb::Role>, Status> {
        let ctx = ctx(&req)?;
        let mut v = Violations::default();
        conv::check_key_ref(&mut v, "key", &req.get_ref().key);
        if !v.is_empty() {
            return Err(invalid(v));
        }
        Ok(Response::new(
            self.store
                .roles
                .get_by_key(&ctx.tenant, &req.get_ref().key)
                .await?
                .into(),
        ))
    }

    async fn update_role(
        &self,
        req: Request<pb::UpdateRoleRequest>,
    ) -> Result<Response<pb::Role>, Status> {
        let ctx = ctx(&req)?;
        let pb::UpdateRoleRequest {
            id,
            role,
            update_mask,
            expected_version,
        } = req.into_inner();
        let mut v = Violations::default();
        let id = uuid(&mut v, "id", &id);
        let paths = convert::mask_paths(&mut v, update_mask, conv::ROLE_UPDATABLE);
        let expected = convert::expected_version(&mut v, expected_version);
        let patch = conv::role_patch(&mut v, role, &paths);
        let id = finish(v, id)?;
        Ok(Response::new(
            self.store
                .roles
                .update(&ctx, id, patch, expected)
                .await?
                .into(),
        ))
    }

    async fn delete_role(
        &self,
        req: Request<pb::DeleteRoleRequest>,
    ) -> Result<Response<()>, Status> {
        let ctx = ctx(&req)?;
        let pb::DeleteRoleRequest {
            id,
            expected_version,
        } = req.into_inner();
        let mut v = Violations::default();
        let id = uuid(&mut v, "id", &id);
        let expected = convert::expected_version(&mut v, expected_version);
        let id = finish(v, id)?;
        self.store.roles.delete(&ctx.tenant, id, expected).await?;
        Ok(Response::new(()))
    }

    async fn list_roles(
        &self,
        req: Request<pb::ListRolesRequest>,
    ) -> Result<Response<pb::ListRolesResponse>, Status> {
        let ctx = ctx(&req)?;
        let pb::ListRolesRequest {
            page_size,
            page_token,
            risk_level,
            is_system,
        } = req.into_inner();
        let (filter, page, scope) =
            access_list("roles", risk_level, is_system, page_size, &page_token)?;
        let result = self.store.roles.list(&ctx.tenant, &filter, &page).await?;
        Ok(Response::new(pb::ListRolesResponse {
            roles: result.items.into_iter().map(Into::into).collect(),
            next_page_token: convert::next_page_token(result.next_after, &scope),
        }))
    }
}
