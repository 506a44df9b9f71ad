//! `POST /graphql`: one data graph over the same service layer as REST, so
//! a screen is one round trip. Subscriptions over WebSocket
//! (`graphql-transport-ws`, and the older `graphql-ws`) on `GET /graphql`;
//! the schema as SDL on `GET /graphql/schema.graphql`.
//!
//! Protection: the body is at most [`MAX_QUERY_BYTES`]; a query deeper
//! than [`MAX_DEPTH`] or costlier than [`MAX_COMPLEXITY`] (each field 1,
//! list fields multiplied by their `limit`) is refused during validation,
//! before any resolver runs; the parser itself refuses nesting past
//! [`MAX_RECURSION`] so a pathological document cannot exhaust the stack.

mod caller;
mod edges;
mod guard;
mod loaders;
mod model;
mod mutation;
mod query;
mod subscription;

use async_graphql::{dataloader::DataLoader, http::ALL_WEBSOCKET_PROTOCOLS, Data, Schema};
use async_graphql_axum::{GraphQLProtocol, GraphQLWebSocket};
use axum::{
    body::Bytes,
    extract::{ws::WebSocketUpgrade, FromRequestParts, State},
    http::{header, request::Parts, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};

use self::{caller::Caller, loaders::Loaders};
use super::{
    extract::{resolve_principal, Consistency, Principal},
    kv_api::ensure_fresh,
    middleware::ClientIp,
    openapi::Problem,
    problem::{ApiError, ApiResult},
    AppState,
};

/// A GraphQL request as `POST /graphql` takes it (the GraphQL over HTTP
/// JSON encoding); only the OpenAPI document uses this type, the handler
/// hands the body to async-graphql.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct GraphQLRequest {
    /// The document: one query or mutation (see /graphql/schema.graphql).
    query: String,
    variables: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(rename = "operationName")]
    operation_name: Option<String>,
}

/// What `POST /graphql` answers with `200`: `data` for the fields that
/// resolved, `errors` for those that did not (each with
/// `extensions.code`, as REST's problem `code`).
#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct GraphQLResponse {
    data: Option<serde_json::Value>,
    errors: Option<Vec<serde_json::Value>>,
}

pub use self::{mutation::Mutation, query::Query, subscription::Subscription};

pub type CellSchema = Schema<Query, Mutation, Subscription>;

/// Largest GraphQL request body.
pub const MAX_QUERY_BYTES: usize = 64 * 1024;
/// Deepest selection set accepted.
pub const MAX_DEPTH: usize = 12;
/// Costliest query accepted (fields, list fields weighted by their size).
pub const MAX_COMPLEXITY: usize = 2_000;
/// Deepest nesting the parser follows (selections, lists, objects).
pub const MAX_RECURSION: usize = 64;

pub fn schema(introspection: bool) -> CellSchema {
    let b = Schema::build(Query, Mutation, Subscription)
        .limit_depth(MAX_DEPTH)
        .limit_complexity(MAX_COMPLEXITY)
        .limit_recursive_depth(MAX_RECURSION)
        .limit_directives(8)
        .extension(guard::Guard { introspection });
    let b = if introspection {
        b
    } else {
        b.disable_introspection()
    };
    b.finish()
}

/// The SDL, as published and checked in (`cell/schema.graphql`).
pub fn sdl() -> String {
    schema(true).sdl()
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/graphql", get(subscribe).post(execute))
        .route("/graphql/schema.graphql", get(schema_sdl))
}

/// The caller, if the request carries a token; a bad token is a `401`
/// like anywhere else, a missing one leaves the caller anonymous (public
/// fields still answer).
fn principal(parts: &Parts, s: &AppState) -> Result<Option<Principal>, ApiError> {
    if let Some(p) = parts.extensions.get::<Principal>() {
        return Ok(Some(p.clone()));
    }
    if parts.headers.contains_key(header::AUTHORIZATION) {
        resolve_principal(parts, s).map(Some)
    } else {
        Ok(None)
    }
}

