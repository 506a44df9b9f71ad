//! Linearizability checker for a versioned key-value register.
//!
//! Tests record a concurrent history of reads, writes, deletes and
//! compare-and-set operations against the store (one [`Event`] per operation,
//! with its real-time invocation/completion window and what the client saw)
//! and ask [`check`] whether some total order of the operations, consistent
//! with real time, explains every outcome under the sequential register model
//! below.
//!
//! # Model
//!
//! Each key is an independent register whose state is either absent or a
//! `(value, version)` pair. Versions are a store-wide revision assigned by the
//! server, so the checker cannot predict them; it takes the version a write
//! reports as the version of the state it produced, and demands that reads
//! observe exactly that state:
//!
//! * `Write(Some(v))` with `Written(ver)` makes the state `(v, ver)`;
//!   `Write(None)` (delete) with `Written(_)` makes it absent.
//! * `Read` must return exactly the current state.
//! * `Cas { expect: Some(ver), .. }` succeeds iff the current version is
//!   `ver`; `expect: None` succeeds iff the key is absent. `Written(ver)` is
//!   legal iff the condition holds and produces `(new, ver)`; `CasFailed` is
//!   legal iff it does not hold and leaves the state alone.
//! * An `Unknown` outcome (timeout, connection lost) may have taken effect at
//!   any point after its invocation, or never. A write of unknown outcome that
//!   did take effect has an unknown version, modelled as a wildcard that the
//!   first read of that value pins down. Reads of unknown outcome constrain
//!   nothing and are ignored.
//! * Every write gets its own revision, so one version never belongs to two
//!   writes: a history where two writes report the same version, or reads see
//!   one version with different keys or values, is rejected outright, and a
//!   wildcard never matches a version that a known-outcome write reported or
//!   that reads saw with another key or value.
//!
//! The wildcard is deliberately loose in one respect: a CAS compared against
//! it may succeed or fail without pinning it down, and two wildcards may be
//! pinned to the same version. So a history is occasionally accepted that
//! only an impossible assignment of versions to ambiguous writes explains;
//! what the checker rejects is always a real violation of the model.
//!
//! # Algorithm
//!
//! The history is split per key (linearizability is compositional, so the
//! whole history is linearizable iff every key's sub-history is), then each
//! key is searched with Wing & Gong's algorithm as refined by Lowe (and used
//! by Porcupine/Knossos): depth-first, linearizing at each step an operation
//! invoked before the earliest completion among the operations still pending,
//! with a cache of already-explored (linearized set, state) configurations.
//!
//! Operations of unknown outcome never complete, so they never bound the
//! search and never need to be linearized: the search succeeds once every
//! operation with a known outcome is placed. Treated naively they make the
//! search exponential (each may or may not have happened, at any later point),
//! so four reductions keep it tractable, each preserving the answer:
//!
//! * The cache treats a configuration as covered by an explored one with the
//!   same definite operations and state and a *subset* of the ambiguous ones
//!   (which can still do everything the former can); definite operations are
//!   tried first, so the covering configuration is normally explored first.
//! * An ambiguous operation is only tried where some operation that could
//!   come right after it depends on it (see `optional_matters`).
//! * Values that no read returned are indistinguishable, so they share one
//!   id, and ambiguous operations with the same effect are used in invocation
//!   order only (see `UNREAD` and `KeyHistory::twin`).
//! * Wildcards only match versions that could be theirs (see `Wild`).

use std::collections::hash_map::Entry as MapEntry;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::time::Instant;

/// An operation on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Read,
    /// `None` deletes the key.
    Write(Option<Vec<u8>>),
    /// Write `new` iff the key is at version `expect` (`None`: iff absent).
    Cas {
        expect: Option<u64>,
        new: Vec<u8>,
    },
}

/// What the client observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Value and version read; `None` means the key was absent.
    Read(Option<(Vec<u8>, u64)>),
    /// A write or successful CAS produced this version (for a delete: the
    /// version of the delete, which the model does not otherwise use).
    Written(u64),
    /// The CAS precondition did not hold.
    CasFailed,
    /// Timed out or otherwise ambiguous: may or may not have taken effect, at
    /// any time after `invoke`.
    Unknown,
}

/// One operation of a history.
#[derive(Debug, Clone)]
pub struct Event {
    pub client: usize,
    pub key: String,
    pub op: Op,
    pub invoke: Instant,
    /// `None` for an operation that never completed (normally with
    /// [`Outcome::Unknown`]); a known outcome without a completion time is
    /// accepted and may take effect any time after `invoke`.
    pub complete: Option<Instant>,
    pub outcome: Outcome,
}

