//! The write side of the graph: one field per REST action, answered by it.
//! Inputs are serialised into the REST handler's JSON body, so they obey
//! the same rules (and fail with the same `code`).

use async_graphql::{Context, Enum, InputObject, MaybeUndefined, Object, Result};
use axum::http::{HeaderMap, HeaderValue};
use serde::Serialize;

use super::caller::{body, path, Caller, OrGql};
use super::model::*;
use crate::http::{
    catalog_api, drivers_api, extract::OptionalJson, identity_api, orders_api, problem::ApiError,
    routes_api, webhooks_api,
};

pub struct Mutation;

macro_rules! graphql_enum {
    ($(#[$m:meta])* $name:ident { $($v:ident),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Serialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($v),* }
    };
}

graphql_enum!(Role {
    Customer,
    Vendor,
    Driver
});
graphql_enum!(VendorKind {
    Restaurant,
    Grocery,
    Retail,
    Pharmacy,
    Taxi
});
graphql_enum!(VendorStatus { Active, Paused });
graphql_enum!(OrderKind { Delivery, Ride });
graphql_enum!(Mode {
    OnDemand,
    Scheduled
});
graphql_enum!(Vehicle {
    Bike,
    Scooter,
    Car,
    Van,
    Truck
});
graphql_enum!(
    /// What a vendor (accept, reject, ready) or customer (cancel) does to an order.
    OrderAction { Accept, Reject, Ready, Cancel }
);
graphql_enum!(OfferAnswer { Accept, Decline });
graphql_enum!(DeliveryAction {
    Arrive,
    Pickup,
    Complete,
    Fail
});
graphql_enum!(DriverStatusAction { Approve, Suspend });

fn action_name(v: impl Serialize) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

#[derive(Debug, Clone, Copy, InputObject, Serialize)]
#[graphql(name = "LocationInput")]
pub struct LocationInput {
    pub lat: f64,
    pub lng: f64,
}

#[derive(Debug, Clone, InputObject, Serialize)]
#[graphql(name = "MoneyInput")]
pub struct MoneyInput {
    pub amount: i64,
    pub currency: String,
}

#[derive(InputObject, Serialize)]
pub struct SignupInput {
    email: String,
    password: String,
    name: String,
    role: Role,
    #[serde(skip_serializing_if = "Option::is_none")]
    location: Option<LocationInput>,
    #[serde(skip_serializing_if = "Option::is_none")]
    region: Option<String>,
}

/// One weekly opening, local time: `close` at or before `open` runs past
/// midnight; `24:00` closes at midnight.
#[derive(InputObject, Serialize)]
#[graphql(name = "OpeningSpanInput")]
pub struct OpeningSpanInput {
    /// mon | tue | wed | thu | fri | sat | sun
    day: String,
    /// HH:MM
    open: String,
    /// HH:MM
    close: String,
}

#[derive(InputObject, Serialize)]
#[graphql(name = "OpeningHoursInput")]
pub struct OpeningHoursInput {
    /// IANA time zone, e.g. America/New_York.
    timezone: String,
    weekly: Vec<OpeningSpanInput>,
}

#[derive(InputObject, Serialize)]
pub struct VendorInput {
    name: String,
    kind: VendorKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    location: LocationInput,
    address: String,
    prep_minutes: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    tags: Option<Vec<String>>,
    /// Left out: always open.
    #[serde(skip_serializing_if = "Option::is_none")]
    hours: Option<OpeningHoursInput>,
}

#[derive(InputObject, Serialize)]
pub struct VendorPatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    location: Option<LocationInput>,
    #[serde(skip_serializing_if = "Option::is_none")]
    address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prep_minutes: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tags: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<VendorStatus>,
    /// New hours; null = always open; left out = unchanged.
    #[serde(skip_serializing_if = "MaybeUndefined::is_undefined")]
    hours: MaybeUndefined<OpeningHoursInput>,
}

#[derive(InputObject, Serialize)]
pub struct ProductInput {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    category: String,
    price: MoneyInput,
    /// Null: unlimited.
    stock: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tags: Option<Vec<String>>,
}

#[derive(InputObject, Serialize)]
pub struct ProductPatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    category: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    price: Option<MoneyInput>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tags: Option<Vec<String>>,
}

#[derive(InputObject, Serialize)]
pub struct ItemInput {
    product_id: String,
    quantity: u32,
}

#[derive(InputObject, Serialize)]
pub struct CartInput {
    vendor_id: String,
    items: Vec<ItemInput>,
}

