//! `gcdr-load`: a load generator for gcdr-data.
//!
//! `gcdr-load seed` writes a benchmark tenant straight into PostgreSQL (a 1,000-node
//! and a 10,000-node subtree plus flat roots up to `--customers`); `gcdr-load run`
//! drives one RPC at a fixed concurrency over gRPC and prints throughput and latency
//! percentiles. `scripts/bench.sh` runs the whole comparison against pgbench.

/// jemalloc, as the server: decoding 1,000-customer responses allocates heavily.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod legacy;

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use gcdr_data::pb;
use gcdr_data::pb::authorization_service_client::AuthorizationServiceClient;
use gcdr_data::pb::customer_service_client::CustomerServiceClient;
use hdrhistogram::Histogram;
use rand::Rng;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(about = "Load generator for gcdr-data")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the benchmark tenant directly in PostgreSQL (replacing it if present).
    Seed {
        #[arg(
            long,
            env = "DATABASE_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/gcdr"
        )]
        database_url: String,
        #[arg(long, default_value = "bench")]
        tenant: String,
        /// Total customers in the tenant (at least 11,002).
        #[arg(long, default_value_t = 100_000)]
        customers: u32,
    },
    /// Create the authorization benchmark tenant: 10,001 customers (a root, 100
    /// children, 9,900 grandchildren), 3 policies, 3 roles, and a user `bench-user` with
    /// 5 assignments at different levels.
    SeedAuthz {
        #[arg(
            long,
            env = "DATABASE_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/gcdr"
        )]
        database_url: String,
        #[arg(long, default_value = "authz")]
        tenant: String,
    },
    /// Write legacy-shaped items (10% customers, 40% assets, 50% devices) straight into
    /// the DynamoDB tables of `--stage` (create them first), for the backfill benchmark.
    SeedLegacy {
        #[arg(long, env = "DYNAMODB_ENDPOINT")]
        endpoint: String,
        #[arg(long, env = "GCDR_STAGE")]
        stage: String,
        #[arg(long, default_value_t = 100_000)]
        items: u64,
        #[arg(long, default_value_t = 4)]
        tenants: u64,
    },
    /// Delete the legacy tables of `--stage` (benchmark clean-up: an in-memory emulator
    /// keeps every table it was given).
    DropLegacy {
        #[arg(long, env = "DYNAMODB_ENDPOINT")]
        endpoint: String,
        #[arg(long, env = "GCDR_STAGE")]
        stage: String,
    },
    /// Time a raw parallel Scan of every legacy table of `--stage`.
    ScanLegacy {
        #[arg(long, env = "DYNAMODB_ENDPOINT")]
        endpoint: String,
        #[arg(long, env = "GCDR_STAGE")]
        stage: String,
        #[arg(long, default_value_t = 4)]
        segments: i32,
        #[arg(long, default_value_t = 1000)]
        page_size: i32,
    },
    /// Time PostgreSQL's raw batch upsert: root customers, then the seeded mix of
    /// customers, assets and devices (a scratch tenant).
    PgUpsert {
        #[arg(
            long,
            env = "DATABASE_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/gcdr"
        )]
        database_url: String,
        #[arg(long, default_value_t = 100_000)]
        rows: u64,
        #[arg(long, default_value_t = 1000)]
        batch: u64,
    },
    /// Time the backfill's raw parts together: the legacy tables of `--stage` read
    /// with parallel Scan segments and upserted page by page into `--database-url`
    /// with nothing else (no rules, checks or checkpoints; foreign keys off, so a
    /// superuser and a scratch database).
    RawCopy {
        #[arg(long, env = "DYNAMODB_ENDPOINT")]
        endpoint: String,
        #[arg(long, env = "GCDR_STAGE")]
        stage: String,
        #[arg(long)]
        database_url: String,
        #[arg(long, default_value_t = 4)]
        segments: i32,
        #[arg(long, default_value_t = 1000)]
        page_size: i32,
    },
    /// Drive one RPC and report throughput and latency.
    Run {
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        addr: String,
        #[arg(long, default_value = "bench")]
        tenant: String,
        #[arg(long, value_enum)]
        op: Op,
        /// Calls in flight.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// HTTP/2 connections the calls are spread over.
        #[arg(long, default_value_t = 4)]
        connections: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        #[arg(long, default_value_t = 2.0)]
        warmup_seconds: f64,
        /// For `descendants` and `move`: the subtree root (see `seed` output).
        #[arg(long)]
        root: Option<String>,
        /// For `move`: the two parents the subtree alternates between.
        #[arg(long, num_args = 2)]
        parents: Vec<String>,
        /// Calls per second over all workers (0: as fast as they go). A paced run
        /// measures latency at a load the stores sustain, not queueing at saturation.
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Op {
    /// GetCustomer of a random customer of the tenant.
    Get,
    /// ListCustomers, first page of 50.
    List,
    /// ListCustomerDescendants of `--root`, every page of 1,000 (one op = whole subtree).
    Descendants,
    /// MoveCustomer of `--root`, alternating between the two `--parents`.
    Move,
    /// AuthorizationService.Check of `bench-user` on a random customer of the tenant.
    Check,
    /// CreateCustomer of a new root customer (a write in every storage mode).
    Create,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Seed {
            database_url,
            tenant,
            customers,
        } => seed(&database_url, &tenant, customers).await,
        Command::SeedAuthz {
            database_url,
            tenant,
        } => seed_authz(&database_url, &tenant).await,
        Command::SeedLegacy {
            endpoint,
            stage,
            items,
            tenants,
        } => legacy::seed(&legacy::store(&endpoint, &stage).await, items, tenants).await,
        Command::DropLegacy { endpoint, stage } => {
            let store = legacy::store(&endpoint, &stage).await;
            gcdr_data::storage::dynamodb::delete_tables(store.client(), store.tables()).await
        }
        Command::ScanLegacy {
            endpoint,
            stage,
            segments,
            page_size,
        } => legacy::scan(&legacy::store(&endpoint, &stage).await, segments, page_size).await,
        Command::PgUpsert {
            database_url,
            rows,
            batch,
        } => legacy::pg_upsert(&database_url, rows, batch).await,
        Command::RawCopy {
            endpoint,
            stage,
            database_url,
            segments,
            page_size,
        } => {
            let store = legacy::store(&endpoint, &stage).await;
            legacy::raw_copy(&store, &database_url, segments, page_size).await
        }
        Command::Run {
            addr,
            tenant,
            op,
            concurrency,
            connections,
            seconds,
            warmup_seconds,
            root,
            parents,
            rate,
        } => {
            let cfg = RunConfig {
                tenant,
                op,
                concurrency,
                seconds,
                warmup_seconds,
                root,
                parents,
                rate,
            };
            run(&addr, connections, cfg).await
        }
    }
}

