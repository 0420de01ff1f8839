//! Generated protobuf and gRPC code.
//!
//! The `.proto` files live under `proto/` and are compiled by `build.rs` into `OUT_DIR`.
//! Each protobuf package becomes a module named exactly like the package, because prost
//! refers to other packages by sibling paths (`super::mvccpb::KeyValue`):
//!
//! - [`mvccpb`], [`authpb`], [`etcdserverpb`]: the etcd v3 client API (KV, Watch, Lease,
//!   Cluster, Maintenance, Auth), wire-compatible with etcd.
//! - [`v3lockpb`], [`v3electionpb`]: etcd's Lock and Election services.
//! - [`peer`] (package `quorumdb.raft.v1`): our internal Raft peer transport; its payloads
//!   are opaque bytes encoded by [`crate::codec`].

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

pub mod authpb {
    tonic::include_proto!("authpb");
}

pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}

/// Package `quorumdb.raft.v1`, nested like the package so that prost's relative paths
/// resolve. Use it through [`peer`].
pub mod quorumdb {
    /// Package `quorumdb.raft`.
    pub mod raft {
        /// Package `quorumdb.raft.v1`: the Raft peer service.
        pub mod v1 {
            tonic::include_proto!("quorumdb.raft.v1");
        }
    }
}

pub use quorumdb::raft::v1 as peer;
