//! `gcdr-data`: serve the gRPC API, or apply the schema migrations.

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gcdr_data::config::Config;
use gcdr_data::storage::Store;
use gcdr_data::storage::postgres::{self, PgStore};

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
    }
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
    let store = Store::postgres(PgStore::connect(&config.database_url, &config.pool).await?);
    let listener = tokio::net::TcpListener::bind(config.listen_addr)
        .await
        .with_context(|| format!("bind {}", config.listen_addr))?;
    tracing::info!(listen.addr = %listener.local_addr()?, "serving gRPC");
    gcdr_data::grpc::serve(listener, store, config.health_interval, shutdown_signal()).await
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
