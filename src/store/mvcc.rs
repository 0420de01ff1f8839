//! The MVCC key space: etcd's revisioned key-value semantics (ETCD_WIRE.md section 3) kept in
//! ONE sled tree, together with the few raw entries the Raft state machine stores beside it, and
//! the current version of every key also in memory.
//!
//! It owns: the current value of every key, every older version still inside the history window,
//! the store revision and the compact revision. It decides every etcd outcome of a read or a write
//! (revision bumps, versions, compare results, compacted / future revision errors), and it must do
//! so deterministically: every replica applies the same commands to the same state and must reach
//! the same bytes, so no outcome may depend on time, randomness, hash-map order or local config
//! (only when applied writes reach sled depends on time, never what they are).
//!
//! It must never: split the writes of one [`KeySpace::apply`] over two `sled::Batch`es (a crash
//! must leave either all of a batch of log entries applied, together with the caller's
//! `last_applied`, or none of it); let a reader see half of a batch; know about Raft, gRPC or
//! protobuf.
//!
//! ```text
//! apply(commands, extra) -- write gate held throughout --
//!   for each command:  Apply: keys in memory (current value, versions) changed in place,
//!                        history writes into the apply's overlay
//!                        Put / Delete / Txn / Compact -> CommandResponse
//!                        an etcd error (KvError) undoes that command's changes (txn undo log)
//!   overlay (history) + extra + meta ---> pending (in memory) ---> publish revision
//! persist() -- when 512 writes wait or the oldest waited 50 ms, before a snapshot --
//!   pending ---> persisting (still read) ---> one sled::Batch, gate not held ---> dropped
//! range(op) -- read gate -- current values (current revision), or versions -> history entries
//!                           (older revision) from pending, then persisting, then the tree
//! freeze_dump() -- write gate, briefly -- pending ---> sled; revision, meta, extra copied
//!   versions copied (the index)
//!   FrozenDump::encode -- no gate -- the copied index's versions read from the tree (compaction
//!                                     waits)
//! ```
//!
//! # Layout of the tree
//! Every tree key starts with one prefix byte:
//!
//! | prefix | tree key | value |
//! |---|---|---|
//! | `0x00` meta | `0x00 "revision"`, `0x00 "compact_revision"` | `i64`, 8 bytes big-endian |
//! | `0x01` live | `0x01 user_key` | in memory only (see below); an earlier layout stored it |
//! | `0x02` history | in a dump only (see below); an earlier layout stored it | |
//! | `0x03` extra | [`EXTRA_PREFIX`] + anything | the caller's bytes, never interpreted here |
//! | `0x04` history | `0x04 mod_revision user_key`, a version's history key: pending writes only (an earlier layout had a tree entry each) | `'P'` + `StoredValue`, or `'T'` |
//! | `0x05` history block | in the history log (see below); the layout before it stored them: `0x05` + the history key of its first entry without `0x04` | many history entries (see [`blocks`]) |
//! | `0x06` history log | `0x06 "generation"`, `0x06 "seq"`: which log file, and the last persist it holds (see [`history_log`]) | `u64`, 8 bytes big-endian |
//!
//! A version's history key is `0x04 mod_revision user_key`. The revision is 8 bytes big-endian
//! (always positive), so history keys sort by revision, then by user key, and every write of the
//! history lands at its end. The history entries are packed into blocks of about 6 KiB, one run
//! of history keys each, and the blocks live in a log file of their own beside the tree
//! ([`history_log::HistoryLog`]); the pending writes in memory stay keyed by history key. A
//! persist appends its blocks to the log and syncs them, then hands its tree writes to sled with
//! the log's seq in the same batch. Wherever this module says the tree holds the history, the
//! log does. The history holds
//! every version, the current one included: a read at an older revision `R` takes, per key, the
//! newest version with `mod_revision <= R`, and a tombstone (`'T'`, written at the deletion
//! revision) means the key was absent at `R`.
//!
//! One map in memory, under the same gate, says what the history holds, so that no read or write
//! scans the tree: per user key that has a version in the history,
//! - its current value (the `StoredValue` of the newest history entry, unless that is a
//!   tombstone): reads at the current revision and the compares and reads inside `apply` use it.
//!   `apply` writes it as the live entry `0x01 user_key`, which never reaches the tree;
//! - every version's revision and whether it is a tombstone, oldest first, as etcd keeps its
//!   `keyIndex`: reads at an older revision find there which entry to get, compaction which
//!   entries to drop, a dump and HashKV the key order.
//!
//! Both halves of one key sit in one entry, so an applied write searches the map once. The map is
//! rebuilt from the history on open and on restore. A tree from an earlier layout has its
//! stored live entries dropped and its history moved to the revision order on open.
//!
//! **A dump keeps the earlier, key-ordered layout** (`0x02 escape(user_key) 0x00 0x00
//! mod_revision`, `escape` turning each `0x00` byte into `0x00 0xFF`, so that entries sort by
//! user key, then revision), and HashKV hashes those bytes: snapshots and hashes are the same as
//! those of the versions before the history moved to revision order, so members of both versions
//! exchange snapshots and compare hashes. [`KeySpace::restore`] moves a dump's history to the
//! tree's layout.
//!
//! `StoredValue` (create_revision, mod_revision, version, lease, value) is encoded with
//! [`crate::codec`] (bincode over serde), the project's one format for its own data. The user key
//! is not repeated inside it: it is in the tree key.
//!
//! # Decisions
//! - **One tree, whole applies per batch.** Data, history, meta and the caller's
//!   `last_applied`/membership commit in the same `apply_batch`, so a restart never finds data
//!   ahead of or behind `last_applied`. Rejected: one tree per kind, which would need sled
//!   transactions across trees.
//! - **Applied writes reach sled in coalesced batches** ([`KeySpace::persist`]), not one batch per
//!   apply. Every sled `apply_batch` seals sled's IO buffer twice and wakes all seven threads of
//!   its IO pool; with one batch per apply, a single client's put spent a third of its CPU there.
//!   Nothing is lost by waiting: the Raft log is durable before an entry is applied and is kept
//!   back to the last snapshot, and a snapshot persists everything and flushes before it is
//!   reported; a crash loses whole batches with their `last_applied`, which the log replays.
//! - **Current values in memory, history in the tree.** A put writes only its history entry
//!   (packed into a block with the others of its batch) and reads nothing from sled; current
//!   reads and compares never touch sled. The cost is memory (every current key and value, as
//!   etcd's bbolt keeps its file mapped) and a scan of the history on every start. Measured
//!   (bench/results/2026-12-02-live-in-memory.md): with the live entries also in sled, each put
//!   wrote two sled entries and read one, and sled was about a third of a loaded cluster's CPU.
//!   Rejected: storing the live entries too (the earlier layout); an index of revisions only,
//!   which still reads sled for every current value.
//! - **History by revision, with an index of it in memory.** A put appends to the end of the
//!   tree, where sled's work is cheapest, rather than inserting among the versions of its key;
//!   measured (bench/results/2026-12-03-history-by-revision.md). The cost is memory: 16 bytes per
//!   version still in the history, besides the key (etcd's `keyIndex` keeps the same). A read at
//!   an older revision gets one history entry per key; Compact finds what to drop in the index
//!   and holds the keys it drops in memory, inside one batch.
//! - **History entries packed into blocks** ([`blocks`]), cut at 6 KiB: sled's cost is per tree
//!   entry (finding the leaf, linking a page fragment, splitting, consolidating), and bigger
//!   persisted batches did not lower it. The cost: reading one old version reads its block (the
//!   last one read is kept, so a dump or a range reads each block about once), and a compaction
//!   rewrites every block it cuts entries out of.
//! - **A gate (`RwLock`, holding what is in memory) around the tree** rather than relying on
//!   sled's own isolation: a range scans many entries and must see all of one applied batch or
//!   none of it, in memory and in the tree.
//! - **An apply changes the keys in memory in place**, command by command (a txn keeps an undo
//!   log for its etcd errors), rather than laying its live writes over them and merging them in
//!   at the end: each put searched the keys twice and went through two more ordered maps. So a
//!   storage read failure in the middle of an apply panics, as in a range, below.
//! - **Storage read failures inside [`KeySpace::range`] panic.** Its error type is the etcd
//!   [`KvError`], which must stay deterministic across replicas; a local disk or decoding failure
//!   is not an etcd answer, and serving on from a store that cannot be read is worse than a crash.

mod blocks;
mod history_log;
mod map_key;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::Condvar;
use std::sync::Mutex;
use std::sync::RwLock;
use std::sync::RwLockReadGuard;
use std::sync::RwLockWriteGuard;
use std::sync::atomic::AtomicI64;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use serde::Deserialize;
use serde::Serialize;

use map_key::MapKey;

use super::codec::Crc32c;
use super::codec::sled_error;
use crate::codec::Bytes;
use crate::codec::decode_borrowed;
use crate::codec::encode_into;
use crate::codec::encode_to_writer;
use crate::types::Command;
use crate::types::CommandOutput;
use crate::types::CommandResponse;
use crate::types::Compare;
use crate::types::CompareResult;
use crate::types::CompareTarget;
use crate::types::DeleteOp;
use crate::types::KeyValue;
use crate::types::KvError;
use crate::types::PutOp;
use crate::types::RangeOp;
use crate::types::RangeResult;
use crate::types::SortOrder;
use crate::types::SortTarget;
use crate::types::TxnOp;
use crate::types::TxnRequestOp;
use crate::types::TxnResponseOp;
use crate::types::TxnResult;
use history_log::HistoryLog;

/// A [`KeySpace::dump`] with the revisions it holds.
pub struct RevisionedDump {
    pub entries: Vec<(Vec<u8>, Vec<u8>)>,
    pub revision: i64,
    pub compact_revision: i64,
}

/// A [`KeySpace::dump`] frozen at a revision by [`KeySpace::freeze_dump`], encoded later
/// outside the gate. While it lives, no history entry leaves the tree.
pub struct FrozenDump {
    keyspace: Arc<KeySpace>,
    revision: i64,
    /// Meta and extra entries, copied at the freeze (every apply rewrites some of them).
    meta: Vec<(Vec<u8>, Vec<u8>)>,
    /// The history index at the freeze: the versions to read from the tree.
    index: HistoryIndex,
    extra: Vec<(Vec<u8>, Vec<u8>)>,
}

impl FrozenDump {
    /// The store revision the dump holds.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Visits the dump's entries in its order: meta, history up to the frozen revision (by key,
    /// then revision), extra.
    fn scan(&self, mut visit: impl FnMut(&[u8], &[u8]) -> io::Result<()>) -> io::Result<()> {
        for (key, value) in &self.meta {
            visit(key, value)?;
        }
        // Every version the index held at the freeze is in the tree, at or below the frozen
        // revision, and stays there while the dump lives.
        let mut reader = blocks::Reader::default();
        for (user_key, versions) in &self.index {
            for version in versions {
                let entry = reader
                    .get(
                        &self.keyspace.history,
                        &history_key(version.revision, user_key),
                    )?
                    .ok_or_else(|| missing_history_entry(user_key, version.revision))?;
                visit(&dump_key(user_key, version.revision), &entry)?;
            }
        }
        for (key, value) in &self.extra {
            visit(key, value)?;
        }
        Ok(())
    }

    /// The dump encoded with [`crate::codec`], the same bytes as `encode(&dump()?)` at the
    /// freeze. Blocking: reads the whole history, once.
    pub fn encode(&self) -> io::Result<Vec<u8>> {
        let mut encoded = Vec::new();
        self.encode_to(&mut encoded)?;
        Ok(encoded)
    }

    /// [`FrozenDump::encode`] written to `out` as it is produced, never held whole in memory.
    /// An error of `out` ends the encoding with that error.
    pub fn encode_to(&self, out: &mut impl io::Write) -> io::Result<()> {
        // The format writes the number of entries first: the index and the copies count them,
        // without reading a value (a counting pass over the tree doubled the reads; perf showed
        // snapshot encoding at 6.7% of a loaded member's CPU).
        let count =
            self.meta.len() + self.index.values().map(Vec::len).sum::<usize>() + self.extra.len();
        struct Entries<'d> {
            dump: &'d FrozenDump,
            count: usize,
        }
        impl Serialize for Entries<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                use serde::ser::Error;
                use serde::ser::SerializeSeq;
                let mut seq = serializer.serialize_seq(Some(self.count))?;
                let mut failed = None;
                let mut written = 0usize;
                let scanned = self.dump.scan(|key, value| {
                    written += 1;
                    seq.serialize_element(&(Bytes(key), Bytes(value)))
                        .map_err(|e| {
                            let error = io::Error::other(e.to_string());
                            failed = Some(e);
                            error
                        })
                });
                if let Some(e) = failed {
                    return Err(e);
                }
                scanned.map_err(S::Error::custom)?;
                if written != self.count {
                    return Err(S::Error::custom(format!(
                        "the frozen history changed while encoded: {written} entries, {} counted",
                        self.count
                    )));
                }
                seq.end()
            }
        }
        encode_to_writer(&Entries { dump: self, count }, out)
    }
}

impl Drop for FrozenDump {
    fn drop(&mut self) {
        let mut readers = self
            .keyspace
            .history_readers
            .lock()
            .expect("the history readers lock is poisoned");
        *readers -= 1;
        self.keyspace.history_released.notify_all();
    }
}

/// The caller's raw entries to write with a batch: `(key, Some(value))` inserts, `(key, None)`
/// removes; every key starts with [`EXTRA_PREFIX`].
pub type ExtraChanges = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// The prefix byte reserved for the caller's raw entries (see [`KeySpace::apply`]).
pub const EXTRA_PREFIX: u8 = 0x03;

const META_PREFIX: u8 = 0x00;
const LIVE_PREFIX: u8 = 0x01;
/// History entries of a dump, and of a tree written by an earlier version: by key, then revision.
const DUMP_HISTORY_PREFIX: u8 = 0x02;
/// History entries of the tree: by revision, then key.
const HISTORY_PREFIX: u8 = 0x04;

const META_REVISION_KEY: &[u8] = b"\x00revision";
const META_COMPACT_REVISION_KEY: &[u8] = b"\x00compact_revision";

/// First byte of a history value: a version written by a Put, followed by its [`StoredValue`].
const HISTORY_PUT: u8 = b'P';
/// The whole history value of a deletion.
const HISTORY_TOMBSTONE: u8 = b'T';

/// etcd's revision of an empty store; the first write makes revision 2.
const REVISION_INITIAL: i64 = 1;
/// Compact revision of a store that was never compacted.
const COMPACT_REVISION_INITIAL: i64 = 0;

const _: () = assert!(META_PREFIX < LIVE_PREFIX && LIVE_PREFIX < DUMP_HISTORY_PREFIX);
const _: () = assert!(DUMP_HISTORY_PREFIX < EXTRA_PREFIX && EXTRA_PREFIX < HISTORY_PREFIX);
const _: () = assert!(
    HISTORY_PREFIX < blocks::BLOCK_PREFIX && blocks::BLOCK_PREFIX < history_log::LOG_STATE_PREFIX
);
const _: () = assert!(HISTORY_PUT != HISTORY_TOMBSTONE);
const _: () = assert!(COMPACT_REVISION_INITIAL < REVISION_INITIAL);

/// One version of a key as stored; the key itself is in the tree key. The value is borrowed: a
/// put encodes the request's bytes, and a read of a field or two copies nothing.
#[derive(Debug, Serialize, Deserialize)]
struct StoredValue<'a> {
    create_revision: i64,
    mod_revision: i64,
    version: i64,
    lease: i64,
    #[serde(serialize_with = "crate::codec::bytes::serialize", borrow)]
    value: &'a [u8],
}

impl<'a> StoredValue<'a> {
    /// Decodes `stored` in place and checks what every write asserts: a version exists only from
    /// revision 2 on.
    fn decode(stored: &'a [u8]) -> io::Result<StoredValue<'a>> {
        let version = decode_borrowed::<StoredValue>(stored)?;
        if version.version < 1
            || version.create_revision <= REVISION_INITIAL
            || version.create_revision > version.mod_revision
        {
            return Err(invalid_data(format!(
                "stored version breaks its invariants: {version:?}"
            )));
        }
        Ok(version)
    }

    fn to_key_value(&self, key: &[u8]) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            value: self.value.to_vec(),
            lease: self.lease,
        }
    }

    /// The history value of this version: [`HISTORY_PUT`], then the version encoded.
    fn history_value(&self) -> io::Result<Vec<u8>> {
        assert!(
            self.version >= 1 && self.create_revision <= self.mod_revision,
            "written version {self:?}"
        );
        let mut entry = Vec::with_capacity(1 + 4 * 10 + 5 + self.value.len());
        entry.push(HISTORY_PUT);
        encode_into(self, &mut entry)?;
        Ok(entry)
    }
}

fn decode_key_value(key: &[u8], stored: &[u8]) -> io::Result<KeyValue> {
    Ok(StoredValue::decode(stored)?.to_key_value(key))
}

fn invalid_data(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// The tree key of a live entry, as the layout before 2026-12-02 stored them (tests write one).
#[cfg(test)]
fn live_key(user_key: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + user_key.len());
    key.push(LIVE_PREFIX);
    key.extend_from_slice(user_key);
    key
}

/// `0x02 escape(user_key) 0x00 0x00`: every history entry of `user_key` starts with it, and it
/// sorts after every entry of a smaller user key.
fn dump_key_prefix(user_key: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + user_key.len() + 2 + 8);
    key.push(DUMP_HISTORY_PREFIX);
    for &byte in user_key {
        key.push(byte);
        if byte == 0x00 {
            key.push(0xFF);
        }
    }
    key.extend_from_slice(&[0x00, 0x00]);
    key
}

fn dump_key(user_key: &[u8], revision: i64) -> Vec<u8> {
    // Big-endian order equals numeric order only for non-negative revisions.
    assert!(
        revision > REVISION_INITIAL,
        "history entry at revision {revision}"
    );
    let mut key = dump_key_prefix(user_key);
    key.extend_from_slice(&revision.to_be_bytes());
    key
}

/// The inverse of [`dump_key`]: (user key, mod revision).
fn parse_dump_key(tree_key: &[u8]) -> io::Result<(Vec<u8>, i64)> {
    let malformed = || invalid_data(format!("malformed history key {tree_key:?}"));
    if tree_key.first() != Some(&DUMP_HISTORY_PREFIX) {
        return Err(malformed());
    }
    let mut user_key = Vec::with_capacity(tree_key.len());
    let mut index = 1;
    loop {
        match (tree_key.get(index), tree_key.get(index + 1)) {
            (Some(0x00), Some(0xFF)) => {
                user_key.push(0x00);
                index += 2;
            }
            (Some(0x00), Some(0x00)) => {
                index += 2;
                break;
            }
            (Some(0x00), _) | (None, _) => return Err(malformed()),
            (Some(&byte), _) => {
                user_key.push(byte);
                index += 1;
            }
        }
    }
    let revision_bytes: [u8; 8] = tree_key[index..].try_into().map_err(|_| malformed())?;
    let revision = i64::from_be_bytes(revision_bytes);
    if revision <= REVISION_INITIAL {
        return Err(malformed());
    }
    Ok((user_key, revision))
}

/// `0x04 revision user_key`: the tree key of `user_key`'s version written at `revision`. The
/// revision is 8 bytes big-endian and always positive, so the history sorts by revision, then by
/// key, and every write lands at the end of the tree.
fn history_key(revision: i64, user_key: &[u8]) -> Vec<u8> {
    assert!(
        revision > REVISION_INITIAL,
        "history entry at revision {revision}"
    );
    let mut key = Vec::with_capacity(1 + 8 + user_key.len());
    key.push(HISTORY_PREFIX);
    key.extend_from_slice(&revision.to_be_bytes());
    key.extend_from_slice(user_key);
    key
}

/// The inverse of [`history_key`]: (mod revision, user key).
fn parse_history_key(tree_key: &[u8]) -> io::Result<(i64, &[u8])> {
    let malformed = || invalid_data(format!("malformed history key {tree_key:?}"));
    let Some((&HISTORY_PREFIX, rest)) = tree_key.split_first() else {
        return Err(malformed());
    };
    let Some((revision_bytes, user_key)) = rest.split_first_chunk::<8>() else {
        return Err(malformed());
    };
    let revision = i64::from_be_bytes(*revision_bytes);
    if revision <= REVISION_INITIAL {
        return Err(malformed());
    }
    Ok((revision, user_key))
}

