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
/// `<delivery id>` → the route it is a stop of (written from command
/// version 4; a route's stops are otherwise found only through the route).
const ROUTE_OF: Table<String> = Table::new("routes_by_delivery");
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

/// The open routes' ids, the `limit` with the earliest windows first. The
/// table is keyed by route id, which sorts by when a route was built, not
/// by its window: builds before command version 4 took its first rows,
/// so once 5,000 routes built earlier for later windows were open, a
/// route for a nearer window was never released, listed or matched.
fn earliest_open(rows: Vec<(Vec<u8>, i64)>, limit: usize) -> Vec<Vec<u8>> {
    let mut rows = rows;
    rows.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    rows.into_iter().take(limit).map(|(k, _)| k).collect()
}

/// How many rows of `OPEN` apply reads at the recorded command version
/// (all of them from version 4: they are small and not decoded into
/// routes unless due).
fn open_rows(version: u32) -> usize {
    if version >= 4 {
        usize::MAX
    } else {
        MAX_OPEN
    }
}

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
    /// Every order it had stops for was cancelled.
    Cancelled,
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
    if crate::command_version::recorded_in(txn)? >= 4 {
        txn.put(ROUTE_OF, delivery.id.as_bytes(), &route.id)?;
    }
    put_open(txn, &route)?;
    bump(txn)
}

