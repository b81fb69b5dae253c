//! Backfill benchmark helpers: write legacy-shaped items into the DynamoDB tables fast,
//! time a raw parallel Scan of them, and time PostgreSQL's raw batch upsert.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Context;
use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use gcdr_data::storage::dynamodb::{DynamoConfig, DynamoStore, TableNames};
use gcdr_data::storage::replica::Entity;
use rand::Rng;
use uuid::Uuid;

/// The store for `endpoint` and table `stage`.
pub async fn store(endpoint: &str, stage: &str) -> DynamoStore {
    DynamoStore::connect(&DynamoConfig {
        endpoint: Some(endpoint.to_owned()),
        region: "sa-east-1".into(),
        tables: TableNames::from_lookup(stage, |_| None),
        index_settle: gcdr_data::storage::dynamodb::INDEX_SETTLE,
    })
    .await
}

type Item = HashMap<String, AttributeValue>;

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn empty_map() -> AttributeValue {
    AttributeValue::M(HashMap::new())
}

/// Attributes every legacy entity item has.
fn base(tenant: &str, id: Uuid, name: &str) -> Item {
    let ts = "2025-03-01T10:00:00.000Z";
    HashMap::from([
        ("tenantId".into(), s(tenant)),
        ("id".into(), s(id.to_string())),
        ("name".into(), s(name)),
        ("displayName".into(), s(name)),
        ("metadata".into(), empty_map()),
        ("status".into(), s("ACTIVE")),
        ("version".into(), n(1)),
        ("createdAt".into(), s(ts)),
        ("updatedAt".into(), s(ts)),
        ("createdBy".into(), s("system")),
    ])
}

