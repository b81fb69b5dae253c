//! Customers: the tenant's commercial hierarchy (holding > company > branch).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Actor, CustomerId, EntityStatus, JsonObject, TenantId, string_enum};

string_enum! {
    /// Kind of customer.
    CustomerType { Holding = "HOLDING", Company = "COMPANY", Branch = "BRANCH", Franchise = "FRANCHISE" }
}

/// A geographic point.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Coordinates {
    pub lat: f64,
    pub lng: f64,
}

/// A postal address, stored as the legacy `address` map.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Address {
    pub street: String,
    pub city: String,
    pub state: String,
    pub country: String,
    pub postal_code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinates: Option<Coordinates>,
}

/// Regional settings, stored as the legacy `settings` map with all four keys. Missing
/// keys read as their defaults (legacy updates replaced the map with a subset).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Settings {
    pub timezone: String,
    pub locale: String,
    pub currency: String,
    pub inherit_from_parent: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            timezone: "America/Sao_Paulo".to_owned(),
            locale: "pt-BR".to_owned(),
            currency: "BRL".to_owned(),
            inherit_from_parent: true,
        }
    }
}

/// A partial settings change: absent fields keep their value (or default, on create).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SettingsPatch {
    pub timezone: Option<String>,
    pub locale: Option<String>,
    pub currency: Option<String>,
    pub inherit_from_parent: Option<bool>,
}

impl SettingsPatch {
    /// Applies the present fields onto `settings`.
    pub fn apply(self, settings: &mut Settings) {
        if let Some(v) = self.timezone {
            settings.timezone = v;
        }
        if let Some(v) = self.locale {
            settings.locale = v;
        }
        if let Some(v) = self.currency {
            settings.currency = v;
        }
        if let Some(v) = self.inherit_from_parent {
            settings.inherit_from_parent = v;
        }
    }
}

/// Branding, stored as the legacy `theme` map.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Theme {
    pub primary_color: String,
    pub secondary_color: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logo_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub favicon_url: Option<String>,
}

/// A stored customer.
#[derive(Clone, Debug, PartialEq)]
pub struct Customer {
    pub tenant_id: TenantId,
    pub id: CustomerId,
    pub parent_id: Option<CustomerId>,
    pub path: String,
    pub depth: i32,
    pub name: String,
    pub display_name: String,
    pub code: String,
    pub kind: CustomerType,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub address: Option<Address>,
    pub settings: Settings,
    pub theme: Option<Theme>,
    pub metadata: JsonObject,
    pub status: EntityStatus,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub created_by: String,
    pub updated_by: Option<String>,
}

/// A validated create request. The id is chosen here, not by a store, so every store
/// of a dual write holds the same id.
#[derive(Clone, Debug)]
pub struct NewCustomer {
    pub id: CustomerId,
    pub parent_id: Option<CustomerId>,
    pub name: String,
    pub display_name: String,
    /// `None`: generate from the name, de-duplicated within the tenant.
    pub code: Option<String>,
    pub kind: CustomerType,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub address: Option<Address>,
    pub settings: Settings,
    pub metadata: JsonObject,
}

/// A validated update: `None` leaves a field alone; `Some(None)` clears an optional one.
#[derive(Clone, Debug, Default)]
pub struct CustomerPatch {
    pub name: Option<String>,
    pub display_name: Option<String>,
    pub code: Option<String>,
    pub kind: Option<CustomerType>,
    pub email: Option<Option<String>>,
    pub phone: Option<Option<String>>,
    pub address: Option<Option<Address>>,
    pub settings: SettingsPatch,
    pub theme: Option<Option<Theme>>,
    pub metadata: Option<JsonObject>,
    pub status: Option<EntityStatus>,
}

impl CustomerPatch {
    /// Applies the patch, bumping version and audit fields.
    pub fn apply(self, c: &mut Customer, actor: &Actor, now: DateTime<Utc>) {
        let Self {
            name,
            display_name,
            code,
            kind,
            email,
            phone,
            address,
            settings,
            theme,
            metadata,
            status,
        } = self;
        set(&mut c.name, name);
        set(&mut c.display_name, display_name);
        set(&mut c.code, code);
        set(&mut c.kind, kind);
        set(&mut c.email, email);
        set(&mut c.phone, phone);
        set(&mut c.address, address);
        settings.apply(&mut c.settings);
        set(&mut c.theme, theme);
        set(&mut c.metadata, metadata);
        set(&mut c.status, status);
        c.version += 1;
        c.updated_at = now;
        c.updated_by = Some(actor.as_str().to_owned());
    }
}

/// Replaces `slot` when a new value is given.
pub(crate) fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

/// Filters of ListCustomers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CustomerFilter {
    pub kind: Option<CustomerType>,
    pub status: Option<EntityStatus>,
    pub parent: ParentFilter<CustomerId>,
}

/// How a listing filters on the parent pointer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ParentFilter<Id> {
    #[default]
    Any,
    RootsOnly,
    ChildrenOf(Id),
}

/// The path of a customer: `/<tenant>/<root>/.../<id>`.
pub fn customer_path(
    tenant: &TenantId,
    parent: Option<(&str, i32)>,
    id: CustomerId,
) -> (String, i32) {
    match parent {
        None => (format!("/{tenant}/{id}"), 0),
        Some((parent_path, parent_depth)) => (format!("{parent_path}/{id}"), parent_depth + 1),
    }
}