/// Search steps allowed per key by [`check`] before giving up: a few seconds
/// in a release build, half a minute in a debug one. Valid histories of
/// thousands of operations need a few dozen steps per operation, and refuting
/// an invalid one rarely takes more than a few million; the limit only exists
/// so that a pathological history (a single key with hundreds of ambiguous
/// writes, all of which reads did observe) fails loudly instead of hanging
/// the test run.
pub const DEFAULT_STEP_BUDGET: u64 = 200_000_000;

/// Checks that `history` is linearizable. On failure, describes the first key
/// (in order of first appearance) whose sub-history is not, or the first
/// malformed event.
pub fn check(history: &[Event]) -> Result<(), String> {
    check_with_budget(history, DEFAULT_STEP_BUDGET)
}

/// [`check`] with an explicit per-key search step budget; running out of it
/// is reported as an (inconclusive) error.
pub fn check_with_budget(history: &[Event], budget: u64) -> Result<(), String> {
    let Some(base) = history.iter().map(|e| e.invoke).min() else {
        return Ok(());
    };
    let claims = version_claims(history, base)?;
    let mut keys: Vec<&str> = Vec::new();
    let mut by_key: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, e) in history.iter().enumerate() {
        by_key
            .entry(e.key.as_str())
            .or_insert_with(|| {
                keys.push(e.key.as_str());
                Vec::new()
            })
            .push(i);
    }
    for key in keys {
        let indices = by_key.get(key).map(Vec::as_slice).unwrap_or_default();
        let sub = KeyHistory::build(history, key, indices, base, &claims)?;
        match sub.search(budget) {
            Ok(()) => {}
            Err(Failure::NotLinearizable(stuck)) => {
                return Err(sub.explain(&stuck, "is not linearizable"));
            }
            Err(Failure::BudgetExhausted(stuck)) => {
                let why = format!(
                    "could not be decided: search budget of {budget} steps exhausted \
                     (result inconclusive, not a proof of a violation)"
                );
                return Err(sub.explain(&stuck, &why));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Per-key preprocessing

/// Timestamps are nanoseconds since the earliest invocation; `INF` stands for
/// "never completed".
const INF: u64 = u64::MAX;

/// Index into the per-key table of distinct values, so that states are small
/// `Copy` values that hash cheaply.
type ValueId = u32;

/// The id shared by all values that no read of the key returned. Nothing in
/// the model can tell such values apart (reads compare values, everything
/// else compares versions), so merging them loses nothing and lets the cache
/// and the twin rule below treat, say, every unobserved ambiguous write as
/// the same operation.
const UNREAD: ValueId = 0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Ver {
    Known(u64),
    /// Written by an operation of unknown outcome: could be any version.
    Any,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum State {
    Absent,
    Present { val: ValueId, ver: Ver },
}

/// An operation reduced to its effect on the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Read {
        seen: Option<(ValueId, u64)>,
        /// Whether the version seen could be that of an ambiguous write.
        wild_ok: bool,
    },
    /// Unconditional write; `val: None` deletes.
    Put {
        val: Option<ValueId>,
        ver: Ver,
    },
    CasOk {
        expect: Expect,
        new: ValueId,
        ver: Ver,
    },
    CasFailed {
        expect: Expect,
    },
}

/// A CAS precondition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Expect {
    /// `None`: the key must be absent.
    version: Option<u64>,
    /// Which wildcard states could be at `version`.
    wild: Wild,
}

/// Which values written by an ambiguous write could carry a given version.
///
/// Revisions are unique store-wide, so an ambiguous write's version is none
/// of the versions that definite writes reported, and a version that some
/// read saw with value `x` on this key can only belong to a write of `x`.
/// Without this, every unobserved ambiguous write would let any CAS succeed
/// or fail at any point, and the search would drown in such orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Wild {
    Never,
    Only(ValueId),
    AnyValue,
}

/// Which write the whole history says produced a version.
#[derive(Debug, Clone, Copy)]
enum Claim<'a> {
    /// Reported by this event, a write with a known outcome.
    Definite(usize),
    /// Not reported by any write, but read as this key and value by this
    /// event.
    ReadAs(&'a str, &'a [u8], usize),
}