fn req<T>(tenant: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("x-tenant-id", tenant.parse().expect("tenant is ASCII"));
    r
}

/// Seeds the tenant: root `r1k` with 10 x 99 grandchildren (1,000 descendants), root
/// `r10k` with 100 x 99 (10,000 descendants), and flat roots for the rest, whose ids
/// are `md5('<tenant>-flat-<n>')::uuid` so that pgbench can address them.
async fn seed(url: &str, tenant: &str, customers: u32) -> anyhow::Result<()> {
    anyhow::ensure!(customers >= 11_002, "--customers must be at least 11002");
    gcdr_data::storage::postgres::migrate(url).await?;
    let mut conn = AsyncPgConnection::establish(url).await.context("connect")?;
    let t = tenant.replace('\'', "''");
    let sql = format!(
        "BEGIN;
         DELETE FROM devices WHERE tenant_id = '{t}';
         DELETE FROM assets WHERE tenant_id = '{t}';
         DELETE FROM customers WHERE tenant_id = '{t}';
         SET CONSTRAINTS ALL DEFERRED;
         CREATE TEMP TABLE seed_roots (name text, id uuid, fanout int, per int) ON COMMIT DROP;
         INSERT INTO seed_roots VALUES ('r1k', gen_random_uuid(), 10, 99), ('r10k', gen_random_uuid(), 100, 99),
                                       ('spare', gen_random_uuid(), 0, 0);
         INSERT INTO customers (tenant_id, id, path, depth, name, display_name, code, type, created_at, updated_at, created_by)
           SELECT '{t}', id, '/{t}/' || id, 0, name, name, upper(name), 'HOLDING', now(), now(), 'seed' FROM seed_roots;
         CREATE TEMP TABLE seed_mid ON COMMIT DROP AS
           SELECT r.name || '-' || g AS name, gen_random_uuid() AS id, r.id AS parent, r.per
           FROM seed_roots r, generate_series(1, r.fanout) g;
         INSERT INTO customers (tenant_id, id, parent_customer_id, path, depth, name, display_name, code, type, created_at, updated_at, created_by)
           SELECT '{t}', m.id, m.parent, '/{t}/' || m.parent || '/' || m.id, 1, m.name, m.name, upper(m.name), 'COMPANY', now(), now(), 'seed'
           FROM seed_mid m;
         INSERT INTO customers (tenant_id, id, parent_customer_id, path, depth, name, display_name, code, type, created_at, updated_at, created_by)
           SELECT '{t}', x.id, m.id, '/{t}/' || m.parent || '/' || m.id || '/' || x.id, 2, m.name || '-' || g, m.name || '-' || g,
                  upper(m.name || '-' || g), 'BRANCH', now(), now(), 'seed'
           FROM seed_mid m, generate_series(1, m.per) g, LATERAL (SELECT gen_random_uuid() AS id, g AS gg) x;
         INSERT INTO customers (tenant_id, id, path, depth, name, display_name, code, type, created_at, updated_at, created_by)
           SELECT '{t}', x.id, '/{t}/' || x.id, 0, 'flat-' || g, 'flat-' || g, 'FLAT-' || g, 'COMPANY', now(), now(), 'seed'
           FROM generate_series(1, {customers} - (SELECT count(*) FROM customers WHERE tenant_id = '{t}')) g,
                LATERAL (SELECT md5('{t}-flat-' || g)::uuid AS id) x;
         COMMIT;
         ANALYZE customers;"
    );
    conn.batch_execute(&sql).await.context("seed")?;
    #[derive(diesel::QueryableByName)]
    struct Root {
        #[diesel(sql_type = diesel::sql_types::Text)]
        name: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        id: String,
    }
    let roots: Vec<Root> = diesel::sql_query(
        "SELECT name::text, id::text AS id FROM customers \
         WHERE tenant_id = $1 AND name IN ('r1k', 'r10k', 'spare') AND depth = 0 ORDER BY name",
    )
    .bind::<diesel::sql_types::Text, _>(tenant)
    .load(&mut conn)
    .await?;
    for r in roots {
        println!("{}={}", r.name, r.id);
    }
    Ok(())
}

