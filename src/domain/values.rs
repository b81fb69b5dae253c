//! Small validated values shared by every entity: actors, paging, field violations,
//! generated codes.

/// A JSON object (metadata, attributes).
pub type JsonObject = serde_json::Map<String, serde_json::Value>;

/// The acting user (`x-user-id`), `system` when the caller named none (as legacy did).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor(String);

impl Actor {
    /// The default actor when no user is named.
    pub fn system() -> Self {
        Self("system".to_owned())
    }

    /// Validates an actor id: 1..255 characters, no control characters.
    pub fn parse(s: &str) -> Option<Self> {
        let ok = !s.is_empty() && s.chars().count() <= 255 && !s.chars().any(char::is_control);
        ok.then(|| Self(s.to_owned()))
    }

    /// The actor id as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Default page size of every List RPC.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Largest page size of every List RPC.
pub const MAX_PAGE_SIZE: usize = 1000;

/// One page to read: at most `size` items strictly after the key `after` (the last key
/// of the previous page, in the listing's own order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageRequest {
    pub size: usize,
    pub after: Option<String>,
}

/// One page of results, with the key to continue after when more remain.
#[derive(Clone, Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_after: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page from up to `size + 1` rows read in order: the extra row only says
    /// that more remain; the key to continue after is the last row returned.
    pub fn from_overfetch(mut rows: Vec<T>, size: usize, key: impl Fn(&T) -> String) -> Self {
        let more = rows.len() > size;
        rows.truncate(size);
        let next_after = if more { rows.last().map(key) } else { None };
        Self {
            items: rows,
            next_after,
        }
    }
}

/// One invalid request field: its path (e.g. `customer.name`) and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

/// Collects every violation of a request, so the caller learns about all bad fields
/// at once.
#[derive(Clone, Debug, Default)]
pub struct Violations(pub Vec<FieldViolation>);

impl Violations {
    /// Records a violation.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation {
            field: field.into(),
            description: description.into(),
        });
    }

    /// Checks a required string's length in characters.
    pub fn required(&mut self, field: &str, value: &str, max: usize) {
        if value.trim().is_empty() {
            self.add(field, "is required and must not be blank");
        } else {
            self.max_len(field, value, max);
        }
    }

    /// Checks an optional string's length in characters.
    pub fn max_len(&mut self, field: &str, value: &str, max: usize) {
        let n = value.chars().count();
        if n > max {
            self.add(field, format!("must be at most {max} characters (got {n})"));
        }
    }

    /// Checks an optional string that, when present, must not be blank.
    pub fn optional_non_blank(&mut self, field: &str, value: Option<&str>, max: usize) {
        if let Some(v) = value {
            self.required(field, v, max);
        }
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(value)` when nothing was recorded, else every violation.
    pub fn finish<T>(self, value: T) -> Result<T, Violations> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }
}

/// The legacy code generator (contract §2.1): upper-case, every character outside
/// `A-Z0-9` becomes `-`, runs of `-` collapse, first 20 characters.
pub fn generate_code(name: &str) -> String {
    let mut out = String::new();
    for c in name.to_uppercase().chars() {
        let c = if c.is_ascii_uppercase() || c.is_ascii_digit() {
            c
        } else {
            '-'
        };
        if c == '-' && out.ends_with('-') {
            continue;
        }
        out.push(c);
    }
    out.chars().take(20).collect()
}

#[cfg(test)]
mod tests {
    use super::generate_code;

    #[test]
    fn generated_codes_match_the_legacy_examples() {
        assert_eq!(generate_code("Shopping Campinas"), "SHOPPING-CAMPINAS");
        assert_eq!(
            generate_code("São Paulo Shopping Center"),
            "S-O-PAULO-SHOPPING-C"
        );
        assert_eq!(generate_code("  Loja 01 "), "-LOJA-01-");
        assert_eq!(
            generate_code("Headquarters Building"),
            "HEADQUARTERS-BUILDIN"
        );
        assert_eq!(generate_code("straße"), "STRASSE");
    }
}
