//! The legacy DynamoDB backend: `DynamoStore` implements every store trait on the
//! legacy tables exactly as the old Node code laid them out (contract §0.7, §1, §2):
//! one table per entity named `gcdr-<entity>-<stage>`, key `tenantId`/`id`, the legacy
//! GSIs, camelCase attributes, ISO millisecond `Z` timestamps, numeric versions.
//!
//! Reading is lenient where legacy data is: a root's parent attribute may be absent or
//! NULL, optional attributes absent or NULL, assignment statuses lowercase. Writing is
//! strict: an optional value that is unset is omitted (never NULL, so no GSI key
//! attribute is ever NULL), and every write is conditional on the version read.
//!
//! Base-table reads are strongly consistent (legacy read eventually consistent); GSI
//! queries cannot be, so a listing through an index may lag a write by a moment.

mod access;
mod assets;
mod customers;
mod dependents;
mod devices;
mod intent;
mod item;
mod partners;
mod replica;
mod scan;
mod tables;

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::AttributeValue;

use super::{HealthProbe, StoreError, StoreResult};
use super::{bad_cursor, check_version, first_free_code};

pub use dependents::INDEX_SETTLE;
pub use intent::with_intent;
pub use item::{Item, ItemReader, ItemWriter, from_attr, to_attr};
pub use replica::{differing_fields, record_item};
pub use scan::{ScanKey, ScanPage, item_from_json, item_json, item_json_text, record_from_item};
pub use tables::{TableNames, create_tables, delete_tables};

/// Connection settings of the DynamoDB backend.
#[derive(Clone, Debug)]
pub struct DynamoConfig {
    /// `DYNAMODB_ENDPOINT`: an emulator's URL; `None` for AWS itself.
    pub endpoint: Option<String>,
    /// `AWS_REGION`, legacy default `sa-east-1`.
    pub region: String,
    pub tables: TableNames,
    /// `GCDR_DYNAMODB_INDEX_SETTLE_MS`: how long a GSI may lag its table
    /// (dependents.rs); [`INDEX_SETTLE`] by default.
    pub index_settle: std::time::Duration,
}

/// The DynamoDB store.
#[derive(Clone)]
pub struct DynamoStore {
    client: Client,
    tables: TableNames,
    index_settle: std::time::Duration,
}

impl DynamoStore {
    /// Builds the client. Credentials come from the usual AWS chain (environment,
    /// profile, instance role); against an emulator without any, static dummy ones
    /// are used.
    pub async fn connect(cfg: &DynamoConfig) -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(cfg.region.clone()));
        if let Some(endpoint) = &cfg.endpoint {
            loader = loader.endpoint_url(endpoint);
            if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
                loader = loader.credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                    "local",
                    "local",
                    None,
                    None,
                    "gcdr-static",
                ));
            }
        }
        let shared = loader.load().await;
        let conf = aws_sdk_dynamodb::config::Builder::from(&shared)
            .retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::standard())
            .timeout_config(
                aws_sdk_dynamodb::config::timeout::TimeoutConfig::builder()
                    .operation_attempt_timeout(std::time::Duration::from_secs(5))
                    .connect_timeout(std::time::Duration::from_secs(2))
                    .build(),
            )
            .build();
        Self {
            client: Client::from_conf(conf),
            tables: cfg.tables.clone(),
            index_settle: cfg.index_settle,
        }
    }

    /// The SDK client (for table management and tests).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The table names in use.
    pub fn tables(&self) -> &TableNames {
        &self.tables
    }

    /// Runs one store operation through [`crate::storage::timed`].
    async fn timed<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        crate::storage::timed("dynamodb", op, fut).await
    }

    /// Strongly consistent GetItem by `tenantId`/`id`.
    async fn get_item(&self, table: &str, tenant: &str, id: &str) -> StoreResult<Option<Item>> {
        let out = self
            .client
            .get_item()
            .table_name(table)
            .key("tenantId", s(tenant))
            .key("id", s(id))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(out.item)
    }

    /// Runs `q`, following `LastEvaluatedKey`, until `want` items passed its filter or
    /// the key range is exhausted. Unlike legacy, a filter never truncates a page.
    async fn query(&self, q: &Query, want: usize) -> StoreResult<Vec<Item>> {
        let mut out = Vec::new();
        let mut start = q.start.clone();
        loop {
            let mut req = self
                .client
                .query()
                .table_name(&q.table)
                .key_condition_expression(&q.key_condition)
                .set_expression_attribute_values(Some(q.values.clone()))
                .scan_index_forward(true)
                .set_exclusive_start_key(start.take());
            if !q.names.is_empty() {
                req = req.set_expression_attribute_names(Some(q.names.clone()));
            }
            if let Some(index) = q.index {
                req = req.index_name(index);
            } else {
                req = req.consistent_read(true);
            }
            if let Some(filter) = &q.filter {
                req = req.filter_expression(filter);
            }
            let page = req.send().await.map_err(sdk_error)?;
            out.extend(page.items.unwrap_or_default());
            match page.last_evaluated_key {
                Some(key) if out.len() < want && !key.is_empty() => start = Some(key),
                _ => break,
            }
        }
        out.truncate(want);
        Ok(out)
    }
}

