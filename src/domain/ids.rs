//! Id newtypes. Entity ids are UUIDs; tenant ids are opaque strings (legacy tenants
//! such as `tenant-default` are not UUIDs).

use std::fmt;
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh random (v4) id.
            pub fn new_random() -> Self {
                Self(Uuid::new_v4())
            }

            /// Parses the canonical hyphenated form.
            pub fn parse(s: &str) -> Option<Self> {
                // Only the canonical 36-character form: legacy ids are lowercase
                // hyphenated UUIDs and paths embed them verbatim.
                if s.len() != 36 {
                    return None;
                }
                Uuid::parse_str(s).ok().map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }
    };
}

uuid_id!(
    /// Id of a customer.
    CustomerId
);
uuid_id!(
    /// Id of an asset.
    AssetId
);
uuid_id!(
    /// Id of a device.
    DeviceId
);

/// A tenant id: 1..128 characters of `[A-Za-z0-9._:-]`. No `/` (paths embed the tenant
/// as their first segment) and no whitespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

impl TenantId {
    /// Validates a tenant id.
    pub fn parse(s: &str) -> Option<Self> {
        Self::valid(s).then(|| Self(s.to_owned()))
    }

    /// Validates an owned tenant id without copying it; gives it back when invalid.
    pub fn parse_owned(s: String) -> Result<Self, String> {
        if Self::valid(&s) { Ok(Self(s)) } else { Err(s) }
    }

    fn valid(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    }

    /// The tenant id, moved out.
    pub fn into_string(self) -> String {
        self.0
    }

    /// The tenant id as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
