//! A typed view of one redb database file.

use std::{cell::RefCell, marker::PhantomData, ops::RangeBounds, path::Path, sync::Arc};

use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use serde::{de::DeserializeOwned, Serialize};

use crate::{codec, Result};

/// How hard a commit pushes its data to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync before the commit returns.
    Immediate,
    /// Visible to readers at once, made durable by the next immediate commit;
    /// a crash rolls the file back to the last durable commit, atomically.
    Deferred,
}

/// A table whose keys are ordered bytes and whose values are `V` encoded by
/// [`codec`]. Integer keys should be written big-endian so byte order is
/// numeric order.
pub struct Table<V> {
    name: &'static str,
    _value: PhantomData<fn() -> V>,
}

impl<V> Clone for Table<V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<V> Copy for Table<V> {}

impl<V> Table<V> {
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            _value: PhantomData,
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    fn def(&self) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
        TableDefinition::new(self.name)
    }
}

pub(crate) fn raw_def(name: &str) -> TableDefinition<'_, &'static [u8], &'static [u8]> {
    TableDefinition::new(name)
}

/// One redb database file, shared by cheap clones.
#[derive(Clone)]
pub struct Store {
    db: Arc<redb::Database>,
}

impl Store {
    /// Open (or create) the database at `path` with a page cache of
    /// `cache_bytes`.
    pub fn open(path: impl AsRef<Path>, cache_bytes: usize) -> Result<Self> {
        let db = redb::Database::builder()
            .set_cache_size(cache_bytes)
            .create(path.as_ref())?;
        Ok(Self { db: Arc::new(db) })
    }

    pub fn read(&self) -> Result<ReadTxn> {
        Ok(ReadTxn {
            inner: self.db.begin_read()?,
        })
    }

    /// Start a write transaction. redb admits one writer at a time: keep it
    /// short and never hold it across an `.await`.
    pub fn write(&self) -> Result<WriteTxn> {
        let txn = self.db.begin_write()?;
        Ok(WriteTxn {
            inner: OpenTables::new(txn, |_| RefCell::new(Vec::new())),
        })
    }

    /// Make every earlier deferred commit durable.
    pub fn flush(&self) -> Result<()> {
        self.write()?.commit(Durability::Immediate)
    }
}

/// A consistent read-only view.
pub struct ReadTxn {
    pub(crate) inner: redb::ReadTransaction,
}

/// An atomic batch of writes; dropped without [`WriteTxn::commit`] it is
/// rolled back.
pub struct WriteTxn {
    inner: OpenTables,
}

type RawTableMut<'txn> = redb::Table<'txn, &'static [u8], &'static [u8]>;

/// The tables a write transaction has opened, by name.
///
/// redb's `open_table` looks the table up in the table tree and closing it
/// writes its root back: an order's apply touches a dozen tables a few
/// times each, and opening per call cost about a tenth of a loaded cell's
/// CPU. Opened once per transaction, they are closed before the commit.
type TablesOf<'txn> = RefCell<Vec<(String, RawTableMut<'txn>)>>;

self_cell::self_cell!(
    struct OpenTables {
        owner: redb::WriteTransaction,
        #[not_covariant]
        dependent: TablesOf,
    }
);

