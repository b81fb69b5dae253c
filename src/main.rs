//! `gcdr-data`: serve the gRPC API, or apply the schema migrations.

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gcdr_data::config::Config;
use gcdr_data::migration::Stores;
use gcdr_data::storage::postgres::{self, PgStore};

/// jemalloc: a list response of 1,000 customers makes ~20,000 small allocations and a
/// few large ones, where glibc's malloc spends a fifth of the server's CPU (fast-bin
/// consolidation on every large request); measured in the README's benchmark.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The GCDR data-access service.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the gRPC API (applies pending migrations first unless
    /// GCDR_MIGRATE_ON_START=false).
    Serve,
    /// Create the database if missing and apply pending migrations, then exit.
    Migrate,
    /// The legacy DynamoDB tables (development and tests).
    Dynamodb {
        #[command(subcommand)]
        command: DynamodbCommand,
    },
    /// Copy the legacy DynamoDB tables into PostgreSQL (RFC-0004 phase 2); resumable.
    Backfill {
        #[command(subcommand)]
        command: BackfillCommand,
    },
    /// Compare DynamoDB and PostgreSQL: counts, checksums and every field. Exit status
    /// 0 only at parity.
    Verify(gcdr_data::migration::verify::VerifyArgs),
    /// Make the secondary store match the authoritative one for the keys a verify
    /// report or the dual-write divergence logs name. Idempotent.
    Reconcile(gcdr_data::migration::reconcile::ReconcileArgs),
    /// Read or switch the storage mode of a running server (StorageAdminService;
    /// needs GCDR_ADMIN_TOKEN).
    Mode {
        /// The server.
        #[arg(long, env = "GCDR_ADDR", default_value = "http://127.0.0.1:50051")]
        addr: String,
        #[command(subcommand)]
        command: ModeCommand,
    },
}

#[derive(Subcommand)]
enum DynamodbCommand {
    /// Create the missing legacy tables with their indexes (DYNAMODB_ENDPOINT,
    /// AWS_REGION, GCDR_STAGE and the per-table overrides name them).
    CreateTables,
}

#[derive(Subcommand)]
enum BackfillCommand {
    /// Run (or resume) a backfill.
    Run(gcdr_data::migration::backfill::BackfillArgs),
    /// Change the throttle of a running backfill (items/s; 0 = unthrottled).
    Rate {
        rate: f64,
        #[arg(long, default_value = "backfill")]
        run_id: String,
    },
    /// Counts of a run so far, per table, and quarantined items by reason.
    Status {
        #[arg(long, default_value = "backfill")]
        run_id: String,
    },
}

