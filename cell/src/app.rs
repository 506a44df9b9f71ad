//! The cell's replicated state machine: every command the cell can commit,
//! and what happens on each node after a batch is applied.

use serde::{Deserialize, Serialize};
use storage::WriteTxn;
use tokio::sync::broadcast;

use crate::{
    identity::{self, IdentityCommand, IdentityResponse},
    kv::{self, KvCommand, KvResponse},
};

/// Everything that goes through the Raft log.
#[derive(Debug, Serialize, Deserialize)]
pub enum Command {
    Kv(KvCommand),
    Identity(IdentityCommand),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    Kv(KvResponse),
    Identity(IdentityResponse),
}

/// What changed, announced in-process after commit.
#[derive(Debug, Clone)]
pub enum Change {
    Kv {
        key: String,
    },
    /// A snapshot replaced the whole state.
    Everything,
}

pub struct CellApp {
    changes: broadcast::Sender<Change>,
}

impl CellApp {
    pub fn new() -> Self {
        let (changes, _) = broadcast::channel(4096);
        Self { changes }
    }

    /// In-process change notifications (cache invalidation, indexers,
    /// long-poll waiters). Lagging subscribers must resynchronise.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }
}

impl Default for CellApp {
    fn default() -> Self {
        Self::new()
    }
}

impl raft::Application for CellApp {
    type Command = Command;
    type Response = Response;
    type Effect = Change;

    fn apply(
        &self,
        txn: &WriteTxn,
        ctx: &mut raft::ApplyContext<Change>,
        cmd: Command,
    ) -> storage::Result<Response> {
        match cmd {
            Command::Kv(c) => {
                let (resp, changed) = kv::apply(txn, c)?;
                if let Some(key) = changed {
                    ctx.emit(Change::Kv { key });
                }
                Ok(Response::Kv(resp))
            }
            Command::Identity(c) => Ok(Response::Identity(identity::apply(txn, c)?)),
        }
    }

    fn committed(&self, _applied_index: u64, effects: Vec<Change>) {
        for e in effects {
            let _ = self.changes.send(e);
        }
    }

    fn snapshot_installed(&self, _applied_index: u64) {
        let _ = self.changes.send(Change::Everything);
    }
}
