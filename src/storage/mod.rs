//! The storage boundary: one trait per entity, the semantic `StoreError`, and `Store`,
//! the bundle of trait objects the gRPC layer is handed.
//!
//! The gRPC layer never sees a backend type: a DynamoDB store or a routing switch can
//! stand behind the same traits without any change above this module.

pub mod dynamodb;
pub mod mode;
pub mod postgres;
pub mod replica;
pub mod router;

use std::sync::Arc;

use async_trait::async_trait;

use uuid::Uuid;

use crate::domain::access::requests::{
    AccessFilter, AssignmentFilter, NewAssignment, NewPolicy, NewRole, PolicyPatch, RolePatch,
};
use crate::domain::access::{Grant, Policy, Role, RoleAssignment};
use crate::domain::asset::{Asset, AssetDestination, AssetFilter, AssetPatch, NewAsset};
use crate::domain::customer::{Customer, CustomerFilter, CustomerPatch, NewCustomer};
use crate::domain::device::{ConnectivityStatus, Device, DeviceFilter, DevicePatch, NewDevice};
use crate::domain::partner::{
    ApiKey, CredentialStatus, LifecycleAction, NewApiKey, NewOAuthClient, NewPartner, NewWebhook,
    OAuthClient, Partner, PartnerPatch, PartnerStatus, Webhook,
};
use crate::domain::{AssetId, Ctx, CustomerId, DeviceId, Page, PageRequest, TenantId};

/// What can go wrong in a store, in terms a caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The entity (named by `entity`) does not exist in the tenant.
    #[error("{entity} not found")]
    NotFound { entity: &'static str },
    /// A unique key is taken; `reason` is a stable UPPER_SNAKE code, `field` the key.
    #[error("{reason}: {field} already exists")]
    AlreadyExists {
        reason: &'static str,
        field: &'static str,
    },
    /// The expected version did not match the stored one.
    #[error("version conflict: expected {expected}, stored {actual}")]
    Conflict { expected: i64, actual: i64 },
    /// The operation is not allowed in the current state (children exist, cycle, ...).
    #[error("{reason}: {message}")]
    FailedPrecondition {
        reason: &'static str,
        message: String,
    },
    /// A request value that only the store can judge (e.g. parent of another customer).
    #[error("invalid {field}: {message}")]
    InvalidArgument {
        field: &'static str,
        message: String,
    },
    /// The backend cannot be reached right now (pool timeout, connection lost).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Anything else: a bug or an unexpected backend answer. Logged, never shown.
    #[error("internal storage error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    /// The failed write may have changed the store: an outage or internal error can
    /// follow a commit (a lost connection after COMMIT), and a DynamoDB move that
    /// stopped part way (`PARTIAL_MOVE`) committed its first chunks. Every other error
    /// is a definite refusal that wrote nothing.
    pub fn may_have_written(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable(_)
                | StoreError::Internal(_)
                | StoreError::FailedPrecondition {
                    reason: "PARTIAL_MOVE",
                    ..
                }
        )
    }
}

/// Result of store calls.
pub type StoreResult<T> = Result<T, StoreError>;

/// Runs one store operation of backend `system`: times it and logs a failure once,
/// labelled by `op` (internal errors as errors, outages as warnings, refusals at debug).
pub(crate) async fn timed<T>(
    system: &'static str,
    op: &'static str,
    fut: impl Future<Output = StoreResult<T>>,
) -> StoreResult<T> {
    let start = std::time::Instant::now();
    let result = fut.await;
    let duration_ms = start.elapsed().as_secs_f64() * 1e3;
    match &result {
        Ok(_) => tracing::trace!(
            db.system = system,
            db.operation = op,
            duration_ms,
            "store call"
        ),
        Err(StoreError::Internal(e)) => tracing::error!(
            db.system = system, db.operation = op, duration_ms, error = %e, "store call failed"
        ),
        Err(StoreError::Unavailable(e)) => tracing::warn!(
            db.system = system, db.operation = op, duration_ms, error = %e, "store unavailable"
        ),
        Err(e) => tracing::debug!(
            db.system = system, db.operation = op, duration_ms, error = %e, "store call refused"
        ),
    }
    result
}

/// A subtree read for GetTree: the top node, its descendants (in path order) and
/// whether the node cap cut it short.
#[derive(Clone, Debug)]
pub struct Subtree<T> {
    pub nodes: Vec<T>,
    pub truncated: bool,
}

