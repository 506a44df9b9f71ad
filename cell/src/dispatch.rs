//! The leader's dispatcher and the location buffer.
//!
//! Location pings (≈1 Hz per driver) are kept in memory and replicated
//! coalesced, at most once a second per node, as one `Locations` command —
//! so a failover loses at most about a second of positions. The dispatcher
//! runs on whichever node leads: it ranks eligible drivers near each
//! waiting delivery and proposes offers; whether an offer stands and who
//! wins an accept is decided in apply (`drivers`), so a dispatcher that
//! lost leadership mid-step cannot double-assign anything.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raft::RaftNode;

use tokio::sync::broadcast;

use crate::{
    app::{CellApp, Change, Command},
    catalog::Location,
    driver_grid::{square_of, Square},
    drivers::{self, Delivery, Driver, DriverCommand, DriverStatus, Ping, Vehicle},
    http::orders_api::haversine_km,
    kv,
};

/// Positions older than this do not count as "near".
const STALE_LOCATION_MS: i64 = 60_000;
/// Deliveries read per page of the waiting list.
const BATCH: usize = 256;
/// Squares a search reads one by one, nearest first; wider searches read
/// whole rows.
const MAX_SQUARE_READS: usize = 1024;
/// How often the dispatcher runs without being woken.
const ROUND_MS: i64 = 250;
/// Most deliveries one round looks at.
const MAX_WAITING: usize = 50_000;
/// Positions per replicated location command.
const FLUSH_SLICE: usize = 500;

/// Dispatch settings from the config store (`dispatch/<name>`), with
/// defaults.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub offer_seconds: i64,
    /// Drivers offered a delivery at once (the first to accept wins).
    pub wave: usize,
    pub radius_km: f64,
    pub max_radius_km: f64,
    /// Rounds without candidates before a delivery is given up.
    pub give_up_rounds: u32,
}

