//! The router's own HTTP/1.1 loop for what most traffic is: kept-alive
//! connections sending bodiless `GET` and `HEAD` requests to cells.
//!
//! hyper's server and client state machines cost about 12 µs of CPU per
//! proxied request, more than everything else the router does for it. Here
//! a request head is parsed once, its rewritten head written to an upstream
//! connection this client connection owns, and the answer's head rewritten
//! and its body relayed by its own framing (length, chunked, or until
//! close) without being decoded. Admission, pinning and forwarding rules are
//! the hyper path's own code (`proxy::bodiless`, `proxy::forward`,
//! `server::finish`), so both paths answer the same.
//!
//! Most requests do not even take an upstream connection of their own:
//! they are pipelined on connections the event loop shares (`pipeline`),
//! so that several clients' requests reach a node in one write and their
//! answers come back in one read; a search, which can be slow, and a
//! request finding every pipe full use the client connection's own.
//!
//! Long polls are taken too, and wait on the cells' shared HTTP/2
//! connections without holding buffers (see `Conn::long_poll`).
//!
//! Anything else (a body, an upgrade, `Expect`, HTTP/1.0 or HTTP/2, the
//! router's own endpoints, a head this loop does not take)
//! hands the connection, with the bytes already read, to hyper for the rest
//! of its life.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use axum::response::{IntoResponse as _, Response};
use bytes::{Buf as _, Bytes, BytesMut};
use edge::tls::Stream;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Body as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};

use crate::affinity::{dial, ConnectError, OpenGuard};
use crate::metrics::UpstreamErrorLabels;
use crate::pipeline;
use crate::problem::Problem;
use crate::proxy::{self, InFlight, Outgoing, Payload, HOP_BY_HOP, X_CELL, X_REQUEST_ID};
use crate::server;
use crate::state::RouterState;
use crate::upstream::{CellPool, Node, MAX_AFFINITY_CONNECTIONS};

const MAX_HEADERS: usize = 64;
/// A head still incomplete at this size is left to hyper, which answers it.
pub(crate) const MAX_HEAD_BYTES: usize = proxy::MAX_HEADER_BYTES + 8 * 1024;
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
const READ_CHUNK: usize = 16 * 1024;
/// Response bytes gathered before they are written out.
const WRITE_CHUNK: usize = 64 * 1024;

/// How a connection left this loop.
pub enum Outcome {
    /// It is finished with.
    Closed,
    /// hyper serves the rest, starting with the bytes already read.
    Handoff(Rewind),
}

/// Serves `io` for as long as its requests are ones this loop takes.
pub async fn serve(io: Box<dyn Stream>, peer: SocketAddr, st: &Arc<RouterState>) -> Outcome {
    let mut conn = Conn {
        io,
        peer,
        forwarded_for: HeaderValue::from_str(&peer.ip().to_string()).ok(),
        buf: BytesMut::with_capacity(READ_CHUNK),
        out: Vec::with_capacity(4096),
        upstreams: Vec::new(),
        served: 0,
        answer_timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
    };
    loop {
        let (parts, close) = match conn.next_request().await {
            Next::Request { parts, close } => (parts, close),
            Next::Closed => return Outcome::Closed,
            Next::Handoff => {
                // Right-sized: an upgraded connection (a subscription)
                // may be held for hours, and there can be many of them.
                return Outcome::Handoff(Rewind {
                    prefix: Bytes::copy_from_slice(&conn.buf),
                    inner: conn.io,
                });
            }
        };
        let served = conn.serve(st, *parts, close).await;
        if served.is_err() || close {
            let _ = conn.io.shutdown().await;
            return Outcome::Closed;
        }
    }
}

/// The client connection could not be answered in full; it is closed.
struct Broken;

/// A request on its way to a cell: where it goes, what is sent, how the
/// client is answered.
#[derive(Clone, Copy)]
struct Forwarding<'a> {
    pool: &'a CellPool,
    out: &'a Outgoing,
    id: &'a str,
    head_only: bool,
    close: bool,
    started: Instant,
}

enum Next {
    Request {
        parts: Box<http::request::Parts>,
        close: bool,
    },
    Closed,
    Handoff,
}

/// One client connection and the upstream connections it owns.
struct Conn {
    io: Box<dyn Stream>,
    peer: SocketAddr,
    /// The client's address as an `X-Forwarded-For` value, formatted once.
    forwarded_for: Option<HeaderValue>,
    /// Bytes read from the client and not yet taken.
    buf: BytesMut,
    /// What is being written to the client (or, briefly, to a node).
    out: Vec<u8>,
    /// Idle upstream connections, at most one per node: requests on one
    /// client connection come one at a time.
    upstreams: Vec<Upstream>,
    served: u64,
    /// Bounds the wait for a node's answer (see `within_answer_limit`).
    answer_timer: Pin<Box<tokio::time::Sleep>>,
}

