//! The history's entries packed into blocks, kept in the [`HistoryLog`]: one record holds many
//! history entries, so a persisted batch of applied writes writes a few blocks rather than one
//! record per version.
//!
//! A block's key is [`BLOCK_PREFIX`] followed by the history key of its first entry without
//! that key's prefix byte (its *suffix*: revision, then user key). Blocks never overlap: entries
//! are only ever added above every entry the log holds (checked by [`write`]), in new blocks,
//! so a block holds exactly the history entries from its own key up to the next block's key. To
//! find an entry, take the last block whose key is at or below the entry's; it holds the entry
//! or nothing does.
//!
//! A block is a run of entries in key order, each `suffix_len u32 LE | suffix | value_len u32 LE
//! | value`, cut after the entry that brings it to [`BLOCK_BYTES`]. A compaction cuts entries out
//! of the blocks holding them: the block is rewritten under the same key (still at or below
//! every entry it keeps and above the previous block's), or removed once empty.
//!
//! Why this size: blocks were first kept in sled, which splits a leaf beyond 16 entries
//! whatever their size and writes a page larger than a quarter of its 512 KiB segments to a file
//! of its own (a blob); 17 blocks of 6 KiB stayed far below that. In the log the size only sets
//! how much a read of one old version reads, and how much a compaction rewrites per cut block.
//!
//! Must never: put an entry below one the log holds; lose an entry a compaction did not name.

use std::io;

use super::HISTORY_PREFIX;
use super::history_log::BlockChanges;
use super::history_log::HistoryLog;
use super::invalid_data;

/// The keys of history blocks start with this byte (see the layout table in `mvcc`).
pub(super) const BLOCK_PREFIX: u8 = 0x05;

/// A block is cut once it holds this many bytes or more.
pub(super) const BLOCK_BYTES: usize = 6 * 1024;

/// A history key's part that its block key shares: everything after the prefix byte.
fn suffix(history_key: &[u8]) -> &[u8] {
    assert_eq!(
        history_key.first(),
        Some(&HISTORY_PREFIX),
        "a history key outside HISTORY_PREFIX"
    );
    &history_key[1..]
}

fn with_prefix(prefix: u8, suffix: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + suffix.len());
    key.push(prefix);
    key.extend_from_slice(suffix);
    key
}

fn push_field(block: &mut Vec<u8>, field: &[u8]) {
    let len = u32::try_from(field.len()).expect("a history entry field fits u32");
    block.extend_from_slice(&len.to_le_bytes());
    block.extend_from_slice(field);
}

fn push_entry(block: &mut Vec<u8>, suffix: &[u8], value: &[u8]) {
    push_field(block, suffix);
    push_field(block, value);
}

fn split_field(bytes: &[u8]) -> io::Result<(&[u8], &[u8])> {
    let damaged = || invalid_data("a history block is cut short".to_string());
    let (len, rest) = bytes.split_first_chunk::<4>().ok_or_else(damaged)?;
    let len = usize::try_from(u32::from_le_bytes(*len)).expect("u32 fits usize");
    if rest.len() < len {
        return Err(damaged());
    }
    Ok(rest.split_at(len))
}

/// The (suffix, value) entries of `block`, in key order.
fn entries(block: &[u8]) -> impl Iterator<Item = io::Result<(&[u8], &[u8])>> {
    let mut rest = block;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let entry = split_field(rest).and_then(|(suffix, after)| {
            let (value, after) = split_field(after)?;
            rest = after;
            Ok((suffix, value))
        });
        if entry.is_err() {
            rest = &[];
        }
        Some(entry)
    })
}

/// The suffix of the last entry of `block`; `None` for an empty block (never stored).
fn last_suffix(block: &[u8]) -> io::Result<Option<&[u8]>> {
    let mut last = None;
    for entry in entries(block) {
        last = Some(entry?.0);
    }
    Ok(last)
}

