//! Raft replication for a marketcell node, on openraft 0.9 (storage-v2).
//!
//! - [`log_store`]: the Raft log — entries in append-only segment files
//!   (`segments`), vote and purge point in `log.redb` — written by one
//!   writer thread that group-commits appends;
//! - [`state_machine`]: `state.redb`, generic over an [`Application`], snapshots;
//! - [`network`] / [`peer_api`]: the peer port (HTTP/2, bincode bodies, optional mTLS);
//! - [`node`]: a running node — writes with leader forwarding, linearizable
//!   and session reads, membership changes;
//! - [`versions`]: command versions — new commands wait until every node
//!   runs a build that applies them;
//!
//! This crate knows nothing about the marketplace or the public HTTP API.

// openraft's storage traits return its `StorageError` (224 bytes); our
// helpers return the same type rather than boxing and unboxing it.
#![allow(clippy::result_large_err)]

mod batcher;
mod error;
pub mod log_store;
pub mod network;
pub mod node;
pub mod peer_api;
pub mod restore;
mod segments;
pub mod state_machine;
pub mod types;
pub mod versions;
mod wire;

pub use error::RaftError;
pub use node::{NodeConfig, RaftNode, Written};
pub use peer_api::peer_router;
pub use state_machine::{Application, ApplyContext, ApplyStats, StateMachineStore};
pub use types::{NodeId, NodeInfo, RaftMetrics};
