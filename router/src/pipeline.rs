//! Upstream connections that several client connections of one event loop
//! share, their bodiless requests pipelined (HTTP/1.1): requests queued
//! while the loop was busy go out in one write, and answers that arrive
//! together come in with one read, at both ends of the hop.
//!
//! Each pipe is two tasks on the loop: a writer that drains the queue into
//! one write, and a reader that splits answers by their framing and hands
//! each, whole, to the request at the head of the line. A pipe that breaks
//! fails what it still carries; those requests are safe to send again.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf as _, BytesMut};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{mpsc, oneshot};

use crate::affinity::dial;
use crate::upstream::Node;

/// Requests a pipe carries at once; more open another pipe.
const DEPTH: usize = 4;
/// Pipes per node and event loop.
const MAX_PIPES: usize = 16;
/// An answer buffered whole may be this large; a larger one breaks the pipe
/// (its request is sent again the usual way).
const MAX_ANSWER_BYTES: usize = 1 << 20;
const READ_CHUNK: usize = 16 * 1024;

/// A node's answer: its head as sent, and its body.
pub(crate) struct Reply {
    pub head: Vec<u8>,
    pub body: Vec<u8>,
}

struct Job {
    request: Vec<u8>,
    head_only: bool,
    reply: oneshot::Sender<Reply>,
}

struct Pipe {
    jobs: mpsc::UnboundedSender<Job>,
    carried: Arc<AtomicUsize>,
    broken: Arc<AtomicBool>,
    /// When a request was last put on it.
    used: Instant,
}

std::thread_local! {
    /// This event loop's pipes, by node URL.
    static PIPES: RefCell<HashMap<String, Vec<Pipe>>> = RefCell::new(HashMap::new());
}

/// Sends `request` (a bodiless request's head, as the node gets it) on one
/// of this loop's pipes to `node`; the answer comes on the receiver, or the
/// sender is dropped when the pipe broke first. `None` when every pipe to
/// the node is full.
pub(crate) fn send(
    node: &Node,
    tls: Option<&tokio_rustls::TlsConnector>,
    request: Vec<u8>,
    head_only: bool,
) -> Option<oneshot::Receiver<Reply>> {
    let (reply, answer) = oneshot::channel();
    let job = Job {
        request,
        head_only,
        reply,
    };
    PIPES.with(|pipes| {
        let mut pipes = pipes.borrow_mut();
        if !pipes.contains_key(&node.url) {
            pipes.insert(node.url.clone(), Vec::new());
        }
        let list = pipes.get_mut(&node.url)?;
        // An idle pipe is let go before the node's own idle close could
        // race a request on it (dropping it ends its tasks). One clock
        // read per request, not one per pipe.
        let now = Instant::now();
        list.retain(|p| {
            !p.broken.load(Ordering::Relaxed)
                && (p.carried.load(Ordering::Relaxed) > 0
                    || now.saturating_duration_since(p.used) < edge::tls::CLIENT_POOL_IDLE)
        });
        let least = list
            .iter()
            .enumerate()
            .map(|(i, p)| (p.carried.load(Ordering::Relaxed), i))
            .min()
            .filter(|&(carried, _)| carried < DEPTH);
        let at = match least {
            Some((_, i)) => i,
            None if list.len() < MAX_PIPES => {
                // Dialled as the pool's node is, without its health state.
                list.push(open(Node::new(node.url.clone()), tls.cloned()));
                list.len() - 1
            }
            None => return None,
        };
        let pipe = &mut list[at];
        pipe.carried.fetch_add(1, Ordering::Relaxed);
        pipe.used = now;
        pipe.jobs.send(job).ok()?;
        Some(answer)
    })
}

