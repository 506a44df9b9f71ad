//! The replicated state machine on `state.redb`, generic over the
//! application that gives commands their meaning.
//!
//! Each batch of committed entries is applied in one redb write transaction
//! together with the applied log id and membership, so state and "how far
//! we got" can never disagree. Apply commits are deferred (no fsync): the
//! log is the durable record, and a crash rolls state back atomically to the
//! last durable commit, from where openraft re-applies the committed log.
//! State is made durable before every snapshot and periodically.

use std::{
    io::{BufReader, BufWriter, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use openraft::{
    storage::RaftStateMachine, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend,
    RaftSnapshotBuilder, StorageIOError,
};
use serde::{de::DeserializeOwned, Serialize};
use storage::{Durability, Store, Table, WriteTxn};
use tokio::sync::watch;

use crate::types::{
    Entry, ItemReply, LogId, OStorageError, Reply, Snapshot, SnapshotMeta, StoredMembership,
    TypeConfig,
};

/// What a node replicates. `apply` must be deterministic: it may read only
/// the command and the transaction, never the clock, randomness or anything
/// else local to the node.
pub trait Application: Send + Sync + 'static {
    type Command: Serialize + DeserializeOwned + Send + 'static;
    type Response: Serialize + DeserializeOwned + Send + 'static;
    /// Something that changed, reported after the transaction commits
    /// (cache invalidation, waking waiters, indexing).
    type Effect: Send + 'static;

    fn apply(
        &self,
        txn: &WriteTxn,
        ctx: &mut ApplyContext<Self::Effect>,
        cmd: Self::Command,
    ) -> storage::Result<Self::Response>;

    /// Called on every node once a batch is committed to `state.redb`.
    fn committed(&self, _applied_index: u64, _effects: Vec<Self::Effect>) {}

    /// Called after a snapshot replaced the whole state.
    fn snapshot_installed(&self, _applied_index: u64) {}

    /// The newest command set this build applies. Raise it in the release
    /// that adds a command (a variant, or a field at the end of one): a node
    /// of an older build cannot decode it and stops applying rather than
    /// skip it and diverge, so such commands wait for every node.
    const VERSION: u32 = 1;

    /// The command set `cmd` needs on every node of the cell.
    fn required_version(_cmd: &Self::Command) -> u32 {
        1
    }

    /// The command that records that every node applies `version`; its
    /// apply must make [`Application::cluster_version`] at least that.
    /// `None`: the application has a single command set.
    fn version_command(_version: u32) -> Option<Self::Command> {
        None
    }

    /// The command set every node is known to apply, as recorded in state
    /// (it only ever rises).
    fn cluster_version(&self, _read: &storage::ReadTxn) -> storage::Result<u32> {
        Ok(1)
    }
}

/// Per-entry context handed to [`Application::apply`].
pub struct ApplyContext<E> {
    /// The log index of the entry being applied.
    pub index: u64,
    effects: Vec<E>,
}

impl<E> ApplyContext<E> {
    pub fn emit(&mut self, effect: E) {
        self.effects.push(effect);
    }
}

pub(crate) const META_APPLIED_NAME: &str = "_raft_applied";
pub(crate) const META_MEMBERSHIP_NAME: &str = "_raft_membership";
const META_APPLIED: Table<Option<LogId>> = Table::new(META_APPLIED_NAME);
const META_MEMBERSHIP: Table<StoredMembership> = Table::new(META_MEMBERSHIP_NAME);
const KEY: &[u8] = b"v";
const CURRENT_META: &str = "current.meta";

fn sm_err(verb: ErrorVerb, e: impl ToString) -> OStorageError {
    StorageIOError::new(
        ErrorSubject::StateMachine,
        verb,
        openraft::AnyError::error(e.to_string()),
    )
    .into()
}

fn snap_err(verb: ErrorVerb, e: impl ToString) -> OStorageError {
    StorageIOError::new(
        ErrorSubject::Snapshot(None),
        verb,
        openraft::AnyError::error(e.to_string()),
    )
    .into()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, OStorageError> + Send + 'static,
) -> Result<T, OStorageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| sm_err(ErrorVerb::Write, e))?
}

