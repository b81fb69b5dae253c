DROP TABLE replication_divergence;
DROP TABLE storage_modes;
