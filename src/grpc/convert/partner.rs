//! Partner messages <-> domain partners and credentials. Outbound conversions have no
//! source for a secret: the domain types do not carry one.

use super::{check_email, timestamp};
use crate::domain::Violations;
use crate::domain::partner::{
    ApiKey, CredentialStatus, NewPartner, OAuthClient, PARTNER_SCOPES, Partner, PartnerPatch,
    PartnerProfile, PartnerStatus, Webhook,
};
use crate::pb;

/// Proto -> domain partner status.
pub fn partner_status(s: pb::PartnerStatus) -> Option<PartnerStatus> {
    Some(match s {
        pb::PartnerStatus::Unspecified => return None,
        pb::PartnerStatus::Pending => PartnerStatus::Pending,
        pb::PartnerStatus::Approved => PartnerStatus::Approved,
        pb::PartnerStatus::Active => PartnerStatus::Active,
        pb::PartnerStatus::Suspended => PartnerStatus::Suspended,
        pb::PartnerStatus::Rejected => PartnerStatus::Rejected,
    })
}

fn partner_status_pb(s: PartnerStatus) -> pb::PartnerStatus {
    match s {
        PartnerStatus::Pending => pb::PartnerStatus::Pending,
        PartnerStatus::Approved => pb::PartnerStatus::Approved,
        PartnerStatus::Active => pb::PartnerStatus::Active,
        PartnerStatus::Suspended => pb::PartnerStatus::Suspended,
        PartnerStatus::Rejected => pb::PartnerStatus::Rejected,
    }
}

/// Proto -> domain credential status.
pub fn credential_status(s: pb::CredentialStatus) -> Option<CredentialStatus> {
    match s {
        pb::CredentialStatus::Unspecified => None,
        pb::CredentialStatus::Active => Some(CredentialStatus::Active),
        pb::CredentialStatus::Revoked => Some(CredentialStatus::Revoked),
    }
}

fn credential_status_pb(s: CredentialStatus) -> i32 {
    match s {
        CredentialStatus::Active => pb::CredentialStatus::Active as i32,
        CredentialStatus::Revoked => pb::CredentialStatus::Revoked as i32,
    }
}

/// Checks an http(s) URL of at most `max` characters.
pub fn check_url(v: &mut Violations, field: &str, url: &str, max: usize) {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    if !rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/'))
        || url.chars().any(char::is_whitespace)
    {
        v.add(field, "must be an http or https URL");
    }
    v.max_len(field, url, max);
}

/// Checks partner scopes: each one of the known partner scopes.
pub fn check_scopes(v: &mut Violations, field: &str, scopes: &[String], at_least_one: bool) {
    if at_least_one && scopes.is_empty() {
        v.add(field, "must name at least one scope");
    }
    for (i, s) in scopes.iter().enumerate() {
        if !PARTNER_SCOPES.contains(&s.as_str()) {
            v.add(
                format!("{field}[{i}]"),
                format!("unknown scope {s:?}; known: {}", PARTNER_SCOPES.join(", ")),
            );
        }
    }
}

fn check_len(v: &mut Violations, field: &str, s: &str, min: usize, max: usize) {
    let n = s.trim().chars().count();
    if n < min {
        v.add(field, format!("must be at least {min} characters"));
    }
    v.max_len(field, s, max);
}

struct Fields {
    profile: PartnerProfile,
    intended_use: String,
    requested_scopes: Vec<String>,
}

fn fields(v: &mut Violations, p: pb::Partner) -> Fields {
    let pb::Partner {
        id: _,
        tenant_id: _,
        status: _,
        company_name,
        company_website,
        company_description,
        industry,
        country,
        contact_name,
        contact_email,
        contact_phone,
        technical_contact_email,
        intended_use,
        requested_scopes,
        webhook_url,
        ip_whitelist,
        scopes: _,
        rate_limit_per_minute: _,
        rate_limit_per_day: _,
        monthly_quota: _,
        transitions: _,
        version: _,
        create_time: _,
        update_time: _,
        created_by: _,
        updated_by: _,
    } = p;
    check_len(v, "partner.company_name", &company_name, 1, 255);
    check_url(v, "partner.company_website", &company_website, 255);
    check_len(
        v,
        "partner.company_description",
        &company_description,
        10,
        2000,
    );
    check_len(v, "partner.industry", &industry, 1, 100);
    check_len(v, "partner.country", &country, 2, 100);
    check_len(v, "partner.contact_name", &contact_name, 1, 255);
    check_email(v, "partner.contact_email", &contact_email);
    if let Some(p) = &contact_phone {
        check_len(v, "partner.contact_phone", p, 1, 50);
    }
    check_email(
        v,
        "partner.technical_contact_email",
        &technical_contact_email,
    );
    if let Some(u) = &webhook_url {
        check_url(v, "partner.webhook_url", u, 500);
    }
    if ip_whitelist.len() > 50 {
        v.add("partner.ip_whitelist", "must hold at most 50 entries");
    }
    for (i, ip) in ip_whitelist.iter().enumerate() {
        check_len(v, &format!("partner.ip_whitelist[{i}]"), ip, 1, 50);
    }
    Fields {
        profile: PartnerProfile {
            company_name,
            company_website,
            company_description,
            industry,
            country,
            contact_name,
            // E-mail addresses compare case-insensitively for uniqueness.
            contact_email: contact_email.to_lowercase(),
            contact_phone,
            technical_contact_email,
            webhook_url,
            ip_whitelist,
        },
        intended_use,
        requested_scopes,
    }
}

