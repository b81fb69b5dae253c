//! `gcdr-data verify`: the parity report between the legacy DynamoDB tables and
//! PostgreSQL.
//!
//! For each table in scope the DynamoDB side is read by a parallel Scan (segments
//! concurrently, page by page; only a 64-bit hash of each key seen is kept, about 20
//! bytes a record, where the keys themselves took about 100), each page's records are
//! loaded from PostgreSQL and compared attribute by attribute in the legacy item form
//! ([`differing_fields`]). Then the PostgreSQL keys of the table are paged through
//! (keyset on `(tenant_id, id)`) to find the rows the Scan did not see.
//!
//! Per entity and tenant the report gives both counts, the items quarantined and
//! repaired by the backfill (from the ledger: a deliberate difference is never a
//! mismatch) and an order-independent checksum of each side: the wrapping sum of the
//! first 64 bits of the SHA-256 of each record's canonical item (attributes sorted by
//! name), over the records neither repaired nor quarantined. With `--sample N` about N
//! records per table are compared field by field (chosen by a hash of the key), every
//! key is still counted, and no checksum is computed.
//!
//! A difference seen during the Scan may be a write in flight (the two stores are
//! written one after the other): every suspect key is re-read from both stores
//! (DynamoDB consistently) up to three times, 300 ms apart, and reported only if it
//! still differs; the counts and checksums use the last reading.
//!
//! Parity: no mismatch and, for every entity and tenant, `dynamodb_count - quarantined
//! == postgres_count` with equal checksums (when computed).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use aws_sdk_dynamodb::types::AttributeValue;
use diesel::sql_types::{Array, Text};
use diesel_async::RunQueryDsl;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{Scope, Stores, ledger};
use crate::domain::TenantId;
use crate::storage::dynamodb::{Item, differing_fields, record_from_item, record_item};
use crate::storage::replica::{Entity, Record, RecordKey, Replica};

/// `gcdr-data verify` options.
#[derive(clap::Args, Debug, Clone)]
pub struct VerifyArgs {
    /// Tables to verify (entity names or legacy table words); default: all.
    #[arg(long, value_delimiter = ',')]
    pub tables: Vec<String>,
    /// Tenants to verify; default: all.
    #[arg(long, value_delimiter = ',')]
    pub tenants: Vec<String>,
    /// Compare the fields of about N records per table only (every key is still
    /// counted; no checksums).
    #[arg(long)]
    pub sample: Option<u64>,
    /// Print the report as JSON (the input of `reconcile --from-verify`).
    #[arg(long)]
    pub json: bool,
    /// Parallel Scan segments per table.
    #[arg(long, default_value_t = 4)]
    pub segments: i32,
}

/// Counts and checksums of one entity in one tenant.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableReport {
    pub entity: String,
    pub tenant: String,
    pub dynamodb_count: u64,
    pub postgres_count: u64,
    /// DynamoDB items the backfill quarantined (absent in PostgreSQL on purpose).
    pub quarantined: u64,
    /// Records whose only differences are the fields the backfill repaired.
    pub repaired: u64,
    /// Hex; `None` with `--sample`.
    pub dynamodb_checksum: Option<String>,
    pub postgres_checksum: Option<String>,
    pub checksums_match: Option<bool>,
}

impl TableReport {
    /// Whether this entity and tenant are at parity (mismatches aside).
    pub fn ok(&self) -> bool {
        self.dynamodb_count.checked_sub(self.quarantined) == Some(self.postgres_count)
            && self.checksums_match != Some(false)
    }
}

/// How a key differs between the stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MismatchKind {
    MissingInPostgres,
    MissingInDynamodb,
    Fields,
    /// The DynamoDB item does not decode and is not quarantined.
    Undecodable,
}

