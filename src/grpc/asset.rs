//! `gcdr.v1.AssetService`.

use tonic::{Request, Response, Status};

use super::convert::{self, asset as conv};
use super::ctx;
use super::status::{finish, invalid};
use super::tree::{Node, nest};
use crate::domain::asset::{Asset, AssetDestination, AssetFilter};
use crate::domain::customer::ParentFilter;
use crate::domain::{AssetId, CustomerId, Violations};
use crate::pb;
use crate::pb::asset_service_server::AssetService;
use crate::storage::Store;

/// Most nodes GetAssetTree returns.
pub const TREE_NODE_LIMIT: usize = 10_000;

/// Handles AssetService calls against the store.
pub struct AssetServiceHandler {
    store: Store,
}

impl AssetServiceHandler {
    /// A handler over `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

fn asset_id(v: &mut Violations, field: &str, s: &str) -> Option<AssetId> {
    convert::id(v, field, s, AssetId::parse)
}

fn pb_list(items: Vec<Asset>) -> Vec<pb::Asset> {
    items.into_iter().map(Into::into).collect()
}

fn pb_node(n: Node<Asset>) -> pb::AssetTreeNode {
    pb::AssetTreeNode {
        asset: Some(n.item.into()),
        children: n.children.into_iter().map(pb_node).collect(),
    }
}

#[tonic::async_trait]
impl AssetService for AssetServiceHandler {
    async fn create_asset(
        &self,
        req: Request<pb::CreateAssetRequest>,
    ) -> Result<Response<pb::Asset>, Status> {
        let ctx = ctx(&req)?;
        let new = conv::new_asset(req.into_inner()).map_err(invalid)?;
        let created = self.store.assets.create(&ctx, new).await?;
        tracing::info!(asset.id = %created.id, "asset created");
        Ok(Response::new(created.into()))
    }

    async fn get_asset(
        &self,
        req: Request<pb::GetAssetRequest>,
    ) -> Result<Response<pb::Asset>, Status> {
        let ctx = ctx(&req)?;
        let pb::GetAssetRequest { id } = req.into_inner();
        let mut v = Violations::default();
        let id = asset_id(&mut v, "id", &id);
        let id = finish(v, id)?;
        Ok(Response::new(
            self.store.assets.get(&ctx.tenant, id).await?.into(),
        ))
    }

    async fn get_asset_by_code(
        &self,
        req: Request<pb::GetAssetByCodeRequest>,
    ) -> Result<Response<pb::Asset>, Status> {
        let ctx = ctx(&req)?;
        let pb::GetAssetByCodeRequest { customer_id, code } = req.into_inner();
        let mut v = Violations::default();
        let customer = convert::id(&mut v, "customer_id", &customer_id, CustomerId::parse);
        v.required("code", &code, 50);
        let customer = finish(v, customer)?;
        Ok(Response::new(
            self.store
                .assets
                .get_by_code(&ctx.tenant, customer, &code)
                .await?
                .into(),
        ))
    }

    async fn update_asset(
        &self,
        req: Request<pb::UpdateAssetRequest>,
    ) -> Result<Response<pb::Asset>, Status> {
        let ctx = ctx(&req)?;
        let (id, patch, expected) = conv::asset_patch(req.into_inner()).map_err(invalid)?;
        Ok(Response::new(
            self.store
                .assets
                .update(&ctx, id, patch, expected)
                .await?
                .into(),
        ))
    }

    async fn delete_asset(
        &self,
        req: Request<pb::DeleteAssetRequest>,
    ) -> Result<Response<()>, Status> {
        let ctx = ctx(&req)?;
        let pb::DeleteAssetRequest {
            id,
            expected_version,
        } = req.into_inner();
        let mut v = Violations::default();
        let id = asset_id(&mut v, "id", &id);
        let expected = convert::expected_version(&mut v, expected_version);
        let id = finish(v, id)?;
        self.store.assets.delete(&ctx.tenant, id, expected).await?;
        tracing::info!(asset.id = %id, "asset deleted");
        Ok(Response::new(()))
    }

