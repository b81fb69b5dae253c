//! Asset messages <-> domain assets.

use super::customer::{coordinates, status, status_pb};
use super::{
    check_json_size, check_tags, from_timestamp, json_to_struct, opt_id, struct_to_json, timestamp,
};
use crate::domain::asset::{Asset, AssetPatch, AssetSpecs, AssetType, Location, NewAsset};
use crate::domain::{AssetId, CustomerId, Violations};
use crate::pb;

/// Proto -> domain asset type.
pub fn asset_type(t: pb::AssetType) -> Option<AssetType> {
    match t {
        pb::AssetType::Unspecified => None,
        pb::AssetType::Building => Some(AssetType::Building),
        pb::AssetType::Floor => Some(AssetType::Floor),
        pb::AssetType::Room => Some(AssetType::Room),
        pb::AssetType::Equipment => Some(AssetType::Equipment),
        pb::AssetType::Zone => Some(AssetType::Zone),
        pb::AssetType::Other => Some(AssetType::Other),
    }
}

fn asset_type_pb(t: AssetType) -> pb::AssetType {
    match t {
        AssetType::Building => pb::AssetType::Building,
        AssetType::Floor => pb::AssetType::Floor,
        AssetType::Room => pb::AssetType::Room,
        AssetType::Equipment => pb::AssetType::Equipment,
        AssetType::Zone => pb::AssetType::Zone,
        AssetType::Other => pb::AssetType::Other,
    }
}

fn location(v: &mut Violations, l: Option<pb::AssetLocation>) -> Location {
    let Some(pb::AssetLocation {
        address,
        city,
        state,
        country,
        postal_code,
        coordinates: c,
        floor,
        room,
        zone,
    }) = l
    else {
        return Location::default();
    };
    for (field, value, max) in [
        ("address", &address, 500),
        ("city", &city, 100),
        ("state", &state, 100),
        ("country", &country, 100),
        ("postal_code", &postal_code, 20),
        ("floor", &floor, 50),
        ("room", &room, 50),
        ("zone", &zone, 50),
    ] {
        v.optional_non_blank(&format!("asset.location.{field}"), value.as_deref(), max);
    }
    let coordinates = coordinates(v, "asset.location.coordinates", c);
    Location {
        address,
        city,
        state,
        country,
        postal_code,
        coordinates,
        floor,
        room,
        zone,
    }
}

fn specs(v: &mut Violations, s: Option<pb::AssetSpecs>) -> AssetSpecs {
    let Some(pb::AssetSpecs {
        area,
        capacity,
        power_rating,
        voltage,
        manufacturer,
        model,
        serial_number,
        installation_date,
        warranty_expiration,
    }) = s
    else {
        return AssetSpecs::default();
    };
    for (field, value) in [
        ("area", area),
        ("power_rating", power_rating),
        ("voltage", voltage),
    ] {
        if value.is_some_and(|x| !(x > 0.0 && x.is_finite())) {
            v.add(format!("asset.specs.{field}"), "must be greater than 0");
        }
    }
    if capacity.is_some_and(|c| c <= 0) {
        v.add("asset.specs.capacity", "must be greater than 0");
    }
    v.optional_non_blank("asset.specs.manufacturer", manufacturer.as_deref(), 200);
    v.optional_non_blank("asset.specs.model", model.as_deref(), 200);
    v.optional_non_blank("asset.specs.serial_number", serial_number.as_deref(), 100);
    AssetSpecs {
        area,
        capacity,
        power_rating,
        voltage,
        manufacturer,
        model,
        serial_number,
        installation_date: from_timestamp(v, "asset.specs.installation_date", installation_date),
        warranty_expiration: from_timestamp(
            v,
            "asset.specs.warranty_expiration",
            warranty_expiration,
        ),
    }
}

struct Fields {
    customer_id: String,
    parent_asset_id: Option<String>,
    name: String,
    display_name: Option<String>,
    code: Option<String>,
    kind: Option<AssetType>,
    description: Option<String>,
    location: Location,
    specs: AssetSpecs,
    tags: Vec<String>,
    metadata: crate::domain::JsonObject,
    status: i32,
}

