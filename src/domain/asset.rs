//! Assets: each customer's physical hierarchy (building > floor > room > equipment).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::customer::{Coordinates, ParentFilter, set};
use super::{Actor, AssetId, CustomerId, EntityStatus, JsonObject, TenantId, string_enum};

string_enum! {
    /// Kind of asset.
    AssetType {
        Building = "BUILDING", Floor = "FLOOR", Room = "ROOM", Equipment = "EQUIPMENT",
        Zone = "ZONE", Other = "OTHER",
    }
}

/// Where an asset is; stored as the legacy `location` map (`{}` when empty).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Location {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postal_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinates: Option<Coordinates>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

/// Technical data of an asset; stored as the legacy `specs` map (`{}` when empty).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AssetSpecs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub area: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_rating: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voltage: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installation_date: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warranty_expiration: Option<DateTime<Utc>>,
}

/// A stored asset.
#[derive(Clone, Debug, PartialEq)]
pub struct Asset {
    pub tenant_id: TenantId,
    pub id: AssetId,
    pub customer_id: CustomerId,
    pub parent_id: Option<AssetId>,
    pub path: String,
    pub depth: i32,
    pub name: String,
    pub display_name: String,
    pub code: String,
    pub kind: AssetType,
    pub description: Option<String>,
    pub location: Location,
    pub specs: AssetSpecs,
    pub tags: Vec<String>,
    pub metadata: JsonObject,
    pub status: EntityStatus,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub created_by: String,
    pub updated_by: Option<String>,
}

/// A validated create request.
#[derive(Clone, Debug)]
pub struct NewAsset {
    pub id: AssetId,
    pub customer_id: CustomerId,
    pub parent_id: Option<AssetId>,
    pub name: String,
    pub display_name: String,
    /// `None`: generate from the name, de-duplicated within the customer.
    pub code: Option<String>,
    pub kind: AssetType,
    pub description: Option<String>,
    pub location: Location,
    pub specs: AssetSpecs,
    pub tags: Vec<String>,
    pub metadata: JsonObject,
}

/// A validated update.
#[derive(Clone, Debug, Default)]
pub struct AssetPatch {
    pub name: Option<String>,
    pub display_name: Option<String>,
    pub code: Option<String>,
    pub kind: Option<AssetType>,
    pub description: Option<Option<String>>,
    pub location: Option<Location>,
    pub specs: Option<AssetSpecs>,
    pub tags: Option<Vec<String>>,
    pub metadata: Option<JsonObject>,
    pub status: Option<EntityStatus>,
}

impl AssetPatch {
    /// Applies the patch, bumping version and audit fields.
    pub fn apply(self, a: &mut Asset, actor: &Actor, now: DateTime<Utc>) {
        let Self {
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
        } = self;
        set(&mut a.name, name);
        set(&mut a.display_name, display_name);
        set(&mut a.code, code);
        set(&mut a.kind, kind);
        set(&mut a.description, description);
        set(&mut a.location, location);
        set(&mut a.specs, specs);
        set(&mut a.tags, tags);
        set(&mut a.metadata, metadata);
        set(&mut a.status, status);
        a.version += 1;
        a.updated_at = now;
        a.updated_by = Some(actor.as_str().to_owned());
    }
}

/// Filters of ListAssets (always within one customer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssetFilter {
    pub customer_id: CustomerId,
    pub kind: Option<AssetType>,
    pub status: Option<EntityStatus>,
    pub parent: ParentFilter<AssetId>,
}

/// Where MoveAsset puts an asset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AssetDestination {
    /// Under this asset (and into its customer).
    UnderParent(AssetId),
    /// A root of this customer.
    RootOf(CustomerId),
}

/// The path of an asset: `/<tenant>/<customer>/<root>/.../<id>`.
pub fn asset_path(
    tenant: &TenantId,
    customer: CustomerId,
    parent: Option<(&str, i32)>,
    id: AssetId,
) -> (String, i32) {
    match parent {
        None => (format!("/{tenant}/{customer}/{id}"), 0),
        Some((parent_path, parent_depth)) => (format!("{parent_path}/{id}"), parent_depth + 1),
    }
}
