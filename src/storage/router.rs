//! The runtime storage switch: implements every store trait by routing each call, per
//! tenant, to the store the current mode names.
//!
//! - Reads go to the authoritative store only. A configurable fraction of the `get`
//!   reads is also read from the other store in the background and compared attribute
//!   by attribute (shadow reads): mismatches are counted and logged by entity and
//!   field; the response and its latency never depend on it.
//! - Writes go to the authoritative store; its result decides the response. The record
//!   it returns is then copied to the secondary store by the [`Replicator`], off the
//!   caller's path, as a versioned upsert (never moving a record backwards), so retries
//!   and reordering are harmless. A copy that fails is counted and recorded durably in
//!   the authoritative store's divergence log for reconcile; it never fails the call.
//! - Every copy is also written as an [`Intent`] to the authoritative store's outbox,
//!   alongside the write and before the call is acknowledged, and cleared once the copy
//!   is applied or its failure recorded. An intent older than the replay grace (its
//!   process died, or its copy is stuck) is replayed by any replica: the record, or the
//!   moved subtree, is re-read from the store that holds the intent and copied again.

use std::collections::BTreeMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::mode::{Backend, Modes, StorageMode};
use super::replica::{DivergenceLog, Entity, Intent, Outbox, Record, RecordKey, Replica};
use super::*;

/// One store with its replica, divergence-log and outbox views.
#[derive(Clone)]
pub struct Backed {
    pub store: Store,
    pub replica: Arc<dyn Replica>,
    pub log: Arc<dyn DivergenceLog>,
    pub outbox: Arc<dyn Outbox>,
}

/// Counters by name and labels, e.g. `secondary_write{store=dynamodb,entity=customer,
/// op=upsert,outcome=failed}`; reported by StorageAdminService and logged.
#[derive(Debug, Default)]
pub struct Metrics(Mutex<BTreeMap<String, u64>>);

impl Metrics {
    /// Adds one to a counter.
    pub fn incr(&self, name: &str, labels: &[(&str, &str)]) {
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let key = format!("{name}{{{}}}", labels.join(","));
        *self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default() += 1;
    }

    /// Every counter.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What to copy to the secondary store.
#[derive(Clone, Debug)]
enum Op {
    /// This record, as the authoritative store returned it.
    Upsert(Box<Record>),
    /// The record was deleted.
    Remove,
    /// Re-read the record from the authoritative store and copy it (partners: their
    /// calls return a part, the record has more).
    Reload,
    /// Re-read the subtree under the record (a move) and copy every node, parents
    /// first; for assets, their devices too.
    Subtree,
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Upsert(_) => "upsert",
            Op::Remove => "remove",
            Op::Reload => "reload",
            Op::Subtree => SUBTREE_OP,
        }
    }
}

struct Job {
    key: RecordKey,
    op: Op,
    primary: Backed,
    primary_backend: Backend,
    secondary: Backed,
    secondary_backend: Backend,
    /// The copy's intent in the primary's outbox, cleared once the copy is applied or
    /// its failure recorded (`None`: it could not be written).
    intent: Option<Intent>,
}

enum Msg {
    Job(Box<Job>),
    Flush(oneshot::Sender<()>),
}

/// Copies writes to the secondary store in the background: a fixed set of workers,
/// each owning the keys that hash to it, so the copies of one record are applied in
/// the order they were acknowledged.
#[derive(Clone)]
pub struct Replicator {
    workers: Arc<Vec<mpsc::Sender<Msg>>>,
    /// Intents to clear, batched by a background task.
    clearer: mpsc::UnboundedSender<Clear>,
}

/// A message to the intent-clearing task.
enum Clear {
    /// This intent, in this store's outbox, is done with.
    Intent(Arc<dyn Outbox>, Intent),
    /// Answer once every intent sent before is cleared (or its clearing failed).
    Flush(oneshot::Sender<()>),
}

impl Replicator {
    /// Starts `workers` tasks with queues of `queue` jobs each. A copy that does not
    /// finish within `timeout` counts as failed.
    pub fn start(workers: usize, queue: usize, timeout: Duration, metrics: Arc<Metrics>) -> Self {
        let (clearer, clear_rx) = mpsc::unbounded_channel();
        tokio::spawn(clear_intents(clear_rx, metrics.clone()));
        let senders = (0..workers.max(1))
            .map(|_| {
                let (tx, mut rx) = mpsc::channel::<Msg>(queue.max(1));
                let metrics = metrics.clone();
                let clearer = clearer.clone();
                tokio::spawn(async move {
                    while let Some(msg) = rx.recv().await {
                        match msg {
                            Msg::Job(job) => {
                                let job = *job;
                                let finished = run_job(&job, timeout, &metrics).await;
                                if let (true, Some(intent)) = (finished, job.intent) {
                                    let _ = clearer.send(Clear::Intent(job.primary.outbox, intent));
                                }
                            }
                            Msg::Flush(done) => {
                                let _ = done.send(());
                            }
                        }
                    }
                });
                tx
            })
            .collect();
        Self {
            workers: Arc::new(senders),
            clearer,
        }
    }

    /// Clears an intent whose copy is not needed (its write failed).
    fn clear(&self, primary: &Backed, intent: Intent) {
        let _ = self
            .clearer
            .send(Clear::Intent(primary.outbox.clone(), intent));
    }

    async fn enqueue(&self, job: Job) {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        job.key.hash(&mut h);
        let worker = &self.workers[(h.finish() % self.workers.len() as u64) as usize];
        // A full queue makes the caller wait (backpressure) rather than drop a copy.
        if worker.send(Msg::Job(Box::new(job))).await.is_err() {
            tracing::error!("replication worker stopped; a secondary copy was not queued");
        }
    }

