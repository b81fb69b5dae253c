//! `gcdr.v1.CustomerService`.

use tonic::{Request, Response, Status};

use super::convert::{self, customer as conv};
use super::ctx;
use super::status::{finish, invalid};
use super::tree::{Node, nest};
use crate::domain::customer::{Customer, CustomerFilter, ParentFilter};
use crate::domain::{CustomerId, Violations};
use crate::pb;
use crate::pb::customer_service_server::CustomerService;
use crate::storage::Store;

/// Most nodes GetCustomerTree returns.
pub const TREE_NODE_LIMIT: usize = 10_000;

/// Handles CustomerService calls against the store.
pub struct CustomerServiceHandler {
    store: Store,
}

impl CustomerServiceHandler {
    /// A handler over `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

fn customer_id(v: &mut Violations, field: &str, s: &str) -> Option<CustomerId> {
    convert::id(v, field, s, CustomerId::parse)
}

/// Validates a request that only names a customer by id.
fn only_id(field: &str, s: &str) -> Result<CustomerId, Status> {
    let mut v = Violations::default();
    let id = customer_id(&mut v, field, s);
    finish(v, id)
}

fn pb_list(items: Vec<Customer>) -> Vec<pb::Customer> {
    items.into_iter().map(Into::into).collect()
}

fn pb_node(n: Node<Customer>) -> pb::CustomerTreeNode {
    pb::CustomerTreeNode {
        customer: Some(n.item.into()),
        children: n.children.into_iter().map(pb_node).collect(),
    }
}

#[tonic::async_trait]
impl CustomerService for CustomerServiceHandler {
    async fn create_customer(
        &self,
        req: Request<pb::CreateCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let ctx = ctx(&req)?;
        let new = conv::new_customer(req.into_inner()).map_err(invalid)?;
        let created = self.store.customers.create(&ctx, new).await?;
        tracing::info!(customer.id = %created.id, "customer created");
        Ok(Response::new(created.into()))
    }

    async fn get_customer(
        &self,
        req: Request<pb::GetCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let ctx = ctx(&req)?;
        let pb::GetCustomerRequest { id } = req.into_inner();
        let id = only_id("id", &id)?;
        Ok(Response::new(
            self.store.customers.get(&ctx.tenant, id).await?.into(),
        ))
    }

    async fn get_customer_by_code(
        &self,
        req: Request<pb::GetCustomerByCodeRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let ctx = ctx(&req)?;
        let pb::GetCustomerByCodeRequest { code } = req.into_inner();
        let mut v = Violations::default();
        v.required("code", &code, 50);
        if !v.is_empty() {
            return Err(invalid(v));
        }
        Ok(Response::new(
            self.store
                .customers
                .get_by_code(&ctx.tenant, &code)
                .await?
                .into(),
        ))
    }

    async fn update_customer(
        &self,
        req: Request<pb::UpdateCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let ctx = ctx(&req)?;
        let (id, patch, expected) = conv::customer_patch(req.into_inner()).map_err(invalid)?;
        Ok(Response::new(
            self.store
                .customers
                .update(&ctx, id, patch, expected)
                .await?
                .into(),
        ))
    }

    async fn delete_customer(
        &self,
        req: Request<pb::DeleteCustomerRequest>,
    ) -> Result<Response<()>, Status> {
        let ctx = ctx(&req)?;
        let pb::DeleteCustomerRequest {
            id,
            expected_version,
        } = req.into_inner();
        let mut v = Violations::default();
        let id = customer_id(&mut v, "id", &id);
        let expected = convert::expected_version(&mut v, expected_version);
        let id = finish(v, id)?;
        self.store
            .customers
            .delete(&ctx.tenant, id, expected)
            .await?;
        tracing::info!(customer.id = %id, "customer deleted");
        Ok(Response::new(()))
    }

