//! Policy, role and role-assignment messages <-> domain types.

use super::{check_tags, from_timestamp, timestamp};
use crate::domain::Violations;
use crate::domain::access::requests::{NewPolicy, NewRole, PolicyPatch, RolePatch};
use crate::domain::access::{
    AssignmentStatus, Policy, PolicyConditions, RiskLevel, Role, RoleAssignment, valid_key,
    valid_pattern,
};
use crate::pb;

/// Proto -> domain risk level.
pub fn risk_level(r: pb::RiskLevel) -> Option<RiskLevel> {
    Some(match r {
        pb::RiskLevel::Unspecified => return None,
        pb::RiskLevel::Low => RiskLevel::Low,
        pb::RiskLevel::Medium => RiskLevel::Medium,
        pb::RiskLevel::High => RiskLevel::High,
        pb::RiskLevel::Critical => RiskLevel::Critical,
    })
}

fn risk_level_pb(r: RiskLevel) -> pb::RiskLevel {
    match r {
        RiskLevel::Low => pb::RiskLevel::Low,
        RiskLevel::Medium => pb::RiskLevel::Medium,
        RiskLevel::High => pb::RiskLevel::High,
        RiskLevel::Critical => pb::RiskLevel::Critical,
    }
}

/// Proto -> domain assignment status.
pub fn assignment_status(s: pb::AssignmentStatus) -> Option<AssignmentStatus> {
    Some(match s {
        pb::AssignmentStatus::Unspecified => return None,
        pb::AssignmentStatus::Active => AssignmentStatus::Active,
        pb::AssignmentStatus::Inactive => AssignmentStatus::Inactive,
        pb::AssignmentStatus::Expired => AssignmentStatus::Expired,
    })
}

fn assignment_status_pb(s: AssignmentStatus) -> pb::AssignmentStatus {
    match s {
        AssignmentStatus::Active => pb::AssignmentStatus::Active,
        AssignmentStatus::Inactive => pb::AssignmentStatus::Inactive,
        AssignmentStatus::Expired => pb::AssignmentStatus::Expired,
    }
}

/// Checks a reference to an existing key: legacy data holds keys outside the create
/// pattern (`role:super-admin`), so any 1..100 characters without whitespace.
pub fn check_key_ref(v: &mut Violations, field: &str, key: &str) {
    if key.is_empty() || key.chars().count() > 100 || key.chars().any(char::is_whitespace) {
        v.add(field, "must be 1..100 characters without whitespace");
    }
}

/// Checks the key of a role or policy being created: `^[a-z][a-z0-9_]*$`, at most 100
/// characters.
pub fn check_key(v: &mut Violations, field: &str, key: &str) {
    if !valid_key(key) {
        v.add(
            field,
            "must match ^[a-z][a-z0-9_]*$ and be at most 100 characters",
        );
    }
}

fn check_patterns(v: &mut Violations, field: &str, patterns: &[String]) {
    if patterns.len() > 200 {
        v.add(field, "must hold at most 200 patterns");
    }
    for (i, p) in patterns.iter().enumerate() {
        if !valid_pattern(p) {
            v.add(
                format!("{field}[{i}]"),
                format!("{p:?} is not a permission pattern (domain.function.action, `*` for a whole segment)"),
            );
        }
    }
}

fn conditions(c: Option<pb::PolicyConditions>) -> Option<PolicyConditions> {
    let pb::PolicyConditions {
        requires_mfa,
        only_business_hours,
        allowed_device_types,
        ip_allowlist,
        max_session_duration,
    } = c?;
    Some(PolicyConditions {
        requires_mfa,
        only_business_hours,
        allowed_device_types,
        ip_allowlist,
        max_session_duration,
    })
}

/// The writable fields of a policy message, validated.
struct PolicyFields {
    key: String,
    display_name: String,
    description: String,
    allow: Vec<String>,
    deny: Vec<String>,
    conditions: Option<PolicyConditions>,
    risk_level: Option<RiskLevel>,
}

