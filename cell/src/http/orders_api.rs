//! `/v1/cart`, `/v1/quotes`, `/v1/orders`: pricing, checkout and the order
//! lifecycle; `/admin/ledger/check`.

use axum::{
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use edge::token::Role;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{
    extract::{page_limit, Consistency, Ops, Principal, StrictJson},
    identity_api::{now_ms, rfc3339},
    kv_api::ensure_fresh,
    openapi::*,
    problem::{ApiError, ApiResult},
    AppState,
};
use crate::{
    app::{Command, Response as AppResponse},
    catalog::{self, Location, Money, VendorKind, VendorStatus},
    kv, ledger,
    orders::{
        self, Action, Cart, CartItem, Mode, Order, OrderActor, OrderCommand, OrderItem, OrderKind,
        OrderResponse, OrderStatus, Quote, Scope,
    },
    quote_token,
    ratings::{self, Rating, Stars},
};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/cart", get(get_cart).put(put_cart))
        .route("/v1/quotes", post(create_quote))
        .route("/v1/orders", post(place_order).get(list_orders))
        .route("/v1/orders/{id}", get(get_order))
        .route("/v1/orders/{id}/rating", post(rate_order))
        .route("/v1/orders/{id}/{action}", post(transition))
        .route("/admin/ledger/check", get(ledger_check))
}

/// The area whose drivers and waiting deliveries set a quote's surge.
const SURGE_AREA_KM: f64 = 5.0;
const MAX_ITEMS: usize = 50;
const MAX_QUANTITY: u32 = 99;
const MAX_TIP: i64 = 100_000;

/// A pricing parameter from the config store (`pricing/<name>`, a JSON
/// number); missing, unreadable or out-of-range values give the default.
fn param(
    read: &storage::ReadTxn,
    name: &str,
    default: f64,
    range: std::ops::RangeInclusive<f64>,
) -> ApiResult<f64> {
    Ok(kv::get(read, &format!("pricing/{name}"))?
        .and_then(|e| {
            std::str::from_utf8(&e.value)
                .ok()
                .and_then(|s| s.trim().parse::<f64>().ok())
        })
        .filter(|v| v.is_finite() && range.contains(v))
        .unwrap_or(default))
}

/// What a quote's price is made of. (A checkout reads only
/// `pricing/platform_fee_bps`.)
pub(super) struct Pricing {
    base_fee: f64,
    per_km: f64,
    per_minute: f64,
    surge_max: f64,
    default_supply: f64,
    speed_kmh: f64,
}

fn pricing(read: &storage::ReadTxn) -> ApiResult<Pricing> {
    Ok(Pricing {
        base_fee: param(read, "base_fee", 199.0, 0.0..=100_000.0)?,
        per_km: param(read, "per_km", 99.0, 0.0..=100_000.0)?,
        per_minute: param(read, "per_minute", 15.0, 0.0..=100_000.0)?,
        surge_max: param(read, "surge_max", 3.0, 1.0..=10.0)?,
        default_supply: param(read, "default_supply", 20.0, 1.0..=1e6)?,
        speed_kmh: param(read, "speed_kmh", 30.0, 1.0..=300.0)?,
    })
}

pub fn haversine_km(a: &Location, b: &Location) -> f64 {
    let (la1, la2) = (a.lat.to_radians(), b.lat.to_radians());
    let dla = la2 - la1;
    let dlo = (b.lng - a.lng).to_radians();
    let h = (dla / 2.0).sin().powi(2) + la1.cos() * la2.cos() * (dlo / 2.0).sin().powi(2);
    2.0 * 6371.0 * h.sqrt().asin()
}

fn customer(p: &Principal) -> ApiResult<()> {
    if p.role == Role::Customer {
        Ok(())
    } else {
        Err(ApiError::forbidden("this needs the customer role"))
    }
}

async fn write(s: &AppState, cmd: OrderCommand) -> ApiResult<(OrderResponse, u64)> {
    let written = s.node.write(&Command::Orders(Box::new(cmd))).await?;
    match written.response {
        AppResponse::Orders(r) => Ok((*r, written.index)),
        other => Err(ApiError::internal(format!("unexpected response {other:?}"))),
    }
}

fn money(amount: i64, currency: &str) -> Value {
    json!({"amount": amount, "currency": currency})
}

/// When the order is expected at the door (RFC 3339), as quoted: for a
/// scheduled order not before its window opens.
pub fn order_eta(o: &Order) -> String {
    let quoted = o.created_at + o.eta_minutes as i64 * 60_000;
    rfc3339(o.window_start.map_or(quoted, |w| w.max(quoted)))
}

