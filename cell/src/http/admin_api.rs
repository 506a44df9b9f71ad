//! `/admin`: cluster membership, snapshots and backups (ops only).

use std::collections::{BTreeMap, BTreeSet};

use axum::{
    body::{Body, Bytes},
    extract::{Path, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::{delete, get, post},
    Json, Router,
};
use raft::NodeInfo;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc;

use super::{
    extract::{Ops, StrictJson},
    info_api::role_name,
    openapi::*,
    problem::{ApiError, ApiResult},
    AppState,
};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/cluster", get(cluster))
        .route("/admin/cluster/versions", get(versions))
        .route("/admin/cluster/init", post(init))
        .route("/admin/cluster/nodes", post(add_node))
        .route("/admin/cluster/nodes/{id}", delete(remove_node))
        .route("/admin/cluster/membership", post(membership))
        .route("/admin/snapshot", post(snapshot))
        .route("/admin/backup", get(backup))
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    pub id: u64,
    pub api_addr: String,
    pub peer_addr: String,
}

impl NodeSpec {
    fn validate(&self) -> ApiResult<NodeInfo> {
        if self.id == 0 {
            return Err(ApiError::validation("node id must be positive"));
        }
        for (name, addr) in [("api_addr", &self.api_addr), ("peer_addr", &self.peer_addr)] {
            let ok = !addr.is_empty()
                && addr.len() <= 255
                && addr.rsplit_once(':').is_some_and(|(host, port)| {
                    !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
                })
                && !addr.contains('/')
                && !addr.chars().any(char::is_whitespace);
            if !ok {
                return Err(ApiError::validation(format!(
                    "{name} must be host:port, got {addr:?}"
                )));
            }
        }
        Ok(NodeInfo {
            api_addr: self.api_addr.clone(),
            peer_addr: self.peer_addr.clone(),
        })
    }
}

#[utoipa::path(
    get,
    path = "/admin/cluster",
    tag = "admin",
    responses(
        (status = 200, description = "this node's view of the cluster", body = ClusterStatus),
        (status = "4XX", description = "problem+json", body = Problem),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn cluster(State(s): State<AppState>, _ops: Ops) -> Json<serde_json::Value> {
    let m = s.node.metrics();
    let membership = m.membership_config.membership();
    let voters: Vec<u64> = membership.voter_ids().collect();
    let learners: Vec<u64> = membership.learner_ids().collect();
    let nodes: BTreeMap<String, serde_json::Value> = membership
        .nodes()
        .map(|(id, n)| {
            (
                id.to_string(),
                json!({"api_addr": n.api_addr, "peer_addr": n.peer_addr}),
            )
        })
        .collect();
    let committed = s.node.committed_index().await.ok().flatten();
    Json(json!({
        "cell": s.cfg.cell,
        "node_id": s.node.id(),
        "role": role_name(m.state),
        "leader": m.current_leader,
        "term": m.current_term,
        "voters": voters,
        "learners": learners,
        "nodes": nodes,
        "last_log_index": m.last_log_index.unwrap_or(0),
        "committed": committed.unwrap_or(0),
        "applied": s.node.applied_index(),
        "snapshot_index": m.snapshot.map(|l| l.index).unwrap_or(0),
        "purged_index": m.purged.map(|l| l.index),
        "command_version": s.node.cluster_version().ok(),
    }))
}

/// Asks every member for its build's command version (over the peer port),
/// so an operator sees which nodes an upgrade still waits for.
#[utoipa::path(
    get,
    path = "/admin/cluster/versions",
    tag = "admin",
    responses(
        (status = 200, description = "the cell's recorded command version and each member's", body = ClusterVersions),
        (status = "4XX", description = "problem+json", body = Problem),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn versions(
    State(s): State<AppState>,
    _ops: Ops,
) -> ApiResult<Json<serde_json::Value>> {
    let cell = s.node.cluster_version()?;
    let nodes: BTreeMap<String, serde_json::Value> = s
        .node
        .member_versions()
        .await
        .into_iter()
        .map(|(id, v)| {
            let v = match v {
                Ok(v) => json!({"version": v}),
                Err(e) => json!({"error": e}),
            };
            (id.to_string(), v)
        })
        .collect();
    Ok(Json(json!({"cell": cell, "nodes": nodes})))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct InitRequest {
    #[serde(default)]
    nodes: Vec<NodeSpec>,
}

#[utoipa::path(
    post,
    path = "/admin/cluster/init",
    tag = "admin",
    request_body(content = InitRequest, description = "optional: other initial voters"),
    responses(
        (status = 200, description = "initialised"),
        (status = 409, description = "already in a cluster", body = Problem),
        (status = "4XX", description = "problem+json", body = Problem),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn init(
    State(s): State<AppState>,
    _ops: Ops,
    body: Bytes,
) -> ApiResult<Json<serde_json::Value>> {
    let req: InitRequest = if body.is_empty() {
        InitRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::validation(format!("invalid JSON body: {e}")))?
    };
    let mut nodes = BTreeMap::new();
    for spec in &req.nodes {
        if nodes.insert(spec.id, spec.validate()?).is_some() {
            return Err(ApiError::validation(format!(
                "node {} listed twice",
                spec.id
            )));
        }
    }
    nodes.entry(s.node.id()).or_insert_with(|| NodeInfo {
        api_addr: s.cfg.advertise.clone(),
        peer_addr: s.cfg.peer_advertise.clone(),
    });
    if s.node.is_initialized().await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "this node already belongs to a cluster",
        ));
    }
    for (id, info) in &nodes {
        if *id != s.node.id() {
            same_token_keys(&s, *id, info).await?;
        }
    }
    let ids: Vec<u64> = nodes.keys().copied().collect();
    s.node.initialize(nodes).await?;
    Ok(Json(json!({"initialized": true, "voters": ids})))
}

