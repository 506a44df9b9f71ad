//! `/v1/drivers`, `/v1/offers`, `/v1/deliveries`: onboarding, availability,
//! location pings, offers, the delivery lifecycle and earnings.

use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post, put},
    Json, Router,
};
use edge::token::Role;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    extract::{Consistency, Ops, Paging, Principal, StrictJson},
    identity_api::{now_ms, rfc3339},
    kv_api::ensure_fresh,
    openapi::*,
    problem::{ApiError, ApiResult},
    AppState,
};
use crate::{
    app::{Command, Response as AppResponse},
    drivers::{
        self, Delivery, DeliveryAction, Driver, DriverCommand, DriverResponse, DriverStatus, Offer,
        Ping, Profile, Vehicle,
    },
    ledger,
};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/drivers/me", get(get_me).put(put_me))
        .route("/v1/drivers/me/availability", put(availability))
        .route("/v1/drivers/me/location", put(location))
        .route("/v1/drivers/me/offers", get(my_offers))
        .route("/v1/drivers/me/earnings", get(earnings))
        .route("/v1/drivers/{id}/{action}", post(set_status))
        .route("/v1/offers/{id}/{action}", post(answer_offer))
        .route("/v1/deliveries/{id}", get(get_delivery))
        .route("/v1/deliveries/{id}/driver", get(delivery_driver))
        .route("/v1/deliveries/{id}/{action}", post(act))
}

const MAX_QUALIFICATIONS: usize = 16;
const MAX_CAPACITY: u32 = 10_000;

fn driver_role(p: &Principal) -> ApiResult<()> {
    if p.role == Role::Driver {
        Ok(())
    } else {
        Err(ApiError::forbidden("this needs the driver role"))
    }
}

async fn write(s: &AppState, cmd: DriverCommand) -> ApiResult<(DriverResponse, u64)> {
    let written = s.node.write(&Command::Drivers(Box::new(cmd))).await?;
    match written.response {
        AppResponse::Drivers(r) => Ok((*r, written.index)),
        other => Err(ApiError::internal(format!("unexpected response {other:?}"))),
    }
}

fn conflict(why: String) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "conflict", why)
}

fn unexpected(r: DriverResponse) -> ApiError {
    match r {
        DriverResponse::NotFound => ApiError::not_found("not found"),
        DriverResponse::Forbidden => ApiError::forbidden("not yours to do"),
        DriverResponse::Conflict(why) => conflict(why),
        DriverResponse::BadProof => ApiError::new(
            StatusCode::CONFLICT,
            "bad_proof_code",
            "the proof code does not match the customer's",
        ),
        DriverResponse::ProofLocked { until } => {
            let wait = ((until - now_ms()).max(1000) as u64).div_ceil(1000);
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "proof_attempts_exceeded",
                format!(
                    "{} wrong proof codes for this delivery: the next try is in {} min \
                     (or fail the delivery)",
                    drivers::MAX_PROOF_ATTEMPTS,
                    wait.div_ceil(60)
                ),
            )
            .retry_after(wait)
        }
        other => ApiError::internal(format!("unexpected response {other:?}")),
    }
}

fn with_index(index: u64, v: Value) -> Response {
    ([("x-cell-index", index.to_string())], Json(v)).into_response()
}

/// A driver's profile with its standing, ratings and lateness included.
fn driver_view(read: &storage::ReadTxn, d: &Driver) -> ApiResult<Value> {
    Ok(driver_json(d, &crate::ratings::reputation(read, &d.id)?))
}

/// [`driver_view`] of a driver just written, read at `index`.
fn driver_written(s: &AppState, index: u64, d: &Driver) -> ApiResult<Response> {
    Ok(with_index(index, driver_view(&s.node.store().read()?, d)?))
}