fn settings(read: &storage::ReadTxn) -> Settings {
    let num = |name: &str, default: f64, lo: f64, hi: f64| -> f64 {
        kv::get(read, &format!("dispatch/{name}"))
            .ok()
            .flatten()
            .and_then(|e| {
                std::str::from_utf8(&e.value)
                    .ok()?
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .filter(|v| v.is_finite() && (lo..=hi).contains(v))
            .unwrap_or(default)
    };
    Settings {
        offer_seconds: num("offer_seconds", 20.0, 1.0, 600.0) as i64,
        wave: num("wave", 1.0, 1.0, 20.0) as usize,
        radius_km: num("radius_km", 3.0, 0.1, 100.0),
        max_radius_km: num("max_radius_km", 24.0, 0.1, 500.0),
        give_up_rounds: num("give_up_rounds", 40.0, 1.0, 100_000.0) as u32,
    }
}

#[derive(Default)]
pub struct Dispatcher {
    /// Pings not yet replicated (latest per driver).
    pending: Mutex<HashMap<String, Ping>>,
    /// The freshest positions seen by this node.
    live: Mutex<Live>,
}

/// Positions pinged to this node, per driver and by grid square (so the
/// dispatcher finds drivers whose latest position is not replicated yet
/// without scanning them all).
#[derive(Default)]
struct Live {
    at: HashMap<String, (Location, i64)>,
    squares: HashMap<Square, HashSet<String>>,
}

impl Live {
    fn put(&mut self, driver_id: &str, l: Location, when: i64) {
        let square = square_of(&l);
        if let Some((old, _)) = self.at.insert(driver_id.to_string(), (l, when)) {
            let was = square_of(&old);
            if was != square {
                if let Some(set) = self.squares.get_mut(&was) {
                    set.remove(driver_id);
                    if set.is_empty() {
                        self.squares.remove(&was);
                    }
                }
            }
        }
        self.squares
            .entry(square)
            .or_default()
            .insert(driver_id.to_string());
    }

    /// Forgets positions taken before `cutoff`: too old to dispatch by, and
    /// a driver who stopped pinging (went home, or pings another node now)
    /// would otherwise stay in memory for the life of the process.
    fn forget_before(&mut self, cutoff: i64) {
        let squares = &mut self.squares;
        self.at.retain(|id, (l, when)| {
            let keep = *when >= cutoff;
            if !keep {
                let sq = square_of(l);
                if let Some(set) = squares.get_mut(&sq) {
                    set.remove(id);
                    if set.is_empty() {
                        squares.remove(&sq);
                    }
                }
            }
            keep
        });
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Dispatcher {
    pub fn ping(&self, p: Ping) {
        if let Ok(mut live) = self.live.lock() {
            let l = Location {
                lat: p.lat,
                lng: p.lng,
            };
            live.put(&p.driver_id, l, p.at);
        }
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(p.driver_id.clone(), p);
        }
    }

    /// Starts the location flusher, the route-window closer and the
    /// dispatcher, which runs every 250 ms and at once when `changes`
    /// announces a delivery that may need a driver.
    pub fn start(
        self: Arc<Self>,
        node: Arc<RaftNode<CellApp>>,
        cell: String,
        mut changes: tokio::sync::broadcast::Receiver<Change>,
        metrics: Arc<crate::metrics::Metrics>,
    ) {
        let flusher = (self.clone(), node.clone());
        tokio::spawn(async move {
            let (me, node) = flusher;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                me.live
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .forget_before(now_ms() - STALE_LOCATION_MS);
                let pings: Vec<Ping> = match me.pending.lock() {
                    Ok(mut p) => p.drain().map(|(_, v)| v).collect(),
                    Err(_) => continue,
                };
                // In slices, one after another: a write that arrives
                // meanwhile (an accept, an offer) waits behind one slice's
                // apply, not behind every driver's (10,000 positions take
                // tens of milliseconds to apply on each node).
                for slice in pings.chunks(FLUSH_SLICE) {
                    let cmd = Command::Drivers(Box::new(DriverCommand::Locations {
                        pings: slice.to_vec(),
                    }));
                    if let Err(e) = node.write(&cmd).await {
                        tracing::debug!(error = %e, "location flush failed; positions stay local until the next ping");
                        break;
                    }
                }
            }
        });
        let (closer, closer_metrics) = (node.clone(), metrics.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            for n in 0u64.. {
                tick.tick().await;
                if closer.leads_with_current_state() {
                    if let Err(e) = close_window_if_due(&closer, &closer_metrics).await {
                        tracing::debug!(error = %e, "closing the route window failed");
                    }
                    // Once a second: lead times are half an hour.
                    if n % 4 == 0 {
                        if let Err(e) = release_routes_if_due(&closer).await {
                            tracing::debug!(error = %e, "releasing due routes failed");
                        }
                    }
                }
            }
        });
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(ROUND_MS as u64));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    r = changes.recv() => match r {
                        Ok(Change::Dispatchable) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                }
                // One round answers every change queued meanwhile: a burst
                // of expiries or declines is one round, not one each.
                loop {
                    match changes.try_recv() {
                        Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                        Err(broadcast::error::TryRecvError::Closed) => return,
                        Err(broadcast::error::TryRecvError::Empty) => break,
                    }
                }
                if !node.leads_with_current_state() {
                    continue;
                }
                if let Err(e) = self.round(&node, &cell, &metrics).await {
                    tracing::debug!(error = %e, "dispatch round failed");
                }
            }
        });
    }

    /// One pass over waiting deliveries and open offers.
    async fn round(
        &self,
        node: &RaftNode<CellApp>,
        cell: &str,
        metrics: &crate::metrics::Metrics,
    ) -> anyhow::Result<()> {
        let now = now_ms();
        let (settings, deliveries) = {
            let read = node.store().read()?;
            let mut deliveries = waiting(&read)?;
            // Unassigned ones due for another search, after the rest.
            deliveries.extend(drivers::retries_due(&read, now, BATCH)?);
            (settings(&read), deliveries)
        };
        // First every open offer: their drivers are busy for every
        // delivery of this round, and the expired ones are closed.
        let mut busy: HashSet<String> = HashSet::new();
        let mut writes: Vec<DriverCommand> = Vec::new();
        let mut to_offer: Vec<Delivery> = Vec::new();
        {
            let read = node.store().read()?;
            for d in deliveries {
                if d.dispatch_after > now {
                    continue;
                }
                let mut live_offers = 0;
                for driver_id in &d.offered_to {
                    for o in drivers::open_offers(&read, driver_id)? {
                        if o.delivery_id != d.id {
                            continue;
                        }
                        if o.expires_at <= now {
                            writes.push(DriverCommand::ExpireOffer {
                                offer_id: o.id.clone(),
                                now,
                            });
                        } else {
                            live_offers += 1;
                            busy.insert(o.driver_id.clone());
                        }
                    }
                }
                if live_offers == 0 {
                    to_offer.push(d);
                }
            }
        }
        // Then offers for those without a live one, new deliveries first.
        // Drivers read this round: deliveries close together share them.
        let mut known: HashMap<String, Option<Arc<Driver>>> = HashMap::new();
        let mut first_offers = Vec::new();
        {
            let read = node.store().read()?;
            for d in &to_offer {
                let radius = search_radius(d, &settings);
                let needs = required_qualifications(&read, d)?;
                let candidates = self.choose(
                    &read,
                    d,
                    &needs,
                    &busy,
                    radius,
                    now,
                    settings.wave,
                    &mut known,
                )?;
                if candidates.is_empty() {
                    // An empty round counts (and widens the search) at most
                    // once per round period, however often changes wake
                    // the dispatcher: `give_up_rounds` stays a duration.
                    if now - d.updated_at < ROUND_MS {
                        continue;
                    }
                    writes.push(DriverCommand::NoCandidates {
                        delivery_id: d.id.clone(),
                        give_up: d.empty_rounds + 1 >= settings.give_up_rounds,
                        now,
                    });
                    continue;
                }
                busy.extend(candidates.iter().cloned());
                writes.push(DriverCommand::CreateOffers {
                    delivery_id: d.id.clone(),
                    offers: candidates
                        .into_iter()
                        .map(|driver_id| (format!("{cell}.ofr_{}", ulid::Ulid::new()), driver_id))
                        .collect(),
                    expires_at: now + settings.offer_seconds * 1000,
                    now,
                });
                // (A retried delivery's wait is not dispatch latency: its
                // `dispatch_after` is its retry time.)
                if d.first_offer_at.is_none() && d.status == drivers::DeliveryStatus::Searching {
                    first_offers.push(d.created_at.max(d.dispatch_after));
                }
            }
        }
        // All at once: the writes share log batches (and fsyncs) instead
        // of each waiting for the one before, so a backlog of expiring
        // offers does not hold up a new delivery's first.
        let cmds: Vec<Command> = writes
            .into_iter()
            .map(|c| Command::Drivers(Box::new(c)))
            .collect();
        let results = futures::future::join_all(cmds.iter().map(|c| node.write(c))).await;
        let done = now_ms();
        for since in first_offers {
            metrics
                .dispatch_first_offer_seconds
                .observe((done - since).max(0) as f64 / 1000.0);
        }
        if let Some(e) = results.into_iter().find_map(Result::err) {
            return Err(e.into());
        }
        Ok(())
    }

    /// The best `wanted` eligible drivers within `radius` of the pickup,
    /// best first: by standing tier (outcomes, ratings, lateness), then ETA
    /// to the pickup (distance at their vehicle's city speed), then id.
    /// Eligible: approved, online, idle, not offered this delivery before,
    /// a vehicle that fits it (see [`fits`]) and every qualification in
    /// `needs`.
    ///
    /// Grid squares are searched nearest first (replicated positions, and
    /// this node's newer pings), and the search stops once no driver
    /// farther out could beat the `wanted`-th best even at the best tier
    /// and the fastest vehicle's speed: with thousands of drivers around a
    /// pickup, a square or two are read instead of all of them.
    #[allow(clippy::too_many_arguments)]
    fn choose(
        &self,
        read: &storage::ReadTxn,
        d: &Delivery,
        needs: &[String],
        busy: &HashSet<String>,
        radius: f64,
        now: i64,
        wanted: usize,
        known: &mut HashMap<String, Option<Arc<Driver>>>,
    ) -> storage::Result<Vec<String>> {
        // A wide search (a widened radius) reads whole rows of squares at
        // once, as one group with no early stop, rather than thousands of
        // squares one by one.
        let squares: Vec<(Option<Square>, f64)> =
            match crate::driver_grid::squares_by_distance(&d.pickup, radius) {
                s if s.len() > MAX_SQUARE_READS => vec![(None, 0.0)],
                s => s.into_iter().map(|(sq, km)| (Some(sq), km)).collect(),
            };
        let mut seen: HashSet<String> = HashSet::new();
        let mut list = Shortlist::new(wanted);
        for (i, (square, _)) in squares.iter().enumerate() {
            let mut ids = match square {
                Some(sq) => crate::driver_grid::in_square(read, *sq)?,
                None => crate::driver_grid::near(read, &d.pickup, radius)?,
            };
            let found: Vec<(String, Option<(Location, i64)>)> = {
                // Plain maps: a panic elsewhere cannot leave them half-made.
                let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
                match square {
                    Some(sq) => ids.extend(live.squares.get(sq).into_iter().flatten().cloned()),
                    None => ids.extend(live.at.keys().cloned()),
                }
                ids.into_iter()
                    .filter(|id| seen.insert(id.clone()))
                    .map(|id| {
                        let pinged = live.at.get(&id).copied();
                        (id, pinged)
                    })
                    .collect()
            };
            for (id, pinged) in found {
                let drv = match known.get(&id) {
                    Some(drv) => drv.clone(),
                    None => {
                        let drv = drivers::driver(read, &id)?.map(Arc::new);
                        known.insert(id, drv.clone());
                        drv
                    }
                };
                let Some(drv) = drv else { continue };
                let eligible = drv.status == DriverStatus::Approved
                    && drv.online
                    && drv.current_delivery.is_none()
                    && fits(d, &drv)
                    && needs.iter().all(|q| drv.qualifications.contains(q))
                    && !d.offered_to.contains(&drv.id)
                    && !busy.contains(&drv.id);
                if !eligible {
                    continue;
                }
                let Some((at, when)) = freshest(pinged, &drv) else {
                    continue;
                };
                let km = haversine_km(&at, &d.pickup);
                if now - when > STALE_LOCATION_MS || km > radius {
                    continue;
                }
                let eta = eta_minutes(km, drv.vehicle);
                list.consider(drv, eta, |drv| {
                    let reputation = crate::ratings::reputation(read, &drv.id)?;
                    Ok(drv.standing.tier_with(&reputation))
                })?;
            }
            if squares
                .get(i + 1)
                .is_some_and(|(_, nearest)| list.closed_beyond(*nearest))
            {
                break;
            }
        }
        Ok(list.ids())
    }
}