/// Packs history entries (history key, value), in ascending key order, into blocks: (block key,
/// block).
pub(super) fn pack<'e>(
    history: impl IntoIterator<Item = (&'e [u8], &'e [u8])>,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut blocks = Vec::new();
    let mut current: Option<(Vec<u8>, Vec<u8>)> = None;
    let mut last: Option<&[u8]> = None;
    for (history_key, value) in history {
        let suffix = suffix(history_key);
        assert!(
            last.is_none_or(|last| last < suffix),
            "history entries packed out of order"
        );
        last = Some(suffix);
        let (_, block) = current.get_or_insert_with(|| {
            (
                with_prefix(BLOCK_PREFIX, suffix),
                Vec::with_capacity(2 * BLOCK_BYTES),
            )
        });
        push_entry(block, suffix, value);
        if block.len() >= BLOCK_BYTES {
            blocks.extend(current.take());
        }
    }
    blocks.extend(current);
    blocks
}

/// The last block whose key is at or below `suffix`'s: the one that holds it, if any does.
fn block_of(log: &HistoryLog, suffix: &[u8]) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    log.block_at_or_below(&with_prefix(BLOCK_PREFIX, suffix))
}

/// Reads history entries from the log, keeping the last block it read: versions read in a row
/// (a dump's, a range's) are often in the same block.
#[derive(Default)]
pub(super) struct Reader {
    /// The last block read: its key, its last entry's suffix, and its bytes.
    last: Option<(Vec<u8>, Vec<u8>, Vec<u8>)>,
}

impl Reader {
    /// The value of the history entry `history_key`, if the log holds it.
    pub(super) fn get(
        &mut self,
        log: &HistoryLog,
        history_key: &[u8],
    ) -> io::Result<Option<Vec<u8>>> {
        let suffix = suffix(history_key);
        let cached = self.last.as_ref().is_some_and(|(key, last_suffix, _)| {
            &key[1..] <= suffix && suffix <= last_suffix.as_slice()
        });
        if !cached {
            self.last = None;
            let Some((key, block)) = block_of(log, suffix)? else {
                return Ok(None);
            };
            let last = last_suffix(&block)?.unwrap_or_default().to_vec();
            self.last = Some((key, last, block));
        }
        let (_, _, block) = self.last.as_ref().expect("read above");
        for entry in entries(block) {
            let (entry_suffix, value) = entry?;
            match entry_suffix.cmp(suffix) {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Equal => return Ok(Some(value.to_vec())),
                std::cmp::Ordering::Greater => break,
            }
        }
        Ok(None)
    }
}

/// Every history entry of the log as (history key, value), in key order.
pub(super) fn iter(
    log: &HistoryLog,
) -> impl Iterator<Item = io::Result<(Vec<u8>, Vec<u8>)>> + use<> {
    log.blocks().flat_map(|block| {
        let unpacked: io::Result<Vec<(Vec<u8>, Vec<u8>)>> = block.and_then(|(_, block)| {
            entries(&block)
                .map(|entry| {
                    let (suffix, value) = entry?;
                    Ok((with_prefix(HISTORY_PREFIX, suffix), value.to_vec()))
                })
                .collect()
        });
        match unpacked {
            Ok(history) => history.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(error) => vec![Err(error)],
        }
    })
}

/// The suffix of the newest entry the log holds.
fn newest_suffix(log: &HistoryLog) -> io::Result<Option<Vec<u8>>> {
    let Some((_, block)) = log.last_block()? else {
        return Ok(None);
    };
    Ok(last_suffix(&block)?.map(<[u8]>::to_vec))
}

