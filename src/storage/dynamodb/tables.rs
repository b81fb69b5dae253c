//! The legacy table names and definitions (contract §1), and `create-tables` for
//! development and tests.

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, TableStatus,
};

/// The seven legacy table names, and this service's divergence, unique-key and outbox
/// tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableNames {
    pub customers: String,
    pub assets: String,
    pub devices: String,
    pub partners: String,
    pub roles: String,
    pub policies: String,
    pub role_assignments: String,
    /// Not a legacy table: this service's record of failed secondary writes while
    /// DynamoDB is authoritative (`gcdr-replication-divergence-<stage>`).
    pub divergence: String,
    /// Not a legacy table: claims on unique values (customer codes, device serial
    /// numbers), written in the
    /// same transaction as the item, since DynamoDB cannot enforce uniqueness on an
    /// attribute (`gcdr-unique-keys-<stage>`).
    pub unique: String,
    /// Not a legacy table: the copies dual writes still owe PostgreSQL while DynamoDB
    /// is authoritative (`gcdr-replication-outbox-<stage>`).
    pub outbox: String,
}

/// One table's environment override, legacy file name, and GSIs
/// (name, range attribute, keys-only projection).
struct TableDef {
    env: &'static str,
    entity: &'static str,
    indexes: &'static [(&'static str, &'static str, bool)],
}

const DEFS: [TableDef; 10] = [
    TableDef {
        env: "CUSTOMERS_TABLE",
        entity: "customers",
        indexes: &[
            ("gsi-parent", "parentCustomerId", false),
            ("gsi-path", "path", false),
            ("gsi-code", "code", true),
        ],
    },
    TableDef {
        env: "ASSETS_TABLE",
        entity: "assets",
        indexes: &[
            ("gsi-customer", "customerId", false),
            ("gsi-parent", "parentAssetId", false),
            ("gsi-path", "path", false),
        ],
    },
    TableDef {
        env: "DEVICES_TABLE",
        entity: "devices",
        indexes: &[
            ("gsi-asset", "assetId", false),
            ("gsi-serial", "serialNumber", true),
            ("gsi-status", "status", false),
        ],
    },
    TableDef {
        env: "PARTNERS_TABLE",
        entity: "partners",
        indexes: &[("gsi-status", "status", false)],
    },
    TableDef {
        env: "ROLES_TABLE",
        entity: "roles",
        indexes: &[("gsi-key", "key", false)],
    },
    TableDef {
        env: "POLICIES_TABLE",
        entity: "policies",
        indexes: &[("gsi-key", "key", false)],
    },
    TableDef {
        env: "ROLE_ASSIGNMENTS_TABLE",
        entity: "role-assignments",
        indexes: &[
            ("gsi-user", "userId", false),
            ("gsi-role", "roleKey", false),
        ],
    },
    TableDef {
        env: "REPLICATION_DIVERGENCE_TABLE",
        entity: "replication-divergence",
        indexes: &[],
    },
    TableDef {
        env: "UNIQUE_KEYS_TABLE",
        entity: "unique-keys",
        indexes: &[],
    },
    TableDef {
        env: "REPLICATION_OUTBOX_TABLE",
        entity: "replication-outbox",
        indexes: &[],
    },
];

impl TableNames {
    /// `gcdr-<entity>-<stage>`, each overridable by its legacy variable
    /// (`CUSTOMERS_TABLE`, `ASSETS_TABLE`, ..., `ROLE_ASSIGNMENTS_TABLE`).
    pub fn from_lookup(stage: &str, get: impl Fn(&str) -> Option<String>) -> Self {
        let name = |i: usize| {
            get(DEFS[i].env).unwrap_or_else(|| format!("gcdr-{}-{stage}", DEFS[i].entity))
        };
        Self {
            customers: name(0),
            assets: name(1),
            devices: name(2),
            partners: name(3),
            roles: name(4),
            policies: name(5),
            role_assignments: name(6),
            divergence: name(7),
            unique: name(8),
            outbox: name(9),
        }
    }

