//! Client connections served on one event loop per core, each a
//! single-threaded runtime with its own I/O driver, the way nginx runs a
//! worker per core.
//!
//! On tokio's shared work-stealing runtime only one worker at a time polls
//! the I/O driver; a worker that runs dry parks and is woken by another,
//! and on two busy cores those hand-offs left a core idle 8–9% of the time
//! where nginx's workers left it idle 3–4%. Here a loop sleeps only in its
//! own `epoll_wait` and wakes on its own connections' readiness. A client
//! connection and the upstream connections it owns stay on its loop.
//! Background work (health checks, key refreshes) stays on the main
//! runtime; state shared between loops is behind `Arc`s and atomics as
//! before.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use edge::tls::Stream;
use tokio::sync::mpsc;

type Accepted = (std::net::TcpStream, SocketAddr);

/// The loops, fed accepted connections in turn.
pub struct Loops {
    inboxes: Vec<mpsc::UnboundedSender<Accepted>>,
    next: AtomicUsize,
}

impl Loops {
    /// Starts `n` loops (at least one) that complete the TLS handshake when
    /// there is a `tls` config and then run `handle` on each connection.
    pub fn start<H, F>(
        n: usize,
        tls: Option<Arc<rustls::ServerConfig>>,
        handle: H,
    ) -> std::io::Result<Self>
    where
        H: Fn(Box<dyn Stream>, SocketAddr) -> F + Clone + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let mut inboxes = Vec::new();
        for i in 0..n.max(1) {
            // Built here so that a failure stops startup instead of a thread.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (tx, rx) = mpsc::unbounded_channel();
            let (handle, acceptor) = (handle.clone(), acceptor.clone());
            std::thread::Builder::new()
                .name(format!("router-loop-{i}"))
                .spawn(move || rt.block_on(serve(rx, acceptor, handle)))?;
            inboxes.push(tx);
        }
        Ok(Loops {
            inboxes,
            next: AtomicUsize::new(0),
        })
    }

    /// Gives an accepted connection (still non-blocking) to the next loop.
    pub fn hand(&self, stream: std::net::TcpStream, peer: SocketAddr) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.inboxes.len();
        if self.inboxes[i].send((stream, peer)).is_err() {
            // A loop ends only if its thread panicked; the connection drops.
            tracing::error!(%peer, event_loop = i, "event loop gone; connection dropped");
        }
    }
}

async fn serve<H, F>(
    mut inbox: mpsc::UnboundedReceiver<Accepted>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    handle: H,
) where
    H: Fn(Box<dyn Stream>, SocketAddr) -> F + Clone + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    while let Some((stream, peer)) = inbox.recv().await {
        // Registers the socket with this loop's driver.
        let stream = match tokio::net::TcpStream::from_std(stream) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cannot adopt accepted connection");
                continue;
            }
        };
        let (handle, acceptor) = (handle.clone(), acceptor.clone());
        tokio::spawn(async move {
            if let Some(io) = edge::tls::handshake(acceptor.as_ref(), stream, peer).await {
                handle(io, peer).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// Connections are dealt to the loops in turn, each served on its
    /// loop's own thread.
    #[tokio::test]
    async fn connections_are_dealt_in_turn_to_their_own_threads() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
        let (done, mut finished) = mpsc::unbounded_channel::<()>();
        let record = served.clone();
        let loops = Loops::start(2, None, move |_io, _peer| {
            let (record, done) = (record.clone(), done.clone());
            async move {
                let thread = std::thread::current().name().unwrap_or("").to_string();
                *record.lock().unwrap().entry(thread).or_default() += 1;
                let _ = done.send(());
            }
        })
        .unwrap();
        let mut clients = Vec::new();
        for _ in 0..6 {
            clients.push(tokio::net::TcpStream::connect(addr).await.unwrap());
            let (stream, peer) = listener.accept().await.unwrap();
            loops.hand(stream.into_std().unwrap(), peer);
        }
        for _ in 0..6 {
            finished.recv().await.unwrap();
        }
        let served = served.lock().unwrap().clone();
        assert_eq!(
            served,
            BTreeMap::from([
                ("router-loop-0".to_string(), 3),
                ("router-loop-1".to_string(), 3)
            ])
        );
    }
}
