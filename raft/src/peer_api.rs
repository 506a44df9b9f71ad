//! The server side of the peer port.
//!
//! Everything here comes from the network: bodies are size-limited and
//! decoded defensively, garbage gets a `400`, and nothing a peer sends can
//! panic the node or reach the state machine unverified.

use std::{io::SeekFrom, sync::Arc};

use axum::{
    body::{Body, Bytes},
    extract::{DefaultBodyLimit, Request, State},
    http::StatusCode,
    middleware::Next,
    response::{IntoResponse, Response},
    routing::post,
    Router,
};
use futures::StreamExt;
use openraft::{
    raft::{AppendEntriesRequest, SnapshotResponse, VoteRequest},
    EntryPayload,
};
use serde::Serialize;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use crate::{
    network::{PATH_APPEND, PATH_LEADER, PATH_SNAPSHOT, PATH_VERSION, PATH_VOTE, TO_HEADER},
    state_machine::Application,
    types::{ItemReply, Membership, NodeId, Reply, Snapshot, SnapshotMeta, TypeConfig, Vote},
    wire::{LeaderErr, LeaderOk, LeaderOp},
    RaftNode,
};

/// Largest non-snapshot message a peer may send.
const MAX_RPC_BYTES: usize = 64 * 1024 * 1024;
const MAX_SNAPSHOT_HEADER: usize = 16 * 1024 * 1024;

fn encoded<T: Serialize>(value: &T) -> Response {
    match storage::encode(value) {
        Ok(bytes) => (StatusCode::OK, bytes).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn bad_request(msg: impl std::fmt::Display) -> Response {
    (StatusCode::BAD_REQUEST, msg.to_string()).into_response()
}

/// Routes of the peer port for `node`.
pub fn peer_router<A: Application>(node: Arc<RaftNode<A>>) -> Router {
    Router::new()
        .route(PATH_APPEND, post(append::<A>))
        .route(PATH_VOTE, post(vote::<A>))
        .route(PATH_LEADER, post(leader::<A>))
        .route(PATH_VERSION, post(version::<A>))
        .layer(DefaultBodyLimit::max(MAX_RPC_BYTES))
        .route(
            PATH_SNAPSHOT,
            post(snapshot::<A>).layer(DefaultBodyLimit::disable()),
        )
        .layer(axum::middleware::from_fn_with_state(
            node.clone(),
            addressed_here::<A>,
        ))
        .with_state(node)
}

/// A request names the node it is for (`x-raft-to`); one meant for another
/// node — an address given to the wrong member, a node moved — is refused
/// with `421` before openraft sees it: a leader handed its own appends as
/// another node's stops its core. (Builds from before the header send
/// none: theirs pass.)
async fn addressed_here<A: Application>(
    State(node): State<Arc<RaftNode<A>>>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(to) = req.headers().get(TO_HEADER) {
        match to.to_str().ok().and_then(|s| s.parse::<NodeId>().ok()) {
            Some(to) if to == node.id() => {}
            Some(to) => {
                let me = node.id();
                return (
                    StatusCode::MISDIRECTED_REQUEST,
                    format!("this is node {me}, not node {to}"),
                )
                    .into_response();
            }
            None => return bad_request(format!("{TO_HEADER} is not a node id")),
        }
    }
    next.run(req).await
}

/// Whether every voter of `m` is among its nodes. openraft 0.9 looks
/// voters up in the node map without checking, so a missing one would stop
/// the node's Raft the next time it campaigns or replicates.
fn sound(m: &Membership) -> bool {
    m.get_joint_config()
        .iter()
        .flatten()
        .all(|id| m.get_node(id).is_some())
}

async fn append<A: Application>(State(node): State<Arc<RaftNode<A>>>, body: Bytes) -> Response {
    let req: AppendEntriesRequest<TypeConfig> = match storage::decode(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("bad append-entries body: {e}")),
    };
    let unsound = req.entries.iter().any(|e| match &e.payload {
        EntryPayload::Membership(m) => !sound(m),
        _ => false,
    });
    if unsound {
        return bad_request("a membership entry names voters that are not among its nodes");
    }
    if let Err(e) = consecutive(&req) {
        return bad_request(e);
    }
    encoded(&node.raft.append_entries(req).await)
}

/// Whether the entries follow `prev_log_id` one index at a time with log
/// ids that never go back. openraft 0.9 only `debug_assert!`s this: a
/// request breaking it stops its core in a debug build, and in a release
/// build puts entries at the wrong indexes of the log.
fn consecutive(req: &AppendEntriesRequest<TypeConfig>) -> Result<(), String> {
    let mut prev = req.prev_log_id;
    for e in &req.entries {
        let expected = match prev {
            None => 0,
            Some(p) => p
                .index
                .checked_add(1)
                .ok_or("an entry follows the largest index")?,
        };
        if e.log_id.index != expected {
            return Err(format!(
                "entry {} does not follow {expected}: entries must be consecutive",
                e.log_id.index
            ));
        }
        if prev.is_some_and(|p| e.log_id.leader_id < p.leader_id) {
            return Err(format!(
                "entry {} has an older term than the one before it",
                e.log_id.index
            ));
        }
        if e.log_id.leader_id.term > req.vote.leader_id().term {
            return Err(format!(
                "entry {} has a term later than the sender's vote",
                e.log_id.index
            ));
        }
        prev = Some(e.log_id);
    }
    Ok(())
}

async fn vote<A: Application>(State(node): State<Arc<RaftNode<A>>>, body: Bytes) -> Response {
    let req: VoteRequest<NodeId> = match storage::decode(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("bad vote body: {e}")),
    };
    encoded(&node.raft.vote(req).await)
}

