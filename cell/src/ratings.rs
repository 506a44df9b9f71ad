//! What customers think and how punctual drivers are: a customer rates a
//! delivered order once (its vendor, and the driver who brought it), and
//! every completed delivery is judged on time or late. Running tallies per
//! vendor and driver feed search (`sort=rating`) and drivers' standing.
//!
//! Kept in tables of their own rather than in the vendor and driver rows,
//! whose stored layout stays as it is.

use serde::{Deserialize, Serialize};
use storage::{ReadTxn, Table, WriteTxn};

use crate::orders::Order;

/// Order id → the customer's rating of it.
const RATINGS: Table<Rating> = Table::new("ratings");
/// Vendor or driver id → stars received so far.
const TALLIES: Table<Tally> = Table::new("rating_tallies");
/// Driver id → deliveries completed after they were due.
const LATE: Table<u32> = Table::new("late_deliveries");

/// Ratings below this many say too little to move a tier.
const MIN_RATINGS: u32 = 3;
/// A delivery is late this long after its ETA (or its scheduled window's
/// end); traffic makes a few minutes no one's fault.
const LATE_GRACE_MS: i64 = 10 * 60 * 1000;
const WINDOW_MS: i64 = 60 * 60 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stars(u8);

impl Stars {
    /// 1 to 5.
    pub fn new(n: u8) -> Option<Stars> {
        (1..=5).contains(&n).then_some(Stars(n))
    }

    pub fn get(self) -> u8 {
        self.0
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rating {
    pub order_id: String,
    pub vendor_id: String,
    pub vendor: Stars,
    /// The driver who delivered the order, if it had one, and the stars
    /// they got (a customer may rate only the vendor).
    pub driver_id: Option<String>,
    pub driver: Option<Stars>,
    pub comment: Option<String>,
    pub at: i64,
}

/// Stars received: the average is `stars / count`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    pub stars: u64,
    pub count: u32,
}

impl Tally {
    pub fn average(&self) -> Option<f64> {
        (self.count > 0).then(|| self.stars as f64 / self.count as f64)
    }
}

/// What a driver's tier weighs besides delivery outcomes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Reputation {
    pub ratings: Tally,
    pub late: u32,
}

impl Reputation {
    /// Tiers this reputation costs (0 or more): a poor average over enough
    /// ratings, and more than one delivery in five late.
    pub fn tier_penalty(&self, completed: u32) -> u8 {
        let poorly_rated =
            self.ratings.count >= MIN_RATINGS && self.ratings.average().is_some_and(|a| a < 4.0);
        let often_late = completed >= 5 && self.late as u64 * 5 > completed as u64;
        poorly_rated as u8 + often_late as u8
    }
}

/// Stores `rating` (the caller checked the order is the customer's,
/// delivered and not rated yet) and adds its stars to the tallies.
pub fn record(txn: &WriteTxn, rating: &Rating) -> storage::Result<()> {
    add(txn, &rating.vendor_id, rating.vendor)?;
    if let (Some(driver), Some(stars)) = (&rating.driver_id, rating.driver) {
        add(txn, driver, stars)?;
    }
    txn.put(RATINGS, rating.order_id.as_bytes(), rating)
}

fn add(txn: &WriteTxn, id: &str, stars: Stars) -> storage::Result<()> {
    let mut t = txn.get(TALLIES, id.as_bytes())?.unwrap_or_default();
    t.stars += stars.get() as u64;
    t.count = t.count.saturating_add(1);
    txn.put(TALLIES, id.as_bytes(), &t)
}

pub fn rating_in(txn: &WriteTxn, order_id: &str) -> storage::Result<Option<Rating>> {
    txn.get(RATINGS, order_id.as_bytes())
}

pub fn rating(read: &ReadTxn, order_id: &str) -> storage::Result<Option<Rating>> {
    read.get(RATINGS, order_id.as_bytes())
}

/// A vendor's (or driver's) stars so far.
pub fn tally(read: &ReadTxn, id: &str) -> storage::Result<Tally> {
    Ok(read.get(TALLIES, id.as_bytes())?.unwrap_or_default())
}

