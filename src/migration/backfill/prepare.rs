//! Decoding and preparing legacy items: the repair rules of the module doc, applied
//! against what PostgreSQL already holds.

use std::ops::Deref;

use super::*;

/// A value of the page, borrowed until a rule changes it; then a copy, boxed (a
/// record is ~800 bytes, and a page passes through several vectors of them).
#[derive(Debug)]
pub(super) enum Held<'a, T: Clone> {
    Page(&'a T),
    Changed(Box<T>),
}

impl<T: Clone> Held<'_, T> {
    /// The value to change (copied from the page the first time).
    pub(super) fn to_mut(&mut self) -> &mut T {
        if let Held::Page(v) = self {
            *self = Held::Changed(Box::new((*v).clone()));
        }
        match self {
            Held::Changed(v) => v,
            Held::Page(_) => unreachable!("replaced just above"),
        }
    }
}

impl<T: Clone> Deref for Held<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        match self {
            Held::Page(v) => v,
            Held::Changed(v) => v,
        }
    }
}

impl<T: Clone> std::borrow::Borrow<T> for Held<'_, T> {
    fn borrow(&self) -> &T {
        self
    }
}

/// One item, prepared for loading. A record no rule changed is the page's own,
/// borrowed; only a repaired one is copied.
pub(super) enum Prepared<'a> {
    Ready {
        record: Held<'a, Record>,
        fields: Vec<String>,
        rules: Vec<String>,
    },
    Defer {
        waits_for: String,
    },
    Quarantine {
        reason: String,
    },
}

/// Decodes and prepares the items of one page (see the module doc for the rules).
pub(super) async fn prepare<'a>(
    conn: &mut AsyncPgConnection,
    entity: Entity,
    items: &[(ledger::LedgerKey, &'a Scanned)],
) -> StoreResult<Vec<Prepared<'a>>> {
    let mut out = Vec::with_capacity(items.len());
    let mut decoded = Vec::with_capacity(items.len());
    for (_, item) in items {
        match &item.record {
            Ok(r) => {
                out.push(None);
                decoded.push(Some(r));
            }
            Err(reason) => {
                out.push(Some(Prepared::Quarantine {
                    reason: reason.clone(),
                }));
                decoded.push(None);
            }
        }
    }
    let prepared = match entity {
        Entity::Customer => prepare_customers(conn, &decoded).await?,
        Entity::Asset => prepare_assets(conn, &decoded).await?,
        Entity::Device => prepare_devices(conn, &decoded).await?,
        _ => decoded
            .iter()
            .map(|r| {
                r.map(|record| Prepared::Ready {
                    record: Held::Page(record),
                    fields: Vec::new(),
                    rules: Vec::new(),
                })
            })
            .collect(),
    };
    Ok(out
        .into_iter()
        .zip(prepared)
        .map(|(early, late)| {
            early.or(late).unwrap_or(Prepared::Quarantine {
                reason: "undecodable".into(),
            })
        })
        .collect())
}

/// Repairs collected for one record.
#[derive(Default)]
pub(super) struct Repairs {
    pub(super) fields: Vec<String>,
    pub(super) rules: Vec<String>,
}

impl Repairs {
    pub(super) fn add(&mut self, field: &str, rule: &str) {
        if !self.fields.iter().any(|f| f == field) {
            self.fields.push(field.to_owned());
        }
        if !self.rules.iter().any(|r| r == rule) {
            self.rules.push(rule.to_owned());
        }
    }

    pub(super) fn ready(self, record: Held<'_, Record>) -> Prepared<'_> {
        Prepared::Ready {
            record,
            fields: self.fields,
            rules: self.rules,
        }
    }
}

/// The record of a node (`original`, which holds `node`) as prepared: the original
/// when no rule changed it, else the changed copy.
fn as_record<'a, T: Clone>(
    original: &'a Record,
    node: Held<'a, T>,
    wrap: fn(T) -> Record,
) -> Held<'a, Record> {
    match node {
        Held::Page(_) => Held::Page(original),
        Held::Changed(n) => Held::Changed(Box::new(wrap(*n))),
    }
}

/// The non-empty segments of a legacy path.
pub(super) fn segments(path: &str) -> Vec<&str> {
    path.split('/').filter(|s| !s.is_empty()).collect()
}