pub fn driver_json(d: &Driver, rep: &crate::ratings::Reputation) -> Value {
    json!({
        "id": d.id, "vehicle": d.vehicle, "capacity": d.capacity,
        "qualifications": d.qualifications, "license_plate": d.license_plate,
        "status": d.status, "online": d.online,
        "location": d.location.map(|l| json!({"lat": l.lat, "lng": l.lng})),
        "current_delivery": d.current_delivery,
        "standing": {
            "completed": d.standing.completed, "failed": d.standing.failed,
            "declined": d.standing.declined, "expired": d.standing.expired,
            "completion_rate": d.standing.completion_rate(), "tier": d.standing.tier_with(rep),
            "rating": rep.ratings.average(), "ratings": rep.ratings.count, "late": rep.late,
        },
    })
}

/// The answer to a write that changed delivery `d`.
fn delivery_written(s: &AppState, index: u64, d: &Delivery) -> ApiResult<Response> {
    let read = s.node.store().read()?;
    Ok(with_index(index, delivery_json(&read, d)?))
}

/// A delivery as its API answers it; `eta` is its order's.
pub fn delivery_json(read: &storage::ReadTxn, d: &Delivery) -> ApiResult<Value> {
    let loc = |l: &crate::catalog::Location| json!({"lat": l.lat, "lng": l.lng});
    let eta = crate::orders::order(read, &d.order_id)?.map(|o| super::orders_api::order_eta(&o));
    Ok(json!({
        "id": d.id, "order_id": d.order_id, "kind": d.kind, "status": d.status,
        "driver_id": d.driver_id, "pickup": loc(&d.pickup), "dropoff": loc(&d.dropoff),
        "eta": eta, "pay": {"amount": d.pay, "currency": d.currency},
        "created_at": rfc3339(d.created_at), "updated_at": rfc3339(d.updated_at),
        "first_offer_at": d.first_offer_at.map(rfc3339),
        "dispatch_ms": d.first_offer_at.map(|at| at - d.created_at),
    }))
}

