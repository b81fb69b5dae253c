//! `gcdr-data backfill`: copies the legacy DynamoDB tables into PostgreSQL while the
//! service keeps writing (RFC-0004 phase 2).
//!
//! Each table is read with parallel Scan segments, page by page. A page is decoded,
//! each item prepared (repaired where a documented rule applies, deferred when its
//! parent is not loaded yet, quarantined when it cannot be loaded), and the page is
//! written in ONE PostgreSQL transaction together with the segment's checkpoint (scan
//! position and counts). A crash or `kill -9` therefore loses at most the page in
//! flight, which the resumed run reads again; rows are versioned upserts keyed by
//! `(tenant_id, id)`, so nothing is duplicated and nothing newer written by dual write
//! is overwritten. Memory holds a page per segment (the one loading) and at most
//! `--read-ahead` pages read meanwhile, decoded on arrival ([`page::Scanned`]),
//! whatever the table's size.
//!
//! Tables load parents first (customers, assets, devices, policies, roles,
//! assignments, partners). Inside a table, an item whose parent comes later in the scan
//! is deferred (`backfill_deferred`, with the item as scanned) and loaded once the
//! table's scan is complete; what still has no parent then is quarantined as an orphan.
//! An item removed by dual write since the run started (`replica_tombstones`, written
//! by every replica delete in PostgreSQL) is skipped, deferred or not, so an item read
//! before its delete does not come back; one changed since is older than the copy dual
//! write made, which the versioned upsert keeps (or, if that copy failed, the
//! divergence log's replay at the end of the run loads it fresh).
//!
//! Repair rules (each repaired item is listed in `migration_repairs` with the fields
//! and rules; verify reports them as repaired, not as mismatches):
//! - `parent-from-path`: legacy moves rewrote the moved node's path but not its parent
//!   attribute (contract §3.9.2), so when a well-formed path names another parent than
//!   `parentCustomerId`/`parentAssetId`, the path's parent wins.
//! - `path-from-parents`: legacy moves left descendants' paths and depths stale
//!   (§3.9.3); path and depth are recomputed top-down from the parent pointers.
//! - `customer-from-parent`: an asset belongs to its parent's customer (a root asset to
//!   its path's customer); a device to its asset's customer (§3.9.15).
//! - `code-collision`: legacy never checked generated customer/asset codes; the first
//!   item loaded keeps the code, a later one gets `<code>-<first 8 hex of its id>`.
//!
//! Loaded as they are: non-UUID tenant and actor ids (tenant ids are text here),
//! absent versus NULL attributes, inactive duplicate assignments. Quarantined
//! (`migration_quarantine`, with the item and the reason): undecodable items, orphans,
//! roles naming missing policies and assignments naming missing roles (changing grants
//! is the operator's call), and whatever PostgreSQL refuses (duplicate serial numbers,
//! keys or e-mails, values too long, ...). No single item stops the run.

use std::collections::{HashMap, HashSet};
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use diesel::sql_types::{Array, BigInt, Bool, Double, Integer, Jsonb, Nullable, Text, Timestamptz};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::{Scope, Stores, ledger, table_name};
use crate::domain::{AssetId, CustomerId};
use crate::storage::dynamodb::{Item, ScanKey, item_json_text, record_from_item};
use crate::storage::postgres::upsert_records;
use crate::storage::replica::{Entity, Record};
use crate::storage::{StoreError, StoreResult};

mod page;
mod prepare;
mod progress;

pub use page::STATEMENT_ROWS;
use page::*;
use prepare::*;
use progress::*;

/// `gcdr-data backfill run` options.
#[derive(clap::Args, Debug, Clone)]
pub struct BackfillArgs {
    /// Tables to load (comma-separated: customers, assets, devices, policies, roles,
    /// role_assignments, partners); all by default. Loaded in that order.
    #[arg(long, value_delimiter = ',')]
    pub tables: Vec<String>,
    /// Only these tenants (comma-separated); all by default.
    #[arg(long, value_delimiter = ',')]
    pub tenants: Vec<String>,
    /// Parallel Scan segments per table.
    #[arg(long, default_value_t = 4)]
    pub segments: i32,
    /// Items per Scan page (and per PostgreSQL transaction).
    #[arg(long, default_value_t = 500)]
    pub page_size: i32,
    /// Pages read ahead over all segments while theirs load (at most one per segment):
    /// memory holds `segments + read_ahead` pages at most, whatever the table's size.
    #[arg(long, default_value_t = 2)]
    pub read_ahead: i32,
    /// Items per Scan request; a page gathers as many requests as it needs. The SDK
    /// decodes a response whole (its body, its attribute maps and the HTTP buffers,
    /// about four times the items' size), so this bounds that transient per segment.
    #[arg(long, default_value_t = 250)]
    pub scan_request: i32,
    /// Items per second over all segments; 0 = unthrottled. Change it while the run
    /// goes with `gcdr-data backfill rate`.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// The run's name: running again with the same name resumes it.
    #[arg(long, default_value = "backfill")]
    pub run_id: String,
    /// Forget the run's checkpoints and start over (loaded rows stay; reloading them
    /// is harmless).
    #[arg(long)]
    pub restart: bool,
    /// Progress display: bars (a terminal), lines (logs), none. Default: bars on a
    /// terminal, lines elsewhere.
    #[arg(long)]
    pub progress: Option<ProgressStyle>,
    /// Seconds between progress lines.
    #[arg(long, default_value_t = 10.0)]
    pub progress_interval: f64,
}

