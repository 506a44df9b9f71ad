//! Long polls' shared HTTP/2 connections to nodes (h2c on plain nodes,
//! `h2` by ALPN over TLS), one per node, on the `h2` crate directly.
//!
//! A waiting poll holds a stream of its node's connection and nothing else
//! of the router's but its own client connection. hyper's pooled client
//! also kept a boxed request future (3.3 KiB) and a spawned task (2.5 KiB)
//! per request, most of what an idle poll cost.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use h2::client::SendRequest;
use hyper::body::Frame;

use crate::affinity::{dial, ConnectError};
use crate::upstream::Node;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);
/// Flow-control windows: how much of one answer, and of all answers on a
/// connection, the node may send before the router has taken it.
const STREAM_WINDOW: u32 = 2 << 20;
const CONNECTION_WINDOW: u32 = 5 << 20;

/// A node's shared connection, made on first use.
#[derive(Default)]
pub struct Slot(tokio::sync::Mutex<Option<Shared>>);

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Slot")
    }
}

struct Shared {
    /// Tells this connection from the next one made for the node.
    generation: u64,
    send: SendRequest<Bytes>,
}

/// Why a request got no answer.
pub enum Failure {
    /// The node could not be connected to; nothing was sent.
    Connect(String),
    /// The request certainly did not reach the node (a closed connection,
    /// a refused stream).
    NotSent(String),
    /// It may have reached the node.
    Transport(String),
}

/// Sends a bodiless request over the node's shared connection, making one
/// if there is none (or the last one closed). A connection made here pings
/// its node every `keepalive` and is given up when a pong takes longer than
/// that: waiting polls on a node that went silent without a reset fail
/// instead of hanging.
pub async fn send(
    node: &Node,
    tls: Option<&tokio_rustls::TlsConnector>,
    keepalive: Duration,
    req: http::Request<()>,
) -> Result<http::Response<Body>, Failure> {
    // A connection the node closed since (a restart, an idle close) is
    // found out here and replaced once, before anything is sent.
    let mut replaced = false;
    let mut send = loop {
        let (generation, send) = shared(node, tls, keepalive).await?;
        match send.ready().await {
            Ok(s) => break s,
            Err(e) => {
                forget(node, generation).await;
                if replaced {
                    return Err(Failure::NotSent(e.to_string()));
                }
                replaced = true;
            }
        }
    };
    let (answer, _) = send.send_request(req, true).map_err(|e| {
        if e.is_io() || e.is_go_away() {
            Failure::NotSent(e.to_string())
        } else {
            Failure::Transport(e.to_string())
        }
    })?;
    let resp = answer.await.map_err(|e| {
        if e.reason() == Some(h2::Reason::REFUSED_STREAM) {
            Failure::NotSent(e.to_string())
        } else {
            Failure::Transport(e.to_string())
        }
    })?;
    let length = resp
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    Ok(resp.map(|recv| Body::new(Stream { recv, length })))
}

async fn shared(
    node: &Node,
    tls: Option<&tokio_rustls::TlsConnector>,
    keepalive: Duration,
) -> Result<(u64, SendRequest<Bytes>), Failure> {
    // Held while connecting: the polls that arrive meanwhile wait for this
    // connection instead of each making their own.
    let mut slot = node.multiplexed.0.lock().await;
    if let Some(s) = slot.as_ref() {
        return Ok((s.generation, s.send.clone()));
    }
    static GENERATIONS: AtomicU64 = AtomicU64::new(0);
    let generation = GENERATIONS.fetch_add(1, Ordering::Relaxed);
    // Boxed: connecting is rare, and would otherwise size every poll's
    // future.
    let send = Box::pin(connect(node, tls, keepalive)).await?;
    *slot = Some(Shared {
        generation,
        send: send.clone(),
    });
    Ok((generation, send))
}

async fn forget(node: &Node, generation: u64) {
    let mut slot = node.multiplexed.0.lock().await;
    if slot.as_ref().is_some_and(|s| s.generation == generation) {
        *slot = None;
    }
}

async fn connect(
    node: &Node,
    tls: Option<&tokio_rustls::TlsConnector>,
    keepalive: Duration,
) -> Result<SendRequest<Bytes>, Failure> {
    let io = dial(node, tls)
        .await
        .map_err(|ConnectError::Connect(e)| Failure::Connect(e))?;
    // Windows as hyper's client has them: h2's default of 64 KiB for the
    // whole connection would let a few answers not yet taken hold up every
    // other poll's.
    let handshake = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .handshake(io);
    let (send, mut conn) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|e| Failure::Connect(e.to_string()))?
        .map_err(|e| Failure::Connect(e.to_string()))?;
    let url = node.url.clone();
    let mut pings = conn.ping_pong();
    tokio::spawn(async move {
        let keepalive = async {
            let Some(pings) = pings.as_mut() else {
                return std::future::pending().await;
            };
            loop {
                tokio::time::sleep(keepalive).await;
                let pong = tokio::time::timeout(keepalive, pings.ping(h2::Ping::opaque()));
                if !matches!(pong.await, Ok(Ok(_))) {
                    return;
                }
            }
        };
        tokio::select! {
            r = &mut conn => {
                if let Err(e) = r {
                    tracing::debug!(node = %url, error = %e, "long-poll connection ended");
                }
            }
            () = keepalive => {
                tracing::debug!(node = %url, "long-poll connection dropped: no answer to a ping");
            }
        }
    });
    Ok(send)
}

/// An answer's body as it arrives, its flow-control window handed back as
/// it is taken.
struct Stream {
    recv: h2::RecvStream,
    /// What is left of a declared `Content-Length` (which h2 holds the node
    /// to), so that the client gets a length rather than chunks.
    length: Option<u64>,
}

impl hyper::body::Body for Stream {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        match ready!(self.recv.poll_data(cx)) {
            Some(Ok(data)) => {
                let _ = self.recv.flow_control().release_capacity(data.len());
                if let Some(left) = self.length.as_mut() {
                    *left = left.saturating_sub(data.len() as u64);
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e))),
            // Cells send no trailers.
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self.length {
            Some(n) => hyper::body::SizeHint::with_exact(n),
            None => hyper::body::SizeHint::default(),
        }
    }
}
