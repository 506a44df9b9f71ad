//! The Raft log: entries in append-only segment files (`segments`), the
//! vote, the purge point and the node id in a small redb file (`log.redb`).
//!
//! All writes (appends, vote, truncate, purge) go through one writer thread,
//! in order. The thread drains whatever queued up while the previous fsync
//! ran: consecutive appends become one write and one `fdatasync`, so
//! concurrent writers share fsyncs and no fsync ever blocks an async worker.

use std::{
    fmt::Debug,
    ops::{Bound, RangeBounds},
    path::Path,
    sync::{mpsc, Arc, Mutex},
    thread,
};

use openraft::{
    storage::{LogFlushed, RaftLogStorage},
    LogState, OptionalSend, RaftLogReader, StorageIOError,
};
use storage::{Durability, Store, Table};
use tokio::sync::oneshot;

use crate::segments::Segments;
use crate::types::{Entry, LogId, NodeId, OStorageError, TypeConfig, Vote};

/// Where entries lived before they moved to segment files; read once to
/// carry an older data directory over.
const LOGS: Table<Entry> = Table::new("raft_log");
const VOTE: Table<Vote> = Table::new("raft_vote");
const LOG_ID: Table<Option<LogId>> = Table::new("raft_log_ids");
const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"purged";
/// How many queued operations one pass of the writer may carry.
const MAX_BATCH: usize = 4096;

enum Op {
    Append(Vec<Entry>),
    Vote(Vote),
    Truncate(u64),
    Purge(LogId),
}

struct Job {
    op: Op,
    done: oneshot::Sender<Result<(), String>>,
}

/// The log store and (as a cheap clone) its reader.
#[derive(Clone)]
pub struct LogStore {
    meta: Store,
    segments: Segments,
    writer: mpsc::Sender<Job>,
    /// The latest committed log id, persisted whenever the metadata is
    /// written anyway (vote, purge) rather than with an fsync of its own:
    /// openraft only uses it to re-apply faster after a restart, and a
    /// stale value is safe.
    committed: Arc<Mutex<Option<Option<LogId>>>>,
}

/// Writes `put` and the latest committed id to the metadata, durably.
fn write_meta(
    meta: &Store,
    committed: Option<Option<LogId>>,
    put: impl FnOnce(&storage::WriteTxn) -> storage::Result<()>,
) -> storage::Result<()> {
    let txn = meta.write()?;
    if let Some(c) = committed {
        txn.put(LOG_ID, KEY_COMMITTED, &c)?;
    }
    put(&txn)?;
    txn.commit(Durability::Immediate)
}

fn run_jobs(
    meta: &Store,
    segments: &Segments,
    jobs: &mut [Job],
    committed: Option<Option<LogId>>,
) -> Result<(), String> {
    let mut pending: Vec<Entry> = Vec::new();
    let flush = |pending: &mut Vec<Entry>| -> Result<(), String> {
        let r = segments.append(pending).map_err(|e| e.to_string());
        pending.clear();
        r
    };
    for job in jobs.iter_mut() {
        match &mut job.op {
            Op::Append(entries) => pending.append(entries),
            Op::Vote(v) => {
                flush(&mut pending)?;
                write_meta(meta, committed, |t| t.put(VOTE, KEY_VOTE, v))
                    .map_err(|e| e.to_string())?;
            }
            Op::Truncate(from) => {
                flush(&mut pending)?;
                segments.truncate(*from).map_err(|e| e.to_string())?;
            }
            Op::Purge(upto) => {
                flush(&mut pending)?;
                // Recorded before any file goes: a crash in between leaves
                // segments that the next open removes.
                write_meta(meta, committed, |t| t.put(LOG_ID, KEY_PURGED, &Some(*upto)))
                    .map_err(|e| e.to_string())?;
                segments.purge(upto.index).map_err(|e| e.to_string())?;
            }
        }
    }
    flush(&mut pending)
}

