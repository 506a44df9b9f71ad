//! `/v1/kv`: the linearizable config store (ops only).

use std::time::Duration;

use axum::{
    body::Bytes,
    extract::{FromRequestParts, Path, Query, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde::Deserialize;
use serde_json::json;

use super::{
    extract::{page_limit, Consistency, Ops},
    openapi::*,
    problem::{ApiError, ApiResult},
    AppState,
};
use crate::{
    app::{Command, Response as AppResponse},
    kv::{self, Expect, KvCommand, KvResponse},
};

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/kv", get(list)).route(
        "/v1/kv/{*key}",
        get(get_key).put(put_key).delete(delete_key),
    )
}

/// How long a read waits for this node to catch up with `X-Cell-Index`
/// before asking the leader instead.
const SESSION_WAIT: Duration = Duration::from_secs(2);
/// How long a read first waits for an index this node has not received.
const IN_FLIGHT_WAIT: Duration = Duration::from_millis(50);

/// Make this node's state fresh enough for `c`; returns the applied index
/// the read is served at.
pub(super) async fn ensure_fresh(s: &AppState, c: Consistency) -> ApiResult<u64> {
    match c {
        Consistency::Local => Ok(s.node.applied_index()),
        Consistency::AtLeast(n) if n <= s.node.applied_index() => Ok(s.node.applied_index()),
        // Usually in flight from the leader: a moment's wait is cheaper
        // than asking it.
        Consistency::AtLeast(n) if s.node.wait_applied(n, IN_FLIGHT_WAIT).await.is_ok() => {
            Ok(s.node.applied_index())
        }
        // Still past every entry this node has: not sent yet, or never
        // written (a made-up or another cell's index). The leader settles
        // it now rather than the wait holding the request.
        Consistency::AtLeast(n) if n > s.node.metrics().last_log_index.unwrap_or(0) => Ok(s
            .node
            .linearizable_barrier()
            .await?
            .max(s.node.applied_index())),
        Consistency::AtLeast(n) => match s.node.wait_applied(n, SESSION_WAIT).await {
            Ok(()) => Ok(s.node.applied_index()),
            Err(_) => Ok(s
                .node
                .linearizable_barrier()
                .await?
                .max(s.node.applied_index())),
        },
        Consistency::Linearizable => {
            s.node.linearizable_barrier().await?;
            Ok(s.node.applied_index())
        }
    }
}

fn valid_key(key: &str) -> ApiResult<()> {
    kv::validate_key(key).map_err(ApiError::validation)
}

fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

fn index_header(index: u64) -> (&'static str, HeaderValue) {
    ("x-cell-index", HeaderValue::from(index))
}

/// `If-Match: "<version>"` or `If-None-Match: *`.
fn expectation(headers: &HeaderMap) -> ApiResult<Expect> {
    let if_match = headers.get(header::IF_MATCH);
    let if_none = headers.get(header::IF_NONE_MATCH);
    match (if_match, if_none) {
        (Some(_), Some(_)) => Err(ApiError::validation(
            "send If-Match or If-None-Match, not both",
        )),
        (Some(v), None) => {
            let s = v.to_str().unwrap_or("").trim();
            let s = s.strip_prefix("W/").unwrap_or(s);
            s.strip_prefix('"')
                .and_then(|s| s.strip_suffix('"'))
                .and_then(|s| s.parse::<u64>().ok())
                .map(Expect::Version)
                .ok_or_else(|| {
                    ApiError::validation("If-Match must be a quoted version like \"42\"")
                })
        }
        (None, Some(v)) if v.as_bytes() == b"*" => Ok(Expect::Absent),
        (None, Some(_)) => Err(ApiError::validation("only If-None-Match: * is supported")),
        (None, None) => Ok(Expect::Any),
    }
}

fn precondition_failed(current: Option<u64>) -> ApiError {
    let detail = match current {
        Some(v) => format!("the key is at version {v}"),
        None => "the key does not exist".to_string(),
    };
    ApiError::new(
        StatusCode::PRECONDITION_FAILED,
        "precondition_failed",
        detail,
    )
}

/// How fresh a config-store read must be: linearizable unless the caller
/// names a weaker level (`X-Consistency: session` or `local`); an
/// `X-Cell-Index` alone, which apps echo on every call, does not weaken it.
pub(super) struct ConfigRead(Consistency);

impl<S: Send + Sync> FromRequestParts<S> for ConfigRead {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let asked = Consistency::from_request_parts(parts, state).await?;
        let weaker_named = parts.headers.contains_key("x-consistency");
        Ok(ConfigRead(if weaker_named {
            asked
        } else {
            Consistency::Linearizable
        }))
    }
}

