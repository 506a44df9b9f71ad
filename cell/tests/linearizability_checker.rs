//! Tests of the linearizability checker in `common::linearizability` itself,
//! on hand-written histories and on histories generated from a simulated
//! sequential register.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::linearizability::{check, Event, Op, Outcome};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

// ---------------------------------------------------------------------------
// Hand-written histories. Times are microseconds after `base`.

struct History {
    base: Instant,
    events: Vec<Event>,
}

impl History {
    fn new() -> Self {
        History {
            base: Instant::now(),
            events: Vec::new(),
        }
    }

    fn at(&self, us: u64) -> Instant {
        self.base + Duration::from_micros(us)
    }

    fn op(mut self, client: usize, key: &str, op: Op, span: (u64, u64), outcome: Outcome) -> Self {
        let event = Event {
            client,
            key: key.to_string(),
            op,
            invoke: self.at(span.0),
            complete: Some(self.at(span.1)),
            outcome,
        };
        self.events.push(event);
        self
    }

    /// An operation that timed out: invoked at `invoke`, never completed.
    fn ambiguous(mut self, client: usize, key: &str, op: Op, invoke: u64) -> Self {
        let event = Event {
            client,
            key: key.to_string(),
            op,
            invoke: self.at(invoke),
            complete: None,
            outcome: Outcome::Unknown,
        };
        self.events.push(event);
        self
    }

    fn check(&self) -> Result<(), String> {
        check(&self.events)
    }
}

fn write(v: &str) -> Op {
    Op::Write(Some(v.as_bytes().to_vec()))
}

fn delete() -> Op {
    Op::Write(None)
}

fn cas(expect: Option<u64>, new: &str) -> Op {
    Op::Cas {
        expect,
        new: new.as_bytes().to_vec(),
    }
}

fn saw(v: &str, version: u64) -> Outcome {
    Outcome::Read(Some((v.as_bytes().to_vec(), version)))
}

fn absent() -> Outcome {
    Outcome::Read(None)
}

fn expect_violation(h: &History) -> String {
    match h.check() {
        Ok(()) => panic!("history should not be linearizable: {:#?}", h.events),
        Err(e) => e,
    }
}

#[test]
fn empty_history_passes() {
    assert_eq!(check(&[]), Ok(()));
}

#[test]
fn sequential_valid_history_passes() {
    let h = History::new()
        .op(0, "k", Op::Read, (0, 10), absent())
        .op(0, "k", write("a"), (20, 30), Outcome::Written(1))
        .op(1, "k", Op::Read, (40, 50), saw("a", 1))
        .op(0, "k", cas(Some(1), "b"), (60, 70), Outcome::Written(2))
        .op(1, "k", cas(Some(1), "c"), (80, 90), Outcome::CasFailed)
        .op(1, "k", cas(None, "c"), (100, 110), Outcome::CasFailed)
        .op(0, "k", Op::Read, (120, 130), saw("b", 2))
        .op(2, "k", delete(), (140, 150), Outcome::Written(3))
        .op(1, "k", Op::Read, (160, 170), absent())
        .op(1, "k", cas(Some(2), "d"), (180, 190), Outcome::CasFailed)
        .op(0, "k", cas(None, "d"), (200, 210), Outcome::Written(4))
        .op(2, "k", Op::Read, (220, 230), saw("d", 4));
    assert_eq!(h.check(), Ok(()));
}

#[test]
fn concurrent_overlapping_writes_with_reads_seeing_either_order_pass() {
    // Two overlapping writes; concurrent readers may see them land in either
    // order, as long as everyone agrees on that order afterwards.
    let a_first = History::new()
        .op(0, "k", write("a"), (0, 100), Outcome::Written(1))
        .op(1, "k", write("b"), (10, 110), Outcome::Written(2))
        .op(2, "k", Op::Read, (20, 60), saw("a", 1))
        .op(2, "k", Op::Read, (70, 120), saw("b", 2))
        .op(3, "k", Op::Read, (5, 130), absent())
        .op(3, "k", Op::Read, (140, 150), saw("b", 2));
    assert_eq!(a_first.check(), Ok(()));

    let b_first = History::new()
        .op(0, "k", write("a"), (0, 100), Outcome::Written(2))
        .op(1, "k", write("b"), (10, 110), Outcome::Written(1))
        .op(2, "k", Op::Read, (20, 60), saw("b", 1))
        .op(2, "k", Op::Read, (70, 120), saw("a", 2))
        .op(3, "k", Op::Read, (140, 150), saw("a", 2));
    assert_eq!(b_first.check(), Ok(()));

    // A read may even see the second write while the first is still
    // outstanding, and another, concurrent reader the first one.
    let both = History::new()
        .op(0, "k", write("a"), (0, 100), Outcome::Written(1))
        .op(1, "k", write("b"), (10, 110), Outcome::Written(2))
        .op(2, "k", Op::Read, (20, 105), saw("b", 2))
        .op(3, "k", Op::Read, (15, 40), saw("a", 1));
    assert_eq!(both.check(), Ok(()));
}

