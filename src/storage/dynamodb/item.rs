//! Reading and writing legacy items: typed accessors that accept what legacy data
//! really holds (absent or NULL optionals, any sub-second precision) and a writer that
//! omits what is unset, as the legacy client's `removeUndefinedValues` did.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::storage::{StoreError, StoreResult};

/// One DynamoDB item.
pub type Item = HashMap<String, AttributeValue>;

/// ISO-8601 UTC with milliseconds and `Z`, as legacy `new Date().toISOString()`.
pub fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Now, at the millisecond precision items store, so a record returned by a write
/// equals what a later read of it gives.
pub fn now() -> DateTime<Utc> {
    let t = Utc::now();
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

/// JSON to an attribute: objects are `M`, arrays `L`, null `NULL`.
pub fn to_attr(v: &Value) -> AttributeValue {
    match v {
        Value::Null => AttributeValue::Null(true),
        Value::Bool(b) => AttributeValue::Bool(*b),
        Value::Number(n) => AttributeValue::N(n.to_string()),
        Value::String(s) => AttributeValue::S(s.clone()),
        Value::Array(a) => AttributeValue::L(a.iter().map(to_attr).collect()),
        Value::Object(o) => {
            AttributeValue::M(o.iter().map(|(k, v)| (k.clone(), to_attr(v))).collect())
        }
    }
}

/// An attribute to JSON (`SS`/`NS` sets become arrays; binary is refused).
pub fn from_attr(a: &AttributeValue) -> Option<Value> {
    Some(match a {
        AttributeValue::Null(_) => Value::Null,
        AttributeValue::Bool(b) => Value::Bool(*b),
        AttributeValue::N(n) => number(n)?,
        AttributeValue::S(s) => Value::String(s.clone()),
        AttributeValue::L(l) => Value::Array(l.iter().map(from_attr).collect::<Option<_>>()?),
        AttributeValue::M(m) => Value::Object(
            m.iter()
                .map(|(k, v)| Some((k.clone(), from_attr(v)?)))
                .collect::<Option<_>>()?,
        ),
        AttributeValue::Ss(ss) => Value::Array(ss.iter().cloned().map(Value::String).collect()),
        AttributeValue::Ns(ns) => {
            Value::Array(ns.iter().map(|n| number(n)).collect::<Option<_>>()?)
        }
        _ => return None,
    })
}

/// A DynamoDB number as JSON: an integer when it is one, else a float.
fn number(n: &str) -> Option<Value> {
    if let Ok(i) = n.parse::<i64>() {
        return Some(Value::from(i));
    }
    n.parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map(Value::Number)
}

/// Builds an item attribute by attribute; unset optionals are omitted.
#[derive(Debug, Default)]
pub struct ItemWriter(Item);

impl ItemWriter {
    /// An item with its key.
    pub fn new(tenant: &str, id: &str) -> Self {
        Self(super::key(tenant, id))
    }

    /// A string.
    pub fn s(mut self, k: &str, v: impl Into<String>) -> Self {
        self.0.insert(k.to_owned(), AttributeValue::S(v.into()));
        self
    }

    /// An optional string, omitted when `None`.
    pub fn opt_s(self, k: &str, v: Option<&str>) -> Self {
        match v {
            Some(v) => self.s(k, v),
            None => self,
        }
    }

    /// A number.
    pub fn n(mut self, k: &str, v: impl ToString) -> Self {
        self.0
            .insert(k.to_owned(), AttributeValue::N(v.to_string()));
        self
    }

    /// A boolean.
    pub fn b(mut self, k: &str, v: bool) -> Self {
        self.0.insert(k.to_owned(), AttributeValue::Bool(v));
        self
    }

    /// A timestamp as legacy wrote it.
    pub fn ts(self, k: &str, t: DateTime<Utc>) -> Self {
        self.s(k, iso(t))
    }

    /// An optional timestamp, omitted when `None`.
    pub fn opt_ts(self, k: &str, t: Option<DateTime<Utc>>) -> Self {
        match t {
            Some(t) => self.ts(k, t),
            None => self,
        }
    }

    /// A list of strings (`L` of `S`, as the document client wrote arrays).
    pub fn list(mut self, k: &str, v: &[String]) -> Self {
        self.0.insert(
            k.to_owned(),
            AttributeValue::L(v.iter().cloned().map(AttributeValue::S).collect()),
        );
        self
    }

    /// Any serializable value as a map/list/scalar.
    pub fn json<T: Serialize>(mut self, k: &str, v: &T) -> StoreResult<Self> {
        let v = serde_json::to_value(v).map_err(|e| StoreError::Internal(Box::new(e)))?;
        self.0.insert(k.to_owned(), to_attr(&v));
        Ok(self)
    }

    /// An optional serializable value, omitted when `None`.
    pub fn opt_json<T: Serialize>(self, k: &str, v: Option<&T>) -> StoreResult<Self> {
        match v {
            Some(v) => self.json(k, v),
            None => Ok(self),
        }
    }

    /// A raw attribute.
    pub fn attr(mut self, k: &str, v: AttributeValue) -> Self {
        self.0.insert(k.to_owned(), v);
        self
    }

    /// The finished item.
    pub fn finish(self) -> Item {
        self.0
    }
}

/// Typed, lenient reads of one item of `table`; a wrong type is an `Internal` error
/// naming the table, attribute and item.
pub struct ItemReader<'a> {
    table: &'static str,
    item: &'a Item,
}

impl<'a> ItemReader<'a> {
    /// Reads `item` of `table` (the table's entity name, for messages).
    pub fn new(table: &'static str, item: &'a Item) -> Self {
        Self { table, item }
    }

