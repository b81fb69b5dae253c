//! Loading one page: the PostgreSQL transaction that writes the rows, the ledger
//! entries, the deferrals and the segment's checkpoint together.

use super::*;

/// What happened to one page (added to the checkpoint's counts).
#[derive(Default, Debug)]
pub(super) struct PageOutcome {
    pub(super) loaded: i64,
    pub(super) unchanged: i64,
    pub(super) repaired: i64,
    pub(super) quarantined: i64,
    pub(super) deferred: i64,
    pub(super) skipped: i64,
}

/// One item as a page holds it between its read and its load: the raw key, the
/// decoded record (or why it cannot be decoded) and the item as DynamoDB JSON text,
/// kept for a deferral or a quarantine. The SDK's form of a legacy item (a hash map of
/// attribute values) is about three times its size: decoding on arrival keeps a page
/// small next to what the process needs anyway. Preparing the page borrows the
/// records ([`prepare::Held`]); only a repaired one is copied.
pub(super) struct Scanned {
    pub(super) key: ledger::LedgerKey,
    pub(super) record: Result<Record, String>,
    raw: Box<str>,
}

impl Scanned {
    /// Decodes an item read from DynamoDB.
    pub(super) fn from_item(entity: Entity, item: Item) -> Self {
        let raw = item_json_text(&item).into_boxed_str();
        Self::decoded(entity, &item, raw)
    }

    /// Decodes an item kept as [`Scanned::json`] (`None`: not such JSON).
    pub(super) fn from_json(entity: Entity, text: String) -> Option<Self> {
        let value: serde_json::Value = serde_json::from_str(&text).ok()?;
        let item = crate::storage::dynamodb::item_from_json(&value)?;
        Some(Self::decoded(entity, &item, text.into_boxed_str()))
    }

    fn decoded(entity: Entity, item: &Item, raw: Box<str>) -> Self {
        let key = raw_key(item);
        let record = record_from_item(entity, item).map_err(|e| {
            if key.0.is_empty() || key.1.is_empty() {
                "undecodable: tenantId or id missing".to_owned()
            } else {
                match &e {
                    StoreError::Internal(src) => format!("undecodable: {src}"),
                    e => format!("undecodable: {e}"),
                }
            }
        });
        Self { key, record, raw }
    }

    /// The item as DynamoDB JSON text ([`item_json_text`]).
    pub(super) fn json(&self) -> &str {
        &self.raw
    }

    /// The item as DynamoDB JSON, for the quarantine.
    fn value(&self) -> serde_json::Value {
        serde_json::from_str(&self.raw).unwrap_or(serde_json::Value::Null)
    }
}

/// Items per statement that carries them (the upserts, the deferrals' items). A
/// statement's parameters are encoded twice on the way out (the bind message, then the
/// connection's write buffer, which keeps its size), so a whole page in one statement
/// held three copies of it per segment and grew every pooled connection's buffer to a
/// page. 250 rows cost no throughput (the per-statement overhead is well under a
/// millisecond) and keep that memory to a quarter of a page.
pub const STATEMENT_ROWS: usize = 250;