/// What a well-formed path says of the node's parent: `Some(None)` root, `Some(Some)`
/// the parent id, `None` when the path is malformed. `head` is how many leading
/// segments are not nodes (tenant; tenant and customer for assets).
pub(super) fn parent_from_path(
    path: &str,
    tenant: &str,
    id: Uuid,
    head: usize,
) -> Option<Option<Uuid>> {
    let seg = segments(path);
    if seg.len() <= head || seg[0] != tenant || seg.last() != Some(&id.to_string().as_str()) {
        return None;
    }
    let nodes = &seg[head..];
    if nodes.len() == 1 {
        return Some(None);
    }
    Uuid::parse_str(nodes[nodes.len() - 2]).ok().map(Some)
}

#[derive(diesel::QueryableByName)]
pub(super) struct NodeRow {
    #[diesel(sql_type = Text)]
    pub(super) tenant_id: String,
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub(super) id: Uuid,
    #[diesel(sql_type = Text)]
    pub(super) path: String,
    #[diesel(sql_type = Integer)]
    pub(super) depth: i32,
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub(super) customer_id: Uuid,
}

/// Rows of `table` (customers or assets) for the `(tenant, id)` pairs, by key.
pub(super) async fn nodes(
    conn: &mut AsyncPgConnection,
    table: &str,
    keys: &HashSet<(String, Uuid)>,
) -> StoreResult<HashMap<(String, Uuid), NodeRow>> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    // One `id = ANY(...)` per tenant: a primary-key index scan (a join against an
    // unnest of pairs was planned as a hash join over the whole table).
    let mut by_tenant: HashMap<&str, Vec<Uuid>> = HashMap::new();
    for (t, id) in keys {
        by_tenant.entry(t.as_str()).or_default().push(*id);
    }
    let customer = if table == "customers" {
        "id"
    } else {
        "customer_id"
    };
    let mut found = HashMap::with_capacity(keys.len());
    for (tenant, ids) in by_tenant {
        let rows: Vec<NodeRow> = diesel::sql_query(format!(
            "SELECT tenant_id, id, path, depth, {customer} AS customer_id FROM {table} \
             WHERE tenant_id = $1 AND id = ANY($2)"
        ))
        .bind::<Text, _>(tenant)
        .bind::<Array<diesel::sql_types::Uuid>, _>(&ids)
        .load(&mut *conn)
        .await?;
        found.extend(rows.into_iter().map(|r| ((r.tenant_id.clone(), r.id), r)));
    }
    Ok(found)
}

#[derive(diesel::QueryableByName)]
pub(super) struct CodeRow {
    #[diesel(sql_type = Text)]
    pub(super) tenant_id: String,
    #[diesel(sql_type = Text)]
    pub(super) scope: String,
    #[diesel(sql_type = Text)]
    pub(super) code: String,
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub(super) id: Uuid,
}

/// Owners of codes already in PostgreSQL: `(tenant, scope, code) -> id`, where scope
/// is "" for customers and the customer id for assets.
pub(super) async fn code_owners(
    conn: &mut AsyncPgConnection,
    table: &str,
    wanted: &[(String, String, String)],
) -> StoreResult<HashMap<(String, String, String), Uuid>> {
    if wanted.is_empty() {
        return Ok(HashMap::new());
    }
    let t: Vec<String> = wanted.iter().map(|w| w.0.clone()).collect();
    let s: Vec<String> = wanted.iter().map(|w| w.1.clone()).collect();
    let c: Vec<String> = wanted.iter().map(|w| w.2.clone()).collect();
    let join = if table == "customers" {
        ""
    } else {
        "AND n.customer_id = k.s::uuid"
    };
    // One unique-index probe per key (the LIMIT keeps the subquery from being pulled
    // up into a join, which was planned as a hash join over the whole table: a scan
    // of every row per page, quadratic over a table's load).
    let rows: Vec<CodeRow> = diesel::sql_query(format!(
        "SELECT k.t AS tenant_id, k.s AS scope, x.code, x.id \
         FROM unnest($1::text[], $2::text[], $3::text[]) AS k(t, s, c) \
         CROSS JOIN LATERAL (SELECT n.code::text AS code, n.id FROM {table} n \
           WHERE n.tenant_id = k.t AND n.code = k.c {join} LIMIT 1) x"
    ))
    .bind::<Array<Text>, _>(&t)
    .bind::<Array<Text>, _>(&s)
    .bind::<Array<Text>, _>(&c)
    .load(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| ((r.tenant_id, r.scope, r.code), r.id))
        .collect())
}

