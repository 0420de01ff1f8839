//! Every bound QuorumDB enforces, with its unit last in the name and a line saying why.
//!
//! Values that mirror etcd's defaults say so: clients and operators tune against those numbers.

/// Largest serialized client request accepted (etcd `--max-request-bytes` default, 1.5 MiB).
pub const REQUEST_BYTES_MAX: usize = 1536 * 1024;

/// The largest value `--max-request-bytes` may take: a log entry must fit a peer message.
pub const REQUEST_BYTES_LIMIT_MAX: usize = 4 * 1024 * 1024;

/// Operations per list in a transaction (etcd `--max-txn-ops` default).
pub const TXN_OPS_MAX: usize = 128;

/// Raft heartbeat period; elections are a few heartbeats long.
pub const HEARTBEAT_INTERVAL_MS: u64 = 100;

/// Election timeout (elections start between it and twice it): long enough to ride over a slow
/// flush on a shared 2-core machine.
pub const ELECTION_TIMEOUT_MS_MIN: u64 = 1000;

/// The largest `--election-timeout` accepted: etcd's own upper bound (50 s).
pub const ELECTION_TIMEOUT_MS_LIMIT_MAX: u64 = 50_000;

/// How long a request waits for a leader to be known before it fails with `no leader`.
pub const LEADER_WAIT_MS_MAX: u64 = 3000;

/// How long a linearizable read or a write may take in total before the server gives up
/// (`request timed out`): a few election timeouts, so a leader change mid-request can finish.
pub const REQUEST_TIMEOUT_MS: u64 = 7000;

/// On stop, how long a client connection may stay open after its GOAWAY before it is closed:
/// a call in flight ends within [`REQUEST_TIMEOUT_MS`] anyway, a stream (health `Watch`) or a
/// client that never lets go would hold the stop forever. etcd also gives its gRPC servers its
/// request timeout to stop gracefully.
pub const CLIENT_DRAIN_MS_MAX: u64 = REQUEST_TIMEOUT_MS;

/// On stop, how long the peer listener may stay open once Raft has stopped: the leader's append
/// stream into a follower ends only when the leader ends it (it never does while it leads), and
/// with Raft stopped nothing on it can succeed; what is still open then is closed.
pub const PEER_DRAIN_MS_MAX: u64 = 500;

/// On stop, how long a leader waits for the follower it hands its leadership to to take it
/// (that follower catches up to the leader's last entry, then wins an election at once); the
/// stop goes on without it after this.
pub const LEADER_HANDOVER_MS_MAX: u64 = 2000;

/// How long a follower waits for its state machine to reach the leader's read index.
pub const READ_INDEX_APPLY_WAIT_MS_MAX: u64 = 5000;

/// Timeout of one peer RPC (append, vote); snapshots get longer per chunk.
pub const PEER_RPC_TIMEOUT_MS: u64 = 2000;

/// HTTP/2 keepalive on peer channels: a ping after this long without traffic...
pub const PEER_KEEPALIVE_INTERVAL_MS: u64 = 1000;

/// ...and the connection is dropped (then re-dialed on next use) if the ping is not answered in
/// this long. Without it a connection that lived through a partition sits in TCP
/// retransmission backoff after the heal, and the member stays unreachable for 10-20 s (found
/// by the Jepsen suite, jepsen/README.md).
pub const PEER_KEEPALIVE_TIMEOUT_MS: u64 = 1000;

/// Size of one snapshot chunk on the peer service: bounded so a chunk never nears the decode limit.
pub const SNAPSHOT_CHUNK_BYTES: usize = 512 * 1024;

/// Build a snapshot (and purge the log before it) after this many applied entries since the last
/// (`--snapshot-count`; etcd 3.4's default). Each snapshot copies the whole key space, history
/// included: at 5,000 a put-heavy load spent a large share of its CPU on snapshots.
pub const SNAPSHOT_COUNT_DEFAULT: u64 = 100_000;

/// Smallest `--snapshot-count`: above the entries kept behind a snapshot.
pub const SNAPSHOT_COUNT_MIN: u64 = LOG_ENTRIES_KEPT_AFTER_SNAPSHOT + 1;

