//! Code generator for `tikv-proto`.
//!
//! `protox` parses our `.proto` files in pure Rust (no system `protoc`), and
//! `tonic-prost-build` turns the descriptor set into prost messages plus tonic
//! client/server stubs. The output is committed under `proto/src/generated/`;
//! the `freshness` test regenerates into a temporary directory and fails when
//! the committed files differ, so a `.proto` edit without regeneration is
//! caught by CI.

use std::path::{Path, PathBuf};

/// The schema files we compile, in dependency order (the order does not
/// affect the output; it only makes error messages read top-down).
pub const PROTO_FILES: &[&str] = &[
    "apipb.proto",
    "encryptionpb.proto",
    "metapb.proto",
    "errorpb.proto",
    "deadlock.proto",
    "tracepb.proto",
    "resource_manager.proto",
    "kvrpcpb.proto",
    "coprocessor.proto",
    "tikvpb.proto",
    "eraftpb.proto",
    "pdpb.proto",
    "keyspacepb.proto",
    "meta_storagepb.proto",
    "health.proto",
];

/// Packages of [`PROTO_FILES`] that are not kvproto's, so the kvproto schema
/// check skips them: gRPC's own health checking protocol, which TiKV serves
/// next to its kvproto services.
pub const NON_KVPROTO_PACKAGES: &[&str] = &["grpc.health.v1"];

/// The packages that have a gRPC service; their tonic modules are gated
/// behind the `grpc` feature of `tikv-proto` so the sans-IO core never
/// compiles tonic.
const SERVICE_PACKAGES: &[&str] =
    &["tikvpb", "pdpb", "keyspacepb", "meta_storagepb", "grpc.health.v1"];

/// The `proto/` directory of the workspace (parent of this crate).
pub fn proto_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("gen crate lives in proto/gen")
        .to_path_buf()
}

/// Generates Rust for every file in [`PROTO_FILES`] into `out_dir`.
pub fn generate(out_dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let src = proto_dir().join("proto");
    let files: Vec<PathBuf> = PROTO_FILES.iter().map(|f| src.join(f)).collect();
    let fds = protox::compile(&files, [&src])?;
    std::fs::create_dir_all(out_dir)?;
    let mut builder = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        // Servers (the simulator) implement only what they serve; the rest
        // answer `Unimplemented`, as a real server does for an unknown method.
        .generate_default_stubs(true)
        .emit_rerun_if_changed(false)
        // Keys and values are `bytes::Bytes`: a response buffer is sliced,
        // not copied, on its way to the caller.
        .bytes(".")
        // A `BatchCommands` entry's command is boxed: the request and
        // response enums would otherwise be as large as their largest
        // command (0.8 and 2.4 KB), copied whole at every move, and the core
        // keeps each request and response boxed already, so the box moves
        // between the two without a copy or an allocation.
        .boxed(".tikvpb.BatchCommandsRequest.Request.cmd")
        .boxed(".tikvpb.BatchCommandsResponse.Response.cmd")
        .out_dir(out_dir);
    for pkg in SERVICE_PACKAGES {
        builder = builder
            .client_mod_attribute(pkg, "#[cfg(feature = \"grpc\")]")
            .server_mod_attribute(pkg, "#[cfg(feature = \"grpc\")]");
    }
    builder.compile_fds(fds)?;
    Ok(())
}