/// A version the history index holds that the tree does not: damage.
fn missing_history_entry(user_key: &[u8], revision: i64) -> io::Error {
    invalid_data(format!(
        "history entry of key {user_key:?} at revision {revision} is missing"
    ))
}

/// One version of a key in the [`HistoryIndex`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Version {
    revision: i64,
    /// Whether this version deleted the key.
    tombstone: bool,
}

/// Per user key, every version the history holds, oldest first: what a [`FrozenDump`] reads.
type HistoryIndex = BTreeMap<Vec<u8>, Vec<Version>>;

/// What memory holds of one user key: its current value and where to find its versions in the
/// history, as etcd's `keyIndex` does, in one entry so that a write searches the keys once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct KeyState {
    /// The current version: the newest history entry when that is not a tombstone; `None`
    /// while the key does not exist (its history still holds versions).
    current: Option<Current>,
    /// Every version the history holds, oldest first; never empty (a key whose last version is
    /// compacted away leaves the map).
    versions: Vec<Version>,
}

/// A key's current version: its encoded [`StoredValue`], and beside it the numbers of it that
/// every put of the key needs. A put that neither returns nor keeps part of the previous value
/// so never reads it: with the values spread over more memory than the caches hold, that read
/// was a cache miss per put (2.5% of a follower's CPU at 1000 clients, nearly all of it on the
/// first byte's load). `mod_revision` is the revision of the key's newest version, which a put
/// otherwise read from the versions' buffer, another miss (see [`push_version`]).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Current {
    create_revision: i64,
    mod_revision: i64,
    version: i64,
    stored: Vec<u8>,
}

impl Current {
    /// `value`'s numbers beside `stored`, its encoding.
    fn new(value: &StoredValue, stored: Vec<u8>) -> Current {
        Current {
            create_revision: value.create_revision,
            mod_revision: value.mod_revision,
            version: value.version,
            stored,
        }
    }
}

/// Every key the history holds a version of. Rebuilt from the tree on open and on restore, and
/// changed only with the history entries themselves, under the write gate.
type Keys = BTreeMap<MapKey, KeyState>;

/// Whether a history value is a tombstone; an error for a value that is neither kind.
fn is_tombstone(user_key: &[u8], entry: &[u8]) -> io::Result<bool> {
    match entry.split_first() {
        Some((&HISTORY_PUT, _)) => Ok(false),
        Some((&HISTORY_TOMBSTONE, [])) => Ok(true),
        _ => Err(invalid_data(format!(
            "malformed history value of key {user_key:?}"
        ))),
    }
}

/// How to take back one change a txn made to a key, should the txn fail. `before` is `None`
/// when the key was not in [`Keys`] at all.
struct KeyUndo {
    user_key: Vec<u8>,
    before: Option<Before>,
}

/// What one change replaced in a key's [`KeyState`].
struct Before {
    current: Option<Current>,
    /// Whether the change added its version. Otherwise it replaced the version of an earlier
    /// change of the same command (a txn writes every key it changes at one revision), which the
    /// undo of that earlier change removes.
    pushed: bool,
}

/// Records in `keys` a new version of `user_key` at `revision` and its new current value
/// (`None`: the version is a tombstone, the key no longer exists). Returns what it replaced
/// (`None` when the key was not in `keys`).
fn change_key(
    keys: &mut Keys,
    revision: i64,
    user_key: &[u8],
    current: Option<Current>,
) -> Option<Before> {
    let version = Version {
        revision,
        tombstone: current.is_none(),
    };
    match keys.get_mut(user_key) {
        Some(state) => Some(push_version(state, user_key, version, current)),
        None => {
            insert_key(keys, user_key, version, current);
            None
        }
    }
}

/// Adds `user_key`, not in `keys`, with its first version.
fn insert_key(keys: &mut Keys, user_key: &[u8], version: Version, current: Option<Current>) {
    keys.insert(
        MapKey::new(user_key),
        KeyState {
            current,
            versions: vec![version],
        },
    );
}

/// Makes `version` the newest of `state` (in place of one of the same revision: the same txn
/// changed the key before) and `current` its current value; returns what it replaced.
fn push_version(
    state: &mut KeyState,
    user_key: &[u8],
    version: Version,
    current: Option<Current>,
) -> Before {
    // A key that exists has its current version newest, and that version's revision is beside
    // the value: the versions' buffer (elsewhere in memory) is then written, not read.
    let newest = match &state.current {
        Some(current) => Some(current.mod_revision),
        None => state.versions.last().map(|newest| newest.revision),
    };
    debug_assert_eq!(
        newest,
        state.versions.last().map(|newest| newest.revision),
        "the current version of {user_key:?} is not its newest"
    );
    let pushed = match newest {
        Some(newest) if newest == version.revision => {
            *state.versions.last_mut().expect("the newest version") = version;
            false
        }
        newest => {
            assert!(
                newest.is_none_or(|newest| newest < version.revision),
                "a new version of {user_key:?} at {} is not the newest",
                version.revision
            );
            state.versions.push(version);
            true
        }
    };
    Before {
        current: std::mem::replace(&mut state.current, current),
        pushed,
    }
}

/// Whether `writes` remove history entries from the tree (only a compaction does), which must
/// wait until no [`FrozenDump`] reads them.
fn removes_history(writes: &Overlay) -> bool {
    writes
        .iter()
        .any(|(key, value)| value.is_none() && key.first() == Some(&HISTORY_PREFIX))
}

fn encode_meta(value: i64) -> Vec<u8> {
    value.to_be_bytes().to_vec()
}

fn decode_meta(name: &str, bytes: Option<&[u8]>, default: i64) -> io::Result<i64> {
    match bytes {
        None => Ok(default),
        Some(bytes) => {
            let bytes: [u8; 8] = bytes.try_into().map_err(|_| {
                invalid_data(format!("meta {name} is {} bytes, not 8", bytes.len()))
            })?;
            Ok(i64::from_be_bytes(bytes))
        }
    }
}

/// The user keys named by an etcd (key, range_end) pair (ETCD_WIRE.md 3.1): `[start, end)`,
/// `end == None` meaning "to the end of the key space".
struct KeyRange {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl KeyRange {
    /// `None` when the pair names no key at all (range_end <= key, and not "\0").
    fn new(key: &[u8], range_end: &[u8]) -> Option<KeyRange> {
        if range_end.is_empty() {
            // The single key k is exactly [k, k "\0"): no other byte string sorts between them.
            let mut end = key.to_vec();
            end.push(0x00);
            return Some(KeyRange {
                start: key.to_vec(),
                end: Some(end),
            });
        }
        if range_end == [0x00] {
            return Some(KeyRange {
                start: key.to_vec(),
                end: None,
            });
        }
        (range_end > key).then(|| KeyRange {
            start: key.to_vec(),
            end: Some(range_end.to_vec()),
        })
    }

    /// The range as bounds over user keys (the [`HistoryIndex`]'s keys).
    fn user_key_bounds(&self) -> (Bound<&[u8]>, Bound<&[u8]>) {
        let high = match &self.end {
            Some(end) => Bound::Excluded(end.as_slice()),
            None => Bound::Unbounded,
        };
        (Bound::Included(self.start.as_slice()), high)
    }
}

/// Pending raw writes of one `apply` call: `Some` inserts, `None` removes. Ordered, so a scan can
/// merge it with the tree.
type Overlay = BTreeMap<Vec<u8>, PendingWrite>;

/// `Some(value)` inserts, `None` removes.
type PendingWrite = Option<Vec<u8>>;

/// The key space as it will be once `overlay` is written: what every command of an `apply`
/// reads. Live entries and versions come from the in-memory [`Keys`] (which an apply changes in
/// place); every other entry from `overlay` (the apply's history writes), the applied tree
/// writes still in memory ([`Memory::pending`], then [`Memory::persisting`]), then the tree.
struct View<'a> {
    tree: &'a sled::Tree,
    history: &'a HistoryLog,
    memory: &'a Memory,
    overlay: &'a Overlay,
    /// History entries read from the log's blocks.
    blocks: RefCell<blocks::Reader>,
}