async fn leader<A: Application>(State(node): State<Arc<RaftNode<A>>>, body: Bytes) -> Response {
    let op: LeaderOp = match storage::decode(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("bad leader-op body: {e}")),
    };
    let answer = match op {
        // Forwarded writes join this leader's own batches; one that finds
        // this node no longer leading is refused rather than forwarded on
        // (that could loop during an election). Should leadership move
        // while the batch waits, the batcher hands it to the new leader,
        // which checks it again.
        LeaderOp::Write(_) if !node.is_leader() => Err(crate::RaftError::NotLeader {
            leader: node.leader(),
        }),
        LeaderOp::Write(cmd) => {
            forwarded_write::<A>(&node, cmd.0.into_iter().map(serde_bytes::ByteBuf::into_vec)).await
        }
        op => node.run_as_leader(&op).await,
    };
    encoded(&answer.map_err(LeaderErr::from))
}

/// A follower's batch joins this leader's own. A command this build cannot
/// decode (sent by a newer build) stays out of the log: every node of this
/// build would stop at it. The rest of the batch is written.
async fn forwarded_write<A: Application>(
    node: &RaftNode<A>,
    items: impl Iterator<Item = Vec<u8>>,
) -> Result<LeaderOk, crate::RaftError> {
    let mut refused = Vec::new();
    let mut good = Vec::new();
    for (i, bytes) in items.enumerate() {
        match storage::decode::<A::Command>(&bytes) {
            Ok(_) => good.push(bytes),
            Err(e) => refused.push((i, e.to_string())),
        }
    }
    let total = good.len() + refused.len();
    let (index, written) = if good.is_empty() {
        (node.applied_index(), Vec::new())
    } else {
        node.submit(good).await?
    };
    let mut written = written.into_iter();
    let mut refused = refused.into_iter().peekable();
    let replies = (0..total)
        .map(|i| match refused.next_if(|(at, _)| *at == i) {
            Some((_, e)) => ItemReply::Undecodable(format!(
                "the leader's build (command version {}) cannot decode it: {e}",
                A::VERSION
            )),
            None => written
                .next()
                .unwrap_or_else(|| ItemReply::Undecodable("no reply for this command".into())),
        })
        .collect();
    Ok(LeaderOk::Written {
        index,
        reply: Reply::Batch(replies),
    })
}

/// The command version this build applies (see [`Application::VERSION`]).
async fn version<A: Application>() -> Response {
    encoded(&A::VERSION)
}