/// How progress is shown.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressStyle {
    Bars,
    Lines,
    None,
}

/// Per-table outcome counts of a run (resumed runs include what earlier attempts did).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Items read from DynamoDB.
    pub scanned: i64,
    /// Written to PostgreSQL (as they are or repaired).
    pub loaded: i64,
    /// Not written: PostgreSQL already had a newer version (dual write got there first).
    pub unchanged: i64,
    /// Loaded with fields repaired under a documented rule.
    pub repaired: i64,
    /// Not loaded; see `migration_quarantine`.
    pub quarantined: i64,
    /// Waited for their parent (then loaded or quarantined).
    pub deferred: i64,
    /// Outside the `--tenants` filter.
    pub skipped: i64,
}

/// What a whole run did, per table.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    pub run_id: String,
    pub tables: Vec<(String, Counts)>,
    pub seconds: f64,
}

/// Runs (or resumes) a backfill.
pub async fn run(stores: &Stores, args: &BackfillArgs) -> anyhow::Result<Summary> {
    let scope = Scope::parse(&args.tables, &args.tenants)?;
    anyhow::ensure!(
        (1..=1000).contains(&args.segments),
        "--segments must be 1..=1000"
    );
    anyhow::ensure!(
        (1..=10_000).contains(&args.page_size),
        "--page-size must be 1..=10000"
    );
    anyhow::ensure!(
        (0..=1000).contains(&args.read_ahead),
        "--read-ahead must be 0..=1000"
    );
    anyhow::ensure!(
        (1..=10_000).contains(&args.scan_request),
        "--scan-request must be 1..=10000"
    );
    anyhow::ensure!(
        args.rate >= 0.0 && args.rate.is_finite(),
        "--rate must be a number >= 0"
    );
    anyhow::ensure!(
        args.progress_interval.is_finite() && args.progress_interval > 0.0,
        "--progress-interval must be a number of seconds > 0"
    );
    // A missing table is a wrong stage or table variable: said at once, not retried
    // as an outage.
    for &entity in &scope.entities {
        let table = stores.dynamo.table_of(entity);
        let exists = retry(|| stores.dynamo.table_exists(entity))
            .await
            .with_context(|| format!("reading legacy table {table}"))?;
        anyhow::ensure!(
            exists,
            "legacy table {table} does not exist: check GCDR_STAGE and the per-table \
             variables (`gcdr-data dynamodb create-tables` creates empty ones, for development)"
        );
    }
    let started = Instant::now();
    let run_id = args.run_id.as_str();

    // One run of a name at a time: an advisory lock held on a dedicated connection.
    let mut lock_conn = stores.pg.conn().await?;
    let locked: LockRow = diesel::sql_query("SELECT pg_try_advisory_lock(hashtext($1)) AS ok")
        .bind::<Text, _>(format!("gcdr-backfill:{run_id}"))
        .get_result(&mut *lock_conn)
        .await?;
    anyhow::ensure!(
        locked.ok,
        "backfill run {run_id:?} is already running (another process holds its lock)"
    );
    let result = run_locked(stores, args, &scope).await;
    // Release the run's lock whatever happened (the connection goes back to the pool).
    let unlocked = diesel::sql_query("SELECT pg_advisory_unlock(hashtext($1))")
        .bind::<Text, _>(format!("gcdr-backfill:{run_id}"))
        .execute(&mut *lock_conn)
        .await;
    let mut summary = result?;
    unlocked?;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// The run, once its lock is held.
async fn run_locked(
    stores: &Stores,
    args: &BackfillArgs,
    scope: &Scope,
) -> anyhow::Result<Summary> {
    let run_id = args.run_id.as_str();
    let scope = scope.clone();
    let throttle = Arc::new(Throttle::new(args.rate));
    {
        let mut conn = stores.pg.conn().await?;
        start_run(&mut conn, run_id, &scope, args).await?;
    }

    // Keep the throttle in step with `backfill rate`.
    let poller = {
        let pg = stores.pg.clone();
        let throttle = throttle.clone();
        let run_id = run_id.to_owned();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let Ok(mut conn) = pg.conn().await else {
                    continue;
                };
                let rate: Result<RateRow, _> =
                    diesel::sql_query("SELECT rate_limit FROM backfill_runs WHERE run_id = $1")
                        .bind::<Text, _>(&run_id)
                        .get_result(&mut *conn)
                        .await;
                if let Ok(r) = rate {
                    throttle.set(r.rate_limit);
                }
            }
        })
    };

    let live: Arc<Vec<(Entity, Live)>> = Arc::new(
        scope
            .entities
            .iter()
            .map(|e| (*e, Live::default()))
            .collect(),
    );
    for (e, l) in live.iter() {
        let done = counts_of(stores, run_id, *e).await?;
        l.scanned.store(done.scanned, Ordering::Relaxed);
        l.loaded.store(done.loaded, Ordering::Relaxed);
        l.quarantined.store(done.quarantined, Ordering::Relaxed);
        let total = stores.dynamo.approximate_count(*e).await.ok().flatten();
        l.total.store(total.unwrap_or(0), Ordering::Relaxed);
    }
    let style = args.progress.unwrap_or(if std::io::stderr().is_terminal() {
        ProgressStyle::Bars
    } else {
        ProgressStyle::Lines
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let display = tokio::spawn(show_progress(
        live.clone(),
        style,
        Duration::from_secs_f64(args.progress_interval.max(0.1)),
        stop_rx,
    ));

    let mut analyzing = Vec::new();
    let result = async {
        for (i, entity) in scope.entities.iter().enumerate() {
            let l = &live[i].1;
            *l.started.lock().expect("not poisoned") = Some(Instant::now());
            load_table(stores, run_id, *entity, &scope, args, &throttle, l).await?;
            let table = table_name(*entity);
            analyzing.push((table, full_analyze(stores, table)));
            let took = l
                .started
                .lock()
                .expect("not poisoned")
                .map(|s| s.elapsed().as_secs_f64());
            *l.finished.lock().expect("not poisoned") = took;
            l.done.store(true, Ordering::Relaxed);
        }
        replay_divergences(stores, run_id, &scope).await
    }
    .await;
    let _ = stop_tx.send(true);
    let _ = display.await;
    poller.abort();
    // The run's own error comes first; then the first failed ANALYZE.
    let mut analyzed = Ok(());
    for (table, analyze) in analyzing {
        let r = analyze
            .await
            .map_err(anyhow::Error::from)
            .and_then(|r| r.map_err(anyhow::Error::from))
            .with_context(|| format!("ANALYZE {table}"));
        analyzed = analyzed.and(r);
    }
    result?;
    analyzed?;

    let mut conn = stores.pg.conn().await?;
    diesel::sql_query(
        "UPDATE backfill_runs SET finished_at = now(), updated_at = now() WHERE run_id = $1",
    )
    .bind::<Text, _>(run_id)
    .execute(&mut *conn)
    .await?;
    // Tombstones matter only to a run that started before them.
    diesel::sql_query(
        "DELETE FROM replica_tombstones WHERE deleted_at < coalesce(\
           (SELECT min(started_at) FROM backfill_runs WHERE finished_at IS NULL), now())",
    )
    .execute(&mut *conn)
    .await?;
    let mut tables = Vec::new();
    for e in &scope.entities {
        tables.push((
            table_name(*e).to_owned(),
            counts_of(stores, run_id, *e).await?,
        ));
    }
    Ok(Summary {
        run_id: run_id.to_owned(),
        tables,
        seconds: 0.0,
    })
}

/// Dual write that failed to reach PostgreSQL while the backfill ran (typically a copy
/// refused because its parent was not loaded yet, at a scan position already passed)
/// is in DynamoDB's divergence log: those records are loaded now, fresh from DynamoDB
/// and through the same rules, and their divergences resolved. Later failures are
/// `gcdr-data reconcile --from-divergence`'s.
async fn replay_divergences(stores: &Stores, run_id: &str, scope: &Scope) -> anyhow::Result<()> {
    use crate::storage::mode::Backend;
    use crate::storage::replica::{DivergenceLog, Replica};
    let open = match stores.dynamo.list(None).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the DynamoDB divergence log; run reconcile --from-divergence later");
            return Ok(());
        }
    };
    for entity in &scope.entities {
        let mine: Vec<_> = open
            .iter()
            .filter(|d| d.target == Backend::Postgres && d.key.entity == *entity)
            .filter(|d| scope.has_tenant(d.key.tenant.as_str()))
            .collect();
        for chunk in mine.chunks(100) {
            let keys: Vec<(String, String)> = chunk
                .iter()
                .map(|d| (d.key.tenant.as_str().to_owned(), d.key.id.to_string()))
                .collect();
            let read_at = pg_now(stores).await?;
            let items: Vec<Scanned> = (retry(|| stores.dynamo.batch_get(*entity, &keys)).await?)
                .into_iter()
                .map(|item| Scanned::from_item(*entity, item))
                .collect();
            let present: HashSet<(String, String)> = items.iter().map(|s| s.key.clone()).collect();
            // Not final: a child whose new parent is in a later chunk waits for it.
            retry(|| {
                load_page(
                    stores,
                    run_id,
                    *entity,
                    DEFERRED_PASS,
                    scope,
                    &items,
                    None,
                    false,
                    Some(read_at),
                )
            })
            .await?;
            for d in chunk {
                let k = (d.key.tenant.as_str().to_owned(), d.key.id.to_string());
                if !present.contains(&k) {
                    // Deleted in DynamoDB: the copy that failed was the delete.
                    retry(|| stores.pg.remove(&d.key)).await?;
                }
            }
            tracing::info!(
                entity = entity.as_str(),
                records = chunk.len(),
                "replayed failed dual writes"
            );
        }
        if !mine.is_empty() {
            let (throttle, live) = (Throttle::new(0.0), Live::default());
            drain_deferred(stores, run_id, *entity, scope, 500, 4, &throttle, &live).await?;
        }
        // Only now: every replayed record is loaded or quarantined with its reason.
        for d in &mine {
            retry(|| stores.dynamo.resolve(&d.key, Backend::Postgres, d.failures)).await?;
        }
    }
    Ok(())
}

