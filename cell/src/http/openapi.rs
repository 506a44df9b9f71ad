//! `GET /openapi.json`, generated from the handlers' `#[utoipa::path]`
//! annotations. The response shapes below document what the handlers
//! render; `cell/tests/openapi.rs` checks that every route is described
//! and that real responses carry the documented fields.

#![allow(dead_code)]

use axum::{routing::get, Json, Router};
use serde::Serialize;
use utoipa::{
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    Modify, OpenApi, ToSchema,
};

pub use super::identity_api::AccountView;
use super::AppState;
use crate::{
    catalog::{Location, Money, VendorKind, VendorStatus},
    orders::{Mode, OrderKind, OrderStatus},
};

/// RFC 9457 problem details; `code` is stable and machine-readable.
#[derive(Serialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub code: String,
    pub request_id: String,
}

#[derive(Serialize, ToSchema)]
pub struct CellInfo {
    pub cell: String,
    pub region: String,
    pub currency: String,
    pub node_id: u64,
    pub leader_id: Option<u64>,
    pub versions: Versions,
}

#[derive(Serialize, ToSchema)]
pub struct Versions {
    /// This node's release.
    pub build: String,
    /// The newest command version this node's build applies.
    pub commands: u32,
    /// The command version every node of the cell is known to apply:
    /// commands newer than this wait (`503 upgrade_in_progress`).
    pub cell: Option<u32>,
}

/// Each member's build, as it answered over the peer port.
#[derive(Serialize, ToSchema)]
pub struct ClusterVersions {
    /// The command version recorded for the whole cell.
    pub cell: u32,
    /// Per node id: `{version}` or `{error}` (did not answer).
    pub nodes: std::collections::BTreeMap<String, MemberVersion>,
}