/// One Query: key condition, optional filter and index, and where to start.
#[derive(Clone, Debug)]
struct Query {
    table: String,
    index: Option<&'static str>,
    key_condition: String,
    filter: Option<String>,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
    start: Option<Item>,
}

impl Query {
    /// `tenantId = :t` on the base table (items in id order).
    fn tenant(table: &str, tenant: &str) -> Self {
        Self {
            table: table.to_owned(),
            index: None,
            key_condition: "tenantId = :t".into(),
            filter: None,
            names: HashMap::new(),
            values: HashMap::from([(":t".to_owned(), s(tenant))]),
            start: None,
        }
    }

    /// `tenantId = :t AND #k = :k` on `index`.
    fn index_eq(table: &str, index: &'static str, tenant: &str, attr: &str, value: &str) -> Self {
        Self {
            table: table.to_owned(),
            index: Some(index),
            key_condition: "tenantId = :t AND #k = :k".into(),
            filter: None,
            names: HashMap::from([("#k".to_owned(), attr.to_owned())]),
            values: HashMap::from([(":t".to_owned(), s(tenant)), (":k".to_owned(), s(value))]),
            start: None,
        }
    }

    /// `tenantId = :t AND begins_with(#k, :k)` on `index`.
    fn index_prefix(
        table: &str,
        index: &'static str,
        tenant: &str,
        attr: &str,
        prefix: &str,
    ) -> Self {
        let mut q = Self::index_eq(table, index, tenant, attr, prefix);
        q.key_condition = "tenantId = :t AND begins_with(#k, :k)".into();
        q
    }

    /// Adds a filter clause (ANDed with any before), with its placeholders.
    fn and_filter(
        &mut self,
        clause: &str,
        names: &[(&str, &str)],
        values: Vec<(&str, AttributeValue)>,
    ) {
        self.filter = Some(match self.filter.take() {
            Some(f) => format!("({f}) AND ({clause})"),
            None => clause.to_owned(),
        });
        for (k, v) in names {
            self.names.insert((*k).to_owned(), (*v).to_owned());
        }
        for (k, v) in values {
            self.values.insert(k.to_owned(), v);
        }
    }

    /// Adds `#a = :a` for an optional string filter.
    fn filter_eq(&mut self, attr: &str, value: Option<&str>) {
        if let Some(v) = value {
            let name = format!("#f{}", self.names.len());
            let val = format!(":f{}", self.values.len());
            self.and_filter(
                &format!("{name} = {val}"),
                &[(&name, attr)],
                vec![(&val, s(v))],
            );
        }
    }
}

