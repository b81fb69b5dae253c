//! PartnerService: lifecycle, credentials, and secrets that are shown exactly once.

use diesel_async::RunQueryDsl;
use gcdr_data::domain::device::sha256_hex;
use gcdr_data::pb;
use gcdr_data::pb::partner_service_client::PartnerServiceClient;
use prost_types::FieldMask;
use tonic::Code;

use crate::harness::*;

const T: &str = "tenant-default";

fn client(s: &TestServer) -> PartnerServiceClient<tonic::transport::Channel> {
    PartnerServiceClient::new(s.channel.clone())
}

pub fn partner(email: &str) -> pb::Partner {
    pb::Partner {
        company_name: "Acme Integrations".into(),
        company_website: "https://acme.example".into(),
        company_description: "Building integrations for facilities".into(),
        industry: "Software".into(),
        country: "Brazil".into(),
        contact_name: "Ana".into(),
        contact_email: email.into(),
        technical_contact_email: "tech@acme.example".into(),
        intended_use: "Sync devices into our BMS".into(),
        requested_scopes: vec!["devices:read".into()],
        ..Default::default()
    }
}

async fn register(s: &TestServer, email: &str) -> pb::Partner {
    client(s)
        .register_partner(req(
            T,
            pb::RegisterPartnerRequest {
                partner: Some(partner(email)),
            },
        ))
        .await
        .unwrap()
        .into_inner()
}