    /// Waits until every copy queued before this call has been applied or recorded.
    pub async fn flush(&self) {
        let mut waits = Vec::new();
        for w in self.workers.iter() {
            let (tx, rx) = oneshot::channel();
            if w.send(Msg::Flush(tx)).await.is_ok() {
                waits.push(rx);
            }
        }
        for rx in waits {
            let _ = rx.await;
        }
        let (tx, rx) = oneshot::channel();
        if self.clearer.send(Clear::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// Deletes cleared intents from their outboxes, up to 200 at a time per store. One that
/// cannot be deleted is left for replay (harmless: a replay re-copies a record).
async fn clear_intents(mut rx: mpsc::UnboundedReceiver<Clear>, metrics: Arc<Metrics>) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 200).await > 0 {
        let mut flushes = Vec::new();
        let mut cleared = Vec::new();
        for msg in batch.drain(..) {
            match msg {
                Clear::Intent(b, i) => cleared.push((b, i)),
                Clear::Flush(done) => flushes.push(done),
            }
        }
        for backend in [Backend::Postgres, Backend::Dynamodb] {
            let mut outbox = None;
            let mut intents = Vec::new();
            for (b, i) in &cleared {
                // The intent is in its primary's outbox: the store it does not target.
                if i.target != backend {
                    outbox.get_or_insert_with(|| b.clone());
                    intents.push(i.clone());
                }
            }
            if let Some(outbox) = outbox
                && let Err(e) = outbox.clear(&intents).await
            {
                metrics.incr("outbox_clear_failed", &[]);
                tracing::warn!(error = %e, intents = intents.len(),
                    "could not clear applied intents; they will be replayed");
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// Applies one copy (two attempts); a failure is counted and recorded in the primary's
/// divergence log. Returns whether the copy is finished: applied, or its failure
/// recorded (otherwise its intent must stay, for replay).
async fn run_job(job: &Job, timeout: Duration, metrics: &Metrics) -> bool {
    let op = job.op.name();
    let mut last_error = String::new();
    for attempt in 0..2 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        match apply(job, timeout).await {
            Ok(()) => {
                metrics.incr(
                    "secondary_write",
                    &[
                        ("store", job.secondary_backend.as_str()),
                        ("entity", job.key.entity.as_str()),
                        ("op", op),
                        ("outcome", "ok"),
                    ],
                );
                return true;
            }
            Err(e) => last_error = error_text(&e),
        }
    }
    metrics.incr(
        "secondary_write",
        &[
            ("store", job.secondary_backend.as_str()),
            ("entity", job.key.entity.as_str()),
            ("op", op),
            ("outcome", "failed"),
        ],
    );
    tracing::warn!(
        store = job.secondary_backend.as_str(),
        entity = job.key.entity.as_str(),
        tenant = %job.key.tenant,
        id = %job.key.id,
        op,
        error = %last_error,
        "secondary write failed; recorded for reconcile"
    );
    let recorded = job
        .primary
        .log
        .record(&job.key, job.secondary_backend, op, &last_error)
        .await;
    if let Err(e) = recorded {
        metrics.incr(
            "divergence_record_failed",
            &[("store", job.primary_backend.as_str())],
        );
        tracing::error!(error = %e, entity = job.key.entity.as_str(), id = %job.key.id,
            "could not record a divergence; its intent stays for replay");
        return false;
    }
    true
}

/// The message of a store error, with the source of an internal one.
fn error_text(e: &StoreError) -> String {
    match e {
        StoreError::Internal(src) => format!("internal: {src}"),
        e => e.to_string(),
    }
}

/// Applies one copy; each store call gets `timeout` (a subtree's copy makes one call
/// per record, so its budget grows with the subtree, and a stalled store still fails
/// it within one call's budget).
async fn apply(job: &Job, timeout: Duration) -> StoreResult<()> {
    let secondary = &job.secondary.replica;
    match &job.op {
        Op::Upsert(record) => within(timeout, secondary.upsert(record)).await.map(|_| ()),
        Op::Remove => within(timeout, secondary.remove(&job.key)).await,
        Op::Reload => match within(timeout, job.primary.replica.load(&job.key)).await? {
            Some(record) => {
                within(timeout, secondary.upsert(&record)).await?;
                drop_if_gone(job, &job.key, timeout).await
            }
            None => within(timeout, secondary.remove(&job.key)).await,
        },
        Op::Subtree => {
            let mut records = subtree_records(
                &job.primary.store,
                job.primary.replica.as_ref(),
                &job.key,
                timeout,
            )
            .await?;
            records.sort_by_key(Record::depth);
            for r in &records {
                within(timeout, secondary.upsert(r)).await?;
            }
            let again: std::collections::HashSet<RecordKey> = subtree_records(
                &job.primary.store,
                job.primary.replica.as_ref(),
                &job.key,
                timeout,
            )
            .await?
            .iter()
            .map(Record::key)
            .collect();
            for r in records.iter().rev() {
                let k = r.key();
                if !again.contains(&k) {
                    drop_if_gone(job, &k, timeout).await?;
                }
            }
            Ok(())
        }
    }
}

/// `call`, or an outage once `timeout` has passed.
async fn within<T>(
    timeout: Duration,
    call: impl Future<Output = StoreResult<T>>,
) -> StoreResult<T> {
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::Unavailable(format!(
                "timed out after {timeout:?}"
            )))
        })
}

/// A record re-read from the primary can be deleted there before its copy lands, and
/// the delete's own copy (another worker's, or another replica's) can land first:
/// when the record is gone from the primary now, the copy is removed too.
async fn drop_if_gone(job: &Job, key: &RecordKey, timeout: Duration) -> StoreResult<()> {
    if within(timeout, job.primary.replica.load(key))
        .await?
        .is_none()
    {
        within(timeout, job.secondary.replica.remove(key)).await?;
    }
    Ok(())
}

/// The operation a failed copy of a moved subtree is logged under (reconcile repairs
/// the whole subtree of such a divergence).
pub const SUBTREE_OP: &str = "subtree";

/// The most nodes one moved subtree copy reads.
const SUBTREE_LIMIT: usize = 1_000_000;

/// The node of `key` and everything under it (assets: with their devices), from
/// `primary`, each read within `timeout`. The subtree is read by the node's path and
/// then by the path of each child that read missed: a DynamoDB move that stopped part
/// way (PARTIAL_MOVE) has rewritten its first chunks, whole top-down runs of
/// descendants in path order, under the new path while the node kept the old one, and
/// its replay must copy those too.
///
/// Reconcile uses it too, to repair every record under a failed subtree copy.
pub async fn subtree_records(
    store: &Store,
    replica: &dyn Replica,
    key: &RecordKey,
    timeout: Duration,
) -> StoreResult<Vec<Record>> {
    let mut nodes = within(timeout, subtree_nodes(store, key)).await?;
    let read: std::collections::HashSet<RecordKey> = nodes.iter().map(Record::key).collect();
    for child in within(timeout, replica.children(key)).await? {
        if !read.contains(&child) {
            nodes.extend(within(timeout, subtree_nodes(store, &child)).await?);
        }
    }
    let Entity::Asset = key.entity else {
        return Ok(nodes);
    };
    let mut out = Vec::new();
    for node in &nodes {
        let Record::Asset(a) = node else { continue };
        let mut page = PageRequest {
            size: crate::domain::MAX_PAGE_SIZE,
            after: None,
        };
        loop {
            let filter = crate::domain::device::DeviceFilter {
                asset_id: Some(a.id),
                ..Default::default()
            };
            let p = within(timeout, store.devices.list(&key.tenant, &filter, &page)).await?;
            out.extend(p.items.into_iter().map(Record::Device));
            match p.next_after {
                Some(after) => page.after = Some(after),
                None => break,
            }
        }
    }
    out.extend(nodes);
    Ok(out)
}

/// The customer or asset of `key` and its descendants by its path.
async fn subtree_nodes(store: &Store, key: &RecordKey) -> StoreResult<Vec<Record>> {
    let t = &key.tenant;
    Ok(match key.entity {
        Entity::Customer => store
            .customers
            .subtree(t, CustomerId(key.id), i32::MAX, SUBTREE_LIMIT)
            .await?
            .nodes
            .into_iter()
            .map(Record::Customer)
            .collect(),
        Entity::Asset => store
            .assets
            .subtree(t, AssetId(key.id), i32::MAX, SUBTREE_LIMIT)
            .await?
            .nodes
            .into_iter()
            .map(Record::Asset)
            .collect(),
        _ => Vec::new(),
    })
}

/// Routes every store call by the tenant's mode.
#[derive(Clone)]
pub struct Router {
    postgres: Backed,
    dynamodb: Option<Backed>,
    modes: Modes,
    replicator: Replicator,
    shadow_rate: f64,
    metrics: Arc<Metrics>,
}

/// The stores one call uses.
struct Route<'a> {
    mode: StorageMode,
    primary: &'a Backed,
    secondary: Option<&'a Backed>,
    /// A write's pass through the mode gate, held until its copy is queued.
    _pass: Option<tokio::sync::OwnedRwLockReadGuard<()>>,
}

