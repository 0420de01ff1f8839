//! Backups: a consistent copy of the key space as one file (what Maintenance.Snapshot streams and
//! `quorumdb snapshot save` writes), and seeding a new member's data directory from one
//! (`quorumdb snapshot restore`, etcdutl's job in etcd).
//!
//! ```text
//! file = body | SHA-256(body) (32 bytes)
//! body = MAGIC (16 bytes) | payload length (u64 BE) | payload | zeros up to a multiple of 512
//! payload = bincode(Backup { format, revision, compact_revision, entries })
//! entries = every data, history and meta entry of the key space tree; never the Raft state
//!           (applied log id, membership) or client sessions: a restore starts a new cluster
//! ```
//!
//! The padding and trailer follow etcd's snapshot stream, whose clients (etcdctl `snapshot save`)
//! check that the size is a multiple of 512 plus a SHA-256 of everything before it.
//!
//! Must never: restore into a directory that already holds data; accept a file whose checksum
//! does not match (nothing is written then).

use std::io;
use std::path::Path;

use serde::Deserialize;
use serde::Serialize;
use sha2::Digest;
use sha2::Sha256;

use super::codec::sled_error;
use super::mvcc::EXTRA_PREFIX;
use super::mvcc::KeySpace;
use crate::codec::decode;
use crate::codec::encode;

/// First bytes of every backup file.
pub const MAGIC: &[u8; 16] = b"QUORUMDB-BACKUP\n";
const FORMAT: u32 = 1;
const CHECKSUM_BYTES: usize = 32;
/// The body is padded to a multiple of this, as etcd's snapshot (a bbolt file of 512-byte
/// aligned pages) is; etcdctl checks it.
const BODY_ALIGN_BYTES: usize = 512;
const LENGTH_BYTES: usize = 8;

#[derive(Debug, Serialize, Deserialize)]
struct Backup {
    format: u32,
    revision: i64,
    compact_revision: i64,
    entries: Vec<(Vec<u8>, Vec<u8>)>,
}

/// What a backup holds, as read from its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupSummary {
    pub revision: i64,
    pub compact_revision: i64,
    pub entries: usize,
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// The backup file of `keyspace`'s current state (consistent: one read under its gate).
pub(crate) fn take(keyspace: &KeySpace) -> io::Result<(Vec<u8>, BackupSummary)> {
    // The revisions are read with the entries (an apply between them would make a backup whose
    // header disagrees with its entries); check_entries re-derives them on restore.
    let dump = keyspace.dump_with_revisions()?;
    let entries: Vec<(Vec<u8>, Vec<u8>)> = dump
        .entries
        .into_iter()
        .filter(|(key, _)| key.first() != Some(&EXTRA_PREFIX))
        .collect();
    let backup = Backup {
        format: FORMAT,
        revision: dump.revision,
        compact_revision: dump.compact_revision,
        entries,
    };
    let summary = BackupSummary {
        revision: backup.revision,
        compact_revision: backup.compact_revision,
        entries: backup.entries.len(),
    };
    let payload = encode(&backup)?;
    let mut file = MAGIC.to_vec();
    file.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    file.extend_from_slice(&payload);
    file.resize(file.len().div_ceil(BODY_ALIGN_BYTES) * BODY_ALIGN_BYTES, 0);
    let checksum = Sha256::digest(&file);
    file.extend_from_slice(&checksum);
    Ok((file, summary))
}

/// Checks `file`'s magic and checksum and decodes it.
fn open(file: &[u8]) -> io::Result<Backup> {
    if file.len() < MAGIC.len() + LENGTH_BYTES + CHECKSUM_BYTES || &file[..MAGIC.len()] != MAGIC {
        return Err(invalid(
            "not a QuorumDB backup (the file does not start with its magic)",
        ));
    }
    let (body, checksum) = file.split_at(file.len() - CHECKSUM_BYTES);
    if Sha256::digest(body).as_slice() != checksum {
        return Err(invalid(
            "the backup's SHA-256 checksum does not match: the file is damaged or truncated",
        ));
    }
    let rest = &body[MAGIC.len()..];
    let length = u64::from_be_bytes(rest[..LENGTH_BYTES].try_into().expect("8 bytes")) as usize;
    let payload = rest[LENGTH_BYTES..]
        .get(..length)
        .ok_or_else(|| invalid("the backup's payload is shorter than its header says"))?;
    let backup: Backup = decode(payload)?;
    if backup.format != FORMAT {
        return Err(invalid(format!(
            "backup format {} is not the one this version reads ({FORMAT})",
            backup.format
        )));
    }
    Ok(backup)
}

/// Checks a backup file and tells what it holds, with its SHA-256 (hex).
pub fn inspect(file: &[u8]) -> io::Result<(BackupSummary, String)> {
    let backup = open(file)?;
    let checksum = &file[file.len() - CHECKSUM_BYTES..];
    Ok((
        BackupSummary {
            revision: backup.revision,
            compact_revision: backup.compact_revision,
            entries: backup.entries.len(),
        },
        checksum.iter().map(|byte| format!("{byte:02x}")).collect(),
    ))
}

