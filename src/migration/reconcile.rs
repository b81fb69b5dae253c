//! `gcdr-data reconcile`: makes the other store hold exactly what the authoritative
//! store holds, for the keys a verify report names (`--from-verify`) and the keys of
//! the open dual-write divergences of both stores (`--from-divergence`; a failed copy
//! of a moved subtree brings every record under the moved node).
//!
//! For each key the record is read from its source of truth: `--authoritative`
//! (default: the primary of the global storage mode) for verify keys; for a divergence
//! the store that did not miss the write (the other one than its `target`). If
//! present, it is copied with a versioned upsert, then, when the other store still
//! differs (it holds a newer version), overwritten regardless of version; if absent,
//! it is removed from the other store. A repaired divergence is resolved in the log it
//! came from. Keys the backfill quarantined are skipped and reported. A key that fails
//! is reported and the run goes on; keys are processed in load order (parents first)
//! and the failed ones retried in passes while a pass makes progress (the exit status
//! is non-zero when some still fail). An overwrite or removal happens only while the
//! source still holds what was read, so a write landing meanwhile is never undone.
//! Running it again changes nothing.

use std::collections::BTreeMap;

use anyhow::Context;
use uuid::Uuid;

use super::verify::Report;
use super::{Stores, ledger, load_order};
use crate::domain::TenantId;
use crate::storage::dynamodb::differing_fields;
use crate::storage::mode::{Backend, StorageMode};
use crate::storage::replica::{DivergenceLog, Record, RecordKey, Replica};
use crate::storage::router::{SUBTREE_OP, subtree_records};
use crate::storage::{Store, StoreError};

/// `gcdr-data reconcile` options.
#[derive(clap::Args, Debug, Clone)]
pub struct ReconcileArgs {
    /// A `verify --json` report: reconcile the keys of its mismatches.
    #[arg(long, value_name = "FILE")]
    pub from_verify: Option<std::path::PathBuf>,
    /// Reconcile the open divergences of both stores' dual-write logs.
    #[arg(long)]
    pub from_divergence: bool,
    /// The store verify keys are copied from (default: the global mode's primary).
    #[arg(long, value_parser = ["dynamodb", "postgres"])]
    pub authoritative: Option<String>,
    /// Report what would change; write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// A divergence record a task repairs: the log holding it and its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DivergenceRef {
    /// The store whose log holds it.
    pub log: Backend,
    /// The store that missed the write.
    pub target: Backend,
    /// Its failure count when listed: a later failure keeps it open.
    pub failures: i64,
}

/// One key to reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Task {
    pub key: RecordKey,
    /// The source of truth; the other store is made to match it.
    pub source: Backend,
    /// Divergences to resolve once the key is repaired.
    pub divergences: Vec<DivergenceRef>,
}

/// What a run did (or, dry, would do). Keys as `entity tenant id`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub dry_run: bool,
    /// Records written to the other store.
    pub copied: Vec<String>,
    /// Records removed from the other store (absent in the source).
    pub removed: Vec<String>,
    /// Keys already equal in both stores.
    pub already_equal: usize,
    /// Divergence records resolved.
    pub resolved: usize,
    /// Keys skipped because the backfill quarantined them.
    pub skipped_quarantined: Vec<String>,
    /// Keys that could not be reconciled, with the reason.
    pub failed: Vec<(String, String)>,
}

impl Summary {
    /// Whether the run changed (or would change) anything.
    pub fn changed(&self) -> bool {
        !self.copied.is_empty() || !self.removed.is_empty() || self.resolved > 0
    }
}

fn other(b: Backend) -> Backend {
    match b {
        Backend::Dynamodb => Backend::Postgres,
        Backend::Postgres => Backend::Dynamodb,
    }
}

fn describe(k: &RecordKey) -> String {
    format!("{} {} {}", k.entity.as_str(), k.tenant.as_str(), k.id)
}

fn replica(stores: &Stores, b: Backend) -> &dyn Replica {
    match b {
        Backend::Dynamodb => &stores.dynamo,
        Backend::Postgres => &stores.pg,
    }
}

