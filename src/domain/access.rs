//! Roles, policies, role assignments and the authorization rules over them.
//!
//! The evaluation here is pure (no I/O): the store supplies the user's assignments in
//! force with their roles' policies, and the resource's ancestry in the hierarchy.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::TenantId;
use super::string_enum;

pub mod requests;

string_enum! {
    /// How risky a role or policy is (legacy spelling, lowercase).
    RiskLevel { Low = "low", Medium = "medium", High = "high", Critical = "critical" }
}

string_enum! {
    /// Stored status of an assignment (legacy spelling, lowercase).
    AssignmentStatus { Active = "active", Inactive = "inactive", Expired = "expired" }
}

/// Checks a role or policy key: `^[a-z][a-z0-9_]*$`, at most 100 characters.
pub fn valid_key(key: &str) -> bool {
    key.len() <= 100
        && key.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Checks a permission: exactly three dot-separated segments of lowercase letters.
pub fn valid_permission(p: &str) -> bool {
    let segments: Vec<&str> = p.split('.').collect();
    segments.len() == 3
        && segments
            .iter()
            .all(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase()))
}

/// Checks a permission pattern: one to three segments, each lowercase letters or `*`;
/// a pattern of fewer than three segments must end in `*`.
pub fn valid_pattern(p: &str) -> bool {
    let segments: Vec<&str> = p.split('.').collect();
    (1..=3).contains(&segments.len())
        && segments
            .iter()
            .all(|s| *s == "*" || (!s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase())))
        && (segments.len() == 3 || segments.last() == Some(&"*"))
}

/// Whether `pattern` matches `permission` (both assumed well-formed; a malformed
/// stored pattern simply never matches). `*` matches one whole segment; a trailing `*`
/// of a shorter pattern covers every remaining segment.
pub fn pattern_matches(pattern: &str, permission: &str) -> bool {
    let p: Vec<&str> = pattern.split('.').collect();
    let t: Vec<&str> = permission.split('.').collect();
    if p.len() > t.len() || (p.len() < t.len() && p.last() != Some(&"*")) {
        return false;
    }
    p.iter().zip(&t).all(|(ps, ts)| *ps == "*" || ps == ts)
}

/// Conditions of a policy: stored, returned, not evaluated.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyConditions {
    #[serde(
        default,
        rename = "requiresMFA",
        skip_serializing_if = "Option::is_none"
    )]
    pub requires_mfa: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub only_business_hours: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_device_types: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_allowlist: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_session_duration: Option<i64>,
}

/// A stored policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub tenant_id: TenantId,
    pub id: Uuid,
    pub key: String,
    pub display_name: String,
    pub description: String,
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    pub conditions: Option<PolicyConditions>,
    pub risk_level: RiskLevel,
    pub is_system: bool,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub created_by: String,
    pub updated_by: Option<String>,
}

/// A stored role, with its policies' keys in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Role {
    pub tenant_id: TenantId,
    pub id: Uuid,
    pub key: String,
    pub display_name: String,
    pub description: String,
    pub policy_keys: Vec<String>,
    pub tags: Vec<String>,
    pub risk_level: RiskLevel,
    pub is_system: bool,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub created_by: String,
    pub updated_by: Option<String>,
}

/// A stored role assignment.
#[derive(Clone, Debug, PartialEq)]
pub struct RoleAssignment {
    pub tenant_id: TenantId,
    pub id: Uuid,
    pub user_id: String,
    pub role_key: String,
    pub scope: String,
    pub status: AssignmentStatus,
    pub expires_at: Option<DateTime<Utc>>,
    pub granted_by: String,
    pub granted_at: DateTime<Utc>,
    pub reason: Option<String>,
    pub revoked_by: Option<String>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub version: i64,
}

impl RoleAssignment {
    /// Active and not past its expiry, compared as time.
    pub fn in_force(&self, now: DateTime<Utc>) -> bool {
        self.status == AssignmentStatus::Active && self.expires_at.is_none_or(|e| e > now)
    }

    /// The status a caller sees: an active assignment past its expiry is expired.
    pub fn effective_status(&self, now: DateTime<Utc>) -> AssignmentStatus {
        match self.status {
            AssignmentStatus::Active if !self.in_force(now) => AssignmentStatus::Expired,
            s => s,
        }
    }
}

