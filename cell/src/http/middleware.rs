//! The edge: request ids, security headers, load shedding, timeouts,
//! latency metrics, and problem+json for every error.

use edge::rate_limit::{principal_key, BucketKey};
use std::time::{Duration, Instant};

use axum::{
    extract::{MatchedPath, Request, State},
    http::{header, HeaderValue, Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::{
    extract::{resolve_principal, Principal},
    problem::{ApiError, PROBLEM_JSON, REQUEST_ID},
    AppState,
};
use crate::metrics::{HttpLabels, ReasonLabels};
use axum::extract::ConnectInfo;
use edge::token::Role;
use std::net::{IpAddr, SocketAddr};

fn valid_request_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Outermost layer: assigns the request id, records latency, guarantees
/// problem+json bodies and security headers on every response.
pub async fn edge(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|s| valid_request_id(s))
        .map(str::to_string)
        .unwrap_or_else(|| ulid::Ulid::new().to_string());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    // Standard methods by name; anything a client makes up is one label,
    // or every new spelling would add a time series.
    let method = match *req.method() {
        Method::GET
        | Method::HEAD
        | Method::POST
        | Method::PUT
        | Method::PATCH
        | Method::DELETE
        | Method::OPTIONS => req.method().as_str().to_string(),
        _ => "OTHER".to_string(),
    };
    let inner = state.clone();
    let mut resp = REQUEST_ID
        .scope(id.clone(), async move {
            let resp = shed_and_time(&inner, req, next).await;
            ensure_problem(resp)
        })
        .await;
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&id) {
        h.insert("x-request-id", v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if state.tls {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    let status = resp.status().as_u16();
    state
        .metrics
        .http_duration
        .get_or_create(&HttpLabels {
            route,
            method,
            status,
        })
        .observe(started.elapsed().as_secs_f64());
    resp
}

/// The client's address: the TCP peer, unless that is a trusted proxy, in
/// which case the right-most `X-Forwarded-For` entry not added by a trusted
/// proxy (entries further left are the client's own claims and can be
/// forged).
fn client_ip(peer: IpAddr, headers: &header::HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let mut client = peer;
    for value in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(value) = value.to_str() else {
            return client;
        };
        for entry in value.rsplit(',') {
            match entry.trim().parse::<IpAddr>() {
                Ok(ip) if trusted.contains(&ip) => client = ip,
                Ok(ip) => return ip,
                Err(_) => return client,
            }
        }
    }
    client
}

/// Per-principal and per-IP token buckets; ops is never limited.
fn rate_limit(state: &AppState, req: &mut Request) -> Result<(), ApiError> {
    let now = std::time::Instant::now();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let ip = peer.map(|peer| client_ip(peer, req.headers(), &state.cfg.trusted_proxies));
    let (mut parts, body) =
        std::mem::replace(req, Request::new(axum::body::Body::empty())).into_parts();
    let principal = if parts.headers.contains_key(header::AUTHORIZATION) {
        resolve_principal(&parts, state).ok()
    } else {
        None
    };
    if let Some(p) = &principal {
        parts.extensions.insert(p.clone());
    }
    if let Some(ip) = ip {
        parts.extensions.insert(ClientIp(ip));
    }
    let is_auth = parts.uri.path().starts_with("/v1/auth/");
    *req = Request::from_parts(parts, body);
    take_allowance(state, principal.as_ref(), ip, is_auth, now)
}

/// The client's address as the rate limits see it, for handlers that
/// charge more than the request itself (a GraphQL request's further
/// mutations).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

/// Takes one call's allowance: from the principal's bucket (the address's
/// when anonymous), and also from the address's sign-in bucket for the
/// sign-in actions. Ops is never limited.
pub(crate) fn take_allowance(
    state: &AppState,
    principal: Option<&Principal>,
    ip: Option<IpAddr>,
    auth: bool,
    now: Instant,
) -> Result<(), ApiError> {
    if principal.is_some_and(|p| p.role == Role::Ops) {
        return Ok(());
    }
    let mut keys = Vec::with_capacity(2);
    match principal {
        Some(p) => keys.push(principal_key(&p.sub)),
        None => keys.extend(ip.map(BucketKey::Ip)),
    }
    if auth {
        keys.extend(ip.map(BucketKey::AuthIp));
    }
    take_keys(state, keys, now)
}

/// Takes one token from each bucket named, or answers `429`.
pub(crate) fn take_keys(
    state: &AppState,
    keys: impl IntoIterator<Item = BucketKey>,
    now: Instant,
) -> Result<(), ApiError> {
    for key in keys {
        if let Err(retry) = state.limiter.take(key, now) {
            state
                .metrics
                .shed
                .get_or_create(&ReasonLabels {
                    reason: "rate_limit".into(),
                })
                .inc();
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests; slow down",
            )
            .retry_after(retry));
        }
    }
    Ok(())
}

