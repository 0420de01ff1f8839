//! What a Raft snapshot carries, and the snapshot files of earlier versions.
//!
//! The key space is the snapshot, as etcd's backend is: building one (every `--snapshot-count`
//! applied entries) only makes the key space durable at the snapshot's log id, and nothing is
//! encoded unless a follower needs it. A member's own snapshot is its key space frozen where the
//! state machine stands ([`SnapshotData::Frozen`]); a snapshot received from the leader is the
//! encoded dump ([`SnapshotData::Received`]).
//!
//! ```text
//! leader:   get_current_snapshot -> Frozen(dump) -> into_chunks: encode to an unnamed file in
//!           `snapshots/`, drop the dump, read the file back in chunks -> InstallSnapshot stream
//! follower: chunks -> Received(bytes) -> install_snapshot -> KeySpace::restore (one batch)
//! ```
//!
//! The encoding goes to a file first, not straight to the network: while a dump lives, a
//! compaction's removals wait, and they wait in the state-machine task, so a dump must live as
//! long as a local encoding takes, never as long as a slow follower takes to receive it.
//!
//! Versions before this one kept `snapshots/current.snap` (the meta and the encoded dump, written
//! before the key space was restored from it); [`take_earlier_file`] reads it once, on open, and
//! [`clear_snapshot_folder`] then empties the folder.
//!
//! Must never: send a dump that was not frozen at the meta's log id; hold a frozen dump while the
//! network sends it; hold a whole encoded dump in memory to send it.

use std::io;
use std::io::Read;
use std::io::Seek;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use openraft::alias::SnapshotMetaOf;
use serde::Deserialize;
use tokio::sync::mpsc;

use super::mvcc::FrozenDump;
use crate::codec::decode;
use crate::types::TypeConfig;

/// Encoded chunks waiting for the network, at most: bounds the memory a send holds.
const CHUNKS_AHEAD: usize = 4;

/// A snapshot's data: see the module documentation.
pub enum SnapshotData {
    /// This member's key space at the snapshot's log id, and the folder its encoding goes to
    /// before it is sent; while the dump lives, compaction waits.
    Frozen {
        dump: FrozenDump,
        spill_folder: PathBuf,
    },
    /// An encoded dump received from the leader.
    Received(Vec<u8>),
}

impl SnapshotData {
    /// The encoded dump, whole. Blocking for a frozen one: it reads the whole history.
    pub fn into_bytes(self) -> io::Result<Vec<u8>> {
        match self {
            SnapshotData::Frozen { dump, .. } => dump.encode(),
            SnapshotData::Received(bytes) => Ok(bytes),
        }
    }

    /// The encoded dump in chunks of `chunk_bytes` (the last one shorter), read on a blocking
    /// thread at most [`CHUNKS_AHEAD`] chunks ahead of the reader. A frozen dump is encoded to
    /// an unnamed file and dropped before this returns. A read error is the last item; dropping
    /// the receiver stops the reading.
    pub async fn into_chunks(
        self,
        chunk_bytes: usize,
    ) -> io::Result<mpsc::Receiver<io::Result<Vec<u8>>>> {
        assert!(chunk_bytes > 0, "a chunk holds at least one byte");
        let mut source: Box<dyn Read + Send> = match self {
            SnapshotData::Frozen { dump, spill_folder } => {
                let file = tokio::task::spawn_blocking(move || spill(dump, &spill_folder))
                    .await
                    .map_err(io::Error::other)??;
                Box::new(file)
            }
            SnapshotData::Received(bytes) => Box::new(io::Cursor::new(bytes)),
        };
        let (sender, receiver) = mpsc::channel(CHUNKS_AHEAD);
        tokio::task::spawn_blocking(move || {
            loop {
                let mut chunk = Vec::with_capacity(chunk_bytes);
                let read = (&mut source)
                    .take(chunk_bytes as u64)
                    .read_to_end(&mut chunk);
                let last = match read {
                    Ok(0) => return,
                    Ok(length) => length < chunk_bytes,
                    Err(e) => {
                        let _ = sender.blocking_send(Err(e));
                        return;
                    }
                };
                if sender.blocking_send(Ok(chunk)).is_err() || last {
                    return;
                }
            }
        });
        Ok(receiver)
    }
}

/// Names of the files a send encodes to: unique within this process; the folder is emptied when
/// the data dir is opened.
static SPILL_SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// Encodes `dump` to a file in `folder` that has no name (removed at once: the space goes back
/// when it is closed, also after a crash), drops the dump, and returns the file at its start.
fn spill(dump: FrozenDump, folder: &Path) -> io::Result<std::fs::File> {
    std::fs::create_dir_all(folder)?;
    let sequence = SPILL_SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let path = folder.join(format!("send.{sequence}.tmp"));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    let mut out = io::BufWriter::new(file);
    dump.encode_to(&mut out)?;
    drop(dump);
    let mut file = out.into_inner().map_err(|e| e.into_error())?;
    file.rewind()?;
    Ok(file)
}