/// Loads one page in one transaction with the checkpoint (or, for the deferred pass,
/// with the removal of what it resolved). `last` is where the segment's scan now
/// stands (`None`: finished). In the deferred pass `final_round` quarantines what still
/// waits for a parent. `read_at`: when the items were read from DynamoDB, if after
/// the run started (the divergence replay); a delete since then skips the item.
#[allow(clippy::too_many_arguments)]
pub(super) async fn load_page(
    stores: &Stores,
    run_id: &str,
    entity: Entity,
    segment: i32,
    scope: &Scope,
    items: &[Scanned],
    last: Option<&ScanKey>,
    final_round: bool,
    read_at: Option<chrono::DateTime<chrono::Utc>>,
) -> StoreResult<PageOutcome> {
    let mut conn = stores.pg.conn().await?;
    let run_id = run_id.to_owned();
    let scope = scope.clone();
    conn.transaction::<_, StoreError, _>(async |conn| {
        let mut out = PageOutcome::default();
        let mut keyed = Vec::new();
        for item in items {
            if !scope.has_tenant(&item.key.0) {
                out.skipped += 1;
                continue;
            }
            keyed.push((item.key.clone(), item));
        }
        // Removed by dual write since the run started (or since `read_at`): read
        // before the delete, and must not come back (resolved, if it was deferred).
        // The shared lock makes a concurrent remove wait for this page's commit, so
        // its DELETE sees what the page wrote (replica.rs).
        diesel::sql_query("SELECT pg_advisory_xact_lock_shared(hashtextextended($1, 0))")
            .bind::<Text, _>(crate::storage::postgres::removal_lock(entity))
            .execute(&mut *conn)
            .await?;
        let removed = removed_since(conn, &run_id, read_at, entity, &keyed).await?;
        let mut resolved = Vec::new();
        if !removed.is_empty() {
            keyed.retain(|(k, _)| {
                let gone = removed.contains(&(k.0.clone(), tombstone_id(&k.1)));
                if gone {
                    resolved.push(k.clone());
                }
                !gone
            });
            out.skipped += resolved.len() as i64;
        }
        let prepared = prepare(conn, entity, &keyed).await?;
        let mut ready = Vec::new();
        let mut clean = Vec::new();
        let mut deferred = Vec::new();
        let mut repairs: HashMap<ledger::LedgerKey, (Vec<String>, Vec<String>)> = HashMap::new();
        for ((key, item), p) in keyed.iter().zip(prepared) {
            match p {
                Prepared::Ready {
                    record,
                    fields,
                    rules,
                } => {
                    if fields.is_empty() {
                        clean.push(key.clone());
                    } else {
                        repairs.insert(key.clone(), (fields, rules));
                    }
                    resolved.push(key.clone());
                    ready.push((key.clone(), *item, record));
                }
                // Counted once, when first deferred by the scan. In the deferred pass
                // its row stays for the next round (`defer` only fills in an item the
                // row lacks, read again from DynamoDB).
                Prepared::Defer { waits_for } if !final_round => {
                    if segment != DEFERRED_PASS {
                        out.deferred += 1;
                    }
                    deferred.push((key.clone(), waits_for, *item));
                }
                Prepared::Defer { waits_for } => {
                    out.quarantined += 1;
                    resolved.push(key.clone());
                    let reason = format!("orphan: {waits_for} is not in the legacy data");
                    ledger::quarantine(conn, entity, key, &reason, &item.value(), &run_id).await?;
                }
                Prepared::Quarantine { reason } => {
                    out.quarantined += 1;
                    resolved.push(key.clone());
                    ledger::quarantine(conn, entity, key, &reason, &item.value(), &run_id).await?;
                }
            }
        }
        // Everything in statements of STATEMENT_ROWS rows in one savepoint; if
        // PostgreSQL refuses one row, each row in its own savepoint, quarantining the
        // refused ones. Parents before children (the rows go in this order).
        ready.sort_by_key(|(_, _, r)| r.depth());
        let (mut ready, mut records): (Vec<(ledger::LedgerKey, &Scanned)>, Vec<Held<Record>>) =
            ready.into_iter().map(|(k, i, r)| ((k, i), r)).unzip();
        let bulk = upsert_chunks(conn, &records).await;
        match bulk {
            Ok(written) => {
                out.loaded += written as i64;
                out.unchanged += (records.len() - written) as i64;
            }
            Err(StoreError::Unavailable(m)) => return Err(StoreError::Unavailable(m)),
            Err(_) => {
                let mut refused = HashSet::new();
                for ((key, item), record) in ready.iter().zip(records.iter_mut()) {
                    let mut r = upsert_chunks(conn, std::slice::from_ref(record)).await;
                    // A code taken meanwhile by another segment's page (invisible to
                    // the check before): the code-collision rule, as if seen then.
                    if let Err(StoreError::AlreadyExists {
                        reason: "CUSTOMER_CODE_EXISTS" | "ASSET_CODE_EXISTS",
                        ..
                    }) = r
                    {
                        let id = record.key().id;
                        match record.to_mut() {
                            Record::Customer(c) => c.code = recode(&c.code, id),
                            Record::Asset(a) => a.code = recode(&a.code, id),
                            _ => {}
                        }
                        note_recode(&mut repairs, &mut clean, key);
                        r = upsert_chunks(conn, std::slice::from_ref(record)).await;
                    }
                    match r {
                        Ok(1) => out.loaded += 1,
                        Ok(_) => out.unchanged += 1,
                        Err(StoreError::Unavailable(m)) => {
                            return Err(StoreError::Unavailable(m));
                        }
                        Err(e) => {
                            out.quarantined += 1;
                            refused.insert(key.clone());
                            ledger::quarantine(
                                conn,
                                entity,
                                key,
                                &refusal(&e),
                                &item.value(),
                                &run_id,
                            )
                            .await?;
                        }
                    }
                }
                clean.retain(|k| !refused.contains(k));
                ready.retain(|(k, _)| !refused.contains(k));
            }
        }
        // Repairs of the rows that were written (or that PostgreSQL already had newer).
        for (key, _) in &ready {
            if let Some((fields, rules)) = repairs.get(key) {
                ledger::repaired(conn, entity, key, fields, rules, &run_id).await?;
                out.repaired += 1;
            }
        }
        forget_ledger(conn, entity, &clean, &ready).await?;
        defer(conn, &run_id, entity, &deferred, segment != DEFERRED_PASS).await?;
        if segment == DEFERRED_PASS {
            undefer(conn, &run_id, entity, &resolved).await?;
        }
        let last_key = last
            .map(|k| serde_json::to_value(k).expect("a string map serializes"))
            .filter(|_| segment != DEFERRED_PASS);
        diesel::sql_query(
            "UPDATE backfill_checkpoints SET \
                   last_key = CASE WHEN $4 THEN $5 ELSE last_key END, \
                   done = CASE WHEN $4 THEN $6 ELSE done END, \
                   scanned = scanned + $7, loaded = loaded + $8, unchanged = unchanged + $9, \
                   repaired = repaired + $10, quarantined = quarantined + $11, \
                   deferred = deferred + $12, skipped = skipped + $13, updated_at = now() \
                 WHERE run_id = $1 AND entity = $2 AND segment = $3",
        )
        .bind::<Text, _>(&run_id)
        .bind::<Text, _>(entity.as_str())
        .bind::<Integer, _>(segment)
        .bind::<Bool, _>(segment != DEFERRED_PASS)
        .bind::<Nullable<Jsonb>, _>(last_key)
        .bind::<Bool, _>(last.is_none())
        .bind::<BigInt, _>(if segment == DEFERRED_PASS {
            0
        } else {
            items.len() as i64
        })
        .bind::<BigInt, _>(out.loaded)
        .bind::<BigInt, _>(out.unchanged)
        .bind::<BigInt, _>(out.repaired)
        .bind::<BigInt, _>(out.quarantined)
        .bind::<BigInt, _>(out.deferred)
        .bind::<BigInt, _>(out.skipped)
        .execute(conn)
        .await?;
        Ok(out)
    })
    .await
}

