//! The Raft log's files: an append-only write-ahead log of numbered records, in segments.
//!
//! The folder holds segment files named after the index of their first record
//! (`00000000000000000001.wal`), plus small checked files for values that are replaced whole
//! (the vote, the purge point; see [`write_replaced`]). A record on disk is
//!
//! ```text
//! len u32 LE | crc u32 LE | index u64 LE | payload (len bytes)      crc: CRC-32C of index ++ payload
//! ```
//!
//! Writes go to the end of the newest segment with `pwrite`; nothing is durable until
//! [`Wal::dirty_files`] have been synced (`fdatasync`), which the caller does outside its lock so
//! that one sync covers every append made meanwhile (group commit).
//!
//! The newest segment is zero-filled ahead of its last record ([`PREALLOCATE_BYTES`] at a time),
//! so most appends overwrite blocks the file already has: the file's size and block map do not
//! change, and `fdatasync` writes the data alone. An append that grows the file makes ext4
//! (without a journal, as on our machines) also write the inode and wait for it, a second disk
//! round trip: a sync of a 400-byte append took 140-195 us at the file's end against 90-123 us
//! inside zeroed space (`bench/results/2026-12-04-wal-preallocation.md`). A zero tail is free
//! space, not a record: reading stops at it. A segment loses its zero tail when the next one
//! starts; a crash in between leaves one, which opening accepts only if the next segment starts
//! right after the last record (zeros in place of records there are damage).
//!
//! Opening reads every segment and checks each record's checksum and index: records must run on
//! without a gap across segments. A short or damaged record at the very end of the newest segment
//! is a write that a crash cut off. It was never acknowledged (acknowledgements follow the sync),
//! so it is cut off the file. Damage anywhere else means lost acknowledged data: opening fails
//! and says where.
//!
//! Must never: acknowledge a record before the sync that covers it; leave a hole between records.

use std::collections::VecDeque;
use std::fs::File;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

use super::codec::Crc32c;

const HEADER_BYTES: usize = 16;
const SEGMENT_SUFFIX: &str = ".wal";

/// A record larger than this is damage, not data (requests are limited far below it).
const RECORD_BYTES_MAX: usize = 1 << 30;

/// Zeros written ahead of the newest segment's last record whenever an append reaches past them
/// (at most one segment's worth): one append per this many bytes grows the file.
const PREALLOCATE_BYTES: u64 = 1 << 20;

/// The zeros written ahead, never changed: in the zero-initialised data segment, so no append
/// allocates and clears a buffer for them (that was 1.4% of member CPU at put-1000, in the Raft
/// core's task), and untouched pages cost no memory.
static ZEROS: [u8; PREALLOCATE_BYTES as usize] = [0; PREALLOCATE_BYTES as usize];

pub(crate) fn checksum(index: u64, payload: &[u8]) -> u32 {
    let mut crc = Crc32c::default();
    crc.update(&index.to_le_bytes());
    crc.update(payload);
    crc.finish()
}

fn segment_name(first: u64) -> String {
    format!("{first:020}{SEGMENT_SUFFIX}")
}

struct Segment {
    first: u64,
    path: PathBuf,
    file: Arc<File>,
    /// Where its records end.
    len: u64,
    /// The file's length: records, then zeros from `len` on.
    allocated: u64,
}

/// Where one record lies in its segment.
#[derive(Clone, Copy)]
struct Location {
    offset: u64,
    len: u32,
}

pub(crate) struct Wal {
    dir: PathBuf,
    segment_bytes_max: u64,
    /// In index order; the last one is written to.
    segments: Vec<Segment>,
    /// `locations[i]` is record `first + i`.
    locations: VecDeque<Location>,
    first: u64,
    /// Files written since [`Wal::dirty_files`] last took them.
    dirty: Vec<Arc<File>>,
}

