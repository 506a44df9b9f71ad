//! Request extractors that turn bad input into problem+json.

use axum::{
    extract::{FromRequest, FromRequestParts, Request},
    http::{header, request::Parts},
};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use super::{problem::ApiError, AppState};
use edge::token::Role;

/// JSON body with unknown fields rejected by the target type
/// (`#[serde(deny_unknown_fields)]`) and every failure a `400`/`413`/`415`
/// problem.
pub struct StrictJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for StrictJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(&req) {
            return Err(not_json());
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(body_rejection)?;
        parse_json(&bytes).map(StrictJson)
    }
}

/// A JSON body the caller may leave out: no body is `None`, a body is held
/// to the same rules as [`StrictJson`]'s.
pub struct OptionalJson<T>(pub Option<T>);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = is_json(&req);
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(body_rejection)?;
        if bytes.is_empty() {
            return Ok(OptionalJson(None));
        }
        if !json {
            return Err(not_json());
        }
        parse_json(&bytes).map(|v| OptionalJson(Some(v)))
    }
}

fn is_json(req: &Request) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|ct| {
            let ct = ct.split(';').next().unwrap_or("").trim();
            ct.eq_ignore_ascii_case("application/json") || ct.ends_with("+json")
        })
        .unwrap_or(false)
}

fn not_json() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "send Content-Type: application/json",
    )
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::validation(format!("invalid JSON body: {e}")))
}

pub fn body_rejection(e: axum::extract::rejection::BytesRejection) -> ApiError {
    let status = e.status();
    if status == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(status, "payload_too_large", "request body is too large")
    } else {
        ApiError::new(status, "validation_failed", e.body_text())
    }
}

/// Who is calling: from a verified access token, or the ops bootstrap token.
#[derive(Debug, Clone)]
pub struct Principal {
    pub sub: String,
    pub role: Role,
    /// Authenticated with the ops bootstrap token itself.
    pub bootstrap: bool,
    /// The login session (refresh family) the access token belongs to.
    pub session: Option<String>,
    /// When the access token expires (Unix seconds); `None` for the
    /// bootstrap token. A request checks it once; a subscription socket,
    /// which outlives requests, checks it on every operation.
    pub expires_at: Option<i64>,
}

/// The caller acts as ops (bootstrap token or an ops access token).
#[derive(Debug, Clone)]
pub struct Ops {
    pub bootstrap: bool,
}

pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts
        .headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token>"))?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| ApiError::unauthorized("malformed Authorization header"))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::unauthorized("expected a Bearer token"));
    }
    Ok(token.trim())
}

/// The principal behind a request's bearer token, if it has one.
/// Access tokens already verified on this node, by SHA-256 of the token:
/// an app sends the same token with every request (a driver pings once a
/// second), and an Ed25519 verification costs more than the request.
/// Entries live until the token expires, and at most a minute, so key
/// retirement still takes effect promptly.
#[derive(Default)]
pub struct VerifiedTokens {
    map: std::sync::Mutex<std::collections::HashMap<[u8; 32], (Principal, i64)>>,
}

/// Tokens remembered at most; the map is cleared when full (a miss only
/// costs one verification).
const MAX_VERIFIED: usize = 65_536;
const VERIFIED_FOR_SECS: i64 = 60;

impl VerifiedTokens {
    fn get(&self, digest: &[u8; 32], now: i64) -> Option<Principal> {
        let map = self.map.lock().ok()?;
        map.get(digest)
            .filter(|(_, until)| now < *until)
            .map(|(p, _)| p.clone())
    }

    fn put(&self, digest: [u8; 32], p: Principal, exp: i64, now: i64) {
        if let Ok(mut map) = self.map.lock() {
            if map.len() >= MAX_VERIFIED {
                map.clear();
            }
            map.insert(digest, (p, exp.min(now + VERIFIED_FOR_SECS)));
        }
    }
}

