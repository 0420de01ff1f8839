//! The current snapshot on disk (`snapshots/current.snap`): its meta and the key-space dump.
//!
//! Two writers exist: `build_snapshot` runs in its own task while `install_snapshot` runs in the
//! state-machine task. Each write goes to a temporary file of its own, is fsynced, and replaces
//! the current file only if it covers more of the log, all under one lock; so the current file
//! is always whole and never goes backwards.
//!
//! Must never: publish a partly written file; replace a snapshot with an older one.

use std::io;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use openraft::alias::LogIdOf;
use openraft::alias::SnapshotMetaOf;
use serde::Deserialize;
use serde::Serialize;

use crate::codec::Bytes;
use crate::codec::decode;
use crate::codec::encode_to_writer;
use crate::types::TypeConfig;

const CURRENT: &str = "current.snap";

/// A snapshot on disk: its meta and the key-space dump it was built from.
#[derive(Serialize, Deserialize)]
pub(crate) struct SnapshotFile {
    pub(crate) meta: SnapshotMetaOf<TypeConfig>,
    pub(crate) data: Vec<u8>,
}

impl SnapshotFile {
    /// Encodes exactly as the file itself, with the data written at once.
    fn borrowed(&self) -> SnapshotFileRef<'_> {
        SnapshotFileRef {
            meta: &self.meta,
            data: Bytes(&self.data),
        }
    }
}

#[derive(Serialize)]
struct SnapshotFileRef<'a> {
    meta: &'a SnapshotMetaOf<TypeConfig>,
    data: Bytes<'a>,
}

/// Handle to the snapshot folder; clones share the lock.
#[derive(Clone)]
pub(crate) struct SnapshotFiles {
    dir: PathBuf,
    /// The last log id the current file covers; the lock also serialises replacements.
    current: Arc<Mutex<Option<LogIdOf<TypeConfig>>>>,
    temporary_sequence: Arc<AtomicU64>,
}

impl SnapshotFiles {
    pub(crate) fn open(dir: PathBuf) -> io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        // Leftovers of writes a crash interrupted: never published, safe to drop.
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                std::fs::remove_file(path)?;
            }
        }
        let current = read(&dir)?.and_then(|file| file.meta.last_log_id);
        Ok(SnapshotFiles {
            dir,
            current: Arc::new(Mutex::new(current)),
            temporary_sequence: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Makes `file` the current snapshot unless the current one already covers as much of the
    /// log. Blocking: call from a blocking task. Returns whether it replaced the current file.
    pub(crate) fn save(&self, file: &SnapshotFile) -> io::Result<bool> {
        let sequence = self.temporary_sequence.fetch_add(1, Ordering::Relaxed);
        let temporary = self.dir.join(format!("{CURRENT}.{sequence}.tmp"));
        {
            // Written straight to the file: the data is not copied into a second buffer.
            let mut out = io::BufWriter::new(std::fs::File::create(&temporary)?);
            encode_to_writer(&file.borrowed(), &mut out)?;
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        }
        let mut current = self.current.lock().expect("snapshot file lock");
        if *current >= file.meta.last_log_id && current.is_some() {
            std::fs::remove_file(&temporary)?;
            return Ok(false);
        }
        std::fs::rename(&temporary, self.dir.join(CURRENT))?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        *current = file.meta.last_log_id;
        Ok(true)
    }

    /// The current snapshot, if any. Blocking.
    pub(crate) fn load(&self) -> io::Result<Option<SnapshotFile>> {
        let _current = self.current.lock().expect("snapshot file lock");
        read(&self.dir)
    }
}

fn read(dir: &Path) -> io::Result<Option<SnapshotFile>> {
    match std::fs::read(dir.join(CURRENT)) {
        Ok(bytes) => Ok(Some(decode(&bytes)?)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use openraft::StoredMembership;
    use openraft::vote::RaftLeaderId;

    use super::*;
    use crate::codec::encode;

    #[test]
    fn a_saved_file_holds_the_encoded_snapshot_and_loads_back() {
        let dir = tempfile::tempdir().expect("dir");
        let snapshots = SnapshotFiles::open(dir.path().to_path_buf()).expect("open");
        let file = SnapshotFile {
            meta: SnapshotMetaOf::<TypeConfig> {
                last_log_id: Some(LogIdOf::<TypeConfig>::new(
                    openraft::alias::CommittedLeaderIdOf::<TypeConfig>::new(2, 1),
                    7,
                )),
                last_membership: StoredMembership::default(),
            },
            data: (0..100_000u32).map(|i| (i % 253) as u8).collect(),
        };
        assert!(snapshots.save(&file).expect("save"));
        assert_eq!(
            std::fs::read(dir.path().join(CURRENT)).expect("read"),
            encode(&file).expect("encode")
        );
        let loaded = snapshots.load().expect("load").expect("a snapshot");
        assert_eq!((loaded.meta, loaded.data), (file.meta, file.data));
    }
}