/// Where snapshots live and which one is current.
#[derive(Clone)]
struct SnapshotFiles {
    dir: PathBuf,
    current: Arc<Mutex<Option<(SnapshotMeta, PathBuf)>>>,
}

impl SnapshotFiles {
    fn open(dir: &Path) -> storage::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let meta_path = dir.join(CURRENT_META);
        let current = match std::fs::read(&meta_path) {
            Ok(bytes) => {
                let (meta, file): (SnapshotMeta, String) = storage::decode(&bytes)?;
                Some((meta, dir.join(file)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        // Leftovers of interrupted builds or transfers are garbage.
        let keep = current.as_ref().map(|(_, p)| p.clone());
        for entry in std::fs::read_dir(dir)?.flatten() {
            let p = entry.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name != CURRENT_META && Some(&p) != keep.as_ref() {
                let _ = std::fs::remove_file(&p);
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            current: Arc::new(Mutex::new(current)),
        })
    }

    fn temp_path(&self, kind: &str) -> PathBuf {
        let n: u64 = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        self.dir
            .join(format!("{kind}-{n:x}-{:x}.tmp", std::process::id()))
    }

    /// Make `data` (already fsynced, in `dir`) the current snapshot.
    fn promote(&self, meta: &SnapshotMeta, data: &Path) -> std::io::Result<PathBuf> {
        let final_name = format!("snap-{}.bin", meta.snapshot_id);
        let final_path = self.dir.join(&final_name);
        std::fs::rename(data, &final_path)?;
        let bytes = storage::encode(&(meta.clone(), final_name)).map_err(std::io::Error::other)?;
        let tmp = self.temp_path("meta");
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, self.dir.join(CURRENT_META))?;
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        let old = {
            let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
            cur.replace((meta.clone(), final_path.clone()))
        };
        if let Some((_, old_path)) = old {
            if old_path != final_path {
                let _ = std::fs::remove_file(old_path);
            }
        }
        Ok(final_path)
    }

    fn current(&self) -> Option<(SnapshotMeta, PathBuf)> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// What apply has done since the node started: how many transactions and
/// commands, so that their ratio — commands per transaction — shows how
/// well writes are being batched.
#[derive(Debug, Default)]
pub struct ApplyStats {
    transactions: AtomicU64,
    commands: AtomicU64,
}

impl ApplyStats {
    /// Transactions committed by apply.
    pub fn transactions(&self) -> u64 {
        self.transactions.load(Ordering::Relaxed)
    }

    /// Application commands applied (in those transactions).
    pub fn commands(&self) -> u64 {
        self.commands.load(Ordering::Relaxed)
    }
}

/// The state machine store handed to openraft (and, cloned, its snapshot
/// builder).
pub struct StateMachineStore<A: Application> {
    store: Store,
    app: Arc<A>,
    snapshots: SnapshotFiles,
    applied: watch::Sender<u64>,
    stats: Arc<ApplyStats>,
}

impl<A: Application> Clone for StateMachineStore<A> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            app: self.app.clone(),
            snapshots: self.snapshots.clone(),
            applied: self.applied.clone(),
            stats: self.stats.clone(),
        }
    }
}