#[test]
fn reads_flip_flopping_between_concurrent_writes_fail() {
    // Once a reader has seen b replace a, nobody may see a again.
    let h = History::new()
        .op(0, "k", write("a"), (0, 100), Outcome::Written(1))
        .op(1, "k", write("b"), (10, 110), Outcome::Written(2))
        .op(2, "k", Op::Read, (20, 30), saw("a", 1))
        .op(2, "k", Op::Read, (40, 50), saw("b", 2))
        .op(2, "k", Op::Read, (60, 70), saw("a", 1));
    expect_violation(&h);
}

#[test]
fn stale_read_fails() {
    let h = History::new()
        .op(0, "k", write("a"), (0, 10), Outcome::Written(1))
        .op(0, "k", write("b"), (20, 30), Outcome::Written(2))
        .op(1, "k", Op::Read, (40, 50), saw("a", 1));
    let err = expect_violation(&h);
    // The report names the key and the offending operations.
    assert!(err.contains("key \"k\""), "{err}");
    assert!(
        err.contains("#2 client 1: read -> \"a\" @ version 1"),
        "{err}"
    );
    assert!(err.contains("impossible in that state"), "{err}");
}

#[test]
fn read_of_value_never_written_fails() {
    let h = History::new()
        .op(0, "k", write("a"), (0, 10), Outcome::Written(1))
        .op(1, "k", Op::Read, (20, 30), saw("z", 1));
    expect_violation(&h);

    // The right value at a version no write produced is just as wrong.
    let h = History::new()
        .op(0, "k", write("a"), (0, 10), Outcome::Written(1))
        .op(1, "k", Op::Read, (20, 30), saw("a", 2));
    expect_violation(&h);

    // As is a value read before its write was invoked.
    let h = History::new()
        .op(1, "k", Op::Read, (0, 10), saw("a", 1))
        .op(0, "k", write("a"), (20, 30), Outcome::Written(1));
    expect_violation(&h);
}

#[test]
fn lost_update_cas_fails() {
    // Both CASes expect version 1 and both claim success: one of them must
    // have overwritten the other's update.
    let h = History::new()
        .op(0, "k", write("a"), (0, 10), Outcome::Written(1))
        .op(1, "k", cas(Some(1), "b"), (20, 40), Outcome::Written(2))
        .op(2, "k", cas(Some(1), "c"), (25, 45), Outcome::Written(3));
    expect_violation(&h);

    // Same with "create if absent".
    let h = History::new()
        .op(1, "k", cas(None, "b"), (20, 40), Outcome::Written(2))
        .op(2, "k", cas(None, "c"), (25, 45), Outcome::Written(3));
    expect_violation(&h);

    // The correct outcome, one winner and one loser, passes.
    let h = History::new()
        .op(0, "k", write("a"), (0, 10), Outcome::Written(1))
        .op(1, "k", cas(Some(1), "b"), (20, 40), Outcome::Written(2))
        .op(2, "k", cas(Some(1), "c"), (25, 45), Outcome::CasFailed)
        .op(0, "k", Op::Read, (50, 60), saw("b", 2));
    assert_eq!(h.check(), Ok(()));
}

#[test]
fn cas_failure_needs_a_failing_condition() {
    // Nothing else touched the key, so a CAS on its current version must win.
    let h = History::new()
        .op(0, "k", write("a"), (0, 10), Outcome::Written(1))
        .op(1, "k", cas(Some(1), "b"), (20, 30), Outcome::CasFailed);
    expect_violation(&h);
}

