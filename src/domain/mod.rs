//! Domain model: entities, id newtypes, validated values and hierarchy rules.
//!
//! Nothing here knows about Diesel, prost or AWS: the gRPC layer converts its messages
//! into these types (validating on the way) and the stores persist them.

pub mod access;
pub mod asset;
pub mod customer;
pub mod device;
mod ids;
pub mod partner;
mod values;

pub use ids::{AssetId, CustomerId, DeviceId, TenantId};
pub use values::{
    Actor, DEFAULT_PAGE_SIZE, FieldViolation, JsonObject, MAX_PAGE_SIZE, Page, PageRequest,
    Violations, generate_code,
};

/// The tenant and acting user of one call. Every store method takes one, so no query
/// can forget its tenant.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub tenant: TenantId,
    pub actor: Actor,
}

/// Declares a closed set of string values stored as text (the legacy spelling).
macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored (legacy) spelling.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// Parses the stored spelling.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use string_enum;

string_enum! {
    /// Lifecycle status of customers, assets and devices.
    EntityStatus { Active = "ACTIVE", Inactive = "INACTIVE" }
}
