//! Compiles `proto/tandem/v1/*.proto` with protox (pure Rust, no `protoc` binary) and generates
//! prost messages, plus tonic client stubs with feature `client` and server traits with feature
//! `server`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/tandem/v1/attestation.proto",
        "proto/tandem/v1/sealed.proto",
        "proto/tandem/v1/gateway.proto",
        "proto/tandem/v1/node.proto",
        "proto/tandem/v1/log.proto",
        "proto/tandem/v1/inference.proto",
        "proto/tandem/v1/device.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(std::env::var_os("CARGO_FEATURE_CLIENT").is_some())
        .build_server(std::env::var_os("CARGO_FEATURE_SERVER").is_some())
        .build_transport(false)
        // Undecodable requests are INVALID_ARGUMENT, undecodable responses INTERNAL.
        .codec_path("crate::grpc_codec::TandemCodec")
        .compile_fds(fds)?;
    Ok(())
}
