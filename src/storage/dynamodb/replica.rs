//! DynamoDB as a replica (versioned overwrites of whole items) and its divergence log
//! (`gcdr-replication-divergence-<stage>`), used while DynamoDB is authoritative.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use uuid::Uuid;

use super::{DynamoStore, Expect, Item, ItemReader, Overwrite, n, s, sdk_error};
use super::{access, assets, customers, devices, partners};
use crate::domain::TenantId;
use crate::storage::StoreResult;
use crate::storage::mode::Backend;
use crate::storage::replica::{
    Divergence, DivergenceLog, Entity, Intent, Outbox, Record, RecordKey, Replica,
};

/// The record as the legacy item this backend stores: also the normalized form in
/// which two stores' copies are compared attribute by attribute.
pub fn record_item(r: &Record) -> StoreResult<Item> {
    match r {
        Record::Customer(c) => customers::to_item(c),
        Record::Asset(a) => assets::to_item(a),
        Record::Device(d) => devices::to_item(d),
        Record::Policy(p) => access::policy_to_item(p),
        Record::Role(role) => access::role_to_item(role),
        Record::Assignment(a) => access::assignment_to_item(a),
        Record::Partner(p) => partners::to_item(p),
    }
}

pub(super) fn record_from_item(entity: Entity, item: &Item) -> StoreResult<Record> {
    Ok(match entity {
        Entity::Customer => Record::Customer(customers::from_item(item)?),
        Entity::Asset => Record::Asset(assets::from_item(item)?),
        Entity::Device => Record::Device(devices::from_item(item)?),
        Entity::Policy => Record::Policy(access::policy_from_item(item)?),
        Entity::Role => Record::Role(access::role_from_item(item)?),
        Entity::Assignment => Record::Assignment(access::assignment_from_item(item)?),
        Entity::Partner => Record::Partner(Box::new(partners::from_item(item)?)),
    })
}

fn record_overwrite(r: &Record, expect: Expect) -> StoreResult<Overwrite> {
    match r {
        Record::Customer(c) => customers::overwrite(c, expect),
        Record::Asset(a) => assets::overwrite(a, expect),
        Record::Device(d) => devices::overwrite(d, expect),
        Record::Policy(p) => access::policy_overwrite(p, expect),
        Record::Role(role) => access::role_overwrite(role, expect),
        Record::Assignment(a) => access::assignment_overwrite(a, expect),
        Record::Partner(p) => partners::overwrite(p, expect),
    }
}

impl DynamoStore {
    /// The table holding `entity`.
    pub fn table_of(&self, entity: Entity) -> &str {
        let t = &self.tables;
        match entity {
            Entity::Customer => &t.customers,
            Entity::Asset => &t.assets,
            Entity::Device => &t.devices,
            Entity::Policy => &t.policies,
            Entity::Role => &t.roles,
            Entity::Assignment => &t.role_assignments,
            Entity::Partner => &t.partners,
        }
    }
}

#[async_trait]
impl Replica for DynamoStore {
    fn backend(&self) -> Backend {
        Backend::Dynamodb
    }

    async fn load(&self, key: &RecordKey) -> StoreResult<Option<Record>> {
        let table = self.table_of(key.entity);
        let item = self
            .get_item(table, key.tenant.as_str(), &key.id.to_string())
            .await?;
        item.map(|i| record_from_item(key.entity, &i)).transpose()
    }

    async fn upsert(&self, record: &Record) -> StoreResult<bool> {
        self.timed("replica.upsert", async {
            let key = record.key();
            let w = record_overwrite(record, Expect::NotNewer(record.version()))?;
            DynamoStore::overwrite(self, self.table_of(key.entity), w).await
        })
        .await
    }

    async fn overwrite(&self, record: &Record) -> StoreResult<()> {
        self.timed("replica.overwrite", async {
            let key = record.key();
            let w = record_overwrite(record, Expect::Any)?;
            DynamoStore::overwrite(self, self.table_of(key.entity), w).await?;
            Ok(())
        })
        .await
    }

    async fn remove(&self, key: &RecordKey) -> StoreResult<()> {
        self.timed("replica.remove", async {
            self.client
                .delete_item()
                .table_name(self.table_of(key.entity))
                .set_key(Some(super::key(key.tenant.as_str(), &key.id.to_string())))
                .send()
                .await
                .map_err(sdk_error)?;
            Ok(())
        })
        .await
    }

