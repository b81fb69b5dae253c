//! `gcdr-data backfill` against real PostgreSQL and the moto emulator: a legacy-shaped
//! fixture with the dirty data legacy left behind, crashes (`kill -9` of the real
//! binary) and resumes, and the service writing in dual mode while it runs. Each test
//! checks the result with `verify`.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use diesel::sql_types::{BigInt, Text};
use diesel_async::RunQueryDsl;
use gcdr_data::migration::backfill::{self, BackfillArgs, ProgressStyle};
use gcdr_data::migration::{Scope, Stores, verify};
use gcdr_data::pb;
use gcdr_data::storage::mode::StorageMode;
use uuid::Uuid;

use crate::harness::req;
use crate::storage_modes::{ModeServer, dynamo_url};

pub const T: &str = "tenant-default";
const TS: &str = "2025-03-01T10:00:00.000Z";

pub fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub fn m(pairs: &[(&str, AttributeValue)]) -> AttributeValue {
    AttributeValue::M(
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), v.clone()))
            .collect(),
    )
}

pub type Item = HashMap<String, AttributeValue>;

pub fn item(pairs: &[(&str, AttributeValue)]) -> Item {
    pairs
        .iter()
        .map(|(k, v)| ((*k).into(), v.clone()))
        .collect()
}

/// The attributes every legacy entity item has (tenant, id, names, status, version,
/// audit), plus `extra`.
fn base(id: Uuid, name: &str, extra: &[(&str, AttributeValue)]) -> Item {
    let mut i = item(&[
        ("tenantId", s(T)),
        ("id", s(&id.to_string())),
        ("name", s(name)),
        ("displayName", s(name)),
        ("metadata", m(&[])),
        ("status", s("ACTIVE")),
        ("version", n(1)),
        ("createdAt", s(TS)),
        ("updatedAt", s(TS)),
        ("createdBy", s("system")),
    ]);
    i.extend(item(extra));
    i
}

/// A customer item as legacy wrote it; `parent` None leaves the attribute absent.
pub fn customer(id: Uuid, parent: Option<Uuid>, path: &str, depth: i64, code: &str) -> Item {
    let mut i = base(
        id,
        &format!("Customer {code}"),
        &[
            ("path", s(path)),
            ("depth", n(depth)),
            ("code", s(code)),
            ("type", s("COMPANY")),
            (
                "settings",
                m(&[
                    ("timezone", s("America/Sao_Paulo")),
                    ("locale", s("pt-BR")),
                    ("currency", s("BRL")),
                    ("inheritFromParent", AttributeValue::Bool(true)),
                ]),
            ),
        ],
    );
    if let Some(p) = parent {
        i.insert("parentCustomerId".into(), s(&p.to_string()));
    }
    i
}

pub fn asset(
    id: Uuid,
    customer: Uuid,
    parent: Option<Uuid>,
    path: &str,
    depth: i64,
    code: &str,
) -> Item {
    let mut i = base(
        id,
        &format!("Asset {code}"),
        &[
            ("customerId", s(&customer.to_string())),
            ("path", s(path)),
            ("depth", n(depth)),
            ("code", s(code)),
            ("type", s("BUILDING")),
            ("location", m(&[])),
            ("specs", m(&[])),
            ("tags", AttributeValue::L(vec![])),
        ],
    );
    if let Some(p) = parent {
        i.insert("parentAssetId".into(), s(&p.to_string()));
    }
    i
}

pub fn device(id: Uuid, asset: Uuid, customer: Uuid, serial: &str) -> Item {
    base(
        id,
        serial,
        &[
            ("assetId", s(&asset.to_string())),
            ("customerId", s(&customer.to_string())),
            ("type", s("SENSOR")),
            ("serialNumber", s(serial)),
            ("specs", m(&[("serialNumber", s(serial))])),
            ("connectivityStatus", s("UNKNOWN")),
            (
                "telemetryConfig",
                m(&[
                    ("reportingInterval", n(60)),
                    ("telemetryKeys", AttributeValue::L(vec![])),
                    ("attributeKeys", AttributeValue::L(vec![])),
                ]),
            ),
            ("tags", AttributeValue::L(vec![])),
            ("attributes", m(&[])),
        ],
    )
}

