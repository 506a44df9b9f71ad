//! Storage for a marketcell node: a thin, typed layer over redb, the value
//! codec, consistent snapshot export/import, and the foyer hybrid read cache.
//!
//! This crate knows nothing about Raft, HTTP or the marketplace: it stores
//! bytes under typed tables and moves whole databases around as streams.

mod cache;
mod codec;
mod db;
mod error;
mod keys;
mod snapshot;

pub use cache::{CacheConfig, CacheStats, ReadCache};
pub use codec::{decode, encode, SCHEMA_VERSION};
pub use db::{Durability, ReadTxn, Store, Table, WriteTxn};
pub use error::StorageError;
pub use keys::{prefix_end, within};
pub use snapshot::{export_snapshot, import_snapshot, verify_snapshot, SnapshotSummary};

pub type Result<T, E = StorageError> = std::result::Result<T, E>;