/// Upserts records in statements of [`STATEMENT_ROWS`], all in one savepoint (a
/// refusal leaves the page's transaction usable); returns how many were written.
async fn upsert_chunks(
    conn: &mut AsyncPgConnection,
    records: &[Held<'_, Record>],
) -> StoreResult<usize> {
    conn.transaction::<_, StoreError, _>(async |c| {
        let mut written = 0;
        for chunk in records.chunks(STATEMENT_ROWS) {
            written += upsert_records(c, chunk).await?;
        }
        Ok(written)
    })
    .await
}

/// Lists `key`'s code as repaired by the code-collision rule.
fn note_recode(
    repairs: &mut HashMap<ledger::LedgerKey, (Vec<String>, Vec<String>)>,
    clean: &mut Vec<ledger::LedgerKey>,
    key: &ledger::LedgerKey,
) {
    let entry = repairs.entry(key.clone()).or_default();
    for (list, value) in [(&mut entry.0, "code"), (&mut entry.1, "code-collision")] {
        if !list.iter().any(|v| v == value) {
            list.push(value.to_owned());
        }
    }
    clean.retain(|k| k != key);
}

/// Why PostgreSQL refused a row, for the quarantine table.
pub(super) fn refusal(e: &StoreError) -> String {
    match e {
        StoreError::AlreadyExists { reason, field } => format!("duplicate: {field} ({reason})"),
        StoreError::FailedPrecondition { reason, message } => {
            format!("reference: {message} ({reason})")
        }
        StoreError::InvalidArgument { field, message } => format!("invalid: {field}: {message}"),
        StoreError::Internal(src) => format!("refused: {src}"),
        e => format!("refused: {e}"),
    }
}

/// Items loaded as they are lose any earlier quarantine or repair entry; repaired ones
/// lose an earlier quarantine entry.
pub(super) async fn forget_ledger(
    conn: &mut AsyncPgConnection,
    entity: Entity,
    clean: &[ledger::LedgerKey],
    ready: &[(ledger::LedgerKey, &Scanned)],
) -> StoreResult<()> {
    let all: Vec<&ledger::LedgerKey> = ready.iter().map(|(k, _)| k).collect();
    for (table, keys) in [
        ("migration_quarantine", all),
        ("migration_repairs", clean.iter().collect()),
    ] {
        if keys.is_empty() {
            continue;
        }
        let (t, i): (Vec<String>, Vec<String>) = keys.into_iter().cloned().unzip();
        diesel::sql_query(format!(
            "DELETE FROM {table} WHERE {}",
            ledger::rows_of_keys(table, "d.entity = $1", 2)
        ))
        .bind::<Text, _>(entity.as_str())
        .bind::<Array<Text>, _>(&t)
        .bind::<Array<Text>, _>(&i)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Records items waiting for their parent: key, the parent awaited, and the item as
/// read (DynamoDB JSON), which the deferred pass loads without reading it again. A
/// row already there is rewritten when `rewrite` (the scan read the item again, after
/// a resume), else only given the item it lacks.
pub(super) async fn defer(
    conn: &mut AsyncPgConnection,
    run_id: &str,
    entity: Entity,
    deferred: &[(ledger::LedgerKey, String, &Scanned)],
    rewrite: bool,
) -> StoreResult<()> {
    for deferred in deferred.chunks(STATEMENT_ROWS) {
        let tenants: Vec<&str> = deferred.iter().map(|(k, _, _)| k.0.as_str()).collect();
        let ids: Vec<&str> = deferred.iter().map(|(k, _, _)| k.1.as_str()).collect();
        let waits: Vec<&str> = deferred.iter().map(|(_, w, _)| w.as_str()).collect();
        let json: Vec<&str> = deferred.iter().map(|(_, _, item)| item.json()).collect();
        diesel::sql_query(
            "INSERT INTO backfill_deferred (run_id, entity, tenant_id, id, waits_for, item) \
             SELECT $1, $2, t, i, w, j \
             FROM unnest($3::text[], $4::text[], $5::text[], $6::text[]) AS k(t, i, w, j) \
             ON CONFLICT (run_id, entity, tenant_id, id) \
             DO UPDATE SET waits_for = excluded.waits_for, item = excluded.item \
             WHERE $7 OR backfill_deferred.item IS NULL",
        )
        .bind::<Text, _>(run_id)
        .bind::<Text, _>(entity.as_str())
        .bind::<Array<Text>, _>(&tenants)
        .bind::<Array<Text>, _>(&ids)
        .bind::<Array<Text>, _>(&waits)
        .bind::<Array<Text>, _>(&json)
        .bind::<Bool, _>(rewrite)
        .execute(conn)
        .await?;
    }
    Ok(())
}

/// A raw id as tombstones hold it: a UUID in its hyphenated lowercase form (legacy
/// may hold other forms the records parse), anything else lowercased.
pub(super) fn tombstone_id(raw: &str) -> String {
    Uuid::parse_str(raw)
        .map(|u| u.hyphenated().to_string())
        .unwrap_or_else(|_| raw.to_lowercase())
}

/// The keys of `keyed` (tenant, [`tombstone_id`]) removed from PostgreSQL as a
/// replica since `read_at`, or else since run `run_id` started (`replica_tombstones`).
async fn removed_since(
    conn: &mut AsyncPgConnection,
    run_id: &str,
    read_at: Option<chrono::DateTime<chrono::Utc>>,
    entity: Entity,
    keyed: &[(ledger::LedgerKey, &Scanned)],
) -> StoreResult<HashSet<(String, String)>> {
    #[derive(diesel::QueryableByName)]
    struct Key {
        #[diesel(sql_type = Text)]
        tenant_id: String,
        #[diesel(sql_type = Text)]
        id: String,
    }
    if keyed.is_empty() {
        return Ok(HashSet::new());
    }
    let tenants: Vec<&str> = keyed.iter().map(|(k, _)| k.0.as_str()).collect();
    let ids: Vec<String> = keyed.iter().map(|(k, _)| tombstone_id(&k.1)).collect();
    let found: Vec<Key> = diesel::sql_query(format!(
        "SELECT tenant_id, id FROM replica_tombstones WHERE {} AND deleted_at >= \
         (SELECT coalesce($5, started_at) FROM backfill_runs WHERE run_id = $1)",
        ledger::rows_of_keys("replica_tombstones", "d.entity = $2", 3)
    ))
    .bind::<Text, _>(run_id)
    .bind::<Text, _>(entity.as_str())
    .bind::<Array<Text>, _>(&tenants)
    .bind::<Array<Text>, _>(&ids)
    .bind::<Nullable<Timestamptz>, _>(read_at)
    .load(conn)
    .await?;
    Ok(found.into_iter().map(|k| (k.tenant_id, k.id)).collect())
}

pub(super) async fn undefer(
    conn: &mut AsyncPgConnection,
    run_id: &str,
    entity: Entity,
    keys: &[ledger::LedgerKey],
) -> StoreResult<()> {
    let (t, i): (Vec<String>, Vec<String>) = keys.iter().cloned().unzip();
    diesel::sql_query(format!(
        "DELETE FROM backfill_deferred WHERE {}",
        ledger::rows_of_keys("backfill_deferred", "d.run_id = $1 AND d.entity = $2", 3)
    ))
    .bind::<Text, _>(run_id)
    .bind::<Text, _>(entity.as_str())
    .bind::<Array<Text>, _>(&t)
    .bind::<Array<Text>, _>(&i)
    .execute(conn)
    .await?;
    Ok(())
}

/// The item's `tenantId` and `id` as stored (empty when absent or not strings).
pub(super) fn raw_key(item: &Item) -> (String, String) {
    let s = |k: &str| {
        item.get(k)
            .and_then(|v| v.as_s().ok())
            .cloned()
            .unwrap_or_default()
    };
    (s("tenantId"), s("id"))
}
