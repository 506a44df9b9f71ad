//! A first-come, first-served limit on concurrent searches.
//!
//! A search is pure CPU work. With more searches running than cores, the
//! scheduler time-slices them: every search takes as long as several, and a
//! long one is stretched the most. Admitting at most one search per core, in
//! arrival order, finishes each one as soon as possible; the others wait
//! their turn (the same total work, lower and steadier latency). A finishing
//! search hands its place to the longest waiting one directly, waking only
//! that thread.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::Thread;

pub(crate) struct Gate {
    state: Mutex<State>,
}

struct State {
    free: usize,
    waiting: VecDeque<Arc<Waiter>>,
}

struct Waiter {
    thread: Thread,
    admitted: AtomicBool,
}

/// Holds a place; gives it on when dropped.
pub(crate) struct Pass<'a>(&'a Gate);

impl Gate {
    pub(crate) fn new(places: usize) -> Gate {
        Gate {
            state: Mutex::new(State {
                free: places.max(1),
                waiting: VecDeque::new(),
            }),
        }
    }

    /// One place per core.
    pub(crate) fn per_core() -> Gate {
        Gate::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// Returns once this caller has a place (blocks the thread until then).
    pub(crate) fn enter(&self) -> Pass<'_> {
        let waiter = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if s.free > 0 && s.waiting.is_empty() {
                s.free -= 1;
                return Pass(self);
            }
            let w = Arc::new(Waiter {
                thread: std::thread::current(),
                admitted: AtomicBool::new(false),
            });
            s.waiting.push_back(w.clone());
            w
        };
        while !waiter.admitted.load(Ordering::Acquire) {
            std::thread::park();
        }
        Pass(self)
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        let mut s = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        match s.waiting.pop_front() {
            Some(w) => {
                drop(s);
                w.admitted.store(true, Ordering::Release);
                w.thread.unpark();
            }
            None => s.free += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn admits_at_most_its_places_and_everyone_eventually() {
        let gate = Arc::new(Gate::new(2));
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (gate, inside, most) = (gate.clone(), inside.clone(), most.clone());
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let _pass = gate.enter();
                        let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(n, Ordering::SeqCst);
                        std::thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(most.load(Ordering::SeqCst) <= 2);
        assert_eq!(gate.state.lock().unwrap().free, 2);
    }
}
