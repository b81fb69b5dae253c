//! PostgreSQL as a replica: versioned upserts of whole records (never moving a row
//! backwards), and the durable divergence log of failed secondary writes.

use async_trait::async_trait;
use diesel::prelude::*;
use diesel::upsert::excluded;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::PgStore;
use super::assets::AssetRow;
use super::assignments::AssignmentRow;
use super::customers::CustomerRow;
use super::devices::DeviceRow;
use super::policies::PolicyRow;
use super::roles::RoleRow;
use super::schema::{
    assets, customers, devices, policies, replication_divergence as rd, replication_outbox as ro,
    role_assignments, role_policies, roles,
};
use super::tx;
use crate::domain::access::{Role, RoleAssignment};
use crate::domain::{AssetId, CustomerId, DeviceId, TenantId};
use crate::storage::mode::Backend;
use crate::storage::replica::{
    Divergence, DivergenceLog, Entity, Intent, Outbox, Record, RecordKey, Replica,
};
use crate::storage::{
    AssetStore, AssignmentStore, CustomerStore, DeviceStore, PolicyStore, RoleStore, StoreError,
    StoreResult,
};

/// `Ok(None)` for a missing record.
fn absent_ok<T>(r: StoreResult<T>) -> StoreResult<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Upserts one row of a table keyed `(tenant_id, id)` with a `version` column, only
/// when the stored version is not newer; with a trailing `force` expression that is
/// true, whatever the stored version.
macro_rules! versioned_upsert {
    ($conn:expr, $table:ident, $row:expr, $force:expr) => {{
        if $force {
            let row = $row;
            diesel::insert_into($table::table)
                .values(&row)
                .on_conflict(($table::tenant_id, $table::id))
                .do_update()
                .set(&row)
                .execute($conn)
                .await
                .map(|n| n > 0)
                .map_err(StoreError::from)
        } else {
            versioned_upsert!($conn, $table, $row)
        }
    }};
    ($conn:expr, $table:ident, $row:expr) => {{
        let row = $row;
        diesel::query_dsl::methods::FilterDsl::filter(
            diesel::insert_into($table::table)
                .values(&row)
                .on_conflict(($table::tenant_id, $table::id))
                .do_update()
                .set(&row),
            $table::version.le(excluded($table::version)),
        )
        .execute($conn)
        .await
        .map(|n| n > 0)
        .map_err(StoreError::from)
    }};
}

async fn upsert_role(conn: &mut AsyncPgConnection, r: &Role, force: bool) -> StoreResult<bool> {
    let tenant = r.tenant_id.as_str();
    let ids: Vec<(String, Uuid)> = policies::table
        .filter(policies::tenant_id.eq(tenant))
        .filter(policies::key.eq_any(&r.policy_keys))
        .select((policies::key, policies::id))
        .load(conn)
        .await?;
    if !versioned_upsert!(&mut *conn, roles, RoleRow::from_domain(r), force)? {
        return Ok(false);
    }
    diesel::delete(
        role_policies::table
            .filter(role_policies::tenant_id.eq(tenant))
            .filter(role_policies::role_id.eq(r.id)),
    )
    .execute(conn)
    .await?;
    let mut rows = Vec::new();
    for (position, key) in r.policy_keys.iter().enumerate() {
        let Some((_, pid)) = ids.iter().find(|(k, _)| k == key) else {
            return Err(StoreError::FailedPrecondition {
                reason: "POLICY_NOT_FOUND",
                message: format!("role {} names policy {key:?}, absent in PostgreSQL", r.key),
            });
        };
        rows.push((
            role_policies::tenant_id.eq(tenant),
            role_policies::role_id.eq(r.id),
            role_policies::policy_id.eq(*pid),
            role_policies::position.eq(i32::try_from(position).unwrap_or(i32::MAX)),
        ));
    }
    diesel::insert_into(role_policies::table)
        .values(rows)
        .execute(conn)
        .await?;
    Ok(true)
}