pub fn policy(id: Uuid, key: &str) -> Item {
    item(&[
        ("tenantId", s(T)),
        ("id", s(&id.to_string())),
        ("key", s(key)),
        ("displayName", s(key)),
        ("allow", AttributeValue::L(vec![s("energy.*.read")])),
        ("deny", AttributeValue::L(vec![])),
        ("riskLevel", s("low")),
        ("isSystem", AttributeValue::Bool(false)),
        ("version", n(1)),
        ("createdAt", s(TS)),
        ("updatedAt", s(TS)),
        ("createdBy", s("system")),
    ])
}

pub fn role(id: Uuid, key: &str, policies: &[&str]) -> Item {
    item(&[
        ("tenantId", s(T)),
        ("id", s(&id.to_string())),
        ("key", s(key)),
        ("displayName", s(key)),
        (
            "policies",
            AttributeValue::L(policies.iter().map(|p| s(p)).collect()),
        ),
        ("tags", AttributeValue::L(vec![])),
        ("riskLevel", s("low")),
        ("isSystem", AttributeValue::Bool(false)),
        ("version", n(1)),
        ("createdAt", s(TS)),
        ("updatedAt", s(TS)),
        ("createdBy", s("system")),
    ])
}

pub fn assignment(id: Uuid, role: &str, scope: &str, status: &str) -> Item {
    item(&[
        ("tenantId", s(T)),
        ("id", s(&id.to_string())),
        ("userId", s("user-joao")),
        ("roleKey", s(role)),
        ("scope", s(scope)),
        ("status", s(status)),
        ("grantedBy", s("system")),
        ("grantedAt", s(TS)),
        ("version", n(1)),
        ("createdAt", s(TS)),
        ("updatedAt", s(TS)),
        ("createdBy", s("system")),
    ])
}

/// A partner as legacy left it: approved, a NULL optional, one API key and one
/// webhook with their hashes.
pub fn partner(id: Uuid, email: &str) -> Item {
    let hash = |c: char| s(&c.to_string().repeat(64));
    let l = |v: &[&str]| AttributeValue::L(v.iter().map(|x| s(x)).collect());
    item(&[
        ("tenantId", s(T)),
        ("id", s(&id.to_string())),
        ("status", s("APPROVED")),
        ("companyName", s(&format!("Company {email}"))),
        ("companyWebsite", s("https://acme.example")),
        ("companyDescription", s("We integrate things")),
        ("industry", s("IoT")),
        ("country", s("BR")),
        ("contactName", s("Ana")),
        ("contactEmail", s(email)),
        ("contactPhone", AttributeValue::Null(true)),
        ("technicalContactEmail", s("tech@acme.example")),
        (
            "apiKeys",
            AttributeValue::L(vec![m(&[
                ("id", s(&Uuid::new_v4().to_string())),
                ("keyHash", s(&format!("{:0>64}", id.simple().to_string()))),
                ("keyPrefix", s("gcdr_liv")),
                ("name", s("prod")),
                ("scopes", l(&["devices:read"])),
                ("createdAt", s("2026-01-21T10:00:00Z")),
                ("status", s("ACTIVE")),
            ])]),
        ),
        ("oauthClients", AttributeValue::L(vec![])),
        (
            "webhooks",
            AttributeValue::L(vec![m(&[
                ("id", s(&Uuid::new_v4().to_string())),
                ("url", s("https://acme.example/hook")),
                ("events", l(&["device.created"])),
                ("secretHash", hash('d')),
                ("enabled", AttributeValue::Bool(true)),
                ("createdAt", s("2026-01-21T12:00:00Z")),
                ("updatedAt", s("2026-01-22T12:00:00Z")),
                ("failureCount", n(0)),
            ])]),
        ),
        ("scopes", l(&["devices:read"])),
        ("rateLimitPerMinute", n(100)),
        ("rateLimitPerDay", n(10000)),
        ("monthlyQuota", n(100000)),
        ("subscribedPackages", l(&[])),
        ("publishedPackages", l(&[])),
        ("approvedAt", s("2026-01-20T15:00:00Z")),
        ("approvedBy", s("admin-1")),
        ("version", n(5)),
        ("createdAt", s("2026-01-19T08:00:00Z")),
        ("updatedAt", s("2026-01-21T12:00:00Z")),
        ("createdBy", s("system")),
    ])
}