struct Upstream {
    url: String,
    io: Box<dyn Stream>,
    buf: BytesMut,
    _open: OpenGuard,
}

/// What an attempt over an own upstream connection came to.
enum Exchange {
    /// Answered; `close` when the client connection ends with it.
    Relayed {
        status: u16,
        close: bool,
    },
    /// Nothing reached the client; the request may go the usual way.
    NotAnswered,
    TimedOut,
    /// Part of an answer reached the client and the rest cannot follow.
    Broken,
}

impl Conn {
    async fn next_request(&mut self) -> Next {
        let mut first_byte: Option<Instant> = None;
        loop {
            if !self.buf.is_empty() {
                // An HTTP/2 preface ("PRI * HTTP/2.0") goes to hyper.
                let start = &self.buf[..self.buf.len().min(4)];
                if b"PRI ".starts_with(start) {
                    if start.len() == 4 {
                        return Next::Handoff;
                    }
                } else {
                    match parse_request(&self.buf) {
                        Parsed::Simple { parts, close, len } => {
                            self.buf.advance(len);
                            return Next::Request { parts, close };
                        }
                        Parsed::Partial if self.buf.len() <= MAX_HEAD_BYTES => {}
                        Parsed::Partial | Parsed::Other => return Next::Handoff,
                    }
                }
                first_byte.get_or_insert_with(Instant::now);
            }
            self.buf.reserve(READ_CHUNK);
            let read = self.io.read_buf(&mut self.buf);
            let n = match first_byte {
                // Idle between requests: kept alive without limit, as hyper does.
                None => read.await,
                Some(t) => {
                    let left = HEADER_READ_TIMEOUT.saturating_sub(t.elapsed());
                    match tokio::time::timeout(left, read).await {
                        Ok(r) => r,
                        Err(_) => return Next::Closed,
                    }
                }
            };
            if !matches!(n, Ok(n) if n > 0) {
                return Next::Closed;
            }
        }
    }

    async fn serve(
        &mut self,
        st: &Arc<RouterState>,
        parts: http::request::Parts,
        close: bool,
    ) -> Result<(), Broken> {
        let started = Instant::now();
        self.served += 1;
        let id = server::request_id(&parts.headers);
        let head_only = parts.method == Method::HEAD;
        let peer = self.peer.ip();
        // `_inflight` counts this request until it is answered.
        let (pool, out, _inflight) =
            match proxy::bodiless(st, &parts, peer, self.forwarded_for.as_ref(), &id).await {
                Ok(x) => x,
                Err(p) => {
                    proxy::refused(st, &p);
                    return self.answer(p.into_response(), &id, head_only, close).await;
                }
            };
        // `out` holds what is sent on; the client's head is done with.
        drop(parts);
        let f = Forwarding {
            pool: &pool,
            out: &out,
            id: &id,
            head_only,
            close,
            started,
        };
        if out.long_poll() {
            return self.long_poll(st, f).await;
        }
        if st.cfg.pipeline && !out.is_search() {
            let tried = self.pipelined(st, f).await;
            if let Some(done) = self.concluded(st, f, tried).await {
                return done;
            }
        }
        // A connection used once should not cost an upstream connection.
        let may_own = self.served > 1
            && (!self.upstreams.is_empty()
                || pool.affinity_open.load(Ordering::Relaxed) < MAX_AFFINITY_CONNECTIONS);
        if may_own {
            let tried = self.exchange(st, f).await;
            if let Some(done) = self.concluded(st, f, tried).await {
                return done;
            }
        }
        let forwarded = proxy::forward(st, &pool, &out, &mut Payload::Buffered(Bytes::new())).await;
        let resp = settle(st, &pool, started, forwarded);
        self.answer(resp, &id, head_only, close).await
    }

