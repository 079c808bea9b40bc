//! Compiles the admin plane's .proto with protox (a pure-Rust protobuf compiler), so
//! building needs no `protoc` installed, and keeps the encoded descriptor set for
//! gRPC server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/karaoke/admin/v1/admin.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("admin_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        // Requests that are not valid protobuf are INVALID_ARGUMENT, not INTERNAL.
        .codec_path("crate::admin::codec::AdminCodec")
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
