//! Full-text, faceted and geo search over a cell's products and vendors.
//!
//! One tantivy index per node, fed with [`Change`]s after they are committed
//! to the state machine. Every [`SearchIndex::apply`] commits once and
//! records the applied log index in the commit payload, so a restarted node
//! knows where to resume ([`SearchIndex::indexed_index`]).

mod cache;
mod error;
mod exec;
mod index;
mod query;
mod schema;
mod snippet;
mod workers;

pub use error::SearchError;
pub use exec::TRACK_TOTAL_HITS;
pub use index::SearchIndex;
pub use query::{
    haversine_km, Hit, Kind, SearchQuery, SearchResults, Sort, MAX_LIMIT, MAX_QUERY_CHARS,
    MAX_QUERY_TERMS,
};
pub use schema::{Change, ProductDoc, VendorDoc};

#[cfg(test)]
mod tests;
