//! Forwarding to cells: token verification, rate limits, pinning, node
//! choice, retries within a budget, streaming both ways.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use edge::rate_limit::{principal_key, BucketKey};
use edge::token::{unverified_cell, Claims, Role, TokenError};
use futures::stream::{FuturesUnordered, StreamExt as _};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Body as _;
use hyper_util::rt::TokioIo;

use crate::affinity::{Affinity, ConnectError};
use crate::metrics::{status_class, ReasonLabels, RequestLabels, UpstreamErrorLabels};
use crate::multiplex::{self, Failure};
use crate::pin::{self, Pin};
use crate::problem::{Problem, RequestId};
use crate::state::{RequestSlot, RouterState};
use crate::upstream::{CellPool, Node, MAX_AFFINITY_CONNECTIONS};

/// Largest request body passed on (the cells' own limit).
pub const MAX_BODY_BYTES: u64 = 1 << 20;
/// Bodies up to this size are read before forwarding so that the request
/// can be retried on another node; larger ones stream through.
const BUFFER_BODY_BYTES: u64 = 64 * 1024;
/// Sum of all request header names and values.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most headers a forwarded request may carry: the cell's HTTP server takes
/// 100, and the router adds up to five.
pub const MAX_HEADER_COUNT: usize = 90;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const SLOW_ADMIN_TIMEOUT: Duration = Duration::from_secs(11 * 60);
/// Attempts per request, first included.
const MAX_ATTEMPTS: u32 = 8;

pub(crate) const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];
pub(crate) static X_CELL: HeaderName = HeaderName::from_static("x-cell");
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// A request body as it will be sent.
pub(crate) enum Payload {
    Buffered(Bytes),
    Streaming(Option<Body>),
}

/// The catch-all handler: everything that is not the router's own endpoint
/// goes to a cell.
pub async fn handle(State(st): State<Arc<RouterState>>, req: Request) -> Response {
    let started = Instant::now();
    match route(&st, req).await {
        Ok((pool, resp)) => {
            answered(&pool, started, resp.status().as_u16());
            resp
        }
        Err(p) => {
            refused(&st, &p);
            p.into_response()
        }
    }
}

/// Counts an answer a cell gave.
pub(crate) fn answered(pool: &CellPool, started: Instant, status: u16) {
    pool.metrics
        .latency
        .observe(started.elapsed().as_secs_f64());
    pool.metrics.answered(status);
}

/// Counts an answer the router gave instead of a cell.
pub(crate) fn refused(st: &RouterState, p: &Problem) {
    st.metrics
        .requests
        .get_or_create(&RequestLabels {
            cell: "router".into(),
            class: status_class(p.status.as_u16()),
        })
        .inc();
}

/// A request let in: its verified claims, if it carried a token, and its
/// slot under the in-flight limit, which the caller holds while it
/// forwards (none for a long poll).
struct Admitted<'a> {
    claims: Option<Claims>,
    inflight: Option<RequestSlot<'a>>,
}

/// Everything a request is held to before its body is read: header size,
/// declared body size, its token, the rate limits, the in-flight limit.
async fn admit<'a>(
    st: &'a RouterState,
    parts: &http::request::Parts,
    peer: Option<IpAddr>,
) -> Result<Admitted<'a>, Problem> {
    let header_bytes: usize = parts
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    let too_large_head = |detail: String| {
        let p = Problem::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            detail,
        );
        Err(reject(st, "headers_too_large", p))
    };
    if header_bytes > MAX_HEADER_BYTES {
        return too_large_head(format!("request headers exceed {MAX_HEADER_BYTES} bytes"));
    }
    // The router adds a few headers of its own (forwarding, request id,
    // trace context): past a cell's limit of 100 the cell would drop the
    // connection, which looked like the node failing — one anonymous
    // request took a whole cell out of rotation.
    if parts.headers.len() > MAX_HEADER_COUNT {
        return too_large_head(format!(
            "a request carries at most {MAX_HEADER_COUNT} headers"
        ));
    }
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|l| l > MAX_BODY_BYTES) {
        return Err(reject(st, "body_too_large", too_large()));
    }
    let claims = match bearer(&parts.headers)? {
        Some(token) => Some(verify(st, token).await?),
        None => None,
    };
    rate_limit(st, claims.as_ref(), peer, parts.uri.path())?;
    // Long polls wait without work; the cells bound them on their own.
    let inflight = if long_poll_wait(parts.uri.path(), parts.uri.query()).is_some() {
        None
    } else {
        Some(st.enter().ok_or_else(|| {
            reject(
                st,
                "overloaded",
                Problem::unavailable("overloaded", "the router is at its request limit"),
            )
        })?)
    };
    Ok(Admitted { claims, inflight })
}