#[utoipa::path(
    post,
    path = "/admin/cluster/nodes",
    tag = "admin",
    request_body = NodeSpec,
    responses(
        (status = 200, description = "added as a learner and caught up"),
        (status = "4XX", description = "problem+json", body = Problem),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn add_node(
    State(s): State<AppState>,
    _ops: Ops,
    StrictJson(spec): StrictJson<NodeSpec>,
) -> ApiResult<Response> {
    let info = spec.validate()?;
    same_token_keys(&s, spec.id, &info).await?;
    let index = s.node.add_learner(spec.id, info).await?;
    Ok(written(
        index,
        json!({"added": spec.id, "role": "learner", "index": index}),
    ))
}

/// The key ids of a JWKS document, signing key first.
fn kids(jwks: &serde_json::Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .map(|keys| {
            keys.iter()
                .filter_map(|k| k["kid"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A node that signs access tokens with keys of its own would refuse every
/// token the rest of the cell issued, and its tokens and quotes would be
/// refused elsewhere: it is not let in while its JWKS can be read. (One
/// whose API cannot be reached from here is let in with a warning: the
/// check must not stop a cell whose nodes only reach each other's peer
/// ports.)
async fn same_token_keys(s: &AppState, id: u64, info: &NodeInfo) -> ApiResult<()> {
    let scheme = if s.cfg.tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{}/.well-known/jwks.json", info.api_addr);
    let theirs = match fetch_json(s, &url).await {
        Ok(jwks) => kids(&jwks),
        Err(e) => {
            tracing::warn!(node = id, %url, error = %e, "cannot compare the new node's access-token keys");
            return Ok(());
        }
    };
    let ours = kids(&s.keys.jwks());
    if theirs != ours {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "token_keys_differ",
            format!(
                "node {id} ({}) has other access-token keys than the cell (signing key {} where the cell's is {}): \
                 start it with the cell's key file (--jwt-keys-file, or CELL_JWT_KEYS) so tokens and quotes work on every node",
                info.api_addr,
                theirs.first().map_or("none", String::as_str),
                ours.first().map_or("none", String::as_str),
            ),
        ));
    }
    Ok(())
}

/// GET `url` as JSON, trusting the cell's CA when it runs TLS.
async fn fetch_json(s: &AppState, url: &str) -> Result<serde_json::Value, String> {
    let mut b = reqwest::Client::builder().timeout(std::time::Duration::from_secs(5));
    if let Some(t) = &s.cfg.tls {
        let ca = t.ca.as_deref().unwrap_or(&t.cert);
        let pem = std::fs::read(ca).map_err(|e| format!("reading {}: {e}", ca.display()))?;
        let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| e.to_string())?;
        b = b.add_root_certificate(cert);
    }
    let client = b.build().map_err(|e| e.to_string())?;
    let resp = client.get(url).send().await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("answered {}", resp.status()));
    }
    resp.json().await.map_err(|e| e.to_string())
}

/// A membership change's answer: the log index in the body, as before, and
/// in `X-Cell-Index` like every other write's.
fn written(index: u64, body: serde_json::Value) -> Response {
    ([("x-cell-index", index.to_string())], Json(body)).into_response()
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct MembershipRequest {
    voters: Vec<u64>,
}

#[utoipa::path(
    post,
    path = "/admin/cluster/membership",
    tag = "admin",
    request_body = MembershipRequest,
    responses(
        (status = 200, description = "voters changed"),
        (status = 409, description = "a change is in progress", body = Problem),
        (status = "4XX", description = "problem+json", body = Problem),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn membership(
    State(s): State<AppState>,
    _ops: Ops,
    StrictJson(req): StrictJson<MembershipRequest>,
) -> ApiResult<Response> {
    let voters: BTreeSet<u64> = req.voters.iter().copied().collect();
    if voters.is_empty() || voters.len() != req.voters.len() {
        return Err(ApiError::validation(
            "voters must be a non-empty list of distinct node ids",
        ));
    }
    if voters.len() > 7 {
        return Err(ApiError::validation("a cell has at most 7 voters"));
    }
    let m = s.node.metrics();
    let known: BTreeSet<u64> = m
        .membership_config
        .membership()
        .nodes()
        .map(|(id, _)| *id)
        .collect();
    if let Some(unknown) = voters.iter().find(|v| !known.contains(v)) {
        return Err(ApiError::validation(format!(
            "node {unknown} is not a member; add it first (POST /admin/cluster/nodes)"
        )));
    }
    let index = s.node.change_membership(voters.clone()).await?;
    Ok(written(index, json!({"voters": voters, "index": index})))
}

#[utoipa::path(
    delete,
    path = "/admin/cluster/nodes/{id}",
    tag = "admin",
    params(
        ("id" = u64, Path),
    ),
    responses(
        (status = 200, description = "removed"),
        (status = "4XX", description = "problem+json", body = Problem),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn remove_node(
    State(s): State<AppState>,
    _ops: Ops,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::validation("node id must be a positive integer"))?;
    let index = s.node.remove_node(id).await?;
    Ok(written(index, json!({"removed": id, "index": index})))
}

#[utoipa::path(
    post,
    path = "/admin/snapshot",
    tag = "admin",
    responses(
        (status = 200, description = "snapshot built"),
        (status = "4XX", description = "problem+json", body = Problem),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn snapshot(
    State(s): State<AppState>,
    _ops: Ops,
) -> ApiResult<Json<serde_json::Value>> {
    let index = s.node.snapshot().await?;
    Ok(Json(json!({"snapshot_index": index})))
}

/// Sends written bytes to the response body in chunks, blocking the
/// (blocking-pool) writer when the client reads slowly.
pub(super) struct ChannelWriter {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    const CHUNK: usize = 256 * 1024;

    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(Self::CHUNK),
        ));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= Self::CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// A consistent backup of the whole state, streamed as it is read.
#[utoipa::path(
    get,
    path = "/admin/backup",
    tag = "admin",
    responses(
        (status = 200, description = "a consistent backup stream", content_type = "application/octet-stream"),
        (status = "4XX", description = "problem+json", body = Problem),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn backup(State(s): State<AppState>, _ops: Ops) -> Response {
    let (tx, rx) = mpsc::channel(8);
    let node = s.node.clone();
    tokio::task::spawn_blocking(move || {
        let mut w = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(ChannelWriter::CHUNK),
        };
        match node.backup(&mut w) {
            Ok(summary) => {
                tracing::info!(
                    entries = summary.entries,
                    bytes = summary.bytes,
                    "backup streamed"
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "backup failed");
                // Breaks the body so the client sees a failed transfer
                // instead of a silently truncated file.
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
            }
        }
    });
    let stream = tokio_stream_from(rx);
    let name = format!("attachment; filename=\"{}-backup.mcsnap\"", s.cfg.cell);
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_DISPOSITION, name),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

fn tokio_stream_from(
    mut rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
