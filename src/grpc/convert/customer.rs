//! Customer messages <-> domain customers.

use super::{check_email, check_json_size, json_to_struct, opt_id, struct_to_json, timestamp};
use crate::domain::customer::{
    Address, Coordinates, Customer, CustomerPatch, CustomerType, NewCustomer, Settings,
    SettingsPatch, Theme,
};
use crate::domain::{CustomerId, EntityStatus, Violations};
use crate::pb;

/// Proto -> domain customer type.
pub fn customer_type(t: pb::CustomerType) -> Option<CustomerType> {
    match t {
        pb::CustomerType::Unspecified => None,
        pb::CustomerType::Holding => Some(CustomerType::Holding),
        pb::CustomerType::Company => Some(CustomerType::Company),
        pb::CustomerType::Branch => Some(CustomerType::Branch),
        pb::CustomerType::Franchise => Some(CustomerType::Franchise),
    }
}

fn customer_type_pb(t: CustomerType) -> pb::CustomerType {
    match t {
        CustomerType::Holding => pb::CustomerType::Holding,
        CustomerType::Company => pb::CustomerType::Company,
        CustomerType::Branch => pb::CustomerType::Branch,
        CustomerType::Franchise => pb::CustomerType::Franchise,
    }
}

/// Proto -> domain entity status.
pub fn status(s: pb::EntityStatus) -> Option<EntityStatus> {
    match s {
        pb::EntityStatus::Unspecified => None,
        pb::EntityStatus::Active => Some(EntityStatus::Active),
        pb::EntityStatus::Inactive => Some(EntityStatus::Inactive),
    }
}

/// Domain -> proto entity status.
pub fn status_pb(s: EntityStatus) -> pb::EntityStatus {
    match s {
        EntityStatus::Active => pb::EntityStatus::Active,
        EntityStatus::Inactive => pb::EntityStatus::Inactive,
    }
}

/// Validates coordinates.
pub fn coordinates(
    v: &mut Violations,
    field: &str,
    c: Option<pb::Coordinates>,
) -> Option<Coordinates> {
    let pb::Coordinates { lat, lng } = c?;
    if !(-90.0..=90.0).contains(&lat) {
        v.add(format!("{field}.lat"), "must be between -90 and 90");
    }
    if !(-180.0..=180.0).contains(&lng) {
        v.add(format!("{field}.lng"), "must be between -180 and 180");
    }
    Some(Coordinates { lat, lng })
}

fn address(v: &mut Violations, a: Option<pb::Address>) -> Option<Address> {
    let pb::Address {
        street,
        city,
        state,
        country,
        postal_code,
        coordinates: coords,
    } = a?;
    v.required("customer.address.street", &street, 255);
    v.required("customer.address.city", &city, 100);
    v.required("customer.address.state", &state, 100);
    v.required("customer.address.country", &country, 100);
    v.required("customer.address.postal_code", &postal_code, 20);
    let coordinates = coordinates(v, "customer.address.coordinates", coords);
    Some(Address {
        street,
        city,
        state,
        country,
        postal_code,
        coordinates,
    })
}

fn settings_patch(v: &mut Violations, s: Option<pb::CustomerSettings>) -> SettingsPatch {
    let Some(pb::CustomerSettings {
        timezone,
        locale,
        currency,
        inherit_from_parent,
    }) = s
    else {
        return SettingsPatch::default();
    };
    v.optional_non_blank("customer.settings.timezone", timezone.as_deref(), 64);
    v.optional_non_blank("customer.settings.locale", locale.as_deref(), 16);
    v.optional_non_blank("customer.settings.currency", currency.as_deref(), 8);
    SettingsPatch {
        timezone,
        locale,
        currency,
        inherit_from_parent,
    }
}

fn theme(v: &mut Violations, t: Option<pb::Theme>) -> Option<Theme> {
    let pb::Theme {
        primary_color,
        secondary_color,
        logo_url,
        favicon_url,
    } = t?;
    v.required("customer.theme.primary_color", &primary_color, 50);
    v.required("customer.theme.secondary_color", &secondary_color, 50);
    v.optional_non_blank("customer.theme.logo_url", logo_url.as_deref(), 500);
    v.optional_non_blank("customer.theme.favicon_url", favicon_url.as_deref(), 500);
    Some(Theme {
        primary_color,
        secondary_color,
        logo_url,
        favicon_url,
    })
}

