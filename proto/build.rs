//! Generates the `berth.v1` messages, clients and servers with tonic-prost-build.
//! Needs `protoc` (Debian: protobuf-compiler); set `PROTOC` to use another one.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "berth/v1/node.proto",
    "berth/v1/logs.proto",
    "berth/v1/ipam.proto",
    "berth/v1/audit.proto",
    "berth/v1/faketime.proto",
    "berth/v1/debug.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("berth_v1_descriptor.bin"))
        .type_attribute(".berth.v1", "#[derive(serde::Serialize)]")
        .compile_protos(PROTOS, &["."])?;
    Ok(())
}
