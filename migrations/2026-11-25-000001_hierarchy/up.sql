-- Customers, assets and devices (RFC-0004 "Data Modeling").
--
-- Conventions:
-- * tenant ids are text (legacy tenants are strings such as `tenant-default`);
--   entity ids are UUIDs; every primary and foreign key includes tenant_id, so no row
--   can point into another tenant.
-- * parent pointers are the source of truth; `path` (`/<tenant>/<ids...>`) and `depth`
--   are derived and rewritten in the same transaction as any parent change.
-- * `path` uses the "C" collation so that a plain btree serves the descendant range
--   `path > p || '/' AND path < p || '0'` (under C.UTF-8 it could not serve LIKE).
-- * enums are text with CHECK constraints: a new legacy value is a one-line migration,
--   and a bad value is a constraint error, not an unknown-type error.
-- * foreign keys that a subtree move must temporarily break inside one transaction are
--   DEFERRABLE (INITIALLY IMMEDIATE): a move defers them and they are checked at commit.

CREATE TABLE customers (
    tenant_id          text        NOT NULL,
    id                 uuid        NOT NULL,
    parent_customer_id uuid,
    path               text COLLATE "C" NOT NULL,
    depth              integer     NOT NULL CHECK (depth >= 0),
    name               varchar(255) NOT NULL,
    display_name       varchar(255) NOT NULL,
    code               varchar(50) NOT NULL,
    type               text        NOT NULL CHECK (type IN ('HOLDING', 'COMPANY', 'BRANCH', 'FRANCHISE')),
    email              varchar(255),
    phone              varchar(50),
    address            jsonb,
    settings           jsonb       NOT NULL DEFAULT '{}',
    theme              jsonb,
    metadata           jsonb       NOT NULL DEFAULT '{}',
    status             text        NOT NULL DEFAULT 'ACTIVE' CHECK (status IN ('ACTIVE', 'INACTIVE')),
    version            bigint      NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL,
    created_by         text        NOT NULL,
    updated_by         text,
    CONSTRAINT customers_pkey PRIMARY KEY (tenant_id, id),
    CONSTRAINT customers_parent_fkey FOREIGN KEY (tenant_id, parent_customer_id)
        REFERENCES customers (tenant_id, id) DEFERRABLE INITIALLY IMMEDIATE,
    CONSTRAINT customers_not_own_parent CHECK (parent_customer_id IS DISTINCT FROM id),
    CONSTRAINT customers_tenant_code_key UNIQUE (tenant_id, code)
);
CREATE INDEX customers_tenant_parent_idx ON customers (tenant_id, parent_customer_id, id);
CREATE UNIQUE INDEX customers_tenant_path_idx ON customers (tenant_id, path);
CREATE INDEX customers_tenant_type_idx ON customers (tenant_id, type, id);
CREATE INDEX customers_tenant_status_idx ON customers (tenant_id, status, id);

CREATE TABLE assets (
    tenant_id       text        NOT NULL,
    id              uuid        NOT NULL,
    customer_id     uuid        NOT NULL,
    parent_asset_id uuid,
    path            text COLLATE "C" NOT NULL,
    depth           integer     NOT NULL CHECK (depth >= 0),
    name            varchar(255) NOT NULL,
    display_name    varchar(255) NOT NULL,
    code            varchar(50) NOT NULL,
    type            text        NOT NULL CHECK (type IN ('BUILDING', 'FLOOR', 'ROOM', 'EQUIPMENT', 'ZONE', 'OTHER')),
    description     varchar(1000),
    location        jsonb       NOT NULL DEFAULT '{}',
    specs           jsonb       NOT NULL DEFAULT '{}',
    tags            jsonb       NOT NULL DEFAULT '[]',
    metadata        jsonb       NOT NULL DEFAULT '{}',
    status          text        NOT NULL DEFAULT 'ACTIVE' CHECK (status IN ('ACTIVE', 'INACTIVE')),
    version         bigint      NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    created_by      text        NOT NULL,
    updated_by      text,
    CONSTRAINT assets_pkey PRIMARY KEY (tenant_id, id),
    -- Target of the same-customer parent and device foreign keys below.
    CONSTRAINT assets_tenant_customer_id_key UNIQUE (tenant_id, customer_id, id),
    CONSTRAINT assets_customer_fkey FOREIGN KEY (tenant_id, customer_id)
        REFERENCES customers (tenant_id, id) DEFERRABLE INITIALLY IMMEDIATE,
    -- A parent asset always belongs to the same customer as its child.
    CONSTRAINT assets_parent_fkey FOREIGN KEY (tenant_id, customer_id, parent_asset_id)
        REFERENCES assets (tenant_id, customer_id, id) DEFERRABLE INITIALLY IMMEDIATE,
    CONSTRAINT assets_not_own_parent CHECK (parent_asset_id IS DISTINCT FROM id),
    CONSTRAINT assets_tenant_customer_code_key UNIQUE (tenant_id, customer_id, code)
);
CREATE INDEX assets_tenant_customer_idx ON assets (tenant_id, customer_id, id);
CREATE INDEX assets_tenant_parent_idx ON assets (tenant_id, parent_asset_id, id);
CREATE UNIQUE INDEX assets_tenant_path_idx ON assets (tenant_id, path);

CREATE TABLE devices (
    tenant_id            text        NOT NULL,
    id                   uuid        NOT NULL,
    asset_id             uuid        NOT NULL,
    customer_id          uuid        NOT NULL,
    name                 varchar(255) NOT NULL,
    display_name         varchar(255) NOT NULL,
    label                varchar(100),
    type                 text        NOT NULL CHECK (type IN ('SENSOR', 'ACTUATOR', 'GATEWAY', 'CONTROLLER', 'METER', 'CAMERA', 'OTHER')),
    description          varchar(1000),
    serial_number        varchar(100) NOT NULL,
    external_id          varchar(100),
    specs                jsonb       NOT NULL DEFAULT '{}',
    credentials          jsonb,
    telemetry_config     jsonb       NOT NULL DEFAULT '{}',
    tags                 jsonb       NOT NULL DEFAULT '[]',
    metadata             jsonb       NOT NULL DEFAULT '{}',
    attributes           jsonb       NOT NULL DEFAULT '{}',
    connectivity_status  text        NOT NULL DEFAULT 'UNKNOWN' CHECK (connectivity_status IN ('ONLINE', 'OFFLINE', 'UNKNOWN')),
    last_connected_at    timestamptz,
    last_disconnected_at timestamptz,
    status               text        NOT NULL DEFAULT 'ACTIVE' CHECK (status IN ('ACTIVE', 'INACTIVE')),
    version              bigint      NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at           timestamptz NOT NULL,
    updated_at           timestamptz NOT NULL,
    created_by           text        NOT NULL,
    updated_by           text,
    CONSTRAINT devices_pkey PRIMARY KEY (tenant_id, id),
    -- The device's customer is always its asset's customer.
    CONSTRAINT devices_asset_fkey FOREIGN KEY (tenant_id, customer_id, asset_id)
        REFERENCES assets (tenant_id, customer_id, id) DEFERRABLE INITIALLY IMMEDIATE,
    CONSTRAINT devices_tenant_serial_key UNIQUE (tenant_id, serial_number)
);
CREATE INDEX devices_tenant_asset_idx ON devices (tenant_id, asset_id, id);
CREATE INDEX devices_tenant_customer_idx ON devices (tenant_id, customer_id, id);
