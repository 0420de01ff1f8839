//! Build script: compiles the protobuf files under `proto/` into Rust (prost messages plus
//! tonic clients and servers). The output goes to `OUT_DIR` and is pulled in by `src/pb.rs`.
//! protoc comes from `protoc-bin-vendored`, so no system protoc is needed.

const PROTOS: &[&str] = &[
    "proto/mvccpb/kv.proto",
    "proto/authpb/auth.proto",
    "proto/etcdserverpb/rpc.proto",
    "proto/v3lockpb/v3lock.proto",
    "proto/v3electionpb/v3election.proto",
    "proto/quorumdb/raft/v1/peer.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded at this point: no other thread exists that
    // could read or write the environment concurrently.
    unsafe {
        std::env::set_var("PROTOC", protoc);
    }

    println!("cargo:rerun-if-changed=proto");

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(PROTOS, &["proto"])?;
    Ok(())
}
