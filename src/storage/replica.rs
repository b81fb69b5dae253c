//! Whole records and the replica interface that copies them between stores: what dual
//! write, shadow reads and the migration tools are built on.

use async_trait::async_trait;
use uuid::Uuid;

use super::StoreResult;
use super::mode::Backend;
use crate::domain::TenantId;
use crate::domain::access::{Policy, Role, RoleAssignment};
use crate::domain::asset::Asset;
use crate::domain::customer::Customer;
use crate::domain::device::Device;
use crate::domain::partner::PartnerRecord;

/// The seven replicated entities.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entity {
    Customer,
    Asset,
    Device,
    Policy,
    Role,
    Assignment,
    Partner,
}

impl Entity {
    /// Every entity, parents before children (a backfill order).
    pub const ALL: [Entity; 7] = [
        Entity::Customer,
        Entity::Asset,
        Entity::Device,
        Entity::Policy,
        Entity::Role,
        Entity::Assignment,
        Entity::Partner,
    ];

    /// The name used in metrics, logs and divergence records.
    pub fn as_str(self) -> &'static str {
        match self {
            Entity::Customer => "customer",
            Entity::Asset => "asset",
            Entity::Device => "device",
            Entity::Policy => "policy",
            Entity::Role => "role",
            Entity::Assignment => "role_assignment",
            Entity::Partner => "partner",
        }
    }

    /// Parses [`Entity::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

/// The key of one record.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RecordKey {
    pub entity: Entity,
    pub tenant: TenantId,
    pub id: Uuid,
}

/// One whole record, secrets' hashes included.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    Customer(Customer),
    Asset(Asset),
    Device(Device),
    Policy(Policy),
    Role(Role),
    Assignment(RoleAssignment),
    Partner(Box<PartnerRecord>),
}

impl Record {
    /// The record's key.
    pub fn key(&self) -> RecordKey {
        let (entity, tenant, id) = match self {
            Record::Customer(c) => (Entity::Customer, &c.tenant_id, c.id.0),
            Record::Asset(a) => (Entity::Asset, &a.tenant_id, a.id.0),
            Record::Device(d) => (Entity::Device, &d.tenant_id, d.id.0),
            Record::Policy(p) => (Entity::Policy, &p.tenant_id, p.id),
            Record::Role(r) => (Entity::Role, &r.tenant_id, r.id),
            Record::Assignment(a) => (Entity::Assignment, &a.tenant_id, a.id),
            Record::Partner(p) => (Entity::Partner, &p.partner.tenant_id, p.partner.id),
        };
        RecordKey {
            entity,
            tenant: tenant.clone(),
            id,
        }
    }

    /// The record's version.
    pub fn version(&self) -> i64 {
        match self {
            Record::Customer(c) => c.version,
            Record::Asset(a) => a.version,
            Record::Device(d) => d.version,
            Record::Policy(p) => p.version,
            Record::Role(r) => r.version,
            Record::Assignment(a) => a.version,
            Record::Partner(p) => p.partner.version,
        }
    }

    /// Depth in its hierarchy (0 for flat entities): replicas write parents first.
    pub fn depth(&self) -> i32 {
        match self {
            Record::Customer(c) => c.depth,
            Record::Asset(a) => a.depth,
            _ => 0,
        }
    }
}

/// A store seen as a set of whole records.
#[async_trait]
pub trait Replica: Send + Sync {
    /// Which store this is.
    fn backend(&self) -> Backend;

    /// Reads one whole record (`None`: absent).
    async fn load(&self, key: &RecordKey) -> StoreResult<Option<Record>>;

    /// Writes the record unless the stored one has a higher version: a retried or
    /// reordered copy never moves a record backwards. Returns whether it was written.
    async fn upsert(&self, record: &Record) -> StoreResult<bool>;

    /// Writes the record whatever version is stored: reconcile making a store hold
    /// exactly the authoritative copy, even when that copy is older than its own.
    async fn overwrite(&self, record: &Record) -> StoreResult<()>;

    /// Removes the record if present.
    async fn remove(&self, key: &RecordKey) -> StoreResult<()>;

    /// The keys of the customers or assets whose parent pointer names `key`, whatever
    /// their path or customer (a DynamoDB move that stopped part way left some of them
    /// under the new path while their parent kept the old one); none for the other
    /// entities.
    async fn children(&self, key: &RecordKey) -> StoreResult<Vec<RecordKey>>;
}

/// One recorded failed secondary write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Divergence {
    pub key: RecordKey,
    /// The store that missed the write.
    pub target: Backend,
    pub operation: String,
    pub error: String,
    pub failures: i64,
}

/// Where failed secondary writes are recorded durably (PostgreSQL's
/// `replication_divergence`), for reconcile to repair.
#[async_trait]
pub trait DivergenceLog: Send + Sync {
    /// Records (or counts again) a failed write of `key` to `target`.
    async fn record(
        &self,
        key: &RecordKey,
        target: Backend,
        operation: &str,
        error: &str,
    ) -> StoreResult<()>;

    /// Every open divergence of `tenant` (all tenants when `None`).
    async fn list(&self, tenant: Option<&TenantId>) -> StoreResult<Vec<Divergence>>;

    /// Forgets a repaired divergence, unless it failed again after it was listed with
    /// `failures` failures (then it stays, for the next reconcile).
    async fn resolve(&self, key: &RecordKey, target: Backend, failures: i64) -> StoreResult<()>;
}

/// A copy a dual write still owes the other store: written durably to the
/// authoritative store's outbox alongside the write, cleared once the copy is applied
/// or its failure recorded in the divergence log. One that outlives its process (a
/// crash, `kill -9`) is replayed by whichever replica finds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Intent {
    pub id: Uuid,
    pub key: RecordKey,
    /// The store that is owed the copy.
    pub target: Backend,
    /// Copy the subtree under the record (a move), not the record alone.
    pub subtree: bool,
}

/// Where a store keeps its [`Intent`]s (`replication_outbox` in PostgreSQL,
/// `gcdr-replication-outbox-<stage>` in DynamoDB).
#[async_trait]
pub trait Outbox: Send + Sync {
    /// Writes one intent, durable on return.
    async fn intend(&self, intent: &Intent) -> StoreResult<()>;

    /// Deletes intents (absent ones are ignored).
    async fn clear(&self, intents: &[Intent]) -> StoreResult<()>;

    /// Up to `limit` intents written more than `age` ago, oldest first.
    async fn stale(&self, age: std::time::Duration, limit: usize) -> StoreResult<Vec<Intent>>;
}