    async fn list_assets(
        &self,
        req: Request<pb::ListAssetsRequest>,
    ) -> Result<Response<pb::ListAssetsResponse>, Status> {
        let ctx = ctx(&req)?;
        let pb::ListAssetsRequest {
            customer_id,
            page_size,
            page_token,
            r#type,
            status,
            parent_asset_id,
            roots_only,
        } = req.into_inner();
        let mut v = Violations::default();
        let customer = convert::id(&mut v, "customer_id", &customer_id, CustomerId::parse);
        let kind = convert::filter_enum(&mut v, "type", r#type, conv::asset_type);
        let status = convert::filter_enum(&mut v, "status", status, convert::customer::status);
        let parent = convert::opt_id(
            &mut v,
            "parent_asset_id",
            parent_asset_id.as_deref(),
            AssetId::parse,
        );
        let parent = match (parent, roots_only) {
            (Some(_), true) => {
                v.add("roots_only", "cannot be combined with parent_asset_id");
                ParentFilter::Any
            }
            (Some(p), false) => ParentFilter::ChildrenOf(p),
            (None, true) => ParentFilter::RootsOnly,
            (None, false) => ParentFilter::Any,
        };
        let scope = format!("assets:{customer:?}:{kind:?}:{status:?}:{parent:?}");
        let page = convert::page_request(&mut v, page_size, &page_token, &scope);
        let customer_id = finish(v, customer)?;
        let filter = AssetFilter {
            customer_id,
            kind,
            status,
            parent,
        };
        let result = self.store.assets.list(&ctx.tenant, &filter, &page).await?;
        Ok(Response::new(pb::ListAssetsResponse {
            assets: pb_list(result.items),
            next_page_token: convert::next_page_token(result.next_after, &scope),
        }))
    }

    async fn list_asset_children(
        &self,
        req: Request<pb::ListAssetChildrenRequest>,
    ) -> Result<Response<pb::ListAssetChildrenResponse>, Status> {
        let ctx = ctx(&req)?;
        let pb::ListAssetChildrenRequest {
            id,
            page_size,
            page_token,
        } = req.into_inner();
        let mut v = Violations::default();
        let id = asset_id(&mut v, "id", &id);
        let scope = format!("asset-children:{id:?}");
        let page = convert::page_request(&mut v, page_size, &page_token, &scope);
        let id = finish(v, id)?;
        let parent = self.store.assets.get(&ctx.tenant, id).await?;
        let filter = AssetFilter {
            customer_id: parent.customer_id,
            kind: None,
            status: None,
            parent: ParentFilter::ChildrenOf(id),
        };
        let result = self.store.assets.list(&ctx.tenant, &filter, &page).await?;
        Ok(Response::new(pb::ListAssetChildrenResponse {
            assets: pb_list(result.items),
            next_page_token: convert::next_page_token(result.next_after, &scope),
        }))
    }

    async fn list_asset_descendants(
        &self,
        req: Request<pb::ListAssetDescendantsRequest>,
    ) -> Result<Response<pb::ListAssetDescendantsResponse>, Status> {
        let ctx = ctx(&req)?;
        let pb::ListAssetDescendantsRequest {
            id,
            max_depth,
            page_size,
            page_token,
        } = req.into_inner();
        let mut v = Violations::default();
        let id = asset_id(&mut v, "id", &id);
        let max_depth = convert::max_depth(&mut v, max_depth);
        let scope = format!("asset-descendants:{id:?}:{max_depth:?}");
        let page = convert::page_request(&mut v, page_size, &page_token, &scope);
        let id = finish(v, id)?;
        let result = self
            .store
            .assets
            .descendants(&ctx.tenant, id, max_depth, &page)
            .await?;
        Ok(Response::new(pb::ListAssetDescendantsResponse {
            assets: pb_list(result.items),
            next_page_token: convert::next_page_token(result.next_after, &scope),
        }))
    }

    async fn list_asset_ancestors(
        &self,
        req: Request<pb::ListAssetAncestorsRequest>,
    ) -> Result<Response<pb::ListAssetAncestorsResponse>, Status> {
        let ctx = ctx(&req)?;
        let pb::ListAssetAncestorsRequest { id } = req.into_inner();
        let mut v = Violations::default();
        let id = asset_id(&mut v, "id", &id);
        let id = finish(v, id)?;
        let ancestors = self.store.assets.ancestors(&ctx.tenant, id).await?;
        Ok(Response::new(pb::ListAssetAncestorsResponse {
            assets: pb_list(ancestors),
        }))
    }

    async fn get_asset_tree(
        &self,
        req: Request<pb::GetAssetTreeRequest>,
    ) -> Result<Response<pb::GetAssetTreeResponse>, Status> {
        use pb::get_asset_tree_request::Root;
        let ctx = ctx(&req)?;
        let pb::GetAssetTreeRequest { root, max_depth } = req.into_inner();
        let mut v = Violations::default();
        let depth = convert::tree_depth(&mut v, max_depth);
        let root = match root {
            Some(Root::AssetId(id)) => asset_id(&mut v, "asset_id", &id).map(Ok),
            Some(Root::CustomerId(id)) => {
                convert::id(&mut v, "customer_id", &id, CustomerId::parse).map(Err)
            }
            None => {
                v.add("root", "set asset_id or customer_id");
                None
            }
        };
        let subtree = match finish(v, root)? {
            Ok(asset) => {
                self.store
                    .assets
                    .subtree(&ctx.tenant, asset, depth, TREE_NODE_LIMIT)
                    .await?
            }
            Err(customer) => {
                self.store
                    .assets
                    .customer_forest(&ctx.tenant, customer, depth, TREE_NODE_LIMIT)
                    .await?
            }
        };
        let roots = nest(
            subtree.nodes,
            |a| a.id.0,
            |a| a.parent_id.map(|p| p.0),
            |a| a.name.as_str(),
        )
        .into_iter()
        .map(pb_node)
        .collect();
        Ok(Response::new(pb::GetAssetTreeResponse {
            roots,
            truncated: subtree.truncated,
        }))
    }

    async fn move_asset(
        &self,
        req: Request<pb::MoveAssetRequest>,
    ) -> Result<Response<pb::Asset>, Status> {
        use pb::move_asset_request::Destination;
        let ctx = ctx(&req)?;
        let pb::MoveAssetRequest {
            id,
            destination,
            new_customer_id,
            expected_version,
        } = req.into_inner();
        let mut v = Violations::default();
        let id = asset_id(&mut v, "id", &id);
        let expected = convert::expected_version(&mut v, expected_version);
        let new_customer = convert::opt_id(
            &mut v,
            "new_customer_id",
            new_customer_id.as_deref(),
            CustomerId::parse,
        );
        // Some(Some(parent)) or Some(None) for the root.
        let to = match destination {
            Some(Destination::NewParentAssetId(p)) => {
                asset_id(&mut v, "new_parent_asset_id", &p).map(Some)
            }
            Some(Destination::ToRoot(true)) => Some(None),
            Some(Destination::ToRoot(false)) => {
                v.add("to_root", "must be true when chosen");
                None
            }
            None => {
                v.add("destination", "set new_parent_asset_id, or to_root = true");
                None
            }
        };
        let (id, to) = finish(v, id.zip(to))?;
        let to =
            match to {
                // To the root of the named customer, else of the asset's own customer.
                None => AssetDestination::RootOf(match new_customer {
                    Some(c) => c,
                    None => self.store.assets.get(&ctx.tenant, id).await?.customer_id,
                }),
                Some(parent) => {
                    if let Some(c) = new_customer {
                        let parent = self.store.assets.get(&ctx.tenant, parent).await.map_err(
                            |e| match e {
                                crate::storage::StoreError::NotFound { .. } => {
                                    crate::storage::StoreError::NotFound {
                                        entity: "new parent asset",
                                    }
                                }
                                other => other,
                            },
                        )?;
                        if parent.customer_id != c {
                            return Err(super::status::invalid_field(
                                "new_customer_id",
                                "must equal the customer of new_parent_asset_id",
                            ));
                        }
                    }
                    AssetDestination::UnderParent(parent)
                }
            };
        let moved = self.store.assets.move_to(&ctx, id, to, expected).await?;
        tracing::info!(asset.id = %id, asset.depth = moved.depth, "asset moved");
        Ok(Response::new(moved.into()))
    }
}
