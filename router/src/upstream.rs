//! The cells as the router sees them: one pool per cell with its nodes'
//! health, the current leader, outlier ejection, a retry budget and the
//! cell's published token keys.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use edge::token::PublicKeys;
use http_body_util::BodyExt as _;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::directory::Region;
use crate::error::RouterError;
use crate::metrics::{CellMetrics, Metrics};

pub type Client =
    hyper_util::client::legacy::Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>;

/// Most client-connection-owned upstream connections per cell; beyond
/// that, requests share the pool.
pub const MAX_AFFINITY_CONNECTIONS: usize = 2048;

/// Consecutive failures after which a node is taken out of rotation.
const EJECT_AFTER_FAILURES: u32 = 3;
/// Longest ejection; each ejection in a row doubles it from one second.
const MAX_EJECTION: Duration = Duration::from_secs(30);
/// Refetching a cell's keys because of an unknown `kid` happens at most this
/// often, so forged `kid`s cannot turn the router into a JWKS flooder.
const KEY_REFRESH_INTERVAL: Duration = Duration::from_secs(5);
/// Largest JWK set accepted from a cell.
const MAX_JWKS_BYTES: usize = 64 * 1024;

/// TLS for the router's own connections to `https` nodes, offering one
/// protocol by ALPN: `http/1.1` for client-connection-owned connections,
/// `h2` for long polls' shared ones.
pub fn upstream_tls(
    ca: Option<&Path>,
    alpn: &[u8],
) -> Result<Option<tokio_rustls::TlsConnector>, RouterError> {
    let Some(ca) = ca else {
        return Ok(None);
    };
    let mut cfg = edge::tls::client_config(ca, None).map_err(|e| RouterError::Tls(e.0))?;
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok(Some(tokio_rustls::TlsConnector::from(Arc::new(cfg))))
}

/// The HTTP client for cells, trusting the internal CA for `https://`
/// nodes: keep-alive pools of HTTP/1.1 connections (HTTP/2 over TLS by
/// ALPN). Long polls go over `multiplex`'s connections instead.
pub fn build_client(ca: Option<&Path>) -> Result<Client, RouterError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_millis(1000)));
    http.set_keepalive(Some(Duration::from_secs(30)));
    let mut tls = match ca {
        Some(ca) => edge::tls::client_config(ca, None).map_err(|e| RouterError::Tls(e.0))?,
        // Without the internal CA only plain-HTTP nodes can be reached.
        None => rustls::ClientConfig::builder_with_provider(edge::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| RouterError::Tls(e.to_string()))?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
    };
    // The connector negotiates the protocols it was built for.
    tls.alpn_protocols.clear();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    let mut builder = hyper_util::client::legacy::Client::builder(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_max_idle_per_host(4096)
        .pool_idle_timeout(edge::tls::CLIENT_POOL_IDLE);
    Ok(builder.build(https))
}

/// One node of a cell.
#[derive(Debug)]
pub struct Node {
    pub url: String,
    /// `url` split once, for building request URIs without parsing.
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    healthy: AtomicBool,
    /// A health check has answered (until then `healthy` is a guess).
    checked: AtomicBool,
    leader: AtomicBool,
    failures: AtomicU32,
    failed_checks: AtomicU32,
    ejections: AtomicU32,
    /// Milliseconds since the pool's epoch until which the node is ejected.
    ejected_until: AtomicU64,
    /// The node's shared HTTP/2 connection for long polls.
    pub(crate) multiplexed: crate::multiplex::Slot,
    /// `url` hashed once, for `CellPool::pick_sticky`.
    sticky_hash: u64,
}