fn writer_loop(
    meta: Store,
    segments: Segments,
    rx: mpsc::Receiver<Job>,
    committed: Arc<Mutex<Option<Option<LogId>>>>,
) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let latest = *committed.lock().unwrap_or_else(|p| p.into_inner());
        let result = run_jobs(&meta, &segments, &mut jobs, latest);
        if let Err(e) = &result {
            tracing::error!(error = %e, ops = jobs.len(), "raft log write failed");
        }
        for job in jobs {
            let _ = job.done.send(result.clone());
        }
    }
}

fn io_err(e: impl ToString) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Moves entries an older version kept in `log.redb` into segments, once.
fn carry_over(meta: &Store, segments: &Segments) -> storage::Result<()> {
    let old = meta.read()?.range(LOGS, .., usize::MAX)?;
    if old.is_empty() {
        return Ok(());
    }
    if segments.is_empty() {
        let entries: Vec<Entry> = old.into_iter().map(|(_, e)| e).collect();
        // One append per run of consecutive indexes.
        let mut start = 0;
        for i in 1..=entries.len() {
            let breaks =
                i == entries.len() || entries[i].log_id.index != entries[i - 1].log_id.index + 1;
            if breaks {
                segments.append(&entries[start..i])?;
                start = i;
            }
        }
    }
    let txn = meta.write()?;
    txn.delete_range(LOGS, ..)?;
    txn.commit(Durability::Immediate)
}

impl LogStore {
    /// Opens the log whose metadata is the redb file `path`; its segments
    /// live in the directory beside it (`log.segments` for `log.redb`).
    pub fn open(path: impl AsRef<Path>) -> storage::Result<Self> {
        let path = path.as_ref();
        let meta = Store::open(path, 4 * 1024 * 1024)?;
        let purged = meta.read()?.get(LOG_ID, KEY_PURGED)?.flatten();
        let segments = Segments::open(&segments_dir(path), purged.map(|p| p.index))?;
        carry_over(&meta, &segments)?;
        let (tx, rx) = mpsc::channel();
        let committed = Arc::new(Mutex::new(None));
        let (m, s, c) = (meta.clone(), segments.clone(), committed.clone());
        thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer_loop(m, s, rx, c))?;
        Ok(Self {
            meta,
            segments,
            writer: tx,
            committed,
        })
    }

    async fn submit(&self, op: Op) -> Result<(), std::io::Error> {
        let (done, rx) = oneshot::channel();
        self.writer
            .send(Job { op, done })
            .map_err(|_| io_err("log writer thread is gone"))?;
        rx.await
            .map_err(|_| io_err("log writer thread is gone"))?
            .map_err(io_err)
    }

    fn read_log_id(&self, k: &[u8]) -> Result<Option<LogId>, OStorageError> {
        let r = self
            .meta
            .read()
            .map_err(|e| StorageIOError::read_logs(&e))?;
        Ok(r.get(LOG_ID, k)
            .map_err(|e| StorageIOError::read_logs(&e))?
            .flatten())
    }
}

/// The segment directory of the log whose metadata is `meta_path`.
pub fn segments_dir(meta_path: &Path) -> std::path::PathBuf {
    meta_path.with_extension("segments")
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, OStorageError> {
        let from = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        self.segments
            .read(from, to)
            .map_err(|e| StorageIOError::read_logs(&e).into())
    }

    /// What one append to a follower carries. openraft 0.9 gives an append
    /// one heartbeat interval to arrive, be written and be answered, and
    /// retries the same range when it does not; a follower far behind
    /// on large entries got 512 of them at once (and past 64 MiB the peer
    /// port refuses the body), so it never caught up.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, OStorageError> {
        self.segments
            .read_at_most(start, end, MAX_APPEND_BYTES)
            .map_err(|e| StorageIOError::read_logs(&e).into())
    }
}

