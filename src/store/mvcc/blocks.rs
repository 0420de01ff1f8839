//! The history's entries in the tree, packed into blocks: one sled value holds many history
//! entries, so handing a batch of applied writes to sled inserts a few values rather than one
//! per version.
//!
//! A block's tree key is [`BLOCK_PREFIX`] followed by the history key of its first entry without
//! that key's prefix byte (its *suffix*: revision, then user key). Blocks never overlap: entries
//! are only ever added above every entry the tree holds (checked by [`write`]), in new blocks,
//! so a block holds exactly the history entries from its own key up to the next block's key. To
//! find an entry, take the last block whose key is at or below the entry's; it holds the entry
//! or nothing does.
//!
//! A block is a run of entries in key order, each `suffix_len u32 LE | suffix | value_len u32 LE
//! | value`, cut after the entry that brings it to [`BLOCK_BYTES`]. A compaction cuts entries out
//! of the blocks holding them: the block is rewritten under the same key (still at or below
//! every entry it keeps and above the previous block's), or removed once empty.
//!
//! Why this size: sled splits a leaf beyond 16 entries whatever their size, and writes a page
//! larger than a quarter of its 512 KiB segments to a file of its own (a blob). 17 blocks of
//! 6 KiB stay far below that.
//!
//! Must never: put an entry below one the tree holds; lose an entry a compaction did not name.

use std::collections::Bound;
use std::io;

use super::HISTORY_PREFIX;
use super::invalid_data;
use super::sled_error;

/// The tree keys of history blocks start with this byte (see the layout table in `mvcc`).
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

/// Packs history entries (history key, value), in ascending key order, into blocks: (tree key,
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
fn block_of(tree: &sled::Tree, suffix: &[u8]) -> io::Result<Option<(sled::IVec, sled::IVec)>> {
    tree.range(vec![BLOCK_PREFIX]..=with_prefix(BLOCK_PREFIX, suffix))
        .next_back()
        .transpose()
        .map_err(sled_error)
}

/// The key of the first block after the block keyed `block_key`.
fn next_block_key(tree: &sled::Tree, block_key: &[u8]) -> io::Result<Option<sled::IVec>> {
    let after = (
        Bound::Excluded(block_key.to_vec()),
        Bound::Excluded(vec![BLOCK_PREFIX + 1]),
    );
    let next = tree.range::<Vec<u8>, _>(after).next().transpose();
    Ok(next.map_err(sled_error)?.map(|(key, _)| key))
}

/// Reads history entries from the tree, keeping the last block it read: versions read in a row
/// (a dump's, a range's) are often in the same block.
#[derive(Default)]
pub(super) struct Reader {
    /// The last block read: its tree key, its last entry's suffix, and its bytes.
    last: Option<(sled::IVec, Vec<u8>, sled::IVec)>,
}

