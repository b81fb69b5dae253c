//! The server around the services: health that tracks the database, reflection for
//! grpcurl, and shutdown.

use std::time::Duration;

use gcdr_data::pb;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::harness::*;

async fn health(s: &TestServer, service: &str) -> ServingStatus {
    let r = HealthClient::new(s.channel.clone())
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health check answers");
    ServingStatus::try_from(r.into_inner().status).unwrap()
}

async fn wait_for(s: &TestServer, want: ServingStatus) {
    for _ in 0..100 {
        let mut all = health(s, "").await == want;
        for name in gcdr_data::grpc::SERVICE_NAMES {
            all &= health(s, name).await == want;
        }
        if all {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("health never became {want:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_not_serving_while_postgres_is_unreachable_and_recovers_by_itself() {
    let db_url = fresh_database().await;
    let proxy = Proxy::start(pg_host_port()).await;
    let db_name = db_url.rsplit('/').next().unwrap();
    let user = pg_base()
        .trim_start_matches("postgres://")
        .split('@')
        .next()
        .unwrap()
        .to_owned();
    let via_proxy = format!("postgres://{user}@127.0.0.1:{}/{db_name}", proxy.port);
    let s = TestServer::start_on(db_url, via_proxy).await;
    wait_for(&s, ServingStatus::Serving).await;
    create_customer(&s, "t", "before", None).await;

    proxy.set_up(false);
    wait_for(&s, ServingStatus::NotServing).await;
    let r = s
        .customers()
        .list_customers(req("t", pb::ListCustomersRequest::default()))
        .await;
    let status = r.expect_err("no database, no answer");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");

    proxy.set_up(true);
    wait_for(&s, ServingStatus::Serving).await;
    let list = s
        .customers()
        .list_customers(req("t", pb::ListCustomersRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        list.customers.len(),
        1,
        "the acknowledged write survived the outage"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_v1_and_v1alpha_list_every_service() {
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    };
    let s = TestServer::start().await;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(s.channel.clone())
        .server_reflection_info(tokio_stream_once(request))
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("{response:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "gcdr.v1.CustomerService",
        "gcdr.v1.AssetService",
        "gcdr.v1.DeviceService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }

    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as AlphaRequest;
    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest as AlphaReq,
        server_reflection_client::ServerReflectionClient as Alpha,
    };
    let request = AlphaReq {
        host: String::new(),
        message_request: Some(AlphaRequest::ListServices(String::new())),
    };
    let mut stream = Alpha::new(s.channel.clone())
        .server_reflection_info(tokio_stream_once(request))
        .await
        .unwrap()
        .into_inner();
    assert!(
        stream.message().await.unwrap().is_some(),
        "v1alpha answers too"
    );
}

fn tokio_stream_once<T: Send + 'static>(
    item: T,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::iter([item])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_reports_not_serving_and_stops_the_server_cleanly() {
    let mut s = TestServer::start().await;
    wait_for(&s, ServingStatus::Serving).await;
    s.stop();
    let task = s.task.take().unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("server stops promptly");
    result.unwrap().expect("clean exit");
}

/// The certificate Debian's PostgreSQL serves (CN and SAN `localhost`).
const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgssl_connects_over_verified_tls_and_refuses_an_untrusted_server() {
    use diesel_async::RunQueryDsl;
    use gcdr_data::storage::postgres::{PgStore, PoolConfig, TlsSettings, establish};
    assert!(
        std::path::Path::new(SNAKEOIL).exists(),
        "{SNAKEOIL} is missing: the test PostgreSQL must serve TLS with Debian's snakeoil certificate (ssl = on)"
    );
    let db_url = fresh_database().await;
    let tls_url = db_url.replace("@127.0.0.1:", "@localhost:");
    let tls = TlsSettings::new(Some(std::path::Path::new(SNAKEOIL))).unwrap();

    #[derive(diesel::QueryableByName)]
    struct Ssl {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        ssl: bool,
    }
    let mut conn = establish(&tls_url, Some(&tls))
        .await
        .expect("TLS connection");
    let row: Vec<Ssl> =
        diesel::sql_query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .load(&mut conn)
            .await
            .unwrap();
    assert!(row[0].ssl, "the session is not encrypted");

    // The whole server over TLS.
    let pool = PoolConfig {
        tls: Some(tls),
        ..PoolConfig::default()
    };
    let store =
        gcdr_data::storage::Store::postgres(PgStore::connect(&tls_url, &pool).await.unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(gcdr_data::grpc::serve(
        listener,
        store,
        None,
        Duration::from_millis(100),
        std::future::pending(),
    ));
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut customers = gcdr_data::pb::customer_service_client::CustomerServiceClient::new(channel);
    let created = customers
        .create_customer(req(
            "t",
            pb::CreateCustomerRequest {
                customer: Some(customer("over tls", None)),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let got = customers
        .get_customer(req("t", pb::GetCustomerRequest { id: created.id }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.name, "over tls");

    // Trusting only the public roots, the self-signed server is refused.
    let public = TlsSettings::new(None).unwrap();
    assert!(
        establish(&tls_url, Some(&public)).await.is_err(),
        "an untrusted certificate was accepted"
    );
    // And the name is checked: the certificate is for localhost, not 127.0.0.1.
    let by_ip = TlsSettings::new(Some(std::path::Path::new(SNAKEOIL))).unwrap();
    assert!(
        establish(&db_url, Some(&by_ip)).await.is_err(),
        "a certificate for another name was accepted"
    );
}