/// Validated fields shared by create and update.
struct Fields {
    name: String,
    display_name: Option<String>,
    code: Option<String>,
    kind: Option<CustomerType>,
    email: Option<String>,
    phone: Option<String>,
    address: Option<Address>,
    settings: SettingsPatch,
    theme: Option<Theme>,
    metadata: crate::domain::JsonObject,
    status: i32,
    parent_customer_id: Option<String>,
}

/// Validates the writable fields of a customer message (output-only fields ignored).
fn fields(v: &mut Violations, c: pb::Customer, type_required: bool) -> Fields {
    let pb::Customer {
        id: _,
        tenant_id: _,
        parent_customer_id,
        path: _,
        depth: _,
        name,
        display_name,
        code,
        r#type,
        email,
        phone,
        address: addr,
        settings,
        theme: th,
        metadata,
        status,
        version: _,
        create_time: _,
        update_time: _,
        created_by: _,
        updated_by: _,
    } = c;
    v.required("customer.name", &name, 255);
    v.optional_non_blank("customer.display_name", display_name.as_deref(), 255);
    v.optional_non_blank("customer.code", code.as_deref(), 50);
    let kind = if type_required {
        super::required_enum(v, "customer.type", r#type, customer_type)
    } else {
        super::filter_enum(v, "customer.type", r#type, customer_type)
    };
    if let Some(e) = &email {
        check_email(v, "customer.email", e);
    }
    v.optional_non_blank("customer.phone", phone.as_deref(), 50);
    let metadata = struct_to_json(metadata);
    check_json_size(v, "customer.metadata", &metadata);
    Fields {
        name,
        display_name,
        code,
        kind,
        email,
        phone,
        address: address(v, addr),
        settings: settings_patch(v, settings),
        theme: theme(v, th),
        metadata,
        status,
        parent_customer_id,
    }
}

/// Validates a CreateCustomer request.
pub fn new_customer(req: pb::CreateCustomerRequest) -> Result<NewCustomer, Violations> {
    let mut v = Violations::default();
    let pb::CreateCustomerRequest { customer } = req;
    let Some(customer) = customer else {
        v.add("customer", "is required");
        return Err(v);
    };
    let f = fields(&mut v, customer, true);
    let parent_id = opt_id(
        &mut v,
        "customer.parent_customer_id",
        f.parent_customer_id.as_deref(),
        CustomerId::parse,
    );
    let mut settings = Settings::default();
    f.settings.apply(&mut settings);
    let new = NewCustomer {
        id: CustomerId::new_random(),
        parent_id,
        display_name: f.display_name.unwrap_or_else(|| f.name.clone()),
        name: f.name,
        code: f.code,
        kind: f.kind.unwrap_or(CustomerType::Company),
        email: f.email,
        phone: f.phone,
        address: f.address,
        settings,
        metadata: f.metadata,
    };
    v.finish(new)
}

/// Paths UpdateCustomer accepts.
pub const UPDATABLE: &[&str] = &[
    "name",
    "display_name",
    "code",
    "type",
    "email",
    "phone",
    "address",
    "settings",
    "settings.timezone",
    "settings.locale",
    "settings.currency",
    "settings.inherit_from_parent",
    "theme",
    "metadata",
    "status",
];

/// Validates an UpdateCustomer request into (id, patch, expected version).
pub fn customer_patch(
    req: pb::UpdateCustomerRequest,
) -> Result<(CustomerId, CustomerPatch, Option<i64>), Violations> {
    let mut v = Violations::default();
    let pb::UpdateCustomerRequest {
        id,
        customer,
        update_mask,
        expected_version,
    } = req;
    let id = super::id(&mut v, "id", &id, CustomerId::parse);
    let paths = super::mask_paths(&mut v, update_mask, UPDATABLE);
    let expected = super::expected_version(&mut v, expected_version);
    let customer = customer.unwrap_or_default();
    let settings_given = customer.settings.is_some();
    let mut all = Violations::default();
    let f = fields(&mut all, customer, false);
    super::keep_named(&mut v, all, "customer.", &paths);
    let has = |p: &str| paths.iter().any(|x| x == p);
    let mut patch = CustomerPatch::default();
    if has("name") {
        patch.name = Some(f.name.clone());
    }
    if has("display_name") {
        // Clearing the display name resets it to the (possibly new) name.
        patch.display_name = Some(f.display_name.unwrap_or_else(|| f.name.clone()));
        if f.name.trim().is_empty() && !has("name") {
            patch.display_name = None;
            v.add(
                "customer.display_name",
                "is required when name is not updated with it",
            );
        }
    }
    if has("code") {
        match f.code {
            Some(code) => patch.code = Some(code),
            None => v.add("customer.code", "cannot be cleared"),
        }
    }
    if has("type") {
        match f.kind {
            Some(k) => patch.kind = Some(k),
            None => v.add("customer.type", "is required"),
        }
    }
    if has("email") {
        patch.email = Some(f.email);
    }
    if has("phone") {
        patch.phone = Some(f.phone);
    }
    if has("address") {
        patch.address = Some(f.address);
    }
    if has("settings") {
        // The whole settings message: absent fields go back to their defaults.
        let d = Settings::default();
        let s = f.settings.clone();
        patch.settings = SettingsPatch {
            timezone: Some(s.timezone.unwrap_or(d.timezone)),
            locale: Some(s.locale.unwrap_or(d.locale)),
            currency: Some(s.currency.unwrap_or(d.currency)),
            inherit_from_parent: Some(s.inherit_from_parent.unwrap_or(d.inherit_from_parent)),
        };
    } else {
        let s = f.settings;
        let pick = |p: &str| has(&format!("settings.{p}"));
        if paths.iter().any(|p| p.starts_with("settings.")) && !settings_given {
            v.add(
                "customer.settings",
                "is required when settings.* paths are named",
            );
        }
        patch.settings = SettingsPatch {
            timezone: s.timezone.filter(|_| pick("timezone")),
            locale: s.locale.filter(|_| pick("locale")),
            currency: s.currency.filter(|_| pick("currency")),
            inherit_from_parent: s
                .inherit_from_parent
                .filter(|_| pick("inherit_from_parent")),
        };
    }
    if has("theme") {
        patch.theme = Some(f.theme);
    }
    if has("metadata") {
        patch.metadata = Some(f.metadata);
    }
    if has("status") {
        match pb::EntityStatus::try_from(f.status).ok().and_then(status) {
            Some(s) => patch.status = Some(s),
            None => v.add("customer.status", "must be ACTIVE or INACTIVE"),
        }
    }
    match id {
        Some(id) => v.finish((id, patch, expected)),
        None => Err(v),
    }
}

impl From<Customer> for pb::Customer {
    fn from(c: Customer) -> Self {
        let Customer {
            tenant_id,
            id,
            parent_id,
            path,
            depth,
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
            version,
            created_at,
            updated_at,
            created_by,
            updated_by,
        } = c;
        pb::Customer {
            id: id.to_string(),
            tenant_id: tenant_id.into_string(),
            parent_customer_id: parent_id.map(|p| p.to_string()),
            path,
            depth,
            name,
            display_name: Some(display_name),
            code: Some(code),
            r#type: customer_type_pb(kind) as i32,
            email,
            phone,
            address: address.map(|a| pb::Address {
                street: a.street,
                city: a.city,
                state: a.state,
                country: a.country,
                postal_code: a.postal_code,
                coordinates: a.coordinates.map(|c| pb::Coordinates {
                    lat: c.lat,
                    lng: c.lng,
                }),
            }),
            settings: Some(pb::CustomerSettings {
                timezone: Some(settings.timezone),
                locale: Some(settings.locale),
                currency: Some(settings.currency),
                inherit_from_parent: Some(settings.inherit_from_parent),
            }),
            theme: theme.map(|t| pb::Theme {
                primary_color: t.primary_color,
                secondary_color: t.secondary_color,
                logo_url: t.logo_url,
                favicon_url: t.favicon_url,
            }),
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