impl MismatchKind {
    /// The reported name.
    pub fn as_str(self) -> &'static str {
        match self {
            MismatchKind::MissingInPostgres => "missing_in_postgres",
            MismatchKind::MissingInDynamodb => "missing_in_dynamodb",
            MismatchKind::Fields => "fields",
            MismatchKind::Undecodable => "undecodable",
        }
    }
}

/// One key that still differed after the re-checks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mismatch {
    pub entity: String,
    pub tenant: String,
    pub id: String,
    pub kind: MismatchKind,
    /// Legacy attribute names (`fields`), or the decoding error (`undecodable`).
    pub fields: Vec<String>,
}

/// The whole verify report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Sorted by entity (load order) and tenant.
    pub tables: Vec<TableReport>,
    /// Sorted by entity, tenant and id.
    pub mismatches: Vec<Mismatch>,
    /// `--sample`, when given.
    pub sample: Option<u64>,
    pub parity: bool,
}

/// `gcdr-data verify`: prints the report (JSON with `--json`) and returns parity.
pub async fn main(stores: &Stores, args: VerifyArgs) -> anyhow::Result<bool> {
    let scope = Scope::parse(&args.tables, &args.tenants)?;
    anyhow::ensure!(args.segments >= 1, "--segments must be at least 1");
    let report = verify(stores, &scope, args.sample, args.segments).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_human(&report);
    }
    Ok(report.parity)
}

/// The report as text: one line per entity and tenant, one per mismatch, then parity.
pub fn print_human(report: &Report) {
    for t in &report.tables {
        let checksums = match (&t.dynamodb_checksum, &t.postgres_checksum) {
            (Some(d), Some(p)) => format!(" checksum={d}/{p}"),
            _ => String::new(),
        };
        println!(
            "{} {} dynamodb={} postgres={} quarantined={} repaired={}{} {}",
            t.entity,
            t.tenant,
            t.dynamodb_count,
            t.postgres_count,
            t.quarantined,
            t.repaired,
            checksums,
            if t.ok() { "ok" } else { "MISMATCH" }
        );
    }
    for m in &report.mismatches {
        println!(
            "{} {} {} {} {}",
            m.entity,
            m.tenant,
            m.id,
            m.kind.as_str(),
            m.fields.join(",")
        );
    }
    println!("parity: {}", if report.parity { "yes" } else { "no" });
}

/// Items per Scan page and PostgreSQL keys per keyset page.
const PAGE: i32 = 500;
/// Concurrent PostgreSQL loads (and re-checks).
const CONCURRENCY: usize = 16;
/// Readings of a suspect key, and the pause between them.
const RECHECKS: usize = 3;
const RECHECK_PAUSE: Duration = Duration::from_millis(300);

/// Verifies the tables and tenants of `scope`; `sample`: compare the fields of about
/// that many records per table only; `segments`: parallel Scan segments per table.
pub async fn verify(
    stores: &Stores,
    scope: &Scope,
    sample: Option<u64>,
    segments: i32,
) -> anyhow::Result<Report> {
    let segments = segments.max(1);
    let mut tallies: BTreeMap<(Entity, String), Tally> = BTreeMap::new();
    let mut mismatches = Vec::new();
    for &entity in &scope.entities {
        let sampler = match sample {
            Some(n) => {
                let estimate = stores
                    .dynamo
                    .approximate_count(entity)
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                Some(Sampler::new(n, estimate))
            }
            None => None,
        };
        let run = TableRun {
            stores,
            scope,
            entity,
            sampler: sampler.as_ref(),
            state: Mutex::new(RunState::default()),
        };
        futures::future::try_join_all((0..segments).map(|seg| run.scan_segment(seg, segments)))
            .await
            .with_context(|| format!("scan {}", entity.as_str()))?;
        run.postgres_pass()
            .await
            .with_context(|| format!("postgres keys of {}", entity.as_str()))?;
        let (found, state) = run.recheck().await?;
        mismatches.extend(found);
        for (tenant, t) in state.tallies {
            tallies.entry((entity, tenant)).or_default().merge(&t);
        }
    }
    mismatches.sort_by(|a: &Mismatch, b: &Mismatch| {
        (
            super::parse_entity(&a.entity).map(super::load_order),
            &a.tenant,
            &a.id,
        )
            .cmp(&(
                super::parse_entity(&b.entity).map(super::load_order),
                &b.tenant,
                &b.id,
            ))
    });
    let tables: Vec<TableReport> = tallies
        .into_iter()
        .map(|((entity, tenant), t)| t.report(entity, tenant, sample.is_none()))
        .collect();
    let parity = mismatches.is_empty() && tables.iter().all(TableReport::ok);
    Ok(Report {
        tables,
        mismatches,
        sample,
        parity,
    })
}