/// Collects the claims, and rejects histories in which one version belongs
/// to two different writes: two writes reporting it, or reads seeing it with
/// different keys or values. Per-key checking cannot see the cross-key cases
/// (say, a revision handed out twice, once on each of two keys), and the
/// wildcard treatment of ambiguous writes would otherwise quietly accept
/// some same-key ones.
fn version_claims(history: &[Event], base: Instant) -> Result<HashMap<u64, Claim<'_>>, String> {
    let mut claims = HashMap::new();
    let line = |i: usize| {
        let key = history.get(i).map_or("?", |e| e.key.as_str());
        format!("key {key:?}: {}", describe(history, base, i))
    };
    let clash = |v: u64, i: usize, j: usize| {
        format!(
            "version {v} belongs to two different writes, but every write gets its own \
             revision:\n  {}\n  {}",
            line(i),
            line(j)
        )
    };
    for (i, e) in history.iter().enumerate() {
        if let (Op::Write(_) | Op::Cas { .. }, Outcome::Written(v)) = (&e.op, &e.outcome) {
            if let Some(Claim::Definite(j)) = claims.insert(*v, Claim::Definite(i)) {
                return Err(clash(*v, j, i));
            }
        }
    }
    for (i, e) in history.iter().enumerate() {
        if let (Op::Read, Outcome::Read(Some((val, v)))) = (&e.op, &e.outcome) {
            let this = (e.key.as_str(), val.as_slice());
            match claims.get(v) {
                None => {
                    claims.insert(*v, Claim::ReadAs(this.0, this.1, i));
                }
                Some(Claim::ReadAs(k, x, j)) if (*k, *x) != this => return Err(clash(*v, *j, i)),
                // Whether a read matches its write is for the search to judge.
                Some(_) => {}
            }
        }
    }
    Ok(claims)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cond {
    Holds,
    Fails,
    /// Depends on the unknown version of a wildcard state.
    Either,
}

fn cas_cond(state: State, expect: Expect) -> Cond {
    match (expect.version, state) {
        (None, State::Absent) => Cond::Holds,
        (None, State::Present { .. }) | (Some(_), State::Absent) => Cond::Fails,
        (
            Some(e),
            State::Present {
                ver: Ver::Known(v), ..
            },
        ) => {
            if e == v {
                Cond::Holds
            } else {
                Cond::Fails
            }
        }
        (Some(_), State::Present { val, ver: Ver::Any }) => match expect.wild {
            Wild::Never => Cond::Fails,
            Wild::Only(x) if x != val => Cond::Fails,
            Wild::Only(_) | Wild::AnyValue => Cond::Either,
        },
    }
}

/// The sequential specification: the state after applying `kind` to `state`,
/// or `None` if the recorded outcome is impossible in `state`.
fn step(state: State, kind: Kind) -> Option<State> {
    match kind {
        Kind::Read { seen: None, .. } => (state == State::Absent).then_some(state),
        Kind::Read {
            seen: Some((val, ver)),
            wild_ok,
        } => match state {
            State::Present {
                val: cur,
                ver: Ver::Known(v),
            } if cur == val && v == ver => Some(state),
            // The first read of a wildcard write reveals its version.
            State::Present {
                val: cur,
                ver: Ver::Any,
            } if cur == val && wild_ok => Some(State::Present {
                val,
                ver: Ver::Known(ver),
            }),
            _ => None,
        },
        Kind::Put { val: None, .. } => Some(State::Absent),
        Kind::Put {
            val: Some(val),
            ver,
        } => Some(State::Present { val, ver }),
        Kind::CasOk { expect, new, ver } => {
            (cas_cond(state, expect) != Cond::Fails).then_some(State::Present { val: new, ver })
        }
        Kind::CasFailed { expect } => (cas_cond(state, expect) != Cond::Holds).then_some(state),
    }
}