/// A string attribute.
fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

/// A number attribute.
fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// The key of one item.
fn key(tenant: &str, id: &str) -> Item {
    HashMap::from([("tenantId".to_owned(), s(tenant)), ("id".to_owned(), s(id))])
}

/// True when a write failed on its condition (the item changed or exists).
fn is_condition_failure<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    e.as_service_error()
        .and_then(|se| se.code())
        .is_some_and(|c| c == "ConditionalCheckFailedException")
}

/// Why a TransactWriteItems was cancelled, per item (`None` when it ran).
fn cancellation_codes(
    e: &SdkError<aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError>,
) -> Option<Vec<String>> {
    use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError as E;
    match e.as_service_error()? {
        E::TransactionCanceledException(t) => Some(
            t.cancellation_reasons()
                .iter()
                .map(|r| r.code().unwrap_or("None").to_owned())
                .collect(),
        ),
        _ => None,
    }
}

/// Maps an SDK failure: throttling, timeouts and transport errors are `Unavailable`
/// (the caller may retry), everything else `Internal`.
fn sdk_error<E, R>(e: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    match &e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => {
            StoreError::Unavailable(format!("DynamoDB unreachable: {e}"))
        }
        SdkError::ServiceError(se) => {
            let code = se.err().code().unwrap_or_default().to_owned();
            match code.as_str() {
                "ProvisionedThroughputExceededException"
                | "ThrottlingException"
                | "RequestLimitExceeded"
                | "InternalServerError"
                | "ServiceUnavailable"
                | "TransactionConflictException" => {
                    StoreError::Unavailable(format!("DynamoDB {code}; retry"))
                }
                "ResourceNotFoundException" => StoreError::Unavailable(format!(
                    "DynamoDB table missing ({}); run `gcdr-data dynamodb create-tables`",
                    se.err().message().unwrap_or_default()
                )),
                _ => StoreError::Internal(
                    format!(
                        "DynamoDB {code}: {}",
                        se.err().message().unwrap_or_default()
                    )
                    .into(),
                ),
            }
        }
        SdkError::ResponseError(_) => StoreError::Unavailable(format!("DynamoDB response: {e}")),
        _ => StoreError::Internal(Box::new(e)),
    }
}

#[async_trait]
impl HealthProbe for DynamoStore {
    async fn ping(&self) -> StoreResult<()> {
        self.client
            .describe_table()
            .table_name(&self.tables.customers)
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(())
    }
}

/// A claim on a unique value: the item `(tenant, "<what>#<value>")` of the unique-keys
/// table, owned by one record id. Written in the same TransactWriteItems as the record,
/// it makes two concurrent writers of one value conflict (the check through the index
/// beforehand still covers legacy items, which have no claim).
struct Claim<'a> {
    table: &'a str,
    tenant: &'a str,
    what: &'static str,
    value: &'a str,
    owner: &'a str,
    /// The table of the records holding the value, and the attributes holding it
    /// (several: the value is theirs joined by [`Claim::value`], as an asset's customer
    /// and code).
    records: &'a str,
    attrs: &'static [&'static str],
    /// Whether the record still counts as holding a value it has (an assignment
    /// past its expiry or revoked does not); `None`: always.
    live: Option<fn(&Item) -> bool>,
}