impl Router {
    /// A router over PostgreSQL and, when configured, DynamoDB.
    pub fn new(
        postgres: Backed,
        dynamodb: Option<Backed>,
        modes: Modes,
        replicator: Replicator,
        shadow_rate: f64,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            postgres,
            dynamodb,
            modes,
            replicator,
            shadow_rate,
            metrics,
        }
    }

    /// The store bundle the gRPC layer uses.
    pub fn into_store(self) -> Store {
        let r = Arc::new(self);
        let mut probes = r.postgres.store.probes.clone();
        if let Some(d) = &r.dynamodb {
            probes.extend(d.store.probes.iter().cloned());
        }
        Store {
            customers: r.clone(),
            assets: r.clone(),
            devices: r.clone(),
            policies: r.clone(),
            roles: r.clone(),
            assignments: r.clone(),
            partners: r.clone(),
            health: r,
            probes,
        }
    }

    fn backed(&self, b: Backend) -> StoreResult<&Backed> {
        match b {
            Backend::Postgres => Ok(&self.postgres),
            Backend::Dynamodb => self.dynamodb.as_ref().ok_or_else(|| {
                StoreError::Unavailable(
                    "the storage mode needs DynamoDB, which is not configured \
                     (set DYNAMODB_ENDPOINT or GCDR_DYNAMODB=true)"
                        .into(),
                )
            }),
        }
    }

    fn route(&self, tenant: &TenantId) -> StoreResult<Route<'_>> {
        let mode = self.modes.for_tenant(tenant.as_str());
        Ok(Route {
            mode,
            primary: self.backed(mode.primary())?,
            secondary: mode.secondary().map(|b| self.backed(b)).transpose()?,
            _pass: None,
        })
    }

    /// A write's route, holding its pass through the mode gate until the route is
    /// dropped (after the copy is queued): a mode change waits for it, so the store
    /// that becomes authoritative receives every copy before it serves.
    async fn write_route(&self, tenant: &TenantId) -> StoreResult<Route<'_>> {
        let pass = self.modes.write_pass().await;
        let mut r = self.route(tenant)?;
        r._pass = Some(pass);
        Ok(r)
    }

    /// Runs `write` on the route's primary store and, in a dual mode, queues its copy
    /// (`op` of the result) to the secondary. The copy's intent is written to the
    /// primary's outbox with the write, and before the call returns, so a copy still
    /// queued when the process dies is replayed after restart: PostgreSQL inserts it
    /// in the write's transaction (`postgres::with_intent`); DynamoDB puts it in the
    /// write's TransactWriteItems, or alongside its UpdateItem or DeleteItem
    /// (`dynamodb::with_intent`). An intent inside the write's transaction fails the
    /// write with it; one written alongside that fails is counted and logged, and the
    /// call still succeeds with its copy queued.
    async fn write<T>(
        &self,
        r: &Route<'_>,
        key: RecordKey,
        subtree: bool,
        write: impl Future<Output = StoreResult<T>> + Send,
        op: impl FnOnce(&T) -> Op + Send,
    ) -> StoreResult<T> {
        let (Some(secondary), Some(target)) = (r.secondary, r.mode.secondary()) else {
            return write.await;
        };
        let intent = Intent {
            id: Uuid::new_v4(),
            key,
            target,
            subtree,
        };
        let outbox = &r.primary.outbox;
        let (done, noted) = match r.mode.primary() {
            Backend::Postgres => {
                // A successful write that committed none (it has no transaction)
                // notes its intent now. A failed write that committed none has no
                // intent to clear.
                let (done, committed) = super::postgres::with_intent(&intent, write).await;
                let noted = match (&done, committed) {
                    (_, true) => Some(Ok(())),
                    (Ok(_), false) => Some(outbox.intend(&intent).await),
                    (Err(_), false) => None,
                };
                (done, noted)
            }
            Backend::Dynamodb => super::dynamodb::with_intent(&intent, outbox.clone(), write).await,
        };
        let noted = match noted {
            None => false,
            Some(Ok(())) => true,
            Some(Err(e)) => {
                self.metrics.incr(
                    "outbox_write_failed",
                    &[("store", r.mode.primary().as_str())],
                );
                tracing::warn!(error = %e, entity = intent.key.entity.as_str(), id = %intent.key.id,
                    "could not record a copy's intent; it is queued but not crash-safe");
                false
            }
        };
        let value = match done {
            Ok(v) => v,
            Err(e) => {
                // A definite refusal wrote nothing, so its intent goes. A write that
                // may have landed keeps it, and its replay re-reads the record (or
                // subtree).
                if noted && !e.may_have_written() {
                    self.replicator.clear(r.primary, intent);
                }
                return Err(e);
            }
        };
        let job = Job {
            key: intent.key.clone(),
            op: op(&value),
            primary: r.primary.clone(),
            primary_backend: r.mode.primary(),
            secondary: secondary.clone(),
            secondary_backend: target,
            intent: noted.then_some(intent),
        };
        self.replicator.enqueue(job).await;
        Ok(value)
    }

    /// [`Router::write`] whose copy is the record the write returns.
    async fn write_record<T: Clone>(
        &self,
        r: &Route<'_>,
        key: RecordKey,
        write: impl Future<Output = StoreResult<T>> + Send,
        wrap: fn(T) -> Record,
    ) -> StoreResult<T> {
        let op = move |v: &T| Op::Upsert(Box::new(wrap(v.clone())));
        self.write(r, key, false, write, op).await
    }

    /// [`Router::write`] whose copy is `op` (`Remove`, `Reload` or `Subtree`).
    async fn write_then<T>(
        &self,
        r: &Route<'_>,
        key: RecordKey,
        op: Op,
        write: impl Future<Output = StoreResult<T>> + Send,
    ) -> StoreResult<T> {
        let subtree = matches!(op, Op::Subtree);
        self.write(r, key, subtree, write, move |_| op).await
    }

    /// Samples a shadow read of `record` from the other store.
    fn shadow(&self, route: &Route<'_>, record: Record) {
        if self.shadow_rate <= 0.0 || rand::random::<f64>() >= self.shadow_rate {
            return;
        }
        let other = match route.mode.primary() {
            Backend::Postgres => self.dynamodb.clone(),
            Backend::Dynamodb => Some(self.postgres.clone()),
        };
        let (Some(other), true) = (other, route.mode.secondary().is_some()) else {
            return;
        };
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let key = record.key();
            let entity = key.entity.as_str();
            metrics.incr("shadow_read", &[("entity", entity)]);
            let fields = match other.replica.load(&key).await {
                Ok(Some(theirs)) => super::dynamodb::differing_fields(&record, &theirs),
                Ok(None) => vec!["<missing>".to_owned()],
                Err(e) => {
                    metrics.incr("shadow_read_failed", &[("entity", entity)]);
                    tracing::debug!(error = %e, entity, "shadow read failed");
                    return;
                }
            };
            for field in &fields {
                metrics.incr("shadow_mismatch", &[("entity", entity), ("field", field)]);
            }
            if !fields.is_empty() {
                tracing::warn!(entity, tenant = %key.tenant, id = %key.id, ?fields,
                    "shadow read mismatch");
            }
        });
    }

    /// The counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Replays up to `limit` intents of each store's outbox written more than `grace`
    /// ago: each re-reads the record (or moved subtree) from the store holding the
    /// intent and copies it to the store it targets, never moving a record backwards.
    /// An intent whose tenant is no longer in the mode it was written in (the holder
    /// authoritative, the target secondary), or whose target is not configured, is
    /// not replayed, since the copy could overwrite what is authoritative now: it is
    /// recorded in the holder's divergence log for verify and reconcile instead. Waits
    /// for the copies (so the next round does not queue them again); returns how many
    /// were replayed.
    pub async fn replay_stale(&self, grace: Duration, limit: usize) -> StoreResult<usize> {
        let mut replayed = 0;
        let mut failure = None;
        let stores = [
            (Backend::Postgres, Some(&self.postgres)),
            (Backend::Dynamodb, self.dynamodb.as_ref()),
        ];
        for (backend, holder) in stores {
            let Some(holder) = holder else { continue };
            let intents = match holder.outbox.stale(grace, limit).await {
                Ok(i) => i,
                Err(e) => {
                    failure = Some(e);
                    continue;
                }
            };
            for intent in intents {
                let mode = self.modes.for_tenant(intent.key.tenant.as_str());
                let target = self.backed(intent.target);
                let (Ok(target), true) = (
                    target,
                    mode.primary() == backend && mode.secondary() == Some(intent.target),
                ) else {
                    self.set_aside(holder, intent).await;
                    continue;
                };
                tracing::info!(entity = intent.key.entity.as_str(), tenant = %intent.key.tenant,
                    id = %intent.key.id, to = intent.target.as_str(), "replaying an unfinished copy");
                self.metrics
                    .incr("outbox_replayed", &[("store", intent.target.as_str())]);
                self.replicator
                    .enqueue(Job {
                        key: intent.key.clone(),
                        op: if intent.subtree {
                            Op::Subtree
                        } else {
                            Op::Reload
                        },
                        primary: holder.clone(),
                        primary_backend: backend,
                        secondary: target.clone(),
                        secondary_backend: intent.target,
                        intent: Some(intent),
                    })
                    .await;
                replayed += 1;
            }
        }
        if replayed > 0 {
            self.replicator.flush().await;
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(replayed),
        }
    }

    /// Records an intent that must not be replayed as a divergence, then clears it.
    async fn set_aside(&self, holder: &Backed, intent: Intent) {
        let why = "unfinished copy from before a storage mode change (or to a store no \
                   longer configured): verify, then reconcile";
        match holder
            .log
            .record(&intent.key, intent.target, "replay", why)
            .await
        {
            Ok(()) => {
                self.metrics
                    .incr("outbox_set_aside", &[("store", intent.target.as_str())]);
                tracing::warn!(entity = intent.key.entity.as_str(), tenant = %intent.key.tenant,
                    id = %intent.key.id, to = intent.target.as_str(), "{why}");
                let _ = holder.outbox.clear(std::slice::from_ref(&intent)).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot record an unfinished copy; retrying later")
            }
        }
    }

    /// Replays stale intents every `interval`, for ever.
    pub fn spawn_replay(self, interval: Duration, grace: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                if let Err(e) = self.replay_stale(grace, 1000).await {
                    self.metrics.incr("outbox_replay_failed", &[]);
                    tracing::warn!(error = %e, "cannot read an outbox; retrying later");
                }
            }
        })
    }
}

