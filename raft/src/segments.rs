//! The Raft log's entries in append-only segment files (`log.segments/`).
//!
//! A B-tree commit writes every page on the path to the changed leaf plus
//! the allocator's own pages: about eight scattered 4 KiB writes before the
//! fsync of a one-entry append in `log.redb`. Here an append is the entries'
//! bytes at the end of one file and one `fdatasync`.
//!
//! A segment `<index of its first entry, 20 digits>.seg` holds entries with
//! consecutive indexes as records: `u32` LE payload length, `u32` LE CRC-32
//! of the payload, the payload (the entry as `storage::encode` writes it).
//! Segments may leave gaps between them (entries a snapshot made purgeable
//! before openraft purged them). On open every segment is read through; a
//! torn or corrupt record at the end of the last one (an append cut short
//! by a crash, so never acknowledged) is cut off, anywhere else it is an
//! error.
//!
//! Only the log writer thread changes segments; readers take the index
//! lock briefly to find where entries lie and read the files with `pread`.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::types::{Entry, LogId};

/// A segment grows to about this size before the next append starts a new
/// one (purging removes whole segments).
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
const HEADER: usize = 8;
/// Larger records cannot be an entry (batches are capped far below).
const MAX_RECORD: u32 = 256 * 1024 * 1024;

struct Segment {
    first: u64,
    path: PathBuf,
    file: Arc<File>,
    /// Byte offset of entry `first + i`, and where the next record goes.
    offsets: Vec<u64>,
    end: u64,
    last: Option<LogId>,
}

impl Segment {
    fn last_index(&self) -> Option<u64> {
        (!self.offsets.is_empty()).then(|| self.first + self.offsets.len() as u64 - 1)
    }

    fn holds(&self, index: u64) -> bool {
        index >= self.first && self.last_index().is_some_and(|l| index <= l)
    }
}

/// The entries on disk, shared by the writer and readers.
#[derive(Clone)]
pub(crate) struct Segments {
    dir: PathBuf,
    segs: Arc<RwLock<Vec<Segment>>>,
    /// The first index readers may see: purged entries still in a kept
    /// segment are gone as far as anyone can tell.
    floor: Arc<AtomicU64>,
}

fn corrupt(path: &Path, why: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("raft log segment {}: {why}", path.display()),
    )
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.seg")
}

/// One record: header and payload.
fn record(entry: &Entry, out: &mut Vec<u8>) -> io::Result<()> {
    let payload = storage::encode(entry).map_err(io::Error::other)?;
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|l| *l <= MAX_RECORD)
        .ok_or_else(|| io::Error::other("raft log entry too large"))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(())
}

/// Reads a segment's records; returns their offsets, the last entry's id
/// and the length of the valid prefix, which is shorter than the file when
/// its end is torn. Every record's checksum is checked, but only the first
/// and last entries are decoded: open stays a read of the files, not a
/// decode of the whole log.
fn scan(path: &Path, first: u64) -> io::Result<(Vec<u64>, Option<LogId>, u64, bool)> {
    let bytes = fs::read(path)?;
    let mut offsets = Vec::new();
    let mut first_payload = None;
    let mut last_payload = 0..0;
    let mut at = 0usize;
    let torn = loop {
        if at == bytes.len() {
            break false;
        }
        let Some(head) = bytes.get(at..at + HEADER) else {
            break true;
        };
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let range = at + HEADER..at + HEADER + len as usize;
        let Some(payload) = (len <= MAX_RECORD)
            .then(|| bytes.get(range.clone()))
            .flatten()
        else {
            break true;
        };
        if crc32fast::hash(payload) != crc {
            break true;
        }
        offsets.push(at as u64);
        first_payload.get_or_insert(range.clone());
        last_payload = range;
        at += HEADER + len as usize;
    };
    // The entry in `range` must have index `expected`.
    let check = |range: std::ops::Range<usize>, expected: u64| -> io::Result<LogId> {
        let entry: Entry = storage::decode(&bytes[range]).map_err(|e| corrupt(path, e))?;
        if entry.log_id.index != expected {
            return Err(corrupt(
                path,
                format!("entry {} where {expected} belongs", entry.log_id.index),
            ));
        }
        Ok(entry.log_id)
    };
    let last = match first_payload {
        Some(range) => {
            check(range, first)?;
            Some(check(last_payload, first + offsets.len() as u64 - 1)?)
        }
        None => None,
    };
    Ok((offsets, last, at as u64, torn))
}