/// The best drivers found so far for one delivery, by (tier, ETA, id).
struct Shortlist {
    wanted: usize,
    best: Vec<(u8, f64, Arc<Driver>)>,
}

impl Shortlist {
    fn new(wanted: usize) -> Self {
        Shortlist {
            wanted,
            best: Vec::with_capacity(wanted + 1),
        }
    }

    fn order(a: (u8, f64, &str), b: (u8, f64, &str)) -> std::cmp::Ordering {
        a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)).then(a.2.cmp(b.2))
    }

    /// Whether a driver at (`tier`, `eta`, `id`) would not make the list.
    fn shut_out(&self, tier: u8, eta: f64, id: &str) -> bool {
        self.best.len() >= self.wanted
            && self.best.last().is_none_or(|(t, e, w)| {
                Self::order((tier, eta, id), (*t, *e, w.id.as_str())).is_ge()
            })
    }

    /// Ratings and lateness only ever lower the tier from outcomes alone,
    /// so a driver that tier already shuts out costs no further reads.
    fn consider(
        &mut self,
        drv: Arc<Driver>,
        eta: f64,
        full_tier: impl FnOnce(&Driver) -> storage::Result<u8>,
    ) -> storage::Result<()> {
        if self.shut_out(drv.standing.tier(), eta, &drv.id) {
            return Ok(());
        }
        let tier = full_tier(&drv)?;
        if self.shut_out(tier, eta, &drv.id) {
            return Ok(());
        }
        let at = self.best.partition_point(|(t, e, w)| {
            Self::order((*t, *e, &w.id), (tier, eta, &drv.id)).is_lt()
        });
        self.best.insert(at, (tier, eta, drv));
        self.best.truncate(self.wanted);
        Ok(())
    }

    /// Whether no driver at least `km` from the pickup could still make
    /// the list: not at the best tier with the fastest vehicle.
    fn closed_beyond(&self, km: f64) -> bool {
        let fastest = [
            Vehicle::Bike,
            Vehicle::Scooter,
            Vehicle::Car,
            Vehicle::Van,
            Vehicle::Truck,
        ]
        .into_iter()
        .map(|v| eta_minutes(km, v))
        .fold(f64::INFINITY, f64::min);
        self.best.len() >= self.wanted
            && self
                .best
                .last()
                .is_none_or(|(t, e, _)| (*t, *e) < (1, fastest))
    }

    fn ids(self) -> Vec<String> {
        self.best
            .into_iter()
            .map(|(_, _, drv)| drv.id.clone())
            .collect()
    }
}

