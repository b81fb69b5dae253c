//! Test harness: a fresh PostgreSQL database per test (cloned from a migrated
//! template), the real gRPC server on 127.0.0.1:0, typed clients, and a TCP proxy that
//! can cut the database off to test outages.
//!
//! PostgreSQL comes from `GCDR_TEST_PG_URL` (default `postgres://postgres@127.0.0.1:5432`,
//! the server `.ci/run` starts). A missing server fails the test with a clear message.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use gcdr_data::pb;
use gcdr_data::pb::asset_service_client::AssetServiceClient;
use gcdr_data::pb::customer_service_client::CustomerServiceClient;
use gcdr_data::pb::device_service_client::DeviceServiceClient;
use gcdr_data::storage::Store;
use gcdr_data::storage::postgres::{PgStore, PoolConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, OnceCell, oneshot};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// Base URL of the test PostgreSQL server (no database).
pub fn pg_base() -> String {
    std::env::var("GCDR_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

static TEMPLATE: OnceCell<String> = OnceCell::const_new();
static CLONE_LOCK: Mutex<()> = Mutex::const_new(());

async fn admin() -> AsyncPgConnection {
    let url = format!("{}/postgres", pg_base());
    AsyncPgConnection::establish(&url)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot reach the test PostgreSQL at {url}: {e}\n\
             start it (`bash .ci/run` does) or point GCDR_TEST_PG_URL at one"
            )
        })
}

/// The migrated template database of this test process.
async fn template() -> &'static str {
    TEMPLATE
        .get_or_init(|| async {
            let name = format!("gcdr_it_tmpl_{}", std::process::id());
            let mut conn = admin().await;
            drop_stale_databases(&mut conn).await;
            diesel::sql_query(format!("DROP DATABASE IF EXISTS {name}"))
                .execute(&mut conn)
                .await
                .unwrap();
            diesel::sql_query(format!("CREATE DATABASE {name}"))
                .execute(&mut conn)
                .await
                .unwrap();
            gcdr_data::storage::postgres::migrate(&format!("{}/{name}", pg_base()))
                .await
                .expect("migrate template");
            name
        })
        .await
}

/// Drops databases left by earlier test processes that are no longer running.
async fn drop_stale_databases(conn: &mut AsyncPgConnection) {
    #[derive(diesel::QueryableByName)]
    struct Db {
        #[diesel(sql_type = diesel::sql_types::Text)]
        datname: String,
    }
    let dbs: Vec<Db> =
        diesel::sql_query("SELECT datname FROM pg_database WHERE datname LIKE 'gcdr_it_%'")
            .load(conn)
            .await
            .unwrap_or_default();
    for db in dbs {
        let pid = db
            .datname
            .rsplit('_')
            .next()
            .and_then(|p| p.parse::<u32>().ok());
        let alive = pid.is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            let _ = diesel::sql_query(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                db.datname
            ))
            .execute(conn)
            .await;
        }
    }
}

/// A fresh, migrated database; returns its URL.
/// Logs of the servers the tests run in-process, shown with a failing test's output
/// (`RUST_LOG`, default warn).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .try_init();
}

pub async fn fresh_database() -> String {
    let template = template().await;
    let name = format!(
        "gcdr_it_{}_{}",
        uuid::Uuid::new_v4().simple(),
        std::process::id()
    );
    let _guard = CLONE_LOCK.lock().await;
    let mut conn = admin().await;
    diesel::sql_query(format!("CREATE DATABASE {name} TEMPLATE {template}"))
        .execute(&mut conn)
        .await
        .unwrap();
    format!("{}/{name}", pg_base())
}

/// A running server on its own database.
pub struct TestServer {
    pub db_url: String,
    pub channel: Channel,
    shutdown: Option<oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    /// A server on a fresh database.
    pub async fn start() -> Self {
        let db_url = fresh_database().await;
        Self::start_on(db_url.clone(), db_url).await
    }