#[derive(InputObject, Serialize)]
pub struct QuoteInput {
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<OrderKind>,
    vendor_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pickup: Option<LocationInput>,
    dropoff: LocationInput,
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<Mode>,
    /// RFC 3339, for scheduled orders.
    #[serde(skip_serializing_if = "Option::is_none")]
    window_start: Option<String>,
}

#[derive(InputObject, Serialize)]
pub struct DropoffInput {
    location: LocationInput,
    address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    notes: Option<String>,
}

#[derive(InputObject, Serialize)]
pub struct OrderInput {
    quote_id: String,
    /// Defaults to the cart's lines.
    #[serde(skip_serializing_if = "Option::is_none")]
    items: Option<Vec<ItemInput>>,
    dropoff: DropoffInput,
    #[serde(skip_serializing_if = "Option::is_none")]
    tip: Option<MoneyInput>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<Mode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    window_start: Option<String>,
}

#[derive(InputObject, Serialize)]
pub struct RatingInput {
    /// Stars for the vendor, 1 to 5.
    vendor: u8,
    /// Stars for the driver who delivered it, 1 to 5.
    #[serde(skip_serializing_if = "Option::is_none")]
    driver: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    comment: Option<String>,
}

#[derive(InputObject, Serialize)]
pub struct RideInput {
    quote_id: String,
    pickup: LocationInput,
    dropoff: LocationInput,
}

/// A ride's body: `{kind: "ride", quote_id, pickup, dropoff}`.
#[derive(Serialize)]
struct RideBody<'a> {
    kind: OrderKind,
    #[serde(flatten)]
    ride: &'a RideInput,
}

#[derive(InputObject, Serialize)]
pub struct DriverProfileInput {
    vehicle: Vehicle,
    capacity: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    qualifications: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    license_plate: Option<String>,
}

#[derive(InputObject, Serialize)]
pub struct PingInput {
    lat: f64,
    lng: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    heading: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    speed: Option<f64>,
}

#[derive(InputObject, Serialize)]
pub struct StopInput {
    location: LocationInput,
}

#[derive(InputObject, Serialize)]
pub struct RequirementsInput {
    #[serde(skip_serializing_if = "Option::is_none")]
    vehicle: Option<Vehicle>,
    #[serde(skip_serializing_if = "Option::is_none")]
    min_capacity: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    qualifications: Option<Vec<String>>,
}

#[derive(InputObject, Serialize)]
pub struct RouteInput {
    /// Unix milliseconds.
    window_start: i64,
    window_end: i64,
    stops: Vec<StopInput>,
    pay: MoneyInput,
    #[serde(skip_serializing_if = "Option::is_none")]
    requirements: Option<RequirementsInput>,
}

#[derive(InputObject, Serialize)]
pub struct WebhookInput {
    url: String,
    secret: String,
}

#[derive(Serialize)]
struct RefreshBody {
    refresh_token: String,
}

#[derive(Serialize)]
struct LoginBody {
    email: String,
    password: String,
}

#[derive(Serialize)]
struct AvailabilityBody {
    online: bool,
}

#[derive(Serialize)]
struct StockBody {
    stock: Option<i64>,
}

#[derive(Serialize)]
struct ProofBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    proof_code: Option<String>,
}

#[Object]
impl Mutation {
    async fn signup(&self, ctx: &Context<'_>, input: SignupInput) -> Result<Session> {
        let c = Caller::of(ctx)?;
        let r = identity_api::signup(c.s(), body(input).gql()?).await;
        c.answer(r).await
    }

    async fn login(&self, ctx: &Context<'_>, email: String, password: String) -> Result<Session> {
        let c = Caller::of(ctx)?;
        let r = identity_api::login(c.s(), body(LoginBody { email, password }).gql()?).await;
        c.answer(r).await
    }

    /// Rotates a refresh token (reuse of an old one revokes its family).
    async fn refresh(&self, ctx: &Context<'_>, refresh_token: String) -> Result<Session> {
        let c = Caller::of(ctx)?;
        let r = identity_api::refresh(c.s(), body(RefreshBody { refresh_token }).gql()?).await;
        c.answer(r).await
    }

    /// Ends a login session: the one `refreshToken` belongs to, or without
    /// it the one the caller's access token was issued for.
    async fn logout(&self, ctx: &Context<'_>, refresh_token: Option<String>) -> Result<bool> {
        let c = Caller::of(ctx)?;
        let session = match refresh_token {
            Some(refresh_token) => Some(body(RefreshBody { refresh_token }).gql()?.0),
            None => None,
        };
        let r = identity_api::logout(c.s(), c.principal().gql()?, OptionalJson(session)).await;
        c.done(r).await?;
        Ok(true)
    }