/// Persistence of customers.
#[async_trait]
pub trait CustomerStore: Send + Sync {
    async fn create(&self, ctx: &Ctx, new: NewCustomer) -> StoreResult<Customer>;
    async fn get(&self, tenant: &TenantId, id: CustomerId) -> StoreResult<Customer>;
    async fn get_by_code(&self, tenant: &TenantId, code: &str) -> StoreResult<Customer>;
    async fn update(
        &self,
        ctx: &Ctx,
        id: CustomerId,
        patch: CustomerPatch,
        expected_version: Option<i64>,
    ) -> StoreResult<Customer>;
    async fn delete(
        &self,
        tenant: &TenantId,
        id: CustomerId,
        expected_version: Option<i64>,
    ) -> StoreResult<()>;
    async fn list(
        &self,
        tenant: &TenantId,
        filter: &CustomerFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<Customer>>;
    /// Descendants of `id` in path (pre-)order, at most `max_depth` levels below it.
    async fn descendants(
        &self,
        tenant: &TenantId,
        id: CustomerId,
        max_depth: Option<i32>,
        page: &PageRequest,
    ) -> StoreResult<Page<Customer>>;
    /// Ancestors of `id`, root first.
    async fn ancestors(&self, tenant: &TenantId, id: CustomerId) -> StoreResult<Vec<Customer>>;
    /// `id` and its descendants down to `max_depth` levels, at most `limit` nodes.
    async fn subtree(
        &self,
        tenant: &TenantId,
        id: CustomerId,
        max_depth: i32,
        limit: usize,
    ) -> StoreResult<Subtree<Customer>>;
    /// Moves `id` with its subtree under `new_parent` (`None`: to the root).
    async fn move_to(
        &self,
        ctx: &Ctx,
        id: CustomerId,
        new_parent: Option<CustomerId>,
        expected_version: Option<i64>,
    ) -> StoreResult<Customer>;
}

/// Persistence of assets.
#[async_trait]
pub trait AssetStore: Send + Sync {
    async fn create(&self, ctx: &Ctx, new: NewAsset) -> StoreResult<Asset>;
    async fn get(&self, tenant: &TenantId, id: AssetId) -> StoreResult<Asset>;
    async fn get_by_code(
        &self,
        tenant: &TenantId,
        customer: CustomerId,
        code: &str,
    ) -> StoreResult<Asset>;
    async fn update(
        &self,
        ctx: &Ctx,
        id: AssetId,
        patch: AssetPatch,
        expected_version: Option<i64>,
    ) -> StoreResult<Asset>;
    async fn delete(
        &self,
        tenant: &TenantId,
        id: AssetId,
        expected_version: Option<i64>,
    ) -> StoreResult<()>;
    async fn list(
        &self,
        tenant: &TenantId,
        filter: &AssetFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<Asset>>;
    async fn descendants(
        &self,
        tenant: &TenantId,
        id: AssetId,
        max_depth: Option<i32>,
        page: &PageRequest,
    ) -> StoreResult<Page<Asset>>;
    async fn ancestors(&self, tenant: &TenantId, id: AssetId) -> StoreResult<Vec<Asset>>;
    /// `id` and its descendants down to `max_depth` levels, at most `limit` nodes.
    async fn subtree(
        &self,
        tenant: &TenantId,
        id: AssetId,
        max_depth: i32,
        limit: usize,
    ) -> StoreResult<Subtree<Asset>>;
    /// Every asset of `customer` at most `max_depth` deep, at most `limit` nodes.
    async fn customer_forest(
        &self,
        tenant: &TenantId,
        customer: CustomerId,
        max_depth: i32,
        limit: usize,
    ) -> StoreResult<Subtree<Asset>>;
    async fn move_to(
        &self,
        ctx: &Ctx,
        id: AssetId,
        to: AssetDestination,
        expected_version: Option<i64>,
    ) -> StoreResult<Asset>;
}

/// Persistence of devices.
#[async_trait]
pub trait DeviceStore: Send + Sync {
    async fn create(&self, ctx: &Ctx, new: NewDevice) -> StoreResult<Device>;
    async fn get(&self, tenant: &TenantId, id: DeviceId) -> StoreResult<Device>;
    async fn get_by_serial(&self, tenant: &TenantId, serial: &str) -> StoreResult<Device>;
    async fn update(
        &self,
        ctx: &Ctx,
        id: DeviceId,
        patch: DevicePatch,
        expected_version: Option<i64>,
    ) -> StoreResult<Device>;
    async fn delete(
        &self,
        tenant: &TenantId,
        id: DeviceId,
        expected_version: Option<i64>,
    ) -> StoreResult<()>;
    async fn list(
        &self,
        tenant: &TenantId,
        filter: &DeviceFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<Device>>;
    async fn move_to(
        &self,
        ctx: &Ctx,
        id: DeviceId,
        asset: AssetId,
        expected_version: Option<i64>,
    ) -> StoreResult<Device>;
    async fn set_connectivity(
        &self,
        ctx: &Ctx,
        id: DeviceId,
        status: ConnectivityStatus,
    ) -> StoreResult<Device>;
}

/// Reachability of a backend, for health reporting.
#[async_trait]
pub trait HealthProbe: Send + Sync {
    /// `Ok` when the backend answered a trivial query just now.
    async fn ping(&self) -> StoreResult<()>;
}

/// Everything the gRPC layer needs from storage.
#[derive(Clone)]
pub struct Store {
    pub customers: Arc<dyn CustomerStore>,
    pub assets: Arc<dyn AssetStore>,
    pub devices: Arc<dyn DeviceStore>,
    pub policies: Arc<dyn PolicyStore>,
    pub roles: Arc<dyn RoleStore>,
    pub assignments: Arc<dyn AssignmentStore>,
    pub partners: Arc<dyn PartnerStore>,
    /// Whether the service can serve: the authoritative store answers.
    pub health: Arc<dyn HealthProbe>,
    /// Each backend's own health entry (`gcdr.storage.postgres`, ...).
    pub probes: Vec<(&'static str, Arc<dyn HealthProbe>)>,
}

impl Store {
    /// A store backed entirely by DynamoDB.
    pub fn dynamodb(d: dynamodb::DynamoStore) -> Self {
        let d = Arc::new(d);
        Self {
            customers: d.clone(),
            assets: d.clone(),
            devices: d.clone(),
            policies: d.clone(),
            roles: d.clone(),
            assignments: d.clone(),
            partners: d.clone(),
            health: d.clone(),
            probes: vec![("gcdr.storage.dynamodb", d)],
        }
    }