fn offer_json(read: &storage::ReadTxn, o: &Offer) -> ApiResult<Value> {
    let d = drivers::delivery(read, &o.delivery_id)?;
    let loc = |l: crate::catalog::Location| json!({"lat": l.lat, "lng": l.lng});
    Ok(json!({
        "id": o.id, "delivery_id": o.delivery_id, "status": o.status,
        "pickup": d.as_ref().map(|d| loc(d.pickup)), "dropoff": d.as_ref().map(|d| loc(d.dropoff)),
        "pay": {"amount": o.pay, "currency": d.as_ref().map(|d| d.currency.clone())},
        "expires_at": rfc3339(o.expires_at),
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ProfileBody {
    vehicle: Vehicle,
    capacity: u32,
    #[serde(default)]
    qualifications: Vec<String>,
    license_plate: Option<String>,
}

#[utoipa::path(
    put, path = "/v1/drivers/me", tag = "drivers", request_body = ProfileBody,
    responses((status = 200, description = "the driver's profile", body = DriverView),
              (status = "4XX", description = "problem+json", body = Problem)),
    security(("bearer" = [])),
)]
pub(super) async fn put_me(
    State(s): State<AppState>,
    p: Principal,
    StrictJson(b): StrictJson<ProfileBody>,
) -> ApiResult<Response> {
    driver_role(&p)?;
    if b.capacity == 0 || b.capacity > MAX_CAPACITY {
        return Err(ApiError::validation(format!(
            "capacity must be 1 to {MAX_CAPACITY}"
        )));
    }
    if b.qualifications.len() > MAX_QUALIFICATIONS
        || b.qualifications.iter().any(|q| {
            q.is_empty()
                || q.len() > 40
                || !q
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
    {
        return Err(ApiError::validation(format!(
            "at most {MAX_QUALIFICATIONS} qualifications of 1-40 letters, digits, '-' or '_'"
        )));
    }
    if b.license_plate
        .as_ref()
        .is_some_and(|l| l.trim().is_empty() || l.len() > 20)
    {
        return Err(ApiError::validation(
            "license_plate must be 1-20 characters",
        ));
    }
    let cmd = DriverCommand::PutProfile {
        driver_id: p.sub.clone(),
        profile: Profile {
            vehicle: b.vehicle,
            capacity: b.capacity,
            qualifications: b.qualifications,
            license_plate: b.license_plate,
        },
        now: now_ms(),
    };
    match write(&s, cmd).await? {
        (DriverResponse::Driver(d), index) => driver_written(&s, index, &d),
        (other, _) => Err(unexpected(other)),
    }
}

#[utoipa::path(
    get, path = "/v1/drivers/me", tag = "drivers",
    responses((status = 200, description = "the driver's profile", body = DriverView),
              (status = "4XX", description = "problem+json", body = Problem)),
    security(("bearer" = [])),
)]
pub(super) async fn get_me(
    State(s): State<AppState>,
    p: Principal,
    c: Consistency,
) -> ApiResult<Json<Value>> {
    driver_role(&p)?;
    ensure_fresh(&s, c).await?;
    let read = s.node.store().read()?;
    let d = drivers::driver(&read, &p.sub)?
        .ok_or_else(|| ApiError::not_found("no driver profile yet: PUT /v1/drivers/me"))?;
    Ok(Json(driver_view(&read, &d)?))
}

/// The actions of `POST /v1/drivers/{id}/{action}` (ops).
pub(super) const DRIVER_ACTIONS: [(&str, DriverStatus); 2] = [
    ("approve", DriverStatus::Approved),
    ("suspend", DriverStatus::Suspended),
];

#[utoipa::path(
    post, path = "/v1/drivers/{id}/{action}", tag = "drivers",
    params(("id" = String, Path, description = "driver (account) id"),
           ("action" = String, Path, description = "approve | suspend")),
    responses((status = 200, description = "the driver's profile", body = DriverView),
              (status = "4XX", description = "problem+json", body = Problem)),
    security(("bearer" = [])),
)]
pub(super) async fn set_status(
    State(s): State<AppState>,
    _ops: Ops,
    Path((id, action)): Path<(String, String)>,
) -> ApiResult<Response> {
    let status = super::extract::action(&DRIVER_ACTIONS, &action)?;
    if id.len() > 128 {
        return Err(ApiError::not_found("no such driver"));
    }
    let cmd = DriverCommand::SetStatus {
        driver_id: id,
        status,
        now: now_ms(),
    };
    match write(&s, cmd).await? {
        (DriverResponse::Driver(d), index) => driver_written(&s, index, &d),
        (DriverResponse::NotFound, _) => Err(ApiError::not_found("no such driver")),
        (other, _) => Err(unexpected(other)),
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AvailabilityBody {
    online: bool,
}

#[utoipa::path(
    put, path = "/v1/drivers/me/availability", tag = "drivers", request_body = AvailabilityBody,
    responses((status = 200, description = "the driver's profile", body = DriverView),
              (status = "4XX", description = "problem+json", body = Problem)),
    security(("bearer" = [])),
)]
pub(super) async fn availability(
    State(s): State<AppState>,
    p: Principal,
    StrictJson(b): StrictJson<AvailabilityBody>,
) -> ApiResult<Response> {
    driver_role(&p)?;
    let cmd = DriverCommand::SetOnline {
        driver_id: p.sub.clone(),
        online: b.online,
        now: now_ms(),
    };
    match write(&s, cmd).await? {
        (DriverResponse::Driver(d), index) => driver_written(&s, index, &d),
        (DriverResponse::NotFound, _) => Err(ApiError::not_found(
            "no driver profile yet: PUT /v1/drivers/me",
        )),
        (DriverResponse::Forbidden, _) => {
            Err(ApiError::forbidden("only approved drivers go online"))
        }
        (other, _) => Err(unexpected(other)),
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct LocationBody {
    lat: f64,
    lng: f64,
    heading: Option<f64>,
    speed: Option<f64>,
}

#[utoipa::path(
    put, path = "/v1/drivers/me/location", tag = "drivers", request_body = LocationBody,
    responses((status = 204, description = "ping taken (replicated within a second)"),
              (status = "4XX", description = "problem+json", body = Problem)),
    security(("bearer" = [])),
)]
pub(super) async fn location(
    State(s): State<AppState>,
    p: Principal,
    StrictJson(b): StrictJson<LocationBody>,
) -> ApiResult<StatusCode> {
    driver_role(&p)?;
    let valid = b.lat.is_finite()
        && b.lng.is_finite()
        && (-90.0..=90.0).contains(&b.lat)
        && (-180.0..=180.0).contains(&b.lng)
        && b.heading
            .is_none_or(|h| h.is_finite() && (0.0..=360.0).contains(&h))
        && b.speed
            .is_none_or(|v| v.is_finite() && (0.0..=100.0).contains(&v));
    if !valid {
        return Err(ApiError::validation(
            "lat in [-90, 90], lng in [-180, 180], heading in [0, 360], speed in [0, 100] m/s",
        ));
    }
    // Pings stay in memory and are replicated coalesced (see `dispatch`);
    // a ping from someone without a profile is simply never applied.
    s.dispatch.ping(Ping {
        driver_id: p.sub.clone(),
        lat: b.lat,
        lng: b.lng,
        at: now_ms(),
    });
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get, path = "/v1/drivers/me/offers", tag = "drivers",
    params(("limit" = Option<usize>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, description = "open offers", body = OffersView),
              (status = "4XX", description = "problem+json", body = Problem)),
    security(("bearer" = [])),
)]
pub(super) async fn my_offers(
    State(s): State<AppState>,
    p: Principal,
    c: Consistency,
    paging: Paging,
) -> ApiResult<Json<Value>> {
    driver_role(&p)?;
    ensure_fresh(&s, c).await?;
    let read = s.node.store().read()?;
    let now = now_ms();
    let mut items = Vec::new();
    for o in drivers::open_offers(&read, &p.sub)? {
        if o.expires_at > now {
            items.push(offer_json(&read, &o)?);
        }
    }
    Ok(Json(paging.answer(items)))
}

