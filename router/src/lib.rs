//! The global router (DESIGN.md §10): a stateless front for many cells. It
//! knows the regions and their cells' nodes, pins each request to its home
//! cell, balances over healthy nodes, retries what is safe to retry, and
//! answers for a failed cell quickly without touching other cells' traffic.
//!
//! Modules: `config` (flags/env/file), `directory` (regions, persisted),
//! `upstream` (per-cell pools: health, leader, ejection, retry budget, token
//! keys), `pin` (which cell a request belongs to), `proxy` (forwarding),
//! `http1` (the plain HTTP/1.1 fast path), `pipeline` (its shared,
//! pipelined upstream connections), `multiplex` (long polls' shared
//! HTTP/2 connections), `sticky` (which node a client's search keeps to),
//! `admin` (own endpoints), `metrics`, `problem`, `state`, `server`.

pub mod admin;
pub mod affinity;
pub mod config;
pub mod directory;
pub mod error;
pub mod http1;
pub mod local;
pub mod loops;
pub mod metrics;
pub mod multiplex;
pub mod pin;
pub mod pipeline;
pub mod problem;
pub mod proxy;
pub mod server;
pub mod state;
pub mod sticky;
pub mod upstream;

pub use error::RouterError;
