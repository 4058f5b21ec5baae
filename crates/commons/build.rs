//! Compiles the protobuf contracts with the pure-Rust `protox` (no installed
//! `protoc`) and hands the descriptors to `prost-build`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/sitelink/v1/sitelink.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