/// Reduces an event to its effect on the model, or `None` if the outcome
/// does not fit the operation.
fn reduce(
    e: &Event,
    id: &impl Fn(&[u8]) -> ValueId,
    claims: &HashMap<u64, Claim<'_>>,
) -> Option<Kind> {
    let ver = match e.outcome {
        Outcome::Written(v) => Ver::Known(v),
        _ => Ver::Any,
    };
    let expect = |version: Option<u64>| Expect {
        version,
        wild: match version.and_then(|v| claims.get(&v)) {
            None => Wild::AnyValue,
            Some(Claim::Definite(_)) => Wild::Never,
            Some(Claim::ReadAs(k, x, _)) if *k == e.key => Wild::Only(id(x)),
            Some(Claim::ReadAs(..)) => Wild::Never,
        },
    };
    Some(match (&e.op, &e.outcome) {
        (Op::Read, Outcome::Unknown) => Kind::Read {
            seen: None,
            wild_ok: false,
        },
        (Op::Read, Outcome::Read(seen)) => Kind::Read {
            seen: seen.as_ref().map(|(v, ver)| (id(v), *ver)),
            wild_ok: seen
                .as_ref()
                .is_none_or(|(_, ver)| !matches!(claims.get(ver), Some(Claim::Definite(_)))),
        },
        (Op::Write(val), Outcome::Written(_) | Outcome::Unknown) => Kind::Put {
            val: val.as_deref().map(id),
            ver,
        },
        (Op::Cas { expect: e, new }, Outcome::Written(_) | Outcome::Unknown) => Kind::CasOk {
            expect: expect(*e),
            new: id(new),
            ver,
        },
        (Op::Cas { expect: e, .. }, Outcome::CasFailed) => Kind::CasFailed { expect: expect(*e) },
        _ => return None,
    })
}

#[derive(Debug, Clone, Copy)]
struct KeyOp {
    /// Index of the event in the caller's history.
    event: usize,
    kind: Kind,
    invoke: u64,
    complete: u64,
}

/// One key's sub-history, split into definite operations (which must all be
/// linearized) and optional ones (unknown outcome: linearized only if that
/// helps).
struct KeyHistory<'a> {
    history: &'a [Event],
    key: &'a str,
    base: Instant,
    /// Display form of each `ValueId`; `None` for `UNREAD`.
    values: Vec<Option<&'a [u8]>>,
    required: Vec<KeyOp>,
    optional: Vec<KeyOp>,
    /// Nodes of the definite operations' event list, in time order: node
    /// `2 + 2i` is the invocation and `3 + 2i` the completion of
    /// `required[i]`; 0 and 1 are the head and tail sentinels.
    req_order: Vec<usize>,
    /// Nodes of the optional operations' list: node `2 + i` is
    /// `optional[i]`, which is sorted by invocation time.
    opt_order: Vec<usize>,
    /// For each optional operation, the previous one with the same effect.
    /// Such twins are interchangeable (both never complete, and the earlier
    /// one is a candidate whenever the later one is), so the search only uses
    /// them in invocation order instead of trying every subset.
    twin: Vec<Option<usize>>,
}

const HEAD: usize = 0;
const TAIL: usize = 1;

fn call_node(slot: usize) -> usize {
    2 + 2 * slot
}
fn is_return_node(node: usize) -> bool {
    node % 2 == 1
}
fn node_slot(node: usize) -> usize {
    (node - 2) / 2
}

impl<'a> KeyHistory<'a> {
    fn build(
        history: &'a [Event],
        key: &'a str,
        indices: &[usize],
        base: Instant,
        claims: &HashMap<u64, Claim<'a>>,
    ) -> Result<Self, String> {
        let mut sub = KeyHistory {
            history,
            key,
            base,
            values: vec![None],
            required: Vec::new(),
            optional: Vec::new(),
            req_order: Vec::new(),
            opt_order: Vec::new(),
            twin: Vec::new(),
        };

        // Only values some read returned get their own id; see `UNREAD`.
        let mut ids: HashMap<&'a [u8], ValueId> = HashMap::new();
        for e in indices.iter().filter_map(|&i| history.get(i)) {
            if let (Op::Read, Outcome::Read(Some((v, _)))) = (&e.op, &e.outcome) {
                ids.entry(v.as_slice()).or_insert_with(|| {
                    sub.values.push(Some(v.as_slice()));
                    // More than 4 billion distinct values in one key's
                    // history would not fit in memory anyway.
                    ValueId::try_from(sub.values.len() - 1).unwrap_or(ValueId::MAX)
                });
            }
        }
        let id = |v: &[u8]| ids.get(v).copied().unwrap_or(UNREAD);

        for &i in indices {
            let Some(e) = history.get(i) else { continue };
            let invoke = sub.nanos(e.invoke);
            let complete = match e.complete {
                Some(c) if c < e.invoke => {
                    return Err(format!(
                        "malformed history: event #{i} on key {key:?} completes before \
                         it is invoked: {}",
                        sub.describe(i)
                    ));
                }
                Some(c) => sub.nanos(c),
                None => INF,
            };
            let Some(kind) = reduce(e, &id, claims) else {
                return Err(format!(
                    "malformed history: event #{i} on key {key:?} has an outcome that \
                     does not fit its operation: {}",
                    sub.describe(i)
                ));
            };
            let unknown = e.outcome == Outcome::Unknown;
            match kind {
                // An ambiguous read has no effect and observed nothing.
                Kind::Read { .. } if unknown => {}
                // Whatever the completion time says, an ambiguous operation
                // may take effect arbitrarily late.
                _ if unknown => sub.optional.push(KeyOp {
                    event: i,
                    kind,
                    invoke,
                    complete: INF,
                }),
                _ => sub.required.push(KeyOp {
                    event: i,
                    kind,
                    invoke,
                    complete,
                }),
            }
        }

        // Invocations sort before completions at equal timestamps: clocks are
        // coarse, and treating touching operations as concurrent can only
        // hide a violation, never invent one.
        let mut entries: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * sub.required.len());
        for (slot, op) in sub.required.iter().enumerate() {
            entries.push((op.invoke, false, call_node(slot)));
            entries.push((op.complete, true, call_node(slot) + 1));
        }
        entries.sort_unstable();
        sub.req_order = entries.into_iter().map(|(_, _, node)| node).collect();