/// Where a request without a body goes, and what is sent there: the
/// router's own HTTP/1.1 loop (`http1`) uses this for the requests it
/// serves itself.
pub(crate) async fn bodiless<'a>(
    st: &'a RouterState,
    parts: &http::request::Parts,
    peer: IpAddr,
    forwarded_for: Option<&HeaderValue>,
    request_id: &str,
) -> Result<(Arc<CellPool>, Outgoing, Option<RequestSlot<'a>>), Problem> {
    let Admitted { claims, inflight } = admit(st, parts, Some(peer)).await?;
    let Pin::Cell(cell) = decide(st, parts, claims.as_ref(), None)? else {
        return Err(Problem::bad_request("login body must be JSON"));
    };
    let pool = cell_pool(st, &cell)?;
    let tls = st.cfg.tls.is_some();
    let out = Outgoing::new(
        parts,
        claims.as_ref(),
        Some(peer),
        forwarded_for,
        None,
        request_id,
        tls,
    );
    Ok((pool, out, inflight))
}

/// Which cell the request belongs to, by the current region directory.
fn decide(
    st: &RouterState,
    parts: &http::request::Parts,
    claims: Option<&Claims>,
    body: Option<&serde_json::Value>,
) -> Result<Pin, Problem> {
    let dir = st.directory.read().unwrap_or_else(|e| e.into_inner());
    let up = |cell: &str| st.pool(cell).is_some_and(|p| p.any_available());
    pin::decide(
        &dir,
        &parts.method,
        parts.uri.path(),
        parts.uri.query(),
        claims,
        body,
        &up,
    )
}

fn cell_pool(st: &RouterState, cell: &str) -> Result<Arc<CellPool>, Problem> {
    st.pool(cell)
        .ok_or_else(|| Problem::not_found("unknown_cell", format!("no cell {cell:?}")))
}

async fn route(st: &Arc<RouterState>, req: Request) -> Result<(Arc<CellPool>, Response), Problem> {
    let (mut parts, body) = req.into_parts();
    // A WebSocket handshake (GraphQL subscriptions) is relayed, then the
    // two connections are spliced.
    let upgrade = websocket_upgrade(&parts.headers)
        .then(|| parts.extensions.remove::<hyper::upgrade::OnUpgrade>())
        .flatten();
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let Admitted {
        claims,
        inflight: _inflight,
    } = admit(st, &parts, peer).await?;
    if body.size_hint().lower() > MAX_BODY_BYTES {
        return Err(reject(st, "body_too_large", too_large()));
    }

    let needs_body = pin::needs_body(&parts.method, parts.uri.path());
    let hint = body.size_hint();
    let small = hint.upper().is_some_and(|u| u <= BUFFER_BODY_BYTES);
    let mut payload = if needs_body || small {
        let limit = if needs_body {
            BUFFER_BODY_BYTES as usize
        } else {
            MAX_BODY_BYTES as usize
        };
        let bytes = http_body_util::Limited::new(body, limit)
            .collect()
            .await
            .map_err(|_| too_large())?
            .to_bytes();
        Payload::Buffered(bytes)
    } else {
        let limited = http_body_util::Limited::new(body, MAX_BODY_BYTES as usize);
        Payload::Streaming(Some(Body::new(limited)))
    };
    let json_body = match (&payload, needs_body) {
        (Payload::Buffered(b), true) => Some(
            serde_json::from_slice::<serde_json::Value>(b)
                .map_err(|_| Problem::bad_request("body is not valid JSON"))?,
        ),
        _ => None,
    };

    let decision = decide(st, &parts, claims.as_ref(), json_body.as_ref())?;
    let request_id = parts
        .extensions
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    let affinity = parts.extensions.get::<Arc<Affinity>>().cloned();
    let forwarded_for = affinity.as_ref().and_then(|a| a.forwarded_for.clone());
    let outgoing = Outgoing::new(
        &parts,
        claims.as_ref(),
        peer,
        forwarded_for.as_ref(),
        affinity,
        &request_id,
        st.cfg.tls.is_some(),
    );
    match decision {
        Pin::Cell(cell) => {
            let pool = cell_pool(st, &cell)?;
            let resp = match upgrade {
                Some(client) => tunnel(st, &pool, &outgoing, &parts.headers, client).await?,
                None => forward(st, &pool, &outgoing, &mut payload).await?,
            };
            Ok((pool, resp))
        }
        Pin::Login { email } => {
            let Payload::Buffered(bytes) = payload else {
                return Err(Problem::bad_request("login body must be JSON"));
            };
            login(st, &outgoing, bytes, email).await
        }
    }
}