fn missing_ok<T>(r: std::result::Result<T, redb::TableError>) -> Result<Option<T>> {
    match r {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn last_key<T: ReadableTable<&'static [u8], &'static [u8]>>(
    table: &T,
    range: impl RangeBounds<Vec<u8>>,
) -> Result<Option<Vec<u8>>> {
    let start = range.start_bound().map(|v| v.as_slice());
    let end = range.end_bound().map(|v| v.as_slice());
    match table.range::<&[u8]>((start, end))?.next_back() {
        Some(item) => Ok(Some(item?.0.value().to_vec())),
        None => Ok(None),
    }
}

fn collect_range<V: DeserializeOwned, T: ReadableTable<&'static [u8], &'static [u8]>>(
    table: &T,
    range: impl RangeBounds<Vec<u8>>,
    limit: usize,
) -> Result<Vec<(Vec<u8>, V)>> {
    let start = range.start_bound().map(|v| v.as_slice());
    let end = range.end_bound().map(|v| v.as_slice());
    let mut out = Vec::new();
    for item in table.range::<&[u8]>((start, end))? {
        if out.len() >= limit {
            break;
        }
        let (k, v) = item?;
        out.push((k.value().to_vec(), codec::decode(v.value())?));
    }
    Ok(out)
}

impl ReadTxn {
    pub fn get<V: DeserializeOwned>(&self, table: Table<V>, key: &[u8]) -> Result<Option<V>> {
        let Some(t) = missing_ok(self.inner.open_table(table.def()))? else {
            return Ok(None);
        };
        match t.get(key)? {
            Some(v) => Ok(Some(codec::decode(v.value())?)),
            None => Ok(None),
        }
    }

    /// Up to `limit` entries in key order within `range`.
    pub fn range<V: DeserializeOwned>(
        &self,
        table: Table<V>,
        range: impl RangeBounds<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, V)>> {
        match missing_ok(self.inner.open_table(table.def()))? {
            Some(t) => collect_range(&t, range, limit),
            None => Ok(Vec::new()),
        }
    }

    /// The last key within `range`, without reading its value.
    pub fn last_key_in<V>(
        &self,
        table: Table<V>,
        range: impl RangeBounds<Vec<u8>>,
    ) -> Result<Option<Vec<u8>>> {
        match missing_ok(self.inner.open_table(table.def()))? {
            Some(t) => last_key(&t, range),
            None => Ok(None),
        }
    }

    /// The last entry of a table, if any.
    pub fn last<V: DeserializeOwned>(&self, table: Table<V>) -> Result<Option<(Vec<u8>, V)>> {
        let Some(t) = missing_ok(self.inner.open_table(table.def()))? else {
            return Ok(None);
        };
        let last = match t.last()? {
            Some((k, v)) => Some((k.value().to_vec(), codec::decode(v.value())?)),
            None => None,
        };
        Ok(last)
    }

    /// Number of entries and stored bytes (keys + values) across all tables.
    pub fn stats(&self) -> Result<(u64, u64)> {
        let mut entries = 0;
        let mut bytes = 0;
        for handle in self.inner.list_tables()? {
            let t = self.inner.open_table(raw_def(handle.name()))?;
            for item in t.iter()? {
                let (k, v) = item?;
                entries += 1;
                bytes += (k.value().len() + v.value().len()) as u64;
            }
        }
        Ok((entries, bytes))
    }
}

impl WriteTxn {
    /// Runs `f` on the table named `name`, opened once per transaction.
    /// `f` must not call back into this transaction.
    fn with_table<R>(
        &self,
        name: &str,
        f: impl FnOnce(&mut RawTableMut<'_>) -> Result<R>,
    ) -> Result<R> {
        self.inner.with_dependent(|txn, tables| {
            let mut tables = tables.borrow_mut();
            let i = match tables.iter().position(|(n, _)| n == name) {
                Some(i) => i,
                None => {
                    tables.push((name.to_string(), txn.open_table(raw_def(name))?));
                    tables.len() - 1
                }
            };
            f(&mut tables[i].1)
        })
    }

    pub fn get<V: DeserializeOwned>(&self, table: Table<V>, key: &[u8]) -> Result<Option<V>> {
        self.with_table(table.name, |t| match t.get(key)? {
            Some(v) => Ok(Some(codec::decode(v.value())?)),
            None => Ok(None),
        })
    }

    pub fn put<V: Serialize>(&self, table: Table<V>, key: &[u8], value: &V) -> Result<()> {
        let bytes = codec::encode(value)?;
        self.with_table(table.name, |t| {
            t.insert(key, bytes.as_slice())?;
            Ok(())
        })
    }

    /// Remove a key; true when it existed.
    pub fn delete<V>(&self, table: Table<V>, key: &[u8]) -> Result<bool> {
        self.with_table(table.name, |t| Ok(t.remove(key)?.is_some()))
    }

    pub fn range<V: DeserializeOwned>(
        &self,
        table: Table<V>,
        range: impl RangeBounds<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, V)>> {
        self.with_table(table.name, |t| collect_range(t, range, limit))
    }

    /// The last key within `range`, without reading its value.
    pub fn last_key_in<V>(
        &self,
        table: Table<V>,
        range: impl RangeBounds<Vec<u8>>,
    ) -> Result<Option<Vec<u8>>> {
        self.with_table(table.name, |t| last_key(t, range))
    }

    /// Remove every key in `range`; returns how many were removed.
    pub fn delete_range<V>(
        &self,
        table: Table<V>,
        range: impl RangeBounds<Vec<u8>>,
    ) -> Result<u64> {
        let start = range.start_bound().map(|v| v.as_slice());
        let end = range.end_bound().map(|v| v.as_slice());
        self.with_table(table.name, |t| {
            let mut n = 0u64;
            t.retain_in::<&[u8], _>((start, end), |_, _| {
                n += 1;
                false
            })?;
            Ok(n)
        })
    }

    /// Insert raw bytes into the table named `name` (snapshot import).
    pub(crate) fn put_raw(&self, name: &str, key: &[u8], value: &[u8]) -> Result<()> {
        self.with_table(name, |t| {
            t.insert(key, value)?;
            Ok(())
        })
    }

    /// Drop every table (snapshot import, before refilling them).
    pub(crate) fn delete_all_tables(&self) -> Result<()> {
        self.inner.with_dependent(|txn, tables| {
            tables.borrow_mut().clear();
            let names: Vec<String> = txn.list_tables()?.map(|h| h.name().to_string()).collect();
            for name in names {
                txn.delete_table(raw_def(&name))?;
            }
            Ok(())
        })
    }

    pub fn commit(self, durability: Durability) -> Result<()> {
        let d = match durability {
            Durability::Immediate => redb::Durability::Immediate,
            Durability::Deferred => redb::Durability::None,
        };
        // Closes the open tables, writing their roots back, first.
        let mut txn = self.inner.into_owner();
        txn.set_durability(d)?;
        txn.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Table<String> = Table::new("t");

    #[test]
    fn put_get_range_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s.redb"), 1 << 20).unwrap();
        assert_eq!(store.read().unwrap().get(T, b"a").unwrap(), None);
        let w = store.write().unwrap();
        for (k, v) in [("a", "1"), ("b", "2"), ("c", "3")] {
            w.put(T, k.as_bytes(), &v.to_string()).unwrap();
        }
        w.commit(Durability::Immediate).unwrap();
        let r = store.read().unwrap();
        assert_eq!(r.get(T, b"b").unwrap().as_deref(), Some("2"));
        let got = r.range(T, b"b".to_vec().., 10).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(r.last(T).unwrap().unwrap().1, "3");
        assert_eq!(
            r.last_key_in(T, ..b"c".to_vec()).unwrap(),
            Some(b"b".to_vec())
        );
        assert_eq!(r.last_key_in(T, b"d".to_vec()..).unwrap(), None);
        const NEVER_WRITTEN: Table<String> = Table::new("never");
        assert_eq!(r.last_key_in(NEVER_WRITTEN, ..).unwrap(), None);
        drop(r);

        let w = store.write().unwrap();
        assert_eq!(w.last_key_in(T, ..).unwrap(), Some(b"c".to_vec()));
        assert_eq!(w.delete_range(T, ..b"c".to_vec()).unwrap(), 2);
        assert_eq!(w.last_key_in(T, ..b"c".to_vec()).unwrap(), None);
        assert!(!w.delete(T, b"zz").unwrap());
        drop(w); // rolled back
        assert_eq!(store.read().unwrap().range(T, .., 10).unwrap().len(), 3);

        let w = store.write().unwrap();
        assert_eq!(w.delete_range(T, ..b"c".to_vec()).unwrap(), 2);
        w.commit(Durability::Deferred).unwrap();
        store.flush().unwrap();
        assert_eq!(store.read().unwrap().range(T, .., 10).unwrap().len(), 1);
    }
}