fn policy_fields(v: &mut Violations, p: pb::Policy) -> PolicyFields {
    let pb::Policy {
        id: _,
        tenant_id: _,
        key,
        display_name,
        description,
        allow,
        deny,
        conditions: c,
        risk_level: r,
        is_system: _,
        version: _,
        create_time: _,
        update_time: _,
        created_by: _,
        updated_by: _,
    } = p;
    v.required("policy.display_name", &display_name, 255);
    v.max_len("policy.description", &description, 1000);
    check_patterns(v, "policy.allow", &allow);
    check_patterns(v, "policy.deny", &deny);
    let risk_level = super::filter_enum(v, "policy.risk_level", r, risk_level);
    PolicyFields {
        key,
        display_name,
        description,
        allow,
        deny,
        conditions: conditions(c),
        risk_level,
    }
}

/// Validates a CreatePolicy request.
pub fn new_policy(req: pb::CreatePolicyRequest) -> Result<NewPolicy, Violations> {
    let mut v = Violations::default();
    let Some(p) = req.policy else {
        v.add("policy", "is required");
        return Err(v);
    };
    let f = policy_fields(&mut v, p);
    check_key(&mut v, "policy.key", &f.key);
    v.finish(NewPolicy {
        id: uuid::Uuid::new_v4(),
        key: f.key,
        display_name: f.display_name,
        description: f.description,
        allow: f.allow,
        deny: f.deny,
        conditions: f.conditions,
        risk_level: f.risk_level.unwrap_or(RiskLevel::Low),
    })
}

/// Validates an UpdatePolicy request's body against its mask.
pub fn policy_patch(v: &mut Violations, p: Option<pb::Policy>, paths: &[String]) -> PolicyPatch {
    let mut all = Violations::default();
    let f = policy_fields(&mut all, p.unwrap_or_default());
    super::keep_named(v, all, "policy.", paths);
    let has = |p: &str| paths.iter().any(|x| x == p);
    PolicyPatch {
        display_name: has("display_name").then_some(f.display_name),
        description: has("description").then_some(f.description),
        allow: has("allow").then_some(f.allow),
        deny: has("deny").then_some(f.deny),
        conditions: has("conditions").then_some(f.conditions),
        risk_level: if has("risk_level") {
            Some(f.risk_level.unwrap_or(RiskLevel::Low))
        } else {
            None
        },
    }
}

/// Paths UpdatePolicy accepts.
pub const POLICY_UPDATABLE: &[&str] = &[
    "display_name",
    "description",
    "allow",
    "deny",
    "conditions",
    "risk_level",
];

impl From<Policy> for pb::Policy {
    fn from(p: Policy) -> Self {
        pb::Policy {
            id: p.id.to_string(),
            tenant_id: p.tenant_id.to_string(),
            key: p.key,
            display_name: p.display_name,
            description: p.description,
            allow: p.allow,
            deny: p.deny,
            conditions: p.conditions.map(|c| pb::PolicyConditions {
                requires_mfa: c.requires_mfa,
                only_business_hours: c.only_business_hours,
                allowed_device_types: c.allowed_device_types,
                ip_allowlist: c.ip_allowlist,
                max_session_duration: c.max_session_duration,
            }),
            risk_level: risk_level_pb(p.risk_level) as i32,
            is_system: p.is_system,
            version: p.version,
            create_time: Some(timestamp(p.created_at)),
            update_time: Some(timestamp(p.updated_at)),
            created_by: p.created_by,
            updated_by: p.updated_by,
        }
    }
}

struct RoleFields {
    key: String,
    display_name: String,
    description: String,
    policy_keys: Vec<String>,
    tags: Vec<String>,
    risk_level: Option<RiskLevel>,
}

