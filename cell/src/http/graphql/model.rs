//! The graph's object types. Each is read from the JSON the REST handler
//! for the same object answers, so both APIs show the same fields with the
//! same values and the same redactions (a vendor never sees a proof code,
//! in either). Edges to other objects (`Order.vendor`, `Delivery.driver`,
//! ...) are resolved in `edges`.

use std::collections::BTreeMap;

use async_graphql::{Json, SimpleObject};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Clone, Deserialize, SimpleObject)]
pub struct Money {
    /// Integer minor units (cents).
    pub amount: i64,
    /// ISO 4217.
    pub currency: String,
}

#[derive(Debug, Clone, Copy, Deserialize, SimpleObject)]
pub struct Location {
    pub lat: f64,
    pub lng: f64,
}

#[derive(Debug, Clone, Deserialize, SimpleObject)]
pub struct Account {
    pub id: String,
    pub email: String,
    pub name: String,
    /// customer | vendor | driver | ops
    pub role: String,
    /// The home cell.
    pub cell: String,
    pub created_at: String,
}

#[derive(Debug, Clone, Deserialize, SimpleObject)]
pub struct Session {
    pub account: Account,
    pub access_token: String,
    pub refresh_token: String,
    /// Seconds.
    pub expires_in: u64,
    pub token_type: String,
}

#[derive(Debug, Clone, Deserialize, SimpleObject)]
#[graphql(complex)]
pub struct Vendor {
    pub id: String,
    pub owner_id: String,
    pub name: String,
    /// restaurant | grocery | shop | taxi | ...
    pub kind: String,
    pub description: String,
    pub location: Location,
    pub address: String,
    pub prep_minutes: u32,
    pub tags: Vec<String>,
    /// active | paused
    pub status: String,
    /// Weekly opening hours; null = always open.
    pub hours: Option<OpeningHours>,
    /// Open at the moment of the answer.
    pub open_now: bool,
    /// When it next opens or closes (RFC 3339); null when that never changes.
    pub next_change_at: Option<String>,
    /// Average stars from customers (null before the first rating).
    pub rating: Option<f64>,
    pub ratings: u32,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Deserialize, SimpleObject)]
pub struct OpeningHours {
    /// IANA time zone.
    pub timezone: String,
    pub weekly: Vec<OpeningSpan>,
}

/// One weekly opening in local time; `close` at or before `open` runs past
/// midnight.
#[derive(Debug, Clone, Deserialize, SimpleObject)]
pub struct OpeningSpan {
    /// mon | tue | wed | thu | fri | sat | sun
    pub day: String,
    /// HH:MM
    pub open: String,
    /// HH:MM
    pub close: String,
}

#[derive(Debug, Clone, Deserialize, SimpleObject)]
#[graphql(complex)]
pub struct Product {
    pub id: String,
    pub vendor_id: String,
    pub name: String,
    pub description: String,
    pub category: String,
    pub price: Money,
    /// Units left; null = unlimited.
    pub stock: Option<i64>,
    pub available: bool,
    pub tags: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Deserialize, SimpleObject)]
pub struct ProductPage {
    pub items: Vec<Product>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Deserialize, SimpleObject)]
#[graphql(complex)]
pub struct CartItem {
    pub product_id: String,
    pub quantity: u32,
}

#[derive(Debug, Clone, Deserialize, SimpleObject)]
#[graphql(complex)]
pub struct Cart {
    /// Null while the cart is empty.
    pub vendor_id: Option<String>,
    pub items: Vec<CartItem>,
}

#[derive(Debug, Clone, Deserialize, SimpleObject)]
#[graphql(complex)]
pub struct Quote {
    pub id: String,
    /// delivery | ride
    pub kind: String,
    pub vendor_id: String,
    /// on_demand | scheduled
    pub mode: String,
    pub fee: Money,
    pub surge: f64,
    pub eta_minutes: u32,
    pub expires_at: String,
}

