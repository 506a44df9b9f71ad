//! The Raft log's entries in append-only segment files (`log.segments/`).
//!
//! A B-tree commit writes every page on the path to the changed leaf plus
//! the allocator's own pages: about eight scattered 4 KiB writes before the
//! fsync of a one-entry append in `log.redb`. Here an append is the entries'
//! bytes at the end of one file and one `fdatasync`.
//!
//! Segments are zero-filled to their full size before they take entries: a
//! write that grows a file makes `fdatasync` commit the new size and blocks
//! through the filesystem's journal too, a write into blocks already there
//! is data only (on ext4 here 0.12 against 0.18 ms for 256 bytes, 0.15
//! against 0.24 ms for 16 KiB). A background thread keeps one zero-filled
//! spare file (`spare.zero`) ready; an append that would otherwise grow its
//! segment starts a new one from the spare. Bytes after a segment's last
//! record are zero, and a record header of length 0 marks that end (no
//! entry encodes to nothing).
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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, RwLock};
use std::thread;

use crate::types::{Entry, LogId};

/// A segment grows to about this size before the next append starts a new
/// one (purging removes whole segments).
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
const HEADER: usize = 8;
/// Larger records cannot be an entry (batches are capped far below).
const MAX_RECORD: u32 = 256 * 1024 * 1024;
/// The zero-filled file the next segment is made from.
const SPARE: &str = "spare.zero";
/// Zeros are written this much at a time.
const ZERO_CHUNK: usize = 1024 * 1024;

struct Segment {
    first: u64,
    path: PathBuf,
    file: Arc<File>,
    /// Byte offset of entry `first + i`, and where the next record goes.
    offsets: Vec<u64>,
    end: u64,
    /// The file's length: appends below it write into blocks already
    /// there (zeros), appends past it grow the file.
    len: u64,
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
    /// Set by the spare-making thread when `spare.zero` is ready, cleared
    /// by the writer as it takes it.
    spare_ready: Arc<AtomicBool>,
    /// Asks the spare-making thread for a new spare; it stops when every
    /// clone is gone.
    want_spare: mpsc::Sender<()>,
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

/// What reading a segment through found.
struct Scan {
    offsets: Vec<u64>,
    last: Option<LogId>,
    /// The length of the valid prefix of records.
    end: u64,
    /// Where the last non-zero byte ends: past `end` when the end is torn
    /// (an append cut short, or garbage), else at most `end`.
    dirty_to: u64,
    len: u64,
}

/// Reads a segment's records. Every record's checksum is checked, but only
/// the first and last entries are decoded: open stays a read of the files,
/// not a decode of the whole log.
fn scan(path: &Path, first: u64) -> io::Result<Scan> {
    let bytes = fs::read(path)?;
    let mut offsets = Vec::new();
    let mut first_payload = None;
    let mut last_payload = 0..0;
    let mut at = 0usize;
    while let Some(head) = bytes.get(at..at + HEADER) {
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if len == 0 {
            break;
        }
        let range = at + HEADER..at + HEADER + len as usize;
        let Some(payload) = (len <= MAX_RECORD)
            .then(|| bytes.get(range.clone()))
            .flatten()
        else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        offsets.push(at as u64);
        first_payload.get_or_insert(range.clone());
        last_payload = range;
        at += HEADER + len as usize;
    }
    let dirty_to = bytes.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1);
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
    Ok(Scan {
        offsets,
        last,
        end: at as u64,
        dirty_to: dirty_to as u64,
        len: bytes.len() as u64,
    })
}