fn websocket_upgrade(headers: &HeaderMap) -> bool {
    header_has_token(headers, header::CONNECTION, "upgrade")
        && header_has_token(headers, header::UPGRADE, "websocket")
}

/// Whether a comma-separated header value lists `token` (any case).
pub(crate) fn lists_token(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Whether any `name` header lists `token`.
pub(crate) fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| lists_token(v, token)))
}

/// Relays a WebSocket handshake to one node of the cell over a connection
/// of its own and, once the node switches protocols, splices the client's
/// connection to it. The stream's lifetime is the client's: no request
/// timeout applies, and no retry (the node is picked like a read).
async fn tunnel(
    st: &RouterState,
    pool: &CellPool,
    out: &Outgoing,
    incoming: &HeaderMap,
    client: hyper::upgrade::OnUpgrade,
) -> Result<Response, Problem> {
    let unavailable = || {
        Problem::unavailable(
            "cell_unavailable",
            format!("no node of cell {:?} is reachable", pool.cell),
        )
    };
    let i = pool.pick(false, &[]).ok_or_else(unavailable)?;
    let node = &pool.nodes[i];
    let failed = |e: &dyn std::fmt::Display| {
        tracing::debug!(cell = %pool.cell, node = %node.url, error = %e, "websocket relay failed");
        Problem::new(
            StatusCode::BAD_GATEWAY,
            "upstream_failed",
            format!("cell {:?} did not take the WebSocket", pool.cell),
        )
    };
    let io = crate::affinity::dial(node, st.affinity_tls.as_ref())
        .await
        .map_err(|ConnectError::Connect(e)| {
            pool.mark_down(i);
            failed(&e)
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| failed(&e))?;
    tokio::spawn(conn.with_upgrades());
    let mut req = http::Request::builder()
        .method(out.method.clone())
        .uri(http::Uri::from(out.path_and_query.clone()))
        .body(Body::empty())
        .map_err(|e| failed(&e))?;
    *req.headers_mut() = out.headers.clone();
    let h = req.headers_mut();
    if let Ok(host) = HeaderValue::from_str(node.authority.as_str()) {
        h.insert(header::HOST, host);
    }
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Some(u) = incoming.get(header::UPGRADE) {
        h.insert(header::UPGRADE, u.clone());
    }
    let mut resp = sender.send_request(req).await.map_err(|e| failed(&e))?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(into_response(resp, &pool.cell));
    }
    let upstream = hyper::upgrade::on(&mut resp);
    tokio::spawn(async move {
        let (Ok(a), Ok(b)) = (client.await, upstream.await) else {
            return;
        };
        let (mut a, mut b) = (TokioIo::new(a), TokioIo::new(b));
        let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
    });
    // The 101 keeps its `Connection`/`Upgrade`: they are the handshake.
    let (mut parts, _) = resp.into_parts();
    if let Ok(v) = HeaderValue::from_str(&pool.cell) {
        parts.headers.insert(X_CELL.clone(), v);
    }
    Ok(Response::from_parts(parts, Body::empty()))
}

fn too_large() -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("request body exceeds {MAX_BODY_BYTES} bytes"),
    )
}

fn reject(st: &RouterState, reason: &'static str, p: Problem) -> Problem {
    st.metrics
        .rejected
        .get_or_create(&ReasonLabels { reason })
        .inc();
    p
}

pub(crate) fn bearer(headers: &HeaderMap) -> Result<Option<&str>, Problem> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| Problem::unauthorized("Authorization header is not ASCII"))?;
    // The scheme is case-insensitive (RFC 9110 §11.1), as on the cells.
    let token = v
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t);
    match token {
        Some(t) if !t.trim().is_empty() => Ok(Some(t.trim())),
        _ => Err(Problem::unauthorized(
            "expected Authorization: Bearer <token>",
        )),
    }
}

/// Verifies an access token against its cell's published keys.
async fn verify(st: &RouterState, token: &str) -> Result<Claims, Problem> {
    let unauthorized = |why: String| reject(st, "bad_token", Problem::unauthorized(why));
    let cell = unverified_cell(token).ok_or_else(|| {
        unauthorized("not an access token (ops bootstrap tokens go to cells directly)".into())
    })?;
    let pool = st
        .pool(&cell)
        .ok_or_else(|| unauthorized("token issued by a cell this router does not know".into()))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let keys = pool.keys(&st.client, false).await.ok_or_else(|| {
        Problem::unavailable(
            "cell_unavailable",
            format!("cell {cell:?} cannot be reached to verify the token"),
        )
    })?;
    let verdict = match keys.verify(token, now, &cell) {
        Err(TokenError::UnknownKey(_)) => match pool.keys(&st.client, true).await {
            Some(fresh) => fresh.verify(token, now, &cell),
            None => Err(TokenError::UnknownKey(String::new())),
        },
        other => other,
    };
    verdict.map_err(|e| unauthorized(e.to_string()))
}

