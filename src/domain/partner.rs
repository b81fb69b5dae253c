//! Partners: third-party integrators with a review lifecycle and their credentials.
//!
//! Secrets are generated here and leave the service once, in the response of the call
//! that creates them; stores only ever see their SHA-256.

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::device::sha256_hex;
use super::{TenantId, string_enum};

string_enum! {
    /// Where a partner is in its review lifecycle.
    PartnerStatus {
        Pending = "PENDING", Approved = "APPROVED", Active = "ACTIVE", Suspended = "SUSPENDED",
        Rejected = "REJECTED",
    }
}

string_enum! {
    /// Whether a credential can be used.
    CredentialStatus { Active = "ACTIVE", Revoked = "REVOKED" }
}

/// The scopes a partner can be granted (legacy `PARTNER_SCOPES`).
pub const PARTNER_SCOPES: &[&str] = &[
    "customers:read",
    "customers:write",
    "customers:hierarchy",
    "assets:read",
    "assets:write",
    "devices:read",
    "devices:write",
    "rules:read",
    "rules:write",
    "integrations:read",
    "integrations:execute",
    "webhooks:manage",
    "events:subscribe",
];

/// One lifecycle transition, kept on the partner as an audit trail.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub status: String,
    pub actor: String,
    pub time: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A stored partner.
#[derive(Clone, Debug, PartialEq)]
pub struct Partner {
    pub tenant_id: TenantId,
    pub id: Uuid,
    pub status: PartnerStatus,
    pub profile: PartnerProfile,
    pub intended_use: String,
    pub requested_scopes: Vec<String>,
    pub scopes: Vec<String>,
    pub rate_limit_per_minute: i32,
    pub rate_limit_per_day: i32,
    pub monthly_quota: i32,
    pub transitions: Vec<Transition>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub created_by: String,
    pub updated_by: Option<String>,
}

/// The registration fields of a partner (create and update share them).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PartnerProfile {
    pub company_name: String,
    pub company_website: String,
    pub company_description: String,
    pub industry: String,
    pub country: String,
    pub contact_name: String,
    pub contact_email: String,
    pub contact_phone: Option<String>,
    pub technical_contact_email: String,
    pub webhook_url: Option<String>,
    pub ip_whitelist: Vec<String>,
}

/// A validated UpdatePartner: `None` leaves a field alone; `Some(None)` clears it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PartnerPatch {
    pub company_name: Option<String>,
    pub company_website: Option<String>,
    pub company_description: Option<String>,
    pub industry: Option<String>,
    pub country: Option<String>,
    pub contact_name: Option<String>,
    pub contact_email: Option<String>,
    pub contact_phone: Option<Option<String>>,
    pub technical_contact_email: Option<String>,
    pub webhook_url: Option<Option<String>>,
    pub ip_whitelist: Option<Vec<String>>,
}

impl PartnerPatch {
    /// Applies the present fields.
    pub fn apply(self, p: &mut PartnerProfile) {
        use super::customer::set;
        let Self {
            company_name,
            company_website,
            company_description,
            industry,
            country,
            contact_name,
            contact_email,
            contact_phone,
            technical_contact_email,
            webhook_url,
            ip_whitelist,
        } = self;
        set(&mut p.company_name, company_name);
        set(&mut p.company_website, company_website);
        set(&mut p.company_description, company_description);
        set(&mut p.industry, industry);
        set(&mut p.country, country);
        set(&mut p.contact_name, contact_name);
        set(&mut p.contact_email, contact_email);
        set(&mut p.contact_phone, contact_phone);
        set(&mut p.technical_contact_email, technical_contact_email);
        set(&mut p.webhook_url, webhook_url);
        set(&mut p.ip_whitelist, ip_whitelist);
    }
}

/// A validated RegisterPartner.
#[derive(Clone, Debug)]
pub struct NewPartner {
    pub id: Uuid,
    pub profile: PartnerProfile,
    pub intended_use: String,
    pub requested_scopes: Vec<String>,
}