#[utoipa::path(
    get,
    path = "/v1/kv/{key}",
    tag = "config store",
    params(
        ("key" = String, Path),
    ),
    responses(
        (status = 200, description = "the value (its stored content type); ETag is the version"),
        (status = 404, description = "no such key", body = Problem),
        (status = "4XX", description = "problem+json", body = Problem),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn get_key(
    State(s): State<AppState>,
    _ops: Ops,
    ConfigRead(consistency): ConfigRead,
    Path(key): Path<String>,
) -> ApiResult<Response> {
    valid_key(&key)?;
    let index = ensure_fresh(&s, consistency).await?;
    let read = s.node.store().read()?;
    let entry =
        kv::get(&read, &key)?.ok_or_else(|| ApiError::not_found(format!("no key {key:?}")))?;
    let ct = HeaderValue::from_str(&entry.content_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    Ok((
        [
            (header::CONTENT_TYPE, ct),
            (header::ETAG, etag(entry.version)),
        ],
        [index_header(index)],
        entry.value,
    )
        .into_response())
}

#[utoipa::path(
    put,
    path = "/v1/kv/{key}",
    tag = "config store",
    params(
        ("key" = String, Path),
        ("If-Match" = Option<String>, Header, description = "\"<version>\": compare-and-set"),
        ("If-None-Match" = Option<String>, Header, description = "*: create only"),
    ),
    request_body(content = Vec<u8>, description = "the value, any content type, at most 64 KiB", content_type = "application/octet-stream"),
    responses(
        (status = 201, description = "created", body = KvWritten),
        (status = 200, description = "updated", body = KvWritten),
        (status = 412, description = "version mismatch", body = Problem),
        (status = "4XX", description = "problem+json", body = Problem),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn put_key(
    State(s): State<AppState>,
    _ops: Ops,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    valid_key(&key)?;
    if body.len() > kv::MAX_VALUE_LEN {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("values are limited to {} bytes", kv::MAX_VALUE_LEN),
        ));
    }
    let expect = expectation(&headers)?;
    let content_type = match headers.get(header::CONTENT_TYPE) {
        None => "application/octet-stream".to_string(),
        Some(v) => match v.to_str() {
            Ok(ct) if !ct.is_empty() && ct.len() <= kv::MAX_CONTENT_TYPE_LEN => ct.to_string(),
            _ => {
                return Err(ApiError::validation(
                    "Content-Type must be printable and at most 128 bytes",
                ))
            }
        },
    };
    let cmd = Command::Kv(KvCommand::Put {
        key: key.clone(),
        value: body.to_vec(),
        content_type,
        expect,
    });
    let written = s.node.write(&cmd).await?;
    let AppResponse::Kv(resp) = written.response else {
        return Err(ApiError::internal("unexpected response to a kv command"));
    };
    match resp {
        KvResponse::Put { version, created } => {
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((
                status,
                [(header::ETAG, etag(version))],
                [index_header(written.index)],
                Json(json!({"key": key, "version": version, "created": created})),
            )
                .into_response())
        }
        KvResponse::PreconditionFailed { current } => Err(precondition_failed(current)),
        other => Err(ApiError::internal(format!(
            "unexpected kv response {other:?}"
        ))),
    }
}

#[utoipa::path(
    delete,
    path = "/v1/kv/{key}",
    tag = "config store",
    params(
        ("key" = String, Path),
        ("If-Match" = Option<String>, Header),
    ),
    responses(
        (status = 204, description = "deleted"),
        (status = 404, description = "no such key", body = Problem),
        (status = 412, description = "version mismatch", body = Problem),
        (status = "4XX", description = "problem+json", body = Problem),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn delete_key(
    State(s): State<AppState>,
    _ops: Ops,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    valid_key(&key)?;
    let expect = match expectation(&headers)? {
        Expect::Absent => {
            return Err(ApiError::validation(
                "If-None-Match makes no sense on DELETE",
            ))
        }
        e => e,
    };
    let cmd = Command::Kv(KvCommand::Delete {
        key: key.clone(),
        expect,
    });
    let written = s.node.write(&cmd).await?;
    let AppResponse::Kv(resp) = written.response else {
        return Err(ApiError::internal("unexpected response to a kv command"));
    };
    match resp {
        KvResponse::Deleted { .. } => {
            Ok((StatusCode::NO_CONTENT, [index_header(written.index)]).into_response())
        }
        KvResponse::NotFound => Err(ApiError::not_found(format!("no key {key:?}"))),
        KvResponse::PreconditionFailed { current } => Err(precondition_failed(current)),
        other => Err(ApiError::internal(format!(
            "unexpected kv response {other:?}"
        ))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    #[serde(default)]
    prefix: String,
    limit: Option<usize>,
    cursor: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/kv",
    tag = "config store",
    params(
        ("prefix" = Option<String>, Query),
        ("limit" = Option<usize>, Query),
        ("cursor" = Option<String>, Query),
    ),
    responses(
        (status = 200, description = "keys and versions", body = KvPage),
        (status = "4XX", description = "problem+json", body = Problem),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn list(
    State(s): State<AppState>,
    _ops: Ops,
    ConfigRead(consistency): ConfigRead,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = query.map_err(|e| ApiError::validation(e.body_text()))?;
    let limit = page_limit(q.limit)?;
    if q.prefix.len() > kv::MAX_KEY_LEN {
        return Err(ApiError::validation("prefix too long"));
    }
    let index = ensure_fresh(&s, consistency).await?;
    let read = s.node.store().read()?;
    let mut rows = kv::list(&read, &q.prefix, q.cursor.as_deref(), limit + 1)?;
    let next = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(|(k, _)| k.clone())
    } else {
        None
    };
    let items: Vec<_> = rows
        .into_iter()
        .map(|(key, version)| json!({"key": key, "version": version}))
        .collect();
    Ok((
        [index_header(index)],
        Json(json!({"items": items, "next_cursor": next})),
    )
        .into_response())
}