    async fn children(&self, key: &RecordKey) -> StoreResult<Vec<RecordKey>> {
        let (table, attr, name) = match key.entity {
            Entity::Customer => (&self.tables.customers, "parentCustomerId", "customer"),
            Entity::Asset => (&self.tables.assets, "parentAssetId", "asset"),
            _ => return Ok(Vec::new()),
        };
        self.timed("replica.children", async {
            let q = super::Query::index_eq(
                table,
                "gsi-parent",
                key.tenant.as_str(),
                attr,
                &key.id.to_string(),
            );
            let items = self.query(&q, usize::MAX).await?;
            items
                .iter()
                .map(|item| {
                    let r = ItemReader::new(name, item);
                    let id =
                        Uuid::parse_str(&r.s("id")?).map_err(|_| r.bad("id", "is not a UUID"))?;
                    Ok(RecordKey {
                        entity: key.entity,
                        tenant: key.tenant.clone(),
                        id,
                    })
                })
                .collect()
        })
        .await
    }
}

fn divergence_id(key: &RecordKey, target: Backend) -> String {
    format!("{}#{}#{}", key.entity.as_str(), key.id, target.as_str())
}

#[async_trait]
impl DivergenceLog for DynamoStore {
    async fn record(
        &self,
        key: &RecordKey,
        target: Backend,
        operation: &str,
        error: &str,
    ) -> StoreResult<()> {
        let now = super::item::iso(super::item::now());
        self.client
            .update_item()
            .table_name(&self.tables.divergence)
            .set_key(Some(super::key(
                key.tenant.as_str(),
                &divergence_id(key, target),
            )))
            .update_expression(
                "SET entity = :e, entityId = :i, targetStore = :t, #op = :o, #err = :r, \
                 lastFailedAt = :now, firstFailedAt = if_not_exists(firstFailedAt, :now) \
                 ADD failures :one",
            )
            .expression_attribute_names("#op", "operation")
            .expression_attribute_names("#err", "error")
            .expression_attribute_values(":e", s(key.entity.as_str()))
            .expression_attribute_values(":i", s(key.id.to_string()))
            .expression_attribute_values(":t", s(target.as_str()))
            .expression_attribute_values(":o", s(operation))
            .expression_attribute_values(":r", s(error))
            .expression_attribute_values(":now", s(now))
            .expression_attribute_values(":one", n(1))
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(())
    }

    async fn list(&self, tenant: Option<&TenantId>) -> StoreResult<Vec<Divergence>> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let mut req = self
                .client
                .scan()
                .table_name(&self.tables.divergence)
                .consistent_read(true)
                .set_exclusive_start_key(start.take());
            if let Some(t) = tenant {
                req = req
                    .filter_expression("tenantId = :t")
                    .expression_attribute_values(":t", AttributeValue::S(t.as_str().into()));
            }
            let page = req.send().await.map_err(sdk_error)?;
            for item in page.items.unwrap_or_default() {
                let r = ItemReader::new("replication-divergence", &item);
                let parsed = (|| -> StoreResult<Option<Divergence>> {
                    let (Some(entity), Some(tenant), Ok(id)) = (
                        Entity::parse(&r.s("entity")?),
                        TenantId::parse(&r.s("tenantId")?),
                        Uuid::parse_str(&r.s("entityId")?),
                    ) else {
                        return Ok(None);
                    };
                    Ok(Some(Divergence {
                        key: RecordKey { entity, tenant, id },
                        target: match r.s("targetStore")?.as_str() {
                            "dynamodb" => Backend::Dynamodb,
                            _ => Backend::Postgres,
                        },
                        operation: r.s("operation")?,
                        error: r.s("error")?,
                        failures: r.opt_i64("failures")?.unwrap_or(1),
                    }))
                })()?;
                out.extend(parsed);
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        out.sort_by(|a, b| {
            (a.key.tenant.as_str(), a.key.entity, a.key.id).cmp(&(
                b.key.tenant.as_str(),
                b.key.entity,
                b.key.id,
            ))
        });
        Ok(out)
    }

