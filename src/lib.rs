//! gcdr-data: the GCDR data-access service.
//!
//! `domain` holds the entities and their rules, `storage` the store traits and
//! backends, `grpc` the tonic services; `config` and `telemetry` the process set-up.

pub mod app;
pub mod config;
pub mod domain;
pub mod grpc;
pub mod migration;
pub mod storage;
pub mod telemetry;

/// Generated protobuf and gRPC code for `gcdr.v1`.
pub mod pb {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("gcdr.v1");

    /// The encoded file descriptor set, served by the reflection service.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("gcdr_descriptor");
}