    /// What an attempt came to for the client; `None` when the request is
    /// still to be sent the usual way.
    async fn concluded(
        &mut self,
        st: &RouterState,
        f: Forwarding<'_>,
        tried: Exchange,
    ) -> Option<Result<(), Broken>> {
        match tried {
            Exchange::Relayed { status, close } => {
                proxy::answered(f.pool, f.started, status);
                Some(if close { Err(Broken) } else { Ok(()) })
            }
            Exchange::Broken => Some(Err(Broken)),
            Exchange::TimedOut => {
                let p = Problem::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    format!("cell {:?} did not answer in time", f.pool.cell),
                );
                proxy::refused(st, &p);
                Some(
                    self.answer(p.into_response(), f.id, f.head_only, f.close)
                        .await,
                )
            }
            Exchange::NotAnswered => None,
        }
    }

    /// A long poll waits (up to a minute) for an answer from the cell's
    /// shared HTTP/2 connections. Meanwhile this connection holds no
    /// buffers: thousands of idle polls cost little more than their sockets.
    /// A client that goes away takes its wait on the node with it.
    async fn long_poll(&mut self, st: &Arc<RouterState>, f: Forwarding<'_>) -> Result<(), Broken> {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
        self.out = Vec::new();
        let mut payload = Payload::Buffered(Bytes::new());
        let forward = proxy::forward(st, f.pool, f.out, &mut payload);
        let mut forward = std::pin::pin!(forward);
        let forwarded = loop {
            tokio::select! {
                r = &mut forward => break r,
                // A pipelined next request is kept for afterwards; the end
                // of the stream (or an error) means nobody is waiting.
                n = self.io.read_buf(&mut self.buf), if self.buf.len() <= MAX_HEAD_BYTES => {
                    if !matches!(n, Ok(n) if n > 0) {
                        return Err(Broken);
                    }
                }
            }
        };
        let resp = settle(st, f.pool, f.started, forwarded);
        self.answer(resp, f.id, f.head_only, f.close).await
    }

    /// One attempt over a pipe this loop shares with its other client
    /// connections (see `pipeline`).
    async fn pipelined(&mut self, st: &RouterState, f: Forwarding<'_>) -> Exchange {
        let Some(i) = f.out.node_for(f.pool, false, &[]) else {
            return Exchange::NotAnswered;
        };
        let node = &f.pool.nodes[i];
        let _in_flight = InFlight::new(f.pool);
        let mut request = Vec::with_capacity(512);
        request_head(&mut request, f.out, node);
        let Some(answer) = pipeline::send(node, st.affinity_tls.as_ref(), request, f.head_only)
        else {
            return Exchange::NotAnswered;
        };
        let limit = (f.started + f.out.timeout).into();
        let reply = match within_answer_limit(&mut self.answer_timer, limit, answer).await {
            Some(Ok(reply)) => reply,
            // The pipe broke before this answer: it goes again the usual way.
            Some(Err(_)) => {
                st.metrics
                    .upstream_errors
                    .get_or_create(&UpstreamErrorLabels {
                        cell: f.pool.cell.clone(),
                        kind: "pipe",
                    })
                    .inc();
                return Exchange::NotAnswered;
            }
            None => {
                if f.pool.record_failure(i) {
                    f.pool.metrics.ejections.inc();
                }
                return Exchange::TimedOut;
            }
        };
        self.out.clear();
        let Some(answer) = rewrite_response_head(
            &reply.head,
            &mut self.out,
            &f.pool.cell,
            f.id,
            f.head_only,
            f.close,
        ) else {
            return Exchange::NotAnswered;
        };
        f.pool.record_success(i);
        self.out.extend_from_slice(&reply.body);
        if self.flush_out().await.is_err() {
            return Exchange::Broken;
        }
        Exchange::Relayed {
            status: answer.status,
            close: answer.close_client,
        }
    }

    fn take_upstream(&mut self, node: &Node) -> Option<Upstream> {
        let i = self.upstreams.iter().position(|u| u.url == node.url)?;
        Some(self.upstreams.swap_remove(i))
    }

    /// One attempt over this connection's own connection to a node.
    async fn exchange(&mut self, st: &RouterState, f: Forwarding<'_>) -> Exchange {
        let Forwarding {
            pool,
            out,
            id,
            head_only,
            close,
            started,
        } = f;
        let Some(i) = out.node_for(pool, false, &[]) else {
            return Exchange::NotAnswered;
        };
        let node = &pool.nodes[i];
        let _in_flight = InFlight::new(pool);
        let failed = |kind: &'static str| {
            st.metrics
                .upstream_errors
                .get_or_create(&UpstreamErrorLabels {
                    cell: pool.cell.clone(),
                    kind,
                })
                .inc();
        };
        let (mut up, reused) = match self.take_upstream(node) {
            Some(up) => (up, true),
            // Boxed: a rare step should not size every request's future.
            None => match Box::pin(dial(node, st.affinity_tls.as_ref())).await {
                Ok(io) => {
                    let open = OpenGuard::new(pool.affinity_open.clone());
                    let buf = BytesMut::with_capacity(READ_CHUNK);
                    let url = node.url.clone();
                    (
                        Upstream {
                            url,
                            io,
                            buf,
                            _open: open,
                        },
                        false,
                    )
                }
                Err(ConnectError::Connect(e)) => {
                    tracing::debug!(cell = %pool.cell, node = %node.url, error = %e, "upstream connect failed");
                    failed("connect");
                    pool.mark_down(i);
                    return Exchange::NotAnswered;
                }
            },
        };

        let mut request = std::mem::take(&mut self.out);
        request.clear();
        request_head(&mut request, out, node);
        let head = within_answer_limit(
            &mut self.answer_timer,
            (started + out.timeout).into(),
            async {
                up.io.write_all(&request).await?;
                up.io.flush().await?;
                read_head(&mut up).await
            },
        )
        .await
        .ok_or(());
        self.out = request;
        let head = match head {
            Ok(Ok(Some(len))) => len,
            // A kept-alive connection the node had closed: nothing was
            // lost, and nothing is wrong with the node.
            Ok(Ok(None)) | Ok(Err(_)) if reused && up.buf.is_empty() => {
                return Exchange::NotAnswered
            }
            Ok(other) => {
                let error = match other {
                    Ok(_) => "closed before answering".to_string(),
                    Err(e) => e.to_string(),
                };
                tracing::debug!(cell = %pool.cell, node = %node.url, reused, %error, "upstream exchange failed");
                failed("transport");
                if pool.record_failure(i) {
                    pool.metrics.ejections.inc();
                }
                return Exchange::NotAnswered;
            }
            Err(_) => {
                failed("timeout");
                if pool.record_failure(i) {
                    pool.metrics.ejections.inc();
                }
                return Exchange::TimedOut;
            }
        };
        self.out.clear();
        let Some(answer) = rewrite_response_head(
            &up.buf[..head],
            &mut self.out,
            &pool.cell,
            id,
            head_only,
            close,
        ) else {
            failed("transport");
            return Exchange::NotAnswered;
        };
        pool.record_success(i);
        up.buf.advance(head);

        let mut body = BodyRelay::new(answer.framing);
        loop {
            let taken = match body.take(&up.buf) {
                Ok(n) => n,
                Err(()) => {
                    failed("transport");
                    return Exchange::Broken;
                }
            };
            self.out.extend_from_slice(&up.buf[..taken]);
            up.buf.advance(taken);
            if (body.done() || self.out.len() >= WRITE_CHUNK) && self.flush_out().await.is_err() {
                return Exchange::Broken;
            }
            if body.done() {
                break;
            }
            up.buf.reserve(READ_CHUNK);
            match up.io.read_buf(&mut up.buf).await {
                Ok(n) if n > 0 => {}
                // The end of a body delimited by the connection's close.
                Ok(_) if answer.framing == Framing::UntilClose => {
                    if self.flush_out().await.is_err() {
                        return Exchange::Broken;
                    }
                    break;
                }
                _ => {
                    failed("transport");
                    return Exchange::Broken;
                }
            }
        }
        // Reused only when the answer ended exactly where its framing said.
        if answer.keep_alive && up.buf.is_empty() {
            self.upstreams.push(up);
        }
        Exchange::Relayed {
            status: answer.status,
            close: answer.close_client,
        }
    }

    async fn flush_out(&mut self) -> io::Result<()> {
        self.io.write_all(&self.out).await?;
        self.io.flush().await?;
        self.out.clear();
        Ok(())
    }

    /// Writes an answer the router made or got through hyper, with the
    /// request id and edge headers (`server::finish`).
    async fn answer(
        &mut self,
        resp: Response,
        id: &str,
        head_only: bool,
        close: bool,
    ) -> Result<(), Broken> {
        let (parts, mut body) = server::finish(resp, id).into_parts();
        let status = parts.status;
        let no_body = head_only
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
            || status.is_informational();
        let close = close || proxy::header_has_token(&parts.headers, header::CONNECTION, "close");
        let length = body.size_hint().exact();
        let out = &mut self.out;
        out.clear();
        status_line(out, status);
        for (name, value) in &parts.headers {
            if !HOP_BY_HOP.contains(&name.as_str()) && name != header::CONTENT_LENGTH {
                header_line(out, name.as_str(), value.as_bytes());
            }
        }
        if !parts.headers.contains_key(header::DATE) {
            header_line(
                out,
                "date",
                httpdate::fmt_http_date(SystemTime::now()).as_bytes(),
            );
        }
        let chunked = !no_body && length.is_none();
        match (no_body, length) {
            (true, _) => {
                if let Some(v) = parts.headers.get(header::CONTENT_LENGTH) {
                    header_line(out, "content-length", v.as_bytes());
                }
            }
            (false, Some(n)) => header_line(out, "content-length", n.to_string().as_bytes()),
            (false, None) => header_line(out, "transfer-encoding", b"chunked"),
        }
        if close {
            header_line(out, "connection", b"close");
        }
        out.extend_from_slice(b"\r\n");
        if !no_body {
            while let Some(frame) = body.frame().await {
                let Ok(data) = frame.map_err(|_| Broken)?.into_data() else {
                    continue;
                };
                if chunked {
                    if data.is_empty() {
                        continue;
                    }
                    self.out
                        .extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                    self.out.extend_from_slice(&data);
                    self.out.extend_from_slice(b"\r\n");
                } else {
                    self.out.extend_from_slice(&data);
                }
                if self.out.len() >= WRITE_CHUNK {
                    self.flush_out().await.map_err(|_| Broken)?;
                }
            }
            if chunked {
                self.out.extend_from_slice(b"0\r\n\r\n");
            }
        }
        self.flush_out().await.map_err(|_| Broken)?;
        if close {
            return Err(Broken);
        }
        Ok(())
    }
}

