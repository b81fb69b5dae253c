//! The "in use" rules on DynamoDB: a customer with child customers or assets, an asset
//! with child assets or devices, a policy named by a role and a role with an
//! assignment in force cannot be deleted.
//!
//! DynamoDB cannot check "no item of that index names me" inside a transaction, so the
//! rule is enforced with a mark on the parent. Every write that adds a dependent (a
//! create, a move, a role naming the policy, an assignment of the role) changes the
//! parent's [`DEPENDENTS_MARK`] in the same transaction, conditioned on the parent
//! still existing as it was read. A delete reads the parent with its mark, checks for
//! dependents, and deletes only if the mark is unchanged. So a dependent added after
//! the check cancels the delete (which then retries and finds it), and a dependent
//! added after the delete finds no parent: neither side is orphaned.
//!
//! The dependents checks read GSIs, which lag their table. A dependent added just
//! before the delete read its parent may not show yet, so a delete whose parent gained
//! a dependent less than the index settle time ago (`GCDR_DYNAMODB_INDEX_SETTLE_MS`,
//! [`INDEX_SETTLE`] by default) waits for the index to catch up first.
//! The mark holds the time of the last addition for that purpose. Clocks of replicas
//! are assumed to agree within that margin.
//!
//! The mark is an extra attribute: legacy readers ignore it, records never carry it,
//! and an overwrite keeps it (it only sets the attributes it models).

use std::time::Duration;

use aws_sdk_dynamodb::types::{AttributeValue, Delete, TransactWriteItem, Update};
use chrono::Utc;
use std::collections::HashMap;
use uuid::Uuid;

use super::{Item, Overwrite, key, n, s};
use crate::storage::{StoreError, StoreResult};

/// The parent's mark: `<unix ms of the last addition> <random>`.
pub const DEPENDENTS_MARK: &str = "gcdrDependentsMark";

/// How long a GSI is assumed to lag its table at most, by default. DynamoDB
/// propagates "within a fraction of a second" under normal conditions; a table whose
/// indexes are throttled can lag longer, so it is configurable.
pub const INDEX_SETTLE: Duration = Duration::from_secs(1);

/// How many times a move reads its subtree while a mark in it is fresh (waiting out the
/// index lag in between) before it gives up.
pub(super) const MOVE_READS: usize = 3;

/// A move whose subtree kept gaining dependents while it waited for the index.
pub(super) fn still_gaining() -> StoreError {
    StoreError::FailedPrecondition {
        reason: "CONCURRENT_HIERARCHY_CHANGE",
        message: "the subtree keeps gaining children or devices; retry".into(),
    }
}

/// A transaction item that holds only if item `id` of `table` exists and each of
/// `attrs` still has the given value, and that marks the item as having just gained
/// a dependent.
pub(super) fn touch_item(
    table: &str,
    tenant: &str,
    id: &str,
    attrs: &[(&str, AttributeValue)],
) -> StoreResult<TransactWriteItem> {
    let mut condition = "attribute_exists(id)".to_owned();
    let mut names = HashMap::from([("#mark".to_owned(), DEPENDENTS_MARK.to_owned())]);
    let mark = format!(
        "{} {}",
        Utc::now().timestamp_millis(),
        Uuid::new_v4().simple()
    );
    let mut values = HashMap::from([(":mark".to_owned(), s(mark))]);
    for (i, (k, v)) in attrs.iter().enumerate() {
        condition.push_str(&format!(" AND #c{i} = :c{i}"));
        names.insert(format!("#c{i}"), (*k).to_owned());
        values.insert(format!(":c{i}"), v.clone());
    }
    let update = Update::builder()
        .table_name(table)
        .set_key(Some(key(tenant, id)))
        .update_expression("SET #mark = :mark")
        .condition_expression(condition)
        .set_expression_attribute_names(Some(names))
        .set_expression_attribute_values(Some(values))
        .build()
        .map_err(|e| StoreError::Internal(Box::new(e)))?;
    Ok(TransactWriteItem::builder().update(update).build())
}

/// A parent's mark as its delete read it.
#[derive(Clone, Debug)]
pub(super) struct Mark(Option<String>);

impl Mark {
    pub(super) fn of(item: &Item) -> Self {
        Self(
            item.get(DEPENDENTS_MARK)
                .and_then(|v| v.as_s().ok())
                .cloned(),
        )
    }

