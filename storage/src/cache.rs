//! The hybrid read cache: a foyer memory tier sized in bytes in front of a
//! local disk tier, used cache-aside for hot read models.
//!
//! The cache is never the source of truth. Three rules keep it honest:
//! - the disk tier is opened without recovery, so an entry deleted before a
//!   restart can never come back after it (a restart starts cold on disk);
//! - a fill races with invalidations through a generation counter: a value
//!   read before an invalidation is dropped instead of cached (see [`ReadCache::fill`]);
//! - every value is stamped with the generation its fill started at, and a
//!   value found (in memory or on disk) is used only if its key was not
//!   invalidated after that stamp. foyer's delete does not stop a disk
//!   write already under way, so a deleted value can reappear on disk, and
//!   a fill or promotion racing an invalidation can put one back in memory
//!   after its removal; the stamp catches both. Disk hits are promoted to
//!   memory here, not by foyer.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
};

use foyer::{
    BlockEngineConfig, DeviceBuilder, FsDeviceBuilder, HybridCache, HybridCacheBuilder,
    HybridCachePolicy, Load, RecoverMode,
};

use crate::{Result, StorageError};

/// Sizes and place of the cache.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub dir: PathBuf,
    /// Memory tier budget in bytes (keys + values).
    pub memory_bytes: usize,
    /// Disk tier budget in bytes.
    pub disk_bytes: usize,
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub memory_bytes: u64,
    pub memory_entries: u64,
    pub disk_write_bytes: u64,
}

/// Proof that a fill started before a point in time; see [`ReadCache::fill`].
#[derive(Debug, Clone, Copy)]
pub struct FillTicket(u64);