    async fn create_vendor(&self, ctx: &Context<'_>, input: VendorInput) -> Result<Vendor> {
        let c = Caller::of(ctx)?;
        let r = catalog_api::create_vendor(c.s(), c.principal().gql()?, body(input).gql()?).await;
        c.answer(r).await
    }

    async fn update_vendor(
        &self,
        ctx: &Context<'_>,
        id: String,
        input: VendorPatch,
    ) -> Result<Vendor> {
        let c = Caller::of(ctx)?;
        let r =
            catalog_api::patch_vendor(c.s(), c.principal().gql()?, path(id), body(input).gql()?)
                .await;
        c.answer(r).await
    }

    async fn create_product(
        &self,
        ctx: &Context<'_>,
        vendor_id: String,
        input: ProductInput,
    ) -> Result<Product> {
        let c = Caller::of(ctx)?;
        let r = catalog_api::create_product(
            c.s(),
            c.principal().gql()?,
            path(vendor_id),
            body(input).gql()?,
        )
        .await;
        c.answer(r).await
    }

    async fn update_product(
        &self,
        ctx: &Context<'_>,
        id: String,
        input: ProductPatch,
    ) -> Result<Product> {
        let c = Caller::of(ctx)?;
        let r =
            catalog_api::patch_product(c.s(), c.principal().gql()?, path(id), body(input).gql()?)
                .await;
        c.answer(r).await
    }

    async fn delete_product(&self, ctx: &Context<'_>, id: String) -> Result<bool> {
        let c = Caller::of(ctx)?;
        let r = catalog_api::delete_product(c.s(), c.principal().gql()?, path(id)).await;
        c.done(r).await?;
        Ok(true)
    }

    /// Units in stock; null makes it unlimited.
    async fn set_stock(
        &self,
        ctx: &Context<'_>,
        id: String,
        stock: Option<i64>,
    ) -> Result<Product> {
        let c = Caller::of(ctx)?;
        let r = catalog_api::set_stock(
            c.s(),
            c.principal().gql()?,
            path(id),
            body(StockBody { stock }).gql()?,
        )
        .await;
        c.answer(r).await
    }

    /// Replaces the customer's cart.
    async fn set_cart(&self, ctx: &Context<'_>, input: CartInput) -> Result<Cart> {
        let c = Caller::of(ctx)?;
        let r = orders_api::put_cart(
            c.s(),
            c.principal().gql()?,
            c.consistency(),
            body(input).gql()?,
        )
        .await;
        c.answer(r).await
    }

    /// A priced quote for the cart (or a ride); valid for five minutes.
    async fn create_quote(&self, ctx: &Context<'_>, input: QuoteInput) -> Result<Quote> {
        let c = Caller::of(ctx)?;
        let r = orders_api::create_quote(
            c.s(),
            c.principal().gql()?,
            c.consistency(),
            body(input).gql()?,
        )
        .await;
        c.answer(r).await
    }

    /// Checkout. The same `idempotencyKey` again returns the same order.
    async fn place_order(
        &self,
        ctx: &Context<'_>,
        idempotency_key: String,
        input: OrderInput,
    ) -> Result<Order> {
        let c = Caller::of(ctx)?;
        let r = orders_api::place_order(
            c.s(),
            c.principal().gql()?,
            idempotency(&idempotency_key).gql()?,
            body(input).gql()?,
        )
        .await;
        c.answer(r).await
    }

    /// Books a ride (a quote with `kind: RIDE` first).
    async fn request_ride(
        &self,
        ctx: &Context<'_>,
        idempotency_key: String,
        input: RideInput,
    ) -> Result<Order> {
        let c = Caller::of(ctx)?;
        let ride = RideBody {
            kind: OrderKind::Ride,
            ride: &input,
        };
        let r = orders_api::place_order(
            c.s(),
            c.principal().gql()?,
            idempotency(&idempotency_key).gql()?,
            body(ride).gql()?,
        )
        .await;
        c.answer(r).await
    }

    async fn order_action(
        &self,
        ctx: &Context<'_>,
        id: String,
        action: OrderAction,
    ) -> Result<Order> {
        let c = Caller::of(ctx)?;
        let r = orders_api::transition(
            c.s(),
            c.principal().gql()?,
            c.consistency(),
            path((id, action_name(action))),
        )
        .await;
        c.answer(r).await
    }