        sub.optional.sort_by_key(|op| (op.invoke, op.event));
        sub.opt_order = (2..2 + sub.optional.len()).collect();
        let mut last_of_kind: HashMap<Kind, usize> = HashMap::new();
        for (slot, op) in sub.optional.iter().enumerate() {
            sub.twin.push(last_of_kind.insert(op.kind, slot));
        }
        Ok(sub)
    }

    fn nanos(&self, t: Instant) -> u64 {
        nanos_since(self.base, t)
    }

    fn search(&self, budget: u64) -> Result<(), Failure> {
        let n_req = self.required.len();
        let n_opt = self.optional.len();
        let mut req_list = List::new(2 + 2 * n_req, &self.req_order);
        let mut opt_list = List::new(2 + n_opt, &self.opt_order);
        let mut req_bits = Bits::new(n_req);
        let mut opt_bits = Bits::new(n_opt);
        let mut cache = Cache::default();
        let mut stack: Vec<Frame> = Vec::new();
        let mut state = State::Absent;
        let mut remaining = n_req;
        let mut cursor = Cursor::Req(req_list.next[HEAD]);
        let mut stuck = Stuck {
            depth: 0,
            req_bits: req_bits.clone(),
            opt_bits: opt_bits.clone(),
            state,
            recent: Vec::new(),
        };
        let mut steps: u64 = 0;

        loop {
            if remaining == 0 {
                return Ok(());
            }
            steps += 1;
            if steps > budget {
                return Err(Failure::BudgetExhausted(stuck));
            }

            // Pick the next candidate at the current configuration: definite
            // operations invoked before the earliest pending completion, then
            // optional ones invoked before that same bound.
            let candidate = match cursor {
                Cursor::Req(node) if node == TAIL => {
                    cursor = Cursor::Opt {
                        node: opt_list.next[HEAD],
                        bound: INF,
                    };
                    continue;
                }
                Cursor::Req(node) if is_return_node(node) => {
                    let bound = self.required[node_slot(node)].complete;
                    cursor = Cursor::Opt {
                        node: opt_list.next[HEAD],
                        bound,
                    };
                    continue;
                }
                Cursor::Req(node) => Some((node, None)),
                Cursor::Opt { node, bound } => (node != TAIL
                    && self.optional[node - 2].invoke <= bound)
                    .then_some((node, Some(bound))),
            };

            let Some((node, opt_bound)) = candidate else {
                // Every candidate failed: undo the last linearization and try
                // the alternatives after it.
                let Some(frame) = stack.pop() else {
                    return Err(Failure::NotLinearizable(stuck));
                };
                state = frame.prev;
                match frame.opt_bound {
                    None => {
                        let slot = node_slot(frame.node);
                        req_list.relink(frame.node + 1);
                        req_list.relink(frame.node);
                        req_bits.clear(slot);
                        remaining += 1;
                        cursor = Cursor::Req(req_list.next[frame.node]);
                    }
                    Some(bound) => {
                        opt_list.relink(frame.node);
                        opt_bits.clear(frame.node - 2);
                        cursor = Cursor::Opt {
                            node: opt_list.next[frame.node],
                            bound,
                        };
                    }
                }
                continue;
            };

            let (op, bit) = match opt_bound {
                None => (&self.required[node_slot(node)], node_slot(node)),
                Some(_) => (&self.optional[node - 2], node - 2),
            };
            let next_state = match (step(state, op.kind), opt_bound) {
                (Some(s), None) => Some(s),
                (Some(s), Some(bound))
                    if self.twin[bit].is_none_or(|t| opt_bits.get(t))
                        && self.optional_matters(&req_list, &opt_list, node, bound, state, s) =>
                {
                    Some(s)
                }
                _ => None,
            };
            let advanced = match opt_bound {
                None => Cursor::Req(req_list.next[node]),
                Some(bound) => Cursor::Opt {
                    node: opt_list.next[node],
                    bound,
                },
            };
            let Some(next_state) = next_state else {
                cursor = advanced;
                continue;
            };
            let bits = match opt_bound {
                None => &mut req_bits,
                Some(_) => &mut opt_bits,
            };
            bits.set(bit);
            if !cache.visit(&req_bits, next_state, &opt_bits) {
                match opt_bound {
                    None => req_bits.clear(bit),
                    Some(_) => opt_bits.clear(bit),
                }
                cursor = advanced;
                continue;
            }

            stack.push(Frame {
                node,
                prev: state,
                opt_bound,
            });
            match opt_bound {
                None => {
                    req_list.unlink(node);
                    req_list.unlink(node + 1);
                    remaining -= 1;
                }
                Some(_) => opt_list.unlink(node),
            }
            state = next_state;
            cursor = Cursor::Req(req_list.next[HEAD]);

            let depth = n_req - remaining;
            if depth > stuck.depth {
                stuck = Stuck {
                    depth,
                    req_bits: req_bits.clone(),
                    opt_bits: opt_bits.clone(),
                    state,
                    recent: stack
                        .iter()
                        .rev()
                        .take(RECENT)
                        .rev()
                        .map(|f| match f.opt_bound {
                            None => self.required[node_slot(f.node)].event,
                            Some(_) => self.optional[f.node - 2].event,
                        })
                        .collect(),
                };
            }
        }
    }

    /// Whether linearizing the optional operation at `node`, taking the
    /// state from `before` to `after`, can be necessary here.
    ///
    /// It is not if no operation X that could come next cares: if X ends in
    /// the same state either way, the optional operation can be dropped from
    /// any linearization that continues with X; if X is legal and changes
    /// nothing either way, the optional operation (which never completes) can
    /// be moved after X. Repeating either rewrite turns any linearization into
    /// one that only uses optional operations where this returns true, so the
    /// search loses nothing by trying them only there, and avoids exploring
    /// every point at which each unobserved ambiguous write might have landed.
    fn optional_matters(
        &self,
        req: &List,
        opt: &List,
        node: usize,
        bound: u64,
        before: State,
        after: State,
    ) -> bool {
        if after == before {
            return false;
        }
        let matters = |kind: Kind| {
            let (with, without) = (step(after, kind), step(before, kind));
            with.is_some() && with != without && !(with == Some(after) && without == Some(before))
        };
        let mut n = req.next[HEAD];
        while n != TAIL && !is_return_node(n) {
            if matters(self.required[node_slot(n)].kind) {
                return true;
            }
            n = req.next[n];
        }
        let mut n = opt.next[HEAD];
        while n != TAIL && self.optional[n - 2].invoke <= bound {
            if n != node && matters(self.optional[n - 2].kind) {
                return true;
            }
            n = opt.next[n];
        }
        false
    }

    // -----------------------------------------------------------------------
    // Reporting

    /// Renders the configuration where the search got furthest: what had been
    /// linearized, and why none of the possible next operations fits.
    fn explain(&self, stuck: &Stuck, verdict: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "key {:?} {verdict}: {} operations with known outcome, {} of unknown outcome.",
            self.key,
            self.required.len(),
            self.optional.len()
        );
        let _ = writeln!(
            out,
            "At best {} of the {} known-outcome operations could be linearized; state then: {}.",
            stuck.depth,
            self.required.len(),
            self.fmt_state(stuck.state)
        );
        if !stuck.recent.is_empty() {
            let _ = writeln!(out, "Last operations linearized, in order:");
            for &e in &stuck.recent {
                let _ = writeln!(out, "  {}", self.describe(e));
            }
        }

        let pending = self
            .required
            .iter()
            .enumerate()
            .filter(|(slot, _)| !stuck.req_bits.get(*slot));
        let Some((_, first_done)) = pending.clone().min_by_key(|(_, op)| op.complete) else {
            return out;
        };
        let bound = first_done.complete;
        let _ = writeln!(
            out,
            "Next, one of these had to take effect before {} completed:",
            self.describe_short(first_done.event)
        );
        let mut definite: Vec<&KeyOp> = pending
            .filter(|(_, op)| op.invoke <= bound)
            .map(|(_, op)| op)
            .collect();
        definite.sort_by_key(|op| op.invoke);
        self.list_candidates(&mut out, stuck.state, &definite);
        let ambiguous: Vec<&KeyOp> = self
            .optional
            .iter()
            .enumerate()
            .filter(|(slot, op)| !stuck.opt_bits.get(*slot) && op.invoke <= bound)
            .map(|(_, op)| op)
            .collect();
        if !ambiguous.is_empty() {
            let _ = writeln!(
                out,
                "or, before it, one of these ambiguous ones (which may also never have happened):"
            );
            self.list_candidates(&mut out, stuck.state, &ambiguous);
        }
        out
    }

    fn list_candidates(&self, out: &mut String, state: State, ops: &[&KeyOp]) {
        for op in ops.iter().take(MAX_LISTED) {
            let why = match step(state, op.kind) {
                None => "impossible in that state",
                Some(_) => "possible, but the rest of the history cannot follow it",
            };
            let _ = writeln!(out, "  {}\n      -> {why}", self.describe(op.event));
        }
        if ops.len() > MAX_LISTED {
            let _ = writeln!(out, "  ... and {} more", ops.len() - MAX_LISTED);
        }
    }

    fn fmt_state(&self, state: State) -> String {
        match state {
            State::Absent => "absent".to_string(),
            State::Present { val, ver } => {
                let val = match self.values.get(val as usize) {
                    Some(Some(v)) => fmt_value(v),
                    _ => "a value no read returned".to_string(),
                };
                match ver {
                    Ver::Known(v) => format!("{val} @ version {v}"),
                    Ver::Any => format!("{val} @ unknown version (ambiguous write)"),
                }
            }
        }
    }

    fn describe_short(&self, i: usize) -> String {
        match self.history.get(i) {
            Some(e) => format!("#{i} (client {}, {})", e.client, fmt_op(&e.op)),
            None => format!("#{i}"),
        }
    }

    fn describe(&self, i: usize) -> String {
        describe(self.history, self.base, i)
    }
}

