//! The client side of the peer port: openraft's RPCs and forwarded leader
//! work over HTTP/2, bodies encoded with the storage codec (bincode 2).

use std::{future::Future, time::Duration};

use bytes::Bytes;
use futures::StreamExt;
use openraft::{
    error::{
        Fatal, InstallSnapshotError, NetworkError, RPCError, RaftError as ORaftError, RemoteError,
        ReplicationClosed, StreamingError, Unreachable,
    },
    network::RPCOption,
    raft::{
        AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest,
        InstallSnapshotResponse, SnapshotResponse, VoteRequest, VoteResponse,
    },
    AnyError, RaftNetwork, RaftNetworkFactory,
};
use serde::{de::DeserializeOwned, Serialize};
use tokio::io::AsyncSeekExt;
use tokio_util::io::ReaderStream;

use crate::{
    types::{NodeId, NodeInfo, Snapshot, TypeConfig, Vote},
    wire::{LeaderErr, LeaderOk, LeaderOp},
    RaftError,
};

pub(crate) const PATH_APPEND: &str = "/raft/append";
pub(crate) const PATH_VOTE: &str = "/raft/vote";
pub(crate) const PATH_SNAPSHOT: &str = "/raft/snapshot";
pub(crate) const PATH_LEADER: &str = "/raft/leader";
pub(crate) const PATH_VERSION: &str = "/raft/version";
/// The id of the node a peer request is for: the receiver refuses one
/// meant for another node (see `peer_api`).
pub(crate) const TO_HEADER: &str = "x-raft-to";

/// Why a call to a peer failed.
#[derive(Debug)]
pub(crate) enum CallError {
    /// Never reached the peer: safe to retry anything.
    Unreachable(String),
    /// Reached (or may have reached) the peer; outcome unknown.
    Failed(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(s) => write!(f, "unreachable: {s}"),
            CallError::Failed(s) => write!(f, "{s}"),
        }
    }
}

/// HTTP/2 client for the peer port, TLS when configured.
#[derive(Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    scheme: &'static str,
}

impl PeerClient {
    /// `source`: local address to dial peers from (multi-homed hosts).
    pub fn new(
        tls: Option<rustls::ClientConfig>,
        source: Option<std::net::IpAddr>,
    ) -> Result<Self, RaftError> {
        let builder = reqwest::Client::builder()
            .local_address(source)
            .http2_prior_knowledge()
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .http2_keep_alive_while_idle(true);
        let (builder, scheme) = match tls {
            Some(cfg) => (builder.use_preconfigured_tls(cfg), "https"),
            None => (builder, "http"),
        };
        let http = builder.build().map_err(|e| RaftError::Tls(e.to_string()))?;
        Ok(Self { http, scheme })
    }

    fn url(&self, addr: &str, path: &str) -> String {
        format!("{}://{addr}{path}", self.scheme)
    }

    fn classify(e: reqwest::Error) -> CallError {
        if e.is_connect() {
            CallError::Unreachable(e.to_string())
        } else {
            CallError::Failed(e.to_string())
        }
    }

