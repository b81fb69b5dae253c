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

diesel::allow_tables_to_appear_in_same_query!(assets, customers, devices);