    /// The names in definition order.
    pub fn all(&self) -> [&str; 10] {
        [
            &self.customers,
            &self.assets,
            &self.devices,
            &self.partners,
            &self.roles,
            &self.policies,
            &self.role_assignments,
            &self.divergence,
            &self.unique,
            &self.outbox,
        ]
    }
}

fn key(attr: &str, kind: KeyType) -> anyhow::Result<KeySchemaElement> {
    Ok(KeySchemaElement::builder()
        .attribute_name(attr)
        .key_type(kind)
        .build()?)
}

fn string_attr(attr: &str) -> anyhow::Result<AttributeDefinition> {
    Ok(AttributeDefinition::builder()
        .attribute_name(attr)
        .attribute_type(ScalarAttributeType::S)
        .build()?)
}

/// Creates the missing legacy tables with their GSIs (pay-per-request, every key
/// attribute declared `S`) and waits until they are active. Returns the names created.
pub async fn create_tables(client: &Client, names: &TableNames) -> anyhow::Result<Vec<String>> {
    let existing = list_tables(client).await?;
    let mut created = Vec::new();
    for (def, name) in DEFS.iter().zip(names.all()) {
        if existing.iter().any(|t| t == name) {
            continue;
        }
        let mut req = client
            .create_table()
            .table_name(name)
            .billing_mode(BillingMode::PayPerRequest)
            .key_schema(key("tenantId", KeyType::Hash)?)
            .key_schema(key("id", KeyType::Range)?)
            .attribute_definitions(string_attr("tenantId")?)
            .attribute_definitions(string_attr("id")?);
        for (index, range, keys_only) in def.indexes {
            req = req.attribute_definitions(string_attr(range)?);
            let projection = if *keys_only {
                ProjectionType::KeysOnly
            } else {
                ProjectionType::All
            };
            req = req.global_secondary_indexes(
                GlobalSecondaryIndex::builder()
                    .index_name(*index)
                    .key_schema(key("tenantId", KeyType::Hash)?)
                    .key_schema(key(range, KeyType::Range)?)
                    .projection(Projection::builder().projection_type(projection).build())
                    .build()?,
            );
        }
        match req.send().await {
            Ok(_) => created.push(name.to_owned()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_resource_in_use_exception()) => {}
            Err(e) => anyhow::bail!("creating table {name}: {}", super::sdk_error(e)),
        }
    }
    for name in &created {
        wait_active(client, name).await?;
    }
    Ok(created)
}

/// Deletes the tables (tests and development only).
pub async fn delete_tables(client: &Client, names: &TableNames) -> anyhow::Result<()> {
    for name in names.all() {
        if let Err(e) = client.delete_table().table_name(name).send().await
            && !e
                .as_service_error()
                .is_some_and(|se| se.is_resource_not_found_exception())
        {
            anyhow::bail!("deleting table {name}: {}", super::sdk_error(e));
        }
    }
    Ok(())
}

async fn list_tables(client: &Client) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    let mut start = None;
    loop {
        let out = client
            .list_tables()
            .set_exclusive_start_table_name(start)
            .send()
            .await
            .map_err(super::sdk_error)?;
        names.extend(out.table_names.unwrap_or_default());
        match out.last_evaluated_table_name {
            Some(last) => start = Some(last),
            None => return Ok(names),
        }
    }
}

async fn wait_active(client: &Client, name: &str) -> anyhow::Result<()> {
    for _ in 0..600 {
        let out = client
            .describe_table()
            .table_name(name)
            .send()
            .await
            .map_err(super::sdk_error)?;
        if out.table.and_then(|t| t.table_status) == Some(TableStatus::Active) {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    anyhow::bail!("table {name} did not become active within a minute")
}

#[cfg(test)]
mod tests {
    use super::TableNames;

    #[test]
    fn names_follow_the_stage_and_the_legacy_overrides() {
        let t = TableNames::from_lookup("prod", |k| {
            (k == "ROLES_TABLE").then(|| "custom-roles".to_owned())
        });
        assert_eq!(t.customers, "gcdr-customers-prod");
        assert_eq!(t.role_assignments, "gcdr-role-assignments-prod");
        assert_eq!(t.roles, "custom-roles");
    }
}
