//! Devices: installed on an asset, belonging to that asset's customer.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::customer::set;
use super::{
    Actor, AssetId, CustomerId, DeviceId, EntityStatus, JsonObject, TenantId, string_enum,
};

string_enum! {
    /// Kind of device.
    DeviceType {
        Sensor = "SENSOR", Actuator = "ACTUATOR", Gateway = "GATEWAY", Controller = "CONTROLLER",
        Meter = "METER", Camera = "CAMERA", Other = "OTHER",
    }
}

string_enum! {
    /// Whether a device is reachable.
    ConnectivityStatus { Online = "ONLINE", Offline = "OFFLINE", Unknown = "UNKNOWN" }
}

string_enum! {
    /// Communication protocol.
    DeviceProtocol {
        Mqtt = "MQTT", Http = "HTTP", Modbus = "MODBUS", Bacnet = "BACNET", Lorawan = "LORAWAN",
        Zigbee = "ZIGBEE", Other = "OTHER",
    }
}

string_enum! {
    /// Kind of credentials.
    CredentialsType { AccessToken = "ACCESS_TOKEN", X509Certificate = "X509_CERTIFICATE", MqttBasic = "MQTT_BASIC" }
}

/// Hardware data; stored as the legacy `specs` map.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSpecs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware_version: Option<String>,
    pub serial_number: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_protocol"
    )]
    pub protocol: Option<DeviceProtocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_sheet: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installation_date: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warranty_expiration: Option<DateTime<Utc>>,
}

mod opt_protocol {
    use super::DeviceProtocol;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<DeviceProtocol>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(p) => s.serialize_str(p.as_str()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<DeviceProtocol>, D::Error> {
        // Unknown protocols in stored data read as absent rather than failing the row.
        Ok(Option::<String>::deserialize(d)?.and_then(|s| DeviceProtocol::parse(&s)))
    }
}

/// Stored credentials. The access token is kept only as its SHA-256 (hex): it is a
/// secret and is never returned.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Credentials {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_fingerprint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

/// SHA-256 of a secret, lowercase hex.
pub fn sha256_hex(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a device reports; stored as the legacy `telemetryConfig` map.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TelemetryConfig {
    pub reporting_interval: i32,
    #[serde(default)]
    pub telemetry_keys: Vec<String>,
    #[serde(default)]
    pub attribute_keys: Vec<String>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            reporting_interval: 60,
            telemetry_keys: Vec::new(),
            attribute_keys: Vec::new(),
        }
    }
}

/// A stored device.
#[derive(Clone, Debug, PartialEq)]
pub struct Device {
    pub tenant_id: TenantId,
    pub id: DeviceId,
    pub asset_id: AssetId,
    pub customer_id: CustomerId,
    pub name: String,
    pub display_name: String,
    pub label: Option<String>,
    pub kind: DeviceType,
    pub description: Option<String>,
    pub serial_number: String,
    pub external_id: Option<String>,
    pub specs: DeviceSpecs,
    pub credentials: Option<Credentials>,
    pub telemetry_config: TelemetryConfig,
    pub tags: Vec<String>,
    pub metadata: JsonObject,
    pub attributes: JsonObject,
    pub connectivity: ConnectivityStatus,
    pub last_connected_at: Option<DateTime<Utc>>,
    pub last_disconnected_at: Option<DateTime<Utc>>,
    pub status: EntityStatus,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub created_by: String,
    pub updated_by: Option<String>,
}

/// A validated create request.
#[derive(Clone, Debug)]
pub struct NewDevice {
    pub id: DeviceId,
    pub asset_id: AssetId,
    pub name: String,
    pub display_name: String,
    pub label: Option<String>,
    pub kind: DeviceType,
    pub description: Option<String>,
    pub serial_number: String,
    pub external_id: Option<String>,
    pub specs: DeviceSpecs,
    pub credentials: Option<Credentials>,
    pub telemetry_config: TelemetryConfig,
    pub tags: Vec<String>,
    pub metadata: JsonObject,
    pub attributes: JsonObject,
}

/// A validated update.
#[derive(Clone, Debug, Default)]
pub struct DevicePatch {
    pub name: Option<String>,
    pub display_name: Option<String>,
    pub label: Option<Option<String>>,
    pub kind: Option<DeviceType>,
    pub description: Option<Option<String>>,
    pub external_id: Option<Option<String>>,
    pub specs: Option<DeviceSpecs>,
    pub credentials: Option<Option<Credentials>>,
    pub telemetry_config: Option<TelemetryConfig>,
    pub tags: Option<Vec<String>>,
    pub metadata: Option<JsonObject>,
    pub attributes: Option<JsonObject>,
    pub status: Option<EntityStatus>,
}

impl DevicePatch {
    /// Applies the patch, bumping version and audit fields.
    pub fn apply(self, d: &mut Device, actor: &Actor, now: DateTime<Utc>) {
        let Self {
            name,
            display_name,
            label,
            kind,
            description,
            external_id,
            specs,
            credentials,
            telemetry_config,
            tags,
            metadata,
            attributes,
            status,
        } = self;
        set(&mut d.name, name);
        set(&mut d.display_name, display_name);
        set(&mut d.label, label);
        set(&mut d.kind, kind);
        set(&mut d.description, description);
        set(&mut d.external_id, external_id);
        set(&mut d.specs, specs);
        set(&mut d.credentials, credentials);
        set(&mut d.telemetry_config, telemetry_config);
        set(&mut d.tags, tags);
        set(&mut d.metadata, metadata);
        set(&mut d.attributes, attributes);
        set(&mut d.status, status);
        d.version += 1;
        d.updated_at = now;
        d.updated_by = Some(actor.as_str().to_owned());
    }
}

/// Filters of ListDevices.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceFilter {
    pub asset_id: Option<AssetId>,
    pub customer_id: Option<CustomerId>,
    pub kind: Option<DeviceType>,
    pub status: Option<EntityStatus>,
    pub connectivity: Option<ConnectivityStatus>,
}