fn role_fields(v: &mut Violations, r: pb::Role) -> RoleFields {
    let pb::Role {
        id: _,
        tenant_id: _,
        key,
        display_name,
        description,
        policy_keys,
        tags,
        risk_level: rl,
        is_system: _,
        version: _,
        create_time: _,
        update_time: _,
        created_by: _,
        updated_by: _,
    } = r;
    v.required("role.display_name", &display_name, 255);
    v.max_len("role.description", &description, 1000);
    if policy_keys.is_empty() {
        v.add("role.policy_keys", "must name at least one policy");
    }
    for (i, k) in policy_keys.iter().enumerate() {
        check_key_ref(v, &format!("role.policy_keys[{i}]"), k);
    }
    let mut dedup = policy_keys.clone();
    dedup.sort();
    dedup.dedup();
    if dedup.len() != policy_keys.len() {
        v.add("role.policy_keys", "must not repeat a policy");
    }
    check_tags(v, "role.tags", &tags, 20, 50);
    let risk_level = super::filter_enum(v, "role.risk_level", rl, risk_level);
    RoleFields {
        key,
        display_name,
        description,
        policy_keys,
        tags,
        risk_level,
    }
}

/// Validates a CreateRole request.
pub fn new_role(req: pb::CreateRoleRequest) -> Result<NewRole, Violations> {
    let mut v = Violations::default();
    let Some(r) = req.role else {
        v.add("role", "is required");
        return Err(v);
    };
    let f = role_fields(&mut v, r);
    check_key(&mut v, "role.key", &f.key);
    v.finish(NewRole {
        id: uuid::Uuid::new_v4(),
        key: f.key,
        display_name: f.display_name,
        description: f.description,
        policy_keys: f.policy_keys,
        tags: f.tags,
        risk_level: f.risk_level.unwrap_or(RiskLevel::Low),
    })
}

/// Paths UpdateRole accepts.
pub const ROLE_UPDATABLE: &[&str] = &[
    "display_name",
    "description",
    "policy_keys",
    "tags",
    "risk_level",
];

/// Validates an UpdateRole request's body against its mask.
pub fn role_patch(v: &mut Violations, r: Option<pb::Role>, paths: &[String]) -> RolePatch {
    let mut all = Violations::default();
    let f = role_fields(&mut all, r.unwrap_or_default());
    super::keep_named(v, all, "role.", paths);
    let has = |p: &str| paths.iter().any(|x| x == p);
    RolePatch {
        display_name: has("display_name").then_some(f.display_name),
        description: has("description").then_some(f.description),
        policy_keys: has("policy_keys").then_some(f.policy_keys),
        tags: has("tags").then_some(f.tags),
        risk_level: if has("risk_level") {
            Some(f.risk_level.unwrap_or(RiskLevel::Low))
        } else {
            None
        },
    }
}

impl From<Role> for pb::Role {
    fn from(r: Role) -> Self {
        pb::Role {
            id: r.id.to_string(),
            tenant_id: r.tenant_id.to_string(),
            key: r.key,
            display_name: r.display_name,
            description: r.description,
            policy_keys: r.policy_keys,
            tags: r.tags,
            risk_level: risk_level_pb(r.risk_level) as i32,
            is_system: r.is_system,
            version: r.version,
            create_time: Some(timestamp(r.created_at)),
            update_time: Some(timestamp(r.updated_at)),
            created_by: r.created_by,
            updated_by: r.updated_by,
        }
    }
}

/// Validates an optional expiry, which must lie in the future.
pub fn expiry(
    v: &mut Violations,
    t: Option<prost_types::Timestamp>,
) -> Option<chrono::DateTime<chrono::Utc>> {
    let e = from_timestamp(v, "expire_time", t);
    if e.is_some_and(|e| e <= chrono::Utc::now()) {
        v.add("expire_time", "must be in the future");
    }
    e
}

/// An assignment as callers see it, with its effective status.
pub fn assignment_pb(a: RoleAssignment, now: chrono::DateTime<chrono::Utc>) -> pb::RoleAssignment {
    pb::RoleAssignment {
        status: assignment_status_pb(a.effective_status(now)) as i32,
        id: a.id.to_string(),
        tenant_id: a.tenant_id.to_string(),
        user_id: a.user_id,
        role_key: a.role_key,
        scope: a.scope,
        expire_time: a.expires_at.map(timestamp),
        granted_by: a.granted_by,
        grant_time: Some(timestamp(a.granted_at)),
        reason: a.reason,
        revoked_by: a.revoked_by,
        revoke_time: a.revoked_at.map(timestamp),
        version: a.version,
    }
}
