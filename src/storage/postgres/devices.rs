//! Devices in PostgreSQL: row type, conversions and the `DeviceStore` impl.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::hierarchy::{self, Tree};
use super::json::{JsonText, from_json, to_json};
use super::schema::assets::dsl as a;
use super::schema::devices::{self, dsl};
use super::tx;
use super::{PgStore, bad_cursor, check_version};
use crate::domain::device::{
    ConnectivityStatus, Device, DeviceFilter, DevicePatch, DeviceType, NewDevice,
};
use crate::domain::{
    AssetId, Ctx, CustomerId, DeviceId, EntityStatus, Page, PageRequest, TenantId,
};
use crate::storage::{DeviceStore, StoreError, StoreResult};

/// One row of `devices`.
#[derive(Clone, Debug, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = devices, primary_key(tenant_id, id), treat_none_as_null = true)]
// None binds NULL (not DEFAULT) on insert, so a multi-row insert has one statement
// shape (one prepared statement) whatever its rows leave unset.
#[diesel(treat_none_as_default_value = false)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub(super) struct DeviceRow {
    pub tenant_id: String,
    pub id: Uuid,
    pub asset_id: Uuid,
    pub customer_id: Uuid,
    pub name: String,
    pub display_name: String,
    pub label: Option<String>,
    pub type_: String,
    pub description: Option<String>,
    pub serial_number: String,
    pub external_id: Option<String>,
    pub specs: JsonText,
    pub credentials: Option<JsonText>,
    pub telemetry_config: JsonText,
    pub tags: JsonText,
    pub metadata: JsonText,
    pub attributes: JsonText,
    pub connectivity_status: String,
    pub last_connected_at: Option<DateTime<Utc>>,
    pub last_disconnected_at: Option<DateTime<Utc>>,
    pub status: String,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub created_by: String,
    pub updated_by: Option<String>,
}

impl DeviceRow {
    pub(super) fn from_domain(d: &Device) -> StoreResult<Self> {
        Ok(Self {
            tenant_id: d.tenant_id.as_str().to_owned(),
            id: d.id.0,
            asset_id: d.asset_id.0,
            customer_id: d.customer_id.0,
            name: d.name.clone(),
            display_name: d.display_name.clone(),
            label: d.label.clone(),
            type_: d.kind.as_str().to_owned(),
            description: d.description.clone(),
            serial_number: d.serial_number.clone(),
            external_id: d.external_id.clone(),
            specs: to_json(&d.specs)?,
            credentials: d.credentials.as_ref().map(to_json).transpose()?,
            telemetry_config: to_json(&d.telemetry_config)?,
            tags: to_json(&d.tags)?,
            metadata: to_json(&d.metadata)?,
            attributes: to_json(&d.attributes)?,
            connectivity_status: d.connectivity.as_str().to_owned(),
            last_connected_at: d.last_connected_at,
            last_disconnected_at: d.last_disconnected_at,
            status: d.status.as_str().to_owned(),
            version: d.version,
            created_at: d.created_at,
            updated_at: d.updated_at,
            created_by: d.created_by.clone(),
            updated_by: d.updated_by.clone(),
        })
    }

    pub(super) fn into_domain(self) -> StoreResult<Device> {
        let bad = |what: &str, v: &str| {
            StoreError::Internal(format!("devices row has bad {what} {v:?}").into())
        };
        Ok(Device {
            tenant_id: TenantId::parse_owned(self.tenant_id).map_err(|t| bad("tenant_id", &t))?,
            id: DeviceId(self.id),
            asset_id: AssetId(self.asset_id),
            customer_id: CustomerId(self.customer_id),
            name: self.name,
            display_name: self.display_name,
            label: self.label,
            kind: DeviceType::parse(&self.type_).ok_or_else(|| bad("type", &self.type_))?,
            description: self.description,
            serial_number: self.serial_number,
            external_id: self.external_id,
            specs: from_json("devices", "specs", &self.specs)?,
            credentials: self
                .credentials
                .as_ref()
                .map(|j| from_json("devices", "credentials", j))
                .transpose()?,
            telemetry_config: from_json("devices", "telemetry_config", &self.telemetry_config)?,
            tags: from_json("devices", "tags", &self.tags)?,
            metadata: from_json("devices", "metadata", &self.metadata)?,
            attributes: from_json("devices", "attributes", &self.attributes)?,
            connectivity: ConnectivityStatus::parse(&self.connectivity_status)
                .ok_or_else(|| bad("connectivity_status", &self.connectivity_status))?,
            last_connected_at: self.last_connected_at,
            last_disconnected_at: self.last_disconnected_at,
            status: EntityStatus::parse(&self.status).ok_or_else(|| bad("status", &self.status))?,
            version: self.version,
            created_at: self.created_at,
            updated_at: self.updated_at,
            created_by: self.created_by,
            updated_by: self.updated_by,
        })
    }
}

