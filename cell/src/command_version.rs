//! Which commands an older build could not apply, and the cell's recorded
//! command version (see `raft::versions` for how it rises).
//!
//! Version 1 is what the builds from before versions apply alike (up to
//! the one that added ratings). Version 2 adds vendor opening hours and
//! sealed webhook secrets — a build before them cannot decode the first,
//! and would sign with the sealed text as if it were the secret for the
//! second — and writes `offer.created` and `route.matched` events with
//! money and RFC 3339 times, where version 1 wrote minor units and epoch
//! milliseconds. Builds between (which answer like version 1) decode
//! hours but write the newer event bodies: roll from them all at once.
//! Version 3 refuses, in apply, a round of offers for a delivery that has
//! one out, skips a driver who holds a live offer, and locks a delivery
//! for a while after too many wrong proof codes (older builds applied
//! whatever round the dispatcher proposed and took any number of codes).
//! Version 4 stands a driver down when they stop being approved —
//! suspended, or an approved profile changed to a different vehicle,
//! more seats or a new qualification, which goes back to review: open
//! offers withdrawn, the delivery in hand back to dispatch, routes still
//! ahead back to the market; only an approved driver may arrive or pick
//! up. A driver who narrows their profile gives up, the same way, what it
//! no longer fits; going offline withdraws open offers. An unassigned
//! delivery is searched for again every minute for three hours (a ride
//! for 15 minutes); offers are dropped a week after they were made; a
//! round of offers apply refused every driver of no longer starts the
//! delivery's count of empty rounds over. Event pruning keeps what any of
//! an owner's webhooks has not sent, not only the first 64. The route
//! market releases and matches the routes with the nearest windows, not
//! the 5,000 built first, and takes a cancelled order's stop (and its
//! pay) off its route. Webhooks are found only through their id index
//! (rising to version 4 indexes any registered before the index existed),
//! so a deleted one's late report no longer scans them all.

use serde::{Deserialize, Serialize};
use storage::{ReadTxn, Table, WriteTxn};

use crate::{app::Command, catalog::CatalogCommand, webhooks::WebhookCommand};

/// The newest command set this build applies.
pub const CURRENT: u32 = 4;

/// Readable by tests and tools that inspect a data directory.
pub const TABLE_NAME: &str = "cluster_version";
const TABLE: Table<u32> = Table::new(TABLE_NAME);
const KEY: &[u8] = b"v";

#[derive(Debug, Serialize, Deserialize)]
pub enum ClusterCommand {
    /// Every node applies commands up to `version` (the recorded version
    /// never falls).
    RaiseVersion { version: u32 },
}

/// The command set `cmd` needs on every node.
pub fn required(cmd: &Command) -> u32 {
    match cmd {
        Command::Catalog(c) => match **c {
            CatalogCommand::CreateVendorWithHours { .. }
            | CatalogCommand::UpdateVendorWithHours { .. } => 2,
            _ => 1,
        },
        Command::Webhooks(c) => match **c {
            WebhookCommand::Register { .. } | WebhookCommand::Reseal { .. } => 2,
            _ => 1,
        },
        // Written only once every member said it applies the version.
        Command::Cluster(_) => 1,
        _ => 1,
    }
}

/// The recorded version; 1 in state from before versions.
pub fn recorded(read: &ReadTxn) -> storage::Result<u32> {
    Ok(read.get(TABLE, KEY)?.unwrap_or(1))
}

/// The recorded version inside apply: what apply writes differently from
/// older builds (an event's body, say) depends on it, like a new command
/// does, so that every node writes the same.
pub fn recorded_in(txn: &WriteTxn) -> storage::Result<u32> {
    Ok(txn.get(TABLE, KEY)?.unwrap_or(1))
}

pub fn apply(txn: &WriteTxn, cmd: ClusterCommand) -> storage::Result<u32> {
    match cmd {
        ClusterCommand::RaiseVersion { version } => {
            let before = txn.get(TABLE, KEY)?.unwrap_or(1);
            let now = before.max(version);
            // Version 4 finds webhooks only through their id index.
            if before < 4 && now >= 4 {
                crate::webhooks::index_all(txn)?;
            }
            txn.put(TABLE, KEY, &now)?;
            Ok(now)
        }
    }
}

/// A fresh store whose recorded command version is `version` (for tests
/// that run apply at one version and the next).
#[cfg(test)]
pub(crate) fn store_at(version: u32) -> (tempfile::TempDir, storage::Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = storage::Store::open(dir.path().join("s.redb"), 1 << 20).unwrap();
    let txn = store.write().unwrap();
    apply(&txn, ClusterCommand::RaiseVersion { version }).unwrap();
    txn.commit(storage::Durability::Immediate).unwrap();
    (dir, store)
}