impl Segments {
    /// Opens (creating) the segment directory, drops segments wholly at or
    /// below `purged`, and cuts a torn end off the last segment.
    pub(crate) fn open(dir: &Path, purged: Option<u64>) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let mut firsts = Vec::new();
        for item in fs::read_dir(dir)? {
            let name = item?.file_name();
            let name = name.to_string_lossy();
            if let Some(first) = name
                .strip_suffix(".seg")
                .and_then(|n| n.parse::<u64>().ok())
            {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        let mut segs: Vec<Segment> = Vec::with_capacity(firsts.len());
        let count = firsts.len();
        for (i, first) in firsts.into_iter().enumerate() {
            let path = dir.join(segment_name(first));
            let (offsets, last, end, torn) = scan(&path, first)?;
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            if torn {
                if i + 1 != count {
                    return Err(corrupt(&path, "damaged record before the last segment"));
                }
                tracing::warn!(segment = %path.display(), valid_bytes = end, "cutting a torn end off the raft log");
                file.set_len(end)?;
                file.sync_all()?;
            }
            if let (Some(prev), Some(seg_first)) = (
                segs.last().and_then(Segment::last_index),
                offsets.first().map(|_| first),
            ) {
                if seg_first <= prev {
                    return Err(corrupt(&path, "overlaps the segment before it"));
                }
            }
            let seg = Segment {
                first,
                path,
                file: Arc::new(file),
                offsets,
                end,
                last,
            };
            // Empty (everything torn) or wholly purged before a crash
            // kept the files from going.
            let obsolete = match seg.last_index() {
                Some(l) => purged.is_some_and(|p| l <= p),
                None => true,
            };
            if obsolete {
                fs::remove_file(&seg.path)?;
                continue;
            }
            segs.push(seg);
        }
        sync_dir(dir)?;
        Ok(Segments {
            dir: dir.to_path_buf(),
            segs: Arc::new(RwLock::new(segs)),
            floor: Arc::new(AtomicU64::new(purged.map_or(0, |p| p.saturating_add(1)))),
        })
    }

    fn read_segs(&self) -> std::sync::RwLockReadGuard<'_, Vec<Segment>> {
        self.segs.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_segs(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Segment>> {
        self.segs.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The id of the last entry held, if any.
    pub(crate) fn last(&self) -> Option<LogId> {
        self.read_segs().iter().rev().find_map(|s| s.last)
    }

    /// Whether nothing is held (for a one-time import of an older log).
    pub(crate) fn is_empty(&self) -> bool {
        self.read_segs().iter().all(|s| s.offsets.is_empty())
    }

    /// Appends `entries` (consecutive indexes) and makes them durable.
    /// Called by the log writer thread only.
    pub(crate) fn append(&self, entries: &[Entry]) -> io::Result<()> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let mut buf = Vec::new();
        let mut rel = Vec::with_capacity(entries.len());
        for e in entries {
            rel.push(buf.len() as u64);
            record(e, &mut buf)?;
        }
        let index = first.log_id.index;
        let last = entries.last().map(|e| e.log_id);
        // Where the records go: the last segment when they continue it and
        // it has room, else a new segment (also after a gap: entries that
        // follow a snapshot, before openraft purged what it covers).
        let (file, at, new_segment) = {
            let segs = self.read_segs();
            let last_index = segs.last().and_then(Segment::last_index);
            match segs.last() {
                Some(s)
                    if last_index.map(|l| l + 1) == Some(index)
                        && s.end + buf.len() as u64 <= SEGMENT_BYTES =>
                {
                    (s.file.clone(), s.end, None)
                }
                Some(_) if last_index.is_some_and(|l| index <= l) => {
                    return Err(io::Error::other(format!(
                        "raft log append at {index} without truncating first (last is {last_index:?})"
                    )));
                }
                _ => {
                    let path = self.dir.join(segment_name(index));
                    let file = OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .open(&path)?;
                    (Arc::new(file), 0, Some(path))
                }
            }
        };
        file.write_all_at(&buf, at)?;
        file.sync_data()?;
        if new_segment.is_some() {
            sync_dir(&self.dir)?;
        }
        let mut segs = self.write_segs();
        match new_segment {
            Some(path) => segs.push(Segment {
                first: index,
                path,
                file,
                offsets: rel,
                end: buf.len() as u64,
                last,
            }),
            None => {
                if let Some(s) = segs.last_mut() {
                    s.offsets.extend(rel.iter().map(|r| at + r));
                    s.end = at + buf.len() as u64;
                    s.last = last;
                }
            }
        }
        Ok(())
    }

    /// Removes every entry from `from` on, durably.
    pub(crate) fn truncate(&self, from: u64) -> io::Result<()> {
        let mut segs = self.write_segs();
        let mut removed = false;
        while let Some(s) = segs.last() {
            if s.first < from {
                break;
            }
            fs::remove_file(&s.path)?;
            segs.pop();
            removed = true;
        }
        if let Some(s) = segs.last_mut() {
            if s.holds(from) {
                let keep = (from - s.first) as usize;
                s.end = s.offsets[keep];
                s.offsets.truncate(keep);
                s.file.set_len(s.end)?;
                s.file.sync_data()?;
                s.last = match keep.checked_sub(1) {
                    Some(i) => Some(read_entry(&s.file, &s.path, s.offsets[i], s.end)?.log_id),
                    None => None,
                };
            }
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Removes the segments whose entries are all at or below `upto` (the
    /// caller has recorded the purge durably first).
    pub(crate) fn purge(&self, upto: u64) -> io::Result<()> {
        self.floor
            .fetch_max(upto.saturating_add(1), Ordering::Release);
        let mut segs = self.write_segs();
        let before = segs.len();
        let mut kept = Vec::with_capacity(before);
        for s in segs.drain(..) {
            if s.last_index().is_some_and(|l| l <= upto) {
                fs::remove_file(&s.path)?;
            } else {
                kept.push(s);
            }
        }
        *segs = kept;
        if segs.len() != before {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// The entries with indexes in `from..to` that are held and not
    /// purged, in order.
    pub(crate) fn read(&self, from: u64, to: u64) -> io::Result<Vec<Entry>> {
        let from = from.max(self.floor.load(Ordering::Acquire));
        // (file, path, byte range, entry offsets) per segment, found under
        // the lock and read without it.
        let mut spans = Vec::new();
        for s in self.read_segs().iter() {
            let Some(last) = s.last_index() else { continue };
            let (a, b) = (from.max(s.first), to.min(last + 1));
            if a >= b {
                continue;
            }
            let i = (a - s.first) as usize;
            let j = (b - s.first) as usize;
            let start = s.offsets[i];
            let stop = s.offsets.get(j).copied().unwrap_or(s.end);
            let rel: Vec<u64> = s.offsets[i..j].iter().map(|o| o - start).collect();
            spans.push((s.file.clone(), s.path.clone(), start, stop, rel));
        }
        let mut out = Vec::new();
        for (file, path, start, stop, rel) in spans {
            let mut bytes = vec![0u8; (stop - start) as usize];
            file.read_exact_at(&mut bytes, start)?;
            for (k, &r) in rel.iter().enumerate() {
                let end = rel.get(k + 1).copied().unwrap_or(stop - start);
                out.push(decode_record(&bytes[r as usize..end as usize], &path)?);
            }
        }
        Ok(out)
    }
}

fn decode_record(bytes: &[u8], path: &Path) -> io::Result<Entry> {
    let payload = bytes
        .get(HEADER..)
        .ok_or_else(|| corrupt(path, "short record"))?;
    let crc = bytes
        .get(4..8)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .ok_or_else(|| corrupt(path, "short record"))?;
    if crc32fast::hash(payload) != crc {
        return Err(corrupt(path, "checksum mismatch"));
    }
    storage::decode(payload).map_err(|e| corrupt(path, e))
}

fn read_entry(file: &File, path: &Path, at: u64, end: u64) -> io::Result<Entry> {
    let mut bytes = vec![0u8; (end - at) as usize];
    file.read_exact_at(&mut bytes, at)?;
    decode_record(&bytes, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Command;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(term: u64, index: u64) -> Entry {
        let items = vec![serde_bytes::ByteBuf::from(vec![index as u8; 40])];
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(Command(items)),
        }
    }

    fn indexes(s: &Segments, from: u64, to: u64) -> Vec<u64> {
        s.read(from, to)
            .unwrap()
            .iter()
            .map(|e| e.log_id.index)
            .collect()
    }

    #[test]
    fn appends_survive_reopening_and_a_torn_end_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let s = Segments::open(dir.path(), None).unwrap();
        s.append(&(1..=5).map(|i| entry(1, i)).collect::<Vec<_>>())
            .unwrap();
        s.append(&[entry(2, 6)]).unwrap();
        assert_eq!(indexes(&s, 0, 100), vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(indexes(&s, 3, 5), vec![3, 4]);
        drop(s);

        // A crash mid-append leaves half a record behind.
        let seg = dir.path().join(segment_name(1));
        let full = fs::metadata(&seg).unwrap().len();
        let mut half = Vec::new();
        record(&entry(2, 7), &mut half).unwrap();
        let f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all_at(&half[..half.len() / 2], full).unwrap();
        drop(f);
        let s = Segments::open(dir.path(), None).unwrap();
        assert_eq!(fs::metadata(&seg).unwrap().len(), full);
        assert_eq!(s.last().map(|l| l.index), Some(6));
        s.append(&[entry(2, 7)]).unwrap();
        assert_eq!(indexes(&s, 0, 100), vec![1, 2, 3, 4, 5, 6, 7]);

        // A flipped bit inside the last record is the same: cut off.
        drop(s);
        let mut bytes = fs::read(&seg).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 0x40;
        fs::write(&seg, &bytes).unwrap();
        let s = Segments::open(dir.path(), None).unwrap();
        assert_eq!(s.last().map(|l| l.index), Some(6));
    }

    #[test]
    fn truncate_and_purge_are_durable_and_leave_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let s = Segments::open(dir.path(), None).unwrap();
        for i in 1..=10 {
            s.append(&[entry(1, i)]).unwrap();
        }
        s.truncate(8).unwrap();
        assert_eq!(s.last().map(|l| l.index), Some(7));
        assert!(
            s.append(&[entry(1, 5)]).is_err(),
            "overwrite without truncate"
        );
        s.append(&[entry(3, 8)]).unwrap();
        assert_eq!(indexes(&s, 6, 100), vec![6, 7, 8]);
        // After a snapshot far ahead the next entries leave a gap and start
        // a segment of their own; the purge then removes the old one.
        s.append(&[entry(3, 50), entry(3, 51)]).unwrap();
        assert_eq!(indexes(&s, 7, 100), vec![7, 8, 50, 51]);
        s.purge(6).unwrap();
        assert_eq!(indexes(&s, 0, 100), vec![7, 8, 50, 51]);
        s.purge(8).unwrap();
        assert_eq!(indexes(&s, 0, 100), vec![50, 51]);
        s.append(&[entry(3, 52)]).unwrap();
        s.truncate(52).unwrap();
        drop(s);

        let s = Segments::open(dir.path(), Some(8)).unwrap();
        assert_eq!(indexes(&s, 0, 100), vec![50, 51]);
        assert_eq!(s.last(), Some(LogId::new(CommittedLeaderId::new(3, 1), 51)));
        s.truncate(50).unwrap();
        assert!(s.is_empty());
        drop(s);
        let s = Segments::open(dir.path(), Some(8)).unwrap();
        assert!(s.is_empty() && s.last().is_none());
    }

    #[test]
    fn damage_before_the_last_segment_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let s = Segments::open(dir.path(), None).unwrap();
        s.append(&[entry(1, 1), entry(1, 2)]).unwrap();
        s.append(&[entry(2, 10)]).unwrap();
        drop(s);
        let first = dir.path().join(segment_name(1));
        let mut bytes = fs::read(&first).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 0x40;
        fs::write(&first, &bytes).unwrap();
        assert!(Segments::open(dir.path(), None).is_err());
        // Records out of order are refused too.
        fs::write(&first, fs::read(dir.path().join(segment_name(10))).unwrap()).unwrap();
        assert!(Segments::open(dir.path(), None).is_err());
    }
}
