//! Batched loading of the objects nested fields point at: every key a
//! level of the query asks for is collected (async-graphql's DataLoader)
//! and loaded in one go — vendors and products from the read cache with the
//! misses in a single redb read, deliveries and their drivers in a single
//! redb read — so an order list with its vendors, products and deliveries
//! costs one read per kind, not one per row. Loaders live for one request.

use std::collections::HashMap;

use async_graphql::dataloader::Loader;

use super::caller::{gql_error, Caller};
use super::model::{Courier, Delivery, Product, ProductPage, Vendor};
use crate::http::{
    catalog_api::{menu_pages, public_views, MenuPage, Public},
    drivers_api::{couriers, deliveries_of_orders},
    kv_api::ensure_fresh,
    problem::ApiError,
};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VendorId(pub String);
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProductId(pub String);
/// The delivery of an order, by the order's id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeliveryOfOrder(pub String);
/// The driver of a delivery, by the delivery's id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CourierOf(pub String);

pub struct Loaders {
    caller: Caller,
}

impl Loaders {
    pub fn new(caller: Caller) -> Self {
        Loaders { caller }
    }

    /// Waits until this node has applied what the request wrote so far.
    async fn fresh(&self) -> Result<(), async_graphql::Error> {
        ensure_fresh(&self.caller.state, self.caller.consistency())
            .await
            .map(|_| ())
            .map_err(gql_error)
    }

    /// A read of this node's state, once it is fresh enough.
    async fn fresh_read(&self) -> Result<storage::ReadTxn, async_graphql::Error> {
        self.fresh().await?;
        self.caller
            .state
            .node
            .store()
            .read()
            .map_err(|e| gql_error(e.into()))
    }

    async fn public<K, V>(
        &self,
        kind: Public,
        keys: &[K],
        id: impl Fn(&K) -> &String,
    ) -> Result<HashMap<K, V>, async_graphql::Error>
    where
        K: Clone + Eq + std::hash::Hash,
        V: serde::de::DeserializeOwned,
    {
        self.fresh().await?;
        let ids: Vec<String> = keys.iter().map(|k| id(k).clone()).collect();
        let mut views = public_views(&self.caller.state, kind, &ids)
            .await
            .map_err(gql_error)?;
        let mut out = HashMap::new();
        for k in keys {
            if let Some(v) = views.remove(id(k)) {
                out.insert(k.clone(), from_view(v)?);
            }
        }
        Ok(out)
    }

    /// Runs `f` over one read transaction of this node's state, as the
    /// caller (whose principal the visibility rules judge).
    async fn read_as<K, V>(
        &self,
        keys: &[K],
        id: impl Fn(&K) -> &String,
        f: impl FnOnce(
            &storage::ReadTxn,
            &crate::http::extract::Principal,
            &[String],
        ) -> Result<HashMap<String, serde_json::Value>, ApiError>,
    ) -> Result<HashMap<K, V>, async_graphql::Error>
    where
        K: Clone + Eq + std::hash::Hash,
        V: serde::de::DeserializeOwned,
    {
        let Some(p) = &self.caller.principal else {
            return Ok(HashMap::new());
        };
        let read = self.fresh_read().await?;
        let ids: Vec<String> = keys.iter().map(|k| id(k).clone()).collect();
        let mut views = f(&read, p, &ids).map_err(gql_error)?;
        let mut out = HashMap::new();
        for k in keys {
            if let Some(v) = views.remove(id(k)) {
                out.insert(k.clone(), from_view(v)?);
            }
        }
        Ok(out)
    }
}

fn from_view<V: serde::de::DeserializeOwned>(v: serde_json::Value) -> async_graphql::Result<V> {
    serde_json::from_value(v).map_err(|e| {
        gql_error(ApiError::internal(format!(
            "graphql: a view did not fit: {e}"
        )))
    })
}

impl Loader<VendorId> for Loaders {
    type Value = Vendor;
    type Error = async_graphql::Error;

    async fn load(&self, keys: &[VendorId]) -> Result<HashMap<VendorId, Vendor>, Self::Error> {
        self.public(Public::Vendor, keys, |k| &k.0).await
    }
}

impl Loader<ProductId> for Loaders {
    type Value = Product;
    type Error = async_graphql::Error;

    async fn load(&self, keys: &[ProductId]) -> Result<HashMap<ProductId, Product>, Self::Error> {
        self.public(Public::Product, keys, |k| &k.0).await
    }
}

/// Pages of vendors' menus (`Vendor.products` under a list of vendors).
impl Loader<MenuPage> for Loaders {
    type Value = ProductPage;
    type Error = async_graphql::Error;

    async fn load(&self, keys: &[MenuPage]) -> Result<HashMap<MenuPage, ProductPage>, Self::Error> {
        self.fresh().await?;
        let pages = menu_pages(&self.caller.state, keys)
            .await
            .map_err(gql_error)?;
        let mut out = HashMap::new();
        // A vendor that does not exist is left out: `load_one` answers it
        // as missing.
        for (page, bytes) in keys.iter().zip(pages) {
            if let Some(bytes) = bytes {
                let v: serde_json::Value = serde_json::from_slice(&bytes)?;
                out.insert(page.clone(), from_view(v)?);
            }
        }
        Ok(out)
    }
}

impl Loader<DeliveryOfOrder> for Loaders {
    type Value = Delivery;
    type Error = async_graphql::Error;

    async fn load(
        &self,
        keys: &[DeliveryOfOrder],
    ) -> Result<HashMap<DeliveryOfOrder, Delivery>, Self::Error> {
        self.read_as(keys, |k| &k.0, deliveries_of_orders).await
    }
}

impl Loader<CourierOf> for Loaders {
    type Value = Courier;
    type Error = async_graphql::Error;

    async fn load(&self, keys: &[CourierOf]) -> Result<HashMap<CourierOf, Courier>, Self::Error> {
        self.read_as(keys, |k| &k.0, couriers).await
    }
}