/// The most log bytes one append to a follower carries (at least one
/// entry, however large).
const MAX_APPEND_BYTES: u64 = 1024 * 1024;

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, OStorageError> {
        let purged = self.read_log_id(KEY_PURGED)?;
        let last = match (self.segments.last(), purged) {
            (Some(l), Some(p)) if p.index > l.index => Some(p),
            (l, p) => l.or(p),
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), OStorageError> {
        self.submit(Op::Vote(*vote))
            .await
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, OStorageError> {
        let r = self
            .meta
            .read()
            .map_err(|e| StorageIOError::read_vote(&e))?;
        Ok(r.get(VOTE, KEY_VOTE)
            .map_err(|e| StorageIOError::read_vote(&e))?)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), OStorageError> {
        *self.committed.lock().unwrap_or_else(|p| p.into_inner()) = Some(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, OStorageError> {
        if let Some(c) = *self.committed.lock().unwrap_or_else(|p| p.into_inner()) {
            return Ok(c);
        }
        self.read_log_id(KEY_COMMITTED)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), OStorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        // Durable (and readable) before we report completion: openraft
        // acknowledges these entries to the leader on the strength of it.
        let result = self.submit(Op::Append(entries)).await;
        let failed = result.as_ref().err().map(StorageIOError::write_logs);
        callback.log_io_completed(result);
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), OStorageError> {
        self.submit(Op::Truncate(log_id.index))
            .await
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), OStorageError> {
        self.submit(Op::Purge(log_id))
            .await
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }
}

/// Create a log for node `id` holding only `vote` (restore, before Raft
/// starts), so the node's next election runs in a later term.
pub(crate) fn seed(path: &Path, id: NodeId, vote: Vote) -> storage::Result<()> {
    let store = Store::open(path, 1024 * 1024)?;
    let w = store.write()?;
    w.put(NODE_ID, b"id", &id)?;
    w.put(VOTE, KEY_VOTE, &vote)?;
    w.commit(Durability::Immediate)
}

const NODE_ID: Table<NodeId> = Table::new("raft_node_id");

/// The node id, kept with the log so a data directory cannot be started
/// under a different identity by mistake.
pub fn check_node_id(store: &LogStore, id: NodeId) -> storage::Result<Result<(), NodeId>> {
    if let Some(existing) = store.meta.read()?.get(NODE_ID, b"id")? {
        return Ok(if existing == id {
            Ok(())
        } else {
            Err(existing)
        });
    }
    let w = store.meta.write()?;
    w.put(NODE_ID, b"id", &id)?;
    w.commit(Durability::Immediate)?;
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Command;
    use openraft::{CommittedLeaderId, EntryPayload};

    #[tokio::test]
    async fn entries_of_an_older_log_redb_are_carried_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.redb");
        {
            let meta = Store::open(&path, 1 << 20).unwrap();
            let txn = meta.write().unwrap();
            for i in 3..=7u64 {
                let e = Entry {
                    log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
                    payload: EntryPayload::Normal(Command(Vec::new())),
                };
                txn.put(LOGS, &i.to_be_bytes(), &e).unwrap();
            }
            txn.commit(Durability::Immediate).unwrap();
        }
        for _ in 0..2 {
            // The previous store's writer thread lets go of the file once
            // it sees the store dropped.
            let mut tries = 0;
            let mut log = loop {
                match LogStore::open(&path) {
                    Ok(log) => break log,
                    Err(e) if tries < 100 => {
                        tries += 1;
                        tracing::debug!(error = %e, "log still open");
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await
                    }
                    Err(e) => panic!("{e}"),
                }
            };
            let got = log.try_get_log_entries(0..100).await.unwrap();
            let idx: Vec<u64> = got.iter().map(|e| e.log_id.index).collect();
            assert_eq!(idx, vec![3, 4, 5, 6, 7]);
            assert_eq!(
                log.get_log_state()
                    .await
                    .unwrap()
                    .last_log_id
                    .map(|l| l.index),
                Some(7)
            );
            assert!(log
                .meta
                .read()
                .unwrap()
                .range(LOGS, .., 10)
                .unwrap()
                .is_empty());
        }
    }
}
