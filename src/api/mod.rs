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
pub mod metadata;
pub mod serve;

use std::sync::Arc;

use openraft::async_runtime::watch::WatchReceiver;

pub use consensus::Consensus;
use error::ApiError;

use crate::limits::MIN_REVISION_WAIT_MS_MAX;
use crate::network::Faults;
use crate::observe::metrics::NodeMetrics;

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
    /// The fault seam (only ever set through the peer service's SetFaults, in tests).
    pub faults: Faults,
    pub metrics: Arc<NodeMetrics>,
    /// etcd's `--quota-backend-bytes`.
    pub quota_backend_bytes: u64,
}

impl ApiContext {
    pub fn member_id(&self) -> u64 {
        self.consensus.id
    }

    pub fn raft_term(&self) -> u64 {
        self.consensus.raft.metrics().borrow_watched().current_term
    }

    /// Waits (bounded by [`MIN_REVISION_WAIT_MS_MAX`]) until this member has applied `wanted`.
    pub async fn wait_for_revision(&self, wanted: i64) -> Result<(), ApiError> {
        let deadline = tokio::time::Instant::now()
            + std::time::Duration::from_millis(MIN_REVISION_WAIT_MS_MAX);
        // Subscribed before the first look: an apply between the look and the wait still wakes
        // us, because the metrics change after the revision is published.
        let mut metrics = self.consensus.raft.metrics();
        loop {
            let applied = self.reader.revision();
            if applied >= wanted {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(ApiError::Stopped),
                Err(_) => return Err(ApiError::MinRevisionTimeout { wanted, applied }),
            }
        }
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
