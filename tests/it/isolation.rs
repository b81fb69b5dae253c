//! Tenant isolation: another tenant's ids answer exactly as ids that do not exist,
//! and nothing of one tenant shows in another's listings.

use gcdr_data::pb;
use prost_types::FieldMask;
use tonic::Status;

use crate::harness::*;

const A: &str = "tenant-a";
const B: &str = "tenant-b";

/// What a caller can observe of a failure: code, message and details.
fn observe<T>(r: Result<tonic::Response<T>, Status>) -> String {
    match r {
        Ok(_) => "OK".into(),
        Err(s) => format!("{:?} | {} | {:?}", s.code(), s.message(), s.details()),
    }
}

struct Ids {
    customer: String,
    asset: String,
    device: String,
}

/// Runs every id-taking RPC as tenant B against `ids`, returning what B observes.
async fn probe(s: &TestServer, ids: &Ids, serial: &str, code: &str) -> Vec<String> {
    let (mut c, mut a, mut d) = (s.customers(), s.assets(), s.devices());
    let mask = || {
        Some(FieldMask {
            paths: vec!["name".into()],
        })
    };
    let to = |p: &str| {
        Some(pb::move_customer_request::Destination::NewParentCustomerId(
            p.into(),
        ))
    };
    vec![
        observe(
            c.get_customer(req(
                B,
                pb::GetCustomerRequest {
                    id: ids.customer.clone(),
                },
            ))
            .await,
        ),
        observe(
            c.get_customer_by_code(req(B, pb::GetCustomerByCodeRequest { code: code.into() }))
                .await,
        ),
        observe(
            c.update_customer(req(
                B,
                pb::UpdateCustomerRequest {
                    id: ids.customer.clone(),
                    customer: Some(customer("x", None)),
                    update_mask: mask(),
                    expected_version: None,
                },
            ))
            .await,
        ),
        observe(
            c.delete_customer(req(
                B,
                pb::DeleteCustomerRequest {
                    id: ids.customer.clone(),
                    expected_version: None,
                },
            ))
            .await,
        ),
        observe(
            c.list_customer_children(req(
                B,
                pb::ListCustomerChildrenRequest {
                    id: ids.customer.clone(),
                    ..Default::default()
                },
            ))
            .await,
        ),
        observe(
            c.list_customer_descendants(req(
                B,
                pb::ListCustomerDescendantsRequest {
                    id: ids.customer.clone(),
                    ..Default::default()
                },
            ))
            .await,
        ),
        observe(
            c.list_customer_ancestors(req(
                B,
                pb::ListCustomerAncestorsRequest {
                    id: ids.customer.clone(),
                },
            ))
            .await,
        ),
        observe(
            c.get_customer_tree(req(
                B,
                pb::GetCustomerTreeRequest {
                    id: ids.customer.clone(),
                    max_depth: None,
                },
            ))
            .await,
        ),
        observe(
            c.move_customer(req(
                B,
                pb::MoveCustomerRequest {
                    id: ids.customer.clone(),
                    destination: Some(pb::move_customer_request::Destination::ToRoot(true)),
                    expected_version: None,
                },
            ))
            .await,
        ),
        // B's own customer moving under A's customer: the parent must look missing.
        observe(
            c.create_customer(req(
                B,
                pb::CreateCustomerRequest {
                    customer: Some(customer("x", Some(&ids.customer))),
                },
            ))
            .await,
        ),
        observe(
            c.move_customer(req(
                B,
                pb::MoveCustomerRequest {
                    id: ids.customer.clone(),
                    destination: to(&ids.customer),
                    expected_version: None,
                },
            ))
            .await,
        ),
        observe(
            a.get_asset(req(
                B,
                pb::GetAssetRequest {
                    id: ids.asset.clone(),
                },
            ))
            .await,
        ),
        observe(
            a.get_asset_by_code(req(
                B,
                pb::GetAssetByCodeRequest {
                    customer_id: ids.customer.clone(),
                    code: "A".into(),
                },
            ))
            .await,
        ),
        observe(
            a.update_asset(req(
                B,
                pb::UpdateAssetRequest {
                    id: ids.asset.clone(),
                    asset: Some(pb::Asset {
                        name: "x".into(),
                        ..Default::default()
                    }),
                    update_mask: mask(),
                    expected_version: None,
                },
            ))
            .await,
        ),
        observe(
            a.delete_asset(req(
                B,
                pb::DeleteAssetRequest {
                    id: ids.asset.clone(),
                    expected_version: None,
                },
            ))
            .await,
        ),
        observe(
            a.list_assets(req(
                B,
                pb::ListAssetsRequest {
                    customer_id: ids.customer.clone(),
                    ..Default::default()
                },
            ))
            .await,
        ),
        observe(
            a.list_asset_children(req(
                B,
                pb::ListAssetChildrenRequest {
                    id: ids.asset.clone(),
                    ..Default::default()
                },
            ))
            .await,
        ),
        observe(
            a.list_asset_descendants(req(
                B,
                pb::ListAssetDescendantsRequest {
                    id: ids.asset.clone(),
                    ..Default::default()
                },
            ))
            .await,
        ),
        observe(
            a.list_asset_ancestors(req(
                B,
                pb::ListAssetAncestorsRequest {
                    id: ids.asset.clone(),
                },
            ))
            .await,
        ),
        observe(
            a.get_asset_tree(req(
                B,
                pb::GetAssetTreeRequest {
                    root: Some(pb::get_asset_tree_request::Root::AssetId(ids.asset.clone())),
                    max_depth: None,
                },
            ))
            .await,
        ),
        observe(
            a.get_asset_tree(req(
                B,
                pb::GetAssetTreeRequest {
                    root: Some(pb::get_asset_tree_request::Root::CustomerId(
                        ids.customer.clone(),
                    )),
                    max_depth: None,
                },
            ))
            .await,
        ),
        observe(
            a.move_asset(req(
                B,
                pb::MoveAssetRequest {
                    id: ids.asset.clone(),
                    destination: Some(pb::move_asset_request::Destination::ToRoot(true)),
                    new_customer_id: None,
                    expected_version: None,
                },
            ))
            .await,
        ),
        observe(
            a.create_asset(req(
                B,
                pb::CreateAssetRequest {
                    asset: Some(pb::Asset {
                        customer_id: ids.customer.clone(),
                        name: "x".into(),
                        r#type: pb::AssetType::Room as i32,
                        ..Default::default()
                    }),
                },
            ))
            .await,
        ),
        observe(
            d.get_device(req(
                B,
                pb::GetDeviceRequest {
                    id: ids.device.clone(),
                },
            ))
            .await,
        ),
        observe(
            d.get_device_by_serial_number(req(
                B,
                pb::GetDeviceBySerialNumberRequest {
                    serial_number: serial.into(),
                },
            ))
            .await,
        ),
        observe(
            d.update_device(req(
                B,
                pb::UpdateDeviceRequest {
                    id: ids.device.clone(),
                    device: Some(pb::Device {
                        name: "x".into(),
                        ..Default::default()
                    }),
                    update_mask: mask(),
                    expected_version: None,
                },
            ))
            .await,
        ),
        observe(
            d.delete_device(req(
                B,
                pb::DeleteDeviceRequest {
                    id: ids.device.clone(),
                    expected_version: None,
                },
            ))
            .await,
        ),
        observe(
            d.move_device(req(
                B,
                pb::MoveDeviceRequest {
                    id: ids.device.clone(),
                    new_asset_id: ids.asset.clone(),
                    expected_version: None,
                },
            ))
            .await,
        ),
        observe(
            d.update_device_connectivity(req(
                B,
                pb::UpdateDeviceConnectivityRequest {
                    id: ids.device.clone(),
                    connectivity_status: pb::ConnectivityStatus::Online as i32,
                },
            ))
            .await,
        ),
        observe(
            d.create_device(req(
                B,
                pb::CreateDeviceRequest {
                    device: Some(pb::Device {
                        asset_id: ids.asset.clone(),
                        name: "x".into(),
                        r#type: pb::DeviceType::Sensor as i32,
                        serial_number: "SN-B".into(),
                        ..Default::default()
                    }),
                },
            ))
            .await,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_ids_answer_exactly_like_missing_ids() {
    let s = TestServer::start().await;
    let c = create_customer(&s, A, "A", None).await;
    let asset = create_asset(&s, A, &c.id, "A", None).await;
    let dev = create_device(&s, A, &asset.id, "SN-A").await;
    let theirs = Ids {
        customer: c.id.clone(),
        asset: asset.id.clone(),
        device: dev.id.clone(),
    };
    let missing = Ids {
        customer: uuid::Uuid::new_v4().to_string(),
        asset: uuid::Uuid::new_v4().to_string(),
        device: uuid::Uuid::new_v4().to_string(),
    };
    let seen = probe(&s, &theirs, "SN-A", c.code.as_deref().unwrap()).await;
    let absent = probe(&s, &missing, "SN-NOPE", "NOPE").await;
    for (i, (x, y)) in seen.iter().zip(&absent).enumerate() {
        assert_eq!(
            x, y,
            "call #{i}: another tenant's id was distinguishable from a missing one"
        );
        assert!(
            x.starts_with("NotFound"),
            "call #{i} should be NOT_FOUND, got {x}"
        );
    }

    // B's listings are empty, and A's data is untouched.
    let list = s
        .customers()
        .list_customers(req(B, pb::ListCustomersRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(list.customers.is_empty());
    let devices = s
        .devices()
        .list_devices(req(B, pb::ListDevicesRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(devices.devices.is_empty());
    let still = s
        .customers()
        .get_customer(req(A, pb::GetCustomerRequest { id: c.id }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(still.version, 1);
    let dev_still = s
        .devices()
        .get_device(req(A, pb::GetDeviceRequest { id: dev.id }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dev_still.version, 1);

    // The same code and serial number are free in another tenant.
    let mut same_code = customer("A", None);
    same_code.code = c.code.clone();
    s.customers()
        .create_customer(req(
            B,
            pb::CreateCustomerRequest {
                customer: Some(same_code),
            },
        ))
        .await
        .unwrap();
}

/// Copies tenant A's rows of `table` (all of them) into tenant B under the same ids,
/// with B's paths and names: the same key in two tenants, as backfilled legacy data
/// can hold.
async fn twin_into_b(db: &mut diesel_async::AsyncPgConnection, table: &str) {
    let path = if table == "devices" {
        String::new()
    } else {
        format!(", path = replace(path, '/{A}/', '/{B}/')")
    };
    let sql = format!(
        "CREATE TEMP TABLE twin AS SELECT * FROM {table} WHERE tenant_id = '{A}';
         UPDATE twin SET tenant_id = '{B}', name = 'B ' || name {path};
         INSERT INTO {table} SELECT * FROM twin;
         DROP TABLE twin;"
    );
    diesel_async::SimpleAsyncConnection::batch_execute(db, &sql)
        .await
        .unwrap_or_else(|e| panic!("twin {table}: {e}"));
}

/// Gets by id are answered in batches across concurrent calls. A batch holding the
/// same id for two tenants must still answer each tenant with its own row, and a
/// tenant asking for an id only another tenant holds must get NOT_FOUND.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_gets_answered_in_batches_never_cross_tenants() {
    let s = TestServer::start().await;
    let customer = create_customer(&s, A, "Shared", None).await;
    let asset = create_asset(&s, A, &customer.id, "Hall", None).await;
    let device = create_device(&s, A, &asset.id, "SN-TWIN").await;
    let only_a = create_customer(&s, A, "Only in A", None).await;
    let mut db = s.db().await;
    for table in ["customers", "assets", "devices"] {
        twin_into_b(&mut db, table).await;
    }
    // only_a was twinned too; remove B's copy so it exists in A alone.
    diesel_async::SimpleAsyncConnection::batch_execute(
        &mut db,
        &format!(
            "DELETE FROM customers WHERE tenant_id = '{B}' AND id = '{}'",
            only_a.id
        ),
    )
    .await
    .unwrap();

    let mut calls = tokio::task::JoinSet::new();
    for i in 0..300 {
        let tenant = if i % 2 == 0 { A } else { B };
        let (mut c, mut a, mut d) = (s.customers(), s.assets(), s.devices());
        let (cid, aid, did, oid) = (
            customer.id.clone(),
            asset.id.clone(),
            device.id.clone(),
            only_a.id.clone(),
        );
        calls.spawn(async move {
            let got = match i % 8 / 2 {
                0 => c
                    .get_customer(req(tenant, pb::GetCustomerRequest { id: cid }))
                    .await
                    .map(|r| r.into_inner().name),
                1 => a
                    .get_asset(req(tenant, pb::GetAssetRequest { id: aid }))
                    .await
                    .map(|r| r.into_inner().name),
                2 => d
                    .get_device(req(tenant, pb::GetDeviceRequest { id: did }))
                    .await
                    .map(|r| r.into_inner().name),
                _ => c
                    .get_customer(req(tenant, pb::GetCustomerRequest { id: oid }))
                    .await
                    .map(|r| r.into_inner().name),
            };
            (tenant, i % 8 / 2, got.map_err(|e| e.code()))
        });
    }
    let mut answered = 0;
    while let Some(joined) = calls.join_next().await {
        let (tenant, kind, got) = joined.unwrap();
        let prefix = if tenant == B { "B " } else { "" };
        let want = match kind {
            0 => Ok(format!("{prefix}Shared")),
            1 => Ok(format!("{prefix}Hall")),
            2 => Ok(format!("{prefix}Sensor SN-TWIN")),
            _ if tenant == A => Ok("Only in A".to_owned()),
            _ => Err(tonic::Code::NotFound),
        };
        assert_eq!(got, want, "tenant {tenant}, read kind {kind}");
        answered += 1;
    }
    assert_eq!(answered, 300);
}