/// Every delivery waiting for a driver (up to [`MAX_WAITING`]), longest
/// waiting first (drivers are scarce: the oldest gets the nearest): however
/// many wait with offers out, a new one is looked at in the round its
/// change announces.
fn waiting(read: &storage::ReadTxn) -> storage::Result<Vec<Delivery>> {
    let mut all: Vec<Delivery> = Vec::new();
    let mut after = None;
    loop {
        let (page, next) = drivers::dispatchable_after(read, after, BATCH)?;
        all.extend(page);
        match next {
            Some(k) if all.len() < MAX_WAITING => after = Some(k),
            _ => break,
        }
    }
    all.sort_by_key(|d| d.created_at.max(d.dispatch_after));
    Ok(all)
}

/// The freshest known position: this node's last ping if newer than the
/// replicated one.
fn freshest(pinged: Option<(Location, i64)>, d: &Driver) -> Option<(Location, i64)> {
    match (pinged, d.location) {
        (Some((l, at)), _) if at >= d.location_at => Some((l, at)),
        (_, Some(l)) => Some((l, d.location_at)),
        (Some(x), None) => Some(x),
        (None, None) => None,
    }
}

/// Whether a driver's vehicle can take a delivery: a ride carries its
/// customer, so it needs a car or a van with a free seat; goods go with any
/// vehicle that has room for one more order.
pub fn fits(d: &Delivery, drv: &Driver) -> bool {
    match d.kind {
        crate::orders::OrderKind::Ride => {
            matches!(drv.vehicle, Vehicle::Car | Vehicle::Van) && drv.capacity >= 1
        }
        crate::orders::OrderKind::Delivery => drv.capacity >= 1,
    }
}

