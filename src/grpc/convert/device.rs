//! Device messages <-> domain devices. Credentials secrets are hashed on the way in
//! and never leave the service.

use super::customer::{status, status_pb};
use super::{
    check_json_size, check_tags, from_timestamp, json_to_struct, struct_to_json, timestamp,
};
use crate::domain::device::{
    ConnectivityStatus, Credentials, CredentialsType, Device, DevicePatch, DeviceProtocol,
    DeviceSpecs, DeviceType, NewDevice, TelemetryConfig, sha256_hex,
};
use crate::domain::{AssetId, DeviceId, Violations};
use crate::pb;

/// Proto -> domain device type.
pub fn device_type(t: pb::DeviceType) -> Option<DeviceType> {
    Some(match t {
        pb::DeviceType::Unspecified => return None,
        pb::DeviceType::Sensor => DeviceType::Sensor,
        pb::DeviceType::Actuator => DeviceType::Actuator,
        pb::DeviceType::Gateway => DeviceType::Gateway,
        pb::DeviceType::Controller => DeviceType::Controller,
        pb::DeviceType::Meter => DeviceType::Meter,
        pb::DeviceType::Camera => DeviceType::Camera,
        pb::DeviceType::Other => DeviceType::Other,
    })
}

fn device_type_pb(t: DeviceType) -> pb::DeviceType {
    match t {
        DeviceType::Sensor => pb::DeviceType::Sensor,
        DeviceType::Actuator => pb::DeviceType::Actuator,
        DeviceType::Gateway => pb::DeviceType::Gateway,
        DeviceType::Controller => pb::DeviceType::Controller,
        DeviceType::Meter => pb::DeviceType::Meter,
        DeviceType::Camera => pb::DeviceType::Camera,
        DeviceType::Other => pb::DeviceType::Other,
    }
}

/// Proto -> domain connectivity.
pub fn connectivity(c: pb::ConnectivityStatus) -> Option<ConnectivityStatus> {
    match c {
        pb::ConnectivityStatus::Unspecified => None,
        pb::ConnectivityStatus::Online => Some(ConnectivityStatus::Online),
        pb::ConnectivityStatus::Offline => Some(ConnectivityStatus::Offline),
        pb::ConnectivityStatus::Unknown => Some(ConnectivityStatus::Unknown),
    }
}

fn connectivity_pb(c: ConnectivityStatus) -> pb::ConnectivityStatus {
    match c {
        ConnectivityStatus::Online => pb::ConnectivityStatus::Online,
        ConnectivityStatus::Offline => pb::ConnectivityStatus::Offline,
        ConnectivityStatus::Unknown => pb::ConnectivityStatus::Unknown,
    }
}

fn protocol(p: pb::DeviceProtocol) -> Option<DeviceProtocol> {
    Some(match p {
        pb::DeviceProtocol::Unspecified => return None,
        pb::DeviceProtocol::Mqtt => DeviceProtocol::Mqtt,
        pb::DeviceProtocol::Http => DeviceProtocol::Http,
        pb::DeviceProtocol::Modbus => DeviceProtocol::Modbus,
        pb::DeviceProtocol::Bacnet => DeviceProtocol::Bacnet,
        pb::DeviceProtocol::Lorawan => DeviceProtocol::Lorawan,
        pb::DeviceProtocol::Zigbee => DeviceProtocol::Zigbee,
        pb::DeviceProtocol::Other => DeviceProtocol::Other,
    })
}

fn protocol_pb(p: DeviceProtocol) -> pb::DeviceProtocol {
    match p {
        DeviceProtocol::Mqtt => pb::DeviceProtocol::Mqtt,
        DeviceProtocol::Http => pb::DeviceProtocol::Http,
        DeviceProtocol::Modbus => pb::DeviceProtocol::Modbus,
        DeviceProtocol::Bacnet => pb::DeviceProtocol::Bacnet,
        DeviceProtocol::Lorawan => pb::DeviceProtocol::Lorawan,
        DeviceProtocol::Zigbee => pb::DeviceProtocol::Zigbee,
        DeviceProtocol::Other => pb::DeviceProtocol::Other,
    }
}

