//! The read side of the graph: one field per REST read, answered by it.

use async_graphql::{Context, Enum, Object, Result};
use serde::Serialize;

use super::caller::{path, query, Caller, OrGql};
use super::model::*;
use crate::http::{
    catalog_api, drivers_api, events_api, extract::Paging, identity_api, orders_api, routes_api,
    search_api, webhooks_api,
};

pub struct Query;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SearchKind {
    Product,
    Vendor,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SearchSort {
    Relevance,
    Distance,
    PriceAsc,
    PriceDesc,
    Rating,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatusFilter {
    Placed,
    Accepted,
    Ready,
    PickedUp,
    Delivered,
    Rejected,
    Cancelled,
    Failed,
}

/// `GET /v1/search`'s parameters.
#[derive(Serialize)]
struct SearchArgs {
    #[serde(skip_serializing_if = "Option::is_none")]
    q: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<SearchKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lat: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lng: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    radius_km: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    category: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vendor_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vendor_kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    min_price: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_price: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    in_stock: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    open_now: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tags: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sort: Option<SearchSort>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cursor: Option<String>,
}

#[derive(Serialize)]
struct OrderListArgs {
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<OrderStatusFilter>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cursor: Option<String>,
}

#[derive(Serialize)]
struct FeedArgs {
    after: u64,
}

#[derive(Serialize)]
struct NoArgs {}

#[Object]
impl Query {
    /// The caller's account.
    async fn me(&self, ctx: &Context<'_>) -> Result<Account> {
        let c = Caller::of(ctx)?;
        let r = identity_api::me(c.s(), c.principal().gql()?, c.consistency()).await;
        c.answer(r).await
    }

    async fn vendor(&self, ctx: &Context<'_>, id: String) -> Result<Vendor> {
        let c = Caller::of(ctx)?;
        let r = catalog_api::get_vendor(c.s(), c.consistency(), path(id)).await;
        c.answer(r).await
    }

    async fn product(&self, ctx: &Context<'_>, id: String) -> Result<Product> {
        let c = Caller::of(ctx)?;
        let r = catalog_api::get_product(c.s(), c.consistency(), path(id)).await;
        c.answer(r).await
    }

    /// Products and vendors by text, filters and place (see `GET /v1/search`).
    #[allow(clippy::too_many_arguments)]
    #[graphql(complexity = "super::edges::page_cost(limit, child_complexity)")]
    async fn search(
        &self,
        ctx: &Context<'_>,
        q: Option<String>,
        kind: Option<SearchKind>,
        lat: Option<f64>,
        lng: Option<f64>,
        radius_km: Option<f64>,
        category: Option<String>,
        vendor_id: Option<String>,
        vendor_kind: Option<String>,
        min_price: Option<i64>,
        max_price: Option<i64>,
        in_stock: Option<bool>,
        #[graphql(desc = "true: only vendors taking orders now, and their products")]
        open_now: Option<bool>,
        tags: Option<Vec<String>>,
        sort: Option<SearchSort>,
        limit: Option<i32>,
        cursor: Option<String>,
    ) -> Result<SearchPage> {
        let c = Caller::of(ctx)?;
        let args = SearchArgs {
            q,
            kind,
            lat,
            lng,
            radius_km,
            category,
            vendor_id,
            vendor_kind,
            min_price,
            max_price,
            in_stock,
            open_now,
            tags: tags.map(|t| t.join(",")),
            sort,
            limit,
            cursor,
        };
        let r = search_api::search(c.s(), c.consistency(), query(args)).await;
        c.answer(r).await
    }

    /// The customer's cart.
    async fn cart(&self, ctx: &Context<'_>) -> Result<Cart> {
        let c = Caller::of(ctx)?;
        let r = orders_api::get_cart(c.s(), c.principal().gql()?, c.consistency()).await;
        c.answer(r).await
    }

    async fn order(&self, ctx: &Context<'_>, id: String) -> Result<Order> {
        let c = Caller::of(ctx)?;
        let r = orders_api::get_order(c.s(), c.principal().gql()?, c.consistency(), path(id)).await;
        c.answer(r).await
    }

    /// The caller's orders (a vendor: its stores'; ops: all), oldest first (by id).
    #[graphql(complexity = "super::edges::page_cost(limit, child_complexity)")]
    async fn orders(
        &self,
        ctx: &Context<'_>,
        status: Option<OrderStatusFilter>,
        limit: Option<i32>,
        cursor: Option<String>,
    ) -> Result<OrderPage> {
        let c = Caller::of(ctx)?;
        let args = OrderListArgs {
            status,
            limit,
            cursor,
        };
        let r = orders_api::list_orders(c.s(), c.principal().gql()?, c.consistency(), query(args))
            .await;
        c.answer(r).await
    }

    async fn delivery(&self, ctx: &Context<'_>, id: String) -> Result<Delivery> {
        let c = Caller::of(ctx)?;
        let r =
            drivers_api::get_delivery(c.s(), c.principal().gql()?, c.consistency(), path(id)).await;
        c.answer(r).await
    }

    /// The calling driver's profile and standing.
    async fn driver(&self, ctx: &Context<'_>) -> Result<DriverProfile> {
        let c = Caller::of(ctx)?;
        let r = drivers_api::get_me(c.s(), c.principal().gql()?, c.consistency()).await;
        c.answer(r).await
    }

    /// The calling driver's open offers.
    async fn offers(&self, ctx: &Context<'_>) -> Result<Vec<Offer>> {
        let c = Caller::of(ctx)?;
        let r = drivers_api::my_offers(c.s(), c.principal().gql()?, c.consistency(), Paging::Whole)
            .await;
        Ok(c.answer::<OfferList, _>(r).await?.items)
    }

    async fn earnings(&self, ctx: &Context<'_>) -> Result<Earnings> {
        let c = Caller::of(ctx)?;
        let r = drivers_api::earnings(c.s(), c.principal().gql()?, c.consistency()).await;
        c.answer(r).await
    }

    /// Routes the calling driver has been matched to.
    async fn schedule(&self, ctx: &Context<'_>) -> Result<Vec<Route>> {
        let c = Caller::of(ctx)?;
        let r =
            routes_api::schedule(c.s(), c.principal().gql()?, c.consistency(), Paging::Whole).await;
        Ok(c.answer::<RouteList, _>(r).await?.items)
    }

    /// Open routes the calling driver may claim (the long poll is a
    /// subscription-free `GET /v1/routes/available?version=&wait=`).
    async fn available_routes(&self, ctx: &Context<'_>) -> Result<RouteMarket> {
        let c = Caller::of(ctx)?;
        let r = routes_api::available(
            c.s(),
            c.principal().gql()?,
            c.consistency(),
            query(NoArgs {}),
        )
        .await;
        c.answer(r).await
    }

    /// The caller's event feed after a cursor (subscribe to `events` to be
    /// pushed new ones).
    async fn events(&self, ctx: &Context<'_>, #[graphql(default)] after: u64) -> Result<EventPage> {
        let c = Caller::of(ctx)?;
        let r = events_api::feed(
            c.s(),
            c.principal().gql()?,
            c.consistency(),
            query(FeedArgs { after }),
        )
        .await;
        c.answer(r).await
    }

    /// A vendor's webhooks and their delivery status (its owner, ops).
    async fn webhooks(&self, ctx: &Context<'_>, vendor_id: String) -> Result<Vec<Webhook>> {
        let c = Caller::of(ctx)?;
        let r = webhooks_api::list(
            c.s(),
            c.principal().gql()?,
            c.consistency(),
            path(vendor_id),
            Paging::Whole,
        )
        .await;
        Ok(c.answer::<WebhookList, _>(r).await?.items)
    }
}
