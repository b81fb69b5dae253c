//! The transactions of the store's writes, and the copy intent that dual write
//! commits with them (a transactional outbox).
//!
//! In a dual mode with PostgreSQL authoritative, the router runs each write inside
//! [`with_intent`]: the write's transaction then inserts the copy's row into
//! `replication_outbox` in the statement batch that begins it (`BEGIN; INSERT ...`,
//! one round trip), so the intent commits if and only if the write does, and costs no
//! round trip of its own (a one-statement write gets a transaction for it, one round
//! trip more). An intent that cannot be inserted fails its write: the copy would
//! otherwise be lost to a crash.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use diesel::result::Error as DieselError;
use diesel_async::{AnsiTransactionManager, AsyncPgConnection, TransactionManager};

use crate::storage::replica::Intent;

tokio::task_local! {
    /// The intent of the write running in this task.
    static INTENT: Pending;
}

struct Pending {
    /// `BEGIN` and the intent's insert.
    begin: String,
    /// A transaction carrying it committed.
    committed: AtomicBool,
}

/// Runs `write` (a store write) with `intent` committed in its transaction; also
/// says whether it was (`false` when the write committed no transaction: it failed
/// before its transaction, or it had none).
pub async fn with_intent<T>(intent: &Intent, write: impl Future<Output = T>) -> (T, bool) {
    let pending = Pending {
        begin: begin_with(intent),
        committed: AtomicBool::new(false),
    };
    INTENT
        .scope(pending, async {
            let out = write.await;
            let committed = INTENT.with(|p| p.committed.load(Ordering::Acquire));
            (out, committed)
        })
        .await
}

/// `BEGIN` and the insert of `intent`. Text values go in hex, so no tenant id can
/// break out of its literal.
fn begin_with(intent: &Intent) -> String {
    let text = |v: &str| {
        format!(
            "convert_from(decode('{}', 'hex'), 'UTF8')",
            hex(v.as_bytes())
        )
    };
    format!(
        "BEGIN; INSERT INTO replication_outbox \
         (intent_id, tenant_id, entity, entity_id, target_store, subtree) \
         VALUES ('{}'::uuid, {}, {}, {}, {}, {}) ON CONFLICT DO NOTHING",
        intent.id,
        text(intent.key.tenant.as_str()),
        text(intent.key.entity.as_str()),
        text(&intent.key.id.to_string()),
        text(intent.target.as_str()),
        intent.subtree,
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An async closure over the connection whose future is nameable (so its `Send` can
/// be required), as diesel-async's own transaction requires.
pub trait TxBody<T, R>: AsyncFnOnce(T) -> R + FnOnce(T) -> <Self as TxBody<T, R>>::Fut {
    type Fut: Future<Output = R>;
}

impl<F, T, Fut, R> TxBody<T, R> for F
where
    F: AsyncFnOnce(T) -> R + FnOnce(T) -> Fut,
    Fut: Future<Output = R>,
{
    type Fut = Fut;
}

/// Runs `body` in a transaction, as `AsyncConnection::transaction` does (a savepoint
/// when nested). A top-level transaction inside [`with_intent`] begins with the
/// intent's insert.
pub async fn tx<R, E, F>(conn: &mut AsyncPgConnection, body: F) -> Result<R, E>
where
    for<'r> F: TxBody<&'r mut AsyncPgConnection, Result<R, E>, Fut: Send> + Send,
    E: From<DieselError> + Send,
    R: Send,
{
    let top = AnsiTransactionManager::transaction_manager_status_mut(conn)
        .transaction_depth()?
        .is_none();
    let begin = if top {
        INTENT.try_with(|p| p.begin.clone()).ok()
    } else {
        None
    };
    match &begin {
        Some(sql) => {
            if let Err(e) = AnsiTransactionManager::begin_transaction_sql(conn, sql).await {
                // BEGIN may have run and the insert failed: PostgreSQL then holds an
                // aborted transaction that diesel does not know of, which would fail
                // every later statement on this pooled connection.
                let _ = diesel_async::SimpleAsyncConnection::batch_execute(conn, "ROLLBACK").await;
                return Err(e.into());
            }
        }
        None => AnsiTransactionManager::begin_transaction(conn).await?,
    }
    match body(&mut *conn).await {
        Ok(value) => {
            AnsiTransactionManager::commit_transaction(conn).await?;
            if begin.is_some() {
                let _ = INTENT.try_with(|p| p.committed.store(true, Ordering::Release));
            }
            Ok(value)
        }
        Err(e) => match AnsiTransactionManager::rollback_transaction(conn).await {
            Ok(()) | Err(DieselError::BrokenTransactionManager) => Err(e),
            Err(rollback) => Err(rollback.into()),
        },
    }
}

/// A one-statement write: in a transaction only inside [`with_intent`] (to carry
/// the intent), else on its own.
pub async fn tx_if_copied<R, E, F>(conn: &mut AsyncPgConnection, body: F) -> Result<R, E>
where
    for<'r> F: TxBody<&'r mut AsyncPgConnection, Result<R, E>, Fut: Send> + Send,
    E: From<DieselError> + Send,
    R: Send,
{
    if INTENT.try_with(|_| ()).is_ok() {
        tx(conn, body).await
    } else {
        body(conn).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TenantId;
    use crate::storage::mode::Backend;
    use crate::storage::replica::{Entity, RecordKey};

    #[test]
    fn the_intent_insert_holds_text_values_only_as_hex() {
        let intent = Intent {
            id: uuid::Uuid::nil(),
            key: RecordKey {
                entity: Entity::Customer,
                tenant: TenantId::parse("tenant.a:1").expect("a valid tenant id"),
                id: uuid::Uuid::nil(),
            },
            target: Backend::Dynamodb,
            subtree: true,
        };
        let sql = begin_with(&intent);
        assert!(sql.starts_with("BEGIN; INSERT INTO replication_outbox"));
        // Text values only as hex.
        assert!(!sql.contains("tenant.a:1") && !sql.contains("'customer'"));
        assert!(sql.contains(&hex(b"tenant.a:1")));
        assert!(sql.ends_with(", true) ON CONFLICT DO NOTHING"));
    }
}
