//! DeviceService: every RPC's normal path; secrets are never returned.

use gcdr_data::pb;
use prost_types::FieldMask;
use tonic::Code;

use crate::harness::*;

const T: &str = "tenant-default";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_are_created_found_updated_moved_and_deleted() {
    let s = TestServer::start().await;
    let c = create_customer(&s, T, "C", None).await;
    let a1 = create_asset(&s, T, &c.id, "A1", None).await;
    let a2 = create_asset(&s, T, &c.id, "A2", None).await;
    let d = create_device(&s, T, &a1.id, "SN-TEMP-001").await;
    assert_eq!(d.customer_id, c.id);
    assert_eq!(
        d.connectivity_status,
        pb::ConnectivityStatus::Unknown as i32
    );
    assert_eq!(
        d.specs.as_ref().unwrap().serial_number.as_deref(),
        Some("SN-TEMP-001")
    );
    assert_eq!(
        d.telemetry_config.as_ref().unwrap().reporting_interval,
        Some(60)
    );

    let dup = create_device_raw(&s, &a1.id, "SN-TEMP-001").await;
    assert_code(dup, Code::AlreadyExists, "DEVICE_SERIAL_EXISTS");

    let by_serial = s
        .devices()
        .get_device_by_serial_number(req(
            T,
            pb::GetDeviceBySerialNumberRequest {
                serial_number: "SN-TEMP-001".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_serial.id, d.id);

    let updated = s
        .devices()
        .update_device(req(
            T,
            pb::UpdateDeviceRequest {
                id: d.id.clone(),
                device: Some(pb::Device {
                    label: Some("north wall".into()),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["label".into()],
                }),
                expected_version: Some(1),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.label.as_deref(), Some("north wall"));
    assert_eq!(updated.version, 2);

    let online = s
        .devices()
        .update_device_connectivity(req(
            T,
            pb::UpdateDeviceConnectivityRequest {
                id: d.id.clone(),
                connectivity_status: pb::ConnectivityStatus::Online as i32,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        online.connectivity_status,
        pb::ConnectivityStatus::Online as i32
    );
    assert!(online.last_connected_time.is_some());
    assert!(online.last_disconnected_time.is_none());
    assert_eq!(online.version, 3);

    let moved = s
        .devices()
        .move_device(req(
            T,
            pb::MoveDeviceRequest {
                id: d.id.clone(),
                new_asset_id: a2.id.clone(),
                expected_version: Some(3),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(moved.asset_id, a2.id);
    let again = s
        .devices()
        .move_device(req(
            T,
            pb::MoveDeviceRequest {
                id: d.id.clone(),
                new_asset_id: a2.id.clone(),
                expected_version: None,
            },
        ))
        .await;
    assert_code(again, Code::FailedPrecondition, "ALREADY_ON_ASSET");

    let on_a2 = s
        .devices()
        .list_devices(req(
            T,
            pb::ListDevicesRequest {
                asset_id: Some(a2.id.clone()),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(on_a2.devices.len(), 1);
    let offline = s
        .devices()
        .list_devices(req(
            T,
            pb::ListDevicesRequest {
                connectivity_status: pb::ConnectivityStatus::Offline as i32,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(offline.devices.is_empty());
    let of_customer = s
        .devices()
        .list_devices(req(
            T,
            pb::ListDevicesRequest {
                customer_id: Some(c.id.clone()),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(of_customer.devices.len(), 1);

    s.devices()
        .delete_device(req(
            T,
            pb::DeleteDeviceRequest {
                id: d.id.clone(),
                expected_version: Some(4),
            },
        ))
        .await
        .unwrap();
    assert_code(
        s.devices()
            .get_device(req(T, pb::GetDeviceRequest { id: d.id }))
            .await,
        Code::NotFound,
        "DEVICE_NOT_FOUND",
    );
}

async fn create_device_raw(
    s: &TestServer,
    asset: &str,
    serial: &str,
) -> Result<tonic::Response<pb::Device>, tonic::Status> {
    let device = pb::Device {
        asset_id: asset.into(),
        name: "x".into(),
        r#type: pb::DeviceType::Meter as i32,
        serial_number: serial.into(),
        ..Default::default()
    };
    s.devices()
        .create_device(req(
            T,
            pb::CreateDeviceRequest {
                device: Some(device),
            },
        ))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_token_is_stored_hashed_and_never_returned() {
    let s = TestServer::start().await;
    let c = create_customer(&s, T, "C", None).await;
    let a = create_asset(&s, T, &c.id, "A", None).await;
    let secret = "tok-very-secret-123";
    let device = pb::Device {
        asset_id: a.id.clone(),
        name: "Gateway".into(),
        r#type: pb::DeviceType::Gateway as i32,
        serial_number: "SN-GW".into(),
        credentials: Some(pb::DeviceCredentials {
            r#type: pb::CredentialsType::AccessToken as i32,
            access_token: Some(secret.into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = s
        .devices()
        .create_device(req(
            T,
            pb::CreateDeviceRequest {
                device: Some(device),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let creds = created.credentials.clone().unwrap();
    assert!(creds.has_access_token);
    assert_eq!(creds.access_token, None);
    let got = s
        .devices()
        .get_device(req(
            T,
            pb::GetDeviceRequest {
                id: created.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let listed = s
        .devices()
        .list_devices(req(T, pb::ListDevicesRequest::default()))
        .await
        .unwrap()
        .into_inner();
    for d in [created, got].into_iter().chain(listed.devices) {
        assert!(
            !format!("{d:?}").contains(secret),
            "the secret leaked: {d:?}"
        );
    }
    // At rest: only the SHA-256.
    let mut db = s.db().await;
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        creds: String,
    }
    let rows: Vec<Row> = diesel_async::RunQueryDsl::load(
        diesel::sql_query("SELECT credentials::text AS creds FROM devices"),
        &mut db,
    )
    .await
    .unwrap();
    assert!(!rows[0].creds.contains(secret));
    assert!(
        rows[0]
            .creds
            .contains(&gcdr_data::domain::device::sha256_hex(secret))
    );
}
