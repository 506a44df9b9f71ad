//! Per-principal event feeds, appended in the same transaction as the
//! change they describe, so a feed never shows a change that did not
//! commit or misses one that did.

use std::ops::Bound;

use serde::{Deserialize, Serialize};
use storage::{ReadTxn, Table, WriteTxn};

/// `<principal>/<seq, 20 digits>` → event. A feed's last sequence number
/// is its last key: a counter row beside it would cost a second write per
/// event. (Stores written before this hold an `event_seq` table that
/// nothing reads any more.)
const EVENTS: Table<Event> = Table::new("events");

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

fn prefix(principal: &str) -> String {
    format!("{principal}/")
}

/// The sequence number in a key of `principal`'s feed.
fn seq_of(key: &[u8], principal: &str) -> Option<u64> {
    std::str::from_utf8(key.get(principal.len() + 1..)?)
        .ok()?
        .parse()
        .ok()
}

/// Events kept per principal; older ones are dropped as new ones arrive
/// (a cursor behind the window gets a clear `410 cursor_expired`).
pub const RETAINED: u64 = 1000;

/// `<principal>/<holder>` → the last sequence number that holder (a
/// webhook) has taken from the feed: pruning keeps everything after the
/// lowest hold, up to `MAX_HELD` events, so a webhook whose endpoint was
/// down for a while still gets every event once it is back.
const HOLDS: Table<u64> = Table::new("event_holds");

/// Events a hold keeps at most (beyond that its holder misses the oldest,
/// and is told so).
pub const MAX_HELD: u64 = 100_000;

/// Feeds are pruned every this many appends rather than one event per
/// append: the oldest events sit on a different B-tree leaf from the
/// newest, and rewriting that leaf on every append cost as much again as
/// the append. Until a prune, up to this many events older than the window
/// stay stored; reads never return them.
const PRUNE_EVERY: u64 = 64;

/// Append an event to `principal`'s feed; returns its sequence number.
pub fn append(
    txn: &WriteTxn,
    principal: &str,
    kind: &str,
    at: i64,
    data: &serde_json::Value,
) -> storage::Result<u64> {
    append_retaining(txn, principal, kind, at, &data.to_string(), RETAINED)
}

/// Append the same event to several feeds (its JSON rendered once).
pub fn append_to_all(
    txn: &WriteTxn,
    principals: &[&str],
    kind: &str,
    at: i64,
    data: &serde_json::Value,
) -> storage::Result<()> {
    let data = data.to_string();
    for p in principals {
        append_retaining(txn, p, kind, at, &data, RETAINED)?;
    }
    Ok(())
}

fn append_retaining(
    txn: &WriteTxn,
    principal: &str,
    kind: &str,
    at: i64,
    data: &str,
    retain: u64,
) -> storage::Result<u64> {
    let seq = last_seq_in(txn, principal)? + 1;
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
    if seq > retain && seq % PRUNE_EVERY == 0 {
        let mut oldest_kept = seq - retain + 1;
        if let Some(held) = lowest_hold(txn, principal)? {
            oldest_kept =
                oldest_kept.min(held.saturating_add(1).max(seq.saturating_sub(MAX_HELD) + 1));
        }
        txn.delete_range(EVENTS, key(principal, 0)..key(principal, oldest_kept))?;
    }
    Ok(seq)
}

fn hold_key(principal: &str, holder: &str) -> Vec<u8> {
    format!("{principal}/{holder}").into_bytes()
}

/// `holder` has taken `principal`'s events up to `seq`: keep the ones after
/// it (`None`: it needs none any more).
pub fn hold(
    txn: &WriteTxn,
    principal: &str,
    holder: &str,
    seq: Option<u64>,
) -> storage::Result<()> {
    match seq {
        Some(seq) => txn.put(HOLDS, &hold_key(principal, holder), &seq),
        None => txn.delete(HOLDS, &hold_key(principal, holder)).map(drop),
    }
}

fn lowest_hold(txn: &WriteTxn, principal: &str) -> storage::Result<Option<u64>> {
    // Holders are the owner's webhooks: a few per vendor, but an account
    // may own many vendors. Builds before command version 4 read only the
    // first 64, and pruned what the others had not sent.
    let all = crate::command_version::recorded_in(txn)? >= 4;
    Ok(txn
        .range(
            HOLDS,
            whole_feed(principal),
            if all { usize::MAX } else { 64 },
        )?
        .into_iter()
        .map(|(_, seq)| seq)
        .min())
}