impl View<'_> {
    /// A history entry or an extra/meta entry (live entries are read from the keys).
    fn get(&self, tree_key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        if let Some(pending) = self.overlay.get(tree_key) {
            return Ok(pending.clone());
        }
        let in_memory = self
            .memory
            .pending
            .get(tree_key)
            .or_else(|| self.memory.persisting.get(tree_key));
        if let Some(write) = in_memory {
            return Ok(write.clone());
        }
        if tree_key.first() == Some(&HISTORY_PREFIX) {
            return self.blocks.borrow_mut().get(self.history, tree_key);
        }
        Ok(self
            .tree
            .get(tree_key)
            .map_err(sled_error)?
            .map(|value| value.to_vec()))
    }

    /// Visits every tree entry in `[low, high)` in key order, the overlay taking precedence. The
    /// bounds stay clear of the live entries ([`View::scan_live`] reads those).
    fn scan(
        &self,
        low: &[u8],
        high: &[u8],
        visit: impl FnMut(&[u8], &[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        if low >= high {
            return Ok(());
        }
        assert!(
            high <= [LIVE_PREFIX].as_slice() || low >= [LIVE_PREFIX + 1].as_slice(),
            "a scan of tree entries across the live prefix"
        );
        let bounds = (Bound::Included(low), Bound::Excluded(high));
        let pending = self.overlay.range::<[u8], _>(bounds);
        let base = self
            .tree
            .range(low..high)
            .map(|entry| entry.map_err(sled_error));
        let in_memory = layered(
            self.memory.pending.range::<[u8], _>(bounds),
            self.memory.persisting.range::<[u8], _>(bounds),
        );
        let pending = layered(pending, in_memory).map(|(key, value)| (key.as_slice(), value));
        merge_scan(base, pending, visit)
    }

    /// Visits the history of every key in `range` (`None`: every key), in key order: its
    /// versions oldest first, as the index holds them (an apply records its versions there as it
    /// writes them).
    fn versions(
        &self,
        range: Option<&KeyRange>,
        mut visit: impl FnMut(&[u8], &[Version]) -> io::Result<()>,
    ) -> io::Result<()> {
        let bounds = range.map_or((Bound::Unbounded, Bound::Unbounded), |range| {
            range.user_key_bounds()
        });
        for (user_key, state) in self.memory.keys.range::<[u8], _>(bounds) {
            visit(user_key, &state.versions)?;
        }
        Ok(())
    }

    /// The history value of `user_key`'s version at `revision`, which the index holds: missing
    /// from the tree, it is damage.
    fn history_entry(&self, user_key: &[u8], revision: i64) -> io::Result<Vec<u8>> {
        self.get(&history_key(revision, user_key))?
            .ok_or_else(|| missing_history_entry(user_key, revision))
    }

    /// Visits every history entry with a revision at or below `revision` as a dump holds it
    /// (`0x02` layout: by key, then revision).
    fn scan_history_as_dump(
        &self,
        revision: i64,
        mut visit: impl FnMut(&[u8], &[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        self.versions(None, |user_key, versions| {
            for version in versions.iter().take_while(|v| v.revision <= revision) {
                let entry = self.history_entry(user_key, version.revision)?;
                visit(&dump_key(user_key, version.revision), &entry)?;
            }
            Ok(())
        })
    }

    /// Visits (user key, encoded [`StoredValue`]) of every key of `range` in the current state
    /// (inside an apply: as the commands so far left it).
    fn scan_live(
        &self,
        range: &KeyRange,
        mut visit: impl FnMut(&[u8], &[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        for (user_key, state) in self.memory.keys.range::<[u8], _>(range.user_key_bounds()) {
            if let Some(current) = &state.current {
                visit(user_key, &current.stored)?;
            }
        }
        Ok(())
    }

    /// Visits (user key, encoded [`StoredValue`]) of every key of `range` that existed at
    /// `revision`: per key, its newest version at or below `revision`, unless a tombstone.
    fn scan_at(
        &self,
        range: &KeyRange,
        revision: i64,
        mut visit: impl FnMut(&[u8], &[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        self.versions(Some(range), |user_key, versions| {
            let at_or_below = versions.partition_point(|version| version.revision <= revision);
            let Some(newest) = at_or_below.checked_sub(1).map(|index| versions[index]) else {
                return Ok(());
            };
            if newest.tombstone {
                return Ok(());
            }
            let entry = self.history_entry(user_key, newest.revision)?;
            match entry.split_first() {
                Some((&HISTORY_PUT, stored)) => visit(user_key, stored),
                _ => Err(invalid_data(format!(
                    "history entry of key {user_key:?} at revision {} is not a put",
                    newest.revision
                ))),
            }
        })
    }
}

/// Two ascending runs of pending writes as one ascending run; on equal keys `upper` wins.
fn layered<'p>(
    upper: impl Iterator<Item = (&'p Vec<u8>, &'p PendingWrite)>,
    lower: impl Iterator<Item = (&'p Vec<u8>, &'p PendingWrite)>,
) -> impl Iterator<Item = (&'p Vec<u8>, &'p PendingWrite)> {
    let mut upper = upper.peekable();
    let mut lower = lower.peekable();
    std::iter::from_fn(move || match (upper.peek(), lower.peek()) {
        (None, None) => None,
        (Some(_), None) => upper.next(),
        (None, Some(_)) => lower.next(),
        (Some((upper_key, _)), Some((lower_key, _))) => match upper_key.cmp(lower_key) {
            std::cmp::Ordering::Less => upper.next(),
            std::cmp::Ordering::Greater => lower.next(),
            std::cmp::Ordering::Equal => {
                lower.next();
                upper.next()
            }
        },
    })
}

/// Visits the entries of `base` (ascending keys) with the `pending` writes laid over them: a
/// pending entry replaces the base entry of the same key, and a pending removal hides it.
fn merge_scan<'p, K, V>(
    mut base: impl Iterator<Item = io::Result<(K, V)>>,
    pending: impl Iterator<Item = (&'p [u8], &'p PendingWrite)>,
    mut visit: impl FnMut(&[u8], &[u8]) -> io::Result<()>,
) -> io::Result<()>
where
    K: AsRef<[u8]>,
    V: AsRef<[u8]>,
{
    let mut pending = pending.peekable();
    let mut next_base = base.next().transpose()?;
    loop {
        let take_pending = match (&next_base, pending.peek()) {
            (None, None) => return Ok(()),
            (Some(_), None) => false,
            (None, Some(_)) => true,
            (Some((base_key, _)), Some((pending_key, _))) => *pending_key <= base_key.as_ref(),
        };
        if take_pending {
            let (pending_key, pending_value) = pending.next().expect("peeked");
            if next_base
                .as_ref()
                .is_some_and(|(base_key, _)| base_key.as_ref() == pending_key)
            {
                next_base = base.next().transpose()?;
            }
            if let Some(value) = pending_value {
                visit(pending_key, value)?;
            }
        } else {
            let (base_key, base_value) = next_base.take().expect("matched Some");
            visit(base_key.as_ref(), base_value.as_ref())?;
            next_base = base.next().transpose()?;
        }
    }
}

/// The revisions a read is judged against.
#[derive(Clone, Copy)]
struct ReadRevisions {
    /// Reads above it are future reads; a read at revision <= 0 means the live state.
    current: i64,
    /// Whether the live entries are exactly the state at `current` (false inside a txn that has
    /// already written: the live entries then hold the txn's in-progress state).
    live_is_current: bool,
    compact: i64,
}

/// etcd's Range (ETCD_WIRE.md 3.3) against `view`. Nested result: the outer one is the storage,
/// the inner one the etcd answer.
fn read_range(
    view: &View<'_>,
    op: &RangeOp,
    revisions: ReadRevisions,
) -> io::Result<Result<RangeResult, KvError>> {
    if op.revision > revisions.current {
        return Ok(Err(KvError::FutureRevision));
    }
    if op.revision > 0 && op.revision < revisions.compact {
        return Ok(Err(KvError::Compacted));
    }
    let Some(range) = KeyRange::new(&op.key, &op.range_end) else {
        return Ok(Ok(RangeResult::default()));
    };

    let filtered = op.min_mod_revision != 0
        || op.max_mod_revision != 0
        || op.min_create_revision != 0
        || op.max_create_revision != 0;
    // Order None with a non-key target means ascending by that target; Ascend by key is the
    // scan order itself.
    let sort = match (op.sort_order, op.sort_target) {
        (SortOrder::None | SortOrder::Ascend, SortTarget::Key) => None,
        (SortOrder::None | SortOrder::Ascend, target) => Some((target, false)),
        (SortOrder::Descend, target) => Some((target, true)),
    };
    // With a sort or a filter, limit applies to the sorted, filtered list, so keep everything.
    let keep_all = sort.is_some() || filtered;
    let limit = usize::try_from(op.limit).ok().filter(|&limit| limit > 0);

    let mut count: i64 = 0;
    let mut kvs = Vec::new();
    let mut visit = |key: &[u8], stored: &[u8]| -> io::Result<()> {
        count += 1;
        if !op.count_only && (keep_all || limit.is_none_or(|limit| kvs.len() < limit)) {
            kvs.push(decode_key_value(key, stored)?);
        }
        Ok(())
    };
    if op.revision <= 0 || (op.revision == revisions.current && revisions.live_is_current) {
        view.scan_live(&range, &mut visit)?;
    } else {
        view.scan_at(&range, op.revision, &mut visit)?;
    }

    if op.count_only {
        return Ok(Ok(RangeResult {
            kvs: Vec::new(),
            more: false,
            count,
        }));
    }
    if filtered {
        let within = |value: i64, min: i64, max: i64| {
            (min == 0 || value >= min) && (max == 0 || value <= max)
        };
        kvs.retain(|kv| {
            within(kv.mod_revision, op.min_mod_revision, op.max_mod_revision)
                && within(
                    kv.create_revision,
                    op.min_create_revision,
                    op.max_create_revision,
                )
        });
    }
    if let Some((target, descend)) = sort {
        kvs.sort_by(|a, b| {
            let by_target = match target {
                SortTarget::Key => a.key.cmp(&b.key),
                SortTarget::Version => a.version.cmp(&b.version),
                SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                SortTarget::Value => a.value.cmp(&b.value),
            };
            let by_target = if descend {
                by_target.reverse()
            } else {
                by_target
            };
            by_target.then_with(|| a.key.cmp(&b.key))
        });
    }
    let more = if keep_all {
        let cut = limit.is_some_and(|limit| kvs.len() > limit);
        if let Some(limit) = limit {
            kvs.truncate(limit);
        }
        cut
    } else {
        usize::try_from(count).expect("count is never negative") > kvs.len()
    };
    if op.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    Ok(Ok(RangeResult { kvs, more, count }))
}

/// Whether `compare` holds in the current state of `view` (ETCD_WIRE.md 3.2 and 3.5).
fn compare_holds(view: &View<'_>, compare: &Compare) -> io::Result<bool> {
    let Some(range) = KeyRange::new(&compare.key, &compare.range_end) else {
        return Ok(compare_key_value(compare, None));
    };
    let mut any = false;
    let mut all_hold = true;
    view.scan_live(&range, |key, stored| {
        any = true;
        if all_hold {
            all_hold = compare_key_value(compare, Some(&decode_key_value(key, stored)?));
        }
        Ok(())
    })?;
    Ok(if any {
        all_hold
    } else {
        compare_key_value(compare, None)
    })
}

/// One key against a compare; `None` is a missing key: zero revisions, and a Value compare fails.
fn compare_key_value(compare: &Compare, kv: Option<&KeyValue>) -> bool {
    let zero = KeyValue::default();
    let ordering = match (&compare.target, kv) {
        (CompareTarget::Value(_), None) => return false,
        (CompareTarget::Value(operand), Some(kv)) => kv.value.as_slice().cmp(operand.as_slice()),
        (CompareTarget::Version(operand), kv) => kv.unwrap_or(&zero).version.cmp(operand),
        (CompareTarget::Create(operand), kv) => kv.unwrap_or(&zero).create_revision.cmp(operand),
        (CompareTarget::Mod(operand), kv) => kv.unwrap_or(&zero).mod_revision.cmp(operand),
        (CompareTarget::Lease(operand), kv) => kv.unwrap_or(&zero).lease.cmp(operand),
    };
    match compare.result {
        CompareResult::Equal => ordering.is_eq(),
        CompareResult::NotEqual => ordering.is_ne(),
        CompareResult::Greater => ordering.is_gt(),
        CompareResult::Less => ordering.is_lt(),
    }
}

/// The branches a txn takes, decided before it runs: `succeeded` for this txn, then one entry per
/// nested txn of the chosen branch, in order.
struct TxnPath {
    succeeded: bool,
    nested: Vec<TxnPath>,
}

/// The state of one [`KeySpace::apply`] call: the overlay and the revisions as the commands so far
/// left them.
struct Apply<'a> {
    tree: &'a sled::Tree,
    history: &'a HistoryLog,
    /// Held under the write gate: each command changes the keys (current values and index) in
    /// place, so the next one reads them as it left them.
    memory: &'a mut Memory,
    /// This apply's history writes and removals, handed to [`Memory::pending`] at its end.
    overlay: Overlay,
    revision: i64,
    compact_revision: i64,
    live_key_count: usize,
    /// Whether the command in progress changed a key (so it takes a new revision).
    changed: bool,
    /// Overlay entries as they were before the command in progress first wrote each tree key
    /// (`None`: the key was not in the overlay), and its changes to the keys, newest last, so an
    /// etcd error can undo the whole command. Kept for a txn only: every other command fails,
    /// if at all, before it writes.
    undo: BTreeMap<Vec<u8>, Option<PendingWrite>>,
    key_undo: Vec<KeyUndo>,
    /// Whether the command in progress is a txn, which keeps `undo`.
    undoable: bool,
}

impl Apply<'_> {
    fn view(&self) -> View<'_> {
        View {
            tree: self.tree,
            history: self.history,
            memory: &*self.memory,
            overlay: &self.overlay,
            blocks: RefCell::default(),
        }
    }

    /// The revision every key changed by the command in progress gets.
    fn write_revision(&self) -> i64 {
        self.revision + 1
    }

    fn execute(&mut self, command: &Command) -> io::Result<CommandResponse> {
        let revision_before = self.revision;
        let live_key_count_before = self.live_key_count;
        self.changed = false;
        self.undo.clear();
        self.key_undo.clear();
        self.undoable = matches!(command, Command::Txn(_));

        let result = match command {
            Command::Put(op) => self.put(op)?.map(|prev_kv| CommandOutput::Put { prev_kv }),
            Command::Delete(op) => {
                let (deleted, prev_kvs) = self.delete(op)?;
                Ok(CommandOutput::Delete { deleted, prev_kvs })
            }
            Command::Txn(op) => {
                // Every compare, nested ones too, is judged against the state before the txn.
                let path = self.txn_path(op)?;
                self.txn(op, &path, revision_before)?
                    .map(CommandOutput::Txn)
            }
            Command::Compact { revision } => {
                self.compact(*revision)?.map(|()| CommandOutput::Compact)
            }
            // Whether a numbered write runs at all is the state machine's decision (its client
            // sessions); once it runs, it is its command.
            Command::Numbered { command, .. } => return self.execute(command),
            // Alarms are the state machine's, outside the key space: nothing changes here.
            Command::Alarm { .. } => Ok(CommandOutput::Alarms(Vec::new())),
        };

        match &result {
            Ok(_) if self.changed => {
                self.revision = self.write_revision();
                assert_eq!(
                    self.revision,
                    revision_before + 1,
                    "a command bumps the revision by one"
                );
            }
            Ok(_) => assert_eq!(self.revision, revision_before),
            Err(_) => {
                assert!(
                    self.undoable || !self.changed,
                    "only a txn fails after it wrote"
                );
                self.rollback();
                self.live_key_count = live_key_count_before;
                self.changed = false;
                assert_eq!(
                    self.revision, revision_before,
                    "a failed command keeps the revision"
                );
            }
        }
        Ok(CommandResponse {
            revision: self.revision,
            result,
        })
    }

    fn write(&mut self, tree_key: Vec<u8>, value: Option<Vec<u8>>) {
        if self.undoable && !self.undo.contains_key(&tree_key) {
            let before = self.overlay.get(&tree_key).cloned();
            self.undo.insert(tree_key.clone(), before);
        }
        self.overlay.insert(tree_key, value);
    }

    fn rollback(&mut self) {
        for (tree_key, before) in std::mem::take(&mut self.undo) {
            match before {
                Some(before) => self.overlay.insert(tree_key, before),
                None => self.overlay.remove(&tree_key),
            };
        }
        let keys = &mut self.memory.keys;
        for KeyUndo { user_key, before } in std::mem::take(&mut self.key_undo).into_iter().rev() {
            let state = keys
                .get_mut(user_key.as_slice())
                .expect("a key a txn changed is in the keys");
            match before {
                Some(Before { current, pushed }) => {
                    if pushed {
                        state.versions.pop().expect("the change's version");
                    }
                    state.current = current;
                }
                None => keys
                    .remove(user_key.as_slice())
                    .map(drop)
                    .expect("the key the txn created"),
            }
        }
    }

    /// Records a change of `user_key` made by the command in progress (see [`change_key`]),
    /// and how to undo it if the command is a txn.
    fn note_change(&mut self, user_key: &[u8], before: Option<Before>) {
        if self.undoable {
            self.key_undo.push(KeyUndo {
                user_key: user_key.to_vec(),
                before,
            });
        }
        self.changed = true;
    }

    fn write_tombstone(&mut self, user_key: &[u8]) {
        let revision = self.write_revision();
        let before = change_key(&mut self.memory.keys, revision, user_key, None);
        self.write(
            history_key(revision, user_key),
            Some(vec![HISTORY_TOMBSTONE]),
        );
        self.note_change(user_key, before);
    }

    fn put(&mut self, op: &PutOp) -> io::Result<Result<Option<KeyValue>, KvError>> {
        // No lease exists yet, so naming one can only fail.
        if op.lease != 0 {
            return Ok(Err(KvError::LeaseNotFound));
        }
        let revision = self.write_revision();
        // The key is searched once: its current version is read in place, and changed there.
        let mut state = self.memory.keys.get_mut(op.key.as_slice());
        let existing = state.as_ref().and_then(|state| state.current.as_ref());
        if (op.ignore_value || op.ignore_lease) && existing.is_none() {
            return Ok(Err(KvError::KeyNotFound));
        }
        // The previous value itself only when this put returns or keeps part of it.
        let previous = match existing {
            Some(current) if op.prev_kv || op.ignore_value || op.ignore_lease => {
                let previous = StoredValue::decode(&current.stored)?;
                debug_assert_eq!(
                    &Current::new(&previous, current.stored.clone()),
                    current,
                    "a current version's numbers beside it differ from its own"
                );
                Some(previous)
            }
            _ => None,
        };
        let created = existing.is_none();
        let new_value = StoredValue {
            create_revision: existing.map_or(revision, |current| current.create_revision),
            mod_revision: revision,
            version: existing.map_or(1, |current| current.version + 1),
            lease: match (&previous, op.ignore_lease) {
                (Some(previous), true) => previous.lease,
                _ => op.lease,
            },
            value: match (&previous, op.ignore_value) {
                (Some(previous), true) => previous.value,
                _ => &op.value,
            },
        };
        let history_value = new_value.history_value()?;
        let current = Some(Current::new(&new_value, history_value[1..].to_vec()));
        let prev_kv = previous
            .filter(|_| op.prev_kv)
            .map(|previous| previous.to_key_value(&op.key));
        let version = Version {
            revision,
            tombstone: false,
        };
        let before = match state.as_mut() {
            Some(state) => Some(push_version(state, &op.key, version, current)),
            None => {
                insert_key(&mut self.memory.keys, &op.key, version, current);
                None
            }
        };
        self.write(history_key(revision, &op.key), Some(history_value));
        self.note_change(&op.key, before);
        if created {
            self.live_key_count += 1;
        }
        Ok(Ok(prev_kv))
    }

    /// Returns the number of deleted keys and, if asked, their last versions.
    fn delete(&mut self, op: &DeleteOp) -> io::Result<(i64, Vec<KeyValue>)> {
        let Some(range) = KeyRange::new(&op.key, &op.range_end) else {
            return Ok((0, Vec::new()));
        };
        let mut deleted = Vec::new();
        self.view().scan_live(&range, |key, stored| {
            deleted.push(decode_key_value(key, stored)?);
            Ok(())
        })?;
        for kv in &deleted {
            self.write_tombstone(&kv.key);
        }
        self.live_key_count = self
            .live_key_count
            .checked_sub(deleted.len())
            .expect("live key count covers every deleted key");
        let count = i64::try_from(deleted.len()).expect("deleted count fits i64");
        Ok((count, if op.prev_kv { deleted } else { Vec::new() }))
    }

    fn txn_path(&self, op: &TxnOp) -> io::Result<TxnPath> {
        let view = self.view();
        let mut succeeded = true;
        for compare in &op.compare {
            if !compare_holds(&view, compare)? {
                succeeded = false;
                break;
            }
        }
        let branch = if succeeded { &op.success } else { &op.failure };
        let mut nested = Vec::new();
        for request in branch {
            if let TxnRequestOp::Txn(inner) = request {
                nested.push(self.txn_path(inner)?);
            }
        }
        Ok(TxnPath { succeeded, nested })
    }

    /// Runs the branch `path` chose; `start_revision` is the revision before the top-level txn.
    fn txn(
        &mut self,
        op: &TxnOp,
        path: &TxnPath,
        start_revision: i64,
    ) -> io::Result<Result<TxnResult, KvError>> {
        let branch = if path.succeeded {
            &op.success
        } else {
            &op.failure
        };
        let mut nested = path.nested.iter();
        let mut responses = Vec::with_capacity(branch.len());
        for request in branch {
            let response = match request {
                TxnRequestOp::Range(range) => {
                    let revisions = ReadRevisions {
                        current: start_revision,
                        live_is_current: !self.changed,
                        compact: self.compact_revision,
                    };
                    match read_range(&self.view(), range, revisions)? {
                        Ok(result) => TxnResponseOp::Range(result),
                        Err(error) => return Ok(Err(error)),
                    }
                }
                TxnRequestOp::Put(put) => match self.put(put)? {
                    Ok(prev_kv) => TxnResponseOp::Put { prev_kv },
                    Err(error) => return Ok(Err(error)),
                },
                TxnRequestOp::Delete(delete) => {
                    let (deleted, prev_kvs) = self.delete(delete)?;
                    TxnResponseOp::Delete { deleted, prev_kvs }
                }
                TxnRequestOp::Txn(inner) => {
                    let inner_path = nested
                        .next()
                        .expect("txn_path has one entry per nested txn");
                    match self.txn(inner, inner_path, start_revision)? {
                        Ok(result) => TxnResponseOp::Txn(result),
                        Err(error) => return Ok(Err(error)),
                    }
                }
            };
            responses.push(response);
        }
        assert!(
            nested.next().is_none(),
            "every nested txn of the branch ran"
        );
        Ok(Ok(TxnResult {
            succeeded: path.succeeded,
            responses,
        }))
    }

    /// Drops history older than `revision` (ETCD_WIRE.md 3.6): per key, every version below its
    /// newest at or below `revision`, and that one too if a tombstone. Found in the index, without
    /// reading the tree; holds the keys to remove in memory: one entry per dropped version.
    fn compact(&mut self, revision: i64) -> io::Result<Result<(), KvError>> {
        if revision <= self.compact_revision {
            return Ok(Err(KvError::Compacted));
        }
        if revision > self.revision {
            return Ok(Err(KvError::FutureRevision));
        }
        // Per key with versions to drop: the key and how many of its oldest versions go.
        let mut dropped = Vec::new();
        self.view().versions(None, |user_key, versions| {
            let at_or_below = versions.partition_point(|version| version.revision <= revision);
            let Some(newest) = at_or_below.checked_sub(1) else {
                return Ok(());
            };
            let drop_to = if versions[newest].tombstone {
                at_or_below
            } else {
                newest
            };
            if drop_to > 0 {
                dropped.push((user_key.to_vec(), drop_to));
            }
            Ok(())
        })?;
        for (user_key, drop_to) in dropped {
            let state = self
                .memory
                .keys
                .get_mut(user_key.as_slice())
                .expect("a key the index visited is in it");
            let gone: Vec<Version> = state.versions.drain(..drop_to).collect();
            // Only a deleted key loses every version: a current version is never compacted.
            if state.versions.is_empty() {
                assert!(
                    state.current.is_none(),
                    "the current version of {user_key:?} compacted"
                );
                self.memory.keys.remove(user_key.as_slice());
            }
            for version in gone {
                self.write(history_key(version.revision, &user_key), None);
            }
        }
        self.compact_revision = revision;
        Ok(Ok(()))
    }
}

/// Revision, compact revision and live key count as found in a stored state.
struct Loaded {
    revision: i64,
    compact_revision: i64,
    live_key_count: usize,
}

impl Loaded {
    fn new(
        revision: Option<&[u8]>,
        compact_revision: Option<&[u8]>,
        live_key_count: usize,
    ) -> io::Result<Loaded> {
        let revision = decode_meta("revision", revision, REVISION_INITIAL)?;
        let compact_revision = decode_meta(
            "compact_revision",
            compact_revision,
            COMPACT_REVISION_INITIAL,
        )?;
        if revision < REVISION_INITIAL
            || compact_revision < COMPACT_REVISION_INITIAL
            || compact_revision > revision
        {
            return Err(invalid_data(format!(
                "stored revision {revision} and compact revision {compact_revision} are inconsistent"
            )));
        }
        Ok(Loaded {
            revision,
            compact_revision,
            live_key_count,
        })
    }
}

/// Tree writes of applied batches are handed to sled once this many are waiting...
const PERSIST_AFTER_WRITES: usize = 512;
/// ...or once the oldest of them has waited this long (checked when a batch is applied).
const PERSIST_AFTER: Duration = Duration::from_millis(50);

/// What the key space holds in memory, under its gate.
#[derive(Default)]
struct Memory {
    keys: Keys,
    /// Tree writes of applied batches, not yet handed to sled, in the order of precedence: newer
    /// than `persisting`.
    pending: Overlay,
    /// Tree writes being written to sled right now, outside the gate; readers find them here
    /// until sled holds them.
    persisting: Arc<Overlay>,
    /// When the oldest write in `pending` was applied.
    pending_since: Option<Instant>,
}

/// The MVCC key space in one sled tree. Shared (behind an `Arc`) by the state machine, which
/// applies, and the API's local reads.
pub struct KeySpace {
    tree: sled::Tree,
    /// The history's blocks.
    history: HistoryLog,
    /// Readers hold it shared, `apply`, `restore` and the hand-over to sled exclusively, so no
    /// read sees half a batch, in memory or in the tree.
    gate: RwLock<Memory>,
    /// Held by whoever writes `persisting` to sled: one such write at a time.
    persisting: Mutex<()>,
    /// How many [`FrozenDump`]s are reading the history from the tree outside the gate. While
    /// any is, nothing removes a history entry from the tree (a compaction's hand-over to sled
    /// and `restore` wait on `history_released`); entries only get added, above their revision.
    history_readers: Mutex<usize>,
    history_released: Condvar,
    revision: AtomicI64,
    compact_revision: AtomicI64,
    live_key_count: AtomicUsize,
    /// A test's temporary folder of the history log, removed with the key space.
    #[cfg(test)]
    temporary: Option<tempfile::TempDir>,
}

impl KeySpace {
    /// Opens (or creates) the key space in `tree`, its history log in `history_dir`: revision 1
    /// and compact revision 0 when empty.
    pub fn open(tree: sled::Tree, history_dir: &std::path::Path) -> io::Result<KeySpace> {
        drop_stored_live_entries(&tree)?;
        move_history_to_revision_order(&tree)?;
        move_history_into_blocks(&tree)?;
        let history = HistoryLog::open(&tree, history_dir)?;
        let keys = load_history(stored_history(&history))?;
        let loaded = Loaded::new(
            tree.get(META_REVISION_KEY).map_err(sled_error)?.as_deref(),
            tree.get(META_COMPACT_REVISION_KEY)
                .map_err(sled_error)?
                .as_deref(),
            live_count(&keys),
        )?;
        Ok(KeySpace {
            tree,
            history,
            gate: RwLock::new(Memory {
                keys,
                ..Memory::default()
            }),
            persisting: Mutex::new(()),
            history_readers: Mutex::new(0),
            history_released: Condvar::new(),
            revision: AtomicI64::new(loaded.revision),
            compact_revision: AtomicI64::new(loaded.compact_revision),
            live_key_count: AtomicUsize::new(loaded.live_key_count),
            #[cfg(test)]
            temporary: None,
        })
    }

    /// The current store revision.
    pub fn revision(&self) -> i64 {
        self.revision.load(Ordering::Acquire)
    }

    pub fn compact_revision(&self) -> i64 {
        self.compact_revision.load(Ordering::Acquire)
    }

    /// Number of keys that currently exist.
    pub fn live_key_count(&self) -> usize {
        self.live_key_count.load(Ordering::Acquire)
    }

    /// A consistent read at `op.revision` (<= 0: current). Returns the result and the current
    /// store revision at the time of the read (etcd's `header.revision`).
    ///
    /// Panics if the tree cannot be read or decoded (see the module docs).
    pub fn range(&self, op: &RangeOp) -> Result<(RangeResult, i64), KvError> {
        let memory = self.read_gate();
        let revision = self.revision();
        let revisions = ReadRevisions {
            current: revision,
            live_is_current: true,
            compact: self.compact_revision(),
        };
        let overlay = Overlay::new();
        let view = self.view(&memory, &overlay);
        match read_range(&view, op, revisions) {
            Ok(result) => result.map(|result| (result, revision)),
            Err(error) => panic!("the key space cannot be read: {error}"),
        }
    }

    /// Executes `commands` in order, each seeing the effects of the previous ones, and writes all
    /// their changes plus `extra` in one batch, then publishes the new revision. `None` (a blank
    /// or membership entry) answers [`CommandResponse::no_op`]. Returns one response per command.
    ///
    /// `extra` holds the caller's raw entries, `(key, Some(value))` to insert or `(key, None)` to
    /// remove, each key starting with [`EXTRA_PREFIX`]: they commit atomically with the data.
    /// Does not flush: the caller decides when the batch must be durable.
    pub fn apply(
        &self,
        commands: &[Option<&Command>],
        extra: ExtraChanges,
    ) -> io::Result<Vec<CommandResponse>> {
        self.apply_with(commands, |_| Ok(extra))
    }

    /// [`KeySpace::apply`] with the extra entries computed from the responses, before anything
    /// is visible: what the caller records about the results commits in the same batch.
    ///
    /// Panics if a command cannot read the store or `extra` fails: the in-memory keys already
    /// hold the batch's earlier commands then, and the poisoned gate keeps every reader off them
    /// (a node that cannot read its store stops, see the module docs). Errs only when handing
    /// the writes to sled fails, with memory whole.
    pub fn apply_with<F>(
        &self,
        commands: &[Option<&Command>],
        extra: F,
    ) -> io::Result<Vec<CommandResponse>>
    where
        F: FnOnce(&[CommandResponse]) -> io::Result<ExtraChanges>,
    {
        let mut gate = self.write_gate();
        let revision_before = self.revision();
        let compact_revision_before = self.compact_revision();
        let mut apply = Apply {
            tree: &self.tree,
            history: &self.history,
            memory: &mut gate,
            overlay: Overlay::new(),
            revision: revision_before,
            compact_revision: compact_revision_before,
            live_key_count: self.live_key_count(),
            changed: false,
            undo: BTreeMap::new(),
            key_undo: Vec::new(),
            undoable: false,
        };
        let mut responses = Vec::with_capacity(commands.len());
        for command in commands {
            responses.push(match command {
                // The keys already hold the commands before this one: a storage failure now
                // would leave them half applied, so it stops the node, as a failed read does
                // (the gate is poisoned: nothing reads the keys after it).
                Some(command) => match apply.execute(command) {
                    Ok(response) => response,
                    Err(error) => panic!("the key space cannot be read during an apply: {error}"),
                },
                None => CommandResponse::no_op(apply.revision),
            });
        }
        assert!(
            apply.revision >= revision_before,
            "the revision never goes backwards"
        );
        assert!(
            apply.compact_revision <= apply.revision,
            "compaction stays behind the revision"
        );

        let extra = match extra(&responses) {
            Ok(extra) => extra,
            Err(error) => panic!("the extra entries of an apply cannot be made: {error}"),
        };
        for (key, _) in &extra {
            assert_eq!(
                key.first(),
                Some(&EXTRA_PREFIX),
                "an extra entry outside EXTRA_PREFIX"
            );
        }
        let Apply {
            overlay,
            revision,
            compact_revision,
            live_key_count,
            ..
        } = apply;
        // Everything this batch changes becomes visible at once: readers wait on the gate.
        let memory = &mut *gate;
        // History keys go up with the revision: each lands at the end of the pending writes.
        for (key, value) in overlay {
            memory.pending.insert(key, value);
        }
        memory.pending.extend(extra);
        // Only what changed: a missing meta entry reads back as its initial value, and every
        // replica makes the same choice from the same commands.
        if revision != revision_before {
            memory
                .pending
                .insert(META_REVISION_KEY.to_vec(), Some(encode_meta(revision)));
        }
        if compact_revision != compact_revision_before {
            memory.pending.insert(
                META_COMPACT_REVISION_KEY.to_vec(),
                Some(encode_meta(compact_revision)),
            );
        }
        let pending_since = *memory.pending_since.get_or_insert_with(Instant::now);
        let persist_now = memory.pending.len() >= PERSIST_AFTER_WRITES
            || pending_since.elapsed() >= PERSIST_AFTER;

        self.revision.store(revision, Ordering::Release);
        self.compact_revision
            .store(compact_revision, Ordering::Release);
        self.live_key_count.store(live_key_count, Ordering::Release);
        drop(gate);
        if persist_now {
            self.persist()?;
        }
        Ok(responses)
    }

    /// Hands every applied tree write still in memory to sled, in one batch, so whatever sled
    /// makes durable next holds every batch applied so far. Readers are not held up while sled
    /// writes. Does not flush.
    pub fn persist(&self) -> io::Result<()> {
        let _one_at_a_time = self
            .persisting
            .lock()
            .expect("the key space persist lock is poisoned");
        let Some(writes) = self.start_persisting() else {
            return Ok(());
        };
        // Only a compaction removes history entries; a frozen dump reading the tree must not
        // lose them under it (the writes stay readable in `persisting` meanwhile).
        if removes_history(&writes) {
            self.wait_for_no_history_readers();
        }
        let written = self.write_to_tree(&writes);
        self.finish_persisting(&writes, written.is_ok());
        written
    }

    /// Blocks until no [`FrozenDump`] reads the history from the tree.
    fn wait_for_no_history_readers(&self) {
        let readers = self
            .history_readers
            .lock()
            .expect("the history readers lock is poisoned");
        let _none = self
            .history_released
            .wait_while(readers, |readers| *readers > 0)
            .expect("the history readers lock is poisoned");
    }

    /// Moves the pending writes to `persisting`, where readers still find them; `None` when
    /// there are none.
    fn start_persisting(&self) -> Option<Arc<Overlay>> {
        let mut memory = self.write_gate();
        if memory.pending.is_empty() {
            return None;
        }
        let writes = Arc::new(std::mem::take(&mut memory.pending));
        memory.persisting = writes.clone();
        memory.pending_since = None;
        Some(writes)
    }

    /// The history blocks `writes` change go to the log first, synced; then the rest of
    /// `writes`, with the log's seq, in one sled batch (see [`history_log`] for the order).
    fn write_to_tree(&self, writes: &Overlay) -> io::Result<()> {
        let mut batch = sled::Batch::default();
        let history = writes.range(vec![HISTORY_PREFIX]..vec![HISTORY_PREFIX + 1]);
        let changes = blocks::write(
            &self.history,
            history.map(|(key, value)| (key.as_slice(), value.as_deref())),
        )?;
        let staged = self.history.stage(changes)?;
        if let Some(staged) = &staged {
            let (key, value) = staged.sled_entry();
            batch.insert(key, &value[..]);
        }
        for (key, value) in writes {
            if key.first() == Some(&HISTORY_PREFIX) {
                continue;
            }
            match value {
                Some(value) => batch.insert(key.as_slice(), value.as_slice()),
                None => batch.remove(key.as_slice()),
            }
        }
        match self.tree.apply_batch(batch) {
            Ok(()) => {
                if let Some(staged) = staged {
                    self.history.commit(staged);
                }
            }
            Err(error) => {
                if let Some(staged) = staged {
                    self.history.abandon(staged);
                }
                return Err(sled_error(error));
            }
        }
        // The writes are in sled and the log now: a failed rewrite must not report them lost
        // (they would be written again, below the newest entry); it is tried again next time.
        if self.history.wants_rewrite()
            && let Err(error) = self.rewrite_history()
        {
            tracing::warn!(%error, "history log rewrite failed; it is tried again at the next persist");
        }
        Ok(())
    }

    /// Rewrites the history log without the space of replaced and removed blocks. The blocks
    /// stay readable throughout (the new file takes over at once, with the same blocks).
    fn rewrite_history(&self) -> io::Result<()> {
        let generation = self.history.rewrite()?;
        self.switch_history(generation, sled::Batch::default())
    }

    /// Names `generation` in the tree, in `batch` with the rest of it, and puts it in use. The
    /// file it replaces goes only once sled has flushed, so a restart never finds sled naming a
    /// removed file.
    fn switch_history(
        &self,
        generation: history_log::Generation,
        mut batch: sled::Batch,
    ) -> io::Result<()> {
        for (key, value) in generation.sled_entries() {
            batch.insert(key, &value[..]);
        }
        self.tree.apply_batch(batch).map_err(sled_error)?;
        // Durability is the caller's (as for every batch); only the old file's removal waits.
        let flushed = self.tree.flush();
        if let Err(error) = &flushed {
            tracing::warn!(%error, "sled flush failed: the replaced history log stays until the next start");
        }
        self.history.switch(generation, flushed.is_ok());
        Ok(())
    }

    /// Bytes of the history log's file.
    pub fn history_bytes(&self) -> u64 {
        self.history.bytes()
    }

    /// Drops `persisting` once the tree holds it, or puts it back under the pending writes
    /// applied since when sled refused it.
    fn finish_persisting(&self, writes: &Overlay, written: bool) {
        let mut memory = self.write_gate();
        if !written {
            for (key, value) in writes {
                memory
                    .pending
                    .entry(key.clone())
                    .or_insert_with(|| value.clone());
            }
            memory.pending_since = Some(Instant::now());
        }
        memory.persisting = Arc::new(Overlay::new());
    }

    /// The caller's raw entry `key` (which includes [`EXTRA_PREFIX`]).
    pub fn get_extra(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        assert_eq!(
            key.first(),
            Some(&EXTRA_PREFIX),
            "an extra key outside EXTRA_PREFIX"
        );
        let memory = self.read_gate();
        self.view(&memory, &Overlay::new()).get(key)
    }

    /// etcd's HashKV: a CRC-32C over every stored version with a revision at or below
    /// `revision` (<= 0: the current one), in key order, as a dump holds them. Equal on every
    /// replica that applied that revision, because the history's bytes are. Returns (hash,
    /// compact revision, hashed revision).
    pub fn hash_kv(&self, revision: i64) -> Result<(u32, i64, i64), KvError> {
        let memory = self.read_gate();
        let current = self.revision();
        let compact = self.compact_revision();
        let at = if revision <= 0 { current } else { revision };
        if at > current {
            return Err(KvError::FutureRevision);
        }
        if revision > 0 && at < compact {
            return Err(KvError::Compacted);
        }
        let mut crc = Crc32c::default();
        // Over the dump's layout, which every version of QuorumDB hashes alike.
        let hashed =
            self.view(&memory, &Overlay::new())
                .scan_history_as_dump(at, |dump_key, value| {
                    crc.update(dump_key);
                    crc.update(value);
                    Ok(())
                });
        if let Err(error) = hashed {
            panic!("the key space cannot be read: {error}");
        }
        Ok((crc.finish(), compact, at))
    }

    /// The caller's raw entries whose keys start with `prefix` (which includes
    /// [`EXTRA_PREFIX`]), in key order.
    pub fn scan_extra(&self, prefix: &[u8]) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        assert_eq!(
            prefix.first(),
            Some(&EXTRA_PREFIX),
            "an extra prefix outside EXTRA_PREFIX"
        );
        // The first key after every key that starts with `prefix`: the prefix with its last
        // byte below 0xFF raised by one and what follows cut off (EXTRA_PREFIX is below 0xFF).
        let mut end = prefix.to_vec();
        while end.last() == Some(&0xFF) {
            end.pop();
        }
        *end.last_mut().expect("EXTRA_PREFIX is below 0xFF") += 1;
        let memory = self.read_gate();
        let mut entries = Vec::new();
        self.view(&memory, &Overlay::new())
            .scan(prefix, &end, |key, value| {
                entries.push((key.to_vec(), value.to_vec()));
                Ok(())
            })?;
        Ok(entries)
    }

    /// Every entry of the tree (meta, history, extras) as it stands once every applied write is
    /// in it, read under the gate, with the history in the dump's layout (by key, then revision):
    /// a consistent copy for a snapshot, accepted as is by [`KeySpace::restore`].
    pub fn dump(&self) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.dump_with_revisions().map(|dump| dump.entries)
    }

    /// [`KeySpace::dump`] with the revision and compact revision it holds, read under the same
    /// gate: an apply cannot come between them.
    pub fn dump_with_revisions(&self) -> io::Result<RevisionedDump> {
        let memory = self.read_gate();
        let (revision, compact_revision) = (self.revision(), self.compact_revision());
        let no_writes = Overlay::new();
        let view = self.view(&memory, &no_writes);
        let mut entries = Vec::new();
        let mut push = |key: &[u8], value: &[u8]| {
            entries.push((key.to_vec(), value.to_vec()));
            Ok(())
        };
        view.scan(&[META_PREFIX], &[LIVE_PREFIX], &mut push)?;
        view.scan_history_as_dump(revision, &mut push)?;
        view.scan(&[EXTRA_PREFIX], &[EXTRA_PREFIX + 1], &mut push)?;
        Ok(RevisionedDump {
            entries,
            revision,
            compact_revision,
        })
    }

    /// Freezes what [`KeySpace::dump`] would return now, to be encoded later by
    /// [`FrozenDump::encode`] without holding the gate: applies and reads go on meanwhile.
    ///
    /// Every applied write is handed to sled first (under the gate, so none is applied in
    /// between); the meta and extra entries, few and rewritten by every apply, are copied; the
    /// history is read from the tree later, up to the frozen revision. History entries are only
    /// ever added above the current revision, except by a compaction or a restore, and those wait
    /// for the dump to be dropped. Call it where the dump must sit in the log (the state machine
    /// task, between applies).
    pub fn freeze_dump(self: &Arc<Self>) -> io::Result<FrozenDump> {
        let _one_at_a_time = self
            .persisting
            .lock()
            .expect("the key space persist lock is poisoned");
        // `persisting` is empty: its writer holds the lock taken above. The pending writes go to
        // sled under the gate, so no apply comes between them and the frozen revision. A
        // compaction's removals among them wait for the dumps still reading (outside the gate:
        // they do not need it; nothing is applied meanwhile, as the caller is the applier).
        if removes_history(&self.read_gate().pending) {
            self.wait_for_no_history_readers();
        }
        let mut memory = self.write_gate();
        if !memory.pending.is_empty() {
            self.write_to_tree(&memory.pending)?;
            memory.pending.clear();
            memory.pending_since = None;
        }
        let revision = self.revision();
        let no_writes = Overlay::new();
        let view = self.view(&memory, &no_writes);
        let mut meta = Vec::new();
        view.scan(&[META_PREFIX], &[LIVE_PREFIX], |key, value| {
            meta.push((key.to_vec(), value.to_vec()));
            Ok(())
        })?;
        let mut extra = Vec::new();
        view.scan(&[EXTRA_PREFIX], &[EXTRA_PREFIX + 1], |key, value| {
            extra.push((key.to_vec(), value.to_vec()));
            Ok(())
        })?;
        let index = memory
            .keys
            .iter()
            .map(|(user_key, state)| (user_key.to_vec(), state.versions.clone()))
            .collect();
        *self
            .history_readers
            .lock()
            .expect("the history readers lock is poisoned") += 1;
        drop(memory);
        Ok(FrozenDump {
            keyspace: self.clone(),
            revision,
            meta,
            index,
            extra,
        })
    }

    fn view<'a>(&'a self, memory: &'a Memory, overlay: &'a Overlay) -> View<'a> {
        View {
            tree: &self.tree,
            history: &self.history,
            memory,
            overlay,
            blocks: RefCell::default(),
        }
    }

    /// Replaces the whole content of the tree by `entries` in one batch, then reloads the revision
    /// and compact revision. `entries` are checked first: on an error nothing changes.
    ///
    /// A dump from before the live entries moved to memory also holds them (prefix
    /// [`LIVE_PREFIX`]): they are checked like the rest and left out, as the history rebuilds them.
    pub fn restore(&self, entries: Vec<(Vec<u8>, Vec<u8>)>) -> io::Result<()> {
        let (loaded, restored_keys) = check_entries(&entries)?;
        let _no_persist_in_flight = self
            .persisting
            .lock()
            .expect("the key space persist lock is poisoned");
        self.wait_for_no_history_readers();
        let mut memory = self.write_gate();
        let mut batch = sled::Batch::default();
        for key in self.tree.iter().keys() {
            batch.remove(key.map_err(sled_error)?);
        }
        // A batch keeps the last write per key, so a restored key's insert wins over its removal.
        let mut history = Vec::new();
        for (key, value) in entries {
            match key.first() {
                Some(&LIVE_PREFIX) => {}
                Some(&DUMP_HISTORY_PREFIX) => {
                    let (user_key, revision) = parse_dump_key(&key)?;
                    history.push((history_key(revision, &user_key), value));
                }
                _ => batch.insert(key, value),
            }
        }
        history.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
        let history = history.iter().map(|(k, v)| (k.as_slice(), v.as_slice()));
        // A new log file with the restored blocks alone, named in the same batch.
        let generation = self.history.replace(blocks::pack(history))?;
        self.switch_history(generation, batch)?;
        // What was applied before the restore but never handed to sled is replaced too.
        *memory = Memory {
            keys: restored_keys,
            ..Memory::default()
        };
        self.revision.store(loaded.revision, Ordering::Release);
        self.compact_revision
            .store(loaded.compact_revision, Ordering::Release);
        self.live_key_count
            .store(loaded.live_key_count, Ordering::Release);
        Ok(())
    }

    fn read_gate(&self) -> RwLockReadGuard<'_, Memory> {
        // A writer that panicked broke an invariant: readers stop too rather than serve on.
        self.gate.read().expect("the key space gate is poisoned")
    }

    fn write_gate(&self) -> RwLockWriteGuard<'_, Memory> {
        self.gate.write().expect("the key space gate is poisoned")
    }
}