pub async fn put(stores: &Stores, table: &str, items: Vec<Item>) {
    for i in items {
        stores
            .dynamo
            .client()
            .put_item()
            .table_name(table)
            .set_item(Some(i))
            .send()
            .await
            .unwrap_or_else(|e| panic!("put into {table} on {}: {e:?}", dynamo_url()));
    }
}

/// The quirky fixture; returns what the checks need.
struct Fixture {
    root: Uuid,
    moved: Uuid,
    moved_child: Uuid,
    new_parent: Uuid,
    dup_code: [Uuid; 2],
    orphan: Uuid,
    stale_asset: Uuid,
    customers: usize,
}

async fn load_fixture(stores: &Stores) -> Fixture {
    let tables = stores.dynamo.tables().clone();
    let id = Uuid::new_v4;
    let (root, root2, child, moved, moved_child) = (id(), id(), id(), id(), id());
    let (dup1, dup2, orphan, missing) = (id(), id(), id(), id());
    let mut root2_item = customer(root2, None, &format!("/{T}/{root2}"), 0, "R2");
    // An optional attribute written NULL (a NULL parent cannot exist: DynamoDB refuses
    // NULL in an index key, contract §0.7).
    root2_item.insert("email".into(), AttributeValue::Null(true));
    put(
        stores,
        &tables.customers,
        vec![
            customer(root, None, &format!("/{T}/{root}"), 0, "ROOT"),
            root2_item,
            customer(
                child,
                Some(root),
                &format!("/{T}/{root}/{child}"),
                1,
                "CHILD",
            ),
            // Legacy move of `moved` from root to root2: the path was rewritten, the
            // parent attribute was not; its child kept the old path prefix.
            customer(
                moved,
                Some(root),
                &format!("/{T}/{root2}/{moved}"),
                1,
                "MOVED",
            ),
            customer(
                moved_child,
                Some(moved),
                &format!("/{T}/{root}/{moved}/{moved_child}"),
                2,
                "MOVED-CHILD",
            ),
            // Two generated codes that collide.
            customer(dup1, None, &format!("/{T}/{dup1}"), 0, "SHOP"),
            customer(dup2, None, &format!("/{T}/{dup2}"), 0, "SHOP"),
            // Its parent was deleted.
            customer(
                orphan,
                Some(missing),
                &format!("/{T}/{missing}/{orphan}"),
                1,
                "ORPHAN",
            ),
            // Undecodable: an unknown type.
            {
                let mut i = customer(id(), None, "/x", 0, "ALIEN");
                i.insert("type".into(), s("ALIEN"));
                i
            },
        ],
    )
    .await;
    let (a1, a2, a3) = (id(), id(), id());
    put(
        stores,
        &tables.assets,
        vec![
            asset(a1, child, None, &format!("/{T}/{child}/{a1}"), 0, "B1"),
            // Child asset whose customerId went stale in a cross-customer move.
            asset(
                a2,
                root,
                Some(a1),
                &format!("/{T}/{child}/{a1}/{a2}"),
                1,
                "F1",
            ),
            // Its customer is gone.
            asset(a3, missing, None, &format!("/{T}/{missing}/{a3}"), 0, "B3"),
        ],
    )
    .await;
    let (d1, d2, d3) = (id(), id(), id());
    put(
        stores,
        &tables.devices,
        vec![
            device(d1, a2, root, "SN-1"),
            device(d2, a2, child, "SN-1"),
            device(d3, a3, missing, "SN-3"),
        ],
    )
    .await;
    put(stores, &tables.policies, vec![policy(id(), "energy_read")]).await;
    put(
        stores,
        &tables.roles,
        vec![
            role(id(), "energy", &["energy_read"]),
            role(id(), "ghost", &["deleted_policy"]),
        ],
    )
    .await;
    let scope = format!("customer:{root}");
    put(
        stores,
        &tables.role_assignments,
        vec![
            assignment(id(), "energy", &scope, "active"),
            // An inactive duplicate legacy kept.
            assignment(id(), "energy", &scope, "inactive"),
            assignment(id(), "no_such_role", &scope, "active"),
        ],
    )
    .await;
    // Two partners, the second with the first one's contact e-mail.
    put(
        stores,
        &tables.partners,
        vec![
            partner(id(), "ana@acme.example"),
            partner(id(), "ana@acme.example"),
        ],
    )
    .await;
    Fixture {
        root,
        moved,
        moved_child,
        new_parent: root2,
        dup_code: [dup1, dup2],
        orphan,
        stale_asset: a2,
        customers: 9,
    }
}