/// The oldest sequence number still in `principal`'s feed (1 while nothing
/// was dropped).
pub fn oldest_retained(read: &ReadTxn, principal: &str) -> storage::Result<u64> {
    Ok(window_start(last_seq(read, principal)?, RETAINED))
}

fn window_start(last: u64, retain: u64) -> u64 {
    last.saturating_sub(retain) + 1
}

/// Up to `limit` events of `principal` after `after`.
pub fn after(
    read: &ReadTxn,
    principal: &str,
    after: u64,
    limit: usize,
) -> storage::Result<Vec<Event>> {
    after_retaining(read, principal, after, limit, RETAINED)
}

fn after_retaining(
    read: &ReadTxn,
    principal: &str,
    after: u64,
    limit: usize,
    retain: u64,
) -> storage::Result<Vec<Event>> {
    // Events older than the window may still be stored until the next prune.
    let from = after
        .saturating_add(1)
        .max(window_start(last_seq(read, principal)?, retain));
    let prefix = prefix(principal);
    let rows = read.range(
        EVENTS,
        storage::within(key(principal, from), prefix.as_bytes()),
        limit,
    )?;
    Ok(rows.into_iter().map(|(_, e)| e).collect())
}

/// Up to `limit` events of `principal` after `after` that are still
/// stored, older than the window or not (what a hold kept): a holder reads
/// on from its own cursor.
pub fn after_stored(
    read: &ReadTxn,
    principal: &str,
    after: u64,
    limit: usize,
) -> storage::Result<Vec<Event>> {
    let rows = read.range(
        EVENTS,
        storage::within(
            key(principal, after.saturating_add(1)),
            prefix(principal).as_bytes(),
        ),
        limit,
    )?;
    Ok(rows.into_iter().map(|(_, e)| e).collect())
}

/// Every stored row of `principal`'s feed (or of its holds).
fn whole_feed(principal: &str) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let p = prefix(principal);
    storage::within(p.clone().into_bytes(), p.as_bytes())
}

/// The sequence number of a feed whose last key is `last`.
fn seq_at(last: Option<Vec<u8>>, principal: &str) -> u64 {
    last.and_then(|k| seq_of(&k, principal)).unwrap_or(0)
}

/// The last sequence number of `principal`'s feed, inside a write.
pub fn last_seq_in(txn: &WriteTxn, principal: &str) -> storage::Result<u64> {
    Ok(seq_at(
        txn.last_key_in(EVENTS, whole_feed(principal))?,
        principal,
    ))
}

