//! `verify` and `reconcile` against real PostgreSQL and the DynamoDB emulator (moto,
//! see storage_modes.rs): parity after dual writes, injected divergences found exactly
//! and repaired, a failed secondary write repaired from the divergence log, and the
//! backfill ledger's deliberate differences never reported as mismatches.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use diesel::sql_types::Uuid as SqlUuid;
use gcdr_data::migration::reconcile::{self, Task};
use gcdr_data::migration::verify::{self, MismatchKind, Report};
use gcdr_data::migration::{Scope, Stores, ledger};
use gcdr_data::pb;
use gcdr_data::storage::mode::{Backend, StorageMode};
use gcdr_data::storage::replica::{DivergenceLog, Entity, Replica};
use uuid::Uuid;

use crate::harness::{customer, req};
use crate::storage_modes::{ModeServer, building_with_meter, key};

fn stores(s: &ModeServer) -> Stores {
    Stores {
        pg: s.pg.clone(),
        dynamo: s.dynamo.clone(),
    }
}

fn all() -> Scope {
    Scope::parse(&[], &[]).unwrap()
}

async fn create_customer(s: &ModeServer, tenant: &str, name: &str) -> pb::Customer {
    s.customers()
        .create_customer(req(
            tenant,
            pb::CreateCustomerRequest {
                customer: Some(customer(name, None)),
            },
        ))
        .await
        .unwrap()
        .into_inner()
}

/// Three customers, an asset under the first, a device on it.
async fn populate(s: &ModeServer, tenant: &str) -> (Vec<pb::Customer>, pb::Asset, pb::Device) {
    let mut cs = Vec::new();
    for name in ["Alpha", "Beta", "Gamma"] {
        cs.push(create_customer(s, tenant, name).await);
    }
    let (asset, device) = building_with_meter(s, tenant, &cs[0].id).await;
    s.replicator.flush().await;
    (cs, asset, device)
}

fn table<'a>(r: &'a Report, entity: &str, tenant: &str) -> &'a verify::TableReport {
    r.tables
        .iter()
        .find(|t| t.entity == entity && t.tenant == tenant)
        .unwrap_or_else(|| panic!("no {entity}/{tenant} line in {r:#?}"))
}

async fn sql(s: &ModeServer, query: &str, id: &str) {
    use diesel_async::RunQueryDsl;
    let mut conn = s.pg.conn().await.unwrap();
    let n = diesel::sql_query(query)
        .bind::<SqlUuid, _>(Uuid::parse_str(id).unwrap())
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 1, "{query}");
}

#[tokio::test]
async fn dual_writes_are_at_parity_with_the_right_counts() {
    let s = ModeServer::start(StorageMode::DualDynamodbPrimary).await;
    populate(&s, "tenant-v").await;
    create_customer(&s, "tenant-w", "Other").await;
    s.replicator.flush().await;
    let r = verify::verify(&stores(&s), &all(), None, 4).await.unwrap();
    assert!(r.parity, "{r:#?}");
    assert!(r.mismatches.is_empty());
    let c = table(&r, "customer", "tenant-v");
    assert_eq!((c.dynamodb_count, c.postgres_count), (3, 3));
    assert_eq!((c.quarantined, c.repaired), (0, 0));
    assert_eq!(c.checksums_match, Some(true));
    assert_ne!(c.dynamodb_checksum.as_deref(), Some("0000000000000000"));
    assert_eq!(table(&r, "asset", "tenant-v").postgres_count, 1);
    assert_eq!(table(&r, "device", "tenant-v").dynamodb_count, 1);
    assert_eq!(table(&r, "customer", "tenant-w").postgres_count, 1);
    assert_eq!(r.tables.len(), 4, "{r:#?}");
    // Tenant scope and sampling: counted, not checksummed.
    let scoped = Scope::parse(&["customers".into()], &["tenant-w".into()]).unwrap();
    let r = verify::verify(&stores(&s), &scoped, Some(1), 2)
        .await
        .unwrap();
    assert!(r.parity, "{r:#?}");
    assert_eq!(r.tables.len(), 1);
    assert_eq!(r.tables[0].dynamodb_count, 1);
    assert_eq!(r.tables[0].checksums_match, None);
}

