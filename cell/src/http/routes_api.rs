//! `/v1/routes`: the route marketplace (schedule-ahead work).

use std::time::{Duration, Instant};

use axum::{
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use edge::token::Role;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    events_api::MAX_WAIT_SECS,
    extract::{Consistency, Ops, Paging, Principal, StrictJson},
    identity_api::{now_ms, rfc3339},
    kv_api::ensure_fresh,
    openapi::*,
    problem::{ApiError, ApiResult},
    AppState,
};
use crate::{
    app::{Command, Response as AppResponse},
    catalog::Location,
    drivers::{self, Vehicle},
    routes::{self, Requirements, Route, RouteCommand, RouteResponse, RouteStatus, Stop},
};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/routes", post(create))
        .route("/v1/routes/available", get(available))
        .route("/v1/routes/{id}/claims", post(claim).delete(withdraw))
        .route("/v1/drivers/me/schedule", get(schedule))
}

const MAX_STOPS: usize = 200;

/// The matching window (`routes/window_seconds` in the config store,
/// default 30).
fn window_ms(read: &storage::ReadTxn) -> i64 {
    crate::kv::get(read, "routes/window_seconds")
        .ok()
        .flatten()
        .and_then(|e| {
            std::str::from_utf8(&e.value)
                .ok()?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .filter(|v| v.is_finite() && (1.0..=86_400.0).contains(v))
        .map(|s| (s * 1000.0) as i64)
        .unwrap_or(30_000)
}

fn route_json(r: &Route) -> Value {
    json!({
        "id": r.id, "zone": r.zone, "status": r.status,
        "window_start": rfc3339(r.window_start), "window_end": rfc3339(r.window_end),
        "stops": r.stops.iter().map(|s| json!({"delivery_id": s.delivery_id, "location": {"lat": s.location.lat, "lng": s.location.lng}})).collect::<Vec<_>>(),
        "pay": {"amount": r.pay, "currency": r.currency},
        "requirements": {
            "vehicle": r.requirements.vehicle, "min_capacity": r.requirements.min_capacity,
            "qualifications": r.requirements.qualifications,
        },
        "driver_id": r.driver_id,
        "claims": r.claims.len(),
    })
}

async fn write(s: &AppState, cmd: RouteCommand) -> ApiResult<(RouteResponse, u64)> {
    let written = s.node.write(&Command::Routes(Box::new(cmd))).await?;
    match written.response {
        AppResponse::Routes(r) => Ok((*r, written.index)),
        other => Err(ApiError::internal(format!("unexpected response {other:?}"))),
    }
}

/// The caller's driver profile, approved.
fn approved_driver(s: &AppState, p: &Principal) -> ApiResult<drivers::Driver> {
    if p.role != Role::Driver {
        return Err(ApiError::forbidden("this needs the driver role"));
    }
    let read = s.node.store().read()?;
    drivers::driver(&read, &p.sub)?
        .filter(|d| d.status == drivers::DriverStatus::Approved)
        .ok_or_else(|| ApiError::forbidden("only approved drivers see the route marketplace"))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AvailableQuery {
    version: Option<u64>,
    wait: Option<u64>,
}

#[utoipa::path(
    get, path = "/v1/routes/available", tag = "routes",
    params(("version" = Option<u64>, Query, description = "return when the market changed from this version"),
           ("wait" = Option<u64>, Query, description = "seconds to wait for a change, at most 60")),
    responses((status = 200, description = "open routes this driver may claim", body = RoutesMarketView),
              (status = "4XX", description = "problem+json", body = Problem)),
    security(("bearer" = [])),
)]
pub(super) async fn available(
    State(s): State<AppState>,
    p: Principal,
    c: Consistency,
    q: Result<Query<AvailableQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(q) = q.map_err(|e| ApiError::validation(e.body_text()))?;
    let wait = q.wait.unwrap_or(0);
    if wait > MAX_WAIT_SECS {
        return Err(ApiError::validation(format!(
            "wait is at most {MAX_WAIT_SECS} seconds"
        )));
    }
    ensure_fresh(&s, c).await?;
    let deadline = Instant::now() + Duration::from_secs(wait);
    // Woken only when the market moves, not by every apply.
    let mut moved = s.app.market_watch();
    loop {
        moved.borrow_and_update();
        let driver = approved_driver(&s, &p)?;
        let (market, routes) = {
            let read = s.node.store().read()?;
            s.app.route_board().for_driver(&read, &driver)?
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if q.version != Some(market.version) || left.is_zero() {
            return Ok(Json(json!({
                "version": market.version,
                "window_closes_at": (market.window_closes_at != 0).then(|| rfc3339(market.window_closes_at)),
                "routes": routes.iter().map(route_json).collect::<Vec<_>>(),
            })));
        }
        if tokio::time::timeout(left, moved.changed())
            .await
            .is_ok_and(|r| r.is_err())
        {
            return Err(ApiError::internal("the state machine stopped"));
        }
    }
}

fn answer(r: RouteResponse, index: u64) -> ApiResult<Response> {
    match r {
        RouteResponse::Route(r) => {
            Ok(([("x-cell-index", index.to_string())], Json(route_json(&r))).into_response())
        }
        RouteResponse::NotFound => Err(ApiError::not_found("no such route")),
        RouteResponse::Ineligible => Err(ApiError::forbidden(
            "you do not meet this route's requirements",
        )),
        RouteResponse::Conflict(why) => Err(ApiError::new(StatusCode::CONFLICT, "conflict", why)),
        other => Err(ApiError::internal(format!("unexpected response {other:?}"))),
    }
}

#[utoipa::path(
    post, path = "/v1/routes/{id}/claims", tag = "routes",
    params(("id" = String, Path, description = "route id")),
    responses((status = 200, description = "claimed for the current window", body = RouteView),
              (status = "4XX", description = "problem+json", body = Problem)),
    security(("bearer" = [])),
)]
pub(super) async fn claim(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    approved_driver(&s, &p)?;
    let window_ms = window_ms(&s.node.store().read()?);
    let cmd = RouteCommand::Claim {
        route_id: id,
        driver_id: p.sub.clone(),
        now: now_ms(),
        window_ms,
    };
    let (r, index) = write(&s, cmd).await?;
    answer(r, index)
}