/// Timestamps are kept as nanoseconds since `base`; saturates below `INF`
/// so that a finite time never reads as "never".
fn nanos_since(base: Instant, t: Instant) -> u64 {
    let n = t.saturating_duration_since(base).as_nanos();
    u64::try_from(n).unwrap_or(INF - 1).min(INF - 1)
}

/// One event as a report line: index, client, operation, outcome, window.
fn describe(history: &[Event], base: Instant, i: usize) -> String {
    let Some(e) = history.get(i) else {
        return format!("#{i}");
    };
    let outcome = match &e.outcome {
        Outcome::Read(None) => "absent".to_string(),
        Outcome::Read(Some((v, ver))) => format!("{} @ version {ver}", fmt_value(v)),
        Outcome::Written(v) => format!("ok, version {v}"),
        Outcome::CasFailed => "precondition failed".to_string(),
        Outcome::Unknown => "unknown".to_string(),
    };
    let time = |t: Instant| fmt_nanos(nanos_since(base, t));
    let complete = e.complete.map_or_else(|| "never".to_string(), time);
    format!(
        "#{i} client {}: {} -> {outcome}  [{} .. {complete}]",
        e.client,
        fmt_op(&e.op),
        time(e.invoke),
    )
}

/// How many linearized operations, and how many candidates, a report lists.
const RECENT: usize = 5;
const MAX_LISTED: usize = 10;

