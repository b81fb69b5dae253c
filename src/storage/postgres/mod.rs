//! PostgreSQL backend: `PgStore` owns a bb8 pool of diesel-async connections and
//! implements every store trait, one file per entity.
//!
//! Every store method is one unit of work with at most one transaction, and runs
//! through [`PgStore::timed`], which times it and logs failures labelled by operation.

mod assets;
mod assignments;
mod batch;
mod customers;
mod devices;
mod hierarchy;
mod json;
mod modes;
mod partners;
mod policies;
mod replica;
mod roles;
pub mod schema;
mod tls;
mod tx;

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::bb8::{Pool, PooledConnection};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use super::{HealthProbe, StoreError, StoreResult};
use super::{bad_cursor, check_version, first_free_code};

pub use hierarchy::customer_descendants_sql;
pub use modes::GLOBAL;
pub use replica::{removal_lock, upsert_record, upsert_records};
pub use tls::{TlsSettings, establish};
pub use tx::with_intent;
use tx::{tx, tx_if_copied};

/// The schema migrations, embedded in the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Pool and connection settings.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// TLS to PostgreSQL; `None`: plain TCP or a unix socket.
    pub tls: Option<TlsSettings>,
    pub max_size: u32,
    pub min_idle: Option<u32>,
    /// How long a call waits for a free connection before failing UNAVAILABLE.
    pub acquire_timeout: Duration,
    /// Server-side `statement_timeout` for every connection.
    pub statement_timeout: Duration,
    /// Workers per table that answer concurrent gets by id in batches (see `batch`);
    /// 0: every get is its own query.
    pub point_read_workers: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            tls: None,
            max_size: 16,
            min_idle: Some(2),
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
            point_read_workers: 1,
        }
    }
}

/// The PostgreSQL store.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool<AsyncPgConnection>,
    /// A few connections with `synchronous_commit = off`, for the replication outbox
    /// only (see its `Outbox` implementation).
    outbox_pool: Pool<AsyncPgConnection>,
    /// Gets by id and grant reads, coalesced across concurrent calls (see `batch`).
    reads: batch::Reads,
}

pub type Conn<'a> = PooledConnection<'a, AsyncPgConnection>;

/// A pool of `max_size` connections, each set up with the configured statement
/// timeout and then `setup` (when not empty).
fn build_pool(
    url: &str,
    cfg: &PoolConfig,
    max_size: u32,
    min_idle: Option<u32>,
    setup: &'static str,
) -> Pool<AsyncPgConnection> {
    let timeout_ms = cfg.statement_timeout.as_millis();
    let tls = cfg.tls.clone();
    let mut manager_cfg = diesel_async::pooled_connection::ManagerConfig::default();
    manager_cfg.custom_setup = Box::new(move |url| {
        let tls = tls.clone();
        Box::pin(async move {
            let mut conn = establish(url, tls.as_ref()).await?;
            let mut sql = format!("SET statement_timeout = {timeout_ms}");
            if !setup.is_empty() {
                sql = format!("{sql}; {setup}");
            }
            diesel_async::SimpleAsyncConnection::batch_execute(&mut conn, &sql)
                .await
                .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
            Ok(conn)
        })
    });
    let manager =
        AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, manager_cfg);
    Pool::builder()
        .max_size(max_size)
        .min_idle(min_idle)
        .connection_timeout(cfg.acquire_timeout)
        .retry_connection(false)
        // The connection returned last is handed out first: a few warm connections do
        // the work (their prepared statements cached, their buffers already grown to
        // the largest message they carried) and the rest idle. Handed out in turn, every
        // pooled connection would end up holding buffers the size of a backfill statement.
        .queue_strategy(bb8::QueueStrategy::Lifo)
        // A broken connection surfaces as an error on use (mapped to UNAVAILABLE);
        // a ping before every checkout would double the round trips.
        .test_on_check_out(false)
        .build_unchecked(manager)
}