/// Qualifications a delivery's drivers must hold: set by ops per vendor
/// kind in the config store (`dispatch/qualifications/<kind>`, a
/// comma-separated list, e.g. `pharmacy` → `rx`), none by default.
pub fn required_qualifications(
    read: &storage::ReadTxn,
    d: &Delivery,
) -> storage::Result<Vec<String>> {
    let Some(order) = crate::orders::order(read, &d.order_id)? else {
        return Ok(Vec::new());
    };
    let Some(vendor) = crate::catalog::vendor(read, &order.vendor_id)? else {
        return Ok(Vec::new());
    };
    Ok(parse_qualifications(kv::get(
        read,
        &qualifications_key(vendor.kind),
    )?))
}

/// The same, inside an apply (an auto-built route's requirements).
pub fn required_qualifications_in(
    txn: &storage::WriteTxn,
    vendor_id: &str,
) -> storage::Result<Vec<String>> {
    let Some(vendor) = txn.get(crate::catalog::VENDORS_TABLE, vendor_id.as_bytes())? else {
        return Ok(Vec::new());
    };
    Ok(parse_qualifications(kv::get_in(
        txn,
        &qualifications_key(vendor.kind),
    )?))
}

fn qualifications_key(kind: crate::catalog::VendorKind) -> String {
    let kind = serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    format!("dispatch/qualifications/{kind}")
}

/// Sorted and without repeats, so equal lists compare equal.
fn parse_qualifications(setting: Option<kv::KvEntry>) -> Vec<String> {
    let mut list: Vec<String> = setting
        .and_then(|e| String::from_utf8(e.value).ok())
        .map(|v| {
            v.split(',')
                .map(|q| q.trim().trim_matches('"').to_string())
                .filter(|q| !q.is_empty())
                .collect()
        })
        .unwrap_or_default();
    list.sort();
    list.dedup();
    list
}

/// Minutes to cover `km` in town.
pub fn eta_minutes(km: f64, v: Vehicle) -> f64 {
    let kmh = match v {
        Vehicle::Bike => 15.0,
        Vehicle::Scooter => 25.0,
        Vehicle::Car => 30.0,
        Vehicle::Van | Vehicle::Truck => 25.0,
    };
    km / kmh * 60.0
}

/// The search radius widens with each round that found nobody.
fn search_radius(d: &Delivery, s: &Settings) -> f64 {
    (s.radius_km * 2f64.powi(d.empty_rounds.min(16) as i32)).min(s.max_radius_km)
}