/// Writes `items` legacy items per `tenants` tenants' worth: 10% customers (a root per
/// ten, the rest its children), 40% assets (a building per customer-group, floors
/// under it), 50% devices on the floors.
pub async fn seed(store: &DynamoStore, items: u64, tenants: u64) -> anyhow::Result<()> {
    let started = Instant::now();
    let (tx, rx) = tokio::sync::mpsc::channel::<(Entity, Item)>(10_000);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let written = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for _ in 0..16 {
        let (store, rx, written) = (store.clone(), rx.clone(), written.clone());
        writers.push(tokio::spawn(async move {
            let mut batch: HashMap<Entity, Vec<Item>> = HashMap::new();
            loop {
                let next = rx.lock().await.recv().await;
                let done = next.is_none();
                if let Some((e, item)) = next {
                    batch.entry(e).or_default().push(item);
                }
                for (e, items) in batch.iter_mut() {
                    if items.len() >= 25 || (done && !items.is_empty()) {
                        let chunk: Vec<Item> = std::mem::take(items);
                        written.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        write_batch(&store, *e, chunk).await?;
                    }
                }
                if done {
                    return anyhow::Ok(());
                }
            }
        }));
    }
    let per_tenant = items / tenants.max(1);
    for t in 0..tenants.max(1) {
        let tenant = format!("bench-legacy-{t}");
        let customers = (per_tenant / 10).max(1);
        let assets = per_tenant * 4 / 10;
        let devices = per_tenant - customers - assets;
        let mut customer_ids = Vec::new();
        let mut root = (Uuid::nil(), String::new());
        for k in 0..customers {
            let id = Uuid::new_v4();
            let mut i = base(&tenant, id, &format!("Customer {k}"));
            let path = if k % 10 == 0 {
                root = (id, format!("/{tenant}/{id}"));
                i.insert("depth".into(), n(0));
                root.1.clone()
            } else {
                i.insert("parentCustomerId".into(), s(root.0.to_string()));
                i.insert("depth".into(), n(1));
                format!("{}/{id}", root.1)
            };
            i.insert("path".into(), s(path));
            i.insert("code".into(), s(format!("C{t}-{k}")));
            i.insert("type".into(), s("COMPANY"));
            i.insert("settings".into(), empty_map());
            customer_ids.push(id);
            tx.send((Entity::Customer, i)).await?;
        }
        let mut floors = Vec::new();
        let mut building = (Uuid::nil(), Uuid::nil(), String::new());
        for k in 0..assets {
            let id = Uuid::new_v4();
            let mut i = base(&tenant, id, &format!("Asset {k}"));
            if k % 5 == 0 {
                let c = customer_ids[rand::rng().random_range(0..customer_ids.len())];
                building = (id, c, format!("/{tenant}/{c}/{id}"));
                i.insert("path".into(), s(building.2.clone()));
                i.insert("depth".into(), n(0));
                i.insert("type".into(), s("BUILDING"));
            } else {
                i.insert("parentAssetId".into(), s(building.0.to_string()));
                i.insert("path".into(), s(format!("{}/{id}", building.2)));
                i.insert("depth".into(), n(1));
                i.insert("type".into(), s("FLOOR"));
                floors.push((id, building.1));
            }
            i.insert("customerId".into(), s(building.1.to_string()));
            i.insert("code".into(), s(format!("A{k}")));
            for k in ["location", "specs"] {
                i.insert(k.into(), empty_map());
            }
            i.insert("tags".into(), AttributeValue::L(vec![]));
            tx.send((Entity::Asset, i)).await?;
        }
        anyhow::ensure!(!floors.is_empty(), "too few items for a floor");
        for k in 0..devices {
            let id = Uuid::new_v4();
            let (asset, customer) = floors[rand::rng().random_range(0..floors.len())];
            let serial = format!("SN-{t}-{k}");
            let mut i = base(&tenant, id, &serial);
            i.insert("assetId".into(), s(asset.to_string()));
            i.insert("customerId".into(), s(customer.to_string()));
            i.insert("type".into(), s("SENSOR"));
            i.insert("serialNumber".into(), s(serial.clone()));
            i.insert(
                "specs".into(),
                AttributeValue::M(HashMap::from([("serialNumber".into(), s(serial))])),
            );
            i.insert("connectivityStatus".into(), s("UNKNOWN"));
            for k in ["telemetryConfig", "attributes"] {
                i.insert(k.into(), empty_map());
            }
            i.insert("tags".into(), AttributeValue::L(vec![]));
            tx.send((Entity::Device, i)).await?;
        }
    }
    drop(tx);
    for w in writers {
        w.await??;
    }
    let n = written.load(Ordering::Relaxed);
    eprintln!(
        "seeded {n} legacy items in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn write_batch(store: &DynamoStore, entity: Entity, items: Vec<Item>) -> anyhow::Result<()> {
    let table = store.table_of(entity).to_owned();
    let mut pending: Vec<WriteRequest> = items
        .into_iter()
        .map(|i| {
            WriteRequest::builder()
                .put_request(
                    PutRequest::builder()
                        .set_item(Some(i))
                        .build()
                        .expect("item set"),
                )
                .build()
        })
        .collect();
    while !pending.is_empty() {
        let out = store
            .client()
            .batch_write_item()
            .request_items(&table, std::mem::take(&mut pending))
            .send()
            .await
            .with_context(|| format!("BatchWriteItem into {table}"))?;
        if let Some(mut u) = out.unprocessed_items {
            pending = u.remove(&table).unwrap_or_default();
        }
    }
    Ok(())
}

/// Reads every legacy table with `segments` parallel Scan segments of `page` items;
/// prints items and items/s.
pub async fn scan(store: &DynamoStore, segments: i32, page: i32) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut total = 0u64;
    for entity in Entity::ALL {
        let tasks = (0..segments).map(|seg| {
            let store = store.clone();
            tokio::spawn(async move {
                let (mut items, mut pos) = (0u64, None);
                loop {
                    let p = store
                        .scan_page(entity, seg, segments, pos.as_ref(), page)
                        .await
                        .map_err(|e| anyhow::anyhow!("scan: {e}"))?;
                    items += p.items.len() as u64;
                    match p.next {
                        Some(k) => pos = Some(k),
                        None => return anyhow::Ok(items),
                    }
                }
            })
        });
        for t in futures::future::join_all(tasks).await {
            total += t??;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "raw parallel Scan: {total} items in {secs:.2} s = {:.0} items/s ({segments} segments, pages of {page})",
        total as f64 / secs
    );
    Ok(())
}

/// Times PostgreSQL's raw batch upsert from one connection in statements of `batch`
/// rows (multi-row INSERT ... VALUES ... ON CONFLICT DO UPDATE ... WHERE version <=,
/// every column the backfill writes), into a scratch tenant deleted first and after,
/// twice: `rows` root customers (no foreign key to check, the figure the issue
/// quotes), then `rows` rows of the same mix `seed` writes (10% customers, 40%
/// assets, 50% devices, parents first), the same work the backfill's writes do. The
/// tables foreign keys point at are analyzed as they grow, as the backfill does, so
/// neither side pays for checks planned on an empty table.
pub async fn pg_upsert(url: &str, rows: u64, batch: u64) -> anyhow::Result<()> {
    gcdr_data::storage::postgres::migrate(url).await?;
    let mut conn = AsyncPgConnection::establish(url).await.context("connect")?;
    // Analyzed first: the deletes check foreign keys row by row, with plans made from
    // the tables' statistics.
    let clear = "ANALYZE customers, assets, devices; \
                 DELETE FROM devices WHERE tenant_id = 'bench-pg-raw'; \
                 DELETE FROM assets WHERE tenant_id = 'bench-pg-raw'; \
                 DELETE FROM customers WHERE tenant_id = 'bench-pg-raw'";
    let ts = "'2025-03-01T10:00:00Z', '2025-03-01T10:00:00Z', 'system', NULL";
    let t = "bench-pg-raw";

    conn.batch_execute(clear).await?;
    // Each measurement starts on tables without the dead rows of the one before.
    let vacuum = "VACUUM (ANALYZE) customers, assets, devices";
    conn.batch_execute(vacuum).await?;
    let roots: Vec<String> = (0..rows)
        .map(|g| {
            let id = Uuid::new_v4();
            format!(
                "('{t}', '{id}', NULL, '/{t}/{id}', 0, 'Customer {g}', 'Customer {g}', 'R{g}', \
                  'COMPANY', NULL, NULL, NULL, '{{}}', NULL, '{{}}', 'ACTIVE', 1, {ts})"
            )
        })
        .collect();
    let started = Instant::now();
    let root_customers = RawTable {
        referenced: false,
        ..CUSTOMERS
    };
    upsert_all(&mut conn, root_customers, &roots, batch).await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "raw PostgreSQL batch upsert, root customers: {rows} rows in {secs:.2} s = {:.0} rows/s (statements of {batch})",
        rows as f64 / secs
    );

    conn.batch_execute(clear).await?;
    conn.batch_execute(vacuum).await?;
    let (customers, assets, devices) = mix(t, rows, ts);
    let started = Instant::now();
    upsert_all(&mut conn, CUSTOMERS, &customers, batch).await?;
    upsert_all(&mut conn, ASSETS, &assets, batch).await?;
    upsert_all(&mut conn, DEVICES, &devices, batch).await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "raw PostgreSQL batch upsert, the seeded mix: {rows} rows in {secs:.2} s = {:.0} rows/s \
         ({} customers, {} assets, {} devices; statements of {batch})",
        rows as f64 / secs,
        customers.len(),
        assets.len(),
        devices.len()
    );
    conn.batch_execute(clear).await?;
    conn.batch_execute(vacuum).await?;
    Ok(())
}