fn rate_limit(
    st: &RouterState,
    claims: Option<&Claims>,
    ip: Option<IpAddr>,
    path: &str,
) -> Result<(), Problem> {
    let now = Instant::now();
    let mut keys = Vec::with_capacity(2);
    match claims {
        Some(c) if c.role == Role::Ops => return Ok(()),
        Some(c) => keys.push(principal_key(&format!("{}/{}", c.cell, c.sub))),
        None => keys.extend(ip.map(BucketKey::Ip)),
    }
    if path.starts_with("/v1/auth/") {
        keys.extend(ip.map(BucketKey::AuthIp));
    }
    for k in keys {
        if let Err(wait) = st.limiter.take(k, now) {
            return Err(reject(
                st,
                "rate_limit",
                Problem::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "too many requests; slow down",
                )
                .retry_after(wait),
            ));
        }
    }
    Ok(())
}

/// The parts of the upstream request that are the same on every attempt.
pub(crate) struct Outgoing {
    pub method: Method,
    pub path_and_query: http::uri::PathAndQuery,
    pub headers: HeaderMap,
    pub timeout: Duration,
    long_poll: bool,
    /// Requests with the same key go to the same node (`sticky`).
    sticky: Option<u64>,
    /// The client connection's own upstream connections, once it has sent
    /// more than one request (a connection used once should not cost an
    /// upstream connection).
    affinity: Option<Arc<Affinity>>,
}

impl Outgoing {
    /// `forwarded_for` is the client connection's address as a header value
    /// when it was formatted once for the connection; `affinity` its own
    /// upstream connections, if it has them.
    fn new(
        parts: &http::request::Parts,
        claims: Option<&Claims>,
        peer: Option<IpAddr>,
        forwarded_for: Option<&HeaderValue>,
        affinity: Option<Arc<Affinity>>,
        request_id: &str,
        tls: bool,
    ) -> Self {
        // One pass: copy everything but hop-by-hop headers (including those
        // a `Connection` header names), `Host` and the forwarding headers
        // this hop rewrites.
        let named_by_connection: Vec<&str> = parts
            .headers
            .get(header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(',').map(str::trim).collect())
            .unwrap_or_default();
        let mut headers = HeaderMap::with_capacity(parts.headers.len() + 4);
        for (name, value) in &parts.headers {
            let skip = HOP_BY_HOP.contains(&name.as_str())
                || name == header::HOST
                || name == X_FORWARDED_FOR
                || name == TRACEPARENT
                || name == X_REQUEST_ID
                || named_by_connection
                    .iter()
                    .any(|n| n.eq_ignore_ascii_case(name.as_str()));
            if !skip {
                headers.append(name.clone(), value.clone());
            }
        }
        let prior = parts.headers.get(&X_FORWARDED_FOR);
        let xff = match (prior, forwarded_for) {
            // The usual case: this connection's address, formatted once.
            (None, Some(own)) => Some(own.clone()),
            (prior, _) => peer.and_then(|ip| {
                let v = match prior.and_then(|v| v.to_str().ok()) {
                    Some(prior) => format!("{prior}, {ip}"),
                    None => ip.to_string(),
                };
                HeaderValue::from_str(&v).ok()
            }),
        };
        if let Some(v) = xff {
            headers.insert(X_FORWARDED_FOR.clone(), v);
        }
        headers.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(if tls { "https" } else { "http" }),
        );
        if let Ok(v) = HeaderValue::from_str(request_id) {
            headers.insert(X_REQUEST_ID.clone(), v);
        }
        if let Some(v) = next_traceparent(parts.headers.get(&TRACEPARENT)) {
            headers.insert(TRACEPARENT.clone(), v);
        }
        let path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        let affinity = affinity.filter(|a| a.note_request() >= 1);
        Outgoing {
            affinity,
            sticky: crate::sticky::search_key(&parts.method, &parts.uri, claims, peer),
            method: parts.method.clone(),
            long_poll: long_poll_wait(parts.uri.path(), parts.uri.query()).is_some(),
            timeout: route_timeout(parts.uri.path(), parts.uri.query()),
            path_and_query,
            headers,
        }
    }

    /// A long poll: it waits on the cell's shared HTTP/2 connections.
    pub(crate) fn long_poll(&self) -> bool {
        self.long_poll
    }

    fn safe(&self) -> bool {
        matches!(self.method, Method::GET | Method::HEAD | Method::OPTIONS)
    }

    /// A search (it keeps to one node): slower than most reads, so it does
    /// not queue in a pipe ahead of them.
    pub(crate) fn is_search(&self) -> bool {
        self.sticky.is_some()
    }

    /// The node to try next: the one the request sticks to, else the
    /// leader for writes (when `prefer_leader`) or the next in rotation.
    pub(crate) fn node_for(
        &self,
        pool: &CellPool,
        prefer_leader: bool,
        tried: &[usize],
    ) -> Option<usize> {
        match self.sticky {
            Some(key) => pool.pick_sticky(key, tried),
            None => pool.pick(prefer_leader, tried),
        }
    }

    /// Whether sending it twice does what sending it once does: a safe
    /// method, or a checkout with its `Idempotency-Key` — the one write the
    /// cell deduplicates by that header (elsewhere it ignores it, so a
    /// retried `POST` would create twice).
    fn idempotent(&self) -> bool {
        self.safe()
            || (self.method == Method::POST
                && self.path_and_query.path() == "/v1/orders"
                && self.headers.contains_key(&IDEMPOTENCY_KEY))
    }
}