/// What a claim guards: its name, the table of the records holding the value, and
/// the attributes holding it.
type Guarded<'a> = (&'static str, &'a str, &'static [&'static str]);

impl<'a> Claim<'a> {
    /// A value made of several attributes, joined with a space. Every part but the
    /// last cannot contain whitespace (a UUID, a role key, a scope), so no two
    /// different tuples make one value.
    fn value(parts: &[&str]) -> String {
        parts.join(" ")
    }

    /// The claim of `value` (`what`, held in `attrs` of the `records` table) in
    /// `tenant` by record `owner`.
    fn new(
        tables: &'a TableNames,
        tenant: &'a str,
        (what, records, attrs): Guarded<'a>,
        value: &'a str,
        owner: &'a str,
    ) -> Self {
        Self {
            table: &tables.unique,
            tenant,
            what,
            value,
            owner,
            records,
            attrs,
            live: None,
        }
    }

    /// The same claim, held only while `live` says so of the holder's item.
    fn while_live(self, live: fn(&Item) -> bool) -> Self {
        Self {
            live: Some(live),
            ..self
        }
    }

    fn key(&self) -> Item {
        key(self.tenant, &format!("{}#{}", self.what, self.value))
    }

    /// Takes the value (or keeps it, when `owner` already holds it).
    fn take(&self) -> StoreResult<aws_sdk_dynamodb::types::TransactWriteItem> {
        let mut item = self.key();
        item.insert("owner".into(), s(self.owner));
        let put = aws_sdk_dynamodb::types::Put::builder()
            .table_name(self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(id) OR #owner = :owner")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_values(":owner", s(self.owner))
            .build()
            .map_err(|e| StoreError::Internal(Box::new(e)))?;
        Ok(aws_sdk_dynamodb::types::TransactWriteItem::builder()
            .put(put)
            .build())
    }

    /// Gives the value up, as a transaction item conditional on `owner` holding it;
    /// see [`DynamoStore::releases`].
    fn release(&self) -> StoreResult<aws_sdk_dynamodb::types::TransactWriteItem> {
        let delete = aws_sdk_dynamodb::types::Delete::builder()
            .table_name(self.table)
            .set_key(Some(self.key()))
            .condition_expression("attribute_not_exists(id) OR #owner = :owner")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_values(":owner", s(self.owner))
            .build()
            .map_err(|e| StoreError::Internal(Box::new(e)))?;
        Ok(aws_sdk_dynamodb::types::TransactWriteItem::builder()
            .delete(delete)
            .build())
    }
}

impl DynamoStore {
    /// The items that release `claim` with a write: its conditional delete when its
    /// owner holds it, nothing when the claim is absent (a legacy record, or one
    /// written by replication) or another record's (this one's stale claim, taken
    /// over). A release conditioned on an owner it does not have would cancel the
    /// whole write for good; if the claim changes hands between this read and the
    /// write, the write is cancelled and retried, reading it again.
    async fn releases(
        &self,
        claim: &Claim<'_>,
    ) -> StoreResult<Vec<aws_sdk_dynamodb::types::TransactWriteItem>> {
        if self.claim_owner(claim).await?.as_deref() == Some(claim.owner) {
            Ok(vec![claim.release()?])
        } else {
            Ok(Vec::new())
        }
    }

    /// The record that holds the claim on `claim`'s value now (strongly consistent).
    async fn claim_owner(&self, claim: &Claim<'_>) -> StoreResult<Option<String>> {
        let out = self
            .client
            .get_item()
            .table_name(claim.table)
            .set_key(Some(claim.key()))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(out
            .item
            .and_then(|i| i.get("owner").and_then(|o| o.as_s().ok()).cloned()))
    }

    /// Whether another record holds the value of `claim`. A claim whose owner no
    /// longer holds the value (deleted or changed by a path that does not claim, such
    /// as replication) is stale: it is dropped, if still that owner's, and the value
    /// counts as free.
    async fn claim_taken(&self, claim: &Claim<'_>) -> StoreResult<bool> {
        let Some(owner) = self.claim_owner(claim).await? else {
            return Ok(false);
        };
        let holder = self.get_item(claim.records, claim.tenant, &owner).await?;
        let live = holder
            .as_ref()
            .is_some_and(|i| claim.live.is_none_or(|live| live(i)));
        let held = holder.filter(|_| live).and_then(|i| {
            let parts: Option<Vec<&str>> = claim
                .attrs
                .iter()
                .map(|a| i.get(*a).and_then(|v| v.as_s().ok()).map(String::as_str))
                .collect();
            parts.map(|p| Claim::value(&p))
        });
        if held.as_deref() == Some(claim.value) {
            return Ok(true);
        }
        let result = self
            .client
            .delete_item()
            .table_name(claim.table)
            .set_key(Some(claim.key()))
            .condition_expression("#owner = :owner")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_values(":owner", s(owner))
            .send()
            .await;
        match result {
            Ok(_) => Ok(false),
            Err(e) if is_condition_failure(&e) => Ok(false),
            Err(e) => Err(sdk_error(e)),
        }
    }

    /// Runs one TransactWriteItems; `Ok(None)` when it ran, `Ok(Some(codes))` with
    /// the per-item cancellation codes when a condition failed.
    async fn transact(
        &self,
        items: Vec<aws_sdk_dynamodb::types::TransactWriteItem>,
    ) -> StoreResult<Option<Vec<String>>> {
        let result = self.transact_write(items).await;
        match result {
            Ok(_) => Ok(None),
            Err(e) => match cancellation_codes(&e) {
                Some(codes) if codes.iter().any(|c| c == "ConditionalCheckFailed") => {
                    Ok(Some(codes))
                }
                Some(_) => Err(StoreError::Unavailable(
                    "a concurrent transaction or throttling cancelled the write; retry".into(),
                )),
                None => Err(sdk_error(e)),
            },
        }
    }
}

impl DynamoStore {
    /// One TransactWriteItems, sent again (up to 3 more times, after a short random
    /// pause) while it is cancelled only by a conflicting transaction on one of its
    /// items: concurrent writes under one parent all mark that parent. Inside a dual
    /// write ([`with_intent`]) the copy's intent rides in it when there is room.
    async fn transact_write(
        &self,
        mut items: Vec<aws_sdk_dynamodb::types::TransactWriteItem>,
    ) -> Result<
        aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsOutput,
        SdkError<aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError>,
    > {
        let rode = intent::ride(&mut items, &self.tables.outbox, TRANSACTION_LIMIT);
        let result = self.transact_write_retried(items).await;
        intent::landed(rode, result.is_ok());
        result
    }

    async fn transact_write_retried(
        &self,
        items: Vec<aws_sdk_dynamodb::types::TransactWriteItem>,
    ) -> Result<
        aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsOutput,
        SdkError<aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError>,
    > {
        let mut attempt = 0u64;
        loop {
            let result = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .send()
                .await;
            let conflict = result
                .as_ref()
                .err()
                .and_then(cancellation_codes)
                .is_some_and(|c| {
                    c.iter().any(|c| c == "TransactionConflict")
                        && c.iter().all(|c| c == "TransactionConflict" || c == "None")
                });
            if !conflict || attempt == 3 {
                return result;
            }
            attempt += 1;
            let pause = 10 * attempt + rand::random::<u64>() % (20 * attempt);
            tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
        }
    }
}

/// The most items one TransactWriteItems may carry.
const TRANSACTION_LIMIT: usize = 100;

/// The condition of an overwrite.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// The stored item has exactly this version.
    Version(i64),
    /// The item is absent or its stored version is not newer than the written one
    /// (replication: never move a record backwards).
    NotNewer(i64),
    /// None: the item is written whatever is stored (reconcile making a secondary
    /// hold exactly the authoritative copy, even an older version).
    Any,
}

/// An UpdateItem that sets every non-key attribute of `item`, removes the attributes
/// named in `clear` that `item` lacks, and keeps any attribute this service does not
/// model (legacy items may carry more).
#[derive(Clone, Debug)]
struct Overwrite {
    key: Item,
    expression: String,
    condition: Option<String>,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl Overwrite {
    fn new(mut item: Item, clear: &[&str], expect: Expect) -> Self {
        let key: Item = ["tenantId", "id"]
            .iter()
            .filter_map(|k| item.remove_entry(*k))
            .collect();
        let mut names = HashMap::new();
        let mut values = HashMap::new();
        let mut sets = Vec::new();
        let mut attrs: Vec<_> = item.into_iter().collect();
        attrs.sort_by(|a, b| a.0.cmp(&b.0));
        for (i, (k, v)) in attrs.into_iter().enumerate() {
            names.insert(format!("#a{i}"), k);
            values.insert(format!(":a{i}"), v);
            sets.push(format!("#a{i} = :a{i}"));
        }
        let present: Vec<String> = names.values().cloned().collect();
        let removes: Vec<String> = clear
            .iter()
            .filter(|k| !present.iter().any(|n| n == *k))
            .enumerate()
            .map(|(i, k)| {
                names.insert(format!("#r{i}"), (*k).to_owned());
                format!("#r{i}")
            })
            .collect();
        let mut expression = format!("SET {}", sets.join(", "));
        if !removes.is_empty() {
            expression.push_str(&format!(" REMOVE {}", removes.join(", ")));
        }
        let condition = match expect {
            Expect::Version(v) => {
                values.insert(":expected".into(), n(v));
                Some("attribute_exists(id) AND #ver = :expected".to_owned())
            }
            Expect::NotNewer(v) => {
                values.insert(":incoming".into(), n(v));
                Some("attribute_not_exists(id) OR #ver <= :incoming".to_owned())
            }
            Expect::Any => None,
        };
        if condition.is_some() {
            names.insert("#ver".into(), "version".into());
        }
        Self {
            key,
            expression,
            condition,
            names,
            values,
        }
    }

    /// As one item of a TransactWriteItems.
    fn transact_item(self, table: &str) -> StoreResult<aws_sdk_dynamodb::types::TransactWriteItem> {
        let update = aws_sdk_dynamodb::types::Update::builder()
            .table_name(table)
            .set_key(Some(self.key))
            .update_expression(self.expression)
            .set_condition_expression(self.condition)
            .set_expression_attribute_names(Some(self.names))
            .set_expression_attribute_values(Some(self.values))
            .build()
            .map_err(|e| StoreError::Internal(Box::new(e)))?;
        Ok(aws_sdk_dynamodb::types::TransactWriteItem::builder()
            .update(update)
            .build())
    }
}

impl DynamoStore {
    /// Runs one overwrite; `Ok(false)` when its condition failed. Inside a dual write
    /// whose intent is not recorded yet it is a transaction carrying the intent.
    async fn overwrite(&self, table: &str, w: Overwrite) -> StoreResult<bool> {
        if intent::waiting() {
            return self.transact_one(w.transact_item(table)?).await;
        }
        let result = self
            .client
            .update_item()
            .table_name(table)
            .set_key(Some(w.key))
            .update_expression(w.expression)
            .set_condition_expression(w.condition)
            .set_expression_attribute_names(Some(w.names))
            .set_expression_attribute_values(Some(w.values))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failure(&e) => Ok(false),
            Err(e) => Err(sdk_error(e)),
        }
    }

    /// One conditional write as a TransactWriteItems (which a pending intent rides);
    /// `Ok(false)` when its condition failed (the intent's Put has none).
    async fn transact_one(
        &self,
        item: aws_sdk_dynamodb::types::TransactWriteItem,
    ) -> StoreResult<bool> {
        Ok(self.transact(vec![item]).await?.is_none())
    }

    /// The delete of an item if its version is `version`, as one item of a
    /// TransactWriteItems (with the release of its claims).
    fn delete_versioned_item(
        table: &str,
        tenant: &str,
        id: &str,
        version: i64,
    ) -> StoreResult<aws_sdk_dynamodb::types::TransactWriteItem> {
        let delete = aws_sdk_dynamodb::types::Delete::builder()
            .table_name(table)
            .set_key(Some(key(tenant, id)))
            .condition_expression("#ver = :v")
            .expression_attribute_names("#ver", "version")
            .expression_attribute_values(":v", n(version))
            .build()
            .map_err(|e| StoreError::Internal(Box::new(e)))?;
        Ok(aws_sdk_dynamodb::types::TransactWriteItem::builder()
            .delete(delete)
            .build())
    }

    /// Deletes an item if its version is `version`; `Ok(false)` when it changed.
    async fn delete_versioned(
        &self,
        table: &str,
        tenant: &str,
        id: &str,
        version: i64,
    ) -> StoreResult<bool> {
        if intent::waiting() {
            let item = Self::delete_versioned_item(table, tenant, id, version)?;
            return self.transact_one(item).await;
        }
        let result = self
            .client
            .delete_item()
            .table_name(table)
            .set_key(Some(key(tenant, id)))
            .condition_expression("#ver = :v")
            .expression_attribute_names("#ver", "version")
            .expression_attribute_values(":v", n(version))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failure(&e) => Ok(false),
            Err(e) => Err(sdk_error(e)),
        }
    }

    /// True when a query on `index` for `attr = value` finds any item.
    async fn exists_in_index(
        &self,
        table: &str,
        index: &'static str,
        tenant: &str,
        attr: &str,
        value: &str,
    ) -> StoreResult<bool> {
        let q = Query::index_eq(table, index, tenant, attr, value);
        Ok(!self.query(&q, 1).await?.is_empty())
    }

    /// Runs writes in TransactWriteItems of at most 100, in order, the final chunk
    /// full (so the last writes, e.g. a moved node, commit together with the ones
    /// before them), with `each` (a check or mark on the destination) in every chunk.
    /// Each chunk is atomic; the sequence is not.
    async fn transact_chunks(
        &self,
        items: Vec<aws_sdk_dynamodb::types::TransactWriteItem>,
        each: Option<aws_sdk_dynamodb::types::TransactWriteItem>,
    ) -> StoreResult<()> {
        let groups = items.into_iter().map(|i| vec![i]).collect();
        match self.transact_groups(groups, each).await? {
            Ok(()) => Ok(()),
            Err(c) => Err(c.into_error()),
        }
    }

    /// [`DynamoStore::transact_chunks`] of groups of writes, each group kept whole in
    /// one chunk (a write and the claim that must commit with it). A chunk cancelled
    /// by a failed condition is `Ok(Err(_))`, naming the items (indices into the
    /// groups flattened) whose conditions failed.
    async fn transact_groups(
        &self,
        groups: Vec<Vec<aws_sdk_dynamodb::types::TransactWriteItem>>,
        each: Option<aws_sdk_dynamodb::types::TransactWriteItem>,
    ) -> StoreResult<Result<(), ChunkCancelled>> {
        let limit = TRANSACTION_LIMIT - usize::from(each.is_some());
        for (chunk, first) in pack_chunks(groups, limit)? {
            let (indices, mut items): (Vec<usize>, Vec<_>) = chunk.into_iter().unzip();
            items.extend(each.clone());
            let e = match self.transact_write(items).await {
                Ok(_) => continue,
                Err(e) => e,
            };
            let Some(codes) = cancellation_codes(&e) else {
                return Err(sdk_error(e));
            };
            if !codes.iter().any(|c| c == "ConditionalCheckFailed") {
                return Err(StoreError::Unavailable(
                    "a concurrent transaction or throttling cancelled the move; retry".into(),
                ));
            }
            let failed = codes
                .iter()
                .zip(&indices)
                .filter(|(c, _)| *c == "ConditionalCheckFailed")
                .map(|(_, i)| *i)
                .collect();
            return Ok(Err(ChunkCancelled {
                failed,
                partial: !first,
            }));
        }
        Ok(Ok(()))
    }
}

