//! The key space's history blocks ([`super::blocks`]) in a log file of the node's own, beside
//! sled rather than inside it.
//!
//! ```text
//! <history dir>/<generation>.log   appended records; one generation in use
//! record = payload_len u32 LE | crc32c(payload) u32 LE | payload
//! payload = kind u8 | seq u64 LE | key_len u32 LE | key | value
//!   kind 0 start   first record of a generation: value = MAGIC, seq = the generation's base
//!   kind 1 put     block `key` (BLOCK_PREFIX + the suffix of its first entry) holds `value`
//!   kind 2 remove  block `key` is gone
//! in the key space's sled tree, prefix 0x06, outside every dump:
//!   0x06 "generation"  the generation in use                     (u64 BE)
//!   0x06 "seq"         the last persist whose records count      (u64 BE)
//! ```
//!
//! Why: in sled every block cost a leaf insert, page consolidations and writes by sled's IO
//! threads; a put's history was written about 3.7 times over, and sled took 10% of member CPU
//! at put-1000 (bench/results/2026-12-06-history-ceiling-and-sync-placement.md). Here a persist
//! is one `pwrite` and one `fdatasync`.
//!
//! Crash order: a persist appends its records (seq = the last one + 1) and syncs them *before*
//! the sled batch that records that seq, and sled makes batches durable in order. So the seq
//! sled holds after a crash names records the file holds, and records above it (their batch was
//! lost; the Raft log applies those entries again) are cut off at open. A new generation (a
//! restore, or a rewrite that leaves out the space of replaced blocks) is written and synced
//! whole under its own name before sled names it, and the old file is removed only once sled
//! has flushed that.
//!
//! In memory: where each block's record is, by block key. Blocks are read back with `pread`
//! (the kernel's page cache usually holds them) and checked against their record's checksum.
//!
//! Must never: let sled name a persist whose records the file does not hold in full; let a
//! reader see a staged record before the persist's sled batch is applied; replay a record that
//! an abandoned persist left behind.

use std::collections::BTreeMap;
use std::collections::Bound;
use std::fs::File;
use std::io;
use std::io::BufReader;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::RwLock;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use super::blocks::BLOCK_PREFIX;
use super::invalid_data;
use super::sled_error;
use crate::store::wal::checksum;
use crate::store::wal::sync_dir;

/// The tree keys of the log's bookkeeping start with this byte (see the layout in `mvcc`).
pub(super) const LOG_STATE_PREFIX: u8 = 0x06;
pub(super) const GENERATION_KEY: &[u8] = b"\x06generation";
pub(super) const SEQ_KEY: &[u8] = b"\x06seq";
const _: () = assert!(GENERATION_KEY[0] == LOG_STATE_PREFIX && SEQ_KEY[0] == LOG_STATE_PREFIX);

/// The value of every generation's start record.
const MAGIC: &[u8; 16] = b"QUORUMDB-HISTORY";
const KIND_START: u8 = 0;
const KIND_PUT: u8 = 1;
const KIND_REMOVE: u8 = 2;
/// payload_len and crc.
const HEADER_BYTES: u64 = 8;
/// kind, seq and key_len.
const PAYLOAD_FIXED_BYTES: usize = 1 + 8 + 4;
/// A record is refused at open beyond this (a damaged length, not a block: blocks are cut at
/// 6 KiB plus one entry).
const PAYLOAD_BYTES_MAX: u32 = 64 << 20;

/// The space of replaced and removed blocks is reclaimed (the live blocks rewritten to a new
/// generation) once it passes this and the live blocks' own size.
const REWRITE_GARBAGE_BYTES: u64 = 64 << 20;

/// Changes to blocks: (block key, `Some(block)` to write it, `None` to remove it).
pub(super) type BlockChanges = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// A block's record in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Location {
    /// Where the record starts.
    offset: u64,
    payload_len: u32,
}

impl Location {
    fn record_bytes(&self) -> u64 {
        HEADER_BYTES + u64::from(self.payload_len)
    }
}

