//! The Raft log and vote, in the node's own write-ahead log files (`raft-log/` in the data
//! directory; format in [`super::wal`]), not in sled.
//!
//! ```text
//! raft-log/<first index>.wal   log entries, contiguous from last_purged+1 to last
//! raft-log/vote                the vote             (replaced whole, synced)
//! raft-log/purged              last purged log id   (replaced whole, synced, before the purge)
//! raft-log/committed           last committed log id, a hint for faster restart (not synced)
//! ```
//!
//! Why not sled: each sled flush wakes sled's whole IO thread pool and seals a page-cache IO
//! buffer; with the log there, writes spent most of their CPU in sled (see
//! `bench/results/2026-11-22-profile.md`). Here an append is one `pwrite` and a sync is one
//! `fdatasync`.
//!
//! Durability: an append is written at once (so it can be read back) but reported durable to
//! openraft only by the flusher thread, after an `fdatasync` of every file written before the
//! append was queued. The flusher takes every append that arrived while the previous sync ran
//! and covers them all with one sync (group commit), then completes their callbacks in order.
//!
//! Must never: acknowledge an append or a vote before the sync; leave a hole in the log.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::fs::File;
use std::io;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::mpsc;

use openraft::LogState;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use openraft::alias::EntryOf;
use openraft::alias::LogIdOf;
use openraft::alias::VoteOf;
use openraft::entry::RaftEntry;
use openraft::storage::IOFlushed;
use openraft::storage::RaftLogStorage;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use super::wal;
use super::wal::Wal;
use crate::codec::decode;
use crate::codec::encode;
use crate::types::TypeConfig;

/// A new segment is started once the current one holds this much.
const SEGMENT_BYTES: u64 = 64 << 20;

/// Recent entries kept decoded in memory, so replication reads no file: at most this many
/// encoded bytes.
const CACHE_BYTES: usize = 32 << 20;

const VOTE_FILE: &str = "vote";
const PURGED_FILE: &str = "purged";
const COMMITTED_FILE: &str = "committed";

/// The Raft log storage. Cheap to clone: clones share the files, the cache and the flusher.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
    flusher: mpsc::Sender<IOFlushed<TypeConfig>>,
    appends: Counter,
}

struct Inner {
    dir: PathBuf,
    wal: Wal,
    purged: Option<LogIdOf<TypeConfig>>,
    /// The last entry's log id (`None` when no entry is kept).
    last: Option<LogIdOf<TypeConfig>>,
    committed_file: File,
    /// The newest entries, contiguous and ending at `last`, with their encoded sizes.
    cache: VecDeque<(EntryOf<TypeConfig>, usize)>,
    cache_bytes: usize,
}