/// A table's name, the columns of its VALUES rows, and whether rows loaded after it
/// check foreign keys against it (so its statistics matter while it grows).
struct RawTable {
    name: &'static str,
    columns: &'static str,
    referenced: bool,
}

const CUSTOMERS: RawTable = RawTable {
    name: "customers",
    referenced: true,
    columns: "tenant_id, id, parent_customer_id, path, depth, name, display_name, code, type, \
              email, phone, address, settings, theme, metadata, status, version, created_at, \
              updated_at, created_by, updated_by",
};
const ASSETS: RawTable = RawTable {
    name: "assets",
    referenced: true,
    columns: "tenant_id, id, customer_id, parent_asset_id, path, depth, name, display_name, \
              code, type, description, location, specs, tags, metadata, status, version, \
              created_at, updated_at, created_by, updated_by",
};
const DEVICES: RawTable = RawTable {
    name: "devices",
    referenced: false,
    columns: "tenant_id, id, asset_id, customer_id, name, display_name, type, serial_number, \
              specs, telemetry_config, tags, metadata, attributes, connectivity_status, status, \
              version, created_at, updated_at, created_by, updated_by",
};

/// VALUES rows of `seed`'s mix for tenant `t`: customers, assets, devices.
fn mix(t: &str, rows: u64, ts: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
    let n_customers = (rows / 10).max(1);
    let n_assets = rows * 4 / 10;
    let n_devices = rows - n_customers - n_assets;
    let mut rng = rand::rng();
    let (mut customers, mut ids, mut root) = (Vec::new(), Vec::new(), (Uuid::nil(), String::new()));
    for k in 0..n_customers {
        let id = Uuid::new_v4();
        let (parent, path, depth) = if k % 10 == 0 {
            root = (id, format!("/{t}/{id}"));
            ("NULL".to_owned(), root.1.clone(), 0)
        } else {
            (format!("'{}'", root.0), format!("{}/{id}", root.1), 1)
        };
        customers.push(format!(
            "('{t}', '{id}', {parent}, '{path}', {depth}, 'Customer {k}', 'Customer {k}', \
              'C{k}', 'COMPANY', NULL, NULL, NULL, '{{}}', NULL, '{{}}', 'ACTIVE', 1, {ts})"
        ));
        ids.push(id);
    }
    let (mut assets, mut floors) = (Vec::new(), Vec::new());
    let mut building = (Uuid::nil(), Uuid::nil(), String::new());
    for k in 0..n_assets {
        let id = Uuid::new_v4();
        let (parent, depth, kind) = if k % 5 == 0 {
            let c = ids[rng.random_range(0..ids.len())];
            building = (id, c, format!("/{t}/{c}/{id}"));
            ("NULL".to_owned(), 0, "BUILDING")
        } else {
            floors.push((id, building.1));
            (format!("'{}'", building.0), 1, "FLOOR")
        };
        let path = if depth == 0 {
            building.2.clone()
        } else {
            format!("{}/{id}", building.2)
        };
        assets.push(format!(
            "('{t}', '{id}', '{}', {parent}, '{path}', {depth}, 'Asset {k}', 'Asset {k}', \
              'A{k}', '{kind}', NULL, '{{}}', '{{}}', '[]', '{{}}', 'ACTIVE', 1, {ts})",
            building.1
        ));
    }
    let devices = (0..n_devices)
        .map(|k| {
            let id = Uuid::new_v4();
            let (asset, customer) = floors[rng.random_range(0..floors.len())];
            format!(
                "('{t}', '{id}', '{asset}', '{customer}', 'SN-{k}', 'SN-{k}', 'SENSOR', 'SN-{k}', \
                  '{{\"serialNumber\": \"SN-{k}\"}}', '{{}}', '[]', '{{}}', '{{}}', 'UNKNOWN', \
                  'ACTIVE', 1, {ts})"
            )
        })
        .collect();
    (customers, assets, devices)
}