    async fn list_customers(
        &self,
        req: Request<pb::ListCustomersRequest>,
    ) -> Result<Response<pb::ListCustomersResponse>, Status> {
        let ctx = ctx(&req)?;
        let pb::ListCustomersRequest {
            page_size,
            page_token,
            r#type,
            status,
            parent_customer_id,
            roots_only,
        } = req.into_inner();
        let mut v = Violations::default();
        let kind = convert::filter_enum(&mut v, "type", r#type, conv::customer_type);
        let status = convert::filter_enum(&mut v, "status", status, conv::status);
        let parent = convert::opt_id(
            &mut v,
            "parent_customer_id",
            parent_customer_id.as_deref(),
            CustomerId::parse,
        );
        let parent = match (parent, roots_only) {
            (Some(_), true) => {
                v.add("roots_only", "cannot be combined with parent_customer_id");
                ParentFilter::Any
            }
            (Some(p), false) => ParentFilter::ChildrenOf(p),
            (None, true) => ParentFilter::RootsOnly,
            (None, false) => ParentFilter::Any,
        };
        let filter = CustomerFilter {
            kind,
            status,
            parent,
        };
        let scope = format!("customers:{filter:?}");
        let page = convert::page_request(&mut v, page_size, &page_token, &scope);
        if !v.is_empty() {
            return Err(invalid(v));
        }
        let result = self
            .store
            .customers
            .list(&ctx.tenant, &filter, &page)
            .await?;
        Ok(Response::new(pb::ListCustomersResponse {
            customers: pb_list(result.items),
            next_page_token: convert::next_page_token(result.next_after, &scope),
        }))
    }

    async fn list_customer_children(
        &self,
        req: Request<pb::ListCustomerChildrenRequest>,
    ) -> Result<Response<pb::ListCustomerChildrenResponse>, Status> {
        let ctx = ctx(&req)?;
        let pb::ListCustomerChildrenRequest {
            id,
            page_size,
            page_token,
        } = req.into_inner();
        let mut v = Violations::default();
        let id = customer_id(&mut v, "id", &id);
        let scope = format!("customer-children:{id:?}");
        let page = convert::page_request(&mut v, page_size, &page_token, &scope);
        let id = finish(v, id)?;
        // NOT_FOUND for an unknown parent, rather than an empty page.
        self.store.customers.get(&ctx.tenant, id).await?;
        let filter = CustomerFilter {
            parent: ParentFilter::ChildrenOf(id),
            ..CustomerFilter::default()
        };
        let result = self
            .store
            .customers
            .list(&ctx.tenant, &filter, &page)
            .await?;
        Ok(Response::new(pb::ListCustomerChildrenResponse {
            customers: pb_list(result.items),
            next_page_token: convert::next_page_token(result.next_after, &scope),
        }))
    }

    async fn list_customer_descendants(
        &self,
        req: Request<pb::ListCustomerDescendantsRequest>,
    ) -> Result<Response<pb::ListCustomerDescendantsResponse>, Status> {
        let ctx = ctx(&req)?;
        let pb::ListCustomerDescendantsRequest {
            id,
            max_depth,
            page_size,
            page_token,
        } = req.into_inner();
        let mut v = Violations::default();
        let id = customer_id(&mut v, "id", &id);
        let max_depth = convert::max_depth(&mut v, max_depth);
        let scope = format!("customer-descendants:{id:?}:{max_depth:?}");
        let page = convert::page_request(&mut v, page_size, &page_token, &scope);
        let id = finish(v, id)?;
        let result = self
            .store
            .customers
            .descendants(&ctx.tenant, id, max_depth, &page)
            .await?;
        Ok(Response::new(pb::ListCustomerDescendantsResponse {
            customers: pb_list(result.items),
            next_page_token: convert::next_page_token(result.next_after, &scope),
        }))
    }

    async fn list_customer_ancestors(
        &self,
        req: Request<pb::ListCustomerAncestorsRequest>,
    ) -> Result<Response<pb::ListCustomerAncestorsResponse>, Status> {
        let ctx = ctx(&req)?;
        let pb::ListCustomerAncestorsRequest { id } = req.into_inner();
        let id = only_id("id", &id)?;
        let ancestors = self.store.customers.ancestors(&ctx.tenant, id).await?;
        Ok(Response::new(pb::ListCustomerAncestorsResponse {
            customers: pb_list(ancestors),
        }))
    }

    async fn get_customer_tree(
        &self,
        req: Request<pb::GetCustomerTreeRequest>,
    ) -> Result<Response<pb::GetCustomerTreeResponse>, Status> {
        let ctx = ctx(&req)?;
        let pb::GetCustomerTreeRequest { id, max_depth } = req.into_inner();
        let mut v = Violations::default();
        let id = customer_id(&mut v, "id", &id);
        let depth = convert::tree_depth(&mut v, max_depth);
        let id = finish(v, id)?;
        let subtree = self
            .store
            .customers
            .subtree(&ctx.tenant, id, depth, TREE_NODE_LIMIT)
            .await?;
        let root = nest(
            subtree.nodes,
            |c| c.id.0,
            |c| c.parent_id.map(|p| p.0),
            |c| c.name.as_str(),
        )
        .into_iter()
        .next()
        .map(pb_node);
        Ok(Response::new(pb::GetCustomerTreeResponse {
            root,
            truncated: subtree.truncated,
        }))
    }

    async fn move_customer(
        &self,
        req: Request<pb::MoveCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        use pb::move_customer_request::Destination;
        let ctx = ctx(&req)?;
        let pb::MoveCustomerRequest {
            id,
            destination,
            expected_version,
        } = req.into_inner();
        let mut v = Violations::default();
        let id = customer_id(&mut v, "id", &id);
        let expected = convert::expected_version(&mut v, expected_version);
        let new_parent = match destination {
            Some(Destination::NewParentCustomerId(p)) => {
                customer_id(&mut v, "new_parent_customer_id", &p)
            }
            Some(Destination::ToRoot(true)) => None,
            Some(Destination::ToRoot(false)) => {
                v.add("to_root", "must be true when chosen");
                None
            }
            None => {
                v.add(
                    "destination",
                    "set new_parent_customer_id, or to_root = true",
                );
                None
            }
        };
        let id = finish(v, id)?;
        let moved = self
            .store
            .customers
            .move_to(&ctx, id, new_parent, expected)
            .await?;
        tracing::info!(customer.id = %id, customer.depth = moved.depth, "customer moved");
        Ok(Response::new(moved.into()))
    }
}