fn args(run_id: &str) -> BackfillArgs {
    BackfillArgs {
        tables: vec![],
        tenants: vec![],
        segments: 3,
        page_size: 2,
        read_ahead: 1,
        // Every page gathered from two Scan requests.
        scan_request: 1,
        rate: 0.0,
        run_id: run_id.into(),
        restart: false,
        progress: Some(ProgressStyle::None),
        progress_interval: 10.0,
    }
}

fn stores_of(s: &ModeServer) -> Stores {
    Stores {
        pg: s.pg.clone(),
        dynamo: s.dynamo.clone(),
    }
}

async fn db(stores: &Stores) -> gcdr_data::storage::postgres::Conn<'_> {
    stores.pg.conn().await.unwrap()
}

#[derive(diesel::QueryableByName, Debug)]
struct Pair {
    #[diesel(sql_type = Text)]
    a: String,
    #[diesel(sql_type = Text)]
    b: String,
}

async fn pairs(stores: &Stores, sql: &str) -> Vec<(String, String)> {
    let mut c = db(stores).await;
    let rows: Vec<Pair> = diesel::sql_query(sql).load(&mut *c).await.unwrap();
    rows.into_iter().map(|p| (p.a, p.b)).collect()
}

async fn count(stores: &Stores, sql: &str) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let mut c = db(stores).await;
    let r: N = diesel::sql_query(sql).get_result(&mut *c).await.unwrap();
    r.n
}