/// Writes `file`'s key space into a new data directory `data_dir` (which must not hold data):
/// a node started on it with a new `--initial-cluster` serves that data from its first start.
pub fn restore(file: &[u8], data_dir: &Path) -> io::Result<BackupSummary> {
    let backup = open(file)?;
    if data_dir.exists() && std::fs::read_dir(data_dir)?.next().is_some() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} already holds data: restore into a new directory",
                data_dir.display()
            ),
        ));
    }
    std::fs::create_dir_all(data_dir)?;
    let db = sled::Config::new()
        .path(data_dir.join("db"))
        .open()
        .map_err(sled_error)?;
    let keyspace = KeySpace::open(
        db.open_tree("keyspace").map_err(sled_error)?,
        &super::history_dir(data_dir),
    )?;
    let summary = BackupSummary {
        revision: backup.revision,
        compact_revision: backup.compact_revision,
        entries: backup.entries.len(),
    };
    keyspace.restore(backup.entries)?;
    if keyspace.revision() != summary.revision
        || keyspace.compact_revision() != summary.compact_revision
    {
        return Err(invalid(
            "the backup's revisions disagree with its entries; nothing usable was restored",
        ));
    }
    db.flush().map_err(sled_error)?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Command;
    use crate::types::PutOp;
    use crate::types::RangeOp;

    fn keyspace(dir: &Path) -> KeySpace {
        // A restore just dropped its handle on this database: wait for sled to release it.
        let db = crate::store::mvcc::tests::open_when_released(&dir.join("db"));
        KeySpace::open(
            db.open_tree("keyspace").expect("tree"),
            &crate::store::history_dir(dir),
        )
        .expect("keyspace")
    }

    fn put(keyspace: &KeySpace, key: &str) {
        let command = Command::Put(PutOp {
            key: key.into(),
            value: b"v".to_vec(),
            ..Default::default()
        });
        keyspace
            .apply(
                &[Some(&command)],
                vec![(vec![EXTRA_PREFIX, b'x'], Some(vec![1]))],
            )
            .expect("apply");
    }

    #[test]
    fn a_backup_taken_while_writes_apply_has_the_revision_of_its_entries() {
        let dir = tempfile::tempdir().expect("dir");
        let keyspace = std::sync::Arc::new(keyspace(dir.path()));
        let writer = {
            let keyspace = keyspace.clone();
            std::thread::spawn(move || {
                for i in 0..3000 {
                    put(&keyspace, &format!("k{}", i % 50));
                }
            })
        };
        let mut backups = 0;
        while !writer.is_finished() || backups == 0 {
            let (file, summary) = take(&keyspace).expect("take");
            let backup = open(&file).expect("open");
            let revision_entry = backup
                .entries
                .iter()
                .find(|(key, _)| key.as_slice() == b"\x00revision")
                .map(|(_, value)| i64::from_be_bytes(value.as_slice().try_into().expect("8")));
            assert_eq!(
                revision_entry.unwrap_or(1),
                summary.revision,
                "backup {backups}"
            );
            backups += 1;
        }
        writer.join().expect("writer");
        keyspace.persist().expect("persist");
    }

    #[test]
    fn a_backup_restores_the_data_and_revisions_but_no_raft_state() {
        let source_dir = tempfile::tempdir().expect("dir");
        let source = keyspace(source_dir.path());
        put(&source, "a");
        put(&source, "b");
        let (file, summary) = take(&source).expect("take");
        assert_eq!(summary.revision, 3);

        let target_dir = tempfile::tempdir().expect("dir");
        let data_dir = target_dir.path().join("restored");
        assert_eq!(restore(&file, &data_dir).expect("restore"), summary);
        let restored = keyspace(&data_dir);
        assert_eq!(restored.revision(), 3);
        let (all, _) = restored
            .range(&RangeOp {
                key: b"a".to_vec(),
                range_end: b"z".to_vec(),
                ..Default::default()
            })
            .expect("range");
        assert_eq!(all.count, 2);
        assert_eq!(
            restored.get_extra(&[EXTRA_PREFIX, b'x']).expect("get"),
            None
        );
        assert!(
            restore(&file, &data_dir).is_err(),
            "a directory with data is refused"
        );
    }

    #[test]
    fn a_damaged_backup_is_refused_and_nothing_is_written() {
        let source_dir = tempfile::tempdir().expect("dir");
        let source = keyspace(source_dir.path());
        put(&source, "a");
        let (mut file, _) = take(&source).expect("take");
        let middle = file.len() / 2;
        file[middle] ^= 0xff;
        let target_dir = tempfile::tempdir().expect("dir");
        let data_dir = target_dir.path().join("restored");
        let error = restore(&file, &data_dir).expect_err("damaged");
        assert!(error.to_string().contains("checksum"), "{error}");
        assert!(!data_dir.exists(), "nothing written");
        assert!(restore(b"not a backup", &data_dir).is_err());
    }
}
