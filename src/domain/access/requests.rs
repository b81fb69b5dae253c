//! Validated create/update requests and list filters for roles, policies and
//! assignments.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{AssignmentStatus, PolicyConditions, RiskLevel};

/// A validated CreatePolicy.
#[derive(Clone, Debug)]
pub struct NewPolicy {
    pub id: Uuid,
    pub key: String,
    pub display_name: String,
    pub description: String,
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    pub conditions: Option<PolicyConditions>,
    pub risk_level: RiskLevel,
}

/// A validated UpdatePolicy.
#[derive(Clone, Debug, Default)]
pub struct PolicyPatch {
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub allow: Option<Vec<String>>,
    pub deny: Option<Vec<String>>,
    pub conditions: Option<Option<PolicyConditions>>,
    pub risk_level: Option<RiskLevel>,
}

/// A validated CreateRole.
#[derive(Clone, Debug)]
pub struct NewRole {
    pub id: Uuid,
    pub key: String,
    pub display_name: String,
    pub description: String,
    pub policy_keys: Vec<String>,
    pub tags: Vec<String>,
    pub risk_level: RiskLevel,
}

/// A validated UpdateRole.
#[derive(Clone, Debug, Default)]
pub struct RolePatch {
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub policy_keys: Option<Vec<String>>,
    pub tags: Option<Vec<String>>,
    pub risk_level: Option<RiskLevel>,
}

/// Filters of ListRoles and ListPolicies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessFilter {
    pub risk_level: Option<RiskLevel>,
    pub is_system: Option<bool>,
}

/// A validated AssignRole.
#[derive(Clone, Debug)]
pub struct NewAssignment {
    pub id: Uuid,
    pub user_id: String,
    pub role_key: String,
    pub scope: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub reason: Option<String>,
}

/// Filters of ListRoleAssignments. `status` is the effective status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AssignmentFilter {
    pub user_id: Option<String>,
    pub role_key: Option<String>,
    pub scope: Option<String>,
    pub status: Option<AssignmentStatus>,
}
