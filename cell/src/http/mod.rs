//! The HTTP edge of a node: public `/v1`, `/admin`, health and metrics.

mod admin_api;
mod catalog_api;
mod drivers_api;
pub mod events_api;
mod extract;
pub mod graphql;
pub mod identity_api;
mod info_api;
mod kv_api;
mod middleware;
pub mod openapi;
pub mod orders_api;
pub mod problem;
mod routes_api;
mod search_api;
mod webhooks_api;

use edge::token::KeySet;
use std::{sync::Arc, time::Duration};

use axum::{extract::DefaultBodyLimit, middleware::from_fn_with_state, routing::get, Router};
use raft::RaftNode;
use tokio::sync::Semaphore;

pub use extract::token_hash;
pub use middleware::DEFAULT_TIMEOUT;

use crate::{app::CellApp, config::CellConfig, metrics::Metrics, read_models::ReadModels};

/// Largest request body accepted anywhere on the public API.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Everything a handler may need, behind one `Arc`: axum clones the state
/// for every middleware and handler a request passes, and a struct of a
/// dozen `Arc`s cost a dozen contended reference-count updates per clone
/// (~5% of a cached read's CPU in a profile).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] shares.
pub struct Shared {
    pub node: Arc<RaftNode<CellApp>>,
    pub app: Arc<CellApp>,
    pub cfg: Arc<CellConfig>,
    pub ops_token_hash: [u8; 32],
    /// Access-token signing and verification keys.
    pub keys: Arc<KeySet>,
    pub metrics: Arc<Metrics>,
    pub read_models: Arc<ReadModels>,
    pub search: Arc<search::SearchIndex>,
    /// Lets a search wait until the index holds a write.
    pub index_feed: Arc<crate::search_service::IndexFeed>,
    pub inflight: Arc<Semaphore>,
    /// Waiting long polls, limited separately: they hold no work while
    /// they wait, so they must not crowd out real requests.
    pub long_polls: Arc<Semaphore>,
    pub limiter: Arc<edge::rate_limit::RateLimiter>,
    /// Access tokens this node already verified.
    pub verified: Arc<extract::VerifiedTokens>,
    /// Location pings and, on the leader, on-demand dispatch.
    pub dispatch: Arc<crate::dispatch::Dispatcher>,
    pub request_timeout: Duration,
    pub tls: bool,
    /// The GraphQL schema (built once; cheap to clone).
    pub graphql: graphql::CellSchema,
    /// Vendors taking no orders this minute (`open_now` searches).
    pub closed_now: crate::catalog::ClosedNow,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(info_api::healthz))
        .route("/readyz", get(info_api::readyz))
        .route("/metrics", get(info_api::metrics))
        .route("/v1/cell", get(info_api::cell_info))
        .merge(kv_api::routes())
        .merge(identity_api::routes())
        .merge(catalog_api::routes())
        .merge(orders_api::routes())
        .merge(drivers_api::routes())
        .merge(webhooks_api::routes())
        .merge(routes_api::routes())
        .merge(events_api::routes())
        .merge(openapi::routes())
        .merge(search_api::routes())
        .merge(graphql::routes())
        .merge(admin_api::routes())
        .fallback(info_api::not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(from_fn_with_state(state.clone(), middleware::edge))
        .with_state(state)
}