/// Running totals of one entity and tenant.
#[derive(Clone, Debug, Default)]
struct Tally {
    dynamodb: u64,
    postgres: u64,
    quarantined: u64,
    repaired: u64,
    dynamodb_sum: u64,
    postgres_sum: u64,
}

impl Tally {
    fn merge(&mut self, o: &Tally) {
        self.dynamodb += o.dynamodb;
        self.postgres += o.postgres;
        self.quarantined += o.quarantined;
        self.repaired += o.repaired;
        self.dynamodb_sum = self.dynamodb_sum.wrapping_add(o.dynamodb_sum);
        self.postgres_sum = self.postgres_sum.wrapping_add(o.postgres_sum);
    }

    fn report(&self, entity: Entity, tenant: String, checksums: bool) -> TableReport {
        let hex = |v: u64| format!("{v:016x}");
        TableReport {
            entity: entity.as_str().to_owned(),
            tenant,
            dynamodb_count: self.dynamodb,
            postgres_count: self.postgres,
            quarantined: self.quarantined,
            repaired: self.repaired,
            dynamodb_checksum: checksums.then(|| hex(self.dynamodb_sum)),
            postgres_checksum: checksums.then(|| hex(self.postgres_sum)),
            checksums_match: checksums.then_some(self.dynamodb_sum == self.postgres_sum),
        }
    }
}

/// Picks about `n` keys of a table of about `estimate` items, by a hash of the key.
struct Sampler {
    n: u64,
    /// Keys with a hash below this are picked.
    threshold: u64,
    picked: AtomicU64,
}

impl Sampler {
    fn new(n: u64, estimate: i64) -> Self {
        let estimate = u64::try_from(estimate).unwrap_or(0);
        let threshold = if estimate <= n {
            u64::MAX
        } else {
            // n / estimate of the hash space.
            ((u128::from(u64::MAX) * u128::from(n)) / u128::from(estimate)) as u64
        };
        Self {
            n,
            threshold,
            picked: AtomicU64::new(0),
        }
    }

    fn picks(&self, tenant: &str, id: &str) -> bool {
        hash64(format!("{tenant}\u{1f}{id}").as_bytes()) <= self.threshold
            && self.picked.fetch_add(1, Ordering::Relaxed) < self.n
    }
}

/// A key as read: tenant and id as text (a legacy id may not be a UUID).
type TextKey = (String, String);

#[derive(Default)]
struct RunState {
    /// The [`key_hash`] of every in-scope key the Scan returned. A PostgreSQL key whose
    /// hash is missing was certainly not seen; one whose hash collides with a seen key
    /// (odds about n / 2^64 per extra row) would be missed.
    seen: HashSet<u64>,
    /// Keys that differed on first reading, with whether their fields are compared.
    suspects: Vec<(TextKey, bool)>,
    /// By tenant.
    tallies: BTreeMap<String, Tally>,
}

/// One table being verified.
struct TableRun<'a> {
    stores: &'a Stores,
    scope: &'a Scope,
    entity: Entity,
    sampler: Option<&'a Sampler>,
    state: Mutex<RunState>,
}

/// What one store holds under a key.
enum Seen {
    Absent,
    /// The item exists but does not decode (the error).
    Undecodable(String),
    Present(Box<Record>),
}

