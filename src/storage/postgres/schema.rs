// Diesel table definitions for migrations/ (the layout `diesel print-schema` writes;
// every integration test selects every column, so a drift fails the suite).

diesel::table! {
    customers (tenant_id, id) {
        tenant_id -> Text,
        id -> Uuid,
        parent_customer_id -> Nullable<Uuid>,
        path -> Text,
        depth -> Int4,
        #[max_length = 255]
        name -> Varchar,
        #[max_length = 255]
        display_name -> Varchar,
        #[max_length = 50]
        code -> Varchar,
        #[sql_name = "type"]
        type_ -> Text,
        #[max_length = 255]
        email -> Nullable<Varchar>,
        #[max_length = 50]
        phone -> Nullable<Varchar>,
        address -> Nullable<Jsonb>,
        settings -> Jsonb,
        theme -> Nullable<Jsonb>,
        metadata -> Jsonb,
        status -> Text,
        version -> Int8,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        created_by -> Text,
        updated_by -> Nullable<Text>,
    }
}

diesel::table! {
    assets (tenant_id, id) {
        tenant_id -> Text,
        id -> Uuid,
        customer_id -> Uuid,
        parent_asset_id -> Nullable<Uuid>,
        path -> Text,
        depth -> Int4,
        #[max_length = 255]
        name -> Varchar,
        #[max_length = 255]
        display_name -> Varchar,
        #[max_length = 50]
        code -> Varchar,
        #[sql_name = "type"]
        type_ -> Text,
        #[max_length = 1000]
        description -> Nullable<Varchar>,
        location -> Jsonb,
        specs -> Jsonb,
        tags -> Jsonb,
        metadata -> Jsonb,
        status -> Text,
        version -> Int8,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        created_by -> Text,
        updated_by -> Nullable<Text>,
    }
}

diesel::table! {
    devices (tenant_id, id) {
        tenant_id -> Text,
        id -> Uuid,
        asset_id -> Uuid,
        customer_id -> Uuid,
        #[max_length = 255]
        name -> Varchar,
        #[max_length = 255]
        display_name -> Varchar,
        #[max_length = 100]
        label -> Nullable<Varchar>,
        #[sql_name = "type"]
        type_ -> Text,
        #[max_length = 1000]
        description -> Nullable<Varchar>,
        #[max_length = 100]
        serial_number -> Varchar,
        #[max_length = 100]
        external_id -> Nullable<Varchar>,
        specs -> Jsonb,
        credentials -> Nullable<Jsonb>,
        telemetry_config -> Jsonb,
        tags -> Jsonb,
        metadata -> Jsonb,
        attributes -> Jsonb,
        connectivity_status -> Text,
        last_connected_at -> Nullable<Timestamptz>,
        last_disconnected_at -> Nullable<Timestamptz>,
        status -> Text,
        version -> Int8,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        created_by -> Text,
        updated_by -> Nullable<Text>,
    }
}

diesel::table! {
    policies (tenant_id, id) {
        tenant_id -> Text,
        id -> Uuid,
        #[max_length = 100]
        key -> Varchar,
        #[max_length = 255]
        display_name -> Varchar,
        #[max_length = 1000]
        description -> Varchar,
        allow -> Array<Text>,
        deny -> Array<Text>,
        conditions -> Nullable<Jsonb>,
        risk_level -> Text,
        is_system -> Bool,
        version -> Int8,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        created_by -> Text,
        updated_by -> Nullable<Text>,
    }
}

diesel::table! {
    roles (tenant_id, id) {
        tenant_id -> Text,
        id -> Uuid,
        #[max_length = 100]
        key -> Varchar,
        #[max_length = 255]
        display_name -> Varchar,
        #[max_length = 1000]
        description -> Varchar,
        tags -> Array<Text>,
        risk_level -> Text,
        is_system -> Bool,
        version -> Int8,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        created_by -> Text,
        updated_by -> Nullable<Text>,
    }
}

