//! Compiles the wire protocol with a pure-Rust protobuf compiler (no `protoc`).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/rayforge.proto");
    let fds = protox::compile(["rayforge.proto"], ["proto"])?;
    // Object chunks are slices of shared memory: `Bytes` lets them go out
    // without a copy into a vector first.
    tonic_prost_build::configure()
        .bytes(".rayforge.ObjectChunk.data")
        .compile_fds(fds)?;
    Ok(())
}