impl Node {
    pub(crate) fn new(url: String) -> Self {
        // The directory only admits URLs with scheme and authority.
        let parts = url.parse::<http::Uri>().map(|u| u.into_parts()).ok();
        let (scheme, authority) = parts
            .and_then(|p| Some((p.scheme?, p.authority?)))
            .unwrap_or((
                http::uri::Scheme::HTTP,
                http::uri::Authority::from_static("invalid.invalid"),
            ));
        Node {
            sticky_hash: crate::sticky::node_hash(&url),
            url,
            scheme,
            authority,
            // Optimistic until the first check: a freshly added region
            // should take traffic at once.
            healthy: AtomicBool::new(true),
            checked: AtomicBool::new(false),
            leader: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            failed_checks: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            multiplexed: Default::default(),
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Whether a health check has answered for this node yet.
    pub fn is_checked(&self) -> bool {
        self.checked.load(Ordering::Relaxed)
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }
}

/// Outcome of one health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Ready {
        leader: bool,
    },
    /// Nothing listens there: the process is gone.
    Refused,
    /// No good answer in time (busy, not ready, network trouble).
    Failed,
}

/// Failed checks in a row before a node that still accepts connections is
/// taken out of rotation: one slow answer under load is not an outage.
const FAILED_CHECKS_TO_DOWN: u32 = 2;

/// A cell: its nodes and per-cell accounting.
#[derive(Debug)]
pub struct CellPool {
    pub cell: String,
    pub region: String,
    pub nodes: Vec<Node>,
    pub metrics: CellMetrics,
    /// Client-connection-owned upstream connections open to this cell.
    pub affinity_open: Arc<AtomicUsize>,
    epoch: Instant,
    next: AtomicUsize,
    /// Requests on their way to this cell (for drain reports).
    pub in_flight: AtomicI64,
    /// Milliseconds since `epoch` of the last request sent.
    last_request: AtomicU64,
    /// Thousandths of a retry, so that fractions add up exactly.
    retry_millis: Mutex<u64>,
    keys: Mutex<KeyCache>,
    /// Serialises key fetches so a burst of unknown `kid`s fetches once.
    key_fetch: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct KeyCache {
    keys: Option<Arc<PublicKeys>>,
    fetched_at: Option<Instant>,
}

/// Retries may add at most a fifth of the cell's request rate…
const RETRY_MILLIS_PER_REQUEST: u64 = 200;
/// …on top of a small reserve, so a quiet cell can still retry.
const RETRY_RESERVE: u64 = 20;

impl CellPool {
    pub fn new(region: &Region, metrics: &Metrics) -> Self {
        CellPool {
            cell: region.cell.clone(),
            region: region.name.clone(),
            nodes: region.nodes.iter().cloned().map(Node::new).collect(),
            metrics: CellMetrics::new(metrics, &region.cell),
            affinity_open: Arc::new(AtomicUsize::new(0)),
            epoch: Instant::now(),
            next: AtomicUsize::new(0),
            in_flight: AtomicI64::new(0),
            last_request: AtomicU64::new(0),
            retry_millis: Mutex::new(RETRY_RESERVE * 1000),
            keys: Mutex::new(KeyCache::default()),
            key_fetch: tokio::sync::Mutex::new(()),
        }
    }