async fn checkout(pool: &Pool<AsyncPgConnection>) -> StoreResult<Conn<'_>> {
    pool.get().await.map_err(|e| match e {
        bb8::RunError::TimedOut => {
            StoreError::Unavailable("timed out waiting for a database connection".into())
        }
        bb8::RunError::User(e) => {
            StoreError::Unavailable(format!("cannot connect to the database: {e}"))
        }
    })
}

impl PgStore {
    /// Builds the pool. Connections are opened lazily, so this succeeds while the
    /// database is down (health then reports NOT_SERVING until it comes back).
    pub async fn connect(url: &str, cfg: &PoolConfig) -> anyhow::Result<Self> {
        let pool = build_pool(url, cfg, cfg.max_size, cfg.min_idle, "");
        let outbox_size = (cfg.max_size / 2).clamp(2, 8);
        let outbox_pool = build_pool(
            url,
            cfg,
            outbox_size,
            Some(0),
            "SET synchronous_commit = off",
        );
        let workers = cfg.point_read_workers.min(cfg.max_size as usize);
        let reads = batch::Reads::spawn(&pool, workers);
        Ok(Self {
            pool,
            outbox_pool,
            reads,
        })
    }

    /// Checks a connection out of the outbox pool.
    pub(crate) async fn outbox_conn(&self) -> StoreResult<Conn<'_>> {
        checkout(&self.outbox_pool).await
    }

    /// Checks a connection out of the pool.
    pub async fn conn(&self) -> StoreResult<Conn<'_>> {
        checkout(&self.pool).await
    }

    /// Runs one store operation through [`crate::storage::timed`].
    async fn timed<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        crate::storage::timed("postgresql", op, fut).await
    }
}

#[async_trait]
impl HealthProbe for PgStore {
    async fn ping(&self) -> StoreResult<()> {
        let mut conn = self.conn().await?;
        diesel::sql_query("SELECT 1").execute(&mut conn).await?;
        Ok(())
    }
}

impl From<DieselError> for StoreError {
    /// The one mapping from Diesel errors: constraints by name, connection trouble as
    /// `Unavailable`, everything else `Internal`.
    fn from(e: DieselError) -> Self {
        match e {
            DieselError::NotFound => StoreError::NotFound { entity: "row" },
            DieselError::DatabaseError(kind, info) => {
                let constraint = info.constraint_name().unwrap_or_default().to_owned();
                match (kind, constraint.as_str()) {
                    (DatabaseErrorKind::UniqueViolation, c) => {
                        unique_violation(c).unwrap_or_else(|| {
                            StoreError::Internal(format!("unique violation on {c}").into())
                        })
                    }
                    (DatabaseErrorKind::ForeignKeyViolation, c) => StoreError::FailedPrecondition {
                        reason: "CONCURRENT_HIERARCHY_CHANGE",
                        message: format!("a related entity changed concurrently ({c}); retry"),
                    },
                    (DatabaseErrorKind::SerializationFailure, _) => {
                        StoreError::Unavailable("serialization failure; retry".into())
                    }
                    // No SQLSTATE: the connection itself failed (closed, reset).
                    (
                        DatabaseErrorKind::ClosedConnection
                        | DatabaseErrorKind::UnableToSendCommand,
                        _,
                    ) => StoreError::Unavailable(format!(
                        "database connection lost: {}",
                        info.message()
                    )),
                    // Deadlock and lock timeout (no kind of their own in diesel): the
                    // transaction can simply be run again.
                    (_, _)
                        if info.message().contains("deadlock detected")
                            || info.message().contains("lock timeout") =>
                    {
                        StoreError::Unavailable(format!("{}; retry", info.message()))
                    }
                    (_, _) => StoreError::Internal(info.message().to_owned().into()),
                }
            }
            DieselError::BrokenTransactionManager => {
                StoreError::Unavailable("database connection lost".into())
            }
            other => StoreError::Internal(Box::new(other)),
        }
    }
}

