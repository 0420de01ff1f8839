//! The current snapshot on disk (`snapshots/current.snap`): its meta and the key-space dump.
//!
//! Two writers exist: `build_snapshot` runs in its own task while `install_snapshot` runs in the
//! state-machine task. Each write goes to a temporary file of its own, is fsynced, and replaces
//! the current file only if it covers more of the log, all under one lock; so the current file
//! is always whole and never goes backwards.
//!
//! Must never: publish a partly written file; replace a snapshot with an older one.

use std::io;
use std::io::Write;
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

use crate::codec::decode;
use crate::codec::encode;
use crate::types::TypeConfig;

const CURRENT: &str = "current.snap";

/// A snapshot on disk: its meta and the key-space dump it was built from.
#[derive(Serialize, Deserialize)]
pub(crate) struct SnapshotFile {
    pub(crate) meta: SnapshotMetaOf<TypeConfig>,
    pub(crate) data: Vec<u8>,
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
        let bytes = encode(file)?;
        let sequence = self.temporary_sequence.fetch_add(1, Ordering::Relaxed);
        let temporary = self.dir.join(format!("{CURRENT}.{sequence}.tmp"));
        {
            let mut out = std::fs::File::create(&temporary)?;
            out.write_all(&bytes)?;
            out.sync_all()?;
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