/// Proposes the running window's close when its time is up; apply
/// matches (and ignores a second proposal for the same window). No window
/// running, no write.
async fn close_window_if_due(
    node: &RaftNode<CellApp>,
    metrics: &crate::metrics::Metrics,
) -> anyhow::Result<()> {
    let now = now_ms();
    let due = {
        let read = node.store().read()?;
        let m = crate::routes::market_state(&read)?;
        m.window_closes_at != 0 && m.window_closes_at <= now
    };
    if due {
        let cmd = crate::routes::RouteCommand::CloseWindow { now };
        let started = std::time::Instant::now();
        node.write(&Command::Routes(Box::new(cmd))).await?;
        metrics
            .route_match_seconds
            .observe(started.elapsed().as_secs_f64());
    }
    Ok(())
}

/// Proposes a `Release` when an open route nobody claimed is due to
/// leave, so its deliveries go out on demand instead of waiting forever.
async fn release_routes_if_due(node: &RaftNode<CellApp>) -> anyhow::Result<()> {
    let now = now_ms();
    let due = crate::routes::release_due(&node.store().read()?, now)?;
    if due {
        let cmd = crate::routes::RouteCommand::Release { now };
        node.write(&Command::Routes(Box::new(cmd))).await?;
    }
    Ok(())
}

/// Supply and demand around `at`, for surge pricing: approved drivers
/// online and idle within `radius_km`, deliveries waiting there, and whether
/// the cell has any approved driver at all (a cell without drivers prices
/// with the configured default supply).
pub struct AreaLoad {
    pub available_drivers: usize,
    pub waiting_deliveries: usize,
    pub cell_has_drivers: bool,
}