pub fn resolve_principal(parts: &Parts, state: &AppState) -> Result<Principal, ApiError> {
    let token = bearer(parts)?;
    // Compare digests so the comparison time does not depend on where
    // the token first differs.
    let given = token_hash(token);
    let mut diff = 0u8;
    for (a, b) in given.iter().zip(state.ops_token_hash.iter()) {
        diff |= a ^ b;
    }
    if diff == 0 {
        return Ok(Principal {
            sub: "ops-bootstrap".into(),
            role: Role::Ops,
            bootstrap: true,
            session: None,
            expires_at: None,
        });
    }
    let now = crate::http::identity_api::now_ms() / 1000;
    if let Some(p) = state.verified.get(&given, now) {
        return Ok(p);
    }
    let claims = state
        .keys
        .verify(token, now, &state.cfg.cell)
        .map_err(|e| ApiError::unauthorized(format!("invalid token: {e}")))?;
    let p = Principal {
        sub: claims.sub,
        role: claims.role,
        bootstrap: false,
        session: claims.sid,
        expires_at: Some(claims.exp),
    };
    state.verified.put(given, p.clone(), claims.exp, now);
    Ok(p)
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // The edge already verified the token for rate limiting.
        if let Some(p) = parts.extensions.get::<Principal>() {
            return Ok(p.clone());
        }
        let principal = resolve_principal(parts, state)?;
        parts.extensions.insert(principal.clone());
        Ok(principal)
    }
}

impl FromRequestParts<AppState> for Ops {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ops::of(&Principal::from_request_parts(parts, state).await?)
    }
}

impl Ops {
    /// The ops role check, for REST extraction and GraphQL alike.
    pub fn of(p: &Principal) -> Result<Ops, ApiError> {
        if p.role != Role::Ops {
            return Err(ApiError::forbidden("this needs the ops role"));
        }
        Ok(Ops {
            bootstrap: p.bootstrap,
        })
    }
}

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Whatever this node has applied.
    Local,
    /// At least this applied index (`X-Cell-Index`).
    AtLeast(u64),
    /// `X-Consistency: linearizable`.
    Linearizable,
}

impl<S: Send + Sync> FromRequestParts<S> for Consistency {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        if let Some(v) = parts.headers.get("x-consistency") {
            match v.to_str().map(|s| s.trim().to_ascii_lowercase()) {
                Ok(s) if s == "linearizable" => return Ok(Consistency::Linearizable),
                Ok(s) if s == "session" || s == "local" => {}
                _ => {
                    return Err(ApiError::validation(
                        "X-Consistency must be linearizable, session or local",
                    ))
                }
            }
        }
        match parts.headers.get("x-cell-index") {
            None => Ok(Consistency::Local),
            Some(v) => v
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .map(Consistency::AtLeast)
                .ok_or_else(|| ApiError::validation("X-Cell-Index must be a non-negative integer")),
        }
    }
}

/// How much of a short list held whole in memory a caller wants (a
/// driver's open offers and schedule, a vendor's webhooks): a page by
/// `?limit=&cursor=` over REST, where the cursor is an offset, or all of it
/// for GraphQL's list fields.
#[derive(Debug, Clone, Copy)]
pub enum Paging {
    Page { limit: usize, offset: usize },
    Whole,
}

impl<S: Send + Sync> FromRequestParts<S> for Paging {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct PageQuery {
            limit: Option<usize>,
            cursor: Option<String>,
        }
        let axum::extract::Query(q) =
            axum::extract::Query::<PageQuery>::from_request_parts(parts, state)
                .await
                .map_err(|e| ApiError::validation(e.body_text()))?;
        let offset = match q.cursor.as_deref() {
            None => 0,
            Some(c) => c
                .parse()
                .map_err(|_| ApiError::validation("cursor is not one this list gave"))?,
        };
        Ok(Paging::Page {
            limit: page_limit(q.limit)?,
            offset,
        })
    }
}

impl Paging {
    /// `items` as a list answer, `{items, next_cursor}`.
    pub fn answer(self, items: Vec<serde_json::Value>) -> serde_json::Value {
        let (page, next) = match self {
            Paging::Whole => (items, None),
            Paging::Page { limit, offset } => {
                let total = items.len();
                let page: Vec<_> = items.into_iter().skip(offset).take(limit).collect();
                let end = offset.saturating_add(page.len());
                (page, (end < total).then(|| end.to_string()))
            }
        };
        serde_json::json!({"items": page, "next_cursor": next})
    }
}

/// `?limit=` of a list: 20 by default, at most 100.
pub fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(20);
    if (1..=100).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::validation("limit must be 1..=100"))
    }
}

/// The action named by a request's `{action}` path segment.
pub(super) fn action<A: Copy>(table: &[(&str, A)], name: &str) -> Result<A, ApiError> {
    table
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, a)| *a)
        .ok_or_else(|| ApiError::not_found("no such action"))
}