async fn approve(s: &TestServer, id: &str, scopes: &[&str]) -> pb::Partner {
    client(s)
        .approve_partner(req(
            T,
            pb::ApprovePartnerRequest {
                id: id.into(),
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                rate_limit_per_minute: None,
                rate_limit_per_day: None,
                monthly_quota: None,
            },
        ))
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_partner_lifecycle_follows_the_state_machine() {
    let s = TestServer::start().await;
    let p = register(&s, "ana@acme.example").await;
    assert_eq!(p.status, pb::PartnerStatus::Pending as i32);
    assert_eq!((p.rate_limit_per_minute, p.monthly_quota), (0, 0));
    assert_code(
        client(&s)
            .register_partner(req(
                T,
                pb::RegisterPartnerRequest {
                    partner: Some(partner("ANA@acme.example")),
                },
            ))
            .await,
        Code::AlreadyExists,
        "PARTNER_EMAIL_EXISTS",
    );
    let early = client(&s)
        .activate_partner(req(T, pb::ActivatePartnerRequest { id: p.id.clone() }))
        .await;
    let status = early.expect_err("PENDING cannot be activated");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("PENDING"),
        "names the current status: {}",
        status.message()
    );

    let approved = approve(&s, &p.id, &["devices:read", "customers:read"]).await;
    assert_eq!(approved.status, pb::PartnerStatus::Approved as i32);
    assert_eq!(
        (
            approved.rate_limit_per_minute,
            approved.rate_limit_per_day,
            approved.monthly_quota
        ),
        (100, 10_000, 100_000)
    );
    assert_eq!(approved.scopes, ["devices:read", "customers:read"]);
    let reject = client(&s)
        .reject_partner(req(
            T,
            pb::RejectPartnerRequest {
                id: p.id.clone(),
                reason: "Not a fit for us now".into(),
            },
        ))
        .await;
    assert_code(reject, Code::FailedPrecondition, "INVALID_PARTNER_STATUS");
    let short = client(&s)
        .suspend_partner(req(
            T,
            pb::SuspendPartnerRequest {
                id: p.id.clone(),
                reason: "bad".into(),
            },
        ))
        .await;
    assert_invalid(short, "reason");
    let suspended = client(&s)
        .suspend_partner(req(
            T,
            pb::SuspendPartnerRequest {
                id: p.id.clone(),
                reason: "Abuse of the API limits".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(suspended.status, pb::PartnerStatus::Suspended as i32);
    let active = client(&s)
        .activate_partner(req(T, pb::ActivatePartnerRequest { id: p.id.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(active.status, pb::PartnerStatus::Active as i32);
    let trail: Vec<i32> = active.transitions.iter().map(|t| t.status).collect();
    assert_eq!(
        trail,
        [
            pb::PartnerStatus::Approved as i32,
            pb::PartnerStatus::Suspended as i32,
            pb::PartnerStatus::Active as i32
        ]
    );
    assert_eq!(
        active.transitions[1].reason.as_deref(),
        Some("Abuse of the API limits")
    );
    assert_eq!(active.transitions[0].actor, "user-test");
    assert_eq!(active.version, 4);

    let other = register(&s, "bob@acme.example").await;
    let rejected = client(&s)
        .reject_partner(req(
            T,
            pb::RejectPartnerRequest {
                id: other.id.clone(),
                reason: "Not a fit for us now".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rejected.status, pb::PartnerStatus::Rejected as i32);
    let pending = client(&s)
        .list_partners(req(
            T,
            pb::ListPartnersRequest {
                status: pb::PartnerStatus::Rejected as i32,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pending.partners.len(), 1);

    let updated = client(&s)
        .update_partner(req(
            T,
            pb::UpdatePartnerRequest {
                id: p.id.clone(),
                partner: Some(pb::Partner {
                    contact_phone: Some("+55 11 5555-0000".into()),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["contact_phone".into()],
                }),
                expected_version: Some(4),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.contact_phone.as_deref(), Some("+55 11 5555-0000"));
    assert_eq!(updated.company_name, "Acme Integrations");
    let missing = client(&s)
        .get_partner(req(
            "tenant-other",
            pb::GetPartnerRequest { id: p.id.clone() },
        ))
        .await;
    assert_code(missing, Code::NotFound, "PARTNER_NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_registrations_name_every_field() {
    let s = TestServer::start().await;
    let bad = pb::Partner {
        company_website: "ftp://x".into(),
        company_description: "short".into(),
        contact_email: "nope".into(),
        requested_scopes: vec!["devices:*".into()],
        ..partner("x@y.example")
    };
    let status = client(&s)
        .register_partner(req(T, pb::RegisterPartnerRequest { partner: Some(bad) }))
        .await
        .unwrap_err();
    for field in [
        "partner.company_website",
        "partner.company_description",
        "partner.contact_email",
        "partner.requested_scopes[0]",
    ] {
        assert_invalid(Err::<(), _>(status.clone()), field);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_returned_once_stored_hashed_and_never_shown_again() {
    let s = TestServer::start().await;
    let p = register(&s, "ana@acme.example").await;
    let key_req = |scopes: &[&str]| pb::CreateApiKeyRequest {
        partner_id: p.id.clone(),
        name: "ci".into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        expire_time: None,
    };
    assert_code(
        client(&s)
            .create_api_key(req(T, key_req(&["devices:read"])))
            .await,
        Code::FailedPrecondition,
        "INVALID_PARTNER_STATUS",
    );
    let approved = approve(&s, &p.id, &["devices:read"]).await;
    assert_invalid(
        client(&s)
            .create_api_key(req(T, key_req(&["devices:write"])))
            .await,
        "scopes",
    );

    let mut secrets = Vec::new();
    let created = client(&s)
        .create_api_key(req(T, key_req(&["devices:read"])))
        .await
        .unwrap()
        .into_inner();
    assert!(created.key.starts_with("gcdr_live_") && created.key.len() == 58);
    let first = created.api_key.clone().unwrap();
    assert!(created.key.starts_with(&first.key_prefix));
    secrets.push(created.key.clone());
    let rotated = client(&s)
        .rotate_api_key(req(
            T,
            pb::RotateApiKeyRequest {
                partner_id: p.id.clone(),
                key_id: first.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    secrets.push(rotated.key.clone());
    let second = rotated.api_key.clone().unwrap();
    assert_eq!(
        (second.name.as_str(), second.scopes.clone()),
        ("ci", vec!["devices:read".to_owned()])
    );
    assert_ne!(second.key_prefix, first.key_prefix);
    let keys = client(&s)
        .list_api_keys(req(
            T,
            pb::ListApiKeysRequest {
                partner_id: p.id.clone(),
                status: 0,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let statuses: Vec<i32> = keys.api_keys.iter().map(|k| k.status).collect();
    assert_eq!(
        statuses,
        [
            pb::CredentialStatus::Revoked as i32,
            pb::CredentialStatus::Active as i32
        ]
    );
    let again = client(&s)
        .revoke_api_key(req(
            T,
            pb::RevokeApiKeyRequest {
                partner_id: p.id.clone(),
                key_id: first.id.clone(),
            },
        ))
        .await;
    assert_code(again, Code::FailedPrecondition, "ALREADY_REVOKED");

    let oauth = client(&s)
        .create_o_auth_client(req(
            T,
            pb::CreateOAuthClientRequest {
                partner_id: p.id.clone(),
                name: "bms".into(),
                redirect_uris: vec![],
                scopes: vec!["devices:read".into()],
                grant_types: vec![],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(oauth.client_secret.starts_with("gcdr_secret_"));
    secrets.push(oauth.client_secret.clone());
    let client_id = oauth.client.clone().unwrap().client_id;
    assert_eq!(oauth.client.unwrap().grant_types, ["client_credentials"]);
    let hook = client(&s)
        .create_webhook(req(
            T,
            pb::CreateWebhookRequest {
                partner_id: p.id.clone(),
                url: "https://acme.example/hook".into(),
                events: vec!["device.created".into()],
                secret: None,
                enabled: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    secrets.push(hook.secret.clone());
    let supplied = client(&s)
        .create_webhook(req(
            T,
            pb::CreateWebhookRequest {
                partner_id: p.id.clone(),
                url: "https://acme.example/hook2".into(),
                events: vec!["device.updated".into()],
                secret: Some("my-own-webhook-secret-123".into()),
                enabled: Some(false),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(supplied.secret, "my-own-webhook-secret-123");
    secrets.push(supplied.secret.clone());
    // Each of the five credential changes (not the refused ones) moved the partner's
    // version, as in the legacy service and on DynamoDB.
    let now = client(&s)
        .get_partner(req(T, pb::GetPartnerRequest { id: p.id.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now.version, approved.version + 5);

    // Every other response, in every RPC that returns partner data.
    let mut c = client(&s);
    let pid = p.id.clone();
    let responses: Vec<String> = vec![
        format!(
            "{:?}",
            c.get_partner(req(T, pb::GetPartnerRequest { id: pid.clone() }))
                .await
                .unwrap()
        ),
        format!(
            "{:?}",
            c.list_partners(req(T, pb::ListPartnersRequest::default()))
                .await
                .unwrap()
        ),
        format!(
            "{:?}",
            c.list_api_keys(req(
                T,
                pb::ListApiKeysRequest {
                    partner_id: pid.clone(),
                    status: 0
                }
            ))
            .await
            .unwrap()
        ),
        format!(
            "{:?}",
            c.list_o_auth_clients(req(
                T,
                pb::ListOAuthClientsRequest {
                    partner_id: pid.clone(),
                    status: 0
                }
            ))
            .await
            .unwrap()
        ),
        format!(
            "{:?}",
            c.list_webhooks(req(
                T,
                pb::ListWebhooksRequest {
                    partner_id: pid.clone()
                }
            ))
            .await
            .unwrap()
        ),
        format!(
            "{:?}",
            c.revoke_api_key(req(
                T,
                pb::RevokeApiKeyRequest {
                    partner_id: pid.clone(),
                    key_id: second.id.clone()
                }
            ))
            .await
            .unwrap()
        ),
        format!(
            "{:?}",
            c.revoke_o_auth_client(req(
                T,
                pb::RevokeOAuthClientRequest {
                    partner_id: pid.clone(),
                    client_id: client_id.clone()
                }
            ))
            .await
            .unwrap()
        ),
        format!(
            "{:?}",
            c.update_partner(req(
                T,
                pb::UpdatePartnerRequest {
                    id: pid.clone(),
                    partner: Some(pb::Partner {
                        industry: "IoT".into(),
                        ..Default::default()
                    }),
                    update_mask: Some(FieldMask {
                        paths: vec!["industry".into()]
                    }),
                    expected_version: None,
                }
            ))
            .await
            .unwrap()
        ),
    ];
    for secret in &secrets {
        let hash = sha256_hex(secret);
        for r in &responses {
            assert!(!r.contains(&secret[8..]), "a secret leaked: {r}");
            assert!(!r.contains(&hash), "a secret's hash leaked: {r}");
        }
    }
    // At rest: hashes only.
    #[derive(diesel::QueryableByName)]
    struct Dump {
        #[diesel(sql_type = diesel::sql_types::Text)]
        t: String,
    }
    let mut db = s.db().await;
    let dump: Vec<Dump> = diesel::sql_query(
        "SELECT (SELECT string_agg(k::text, ' ') FROM partner_api_keys k) || (SELECT string_agg(o::text, ' ') FROM partner_oauth_clients o)
              || (SELECT string_agg(w::text, ' ') FROM partner_webhooks w) || (SELECT string_agg(p::text, ' ') FROM partners p) AS t",
    )
    .load(&mut db)
    .await
    .unwrap();
    for secret in &secrets {
        assert!(
            !dump[0].t.contains(secret.as_str()),
            "stored in plain text: {secret}"
        );
        assert!(
            dump[0].t.contains(&sha256_hex(secret)),
            "hash of {secret} not stored"
        );
    }
    let hooks = client(&s)
        .list_webhooks(req(
            T,
            pb::ListWebhooksRequest {
                partner_id: pid.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    client(&s)
        .delete_webhook(req(
            T,
            pb::DeleteWebhookRequest {
                partner_id: pid.clone(),
                webhook_id: hooks.webhooks[0].id.clone(),
            },
        ))
        .await
        .unwrap();
    let left = client(&s)
        .list_webhooks(req(T, pb::ListWebhooksRequest { partner_id: pid }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(left.webhooks.len(), 1);
}
