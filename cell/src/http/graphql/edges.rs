//! Fields that lead from one object to another: batched through the
//! request's loaders, or answered by the REST handler for that relation.

use async_graphql::{dataloader::DataLoader, ComplexObject, Context, Result};

use super::caller::{gql_error, query, Caller, OrGql};
use super::loaders::{CourierOf, DeliveryOfOrder, Loaders, ProductId, VendorId};
use super::model::*;
use crate::http::{catalog_api, orders_api, problem::ApiError};

/// A page costs its size times what each row selects, capped just over
/// the limit: async-graphql adds sibling costs with a plain `+`, so
/// uncapped nested pages could overflow it before the limit is checked.
pub(super) fn page_cost(limit: Option<i32>, child_complexity: usize) -> usize {
    let rows = limit.map_or(20, |l| l.clamp(1, 1000) as usize);
    rows.saturating_mul(child_complexity.max(1))
        .min(super::MAX_COMPLEXITY + 1)
}

fn loader<'a>(ctx: &'a Context<'_>) -> Result<&'a DataLoader<Loaders>> {
    ctx.data::<DataLoader<Loaders>>()
}

#[derive(serde::Serialize)]
struct PageArgs {
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cursor: Option<String>,
}

#[ComplexObject]
impl Vendor {
    /// The vendor's products, as `GET /v1/vendors/{id}/products` pages them.
    #[graphql(complexity = "page_cost(limit, child_complexity)")]
    async fn products(
        &self,
        ctx: &Context<'_>,
        limit: Option<i32>,
        cursor: Option<String>,
    ) -> Result<ProductPage> {
        let c = Caller::of(ctx)?;
        let page = catalog_api::menu_request(&c.state, &self.id, query(PageArgs { limit, cursor }))
            .gql()?;
        loader(ctx)?
            .load_one(page)
            .await?
            .ok_or_else(|| gql_error(ApiError::not_found("no such vendor")))
    }
}

#[ComplexObject]
impl Product {
    async fn vendor(&self, ctx: &Context<'_>) -> Result<Option<Vendor>> {
        loader(ctx)?
            .load_one(VendorId(self.vendor_id.clone()))
            .await
    }
}

#[ComplexObject]
impl CartItem {
    async fn product(&self, ctx: &Context<'_>) -> Result<Option<Product>> {
        loader(ctx)?
            .load_one(ProductId(self.product_id.clone()))
            .await
    }
}

#[ComplexObject]
impl Cart {
    async fn vendor(&self, ctx: &Context<'_>) -> Result<Option<Vendor>> {
        match &self.vendor_id {
            Some(id) => loader(ctx)?.load_one(VendorId(id.clone())).await,
            None => Ok(None),
        }
    }

    /// Sum of the lines at today's prices (the quote adds the fee).
    async fn subtotal(&self, ctx: &Context<'_>) -> Result<Option<Money>> {
        let ids = self.items.iter().map(|i| ProductId(i.product_id.clone()));
        let products = loader(ctx)?.load_many(ids).await?;
        let mut total: Option<Money> = None;
        for item in &self.items {
            let Some(p) = products.get(&ProductId(item.product_id.clone())) else {
                continue;
            };
            let t = total.get_or_insert(Money {
                amount: 0,
                currency: p.price.currency.clone(),
            });
            t.amount += p.price.amount * i64::from(item.quantity);
        }
        Ok(total)
    }
}

#[ComplexObject]
impl Quote {
    async fn vendor(&self, ctx: &Context<'_>) -> Result<Option<Vendor>> {
        loader(ctx)?
            .load_one(VendorId(self.vendor_id.clone()))
            .await
    }

    /// The caller's cart, which this quote prices (the cart screen in one
    /// round trip: `createQuote { fee vendor { … } cart { items { product { … } } } }`).
    async fn cart(&self, ctx: &Context<'_>) -> Result<Cart> {
        let c = Caller::of(ctx)?;
        let r = orders_api::get_cart(c.s(), c.principal().gql()?, c.consistency()).await;
        c.answer(r).await
    }
}

#[ComplexObject]
impl OrderItem {
    async fn product(&self, ctx: &Context<'_>) -> Result<Option<Product>> {
        loader(ctx)?
            .load_one(ProductId(self.product_id.clone()))
            .await
    }
}

#[ComplexObject]
impl Order {
    async fn vendor(&self, ctx: &Context<'_>) -> Result<Option<Vendor>> {
        loader(ctx)?
            .load_one(VendorId(self.vendor_id.clone()))
            .await
    }

    /// The order's delivery, where the caller may see it.
    async fn delivery(&self, ctx: &Context<'_>) -> Result<Option<Delivery>> {
        loader(ctx)?
            .load_one(DeliveryOfOrder(self.id.clone()))
            .await
    }
}

#[ComplexObject]
impl Delivery {
    /// Who is bringing it (null until a driver accepts).
    async fn driver(&self, ctx: &Context<'_>) -> Result<Option<Courier>> {
        if self.driver_id.is_none() {
            return Ok(None);
        }
        loader(ctx)?.load_one(CourierOf(self.id.clone())).await
    }
}