impl<A: Application> StateMachineStore<A> {
    /// Open `state.redb` and the snapshot directory under `dir`.
    pub fn open(dir: &Path, app: Arc<A>, cache_bytes: usize) -> storage::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let store = Store::open(dir.join("state.redb"), cache_bytes)?;
        let snapshots = SnapshotFiles::open(&dir.join("snapshots"))?;
        let applied = store.read()?.get(META_APPLIED, KEY)?.flatten();
        let (tx, _) = watch::channel(applied.map(|l| l.index).unwrap_or(0));
        Ok(Self {
            store,
            app,
            snapshots,
            applied: tx,
            stats: Arc::default(),
        })
    }

    pub(crate) fn app(&self) -> &A {
        &self.app
    }

    /// Apply's running totals.
    pub fn apply_stats(&self) -> &ApplyStats {
        &self.stats
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Follows the applied log index.
    pub fn applied_index(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Path of the current snapshot file and its metadata, if any.
    pub fn current_snapshot_file(&self) -> Option<(SnapshotMeta, PathBuf)> {
        self.snapshots.current()
    }

    /// A file in the snapshot directory to receive an incoming snapshot.
    pub fn incoming_snapshot_path(&self) -> PathBuf {
        self.snapshots.temp_path("incoming")
    }

    fn apply_batch(&self, entries: Vec<Entry>) -> Result<Vec<Reply>, OStorageError> {
        let txn = self
            .store
            .write()
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        let mut replies = Vec::with_capacity(entries.len());
        let mut effects = Vec::new();
        let mut last: Option<LogId> = None;
        let mut membership: Option<StoredMembership> = None;
        let mut commands = 0u64;
        for entry in entries {
            last = Some(entry.log_id);
            let reply = match entry.payload {
                EntryPayload::Blank => Reply::Internal,
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(entry.log_id), m));
                    Reply::Internal
                }
                EntryPayload::Normal(batch) => {
                    commands += batch.0.len() as u64;
                    let mut items = Vec::with_capacity(batch.0.len());
                    for bytes in &batch.0 {
                        let item = match storage::decode::<A::Command>(bytes) {
                            // Written by a newer build (the leader checks
                            // what it is handed). Skipping it would leave
                            // this node's state apart from the others' for
                            // good; stopping here, with nothing of this
                            // batch committed, lets a newer build of this
                            // node resume from the same entry.
                            Err(e) => {
                                tracing::error!(
                                    index = entry.log_id.index,
                                    build_version = A::VERSION,
                                    error = %e,
                                    "a committed command this build cannot decode: \
                                     stopping; restart this node with the cell's newer build"
                                );
                                return Err(sm_err(
                                    ErrorVerb::Read,
                                    format!(
                                        "entry {} holds a command this build (command version {}) \
                                         cannot decode: {e}",
                                        entry.log_id.index,
                                        A::VERSION
                                    ),
                                ));
                            }
                            Ok(cmd) => {
                                let mut ctx = ApplyContext {
                                    index: entry.log_id.index,
                                    effects: Vec::new(),
                                };
                                let resp = self
                                    .app
                                    .apply(&txn, &mut ctx, cmd)
                                    .map_err(|e| sm_err(ErrorVerb::Write, e))?;
                                effects.append(&mut ctx.effects);
                                ItemReply::App(
                                    storage::encode(&resp)
                                        .map_err(|e| sm_err(ErrorVerb::Write, e))?,
                                )
                            }
                        };
                        items.push(item);
                    }
                    Reply::Batch(items)
                }
            };
            replies.push(reply);
        }
        let put = || -> storage::Result<()> {
            txn.put(META_APPLIED, KEY, &last)?;
            if let Some(m) = &membership {
                txn.put(META_MEMBERSHIP, KEY, m)?;
            }
            txn.commit(Durability::Deferred)
        };
        put().map_err(|e| sm_err(ErrorVerb::Write, e))?;
        self.stats.transactions.fetch_add(1, Ordering::Relaxed);
        self.stats.commands.fetch_add(commands, Ordering::Relaxed);
        let index = last.map(|l| l.index).unwrap_or(0);
        self.app.committed(index, effects);
        self.applied.send_replace(index);
        Ok(replies)
    }

    fn build(&self) -> Result<Snapshot, OStorageError> {
        // Everything the snapshot covers must be durable in state.redb
        // before the log below it may be purged.
        self.store
            .flush()
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        let read = self
            .store
            .read()
            .map_err(|e| snap_err(ErrorVerb::Read, e))?;
        let last = read
            .get(META_APPLIED, KEY)
            .map_err(|e| snap_err(ErrorVerb::Read, e))?
            .flatten();
        let membership = read
            .get(META_MEMBERSHIP, KEY)
            .map_err(|e| snap_err(ErrorVerb::Read, e))?
            .unwrap_or_default();
        let tmp = self.snapshots.temp_path("build");
        let write = || -> storage::Result<()> {
            let file = std::fs::File::create(&tmp)?;
            let mut w = BufWriter::with_capacity(1 << 20, file);
            storage::export_snapshot(&read, &mut w)?;
            let file = w.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            Ok(())
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(snap_err(ErrorVerb::Write, e));
        }
        let snapshot_id = match last {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.leader_id.node_id, l.index),
            None => "0-0-0".to_string(),
        };
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: membership,
            snapshot_id: format!("{snapshot_id}-{}", ulid_like()),
        };
        let path = self
            .snapshots
            .promote(&meta, &tmp)
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        let file = std::fs::File::open(path).map_err(|e| snap_err(ErrorVerb::Read, e))?;
        tracing::info!(snapshot = %meta.snapshot_id, "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        })
    }

    fn install(&self, meta: &SnapshotMeta, mut data: std::fs::File) -> Result<(), OStorageError> {
        data.seek(SeekFrom::Start(0))
            .map_err(|e| snap_err(ErrorVerb::Seek, e))?;
        // Keep our own copy first: the handle may belong to someone else.
        let tmp = self.snapshots.temp_path("install");
        let mut copy = || -> std::io::Result<()> {
            let mut out = std::fs::File::create(&tmp)?;
            std::io::copy(&mut data, &mut out)?;
            out.sync_all()
        };
        if let Err(e) = copy() {
            let _ = std::fs::remove_file(&tmp);
            return Err(snap_err(ErrorVerb::Write, e));
        }
        let import = || -> storage::Result<()> {
            let txn = self.store.write()?;
            let reader = BufReader::with_capacity(1 << 20, std::fs::File::open(&tmp)?);
            storage::import_snapshot(&txn, reader)?;
            txn.put(META_APPLIED, KEY, &meta.last_log_id)?;
            txn.put(META_MEMBERSHIP, KEY, &meta.last_membership)?;
            txn.commit(Durability::Immediate)
        };
        if let Err(e) = import() {
            let _ = std::fs::remove_file(&tmp);
            return Err(snap_err(ErrorVerb::Write, e));
        }
        self.snapshots
            .promote(meta, &tmp)
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        let index = meta.last_log_id.map(|l| l.index).unwrap_or(0);
        tracing::info!(snapshot = %meta.snapshot_id, index, "installed snapshot");
        self.app.snapshot_installed(index);
        self.applied.send_replace(index);
        Ok(())
    }
}