/// What the ledger says about a key.
#[derive(Default)]
struct LedgerEntry {
    repaired: Option<Vec<String>>,
    quarantined: bool,
}

/// The judgement of one reading of a key.
enum Verdict {
    Clean,
    Repaired,
    Quarantined,
    Mismatch(MismatchKind, Vec<String>),
}

fn classify(dynamo: &Seen, pg: Option<&Record>, ledger: &LedgerEntry, compare: bool) -> Verdict {
    match (dynamo, pg) {
        (Seen::Absent, None) => Verdict::Clean,
        (_, None) if ledger.quarantined => Verdict::Quarantined,
        (Seen::Undecodable(e), _) => Verdict::Mismatch(MismatchKind::Undecodable, vec![e.clone()]),
        (Seen::Present(_), None) => Verdict::Mismatch(MismatchKind::MissingInPostgres, vec![]),
        (Seen::Absent, Some(_)) => Verdict::Mismatch(MismatchKind::MissingInDynamodb, vec![]),
        (Seen::Present(d), Some(p)) => {
            let fields = if compare {
                differing_fields(d, p)
            } else {
                Vec::new()
            };
            match &ledger.repaired {
                Some(repaired) => {
                    let unexplained: Vec<String> = fields
                        .into_iter()
                        .filter(|f| !repaired.contains(f))
                        .collect();
                    if unexplained.is_empty() {
                        Verdict::Repaired
                    } else {
                        Verdict::Mismatch(MismatchKind::Fields, unexplained)
                    }
                }
                None if fields.is_empty() => Verdict::Clean,
                None => Verdict::Mismatch(MismatchKind::Fields, fields),
            }
        }
    }
}

/// Adds one reading of a key to its tally (checksums over records neither repaired
/// nor quarantined).
fn count(t: &mut Tally, dynamo: &Seen, pg: Option<&Record>, ledger: &LedgerEntry, v: &Verdict) {
    let excluded = ledger.repaired.is_some() || ledger.quarantined;
    if !matches!(dynamo, Seen::Absent) {
        t.dynamodb += 1;
    }
    if pg.is_some() {
        t.postgres += 1;
    }
    match v {
        Verdict::Repaired => t.repaired += 1,
        Verdict::Quarantined => t.quarantined += 1,
        _ => {}
    }
    if !excluded {
        if let Seen::Present(r) = dynamo {
            t.dynamodb_sum = t.dynamodb_sum.wrapping_add(record_hash(r));
        }
        if let Some(r) = pg {
            t.postgres_sum = t.postgres_sum.wrapping_add(record_hash(r));
        }
    }
}