/// Seeds the authorization benchmark tenant (see `SeedAuthz`).
async fn seed_authz(url: &str, tenant: &str) -> anyhow::Result<()> {
    seed(url, tenant, 11_002).await?;
    let mut conn = AsyncPgConnection::establish(url).await.context("connect")?;
    let t = tenant.replace('\'', "''");
    let sql = format!(
        "BEGIN;
         DELETE FROM role_assignments WHERE tenant_id = '{t}';
         DELETE FROM roles WHERE tenant_id = '{t}';
         DELETE FROM policies WHERE tenant_id = '{t}';
         INSERT INTO policies (tenant_id, id, key, display_name, allow, deny, created_at, updated_at, created_by) VALUES
           ('{t}', gen_random_uuid(), 'p_energy', 'Energy', '{{energy.*.*}}', '{{}}', now(), now(), 'seed'),
           ('{t}', gen_random_uuid(), 'p_viewer', 'Viewer', '{{*.*.read,*.*.list}}', '{{*.*.delete}}', now(), now(), 'seed'),
           ('{t}', gen_random_uuid(), 'p_tech', 'Tech', '{{devices.settings.read,alarms.rules.create}}', '{{identity.*}}', now(), now(), 'seed');
         INSERT INTO roles (tenant_id, id, key, display_name, created_at, updated_at, created_by) VALUES
           ('{t}', gen_random_uuid(), 'energy', 'Energy', now(), now(), 'seed'),
           ('{t}', gen_random_uuid(), 'viewer', 'Viewer', now(), now(), 'seed'),
           ('{t}', gen_random_uuid(), 'tech', 'Tech', now(), now(), 'seed');
         INSERT INTO role_policies (tenant_id, role_id, policy_id, position)
           SELECT '{t}', r.id, p.id, 0 FROM roles r JOIN policies p ON p.tenant_id = r.tenant_id
            AND p.key = 'p_' || r.key WHERE r.tenant_id = '{t}';
         INSERT INTO role_policies (tenant_id, role_id, policy_id, position)
           SELECT '{t}', r.id, p.id, 1 FROM roles r JOIN policies p ON p.tenant_id = r.tenant_id
            AND p.key = 'p_viewer' WHERE r.tenant_id = '{t}' AND r.key = 'energy';
         INSERT INTO role_assignments (tenant_id, id, user_id, role_id, scope, granted_by, granted_at, created_at, updated_at, created_by)
           SELECT '{t}', gen_random_uuid(), 'bench-user', r.id, s.scope, 'seed', now(), now(), now(), 'seed'
           FROM (VALUES
             ('energy', (SELECT 'customer:' || id FROM customers WHERE tenant_id = '{t}' AND name = 'r10k')),
             ('viewer', (SELECT 'customer:' || id FROM customers WHERE tenant_id = '{t}' AND name = 'r10k-1')),
             ('tech',   (SELECT 'customer:' || id FROM customers WHERE tenant_id = '{t}' AND name = 'r10k-2')),
             ('viewer', (SELECT 'customer:' || id FROM customers WHERE tenant_id = '{t}' AND name = 'r1k')),
             ('tech',   'site:elsewhere')
           ) AS s(role, scope) JOIN roles r ON r.tenant_id = '{t}' AND r.key = s.role;
         COMMIT;
         ANALYZE;"
    );
    conn.batch_execute(&sql).await.context("seed authz")?;
    Ok(())
}

