-- A deferred item keeps the item as scanned (DynamoDB JSON, as text), so the deferred
-- pass loads it from here instead of reading it from DynamoDB again. NULL (rows from
-- before this column, or items that cannot round-trip) are re-read.
ALTER TABLE backfill_deferred ADD COLUMN item text;

-- A record removed from PostgreSQL as a replica (dual write's copy of a delete,
-- reconcile, outbox replay). A backfill skips an item whose key was removed since the
-- run started: the item was read before the delete and must not come back.
CREATE TABLE replica_tombstones (
    entity     text NOT NULL,
    tenant_id  text NOT NULL,
    id         text NOT NULL,
    deleted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (entity, tenant_id, id)
);