/// Upserts `rows` into `table` in statements of `batch`; a table that foreign keys
/// reference is analyzed after the first statement and whenever it has doubled.
async fn upsert_all(
    conn: &mut AsyncPgConnection,
    table: RawTable,
    rows: &[String],
    batch: u64,
) -> anyhow::Result<()> {
    let RawTable {
        name,
        columns,
        referenced,
    } = table;
    let set: Vec<String> = columns
        .split(',')
        .map(str::trim)
        .filter(|c| *c != "tenant_id" && *c != "id")
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    let (mut done, mut analyzed_at) = (0, 0);
    for chunk in rows.chunks(batch.max(1) as usize) {
        conn.batch_execute(&format!(
            "INSERT INTO {name} ({columns}) VALUES {} ON CONFLICT (tenant_id, id) DO UPDATE SET {} \
             WHERE {name}.version <= excluded.version",
            chunk.join(", "),
            set.join(", ")
        ))
        .await
        .with_context(|| format!("upsert into {name}"))?;
        done += chunk.len();
        if referenced && done >= 2 * analyzed_at {
            analyzed_at = done;
            conn.batch_execute(&format!("ANALYZE {name}")).await?;
        }
    }
    Ok(())
}

/// The backfill's raw parts run together on this machine: every legacy table read with
/// `segments` parallel Scan segments of `page` items, each page decoded and upserted
/// (as many rows per statement as the backfill, one transaction per page, the next page
/// read while one loads) with nothing else: no repair rules, parent lookups, code checks, deferrals,
/// ledger or checkpoint, and foreign keys off (`session_replication_role = replica`,
/// which needs a superuser; scratch database only). The raw Scan and the raw upsert
/// each have the machine to themselves; this one shares it with the emulator as the
/// backfill does, so the backfill's ratio to it is the cost of the backfill's own work.
pub async fn raw_copy(
    store: &DynamoStore,
    url: &str,
    segments: i32,
    page: i32,
) -> anyhow::Result<()> {
    gcdr_data::storage::postgres::migrate(url).await?;
    let started = Instant::now();
    let mut total = 0u64;
    for entity in Entity::ALL {
        let tasks = (0..segments).map(|seg| {
            let (store, url) = (store.clone(), url.to_owned());
            async move {
                let mut conn = AsyncPgConnection::establish(&url)
                    .await
                    .context("connect")?;
                conn.batch_execute("SET session_replication_role = replica")
                    .await?;
                let scan = |pos: Option<gcdr_data::storage::dynamodb::ScanKey>| {
                    let store = store.clone();
                    async move {
                        let p = (store
                            .scan_page(entity, seg, segments, pos.as_ref(), page)
                            .await)
                            .map_err(|e| anyhow::anyhow!("scan: {e}"))?;
                        let records: Vec<_> = (p.items.iter())
                            .filter_map(|i| {
                                gcdr_data::storage::dynamodb::record_from_item(entity, i).ok()
                            })
                            .collect();
                        anyhow::Ok((p.items.len() as u64, records, p.next))
                    }
                };
                let (mut scanned, mut records, mut next) = scan(None).await?;
                let mut items = 0u64;
                loop {
                    items += scanned;
                    let load = conn.transaction::<_, anyhow::Error, _>(async |c| {
                        for chunk in records.chunks(gcdr_data::migration::backfill::STATEMENT_ROWS)
                        {
                            gcdr_data::storage::postgres::upsert_records(c, chunk)
                                .await
                                .map_err(|e| anyhow::anyhow!("upsert: {e}"))?;
                        }
                        Ok(())
                    });
                    let fetch = async {
                        match &next {
                            Some(k) => scan(Some(k.clone())).await.map(Some),
                            None => Ok(None),
                        }
                    };
                    let (loaded, following) = tokio::join!(load, fetch);
                    loaded?;
                    match following? {
                        Some(p) => (scanned, records, next) = p,
                        None => return anyhow::Ok(items),
                    }
                }
            }
        });
        for n in futures::future::join_all(tasks).await {
            total += n?;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "raw copy (Scan -> upsert, nothing else): {total} items in {secs:.2} s = {:.0} items/s ({segments} segments, pages of {page})",
        total as f64 / secs
    );
    Ok(())
}
