//! Generates the native protocol's Rust types from `proto/*.proto` with protox (a pure-Rust protobuf
//! compiler), so no `protoc` binary is needed on the build machine.

fn main() {
    let files = ["proto/tandem.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"]).expect("proto files compile");
    let mut config = prost_build::Config::new();
    // Every `bytes` field decodes as a `Bytes` slice of the frame buffer: bodies are never copied.
    config.bytes(["."]);
    config.compile_fds(fds).expect("prost code generation");
}
