//! Whole-table reads for the migration tools: parallel Scan segments with a resumable
//! position, consistent BatchGetItem by key, the table's approximate size, and a
//! lossless JSON form of an item (DynamoDB JSON) for the quarantine table.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes};
use serde_json::Value;

use super::{DynamoStore, Item, s, sdk_error};
use crate::storage::replica::{Entity, Record};
use crate::storage::{StoreError, StoreResult};

/// Where a Scan segment stopped: its `LastEvaluatedKey` (`tenantId`, `id`) as strings.
pub type ScanKey = BTreeMap<String, String>;

/// One page of a Scan segment.
pub struct ScanPage {
    pub items: Vec<Item>,
    /// `None` when the segment is finished.
    pub next: Option<ScanKey>,
}

impl DynamoStore {
    /// One page (at most `limit` items) of segment `segment` of `total`, from `start`.
    pub async fn scan_page(
        &self,
        entity: Entity,
        segment: i32,
        total: i32,
        start: Option<&ScanKey>,
        limit: i32,
    ) -> StoreResult<ScanPage> {
        let start = start.map(|k| {
            k.iter()
                .map(|(name, v)| (name.clone(), s(v.as_str())))
                .collect::<HashMap<_, _>>()
        });
        let out = self
            .client
            .scan()
            .table_name(self.table_of(entity))
            .segment(segment)
            .total_segments(total)
            .limit(limit)
            .consistent_read(true)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(sdk_error)?;
        let next = match out.last_evaluated_key {
            Some(key) if !key.is_empty() => Some(
                key.into_iter()
                    .map(|(name, v)| match v {
                        AttributeValue::S(v) => Ok((name, v)),
                        other => Err(StoreError::Internal(
                            format!("scan key attribute {name} is not a string: {other:?}").into(),
                        )),
                    })
                    .collect::<StoreResult<ScanKey>>()?,
            ),
            _ => None,
        };
        Ok(ScanPage {
            items: out.items.unwrap_or_default(),
            next,
        })
    }

    /// The items of `keys` (tenant, id) that exist, read consistently, in no
    /// particular order (requests of 100 keys, 8 in flight).
    pub async fn batch_get(
        &self,
        entity: Entity,
        keys: &[(String, String)],
    ) -> StoreResult<Vec<Item>> {
        let table = self.table_of(entity);
        let mut found = Vec::with_capacity(keys.len());
        for group in keys.chunks(800) {
            let requests: Vec<_> = group
                .chunks(100)
                .map(|chunk| self.batch_get_chunk(table, chunk))
                .collect();
            for items in futures::future::join_all(requests).await {
                found.extend(items?);
            }
        }
        Ok(found)
    }

    /// One BatchGetItem of at most 100 keys, retrying unprocessed keys.
    async fn batch_get_chunk(
        &self,
        table: &str,
        chunk: &[(String, String)],
    ) -> StoreResult<Vec<Item>> {
        let mut found = Vec::with_capacity(chunk.len());
        let mut pending: Vec<HashMap<String, AttributeValue>> = chunk
            .iter()
            .map(|(t, id)| {
                HashMap::from([
                    ("tenantId".to_owned(), s(t.as_str())),
                    ("id".to_owned(), s(id.as_str())),
                ])
            })
            .collect();
        pending.dedup();
        let mut rounds = 0;
        while !pending.is_empty() {
            rounds += 1;
            if rounds > 1 {
                tokio::time::sleep(std::time::Duration::from_millis(50 * rounds)).await;
            }
            if rounds > 20 {
                return Err(StoreError::Unavailable(
                    "DynamoDB keeps returning unprocessed keys; retry".into(),
                ));
            }
            let request = KeysAndAttributes::builder()
                .set_keys(Some(std::mem::take(&mut pending)))
                .consistent_read(true)
                .build()
                .map_err(|e| StoreError::Internal(e.into()))?;
            let out = self
                .client
                .batch_get_item()
                .request_items(table, request)
                .send()
                .await
                .map_err(sdk_error)?;
            if let Some(mut r) = out.responses {
                found.extend(r.remove(table).unwrap_or_default());
            }
            if let Some(k) = out.unprocessed_keys.and_then(|mut u| u.remove(table)) {
                pending = k.keys;
            }
        }
        Ok(found)
    }

    /// One item by key, read consistently, as stored.
    pub async fn get_raw(
        &self,
        entity: Entity,
        tenant: &str,
        id: &str,
    ) -> StoreResult<Option<Item>> {
        self.get_item(self.table_of(entity), tenant, id).await
    }

    /// Whether the legacy table of `entity` exists.
    pub async fn table_exists(&self, entity: Entity) -> StoreResult<bool> {
        let described = (self.client.describe_table())
            .table_name(self.table_of(entity))
            .send()
            .await;
        match described {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_resource_not_found_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(sdk_error(e)),
        }
    }

    /// DescribeTable's item count (AWS refreshes it about every six hours; an
    /// estimate for progress and ETA only).
    pub async fn approximate_count(&self, entity: Entity) -> StoreResult<Option<i64>> {
        let out = self
            .client
            .describe_table()
            .table_name(self.table_of(entity))
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(out.table.and_then(|t| t.item_count))
    }
}