    /// Takes over what was learned about nodes that are still configured
    /// (and the keys), when a region is redefined.
    pub fn inherit(&self, old: &CellPool) {
        for n in &self.nodes {
            if let Some(o) = old.nodes.iter().find(|o| o.url == n.url) {
                n.healthy.store(o.is_healthy(), Ordering::Relaxed);
                n.checked.store(o.is_checked(), Ordering::Relaxed);
                n.leader.store(o.is_leader(), Ordering::Relaxed);
            }
        }
        if old.cell == self.cell {
            let keys = old.keys.lock().map(|k| k.keys.clone()).unwrap_or(None);
            if let Ok(mut mine) = self.keys.lock() {
                mine.keys = keys;
            }
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn available(&self, n: &Node, now_ms: u64) -> bool {
        n.is_healthy() && n.ejected_until.load(Ordering::Relaxed) <= now_ms
    }

    /// Chooses a node: the leader for writes when it is available, otherwise
    /// round-robin over available nodes, avoiding `tried` when possible.
    /// `None` when no node is available at all.
    pub fn pick(&self, prefer_leader: bool, tried: &[usize]) -> Option<usize> {
        let now = self.now_ms();
        if prefer_leader {
            if let Some(i) =
                self.nodes.iter().enumerate().position(|(i, n)| {
                    n.is_leader() && self.available(n, now) && !tried.contains(&i)
                })
            {
                return Some(i);
            }
        }
        let len = self.nodes.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let candidates = (0..len).map(|k| (start + k) % len);
        let mut fallback = None;
        for i in candidates {
            if !self.available(&self.nodes[i], now) {
                continue;
            }
            if !tried.contains(&i) {
                return Some(i);
            }
            fallback.get_or_insert(i);
        }
        fallback
    }

    /// The available node `key` ranks highest (`sticky`), avoiding `tried`;
    /// like [`CellPool::pick`] for reads when every node was tried.
    pub fn pick_sticky(&self, key: u64, tried: &[usize]) -> Option<usize> {
        let now = self.now_ms();
        self.nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| self.available(n, now) && !tried.contains(i))
            .max_by_key(|(_, n)| crate::sticky::rank(key, n.sticky_hash))
            .map(|(i, _)| i)
            .or_else(|| self.pick(false, tried))
    }

    pub fn any_available(&self) -> bool {
        let now = self.now_ms();
        self.nodes.iter().any(|n| self.available(n, now))
    }

    pub fn leader_url(&self) -> Option<&str> {
        self.nodes
            .iter()
            .find(|n| n.is_leader())
            .map(|n| n.url.as_str())
    }

    pub fn started_request(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.last_request.store(self.now_ms(), Ordering::Relaxed);
        if let Ok(mut t) = self.retry_millis.lock() {
            *t = (*t + RETRY_MILLIS_PER_REQUEST).min(RETRY_RESERVE * 5 * 1000);
        }
    }

    pub fn finished_request(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn idle_for(&self) -> Duration {
        Duration::from_millis(
            self.now_ms()
                .saturating_sub(self.last_request.load(Ordering::Relaxed)),
        )
    }

    /// Spends one retry from the budget; `false` when it is exhausted.
    pub fn take_retry(&self) -> bool {
        match self.retry_millis.lock() {
            Ok(mut t) if *t >= 1000 => {
                *t -= 1000;
                true
            }
            _ => false,
        }
    }

    /// A request to the node failed at the transport level (or timed out).
    /// Returns `true` when this failure ejected the node.
    pub fn record_failure(&self, i: usize) -> bool {
        let n = &self.nodes[i];
        let failures = n.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < EJECT_AFTER_FAILURES {
            return false;
        }
        n.failures.store(0, Ordering::Relaxed);
        let k = n.ejections.fetch_add(1, Ordering::Relaxed).min(5);
        let ban = Duration::from_secs(1 << k).min(MAX_EJECTION);
        n.ejected_until
            .store(self.now_ms() + ban.as_millis() as u64, Ordering::Relaxed);
        n.healthy.store(false, Ordering::Relaxed);
        n.leader.store(false, Ordering::Relaxed);
        tracing::warn!(cell = %self.cell, node = %n.url, ban_ms = ban.as_millis() as u64, "node ejected");
        true
    }

    /// A refused connection means the process is gone: out of rotation at
    /// once, without waiting for more failures.
    pub fn mark_down(&self, i: usize) {
        let n = &self.nodes[i];
        n.healthy.store(false, Ordering::Relaxed);
        n.leader.store(false, Ordering::Relaxed);
    }

    pub fn record_success(&self, i: usize) {
        let n = &self.nodes[i];
        if n.failures.load(Ordering::Relaxed) != 0 {
            n.failures.store(0, Ordering::Relaxed);
        }
    }

    /// Applies a health-check result.
    pub fn record_health(&self, i: usize, health: Health) {
        let n = &self.nodes[i];
        n.checked.store(true, Ordering::Relaxed);
        match health {
            Health::Ready { leader } => {
                n.failed_checks.store(0, Ordering::Relaxed);
                n.healthy.store(true, Ordering::Relaxed);
                n.leader.store(leader, Ordering::Relaxed);
                if n.ejected_until.load(Ordering::Relaxed) <= self.now_ms() {
                    n.ejections.store(0, Ordering::Relaxed);
                }
            }
            Health::Failed
                if n.failed_checks.fetch_add(1, Ordering::Relaxed) + 1 < FAILED_CHECKS_TO_DOWN => {}
            Health::Failed | Health::Refused => {
                n.healthy.store(false, Ordering::Relaxed);
                n.leader.store(false, Ordering::Relaxed);
            }
        }
    }

    /// The cell's token keys; fetched on first use, and again when
    /// `refresh` asks (an unknown `kid`), at most every few seconds.
    pub async fn keys(&self, client: &Client, refresh: bool) -> Option<Arc<PublicKeys>> {
        let cached = |c: &KeyCache| {
            let fresh_enough = c
                .fetched_at
                .is_some_and(|t| t.elapsed() < KEY_REFRESH_INTERVAL);
            match &c.keys {
                Some(k) if !refresh || fresh_enough => Some(k.clone()),
                _ => None,
            }
        };
        if let Some(k) = self.keys.lock().ok().and_then(|c| cached(&c)) {
            return Some(k);
        }
        let _one_fetch = self.key_fetch.lock().await;
        // Someone else may have fetched while we waited.
        if let Some(k) = self.keys.lock().ok().and_then(|c| {
            c.fetched_at
                .is_some_and(|t| t.elapsed() < KEY_REFRESH_INTERVAL)
                .then(|| c.keys.clone())
                .flatten()
        }) {
            return Some(k);
        }
        // Boxed: a rare fetch should not size every request's future.
        let fetched = Box::pin(self.fetch_keys(client)).await;
        let mut c = self.keys.lock().ok()?;
        c.fetched_at = Some(Instant::now());
        match fetched {
            Some(k) => {
                let k = Arc::new(k);
                c.keys = Some(k.clone());
                Some(k)
            }
            None => c.keys.clone(),
        }
    }

    async fn fetch_keys(&self, client: &Client) -> Option<PublicKeys> {
        let mut tried = Vec::new();
        while let Some(i) = self.pick(false, &tried) {
            if tried.contains(&i) {
                break;
            }
            tried.push(i);
            let url = format!("{}/.well-known/jwks.json", self.nodes[i].url);
            match get_json(client, &url, Duration::from_secs(2), MAX_JWKS_BYTES).await {
                Some(v) => match PublicKeys::from_jwks(&v) {
                    Ok(k) => return Some(k),
                    Err(e) => {
                        tracing::warn!(cell = %self.cell, error = %e, "cell served an unusable JWK set")
                    }
                },
                None => continue,
            }
        }
        None
    }
}

/// Why a small GET gave no document.
enum GetError {
    Refused,
    Failed,
}

/// GETs a small JSON document; `None` on any failure.
pub async fn get_json(
    client: &Client,
    url: &str,
    timeout: Duration,
    max_bytes: usize,
) -> Option<serde_json::Value> {
    try_get_json(client, url, timeout, max_bytes).await.ok()
}

async fn try_get_json(
    client: &Client,
    url: &str,
    timeout: Duration,
    max_bytes: usize,
) -> Result<serde_json::Value, GetError> {
    let req = http::Request::get(url)
        .body(Body::empty())
        .map_err(|_| GetError::Failed)?;
    let resp = match tokio::time::timeout(timeout, client.request(req)).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) if e.is_connect() => return Err(GetError::Refused),
        _ => return Err(GetError::Failed),
    };
    if !resp.status().is_success() {
        return Err(GetError::Failed);
    }
    get_body(resp, timeout, max_bytes)
        .await
        .ok_or(GetError::Failed)
}

async fn get_body(
    resp: http::Response<hyper::body::Incoming>,
    timeout: Duration,
    max_bytes: usize,
) -> Option<serde_json::Value> {
    let body = http_body_util::Limited::new(resp.into_body(), max_bytes);
    let bytes: Bytes = tokio::time::timeout(timeout, body.collect())
        .await
        .ok()?
        .ok()?
        .to_bytes();
    serde_json::from_slice(&bytes).ok()
}

/// One health check: `/readyz` answers 200 with the node's Raft role,
/// and a leader with its cell's voters' API addresses (returned here).
pub async fn check(client: &Client, base: &str, timeout: Duration) -> (Health, Vec<String>) {
    match try_get_json(client, &format!("{base}/readyz"), timeout, 16 * 1024).await {
        Ok(v) => {
            let leader = v.get("role").and_then(|r| r.as_str()) == Some("leader");
            let voters = v
                .get("voters")
                .and_then(|n| n.as_array())
                .filter(|_| leader)
                .map(|n| {
                    n.iter()
                        .filter_map(|a| a.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            (Health::Ready { leader }, voters)
        }
        Err(GetError::Refused) => (Health::Refused, Vec::new()),
        Err(GetError::Failed) => (Health::Failed, Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::{Location, RegionSpec};

    fn pool(n: usize) -> CellPool {
        let spec = RegionSpec {
            cell: "nyc".into(),
            center: Some(Location { lat: 0.0, lng: 0.0 }),
            radius_km: Some(1.0),
            bbox: None,
            nodes: (0..n)
                .map(|i| format!("http://127.0.0.1:{}", 1000 + i))
                .collect(),
        };
        CellPool::new(
            &Region::from_spec("nyc", spec).unwrap(),
            &crate::metrics::Metrics::new(),
        )
    }

    #[test]
    fn picks_leader_for_writes_and_rotates_reads() {
        let p = pool(3);
        p.record_health(1, Health::Ready { leader: true });
        assert_eq!(p.pick(true, &[]), Some(1));
        let picks: std::collections::HashSet<_> =
            (0..6).filter_map(|_| p.pick(false, &[])).collect();
        assert_eq!(picks.len(), 3);
        // A tried node is avoided while there are others.
        assert_ne!(p.pick(true, &[1]), Some(1));
    }

    #[test]
    fn failures_eject_and_health_restores() {
        let p = pool(2);
        assert!(!p.record_failure(0));
        assert!(!p.record_failure(0));
        assert!(p.record_failure(0));
        for _ in 0..10 {
            assert_eq!(p.pick(false, &[]), Some(1));
        }
        p.record_health(1, Health::Failed);
        assert_eq!(
            p.pick(false, &[]),
            Some(1),
            "one failed check is not an outage"
        );
        p.record_health(1, Health::Failed);
        assert_eq!(p.pick(false, &[]), None);
        p.record_health(1, Health::Ready { leader: false });
        p.mark_down(1);
        assert_eq!(p.pick(false, &[]), None);
        assert!(!p.any_available());
        p.record_health(1, Health::Ready { leader: false });
        assert_eq!(p.pick(false, &[]), Some(1));
    }

    #[test]
    fn retry_budget_is_bounded() {
        let p = pool(1);
        let mut granted = 0;
        for _ in 0..1000 {
            if p.take_retry() {
                granted += 1;
            }
        }
        assert_eq!(granted, RETRY_RESERVE as usize);
        for _ in 0..100 {
            p.started_request();
        }
        let mut more = 0;
        while p.take_retry() {
            more += 1;
        }
        assert_eq!(more, 20);
    }
}