/// The most a cell holds a long poll, in seconds.
const MAX_LONG_POLL_WAIT: u64 = 60;

/// The `wait` of a long poll (`/v1/events`, `/v1/routes/available`), if
/// this is one. Every request to those paths counts as one, its `wait`
/// read as the cell reads it (percent-decoded: `%77ait=60` waits too) or,
/// unreadable or absent, the most a cell waits: a wait the router did not
/// see held up the connection other clients' requests shared.
pub(crate) fn long_poll_wait(path: &str, query: Option<&str>) -> Option<u64> {
    if !matches!(path, "/v1/events" | "/v1/routes/available") {
        return None;
    }
    let wait = query
        .and_then(|q| form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "wait"))
        .and_then(|(_, w)| w.parse::<u64>().ok());
    Some(wait.unwrap_or(MAX_LONG_POLL_WAIT))
}

/// Long polls (`wait=` up to 60 s) get their wait plus a margin; everything
/// else the default.
fn route_timeout(path: &str, query: Option<&str>) -> Duration {
    match long_poll_wait(path, query) {
        Some(w) => Duration::from_secs(w.min(MAX_LONG_POLL_WAIT) + 15).max(DEFAULT_TIMEOUT),
        // A cell's membership changes and snapshots answer once done,
        // which on a large state takes minutes (the cell allows ten).
        None if matches!(
            path,
            "/admin/cluster/nodes" | "/admin/cluster/membership" | "/admin/snapshot"
        ) =>
        {
            SLOW_ADMIN_TIMEOUT
        }
        None => DEFAULT_TIMEOUT,
    }
}

/// W3C trace context: keep the caller's trace id and flags, with a new
/// parent id for the router's hop; start a trace when there is none (or
/// it is malformed).
fn next_traceparent(incoming: Option<&HeaderValue>) -> Option<HeaderValue> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let put_hex = |out: &mut [u8], bytes: &[u8]| {
        for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
            pair[0] = HEX[usize::from(b >> 4)];
            pair[1] = HEX[usize::from(b & 15)];
        }
    };
    let hex = |s: &[u8]| s.iter().all(u8::is_ascii_hexdigit);
    // version - trace id (32) - parent id (16) - flags (2)
    let valid = incoming.map(HeaderValue::as_bytes).filter(|v| {
        v.len() == 55
            && v.starts_with(b"00-")
            && v[35] == b'-'
            && v[52] == b'-'
            && hex(&v[3..35])
            && v[3..35].iter().any(|&b| b != b'0')
            && hex(&v[36..52])
            && hex(&v[53..55])
    });
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-01";
    match valid {
        Some(v) => {
            out[3..35].copy_from_slice(&v[3..35].to_ascii_lowercase());
            out[53..55].copy_from_slice(&v[53..55]);
        }
        None => put_hex(&mut out[3..35], &rand::random::<[u8; 16]>()),
    }
    put_hex(&mut out[36..52], &rand::random::<[u8; 8]>());
    HeaderValue::from_bytes(&out).ok()
}

/// Counts a request as in flight to a cell until dropped.
pub(crate) struct InFlight<'a>(&'a CellPool);

impl<'a> InFlight<'a> {
    pub(crate) fn new(pool: &'a CellPool) -> Self {
        pool.started_request();
        pool.metrics.in_flight.inc();
        InFlight(pool)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.finished_request();
        self.0.metrics.in_flight.dec();
    }
}

