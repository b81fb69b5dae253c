-- Roles, policies, role assignments (contract §1.5-1.7, §3.5-3.7, §4).
--
-- * role -> policy is a real relation (role_policies), ordered by position; a policy
--   in use cannot be deleted (RESTRICT), a role's links go with it (CASCADE).
-- * permission patterns are text arrays; their syntax is checked by the service.
-- * keys: the API creates only `^[a-z][a-z0-9_]*$`, but legacy and seed data hold keys
--   such as `role:super-admin`, so the table accepts any non-blank key.
-- * at most one *active* assignment per (tenant, user, role, scope): a partial unique
--   index, so concurrent assigns cannot both win. Expiry is a timestamp, compared as
--   time; an assignment past it is treated as not active whatever its status says.

CREATE TABLE policies (
    tenant_id    text         NOT NULL,
    id           uuid         NOT NULL,
    key          varchar(100) NOT NULL CHECK (key <> ''),
    display_name varchar(255) NOT NULL,
    description  varchar(1000) NOT NULL DEFAULT '',
    allow        text[]       NOT NULL DEFAULT '{}',
    deny         text[]       NOT NULL DEFAULT '{}',
    conditions   jsonb,
    risk_level   text         NOT NULL DEFAULT 'low' CHECK (risk_level IN ('low', 'medium', 'high', 'critical')),
    is_system    boolean      NOT NULL DEFAULT false,
    version      bigint       NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at   timestamptz  NOT NULL,
    updated_at   timestamptz  NOT NULL,
    created_by   text         NOT NULL,
    updated_by   text,
    CONSTRAINT policies_pkey PRIMARY KEY (tenant_id, id),
    CONSTRAINT policies_tenant_key_key UNIQUE (tenant_id, key)
);

CREATE TABLE roles (
    tenant_id    text         NOT NULL,
    id           uuid         NOT NULL,
    key          varchar(100) NOT NULL CHECK (key <> ''),
    display_name varchar(255) NOT NULL,
    description  varchar(1000) NOT NULL DEFAULT '',
    tags         text[]       NOT NULL DEFAULT '{}',
    risk_level   text         NOT NULL DEFAULT 'low' CHECK (risk_level IN ('low', 'medium', 'high', 'critical')),
    is_system    boolean      NOT NULL DEFAULT false,
    version      bigint       NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at   timestamptz  NOT NULL,
    updated_at   timestamptz  NOT NULL,
    created_by   text         NOT NULL,
    updated_by   text,
    CONSTRAINT roles_pkey PRIMARY KEY (tenant_id, id),
    CONSTRAINT roles_tenant_key_key UNIQUE (tenant_id, key)
);

CREATE TABLE role_policies (
    tenant_id text    NOT NULL,
    role_id   uuid    NOT NULL,
    policy_id uuid    NOT NULL,
    position  integer NOT NULL,
    CONSTRAINT role_policies_pkey PRIMARY KEY (tenant_id, role_id, policy_id),
    CONSTRAINT role_policies_role_fkey FOREIGN KEY (tenant_id, role_id)
        REFERENCES roles (tenant_id, id) ON DELETE CASCADE,
    CONSTRAINT role_policies_policy_fkey FOREIGN KEY (tenant_id, policy_id)
        REFERENCES policies (tenant_id, id) ON DELETE RESTRICT
);
CREATE INDEX role_policies_policy_idx ON role_policies (tenant_id, policy_id);

CREATE TABLE role_assignments (
    tenant_id  text         NOT NULL,
    id         uuid         NOT NULL,
    user_id    varchar(255) NOT NULL,
    role_id    uuid         NOT NULL,
    scope      varchar(500) NOT NULL,
    status     text         NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'inactive', 'expired')),
    expires_at timestamptz,
    granted_by text         NOT NULL,
    granted_at timestamptz  NOT NULL,
    reason     varchar(500),
    revoked_by text,
    revoked_at timestamptz,
    version    bigint       NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at timestamptz  NOT NULL,
    updated_at timestamptz  NOT NULL,
    created_by text         NOT NULL,
    updated_by text,
    CONSTRAINT role_assignments_pkey PRIMARY KEY (tenant_id, id),
    -- Deleting a role takes its (inactive) assignment history with it; the service
    -- refuses while an active one exists.
    CONSTRAINT role_assignments_role_fkey FOREIGN KEY (tenant_id, role_id)
        REFERENCES roles (tenant_id, id) ON DELETE CASCADE
);
CREATE UNIQUE INDEX role_assignments_one_active ON role_assignments (tenant_id, user_id, role_id, scope)
    WHERE status = 'active';
CREATE INDEX role_assignments_user_idx ON role_assignments (tenant_id, user_id, id);
CREATE INDEX role_assignments_role_idx ON role_assignments (tenant_id, role_id, id);
CREATE INDEX role_assignments_scope_idx ON role_assignments (tenant_id, scope, id);