#[derive(Debug, Clone, Deserialize, SimpleObject)]
#[graphql(complex)]
pub struct OrderItem {
    pub product_id: String,
    pub name: String,
    pub quantity: u32,
    pub unit_price: Money,
}

#[derive(Debug, Clone, Deserialize, SimpleObject)]
pub struct Dropoff {
    pub location: Location,
    pub address: String,
    pub notes: Option<String>,
}

#[derive(Debug, Clone, Deserialize, SimpleObject)]
pub struct StatusChange {
    pub status: String,
    pub at: String,
}

#[derive(Debug, Clone, Deserialize, SimpleObject)]
#[graphql(complex)]
pub struct Order {
    pub id: String,
    /// delivery | ride
    pub kind: String,
    /// placed | accepted | ready | picked_up | delivered | rejected | cancelled | failed
    pub status: String,
    pub customer_id: String,
    pub vendor_id: String,
    pub items: Vec<OrderItem>,
    pub subtotal: Money,
    pub delivery_fee: Money,
    pub tip: Money,
    pub platform_fee: Money,
    pub total: Money,
    pub pickup: Location,
    pub dropoff: Dropoff,
    pub mode: String,
    pub window_start: Option<String>,
    pub eta: String,
    pub eta_minutes: u32,
    /// Set on a single order's read (not in lists).
    pub delivery_id: Option<String>,
    /// The delivery's status (`unassigned`: dispatch found no driver).
    pub delivery_status: Option<String>,
    pub driver_id: Option<String>,
    pub quote_id: String,
    pub payment_ref: String,
    /// The customer's code for the driver at the door (customer and ops only).
    pub proof_code: Option<String>,
    /// The customer's rating, once a delivered order has one.
    pub rating: Option<Rating>,
    pub history: Vec<StatusChange>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Deserialize, SimpleObject)]
pub struct Rating {
    pub order_id: String,
    pub vendor_id: String,
    /// 1 to 5.
    pub vendor: u8,
    pub driver_id: Option<String>,
    pub driver: Option<u8>,
    pub comment: Option<String>,
    pub at: String,
}

#[derive(Debug, Clone, Deserialize, SimpleObject)]
pub struct OrderPage {
    pub items: Vec<Order>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Deserialize, SimpleObject)]
#[graphql(complex)]
pub struct Delivery {
    pub id: String,
    pub order_id: String,
    pub kind: String,
    /// searching | assigned | arrived | picked_up | delivered | failed | cancelled
    pub status: String,
    pub driver_id: Option<String>,
    pub pickup: Location,
    pub dropoff: Location,
    /// When its order is expected at the door (as quoted).
    pub eta: Option<String>,
    pub pay: Money,
    pub created_at: String,
    pub updated_at: String,
    pub first_offer_at: Option<String>,
    pub dispatch_ms: Option<i64>,
}

/// The driver of a delivery, as its customer and vendor see them.
#[derive(Debug, Clone, Deserialize, SimpleObject)]
pub struct Courier {
    pub id: String,
    pub name: String,
    pub vehicle: String,
    /// Last reported position (replicated at most once a second).
    pub location: Option<Location>,
    pub tier: u8,
}

#[derive(Debug, Clone, Deserialize, SimpleObject)]
pub struct Standing {
    pub completed: u64,
    pub failed: u64,
    pub declined: u64,
    pub expired: u64,
    pub completion_rate: f64,
    pub tier: u8,
    /// Average stars from customers (null before the first rating).
    pub rating: Option<f64>,
    pub ratings: u32,
    /// Deliveries completed more than 10 minutes after they were due.
    pub late: u32,
}

#[derive(Debug, Clone, Deserialize, SimpleObject)]
pub struct DriverProfile {
    pub id: String,
    pub vehicle: String,
    pub capacity: u32,
    pub qualifications: Vec<String>,
    pub license_plate: Option<String>,
    pub status: String,
    pub online: bool,
    pub location: Option<Location>,
    pub current_delivery: Option<String>,
    pub standing: Standing,
}