struct State {
    generation: u64,
    file: Arc<File>,
    /// Where the next record goes: the end of the last counted one.
    end: u64,
    /// The last persist whose records count (what sled holds).
    seq: u64,
    blocks: BTreeMap<Vec<u8>, Location>,
    /// Bytes of the counted records of blocks in `blocks`, and of every other counted record.
    live_bytes: u64,
    garbage_bytes: u64,
}

impl State {
    /// Generation `generation` on `file`, at persist `seq`, before any record is counted.
    fn empty(generation: u64, file: File, seq: u64) -> State {
        State {
            generation,
            file: Arc::new(file),
            end: 0,
            seq,
            blocks: BTreeMap::new(),
            live_bytes: 0,
            garbage_bytes: 0,
        }
    }

    fn put(&mut self, key: Vec<u8>, location: Location) {
        self.live_bytes += location.record_bytes();
        if let Some(replaced) = self.blocks.insert(key, location) {
            self.live_bytes -= replaced.record_bytes();
            self.garbage_bytes += replaced.record_bytes();
        }
    }

    fn remove(&mut self, key: &[u8], record_bytes: u64) {
        self.garbage_bytes += record_bytes;
        if let Some(removed) = self.blocks.remove(key) {
            self.live_bytes -= removed.record_bytes();
            self.garbage_bytes += removed.record_bytes();
        }
    }
}

/// The history blocks of one key space. Shared by readers and the one persist at a time.
pub(super) struct HistoryLog {
    dir: PathBuf,
    state: RwLock<State>,
    /// [`REWRITE_GARBAGE_BYTES`], lowered by tests.
    rewrite_garbage_bytes: AtomicU64,
}

/// A persist's records, appended and synced but not counted yet: the persist's sled batch gets
/// [`Staged::sled_entry`], then [`HistoryLog::commit`] or [`HistoryLog::abandon`].
pub(super) struct Staged {
    seq: u64,
    start: u64,
    end: u64,
    changes: Vec<(Vec<u8>, Change)>,
}

enum Change {
    Put(Location),
    Remove(u64),
}

impl Staged {
    /// The tree entry saying this persist's records count.
    pub(super) fn sled_entry(&self) -> (&'static [u8], [u8; 8]) {
        (SEQ_KEY, self.seq.to_be_bytes())
    }
}

/// A generation written whole and synced, not yet named by sled: sled gets
/// [`Generation::sled_entries`] and is flushed, then [`HistoryLog::switch`].
pub(super) struct Generation {
    state: State,
}