/// Sends the request to a node of the cell, retrying on another node when
/// that is safe: always when the connection could not even be made (the
/// request never left), otherwise only for safe methods or requests with an
/// `Idempotency-Key`, and only while the cell's retry budget lasts.
pub(crate) async fn forward(
    st: &RouterState,
    pool: &CellPool,
    out: &Outgoing,
    payload: &mut Payload,
) -> Result<Response, Problem> {
    let _in_flight = InFlight::new(pool);
    let deadline = Instant::now() + out.timeout;
    let mut tried = Vec::new();
    let mut attempt = 0u32;
    let unavailable = || {
        Problem::unavailable(
            "cell_unavailable",
            format!("no node of cell {:?} is reachable", pool.cell),
        )
    };
    loop {
        attempt += 1;
        let i = out
            .node_for(pool, !out.safe(), &tried)
            .ok_or_else(unavailable)?;
        tried.push(i);
        let (body, buffered) = match payload {
            Payload::Buffered(b) => (Body::from(b.clone()), true),
            Payload::Streaming(b) => (b.take().ok_or_else(unavailable)?, false),
        };
        let node = &pool.nodes[i];
        let remaining = deadline.saturating_duration_since(Instant::now());
        let result = tokio::time::timeout(remaining, send(st, pool, node, out, body)).await;
        let retry = || {
            let backoff = Duration::from_millis((25u64 << attempt.min(5)).min(500))
                + Duration::from_millis(rand::random::<u64>() % 25);
            let ok =
                attempt < MAX_ATTEMPTS && Instant::now() + backoff < deadline && pool.take_retry();
            if ok {
                pool.metrics.retries.inc();
            }
            ok.then_some(backoff)
        };
        match result {
            Ok(Ok(resp)) => {
                pool.record_success(i);
                let status = resp.status();
                let transient = matches!(
                    status,
                    StatusCode::BAD_GATEWAY
                        | StatusCode::SERVICE_UNAVAILABLE
                        | StatusCode::GATEWAY_TIMEOUT
                );
                if transient && buffered && out.idempotent() {
                    if let Some(backoff) = retry() {
                        drop(resp);
                        tokio::time::sleep(backoff).await;
                        continue;
                    }
                }
                return Ok(into_response(resp, &pool.cell));
            }
            Ok(Err(e)) => {
                let connect = e.not_sent;
                st.metrics
                    .upstream_errors
                    .get_or_create(&UpstreamErrorLabels {
                        cell: pool.cell.clone(),
                        kind: if e.unreachable {
                            "connect"
                        } else {
                            "transport"
                        },
                    })
                    .inc();
                if e.unreachable {
                    pool.mark_down(i);
                } else if !e.not_sent && pool.record_failure(i) {
                    pool.metrics.ejections.inc();
                }
                tracing::debug!(cell = %pool.cell, node = %pool.nodes[i].url, error = %e.message, "upstream attempt failed");
                if buffered && (connect || out.idempotent()) {
                    if let Some(backoff) = retry() {
                        tokio::time::sleep(backoff).await;
                        continue;
                    }
                }
                return Err(if pool.any_available() {
                    Problem::new(
                        StatusCode::BAD_GATEWAY,
                        "upstream_failed",
                        format!("cell {:?} did not answer the request", pool.cell),
                    )
                } else {
                    unavailable()
                });
            }
            Err(_) => {
                st.metrics
                    .upstream_errors
                    .get_or_create(&UpstreamErrorLabels {
                        cell: pool.cell.clone(),
                        kind: "timeout",
                    })
                    .inc();
                if pool.record_failure(i) {
                    pool.metrics.ejections.inc();
                }
                return Err(Problem::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    format!("cell {:?} did not answer in time", pool.cell),
                ));
            }
        }
    }
}

/// A failed attempt; `not_sent` means the request certainly did not reach
/// the node (safe to send elsewhere whatever it is).
struct SendError {
    not_sent: bool,
    /// The node could not be reached at all (refused, unreachable).
    unreachable: bool,
    message: String,
}

impl From<Failure> for SendError {
    fn from(f: Failure) -> Self {
        let (not_sent, unreachable, message) = match f {
            Failure::Connect(m) => (true, true, m),
            Failure::NotSent(m) => (true, false, m),
            Failure::Transport(m) => (false, false, m),
        };
        SendError {
            not_sent,
            unreachable,
            message,
        }
    }
}

