//! Hand-written legacy items of all seven entities (as the old Node code left them in
//! DynamoDB) read and written through the gRPC API with DynamoDB authoritative: every
//! field decodes, and an update keeps what this service does not model, writes no NULL
//! and keeps the legacy formats.

use aws_sdk_dynamodb::types::AttributeValue;
use gcdr_data::migration::Stores;
use gcdr_data::pb;
use gcdr_data::pb::partner_service_client::PartnerServiceClient;
use gcdr_data::pb::policy_service_client::PolicyServiceClient;
use gcdr_data::pb::role_assignment_service_client::RoleAssignmentServiceClient;
use gcdr_data::pb::role_service_client::RoleServiceClient;
use gcdr_data::storage::mode::StorageMode;
use uuid::Uuid;

use crate::backfill::{T, asset, assignment, customer, device, partner, policy, put, role, s};
use crate::harness::req;
use crate::storage_modes::ModeServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_items_of_every_entity_round_trip_through_the_api() {
    let server = ModeServer::start(StorageMode::Dynamodb).await;
    let stores = Stores {
        pg: server.pg.clone(),
        dynamo: server.dynamo.clone(),
    };
    let tables = stores.dynamo.tables().clone();
    let (c, a, d, p, r, g) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    let mut root = customer(c, None, &format!("/{T}/{c}"), 0, "SHOPPING-CAMPINAS");
    // An attribute this service does not model, and an optional written NULL.
    root.insert("legacyNote".into(), s("keep me"));
    root.insert("email".into(), AttributeValue::Null(true));
    put(&stores, &tables.customers, vec![root]).await;
    put(
        &stores,
        &tables.assets,
        vec![asset(a, c, None, &format!("/{T}/{c}/{a}"), 0, "B1")],
    )
    .await;
    put(&stores, &tables.devices, vec![device(d, a, c, "SN-42")]).await;
    put(&stores, &tables.policies, vec![policy(p, "energy_read")]).await;
    put(
        &stores,
        &tables.roles,
        vec![role(r, "energy", &["energy_read"])],
    )
    .await;
    let scope = format!("customer:{c}");
    put(
        &stores,
        &tables.role_assignments,
        vec![assignment(g, "energy", &scope, "active")],
    )
    .await;

    let pa = Uuid::new_v4();
    put(
        &stores,
        &tables.partners,
        vec![partner(pa, "ana@acme.example")],
    )
    .await;
    let got = PartnerServiceClient::new(server.channel.clone())
        .get_partner(req(T, pb::GetPartnerRequest { id: pa.to_string() }))
        .await
        .expect("legacy partner reads")
        .into_inner();
    assert_eq!(got.status, pb::PartnerStatus::Approved as i32);
    assert_eq!(got.contact_phone, None, "a NULL optional reads as absent");
    assert_eq!(got.scopes, vec!["devices:read".to_owned()]);

    let got = server
        .customers()
        .get_customer(req(T, pb::GetCustomerRequest { id: c.to_string() }))
        .await
        .expect("legacy customer reads")
        .into_inner();
    assert_eq!(
        (
            got.code.as_deref(),
            got.path.as_str(),
            got.depth,
            got.email.as_deref()
        ),
        (
            Some("SHOPPING-CAMPINAS"),
            format!("/{T}/{c}").as_str(),
            0,
            None
        )
    );
    assert_eq!(got.parent_customer_id, None);
    assert_eq!(got.created_by, "system");
    let got = server
        .assets()
        .get_asset(req(T, pb::GetAssetRequest { id: a.to_string() }))
        .await
        .expect("legacy asset reads")
        .into_inner();
    assert_eq!(
        (got.customer_id, got.code),
        (c.to_string(), Some("B1".to_owned()))
    );
    let got = server
        .devices()
        .get_device(req(T, pb::GetDeviceRequest { id: d.to_string() }))
        .await
        .expect("legacy device reads")
        .into_inner();
    assert_eq!(
        (got.serial_number, got.asset_id),
        ("SN-42".to_owned(), a.to_string())
    );
    let got = PolicyServiceClient::new(server.channel.clone())
        .get_policy(req(T, pb::GetPolicyRequest { id: p.to_string() }))
        .await
        .expect("legacy policy reads")
        .into_inner();
    assert_eq!(got.allow, vec!["energy.*.read".to_owned()]);
    let got = RoleServiceClient::new(server.channel.clone())
        .get_role(req(T, pb::GetRoleRequest { id: r.to_string() }))
        .await
        .expect("legacy role reads")
        .into_inner();
    assert_eq!(got.policy_keys, vec!["energy_read".to_owned()]);
    let got = RoleAssignmentServiceClient::new(server.channel.clone())
        .get_role_assignment(req(T, pb::GetRoleAssignmentRequest { id: g.to_string() }))
        .await
        .expect("legacy assignment (lowercase status) reads")
        .into_inner();
    assert_eq!(got.status, pb::AssignmentStatus::Active as i32);
    assert_eq!(got.scope, scope);

    // An update rewrites the modelled attributes only.
    let updated = server
        .customers()
        .update_customer(req(
            T,
            pb::UpdateCustomerRequest {
                id: c.to_string(),
                customer: Some(pb::Customer {
                    name: "Shopping Campinas II".into(),
                    display_name: Some("Shopping Campinas II".into()),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["name".into(), "display_name".into()],
                }),
                expected_version: Some(1),
            },
        ))
        .await
        .expect("update of a legacy customer")
        .into_inner();
    assert_eq!(updated.version, 2);
    let raw = stores
        .dynamo
        .get_raw(
            gcdr_data::storage::replica::Entity::Customer,
            T,
            &c.to_string(),
        )
        .await
        .unwrap()
        .expect("item still there");
    assert_eq!(
        raw.get("legacyNote"),
        Some(&s("keep me")),
        "unmodelled attribute lost"
    );
    assert_eq!(raw.get("name"), Some(&s("Shopping Campinas II")));
    assert_eq!(raw.get("version"), Some(&AttributeValue::N("2".into())));
    assert!(
        raw.values().all(|v| !matches!(v, AttributeValue::Null(_))),
        "a NULL was written: {raw:?}"
    );
    assert!(
        !raw.contains_key("parentCustomerId"),
        "a root got a parent attribute"
    );
    let updated_at = raw.get("updatedAt").and_then(|v| v.as_s().ok()).unwrap();
    assert!(
        updated_at.len() == 24 && updated_at.ends_with('Z') && updated_at.as_bytes()[19] == b'.',
        "not an ISO millisecond Z timestamp: {updated_at}"
    );
}
