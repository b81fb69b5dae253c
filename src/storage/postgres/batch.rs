//! Reads by key coalesced across concurrent calls.
//!
//! A get by primary key is one tiny query, and at high concurrency PostgreSQL spends
//! most of its time on the per-statement overhead around it (a round trip, executor
//! start-up, a context switch per backend), not on the index probe. [`Batched`] hands
//! each read to a worker task instead. A worker takes every read waiting at that
//! moment and answers them with one `WHERE tenant_id = $1 AND id = ANY($2)` per tenant
//! in the batch, pipelined on one connection. The grants an authorization check loads
//! go the same way, keyed by user.
//!
//! - Nothing waits for a batch to fill: an idle worker sends a lone read at once, so a
//!   quiet service sees the latency of a plain query. Batches only form while the
//!   workers are busy, which is exactly when the overhead matters.
//! - A batch's queries start after each of its reads was asked for, so a read still
//!   sees every write committed before it was made.
//! - Tenants never mix in one statement: each tenant's keys are their own query, with
//!   the tenant bound like in every other query.
//! - `GCDR_DB_POINT_READ_WORKERS` workers per kind of read (default 1: the fewer the
//!   workers, the bigger the batches; on the 2-core bench machine 1 worker served
//!   about 25% more gets than 2). A slow batch delays the reads queued behind it, and
//!   the server's statement timeout bounds it like any other query. `0` turns
//!   batching off: every read is its own query, as before.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::bb8::Pool;
use futures::future::BoxFuture;
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

use super::assets::AssetRow;
use super::checkout;
use super::customers::CustomerRow;
use super::devices::DeviceRow;
use crate::storage::{StoreError, StoreResult};

/// Most reads one worker answers in one go.
const MAX_BATCH: usize = 256;

/// Loads what `keys` name in one tenant, as (key, row) pairs: any number per key, in
/// the order each key's rows should be answered.
pub(super) type Fetch<K, R> =
    for<'c> fn(&'c AsyncPgConnection, &'c str, Vec<K>) -> BoxFuture<'c, StoreResult<Vec<(K, R)>>>;

struct Want<K, R> {
    tenant: String,
    key: K,
    reply: oneshot::Sender<StoreResult<Vec<R>>>,
}

/// Reads by key of one kind, coalesced across concurrent calls (see the module docs).
/// With no workers, each read runs the same fetch on its own pooled connection.
pub(super) struct Batched<K, R> {
    tx: Option<mpsc::UnboundedSender<Want<K, R>>>,
    pool: Pool<AsyncPgConnection>,
    fetch: Fetch<K, R>,
}

impl<K, R> Clone for Batched<K, R> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            pool: self.pool.clone(),
            fetch: self.fetch,
        }
    }
}

impl<K, R> Batched<K, R>
where
    K: Ord + Hash + Clone + Send + 'static,
    R: Clone + Send + 'static,
{
    /// Starts `workers` worker tasks on `pool` (none: batching off). They end when
    /// the last handle is dropped.
    pub(super) fn spawn(pool: Pool<AsyncPgConnection>, workers: usize, fetch: Fetch<K, R>) -> Self {
        let tx = (workers > 0).then(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let rx = Arc::new(Mutex::new(rx));
            for _ in 0..workers {
                tokio::spawn(work(pool.clone(), rx.clone(), fetch));
            }
            tx
        });
        Self { tx, pool, fetch }
    }

    /// The rows of `key` in `tenant`.
    pub(super) async fn get(&self, tenant: &str, key: K) -> StoreResult<Vec<R>> {
        let Some(tx) = &self.tx else {
            let conn = checkout(&self.pool).await?;
            let rows = (self.fetch)(&conn, tenant, vec![key]).await?;
            return Ok(rows.into_iter().map(|(_, row)| row).collect());
        };
        let (reply, answer) = oneshot::channel();
        let want = Want {
            tenant: tenant.to_owned(),
            key,
            reply,
        };
        tx.send(want).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// The row of `key` in `tenant`, if there is one (a read by primary key).
    pub(super) async fn one(&self, tenant: &str, key: K) -> StoreResult<Option<R>> {
        Ok(self.get(tenant, key).await?.pop())
    }
}

fn stopped() -> StoreError {
    StoreError::Unavailable("the batched-read workers have stopped".into())
}

/// The same error for every read of a failed batch.
fn shared(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        other => StoreError::Internal(other.to_string().into()),
    }
}