const NOT_FOUND: StoreError = StoreError::NotFound { entity: "device" };

async fn find(
    conn: &mut AsyncPgConnection,
    tenant: &TenantId,
    id: DeviceId,
    lock: bool,
) -> StoreResult<DeviceRow> {
    let q = dsl::devices
        .find((tenant.as_str(), id.0))
        .select(DeviceRow::as_select());
    let row = if lock {
        q.for_update().first(conn).await
    } else {
        q.first(conn).await
    };
    row.optional()?.ok_or(NOT_FOUND)
}

/// The customer of an asset, under the shared asset-hierarchy lock (so a concurrent
/// asset move cannot change it before this transaction commits).
async fn asset_customer(
    conn: &mut AsyncPgConnection,
    tenant: &TenantId,
    asset: AssetId,
    entity: &'static str,
) -> StoreResult<Uuid> {
    hierarchy::lock(conn, Tree::Assets, tenant, false).await?;
    a::assets
        .find((tenant.as_str(), asset.0))
        .select(a::customer_id)
        .first(conn)
        .await
        .optional()?
        .ok_or(StoreError::NotFound { entity })
}

async fn write(conn: &mut AsyncPgConnection, device: &Device) -> StoreResult<Device> {
    diesel::update(dsl::devices.find((device.tenant_id.as_str(), device.id.0)))
        .set(&DeviceRow::from_domain(device)?)
        .returning(DeviceRow::as_returning())
        .get_result(conn)
        .await?
        .into_domain()
}

#[async_trait]
impl DeviceStore for PgStore {
    async fn create(&self, ctx: &Ctx, new: NewDevice) -> StoreResult<Device> {
        self.timed("devices.create", async {
            let mut conn = self.conn().await?;
            tx(&mut conn, async |conn| {
                let customer = asset_customer(conn, &ctx.tenant, new.asset_id, "asset").await?;
                let now = Utc::now();
                let device = Device {
                    tenant_id: ctx.tenant.clone(),
                    id: new.id,
                    asset_id: new.asset_id,
                    customer_id: CustomerId(customer),
                    name: new.name,
                    display_name: new.display_name,
                    label: new.label,
                    kind: new.kind,
                    description: new.description,
                    serial_number: new.serial_number,
                    external_id: new.external_id,
                    specs: new.specs,
                    credentials: new.credentials,
                    telemetry_config: new.telemetry_config,
                    tags: new.tags,
                    metadata: new.metadata,
                    attributes: new.attributes,
                    connectivity: ConnectivityStatus::Unknown,
                    last_connected_at: None,
                    last_disconnected_at: None,
                    status: EntityStatus::Active,
                    version: 1,
                    created_at: now,
                    updated_at: now,
                    created_by: ctx.actor.as_str().to_owned(),
                    updated_by: None,
                };
                diesel::insert_into(dsl::devices)
                    .values(DeviceRow::from_domain(&device)?)
                    .returning(DeviceRow::as_returning())
                    .get_result(conn)
                    .await?
                    .into_domain()
            })
            .await
        })
        .await
    }

    async fn get(&self, tenant: &TenantId, id: DeviceId) -> StoreResult<Device> {
        self.timed("devices.get", async {
            self.reads
                .devices
                .one(tenant.as_str(), id.0)
                .await?
                .ok_or(NOT_FOUND)?
                .into_domain()
        })
        .await
    }

    async fn get_by_serial(&self, tenant: &TenantId, serial: &str) -> StoreResult<Device> {
        self.timed("devices.get_by_serial", async {
            let mut conn = self.conn().await?;
            dsl::devices
                .filter(dsl::tenant_id.eq(tenant.as_str()))
                .filter(dsl::serial_number.eq(serial))
                .select(DeviceRow::as_select())
                .first(&mut conn)
                .await
                .optional()?
                .ok_or(NOT_FOUND)?
                .into_domain()
        })
        .await
    }

