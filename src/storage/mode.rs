//! Storage modes, one per RFC-0004 phase, and the rules for moving between them.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// Where reads and writes go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StorageMode {
    /// Phase 0: the legacy DynamoDB tables only.
    Dynamodb,
    /// Phases 1-2: write both, DynamoDB authoritative, read DynamoDB.
    DualDynamodbPrimary,
    /// Phase 3: write both, PostgreSQL authoritative, read PostgreSQL.
    DualPostgresPrimary,
    /// Phase 4: PostgreSQL only.
    Postgres,
}

/// One of the two stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Backend {
    Dynamodb,
    Postgres,
}

impl Backend {
    /// The stored / reported name.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Dynamodb => "dynamodb",
            Backend::Postgres => "postgres",
        }
    }

    /// Parses [`Backend::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        [Backend::Dynamodb, Backend::Postgres]
            .into_iter()
            .find(|b| b.as_str() == s)
    }
}

impl StorageMode {
    /// Every mode, in phase order.
    pub const ALL: [StorageMode; 4] = [
        StorageMode::Dynamodb,
        StorageMode::DualDynamodbPrimary,
        StorageMode::DualPostgresPrimary,
        StorageMode::Postgres,
    ];

    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            StorageMode::Dynamodb => "dynamodb",
            StorageMode::DualDynamodbPrimary => "dual_dynamodb_primary",
            StorageMode::DualPostgresPrimary => "dual_postgres_primary",
            StorageMode::Postgres => "postgres",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }

    /// Position in the migration: 0..=3.
    pub fn step(self) -> usize {
        Self::ALL.iter().position(|m| *m == self).unwrap_or(0)
    }

    /// The authoritative store: written first, read, decides the response.
    pub fn primary(self) -> Backend {
        match self {
            StorageMode::Dynamodb | StorageMode::DualDynamodbPrimary => Backend::Dynamodb,
            StorageMode::DualPostgresPrimary | StorageMode::Postgres => Backend::Postgres,
        }
    }

    /// The store that receives copies of every write, if any.
    pub fn secondary(self) -> Option<Backend> {
        match self {
            StorageMode::DualDynamodbPrimary => Some(Backend::Postgres),
            StorageMode::DualPostgresPrimary => Some(Backend::Dynamodb),
            StorageMode::Dynamodb | StorageMode::Postgres => None,
        }
    }

    /// Whether the mode uses DynamoDB at all.
    pub fn uses_dynamodb(self) -> bool {
        self != StorageMode::Postgres
    }

    /// Why going from `self` to `to` is refused without `force`, or `None` when it is
    /// a safe step: one phase forward, or one phase back while the store being
    /// returned to is still current (every phase but leaving `postgres`, after which
    /// DynamoDB has missed writes).
    pub fn refuse_transition(self, to: StorageMode) -> Option<String> {
        let (from_step, to_step) = (self.step(), to.step());
        if from_step == to_step {
            return None;
        }
        if from_step.abs_diff(to_step) > 1 {
            return Some(format!(
                "{} -> {} skips a phase; go through {} first (or force)",
                self.as_str(),
                to.as_str(),
                Self::ALL[if to_step > from_step {
                    from_step + 1
                } else {
                    from_step - 1
                }]
                .as_str()
            ));
        }
        if self == StorageMode::Postgres {
            return Some(
                "postgres -> dual_postgres_primary: DynamoDB has not received writes since the \
                 write cutover; reconcile it first (or force)"
                    .into(),
            );
        }
        None
    }
}

impl std::fmt::Display for StorageMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The global mode and the per-tenant overrides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModeTable {
    pub global: StorageMode,
    pub tenants: BTreeMap<String, StorageMode>,
}

impl ModeTable {
    /// The mode that applies to `tenant`.
    pub fn for_tenant(&self, tenant: &str) -> StorageMode {
        self.tenants.get(tenant).copied().unwrap_or(self.global)
    }

    /// Every mode in effect somewhere.
    pub fn in_use(&self) -> impl Iterator<Item = StorageMode> + '_ {
        std::iter::once(self.global).chain(self.tenants.values().copied())
    }
}

/// The mode table this process routes by; replaced whole when a change is observed.
/// Writes route through a gate: a change waits for the writes routed by the old table
/// to queue their copies, and holds new writes back until it is published.
#[derive(Clone, Debug)]
pub struct Modes {
    table: Arc<RwLock<Arc<ModeTable>>>,
    gate: Arc<tokio::sync::RwLock<()>>,
}

impl Modes {
    /// Starts with `table`.
    pub fn new(table: ModeTable) -> Self {
        Self {
            table: Arc::new(RwLock::new(Arc::new(table))),
            gate: Arc::new(tokio::sync::RwLock::new(())),
        }
    }

    /// The current table.
    pub fn current(&self) -> Arc<ModeTable> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Held by a write from routing until its copy is queued.
    pub async fn write_pass(&self) -> tokio::sync::OwnedRwLockReadGuard<()> {
        self.gate.clone().read_owned().await
    }

    /// Held by a mode change: no write is between routing and queueing its copy.
    pub async fn exclusive(&self) -> tokio::sync::OwnedRwLockWriteGuard<()> {
        self.gate.clone().write_owned().await
    }

    /// The mode of `tenant` now.
    pub fn for_tenant(&self, tenant: &str) -> StorageMode {
        self.current().for_tenant(tenant)
    }

    /// Publishes a new table.
    pub fn publish(&self, table: ModeTable) {
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
    }
}

#[cfg(test)]
mod tests {
    use super::StorageMode::*;

    #[test]
    fn only_single_steps_are_allowed_without_force() {
        assert!(Dynamodb.refuse_transition(DualDynamodbPrimary).is_none());
        assert!(
            DualDynamodbPrimary
                .refuse_transition(DualPostgresPrimary)
                .is_none()
        );
        assert!(
            DualPostgresPrimary
                .refuse_transition(DualDynamodbPrimary)
                .is_none()
        );
        assert!(DualPostgresPrimary.refuse_transition(Postgres).is_none());
        assert!(Dynamodb.refuse_transition(DualPostgresPrimary).is_some());
        assert!(Dynamodb.refuse_transition(Postgres).is_some());
        assert!(Postgres.refuse_transition(DualPostgresPrimary).is_some());
        assert!(Postgres.refuse_transition(Dynamodb).is_some());
    }

    #[test]
    fn each_mode_names_its_stores() {
        use super::Backend;
        assert_eq!(DualDynamodbPrimary.primary(), Backend::Dynamodb);
        assert_eq!(DualDynamodbPrimary.secondary(), Some(Backend::Postgres));
        assert_eq!(DualPostgresPrimary.secondary(), Some(Backend::Dynamodb));
        assert_eq!(Postgres.secondary(), None);
        for m in super::StorageMode::ALL {
            assert_eq!(super::StorageMode::parse(m.as_str()), Some(m));
        }
    }
}