fn ulid_like() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{now:x}")
}

impl<A: Application> RaftSnapshotBuilder<TypeConfig> for StateMachineStore<A> {
    async fn build_snapshot(&mut self) -> Result<Snapshot, OStorageError> {
        let this = self.clone();
        blocking(move || this.build()).await
    }
}

impl<A: Application> RaftStateMachine<TypeConfig> for StateMachineStore<A> {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), OStorageError> {
        let r = self.store.read().map_err(|e| sm_err(ErrorVerb::Read, e))?;
        let applied = r
            .get(META_APPLIED, KEY)
            .map_err(|e| sm_err(ErrorVerb::Read, e))?
            .flatten();
        let membership = r
            .get(META_MEMBERSHIP, KEY)
            .map_err(|e| sm_err(ErrorVerb::Read, e))?
            .unwrap_or_default();
        Ok((applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Reply>, OStorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Inline on openraft's state-machine task: the commit is deferred
        // (no fsync), so a batch costs CPU only, and a thread hop per batch
        // showed up as latency under load.
        self.apply_batch(entries.into_iter().collect())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, OStorageError> {
        let path = self.snapshots.temp_path("incoming");
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), OStorageError> {
        let data = snapshot.into_std().await;
        let this = self.clone();
        let meta = meta.clone();
        blocking(move || this.install(&meta, data)).await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, OStorageError> {
        let Some((meta, path)) = self.snapshots.current() else {
            return Ok(None);
        };
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| snap_err(ErrorVerb::Read, e))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(file),
        }))
    }
}