    /// A server whose store connects to `store_url` (e.g. through a proxy).
    pub async fn start_on(db_url: String, store_url: String) -> Self {
        init_tracing();
        let pool = PoolConfig {
            acquire_timeout: Duration::from_secs(2),
            ..PoolConfig::default()
        };
        let store = Store::postgres(PgStore::connect(&store_url, &pool).await.unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(gcdr_data::grpc::serve(
            listener,
            store,
            None,
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
            db_url,
            channel,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn customers(&self) -> CustomerServiceClient<Channel> {
        CustomerServiceClient::new(self.channel.clone())
    }

    pub fn assets(&self) -> AssetServiceClient<Channel> {
        AssetServiceClient::new(self.channel.clone())
    }

    pub fn devices(&self) -> DeviceServiceClient<Channel> {
        DeviceServiceClient::new(self.channel.clone())
    }

    /// Begins graceful shutdown.
    pub fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// A direct connection to the server's database.
    pub async fn db(&self) -> AsyncPgConnection {
        AsyncPgConnection::establish(&self.db_url).await.unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A request carrying tenant (and acting user) metadata.
pub fn req<T>(tenant: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("x-tenant-id", tenant.parse().unwrap());
    r.metadata_mut()
        .insert("x-user-id", "user-test".parse().unwrap());
    r
}

/// Asserts INVALID_ARGUMENT whose BadRequest names `field`.
#[track_caller]
pub fn assert_invalid(result: Result<impl std::fmt::Debug, Status>, field: &str) {
    use tonic_types::StatusExt;
    let status = result.expect_err("expected INVALID_ARGUMENT");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let fields: Vec<String> = status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default();
    assert!(
        fields.iter().any(|f| f == field),
        "expected a violation on {field}, got {fields:?} ({status:?})"
    );
    let info = status.get_details_error_info().expect("ErrorInfo detail");
    assert_eq!(info.reason, "INVALID_ARGUMENT");
}

/// Asserts a code and an ErrorInfo reason.
#[track_caller]
pub fn assert_code(result: Result<impl std::fmt::Debug, Status>, code: Code, reason: &str) {
    use tonic_types::StatusExt;
    let status = result.expect_err(&format!("expected {code:?}"));
    assert_eq!(status.code(), code, "{status:?}");
    let info = status.get_details_error_info().expect("ErrorInfo detail");
    assert_eq!(info.reason, reason, "{status:?}");
    assert_eq!(info.domain, "gcdr.v1");
}

/// A customer message with the required fields.
pub fn customer(name: &str, parent: Option<&str>) -> pb::Customer {
    pb::Customer {
        name: name.into(),
        r#type: pb::CustomerType::Company as i32,
        parent_customer_id: parent.map(str::to_owned),
        ..Default::default()
    }
}

/// Creates a customer and returns it.
pub async fn create_customer(
    s: &TestServer,
    tenant: &str,
    name: &str,
    parent: Option<&str>,
) -> pb::Customer {
    s.customers()
        .create_customer(req(
            tenant,
            pb::CreateCustomerRequest {
                customer: Some(customer(name, parent)),
            },
        ))
        .await
        .unwrap()
        .into_inner()
}

/// Creates an asset and returns it.
pub async fn create_asset(
    s: &TestServer,
    tenant: &str,
    customer: &str,
    name: &str,
    parent: Option<&str>,
) -> pb::Asset {
    let asset = pb::Asset {
        customer_id: customer.into(),
        parent_asset_id: parent.map(str::to_owned),
        name: name.into(),
        r#type: pb::AssetType::Room as i32,
        ..Default::default()
    };
    s.assets()
        .create_asset(req(tenant, pb::CreateAssetRequest { asset: Some(asset) }))
        .await
        .unwrap()
        .into_inner()
}

/// Creates a device and returns it.
pub async fn create_device(s: &TestServer, tenant: &str, asset: &str, serial: &str) -> pb::Device {
    let device = pb::Device {
        asset_id: asset.into(),
        name: format!("Sensor {serial}"),
        r#type: pb::DeviceType::Sensor as i32,
        serial_number: serial.into(),
        ..Default::default()
    };
    s.devices()
        .create_device(req(
            tenant,
            pb::CreateDeviceRequest {
                device: Some(device),
            },
        ))
        .await
        .unwrap()
        .into_inner()
}

/// A loopback TCP proxy to PostgreSQL that can be switched off (closing every
/// connection and refusing new ones) and on again.
pub struct Proxy {
    pub port: u16,
    up: Arc<AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    pub async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let conns = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (up2, conns2) = (up.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !AtomicBool::load(&up2, Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection closed
                }
                let target = target.clone();
                let h = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns2.lock().unwrap().push(h);
            }
        });
        Self { port, up, conns }
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        if !up {
            for h in self.conns.lock().unwrap().drain(..) {
                h.abort();
            }
        }
    }
}

/// host:port of the test PostgreSQL server.
pub fn pg_host_port() -> String {
    let base = pg_base();
    let after_at = base.rsplit('@').next().unwrap_or(&base);
    after_at.trim_start_matches("postgres://").to_owned()
}
