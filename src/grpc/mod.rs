//! The gRPC surface: one file per proto service, conversions in `convert/`, the error
//! mapping in `status.rs`, and `serve()`, which wires services, health, reflection
//! and graceful shutdown together.

pub mod admin;
pub mod asset;
pub mod assignment;
pub mod authorization;
pub mod convert;
pub mod customer;
pub mod device;
pub mod partner;
pub mod policy;
pub mod role;
pub mod status;
mod tree;

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Status};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::domain::{Actor, Ctx, TenantId};
use crate::pb;
use crate::storage::Store;

/// Names of the services reported in health, besides the server as a whole ("").
pub const SERVICE_NAMES: &[&str] = &[
    "gcdr.v1.CustomerService",
    "gcdr.v1.AssetService",
    "gcdr.v1.DeviceService",
    "gcdr.v1.PolicyService",
    "gcdr.v1.RoleService",
    "gcdr.v1.RoleAssignmentService",
    "gcdr.v1.AuthorizationService",
    "gcdr.v1.PartnerService",
];

/// Reads the tenant (`x-tenant-id`, required) and actor (`x-user-id`, default
/// `system`) from request metadata.
pub fn ctx<T>(req: &Request<T>) -> Result<Ctx, Status> {
    let md = req.metadata();
    let tenant = match md.get("x-tenant-id").map(|v| v.to_str()) {
        None => {
            return Err(status::invalid_field(
                "x-tenant-id",
                "request metadata x-tenant-id is required",
            ));
        }
        Some(Ok(s)) => TenantId::parse(s).ok_or_else(|| {
            status::invalid_field(
                "x-tenant-id",
                "must be 1..128 characters of letters, digits, '.', '_', ':' or '-'",
            )
        })?,
        Some(Err(_)) => return Err(status::invalid_field("x-tenant-id", "must be ASCII")),
    };
    let actor = match md.get("x-user-id").map(|v| v.to_str()) {
        None => Actor::system(),
        Some(Ok(s)) => Actor::parse(s).ok_or_else(|| {
            status::invalid_field(
                "x-user-id",
                "must be 1..255 characters without control characters",
            )
        })?,
        Some(Err(_)) => return Err(status::invalid_field("x-user-id", "must be ASCII")),
    };
    Ok(Ctx { tenant, actor })
}

/// Serves every gRPC service on `listener` until `shutdown` resolves; then reports
/// NOT_SERVING, stops accepting and lets in-flight calls finish.
pub async fn serve(
    listener: TcpListener,
    store: Store,
    admin: Option<admin::AdminState>,
    health_interval: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    // NOT_SERVING until the first probe of the store succeeds; each backend's entry
    // exists from the start (UNKNOWN until its first probe, which can take a probe
    // timeout when the store is down), so a check of it never answers NOT_FOUND.
    set_all(&reporter, ServingStatus::NotServing).await;
    for (name, _) in &store.probes {
        reporter
            .set_service_status(*name, ServingStatus::Unknown)
            .await;
    }
    let monitor = tokio::spawn(watch_health(
        reporter.clone(),
        store.clone(),
        health_interval,
    ));

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        // google.rpc error details, so grpcurl can print ErrorInfo and BadRequest.
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let shutdown_reporter = reporter.clone();
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: reporting NOT_SERVING, draining in-flight calls");
        set_all(&shutdown_reporter, ServingStatus::NotServing).await;
    };

    let result = tonic::transport::Server::builder()
        .trace_fn(|req| tracing::info_span!("grpc", rpc.method = %req.uri().path()))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(pb::customer_service_server::CustomerServiceServer::new(
            customer::CustomerServiceHandler::new(store.clone()),
        ))
        .add_service(pb::asset_service_server::AssetServiceServer::new(
            asset::AssetServiceHandler::new(store.clone()),
        ))
        .add_service(pb::device_service_server::DeviceServiceServer::new(
            device::DeviceServiceHandler::new(store.clone()),
        ))
        .add_service(pb::policy_service_server::PolicyServiceServer::new(
            policy::PolicyServiceHandler::new(store.clone()),
        ))
        .add_service(pb::role_service_server::RoleServiceServer::new(
            role::RoleServiceHandler::new(store.clone()),
        ))
        .add_service(
            pb::role_assignment_service_server::RoleAssignmentServiceServer::new(
                assignment::RoleAssignmentServiceHandler::new(store.clone()),
            ),
        )
        .add_service(
            pb::authorization_service_server::AuthorizationServiceServer::new(
                authorization::AuthorizationServiceHandler::new(store.clone()),
            ),
        )
        .add_service(pb::partner_service_server::PartnerServiceServer::new(
            partner::PartnerServiceHandler::new(store),
        ))
        .add_optional_service(admin.map(|a| {
            pb::storage_admin_service_server::StorageAdminServiceServer::new(
                admin::StorageAdminHandler::new(a),
            )
        }))
        // Without TCP_NODELAY small responses wait for delayed ACKs (~40 ms tails).
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), signal)
        .await;
    monitor.abort();
    Ok(result?)
}

async fn set_all(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for name in SERVICE_NAMES {
        reporter.set_service_status(*name, status).await;
    }
}

/// Probes the authoritative store every `interval` and reports SERVING only while it
/// answers; recovers by itself when the store comes back. Each backend also has its
/// own entry (`gcdr.storage.postgres`, `gcdr.storage.dynamodb`), which never affects
/// the others.
async fn watch_health(reporter: HealthReporter, store: Store, interval: Duration) {
    let mut last = None;
    let mut last_probe = vec![None; store.probes.len()];
    loop {
        for (i, (name, probe)) in store.probes.iter().enumerate() {
            let ok = matches!(
                tokio::time::timeout(interval.max(Duration::from_secs(1)), probe.ping()).await,
                Ok(Ok(()))
            );
            let status = if ok {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            if last_probe[i] != Some(status) {
                tracing::info!(store = *name, ok, "store health changed");
                reporter.set_service_status(*name, status).await;
                last_probe[i] = Some(status);
            }
        }
        let ok = matches!(
            tokio::time::timeout(interval.max(Duration::from_secs(1)), store.health.ping()).await,
            Ok(Ok(()))
        );
        let status = if ok {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if last != Some(status) {
            if ok {
                tracing::info!("storage reachable: SERVING");
            } else {
                tracing::warn!("storage unreachable: NOT_SERVING");
            }
            set_all(&reporter, status).await;
            last = Some(status);
        }
        tokio::time::sleep(interval).await;
    }
}