impl Generation {
    pub(super) fn sled_entries(&self) -> [(&'static [u8], [u8; 8]); 2] {
        [
            (GENERATION_KEY, self.state.generation.to_be_bytes()),
            (SEQ_KEY, self.state.seq.to_be_bytes()),
        ]
    }
}

fn file_name(generation: u64) -> String {
    format!("{generation:020}.log")
}

fn damaged(path: &Path, message: String) -> io::Error {
    invalid_data(format!("history log {}: {message}", path.display()))
}

/// Appends one record to `out`, whose first byte goes at `file_offset` in the file; returns
/// where the record is.
fn push_record(
    out: &mut Vec<u8>,
    file_offset: u64,
    kind: u8,
    seq: u64,
    key: &[u8],
    value: &[u8],
) -> Location {
    let payload_len = PAYLOAD_FIXED_BYTES + key.len() + value.len();
    let payload_len = u32::try_from(payload_len).expect("a history record fits u32");
    let start = out.len();
    out.extend_from_slice(&payload_len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(kind);
    out.extend_from_slice(&seq.to_le_bytes());
    let key_len = u32::try_from(key.len()).expect("a block key fits u32");
    out.extend_from_slice(&key_len.to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    let crc = checksum(0, &out[start + HEADER_BYTES as usize..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Location {
        offset: file_offset + start as u64,
        payload_len,
    }
}

/// One record's payload, split.
struct Payload<'a> {
    kind: u8,
    seq: u64,
    key: &'a [u8],
    value: &'a [u8],
}

fn parse_payload(payload: &[u8]) -> Option<Payload<'_>> {
    let (&kind, rest) = payload.split_first()?;
    let (seq, rest) = rest.split_first_chunk::<8>()?;
    let (key_len, rest) = rest.split_first_chunk::<4>()?;
    let key_len = usize::try_from(u32::from_le_bytes(*key_len)).ok()?;
    if rest.len() < key_len {
        return None;
    }
    let (key, value) = rest.split_at(key_len);
    Some(Payload {
        kind,
        seq: u64::from_le_bytes(*seq),
        key,
        value,
    })
}

/// Reads a tree entry of the log's bookkeeping.
fn read_u64(tree: &sled::Tree, key: &[u8]) -> io::Result<Option<u64>> {
    match tree.get(key).map_err(sled_error)? {
        None => Ok(None),
        Some(bytes) => {
            let bytes: [u8; 8] = bytes
                .as_ref()
                .try_into()
                .map_err(|_| invalid_data(format!("history log entry {key:?} is not 8 bytes")))?;
            Ok(Some(u64::from_be_bytes(bytes)))
        }
    }
}

impl HistoryLog {
    /// Opens the history of the key space in `tree`, in `dir`. A tree that still holds its
    /// history blocks (the layout before this log) has them moved here first, in generation 1.
    pub(super) fn open(tree: &sled::Tree, dir: &Path) -> io::Result<HistoryLog> {
        std::fs::create_dir_all(dir)?;
        let generation = match read_u64(tree, GENERATION_KEY)? {
            Some(generation) => generation,
            None => move_blocks_out_of(tree, dir)?,
        };
        let seq = read_u64(tree, SEQ_KEY)?.unwrap_or(0);
        // Another generation's file: an unfinished switch's new one, or a finished switch's old
        // one not removed yet. Neither is named by sled.
        let current = file_name(generation);
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_name() != current.as_str() {
                std::fs::remove_file(entry.path())?;
            }
        }
        let path = dir.join(&current);
        let file = File::options().read(true).write(true).open(&path)?;
        let state = replay(file, &path, generation, seq)?;
        Ok(HistoryLog {
            dir: dir.to_path_buf(),
            state: RwLock::new(state),
            rewrite_garbage_bytes: AtomicU64::new(REWRITE_GARBAGE_BYTES),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().expect("the history log lock is poisoned")
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .expect("the history log lock is poisoned")
    }

    /// The last block whose key is at or below `key`, with its bytes.
    pub(super) fn block_at_or_below(&self, key: &[u8]) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        self.last_block_below(Bound::Included(key))
    }

    /// The last block whose key is below `upper`, with its bytes.
    fn last_block_below(&self, upper: Bound<&[u8]>) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        let (file, found) = {
            let state = self.read();
            let found = state
                .blocks
                .range::<[u8], _>((Bound::Unbounded, upper))
                .next_back()
                .map(|(key, location)| (key.clone(), *location));
            (state.file.clone(), found)
        };
        match found {
            None => Ok(None),
            Some((key, location)) => Ok(Some((key, read_block(&file, location)?))),
        }
    }

    /// The key of the first block after the block keyed `key`.
    pub(super) fn next_block_key(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.read()
            .blocks
            .range::<[u8], _>((Bound::Excluded(key), Bound::Unbounded))
            .next()
            .map(|(key, _)| key.clone())
    }

    /// The block with the greatest key, with its bytes.
    pub(super) fn last_block(&self) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        self.last_block_below(Bound::Unbounded)
    }

    /// Every block as it is now, in key order, read as the iterator goes.
    pub(super) fn blocks(&self) -> impl Iterator<Item = io::Result<(Vec<u8>, Vec<u8>)>> + use<> {
        let (file, blocks) = {
            let state = self.read();
            let blocks: Vec<(Vec<u8>, Location)> = state
                .blocks
                .iter()
                .map(|(key, location)| (key.clone(), *location))
                .collect();
            (state.file.clone(), blocks)
        };
        blocks
            .into_iter()
            .map(move |(key, location)| Ok((key, read_block(&file, location)?)))
    }

    /// Bytes of the file in use.
    pub(super) fn bytes(&self) -> u64 {
        self.read().end
    }

    #[cfg(test)]
    pub(super) fn block_count(&self) -> usize {
        self.read().blocks.len()
    }

    /// Appends the records of `changes` (block key, `Some(block)` to write it, `None` to remove
    /// it) as the next persist, and syncs them; `None` when there are none. They count once
    /// [`HistoryLog::commit`]ted. One persist at a time (the caller's persist lock).
    pub(super) fn stage(&self, changes: BlockChanges) -> io::Result<Option<Staged>> {
        if changes.is_empty() {
            return Ok(None);
        }
        let (file, start, seq) = {
            let state = self.read();
            (state.file.clone(), state.end, state.seq + 1)
        };
        // Whatever a failed or abandoned persist left past the end goes first: it would carry
        // this persist's seq.
        if file.metadata()?.len() != start {
            file.set_len(start)?;
        }
        // Sized up front: grown record by record, the buffer of a large persist was copied
        // over and over (1% of a follower's CPU at 1000 clients).
        let records_bytes = changes
            .iter()
            .map(|(key, block)| {
                HEADER_BYTES as usize
                    + PAYLOAD_FIXED_BYTES
                    + key.len()
                    + block.as_ref().map_or(0, Vec::len)
            })
            .sum();
        let mut records = Vec::with_capacity(records_bytes);
        let mut staged = Vec::with_capacity(changes.len());
        for (key, block) in changes {
            let change = match block {
                Some(block) => Change::Put(push_record(
                    &mut records,
                    start,
                    KIND_PUT,
                    seq,
                    &key,
                    &block,
                )),
                None => {
                    let location = push_record(&mut records, start, KIND_REMOVE, seq, &key, &[]);
                    Change::Remove(location.record_bytes())
                }
            };
            staged.push((key, change));
        }
        debug_assert_eq!(records.len(), records_bytes, "records sized up front");
        file.write_all_at(&records, start)?;
        file.sync_data()?;
        Ok(Some(Staged {
            seq,
            start,
            end: start + records.len() as u64,
            changes: staged,
        }))
    }

    /// Counts `staged`: its persist's sled batch is applied.
    pub(super) fn commit(&self, staged: Staged) {
        let mut state = self.write();
        assert_eq!(
            state.end, staged.start,
            "history records staged out of turn"
        );
        for (key, change) in staged.changes {
            match change {
                Change::Put(location) => state.put(key, location),
                Change::Remove(record_bytes) => state.remove(&key, record_bytes),
            }
        }
        state.end = staged.end;
        state.seq = staged.seq;
    }

    /// Cuts `staged` off the file: its persist's sled batch failed. Panics if the file cannot be
    /// cut: its records would be replayed with the next persist's.
    pub(super) fn abandon(&self, staged: Staged) {
        let file = self.read().file.clone();
        if let Err(error) = file.set_len(staged.start).and_then(|()| file.sync_data()) {
            panic!("cannot cut an abandoned persist off the history log: {error}");
        }
    }

    /// Whether replaced and removed blocks take enough of the file to rewrite it.
    pub(super) fn wants_rewrite(&self) -> bool {
        let state = self.read();
        state.garbage_bytes > self.rewrite_garbage_bytes.load(Ordering::Relaxed)
            && state.garbage_bytes > state.live_bytes
    }

    /// Rewrites once replaced blocks take more than `bytes` (and the live ones' size).
    #[cfg(test)]
    pub(super) fn rewrite_after(&self, bytes: u64) {
        self.rewrite_garbage_bytes.store(bytes, Ordering::Relaxed);
    }

    #[cfg(test)]
    pub(super) fn generation(&self) -> u64 {
        self.read().generation
    }

    /// The live blocks, rewritten to a new generation at the same seq.
    pub(super) fn rewrite(&self) -> io::Result<Generation> {
        let (generation, seq) = {
            let state = self.read();
            (state.generation + 1, state.seq)
        };
        self.write_generation(generation, seq, self.blocks())
    }

    /// A new generation holding `blocks` (in key order) alone, as the next persist.
    pub(super) fn replace(&self, blocks: Vec<(Vec<u8>, Vec<u8>)>) -> io::Result<Generation> {
        let (generation, seq) = {
            let state = self.read();
            (state.generation + 1, state.seq + 1)
        };
        self.write_generation(generation, seq, blocks.into_iter().map(Ok))
    }

    fn write_generation(
        &self,
        generation: u64,
        seq: u64,
        blocks: impl Iterator<Item = io::Result<(Vec<u8>, Vec<u8>)>>,
    ) -> io::Result<Generation> {
        let state = write_generation_file(&self.dir, generation, seq, blocks)?;
        Ok(Generation { state })
    }

    /// Puts `generation` in use: sled's tree names it. Removes the file it replaces if sled has
    /// flushed that (`flushed`); otherwise the next open does.
    pub(super) fn switch(&self, generation: Generation, flushed: bool) {
        let replaced = {
            let mut state = self.write();
            std::mem::replace(&mut *state, generation.state).generation
        };
        if !flushed {
            return;
        }
        let path = self.dir.join(file_name(replaced));
        if let Err(error) = std::fs::remove_file(&path) {
            // Removed at the next open.
            tracing::warn!(path = %path.display(), %error, "cannot remove a replaced history log");
        }
    }
}

/// Writes generation `generation` of the log in `dir`, starting at `seq`, holding `blocks`
/// (in key order): under a temporary name first, synced, then renamed and the folder synced.
fn write_generation_file(
    dir: &Path,
    generation: u64,
    seq: u64,
    blocks: impl Iterator<Item = io::Result<(Vec<u8>, Vec<u8>)>>,
) -> io::Result<State> {
    let path = dir.join(file_name(generation));
    let temporary = dir.join(format!("{}.tmp", file_name(generation)));
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temporary)?;
    let mut state = State::empty(generation, file, seq);
    let mut records = Vec::new();
    let start = push_record(&mut records, 0, KIND_START, seq, &[], MAGIC);
    state.garbage_bytes += start.record_bytes();
    for block in blocks {
        let (key, block) = block?;
        let location = push_record(&mut records, state.end, KIND_PUT, seq, &key, &block);
        state.put(key, location);
        if records.len() >= 1 << 20 {
            state.file.write_all_at(&records, state.end)?;
            state.end += records.len() as u64;
            records.clear();
        }
    }
    state.file.write_all_at(&records, state.end)?;
    state.end += records.len() as u64;
    state.file.sync_all()?;
    std::fs::rename(&temporary, &path)?;
    sync_dir(dir)?;
    Ok(state)
}