pub struct ReadCache {
    inner: HybridCache<Vec<u8>, Vec<u8>>,
    generation: AtomicU64,
    invalidated: Mutex<Invalidated>,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// When keys were last invalidated (see the module docs).
#[derive(Default)]
struct Invalidated {
    /// The generation of each key's last invalidation, by a 64-bit hash of
    /// the key (two keys sharing one only cost a miss); bounded by
    /// `MAX_TRACKED`.
    at: HashMap<u64, u64>,
    /// Values stamped before this are not trusted: raised when `at` is
    /// forgotten for want of room, and by `clear`.
    floor: u64,
}

fn key_hash(key: &[u8]) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

const BLOCK_BYTES: usize = 4 * 1024 * 1024;
/// Keys whose last invalidation is remembered; past it the memory is
/// dropped and every older disk value distrusted instead.
const MAX_TRACKED: usize = 1 << 20;
const STAMP: usize = 8;

fn stamped(stamp: u64, value: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(STAMP + value.len());
    out.extend_from_slice(&stamp.to_le_bytes());
    out.extend_from_slice(&value);
    out
}

/// The stamp and the value of a cached entry; `None` for bytes too short
/// to hold a stamp (a damaged disk block).
fn unstamp(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let (stamp, value) = bytes.split_first_chunk::<STAMP>()?;
    Some((u64::from_le_bytes(*stamp), value))
}

impl ReadCache {
    pub async fn open(cfg: &CacheConfig) -> Result<Self> {
        std::fs::create_dir_all(&cfg.dir)?;
        let disk = cfg.disk_bytes.max(4 * BLOCK_BYTES);
        let device = FsDeviceBuilder::new(&cfg.dir)
            .with_capacity(disk)
            .build()
            .map_err(|e| StorageError::Cache(e.to_string()))?;
        let inner = HybridCacheBuilder::new()
            .with_name("read-cache")
            .with_policy(HybridCachePolicy::WriteOnEviction)
            .memory(cfg.memory_bytes.max(1))
            .with_weighter(|k: &Vec<u8>, v: &Vec<u8>| k.len() + v.len() + 48)
            .storage()
            .with_engine_config(BlockEngineConfig::new(device).with_block_size(BLOCK_BYTES))
            // Never recover: without it a deleted entry could reappear from
            // an old block after a restart.
            .with_recover_mode(RecoverMode::None)
            .build()
            .await
            .map_err(|e| StorageError::Cache(e.to_string()))?;
        Ok(Self {
            inner,
            generation: AtomicU64::new(0),
            invalidated: Mutex::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    /// Look a key up in memory, then on disk.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        // A fill or a promotion racing an invalidation can leave a value in
        // memory that its removal missed: memory hits are checked too.
        let memory = self
            .inner
            .memory()
            .get(key)
            .and_then(|e| unstamp(e.value()).map(|(s, v)| (s, v.to_vec())));
        if let Some((stamp, v)) = memory {
            if !self.stale(key, stamp) {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(Some(v));
            }
            self.inner.memory().remove(key);
        }
        let loaded = self
            .inner
            .storage()
            .load(key)
            .await
            .map_err(|e| StorageError::Cache(e.to_string()))?;
        let bytes = match loaded {
            Load::Entry { value, .. } => Some(value),
            Load::Piece { piece, .. } => Some(piece.value().clone()),
            _ => None,
        };
        let found = bytes.as_deref().and_then(unstamp).and_then(|(stamp, v)| {
            if self.stale(key, stamp) {
                self.inner.storage().delete(key);
                None
            } else {
                Some((stamp, v.to_vec()))
            }
        });
        match found {
            Some((stamp, v)) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                self.promote(stamp, key.to_vec(), v.clone());
                Ok(Some(v))
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
        }
    }

    /// Whether a value stamped `stamp` may predate `key`'s last
    /// invalidation.
    fn stale(&self, key: &[u8], stamp: u64) -> bool {
        let inv = self.invalidated.lock().unwrap_or_else(|p| p.into_inner());
        stamp < inv.floor || inv.at.get(&key_hash(key)).is_some_and(|&at| at > stamp)
    }

    /// Puts a checked disk hit in memory, and takes it out again should an
    /// invalidation have come in between.
    fn promote(&self, stamp: u64, key: Vec<u8>, value: Vec<u8>) {
        let probe = key.clone();
        drop(self.inner.insert(key, stamped(stamp, value)));
        if self.stale(&probe, stamp) {
            self.inner.remove(probe.as_slice());
        }
    }

    /// Take before reading the source of truth for a later [`Self::fill`].
    pub fn ticket(&self) -> FillTicket {
        FillTicket(self.generation.load(Ordering::Acquire))
    }

    /// Cache a value read from the source of truth after `ticket` was taken.
    ///
    /// If any invalidation happened since the ticket, the value may be stale
    /// and is removed again. Either the invalidation's remove runs after our
    /// insert, or its generation bump is visible to our check: both end with
    /// the key absent.
    pub fn fill(&self, ticket: FillTicket, key: Vec<u8>, value: Vec<u8>) {
        let probe = key.clone();
        drop(self.inner.insert(key, stamped(ticket.0, value)));
        if self.generation.load(Ordering::Acquire) != ticket.0 {
            self.inner.remove(probe.as_slice());
        }
    }

    /// Drop a key (called on every node when a change to it is applied).
    pub fn invalidate(&self, key: &[u8]) {
        let at = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        // Recorded before the removal, so a read that ends after the
        // removal sees it.
        {
            let mut inv = self.invalidated.lock().unwrap_or_else(|p| p.into_inner());
            let h = key_hash(key);
            if inv.at.len() >= MAX_TRACKED && !inv.at.contains_key(&h) {
                inv.at.clear();
                inv.floor = inv.floor.max(at);
            }
            inv.at.insert(h, at);
        }
        self.inner.remove(key);
    }

    /// Drop everything, e.g. after a snapshot replaced the whole state.
    pub async fn clear(&self) -> Result<()> {
        let at = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        {
            let mut inv = self.invalidated.lock().unwrap_or_else(|p| p.into_inner());
            inv.at.clear();
            inv.floor = inv.floor.max(at);
        }
        self.inner
            .clear()
            .await
            .map_err(|e| StorageError::Cache(e.to_string()))
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            memory_bytes: self.inner.memory().usage() as u64,
            memory_entries: self.inner.memory().entries() as u64,
            disk_write_bytes: self.inner.statistics().disk_write_bytes() as u64,
        }
    }

    pub async fn close(&self) -> Result<()> {
        self.inner
            .close()
            .await
            .map_err(|e| StorageError::Cache(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &std::path::Path) -> CacheConfig {
        CacheConfig {
            dir: dir.to_path_buf(),
            memory_bytes: 64 * 1024,
            disk_bytes: 32 * 1024 * 1024,
        }
    }

    #[tokio::test]
    async fn hit_miss_and_invalidate() {
        let dir = tempfile::tempdir().unwrap();
        let c = ReadCache::open(&cfg(dir.path())).await.unwrap();
        assert_eq!(c.get(b"a").await.unwrap(), None);
        let t = c.ticket();
        c.fill(t, b"a".to_vec(), b"1".to_vec());
        assert_eq!(c.get(b"a").await.unwrap().as_deref(), Some(&b"1"[..]));
        c.invalidate(b"a");
        assert_eq!(c.get(b"a").await.unwrap(), None);
        let s = c.stats();
        assert_eq!((s.hits, s.misses), (1, 2));
        c.close().await.unwrap();
    }

    #[tokio::test]
    async fn stale_fill_after_invalidation_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let c = ReadCache::open(&cfg(dir.path())).await.unwrap();
        let t = c.ticket(); // reader starts, reads old value...
        c.invalidate(b"k"); // ...a write lands meanwhile...
        c.fill(t, b"k".to_vec(), b"old".to_vec()); // ...and the old value must not stick
        assert_eq!(c.get(b"k").await.unwrap(), None);
        c.close().await.unwrap();
    }

    #[tokio::test]
    async fn memory_tier_is_bounded_in_bytes_and_spills_to_disk() {
        let dir = tempfile::tempdir().unwrap();
        let c = ReadCache::open(&cfg(dir.path())).await.unwrap();
        for i in 0..200u32 {
            c.fill(c.ticket(), i.to_be_bytes().to_vec(), vec![7u8; 4096]);
        }
        assert!(c.stats().memory_bytes <= 64 * 1024);
        c.close().await.unwrap();
    }

    /// Fills other keys until `key` has been evicted and written to disk.
    async fn push_to_disk(c: &ReadCache, key: &[u8]) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut i = 0u32;
        loop {
            for _ in 0..50 {
                i += 1;
                let k = [b"filler-".as_slice(), &i.to_be_bytes()].concat();
                c.fill(c.ticket(), k, vec![3u8; 4096]);
            }
            let on_disk = matches!(c.inner.storage().load(key).await, Ok(Load::Entry { .. }));
            if on_disk && c.inner.memory().get(key).is_none() {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "never reached disk");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Invalidates `key`, then puts back in memory the value `old` read
    /// before the invalidation, stamped as its fill would have been.
    fn stale_after_invalidation(c: &ReadCache, key: &[u8]) {
        let before = c.ticket();
        c.invalidate(key);
        drop(
            c.inner
                .insert(key.to_vec(), stamped(before.0, b"old".to_vec())),
        );
    }

    #[tokio::test]
    async fn a_value_put_back_in_memory_after_its_invalidation_is_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let c = ReadCache::open(&cfg(dir.path())).await.unwrap();
        // As a fill or promotion that raced the invalidation's removal.
        stale_after_invalidation(&c, b"k");
        assert_eq!(c.get(b"k").await.unwrap(), None);
        assert!(c.inner.memory().get(b"k".as_slice()).is_none());
        c.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_deleted_value_that_reappears_on_disk_is_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let c = ReadCache::open(&cfg(dir.path())).await.unwrap();
        // A value read before its key's invalidation lands on disk all the
        // same, as a disk write under way when the delete came does.
        stale_after_invalidation(&c, b"k");
        push_to_disk(&c, b"k").await;
        assert_eq!(c.get(b"k").await.unwrap(), None);
        assert!(c.inner.memory().get(b"k".as_slice()).is_none());
        assert!(!matches!(
            c.inner.storage().load(b"k".as_slice()).await,
            Ok(Load::Entry { .. })
        ));

        // A value filled after the invalidation is served from disk and
        // promoted to memory.
        c.fill(c.ticket(), b"k".to_vec(), b"new".to_vec());
        push_to_disk(&c, b"k").await;
        assert_eq!(c.get(b"k").await.unwrap().as_deref(), Some(&b"new"[..]));
        assert!(c.inner.memory().get(b"k".as_slice()).is_some());
        c.close().await.unwrap();
    }

    #[tokio::test]
    async fn deleted_entries_do_not_come_back_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let c = ReadCache::open(&cfg(dir.path())).await.unwrap();
            for i in 0..100u32 {
                c.fill(c.ticket(), i.to_be_bytes().to_vec(), vec![1u8; 4096]);
            }
            c.invalidate(&5u32.to_be_bytes());
            c.close().await.unwrap();
        }
        let c = ReadCache::open(&cfg(dir.path())).await.unwrap();
        assert_eq!(c.get(&5u32.to_be_bytes()).await.unwrap(), None);
        c.close().await.unwrap();
    }
}
