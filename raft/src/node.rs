//! A running Raft node: openraft wired to the stores and the network, plus
//! the operations the application needs (write with leader forwarding,
//! linearizable and session reads, membership, snapshots).

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use openraft::{
    error::{CheckIsLeaderError, ClientWriteError, InitializeError, RaftError as ORaftError},
    ChangeMembers, ServerState,
};
use tokio::sync::watch;

use crate::{
    batcher,
    log_store::{check_node_id, LogStore},
    network::{CallError, NetworkFactory, PeerClient},
    state_machine::{Application, StateMachineStore},
    types::{ItemReply, NodeId, NodeInfo, Raft, RaftMetrics},
    wire::{LeaderOk, LeaderOp},
    RaftError,
};

/// How long adding a node (or making learners voters) may take: the leader
/// answers once the new node caught up, by log or snapshot. The cell's
/// admin endpoints allow as much (`cell::http::middleware`).
pub const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(600);

/// How a node is started.
#[derive(Clone)]
pub struct NodeConfig {
    pub id: NodeId,
    pub data_dir: PathBuf,
    /// How other nodes and clients reach this node.
    pub info: NodeInfo,
    pub raft: openraft::Config,
    /// TLS for calls to peers (mTLS identity included); `None` = plain h2c.
    pub peer_tls: Option<rustls::ClientConfig>,
    /// Local address for connections to peers (multi-homed hosts).
    pub peer_source_ip: Option<std::net::IpAddr>,
    /// How long a write may wait for a leader and a quorum.
    pub write_timeout: Duration,
    /// Page cache of `state.redb` in bytes.
    pub state_cache_bytes: usize,
}

impl NodeConfig {
    /// Raft timings suited to a LAN or loopback cell.
    pub fn default_raft_config(cluster: &str) -> openraft::Config {
        openraft::Config {
            cluster_name: cluster.to_string(),
            heartbeat_interval: 100,
            // openraft 0.9 waits out the leader lease (= the max) plus a
            // random timeout before a follower stands: 0.9–1.2 s here
            // after the last heartbeat (1.5–2 s with 500–1000, which left
            // too little room for a second round within the 3 s a leader
            // kill may take).
            election_timeout_min: 300,
            election_timeout_max: 600,
            install_snapshot_timeout: 30_000,
            max_payload_entries: 512,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(20_000),
            max_in_snapshot_log_to_keep: 5_000,
            purge_batch_size: 256,
            ..Default::default()
        }
    }
}

/// The result of a committed write.
#[derive(Debug)]
pub struct Written<R> {
    /// Log index of the entry; echo it as `X-Cell-Index`.
    pub index: u64,
    pub response: R,
}

pub struct RaftNode<A: Application> {
    pub(crate) id: NodeId,
    pub(crate) raft: Raft,
    pub(crate) sm: StateMachineStore<A>,
    pub(crate) client: PeerClient,
    write_timeout: Duration,
    applied: watch::Receiver<u64>,
    batcher: tokio::sync::mpsc::Sender<batcher::Pending>,
    pub(crate) versions: crate::versions::Gate,
}

impl<A: Application> RaftNode<A> {
    pub async fn start(cfg: NodeConfig, app: Arc<A>) -> Result<Arc<Self>, RaftError> {
        std::fs::create_dir_all(&cfg.data_dir)?;
        let log = LogStore::open(cfg.data_dir.join("log.redb"))?;
        if let Err(existing) = check_node_id(&log, cfg.id)? {
            return Err(RaftError::Invalid(format!(
                "data directory {} belongs to node {existing}, not node {}",
                cfg.data_dir.display(),
                cfg.id
            )));
        }
        let sm = StateMachineStore::open(&cfg.data_dir, app, cfg.state_cache_bytes)?;
        let recorded_version = crate::versions::check_state_version(&sm)?;
        let applied = sm.applied_index();
        let client = PeerClient::new(cfg.peer_tls.clone(), cfg.peer_source_ip)?;
        let network = NetworkFactory {
            client: client.clone(),
            snapshot_timeout: Duration::from_millis(cfg.raft.install_snapshot_timeout.max(10_000)),
        };
        let config = Arc::new(
            cfg.raft
                .clone()
                .validate()
                .map_err(|e| RaftError::Invalid(e.to_string()))?,
        );
        let raft = Raft::new(cfg.id, config, network, log, sm.clone())
            .await
            .map_err(|e| RaftError::Fatal(e.to_string()))?;
        let node = Arc::new_cyclic(|weak| Self {
            id: cfg.id,
            raft,
            sm,
            client,
            write_timeout: cfg.write_timeout,
            applied,
            batcher: batcher::spawn(weak.clone()),
            versions: crate::versions::Gate::new(recorded_version),
        });
        node.spawn_flusher();
        node.spawn_version_raiser();
        Ok(node)
    }