/// Validates a RegisterPartner request.
pub fn new_partner(req: pb::RegisterPartnerRequest) -> Result<NewPartner, Violations> {
    let mut v = Violations::default();
    let Some(p) = req.partner else {
        v.add("partner", "is required");
        return Err(v);
    };
    let f = fields(&mut v, p);
    check_len(&mut v, "partner.intended_use", &f.intended_use, 10, 2000);
    check_scopes(
        &mut v,
        "partner.requested_scopes",
        &f.requested_scopes,
        true,
    );
    v.finish(NewPartner {
        id: uuid::Uuid::new_v4(),
        profile: f.profile,
        intended_use: f.intended_use,
        requested_scopes: f.requested_scopes,
    })
}

/// Paths UpdatePartner accepts.
pub const UPDATABLE: &[&str] = &[
    "company_name",
    "company_website",
    "company_description",
    "industry",
    "country",
    "contact_name",
    "contact_email",
    "contact_phone",
    "technical_contact_email",
    "webhook_url",
    "ip_whitelist",
];

/// Validates an UpdatePartner body against its mask.
pub fn partner_patch(v: &mut Violations, p: Option<pb::Partner>, paths: &[String]) -> PartnerPatch {
    let mut all = Violations::default();
    let f = fields(&mut all, p.unwrap_or_default()).profile;
    super::keep_named(v, all, "partner.", paths);
    let has = |p: &str| paths.iter().any(|x| x == p);
    PartnerPatch {
        company_name: has("company_name").then_some(f.company_name),
        company_website: has("company_website").then_some(f.company_website),
        company_description: has("company_description").then_some(f.company_description),
        industry: has("industry").then_some(f.industry),
        country: has("country").then_some(f.country),
        contact_name: has("contact_name").then_some(f.contact_name),
        contact_email: has("contact_email").then_some(f.contact_email),
        contact_phone: has("contact_phone").then_some(f.contact_phone),
        technical_contact_email: has("technical_contact_email")
            .then_some(f.technical_contact_email),
        webhook_url: has("webhook_url").then_some(f.webhook_url),
        ip_whitelist: has("ip_whitelist").then_some(f.ip_whitelist),
    }
}

impl From<Partner> for pb::Partner {
    fn from(p: Partner) -> Self {
        let f = p.profile;
        pb::Partner {
            id: p.id.to_string(),
            tenant_id: p.tenant_id.to_string(),
            status: partner_status_pb(p.status) as i32,
            company_name: f.company_name,
            company_website: f.company_website,
            company_description: f.company_description,
            industry: f.industry,
            country: f.country,
            contact_name: f.contact_name,
            contact_email: f.contact_email,
            contact_phone: f.contact_phone,
            technical_contact_email: f.technical_contact_email,
            intended_use: p.intended_use,
            requested_scopes: p.requested_scopes,
            webhook_url: f.webhook_url,
            ip_whitelist: f.ip_whitelist,
            scopes: p.scopes,
            rate_limit_per_minute: p.rate_limit_per_minute,
            rate_limit_per_day: p.rate_limit_per_day,
            monthly_quota: p.monthly_quota,
            transitions: p
                .transitions
                .into_iter()
                .map(|t| pb::PartnerTransition {
                    status: PartnerStatus::parse(&t.status)
                        .map_or(0, |s| partner_status_pb(s) as i32),
                    actor: t.actor,
                    time: Some(timestamp(t.time)),
                    reason: t.reason,
                })
                .collect(),
            version: p.version,
            create_time: Some(timestamp(p.created_at)),
            update_time: Some(timestamp(p.updated_at)),
            created_by: p.created_by,
            updated_by: p.updated_by,
        }
    }
}

impl From<ApiKey> for pb::ApiKey {
    fn from(k: ApiKey) -> Self {
        pb::ApiKey {
            id: k.id.to_string(),
            name: k.name,
            key_prefix: k.key_prefix,
            scopes: k.scopes,
            expire_time: k.expires_at.map(timestamp),
            create_time: Some(timestamp(k.created_at)),
            revoke_time: k.revoked_at.map(timestamp),
            status: credential_status_pb(k.status),
        }
    }
}

impl From<OAuthClient> for pb::OAuthClient {
    fn from(c: OAuthClient) -> Self {
        pb::OAuthClient {
            client_id: c.client_id,
            name: c.name,
            redirect_uris: c.redirect_uris,
            scopes: c.scopes,
            grant_types: c.grant_types,
            create_time: Some(timestamp(c.created_at)),
            revoke_time: c.revoked_at.map(timestamp),
            status: credential_status_pb(c.status),
        }
    }
}

impl From<Webhook> for pb::Webhook {
    fn from(w: Webhook) -> Self {
        pb::Webhook {
            id: w.id.to_string(),
            url: w.url,
            events: w.events,
            enabled: w.enabled,
            create_time: Some(timestamp(w.created_at)),
        }
    }
}