impl LogStore {
    /// Opens (or creates) the log in `dir` and starts its flusher thread.
    pub(crate) fn open(
        dir: &Path,
        flush_seconds: Histogram,
        appends: Counter,
    ) -> io::Result<LogStore> {
        std::fs::create_dir_all(dir)?;
        let purged: Option<LogIdOf<TypeConfig>> = match wal::read_replaced(dir, PURGED_FILE)? {
            Some(bytes) => Some(decode(&bytes)?),
            None => None,
        };
        let wal = Wal::open(dir, SEGMENT_BYTES, purged.map(|log_id| log_id.index()))?;
        let last = match wal.last_index() {
            Some(index) => {
                let entry: EntryOf<TypeConfig> = decode(&wal.read(index)?)?;
                assert_eq!(entry.index(), index, "log entry stored under another index");
                Some(entry.log_id())
            }
            None => None,
        };
        let committed_file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(COMMITTED_FILE))?;
        let inner = Arc::new(Mutex::new(Inner {
            dir: dir.to_path_buf(),
            wal,
            purged,
            last,
            committed_file,
            cache: VecDeque::new(),
            cache_bytes: 0,
        }));
        let (flusher, pending) = mpsc::channel();
        let for_flusher = inner.clone();
        std::thread::Builder::new()
            .name("log flusher".to_string())
            .spawn(move || run_flusher(for_flusher, pending, flush_seconds))?;
        Ok(LogStore {
            inner,
            flusher,
            appends,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("log store lock poisoned")
    }
}

/// Moves a log kept by an earlier version in the sled tree `raft_log` (keys `e` ++ index BE for
/// entries, `mvote`, `mpurged`, `mcommitted`; values encoded as here) into the files in `dir`,
/// then drops the tree. Staged in a sibling folder and renamed into place, so a crash part way
/// leaves the tree in charge and the migration runs again.
pub(crate) fn migrate_from_sled(db: &sled::Db, dir: &Path) -> io::Result<()> {
    use super::codec::sled_error;
    const TREE: &[u8] = b"raft_log";
    if !db.tree_names().iter().any(|name| name.as_ref() == TREE) {
        return Ok(());
    }
    if !dir.exists() {
        let tree = db.open_tree(TREE).map_err(sled_error)?;
        let staging = dir.with_extension("migrating");
        if staging.exists() {
            std::fs::remove_dir_all(&staging)?;
        }
        std::fs::create_dir_all(&staging)?;
        if let Some(vote) = tree.get(b"mvote").map_err(sled_error)? {
            wal::write_replaced(&staging, VOTE_FILE, &vote)?;
        }
        let purged = match tree.get(b"mpurged").map_err(sled_error)? {
            Some(bytes) => {
                wal::write_replaced(&staging, PURGED_FILE, &bytes)?;
                let log_id: LogIdOf<TypeConfig> = decode(&bytes)?;
                Some(log_id.index())
            }
            None => None,
        };
        let mut wal = Wal::open(&staging, SEGMENT_BYTES, purged)?;
        let mut records = Vec::new();
        let mut count = 0u64;
        for item in tree.scan_prefix([b'e']) {
            let (key, bytes) = item.map_err(sled_error)?;
            let index = u64::from_be_bytes(key[1..].try_into().map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "old log entry key of the wrong length",
                )
            })?);
            records.push((index, bytes.to_vec()));
            count += 1;
            if records.len() == 1024 {
                wal.append(&std::mem::take(&mut records))?;
            }
        }
        wal.append(&records)?;
        for file in wal.dirty_files() {
            file.sync_data()?;
        }
        drop(wal);
        std::fs::rename(&staging, dir)?;
        File::open(dir.parent().unwrap_or(Path::new(".")))?.sync_all()?;
        tracing::info!(entries = count, dir = %dir.display(), "moved the raft log out of sled");
    }
    db.drop_tree(TREE).map_err(sled_error)?;
    db.flush().map_err(sled_error)?;
    Ok(())
}

impl Inner {
    fn entry(&self, index: u64) -> io::Result<EntryOf<TypeConfig>> {
        if let Some((first, _)) = self.cache.front()
            && index >= first.index()
            && let Some((entry, _)) = self.cache.get((index - first.index()) as usize)
        {
            return Ok(entry.clone());
        }
        let entry: EntryOf<TypeConfig> = decode(&self.wal.read(index)?)?;
        assert_eq!(entry.index(), index, "log entry stored under another index");
        Ok(entry)
    }

    fn cache_push(&mut self, entry: EntryOf<TypeConfig>, bytes: usize) {
        self.cache.push_back((entry, bytes));
        self.cache_bytes += bytes;
        while self.cache_bytes > CACHE_BYTES
            && let Some((_, bytes)) = self.cache.pop_front()
        {
            self.cache_bytes -= bytes;
        }
    }
}

