//! The node's Prometheus metrics: one registry per node (a process may run several, as
//! `local-cluster` does), counters and histograms recorded where things happen, and gauges read
//! from Raft and the store at scrape time.
//!
//! Names follow Prometheus conventions: `quorumdb_` prefix, unit last (`_seconds`, `_bytes`),
//! counters end in `_total` (added by the encoder).
//!
//! Must never: block a request path on metrics (every record is an atomic update); invent a value
//! that is not known (a follower exports no per-follower lag: only the leader knows it).

use std::sync::Arc;

use openraft::Instant as _;
use openraft::ServerState;
use openraft::async_runtime::watch::WatchReceiver;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::registry::Registry;

use crate::store::KvReader;
use crate::types::Raft;

/// Latency buckets: 50 µs to ~1.6 s, doubling (flushes and requests on one scale).
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// What the store records (it cannot see the registry, only these handles).
#[derive(Clone, Debug)]
pub struct StoreMetrics {
    /// Duration of one sync (fdatasync) of the Raft log (group commit: it may cover many appends).
    pub flush_seconds: Histogram,
    /// Appends to the Raft log, each one write of one or more entries.
    pub log_appends: Counter,
    pub snapshots_built: Counter,
    pub snapshots_installed: Counter,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        StoreMetrics {
            flush_seconds: latency_histogram(),
            log_appends: Counter::default(),
            snapshots_built: Counter::default(),
            snapshots_installed: Counter::default(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The gRPC path, e.g. `/etcdserverpb.KV/Put`.
    pub method: String,
    /// The gRPC status code name, e.g. `OK`, `Unavailable`.
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FollowerLabels {
    /// The follower's member id, hex (as etcd prints ids).
    pub follower: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric of one node.
#[derive(Debug)]
pub struct NodeMetrics {
    registry: Registry,
    pub store: StoreMetrics,
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: HistogramFamily<MethodLabels>,
    pub proposals_committed: Counter,
    /// Snapshots the leader sent to followers (shared with the peer transport).
    pub snapshots_sent: Counter,
    /// Follower reads this member answered as leader, by how (shared with the peer service).
    pub read_index: crate::network::read_index::ReadIndexCounters,
    pub proposals_failed: Counter,
    pub leader_changes: Counter,
    is_leader: Gauge,
    has_leader: Gauge,
    term: Gauge,
    last_log_index: Gauge,
    purged_index: Gauge,
    commit_index: Gauge,
    applied_index: Gauge,
    follower_lag_entries: Family<FollowerLabels, Gauge>,
    follower_lag_seconds: Family<FollowerLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    revision: Gauge,
    compact_revision: Gauge,
    keys: Gauge,
    db_size_bytes: Gauge,
}

impl NodeMetrics {
    pub fn new() -> Arc<NodeMetrics> {
        let mut registry = Registry::default();
        let store = StoreMetrics::default();
        let metrics = NodeMetrics {
            store: store.clone(),
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(latency_histogram),
            proposals_committed: Counter::default(),
            snapshots_sent: Counter::default(),
            read_index: Default::default(),
            proposals_failed: Counter::default(),
            leader_changes: Counter::default(),
            is_leader: Gauge::default(),
            has_leader: Gauge::default(),
            term: Gauge::default(),
            last_log_index: Gauge::default(),
            purged_index: Gauge::default(),
            commit_index: Gauge::default(),
            applied_index: Gauge::default(),
            follower_lag_entries: Family::default(),
            follower_lag_seconds: Family::default(),
            revision: Gauge::default(),
            compact_revision: Gauge::default(),
            keys: Gauge::default(),
            db_size_bytes: Gauge::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "quorumdb_server_is_leader",
            "1 if this member is the leader, else 0",
            metrics.is_leader.clone(),
        );
        r.register(
            "quorumdb_server_has_leader",
            "1 if this member knows a leader, else 0",
            metrics.has_leader.clone(),
        );
        r.register(
            "quorumdb_server_leader_changes_seen",
            "Leader changes this member has seen since it started",
            metrics.leader_changes.clone(),
        );
        r.register(
            "quorumdb_raft_term",
            "Current Raft term",
            metrics.term.clone(),
        );
        r.register(
            "quorumdb_raft_last_log_index",
            "Index of the last entry in this member's log",
            metrics.last_log_index.clone(),
        );
        r.register(
            "quorumdb_raft_purged_index",
            "Highest log index purged from this member's log (0 before the first purge); a follower \
             that lacks an entry at or below it catches up by snapshot",
            metrics.purged_index.clone(),
        );
        r.register(
            "quorumdb_raft_commit_index",
            "Highest log index this member knows committed",
            metrics.commit_index.clone(),
        );
        r.register(
            "quorumdb_raft_applied_index",
            "Highest log index applied to this member's state machine",
            metrics.applied_index.clone(),
        );
        r.register(
            "quorumdb_raft_follower_lag_entries",
            "Leader only: entries the follower's log is behind the leader's last log index",
            metrics.follower_lag_entries.clone(),
        );
        r.register(
            "quorumdb_raft_follower_lag_seconds",
            "Leader only: time since the follower last acknowledged replication or a heartbeat",
            metrics.follower_lag_seconds.clone(),
        );
        r.register(
            "quorumdb_proposals_committed",
            "Client writes proposed through this member and applied",
            metrics.proposals_committed.clone(),
        );
        r.register(
            "quorumdb_proposals_failed",
            "Client writes proposed through this member that failed or have an unknown outcome",
            metrics.proposals_failed.clone(),
        );
        r.register(
            "quorumdb_grpc_requests",
            "Client gRPC requests by method and status code",
            metrics.requests.clone(),
        );
        r.register(
            "quorumdb_grpc_request_duration_seconds",
            "Client gRPC request latency until the response headers, by method",
            metrics.request_seconds.clone(),
        );
        r.register(
            "quorumdb_disk_flush_duration_seconds",
            "Duration of one flush of the Raft log to disk (one flush covers many appends)",
            store.flush_seconds.clone(),
        );
        r.register(
            "quorumdb_disk_log_appends",
            "Appends to the Raft log, each one write of one or more entries (entries per append: the last log index's growth over this)",
            store.log_appends.clone(),
        );
        r.register(
            "quorumdb_snapshots_built",
            "Snapshots this member built",
            store.snapshots_built.clone(),
        );
        r.register(
            "quorumdb_snapshots_sent",
            "Snapshots this member sent to a follower that installed them",
            metrics.snapshots_sent.clone(),
        );
        r.register(
            "quorumdb_read_index_vouched",
            "Follower reads answered as leader in one round trip: a voter of at most three vouched with its vote",
            metrics.read_index.vouched.clone(),
        );
        r.register(
            "quorumdb_read_index_heartbeat",
            "Follower reads answered as leader after a heartbeat round confirmed the leadership",
            metrics.read_index.heartbeat.clone(),
        );
        r.register(
            "quorumdb_snapshots_installed",
            "Snapshots this member installed from the leader",
            store.snapshots_installed.clone(),
        );
        r.register(
            "quorumdb_mvcc_revision",
            "Current store revision",
            metrics.revision.clone(),
        );
        r.register(
            "quorumdb_mvcc_compact_revision",
            "Revision the history was compacted to",
            metrics.compact_revision.clone(),
        );
        r.register(
            "quorumdb_mvcc_keys",
            "Keys that currently exist",
            metrics.keys.clone(),
        );
        r.register(
            "quorumdb_mvcc_db_size_bytes",
            "Bytes the database takes on disk",
            metrics.db_size_bytes.clone(),
        );
        Arc::new(NodeMetrics {
            registry,
            ..metrics
        })
    }

    /// Reads Raft and the store into the gauges, then encodes everything in the Prometheus text
    /// format.
    pub fn scrape(&self, raft: &Raft, reader: &KvReader) -> String {
        {
            let metrics = raft.metrics();
            let m = metrics.borrow_watched();
            self.is_leader
                .set(i64::from(m.state == ServerState::Leader));
            self.has_leader.set(i64::from(m.current_leader.is_some()));
            self.term.set(m.current_term as i64);
            self.last_log_index
                .set(m.last_log_index.unwrap_or(0) as i64);
            self.purged_index
                .set(m.purged.map(|id| id.index).unwrap_or(0) as i64);
            self.commit_index
                .set(m.local_committed.map(|id| id.index).unwrap_or(0) as i64);
            self.applied_index
                .set(m.last_applied.map(|id| id.index).unwrap_or(0) as i64);
            self.follower_lag_entries.clear();
            self.follower_lag_seconds.clear();
            let last = m.last_log_index.unwrap_or(0);
            if let Some(replication) = &m.replication {
                for (follower, matched) in replication {
                    if *follower == m.id {
                        continue;
                    }
                    let labels = FollowerLabels {
                        follower: format!("{follower:x}"),
                    };
                    let matched = matched.map(|id| id.index).unwrap_or(0);
                    self.follower_lag_entries
                        .get_or_create(&labels)
                        .set(last.saturating_sub(matched) as i64);
                }
            }
            if let Some(heartbeat) = &m.heartbeat {
                for (follower, acked) in heartbeat {
                    if *follower == m.id {
                        continue;
                    }
                    if let Some(acked) = acked {
                        let labels = FollowerLabels {
                            follower: format!("{follower:x}"),
                        };
                        self.follower_lag_seconds
                            .get_or_create(&labels)
                            .set(acked.elapsed().as_secs_f64());
                    }
                }
            }
        }
        self.revision.set(reader.revision());
        self.compact_revision.set(reader.compact_revision());
        self.keys.set(reader.live_key_count() as i64);
        self.db_size_bytes.set(reader.db_size_bytes() as i64);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("encoding into a String cannot fail");
        text
    }
}
