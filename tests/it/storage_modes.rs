//! The storage switch against real PostgreSQL and a real DynamoDB wire-protocol server
//! (moto, started by `scripts/ensure-dynamodb.sh`; `GCDR_TEST_DYNAMODB_URL`, default
//! http://127.0.0.1:8765). Each test gets a fresh database and its own table stage.

use std::time::Duration;

use gcdr_data::app::{StorageSettings, build_storage};
use gcdr_data::domain::TenantId;
use gcdr_data::pb;
use gcdr_data::pb::storage_admin_service_client::StorageAdminServiceClient;
use gcdr_data::storage::dynamodb::{DynamoConfig, DynamoStore, TableNames, differing_fields};
use gcdr_data::storage::mode::{Backend, StorageMode};
use gcdr_data::storage::postgres::{PgStore, PoolConfig};
use gcdr_data::storage::replica::{DivergenceLog, Entity, Outbox, RecordKey, Replica};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::Code;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::harness::{fresh_database, req};

const TOKEN: &str = "test-admin-token";

pub fn dynamo_url() -> String {
    std::env::var("GCDR_TEST_DYNAMODB_URL").unwrap_or_else(|_| "http://127.0.0.1:8765".into())
}

pub fn dynamo_config(endpoint: &str, stage: &str) -> DynamoConfig {
    DynamoConfig {
        endpoint: Some(endpoint.to_owned()),
        region: "sa-east-1".into(),
        tables: TableNames::from_lookup(stage, |_| None),
        index_settle: gcdr_data::storage::dynamodb::INDEX_SETTLE,
    }
}

/// A server over a fresh database and fresh tables, in `mode`.
pub struct ModeServer {
    pub channel: Channel,
    pub pg: PgStore,
    pub dynamo: DynamoStore,
    pub replicator: gcdr_data::storage::router::Replicator,
    _stop: oneshot::Sender<()>,
}

impl ModeServer {
    pub async fn start(mode: StorageMode) -> Self {
        Self::start_with(mode, &dynamo_url()).await
    }

    /// `endpoint`: where the server's DynamoDB client points (a dead port simulates
    /// an unreachable DynamoDB); the tables are always created on the real emulator.
    pub async fn start_with(mode: StorageMode, endpoint: &str) -> Self {
        Self::start_tuned(mode, endpoint, |_| {}).await
    }

    /// [`ModeServer::start_with`], with the storage settings adjusted by `tune`.
    pub async fn start_tuned(
        mode: StorageMode,
        endpoint: &str,
        tune: impl FnOnce(&mut StorageSettings),
    ) -> Self {
        crate::harness::init_tracing();
        let stage = format!("t{}", Uuid::new_v4().simple());
        let real = DynamoStore::connect(&dynamo_config(&dynamo_url(), &stage)).await;
        gcdr_data::storage::dynamodb::create_tables(real.client(), real.tables())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot create tables on the DynamoDB emulator at {}: {e}\n\
                     start it (`bash scripts/ensure-dynamodb.sh` does) or set GCDR_TEST_DYNAMODB_URL",
                    dynamo_url()
                )
            });
        let db = fresh_database().await;
        let pool = PoolConfig {
            acquire_timeout: Duration::from_secs(2),
            ..PoolConfig::default()
        };
        let pg = PgStore::connect(&db, &pool).await.unwrap();
        let mut settings = StorageSettings {
            default_mode: mode,
            dynamodb: Some(dynamo_config(endpoint, &stage)),
            admin_token: Some(TOKEN.into()),
            mode_poll: Duration::from_millis(100),
            secondary_timeout: Duration::from_millis(1500),
            ..StorageSettings::default()
        };
        tune(&mut settings);
        let storage = build_storage(pg.clone(), &settings).await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let replicator = storage.replicator.clone();
        tokio::spawn(gcdr_data::grpc::serve(
            listener,
            storage.store,
            Some(storage.admin),
            Duration::from_millis(100),
            async {
                let _ = rx.await;
            },
        ));
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        Self {
            channel,
            pg,
            dynamo: real,
            replicator,
            _stop: tx,
        }
    }

    pub fn customers(&self) -> pb::customer_service_client::CustomerServiceClient<Channel> {
        pb::customer_service_client::CustomerServiceClient::new(self.channel.clone())
    }

    pub fn assets(&self) -> pb::asset_service_client::AssetServiceClient<Channel> {
        pb::asset_service_client::AssetServiceClient::new(self.channel.clone())
    }

    pub fn devices(&self) -> pb::device_service_client::DeviceServiceClient<Channel> {
        pb::device_service_client::DeviceServiceClient::new(self.channel.clone())
    }

    pub fn roles(&self) -> pb::role_service_client::RoleServiceClient<Channel> {
        pb::role_service_client::RoleServiceClient::new(self.channel.clone())
    }

    pub fn policies(&self) -> pb::policy_service_client::PolicyServiceClient<Channel> {
        pb::policy_service_client::PolicyServiceClient::new(self.channel.clone())
    }

    pub fn admin(&self) -> StorageAdminServiceClient<Channel> {
        StorageAdminServiceClient::new(self.channel.clone())
    }

    pub fn store(&self, b: Backend) -> &dyn Replica {
        match b {
            Backend::Postgres => &self.pg,
            Backend::Dynamodb => &self.dynamo,
        }
    }

    pub async fn replication_status(&self) -> pb::GetReplicationStatusResponse {
        self.admin()
            .get_replication_status(admin_req(pb::GetReplicationStatusRequest::default()))
            .await
            .unwrap()
            .into_inner()
    }

    pub fn outbox(&self, b: Backend) -> &dyn Outbox {
        match b {
            Backend::Postgres => &self.pg,
            Backend::Dynamodb => &self.dynamo,
        }
    }
}