fn log(stores: &Stores, b: Backend) -> &dyn DivergenceLog {
    match b {
        Backend::Dynamodb => &stores.dynamo,
        Backend::Postgres => &stores.pg,
    }
}

/// `gcdr-data reconcile`: gathers the keys, reconciles them and prints the summary.
pub async fn main(stores: &Stores, args: ReconcileArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.from_verify.is_some() || args.from_divergence,
        "nothing to reconcile: give --from-verify FILE and/or --from-divergence"
    );
    let authoritative = match args.authoritative.as_deref() {
        Some("dynamodb") => Backend::Dynamodb,
        Some("postgres") => Backend::Postgres,
        Some(other) => anyhow::bail!("--authoritative {other:?}: expected dynamodb or postgres"),
        None => stores
            .pg
            .load_modes(StorageMode::Postgres)
            .await
            .context("read the storage mode")?
            .global
            .primary(),
    };
    let mut tasks = Vec::new();
    let mut unusable = Vec::new();
    if let Some(path) = &args.from_verify {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        let report: Report = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a verify --json report", path.display()))?;
        let (t, bad) = tasks_from_report(&report, authoritative);
        tasks.extend(t);
        unusable.extend(bad);
    }
    if args.from_divergence {
        tasks.extend(tasks_from_divergences(stores).await?);
    }
    println!(
        "reconciling {} keys (verify keys from {}){}",
        tasks.len(),
        authoritative.as_str(),
        if args.dry_run { ", dry run" } else { "" }
    );
    let mut summary = reconcile(stores, tasks, args.dry_run).await?;
    summary.failed.extend(unusable);
    print_summary(&summary);
    anyhow::ensure!(
        summary.failed.is_empty(),
        "{} keys could not be reconciled (listed above); fix the cause and run it again",
        summary.failed.len()
    );
    Ok(())
}

/// Prints a summary.
pub fn print_summary(s: &Summary) {
    let verb = |done: &'static str, dry: &'static str| if s.dry_run { dry } else { done };
    println!("{}: {}", verb("copied", "would copy"), s.copied.len());
    for k in &s.copied {
        println!("  {k}");
    }
    println!("{}: {}", verb("removed", "would remove"), s.removed.len());
    for k in &s.removed {
        println!("  {k}");
    }
    println!("already equal: {}", s.already_equal);
    println!(
        "{}: {}",
        verb("divergences resolved", "divergences to resolve"),
        s.resolved
    );
    println!("skipped (quarantined): {}", s.skipped_quarantined.len());
    for k in &s.skipped_quarantined {
        println!("  {k}");
    }
    println!("failed: {}", s.failed.len());
    for (k, why) in &s.failed {
        println!("  {k}: {why}");
    }
}

/// The tasks of a verify report's mismatches (source: `authoritative`), and the
/// mismatches that name no record key (with why).
pub fn tasks_from_report(
    report: &Report,
    authoritative: Backend,
) -> (Vec<Task>, Vec<(String, String)>) {
    let mut tasks = Vec::new();
    let mut bad = Vec::new();
    for m in &report.mismatches {
        let key = (|| {
            Some(RecordKey {
                entity: super::parse_entity(&m.entity)?,
                tenant: TenantId::parse(&m.tenant)?,
                id: Uuid::parse_str(&m.id).ok()?,
            })
        })();
        match key {
            Some(key) => tasks.push(Task {
                key,
                source: authoritative,
                divergences: Vec::new(),
            }),
            None => bad.push((
                format!("{} {} {}", m.entity, m.tenant, m.id),
                "not a record key (unknown entity, invalid tenant or id)".to_owned(),
            )),
        }
    }
    (tasks, bad)
}

