//! The examples of contract §4.7, adjusted where the legacy answer was one of its
//! bugs (each adjustment says which).

use chrono::{Duration, Utc};

use super::*;

fn rules(key: &str, allow: &[&str], deny: &[&str]) -> PolicyRules {
    PolicyRules {
        key: key.into(),
        allow: allow.iter().map(|s| s.to_string()).collect(),
        deny: deny.iter().map(|s| s.to_string()).collect(),
    }
}

fn policy(key: &str) -> PolicyRules {
    match key {
        "p_admin" => rules(key, &["*.*.*"], &[]),
        "p_tech" => rules(
            key,
            &[
                "energy.settings.read",
                "energy.devices.read",
                "customers.hierarchy.read",
            ],
            &["identity.*", "customers.hierarchy.update"],
        ),
        "p_viewer" => rules(key, &["*.*.read", "*.*.list"], &["*.*.delete"]),
        "p_energy" => rules(key, &["energy.*.*"], &[]),
        "p_colon" => rules(key, &["devices:*", "*:read"], &[]),
        other => panic!("no policy {other}"),
    }
}

fn role(key: &str) -> Vec<PolicyRules> {
    let keys: &[&str] = match key {
        "admin" => &["p_admin"],
        "tech" => &["p_tech"],
        "viewer" => &["p_viewer"],
        "energy" => &["p_energy", "p_viewer"],
        "colon" => &["p_colon"],
        // A role whose only policy is gone: impossible in PostgreSQL (foreign key), but
        // the evaluation must still treat it as granting nothing.
        "ghost" => &[],
        other => panic!("no role {other}"),
    };
    keys.iter().map(|k| policy(k)).collect()
}

fn grant(role_key: &str, scope: &str) -> Grant {
    let now = Utc::now();
    Grant {
        assignment: RoleAssignment {
            tenant_id: TenantId::parse("t").unwrap(),
            id: Uuid::new_v4(),
            user_id: "u".into(),
            role_key: role_key.into(),
            scope: scope.into(),
            status: AssignmentStatus::Active,
            expires_at: None,
            granted_by: "system".into(),
            granted_at: now,
            reason: None,
            revoked_by: None,
            revoked_at: None,
            version: 1,
        },
        policies: role(role_key),
    }
}

/// The resource's ancestry as the store computes it for ids in the example world:
/// C1 has asset A9; C2, C12 and "C1-child" are unrelated customers.
fn ancestry(resource: &str) -> Vec<String> {
    match resource {
        "asset:A9" => vec!["asset:A9".into(), "customer:C1".into()],
        other => vec![other.into()],
    }
}

fn run(grants: &[Grant], permission: &str, resource: &str) -> CheckOutcome {
    check(grants, permission, resource, &ancestry(resource))
}

fn assert_decision(o: &CheckOutcome, decision: Decision, matched: &[&str]) {
    assert_eq!(o.decision, decision, "{o:?}");
    assert_eq!(o.matched_policies, matched, "{o:?}");
}

#[test]
fn examples_1_to_6_scopes_and_inheritance() {
    // 1
    assert!(
        run(
            &[grant("admin", "*")],
            "identity.users.delete",
            "customer:ANY"
        )
        .allowed()
    );
    let tech = [grant("tech", "customer:C1")];
    // 2
    assert_decision(
        &run(&tech, "energy.settings.read", "customer:C1"),
        Decision::Allowed,
        &["p_tech"],
    );
    // 3, adjusted: inheritance through the real hierarchy (asset A9 of C1), not the
    // lexical `customer:C1/asset:A9` composite legacy required.
    assert!(run(&tech, "energy.settings.read", "asset:A9").allowed());
    // 4, 5: other customers, including a look-alike id, are not covered.
    for r in ["customer:C2", "customer:C1-child"] {
        let o = run(&tech, "energy.settings.read", r);
        assert_decision(&o, Decision::NoAssignment, &[]);
        assert_eq!(o.reason, "No active role assignments found for this scope");
    }
    // 6
    let o = run(&tech, "customers.hierarchy.update", "customer:C1");
    assert_decision(&o, Decision::ExplicitlyDenied, &["p_tech"]);
    assert_eq!(o.reason, "Explicitly denied by policy: p_tech");
}

