//! A node meeting a committed command its build cannot decode (one a newer
//! build's leader wrote) stops applying instead of skipping it: the batch
//! leaves no trace, so the same node with a newer build resumes from that
//! entry and ends where every other node did.

use std::sync::Arc;

use openraft::{storage::RaftStateMachine, CommittedLeaderId, EntryPayload, LogId};
use raft::{
    types::{Command, Entry},
    Application, ApplyContext, StateMachineStore,
};
use serde::{Deserialize, Serialize};

const COUNT: storage::Table<u64> = storage::Table::new("count");

/// The commands of the older build.
#[derive(Serialize, Deserialize)]
enum Old {
    Add(u64),
}

/// The newer build's: the old ones, then one more at the end.
#[derive(Serialize, Deserialize)]
enum New {
    Add(u64),
    Double,
}

fn count(txn: &storage::WriteTxn) -> storage::Result<u64> {
    Ok(txn.get(COUNT, b"n")?.unwrap_or(0))
}

struct OldApp;

impl Application for OldApp {
    type Command = Old;
    type Response = u64;
    type Effect = ();

    fn apply(
        &self,
        txn: &storage::WriteTxn,
        _: &mut ApplyContext<()>,
        cmd: Old,
    ) -> storage::Result<u64> {
        let Old::Add(k) = cmd;
        let n = count(txn)? + k;
        txn.put(COUNT, b"n", &n)?;
        Ok(n)
    }
}

struct NewApp;

impl Application for NewApp {
    type Command = New;
    type Response = u64;
    type Effect = ();
    const VERSION: u32 = 2;

    fn apply(
        &self,
        txn: &storage::WriteTxn,
        _: &mut ApplyContext<()>,
        cmd: New,
    ) -> storage::Result<u64> {
        let n = match cmd {
            New::Add(k) => count(txn)? + k,
            New::Double => count(txn)? * 2,
        };
        txn.put(COUNT, b"n", &n)?;
        Ok(n)
    }
}

fn entry(index: u64, cmds: &[New]) -> Entry {
    let items = cmds
        .iter()
        .map(|c| serde_bytes::ByteBuf::from(storage::encode(c).unwrap()))
        .collect();
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Command(items)),
    }
}

fn stored_count(dir: &std::path::Path) -> u64 {
    let store = storage::Store::open(dir.join("state.redb"), 1 << 20).unwrap();
    let read = store.read().unwrap();
    read.get(COUNT, b"n").unwrap().unwrap_or(0)
}

#[tokio::test]
async fn an_undecodable_command_stops_apply_and_leaves_no_trace() {
    let dir = tempfile::tempdir().unwrap();
    let log = [
        entry(1, &[New::Add(5)]),
        // A batch mixing a command both builds know with one only the new
        // build knows: none of it may land on the old node.
        entry(2, &[New::Add(1), New::Double]),
        entry(3, &[New::Add(3)]),
    ];
    {
        let mut old = StateMachineStore::open(dir.path(), Arc::new(OldApp), 1 << 20).unwrap();
        old.apply(vec![log[0].clone()]).await.unwrap();
        let err = old
            .apply(vec![log[1].clone(), log[2].clone()])
            .await
            .expect_err("the old build must stop at entry 2");
        assert!(err.to_string().contains("entry 2"), "{err}");
        let (applied, _) = old.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(1));
    }
    assert_eq!(
        stored_count(dir.path()),
        5,
        "entry 2's first command must not have landed"
    );

    // The same node, upgraded, resumes from entry 2 and ends where a node
    // that always ran the new build ends.
    let mut upgraded = StateMachineStore::open(dir.path(), Arc::new(NewApp), 1 << 20).unwrap();
    upgraded
        .apply(vec![log[1].clone(), log[2].clone()])
        .await
        .unwrap();
    drop(upgraded);
    let fresh = tempfile::tempdir().unwrap();
    let mut always_new = StateMachineStore::open(fresh.path(), Arc::new(NewApp), 1 << 20).unwrap();
    always_new.apply(log.to_vec()).await.unwrap();
    drop(always_new);
    assert_eq!(stored_count(dir.path()), (5 + 1) * 2 + 3);
    assert_eq!(stored_count(fresh.path()), stored_count(dir.path()));
}