#[utoipa::path(
    delete, path = "/v1/routes/{id}/claims", tag = "routes",
    params(("id" = String, Path, description = "route id")),
    responses((status = 200, description = "claim withdrawn", body = RouteView),
              (status = "4XX", description = "problem+json", body = Problem)),
    security(("bearer" = [])),
)]
pub(super) async fn withdraw(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    approved_driver(&s, &p)?;
    let (r, index) = write(
        &s,
        RouteCommand::Withdraw {
            route_id: id,
            driver_id: p.sub.clone(),
        },
    )
    .await?;
    answer(r, index)
}

#[utoipa::path(
    get, path = "/v1/drivers/me/schedule", tag = "routes",
    params(("limit" = Option<usize>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, description = "routes assigned to the driver", body = ScheduleView),
              (status = "4XX", description = "problem+json", body = Problem)),
    security(("bearer" = [])),
)]
pub(super) async fn schedule(
    State(s): State<AppState>,
    p: Principal,
    c: Consistency,
    paging: Paging,
) -> ApiResult<Json<Value>> {
    if p.role != Role::Driver {
        return Err(ApiError::forbidden("this needs the driver role"));
    }
    ensure_fresh(&s, c).await?;
    let read = s.node.store().read()?;
    let items: Vec<Value> = routes::schedule(&read, &p.sub)?
        .iter()
        .map(route_json)
        .collect();
    Ok(Json(paging.answer(items)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct StopBody {
    location: Location,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RequirementsBody {
    vehicle: Option<Vehicle>,
    #[serde(default)]
    min_capacity: u32,
    #[serde(default)]
    qualifications: Vec<String>,
}

/// A time in a request body: RFC 3339 like every time in the API, or Unix
/// milliseconds (what this endpoint took first, still accepted).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub(super) enum TimeInput {
    Rfc3339(String),
    UnixMillis(i64),
}

impl TimeInput {
    fn millis(&self) -> ApiResult<i64> {
        match self {
            TimeInput::Rfc3339(s) => super::orders_api::parse_time(s),
            TimeInput::UnixMillis(ms) => Ok(*ms),
        }
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RouteBody {
    window_start: TimeInput,
    window_end: TimeInput,
    stops: Vec<StopBody>,
    pay: crate::catalog::Money,
    #[serde(default)]
    requirements: Option<RequirementsBody>,
}

/// How far ahead a route may be planned.
const MAX_AHEAD_MS: i64 = 30 * 24 * 3_600_000;

#[utoipa::path(
    post, path = "/v1/routes", tag = "routes", request_body = RouteBody,
    responses((status = 201, description = "an ops-created route, open for claims", body = RouteView),
              (status = "4XX", description = "problem+json", body = Problem)),
    security(("bearer" = [])),
)]
pub(super) async fn create(
    State(s): State<AppState>,
    _ops: Ops,
    StrictJson(b): StrictJson<RouteBody>,
) -> ApiResult<Response> {
    let now = now_ms();
    let (window_start, window_end) = (b.window_start.millis()?, b.window_end.millis()?);
    // `window_start` is bounded first so that the length below cannot
    // overflow on extreme values.
    if window_start < now - 3_600_000
        || window_start > now + MAX_AHEAD_MS
        || window_end <= window_start
        || window_end - window_start > 24 * 3_600_000
    {
        return Err(ApiError::validation(
            "the window must start within the next 30 days, end after it starts, and last at most 24 h",
        ));
    }
    if b.stops.is_empty()
        || b.stops.len() > MAX_STOPS
        || !b.stops.iter().all(|s| s.location.is_valid())
    {
        return Err(ApiError::validation(format!(
            "1 to {MAX_STOPS} stops with valid locations"
        )));
    }
    if b.pay.amount < 0 || b.pay.amount > 10_000_000 || b.pay.currency != s.cfg.currency {
        return Err(ApiError::validation(format!(
            "pay must be 0 to 10,000,000 minor units of {}",
            s.cfg.currency
        )));
    }
    let req = b.requirements.unwrap_or_default();
    if req.qualifications.len() > 16 || req.min_capacity > 10_000 {
        return Err(ApiError::validation(
            "at most 16 qualifications and capacity 10,000",
        ));
    }
    let route = Route {
        id: format!("{}.rte_{}", s.cfg.cell, ulid::Ulid::new()),
        zone: routes::zone_of(&b.stops[0].location),
        window_start,
        window_end,
        stops: b
            .stops
            .into_iter()
            .map(|s| Stop {
                delivery_id: None,
                location: s.location,
            })
            .collect(),
        pay: b.pay.amount,
        currency: b.pay.currency,
        requirements: Requirements {
            vehicle: req.vehicle,
            min_capacity: req.min_capacity,
            qualifications: req.qualifications,
        },
        status: RouteStatus::Open,
        driver_id: None,
        claims: Vec::new(),
        windows: 0,
        created_at: now,
    };
    let (r, index) = write(
        &s,
        RouteCommand::Create {
            route: Box::new(route),
            now,
        },
    )
    .await?;
    match r {
        RouteResponse::Route(r) => Ok((
            StatusCode::CREATED,
            [("x-cell-index", index.to_string())],
            Json(route_json(&r)),
        )
            .into_response()),
        other => Err(ApiError::internal(format!("unexpected response {other:?}"))),
    }
}
