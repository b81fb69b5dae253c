//! Conversions between protobuf messages and domain types, one file per entity.
//!
//! Inbound conversions validate and collect every violation; outbound ones cannot
//! fail. Shared here: ids, timestamps, JSON structs, field masks and page tokens.

pub mod access;
pub mod asset;
pub mod customer;
pub mod device;
pub mod partner;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use prost_types::value::Kind;
use sha2::{Digest, Sha256};

use crate::domain::{DEFAULT_PAGE_SIZE, JsonObject, MAX_PAGE_SIZE, PageRequest, Violations};

/// Parses a required id field; records a violation when missing or malformed.
pub fn id<T>(
    v: &mut Violations,
    field: &str,
    value: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Option<T> {
    if value.is_empty() {
        v.add(field, "is required");
        return None;
    }
    let parsed = parse(value);
    if parsed.is_none() {
        v.add(field, "must be a UUID (8-4-4-4-12 hex digits)");
    }
    parsed
}

/// Parses a required id field of an entity without an id newtype (roles, policies,
/// assignments, partners and their credentials).
pub fn uuid(v: &mut Violations, field: &str, value: &str) -> Option<uuid::Uuid> {
    id(v, field, value, |s| {
        if s.len() == 36 {
            uuid::Uuid::parse_str(s).ok()
        } else {
            None
        }
    })
}

/// Parses an optional id field.
pub fn opt_id<T>(
    v: &mut Violations,
    field: &str,
    value: Option<&str>,
    parse: impl Fn(&str) -> Option<T>,
) -> Option<T> {
    value.and_then(|s| id(v, field, s, parse))
}

/// A required enum: 0 (UNSPECIFIED) and unknown numbers are violations.
pub fn required_enum<P, D>(
    v: &mut Violations,
    field: &str,
    raw: i32,
    map: impl Fn(P) -> Option<D>,
) -> Option<D>
where
    P: TryFrom<i32>,
{
    let d = P::try_from(raw).ok().and_then(map);
    if d.is_none() {
        v.add(
            field,
            if raw == 0 {
                "is required".to_owned()
            } else {
                format!("unknown value {raw}")
            },
        );
    }
    d
}

/// An optional enum filter: 0 means "any"; unknown numbers are violations.
pub fn filter_enum<P, D>(
    v: &mut Violations,
    field: &str,
    raw: i32,
    map: impl Fn(P) -> Option<D>,
) -> Option<D>
where
    P: TryFrom<i32>,
{
    if raw == 0 {
        return None;
    }
    let d = P::try_from(raw).ok().and_then(map);
    if d.is_none() {
        v.add(field, format!("unknown value {raw}"));
    }
    d
}

/// A protobuf timestamp.
pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// A protobuf timestamp, validated.
pub fn from_timestamp(
    v: &mut Violations,
    field: &str,
    t: Option<prost_types::Timestamp>,
) -> Option<DateTime<Utc>> {
    let t = t?;
    let parsed = u32::try_from(t.nanos)
        .ok()
        .and_then(|n| DateTime::from_timestamp(t.seconds, n));
    if parsed.is_none() {
        v.add(field, "is not a valid timestamp");
    }
    parsed
}

/// A `google.protobuf.Struct` as a JSON object (absent: empty).
pub fn struct_to_json(s: Option<prost_types::Struct>) -> JsonObject {
    s.map(|s| {
        s.fields
            .into_iter()
            .map(|(k, v)| (k, value_to_json(v)))
            .collect()
    })
    .unwrap_or_default()
}

fn value_to_json(v: prost_types::Value) -> serde_json::Value {
    match v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::NumberValue(n)) => {
            serde_json::Number::from_f64(n).map_or(serde_json::Value::Null, Into::into)
        }
        Some(Kind::StringValue(s)) => s.into(),
        Some(Kind::BoolValue(b)) => b.into(),
        Some(Kind::StructValue(s)) => serde_json::Value::Object(struct_to_json(Some(s))),
        Some(Kind::ListValue(l)) => l.values.into_iter().map(value_to_json).collect(),
    }
}

/// A JSON object as a `google.protobuf.Struct`.
pub fn json_to_struct(m: JsonObject) -> prost_types::Struct {
    prost_types::Struct {
        fields: m.into_iter().map(|(k, v)| (k, json_to_value(v))).collect(),
    }
}

