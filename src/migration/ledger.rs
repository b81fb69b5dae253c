//! The migration ledger: legacy items quarantined (not loaded, with the reason and the
//! item as read) and items loaded with repaired fields. Verify reads it so that a
//! deliberate difference is reported as such, never as a mismatch.

use std::collections::HashMap;

use diesel::sql_types::{Array, Jsonb, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::storage::StoreResult;
use crate::storage::replica::Entity;

/// A condition selecting the rows of `table` (keyed by `filter`'s columns, then
/// `tenant_id`, `id`, as the ledger, deferral and tombstone tables are) whose keys
/// are the pairs of the text arrays `$first` (tenants) and `$first+1` (ids): one
/// primary-key probe per key, then the rows by their `ctid`. `(tenant_id, id) IN
/// (SELECT * FROM unnest(...))` was planned as a hash join over every row of the
/// entity, whatever the statistics: a scan of the whole table per page, quadratic
/// over a run (at 300,000 items, deleting 1,000 resolved deferrals took 65 ms
/// against 21 ms at 100,000). A DELETE through it misses a row that a concurrent
/// transaction updates meanwhile (its ctid moves): the tables it deletes from are
/// written only by backfill pages, one run at a time, each key in one page.
pub(crate) fn rows_of_keys(table: &str, filter: &str, first: usize) -> String {
    format!(
        "ctid = ANY(ARRAY(SELECT x.ctid FROM unnest(${first}::text[], ${}::text[]) AS k(t, i) \
         CROSS JOIN LATERAL (SELECT d.ctid FROM {table} d WHERE {filter} \
         AND d.tenant_id = k.t AND d.id = k.i LIMIT 1) x))",
        first + 1
    )
}

/// A key as the ledger stores it: tenant and id, both text (a quarantined item's id
/// may not even be a UUID).
pub type LedgerKey = (String, String);

/// Records (or replaces) the quarantine of one item.
pub async fn quarantine(
    conn: &mut AsyncPgConnection,
    entity: Entity,
    key: &LedgerKey,
    reason: &str,
    item: &serde_json::Value,
    run_id: &str,
) -> StoreResult<()> {
    diesel::sql_query(
        "INSERT INTO migration_quarantine (entity, tenant_id, id, reason, item, run_id) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (entity, tenant_id, id) DO UPDATE \
         SET reason = excluded.reason, item = excluded.item, run_id = excluded.run_id, \
             quarantined_at = now()",
    )
    .bind::<Text, _>(entity.as_str())
    .bind::<Text, _>(&key.0)
    .bind::<Text, _>(&key.1)
    .bind::<Text, _>(reason)
    .bind::<Jsonb, _>(item)
    .bind::<Text, _>(run_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records (or replaces) the repair of one loaded item: which legacy attributes were
/// changed and under which rules.
pub async fn repaired(
    conn: &mut AsyncPgConnection,
    entity: Entity,
    key: &LedgerKey,
    fields: &[String],
    rules: &[String],
    run_id: &str,
) -> StoreResult<()> {
    diesel::sql_query(
        "INSERT INTO migration_repairs (entity, tenant_id, id, fields, rules, run_id) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (entity, tenant_id, id) DO UPDATE \
         SET fields = excluded.fields, rules = excluded.rules, run_id = excluded.run_id, \
             repaired_at = now()",
    )
    .bind::<Text, _>(entity.as_str())
    .bind::<Text, _>(&key.0)
    .bind::<Text, _>(&key.1)
    .bind::<Array<Text>, _>(fields)
    .bind::<Array<Text>, _>(rules)
    .bind::<Text, _>(run_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Forgets an item's quarantine and repair (it was loaded as it is).
pub async fn clear(
    conn: &mut AsyncPgConnection,
    entity: Entity,
    key: &LedgerKey,
) -> StoreResult<()> {
    for table in ["migration_quarantine", "migration_repairs"] {
        diesel::sql_query(format!(
            "DELETE FROM {table} WHERE entity = $1 AND tenant_id = $2 AND id = $3"
        ))
        .bind::<Text, _>(entity.as_str())
        .bind::<Text, _>(&key.0)
        .bind::<Text, _>(&key.1)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

#[derive(diesel::QueryableByName)]
struct Row {
    #[diesel(sql_type = Text)]
    tenant_id: String,
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Array<Text>)]
    values: Vec<String>,
}

/// Repaired fields of those of `keys` that were repaired.
pub async fn repairs_for(
    conn: &mut AsyncPgConnection,
    entity: Entity,
    keys: &[LedgerKey],
) -> StoreResult<HashMap<LedgerKey, Vec<String>>> {
    lookup(conn, "fields", "migration_repairs", entity, keys).await
}

/// Quarantine reasons (as a one-element list) of those of `keys` that are quarantined.
pub async fn quarantined_for(
    conn: &mut AsyncPgConnection,
    entity: Entity,
    keys: &[LedgerKey],
) -> StoreResult<HashMap<LedgerKey, Vec<String>>> {
    lookup(conn, "ARRAY[reason]", "migration_quarantine", entity, keys).await
}

/// `values` of the rows of ledger `table` with those of `keys`.
async fn lookup(
    conn: &mut AsyncPgConnection,
    values: &str,
    table: &str,
    entity: Entity,
    keys: &[LedgerKey],
) -> StoreResult<HashMap<LedgerKey, Vec<String>>> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let (tenants, ids): (Vec<String>, Vec<String>) = keys.iter().cloned().unzip();
    let rows: Vec<Row> = diesel::sql_query(format!(
        "SELECT tenant_id, id, {values} AS values FROM {table} WHERE {}",
        rows_of_keys(table, "d.entity = $1", 2)
    ))
    .bind::<Text, _>(entity.as_str())
    .bind::<Array<Text>, _>(&tenants)
    .bind::<Array<Text>, _>(&ids)
    .load(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| ((r.tenant_id, r.id), r.values))
        .collect())
}

/// Quarantined items per entity and reason (for summaries and the runbook).
pub async fn quarantine_summary(
    conn: &mut AsyncPgConnection,
) -> StoreResult<Vec<(String, String, i64)>> {
    #[derive(diesel::QueryableByName)]
    struct R {
        #[diesel(sql_type = Text)]
        entity: String,
        #[diesel(sql_type = Text)]
        reason: String,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let rows: Vec<R> = diesel::sql_query(
        "SELECT entity, split_part(reason, ':', 1) AS reason, count(*) AS n \
         FROM migration_quarantine GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .load(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.entity, r.reason, r.n))
        .collect())
}