async fn upsert_assignment(
    conn: &mut AsyncPgConnection,
    a: &RoleAssignment,
    force: bool,
) -> StoreResult<bool> {
    let role_id: Uuid = roles::table
        .filter(roles::tenant_id.eq(a.tenant_id.as_str()))
        .filter(roles::key.eq(&a.role_key))
        .select(roles::id)
        .first(conn)
        .await
        .optional()?
        .ok_or_else(|| StoreError::FailedPrecondition {
            reason: "ROLE_NOT_FOUND",
            message: format!("role {:?} is absent in PostgreSQL", a.role_key),
        })?;
    let row = AssignmentRow {
        tenant_id: a.tenant_id.as_str().to_owned(),
        id: a.id,
        user_id: a.user_id.clone(),
        role_id,
        scope: a.scope.clone(),
        status: a.status.as_str().to_owned(),
        expires_at: a.expires_at,
        granted_by: a.granted_by.clone(),
        granted_at: a.granted_at,
        reason: a.reason.clone(),
        revoked_by: a.revoked_by.clone(),
        revoked_at: a.revoked_at,
        version: a.version,
        created_at: a.granted_at,
        updated_at: a.revoked_at.unwrap_or(a.granted_at),
        created_by: a.granted_by.clone(),
        updated_by: a.revoked_by.clone(),
    };
    versioned_upsert!(conn, role_assignments, row, force)
}

/// Upserts many rows of a table keyed `(tenant_id, id)` in ONE statement whatever
/// their number: every column travels as one array parameter and
/// `INSERT ... SELECT * FROM unnest(...)` spreads them into rows, so the statement text
/// never changes (prepared and planned once per connection) and PostgreSQL binds a few
/// arrays instead of thousands of parameters. Each row is written only when the stored
/// version is not newer; returns the rows written.
macro_rules! unnest_versioned_upsert {
    ($conn:expr, $table:literal, $rows:expr, [$($col:ident $name:literal: $st:ty),+ $(,)?]) => {{
        use diesel::sql_types::*;
        let rows = $rows;
        let names: Vec<&str> = vec![$($name),+];
        let params: Vec<String> = (1..=names.len()).map(|i| format!("${i}")).collect();
        let sets: Vec<String> = names
            .iter()
            .filter(|n| !matches!(**n, "tenant_id" | "id"))
            .map(|n| format!("{n} = excluded.{n}"))
            .collect();
        let sql = format!(
            "INSERT INTO {table} ({cols}) SELECT * FROM unnest({params}) \
             ON CONFLICT (tenant_id, id) DO UPDATE SET {sets} \
             WHERE {table}.version <= excluded.version",
            table = $table,
            cols = names.join(", "),
            params = params.join(", "),
            sets = sets.join(", "),
        );
        let query = diesel::sql_query(sql).into_boxed::<diesel::pg::Pg>();
        $(
            let column: Vec<_> = rows.iter().map(|r| r.$col.clone()).collect();
            let query = query.bind::<Array<$st>, _>(column);
        )+
        query.execute($conn).await.map_err(StoreError::from)
    }};
}

/// Upserts one whole record on `conn` (inside the caller's transaction), never
/// moving it backwards; `false` when the stored version is newer.
pub async fn upsert_record(conn: &mut AsyncPgConnection, record: &Record) -> StoreResult<bool> {
    write_record(conn, record, false).await
}

/// [`upsert_record`], or with `force` whatever the stored version (reconcile).
async fn write_record(
    conn: &mut AsyncPgConnection,
    record: &Record,
    force: bool,
) -> StoreResult<bool> {
    match record {
        Record::Customer(c) => {
            versioned_upsert!(conn, customers, CustomerRow::from_domain(c)?, force)
        }
        Record::Asset(a) => versioned_upsert!(conn, assets, AssetRow::from_domain(a)?, force),
        Record::Device(d) => versioned_upsert!(conn, devices, DeviceRow::from_domain(d)?, force),
        Record::Policy(p) => versioned_upsert!(conn, policies, PolicyRow::from_domain(p)?, force),
        Record::Role(r) => upsert_role(conn, r, force).await,
        Record::Assignment(a) => upsert_assignment(conn, a, force).await,
        Record::Partner(p) => super::partners::write_record(conn, p, force).await,
    }
}

