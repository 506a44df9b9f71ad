//! openraft's own conformance suite run against our log store and state
//! machine on real redb files.

use std::sync::Arc;

use openraft::{testing::StoreBuilder, StorageError, StorageIOError};
use raft::{log_store::LogStore, Application, ApplyContext, StateMachineStore};

/// A counter: the smallest application that exercises apply.
struct Counter;

const COUNT: storage::Table<u64> = storage::Table::new("count");

impl Application for Counter {
    type Command = u64;
    type Response = u64;
    type Effect = ();

    fn apply(
        &self,
        txn: &storage::WriteTxn,
        _ctx: &mut ApplyContext<()>,
        add: u64,
    ) -> storage::Result<u64> {
        let n = txn.get(COUNT, b"n")?.unwrap_or(0) + add;
        txn.put(COUNT, b"n", &n)?;
        Ok(n)
    }
}

struct Builder;

impl StoreBuilder<raft::types::TypeConfig, LogStore, StateMachineStore<Counter>, tempfile::TempDir>
    for Builder
{
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore<Counter>), StorageError<u64>> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
        let log =
            LogStore::open(dir.path().join("log.redb")).map_err(|e| StorageIOError::write(&e))?;
        let sm = StateMachineStore::open(dir.path(), Arc::new(Counter), 4 << 20)
            .map_err(|e| StorageIOError::write(&e))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    if let Err(e) = openraft::testing::Suite::test_all(Builder) {
        panic!("storage suite failed: {e}");
    }
}