    async fn finish<Resp: DeserializeOwned>(resp: reqwest::Response) -> Result<Resp, CallError> {
        let status = resp.status();
        let body = resp.bytes().await.map_err(Self::classify)?;
        // Refused before anything ran (another node answers there): as
        // good as never reached, so forwarding retries and openraft backs
        // off instead of retrying on every heartbeat.
        if status == reqwest::StatusCode::MISDIRECTED_REQUEST {
            return Err(CallError::Unreachable(format!(
                "misdirected: {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            )));
        }
        if !status.is_success() {
            return Err(CallError::Failed(format!(
                "peer answered {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            )));
        }
        storage::decode(&body).map_err(|e| CallError::Failed(format!("bad peer response: {e}")))
    }

    pub(crate) async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        to: NodeId,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let body = storage::encode(req).map_err(|e| CallError::Unreachable(e.to_string()))?;
        let resp = self
            .http
            .post(self.url(addr, path))
            .header(TO_HEADER, to)
            .timeout(timeout)
            .body(body)
            .send()
            .await
            .map_err(Self::classify)?;
        Self::finish(resp).await
    }

    pub(crate) async fn leader_op(
        &self,
        addr: &str,
        leader: NodeId,
        op: &LeaderOp,
        timeout: Duration,
    ) -> Result<Result<LeaderOk, LeaderErr>, CallError> {
        self.call(addr, leader, PATH_LEADER, op, timeout).await
    }

    /// The command version of the build node `to` runs. Builds from before
    /// versions have no such route: their `404` means version 1.
    pub(crate) async fn version(
        &self,
        addr: &str,
        to: NodeId,
        timeout: Duration,
    ) -> Result<u32, CallError> {
        let resp = self
            .http
            .post(self.url(addr, PATH_VERSION))
            .header(TO_HEADER, to)
            .timeout(timeout)
            .send()
            .await
            .map_err(Self::classify)?;
        match resp.status() {
            reqwest::StatusCode::NOT_FOUND => Ok(1),
            reqwest::StatusCode::MISDIRECTED_REQUEST => {
                let said = resp.text().await.unwrap_or_default();
                Err(CallError::Failed(format!(
                    "the node at {addr} is not node {to} ({said})"
                )))
            }
            _ => Self::finish(resp).await,
        }
    }

    /// Stream a whole snapshot: a length-prefixed header (vote, meta), then
    /// the snapshot file as it is on disk.
    async fn send_snapshot(
        &self,
        addr: &str,
        to: NodeId,
        vote: Vote,
        mut snapshot: Snapshot,
        timeout: Duration,
    ) -> Result<Result<SnapshotResponse<NodeId>, String>, CallError> {
        let header = storage::encode(&(vote, snapshot.meta.clone()))
            .map_err(|e| CallError::Unreachable(e.to_string()))?;
        let mut prefix = (header.len() as u32).to_le_bytes().to_vec();
        prefix.extend_from_slice(&header);
        snapshot
            .snapshot
            .seek(std::io::SeekFrom::Start(0))
            .await
            .map_err(|e| CallError::Unreachable(e.to_string()))?;
        let file = *snapshot.snapshot;
        // The whole transfer, the receiver's check and its install must
        // fit: a large state gets time in proportion to its size, so a
        // node far behind on a big cell is not sent the same snapshot
        // over and over.
        let size = file.metadata().await.map_or(0, |m| m.len());
        let timeout = timeout + Duration::from_secs(size / SNAPSHOT_BYTES_PER_SEC);
        let stream =
            futures::stream::once(async move { Ok::<Bytes, std::io::Error>(Bytes::from(prefix)) })
                .chain(ReaderStream::with_capacity(file, 256 * 1024));
        let resp = self
            .http
            .post(self.url(addr, PATH_SNAPSHOT))
            .header(TO_HEADER, to)
            .timeout(timeout)
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
            .map_err(Self::classify)?;
        Self::finish(resp).await
    }
}

/// The slowest pace a snapshot is given (sending, checking and installing
/// it) beyond the base timeout: 10 MB/s.
const SNAPSHOT_BYTES_PER_SEC: u64 = 10_000_000;

/// Creates one [`PeerNetwork`] per replication target.
#[derive(Clone)]
pub struct NetworkFactory {
    pub(crate) client: PeerClient,
    pub(crate) snapshot_timeout: Duration,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Self::Network {
        PeerNetwork {
            client: self.client.clone(),
            target,
            addr: node.peer_addr.clone(),
            snapshot_timeout: self.snapshot_timeout,
        }
    }
}

pub struct PeerNetwork {
    client: PeerClient,
    target: NodeId,
    addr: String,
    snapshot_timeout: Duration,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, NodeInfo, ORaftError<NodeId, E>>>;

impl PeerNetwork {
    async fn rpc<
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    >(
        &self,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E> {
        let answer: Result<Resp, ORaftError<NodeId, E>> = self
            .client
            .call(&self.addr, self.target, path, req, option.hard_ttl())
            .await
            .map_err(|e| match e {
                CallError::Unreachable(s) => {
                    RPCError::Unreachable(Unreachable::from(AnyError::error(s)))
                }
                CallError::Failed(s) => RPCError::Network(NetworkError::from(AnyError::error(s))),
            })?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        self.rpc(PATH_APPEND, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        self.rpc(PATH_VOTE, &rpc, &option).await
    }

    /// Chunked transfer is deliberately not offered: openraft would hand
    /// unverified chunks to the state machine, and a corrupt stream would
    /// stop the receiving node. Snapshots travel whole through
    /// [`Self::full_snapshot`] and are checked before openraft sees them.
    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        Err(RPCError::Network(NetworkError::from(AnyError::error(
            "chunked snapshot transfer is not supported; snapshots are streamed whole",
        ))))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let send = self.client.send_snapshot(
            &self.addr,
            self.target,
            vote,
            snapshot,
            self.snapshot_timeout,
        );
        let result = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            r = send => r,
        };
        match result {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(remote)) => Err(StreamingError::Network(NetworkError::from(
                AnyError::error(format!("peer rejected snapshot: {remote}")),
            ))),
            Err(CallError::Unreachable(s)) => Err(StreamingError::Unreachable(Unreachable::from(
                AnyError::error(s),
            ))),
            Err(CallError::Failed(s)) => Err(StreamingError::Network(NetworkError::from(
                AnyError::error(s),
            ))),
        }
    }
}
