//! Cell info, health, readiness and metrics.

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use openraft::ServerState;
use serde_json::json;

use super::{
    openapi::*,
    problem::{ApiError, ApiResult},
    AppState,
};

#[utoipa::path(
    get,
    path = "/v1/cell",
    tag = "cell",
    responses(
        (status = 200, description = "this cell", body = CellInfo),
        (status = "4XX", description = "problem+json", body = Problem),
    ),
)]
pub(super) async fn cell_info(State(s): State<AppState>) -> Json<serde_json::Value> {
    let leader = s.node.leader().map(|(id, _)| id);
    Json(json!({
        "cell": s.cfg.cell,
        "region": s.cfg.region,
        "currency": s.cfg.currency,
        "node_id": s.node.id(),
        "leader_id": leader,
        // What this node's build applies, and what the whole cell is known
        // to (newer commands wait for every node's upgrade).
        "versions": {
            "build": env!("CARGO_PKG_VERSION"),
            "commands": crate::command_version::CURRENT,
            "cell": s.node.cluster_version().ok(),
        },
    }))
}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "cell",
    responses(
        (status = 200, description = "the process is up"),
        (status = "4XX", description = "problem+json", body = Problem),
    ),
)]
pub(super) async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Ready = a member of a cluster that has a leader, and caught up with
/// what this node knows to be committed.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "cell",
    responses(
        (status = 200, description = "member of a cluster with a leader, caught up"),
        (status = 503, description = "not ready", body = Problem),
        (status = "4XX", description = "problem+json", body = Problem),
    ),
)]
pub(super) async fn readyz(State(s): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    let m = s.node.metrics();
    let not_ready = |why: &str| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            why.to_string(),
        )
        .retry_after(1)
    };
    if m.running_state.is_err() {
        return Err(not_ready("raft has stopped"));
    }
    let member = m
        .membership_config
        .membership()
        .get_node(&s.node.id())
        .is_some();
    if !member {
        return Err(not_ready("not a member of any cluster yet"));
    }
    if m.current_leader.is_none() {
        return Err(not_ready("no known leader"));
    }
    let Ok(committed) = s.node.committed_index().await else {
        return Err(not_ready("raft has stopped"));
    };
    let committed = committed.unwrap_or(0);
    let applied = s.node.applied_index();
    if committed.saturating_sub(applied) > 1000 {
        return Err(not_ready("catching up with the log"));
    }
    let mut ready = json!({
        "status": "ready",
        "role": role_name(m.state),
        "applied": applied,
    });
    // The leader names the cell's voters, so routers that health-check it
    // learn of nodes added after they were configured.
    if m.state == ServerState::Leader {
        let membership = m.membership_config.membership();
        let voters: Vec<&str> = membership
            .voter_ids()
            .filter_map(|id| membership.get_node(&id))
            .map(|n| n.api_addr.as_str())
            .collect();
        ready["voters"] = json!(voters);
    }
    Ok(Json(ready))
}

pub fn role_name(s: ServerState) -> &'static str {
    match s {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "cell",
    responses(
        (status = 200, description = "Prometheus text format", content_type = "application/openmetrics-text"),
        (status = "4XX", description = "problem+json", body = Problem),
    ),
)]
pub(super) async fn metrics(State(s): State<AppState>) -> Response {
    let m = s.node.metrics();
    let mx = &s.metrics;
    let committed = s.node.committed_index().await.ok().flatten().unwrap_or(0) as i64;
    let applied = s.node.applied_index() as i64;
    mx.raft_term.set(m.current_term as i64);
    mx.raft_leader.set(m.current_leader.unwrap_or(0) as i64);
    mx.raft_is_leader
        .set((m.state == ServerState::Leader) as i64);
    mx.raft_last_log_index
        .set(m.last_log_index.unwrap_or(0) as i64);
    mx.raft_committed_index.set(committed);
    mx.raft_applied_index.set(applied);
    mx.raft_apply_lag.set((committed - applied).max(0));
    let stats = s.node.apply_stats();
    for (counter, total) in [
        (&mx.raft_apply_transactions, stats.transactions()),
        (&mx.raft_applied_commands, stats.commands()),
    ] {
        // fetch_max: concurrent scrapes cannot push it past the total.
        counter
            .inner()
            .fetch_max(total, std::sync::atomic::Ordering::Relaxed);
    }
    mx.raft_snapshot_index
        .set(m.snapshot.map(|l| l.index).unwrap_or(0) as i64);
    mx.raft_voters
        .set(m.membership_config.membership().voter_ids().count() as i64);
    mx.command_version_build
        .set(crate::command_version::CURRENT as i64);
    if let Ok(v) = s.node.cluster_version() {
        mx.command_version_cell.set(v as i64);
    }
    if let Some(cache) = s.read_models.cache() {
        let c = cache.stats();
        mx.cache_hits.set(c.hits as i64);
        mx.cache_misses.set(c.misses as i64);
        mx.cache_memory_bytes.set(c.memory_bytes as i64);
        mx.cache_entries.set(c.memory_entries as i64);
    }
    mx.search_docs.set(s.search.doc_count() as i64);
    let search_dir = s.cfg.data_dir.join("search");
    let index_bytes: u64 = std::fs::read_dir(&search_dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    mx.search_index_bytes.set(index_bytes as i64);
    if let Ok(md) = std::fs::metadata(s.cfg.raft_dir().join("state.redb")) {
        mx.state_bytes.set(md.len() as f64);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        mx.render(),
    )
        .into_response()
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}
