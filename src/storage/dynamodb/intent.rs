//! The copy intent of a dual write with DynamoDB authoritative, recorded with the
//! write's first request.
//!
//! The router runs each write inside [`with_intent`]. When the write sends its first
//! mutating request:
//! - a TransactWriteItems with room for one more item carries the intent's Put into
//!   the outbox table: the intent commits if and only if that transaction does, and
//!   costs no request of its own (creates, deletes, the first chunk of a move);
//! - a single-item write (an update, a versioned delete) is sent as a TransactWriteItems
//!   of that item and the intent's Put instead of an UpdateItem or DeleteItem: one
//!   request still, and the intent commits if and only if the write does;
//! - a transaction with no room left (100 items) has the intent's PutItem sent
//!   alongside it, concurrently.
//!
//! A transaction that carried the intent and was cancelled leaves the intent to the
//! write's next request. A write that succeeded without sending any request the
//! intent could ride (none of this store's writes, but a guard) has it written after.

use std::future::Future;
use std::sync::{Arc, Mutex};

use aws_sdk_dynamodb::types::{Put, TransactWriteItem};
use tokio::task::JoinHandle;

use super::ItemWriter;
use crate::storage::replica::{Intent, Outbox};
use crate::storage::{StoreError, StoreResult};

tokio::task_local! {
    /// The intent of the write running in this task.
    static INTENT: Pending;
}

struct Pending {
    intent: Intent,
    /// Where an intent sent alongside a request is written (the store's own outbox).
    outbox: Arc<dyn Outbox>,
    state: Mutex<State>,
}

enum State {
    /// Not recorded yet.
    Waiting,
    /// In a transaction in flight.
    Riding,
    /// Committed with a transaction of the write.
    Committed,
    /// Being written by its own PutItem.
    Alongside(JoinHandle<StoreResult<()>>),
}

/// Runs `write` (a store write of the DynamoDB store whose outbox is `outbox`) with
/// `intent` recorded as the module docs say. Returns the write's result and the
/// intent's: `None` when none was written because the write failed before sending
/// anything, or its transactions carrying the intent did not commit (a transaction
/// whose outcome is unknown may have committed it: it is then replayed later).
pub async fn with_intent<T>(
    intent: &Intent,
    outbox: Arc<dyn Outbox>,
    write: impl Future<Output = StoreResult<T>>,
) -> (StoreResult<T>, Option<StoreResult<()>>) {
    let pending = Pending {
        intent: intent.clone(),
        outbox: outbox.clone(),
        state: Mutex::new(State::Waiting),
    };
    INTENT
        .scope(pending, async {
            let out = write.await;
            let state = INTENT.with(|p| std::mem::replace(&mut *p.lock(), State::Waiting));
            let noted = match state {
                State::Committed => Some(Ok(())),
                State::Alongside(h) => Some(
                    h.await
                        .unwrap_or_else(|e| Err(StoreError::Internal(e.into()))),
                ),
                State::Waiting | State::Riding => match &out {
                    Ok(_) => Some(outbox.intend(intent).await),
                    Err(_) => None,
                },
            };
            (out, noted)
        })
        .await
}

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends the intent's PutItem on its own, unless already recorded or riding.
    fn alongside(&self, state: &mut State) {
        if matches!(state, State::Waiting) {
            let (outbox, intent) = (self.outbox.clone(), self.intent.clone());
            *state = State::Alongside(tokio::spawn(async move { outbox.intend(&intent).await }));
        }
    }
}

/// The outbox item of `intent` (what [`Outbox::intend`] puts).
pub(super) fn intent_item(intent: &Intent) -> super::Item {
    ItemWriter::new(intent.key.tenant.as_str(), &intent.id.to_string())
        .s("entity", intent.key.entity.as_str())
        .s("entityId", intent.key.id.to_string())
        .s("targetStore", intent.target.as_str())
        .b("subtree", intent.subtree)
        .s("createdAt", super::item::iso(super::item::now()))
        .finish()
}

/// Called before a TransactWriteItems of `items` is sent: adds the pending intent's
/// Put into `outbox_table` when there is room (`limit` items at most), or sends it
/// alongside. `true` when it rides; then [`landed`] must follow.
pub(super) fn ride(items: &mut Vec<TransactWriteItem>, outbox_table: &str, limit: usize) -> bool {
    INTENT
        .try_with(|p| {
            let mut state = p.lock();
            if !matches!(*state, State::Waiting) {
                return false;
            }
            if items.len() >= limit {
                p.alongside(&mut state);
                return false;
            }
            let put = Put::builder()
                .table_name(outbox_table)
                .set_item(Some(intent_item(&p.intent)))
                .build();
            match put {
                Ok(put) => {
                    items.push(TransactWriteItem::builder().put(put).build());
                    *state = State::Riding;
                    true
                }
                Err(_) => {
                    p.alongside(&mut state);
                    false
                }
            }
        })
        .unwrap_or(false)
}

/// The outcome of a transaction the intent rode in ([`ride`] returned `true`).
pub(super) fn landed(rode: bool, committed: bool) {
    if rode {
        let _ = INTENT.try_with(|p| {
            *p.lock() = if committed {
                State::Committed
            } else {
                State::Waiting
            };
        });
    }
}

/// Whether this task runs a dual write whose intent is not recorded yet: its next
/// mutating request must carry it (be a transaction [`ride`] can add it to).
pub(super) fn waiting() -> bool {
    INTENT
        .try_with(|p| matches!(*p.lock(), State::Waiting))
        .unwrap_or(false)
}