impl Reader {
    /// The value of the history entry `history_key`, if the tree holds it.
    pub(super) fn get(
        &mut self,
        tree: &sled::Tree,
        history_key: &[u8],
    ) -> io::Result<Option<Vec<u8>>> {
        let suffix = suffix(history_key);
        let cached = self.last.as_ref().is_some_and(|(key, last_suffix, _)| {
            &key[1..] <= suffix && suffix <= last_suffix.as_slice()
        });
        if !cached {
            self.last = None;
            let Some((key, block)) = block_of(tree, suffix)? else {
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

/// Every history entry of the tree as (history key, value), in key order.
pub(super) fn iter(tree: &sled::Tree) -> impl Iterator<Item = io::Result<(Vec<u8>, Vec<u8>)>> {
    tree.scan_prefix([BLOCK_PREFIX]).flat_map(|block| {
        let unpacked: io::Result<Vec<(Vec<u8>, Vec<u8>)>> =
            block.map_err(sled_error).and_then(|(_, block)| {
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

/// The suffix of the newest entry the tree holds.
fn newest_suffix(tree: &sled::Tree) -> io::Result<Option<Vec<u8>>> {
    let Some(last_block) = tree.scan_prefix([BLOCK_PREFIX]).next_back() else {
        return Ok(None);
    };
    let (_, block) = last_block.map_err(sled_error)?;
    Ok(last_suffix(&block)?.map(<[u8]>::to_vec))
}

/// Adds history writes (history key, `Some(value)` to insert or `None` to remove), in ascending
/// key order, to `batch`: inserted entries in new blocks, removed ones cut out of the blocks
/// holding them. An insert at or below an entry the tree holds is refused, before `batch` is
/// touched. A removed entry the tree does not hold is no change.
pub(super) fn write<'w>(
    tree: &sled::Tree,
    batch: &mut sled::Batch,
    writes: impl IntoIterator<Item = (&'w [u8], Option<&'w [u8]>)>,
) -> io::Result<()> {
    let mut inserts = Vec::new();
    let mut removals = Vec::new();
    for (history_key, value) in writes {
        match value {
            Some(value) => inserts.push((history_key, value)),
            None => removals.push(suffix(history_key)),
        }
    }
    if let Some((first, _)) = inserts.first()
        && let Some(newest) = newest_suffix(tree)?
        && newest.as_slice() >= suffix(first)
    {
        return Err(invalid_data(format!(
            "history entry {first:?} written at or below the newest one the tree holds"
        )));
    }
    let mut rewritten = Vec::new();
    let mut at = 0;
    while at < removals.len() {
        let Some((block_key, block)) = block_of(tree, removals[at])? else {
            at += 1;
            continue;
        };
        let next = next_block_key(tree, &block_key)?;
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
    for (block_key, kept) in rewritten {
        if kept.is_empty() {
            batch.remove(block_key);
        } else {
            batch.insert(block_key, kept);
        }
    }
    for (block_key, block) in pack(inserts) {
        batch.insert(block_key, block);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temporary_tree() -> sled::Tree {
        let db = sled::Config::new()
            .temporary(true)
            .open()
            .expect("open a temporary sled db");
        db.open_tree("history").expect("open tree")
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

    fn write_all(tree: &sled::Tree, writes: Vec<(&[u8], Option<&[u8]>)>) -> io::Result<()> {
        let mut batch = sled::Batch::default();
        write(tree, &mut batch, writes)?;
        tree.apply_batch(batch).map_err(sled_error)
    }

    fn stored(tree: &sled::Tree) -> Vec<(Vec<u8>, Vec<u8>)> {
        iter(tree).collect::<io::Result<_>>().expect("read history")
    }

    #[test]
    fn packed_entries_fill_blocks_of_the_block_size_and_each_is_found_in_its_block() {
        let tree = temporary_tree();
        let entries = history(2..402, 100);
        write_all(&tree, as_writes(&entries)).expect("write");
        let block_lengths: Vec<usize> = tree
            .scan_prefix([BLOCK_PREFIX])
            .values()
            .map(|block| block.expect("block").len())
            .collect();
        // 400 entries of 4 + 11 + 4 + 100 bytes: 52 per block, the last one partly full.
        assert_eq!(block_lengths.len(), 8, "{block_lengths:?}");
        let (last, full) = block_lengths.split_last().expect("blocks");
        assert!(
            full.iter()
                .all(|&len| (BLOCK_BYTES..BLOCK_BYTES + 120).contains(&len))
        );
        assert!(*last < BLOCK_BYTES);
        assert_eq!(stored(&tree), entries);

        let mut reader = Reader::default();
        // In order, then in reverse, so the kept block is both reused and replaced.
        for (key, value) in entries.iter().chain(entries.iter().rev()) {
            assert_eq!(reader.get(&tree, key).expect("get").as_ref(), Some(value));
        }
        // Absent: below every block, between two entries, above every entry.
        let (below, _) = &history(1..2, 0)[0];
        let mut between = entries[100].0.clone();
        between.push(0);
        let (above, _) = &history(402..403, 0)[0];
        for absent in [below, &between, above] {
            assert_eq!(reader.get(&tree, absent).expect("get"), None);
            assert_eq!(Reader::default().get(&tree, absent).expect("get"), None);
        }
    }

    #[test]
    fn removed_entries_are_cut_out_of_their_blocks_and_an_emptied_block_is_removed() {
        let tree = temporary_tree();
        let entries = history(2..402, 100);
        write_all(&tree, as_writes(&entries)).expect("write");
        let blocks_before = tree.scan_prefix([BLOCK_PREFIX]).count();
        // The whole first block (52 entries), every third entry after it, and an entry the tree
        // never held.
        let (never_held, _) = &history(1000..1001, 0)[0];
        let removed: Vec<&[u8]> = entries
            .iter()
            .enumerate()
            .filter(|(index, _)| *index < 52 || index % 3 == 0)
            .map(|(_, (key, _))| key.as_slice())
            .chain([never_held.as_slice()])
            .collect();
        write_all(&tree, removed.iter().map(|key| (*key, None)).collect()).expect("remove");

        let kept: Vec<(Vec<u8>, Vec<u8>)> = entries
            .iter()
            .enumerate()
            .filter(|(index, _)| !(*index < 52 || index % 3 == 0))
            .map(|(_, entry)| entry.clone())
            .collect();
        assert_eq!(stored(&tree), kept);
        assert_eq!(tree.scan_prefix([BLOCK_PREFIX]).count(), blocks_before - 1);
        let mut reader = Reader::default();
        for (key, value) in &kept {
            assert_eq!(reader.get(&tree, key).expect("get").as_ref(), Some(value));
        }
        for key in removed {
            assert_eq!(reader.get(&tree, key).expect("get"), None);
        }
        // New entries still go above the kept ones, in a block of their own.
        let later = history(402..410, 100);
        write_all(&tree, as_writes(&later)).expect("write later");
        assert_eq!(stored(&tree), [kept, later].concat());
    }

    #[test]
    fn an_entry_at_or_below_the_newest_stored_one_is_refused_and_nothing_is_written() {
        let tree = temporary_tree();
        let entries = history(2..10, 100);
        write_all(&tree, as_writes(&entries)).expect("write");
        let before: Vec<_> = tree.iter().collect::<Result<_, _>>().expect("read");
        for refused in [history(9..11, 100), history(5..6, 100)] {
            let mut batch = sled::Batch::default();
            let error = write(&tree, &mut batch, as_writes(&refused)).expect_err("refused");
            assert_eq!(error.kind(), io::ErrorKind::InvalidData);
            assert!(
                error.to_string().contains("at or below the newest"),
                "{error}"
            );
            tree.apply_batch(batch).expect("apply the untouched batch");
        }
        let after: Vec<_> = tree.iter().collect::<Result<_, _>>().expect("read");
        assert_eq!(after, before);
    }

    #[test]
    fn a_damaged_block_is_an_error_not_a_shorter_history() {
        let tree = temporary_tree();
        write_all(&tree, as_writes(&history(2..4, 100))).expect("write");
        let (key, block) = tree.iter().next().expect("a block").expect("read");
        tree.insert(key, &block[..block.len() - 1])
            .expect("cut the block");
        let error = iter(&tree).find_map(Result::err).expect("an error");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        let (last, _) = &history(3..4, 0)[0];
        assert!(Reader::default().get(&tree, last).is_err());
    }
}
