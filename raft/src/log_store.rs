//! The Raft log in its own redb file (`log.redb`).
//!
//! All writes (appends, vote, committed, truncate, purge) go through one
//! writer thread, in order. The thread drains whatever queued up while the
//! previous fsync ran and commits it as one durable transaction, so
//! concurrent writers share fsyncs and no fsync ever blocks an async worker.

use std::{
    fmt::Debug,
    ops::RangeBounds,
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

use crate::types::{Entry, LogId, NodeId, OStorageError, TypeConfig, Vote};

const LOGS: Table<Entry> = Table::new("raft_log");
const VOTE: Table<Vote> = Table::new("raft_vote");
const LOG_ID: Table<Option<LogId>> = Table::new("raft_log_ids");
const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"purged";
/// How many queued operations one transaction may carry.
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
    store: Store,
    writer: mpsc::Sender<Job>,
    /// The latest committed log id, persisted with the next write batch
    /// rather than with an fsync of its own: openraft only uses it to
    /// re-apply faster after a restart, and a stale value is safe.
    committed: Arc<Mutex<Option<Option<LogId>>>>,
}

fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn write_batch(
    store: &Store,
    jobs: &[Job],
    committed: Option<Option<LogId>>,
) -> storage::Result<()> {
    let txn = store.write()?;
    if let Some(c) = committed {
        txn.put(LOG_ID, KEY_COMMITTED, &c)?;
    }
    for job in jobs {
        match &job.op {
            Op::Append(entries) => {
                for e in entries {
                    txn.put(LOGS, &key(e.log_id.index), e)?;
                }
            }
            Op::Vote(v) => txn.put(VOTE, KEY_VOTE, v)?,
            Op::Truncate(from) => {
                txn.delete_range(LOGS, key(*from).to_vec()..)?;
            }
            Op::Purge(upto) => {
                txn.delete_range(LOGS, ..=key(upto.index).to_vec())?;
                txn.put(LOG_ID, KEY_PURGED, &Some(*upto))?;
            }
        }
    }
    txn.commit(Durability::Immediate)
}

fn writer_loop(
    store: Store,
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
        let pending_committed = committed.lock().unwrap_or_else(|p| p.into_inner()).take();
        let result = write_batch(&store, &jobs, pending_committed).map_err(|e| e.to_string());
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

impl LogStore {
    pub fn open(path: impl AsRef<Path>) -> storage::Result<Self> {
        let store = Store::open(path, 64 * 1024 * 1024)?;
        let (tx, rx) = mpsc::channel();
        let s = store.clone();
        let committed = Arc::new(Mutex::new(None));
        let c = committed.clone();
        thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer_loop(s, rx, c))?;
        Ok(Self {
            store,
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
            .store
            .read()
            .map_err(|e| StorageIOError::read_logs(&e))?;
        Ok(r.get(LOG_ID, k)
            .map_err(|e| StorageIOError::read_logs(&e))?
            .flatten())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, OStorageError> {
        let start = range.start_bound().map(|i| key(*i).to_vec());
        let end = range.end_bound().map(|i| key(*i).to_vec());
        let r = self
            .store
            .read()
            .map_err(|e| StorageIOError::read_logs(&e))?;
        let rows = r
            .range(LOGS, (start, end), usize::MAX)
            .map_err(|e| StorageIOError::read_logs(&e))?;
        Ok(rows.into_iter().map(|(_, e)| e).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, OStorageError> {
        let purged = self.read_log_id(KEY_PURGED)?;
        let r = self
            .store
            .read()
            .map_err(|e| StorageIOError::read_logs(&e))?;
        let last = r
            .last(LOGS)
            .map_err(|e| StorageIOError::read_logs(&e))?
            .map(|(_, e)| e.log_id);
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last.or(purged),
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
            .store
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
    if let Some(existing) = store.store.read()?.get(NODE_ID, b"id")? {
        return Ok(if existing == id {
            Ok(())
        } else {
            Err(existing)
        });
    }
    let w = store.store.write()?;
    w.put(NODE_ID, b"id", &id)?;
    w.commit(Durability::Immediate)?;
    Ok(Ok(()))
}