pub fn order_json(o: &Order) -> Value {
    json!({
        "id": o.id, "kind": o.kind, "status": o.status, "customer_id": o.customer_id, "vendor_id": o.vendor_id,
        "items": o.items.iter().map(|i| json!({
            "product_id": i.product_id, "name": i.name, "quantity": i.quantity,
            "unit_price": money(i.unit_price, &o.currency),
        })).collect::<Vec<_>>(),
        "subtotal": money(o.subtotal, &o.currency), "delivery_fee": money(o.delivery_fee, &o.currency),
        "tip": money(o.tip, &o.currency), "platform_fee": money(o.platform_fee, &o.currency),
        "total": money(o.total, &o.currency),
        "pickup": {"lat": o.pickup.lat, "lng": o.pickup.lng},
        "dropoff": {"location": {"lat": o.dropoff.lat, "lng": o.dropoff.lng}, "address": o.dropoff_address, "notes": o.notes},
        "mode": o.mode, "window_start": o.window_start.map(rfc3339),
        "eta": order_eta(o), "eta_minutes": o.eta_minutes,
        "delivery_id": Value::Null, "delivery_status": Value::Null, "driver_id": Value::Null, "quote_id": o.quote_id, "payment_ref": o.payment_ref,
        "proof_code": o.proof_code,
        "history": o.history.iter().map(|(s, at)| json!({"status": s, "at": rfc3339(*at)})).collect::<Vec<_>>(),
        "created_at": rfc3339(o.created_at), "updated_at": rfc3339(o.updated_at),
    })
}

/// [`order_json`] with the order's delivery and its driver, once it has
/// them (a ride's delivery comes with the order, an order's on accept).
fn order_view(read: &storage::ReadTxn, o: &Order) -> ApiResult<Value> {
    let mut v = order_json(o);
    if let Some(id) = crate::drivers::delivery_of_order(read, &o.id)? {
        let d = crate::drivers::delivery(read, &id)?;
        v["delivery_status"] = json!(d.as_ref().map(|d| crate::drivers::status_name(d.status)));
        v["driver_id"] = json!(d.and_then(|d| d.driver_id));
        v["delivery_id"] = json!(id);
    }
    add_rating(read, o, &mut v)?;
    Ok(v)
}

/// An order's answer carries the customer's rating (null until a
/// delivered order is rated; only those are read for it).
fn add_rating(read: &storage::ReadTxn, o: &Order, v: &mut Value) -> ApiResult<()> {
    v["rating"] = if o.status == OrderStatus::Delivered {
        json!(ratings::rating(read, &o.id)?.map(|r| rating_json(&r)))
    } else {
        Value::Null
    };
    Ok(())
}

fn rating_json(r: &Rating) -> Value {
    json!({
        "order_id": r.order_id, "vendor_id": r.vendor_id, "vendor": r.vendor.get(),
        "driver_id": r.driver_id, "driver": r.driver.map(Stars::get),
        "comment": r.comment, "at": rfc3339(r.at),
    })
}

/// `id` is the sealed token the customer checks out with.
fn quote_json(q: &Quote, token: &str) -> Value {
    json!({
        "id": token, "kind": q.kind, "vendor_id": q.vendor_id, "mode": q.mode,
        "fee": money(q.fee.amount, &q.fee.currency), "surge": q.surge_milli as f64 / 1000.0,
        "eta_minutes": q.eta_minutes, "expires_at": rfc3339(q.expires_at),
    })
}

// ---- cart ----

fn cart_json(c: &Cart) -> Value {
    let items: Vec<Value> = c
        .items
        .iter()
        .map(|i| json!({"product_id": i.product_id, "quantity": i.quantity}))
        .collect();
    json!({"vendor_id": c.vendor_id, "items": items})
}