    /// Applies commit without fsync; this bounds how much a crash can make
    /// the node re-apply from its log.
    fn spawn_flusher(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut flushed = 0;
            loop {
                tick.tick().await;
                let Some(node) = weak.upgrade() else { return };
                let applied = *node.applied.borrow();
                if applied == flushed {
                    continue;
                }
                let store = node.sm.store().clone();
                drop(node);
                match tokio::task::spawn_blocking(move || store.flush()).await {
                    Ok(Ok(())) => flushed = applied,
                    Ok(Err(e)) => tracing::warn!(error = %e, "state flush failed"),
                    Err(e) => tracing::warn!(error = %e, "state flush task failed"),
                }
            }
        });
    }

    fn spawn_version_raiser(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(node) = weak.upgrade() else { return };
                if node.raise_when_possible().await {
                    return;
                }
            }
        });
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The local state database (read with `store().read()`).
    pub fn store(&self) -> &storage::Store {
        self.sm.store()
    }

    pub fn metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow().clone()
    }

    /// The highest log index known committed by this node.
    /// The committed index as the Raft core knows it (`None` before
    /// anything was committed); `Stopped` once the core is gone — also when
    /// it died without saying so in its metrics (a panic), which a
    /// readiness check must not miss.
    pub async fn committed_index(&self) -> Result<Option<u64>, RaftError> {
        self.raft
            .with_raft_state(|st| st.committed.map(|l| l.index))
            .await
            .map_err(|e| RaftError::Stopped(e.to_string()))
    }

    pub fn applied_index(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Transactions and commands applied since this node started.
    pub fn apply_stats(&self) -> &crate::ApplyStats {
        self.sm.apply_stats()
    }

    /// Follows the applied index (wakes on every applied batch).
    pub fn applied_watch(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }

    /// The leader as this node currently knows it.
    pub fn leader(&self) -> Option<(NodeId, NodeInfo)> {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id).cloned()?;
        Some((id, node))
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// Leader, and has applied an entry of its own term — so every entry
    /// an earlier leader committed is in this node's state too. Work that
    /// decides from the state what to write next (dispatch, closing a
    /// route window) waits for this after an election; before it, a new
    /// leader could repeat what its predecessor's last entries already did.
    pub fn leads_with_current_state(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader
            && m.last_applied
                .is_some_and(|applied| applied.leader_id.term == m.current_term)
    }

    /// Wait until this node has applied `index` (session consistency).
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), RaftError> {
        let mut rx = self.applied.clone();
        let result = tokio::time::timeout(timeout, rx.wait_for(|applied| *applied >= index))
            .await
            .map(|r| r.is_ok());
        match result {
            Ok(true) => Ok(()),
            Ok(false) => Err(RaftError::Fatal("state machine stopped".into())),
            Err(_) => Err(RaftError::Timeout(format!("applied index {index}"))),
        }
    }

    /// Replicate `cmd` and return the application's response once applied
    /// here (on the leader). Followers forward to the leader.
    ///
    /// A command of a newer command set waits for every node to run a build
    /// that applies it (`UpgradeInProgress` until then).
    pub async fn write(&self, cmd: &A::Command) -> Result<Written<A::Response>, RaftError> {
        // A node that stopped applying could still hand the write to the
        // leader, but never see it applied here to answer.
        if self.raft.metrics().borrow().running_state.is_err() {
            return Err(RaftError::Stopped(
                "raft is not running here; write to another node".into(),
            ));
        }
        let needed = A::required_version(cmd);
        if needed > self.versions.known() {
            self.ensure_version(needed).await?;
        }
        self.write_encoded(storage::encode(cmd)?).await
    }

    /// Writes one command, already encoded, without the version check.
    pub(crate) async fn write_encoded(
        &self,
        bytes: Vec<u8>,
    ) -> Result<Written<A::Response>, RaftError> {
        let (index, mut replies) = self.submit(vec![bytes]).await?;
        let response = match replies.pop() {
            Some(ItemReply::App(b)) => storage::decode(&b)?,
            Some(ItemReply::Undecodable(e)) => return Err(RaftError::Undecodable(e)),
            None => return Err(RaftError::Fatal("empty batch reply".into())),
        };
        // A forwarded write was applied on the leader; make it visible
        // here too before answering.
        self.wait_applied(index, self.write_timeout).await?;
        Ok(Written { index, response })
    }

    /// Hand encoded commands to the group-commit batcher.
    pub(crate) async fn submit(
        &self,
        items: Vec<Vec<u8>>,
    ) -> Result<(u64, Vec<ItemReply>), RaftError> {
        let (done, rx) = tokio::sync::oneshot::channel();
        self.batcher
            .send(batcher::Pending { items, done })
            .await
            .map_err(|_| RaftError::Fatal("write batcher stopped".into()))?;
        rx.await
            .map_err(|_| RaftError::OutcomeUnknown("write batcher dropped the request".into()))?
    }

    /// Confirm leadership with a quorum (ReadIndex) and wait until this node
    /// applied at least that index: a read after this is linearizable.
    pub async fn linearizable_barrier(&self) -> Result<u64, RaftError> {
        match self.leader_op(LeaderOp::ReadIndex).await? {
            LeaderOk::ReadIndex(index) => {
                self.wait_applied(index, self.write_timeout).await?;
                Ok(index)
            }
            other => Err(RaftError::Fatal(format!(
                "unexpected leader answer {other:?}"
            ))),
        }
    }

    /// Run `op` here if we lead, else on the leader; keep trying through an
    /// election until the write timeout, but never resend a request whose
    /// outcome is unknown.
    pub(crate) async fn leader_op(&self, op: LeaderOp) -> Result<LeaderOk, RaftError> {
        self.leader_op_within(op, self.write_timeout).await
    }

    /// `leader_op` with a budget of its own: a membership change answers
    /// once the new node caught up, which on a large state takes minutes.
    async fn leader_op_within(
        &self,
        op: LeaderOp,
        budget: Duration,
    ) -> Result<LeaderOk, RaftError> {
        let deadline = Instant::now() + budget;
        let mut backoff = Duration::from_millis(20);
        loop {
            let attempt = match self.leader() {
                Some((leader, _)) if leader == self.id => self.run_as_leader(&op).await,
                Some((leader, node)) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let left = left.max(Duration::from_millis(100));
                    match self
                        .client
                        .leader_op(&node.peer_addr, leader, &op, left)
                        .await
                    {
                        Ok(answer) => answer.map_err(RaftError::from),
                        Err(CallError::Unreachable(e)) => {
                            Err(RaftError::NotLeader { leader: None }).inspect_err(|_| {
                                tracing::debug!(error = %e, "leader unreachable, retrying");
                            })
                        }
                        Err(CallError::Failed(e)) => Err(RaftError::OutcomeUnknown(e)),
                    }
                }
                None => Err(RaftError::NotLeader { leader: None }),
            };
            match attempt {
                Err(RaftError::NotLeader { .. }) | Err(RaftError::MembershipInProgress)
                    if Instant::now() + backoff < deadline =>
                {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                }
                Err(RaftError::NotLeader { .. }) => {
                    return Err(RaftError::NotLeader {
                        leader: self.leader(),
                    })
                }
                other => return other,
            }
        }
    }

    /// Execute leader work locally. Errors say precisely whether the request
    /// may have taken effect.
    pub(crate) async fn run_as_leader(&self, op: &LeaderOp) -> Result<LeaderOk, RaftError> {
        if !self.is_leader() {
            return Err(RaftError::NotLeader {
                leader: self.leader(),
            });
        }
        match op {
            LeaderOp::Write(cmd) => {
                match tokio::time::timeout(self.write_timeout, self.raft.client_write(cmd.clone()))
                    .await
                {
                    // Appended but not committed in time (e.g. a leader cut off
                    // from its followers): it may still commit later.
                    Err(_) => Err(RaftError::OutcomeUnknown(
                        "no commit within the write timeout".into(),
                    )),
                    Ok(Ok(resp)) => Ok(LeaderOk::Written {
                        index: resp.log_id.index,
                        reply: resp.data,
                    }),
                    // We believed we led, so the entry may have been appended
                    // before leadership moved: the outcome is unknown.
                    Ok(Err(ORaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => Err(
                        RaftError::OutcomeUnknown("leadership changed during the write".into()),
                    ),
                    Ok(Err(e)) => Err(RaftError::Fatal(e.to_string())),
                }
            }
            LeaderOp::ReadIndex => {
                match tokio::time::timeout(self.write_timeout, self.raft.get_read_log_id())
                    .await
                    .map_err(|_| {
                        RaftError::NoQuorum("leadership not confirmed within the timeout".into())
                    })? {
                    Ok((read, _applied)) => {
                        Ok(LeaderOk::ReadIndex(read.map(|l| l.index).unwrap_or(0)))
                    }
                    Err(ORaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => {
                        Err(RaftError::NotLeader {
                            leader: self.leader(),
                        })
                    }
                    Err(ORaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q))) => {
                        Err(RaftError::NoQuorum(q.to_string()))
                    }
                    Err(e) => Err(RaftError::Fatal(e.to_string())),
                }
            }
            LeaderOp::AddLearner { id, node } => {
                self.check_new_member(*id, node)?;
                self.check_joiner(*id, &node.peer_addr).await?;
                // Again: another add may have gone in while we asked.
                self.check_new_member(*id, node)?;
                let r = self.raft.add_learner(*id, node.clone(), true).await;
                membership_result(self, r)
            }
            LeaderOp::ChangeMembership { voters } => {
                if voters.is_empty() {
                    return Err(RaftError::Invalid("a cell needs at least one voter".into()));
                }
                let r = self.raft.change_membership(voters.clone(), true).await;
                membership_result(self, r)
            }
            LeaderOp::RemoveNode { id } => {
                let m = self.metrics();
                let membership = m.membership_config.membership();
                if membership.voter_ids().any(|v| v == *id) {
                    let voters: BTreeSet<NodeId> =
                        membership.voter_ids().filter(|v| v != id).collect();
                    if voters.is_empty() {
                        return Err(RaftError::Invalid("cannot remove the last voter".into()));
                    }
                    let r = self.raft.change_membership(voters, false).await;
                    membership_result(self, r)
                } else if membership.get_node(id).is_some() {
                    let r = self
                        .raft
                        .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([*id])), false)
                        .await;
                    membership_result(self, r)
                } else {
                    Err(RaftError::Invalid(format!("node {id} is not a member")))
                }
            }
        }
    }

    /// A joiner is new, or the same learner again (a retried add). A
    /// voter's id, a member's id at other addresses, or another member's
    /// address would have the leader replicate to the wrong node — to
    /// itself, even, which stops openraft.
    fn check_new_member(&self, id: NodeId, info: &NodeInfo) -> Result<(), RaftError> {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        if membership.voter_ids().any(|v| v == id) {
            return Err(RaftError::MemberConflict(format!(
                "node {id} is already a voter"
            )));
        }
        if let Some(known) = membership.get_node(&id).filter(|known| *known != info) {
            return Err(RaftError::MemberConflict(format!(
                "node {id} is already a learner ({known}); remove it first to move it"
            )));
        }
        for (other, n) in membership.nodes().filter(|(other, _)| **other != id) {
            for (mine, theirs) in [
                (&info.api_addr, &n.api_addr),
                (&info.peer_addr, &n.peer_addr),
            ] {
                if mine == theirs {
                    return Err(RaftError::MemberConflict(format!(
                        "node {other} already uses {mine}; remove it first if node {id} replaces it"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Form a new cluster from this node (and, optionally, others that are
    /// running and empty). Fails if the node already belongs to a cluster.
    pub async fn initialize(&self, nodes: BTreeMap<NodeId, NodeInfo>) -> Result<(), RaftError> {
        // Each node named must be the one answering at its address, with
        // a build as new as ours, and no two may share an address: else the
        // cell formed could never elect.
        let mut seen: BTreeMap<&str, NodeId> = BTreeMap::new();
        for (id, info) in &nodes {
            for addr in [info.api_addr.as_str(), info.peer_addr.as_str()] {
                if let Some(other) = seen.insert(addr, *id) {
                    return Err(RaftError::MemberConflict(format!(
                        "nodes {other} and {id} both use {addr}"
                    )));
                }
            }
        }
        for (id, info) in nodes.iter().filter(|(id, _)| **id != self.id) {
            self.check_joiner(*id, &info.peer_addr).await?;
        }
        match self.raft.initialize(nodes).await {
            Ok(()) => Ok(()),
            Err(ORaftError::APIError(InitializeError::NotAllowed(_))) => Err(RaftError::Invalid(
                "this node is already part of a cluster".into(),
            )),
            Err(ORaftError::APIError(e)) => Err(RaftError::Invalid(e.to_string())),
            Err(e) => Err(RaftError::Fatal(e.to_string())),
        }
    }

    pub async fn is_initialized(&self) -> Result<bool, RaftError> {
        self.raft
            .is_initialized()
            .await
            .map_err(|e| RaftError::Fatal(e.to_string()))
    }

    /// Add a learner and wait until it caught up with the leader.
    pub async fn add_learner(&self, id: NodeId, node: NodeInfo) -> Result<u64, RaftError> {
        match self
            .leader_op_within(LeaderOp::AddLearner { id, node }, MEMBERSHIP_TIMEOUT)
            .await?
        {
            LeaderOk::Done { index } => Ok(index),
            other => Err(RaftError::Fatal(format!(
                "unexpected leader answer {other:?}"
            ))),
        }
    }

    /// Make exactly `voters` the voting members (others stay learners).
    pub async fn change_membership(&self, voters: BTreeSet<NodeId>) -> Result<u64, RaftError> {
        match self
            .leader_op_within(LeaderOp::ChangeMembership { voters }, MEMBERSHIP_TIMEOUT)
            .await?
        {
            LeaderOk::Done { index } => Ok(index),
            other => Err(RaftError::Fatal(format!(
                "unexpected leader answer {other:?}"
            ))),
        }
    }

    /// Remove a node from the cluster entirely.
    pub async fn remove_node(&self, id: NodeId) -> Result<u64, RaftError> {
        match self.leader_op(LeaderOp::RemoveNode { id }).await? {
            LeaderOk::Done { index } => Ok(index),
            other => Err(RaftError::Fatal(format!(
                "unexpected leader answer {other:?}"
            ))),
        }
    }

    /// Build a snapshot now (and let openraft purge the log behind it).
    pub async fn snapshot(&self) -> Result<u64, RaftError> {
        let applied = self.applied_index();
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| RaftError::Fatal(e.to_string()))?;
        let mut rx = self.raft.metrics();
        // Building a snapshot of a large state takes minutes; the admin
        // endpoint allows as long.
        let result = tokio::time::timeout(
            MEMBERSHIP_TIMEOUT,
            rx.wait_for(|m| m.snapshot.map(|s| s.index).unwrap_or(0) >= applied),
        )
        .await
        .map(|r| r.map(|m| m.snapshot.map(|s| s.index).unwrap_or(0)));
        match result {
            Ok(Ok(index)) => Ok(index),
            Ok(Err(_)) => Err(RaftError::Fatal("raft stopped".into())),
            Err(_) => Err(RaftError::Timeout("snapshot".into())),
        }
    }

    /// Write a consistent backup of the whole state (same format as a
    /// snapshot) to `out`. Blocking: call from a blocking thread.
    pub fn backup<W: Write>(&self, out: W) -> Result<storage::SnapshotSummary, RaftError> {
        let read = self.sm.store().read()?;
        Ok(storage::export_snapshot(&read, out)?)
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        let _ = self.sm.store().flush();
    }
}

fn membership_result<A: Application>(
    node: &RaftNode<A>,
    r: Result<
        openraft::raft::ClientWriteResponse<crate::types::TypeConfig>,
        ORaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>,
    >,
) -> Result<LeaderOk, RaftError> {
    use openraft::error::ChangeMembershipError;
    match r {
        Ok(resp) => Ok(LeaderOk::Done {
            index: resp.log_id.index,
        }),
        Err(ORaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
            Err(RaftError::NotLeader {
                leader: node.leader(),
            })
        }
        Err(ORaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(_),
        ))) => Err(RaftError::MembershipInProgress),
        Err(ORaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
            Err(RaftError::Invalid(e.to_string()))
        }
        Err(e) => Err(RaftError::Fatal(e.to_string())),
    }
}