/// The answer a forwarded request gets, counted as answered or refused.
fn settle(
    st: &RouterState,
    pool: &CellPool,
    started: Instant,
    forwarded: Result<Response, Problem>,
) -> Response {
    match forwarded {
        Ok(resp) => {
            proxy::answered(pool, started, resp.status().as_u16());
            resp
        }
        Err(p) => {
            proxy::refused(st, &p);
            p.into_response()
        }
    }
}

/// Runs `work` until `limit`, `None` past it.
///
/// A connection keeps one timer for all its exchanges instead of a
/// `tokio::time::timeout` each: registering and removing a timer per
/// request was about 2% of the router's CPU. The timer is polled only while
/// the answer is not there yet, and when it fires early (set for an
/// earlier exchange) it is moved to this one's limit — once per timeout
/// period on a busy connection rather than once per request.
async fn within_answer_limit<T>(
    timer: &mut Pin<Box<tokio::time::Sleep>>,
    limit: tokio::time::Instant,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    // Set later for an exchange with a longer limit: this one's is sooner.
    if timer.deadline() > limit {
        timer.as_mut().reset(limit);
    }
    let mut work = std::pin::pin!(work);
    loop {
        tokio::select! {
            biased;
            done = &mut work => return Some(done),
            () = timer.as_mut() => {
                if tokio::time::Instant::now() >= limit {
                    return None;
                }
                timer.as_mut().reset(limit);
            }
        }
    }
}