/// Unique constraints that a caller can hit, by name.
fn unique_violation(constraint: &str) -> Option<StoreError> {
    let (reason, field) = match constraint {
        "customers_tenant_code_key" => ("CUSTOMER_CODE_EXISTS", "customer.code"),
        "customers_pkey" => ("CUSTOMER_EXISTS", "customer.id"),
        "assets_tenant_customer_code_key" => ("ASSET_CODE_EXISTS", "asset.code"),
        "assets_pkey" => ("ASSET_EXISTS", "asset.id"),
        "devices_tenant_serial_key" => ("DEVICE_SERIAL_EXISTS", "device.serial_number"),
        "devices_pkey" => ("DEVICE_EXISTS", "device.id"),
        "policies_tenant_key_key" => ("POLICY_KEY_EXISTS", "policy.key"),
        "roles_tenant_key_key" => ("ROLE_KEY_EXISTS", "role.key"),
        "role_assignments_one_active" => ("ASSIGNMENT_EXISTS", "role_assignment"),
        "partners_tenant_email_key" => ("PARTNER_EMAIL_EXISTS", "partner.contact_email"),
        _ => return None,
    };
    Some(StoreError::AlreadyExists { reason, field })
}

/// Applies the embedded migrations, creating the database first when it is missing.
pub async fn migrate(url: &str) -> anyhow::Result<Vec<String>> {
    migrate_with(url, None).await
}

/// `migrate`, over TLS when `tls` is set.
pub async fn migrate_with(url: &str, tls: Option<&TlsSettings>) -> anyhow::Result<Vec<String>> {
    create_database_if_missing(url, tls).await?;
    let conn = establish(url, tls).await?;
    tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<String>> {
        type Wrapper =
            diesel_async::async_connection_wrapper::AsyncConnectionWrapper<AsyncPgConnection>;
        let mut conn = Wrapper::from(conn);
        let applied = conn
            .run_pending_migrations(MIGRATIONS)
            .map_err(|e| anyhow::anyhow!("migration failed: {e}"))?;
        Ok(applied.iter().map(|v| v.to_string()).collect())
    })
    .await?
}

/// Creates the database named in `url` when it does not exist (connecting to the
/// `postgres` maintenance database of the same server).
pub async fn create_database_if_missing(
    url: &str,
    tls: Option<&TlsSettings>,
) -> anyhow::Result<()> {
    if establish(url, tls).await.is_ok() {
        return Ok(());
    }
    let (admin_url, db) = split_database(url)?;
    let mut conn = establish(&admin_url, tls).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot connect to PostgreSQL at {}: {e}",
            redact(&admin_url)
        )
    })?;
    let quoted = format!("\"{}\"", db.replace('"', "\"\""));
    match diesel::sql_query(format!("CREATE DATABASE {quoted}"))
        .execute(&mut conn)
        .await
    {
        Ok(_) => tracing::info!(db.name = %db, "created database"),
        // Created concurrently by another process: fine.
        Err(DieselError::DatabaseError(_, info)) if info.message().contains("already exists") => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// Splits `postgres://.../db?params` into the URL of the `postgres` database and `db`.
fn split_database(url: &str) -> anyhow::Result<(String, String)> {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let slash = base
        .rfind('/')
        .filter(|&i| i > base.find("//").map_or(0, |j| j + 1));
    let Some(slash) = slash else {
        anyhow::bail!("database URL names no database")
    };
    let db = base[slash + 1..].to_owned();
    anyhow::ensure!(!db.is_empty(), "database URL names no database");
    let mut admin = format!("{}/postgres", &base[..slash]);
    if let Some(q) = query {
        admin.push('?');
        admin.push_str(q);
    }
    Ok((admin, db))
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::{redact, split_database};

    #[test]
    fn the_admin_url_keeps_host_and_parameters() {
        let (admin, db) = split_database("postgres://u:p@h:5/gcdr?sslmode=require").unwrap();
        assert_eq!(admin, "postgres://u:p@h:5/postgres?sslmode=require");
        assert_eq!(db, "gcdr");
        assert!(split_database("postgres://h:5").is_err());
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}