/// Upserts records of one entity on `conn` (customers, assets and devices in one
/// multi-row statement; the others one by one), never moving a row backwards; returns
/// how many were written (the rest were older than what PostgreSQL has).
pub async fn upsert_records<R: std::borrow::Borrow<Record>>(
    conn: &mut AsyncPgConnection,
    records: &[R],
) -> StoreResult<usize> {
    let mut customers_ = Vec::new();
    let mut assets_ = Vec::new();
    let mut devices_ = Vec::new();
    let mut written = 0;
    for r in records {
        match r.borrow() {
            Record::Customer(c) => customers_.push(CustomerRow::from_domain(c)?),
            Record::Asset(a) => assets_.push(AssetRow::from_domain(a)?),
            Record::Device(d) => devices_.push(DeviceRow::from_domain(d)?),
            other => written += usize::from(upsert_record(conn, other).await?),
        }
    }
    if !customers_.is_empty() {
        written += unnest_versioned_upsert!(conn, "customers", &customers_, [
            tenant_id "tenant_id": Text,
            id "id": diesel::sql_types::Uuid,
            parent_customer_id "parent_customer_id": Nullable<diesel::sql_types::Uuid>,
            path "path": Text,
            depth "depth": Int4,
            name "name": Text,
            display_name "display_name": Text,
            code "code": Text,
            type_ "type": Text,
            email "email": Nullable<Text>,
            phone "phone": Nullable<Text>,
            address "address": Nullable<Jsonb>,
            settings "settings": Jsonb,
            theme "theme": Nullable<Jsonb>,
            metadata "metadata": Jsonb,
            status "status": Text,
            version "version": Int8,
            created_at "created_at": Timestamptz,
            updated_at "updated_at": Timestamptz,
            created_by "created_by": Text,
            updated_by "updated_by": Nullable<Text>,
        ])?;
    }
    if !assets_.is_empty() {
        written += unnest_versioned_upsert!(conn, "assets", &assets_, [
            tenant_id "tenant_id": Text,
            id "id": diesel::sql_types::Uuid,
            customer_id "customer_id": diesel::sql_types::Uuid,
            parent_asset_id "parent_asset_id": Nullable<diesel::sql_types::Uuid>,
            path "path": Text,
            depth "depth": Int4,
            name "name": Text,
            display_name "display_name": Text,
            code "code": Text,
            type_ "type": Text,
            description "description": Nullable<Text>,
            location "location": Jsonb,
            specs "specs": Jsonb,
            tags "tags": Jsonb,
            metadata "metadata": Jsonb,
            status "status": Text,
            version "version": Int8,
            created_at "created_at": Timestamptz,
            updated_at "updated_at": Timestamptz,
            created_by "created_by": Text,
            updated_by "updated_by": Nullable<Text>,
        ])?;
    }
    if !devices_.is_empty() {
        written += unnest_versioned_upsert!(conn, "devices", &devices_, [
            tenant_id "tenant_id": Text,
            id "id": diesel::sql_types::Uuid,
            asset_id "asset_id": diesel::sql_types::Uuid,
            customer_id "customer_id": diesel::sql_types::Uuid,
            name "name": Text,
            display_name "display_name": Text,
            label "label": Nullable<Text>,
            type_ "type": Text,
            description "description": Nullable<Text>,
            serial_number "serial_number": Text,
            external_id "external_id": Nullable<Text>,
            specs "specs": Jsonb,
            credentials "credentials": Nullable<Jsonb>,
            telemetry_config "telemetry_config": Jsonb,
            tags "tags": Jsonb,
            metadata "metadata": Jsonb,
            attributes "attributes": Jsonb,
            connectivity_status "connectivity_status": Text,
            last_connected_at "last_connected_at": Nullable<Timestamptz>,
            last_disconnected_at "last_disconnected_at": Nullable<Timestamptz>,
            status "status": Text,
            version "version": Int8,
            created_at "created_at": Timestamptz,
            updated_at "updated_at": Timestamptz,
            created_by "created_by": Text,
            updated_by "updated_by": Nullable<Text>,
        ])?;
    }
    Ok(written)
}