fn text_attr(item: &Item, name: &str) -> String {
    match item.get(name) {
        Some(AttributeValue::S(s)) => s.clone(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn record_key(entity: Entity, tenant: &str, id: &str) -> Option<RecordKey> {
    Some(RecordKey {
        entity,
        tenant: TenantId::parse(tenant)?,
        id: Uuid::parse_str(id).ok()?,
    })
}

impl TableRun<'_> {
    fn compares(&self, key: &TextKey) -> bool {
        self.sampler.is_none_or(|s| s.picks(&key.0, &key.1))
    }

    async fn ledger(&self, keys: &[TextKey]) -> anyhow::Result<HashMap<TextKey, LedgerEntry>> {
        let mut out: HashMap<TextKey, LedgerEntry> = HashMap::new();
        if keys.is_empty() {
            return Ok(out);
        }
        let mut conn = self.stores.pg.conn().await?;
        for (k, fields) in ledger::repairs_for(&mut conn, self.entity, keys).await? {
            out.entry(k).or_default().repaired = Some(fields);
        }
        for (k, _) in ledger::quarantined_for(&mut conn, self.entity, keys).await? {
            out.entry(k).or_default().quarantined = true;
        }
        Ok(out)
    }

    async fn load_pg(&self, key: &TextKey) -> anyhow::Result<Option<Record>> {
        match record_key(self.entity, &key.0, &key.1) {
            Some(k) => Ok(Replica::load(&self.stores.pg, &k).await.with_context(|| {
                format!(
                    "load {} {} {} from PostgreSQL",
                    k.entity.as_str(),
                    key.0,
                    key.1
                )
            })?),
            None => Ok(None),
        }
    }

    /// The first reading: one Scan segment, page by page.
    async fn scan_segment(&self, segment: i32, total: i32) -> anyhow::Result<()> {
        let mut start = None;
        loop {
            let page = self
                .stores
                .dynamo
                .scan_page(self.entity, segment, total, start.as_ref(), PAGE)
                .await?;
            let mut entries = Vec::with_capacity(page.items.len());
            for item in &page.items {
                let key = (text_attr(item, "tenantId"), text_attr(item, "id"));
                if !self.scope.has_tenant(&key.0) {
                    continue;
                }
                let seen = match record_from_item(self.entity, item) {
                    Ok(r) => Seen::Present(Box::new(r)),
                    Err(e) => Seen::Undecodable(e.to_string()),
                };
                entries.push((key, seen));
            }
            let keys: Vec<TextKey> = entries.iter().map(|(k, _)| k.clone()).collect();
            let ledger = self.ledger(&keys).await?;
            let loaded: Vec<(TextKey, Seen, Option<Record>)> = futures::stream::iter(entries)
                .map(|(key, seen)| async move {
                    let pg = self.load_pg(&key).await?;
                    anyhow::Ok((key, seen, pg))
                })
                .buffer_unordered(CONCURRENCY)
                .try_collect()
                .await?;
            {
                let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                let none = LedgerEntry::default();
                for (key, seen, pg) in loaded {
                    st.seen.insert(key_hash(&key));
                    let compare = self.compares(&key);
                    let l = ledger.get(&key).unwrap_or(&none);
                    let verdict = classify(&seen, pg.as_ref(), l, compare);
                    if let Verdict::Mismatch(..) = verdict {
                        st.suspects.push((key, compare));
                    } else {
                        let t = st.tallies.entry(key.0.clone()).or_default();
                        count(t, &seen, pg.as_ref(), l, &verdict);
                    }
                }
            }
            match page.next {
                Some(next) => start = Some(next),
                None => return Ok(()),
            }
        }
    }

    /// The PostgreSQL keys the Scan did not see become suspects.
    async fn postgres_pass(&self) -> anyhow::Result<()> {
        #[derive(diesel::QueryableByName)]
        struct K {
            #[diesel(sql_type = Text)]
            tenant_id: String,
            #[diesel(sql_type = Text)]
            id: String,
        }
        let table = super::table_name(self.entity);
        let tenants = &self.scope.tenants;
        let tenant_filter = if tenants.is_empty() {
            ""
        } else {
            " AND tenant_id = ANY($3)"
        };
        let mut after: Option<TextKey> = None;
        loop {
            let (start_cond, t0, i0) = match &after {
                Some((t, i)) => ("(tenant_id, id) > ($1, $2::uuid)", t.clone(), i.clone()),
                None => ("$1 = $1 AND $2 = $2", String::new(), String::new()),
            };
            let sql = format!(
                "SELECT tenant_id, id::text AS id FROM {table} WHERE {start_cond}{tenant_filter} \
                 ORDER BY tenant_id, id LIMIT {PAGE}"
            );
            let mut conn = self.stores.pg.conn().await?;
            let q = diesel::sql_query(sql)
                .bind::<Text, _>(t0)
                .bind::<Text, _>(i0);
            let rows: Vec<K> = if tenants.is_empty() {
                q.load(&mut conn).await?
            } else {
                q.bind::<Array<Text>, _>(tenants).load(&mut conn).await?
            };
            drop(conn);
            let Some(last) = rows.last() else {
                return Ok(());
            };
            after = Some((last.tenant_id.clone(), last.id.clone()));
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            for r in rows {
                let key = (r.tenant_id, r.id);
                if !st.seen.contains(&key_hash(&key)) {
                    let compare = self.compares(&key);
                    st.suspects.push((key, compare));
                }
            }
        }
    }

    /// One full reading of a key from both stores (DynamoDB consistently).
    async fn read(&self, key: &TextKey) -> anyhow::Result<(Seen, Option<Record>)> {
        let item = self
            .stores
            .dynamo
            .get_raw(self.entity, &key.0, &key.1)
            .await?;
        let dynamo = match item {
            None => Seen::Absent,
            Some(item) => match record_from_item(self.entity, &item) {
                Ok(r) => Seen::Present(Box::new(r)),
                Err(e) => Seen::Undecodable(e.to_string()),
            },
        };
        Ok((dynamo, self.load_pg(key).await?))
    }

    /// Re-reads every suspect (in rounds, [`RECHECK_PAUSE`] apart) until it no longer
    /// differs or has been read [`RECHECKS`] times; counts the last reading.
    async fn recheck(self) -> anyhow::Result<(Vec<Mismatch>, RunState)> {
        let mut state = self.state.into_inner().unwrap_or_else(|e| e.into_inner());
        let this = TableRun {
            state: Mutex::new(RunState::default()),
            ..self
        };
        let mut pending = std::mem::take(&mut state.suspects);
        let mut mismatches = Vec::new();
        for round in 0..RECHECKS {
            if pending.is_empty() {
                break;
            }
            if round > 0 {
                tokio::time::sleep(RECHECK_PAUSE).await;
            }
            let keys: Vec<TextKey> = pending.iter().map(|(k, _)| k.clone()).collect();
            let ledger = this.ledger(&keys).await?;
            let readings: Vec<_> = futures::stream::iter(pending)
                .map(|(key, compare)| {
                    let this = &this;
                    async move {
                        let (dynamo, pg) = this.read(&key).await?;
                        anyhow::Ok((key, compare, dynamo, pg))
                    }
                })
                .buffer_unordered(CONCURRENCY)
                .try_collect()
                .await?;
            let mut next = Vec::new();
            let none = LedgerEntry::default();
            for (key, compare, dynamo, pg) in readings {
                let l = ledger.get(&key).unwrap_or(&none);
                let verdict = classify(&dynamo, pg.as_ref(), l, compare);
                let last = round + 1 == RECHECKS;
                if let Verdict::Mismatch(kind, fields) = &verdict {
                    if !last {
                        next.push((key, compare));
                        continue;
                    }
                    mismatches.push(Mismatch {
                        entity: this.entity.as_str().to_owned(),
                        tenant: key.0.clone(),
                        id: key.1.clone(),
                        kind: *kind,
                        fields: fields.clone(),
                    });
                }
                let t = state.tallies.entry(key.0).or_default();
                count(t, &dynamo, pg.as_ref(), l, &verdict);
            }
            pending = next;
        }
        Ok((mismatches, state))
    }
}

/// The hash of a key kept for the PostgreSQL pass.
fn key_hash((tenant, id): &TextKey) -> u64 {
    hash64(format!("{tenant}\u{1f}{id}").as_bytes())
}

fn hash64(bytes: &[u8]) -> u64 {
    let d = Sha256::digest(bytes);
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    u64::from_be_bytes(first)
}

/// The checksum term of one record: the hash of its canonical legacy item.
fn record_hash(r: &Record) -> u64 {
    match record_item(r) {
        Ok(item) => hash64(canonical_item(&item).as_bytes()),
        Err(e) => hash64(format!("<unencodable: {e}>").as_bytes()),
    }
}

/// The item as text, attributes (and map keys, set members) sorted.
fn canonical_item(item: &Item) -> String {
    let mut names: Vec<&String> = item.keys().collect();
    names.sort();
    let mut out = String::from("{");
    for name in names {
        out.push_str(&serde_json::to_string(name).unwrap_or_default());
        out.push(':');
        canonical_attr(&item[name], &mut out);
        out.push(',');
    }
    out.push('}');
    out
}

fn canonical_attr(a: &AttributeValue, out: &mut String) {
    let quoted = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let set = |tag: &str, v: &[String], out: &mut String| {
        let mut v: Vec<String> = v.iter().map(|s| quoted(s)).collect();
        v.sort();
        out.push_str(&format!("{tag}[{}]", v.join(",")));
    };
    match a {
        AttributeValue::S(s) => out.push_str(&format!("S{}", quoted(s))),
        AttributeValue::N(n) => out.push_str(&format!("N{n}")),
        AttributeValue::Bool(b) => out.push_str(&format!("B{b}")),
        AttributeValue::Null(_) => out.push_str("NULL"),
        AttributeValue::Ss(v) => set("SS", v, out),
        AttributeValue::Ns(v) => set("NS", v, out),
        AttributeValue::L(l) => {
            out.push_str("L[");
            for v in l {
                canonical_attr(v, out);
                out.push(',');
            }
            out.push(']');
        }
        AttributeValue::M(m) => {
            out.push('M');
            out.push_str(&canonical_item(m));
        }
        AttributeValue::B(b) => {
            use base64::Engine;
            out.push_str(&format!(
                "BIN{}",
                base64::engine::general_purpose::STANDARD.encode(b.as_ref())
            ));
        }
        other => out.push_str(&format!("?{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canonical_item_ignores_attribute_and_set_order() {
        let a: Item = HashMap::from([
            (
                "b".to_owned(),
                AttributeValue::Ss(vec!["x".into(), "y".into()]),
            ),
            ("a".to_owned(), AttributeValue::N("1".into())),
            (
                "m".to_owned(),
                AttributeValue::M(HashMap::from([
                    ("z".to_owned(), AttributeValue::Bool(true)),
                    ("k".to_owned(), AttributeValue::S("v".into())),
                ])),
            ),
        ]);
        let mut b = a.clone();
        b.insert("b".into(), AttributeValue::Ss(vec!["y".into(), "x".into()]));
        assert_eq!(canonical_item(&a), canonical_item(&b));
        b.insert("a".into(), AttributeValue::N("2".into()));
        assert_ne!(canonical_item(&a), canonical_item(&b));
    }

    #[test]
    fn a_table_is_ok_only_when_counts_and_checksums_agree() {
        let mut t = TableReport {
            dynamodb_count: 5,
            postgres_count: 4,
            quarantined: 1,
            checksums_match: Some(true),
            ..TableReport::default()
        };
        assert!(t.ok());
        t.checksums_match = Some(false);
        assert!(!t.ok());
        t.checksums_match = None;
        t.quarantined = 0;
        assert!(!t.ok());
    }

    #[test]
    fn the_sampler_picks_about_n_and_never_more() {
        let s = Sampler::new(10, 1000);
        let picked = (0..1000).filter(|i| s.picks("t", &format!("{i}"))).count();
        assert!((1..=10).contains(&picked), "{picked}");
        let all = Sampler::new(10, 0);
        assert_eq!(
            (0..50).filter(|i| all.picks("t", &format!("{i}"))).count(),
            10
        );
    }

    #[test]
    fn the_report_round_trips_as_json() {
        let r = Report {
            tables: vec![TableReport {
                entity: "customer".into(),
                tenant: "t".into(),
                ..TableReport::default()
            }],
            mismatches: vec![Mismatch {
                entity: "customer".into(),
                tenant: "t".into(),
                id: "x".into(),
                kind: MismatchKind::MissingInDynamodb,
                fields: vec![],
            }],
            sample: None,
            parity: false,
        };
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"missing_in_dynamodb\""), "{json}");
        assert_eq!(serde_json::from_str::<Report>(&json).unwrap(), r);
    }
}