/// The first open of a tree kept before this log: its history blocks (if any) become
/// generation 1, and leave the tree in the batch that names that generation.
fn move_blocks_out_of(tree: &sled::Tree, dir: &Path) -> io::Result<u64> {
    // Streamed from the tree into the file: only the keys are kept, for the batch.
    let mut batch = sled::Batch::default();
    let mut moved = 0usize;
    let blocks = tree.scan_prefix([BLOCK_PREFIX]).map(|entry| {
        let (key, block) = entry.map_err(sled_error)?;
        batch.remove(key.clone());
        moved += 1;
        Ok((key.to_vec(), block.to_vec()))
    });
    let generation = 1;
    let written = write_generation_file(dir, generation, 0, blocks)?;
    batch.insert(GENERATION_KEY, &generation.to_be_bytes()[..]);
    batch.insert(SEQ_KEY, &written.seq.to_be_bytes()[..]);
    tree.apply_batch(batch).map_err(sled_error)?;
    tree.flush().map_err(sled_error)?;
    if moved > 0 {
        tracing::info!(
            blocks = moved,
            "key space: history blocks moved out of sled into the history log"
        );
    }
    Ok(generation)
}

/// Reads block `location`'s record from `file` and returns its value, checked.
fn read_block(file: &File, location: Location) -> io::Result<Vec<u8>> {
    let mut record = vec![0; usize::try_from(location.record_bytes()).expect("fits usize")];
    file.read_exact_at(&mut record, location.offset)?;
    let crc = u32::from_le_bytes(record[4..8].try_into().expect("4 bytes"));
    let payload = &record[HEADER_BYTES as usize..];
    let parsed = parse_payload(payload)
        .filter(|_| checksum(0, payload) == crc)
        .filter(|parsed| parsed.kind == KIND_PUT);
    match parsed {
        Some(parsed) => Ok(parsed.value.to_vec()),
        None => Err(invalid_data(format!(
            "history block record at byte {} is damaged",
            location.offset
        ))),
    }
}

