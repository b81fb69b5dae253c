//! Integration tests: the real gRPC server over loopback against real PostgreSQL.

mod access;
mod assets;
mod backfill;
mod customers;
mod devices;
mod harness;
mod hierarchy;
mod isolation;
mod legacy_items;
mod migration_verify;
mod outbox;
mod partners;
mod server;
mod storage_modes;
mod validation;
