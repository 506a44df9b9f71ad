//! Cache-aside access to hot read models (vendors, products) through the
//! foyer hybrid cache.
//!
//! Invalidation runs inside the apply path on every node, before the
//! applied index advances, so a reader that waited for `X-Cell-Index: N`
//! never sees a cached value older than N. A snapshot install bumps an
//! epoch that is part of every key: all older entries become unreachable
//! at once (and age out).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use storage::ReadCache;

pub struct ReadModels {
    cache: Option<Arc<ReadCache>>,
    epoch: AtomicU64,
    /// Per vendor, how many times its menu changed: part of its menu pages'
    /// keys, so that one change retires every page (any limit, any cursor)
    /// without listing them.
    menus: Mutex<HashMap<String, u64>>,
}

impl ReadModels {
    /// `None` disables caching (every read goes to redb).
    pub fn new(cache: Option<Arc<ReadCache>>) -> Self {
        Self {
            cache,
            epoch: AtomicU64::new(0),
            menus: Mutex::default(),
        }
    }

    /// The cache key of a page of `vendor`'s menu. Read after waiting for
    /// freshness: a change's version bump precedes its applied index.
    pub fn menu_key(&self, vendor: &str, limit: usize, cursor: Option<&str>) -> String {
        let version = self
            .menus
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(vendor)
            .copied()
            .unwrap_or(0);
        format!("menu/{vendor}/{version}/{limit}/{}", cursor.unwrap_or(""))
    }

    /// A product of `vendor` was added, changed or removed: every cached
    /// page of its menu is retired.
    pub fn menu_changed(&self, vendor: &str) {
        *self
            .menus
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(vendor.to_string())
            .or_default() += 1;
    }

    pub fn cache(&self) -> Option<&Arc<ReadCache>> {
        self.cache.as_ref()
    }

    fn key(&self, key: &str) -> Vec<u8> {
        format!("{}/{key}", self.epoch.load(Ordering::Acquire)).into_bytes()
    }

    /// The cached bytes for `key`, else `load()` (from redb) cached.
    pub async fn get_or_load<E>(
        &self,
        key: &str,
        load: impl FnOnce() -> Result<Option<Vec<u8>>, E>,
    ) -> Result<Option<Vec<u8>>, E>
    where
        E: From<storage::StorageError>,
    {
        let Some(cache) = &self.cache else {
            return load();
        };
        let k = self.key(key);
        if let Some(v) = cache.get(&k).await? {
            return Ok(Some(v));
        }
        let ticket = cache.ticket();
        let loaded = load()?;
        if let Some(v) = &loaded {
            cache.fill(ticket, k, v.clone());
        }
        Ok(loaded)
    }

    /// The cached bytes for each of `keys`; the misses all rendered by
    /// one `load(misses)` (one redb read for a whole batch) and cached.
    pub async fn get_many_or_load<E>(
        &self,
        keys: &[String],
        load: impl FnOnce(&[usize]) -> Result<Vec<Option<Vec<u8>>>, E>,
    ) -> Result<Vec<Option<Vec<u8>>>, E>
    where
        E: From<storage::StorageError>,
    {
        let Some(cache) = &self.cache else {
            let all: Vec<usize> = (0..keys.len()).collect();
            return load(&all);
        };
        let mut found = vec![None; keys.len()];
        let mut misses = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            match cache.get(&self.key(key)).await? {
                Some(v) => found[i] = Some(v),
                None => misses.push(i),
            }
        }
        if misses.is_empty() {
            return Ok(found);
        }
        let ticket = cache.ticket();
        let loaded = load(&misses)?;
        for (i, v) in misses.into_iter().zip(loaded) {
            if let Some(v) = &v {
                cache.fill(ticket, self.key(&keys[i]), v.clone());
            }
            found[i] = v;
        }
        Ok(found)
    }

    pub fn invalidate(&self, key: &str) {
        if let Some(cache) = &self.cache {
            cache.invalidate(&self.key(key));
        }
    }

    /// Everything cached so far is stale (e.g. a snapshot replaced state).
    pub fn invalidate_all(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if let Some(cache) = &self.cache {
            // Bumps the fill generation so in-flight fills are dropped too.
            cache.invalidate(b"");
        }
    }
}