struct RunConfig {
    tenant: String,
    op: Op,
    concurrency: usize,
    seconds: f64,
    warmup_seconds: f64,
    root: Option<String>,
    parents: Vec<String>,
    rate: f64,
}

async fn run(addr: &str, connections: usize, cfg: RunConfig) -> anyhow::Result<()> {
    let mut channels = Vec::new();
    for _ in 0..connections.max(1) {
        channels.push(
            Channel::from_shared(addr.to_owned())?
                .connect()
                .await
                .with_context(|| format!("connect {addr}"))?,
        );
    }
    let ids = match cfg.op {
        Op::Get | Op::Check => {
            all_ids(CustomerServiceClient::new(channels[0].clone()), &cfg.tenant).await?
        }
        _ => Vec::new(),
    };
    anyhow::ensure!(
        !matches!(cfg.op, Op::Get | Op::Check) || !ids.is_empty(),
        "tenant {} has no customers; seed it",
        cfg.tenant
    );
    let root = cfg.root.clone();
    anyhow::ensure!(
        !matches!(cfg.op, Op::Descendants | Op::Move) || root.is_some(),
        "--root is required for {:?}",
        cfg.op
    );
    anyhow::ensure!(
        !matches!(cfg.op, Op::Move) || cfg.parents.len() == 2,
        "--parents A B is required for move"
    );
    // Moves of one subtree serialize anyway (one tenant lock); run them one at a time.
    let concurrency = if matches!(cfg.op, Op::Move) {
        1
    } else {
        cfg.concurrency.max(1)
    };

    let start = Instant::now();
    let warmup_end = start + Duration::from_secs_f64(cfg.warmup_seconds);
    let end = warmup_end + Duration::from_secs_f64(cfg.seconds);
    let ids = std::sync::Arc::new(ids);
    // Paced runs: each worker starts one call every `interval`, staggered.
    let interval = (cfg.rate > 0.0).then(|| Duration::from_secs_f64(concurrency as f64 / cfg.rate));
    let run_tag = uuid::Uuid::new_v4().simple().to_string();
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let channel = channels[worker % channels.len()].clone();
        let mut client = CustomerServiceClient::new(channel.clone());
        let mut authz = AuthorizationServiceClient::new(channel);
        let (ids, tenant, root, parents, op) = (
            ids.clone(),
            cfg.tenant.clone(),
            root.clone(),
            cfg.parents.clone(),
            cfg.op,
        );
        let tag = format!("{run_tag}-{worker}");
        tasks.push(tokio::spawn(async move {
            let mut hist =
                Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid bounds");
            let (mut errors, mut rows, mut flip) = (0u64, 0u64, 0usize);
            let mut next = start
                + interval.map_or(Duration::ZERO, |i| {
                    i.mul_f64(worker as f64 / concurrency as f64)
                });
            while Instant::now() < end {
                if let Some(i) = interval {
                    tokio::time::sleep_until(next.into()).await;
                    next += i;
                }
                let t0 = Instant::now();
                let result: Result<u64, tonic::Status> = match op {
                    Op::Get => {
                        let id = ids[rand::rng().random_range(0..ids.len())].clone();
                        client
                            .get_customer(req(&tenant, pb::GetCustomerRequest { id }))
                            .await
                            .map(|_| 1)
                    }
                    Op::List => client
                        .list_customers(req(
                            &tenant,
                            pb::ListCustomersRequest {
                                page_size: 50,
                                ..Default::default()
                            },
                        ))
                        .await
                        .map(|r| r.into_inner().customers.len() as u64),
                    Op::Descendants => {
                        descendants(&mut client, &tenant, root.as_deref().unwrap_or_default()).await
                    }
                    Op::Check => {
                        let resource =
                            format!("customer:{}", ids[rand::rng().random_range(0..ids.len())]);
                        let check = pb::CheckRequest {
                            user_id: "bench-user".into(),
                            permission: "energy.settings.read".into(),
                            resource,
                        };
                        authz
                            .check(req(&tenant, check))
                            .await
                            .map(|r| u64::from(r.into_inner().allowed))
                    }
                    Op::Create => {
                        // A random head keeps generated codes (the name's first 20
                        // characters) apart, as real customer names are.
                        let head: u64 = rand::rng().random();
                        let customer = pb::Customer {
                            name: format!("{head:016x} load {tag}"),
                            r#type: pb::CustomerType::Company as i32,
                            ..Default::default()
                        };
                        client
                            .create_customer(req(
                                &tenant,
                                pb::CreateCustomerRequest {
                                    customer: Some(customer),
                                },
                            ))
                            .await
                            .map(|_| 1)
                    }
                    Op::Move => {
                        flip += 1;
                        let parent = parents[flip % 2].clone();
                        let destination = Some(
                            pb::move_customer_request::Destination::NewParentCustomerId(parent),
                        );
                        let id = root.clone().unwrap_or_default();
                        client
                            .move_customer(req(
                                &tenant,
                                pb::MoveCustomerRequest {
                                    id,
                                    destination,
                                    expected_version: None,
                                },
                            ))
                            .await
                            .map(|_| 1)
                    }
                };
                let micros = t0.elapsed().as_micros() as u64;
                if t0 >= warmup_end {
                    match result {
                        Ok(n) => {
                            hist.saturating_record(micros.max(1));
                            rows += n;
                        }
                        Err(e) => {
                            errors += 1;
                            if errors <= 3 {
                                eprintln!("call failed: {} {}", e.code(), e.message());
                            }
                        }
                    }
                }
            }
            (hist, errors, rows)
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let (mut errors, mut rows) = (0, 0);
    for t in tasks {
        let (h, e, r) = t.await?;
        hist.add(&h)?;
        errors += e;
        rows += r;
    }
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "op={:?} concurrency={concurrency} offered={} seconds={:.1} ok={} errors={errors} rate={:.1}/s rows_per_op={:.0} \
         p50={:.3}ms p99={:.3}ms max={:.3}ms",
        cfg.op,
        if cfg.rate > 0.0 {
            format!("{:.0}/s", cfg.rate)
        } else {
            "max".into()
        },
        cfg.seconds,
        hist.len(),
        hist.len() as f64 / cfg.seconds,
        rows as f64 / hist.len().max(1) as f64,
        ms(0.5),
        ms(0.99),
        hist.max() as f64 / 1000.0
    );
    anyhow::ensure!(errors == 0, "{errors} calls failed");
    Ok(())
}

/// Pages through the whole subtree with pages of 1,000; returns the rows read.
async fn descendants(
    client: &mut CustomerServiceClient<Channel>,
    tenant: &str,
    root: &str,
) -> Result<u64, tonic::Status> {
    let (mut rows, mut token) = (0, String::new());
    loop {
        let page = client
            .list_customer_descendants(req(
                tenant,
                pb::ListCustomerDescendantsRequest {
                    id: root.into(),
                    max_depth: None,
                    page_size: 1000,
                    page_token: token,
                },
            ))
            .await?
            .into_inner();
        rows += page.customers.len() as u64;
        if page.next_page_token.is_empty() {
            return Ok(rows);
        }
        token = page.next_page_token;
    }
}

/// Every customer id of the tenant, for random gets.
async fn all_ids(
    mut client: CustomerServiceClient<Channel>,
    tenant: &str,
) -> anyhow::Result<Vec<String>> {
    let (mut ids, mut token) = (Vec::new(), String::new());
    loop {
        let page = client
            .list_customers(req(
                tenant,
                pb::ListCustomersRequest {
                    page_size: 1000,
                    page_token: token,
                    ..Default::default()
                },
            ))
            .await?
            .into_inner();
        ids.extend(page.customers.into_iter().map(|c| c.id));
        if page.next_page_token.is_empty() {
            return Ok(ids);
        }
        token = page.next_page_token;
    }
}