async fn assert_parity(stores: &Stores) {
    let scope = Scope::parse(&[], &[]).unwrap();
    let report = verify::verify(stores, &scope, None, 2).await.unwrap();
    assert!(
        report.parity,
        "verify is not clean: {}",
        serde_json::to_string_pretty(&report).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dirty_legacy_fixture_loads_with_repairs_and_quarantine_and_verifies_clean() {
    let server = ModeServer::start(StorageMode::DualDynamodbPrimary).await;
    let stores = stores_of(&server);
    let f = load_fixture(&stores).await;
    let summary = backfill::run(&stores, &args("fixture")).await.unwrap();
    let counts: HashMap<String, backfill::Counts> = summary.tables.iter().cloned().collect();
    let c = &counts["customers"];
    assert_eq!(c.scanned, f.customers as i64, "{c:?}");
    assert_eq!(
        c.loaded + c.unchanged + c.quarantined,
        f.customers as i64,
        "{c:?}"
    );
    assert_eq!(c.quarantined, 2, "orphan and undecodable: {c:?}");

    // Moved node: parent from the path; its child's path recomputed.
    let rows = pairs(
        &stores,
        &format!(
            "SELECT id::text AS a, coalesce(parent_customer_id::text, '') || ' ' || path || ' ' || depth AS b \
             FROM customers WHERE id IN ('{}', '{}')",
            f.moved, f.moved_child
        ),
    )
    .await;
    let by_id: HashMap<_, _> = rows.into_iter().collect();
    assert_eq!(
        by_id[&f.moved.to_string()],
        format!("{} /{T}/{}/{} 1", f.new_parent, f.new_parent, f.moved)
    );
    assert_eq!(
        by_id[&f.moved_child.to_string()],
        format!(
            "{} /{T}/{}/{}/{} 2",
            f.moved, f.new_parent, f.moved, f.moved_child
        )
    );
    // Colliding codes: one keeps SHOP, the other gets a suffix naming it.
    let codes = pairs(
        &stores,
        &format!(
            "SELECT id::text AS a, code::text AS b FROM customers WHERE id IN ('{}', '{}') ORDER BY code",
            f.dup_code[0], f.dup_code[1]
        ),
    )
    .await;
    assert_eq!(codes[0].1, "SHOP");
    let renamed = Uuid::parse_str(&codes[1].0).unwrap();
    assert_eq!(
        codes[1].1,
        format!("SHOP-{}", &renamed.simple().to_string()[..8])
    );
    // Stale customer ids follow the parent asset / the asset (of the two devices sharing
    // a serial number, whichever loaded first stays; both had a stale customer id).
    let owners = pairs(
        &stores,
        &format!(
            "SELECT 'asset' AS a, customer_id::text AS b FROM assets WHERE id = '{}' \
             UNION ALL SELECT 'device', customer_id::text FROM devices \
             UNION ALL SELECT 'root-asset', customer_id::text FROM assets WHERE depth = 0",
            f.stale_asset
        ),
    )
    .await;
    assert_eq!(owners.len(), 3, "{owners:?}");
    assert!(owners.iter().all(|(_, c)| *c == owners[2].1), "{owners:?}");
    assert_ne!(owners[0].1, f.root.to_string());
    // The ledger says what happened to every item that was not loaded as it was.
    let quarantined = pairs(
        &stores,
        "SELECT entity AS a, split_part(reason, ':', 1) AS b FROM migration_quarantine ORDER BY 1, 2",
    )
    .await;
    let q: Vec<(&str, &str)> = quarantined
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    assert_eq!(
        q,
        vec![
            ("asset", "orphan"),
            ("customer", "orphan"),
            ("customer", "undecodable"),
            ("device", "duplicate"),
            ("device", "orphan"),
            ("partner", "duplicate"),
            ("role", "reference"),
            ("role_assignment", "reference"),
        ],
        "{summary:?}"
    );
    assert_eq!(
        count(
            &stores,
            &format!(
                "SELECT count(*) AS n FROM migration_quarantine WHERE id = '{}'",
                f.orphan
            )
        )
        .await,
        1
    );
    let repaired = pairs(
        &stores,
        "SELECT entity AS a, array_to_string(fields, ',') AS b FROM migration_repairs ORDER BY 1, 2",
    )
    .await;
    assert!(
        repaired.contains(&("customer".into(), "parentCustomerId".into())),
        "{repaired:?}"
    );
    assert!(
        repaired.contains(&("customer".into(), "path".into())),
        "{repaired:?}"
    );
    assert!(
        repaired.contains(&("customer".into(), "code".into())),
        "{repaired:?}"
    );
    assert!(
        repaired.contains(&("asset".into(), "customerId".into())),
        "{repaired:?}"
    );
    // Both assignments, the inactive duplicate too, are loaded.
    assert_eq!(
        count(&stores, "SELECT count(*) AS n FROM role_assignments").await,
        2
    );
    assert_parity(&stores).await;

    // Running it again changes nothing and counts nothing twice.
    let again = backfill::run(&stores, &args("fixture")).await.unwrap();
    assert_eq!(again.tables, summary.tables);
    // From the start again, with no read-ahead at all (the segment waits for its
    // page's load before reading the next), then with more read-ahead than segments
    // and Scan requests larger than a page.
    for (segments, read_ahead, scan_request) in [(1, 0, 1), (2, 1000, 5)] {
        let fresh = backfill::run(
            &stores,
            &BackfillArgs {
                restart: true,
                segments,
                read_ahead,
                scan_request,
                ..args("fixture")
            },
        )
        .await
        .unwrap();
        let c2 = &fresh.tables[0].1;
        assert_eq!((c2.scanned, c2.quarantined), (c.scanned, c.quarantined));
        assert_parity(&stores).await;
    }
}

/// The real binary, killed with SIGKILL at several points, then run to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_any_point_resumes_without_loss_or_duplicates() {
    let server = ModeServer::start(StorageMode::DualDynamodbPrimary).await;
    let stores = stores_of(&server);
    let f = load_fixture(&stores).await;
    // More customers, so the kills land mid-table: 60 roots with a child each.
    let mut items = Vec::new();
    for k in 0..60 {
        let (r, c) = (Uuid::new_v4(), Uuid::new_v4());
        items.push(customer(
            r,
            None,
            &format!("/{T}/{r}"),
            0,
            &format!("BULK{k}"),
        ));
        items.push(customer(
            c,
            Some(r),
            &format!("/{T}/{r}/{c}"),
            1,
            &format!("BULK{k}C"),
        ));
    }
    put(&stores, &stores.dynamo.tables().customers.clone(), items).await;
    let total = f.customers as i64 + 120;

    let db_url = stores_db_url(&stores).await;
    let stage = stores
        .dynamo
        .tables()
        .customers
        .trim_start_matches("gcdr-customers-")
        .to_owned();
    let spawn = |rate: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_gcdr-data"))
            .args(["backfill", "run", "--run-id", "crash", "--segments", "3"])
            .args([
                "--page-size",
                "3",
                // A page from two Scan requests: some kills land between them.
                "--scan-request",
                "2",
                "--progress",
                "lines",
                "--progress-interval",
                "0.2",
            ])
            .args(["--rate", rate])
            .env("DATABASE_URL", &db_url)
            .env("DYNAMODB_ENDPOINT", dynamo_url())
            .env("GCDR_STAGE", &stage)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start gcdr-data")
    };
    const PROGRESS: &str = "SELECT coalesce(sum(scanned), 0)::bigint AS n FROM backfill_checkpoints WHERE run_id = 'crash'";
    // First a kill during start-up, before anything can have committed; then each
    // kill waits for the run to commit pages of its own (however slow the machine is
    // today) and lands a varying time after, between or inside page transactions.
    let mut child = spawn("40");
    tokio::time::sleep(Duration::from_millis(30)).await;
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    let mut progressed = count(&stores, PROGRESS).await;
    for after_ms in [0, 170, 420] {
        let mut child = spawn("40");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let now = count(&stores, PROGRESS).await;
            if now > progressed {
                progressed = now;
                break;
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "the backfill exited before it was killed"
            );
            assert!(
                std::time::Instant::now() < deadline,
                "the backfill committed nothing in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(after_ms)).await;
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
    }
    let progressed = count(&stores, PROGRESS).await;
    assert!(progressed < total, "the killed runs finished; kill earlier");
    let status = spawn("0").wait().unwrap();
    assert!(status.success(), "resumed run failed: {status}");

    // Every item counted exactly once, every loadable one loaded once.
    let scanned = count(
        &stores,
        "SELECT sum(scanned)::bigint AS n FROM backfill_checkpoints WHERE run_id = 'crash' AND entity = 'customer'",
    )
    .await;
    assert_eq!(scanned, total);
    assert_eq!(
        count(&stores, "SELECT count(*) AS n FROM customers").await,
        total - 2
    );
    assert_eq!(
        count(
            &stores,
            "SELECT count(*) AS n FROM migration_quarantine WHERE entity = 'customer'"
        )
        .await,
        2
    );
    assert_parity(&stores).await;
}

async fn stores_db_url(stores: &Stores) -> String {
    #[derive(diesel::QueryableByName)]
    struct D {
        #[diesel(sql_type = Text)]
        d: String,
    }
    let mut c = db(stores).await;
    let r: D = diesel::sql_query("SELECT current_database()::text AS d")
        .get_result(&mut *c)
        .await
        .unwrap();
    format!("{}/{}", crate::harness::pg_base(), r.d)
}

/// Dual write keeps going while the backfill runs; the result verifies clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_writes_during_the_backfill_end_in_parity() {
    let server = ModeServer::start(StorageMode::DualDynamodbPrimary).await;
    let stores = stores_of(&server);
    // Legacy data written before dual write started: only in DynamoDB.
    let mut items = Vec::new();
    let mut roots = Vec::new();
    for k in 0..40 {
        let (r, c) = (Uuid::new_v4(), Uuid::new_v4());
        roots.push(r);
        items.push(customer(
            r,
            None,
            &format!("/{T}/{r}"),
            0,
            &format!("OLD{k}"),
        ));
        items.push(customer(
            c,
            Some(r),
            &format!("/{T}/{r}/{c}"),
            1,
            &format!("OLD{k}C"),
        ));
    }
    put(&stores, &stores.dynamo.tables().customers.clone(), items).await;

    let run = {
        let stores = stores.clone();
        tokio::spawn(async move {
            // At 10 items/s the 80 items take about 8 s, longer than the writes
            // below even on a loaded machine.
            let a = BackfillArgs {
                rate: 10.0,
                ..args("live")
            };
            backfill::run(&stores, &a).await
        })
    };
    let mut customers = server.customers();
    let mut made = 0;
    for (k, r) in roots.iter().enumerate().take(20) {
        // Updates of legacy records, new children under them, new roots.
        let up = customers
            .update_customer(req(
                T,
                pb::UpdateCustomerRequest {
                    id: r.to_string(),
                    customer: Some(pb::Customer {
                        name: format!("Updated {k}"),
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["name".into()],
                    }),
                    expected_version: None,
                },
            ))
            .await
            .expect("update during backfill");
        assert_eq!(up.into_inner().version, 2);
        for parent in [Some(r.to_string()), None] {
            customers
                .create_customer(req(
                    T,
                    pb::CreateCustomerRequest {
                        customer: Some(pb::Customer {
                            name: format!("New {k} {}", parent.is_some()),
                            r#type: pb::CustomerType::Branch as i32,
                            parent_customer_id: parent,
                            ..Default::default()
                        }),
                    },
                ))
                .await
                .expect("create during backfill");
            made += 1;
        }
    }
    server.replicator.flush().await;
    let running = !run.is_finished();
    // Then let it finish at full speed (the throttle changes while it runs).
    backfill::set_rate(&stores, "live", 0.0).await.unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("backfill finishes")
        .unwrap()
        .unwrap();
    assert!(
        running,
        "the backfill finished before the writes; slow it down"
    );
    assert_eq!(summary.tables[0].1.quarantined, 0, "{summary:?}");
    assert_eq!(
        count(&stores, "SELECT count(*) AS n FROM customers").await,
        80 + made
    );
    let updated = count(
        &stores,
        "SELECT count(*) AS n FROM customers WHERE name LIKE 'Updated %' AND version = 2",
    )
    .await;
    assert_eq!(
        updated, 20,
        "a backfilled old version overwrote a newer dual write"
    );
    assert_parity(&stores).await;
}

