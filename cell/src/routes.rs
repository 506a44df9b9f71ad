//! The route marketplace for scheduled deliveries (DESIGN.md §9).
//!
//! Scheduled deliveries are grouped into routes by zone and hour as their
//! orders are accepted; ops may also create routes by hand. Drivers claim
//! routes during a matching window; when the window closes, one command —
//! `CloseWindow`, proposed by the leader — assigns each route to one
//! claimant, deterministically from the replicated state alone: standing
//! tier, then fewer hours already scheduled that week, then claim time,
//! then driver id; never two overlapping routes for one driver. Unmatched
//! routes roll into the next window.

use serde::{Deserialize, Serialize};
use storage::{ReadTxn, Table, WriteTxn};

use crate::{
    catalog::Location,
    drivers::{self, Driver, DriverStatus, Vehicle},
    events,
};

const ROUTES: Table<Route> = Table::new("routes");
/// Open routes (key = route id).
const OPEN: Table<i64> = Table::new("routes_open");
/// `<zone>/<hour>[/<qualifications>]` → the open auto-built route
/// collecting that slot (deliveries that need qualified drivers share
/// routes only with those needing the same).
const SLOTS: Table<String> = Table::new("routes_slots");
/// `<driver>/<route id>` → route id: a driver's assigned routes.
const SCHEDULE: Table<String> = Table::new("routes_schedule");
const MARKET: Table<Market> = Table::new("routes_market");
const MARKET_KEY: &[u8] = b"market";

const HOUR_MS: i64 = 3_600_000;
const WEEK_MS: i64 = 7 * 24 * HOUR_MS;
/// The Unix epoch was a Thursday; weeks start on Monday.
const MONDAY_OFFSET_MS: i64 = 4 * 24 * HOUR_MS;
/// Zones are squares of this many degrees (≈ 5.5 km of latitude).
const ZONE_DEGREES: f64 = 0.05;
/// Open routes matched per window at most (bounds the apply).
const MAX_OPEN: usize = 5_000;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Requirements {
    pub vehicle: Option<Vehicle>,
    pub min_capacity: u32,
    pub qualifications: Vec<String>,
}

