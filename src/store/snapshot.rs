//! What a Raft snapshot carries, and the snapshot files of earlier versions.
//!
//! The key space is the snapshot, as etcd's backend is: building one (every `--snapshot-count`
//! applied entries) only makes the key space durable at the snapshot's log id, and nothing is
//! encoded unless a follower needs it. A member's own snapshot is its key space frozen where the
//! state machine stands ([`SnapshotData::Frozen`]), encoded chunk by chunk while it is sent; a
//! snapshot received from the leader is the encoded dump ([`SnapshotData::Received`]).
//!
//! ```text
//! leader:   get_current_snapshot -> Frozen(dump) -> into_chunks: encode on a blocking thread,
//!           a few chunks ahead of the network -> InstallSnapshot stream
//! follower: chunks -> Received(bytes) -> install_snapshot -> KeySpace::restore (one batch)
//! ```
//!
//! Versions before this one kept `snapshots/current.snap` (the meta and the encoded dump, written
//! before the key space was restored from it); [`take_earlier_file`] reads it once, on open.
//!
//! Must never: send a dump that was not frozen at the meta's log id; hold a whole encoded dump in
//! memory to send it.

use std::io;
use std::path::Path;

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
    /// This member's key space at the snapshot's log id; while it lives, compaction waits.
    Frozen(FrozenDump),
    /// An encoded dump received from the leader.
    Received(Vec<u8>),
}

impl SnapshotData {
    /// The encoded dump, whole. Blocking for a frozen one: it reads the whole history.
    pub fn into_bytes(self) -> io::Result<Vec<u8>> {
        match self {
            SnapshotData::Frozen(dump) => dump.encode(),
            SnapshotData::Received(bytes) => Ok(bytes),
        }
    }

    /// The encoded dump in chunks of `chunk_bytes` (the last one shorter), produced on a
    /// blocking thread at most [`CHUNKS_AHEAD`] chunks ahead of the reader. An encoding error is
    /// the last item; dropping the receiver stops the encoding. Call inside a tokio runtime.
    pub fn into_chunks(self, chunk_bytes: usize) -> mpsc::Receiver<io::Result<Vec<u8>>> {
        assert!(chunk_bytes > 0, "a chunk holds at least one byte");
        let (sender, receiver) = mpsc::channel(CHUNKS_AHEAD);
        tokio::task::spawn_blocking(move || {
            let mut out = ChunkSender {
                chunk: Vec::with_capacity(chunk_bytes),
                chunk_bytes,
                sender,
            };
            let encoded = match self {
                SnapshotData::Frozen(dump) => dump.encode_to(&mut out),
                SnapshotData::Received(bytes) => io::Write::write_all(&mut out, &bytes),
            };
            // Also after an error: the reader learns why the chunks stopped (or is gone).
            let _ = match encoded.and_then(|()| out.finish()) {
                Ok(()) => Ok(()),
                Err(e) => out.sender.blocking_send(Err(e)),
            };
        });
        receiver
    }
}

/// Cuts what is written into chunks and hands each full one to the channel.
struct ChunkSender {
    chunk: Vec<u8>,
    chunk_bytes: usize,
    sender: mpsc::Sender<io::Result<Vec<u8>>>,
}

impl ChunkSender {
    fn send_chunk(&mut self) -> io::Result<()> {
        let full = std::mem::replace(&mut self.chunk, Vec::with_capacity(self.chunk_bytes));
        self.sender.blocking_send(Ok(full)).map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the snapshot's reader went away before its end",
            )
        })
    }

    /// Sends what is left, a last chunk shorter than the others.
    fn finish(&mut self) -> io::Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        self.send_chunk()
    }
}

impl io::Write for ChunkSender {
    fn write(&mut self, mut bytes: &[u8]) -> io::Result<usize> {
        let written = bytes.len();
        while !bytes.is_empty() {
            let room = self.chunk_bytes - self.chunk.len();
            let (now, later) = bytes.split_at(room.min(bytes.len()));
            self.chunk.extend_from_slice(now);
            bytes = later;
            if self.chunk.len() == self.chunk_bytes {
                self.send_chunk()?;
            }
        }
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

const EARLIER_FOLDER: &str = "snapshots";
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
    match std::fs::read(data_dir.join(EARLIER_FOLDER).join(EARLIER_FILE)) {
        Ok(bytes) => Ok(Some(decode(&bytes)?)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes the snapshot folder of an earlier version (the file and any unfinished temporary
/// files). Call only once the key space holds at least what the file held, durably.
pub(crate) fn remove_earlier_files(data_dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(data_dir.join(EARLIER_FOLDER)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(mut chunks: mpsc::Receiver<io::Result<Vec<u8>>>) -> Vec<io::Result<Vec<u8>>> {
        let mut all = Vec::new();
        while let Some(chunk) = chunks.recv().await {
            all.push(chunk);
        }
        all
    }

    #[tokio::test]
    async fn chunks_are_full_but_the_last_and_join_to_the_bytes() {
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        for chunk_bytes in [1, 7, 4096, 10_000, 20_000] {
            let chunks =
                collect(SnapshotData::Received(bytes.clone()).into_chunks(chunk_bytes)).await;
            let chunks: Vec<Vec<u8>> = chunks.into_iter().map(|c| c.expect("chunk")).collect();
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
    async fn a_frozen_dump_sent_in_chunks_is_the_dump_encoded_whole() {
        let dir = tempfile::tempdir().expect("dir");
        let keyspace = std::sync::Arc::new(super::super::open_keyspace(dir.path()).expect("open"));
        super::super::mvcc::tests::put_numbered_keys(&keyspace, 300);
        let whole = keyspace
            .freeze_dump()
            .expect("freeze")
            .encode()
            .expect("encode");
        let frozen = SnapshotData::Frozen(keyspace.freeze_dump().expect("freeze"));
        let chunks = collect(frozen.into_chunks(1000)).await;
        assert!(chunks.len() > 3, "the dump spans several chunks");
        let joined: Vec<u8> = chunks
            .into_iter()
            .map(|c| c.expect("chunk"))
            .collect::<Vec<_>>()
            .concat();
        assert_eq!(joined, whole);
    }

    #[tokio::test]
    async fn a_reader_that_goes_away_stops_the_encoding_and_releases_the_dump() {
        let dir = tempfile::tempdir().expect("dir");
        let keyspace = std::sync::Arc::new(super::super::open_keyspace(dir.path()).expect("open"));
        super::super::mvcc::tests::put_numbered_keys(&keyspace, 300);
        let mut chunks =
            SnapshotData::Frozen(keyspace.freeze_dump().expect("freeze")).into_chunks(100);
        chunks
            .recv()
            .await
            .expect("a first chunk")
            .expect("encoded");
        drop(chunks);
        // New versions of every key, so a compaction has old ones to remove from the tree; it
        // waits for every frozen dump first, so it returns only once the encoding stopped.
        super::super::mvcc::tests::put_numbered_keys(&keyspace, 300);
        let compaction =
            std::thread::spawn(move || super::super::mvcc::tests::compact_all(&keyspace));
        let started = std::time::Instant::now();
        while !compaction.is_finished() && started.elapsed() < std::time::Duration::from_secs(10) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(
            compaction.is_finished(),
            "the frozen dump was never released"
        );
    }
}