#[test]
fn example_7_adjusted_two_segment_denies_work() {
    // Legacy: "Permission not found" because `identity.*` never matched (bug 18).
    let o = run(
        &[grant("tech", "customer:C1")],
        "identity.users.read",
        "customer:C1",
    );
    assert_decision(&o, Decision::ExplicitlyDenied, &["p_tech"]);
}

#[test]
fn examples_8_to_12_wildcard_scopes_and_deny_across_policies() {
    let viewer = [grant("viewer", "customer:*")];
    // 8, adjusted: legacy matched the composite string; here the asset's ancestry.
    assert!(run(&viewer, "water.meters.read", "customer:XYZ").allowed());
    // 9
    assert_decision(
        &run(&viewer, "water.meters.delete", "customer:XYZ"),
        Decision::ExplicitlyDenied,
        &["p_viewer"],
    );
    // 10: an asset outside any customer scope the wildcard names.
    assert_decision(
        &run(&viewer, "water.meters.read", "asset:1"),
        Decision::NoAssignment,
        &[],
    );
    // ... but an asset of a customer is covered by `customer:*`.
    assert!(run(&viewer, "water.meters.read", "asset:A9").allowed());
    let energy = [grant("energy", "customer:C1")];
    // 11
    assert!(run(&energy, "energy.settings.update", "customer:C1").allowed());
    // 12
    assert_decision(
        &run(&energy, "energy.settings.delete", "customer:C1"),
        Decision::ExplicitlyDenied,
        &["p_energy", "p_viewer"],
    );
}

#[test]
fn examples_13_14_expired_and_inactive_assignments_are_not_in_force() {
    let now = Utc::now();
    let mut expired = grant("admin", "*").assignment;
    expired.expires_at = Some(now - Duration::days(1));
    assert!(!expired.in_force(now));
    assert_eq!(expired.effective_status(now), AssignmentStatus::Expired);
    let mut inactive = grant("admin", "*").assignment;
    inactive.status = AssignmentStatus::Inactive;
    assert!(!inactive.in_force(now));
    // Compared as time, not text: an expiry with an offset-free, millisecond-less form
    // is still a time.
    let mut future = grant("admin", "*").assignment;
    future.expires_at = Some(now + Duration::seconds(1));
    assert!(future.in_force(now));
    // The store passes only grants in force; none applies -> no assignment.
    assert_decision(
        &check(&[], "energy.settings.read", "customer:C1", &[]),
        Decision::NoAssignment,
        &[],
    );
}

#[test]
fn examples_15_16_inert_patterns_and_empty_roles_grant_nothing() {
    // 15: colon-style patterns cannot be created through the API (INVALID_ARGUMENT);
    // stored ones never match.
    assert_decision(
        &run(&[grant("colon", "*")], "devices.settings.read", "*"),
        Decision::NotGranted,
        &[],
    );
    // 16
    let o = run(&[grant("ghost", "*")], "energy.settings.read", "*");
    assert_decision(&o, Decision::NotGranted, &[]);
    assert_eq!(o.reason, "Permission not found in any assigned policies");
    // 17 (a role key that does not exist) cannot happen: assignments reference roles by
    // foreign key, and AssignRole answers NOT_FOUND.
}

#[test]
fn examples_18_to_21_deny_overrides_and_scope_boundaries() {
    let both = [grant("admin", "customer:C1"), grant("tech", "customer:C1")];
    // 18
    assert_decision(
        &run(&both, "customers.hierarchy.update", "customer:C1"),
        Decision::ExplicitlyDenied,
        &["p_admin", "p_tech"],
    );
    // 19, adjusted: legacy allowed (the `identity.*` deny was inert).
    assert_eq!(
        run(&both, "identity.users.delete", "customer:C1").decision,
        Decision::ExplicitlyDenied
    );
    // 20
    assert_decision(
        &run(
            &[grant("admin", "customer:C1")],
            "energy.settings.read",
            "customer:C12",
        ),
        Decision::NoAssignment,
        &[],
    );
    // 21
    assert_decision(
        &run(&[grant("tech", "customer:C1")], "energy.settings.read", "*"),
        Decision::NoAssignment,
        &[],
    );
}