/// What the client sent, as far as this loop is concerned.
enum Parsed {
    /// A bodiless GET or HEAD this loop serves; `len` bytes long.
    Simple {
        parts: Box<http::request::Parts>,
        close: bool,
        len: usize,
    },
    Partial,
    /// Anything else: hyper's.
    Other,
}

fn parse_request(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => match simple_request(&req) {
            Some((parts, close)) => Parsed::Simple {
                parts: Box::new(parts),
                close,
                len,
            },
            None => Parsed::Other,
        },
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(_) => Parsed::Other,
    }
}

/// The request as `http` parts when it is one this loop takes, and whether
/// the client asked to close afterwards.
fn simple_request(req: &httparse::Request) -> Option<(http::request::Parts, bool)> {
    if req.version != Some(1) {
        return None;
    }
    let method = match req.method? {
        "GET" => Method::GET,
        "HEAD" => Method::HEAD,
        _ => return None,
    };
    let path = req.path?;
    if !path.starts_with('/') {
        return None;
    }
    let uri = http::Uri::try_from(path).ok()?;
    if server::is_own_endpoint(uri.path()) {
        return None;
    }
    let mut close = false;
    let mut size = 0;
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        size += h.name.len() + h.value.len();
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        if name == header::CONTENT_LENGTH {
            if h.value.trim_ascii() != b"0" {
                return None;
            }
        } else if name == header::TRANSFER_ENCODING
            || name == header::UPGRADE
            || name == header::EXPECT
        {
            return None;
        } else if name == header::CONNECTION {
            for token in std::str::from_utf8(h.value).ok()?.split(',') {
                match token.trim() {
                    t if t.eq_ignore_ascii_case("close") => close = true,
                    t if t.is_empty() || t.eq_ignore_ascii_case("keep-alive") => {}
                    // Names other headers as hop-by-hop: hyper's path knows.
                    _ => return None,
                }
            }
        }
        headers.append(name, HeaderValue::from_bytes(h.value).ok()?);
    }
    if size > proxy::MAX_HEADER_BYTES {
        return None;
    }
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.headers = headers;
    Some((parts, close))
}

