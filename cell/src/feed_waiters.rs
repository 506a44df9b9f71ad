//! Who is waiting on which event feed, so a change wakes only the waiters
//! of the feeds it appended to — not every long poll on the node (with
//! thousands waiting, waking all of them on every apply would turn each
//! write into thousands of reads).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

#[derive(Default)]
pub struct FeedWaiters {
    /// principal → its notifier and how many waiters hold it.
    map: Mutex<HashMap<String, (Arc<Notify>, usize)>>,
    /// Woken by a snapshot install, which may change any feed.
    everyone: Notify,
}

/// A waiter's registration; unregisters when dropped.
pub struct FeedWatch<'a> {
    waiters: &'a FeedWaiters,
    principal: String,
    notify: Arc<Notify>,
}

impl FeedWaiters {
    pub fn watch(&self, principal: &str) -> FeedWatch<'_> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map
            .entry(principal.to_string())
            .or_insert_with(|| (Arc::new(Notify::new()), 0));
        entry.1 += 1;
        FeedWatch {
            waiters: self,
            principal: principal.to_string(),
            notify: entry.0.clone(),
        }
    }

    /// `principal`'s feed grew.
    pub fn wake(&self, principal: &str) {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((n, _)) = map.get(principal) {
            n.notify_waiters();
        }
    }

    /// Any feed may have changed.
    pub fn wake_all(&self) {
        self.everyone.notify_waiters();
    }

    /// Feeds with a waiter right now.
    pub fn watched(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }
}

impl FeedWatch<'_> {
    /// Resolves at the next change of the feed. Create it *before* reading
    /// the feed: a change between the read and the wait still wakes it.
    pub fn changed(&self) -> impl std::future::Future<Output = ()> + '_ {
        let mine = self.notify.notified();
        let all = self.waiters.everyone.notified();
        async move {
            tokio::select! {
                _ = mine => {}
                _ = all => {}
            }
        }
    }
}

impl Drop for FeedWatch<'_> {
    fn drop(&mut self) {
        let mut map = self.waiters.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = map.get_mut(&self.principal) {
            entry.1 -= 1;
            if entry.1 == 0 {
                map.remove(&self.principal);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_change_wakes_only_its_feeds_waiters() {
        let w = FeedWaiters::default();
        let (a, b) = (w.watch("a"), w.watch("b"));
        let (fa, fb) = (a.changed(), b.changed());
        w.wake("a");
        tokio::time::timeout(Duration::from_secs(1), fa)
            .await
            .unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(50), fb)
            .await
            .is_err());
        // Created before the wake, polled after: still woken.
        let fb = b.changed();
        w.wake_all();
        tokio::time::timeout(Duration::from_secs(1), fb)
            .await
            .unwrap();
        assert_eq!(w.watched(), 2);
        drop((a, b));
        assert_eq!(w.watched(), 0);
    }
}