async fn shed_and_time(state: &AppState, mut req: Request, next: Next) -> Response {
    if let Err(e) = rate_limit(state, &mut req) {
        return e.into_response();
    }
    // Shed instead of queueing without bound: a full node answers fast.
    let long_poll = matches!(req.uri().path(), "/v1/events" | "/v1/routes/available");
    let permits = if long_poll {
        &state.long_polls
    } else {
        &state.inflight
    };
    let Ok(_permit) = permits.clone().try_acquire_owned() else {
        state
            .metrics
            .shed
            .get_or_create(&ReasonLabels {
                reason: "overload".into(),
            })
            .inc();
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many requests in flight",
        )
        .retry_after(1)
        .into_response();
    };
    // Long polls may legitimately wait up to a minute; adding a node (or
    // making learners voters) answers once it caught up, and a snapshot
    // once it is built, which on a large state take minutes.
    let slow_admin = req.method() == axum::http::Method::POST
        && matches!(
            req.uri().path(),
            "/admin/cluster/nodes" | "/admin/cluster/membership" | "/admin/snapshot"
        );
    let timeout = if long_poll {
        state
            .request_timeout
            .max(Duration::from_secs(super::events_api::MAX_WAIT_SECS + 15))
    } else if slow_admin {
        state.request_timeout.max(raft::node::MEMBERSHIP_TIMEOUT)
    } else {
        state.request_timeout
    };
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => {
            state
                .metrics
                .shed
                .get_or_create(&ReasonLabels {
                    reason: "timeout".into(),
                })
                .inc();
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                "the request took too long",
            )
            .retry_after(1)
            .into_response()
        }
    }
}

/// Errors produced below the handlers (405, 413 from a layer, ...) come
/// without a problem body; give them one.
fn ensure_problem(resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_problem = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.as_bytes() == PROBLEM_JSON.as_bytes())
        .unwrap_or(false);
    if is_problem {
        return resp;
    }
    let (parts, _) = resp.into_parts();
    let mut fixed = ApiError::from_status(status).into_response();
    for name in [header::ALLOW, header::RETRY_AFTER] {
        if let Some(v) = parts.headers.get(&name) {
            fixed.headers_mut().insert(name, v.clone());
        }
    }
    fixed
}

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(values: &[&str]) -> header::HeaderMap {
        let mut h = header::HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let router = ip("10.0.0.1");
        let trusted = [router, ip("10.0.0.2")];
        let forged = xff(&["6.6.6.6, 1.2.3.4"]);
        // An untrusted peer's header is ignored entirely.
        assert_eq!(client_ip(ip("9.9.9.9"), &forged, &trusted), ip("9.9.9.9"));
        // A trusted peer: the right-most entry is what it saw; the client's
        // own claim further left is ignored.
        assert_eq!(client_ip(router, &forged, &trusted), ip("1.2.3.4"));
        // A chain of trusted proxies is walked through.
        assert_eq!(
            client_ip(router, &xff(&["1.2.3.4", "10.0.0.2"]), &trusted),
            ip("1.2.3.4")
        );
        // Missing or junk header: the proxy itself.
        assert_eq!(client_ip(router, &xff(&[]), &trusted), router);
        assert_eq!(client_ip(router, &xff(&["junk"]), &trusted), router);
    }
}