#[async_trait]
impl Replica for PgStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    async fn load(&self, key: &RecordKey) -> StoreResult<Option<Record>> {
        let t = &key.tenant;
        Ok(match key.entity {
            Entity::Customer => absent_ok(CustomerStore::get(self, t, CustomerId(key.id)).await)?
                .map(Record::Customer),
            Entity::Asset => {
                absent_ok(AssetStore::get(self, t, AssetId(key.id)).await)?.map(Record::Asset)
            }
            Entity::Device => {
                absent_ok(DeviceStore::get(self, t, DeviceId(key.id)).await)?.map(Record::Device)
            }
            Entity::Policy => {
                absent_ok(PolicyStore::get(self, t, key.id).await)?.map(Record::Policy)
            }
            Entity::Role => absent_ok(RoleStore::get(self, t, key.id).await)?.map(Record::Role),
            Entity::Assignment => {
                absent_ok(AssignmentStore::get(self, t, key.id).await)?.map(Record::Assignment)
            }
            Entity::Partner => {
                let mut conn = self.conn().await?;
                super::partners::load_record(&mut conn, t, key.id)
                    .await?
                    .map(|p| Record::Partner(Box::new(p)))
            }
        })
    }

    async fn upsert(&self, record: &Record) -> StoreResult<bool> {
        self.timed("replica.upsert", async {
            let mut conn = self.conn().await?;
            tx(&mut conn, async |conn| upsert_record(conn, record).await).await
        })
        .await
    }

    async fn overwrite(&self, record: &Record) -> StoreResult<()> {
        self.timed("replica.overwrite", async {
            let mut conn = self.conn().await?;
            tx(&mut conn, async |conn| {
                write_record(conn, record, true).await
            })
            .await?;
            Ok(())
        })
        .await
    }

    /// Deletes the row and leaves a tombstone (`replica_tombstones`), in one
    /// transaction, so that a backfill that read the record before the delete does
    /// not load it again.
    async fn remove(&self, key: &RecordKey) -> StoreResult<()> {
        self.timed("replica.remove", async {
            let mut conn = self.conn().await?;
            tx(&mut conn, async |conn| {
                remove_with_tombstone(conn, key).await
            })
            .await
        })
        .await
    }

    async fn children(&self, key: &RecordKey) -> StoreResult<Vec<RecordKey>> {
        let t = key.tenant.as_str();
        let mut conn = self.conn().await?;
        let ids: Vec<Uuid> = match key.entity {
            Entity::Customer => {
                customers::table
                    .filter(customers::tenant_id.eq(t))
                    .filter(customers::parent_customer_id.eq(key.id))
                    .select(customers::id)
                    .load(&mut conn)
                    .await?
            }
            Entity::Asset => {
                assets::table
                    .filter(assets::tenant_id.eq(t))
                    .filter(assets::parent_asset_id.eq(key.id))
                    .select(assets::id)
                    .load(&mut conn)
                    .await?
            }
            _ => return Ok(Vec::new()),
        };
        Ok(ids
            .into_iter()
            .map(|id| RecordKey {
                entity: key.entity,
                tenant: key.tenant.clone(),
                id,
            })
            .collect())
    }
}

#[async_trait]
impl DivergenceLog for PgStore {
    async fn record(
        &self,
        key: &RecordKey,
        target: Backend,
        operation: &str,
        error: &str,
    ) -> StoreResult<()> {
        let mut conn = self.conn().await?;
        let now = chrono::Utc::now();
        diesel::insert_into(rd::table)
            .values((
                rd::tenant_id.eq(key.tenant.as_str()),
                rd::entity.eq(key.entity.as_str()),
                rd::entity_id.eq(key.id.to_string()),
                rd::target_store.eq(target.as_str()),
                rd::operation.eq(operation),
                rd::error.eq(error),
                rd::first_failed_at.eq(now),
                rd::last_failed_at.eq(now),
            ))
            .on_conflict((rd::tenant_id, rd::entity, rd::entity_id, rd::target_store))
            .do_update()
            .set((
                rd::operation.eq(operation),
                rd::error.eq(error),
                rd::failures.eq(rd::failures + 1),
                rd::last_failed_at.eq(now),
            ))
            .execute(&mut conn)
            .await?;
        Ok(())
    }

    async fn list(&self, tenant: Option<&TenantId>) -> StoreResult<Vec<Divergence>> {
        let mut conn = self.conn().await?;
        let mut q = rd::table
            .select((
                rd::tenant_id,
                rd::entity,
                rd::entity_id,
                rd::target_store,
                rd::operation,
                rd::error,
                rd::failures,
            ))
            .order((rd::tenant_id, rd::entity, rd::entity_id))
            .into_boxed();
        if let Some(t) = tenant {
            q = q.filter(rd::tenant_id.eq(t.as_str()));
        }
        type Row = (String, String, String, String, String, String, i64);
        let rows: Vec<Row> = q.load(&mut conn).await?;
        Ok(rows
            .into_iter()
            .filter_map(|(t, e, id, target, operation, error, failures)| {
                Some(Divergence {
                    key: RecordKey {
                        entity: Entity::parse(&e)?,
                        tenant: TenantId::parse(&t)?,
                        id: Uuid::parse_str(&id).ok()?,
                    },
                    target: match target.as_str() {
                        "dynamodb" => Backend::Dynamodb,
                        _ => Backend::Postgres,
                    },
                    operation,
                    error,
                    failures,
                })
            })
            .collect())
    }

    async fn resolve(&self, key: &RecordKey, target: Backend, failures: i64) -> StoreResult<()> {
        let mut conn = self.conn().await?;
        diesel::delete(
            rd::table
                .filter(rd::tenant_id.eq(key.tenant.as_str()))
                .filter(rd::entity.eq(key.entity.as_str()))
                .filter(rd::entity_id.eq(key.id.to_string()))
                .filter(rd::target_store.eq(target.as_str()))
                .filter(rd::failures.eq(failures)),
        )
        .execute(&mut conn)
        .await?;
        Ok(())
    }
}

