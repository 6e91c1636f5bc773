//! Compiles the protobuf schemas with protox (pure Rust, no system `protoc`).
//! The public contract (`deltamesh.v1`) is always built; the fleet's internal
//! messages (`deltamesh.fleet.v1`) are built too, with the registry's gRPC
//! client and server only under the `grpc` feature, so the browser build
//! stays lean.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/deltamesh/v1/command.proto",
        "proto/deltamesh/fleet/v1/registry.proto",
        "proto/deltamesh/fleet/v1/relay.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    tonic_prost_build::configure()
        .build_client(grpc)
        .build_server(grpc)
        .compile_fds(descriptors)?;
    Ok(())
}
