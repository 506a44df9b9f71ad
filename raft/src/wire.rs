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
}

/// Mark an `Invalid` that is a build too old to join, or a joiner whose id
/// or address a member has: a variant of its own would be undecodable to
/// followers of builds from before it.
const BUILD_TOO_OLD: &str = "build too old: ";
const MEMBER_CONFLICT: &str = "member conflict: ";

impl From<LeaderErr> for RaftError {
    fn from(e: LeaderErr) -> Self {
        match e {
            LeaderErr::NotLeader { leader } => RaftError::NotLeader { leader },
            LeaderErr::NoQuorum(s) => RaftError::NoQuorum(s),
            LeaderErr::MembershipInProgress => RaftError::MembershipInProgress,
            LeaderErr::Invalid(s) => {
                if let Some(why) = s.strip_prefix(BUILD_TOO_OLD) {
                    RaftError::BuildTooOld(why.to_string())
                } else if let Some(why) = s.strip_prefix(MEMBER_CONFLICT) {
                    RaftError::MemberConflict(why.to_string())
                } else {
                    RaftError::Invalid(s)
                }
            }
            LeaderErr::OutcomeUnknown(s) => RaftError::OutcomeUnknown(s),
            LeaderErr::Fatal(s) => RaftError::Fatal(s),
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
            RaftError::BuildTooOld(s) => LeaderErr::Invalid(format!("{BUILD_TOO_OLD}{s}")),
            RaftError::MemberConflict(s) => LeaderErr::Invalid(format!("{MEMBER_CONFLICT}{s}")),
            other => LeaderErr::Fatal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_build_too_old_survives_the_trip_as_an_invalid_every_build_decodes() {
        let sent = LeaderErr::from(RaftError::BuildTooOld("node 4 runs version 1".into()));
        assert!(matches!(&sent, LeaderErr::Invalid(s) if s.ends_with("node 4 runs version 1")));
        match RaftError::from(sent) {
            RaftError::BuildTooOld(s) => assert_eq!(s, "node 4 runs version 1"),
            other => panic!("{other:?}"),
        }
        let sent = LeaderErr::from(RaftError::MemberConflict("node 1 already uses it".into()));
        match RaftError::from(sent) {
            RaftError::MemberConflict(s) => assert_eq!(s, "node 1 already uses it"),
            other => panic!("{other:?}"),
        }
        match RaftError::from(LeaderErr::Invalid("cannot remove the last voter".into())) {
            RaftError::Invalid(s) => assert_eq!(s, "cannot remove the last voter"),
            other => panic!("{other:?}"),
        }
    }
}
