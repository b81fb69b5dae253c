//! Wiring of the storage stack: PostgreSQL, optionally DynamoDB, the router between
//! them, the replicator, the mode synchroniser and the admin service state. Shared
//! by `main` and the integration tests, so both run exactly the same stack.

use std::sync::Arc;
use std::time::Duration;

use crate::grpc::admin::AdminState;
use crate::storage::Store;
use crate::storage::dynamodb::{DynamoConfig, DynamoStore};
use crate::storage::mode::{Backend, ModeTable, Modes, StorageMode};
use crate::storage::postgres::PgStore;
use crate::storage::replica::{DivergenceLog, Outbox};
use crate::storage::router::{Backed, Metrics, ModeSync, Replicator, Router};

/// Storage settings (see `config`).
#[derive(Clone, Debug)]
pub struct StorageSettings {
    /// `GCDR_STORAGE_MODE`: the global mode until one is persisted.
    pub default_mode: StorageMode,
    /// `None`: DynamoDB is not configured and no mode that needs it can be set.
    pub dynamodb: Option<DynamoConfig>,
    /// `GCDR_ADMIN_TOKEN`; `None`: the admin API is off.
    pub admin_token: Option<String>,
    /// `GCDR_SHADOW_READ_RATE`: fraction of get reads compared with the other store.
    pub shadow_rate: f64,
    /// `GCDR_MODE_POLL_MS`: how often the persisted mode is re-read.
    pub mode_poll: Duration,
    /// `GCDR_SECONDARY_TIMEOUT_MS`: budget of one secondary copy.
    pub secondary_timeout: Duration,
    /// Replication workers and the queue length of each.
    pub replication_workers: usize,
    pub replication_queue: usize,
    /// `GCDR_OUTBOX_REPLAY_MS`: how often the outboxes are searched for unfinished copies.
    pub outbox_replay: Duration,
    /// `GCDR_OUTBOX_GRACE_MS`: how old an intent must be before it is replayed.
    pub outbox_grace: Duration,
}

impl Default for StorageSettings {
    fn default() -> Self {
        Self {
            default_mode: StorageMode::Postgres,
            dynamodb: None,
            admin_token: None,
            shadow_rate: 0.0,
            mode_poll: Duration::from_secs(1),
            secondary_timeout: Duration::from_secs(2),
            replication_workers: 8,
            replication_queue: 1024,
            outbox_replay: Duration::from_secs(10),
            outbox_grace: Duration::from_secs(60),
        }
    }
}

/// The running storage stack.
pub struct Storage {
    /// What the gRPC services use.
    pub store: Store,
    /// What StorageAdminService uses.
    pub admin: AdminState,
    /// The replicator (flush it before stopping to finish queued copies).
    pub replicator: Replicator,
    /// The mode poller task.
    pub poller: tokio::task::JoinHandle<()>,
    /// The task replaying unfinished copies from the outboxes.
    pub replayer: tokio::task::JoinHandle<()>,
}

/// Builds the stack over `pg`, loads the persisted mode (falling back to the default
/// while PostgreSQL is unreachable) and starts the mode poller.
pub async fn build_storage(pg: PgStore, s: &StorageSettings) -> anyhow::Result<Storage> {
    anyhow::ensure!(
        !s.default_mode.uses_dynamodb() || s.dynamodb.is_some(),
        "GCDR_STORAGE_MODE={} needs DynamoDB: set DYNAMODB_ENDPOINT or GCDR_DYNAMODB=true",
        s.default_mode
    );
    let pg_arc = Arc::new(pg.clone());
    let postgres = Backed {
        store: Store::postgres(pg.clone()),
        replica: pg_arc.clone(),
        log: pg_arc.clone(),
        outbox: pg_arc.clone(),
    };
    let mut logs: Vec<(Backend, Arc<dyn DivergenceLog>)> =
        vec![(Backend::Postgres, pg_arc.clone())];
    let mut outboxes: Vec<(Backend, Arc<dyn Outbox>)> = vec![(Backend::Postgres, pg_arc)];
    let dynamodb = match &s.dynamodb {
        Some(cfg) => {
            let d = Arc::new(DynamoStore::connect(cfg).await);
            logs.push((Backend::Dynamodb, d.clone()));
            outboxes.push((Backend::Dynamodb, d.clone()));
            Some(Backed {
                store: Store::dynamodb((*d).clone()),
                replica: d.clone(),
                log: d.clone(),
                outbox: d,
            })
        }
        None => None,
    };
    let metrics = Arc::new(Metrics::default());
    let replicator = Replicator::start(
        s.replication_workers,
        s.replication_queue,
        s.secondary_timeout,
        metrics.clone(),
    );
    let initial = match pg.load_modes(s.default_mode).await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, default = %s.default_mode,
                "cannot read the persisted storage mode yet; starting with the default");
            ModeTable {
                global: s.default_mode,
                tenants: Default::default(),
            }
        }
    };
    let dynamodb_enabled = dynamodb.is_some();
    if !dynamodb_enabled && initial.in_use().any(StorageMode::uses_dynamodb) {
        // Calls of those tenants answer UNAVAILABLE until DynamoDB is configured.
        tracing::error!("a persisted storage mode needs DynamoDB, which is not configured");
    }
    let modes = Modes::new(initial);
    let router = Router::new(
        postgres,
        dynamodb,
        modes.clone(),
        replicator.clone(),
        s.shadow_rate,
        metrics.clone(),
    );
    let sync = ModeSync {
        pg,
        modes,
        replicator: replicator.clone(),
        default: s.default_mode,
    };
    let poller = sync.clone().spawn(s.mode_poll);
    let replayer = router.clone().spawn_replay(s.outbox_replay, s.outbox_grace);
    Ok(Storage {
        store: router.into_store(),
        admin: AdminState {
            sync,
            token: s.admin_token.clone(),
            dynamodb_enabled,
            metrics,
            logs,
            outboxes,
            outbox_grace: s.outbox_grace,
        },
        replicator,
        poller,
        replayer,
    })
}