#[utoipa::path(
    get,
    path = "/v1/cart",
    tag = "orders",
    responses(
        (status = 200, description = "the cart", body = CartView),
        (status = "4XX", description = "problem+json", body = Problem),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn get_cart(
    State(s): State<AppState>,
    p: Principal,
    c: Consistency,
) -> ApiResult<Json<Value>> {
    customer(&p)?;
    ensure_fresh(&s, c).await?;
    let cart = orders::cart(&s.node.store().read()?, &p.sub)?;
    Ok(Json(match cart {
        Some(c) => cart_json(&c),
        None => json!({"vendor_id": Value::Null, "items": []}),
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ItemBody {
    product_id: String,
    quantity: u32,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CartBody {
    vendor_id: String,
    items: Vec<ItemBody>,
}

fn check_items(
    read: &storage::ReadTxn,
    vendor_id: &str,
    items: &[ItemBody],
) -> ApiResult<Vec<CartItem>> {
    if items.len() > MAX_ITEMS {
        return Err(ApiError::validation(format!("at most {MAX_ITEMS} lines")));
    }
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(items.len());
    for i in items {
        if !(1..=MAX_QUANTITY).contains(&i.quantity) {
            return Err(ApiError::validation(format!(
                "quantity must be 1..={MAX_QUANTITY}"
            )));
        }
        if !seen.insert(i.product_id.clone()) {
            return Err(ApiError::validation("each product at most once"));
        }
        let p = catalog::product(read, &i.product_id)?
            .filter(|p| p.vendor_id == vendor_id)
            .ok_or_else(|| {
                ApiError::validation(format!(
                    "product {:?} is not on this vendor's menu",
                    i.product_id
                ))
            })?;
        out.push(CartItem {
            product_id: p.id,
            quantity: i.quantity,
        });
    }
    Ok(out)
}

#[utoipa::path(
    put,
    path = "/v1/cart",
    tag = "orders",
    request_body = CartBody,
    responses(
        (status = 200, description = "the cart", body = CartView),
        (status = "4XX", description = "problem+json", body = Problem),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn put_cart(
    State(s): State<AppState>,
    p: Principal,
    c: Consistency,
    StrictJson(b): StrictJson<CartBody>,
) -> ApiResult<Response> {
    customer(&p)?;
    ensure_fresh(&s, c).await?;
    let items = {
        let read = s.node.store().read()?;
        if catalog::vendor(&read, &b.vendor_id)?.is_none() {
            return Err(ApiError::validation("no such vendor"));
        }
        check_items(&read, &b.vendor_id, &b.items)?
    };
    let cart = Cart {
        vendor_id: b.vendor_id,
        items,
    };
    let (_, index) = write(
        &s,
        OrderCommand::PutCart {
            customer_id: p.sub.clone(),
            cart: cart.clone(),
        },
    )
    .await?;
    Ok((
        [("x-cell-index", index.to_string())],
        Json(cart_json(&cart)),
    )
        .into_response())
}

// ---- quotes ----

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct QuoteBody {
    kind: Option<OrderKind>,
    vendor_id: String,
    pickup: Option<Location>,
    dropoff: Location,
    mode: Option<Mode>,
    window_start: Option<String>,
}

pub(super) fn parse_time(s: &str) -> ApiResult<i64> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| ApiError::validation("times are RFC 3339, e.g. 2026-11-26T18:30:00Z"))
}

#[utoipa::path(
    post,
    path = "/v1/quotes",
    tag = "orders",
    request_body = QuoteBody,
    responses(
        (status = 201, description = "a price-locking quote; its `id` is a sealed token, valid for checkouts on any node of the cell until `expires_at`", body = QuoteView),
        (status = "4XX", description = "problem+json", body = Problem),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn create_quote(
    State(s): State<AppState>,
    p: Principal,
    c: Consistency,
    StrictJson(b): StrictJson<QuoteBody>,
) -> ApiResult<Response> {
    customer(&p)?;
    ensure_fresh(&s, c).await?;
    let kind = b.kind.unwrap_or(OrderKind::Delivery);
    let mode = b.mode.unwrap_or(Mode::OnDemand);
    let now = now_ms();
    if !b.dropoff.is_valid() || b.pickup.as_ref().is_some_and(|l| !l.is_valid()) {
        return Err(ApiError::validation(
            "locations need lat in [-90, 90] and lng in [-180, 180]",
        ));
    }
    let window_start = match (mode, &b.window_start) {
        (Mode::Scheduled, Some(w)) => {
            let t = parse_time(w)?;
            if t < now || t > now + 14 * 24 * 3600 * 1000 {
                return Err(ApiError::validation(
                    "window_start must be within the next 14 days",
                ));
            }
            Some(t)
        }
        (Mode::Scheduled, None) => {
            return Err(ApiError::validation("scheduled quotes need window_start"))
        }
        (Mode::OnDemand, Some(_)) => {
            return Err(ApiError::validation(
                "window_start is only for scheduled quotes",
            ))
        }
        (Mode::OnDemand, None) => None,
    };
    let read = s.node.store().read()?;
    let vendor = catalog::vendor(&read, &b.vendor_id)?
        .ok_or_else(|| ApiError::validation("no such vendor"))?;
    if vendor.status == VendorStatus::Paused {
        return Err(vendor_paused());
    }
    if let Some(h) = catalog::hours(&read, &vendor.id)? {
        let at = window_start.unwrap_or(now);
        if !h.is_open_at(at) {
            return Err(vendor_closed(
                window_start.is_some(),
                h.next_change_after(at),
            ));
        }
    }
    let pickup = match kind {
        OrderKind::Ride => {
            if vendor.kind != VendorKind::Taxi {
                return Err(ApiError::validation("rides are quoted by taxi companies"));
            }
            b.pickup
                .ok_or_else(|| ApiError::validation("rides need a pickup"))?
        }
        OrderKind::Delivery => {
            if b.pickup.is_some() {
                return Err(ApiError::validation(
                    "deliveries are picked up at the vendor",
                ));
            }
            vendor.location
        }
    };
    let pr = pricing(&read)?;
    // Surge rises with open demand against available supply, bounded: in
    // the area around the pickup once the cell has drivers, cell-wide
    // against the configured default supply before that.
    let load = crate::dispatch::area_load(&read, &pickup, SURGE_AREA_KM)?;
    let (demand, supply) = if load.cell_has_drivers {
        (
            load.waiting_deliveries as f64 + 1.0,
            (load.available_drivers as f64).max(0.5),
        )
    } else {
        (orders::open_orders(&read)? as f64, pr.default_supply)
    };
    drop(read);
    let km = haversine_km(&pickup, &b.dropoff);
    if km > 200.0 {
        return Err(ApiError::validation("the trip is longer than 200 km"));
    }
    let minutes = km / pr.speed_kmh * 60.0;
    let surge = (1.0 + ((demand / supply) - 1.0).max(0.0) * 0.5).clamp(1.0, pr.surge_max);
    let surge_milli = (surge * 1000.0).round() as u32;
    let fee = ((pr.base_fee + pr.per_km * km + pr.per_minute * minutes) * surge_milli as f64
        / 1000.0)
        .round() as i64;
    let prep = if kind == OrderKind::Delivery {
        vendor.prep_minutes
    } else {
        0
    };
    let quote = Quote {
        id: format!("{}.quo_{}", s.cfg.cell, ulid::Ulid::new()),
        customer_id: p.sub.clone(),
        vendor_id: vendor.id,
        kind,
        mode,
        pickup,
        dropoff: b.dropoff,
        window_start,
        fee: Money {
            amount: fee,
            currency: s.cfg.currency.clone(),
        },
        surge_milli,
        eta_minutes: prep + minutes.ceil() as u32,
        expires_at: now + orders::QUOTE_TTL_MS,
        created_at: now,
    };
    // A token, not a row: nothing to replicate (see `quote_token`).
    let token = quote_token::seal(&s.keys, &quote)?;
    Ok((
        StatusCode::CREATED,
        [("x-cell-index", s.node.applied_index().to_string())],
        Json(quote_json(&quote, &token)),
    )
        .into_response())
}

// ---- checkout ----

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Dropoff {
    location: Location,
    address: String,
    notes: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct OrderBody {
    kind: Option<OrderKind>,
    quote_id: String,
    items: Option<Vec<ItemBody>>,
    /// A `Dropoff` for deliveries, a `Location` for rides.
    #[schema(value_type = Object)]
    dropoff: Value,
    pickup: Option<Location>,
    tip: Option<Money>,
    mode: Option<Mode>,
    window_start: Option<String>,
}

/// The payment boundary. The built-in provider is an explicit sandbox: it
/// approves every authorization and derives a stable reference from the
/// idempotency key, so a retried checkout is never charged twice.
pub trait PaymentProvider: Send + Sync {
    fn authorize(
        &self,
        customer_id: &str,
        amount: i64,
        currency: &str,
        idempotency_key: &str,
    ) -> Result<String, String>;
}

pub struct SandboxPayments;

impl PaymentProvider for SandboxPayments {
    fn authorize(
        &self,
        customer_id: &str,
        _amount: i64,
        _currency: &str,
        key: &str,
    ) -> Result<String, String> {
        let digest = Sha256::digest(format!("{customer_id}/{key}").as_bytes());
        Ok(format!("sandbox_{}", &hex::encode(digest)[..24]))
    }
}

fn idempotency_key(headers: &HeaderMap) -> ApiResult<String> {
    let v = headers
        .get("idempotency-key")
        .ok_or_else(|| ApiError::validation("checkout needs an Idempotency-Key header"))?
        .to_str()
        .map_err(|_| ApiError::validation("Idempotency-Key must be printable ASCII"))?
        .trim();
    if v.is_empty() || v.len() > 128 || !v.chars().all(|c| c.is_ascii_graphic()) {
        return Err(ApiError::validation(
            "Idempotency-Key must be 1 to 128 printable characters",
        ));
    }
    Ok(v.to_string())
}

#[utoipa::path(
    post,
    path = "/v1/orders",
    tag = "orders",
    params(
        ("Idempotency-Key" = String, Header, description = "required; a retry returns the first order"),
    ),
    request_body = OrderBody,
    responses(
        (status = 201, description = "placed", body = OrderView),
        (status = 200, description = "the order placed earlier with this key", body = OrderView),
        (status = 409, description = "out_of_stock, quote_expired, vendor_paused, vendor_closed or conflict", body = Problem),
        (status = "4XX", description = "problem+json", body = Problem),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn place_order(
    State(s): State<AppState>,
    p: Principal,
    headers: HeaderMap,
    StrictJson(b): StrictJson<OrderBody>,
) -> ApiResult<Response> {
    customer(&p)?;
    let key = idempotency_key(&headers)?;
    let now = now_ms();
    let kind = b.kind.unwrap_or(OrderKind::Delivery);
    // Checkout decides on state this node may not have yet: a retry must
    // find its first attempt, a cart saved through another node must be
    // here. Catch up with the leader (ReadIndex) only when something is
    // missing locally; apply re-checks everything anyway.
    let read = {
        let read = s.node.store().read()?;
        let missing = orders::by_idempotency_key(&read, &p.sub, &key)?.is_none()
            && kind == OrderKind::Delivery
            && b.items.is_none()
            && orders::cart(&read, &p.sub)?.is_none();
        if missing {
            drop(read);
            s.node.linearizable_barrier().await?;
            s.node.store().read()?
        } else {
            read
        }
    };
    if let Some(existing) = orders::by_idempotency_key(&read, &p.sub, &key)? {
        let index = s.node.applied_index().to_string();
        return Ok((
            StatusCode::OK,
            [("x-cell-index", index)],
            Json(order_view(&read, &existing)?),
        )
            .into_response());
    }
    let quote = quote_token::open(&s.keys, &b.quote_id).ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "quote_expired",
            "not a quote of this cell (or made before its keys rotated); ask for a new one",
        )
    })?;
    if quote.customer_id != p.sub {
        return Err(ApiError::forbidden("this quote belongs to someone else"));
    }
    if quote.expires_at <= now || orders::quote_used(&read, &quote.id)? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "quote_expired",
            "the quote expired or was used; ask for a new one",
        ));
    }
    if quote.kind != kind {
        return Err(ApiError::validation(
            "the order kind does not match the quote",
        ));
    }
    if b.mode.is_some_and(|m| m != quote.mode)
        || b.window_start.is_some() && quote.window_start.is_none()
    {
        return Err(ApiError::validation("mode and window come from the quote"));
    }
    let tip = match &b.tip {
        None => 0,
        Some(m) if m.currency != s.cfg.currency => {
            return Err(ApiError::validation(format!(
                "tips are in {}",
                s.cfg.currency
            )))
        }
        Some(m) if !(0..=MAX_TIP).contains(&m.amount) => {
            return Err(ApiError::validation(format!("tip must be 0..={MAX_TIP}")))
        }
        Some(m) => m.amount,
    };
    let (dropoff, address, notes) = match kind {
        OrderKind::Delivery => {
            let d: Dropoff = serde_json::from_value(b.dropoff.clone())
                .map_err(|e| ApiError::validation(format!("dropoff: {e}")))?;
            let address = d.address.trim().to_string();
            if address.is_empty() || address.chars().count() > 300 {
                return Err(ApiError::validation(
                    "dropoff address must be 1 to 300 characters",
                ));
            }
            if d.notes.as_ref().is_some_and(|n| n.chars().count() > 500) {
                return Err(ApiError::validation("notes are at most 500 characters"));
            }
            (d.location, address, d.notes)
        }
        OrderKind::Ride => {
            let l: Location = serde_json::from_value(b.dropoff.clone())
                .map_err(|e| ApiError::validation(format!("dropoff: {e}")))?;
            (l, String::new(), None)
        }
    };
    if !dropoff.is_valid() || haversine_km(&dropoff, &quote.dropoff) > 0.2 {
        return Err(ApiError::validation(
            "the dropoff must be where the quote was for",
        ));
    }
    if kind == OrderKind::Ride
        && b.pickup
            .as_ref()
            .is_none_or(|l| haversine_km(l, &quote.pickup) > 0.2)
    {
        return Err(ApiError::validation(
            "the pickup must be where the quote was for",
        ));
    }
    // Lines: from the body, else from the cart.
    let (lines, from_cart) = match (kind, b.items) {
        (OrderKind::Ride, Some(_)) => return Err(ApiError::validation("rides carry no items")),
        (OrderKind::Ride, None) => (vec![], false),
        (OrderKind::Delivery, Some(items)) => {
            (check_items(&read, &quote.vendor_id, &items)?, false)
        }
        (OrderKind::Delivery, None) => match orders::cart(&read, &p.sub)? {
            Some(c) if c.vendor_id == quote.vendor_id => (c.items, true),
            _ => {
                return Err(ApiError::validation(
                    "no items given and no cart for this vendor",
                ))
            }
        },
    };
    if kind == OrderKind::Delivery && lines.is_empty() {
        return Err(ApiError::validation("an order needs at least one item"));
    }
    let mut items = Vec::with_capacity(lines.len());
    let mut subtotal: i64 = 0;
    for l in &lines {
        let prod = catalog::product(&read, &l.product_id)?
            .ok_or_else(|| ApiError::validation("a product is gone"))?;
        subtotal += prod.price.amount * l.quantity as i64;
        items.push(OrderItem {
            product_id: prod.id,
            name: prod.name,
            quantity: l.quantity,
            unit_price: prod.price.amount,
        });
    }
    let platform_fee_bps = param(&read, "platform_fee_bps", 1500.0, 0.0..=10_000.0)? as i64;
    drop(read);
    let platform_fee = subtotal * platform_fee_bps / 10_000;
    let total = subtotal + quote.fee.amount + tip;
    let payment_ref = SandboxPayments
        .authorize(&p.sub, total, &s.cfg.currency, &key)
        .map_err(|e| ApiError::new(StatusCode::PAYMENT_REQUIRED, "payment_declined", e))?;
    let order = Order {
        id: format!("{}.ord_{}", s.cfg.cell, ulid::Ulid::new()),
        kind,
        customer_id: p.sub.clone(),
        vendor_id: quote.vendor_id.clone(),
        vendor_owner_id: String::new(),
        status: OrderStatus::Placed,
        items,
        currency: s.cfg.currency.clone(),
        subtotal,
        delivery_fee: quote.fee.amount,
        tip,
        platform_fee,
        total,
        pickup: quote.pickup,
        dropoff,
        dropoff_address: address,
        notes,
        mode: quote.mode,
        window_start: quote.window_start,
        eta_minutes: quote.eta_minutes,
        quote_id: quote.id.clone(),
        payment_ref,
        charge_tx: format!("{}.ltx_{}", s.cfg.cell, ulid::Ulid::new()),
        idempotency_key: key,
        proof_code: format!("{:04}", rand::random::<u16>() % 10_000),
        clear_cart: from_cart,
        created_at: now,
        updated_at: now,
        history: vec![],
    };
    let scheduled = order.window_start.is_some();
    let (resp, index) = write(
        &s,
        OrderCommand::Place {
            order: Box::new(order),
            now,
        },
    )
    .await?;
    let idx = [("x-cell-index", index.to_string())];
    match resp {
        OrderResponse::Placed(o) => {
            let v = order_view(&s.node.store().read()?, &o)?;
            Ok((StatusCode::CREATED, idx, Json(v)).into_response())
        }
        OrderResponse::Existing(o) => {
            let v = order_view(&s.node.store().read()?, &o)?;
            Ok((StatusCode::OK, idx, Json(v)).into_response())
        }
        OrderResponse::QuoteUsed => Err(ApiError::new(
            StatusCode::CONFLICT,
            "quote_expired",
            "the quote was used for another order; ask for a new one",
        )),
        OrderResponse::OutOfStock { product_id } => Err(ApiError::new(
            StatusCode::CONFLICT,
            "out_of_stock",
            format!("not enough stock of {product_id}"),
        )),
        OrderResponse::Stale(why) => Err(ApiError::new(StatusCode::CONFLICT, "conflict", why)),
        OrderResponse::VendorPaused => Err(vendor_paused()),
        OrderResponse::VendorClosed { opens_at } => Err(vendor_closed(scheduled, opens_at)),
        other => Err(ApiError::internal(format!("unexpected response {other:?}"))),
    }
}

fn vendor_closed(scheduled: bool, opens_at: Option<i64>) -> ApiError {
    let when = if scheduled {
        "at the start of that window"
    } else {
        "now"
    };
    let next = match opens_at {
        Some(t) => format!("; it opens at {}", rfc3339(t)),
        None => String::new(),
    };
    ApiError::new(
        StatusCode::CONFLICT,
        "vendor_closed",
        format!("the vendor is closed {when}{next}"),
    )
}

fn vendor_paused() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "vendor_paused",
        "the vendor is not taking orders right now",
    )
}

