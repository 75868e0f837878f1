//! Compiles `proto/` with protox (no system protoc) and generates the tonic services.
//!
//! Writes two things to OUT_DIR: the generated Rust code, and `callstore_descriptor.bin`, the
//! encoded descriptor set (callstore's files and every file they import) that the reflection
//! service serves, so grpcurl can describe and call every RPC without local .proto files.

use std::path::PathBuf;

use prost::Message as _;

const PROTO_ROOT: &str = "proto";
const PROTO_FILES: &[&str] = &[
    "callstore/v1/common.proto",
    "callstore/v1/task.proto",
    "callstore/v1/tag.proto",
    "callstore/v1/level.proto",
    "callstore/v1/quality.proto",
    "callstore/v1/call.proto",
    "callstore/v1/ingest_service.proto",
    "callstore/v1/query_service.proto",
    "callstore/v1/watch_service.proto",
    "callstore/v1/quality_service.proto",
];

const SERDE_ENUMS: &[&str] = &[
    "SourceFormat",
    "Carrier",
    "Speaker",
    "TaskRunState",
    "NumberStatus",
    "CallState",
    "CallOutcome",
    "Gender",
    "HangupSide",
    "TransferState",
    "TransferTarget",
    "CallMode",
    "Satisfaction",
    "NumberCheckStatus",
    "NodeType",
    "JumpType",
    "QualitySource",
    "QualityStatus",
    "EmotionPolarity",
    "Severity",
    "QualityCallType",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let file_descriptors = protox::compile(PROTO_FILES, [PROTO_ROOT])?;

    std::fs::write(
        out_dir.join("callstore_descriptor.bin"),
        file_descriptors.encode_to_vec(),
    )?;

    let mut builder = tonic_prost_build::configure();
    // Code-table enums double as domain values (stored as their numbers); serde lets domain
    // structs that hold them be hashed and kept as JSON.
    for enum_name in SERDE_ENUMS {
        builder = builder.enum_attribute(
            format!(".callstore.v1.{enum_name}"),
            "#[derive(::serde::Serialize, ::serde::Deserialize)]",
        );
    }
    builder
        .build_client(true)
        .build_server(true)
        .extern_path(".google.rpc", "::tonic_types::pb")
        .generate_default_stubs(true)
        .compile_fds(file_descriptors)?;
    Ok(())
}