/// An item deferred (its parent later in the scan) keeps the copy read by the scan,
/// so the deferred pass loads it without reading DynamoDB again. If dual write deletes
/// it meanwhile, that copy must not bring it back: the delete's tombstone wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_deleted_while_deferred_is_not_loaded_from_its_kept_copy() {
    let server = ModeServer::start(StorageMode::DualDynamodbPrimary).await;
    let stores = stores_of(&server);
    // The emulator scans one tenant in id order: the child first, its parent last,
    // a few roots between them.
    let (child, parent) = (Uuid::from_u128(1), Uuid::from_u128(u128::MAX - 1));
    let mut items = vec![
        customer(
            child,
            Some(parent),
            &format!("/{T}/{parent}/{child}"),
            1,
            "CHILD",
        ),
        customer(parent, None, &format!("/{T}/{parent}"), 0, "PARENT"),
    ];
    for k in 0..10 {
        let r = Uuid::new_v4();
        items.push(customer(r, None, &format!("/{T}/{r}"), 0, &format!("R{k}")));
    }
    put(&stores, &stores.dynamo.tables().customers.clone(), items).await;

    let run = {
        let stores = stores.clone();
        tokio::spawn(async move {
            let a = BackfillArgs {
                tables: vec!["customers".into()],
                segments: 1,
                page_size: 1,
                rate: 4.0,
                ..args("gone")
            };
            backfill::run(&stores, &a).await
        })
    };
    let deferred = format!(
        "SELECT count(*) AS n FROM backfill_deferred WHERE id = '{child}' AND item IS NOT NULL"
    );
    let started = std::time::Instant::now();
    while count(&stores, &deferred).await == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(20) && !run.is_finished(),
            "the child was never deferred with its item"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server
        .customers()
        .delete_customer(req(
            T,
            pb::DeleteCustomerRequest {
                id: child.to_string(),
                expected_version: None,
            },
        ))
        .await
        .expect("delete during backfill");
    server.replicator.flush().await;
    backfill::set_rate(&stores, "gone", 0.0).await.unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("backfill finishes")
        .unwrap()
        .unwrap();
    assert_eq!(summary.tables[0].1.quarantined, 0, "{summary:?}");
    let loaded = format!("SELECT count(*) AS n FROM customers WHERE id = '{child}'");
    assert_eq!(
        count(&stores, &loaded).await,
        0,
        "the deleted child came back"
    );
    let parent_loaded = format!("SELECT count(*) AS n FROM customers WHERE id = '{parent}'");
    assert_eq!(count(&stores, &parent_loaded).await, 1);
    assert_parity(&stores).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_and_resume_options_are_checked() {
    let server = ModeServer::start(StorageMode::DualDynamodbPrimary).await;
    let stores = stores_of(&server);
    load_fixture(&stores).await;
    let mut a = args("filtered");
    a.tables = vec!["customers".into()];
    a.tenants = vec!["someone-else".into()];
    let s = backfill::run(&stores, &a).await.unwrap();
    assert_eq!(s.tables.len(), 1);
    assert_eq!(s.tables[0].1.skipped, s.tables[0].1.scanned);
    assert_eq!(
        count(&stores, "SELECT count(*) AS n FROM customers").await,
        0
    );
    // Resuming with other filters is refused, not silently mixed.
    let mut other = args("filtered");
    other.tables = vec!["devices".into()];
    let e = backfill::run(&stores, &other).await.unwrap_err();
    assert!(e.to_string().contains("--restart"), "{e}");
    let zero_segments = BackfillArgs {
        segments: 0,
        ..args("x")
    };
    let zero_request = BackfillArgs {
        scan_request: 0,
        ..args("x")
    };
    for (bad, option) in [
        (zero_segments, "--segments"),
        (zero_request, "--scan-request"),
    ] {
        let e = backfill::run(&stores, &bad).await.unwrap_err();
        assert!(e.to_string().contains(option), "{e}");
    }
    // A missing legacy table is named at once (not retried as an outage).
    let devices = stores.dynamo.tables().devices.clone();
    (stores.dynamo.client().delete_table())
        .table_name(&devices)
        .send()
        .await
        .unwrap();
    let mut missing = args("missing-table");
    missing.tables = vec!["devices".into()];
    let e = backfill::run(&stores, &missing).await.unwrap_err();
    assert!(
        e.to_string().contains(&format!("{devices} does not exist")),
        "{e:#}"
    );
}