const FOLDER: &str = "snapshots";
const EARLIER_FILE: &str = "current.snap";

/// A snapshot file as versions before this one wrote it.
#[derive(Deserialize)]
pub(crate) struct EarlierSnapshotFile {
    pub(crate) meta: SnapshotMetaOf<TypeConfig>,
    pub(crate) data: Vec<u8>,
}

/// The snapshot file an earlier version left in `data_dir`, if any. Blocking. The caller
/// installs it if it is ahead of the key space (a crash came between writing it and restoring
/// from it), then removes it with [`remove_earlier_files`].
pub(crate) fn take_earlier_file(data_dir: &Path) -> io::Result<Option<EarlierSnapshotFile>> {
    match std::fs::read(data_dir.join(FOLDER).join(EARLIER_FILE)) {
        Ok(bytes) => Ok(Some(decode(&bytes)?)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The folder for snapshot files in `data_dir`: an earlier version's current snapshot, and the
/// unnamed files sends encode to.
pub(crate) fn snapshot_folder(data_dir: &Path) -> PathBuf {
    data_dir.join(FOLDER)
}

/// Removes the snapshot folder (an earlier version's file, leftovers of sends a crash
/// interrupted). Call on open, once the key space holds at least what an earlier file held.
pub(crate) fn clear_snapshot_folder(data_dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(data_dir.join(FOLDER)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(mut chunks: mpsc::Receiver<io::Result<Vec<u8>>>) -> Vec<Vec<u8>> {
        let mut all = Vec::new();
        while let Some(chunk) = chunks.recv().await {
            all.push(chunk.expect("chunk"));
        }
        all
    }

    fn keyspace_with_keys(dir: &Path) -> std::sync::Arc<super::super::mvcc::KeySpace> {
        let keyspace = std::sync::Arc::new(super::super::open_keyspace(dir).expect("open"));
        super::super::mvcc::tests::put_numbered_keys(&keyspace, 300);
        keyspace
    }

    #[tokio::test]
    async fn chunks_are_full_but_the_last_and_join_to_the_bytes() {
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        for chunk_bytes in [1, 7, 4096, 10_000, 20_000] {
            let received = SnapshotData::Received(bytes.clone());
            let chunks = collect(received.into_chunks(chunk_bytes).await.expect("chunks")).await;
            assert_eq!(chunks.concat(), bytes, "chunk size {chunk_bytes}");
            let (last, full) = chunks.split_last().expect("a chunk");
            assert!(
                full.iter().all(|c| c.len() == chunk_bytes),
                "chunk size {chunk_bytes}"
            );
            assert!(
                !last.is_empty() && last.len() <= chunk_bytes,
                "chunk size {chunk_bytes}"
            );
        }
    }

    #[tokio::test]
    async fn a_frozen_dump_sent_in_chunks_is_the_dump_encoded_whole_and_leaves_no_file() {
        let dir = tempfile::tempdir().expect("dir");
        let keyspace = keyspace_with_keys(dir.path());
        let whole = keyspace
            .freeze_dump()
            .expect("freeze")
            .encode()
            .expect("encode");
        let spill_folder = snapshot_folder(dir.path());
        let frozen = SnapshotData::Frozen {
            dump: keyspace.freeze_dump().expect("freeze"),
            spill_folder: spill_folder.clone(),
        };
        let chunks = collect(frozen.into_chunks(1000).await.expect("chunks")).await;
        assert!(chunks.len() > 3, "the dump spans several chunks");
        assert_eq!(chunks.concat(), whole);
        let left: Vec<_> = std::fs::read_dir(&spill_folder).expect("folder").collect();
        assert!(left.is_empty(), "the encoding's file has no name: {left:?}");
    }

    #[tokio::test]
    async fn a_frozen_dump_is_released_before_its_chunks_are_read() {
        let dir = tempfile::tempdir().expect("dir");
        let keyspace = keyspace_with_keys(dir.path());
        let frozen = SnapshotData::Frozen {
            dump: keyspace.freeze_dump().expect("freeze"),
            spill_folder: snapshot_folder(dir.path()),
        };
        // A follower that takes no chunk yet: the send holds its receiver, unread.
        let _unread = frozen.into_chunks(100).await.expect("chunks");
        // New versions of every key, so a compaction has old ones to remove from the tree; it
        // waits for every frozen dump, so it finishes only if the send no longer holds one.
        super::super::mvcc::tests::put_numbered_keys(&keyspace, 300);
        let compaction =
            std::thread::spawn(move || super::super::mvcc::tests::compact_all(&keyspace));
        let started = std::time::Instant::now();
        while !compaction.is_finished() && started.elapsed() < std::time::Duration::from_secs(10) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(
            compaction.is_finished(),
            "the send still holds the frozen dump"
        );
    }
}
