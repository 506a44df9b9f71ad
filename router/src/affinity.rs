//! Upstream connections owned by one client connection.
//!
//! A shared connection pool hands every request across tasks twice (to the
//! pool connection's task and back), which costs more than the proxying
//! itself. Instead, a client connection that has shown it is kept alive gets
//! its own HTTP/1.1 connections to the cell nodes it talks to, driven on the
//! client connection's own task: a request and its answer never change
//! task. They live exactly as long as the client connection.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use futures::future::BoxFuture;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

use crate::upstream::Node;

/// Upstream connections one client connection may hold per node; more
/// concurrent requests (HTTP/2 clients) use the shared pool.
const MAX_PER_NODE: usize = 4;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Why an affinity connection could not be used.
#[derive(Debug)]
pub enum ConnectError {
    /// Nothing was sent: the connection or handshake failed.
    Connect(String),
}

/// Per client connection; put into each of its requests' extensions.
pub struct Affinity {
    /// The client's address as an `X-Forwarded-For` value, formatted once.
    pub forwarded_for: Option<http::HeaderValue>,
    requests: AtomicU64,
    senders: Mutex<Vec<(String, SendRequest<Body>)>>,
    driver: mpsc::UnboundedSender<BoxFuture<'static, ()>>,
}

impl Affinity {
    /// `driver` receives the connection futures; the client connection's
    /// task must poll them alongside the client connection.
    pub fn new(
        peer: std::net::IpAddr,
        driver: mpsc::UnboundedSender<BoxFuture<'static, ()>>,
    ) -> Self {
        Affinity {
            forwarded_for: http::HeaderValue::from_str(&peer.to_string()).ok(),
            requests: AtomicU64::new(0),
            senders: Mutex::new(Vec::new()),
            driver,
        }
    }

    /// Counts a request; returns how many came before it on this client
    /// connection.
    pub fn note_request(&self) -> u64 {
        self.requests.fetch_add(1, Ordering::Relaxed)
    }

    /// An idle connection to `node`, if this client connection has one.
    pub fn take_ready(&self, node: &Node) -> Option<SendRequest<Body>> {
        let mut senders = self.senders.lock().ok()?;
        senders.retain(|(_, s)| !s.is_closed());
        let i = senders
            .iter()
            .position(|(url, s)| *url == node.url && s.is_ready())?;
        Some(senders.swap_remove(i).1)
    }

    /// Whether another connection to `node` may be opened.
    pub fn may_connect(&self, node: &Node) -> bool {
        self.senders
            .lock()
            .map(|s| s.iter().filter(|(url, _)| *url == node.url).count() < MAX_PER_NODE)
            .unwrap_or(false)
    }

    pub fn put_back(&self, node: &Node, sender: SendRequest<Body>) {
        if let Ok(mut s) = self.senders.lock() {
            s.push((node.url.clone(), sender));
        }
    }

    /// Opens a connection to `node` (TLS with `tls` for `https` nodes);
    /// `open` counts the cell's affinity connections while they live.
    pub async fn connect(
        &self,
        node: &Node,
        tls: Option<&tokio_rustls::TlsConnector>,
        open: Arc<AtomicUsize>,
    ) -> Result<SendRequest<Body>, ConnectError> {
        let fail = |e: &dyn std::fmt::Display| ConnectError::Connect(e.to_string());
        let io = dial(node, tls).await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| fail(&e))?;
        let guard = OpenGuard::new(open);
        let driven: BoxFuture<'static, ()> = Box::pin(async move {
            let _guard = guard;
            let _ = conn.await;
        });
        self.driver
            .send(driven)
            .map_err(|_| fail(&"client connection is closing"))?;
        Ok(sender)
    }
}

/// A connection of our own to `node`: TCP, and TLS with the internal CA
/// when the node speaks https.
pub async fn dial(
    node: &Node,
    tls: Option<&tokio_rustls::TlsConnector>,
) -> Result<Box<dyn edge::tls::Stream>, ConnectError> {
    let fail = |e: &dyn std::fmt::Display| ConnectError::Connect(e.to_string());
    let addr = node.authority.as_str().to_string();
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&addr))
        .await
        .map_err(|e| fail(&e))?
        .map_err(|e| fail(&e))?;
    let _ = tcp.set_nodelay(true);
    if node.scheme != http::uri::Scheme::HTTPS {
        return Ok(Box::new(tcp));
    }
    let tls = tls.ok_or_else(|| fail(&"https node without the internal CA (--ca)"))?;
    let name = rustls::pki_types::ServerName::try_from(node.authority.host().to_string())
        .map_err(|e| fail(&e))?;
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tls.connect(name, tcp))
        .await
        .map_err(|e| fail(&e))?
        .map_err(|e| fail(&e))?;
    Ok(Box::new(stream))
}

/// Counts an upstream connection in its cell's `affinity_open` while it
/// lives.
pub(crate) struct OpenGuard(Arc<AtomicUsize>);

impl OpenGuard {
    pub(crate) fn new(open: Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        OpenGuard(open)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
