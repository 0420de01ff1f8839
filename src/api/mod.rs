//! The etcd v3 client API (gRPC services `etcdserverpb.KV`, `.Cluster`, `.Maintenance`).
//!
//! ```text
//! gRPC request -> convert (validate; refuse before proposing) -> Consensus (write / read barrier)
//!              -> store (apply / local read) -> convert -> response with a filled header
//! ```
//!
//! [`error`] is the one place errors become gRPC statuses. Must never: touch sled; answer a
//! linearizable read without the read barrier.

pub mod authority;
pub mod cluster;
pub mod consensus;
pub mod convert;
mod duplicates;
pub mod error;
pub mod kv;
pub mod maintenance;

use openraft::async_runtime::watch::WatchReceiver;

pub use consensus::Consensus;

use crate::pb::etcdserverpb::ResponseHeader;
use crate::store::KvReader;

/// What every service needs: consensus, local reads, and the identity that goes in headers.
#[derive(Clone)]
pub struct ApiContext {
    pub consensus: Consensus,
    pub reader: KvReader,
    pub cluster_id: u64,
    /// etcd's `--max-request-bytes`: larger requests are refused.
    pub max_request_bytes: usize,
    /// etcd's `--max-txn-ops`: longer transaction lists are refused.
    pub max_txn_ops: usize,
}

impl ApiContext {
    pub fn member_id(&self) -> u64 {
        self.consensus.id
    }

    pub fn raft_term(&self) -> u64 {
        self.consensus.raft.metrics().borrow_watched().current_term
    }

    /// A fully filled header; clients and etcdctl's printers rely on every field being there.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id(),
            revision,
            raft_term: self.raft_term(),
        }
    }
}