/// `<code>-<first 8 hex of id>`, within the 50-character column.
pub(super) fn recode(code: &str, id: Uuid) -> String {
    let suffix = &id.simple().to_string()[..8];
    let head: String = code.chars().take(50 - 9).collect();
    format!("{head}-{suffix}")
}

/// Gives every record a code no other record (in PostgreSQL or earlier in `ready`)
/// holds in its scope; scope is "" for customers, the customer id for assets.
pub(super) async fn dedupe_codes(
    conn: &mut AsyncPgConnection,
    table: &str,
    ready: &mut [(usize, Held<'_, Record>, Repairs)],
) -> StoreResult<()> {
    let code_key = |r: &Record| -> (String, String, String) {
        match r {
            Record::Customer(c) => (
                c.tenant_id.as_str().to_owned(),
                String::new(),
                c.code.clone(),
            ),
            Record::Asset(a) => (
                a.tenant_id.as_str().to_owned(),
                a.customer_id.0.to_string(),
                a.code.clone(),
            ),
            _ => Default::default(),
        }
    };
    let wanted: Vec<_> = ready.iter().map(|(_, r, _)| code_key(r)).collect();
    let mut owners = code_owners(conn, table, &wanted).await?;
    for (_, record, repairs) in ready.iter_mut() {
        let key = code_key(record);
        let id = record.key().id;
        match owners.get(&key) {
            Some(owner) if *owner != id => {
                let new_code = recode(&key.2, id);
                match record.to_mut() {
                    Record::Customer(c) => c.code = new_code.clone(),
                    Record::Asset(a) => a.code = new_code.clone(),
                    _ => {}
                }
                repairs.add("code", "code-collision");
                owners.insert((key.0, key.1, new_code), id);
            }
            Some(_) => {}
            None => {
                owners.insert(key, id);
            }
        }
    }
    Ok(())
}

/// Customers: parent from the path when it disagrees, path and depth from the
/// parent's row, unique codes; a customer whose parent is not loaded yet is deferred.
pub(super) async fn prepare_customers<'a>(
    conn: &mut AsyncPgConnection,
    decoded: &[Option<&'a Record>],
) -> StoreResult<Vec<Option<Prepared<'a>>>> {
    type Customer = crate::domain::customer::Customer;
    let mut out: Vec<Option<Prepared>> = decoded.iter().map(|_| None).collect();
    let mut waiting: Vec<(usize, &Record, Held<Customer>, Repairs)> = Vec::new();
    for (i, slot) in decoded.iter().enumerate() {
        let Some(original @ Record::Customer(c)) = *slot else {
            continue;
        };
        let mut c = Held::Page(c);
        let mut repairs = Repairs::default();
        let tenant = c.tenant_id.as_str().to_owned();
        if let Some(from_path) = parent_from_path(&c.path, &tenant, c.id.0, 1) {
            let from_path = from_path.map(CustomerId);
            if from_path != c.parent_id {
                c.to_mut().parent_id = from_path;
                repairs.add("parentCustomerId", "parent-from-path");
            }
        }
        if c.parent_id == Some(c.id) {
            out[i] = Some(Prepared::Quarantine {
                reason: "invalid: customer is its own parent".into(),
            });
            continue;
        }
        waiting.push((i, original, c, repairs));
    }
    let parents: HashSet<(String, Uuid)> = waiting
        .iter()
        .filter_map(|(_, _, c, _)| c.parent_id.map(|p| (c.tenant_id.as_str().to_owned(), p.0)))
        .collect();
    let mut known: HashMap<(String, Uuid), (String, i32)> = nodes(conn, "customers", &parents)
        .await?
        .into_iter()
        .map(|(k, r)| (k, (r.path, r.depth)))
        .collect();
    // Place parents before children within the page, in rounds.
    let mut ready = Vec::new();
    loop {
        let mut progressed = false;
        let mut rest = Vec::new();
        for (i, original, mut c, mut repairs) in waiting {
            let tenant = c.tenant_id.as_str().to_owned();
            let placed = match c.parent_id {
                None => Some((format!("/{tenant}/{}", c.id.0), 0)),
                Some(p) => known
                    .get(&(tenant.clone(), p.0))
                    .map(|(path, depth)| (format!("{path}/{}", c.id.0), depth + 1)),
            };
            match placed {
                Some((path, depth)) => {
                    if path != c.path {
                        repairs.add("path", "path-from-parents");
                        c.to_mut().path = path;
                    }
                    if depth != c.depth {
                        repairs.add("depth", "path-from-parents");
                        c.to_mut().depth = depth;
                    }
                    known.insert((tenant, c.id.0), (c.path.clone(), c.depth));
                    ready.push((i, as_record(original, c, Record::Customer), repairs));
                    progressed = true;
                }
                None => rest.push((i, original, c, repairs)),
            }
        }
        waiting = rest;
        if !progressed || waiting.is_empty() {
            break;
        }
    }
    for (i, _, c, _) in waiting {
        let p = c.parent_id.map(|p| p.0.to_string()).unwrap_or_default();
        out[i] = Some(Prepared::Defer {
            waits_for: format!("parent customer {p}"),
        });
    }
    dedupe_codes(conn, "customers", &mut ready).await?;
    for (i, record, repairs) in ready {
        out[i] = Some(repairs.ready(record));
    }
    Ok(out)
}

/// Assets: as customers, plus the customer from the parent (roots: from the path,
/// which must name a loaded customer).
pub(super) async fn prepare_assets<'a>(
    conn: &mut AsyncPgConnection,
    decoded: &[Option<&'a Record>],
) -> StoreResult<Vec<Option<Prepared<'a>>>> {
    type Asset = crate::domain::asset::Asset;
    let mut out: Vec<Option<Prepared>> = decoded.iter().map(|_| None).collect();
    let mut waiting: Vec<(usize, &Record, Held<Asset>, Repairs)> = Vec::new();
    for (i, slot) in decoded.iter().enumerate() {
        let Some(original @ Record::Asset(a)) = *slot else {
            continue;
        };
        let mut a = Held::Page(a);
        let mut repairs = Repairs::default();
        let tenant = a.tenant_id.as_str().to_owned();
        if let Some(from_path) = parent_from_path(&a.path, &tenant, a.id.0, 2) {
            let from_path = from_path.map(AssetId);
            if from_path != a.parent_id {
                a.to_mut().parent_id = from_path;
                repairs.add("parentAssetId", "parent-from-path");
            }
            if a.parent_id.is_none() {
                let seg = segments(&a.path);
                if let Some(c) = Uuid::parse_str(seg[1]).ok().map(CustomerId) {
                    if c != a.customer_id {
                        a.to_mut().customer_id = c;
                        repairs.add("customerId", "customer-from-parent");
                    }
                }
            }
        }
        if a.parent_id == Some(a.id) {
            out[i] = Some(Prepared::Quarantine {
                reason: "invalid: asset is its own parent".into(),
            });
            continue;
        }
        waiting.push((i, original, a, repairs));
    }
    let tenant_of = |a: &Asset| a.tenant_id.as_str().to_owned();
    let parents: HashSet<(String, Uuid)> = waiting
        .iter()
        .filter_map(|(_, _, a, _)| a.parent_id.map(|p| (tenant_of(a), p.0)))
        .collect();
    let customers: HashSet<(String, Uuid)> = waiting
        .iter()
        .filter(|(_, _, a, _)| a.parent_id.is_none())
        .map(|(_, _, a, _)| (tenant_of(a), a.customer_id.0))
        .collect();
    let loaded_customers = nodes(conn, "customers", &customers).await?;
    let mut known: HashMap<(String, Uuid), (String, i32, Uuid)> = nodes(conn, "assets", &parents)
        .await?
        .into_iter()
        .map(|(k, r)| (k, (r.path, r.depth, r.customer_id)))
        .collect();
    let mut ready = Vec::new();
    loop {
        let mut progressed = false;
        let mut rest = Vec::new();
        for (i, original, mut a, mut repairs) in waiting {
            let tenant = tenant_of(&a);
            let placed = match a.parent_id {
                None => loaded_customers
                    .contains_key(&(tenant.clone(), a.customer_id.0))
                    .then(|| {
                        (
                            format!("/{tenant}/{}/{}", a.customer_id.0, a.id.0),
                            0,
                            a.customer_id.0,
                        )
                    }),
                Some(p) => known
                    .get(&(tenant.clone(), p.0))
                    .map(|(path, depth, cust)| (format!("{path}/{}", a.id.0), depth + 1, *cust)),
            };
            match placed {
                Some((path, depth, customer)) => {
                    if customer != a.customer_id.0 {
                        a.to_mut().customer_id = CustomerId(customer);
                        repairs.add("customerId", "customer-from-parent");
                    }
                    if path != a.path {
                        repairs.add("path", "path-from-parents");
                        a.to_mut().path = path;
                    }
                    if depth != a.depth {
                        repairs.add("depth", "path-from-parents");
                        a.to_mut().depth = depth;
                    }
                    known.insert((tenant, a.id.0), (a.path.clone(), a.depth, customer));
                    ready.push((i, as_record(original, a, Record::Asset), repairs));
                    progressed = true;
                }
                None => rest.push((i, original, a, repairs)),
            }
        }
        waiting = rest;
        if !progressed || waiting.is_empty() {
            break;
        }
    }
    for (i, _, a, _) in waiting {
        let waits_for = match a.parent_id {
            Some(p) => format!("parent asset {}", p.0),
            None => format!("customer {}", a.customer_id.0),
        };
        out[i] = Some(Prepared::Defer { waits_for });
    }
    dedupe_codes(conn, "assets", &mut ready).await?;
    for (i, record, repairs) in ready {
        out[i] = Some(repairs.ready(record));
    }
    Ok(out)
}

