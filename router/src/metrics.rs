//! Prometheus metrics of the router.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The cell the request went to, or `router` for the router's own
    /// answers.
    pub cell: String,
    /// `2xx`, `3xx`, `4xx` or `5xx`.
    pub class: &'static str,
}

pub fn status_class(status: u16) -> &'static str {
    match status {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CellLabels {
    pub cell: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    pub cell: String,
    /// connect | timeout | transport
    pub kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    pub cell: String,
    pub node: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

pub struct Metrics {
    pub registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<CellLabels, Histogram>,
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    pub retries: Family<CellLabels, Counter>,
    pub ejections: Family<CellLabels, Counter>,
    pub node_healthy: Family<NodeLabels, Gauge>,
    pub node_leader: Family<NodeLabels, Gauge>,
    pub in_flight: Family<CellLabels, Gauge>,
    pub rejected: Family<ReasonLabels, Counter>,
}

/// One cell's metric handles, looked up once (label lookups on every
/// request would cost more than the counting).
#[derive(Debug, Clone)]
pub struct CellMetrics {
    pub latency: Histogram,
    pub in_flight: Gauge,
    pub retries: Counter,
    pub ejections: Counter,
    /// By status class, indexed 2xx, 3xx, 4xx, 5xx.
    requests: [Counter; 4],
}

impl CellMetrics {
    pub fn new(m: &Metrics, cell: &str) -> Self {
        let labels = CellLabels {
            cell: cell.to_string(),
        };
        let requests = ["2xx", "3xx", "4xx", "5xx"].map(|class| {
            m.requests
                .get_or_create(&RequestLabels {
                    cell: cell.to_string(),
                    class,
                })
                .clone()
        });
        CellMetrics {
            latency: m.latency.get_or_create(&labels).clone(),
            in_flight: m.in_flight.get_or_create(&labels).clone(),
            retries: m.retries.get_or_create(&labels).clone(),
            ejections: m.ejections.get_or_create(&labels).clone(),
            requests,
        }
    }

    pub fn answered(&self, status: u16) {
        let i = match status {
            200..=299 => 0,
            300..=399 => 1,
            400..=499 => 2,
            _ => 3,
        };
        self.requests[i].inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("router");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<CellLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0,
            ])
        });
        let upstream_errors = Family::<UpstreamErrorLabels, Counter>::default();
        let retries = Family::<CellLabels, Counter>::default();
        let ejections = Family::<CellLabels, Counter>::default();
        let node_healthy = Family::<NodeLabels, Gauge>::default();
        let node_leader = Family::<NodeLabels, Gauge>::default();
        let in_flight = Family::<CellLabels, Gauge>::default();
        let rejected = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by cell and status",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to response headers, by cell",
            latency.clone(),
        );
        registry.register(
            "upstream_errors",
            "Failed attempts to reach a cell node",
            upstream_errors.clone(),
        );
        registry.register("retries", "Attempts beyond the first", retries.clone());
        registry.register(
            "ejections",
            "Nodes taken out of rotation after repeated failures",
            ejections.clone(),
        );
        registry.register(
            "node_healthy",
            "1 when the node passes health checks",
            node_healthy.clone(),
        );
        registry.register(
            "node_leader",
            "1 when the node reports being its cell's leader",
            node_leader.clone(),
        );
        registry.register(
            "in_flight",
            "Requests waiting for a cell's answer",
            in_flight.clone(),
        );
        registry.register(
            "rejected",
            "Requests the router refused itself, by reason",
            rejected.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            upstream_errors,
            retries,
            ejections,
            node_healthy,
            node_leader,
            in_flight,
            rejected,
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