/// The keys as the history defines them: per user key, its newest version unless that is a
/// tombstone, and all its versions. `history` yields (user key, revision, history value) with the
/// versions of each key oldest first: in the tree's order (by revision) or a dump's (by key).
fn load_history<V: AsRef<[u8]>>(
    history: impl Iterator<Item = io::Result<(Vec<u8>, i64, V)>>,
) -> io::Result<Keys> {
    let mut keys = Keys::new();
    for entry in history {
        let (user_key, revision, value) = entry?;
        let value = value.as_ref();
        let tombstone = is_tombstone(&user_key, value)?;
        let current = if tombstone {
            None
        } else {
            let stored = &value[1..];
            let version = StoredValue::decode(stored)?;
            if version.mod_revision != revision {
                return Err(invalid_data(format!(
                    "history entry of key {user_key:?} at revision {revision} holds mod revision {}",
                    version.mod_revision
                )));
            }
            Some(Current::new(&version, stored.to_vec()))
        };
        let state = keys.entry(MapKey::new(&user_key)).or_default();
        if state
            .versions
            .last()
            .is_some_and(|last| last.revision >= revision)
        {
            return Err(invalid_data(format!(
                "history entry at revision {revision} out of order"
            )));
        }
        state.versions.push(Version {
            revision,
            tombstone,
        });
        state.current = current;
    }
    Ok(keys)
}

/// How many of `keys` exist now.
fn live_count(keys: &Keys) -> usize {
    keys.values()
        .filter(|state| state.current.is_some())
        .count()
}

/// The log's history entries as [`load_history`] takes them.
fn stored_history(
    history: &HistoryLog,
) -> impl Iterator<Item = io::Result<(Vec<u8>, i64, Vec<u8>)>> + use<> {
    blocks::iter(history).map(|entry| {
        let (tree_key, value) = entry?;
        let (revision, user_key) = parse_history_key(&tree_key)?;
        Ok((user_key.to_vec(), revision, value))
    })
}

/// Moves the history of a tree written by an earlier version, which kept it by key (the dump's
/// layout), to the revision order, in one batch.
fn move_history_to_revision_order(tree: &sled::Tree) -> io::Result<()> {
    let mut batch = sled::Batch::default();
    let mut moved = 0usize;
    for entry in tree.scan_prefix([DUMP_HISTORY_PREFIX]) {
        let (key, value) = entry.map_err(sled_error)?;
        let (user_key, revision) = parse_dump_key(&key)?;
        batch.insert(history_key(revision, &user_key), value);
        batch.remove(key);
        moved += 1;
    }
    if moved > 0 {
        apply_upgrade(
            tree,
            batch,
            moved,
            "key space: history of an earlier layout moved to revision order",
        )?;
    }
    Ok(())
}

/// Applies the batch that upgrades a tree of an earlier layout, flushes it, and logs how many
/// entries it changed.
fn apply_upgrade(
    tree: &sled::Tree,
    batch: sled::Batch,
    entries: usize,
    what: &'static str,
) -> io::Result<()> {
    tree.apply_batch(batch).map_err(sled_error)?;
    tree.flush().map_err(sled_error)?;
    tracing::info!(entries, "{what}");
    Ok(())
}

/// Packs the history of a tree written by an earlier version, which kept one tree entry per
/// version, into blocks, in one batch.
fn move_history_into_blocks(tree: &sled::Tree) -> io::Result<()> {
    let mut batch = sled::Batch::default();
    let mut history = Vec::new();
    for entry in tree.range(vec![HISTORY_PREFIX]..vec![HISTORY_PREFIX + 1]) {
        let (key, value) = entry.map_err(sled_error)?;
        batch.remove(key.clone());
        history.push((key, value));
    }
    if history.is_empty() {
        return Ok(());
    }
    if tree.scan_prefix([blocks::BLOCK_PREFIX]).next().is_some() {
        return Err(invalid_data(
            "the key space tree holds its history both per version and in blocks".to_string(),
        ));
    }
    let moved = history.len();
    let written = history.iter().map(|(key, value)| (&key[..], &value[..]));
    for (block_key, block) in blocks::pack(written) {
        batch.insert(block_key, block);
    }
    apply_upgrade(
        tree,
        batch,
        moved,
        "key space: history of an earlier layout packed into blocks",
    )
}

/// Removes the live entries a tree written before they moved to memory still holds, in one
/// batch: the history holds every current version too, and the current values are rebuilt from it.
fn drop_stored_live_entries(tree: &sled::Tree) -> io::Result<()> {
    let mut batch = sled::Batch::default();
    let mut dropped = 0usize;
    for key in tree.scan_prefix([LIVE_PREFIX]).keys() {
        batch.remove(key.map_err(sled_error)?);
        dropped += 1;
    }
    if dropped > 0 {
        apply_upgrade(
            tree,
            batch,
            dropped,
            "key space: stored live entries of an earlier layout dropped (now kept in memory)",
        )?;
    }
    Ok(())
}