impl Wal {
    /// Opens the log in `dir` (created when missing). Records at or below `purged` are ignored,
    /// and segments holding nothing else are deleted: a purge may have been cut off by a crash.
    pub(crate) fn open(dir: &Path, segment_bytes_max: u64, purged: Option<u64>) -> io::Result<Wal> {
        std::fs::create_dir_all(dir)?;
        let mut firsts = Vec::new();
        for item in std::fs::read_dir(dir)? {
            let name = item?.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(stem) = name.strip_suffix(SEGMENT_SUFFIX) {
                let first: u64 = stem
                    .parse()
                    .map_err(|_| damaged(format!("log segment with a malformed name: {name}")))?;
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            segment_bytes_max,
            segments: Vec::new(),
            locations: VecDeque::new(),
            first: purged.map_or(0, |p| p + 1),
            dirty: Vec::new(),
        };
        for (position, &first) in firsts.iter().enumerate() {
            wal.load_segment(first, firsts.get(position + 1).copied(), purged)?;
        }
        Ok(wal)
    }

    /// Loads segment `first`; `next` is the first record of the segment after it (`None`: this
    /// is the newest).
    fn load_segment(
        &mut self,
        first: u64,
        next: Option<u64>,
        purged: Option<u64>,
    ) -> io::Result<()> {
        let newest = next.is_none();
        let path = self.dir.join(segment_name(first));
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let mut bytes = std::fs::read(&path)?;
        let mut offset = 0usize;
        let mut index = first;
        let mut locations = Vec::new();
        while offset < bytes.len() {
            match parse_record(&bytes[offset..], index) {
                Ok(len) => {
                    locations.push(Location {
                        offset: offset as u64,
                        len: len as u32,
                    });
                    offset += HEADER_BYTES + len;
                    index += 1;
                }
                // Zero-filled space ahead of the last record. Only the newest segment keeps it,
                // unless a crash came before the next segment's start trimmed it: then the next
                // segment starts right after this record, or zeros took the place of records.
                Err(_)
                    if bytes[offset..].iter().all(|&byte| byte == 0)
                        && next.is_none_or(|next| next == index) =>
                {
                    break;
                }
                Err(why) if newest => {
                    tracing::warn!(
                        segment = %path.display(),
                        offset,
                        "cutting off an unfinished log record ({why})"
                    );
                    file.set_len(offset as u64)?;
                    file.sync_data()?;
                    bytes.truncate(offset);
                    break;
                }
                Err(why) => {
                    return Err(damaged(format!(
                        "raft log segment {} is damaged at byte {offset} (record {index}): {why}",
                        path.display()
                    )));
                }
            }
        }
        let count = locations.len() as u64;
        // The index the first record kept here must have, if anything is known before it.
        let expected = if !self.locations.is_empty() {
            Some(self.next_index())
        } else {
            purged.map(|purged| purged + 1)
        };
        let all_purged = count > 0 && purged.is_some_and(|purged| first + count - 1 <= purged);
        let stray_empty = count == 0 && !(newest && expected.is_none_or(|e| e == first));
        if all_purged || stray_empty {
            // Left behind by a purge or a truncation that a crash cut short.
            drop(file);
            std::fs::remove_file(&path)?;
            return Ok(());
        }
        let first_kept = first.max(purged.map_or(0, |purged| purged + 1));
        if let Some(expected) = expected
            && first_kept != expected
        {
            return Err(damaged(format!(
                "raft log has a hole: segment {} continues at record {first_kept}, expected \
                 {expected}",
                path.display()
            )));
        }
        for (i, location) in locations.into_iter().enumerate() {
            let record = first + i as u64;
            if record < first_kept {
                continue;
            }
            if self.locations.is_empty() {
                self.first = record;
            }
            self.locations.push_back(location);
        }
        self.segments.push(Segment {
            first,
            path,
            file: Arc::new(file),
            len: offset as u64,
            allocated: bytes.len() as u64,
        });
        Ok(())
    }

    /// The index the next appended record must have, once there is a record or a purge point.
    fn next_index(&self) -> u64 {
        self.first + self.locations.len() as u64
    }

    pub(crate) fn last_index(&self) -> Option<u64> {
        (!self.locations.is_empty()).then(|| self.next_index() - 1)
    }

    pub(crate) fn first_index(&self) -> Option<u64> {
        (!self.locations.is_empty()).then_some(self.first)
    }

    /// Writes records (index, payload) after the last one; durable only once the caller has
    /// synced [`Wal::dirty_files`]. The first record may start anywhere when the log is empty.
    pub(crate) fn append(&mut self, records: &[(u64, Vec<u8>)]) -> io::Result<()> {
        let Some(&(start, _)) = records.first() else {
            return Ok(());
        };
        if let Some(last) = self.last_index() {
            assert_eq!(start, last + 1, "append would leave a hole in the log");
        }
        let needs_segment = match self.segments.last() {
            None => true,
            Some(segment) => segment.len >= self.segment_bytes_max || self.locations.is_empty(),
        };
        if needs_segment {
            self.start_segment(start)?;
        }
        let mut buffer = Vec::with_capacity(
            records
                .iter()
                .map(|(_, payload)| HEADER_BYTES + payload.len())
                .sum(),
        );
        let segment = self.segments.last_mut().expect("a segment to write");
        let mut locations = Vec::with_capacity(records.len());
        for (position, (index, payload)) in records.iter().enumerate() {
            assert_eq!(
                *index,
                start + position as u64,
                "records must be contiguous"
            );
            assert!(payload.len() < RECORD_BYTES_MAX, "log record too large");
            locations.push(Location {
                offset: segment.len + buffer.len() as u64,
                len: payload.len() as u32,
            });
            buffer.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            buffer.extend_from_slice(&checksum(*index, payload).to_le_bytes());
            buffer.extend_from_slice(&index.to_le_bytes());
            buffer.extend_from_slice(payload);
        }
        segment.file.write_all_at(&buffer, segment.len)?;
        segment.len += buffer.len() as u64;
        if segment.len > segment.allocated {
            // This append grew the file (its sync writes the inode anyway): zero-fill ahead so
            // the appends after it do not.
            let ahead = PREALLOCATE_BYTES.min(self.segment_bytes_max);
            segment
                .file
                .write_all_at(&ZEROS[..ahead as usize], segment.len)?;
            segment.allocated = segment.len + ahead;
        }
        if self.locations.is_empty() {
            self.first = start;
        }
        self.locations.extend(locations);
        let file = segment.file.clone();
        if !self.dirty.iter().any(|dirty| Arc::ptr_eq(dirty, &file)) {
            self.dirty.push(file);
        }
        Ok(())
    }

    /// A new, empty segment whose first record will be `first`; its directory entry is made
    /// durable at once, or a crash could lose the file with synced records in it.
    fn start_segment(&mut self, first: u64) -> io::Result<()> {
        if self.locations.is_empty() {
            // No record is kept in any segment (all purged or truncated): they go.
            for segment in self.segments.drain(..) {
                std::fs::remove_file(&segment.path)?;
            }
        } else if let Some(previous) = self.segments.last_mut() {
            // No more records go there: its zero tail goes, so only the newest segment has one.
            previous.file.set_len(previous.len)?;
            previous.allocated = previous.len;
            // Its records must be durable before any of the new segment's can be reported so.
            let file = previous.file.clone();
            if !self.dirty.iter().any(|dirty| Arc::ptr_eq(dirty, &file)) {
                self.dirty.push(file);
            }
        }
        let path = self.dir.join(segment_name(first));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        sync_dir(&self.dir)?;
        self.segments.push(Segment {
            first,
            path,
            file: Arc::new(file),
            len: 0,
            allocated: 0,
        });
        Ok(())
    }

    /// The files to sync before the records appended so far may be reported durable.
    pub(crate) fn dirty_files(&mut self) -> Vec<Arc<File>> {
        std::mem::take(&mut self.dirty)
    }

    /// The payload of record `index`, checked against its checksum.
    pub(crate) fn read(&self, index: u64) -> io::Result<Vec<u8>> {
        let position = index
            .checked_sub(self.first)
            .filter(|p| *p < self.locations.len() as u64)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "log record not present"))?;
        let location = self.locations[position as usize];
        let segment = &self.segments[self.segments.partition_point(|s| s.first <= index) - 1];
        let mut bytes = vec![0u8; HEADER_BYTES + location.len as usize];
        segment.file.read_exact_at(&mut bytes, location.offset)?;
        let len = parse_record(&bytes, index).map_err(|why| {
            damaged(format!(
                "raft log segment {} is damaged at byte {} (record {index}): {why}",
                segment.path.display(),
                location.offset
            ))
        })?;
        bytes.drain(..HEADER_BYTES);
        debug_assert_eq!(len, bytes.len());
        Ok(bytes)
    }

    /// Removes every record from `index` on, durably, before returning. Below the first kept
    /// record (a purged one) that is every record kept.
    pub(crate) fn truncate_from(&mut self, index: u64) -> io::Result<()> {
        let Some(last) = self.last_index() else {
            return Ok(());
        };
        if index > last {
            return Ok(());
        }
        // The segment holding the first kept record may start below it, with purged records:
        // cut there, not at a purged record's segment, or the kept records would stay on disk.
        let index = index.max(self.first);
        let keep = (index - self.first) as usize;
        // Where record `index` starts, in the segment that holds it.
        let mut cut = Some(self.locations[keep]);
        // Newest first: a crash part way leaves a shorter log, never one with a hole.
        while let Some(segment) = self.segments.last() {
            if segment.first < index {
                break;
            }
            if segment.first == index {
                // The record starts this segment, which goes whole: the offset is in this file,
                // and the segment before ends just before the record already.
                cut = None;
            }
            let segment = self.segments.pop().expect("checked above");
            std::fs::remove_file(&segment.path)?;
        }
        sync_dir(&self.dir)?;
        if let (Some(cut), Some(segment)) = (cut, self.segments.last_mut()) {
            // Cut at the file's end, not just the records': a record left behind in zeroed space
            // would read back on opening.
            segment.file.set_len(cut.offset)?;
            segment.file.sync_data()?;
            segment.len = cut.offset;
            segment.allocated = cut.offset;
        }
        self.locations.truncate(keep);
        Ok(())
    }

    /// Forgets every record up to and including `index` and deletes the segments that hold no
    /// other; the caller has made the purge point durable first.
    pub(crate) fn purge_to(&mut self, index: u64) -> io::Result<()> {
        let drop = (index + 1).saturating_sub(self.first) as usize;
        let drop = drop.min(self.locations.len());
        self.locations.drain(..drop);
        self.first = self.first.max(index + 1);
        // A segment goes when the next one starts at or below the first kept record; the newest
        // goes too once nothing in it is kept.
        while self.segments.len() > 1 && self.segments[1].first <= self.first {
            let segment = self.segments.remove(0);
            std::fs::remove_file(&segment.path)?;
        }
        if self.locations.is_empty()
            && let Some(segment) = self.segments.pop()
        {
            std::fs::remove_file(&segment.path)?;
        }
        Ok(())
    }
}