/// Receive a whole snapshot into a temporary file, verify it end to end,
/// and only then hand it to openraft.
async fn snapshot<A: Application>(State(node): State<Arc<RaftNode<A>>>, body: Body) -> Response {
    let path = node.sm.incoming_snapshot_path();
    let result = receive_snapshot(&node, &path, body).await;
    let _ = tokio::fs::remove_file(&path).await;
    match result {
        Ok(resp) => encoded(&Ok::<SnapshotResponse<NodeId>, String>(resp)),
        Err(SnapshotReject::Bad(msg)) => {
            tracing::warn!(error = %msg, "rejected incoming snapshot");
            encoded(&Err::<SnapshotResponse<NodeId>, String>(msg))
        }
        Err(SnapshotReject::Local(msg)) => (StatusCode::INTERNAL_SERVER_ERROR, msg).into_response(),
    }
}

enum SnapshotReject {
    /// The stream itself is bad.
    Bad(String),
    /// We failed locally.
    Local(String),
}

async fn receive_snapshot<A: Application>(
    node: &RaftNode<A>,
    path: &std::path::Path,
    body: Body,
) -> Result<SnapshotResponse<NodeId>, SnapshotReject> {
    let mut stream = body.into_data_stream();
    let mut pending: Vec<u8> = Vec::new();
    let mut header: Option<(Vote, SnapshotMeta)> = None;
    let mut file = tokio::fs::File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .await
        .map_err(|e| SnapshotReject::Local(e.to_string()))?;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| SnapshotReject::Bad(format!("stream broke: {e}")))?;
        if header.is_some() {
            file.write_all(&chunk)
                .await
                .map_err(|e| SnapshotReject::Local(e.to_string()))?;
            continue;
        }
        pending.extend_from_slice(&chunk);
        if pending.len() < 4 {
            continue;
        }
        let len = u32::from_le_bytes([pending[0], pending[1], pending[2], pending[3]]) as usize;
        if len > MAX_SNAPSHOT_HEADER {
            return Err(SnapshotReject::Bad(format!(
                "snapshot header of {len} bytes"
            )));
        }
        if pending.len() < 4 + len {
            continue;
        }
        let decoded: (Vote, SnapshotMeta) = storage::decode(&pending[4..4 + len])
            .map_err(|e| SnapshotReject::Bad(format!("bad snapshot header: {e}")))?;
        if !sound(decoded.1.last_membership.membership()) {
            return Err(SnapshotReject::Bad(
                "the snapshot's membership names voters that are not among its nodes".into(),
            ));
        }
        header = Some(decoded);
        file.write_all(&pending[4 + len..])
            .await
            .map_err(|e| SnapshotReject::Local(e.to_string()))?;
        pending = Vec::new();
    }
    let (vote, meta) = header
        .ok_or_else(|| SnapshotReject::Bad("snapshot stream ended before its header".into()))?;
    file.sync_all()
        .await
        .map_err(|e| SnapshotReject::Local(e.to_string()))?;
    file.seek(SeekFrom::Start(0))
        .await
        .map_err(|e| SnapshotReject::Local(e.to_string()))?;
    let std_file = file.into_std().await;
    let verify_file = std_file
        .try_clone()
        .map_err(|e| SnapshotReject::Local(e.to_string()))?;
    let summary = tokio::task::spawn_blocking(move || {
        storage::verify_snapshot(std::io::BufReader::with_capacity(1 << 20, verify_file))
    })
    .await
    .map_err(|e| SnapshotReject::Local(e.to_string()))?
    .map_err(|e| SnapshotReject::Bad(e.to_string()))?;
    tracing::info!(snapshot = %meta.snapshot_id, entries = summary.entries, bytes = summary.bytes, "received snapshot");
    let snapshot = Snapshot {
        meta,
        snapshot: Box::new(tokio::fs::File::from_std(std_file)),
    };
    node.raft
        .install_full_snapshot(vote, snapshot)
        .await
        .map_err(|e| SnapshotReject::Local(e.to_string()))
}
