//! Configuration from the environment.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `GCDR_LISTEN_ADDR` | `0.0.0.0:50051` | gRPC listen address |
//! | `DATABASE_URL` | — | PostgreSQL URL; when set, the `PG*` variables are ignored |
//! | `PGHOST` | `127.0.0.1` | PostgreSQL host (RFC-0004) |
//! | `PGPORT` | `5432` | PostgreSQL port |
//! | `PGDATABASE` | `gcdr` | database (created at start-up when missing) |
//! | `PGUSER` | `postgres` | user |
//! | `PGPASSWORD` | — | password |
//! | `PGSSL` | `false` | `true`: TLS to PostgreSQL, verifying the server's certificate and name |
//! | `PGSSLROOTCERT` | Mozilla roots | PEM bundle of the CAs to trust (e.g. the RDS bundle) |
//! | `GCDR_DB_POOL_SIZE` | `16` | most pooled connections |
//! | `GCDR_DB_POOL_MIN_IDLE` | `2` | idle connections kept open |
//! | `GCDR_DB_ACQUIRE_TIMEOUT_MS` | `5000` | wait for a pooled connection before UNAVAILABLE |
//! | `GCDR_DB_STATEMENT_TIMEOUT_MS` | `30000` | server-side statement timeout |
//! | `GCDR_DB_POINT_READ_WORKERS` | `1` | workers per table answering concurrent gets by id in batches; `0`: one query per get |
//! | `GCDR_MIGRATE_ON_START` | `true` | apply pending migrations when `serve` starts |
//! | `GCDR_HEALTH_INTERVAL_MS` | `1000` | how often health probes the database |
//! | `GCDR_WORKER_THREADS` | number of cores | tokio worker threads |
//! | `GCDR_LOG_FORMAT` | `text` | `json` for one JSON object per line |
//! | `RUST_LOG` | `info` | log filter |
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | — | when set, traces are exported over OTLP/gRPC |
//! | `GCDR_STORAGE_MODE` | `postgres` | global storage mode until one is persisted (`dynamodb`, `dual_dynamodb_primary`, `dual_postgres_primary`, `postgres`) |
//! | `DYNAMODB_ENDPOINT` | — | DynamoDB endpoint (an emulator); setting it enables DynamoDB |
//! | `GCDR_DYNAMODB` | `false` | `true`: enable DynamoDB at AWS's own endpoint |
//! | `AWS_REGION` | `sa-east-1` | DynamoDB region (legacy default) |
//! | `GCDR_STAGE` | `dev` | legacy table stage: `gcdr-<entity>-<stage>` |
//! | `GCDR_DYNAMODB_INDEX_SETTLE_MS` | `1000` | how long a GSI may lag its table: a delete whose parent just gained a dependent waits this out before checking the index |
//! | `CUSTOMERS_TABLE` ... `ROLE_ASSIGNMENTS_TABLE` | — | legacy per-table name overrides |
//! | `GCDR_ADMIN_TOKEN` | — | bearer token of StorageAdminService; unset: the admin API is off |
//! | `GCDR_SHADOW_READ_RATE` | `0` | fraction (0..1) of get reads also read from the other store and compared |
//! | `GCDR_MODE_POLL_MS` | `1000` | how often each replica re-reads the persisted mode |
//! | `GCDR_SECONDARY_TIMEOUT_MS` | `2000` | budget of one secondary copy before it counts as failed |
//! | `GCDR_OUTBOX_REPLAY_MS` | `10000` | how often each replica looks for unfinished copies (a dead process's) to replay |
//! | `GCDR_OUTBOX_GRACE_MS` | `60000` | age of an unfinished copy's intent before it is replayed |

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::app::StorageSettings;
use crate::storage::dynamodb::{DynamoConfig, TableNames};
use crate::storage::mode::StorageMode;
use crate::storage::postgres::{PoolConfig, TlsSettings};

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The whole process configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen_addr: SocketAddr,
    pub database_url: String,
    pub pool: PoolConfig,
    pub migrate_on_start: bool,
    pub health_interval: Duration,
    pub log_format: LogFormat,
    pub otlp_endpoint: Option<String>,
    /// Tokio worker threads; `None`: one per core.
    pub worker_threads: Option<usize>,
    /// The storage switch.
    pub storage: StorageSettings,
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    /// Reads the configuration through `get` (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let num = |key: &str, default: u64| -> anyhow::Result<u64> {
            get(key).map_or(Ok(default), |v| {
                v.parse()
                    .with_context(|| format!("{key}={v:?} is not a whole number"))
            })
        };
        let flag = |key: &str, default: bool| -> anyhow::Result<bool> {
            match get(key).as_deref().map(str::to_ascii_lowercase).as_deref() {
                None => Ok(default),
                Some("1" | "true" | "yes" | "on") => Ok(true),
                Some("0" | "false" | "no" | "off") => Ok(false),
                Some(other) => bail!("{key}={other:?} is not a boolean"),
            }
        };
        let listen_addr = get("GCDR_LISTEN_ADDR").unwrap_or_else(|| "0.0.0.0:50051".into());
        let listen_addr = listen_addr
            .parse()
            .with_context(|| format!("GCDR_LISTEN_ADDR={listen_addr:?} is not host:port"))?;
        let tls = if flag("PGSSL", false)? {
            let root = get("PGSSLROOTCERT").map(std::path::PathBuf::from);
            Some(TlsSettings::new(root.as_deref())?)
        } else {
            None
        };
        let database_url = match get("DATABASE_URL") {
            Some(url) => url,
            None => {
                let host = get("PGHOST").unwrap_or_else(|| "127.0.0.1".into());
                let port = num("PGPORT", 5432)?;
                let db = get("PGDATABASE").unwrap_or_else(|| "gcdr".into());
                let user = get("PGUSER").unwrap_or_else(|| "postgres".into());
                let auth = match get("PGPASSWORD") {
                    Some(p) => format!("{}:{}", encode(&user), encode(&p)),
                    None => encode(&user),
                };
                if host.starts_with('/') {
                    format!(
                        "postgres://{auth}@localhost:{port}/{}?host={}",
                        encode(&db),
                        encode(&host)
                    )
                } else {
                    format!("postgres://{auth}@{host}:{port}/{}", encode(&db))
                }
            }
        };
        let log_format = match get("GCDR_LOG_FORMAT").as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => bail!("GCDR_LOG_FORMAT={other:?}: expected text or json"),
        };
        let pool = PoolConfig {
            tls,
            max_size: u32::try_from(num("GCDR_DB_POOL_SIZE", 16)?.max(1)).unwrap_or(u32::MAX),
            min_idle: Some(u32::try_from(num("GCDR_DB_POOL_MIN_IDLE", 2)?).unwrap_or(u32::MAX)),
            acquire_timeout: Duration::from_millis(num("GCDR_DB_ACQUIRE_TIMEOUT_MS", 5000)?.max(1)),
            statement_timeout: Duration::from_millis(num("GCDR_DB_STATEMENT_TIMEOUT_MS", 30_000)?),
            point_read_workers: usize::try_from(num("GCDR_DB_POINT_READ_WORKERS", 1)?)
                .unwrap_or(usize::MAX),
        };
        let default_mode = match get("GCDR_STORAGE_MODE") {
            None => StorageMode::Postgres,
            Some(m) => StorageMode::parse(&m).with_context(|| {
                format!(
                    "GCDR_STORAGE_MODE={m:?}: expected dynamodb, dual_dynamodb_primary, \
                     dual_postgres_primary or postgres"
                )
            })?,
        };
        let index_settle = match get("GCDR_DYNAMODB_INDEX_SETTLE_MS") {
            None => crate::storage::dynamodb::INDEX_SETTLE,
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|ms| *ms <= 60_000)
                .map(Duration::from_millis)
                .with_context(|| {
                    format!("GCDR_DYNAMODB_INDEX_SETTLE_MS={v:?}: expected milliseconds, 0..60000")
                })?,
        };
        let endpoint = get("DYNAMODB_ENDPOINT");
        let dynamodb =
            (endpoint.is_some() || flag("GCDR_DYNAMODB", false)?).then(|| DynamoConfig {
                endpoint,
                region: get("AWS_REGION").unwrap_or_else(|| "sa-east-1".into()),
                tables: TableNames::from_lookup(
                    &get("GCDR_STAGE").unwrap_or_else(|| "dev".into()),
                    &get,
                ),
                index_settle,
            });
        let shadow_rate = match get("GCDR_SHADOW_READ_RATE") {
            None => 0.0,
            Some(v) => v
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .with_context(|| format!("GCDR_SHADOW_READ_RATE={v:?}: expected 0..1"))?,
        };
        let storage = StorageSettings {
            default_mode,
            dynamodb,
            admin_token: get("GCDR_ADMIN_TOKEN"),
            shadow_rate,
            mode_poll: Duration::from_millis(num("GCDR_MODE_POLL_MS", 1000)?.max(10)),
            secondary_timeout: Duration::from_millis(
                num("GCDR_SECONDARY_TIMEOUT_MS", 2000)?.max(1),
            ),
            outbox_replay: Duration::from_millis(num("GCDR_OUTBOX_REPLAY_MS", 10_000)?.max(10)),
            outbox_grace: Duration::from_millis(num("GCDR_OUTBOX_GRACE_MS", 60_000)?),
            ..StorageSettings::default()
        };
        Ok(Self {
            storage,
            listen_addr,
            database_url,
            pool,
            migrate_on_start: flag("GCDR_MIGRATE_ON_START", true)?,
            health_interval: Duration::from_millis(num("GCDR_HEALTH_INTERVAL_MS", 1000)?.max(50)),
            log_format,
            otlp_endpoint: get("OTEL_EXPORTER_OTLP_ENDPOINT"),
            worker_threads: match get("GCDR_WORKER_THREADS") {
                None => None,
                Some(_) => {
                    Some(usize::try_from(num("GCDR_WORKER_THREADS", 0)?.max(1)).unwrap_or(1))
                }
            },
        })
    }
}

