-- Partners and their credentials (contract §1.4, §3.4). Legacy kept API keys, OAuth
-- clients and webhooks as lists inside the partner item; here each is a table keyed
-- by (tenant, partner, id). Secrets are stored only as SHA-256 (hex).

CREATE TABLE partners (
    tenant_id               text         NOT NULL,
    id                      uuid         NOT NULL,
    status                  text         NOT NULL DEFAULT 'PENDING'
        CHECK (status IN ('PENDING', 'APPROVED', 'ACTIVE', 'SUSPENDED', 'REJECTED')),
    company_name            varchar(255) NOT NULL,
    company_website         varchar(255) NOT NULL,
    company_description     varchar(2000) NOT NULL,
    industry                varchar(100) NOT NULL,
    country                 varchar(100) NOT NULL,
    contact_name            varchar(255) NOT NULL,
    contact_email           varchar(255) NOT NULL,
    contact_phone           varchar(50),
    technical_contact_email varchar(255) NOT NULL,
    intended_use            varchar(2000) NOT NULL,
    requested_scopes        text[]       NOT NULL DEFAULT '{}',
    webhook_url             varchar(500),
    ip_whitelist            text[]       NOT NULL DEFAULT '{}',
    scopes                  text[]       NOT NULL DEFAULT '{}',
    rate_limit_per_minute   integer      NOT NULL DEFAULT 0,
    rate_limit_per_day      integer      NOT NULL DEFAULT 0,
    monthly_quota           integer      NOT NULL DEFAULT 0,
    -- [{status, actor, time, reason?}], oldest first.
    transitions             jsonb        NOT NULL DEFAULT '[]',
    version                 bigint       NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at              timestamptz  NOT NULL,
    updated_at              timestamptz  NOT NULL,
    created_by              text         NOT NULL,
    updated_by              text,
    CONSTRAINT partners_pkey PRIMARY KEY (tenant_id, id),
    CONSTRAINT partners_tenant_email_key UNIQUE (tenant_id, contact_email)
);
CREATE INDEX partners_tenant_status_idx ON partners (tenant_id, status, id);

CREATE TABLE partner_api_keys (
    tenant_id  text         NOT NULL,
    partner_id uuid         NOT NULL,
    id         uuid         NOT NULL,
    name       varchar(100) NOT NULL,
    key_hash   char(64)     NOT NULL,
    key_prefix varchar(32)  NOT NULL,
    scopes     text[]       NOT NULL,
    expires_at timestamptz,
    created_at timestamptz  NOT NULL,
    revoked_at timestamptz,
    status     text         NOT NULL DEFAULT 'ACTIVE' CHECK (status IN ('ACTIVE', 'REVOKED')),
    CONSTRAINT partner_api_keys_pkey PRIMARY KEY (tenant_id, partner_id, id),
    CONSTRAINT partner_api_keys_partner_fkey FOREIGN KEY (tenant_id, partner_id)
        REFERENCES partners (tenant_id, id) ON DELETE CASCADE,
    CONSTRAINT partner_api_keys_hash_key UNIQUE (key_hash)
);

CREATE TABLE partner_oauth_clients (
    tenant_id          text         NOT NULL,
    partner_id         uuid         NOT NULL,
    client_id          varchar(64)  NOT NULL,
    name               varchar(100) NOT NULL,
    client_secret_hash char(64)     NOT NULL,
    redirect_uris      text[]       NOT NULL DEFAULT '{}',
    scopes             text[]       NOT NULL,
    grant_types        text[]       NOT NULL,
    created_at         timestamptz  NOT NULL,
    revoked_at         timestamptz,
    status             text         NOT NULL DEFAULT 'ACTIVE' CHECK (status IN ('ACTIVE', 'REVOKED')),
    CONSTRAINT partner_oauth_clients_pkey PRIMARY KEY (tenant_id, partner_id, client_id),
    CONSTRAINT partner_oauth_clients_partner_fkey FOREIGN KEY (tenant_id, partner_id)
        REFERENCES partners (tenant_id, id) ON DELETE CASCADE
);

CREATE TABLE partner_webhooks (
    tenant_id   text         NOT NULL,
    partner_id  uuid         NOT NULL,
    id          uuid         NOT NULL,
    url         varchar(500) NOT NULL,
    events      text[]       NOT NULL,
    secret_hash char(64)     NOT NULL,
    enabled     boolean      NOT NULL DEFAULT true,
    created_at  timestamptz  NOT NULL,
    CONSTRAINT partner_webhooks_pkey PRIMARY KEY (tenant_id, partner_id, id),
    CONSTRAINT partner_webhooks_partner_fkey FOREIGN KEY (tenant_id, partner_id)
        REFERENCES partners (tenant_id, id) ON DELETE CASCADE
);
