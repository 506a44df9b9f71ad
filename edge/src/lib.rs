//! What every entry point of marketcell enforces before a request reaches
//! the domain: access-token verification (cells issue and verify, routers
//! verify against the cells' published keys), token-bucket rate limits, and
//! TLS with the accept loop every listener uses (cell API, peer port, router).
//!
//! It knows nothing about storage, Raft or the domain, so the router can use
//! it without pulling in a cell.

pub mod fd_limit;
pub mod linger;
pub mod ports;
pub mod rate_limit;
pub mod tls;
pub mod token;