/// One attempt on one node: over this client connection's own upstream
/// connection when it has earned one (see `affinity`), else the shared
/// pool; long polls always share HTTP/2 connections (`multiplex`).
async fn send(
    st: &RouterState,
    pool: &CellPool,
    node: &Node,
    out: &Outgoing,
    body: Body,
) -> Result<http::Response<Body>, SendError> {
    let build = |uri: http::Uri, body: Body| {
        let mut req = http::Request::builder()
            .method(out.method.clone())
            .uri(uri)
            .body(body)
            .map_err(|e| SendError {
                not_sent: true,
                unreachable: false,
                message: e.to_string(),
            })?;
        *req.headers_mut() = out.headers.clone();
        Ok::<_, SendError>(req)
    };
    if let Some(aff) = out.affinity.as_ref().filter(|_| {
        !out.long_poll && pool.affinity_open.load(Ordering::Relaxed) < MAX_AFFINITY_CONNECTIONS
    }) {
        let sender = match aff.take_ready(node) {
            Some(s) => Some(s),
            None if aff.may_connect(node) => Some(
                // Boxed, as is every rare step: a future is as large as its
                // largest state, and an idle long poll holds its own for a
                // minute.
                Box::pin(aff.connect(node, st.affinity_tls.as_ref(), pool.affinity_open.clone()))
                    .await
                    .map_err(|ConnectError::Connect(message)| SendError {
                        not_sent: true,
                        unreachable: true,
                        message,
                    })?,
            ),
            None => None,
        };
        if let Some(mut sender) = sender {
            // Origin-form target and an explicit Host, as on any HTTP/1.1
            // connection.
            let mut req = build(http::Uri::from(out.path_and_query.clone()), body)?;
            if let Ok(host) = HeaderValue::from_str(node.authority.as_str()) {
                req.headers_mut().insert(header::HOST, host);
            }
            let answer = sender.send_request(req);
            aff.put_back(node, sender);
            // A canceled request never left: the kept-alive connection
            // was closed under it, which says nothing about the node.
            return answer
                .await
                .map(|r| r.map(Body::new))
                .map_err(|e| SendError {
                    not_sent: e.is_canceled(),
                    unreachable: false,
                    message: e.to_string(),
                });
        }
    }
    let uri = http::Uri::builder()
        .scheme(node.scheme.clone())
        .authority(node.authority.clone())
        .path_and_query(out.path_and_query.clone())
        .build()
        .map_err(|e| SendError {
            not_sent: true,
            unreachable: false,
            message: e.to_string(),
        })?;
    if out.long_poll && out.safe() {
        let mut req = http::Request::new(());
        *req.method_mut() = out.method.clone();
        *req.uri_mut() = uri;
        *req.headers_mut() = out.headers.clone();
        return multiplex::send(node, st.multiplex_tls.as_ref(), st.cfg.poll_keepalive, req)
            .await
            .map_err(SendError::from);
    }
    let req = build(uri, body)?;
    st.client
        .request(req)
        .await
        .map(|r| r.map(Body::new))
        .map_err(|e| SendError {
            not_sent: e.is_connect(),
            unreachable: e.is_connect(),
            message: e.to_string(),
        })
}

fn into_response<B>(resp: http::Response<B>, cell: &str) -> Response
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let (mut parts, body) = resp.into_parts();
    for h in HOP_BY_HOP {
        parts.headers.remove(h);
    }
    if let Ok(v) = HeaderValue::from_str(cell) {
        parts.headers.insert(X_CELL.clone(), v);
    }
    Response::from_parts(parts, Body::new(body))
}

