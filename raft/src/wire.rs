//! Messages that cross the peer port besides openraft's own RPCs.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::{
    types::{Command, NodeId, NodeInfo, Reply},
    RaftError,
};

/// Work only the leader can do; a follower forwards it.
#[derive(Debug, Serialize, Deserialize)]
pub enum LeaderOp {
    Write(Command),
    /// Confirm leadership with a quorum and return the index a
    /// linearizable read must wait for.
    ReadIndex,
    AddLearner {
        id: NodeId,
        node: NodeInfo,
    },
    ChangeMembership {
        voters: BTreeSet<NodeId>,
    },
    RemoveNode {
        id: NodeId,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum LeaderOk {
    Written { index: u64, reply: Reply },
    ReadIndex(u64),
    Done { index: u64 },
}

/// Errors as they travel between nodes.
#[derive(Debug, Serialize, Deserialize)]
pub enum LeaderErr {
    NotLeader { leader: Option<(NodeId, NodeInfo)> },
    NoQuorum(String),
    MembershipInProgress,
    Invalid(String),
    OutcomeUnknown(String),
    Fatal(String),
    BuildTooOld(String),
}

impl From<LeaderErr> for RaftError {
    fn from(e: LeaderErr) -> Self {
        match e {
            LeaderErr::NotLeader { leader } => RaftError::NotLeader { leader },
            LeaderErr::NoQuorum(s) => RaftError::NoQuorum(s),
            LeaderErr::MembershipInProgress => RaftError::MembershipInProgress,
            LeaderErr::Invalid(s) => RaftError::Invalid(s),
            LeaderErr::OutcomeUnknown(s) => RaftError::OutcomeUnknown(s),
            LeaderErr::Fatal(s) => RaftError::Fatal(s),
            LeaderErr::BuildTooOld(s) => RaftError::BuildTooOld(s),
        }
    }
}

impl From<RaftError> for LeaderErr {
    fn from(e: RaftError) -> Self {
        match e {
            RaftError::NotLeader { leader } => LeaderErr::NotLeader { leader },
            RaftError::NoQuorum(s) => LeaderErr::NoQuorum(s),
            RaftError::MembershipInProgress => LeaderErr::MembershipInProgress,
            RaftError::Invalid(s) | RaftError::Undecodable(s) => LeaderErr::Invalid(s),
            RaftError::OutcomeUnknown(s) | RaftError::Timeout(s) | RaftError::Network(s) => {
                LeaderErr::OutcomeUnknown(s)
            }
            RaftError::BuildTooOld(s) => LeaderErr::BuildTooOld(s),
            other => LeaderErr::Fatal(other.to_string()),
        }
    }
}