fn request_data(
    s: &AppState,
    principal: Option<Principal>,
    ip: Option<ClientIp>,
    index: u64,
) -> (Caller, Data) {
    let caller = Caller::new(s.clone(), principal, ip.map(|ip| ip.0), index);
    let mut data = Data::default();
    // No batching delay: siblings register their keys in the same poll of
    // the parent's join, before the spawned fetch can run; the default
    // 1 ms wait would be added to every level of a query.
    data.insert(
        DataLoader::new(Loaders::new(caller.clone()), tokio::spawn)
            .delay(std::time::Duration::ZERO),
    );
    data.insert(caller.clone());
    (caller, data)
}

/// Run one query or mutation. A token is optional: public fields answer
/// without one; the rest follow the same ownership rules as REST. Field
/// errors come back in `errors` with `200`; a request refused as a whole
/// (bad token, too large, not JSON, too deep or too costly) is a problem.
#[utoipa::path(
    post,
    path = "/graphql",
    tag = "graphql",
    request_body(content = GraphQLRequest, content_type = "application/json"),
    params(
        ("X-Consistency" = Option<String>, Header, description = "`linearizable` to read the leader's latest committed state"),
        ("X-Cell-Index" = Option<u64>, Header, description = "read at least this applied index (from an earlier write)"),
    ),
    responses(
        (status = 200, description = "data and field errors; X-Cell-Index when a mutation wrote", body = GraphQLResponse),
        (status = 400, description = "not a GraphQL request", body = Problem),
        (status = 401, description = "bad or expired token", body = Problem),
        (status = 413, description = "over MAX_QUERY_BYTES", body = Problem),
        (status = 415, description = "not application/json", body = Problem),
        (status = 429, description = "rate_limited; see Retry-After", body = Problem),
        (status = 503, description = "overloaded or timeout; see Retry-After", body = Problem),
    ),
    security((), ("bearer" = [])),
)]
pub(super) async fn execute(
    State(s): State<AppState>,
    req: axum::extract::Request,
) -> ApiResult<Response> {
    let (mut parts, body) = req.into_parts();
    let principal = principal(&parts, &s)?;
    let consistency = Consistency::from_request_parts(&mut parts, &s).await?;
    let is_json = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|ct| {
            let ct = ct.split(';').next().unwrap_or("").trim();
            ct.eq_ignore_ascii_case("application/json")
                || ct.eq_ignore_ascii_case("application/graphql-response+json")
        })
        .unwrap_or(false);
    if !is_json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send Content-Type: application/json with {query, variables?, operationName?}",
        ));
    }
    let bytes: Bytes = axum::body::to_bytes(body, MAX_QUERY_BYTES)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("a GraphQL request is at most {MAX_QUERY_BYTES} bytes"),
            )
        })?;
    let request: async_graphql::Request = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::validation(format!("invalid GraphQL request: {e}")))?;
    // Freshness is settled once for the whole query, not per field.
    let index = match consistency {
        Consistency::Local => 0,
        c => ensure_fresh(&s, c).await?,
    };
    let ip = parts.extensions.get::<ClientIp>().copied();
    let (caller, data) = request_data(&s, principal, ip, index);
    let mut request = request;
    request.data = data;
    let resp = s.graphql.execute(request).await;
    let body = serde_json::to_vec(&resp).map_err(ApiError::internal)?;
    let mut out = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response();
    let written = caller.index.load(std::sync::atomic::Ordering::Relaxed);
    if written > 0 {
        out.headers_mut()
            .insert("x-cell-index", HeaderValue::from(written));
    }
    Ok(out)
}