/// Reads `file` from its start: the blocks of every persist up to `seq`. Cuts off what follows
/// them (records of persists sled does not hold, or a torn last record).
fn replay(file: File, path: &Path, generation: u64, seq: u64) -> io::Result<State> {
    let file_len = file.metadata()?.len();
    let mut state = State::empty(generation, file, seq);
    let file = state.file.clone();
    let mut reader = BufReader::with_capacity(1 << 20, &*file);
    let mut payload = Vec::new();
    let mut started = false;
    let mut last_seq = 0;
    loop {
        let offset = state.end;
        let mut header = [0u8; HEADER_BYTES as usize];
        if reader.read_exact(&mut header).is_err() {
            break;
        }
        let payload_len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if payload_len > PAYLOAD_BYTES_MAX {
            break;
        }
        payload.resize(payload_len as usize, 0);
        if reader.read_exact(&mut payload).is_err() || checksum(0, &payload) != crc {
            break;
        }
        let Some(record) = parse_payload(&payload) else {
            break;
        };
        if !started {
            if record.kind != KIND_START || record.value != MAGIC.as_slice() {
                return Err(damaged(
                    path,
                    "it does not start with a start record".into(),
                ));
            }
            if record.seq > seq {
                return Err(damaged(
                    path,
                    format!(
                        "it starts at persist {} but the key space was persisted at {seq}",
                        record.seq
                    ),
                ));
            }
            started = true;
            last_seq = record.seq;
            state.garbage_bytes += HEADER_BYTES + u64::from(payload_len);
            state.end += HEADER_BYTES + u64::from(payload_len);
            continue;
        }
        if record.seq > seq {
            break;
        }
        if record.seq < last_seq {
            return Err(damaged(
                path,
                format!("persist {} follows persist {last_seq}", record.seq),
            ));
        }
        last_seq = record.seq;
        let location = Location {
            offset,
            payload_len,
        };
        match record.kind {
            KIND_PUT => state.put(record.key.to_vec(), location),
            KIND_REMOVE => state.remove(record.key, location.record_bytes()),
            kind => {
                return Err(damaged(
                    path,
                    format!("record at byte {offset} has unknown kind {kind}"),
                ));
            }
        }
        state.end += location.record_bytes();
    }
    drop(reader);
    if !started {
        return Err(damaged(path, "it holds no start record".into()));
    }
    if last_seq != seq {
        return Err(damaged(
            path,
            format!(
                "it ends at persist {last_seq} but the key space was persisted at {seq}: \
                 history blocks are missing"
            ),
        ));
    }
    if state.end < file_len {
        tracing::info!(
            path = %path.display(),
            kept = state.end,
            cut = file_len - state.end,
            "history log: records past the last persist cut off"
        );
        state.file.set_len(state.end)?;
        state.file.sync_all()?;
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temporary_tree() -> sled::Tree {
        let db = sled::Config::new()
            .temporary(true)
            .open()
            .expect("open a temporary sled db");
        db.open_tree("keyspace").expect("open tree")
    }

    fn block(key: u8, len: usize) -> (Vec<u8>, Vec<u8>) {
        (vec![BLOCK_PREFIX, key], vec![key; len])
    }

    /// Stages `changes` and, as a persist does, puts the seq in the tree, then commits.
    fn persist(log: &HistoryLog, tree: &sled::Tree, changes: BlockChanges) {
        let staged = log.stage(changes).expect("stage").expect("records");
        let (key, value) = staged.sled_entry();
        tree.insert(key, &value[..]).expect("insert seq");
        log.commit(staged);
    }

    fn all(log: &HistoryLog) -> Vec<(Vec<u8>, Vec<u8>)> {
        log.blocks()
            .collect::<io::Result<_>>()
            .expect("read blocks")
    }

    fn put(block: &(Vec<u8>, Vec<u8>)) -> (Vec<u8>, Option<Vec<u8>>) {
        (block.0.clone(), Some(block.1.clone()))
    }

    #[test]
    fn blocks_persisted_replaced_and_removed_read_back_the_same_after_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = temporary_tree();
        let log = HistoryLog::open(&tree, dir.path()).expect("open");
        let (a, b, c) = (block(1, 100), block(2, 200), block(3, 300));
        persist(&log, &tree, vec![put(&a), put(&b)]);
        let b2 = block(2, 50);
        persist(&log, &tree, vec![put(&b2), put(&c)]);
        persist(&log, &tree, vec![(a.0.clone(), None)]);
        let expected = vec![b2.clone(), c.clone()];
        assert_eq!(all(&log), expected);
        assert_eq!(
            log.block_at_or_below(&[BLOCK_PREFIX, 2, 9]).expect("read"),
            Some(b2.clone())
        );
        assert_eq!(
            log.block_at_or_below(&[BLOCK_PREFIX, 1]).expect("read"),
            None
        );
        assert_eq!(log.next_block_key(&b2.0), Some(c.0.clone()));
        assert_eq!(log.last_block().expect("read"), Some(c.clone()));
        drop(log);
        let log = HistoryLog::open(&tree, dir.path()).expect("reopen");
        assert_eq!(all(&log), expected);
    }

    #[test]
    fn records_of_a_persist_sled_does_not_hold_are_cut_off_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = temporary_tree();
        let log = HistoryLog::open(&tree, dir.path()).expect("open");
        persist(&log, &tree, vec![put(&block(1, 100))]);
        let counted = log.bytes();
        // Staged and synced, then a crash before its sled batch: the tree still says seq 1.
        let lost = log.stage(vec![put(&block(2, 100))]).expect("stage");
        assert!(lost.is_some());
        drop(log);
        let path = dir.path().join(file_name(1));
        assert!(std::fs::metadata(&path).expect("file").len() > counted);
        let log = HistoryLog::open(&tree, dir.path()).expect("reopen");
        assert_eq!(all(&log), vec![block(1, 100)]);
        assert_eq!(std::fs::metadata(&path).expect("file").len(), counted);
        // The next persist takes that seq again, and only its own records count.
        persist(&log, &tree, vec![put(&block(3, 10))]);
        drop(log);
        let log = HistoryLog::open(&tree, dir.path()).expect("reopen");
        assert_eq!(all(&log), vec![block(1, 100), block(3, 10)]);
    }

    #[test]
    fn an_abandoned_persist_is_cut_off_and_never_replayed_with_the_next() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = temporary_tree();
        let log = HistoryLog::open(&tree, dir.path()).expect("open");
        // Larger than the next persist: its records would otherwise lie past the next one's.
        let staged = log
            .stage(vec![put(&block(1, 10)), put(&block(2, 1000))])
            .expect("stage")
            .expect("records");
        log.abandon(staged);
        persist(&log, &tree, vec![put(&block(1, 10))]);
        drop(log);
        let log = HistoryLog::open(&tree, dir.path()).expect("reopen");
        assert_eq!(all(&log), vec![block(1, 10)]);
    }

    #[test]
    fn a_torn_last_record_is_cut_off_and_missing_records_are_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = temporary_tree();
        let log = HistoryLog::open(&tree, dir.path()).expect("open");
        persist(&log, &tree, vec![put(&block(1, 100))]);
        let one = log.bytes();
        persist(&log, &tree, vec![put(&block(2, 100))]);
        drop(log);
        let path = dir.path().join(file_name(1));
        let file = File::options().write(true).open(&path).expect("open");
        // The second persist's record torn: sled holds seq 2, so blocks are missing.
        file.set_len(one + 20).expect("tear");
        let error = HistoryLog::open(&tree, dir.path())
            .err()
            .expect("missing records");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(error.to_string().contains("blocks are missing"), "{error}");
        // Had sled not held the second persist, the torn record is simply cut off.
        tree.insert(SEQ_KEY, &1u64.to_be_bytes()[..]).expect("seq");
        let log = HistoryLog::open(&tree, dir.path()).expect("reopen");
        assert_eq!(all(&log), vec![block(1, 100)]);
        assert_eq!(std::fs::metadata(&path).expect("file").len(), one);
    }

    #[test]
    fn a_damaged_block_is_an_error_when_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = temporary_tree();
        let log = HistoryLog::open(&tree, dir.path()).expect("open");
        persist(&log, &tree, vec![put(&block(1, 100))]);
        let file = File::options()
            .write(true)
            .open(dir.path().join(file_name(1)))
            .expect("open");
        file.write_all_at(&[0xEE], log.bytes() - 1).expect("damage");
        let error = log
            .block_at_or_below(&[BLOCK_PREFIX, 1])
            .expect_err("damaged");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn a_rewrite_keeps_the_live_blocks_and_drops_the_space_of_replaced_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = temporary_tree();
        let log = HistoryLog::open(&tree, dir.path()).expect("open");
        persist(&log, &tree, vec![put(&block(1, 4000)), put(&block(2, 10))]);
        for round in 0..20u8 {
            persist(
                &log,
                &tree,
                vec![(vec![BLOCK_PREFIX, 1], Some(vec![round; 4000]))],
            );
        }
        let before = log.bytes();
        let expected = vec![(vec![BLOCK_PREFIX, 1], vec![19; 4000]), block(2, 10)];
        let generation = log.rewrite().expect("rewrite");
        for (key, value) in generation.sled_entries() {
            tree.insert(key, &value[..]).expect("name the generation");
        }
        log.switch(generation, true);
        assert!(log.bytes() < before / 10, "{} of {before}", log.bytes());
        assert_eq!(all(&log), expected);
        assert!(!dir.path().join(file_name(1)).exists());
        persist(&log, &tree, vec![put(&block(3, 10))]);
        drop(log);
        let log = HistoryLog::open(&tree, dir.path()).expect("reopen");
        assert_eq!(all(&log), [expected, vec![block(3, 10)]].concat());
    }

    #[test]
    fn a_generation_sled_does_not_name_yet_is_dropped_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = temporary_tree();
        let log = HistoryLog::open(&tree, dir.path()).expect("open");
        persist(&log, &tree, vec![put(&block(1, 100))]);
        // A restore's new generation written, then a crash before sled named it.
        let generation = log.replace(vec![block(7, 10)]).expect("replace");
        drop(generation);
        drop(log);
        assert!(dir.path().join(file_name(2)).exists());
        let log = HistoryLog::open(&tree, dir.path()).expect("reopen");
        assert_eq!(all(&log), vec![block(1, 100)]);
        assert!(!dir.path().join(file_name(2)).exists());
    }

    #[test]
    fn blocks_a_tree_still_holds_move_into_the_log_at_the_first_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = temporary_tree();
        let (a, b) = (block(1, 100), block(2, 100));
        tree.insert(a.0.as_slice(), a.1.as_slice()).expect("insert");
        tree.insert(b.0.as_slice(), b.1.as_slice()).expect("insert");
        tree.insert(&[0x03u8, 1][..], &[1u8][..])
            .expect("another entry");
        let log = HistoryLog::open(&tree, dir.path()).expect("open");
        assert_eq!(all(&log), vec![a.clone(), b.clone()]);
        assert_eq!(tree.scan_prefix([BLOCK_PREFIX]).count(), 0);
        assert_eq!(
            tree.get([0x03, 1]).expect("get").as_deref(),
            Some(&[1u8][..])
        );
        drop(log);
        let log = HistoryLog::open(&tree, dir.path()).expect("reopen");
        assert_eq!(all(&log), vec![a, b]);
    }
}