#[derive(Serialize, ToSchema)]
pub struct MemberVersion {
    pub version: Option<u32>,
    pub error: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct KvWritten {
    pub key: String,
    pub version: u64,
    pub created: bool,
}

#[derive(Serialize, ToSchema)]
pub struct KvItem {
    pub key: String,
    pub version: u64,
}

#[derive(Serialize, ToSchema)]
pub struct KvPage {
    pub items: Vec<KvItem>,
    pub next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ClusterStatus {
    pub cell: String,
    pub node_id: u64,
    /// leader | follower | candidate | learner | shutdown
    pub role: String,
    pub leader: Option<u64>,
    pub term: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// Every member by node id.
    pub nodes: std::collections::BTreeMap<String, NodeAddrs>,
    pub last_log_index: u64,
    pub committed: u64,
    pub applied: u64,
    pub snapshot_index: u64,
    pub purged_index: Option<u64>,
    /// The command version recorded for the whole cell.
    pub command_version: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct NodeAddrs {
    pub api_addr: String,
    pub peer_addr: String,
}

#[derive(Serialize, ToSchema)]
pub struct Session {
    pub account: AccountView,
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: u64,
    pub token_type: String,
}

#[derive(Serialize, ToSchema)]
pub struct MintedToken {
    pub access_token: String,
    pub expires_in: u64,
    pub token_type: String,
    pub kid: String,
}

#[derive(Serialize, ToSchema)]
pub struct VendorView {
    pub id: String,
    pub owner_id: String,
    pub name: String,
    pub kind: VendorKind,
    pub description: String,
    pub location: Location,
    pub address: String,
    pub prep_minutes: u32,
    pub tags: Vec<String>,
    pub status: VendorStatus,
    /// Weekly opening hours; null = always open.
    pub hours: Option<crate::hours::HoursInput>,
    /// Open at the moment of the answer (a paused vendor may still be
    /// within its hours; it takes no orders either way).
    pub open_now: bool,
    /// When it next opens or closes (RFC 3339); null when that never
    /// changes.
    pub next_change_at: Option<String>,
    /// Average stars from customers (null before the first rating).
    pub rating: Option<f64>,
    pub ratings: u32,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct ProductView {
    pub id: String,
    pub vendor_id: String,
    pub name: String,
    pub description: String,
    pub category: String,
    pub price: Money,
    /// null = unlimited
    pub stock: Option<i64>,
    pub available: bool,
    pub tags: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct ProductPage {
    pub items: Vec<ProductView>,
    pub next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct CartLine {
    pub product_id: String,
    pub quantity: u32,
}

#[derive(Serialize, ToSchema)]
pub struct CartView {
    pub vendor_id: Option<String>,
    pub items: Vec<CartLine>,
}

#[derive(Serialize, ToSchema)]
pub struct QuoteView {
    /// The sealed quote (about 300 characters): pass it as `quote_id` at
    /// checkout, on any node of the cell, until `expires_at`.
    pub id: String,
    pub kind: OrderKind,
    pub vendor_id: String,
    pub mode: Mode,
    pub fee: Money,
    pub surge: f64,
    pub eta_minutes: u32,
    pub expires_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct OrderLine {
    pub product_id: String,
    pub name: String,
    pub quantity: u32,
    pub unit_price: Money,
}

#[derive(Serialize, ToSchema)]
pub struct DropoffView {
    pub location: Location,
    pub address: String,
    pub notes: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct StatusChange {
    pub status: OrderStatus,
    pub at: String,
}

#[derive(Serialize, ToSchema)]
pub struct OrderView {
    pub id: String,
    pub kind: OrderKind,
    pub status: OrderStatus,
    pub customer_id: String,
    pub vendor_id: String,
    pub items: Vec<OrderLine>,
    pub subtotal: Money,
    pub delivery_fee: Money,
    pub tip: Money,
    pub platform_fee: Money,
    pub total: Money,
    pub pickup: Location,
    pub dropoff: DropoffView,
    pub mode: Mode,
    pub window_start: Option<String>,
    pub eta: String,
    pub eta_minutes: u32,
    pub delivery_id: Option<String>,
    /// The delivery's status once the order has one: `searching`,
    /// `assigned`, …, or `unassigned` when dispatch found no driver within
    /// its limits (the customer may cancel for a refund).
    pub delivery_status: Option<String>,
    pub quote_id: String,
    pub payment_ref: String,
    /// Shown to the customer (null for vendors and drivers); the driver
    /// enters it on completion.
    pub proof_code: Option<String>,
    /// The assigned driver, once there is one (`GET /v1/orders/{id}`).
    pub driver_id: Option<String>,
    /// The customer's rating, on a delivered order (null until rated).
    pub rating: Option<RatingView>,
    pub history: Vec<StatusChange>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct RatingView {
    pub order_id: String,
    pub vendor_id: String,
    /// 1 to 5.
    pub vendor: u8,
    pub driver_id: Option<String>,
    pub driver: Option<u8>,
    pub comment: Option<String>,
    pub at: String,
}

#[derive(Serialize, ToSchema)]
pub struct OrderPage {
    pub items: Vec<OrderView>,
    pub next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct StandingView {
    pub completed: u32,
    pub failed: u32,
    pub declined: u32,
    pub expired: u32,
    pub completion_rate: f64,
    /// 1 (best) to 3: from completion, a tier down for an average rating
    /// under 4 (over 3 or more ratings) and one for more than a fifth of
    /// deliveries late.
    pub tier: u8,
    /// Average stars from customers (null before the first rating).
    pub rating: Option<f64>,
    pub ratings: u32,
    /// Deliveries completed more than 10 minutes after they were due.
    pub late: u32,
}

#[derive(Serialize, ToSchema)]
pub struct DriverView {
    pub id: String,
    pub vehicle: crate::drivers::Vehicle,
    pub capacity: u32,
    pub qualifications: Vec<String>,
    pub license_plate: Option<String>,
    pub status: crate::drivers::DriverStatus,
    pub online: bool,
    pub location: Option<Location>,
    pub current_delivery: Option<String>,
    pub standing: StandingView,
}

#[derive(Serialize, ToSchema)]
pub struct OfferView {
    pub id: String,
    pub delivery_id: String,
    pub status: crate::drivers::OfferStatus,
    pub pickup: Option<Location>,
    pub dropoff: Option<Location>,
    pub pay: Money,
    pub expires_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct OffersView {
    pub items: Vec<OfferView>,
    pub next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct DeliveryView {
    pub id: String,
    pub order_id: String,
    pub kind: OrderKind,
    pub status: crate::drivers::DeliveryStatus,
    pub driver_id: Option<String>,
    pub pickup: Location,
    pub dropoff: Location,
    /// When its order is expected at the door (as quoted).
    pub eta: Option<String>,
    pub pay: Money,
    pub created_at: String,
    pub updated_at: String,
    /// When the first offer went out.
    pub first_offer_at: Option<String>,
    /// Milliseconds from the delivery opening to its first offer.
    pub dispatch_ms: Option<i64>,
}

/// The driver of a delivery as its customer, vendor and ops see them.
#[derive(Serialize, ToSchema)]
pub struct CourierView {
    pub id: String,
    pub name: String,
    pub vehicle: crate::drivers::Vehicle,
    /// Last replicated position (at most about a second old on the leader).
    pub location: Option<Location>,
    /// Standing tier, 1 (best) to 4.
    pub tier: u8,
}

#[derive(Serialize, ToSchema)]
pub struct EarningsView {
    /// The driver's ledger account.
    pub account: String,
    pub balance: Money,
    pub deliveries_completed: u32,
}

#[derive(Serialize, ToSchema)]
pub struct WebhookView {
    pub id: String,
    pub vendor_id: String,
    pub url: String,
    /// Events acknowledged by the endpoint so far.
    pub delivered_events: u64,
    /// Feed sequence delivered up to.
    pub cursor: u64,
    /// Failed attempts in a row (0 when healthy).
    pub failures: u32,
    pub last_error: Option<String>,
    pub updated_at: String,
    pub created_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct WebhooksView {
    pub items: Vec<WebhookView>,
    pub next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct RouteStopView {
    pub delivery_id: Option<String>,
    pub location: Location,
}

#[derive(Serialize, ToSchema)]
pub struct RouteRequirementsView {
    pub vehicle: Option<crate::drivers::Vehicle>,
    pub min_capacity: u32,
    pub qualifications: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct RouteView {
    pub id: String,
    pub zone: String,
    pub status: crate::routes::RouteStatus,
    pub window_start: String,
    pub window_end: String,
    pub stops: Vec<RouteStopView>,
    pub pay: Money,
    pub requirements: RouteRequirementsView,
    pub driver_id: Option<String>,
    /// Claims in the current window.
    pub claims: u32,
}

#[derive(Serialize, ToSchema)]
pub struct RoutesMarketView {
    pub version: u64,
    /// Null while no window runs (the next claim starts one).
    pub window_closes_at: Option<String>,
    pub routes: Vec<RouteView>,
}

#[derive(Serialize, ToSchema)]
pub struct ScheduleView {
    pub items: Vec<RouteView>,
    pub next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct LedgerCheckView {
    pub transactions: u64,
    pub postings: u64,
    pub postings_sum: i64,
    pub unbalanced: Vec<String>,
    pub balance_mismatches: Vec<String>,
    pub ok: bool,
}

#[derive(Serialize, ToSchema)]
pub struct EventView {
    pub seq: u64,
    /// e.g. order.placed, order.accepted
    #[serde(rename = "type")]
    pub kind: String,
    pub at: String,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

#[derive(Serialize, ToSchema)]
pub struct EventsPage {
    pub events: Vec<EventView>,
    pub next: u64,
}

#[derive(Serialize, ToSchema)]
pub struct SearchVendorRef {
    pub id: String,
    pub name: String,
}

#[derive(Serialize, ToSchema)]
pub struct SearchHit {
    pub id: String,
    /// product | vendor
    pub kind: String,
    pub name: String,
    /// HTML with matched words in `<b>`.
    pub snippet: String,
    pub score: f32,
    pub distance_km: Option<f64>,
    pub price: Option<Money>,
    pub vendor: Option<SearchVendorRef>,
}

#[derive(Serialize, ToSchema)]
pub struct SearchFacets {
    /// category → number of matches
    pub category: std::collections::BTreeMap<String, u64>,
}

#[derive(Serialize, ToSchema)]
pub struct SearchPage {
    pub hits: Vec<SearchHit>,
    pub facets: SearchFacets,
    /// Matches counted; a lower bound when `total_exact` is false (counting
    /// stops at 1000, like Elasticsearch's `track_total_hits`, and the
    /// facets then cover the counted matches).
    pub total: u64,
    pub total_exact: bool,
    pub next_cursor: Option<String>,
}

/// Lists each action of an `{action}` route as a path of its own (as
/// shared/API.md names them), from the same tables the handlers parse.
struct ActionPaths;

impl Modify for ActionPaths {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        fn names<A>(t: &[(&'static str, A)]) -> Vec<&'static str> {
            t.iter().map(|(n, _)| *n).collect()
        }
        let families = [
            (
                "/v1/orders/{id}/{action}",
                names(&super::orders_api::ORDER_ACTIONS),
            ),
            (
                "/v1/drivers/{id}/{action}",
                names(&super::drivers_api::DRIVER_ACTIONS),
            ),
            (
                "/v1/offers/{id}/{action}",
                names(&super::drivers_api::OFFER_ACTIONS),
            ),
            (
                "/v1/deliveries/{id}/{action}",
                names(&super::drivers_api::DELIVERY_ACTIONS),
            ),
        ];
        for (template, actions) in families {
            let Some(item) = api.paths.paths.remove(template) else {
                continue;
            };
            for name in actions {
                let mut item = item.clone();
                if let Some(op) = item.post.as_mut() {
                    if let Some(params) = op.parameters.as_mut() {
                        params.retain(|p| p.name != "action");
                    }
                    op.operation_id = op.operation_id.take().map(|id| format!("{id}_{name}"));
                }
                api.paths
                    .paths
                    .insert(template.replace("{action}", name), item);
            }
        }
    }
}

/// The errors any API operation may answer besides its own: the edge's
/// rate limits and load shedding, and a write that found no leader.
struct EdgeErrors;

impl Modify for EdgeErrors {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{content::Content, response::ResponseBuilder, Ref};
        let problem = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/problem+json",
                    Content::new(Some(Ref::from_schema_name("Problem"))),
                )
                .build()
                .into()
        };
        for (path, item) in api.paths.paths.iter_mut() {
            if !(path.starts_with("/v1/") || path.starts_with("/admin/")) {
                continue;
            }
            let ops = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in ops.into_iter().flatten() {
                let r = &mut op.responses.responses;
                r.entry("429".into()).or_insert_with(|| {
                    problem("rate_limited: over this caller's rate; see Retry-After")
                });
                r.entry("503".into()).or_insert_with(|| {
                    problem(
                        "overloaded, timeout, not_leader or outcome_unknown (a write that may \
                         or may not have taken effect); see Retry-After",
                    )
                });
            }
        }
    }
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "marketcell cell API", description = "One regional cell: identity, catalog, orders, events, config store and operations."),
    modifiers(&BearerAuth, &ActionPaths, &EdgeErrors),
    paths(
        super::info_api::cell_info, super::info_api::healthz, super::info_api::readyz, super::info_api::metrics,
        super::kv_api::list, super::kv_api::get_key, super::kv_api::put_key, super::kv_api::delete_key,
        super::admin_api::cluster, super::admin_api::init, super::admin_api::add_node, super::admin_api::membership,
        super::admin_api::remove_node, super::admin_api::snapshot, super::admin_api::backup,
        super::admin_api::versions,
        super::identity_api::signup, super::identity_api::login, super::identity_api::refresh, super::identity_api::logout,
        super::identity_api::me, super::identity_api::jwks, super::identity_api::mint,
        super::catalog_api::create_vendor, super::catalog_api::get_vendor, super::catalog_api::patch_vendor,
        super::catalog_api::list_products, super::catalog_api::create_product, super::catalog_api::get_product,
        super::catalog_api::patch_product, super::catalog_api::delete_product, super::catalog_api::set_stock,
        super::orders_api::get_cart, super::orders_api::put_cart, super::orders_api::create_quote,
        super::orders_api::place_order, super::orders_api::list_orders, super::orders_api::get_order,
        super::orders_api::transition, super::orders_api::rate_order, super::orders_api::ledger_check,
        super::events_api::feed, super::search_api::search, super::search_api::reindex,
        super::drivers_api::put_me, super::drivers_api::get_me, super::drivers_api::set_status,
        super::drivers_api::availability, super::drivers_api::location, super::drivers_api::my_offers,
        super::drivers_api::answer_offer, super::drivers_api::get_delivery, super::drivers_api::delivery_driver, super::drivers_api::act,
        super::drivers_api::earnings,
        super::webhooks_api::register, super::webhooks_api::list, super::webhooks_api::remove,
        super::routes_api::create, super::routes_api::available, super::routes_api::claim,
        super::routes_api::withdraw, super::routes_api::schedule,
        super::graphql::execute, super::graphql::subscribe, super::graphql::schema_sdl,
    )
)]
pub struct ApiDoc;

pub fn routes() -> Router<AppState> {
    Router::new().route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
}
