//! Storage: the only module that knows sled.
//!
//! The Raft log (entries, vote, purge point) lives in our own write-ahead log files under
//! `raft-log/` (see [`log_store`]). One sled database per node holds the `keyspace` tree (the
//! MVCC data, last applied log id, membership, client sessions, alarms: see [`mvcc`]); it is
//! flushed by sled in the background and before every snapshot, so after a crash it holds a
//! prefix of the applied entries and the log (kept back to the last snapshot) replays the rest.
//! The key space is the Raft snapshot (see [`snapshot`]): nothing else is written for one.
//!
//! Everything outside this module sees [`LogStore`] and [`StateMachine`] (handed to openraft) and
//! [`KvReader`] (local reads for the API); no sled type crosses this boundary.

pub mod alarms;
pub mod backup;
pub mod client_sessions;
mod codec;
pub mod log_store;
pub mod mvcc;
pub mod snapshot;
pub mod state_machine;
mod wal;

use std::io;
use std::path::Path;
use std::sync::Arc;

pub use log_store::LogStore;
pub use state_machine::StateMachine;

use crate::limits::DB_SIZE_SAMPLE_MS;
pub use crate::observe::metrics::StoreMetrics;
use crate::types::KvError;
use crate::types::RangeOp;
use crate::types::RangeResult;

/// The storage of one node, opened from its data directory.
pub struct Store {
    pub log_store: LogStore,
    pub state_machine: StateMachine,
    pub reader: KvReader,
}

/// Opens (or creates) the node's storage under `data_dir`, with the default cache bound and
/// metrics nobody reads. Must run inside a tokio runtime: the log store starts its flusher task.
pub fn open(data_dir: &Path) -> io::Result<Store> {
    open_with_metrics(
        data_dir,
        crate::limits::CACHE_BYTES_DEFAULT,
        StoreMetrics::default(),
    )
}

/// [`open`], with the database's page cache bounded to `cache_bytes`, recording flush latencies
/// and snapshot counts into `metrics`.
pub fn open_with_metrics(
    data_dir: &Path,
    cache_bytes: u64,
    metrics: StoreMetrics,
) -> io::Result<Store> {
    std::fs::create_dir_all(data_dir)?;
    let db = sled::Config::new()
        .path(data_dir.join("db"))
        .cache_capacity(cache_bytes)
        .open()
        .map_err(codec::sled_error)?;
    let keyspace = Arc::new(mvcc::KeySpace::open(
        db.open_tree("keyspace").map_err(codec::sled_error)?,
        &history_dir(data_dir),
    )?);
    let log_dir = data_dir.join("raft-log");
    log_store::migrate_from_sled(&db, &log_dir)?;
    let log_store = LogStore::open(
        &log_dir,
        metrics.flush_seconds.clone(),
        metrics.log_appends.clone(),
    )?;
    let alarms = alarms::Alarms::default();
    let state_machine = StateMachine::open(
        db.clone(),
        keyspace.clone(),
        data_dir,
        metrics,
        alarms.clone(),
    )?;
    Ok(Store {
        log_store,
        state_machine,
        reader: KvReader {
            db,
            keyspace,
            alarms,
            size: Arc::new(SizeSample {
                started: std::time::Instant::now(),
                bytes: std::sync::atomic::AtomicU64::new(0),
                measured_at_ms: std::sync::atomic::AtomicU64::new(u64::MAX),
            }),
        },
    })
}

/// Opens (or creates) only the MVCC key space of the database under `data_dir`, with no log
/// store, state machine or flusher around it: for benchmarks and tests of [`mvcc::KeySpace`]
/// alone, which cannot build one themselves since sled stays behind this module.
pub fn open_keyspace(data_dir: &Path) -> io::Result<mvcc::KeySpace> {
    std::fs::create_dir_all(data_dir)?;
    let db = sled::Config::new()
        .path(data_dir.join("db"))
        .open()
        .map_err(codec::sled_error)?;
    mvcc::KeySpace::open(
        db.open_tree("keyspace").map_err(codec::sled_error)?,
        &history_dir(data_dir),
    )
}

/// Where the key space's history log lives in the data directory `data_dir` (beside sled's
/// `db` and the Raft log's `raft-log`).
pub(crate) fn history_dir(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("history")
}

/// Local reads of the key space, shared with the state machine. Whether a read through it is
/// linearizable is decided by the caller (read index), not here.
#[derive(Clone)]
pub struct KvReader {
    db: sled::Db,
    keyspace: Arc<mvcc::KeySpace>,
    alarms: alarms::Alarms,
    size: Arc<SizeSample>,
}

/// The last measured database size: measuring stats every file of the database (sled walks its
/// blob folder), too slow for every write's quota check.
struct SizeSample {
    started: std::time::Instant,
    bytes: std::sync::atomic::AtomicU64,
    /// When `bytes` was measured, in milliseconds since `started` (`u64::MAX`: never).
    measured_at_ms: std::sync::atomic::AtomicU64,
}

impl KvReader {
    /// A consistent read; also returns the store revision it was served at.
    pub fn range(&self, op: &RangeOp) -> Result<(RangeResult, i64), KvError> {
        self.keyspace.range(op)
    }

    pub fn revision(&self) -> i64 {
        self.keyspace.revision()
    }

    pub fn compact_revision(&self) -> i64 {
        self.keyspace.compact_revision()
    }

    /// etcd's HashKV at `revision` (<= 0: current): (hash, compact revision, hashed revision).
    pub fn hash_kv(&self, revision: i64) -> Result<(u32, i64, i64), KvError> {
        self.keyspace.hash_kv(revision)
    }

    /// A backup file of the current key space (see [`backup`]).
    pub fn backup(&self) -> io::Result<(Vec<u8>, backup::BackupSummary)> {
        backup::take(&self.keyspace)
    }

    /// The raised alarms (as last applied on this member).
    pub fn alarms(&self) -> &alarms::Alarms {
        &self.alarms
    }

    /// Keys that currently exist.
    pub fn live_key_count(&self) -> usize {
        self.keyspace.live_key_count()
    }

    /// Makes everything applied so far durable (the whole database).
    pub fn flush(&self) -> io::Result<()> {
        self.keyspace.persist()?;
        self.db.flush().map(|_| ()).map_err(codec::sled_error)
    }

    /// Bytes the database takes on disk, measured at most [`DB_SIZE_SAMPLE_MS`] ago: cheap
    /// enough for the quota check of every write.
    pub fn db_size_bytes_recent(&self) -> u64 {
        use std::sync::atomic::Ordering;
        let now_ms = self.size.started.elapsed().as_millis() as u64;
        let measured = self.size.measured_at_ms.load(Ordering::Acquire);
        if measured != u64::MAX && now_ms.saturating_sub(measured) < DB_SIZE_SAMPLE_MS {
            return self.size.bytes.load(Ordering::Acquire);
        }
        let bytes = self.db_size_bytes();
        self.size.bytes.store(bytes, Ordering::Release);
        self.size.measured_at_ms.store(now_ms, Ordering::Release);
        bytes
    }

    /// Bytes the database takes on disk.
    pub fn db_size_bytes(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0) + self.keyspace.history_bytes()
    }
}