/// A lifecycle action and what it carries.
#[derive(Clone, Debug, PartialEq)]
pub enum LifecycleAction {
    Approve {
        scopes: Vec<String>,
        per_minute: i32,
        per_day: i32,
        monthly: i32,
    },
    Reject {
        reason: String,
    },
    Suspend {
        reason: String,
    },
    Activate,
}

impl LifecycleAction {
    /// The status the action leads to.
    pub fn target(&self) -> PartnerStatus {
        match self {
            LifecycleAction::Approve { .. } => PartnerStatus::Approved,
            LifecycleAction::Reject { .. } => PartnerStatus::Rejected,
            LifecycleAction::Suspend { .. } => PartnerStatus::Suspended,
            LifecycleAction::Activate => PartnerStatus::Active,
        }
    }

    /// Whether the legacy state machine allows the action from `current`.
    pub fn allowed_from(&self, current: PartnerStatus) -> bool {
        use PartnerStatus::*;
        match self {
            LifecycleAction::Approve { .. } | LifecycleAction::Reject { .. } => current == Pending,
            LifecycleAction::Suspend { .. } => matches!(current, Approved | Active),
            LifecycleAction::Activate => matches!(current, Approved | Suspended),
        }
    }

    /// Applies the action (assumed allowed) to the partner.
    pub fn apply(self, p: &mut Partner, actor: &str, now: DateTime<Utc>) {
        let target = self.target();
        let reason = match self {
            LifecycleAction::Approve {
                scopes,
                per_minute,
                per_day,
                monthly,
            } => {
                p.scopes = scopes;
                p.rate_limit_per_minute = per_minute;
                p.rate_limit_per_day = per_day;
                p.monthly_quota = monthly;
                None
            }
            LifecycleAction::Reject { reason } | LifecycleAction::Suspend { reason } => {
                Some(reason)
            }
            LifecycleAction::Activate => None,
        };
        p.status = target;
        p.transitions.push(Transition {
            status: target.as_str().to_owned(),
            actor: actor.to_owned(),
            time: now,
            reason,
        });
        p.version += 1;
        p.updated_at = now;
        p.updated_by = Some(actor.to_owned());
    }
}

/// Everything stored of one partner, the hashes of its secrets included: the unit a
/// replica copies between stores. Never leaves the service.
#[derive(Clone, Debug, PartialEq)]
pub struct PartnerRecord {
    pub partner: Partner,
    /// Each API key with its `keyHash`.
    pub api_keys: Vec<(ApiKey, String)>,
    /// Each OAuth client with its `clientSecretHash`.
    pub oauth_clients: Vec<(OAuthClient, String)>,
    /// Each webhook with its `secretHash`.
    pub webhooks: Vec<(Webhook, String)>,
}

/// Whether a partner may hold credentials.
pub fn may_hold_credentials(status: PartnerStatus) -> bool {
    matches!(status, PartnerStatus::Approved | PartnerStatus::Active)
}

/// A partner's API key, without the key.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiKey {
    pub id: Uuid,
    pub name: String,
    pub key_prefix: String,
    pub scopes: Vec<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub status: CredentialStatus,
}

/// A new API key: its metadata, the hash to store, and the key to show once.
#[derive(Clone, Debug)]
pub struct NewApiKey {
    pub id: Uuid,
    pub name: String,
    pub scopes: Vec<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub key_hash: String,
    pub key_prefix: String,
}

fn random_hex(bytes: usize) -> String {
    let mut rng = rand::rng();
    (0..bytes)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}

impl NewApiKey {
    /// Generates a key `gcdr_live_` + 48 hex digits; returns it with what to store.
    /// The prefix keeps 6 random digits, so keys are told apart (legacy kept a constant
    /// `gcdr_liv`).
    pub fn generate(
        name: String,
        scopes: Vec<String>,
        expires_at: Option<DateTime<Utc>>,
    ) -> (Self, String) {
        let key = format!("gcdr_live_{}", random_hex(24));
        let new = Self {
            id: Uuid::new_v4(),
            name,
            scopes,
            expires_at,
            key_hash: sha256_hex(&key),
            key_prefix: key[..16].to_owned(),
        };
        (new, key)
    }
}