    async fn resolve(&self, key: &RecordKey, target: Backend, failures: i64) -> StoreResult<()> {
        let deleted = self
            .client
            .delete_item()
            .table_name(&self.tables.divergence)
            .set_key(Some(super::key(
                key.tenant.as_str(),
                &divergence_id(key, target),
            )))
            .condition_expression("failures = :n")
            .expression_attribute_values(":n", n(failures))
            .send()
            .await;
        match deleted {
            Ok(_) => Ok(()),
            // Failed again since it was listed (or already gone): leave it.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(sdk_error(e)),
        }
    }
}

#[async_trait]
impl Outbox for DynamoStore {
    async fn intend(&self, intent: &Intent) -> StoreResult<()> {
        let item = super::intent::intent_item(intent);
        self.client
            .put_item()
            .table_name(&self.tables.outbox)
            .set_item(Some(item))
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(())
    }

    async fn clear(&self, intents: &[Intent]) -> StoreResult<()> {
        use aws_sdk_dynamodb::types::{DeleteRequest, WriteRequest};
        for chunk in intents.chunks(25) {
            let mut pending = chunk
                .iter()
                .map(|i| {
                    let key = super::key(i.key.tenant.as_str(), &i.id.to_string());
                    let delete = DeleteRequest::builder().set_key(Some(key)).build();
                    delete.map(|d| WriteRequest::builder().delete_request(d).build())
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| crate::storage::StoreError::Internal(e.into()))?;
            for attempt in 0..5u64 {
                if pending.is_empty() {
                    break;
                }
                if attempt > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(50 * attempt)).await;
                }
                let out = self
                    .client
                    .batch_write_item()
                    .request_items(&self.tables.outbox, std::mem::take(&mut pending))
                    .send()
                    .await
                    .map_err(sdk_error)?;
                pending = out
                    .unprocessed_items
                    .and_then(|mut u| u.remove(&self.tables.outbox))
                    .unwrap_or_default();
            }
            if !pending.is_empty() {
                return Err(crate::storage::StoreError::Unavailable(format!(
                    "DynamoDB left {} outbox deletions unprocessed",
                    pending.len()
                )));
            }
        }
        Ok(())
    }

    async fn stale(&self, age: std::time::Duration, limit: usize) -> StoreResult<Vec<Intent>> {
        let cutoff = super::item::now()
            - chrono::Duration::from_std(age).unwrap_or_else(|_| chrono::Duration::zero());
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let page = self
                .client
                .scan()
                .table_name(&self.tables.outbox)
                .consistent_read(true)
                .filter_expression("createdAt < :cutoff")
                .expression_attribute_values(":cutoff", s(super::item::iso(cutoff)))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(sdk_error)?;
            for item in page.items.unwrap_or_default() {
                // Only this service writes the outbox; an item it cannot read is skipped
                // (and logged) rather than blocking every other replay.
                let r = ItemReader::new("replication-outbox", &item);
                let text = |k: &str| r.s(k).ok();
                let parsed = (|| {
                    Some((
                        text("createdAt")?,
                        Intent {
                            id: Uuid::parse_str(&text("id")?).ok()?,
                            key: RecordKey {
                                entity: Entity::parse(&text("entity")?)?,
                                tenant: TenantId::parse(&text("tenantId")?)?,
                                id: Uuid::parse_str(&text("entityId")?).ok()?,
                            },
                            target: Backend::parse(&text("targetStore")?)?,
                            subtree: r.bool_or("subtree", false).ok()?,
                        },
                    ))
                })();
                match parsed {
                    Some(p) => out.push(p),
                    None => tracing::warn!(?item, "unreadable outbox item skipped"),
                }
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() && out.len() < limit => start = Some(k),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out.into_iter().take(limit).map(|(_, i)| i).collect())
    }
}

/// Attribute names whose values differ between two copies of one record (both
/// normalized to the legacy item form, timestamps at millisecond precision).
pub fn differing_fields(a: &Record, b: &Record) -> Vec<String> {
    let (Ok(x), Ok(y)) = (record_item(a), record_item(b)) else {
        return vec!["<unencodable>".to_owned()];
    };
    let mut names: Vec<&String> = x.keys().chain(y.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter(|k| x.get(*k) != y.get(*k))
        .cloned()
        .collect()
}
