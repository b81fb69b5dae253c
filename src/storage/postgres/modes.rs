//! The persisted storage modes (`storage_modes`): the global row (`*`) and per-tenant
//! overrides.

use std::collections::BTreeMap;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::PgStore;
use super::schema::storage_modes as sm;
use crate::storage::StoreResult;
use crate::storage::mode::{ModeTable, StorageMode};

/// The scope of the global row.
pub const GLOBAL: &str = "*";

impl PgStore {
    /// The persisted table; `default` when no global row was ever written.
    pub async fn load_modes(&self, default: StorageMode) -> StoreResult<ModeTable> {
        let mut conn = self.conn().await?;
        let rows: Vec<(String, String)> = sm::table
            .select((sm::scope, sm::mode))
            .load(&mut conn)
            .await?;
        let mut table = ModeTable {
            global: default,
            tenants: BTreeMap::new(),
        };
        for (scope, mode) in rows {
            let Some(mode) = StorageMode::parse(&mode) else {
                continue;
            };
            if scope == GLOBAL {
                table.global = mode;
            } else {
                table.tenants.insert(scope, mode);
            }
        }
        Ok(table)
    }

    /// Persists the mode of `scope` (a tenant id, or [`GLOBAL`]).
    pub async fn save_mode(
        &self,
        scope: &str,
        mode: StorageMode,
        actor: &str,
        reason: Option<&str>,
    ) -> StoreResult<()> {
        let mut conn = self.conn().await?;
        let now = chrono::Utc::now();
        diesel::insert_into(sm::table)
            .values((
                sm::scope.eq(scope),
                sm::mode.eq(mode.as_str()),
                sm::updated_at.eq(now),
                sm::updated_by.eq(actor),
                sm::reason.eq(reason),
            ))
            .on_conflict(sm::scope)
            .do_update()
            .set((
                sm::mode.eq(mode.as_str()),
                sm::updated_at.eq(now),
                sm::updated_by.eq(actor),
                sm::reason.eq(reason),
            ))
            .execute(&mut conn)
            .await?;
        Ok(())
    }

    /// Removes a tenant's override (it follows the global mode again).
    pub async fn clear_mode(&self, tenant: &str) -> StoreResult<()> {
        let mut conn = self.conn().await?;
        diesel::delete(sm::table.filter(sm::scope.eq(tenant)))
            .execute(&mut conn)
            .await?;
        Ok(())
    }
}