fn fmt_op(op: &Op) -> String {
    match op {
        Op::Read => "read".to_string(),
        Op::Write(Some(v)) => format!("write {}", fmt_value(v)),
        Op::Write(None) => "delete".to_string(),
        Op::Cas {
            expect: Some(ver),
            new,
        } => {
            format!("cas(if version {ver}) {}", fmt_value(new))
        }
        Op::Cas { expect: None, new } => format!("cas(if absent) {}", fmt_value(new)),
    }
}

/// Values as quoted text when they are readable, hex otherwise, cut short
/// either way so that a report stays legible.
fn fmt_value(v: &[u8]) -> String {
    const MAX_CHARS: usize = 40;
    match std::str::from_utf8(v) {
        Ok(s) if !s.chars().any(char::is_control) => {
            if s.chars().count() > MAX_CHARS {
                let cut: String = s.chars().take(MAX_CHARS).collect();
                format!("{cut:?}...")
            } else {
                format!("{s:?}")
            }
        }
        _ => {
            let hex: String = v
                .iter()
                .take(MAX_CHARS / 2)
                .map(|b| format!("{b:02x}"))
                .collect();
            let more = if v.len() > MAX_CHARS / 2 { "..." } else { "" };
            format!("0x{hex}{more} ({} bytes)", v.len())
        }
    }
}

