//! The Raft log and vote, in one sled tree of the node's database.
//!
//! Layout of the `raft_log` tree (one tree, so a purge and its `last_purged` marker, or a vote,
//! commit in one atomic batch):
//!
//! ```text
//! b'e' ++ index(u64 BE)  -> entry         log entries, contiguous from last_purged+1 to last
//! b'm' ++ "vote"         -> vote
//! b'm' ++ "purged"       -> log id         last purged log id
//! b'm' ++ "committed"    -> log id         last committed log id (a hint for faster restart)
//! ```
//!
//! Durability: sled buffers writes and flushes in the background; nothing here is reported
//! durable to openraft until `flush_async` has returned. Appends are group-committed: a single
//! flusher task takes every append that arrived while the previous flush ran and covers them all
//! with one flush, then completes their callbacks in order.
//!
//! Must never: acknowledge an append or a vote before the flush; leave a hole in the log.

use std::fmt::Debug;
use std::io;
use std::ops::Bound;
use std::ops::RangeBounds;

use openraft::LogState;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use openraft::alias::EntryOf;
use openraft::alias::LogIdOf;
use openraft::alias::VoteOf;
use openraft::entry::RaftEntry;
use openraft::storage::IOFlushed;
use openraft::storage::RaftLogStorage;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::mpsc;

use super::codec::sled_error;
use crate::codec::decode;
use crate::codec::encode;
use crate::types::TypeConfig;

const ENTRY_PREFIX: u8 = b'e';
const KEY_VOTE: &[u8] = b"mvote";
const KEY_PURGED: &[u8] = b"mpurged";
const KEY_COMMITTED: &[u8] = b"mcommitted";

fn entry_key(index: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = ENTRY_PREFIX;
    key[1..].copy_from_slice(&index.to_be_bytes());
    key
}

fn entry_index(key: &[u8]) -> u64 {
    assert_eq!(key.len(), 9, "log entry key has the wrong length");
    assert_eq!(key[0], ENTRY_PREFIX, "log entry key has the wrong prefix");
    u64::from_be_bytes(key[1..].try_into().expect("eight bytes"))
}

/// The Raft log storage. Cheap to clone: clones share the tree and the flusher.
#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    tree: sled::Tree,
    flusher: mpsc::UnboundedSender<IOFlushed<TypeConfig>>,
}

impl LogStore {
    pub(crate) fn open(db: sled::Db, flush_seconds: Histogram) -> io::Result<LogStore> {
        let tree = db.open_tree("raft_log").map_err(sled_error)?;
        let (flusher, pending) = mpsc::unbounded_channel();
        tokio::spawn(run_flusher(db.clone(), pending, flush_seconds));
        let store = LogStore { db, tree, flusher };
        store.check_contiguous()?;
        Ok(store)
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        match self.tree.get(key).map_err(sled_error)? {
            Some(bytes) => Ok(Some(decode(&bytes)?)),
            None => Ok(None),
        }
    }

    fn last_entry(&self) -> io::Result<Option<EntryOf<TypeConfig>>> {
        match self.tree.scan_prefix([ENTRY_PREFIX]).next_back() {
            Some(item) => {
                let (key, bytes) = item.map_err(sled_error)?;
                let entry: EntryOf<TypeConfig> = decode(&bytes)?;
                assert_eq!(
                    entry.index(),
                    entry_index(&key),
                    "log entry stored under another index"
                );
                Ok(Some(entry))
            }
            None => Ok(None),
        }
    }

    /// Crash rather than run on a log with holes: every index from the first to the last stored
    /// entry must be present, and the first must follow the purge point.
    fn check_contiguous(&self) -> io::Result<()> {
        let purged: Option<LogIdOf<TypeConfig>> = self.get_meta(KEY_PURGED)?;
        let mut expected = purged.map(|log_id| log_id.index() + 1);
        for item in self.tree.scan_prefix([ENTRY_PREFIX]).keys() {
            let index = entry_index(&item.map_err(sled_error)?);
            if let Some(expected) = expected {
                assert_eq!(
                    index, expected,
                    "raft log has a hole: expected index {expected}, found {index}"
                );
            }
            expected = Some(index + 1);
        }
        Ok(())
    }
}