    /// A store backed entirely by one PostgreSQL pool.
    pub fn postgres(pg: postgres::PgStore) -> Self {
        let pg = Arc::new(pg);
        Self {
            customers: pg.clone(),
            assets: pg.clone(),
            devices: pg.clone(),
            policies: pg.clone(),
            roles: pg.clone(),
            assignments: pg.clone(),
            partners: pg.clone(),
            health: pg.clone(),
            probes: vec![("gcdr.storage.postgres", pg)],
        }
    }
}

/// Persistence of policies.
#[async_trait]
pub trait PolicyStore: Send + Sync {
    async fn create(&self, ctx: &Ctx, new: NewPolicy) -> StoreResult<Policy>;
    async fn get(&self, tenant: &TenantId, id: Uuid) -> StoreResult<Policy>;
    async fn get_by_key(&self, tenant: &TenantId, key: &str) -> StoreResult<Policy>;
    async fn update(
        &self,
        ctx: &Ctx,
        id: Uuid,
        patch: PolicyPatch,
        expected_version: Option<i64>,
    ) -> StoreResult<Policy>;
    async fn delete(
        &self,
        tenant: &TenantId,
        id: Uuid,
        expected_version: Option<i64>,
    ) -> StoreResult<()>;
    async fn list(
        &self,
        tenant: &TenantId,
        filter: &AccessFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<Policy>>;
}

/// Persistence of roles.
#[async_trait]
pub trait RoleStore: Send + Sync {
    async fn create(&self, ctx: &Ctx, new: NewRole) -> StoreResult<Role>;
    async fn get(&self, tenant: &TenantId, id: Uuid) -> StoreResult<Role>;
    async fn get_by_key(&self, tenant: &TenantId, key: &str) -> StoreResult<Role>;
    async fn update(
        &self,
        ctx: &Ctx,
        id: Uuid,
        patch: RolePatch,
        expected_version: Option<i64>,
    ) -> StoreResult<Role>;
    async fn delete(
        &self,
        tenant: &TenantId,
        id: Uuid,
        expected_version: Option<i64>,
    ) -> StoreResult<()>;
    async fn list(
        &self,
        tenant: &TenantId,
        filter: &AccessFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<Role>>;
}

/// Persistence of role assignments, and what authorization reads.
#[async_trait]
pub trait AssignmentStore: Send + Sync {
    async fn assign(&self, ctx: &Ctx, new: NewAssignment) -> StoreResult<RoleAssignment>;
    async fn get(&self, tenant: &TenantId, id: Uuid) -> StoreResult<RoleAssignment>;
    async fn revoke(&self, ctx: &Ctx, id: Uuid) -> StoreResult<RoleAssignment>;
    async fn list(
        &self,
        tenant: &TenantId,
        filter: &AssignmentFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<RoleAssignment>>;
    /// The user's assignments in force, each with its role's policies in order.
    async fn grants(&self, tenant: &TenantId, user_id: &str) -> StoreResult<Vec<Grant>>;
    /// The scopes that contain `resource` in the hierarchy, the resource first:
    /// `device:D` -> its asset chain -> its customer chain. Unknown resources and other
    /// scope forms have only themselves.
    async fn ancestry(&self, tenant: &TenantId, resource: &str) -> StoreResult<Vec<String>>;
}

/// Persistence of partners and their credentials. Credential calls answer NOT_FOUND
/// for an unknown partner, and FAILED_PRECONDITION when its status forbids them.
#[async_trait]
pub trait PartnerStore: Send + Sync {
    async fn register(&self, ctx: &Ctx, new: NewPartner) -> StoreResult<Partner>;
    async fn get(&self, tenant: &TenantId, id: Uuid) -> StoreResult<Partner>;
    async fn update(
        &self,
        ctx: &Ctx,
        id: Uuid,
        patch: PartnerPatch,
        expected_version: Option<i64>,
    ) -> StoreResult<Partner>;
    async fn list(
        &self,
        tenant: &TenantId,
        status: Option<PartnerStatus>,
        page: &PageRequest,
    ) -> StoreResult<Page<Partner>>;
    async fn transition(
        &self,
        ctx: &Ctx,
        id: Uuid,
        action: LifecycleAction,
    ) -> StoreResult<Partner>;
    async fn create_api_key(&self, ctx: &Ctx, partner: Uuid, key: NewApiKey)
    -> StoreResult<ApiKey>;
    async fn list_api_keys(
        &self,
        tenant: &TenantId,
        partner: Uuid,
        status: Option<CredentialStatus>,
    ) -> StoreResult<Vec<ApiKey>>;
    async fn revoke_api_key(&self, ctx: &Ctx, partner: Uuid, key: Uuid) -> StoreResult<ApiKey>;
    /// Revokes `old` and stores `new` with the old key's name, scopes and expiry.
    async fn rotate_api_key(
        &self,
        ctx: &Ctx,
        partner: Uuid,
        old: Uuid,
        new: NewApiKey,
    ) -> StoreResult<ApiKey>;
    async fn create_oauth_client(
        &self,
        ctx: &Ctx,
        partner: Uuid,
        client: NewOAuthClient,
    ) -> StoreResult<OAuthClient>;
    async fn list_oauth_clients(
        &self,
        tenant: &TenantId,
        partner: Uuid,
        status: Option<CredentialStatus>,
    ) -> StoreResult<Vec<OAuthClient>>;
    async fn revoke_oauth_client(
        &self,
        ctx: &Ctx,
        partner: Uuid,
        client_id: &str,
    ) -> StoreResult<OAuthClient>;
    async fn create_webhook(
        &self,
        ctx: &Ctx,
        partner: Uuid,
        webhook: NewWebhook,
    ) -> StoreResult<Webhook>;
    async fn list_webhooks(&self, tenant: &TenantId, partner: Uuid) -> StoreResult<Vec<Webhook>>;
    async fn delete_webhook(&self, ctx: &Ctx, partner: Uuid, webhook: Uuid) -> StoreResult<()>;
}

/// A page token whose key does not fit the listing it was presented to.
pub(crate) fn bad_cursor() -> StoreError {
    StoreError::InvalidArgument {
        field: "page_token",
        message: "does not belong to this listing".into(),
    }
}

/// The first of `base`, `base-2`, `base-3`, ... that is not in `taken`.
pub(crate) fn first_free_code(base: &str, taken: &[String]) -> String {
    if !taken.iter().any(|t| t == base) {
        return base.to_owned();
    }
    (2..)
        .map(|n| format!("{base}-{n}"))
        .find(|c| !taken.contains(c))
        .expect("an unbounded range always has a free code")
}

/// `Conflict` when an expected version was given and differs from the stored one.
pub(crate) fn check_version(expected: Option<i64>, actual: i64) -> StoreResult<()> {
    match expected {
        Some(expected) if expected != actual => Err(StoreError::Conflict { expected, actual }),
        _ => Ok(()),
    }
}

/// The ancestor ids embedded in a path, root first, after skipping `skip` leading
/// segments (the tenant, and for assets the customer) and the node itself.
pub(crate) fn ancestor_ids(path: &str, skip: usize) -> Vec<uuid::Uuid> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let end = segments.len().saturating_sub(1);
    segments
        .get(skip..end)
        .unwrap_or_default()
        .iter()
        .filter_map(|s| uuid::Uuid::parse_str(s).ok())
        .collect()
}
