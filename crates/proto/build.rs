//! Generates the marginoffer.v1 code with a vendored protoc, so building
//! needs no system protoc.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let proto = root.join("marginoffer/v1/marginoffer.proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("marginoffer_descriptor.bin"))
        .compile_with_config(
            config,
            &[proto],
            &[root, protoc_bin_vendored::include_path()?],
        )?;
    println!("cargo:rerun-if-changed=../../proto");
    Ok(())
}