#[derive(Debug, Clone, Copy)]
pub(super) enum OfferAnswer {
    Accept,
    Decline,
}

/// The actions of `POST /v1/offers/{id}/{action}` (the offered driver).
pub(super) const OFFER_ACTIONS: [(&str, OfferAnswer); 2] = [
    ("accept", OfferAnswer::Accept),
    ("decline", OfferAnswer::Decline),
];

#[utoipa::path(
    post, path = "/v1/offers/{id}/{action}", tag = "drivers",
    params(("id" = String, Path, description = "offer id"),
           ("action" = String, Path, description = "accept | decline")),
    responses((status = 200, description = "accept: the delivery, now yours; decline: the offer", body = Object),
              (status = 409, description = "lost the race, expired, or already answered", body = Problem),
              (status = "4XX", description = "problem+json", body = Problem)),
    security(("bearer" = [])),
)]
pub(super) async fn answer_offer(
    State(s): State<AppState>,
    p: Principal,
    Path((id, action)): Path<(String, String)>,
) -> ApiResult<Response> {
    driver_role(&p)?;
    let now = now_ms();
    let cmd = match super::extract::action(&OFFER_ACTIONS, &action)? {
        OfferAnswer::Accept => DriverCommand::AcceptOffer {
            offer_id: id,
            driver_id: p.sub.clone(),
            now,
        },
        OfferAnswer::Decline => DriverCommand::DeclineOffer {
            offer_id: id,
            driver_id: p.sub.clone(),
            now,
        },
    };
    match write(&s, cmd).await? {
        (DriverResponse::Delivery(d), index) => delivery_written(&s, index, &d),
        (DriverResponse::Offer(o), index) => {
            let read = s.node.store().read()?;
            Ok(with_index(index, offer_json(&read, &o)?))
        }
        (DriverResponse::NotFound, _) => Err(ApiError::not_found("no such offer")),
        (other, _) => Err(unexpected(other)),
    }
}