fn header_line(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The request as the node gets it: origin form, the node as `Host`.
fn request_head(out: &mut Vec<u8>, req: &Outgoing, node: &Node) {
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.path_and_query.as_str().as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    header_line(out, "host", node.authority.as_str().as_bytes());
    for (name, value) in &req.headers {
        header_line(out, name.as_str(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// Reads until `up.buf` holds a whole response head (parsed once, by
/// `rewrite_response_head`); its length, or `None` when the node closed
/// first.
async fn read_head(up: &mut Upstream) -> io::Result<Option<usize>> {
    let mut searched = 0;
    loop {
        if let Some(end) = up.buf[searched..].windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(Some(searched + end + 4));
        }
        if up.buf.len() > MAX_HEAD_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "response head too large",
            ));
        }
        // The terminator may straddle what came and what comes next.
        searched = up.buf.len().saturating_sub(3);
        up.buf.reserve(READ_CHUNK);
        if up.io.read_buf(&mut up.buf).await? == 0 {
            return Ok(None);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// What the rewritten head said about the answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    framing: Framing,
    /// The upstream connection may carry another request after this one.
    keep_alive: bool,
    /// The client connection ends with this answer.
    close_client: bool,
}

/// An answer's status, how its body is framed, and whether the node closes
/// the connection after it. `None` for an interim answer or unparseable or
/// contradictory framing.
fn framing(resp: &httparse::Response, head_only: bool) -> Option<(StatusCode, Framing, bool)> {
    let status = StatusCode::from_u16(resp.code?).ok()?;
    if status.is_informational() {
        return None;
    }
    let mut length = None;
    let mut chunked = None;
    let mut upstream_close = resp.version != Some(1);
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()?
                .trim()
                .parse::<u64>()
                .ok()?;
            if length.is_some_and(|l| l != n) {
                return None;
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let last = std::str::from_utf8(h.value).ok()?.rsplit(',').next()?;
            chunked = Some(last.trim().eq_ignore_ascii_case("chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = std::str::from_utf8(h.value).ok()?;
            upstream_close |= proxy::lists_token(v, "close");
        }
    }
    let framing =
        if head_only || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            Framing::Empty
        } else {
            match (chunked, length) {
                (Some(true), _) => Framing::Chunked,
                (Some(false), _) => Framing::UntilClose,
                (None, Some(n)) => Framing::Length(n),
                (None, None) => Framing::UntilClose,
            }
        };
    Some((status, framing, upstream_close))
}

/// How a node's answer `head` frames its body, and whether the connection
/// may carry another request after it (`pipeline`'s reader).
pub(crate) fn framing_of(head: &[u8], head_only: bool) -> Option<(Framing, bool)> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    if !matches!(resp.parse(head), Ok(httparse::Status::Complete(_))) {
        return None;
    }
    let (_, framing, upstream_close) = framing(&resp, head_only)?;
    Some((framing, !upstream_close && framing != Framing::UntilClose))
}

/// Writes the head the client gets for a node's answer `head`: hop-by-hop
/// headers dropped, `X-Cell`, the request id and the edge headers added as
/// `server::finish` would. `None` for a head this loop does not relay
/// (interim answers, unparseable or contradictory framing).
fn rewrite_response_head(
    head: &[u8],
    out: &mut Vec<u8>,
    cell: &str,
    id: &str,
    head_only: bool,
    close: bool,
) -> Option<Answer> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    if !matches!(resp.parse(head), Ok(httparse::Status::Complete(_))) {
        return None;
    }
    let (status, framing, upstream_close) = framing(&resp, head_only)?;
    let close_client = close || framing == Framing::UntilClose;

    status_line(out, status);
    let (mut nosniff, mut cache_control) = (false, false);
    for h in resp.headers.iter() {
        let name = h.name;
        let dropped = HOP_BY_HOP.iter().any(|n| name.eq_ignore_ascii_case(n))
            || name.eq_ignore_ascii_case(X_CELL.as_str())
            || name.eq_ignore_ascii_case(X_REQUEST_ID.as_str())
            || (framing == Framing::Chunked && name.eq_ignore_ascii_case("content-length"));
        if dropped {
            continue;
        }
        nosniff |= name.eq_ignore_ascii_case("x-content-type-options");
        cache_control |= name.eq_ignore_ascii_case("cache-control");
        header_line(out, name, h.value);
    }
    if framing == Framing::Chunked {
        header_line(out, "transfer-encoding", b"chunked");
    }
    header_line(out, "x-cell", cell.as_bytes());
    header_line(out, "x-request-id", id.as_bytes());
    if !nosniff {
        header_line(out, "x-content-type-options", b"nosniff");
    }
    if !cache_control {
        header_line(out, "cache-control", b"no-store");
    }
    if close_client {
        header_line(out, "connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    Some(Answer {
        status: status.as_u16(),
        framing,
        keep_alive: !upstream_close && framing != Framing::UntilClose,
        close_client,
    })
}

/// Tracks how much of an answer's body has passed, by its framing.
pub(crate) struct BodyRelay {
    framing: Framing,
    left: u64,
    chunks: ChunkedEnd,
    done: bool,
}

impl BodyRelay {
    pub(crate) fn new(framing: Framing) -> Self {
        let left = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        BodyRelay {
            framing,
            left,
            chunks: ChunkedEnd::default(),
            done: matches!(framing, Framing::Empty | Framing::Length(0)),
        }
    }

    pub(crate) fn done(&self) -> bool {
        self.done
    }

    /// How many of `bytes` belong to the body; marks it done at its end.
    pub(crate) fn take(&mut self, bytes: &[u8]) -> Result<usize, ()> {
        if self.done {
            return Ok(0);
        }
        match self.framing {
            Framing::Empty => Ok(0),
            Framing::Length(_) => {
                let n = (bytes.len() as u64).min(self.left);
                self.left -= n;
                self.done = self.left == 0;
                Ok(n as usize)
            }
            Framing::Chunked => match self.chunks.feed(bytes)? {
                Some(end) => {
                    self.done = true;
                    Ok(end)
                }
                None => Ok(bytes.len()),
            },
            Framing::UntilClose => Ok(bytes.len()),
        }
    }
}

/// Finds where a chunked body ends, over its bytes as they arrive; the
/// bytes themselves are relayed untouched.
#[derive(Default)]
struct ChunkedEnd {
    state: Chunk,
    size: u64,
    digits: u8,
}

#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
enum Chunk {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    EndLf,
    Done,
}

impl ChunkedEnd {
    /// Feeds the next bytes; `Some(n)` when the body ends after the first
    /// `n` of them.
    fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, ()> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            match self.state {
                Chunk::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = (b as char).to_digit(16).ok_or(())? as u64;
                        // 15 hex digits is more than any body.
                        if self.digits >= 15 {
                            return Err(());
                        }
                        self.size = self.size * 16 + d;
                        self.digits += 1;
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => self.state = Chunk::Extension,
                    b'\r' if self.digits > 0 => self.state = Chunk::SizeLf,
                    _ => return Err(()),
                },
                Chunk::Extension => {
                    if b == b'\r' {
                        self.state = Chunk::SizeLf;
                    }
                }
                Chunk::SizeLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    self.state = if self.size == 0 {
                        Chunk::TrailerStart
                    } else {
                        Chunk::Data
                    };
                }
                Chunk::Data => {
                    let n = ((bytes.len() - i) as u64).min(self.size);
                    self.size -= n;
                    i += n as usize;
                    if self.size == 0 {
                        self.state = Chunk::DataCr;
                    }
                    continue;
                }
                Chunk::DataCr => {
                    if b != b'\r' {
                        return Err(());
                    }
                    self.state = Chunk::DataLf;
                }
                Chunk::DataLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    self.state = Chunk::Size;
                    self.digits = 0;
                }
                Chunk::TrailerStart => {
                    self.state = if b == b'\r' {
                        Chunk::EndLf
                    } else {
                        Chunk::TrailerLine
                    };
                }
                Chunk::TrailerLine => {
                    if b == b'\n' {
                        self.state = Chunk::TrailerStart;
                    }
                }
                Chunk::EndLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    self.state = Chunk::Done;
                    return Ok(Some(i + 1));
                }
                Chunk::Done => return Ok(Some(i)),
            }
            i += 1;
        }
        Ok(None)
    }
}

