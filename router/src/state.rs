//! What a router instance holds: the directory, one pool per cell, the
//! HTTP client, limits and metrics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use edge::rate_limit::RateLimiter;

use crate::config::RouterConfig;
use crate::directory::{Directory, Region};
use crate::error::RouterError;
use crate::metrics::{Metrics, NodeLabels};
use crate::upstream::{self, CellPool, Client};

/// Remembered email → home cell answers of login fan-outs; cleared when full
/// (a miss only costs one fan-out).
const LOGIN_CACHE_MAX: usize = 100_000;

pub struct RouterState {
    pub cfg: RouterConfig,
    pub client: Client,
    /// TLS for client-connection-owned upstream connections.
    pub affinity_tls: Option<tokio_rustls::TlsConnector>,
    /// TLS for long polls' shared HTTP/2 connections.
    pub multiplex_tls: Option<tokio_rustls::TlsConnector>,
    pub directory: RwLock<Directory>,
    pools: RwLock<HashMap<String, Arc<CellPool>>>,
    pub limiter: RateLimiter,
    pub metrics: Metrics,
    pub ops_token: String,
    login_cells: Mutex<HashMap<String, String>>,
    /// Requests being forwarded (long polls aside).
    inflight: AtomicUsize,
}

/// One request being forwarded, counted until dropped.
pub struct RequestSlot<'a>(&'a AtomicUsize);

impl Drop for RequestSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl RouterState {
    /// Room for one more request, or `None` while `max_inflight` are being
    /// forwarded: queueing more would only make every one of them late.
    pub fn enter(&self) -> Option<RequestSlot<'_>> {
        if self.inflight.fetch_add(1, Ordering::Relaxed) >= self.cfg.max_inflight {
            self.inflight.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(RequestSlot(&self.inflight))
    }

    pub fn new(cfg: RouterConfig, ops_token: String) -> Result<Arc<Self>, RouterError> {
        let client = upstream::build_client(cfg.ca.as_deref())?;
        let affinity_tls = upstream::upstream_tls(cfg.ca.as_deref(), b"http/1.1")?;
        let multiplex_tls = upstream::upstream_tls(cfg.ca.as_deref(), b"h2")?;
        let mut directory = Directory::load(&cfg.directory_file())?;
        for (name, spec) in &cfg.regions {
            let region = Region::from_spec(name, spec.clone())?;
            let unchanged = directory
                .get(name)
                .is_some_and(|r| r.spec() == region.spec());
            if !unchanged {
                directory.put(region)?;
            }
        }
        let state = Arc::new(RouterState {
            limiter: RateLimiter::new(cfg.limits),
            cfg,
            client,
            affinity_tls,
            multiplex_tls,
            directory: RwLock::new(directory),
            pools: RwLock::new(HashMap::new()),
            metrics: Metrics::new(),
            ops_token,
            login_cells: Mutex::new(HashMap::new()),
            inflight: AtomicUsize::new(0),
        });
        state.rebuild_pools();
        Ok(state)
    }

    /// Re-derives the pools from the directory, keeping what is known about
    /// nodes that stay.
    pub fn rebuild_pools(&self) {
        let dir = self.directory.read().unwrap_or_else(|e| e.into_inner());
        let mut pools = self.pools.write().unwrap_or_else(|e| e.into_inner());
        let mut next = HashMap::new();
        for region in dir.regions() {
            let pool = CellPool::new(region, &self.metrics);
            if let Some(old) = pools.get(&region.cell) {
                pool.inherit(old);
            }
            next.insert(region.cell.clone(), Arc::new(pool));
        }
        *pools = next;
    }

    pub fn pool(&self, cell: &str) -> Option<Arc<CellPool>> {
        self.pools
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(cell)
            .cloned()
    }

    pub fn all_pools(&self) -> Vec<Arc<CellPool>> {
        self.pools
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn login_cell(&self, email: &str) -> Option<String> {
        self.login_cells.lock().ok()?.get(email).cloned()
    }

    pub fn remember_login(&self, email: String, cell: String) {
        if let Ok(mut m) = self.login_cells.lock() {
            if m.len() >= LOGIN_CACHE_MAX {
                m.clear();
            }
            m.insert(email, cell);
        }
    }

    /// Cells' leaders name their voters: nodes added to a cell after this
    /// router was told about it join its pool (and the saved directory).
    fn add_discovered_nodes(&self, found: Vec<(String, Vec<String>)>) {
        let new: Vec<(String, Vec<String>)> = {
            let dir = self.directory.read().unwrap_or_else(|e| e.into_inner());
            found
                .iter()
                .map(|(cell, voters)| (cell.clone(), dir.unlisted(cell, voters)))
                .filter(|(_, urls)| !urls.is_empty())
                .collect()
        };
        if new.is_empty() {
            return;
        }
        {
            let mut dir = self.directory.write().unwrap_or_else(|e| e.into_inner());
            for (cell, urls) in &new {
                match dir.add_nodes(cell, urls) {
                    Ok(()) => {
                        tracing::info!(cell = %cell, ?urls, "nodes discovered from the cell's leader")
                    }
                    Err(e) => {
                        tracing::warn!(cell = %cell, error = %e, "a leader named nodes that make no base URL")
                    }
                }
            }
        }
        self.rebuild_pools();
    }

    /// Health-checks every node of every cell, forever.
    pub async fn health_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.cfg.health_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let timeout = self
            .cfg
            .health_interval
            .max(Duration::from_secs(1))
            .min(Duration::from_secs(2));
        loop {
            tick.tick().await;
            let pools = self.all_pools();
            let checks = pools.iter().flat_map(|pool| {
                pool.nodes.iter().enumerate().map(|(i, node)| {
                    let pool = pool.clone();
                    let client = self.client.clone();
                    let url = node.url.clone();
                    async move {
                        let (h, voters) = upstream::check(&client, &url, timeout).await;
                        pool.record_health(i, h);
                        (pool.cell.clone(), voters)
                    }
                })
            });
            let found = futures::future::join_all(checks).await;
            self.add_discovered_nodes(found);
            for pool in &pools {
                for node in &pool.nodes {
                    let labels = NodeLabels {
                        cell: pool.cell.clone(),
                        node: node.url.clone(),
                    };
                    self.metrics
                        .node_healthy
                        .get_or_create(&labels)
                        .set(node.is_healthy() as i64);
                    self.metrics
                        .node_leader
                        .get_or_create(&labels)
                        .set(node.is_leader() as i64);
                }
            }
        }
    }
}