/// Checks a dump before it replaces the tree: known prefixes, well-formed keys and values, history
/// entries in tree order, and no version newer than the stored revision. Returns what it holds
/// and the live entries its history defines.
fn check_entries(entries: &[(Vec<u8>, Vec<u8>)]) -> io::Result<(Loaded, Keys)> {
    let mut revision = None;
    let mut compact_revision = None;
    let mut newest_mod_revision = REVISION_INITIAL;
    let mut history: Vec<(&[u8], &[u8])> = Vec::new();
    for (key, value) in entries {
        match key.first() {
            Some(&META_PREFIX) if key == META_REVISION_KEY => revision = Some(value.as_slice()),
            Some(&META_PREFIX) if key == META_COMPACT_REVISION_KEY => {
                compact_revision = Some(value.as_slice())
            }
            // An earlier layout's copy of a current version: checked, then rebuilt from history.
            Some(&LIVE_PREFIX) => {
                let kv = decode_key_value(&key[1..], value)?;
                newest_mod_revision = newest_mod_revision.max(kv.mod_revision);
            }
            Some(&DUMP_HISTORY_PREFIX) => {
                let (_, mod_revision) = parse_dump_key(key)?;
                newest_mod_revision = newest_mod_revision.max(mod_revision);
                if history
                    .last()
                    .is_some_and(|(last, _)| *last >= key.as_slice())
                {
                    return Err(invalid_data(format!(
                        "history entry {key:?} out of order in a key space dump"
                    )));
                }
                history.push((key, value));
            }
            Some(&EXTRA_PREFIX) => {}
            _ => {
                return Err(invalid_data(format!(
                    "unknown key {key:?} in a key space dump"
                )));
            }
        }
    }
    let keys = load_history(history.into_iter().map(|(key, value)| {
        let (user_key, revision) = parse_dump_key(key)?;
        Ok((user_key, revision, value))
    }))?;
    let loaded = Loaded::new(revision, compact_revision, live_count(&keys))?;
    if newest_mod_revision > loaded.revision {
        return Err(invalid_data(format!(
            "a key space dump holds revision {newest_mod_revision} above its revision {}",
            loaded.revision
        )));
    }
    Ok((loaded, keys))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::codec::decode;
    use crate::codec::encode;

    /// Puts every key of [`awkward_keys`], the n-th with the one-byte value n.
    fn put_every_awkward_key(keyspace: &KeySpace) {
        for (index, key) in awkward_keys().iter().enumerate() {
            run(keyspace, put(key, &[index as u8]));
        }
    }

    /// Applies a blank entry with the caller's raw entry `[EXTRA_PREFIX, name]` set to `value`.
    fn write_extra(keyspace: &KeySpace, name: u8, value: &[u8]) {
        keyspace
            .apply(
                &[None],
                vec![(vec![EXTRA_PREFIX, name], Some(value.to_vec()))],
            )
            .expect("apply");
    }

    fn open_temporary() -> KeySpace {
        let directory = tempfile::tempdir().expect("tempdir");
        let db = sled::Config::new()
            .temporary(true)
            .open()
            .expect("open a temporary sled db");
        let mut keyspace = KeySpace::open(
            db.open_tree("keyspace").expect("open tree"),
            directory.path(),
        )
        .expect("open key space");
        keyspace.temporary = Some(directory);
        keyspace
    }

    fn put_op(key: &[u8], value: &[u8]) -> PutOp {
        PutOp {
            key: key.to_vec(),
            value: value.to_vec(),
            ..PutOp::default()
        }
    }

    fn put(key: &[u8], value: &[u8]) -> Command {
        Command::Put(put_op(key, value))
    }

    fn delete_op(key: &[u8], range_end: &[u8]) -> DeleteOp {
        DeleteOp {
            key: key.to_vec(),
            range_end: range_end.to_vec(),
            prev_kv: true,
        }
    }

    fn delete(key: &[u8], range_end: &[u8]) -> Command {
        Command::Delete(delete_op(key, range_end))
    }

    fn range_op(key: &[u8], range_end: &[u8]) -> RangeOp {
        RangeOp {
            key: key.to_vec(),
            range_end: range_end.to_vec(),
            ..RangeOp::default()
        }
    }

    fn compare(key: &[u8], result: CompareResult, target: CompareTarget) -> Compare {
        Compare {
            result,
            target,
            key: key.to_vec(),
            range_end: Vec::new(),
        }
    }

    /// Puts `count` keys `key-0`, `key-1`, ... with a 100-byte value each, one apply per key.
    pub(crate) fn put_numbered_keys(keyspace: &KeySpace, count: usize) {
        for i in 0..count {
            run(
                keyspace,
                put(format!("key-{i}").as_bytes(), &[i as u8; 100]),
            );
        }
    }

    /// Compacts at the current revision and hands it to sled, which waits while a frozen dump
    /// lives.
    pub(crate) fn compact_all(keyspace: &KeySpace) {
        let revision = keyspace.revision();
        assert!(run(keyspace, Command::Compact { revision }).result.is_ok());
        keyspace.persist().expect("persist the compaction");
    }

    fn run(keyspace: &KeySpace, command: Command) -> CommandResponse {
        let mut responses = keyspace
            .apply(&[Some(&command)], Vec::new())
            .expect("apply");
        assert_eq!(responses.len(), 1);
        responses.remove(0)
    }

    fn range(keyspace: &KeySpace, op: &RangeOp) -> RangeResult {
        keyspace.range(op).expect("range").0
    }

    fn get(keyspace: &KeySpace, key: &[u8]) -> Option<KeyValue> {
        let mut result = range(keyspace, &range_op(key, b""));
        assert!(result.kvs.len() <= 1);
        result.kvs.pop()
    }

    fn keys(result: &RangeResult) -> Vec<Vec<u8>> {
        result.kvs.iter().map(|kv| kv.key.clone()).collect()
    }

    fn txn_output(response: CommandResponse) -> TxnResult {
        match response.result {
            Ok(CommandOutput::Txn(result)) => result,
            other => panic!("not a txn result: {other:?}"),
        }
    }

    #[test]
    fn revision_starts_at_one_and_bumps_once_per_changing_command() {
        let keyspace = open_temporary();
        assert_eq!((keyspace.revision(), keyspace.compact_revision()), (1, 0));
        assert_eq!(keyspace.range(&range_op(b"a", b"")).expect("range").1, 1);

        assert_eq!(run(&keyspace, put(b"a", b"1")).revision, 2);
        // A Put always counts, even with the same value.
        assert_eq!(run(&keyspace, put(b"a", b"1")).revision, 3);
        // A delete that deletes nothing keeps the revision.
        let response = run(&keyspace, delete(b"missing", b""));
        assert_eq!(response.revision, 3);
        assert_eq!(
            response.result,
            Ok(CommandOutput::Delete {
                deleted: 0,
                prev_kvs: Vec::new()
            })
        );

        // A txn takes one revision for all its writes, nested ones included.
        let txn = Command::Txn(TxnOp {
            compare: Vec::new(),
            success: vec![
                TxnRequestOp::Put(put_op(b"b", b"1")),
                TxnRequestOp::Txn(TxnOp {
                    success: vec![TxnRequestOp::Put(put_op(b"c", b"1"))],
                    ..TxnOp::default()
                }),
            ],
            failure: Vec::new(),
        });
        assert_eq!(run(&keyspace, txn).revision, 4);
        assert_eq!(get(&keyspace, b"b").expect("b").mod_revision, 4);
        assert_eq!(get(&keyspace, b"c").expect("c").mod_revision, 4);

        // A txn whose branch only reads, or deletes nothing, keeps the revision.
        let read_only = Command::Txn(TxnOp {
            success: vec![
                TxnRequestOp::Range(range_op(b"a", b"")),
                TxnRequestOp::Delete(delete_op(b"missing", b"")),
            ],
            ..TxnOp::default()
        });
        assert_eq!(run(&keyspace, read_only).revision, 4);

        // Compact never bumps; blank entries answer the current revision.
        assert_eq!(run(&keyspace, Command::Compact { revision: 3 }).revision, 4);
        let responses = keyspace
            .apply(&[None, Some(&put(b"d", b"1")), None], Vec::new())
            .expect("apply");
        assert_eq!(
            responses,
            vec![
                CommandResponse::no_op(4),
                CommandResponse {
                    revision: 5,
                    result: Ok(CommandOutput::Put { prev_kv: None })
                },
                CommandResponse::no_op(5),
            ]
        );
        assert_eq!(keyspace.revision(), 5);
    }

    #[test]
    fn version_create_and_mod_revision_follow_put_put_delete_put() {
        let keyspace = open_temporary();
        run(&keyspace, put(b"k", b"v1"));
        let first = get(&keyspace, b"k").expect("k");
        assert_eq!(
            (first.create_revision, first.mod_revision, first.version),
            (2, 2, 1)
        );

        let response = run(
            &keyspace,
            Command::Put(PutOp {
                prev_kv: true,
                ..put_op(b"k", b"v2")
            }),
        );
        assert_eq!(
            response.result,
            Ok(CommandOutput::Put {
                prev_kv: Some(first)
            })
        );
        let second = get(&keyspace, b"k").expect("k");
        assert_eq!(
            (second.create_revision, second.mod_revision, second.version),
            (2, 3, 2)
        );
        assert_eq!(second.value, b"v2");

        let response = run(&keyspace, delete(b"k", b""));
        assert_eq!(response.revision, 4);
        assert_eq!(
            response.result,
            Ok(CommandOutput::Delete {
                deleted: 1,
                prev_kvs: vec![second]
            })
        );
        assert_eq!(get(&keyspace, b"k"), None);
        assert_eq!(keyspace.live_key_count(), 0);

        run(&keyspace, put(b"k", b"v3"));
        let third = get(&keyspace, b"k").expect("k");
        assert_eq!(
            (third.create_revision, third.mod_revision, third.version),
            (5, 5, 1)
        );
        assert_eq!(third.lease, 0);
        assert_eq!(keyspace.live_key_count(), 1);
    }

    #[test]
    fn range_follows_single_prefix_from_key_all_and_empty_rules() {
        let keyspace = open_temporary();
        for key in [&b"a"[..], b"ab", b"abc", b"b", b"c"] {
            run(&keyspace, put(key, b"v"));
        }
        let names =
            |key: &[u8], range_end: &[u8]| keys(&range(&keyspace, &range_op(key, range_end)));
        assert_eq!(names(b"a", b""), vec![b"a".to_vec()]);
        assert_eq!(names(b"ab", b""), vec![b"ab".to_vec()]);
        assert_eq!(names(b"zz", b""), Vec::<Vec<u8>>::new());
        // Prefix "a": the client sends ["a", "b").
        assert_eq!(
            names(b"a", b"b"),
            vec![b"a".to_vec(), b"ab".to_vec(), b"abc".to_vec()]
        );
        // From key: range_end "\0".
        assert_eq!(names(b"b", b"\0"), vec![b"b".to_vec(), b"c".to_vec()]);
        // Every key: "\0" / "\0".
        assert_eq!(names(b"\0", b"\0").len(), 5);
        // range_end <= key (and not "\0") is empty, without error.
        assert_eq!(names(b"c", b"a"), Vec::<Vec<u8>>::new());
        assert_eq!(names(b"b", b"b"), Vec::<Vec<u8>>::new());
        let empty = range(&keyspace, &range_op(b"c", b"a"));
        assert_eq!(empty, RangeResult::default());
    }

    #[test]
    fn range_limit_sets_more_and_count_ignores_the_limit() {
        let keyspace = open_temporary();
        for key in [b"a", b"b", b"c", b"d"] {
            run(&keyspace, put(key, b"v"));
        }
        let limited = |limit: i64| {
            range(
                &keyspace,
                &RangeOp {
                    limit,
                    ..range_op(b"\0", b"\0")
                },
            )
        };
        let result = limited(2);
        assert_eq!(keys(&result), vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!((result.more, result.count), (true, 4));
        let result = limited(4);
        assert_eq!((result.kvs.len(), result.more, result.count), (4, false, 4));
        let result = limited(10);
        assert_eq!((result.kvs.len(), result.more, result.count), (4, false, 4));
        for unlimited in [0, -1] {
            let result = limited(unlimited);
            assert_eq!((result.kvs.len(), result.more, result.count), (4, false, 4));
        }
    }

    #[test]
    fn range_sorts_by_every_order_and_target() {
        let keyspace = open_temporary();
        // Versions: a=1, b=3, c=2, d=1; create: a=2, b=3, c=4, d=5; values chosen out of key order.
        run(&keyspace, put(b"a", b"3"));
        run(&keyspace, put(b"b", b"1"));
        run(&keyspace, put(b"c", b"2"));
        run(&keyspace, put(b"d", b"0"));
        run(&keyspace, put(b"b", b"1"));
        run(&keyspace, put(b"c", b"2"));
        run(&keyspace, put(b"b", b"1"));
        let sorted = |sort_order: SortOrder, sort_target: SortTarget| {
            let result = range(
                &keyspace,
                &RangeOp {
                    sort_order,
                    sort_target,
                    ..range_op(b"a", b"\0")
                },
            );
            assert_eq!(result.count, 4);
            keys(&result)
                .into_iter()
                .map(|key| key[0] as char)
                .collect::<String>()
        };
        assert_eq!(sorted(SortOrder::None, SortTarget::Key), "abcd");
        assert_eq!(sorted(SortOrder::Ascend, SortTarget::Key), "abcd");
        assert_eq!(sorted(SortOrder::Descend, SortTarget::Key), "dcba");
        // Order None with another target sorts ascending by it; ties keep key order.
        assert_eq!(sorted(SortOrder::None, SortTarget::Version), "adcb");
        assert_eq!(sorted(SortOrder::Ascend, SortTarget::Version), "adcb");
        assert_eq!(sorted(SortOrder::Descend, SortTarget::Version), "bcad");
        assert_eq!(sorted(SortOrder::None, SortTarget::Create), "abcd");
        assert_eq!(sorted(SortOrder::Descend, SortTarget::Create), "dcba");
        // Mod revisions: a=2, d=5, c=7, b=8.
        assert_eq!(sorted(SortOrder::Ascend, SortTarget::Mod), "adcb");
        assert_eq!(sorted(SortOrder::Descend, SortTarget::Mod), "bcda");
        assert_eq!(sorted(SortOrder::None, SortTarget::Value), "dbca");
        assert_eq!(sorted(SortOrder::Descend, SortTarget::Value), "acbd");
    }

    #[test]
    fn range_with_sort_applies_the_limit_after_sorting_the_whole_range() {
        let keyspace = open_temporary();
        run(&keyspace, put(b"a", b"1"));
        run(&keyspace, put(b"b", b"1"));
        run(&keyspace, put(b"c", b"1"));
        let result = range(
            &keyspace,
            &RangeOp {
                limit: 2,
                sort_order: SortOrder::Descend,
                ..range_op(b"a", b"\0")
            },
        );
        assert_eq!(keys(&result), vec![b"c".to_vec(), b"b".to_vec()]);
        assert_eq!((result.more, result.count), (true, 3));
    }

    #[test]
    fn range_keys_only_clears_values_and_count_only_returns_no_kvs() {
        let keyspace = open_temporary();
        run(&keyspace, put(b"a", b"value-a"));
        run(&keyspace, put(b"b", b"value-b"));
        let result = range(
            &keyspace,
            &RangeOp {
                keys_only: true,
                ..range_op(b"a", b"c")
            },
        );
        assert_eq!(keys(&result), vec![b"a".to_vec(), b"b".to_vec()]);
        assert!(
            result
                .kvs
                .iter()
                .all(|kv| kv.value.is_empty() && kv.version == 1)
        );
        let result = range(
            &keyspace,
            &RangeOp {
                count_only: true,
                limit: 1,
                ..range_op(b"a", b"c")
            },
        );
        assert_eq!(
            result,
            RangeResult {
                kvs: Vec::new(),
                more: false,
                count: 2
            }
        );
    }

    #[test]
    fn range_revision_filters_are_inclusive_and_leave_count_unaffected() {
        let keyspace = open_temporary();
        for key in [b"a", b"b", b"c", b"d"] {
            run(&keyspace, put(key, b"v")); // a@2, b@3, c@4, d@5
        }
        run(&keyspace, put(b"a", b"v")); // a: create 2, mod 6
        let filtered = |op: RangeOp| range(&keyspace, &op);
        let base = range_op(b"a", b"\0");
        let result = filtered(RangeOp {
            min_mod_revision: 3,
            max_mod_revision: 5,
            ..base.clone()
        });
        assert_eq!(
            keys(&result),
            vec![b"b".to_vec(), b"c".to_vec(), b"d".to_vec()]
        );
        assert_eq!(result.count, 4);
        let result = filtered(RangeOp {
            min_create_revision: 4,
            ..base.clone()
        });
        assert_eq!(keys(&result), vec![b"c".to_vec(), b"d".to_vec()]);
        assert_eq!(result.count, 4);
        let result = filtered(RangeOp {
            max_create_revision: 2,
            min_mod_revision: 6,
            ..base.clone()
        });
        assert_eq!(keys(&result), vec![b"a".to_vec()]);
        // Limit applies to the filtered list: `more` speaks of it, `count` of the whole range.
        let result = filtered(RangeOp {
            min_mod_revision: 4,
            limit: 2,
            ..base
        });
        assert_eq!(keys(&result), vec![b"a".to_vec(), b"c".to_vec()]);
        assert_eq!((result.more, result.count), (true, 4));
    }

    #[test]
    fn range_at_a_past_revision_returns_the_state_of_that_revision() {
        let keyspace = open_temporary();
        run(&keyspace, put(b"a", b"1")); // 2
        run(&keyspace, put(b"b", b"1")); // 3
        run(&keyspace, put(b"a", b"2")); // 4
        run(&keyspace, delete(b"b", b"")); // 5
        run(&keyspace, put(b"b", b"2")); // 6
        let at = |revision: i64| {
            let (result, header_revision) = keyspace
                .range(&RangeOp {
                    revision,
                    ..range_op(b"a", b"\0")
                })
                .expect("range");
            // The header always carries the current revision.
            assert_eq!(header_revision, 6);
            result
                .kvs
                .into_iter()
                .map(|kv| {
                    (
                        kv.key,
                        kv.value,
                        kv.create_revision,
                        kv.mod_revision,
                        kv.version,
                    )
                })
                .collect::<Vec<_>>()
        };
        let kv = |key: &[u8], value: &[u8], create: i64, modified: i64, version: i64| {
            (key.to_vec(), value.to_vec(), create, modified, version)
        };
        assert_eq!(at(1), vec![]);
        assert_eq!(at(2), vec![kv(b"a", b"1", 2, 2, 1)]);
        assert_eq!(
            at(3),
            vec![kv(b"a", b"1", 2, 2, 1), kv(b"b", b"1", 3, 3, 1)]
        );
        assert_eq!(
            at(4),
            vec![kv(b"a", b"2", 2, 4, 2), kv(b"b", b"1", 3, 3, 1)]
        );
        assert_eq!(at(5), vec![kv(b"a", b"2", 2, 4, 2)]);
        assert_eq!(
            at(6),
            vec![kv(b"a", b"2", 2, 4, 2), kv(b"b", b"2", 6, 6, 1)]
        );
        assert_eq!(at(0), at(6));
        assert_eq!(
            keyspace.range(&range_op(b"a", b"")).expect("range").0.count,
            1
        );
        let result = range(
            &keyspace,
            &RangeOp {
                revision: 5,
                count_only: true,
                ..range_op(b"a", b"\0")
            },
        );
        assert_eq!(result.count, 1);
        assert_eq!(
            keyspace.range(&RangeOp {
                revision: 7,
                ..range_op(b"a", b"")
            }),
            Err(KvError::FutureRevision)
        );
    }

    #[test]
    fn compact_drops_old_history_and_keeps_the_compact_revision_readable() {
        let keyspace = open_temporary();
        run(&keyspace, put(b"a", b"1")); // 2
        run(&keyspace, put(b"a", b"2")); // 3
        run(&keyspace, put(b"b", b"1")); // 4
        run(&keyspace, delete(b"b", b"")); // 5
        run(&keyspace, put(b"c", b"1")); // 6
        run(&keyspace, put(b"a", b"3")); // 7
        let history_entries = |keyspace: &KeySpace| {
            let dump = keyspace.dump().expect("dump");
            dump.iter()
                .filter(|(key, _)| key[0] == DUMP_HISTORY_PREFIX)
                .count()
        };
        assert_eq!(history_entries(&keyspace), 6);

        let response = run(&keyspace, Command::Compact { revision: 5 });
        assert_eq!(
            response,
            CommandResponse {
                revision: 7,
                result: Ok(CommandOutput::Compact)
            }
        );
        assert_eq!(keyspace.compact_revision(), 5);
        // Left: a@3 (newest <= 5), a@7, c@6; b's put and tombstone are gone.
        assert_eq!(history_entries(&keyspace), 3);

        let at = |revision: i64| {
            keyspace.range(&RangeOp {
                revision,
                ..range_op(b"\0", b"\0")
            })
        };
        assert_eq!(at(4), Err(KvError::Compacted));
        assert_eq!(at(1), Err(KvError::Compacted));
        let at_compact = at(5).expect("the compact revision stays readable").0;
        assert_eq!(keys(&at_compact), vec![b"a".to_vec()]);
        assert_eq!(
            (
                at_compact.kvs[0].value.as_slice(),
                at_compact.kvs[0].mod_revision
            ),
            (&b"2"[..], 3)
        );
        assert_eq!(
            keys(&at(6).expect("range").0),
            vec![b"a".to_vec(), b"c".to_vec()]
        );
        assert_eq!(at(7).expect("range").0.kvs[0].value, b"3");
        assert_eq!(at(0).expect("range").0.count, 2);
        assert_eq!(at(8), Err(KvError::FutureRevision));

        // Compacting at or below the compact revision, or above the revision, is refused.
        for (revision, error) in [
            (5, KvError::Compacted),
            (3, KvError::Compacted),
            (8, KvError::FutureRevision),
        ] {
            let response = run(&keyspace, Command::Compact { revision });
            assert_eq!(
                response,
                CommandResponse {
                    revision: 7,
                    result: Err(error)
                }
            );
        }
        assert_eq!(keyspace.compact_revision(), 5);
        // Compacting at the current revision keeps every live key readable.
        assert_eq!(
            run(&keyspace, Command::Compact { revision: 7 }).result,
            Ok(CommandOutput::Compact)
        );
        assert_eq!(history_entries(&keyspace), 2);
        assert_eq!(
            keys(&at(7).expect("range").0),
            vec![b"a".to_vec(), b"c".to_vec()]
        );
    }

    fn txn_compare_holds(keyspace: &KeySpace, compare: Compare) -> bool {
        let response = run(
            keyspace,
            Command::Txn(TxnOp {
                compare: vec![compare],
                ..TxnOp::default()
            }),
        );
        txn_output(response).succeeded
    }

    #[test]
    fn txn_compares_every_target_and_treats_a_missing_key_as_zero() {
        let keyspace = open_temporary();
        run(&keyspace, put(b"k", b"m")); // create 2
        run(&keyspace, put(b"k", b"m")); // mod 3, version 2
        use CompareResult::*;
        use CompareTarget::*;
        let cases: Vec<(CompareResult, CompareTarget, bool)> = vec![
            (Equal, Version(2), true),
            (Greater, Version(1), true),
            (Less, Version(2), false),
            (NotEqual, Version(2), false),
            (Equal, Create(2), true),
            (Less, Create(3), true),
            (Equal, Mod(3), true),
            (Greater, Mod(3), false),
            (Equal, Value(b"m".to_vec()), true),
            (Greater, Value(b"a".to_vec()), true),
            (Less, Value(b"z".to_vec()), true),
            (NotEqual, Value(b"m".to_vec()), false),
            (Equal, Lease(0), true),
            (Greater, Lease(0), false),
        ];
        for (result, target, expected) in cases {
            let compare = compare(b"k", result, target);
            assert_eq!(
                txn_compare_holds(&keyspace, compare.clone()),
                expected,
                "{compare:?}"
            );
        }
        // A missing key: revisions, version and lease are 0; any Value compare fails.
        let missing: Vec<(CompareResult, CompareTarget, bool)> = vec![
            (Equal, Version(0), true),
            (Equal, Create(0), true),
            (Less, Mod(1), true),
            (Equal, Lease(0), true),
            (Greater, Version(0), false),
            (Equal, Value(Vec::new()), false),
            (NotEqual, Value(b"x".to_vec()), false),
        ];
        for (result, target, expected) in missing {
            let compare = compare(b"missing", result, target);
            assert_eq!(
                txn_compare_holds(&keyspace, compare.clone()),
                expected,
                "{compare:?}"
            );
        }
        assert_eq!(
            keyspace.revision(),
            3,
            "compares alone never bump the revision"
        );
    }

    #[test]
    fn txn_compare_with_range_end_requires_every_key_and_zero_for_an_empty_range() {
        let keyspace = open_temporary();
        run(&keyspace, put(b"p/a", b"1"));
        run(&keyspace, put(b"p/b", b"2"));
        let ranged =
            |result: CompareResult, target: CompareTarget, key: &[u8], range_end: &[u8]| Compare {
                range_end: range_end.to_vec(),
                ..compare(key, result, target)
            };
        assert!(txn_compare_holds(
            &keyspace,
            ranged(
                CompareResult::Equal,
                CompareTarget::Version(1),
                b"p/",
                b"p0"
            )
        ));
        assert!(!txn_compare_holds(
            &keyspace,
            ranged(
                CompareResult::Equal,
                CompareTarget::Value(b"1".to_vec()),
                b"p/",
                b"p0"
            )
        ));
        assert!(txn_compare_holds(
            &keyspace,
            ranged(
                CompareResult::Greater,
                CompareTarget::Value(b"0".to_vec()),
                b"p/",
                b"p0"
            )
        ));
        assert!(!txn_compare_holds(
            &keyspace,
            ranged(CompareResult::Greater, CompareTarget::Mod(2), b"p/", b"p0")
        ));
        assert!(txn_compare_holds(
            &keyspace,
            ranged(CompareResult::Greater, CompareTarget::Mod(1), b"p/", b"\0")
        ));
        // An empty range compares against zero values, and a Value compare fails.
        assert!(txn_compare_holds(
            &keyspace,
            ranged(CompareResult::Equal, CompareTarget::Create(0), b"q/", b"q0")
        ));
        assert!(!txn_compare_holds(
            &keyspace,
            ranged(
                CompareResult::Equal,
                CompareTarget::Value(Vec::new()),
                b"q/",
                b"q0"
            )
        ));
        assert!(txn_compare_holds(
            &keyspace,
            ranged(CompareResult::Equal, CompareTarget::Version(0), b"q", b"p")
        ));
    }

    #[test]
    fn txn_runs_the_failure_branch_when_a_compare_fails() {
        let keyspace = open_temporary();
        run(&keyspace, put(b"k", b"1"));
        let txn = Command::Txn(TxnOp {
            compare: vec![
                compare(b"k", CompareResult::Equal, CompareTarget::Version(1)),
                compare(
                    b"k",
                    CompareResult::Equal,
                    CompareTarget::Value(b"other".to_vec()),
                ),
            ],
            success: vec![TxnRequestOp::Put(put_op(b"success", b"1"))],
            failure: vec![
                TxnRequestOp::Put(put_op(b"failure", b"1")),
                TxnRequestOp::Range(range_op(b"k", b"")),
            ],
        });
        let response = run(&keyspace, txn);
        assert_eq!(response.revision, 3);
        let result = txn_output(response);
        assert!(!result.succeeded);
        assert_eq!(result.responses.len(), 2);
        assert_eq!(result.responses[0], TxnResponseOp::Put { prev_kv: None });
        assert!(get(&keyspace, b"failure").is_some());
        assert!(get(&keyspace, b"success").is_none());
    }

    #[test]
    fn txn_range_sees_earlier_writes_of_the_same_txn() {
        let keyspace = open_temporary();
        run(&keyspace, put(b"k", b"old")); // 2
        let txn = Command::Txn(TxnOp {
            success: vec![
                TxnRequestOp::Put(put_op(b"k", b"new")),
                TxnRequestOp::Delete(delete_op(b"gone", b"")),
                TxnRequestOp::Range(range_op(b"k", b"")),
                // A positive revision reads that revision, before this txn's writes.
                TxnRequestOp::Range(RangeOp {
                    revision: 2,
                    ..range_op(b"k", b"")
                }),
            ],
            ..TxnOp::default()
        });
        let response = run(&keyspace, txn);
        assert_eq!(response.revision, 3);
        let result = txn_output(response);
        let TxnResponseOp::Range(in_progress) = &result.responses[2] else {
            panic!("not a range response");
        };
        assert_eq!(in_progress.kvs[0].value, b"new");
        assert_eq!(
            (in_progress.kvs[0].mod_revision, in_progress.kvs[0].version),
            (3, 2)
        );
        let TxnResponseOp::Range(at_start) = &result.responses[3] else {
            panic!("not a range response");
        };
        assert_eq!(at_start.kvs[0].value, b"old");
    }

    #[test]
    fn txn_with_a_range_at_a_future_revision_fails_whole_with_nothing_changed() {
        let keyspace = open_temporary();
        run(&keyspace, put(b"k", b"old")); // 2
        let before = keyspace.dump().expect("dump");
        // Revision 3 would be this txn's own revision: still future at txn start.
        for (revision, error) in [(3, KvError::FutureRevision), (100, KvError::FutureRevision)] {
            let txn = Command::Txn(TxnOp {
                // Each key changed twice at the txn's one revision: an existing one, a new one.
                success: vec![
                    TxnRequestOp::Put(put_op(b"k", b"new")),
                    TxnRequestOp::Put(put_op(b"other", b"new")),
                    TxnRequestOp::Delete(delete_op(b"k", b"")),
                    TxnRequestOp::Put(put_op(b"other", b"again")),
                    TxnRequestOp::Txn(TxnOp {
                        success: vec![TxnRequestOp::Range(RangeOp {
                            revision,
                            ..range_op(b"k", b"")
                        })],
                        ..TxnOp::default()
                    }),
                ],
                ..TxnOp::default()
            });
            let response = run(&keyspace, txn);
            assert_eq!(
                response,
                CommandResponse {
                    revision: 2,
                    result: Err(error)
                }
            );
        }
        assert_eq!(keyspace.dump().expect("dump"), before);
        assert_eq!((keyspace.revision(), keyspace.live_key_count()), (2, 1));
        assert_memory_is_the_history(&keyspace);

        // The same in the middle of a batch: earlier and later commands still apply.
        run(&keyspace, put(b"x", b"1")); // 3
        run(&keyspace, Command::Compact { revision: 3 });
        let failing = Command::Txn(TxnOp {
            success: vec![
                TxnRequestOp::Put(put_op(b"k", b"new")),
                TxnRequestOp::Range(RangeOp {
                    revision: 2,
                    ..range_op(b"k", b"")
                }),
            ],
            ..TxnOp::default()
        });
        let responses = keyspace
            .apply(
                &[
                    Some(&put(b"a", b"1")),
                    Some(&failing),
                    Some(&put(b"b", b"1")),
                ],
                Vec::new(),
            )
            .expect("apply");
        let revisions: Vec<i64> = responses.iter().map(|response| response.revision).collect();
        assert_eq!(revisions, vec![4, 4, 5]);
        assert_eq!(responses[1].result, Err(KvError::Compacted));
        assert_eq!(get(&keyspace, b"k").expect("k").value, b"old");
        assert_eq!(get(&keyspace, b"b").expect("b").mod_revision, 5);
        assert_eq!(keyspace.live_key_count(), 4);
        assert_memory_is_the_history(&keyspace);
    }

    #[test]
    fn nested_txn_compares_against_the_state_at_top_level_txn_start() {
        let keyspace = open_temporary();
        run(&keyspace, put(b"k", b"v1")); // 2
        let txn = Command::Txn(TxnOp {
            compare: vec![compare(
                b"k",
                CompareResult::Equal,
                CompareTarget::Value(b"v1".to_vec()),
            )],
            success: vec![
                TxnRequestOp::Put(put_op(b"k", b"v2")),
                TxnRequestOp::Txn(TxnOp {
                    // Still v1 for the compare, although the outer txn already wrote v2.
                    compare: vec![compare(
                        b"k",
                        CompareResult::Equal,
                        CompareTarget::Value(b"v1".to_vec()),
                    )],
                    success: vec![
                        TxnRequestOp::Put(put_op(b"nested", b"yes")),
                        TxnRequestOp::Range(range_op(b"k", b"")),
                    ],
                    failure: vec![TxnRequestOp::Put(put_op(b"nested", b"no"))],
                }),
            ],
            failure: Vec::new(),
        });
        let response = run(&keyspace, txn);
        assert_eq!(response.revision, 3);
        let result = txn_output(response);
        assert!(result.succeeded);
        let TxnResponseOp::Txn(nested) = &result.responses[1] else {
            panic!("not a nested txn response");
        };
        assert!(nested.succeeded);
        assert_eq!(nested.responses.len(), 2);
        let TxnResponseOp::Range(seen) = &nested.responses[1] else {
            panic!("not a range response");
        };
        assert_eq!(seen.kvs[0].value, b"v2");
        assert_eq!(get(&keyspace, b"nested").expect("nested").value, b"yes");
        assert_eq!(get(&keyspace, b"nested").expect("nested").mod_revision, 3);
    }

    #[test]
    fn ignore_value_and_ignore_lease_on_a_missing_key_fail_with_nothing_changed() {
        let keyspace = open_temporary();
        run(&keyspace, put(b"present", b"kept"));
        let before = keyspace.dump().expect("dump");
        for op in [
            PutOp {
                ignore_value: true,
                ..put_op(b"missing", b"")
            },
            PutOp {
                ignore_lease: true,
                ..put_op(b"missing", b"v")
            },
        ] {
            assert_eq!(
                run(&keyspace, Command::Put(op.clone())),
                CommandResponse {
                    revision: 2,
                    result: Err(KvError::KeyNotFound)
                }
            );
            // Inside a txn the error fails the whole txn, the earlier put included.
            let txn = Command::Txn(TxnOp {
                success: vec![
                    TxnRequestOp::Put(put_op(b"first", b"1")),
                    TxnRequestOp::Put(op),
                ],
                ..TxnOp::default()
            });
            assert_eq!(run(&keyspace, txn).result, Err(KvError::KeyNotFound));
        }
        assert_eq!(keyspace.dump().expect("dump"), before);

        // A lease that does not exist (none do yet) is refused.
        let leased = PutOp {
            lease: 7,
            ..put_op(b"present", b"v")
        };
        assert_eq!(
            run(&keyspace, Command::Put(leased)).result,
            Err(KvError::LeaseNotFound)
        );

        // On an existing key, ignore_value keeps the value and still makes a new version.
        let response = run(
            &keyspace,
            Command::Put(PutOp {
                ignore_value: true,
                ..put_op(b"present", b"")
            }),
        );
        assert_eq!(response.revision, 3);
        let kv = get(&keyspace, b"present").expect("present");
        assert_eq!(
            (kv.value.as_slice(), kv.version, kv.mod_revision),
            (&b"kept"[..], 2, 3)
        );
    }

    #[test]
    fn delete_range_removes_every_key_and_leaves_tombstones_in_history() {
        let keyspace = open_temporary();
        for key in [b"a", b"b", b"c"] {
            run(&keyspace, put(key, b"v"));
        }
        let response = run(&keyspace, delete(b"a", b"c"));
        assert_eq!(response.revision, 5);
        let Ok(CommandOutput::Delete { deleted, prev_kvs }) = response.result else {
            panic!("not a delete output");
        };
        assert_eq!(deleted, 2);
        assert_eq!(
            prev_kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        let without_prev = run(
            &keyspace,
            Command::Delete(DeleteOp {
                prev_kv: false,
                ..delete_op(b"\0", b"\0")
            }),
        );
        assert_eq!(
            without_prev.result,
            Ok(CommandOutput::Delete {
                deleted: 1,
                prev_kvs: Vec::new()
            })
        );
        assert_eq!(keyspace.live_key_count(), 0);
        let at = |revision: i64| {
            keys(&range(
                &keyspace,
                &RangeOp {
                    revision,
                    ..range_op(b"\0", b"\0")
                },
            ))
        };
        assert_eq!(at(4).len(), 3);
        assert_eq!(at(5), vec![b"c".to_vec()]);
        assert!(at(6).is_empty());
    }

    /// Keys whose bytes stress the history escaping: 0x00 and 0xFF at every position.
    fn awkward_keys() -> Vec<Vec<u8>> {
        let mut keys: Vec<Vec<u8>> = vec![
            vec![0x00],
            vec![0x00, 0x00],
            vec![0x00, 0xFF],
            vec![0x01],
            b"a".to_vec(),
            vec![b'a', 0x00],
            vec![b'a', 0x00, 0x00],
            vec![b'a', 0x00, 0xFF],
            vec![b'a', 0x00, 0xFF, 0x00],
            vec![b'a', 0x01],
            vec![b'a', 0xFF],
            vec![b'a', 0xFF, 0x00],
            vec![b'a', 0xFF, 0xFF],
            vec![0xFF],
            vec![0xFF, 0x00],
            vec![0xFF, 0xFF],
        ];
        keys.sort();
        keys
    }

    #[test]
    fn a_stored_version_encodes_as_the_owned_layout_that_earlier_versions_wrote() {
        // The layout every earlier version wrote, with an owned value: trees, dumps and
        // snapshots hold it.
        #[derive(Serialize)]
        struct Owned {
            create_revision: i64,
            mod_revision: i64,
            version: i64,
            lease: i64,
            #[serde(with = "crate::codec::bytes")]
            value: Vec<u8>,
        }
        for value in [Vec::new(), b"v".to_vec(), vec![0xFF; 300], vec![7; 70_000]] {
            let owned = Owned {
                create_revision: 2,
                mod_revision: 1 << 40,
                version: 3,
                lease: -1,
                value: value.clone(),
            };
            let stored = StoredValue {
                create_revision: 2,
                mod_revision: 1 << 40,
                version: 3,
                lease: -1,
                value: &value,
            };
            let encoded = encode(&owned).expect("encode");
            assert_eq!(stored.history_value().expect("encode")[1..], encoded);
            let decoded = StoredValue::decode(&encoded).expect("decode in place");
            assert_eq!(decoded.value, value.as_slice());
            assert_eq!(
                decoded.to_key_value(b"k"),
                KeyValue {
                    key: b"k".to_vec(),
                    create_revision: 2,
                    mod_revision: 1 << 40,
                    version: 3,
                    value: value.clone(),
                    lease: -1,
                }
            );
        }
    }

    #[test]
    fn history_key_encoding_round_trips_and_sorts_by_key_then_revision() {
        let mut encoded = Vec::new();
        for key in awkward_keys() {
            for revision in [2, 3, 255, 256, 1 << 40] {
                let tree_key = dump_key(&key, revision);
                assert_eq!(
                    parse_dump_key(&tree_key).expect("parse"),
                    (key.clone(), revision)
                );
                encoded.push(tree_key);
            }
        }
        // awkward_keys is sorted and revisions ascend: the encodings must already be in order.
        let mut sorted = encoded.clone();
        sorted.sort();
        assert_eq!(sorted, encoded);
        assert!(parse_dump_key(&[DUMP_HISTORY_PREFIX, 0x00, 0x01]).is_err());
        assert!(parse_dump_key(&[DUMP_HISTORY_PREFIX, b'a', 0x00, 0x00, 1]).is_err());
    }

    #[test]
    fn keys_with_zero_and_ff_bytes_sort_correctly_in_current_and_past_ranges() {
        let keyspace = open_temporary();
        let all = awkward_keys();
        // Write in reverse order, then overwrite every other key, so history interleaves.
        for key in all.iter().rev() {
            run(&keyspace, put(key, b"first"));
        }
        let first_round = keyspace.revision();
        for key in all.iter().step_by(2) {
            run(&keyspace, put(key, b"second"));
        }
        run(&keyspace, delete(&[b'a', 0x00], &[b'a', 0x01]));

        let current = range(&keyspace, &range_op(b"\0", b"\0"));
        let expected: Vec<Vec<u8>> = all
            .iter()
            .filter(|key| {
                !(key.as_slice() >= &[b'a', 0x00][..] && key.as_slice() < &[b'a', 0x01][..])
            })
            .cloned()
            .collect();
        assert_eq!(keys(&current), expected);

        // At first_round every key exists with its first value, in byte order.
        let past = range(
            &keyspace,
            &RangeOp {
                revision: first_round,
                ..range_op(b"\0", b"\0")
            },
        );
        assert_eq!(keys(&past), all);
        assert!(
            past.kvs
                .iter()
                .all(|kv| kv.value == b"first" && kv.version == 1)
        );
        // A single key's past read never picks up a neighbour's versions.
        for key in &all {
            let single = range(
                &keyspace,
                &RangeOp {
                    revision: first_round,
                    ..range_op(key, b"")
                },
            );
            assert_eq!(keys(&single), vec![key.clone()]);
        }
        // The same sub-range read now and in the past.
        let sub = |revision: i64| {
            keys(&range(
                &keyspace,
                &RangeOp {
                    revision,
                    ..range_op(&[b'a', 0x00], &[b'a', 0xFF])
                },
            ))
        };
        assert_eq!(sub(first_round).len(), 5);
        assert_eq!(sub(0), vec![vec![b'a', 0x01]]);
    }

    #[test]
    fn dump_and_restore_round_trip_gives_identical_reads() {
        let source = open_temporary();
        put_every_awkward_key(&source);
        run(&source, delete(b"a", b"b"));
        run(&source, put(b"a", b"again"));
        run(&source, Command::Compact { revision: 5 });
        write_extra(&source, b'x', b"extra");

        let target = open_temporary();
        run(&target, put(b"stale", b"must disappear"));
        write_extra(&target, b'y', b"stale");
        target
            .restore(source.dump().expect("dump"))
            .expect("restore");

        assert_eq!(target.dump().expect("dump"), source.dump().expect("dump"));
        assert_eq!(
            (
                target.revision(),
                target.compact_revision(),
                target.live_key_count()
            ),
            (
                source.revision(),
                source.compact_revision(),
                source.live_key_count()
            )
        );
        assert_eq!(target.get_extra(&[EXTRA_PREFIX, b'y']).expect("get"), None);
        assert_eq!(
            target.get_extra(&[EXTRA_PREFIX, b'x']).expect("get"),
            Some(b"extra".to_vec())
        );
        for revision in 0..=source.revision() + 1 {
            let op = RangeOp {
                revision,
                ..range_op(b"\0", b"\0")
            };
            assert_eq!(target.range(&op), source.range(&op), "revision {revision}");
        }
        // Both go on identically.
        let command = put(b"a", b"after");
        assert_eq!(run(&target, command.clone()), run(&source, command));
    }

    #[test]
    fn a_frozen_dump_encodes_the_dump_at_the_freeze_with_writes_in_memory_or_in_sled() {
        let keyspace = Arc::new(open_temporary());
        let same_bytes = |stage: &str| {
            let expected = encode(&keyspace.dump().expect("dump")).expect("encode");
            let frozen = keyspace.freeze_dump().expect("freeze");
            assert_eq!(frozen.revision(), keyspace.revision(), "{stage}");
            assert_eq!(frozen.encode().expect("encode"), expected, "{stage}");
        };
        same_bytes("empty");
        for (index, key) in awkward_keys().iter().enumerate() {
            run(&keyspace, put(key, &vec![index as u8; 300]));
        }
        keyspace.persist().expect("persist");
        run(&keyspace, delete(b"a", b"b"));
        write_extra(&keyspace, b'x', b"extra");
        same_bytes("some writes pending");
        keyspace.persist().expect("persist");
        same_bytes("all in sled");
        // And a snapshot of it restores.
        let target = open_temporary();
        let frozen = keyspace.freeze_dump().expect("freeze");
        let entries: Vec<(Vec<u8>, Vec<u8>)> =
            decode(&frozen.encode().expect("encode")).expect("decode");
        drop(frozen);
        target.restore(entries).expect("restore");
        assert_eq!(every_read(&target), every_read(&keyspace));
    }

    #[test]
    fn a_second_freeze_holds_back_a_pending_compaction_until_the_first_dump_is_dropped() {
        let keyspace = Arc::new(open_temporary());
        for round in 0..3u8 {
            run(&keyspace, put(b"a", &[round; 100]));
        }
        keyspace.persist().expect("persist");
        let expected = encode(&keyspace.dump().expect("dump")).expect("encode");
        let first = keyspace.freeze_dump().expect("freeze");
        // A compaction applied after the first freeze, its removals still pending.
        let revision = keyspace.revision();
        run(&keyspace, Command::Compact { revision });
        let second = {
            let keyspace = keyspace.clone();
            std::thread::spawn(move || keyspace.freeze_dump().map(|dump| dump.revision()))
        };
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !second.is_finished(),
            "the second freeze waits for the first dump"
        );
        assert_eq!(
            first.encode().expect("the first dump's history is whole"),
            expected
        );
        drop(first);
        let frozen_at = second.join().expect("join").expect("the second freeze");
        assert_eq!(frozen_at, keyspace.revision());
    }

    #[test]
    fn a_frozen_dump_ignores_later_writes_and_holds_back_a_compaction_until_dropped() {
        let keyspace = Arc::new(open_temporary());
        for round in 0..3u8 {
            for key in [b"a".as_slice(), b"b", b"c"] {
                run(&keyspace, put(key, &[round; 100]));
            }
        }
        keyspace.persist().expect("persist");
        run(&keyspace, put(b"d", b"pending at the freeze"));
        write_extra(&keyspace, b'x', b"at the freeze");
        let expected = encode(&keyspace.dump().expect("dump")).expect("encode");
        let frozen = keyspace.freeze_dump().expect("freeze");

        // Applied and handed to sled after the freeze: new history, changed meta and extras.
        run(&keyspace, put(b"a", b"after"));
        run(&keyspace, delete(b"b", b""));
        write_extra(&keyspace, b'x', b"after the freeze");
        keyspace.persist().expect("persist");
        // A compaction removes old history from the tree: its hand-over waits for the dump.
        let compaction = {
            let keyspace = keyspace.clone();
            std::thread::spawn(move || {
                let revision = keyspace.revision();
                run(&keyspace, Command::Compact { revision });
                keyspace.persist().expect("persist the compaction");
            })
        };
        while keyspace.compact_revision() == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Time for the hand-over to reach sled, if it did not wait.
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !compaction.is_finished(),
            "the compaction waits for the dump"
        );
        assert_eq!(frozen.encode().expect("encode"), expected);
        drop(frozen);
        compaction
            .join()
            .expect("the compaction finishes once the dump is dropped");
        let history = stored_history(&keyspace.history).count();
        // a, c, d at their newest version; b's deletion removed it entirely.
        assert_eq!(history, 3, "the compaction reached sled");
    }

    #[test]
    fn restore_refuses_a_malformed_dump_and_changes_nothing() {
        let keyspace = open_temporary();
        run(&keyspace, put(b"k", b"v"));
        let before = keyspace.dump().expect("dump");
        let mut unknown_prefix = before.clone();
        unknown_prefix.push((vec![0x7F, 1], vec![1]));
        let mut ahead_of_revision = before.clone();
        ahead_of_revision.push((dump_key(b"k", 9), vec![HISTORY_TOMBSTONE]));
        let mut bad_meta = before.clone();
        bad_meta.push((META_COMPACT_REVISION_KEY.to_vec(), encode_meta(3)));
        for dump in [unknown_prefix, ahead_of_revision, bad_meta] {
            let error = keyspace.restore(dump).expect_err("a malformed dump");
            assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        }
        assert_eq!(keyspace.dump().expect("dump"), before);
        assert_eq!(keyspace.revision(), 2);
    }

    /// Opens the sled database at `path`, waiting (bounded) for a dropped handle's background
    /// threads to release its file lock: sled lets go of it shortly after the last drop.
    pub(crate) fn open_when_released(path: &std::path::Path) -> sled::Db {
        let mut attempts = 0;
        loop {
            match sled::Config::new().path(path).open() {
                Ok(db) => return db,
                Err(error)
                    if attempts < 100 && error.to_string().contains("could not acquire lock") =>
                {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(error) => panic!("open {}: {error}", path.display()),
            }
        }
    }

    #[test]
    fn reopening_the_tree_restores_revision_compact_revision_and_data() {
        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path().join("db");
        let history_dir = crate::store::history_dir(directory.path());
        {
            let db = sled::Config::new().path(&path).open().expect("open db");
            let keyspace = KeySpace::open(db.open_tree("keyspace").expect("tree"), &history_dir)
                .expect("open");
            run(&keyspace, put(b"a", b"1"));
            run(&keyspace, put(b"a", b"2"));
            run(&keyspace, put(b"b", b"1"));
            run(&keyspace, Command::Compact { revision: 3 });
            keyspace.persist().expect("persist");
            db.flush().expect("flush");
        }
        let db = open_when_released(&path);
        let keyspace =
            KeySpace::open(db.open_tree("keyspace").expect("tree"), &history_dir).expect("reopen");
        assert_eq!(
            (
                keyspace.revision(),
                keyspace.compact_revision(),
                keyspace.live_key_count()
            ),
            (4, 3, 2)
        );
        assert_eq!(get(&keyspace, b"a").expect("a").value, b"2");
        let op = RangeOp {
            revision: 2,
            ..range_op(b"a", b"")
        };
        assert_eq!(keyspace.range(&op), Err(KvError::Compacted));
        assert_eq!(run(&keyspace, put(b"c", b"1")).revision, 5);
    }

    #[test]
    fn extras_commit_in_the_same_batch_as_the_data() {
        let keyspace = open_temporary();
        let applied = vec![EXTRA_PREFIX, b'a'];
        let membership = vec![EXTRA_PREFIX, b'm'];
        assert_eq!(keyspace.get_extra(&applied).expect("get"), None);
        keyspace
            .apply(
                &[Some(&put(b"k", b"v"))],
                vec![
                    (applied.clone(), Some(b"1".to_vec())),
                    (membership.clone(), Some(b"m".to_vec())),
                ],
            )
            .expect("apply");
        assert_eq!(
            keyspace.get_extra(&applied).expect("get"),
            Some(b"1".to_vec())
        );
        assert_eq!(
            keyspace.get_extra(&membership).expect("get"),
            Some(b"m".to_vec())
        );
        keyspace
            .apply(
                &[None],
                vec![
                    (applied.clone(), Some(b"2".to_vec())),
                    (membership.clone(), None),
                ],
            )
            .expect("apply");
        assert_eq!(
            keyspace.get_extra(&applied).expect("get"),
            Some(b"2".to_vec())
        );
        assert_eq!(keyspace.get_extra(&membership).expect("get"), None);
        // Extras are part of the dump, and never seen as keys.
        assert!(
            keyspace
                .dump()
                .expect("dump")
                .iter()
                .any(|(key, _)| *key == applied)
        );
        assert_eq!(range(&keyspace, &range_op(b"\0", b"\0")).count, 1);
    }

    #[test]
    fn commands_of_one_apply_see_each_other_in_order() {
        let keyspace = open_temporary();
        let create_if_missing = Command::Txn(TxnOp {
            compare: vec![compare(
                b"k",
                CompareResult::Equal,
                CompareTarget::Create(0),
            )],
            success: vec![TxnRequestOp::Put(put_op(b"k", b"created"))],
            failure: vec![TxnRequestOp::Put(put_op(b"k", b"existed"))],
        });
        let commands = [
            put(b"k", b"1"),
            create_if_missing,
            delete(b"k", b""),
            put(b"k", b"again"),
            Command::Compact { revision: 4 },
            Command::Compact { revision: 4 },
        ];
        let references: Vec<Option<&Command>> = commands.iter().map(Some).collect();
        let responses = keyspace.apply(&references, Vec::new()).expect("apply");
        let revisions: Vec<i64> = responses.iter().map(|response| response.revision).collect();
        assert_eq!(revisions, vec![2, 3, 4, 5, 5, 5]);
        assert!(!txn_output(responses[1].clone()).succeeded);
        assert_eq!(responses[5].result, Err(KvError::Compacted));
        let kv = get(&keyspace, b"k").expect("k");
        assert_eq!(
            (kv.value.as_slice(), kv.create_revision, kv.version),
            (&b"again"[..], 5, 1)
        );
        assert_eq!(keyspace.compact_revision(), 4);
        // Compacted at 4, where k was deleted: the tombstone and older versions are gone.
        let history: Vec<_> = keyspace
            .dump()
            .expect("dump")
            .into_iter()
            .filter(|(key, _)| key[0] == DUMP_HISTORY_PREFIX)
            .map(|(key, _)| parse_dump_key(&key).expect("parse"))
            .collect();
        assert_eq!(history, vec![(b"k".to_vec(), 5)]);
    }

    /// A tiny deterministic generator, so a failing random run is reproducible from its seed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            // xorshift64*
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, bound: usize) -> usize {
            (self.next() % bound as u64) as usize
        }
    }

    type ModelState = BTreeMap<Vec<u8>, KeyValue>;

    /// Applies `commands` to `batched` in one apply and to `single` one at a time, then checks
    /// that both gave the same responses and left the same reads at every revision, hash and
    /// counts, and that `batched`'s memory is what its history defines.
    fn assert_one_batch_agrees_with_one_at_a_time(
        batched: &KeySpace,
        single: &KeySpace,
        commands: &[Command],
        context: &str,
    ) {
        let one_at_a_time: Vec<CommandResponse> = commands
            .iter()
            .map(|command| run(single, command.clone()))
            .collect();
        let references: Vec<Option<&Command>> = commands.iter().map(Some).collect();
        let responses = batched.apply(&references, Vec::new()).expect("apply");
        let context = format!("{context}: {commands:?}");
        assert_eq!(responses, one_at_a_time, "{context}");
        assert_eq!(every_read(batched), every_read(single), "{context}");
        assert_eq!(
            batched.live_key_count(),
            single.live_key_count(),
            "{context}"
        );
        assert_eq!(
            batched.compact_revision(),
            single.compact_revision(),
            "{context}"
        );
        assert_eq!(batched.hash_kv(0), single.hash_kv(0), "{context}");
        assert_memory_is_the_history(batched);
    }

    /// A put that names a lease, which can only fail: no lease exists in the key space.
    fn put_with_unknown_lease(key: &[u8]) -> TxnRequestOp {
        TxnRequestOp::Put(PutOp {
            lease: 7,
            ..put_op(key, b"never")
        })
    }

    /// One random command over `keys`: a put (sometimes asking for the previous value), a
    /// delete of one key or of a range, a txn writing one key twice or failing after a delete,
    /// or a compaction at or below `revision`.
    fn random_command(rng: &mut Rng, keys: &[Vec<u8>], revision: i64, value: &[u8]) -> Command {
        let key = keys[rng.below(keys.len())].clone();
        let other = keys[rng.below(keys.len())].clone();
        match rng.below(10) {
            0..=2 => Command::Put(PutOp {
                prev_kv: rng.below(2) == 0,
                ..put_op(&key, value)
            }),
            3 => delete(&key, b""),
            4 => match rng.below(3) {
                0 => delete(b"\0", b"\0"),
                1 => delete(&key, b"\0"),
                _ => delete(key.as_slice().min(&other), key.as_slice().max(&other)),
            },
            5 => Command::Txn(TxnOp {
                compare: vec![compare(
                    &other,
                    CompareResult::Equal,
                    CompareTarget::Create(0),
                )],
                success: vec![
                    TxnRequestOp::Put(put_op(&key, value)),
                    TxnRequestOp::Delete(delete_op(&key, b"")),
                ],
                failure: vec![
                    TxnRequestOp::Delete(delete_op(&key, b"")),
                    TxnRequestOp::Put(put_op(&key, value)),
                ],
            }),
            6 => Command::Txn(TxnOp {
                compare: Vec::new(),
                success: vec![
                    TxnRequestOp::Delete(delete_op(&key, b"")),
                    TxnRequestOp::Put(put_op(&other, value)),
                    put_with_unknown_lease(&key),
                ],
                failure: Vec::new(),
            }),
            _ => Command::Compact {
                revision: 1 + rng.below(revision as usize) as i64,
            },
        }
    }

    /// Commands applied in batches (where a key can be written, deleted and compacted away
    /// within one apply, by plain commands, range deletes and txns) give the same responses and
    /// leave the same reads, hash and counts as the same commands applied one at a time, and
    /// memory as the history defines it.
    #[test]
    fn commands_applied_in_batches_agree_with_the_same_commands_one_at_a_time() {
        let keys = awkward_keys();
        for seed in [3_u64, 11, 99, 0xC0FFEE, 0x5EED_0001, 0x5EED_0002] {
            let mut rng = Rng(seed);
            let batched = open_temporary();
            let single = open_temporary();
            for round in 0..40 {
                // Compactions aim at or below the revision the batch may have reached so far
                // (each command writes at most once), often at one it wrote itself; one above
                // the revision reached is refused alike.
                let mut commands = Vec::new();
                for step in 0..1 + rng.below(8) {
                    let revision = single.revision() + step as i64;
                    let value = format!("{seed}-{round}-{step}");
                    commands.push(random_command(&mut rng, &keys, revision, value.as_bytes()));
                }
                let context = format!("seed {seed} round {round}");
                assert_one_batch_agrees_with_one_at_a_time(&batched, &single, &commands, &context);
            }
        }
    }

    /// One batch where a key is written, deleted, compacted away and written again, inside and
    /// outside txns, around a range delete of everything and a failing txn rolled back.
    #[test]
    fn a_batch_that_rewrites_keys_across_compactions_agrees_with_one_at_a_time() {
        let batched = open_temporary();
        let single = open_temporary();
        let before = [
            put(b"a", b"1"),
            put(&[0xFF, 0x00], b"2"),
            delete(&[0xFF, 0x00], b""),
        ];
        assert_one_batch_agrees_with_one_at_a_time(&batched, &single, &before, "before");
        let txn = |ops: Vec<TxnRequestOp>| {
            Command::Txn(TxnOp {
                compare: Vec::new(),
                success: ops,
                failure: Vec::new(),
            })
        };
        let batch = [
            txn(vec![
                TxnRequestOp::Put(put_op(b"a", b"3")),
                TxnRequestOp::Delete(delete_op(b"a", b"")),
            ]),
            Command::Compact { revision: 5 },
            put(b"b", b"4"),
            txn(vec![
                TxnRequestOp::Delete(delete_op(b"b", b"")),
                put_with_unknown_lease(b"b"),
            ]),
            put(&[0xFF, 0x00], b"5"),
            delete(b"\0", b"\0"),
            Command::Compact { revision: 7 },
            put(b"a", b"6"),
            txn(vec![
                TxnRequestOp::Delete(delete_op(b"a", b"")),
                TxnRequestOp::Put(put_op(b"a", b"7")),
            ]),
        ];
        assert_one_batch_agrees_with_one_at_a_time(&batched, &single, &batch, "batch");
        let a = get(&batched, b"a").expect("a is live");
        assert_eq!((a.value.as_slice(), a.version), (&b"7"[..], 1));
        assert_eq!(batched.compact_revision(), 7);
    }

    /// ETCD_WIRE.md 3.1, written independently of [`KeyRange`].
    fn model_in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
        match end {
            [] => key == start,
            [0x00] => key >= start,
            end => key >= start && key < end,
        }
    }

    /// A range end for the random test: often a key, sometimes "\0" or empty (a single key).
    fn random_end(rng: &mut Rng, keys: &[Vec<u8>]) -> Vec<u8> {
        match rng.below(6) {
            0 => Vec::new(),
            1 => vec![0x00],
            _ => keys[rng.below(keys.len())].clone(),
        }
    }

    /// Random puts, deletes, txns and compacts checked against a model that keeps every
    /// revision's full state: every range at every revision must agree.
    #[test]
    fn random_commands_agree_with_a_model_of_every_revision() {
        for seed in [1_u64, 7, 42, 2024, 0xDEAD_BEEF] {
            let mut rng = Rng(seed);
            let keyspace = open_temporary();
            let all_keys = awkward_keys();
            // states[r] is the state at revision r (index 0 unused).
            let mut states: Vec<ModelState> = vec![ModelState::new(), ModelState::new()];
            let mut compact_revision = 0;
            for step in 0..200 {
                let current = states.last().expect("a state").clone();
                let revision = states.len() as i64 - 1;
                let mut next = current.clone();
                let model_put = |next: &mut ModelState, key: &[u8], value: &[u8]| {
                    let previous = next.get(key);
                    let kv = KeyValue {
                        key: key.to_vec(),
                        create_revision: previous.map_or(revision + 1, |kv| kv.create_revision),
                        mod_revision: revision + 1,
                        version: previous.map_or(1, |kv| kv.version + 1),
                        value: value.to_vec(),
                        lease: 0,
                    };
                    next.insert(key.to_vec(), kv);
                };
                let command = match rng.below(10) {
                    0..=4 => {
                        let key = all_keys[rng.below(all_keys.len())].clone();
                        let value = format!("{seed}-{step}").into_bytes();
                        model_put(&mut next, &key, &value);
                        put(&key, &value)
                    }
                    5 | 6 => {
                        let start = all_keys[rng.below(all_keys.len())].clone();
                        let end = random_end(&mut rng, &all_keys);
                        next.retain(|key, _| !model_in_range(key, &start, &end));
                        delete(&start, &end)
                    }
                    7 | 8 => {
                        let first = all_keys[rng.below(all_keys.len())].clone();
                        let second = all_keys[rng.below(all_keys.len())].clone();
                        let value = format!("txn-{step}").into_bytes();
                        next.remove(&second);
                        model_put(&mut next, &first, &value);
                        Command::Txn(TxnOp {
                            success: vec![
                                TxnRequestOp::Delete(delete_op(&second, b"")),
                                TxnRequestOp::Put(put_op(&first, &value)),
                            ],
                            ..TxnOp::default()
                        })
                    }
                    _ => {
                        let target = 1 + rng.below(revision as usize + 1) as i64;
                        let expected = if target <= compact_revision {
                            Err(KvError::Compacted)
                        } else if target > revision {
                            Err(KvError::FutureRevision)
                        } else {
                            compact_revision = target;
                            Ok(CommandOutput::Compact)
                        };
                        let response = run(&keyspace, Command::Compact { revision: target });
                        assert_eq!(response.result, expected, "seed {seed} step {step}");
                        continue;
                    }
                };
                let response = run(&keyspace, command);
                if next != current {
                    states.push(next);
                }
                assert_eq!(
                    response.revision,
                    states.len() as i64 - 1,
                    "seed {seed} step {step}"
                );

                let revision = states.len() as i64 - 1;
                for _ in 0..3 {
                    let read_revision = rng.below(revision as usize + 2) as i64;
                    let start = all_keys[rng.below(all_keys.len())].clone();
                    let end = random_end(&mut rng, &all_keys);
                    let op = RangeOp {
                        revision: read_revision,
                        ..range_op(&start, &end)
                    };
                    let expected = if read_revision > revision {
                        Err(KvError::FutureRevision)
                    } else if read_revision > 0 && read_revision < compact_revision {
                        Err(KvError::Compacted)
                    } else {
                        let state = &states[if read_revision == 0 {
                            revision
                        } else {
                            read_revision
                        } as usize];
                        let kvs: Vec<KeyValue> = state
                            .values()
                            .filter(|kv| model_in_range(&kv.key, &start, &end))
                            .cloned()
                            .collect();
                        let count = kvs.len() as i64;
                        Ok((
                            RangeResult {
                                kvs,
                                more: false,
                                count,
                            },
                            revision,
                        ))
                    };
                    assert_eq!(
                        keyspace.range(&op),
                        expected,
                        "seed {seed} step {step} read {op:?}"
                    );
                }
                assert_eq!(
                    keyspace.live_key_count(),
                    states.last().expect("a state").len()
                );
                if step % 20 == 0 {
                    assert_memory_is_the_history(&keyspace);
                }
            }
            assert_memory_is_the_history(&keyspace);
        }
    }

    /// The keys in memory (current values and versions) equal what the log's history defines (as a
    /// reopen rebuilds them), and the tree itself stores no live entry and no history, in no
    /// layout.
    fn assert_memory_is_the_history(keyspace: &KeySpace) {
        keyspace.persist().expect("persist");
        let memory = keyspace.read_gate();
        let keys = load_history(stored_history(&keyspace.history)).expect("rebuild");
        assert_eq!(memory.keys, keys);
        assert_eq!(keyspace.live_key_count(), live_count(&keys));
        assert_eq!(keyspace.tree.scan_prefix([LIVE_PREFIX]).count(), 0);
        assert_eq!(keyspace.tree.scan_prefix([DUMP_HISTORY_PREFIX]).count(), 0);
        assert_eq!(keyspace.tree.scan_prefix([HISTORY_PREFIX]).count(), 0);
        assert_eq!(keyspace.tree.scan_prefix([blocks::BLOCK_PREFIX]).count(), 0);
    }

    /// Makes the tree forget its history log, as a tree of a version before the log: the next
    /// open takes the history from the tree alone (and replaces the log's file).
    fn forget_the_history_log(batch: &mut sled::Batch) {
        batch.remove(history_log::GENERATION_KEY);
        batch.remove(history_log::SEQ_KEY);
    }

    /// Rewrites the tree's history as the layout before the blocks kept it: one tree entry per
    /// version, under its history key.
    fn store_one_entry_per_version(keyspace: &KeySpace) {
        keyspace.persist().expect("persist");
        let mut batch = sled::Batch::default();
        forget_the_history_log(&mut batch);
        for entry in blocks::iter(&keyspace.history) {
            let (key, value) = entry.expect("history entry");
            batch.insert(key, value);
        }
        keyspace
            .tree
            .apply_batch(batch)
            .expect("store one entry per version");
    }

    /// Rewrites the tree's history as the layout before the history log: its blocks in the tree.
    fn store_blocks_in_the_tree(keyspace: &KeySpace) {
        keyspace.persist().expect("persist");
        let mut batch = sled::Batch::default();
        forget_the_history_log(&mut batch);
        for block in keyspace.history.blocks() {
            let (key, block) = block.expect("history block");
            batch.insert(key, block);
        }
        keyspace
            .tree
            .apply_batch(batch)
            .expect("store the blocks in the tree");
    }

    /// Fills a key space in a fresh folder with `fill`, lays its history out in the tree as an
    /// earlier version kept it (`lay_out`, which checks that layout) and reopens it: the same
    /// reads, live count and hash, the blocks in the log, and the keys in memory as the history
    /// defines them.
    fn reopens_the_same_from_an_earlier_layout(
        fill: impl FnOnce(&KeySpace),
        lay_out: impl FnOnce(&KeySpace),
    ) {
        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path().join("db");
        let history_dir = crate::store::history_dir(directory.path());
        let before = {
            let db = sled::Config::new().path(&path).open().expect("open db");
            let keyspace = KeySpace::open(db.open_tree("keyspace").expect("tree"), &history_dir)
                .expect("open");
            fill(&keyspace);
            let reads = (every_read(&keyspace), keyspace.live_key_count());
            let hash = keyspace.hash_kv(0).expect("hash");
            lay_out(&keyspace);
            db.flush().expect("flush");
            (reads, hash)
        };
        let db = open_when_released(&path);
        let keyspace =
            KeySpace::open(db.open_tree("keyspace").expect("tree"), &history_dir).expect("reopen");
        assert!(keyspace.history.block_count() > 1);
        let reads = (every_read(&keyspace), keyspace.live_key_count());
        assert_eq!((reads, keyspace.hash_kv(0).expect("hash")), before);
        assert_memory_is_the_history(&keyspace);
    }

    #[test]
    fn a_tree_with_one_entry_per_version_opens_with_the_same_reads_and_its_history_in_blocks() {
        reopens_the_same_from_an_earlier_layout(
            |keyspace| {
                put_every_awkward_key(keyspace);
                run(keyspace, delete(b"a", b"b"));
                run(keyspace, put(b"a", b"again"));
                run(keyspace, Command::Compact { revision: 5 });
                // Enough versions for several blocks.
                put_numbered_keys(keyspace, 200);
            },
            |keyspace| {
                store_one_entry_per_version(keyspace);
                assert_eq!(keyspace.tree.scan_prefix([blocks::BLOCK_PREFIX]).count(), 0);
                assert!(keyspace.tree.scan_prefix([HISTORY_PREFIX]).count() > 200);
            },
        );
    }

    #[test]
    fn a_tree_with_its_history_blocks_in_sled_opens_with_the_same_reads_and_the_blocks_moved_out() {
        reopens_the_same_from_an_earlier_layout(
            |keyspace| {
                put_every_awkward_key(keyspace);
                run(keyspace, delete(b"a", b"b"));
                run(keyspace, Command::Compact { revision: 5 });
                put_numbered_keys(keyspace, 200);
            },
            |keyspace| {
                store_blocks_in_the_tree(keyspace);
                assert!(keyspace.tree.scan_prefix([blocks::BLOCK_PREFIX]).count() > 1);
            },
        );
    }

    #[test]
    fn the_history_log_is_rewritten_without_replaced_blocks_and_reads_the_same_after_a_reopen() {
        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path().join("db");
        let history_dir = crate::store::history_dir(directory.path());
        let before = {
            let db = sled::Config::new().path(&path).open().expect("open db");
            let keyspace = KeySpace::open(db.open_tree("keyspace").expect("tree"), &history_dir)
                .expect("open");
            keyspace.history.rewrite_after(16 * 1024);
            put_numbered_keys(&keyspace, 300);
            put_numbered_keys(&keyspace, 300);
            keyspace.persist().expect("persist");
            let grown = keyspace.history_bytes();
            // Cuts every first version out of its block: the blocks are rewritten, their old
            // records left behind, and the log rewritten once they outweigh the live ones.
            let revision = keyspace.revision();
            run(&keyspace, Command::Compact { revision });
            keyspace.persist().expect("persist");
            assert_eq!(keyspace.history.generation(), 2);
            assert!(
                keyspace.history_bytes() < grown,
                "{} >= {grown}",
                keyspace.history_bytes()
            );
            put_numbered_keys(&keyspace, 10);
            assert_memory_is_the_history(&keyspace);
            let reads = (every_read(&keyspace), keyspace.live_key_count());
            db.flush().expect("flush");
            (reads, keyspace.hash_kv(0).expect("hash"))
        };
        let files: Vec<_> = std::fs::read_dir(&history_dir).expect("list").collect();
        assert_eq!(files.len(), 1, "{files:?}");
        let db = open_when_released(&path);
        let keyspace =
            KeySpace::open(db.open_tree("keyspace").expect("tree"), &history_dir).expect("reopen");
        let reads = (every_read(&keyspace), keyspace.live_key_count());
        assert_eq!((reads, keyspace.hash_kv(0).expect("hash")), before);
        assert_memory_is_the_history(&keyspace);
    }

    #[test]
    fn a_restore_replaces_the_history_log_whole_and_reads_the_same_after_a_reopen() {
        let source = open_temporary();
        put_every_awkward_key(&source);
        put_numbered_keys(&source, 100);
        let dump = source.dump().expect("dump");
        let reads = every_read(&source);

        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path().join("db");
        let history_dir = crate::store::history_dir(directory.path());
        {
            let db = sled::Config::new().path(&path).open().expect("open db");
            let target = KeySpace::open(db.open_tree("keyspace").expect("tree"), &history_dir)
                .expect("open");
            put_numbered_keys(&target, 50);
            target.persist().expect("persist");
            target.restore(dump.clone()).expect("restore");
            assert_eq!(target.history.generation(), 2);
            assert_eq!(every_read(&target), reads);
        }
        let files: Vec<_> = std::fs::read_dir(&history_dir).expect("list").collect();
        assert_eq!(files.len(), 1, "{files:?}");
        let db = open_when_released(&path);
        let target =
            KeySpace::open(db.open_tree("keyspace").expect("tree"), &history_dir).expect("reopen");
        assert_eq!(target.dump().expect("dump"), dump);
        assert_eq!(every_read(&target), reads);
        assert_memory_is_the_history(&target);
    }

    /// Rewrites the tree as the earlier layouts kept it: the live entries stored, and the history
    /// by key, then revision (the dump's layout).
    fn store_as_the_earlier_layout(keyspace: &KeySpace) {
        keyspace.persist().expect("persist");
        let dump = keyspace.dump().expect("dump");
        let memory = keyspace.read_gate();
        let mut batch = sled::Batch::default();
        forget_the_history_log(&mut batch);
        for (key, value) in &dump {
            if key.first() == Some(&DUMP_HISTORY_PREFIX) {
                batch.insert(key.as_slice(), value.as_slice());
            }
        }
        for (user_key, state) in &memory.keys {
            if let Some(current) = &state.current {
                batch.insert(live_key(user_key), current.stored.as_slice());
            }
        }
        keyspace
            .tree
            .apply_batch(batch)
            .expect("store live entries");
    }

    fn every_read(keyspace: &KeySpace) -> Vec<Result<(RangeResult, i64), KvError>> {
        (0..=keyspace.revision() + 1)
            .map(|revision| {
                keyspace.range(&RangeOp {
                    revision,
                    ..range_op(b"\0", b"\0")
                })
            })
            .collect()
    }

    #[test]
    fn a_tree_of_the_earlier_layouts_opens_with_the_same_reads_and_its_history_moved() {
        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path().join("db");
        let history_dir = crate::store::history_dir(directory.path());
        let before = {
            let db = sled::Config::new().path(&path).open().expect("open db");
            let keyspace = KeySpace::open(db.open_tree("keyspace").expect("tree"), &history_dir)
                .expect("open");
            for (index, key) in awkward_keys().iter().enumerate() {
                run(&keyspace, put(key, &[index as u8]));
            }
            run(&keyspace, delete(b"a", b"b"));
            run(&keyspace, put(b"a", b"again"));
            run(&keyspace, Command::Compact { revision: 5 });
            let reads = (every_read(&keyspace), keyspace.live_key_count());
            store_as_the_earlier_layout(&keyspace);
            assert!(keyspace.tree.scan_prefix([LIVE_PREFIX]).count() > 0);
            assert!(keyspace.tree.scan_prefix([DUMP_HISTORY_PREFIX]).count() > 0);
            assert_eq!(keyspace.tree.scan_prefix([blocks::BLOCK_PREFIX]).count(), 0);
            db.flush().expect("flush");
            reads
        };
        let db = open_when_released(&path);
        let keyspace =
            KeySpace::open(db.open_tree("keyspace").expect("tree"), &history_dir).expect("reopen");
        assert_eq!((every_read(&keyspace), keyspace.live_key_count()), before);
        assert_memory_is_the_history(&keyspace);
    }

    #[test]
    fn a_dump_of_the_earlier_layout_restores_the_same_reads_without_live_entries() {
        let source = open_temporary();
        put_every_awkward_key(&source);
        run(&source, delete(b"\0", b"a"));
        let dump = source.dump().expect("dump");
        let reads = every_read(&source);
        // The source's tree no longer matches its memory from here on: only its entries are used.
        store_as_the_earlier_layout(&source);
        let earlier_dump = source.tree.iter().map(|entry| {
            let (key, value) = entry.expect("entry");
            (key.to_vec(), value.to_vec())
        });
        let earlier_dump: Vec<(Vec<u8>, Vec<u8>)> = earlier_dump.collect();
        assert!(earlier_dump.len() > dump.len());

        let target = open_temporary();
        target.restore(earlier_dump).expect("restore");
        assert_eq!(target.dump().expect("dump"), dump);
        assert_eq!(every_read(&target), reads);
        assert_eq!(target.live_key_count(), source.live_key_count());
        assert_memory_is_the_history(&target);
    }

    #[test]
    fn applied_batches_not_yet_in_sled_are_lost_whole_on_a_crash() {
        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path().join("db");
        let history_dir = crate::store::history_dir(directory.path());
        let marker = vec![EXTRA_PREFIX, b'm'];
        let with_marker = |keyspace: &KeySpace, commands: &[Command], value: &[u8]| {
            let commands: Vec<Option<&Command>> = commands.iter().map(Some).collect();
            keyspace
                .apply(&commands, vec![(marker.clone(), Some(value.to_vec()))])
                .expect("apply");
        };
        {
            let db = sled::Config::new().path(&path).open().expect("open db");
            let keyspace = KeySpace::open(db.open_tree("keyspace").expect("tree"), &history_dir)
                .expect("open");
            with_marker(&keyspace, &[put(b"a", b"1")], b"first");
            keyspace.persist().expect("persist");
            with_marker(&keyspace, &[put(b"a", b"2"), put(b"b", b"1")], b"second");
            // Applied: every read sees the second batch...
            assert_eq!(get(&keyspace, b"a").expect("a").value, b"2");
            assert_eq!(
                keyspace.get_extra(&marker).expect("marker"),
                Some(b"second".to_vec())
            );
            // ...but it was never handed to sled before this crash.
            db.flush().expect("flush");
        }
        let db = open_when_released(&path);
        let keyspace =
            KeySpace::open(db.open_tree("keyspace").expect("tree"), &history_dir).expect("reopen");
        assert_eq!(
            keyspace.get_extra(&marker).expect("marker"),
            Some(b"first".to_vec())
        );
        assert_eq!((keyspace.revision(), keyspace.live_key_count()), (2, 1));
        assert_eq!(get(&keyspace, b"a").expect("a").value, b"1");
        assert_eq!(get(&keyspace, b"b"), None);
        assert_memory_is_the_history(&keyspace);
    }

    #[test]
    fn reads_are_the_same_while_writes_are_pending_being_persisted_or_in_sled() {
        // `reference` hands every batch to sled at once; `keyspace` keeps them in memory, moves
        // them to `persisting`, applies more on top, and only then writes them to sled.
        let reference = open_temporary();
        let keyspace = open_temporary();
        let both = |command: Command| {
            assert_eq!(run(&keyspace, command.clone()), run(&reference, command));
            reference.persist().expect("persist");
        };
        let same_reads = |stage: &str| {
            assert_eq!(every_read(&keyspace), every_read(&reference), "{stage}");
            assert_eq!(keyspace.hash_kv(0), reference.hash_kv(0), "hash_kv {stage}");
            assert_eq!(
                keyspace.dump().expect("dump"),
                reference.dump().expect("dump")
            );
        };
        for (index, key) in awkward_keys().iter().enumerate() {
            both(put(key, &[index as u8]));
        }
        both(delete(b"a", b"b"));
        same_reads("pending");

        let writes = keyspace.start_persisting().expect("pending writes");
        same_reads("persisting");
        both(put(b"a", b"over persisting"));
        both(delete(b"\0", b""));
        both(Command::Compact { revision: 4 });
        same_reads("pending over persisting");

        keyspace.write_to_tree(&writes).expect("write");
        same_reads("in sled and still persisting");
        keyspace.finish_persisting(&writes, true);
        same_reads("in sled, newer pending");
        keyspace.persist().expect("persist");
        same_reads("all in sled");
        assert_memory_is_the_history(&keyspace);
    }

    #[test]
    fn restore_refuses_history_out_of_order_and_changes_nothing() {
        let source = open_temporary();
        run(&source, put(b"a", b"1"));
        run(&source, put(b"b", b"1"));
        let mut dump = source.dump().expect("dump");
        let history: Vec<usize> = (0..dump.len())
            .filter(|&i| dump[i].0.first() == Some(&DUMP_HISTORY_PREFIX))
            .collect();
        dump.swap(history[0], history[1]);

        let target = open_temporary();
        run(&target, put(b"kept", b"v"));
        let before = target.dump().expect("dump");
        let refused = target.restore(dump).expect_err("out of order");
        assert!(refused.to_string().contains("out of order"), "{refused}");
        assert_eq!(target.dump().expect("dump"), before);
        assert_eq!(get(&target, b"kept").expect("kept").value, b"v");
    }
}