/// Creates a building under `customer` and a meter on it, through the API.
pub async fn building_with_meter(
    s: &ModeServer,
    tenant: &str,
    customer: &str,
) -> (pb::Asset, pb::Device) {
    let asset = s
        .assets()
        .create_asset(req(
            tenant,
            pb::CreateAssetRequest {
                asset: Some(pb::Asset {
                    customer_id: customer.to_owned(),
                    name: "Building".into(),
                    r#type: pb::AssetType::Building as i32,
                    ..Default::default()
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let device = s
        .devices()
        .create_device(req(tenant, new_meter(&asset.id)))
        .await
        .unwrap()
        .into_inner();
    (asset, device)
}

/// The request creating a meter with a fresh serial number on `asset`.
fn new_meter(asset: &str) -> pb::CreateDeviceRequest {
    pb::CreateDeviceRequest {
        device: Some(pb::Device {
            asset_id: asset.to_owned(),
            name: "Meter".into(),
            r#type: pb::DeviceType::Meter as i32,
            serial_number: format!("SN-{}", Uuid::new_v4().simple()),
            ..Default::default()
        }),
    }
}

pub fn admin_req<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    r
}

pub fn key(entity: Entity, tenant: &str, id: &str) -> RecordKey {
    RecordKey {
        entity,
        tenant: TenantId::parse(tenant).unwrap(),
        id: Uuid::parse_str(id).unwrap(),
    }
}

/// Creates a root customer, a child, an asset and a device; updates, moves and
/// deletes through the API. Returns the keys that must exist afterwards.
async fn lifecycle(s: &ModeServer, tenant: &str) -> (Vec<RecordKey>, Vec<RecordKey>) {
    let mut customers = s.customers();
    let create = |name: &str, parent: Option<String>| pb::CreateCustomerRequest {
        customer: Some(pb::Customer {
            name: name.into(),
            r#type: pb::CustomerType::Company as i32,
            parent_customer_id: parent,
            ..Default::default()
        }),
    };
    let root = customers
        .create_customer(req(tenant, create("Holding", None)))
        .await
        .unwrap()
        .into_inner();
    let child = customers
        .create_customer(req(tenant, create("Branch", Some(root.id.clone()))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(child.depth, 1);
    let got = customers
        .get_customer(req(
            tenant,
            pb::GetCustomerRequest {
                id: child.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, child);
    let updated = customers
        .update_customer(req(
            tenant,
            pb::UpdateCustomerRequest {
                id: child.id.clone(),
                customer: Some(pb::Customer {
                    name: "Branch One".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["name".into()],
                }),
                expected_version: Some(1),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.version, 2);
    let stale = customers
        .update_customer(req(
            tenant,
            pb::UpdateCustomerRequest {
                id: child.id.clone(),
                customer: Some(pb::Customer {
                    name: "x".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["name".into()],
                }),
                expected_version: Some(1),
            },
        ))
        .await;
    assert_eq!(stale.unwrap_err().code(), Code::Aborted);
    let descendants = customers
        .list_customer_descendants(req(
            tenant,
            pb::ListCustomerDescendantsRequest {
                id: root.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(descendants.customers.len(), 1);

    let (asset, device) = building_with_meter(s, tenant, &child.id).await;
    assert_eq!(device.customer_id, child.id);
    let doomed = s
        .devices()
        .create_device(req(
            tenant,
            pb::CreateDeviceRequest {
                device: Some(pb::Device {
                    asset_id: asset.id.clone(),
                    name: "Temp".into(),
                    r#type: pb::DeviceType::Sensor as i32,
                    serial_number: format!("SN-{}", Uuid::new_v4().simple()),
                    ..Default::default()
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    s.devices()
        .delete_device(req(
            tenant,
            pb::DeleteDeviceRequest {
                id: doomed.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    // Move the branch to the root: its path and depth change.
    let moved = customers
        .move_customer(req(
            tenant,
            pb::MoveCustomerRequest {
                id: child.id.clone(),
                destination: Some(pb::move_customer_request::Destination::ToRoot(true)),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(moved.depth, 0);
    let present = vec![
        key(Entity::Customer, tenant, &root.id),
        key(Entity::Customer, tenant, &child.id),
        key(Entity::Asset, tenant, &asset.id),
        key(Entity::Device, tenant, &device.id),
    ];
    let absent = vec![key(Entity::Device, tenant, &doomed.id)];
    (present, absent)
}

/// Table-driven: the same lifecycle in every mode; afterwards the authoritative store
/// holds it, the secondary (dual modes) holds identical copies, and a single-store
/// mode never wrote the other store.
#[tokio::test]
async fn every_mode_serves_the_lifecycle_and_dual_modes_keep_both_stores_equal() {
    for mode in StorageMode::ALL {
        let s = ModeServer::start(mode).await;
        let (present, absent) = lifecycle(&s, "tenant-default").await;
        s.replicator.flush().await;
        let primary = s.store(mode.primary());
        for k in &present {
            let mine = primary.load(k).await.unwrap();
            let mine = mine.unwrap_or_else(|| panic!("{mode}: {k:?} missing in the primary"));
            let other_backend = match mode.primary() {
                Backend::Postgres => Backend::Dynamodb,
                Backend::Dynamodb => Backend::Postgres,
            };
            let other = s.store(other_backend).load(k).await.unwrap();
            match mode.secondary() {
                Some(_) => {
                    let other =
                        other.unwrap_or_else(|| panic!("{mode}: {k:?} missing in the secondary"));
                    assert_eq!(
                        differing_fields(&mine, &other),
                        Vec::<String>::new(),
                        "{mode}: {k:?} differs between the stores"
                    );
                }
                None => assert!(other.is_none(), "{mode}: {k:?} leaked into the other store"),
            }
        }
        for k in &absent {
            assert!(s.store(Backend::Postgres).load(k).await.unwrap().is_none());
            assert!(s.store(Backend::Dynamodb).load(k).await.unwrap().is_none());
        }
        // Every copy's intent is gone once the copy is applied (or its write failed,
        // as the stale update did).
        for b in [Backend::Postgres, Backend::Dynamodb] {
            let left = s.outbox(b).stale(Duration::ZERO, 100).await.unwrap();
            assert!(
                left.is_empty(),
                "{mode}: intents left in {b:?}'s outbox: {left:?}"
            );
        }
        let status = s.replication_status().await;
        let failed: Vec<_> = status
            .counters
            .iter()
            .filter(|c| c.name.starts_with("outbox_"))
            .collect();
        assert!(failed.is_empty(), "{mode}: {failed:?}");
    }
}

/// DynamoDB as the secondary is unreachable: every call still succeeds, and each
/// missed copy is recorded durably in PostgreSQL and reported by the admin API.
#[tokio::test]
async fn a_failing_secondary_never_fails_a_call_and_the_divergence_is_recorded() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let s = ModeServer::start_with(StorageMode::DualPostgresPrimary, &dead).await;
    let (present, _) = lifecycle(&s, "tenant-a").await;
    s.replicator.flush().await;
    let recorded = DivergenceLog::list(&s.pg, None).await.unwrap();
    for k in &present {
        assert!(
            recorded
                .iter()
                .any(|d| d.key == *k && d.target == Backend::Dynamodb),
            "no divergence recorded for {k:?}: {recorded:?}"
        );
    }
    let status = s.replication_status().await;
    assert!(
        status
            .counters
            .iter()
            .any(|c| c.name.contains("outcome=failed") && c.value > 0)
    );
    assert!(status.divergences.len() >= present.len());
}

/// The admin API: token required, phase skips refused unless forced, per-tenant
/// override honoured while other tenants stay put, and persisted.
#[tokio::test]
async fn the_mode_switch_is_guarded_persisted_and_per_tenant() {
    let s = ModeServer::start(StorageMode::Dynamodb).await;
    let mut admin = s.admin();
    let no_token = admin
        .get_storage_mode(tonic::Request::new(pb::GetStorageModeRequest::default()))
        .await;
    assert_eq!(no_token.unwrap_err().code(), Code::Unauthenticated);
    let mut wrong = tonic::Request::new(pb::GetStorageModeRequest::default());
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer nope".parse().unwrap());
    assert_eq!(
        admin.get_storage_mode(wrong).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let skip = admin
        .set_storage_mode(admin_req(pb::SetStorageModeRequest {
            mode: pb::StorageMode::Postgres as i32,
            ..Default::default()
        }))
        .await;
    assert_eq!(skip.unwrap_err().code(), Code::FailedPrecondition);
    // Canary tenant first: dual write for it only.
    admin
        .set_storage_mode(admin_req(pb::SetStorageModeRequest {
            mode: pb::StorageMode::DualDynamodbPrimary as i32,
            tenant_id: "canary".into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    let (canary, _) = lifecycle(&s, "canary").await;
    let (other, _) = lifecycle(&s, "tenant-b").await;
    s.replicator.flush().await;
    for k in &canary {
        assert!(
            s.pg.load(k).await.unwrap().is_some(),
            "canary not dual-written: {k:?}"
        );
    }
    for k in &other {
        assert!(
            s.pg.load(k).await.unwrap().is_none(),
            "other tenant moved: {k:?}"
        );
        assert!(s.dynamo.load(k).await.unwrap().is_some());
    }
    let got = admin
        .get_storage_mode(admin_req(pb::GetStorageModeRequest {
            tenant_id: "canary".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.global_mode, pb::StorageMode::Dynamodb as i32);
    assert_eq!(
        got.effective_mode,
        pb::StorageMode::DualDynamodbPrimary as i32
    );
    // Persisted: a fresh read of the table (what a restarted replica loads) agrees.
    let table = s.pg.load_modes(StorageMode::Postgres).await.unwrap();
    assert_eq!(table.global, StorageMode::Postgres); // no global row was written
    assert_eq!(
        table.tenants.get("canary"),
        Some(&StorageMode::DualDynamodbPrimary)
    );
    // A forced skip is allowed.
    admin
        .set_storage_mode(admin_req(pb::SetStorageModeRequest {
            mode: pb::StorageMode::DualPostgresPrimary as i32,
            force: true,
            ..Default::default()
        }))
        .await
        .unwrap();
}

/// Flipping dual_dynamodb_primary -> dual_postgres_primary under concurrent writes:
/// no call fails and every acknowledged write is readable afterwards from the store
/// that became authoritative.
#[tokio::test]
async fn a_mode_flip_under_load_fails_no_call_and_loses_no_write() {
    let s = ModeServer::start(StorageMode::DualDynamodbPrimary).await;
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let mut customers = s.customers();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..25 {
                    let created = customers
                        .create_customer(req(
                            "tenant-flip",
                            pb::CreateCustomerRequest {
                                customer: Some(pb::Customer {
                                    name: format!("W{w} C{i}"),
                                    r#type: pb::CustomerType::Company as i32,
                                    ..Default::default()
                                }),
                            },
                        ))
                        .await
                        .expect("no call may fail during the flip")
                        .into_inner();
                    ids.push(created.id);
                }
                ids
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.admin()
        .set_storage_mode(admin_req(pb::SetStorageModeRequest {
            mode: pb::StorageMode::DualPostgresPrimary as i32,
            ..Default::default()
        }))
        .await
        .unwrap();
    let mut all = Vec::new();
    for w in writers {
        all.extend(w.await.unwrap());
    }
    assert_eq!(all.len(), 100);
    let mut customers = s.customers();
    for id in &all {
        customers
            .get_customer(req(
                "tenant-flip",
                pb::GetCustomerRequest { id: id.clone() },
            ))
            .await
            .unwrap_or_else(|e| panic!("acknowledged customer {id} lost: {e:?}"));
    }
    s.replicator.flush().await;
    for id in &all {
        let k = key(Entity::Customer, "tenant-flip", id);
        assert!(
            s.dynamo.load(&k).await.unwrap().is_some(),
            "{id} missing in DynamoDB"
        );
    }
}

/// DynamoDB unreachable while it is authoritative: calls answer UNAVAILABLE (never
/// INTERNAL), nothing is half-written to PostgreSQL, and health says so, per store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authoritative_dynamodb_outage_is_unavailable_and_not_serving() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let s = ModeServer::start_with(StorageMode::DualDynamodbPrimary, &dead).await;
    let created = s
        .customers()
        .create_customer(req(
            "tenant-a",
            pb::CreateCustomerRequest {
                customer: Some(pb::Customer {
                    name: "Holding".into(),
                    r#type: pb::CustomerType::Holding as i32,
                    ..Default::default()
                }),
            },
        ))
        .await;
    assert_eq!(created.unwrap_err().code(), Code::Unavailable);
    let got = s
        .customers()
        .get_customer(req(
            "tenant-a",
            pb::GetCustomerRequest {
                id: Uuid::new_v4().to_string(),
            },
        ))
        .await;
    assert_eq!(got.unwrap_err().code(), Code::Unavailable);
    s.replicator.flush().await;
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = s.pg.conn().await.unwrap();
    let rows: N = diesel_async::RunQueryDsl::get_result(
        diesel::sql_query("SELECT count(*) AS n FROM customers"),
        &mut *conn,
    )
    .await
    .unwrap();
    assert_eq!(
        rows.n, 0,
        "a failed authoritative write left a copy in PostgreSQL"
    );

    let health = HealthClient::new(s.channel.clone());
    let status = |service: &'static str| {
        let mut h = health.clone();
        async move {
            let r = h
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .expect("health answers");
            ServingStatus::try_from(r.into_inner().status).unwrap()
        }
    };
    let mut seen = (
        ServingStatus::Unknown,
        ServingStatus::Unknown,
        ServingStatus::Unknown,
    );
    for _ in 0..100 {
        seen = (
            status("").await,
            status("gcdr.storage.dynamodb").await,
            status("gcdr.storage.postgres").await,
        );
        if seen
            == (
                ServingStatus::NotServing,
                ServingStatus::NotServing,
                ServingStatus::Serving,
            )
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        seen,
        (
            ServingStatus::NotServing,
            ServingStatus::NotServing,
            ServingStatus::Serving
        )
    );
}

/// DynamoDB authoritative: concurrent creates never share a customer code (claimed in
/// the unique-keys table with the item), and a deleted or recoded customer frees its
/// code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_customer_codes_stay_unique_under_concurrent_creates() {
    let s = ModeServer::start(StorageMode::DualDynamodbPrimary).await;
    let create = |name: String, code: Option<&str>| {
        let mut client = s.customers();
        let code = code.map(str::to_owned);
        async move {
            client
                .create_customer(req(
                    "tenant-a",
                    pb::CreateCustomerRequest {
                        customer: Some(pb::Customer {
                            name,
                            code,
                            r#type: pb::CustomerType::Company as i32,
                            ..Default::default()
                        }),
                    },
                ))
                .await
                .map(tonic::Response::into_inner)
        }
    };
    // Eight names with one generated code (the first 20 characters).
    let made = futures::future::join_all(
        (0..8).map(|i| create(format!("Shopping Center Campinas {i}"), None)),
    )
    .await;
    let mut codes: Vec<String> = made
        .into_iter()
        .map(|r| {
            r.expect("a create with a generated code never fails")
                .code
                .unwrap()
        })
        .collect();
    codes.sort();
    codes.dedup();
    assert_eq!(codes.len(), 8, "duplicate generated codes: {codes:?}");
    // Four creates of one explicit code: exactly one wins.
    let made =
        futures::future::join_all((0..4).map(|i| create(format!("Explicit {i}"), Some("ACME"))))
            .await;
    let winners: Vec<_> = made.iter().filter(|r| r.is_ok()).collect();
    assert_eq!(winners.len(), 1, "{made:?}");
    for r in made.iter().filter(|r| r.is_err()) {
        assert_eq!(r.as_ref().unwrap_err().code(), Code::AlreadyExists);
    }
    let acme = winners[0].as_ref().unwrap().clone();
    // Recoding frees ACME; deleting frees the new code.
    let mut customers = s.customers();
    customers
        .update_customer(req(
            "tenant-a",
            pb::UpdateCustomerRequest {
                id: acme.id.clone(),
                customer: Some(pb::Customer {
                    code: Some("ACME-2".into()),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["code".into()],
                }),
                expected_version: None,
            },
        ))
        .await
        .expect("recode");
    create("Second Acme".into(), Some("ACME"))
        .await
        .expect("ACME is free again after the recode");
    assert_eq!(
        create("Clash".into(), Some("ACME-2"))
            .await
            .unwrap_err()
            .code(),
        Code::AlreadyExists
    );
    customers
        .delete_customer(req(
            "tenant-a",
            pb::DeleteCustomerRequest {
                id: acme.id.clone(),
                expected_version: None,
            },
        ))
        .await
        .expect("delete");
    create("Third".into(), Some("ACME-2"))
        .await
        .expect("ACME-2 is free again after the delete");
    // Every copy reached PostgreSQL: no refused duplicate.
    s.replicator.flush().await;
    assert!(
        DivergenceLog::list(&s.dynamo, None)
            .await
            .unwrap()
            .is_empty()
    );
}

/// DynamoDB authoritative: of concurrent creates of one serial number exactly one wins
/// (claimed with the item); deleting the device frees the serial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_device_serials_stay_unique_under_concurrent_creates() {
    let s = ModeServer::start(StorageMode::Dynamodb).await;
    let owner = s
        .customers()
        .create_customer(req(
            "tenant-a",
            pb::CreateCustomerRequest {
                customer: Some(pb::Customer {
                    name: "Holding".into(),
                    r#type: pb::CustomerType::Holding as i32,
                    ..Default::default()
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let (asset, _) = building_with_meter(&s, "tenant-a", &owner.id).await;
    let create = |name: String| {
        let mut devices = s.devices();
        let asset_id = asset.id.clone();
        async move {
            devices
                .create_device(req(
                    "tenant-a",
                    pb::CreateDeviceRequest {
                        device: Some(pb::Device {
                            asset_id,
                            name,
                            r#type: pb::DeviceType::Sensor as i32,
                            serial_number: "SN-CLAIMED".into(),
                            ..Default::default()
                        }),
                    },
                ))
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let made = futures::future::join_all((0..4).map(|i| create(format!("Sensor {i}")))).await;
    let winners: Vec<_> = made.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "{made:?}");
    for r in &made {
        if let Err(e) = r {
            assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
        }
    }
    s.devices()
        .delete_device(req(
            "tenant-a",
            pb::DeleteDeviceRequest {
                id: winners[0].id.clone(),
                expected_version: None,
            },
        ))
        .await
        .expect("delete");
    create("Replacement".into())
        .await
        .expect("the serial is free again after the delete");
}

/// The outcome of concurrent creates of one unique value: exactly one succeeded, the
/// others were refused with ALREADY_EXISTS. Returns the winner.
fn one_winner<T: std::fmt::Debug>(made: Vec<Result<T, tonic::Status>>) -> T {
    let n = made.iter().filter(|r| r.is_ok()).count();
    assert_eq!(n, 1, "{made:?}");
    let mut winner = None;
    for r in made {
        match r {
            Ok(w) => winner = Some(w),
            Err(e) => assert_eq!(e.code(), Code::AlreadyExists, "{e:?}"),
        }
    }
    winner.expect("one winner")
}

/// DynamoDB authoritative: of concurrent creates of one policy key, and of one role
/// key, exactly one wins (claimed with the item); deleting frees the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_role_and_policy_keys_stay_unique_under_concurrent_creates() {
    let s = ModeServer::start(StorageMode::Dynamodb).await;
    let create_policy = |name: String| {
        let mut policies = s.policies();
        async move {
            let policy = pb::Policy {
                key: "p_claimed".into(),
                display_name: name,
                allow: vec!["identity.users.read".into()],
                ..Default::default()
            };
            policies
                .create_policy(req(
                    "tenant-a",
                    pb::CreatePolicyRequest {
                        policy: Some(policy),
                    },
                ))
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let made = futures::future::join_all((0..4).map(|i| create_policy(format!("P {i}")))).await;
    let policy = one_winner(made);

    let create_role = |name: String| {
        let mut roles = s.roles();
        async move {
            let role = pb::Role {
                key: "r_claimed".into(),
                display_name: name,
                policy_keys: vec!["p_claimed".into()],
                ..Default::default()
            };
            roles
                .create_role(req("tenant-a", pb::CreateRoleRequest { role: Some(role) }))
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let made = futures::future::join_all((0..4).map(|i| create_role(format!("R {i}")))).await;
    let role = one_winner(made);
    // The same keys in another tenant are another tenant's business.
    let policy_b = pb::Policy {
        key: "p_claimed".into(),
        display_name: "B".into(),
        allow: vec!["identity.users.read".into()],
        ..Default::default()
    };
    s.policies()
        .create_policy(req(
            "tenant-b",
            pb::CreatePolicyRequest {
                policy: Some(policy_b),
            },
        ))
        .await
        .expect("policy keys are unique per tenant only");
    let role_b = pb::Role {
        key: "r_claimed".into(),
        display_name: "B".into(),
        policy_keys: vec!["p_claimed".into()],
        ..Default::default()
    };
    s.roles()
        .create_role(req(
            "tenant-b",
            pb::CreateRoleRequest { role: Some(role_b) },
        ))
        .await
        .expect("role keys are unique per tenant only");

    s.roles()
        .delete_role(req(
            "tenant-a",
            pb::DeleteRoleRequest {
                id: role.id.clone(),
                expected_version: None,
            },
        ))
        .await
        .expect("delete role");
    create_role("Replacement".into())
        .await
        .expect("the role key is free again after the delete");
    let replacement = s
        .roles()
        .get_role_by_key(req(
            "tenant-a",
            pb::GetRoleByKeyRequest {
                key: "r_claimed".into(),
            },
        ))
        .await
        .expect("by key")
        .into_inner();
    s.roles()
        .delete_role(req(
            "tenant-a",
            pb::DeleteRoleRequest {
                id: replacement.id,
                expected_version: None,
            },
        ))
        .await
        .expect("delete the replacement, so the policy is no longer in use");
    s.policies()
        .delete_policy(req(
            "tenant-a",
            pb::DeletePolicyRequest {
                id: policy.id,
                expected_version: None,
            },
        ))
        .await
        .expect("delete policy");
    create_policy("Replacement".into())
        .await
        .expect("the policy key is free again after the delete");
}

/// DynamoDB authoritative: of concurrent registrations with one contact e-mail exactly
/// one wins, as of concurrent updates of two partners onto one new e-mail; the e-mail a
/// partner moved away from is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_partner_emails_stay_unique_under_concurrent_writes() {
    use crate::partners::partner;
    let s = ModeServer::start(StorageMode::Dynamodb).await;
    let client = || pb::partner_service_client::PartnerServiceClient::new(s.channel.clone());
    let register = |email: &'static str| {
        let mut partners = client();
        async move {
            partners
                .register_partner(req(
                    "tenant-a",
                    pb::RegisterPartnerRequest {
                        partner: Some(partner(email)),
                    },
                ))
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let made = futures::future::join_all((0..4).map(|_| register("claimed@acme.example"))).await;
    one_winner(made);

    let a = register("a@acme.example").await.expect("a");
    let b = register("b@acme.example").await.expect("b");
    let move_to = |id: String| {
        let mut partners = client();
        async move {
            partners
                .update_partner(req(
                    "tenant-a",
                    pb::UpdatePartnerRequest {
                        id,
                        partner: Some(pb::Partner {
                            contact_email: "new@acme.example".into(),
                            ..Default::default()
                        }),
                        update_mask: Some(prost_types::FieldMask {
                            paths: vec!["contact_email".into()],
                        }),
                        expected_version: None,
                    },
                ))
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let (ra, rb) = tokio::join!(move_to(a.id.clone()), move_to(b.id.clone()));
    let moved = one_winner(vec![ra, rb]);
    assert_eq!(moved.contact_email, "new@acme.example");
    let freed = if moved.id == a.id {
        "a@acme.example"
    } else {
        "b@acme.example"
    };
    register(freed)
        .await
        .expect("the e-mail a partner moved away from is free again");
    register("new@acme.example")
        .await
        .expect_err("the e-mail moved to is taken");
}

/// DynamoDB authoritative: asset codes are unique per customer. Of concurrent creates
/// of one code in one customer exactly one wins (claimed with the item), another
/// customer may hold the same code, a move into a customer holding a moved code is
/// refused, and a delete frees the code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_asset_codes_stay_unique_per_customer() {
    let s = ModeServer::start(StorageMode::Dynamodb).await;
    let customer = |name: &'static str| {
        let mut customers = s.customers();
        async move {
            customers
                .create_customer(req(
                    "tenant-a",
                    pb::CreateCustomerRequest {
                        customer: Some(pb::Customer {
                            name: name.into(),
                            r#type: pb::CustomerType::Company as i32,
                            ..Default::default()
                        }),
                    },
                ))
                .await
                .unwrap()
                .into_inner()
        }
    };
    let (c1, c2) = (customer("One").await, customer("Two").await);
    let create = |customer_id: String, name: String| {
        let mut assets = s.assets();
        async move {
            assets
                .create_asset(req(
                    "tenant-a",
                    pb::CreateAssetRequest {
                        asset: Some(pb::Asset {
                            customer_id,
                            name,
                            code: Some("BLD-1".into()),
                            r#type: pb::AssetType::Building as i32,
                            ..Default::default()
                        }),
                    },
                ))
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let made =
        futures::future::join_all((0..4).map(|i| create(c1.id.clone(), format!("B{i}")))).await;
    let first = one_winner(made);
    let other = create(c2.id.clone(), "Elsewhere".into())
        .await
        .expect("another customer may hold the same code");

    let moved = s
        .assets()
        .move_asset(req(
            "tenant-a",
            pb::MoveAssetRequest {
                id: other.id.clone(),
                destination: Some(pb::move_asset_request::Destination::ToRoot(true)),
                new_customer_id: Some(c1.id.clone()),
                expected_version: None,
            },
        ))
        .await;
    let e = moved.expect_err("the destination customer holds the code");
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");

    s.assets()
        .delete_asset(req(
            "tenant-a",
            pb::DeleteAssetRequest {
                id: first.id.clone(),
                expected_version: None,
            },
        ))
        .await
        .expect("delete");
    create(c1.id.clone(), "Replacement".into())
        .await
        .expect("the code is free again after the delete");
}

/// DynamoDB authoritative: of concurrent assigns of one (user, role, scope) exactly one
/// wins (claimed with the item); a revoke frees the triple, and so does the expiry of
/// the assignment that holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_one_active_assignment_per_user_role_and_scope() {
    let s = ModeServer::start(StorageMode::Dynamodb).await;
    let policy = pb::Policy {
        key: "p_assign".into(),
        display_name: "P".into(),
        allow: vec!["identity.users.read".into()],
        ..Default::default()
    };
    s.policies()
        .create_policy(req(
            "tenant-a",
            pb::CreatePolicyRequest {
                policy: Some(policy),
            },
        ))
        .await
        .expect("policy");
    let role = pb::Role {
        key: "r_assign".into(),
        display_name: "R".into(),
        policy_keys: vec!["p_assign".into()],
        ..Default::default()
    };
    s.roles()
        .create_role(req("tenant-a", pb::CreateRoleRequest { role: Some(role) }))
        .await
        .expect("role");
    let client =
        || pb::role_assignment_service_client::RoleAssignmentServiceClient::new(s.channel.clone());
    let assign = |expire_time: Option<prost_types::Timestamp>| {
        let mut assignments = client();
        async move {
            assignments
                .assign_role(req(
                    "tenant-a",
                    pb::AssignRoleRequest {
                        user_id: "user-1".into(),
                        role_key: "r_assign".into(),
                        scope: "customer:C1".into(),
                        expire_time,
                        reason: None,
                    },
                ))
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let made = futures::future::join_all((0..4).map(|_| assign(None))).await;
    let first = one_winner(made);

    client()
        .revoke_role_assignment(req(
            "tenant-a",
            pb::RevokeRoleAssignmentRequest { id: first.id },
        ))
        .await
        .expect("revoke");
    // Held again, until an expiry four seconds away (room for moto's stalls before the
    // check that it holds).
    let expiry = std::time::SystemTime::now() + Duration::from_secs(4);
    let soon = expiry.duration_since(std::time::UNIX_EPOCH).unwrap();
    let expiring = prost_types::Timestamp {
        seconds: soon.as_secs() as i64,
        nanos: soon.subsec_nanos() as i32,
    };
    assign(Some(expiring))
        .await
        .expect("the triple is free again after the revoke");
    let e = assign(None).await.expect_err("held by the expiring one");
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    let left = expiry
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(left + Duration::from_millis(500)).await;
    assign(None)
        .await
        .expect("the triple is free again once its holder expired");
}

/// DynamoDB authoritative: a claim left stale by a move (which checks codes but does
/// not claim them) neither blocks the record that now holds the value nor a new
/// asset with a generated code: a change or a delete releases only its own claim,
/// and a stale claim in the way of a create is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_stale_asset_code_claims_block_nothing() {
    let s = ModeServer::start(StorageMode::Dynamodb).await;
    let mut ids = Vec::new();
    for name in ["One", "Two", "Three"] {
        let c = s
            .customers()
            .create_customer(req(
                "tenant-a",
                pb::CreateCustomerRequest {
                    customer: Some(pb::Customer {
                        name: name.into(),
                        r#type: pb::CustomerType::Company as i32,
                        ..Default::default()
                    }),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        ids.push(c.id);
    }
    let (c1, c2, c3) = (ids[0].clone(), ids[1].clone(), ids[2].clone());
    let create = |customer_id: String, name: &'static str, code: Option<&'static str>| {
        let mut assets = s.assets();
        async move {
            assets
                .create_asset(req(
                    "tenant-a",
                    pb::CreateAssetRequest {
                        asset: Some(pb::Asset {
                            customer_id,
                            name: name.into(),
                            code: code.map(str::to_owned),
                            r#type: pb::AssetType::Building as i32,
                            ..Default::default()
                        }),
                    },
                ))
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let to_root_of = |id: String, customer: String| {
        let mut assets = s.assets();
        async move {
            assets
                .move_asset(req(
                    "tenant-a",
                    pb::MoveAssetRequest {
                        id,
                        destination: Some(pb::move_asset_request::Destination::ToRoot(true)),
                        new_customer_id: Some(customer),
                        expected_version: None,
                    },
                ))
                .await
                .map(tonic::Response::into_inner)
        }
    };
    // D leaves its claim on (Two, X) behind; A moves into Two holding X unclaimed.
    let d = create(c2.clone(), "D", Some("X")).await.expect("d");
    let a = create(c1.clone(), "A", Some("X")).await.expect("a");
    to_root_of(d.id.clone(), c3.clone()).await.expect("move d");
    to_root_of(a.id.clone(), c2.clone()).await.expect("move a");
    let recoded = s
        .assets()
        .update_asset(req(
            "tenant-a",
            pb::UpdateAssetRequest {
                id: a.id.clone(),
                asset: Some(pb::Asset {
                    code: Some("Y".into()),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["code".into()],
                }),
                expected_version: None,
            },
        ))
        .await
        .expect("a code change does not need the old value's claim to be its own");
    assert_eq!(recoded.into_inner().code.as_deref(), Some("Y"));
    s.assets()
        .delete_asset(req(
            "tenant-a",
            pb::DeleteAssetRequest {
                id: a.id.clone(),
                expected_version: None,
            },
        ))
        .await
        .expect("delete");
    create(c2.clone(), "Again", Some("X"))
        .await
        .expect("D's stale claim on (Two, X) is dropped");

    // A generated code whose claim went stale with a move is generated again.
    let pump = create(c1.clone(), "Pump", None).await.expect("pump");
    to_root_of(pump.id.clone(), c3.clone())
        .await
        .expect("move pump");
    let again = create(c1.clone(), "Pump", None)
        .await
        .expect("a stale claim on a generated code blocks nothing");
    assert_eq!(again.code, pump.code);
}

/// How races between a dependent's write and its parent's delete ended.
#[derive(Debug, Default)]
struct Outcomes {
    dependent_won: usize,
    delete_won: usize,
    both_won: usize,
}

impl Outcomes {
    /// Tallies races. The loser must say why: the delete that the parent is in use,
    /// the dependent's write that the parent is gone. Both winning leaves the
    /// dependent orphaned.
    fn of<T, U>(
        what: &str,
        races: Vec<(Result<T, tonic::Status>, Result<U, tonic::Status>)>,
    ) -> Self {
        let mut o = Self::default();
        for race in races {
            match race {
                (Ok(_), Err(e)) => {
                    assert_eq!(e.code(), Code::FailedPrecondition, "{what}: {e:?}");
                    o.dependent_won += 1;
                }
                (Err(e), Ok(_)) => {
                    assert!(
                        matches!(e.code(), Code::NotFound | Code::InvalidArgument),
                        "{what}: {e:?}"
                    );
                    o.delete_won += 1;
                }
                (Ok(_), Ok(_)) => o.both_won += 1,
                (Err(a), Err(d)) => panic!("{what}: both lost: {a:?} / {d:?}"),
            }
        }
        o
    }
}

/// Creates an asset with `code` in `customer_id`, under `parent` when given.
async fn new_asset(
    s: &ModeServer,
    tenant: &str,
    customer_id: String,
    parent: Option<String>,
    code: String,
) -> pb::Asset {
    let a = pb::Asset {
        customer_id,
        parent_asset_id: parent,
        name: "A".into(),
        code: Some(code),
        r#type: pb::AssetType::Building as i32,
        ..Default::default()
    };
    let request = req(tenant, pb::CreateAssetRequest { asset: Some(a) });
    s.assets().create_asset(request).await.unwrap().into_inner()
}

/// Moves asset `id` to the root of `customer`'s assets.
async fn move_to_root_of(
    s: &ModeServer,
    tenant: &str,
    id: &str,
    customer: &str,
) -> Result<pb::Asset, tonic::Status> {
    let request = pb::MoveAssetRequest {
        id: id.to_owned(),
        destination: Some(pb::move_asset_request::Destination::ToRoot(true)),
        new_customer_id: Some(customer.to_owned()),
        expected_version: None,
    };
    let moved = s.assets().move_asset(req(tenant, request)).await;
    moved.map(tonic::Response::into_inner)
}

/// Creates a customer with a unique code (generated codes of concurrent creates would
/// contend), under `parent` when given.
async fn new_customer(
    s: &ModeServer,
    tenant: &str,
    parent: Option<String>,
) -> Result<pb::Customer, tonic::Status> {
    let c = pb::Customer {
        name: "C".into(),
        code: Some(format!("C-{}", Uuid::new_v4().simple())),
        r#type: pb::CustomerType::Company as i32,
        parent_customer_id: parent,
        ..Default::default()
    };
    let request = req(tenant, pb::CreateCustomerRequest { customer: Some(c) });
    let made = s.customers().create_customer(request).await;
    made.map(tonic::Response::into_inner)
}

/// DynamoDB authoritative: the "in use" rules hold against concurrent writers. A child
/// customer, a device, a role naming a policy and an assignment of a role each race
/// the delete of what they depend on, over many rounds: never do both succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_in_use_rules_hold_against_a_concurrent_dependent() {
    const ROUNDS: usize = 8;
    let s = &ModeServer::start(StorageMode::Dynamodb).await;
    let t = "tenant-a";
    let customer = |parent| new_customer(s, t, parent);
    let root = &customer(None).await.unwrap();

    let customer_rounds = (0..ROUNDS).map(|_| async {
        let parent = customer(Some(root.id.clone())).await.unwrap();
        let mut customers = s.customers();
        let delete = customers.delete_customer(req(
            t,
            pb::DeleteCustomerRequest {
                id: parent.id.clone(),
                expected_version: None,
            },
        ));
        tokio::join!(customer(Some(parent.id.clone())), delete)
    });
    let device_rounds = (0..ROUNDS).map(|i| async move {
        let asset = s
            .assets()
            .create_asset(req(
                t,
                pb::CreateAssetRequest {
                    asset: Some(pb::Asset {
                        customer_id: root.id.clone(),
                        name: "Room".into(),
                        code: Some(format!("ROOM-{i}")),
                        r#type: pb::AssetType::Room as i32,
                        ..Default::default()
                    }),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        let (mut devices, mut assets) = (s.devices(), s.assets());
        let add = devices.create_device(req(t, new_meter(&asset.id)));
        let delete = assets.delete_asset(req(
            t,
            pb::DeleteAssetRequest {
                id: asset.id.clone(),
                expected_version: None,
            },
        ));
        tokio::join!(add, delete)
    });
    let role = |key: String, policy: String| pb::Role {
        key,
        display_name: "R".into(),
        policy_keys: vec![policy],
        ..Default::default()
    };
    let policy = |key: String| {
        let mut policies = s.policies();
        async move {
            let p = pb::Policy {
                key,
                display_name: "P".into(),
                allow: vec!["identity.users.read".into()],
                ..Default::default()
            };
            let made = policies.create_policy(req(t, pb::CreatePolicyRequest { policy: Some(p) }));
            made.await.unwrap().into_inner()
        }
    };
    let policy_rounds = (0..ROUNDS).map(|i| async move {
        let key = format!("p_race_{i}");
        let policy = policy(key.clone()).await;
        let (mut roles, mut policies) = (s.roles(), s.policies());
        let add = roles.create_role(req(
            t,
            pb::CreateRoleRequest {
                role: Some(role(format!("r_on_{key}"), key)),
            },
        ));
        let delete = policies.delete_policy(req(
            t,
            pb::DeletePolicyRequest {
                id: policy.id,
                expected_version: None,
            },
        ));
        tokio::join!(add, delete)
    });
    policy("p_shared".into()).await;
    let role_rounds = (0..ROUNDS).map(|i| async move {
        let key = format!("r_race_{i}");
        let created = s
            .roles()
            .create_role(req(
                t,
                pb::CreateRoleRequest {
                    role: Some(role(key.clone(), "p_shared".into())),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        let mut assignments =
            pb::role_assignment_service_client::RoleAssignmentServiceClient::new(s.channel.clone());
        let mut roles = s.roles();
        let add = assignments.assign_role(req(
            t,
            pb::AssignRoleRequest {
                user_id: format!("user-{i}"),
                role_key: key,
                scope: "*".into(),
                expire_time: None,
                reason: None,
            },
        ));
        let delete = roles.delete_role(req(
            t,
            pb::DeleteRoleRequest {
                id: created.id,
                expected_version: None,
            },
        ));
        tokio::join!(add, delete)
    });

    let (customers, devices, policies, roles) = tokio::join!(
        futures::future::join_all(customer_rounds),
        futures::future::join_all(device_rounds),
        futures::future::join_all(policy_rounds),
        futures::future::join_all(role_rounds),
    );
    let all = [
        (
            "child customer vs customer delete",
            Outcomes::of("customers", customers),
        ),
        ("device vs asset delete", Outcomes::of("devices", devices)),
        ("role vs policy delete", Outcomes::of("roles", policies)),
        (
            "assignment vs role delete",
            Outcomes::of("assignments", roles),
        ),
    ];
    eprintln!("{all:?}");
    for (what, o) in &all {
        assert_eq!(o.both_won, 0, "{what}: a dependent was orphaned: {all:?}");
    }
}

/// DynamoDB authoritative: a dependent added under a subtree while the subtree moves
/// ends consistent with it. A child customer created under a moving customer subtree
/// has its parent's current path, and a device created on an asset of a subtree moving
/// to another customer has its asset's customer, whichever write lands first. A move
/// that lost the race says so (FAILED_PRECONDITION) and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_a_dependent_added_during_a_move_follows_the_subtree() {
    const ROUNDS: usize = 16;
    let s = &ModeServer::start(StorageMode::Dynamodb).await;
    let t = "tenant-a";
    let customer = |parent| new_customer(s, t, parent);
    let asset = |customer_id, parent, code| new_asset(s, t, customer_id, parent, code);
    let moved_ok = |moved: Result<(), tonic::Status>, what: &str| match moved {
        Ok(()) => 1,
        Err(e) => {
            assert_eq!(e.code(), Code::FailedPrecondition, "{what}: {e:?}");
            0
        }
    };
    let r1 = &customer(None).await.unwrap();
    let r2 = &customer(None).await.unwrap();

    // The dependent starts a little later each round, so that it lands at every
    // point of the move; the subtree is older than the index lag, so that the move
    // does not wait for the index and re-read (which would hide the race).
    let later = |i: usize| tokio::time::sleep(Duration::from_millis(i as u64));
    let settled = || tokio::time::sleep(Duration::from_millis(1200));
    let customer_rounds = (0..ROUNDS).map(|i| async move {
        let p = customer(Some(r1.id.clone())).await.unwrap();
        let x = customer(Some(p.id.clone())).await.unwrap();
        settled().await;
        let mut customers = s.customers();
        let mv = customers.move_customer(req(
            t,
            pb::MoveCustomerRequest {
                id: p.id.clone(),
                destination: Some(pb::move_customer_request::Destination::NewParentCustomerId(
                    r2.id.clone(),
                )),
                expected_version: None,
            },
        ));
        let add = async {
            later(i).await;
            customer(Some(x.id.clone())).await
        };
        let (child, moved) = tokio::join!(add, mv);
        let child = child.expect("a child of a moving subtree is created");
        let get = |id: String| {
            let mut customers = s.customers();
            async move {
                let got = customers.get_customer(req(t, pb::GetCustomerRequest { id }));
                got.await.unwrap().into_inner()
            }
        };
        let (child, x) = (get(child.id).await, get(x.id).await);
        let stale = child.path != format!("{}/{}", x.path, child.id) || child.depth != x.depth + 1;
        (
            moved_ok(moved.map(|_| ()), "customer move"),
            usize::from(stale),
        )
    });
    let asset_rounds = (0..ROUNDS).map(|i| async move {
        let b = asset(r1.id.clone(), None, format!("B-{i}")).await;
        let y = asset(r1.id.clone(), Some(b.id.clone()), format!("Y-{i}")).await;
        settled().await;
        let mut devices = s.devices();
        let mv = move_to_root_of(s, t, &b.id, &r2.id);
        let add = async {
            later(10 * i).await;
            devices.create_device(req(t, new_meter(&y.id))).await
        };
        let (device, moved) = tokio::join!(add, mv);
        let device = device
            .expect("a device of a moving subtree is created")
            .into_inner();
        let device = s
            .devices()
            .get_device(req(t, pb::GetDeviceRequest { id: device.id }))
            .await
            .unwrap()
            .into_inner();
        let y = s
            .assets()
            .get_asset(req(t, pb::GetAssetRequest { id: y.id }))
            .await
            .unwrap()
            .into_inner();
        let stale = device.customer_id != y.customer_id;
        (
            moved_ok(moved.map(|_| ()), "asset move"),
            usize::from(stale),
        )
    });
    let customers = futures::future::join_all(customer_rounds).await;
    let assets = futures::future::join_all(asset_rounds).await;
    let tally = |rounds: &[(usize, usize)]| {
        rounds
            .iter()
            .fold((0, 0), |(m, s), (moved, stale)| (m + moved, s + stale))
    };
    let (customers, assets) = (tally(&customers), tally(&assets));
    eprintln!(
        "(moves through, dependents stale) of {ROUNDS}: customers {customers:?}, assets {assets:?}"
    );
    assert_eq!(customers.1, 0, "child customers left with a stale path");
    assert_eq!(assets.1, 0, "devices left with their asset's old customer");
}

/// DynamoDB authoritative: a subtree larger than one TransactWriteItems (100 items)
/// moves whole, in chunks, each chunk checking (and marking) the destination. A
/// customer with 105 children moves under another root; a building with 102 rooms
/// moves to another customer, rooms and all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_a_subtree_larger_than_one_transaction_moves_whole() {
    use futures::StreamExt;
    const CHILDREN: usize = 105;
    const ROOMS: usize = 102;
    let s = &ModeServer::start(StorageMode::Dynamodb).await;
    let t = "tenant-a";
    let (r1, r2) = (
        new_customer(s, t, None).await.unwrap(),
        new_customer(s, t, None).await.unwrap(),
    );
    let p = new_customer(s, t, Some(r1.id.clone())).await.unwrap();
    futures::stream::iter(0..CHILDREN)
        .map(|_| new_customer(s, t, Some(p.id.clone())))
        .buffer_unordered(8)
        .for_each(|c| async move {
            c.expect("child");
        })
        .await;
    let moved = s
        .customers()
        .move_customer(req(
            t,
            pb::MoveCustomerRequest {
                id: p.id.clone(),
                destination: Some(pb::move_customer_request::Destination::NewParentCustomerId(
                    r2.id.clone(),
                )),
                expected_version: None,
            },
        ))
        .await
        .expect("a large subtree moves")
        .into_inner();
    assert_eq!(moved.path, format!("{}/{}", r2.path, p.id));
    let below = s
        .customers()
        .list_customer_descendants(req(
            t,
            pb::ListCustomerDescendantsRequest {
                id: p.id.clone(),
                max_depth: None,
                page_size: 1000,
                page_token: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .customers;
    assert_eq!(below.len(), CHILDREN);
    for c in &below {
        assert_eq!(
            c.path,
            format!("{}/{}", moved.path, c.id),
            "stale child path"
        );
        assert_eq!(c.depth, moved.depth + 1);
    }

    let asset = |parent, code| new_asset(s, t, r1.id.clone(), parent, code);
    let building = asset(None, "B".into()).await;
    futures::stream::iter(0..ROOMS)
        .map(|i| asset(Some(building.id.clone()), format!("R-{i}")))
        .buffer_unordered(8)
        .for_each(|_| async {})
        .await;
    move_to_root_of(s, t, &building.id, &r2.id)
        .await
        .expect("a large asset subtree moves to another customer");
    let rooms = s
        .assets()
        .list_asset_descendants(req(
            t,
            pb::ListAssetDescendantsRequest {
                id: building.id.clone(),
                max_depth: None,
                page_size: 1000,
                page_token: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .assets;
    assert_eq!(rooms.len(), ROOMS);
    assert!(
        rooms.iter().all(|r| r.customer_id == r2.id),
        "a room kept the old customer"
    );
}

/// DynamoDB authoritative: an asset moving to another customer claims its code there
/// in the transaction that moves it, so a create of the same code in the destination,
/// racing the move, never also succeeds (two assets of one customer with one code).
/// The races must go both ways: the create winning some, the move others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_a_move_and_a_create_never_share_a_code_in_the_destination() {
    // When each round's create starts after its move: 4 ms apart through the move
    // (~50 ms on moto), then ever later, so that on a loaded machine too the last
    // rounds start after the move committed.
    const DELAYS_MS: [u64; 24] = [
        0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 60, 64, 68, 120, 200, 350, 600,
        1000, 1700,
    ];
    const ROUNDS: usize = DELAYS_MS.len();
    let s = &ModeServer::start(StorageMode::Dynamodb).await;
    let t = "tenant-a";
    let r1 = &new_customer(s, t, None).await.unwrap();
    let r2 = &new_customer(s, t, None).await.unwrap();
    let setup = (0..ROUNDS).map(|i| async move {
        let code = format!("SHARED-{i}");
        let b = new_asset(s, t, r1.id.clone(), None, format!("B-{i}")).await;
        new_asset(s, t, r1.id.clone(), Some(b.id.clone()), code.clone()).await;
        (b, code)
    });
    let subtrees = futures::future::join_all(setup).await;
    // Older than the index lag, so that no move waits and re-reads.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // One race at a time, the create starting later each round: from before the
    // move's check of the destination's codes, through its reads and writes, to after
    // it committed.
    let mut outcomes = String::new();
    for (i, (b, code)) in subtrees.into_iter().enumerate() {
        let mv = move_to_root_of(s, t, &b.id, &r2.id);
        let create = async {
            tokio::time::sleep(Duration::from_millis(DELAYS_MS[i])).await;
            let a = pb::Asset {
                customer_id: r2.id.clone(),
                name: "A".into(),
                code: Some(code),
                r#type: pb::AssetType::Building as i32,
                ..Default::default()
            };
            let request = req(t, pb::CreateAssetRequest { asset: Some(a) });
            s.assets().create_asset(request).await
        };
        let (created, moved) = tokio::join!(create, mv);
        outcomes.push(match (created, moved) {
            (Ok(_), Ok(_)) => '2',
            (Ok(_), Err(e)) | (Err(e), Ok(_)) if e.code() != Code::AlreadyExists => {
                panic!("round {i}: the loser: {e:?}")
            }
            (Ok(_), Err(_)) => 'c',
            (Err(_), Ok(_)) => 'm',
            (Err(a), Err(b)) => panic!("round {i}: both lost: {a:?} / {b:?}"),
        });
    }
    // c: the create won, m: the move won, 2: both (a code held twice).
    eprintln!("race outcomes by round: {outcomes}");
    assert!(
        !outcomes.contains('2'),
        "two assets of one customer share a code: {outcomes}"
    );
    assert!(
        outcomes.contains('c') && outcomes.contains('m'),
        "the races did not go both ways: {outcomes}"
    );
}

/// DynamoDB authoritative: legacy data can hold one code twice under a customer (the
/// legacy service never checked). A move of such a subtree to another customer would
/// put the code there twice: it is refused, as PostgreSQL's constraint refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_a_subtree_holding_a_code_twice_does_not_move_to_another_customer() {
    use aws_sdk_dynamodb::types::AttributeValue;
    let s = &ModeServer::start(StorageMode::Dynamodb).await;
    let t = "tenant-a";
    let r1 = new_customer(s, t, None).await.unwrap();
    let r2 = new_customer(s, t, None).await.unwrap();
    let b = new_asset(s, t, r1.id.clone(), None, "TWICE".into()).await;
    // A legacy room under the building with the building's own code.
    let table = s.dynamo.tables().assets.clone();
    let mut room = s
        .dynamo
        .client()
        .get_item()
        .table_name(&table)
        .key("tenantId", AttributeValue::S(t.into()))
        .key("id", AttributeValue::S(b.id.clone()))
        .send()
        .await
        .unwrap()
        .item
        .expect("the building's item");
    let room_id = Uuid::new_v4().to_string();
    let path = format!("{}/{room_id}", b.path);
    for (k, v) in [
        ("id", room_id.clone()),
        ("parentAssetId", b.id.clone()),
        ("path", path),
        ("type", "ROOM".into()),
    ] {
        room.insert(k.into(), AttributeValue::S(v));
    }
    room.insert("depth".into(), AttributeValue::N("1".into()));
    s.dynamo
        .client()
        .put_item()
        .table_name(&table)
        .set_item(Some(room))
        .send()
        .await
        .unwrap();
    let moved = move_to_root_of(s, t, &b.id, &r2.id).await;
    let e = moved.expect_err("two assets with one code moved into one customer");
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    let room = s
        .assets()
        .get_asset(req(t, pb::GetAssetRequest { id: room_id }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(room.customer_id, r1.id, "nothing moved");
}

/// DynamoDB authoritative: GSIs lag their table, so a delete whose parent gained a
/// dependent less than the index settle time ago (`GCDR_DYNAMODB_INDEX_SETTLE_MS`)
/// waits that out before looking for dependents. moto's indexes do not lag, so what
/// is observed here is the wait itself, with the configured time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_a_delete_waits_out_the_index_lag_after_a_new_dependent() {
    const SETTLE: Duration = Duration::from_millis(2500);
    let s = &ModeServer::start_tuned(StorageMode::Dynamodb, &dynamo_url(), |settings| {
        settings.dynamodb.as_mut().expect("dynamodb").index_settle = SETTLE;
    })
    .await;
    let t = "tenant-a";
    let parent = new_customer(s, t, None).await.unwrap();
    new_customer(s, t, Some(parent.id.clone())).await.unwrap();
    let added = std::time::Instant::now();
    let request = pb::DeleteCustomerRequest {
        id: parent.id.clone(),
        expected_version: None,
    };
    let deleted = s.customers().delete_customer(req(t, request)).await;
    let waited = added.elapsed();
    let e = deleted.expect_err("a customer with a child is deleted");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    // The mark was set just before the child's create returned; allow for that.
    assert!(
        waited >= SETTLE - Duration::from_secs(1),
        "the delete looked for dependents after {waited:?}, before the index settled"
    );
}