/// Sets the throttle of a (running) backfill: items/s, 0 = unthrottled.
pub async fn set_rate(stores: &Stores, run_id: &str, rate: f64) -> anyhow::Result<()> {
    anyhow::ensure!(rate >= 0.0 && rate.is_finite(), "rate must be >= 0");
    let mut conn = stores.pg.conn().await?;
    let n = diesel::sql_query(
        "UPDATE backfill_runs SET rate_limit = $2, updated_at = now() WHERE run_id = $1",
    )
    .bind::<Text, _>(run_id)
    .bind::<Double, _>(rate)
    .execute(&mut *conn)
    .await?;
    anyhow::ensure!(n == 1, "no backfill run named {run_id:?}");
    Ok(())
}

/// Prints a run's counts so far (it may be running) and the quarantine by reason.
pub async fn status(stores: &Stores, run_id: &str) -> anyhow::Result<()> {
    #[derive(diesel::QueryableByName)]
    struct RunInfo {
        #[diesel(sql_type = Array<Text>)]
        entities: Vec<String>,
        #[diesel(sql_type = Double)]
        rate_limit: f64,
        #[diesel(sql_type = Text)]
        state: String,
    }
    let info: RunInfo = {
        let mut conn = stores.pg.conn().await?;
        diesel::sql_query(
            "SELECT entities, rate_limit, CASE WHEN finished_at IS NULL THEN 'unfinished (running \
             or stopped; run it again to resume)' ELSE 'finished ' || finished_at::text END AS state \
             FROM backfill_runs WHERE run_id = $1",
        )
        .bind::<Text, _>(run_id)
        .get_result(&mut *conn)
        .await
        .map_err(|e| match e {
            diesel::result::Error::NotFound => anyhow::anyhow!("no backfill run named {run_id:?}"),
            e => e.into(),
        })?
    };
    println!(
        "run {run_id}: {}; throttle {} items/s",
        info.state, info.rate_limit
    );
    let mut tables = Vec::new();
    for name in &info.entities {
        if let Some(e) = Entity::parse(name) {
            tables.push((
                table_name(e).to_owned(),
                counts_of(stores, run_id, e).await?,
            ));
        }
    }
    print_summary(&Summary {
        run_id: run_id.to_owned(),
        tables,
        seconds: 0.0,
    });
    let mut conn = stores.pg.conn().await?;
    for (entity, reason, n) in ledger::quarantine_summary(&mut conn).await? {
        println!("quarantined {entity}: {n} x {reason}");
    }
    Ok(())
}