// ---- reading and acting on orders ----

fn may_see(p: &Principal, o: &Order) -> bool {
    match p.role {
        Role::Ops => true,
        Role::Customer => o.customer_id == p.sub,
        Role::Vendor => o.vendor_owner_id == p.sub,
        Role::Driver => false,
    }
}

#[utoipa::path(
    get,
    path = "/v1/orders/{id}",
    tag = "orders",
    params(
        ("id" = String, Path, description = "object id, <cell>.<kind>_<ulid>"),
    ),
    responses(
        (status = 200, description = "the order", body = OrderView),
        (status = 404, description = "no such order (or not yours)", body = Problem),
        (status = "4XX", description = "problem+json", body = Problem),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn get_order(
    State(s): State<AppState>,
    p: Principal,
    c: Consistency,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    ensure_fresh(&s, c).await?;
    let read = s.node.store().read()?;
    let o = orders::order(&read, &id)?.ok_or_else(|| ApiError::not_found("no such order"))?;
    let delivery = match crate::drivers::delivery_of_order(&read, &o.id)? {
        Some(d) => crate::drivers::delivery(&read, &d)?,
        None => None,
    };
    let assigned_driver = delivery.as_ref().and_then(|d| d.driver_id.as_deref());
    let is_assigned_driver = p.role == Role::Driver && assigned_driver == Some(p.sub.as_str());
    if !(may_see(&p, &o) || is_assigned_driver) {
        // Foreign orders are indistinguishable from missing ones.
        return Err(ApiError::not_found("no such order"));
    }
    let mut v = order_json(&o);
    v["delivery_id"] = json!(delivery.as_ref().map(|d| d.id.clone()));
    v["delivery_status"] = json!(delivery
        .as_ref()
        .map(|d| crate::drivers::status_name(d.status)));
    v["driver_id"] = json!(assigned_driver);
    add_rating(&read, &o, &mut v)?;
    // The proof code is the customer's to show the driver at the door.
    if p.role != Role::Customer && p.role != Role::Ops {
        v["proof_code"] = Value::Null;
    }
    Ok(Json(v))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    status: Option<OrderStatus>,
    limit: Option<usize>,
    cursor: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/orders",
    tag = "orders",
    params(
        ("status" = Option<OrderStatus>, Query),
        ("limit" = Option<usize>, Query),
        ("cursor" = Option<String>, Query),
    ),
    responses(
        (status = 200, description = "the caller's orders (vendor: its stores'; ops: all)", body = OrderPage),
        (status = "4XX", description = "problem+json", body = Problem),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn list_orders(
    State(s): State<AppState>,
    p: Principal,
    c: Consistency,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(q) = q.map_err(|e| ApiError::validation(e.body_text()))?;
    let limit = page_limit(q.limit)?;
    let scope = match p.role {
        Role::Customer => Scope::Customer(&p.sub),
        Role::Vendor => Scope::VendorOwner(&p.sub),
        Role::Ops => Scope::All,
        Role::Driver => return Err(ApiError::forbidden("drivers see deliveries, not orders")),
    };
    ensure_fresh(&s, c).await?;
    let read = s.node.store().read()?;
    let (items, next) = orders::list(&read, scope, q.status, q.cursor.as_deref(), limit)?;
    let items = items
        .iter()
        .map(|o| {
            let mut v = order_view(&read, o)?;
            if p.role == Role::Vendor {
                v["proof_code"] = Value::Null;
            }
            Ok(v)
        })
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(json!({"items": items, "next_cursor": next})))
}

/// The actions of `POST /v1/orders/{id}/{action}` (each its own path in
/// `/openapi.json`).
pub(super) const ORDER_ACTIONS: [(&str, Action); 4] = [
    ("accept", Action::Accept),
    ("reject", Action::Reject),
    ("ready", Action::Ready),
    ("cancel", Action::Cancel),
];

#[utoipa::path(
    post,
    path = "/v1/orders/{id}/{action}",
    tag = "orders",
    params(
        ("id" = String, Path, description = "object id, <cell>.<kind>_<ulid>"),
        ("action" = String, Path, description = "accept | reject | ready (the vendor) or cancel (the customer before pickup, ops)"),
    ),
    responses(
        (status = 200, description = "the order", body = OrderView),
        (status = 409, description = "illegal transition", body = Problem),
        (status = "4XX", description = "problem+json", body = Problem),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn transition(
    State(s): State<AppState>,
    p: Principal,
    c: Consistency,
    Path((id, action)): Path<(String, String)>,
) -> ApiResult<Response> {
    ensure_fresh(&s, c).await?;
    let action = super::extract::action(&ORDER_ACTIONS, &action)?;
    {
        let read = s.node.store().read()?;
        let o = orders::order(&read, &id)?.ok_or_else(|| ApiError::not_found("no such order"))?;
        if !may_see(&p, &o) {
            return Err(ApiError::not_found("no such order"));
        }
    }
    let cmd = OrderCommand::Transition {
        order_id: id,
        actor: OrderActor {
            account_id: p.sub.clone(),
            is_ops: p.role == Role::Ops,
        },
        action,
        now: now_ms(),
        refund_tx: format!("{}.ltx_{}", s.cfg.cell, ulid::Ulid::new()),
    };
    let (resp, index) = write(&s, cmd).await?;
    match resp {
        OrderResponse::Order(o) => {
            let mut v = order_view(&s.node.store().read()?, &o)?;
            if p.role == Role::Vendor {
                v["proof_code"] = Value::Null;
            }
            Ok(([("x-cell-index", index.to_string())], Json(v)).into_response())
        }
        OrderResponse::NotFound => Err(ApiError::not_found("no such order")),
        OrderResponse::Forbidden => Err(ApiError::forbidden("not yours to do")),
        OrderResponse::IllegalTransition { from } => Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("cannot {action:?} an order that is {from:?}").to_lowercase(),
        )),
        other => Err(ApiError::internal(format!("unexpected response {other:?}"))),
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RatingBody {
    /// Stars for the vendor, 1 to 5.
    vendor: u8,
    /// Stars for the driver who delivered it, 1 to 5 (ignored when the
    /// order had none).
    driver: Option<u8>,
    /// At most 500 characters.
    comment: Option<String>,
}

#[utoipa::path(
    post,
    path = "/v1/orders/{id}/rating",
    tag = "orders",
    params(("id" = String, Path, description = "object id, <cell>.<kind>_<ulid>")),
    request_body = RatingBody,
    responses(
        (status = 201, description = "the rating", body = RatingView),
        (status = 409, description = "not_delivered or already_rated", body = Problem),
        (status = "4XX", description = "problem+json", body = Problem),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn rate_order(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    StrictJson(b): StrictJson<RatingBody>,
) -> ApiResult<Response> {
    customer(&p)?;
    let stars = |n: u8, whom: &str| {
        Stars::new(n).ok_or_else(|| ApiError::validation(format!("{whom} stars are 1 to 5")))
    };
    let vendor = stars(b.vendor, "vendor")?;
    let driver = b.driver.map(|n| stars(n, "driver")).transpose()?;
    let comment = b
        .comment
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty());
    if comment.as_ref().is_some_and(|c| c.chars().count() > 500) {
        return Err(ApiError::validation("comment is at most 500 characters"));
    }
    let rating = Rating {
        order_id: id,
        // Apply fills in the order's vendor and driver.
        vendor_id: String::new(),
        vendor,
        driver_id: None,
        driver,
        comment,
        at: now_ms(),
    };
    let cmd = OrderCommand::Rate {
        customer_id: p.sub.clone(),
        rating: Box::new(rating),
    };
    match write(&s, cmd).await? {
        (OrderResponse::Rated(r), index) => Ok((
            StatusCode::CREATED,
            [("x-cell-index", index.to_string())],
            Json(rating_json(&r)),
        )
            .into_response()),
        // A foreign order is indistinguishable from a missing one.
        (OrderResponse::NotFound | OrderResponse::Forbidden, _) => {
            Err(ApiError::not_found("no such order"))
        }
        (OrderResponse::NotDelivered, _) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_delivered",
            "only a delivered order can be rated",
        )),
        (OrderResponse::AlreadyRated, _) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_rated",
            "this order was rated already",
        )),
        (other, _) => Err(ApiError::internal(format!("unexpected response {other:?}"))),
    }
}

#[utoipa::path(
    get,
    path = "/admin/ledger/check",
    tag = "admin",
    responses(
        (status = 200, description = "ledger verification", body = LedgerCheckView),
        (status = "4XX", description = "problem+json", body = Problem),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn ledger_check(
    State(s): State<AppState>,
    _ops: Ops,
    c: Consistency,
) -> ApiResult<Json<Value>> {
    ensure_fresh(&s, c).await?;
    let node = s.node.clone();
    let check = tokio::task::spawn_blocking(move || -> ApiResult<ledger::LedgerCheck> {
        let read = node.store().read()?;
        let mut check = ledger::check(&read)?;
        orders::reconcile(&read, &mut check)?;
        Ok(check)
    })
    .await
    .map_err(ApiError::internal)??;
    Ok(Json(serde_json::to_value(check).unwrap_or(Value::Null)))
}
