//! Devices in the legacy `gcdr-devices-<stage>` table (contract §1.3, §3.3).
//!
//! A device's `customerId` is a denormalized copy of its asset's customer: create and
//! move copy it (conditional on the asset still having that customer), and an asset
//! move to another customer rewrites it (see `assets.rs`).
//!
//! Credentials keep this service's representation (`{type, accessTokenSha256?,
//! certificateFingerprint?, username?}`): a legacy plaintext `accessToken` is read as
//! its SHA-256, and the next write of the device stores only the hash.

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::assets::{keeps_changing, not_found_as, put_new_item};
use super::dependents::touch_item;
use super::{Claim, DynamoStore, Expect, Item, ItemReader, ItemWriter, Overwrite, Query, s};
use super::{bad_cursor, check_version};
use crate::domain::device::{
    ConnectivityStatus, Credentials, Device, DeviceFilter, DevicePatch, DeviceSpecs, DeviceType,
    NewDevice, TelemetryConfig, sha256_hex,
};
use crate::domain::{
    AssetId, Ctx, CustomerId, DeviceId, EntityStatus, JsonObject, Page, PageRequest, TenantId,
};
use crate::storage::{DeviceStore, StoreError, StoreResult};

/// Optional attributes an overwrite removes when the record has none.
const OPTIONAL: &[&str] = &[
    "label",
    "description",
    "externalId",
    "credentials",
    "lastConnectedAt",
    "lastDisconnectedAt",
    "updatedBy",
];

const NOT_FOUND: StoreError = StoreError::NotFound { entity: "device" };

/// How often a read-check-write is retried when another writer got in between.
const ATTEMPTS: usize = 5;

/// The legacy item of a device; unset optionals are omitted (never NULL).
pub(crate) fn to_item(d: &Device) -> StoreResult<Item> {
    Ok(ItemWriter::new(d.tenant_id.as_str(), &d.id.to_string())
        .s("assetId", d.asset_id.to_string())
        .s("customerId", d.customer_id.to_string())
        .s("name", &d.name)
        .s("displayName", &d.display_name)
        .opt_s("label", d.label.as_deref())
        .s("type", d.kind.as_str())
        .opt_s("description", d.description.as_deref())
        .s("serialNumber", &d.serial_number)
        .opt_s("externalId", d.external_id.as_deref())
        .json("specs", &d.specs)?
        .s("connectivityStatus", d.connectivity.as_str())
        .opt_ts("lastConnectedAt", d.last_connected_at)
        .opt_ts("lastDisconnectedAt", d.last_disconnected_at)
        .opt_json("credentials", d.credentials.as_ref())?
        .json("telemetryConfig", &d.telemetry_config)?
        .list("tags", &d.tags)
        .json("metadata", &d.metadata)?
        .json("attributes", &d.attributes)?
        .s("status", d.status.as_str())
        .n("version", d.version)
        .ts("createdAt", d.created_at)
        .ts("updatedAt", d.updated_at)
        .s("createdBy", &d.created_by)
        .opt_s("updatedBy", d.updated_by.as_deref())
        .finish())
}