/// The tasks of the open divergences of both stores' logs (source: the store that did
/// not miss the write). A failed copy of a moved subtree names only the moved node, so
/// every record under it in the source becomes a task too (the divergence is resolved
/// with the node's).
pub async fn tasks_from_divergences(stores: &Stores) -> anyhow::Result<Vec<Task>> {
    let mut tasks = Vec::new();
    for b in [Backend::Postgres, Backend::Dynamodb] {
        let open = log(stores, b)
            .list(None)
            .await
            .with_context(|| format!("list the {} divergence log", b.as_str()))?;
        for d in open {
            let source = other(d.target);
            if d.operation == SUBTREE_OP {
                for key in subtree_keys(stores, source, &d.key).await? {
                    if key != d.key {
                        tasks.push(Task {
                            key,
                            source,
                            divergences: Vec::new(),
                        });
                    }
                }
            }
            tasks.push(Task {
                key: d.key,
                source,
                divergences: vec![DivergenceRef {
                    log: b,
                    target: d.target,
                    failures: d.failures,
                }],
            });
        }
    }
    Ok(tasks)
}

/// The keys of the subtree of `key` in `source` (none when the node is gone there).
async fn subtree_keys(
    stores: &Stores,
    source: Backend,
    key: &RecordKey,
) -> anyhow::Result<Vec<RecordKey>> {
    let (store, replica): (Store, &dyn Replica) = match source {
        Backend::Postgres => (Store::postgres(stores.pg.clone()), &stores.pg),
        Backend::Dynamodb => (Store::dynamodb(stores.dynamo.clone()), &stores.dynamo),
    };
    match subtree_records(&store, replica, key, SUBTREE_READ_TIMEOUT).await {
        Ok(records) => Ok(records.iter().map(Record::key).collect()),
        Err(StoreError::NotFound { .. }) => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| {
            format!(
                "read the subtree of {} {} {} in {}",
                key.entity.as_str(),
                key.tenant.as_str(),
                key.id,
                source.as_str()
            )
        }),
    }
}

/// The budget of each read of a failed subtree copy's records.
const SUBTREE_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// What reconciling one key did.
enum Outcome {
    Equal,
    Copied,
    Removed,
    Quarantined,
}

/// Reconciles `tasks` (merged by key and source; parents first); with `dry_run`
/// nothing is written. Errors of single keys are in [`Summary::failed`].
pub async fn reconcile(
    stores: &Stores,
    tasks: Vec<Task>,
    dry_run: bool,
) -> anyhow::Result<Summary> {
    let mut merged: BTreeMap<(usize, String, Uuid, Backend), Task> = BTreeMap::new();
    for t in tasks {
        let k = (
            load_order(t.key.entity),
            t.key.tenant.as_str().to_owned(),
            t.key.id,
            t.source,
        );
        match merged.get_mut(&k) {
            Some(m) => m.divergences.extend(t.divergences),
            None => {
                merged.insert(k, t);
            }
        }
    }
    let mut summary = Summary {
        dry_run,
        ..Summary::default()
    };
    let mut pending: Vec<Task> = merged
        .into_values()
        .map(|mut task| {
            task.divergences.sort();
            task.divergences.dedup();
            task
        })
        .collect();
    // A child copied before its parent (or a parent removed before its children), or a
    // key whose source changed meanwhile, fails; passes repeat while they make progress.
    loop {
        let before = pending.len();
        let mut failed = Vec::new();
        for task in pending {
            match one(stores, &task, dry_run).await {
                Ok(outcome) => record(&mut summary, &task, outcome),
                Err(e) => failed.push((task, e)),
            }
        }
        if failed.is_empty() || failed.len() == before {
            summary.failed = failed
                .into_iter()
                .map(|(task, e)| (describe(&task.key), format!("{e:#}")))
                .collect();
            break;
        }
        pending = failed.into_iter().map(|(task, _)| task).collect();
    }
    Ok(summary)
}

fn record(summary: &mut Summary, task: &Task, outcome: Outcome) {
    let k = describe(&task.key);
    match outcome {
        Outcome::Equal => summary.already_equal += 1,
        Outcome::Copied => summary.copied.push(k),
        Outcome::Removed => summary.removed.push(k),
        Outcome::Quarantined => {
            summary.skipped_quarantined.push(k);
            return;
        }
    }
    summary.resolved += task.divergences.len();
}