fn credentials_type(t: pb::CredentialsType) -> Option<CredentialsType> {
    match t {
        pb::CredentialsType::Unspecified => None,
        pb::CredentialsType::AccessToken => Some(CredentialsType::AccessToken),
        pb::CredentialsType::X509Certificate => Some(CredentialsType::X509Certificate),
        pb::CredentialsType::MqttBasic => Some(CredentialsType::MqttBasic),
    }
}

fn credentials_type_pb(s: &str) -> pb::CredentialsType {
    match CredentialsType::parse(s) {
        Some(CredentialsType::AccessToken) => pb::CredentialsType::AccessToken,
        Some(CredentialsType::X509Certificate) => pb::CredentialsType::X509Certificate,
        Some(CredentialsType::MqttBasic) => pb::CredentialsType::MqttBasic,
        None => pb::CredentialsType::Unspecified,
    }
}

fn specs(v: &mut Violations, s: Option<pb::DeviceSpecs>, serial: &str) -> DeviceSpecs {
    let Some(pb::DeviceSpecs {
        manufacturer,
        model,
        firmware_version,
        hardware_version,
        serial_number,
        mac_address,
        ip_address,
        protocol: proto,
        data_sheet,
        installation_date,
        warranty_expiration,
    }) = s
    else {
        return DeviceSpecs {
            serial_number: serial.to_owned(),
            ..DeviceSpecs::default()
        };
    };
    for (field, value, max) in [
        ("manufacturer", &manufacturer, 200),
        ("model", &model, 200),
        ("firmware_version", &firmware_version, 50),
        ("hardware_version", &hardware_version, 50),
        ("serial_number", &serial_number, 100),
        ("mac_address", &mac_address, 20),
        ("ip_address", &ip_address, 50),
        ("data_sheet", &data_sheet, 500),
    ] {
        v.optional_non_blank(&format!("device.specs.{field}"), value.as_deref(), max);
    }
    DeviceSpecs {
        manufacturer,
        model,
        firmware_version,
        hardware_version,
        serial_number: serial_number.unwrap_or_else(|| serial.to_owned()),
        mac_address,
        ip_address,
        protocol: super::filter_enum(v, "device.specs.protocol", proto, protocol),
        data_sheet,
        installation_date: from_timestamp(v, "device.specs.installation_date", installation_date),
        warranty_expiration: from_timestamp(
            v,
            "device.specs.warranty_expiration",
            warranty_expiration,
        ),
    }
}

