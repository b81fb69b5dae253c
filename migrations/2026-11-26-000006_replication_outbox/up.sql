-- Copies a dual write still owes the other store, written in the same breath as the
-- write they follow (the authoritative store is PostgreSQL) and deleted once the copy
-- is applied or its failure recorded in replication_divergence. A row that outlives
-- the process that wrote it (kill -9, a crash) is replayed by any replica.
CREATE TABLE replication_outbox (
    intent_id    uuid PRIMARY KEY,
    tenant_id    text NOT NULL,
    entity       text NOT NULL,
    entity_id    text NOT NULL,
    target_store text NOT NULL CHECK (target_store IN ('dynamodb', 'postgres')),
    subtree      boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX replication_outbox_created_idx ON replication_outbox (created_at);