#[derive(diesel::QueryableByName)]
struct LockRow {
    #[diesel(sql_type = Bool)]
    ok: bool,
}

#[derive(diesel::QueryableByName)]
struct RateRow {
    #[diesel(sql_type = Double)]
    rate_limit: f64,
}

#[derive(diesel::QueryableByName)]
struct RunRow {
    #[diesel(sql_type = Array<Text>)]
    entities: Vec<String>,
    #[diesel(sql_type = Array<Text>)]
    tenants: Vec<String>,
    #[diesel(sql_type = Integer)]
    segments: i32,
}

/// Creates the run, or checks that a resumed one has the same filters.
async fn start_run(
    conn: &mut AsyncPgConnection,
    run_id: &str,
    scope: &Scope,
    args: &BackfillArgs,
) -> anyhow::Result<()> {
    if args.restart {
        diesel::sql_query("DELETE FROM backfill_runs WHERE run_id = $1")
            .bind::<Text, _>(run_id)
            .execute(conn)
            .await?;
    }
    let entities: Vec<String> = scope
        .entities
        .iter()
        .map(|e| e.as_str().to_owned())
        .collect();
    let existing: Option<RunRow> = diesel::sql_query(
        "SELECT entities, tenants, segments FROM backfill_runs WHERE run_id = $1",
    )
    .bind::<Text, _>(run_id)
    .get_result(conn)
    .await
    .map(Some)
    .or_else(|e| match e {
        diesel::result::Error::NotFound => Ok(None),
        e => Err(e),
    })?;
    match existing {
        Some(r) => anyhow::ensure!(
            r.entities == entities && r.tenants == scope.tenants && r.segments == args.segments,
            "run {run_id:?} was started with tables {:?}, tenants {:?} and {} segments; \
             resume it with the same options, or use --restart or another --run-id",
            r.entities,
            r.tenants,
            r.segments
        ),
        None => {
            diesel::sql_query(
                "INSERT INTO backfill_runs (run_id, entities, tenants, segments, rate_limit) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind::<Text, _>(run_id)
            .bind::<Array<Text>, _>(&entities)
            .bind::<Array<Text>, _>(&scope.tenants)
            .bind::<Integer, _>(args.segments)
            .bind::<Double, _>(args.rate)
            .execute(&mut *conn)
            .await?;
        }
    }
    // The rate given now applies to the resumed run too.
    diesel::sql_query(
        "UPDATE backfill_runs SET rate_limit = $2, updated_at = now() WHERE run_id = $1",
    )
    .bind::<Text, _>(run_id)
    .bind::<Double, _>(args.rate)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[derive(diesel::QueryableByName)]
struct Checkpoint {
    #[diesel(sql_type = Nullable<Jsonb>)]
    last_key: Option<serde_json::Value>,
    #[diesel(sql_type = Bool)]
    done: bool,
}

#[derive(diesel::QueryableByName, Default)]
struct CountRow {
    #[diesel(sql_type = BigInt)]
    scanned: i64,
    #[diesel(sql_type = BigInt)]
    loaded: i64,
    #[diesel(sql_type = BigInt)]
    unchanged: i64,
    #[diesel(sql_type = BigInt)]
    repaired: i64,
    #[diesel(sql_type = BigInt)]
    quarantined: i64,
    #[diesel(sql_type = BigInt)]
    deferred: i64,
    #[diesel(sql_type = BigInt)]
    skipped: i64,
}

async fn counts_of(stores: &Stores, run_id: &str, entity: Entity) -> anyhow::Result<Counts> {
    let mut conn = stores.pg.conn().await?;
    let r: CountRow = diesel::sql_query(
        "SELECT coalesce(sum(scanned), 0)::bigint AS scanned, coalesce(sum(loaded), 0)::bigint AS loaded, \
                coalesce(sum(unchanged), 0)::bigint AS unchanged, coalesce(sum(repaired), 0)::bigint AS repaired, \
                coalesce(sum(quarantined), 0)::bigint AS quarantined, coalesce(sum(deferred), 0)::bigint AS deferred, \
                coalesce(sum(skipped), 0)::bigint AS skipped \
         FROM backfill_checkpoints WHERE run_id = $1 AND entity = $2",
    )
    .bind::<Text, _>(run_id)
    .bind::<Text, _>(entity.as_str())
    .get_result(&mut *conn)
    .await?;
    Ok(Counts {
        scanned: r.scanned,
        loaded: r.loaded,
        unchanged: r.unchanged,
        repaired: r.repaired,
        quarantined: r.quarantined,
        deferred: r.deferred,
        skipped: r.skipped,
    })
}

/// The deferred pass's checkpoint row.
const DEFERRED_PASS: i32 = -1;

/// Scans one table with all its segments, then loads what was deferred.
async fn load_table(
    stores: &Stores,
    run_id: &str,
    entity: Entity,
    scope: &Scope,
    args: &BackfillArgs,
    throttle: &Throttle,
    live: &Live,
) -> anyhow::Result<()> {
    {
        let mut conn = stores.pg.conn().await?;
        for segment in DEFERRED_PASS..args.segments {
            diesel::sql_query(
                "INSERT INTO backfill_checkpoints (run_id, entity, segment) VALUES ($1, $2, $3) \
                 ON CONFLICT DO NOTHING",
            )
            .bind::<Text, _>(run_id)
            .bind::<Text, _>(entity.as_str())
            .bind::<Integer, _>(segment)
            .execute(&mut *conn)
            .await?;
        }
    }
    // A table loaded from empty has the planner statistics of an empty table, and
    // the foreign-key checks plan once per connection from them: the self-reference
    // of assets and customers was planned as a scan of the tenant's whole path index,
    // so 1,000-row pages went from 25 ms to 660 ms as the table grew. ANALYZE as soon
    // as the first page is in (each ANALYZE invalidates the cached plans; with real
    // statistics the checks probe the unique index, whatever the size), again each
    // time the table has grown fourfold, and once at the end. Only the tables that
    // reference themselves need it while they load: the others' foreign keys point at
    // tables already loaded and analyzed. While loading, a small sample does (the
    // checks need the row count, not the value distributions): 18 ms instead of
    // 210 ms for 40,000 assets. The full statistics, for the service, are gathered
    // in the background by [`full_analyze`] while the next table loads.
    let table = table_name(entity);
    let self_referencing = matches!(entity, Entity::Customer | Entity::Asset);
    let loading = std::sync::atomic::AtomicBool::new(self_referencing);
    let analyze = async {
        let mut analyzed_at = 0;
        while std::sync::atomic::AtomicBool::load(&loading, Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let loaded = AtomicI64::load(&live.loaded, Ordering::Relaxed);
            if loaded > 0 && loaded >= 4 * analyzed_at {
                analyzed_at = loaded;
                let _ = quick_analyze(stores, table).await;
            }
        }
    };
    // Items in flight over all segments: each segment's page loading, plus at most
    // `read_ahead` pages read while theirs load.
    let budget = tokio::sync::Semaphore::new(page_budget(args));
    let load = async {
        let segments = (0..args.segments).map(|segment| {
            let budget = &budget;
            scan_segment(
                stores, run_id, entity, segment, scope, args, throttle, budget, live,
            )
        });
        let scanned = futures::future::try_join_all(segments)
            .await
            .with_context(|| format!("backfill of {table}"));
        let result = match scanned {
            Ok(_) => load_deferred(stores, run_id, entity, scope, args, throttle, live)
                .await
                .with_context(|| format!("deferred items of {table}")),
            Err(e) => Err(e),
        };
        loading.store(false, Ordering::Relaxed);
        result
    };
    let (result, ()) = tokio::join!(load, analyze);
    quick_analyze(stores, table).await?;
    result
}

/// Statistics target of the ANALYZEs during a load: a 3,000-row sample.
const QUICK_STATISTICS_TARGET: i32 = 10;

/// ANALYZE of `table` from a small sample ([`QUICK_STATISTICS_TARGET`]).
async fn quick_analyze(stores: &Stores, table: &str) -> StoreResult<()> {
    let mut conn = stores.pg.conn().await?;
    conn.transaction::<_, StoreError, _>(async |c| {
        diesel::sql_query(format!(
            "SET LOCAL default_statistics_target = {QUICK_STATISTICS_TARGET}"
        ))
        .execute(&mut *c)
        .await?;
        diesel::sql_query(format!("ANALYZE {table}"))
            .execute(c)
            .await?;
        Ok(())
    })
    .await
}

/// The full ANALYZE of a loaded table, for the service's plans, started in the
/// background (the run waits for it before it finishes).
fn full_analyze(stores: &Stores, table: &'static str) -> tokio::task::JoinHandle<StoreResult<()>> {
    let pg = stores.pg.clone();
    tokio::spawn(async move {
        let mut conn = pg.conn().await?;
        diesel::sql_query(format!("ANALYZE {table}"))
            .execute(&mut *conn)
            .await?;
        Ok(())
    })
}

async fn checkpoint(
    stores: &Stores,
    run_id: &str,
    entity: Entity,
    segment: i32,
) -> anyhow::Result<Checkpoint> {
    let mut conn = stores.pg.conn().await?;
    Ok(diesel::sql_query(
        "SELECT last_key, done FROM backfill_checkpoints \
         WHERE run_id = $1 AND entity = $2 AND segment = $3",
    )
    .bind::<Text, _>(run_id)
    .bind::<Text, _>(entity.as_str())
    .bind::<Integer, _>(segment)
    .get_result(&mut *conn)
    .await?)
}

/// The items a table's segments may hold at once: a page loading per segment, and
/// `read_ahead` pages (no more than one per segment) read meanwhile.
fn page_budget(args: &BackfillArgs) -> usize {
    let pages = args.segments + args.read_ahead.min(args.segments);
    usize::try_from(pages * args.page_size).unwrap_or(usize::MAX)
}

/// Scans one segment page by page, loading each page while the next one is read
/// (when the budget has room for it).
#[allow(clippy::too_many_arguments)]
async fn scan_segment(
    stores: &Stores,
    run_id: &str,
    entity: Entity,
    segment: i32,
    scope: &Scope,
    args: &BackfillArgs,
    throttle: &Throttle,
    budget: &tokio::sync::Semaphore,
    live: &Live,
) -> anyhow::Result<()> {
    let cp = checkpoint(stores, run_id, entity, segment).await?;
    if cp.done {
        return Ok(());
    }
    let position: Option<ScanKey> = cp
        .last_key
        .map(serde_json::from_value)
        .transpose()
        .context("bad checkpoint")?;
    let page_items = u32::try_from(args.page_size).unwrap_or(u32::MAX);
    let scan = |from: Option<ScanKey>| async move {
        // Room for a whole page before it is read; what the page leaves unused goes
        // back at once. A segment always gets its page in the end: the pages holding
        // the budget are loading, and each gives its room back when its load is done.
        let mut room = budget
            .acquire_many(page_items)
            .await
            .expect("the budget is never closed");
        // The page in Scan requests of at most `--scan-request` items, each decoded as
        // it arrives (why: the option's doc).
        let mut items: Vec<Scanned> = Vec::with_capacity(args.page_size as usize);
        let mut next = from;
        loop {
            let want = (args.page_size - items.len() as i32).min(args.scan_request);
            let response = retry(|| {
                stores
                    .dynamo
                    .scan_page(entity, segment, args.segments, next.as_ref(), want)
            })
            .await
            .with_context(|| format!("scan of {} segment {segment}", table_name(entity)))?;
            items.extend((response.items.into_iter()).map(|item| Scanned::from_item(entity, item)));
            next = response.next;
            if next.is_none() || items.len() >= args.page_size as usize {
                break;
            }
        }
        drop(room.split((page_items as usize).saturating_sub(items.len())));
        anyhow::Ok(ReadPage {
            items,
            next,
            _room: room,
        })
    };
    let mut page = scan(position).await?;
    loop {
        throttle.acquire(page.items.len()).await;
        let scanned = page.items.len() as i64;
        let next = page.next.clone();
        // Load this page while the next one is read (the checkpoint only moves when the
        // load commits, so a crash re-reads from here). The page, and its room in the
        // budget, go as soon as it is loaded.
        let load = async {
            let page = page;
            retry(|| {
                load_page(
                    stores,
                    run_id,
                    entity,
                    segment,
                    scope,
                    &page.items,
                    page.next.as_ref(),
                    false,
                    None,
                )
            })
            .await
            .with_context(|| format!("load of a {} page", table_name(entity)))
        };
        let fetch = async {
            match next {
                Some(k) => scan(Some(k)).await.map(Some),
                None => Ok(None),
            }
        };
        let (outcome, following) = tokio::join!(load, fetch);
        let outcome = outcome?;
        live.scanned.fetch_add(scanned, Ordering::Relaxed);
        live.loaded
            .fetch_add(outcome.loaded + outcome.unchanged, Ordering::Relaxed);
        live.quarantined
            .fetch_add(outcome.quarantined, Ordering::Relaxed);
        match following? {
            Some(p) => page = p,
            None => return Ok(()),
        }
    }
}

/// A page read and decoded, with its room in the budget of items in flight.
struct ReadPage<'a> {
    items: Vec<Scanned>,
    next: Option<ScanKey>,
    _room: tokio::sync::SemaphorePermit<'a>,
}

/// Retries a store call that failed for want of the store (connection lost, throttled)
/// a few times with backoff; anything else fails at once.
async fn retry<T, F, Fut>(mut f: F) -> StoreResult<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = StoreResult<T>>,
{
    let mut attempt = 0;
    loop {
        match f().await {
            Err(StoreError::Unavailable(msg)) if attempt < 8 => {
                attempt += 1;
                tracing::warn!(error = %msg, attempt, "store unavailable; retrying");
                tokio::time::sleep(Duration::from_millis(200 << attempt.min(5))).await;
            }
            other => return other,
        }
    }
}

#[derive(diesel::QueryableByName)]
struct DeferredRow {
    #[diesel(sql_type = Text)]
    tenant_id: String,
    #[diesel(sql_type = Text)]
    id: String,
    /// The item as scanned (DynamoDB JSON); `None` from before it was kept.
    #[diesel(sql_type = Nullable<Text>)]
    item: Option<String>,
}

/// Loads the items deferred while the table was scanned, re-read fresh, in rounds
/// (each round can load the children of the previous one) until a round makes no
/// progress; then quarantines the rest as orphans.
async fn load_deferred(
    stores: &Stores,
    run_id: &str,
    entity: Entity,
    scope: &Scope,
    args: &BackfillArgs,
    throttle: &Throttle,
    live: &Live,
) -> anyhow::Result<()> {
    if checkpoint(stores, run_id, entity, DEFERRED_PASS)
        .await?
        .done
    {
        return Ok(());
    }
    drain_deferred(
        stores,
        run_id,
        entity,
        scope,
        args.page_size,
        args.segments,
        throttle,
        live,
    )
    .await?;
    let mut conn = stores.pg.conn().await?;
    diesel::sql_query(
        "UPDATE backfill_checkpoints SET done = true, updated_at = now() \
         WHERE run_id = $1 AND entity = $2 AND segment = $3",
    )
    .bind::<Text, _>(run_id)
    .bind::<Text, _>(entity.as_str())
    .bind::<Integer, _>(DEFERRED_PASS)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The rounds of [`load_deferred`]: load what waits in `backfill_deferred` until a
/// round makes no progress, then quarantine the rest as orphans. Each round splits the
/// keys over `workers` concurrent workers (by a hash of the id); a child whose parent
/// another worker loads in the same round simply waits for the next round.
#[allow(clippy::too_many_arguments)]
async fn drain_deferred(
    stores: &Stores,
    run_id: &str,
    entity: Entity,
    scope: &Scope,
    page_size: i32,
    workers: i32,
    throttle: &Throttle,
    live: &Live,
) -> anyhow::Result<()> {
    let mut final_round = false;
    loop {
        let before = deferred_count(stores, run_id, entity).await?;
        if before == 0 {
            break;
        }
        // At most 8: each worker's keyset query reads past the others' keys.
        let workers = workers.clamp(1, 8);
        let slices = (0..workers).map(|worker| {
            let slice = Slice {
                worker,
                workers,
                page_size,
                final_round,
            };
            drain_slice(stores, run_id, entity, scope, slice, throttle, live)
        });
        futures::future::try_join_all(slices).await?;
        let remaining = deferred_count(stores, run_id, entity).await?;
        if final_round || remaining == 0 {
            break;
        }
        if remaining == before {
            final_round = true;
        }
    }
    Ok(())
}

/// One worker's share of a deferred round.
#[derive(Clone, Copy)]
struct Slice {
    worker: i32,
    workers: i32,
    page_size: i32,
    final_round: bool,
}

/// Pages through one worker's deferred keys in key order and loads each page: the
/// items as they were scanned.
async fn drain_slice(
    stores: &Stores,
    run_id: &str,
    entity: Entity,
    scope: &Scope,
    slice: Slice,
    throttle: &Throttle,
    live: &Live,
) -> anyhow::Result<()> {
    let mut after = (String::new(), String::new());
    loop {
        let rows: Vec<DeferredRow> = {
            let mut conn = stores.pg.conn().await?;
            diesel::sql_query(
                "SELECT tenant_id, id, item FROM backfill_deferred \
                 WHERE run_id = $1 AND entity = $2 AND (tenant_id, id) > ($3, $4) \
                   AND (hashtext(id) & 2147483647) % $6 = $7 \
                 ORDER BY tenant_id, id LIMIT $5",
            )
            .bind::<Text, _>(run_id)
            .bind::<Text, _>(entity.as_str())
            .bind::<Text, _>(&after.0)
            .bind::<Text, _>(&after.1)
            .bind::<BigInt, _>(i64::from(slice.page_size))
            .bind::<Integer, _>(slice.workers)
            .bind::<Integer, _>(slice.worker)
            .load(&mut *conn)
            .await?
        };
        let Some(last) = rows.last() else {
            return Ok(());
        };
        after = (last.tenant_id.clone(), last.id.clone());
        // The items as scanned; one deleted since is skipped by its tombstone
        // (`load_page`), one changed since is older than what dual write copied.
        // Only an item kept from before (or unreadable) is read from DynamoDB again.
        let mut items = Vec::with_capacity(rows.len());
        let mut keys = Vec::new();
        for r in rows {
            match r.item.and_then(|j| Scanned::from_json(entity, j)) {
                Some(item) => items.push(item),
                None => keys.push((r.tenant_id, r.id)),
            }
        }
        if !keys.is_empty() {
            let fresh = retry(|| stores.dynamo.batch_get(entity, &keys)).await?;
            let fresh: Vec<Scanned> = (fresh.into_iter())
                .map(|item| Scanned::from_item(entity, item))
                .collect();
            // Deleted from DynamoDB since: nothing to load.
            let present: HashSet<&(String, String)> = fresh.iter().map(|s| &s.key).collect();
            let gone: Vec<_> = (keys.iter())
                .filter(|k| !present.contains(k))
                .cloned()
                .collect();
            if !gone.is_empty() {
                let mut conn = stores.pg.conn().await?;
                undefer(&mut conn, run_id, entity, &gone).await?;
            }
            items.extend(fresh);
        }
        throttle.acquire(items.len()).await;
        let outcome = retry(|| {
            load_page(
                stores,
                run_id,
                entity,
                DEFERRED_PASS,
                scope,
                &items,
                None,
                slice.final_round,
                None,
            )
        })
        .await?;
        live.loaded
            .fetch_add(outcome.loaded + outcome.unchanged, Ordering::Relaxed);
        live.quarantined
            .fetch_add(outcome.quarantined, Ordering::Relaxed);
    }
}

/// PostgreSQL's clock, the one tombstones are stamped with.
async fn pg_now(stores: &Stores) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    #[derive(diesel::QueryableByName)]
    struct Now {
        #[diesel(sql_type = diesel::sql_types::Timestamptz)]
        now: chrono::DateTime<chrono::Utc>,
    }
    let mut conn = stores.pg.conn().await?;
    let n: Now = diesel::sql_query("SELECT now()")
        .get_result(&mut *conn)
        .await?;
    Ok(n.now)
}

async fn deferred_count(stores: &Stores, run_id: &str, entity: Entity) -> anyhow::Result<i64> {
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let mut conn = stores.pg.conn().await?;
    let n: N = diesel::sql_query(
        "SELECT count(*) AS n FROM backfill_deferred WHERE run_id = $1 AND entity = $2",
    )
    .bind::<Text, _>(run_id)
    .bind::<Text, _>(entity.as_str())
    .get_result(&mut *conn)
    .await?;
    Ok(n.n)
}

/// The end-of-run table.
pub fn print_summary(s: &Summary) {
    println!(
        "{:<17}{:>9}{:>9}{:>10}{:>9}{:>12}{:>9}{:>8}",
        "table", "scanned", "loaded", "unchanged", "repaired", "quarantined", "deferred", "skipped"
    );
    for (name, c) in &s.tables {
        println!(
            "{name:<17}{:>9}{:>9}{:>10}{:>9}{:>12}{:>9}{:>8}",
            c.scanned, c.loaded, c.unchanged, c.repaired, c.quarantined, c.deferred, c.skipped
        );
    }
    let total: i64 = s.tables.iter().map(|(_, c)| c.scanned).sum();
    if s.seconds == 0.0 {
        return;
    }
    println!(
        "run {}: {total} items in {:.1} s ({:.0} items/s); quarantined items are in \
         migration_quarantine, repairs in migration_repairs",
        s.run_id,
        s.seconds,
        total as f64 / s.seconds.max(1e-9)
    );
}
