//! Policies, roles, role assignments and the authorization check over real gRPC.

use diesel_async::RunQueryDsl;
use gcdr_data::pb;
use gcdr_data::pb::authorization_service_client::AuthorizationServiceClient;
use gcdr_data::pb::policy_service_client::PolicyServiceClient;
use gcdr_data::pb::role_assignment_service_client::RoleAssignmentServiceClient;
use gcdr_data::pb::role_service_client::RoleServiceClient;
use prost_types::FieldMask;
use tonic::Code;

use crate::harness::*;

const T: &str = "tenant-default";

fn policies(s: &TestServer) -> PolicyServiceClient<tonic::transport::Channel> {
    PolicyServiceClient::new(s.channel.clone())
}
fn roles(s: &TestServer) -> RoleServiceClient<tonic::transport::Channel> {
    RoleServiceClient::new(s.channel.clone())
}
fn assignments(s: &TestServer) -> RoleAssignmentServiceClient<tonic::transport::Channel> {
    RoleAssignmentServiceClient::new(s.channel.clone())
}
fn authz(s: &TestServer) -> AuthorizationServiceClient<tonic::transport::Channel> {
    AuthorizationServiceClient::new(s.channel.clone())
}

async fn create_policy(
    s: &TestServer,
    tenant: &str,
    key: &str,
    allow: &[&str],
    deny: &[&str],
) -> pb::Policy {
    let policy = pb::Policy {
        key: key.into(),
        display_name: key.into(),
        allow: allow.iter().map(|s| s.to_string()).collect(),
        deny: deny.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    policies(s)
        .create_policy(req(
            tenant,
            pb::CreatePolicyRequest {
                policy: Some(policy),
            },
        ))
        .await
        .unwrap()
        .into_inner()
}

async fn create_role(s: &TestServer, tenant: &str, key: &str, policy_keys: &[&str]) -> pb::Role {
    let role = pb::Role {
        key: key.into(),
        display_name: key.into(),
        policy_keys: policy_keys.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    roles(s)
        .create_role(req(tenant, pb::CreateRoleRequest { role: Some(role) }))
        .await
        .unwrap()
        .into_inner()
}

fn assign_req(user: &str, role: &str, scope: &str) -> pb::AssignRoleRequest {
    pb::AssignRoleRequest {
        user_id: user.into(),
        role_key: role.into(),
        scope: scope.into(),
        expire_time: None,
        reason: None,
    }
}

async fn assign(s: &TestServer, user: &str, role: &str, scope: &str) -> pb::RoleAssignment {
    assignments(s)
        .assign_role(req(T, assign_req(user, role, scope)))
        .await
        .unwrap()
        .into_inner()
}

async fn check(s: &TestServer, user: &str, permission: &str, resource: &str) -> pb::CheckResponse {
    authz(s)
        .check(req(
            T,
            pb::CheckRequest {
                user_id: user.into(),
                permission: permission.into(),
                resource: resource.into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_and_roles_are_managed_with_their_rules() {
    let s = TestServer::start().await;
    let p = create_policy(
        &s,
        T,
        "p_tech",
        &["energy.settings.read", "energy.*"],
        &["identity.*"],
    )
    .await;
    assert_eq!(p.version, 1);
    let bad = pb::Policy {
        key: "p_bad".into(),
        display_name: "x".into(),
        allow: vec!["devices:*".into()],
        ..Default::default()
    };
    assert_invalid(
        policies(&s)
            .create_policy(req(T, pb::CreatePolicyRequest { policy: Some(bad) }))
            .await,
        "policy.allow[0]",
    );
    let dup = pb::Policy {
        key: "p_tech".into(),
        display_name: "x".into(),
        ..Default::default()
    };
    assert_code(
        policies(&s)
            .create_policy(req(T, pb::CreatePolicyRequest { policy: Some(dup) }))
            .await,
        Code::AlreadyExists,
        "POLICY_KEY_EXISTS",
    );
    let bad_key = pb::Policy {
        key: "Bad-Key".into(),
        display_name: "x".into(),
        ..Default::default()
    };
    assert_invalid(
        policies(&s)
            .create_policy(req(
                T,
                pb::CreatePolicyRequest {
                    policy: Some(bad_key),
                },
            ))
            .await,
        "policy.key",
    );

    let unknown = pb::Role {
        key: "tech".into(),
        display_name: "Tech".into(),
        policy_keys: vec!["p_tech".into(), "p_nope".into()],
        ..Default::default()
    };
    assert_invalid(
        roles(&s)
            .create_role(req(
                T,
                pb::CreateRoleRequest {
                    role: Some(unknown),
                },
            ))
            .await,
        "role.policy_keys",
    );
    let role = create_role(&s, T, "tech", &["p_tech"]).await;
    assert_eq!(role.policy_keys, ["p_tech"]);
    let by_key = roles(&s)
        .get_role_by_key(req(T, pb::GetRoleByKeyRequest { key: "tech".into() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_key.id, role.id);

    create_policy(&s, T, "p_viewer", &["*.*.read"], &["*.*.delete"]).await;
    let updated = roles(&s)
        .update_role(req(
            T,
            pb::UpdateRoleRequest {
                id: role.id.clone(),
                role: Some(pb::Role {
                    policy_keys: vec!["p_viewer".into(), "p_tech".into()],
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["policy_keys".into()],
                }),
                expected_version: Some(1),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.policy_keys, ["p_viewer", "p_tech"], "order is kept");
    assert_eq!(updated.version, 2);

    let del = policies(&s)
        .delete_policy(req(
            T,
            pb::DeletePolicyRequest {
                id: p.id.clone(),
                expected_version: None,
            },
        ))
        .await;
    let status = del.expect_err("in use");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("tech"),
        "names the roles: {}",
        status.message()
    );

    // System roles and policies cannot be changed through the API.
    let mut db = s.db().await;
    diesel::sql_query("UPDATE roles SET is_system = true")
        .execute(&mut db)
        .await
        .unwrap();
    diesel::sql_query("UPDATE policies SET is_system = true WHERE key = 'p_viewer'")
        .execute(&mut db)
        .await
        .unwrap();
    assert_code(
        roles(&s)
            .delete_role(req(
                T,
                pb::DeleteRoleRequest {
                    id: role.id.clone(),
                    expected_version: None,
                },
            ))
            .await,
        Code::FailedPrecondition,
        "SYSTEM_ROLE",
    );
    let viewer = policies(&s)
        .get_policy_by_key(req(
            T,
            pb::GetPolicyByKeyRequest {
                key: "p_viewer".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let upd = policies(&s)
        .update_policy(req(
            T,
            pb::UpdatePolicyRequest {
                id: viewer.id,
                policy: Some(pb::Policy {
                    display_name: "x".into(),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["display_name".into()],
                }),
                expected_version: None,
            },
        ))
        .await;
    assert_code(upd, Code::FailedPrecondition, "SYSTEM_POLICY");
    let listed = roles(&s)
        .list_roles(req(
            T,
            pb::ListRolesRequest {
                is_system: Some(true),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.roles.len(), 1);
    let listed = policies(&s)
        .list_policies(req(T, pb::ListPoliciesRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed
            .policies
            .iter()
            .map(|p| p.key.as_str())
            .collect::<Vec<_>>(),
        ["p_tech", "p_viewer"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignments_are_unique_while_active_revocable_and_expire_as_time() {
    let s = TestServer::start().await;
    create_policy(&s, T, "p", &["a.b.c"], &[]).await;
    let role = create_role(&s, T, "r", &["p"]).await;
    let a = assign(&s, "user-joao", "r", "customer:C1").await;
    assert_eq!(a.status, pb::AssignmentStatus::Active as i32);
    assert_eq!(a.granted_by, "user-test");
    assert_code(
        assignments(&s)
            .assign_role(req(T, assign_req("user-joao", "r", "customer:C1")))
            .await,
        Code::AlreadyExists,
        "ASSIGNMENT_EXISTS",
    );
    assert_code(
        assignments(&s)
            .assign_role(req(T, assign_req("user-joao", "nope", "customer:C1")))
            .await,
        Code::NotFound,
        "ROLE_NOT_FOUND",
    );
    assert_code(
        roles(&s)
            .delete_role(req(
                T,
                pb::DeleteRoleRequest {
                    id: role.id.clone(),
                    expected_version: None,
                },
            ))
            .await,
        Code::FailedPrecondition,
        "ROLE_IN_USE",
    );
    let revoked = assignments(&s)
        .revoke_role_assignment(req(T, pb::RevokeRoleAssignmentRequest { id: a.id.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.status, pb::AssignmentStatus::Inactive as i32);
    assert_eq!(revoked.revoked_by.as_deref(), Some("user-test"));
    assert!(revoked.revoke_time.is_some());
    assert_code(
        assignments(&s)
            .revoke_role_assignment(req(T, pb::RevokeRoleAssignmentRequest { id: a.id.clone() }))
            .await,
        Code::FailedPrecondition,
        "NOT_ACTIVE",
    );
    // Re-assigning after a revoke is allowed (legacy kept such duplicates too).
    let again = assign(&s, "user-joao", "r", "customer:C1").await;
    // Past its expiry an active assignment is not active, whatever its stored status.
    let mut db = s.db().await;
    diesel::sql_query(format!(
        "UPDATE role_assignments SET expires_at = now() - interval '1 minute' WHERE id = '{}'",
        again.id
    ))
    .execute(&mut db)
    .await
    .unwrap();
    let got = assignments(&s)
        .get_role_assignment(req(
            T,
            pb::GetRoleAssignmentRequest {
                id: again.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.status, pb::AssignmentStatus::Expired as i32);
    assert!(!check(&s, "user-joao", "a.b.c", "customer:C1").await.allowed);
    assign(&s, "user-joao", "r", "customer:C1").await;
    assert!(check(&s, "user-joao", "a.b.c", "customer:C1").await.allowed);

    let list = |f: pb::ListRoleAssignmentsRequest| {
        let mut c = assignments(&s);
        async move {
            c.list_role_assignments(req(T, f))
                .await
                .unwrap()
                .into_inner()
                .role_assignments
        }
    };
    assert_eq!(
        list(pb::ListRoleAssignmentsRequest {
            user_id: Some("user-joao".into()),
            ..Default::default()
        })
        .await
        .len(),
        3
    );
    let by_status = |st: pb::AssignmentStatus| pb::ListRoleAssignmentsRequest {
        status: st as i32,
        ..Default::default()
    };
    assert_eq!(list(by_status(pb::AssignmentStatus::Active)).await.len(), 1);
    assert_eq!(
        list(by_status(pb::AssignmentStatus::Inactive)).await.len(),
        1
    );
    assert_eq!(
        list(by_status(pb::AssignmentStatus::Expired)).await.len(),
        1
    );
    assert_eq!(
        list(pb::ListRoleAssignmentsRequest {
            role_key: Some("r".into()),
            ..Default::default()
        })
        .await
        .len(),
        3
    );
    assert!(
        list(pb::ListRoleAssignmentsRequest {
            scope: Some("customer:C2".into()),
            ..Default::default()
        })
        .await
        .is_empty()
    );
    let past = pb::AssignRoleRequest {
        expire_time: Some(prost_types::Timestamp {
            seconds: 1_577_836_800,
            nanos: 0,
        }),
        ..assign_req("u2", "r", "*")
    };
    assert_invalid(
        assignments(&s).assign_role(req(T, past)).await,
        "expire_time",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_assignment_of_the_same_triple_leaves_exactly_one_active_row() {
    let s = TestServer::start().await;
    create_policy(&s, T, "p", &["a.b.c"], &[]).await;
    create_role(&s, T, "r", &["p"]).await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let mut c = assignments(&s);
        tasks.push(tokio::spawn(async move {
            c.assign_role(req(T, assign_req("u", "r", "customer:X")))
                .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(e.code(), Code::AlreadyExists, "{e:?}"),
        }
    }
    assert_eq!(ok, 1);
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut db = s.db().await;
    let rows: Vec<N> =
        diesel::sql_query("SELECT count(*) AS n FROM role_assignments WHERE status = 'active'")
            .load(&mut db)
            .await
            .unwrap();
    assert_eq!(rows[0].n, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_scope_covers_its_subtree_through_the_real_hierarchy_and_follows_moves() {
    let s = TestServer::start().await;
    create_policy(
        &s,
        T,
        "p_tech",
        &["energy.settings.read", "customers.hierarchy.read"],
        &["identity.*", "customers.hierarchy.update"],
    )
    .await;
    create_policy(&s, T, "p_admin", &["*.*.*"], &[]).await;
    create_role(&s, T, "tech", &["p_tech"]).await;
    create_role(&s, T, "admin", &["p_admin"]).await;
    let holding = create_customer(&s, T, "Holding", None).await;
    let company = create_customer(&s, T, "Company", Some(&holding.id)).await;
    let branch = create_customer(&s, T, "Branch", Some(&company.id)).await;
    let other = create_customer(&s, T, "Other", None).await;
    let building = create_asset(&s, T, &branch.id, "Building", None).await;
    let room = create_asset(&s, T, &branch.id, "Room", Some(&building.id)).await;
    let device = create_device(&s, T, &room.id, "SN-AUTHZ").await;
    assign(&s, "maria", "tech", &format!("customer:{}", holding.id)).await;

    for resource in [
        format!("customer:{}", holding.id),
        format!("customer:{}", branch.id),
        format!("asset:{}", room.id),
        format!("device:{}", device.id),
    ] {
        let r = check(&s, "maria", "energy.settings.read", &resource).await;
        assert!(r.allowed, "{resource}: {r:?}");
        assert_eq!(r.matched_policies, ["p_tech"]);
    }
    let elsewhere = check(
        &s,
        "maria",
        "energy.settings.read",
        &format!("customer:{}", other.id),
    )
    .await;
    assert_eq!(elsewhere.decision, pb::Decision::NoAssignment as i32);
    // Two-segment deny patterns work (legacy never matched them).
    let denied = check(
        &s,
        "maria",
        "identity.users.read",
        &format!("device:{}", device.id),
    )
    .await;
    assert_eq!(denied.decision, pb::Decision::ExplicitlyDenied as i32);
    assert_eq!(denied.reason, "Explicitly denied by policy: p_tech");

    // Move the company (with branch, assets, device) under Other: inheritance follows.
    s.customers()
        .move_customer(req(
            T,
            pb::MoveCustomerRequest {
                id: company.id.clone(),
                destination: Some(pb::move_customer_request::Destination::NewParentCustomerId(
                    other.id.clone(),
                )),
                expected_version: None,
            },
        ))
        .await
        .unwrap();
    let after = check(
        &s,
        "maria",
        "energy.settings.read",
        &format!("device:{}", device.id),
    )
    .await;
    assert_eq!(
        after.decision,
        pb::Decision::NoAssignment as i32,
        "{after:?}"
    );
    assign(&s, "maria", "admin", &format!("customer:{}", other.id)).await;
    assert!(
        check(
            &s,
            "maria",
            "water.meters.delete",
            &format!("asset:{}", building.id)
        )
        .await
        .allowed
    );
    // Deny overrides allow across assignments: tech at Other too.
    assign(&s, "maria", "tech", &format!("customer:{}", other.id)).await;
    let both = check(
        &s,
        "maria",
        "customers.hierarchy.update",
        &format!("customer:{}", branch.id),
    )
    .await;
    assert_eq!(both.decision, pb::Decision::ExplicitlyDenied as i32);
    assert_eq!(both.matched_policies, ["p_admin", "p_tech"]);

    let batch = authz(&s)
        .check_batch(req(
            T,
            pb::CheckBatchRequest {
                user_id: "maria".into(),
                permissions: vec![
                    "energy.settings.read".into(),
                    "customers.hierarchy.update".into(),
                ],
                resource: format!("customer:{}", branch.id),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((batch.allowed_count, batch.denied_count), (1, 1));
    assert_eq!(batch.results[1].permission, "customers.hierarchy.update");

    let effective = authz(&s)
        .effective_permissions(req(
            T,
            pb::EffectivePermissionsRequest {
                user_id: "maria".into(),
                resource: Some(format!("customer:{}", holding.id)),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        effective.allowed,
        ["energy.settings.read", "customers.hierarchy.read"]
    );
    assert_eq!(
        effective.denied,
        ["identity.*", "customers.hierarchy.update"]
    );
    assert_eq!(effective.assignments.len(), 1);
    let everything = authz(&s)
        .effective_permissions(req(
            T,
            pb::EffectivePermissionsRequest {
                user_id: "maria".into(),
                resource: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(everything.assignments.len(), 3);

    // Bad input.
    let bad = authz(&s)
        .check(req(
            T,
            pb::CheckRequest {
                user_id: "maria".into(),
                permission: "energy.*.read".into(),
                resource: "*".into(),
            },
        ))
        .await;
    assert_invalid(bad, "permission");
    let too_many = authz(&s)
        .check_batch(req(
            T,
            pb::CheckBatchRequest {
                user_id: "maria".into(),
                permissions: vec!["a.b.c".into(); 101],
                resource: "*".into(),
            },
        ))
        .await;
    assert_invalid(too_many, "permissions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_access_data_is_invisible() {
    let s = TestServer::start().await;
    let p = create_policy(&s, "tenant-a", "p", &["*.*.*"], &[]).await;
    let r = create_role(&s, "tenant-a", "admin", &["p"]).await;
    let a = assignments(&s)
        .assign_role(req("tenant-a", assign_req("u", "admin", "*")))
        .await
        .unwrap()
        .into_inner();
    let missing = uuid::Uuid::new_v4().to_string();
    for (theirs, absent) in [(p.id.clone(), missing.clone())] {
        let x = policies(&s)
            .get_policy(req("tenant-b", pb::GetPolicyRequest { id: theirs }))
            .await
            .unwrap_err();
        let y = policies(&s)
            .get_policy(req("tenant-b", pb::GetPolicyRequest { id: absent }))
            .await
            .unwrap_err();
        assert_eq!((x.code(), x.message()), (y.code(), y.message()));
    }
    let x = roles(&s)
        .get_role(req("tenant-b", pb::GetRoleRequest { id: r.id }))
        .await
        .unwrap_err();
    assert_eq!(x.code(), Code::NotFound);
    let x = assignments(&s)
        .get_role_assignment(req("tenant-b", pb::GetRoleAssignmentRequest { id: a.id }))
        .await
        .unwrap_err();
    assert_eq!(x.code(), Code::NotFound);
    // The role key does not exist in tenant b, and the user holds nothing there.
    assert_code(
        assignments(&s)
            .assign_role(req("tenant-b", assign_req("u", "admin", "*")))
            .await,
        Code::NotFound,
        "ROLE_NOT_FOUND",
    );
    let c = authz(&s)
        .check(req(
            "tenant-b",
            pb::CheckRequest {
                user_id: "u".into(),
                permission: "a.b.c".into(),
                resource: "*".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!c.allowed);
    assert!(
        policies(&s)
            .list_policies(req("tenant-b", pb::ListPoliciesRequest::default()))
            .await
            .unwrap()
            .into_inner()
            .policies
            .is_empty()
    );
}

/// Checks load the user's grants in batches across concurrent calls: each check must
/// still be decided by its own user's assignments, never by another user's in the
/// same batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_checks_of_different_users_are_each_decided_by_their_own_grants() {
    let s = TestServer::start().await;
    let site = create_customer(&s, T, "Site", None).await;
    let scope = format!("customer:{}", site.id);
    create_policy(&s, T, "p_read", &["a.b.read"], &[]).await;
    create_policy(&s, T, "p_write", &["a.b.write"], &[]).await;
    create_role(&s, T, "r_read", &["p_read"]).await;
    create_role(&s, T, "r_write", &["p_write"]).await;
    assign(&s, "reader", "r_read", &scope).await;
    assign(&s, "writer", "r_write", &scope).await;
    assign(&s, "both", "r_read", &scope).await;
    assign(&s, "both", "r_write", &scope).await;

    let users = ["reader", "writer", "both", "nobody"];
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..400 {
        let user = users[i % 4];
        let permission = if i / 4 % 2 == 0 {
            "a.b.read"
        } else {
            "a.b.write"
        };
        let mut client = authz(&s);
        let resource = scope.clone();
        calls.spawn(async move {
            let answer = client
                .check(req(
                    T,
                    pb::CheckRequest {
                        user_id: user.into(),
                        permission: permission.into(),
                        resource,
                    },
                ))
                .await
                .unwrap()
                .into_inner();
            (user, permission, answer.allowed)
        });
    }
    let mut answered = 0;
    while let Some(joined) = calls.join_next().await {
        let (user, permission, allowed) = joined.unwrap();
        let want = match user {
            "reader" => permission == "a.b.read",
            "writer" => permission == "a.b.write",
            "both" => true,
            _ => false,
        };
        assert_eq!(allowed, want, "{user} {permission}");
        answered += 1;
    }
    assert_eq!(answered, 400);
}