#[derive(Subcommand)]
enum ModeCommand {
    /// Print the global mode and every tenant override.
    Get {
        /// Also print the mode in effect for this tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Set the global mode, or one tenant's.
    Set {
        /// dynamodb | dual_dynamodb_primary | dual_postgres_primary | postgres
        mode: Option<String>,
        /// Only this tenant (an override).
        #[arg(long)]
        tenant: Option<String>,
        /// Remove the tenant's override instead.
        #[arg(long)]
        clear: bool,
        /// Allow skipping a phase.
        #[arg(long)]
        force: bool,
        /// A note kept with the change.
        #[arg(long, default_value = "")]
        reason: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::from_env()?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = config.worker_threads {
        runtime.worker_threads(n);
    }
    runtime.enable_all().build()?.block_on(run(cli, config))
}

async fn run(cli: Cli, config: Config) -> anyhow::Result<()> {
    let _telemetry =
        gcdr_data::telemetry::init(config.log_format, config.otlp_endpoint.as_deref())?;
    match cli.command {
        Command::Migrate => {
            let applied = postgres::migrate_with(&config.database_url, config.pool.tls.as_ref())
                .await
                .context("migrate")?;
            tracing::info!(migrations.applied = applied.len(), "database is up to date");
            Ok(())
        }
        Command::Serve => serve(config).await,
        Command::Dynamodb {
            command: DynamodbCommand::CreateTables,
        } => {
            let cfg = config.storage.dynamodb.clone().context(
                "DynamoDB is not configured: set DYNAMODB_ENDPOINT (or GCDR_DYNAMODB=true for AWS)",
            )?;
            let store = gcdr_data::storage::dynamodb::DynamoStore::connect(&cfg).await;
            let created =
                gcdr_data::storage::dynamodb::create_tables(store.client(), &cfg.tables).await?;
            for t in cfg.tables.all() {
                let state = if created.iter().any(|c| c == t) {
                    "created"
                } else {
                    "exists"
                };
                println!("{t}\t{state}");
            }
            Ok(())
        }
        Command::Mode { addr, command } => mode_command(&addr, command, &config).await,
        Command::Backfill { command } => {
            use gcdr_data::migration::backfill;
            let stores = Stores::connect(&config).await?;
            match command {
                BackfillCommand::Run(args) => {
                    let summary = backfill::run(&stores, &args).await?;
                    backfill::print_summary(&summary);
                }
                BackfillCommand::Rate { rate, run_id } => {
                    backfill::set_rate(&stores, &run_id, rate).await?;
                    println!("run {run_id}: throttle set to {rate} items/s");
                }
                BackfillCommand::Status { run_id } => backfill::status(&stores, &run_id).await?,
            }
            Ok(())
        }
        Command::Verify(args) => {
            let stores = Stores::connect(&config).await?;
            if !gcdr_data::migration::verify::main(&stores, args).await? {
                // Not at parity: the report says why; the exit status says so to scripts.
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Reconcile(args) => {
            let stores = Stores::connect(&config).await?;
            gcdr_data::migration::reconcile::main(&stores, args).await
        }
    }
}

/// `gcdr-data mode get|set` through StorageAdminService.
async fn mode_command(addr: &str, command: ModeCommand, config: &Config) -> anyhow::Result<()> {
    use gcdr_data::pb;
    use gcdr_data::pb::storage_admin_service_client::StorageAdminServiceClient;
    let token = config
        .storage
        .admin_token
        .clone()
        .context("set GCDR_ADMIN_TOKEN to the server's admin token")?;
    let channel = tonic::transport::Channel::from_shared(addr.to_owned())?
        .connect()
        .await
        .with_context(|| format!("cannot reach {addr}"))?;
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse()?;
    let mut client =
        StorageAdminServiceClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", bearer.clone());
            Ok(r)
        });
    let name = |m: i32| {
        pb::StorageMode::try_from(m)
            .map(|m| {
                m.as_str_name()
                    .trim_start_matches("STORAGE_MODE_")
                    .to_lowercase()
            })
            .unwrap_or_else(|_| format!("unknown({m})"))
    };
    let failed = |s: tonic::Status| anyhow::anyhow!("{:?}: {}", s.code(), s.message());
    match command {
        ModeCommand::Get { tenant } => {
            let r = client
                .get_storage_mode(pb::GetStorageModeRequest {
                    tenant_id: tenant.clone().unwrap_or_default(),
                })
                .await
                .map_err(failed)?
                .into_inner();
            println!("global\t{}", name(r.global_mode));
            for o in &r.tenant_overrides {
                println!("tenant {}\t{}", o.tenant_id, name(o.mode));
            }
            if let Some(t) = tenant {
                println!("effective for {t}\t{}", name(r.effective_mode));
            }
        }
        ModeCommand::Set {
            mode,
            tenant,
            clear,
            force,
            reason,
        } => {
            let mode = match (&mode, clear) {
                (_, true) => 0,
                (Some(m), false) => {
                    let wanted = format!("STORAGE_MODE_{}", m.to_uppercase());
                    pb::StorageMode::from_str_name(&wanted)
                        .filter(|m| *m != pb::StorageMode::Unspecified)
                        .with_context(|| format!("unknown mode {m:?}"))? as i32
                }
                (None, false) => anyhow::bail!("name a mode, or --clear with --tenant"),
            };
            let r = client
                .set_storage_mode(pb::SetStorageModeRequest {
                    mode,
                    tenant_id: tenant.unwrap_or_default(),
                    clear_override: clear,
                    force,
                    reason,
                })
                .await
                .map_err(failed)?
                .into_inner();
            println!("{} -> {}", name(r.previous_mode), name(r.mode));
        }
    }
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    tracing::info!(db.url = %postgres::redact(&config.database_url), "starting");
    if config.migrate_on_start {
        // Retry while PostgreSQL is still starting (containers, CI).
        let mut attempt = 0;
        loop {
            match postgres::migrate_with(&config.database_url, config.pool.tls.as_ref()).await {
                Ok(applied) => {
                    tracing::info!(migrations.applied = applied.len(), "database is up to date");
                    break;
                }
                Err(e) if attempt < 30 => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "migration failed; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e.context("migrate on start")),
            }
        }
    }
    let pg = PgStore::connect(&config.database_url, &config.pool).await?;
    let storage = gcdr_data::app::build_storage(pg, &config.storage).await?;
    tracing::info!(
        mode = %config.storage.default_mode,
        dynamodb = config.storage.dynamodb.is_some(),
        admin_api = config.storage.admin_token.is_some(),
        "storage configured"
    );
    let listener = tokio::net::TcpListener::bind(config.listen_addr)
        .await
        .with_context(|| format!("bind {}", config.listen_addr))?;
    tracing::info!(listen.addr = %listener.local_addr()?, "serving gRPC");
    let served = gcdr_data::grpc::serve(
        listener,
        storage.store,
        Some(storage.admin),
        config.health_interval,
        shutdown_signal(),
    )
    .await;
    // Finish the secondary copies still queued before exiting.
    storage.replicator.flush().await;
    served
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler cannot fail on unix");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