#[test]
fn unknown_write_later_read_passes() {
    let h = History::new()
        .op(0, "k", write("a"), (0, 10), Outcome::Written(1))
        .ambiguous(1, "k", write("b"), 20)
        .op(2, "k", Op::Read, (1000, 1010), saw("b", 7))
        .op(2, "k", Op::Read, (1020, 1030), saw("b", 7))
        .op(0, "k", cas(Some(7), "c"), (1040, 1050), Outcome::Written(8));
    assert_eq!(h.check(), Ok(()));

    // The version the first read revealed sticks.
    let h = History::new()
        .op(0, "k", write("a"), (0, 10), Outcome::Written(1))
        .ambiguous(1, "k", write("b"), 20)
        .op(2, "k", Op::Read, (1000, 1010), saw("b", 7))
        .op(2, "k", Op::Read, (1020, 1030), saw("b", 8));
    expect_violation(&h);

    // An ambiguous write cannot take effect before it was invoked.
    let h = History::new()
        .op(0, "k", write("a"), (0, 10), Outcome::Written(1))
        .op(2, "k", Op::Read, (20, 30), saw("b", 7))
        .ambiguous(1, "k", write("b"), 40);
    expect_violation(&h);
}

#[test]
fn unknown_write_never_observed_passes() {
    let h = History::new()
        .op(0, "k", write("a"), (0, 10), Outcome::Written(1))
        .ambiguous(1, "k", write("b"), 20)
        .op(2, "k", Op::Read, (1000, 1010), saw("a", 1))
        .op(2, "k", Op::Read, (2000, 2010), saw("a", 1));
    assert_eq!(h.check(), Ok(()));
}

#[test]
fn unknown_delete_and_cas_may_take_effect() {
    let h = History::new()
        .op(0, "k", write("a"), (0, 10), Outcome::Written(1))
        .ambiguous(1, "k", cas(Some(1), "b"), 20)
        .op(2, "k", Op::Read, (100, 110), saw("b", 5))
        .ambiguous(1, "k", delete(), 120)
        .op(2, "k", Op::Read, (200, 210), absent())
        // An ambiguous read says nothing.
        .ambiguous(3, "k", Op::Read, 0);
    assert_eq!(h.check(), Ok(()));

    // An ambiguous CAS whose condition cannot hold has no effect.
    let h = History::new()
        .op(0, "k", write("a"), (0, 10), Outcome::Written(1))
        .ambiguous(1, "k", cas(Some(9), "b"), 20)
        .op(2, "k", Op::Read, (100, 110), saw("b", 5));
    expect_violation(&h);
}

#[test]
fn keys_are_independent_and_the_failing_key_is_named() {
    let h = History::new()
        .op(0, "good", write("a"), (0, 10), Outcome::Written(1))
        .op(0, "bad", write("a"), (0, 10), Outcome::Written(2))
        .op(1, "good", Op::Read, (20, 30), saw("a", 1))
        // Right value and version, but of another key.
        .op(1, "bad", Op::Read, (20, 30), saw("a", 1));
    let err = expect_violation(&h);
    assert!(err.contains("key \"bad\""), "{err}");
}

#[test]
fn one_version_for_two_writes_fails() {
    // Every write gets its own revision, even across keys, which per-key
    // checking alone could not notice.
    let h = History::new()
        .op(0, "a", write("x"), (0, 10), Outcome::Written(1))
        .op(1, "b", write("y"), (0, 10), Outcome::Written(1));
    let err = expect_violation(&h);
    assert!(
        err.contains("version 1 belongs to two different writes"),
        "{err}"
    );

    // The same, seen only through reads of ambiguous writes.
    let h = History::new()
        .ambiguous(0, "a", write("x"), 0)
        .ambiguous(1, "b", write("y"), 0)
        .op(2, "a", Op::Read, (20, 30), saw("x", 5))
        .op(2, "b", Op::Read, (40, 50), saw("y", 5));
    let err = expect_violation(&h);
    assert!(
        err.contains("version 5 belongs to two different writes"),
        "{err}"
    );

    // An ambiguous write cannot have a version a definite write reported.
    let h = History::new()
        .op(0, "a", write("x"), (0, 10), Outcome::Written(1))
        .ambiguous(1, "b", write("y"), 0)
        .op(2, "b", Op::Read, (20, 30), saw("y", 1));
    expect_violation(&h);
}

#[test]
fn malformed_events_are_errors_not_panics() {
    let backwards = History::new().op(0, "k", write("a"), (10, 0), Outcome::Written(1));
    assert!(backwards.check().unwrap_err().contains("completes before"));

    for (op, outcome) in [
        (Op::Read, Outcome::Written(1)),
        (Op::Read, Outcome::CasFailed),
        (write("a"), saw("a", 1)),
        (write("a"), Outcome::CasFailed),
        (delete(), absent()),
        (cas(None, "a"), absent()),
    ] {
        let h = History::new().op(0, "k", op, (0, 10), outcome);
        let err = h.check().unwrap_err();
        assert!(err.contains("does not fit its operation"), "{err}");
    }

    // A known outcome without completion time may take effect any time later.
    let mut h = History::new().op(0, "k", write("a"), (0, 10), Outcome::Written(1));
    h.events[0].complete = None;
    h = h
        .op(1, "k", Op::Read, (0, 5), absent())
        .op(1, "k", Op::Read, (20, 30), saw("a", 1));
    assert_eq!(h.check(), Ok(()));
}

