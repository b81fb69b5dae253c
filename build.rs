//! Compiles the gcdr.v1 protos with a vendored protoc, and writes the file descriptor
//! set that the reflection service serves.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: build scripts are single-threaded; nothing else reads the environment.
    unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        "proto/gcdr/v1/common.proto",
        "proto/gcdr/v1/customer.proto",
        "proto/gcdr/v1/asset.proto",
        "proto/gcdr/v1/device.proto",
        "proto/gcdr/v1/policy.proto",
        "proto/gcdr/v1/role.proto",
        "proto/gcdr/v1/role_assignment.proto",
        "proto/gcdr/v1/authorization.proto",
        "proto/gcdr/v1/partner.proto",
        "proto/gcdr/v1/storage_admin.proto",
    ];
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("gcdr_descriptor.bin"))
        .compile_protos(&protos, &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