/// Largest `--snapshot-count`: the log behind the last snapshot is replayed on every restart.
pub const SNAPSHOT_COUNT_MAX: u64 = 10_000_000;

/// Entries kept in the log behind a snapshot, so a briefly lagging follower catches up by log.
pub const LOG_ENTRIES_KEPT_AFTER_SNAPSHOT: u64 = 1000;

/// Entries per append RPC: with requests of at most REQUEST_BYTES_LIMIT_MAX, one replication message
/// stays under PEER_MESSAGE_BYTES_MAX.
pub const APPEND_ENTRIES_PER_RPC_MAX: u64 = 64;

/// gRPC decode limit on the peer service (append batches, forwarded writes, snapshot chunks).
pub const PEER_MESSAGE_BYTES_MAX: usize = 512 * 1024 * 1024;

/// Responses of numbered (exactly-once) writes kept per client: a client keeps at most this many
/// writes in flight, so every write it may still retry is remembered.
pub const CLIENT_SESSION_WINDOW: usize = 128;

/// Client sessions kept at most; beyond it the least recently used one is dropped (its client is
/// told, never silently re-applied). Bounds the state machine's memory and snapshot size.
pub const CLIENT_SESSIONS_MAX: usize = 10_000;

/// A client session untouched for this many log entries is dropped: a client that was silent
/// that long has long since given up on any write it was retrying.
pub const CLIENT_SESSION_IDLE_LOG_ENTRIES: u64 = 1_000_000;

/// etcd's default backend quota: beyond it the NOSPACE alarm is raised and writes that add
/// data are refused until space is freed and the alarm disarmed.
pub const QUOTA_BACKEND_BYTES_DEFAULT: u64 = 2 * 1024 * 1024 * 1024;

/// How stale the database size a write's quota check uses may be: measuring it stats every
/// file of the database, too slow to do for every write.
pub const DB_SIZE_SAMPLE_MS: u64 = 100;

/// The largest `--quota-backend-bytes` accepted (etcd suggests at most 8 GiB; sled keeps its
/// working set in memory, so far beyond that is a mistake).
pub const QUOTA_BACKEND_BYTES_LIMIT_MAX: u64 = 64 * 1024 * 1024 * 1024;

/// The default bound on the database's page cache (`--cache-bytes`). sled's own default, 1 GiB,
/// let a member's memory grow with the history written: 414 MiB peak RSS after a benchmark's puts
/// against 242 MiB with this bound, at the same throughput
/// (`bench/results/2026-12-05-cache-bound.md`).
pub const CACHE_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;

/// The smallest and largest `--cache-bytes` accepted.
pub const CACHE_BYTES_MIN: u64 = 1024 * 1024;
pub const CACHE_BYTES_MAX: u64 = 64 * 1024 * 1024 * 1024;

/// A learner is promoted to voter only when its log is at most this many entries behind the
/// leader's (etcd refuses to promote a learner that is not "in sync with leader"): a voter that
/// far behind would slow every commit while it catches up.
pub const LEARNER_PROMOTE_LAG_ENTRIES_MAX: u64 = 1000;

/// How long a read asking for a minimum revision (session consistency) waits for this member to
/// apply it before it fails; as long as a follower's wait for a read index.
pub const MIN_REVISION_WAIT_MS_MAX: u64 = READ_INDEX_APPLY_WAIT_MS_MAX;

const _: () = assert!(ELECTION_TIMEOUT_MS_MIN > 3 * HEARTBEAT_INTERVAL_MS);
const _: () = assert!(SNAPSHOT_CHUNK_BYTES < PEER_MESSAGE_BYTES_MAX);
const _: () = assert!(
    (APPEND_ENTRIES_PER_RPC_MAX as usize + 1) * REQUEST_BYTES_LIMIT_MAX < PEER_MESSAGE_BYTES_MAX
);
const _: () = assert!(LOG_ENTRIES_KEPT_AFTER_SNAPSHOT < SNAPSHOT_COUNT_DEFAULT);
const _: () = assert!(REQUEST_TIMEOUT_MS > LEADER_WAIT_MS_MAX);