#[test]
fn many_unobserved_unknown_writes_stay_fast() {
    // Every ambiguous write stays a candidate forever; without subsumption in
    // the cache each one would double the search space.
    let mut h = History::new();
    let mut version = 0;
    for i in 0..1000u64 {
        let t = i * 100;
        if i % 10 == 5 {
            h = h.ambiguous(1, "k", write(&format!("lost{i}")), t);
        } else if i % 2 == 0 {
            version += 1;
            h = h.op(
                0,
                "k",
                write(&format!("v{i}")),
                (t, t + 50),
                Outcome::Written(version),
            );
        } else {
            h = h.op(
                2,
                "k",
                Op::Read,
                (t, t + 50),
                saw(&format!("v{}", i - 1), version),
            );
        }
    }
    let start = Instant::now();
    assert_eq!(h.check(), Ok(()));
    let elapsed = start.elapsed();
    eprintln!("1000 ops with 100 unobserved ambiguous writes: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
}

// ---------------------------------------------------------------------------
// Generated histories

/// A history produced by running operations against a real sequential
/// register at strictly increasing instants `t`, each wrapped in a random
/// invocation/completion window around `t` (never overlapping its client's
/// previous operation). Linearizable by construction.
fn simulated_history(
    seed: u64,
    n_ops: usize,
    clients: usize,
    keys: usize,
    ambiguous_rate: f64,
) -> Vec<Event> {
    const SPREAD_US: u64 = 150;
    let mut rng = StdRng::seed_from_u64(seed);
    let base = Instant::now();
    let at = |us: u64| base + Duration::from_micros(us);
    let mut store: HashMap<String, (Vec<u8>, u64)> = HashMap::new();
    let mut revision = 0u64;
    let mut busy_until = vec![0u64; clients];
    // Versions each client last saw per key, which is what a real client
    // can put in a CAS.
    let mut seen: Vec<HashMap<String, u64>> = vec![HashMap::new(); clients];
    let mut t = 0u64;
    let mut events = Vec::with_capacity(n_ops);

    while events.len() < n_ops {
        t += rng.gen_range(1..=25);
        let idle: Vec<usize> = (0..clients).filter(|&c| busy_until[c] < t).collect();
        if idle.is_empty() {
            continue;
        }
        let client = idle[rng.gen_range(0..idle.len())];
        let invoke = rng.gen_range((busy_until[client] + 1).max(t.saturating_sub(SPREAD_US))..=t);
        let complete = t + rng.gen_range(0..SPREAD_US);
        busy_until[client] = complete;

        let key = format!("k{}", rng.gen_range(0..keys));
        let current = store.get(&key).cloned();
        // Unique values, so a value identifies the write that produced it.
        let value = format!("c{client}-op{}", events.len()).into_bytes();
        let op = match rng.gen_range(0..100) {
            0..=44 => Op::Read,
            45..=69 => Op::Write(Some(value)),
            70..=74 => Op::Write(None),
            _ => Op::Cas {
                expect: seen[client].get(&key).copied(),
                new: value,
            },
        };

        let ambiguous = op != Op::Read && rng.gen_bool(ambiguous_rate);
        let outcome = if ambiguous && rng.gen_bool(0.5) {
            // Timed out before reaching the store.
            Outcome::Unknown
        } else {
            let outcome = match &op {
                Op::Read => Outcome::Read(current),
                Op::Write(value) => {
                    revision += 1;
                    match value {
                        Some(v) => store.insert(key.clone(), (v.clone(), revision)),
                        None => store.remove(&key),
                    };
                    Outcome::Written(revision)
                }
                Op::Cas { expect, new } => {
                    if current.as_ref().map(|c| c.1) == *expect {
                        revision += 1;
                        store.insert(key.clone(), (new.clone(), revision));
                        Outcome::Written(revision)
                    } else {
                        Outcome::CasFailed
                    }
                }
            };
            // Applied, but the reply was lost.
            if ambiguous {
                Outcome::Unknown
            } else {
                outcome
            }
        };
        match (&op, &outcome) {
            (Op::Read, Outcome::Read(Some((_, v))))
            | (Op::Write(Some(_)) | Op::Cas { .. }, Outcome::Written(v)) => {
                seen[client].insert(key.clone(), *v);
            }
            (Op::Read, Outcome::Read(None)) | (Op::Write(None), Outcome::Written(_)) => {
                seen[client].remove(&key);
            }
            _ => {}
        }
        let complete = (outcome != Outcome::Unknown).then(|| at(complete));
        events.push(Event {
            client,
            key,
            op,
            invoke: at(invoke),
            complete,
            outcome,
        });
    }
    events
}

/// Makes a read in the second half of `history` return a state that was
/// overwritten strictly before the read began: a write W, then (strictly
/// after W) another write X, both finished before the read was invoked, and
/// the read now claims W's value and version. Returns the read's index.
fn make_stale_read(history: &mut [Event]) -> usize {
    let done = |e: &Event| {
        e.complete
            .unwrap_or_else(|| panic!("definite event expected"))
    };
    let wrote =
        |e: &Event| matches!(e.outcome, Outcome::Written(_)) && !matches!(e.op, Op::Write(None));
    for r in history.len() / 2..history.len() {
        if !matches!(history[r].outcome, Outcome::Read(_)) {
            continue;
        }
        let (key, invoked) = (history[r].key.clone(), history[r].invoke);
        let writes: Vec<usize> = (0..history.len())
            .filter(|&i| history[i].key == key && wrote(&history[i]) && done(&history[i]) < invoked)
            .collect();
        // The latest W that some X overwrote in time, for a barely-stale read.
        let stale = writes
            .iter()
            .filter(|&&w| {
                writes
                    .iter()
                    .any(|&x| history[x].invoke > done(&history[w]))
            })
            .max_by_key(|&&w| done(&history[w]));
        if let Some(&w) = stale {
            let value = match &history[w].op {
                Op::Write(Some(v)) | Op::Cas { new: v, .. } => v.clone(),
                _ => continue,
            };
            let Outcome::Written(version) = history[w].outcome else {
                continue;
            };
            if history[r].outcome == Outcome::Read(Some((value.clone(), version))) {
                continue;
            }
            history[r].outcome = Outcome::Read(Some((value, version)));
            return r;
        }
    }
    panic!("no read to make stale");
}

#[test]
fn randomized_valid_history_passes_quickly() {
    for seed in 0..3 {
        let history = simulated_history(seed, 3000, 8, 3, 0.02);
        let start = Instant::now();
        let result = check(&history);
        let elapsed = start.elapsed();
        eprintln!("seed {seed}: 3000 ops, 8 clients, 3 keys checked in {elapsed:?}");
        assert_eq!(result, Ok(()), "seed {seed}");
        assert!(
            elapsed < Duration::from_secs(5),
            "seed {seed} took {elapsed:?}"
        );
    }
}

#[test]
fn randomized_single_key_history_passes_quickly() {
    // All eight clients hammering one key: the most concurrency per key.
    let history = simulated_history(42, 2000, 8, 1, 0.02);
    let start = Instant::now();
    let result = check(&history);
    let elapsed = start.elapsed();
    eprintln!("2000 ops, 8 clients, 1 key checked in {elapsed:?}");
    assert_eq!(result, Ok(()));
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
}

#[test]
fn randomized_history_with_many_ambiguous_writes() {
    // One write in ten times out, half of those after taking effect.
    for seed in 0..2 {
        let mut history = simulated_history(seed, 3000, 8, 3, 0.1);
        let start = Instant::now();
        assert_eq!(check(&history), Ok(()), "seed {seed}");
        let valid = start.elapsed();
        let r = make_stale_read(&mut history);
        let start = Instant::now();
        assert!(
            check(&history).is_err(),
            "seed {seed}: stale read #{r} missed"
        );
        let stale = start.elapsed();
        eprintln!("seed {seed}: valid checked in {valid:?}, stale read found in {stale:?}");
        assert!(valid + stale < Duration::from_secs(10), "seed {seed}");
    }
}

#[test]
fn randomized_history_with_stale_read_fails() {
    for seed in 0..3 {
        let mut history = simulated_history(seed, 3000, 8, 3, 0.02);
        let r = make_stale_read(&mut history);
        let start = Instant::now();
        let result = check(&history);
        let elapsed = start.elapsed();
        eprintln!("seed {seed}: stale read #{r} found in {elapsed:?}");
        let err = result.expect_err("stale read must be caught");
        assert!(err.contains(&format!("key {:?}", history[r].key)), "{err}");
        assert!(
            elapsed < Duration::from_secs(5),
            "seed {seed} took {elapsed:?}"
        );
        if seed == 0 {
            eprintln!("{err}");
        }
    }
}
