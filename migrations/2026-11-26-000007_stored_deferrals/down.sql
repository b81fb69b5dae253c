DROP TABLE replica_tombstones;
ALTER TABLE backfill_deferred DROP COLUMN item;
