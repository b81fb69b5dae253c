//! RFC-0004 phase 2 tooling: `backfill` (legacy DynamoDB tables into PostgreSQL),
//! `verify` (parity report) and `reconcile` (make the secondary store match the
//! authoritative one). The ledger tables (`migration_quarantine`,
//! `migration_repairs`) record every item not loaded exactly as it was.

pub mod backfill;
pub mod ledger;
pub mod reconcile;
pub mod verify;

use anyhow::Context;

use crate::config::Config;
use crate::storage::dynamodb::DynamoStore;
use crate::storage::postgres::PgStore;
use crate::storage::replica::Entity;

/// Both stores, as the tools use them.
#[derive(Clone)]
pub struct Stores {
    pub pg: PgStore,
    pub dynamo: DynamoStore,
}

impl Stores {
    /// Connects to both stores the configuration names (applying pending PostgreSQL
    /// migrations first).
    pub async fn connect(config: &Config) -> anyhow::Result<Self> {
        let dynamo_cfg = config.storage.dynamodb.clone().context(
            "DynamoDB is not configured: set DYNAMODB_ENDPOINT (or GCDR_DYNAMODB=true for AWS)",
        )?;
        crate::storage::postgres::migrate_with(&config.database_url, config.pool.tls.as_ref())
            .await
            .context("migrate")?;
        Ok(Self {
            pg: PgStore::connect(&config.database_url, &config.pool).await?,
            dynamo: DynamoStore::connect(&dynamo_cfg).await,
        })
    }
}

/// Which tables and tenants a tool works on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    /// In load order (parents before children).
    pub entities: Vec<Entity>,
    /// Empty: every tenant.
    pub tenants: Vec<String>,
}

impl Scope {
    /// Parses `--tables` (entity names, as [`Entity::as_str`] or the legacy table
    /// word: `customers`, `role_assignments`, ...) and `--tenants`.
    pub fn parse(tables: &[String], tenants: &[String]) -> anyhow::Result<Self> {
        let mut entities = Vec::new();
        for t in tables.iter().flat_map(|t| t.split(',')).map(str::trim) {
            if t.is_empty() {
                continue;
            }
            let e = parse_entity(t).with_context(|| {
                format!(
                    "unknown table {t:?}; expected one of customers, assets, devices, \
                     policies, roles, role_assignments, partners"
                )
            })?;
            entities.push(e);
        }
        if entities.is_empty() {
            entities = Entity::ALL.to_vec();
        }
        entities.sort_by_key(|e| load_order(*e));
        entities.dedup();
        let mut tenants: Vec<String> = tenants
            .iter()
            .flat_map(|t| t.split(','))
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect();
        tenants.sort();
        tenants.dedup();
        Ok(Self { entities, tenants })
    }

    /// Whether `tenant` is in scope.
    pub fn has_tenant(&self, tenant: &str) -> bool {
        self.tenants.is_empty() || self.tenants.iter().any(|t| t == tenant)
    }
}

/// The table of an entity: the PostgreSQL table, and the word `--tables` takes.
pub fn table_name(e: Entity) -> &'static str {
    match e {
        Entity::Customer => "customers",
        Entity::Asset => "assets",
        Entity::Device => "devices",
        Entity::Policy => "policies",
        Entity::Role => "roles",
        Entity::Assignment => "role_assignments",
        Entity::Partner => "partners",
    }
}

/// An entity by its name or its table (see [`table_name`]; also `role-assignments`,
/// `assignments`).
pub fn parse_entity(s: &str) -> Option<Entity> {
    Entity::parse(s)
        .or_else(|| Entity::ALL.into_iter().find(|e| table_name(*e) == s))
        .or(match s {
            "role-assignments" | "assignments" => Some(Entity::Assignment),
            _ => None,
        })
}

/// Load order: customers, assets, devices (each needs the one before), policies,
/// roles (name policies), assignments (name roles), partners.
pub fn load_order(e: Entity) -> usize {
    Entity::ALL
        .iter()
        .position(|x| *x == e)
        .unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_parses_names_in_load_order_and_refuses_unknown_tables() {
        let s = Scope::parse(
            &["role_assignments,customers".into(), "devices".into()],
            &["b, a".into(), "a".into()],
        )
        .unwrap();
        assert_eq!(
            s.entities,
            vec![Entity::Customer, Entity::Device, Entity::Assignment]
        );
        assert_eq!(s.tenants, vec!["a".to_owned(), "b".to_owned()]);
        assert!(s.has_tenant("a") && !s.has_tenant("c"));
        assert_eq!(
            Scope::parse(&[], &[]).unwrap().entities,
            Entity::ALL.to_vec()
        );
        let e = Scope::parse(&["customer".into(), "widgets".into()], &[]).unwrap_err();
        assert!(e.to_string().contains("widgets"), "{e}");
    }
}
