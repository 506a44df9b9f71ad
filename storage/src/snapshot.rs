//! Consistent export and import of a whole database as a framed stream.
//!
//! Layout: the magic `MCSNAP01`, then records, each starting with a tag byte:
//! - `T` table: `u16` name length, name bytes;
//! - `E` entry in the current table: `u32` key length, key, `u32` value
//!   length, value;
//! - `Z` end: `u64` entry count, `u32` CRC-32 of every byte before the `Z`.
//!
//! Import writes into an open write transaction and only succeeds once the
//! end record has been read and checked, so a truncated or corrupted stream
//! leaves the transaction to be dropped: nothing changes.

use std::io::{self, Read, Write};

use redb::{ReadableTable, TableHandle};

use crate::{
    db::{raw_def, ReadTxn, WriteTxn},
    Result, StorageError,
};

const MAGIC: &[u8; 8] = b"MCSNAP01";
const TAG_TABLE: u8 = b'T';
const TAG_ENTRY: u8 = b'E';
const TAG_END: u8 = b'Z';
const MAX_NAME: usize = 1024;
const MAX_KEY: usize = 16 * 1024 * 1024;
const MAX_VALUE: usize = 256 * 1024 * 1024;

/// What a snapshot stream held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SnapshotSummary {
    pub tables: u64,
    pub entries: u64,
    pub bytes: u64,
}

struct CrcWriter<W> {
    inner: W,
    crc: crc32fast::Hasher,
    written: u64,
}

impl<W: Write> CrcWriter<W> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.crc.update(bytes);
        self.written += bytes.len() as u64;
        self.inner.write_all(bytes)
    }
}

/// Stream every table of `txn` to `out`. Returns what was written.
pub fn export_snapshot<W: Write>(txn: &ReadTxn, out: W) -> Result<SnapshotSummary> {
    let mut w = CrcWriter {
        inner: out,
        crc: crc32fast::Hasher::new(),
        written: 0,
    };
    let mut summary = SnapshotSummary::default();
    w.put(MAGIC)?;
    let mut names: Vec<String> = txn
        .inner
        .list_tables()?
        .map(|h| h.name().to_string())
        .collect();
    names.sort();
    for name in names {
        summary.tables += 1;
        w.put(&[TAG_TABLE])?;
        w.put(&(name.len() as u16).to_le_bytes())?;
        w.put(name.as_bytes())?;
        let table = txn.inner.open_table(raw_def(&name))?;
        for item in table.iter()? {
            let (k, v) = item?;
            let (k, v) = (k.value(), v.value());
            w.put(&[TAG_ENTRY])?;
            w.put(&(k.len() as u32).to_le_bytes())?;
            w.put(k)?;
            w.put(&(v.len() as u32).to_le_bytes())?;
            w.put(v)?;
            summary.entries += 1;
        }
    }
    let crc = w.crc.clone().finalize();
    w.put(&[TAG_END])?;
    w.put(&summary.entries.to_le_bytes())?;
    w.put(&crc.to_le_bytes())?;
    w.inner.flush()?;
    summary.bytes = w.written;
    Ok(summary)
}

struct CrcReader<R> {
    inner: R,
    crc: crc32fast::Hasher,
    read: u64,
}

fn corrupt(msg: impl Into<String>) -> StorageError {
    StorageError::CorruptSnapshot(msg.into())
}

impl<R: Read> CrcReader<R> {
    fn exact(&mut self, buf: &mut [u8]) -> Result<()> {
        self.inner.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => corrupt(format!("truncated at byte {}", self.read)),
            _ => StorageError::Io(e),
        })?;
        self.crc.update(buf);
        self.read += buf.len() as u64;
        Ok(())
    }

    fn u8(&mut self) -> Result<u8> {
        let mut b = [0u8; 1];
        self.exact(&mut b)?;
        Ok(b[0])
    }

    fn u16(&mut self) -> Result<u16> {
        let mut b = [0u8; 2];
        self.exact(&mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    fn u32(&mut self) -> Result<u32> {
        let mut b = [0u8; 4];
        self.exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> Result<u64> {
        let mut b = [0u8; 8];
        self.exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Read a length-prefixed blob without trusting the length for the
    /// allocation: a corrupt prefix fails on EOF instead of exhausting memory.
    fn blob(&mut self, max: usize, what: &str) -> Result<Vec<u8>> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(corrupt(format!("{what} length {len} exceeds {max}")));
        }
        let mut buf = Vec::with_capacity(len.min(64 * 1024));
        let got = (&mut self.inner).take(len as u64).read_to_end(&mut buf)?;
        if got != len {
            return Err(corrupt(format!("truncated {what} at byte {}", self.read)));
        }
        self.crc.update(&buf);
        self.read += len as u64;
        Ok(buf)
    }
}

/// Walk a snapshot stream, calling `sink(table, key, value)` per entry, and
/// check the end record. Any error means the stream must not be trusted.
fn walk<R: Read>(
    input: R,
    mut sink: impl FnMut(&str, &[u8], &[u8]) -> Result<()>,
) -> Result<SnapshotSummary> {
    let mut r = CrcReader {
        inner: input,
        crc: crc32fast::Hasher::new(),
        read: 0,
    };
    let mut magic = [0u8; 8];
    r.exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(corrupt("not a marketcell snapshot (bad magic)"));
    }
    let mut summary = SnapshotSummary::default();
    let mut table: Option<String> = None;
    loop {
        let before_tag = r.crc.clone();
        match r.u8()? {
            TAG_TABLE => {
                let len = r.u16()? as usize;
                if len == 0 || len > MAX_NAME {
                    return Err(corrupt(format!("bad table name length {len}")));
                }
                let mut name = vec![0u8; len];
                r.exact(&mut name)?;
                let name = String::from_utf8(name).map_err(|_| corrupt("table name not UTF-8"))?;
                summary.tables += 1;
                table = Some(name);
            }
            TAG_ENTRY => {
                let Some(t) = table.as_deref() else {
                    return Err(corrupt("entry before any table"));
                };
                let k = r.blob(MAX_KEY, "key")?;
                let v = r.blob(MAX_VALUE, "value")?;
                sink(t, &k, &v)?;
                summary.entries += 1;
            }
            TAG_END => {
                let expected_crc = before_tag.finalize();
                let count = r.u64()?;
                let crc = r.u32()?;
                if count != summary.entries {
                    return Err(corrupt(format!(
                        "end record counts {count} entries, stream had {}",
                        summary.entries
                    )));
                }
                if crc != expected_crc {
                    return Err(corrupt("checksum mismatch"));
                }
                let mut extra = [0u8; 1];
                if r.inner.read(&mut extra)? != 0 {
                    return Err(corrupt("trailing bytes after end record"));
                }
                summary.bytes = r.read;
                return Ok(summary);
            }
            other => return Err(corrupt(format!("unknown record tag {other:#04x}"))),
        }
    }
}