async fn work<K, R>(
    pool: Pool<AsyncPgConnection>,
    rx: Arc<Mutex<mpsc::UnboundedReceiver<Want<K, R>>>>,
    fetch: Fetch<K, R>,
) where
    K: Ord + Hash + Clone + Send + 'static,
    R: Clone + Send + 'static,
{
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        // One worker waits on the queue at a time; the others wait for it to take a
        // batch, so a read that arrives alone goes to an idle worker at once.
        if rx.lock().await.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        let conn = match checkout(&pool).await {
            Ok(conn) => conn,
            Err(e) => {
                for want in batch.drain(..) {
                    let _ = want.reply.send(Err(shared(&e)));
                }
                continue;
            }
        };
        batch.sort_unstable_by(|a, b| (&a.tenant, &a.key).cmp(&(&b.tenant, &b.key)));
        // One query per tenant, pipelined on the one connection.
        let mut groups: Vec<Vec<Want<K, R>>> = Vec::new();
        for want in batch.drain(..) {
            match groups.last_mut() {
                Some(group) if group[0].tenant == want.tenant => group.push(want),
                _ => groups.push(vec![want]),
            }
        }
        let conn: &AsyncPgConnection = &conn;
        let queries = groups.iter().map(|wants| {
            let mut keys: Vec<K> = wants.iter().map(|w| w.key.clone()).collect();
            keys.dedup();
            fetch(conn, &wants[0].tenant, keys)
        });
        let answers = futures::future::join_all(queries).await;
        for (wants, answer) in groups.into_iter().zip(answers) {
            answer_group(wants, answer);
        }
    }
}

/// Hands each read of one tenant's group its rows, or the group's error.
fn answer_group<K: Hash + Eq + Clone, R: Clone>(
    wants: Vec<Want<K, R>>,
    answer: StoreResult<Vec<(K, R)>>,
) {
    let rows = match answer {
        Ok(rows) => rows,
        Err(e) => {
            for want in wants {
                let _ = want.reply.send(Err(shared(&e)));
            }
            return;
        }
    };
    let mut found: HashMap<K, Vec<R>> = HashMap::new();
    for (key, row) in rows {
        found.entry(key).or_default().push(row);
    }
    let mut wants = wants.into_iter().peekable();
    while let Some(want) = wants.next() {
        // Sorted by key: a repeated key gets a copy, its last read the rows themselves.
        let rows = match wants.peek() {
            Some(next) if next.key == want.key => found.get(&want.key).cloned().unwrap_or_default(),
            _ => found.remove(&want.key).unwrap_or_default(),
        };
        let _ = want.reply.send(Ok(rows));
    }
}

/// A [`Fetch`] of the rows of one table by tenant and ids.
macro_rules! fetch_by_ids {
    ($name:ident, $table:ident, $row:ty) => {
        fn $name<'c>(
            mut conn: &'c AsyncPgConnection,
            tenant: &'c str,
            ids: Vec<Uuid>,
        ) -> BoxFuture<'c, StoreResult<Vec<(Uuid, $row)>>> {
            use super::schema::$table::dsl;
            use diesel::prelude::*;
            use diesel_async::RunQueryDsl;
            Box::pin(async move {
                let rows: Vec<$row> = dsl::$table
                    .filter(dsl::tenant_id.eq(tenant))
                    .filter(dsl::id.eq_any(ids))
                    .select(<$row>::as_select())
                    .load(&mut conn)
                    .await?;
                Ok(rows.into_iter().map(|r| (r.id, r)).collect())
            })
        }
    };
}

fetch_by_ids!(customers_by_ids, customers, CustomerRow);
fetch_by_ids!(assets_by_ids, assets, AssetRow);
fetch_by_ids!(devices_by_ids, devices, DeviceRow);

/// The coalesced reads: gets by id of the tables read by id most, and the grants an
/// authorization check loads.
#[derive(Clone)]
pub(super) struct Reads {
    pub customers: Batched<Uuid, CustomerRow>,
    pub assets: Batched<Uuid, AssetRow>,
    pub devices: Batched<Uuid, DeviceRow>,
    /// The rows of a user's grants (see `assignments::grant_rows`).
    pub grants: Batched<String, super::assignments::GrantRow>,
}

impl Reads {
    /// `workers` workers per table on `pool`.
    pub(super) fn spawn(pool: &Pool<AsyncPgConnection>, workers: usize) -> Self {
        Self {
            customers: Batched::spawn(pool.clone(), workers, customers_by_ids),
            assets: Batched::spawn(pool.clone(), workers, assets_by_ids),
            devices: Batched::spawn(pool.clone(), workers, devices_by_ids),
            grants: Batched::spawn(pool.clone(), workers, super::assignments::grant_rows),
        }
    }
}