/// The last sequence number of `principal`'s feed.
pub fn last_seq(read: &ReadTxn, principal: &str) -> storage::Result<u64> {
    Ok(seq_at(
        read.last_key_in(EVENTS, whole_feed(principal))?,
        principal,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use storage::{Durability, Store};

    fn stored(read: &ReadTxn, principal: &str) -> Vec<u64> {
        read.range(EVENTS, whole_feed(principal), usize::MAX)
            .unwrap()
            .iter()
            .map(|(_, e)| e.seq)
            .collect()
    }

    #[test]
    fn the_feed_keeps_a_window() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s.redb"), 1 << 20).unwrap();
        let txn = store.write().unwrap();
        for i in 0..5 {
            append_retaining(&txn, "p", "k", i, r#"{"i":0}"#, 3).unwrap();
        }
        append_retaining(&txn, "q", "k", 9, "{}", 3).unwrap();
        assert_eq!(last_seq_in(&txn, "p").unwrap(), 5);
        txn.commit(Durability::Immediate).unwrap();
        let read = store.read().unwrap();
        let seqs = |after: u64| -> Vec<u64> {
            after_retaining(&read, "p", after, 10, 3)
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect()
        };
        // Older events are still stored (no prune yet) but never read.
        assert_eq!(stored(&read, "p"), [1, 2, 3, 4, 5]);
        assert_eq!(seqs(0), [3, 4, 5]);
        assert_eq!(seqs(1), [3, 4, 5]);
        assert_eq!(seqs(3), [4, 5]);
        assert_eq!(seqs(5), Vec::<u64>::new());
        assert_eq!(last_seq(&read, "p").unwrap(), 5);
        assert_eq!(last_seq(&read, "q").unwrap(), 1);
        assert_eq!(last_seq(&read, "nobody").unwrap(), 0);
        assert_eq!(after(&read, "q", 0, 10).unwrap().len(), 1);
    }

    #[test]
    fn pruning_drops_what_fell_out_of_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s.redb"), 1 << 20).unwrap();
        let txn = store.write().unwrap();
        for i in 0..(2 * PRUNE_EVERY + 2) {
            append_retaining(&txn, "p", "k", i as i64, "{}", 3).unwrap();
        }
        // A neighbour whose id starts like this one is left alone.
        append_retaining(&txn, "p2", "k", 0, "{}", 3).unwrap();
        txn.commit(Durability::Immediate).unwrap();
        let read = store.read().unwrap();
        let last = 2 * PRUNE_EVERY + 2;
        // Pruned at 2 * PRUNE_EVERY down to its window, then two more.
        let kept: Vec<u64> = (2 * PRUNE_EVERY - 2..=last).collect();
        assert_eq!(stored(&read, "p"), kept);
        assert_eq!(stored(&read, "p2"), [1]);
        assert_eq!(last_seq(&read, "p").unwrap(), last);
    }

    #[test]
    fn holds_keep_what_their_holders_have_not_taken() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s.redb"), 1 << 20).unwrap();
        let txn = store.write().unwrap();
        hold(&txn, "p", "w1", Some(5)).unwrap();
        hold(&txn, "p", "w2", Some(9)).unwrap();
        // Another principal's hold does not keep this feed.
        hold(&txn, "p2", "w3", Some(0)).unwrap();
        for i in 0..2 * PRUNE_EVERY {
            append_retaining(&txn, "p", "k", i as i64, "{}", 3).unwrap();
        }
        txn.commit(Durability::Immediate).unwrap();
        let read = store.read().unwrap();
        let last = 2 * PRUNE_EVERY;
        assert_eq!(stored(&read, "p"), (6..=last).collect::<Vec<_>>());
        // Readers of the feed still see its window; a holder reads on.
        assert_eq!(
            after_retaining(&read, "p", 0, 10, 3).unwrap()[0].seq,
            last - 2
        );
        let held: Vec<u64> = after_stored(&read, "p", 5, 3)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(held, [6, 7, 8]);
        drop(read);
        // One holder has taken everything so far, the other left: what
        // comes after is kept until taken.
        let txn = store.write().unwrap();
        hold(&txn, "p", "w1", Some(last)).unwrap();
        hold(&txn, "p", "w2", None).unwrap();
        for i in 0..PRUNE_EVERY {
            append_retaining(&txn, "p", "k", i as i64, "{}", 3).unwrap();
        }
        txn.commit(Durability::Immediate).unwrap();
        let read = store.read().unwrap();
        assert_eq!(
            stored(&read, "p"),
            (last + 1..=last + PRUNE_EVERY).collect::<Vec<_>>()
        );
        drop(read);
        // Without holders: the window again.
        let txn = store.write().unwrap();
        hold(&txn, "p", "w1", None).unwrap();
        for i in 0..PRUNE_EVERY {
            append_retaining(&txn, "p", "k", i as i64, "{}", 3).unwrap();
        }
        txn.commit(Durability::Immediate).unwrap();
        let read = store.read().unwrap();
        let last = 4 * PRUNE_EVERY;
        assert_eq!(stored(&read, "p"), (last - 2..=last).collect::<Vec<_>>());
    }

    /// From command version 4 every hold counts, not only the first 64
    /// (an owner of many vendors has that many webhooks).
    #[test]
    fn from_version_4_every_hold_keeps_the_feed() {
        use crate::command_version;
        for version in [3, 4] {
            let (_dir, store) = command_version::store_at(version);
            let txn = store.write().unwrap();
            // 64 holders that have taken everything, and one behind them
            // in key order that has taken nothing.
            for w in 0..64 {
                hold(&txn, "p", &format!("w{w:03}"), Some(u64::MAX)).unwrap();
            }
            hold(&txn, "p", "w999", Some(0)).unwrap();
            for i in 0..2 * PRUNE_EVERY {
                append_retaining(&txn, "p", "k", i as i64, "{}", 3).unwrap();
            }
            txn.commit(Durability::Immediate).unwrap();
            let read = store.read().unwrap();
            let kept = stored(&read, "p");
            if version >= 4 {
                assert_eq!(kept, (1..=2 * PRUNE_EVERY).collect::<Vec<_>>());
            } else {
                // As older builds pruned, on every node alike.
                assert_eq!(kept.first(), Some(&(2 * PRUNE_EVERY - 2)));
            }
        }
    }
}