fn credentials(v: &mut Violations, c: Option<pb::DeviceCredentials>) -> Option<Credentials> {
    let pb::DeviceCredentials {
        r#type,
        access_token,
        certificate_fingerprint,
        username,
        has_access_token: _,
    } = c?;
    let kind = super::required_enum(v, "device.credentials.type", r#type, credentials_type);
    v.optional_non_blank(
        "device.credentials.access_token",
        access_token.as_deref(),
        255,
    );
    v.optional_non_blank(
        "device.credentials.certificate_fingerprint",
        certificate_fingerprint.as_deref(),
        255,
    );
    v.optional_non_blank("device.credentials.username", username.as_deref(), 100);
    Some(Credentials {
        kind: kind.map_or("", |k| k.as_str()).to_owned(),
        access_token_sha256: access_token.as_deref().map(sha256_hex),
        certificate_fingerprint,
        username,
    })
}

fn telemetry(v: &mut Violations, t: Option<pb::TelemetryConfig>) -> TelemetryConfig {
    let Some(pb::TelemetryConfig {
        reporting_interval,
        telemetry_keys,
        attribute_keys,
    }) = t
    else {
        return TelemetryConfig::default();
    };
    if reporting_interval.is_some_and(|i| i <= 0) {
        v.add(
            "device.telemetry_config.reporting_interval",
            "must be greater than 0",
        );
    }
    check_tags(
        v,
        "device.telemetry_config.telemetry_keys",
        &telemetry_keys,
        50,
        100,
    );
    check_tags(
        v,
        "device.telemetry_config.attribute_keys",
        &attribute_keys,
        50,
        100,
    );
    TelemetryConfig {
        reporting_interval: reporting_interval.unwrap_or(60),
        telemetry_keys,
        attribute_keys,
    }
}

struct Fields {
    asset_id: String,
    name: String,
    display_name: Option<String>,
    label: Option<String>,
    kind: Option<DeviceType>,
    description: Option<String>,
    serial_number: String,
    external_id: Option<String>,
    specs: DeviceSpecs,
    specs_given: bool,
    credentials: Option<Credentials>,
    telemetry_config: TelemetryConfig,
    tags: Vec<String>,
    metadata: crate::domain::JsonObject,
    attributes: crate::domain::JsonObject,
    status: i32,
}

fn fields(v: &mut Violations, d: pb::Device, creating: bool) -> Fields {
    let pb::Device {
        id: _,
        tenant_id: _,
        asset_id,
        customer_id: _,
        name,
        display_name,
        label,
        r#type,
        description,
        serial_number,
        external_id,
        specs: sp,
        credentials: cr,
        telemetry_config,
        tags,
        metadata,
        attributes,
        connectivity_status: _,
        last_connected_time: _,
        last_disconnected_time: _,
        status,
        version: _,
        create_time: _,
        update_time: _,
        created_by: _,
        updated_by: _,
    } = d;
    v.required("device.name", &name, 255);
    v.optional_non_blank("device.display_name", display_name.as_deref(), 255);
    v.optional_non_blank("device.label", label.as_deref(), 100);
    let kind = if creating {
        super::required_enum(v, "device.type", r#type, device_type)
    } else {
        super::filter_enum(v, "device.type", r#type, device_type)
    };
    v.optional_non_blank("device.description", description.as_deref(), 1000);
    if creating {
        v.required("device.serial_number", &serial_number, 100);
    }
    v.optional_non_blank("device.external_id", external_id.as_deref(), 100);
    check_tags(v, "device.tags", &tags, 20, 50);
    let metadata = struct_to_json(metadata);
    check_json_size(v, "device.metadata", &metadata);
    let attributes = struct_to_json(attributes);
    check_json_size(v, "device.attributes", &attributes);
    let specs_given = sp.is_some();
    Fields {
        asset_id,
        name,
        display_name,
        label,
        kind,
        description,
        specs: specs(v, sp, &serial_number),
        specs_given,
        serial_number,
        external_id,
        credentials: credentials(v, cr),
        telemetry_config: telemetry(v, telemetry_config),
        tags,
        metadata,
        attributes,
        status,
    }
}

/// Validates a CreateDevice request.
pub fn new_device(req: pb::CreateDeviceRequest) -> Result<NewDevice, Violations> {
    let mut v = Violations::default();
    let pb::CreateDeviceRequest { device } = req;
    let Some(device) = device else {
        v.add("device", "is required");
        return Err(v);
    };
    let f = fields(&mut v, device, true);
    let asset_id = super::id(&mut v, "device.asset_id", &f.asset_id, AssetId::parse);
    let (Some(asset_id), Some(kind)) = (asset_id, f.kind) else {
        return Err(v);
    };
    let new = NewDevice {
        id: DeviceId::new_random(),
        asset_id,
        display_name: f.display_name.unwrap_or_else(|| f.name.clone()),
        name: f.name,
        label: f.label,
        kind,
        description: f.description,
        serial_number: f.serial_number,
        external_id: f.external_id,
        specs: f.specs,
        credentials: f.credentials,
        telemetry_config: f.telemetry_config,
        tags: f.tags,
        metadata: f.metadata,
        attributes: f.attributes,
    };
    v.finish(new)
}

/// Paths UpdateDevice accepts.
pub const UPDATABLE: &[&str] = &[
    "name",
    "display_name",
    "label",
    "type",
    "description",
    "external_id",
    "specs",
    "credentials",
    "telemetry_config",
    "tags",
    "metadata",
    "attributes",
    "status",
];

/// Validates an UpdateDevice request.
pub fn device_patch(
    req: pb::UpdateDeviceRequest,
) -> Result<(DeviceId, DevicePatch, Option<i64>), Violations> {
    let mut v = Violations::default();
    let pb::UpdateDeviceRequest {
        id,
        device,
        update_mask,
        expected_version,
    } = req;
    let id = super::id(&mut v, "id", &id, DeviceId::parse);
    let paths = super::mask_paths(&mut v, update_mask, UPDATABLE);
    let expected = super::expected_version(&mut v, expected_version);
    let mut all = Violations::default();
    let f = fields(&mut all, device.unwrap_or_default(), false);
    super::keep_named(&mut v, all, "device.", &paths);
    let has = |p: &str| paths.iter().any(|x| x == p);
    let mut patch = DevicePatch::default();
    if has("name") {
        patch.name = Some(f.name.clone());
    }
    if has("display_name") {
        match f.display_name {
            Some(d) => patch.display_name = Some(d),
            None => v.add("device.display_name", "cannot be cleared"),
        }
    }
    if has("label") {
        patch.label = Some(f.label);
    }
    if has("type") {
        match f.kind {
            Some(k) => patch.kind = Some(k),
            None => v.add("device.type", "is required"),
        }
    }
    if has("description") {
        patch.description = Some(f.description);
    }
    if has("external_id") {
        patch.external_id = Some(f.external_id);
    }
    if has("specs") {
        if f.specs_given && f.specs.serial_number.is_empty() {
            v.add("device.specs.serial_number", "is required");
        }
        if !f.specs_given {
            v.add("device.specs", "is required when named in update_mask");
        }
        patch.specs = Some(f.specs);
    }
    if has("credentials") {
        patch.credentials = Some(f.credentials);
    }
    if has("telemetry_config") {
        patch.telemetry_config = Some(f.telemetry_config);
    }
    if has("tags") {
        patch.tags = Some(f.tags);
    }
    if has("metadata") {
        patch.metadata = Some(f.metadata);
    }
    if has("attributes") {
        patch.attributes = Some(f.attributes);
    }
    if has("status") {
        match pb::EntityStatus::try_from(f.status).ok().and_then(status) {
            Some(s) => patch.status = Some(s),
            None => v.add("device.status", "must be ACTIVE or INACTIVE"),
        }
    }
    match id {
        Some(id) => v.finish((id, patch, expected)),
        None => Err(v),
    }
}

impl From<Device> for pb::Device {
    fn from(d: Device) -> Self {
        let Device {
            tenant_id,
            id,
            asset_id,
            customer_id,
            name,
            display_name,
            label,
            kind,
            description,
            serial_number,
            external_id,
            specs,
            credentials,
            telemetry_config,
            tags,
            metadata,
            attributes,
            connectivity,
            last_connected_at,
            last_disconnected_at,
            status,
            version,
            created_at,
            updated_at,
            created_by,
            updated_by,
        } = d;
        let DeviceSpecs {
            manufacturer,
            model,
            firmware_version,
            hardware_version,
            serial_number: specs_serial,
            mac_address,
            ip_address,
            protocol,
            data_sheet,
            installation_date,
            warranty_expiration,
        } = specs;
        pb::Device {
            id: id.to_string(),
            tenant_id: tenant_id.into_string(),
            asset_id: asset_id.to_string(),
            customer_id: customer_id.to_string(),
            name,
            display_name: Some(display_name),
            label,
            r#type: device_type_pb(kind) as i32,
            description,
            serial_number,
            external_id,
            specs: Some(pb::DeviceSpecs {
                manufacturer,
                model,
                firmware_version,
                hardware_version,
                serial_number: Some(specs_serial),
                mac_address,
                ip_address,
                protocol: protocol.map_or(pb::DeviceProtocol::Unspecified, protocol_pb) as i32,
                data_sheet,
                installation_date: installation_date.map(timestamp),
                warranty_expiration: warranty_expiration.map(timestamp),
            }),
            // The secret itself is never returned; only whether one is stored.
            credentials: credentials.map(|c| pb::DeviceCredentials {
                r#type: credentials_type_pb(&c.kind) as i32,
                access_token: None,
                certificate_fingerprint: c.certificate_fingerprint,
                username: c.username,
                has_access_token: c.access_token_sha256.is_some(),
            }),
            telemetry_config: Some(pb::TelemetryConfig {
                reporting_interval: Some(telemetry_config.reporting_interval),
                telemetry_keys: telemetry_config.telemetry_keys,
                attribute_keys: telemetry_config.attribute_keys,
            }),
            tags,
            metadata: Some(json_to_struct(metadata)),
            attributes: Some(json_to_struct(attributes)),
            connectivity_status: connectivity_pb(connectivity) as i32,
            last_connected_time: last_connected_at.map(timestamp),
            last_disconnected_time: last_disconnected_at.map(timestamp),
            status: status_pb(status) as i32,
            version,
            create_time: Some(timestamp(created_at)),
            update_time: Some(timestamp(updated_at)),
            created_by,
            updated_by,
        }
    }
}