/// Overwrites `from..to` of `file` with zeros (not durable by itself).
fn zero_range(file: &File, from: u64, to: u64) -> io::Result<()> {
    let zeros = vec![0u8; ZERO_CHUNK.min(to.saturating_sub(from) as usize)];
    let mut at = from;
    while at < to {
        let n = (to - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Writes a zero-filled segment-sized file under a name of its own and
/// renames it to `spare.zero` once it is durable, so that a spare is never
/// seen half made (and two makers in one directory cannot mix).
fn make_spare(dir: &Path) -> io::Result<()> {
    static MADE: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        "spare.{}.{}.tmp",
        std::process::id(),
        MADE.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        zero_range(&file, 0, SEGMENT_BYTES)?;
        file.sync_data()?;
        drop(file);
        fs::rename(&tmp, dir.join(SPARE))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The thread that makes a spare whenever asked and none is ready.
fn spawn_spare_maker(dir: PathBuf, ready: Arc<AtomicBool>) -> io::Result<mpsc::Sender<()>> {
    let (tx, rx) = mpsc::channel::<()>();
    thread::Builder::new()
        .name("raft-log-spare".into())
        .spawn(move || {
            while rx.recv().is_ok() {
                while rx.try_recv().is_ok() {}
                if ready.load(Ordering::Acquire) {
                    continue;
                }
                match make_spare(&dir) {
                    Ok(()) => ready.store(true, Ordering::Release),
                    // Appends then grow their segment: slower, still correct.
                    Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "could not make a zero-filled raft log segment"),
                }
            }
        })?;
    Ok(tx)
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
            if name.starts_with("spare.") && name.ends_with(".tmp") {
                // A spare whose making a crash cut short.
                fs::remove_file(dir.join(&*name))?;
                continue;
            }
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
            let Scan {
                offsets,
                last,
                end,
                dirty_to,
                len,
            } = scan(&path, first)?;
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            if dirty_to > end {
                if i + 1 != count {
                    return Err(corrupt(&path, "damaged record before the last segment"));
                }
                tracing::warn!(segment = %path.display(), valid_bytes = end, "cutting a torn end off the raft log");
                zero_range(&file, end, dirty_to)?;
                file.sync_data()?;
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
                len,
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
        let spare_ready = Arc::new(AtomicBool::new(dir.join(SPARE).exists()));
        let want_spare = spawn_spare_maker(dir.to_path_buf(), spare_ready.clone())?;
        let _ = want_spare.send(());
        Ok(Segments {
            dir: dir.to_path_buf(),
            segs: Arc::new(RwLock::new(segs)),
            floor: Arc::new(AtomicU64::new(purged.map_or(0, |p| p.saturating_add(1)))),
            spare_ready,
            want_spare,
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
        let size = buf.len() as u64;
        // Where the records go: the last segment when they continue it and
        // it has room (and is zero-filled that far, or no spare is ready),
        // else a new segment (also after a gap: entries that follow a
        // snapshot, before openraft purged what it covers).
        let (file, at, new_segment) = {
            let segs = self.read_segs();
            let last_index = segs.last().and_then(Segment::last_index);
            match segs.last() {
                Some(s)
                    if last_index.map(|l| l + 1) == Some(index)
                        && s.end + size <= SEGMENT_BYTES
                        && (s.end + size <= s.len || !self.spare_ready.load(Ordering::Acquire)) =>
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
                    (Arc::new(self.new_segment_file(&path)?), 0, Some(path))
                }
            }
        };
        file.write_all_at(&buf, at)?;
        file.sync_data()?;
        let len = if new_segment.is_some() {
            sync_dir(&self.dir)?;
            file.metadata()?.len()
        } else {
            0
        };
        let mut segs = self.write_segs();
        match new_segment {
            Some(path) => segs.push(Segment {
                first: index,
                path,
                file,
                offsets: rel,
                end: size,
                len: len.max(size),
                last,
            }),
            None => {
                if let Some(s) = segs.last_mut() {
                    s.offsets.extend(rel.iter().map(|r| at + r));
                    s.end = at + size;
                    s.len = s.len.max(s.end);
                    s.last = last;
                }
            }
        }
        Ok(())
    }

    /// The file for a new segment at `path`: the zero-filled spare when
    /// one is ready (and a new spare asked for), else an empty file.
    fn new_segment_file(&self, path: &Path) -> io::Result<File> {
        if self.spare_ready.swap(false, Ordering::AcqRel) {
            let taken = fs::rename(self.dir.join(SPARE), path);
            let _ = self.want_spare.send(());
            match taken {
                Ok(()) => return OpenOptions::new().read(true).write(true).open(path),
                Err(e) => {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "the raft log's spare segment is gone")
                }
            }
        }
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
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
        // The removals are durable before the zeroing below starts, so a
        // crash in the middle of it leaves the half-zeroed segment last,
        // where open treats it as a torn end (not as damage).
        if removed {
            sync_dir(&self.dir)?;
        }
        if let Some(s) = segs.last_mut() {
            if s.holds(from) {
                let keep = (from - s.first) as usize;
                let old_end = s.end;
                s.end = s.offsets[keep];
                s.offsets.truncate(keep);
                // Zeros, not a shorter file: the blocks stay for the
                // appends that follow.
                zero_range(&s.file, s.end, old_end)?;
                s.file.sync_data()?;
                s.last = match keep.checked_sub(1) {
                    Some(i) => Some(read_entry(&s.file, &s.path, s.offsets[i], s.end)?.log_id),
                    None => None,
                };
            }
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
        self.read_at_most(from, to, u64::MAX)
    }

    /// Like `read`, but only the first entries whose records come to at
    /// most `max_bytes` (always at least one, however large).
    pub(crate) fn read_at_most(
        &self,
        from: u64,
        to: u64,
        max_bytes: u64,
    ) -> io::Result<Vec<Entry>> {
        let from = from.max(self.floor.load(Ordering::Acquire));
        // (file, path, byte range, entry offsets) per segment, found under
        // the lock and read without it.
        let mut spans = Vec::new();
        let mut budget = max_bytes;
        for s in self.read_segs().iter() {
            let Some(last) = s.last_index() else { continue };
            let (a, b) = (from.max(s.first), to.min(last.saturating_add(1)));
            if a >= b {
                continue;
            }
            let i = (a - s.first) as usize;
            let full = (b - s.first) as usize;
            let start = s.offsets[i];
            let end_of = |j: usize| s.offsets.get(j).copied().unwrap_or(s.end);
            // Entries i..j, j the most that fit (ends only grow with j).
            let fits = |j: usize| end_of(j) - start <= budget;
            let j = if fits(full) {
                full
            } else if !fits(i + 1) {
                if spans.is_empty() {
                    i + 1
                } else {
                    break;
                }
            } else {
                let (mut lo, mut hi) = (i + 1, full);
                while hi - lo > 1 {
                    let mid = lo + (hi - lo) / 2;
                    if fits(mid) {
                        lo = mid;
                    } else {
                        hi = mid;
                    }
                }
                lo
            };
            let stop = end_of(j);
            budget = budget.saturating_sub(stop - start);
            let rel: Vec<u64> = s.offsets[i..j].iter().map(|o| o - start).collect();
            spans.push((s.file.clone(), s.path.clone(), start, stop, rel));
            if j < full {
                break;
            }
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
        wait_for_spare(&s);
        s.append(&(1..=5).map(|i| entry(1, i)).collect::<Vec<_>>())
            .unwrap();
        s.append(&[entry(2, 6)]).unwrap();
        assert_eq!(indexes(&s, 0, 100), vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(indexes(&s, 3, 5), vec![3, 4]);
        drop(s);

        // A crash mid-append leaves half a record behind in the zeros.
        let seg = dir.path().join(segment_name(1));
        let full = records_len(&(1..=6).map(|i| entry(i / 6 + 1, i)).collect::<Vec<_>>());
        let mut seventh = Vec::new();
        record(&entry(2, 7), &mut seventh).unwrap();
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(&seventh[..seventh.len() / 2], full).unwrap();
        drop(f);
        let s = Segments::open(dir.path(), None).unwrap();
        let bytes = fs::read(&seg).unwrap();
        assert!(
            bytes[full as usize..].iter().all(|b| *b == 0),
            "torn bytes zeroed"
        );
        assert_eq!(s.last().map(|l| l.index), Some(6));
        s.append(&[entry(2, 7)]).unwrap();
        assert_eq!(indexes(&s, 0, 100), vec![1, 2, 3, 4, 5, 6, 7]);

        // A flipped bit inside the last record is the same: cut off.
        drop(s);
        let mut bytes = fs::read(&seg).unwrap();
        let n = bytes.iter().rposition(|b| *b != 0).unwrap();
        bytes[n - 3] ^= 0x40;
        fs::write(&seg, &bytes).unwrap();
        let s = Segments::open(dir.path(), None).unwrap();
        assert_eq!(s.last().map(|l| l.index), Some(6));
    }

    #[test]
    fn a_bounded_read_stops_at_its_byte_budget_but_returns_at_least_one_entry() {
        let dir = tempfile::tempdir().unwrap();
        let s = Segments::open(dir.path(), None).unwrap();
        s.append(&(1..=9).map(|i| entry(1, i)).collect::<Vec<_>>())
            .unwrap();
        let one = records_len(&[entry(1, 1)]);
        let bounded = |from, to, max| -> Vec<u64> {
            s.read_at_most(from, to, max)
                .unwrap()
                .iter()
                .map(|e| e.log_id.index)
                .collect()
        };
        assert_eq!(bounded(1, 100, 3 * one), vec![1, 2, 3]);
        assert_eq!(bounded(1, 100, 3 * one - 1), vec![1, 2]);
        assert_eq!(bounded(4, 100, 0), vec![4]);
        assert_eq!(bounded(4, 6, u64::MAX), vec![4, 5]);
        assert_eq!(bounded(2, 100, 100 * one), (2..=9).collect::<Vec<_>>());
        assert_eq!(bounded(10, 100, one), Vec::<u64>::new());
    }

    fn records_len(entries: &[Entry]) -> u64 {
        let mut buf = Vec::new();
        for e in entries {
            record(e, &mut buf).unwrap();
        }
        buf.len() as u64
    }

    fn seg_files(dir: &Path) -> Vec<(String, u64)> {
        let mut out: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
            .map(|e| {
                let len = e.metadata().unwrap().len();
                (e.file_name().to_string_lossy().into_owned(), len)
            })
            .collect();
        out.sort();
        out
    }

    fn wait_for_spare(s: &Segments) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !s.spare_ready.load(Ordering::Acquire) {
            assert!(
                std::time::Instant::now() < deadline,
                "no spare segment made"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn appends_go_into_zero_filled_segments_and_zeros_end_them() {
        let dir = tempfile::tempdir().unwrap();
        // A segment an append grew (no spare was ready for it).
        let mut plain = Vec::new();
        for i in 1..=3 {
            record(&entry(1, i), &mut plain).unwrap();
        }
        fs::write(dir.path().join(segment_name(1)), &plain).unwrap();

        let s = Segments::open(dir.path(), None).unwrap();
        wait_for_spare(&s);
        // Growing the plain segment would journal its new size: the append
        // starts a segment from the spare instead.
        s.append(&[entry(1, 4), entry(1, 5)]).unwrap();
        s.append(&[entry(1, 6)]).unwrap();
        let files = seg_files(dir.path());
        assert_eq!(
            files,
            vec![
                (segment_name(1), plain.len() as u64),
                (segment_name(4), SEGMENT_BYTES)
            ]
        );
        // A new spare is made for the next segment.
        wait_for_spare(&s);
        assert_eq!(
            fs::metadata(dir.path().join(SPARE)).unwrap().len(),
            SEGMENT_BYTES
        );

        // Truncating writes zeros over the cut records and keeps the blocks.
        s.truncate(6).unwrap();
        s.append(&[entry(2, 6), entry(2, 7)]).unwrap();
        s.truncate(7).unwrap();
        drop(s);
        let s = Segments::open(dir.path(), None).unwrap();
        assert_eq!(indexes(&s, 0, 100), vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(s.last(), Some(LogId::new(CommittedLeaderId::new(2, 1), 6)));
        assert_eq!(seg_files(dir.path())[1].1, SEGMENT_BYTES);
        let bytes = fs::read(dir.path().join(segment_name(4))).unwrap();
        let used = records_len(&[entry(1, 4), entry(1, 5), entry(2, 6)]) as usize;
        assert!(bytes[used..].iter().all(|b| *b == 0));

        // Garbage after the zero that ends the records, in the last
        // segment, is a torn append: zeroed on open.
        let f = OpenOptions::new()
            .write(true)
            .open(dir.path().join(segment_name(4)))
            .unwrap();
        f.write_all_at(&[0, 0, 0, 0, 9, 9], used as u64).unwrap();
        drop(f);
        drop(s);
        let s = Segments::open(dir.path(), None).unwrap();
        assert_eq!(s.last().map(|l| l.index), Some(6));
        let bytes = fs::read(dir.path().join(segment_name(4))).unwrap();
        assert!(bytes[used..].iter().all(|b| *b == 0));
        s.append(&[entry(2, 7)]).unwrap();
        assert_eq!(indexes(&s, 5, 100), vec![5, 6, 7]);

        // The same in an earlier segment is damage.
        drop(s);
        let f = OpenOptions::new()
            .write(true)
            .open(dir.path().join(segment_name(1)))
            .unwrap();
        f.write_all_at(&[0, 0, 0, 0, 9], plain.len() as u64)
            .unwrap();
        drop(f);
        assert!(Segments::open(dir.path(), None).is_err());
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