/// Login without knowing the home cell: ask every cell at once, take the one
/// that accepts, remember the answer. An email is unique within a cell
/// only, so a remembered cell that refuses the password is not the last
/// word: the others are asked too (else whoever logged in first with an
/// email decided, for everyone else with it, where their logins went).
async fn login(
    st: &RouterState,
    out: &Outgoing,
    body: Bytes,
    email: String,
) -> Result<(Arc<CellPool>, Response), Problem> {
    let draining_region = |pool: &CellPool| {
        st.directory
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&pool.region)
            .is_some_and(|r| r.draining)
    };
    // What to answer when no cell accepts: a rate limit, then a request no
    // cell takes (the same everywhere), then an outage — the account may
    // live in the cell that did not answer, so "wrong credentials" would
    // be a guess — and only then "wrong credentials".
    let mut best: Option<(u8, Arc<CellPool>, Result<Response, Problem>)> = None;
    let remembered = st.login_cell(&email).and_then(|c| st.pool(&c));
    if let Some(pool) = &remembered {
        if draining_region(pool) {
            return Err(pin::draining(&pool.region));
        }
        let resp = forward(st, pool, out, &mut Payload::Buffered(body.clone())).await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok((pool.clone(), resp));
        }
        best = Some((1, pool.clone(), Ok(resp)));
    }
    let pools = st.all_pools();
    let mut asks: FuturesUnordered<_> = pools
        .iter()
        .filter(|p| remembered.as_ref().is_none_or(|r| r.cell != p.cell))
        .map(|pool| {
            let body = body.clone();
            async move {
                let r = forward(st, pool, out, &mut Payload::Buffered(body)).await;
                (pool.clone(), r)
            }
        })
        .collect();
    while let Some((pool, r)) = asks.next().await {
        let rank = match &r {
            Ok(resp) if resp.status().is_success() => {
                if draining_region(&pool) {
                    return Err(pin::draining(&pool.region));
                }
                st.remember_login(email, pool.cell.clone());
                return r.map(|resp| (pool, resp));
            }
            Ok(resp) if resp.status() == StatusCode::TOO_MANY_REQUESTS => 4,
            Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED => 1,
            Ok(resp) if resp.status().is_client_error() => 3,
            Ok(_) | Err(_) => 2,
        };
        if best.as_ref().is_none_or(|(b, _, _)| rank > *b) {
            best = Some((rank, pool, r));
        }
    }
    match best {
        Some((_, pool, r)) => r.map(|resp| (pool, resp)),
        None => Err(Problem::unavailable(
            "cell_unavailable",
            "no cells are configured",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_polls_are_known_by_their_path_and_read_as_the_cell_reads_them() {
        let wait = |q: Option<&str>| long_poll_wait("/v1/events", q);
        assert_eq!(wait(Some("after=3&wait=5")), Some(5));
        // Percent-encoded, as the cell decodes it.
        assert_eq!(wait(Some("%77ait=30")), Some(30));
        assert_eq!(wait(Some("wait=%33%30")), Some(30));
        // No readable wait: as long as a cell may hold one.
        assert_eq!(wait(None), Some(MAX_LONG_POLL_WAIT));
        assert_eq!(wait(Some("wait=soon")), Some(MAX_LONG_POLL_WAIT));
        assert_eq!(
            long_poll_wait("/v1/routes/available", Some("version=2")),
            Some(60)
        );
        assert_eq!(long_poll_wait("/v1/cell", Some("wait=5")), None);
    }

    #[test]
    fn traceparent_keeps_the_trace_and_replaces_the_span() {
        let incoming =
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let next = next_traceparent(Some(&incoming)).unwrap();
        let next = next.to_str().unwrap();
        assert!(next.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(next.ends_with("-01"));
        assert_ne!(next, incoming.to_str().unwrap());
        let upper =
            HeaderValue::from_static("00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-00");
        let next = next_traceparent(Some(&upper)).unwrap();
        let next = next.to_str().unwrap();
        assert!(next.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(next.ends_with("-00"));
        for bad in [
            "garbage",
            "00-0000-00f067aa0ba902b7-01",
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473x-00f067aa0ba902b7-01",
        ] {
            let v = HeaderValue::from_str(bad).unwrap();
            let fresh = next_traceparent(Some(&v)).unwrap();
            let fresh = fresh.to_str().unwrap();
            assert_eq!(fresh.len(), 55, "{fresh}");
            assert!(
                fresh.starts_with("00-") && fresh.ends_with("-01"),
                "{fresh}"
            );
            if bad.len() == 55 {
                assert_ne!(fresh[3..35], bad[3..35], "an invalid trace id was kept");
            }
            assert!(fresh[3..35].bytes().any(|b| b != b'0'), "{fresh}");
            let hex = |s: &str| {
                s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            };
            assert!(hex(&fresh[3..35]) && hex(&fresh[36..52]), "{fresh}");
        }
    }

    #[test]
    fn only_safe_methods_and_keyed_checkouts_are_retried() {
        let outgoing = |method: Method, path: &str, key: bool| {
            let mut req = http::Request::builder().method(method).uri(path);
            if key {
                req = req.header("idempotency-key", "k1");
            }
            let (parts, ()) = req.body(()).unwrap().into_parts();
            Outgoing::new(&parts, None, None, None, None, "r1", false)
        };
        assert!(outgoing(Method::GET, "/v1/products/x", false).idempotent());
        assert!(outgoing(Method::POST, "/v1/orders", true).idempotent());
        assert!(!outgoing(Method::POST, "/v1/orders", false).idempotent());
        // The cell ignores the key here: a retry would make a second one.
        assert!(!outgoing(Method::POST, "/v1/vendors", true).idempotent());
        assert!(!outgoing(Method::PATCH, "/v1/orders", true).idempotent());
        assert!(!outgoing(Method::POST, "/v1/orders/x/cancel", true).idempotent());
    }

    #[test]
    fn long_polls_get_their_wait() {
        assert_eq!(
            route_timeout("/v1/events", Some("after=3&wait=60")),
            Duration::from_secs(75)
        );
        assert_eq!(
            route_timeout("/v1/events", Some("wait=9999")),
            Duration::from_secs(75)
        );
        assert_eq!(
            route_timeout("/v1/orders", Some("wait=60")),
            DEFAULT_TIMEOUT
        );
        assert_eq!(
            route_timeout("/admin/cluster/nodes", None),
            SLOW_ADMIN_TIMEOUT
        );
    }
}
