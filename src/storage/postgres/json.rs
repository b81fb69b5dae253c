//! `jsonb` columns read and written as JSON text, so rows decode straight into their
//! domain types without an intermediate `serde_json::Value`.

use std::io::Write;

use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::pg::{Pg, PgValue};
use diesel::serialize::{self, IsNull, Output, ToSql};
use diesel::sql_types::Jsonb;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::storage::{StoreError, StoreResult};

/// The JSON text of a `jsonb` value.
#[derive(Clone, Debug, PartialEq, Eq, AsExpression, FromSqlRow)]
#[diesel(sql_type = Jsonb)]
pub(super) struct JsonText(Vec<u8>);

/// The only `jsonb` binary format version PostgreSQL has.
const JSONB_VERSION: u8 = 1;

impl FromSql<Jsonb, Pg> for JsonText {
    fn from_sql(value: PgValue<'_>) -> deserialize::Result<Self> {
        match value.as_bytes().split_first() {
            Some((&JSONB_VERSION, text)) => Ok(Self(text.to_vec())),
            _ => Err("unsupported jsonb format version".into()),
        }
    }
}

impl ToSql<Jsonb, Pg> for JsonText {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        out.write_all(&[JSONB_VERSION])?;
        out.write_all(&self.0)?;
        Ok(IsNull::No)
    }
}

/// Serializes a value for a `jsonb` column.
pub(super) fn to_json<T: Serialize + ?Sized>(value: &T) -> StoreResult<JsonText> {
    serde_json::to_vec(value)
        .map(JsonText)
        .map_err(|e| StoreError::Internal(Box::new(e)))
}

/// Deserializes a `jsonb` column; a value of the wrong shape is corrupt data.
pub(super) fn from_json<T: DeserializeOwned>(
    table: &str,
    column: &str,
    json: &JsonText,
) -> StoreResult<T> {
    serde_json::from_slice(&json.0)
        .map_err(|e| StoreError::Internal(format!("{table}.{column}: {e}").into()))
}