#[test]
fn patterns_and_permissions_are_validated_and_matched_by_segment() {
    for ok in [
        "*.*.*",
        "energy.*.*",
        "identity.*",
        "*",
        "a.b.c",
        "energy.settings.*",
    ] {
        assert!(valid_pattern(ok), "{ok}");
    }
    for bad in [
        "",
        "a",
        "a.b",
        "a.b.c.d",
        "devices:*",
        "*:read",
        "ener*.x.y",
        "A.b.c",
        "a..c",
        "a.b.c1",
    ] {
        assert!(!valid_pattern(bad), "{bad}");
    }
    assert!(valid_permission("energy.settings.read"));
    for bad in [
        "energy.settings",
        "energy.*.read",
        "Energy.settings.read",
        "a.b.c.d",
        "a_b.c.d",
    ] {
        assert!(!valid_permission(bad), "{bad}");
    }
    assert!(pattern_matches("*", "a.b.c"));
    assert!(pattern_matches("a.*", "a.b.c"));
    assert!(!pattern_matches("a.*", "b.b.c"));
    assert!(pattern_matches("a.b.*", "a.b.c"));
    assert!(
        !pattern_matches("ener*.b.c", "energy.b.c"),
        "wildcards are whole segments"
    );
    assert!(
        !pattern_matches("a.b", "a.b.c"),
        "a short pattern must end in *"
    );
    assert!(!pattern_matches("a.b.c.d", "a.b.c"));
    assert!(valid_key("technician_maintenance"));
    assert!(!valid_key("Tech") && !valid_key("1a") && !valid_key(""));
}

/// The HEAD seed data of contract §6, reduced to the permissions examples 22-32 use.
mod seed {
    use super::*;

    fn seed_policy(key: &str) -> PolicyRules {
        match key {
            "policy:full-admin" => rules(key, &["*.*.*"], &[]),
            "policy:read-only" => rules(
                key,
                &["*.*.read", "*.*.list"],
                &[
                    "*.*.create",
                    "*.*.update",
                    "*.*.delete",
                    "*.*.execute",
                    "*.*.admin",
                ],
            ),
            "policy:device-management" => rules(
                key,
                &["devices.settings.read", "devices.settings.update"],
                &[],
            ),
            "policy:user-management" => rules(
                key,
                &["identity.users.read", "identity.users.create"],
                &[
                    "identity.users.delete",
                    "identity.roles.create",
                    "identity.roles.update",
                    "identity.roles.delete",
                ],
            ),
            "policy:alarm-management" => {
                rules(key, &["alarms.rules.read", "alarms.rules.create"], &[])
            }
            "policy:reports" => rules(key, &["reports.dashboards.read"], &[]),
            "policy:customer-management" => rules(
                key,
                &["customers.hierarchy.read", "customers.hierarchy.update"],
                &["customers.hierarchy.delete"],
            ),
            "policy:energy-management" => rules(key, &["energy.settings.read"], &[]),
            "policy:integration-management" => rules(
                key,
                &[
                    "integrations.subscriptions.create",
                    "integrations.packages.read",
                ],
                &[],
            ),
            "policy:admin-approval" => rules(key, &["identity.approvals.update"], &[]),
            other => panic!("no seed policy {other}"),
        }
    }

    fn seed_grant(role: &str, scope: &str) -> Grant {
        let keys: &[&str] = match role {
            "role:super-admin" => &["policy:full-admin"],
            "role:viewer" => &["policy:read-only", "policy:reports"],
            "role:customer-admin" => &[
                "policy:user-management",
                "policy:device-management",
                "policy:alarm-management",
                "policy:reports",
                "policy:customer-management",
                "policy:admin-approval",
            ],
            "role:operations-manager" => &[
                "policy:device-management",
                "policy:alarm-management",
                "policy:reports",
            ],
            "role:technician" => &["policy:device-management"],
            "role:alarm-operator" => &["policy:alarm-management", "policy:reports"],
            "role:integration-manager" => &["policy:integration-management", "policy:reports"],
            other => panic!("no seed role {other}"),
        };
        let mut g = grant("admin", scope);
        g.assignment.role_key = role.into();
        g.policies = keys.iter().map(|k| seed_policy(k)).collect();
        g
    }