/// A device from a legacy item, as legacy data really is: optional attributes absent
/// or NULL, `displayName` defaulting to `name`, `specs` without `serialNumber` taking
/// the device's, `telemetryConfig` absent or partial taking the defaults, credentials
/// with a plaintext `accessToken` (kept as its hash only), timestamps at any
/// sub-second precision.
pub(crate) fn from_item(item: &Item) -> StoreResult<Device> {
    let r = ItemReader::new("devices", item);
    let tenant = r.s("tenantId")?;
    let id = r.s("id")?;
    let asset = r.s("assetId")?;
    let customer = r.s("customerId")?;
    let name = r.s("name")?;
    let kind = r.s("type")?;
    let serial = r.s("serialNumber")?;
    let connectivity = r
        .opt_s("connectivityStatus")?
        .unwrap_or_else(|| "UNKNOWN".into());
    let status = r.opt_s("status")?.unwrap_or_else(|| "ACTIVE".into());
    let created_at = r.ts("createdAt")?;

    let mut specs = map(&r, "specs")?.unwrap_or_default();
    specs
        .entry("serialNumber")
        .or_insert_with(|| Value::String(serial.clone()));
    let mut telemetry = map(&r, "telemetryConfig")?.unwrap_or_default();
    telemetry
        .entry("reportingInterval")
        .or_insert_with(|| TelemetryConfig::default().reporting_interval.into());
    let credentials = match map(&r, "credentials")? {
        // HEAD wrote `{}` for "no credentials".
        None => None,
        Some(c) if c.is_empty() => None,
        Some(mut c) => {
            if let Some(Value::String(token)) = c.remove("accessToken") {
                c.entry("accessTokenSha256")
                    .or_insert_with(|| Value::String(sha256_hex(&token)));
            }
            Some(shaped::<Credentials>(&r, "credentials", c)?)
        }
    };

    Ok(Device {
        tenant_id: TenantId::parse(&tenant).ok_or_else(|| r.bad("tenantId", "is not valid"))?,
        id: DeviceId::parse(&id).ok_or_else(|| r.bad("id", "is not a UUID"))?,
        asset_id: AssetId::parse(&asset).ok_or_else(|| r.bad("assetId", "is not a UUID"))?,
        customer_id: CustomerId::parse(&customer)
            .ok_or_else(|| r.bad("customerId", "is not a UUID"))?,
        display_name: r.opt_s("displayName")?.unwrap_or_else(|| name.clone()),
        name,
        label: r.opt_s("label")?,
        kind: DeviceType::parse(&kind).ok_or_else(|| r.bad("type", "is not a device type"))?,
        description: r.opt_s("description")?,
        serial_number: serial,
        external_id: r.opt_s("externalId")?,
        specs: shaped::<DeviceSpecs>(&r, "specs", specs)?,
        credentials,
        telemetry_config: shaped::<TelemetryConfig>(&r, "telemetryConfig", telemetry)?,
        tags: r.list("tags")?,
        metadata: r.object("metadata")?,
        attributes: r.object("attributes")?,
        connectivity: ConnectivityStatus::parse(&connectivity)
            .ok_or_else(|| r.bad("connectivityStatus", "is not a connectivity status"))?,
        last_connected_at: r.opt_ts("lastConnectedAt")?,
        last_disconnected_at: r.opt_ts("lastDisconnectedAt")?,
        status: EntityStatus::parse(&status).ok_or_else(|| r.bad("status", "is not a status"))?,
        version: r.opt_i64("version")?.unwrap_or(1),
        created_at,
        updated_at: r.opt_ts("updatedAt")?.unwrap_or(created_at),
        created_by: r.opt_s("createdBy")?.unwrap_or_else(|| "system".into()),
        updated_by: r.opt_s("updatedBy")?,
    })
}

/// A map attribute without its NULL entries (absent or NULL: `None`).
fn map(r: &ItemReader<'_>, k: &str) -> StoreResult<Option<JsonObject>> {
    match r.json(k)? {
        None => Ok(None),
        Some(Value::Object(mut m)) => {
            m.retain(|_, v| !v.is_null());
            Ok(Some(m))
        }
        Some(_) => Err(r.bad(k, "is not a map")),
    }
}

/// A map deserialized into its domain type.
fn shaped<T: DeserializeOwned>(r: &ItemReader<'_>, k: &str, m: JsonObject) -> StoreResult<T> {
    serde_json::from_value(Value::Object(m))
        .map_err(|e| r.bad(k, &format!("has an unexpected shape: {e}")))
}

/// The overwrite that stores `d` if the stored item still meets `expect`.
pub(crate) fn overwrite(d: &Device, expect: Expect) -> StoreResult<Overwrite> {
    Ok(Overwrite::new(to_item(d)?, OPTIONAL, expect))
}

fn serial_taken() -> StoreError {
    StoreError::AlreadyExists {
        reason: "DEVICE_SERIAL_EXISTS",
        field: "device.serial_number",
    }
}