pub fn area_load(
    read: &storage::ReadTxn,
    at: &Location,
    radius_km: f64,
) -> storage::Result<AreaLoad> {
    let now = now_ms();
    let mut load = AreaLoad {
        available_drivers: 0,
        waiting_deliveries: 0,
        cell_has_drivers: false,
    };
    load.cell_has_drivers = drivers::any_approved(read)?;
    for d in drivers::drivers_near(read, at, radius_km)? {
        if d.status != DriverStatus::Approved {
            continue;
        }
        let near = d
            .location
            .is_some_and(|l| haversine_km(&l, at) <= radius_km);
        if d.online
            && d.current_delivery.is_none()
            && near
            && now - d.location_at <= STALE_LOCATION_MS
        {
            load.available_drivers += 1;
        }
    }
    load.waiting_deliveries = drivers::dispatchable(read, BATCH * 4)?
        .iter()
        .filter(|d| haversine_km(&d.pickup, at) <= radius_km)
        .count();
    Ok(load)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rides_need_a_seat_and_eta_follows_the_vehicle() {
        let ride = |kind| Delivery {
            id: "d".into(),
            order_id: "o".into(),
            kind,
            status: drivers::DeliveryStatus::Searching,
            customer_id: "c".into(),
            vendor_owner_id: "v".into(),
            pickup: Location { lat: 0.0, lng: 0.0 },
            dropoff: Location { lat: 0.0, lng: 0.0 },
            pay: 0,
            currency: "USD".into(),
            driver_id: None,
            offered_to: vec![],
            empty_rounds: 0,
            dispatch_after: 0,
            first_offer_at: None,
            created_at: 0,
            updated_at: 0,
        };
        let driver = |vehicle, capacity| drivers::sample_driver("x", vehicle, capacity);
        use crate::orders::OrderKind::{Delivery as Goods, Ride};
        assert!(fits(&ride(Ride), &driver(Vehicle::Car, 3)));
        assert!(!fits(&ride(Ride), &driver(Vehicle::Bike, 1)));
        assert!(!fits(&ride(Ride), &driver(Vehicle::Car, 0)));
        assert!(fits(&ride(Goods), &driver(Vehicle::Bike, 1)));
        // A bike 2 km away arrives later than a car 2.5 km away.
        assert!(eta_minutes(2.0, Vehicle::Bike) > eta_minutes(2.5, Vehicle::Car));
    }

    #[test]
    fn stale_pings_are_forgotten_with_their_squares() {
        let mut live = Live::default();
        let here = Location {
            lat: 40.7,
            lng: -74.0,
        };
        let there = Location {
            lat: 41.7,
            lng: -73.0,
        };
        live.put("old", here, 1_000);
        live.put("new", here, 5_000);
        live.put("gone", there, 1_000);
        live.forget_before(2_000);
        assert_eq!(live.at.keys().collect::<Vec<_>>(), ["new"]);
        assert_eq!(live.squares.len(), 1, "an emptied square is dropped");
        assert!(live.squares[&square_of(&here)].contains("new"));
        assert!(!live.squares[&square_of(&here)].contains("old"));
    }

    /// Hundreds of deliveries waiting with offers out (more than a page)
    /// do not keep a new one from the round; the longest waiting comes
    /// first (a scheduled one by its dispatch time).
    #[test]
    fn every_waiting_delivery_is_looked_at_longest_waiting_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = storage::Store::open(dir.path().join("state.redb"), 16 << 20).unwrap();
        let txn = store.write().unwrap();
        let n = 2 * BATCH + 10;
        for i in 0..n {
            let order = crate::orders::sample_order(&format!("t.ord_{i:05}"), None, i as i64);
            let mut d = drivers::create_delivery(&txn, &order, i as i64).unwrap();
            if i % 2 == 0 {
                d.offered_to = vec!["t.acc_someone".into()];
            }
            if i == 7 {
                // Released from a route late: it waits from then.
                d.dispatch_after = 10_000;
            }
            txn.put(drivers::DELIVERIES, d.id.as_bytes(), &d).unwrap();
        }
        txn.commit(storage::Durability::Deferred).unwrap();
        let all = waiting(&store.read().unwrap()).unwrap();
        assert_eq!(all.len(), n, "every page is read");
        let ids: Vec<&str> = all.iter().map(|d| d.id.as_str()).collect();
        let expected: Vec<String> = (0..n)
            .filter(|i| *i != 7)
            .chain([7])
            .map(|i| format!("t.dlv_{i:05}"))
            .collect();
        assert_eq!(ids, expected);
    }

    /// The nearest-first search with its early stop picks exactly what
    /// ranking every driver by full tier would, for every wave size:
    /// drivers of all tiers (some demoted by poor ratings) spread over
    /// many grid squares, some out of reach, stale, offline or busy, and
    /// some who pinged this node since their replicated position (moving
    /// them nearer or farther, into other squares).
    #[test]
    fn the_search_stops_early_yet_agrees_with_ranking_every_driver() {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let dir = tempfile::tempdir().unwrap();
        let store = storage::Store::open(dir.path().join("state.redb"), 16 << 20).unwrap();
        let pickup = Location {
            lat: 40.7,
            lng: -74.0,
        };
        let now = 1_000_000;
        let mut rng = StdRng::seed_from_u64(3);
        let txn = store.write().unwrap();
        let mut all = Vec::new();
        for i in 0..600 {
            let id = format!("t.acc_{i:04}");
            if rng.gen_bool(0.3) {
                // Three 2-star ratings: a tier down.
                for n in 0..3 {
                    let rating = crate::ratings::Rating {
                        order_id: format!("{id}-{n}"),
                        vendor_id: "t.ven_1".into(),
                        vendor: crate::ratings::Stars::new(5).unwrap(),
                        driver_id: Some(id.clone()),
                        driver: crate::ratings::Stars::new(2),
                        comment: None,
                        at: 0,
                    };
                    crate::ratings::record(&txn, &rating).unwrap();
                }
            }
            all.push(Arc::new(Driver {
                id,
                vehicle: if rng.gen_bool(0.5) {
                    Vehicle::Car
                } else {
                    Vehicle::Bike
                },
                capacity: 2,
                qualifications: vec![],
                license_plate: None,
                status: DriverStatus::Approved,
                online: rng.gen_bool(0.9),
                location: Some(Location {
                    lat: pickup.lat + rng.gen_range(-0.06..0.06),
                    lng: pickup.lng + rng.gen_range(-0.06..0.06),
                }),
                location_at: if rng.gen_bool(0.95) { now - 500 } else { 0 },
                current_delivery: None,
                standing: drivers::Standing {
                    completed: rng.gen_range(0..40),
                    failed: rng.gen_range(0..4),
                    declined: 0,
                    expired: 0,
                },
                updated_at: 0,
            }));
        }
        for drv in &all {
            txn.put(drivers::DRIVERS, drv.id.as_bytes(), drv.as_ref())
                .unwrap();
            if let Some(l) = &drv.location {
                crate::driver_grid::moved(&txn, &drv.id, None, l, drv.location_at).unwrap();
            }
        }
        txn.commit(storage::Durability::Deferred).unwrap();
        let read = store.read().unwrap();
        // A fifth pinged this node since: up to 1.5 km from where the
        // cell last saw them.
        let dispatcher = Dispatcher::default();
        let mut position: HashMap<String, (Location, i64)> = all
            .iter()
            .filter_map(|d| Some((d.id.clone(), (d.location?, d.location_at))))
            .collect();
        for drv in &all {
            let Some(l) = drv.location.filter(|_| rng.gen_bool(0.2)) else {
                continue;
            };
            let ping = Ping {
                driver_id: drv.id.clone(),
                lat: l.lat + rng.gen_range(-0.013..0.013),
                lng: l.lng + rng.gen_range(-0.013..0.013),
                at: now - 100,
            };
            position.insert(
                drv.id.clone(),
                (
                    Location {
                        lat: ping.lat,
                        lng: ping.lng,
                    },
                    ping.at,
                ),
            );
            dispatcher.ping(ping);
        }
        let mut delivery = drivers::Delivery {
            id: "t.dlv_1".into(),
            order_id: "t.ord_1".into(),
            kind: crate::orders::OrderKind::Delivery,
            status: drivers::DeliveryStatus::Searching,
            customer_id: "c".into(),
            vendor_owner_id: "v".into(),
            pickup,
            dropoff: pickup,
            pay: 0,
            currency: "USD".into(),
            driver_id: None,
            offered_to: vec![all[0].id.clone()],
            empty_rounds: 0,
            dispatch_after: 0,
            first_offer_at: None,
            created_at: 0,
            updated_at: 0,
        };
        let busy: HashSet<String> = [all[1].id.clone()].into();
        let radius = 3.0;

        let ranked = |delivery: &drivers::Delivery, radius: f64| -> Vec<(u8, f64, String)> {
            let mut everyone: Vec<(u8, f64, String)> = all
                .iter()
                .filter(|drv| {
                    drv.online && !delivery.offered_to.contains(&drv.id) && !busy.contains(&drv.id)
                })
                .filter_map(|drv| {
                    let (at, when) = position[&drv.id];
                    if now - when > STALE_LOCATION_MS {
                        return None;
                    }
                    let km = haversine_km(&at, &pickup);
                    let rep = crate::ratings::reputation(&read, &drv.id).unwrap();
                    (km <= radius).then(|| {
                        (
                            drv.standing.tier_with(&rep),
                            eta_minutes(km, drv.vehicle),
                            drv.id.clone(),
                        )
                    })
                })
                .collect();
            everyone.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)).then(a.2.cmp(&b.2)));
            everyone
        };
        let everyone = ranked(&delivery, radius);
        let tiers: HashSet<u8> = everyone.iter().map(|e| e.0).collect();
        assert!(
            tiers.len() >= 2 && everyone.len() > 20,
            "a mixed field: {tiers:?}"
        );

        let choose_reading = |delivery: &drivers::Delivery, wanted| {
            let mut known = HashMap::new();
            let chosen = dispatcher
                .choose(&read, delivery, &[], &busy, radius, now, wanted, &mut known)
                .unwrap();
            (chosen, known.len())
        };
        let choose = |delivery: &drivers::Delivery, wanted| choose_reading(delivery, wanted).0;
        // The best one is found without reading most drivers.
        let (_, read_for_one) = choose_reading(&delivery, 1);
        assert!(read_for_one < all.len() / 3, "{read_for_one} drivers read");
        for wanted in [1, 2, 3, 5, 20, everyone.len(), everyone.len() + 5] {
            let got = choose(&delivery, wanted);
            let expected: Vec<String> = everyone.iter().take(wanted).map(|e| e.2.clone()).collect();
            assert_eq!(got, expected, "wave of {wanted}");
        }
        // A search wider than it reads square by square reads whole rows:
        // the same answer.
        let wide = 40.0;
        assert!(crate::driver_grid::squares_by_distance(&pickup, wide).len() > MAX_SQUARE_READS);
        let expected: Vec<String> = ranked(&delivery, wide)
            .into_iter()
            .take(5)
            .map(|e| e.2)
            .collect();
        let got = dispatcher
            .choose(
                &read,
                &delivery,
                &[],
                &busy,
                wide,
                now,
                5,
                &mut HashMap::new(),
            )
            .unwrap();
        assert_eq!(got, expected, "wide search");
        // Nothing left once everyone in reach was offered it.
        delivery
            .offered_to
            .extend(everyone.iter().map(|e| e.2.clone()));
        assert!(choose(&delivery, 3).is_empty());
    }
}