/// Devices: the asset must be loaded; the customer is the asset's.
pub(super) async fn prepare_devices<'a>(
    conn: &mut AsyncPgConnection,
    decoded: &[Option<&'a Record>],
) -> StoreResult<Vec<Option<Prepared<'a>>>> {
    let wanted: HashSet<(String, Uuid)> = decoded
        .iter()
        .filter_map(|r| match r {
            Some(Record::Device(d)) => Some((d.tenant_id.as_str().to_owned(), d.asset_id.0)),
            _ => None,
        })
        .collect();
    let assets = nodes(conn, "assets", &wanted).await?;
    Ok(decoded
        .iter()
        .map(|slot| {
            let Some(original @ Record::Device(d)) = *slot else {
                return None;
            };
            let Some(asset) = assets.get(&(d.tenant_id.as_str().to_owned(), d.asset_id.0)) else {
                return Some(Prepared::Defer {
                    waits_for: format!("asset {}", d.asset_id.0),
                });
            };
            let mut repairs = Repairs::default();
            let mut d = Held::Page(d);
            if asset.customer_id != d.customer_id.0 {
                d.to_mut().customer_id = CustomerId(asset.customer_id);
                repairs.add("customerId", "customer-from-parent");
            }
            Some(repairs.ready(as_record(original, d, Record::Device)))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn parent_from_path_reads_well_formed_paths_only() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(parent_from_path(&format!("/t/{b}"), "t", b, 1), Some(None));
        assert_eq!(
            parent_from_path(&format!("/t/{a}/{b}"), "t", b, 1),
            Some(Some(a))
        );
        assert_eq!(parent_from_path(&format!("/x/{a}/{b}"), "t", b, 1), None);
        assert_eq!(parent_from_path(&format!("/t/{a}"), "t", b, 1), None);
        assert_eq!(parent_from_path("", "t", b, 1), None);
        // Assets: the second segment is the customer.
        assert_eq!(
            parent_from_path(&format!("/t/{a}/{b}"), "t", b, 2),
            Some(None)
        );
        let c = Uuid::new_v4();
        assert_eq!(
            parent_from_path(&format!("/t/{c}/{a}/{b}"), "t", b, 2),
            Some(Some(a))
        );
    }

    #[test]
    pub(super) fn recoded_codes_fit_the_column_and_name_the_item() {
        let id = Uuid::parse_str("0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!(recode("ACME", id), "ACME-01234567");
        assert_eq!(recode(&"X".repeat(60), id).len(), 50);
    }
}