/// A partner's OAuth client, without its secret.
#[derive(Clone, Debug, PartialEq)]
pub struct OAuthClient {
    pub client_id: String,
    pub name: String,
    pub redirect_uris: Vec<String>,
    pub scopes: Vec<String>,
    pub grant_types: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub status: CredentialStatus,
}

/// A new OAuth client and the hash of its secret.
#[derive(Clone, Debug)]
pub struct NewOAuthClient {
    pub client_id: String,
    pub name: String,
    pub redirect_uris: Vec<String>,
    pub scopes: Vec<String>,
    pub grant_types: Vec<String>,
    pub secret_hash: String,
}

impl NewOAuthClient {
    /// Generates the client id and secret (`gcdr_secret_` + 64 hex digits).
    pub fn generate(
        name: String,
        redirect_uris: Vec<String>,
        scopes: Vec<String>,
        grant_types: Vec<String>,
    ) -> (Self, String) {
        let secret = format!("gcdr_secret_{}", random_hex(32));
        let new = Self {
            client_id: format!("gcdr_{}", Uuid::new_v4()),
            name,
            redirect_uris,
            scopes,
            grant_types,
            secret_hash: sha256_hex(&secret),
        };
        (new, secret)
    }
}

/// A partner's webhook, without its secret.
#[derive(Clone, Debug, PartialEq)]
pub struct Webhook {
    pub id: Uuid,
    pub url: String,
    pub events: Vec<String>,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
}

/// A new webhook and the hash of its secret.
#[derive(Clone, Debug)]
pub struct NewWebhook {
    pub id: Uuid,
    pub url: String,
    pub events: Vec<String>,
    pub enabled: bool,
    pub secret_hash: String,
}

impl NewWebhook {
    /// Uses the supplied secret or generates one (`whsec_` + 64 hex digits).
    pub fn new(
        url: String,
        events: Vec<String>,
        enabled: bool,
        secret: Option<String>,
    ) -> (Self, String) {
        let secret = secret.unwrap_or_else(|| format!("whsec_{}", random_hex(32)));
        let new = Self {
            id: Uuid::new_v4(),
            url,
            events,
            enabled,
            secret_hash: sha256_hex(&secret),
        };
        (new, secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lifecycle_follows_the_legacy_state_machine() {
        use PartnerStatus::*;
        let approve = LifecycleAction::Approve {
            scopes: vec![],
            per_minute: 1,
            per_day: 1,
            monthly: 1,
        };
        let reject = LifecycleAction::Reject { reason: "x".into() };
        let suspend = LifecycleAction::Suspend { reason: "x".into() };
        let activate = LifecycleAction::Activate;
        for (action, ok) in [
            (&approve, vec![Pending]),
            (&reject, vec![Pending]),
            (&suspend, vec![Approved, Active]),
            (&activate, vec![Approved, Suspended]),
        ] {
            for s in PartnerStatus::ALL {
                assert_eq!(
                    action.allowed_from(*s),
                    ok.contains(s),
                    "{action:?} from {s}"
                );
            }
        }
    }

    #[test]
    fn generated_secrets_are_random_and_only_their_hash_is_kept() {
        let (a, key_a) = NewApiKey::generate("k".into(), vec![], None);
        let (b, key_b) = NewApiKey::generate("k".into(), vec![], None);
        assert_ne!(key_a, key_b);
        assert!(key_a.starts_with("gcdr_live_") && key_a.len() == 58);
        assert_eq!(a.key_hash, sha256_hex(&key_a));
        assert_ne!(a.key_prefix, b.key_prefix, "prefixes tell keys apart");
        assert!(!format!("{a:?}").contains(&key_a[16..]));
        let (w, secret) = NewWebhook::new("https://x".into(), vec![], true, None);
        assert!(secret.starts_with("whsec_"));
        assert_eq!(w.secret_hash, sha256_hex(&secret));
    }
}
