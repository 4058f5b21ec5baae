//! Compiles the protobuf contracts with the pure-Rust `protox` (no installed
//! `protoc`) and hands the descriptors to `tonic-prost-build`, which writes
//! the prost messages and the tonic client and server of the link.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/sitelink/v1/sitelink.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
