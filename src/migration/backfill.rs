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
//! is overwritten. Memory holds one page per segment, whatever the table's size.
//!
//! Tables load parents first (customers, assets, devices, policies, roles,
//! assignments, partners). Inside a table, an item whose parent comes later in the scan
//! is deferred (`backfill_deferred`) and loaded, re-read fresh from DynamoDB, once the
//! table's scan is complete; what still has no parent then is quarantined as an orphan.
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
use diesel::sql_types::{Array, BigInt, Bool, Double, Integer, Jsonb, Nullable, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::{Scope, Stores, ledger};
use crate::domain::{AssetId, CustomerId};
use crate::storage::dynamodb::{Item, ScanKey, item_json, record_from_item};
use crate::storage::postgres::upsert_records;
use crate::storage::replica::{Entity, Record};
use crate::storage::{StoreError, StoreResult};

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

/// Live counters of one table (for progress).
#[derive(Default)]
struct Live {
    scanned: AtomicI64,
    loaded: AtomicI64,
    quarantined: AtomicI64,
    total: AtomicI64,
    started: std::sync::Mutex<Option<Instant>>,
    /// Seconds the table took, once done.
    finished: std::sync::Mutex<Option<f64>>,
    done: std::sync::atomic::AtomicBool,
}

/// Reads a live counter (the inherent `load`, not diesel's `RunQueryDsl::load`).
fn atomic_get(a: &AtomicI64) -> i64 {
    AtomicI64::load(a, Ordering::Relaxed)
}

/// A token bucket shared by the segments; the rate is re-read from `backfill_runs`.
struct Throttle {
    rate_bits: AtomicU64,
    next: tokio::sync::Mutex<Instant>,
}

impl Throttle {
    fn new(rate: f64) -> Self {
        Self {
            rate_bits: AtomicU64::new(rate.to_bits()),
            next: tokio::sync::Mutex::new(Instant::now()),
        }
    }

    fn set(&self, rate: f64) {
        self.rate_bits.store(rate.to_bits(), Ordering::Relaxed);
    }

    /// Waits until `n` more items fit under the rate.
    async fn acquire(&self, n: usize) {
        let rate = f64::from_bits(AtomicU64::load(&self.rate_bits, Ordering::Relaxed));
        if rate <= 0.0 || n == 0 {
            return;
        }
        let at = {
            let mut next = self.next.lock().await;
            let now = Instant::now();
            // No credit for idle time beyond one second's worth.
            let start = (*next).max(now.checked_sub(Duration::from_secs(1)).unwrap_or(now));
            *next = start + Duration::from_secs_f64(n as f64 / rate);
            start
        };
        tokio::time::sleep_until(at.into()).await;
    }
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
    anyhow::ensure!(args.rate >= 0.0, "--rate must be >= 0");
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

    let result = async {
        for (i, entity) in scope.entities.iter().enumerate() {
            let l = &live[i].1;
            *l.started.lock().expect("not poisoned") = Some(Instant::now());
            load_table(stores, run_id, *entity, &scope, args, &throttle, l).await?;
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
    result?;

    let mut conn = stores.pg.conn().await?;
    diesel::sql_query(
        "UPDATE backfill_runs SET finished_at = now(), updated_at = now() WHERE run_id = $1",
    )
    .bind::<Text, _>(run_id)
    .execute(&mut *conn)
    .await?;
    let mut tables = Vec::new();
    for e in &scope.entities {
        tables.push((
            table_word(*e).to_owned(),
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
            let items = retry(|| stores.dynamo.batch_get(*entity, &keys)).await?;
            let present: HashSet<(String, String)> = items.iter().map(raw_key).collect();
            retry(|| {
                load_page(
                    stores,
                    run_id,
                    *entity,
                    DEFERRED_PASS,
                    scope,
                    &items,
                    None,
                    true,
                )
            })
            .await?;
            for d in chunk {
                let k = (d.key.tenant.as_str().to_owned(), d.key.id.to_string());
                if !present.contains(&k) {
                    // Deleted in DynamoDB: the copy that failed was the delete.
                    retry(|| stores.pg.remove(&d.key)).await?;
                }
                retry(|| stores.dynamo.resolve(&d.key, Backend::Postgres)).await?;
            }
            tracing::info!(
                entity = entity.as_str(),
                records = chunk.len(),
                "replayed failed dual writes"
            );
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
                table_word(e).to_owned(),
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

/// The legacy table word of an entity (as `--tables` takes it).
pub fn table_word(e: Entity) -> &'static str {
    match e {
        Entity::Customer => "customers",
        Entity::Asset => "assets",
        Entity::Device => "devices",
        Entity::Policy => "policies",
        Entity::Role => "roles",
        Entity::Assignment => "role_assignments",
        Entity::Partner => "partners",
    }
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
    // A table loaded from empty has planner statistics of an empty table, and the
    // foreign-key checks' cached plans (a sequential scan) get slower with every page:
    // re-analyze it while it grows (and once at the end, for the service's sake).
    let table = super::verify::pg_table(entity);
    let analyzer = {
        let pg = stores.pg.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                if let Ok(mut conn) = pg.conn().await {
                    let _ = diesel::sql_query(format!("ANALYZE {table}"))
                        .execute(&mut *conn)
                        .await;
                }
            }
        })
    };
    let segments = (0..args.segments)
        .map(|segment| scan_segment(stores, run_id, entity, segment, scope, args, throttle, live));
    let scanned = futures::future::try_join_all(segments)
        .await
        .with_context(|| format!("backfill of {}", table_word(entity)));
    let result = match scanned {
        Ok(_) => load_deferred(stores, run_id, entity, scope, args, throttle, live)
            .await
            .with_context(|| format!("deferred items of {}", table_word(entity))),
        Err(e) => Err(e),
    };
    analyzer.abort();
    let mut conn = stores.pg.conn().await?;
    diesel::sql_query(format!("ANALYZE {table}"))
        .execute(&mut *conn)
        .await?;
    result
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

#[allow(clippy::too_many_arguments)]
async fn scan_segment(
    stores: &Stores,
    run_id: &str,
    entity: Entity,
    segment: i32,
    scope: &Scope,
    args: &BackfillArgs,
    throttle: &Throttle,
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
    let scan = |from: Option<ScanKey>| async move {
        retry(|| {
            stores.dynamo.scan_page(
                entity,
                segment,
                args.segments,
                from.as_ref(),
                args.page_size,
            )
        })
        .await
        .with_context(|| format!("scan of {} segment {segment}", table_word(entity)))
    };
    let mut page = scan(position).await?;
    loop {
        throttle.acquire(page.items.len()).await;
        let next = page.next.clone();
        // Load this page while the next one is read (the checkpoint only moves when the
        // load commits, so a crash re-reads from here).
        let load = async {
            retry(|| {
                load_page(
                    stores,
                    run_id,
                    entity,
                    segment,
                    scope,
                    &page.items,
                    next.as_ref(),
                    false,
                )
            })
            .await
            .with_context(|| format!("load of a {} page", table_word(entity)))
        };
        let fetch = async {
            match &next {
                Some(k) => scan(Some(k.clone())).await.map(Some),
                None => Ok(None),
            }
        };
        let (outcome, following) = tokio::join!(load, fetch);
        let outcome = outcome?;
        live.scanned
            .fetch_add(page.items.len() as i64, Ordering::Relaxed);
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

/// What happened to one page (added to the checkpoint's counts).
#[derive(Default, Debug)]
struct PageOutcome {
    loaded: i64,
    unchanged: i64,
    repaired: i64,
    quarantined: i64,
    deferred: i64,
    skipped: i64,
}

/// One item, prepared for loading.
enum Prepared {
    Ready {
        record: Box<Record>,
        fields: Vec<String>,
        rules: Vec<String>,
    },
    Defer {
        waits_for: String,
    },
    Quarantine {
        reason: String,
    },
}

/// Loads one page in one transaction with the checkpoint (or, for the deferred pass,
/// with the removal of what it resolved). `last` is where the segment's scan now
/// stands (`None`: finished). In the deferred pass `final_round` quarantines what still
/// waits for a parent.
#[allow(clippy::too_many_arguments)]
async fn load_page(
    stores: &Stores,
    run_id: &str,
    entity: Entity,
    segment: i32,
    scope: &Scope,
    items: &[Item],
    last: Option<&ScanKey>,
    final_round: bool,
) -> StoreResult<PageOutcome> {
    let mut conn = stores.pg.conn().await?;
    let run_id = run_id.to_owned();
    let scope = scope.clone();
    conn.transaction::<_, StoreError, _>(async |conn| {
        let mut out = PageOutcome::default();
        let mut keyed = Vec::new();
        for item in items {
            let key = raw_key(item);
            if !scope.has_tenant(&key.0) {
                out.skipped += 1;
                continue;
            }
            keyed.push((key, item));
        }
        let prepared = prepare(conn, entity, &keyed).await?;
        let mut ready = Vec::new();
        let mut clean = Vec::new();
        let mut resolved = Vec::new();
        let mut deferred = Vec::new();
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
                        ledger::repaired(conn, entity, key, &fields, &rules, &run_id).await?;
                        out.repaired += 1;
                    }
                    resolved.push(key.clone());
                    ready.push((key.clone(), (*item).clone(), *record));
                }
                Prepared::Defer { waits_for } if !final_round => {
                    // Counted once, when first deferred by the scan.
                    if segment != DEFERRED_PASS {
                        out.deferred += 1;
                    }
                    deferred.push((key.clone(), waits_for));
                }
                Prepared::Defer { waits_for } => {
                    out.quarantined += 1;
                    resolved.push(key.clone());
                    let reason = format!("orphan: {waits_for} is not in the legacy data");
                    ledger::quarantine(conn, entity, key, &reason, &item_json(item), &run_id)
                        .await?;
                }
                Prepared::Quarantine { reason } => {
                    out.quarantined += 1;
                    resolved.push(key.clone());
                    ledger::quarantine(conn, entity, key, &reason, &item_json(item), &run_id)
                        .await?;
                }
            }
        }
        // Everything in one statement; if PostgreSQL refuses one row, each row in
        // its own savepoint, quarantining the refused ones.
        // Parents before children: the rows go out in several statements.
        ready.sort_by_key(|(_, _, r)| r.depth());
        let records: Vec<Record> = ready.iter().map(|(_, _, r)| r.clone()).collect();
        let bulk = conn
            .transaction::<_, StoreError, _>(async |c| upsert_records(c, &records).await)
            .await;
        match bulk {
            Ok(written) => {
                out.loaded += written as i64;
                out.unchanged += (records.len() - written) as i64;
            }
            Err(StoreError::Unavailable(m)) => return Err(StoreError::Unavailable(m)),
            Err(_) => {
                let mut refused = HashSet::new();
                for (key, item, record) in &ready {
                    let one = std::slice::from_ref(record);
                    let r = conn
                        .transaction::<_, StoreError, _>(async |c| upsert_records(c, one).await)
                        .await;
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
                                &item_json(item),
                                &run_id,
                            )
                            .await?;
                        }
                    }
                }
                clean.retain(|k| !refused.contains(k));
                ready.retain(|(k, _, _)| !refused.contains(k));
            }
        }
        forget_ledger(conn, entity, &clean, &ready).await?;
        defer(conn, &run_id, entity, &deferred).await?;
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

/// Why PostgreSQL refused a row, for the quarantine table.
fn refusal(e: &StoreError) -> String {
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
async fn forget_ledger(
    conn: &mut AsyncPgConnection,
    entity: Entity,
    clean: &[ledger::LedgerKey],
    ready: &[(ledger::LedgerKey, Item, Record)],
) -> StoreResult<()> {
    let all: Vec<&ledger::LedgerKey> = ready.iter().map(|(k, _, _)| k).collect();
    for (table, keys) in [
        ("migration_quarantine", all),
        ("migration_repairs", clean.iter().collect()),
    ] {
        if keys.is_empty() {
            continue;
        }
        let (t, i): (Vec<String>, Vec<String>) = keys.into_iter().cloned().unzip();
        diesel::sql_query(format!(
            "DELETE FROM {table} WHERE entity = $1 AND (tenant_id, id) IN \
             (SELECT * FROM unnest($2::text[], $3::text[]))"
        ))
        .bind::<Text, _>(entity.as_str())
        .bind::<Array<Text>, _>(&t)
        .bind::<Array<Text>, _>(&i)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

async fn defer(
    conn: &mut AsyncPgConnection,
    run_id: &str,
    entity: Entity,
    items: &[(ledger::LedgerKey, String)],
) -> StoreResult<()> {
    if items.is_empty() {
        return Ok(());
    }
    let tenants: Vec<&str> = items.iter().map(|(k, _)| k.0.as_str()).collect();
    let ids: Vec<&str> = items.iter().map(|(k, _)| k.1.as_str()).collect();
    let waits: Vec<&str> = items.iter().map(|(_, w)| w.as_str()).collect();
    diesel::sql_query(
        "INSERT INTO backfill_deferred (run_id, entity, tenant_id, id, waits_for) \
         SELECT $1, $2, t, i, w FROM unnest($3::text[], $4::text[], $5::text[]) AS k(t, i, w) \
         ON CONFLICT (run_id, entity, tenant_id, id) DO UPDATE SET waits_for = excluded.waits_for",
    )
    .bind::<Text, _>(run_id)
    .bind::<Text, _>(entity.as_str())
    .bind::<Array<Text>, _>(&tenants)
    .bind::<Array<Text>, _>(&ids)
    .bind::<Array<Text>, _>(&waits)
    .execute(conn)
    .await?;
    Ok(())
}

async fn undefer(
    conn: &mut AsyncPgConnection,
    run_id: &str,
    entity: Entity,
    keys: &[ledger::LedgerKey],
) -> StoreResult<()> {
    let (t, i): (Vec<String>, Vec<String>) = keys.iter().cloned().unzip();
    diesel::sql_query(
        "DELETE FROM backfill_deferred WHERE run_id = $1 AND entity = $2 AND (tenant_id, id) IN \
         (SELECT * FROM unnest($3::text[], $4::text[]))",
    )
    .bind::<Text, _>(run_id)
    .bind::<Text, _>(entity.as_str())
    .bind::<Array<Text>, _>(&t)
    .bind::<Array<Text>, _>(&i)
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(diesel::QueryableByName)]
struct DeferredRow {
    #[diesel(sql_type = Text)]
    tenant_id: String,
    #[diesel(sql_type = Text)]
    id: String,
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
    let mut final_round = false;
    loop {
        let before = deferred_count(stores, run_id, entity).await?;
        if before == 0 {
            break;
        }
        // Page through the deferred keys in key order.
        let mut after = (String::new(), String::new());
        loop {
            let rows: Vec<DeferredRow> = {
                let mut conn = stores.pg.conn().await?;
                diesel::sql_query(
                    "SELECT tenant_id, id FROM backfill_deferred \
                     WHERE run_id = $1 AND entity = $2 AND (tenant_id, id) > ($3, $4) \
                     ORDER BY tenant_id, id LIMIT $5",
                )
                .bind::<Text, _>(run_id)
                .bind::<Text, _>(entity.as_str())
                .bind::<Text, _>(&after.0)
                .bind::<Text, _>(&after.1)
                .bind::<BigInt, _>(i64::from(args.page_size))
                .load(&mut *conn)
                .await?
            };
            let Some(last) = rows.last() else { break };
            after = (last.tenant_id.clone(), last.id.clone());
            let keys: Vec<(String, String)> = rows
                .iter()
                .map(|r| (r.tenant_id.clone(), r.id.clone()))
                .collect();
            let items = retry(|| stores.dynamo.batch_get(entity, &keys)).await?;
            // Deleted from DynamoDB since: nothing to load.
            let present: HashSet<(String, String)> = items.iter().map(raw_key).collect();
            let gone: Vec<_> = keys.into_iter().filter(|k| !present.contains(k)).collect();
            if !gone.is_empty() {
                let mut conn = stores.pg.conn().await?;
                undefer(&mut conn, run_id, entity, &gone).await?;
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
                    final_round,
                )
            })
            .await?;
            live.loaded
                .fetch_add(outcome.loaded + outcome.unchanged, Ordering::Relaxed);
            live.quarantined
                .fetch_add(outcome.quarantined, Ordering::Relaxed);
        }
        let remaining = deferred_count(stores, run_id, entity).await?;
        if final_round || remaining == 0 {
            break;
        }
        if remaining == before {
            final_round = true;
        }
    }
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

/// The item's `tenantId` and `id` as stored (empty when absent or not strings).
fn raw_key(item: &Item) -> (String, String) {
    let s = |k: &str| {
        item.get(k)
            .and_then(|v| v.as_s().ok())
            .cloned()
            .unwrap_or_default()
    };
    (s("tenantId"), s("id"))
}

/// Decodes and prepares the items of one page (see the module doc for the rules).
async fn prepare(
    conn: &mut AsyncPgConnection,
    entity: Entity,
    items: &[(ledger::LedgerKey, &Item)],
) -> StoreResult<Vec<Prepared>> {
    let mut out = Vec::with_capacity(items.len());
    let mut decoded = Vec::with_capacity(items.len());
    for (key, item) in items {
        match record_from_item(entity, item) {
            Ok(r) => {
                out.push(None);
                decoded.push(Some(r));
            }
            Err(e) => {
                let reason = match &e {
                    StoreError::Internal(src) => format!("undecodable: {src}"),
                    e => format!("undecodable: {e}"),
                };
                let reason = if key.0.is_empty() || key.1.is_empty() {
                    "undecodable: tenantId or id missing".to_owned()
                } else {
                    reason
                };
                out.push(Some(Prepared::Quarantine { reason }));
                decoded.push(None);
            }
        }
    }
    let prepared = match entity {
        Entity::Customer => prepare_customers(conn, &mut decoded).await?,
        Entity::Asset => prepare_assets(conn, &mut decoded).await?,
        Entity::Device => prepare_devices(conn, &mut decoded).await?,
        _ => decoded
            .iter_mut()
            .map(|r| {
                r.take().map(|record| Prepared::Ready {
                    record: Box::new(record),
                    fields: Vec::new(),
                    rules: Vec::new(),
                })
            })
            .collect(),
    };
    Ok(out
        .into_iter()
        .zip(prepared)
        .map(|(early, late)| {
            early.or(late).unwrap_or(Prepared::Quarantine {
                reason: "undecodable".into(),
            })
        })
        .collect())
}

/// Repairs collected for one record.
#[derive(Default)]
struct Repairs {
    fields: Vec<String>,
    rules: Vec<String>,
}

impl Repairs {
    fn add(&mut self, field: &str, rule: &str) {
        if !self.fields.iter().any(|f| f == field) {
            self.fields.push(field.to_owned());
        }
        if !self.rules.iter().any(|r| r == rule) {
            self.rules.push(rule.to_owned());
        }
    }

    fn ready(self, record: Record) -> Prepared {
        Prepared::Ready {
            record: Box::new(record),
            fields: self.fields,
            rules: self.rules,
        }
    }
}

/// The non-empty segments of a legacy path.
fn segments(path: &str) -> Vec<&str> {
    path.split('/').filter(|s| !s.is_empty()).collect()
}

/// What a well-formed path says of the node's parent: `Some(None)` root, `Some(Some)`
/// the parent id, `None` when the path is malformed. `head` is how many leading
/// segments are not nodes (tenant; tenant and customer for assets).
fn parent_from_path(path: &str, tenant: &str, id: Uuid, head: usize) -> Option<Option<Uuid>> {
    let seg = segments(path);
    if seg.len() <= head || seg[0] != tenant || seg.last() != Some(&id.to_string().as_str()) {
        return None;
    }
    let nodes = &seg[head..];
    if nodes.len() == 1 {
        return Some(None);
    }
    Uuid::parse_str(nodes[nodes.len() - 2]).ok().map(Some)
}

#[derive(diesel::QueryableByName)]
struct NodeRow {
    #[diesel(sql_type = Text)]
    tenant_id: String,
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    id: Uuid,
    #[diesel(sql_type = Text)]
    path: String,
    #[diesel(sql_type = Integer)]
    depth: i32,
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    customer_id: Uuid,
}

/// Rows of `table` (customers or assets) for the `(tenant, id)` pairs, by key.
async fn nodes(
    conn: &mut AsyncPgConnection,
    table: &str,
    keys: &HashSet<(String, Uuid)>,
) -> StoreResult<HashMap<(String, Uuid), NodeRow>> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    // One `id = ANY(...)` per tenant: a primary-key index scan (a join against an
    // unnest of pairs was planned as a hash join over the whole table).
    let mut by_tenant: HashMap<&str, Vec<Uuid>> = HashMap::new();
    for (t, id) in keys {
        by_tenant.entry(t.as_str()).or_default().push(*id);
    }
    let customer = if table == "customers" {
        "id"
    } else {
        "customer_id"
    };
    let mut found = HashMap::with_capacity(keys.len());
    for (tenant, ids) in by_tenant {
        let rows: Vec<NodeRow> = diesel::sql_query(format!(
            "SELECT tenant_id, id, path, depth, {customer} AS customer_id FROM {table} \
             WHERE tenant_id = $1 AND id = ANY($2)"
        ))
        .bind::<Text, _>(tenant)
        .bind::<Array<diesel::sql_types::Uuid>, _>(&ids)
        .load(&mut *conn)
        .await?;
        found.extend(rows.into_iter().map(|r| ((r.tenant_id.clone(), r.id), r)));
    }
    Ok(found)
}

#[derive(diesel::QueryableByName)]
struct CodeRow {
    #[diesel(sql_type = Text)]
    tenant_id: String,
    #[diesel(sql_type = Text)]
    scope: String,
    #[diesel(sql_type = Text)]
    code: String,
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    id: Uuid,
}

/// Owners of codes already in PostgreSQL: `(tenant, scope, code) -> id`, where scope
/// is "" for customers and the customer id for assets.
async fn code_owners(
    conn: &mut AsyncPgConnection,
    table: &str,
    wanted: &[(String, String, String)],
) -> StoreResult<HashMap<(String, String, String), Uuid>> {
    if wanted.is_empty() {
        return Ok(HashMap::new());
    }
    let t: Vec<String> = wanted.iter().map(|w| w.0.clone()).collect();
    let s: Vec<String> = wanted.iter().map(|w| w.1.clone()).collect();
    let c: Vec<String> = wanted.iter().map(|w| w.2.clone()).collect();
    let (scope, join) = if table == "customers" {
        ("''", "")
    } else {
        ("n.customer_id::text", "AND n.customer_id = k.s::uuid")
    };
    let rows: Vec<CodeRow> = diesel::sql_query(format!(
        "SELECT n.tenant_id, {scope} AS scope, n.code::text AS code, n.id FROM {table} n \
         JOIN unnest($1::text[], $2::text[], $3::text[]) AS k(t, s, c) \
           ON n.tenant_id = k.t AND n.code = k.c {join}"
    ))
    .bind::<Array<Text>, _>(&t)
    .bind::<Array<Text>, _>(&s)
    .bind::<Array<Text>, _>(&c)
    .load(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| ((r.tenant_id, r.scope, r.code), r.id))
        .collect())
}

/// `<code>-<first 8 hex of id>`, within the 50-character column.
fn recode(code: &str, id: Uuid) -> String {
    let suffix = &id.simple().to_string()[..8];
    let head: String = code.chars().take(50 - 9).collect();
    format!("{head}-{suffix}")
}

/// Gives every record a code no other record (in PostgreSQL or earlier in the page)
/// holds in its scope; `scope_of` is "" for customers, the customer id for assets.
async fn dedupe_codes(
    conn: &mut AsyncPgConnection,
    table: &str,
    ready: &mut [(usize, Record, Repairs)],
) -> StoreResult<()> {
    let code_key = |r: &Record| -> (String, String, String) {
        match r {
            Record::Customer(c) => (
                c.tenant_id.as_str().to_owned(),
                String::new(),
                c.code.clone(),
            ),
            Record::Asset(a) => (
                a.tenant_id.as_str().to_owned(),
                a.customer_id.0.to_string(),
                a.code.clone(),
            ),
            _ => Default::default(),
        }
    };
    let wanted: Vec<_> = ready.iter().map(|(_, r, _)| code_key(r)).collect();
    let mut owners = code_owners(conn, table, &wanted).await?;
    for (_, record, repairs) in ready.iter_mut() {
        let key = code_key(record);
        let id = record.key().id;
        match owners.get(&key) {
            Some(owner) if *owner != id => {
                let new_code = recode(&key.2, id);
                match record {
                    Record::Customer(c) => c.code = new_code.clone(),
                    Record::Asset(a) => a.code = new_code.clone(),
                    _ => {}
                }
                repairs.add("code", "code-collision");
                owners.insert((key.0, key.1, new_code), id);
            }
            Some(_) => {}
            None => {
                owners.insert(key, id);
            }
        }
    }
    Ok(())
}

/// Customers: parent from the path when it disagrees, path and depth from the
/// parent's row, unique codes; a customer whose parent is not loaded yet is deferred.
async fn prepare_customers(
    conn: &mut AsyncPgConnection,
    decoded: &mut [Option<Record>],
) -> StoreResult<Vec<Option<Prepared>>> {
    let mut out: Vec<Option<Prepared>> = decoded.iter().map(|_| None).collect();
    let mut waiting: Vec<(usize, crate::domain::customer::Customer, Repairs)> = Vec::new();
    for (i, slot) in decoded.iter_mut().enumerate() {
        let Some(Record::Customer(mut c)) = slot.take() else {
            continue;
        };
        let mut repairs = Repairs::default();
        let tenant = c.tenant_id.as_str().to_owned();
        if let Some(from_path) = parent_from_path(&c.path, &tenant, c.id.0, 1) {
            let from_path = from_path.map(CustomerId);
            if from_path != c.parent_id {
                c.parent_id = from_path;
                repairs.add("parentCustomerId", "parent-from-path");
            }
        }
        if c.parent_id == Some(c.id) {
            out[i] = Some(Prepared::Quarantine {
                reason: "invalid: customer is its own parent".into(),
            });
            continue;
        }
        waiting.push((i, c, repairs));
    }
    let parents: HashSet<(String, Uuid)> = waiting
        .iter()
        .filter_map(|(_, c, _)| c.parent_id.map(|p| (c.tenant_id.as_str().to_owned(), p.0)))
        .collect();
    let mut known: HashMap<(String, Uuid), (String, i32)> = nodes(conn, "customers", &parents)
        .await?
        .into_iter()
        .map(|(k, r)| (k, (r.path, r.depth)))
        .collect();
    // Place parents before children within the page, in rounds.
    let mut ready = Vec::new();
    loop {
        let mut progressed = false;
        let mut rest = Vec::new();
        for (i, mut c, mut repairs) in waiting {
            let tenant = c.tenant_id.as_str().to_owned();
            let placed = match c.parent_id {
                None => Some((format!("/{tenant}/{}", c.id.0), 0)),
                Some(p) => known
                    .get(&(tenant.clone(), p.0))
                    .map(|(path, depth)| (format!("{path}/{}", c.id.0), depth + 1)),
            };
            match placed {
                Some((path, depth)) => {
                    if path != c.path {
                        repairs.add("path", "path-from-parents");
                        c.path = path;
                    }
                    if depth != c.depth {
                        repairs.add("depth", "path-from-parents");
                        c.depth = depth;
                    }
                    known.insert((tenant, c.id.0), (c.path.clone(), c.depth));
                    ready.push((i, Record::Customer(c), repairs));
                    progressed = true;
                }
                None => rest.push((i, c, repairs)),
            }
        }
        waiting = rest;
        if !progressed || waiting.is_empty() {
            break;
        }
    }
    for (i, c, _) in waiting {
        let p = c.parent_id.map(|p| p.0.to_string()).unwrap_or_default();
        out[i] = Some(Prepared::Defer {
            waits_for: format!("parent customer {p}"),
        });
    }
    dedupe_codes(conn, "customers", &mut ready).await?;
    for (i, record, repairs) in ready {
        out[i] = Some(repairs.ready(record));
    }
    Ok(out)
}

/// Assets: as customers, plus the customer from the parent (roots: from the path,
/// which must name a loaded customer).
async fn prepare_assets(
    conn: &mut AsyncPgConnection,
    decoded: &mut [Option<Record>],
) -> StoreResult<Vec<Option<Prepared>>> {
    let mut out: Vec<Option<Prepared>> = decoded.iter().map(|_| None).collect();
    let mut waiting: Vec<(usize, crate::domain::asset::Asset, Repairs)> = Vec::new();
    for (i, slot) in decoded.iter_mut().enumerate() {
        let Some(Record::Asset(mut a)) = slot.take() else {
            continue;
        };
        let mut repairs = Repairs::default();
        let tenant = a.tenant_id.as_str().to_owned();
        if let Some(from_path) = parent_from_path(&a.path, &tenant, a.id.0, 2) {
            let from_path = from_path.map(AssetId);
            if from_path != a.parent_id {
                a.parent_id = from_path;
                repairs.add("parentAssetId", "parent-from-path");
            }
            if a.parent_id.is_none() {
                let seg = segments(&a.path);
                if let Some(c) = Uuid::parse_str(seg[1]).ok().map(CustomerId) {
                    if c != a.customer_id {
                        a.customer_id = c;
                        repairs.add("customerId", "customer-from-parent");
                    }
                }
            }
        }
        if a.parent_id == Some(a.id) {
            out[i] = Some(Prepared::Quarantine {
                reason: "invalid: asset is its own parent".into(),
            });
            continue;
        }
        waiting.push((i, a, repairs));
    }
    let tenant_of = |a: &crate::domain::asset::Asset| a.tenant_id.as_str().to_owned();
    let parents: HashSet<(String, Uuid)> = waiting
        .iter()
        .filter_map(|(_, a, _)| a.parent_id.map(|p| (tenant_of(a), p.0)))
        .collect();
    let customers: HashSet<(String, Uuid)> = waiting
        .iter()
        .filter(|(_, a, _)| a.parent_id.is_none())
        .map(|(_, a, _)| (tenant_of(a), a.customer_id.0))
        .collect();
    let loaded_customers = nodes(conn, "customers", &customers).await?;
    let mut known: HashMap<(String, Uuid), (String, i32, Uuid)> = nodes(conn, "assets", &parents)
        .await?
        .into_iter()
        .map(|(k, r)| (k, (r.path, r.depth, r.customer_id)))
        .collect();
    let mut ready = Vec::new();
    loop {
        let mut progressed = false;
        let mut rest = Vec::new();
        for (i, mut a, mut repairs) in waiting {
            let tenant = tenant_of(&a);
            let placed = match a.parent_id {
                None => loaded_customers
                    .contains_key(&(tenant.clone(), a.customer_id.0))
                    .then(|| {
                        (
                            format!("/{tenant}/{}/{}", a.customer_id.0, a.id.0),
                            0,
                            a.customer_id.0,
                        )
                    }),
                Some(p) => known
                    .get(&(tenant.clone(), p.0))
                    .map(|(path, depth, cust)| (format!("{path}/{}", a.id.0), depth + 1, *cust)),
            };
            match placed {
                Some((path, depth, customer)) => {
                    if customer != a.customer_id.0 {
                        a.customer_id = CustomerId(customer);
                        repairs.add("customerId", "customer-from-parent");
                    }
                    if path != a.path {
                        repairs.add("path", "path-from-parents");
                        a.path = path;
                    }
                    if depth != a.depth {
                        repairs.add("depth", "path-from-parents");
                        a.depth = depth;
                    }
                    known.insert((tenant, a.id.0), (a.path.clone(), a.depth, customer));
                    ready.push((i, Record::Asset(a), repairs));
                    progressed = true;
                }
                None => rest.push((i, a, repairs)),
            }
        }
        waiting = rest;
        if !progressed || waiting.is_empty() {
            break;
        }
    }
    for (i, a, _) in waiting {
        let waits_for = match a.parent_id {
            Some(p) => format!("parent asset {}", p.0),
            None => format!("customer {}", a.customer_id.0),
        };
        out[i] = Some(Prepared::Defer { waits_for });
    }
    dedupe_codes(conn, "assets", &mut ready).await?;
    for (i, record, repairs) in ready {
        out[i] = Some(repairs.ready(record));
    }
    Ok(out)
}

/// Devices: the asset must be loaded; the customer is the asset's.
async fn prepare_devices(
    conn: &mut AsyncPgConnection,
    decoded: &mut [Option<Record>],
) -> StoreResult<Vec<Option<Prepared>>> {
    let wanted: HashSet<(String, Uuid)> = decoded
        .iter()
        .filter_map(|r| match r {
            Some(Record::Device(d)) => Some((d.tenant_id.as_str().to_owned(), d.asset_id.0)),
            _ => None,
        })
        .collect();
    let assets = nodes(conn, "assets", &wanted).await?;
    Ok(decoded
        .iter_mut()
        .map(|slot| {
            let Some(Record::Device(mut d)) = slot.take() else {
                return None;
            };
            let Some(asset) = assets.get(&(d.tenant_id.as_str().to_owned(), d.asset_id.0)) else {
                return Some(Prepared::Defer {
                    waits_for: format!("asset {}", d.asset_id.0),
                });
            };
            let mut repairs = Repairs::default();
            if asset.customer_id != d.customer_id.0 {
                d.customer_id = CustomerId(asset.customer_id);
                repairs.add("customerId", "customer-from-parent");
            }
            Some(repairs.ready(Record::Device(d)))
        })
        .collect())
}

/// Draws progress until told to stop, then once more.
async fn show_progress(
    live: Arc<Vec<(Entity, Live)>>,
    style: ProgressStyle,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    if style == ProgressStyle::None {
        return;
    }
    let tick = match style {
        ProgressStyle::Bars => Duration::from_millis(250),
        _ => every,
    };
    let mut drawn = false;
    loop {
        let stopping = tokio::time::timeout(tick, stop.changed()).await.is_ok();
        let lines: Vec<String> = live
            .iter()
            .map(|(e, l)| progress_line(*e, l, style))
            .collect();
        let mut err = std::io::stderr().lock();
        match style {
            ProgressStyle::Bars => {
                if drawn {
                    let _ = write!(err, "\x1b[{}A", lines.len());
                }
                for line in &lines {
                    let _ = writeln!(err, "\x1b[2K{line}");
                }
                drawn = true;
            }
            _ => {
                for (line, (_, l)) in lines.iter().zip(live.iter()) {
                    let started = l.started.lock().expect("not poisoned").is_some();
                    if started
                        && (!std::sync::atomic::AtomicBool::load(&l.done, Ordering::Relaxed)
                            || stopping)
                    {
                        let _ = writeln!(err, "backfill {line}");
                    }
                }
            }
        }
        if stopping {
            return;
        }
    }
}

fn progress_line(entity: Entity, l: &Live, style: ProgressStyle) -> String {
    let scanned = atomic_get(&l.scanned);
    // DescribeTable's count lags (AWS refreshes it every ~6 h; some emulators say 0):
    // without one there is no percentage or ETA, only counts and rate.
    let known = atomic_get(&l.total) > 0;
    let total = atomic_get(&l.total).max(scanned);
    let elapsed = match *l.finished.lock().expect("not poisoned") {
        Some(secs) => secs,
        None => l
            .started
            .lock()
            .expect("not poisoned")
            .map(|s| s.elapsed().as_secs_f64())
            .unwrap_or(0.0),
    };
    let done = std::sync::atomic::AtomicBool::load(&l.done, Ordering::Relaxed);
    let rate = if elapsed > 0.0 {
        scanned as f64 / elapsed
    } else {
        0.0
    };
    let eta = if done {
        "done".to_owned()
    } else if !known {
        "total unknown".to_owned()
    } else if rate > 0.0 && total > scanned {
        format!("ETA {:.0}s", (total - scanned) as f64 / rate)
    } else if elapsed == 0.0 {
        "waiting".to_owned()
    } else {
        "finishing".to_owned()
    };
    let frac = if done {
        1.0
    } else if known {
        scanned as f64 / total as f64
    } else {
        0.0
    };
    let of = if known {
        format!("/{total}")
    } else {
        String::new()
    };
    let counts = format!(
        "{scanned}{of} scanned, {} loaded, {} quarantined, {rate:.0}/s, {eta}",
        atomic_get(&l.loaded),
        atomic_get(&l.quarantined),
    );
    let name = table_word(entity);
    if style == ProgressStyle::Bars {
        let width = 30;
        let filled = ((frac * width as f64) as usize).min(width);
        format!(
            "{name:<17}[{}{}] {:>3.0}% {counts}",
            "#".repeat(filled),
            ".".repeat(width - filled),
            frac * 100.0
        )
    } else {
        format!("{name}: {:.0}% {counts}", frac * 100.0)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_from_path_reads_well_formed_paths_only() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(parent_from_path(&format!("/t/{b}"), "t", b, 1), Some(None));
        assert_eq!(
            parent_from_path(&format!("/t/{a}/{b}"), "t", b, 1),
            Some(Some(a))
        );
        assert_eq!(parent_from_path(&format!("/x/{a}/{b}"), "t", b, 1), None);
        assert_eq!(parent_from_path(&format!("/t/{a}"), "t", b, 1), None);
        assert_eq!(parent_from_path("", "t", b, 1), None);
        // Assets: the second segment is the customer.
        assert_eq!(
            parent_from_path(&format!("/t/{a}/{b}"), "t", b, 2),
            Some(None)
        );
        let c = Uuid::new_v4();
        assert_eq!(
            parent_from_path(&format!("/t/{c}/{a}/{b}"), "t", b, 2),
            Some(Some(a))
        );
    }

    #[test]
    fn recoded_codes_fit_the_column_and_name_the_item() {
        let id = Uuid::parse_str("0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!(recode("ACME", id), "ACME-01234567");
        assert_eq!(recode(&"X".repeat(60), id).len(), 50);
    }

    #[tokio::test]
    async fn the_throttle_spaces_items_at_the_rate() {
        let t = Throttle::new(1000.0);
        let start = Instant::now();
        for _ in 0..5 {
            t.acquire(100).await;
        }
        // 500 items at 1,000/s: the fifth batch may start 0.4 s in.
        assert!(
            start.elapsed() >= Duration::from_millis(350),
            "{:?}",
            start.elapsed()
        );
        t.set(0.0);
        let start = Instant::now();
        t.acquire(1_000_000).await;
        assert!(start.elapsed() < Duration::from_millis(50));
    }
}