impl Requirements {
    pub fn met_by(&self, d: &Driver) -> bool {
        d.status == DriverStatus::Approved
            && self.vehicle.is_none_or(|v| v == d.vehicle)
            && d.capacity >= self.min_capacity
            && self
                .qualifications
                .iter()
                .all(|q| d.qualifications.contains(q))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stop {
    pub delivery_id: Option<String>,
    pub location: Location,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claim {
    pub driver_id: String,
    pub at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RouteStatus {
    Open,
    Assigned,
    /// Nobody took it by the time its deliveries had to leave; they went
    /// to on-demand dispatch.
    Expired,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub id: String,
    pub zone: String,
    pub window_start: i64,
    pub window_end: i64,
    pub stops: Vec<Stop>,
    /// Minor units.
    pub pay: i64,
    pub currency: String,
    pub requirements: Requirements,
    pub status: RouteStatus,
    pub driver_id: Option<String>,
    pub claims: Vec<Claim>,
    /// Windows this route went through unmatched.
    pub windows: u32,
    pub created_at: i64,
}

/// The market's clock: its version (bumped by every change apps care
/// about) and when the current matching window closes (0: no window is
/// running; the next claim starts one, so an idle market writes nothing).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Market {
    pub version: u64,
    pub window_closes_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RouteCommand {
    Create {
        route: Box<Route>,
        now: i64,
    },
    Claim {
        route_id: String,
        driver_id: String,
        now: i64,
        /// Length of the window this claim starts if none is running
        /// (from the config store, decided before the command).
        window_ms: i64,
    },
    Withdraw {
        route_id: String,
        driver_id: String,
    },
    /// Proposed by the leader when the running window's time is up.
    CloseWindow {
        now: i64,
    },
    /// Proposed by the leader when an unclaimed open route's deliveries
    /// are due to leave (`release_due`).
    Release {
        now: i64,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RouteResponse {
    Route(Box<Route>),
    Matched {
        assigned: Vec<(String, String)>,
        unmatched: usize,
    },
    NotFound,
    Ineligible,
    Conflict(String),
    /// Routes expired by a `Release`.
    Released(Vec<String>),
}

pub fn zone_of(l: &Location) -> String {
    let lat = (l.lat / ZONE_DEGREES).floor() as i64;
    let lng = (l.lng / ZONE_DEGREES).floor() as i64;
    format!("z{lat}_{lng}")
}

fn market(txn: &WriteTxn) -> storage::Result<Market> {
    Ok(txn.get(MARKET, MARKET_KEY)?.unwrap_or_default())
}

/// The market version, inside a write.
pub fn market_version(txn: &WriteTxn) -> storage::Result<u64> {
    Ok(market(txn)?.version)
}

fn bump(txn: &WriteTxn) -> storage::Result<()> {
    let mut m = market(txn)?;
    m.version += 1;
    txn.put(MARKET, MARKET_KEY, &m)
}

fn put_open(txn: &WriteTxn, r: &Route) -> storage::Result<()> {
    txn.put(ROUTES, r.id.as_bytes(), r)?;
    txn.put(OPEN, r.id.as_bytes(), &r.window_start)
}

fn slot_key(zone: &str, hour: i64, qualifications: &[String]) -> String {
    if qualifications.is_empty() {
        format!("{zone}/{hour}")
    } else {
        format!("{zone}/{hour}/{}", qualifications.join(","))
    }
}

/// Adds a scheduled delivery to the open route of its zone and hour for
/// drivers with `qualifications` (creating it). Part of the order accept's
/// apply.
pub fn add_scheduled(
    txn: &WriteTxn,
    delivery: &drivers::Delivery,
    window_start: i64,
    qualifications: Vec<String>,
    now: i64,
) -> storage::Result<()> {
    let hour = window_start.div_euclid(HOUR_MS) * HOUR_MS;
    let zone = zone_of(&delivery.pickup);
    let slot = slot_key(&zone, hour, &qualifications);
    let stop = Stop {
        delivery_id: Some(delivery.id.clone()),
        location: delivery.dropoff,
    };
    // A route drivers have claimed stays what they claimed: the stop
    // starts a new route for the slot.
    let existing = match txn.get(SLOTS, slot.as_bytes())? {
        Some(id) => txn
            .get(ROUTES, id.as_bytes())?
            .filter(|r| r.status == RouteStatus::Open && r.claims.is_empty()),
        None => None,
    };
    let route = match existing {
        Some(mut r) => {
            r.stops.push(stop);
            r.pay += delivery.pay;
            r
        }
        None => {
            let id = delivery.id.replacen(".dlv_", ".rte_", 1);
            txn.put(SLOTS, slot.as_bytes(), &id)?;
            Route {
                id,
                zone,
                window_start: hour,
                window_end: hour + HOUR_MS,
                stops: vec![stop],
                pay: delivery.pay,
                currency: delivery.currency.clone(),
                requirements: Requirements {
                    qualifications,
                    ..Requirements::default()
                },
                status: RouteStatus::Open,
                driver_id: None,
                claims: Vec::new(),
                windows: 0,
                created_at: now,
            }
        }
    };
    put_open(txn, &route)?;
    bump(txn)
}

/// Hours of the booked `windows` in the week of `at`.
fn hours_in_week(windows: &[(i64, i64)], at: i64) -> f64 {
    let week = (at - MONDAY_OFFSET_MS).div_euclid(WEEK_MS);
    let ms: i64 = windows
        .iter()
        .filter(|(s, _)| (s - MONDAY_OFFSET_MS).div_euclid(WEEK_MS) == week)
        .map(|(s, e)| e - s)
        .sum();
    ms as f64 / HOUR_MS as f64
}

fn schedule_in(txn: &WriteTxn, driver: &str) -> storage::Result<Vec<Route>> {
    let prefix = format!("{driver}/");
    let mut out = Vec::new();
    for (_, id) in txn
        .range(
            SCHEDULE,
            storage::within(prefix.as_bytes().to_vec(), prefix.as_bytes()),
            10_000,
        )?
        .into_iter()
        .take_while(|(k, _)| k.starts_with(prefix.as_bytes()))
    {
        if let Some(r) = txn.get(ROUTES, id.as_bytes())? {
            out.push(r);
        }
    }
    Ok(out)
}

/// Deterministic: reads only the command and the transaction.
pub fn apply(txn: &WriteTxn, cmd: RouteCommand) -> storage::Result<RouteResponse> {
    use RouteResponse as R;
    match cmd {
        RouteCommand::Create { route, now } => {
            let _ = now;
            put_open(txn, &route)?;
            bump(txn)?;
            Ok(R::Route(route))
        }
        RouteCommand::Claim {
            route_id,
            driver_id,
            now,
            window_ms,
        } => {
            let Some(mut r) = txn.get(ROUTES, route_id.as_bytes())? else {
                return Ok(R::NotFound);
            };
            if r.status != RouteStatus::Open {
                return Ok(R::Conflict("the route is no longer open".into()));
            }
            let Some(d) = txn.get(drivers::DRIVERS, driver_id.as_bytes())? else {
                return Ok(R::Ineligible);
            };
            if !r.requirements.met_by(&d) {
                return Ok(R::Ineligible);
            }
            if !r.claims.iter().any(|c| c.driver_id == driver_id) {
                r.claims.push(Claim { driver_id, at: now });
                txn.put(ROUTES, r.id.as_bytes(), &r)?;
                let mut m = market(txn)?;
                if m.window_closes_at == 0 {
                    m.window_closes_at = now + window_ms.max(1);
                    m.version += 1;
                    txn.put(MARKET, MARKET_KEY, &m)?;
                }
            }
            Ok(R::Route(Box::new(r)))
        }
        RouteCommand::Withdraw {
            route_id,
            driver_id,
        } => {
            let Some(mut r) = txn.get(ROUTES, route_id.as_bytes())? else {
                return Ok(R::NotFound);
            };
            if r.status != RouteStatus::Open {
                return Ok(R::Conflict("the route is no longer open".into()));
            }
            r.claims.retain(|c| c.driver_id != driver_id);
            txn.put(ROUTES, r.id.as_bytes(), &r)?;
            Ok(R::Route(Box::new(r)))
        }
        RouteCommand::CloseWindow { now } => {
            let mut m = market(txn)?;
            if m.window_closes_at == 0 || m.window_closes_at > now {
                // Proposed twice (e.g. across a leader change): one close
                // per window.
                return Ok(R::Matched {
                    assigned: Vec::new(),
                    unmatched: 0,
                });
            }
            let (assigned, unmatched) = match_window(txn, now)?;
            m.version += 1;
            m.window_closes_at = 0;
            txn.put(MARKET, MARKET_KEY, &m)?;
            Ok(R::Matched {
                assigned,
                unmatched,
            })
        }
        RouteCommand::Release { now } => {
            let mut released = Vec::new();
            for (k, window_start) in txn.range(OPEN, Vec::new().., MAX_OPEN)? {
                if !leaves_by(window_start, now) {
                    continue;
                }
                let Some(mut r) = txn.get(ROUTES, &k)? else {
                    continue;
                };
                // A claimed route waits for its window's close, which
                // matches it or clears its claims.
                if !r.claims.is_empty() {
                    continue;
                }
                r.status = RouteStatus::Expired;
                txn.delete(OPEN, &k)?;
                let slot = slot_key(&r.zone, r.window_start, &r.requirements.qualifications);
                if txn.get(SLOTS, slot.as_bytes())?.as_deref() == Some(r.id.as_str()) {
                    txn.delete(SLOTS, slot.as_bytes())?;
                }
                for id in r.stops.iter().filter_map(|s| s.delivery_id.as_deref()) {
                    drivers::release_from_route(txn, id, now)?;
                }
                txn.put(ROUTES, r.id.as_bytes(), &r)?;
                released.push(r.id);
            }
            if !released.is_empty() {
                bump(txn)?;
            }
            Ok(R::Released(released))
        }
    }
}

/// Whether a route starting at `window_start` is past the time its
/// deliveries leave on demand if no route driver has them.
fn leaves_by(window_start: i64, now: i64) -> bool {
    window_start - drivers::SCHEDULED_LEAD_MS <= now
}

/// Whether some open, unclaimed route is due for `Release` (the leader's
/// check before proposing one).
pub fn release_due(read: &ReadTxn, now: i64) -> storage::Result<bool> {
    for (k, window_start) in read.range(OPEN, Vec::new().., MAX_OPEN)? {
        if leaves_by(window_start, now)
            && read
                .get(ROUTES, &k)?
                .is_some_and(|r: Route| r.claims.is_empty())
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// One window's matching: routes in (window start, id) order; for each,
/// the best eligible claimant without an overlapping route.
fn match_window(txn: &WriteTxn, now: i64) -> storage::Result<(Vec<(String, String)>, usize)> {
    let mut routes: Vec<Route> = Vec::new();
    for (k, _) in txn.range(OPEN, Vec::new().., MAX_OPEN)? {
        if let Some(r) = txn.get(ROUTES, &k)? {
            routes.push(r);
        }
    }
    routes.sort_by(|a, b| a.window_start.cmp(&b.window_start).then(a.id.cmp(&b.id)));
    let mut assigned = Vec::new();
    let mut unmatched = 0;
    // Each claimant's booked windows, read once and kept current as this
    // window assigns routes.
    let mut booked: std::collections::HashMap<String, Vec<(i64, i64)>> =
        std::collections::HashMap::new();
    // Claimants read once (many claim several routes).
    let mut claimants: std::collections::HashMap<String, Option<drivers::Driver>> =
        std::collections::HashMap::new();
    for mut r in routes {
        if r.claims.is_empty() {
            continue;
        }
        let mut ranked = Vec::with_capacity(r.claims.len());
        for c in &r.claims {
            if !claimants.contains_key(&c.driver_id) {
                let d = txn.get(drivers::DRIVERS, c.driver_id.as_bytes())?;
                claimants.insert(c.driver_id.clone(), d);
            }
            let Some(Some(d)) = claimants.get(&c.driver_id) else {
                continue;
            };
            if !r.requirements.met_by(d) {
                continue;
            }
            if !booked.contains_key(&d.id) {
                let windows = schedule_in(txn, &d.id)?
                    .into_iter()
                    .map(|s| (s.window_start, s.window_end))
                    .collect();
                booked.insert(d.id.clone(), windows);
            }
            let windows = &booked[&d.id];
            if windows
                .iter()
                .any(|&(s, e)| s < r.window_end && r.window_start < e)
            {
                continue;
            }
            let hours = hours_in_week(windows, r.window_start);
            let tier = d
                .standing
                .tier_with(&crate::ratings::reputation_in(txn, &d.id)?);
            ranked.push((tier, hours, c.at, d.id.clone()));
        }
        ranked.sort_by(|a, b| {
            a.0.cmp(&b.0)
                .then(a.1.total_cmp(&b.1))
                .then(a.2.cmp(&b.2))
                .then(a.3.cmp(&b.3))
        });
        let losers: Vec<String> = r.claims.iter().map(|c| c.driver_id.clone()).collect();
        match ranked.first() {
            Some((_, _, _, winner)) => {
                let winner = winner.clone();
                booked
                    .entry(winner.clone())
                    .or_default()
                    .push((r.window_start, r.window_end));
                r.status = RouteStatus::Assigned;
                r.driver_id = Some(winner.clone());
                txn.delete(OPEN, r.id.as_bytes())?;
                for id in r.stops.iter().filter_map(|s| s.delivery_id.as_deref()) {
                    drivers::assign_for_route(txn, id, &winner, &r.id, now)?;
                }
                txn.put(SCHEDULE, format!("{winner}/{}", r.id).as_bytes(), &r.id)?;
                let data = if crate::command_version::recorded_in(txn)? >= 2 {
                    serde_json::json!({"route_id": r.id, "driver_id": winner, "window_start": crate::http::identity_api::rfc3339(r.window_start)})
                } else {
                    serde_json::json!({"route_id": r.id, "driver_id": winner, "window_start": r.window_start})
                };
                events::append(txn, &winner, "route.matched", now, &data)?;
                for l in losers.iter().filter(|l| **l != winner) {
                    events::append(
                        txn,
                        l,
                        "route.unmatched",
                        now,
                        &serde_json::json!({"route_id": r.id}),
                    )?;
                }
                assigned.push((r.id.clone(), winner));
            }
            None => {
                unmatched += 1;
                r.windows += 1;
                for l in &losers {
                    events::append(
                        txn,
                        l,
                        "route.unmatched",
                        now,
                        &serde_json::json!({"route_id": r.id}),
                    )?;
                }
            }
        }
        r.claims.clear();
        txn.put(ROUTES, r.id.as_bytes(), &r)?;
    }
    Ok((assigned, unmatched))
}

pub fn market_state(read: &ReadTxn) -> storage::Result<Market> {
    Ok(read.get(MARKET, MARKET_KEY)?.unwrap_or_default())
}

pub fn route(read: &ReadTxn, id: &str) -> storage::Result<Option<Route>> {
    read.get(ROUTES, id.as_bytes())
}

/// Open routes `driver` may claim.
/// Every open route, in (window start, id) order.
pub fn open_routes(read: &ReadTxn) -> storage::Result<Vec<Route>> {
    let mut out = Vec::new();
    for (k, _) in read.range(OPEN, Vec::new().., MAX_OPEN)? {
        if let Some(r) = read.get(ROUTES, &k)? {
            out.push(r);
        }
    }
    out.sort_by(|a, b| a.window_start.cmp(&b.window_start).then(a.id.cmp(&b.id)));
    Ok(out)
}

pub fn schedule(read: &ReadTxn, driver: &str) -> storage::Result<Vec<Route>> {
    let prefix = format!("{driver}/");
    let mut out = Vec::new();
    for (_, id) in read
        .range(
            SCHEDULE,
            storage::within(prefix.as_bytes().to_vec(), prefix.as_bytes()),
            10_000,
        )?
        .into_iter()
        .take_while(|(k, _)| k.starts_with(prefix.as_bytes()))
    {
        if let Some(r) = read.get(ROUTES, id.as_bytes())? {
            out.push(r);
        }
    }
    out.sort_by_key(|r| r.window_start);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use storage::{Durability, Store};

    const NOW: i64 = 1_800_000_000_000;

    /// A scheduled order's delivery, held for its route (what the order's
    /// accept does).
    fn scheduled(txn: &WriteTxn, n: u32, window_start: i64) -> drivers::Delivery {
        scheduled_for(txn, n, window_start, Vec::new())
    }

    fn scheduled_for(
        txn: &WriteTxn,
        n: u32,
        window_start: i64,
        qualifications: Vec<String>,
    ) -> drivers::Delivery {
        let order =
            crate::orders::sample_order(&format!("nyc.ord_{n:026}"), Some(window_start), NOW);
        let d = drivers::create_delivery(txn, &order, NOW).unwrap();
        drivers::hold_for_route(txn, &d.id).unwrap();
        add_scheduled(txn, &d, window_start, qualifications, NOW).unwrap();
        d
    }

    #[test]
    fn claimed_routes_keep_their_stops_and_unclaimed_ones_are_released_when_due() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s.redb"), 1 << 20).unwrap();
        let window = NOW + 2 * HOUR_MS;
        let txn = store.write().unwrap();
        scheduled(&txn, 1, window);
        let mut claimed = open_routes_in(&txn);
        assert_eq!(claimed.len(), 1);
        claimed[0].claims.push(Claim {
            driver_id: "nyc.acc_d".into(),
            at: NOW,
        });
        put_open(&txn, &claimed[0]).unwrap();
        // The same slot, but the claimed route stays as it was claimed.
        let second = scheduled(&txn, 2, window);
        let routes = open_routes_in(&txn);
        assert_eq!(routes.len(), 2);
        let (old, new): (Vec<_>, Vec<_>) = routes.into_iter().partition(|r| r.id == claimed[0].id);
        assert_eq!(old[0].stops.len(), 1);
        assert_eq!(
            new[0].stops[0].delivery_id.as_deref(),
            Some(second.id.as_str())
        );
        txn.commit(Durability::Immediate).unwrap();

        // Not due yet: nothing moves.
        let early = window - drivers::SCHEDULED_LEAD_MS - 1;
        assert!(!release_due(&store.read().unwrap(), early).unwrap());
        let txn = store.write().unwrap();
        let r = apply(&txn, RouteCommand::Release { now: early }).unwrap();
        assert_eq!(r, RouteResponse::Released(Vec::new()));
        txn.commit(Durability::Immediate).unwrap();

        // Due: the unclaimed route expires and its delivery goes out on
        // demand; the claimed one waits for its window's close.
        let due = window - drivers::SCHEDULED_LEAD_MS;
        assert!(release_due(&store.read().unwrap(), due).unwrap());
        let txn = store.write().unwrap();
        let r = apply(&txn, RouteCommand::Release { now: due }).unwrap();
        assert_eq!(r, RouteResponse::Released(vec![new[0].id.clone()]));
        txn.commit(Durability::Immediate).unwrap();
        let read = store.read().unwrap();
        assert_eq!(
            route(&read, &new[0].id).unwrap().unwrap().status,
            RouteStatus::Expired
        );
        let open: Vec<String> = open_routes(&read)
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(open, vec![claimed[0].id.clone()]);
        let waiting: Vec<String> = drivers::dispatchable(&read, 10)
            .unwrap()
            .into_iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(waiting, vec![second.id.clone()]);
        assert!(!release_due(&read, due).unwrap());
    }

    #[test]
    fn deliveries_for_qualified_drivers_get_routes_of_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s.redb"), 1 << 20).unwrap();
        let window = NOW + 2 * HOUR_MS;
        let txn = store.write().unwrap();
        let rx = || vec!["rx".to_string()];
        let plain = scheduled(&txn, 1, window);
        let first_rx = scheduled_for(&txn, 2, window, rx());
        let second_rx = scheduled_for(&txn, 3, window, rx());
        let mut routes: Vec<(Vec<String>, Vec<String>)> = open_routes_in(&txn)
            .into_iter()
            .map(|r| {
                let stops = r.stops.into_iter().filter_map(|s| s.delivery_id).collect();
                (r.requirements.qualifications, stops)
            })
            .collect();
        routes.sort();
        assert_eq!(
            routes,
            vec![
                (Vec::new(), vec![plain.id]),
                (rx(), vec![first_rx.id, second_rx.id]),
            ]
        );
    }

    fn open_routes_in(txn: &WriteTxn) -> Vec<Route> {
        txn.range(OPEN, Vec::new().., MAX_OPEN)
            .unwrap()
            .into_iter()
            .filter_map(|(k, _)| txn.get(ROUTES, &k).unwrap())
            .collect()
    }
}