/// The check that asset `asset` still exists with customer `customer`.
fn asset_customer_check(
    store: &DynamoStore,
    tenant: &TenantId,
    asset: AssetId,
    customer: CustomerId,
) -> StoreResult<aws_sdk_dynamodb::types::TransactWriteItem> {
    touch_item(
        &store.tables.assets,
        tenant.as_str(),
        &asset.to_string(),
        &[("customerId", s(customer.to_string()))],
    )
}

impl DynamoStore {
    async fn find_device(&self, tenant: &TenantId, id: DeviceId) -> StoreResult<Device> {
        let table = &self.tables.devices;
        match self
            .get_item(table, tenant.as_str(), &id.to_string())
            .await?
        {
            Some(item) => from_item(&item),
            None => Err(NOT_FOUND),
        }
    }

    /// The devices holding `serial`, in id order. gsi-serial is KEYS_ONLY: each id is
    /// re-read (consistently), so a just-deleted device does not count.
    async fn devices_with_serial(
        &self,
        tenant: &TenantId,
        serial: &str,
    ) -> StoreResult<Vec<Device>> {
        let q = Query::index_eq(
            &self.tables.devices,
            "gsi-serial",
            tenant.as_str(),
            "serialNumber",
            serial,
        );
        let mut ids: Vec<DeviceId> = self
            .query(&q, usize::MAX)
            .await?
            .iter()
            .map(|i| {
                let r = ItemReader::new("devices", i);
                let id = r.s("id")?;
                DeviceId::parse(&id).ok_or_else(|| r.bad("id", "is not a UUID"))
            })
            .collect::<StoreResult<_>>()?;
        ids.sort();
        ids.dedup();
        let mut found = Vec::new();
        for id in ids {
            match self.find_device(tenant, id).await {
                Ok(d) if d.serial_number == serial => found.push(d),
                Ok(_) | Err(StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(found)
    }

    /// The claim of `serial` in tenant `t` by device `owner`.
    fn serial_claim<'a>(&'a self, t: &'a TenantId, serial: &'a str, owner: &'a str) -> Claim<'a> {
        let guarded: super::Guarded = (
            "device-serial",
            self.tables.devices.as_str(),
            &["serialNumber"],
        );
        Claim::new(&self.tables, t.as_str(), guarded, serial, owner)
    }

    /// Read, change, write conditional on the version read; retried when another
    /// write got in between.
    async fn change_device(
        &self,
        ctx: &Ctx,
        id: DeviceId,
        expected: Option<i64>,
        change: impl Fn(&mut Device),
    ) -> StoreResult<Device> {
        for _ in 0..ATTEMPTS {
            let mut device = self.find_device(&ctx.tenant, id).await?;
            check_version(expected, device.version)?;
            let read_version = device.version;
            change(&mut device);
            let w = overwrite(&device, Expect::Version(read_version))?;
            if self.overwrite(&self.tables.devices, w).await? {
                return Ok(device);
            }
        }
        Err(keeps_changing("device"))
    }
}

#[async_trait]
impl DeviceStore for DynamoStore {
    /// The device takes its asset's customer; the put commits only together with a
    /// check that the asset still has that customer.
    async fn create(&self, ctx: &Ctx, new: NewDevice) -> StoreResult<Device> {
        self.timed("devices.create", async {
            for _ in 0..ATTEMPTS {
                let asset = self
                    .find_asset(&ctx.tenant, new.asset_id)
                    .await
                    .map_err(not_found_as("asset"))?;
                // Serials are unique per tenant: checked through gsi-serial (legacy
                // items, re-reading each hit) and claimed in the unique-keys table in
                // the same transaction as the put, so two concurrent creates of one
                // serial cannot both succeed.
                if !self
                    .devices_with_serial(&ctx.tenant, &new.serial_number)
                    .await?
                    .is_empty()
                {
                    return Err(serial_taken());
                }
                let new = new.clone();
                let now = super::item::now();
                let device = Device {
                    tenant_id: ctx.tenant.clone(),
                    id: new.id,
                    asset_id: new.asset_id,
                    customer_id: asset.customer_id,
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
                let sid = device.id.to_string();
                let claim = self.serial_claim(&ctx.tenant, &device.serial_number, &sid);
                let items = vec![
                    asset_customer_check(self, &ctx.tenant, asset.id, asset.customer_id)?,
                    put_new_item(&self.tables.devices, to_item(&device)?)?,
                    claim.take()?,
                ];
                match self.transact_once(items).await? {
                    None => return Ok(device),
                    Some(1) => {
                        return Err(StoreError::AlreadyExists {
                            reason: "DEVICE_EXISTS",
                            field: "device.id",
                        });
                    }
                    // Claimed by another device: taken, unless that claim was stale.
                    Some(2) if self.claim_taken(&claim).await? => return Err(serial_taken()),
                    // The asset moved or went away: read it again.
                    Some(_) => {}
                }
            }
            Err(keeps_changing("asset"))
        })
        .await
    }

    async fn get(&self, tenant: &TenantId, id: DeviceId) -> StoreResult<Device> {
        self.timed("devices.get", self.find_device(tenant, id))
            .await
    }

    async fn get_by_serial(&self, tenant: &TenantId, serial: &str) -> StoreResult<Device> {
        self.timed("devices.get_by_serial", async {
            self.devices_with_serial(tenant, serial)
                .await?
                .into_iter()
                .next()
                .ok_or(NOT_FOUND)
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
        self.timed(
            "devices.update",
            self.change_device(ctx, id, expected, |d| {
                patch.clone().apply(d, &ctx.actor, super::item::now())
            }),
        )
        .await
    }

    async fn delete(
        &self,
        tenant: &TenantId,
        id: DeviceId,
        expected: Option<i64>,
    ) -> StoreResult<()> {
        self.timed("devices.delete", async {
            for _ in 0..ATTEMPTS {
                let device = self.find_device(tenant, id).await?;
                check_version(expected, device.version)?;
                // The delete and the release of its serial claim, together.
                let sid = id.to_string();
                let mut items = vec![Self::delete_versioned_item(
                    &self.tables.devices,
                    tenant.as_str(),
                    &sid,
                    device.version,
                )?];
                let claim = self.serial_claim(tenant, &device.serial_number, &sid);
                items.extend(self.releases(&claim).await?);
                if self.transact(items).await?.is_none() {
                    return Ok(());
                }
            }
            Err(keeps_changing("device"))
        })
        .await
    }

    /// In id order, the page token the last id. With an asset, that asset's devices
    /// are read through gsi-asset (the index orders by asset only) and paged in
    /// memory; otherwise the tenant's partition is read in id order with the filters.
    async fn list(
        &self,
        tenant: &TenantId,
        filter: &DeviceFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<Device>> {
        self.timed("devices.list", async {
            let after = page
                .after
                .as_deref()
                .map(|a| DeviceId::parse(a).ok_or_else(bad_cursor))
                .transpose()?;
            let table = &self.tables.devices;
            let t = tenant.as_str();
            let mut q = match filter.asset_id {
                Some(asset) => {
                    Query::index_eq(table, "gsi-asset", t, "assetId", &asset.to_string())
                }
                None => Query::tenant(table, t),
            };
            let customer = filter.customer_id.map(|c| c.to_string());
            q.filter_eq("customerId", customer.as_deref());
            q.filter_eq("type", filter.kind.map(DeviceType::as_str));
            q.filter_eq("status", filter.status.map(EntityStatus::as_str));
            q.filter_eq(
                "connectivityStatus",
                filter.connectivity.map(ConnectivityStatus::as_str),
            );
            let rows: Vec<Device> = match filter.asset_id {
                Some(_) => {
                    let mut all: Vec<Device> = self
                        .query(&q, usize::MAX)
                        .await?
                        .iter()
                        .map(from_item)
                        .collect::<StoreResult<_>>()?;
                    all.sort_by_key(|d| d.id);
                    if let Some(after) = after {
                        all.retain(|d| d.id > after);
                    }
                    all.truncate(page.size + 1);
                    all
                }
                None => {
                    if let Some(after) = after {
                        q.start = Some(super::key(t, &after.to_string()));
                    }
                    self.query(&q, page.size + 1)
                        .await?
                        .iter()
                        .map(from_item)
                        .collect::<StoreResult<_>>()?
                }
            };
            Ok(Page::from_overfetch(rows, page.size, |d| d.id.to_string()))
        })
        .await
    }

    /// The device takes the new asset's customer; the write commits only together with
    /// a check that the asset still has that customer. Bumps the version (legacy did
    /// not), as PostgreSQL does.
    async fn move_to(
        &self,
        ctx: &Ctx,
        id: DeviceId,
        asset: AssetId,
        expected: Option<i64>,
    ) -> StoreResult<Device> {
        self.timed("devices.move", async {
            for _ in 0..ATTEMPTS {
                let mut device = self.find_device(&ctx.tenant, id).await?;
                check_version(expected, device.version)?;
                let target = self
                    .find_asset(&ctx.tenant, asset)
                    .await
                    .map_err(not_found_as("new asset"))?;
                if device.asset_id == asset {
                    return Err(StoreError::FailedPrecondition {
                        reason: "ALREADY_ON_ASSET",
                        message: "the device is already on this asset".into(),
                    });
                }
                let read_version = device.version;
                device.asset_id = asset;
                device.customer_id = target.customer_id;
                device.version += 1;
                device.updated_at = super::item::now();
                device.updated_by = Some(ctx.actor.as_str().to_owned());
                let items = vec![
                    asset_customer_check(self, &ctx.tenant, asset, target.customer_id)?,
                    overwrite(&device, Expect::Version(read_version))?
                        .transact_item(&self.tables.devices)?,
                ];
                if self.transact_once(items).await?.is_none() {
                    return Ok(device);
                }
            }
            Err(keeps_changing("device"))
        })
        .await
    }

    async fn set_connectivity(
        &self,
        ctx: &Ctx,
        id: DeviceId,
        status: ConnectivityStatus,
    ) -> StoreResult<Device> {
        self.timed(
            "devices.set_connectivity",
            self.change_device(ctx, id, None, |device| {
                let now = super::item::now();
                match status {
                    ConnectivityStatus::Online => device.last_connected_at = Some(now),
                    ConnectivityStatus::Offline => device.last_disconnected_at = Some(now),
                    ConnectivityStatus::Unknown => {}
                }
                device.connectivity = status;
                device.version += 1;
                device.updated_at = now;
                device.updated_by = Some(ctx.actor.as_str().to_owned());
            }),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use aws_sdk_dynamodb::types::AttributeValue;
    use chrono::{DateTime, Utc};

    use super::*;

    const TENANT: &str = "tenant-default";
    const CUSTOMER: &str = "33333333-3333-4333-8333-333333333333";
    const ASSET: &str = "aaaaaaaa-0000-4000-8000-000000000001";
    const DEVICE: &str = "11110001-0001-4001-8001-000000000001";

    fn null() -> AttributeValue {
        AttributeValue::Null(true)
    }

    /// A legacy-shaped device item: no milliseconds, optionals NULL, plaintext token,
    /// `specs` without a serial, no `telemetryConfig`, no `connectivityStatus`.
    fn legacy() -> ItemWriter {
        ItemWriter::new(TENANT, DEVICE)
            .s("assetId", ASSET)
            .s("customerId", CUSTOMER)
            .s("name", "Temp sensor")
            .s("type", "SENSOR")
            .s("serialNumber", "SN-001")
            .attr("label", null())
            .attr("description", null())
            .attr("externalId", null())
            .attr("lastConnectedAt", null())
            .attr("lastDisconnectedAt", null())
            .attr("updatedBy", null())
            .attr(
                "specs",
                AttributeValue::M(HashMap::from([
                    ("manufacturer".to_owned(), s("Acme")),
                    ("model".to_owned(), null()),
                    ("protocol".to_owned(), s("MQTT")),
                ])),
            )
            .attr(
                "credentials",
                AttributeValue::M(HashMap::from([
                    ("type".to_owned(), s("ACCESS_TOKEN")),
                    ("accessToken".to_owned(), s("plain-secret")),
                ])),
            )
            .attr("tags", AttributeValue::L(vec![]))
            .attr("metadata", AttributeValue::M(HashMap::new()))
            .attr("attributes", AttributeValue::M(HashMap::new()))
            .s("status", "ACTIVE")
            .n("version", 2)
            .s("createdAt", "2026-03-01T00:00:00Z")
            .s("updatedAt", "2026-03-01T00:00:00Z")
            .s("createdBy", "system")
    }

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-03-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn assert_no_null(item: &Item) {
        for (k, v) in item {
            assert!(!matches!(v, AttributeValue::Null(_)), "{k} written as NULL");
        }
    }

    #[test]
    fn a_legacy_device_with_null_optionals_reads_leniently() {
        let d = from_item(&legacy().finish()).unwrap();
        assert_eq!(d.id.to_string(), DEVICE);
        assert_eq!(d.asset_id.to_string(), ASSET);
        assert_eq!(d.customer_id.to_string(), CUSTOMER);
        assert_eq!(d.display_name, "Temp sensor");
        assert_eq!(d.kind, DeviceType::Sensor);
        assert_eq!(d.label, None);
        assert_eq!(d.description, None);
        assert_eq!(d.external_id, None);
        assert_eq!(d.last_connected_at, None);
        assert_eq!(d.updated_by, None);
        assert_eq!(d.connectivity, ConnectivityStatus::Unknown);
        assert_eq!(d.specs.serial_number, "SN-001");
        assert_eq!(d.specs.manufacturer.as_deref(), Some("Acme"));
        assert_eq!(d.specs.model, None);
        assert_eq!(d.telemetry_config, TelemetryConfig::default());
        let c = d.credentials.as_ref().unwrap();
        assert_eq!(c.kind, "ACCESS_TOKEN");
        assert_eq!(
            c.access_token_sha256.as_deref(),
            Some(sha256_hex("plain-secret").as_str())
        );
        assert_eq!(d.version, 2);
        assert_eq!(d.created_at, t0());
        assert_eq!(d.updated_at, t0());
    }

    #[test]
    fn a_legacy_device_writes_back_without_null_or_plaintext() {
        let d = from_item(&legacy().finish()).unwrap();
        let back = to_item(&d).unwrap();
        assert_no_null(&back);
        for k in [
            "label",
            "description",
            "externalId",
            "lastConnectedAt",
            "lastDisconnectedAt",
            "updatedBy",
        ] {
            assert!(!back.contains_key(k), "{k} written");
        }
        let Some(AttributeValue::M(creds)) = back.get("credentials") else {
            panic!("credentials not a map");
        };
        assert!(!creds.contains_key("accessToken"));
        assert_eq!(
            creds.get("accessTokenSha256"),
            Some(&s(sha256_hex("plain-secret")))
        );
        assert_eq!(back["createdAt"], s("2026-03-01T00:00:00.000Z"));
        assert_eq!(back["connectivityStatus"], s("UNKNOWN"));
        assert_eq!(from_item(&back).unwrap(), d);

        let w = overwrite(&d, Expect::Version(2)).unwrap();
        assert!(
            w.values
                .values()
                .all(|v| !matches!(v, AttributeValue::Null(_)))
        );
        assert!(w.names.values().any(|v| v == "externalId"));
    }

    #[test]
    fn absent_or_empty_credentials_and_partial_telemetry_read_as_defaults() {
        let item = legacy()
            .attr("credentials", AttributeValue::M(HashMap::new()))
            .attr(
                "telemetryConfig",
                AttributeValue::M(HashMap::from([(
                    "telemetryKeys".to_owned(),
                    AttributeValue::L(vec![s("temperature")]),
                )])),
            )
            .s("connectivityStatus", "ONLINE")
            .s("lastConnectedAt", "2026-03-01T00:00:00Z")
            .finish();
        let d = from_item(&item).unwrap();
        assert_eq!(d.credentials, None);
        assert_eq!(d.telemetry_config.reporting_interval, 60);
        assert_eq!(d.telemetry_config.telemetry_keys, vec!["temperature"]);
        assert_eq!(d.connectivity, ConnectivityStatus::Online);
        assert_eq!(d.last_connected_at, Some(t0()));
        let back = to_item(&d).unwrap();
        assert_no_null(&back);
        assert!(!back.contains_key("credentials"));
        assert_eq!(back["lastConnectedAt"], s("2026-03-01T00:00:00.000Z"));
    }
}
