//! Generates the gRPC client and server of `proto/auth.proto` (the Auth Service contract) with
//! tonic. Uses `PROTOC` when set, else the protoc binary vendored by `protoc-bin-vendored`, so
//! no system protobuf compiler is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/auth.proto");
    let mut config = prost_build::Config::new();
    match std::env::var_os("PROTOC") {
        Some(protoc) => config.protoc_executable(protoc),
        None => config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?),
    };
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_with_config(config, &["proto/auth.proto"], &["proto"])?;
    Ok(())
}