/// Completes append callbacks after a sync, batching every callback that queued up while the
/// previous sync ran (group commit). In order: openraft expects appends to complete in order.
/// Ends when every [`LogStore`] clone is gone.
fn run_flusher(
    inner: Arc<Mutex<Inner>>,
    pending: mpsc::Receiver<IOFlushed<TypeConfig>>,
    flush_seconds: Histogram,
) {
    while let Ok(first) = pending.recv() {
        let mut batch = vec![first];
        batch.extend(pending.try_iter());
        // Taken after the callbacks: every file written before they were queued is in here or
        // was synced by an earlier round.
        let files = inner
            .lock()
            .expect("log store lock poisoned")
            .wal
            .dirty_files();
        let started = std::time::Instant::now();
        let result = files.iter().try_for_each(|file| file.sync_data());
        flush_seconds.observe(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            tracing::error!(error = %e, "raft log sync failed");
        }
        for callback in batch {
            let result = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            };
            callback.io_completed(result);
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<EntryOf<TypeConfig>>> {
        let inner = self.lock();
        let (Some(first), Some(last)) = (inner.wal.first_index(), inner.wal.last_index()) else {
            return Ok(Vec::new());
        };
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x + 1,
            Bound::Unbounded => 0,
        }
        .max(first);
        let end = match range.end_bound() {
            Bound::Included(x) => (*x).min(last),
            Bound::Excluded(0) => return Ok(Vec::new()),
            Bound::Excluded(x) => (x - 1).min(last),
            Bound::Unbounded => last,
        };
        (start..=end).map(|index| inner.entry(index)).collect()
    }

    async fn read_vote(&mut self) -> io::Result<Option<VoteOf<TypeConfig>>> {
        let dir = self.lock().dir.clone();
        match wal::read_replaced(&dir, VOTE_FILE)? {
            Some(bytes) => Ok(Some(decode(&bytes)?)),
            None => Ok(None),
        }
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let inner = self.lock();
        Ok(LogState {
            last_purged_log_id: inner.purged,
            last_log_id: inner.last.or(inner.purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<TypeConfig>) -> io::Result<()> {
        // Synced before returning: a vote forgotten after a crash could let this node vote twice
        // in one term.
        let bytes = encode(vote)?;
        let dir = self.lock().dir.clone();
        tokio::task::spawn_blocking(move || wal::write_replaced(&dir, VOTE_FILE, &bytes))
            .await
            .map_err(io::Error::other)?
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<TypeConfig>>) -> io::Result<()> {
        // Only a hint, not synced: losing it costs re-applying from the last applied entry.
        let inner = self.lock();
        wal::write_hint(&inner.committed_file, &encode(&committed)?)
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogIdOf<TypeConfig>>> {
        let inner = self.lock();
        match wal::read_hint(&inner.committed_file)? {
            Some(bytes) => Ok(decode(&bytes).ok().flatten()),
            None => Ok(None),
        }
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = EntryOf<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<EntryOf<TypeConfig>> = entries.into_iter().collect();
        let mut records = Vec::with_capacity(entries.len());
        for entry in &entries {
            records.push((entry.index(), encode(entry)?));
        }
        {
            let mut inner = self.lock();
            // After the last entry, or right after the purge point when everything was purged.
            let previous = inner.last.or(inner.purged).map(|log_id| log_id.index());
            if let (Some(previous), Some((first, _))) = (previous, records.first()) {
                assert_eq!(*first, previous + 1, "append would leave a hole in the log");
            }
            // Written now so they can be read back at once; reported durable only by the flusher.
            inner.wal.append(&records)?;
            if !records.is_empty() {
                self.appends.inc();
            }
            for (entry, (_, bytes)) in entries.into_iter().zip(&records) {
                inner.last = Some(entry.log_id());
                inner.cache_push(entry, bytes.len());
            }
        }
        self.flusher
            .send(callback)
            .map_err(|_| io::Error::other("log flusher stopped"))?;
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<TypeConfig>>) -> io::Result<()> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut inner = inner.lock().expect("log store lock poisoned");
            let start = last_log_id.map_or(0, |log_id| log_id.index() + 1);
            // Synced before returning: conflicting entries must not reappear after a crash
            // behind newer appends.
            inner.wal.truncate_from(start)?;
            while inner
                .cache
                .back()
                .is_some_and(|(entry, _)| entry.index() >= start)
            {
                let (_, bytes) = inner.cache.pop_back().expect("checked above");
                inner.cache_bytes -= bytes;
            }
            inner.last = match inner.wal.last_index() {
                Some(index) => Some(inner.entry(index)?.log_id()),
                None => None,
            };
            Ok(())
        })
        .await
        .map_err(io::Error::other)?
    }

    async fn purge(&mut self, log_id: LogIdOf<TypeConfig>) -> io::Result<()> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut inner = inner.lock().expect("log store lock poisoned");
            // The purge point first: if a crash cuts the deletions short, opening skips what is
            // left at or below it.
            wal::write_replaced(&inner.dir, PURGED_FILE, &encode(&log_id)?)?;
            inner.purged = Some(log_id);
            inner.wal.purge_to(log_id.index())?;
            while inner
                .cache
                .front()
                .is_some_and(|(entry, _)| entry.index() <= log_id.index())
            {
                let (_, bytes) = inner.cache.pop_front().expect("checked above");
                inner.cache_bytes -= bytes;
            }
            if inner
                .last
                .is_some_and(|last| last.index() <= log_id.index())
            {
                inner.last = None;
            }
            Ok(())
        })
        .await
        .map_err(io::Error::other)?
    }
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use openraft::entry::RaftEntry;
    use openraft::storage::RaftLogStorage;
    use openraft::vote::RaftLeaderId;

    use super::*;
    use crate::types::Command;
    use crate::types::PutOp;

    fn entry(term: u64, index: u64) -> EntryOf<TypeConfig> {
        let command = Command::Put(PutOp {
            key: format!("k{index}").into_bytes(),
            value: vec![7; 32],
            ..PutOp::default()
        });
        EntryOf::<TypeConfig>::new_normal(
            openraft::alias::LogIdOf::<TypeConfig>::new(
                openraft::alias::CommittedLeaderIdOf::<TypeConfig>::new(term, 1),
                index,
            ),
            std::sync::Arc::new(command),
        )
    }

    #[tokio::test]
    async fn a_log_kept_in_sled_by_an_earlier_version_moves_into_the_files() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .expect("open sled");
        let tree = db.open_tree("raft_log").expect("tree");
        let vote = VoteOf::<TypeConfig>::new(3, 2);
        tree.insert(b"mvote", encode(&vote).expect("encode"))
            .expect("insert");
        let purged = entry(1, 4).log_id();
        tree.insert(b"mpurged", encode(&purged).expect("encode"))
            .expect("insert");
        for index in 5u64..=20 {
            let mut key = vec![b'e'];
            key.extend_from_slice(&index.to_be_bytes());
            tree.insert(key, encode(&entry(2, index)).expect("encode"))
                .expect("insert");
        }
        let log_dir = dir.path().join("raft-log");
        migrate_from_sled(&db, &log_dir).expect("migrate");
        assert!(
            !db.tree_names()
                .iter()
                .any(|name| name.as_ref() == b"raft_log")
        );
        // A second run (a restart) finds nothing to move.
        migrate_from_sled(&db, &log_dir).expect("migrate again");

        let mut store =
            LogStore::open(&log_dir, Histogram::new([1.0]), Counter::default()).expect("open");
        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id, Some(purged));
        assert_eq!(state.last_log_id, Some(entry(2, 20).log_id()));
        assert_eq!(store.read_vote().await.expect("vote"), Some(vote));
        let entries = store.try_get_log_entries(0..100).await.expect("read");
        assert_eq!(entries.len(), 16);
        assert!(entries.iter().zip(5..).all(|(e, i)| *e == entry(2, i)));
    }
}