fn fmt_nanos(n: u64) -> String {
    if n == INF {
        "never".to_string()
    } else {
        format!("t+{}.{:03}us", n / 1000, n % 1000)
    }
}

// ---------------------------------------------------------------------------
// Search machinery

enum Failure {
    NotLinearizable(Stuck),
    BudgetExhausted(Stuck),
}

/// The deepest configuration the search reached, kept for the report.
struct Stuck {
    /// Definite operations linearized.
    depth: usize,
    req_bits: Bits,
    opt_bits: Bits,
    state: State,
    /// Events of the last few linearized operations, oldest first.
    recent: Vec<usize>,
}

/// A linearization on the DFS stack.
struct Frame {
    node: usize,
    prev: State,
    /// `Some(bound)` for an optional operation, with the bound that was in
    /// force when it was picked (to resume the scan after backtracking).
    opt_bound: Option<u64>,
}

#[derive(Clone, Copy)]
enum Cursor {
    Req(usize),
    Opt { node: usize, bound: u64 },
}

/// Doubly linked list over node ids with O(1) unlink/relink (dancing links):
/// an unlinked node keeps its pointers, so relinking in reverse order of
/// unlinking restores the list exactly, which is all a DFS ever does.
struct List {
    next: Vec<usize>,
    prev: Vec<usize>,
}

impl List {
    fn new(len: usize, order: &[usize]) -> Self {
        let mut list = List {
            next: vec![TAIL; len],
            prev: vec![HEAD; len],
        };
        let mut last = HEAD;
        for &node in order {
            list.next[last] = node;
            list.prev[node] = last;
            last = node;
        }
        list.next[last] = TAIL;
        list.prev[TAIL] = last;
        list
    }

    fn unlink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = n;
        self.prev[n] = p;
    }

    fn relink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = node;
        self.prev[n] = node;
    }
}

#[derive(Clone, PartialEq, Eq)]
struct Bits(Box<[u64]>);

impl Bits {
    fn new(n: usize) -> Self {
        Bits(vec![0; n.div_ceil(64)].into_boxed_slice())
    }
    fn get(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
    fn set(&mut self, i: usize) {
        if let Some(w) = self.0.get_mut(i / 64) {
            *w |= 1 << (i % 64);
        }
    }
    fn clear(&mut self, i: usize) {
        if let Some(w) = self.0.get_mut(i / 64) {
            *w &= !(1 << (i % 64));
        }
    }
    fn is_subset_of(&self, other: &Bits) -> bool {
        self.0.iter().zip(other.0.iter()).all(|(a, b)| a & !b == 0)
    }
}

#[derive(PartialEq, Eq)]
struct ConfigKey {
    req: Bits,
    state: State,
}

impl Hash for ConfigKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        for w in self.req.0.iter() {
            h.write_u64(*w);
        }
        self.state.hash(h);
    }
}

/// Explored configurations: per (definite operations, state), the antichain
/// of optional-operation sets explored with it.
#[derive(Default)]
struct Cache(HashMap<ConfigKey, Vec<Bits>, BuildHasherDefault<FxHasher>>);

impl Cache {
    /// Records the configuration; false if an explored one already covers it.
    fn visit(&mut self, req: &Bits, state: State, opt: &Bits) -> bool {
        match self.0.entry(ConfigKey {
            req: req.clone(),
            state,
        }) {
            MapEntry::Vacant(e) => {
                e.insert(vec![opt.clone()]);
                true
            }
            MapEntry::Occupied(mut e) => {
                let seen = e.get_mut();
                if seen.iter().any(|s| s.is_subset_of(opt)) {
                    return false;
                }
                seen.retain(|s| !opt.is_subset_of(s));
                seen.push(opt.clone());
                true
            }
        }
    }
}

/// The multiply-rotate hash from rustc (FxHash): the cache keys are bitsets
/// hashed once per search step, where SipHash would dominate the run time and
/// its DoS resistance buys nothing.
#[derive(Default)]
struct FxHasher(u64);

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }
    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }
    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}
