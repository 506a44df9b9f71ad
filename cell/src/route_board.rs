//! The route marketplace as drivers see it, precomputed: for each market
//! version and each driver capability class (vehicle, capacity,
//! qualifications), which open routes that class may claim — worked out
//! once per version and class, not on every driver's every poll. The routes
//! themselves are read fresh per answer (their claim counts move within a
//! version).

use std::collections::HashMap;
use std::sync::Mutex;

use storage::ReadTxn;

use crate::drivers::{Driver, Vehicle};
use crate::routes::{self, Market, Route};

/// What route requirements look at.
type Class = (Vehicle, u32, Vec<String>);

#[derive(Default)]
pub struct RouteBoard {
    board: Mutex<Board>,
}

#[derive(Default)]
struct Board {
    /// The market version the lists below belong to (None: nothing yet).
    version: Option<u64>,
    eligible: HashMap<Class, Vec<String>>,
}

/// Classes remembered per version at most (drivers' capabilities vary
/// little; this only bounds a pathological mix).
const MAX_CLASSES: usize = 4096;

impl RouteBoard {
    /// The market and the open routes `driver` (approved) may claim.
    pub fn for_driver(
        &self,
        read: &ReadTxn,
        driver: &Driver,
    ) -> storage::Result<(Market, Vec<Route>)> {
        let market = routes::market_state(read)?;
        let mut quals = driver.qualifications.clone();
        quals.sort_unstable();
        quals.dedup();
        let class: Class = (driver.vehicle, driver.capacity, quals);
        let known = {
            let mut b = self.board.lock().unwrap_or_else(|e| e.into_inner());
            if b.version != Some(market.version) {
                b.version = Some(market.version);
                b.eligible.clear();
            }
            b.eligible.get(&class).cloned()
        };
        let ids = match known {
            Some(ids) => ids,
            None => {
                let ids: Vec<String> = routes::open_routes(read)?
                    .into_iter()
                    .filter(|r| r.requirements.met_by(driver))
                    .map(|r| r.id)
                    .collect();
                let mut b = self.board.lock().unwrap_or_else(|e| e.into_inner());
                if b.version == Some(market.version) && b.eligible.len() < MAX_CLASSES {
                    b.eligible.insert(class, ids.clone());
                }
                ids
            }
        };
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            // Still open (a version bump would have reset the list, but
            // read what the transaction sees).
            if let Some(r) =
                routes::route(read, &id)?.filter(|r| r.status == routes::RouteStatus::Open)
            {
                out.push(r);
            }
        }
        Ok((market, out))
    }

    /// Forget everything (a snapshot replaced the state).
    pub fn reset(&self) {
        let mut b = self.board.lock().unwrap_or_else(|e| e.into_inner());
        *b = Board::default();
    }
}
