//! The openraft type configuration shared by every node.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a node can be reached: its public/admin API and its peer port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub api_addr: String,
    pub peer_addr: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "api={} peer={}", self.api_addr, self.peer_addr)
    }
}

/// A log entry's payload: a batch of application commands, each encoded
/// by the application's codec. Concurrent writes travel as one entry so
/// they share one fsync on every node. The raft crate never looks inside.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command(pub Vec<serde_bytes::ByteBuf>);

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Command({} items)", self.0.len())
    }
}

/// What applying one command of a batch produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ItemReply {
    /// The application's encoded response.
    App(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The leader could not decode a forwarded command (one of a newer
    /// build) and kept it out of the log; nothing was changed.
    Undecodable(String),
}

/// What applying one entry produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// One reply per command of the batch, in order.
    Batch(Vec<ItemReply>),
    /// Blank and membership entries carry no command.
    Internal,
}

openraft::declare_raft_types!(
    /// openraft configuration of a marketcell node.
    pub TypeConfig:
        D = Command,
        R = Reply,
        NodeId = u64,
        Node = NodeInfo,
        SnapshotData = tokio::fs::File,
);

pub type NodeId = u64;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type Membership = openraft::Membership<NodeId, NodeInfo>;
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeInfo>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeInfo>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, NodeInfo>;
pub type Raft = openraft::Raft<TypeConfig>;
pub type OStorageError = openraft::StorageError<NodeId>;
