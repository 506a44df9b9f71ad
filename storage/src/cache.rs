//! The hybrid read cache: a foyer memory tier sized in bytes in front of a
//! local disk tier, used cache-aside for hot read models.
//!
//! The cache is never the source of truth. Two rules keep it honest:
//! - the disk tier is opened without recovery, so an entry deleted before a
//!   restart can never come back after it (a restart starts cold on disk);
//! - a fill races with invalidations through a generation counter: a value
//!   read before an invalidation is dropped instead of cached (see [`ReadCache::fill`]).

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering},
};

use foyer::{
    BlockEngineConfig, DeviceBuilder, FsDeviceBuilder, HybridCache, HybridCacheBuilder,
    HybridCachePolicy, RecoverMode,
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
    hits: AtomicU64,
    misses: AtomicU64,
}

const BLOCK_BYTES: usize = 4 * 1024 * 1024;

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
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    /// Look a key up in memory, then on disk.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let found = self
            .inner
            .get(key)
            .await
            .map_err(|e| StorageError::Cache(e.to_string()))?;
        match found {
            Some(entry) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Ok(Some(entry.value().clone()))
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
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
        drop(self.inner.insert(key, value));
        if self.generation.load(Ordering::Acquire) != ticket.0 {
            self.inner.remove(probe.as_slice());
        }
    }

    /// Drop a key (called on every node when a change to it is applied).
    pub fn invalidate(&self, key: &[u8]) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.inner.remove(key);
    }

    /// Drop everything, e.g. after a snapshot replaced the whole state.
    pub async fn clear(&self) -> Result<()> {
        self.generation.fetch_add(1, Ordering::AcqRel);
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