/// A chunked write stopped by a failed condition.
struct ChunkCancelled {
    /// The items whose conditions failed (indices into the groups flattened); the
    /// per-chunk check can fail too, which is not listed.
    failed: Vec<usize>,
    /// Earlier chunks had committed.
    partial: bool,
}

impl ChunkCancelled {
    /// The move's answer: the subtree changed while it was read and written.
    fn into_error(self) -> StoreError {
        if self.partial {
            StoreError::FailedPrecondition {
                reason: "PARTIAL_MOVE",
                message: "the subtree changed while it was being moved; part of it was \
                          rewritten, retry the move to finish it"
                    .into(),
            }
        } else {
            StoreError::FailedPrecondition {
                reason: "CONCURRENT_HIERARCHY_CHANGE",
                message: "the subtree changed while it was being moved; retry".into(),
            }
        }
    }
}

/// One chunk of [`pack_chunks`]: each item with its index in the groups flattened, and
/// whether the chunk is the first.
type Chunk<T> = (Vec<(usize, T)>, bool);

/// Packs groups into chunks of at most `limit` items, in order, each group whole, the
/// last chunk as full as the groups allow.
fn pack_chunks<T>(groups: Vec<Vec<T>>, limit: usize) -> StoreResult<Vec<Chunk<T>>> {
    if groups.iter().any(|g| g.len() > limit) {
        return Err(StoreError::Internal(
            "a group of writes is larger than one transaction".into(),
        ));
    }
    let mut next = 0;
    let indexed: Vec<Vec<(usize, T)>> = groups
        .into_iter()
        .map(|g| {
            g.into_iter()
                .map(|t| {
                    next += 1;
                    (next - 1, t)
                })
                .collect()
        })
        .collect();
    // Filled from the end, so the remainder is the first chunk.
    let mut chunks: Vec<Vec<Vec<(usize, T)>>> = Vec::new();
    let mut current: Vec<Vec<(usize, T)>> = Vec::new();
    let mut size = 0;
    for g in indexed.into_iter().rev() {
        if size + g.len() > limit {
            chunks.push(std::mem::take(&mut current));
            size = 0;
        }
        size += g.len();
        current.push(g);
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    Ok(chunks
        .into_iter()
        .rev()
        .enumerate()
        .map(|(n, groups)| (groups.into_iter().rev().flatten().collect(), n == 0))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::pack_chunks;

    /// The chunks as lists of (index, item), first-chunk flags apart.
    fn chunks(groups: Vec<Vec<char>>, limit: usize) -> Vec<Vec<(usize, char)>> {
        let packed = pack_chunks(groups, limit).unwrap();
        let firsts: Vec<bool> = packed.iter().map(|c| c.1).collect();
        assert_eq!(firsts.iter().filter(|f| **f).count(), 1.min(packed.len()));
        assert!(packed.is_empty() || firsts[0]);
        packed.into_iter().map(|c| c.0).collect()
    }

    #[test]
    fn chunks_keep_order_and_fill_the_last_one() {
        let singles = (0..7).map(|i| vec![char::from(b'a' + i)]).collect();
        let got = chunks(singles, 3);
        assert_eq!(
            got,
            vec![
                vec![(0, 'a')],
                vec![(1, 'b'), (2, 'c'), (3, 'd')],
                vec![(4, 'e'), (5, 'f'), (6, 'g')],
            ]
        );
    }

    #[test]
    fn a_group_is_never_split_across_chunks() {
        // Pairs of (claim, write) and a single, 3 per chunk, filled from the end.
        let groups = vec![vec!['c', 'w'], vec!['d'], vec!['C', 'W'], vec!['x', 'y']];
        let got = chunks(groups, 3);
        assert_eq!(
            got,
            vec![
                vec![(0, 'c'), (1, 'w')],
                vec![(2, 'd'), (3, 'C'), (4, 'W')],
                vec![(5, 'x'), (6, 'y')],
            ]
        );
        assert!(pack_chunks(vec![vec!['a'; 4]], 3).is_err());
        assert!(chunks(Vec::new(), 3).is_empty());
    }
}
