//! Per-principal event feeds, appended in the same transaction as the
//! change they describe, so a feed never shows a change that did not
//! commit or misses one that did.

use serde::{Deserialize, Serialize};
use storage::{ReadTxn, Table, WriteTxn};

const EVENTS: Table<Event> = Table::new("events");
const SEQ: Table<u64> = Table::new("event_seq");

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    /// e.g. `order.placed`.
    pub kind: String,
    /// Unix milliseconds (from the command, never the clock).
    pub at: i64,
    /// JSON text (bincode cannot carry self-describing JSON values).
    pub data: String,
}

std::thread_local! {
    /// Principals whose feed grew during the apply running on this thread
    /// (see [`collect_appends`]).
    static APPENDED: std::cell::RefCell<Option<Vec<String>>> = const { std::cell::RefCell::new(None) };
}

/// Runs `apply` and returns, with its result, the principals whose feeds
/// it appended to — so the node can wake only their long polls once the
/// transaction commits. Recording has no effect on state.
pub fn collect_appends<R>(apply: impl FnOnce() -> R) -> (R, Vec<String>) {
    let outer = APPENDED.with(|a| a.borrow_mut().replace(Vec::new()));
    let r = apply();
    let mut fed = APPENDED
        .with(|a| std::mem::replace(&mut *a.borrow_mut(), outer))
        .unwrap_or_default();
    fed.sort_unstable();
    fed.dedup();
    (r, fed)
}

fn key(principal: &str, seq: u64) -> Vec<u8> {
    format!("{principal}/{seq:020}").into_bytes()
}

/// Events kept per principal; older ones are dropped as new ones arrive
/// (a cursor behind the window gets a clear `410 cursor_expired`).
pub const RETAINED: u64 = 1000;

/// Append an event to `principal`'s feed; returns its sequence number.
pub fn append(
    txn: &WriteTxn,
    principal: &str,
    kind: &str,
    at: i64,
    data: &serde_json::Value,
) -> storage::Result<u64> {
    append_retaining(txn, principal, kind, at, data, RETAINED)
}

fn append_retaining(
    txn: &WriteTxn,
    principal: &str,
    kind: &str,
    at: i64,
    data: &serde_json::Value,
    retain: u64,
) -> storage::Result<u64> {
    let seq = txn.get(SEQ, principal.as_bytes())?.unwrap_or(0) + 1;
    txn.put(SEQ, principal.as_bytes(), &seq)?;
    let e = Event {
        seq,
        kind: kind.to_string(),
        at,
        data: data.to_string(),
    };
    txn.put(EVENTS, &key(principal, seq), &e)?;
    APPENDED.with(|a| {
        if let Some(v) = a.borrow_mut().as_mut() {
            v.push(principal.to_string());
        }
    });
    // One in, one out: the feed holds the last `retain` events.
    if seq > retain {
        txn.delete(EVENTS, &key(principal, seq - retain))?;
    }
    Ok(seq)
}

/// The oldest sequence number still in `principal`'s feed (1 while nothing
/// was dropped).
pub fn oldest_retained(read: &ReadTxn, principal: &str) -> storage::Result<u64> {
    Ok(last_seq(read, principal)?.saturating_sub(RETAINED) + 1)
}

/// Up to `limit` events of `principal` after `after`.
pub fn after(
    read: &ReadTxn,
    principal: &str,
    after: u64,
    limit: usize,
) -> storage::Result<Vec<Event>> {
    let prefix = format!("{principal}/");
    let rows = read.range(
        EVENTS,
        storage::within(key(principal, after.saturating_add(1)), prefix.as_bytes()),
        limit,
    )?;
    Ok(rows
        .into_iter()
        .take_while(|(k, _)| k.starts_with(prefix.as_bytes()))
        .map(|(_, e)| e)
        .collect())
}

/// The last sequence number of `principal`'s feed, inside a write.
pub fn last_seq_in(txn: &WriteTxn, principal: &str) -> storage::Result<u64> {
    Ok(txn.get(SEQ, principal.as_bytes())?.unwrap_or(0))
}

/// The last sequence number of `principal`'s feed.
pub fn last_seq(read: &ReadTxn, principal: &str) -> storage::Result<u64> {
    Ok(read.get(SEQ, principal.as_bytes())?.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use storage::{Durability, Store};

    #[test]
    fn the_feed_keeps_a_window() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s.redb"), 1 << 20).unwrap();
        let txn = store.write().unwrap();
        for i in 0..5 {
            append_retaining(&txn, "p", "k", i, &serde_json::json!({"i": i}), 3).unwrap();
        }
        append_retaining(&txn, "q", "k", 9, &serde_json::json!({}), 3).unwrap();
        txn.commit(Durability::Immediate).unwrap();
        let read = store.read().unwrap();
        let seqs: Vec<u64> = after(&read, "p", 0, 10)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, [3, 4, 5]);
        assert_eq!(after(&read, "q", 0, 10).unwrap().len(), 1);
    }
}
