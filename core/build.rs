//! Compiles the wire protocol with a pure-Rust protobuf compiler (no `protoc`).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/rayforge.proto");
    let fds = protox::compile(["rayforge.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