#[tokio::test]
async fn injected_divergences_are_reported_exactly_and_reconciled_idempotently() {
    let s = ModeServer::start(StorageMode::DualDynamodbPrimary).await;
    let t = "tenant-d";
    let (cs, asset, device) = populate(&s, t).await;
    let st = stores(&s);
    // PostgreSQL: a changed field; a newer version than DynamoDB's (a plain upsert
    // would not move it back); a deleted row.
    sql(
        &s,
        "UPDATE customers SET name = 'Changed' WHERE id = $1",
        &cs[0].id,
    )
    .await;
    sql(
        &s,
        "UPDATE customers SET display_name = 'Newer', version = version + 5 WHERE id = $1",
        &cs[1].id,
    )
    .await;
    sql(&s, "DELETE FROM devices WHERE id = $1", &device.id).await;
    // DynamoDB: a deleted item and a changed attribute.
    let client = st.dynamo.client();
    client
        .delete_item()
        .table_name(st.dynamo.table_of(Entity::Customer))
        .key("tenantId", AttributeValue::S(t.into()))
        .key("id", AttributeValue::S(cs[2].id.clone()))
        .send()
        .await
        .unwrap();
    client
        .update_item()
        .table_name(st.dynamo.table_of(Entity::Asset))
        .key("tenantId", AttributeValue::S(t.into()))
        .key("id", AttributeValue::S(asset.id.clone()))
        .update_expression("SET description = :d")
        .expression_attribute_values(":d", AttributeValue::S("legacy edit".into()))
        .send()
        .await
        .unwrap();

    let r = verify::verify(&st, &all(), None, 3).await.unwrap();
    assert!(!r.parity);
    let found: HashMap<(String, String), (MismatchKind, Vec<String>)> = r
        .mismatches
        .iter()
        .map(|m| {
            assert_eq!(m.tenant, t);
            ((m.entity.clone(), m.id.clone()), (m.kind, m.fields.clone()))
        })
        .collect();
    let expect = |entity: &str, id: &str, kind: MismatchKind, fields: &[&str]| {
        let got = found
            .get(&(entity.to_owned(), id.to_owned()))
            .unwrap_or_else(|| panic!("{entity} {id} not reported: {r:#?}"));
        assert_eq!(got.0, kind, "{entity} {id}");
        let want: Vec<String> = fields.iter().map(|f| (*f).to_owned()).collect();
        assert_eq!(got.1, want, "{entity} {id}");
    };
    expect("customer", &cs[0].id, MismatchKind::Fields, &["name"]);
    expect(
        "customer",
        &cs[1].id,
        MismatchKind::Fields,
        &["displayName", "version"],
    );
    expect("customer", &cs[2].id, MismatchKind::MissingInDynamodb, &[]);
    expect("device", &device.id, MismatchKind::MissingInPostgres, &[]);
    expect("asset", &asset.id, MismatchKind::Fields, &["description"]);
    assert_eq!(found.len(), 5, "{r:#?}");
    let c = table(&r, "customer", t);
    assert_eq!((c.dynamodb_count, c.postgres_count), (2, 3));
    assert_eq!(c.checksums_match, Some(false));
    let d = table(&r, "device", t);
    assert_eq!((d.dynamodb_count, d.postgres_count), (1, 0));

    // The report as reconcile reads it.
    let json = serde_json::to_string(&r).unwrap();
    let r: Report = serde_json::from_str(&json).unwrap();
    let (tasks, bad) = reconcile::tasks_from_report(&r, Backend::Dynamodb);
    assert!(bad.is_empty());
    let dry = reconcile::reconcile(&st, tasks.clone(), true)
        .await
        .unwrap();
    assert_eq!((dry.copied.len(), dry.removed.len()), (4, 1), "{dry:#?}");
    assert!(!verify::verify(&st, &all(), None, 3).await.unwrap().parity);
    let done = reconcile::reconcile(&st, tasks.clone(), false)
        .await
        .unwrap();
    assert!(done.failed.is_empty(), "{done:#?}");
    assert_eq!((done.copied.len(), done.removed.len()), (4, 1), "{done:#?}");
    let after = verify::verify(&st, &all(), None, 3).await.unwrap();
    assert!(after.parity, "{after:#?}");
    assert_eq!(table(&after, "customer", t).postgres_count, 2);
    // The older authoritative copy won over PostgreSQL's newer version.
    let back = Replica::load(&s.pg, &key(Entity::Customer, t, &cs[1].id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back.version(), cs[1].version);
    // Twice: nothing left to do.
    let again = reconcile::reconcile(&st, tasks, false).await.unwrap();
    assert!(!again.changed(), "{again:#?}");
    assert_eq!(again.already_equal, 5);
    assert!(again.failed.is_empty());
}

#[tokio::test]
async fn a_failed_secondary_write_is_repaired_from_the_divergence_log() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let s = ModeServer::start_with(StorageMode::DualPostgresPrimary, &dead).await;
    let c = create_customer(&s, "tenant-x", "Missed").await;
    s.replicator.flush().await;
    let k = key(Entity::Customer, "tenant-x", &c.id);
    assert!(s.dynamo.load(&k).await.unwrap().is_none());
    let open = DivergenceLog::list(&s.pg, None).await.unwrap();
    assert!(
        open.iter()
            .any(|d| d.key == k && d.target == Backend::Dynamodb),
        "{open:?}"
    );
    let st = stores(&s); // the emulator as it really is, reachable
    let before = verify::verify(&st, &all(), None, 2).await.unwrap();
    assert!(!before.parity);
    assert_eq!(before.mismatches.len(), 1, "{before:#?}");
    assert_eq!(before.mismatches[0].kind, MismatchKind::MissingInDynamodb);

    let tasks = reconcile::tasks_from_divergences(&st).await.unwrap();
    assert!(
        tasks
            .iter()
            .all(|t: &Task| t.key == k && t.source == Backend::Postgres),
        "{tasks:?}"
    );
    let done = reconcile::reconcile(&st, tasks, false).await.unwrap();
    assert!(done.failed.is_empty(), "{done:#?}");
    assert_eq!(done.copied.len(), 1);
    assert!(done.resolved >= 1);
    assert!(s.dynamo.load(&k).await.unwrap().is_some());
    assert!(DivergenceLog::list(&s.pg, None).await.unwrap().is_empty());
    let after = verify::verify(&st, &all(), None, 2).await.unwrap();
    assert!(after.parity, "{after:#?}");
    let again = reconcile::tasks_from_divergences(&st).await.unwrap();
    assert!(again.is_empty());
}