fn open(node: Node, tls: Option<tokio_rustls::TlsConnector>) -> Pipe {
    let (jobs, queue) = mpsc::unbounded_channel();
    let carried = Arc::new(AtomicUsize::new(0));
    let broken = Arc::new(AtomicBool::new(false));
    tokio::spawn(run(node, tls, queue, carried.clone(), broken.clone()));
    Pipe {
        jobs,
        carried,
        broken,
        used: Instant::now(),
    }
}

async fn run(
    node: Node,
    tls: Option<tokio_rustls::TlsConnector>,
    mut queue: mpsc::UnboundedReceiver<Job>,
    carried: Arc<AtomicUsize>,
    broken: Arc<AtomicBool>,
) {
    let io = match dial(&node, tls.as_ref()).await {
        Ok(io) => io,
        Err(_) => {
            broken.store(true, Ordering::Relaxed);
            return;
        }
    };
    let (mut rd, mut wr) = tokio::io::split(io);
    // The answers owed, in the order their requests were written.
    let (owed_tx, mut owed) = mpsc::unbounded_channel::<(bool, oneshot::Sender<Reply>)>();
    let writer = {
        let broken = broken.clone();
        async move {
            let mut out = Vec::with_capacity(4096);
            while let Some(job) = queue.recv().await {
                out.clear();
                let mut next = Some(job);
                while let Some(job) = next {
                    out.extend_from_slice(&job.request);
                    if owed_tx.send((job.head_only, job.reply)).is_err() {
                        return;
                    }
                    next = queue.try_recv().ok();
                }
                if wr.write_all(&out).await.is_err() || wr.flush().await.is_err() {
                    break;
                }
            }
            broken.store(true, Ordering::Relaxed);
        }
    };
    let reader = {
        let broken = broken.clone();
        async move {
            let mut buf = BytesMut::with_capacity(READ_CHUNK);
            loop {
                // Nothing owed: the node may only close (or misbehave),
                // and the pipe must not take requests after that.
                let next = tokio::select! {
                    next = owed.recv() => next,
                    read = rd.read_buf(&mut buf), if buf.is_empty() => match read {
                        Ok(n) if n > 0 => continue,
                        _ => None,
                    },
                };
                let Some((head_only, reply)) = next else {
                    break;
                };
                let Some((head, body)) = read_answer(&mut rd, &mut buf, head_only).await else {
                    break;
                };
                carried.fetch_sub(1, Ordering::Relaxed);
                // A client that gave up has dropped its receiver; the
                // answer still had to be read to keep the line in order.
                let _ = reply.send(Reply { head, body });
            }
            broken.store(true, Ordering::Relaxed);
        }
    };
    tokio::select! {
        () = writer => {}
        () = reader => {}
    }
}

/// Reads one whole answer off the pipe; `None` when the pipe cannot carry
/// another (closed, broken, an answer too large or framed by the close).
async fn read_answer(
    rd: &mut (impl tokio::io::AsyncRead + Unpin),
    buf: &mut BytesMut,
    head_only: bool,
) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut searched = 0;
    let head_len = loop {
        if let Some(end) = buf[searched..].windows(4).position(|w| w == b"\r\n\r\n") {
            break searched + end + 4;
        }
        if buf.len() > crate::http1::MAX_HEAD_BYTES {
            return None;
        }
        searched = buf.len().saturating_sub(3);
        buf.reserve(READ_CHUNK);
        if rd.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    };
    let (framing, keep_alive) = crate::http1::framing_of(&buf[..head_len], head_only)?;
    if !keep_alive {
        return None;
    }
    let head = buf[..head_len].to_vec();
    buf.advance(head_len);
    let mut relay = crate::http1::BodyRelay::new(framing);
    let mut body = Vec::new();
    loop {
        let taken = relay.take(buf).ok()?;
        body.extend_from_slice(&buf[..taken]);
        buf.advance(taken);
        if relay.done() {
            return Some((head, body));
        }
        if body.len() > MAX_ANSWER_BYTES {
            return None;
        }
        buf.reserve(READ_CHUNK);
        if rd.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
}
