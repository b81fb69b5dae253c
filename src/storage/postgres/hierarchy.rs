//! SQL shared by the two hierarchies (customers, assets): the per-tenant hierarchy
//! lock, the index-driven descendant range, and the subtree path rewrite.
//!
//! Locking: a move takes the tenant's hierarchy lock exclusively; anything that
//! derives a row from a parent's path (create under a parent, device create/move)
//! takes it shared. So a move never runs while a child is being inserted under a
//! path it rewrites, and two moves in one tenant never interleave (no cycles, no
//! stale paths), while creates do not block each other.

use diesel::sql_types::{Integer, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::domain::{Ctx, TenantId};
use crate::storage::StoreResult;

/// Which hierarchy a lock or query is about.
#[derive(Clone, Copy, Debug)]
pub(super) enum Tree {
    Customers,
    Assets,
}

impl Tree {
    fn table(self) -> &'static str {
        match self {
            Tree::Customers => "customers",
            Tree::Assets => "assets",
        }
    }
}

/// Takes the tenant's hierarchy lock until the end of the transaction.
pub(super) async fn lock(
    conn: &mut AsyncPgConnection,
    tree: Tree,
    tenant: &TenantId,
    exclusive: bool,
) -> StoreResult<()> {
    let sql = if exclusive {
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))"
    } else {
        "SELECT pg_advisory_xact_lock_shared(hashtextextended($1, 0))"
    };
    diesel::sql_query(sql)
        .bind::<Text, _>(format!("{}:{}", tree.table(), tenant))
        .execute(conn)
        .await?;
    Ok(())
}

/// Exclusive bounds of the descendants of `path` under the "C" collation: every
/// descendant path starts with `path/`, and `0` is the byte after `/`.
pub(super) fn descendant_bounds(path: &str) -> (String, String) {
    (format!("{path}/"), format!("{path}0"))
}

/// The descendants query on a hierarchy table, as a Diesel query (decoded by column
/// position): tenant, exclusive lower and upper path bounds, maximum absolute depth,
/// limit. In path order, which is depth-first pre-order.
macro_rules! descendants_query {
    ($table:ident, $row:ty, $tenant:expr, $lower:expr, $upper:expr, $max_depth:expr, $limit:expr) => {
        $table::table
            .filter($table::tenant_id.eq($tenant))
            .filter($table::path.gt($lower))
            .filter($table::path.lt($upper))
            .filter($table::depth.le($max_depth))
            .order($table::path)
            .limit($limit)
            .select(<$row>::as_select())
    };
}
pub(super) use descendants_query;

/// The customers descendants query exactly as the store builds it (placeholders `$1`
/// tenant, `$2` lower, `$3` upper, `$4` max depth, `$5` limit), for tests that EXPLAIN it.
pub fn customer_descendants_sql() -> String {
    use super::customers::CustomerRow;
    use super::schema::customers;
    use diesel::prelude::*;
    let q = descendants_query!(customers, CustomerRow, "", "", "", 0, 0);
    let sql = diesel::debug_query::<diesel::pg::Pg, _>(&q).to_string();
    sql.split(" -- binds:")
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Rewrites path and depth of every strict descendant of `old_path` to hang under
/// `new_path`, bumping versions. Returns how many rows changed.
pub(super) async fn rewrite_descendants(
    conn: &mut AsyncPgConnection,
    tree: Tree,
    ctx: &Ctx,
    old_path: &str,
    new_path: &str,
    depth_delta: i32,
    now: chrono::DateTime<chrono::Utc>,
) -> StoreResult<usize> {
    let (lower, upper) = descendant_bounds(old_path);
    let sql = format!(
        "UPDATE {} SET path = $1 || substr(path, $2), depth = depth + $3, version = version + 1, \
         updated_at = $4, updated_by = $5 WHERE tenant_id = $6 AND path > $7 AND path < $8",
        tree.table()
    );
    let old_len = i32::try_from(old_path.len()).unwrap_or(i32::MAX);
    Ok(diesel::sql_query(sql)
        .bind::<Text, _>(new_path)
        .bind::<Integer, _>(old_len + 1)
        .bind::<Integer, _>(depth_delta)
        .bind::<diesel::sql_types::Timestamptz, _>(now)
        .bind::<Text, _>(ctx.actor.as_str())
        .bind::<Text, _>(ctx.tenant.as_str())
        .bind::<Text, _>(&lower)
        .bind::<Text, _>(&upper)
        .execute(conn)
        .await?)
}

pub(super) use crate::storage::ancestor_ids;