/// Check a stream end to end without writing anything.
pub fn verify_snapshot<R: Read>(input: R) -> Result<SnapshotSummary> {
    walk(input, |_, _, _| Ok(()))
}

/// Replace every table in `txn` with the stream's contents. On error the
/// caller must drop `txn` (which rolls everything back).
pub fn import_snapshot<R: Read>(txn: &WriteTxn, input: R) -> Result<SnapshotSummary> {
    txn.delete_all_tables()?;
    let summary = walk(input, |t, k, v| txn.put_raw(t, k, v))?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Durability, Store, Table};

    const A: Table<String> = Table::new("a");
    const B: Table<u64> = Table::new("b");

    fn filled() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("x.redb"), 1 << 20).unwrap();
        let w = store.write().unwrap();
        for i in 0..500u64 {
            w.put(A, format!("k{i:04}").as_bytes(), &format!("value {i}"))
                .unwrap();
            w.put(B, &i.to_be_bytes(), &(i * 3)).unwrap();
        }
        w.commit(Durability::Immediate).unwrap();
        (dir, store)
    }

    #[test]
    fn export_import_roundtrip_replaces_everything() {
        let (_d1, src) = filled();
        let mut buf = Vec::new();
        let s = export_snapshot(&src.read().unwrap(), &mut buf).unwrap();
        assert_eq!(s.entries, 1000);
        assert_eq!(verify_snapshot(buf.as_slice()).unwrap().entries, 1000);

        let dir = tempfile::tempdir().unwrap();
        let dst = Store::open(dir.path().join("y.redb"), 1 << 20).unwrap();
        let w = dst.write().unwrap();
        w.put(A, b"stale", &"gone".to_string()).unwrap();
        w.commit(Durability::Immediate).unwrap();

        let w = dst.write().unwrap();
        import_snapshot(&w, buf.as_slice()).unwrap();
        w.commit(Durability::Immediate).unwrap();
        let r = dst.read().unwrap();
        assert_eq!(r.get(A, b"stale").unwrap(), None);
        assert_eq!(r.get(A, b"k0042").unwrap().as_deref(), Some("value 42"));
        assert_eq!(r.get(B, &7u64.to_be_bytes()).unwrap(), Some(21));
    }

    #[test]
    fn truncated_or_corrupted_stream_changes_nothing() {
        let (_d1, src) = filled();
        let mut buf = Vec::new();
        export_snapshot(&src.read().unwrap(), &mut buf).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let dst = Store::open(dir.path().join("y.redb"), 1 << 20).unwrap();
        let w = dst.write().unwrap();
        w.put(A, b"keep", &"me".to_string()).unwrap();
        w.commit(Durability::Immediate).unwrap();

        let mut bad_inputs: Vec<Vec<u8>> = vec![
            buf[..buf.len() / 2].to_vec(),
            buf[..buf.len() - 1].to_vec(),
            Vec::new(),
            b"garbage garbage garbage".to_vec(),
        ];
        for pos in [9usize, 100, buf.len() / 3, buf.len() - 6] {
            let mut flipped = buf.clone();
            flipped[pos] ^= 0x5a;
            bad_inputs.push(flipped);
        }
        let mut huge_len = buf.clone();
        // first entry's key length: magic(8) + tag(1) + u16 + "a" + tag(1)
        huge_len[8 + 1 + 2 + 1 + 1..8 + 1 + 2 + 1 + 1 + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        bad_inputs.push(huge_len);
        let mut trailing = buf.clone();
        trailing.push(0);
        bad_inputs.push(trailing);

        for bad in bad_inputs {
            assert!(verify_snapshot(bad.as_slice()).is_err());
            let w = dst.write().unwrap();
            assert!(import_snapshot(&w, bad.as_slice()).is_err());
            drop(w);
            let r = dst.read().unwrap();
            assert_eq!(r.get(A, b"keep").unwrap().as_deref(), Some("me"));
            assert_eq!(r.get(A, b"k0001").unwrap(), None);
        }
    }
}