/// Completes append callbacks after a flush, batching every callback that queued up while the
/// previous flush ran (group commit). In order: openraft expects appends to complete in order.
async fn run_flusher(
    db: sled::Db,
    mut pending: mpsc::UnboundedReceiver<IOFlushed<TypeConfig>>,
    flush_seconds: Histogram,
) {
    let mut batch = Vec::new();
    while pending.recv_many(&mut batch, usize::MAX).await > 0 {
        let started = std::time::Instant::now();
        let result = db.flush_async().await.map(|_| ()).map_err(sled_error);
        flush_seconds.observe(started.elapsed().as_secs_f64());
        for callback in batch.drain(..) {
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
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(x) => Bound::Included(entry_key(*x)),
            Bound::Excluded(x) => Bound::Excluded(entry_key(*x)),
            Bound::Unbounded => Bound::Included(entry_key(u64::MAX)),
        };
        let mut entries = Vec::new();
        for item in self.tree.range((Bound::Included(entry_key(start)), end)) {
            let (key, bytes) = item.map_err(sled_error)?;
            let entry: EntryOf<TypeConfig> = decode(&bytes)?;
            assert_eq!(
                entry.index(),
                entry_index(&key),
                "log entry stored under another index"
            );
            if let Some(previous) = entries.last().map(|e: &EntryOf<TypeConfig>| e.index()) {
                assert_eq!(entry.index(), previous + 1, "log read back with a hole");
            }
            entries.push(entry);
        }
        Ok(entries)
    }

    async fn read_vote(&mut self) -> io::Result<Option<VoteOf<TypeConfig>>> {
        self.get_meta(KEY_VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogIdOf<TypeConfig>> = self.get_meta(KEY_PURGED)?;
        let last_log_id = match self.last_entry()? {
            Some(entry) => Some(entry.log_id()),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<TypeConfig>) -> io::Result<()> {
        self.tree
            .insert(KEY_VOTE, encode(vote)?)
            .map_err(sled_error)?;
        // A vote forgotten after a crash could let this node vote twice in one term.
        self.db.flush_async().await.map_err(sled_error)?;
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<TypeConfig>>) -> io::Result<()> {
        // Only a hint: losing it costs re-applying from the last applied entry, nothing more.
        match committed {
            Some(log_id) => self
                .tree
                .insert(KEY_COMMITTED, encode(&log_id)?)
                .map_err(sled_error)?,
            None => self.tree.remove(KEY_COMMITTED).map_err(sled_error)?,
        };
        Ok(())
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogIdOf<TypeConfig>>> {
        self.get_meta(KEY_COMMITTED)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = EntryOf<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        // After the last entry, or right after the purge point when everything was purged.
        let mut previous = match self.last_entry()? {
            Some(entry) => Some(entry.index()),
            None => self
                .get_meta::<LogIdOf<TypeConfig>>(KEY_PURGED)?
                .map(|log_id| log_id.index()),
        };
        for entry in entries {
            if let Some(previous) = previous {
                assert_eq!(
                    entry.index(),
                    previous + 1,
                    "append would leave a hole in the log"
                );
            }
            previous = Some(entry.index());
            batch.insert(&entry_key(entry.index()), encode(&entry)?);
        }
        // Written now so they can be read back at once; reported durable only by the flusher.
        self.tree.apply_batch(batch).map_err(sled_error)?;
        self.flusher
            .send(callback)
            .map_err(|_| io::Error::other("log flusher stopped"))?;
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<TypeConfig>>) -> io::Result<()> {
        let start = last_log_id.map_or(0, |log_id| log_id.index() + 1);
        let mut batch = sled::Batch::default();
        for key in self
            .tree
            .range(entry_key(start)..=entry_key(u64::MAX))
            .keys()
        {
            batch.remove(key.map_err(sled_error)?);
        }
        self.tree.apply_batch(batch).map_err(sled_error)?;
        // Flushed so conflicting entries cannot reappear after a crash behind newer appends.
        self.db.flush_async().await.map_err(sled_error)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogIdOf<TypeConfig>) -> io::Result<()> {
        // The marker and the removals commit together: no state where entries are gone but the
        // purge point says otherwise.
        let mut batch = sled::Batch::default();
        batch.insert(KEY_PURGED, encode(&log_id)?);
        for key in self
            .tree
            .range(entry_key(0)..=entry_key(log_id.index()))
            .keys()
        {
            batch.remove(key.map_err(sled_error)?);
        }
        self.tree.apply_batch(batch).map_err(sled_error)?;
        Ok(())
    }
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}
