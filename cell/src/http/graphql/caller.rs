//! How a resolver reaches the service layer.
//!
//! The REST handlers are the service layer: each takes the caller, the
//! read consistency and its typed input, checks roles and ownership,
//! validates, writes through Raft and answers JSON or a problem. Resolvers
//! call the very same functions with the same inputs (a GraphQL input
//! object becomes the handler's strict JSON body through serde, so unknown
//! or out-of-range values fail in the same place with the same message),
//! and turn the problem into a GraphQL error carrying its `code`. There is
//! no second copy of any rule.

use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        Arc,
    },
    time::Instant,
};

use async_graphql::{Context, ErrorExtensions};
use axum::{
    extract::{Path, Query, State},
    response::IntoResponse,
};
use serde::{de::DeserializeOwned, Serialize};

use crate::http::{
    extract::{Consistency, Ops, Principal, StrictJson},
    middleware::{take_allowance, take_keys},
    problem::{current_request_id, ApiError},
    AppState,
};
use edge::{rate_limit::BucketKey, token::Role};

/// The mutations that are `/v1/auth/*` calls in REST, and so also spend
/// the address's sign-in allowance.
const SIGN_IN: [&str; 4] = ["signup", "login", "refresh", "logout"];

/// Largest JSON answer a handler may hand to a resolver (a page of 100
/// orders is well under it).
const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;

/// Who is asking, on which node: one per GraphQL request or subscription
/// connection.
#[derive(Clone)]
pub struct Caller {
    pub state: AppState,
    pub principal: Option<Principal>,
    /// The highest log index this request wrote or read at; later reads in
    /// the same request wait for it (read your own writes), and it is
    /// returned as `X-Cell-Index`.
    pub index: Arc<AtomicU64>,
    /// The client's address as the rate limits see it.
    pub ip: Option<IpAddr>,
    /// Mutations run so far in this request.
    mutations: Arc<AtomicU32>,
    /// Operations run so far on this request or subscription socket.
    operations: Arc<AtomicU32>,
    /// Operations running now on this subscription socket.
    active: Arc<AtomicU32>,
}

/// Operations one subscription socket may run at once: each is a feed
/// loop of its own outside the node's long-poll places, which the socket
/// holds only one of.
pub const MAX_ACTIVE_OPERATIONS: u32 = 16;

/// What an operation on a socket whose token has expired gets.
pub fn token_expired() -> ApiError {
    ApiError::unauthorized(
        "the access token this socket opened with has expired; reconnect with a fresh one",
    )
}

/// A running operation's place on its socket, given back when the
/// operation's stream is dropped (completed, stopped or disconnected).
pub struct OperationPlace(Arc<AtomicU32>);

impl Drop for OperationPlace {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Caller {
    pub fn new(
        state: AppState,
        principal: Option<Principal>,
        ip: Option<IpAddr>,
        index: u64,
    ) -> Self {
        Caller {
            state,
            principal,
            index: Arc::new(AtomicU64::new(index)),
            ip,
            mutations: Arc::default(),
            operations: Arc::default(),
            active: Arc::default(),
        }
    }

    /// Starts an operation on a subscription socket: the caller's token
    /// must still be valid (a socket outlives the token it opened with),
    /// the socket must have a place free, and every operation after the
    /// first pays like a request of its own.
    pub fn start_operation(&self, now_secs: i64) -> Result<OperationPlace, ApiError> {
        if self.expired_at(now_secs) {
            return Err(token_expired());
        }
        let place = OperationPlace(self.active.clone());
        if self.active.fetch_add(1, Ordering::Relaxed) >= MAX_ACTIVE_OPERATIONS {
            return Err(ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "too_many_operations",
                format!(
                    "at most {MAX_ACTIVE_OPERATIONS} operations run at once on one socket; \
                     complete one first"
                ),
            ));
        }
        self.charge_operation()?;
        Ok(place)
    }

    /// Whether the caller's access token has expired by `now_secs`.
    pub fn expired_at(&self, now_secs: i64) -> bool {
        self.expires_at().is_some_and(|exp| exp <= now_secs)
    }

    /// When the caller's access token expires (Unix seconds), if it does.
    pub fn expires_at(&self) -> Option<i64> {
        self.principal.as_ref().and_then(|p| p.expires_at)
    }

    /// Charges an operation on a subscription socket: the upgrade request
    /// paid for the first; every further one pays the caller's allowance
    /// like a request of its own.
    fn charge_operation(&self) -> Result<(), ApiError> {
        if self.operations.fetch_add(1, Ordering::Relaxed) == 0 {
            return Ok(());
        }
        take_allowance(
            &self.state,
            self.principal.as_ref(),
            self.ip,
            false,
            Instant::now(),
        )
    }

