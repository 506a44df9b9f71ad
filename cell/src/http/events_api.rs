//! `GET /v1/events?after=&wait=`: a principal's event feed, long-polled.
//! Any node serves it; waiters wake when their node applies anything.

use std::time::{Duration, Instant};

use axum::{
    extract::{Query, State},
    http::StatusCode,
    routing::get,
    Json, Router,
};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    extract::{Consistency, Principal},
    identity_api::rfc3339,
    kv_api::ensure_fresh,
    openapi::*,
    problem::{ApiError, ApiResult},
    AppState,
};
use crate::events;

/// Longest `wait` a client may ask for, in seconds.
pub const MAX_WAIT_SECS: u64 = 60;
const PAGE: usize = 100;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/events", get(feed))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FeedQuery {
    after: Option<u64>,
    wait: Option<u64>,
}

#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    params(
        ("after" = Option<u64>, Query),
        ("wait" = Option<u64>, Query, description = "seconds, at most 60"),
    ),
    responses(
        (status = 200, description = "events after `after`", body = EventsPage),
        (status = 410, description = "cursor_expired: `after` fell behind the retained window", body = Problem),
        (status = "4XX", description = "problem+json", body = Problem),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn feed(
    State(s): State<AppState>,
    p: Principal,
    c: Consistency,
    q: Result<Query<FeedQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(q) = q.map_err(|e| ApiError::validation(e.body_text()))?;
    let wait = q.wait.unwrap_or(0);
    if wait > MAX_WAIT_SECS {
        return Err(ApiError::validation(format!(
            "wait is at most {MAX_WAIT_SECS} seconds"
        )));
    }
    let after = q.after.unwrap_or(0);
    ensure_fresh(&s, c).await?;
    // `after=0` reads from the oldest retained event; a later cursor that
    // fell behind the window would silently skip events.
    let oldest = events::oldest_retained(&s.node.store().read()?, &p.sub)?;
    if after > 0 && after.saturating_add(1) < oldest {
        return Err(ApiError::new(
            StatusCode::GONE,
            "cursor_expired",
            format!(
                "events before {oldest} are no longer kept (the feed keeps the last {}); \
                 resynchronise and continue from after={}",
                events::RETAINED,
                oldest - 1
            ),
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(wait);
    // Woken only by changes to this caller's feed.
    let watch = s.app.feeds().watch(&p.sub);
    loop {
        // Armed before reading, so a change between the read and the wait
        // still wakes us.
        let changed = watch.changed();
        let found = events::after(&s.node.store().read()?, &p.sub, after, PAGE)?;
        let left = deadline.saturating_duration_since(Instant::now());
        if !found.is_empty() || left.is_zero() {
            let next = found.last().map(|e| e.seq).unwrap_or(after);
            let items: Vec<Value> = found.iter().map(event_json).collect();
            return Ok(Json(json!({"events": items, "next": next})));
        }
        let _ = tokio::time::timeout(left, changed).await;
    }
}

/// An event as the feed, subscriptions and webhooks show it.
pub(crate) fn event_json(e: &events::Event) -> Value {
    json!({
        "seq": e.seq, "type": e.kind, "at": rfc3339(e.at),
        "data": serde_json::from_str::<Value>(&e.data).unwrap_or(Value::Null),
    })
}