/// The record a legacy item of `entity` decodes to.
pub fn record_from_item(entity: Entity, item: &Item) -> StoreResult<Record> {
    super::replica::record_from_item(entity, item)
}

/// The item in DynamoDB JSON (`{"name": {"S": "..."}}`); binary attributes (which
/// no legacy table has) are recorded by size only.
pub fn item_json(item: &Item) -> Value {
    serde_json::to_value(ItemJson(item)).expect("an item serializes")
}

/// The text of [`item_json`] (keys sorted), written straight from the item without
/// building the JSON value: the backfill keeps every item it reads this way.
pub fn item_json_text(item: &Item) -> String {
    serde_json::to_string(&ItemJson(item)).expect("an item serializes")
}

/// An item in DynamoDB JSON, keys sorted.
struct ItemJson<'a>(&'a Item);

impl serde::Serialize for ItemJson<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut keys: Vec<&String> = self.0.keys().collect();
        keys.sort_unstable();
        let mut map = ser.serialize_map(Some(keys.len()))?;
        for k in keys {
            map.serialize_entry(k, &AttrJson(&self.0[k]))?;
        }
        map.end()
    }
}

/// An attribute value in DynamoDB JSON (`{"S": "..."}`).
struct AttrJson<'a>(&'a AttributeValue);

impl serde::Serialize for AttrJson<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = ser.serialize_map(Some(1))?;
        match self.0 {
            AttributeValue::S(v) => map.serialize_entry("S", v)?,
            AttributeValue::N(v) => map.serialize_entry("N", v)?,
            AttributeValue::Bool(v) => map.serialize_entry("BOOL", v)?,
            AttributeValue::Null(_) => map.serialize_entry("NULL", &true)?,
            AttributeValue::Ss(v) => map.serialize_entry("SS", v)?,
            AttributeValue::Ns(v) => map.serialize_entry("NS", v)?,
            AttributeValue::L(v) => {
                let list: Vec<AttrJson<'_>> = v.iter().map(AttrJson).collect();
                map.serialize_entry("L", &list)?
            }
            AttributeValue::M(m) => map.serialize_entry("M", &ItemJson(m))?,
            AttributeValue::B(b) => {
                map.serialize_entry("B", &format!("{} bytes", b.as_ref().len()))?
            }
            other => map.serialize_entry("?", &format!("{other:?}"))?,
        }
        map.end()
    }
}

/// The item [`item_json`] wrote, exactly; `None` when it is not such JSON or held a
/// binary attribute (written by size only).
pub fn item_from_json(v: &Value) -> Option<Item> {
    v.as_object()?
        .iter()
        .map(|(k, v)| Some((k.clone(), json_attr(v)?)))
        .collect()
}

fn json_attr(v: &Value) -> Option<AttributeValue> {
    let (kind, v) = v.as_object().filter(|o| o.len() == 1)?.iter().next()?;
    let strings = |v: &Value| -> Option<Vec<String>> {
        v.as_array()?
            .iter()
            .map(|s| s.as_str().map(str::to_owned))
            .collect()
    };
    Some(match kind.as_str() {
        "S" => AttributeValue::S(v.as_str()?.to_owned()),
        "N" => AttributeValue::N(v.as_str()?.to_owned()),
        "BOOL" => AttributeValue::Bool(v.as_bool()?),
        "NULL" => AttributeValue::Null(true),
        "SS" => AttributeValue::Ss(strings(v)?),
        "NS" => AttributeValue::Ns(strings(v)?),
        "L" => AttributeValue::L(v.as_array()?.iter().map(json_attr).collect::<Option<_>>()?),
        "M" => AttributeValue::M(item_from_json(v)?),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_item_round_trips_through_its_json_and_binary_does_not() {
        let item: Item = [
            ("id", AttributeValue::S("a".into())),
            ("version", AttributeValue::N("3".into())),
            ("gone", AttributeValue::Null(true)),
            ("flag", AttributeValue::Bool(false)),
            ("tags", AttributeValue::Ss(vec!["x".into(), "y".into()])),
            ("ns", AttributeValue::Ns(vec!["1.5".into()])),
            (
                "nested",
                AttributeValue::M(
                    [(
                        "list".to_owned(),
                        AttributeValue::L(vec![
                            AttributeValue::S("s".into()),
                            AttributeValue::N("1e3".into()),
                        ]),
                    )]
                    .into(),
                ),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let text = item_json(&item).to_string();
        assert_eq!(item_json_text(&item), text, "the two writers differ");
        let back = item_from_json(&serde_json::from_str(&text).unwrap()).unwrap();
        assert_eq!(back, item);

        let mut binary = item.clone();
        binary.insert(
            "blob".into(),
            AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(vec![1, 2])),
        );
        assert_eq!(item_from_json(&item_json(&binary)), None);
        assert_eq!(item_json_text(&binary), item_json(&binary).to_string());
    }
}
