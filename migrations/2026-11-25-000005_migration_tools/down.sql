DROP TABLE migration_repairs;
DROP TABLE migration_quarantine;
DROP TABLE backfill_deferred;
DROP TABLE backfill_checkpoints;
DROP TABLE backfill_runs;
