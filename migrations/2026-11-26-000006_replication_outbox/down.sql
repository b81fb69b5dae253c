DROP TABLE replication_outbox;
