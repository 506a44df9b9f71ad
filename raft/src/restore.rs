//! Disaster recovery: seed an empty node from a backup (the stream
//! `GET /admin/backup` produces) as a single-voter cell, which then
//! grows back to full size by adding nodes (they receive snapshots).

use std::{collections::BTreeMap, io::Read, path::Path};

use storage::{Durability, Store, Table};

use crate::{
    types::{LogId, Membership, NodeId, NodeInfo, StoredMembership, Vote},
    RaftError,
};

/// What a restore produced.
#[derive(Debug, Clone, Copy)]
pub struct Restored {
    pub applied_index: u64,
    pub entries: u64,
}

/// Import `backup` into the empty raft data directory `dir` for node `id`.
/// Refuses to touch a directory that already holds a log or state, and a
/// backup the application's `check` refuses (with its reason): nothing is
/// left behind then.
pub fn restore_backup(
    dir: &Path,
    id: NodeId,
    info: NodeInfo,
    backup: impl Read,
    check: impl FnOnce(&storage::WriteTxn) -> Result<(), String>,
) -> Result<Restored, RaftError> {
    for f in ["log.redb", "log.segments", "state.redb"] {
        if dir.join(f).exists() {
            return Err(RaftError::Invalid(format!(
                "{} already exists: restore only into an empty data directory",
                dir.join(f).display()
            )));
        }
    }
    std::fs::create_dir_all(dir)?;
    let applied_table: Table<Option<LogId>> = Table::new(crate::state_machine::META_APPLIED_NAME);
    let membership_table: Table<StoredMembership> =
        Table::new(crate::state_machine::META_MEMBERSHIP_NAME);
    let store = Store::open(dir.join("state.redb"), 16 * 1024 * 1024)?;
    let txn = store.write()?;
    let summary =
        match storage::import_snapshot(&txn, std::io::BufReader::with_capacity(1 << 20, backup)) {
            Ok(s) => s,
            Err(e) => {
                drop(txn);
                drop(store);
                let _ = std::fs::remove_file(dir.join("state.redb"));
                return Err(e.into());
            }
        };
    let applied = txn.get(applied_table, b"v")?.flatten();
    let refused = match applied {
        None => Some("the backup holds no applied log id: not a cell backup".to_string()),
        Some(_) => check(&txn).err(),
    };
    let (Some(applied), None) = (applied, refused.as_ref()) else {
        drop(txn);
        drop(store);
        let _ = std::fs::remove_file(dir.join("state.redb"));
        return Err(RaftError::Invalid(refused.unwrap_or_default()));
    };
    // The restored node alone forms the new cell.
    let membership = Membership::from(BTreeMap::from([(id, info)]));
    txn.put(
        membership_table,
        b"v",
        &StoredMembership::new(Some(applied), membership),
    )?;
    txn.commit(Durability::Immediate)?;
    drop(store);
    // Continue in a term after the backup's, so new log ids sort after it.
    crate::log_store::seed(
        &dir.join("log.redb"),
        id,
        Vote::new(applied.leader_id.term, id),
    )?;
    Ok(Restored {
        applied_index: applied.index,
        entries: summary.entries,
    })
}