/// Percent-encodes a URL component.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::Config;

    fn config(vars: &[(&str, &str)]) -> anyhow::Result<Config> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn with_no_configuration_it_uses_local_postgres() {
        let c = config(&[]).unwrap();
        assert_eq!(c.database_url, "postgres://postgres@127.0.0.1:5432/gcdr");
        assert_eq!(c.listen_addr.to_string(), "0.0.0.0:50051");
        assert!(c.migrate_on_start);
    }

    #[test]
    fn rfc_pg_variables_build_the_url_with_an_encoded_password() {
        let c = config(&[
            ("PGHOST", "db"),
            ("PGPORT", "6543"),
            ("PGUSER", "app"),
            ("PGPASSWORD", "p@ss/w"),
            ("PGDATABASE", "g"),
        ])
        .unwrap();
        assert_eq!(c.database_url, "postgres://app:p%40ss%2Fw@db:6543/g");
    }

    #[test]
    fn database_url_wins_and_bad_values_are_refused() {
        let c = config(&[("DATABASE_URL", "postgres://x@y/z"), ("PGHOST", "ignored")]).unwrap();
        assert_eq!(c.database_url, "postgres://x@y/z");
        assert!(config(&[("PGPORT", "abc")]).is_err());
        assert!(config(&[("GCDR_LOG_FORMAT", "xml")]).is_err());
        assert!(config(&[("PGSSL", "true"), ("PGSSLROOTCERT", "/nonexistent.pem")]).is_err());
        assert!(config(&[("PGSSL", "true")]).unwrap().pool.tls.is_some());
        assert!(config(&[("PGSSL", "maybe")]).is_err());
    }

    #[test]
    fn the_dynamodb_index_settle_time_defaults_to_a_second_and_is_bounded() {
        let settle = |env: &[(&str, &str)]| {
            let mut all = vec![("DYNAMODB_ENDPOINT", "http://127.0.0.1:8765")];
            all.extend_from_slice(env);
            config(&all).map(|c| c.storage.dynamodb.expect("dynamodb").index_settle)
        };
        assert_eq!(settle(&[]).unwrap(), std::time::Duration::from_secs(1));
        let slow = [("GCDR_DYNAMODB_INDEX_SETTLE_MS", "5000")];
        assert_eq!(settle(&slow).unwrap(), std::time::Duration::from_secs(5));
        for bad in ["-1", "soon", "600000"] {
            assert!(
                settle(&[("GCDR_DYNAMODB_INDEX_SETTLE_MS", bad)]).is_err(),
                "{bad}"
            );
        }
    }
}