#[derive(Debug, Clone, Deserialize, SimpleObject)]
pub struct OfferPay {
    pub amount: i64,
    pub currency: Option<String>,
}

#[derive(Debug, Clone, Deserialize, SimpleObject)]
pub struct Offer {
    pub id: String,
    pub delivery_id: String,
    /// open | accepted | declined | expired | lost | withdrawn
    pub status: String,
    pub pickup: Option<Location>,
    pub dropoff: Option<Location>,
    pub pay: OfferPay,
    pub expires_at: String,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct OfferList {
    pub items: Vec<Offer>,
}

#[derive(Debug, Clone, Deserialize, SimpleObject)]
pub struct Earnings {
    pub account: String,
    pub balance: Money,
    pub deliveries_completed: u64,
}

#[derive(Debug, Clone, Deserialize, SimpleObject)]
pub struct Stop {
    pub delivery_id: Option<String>,
    pub location: Location,
}

#[derive(Debug, Clone, Deserialize, SimpleObject)]
pub struct Requirements {
    pub vehicle: Option<String>,
    pub min_capacity: u32,
    pub qualifications: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, SimpleObject)]
pub struct Route {
    pub id: String,
    pub zone: String,
    pub status: String,
    pub window_start: String,
    pub window_end: String,
    pub stops: Vec<Stop>,
    pub pay: Money,
    pub requirements: Requirements,
    pub driver_id: Option<String>,
    /// Claims in the current matching window.
    pub claims: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct RouteList {
    pub items: Vec<Route>,
}

#[derive(Debug, Clone, Deserialize, SimpleObject)]
pub struct RouteMarket {
    /// Changes whenever the open routes do.
    pub version: u64,
    pub window_closes_at: Option<String>,
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, Deserialize, SimpleObject)]
pub struct Event {
    /// Position in the caller's feed.
    pub seq: u64,
    /// order.placed, order.accepted, delivery.assigned, offer.created, ...
    #[serde(rename = "type")]
    #[graphql(name = "type")]
    pub kind: String,
    pub at: String,
    pub data: Json<Value>,
}

#[derive(Debug, Clone, Deserialize, SimpleObject)]
pub struct EventPage {
    pub events: Vec<Event>,
    /// The cursor to continue from (`after`).
    pub next: u64,
}

#[derive(Debug, Clone, Deserialize, SimpleObject)]
pub struct Webhook {
    pub id: String,
    pub vendor_id: String,
    pub url: String,
    pub delivered_events: u64,
    pub cursor: u64,
    pub failures: u32,
    pub last_error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct WebhookList {
    pub items: Vec<Webhook>,
}

#[derive(Debug, Clone, Deserialize, SimpleObject)]
pub struct SearchVendorRef {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, Deserialize, SimpleObject)]
pub struct SearchHit {
    pub id: String,
    /// product | vendor
    pub kind: String,
    pub name: String,
    /// The best matching passage, matches in `<em>`.
    pub snippet: String,
    pub score: f64,
    pub distance_km: Option<f64>,
    pub price: Option<Money>,
    pub vendor: Option<SearchVendorRef>,
}

#[derive(Debug, Clone, SimpleObject)]
pub struct FacetCount {
    pub name: String,
    pub count: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct SearchFacets {
    pub category: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Deserialize, SimpleObject)]
#[graphql(complex)]
pub struct SearchPage {
    pub hits: Vec<SearchHit>,
    #[graphql(skip)]
    pub facets: SearchFacets,
    /// A lower bound when `totalExact` is false.
    pub total: u64,
    pub total_exact: bool,
    pub next_cursor: Option<String>,
}

#[async_graphql::ComplexObject]
impl SearchPage {
    /// Matches per category.
    async fn category_facets(&self) -> Vec<FacetCount> {
        self.facets
            .category
            .iter()
            .map(|(name, count)| FacetCount {
                name: name.clone(),
                count: *count,
            })
            .collect()
    }
}