diesel::table! {
    role_policies (tenant_id, role_id, policy_id) {
        tenant_id -> Text,
        role_id -> Uuid,
        policy_id -> Uuid,
        position -> Int4,
    }
}

diesel::table! {
    role_assignments (tenant_id, id) {
        tenant_id -> Text,
        id -> Uuid,
        #[max_length = 255]
        user_id -> Varchar,
        role_id -> Uuid,
        #[max_length = 500]
        scope -> Varchar,
        status -> Text,
        expires_at -> Nullable<Timestamptz>,
        granted_by -> Text,
        granted_at -> Timestamptz,
        #[max_length = 500]
        reason -> Nullable<Varchar>,
        revoked_by -> Nullable<Text>,
        revoked_at -> Nullable<Timestamptz>,
        version -> Int8,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        created_by -> Text,
        updated_by -> Nullable<Text>,
    }
}

diesel::table! {
    partners (tenant_id, id) {
        tenant_id -> Text,
        id -> Uuid,
        status -> Text,
        company_name -> Varchar,
        company_website -> Varchar,
        company_description -> Varchar,
        industry -> Varchar,
        country -> Varchar,
        contact_name -> Varchar,
        contact_email -> Varchar,
        contact_phone -> Nullable<Varchar>,
        technical_contact_email -> Varchar,
        intended_use -> Varchar,
        requested_scopes -> Array<Text>,
        webhook_url -> Nullable<Varchar>,
        ip_whitelist -> Array<Text>,
        scopes -> Array<Text>,
        rate_limit_per_minute -> Int4,
        rate_limit_per_day -> Int4,
        monthly_quota -> Int4,
        transitions -> Jsonb,
        version -> Int8,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        created_by -> Text,
        updated_by -> Nullable<Text>,
    }
}

diesel::table! {
    partner_api_keys (tenant_id, partner_id, id) {
        tenant_id -> Text,
        partner_id -> Uuid,
        id -> Uuid,
        name -> Varchar,
        key_hash -> Bpchar,
        key_prefix -> Varchar,
        scopes -> Array<Text>,
        expires_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        revoked_at -> Nullable<Timestamptz>,
        status -> Text,
    }
}

diesel::table! {
    partner_oauth_clients (tenant_id, partner_id, client_id) {
        tenant_id -> Text,
        partner_id -> Uuid,
        client_id -> Varchar,
        name -> Varchar,
        client_secret_hash -> Bpchar,
        redirect_uris -> Array<Text>,
        scopes -> Array<Text>,
        grant_types -> Array<Text>,
        created_at -> Timestamptz,
        revoked_at -> Nullable<Timestamptz>,
        status -> Text,
    }
}

diesel::table! {
    partner_webhooks (tenant_id, partner_id, id) {
        tenant_id -> Text,
        partner_id -> Uuid,
        id -> Uuid,
        url -> Varchar,
        events -> Array<Text>,
        secret_hash -> Bpchar,
        enabled -> Bool,
        created_at -> Timestamptz,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    assets,
    customers,
    devices,
    policies,
    roles,
    role_policies,
    role_assignments,
    partners,
    partner_api_keys,
    partner_oauth_clients,
    partner_webhooks
);

diesel::table! {
    storage_modes (scope) {
        scope -> Text,
        mode -> Text,
        updated_at -> Timestamptz,
        updated_by -> Text,
        reason -> Nullable<Text>,
    }
}

diesel::table! {
    replication_divergence (tenant_id, entity, entity_id, target_store) {
        tenant_id -> Text,
        entity -> Text,
        entity_id -> Text,
        target_store -> Text,
        operation -> Text,
        error -> Text,
        failures -> Int8,
        first_failed_at -> Timestamptz,
        last_failed_at -> Timestamptz,
    }
}

diesel::table! {
    replication_outbox (intent_id) {
        intent_id -> Uuid,
        tenant_id -> Text,
        entity -> Text,
        entity_id -> Text,
        target_store -> Text,
        subtree -> Bool,
        created_at -> Timestamptz,
    }
}