/// A client connection handed to hyper: the bytes this loop already read
/// come first.
pub struct Rewind {
    prefix: Bytes,
    inner: Box<dyn Stream>,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends(pieces: &[&[u8]]) -> Result<Option<(usize, usize)>, ()> {
        let mut c = ChunkedEnd::default();
        for (i, p) in pieces.iter().enumerate() {
            if let Some(end) = c.feed(p)? {
                return Ok(Some((i, end)));
            }
        }
        Ok(None)
    }

    #[tokio::test(start_paused = true)]
    async fn the_answer_limit_holds_however_the_timer_was_left() {
        let mut timer = Box::pin(tokio::time::sleep(Duration::ZERO));
        use tokio::time::Instant;
        let at = |ms: u64| Instant::now() + Duration::from_millis(ms);
        let after = |ms: u64| tokio::time::sleep(Duration::from_millis(ms));
        // Answered in time, with the timer left over from an earlier,
        // already passed limit.
        assert_eq!(
            within_answer_limit(&mut timer, at(100), async {
                after(50).await;
                1
            })
            .await,
            Some(1)
        );
        // Not answered: cut at the limit, not at the timer's old deadline.
        let started = Instant::now();
        assert_eq!(
            within_answer_limit(&mut timer, at(100), after(1_000)).await,
            None
        );
        assert_eq!(started.elapsed(), Duration::from_millis(100));
        // A timer left set for a later limit does not stretch a sooner one.
        let _ = within_answer_limit(&mut timer, at(5_000), async {}).await;
        let started = Instant::now();
        assert_eq!(
            within_answer_limit(&mut timer, at(200), after(1_000)).await,
            None
        );
        assert_eq!(started.elapsed(), Duration::from_millis(200));
    }

