//! Prometheus metrics of a node.

use std::sync::atomic::{AtomicI64, AtomicU64};

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: String,
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub http_duration: Family<HttpLabels, Histogram>,
    pub shed: Family<ReasonLabels, Counter>,
    /// Webhook POSTs by the leader, by outcome (`delivered`, `failed`).
    pub webhook_posts: Family<OutcomeLabels, Counter>,
    /// Events acknowledged by vendors' endpoints.
    pub webhook_events: Counter,
    pub raft_term: Gauge<i64, AtomicI64>,
    pub raft_leader: Gauge<i64, AtomicI64>,
    pub raft_is_leader: Gauge<i64, AtomicI64>,
    pub raft_last_log_index: Gauge<i64, AtomicI64>,
    pub raft_committed_index: Gauge<i64, AtomicI64>,
    pub raft_applied_index: Gauge<i64, AtomicI64>,
    pub raft_apply_lag: Gauge<i64, AtomicI64>,
    /// Totals kept by the raft crate, copied in at each scrape.
    pub raft_apply_transactions: Counter,
    pub raft_applied_commands: Counter,
    pub raft_snapshot_index: Gauge<i64, AtomicI64>,
    pub raft_voters: Gauge<i64, AtomicI64>,
    /// What this build applies, and what the whole cell is known to.
    pub command_version_build: Gauge<i64, AtomicI64>,
    pub command_version_cell: Gauge<i64, AtomicI64>,
    pub cache_hits: Gauge<i64, AtomicI64>,
    pub cache_misses: Gauge<i64, AtomicI64>,
    pub cache_memory_bytes: Gauge<i64, AtomicI64>,
    pub cache_entries: Gauge<i64, AtomicI64>,
    pub state_bytes: Gauge<f64, AtomicU64>,
    pub search_seconds: Histogram,
    /// Leader only: from when a delivery could be dispatched to its first
    /// offer.
    pub dispatch_first_offer_seconds: Histogram,
    /// Leader only: a route window's close, matching included, until
    /// applied here.
    pub route_match_seconds: Histogram,
    pub search_docs: Gauge<i64, AtomicI64>,
    pub search_index_bytes: Gauge<i64, AtomicI64>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let http_duration = Family::<HttpLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                5.0, 10.0,
            ])
        });
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route, method and status",
            http_duration.clone(),
        );
        let shed = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "http_requests_shed",
            "Requests refused by the edge (overload, timeout)",
            shed.clone(),
        );
        let webhook_posts = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "webhook_posts",
            "Webhook POSTs sent by this node as leader, by outcome",
            webhook_posts.clone(),
        );
        let webhook_events: Counter = Counter::default();
        registry.register(
            "webhook_events_delivered",
            "Events acknowledged (2xx) by vendors' webhook endpoints",
            webhook_events.clone(),
        );
        macro_rules! gauge {
            ($name:literal, $help:literal) => {{
                let g: Gauge<i64, AtomicI64> = Gauge::default();
                registry.register($name, $help, g.clone());
                g
            }};
        }
        let raft_term = gauge!("raft_term", "Current Raft term");
        let raft_leader = gauge!("raft_leader_id", "Id of the known leader (0 = unknown)");
        let raft_is_leader = gauge!("raft_is_leader", "1 if this node is the leader");
        let raft_last_log_index = gauge!("raft_last_log_index", "Last log index on this node");
        let raft_committed_index = gauge!(
            "raft_committed_index",
            "Highest committed log index known here"
        );
        let raft_applied_index = gauge!(
            "raft_applied_index",
            "Last log index applied to the state machine"
        );
        let command_version_build = gauge!(
            "command_version_build",
            "Newest command version this node's build applies"
        );
        let command_version_cell = gauge!(
            "command_version_cell",
            "Command version every node of the cell is known to apply (below the build's: an upgrade is unfinished)"
        );
        let raft_apply_lag = gauge!("raft_apply_lag", "Committed minus applied entries");
        let raft_apply_transactions = Counter::default();
        registry.register(
            "raft_apply_transactions",
            "State-machine transactions committed by apply since start",
            raft_apply_transactions.clone(),
        );
        let raft_applied_commands = Counter::default();
        registry.register(
            "raft_applied_commands",
            "Commands applied since start (per transaction: how well writes batch)",
            raft_applied_commands.clone(),
        );
        let raft_snapshot_index = gauge!(
            "raft_snapshot_index",
            "Last log index covered by the current snapshot"
        );
        let raft_voters = gauge!("raft_voters", "Number of voting members");
        let cache_hits = gauge!("cache_hits", "Read-cache hits since start");
        let cache_misses = gauge!("cache_misses", "Read-cache misses since start");
        let cache_memory_bytes = gauge!(
            "cache_memory_bytes",
            "Read-cache memory tier usage in bytes"
        );
        let cache_entries = gauge!("cache_entries", "Entries in the read-cache memory tier");
        macro_rules! histogram {
            ($name:literal, $help:literal, $buckets:expr) => {{
                let h = Histogram::new($buckets);
                registry.register($name, $help, h.clone());
                h
            }};
        }
        let search_seconds = histogram!(
            "search_query_seconds",
            "Time to run a search query",
            [0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5]
        );
        let dispatch_first_offer_seconds = histogram!(
            "dispatch_first_offer_seconds",
            "From a delivery becoming dispatchable to its first offer committed (leader)",
            [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
        );
        let route_match_seconds = histogram!(
            "route_match_seconds",
            "A route window's close and matching, committed and applied (leader)",
            [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]
        );
        let search_docs = gauge!("search_documents", "Documents in this node's search index");
        let search_index_bytes = gauge!(
            "search_index_bytes",
            "Size of this node's search index on disk"
        );
        let state_bytes: Gauge<f64, AtomicU64> = Gauge::default();
        registry.register(
            "state_file_bytes",
            "Size of state.redb on disk",
            state_bytes.clone(),
        );
        Self {
            registry,
            http_duration,
            shed,
            webhook_posts,
            webhook_events,
            raft_term,
            raft_leader,
            command_version_build,
            command_version_cell,
            raft_is_leader,
            raft_last_log_index,
            raft_committed_index,
            raft_applied_index,
            raft_apply_lag,
            raft_apply_transactions,
            raft_applied_commands,
            raft_snapshot_index,
            raft_voters,
            cache_hits,
            cache_misses,
            cache_memory_bytes,
            cache_entries,
            state_bytes,
            search_seconds,
            dispatch_first_offer_seconds,
            route_match_seconds,
            search_docs,
            search_index_bytes,
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