    async fn update(
        &self,
        ctx: &Ctx,
        id: DeviceId,
        patch: DevicePatch,
        expected: Option<i64>,
    ) -> StoreResult<Device> {
        self.timed("devices.update", async {
            let mut conn = self.conn().await?;
            tx(&mut conn, async |conn| {
                let mut device = find(conn, &ctx.tenant, id, true).await?.into_domain()?;
                check_version(expected, device.version)?;
                patch.apply(&mut device, &ctx.actor, Utc::now());
                write(conn, &device).await
            })
            .await
        })
        .await
    }

    async fn delete(
        &self,
        tenant: &TenantId,
        id: DeviceId,
        expected: Option<i64>,
    ) -> StoreResult<()> {
        self.timed("devices.delete", async {
            let mut conn = self.conn().await?;
            tx(&mut conn, async |conn| {
                let row = find(conn, tenant, id, true).await?;
                check_version(expected, row.version)?;
                diesel::delete(dsl::devices.find((tenant.as_str(), id.0)))
                    .execute(conn)
                    .await?;
                Ok(())
            })
            .await
        })
        .await
    }

    async fn list(
        &self,
        tenant: &TenantId,
        filter: &DeviceFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<Device>> {
        self.timed("devices.list", async {
            let mut conn = self.conn().await?;
            let mut q = dsl::devices
                .filter(dsl::tenant_id.eq(tenant.as_str()))
                .into_boxed();
            if let Some(asset) = filter.asset_id {
                q = q.filter(dsl::asset_id.eq(asset.0));
            }
            if let Some(customer) = filter.customer_id {
                q = q.filter(dsl::customer_id.eq(customer.0));
            }
            if let Some(kind) = filter.kind {
                q = q.filter(dsl::type_.eq(kind.as_str()));
            }
            if let Some(status) = filter.status {
                q = q.filter(dsl::status.eq(status.as_str()));
            }
            if let Some(c) = filter.connectivity {
                q = q.filter(dsl::connectivity_status.eq(c.as_str()));
            }
            if let Some(after) = &page.after {
                q = q.filter(dsl::id.gt(Uuid::parse_str(after).map_err(|_| bad_cursor())?));
            }
            let rows = q
                .order(dsl::id)
                .limit(page.size as i64 + 1)
                .select(DeviceRow::as_select())
                .load(&mut conn)
                .await?;
            let devices = rows
                .into_iter()
                .map(DeviceRow::into_domain)
                .collect::<StoreResult<Vec<_>>>()?;
            Ok(Page::from_overfetch(devices, page.size, |d| {
                d.id.to_string()
            }))
        })
        .await
    }

    async fn move_to(
        &self,
        ctx: &Ctx,
        id: DeviceId,
        asset: AssetId,
        expected: Option<i64>,
    ) -> StoreResult<Device> {
        self.timed("devices.move", async {
            let mut conn = self.conn().await?;
            tx(&mut conn, async |conn| {
                let mut device = find(conn, &ctx.tenant, id, true).await?.into_domain()?;
                check_version(expected, device.version)?;
                let customer = asset_customer(conn, &ctx.tenant, asset, "new asset").await?;
                if device.asset_id == asset {
                    return Err(StoreError::FailedPrecondition {
                        reason: "ALREADY_ON_ASSET",
                        message: "the device is already on this asset".into(),
                    });
                }
                device.asset_id = asset;
                device.customer_id = CustomerId(customer);
                device.version += 1;
                device.updated_at = Utc::now();
                device.updated_by = Some(ctx.actor.as_str().to_owned());
                write(conn, &device).await
            })
            .await
        })
        .await
    }

    async fn set_connectivity(
        &self,
        ctx: &Ctx,
        id: DeviceId,
        status: ConnectivityStatus,
    ) -> StoreResult<Device> {
        self.timed("devices.set_connectivity", async {
            let mut conn = self.conn().await?;
            tx(&mut conn, async |conn| {
                let mut device = find(conn, &ctx.tenant, id, true).await?.into_domain()?;
                let now = Utc::now();
                match status {
                    ConnectivityStatus::Online => device.last_connected_at = Some(now),
                    ConnectivityStatus::Offline => device.last_disconnected_at = Some(now),
                    ConnectivityStatus::Unknown => {}
                }
                device.connectivity = status;
                device.version += 1;
                device.updated_at = now;
                device.updated_by = Some(ctx.actor.as_str().to_owned());
                write(conn, &device).await
            })
            .await
        })
        .await
    }
}