fn may_see(p: &Principal, d: &Delivery) -> bool {
    match p.role {
        Role::Ops => true,
        Role::Customer => d.customer_id == p.sub,
        Role::Vendor => d.vendor_owner_id == p.sub,
        Role::Driver => d.driver_id.as_deref() == Some(p.sub.as_str()),
    }
}

#[utoipa::path(
    get, path = "/v1/deliveries/{id}", tag = "drivers",
    params(("id" = String, Path, description = "delivery id")),
    responses((status = 200, description = "the delivery", body = DeliveryView),
              (status = "4XX", description = "problem+json", body = Problem)),
    security(("bearer" = [])),
)]
pub(super) async fn get_delivery(
    State(s): State<AppState>,
    p: Principal,
    c: Consistency,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    ensure_fresh(&s, c).await?;
    let read = s.node.store().read()?;
    let d = drivers::delivery(&read, &id)?
        .filter(|d| may_see(&p, d))
        .ok_or_else(|| ApiError::not_found("no such delivery"))?;
    Ok(Json(delivery_json(&read, &d)?))
}

#[utoipa::path(
    get, path = "/v1/deliveries/{id}/driver", tag = "drivers",
    params(("id" = String, Path, description = "delivery id")),
    responses((status = 200, description = "who is bringing it, and where they are", body = CourierView),
              (status = 404, description = "no such delivery, or no driver assigned yet", body = Problem),
              (status = "4XX", description = "problem+json", body = Problem)),
    security(("bearer" = [])),
)]
pub(super) async fn delivery_driver(
    State(s): State<AppState>,
    p: Principal,
    c: Consistency,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    ensure_fresh(&s, c).await?;
    let read = s.node.store().read()?;
    if !drivers::delivery(&read, &id)?.is_some_and(|d| may_see(&p, &d)) {
        return Err(ApiError::not_found("no such delivery"));
    }
    couriers(&read, &p, std::slice::from_ref(&id))?
        .remove(&id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found("no driver is assigned to this delivery yet"))
}

/// The assigned drivers of deliveries the caller may see, by delivery id,
/// as `GET /v1/deliveries/{id}/driver` answers them; in one read.
pub(super) fn couriers(
    read: &storage::ReadTxn,
    p: &Principal,
    delivery_ids: &[String],
) -> ApiResult<std::collections::HashMap<String, Value>> {
    let mut out = std::collections::HashMap::new();
    for id in delivery_ids {
        let Some(d) = drivers::delivery(read, id)?.filter(|d| may_see(p, d)) else {
            continue;
        };
        let Some(driver) = d
            .driver_id
            .as_deref()
            .map(|id| drivers::driver(read, id))
            .transpose()?
            .flatten()
        else {
            continue;
        };
        let name = crate::identity::account(read, &driver.id)?
            .map(|a| a.name)
            .unwrap_or_default();
        out.insert(
            id.clone(),
            json!({
                "id": driver.id, "name": name, "vehicle": driver.vehicle,
                "location": driver.location.map(|l| json!({"lat": l.lat, "lng": l.lng})),
                "tier": driver.standing.tier_with(&crate::ratings::reputation(read, &driver.id)?),
            }),
        );
    }
    Ok(out)
}