/// A page larger than one statement (250 items): its rows and its deferrals go to
/// PostgreSQL in several statements, all in the page's transaction, and none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_larger_than_a_statement_loads_and_defers_every_item() {
    let server = ModeServer::start(StorageMode::DualDynamodbPrimary).await;
    let stores = stores_of(&server);
    let mut items = Vec::new();
    for k in 0..300 {
        let root = Uuid::new_v4();
        items.push(customer(
            root,
            None,
            &format!("/{T}/{root}"),
            0,
            &format!("BIG{k}"),
        ));
        // An orphan: deferred by the scan, quarantined by the deferred pass.
        let (gone, orphan) = (Uuid::new_v4(), Uuid::new_v4());
        items.push(customer(
            orphan,
            Some(gone),
            &format!("/{T}/{gone}/{orphan}"),
            1,
            &format!("ORPHAN{k}"),
        ));
    }
    put(&stores, &stores.dynamo.tables().customers.clone(), items).await;
    let mut one_page = args("one-big-page");
    one_page.segments = 1;
    one_page.page_size = 1000;
    let summary = backfill::run(&stores, &one_page).await.unwrap();
    let counts: HashMap<String, backfill::Counts> = summary.tables.iter().cloned().collect();
    let c = &counts["customers"];
    assert_eq!(
        (c.scanned, c.loaded, c.deferred, c.quarantined),
        (600, 300, 300, 300),
        "{c:?}"
    );
    assert_eq!(
        count(&stores, "SELECT count(*) AS n FROM customers").await,
        300
    );
    assert_eq!(
        count(
            &stores,
            "SELECT count(*) AS n FROM migration_quarantine \
             WHERE entity = 'customer' AND reason LIKE 'orphan: parent customer %'"
        )
        .await,
        300
    );
    // The run ends with the table's full statistics (gathered in the background
    // while later tables load, and waited for): 101 histogram bounds over 300
    // distinct codes, where the quick ANALYZEs of the load sample keep 11.
    assert!(
        count(
            &stores,
            "SELECT coalesce((SELECT array_length(histogram_bounds, 1) FROM pg_stats \
             WHERE schemaname = 'public' AND tablename = 'customers' AND attname = 'code'), \
             0)::bigint AS n"
        )
        .await
            > 11,
        "the backfill ended without a full ANALYZE of customers"
    );
    assert_parity(&stores).await;
}