    /// How long until a dependent added at the mark surely shows in the indexes,
    /// which lag the table by up to `settle`.
    pub(super) fn unsettled_for(&self, settle: Duration) -> Option<Duration> {
        let at: i64 = self.0.as_deref()?.split(' ').next()?.parse().ok()?;
        let age = Utc::now().timestamp_millis().saturating_sub(at).max(0);
        let left = i64::try_from(settle.as_millis()).ok()? - age;
        (left > 0).then(|| Duration::from_millis(left.unsigned_abs()))
    }

    /// Waits until a dependent added at the mark surely shows in the indexes.
    pub(super) async fn settle(&self, settle: Duration) {
        if let Some(wait) = self.unsettled_for(settle) {
            tokio::time::sleep(wait).await;
        }
    }

    /// The condition that the item's mark is still this one, with its names and
    /// values added to `names` and `values`.
    fn unchanged(
        &self,
        names: &mut HashMap<String, String>,
        values: &mut HashMap<String, AttributeValue>,
    ) -> &'static str {
        names.insert("#mark".into(), DEPENDENTS_MARK.into());
        match &self.0 {
            Some(mark) => {
                values.insert(":mark".into(), s(mark));
                "#mark = :mark"
            }
            None => "attribute_not_exists(#mark)",
        }
    }

    /// `w`, holding only while the item's mark is still this one: a move of the
    /// item must not miss a dependent added to it since it was read.
    pub(super) fn guard(&self, mut w: Overwrite) -> Overwrite {
        let unchanged = self.unchanged(&mut w.names, &mut w.values);
        w.condition = Some(match w.condition {
            Some(c) => format!("({c}) AND {unchanged}"),
            None => unchanged.to_owned(),
        });
        w
    }

    /// The delete of parent `id` if its version is `version` and its mark unchanged,
    /// as one item of a TransactWriteItems.
    pub(super) fn delete_item(
        &self,
        table: &str,
        tenant: &str,
        id: &str,
        version: i64,
    ) -> StoreResult<TransactWriteItem> {
        let mut names = HashMap::from([("#ver".to_owned(), "version".to_owned())]);
        let mut values = HashMap::from([(":v".to_owned(), n(version))]);
        let unchanged = self.unchanged(&mut names, &mut values);
        let delete = Delete::builder()
            .table_name(table)
            .set_key(Some(key(tenant, id)))
            .condition_expression(format!("#ver = :v AND {unchanged}"))
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .build()
            .map_err(|e| StoreError::Internal(Box::new(e)))?;
        Ok(TransactWriteItem::builder().delete(delete).build())
    }
}

/// Whether a move may write what it read (`attempt` counts its reads from 0): `false`
/// after waiting out the index lag of a fresh mark among `marks` (read again), an
/// error when its last read still has one.
pub(super) async fn settled<'a>(
    attempt: usize,
    settle: Duration,
    marks: impl IntoIterator<Item = &'a Mark>,
) -> StoreResult<bool> {
    let Some(wait) = marks
        .into_iter()
        .filter_map(|m| m.unsettled_for(settle))
        .max()
    else {
        return Ok(true);
    };
    if attempt + 1 >= MOVE_READS {
        return Err(still_gaining());
    }
    tokio::time::sleep(wait).await;
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark_at(ms: i64) -> Mark {
        Mark(Some(format!("{ms} abc")))
    }

    #[test]
    fn a_fresh_mark_waits_out_the_index_lag_and_an_old_or_absent_one_does_not() {
        let now = Utc::now().timestamp_millis();
        let wait = mark_at(now - 300)
            .unsettled_for(INDEX_SETTLE)
            .expect("fresh");
        assert!(wait <= Duration::from_millis(700) && wait >= Duration::from_millis(500));
        assert_eq!(mark_at(now - 5_000).unsettled_for(INDEX_SETTLE), None);
        assert_eq!(Mark(None).unsettled_for(INDEX_SETTLE), None);
        assert_eq!(
            Mark(Some("garbage".into())).unsettled_for(INDEX_SETTLE),
            None
        );
        // A mark from a clock ahead of ours waits at most the settle time.
        let ahead = mark_at(now + 60_000)
            .unsettled_for(INDEX_SETTLE)
            .expect("ahead");
        assert!(ahead <= INDEX_SETTLE);
    }
}