#[async_trait]
impl Outbox for PgStore {
    /// Dual write inserts an intent in the write's own transaction (tx.rs); this is
    /// an intent on its own (a write that committed no transaction), durably.
    async fn intend(&self, intent: &Intent) -> StoreResult<()> {
        let mut conn = self.conn().await?;
        diesel::insert_into(ro::table)
            .values((
                ro::intent_id.eq(intent.id),
                ro::tenant_id.eq(intent.key.tenant.as_str()),
                ro::entity.eq(intent.key.entity.as_str()),
                ro::entity_id.eq(intent.key.id.to_string()),
                ro::target_store.eq(intent.target.as_str()),
                ro::subtree.eq(intent.subtree),
            ))
            .on_conflict_do_nothing()
            .execute(&mut conn)
            .await?;
        Ok(())
    }

    /// The deletion of intents is committed asynchronously (no WAL flush of its
    /// own): a lost deletion only means a harmless replay.
    async fn clear(&self, intents: &[Intent]) -> StoreResult<()> {
        if intents.is_empty() {
            return Ok(());
        }
        let mut conn = self.outbox_conn().await?;
        let ids: Vec<Uuid> = intents.iter().map(|i| i.id).collect();
        diesel::delete(ro::table.filter(ro::intent_id.eq_any(ids)))
            .execute(&mut conn)
            .await?;
        Ok(())
    }

    async fn stale(&self, age: std::time::Duration, limit: usize) -> StoreResult<Vec<Intent>> {
        let mut conn = self.conn().await?;
        // The database's clock, which also stamped the intents.
        let cutoff = diesel::dsl::sql::<diesel::sql_types::Bool>(&format!(
            "created_at < now() - interval '{} milliseconds'",
            age.as_millis()
        ));
        type Row = (Uuid, String, String, String, String, bool);
        let rows: Vec<Row> = ro::table
            .select((
                ro::intent_id,
                ro::tenant_id,
                ro::entity,
                ro::entity_id,
                ro::target_store,
                ro::subtree,
            ))
            .filter(cutoff)
            .order(ro::created_at)
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .load(&mut conn)
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, t, e, entity_id, target, subtree)| {
                Some(Intent {
                    id,
                    key: RecordKey {
                        entity: Entity::parse(&e)?,
                        tenant: TenantId::parse(&t)?,
                        id: Uuid::parse_str(&entity_id).ok()?,
                    },
                    target: Backend::parse(&target)?,
                    subtree,
                })
            })
            .collect())
    }
}

/// The advisory lock (hashed) that a backfill page load holds shared and a replica
/// remove exclusively, so a remove waits for the pages in flight: its DELETE then sees
/// what they wrote, and pages after it see its tombstone.
pub fn removal_lock(entity: Entity) -> String {
    format!("gcdr.replica_remove.{}", entity.as_str())
}

/// [`Replica::remove`]'s delete and tombstone.
async fn remove_with_tombstone(conn: &mut AsyncPgConnection, key: &RecordKey) -> StoreResult<()> {
    diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind::<diesel::sql_types::Text, _>(removal_lock(key.entity))
        .execute(&mut *conn)
        .await?;
    let t = key.tenant.as_str();
    macro_rules! delete {
        ($table:ident) => {
            diesel::delete(
                $table::table
                    .filter($table::tenant_id.eq(t))
                    .filter($table::id.eq(key.id)),
            )
            .execute(&mut *conn)
            .await?
        };
    }
    match key.entity {
        Entity::Customer => delete!(customers),
        Entity::Asset => delete!(assets),
        Entity::Device => delete!(devices),
        Entity::Policy => delete!(policies),
        Entity::Role => delete!(roles),
        Entity::Assignment => delete!(role_assignments),
        Entity::Partner => {
            use super::schema::partners;
            delete!(partners)
        }
    };
    diesel::sql_query(
        "INSERT INTO replica_tombstones (entity, tenant_id, id) VALUES ($1, $2, $3) \
         ON CONFLICT (entity, tenant_id, id) DO UPDATE SET deleted_at = now()",
    )
    .bind::<diesel::sql_types::Text, _>(key.entity.as_str())
    .bind::<diesel::sql_types::Text, _>(t)
    .bind::<diesel::sql_types::Text, _>(key.id.to_string())
    .execute(conn)
    .await?;
    Ok(())
}