    /// The customer rates a delivered order, once.
    async fn rate_order(
        &self,
        ctx: &Context<'_>,
        id: String,
        input: RatingInput,
    ) -> Result<Rating> {
        let c = Caller::of(ctx)?;
        let r =
            orders_api::rate_order(c.s(), c.principal().gql()?, path(id), body(input).gql()?).await;
        c.answer(r).await
    }

    async fn set_driver_profile(
        &self,
        ctx: &Context<'_>,
        input: DriverProfileInput,
    ) -> Result<DriverProfile> {
        let c = Caller::of(ctx)?;
        let r = drivers_api::put_me(c.s(), c.principal().gql()?, body(input).gql()?).await;
        c.answer(r).await
    }

    /// Ops: approve a driver (also to reinstate a suspended one) or suspend one.
    async fn driver_status(
        &self,
        ctx: &Context<'_>,
        driver_id: String,
        action: DriverStatusAction,
    ) -> Result<DriverProfile> {
        let c = Caller::of(ctx)?;
        let r = drivers_api::set_status(
            c.s(),
            c.ops().gql()?,
            path((driver_id, action_name(action))),
        )
        .await;
        c.answer(r).await
    }

    async fn set_availability(&self, ctx: &Context<'_>, online: bool) -> Result<DriverProfile> {
        let c = Caller::of(ctx)?;
        let r = drivers_api::availability(
            c.s(),
            c.principal().gql()?,
            body(AvailabilityBody { online }).gql()?,
        )
        .await;
        c.answer(r).await
    }

    /// A location ping (about once a second while online).
    async fn ping(&self, ctx: &Context<'_>, input: PingInput) -> Result<bool> {
        let c = Caller::of(ctx)?;
        drivers_api::location(c.s(), c.principal().gql()?, body(input).gql()?)
            .await
            .gql()?;
        Ok(true)
    }

    async fn answer_offer(
        &self,
        ctx: &Context<'_>,
        id: String,
        answer: OfferAnswer,
    ) -> Result<Delivery> {
        let c = Caller::of(ctx)?;
        let r =
            drivers_api::answer_offer(c.s(), c.principal().gql()?, path((id, action_name(answer))))
                .await;
        c.answer(r).await
    }

    async fn delivery_action(
        &self,
        ctx: &Context<'_>,
        id: String,
        action: DeliveryAction,
        proof_code: Option<String>,
    ) -> Result<Delivery> {
        let c = Caller::of(ctx)?;
        let raw = serde_json::to_vec(&ProofBody { proof_code }).unwrap_or_default();
        let r = drivers_api::act(
            c.s(),
            c.principal().gql()?,
            path((id, action_name(action))),
            raw.into(),
        )
        .await;
        c.answer(r).await
    }

    /// Claims a route for the current matching window.
    async fn claim_route(&self, ctx: &Context<'_>, id: String) -> Result<Route> {
        let c = Caller::of(ctx)?;
        let r = routes_api::claim(c.s(), c.principal().gql()?, path(id)).await;
        c.answer(r).await
    }

    async fn withdraw_claim(&self, ctx: &Context<'_>, id: String) -> Result<Route> {
        let c = Caller::of(ctx)?;
        let r = routes_api::withdraw(c.s(), c.principal().gql()?, path(id)).await;
        c.answer(r).await
    }

    /// Ops: a route of stops, open for claims.
    async fn create_route(&self, ctx: &Context<'_>, input: RouteInput) -> Result<Route> {
        let c = Caller::of(ctx)?;
        let r = routes_api::create(c.s(), c.ops().gql()?, body(input).gql()?).await;
        c.answer(r).await
    }

    async fn register_webhook(
        &self,
        ctx: &Context<'_>,
        vendor_id: String,
        input: WebhookInput,
    ) -> Result<Webhook> {
        let c = Caller::of(ctx)?;
        let r = webhooks_api::register(
            c.s(),
            c.principal().gql()?,
            path(vendor_id),
            body(input).gql()?,
        )
        .await;
        c.answer(r).await
    }

    async fn delete_webhook(
        &self,
        ctx: &Context<'_>,
        vendor_id: String,
        id: String,
    ) -> Result<bool> {
        let c = Caller::of(ctx)?;
        webhooks_api::remove(c.s(), c.principal().gql()?, path((vendor_id, id)))
            .await
            .gql()?;
        Ok(true)
    }
}

/// The `Idempotency-Key` header the checkout handler reads.
fn idempotency(key: &str) -> std::result::Result<HeaderMap, ApiError> {
    let mut h = HeaderMap::new();
    let v = HeaderValue::from_str(key)
        .map_err(|_| ApiError::validation("idempotencyKey must be printable ASCII"))?;
    h.insert("idempotency-key", v);
    Ok(h)
}