/// A failed copy of a moved subtree is recorded under the moved node only; reconcile
/// repairs every record under it, and verify then finds parity.
#[tokio::test]
async fn a_failed_subtree_copy_is_repaired_whole_from_the_divergence_log() {
    use gcdr_data::domain::{Actor, Ctx, CustomerId, TenantId};
    use gcdr_data::storage::CustomerStore;

    let t = "tenant-sub";
    let s = ModeServer::start(StorageMode::DualPostgresPrimary).await;
    let mut customers = s.customers();
    let mut create = async |name: &str, parent: Option<&str>| {
        customers
            .create_customer(req(
                t,
                pb::CreateCustomerRequest {
                    customer: Some(customer(name, parent)),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .id
    };
    let a = create("A", None).await;
    let b = create("B", Some(&a)).await;
    let c = create("C", Some(&b)).await;
    let d = create("D", None).await;
    s.replicator.flush().await;

    // B moves under D in PostgreSQL and its copy fails, as the replicator records it.
    let ctx = Ctx {
        tenant: TenantId::parse(t).unwrap(),
        actor: Actor::system(),
    };
    let id = |s: &str| CustomerId::parse(s).unwrap();
    CustomerStore::move_to(&s.pg, &ctx, id(&b), Some(id(&d)), None)
        .await
        .unwrap();
    let kb = key(Entity::Customer, t, &b);
    DivergenceLog::record(&s.pg, &kb, Backend::Dynamodb, "subtree", "injected")
        .await
        .unwrap();
    let st = stores(&s);
    let before = verify::verify(&st, &all(), None, 2).await.unwrap();
    let mut differing: Vec<String> = before.mismatches.iter().map(|m| m.id.clone()).collect();
    differing.sort();
    let mut moved = vec![b.clone(), c.clone()];
    moved.sort();
    assert_eq!(differing, moved, "{before:#?}");

    let tasks = reconcile::tasks_from_divergences(&st).await.unwrap();
    let mut keys: Vec<String> = tasks.iter().map(|t: &Task| t.key.id.to_string()).collect();
    keys.sort();
    assert_eq!(keys, moved, "{tasks:?}");
    let done = reconcile::reconcile(&st, tasks, false).await.unwrap();
    assert!(done.failed.is_empty(), "{done:#?}");
    assert_eq!(done.copied.len(), 2, "{done:#?}");
    assert!(DivergenceLog::list(&s.pg, None).await.unwrap().is_empty());
    let after = verify::verify(&st, &all(), None, 2).await.unwrap();
    assert!(after.parity, "{after:#?}");
}

#[tokio::test]
async fn ledger_repairs_and_quarantines_are_not_mismatches() {
    let s = ModeServer::start(StorageMode::DualDynamodbPrimary).await;
    let t = "tenant-l";
    let repaired = create_customer(&s, t, "Repaired").await;
    let quarantined = create_customer(&s, t, "Quarantined").await;
    let plain = create_customer(&s, t, "Plain").await;
    s.replicator.flush().await;
    let st = stores(&s);
    // The backfill changed a field of one, quarantined another (so it is absent in
    // PostgreSQL), and quarantined a legacy item that does not decode at all.
    sql(
        &s,
        "UPDATE customers SET name = 'Repaired (fixed)' WHERE id = $1",
        &repaired.id,
    )
    .await;
    sql(&s, "DELETE FROM customers WHERE id = $1", &quarantined.id).await;
    let put_garbage = |id: &str| {
        st.dynamo
            .client()
            .put_item()
            .table_name(st.dynamo.table_of(Entity::Customer))
            .item("tenantId", AttributeValue::S(t.into()))
            .item("id", AttributeValue::S(id.into()))
            .item("name", AttributeValue::N("7".into()))
            .send()
    };
    put_garbage("legacy-7").await.unwrap();
    {
        let mut conn = s.pg.conn().await.unwrap();
        ledger::repaired(
            &mut conn,
            Entity::Customer,
            &(t.into(), repaired.id.clone()),
            &["name".into()],
            &["trim-name".into()],
            "run-1",
        )
        .await
        .unwrap();
        for (id, reason) in [
            (quarantined.id.as_str(), "hierarchy: parent missing"),
            ("legacy-7", "decode: id is not a UUID"),
        ] {
            ledger::quarantine(
                &mut conn,
                Entity::Customer,
                &(t.into(), id.into()),
                reason,
                &serde_json::json!({}),
                "run-1",
            )
            .await
            .unwrap();
        }
    }
    let r = verify::verify(&st, &all(), None, 4).await.unwrap();
    assert!(r.mismatches.is_empty(), "{r:#?}");
    assert!(r.parity, "{r:#?}");
    let c = table(&r, "customer", t);
    assert_eq!(
        (
            c.dynamodb_count,
            c.postgres_count,
            c.quarantined,
            c.repaired
        ),
        (4, 2, 2, 1)
    );
    assert_eq!(c.checksums_match, Some(true));
    // Reconcile leaves a quarantined key alone.
    let task = Task {
        key: key(Entity::Customer, t, &quarantined.id),
        source: Backend::Dynamodb,
        divergences: vec![],
    };
    let done = reconcile::reconcile(&st, vec![task], false).await.unwrap();
    assert_eq!(done.skipped_quarantined.len(), 1, "{done:#?}");
    assert!(!done.changed());

    // A repaired record with a difference beyond its repair, and an undecodable item
    // nobody quarantined, are mismatches.
    sql(
        &s,
        "UPDATE customers SET code = 'X-1' WHERE id = $1",
        &repaired.id,
    )
    .await;
    put_garbage("legacy-8").await.unwrap();
    let r = verify::verify(&st, &all(), None, 4).await.unwrap();
    assert!(!r.parity);
    let kinds: Vec<(String, MismatchKind, Vec<String>)> = r
        .mismatches
        .iter()
        .map(|m| (m.id.clone(), m.kind, m.fields.clone()))
        .collect();
    assert_eq!(kinds.len(), 2, "{r:#?}");
    assert!(kinds.contains(&(
        repaired.id.clone(),
        MismatchKind::Fields,
        vec!["code".into()]
    )));
    assert!(
        kinds
            .iter()
            .any(|(id, k, _)| id == "legacy-8" && *k == MismatchKind::Undecodable)
    );
    assert!(!kinds.iter().any(|(id, _, _)| *id == plain.id));
}
