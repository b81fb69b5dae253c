-- The runtime storage switch (RFC-0004 phases): the global mode (scope '*') and
-- per-tenant overrides. Every replica polls this table.
CREATE TABLE storage_modes (
    scope       text PRIMARY KEY,
    mode        text NOT NULL CHECK (mode IN
                    ('dynamodb', 'dual_dynamodb_primary', 'dual_postgres_primary', 'postgres')),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text NOT NULL,
    reason      text
);

-- Secondary writes of a dual write that failed (or were never confirmed), one row per
-- record, for reconcile to repair. A later failure of the same record updates the row.
CREATE TABLE replication_divergence (
    tenant_id    text NOT NULL,
    entity       text NOT NULL,
    entity_id    text NOT NULL,
    target_store text NOT NULL CHECK (target_store IN ('dynamodb', 'postgres')),
    operation    text NOT NULL,
    error        text NOT NULL,
    failures     bigint NOT NULL DEFAULT 1,
    first_failed_at timestamptz NOT NULL DEFAULT now(),
    last_failed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, entity, entity_id, target_store)
);
CREATE INDEX replication_divergence_last_idx ON replication_divergence (last_failed_at);
