//! Bad input: INVALID_ARGUMENT naming the field, and nothing written.

use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use gcdr_data::pb;
use prost_types::FieldMask;
use tonic::Request;

use crate::harness::*;

const T: &str = "tenant-default";

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// Rows in the three tables plus the sum of versions: any write changes it.
async fn fingerprint(s: &TestServer) -> i64 {
    let mut db = s.db().await;
    let rows: Vec<Count> = diesel::sql_query(
        "SELECT ((SELECT count(*) + coalesce(sum(version), 0) FROM customers)
              + (SELECT count(*) + coalesce(sum(version), 0) FROM assets) * 1000
              + (SELECT count(*) + coalesce(sum(version), 0) FROM devices) * 1000000)::bigint AS n",
    )
    .load(&mut db)
    .await
    .unwrap();
    rows[0].n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_malformed_tenant_is_invalid() {
    let s = TestServer::start().await;
    let r = s
        .customers()
        .get_customer(Request::new(pb::GetCustomerRequest {
            id: uuid::Uuid::new_v4().to_string(),
        }))
        .await;
    assert_invalid(r, "x-tenant-id");
    for bad in ["a/b", "has space", &"x".repeat(129)] {
        let mut request = Request::new(pb::ListCustomersRequest::default());
        request
            .metadata_mut()
            .insert("x-tenant-id", bad.parse().unwrap());
        assert_invalid(s.customers().list_customers(request).await, "x-tenant-id");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_creates_name_every_bad_field_and_write_nothing() {
    let s = TestServer::start().await;
    let c = create_customer(&s, T, "C", None).await;
    let a = create_asset(&s, T, &c.id, "A", None).await;
    let before = fingerprint(&s).await;

    let create = |customer: pb::Customer| {
        let mut client = s.customers();
        async move {
            client
                .create_customer(req(
                    T,
                    pb::CreateCustomerRequest {
                        customer: Some(customer),
                    },
                ))
                .await
        }
    };
    assert_invalid(create(customer("", None)).await, "customer.name");
    assert_invalid(create(customer("   ", None)).await, "customer.name");
    assert_invalid(
        create(customer(&"n".repeat(256), None)).await,
        "customer.name",
    );
    assert_invalid(
        create(pb::Customer {
            r#type: 0,
            ..customer("x", None)
        })
        .await,
        "customer.type",
    );
    assert_invalid(
        create(pb::Customer {
            r#type: 99,
            ..customer("x", None)
        })
        .await,
        "customer.type",
    );
    assert_invalid(
        create(customer("x", Some("not-a-uuid"))).await,
        "customer.parent_customer_id",
    );
    assert_invalid(
        create(pb::Customer {
            code: Some("c".repeat(51)),
            ..customer("x", None)
        })
        .await,
        "customer.code",
    );
    assert_invalid(
        create(pb::Customer {
            email: Some("nope".into()),
            ..customer("x", None)
        })
        .await,
        "customer.email",
    );
    let both = create(pb::Customer {
        name: String::new(),
        r#type: 0,
        ..Default::default()
    })
    .await;
    assert_invalid(both, "customer.type");
    assert_invalid(
        s.customers()
            .create_customer(req(T, pb::CreateCustomerRequest { customer: None }))
            .await,
        "customer",
    );

    let asset = |a: pb::Asset| {
        let mut client = s.assets();
        async move {
            client
                .create_asset(req(T, pb::CreateAssetRequest { asset: Some(a) }))
                .await
        }
    };
    let good_asset = pb::Asset {
        customer_id: c.id.clone(),
        name: "x".into(),
        r#type: pb::AssetType::Room as i32,
        ..Default::default()
    };
    assert_invalid(
        asset(pb::Asset {
            customer_id: "zzz".into(),
            ..good_asset.clone()
        })
        .await,
        "asset.customer_id",
    );
    assert_invalid(
        asset(pb::Asset {
            r#type: 0,
            ..good_asset.clone()
        })
        .await,
        "asset.type",
    );
    assert_invalid(
        asset(pb::Asset {
            tags: vec!["t".into(); 21],
            ..good_asset.clone()
        })
        .await,
        "asset.tags",
    );
    assert_invalid(
        asset(pb::Asset {
            description: Some("d".repeat(1001)),
            ..good_asset.clone()
        })
        .await,
        "asset.description",
    );
    assert_invalid(
        asset(pb::Asset {
            location: Some(pb::AssetLocation {
                coordinates: Some(pb::Coordinates {
                    lat: 91.0,
                    lng: 0.0,
                }),
                ..Default::default()
            }),
            ..good_asset.clone()
        })
        .await,
        "asset.location.coordinates.lat",
    );

    let device = |d: pb::Device| {
        let mut client = s.devices();
        async move {
            client
                .create_device(req(T, pb::CreateDeviceRequest { device: Some(d) }))
                .await
        }
    };
    let good_device = pb::Device {
        asset_id: a.id.clone(),
        name: "d".into(),
        r#type: pb::DeviceType::Sensor as i32,
        serial_number: "SN".into(),
        ..Default::default()
    };
    assert_invalid(
        device(pb::Device {
            serial_number: String::new(),
            ..good_device.clone()
        })
        .await,
        "device.serial_number",
    );
    assert_invalid(
        device(pb::Device {
            serial_number: "s".repeat(101),
            ..good_device.clone()
        })
        .await,
        "device.serial_number",
    );
    assert_invalid(
        device(pb::Device {
            r#type: 0,
            ..good_device.clone()
        })
        .await,
        "device.type",
    );
    assert_invalid(
        device(pb::Device {
            asset_id: String::new(),
            ..good_device.clone()
        })
        .await,
        "device.asset_id",
    );
    assert_invalid(
        device(pb::Device {
            credentials: Some(pb::DeviceCredentials::default()),
            ..good_device.clone()
        })
        .await,
        "device.credentials.type",
    );

    assert_eq!(
        fingerprint(&s).await,
        before,
        "a refused request wrote something"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_updates_moves_and_pages_are_invalid_and_write_nothing() {
    let s = TestServer::start().await;
    let c = create_customer(&s, T, "C", None).await;
    let before = fingerprint(&s).await;
    let update = |paths: Vec<&str>, customer: pb::Customer| {
        let mut client = s.customers();
        let id = c.id.clone();
        let paths = paths.into_iter().map(String::from).collect();
        async move {
            client
                .update_customer(req(
                    T,
                    pb::UpdateCustomerRequest {
                        id,
                        customer: Some(customer),
                        update_mask: Some(FieldMask { paths }),
                        expected_version: None,
                    },
                ))
                .await
        }
    };
    assert_invalid(update(vec![], customer("x", None)).await, "update_mask");
    assert_invalid(
        update(vec!["path"], customer("x", None)).await,
        "update_mask",
    );
    assert_invalid(
        update(vec!["parent_customer_id"], customer("x", None)).await,
        "update_mask",
    );
    assert_invalid(
        update(vec!["name"], customer("", None)).await,
        "customer.name",
    );
    assert_invalid(
        update(
            vec!["type"],
            pb::Customer {
                r#type: 0,
                ..customer("x", None)
            },
        )
        .await,
        "customer.type",
    );
    assert_invalid(
        update(vec!["status"], customer("x", None)).await,
        "customer.status",
    );
    let bad_version = s
        .customers()
        .update_customer(req(
            T,
            pb::UpdateCustomerRequest {
                id: c.id.clone(),
                customer: Some(customer("x", None)),
                update_mask: Some(FieldMask {
                    paths: vec!["name".into()],
                }),
                expected_version: Some(0),
            },
        ))
        .await;
    assert_invalid(bad_version, "expected_version");
    let move_no_dest = s
        .customers()
        .move_customer(req(
            T,
            pb::MoveCustomerRequest {
                id: c.id.clone(),
                destination: None,
                expected_version: None,
            },
        ))
        .await;
    assert_invalid(move_no_dest, "destination");
    let move_bad_parent = s
        .customers()
        .move_customer(req(
            T,
            pb::MoveCustomerRequest {
                id: c.id.clone(),
                destination: Some(pb::move_customer_request::Destination::NewParentCustomerId(
                    "x".into(),
                )),
                expected_version: None,
            },
        ))
        .await;
    assert_invalid(move_bad_parent, "new_parent_customer_id");
    assert_invalid(
        s.customers()
            .get_customer(req(T, pb::GetCustomerRequest { id: "123".into() }))
            .await,
        "id",
    );
    assert_invalid(
        s.customers()
            .delete_customer(req(
                T,
                pb::DeleteCustomerRequest {
                    id: String::new(),
                    expected_version: None,
                },
            ))
            .await,
        "id",
    );

    let list = |r: pb::ListCustomersRequest| {
        let mut client = s.customers();
        async move { client.list_customers(req(T, r)).await }
    };
    assert_invalid(
        list(pb::ListCustomersRequest {
            page_size: -1,
            ..Default::default()
        })
        .await,
        "page_size",
    );
    assert_invalid(
        list(pb::ListCustomersRequest {
            page_token: "garbage!".into(),
            ..Default::default()
        })
        .await,
        "page_token",
    );
    assert_invalid(
        list(pb::ListCustomersRequest {
            r#type: 42,
            ..Default::default()
        })
        .await,
        "type",
    );
    // A token is bound to the listing that issued it.
    create_customer(&s, T, "D", None).await;
    let first = list(pb::ListCustomersRequest {
        page_size: 1,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner();
    assert!(!first.next_page_token.is_empty());
    let other_filter = list(pb::ListCustomersRequest {
        page_size: 1,
        page_token: first.next_page_token.clone(),
        roots_only: true,
        ..Default::default()
    })
    .await;
    assert_invalid(other_filter, "page_token");
    let descendants = s
        .customers()
        .list_customer_descendants(req(
            T,
            pb::ListCustomerDescendantsRequest {
                id: c.id.clone(),
                max_depth: Some(0),
                page_size: 0,
                page_token: String::new(),
            },
        ))
        .await;
    assert_invalid(descendants, "max_depth");
    let tree = s
        .customers()
        .get_customer_tree(req(
            T,
            pb::GetCustomerTreeRequest {
                id: c.id.clone(),
                max_depth: Some(21),
            },
        ))
        .await;
    assert_invalid(tree, "max_depth");
    let conn = s
        .devices()
        .update_device_connectivity(req(
            T,
            pb::UpdateDeviceConnectivityRequest {
                id: uuid::Uuid::new_v4().to_string(),
                connectivity_status: 0,
            },
        ))
        .await;
    assert_invalid(conn, "connectivity_status");
    // One customer ("D") was created on purpose above; nothing else changed.
    let after = fingerprint(&s).await;
    assert_eq!(
        after,
        before + 2,
        "only the deliberate create may change the tables"
    );
}