fn fields(v: &mut Violations, a: pb::Asset, type_required: bool) -> Fields {
    let pb::Asset {
        id: _,
        tenant_id: _,
        customer_id,
        parent_asset_id,
        path: _,
        depth: _,
        name,
        display_name,
        code,
        r#type,
        description,
        location: loc,
        specs: sp,
        tags,
        metadata,
        status,
        version: _,
        create_time: _,
        update_time: _,
        created_by: _,
        updated_by: _,
    } = a;
    v.required("asset.name", &name, 255);
    v.optional_non_blank("asset.display_name", display_name.as_deref(), 255);
    // An empty code means "generate one", as in legacy.
    let code = code.filter(|c| !c.is_empty());
    v.optional_non_blank("asset.code", code.as_deref(), 50);
    let kind = if type_required {
        super::required_enum(v, "asset.type", r#type, asset_type)
    } else {
        super::filter_enum(v, "asset.type", r#type, asset_type)
    };
    v.optional_non_blank("asset.description", description.as_deref(), 1000);
    check_tags(v, "asset.tags", &tags, 20, 50);
    let metadata = struct_to_json(metadata);
    check_json_size(v, "asset.metadata", &metadata);
    Fields {
        customer_id,
        parent_asset_id,
        name,
        display_name,
        code,
        kind,
        description,
        location: location(v, loc),
        specs: specs(v, sp),
        tags,
        metadata,
        status,
    }
}

/// Validates a CreateAsset request.
pub fn new_asset(req: pb::CreateAssetRequest) -> Result<NewAsset, Violations> {
    let mut v = Violations::default();
    let pb::CreateAssetRequest { asset } = req;
    let Some(asset) = asset else {
        v.add("asset", "is required");
        return Err(v);
    };
    let f = fields(&mut v, asset, true);
    let customer_id = super::id(
        &mut v,
        "asset.customer_id",
        &f.customer_id,
        CustomerId::parse,
    );
    let parent_id = opt_id(
        &mut v,
        "asset.parent_asset_id",
        f.parent_asset_id.as_deref(),
        AssetId::parse,
    );
    let (Some(customer_id), Some(kind)) = (customer_id, f.kind) else {
        return Err(v);
    };
    let new = NewAsset {
        id: AssetId::new_random(),
        customer_id,
        parent_id,
        display_name: f.display_name.unwrap_or_else(|| f.name.clone()),
        name: f.name,
        code: f.code,
        kind,
        description: f.description,
        location: f.location,
        specs: f.specs,
        tags: f.tags,
        metadata: f.metadata,
    };
    v.finish(new)
}

/// Paths UpdateAsset accepts.
pub const UPDATABLE: &[&str] = &[
    "name",
    "display_name",
    "code",
    "type",
    "description",
    "location",
    "specs",
    "tags",
    "metadata",
    "status",
];

/// Validates an UpdateAsset request.
pub fn asset_patch(
    req: pb::UpdateAssetRequest,
) -> Result<(AssetId, AssetPatch, Option<i64>), Violations> {
    let mut v = Violations::default();
    let pb::UpdateAssetRequest {
        id,
        asset,
        update_mask,
        expected_version,
    } = req;
    let id = super::id(&mut v, "id", &id, AssetId::parse);
    let paths = super::mask_paths(&mut v, update_mask, UPDATABLE);
    let expected = super::expected_version(&mut v, expected_version);
    let mut all = Violations::default();
    let f = fields(&mut all, asset.unwrap_or_default(), false);
    super::keep_named(&mut v, all, "asset.", &paths);
    let has = |p: &str| paths.iter().any(|x| x == p);
    let mut patch = AssetPatch::default();
    if has("name") {
        patch.name = Some(f.name.clone());
    }
    if has("display_name") {
        match f.display_name {
            Some(d) => patch.display_name = Some(d),
            None => v.add("asset.display_name", "cannot be cleared"),
        }
    }
    if has("code") {
        match f.code {
            Some(c) => patch.code = Some(c),
            None => v.add("asset.code", "cannot be cleared"),
        }
    }
    if has("type") {
        match f.kind {
            Some(k) => patch.kind = Some(k),
            None => v.add("asset.type", "is required"),
        }
    }
    if has("description") {
        patch.description = Some(f.description);
    }
    if has("location") {
        patch.location = Some(f.location);
    }
    if has("specs") {
        patch.specs = Some(f.specs);
    }
    if has("tags") {
        patch.tags = Some(f.tags);
    }
    if has("metadata") {
        patch.metadata = Some(f.metadata);
    }
    if has("status") {
        match pb::EntityStatus::try_from(f.status).ok().and_then(status) {
            Some(s) => patch.status = Some(s),
            None => v.add("asset.status", "must be ACTIVE or INACTIVE"),
        }
    }
    match id {
        Some(id) => v.finish((id, patch, expected)),
        None => Err(v),
    }
}

impl From<Asset> for pb::Asset {
    fn from(a: Asset) -> Self {
        let Asset {
            tenant_id,
            id,
            customer_id,
            parent_id,
            path,
            depth,
            name,
            display_name,
            code,
            kind,
            description,
            location,
            specs,
            tags,
            metadata,
            status,
            version,
            created_at,
            updated_at,
            created_by,
            updated_by,
        } = a;
        let Location {
            address,
            city,
            state,
            country,
            postal_code,
            coordinates,
            floor,
            room,
            zone,
        } = location;
        let AssetSpecs {
            area,
            capacity,
            power_rating,
            voltage,
            manufacturer,
            model,
            serial_number,
            installation_date,
            warranty_expiration,
        } = specs;
        pb::Asset {
            id: id.to_string(),
            tenant_id: tenant_id.into_string(),
            customer_id: customer_id.to_string(),
            parent_asset_id: parent_id.map(|p| p.to_string()),
            path,
            depth,
            name,
            display_name: Some(display_name),
            code: Some(code),
            r#type: asset_type_pb(kind) as i32,
            description,
            location: Some(pb::AssetLocation {
                address,
                city,
                state,
                country,
                postal_code,
                coordinates: coordinates.map(|c| pb::Coordinates {
                    lat: c.lat,
                    lng: c.lng,
                }),
                floor,
                room,
                zone,
            }),
            specs: Some(pb::AssetSpecs {
                area,
                capacity,
                power_rating,
                voltage,
                manufacturer,
                model,
                serial_number,
                installation_date: installation_date.map(timestamp),
                warranty_expiration: warranty_expiration.map(timestamp),
            }),
            tags,
            metadata: Some(json_to_struct(metadata)),
            status: status_pb(status) as i32,
            version,
            create_time: Some(timestamp(created_at)),
            update_time: Some(timestamp(updated_at)),
            created_by,
            updated_by,
        }
    }
}