pub fn reputation(read: &ReadTxn, driver_id: &str) -> storage::Result<Reputation> {
    Ok(Reputation {
        ratings: tally(read, driver_id)?,
        late: read.get(LATE, driver_id.as_bytes())?.unwrap_or(0),
    })
}

/// The same, inside an apply (route matching ranks by tier).
pub fn reputation_in(txn: &WriteTxn, driver_id: &str) -> storage::Result<Reputation> {
    Ok(Reputation {
        ratings: txn.get(TALLIES, driver_id.as_bytes())?.unwrap_or_default(),
        late: txn.get(LATE, driver_id.as_bytes())?.unwrap_or(0),
    })
}

/// When `order` should have arrived: its ETA, or the end of its
/// scheduled window.
fn due(order: &Order) -> i64 {
    match order.window_start {
        Some(w) => w + WINDOW_MS,
        None => order.created_at + order.eta_minutes as i64 * 60_000,
    }
}

/// `driver_id` delivered `order` at `now`: counts it if it was late. Part
/// of the delivery's apply.
pub fn delivered(txn: &WriteTxn, driver_id: &str, order: &Order, now: i64) -> storage::Result<()> {
    if now > due(order) + LATE_GRACE_MS {
        let late = txn.get(LATE, driver_id.as_bytes())?.unwrap_or(0);
        txn.put(LATE, driver_id.as_bytes(), &late.saturating_add(1))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use storage::{Durability, Store};

    #[test]
    fn a_delivery_is_late_ten_minutes_after_it_was_due() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s.redb"), 1 << 20).unwrap();
        let now = 1_800_000_000_000;
        let minute = 60_000;
        // Due at its ETA, 10 minutes after it was placed.
        let on_demand = crate::orders::sample_order("nyc.ord_1", None, now);
        // Due at the end of its hour-long window.
        let scheduled = crate::orders::sample_order("nyc.ord_2", Some(now + 120 * minute), now);
        let txn = store.write().unwrap();
        delivered(&txn, "d", &on_demand, now + 20 * minute).unwrap();
        delivered(&txn, "d", &scheduled, now + 190 * minute).unwrap();
        txn.commit(Durability::Immediate).unwrap();
        assert_eq!(reputation(&store.read().unwrap(), "d").unwrap().late, 0);
        let txn = store.write().unwrap();
        delivered(&txn, "d", &on_demand, now + 21 * minute).unwrap();
        delivered(&txn, "d", &scheduled, now + 191 * minute).unwrap();
        txn.commit(Durability::Immediate).unwrap();
        assert_eq!(reputation(&store.read().unwrap(), "d").unwrap().late, 2);
    }

    #[test]
    fn stars_are_one_to_five() {
        assert!(Stars::new(0).is_none() && Stars::new(6).is_none());
        assert_eq!(Stars::new(5).map(Stars::get), Some(5));
    }

    #[test]
    fn poor_ratings_and_lateness_each_cost_a_tier() {
        let tally = |stars, count| Tally { stars, count };
        let rep = |ratings, late| Reputation { ratings, late };
        assert_eq!(rep(tally(0, 0), 0).tier_penalty(0), 0);
        // Two poor ratings are not enough to judge by; three are.
        assert_eq!(rep(tally(4, 2), 0).tier_penalty(10), 0);
        assert_eq!(rep(tally(9, 3), 0).tier_penalty(10), 1);
        assert_eq!(rep(tally(14, 3), 0).tier_penalty(10), 0);
        // One late in five is fine, more is not; too few deliveries say
        // nothing.
        assert_eq!(rep(tally(15, 3), 2).tier_penalty(10), 0);
        assert_eq!(rep(tally(15, 3), 3).tier_penalty(10), 1);
        assert_eq!(rep(tally(15, 3), 3).tier_penalty(4), 0);
        assert_eq!(rep(tally(3, 3), 9).tier_penalty(10), 2);
    }
}
