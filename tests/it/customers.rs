//! CustomerService: every RPC's normal path.

use gcdr_data::pb;
use prost_types::FieldMask;
use tonic::Code;

use crate::harness::*;

const T: &str = "tenant-default";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_a_customer_applies_the_legacy_defaults() {
    let s = TestServer::start().await;
    let c = create_customer(&s, T, "Shopping Campinas", None).await;
    assert_eq!(c.tenant_id, T);
    assert_eq!(c.code.as_deref(), Some("SHOPPING-CAMPINAS"));
    assert_eq!(c.display_name.as_deref(), Some("Shopping Campinas"));
    assert_eq!(c.path, format!("/{T}/{}", c.id));
    assert_eq!(c.depth, 0);
    assert_eq!(c.version, 1);
    assert_eq!(c.created_by, "user-test");
    assert_eq!(c.updated_by, None);
    assert_eq!(c.status, pb::EntityStatus::Active as i32);
    let settings = c.settings.unwrap();
    assert_eq!(settings.timezone.as_deref(), Some("America/Sao_Paulo"));
    assert_eq!(settings.locale.as_deref(), Some("pt-BR"));
    assert_eq!(settings.currency.as_deref(), Some("BRL"));
    assert_eq!(settings.inherit_from_parent, Some(true));

    let fetched = s
        .customers()
        .get_customer(req(T, pb::GetCustomerRequest { id: c.id.clone() }))
        .await
        .unwrap();
    assert_eq!(fetched.into_inner().name, "Shopping Campinas");
    let by_code = s
        .customers()
        .get_customer_by_code(req(
            T,
            pb::GetCustomerByCodeRequest {
                code: "SHOPPING-CAMPINAS".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_code.id, c.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_codes_are_made_unique_and_explicit_duplicates_are_refused() {
    let s = TestServer::start().await;
    let a = create_customer(&s, T, "Loja", None).await;
    let b = create_customer(&s, T, "Loja", None).await;
    assert_eq!(a.code.as_deref(), Some("LOJA"));
    assert_eq!(b.code.as_deref(), Some("LOJA-2"));
    let mut dup = customer("Other", None);
    dup.code = Some("LOJA".into());
    let r = s
        .customers()
        .create_customer(req(
            T,
            pb::CreateCustomerRequest {
                customer: Some(dup),
            },
        ))
        .await;
    assert_code(r, Code::AlreadyExists, "CUSTOMER_CODE_EXISTS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_gets_its_parents_path_and_a_missing_parent_is_not_found() {
    let s = TestServer::start().await;
    let root = create_customer(&s, T, "Holding", None).await;
    let child = create_customer(&s, T, "Company", Some(&root.id)).await;
    assert_eq!(child.path, format!("{}/{}", root.path, child.id));
    assert_eq!(child.depth, 1);
    assert_eq!(child.parent_customer_id.as_deref(), Some(root.id.as_str()));
    let r = s
        .customers()
        .create_customer(req(
            T,
            pb::CreateCustomerRequest {
                customer: Some(customer("x", Some(&uuid::Uuid::new_v4().to_string()))),
            },
        ))
        .await;
    assert_code(r, Code::NotFound, "PARENT_CUSTOMER_NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_changes_only_masked_fields_and_checks_the_expected_version() {
    let s = TestServer::start().await;
    let c = create_customer(&s, T, "Before", None).await;
    let mut patch = customer("After", None);
    patch.email = Some("ops@example.com".into());
    patch.settings = Some(pb::CustomerSettings {
        timezone: Some("UTC".into()),
        ..Default::default()
    });
    let updated = s
        .customers()
        .update_customer(req(
            T,
            pb::UpdateCustomerRequest {
                id: c.id.clone(),
                customer: Some(patch.clone()),
                update_mask: Some(FieldMask {
                    paths: vec!["name".into(), "email".into(), "settings.timezone".into()],
                }),
                expected_version: Some(1),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.name, "After");
    assert_eq!(
        updated.display_name.as_deref(),
        Some("Before"),
        "display_name was not in the mask"
    );
    assert_eq!(updated.email.as_deref(), Some("ops@example.com"));
    let settings = updated.settings.unwrap();
    assert_eq!(settings.timezone.as_deref(), Some("UTC"));
    assert_eq!(
        settings.locale.as_deref(),
        Some("pt-BR"),
        "a partial settings update keeps the other keys"
    );
    assert_eq!(updated.version, 2);
    assert_eq!(updated.updated_by.as_deref(), Some("user-test"));

    // A stale version is ABORTED and changes nothing.
    let r = s
        .customers()
        .update_customer(req(
            T,
            pb::UpdateCustomerRequest {
                id: c.id.clone(),
                customer: Some(customer("Stale", None)),
                update_mask: Some(FieldMask {
                    paths: vec!["name".into()],
                }),
                expected_version: Some(1),
            },
        ))
        .await;
    assert_code(r, Code::Aborted, "VERSION_MISMATCH");
    let now = s
        .customers()
        .get_customer(req(T, pb::GetCustomerRequest { id: c.id }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now.name, "After");
    assert_eq!(now.version, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clearing_an_optional_field_and_taking_a_used_code_behave() {
    let s = TestServer::start().await;
    let a = create_customer(&s, T, "A", None).await;
    create_customer(&s, T, "B", None).await;
    let mut with_email = customer("A", None);
    with_email.email = Some("a@example.com".into());
    let mask = |p: &str| {
        Some(FieldMask {
            paths: vec![p.into()],
        })
    };
    s.customers()
        .update_customer(req(
            T,
            pb::UpdateCustomerRequest {
                id: a.id.clone(),
                customer: Some(with_email),
                update_mask: mask("email"),
                expected_version: None,
            },
        ))
        .await
        .unwrap();
    let cleared = s
        .customers()
        .update_customer(req(
            T,
            pb::UpdateCustomerRequest {
                id: a.id.clone(),
                customer: Some(customer("A", None)),
                update_mask: mask("email"),
                expected_version: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cleared.email, None);
    let mut taken = customer("A", None);
    taken.code = Some("B".into());
    let r = s
        .customers()
        .update_customer(req(
            T,
            pb::UpdateCustomerRequest {
                id: a.id,
                customer: Some(taken),
                update_mask: mask("code"),
                expected_version: None,
            },
        ))
        .await;
    assert_code(r, Code::AlreadyExists, "CUSTOMER_CODE_EXISTS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_is_refused_while_children_or_assets_exist() {
    let s = TestServer::start().await;
    let root = create_customer(&s, T, "Root", None).await;
    let child = create_customer(&s, T, "Child", Some(&root.id)).await;
    let del = |id: &str, v: Option<i64>| pb::DeleteCustomerRequest {
        id: id.into(),
        expected_version: v,
    };
    assert_code(
        s.customers()
            .delete_customer(req(T, del(&root.id, None)))
            .await,
        Code::FailedPrecondition,
        "HAS_CHILDREN",
    );
    let asset = create_asset(&s, T, &child.id, "Building", None).await;
    assert_code(
        s.customers()
            .delete_customer(req(T, del(&child.id, None)))
            .await,
        Code::FailedPrecondition,
        "HAS_ASSETS",
    );
    s.assets()
        .delete_asset(req(
            T,
            pb::DeleteAssetRequest {
                id: asset.id,
                expected_version: None,
            },
        ))
        .await
        .unwrap();
    assert_code(
        s.customers()
            .delete_customer(req(T, del(&child.id, Some(7))))
            .await,
        Code::Aborted,
        "VERSION_MISMATCH",
    );
    s.customers()
        .delete_customer(req(T, del(&child.id, Some(1))))
        .await
        .unwrap();
    s.customers()
        .delete_customer(req(T, del(&root.id, None)))
        .await
        .unwrap();
    let r = s
        .customers()
        .get_customer(req(
            T,
            pb::GetCustomerRequest {
                id: root.id.clone(),
            },
        ))
        .await;
    assert_code(r, Code::NotFound, "CUSTOMER_NOT_FOUND");
    assert_code(
        s.customers()
            .delete_customer(req(T, del(&root.id, None)))
            .await,
        Code::NotFound,
        "CUSTOMER_NOT_FOUND",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_by_type_status_parent_and_roots() {
    let s = TestServer::start().await;
    let root = create_customer(&s, T, "Root", None).await;
    let child = create_customer(&s, T, "Child", Some(&root.id)).await;
    let mut holding = customer("Holding", None);
    holding.r#type = pb::CustomerType::Holding as i32;
    s.customers()
        .create_customer(req(
            T,
            pb::CreateCustomerRequest {
                customer: Some(holding),
            },
        ))
        .await
        .unwrap();
    let list = |r: pb::ListCustomersRequest| {
        let mut client = s.customers();
        async move {
            client
                .list_customers(req(T, r))
                .await
                .unwrap()
                .into_inner()
                .customers
        }
    };
    assert_eq!(list(pb::ListCustomersRequest::default()).await.len(), 3);
    let holdings = list(pb::ListCustomersRequest {
        r#type: pb::CustomerType::Holding as i32,
        ..Default::default()
    })
    .await;
    assert_eq!(
        holdings.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        ["Holding"]
    );
    let roots = list(pb::ListCustomersRequest {
        roots_only: true,
        ..Default::default()
    })
    .await;
    assert_eq!(roots.len(), 2);
    let children = list(pb::ListCustomersRequest {
        parent_customer_id: Some(root.id.clone()),
        ..Default::default()
    })
    .await;
    assert_eq!(
        children.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        [child.id.as_str()]
    );
    let inactive = list(pb::ListCustomersRequest {
        status: pb::EntityStatus::Inactive as i32,
        ..Default::default()
    })
    .await;
    assert!(inactive.is_empty());
    let kids = s
        .customers()
        .list_customer_children(req(
            T,
            pb::ListCustomerChildrenRequest {
                id: root.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kids.customers.len(), 1);
    assert!(kids.next_page_token.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_through_1000_customers_returns_each_exactly_once() {
    let s = TestServer::start().await;
    // Bulk-load through SQL (the paging under test is the server's, not the insert).
    let mut db = s.db().await;
    diesel_async::RunQueryDsl::execute(
        diesel::sql_query(
            "INSERT INTO customers (tenant_id, id, path, depth, name, display_name, code, type, created_at, updated_at, created_by)
             SELECT 'tenant-default', g.id, '/tenant-default/' || g.id, 0, 'C' || g.n, 'C' || g.n, 'C' || g.n, 'COMPANY', now(), now(), 'seed'
             FROM (SELECT gen_random_uuid() AS id, n FROM generate_series(1, 1000) AS n) g",
        ),
        &mut db,
    )
    .await
    .unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = s
            .customers()
            .list_customers(req(
                T,
                pb::ListCustomersRequest {
                    page_size: 77,
                    page_token: token,
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.customers.len() <= 77);
        for c in page.customers {
            assert!(
                seen.insert(c.id.clone()),
                "customer {} returned twice",
                c.id
            );
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), 1000);
    assert_eq!(pages, 13);
    // The default page size is 50; the maximum is 1000.
    let default = s
        .customers()
        .list_customers(req(T, pb::ListCustomersRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(default.customers.len(), 50);
    let big = s
        .customers()
        .list_customers(req(
            T,
            pb::ListCustomersRequest {
                page_size: 5000,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(big.customers.len(), 1000);
    assert!(big.next_page_token.is_empty());
}