/// The WebSocket endpoint. The token comes from the upgrade request's
/// `Authorization` header or, for browsers, from the `connection_init`
/// payload (`{"Authorization": "Bearer …"}`).
#[utoipa::path(
    get,
    path = "/graphql",
    tag = "graphql",
    description = "Subscriptions: a WebSocket (`Sec-WebSocket-Protocol: graphql-transport-ws` or `graphql-ws`). \
        The token is the upgrade's Authorization header or the connection_init payload's `Authorization`.",
    responses(
        (status = 101, description = "switched to the WebSocket protocol"),
        (status = "4XX", description = "websocket_required (not a WebSocket upgrade), validation (no acceptable subprotocol) or unauthorized", body = Problem),
        (status = 503, description = "no subscription place free; see Retry-After", body = Problem),
    ),
    security((), ("bearer" = [])),
)]
pub(super) async fn subscribe(
    State(s): State<AppState>,
    req: axum::extract::Request,
) -> ApiResult<Response> {
    let (mut parts, _) = req.into_parts();
    let upgrade = WebSocketUpgrade::from_request_parts(&mut parts, &s)
        .await
        .map_err(|e| {
            ApiError::new(
                e.status(),
                "websocket_required",
                "GET /graphql is the subscription endpoint: open a WebSocket with the \
                 graphql-transport-ws subprotocol (queries and mutations are POSTed)",
            )
        })?;
    let protocol = GraphQLProtocol::from_request_parts(&mut parts, &s)
        .await
        .map_err(|_| {
            ApiError::validation(
                "Sec-WebSocket-Protocol must offer graphql-transport-ws (or graphql-ws)",
            )
        })?;
    let from_header = principal(&parts, &s)?;
    let ip = parts.extensions.get::<ClientIp>().copied();
    // A subscription socket is a long poll that lasts: it holds a
    // long-poll place for its whole life, so open sockets are bounded too.
    let place = s.long_polls.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many long polls and subscriptions on this node",
        )
        .retry_after(1)
    })?;
    let schema = s.graphql.clone();
    Ok(upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| async move {
            let _place = place;
            let init_state = s.clone();
            GraphQLWebSocket::new(socket, schema, protocol)
                .on_connection_init(move |payload| async move {
                    let principal = match from_header {
                        Some(p) => Some(p),
                        None => init_principal(&init_state, &payload)?,
                    };
                    let (_, data) = request_data(&init_state, principal, ip, 0);
                    Ok(data)
                })
                .serve()
                .await
        })
        .into_response())
}

/// A token in the `connection_init` payload.
fn init_principal(
    s: &AppState,
    payload: &serde_json::Value,
) -> async_graphql::Result<Option<Principal>> {
    let token = ["Authorization", "authorization"]
        .iter()
        .find_map(|k| payload.get(*k))
        .and_then(|v| v.as_str());
    let Some(token) = token else {
        return Ok(None);
    };
    let mut req = axum::http::Request::new(());
    let v = HeaderValue::from_str(token).map_err(|_| async_graphql::Error::new("bad token"))?;
    req.headers_mut().insert(header::AUTHORIZATION, v);
    let (parts, _) = req.into_parts();
    resolve_principal(&parts, s)
        .map(Some)
        .map_err(caller::gql_error)
}

/// The schema as SDL (what `cell/schema.graphql` checks in).
#[utoipa::path(
    get,
    path = "/graphql/schema.graphql",
    tag = "graphql",
    responses(
        (status = 200, description = "GraphQL SDL", content_type = "text/plain", body = String),
    ),
)]
pub(super) async fn schema_sdl(State(s): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        s.graphql.sdl(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    /// The published schema is checked in as `cell/schema.graphql`; a
    /// change to the graph must update it deliberately
    /// (`UPDATE_SCHEMA=1 cargo test -p cell schema_is_checked_in`).
    #[test]
    fn schema_is_checked_in() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schema.graphql");
        let sdl = super::sdl();
        if std::env::var_os("UPDATE_SCHEMA").is_some() {
            std::fs::write(&path, &sdl).unwrap();
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == sdl,
            "the GraphQL schema changed; review it and run \
             `UPDATE_SCHEMA=1 cargo test -p cell schema_is_checked_in` to accept it"
        );
    }
}
