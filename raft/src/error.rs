use crate::types::{NodeId, NodeInfo};

/// Errors of the replication layer, as the application sees them.
#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    /// This node is not the leader and could not forward; `leader` is the
    /// best known leader, if any.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<(NodeId, NodeInfo)> },
    /// The leader cannot reach a majority: the write or read cannot be
    /// confirmed now, but may succeed later.
    #[error("no quorum: {0}")]
    NoQuorum(String),
    #[error("timed out waiting for {0}")]
    Timeout(String),
    /// A membership change is already under way.
    #[error("membership change in progress")]
    MembershipInProgress,
    /// The request reached a leader but we cannot tell whether it was
    /// committed (e.g. leadership was lost meanwhile). Retrying is only safe
    /// for idempotent requests.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("the command could not be decoded: {0}")]
    Undecodable(String),
    #[error("peer network: {0}")]
    Network(String),
    #[error("storage: {0}")]
    Storage(#[from] storage::StorageError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("raft stopped: {0}")]
    Fatal(String),
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// The command needs a newer build on some node of the cell.
    #[error("upgrade in progress: {0}")]
    UpgradeInProgress(String),
    /// A joining node runs a build older than the cell writes for.
    #[error("build too old: {0}")]
    BuildTooOld(String),
    /// A joining node's id or address is already a member's.
    #[error("member conflict: {0}")]
    MemberConflict(String),
    /// Raft stopped on this node (after a fatal error, or shutting down):
    /// another node can take the request.
    #[error("this node stopped: {0}")]
    Stopped(String),
}

impl RaftError {
    /// A copy for each waiter of a failed batch (sources become text).
    pub fn duplicate(&self) -> RaftError {
        match self {
            RaftError::NotLeader { leader } => RaftError::NotLeader {
                leader: leader.clone(),
            },
            RaftError::NoQuorum(s) => RaftError::NoQuorum(s.clone()),
            RaftError::Timeout(s) => RaftError::Timeout(s.clone()),
            RaftError::MembershipInProgress => RaftError::MembershipInProgress,
            RaftError::OutcomeUnknown(s) => RaftError::OutcomeUnknown(s.clone()),
            RaftError::Invalid(s) => RaftError::Invalid(s.clone()),
            RaftError::Undecodable(s) => RaftError::Undecodable(s.clone()),
            RaftError::Network(s) => RaftError::Network(s.clone()),
            RaftError::Tls(s) => RaftError::Tls(s.clone()),
            RaftError::UpgradeInProgress(s) => RaftError::UpgradeInProgress(s.clone()),
            RaftError::BuildTooOld(s) => RaftError::BuildTooOld(s.clone()),
            RaftError::MemberConflict(s) => RaftError::MemberConflict(s.clone()),
            RaftError::Stopped(s) => RaftError::Stopped(s.clone()),
            other => RaftError::Fatal(other.to_string()),
        }
    }

    /// True when retrying the same request later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            RaftError::NotLeader { .. }
                | RaftError::NoQuorum(_)
                | RaftError::Timeout(_)
                | RaftError::MembershipInProgress
                | RaftError::OutcomeUnknown(_)
                | RaftError::Network(_)
        )
    }
}