    /// An error naming the attribute.
    pub fn bad(&self, k: &str, what: &str) -> StoreError {
        let id = match self.item.get("id") {
            Some(AttributeValue::S(id)) => id.as_str(),
            _ => "?",
        };
        StoreError::Internal(format!("{} item {id}: attribute {k} {what}", self.table).into())
    }

    /// The attribute, `None` when absent or NULL.
    pub fn get(&self, k: &str) -> Option<&'a AttributeValue> {
        match self.item.get(k) {
            None | Some(AttributeValue::Null(_)) => None,
            Some(v) => Some(v),
        }
    }

    /// A required string.
    pub fn s(&self, k: &str) -> StoreResult<String> {
        self.opt_s(k)?.ok_or_else(|| self.bad(k, "is missing"))
    }

    /// An optional string (absent or NULL: `None`).
    pub fn opt_s(&self, k: &str) -> StoreResult<Option<String>> {
        match self.get(k) {
            None => Ok(None),
            Some(AttributeValue::S(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.bad(k, "is not a string")),
        }
    }

    /// A required integer.
    pub fn i64(&self, k: &str) -> StoreResult<i64> {
        self.opt_i64(k)?.ok_or_else(|| self.bad(k, "is missing"))
    }

    /// An optional integer (a whole-valued float such as `3.0` is accepted).
    pub fn opt_i64(&self, k: &str) -> StoreResult<Option<i64>> {
        match self.get(k) {
            None => Ok(None),
            Some(AttributeValue::N(n)) => n
                .parse::<i64>()
                .ok()
                .or_else(|| {
                    n.parse::<f64>()
                        .ok()
                        .filter(|f| f.fract() == 0.0)
                        .map(|f| f as i64)
                })
                .map(Some)
                .ok_or_else(|| self.bad(k, "is not an integer")),
            Some(_) => Err(self.bad(k, "is not a number")),
        }
    }

    /// A required `i32`.
    pub fn i32(&self, k: &str) -> StoreResult<i32> {
        i32::try_from(self.i64(k)?).map_err(|_| self.bad(k, "is out of range"))
    }

    /// A boolean, `default` when absent or NULL.
    pub fn bool_or(&self, k: &str, default: bool) -> StoreResult<bool> {
        match self.get(k) {
            None => Ok(default),
            Some(AttributeValue::Bool(b)) => Ok(*b),
            Some(_) => Err(self.bad(k, "is not a boolean")),
        }
    }

    /// A required timestamp (any sub-second precision, `Z` or an offset).
    pub fn ts(&self, k: &str) -> StoreResult<DateTime<Utc>> {
        self.opt_ts(k)?.ok_or_else(|| self.bad(k, "is missing"))
    }

    /// An optional timestamp.
    pub fn opt_ts(&self, k: &str) -> StoreResult<Option<DateTime<Utc>>> {
        match self.opt_s(k)? {
            None => Ok(None),
            Some(s) => DateTime::parse_from_rfc3339(&s)
                .map(|t| Some(t.with_timezone(&Utc)))
                .map_err(|_| self.bad(k, "is not an ISO-8601 timestamp")),
        }
    }

    /// A list of strings (absent or NULL: empty).
    pub fn list(&self, k: &str) -> StoreResult<Vec<String>> {
        match self.get(k) {
            None => Ok(Vec::new()),
            Some(AttributeValue::L(l)) => l
                .iter()
                .map(|v| match v {
                    AttributeValue::S(s) => Ok(s.clone()),
                    _ => Err(self.bad(k, "holds a non-string")),
                })
                .collect(),
            Some(AttributeValue::Ss(ss)) => Ok(ss.clone()),
            Some(_) => Err(self.bad(k, "is not a list")),
        }
    }

    /// The attribute as JSON (absent or NULL: `None`).
    pub fn json(&self, k: &str) -> StoreResult<Option<Value>> {
        self.get(k)
            .map(|a| from_attr(a).ok_or_else(|| self.bad(k, "holds binary data")))
            .transpose()
    }

    /// The attribute deserialized (absent or NULL: `None`).
    pub fn de<T: DeserializeOwned>(&self, k: &str) -> StoreResult<Option<T>> {
        match self.json(k)? {
            None => Ok(None),
            Some(v) => serde_json::from_value(v)
                .map(Some)
                .map_err(|e| self.bad(k, &format!("has an unexpected shape: {e}"))),
        }
    }

    /// A JSON object (absent, NULL: empty).
    pub fn object(&self, k: &str) -> StoreResult<crate::domain::JsonObject> {
        Ok(self.de(k)?.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_through_attributes() {
        let v = serde_json::json!({"a": [1, 2.5, "x", null, true], "b": {"c": {}}});
        assert_eq!(from_attr(&to_attr(&v)), Some(v));
    }

    #[test]
    fn timestamps_are_written_with_milliseconds_and_read_at_any_precision() {
        let t = DateTime::parse_from_rfc3339("2026-03-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(iso(t), "2026-03-01T00:00:00.000Z");
        let item = ItemWriter::new("t", "i")
            .s("a", "2026-03-01T00:00:00Z")
            .attr("b", AttributeValue::Null(true))
            .finish();
        let r = ItemReader::new("customers", &item);
        assert_eq!(r.ts("a").unwrap(), t);
        assert_eq!(r.opt_s("b").unwrap(), None);
        assert_eq!(r.opt_s("missing").unwrap(), None);
        assert!(r.s("b").is_err());
    }
}