/// The block changes (block key, `Some(block)` to write or `None` to remove) that make history
/// writes (history key, `Some(value)` to insert or `None` to remove, in ascending key order):
/// inserted entries in new blocks, removed ones cut out of the blocks holding them. An insert at
/// or below an entry the log holds is refused. A removed entry the log does not hold is no
/// change.
pub(super) fn write<'w>(
    log: &HistoryLog,
    writes: impl IntoIterator<Item = (&'w [u8], Option<&'w [u8]>)>,
) -> io::Result<BlockChanges> {
    let mut inserts = Vec::new();
    let mut removals = Vec::new();
    for (history_key, value) in writes {
        match value {
            Some(value) => inserts.push((history_key, value)),
            None => removals.push(suffix(history_key)),
        }
    }
    if let Some((first, _)) = inserts.first()
        && let Some(newest) = newest_suffix(log)?
        && newest.as_slice() >= suffix(first)
    {
        return Err(invalid_data(format!(
            "history entry {first:?} written at or below the newest one the log holds"
        )));
    }
    let mut rewritten = Vec::new();
    let mut at = 0;
    while at < removals.len() {
        let Some((block_key, block)) = block_of(log, removals[at])? else {
            at += 1;
            continue;
        };
        let next = log.next_block_key(&block_key);
        let end = at
            + removals[at..]
                .partition_point(|removal| next.as_ref().is_none_or(|next| *removal < &next[1..]));
        let mut cut = removals[at..end].iter().peekable();
        let mut kept = Vec::with_capacity(block.len());
        let mut changed = false;
        for entry in entries(&block) {
            let (suffix, value) = entry?;
            while cut.next_if(|removal| **removal < suffix).is_some() {}
            if cut.next_if(|removal| **removal == suffix).is_some() {
                changed = true;
            } else {
                push_entry(&mut kept, suffix, value);
            }
        }
        if changed {
            rewritten.push((block_key, kept));
        }
        at = end;
    }
    let mut changes: BlockChanges = rewritten
        .into_iter()
        .map(|(block_key, kept)| (block_key, Some(kept).filter(|kept| !kept.is_empty())))
        .collect();
    changes.extend(
        pack(inserts)
            .into_iter()
            .map(|(block_key, block)| (block_key, Some(block))),
    );
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A history log in a temporary folder, with the tree that names its persists.
    struct Fixture {
        dir: tempfile::TempDir,
        tree: sled::Tree,
        log: HistoryLog,
    }

    fn temporary_log() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::Config::new()
            .temporary(true)
            .open()
            .expect("open a temporary sled db");
        let tree = db.open_tree("keyspace").expect("open tree");
        let log = HistoryLog::open(&tree, dir.path()).expect("open the history log");
        Fixture { dir, tree, log }
    }

    /// History keys `0x04 revision user_key` for revisions `revisions`, one per revision, with a
    /// value of `value_bytes` bytes naming the revision.
    fn history(revisions: std::ops::Range<u64>, value_bytes: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        revisions
            .map(|revision| {
                let mut key = vec![HISTORY_PREFIX];
                key.extend_from_slice(&revision.to_be_bytes());
                key.extend_from_slice(b"key");
                let mut value = revision.to_le_bytes().to_vec();
                value.resize(value_bytes, 0xAB);
                (key, value)
            })
            .collect()
    }

    fn as_writes(entries: &[(Vec<u8>, Vec<u8>)]) -> Vec<(&[u8], Option<&[u8]>)> {
        entries
            .iter()
            .map(|(key, value)| (key.as_slice(), Some(value.as_slice())))
            .collect()
    }

    /// Writes `writes` as one persist does.
    fn write_all(fixture: &Fixture, writes: Vec<(&[u8], Option<&[u8]>)>) -> io::Result<()> {
        let changes = write(&fixture.log, writes)?;
        if let Some(staged) = fixture.log.stage(changes)? {
            let (key, value) = staged.sled_entry();
            fixture
                .tree
                .insert(key, &value[..])
                .map_err(super::super::sled_error)?;
            fixture.log.commit(staged);
        }
        Ok(())
    }

    fn stored(log: &HistoryLog) -> Vec<(Vec<u8>, Vec<u8>)> {
        iter(log).collect::<io::Result<_>>().expect("read history")
    }

    #[test]
    fn packed_entries_fill_blocks_of_the_block_size_and_each_is_found_in_its_block() {
        let fixture = temporary_log();
        let log = &fixture.log;
        let entries = history(2..402, 100);
        write_all(&fixture, as_writes(&entries)).expect("write");
        let block_lengths: Vec<usize> = log
            .blocks()
            .map(|block| block.expect("block").1.len())
            .collect();
        // 400 entries of 4 + 11 + 4 + 100 bytes: 52 per block, the last one partly full.
        assert_eq!(block_lengths.len(), 8, "{block_lengths:?}");
        let (last, full) = block_lengths.split_last().expect("blocks");
        assert!(
            full.iter()
                .all(|&len| (BLOCK_BYTES..BLOCK_BYTES + 120).contains(&len))
        );
        assert!(*last < BLOCK_BYTES);
        assert_eq!(stored(log), entries);

        let mut reader = Reader::default();
        // In order, then in reverse, so the kept block is both reused and replaced.
        for (key, value) in entries.iter().chain(entries.iter().rev()) {
            assert_eq!(reader.get(log, key).expect("get").as_ref(), Some(value));
        }
        // Absent: below every block, between two entries, above every entry.
        let (below, _) = &history(1..2, 0)[0];
        let mut between = entries[100].0.clone();
        between.push(0);
        let (above, _) = &history(402..403, 0)[0];
        for absent in [below, &between, above] {
            assert_eq!(reader.get(log, absent).expect("get"), None);
            assert_eq!(Reader::default().get(log, absent).expect("get"), None);
        }
    }

    #[test]
    fn removed_entries_are_cut_out_of_their_blocks_and_an_emptied_block_is_removed() {
        let fixture = temporary_log();
        let log = &fixture.log;
        let entries = history(2..402, 100);
        write_all(&fixture, as_writes(&entries)).expect("write");
        let blocks_before = log.block_count();
        // The whole first block (52 entries), every third entry after it, and an entry the log
        // never held.
        let (never_held, _) = &history(1000..1001, 0)[0];
        let removed: Vec<&[u8]> = entries
            .iter()
            .enumerate()
            .filter(|(index, _)| *index < 52 || index % 3 == 0)
            .map(|(_, (key, _))| key.as_slice())
            .chain([never_held.as_slice()])
            .collect();
        write_all(&fixture, removed.iter().map(|key| (*key, None)).collect()).expect("remove");

        let kept: Vec<(Vec<u8>, Vec<u8>)> = entries
            .iter()
            .enumerate()
            .filter(|(index, _)| !(*index < 52 || index % 3 == 0))
            .map(|(_, entry)| entry.clone())
            .collect();
        assert_eq!(stored(log), kept);
        assert_eq!(log.block_count(), blocks_before - 1);
        let mut reader = Reader::default();
        for (key, value) in &kept {
            assert_eq!(reader.get(log, key).expect("get").as_ref(), Some(value));
        }
        for key in removed {
            assert_eq!(reader.get(log, key).expect("get"), None);
        }
        // New entries still go above the kept ones, in a block of their own.
        let later = history(402..410, 100);
        write_all(&fixture, as_writes(&later)).expect("write later");
        assert_eq!(stored(log), [kept.clone(), later.clone()].concat());
        // And all of it reads back the same from the file.
        let Fixture { dir, tree, log } = fixture;
        drop(log);
        let log = HistoryLog::open(&tree, dir.path()).expect("reopen");
        assert_eq!(stored(&log), [kept, later].concat());
    }

    #[test]
    fn an_entry_at_or_below_the_newest_stored_one_is_refused_and_nothing_is_written() {
        let fixture = temporary_log();
        let entries = history(2..10, 100);
        write_all(&fixture, as_writes(&entries)).expect("write");
        let before = (stored(&fixture.log), fixture.log.bytes());
        for refused in [history(9..11, 100), history(5..6, 100)] {
            let error = write_all(&fixture, as_writes(&refused)).expect_err("refused");
            assert_eq!(error.kind(), io::ErrorKind::InvalidData);
            assert!(
                error.to_string().contains("at or below the newest"),
                "{error}"
            );
        }
        assert_eq!((stored(&fixture.log), fixture.log.bytes()), before);
    }

    #[test]
    fn a_damaged_block_is_an_error_not_a_shorter_history() {
        let fixture = temporary_log();
        write_all(&fixture, as_writes(&history(2..4, 100))).expect("write");
        let file = std::fs::read_dir(fixture.dir.path())
            .expect("list")
            .map(|entry| entry.expect("entry").path())
            .find(|path| path.extension().is_some_and(|extension| extension == "log"))
            .expect("the log file");
        let file = std::fs::File::options()
            .write(true)
            .open(file)
            .expect("open");
        use std::os::unix::fs::FileExt;
        file.write_all_at(&[0xEE], fixture.log.bytes() - 10)
            .expect("damage the block");
        let error = iter(&fixture.log).find_map(Result::err).expect("an error");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        let (last, _) = &history(3..4, 0)[0];
        assert!(Reader::default().get(&fixture.log, last).is_err());
    }
}