    const HOLDING: &str = "customer:2222";
    const TECH: &str = "customer:3333";
    const INDUSTRIAL: &str = "customer:4444";

    /// Ancestry in the seed tree: 3333 and 4444 are children of the holding 2222.
    fn seed_ancestry(resource: &str) -> Vec<String> {
        match resource {
            TECH | INDUSTRIAL => vec![resource.into(), HOLDING.into()],
            other => vec![other.into()],
        }
    }

    fn run(grants: &[Grant], permission: &str, resource: &str) -> CheckOutcome {
        check(grants, permission, resource, &seed_ancestry(resource))
    }

    #[test]
    fn examples_22_to_32_with_the_seed_data() {
        let admin = [seed_grant("role:super-admin", "*")];
        let joao = [
            seed_grant("role:customer-admin", TECH),
            seed_grant("role:operations-manager", HOLDING),
        ];
        // Maria's expired operations-manager and inactive energy-analyst assignments are
        // not in force, so the store never returns them.
        let maria = [
            seed_grant("role:technician", TECH),
            seed_grant("role:alarm-operator", TECH),
        ];
        let partner = [
            seed_grant("role:viewer", TECH),
            seed_grant("role:integration-manager", TECH),
        ];
        // 22
        assert!(run(&admin, "identity.users.delete", INDUSTRIAL).allowed());
        // 23
        let o = run(&joao, "devices.settings.update", TECH);
        assert!(o.allowed());
        assert!(
            o.matched_policies
                .contains(&"policy:device-management".to_owned())
        );
        // 24, adjusted: 4444 is a child of the holding where joão is operations-manager;
        // the real hierarchy grants it (legacy had no tree inheritance and denied).
        assert!(run(&joao, "devices.settings.update", INDUSTRIAL).allowed());
        // 25, adjusted: the lexical composite `customer:2222/customer:4444` is not a
        // resource here (callers name the resource itself, as in 24).
        assert_eq!(
            run(
                &joao,
                "devices.settings.update",
                "customer:2222/customer:4444"
            )
            .decision,
            Decision::NoAssignment
        );
        // 26
        let o = run(&joao, "identity.users.delete", TECH);
        assert_eq!(o.decision, Decision::ExplicitlyDenied);
        assert_eq!(
            o.reason,
            "Explicitly denied by policy: policy:user-management"
        );
        // 27
        let o = run(&joao, "customers.hierarchy.delete", TECH);
        assert_eq!(
            o.reason,
            "Explicitly denied by policy: policy:customer-management"
        );
        // 28
        assert!(run(&maria, "alarms.rules.create", TECH).allowed());
        // 29
        assert_decision(
            &run(&maria, "energy.settings.read", TECH),
            Decision::NotGranted,
            &[],
        );
        // 30: read-only's `*.*.create` deny beats integration-manager's allow.
        let o = run(&partner, "integrations.subscriptions.create", TECH);
        assert_eq!(o.decision, Decision::ExplicitlyDenied);
        assert_eq!(o.reason, "Explicitly denied by policy: policy:read-only");
        // 31
        assert_decision(
            &run(&partner, "integrations.packages.read", TECH),
            Decision::Allowed,
            &["policy:read-only", "policy:integration-management"],
        );
        // 32
        assert_decision(
            &run(&joao, "devices.settings.update", "*"),
            Decision::NoAssignment,
            &[],
        );
    }
}

#[test]
fn effective_patterns_list_each_pattern_once_and_never_a_denied_one_as_allowed() {
    let energy = grant("energy", "*");
    let tech = grant("tech", "*");
    let (allowed, denied) = effective_patterns(&[&energy, &tech, &energy]);
    assert_eq!(
        allowed,
        [
            "energy.*.*",
            "*.*.read",
            "*.*.list",
            "energy.settings.read",
            "energy.devices.read",
            "customers.hierarchy.read"
        ]
    );
    assert_eq!(
        denied,
        ["*.*.delete", "identity.*", "customers.hierarchy.update"]
    );
    let both = rules("p", &["a.b.c", "x.y.z"], &["a.b.c"]);
    let mut g = grant("admin", "*");
    g.policies = vec![both];
    assert_eq!(
        effective_patterns(&[&g]),
        (vec!["x.y.z".to_owned()], vec!["a.b.c".to_owned()])
    );
}