/// One policy's rules, as evaluation needs them.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyRules {
    pub key: String,
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

/// An assignment in force with its role's policies, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Grant {
    pub assignment: RoleAssignment,
    pub policies: Vec<PolicyRules>,
}

/// Whether an assignment scope applies to a resource, given the resource's ancestry
/// (the resource itself and every scope that contains it in the hierarchy).
pub fn scope_applies(scope: &str, resource: &str, ancestry: &[String]) -> bool {
    if scope == "*" || scope == resource || ancestry.iter().any(|a| a == scope) {
        return true;
    }
    match scope.strip_suffix('*') {
        Some(prefix) => {
            resource.starts_with(prefix) || ancestry.iter().any(|a| a.starts_with(prefix))
        }
        None => false,
    }
}

/// Why a check ended as it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    ExplicitlyDenied,
    NoAssignment,
    NotGranted,
}

/// The result of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckOutcome {
    pub decision: Decision,
    pub reason: String,
    pub matched_policies: Vec<String>,
}

impl CheckOutcome {
    /// Whether the permission is granted.
    pub fn allowed(&self) -> bool {
        self.decision == Decision::Allowed
    }
}

/// The grants whose scope applies to the resource.
pub fn applicable_grants<'a>(
    grants: &'a [Grant],
    resource: &str,
    ancestry: &[String],
) -> Vec<&'a Grant> {
    grants
        .iter()
        .filter(|g| scope_applies(&g.assignment.scope, resource, ancestry))
        .collect()
}

/// The policies of `grants`, each once, in order.
pub fn distinct_policies<'a>(grants: &[&'a Grant]) -> Vec<&'a PolicyRules> {
    let mut seen = std::collections::HashSet::new();
    grants
        .iter()
        .flat_map(|g| &g.policies)
        .filter(|p| seen.insert(p.key.as_str()))
        .collect()
}

/// The permission patterns held through `grants`: (allowed, denied), each pattern once in
/// policy order. A pattern that some policy denies verbatim is not listed as allowed.
pub fn effective_patterns(grants: &[&Grant]) -> (Vec<String>, Vec<String>) {
    let policies = distinct_policies(grants);
    let mut denied: Vec<String> = Vec::new();
    for d in policies.iter().flat_map(|p| &p.deny) {
        if !denied.contains(d) {
            denied.push(d.clone());
        }
    }
    let mut allowed: Vec<String> = Vec::new();
    for a in policies.iter().flat_map(|p| &p.allow) {
        if !allowed.contains(a) && !denied.contains(a) {
            allowed.push(a.clone());
        }
    }
    (allowed, denied)
}

/// Evaluates one permission: deny overrides allow across every applicable policy.
pub fn check(
    grants: &[Grant],
    permission: &str,
    resource: &str,
    ancestry: &[String],
) -> CheckOutcome {
    let applicable = applicable_grants(grants, resource, ancestry);
    if applicable.is_empty() {
        return CheckOutcome {
            decision: Decision::NoAssignment,
            reason: "No active role assignments found for this scope".into(),
            matched_policies: Vec::new(),
        };
    }
    let policies = distinct_policies(&applicable);
    let matches = |patterns: &[String]| patterns.iter().any(|p| pattern_matches(p, permission));
    let allowing: Vec<String> = policies
        .iter()
        .filter(|p| matches(&p.allow))
        .map(|p| p.key.clone())
        .collect();
    let denying: Vec<String> = policies
        .iter()
        .filter(|p| matches(&p.deny))
        .map(|p| p.key.clone())
        .collect();
    if let Some(first) = denying.first() {
        let reason = format!("Explicitly denied by policy: {first}");
        let mut matched = allowing;
        matched.extend(denying);
        return CheckOutcome {
            decision: Decision::ExplicitlyDenied,
            reason,
            matched_policies: matched,
        };
    }
    if allowing.is_empty() {
        return CheckOutcome {
            decision: Decision::NotGranted,
            reason: "Permission not found in any assigned policies".into(),
            matched_policies: Vec::new(),
        };
    }
    CheckOutcome {
        decision: Decision::Allowed,
        reason: "Permission granted by policy".into(),
        matched_policies: allowing,
    }
}

#[cfg(test)]
mod tests;