fn key(entity: Entity, tenant: &TenantId, id: Uuid) -> RecordKey {
    RecordKey {
        entity,
        tenant: tenant.clone(),
        id,
    }
}

#[async_trait]
impl HealthProbe for Router {
    /// Healthy while the store authoritative for the global mode answers.
    async fn ping(&self) -> StoreResult<()> {
        let mode = self.modes.current().global;
        self.backed(mode.primary())?.store.health.ping().await
    }
}

#[async_trait]
impl CustomerStore for Router {
    async fn create(&self, ctx: &Ctx, new: NewCustomer) -> StoreResult<Customer> {
        let r = self.write_route(&ctx.tenant).await?;
        let k = key(Entity::Customer, &ctx.tenant, new.id.0);
        let w = r.primary.store.customers.create(ctx, new);
        self.write_record(&r, k, w, Record::Customer).await
    }
    async fn get(&self, tenant: &TenantId, id: CustomerId) -> StoreResult<Customer> {
        let r = self.route(tenant)?;
        let c = r.primary.store.customers.get(tenant, id).await?;
        self.shadow(&r, Record::Customer(c.clone()));
        Ok(c)
    }
    async fn get_by_code(&self, tenant: &TenantId, code: &str) -> StoreResult<Customer> {
        let r = self.route(tenant)?;
        r.primary.store.customers.get_by_code(tenant, code).await
    }
    async fn update(
        &self,
        ctx: &Ctx,
        id: CustomerId,
        patch: CustomerPatch,
        expected: Option<i64>,
    ) -> StoreResult<Customer> {
        let r = self.write_route(&ctx.tenant).await?;
        let k = key(Entity::Customer, &ctx.tenant, id.0);
        let w = r.primary.store.customers.update(ctx, id, patch, expected);
        self.write_record(&r, k, w, Record::Customer).await
    }
    async fn delete(&self, tenant: &TenantId, id: CustomerId, exp: Option<i64>) -> StoreResult<()> {
        let r = self.write_route(tenant).await?;
        let k = key(Entity::Customer, tenant, id.0);
        let w = r.primary.store.customers.delete(tenant, id, exp);
        self.write_then(&r, k, Op::Remove, w).await
    }
    async fn list(
        &self,
        tenant: &TenantId,
        filter: &CustomerFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<Customer>> {
        let r = self.route(tenant)?;
        r.primary.store.customers.list(tenant, filter, page).await
    }
    async fn descendants(
        &self,
        tenant: &TenantId,
        id: CustomerId,
        max_depth: Option<i32>,
        page: &PageRequest,
    ) -> StoreResult<Page<Customer>> {
        let r = self.route(tenant)?;
        let s = &r.primary.store.customers;
        s.descendants(tenant, id, max_depth, page).await
    }
    async fn ancestors(&self, tenant: &TenantId, id: CustomerId) -> StoreResult<Vec<Customer>> {
        let r = self.route(tenant)?;
        r.primary.store.customers.ancestors(tenant, id).await
    }
    async fn subtree(
        &self,
        tenant: &TenantId,
        id: CustomerId,
        max_depth: i32,
        limit: usize,
    ) -> StoreResult<Subtree<Customer>> {
        let r = self.route(tenant)?;
        let s = &r.primary.store.customers;
        s.subtree(tenant, id, max_depth, limit).await
    }
    async fn move_to(
        &self,
        ctx: &Ctx,
        id: CustomerId,
        new_parent: Option<CustomerId>,
        expected: Option<i64>,
    ) -> StoreResult<Customer> {
        let r = self.write_route(&ctx.tenant).await?;
        let k = key(Entity::Customer, &ctx.tenant, id.0);
        let w = r
            .primary
            .store
            .customers
            .move_to(ctx, id, new_parent, expected);
        self.write_then(&r, k, Op::Subtree, w).await
    }
}

#[async_trait]
impl AssetStore for Router {
    async fn create(&self, ctx: &Ctx, new: NewAsset) -> StoreResult<Asset> {
        let r = self.write_route(&ctx.tenant).await?;
        let k = key(Entity::Asset, &ctx.tenant, new.id.0);
        let w = r.primary.store.assets.create(ctx, new);
        self.write_record(&r, k, w, Record::Asset).await
    }
    async fn get(&self, tenant: &TenantId, id: AssetId) -> StoreResult<Asset> {
        let r = self.route(tenant)?;
        let a = r.primary.store.assets.get(tenant, id).await?;
        self.shadow(&r, Record::Asset(a.clone()));
        Ok(a)
    }
    async fn get_by_code(
        &self,
        tenant: &TenantId,
        customer: CustomerId,
        code: &str,
    ) -> StoreResult<Asset> {
        let r = self.route(tenant)?;
        let s = &r.primary.store.assets;
        s.get_by_code(tenant, customer, code).await
    }
    async fn update(
        &self,
        ctx: &Ctx,
        id: AssetId,
        patch: AssetPatch,
        expected: Option<i64>,
    ) -> StoreResult<Asset> {
        let r = self.write_route(&ctx.tenant).await?;
        let k = key(Entity::Asset, &ctx.tenant, id.0);
        let w = r.primary.store.assets.update(ctx, id, patch, expected);
        self.write_record(&r, k, w, Record::Asset).await
    }
    async fn delete(&self, tenant: &TenantId, id: AssetId, exp: Option<i64>) -> StoreResult<()> {
        let r = self.write_route(tenant).await?;
        let k = key(Entity::Asset, tenant, id.0);
        let w = r.primary.store.assets.delete(tenant, id, exp);
        self.write_then(&r, k, Op::Remove, w).await
    }
    async fn list(
        &self,
        tenant: &TenantId,
        filter: &AssetFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<Asset>> {
        let r = self.route(tenant)?;
        r.primary.store.assets.list(tenant, filter, page).await
    }
    async fn descendants(
        &self,
        tenant: &TenantId,
        id: AssetId,
        max_depth: Option<i32>,
        page: &PageRequest,
    ) -> StoreResult<Page<Asset>> {
        let r = self.route(tenant)?;
        let s = &r.primary.store.assets;
        s.descendants(tenant, id, max_depth, page).await
    }
    async fn ancestors(&self, tenant: &TenantId, id: AssetId) -> StoreResult<Vec<Asset>> {
        let r = self.route(tenant)?;
        r.primary.store.assets.ancestors(tenant, id).await
    }
    async fn subtree(
        &self,
        tenant: &TenantId,
        id: AssetId,
        max_depth: i32,
        limit: usize,
    ) -> StoreResult<Subtree<Asset>> {
        let r = self.route(tenant)?;
        let s = &r.primary.store.assets;
        s.subtree(tenant, id, max_depth, limit).await
    }
    async fn customer_forest(
        &self,
        tenant: &TenantId,
        customer: CustomerId,
        max_depth: i32,
        limit: usize,
    ) -> StoreResult<Subtree<Asset>> {
        let r = self.route(tenant)?;
        let s = &r.primary.store.assets;
        s.customer_forest(tenant, customer, max_depth, limit).await
    }
    async fn move_to(
        &self,
        ctx: &Ctx,
        id: AssetId,
        to: AssetDestination,
        expected: Option<i64>,
    ) -> StoreResult<Asset> {
        let r = self.write_route(&ctx.tenant).await?;
        let k = key(Entity::Asset, &ctx.tenant, id.0);
        let w = r.primary.store.assets.move_to(ctx, id, to, expected);
        self.write_then(&r, k, Op::Subtree, w).await
    }
}

#[async_trait]
impl DeviceStore for Router {
    async fn create(&self, ctx: &Ctx, new: NewDevice) -> StoreResult<Device> {
        let r = self.write_route(&ctx.tenant).await?;
        let k = key(Entity::Device, &ctx.tenant, new.id.0);
        let w = r.primary.store.devices.create(ctx, new);
        self.write_record(&r, k, w, Record::Device).await
    }
    async fn get(&self, tenant: &TenantId, id: DeviceId) -> StoreResult<Device> {
        let r = self.route(tenant)?;
        let d = r.primary.store.devices.get(tenant, id).await?;
        self.shadow(&r, Record::Device(d.clone()));
        Ok(d)
    }
    async fn get_by_serial(&self, tenant: &TenantId, serial: &str) -> StoreResult<Device> {
        let r = self.route(tenant)?;
        r.primary.store.devices.get_by_serial(tenant, serial).await
    }
    async fn update(
        &self,
        ctx: &Ctx,
        id: DeviceId,
        patch: DevicePatch,
        expected: Option<i64>,
    ) -> StoreResult<Device> {
        let r = self.write_route(&ctx.tenant).await?;
        let k = key(Entity::Device, &ctx.tenant, id.0);
        let w = r.primary.store.devices.update(ctx, id, patch, expected);
        self.write_record(&r, k, w, Record::Device).await
    }
    async fn delete(&self, tenant: &TenantId, id: DeviceId, exp: Option<i64>) -> StoreResult<()> {
        let r = self.write_route(tenant).await?;
        let k = key(Entity::Device, tenant, id.0);
        let w = r.primary.store.devices.delete(tenant, id, exp);
        self.write_then(&r, k, Op::Remove, w).await
    }
    async fn list(
        &self,
        tenant: &TenantId,
        filter: &DeviceFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<Device>> {
        let r = self.route(tenant)?;
        r.primary.store.devices.list(tenant, filter, page).await
    }
    async fn move_to(
        &self,
        ctx: &Ctx,
        id: DeviceId,
        asset: AssetId,
        expected: Option<i64>,
    ) -> StoreResult<Device> {
        let r = self.write_route(&ctx.tenant).await?;
        let k = key(Entity::Device, &ctx.tenant, id.0);
        let w = r.primary.store.devices.move_to(ctx, id, asset, expected);
        self.write_record(&r, k, w, Record::Device).await
    }
    async fn set_connectivity(
        &self,
        ctx: &Ctx,
        id: DeviceId,
        status: ConnectivityStatus,
    ) -> StoreResult<Device> {
        let r = self.write_route(&ctx.tenant).await?;
        let k = key(Entity::Device, &ctx.tenant, id.0);
        let w = r.primary.store.devices.set_connectivity(ctx, id, status);
        self.write_record(&r, k, w, Record::Device).await
    }
}

#[async_trait]
impl PolicyStore for Router {
    async fn create(&self, ctx: &Ctx, new: NewPolicy) -> StoreResult<Policy> {
        let r = self.write_route(&ctx.tenant).await?;
        let k = key(Entity::Policy, &ctx.tenant, new.id);
        let w = r.primary.store.policies.create(ctx, new);
        self.write_record(&r, k, w, Record::Policy).await
    }
    async fn get(&self, tenant: &TenantId, id: Uuid) -> StoreResult<Policy> {
        let r = self.route(tenant)?;
        let p = r.primary.store.policies.get(tenant, id).await?;
        self.shadow(&r, Record::Policy(p.clone()));
        Ok(p)
    }
    async fn get_by_key(&self, tenant: &TenantId, k: &str) -> StoreResult<Policy> {
        let r = self.route(tenant)?;
        r.primary.store.policies.get_by_key(tenant, k).await
    }
    async fn update(
        &self,
        ctx: &Ctx,
        id: Uuid,
        patch: PolicyPatch,
        expected: Option<i64>,
    ) -> StoreResult<Policy> {
        let r = self.write_route(&ctx.tenant).await?;
        let k = key(Entity::Policy, &ctx.tenant, id);
        let w = r.primary.store.policies.update(ctx, id, patch, expected);
        self.write_record(&r, k, w, Record::Policy).await
    }
    async fn delete(&self, tenant: &TenantId, id: Uuid, exp: Option<i64>) -> StoreResult<()> {
        let r = self.write_route(tenant).await?;
        let k = key(Entity::Policy, tenant, id);
        let w = r.primary.store.policies.delete(tenant, id, exp);
        self.write_then(&r, k, Op::Remove, w).await
    }
    async fn list(
        &self,
        tenant: &TenantId,
        filter: &AccessFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<Policy>> {
        let r = self.route(tenant)?;
        r.primary.store.policies.list(tenant, filter, page).await
    }
}

#[async_trait]
impl RoleStore for Router {
    async fn create(&self, ctx: &Ctx, new: NewRole) -> StoreResult<Role> {
        let r = self.write_route(&ctx.tenant).await?;
        let k = key(Entity::Role, &ctx.tenant, new.id);
        let w = r.primary.store.roles.create(ctx, new);
        self.write_record(&r, k, w, Record::Role).await
    }
    async fn get(&self, tenant: &TenantId, id: Uuid) -> StoreResult<Role> {
        let r = self.route(tenant)?;
        let role = r.primary.store.roles.get(tenant, id).await?;
        self.shadow(&r, Record::Role(role.clone()));
        Ok(role)
    }
    async fn get_by_key(&self, tenant: &TenantId, k: &str) -> StoreResult<Role> {
        let r = self.route(tenant)?;
        r.primary.store.roles.get_by_key(tenant, k).await
    }
    async fn update(
        &self,
        ctx: &Ctx,
        id: Uuid,
        patch: RolePatch,
        expected: Option<i64>,
    ) -> StoreResult<Role> {
        let r = self.write_route(&ctx.tenant).await?;
        let k = key(Entity::Role, &ctx.tenant, id);
        let w = r.primary.store.roles.update(ctx, id, patch, expected);
        self.write_record(&r, k, w, Record::Role).await
    }
    async fn delete(&self, tenant: &TenantId, id: Uuid, exp: Option<i64>) -> StoreResult<()> {
        let r = self.write_route(tenant).await?;
        let k = key(Entity::Role, tenant, id);
        let w = r.primary.store.roles.delete(tenant, id, exp);
        self.write_then(&r, k, Op::Remove, w).await
    }
    async fn list(
        &self,
        tenant: &TenantId,
        filter: &AccessFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<Role>> {
        let r = self.route(tenant)?;
        r.primary.store.roles.list(tenant, filter, page).await
    }
}

#[async_trait]
impl AssignmentStore for Router {
    async fn assign(&self, ctx: &Ctx, new: NewAssignment) -> StoreResult<RoleAssignment> {
        let r = self.write_route(&ctx.tenant).await?;
        let k = key(Entity::Assignment, &ctx.tenant, new.id);
        let w = r.primary.store.assignments.assign(ctx, new);
        self.write_record(&r, k, w, Record::Assignment).await
    }
    async fn get(&self, tenant: &TenantId, id: Uuid) -> StoreResult<RoleAssignment> {
        let r = self.route(tenant)?;
        let a = r.primary.store.assignments.get(tenant, id).await?;
        self.shadow(&r, Record::Assignment(a.clone()));
        Ok(a)
    }
    async fn revoke(&self, ctx: &Ctx, id: Uuid) -> StoreResult<RoleAssignment> {
        let r = self.write_route(&ctx.tenant).await?;
        let k = key(Entity::Assignment, &ctx.tenant, id);
        let w = r.primary.store.assignments.revoke(ctx, id);
        self.write_record(&r, k, w, Record::Assignment).await
    }
    async fn list(
        &self,
        tenant: &TenantId,
        filter: &AssignmentFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<RoleAssignment>> {
        let r = self.route(tenant)?;
        r.primary.store.assignments.list(tenant, filter, page).await
    }
    async fn grants(&self, tenant: &TenantId, user_id: &str) -> StoreResult<Vec<Grant>> {
        let r = self.route(tenant)?;
        r.primary.store.assignments.grants(tenant, user_id).await
    }
    async fn ancestry(&self, tenant: &TenantId, resource: &str) -> StoreResult<Vec<String>> {
        let r = self.route(tenant)?;
        r.primary.store.assignments.ancestry(tenant, resource).await
    }
}

#[async_trait]
impl PartnerStore for Router {
    async fn register(&self, ctx: &Ctx, new: NewPartner) -> StoreResult<Partner> {
        let r = self.write_route(&ctx.tenant).await?;
        let k = key(Entity::Partner, &ctx.tenant, new.id);
        let w = r.primary.store.partners.register(ctx, new);
        self.write_then(&r, k, Op::Reload, w).await
    }
    async fn get(&self, tenant: &TenantId, id: Uuid) -> StoreResult<Partner> {
        let r = self.route(tenant)?;
        r.primary.store.partners.get(tenant, id).await
    }
    async fn update(
        &self,
        ctx: &Ctx,
        id: Uuid,
        patch: PartnerPatch,
        expected: Option<i64>,
    ) -> StoreResult<Partner> {
        let r = self.write_route(&ctx.tenant).await?;
        let k = key(Entity::Partner, &ctx.tenant, id);
        let w = r.primary.store.partners.update(ctx, id, patch, expected);
        self.write_then(&r, k, Op::Reload, w).await
    }
    async fn list(
        &self,
        tenant: &TenantId,
        status: Option<PartnerStatus>,
        page: &PageRequest,
    ) -> StoreResult<Page<Partner>> {
        let r = self.route(tenant)?;
        r.primary.store.partners.list(tenant, status, page).await
    }
    async fn transition(
        &self,
        ctx: &Ctx,
        id: Uuid,
        action: LifecycleAction,
    ) -> StoreResult<Partner> {
        let r = self.write_route(&ctx.tenant).await?;
        let k = key(Entity::Partner, &ctx.tenant, id);
        let w = r.primary.store.partners.transition(ctx, id, action);
        self.write_then(&r, k, Op::Reload, w).await
    }
    async fn create_api_key(&self, ctx: &Ctx, partner: Uuid, k: NewApiKey) -> StoreResult<ApiKey> {
        let r = self.write_route(&ctx.tenant).await?;
        let rk = key(Entity::Partner, &ctx.tenant, partner);
        let w = r.primary.store.partners.create_api_key(ctx, partner, k);
        self.write_then(&r, rk, Op::Reload, w).await
    }
    async fn list_api_keys(
        &self,
        tenant: &TenantId,
        partner: Uuid,
        status: Option<CredentialStatus>,
    ) -> StoreResult<Vec<ApiKey>> {
        let r = self.route(tenant)?;
        let s = &r.primary.store.partners;
        s.list_api_keys(tenant, partner, status).await
    }
    async fn revoke_api_key(&self, ctx: &Ctx, partner: Uuid, k: Uuid) -> StoreResult<ApiKey> {
        let r = self.write_route(&ctx.tenant).await?;
        let rk = key(Entity::Partner, &ctx.tenant, partner);
        let w = r.primary.store.partners.revoke_api_key(ctx, partner, k);
        self.write_then(&r, rk, Op::Reload, w).await
    }
    async fn rotate_api_key(
        &self,
        ctx: &Ctx,
        partner: Uuid,
        old: Uuid,
        new: NewApiKey,
    ) -> StoreResult<ApiKey> {
        let r = self.write_route(&ctx.tenant).await?;
        let k = key(Entity::Partner, &ctx.tenant, partner);
        let w = r
            .primary
            .store
            .partners
            .rotate_api_key(ctx, partner, old, new);
        self.write_then(&r, k, Op::Reload, w).await
    }
    async fn create_oauth_client(
        &self,
        ctx: &Ctx,
        partner: Uuid,
        client: NewOAuthClient,
    ) -> StoreResult<OAuthClient> {
        let r = self.write_route(&ctx.tenant).await?;
        let k = key(Entity::Partner, &ctx.tenant, partner);
        let w = r
            .primary
            .store
            .partners
            .create_oauth_client(ctx, partner, client);
        self.write_then(&r, k, Op::Reload, w).await
    }
    async fn list_oauth_clients(
        &self,
        tenant: &TenantId,
        partner: Uuid,
        status: Option<CredentialStatus>,
    ) -> StoreResult<Vec<OAuthClient>> {
        let r = self.route(tenant)?;
        let s = &r.primary.store.partners;
        s.list_oauth_clients(tenant, partner, status).await
    }
    async fn revoke_oauth_client(
        &self,
        ctx: &Ctx,
        partner: Uuid,
        client_id: &str,
    ) -> StoreResult<OAuthClient> {
        let r = self.write_route(&ctx.tenant).await?;
        let k = key(Entity::Partner, &ctx.tenant, partner);
        let w = r
            .primary
            .store
            .partners
            .revoke_oauth_client(ctx, partner, client_id);
        self.write_then(&r, k, Op::Reload, w).await
    }
    async fn create_webhook(
        &self,
        ctx: &Ctx,
        partner: Uuid,
        webhook: NewWebhook,
    ) -> StoreResult<Webhook> {
        let r = self.write_route(&ctx.tenant).await?;
        let k = key(Entity::Partner, &ctx.tenant, partner);
        let w = r
            .primary
            .store
            .partners
            .create_webhook(ctx, partner, webhook);
        self.write_then(&r, k, Op::Reload, w).await
    }
    async fn list_webhooks(&self, tenant: &TenantId, partner: Uuid) -> StoreResult<Vec<Webhook>> {
        let r = self.route(tenant)?;
        r.primary
            .store
            .partners
            .list_webhooks(tenant, partner)
            .await
    }
    async fn delete_webhook(&self, ctx: &Ctx, partner: Uuid, webhook: Uuid) -> StoreResult<()> {
        let r = self.write_route(&ctx.tenant).await?;
        let k = key(Entity::Partner, &ctx.tenant, partner);
        let w = r
            .primary
            .store
            .partners
            .delete_webhook(ctx, partner, webhook);
        self.write_then(&r, k, Op::Reload, w).await
    }
}

/// Keeps this replica's mode table in step with the persisted one.
#[derive(Clone)]
pub struct ModeSync {
    pub pg: postgres::PgStore,
    pub modes: Modes,
    pub replicator: Replicator,
    /// The global mode while none was ever persisted (`GCDR_STORAGE_MODE`).
    pub default: StorageMode,
}

impl ModeSync {
    /// Reads the persisted table and, when it changed, finishes the queued secondary
    /// copies before routing by it (so the store that becomes authoritative holds
    /// every write acknowledged before). Returns whether it changed.
    pub async fn refresh(&self) -> StoreResult<bool> {
        let table = self.pg.load_modes(self.default).await?;
        if *self.modes.current() == table {
            return Ok(false);
        }
        // No write is between routing by the old table and queueing its copy while
        // the queue drains; new writes wait for the new table.
        let _gate = self.modes.exclusive().await;
        self.replicator.flush().await;
        tracing::info!(global = %table.global, overrides = table.tenants.len(), "storage mode changed");
        self.modes.publish(table);
        Ok(true)
    }

    /// Refreshes every `interval` for ever; while PostgreSQL is unreachable the last
    /// known table stays in force.
    pub fn spawn(self, interval: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                if let Err(e) = self.refresh().await {
                    tracing::debug!(error = %e, "storage mode refresh failed; keeping the last known");
                }
                tokio::time::sleep(interval).await;
            }
        })
    }
}
