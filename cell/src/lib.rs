//! A marketcell node: the replicated application, its HTTP edge and the
//! assembly of a running node.

pub mod app;
pub mod catalog;
pub mod certs;
pub mod command_version;
pub mod config;
pub mod dispatch;
pub mod driver_grid;
pub mod drivers;
pub mod events;
pub mod feed_waiters;
pub mod hours;
pub mod http;
pub mod identity;
pub mod kv;
pub mod ledger;
pub mod local;
pub mod metrics;
pub mod orders;
pub mod outbound;
pub mod quote_token;
pub mod ratings;
pub mod read_models;
pub mod route_board;
pub mod routes;
pub mod sealed;
pub mod search_service;
pub mod server;
pub mod webhooks;