    #[test]
    fn chunked_end_is_found_however_the_bytes_arrive() {
        let body: &[u8] =
            b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-t: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        assert_eq!(ends(&[body]), Ok(Some((0, end))));
        // One byte at a time: the end is found at the last byte of the body.
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(ends(&bytes), Ok(Some((end - 1, 1))));
        // Split inside the size line, the data and the final CRLF.
        for cut in 1..end {
            let (a, b) = body.split_at(cut);
            assert_eq!(ends(&[a, b]), Ok(Some((1, end - cut))), "cut at {cut}");
        }
        assert_eq!(ends(&[b"0\r\n\r\n"]), Ok(Some((0, 5))));
        assert_eq!(ends(&[b"3\r\nabc\r\n"]), Ok(None));
    }

    #[test]
    fn malformed_chunking_is_refused() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"3\r\nabcX",
            b"3\rX",
            b"ffffffffffffffff\r\n",
        ] {
            assert_eq!(ends(&[bad]), Err(()), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn only_plain_bodiless_requests_are_taken() {
        let take = |raw: &str| match parse_request(raw.as_bytes()) {
            Parsed::Simple { close, len, .. } => Some((close, len == raw.len())),
            Parsed::Partial => None,
            Parsed::Other => Some((false, false)),
        };
        assert_eq!(
            take("GET /v1/products/x HTTP/1.1\r\nHost: a\r\n\r\n"),
            Some((false, true))
        );
        assert_eq!(
            take("HEAD /v1/x HTTP/1.1\r\nConnection: close\r\n\r\n"),
            Some((true, true))
        );
        assert_eq!(
            take("GET /v1/events?after=3&wait=30 HTTP/1.1\r\n\r\n"),
            Some((false, true))
        );
        assert_eq!(take("GET /v1/x HTTP/1.1\r\nHost: a\r\n"), None);
        for other in [
            "POST /v1/x HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
            "GET /v1/x HTTP/1.0\r\n\r\n",
            "GET http://a/v1/x HTTP/1.1\r\n\r\n",
            "GET /v1/x HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
            "GET /v1/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /v1/x HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET /v1/x HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "GET /metrics HTTP/1.1\r\n\r\n",
            "GET /admin/regions/a HTTP/1.1\r\n\r\n",
            "garbage\r\n\r\n",
        ] {
            assert_eq!(take(other), Some((false, false)), "{other:?}");
        }
    }

    #[test]
    fn answers_are_rewritten_like_the_hyper_path() {
        let mut out = Vec::new();
        let head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 12\r\nconnection: keep-alive\r\nx-request-id: cells-own\r\nx-content-type-options: nosniff\r\n\r\n";
        let a = rewrite_response_head(head, &mut out, "nyc", "req-1", false, false).unwrap();
        assert_eq!(a.framing, Framing::Length(12));
        assert!(a.keep_alive && !a.close_client);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("content-length: 12\r\n"));
        assert!(text.contains("x-cell: nyc\r\nx-request-id: req-1\r\n"));
        assert!(!text.contains("cells-own") && !text.contains("keep-alive"));
        assert_eq!(text.matches("x-content-type-options").count(), 1);
        assert!(text.contains("cache-control: no-store\r\n"));
        assert!(text.ends_with("\r\n\r\n"));

        let mut out = Vec::new();
        let head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n";
        let a = rewrite_response_head(head, &mut out, "nyc", "r", false, false).unwrap();
        assert_eq!(a.framing, Framing::Chunked);
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("content-length") && text.contains("transfer-encoding: chunked"));

        let mut out = Vec::new();
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n";
        let a = rewrite_response_head(head, &mut out, "nyc", "r", true, false).unwrap();
        assert_eq!(a.framing, Framing::Empty);

        let mut out = Vec::new();
        let head = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n";
        let a = rewrite_response_head(head, &mut out, "nyc", "r", false, false).unwrap();
        assert_eq!(a.framing, Framing::UntilClose);
        assert!(!a.keep_alive && a.close_client);
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("connection: close\r\n"));

        let mut out = Vec::new();
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n";
        assert!(rewrite_response_head(head, &mut out, "nyc", "r", false, false).is_none());
        let head = b"HTTP/1.1 100 Continue\r\n\r\n";
        assert!(rewrite_response_head(head, &mut out, "nyc", "r", false, false).is_none());
    }
}
