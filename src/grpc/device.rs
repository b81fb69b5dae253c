//! `gcdr.v1.DeviceService`.

use tonic::{Request, Response, Status};

use super::convert::{self, device as conv};
use super::ctx;
use super::status::{finish, invalid};
use crate::domain::device::DeviceFilter;
use crate::domain::{AssetId, CustomerId, DeviceId, Violations};
use crate::pb;
use crate::pb::device_service_server::DeviceService;
use crate::storage::Store;

/// Handles DeviceService calls against the store.
pub struct DeviceServiceHandler {
    store: Store,
}

impl DeviceServiceHandler {
    /// A handler over `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

fn device_id(v: &mut Violations, s: &str) -> Option<DeviceId> {
    convert::id(v, "id", s, DeviceId::parse)
}

#[tonic::async_trait]
impl DeviceService for DeviceServiceHandler {
    async fn create_device(
        &self,
        req: Request<pb::CreateDeviceRequest>,
    ) -> Result<Response<pb::Device>, Status> {
        let ctx = ctx(&req)?;
        let new = conv::new_device(req.into_inner()).map_err(invalid)?;
        let created = self.store.devices.create(&ctx, new).await?;
        tracing::info!(device.id = %created.id, "device created");
        Ok(Response::new(created.into()))
    }

    async fn get_device(
        &self,
        req: Request<pb::GetDeviceRequest>,
    ) -> Result<Response<pb::Device>, Status> {
        let ctx = ctx(&req)?;
        let pb::GetDeviceRequest { id } = req.into_inner();
        let mut v = Violations::default();
        let id = device_id(&mut v, &id);
        let id = finish(v, id)?;
        Ok(Response::new(
            self.store.devices.get(&ctx.tenant, id).await?.into(),
        ))
    }

    async fn get_device_by_serial_number(
        &self,
        req: Request<pb::GetDeviceBySerialNumberRequest>,
    ) -> Result<Response<pb::Device>, Status> {
        let ctx = ctx(&req)?;
        let pb::GetDeviceBySerialNumberRequest { serial_number } = req.into_inner();
        let mut v = Violations::default();
        v.required("serial_number", &serial_number, 100);
        if !v.is_empty() {
            return Err(invalid(v));
        }
        Ok(Response::new(
            self.store
                .devices
                .get_by_serial(&ctx.tenant, &serial_number)
                .await?
                .into(),
        ))
    }

    async fn update_device(
        &self,
        req: Request<pb::UpdateDeviceRequest>,
    ) -> Result<Response<pb::Device>, Status> {
        let ctx = ctx(&req)?;
        let (id, patch, expected) = conv::device_patch(req.into_inner()).map_err(invalid)?;
        Ok(Response::new(
            self.store
                .devices
                .update(&ctx, id, patch, expected)
                .await?
                .into(),
        ))
    }

    async fn delete_device(
        &self,
        req: Request<pb::DeleteDeviceRequest>,
    ) -> Result<Response<()>, Status> {
        let ctx = ctx(&req)?;
        let pb::DeleteDeviceRequest {
            id,
            expected_version,
        } = req.into_inner();
        let mut v = Violations::default();
        let id = device_id(&mut v, &id);
        let expected = convert::expected_version(&mut v, expected_version);
        let id = finish(v, id)?;
        self.store.devices.delete(&ctx.tenant, id, expected).await?;
        tracing::info!(device.id = %id, "device deleted");
        Ok(Response::new(()))
    }

    async fn list_devices(
        &self,
        req: Request<pb::ListDevicesRequest>,
    ) -> Result<Response<pb::ListDevicesResponse>, Status> {
        let ctx = ctx(&req)?;
        let pb::ListDevicesRequest {
            page_size,
            page_token,
            asset_id,
            customer_id,
            r#type,
            status,
            connectivity_status,
        } = req.into_inner();
        let mut v = Violations::default();
        let filter = DeviceFilter {
            asset_id: convert::opt_id(&mut v, "asset_id", asset_id.as_deref(), AssetId::parse),
            customer_id: convert::opt_id(
                &mut v,
                "customer_id",
                customer_id.as_deref(),
                CustomerId::parse,
            ),
            kind: convert::filter_enum(&mut v, "type", r#type, conv::device_type),
            status: convert::filter_enum(&mut v, "status", status, convert::customer::status),
            connectivity: convert::filter_enum(
                &mut v,
                "connectivity_status",
                connectivity_status,
                conv::connectivity,
            ),
        };
        let scope = format!("devices:{filter:?}");
        let page = convert::page_request(&mut v, page_size, &page_token, &scope);
        if !v.is_empty() {
            return Err(invalid(v));
        }
        let result = self.store.devices.list(&ctx.tenant, &filter, &page).await?;
        Ok(Response::new(pb::ListDevicesResponse {
            devices: result.items.into_iter().map(Into::into).collect(),
            next_page_token: convert::next_page_token(result.next_after, &scope),
        }))
    }

    async fn move_device(
        &self,
        req: Request<pb::MoveDeviceRequest>,
    ) -> Result<Response<pb::Device>, Status> {
        let ctx = ctx(&req)?;
        let pb::MoveDeviceRequest {
            id,
            new_asset_id,
            expected_version,
        } = req.into_inner();
        let mut v = Violations::default();
        let id = device_id(&mut v, &id);
        let asset = convert::id(&mut v, "new_asset_id", &new_asset_id, AssetId::parse);
        let expected = convert::expected_version(&mut v, expected_version);
        let (id, asset) = finish(v, id.zip(asset))?;
        let moved = self
            .store
            .devices
            .move_to(&ctx, id, asset, expected)
            .await?;
        tracing::info!(device.id = %id, asset.id = %asset, "device moved");
        Ok(Response::new(moved.into()))
    }

    async fn update_device_connectivity(
        &self,
        req: Request<pb::UpdateDeviceConnectivityRequest>,
    ) -> Result<Response<pb::Device>, Status> {
        let ctx = ctx(&req)?;
        let pb::UpdateDeviceConnectivityRequest {
            id,
            connectivity_status,
        } = req.into_inner();
        let mut v = Violations::default();
        let id = device_id(&mut v, &id);
        let status = convert::required_enum(
            &mut v,
            "connectivity_status",
            connectivity_status,
            conv::connectivity,
        );
        let (id, status) = finish(v, id.zip(status))?;
        Ok(Response::new(
            self.store
                .devices
                .set_connectivity(&ctx, id, status)
                .await?
                .into(),
        ))
    }
}
