//! Compiles proto/peer.proto with `protox` (pure Rust, no system `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../../proto/peer.proto");
    let fds = protox::compile(["peer.proto"], ["../../proto"])?;
    tonic_prost_build::configure()
        // Blob chunks as `Bytes`: handed on without a copy.
        .bytes(".regcache.peer.v1")
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