/// The delivery's order was cancelled: its stop leaves its route, with
/// its pay, and a route left without stops is cancelled — an open one
/// leaves the market, an assigned one its driver's schedule (who is told
/// with `route.updated`). Part of the cancel's apply; deliveries added to
/// routes before command version 4 are not indexed and stay where they
/// are.
pub fn drop_stop(txn: &WriteTxn, delivery_id: &str, pay: i64, now: i64) -> storage::Result<()> {
    let Some(route_id) = txn.get(ROUTE_OF, delivery_id.as_bytes())? else {
        return Ok(());
    };
    txn.delete(ROUTE_OF, delivery_id.as_bytes())?;
    let Some(mut r) = txn.get(ROUTES, route_id.as_bytes())? else {
        return Ok(());
    };
    let before = r.stops.len();
    r.stops
        .retain(|s| s.delivery_id.as_deref() != Some(delivery_id));
    if r.stops.len() == before || r.status == RouteStatus::Expired {
        return Ok(());
    }
    r.pay = r.pay.saturating_sub(pay).max(0);
    if r.stops.is_empty() {
        if r.status == RouteStatus::Open {
            txn.delete(OPEN, r.id.as_bytes())?;
            let slot = slot_key(&r.zone, r.window_start, &r.requirements.qualifications);
            if txn.get(SLOTS, slot.as_bytes())?.as_deref() == Some(r.id.as_str()) {
                txn.delete(SLOTS, slot.as_bytes())?;
            }
        }
        if let Some(driver) = &r.driver_id {
            txn.delete(SCHEDULE, format!("{driver}/{}", r.id).as_bytes())?;
        }
        r.status = RouteStatus::Cancelled;
    }
    txn.put(ROUTES, r.id.as_bytes(), &r)?;
    if let Some(driver) = &r.driver_id {
        let data = serde_json::json!({
            "route_id": r.id, "status": r.status, "stops": r.stops.len(),
            "pay": {"amount": r.pay, "currency": r.currency},
        });
        events::append(txn, driver, "route.updated", now, &data)?;
    } else if r.status == RouteStatus::Cancelled {
        // Its claimants lose it as if unmatched.
        for c in &r.claims {
            let data = serde_json::json!({"route_id": r.id, "reason": "cancelled"});
            events::append(txn, &c.driver_id, "route.unmatched", now, &data)?;
        }
    }
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

/// The routes assigned to `driver`, inside a write.
pub fn booked_in(txn: &WriteTxn, driver: &str) -> storage::Result<Vec<Route>> {
    Ok(schedule_in(txn, driver)?
        .into_iter()
        .filter(|r| r.status == RouteStatus::Assigned && r.driver_id.as_deref() == Some(driver))
        .collect())
}

/// Whether the route is still ahead of its driver at `now`: its window
/// has not ended (a route's deliveries not yet picked up are checked by
/// the caller).
pub fn ahead_at(r: &Route, now: i64) -> bool {
    r.window_end > now
}

/// The route's driver may no longer do it: it leaves their schedule (and
/// their hours) and goes back to the market, open for claims — or, if
/// its deliveries must leave by now, to release on demand (`Release`, as
/// for any open route). The driver is told with `route.updated`. Part of
/// the hand-back's apply (command version 4).
pub fn reopen_booking(txn: &WriteTxn, mut r: Route, now: i64) -> storage::Result<()> {
    let Some(driver) = r.driver_id.take() else {
        return Ok(());
    };
    txn.delete(SCHEDULE, format!("{driver}/{}", r.id).as_bytes())?;
    r.status = RouteStatus::Open;
    r.claims.clear();
    put_open(txn, &r)?;
    let data = serde_json::json!({
        "route_id": r.id, "status": "withdrawn", "stops": r.stops.len(),
        "pay": {"amount": r.pay, "currency": r.currency},
    });
    events::append(txn, &driver, "route.updated", now, &data)?;
    bump(txn)
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
            let version = crate::command_version::recorded_in(txn)?;
            for (k, window_start) in txn.range(OPEN, Vec::new().., open_rows(version))? {
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
    let version = crate::command_version::recorded(read)?;
    for (k, window_start) in read.range(OPEN, Vec::new().., open_rows(version))? {
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
    let ids = if crate::command_version::recorded_in(txn)? >= 4 {
        earliest_open(txn.range(OPEN, Vec::new().., usize::MAX)?, MAX_OPEN)
    } else {
        let rows = txn.range(OPEN, Vec::new().., MAX_OPEN)?;
        rows.into_iter().map(|(k, _)| k).collect()
    };
    for k in ids {
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

/// The open routes with the earliest windows (up to 5,000), in (window
/// start, id) order.
pub fn open_routes(read: &ReadTxn) -> storage::Result<Vec<Route>> {
    let mut out = Vec::new();
    for k in earliest_open(read.range(OPEN, Vec::new().., usize::MAX)?, MAX_OPEN) {
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

    /// From command version 4 the nearest windows are released and
    /// listed first, however many routes built earlier for later windows
    /// are open.
    #[test]
    fn from_version_4_the_nearest_windows_go_first_however_many_are_open() {
        use crate::command_version;
        for version in [3, 4] {
            let (_dir, store) = command_version::store_at(version);
            let txn = store.write().unwrap();
            scheduled(&txn, 1, NOW + 10 * 24 * HOUR_MS);
            let template = open_routes_in(&txn).remove(0);
            for n in 0..MAX_OPEN {
                let mut r = template.clone();
                r.id = format!("nyc.rte_a{n:05}");
                put_open(&txn, &r).unwrap();
            }
            // Built last (its id sorts after every other), for a window
            // about to start.
            let mut near = template.clone();
            near.id = "nyc.rte_z".into();
            near.stops.clear();
            near.window_start = NOW + HOUR_MS;
            near.window_end = NOW + 2 * HOUR_MS;
            put_open(&txn, &near).unwrap();
            txn.commit(Durability::Immediate).unwrap();
            let read = store.read().unwrap();
            // The listing is a read: the nearest first at any version.
            assert_eq!(open_routes(&read).unwrap()[0].id, near.id);
            let due = NOW + HOUR_MS - drivers::SCHEDULED_LEAD_MS;
            assert_eq!(release_due(&read, due).unwrap(), version >= 4);
            drop(read);
            let txn = store.write().unwrap();
            let r = apply(&txn, RouteCommand::Release { now: due }).unwrap();
            let released = if version >= 4 { vec![near.id] } else { vec![] };
            assert_eq!(r, RouteResponse::Released(released));
        }
    }

    /// From command version 4 a cancelled order's stop leaves its route
    /// with its pay, and a route left without stops is cancelled.
    #[test]
    fn from_version_4_cancelled_orders_leave_their_routes() {
        use crate::command_version;
        let window = NOW + 5 * HOUR_MS;
        for (version, assigned) in [(3, false), (4, false), (4, true)] {
            let (_dir, store) = command_version::store_at(version);
            let txn = store.write().unwrap();
            let first = scheduled(&txn, 1, window);
            let second = scheduled(&txn, 2, window);
            let mut route = open_routes_in(&txn).remove(0);
            assert_eq!(route.stops.len(), 2);
            if assigned {
                route.status = RouteStatus::Assigned;
                route.driver_id = Some("nyc.acc_d".into());
                txn.put(ROUTES, route.id.as_bytes(), &route).unwrap();
                txn.delete(OPEN, route.id.as_bytes()).unwrap();
                let k = format!("nyc.acc_d/{}", route.id);
                txn.put(SCHEDULE, k.as_bytes(), &route.id).unwrap();
            }
            let cancel = |d: &drivers::Delivery| {
                drivers::cancel_for_order(&txn, &d.order_id, NOW + 1).unwrap();
                txn.get(ROUTES, route.id.as_bytes()).unwrap().unwrap()
            };
            let after_one = cancel(&first);
            if version < 4 {
                assert_eq!(after_one, route);
                continue;
            }
            assert_eq!(after_one.stops.len(), 1);
            assert_eq!(after_one.stops[0].delivery_id.as_ref(), Some(&second.id));
            assert_eq!(after_one.pay, route.pay - first.pay);
            let emptied = cancel(&second);
            assert_eq!(emptied.status, RouteStatus::Cancelled);
            assert!(emptied.stops.is_empty());
            assert!(open_routes_in(&txn).is_empty());
            if assigned {
                assert!(schedule_in(&txn, "nyc.acc_d").unwrap().is_empty());
                let last = events::last_seq_in(&txn, "nyc.acc_d").unwrap();
                assert_eq!(last, 2, "a route.updated per cancel");
            } else {
                // The slot is free for the next scheduled delivery.
                scheduled(&txn, 3, window);
                assert_eq!(open_routes_in(&txn).len(), 1);
            }
        }
    }

    /// An emptied open route's claimants lose it as if unmatched.
    #[test]
    fn the_claimants_of_an_emptied_route_are_told() {
        use crate::command_version;
        let (_dir, store) = command_version::store_at(4);
        let txn = store.write().unwrap();
        let only = scheduled(&txn, 1, NOW + 5 * HOUR_MS);
        let mut route = open_routes_in(&txn).remove(0);
        route.claims.push(Claim {
            driver_id: "nyc.acc_c".into(),
            at: NOW,
        });
        put_open(&txn, &route).unwrap();
        drivers::cancel_for_order(&txn, &only.order_id, NOW + 1).unwrap();
        let feed = events::after_stored(&txn_read(txn, &store), "nyc.acc_c", 0, 10).unwrap();
        assert_eq!(feed.len(), 1);
        assert_eq!(feed[0].kind, "route.unmatched");
    }

    fn txn_read(txn: WriteTxn, store: &Store) -> storage::ReadTxn {
        txn.commit(Durability::Immediate).unwrap();
        store.read().unwrap()
    }

    /// A route for one scheduled delivery, matched to `driver` (with the
    /// delivery at `status`); returns (route id, delivery id).
    fn book(
        txn: &WriteTxn,
        driver: &str,
        n: u32,
        window: i64,
        status: drivers::DeliveryStatus,
        min_capacity: u32,
    ) -> (String, String) {
        let mut d = scheduled(txn, n, window);
        let mut r = open_routes_in(txn)
            .into_iter()
            .find(|r| r.window_start == window)
            .unwrap();
        r.status = RouteStatus::Assigned;
        r.driver_id = Some(driver.into());
        r.requirements.min_capacity = min_capacity;
        txn.put(ROUTES, r.id.as_bytes(), &r).unwrap();
        txn.delete(OPEN, r.id.as_bytes()).unwrap();
        let k = format!("{driver}/{}", r.id);
        txn.put(SCHEDULE, k.as_bytes(), &r.id).unwrap();
        d.status = status;
        d.driver_id = Some(driver.into());
        txn.put(drivers::DELIVERIES, d.id.as_bytes(), &d).unwrap();
        (r.id, d.id)
    }

    fn approved_driver(txn: &WriteTxn, version: u32) -> &'static str {
        use crate::command_version::{self, ClusterCommand};
        command_version::apply(txn, ClusterCommand::RaiseVersion { version }).unwrap();
        let driver = "nyc.acc_d";
        let d = drivers::sample_driver(driver, Vehicle::Car, 4);
        txn.put(drivers::DRIVERS, driver.as_bytes(), &d).unwrap();
        driver
    }

    fn schedule_ids(txn: &WriteTxn, driver: &str) -> Vec<String> {
        let routes = schedule_in(txn, driver).unwrap();
        routes.into_iter().map(|r| r.id).collect()
    }

    /// A driver stood down gives up the routes still ahead of them — back
    /// to the market, their deliveries waiting for them again — including
    /// an ops route without deliveries; the routes they have done stay
    /// theirs.
    #[test]
    fn a_stood_down_driver_gives_up_the_routes_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s.redb"), 1 << 20).unwrap();
        let txn = store.write().unwrap();
        let driver = approved_driver(&txn, 4);
        let booked = |n, window, status| book(&txn, driver, n, window, status, 0);
        let (done, _) = booked(1, NOW - 5 * HOUR_MS, drivers::DeliveryStatus::Delivered);
        let (ahead, stop) = booked(2, NOW + 5 * HOUR_MS, drivers::DeliveryStatus::Assigned);
        // An ops route: stops without deliveries.
        let mut ops = txn.get(ROUTES, ahead.as_bytes()).unwrap().unwrap();
        ops.id = "nyc.rte_ops".into();
        ops.window_start = NOW + 8 * HOUR_MS;
        ops.window_end = NOW + 9 * HOUR_MS;
        ops.stops.iter_mut().for_each(|s| s.delivery_id = None);
        txn.put(ROUTES, ops.id.as_bytes(), &ops).unwrap();
        let k = format!("{driver}/{}", ops.id);
        txn.put(SCHEDULE, k.as_bytes(), &ops.id).unwrap();
        drivers::apply(
            &txn,
            drivers::DriverCommand::SetStatus {
                driver_id: driver.into(),
                status: DriverStatus::Suspended,
                now: NOW,
            },
        )
        .unwrap();
        assert_eq!(schedule_ids(&txn, driver), [done]);
        let mut open: Vec<String> = open_routes_in(&txn).into_iter().map(|r| r.id).collect();
        open.sort();
        assert_eq!(open, [ahead.clone(), ops.id.clone()]);
        for id in [&ahead, &ops.id] {
            let r = txn.get(ROUTES, id.as_bytes()).unwrap().unwrap();
            assert_eq!((r.status, r.driver_id), (RouteStatus::Open, None));
        }
        let read = txn_read(txn, &store);
        let d = drivers::delivery(&read, &stop).unwrap().unwrap();
        assert_eq!(d.status, drivers::DeliveryStatus::Searching);
        assert_eq!(d.driver_id, None);
        // It waits for its route again, not for on-demand dispatch.
        let on_demand = drivers::dispatchable(&read, 100).unwrap();
        assert!(on_demand.iter().all(|d| d.id != stop));
        let feed: Vec<String> = events::after_stored(&read, driver, 0, 10)
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert!(feed.contains(&"route.updated".to_string()), "{feed:?}");
        assert!(
            feed.contains(&"delivery.reassigning".to_string()),
            "{feed:?}"
        );
    }

    /// From command version 4 a driver who lowers their seats below a
    /// route's needs gives that route up (still approved); routes they
    /// still fit stay.
    #[test]
    fn from_version_4_a_narrowed_profile_gives_up_the_routes_it_no_longer_fits() {
        for version in [3, 4] {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path().join("s.redb"), 1 << 20).unwrap();
            let txn = store.write().unwrap();
            let driver = approved_driver(&txn, version);
            let assigned = drivers::DeliveryStatus::Assigned;
            let (big, _) = book(&txn, driver, 1, NOW + 5 * HOUR_MS, assigned, 3);
            let (small, _) = book(&txn, driver, 2, NOW + 8 * HOUR_MS, assigned, 1);
            let r = drivers::apply(
                &txn,
                drivers::DriverCommand::PutProfile {
                    driver_id: driver.into(),
                    profile: drivers::Profile {
                        vehicle: Vehicle::Car,
                        capacity: 2,
                        qualifications: Vec::new(),
                        license_plate: None,
                    },
                    now: NOW,
                },
            )
            .unwrap();
            assert!(
                matches!(&r, drivers::DriverResponse::Driver(d) if d.status == DriverStatus::Approved),
                "{r:?}"
            );
            let mut expected = vec![big, small];
            if version >= 4 {
                expected.remove(0);
            }
            expected.sort();
            let mut left = schedule_ids(&txn, driver);
            left.sort();
            assert_eq!(left, expected, "version {version}");
        }
    }

    fn open_routes_in(txn: &WriteTxn) -> Vec<Route> {
        txn.range(OPEN, Vec::new().., MAX_OPEN)
            .unwrap()
            .into_iter()
            .filter_map(|(k, _)| txn.get(ROUTES, &k).unwrap())
            .collect()
    }

    // Deferred matching: `CloseWindow` on a real store, everything before
    // it done through the commands a cell replicates.

    use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};

    const MINUTE_MS: i64 = 60_000;
    const DAY_MS: i64 = 24 * HOUR_MS;
    /// Monday 18 January 2027, 00:00 UTC: day 0 of the week most routes
    /// below fall in. Written out, not derived from `MONDAY_OFFSET_MS`, so
    /// a wrong week start shows.
    const WEEK_OF: i64 = 1_800_230_400_000;
    /// When the first matching window opens (claims come days ahead of
    /// the routes they are for).
    const CLAIMS_FROM: i64 = WEEK_OF - 14 * DAY_MS;

    /// `h:m` on day `day` of the routes' week (0 = Monday; negative days
    /// are the week before).
    fn t(day: i64, h: i64, m: i64) -> i64 {
        WEEK_OF + day * DAY_MS + h * HOUR_MS + m * MINUTE_MS
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(r, d)| (r.to_string(), d.to_string()))
            .collect()
    }

    /// The route market on its own store, one apply per commit as on a
    /// node.
    struct Board {
        _dir: tempfile::TempDir,
        store: Store,
        /// Matching windows closed so far; the next one's claims come a
        /// day after the last one's.
        closed: i64,
    }

    impl Board {
        fn new() -> Board {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path().join("s.redb"), 4 << 20).unwrap();
            Board {
                _dir: dir,
                store,
                closed: 0,
            }
        }

        fn write<T>(&self, f: impl FnOnce(&WriteTxn) -> T) -> T {
            let txn = self.store.write().unwrap();
            let out = f(&txn);
            txn.commit(Durability::Deferred).unwrap();
            out
        }

        /// An approved driver of standing `tier` (1 is best), brought
        /// there the way production lowers a tier: poor customer ratings
        /// cost one (2), a declined offer drops the completion rate to
        /// nothing (3).
        fn driver(&self, id: &str, tier: u8) {
            use drivers::{DriverCommand, Profile};
            let now = CLAIMS_FROM - 30 * DAY_MS;
            self.write(|txn| {
                let profile = Profile {
                    vehicle: Vehicle::Car,
                    capacity: 4,
                    qualifications: Vec::new(),
                    license_plate: None,
                };
                drivers::apply(
                    txn,
                    DriverCommand::PutProfile {
                        driver_id: id.into(),
                        profile,
                        now,
                    },
                )
                .unwrap();
                drivers::apply(
                    txn,
                    DriverCommand::SetStatus {
                        driver_id: id.into(),
                        status: DriverStatus::Approved,
                        now,
                    },
                )
                .unwrap();
            });
            match tier {
                1 => {}
                2 => self.rate_poorly(id, now),
                3 => self.decline_an_offer(id, now),
                _ => unreachable!("tiers are 1 to 3"),
            }
            assert_eq!(self.tier(id), tier, "{id}'s tier");
        }

        /// What `OrderCommand::Rate` records: three two-star ratings,
        /// enough to judge by.
        fn rate_poorly(&self, driver: &str, now: i64) {
            use crate::ratings::{self, Rating, Stars};
            self.write(|txn| {
                for n in 0..3 {
                    let rating = Rating {
                        order_id: format!("nyc.ord_rated_{n}_{driver}"),
                        vendor_id: "nyc.ven_v".into(),
                        vendor: Stars::new(5).unwrap(),
                        driver_id: Some(driver.into()),
                        driver: Stars::new(2),
                        comment: None,
                        at: now,
                    };
                    ratings::record(txn, &rating).unwrap();
                }
            });
        }

        fn decline_an_offer(&self, driver: &str, now: i64) {
            use drivers::{DriverCommand, DriverResponse};
            let order = crate::orders::sample_order(&format!("nyc.ord_for_{driver}"), None, now);
            let offer_id = format!("nyc.ofr_{driver}");
            self.write(|txn| {
                let delivery = drivers::create_delivery(txn, &order, now).unwrap();
                drivers::apply(
                    txn,
                    DriverCommand::SetOnline {
                        driver_id: driver.into(),
                        online: true,
                        now,
                    },
                )
                .unwrap();
                let made = drivers::apply(
                    txn,
                    DriverCommand::CreateOffers {
                        delivery_id: delivery.id,
                        offers: vec![(offer_id.clone(), driver.into())],
                        expires_at: now + MINUTE_MS,
                        now,
                    },
                )
                .unwrap();
                assert!(matches!(made, DriverResponse::Offers(o) if o.len() == 1));
                let declined = drivers::apply(
                    txn,
                    DriverCommand::DeclineOffer {
                        offer_id,
                        driver_id: driver.into(),
                        now,
                    },
                )
                .unwrap();
                assert!(matches!(declined, DriverResponse::Offer(_)));
            });
        }

        /// The tier matching ranks `driver` by, read as a node would.
        fn tier(&self, driver: &str) -> u8 {
            let read = self.store.read().unwrap();
            let d = drivers::driver(&read, driver).unwrap().unwrap();
            d.standing
                .tier_with(&crate::ratings::reputation(&read, driver).unwrap())
        }

        fn route(&self, id: &str, start: i64, end: i64) {
            let route = Route {
                id: id.into(),
                zone: "z".into(),
                window_start: start,
                window_end: end,
                stops: vec![Stop {
                    delivery_id: None,
                    location: Location {
                        lat: 40.71,
                        lng: -74.0,
                    },
                }],
                pay: 3000,
                currency: "USD".into(),
                requirements: Requirements::default(),
                status: RouteStatus::Open,
                driver_id: None,
                claims: Vec::new(),
                windows: 0,
                created_at: CLAIMS_FROM - DAY_MS,
            };
            self.write(|txn| {
                apply(
                    txn,
                    RouteCommand::Create {
                        route: Box::new(route),
                        now: CLAIMS_FROM - DAY_MS,
                    },
                )
                .unwrap()
            });
        }

        fn window_opens(&self) -> i64 {
            CLAIMS_FROM + self.closed * DAY_MS
        }

        /// `driver` claims `route` `second` seconds into the current
        /// window, which lasts a minute.
        fn claim(&self, route: &str, driver: &str, second: i64) {
            assert!((0..60).contains(&second));
            let now = self.window_opens() + second * 1000;
            let r = self.write(|txn| {
                apply(
                    txn,
                    RouteCommand::Claim {
                        route_id: route.into(),
                        driver_id: driver.into(),
                        now,
                        window_ms: MINUTE_MS,
                    },
                )
                .unwrap()
            });
            match r {
                // A second claim by the same driver would keep the first
                // one's time: the tests must not depend on that.
                RouteResponse::Route(r) => assert!(
                    r.claims
                        .iter()
                        .any(|c| c.driver_id == driver && c.at == now),
                    "{driver}'s claim on {route} kept another time: {:?}",
                    r.claims
                ),
                other => panic!("{driver} claiming {route}: {other:?}"),
            }
        }

        /// Closes the running window once its time is up: (route, driver)
        /// in matching order, and how many claimed routes went unmatched.
        fn close(&mut self) -> (Vec<(String, String)>, usize) {
            let now = self.window_opens() + HOUR_MS;
            let r = self.write(|txn| apply(txn, RouteCommand::CloseWindow { now }).unwrap());
            self.closed += 1;
            match r {
                RouteResponse::Matched {
                    assigned,
                    unmatched,
                } => (assigned, unmatched),
                other => panic!("closing the window: {other:?}"),
            }
        }

        /// Hours `driver` already has: `routes` won in a window of their
        /// own.
        fn book(&mut self, driver: &str, routes: &[(&str, i64, i64)]) {
            for &(id, start, end) in routes {
                self.route(id, start, end);
                self.claim(id, driver, 0);
            }
            let expected: Vec<(&str, &str)> = routes.iter().map(|&(id, ..)| (id, driver)).collect();
            assert_eq!(self.close(), (pairs(&expected), 0), "booking {driver}");
        }

        fn route_of(&self, id: &str) -> Route {
            route(&self.store.read().unwrap(), id).unwrap().unwrap()
        }

        fn open_ids(&self) -> Vec<String> {
            open_routes(&self.store.read().unwrap())
                .unwrap()
                .into_iter()
                .map(|r| r.id)
                .collect()
        }

        fn schedule_of(&self, driver: &str) -> Vec<String> {
            schedule(&self.store.read().unwrap(), driver)
                .unwrap()
                .into_iter()
                .map(|r| r.id)
                .collect()
        }

        /// `route.*` events in `who`'s feed, as (kind, route id).
        fn route_events(&self, who: &str) -> Vec<(String, String)> {
            events::after(&self.store.read().unwrap(), who, 0, 1000)
                .unwrap()
                .into_iter()
                .filter(|e| e.kind.starts_with("route."))
                .map(|e| {
                    let data: serde_json::Value = serde_json::from_str(&e.data).unwrap();
                    (e.kind, data["route_id"].as_str().unwrap().to_string())
                })
                .collect()
        }
    }

    #[test]
    fn a_better_tier_wins_over_fewer_hours_an_earlier_claim_and_a_lower_id() {
        let mut b = Board::new();
        // Every other key favours the worse tier: ids, claim times, hours.
        b.driver("nyc.acc_a", 3);
        // Tier 2 only through ratings: ranking by outcomes alone would
        // tie m with z and hand z's route to m on hours.
        b.driver("nyc.acc_m", 2);
        b.driver("nyc.acc_z", 1);
        b.book("nyc.acc_z", &[("nyc.rte_z", t(0, 8, 0), t(0, 10, 0))]);
        b.book("nyc.acc_m", &[("nyc.rte_m", t(0, 8, 0), t(0, 9, 0))]);
        // Three routes at the same hour: each driver can take one, so the
        // routes go down the ranking one driver at a time.
        for r in ["nyc.rte_1", "nyc.rte_2", "nyc.rte_3"] {
            b.route(r, t(2, 9, 0), t(2, 10, 0));
            b.claim(r, "nyc.acc_a", 1);
            b.claim(r, "nyc.acc_m", 2);
            b.claim(r, "nyc.acc_z", 3);
        }
        let expected = pairs(&[
            ("nyc.rte_1", "nyc.acc_z"),
            ("nyc.rte_2", "nyc.acc_m"),
            ("nyc.rte_3", "nyc.acc_a"),
        ]);
        assert_eq!(b.close(), (expected, 0));
    }

    #[test]
    fn with_equal_tiers_fewer_hours_this_week_win_over_an_earlier_claim_and_a_lower_id() {
        let mut b = Board::new();
        b.driver("nyc.acc_a", 1);
        b.driver("nyc.acc_b", 1);
        // a has fewer routes but more hours: hours are what count.
        b.book("nyc.acc_a", &[("nyc.rte_a", t(0, 8, 0), t(0, 11, 0))]);
        b.book(
            "nyc.acc_b",
            &[
                ("nyc.rte_b1", t(0, 8, 0), t(0, 9, 0)),
                ("nyc.rte_b2", t(1, 8, 0), t(1, 9, 0)),
            ],
        );
        for (r, day) in [("nyc.rte_1", 2), ("nyc.rte_2", 3)] {
            b.route(r, t(day, 9, 0), t(day, 10, 0));
            b.claim(r, "nyc.acc_a", 1);
            b.claim(r, "nyc.acc_b", 2);
        }
        // rte_1: b has 2 h to a's 3. rte_2: the hour b just won in this
        // same window brings b level with a, so a's earlier claim wins.
        let expected = pairs(&[("nyc.rte_1", "nyc.acc_b"), ("nyc.rte_2", "nyc.acc_a")]);
        assert_eq!(b.close(), (expected, 0));
    }

    #[test]
    fn hours_count_only_in_the_routes_week_which_starts_on_monday() {
        let mut b = Board::new();
        b.driver("nyc.acc_a", 1);
        b.driver("nyc.acc_z", 1);
        // z's hours fall just before this week (Sunday evening, as a week
        // from Sunday or from the epoch's Thursday would count them) and
        // next week; a's single hour starts this week's Monday at 00:00.
        b.book(
            "nyc.acc_z",
            &[
                ("nyc.rte_sun", t(-1, 20, 0), t(0, 0, 0)),
                ("nyc.rte_next", t(7, 8, 0), t(7, 16, 0)),
            ],
        );
        b.book("nyc.acc_a", &[("nyc.rte_mon", t(0, 0, 0), t(0, 1, 0))]);
        b.route("nyc.rte_1", t(2, 9, 0), t(2, 10, 0));
        b.claim("nyc.rte_1", "nyc.acc_a", 1);
        b.claim("nyc.rte_1", "nyc.acc_z", 2);
        assert_eq!(b.close(), (pairs(&[("nyc.rte_1", "nyc.acc_z")]), 0));
    }

    #[test]
    fn with_equal_tiers_and_hours_the_earlier_claim_wins_over_a_lower_id() {
        let mut b = Board::new();
        // Equal, but neither the best tier nor zero hours.
        b.driver("nyc.acc_a", 2);
        b.driver("nyc.acc_z", 2);
        b.book("nyc.acc_a", &[("nyc.rte_a", t(0, 8, 0), t(0, 9, 0))]);
        b.book("nyc.acc_z", &[("nyc.rte_z", t(1, 8, 0), t(1, 9, 0))]);
        b.route("nyc.rte_1", t(2, 9, 0), t(2, 10, 0));
        b.claim("nyc.rte_1", "nyc.acc_z", 1);
        b.claim("nyc.rte_1", "nyc.acc_a", 2);
        assert_eq!(b.close(), (pairs(&[("nyc.rte_1", "nyc.acc_z")]), 0));
    }

    #[test]
    fn with_everything_else_equal_the_lower_id_wins_whoever_claimed_first() {
        let mut b = Board::new();
        b.driver("nyc.acc_a", 1);
        b.driver("nyc.acc_z", 1);
        b.route("nyc.rte_1", t(2, 9, 0), t(2, 10, 0));
        // Same second, z's claim first in the route's list: a stable sort
        // without the id would keep z.
        b.claim("nyc.rte_1", "nyc.acc_z", 5);
        b.claim("nyc.rte_1", "nyc.acc_a", 5);
        assert_eq!(b.close(), (pairs(&[("nyc.rte_1", "nyc.acc_a")]), 0));
    }

    #[test]
    fn a_driver_never_gets_overlapping_routes_but_may_get_back_to_back_ones() {
        let mut b = Board::new();
        b.driver("nyc.acc_d", 1);
        // Loses to d on every key: gets a route only because d cannot.
        b.driver("nyc.acc_e", 3);
        let routes = [
            ("nyc.rte_1", t(2, 9, 0), t(2, 10, 0)),
            // Inside rte_1.
            ("nyc.rte_2", t(2, 9, 15), t(2, 9, 45)),
            // Overlaps rte_1's end.
            ("nyc.rte_3", t(2, 9, 30), t(2, 10, 30)),
            // Starts as rte_1 ends: no overlap.
            ("nyc.rte_4", t(2, 10, 0), t(2, 11, 0)),
        ];
        for (id, start, end) in routes {
            b.route(id, start, end);
            b.claim(id, "nyc.acc_d", 1);
        }
        b.claim("nyc.rte_3", "nyc.acc_e", 9);
        let expected = pairs(&[
            ("nyc.rte_1", "nyc.acc_d"),
            ("nyc.rte_3", "nyc.acc_e"),
            ("nyc.rte_4", "nyc.acc_d"),
        ]);
        assert_eq!(b.close(), (expected, 1));
        assert_eq!(b.schedule_of("nyc.acc_d"), ["nyc.rte_1", "nyc.rte_4"]);
        assert_eq!(b.schedule_of("nyc.acc_e"), ["nyc.rte_3"]);
        let left = b.route_of("nyc.rte_2");
        assert_eq!((left.status, left.driver_id), (RouteStatus::Open, None));

        // In a later window the routes d already has rule out one that
        // starts before them and runs into rte_1.
        b.route("nyc.rte_5", t(2, 8, 30), t(2, 9, 30));
        b.claim("nyc.rte_5", "nyc.acc_d", 1);
        assert_eq!(b.close(), (Vec::new(), 1));
        assert_eq!(b.schedule_of("nyc.acc_d"), ["nyc.rte_1", "nyc.rte_4"]);
        assert_eq!(
            b.route_events("nyc.acc_d"),
            pairs(&[
                ("route.matched", "nyc.rte_1"),
                ("route.unmatched", "nyc.rte_2"),
                ("route.unmatched", "nyc.rte_3"),
                ("route.matched", "nyc.rte_4"),
                ("route.unmatched", "nyc.rte_5"),
            ])
        );
        assert_eq!(
            b.route_events("nyc.acc_e"),
            pairs(&[("route.matched", "nyc.rte_3")])
        );
    }

    #[test]
    fn a_route_left_unmatched_stays_open_and_is_matched_in_a_later_window() {
        let mut b = Board::new();
        b.driver("nyc.acc_d", 1);
        b.driver("nyc.acc_e", 2);
        b.route("nyc.rte_1", t(2, 9, 0), t(2, 10, 0));
        b.route("nyc.rte_2", t(2, 9, 30), t(2, 10, 30));
        // d's only claims overlap: d gets the earlier route and the other
        // has nobody.
        b.claim("nyc.rte_1", "nyc.acc_d", 1);
        b.claim("nyc.rte_2", "nyc.acc_d", 1);
        assert_eq!(b.close(), (pairs(&[("nyc.rte_1", "nyc.acc_d")]), 1));
        let r = b.route_of("nyc.rte_2");
        assert_eq!(
            (r.status, r.driver_id, r.claims, r.windows),
            (RouteStatus::Open, None, Vec::new(), 1)
        );
        assert_eq!(b.open_ids(), ["nyc.rte_2"]);
        // No window runs until the next claim starts one.
        assert_eq!(
            market_state(&b.store.read().unwrap())
                .unwrap()
                .window_closes_at,
            0
        );

        // d's booking from the last window still rules d out.
        b.claim("nyc.rte_2", "nyc.acc_d", 1);
        assert_eq!(b.close(), (Vec::new(), 1));
        assert_eq!(b.route_of("nyc.rte_2").windows, 2);

        b.claim("nyc.rte_2", "nyc.acc_d", 1);
        b.claim("nyc.rte_2", "nyc.acc_e", 2);
        assert_eq!(b.close(), (pairs(&[("nyc.rte_2", "nyc.acc_e")]), 0));
        let r = b.route_of("nyc.rte_2");
        assert_eq!(
            (r.status, r.driver_id.as_deref(), r.windows),
            (RouteStatus::Assigned, Some("nyc.acc_e"), 2)
        );
        assert!(b.open_ids().is_empty());
        assert_eq!(
            b.route_events("nyc.acc_d"),
            pairs(&[
                ("route.matched", "nyc.rte_1"),
                ("route.unmatched", "nyc.rte_2"),
                ("route.unmatched", "nyc.rte_2"),
                ("route.unmatched", "nyc.rte_2"),
            ])
        );
        assert_eq!(
            b.route_events("nyc.acc_e"),
            pairs(&[("route.matched", "nyc.rte_2")])
        );
    }

    const CROWD: usize = 8;

    fn crowd(n: usize) -> String {
        format!("nyc.acc_{n:02}")
    }

    /// Drivers of every tier, some with hours this week, and twenty routes
    /// over six hours of one day, most overlapping several others.
    fn crowded_board() -> Board {
        let mut b = Board::new();
        for (n, tier) in [1, 1, 1, 2, 2, 3, 1, 3].into_iter().enumerate() {
            b.driver(&crowd(n), tier);
        }
        b.book(&crowd(1), &[("nyc.rte_p1", t(0, 8, 0), t(0, 9, 0))]);
        b.book(&crowd(3), &[("nyc.rte_p3", t(0, 8, 0), t(0, 10, 0))]);
        b.book(&crowd(6), &[("nyc.rte_p6", t(1, 8, 0), t(1, 9, 0))]);
        for i in 0..20 {
            let start = t(2, 8, 0) + (i % 10) * 30 * MINUTE_MS;
            let length = if i < 10 { 60 } else { 90 } * MINUTE_MS;
            b.route(&format!("nyc.rte_w{i:02}"), start, start + length);
        }
        b.route("nyc.rte_tie", t(7, 9, 0), t(7, 10, 0));
        b
    }

    /// Everything a close decided: its answer, every route's state and
    /// every driver's `route.*` events.
    type Outcome = (
        (Vec<(String, String)>, usize),
        Vec<(String, RouteStatus, Option<String>, u32)>,
        Vec<Vec<(String, String)>>,
    );

    fn close_after(claims: &[(String, String, i64)]) -> (Board, Outcome) {
        let mut b = crowded_board();
        for (route, driver, second) in claims {
            b.claim(route, driver, *second);
        }
        let answer = b.close();
        let routes = {
            let read = b.store.read().unwrap();
            let mut ids: Vec<String> = (0..20).map(|i| format!("nyc.rte_w{i:02}")).collect();
            ids.push("nyc.rte_tie".into());
            ids.into_iter()
                .map(|id| {
                    let r = route(&read, &id).unwrap().unwrap();
                    (r.id, r.status, r.driver_id, r.windows)
                })
                .collect()
        };
        let feeds = (0..CROWD).map(|n| b.route_events(&crowd(n))).collect();
        (b, (answer, routes, feeds))
    }

    #[test]
    fn matching_is_the_same_whatever_order_the_claims_were_applied_in() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut claims = Vec::new();
        for i in 0..20 {
            let mut crowd_ids: Vec<usize> = (0..CROWD).collect();
            crowd_ids.shuffle(&mut rng);
            let n = rng.gen_range(1..=5);
            // Three possible seconds: many claims tie on time.
            for &d in &crowd_ids[..n] {
                claims.push((format!("nyc.rte_w{i:02}"), crowd(d), rng.gen_range(0..3)));
            }
        }
        // Two tier-1 drivers with no hours next week, claiming in the same
        // second: only the id can decide.
        claims.push(("nyc.rte_tie".into(), crowd(2), 4));
        claims.push(("nyc.rte_tie".into(), crowd(0), 4));

        let (board, baseline) = close_after(&claims);
        // The comparison below means something only if the claims contest:
        // some claimants of a route tie on time, some driver claims routes
        // that overlap.
        let overlap = |a: &str, b: &str| {
            let (a, b) = (board.route_of(a), board.route_of(b));
            a.window_start < b.window_end && b.window_start < a.window_end
        };
        let pairs_of_claims = || {
            claims
                .iter()
                .enumerate()
                .flat_map(|(i, a)| claims[i + 1..].iter().map(move |b| (a, b)))
        };
        assert!(pairs_of_claims().any(|(a, b)| a.0 == b.0 && a.2 == b.2));
        assert!(pairs_of_claims().any(|(a, b)| a.1 == b.1 && a.0 != b.0 && overlap(&a.0, &b.0)));

        let ((assigned, _), routes, _) = &baseline;
        assert!(assigned.contains(&("nyc.rte_tie".to_string(), crowd(0))));
        for n in 0..CROWD {
            let mut booked: Vec<(i64, i64)> = board
                .schedule_of(&crowd(n))
                .iter()
                .map(|id| {
                    let r = board.route_of(id);
                    (r.window_start, r.window_end)
                })
                .collect();
            booked.sort();
            assert!(
                booked.windows(2).all(|w| w[0].1 <= w[1].0),
                "{} double-booked: {booked:?}",
                crowd(n)
            );
        }
        for (id, status, driver, _) in routes {
            let claimants: Vec<&String> =
                claims.iter().filter(|c| &c.0 == id).map(|c| &c.1).collect();
            match (status, driver) {
                (RouteStatus::Assigned, Some(d)) => assert!(claimants.contains(&d), "{id}"),
                // Left open only if every claimant was busy by then.
                (RouteStatus::Open, None) => {
                    for c in claimants {
                        let busy = board.schedule_of(c).iter().any(|s| overlap(s, id));
                        assert!(busy, "{id} left open though {c} was free");
                    }
                }
                other => panic!("{id}: {other:?}"),
            }
        }

        // Each close builds its maps with fresh random hash keys, so
        // agreeing across stores also shows nothing rides on their
        // iteration order.
        let mut by_time = claims.clone();
        by_time.sort_by_key(|c| c.2);
        let mut orders = vec![
            ("as generated, again".to_string(), claims.clone()),
            ("reversed".into(), claims.iter().rev().cloned().collect()),
            ("in claim-time order".into(), by_time),
        ];
        for seed in 1..=4 {
            let mut shuffled = claims.clone();
            shuffled.shuffle(&mut StdRng::seed_from_u64(seed));
            orders.push((format!("shuffled with seed {seed}"), shuffled));
        }
        for (name, order) in orders {
            assert_eq!(close_after(&order).1, baseline, "claims applied {name}");
        }
    }
}