/// Checks the record at the start of `bytes`, which must be number `index`; returns its payload
/// length.
fn parse_record(bytes: &[u8], index: u64) -> Result<usize, String> {
    if bytes.len() < HEADER_BYTES {
        return Err(format!(
            "{} bytes, shorter than a record header",
            bytes.len()
        ));
    }
    let len = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    let stored_index = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    if len >= RECORD_BYTES_MAX || bytes.len() - HEADER_BYTES < len {
        return Err(format!("record of {len} bytes runs past the end"));
    }
    let payload = &bytes[HEADER_BYTES..HEADER_BYTES + len];
    if checksum(stored_index, payload) != crc {
        return Err("checksum mismatch".to_string());
    }
    if stored_index != index {
        return Err(format!("holds record {stored_index}, expected {index}"));
    }
    Ok(len)
}

fn damaged(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces file `name` in `dir` with `bytes` (plus a checksum) durably and atomically: a crash
/// leaves the old value or the new one.
pub(crate) fn write_replaced(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let temporary = dir.join(format!("{name}.tmp"));
    let mut contents = checksum(0, bytes).to_le_bytes().to_vec();
    contents.extend_from_slice(bytes);
    {
        let file = File::create(&temporary)?;
        file.write_all_at(&contents, 0)?;
        file.sync_data()?;
    }
    std::fs::rename(&temporary, dir.join(name))?;
    sync_dir(dir)
}

/// Reads a file written by [`write_replaced`]; `None` when there is none.
pub(crate) fn read_replaced(dir: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    let mut bytes = match std::fs::read(dir.join(name)) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if bytes.len() < 4
        || u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")) != checksum(0, &bytes[4..])
    {
        return Err(damaged(format!(
            "{} is damaged (checksum mismatch)",
            dir.join(name).display()
        )));
    }
    bytes.drain(..4);
    Ok(Some(bytes))
}

/// Overwrites file `name` in place with no sync, for hints whose loss costs only time: a torn
/// write reads back as `None` from [`read_hint`].
pub(crate) fn write_hint(file: &File, bytes: &[u8]) -> io::Result<()> {
    let mut contents = (bytes.len() as u32).to_le_bytes().to_vec();
    contents.extend_from_slice(&checksum(0, bytes).to_le_bytes());
    contents.extend_from_slice(bytes);
    file.write_all_at(&contents, 0)
}

/// Reads a hint written by [`write_hint`]; `None` when missing, empty or torn.
pub(crate) fn read_hint(file: &File) -> io::Result<Option<Vec<u8>>> {
    let mut header = [0u8; 8];
    if file.read_exact_at(&mut header, 0).is_err() {
        return Ok(None);
    }
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if len > 4096 {
        return Ok(None);
    }
    let mut bytes = vec![0u8; len];
    if file.read_exact_at(&mut bytes, 8).is_err() || checksum(0, &bytes) != crc {
        return Ok(None);
    }
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(index: u64) -> Vec<u8> {
        format!("record {index}")
            .repeat((index % 7 + 1) as usize)
            .into_bytes()
    }

    fn append_range(wal: &mut Wal, from: u64, to: u64) {
        let records: Vec<_> = (from..=to).map(|i| (i, payload(i))).collect();
        wal.append(&records).expect("append");
    }

    /// A log in `dir` with small segments, holding records 1..=count appended one at a time.
    fn written(dir: &Path, count: u64) -> Wal {
        let mut wal = Wal::open(dir, 200, None).expect("open");
        for i in 1..=count {
            append_range(&mut wal, i, i);
        }
        wal
    }

    /// Opening the log in `dir` fails with an error that says `why`.
    fn assert_refused(dir: &Path, why: &str) {
        match Wal::open(dir, 200, None) {
            Ok(_) => panic!("the log opened, but should be refused ({why})"),
            Err(error) => assert!(error.to_string().contains(why), "{error}"),
        }
    }

    fn assert_holds(wal: &Wal, from: u64, to: u64) {
        assert_eq!(wal.first_index(), Some(from));
        assert_eq!(wal.last_index(), Some(to));
        for index in from..=to {
            assert_eq!(
                wal.read(index).expect("read"),
                payload(index),
                "record {index}"
            );
        }
    }

    fn segment_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .filter(|n| n.ends_with(SEGMENT_SUFFIX))
            .collect();
        names.sort();
        names
    }

    /// The first record of the segment file `segment_name`, from its name.
    fn first_index(segment_name: &str) -> u64 {
        segment_name
            .trim_end_matches(SEGMENT_SUFFIX)
            .parse()
            .expect("index")
    }

    /// Where the records of a segment file end: every payload ends in a non-zero byte.
    fn records_end(bytes: &[u8]) -> usize {
        bytes
            .iter()
            .rposition(|&byte| byte != 0)
            .map_or(0, |at| at + 1)
    }

    #[test]
    fn appends_overwrite_zeroed_space_and_reopening_finds_the_last_record() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut wal = Wal::open(dir.path(), 4096, None).expect("open");
        append_range(&mut wal, 1, 1);
        let path = dir.path().join(segment_name(1));
        let preallocated = std::fs::metadata(&path).expect("stat").len();
        let first_end = records_end(&std::fs::read(&path).expect("read"));
        assert_eq!(
            preallocated,
            (first_end + 4096) as u64,
            "zeros follow the record"
        );
        // Appends that fit in the zeros leave the file's size alone: no metadata to sync.
        append_range(&mut wal, 2, 5);
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), preallocated);
        drop(wal);
        let mut wal = Wal::open(dir.path(), 4096, None).expect("reopen");
        assert_holds(&wal, 1, 5);
        // Appends go on after the last record, not at the end of the file.
        append_range(&mut wal, 6, 8);
        drop(wal);
        assert_holds(&Wal::open(dir.path(), 4096, None).expect("reopen"), 1, 8);
    }

    #[test]
    fn only_the_newest_segment_keeps_zeroed_space_and_a_leftover_one_is_accepted() {
        let dir = tempfile::tempdir().expect("temporary directory");
        drop(written(dir.path(), 30));
        let files = segment_files(dir.path());
        assert!(files.len() > 2, "small segments rotate");
        for (position, name) in files.iter().enumerate() {
            let bytes = std::fs::read(dir.path().join(name)).expect("read");
            let newest = position + 1 == files.len();
            assert_eq!(records_end(&bytes) < bytes.len(), newest, "{name}");
        }
        // A crash between starting a segment and trimming the one before leaves zeros there.
        let older = dir.path().join(&files[1]);
        let mut bytes = std::fs::read(&older).expect("read");
        bytes.extend_from_slice(&[0; 100]);
        std::fs::write(&older, bytes).expect("leave a zero tail");
        assert_holds(&Wal::open(dir.path(), 200, None).expect("reopen"), 1, 30);

        // Zeros where records were, in a segment before the newest, are damage: the next
        // segment does not start where the zeros do.
        let bytes = std::fs::read(&older).expect("read");
        let first_record = HEADER_BYTES + payload(first_index(&files[1])).len();
        let mut zeroed = bytes.clone();
        zeroed[first_record..].fill(0);
        std::fs::write(&older, &zeroed).expect("zero the records after the first");
        assert_refused(dir.path(), "damaged");
        std::fs::write(&older, &bytes).expect("restore");
        let oldest = dir.path().join(&files[0]);
        let length = std::fs::metadata(&oldest).expect("stat").len() as usize;
        std::fs::write(&oldest, vec![0; length]).expect("zero the oldest segment");
        assert_refused(dir.path(), "damaged");
    }

    #[test]
    fn records_survive_reopening_across_segments() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut wal = Wal::open(dir.path(), 200, None).expect("open");
        assert_eq!(wal.last_index(), None);
        for i in 1..=40 {
            append_range(&mut wal, i, i);
        }
        assert!(segment_files(dir.path()).len() > 3, "small segments rotate");
        assert_holds(&wal, 1, 40);
        drop(wal);
        let wal = Wal::open(dir.path(), 200, None).expect("reopen");
        assert_holds(&wal, 1, 40);
    }

    #[test]
    fn truncation_removes_the_tail_durably() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut wal = written(dir.path(), 30);
        wal.truncate_from(17).expect("truncate");
        assert_holds(&wal, 1, 16);
        append_range(&mut wal, 17, 20);
        drop(wal);
        let mut wal = Wal::open(dir.path(), 200, None).expect("reopen");
        assert_holds(&wal, 1, 20);
        wal.truncate_from(1).expect("truncate everything");
        assert_eq!(wal.last_index(), None);
        append_range(&mut wal, 1, 3);
        drop(wal);
        assert_holds(&Wal::open(dir.path(), 200, None).expect("reopen"), 1, 3);
    }

    /// The first record of every segment of a log of `records` records written by [`written`].
    fn segment_starts(records: u64) -> Vec<u64> {
        let dir = tempfile::tempdir().expect("temporary directory");
        drop(written(dir.path(), records));
        segment_files(dir.path())
            .iter()
            .map(|name| first_index(name))
            .collect()
    }

    #[test]
    fn truncation_at_the_first_record_of_a_segment_keeps_the_segment_before() {
        let starts: Vec<u64> = segment_starts(30)
            .into_iter()
            .filter(|&first| first > 1)
            .collect();
        assert!(starts.len() > 2, "small segments rotate");
        for start in starts {
            let dir = tempfile::tempdir().expect("temporary directory");
            let mut wal = written(dir.path(), 30);
            wal.truncate_from(start).expect("truncate");
            assert_holds(&wal, 1, start - 1);
            drop(wal);
            assert_holds(
                &Wal::open(dir.path(), 200, None).expect("reopen"),
                1,
                start - 1,
            );
        }
    }

    #[test]
    fn truncation_below_the_purge_point_removes_every_kept_record_for_good() {
        let starts = segment_starts(30);
        // Purged in the middle of a segment and up to the end of one; truncated below the
        // purge point, at it and at the first kept record.
        let purges = [starts[1] + 1, starts[2] - 1];
        for purged in purges {
            for from in [1, purged, purged + 1] {
                let dir = tempfile::tempdir().expect("temporary directory");
                let mut wal = written(dir.path(), 30);
                wal.purge_to(purged).expect("purge");
                wal.truncate_from(from).expect("truncate");
                assert_eq!(
                    wal.last_index(),
                    None,
                    "purged {purged}, truncated from {from}"
                );
                drop(wal);
                let mut wal = Wal::open(dir.path(), 200, Some(purged)).expect("reopen");
                assert_eq!(
                    wal.last_index(),
                    None,
                    "purged {purged}, truncated from {from}: records came back"
                );
                append_range(&mut wal, purged + 1, purged + 3);
                drop(wal);
                assert_holds(
                    &Wal::open(dir.path(), 200, Some(purged)).expect("reopen"),
                    purged + 1,
                    purged + 3,
                );
            }
        }
    }

    #[test]
    fn purge_deletes_whole_segments_and_reopens_after_the_purge_point() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut wal = written(dir.path(), 40);
        let before = segment_files(dir.path()).len();
        wal.purge_to(25).expect("purge");
        assert!(segment_files(dir.path()).len() < before);
        assert_holds(&wal, 26, 40);
        assert!(wal.read(25).is_err());
        drop(wal);
        let mut wal = Wal::open(dir.path(), 200, Some(25)).expect("reopen");
        assert_holds(&wal, 26, 40);
        // Purged past the end (a snapshot installed ahead of the log): appends go on after it.
        wal.purge_to(50).expect("purge everything");
        assert_eq!(wal.last_index(), None);
        assert!(segment_files(dir.path()).is_empty());
        append_range(&mut wal, 51, 52);
        drop(wal);
        assert_holds(
            &Wal::open(dir.path(), 200, Some(50)).expect("reopen"),
            51,
            52,
        );
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_damage_elsewhere_refuses_to_open() {
        let dir = tempfile::tempdir().expect("temporary directory");
        drop(written(dir.path(), 30));
        let files = segment_files(dir.path());
        let newest = dir.path().join(files.last().expect("a segment"));
        // A write cut short in zeroed space: the last record's final bytes are still zeros.
        let mut bytes = std::fs::read(&newest).expect("read");
        let end = records_end(&bytes);
        assert!(end < bytes.len(), "the newest segment has zeroed space");
        bytes[end - 3..end].fill(0);
        std::fs::write(&newest, &bytes).expect("tear the last record");
        let mut wal = Wal::open(dir.path(), 200, None).expect("reopen after a torn write");
        assert_holds(&wal, 1, 29);
        // The torn record is gone from the file, so appends go on from record 30 again.
        append_range(&mut wal, 30, 31);
        drop(wal);
        assert_holds(&Wal::open(dir.path(), 200, None).expect("reopen"), 1, 31);

        let oldest = dir.path().join(&files[0]);
        let mut bytes = std::fs::read(&oldest).expect("read");
        bytes[HEADER_BYTES + 2] ^= 0xff;
        std::fs::write(&oldest, bytes).expect("damage an acknowledged record");
        assert_refused(dir.path(), "checksum mismatch");
    }

    #[test]
    fn a_missing_segment_is_a_hole() {
        let dir = tempfile::tempdir().expect("temporary directory");
        drop(written(dir.path(), 40));
        let files = segment_files(dir.path());
        std::fs::remove_file(dir.path().join(&files[1])).expect("lose a segment");
        assert_refused(dir.path(), "hole");
    }

    #[test]
    fn replaced_values_and_hints_read_back_and_detect_damage() {
        let dir = tempfile::tempdir().expect("temporary directory");
        assert_eq!(read_replaced(dir.path(), "vote").expect("read"), None);
        write_replaced(dir.path(), "vote", b"term 3").expect("write");
        write_replaced(dir.path(), "vote", b"term 4").expect("replace");
        assert_eq!(
            read_replaced(dir.path(), "vote").expect("read").as_deref(),
            Some(&b"term 4"[..])
        );
        std::fs::write(dir.path().join("vote"), b"xxxxterm 4").expect("damage");
        assert!(read_replaced(dir.path(), "vote").is_err());

        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.path().join("hint"))
            .expect("open");
        assert_eq!(read_hint(&file).expect("read"), None);
        write_hint(&file, b"committed 9").expect("write");
        assert_eq!(
            read_hint(&file).expect("read").as_deref(),
            Some(&b"committed 9"[..])
        );
        file.write_all_at(b"!", 9).expect("tear");
        assert_eq!(read_hint(&file).expect("read"), None);
    }
}