    /// Charges a mutation to the caller's rate limits as if it were its
    /// own REST call: the request itself paid for the first, every further
    /// one (aliases make many in one document) pays again, and sign-in
    /// mutations always pay the address's sign-in allowance — otherwise
    /// one request could carry a thousand password guesses.
    pub fn charge_mutation(&self, field: &str) -> Result<(), ApiError> {
        let first = self.mutations.fetch_add(1, Ordering::Relaxed) == 0;
        let sign_in = SIGN_IN.contains(&field);
        let now = Instant::now();
        match (first, sign_in) {
            (true, false) => Ok(()),
            (true, true) if self.principal.as_ref().is_some_and(|p| p.role == Role::Ops) => Ok(()),
            (true, true) => take_keys(&self.state, self.ip.map(BucketKey::AuthIp), now),
            (false, _) => {
                take_allowance(&self.state, self.principal.as_ref(), self.ip, sign_in, now)
            }
        }
    }

    pub fn of<'a>(ctx: &'a Context<'_>) -> async_graphql::Result<&'a Caller> {
        ctx.data::<Caller>()
    }

    pub fn s(&self) -> State<AppState> {
        State(self.state.clone())
    }

    pub fn principal(&self) -> Result<Principal, ApiError> {
        self.principal
            .clone()
            .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token>"))
    }

    pub fn ops(&self) -> Result<Ops, ApiError> {
        Ops::of(&self.principal()?)
    }

    /// Reads see at least everything this request has written.
    pub fn consistency(&self) -> Consistency {
        match self.index.load(Ordering::Relaxed) {
            0 => Consistency::Local,
            n => Consistency::AtLeast(n),
        }
    }

    /// Runs a handler's answer through: records its `X-Cell-Index`, parses
    /// its JSON body, and turns a problem into a GraphQL error.
    pub async fn answer<T, R>(&self, r: Result<R, ApiError>) -> async_graphql::Result<T>
    where
        T: DeserializeOwned,
        R: IntoResponse,
    {
        let resp = r.map_err(gql_error)?.into_response();
        self.note_index(&resp);
        let bytes = axum::body::to_bytes(resp.into_body(), MAX_ANSWER_BYTES)
            .await
            .map_err(|e| gql_error(ApiError::internal(e)))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            gql_error(ApiError::internal(format!(
                "graphql: a handler's answer did not fit the schema: {e}"
            )))
        })
    }
}

impl Caller {
    /// Runs through the answer of an action that returns nothing (`204`).
    pub async fn done<R: IntoResponse>(&self, r: Result<R, ApiError>) -> async_graphql::Result<()> {
        let resp = r.map_err(gql_error)?.into_response();
        self.note_index(&resp);
        Ok(())
    }

    fn note_index(&self, resp: &axum::response::Response) {
        if let Some(n) = resp
            .headers()
            .get("x-cell-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
        {
            self.index.fetch_max(n, Ordering::Relaxed);
        }
    }
}

/// A GraphQL input object as the REST handler's body: through serde, so
/// the body type's own rules (`deny_unknown_fields`, enums, ranges) judge it.
pub fn body<T: DeserializeOwned>(input: impl Serialize) -> Result<StrictJson<T>, ApiError> {
    let v = serde_json::to_value(input).map_err(|e| ApiError::validation(e.to_string()))?;
    serde_json::from_value(v)
        .map(StrictJson)
        .map_err(|e| ApiError::validation(format!("invalid input: {e}")))
}

/// Query-string parameters of a REST handler, from GraphQL arguments.
pub fn query<T: DeserializeOwned>(
    args: impl Serialize,
) -> Result<Query<T>, axum::extract::rejection::QueryRejection> {
    // Serialize to a query string and parse it the way axum does, so the
    // handler sees exactly what a REST client would have sent.
    let qs = serde_urlencoded::to_string(args).unwrap_or_default();
    let uri: axum::http::Uri = format!("/?{qs}")
        .parse()
        .unwrap_or_else(|_| axum::http::Uri::from_static("/"));
    Query::try_from_uri(&uri)
}

pub fn path<T>(v: T) -> Path<T> {
    Path(v)
}

/// A problem as a GraphQL error: the detail as the message, `code`,
/// `status` and `requestId` as extensions.
pub fn gql_error(e: ApiError) -> async_graphql::Error {
    let rid = current_request_id();
    async_graphql::Error::new(e.detail.clone()).extend_with(|_, x| {
        x.set("code", e.code);
        x.set("status", e.status.as_u16());
        if let Some(s) = e.retry_after {
            x.set("retryAfter", s);
        }
        if !rid.is_empty() {
            x.set("requestId", rid.clone());
        }
    })
}

/// `?` for problems inside resolvers.
pub trait OrGql<T> {
    fn gql(self) -> async_graphql::Result<T>;
}

impl<T> OrGql<T> for Result<T, ApiError> {
    fn gql(self) -> async_graphql::Result<T> {
        self.map_err(gql_error)
    }
}