/// Reconciles one key; resolves its divergences once both stores agree.
async fn one(stores: &Stores, task: &Task, dry_run: bool) -> anyhow::Result<Outcome> {
    let key = &task.key;
    let ledger_key = (key.tenant.as_str().to_owned(), key.id.to_string());
    let quarantined = {
        let mut conn = stores.pg.conn().await?;
        ledger::quarantined_for(&mut conn, key.entity, std::slice::from_ref(&ledger_key)).await?
    };
    if !quarantined.is_empty() {
        return Ok(Outcome::Quarantined);
    }
    let source = replica(stores, task.source);
    let dest = replica(stores, other(task.source));
    let want = source
        .load(key)
        .await
        .with_context(|| format!("read from {}", task.source.as_str()))?;
    let have = dest
        .load(key)
        .await
        .with_context(|| format!("read from {}", other(task.source).as_str()))?;
    let outcome = match (&want, &have) {
        (None, None) => Outcome::Equal,
        (Some(w), Some(h)) if differing_fields(w, h).is_empty() => Outcome::Equal,
        (None, Some(_)) => {
            if !dry_run {
                // Not if it was created meanwhile (the next pass sees it).
                anyhow::ensure!(
                    source
                        .load(key)
                        .await
                        .context("re-read the source")?
                        .is_none(),
                    "created in {} while reconciling; retrying",
                    task.source.as_str()
                );
                dest.remove(key).await.context("remove")?;
            }
            Outcome::Removed
        }
        (Some(w), _) => {
            if !dry_run {
                dest.upsert(w).await.context("upsert")?;
                let now = dest.load(key).await.context("re-read")?;
                if now
                    .as_ref()
                    .is_none_or(|n| !differing_fields(w, n).is_empty())
                {
                    // Overwriting ignores versions: only with the source still as read,
                    // so a write that landed meanwhile is never moved backwards.
                    let again = source.load(key).await.context("re-read the source")?;
                    anyhow::ensure!(
                        again
                            .as_ref()
                            .is_some_and(|a| differing_fields(w, a).is_empty()),
                        "changed in {} while reconciling; retrying",
                        task.source.as_str()
                    );
                    dest.overwrite(w).await.context("overwrite")?;
                    let after = dest.load(key).await.context("re-read")?;
                    let fields = match &after {
                        Some(a) => differing_fields(w, a),
                        None => vec!["<absent>".to_owned()],
                    };
                    anyhow::ensure!(
                        fields.is_empty(),
                        "still differs after overwrite: {}",
                        fields.join(",")
                    );
                }
            }
            Outcome::Copied
        }
    };
    if !dry_run {
        for d in &task.divergences {
            log(stores, d.log)
                .resolve(key, d.target, d.failures)
                .await
                .with_context(|| format!("resolve the divergence in {}", d.log.as_str()))?;
        }
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migration::verify::{Mismatch, MismatchKind};
    use crate::storage::replica::Entity;

    #[test]
    fn report_mismatches_become_tasks_and_bad_keys_are_set_aside() {
        let id = Uuid::new_v4();
        let m = |entity: &str, id: String| Mismatch {
            entity: entity.into(),
            tenant: "tenant-a".into(),
            id,
            kind: MismatchKind::Fields,
            fields: vec!["name".into()],
        };
        let report = Report {
            tables: vec![],
            mismatches: vec![
                m("customer", id.to_string()),
                m("customer", "legacy-7".into()),
                m("widget", id.to_string()),
            ],
            sample: None,
            parity: false,
        };
        let (tasks, bad) = tasks_from_report(&report, Backend::Dynamodb);
        assert_eq!(tasks.len(), 1);
        assert_eq!(tasks[0].key.entity, Entity::Customer);
        assert_eq!(tasks[0].key.id, id);
        assert_eq!(tasks[0].source, Backend::Dynamodb);
        assert_eq!(bad.len(), 2);
        assert!(bad[0].0.contains("legacy-7"));
    }
}