/// The deliveries of orders, by order id, as `GET /v1/deliveries/{id}`
/// answers them, where the caller may see them; in one read.
pub(super) fn deliveries_of_orders(
    read: &storage::ReadTxn,
    p: &Principal,
    order_ids: &[String],
) -> ApiResult<std::collections::HashMap<String, Value>> {
    let mut out = std::collections::HashMap::new();
    for order_id in order_ids {
        let Some(id) = drivers::delivery_of_order(read, order_id)? else {
            continue;
        };
        if let Some(d) = drivers::delivery(read, &id)?.filter(|d| may_see(p, d)) {
            out.insert(order_id.clone(), delivery_json(read, &d)?);
        }
    }
    Ok(out)
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ActBody {
    proof_code: Option<String>,
}

/// The actions of `POST /v1/deliveries/{id}/{action}` (the assigned driver).
pub(super) const DELIVERY_ACTIONS: [(&str, DeliveryAction); 4] = [
    ("arrive", DeliveryAction::Arrive),
    ("pickup", DeliveryAction::Pickup),
    ("complete", DeliveryAction::Complete),
    ("fail", DeliveryAction::Fail),
];

#[utoipa::path(
    post, path = "/v1/deliveries/{id}/{action}", tag = "drivers",
    params(("id" = String, Path, description = "delivery id"),
           ("action" = String, Path, description = "arrive | pickup | complete | fail")),
    request_body(content = ActBody, description = "complete: {proof_code}"),
    responses((status = 200, description = "the delivery", body = DeliveryView),
              (status = 409, description = "illegal in this state, or a wrong proof code", body = Problem),
              (status = 429, description = "proof_attempts_exceeded: too many wrong proof codes for this delivery; see Retry-After", body = Problem),
              (status = 403, description = "driver_not_approved: a suspended driver, or one whose changed profile awaits review, may not arrive or pick up", body = Problem),
              (status = "4XX", description = "problem+json", body = Problem)),
    security(("bearer" = [])),
)]
pub(super) async fn act(
    State(s): State<AppState>,
    p: Principal,
    Path((id, action)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    driver_role(&p)?;
    let action = super::extract::action(&DELIVERY_ACTIONS, &action)?;
    // The body is optional (only `complete` needs one).
    let proof_code = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        serde_json::from_slice::<ActBody>(&body)
            .map_err(|e| ApiError::validation(format!("body: {e}")))?
            .proof_code
    };
    if proof_code.as_ref().is_some_and(|c| c.len() > 16) {
        return Err(ApiError::validation("proof_code is at most 16 characters"));
    }
    let cmd = DriverCommand::Act {
        delivery_id: id,
        driver_id: p.sub.clone(),
        action,
        proof_code,
        earnings_tx: format!("{}.ltx_{}", s.cfg.cell, ulid::Ulid::new()),
        now: now_ms(),
    };
    match write(&s, cmd).await? {
        (DriverResponse::Delivery(d), index) => delivery_written(&s, index, &d),
        (DriverResponse::NotFound | DriverResponse::Forbidden, _) => {
            Err(ApiError::not_found("no such delivery"))
        }
        (DriverResponse::NotApproved, _) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "driver_not_approved",
            "only an approved driver arrives at or picks up a delivery \
             (one already picked up can still be completed or failed)",
        )),
        (other, _) => Err(unexpected(other)),
    }
}

#[utoipa::path(
    get, path = "/v1/drivers/me/earnings", tag = "drivers",
    responses((status = 200, description = "the driver's ledger balance", body = EarningsView),
              (status = "4XX", description = "problem+json", body = Problem)),
    security(("bearer" = [])),
)]
pub(super) async fn earnings(
    State(s): State<AppState>,
    p: Principal,
    c: Consistency,
) -> ApiResult<Json<Value>> {
    driver_role(&p)?;
    ensure_fresh(&s, c).await?;
    let read = s.node.store().read()?;
    let balance = ledger::balance(&read, &drivers::driver_account(&p.sub))?;
    let completed = drivers::driver(&read, &p.sub)?
        .map(|d| d.standing.completed)
        .unwrap_or(0);
    Ok(Json(json!({
        "account": drivers::driver_account(&p.sub),
        "balance": {"amount": balance, "currency": s.cfg.currency},
        "deliveries_completed": completed,
    })))
}