fn json_to_value(v: serde_json::Value) -> prost_types::Value {
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.into_iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(m) => Kind::StructValue(json_to_struct(m)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// Metadata-like JSON: at most 64 KiB once serialized.
pub fn check_json_size(v: &mut Violations, field: &str, m: &JsonObject) {
    let size = serde_json::to_vec(m).map_or(usize::MAX, |b| b.len());
    if size > 64 * 1024 {
        v.add(
            field,
            format!("must be at most 65536 bytes as JSON (got {size})"),
        );
    }
}

/// Checks a list of tags: at most `max_items`, each non-blank and at most `max_len`.
pub fn check_tags(
    v: &mut Violations,
    field: &str,
    tags: &[String],
    max_items: usize,
    max_len: usize,
) {
    if tags.len() > max_items {
        v.add(
            field,
            format!("must hold at most {max_items} items (got {})", tags.len()),
        );
    }
    for (i, t) in tags.iter().enumerate() {
        v.required(&format!("{field}[{i}]"), t, max_len);
    }
}

/// The paths of an update mask, each checked against `allowed`. An absent or empty mask
/// is a violation: an update must say what it changes.
pub fn mask_paths(
    v: &mut Violations,
    mask: Option<prost_types::FieldMask>,
    allowed: &[&str],
) -> Vec<String> {
    let paths = mask.map(|m| m.paths).unwrap_or_default();
    if paths.is_empty() {
        v.add(
            "update_mask",
            "is required and must name at least one field",
        );
    }
    for p in &paths {
        if !allowed.contains(&p.as_str()) {
            v.add(
                "update_mask",
                format!("cannot update {p:?}; updatable: {}", allowed.join(", ")),
            );
        }
    }
    paths
}

/// Validates paging input. `scope` describes the listing (its filters): a token is only
/// accepted by the listing that issued it.
pub fn page_request(
    v: &mut Violations,
    page_size: i32,
    page_token: &str,
    scope: &str,
) -> PageRequest {
    let size = match page_size {
        0 => DEFAULT_PAGE_SIZE,
        n if n < 0 => {
            v.add("page_size", "must not be negative");
            DEFAULT_PAGE_SIZE
        }
        n => (n as usize).min(MAX_PAGE_SIZE),
    };
    let after = if page_token.is_empty() {
        None
    } else {
        let decoded = URL_SAFE_NO_PAD
            .decode(page_token)
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        match decoded.as_deref().and_then(|s| s.split_once('|')) {
            Some((fp, key)) if fp == fingerprint(scope) && !key.is_empty() => Some(key.to_owned()),
            _ => {
                v.add("page_token", "is not a token issued for this listing");
                None
            }
        }
    };
    PageRequest { size, after }
}

/// The opaque token for the page after `after` in the listing `scope`.
pub fn next_page_token(after: Option<String>, scope: &str) -> String {
    after
        .map(|key| URL_SAFE_NO_PAD.encode(format!("{}|{key}", fingerprint(scope))))
        .unwrap_or_default()
}

fn fingerprint(scope: &str) -> String {
    Sha256::digest(scope.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Validates an optional `max_depth` (>= 1).
pub fn max_depth(v: &mut Violations, value: Option<i32>) -> Option<i32> {
    match value {
        Some(d) if d < 1 => {
            v.add("max_depth", "must be at least 1");
            None
        }
        other => other,
    }
}

/// Validates a tree depth: default 5, 0..=20.
pub fn tree_depth(v: &mut Violations, value: Option<i32>) -> i32 {
    match value {
        None => 5,
        Some(d @ 0..=20) => d,
        Some(_) => {
            v.add("max_depth", "must be between 0 and 20");
            5
        }
    }
}

/// Validates an optional expected version (>= 1).
pub fn expected_version(v: &mut Violations, value: Option<i64>) -> Option<i64> {
    if let Some(x) = value
        && x < 1
    {
        v.add("expected_version", "must be at least 1");
    }
    value
}

/// Checks an e-mail address: one `@` with text on both sides, a dot in the domain.
pub fn check_email(v: &mut Violations, field: &str, email: &str) {
    let ok = email.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty()
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
    }) && !email.chars().any(char::is_whitespace);
    if !ok {
        v.add(field, "must be an e-mail address");
    }
    v.max_len(field, email, 255);
}

/// Keeps the violations of `all` whose field (below `prefix`) lies under one of the
/// mask `paths`: an update validates only what it changes.
pub fn keep_named(v: &mut Violations, all: Violations, prefix: &str, paths: &[String]) {
    for viol in all.0 {
        let rel = viol.field.strip_prefix(prefix).unwrap_or(&viol.field);
        let named = paths.iter().any(|p| {
            rel == p
                || rel
                    .strip_prefix(p.as_str())
                    .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
        });
        if named {
            v.0.push(viol);
        }
    }
}
