//! Drivers, deliveries and offers, as replicated state.
//!
//! A delivery is created in the same transaction as the order change that
//! makes it dispatchable (accept for on-demand goods, checkout for rides).
//! The leader's dispatcher (`dispatch`) proposes offers; whether an offer
//! may be made, and who wins an accept, is decided here, in apply, so every
//! node agrees and exactly one driver ever gets a delivery.

use serde::{Deserialize, Serialize};
use storage::{ReadTxn, Table, WriteTxn};

use crate::{
    catalog::Location,
    events,
    ledger::{self, LedgerTx, Posting},
    orders::{self, Order, OrderKind, OrderStatus},
};

pub(crate) const DRIVERS: Table<Driver> = Table::new("drivers");
pub(crate) const DELIVERIES: Table<Delivery> = Table::new("deliveries");
/// `<cell>.ofr_<ULID>` → offer: in the order they were made.
const OFFERS: Table<Offer> = Table::new("offers");
/// From command version 4 offers are kept this long (a few seconds'
/// decision, long settled by then), and dropped a range at a time.
pub const OFFERS_KEPT_MS: i64 = 7 * 24 * 3_600_000;
/// From command version 4 an unassigned delivery is searched for again
/// this often (drivers come online, move, finish their work) ...
pub const UNASSIGNED_RETRY_EVERY_MS: i64 = 60_000;
/// ... for this long after it was due (its creation, or its window's
/// start when scheduled); then it waits only for the customer's cancel.
pub const UNASSIGNED_RETRY_FOR_MS: i64 = 3 * 3_600_000;
/// A ride's passenger does not wait hours: its search is retried this long.
pub const UNASSIGNED_RIDE_RETRY_FOR_MS: i64 = 15 * 60_000;

fn retry_key(due: i64, delivery_id: &str) -> Vec<u8> {
    format!("{:020}/{delivery_id}", due.max(0)).into_bytes()
}

/// Unassigned deliveries due to be searched for again by `now`, soonest
/// first (at most `limit`).
pub fn retries_due(read: &ReadTxn, now: i64, limit: usize) -> storage::Result<Vec<Delivery>> {
    // Keys sort by their 20-digit due time: everything before the first
    // key of `now + 1`.
    let end = format!("{:020}/", now.saturating_add(1).max(0)).into_bytes();
    let mut out = Vec::new();
    for (_, id) in read.range(RETRIES, ..end, limit)? {
        if let Some(d) = read.get(DELIVERIES, id.as_bytes())? {
            out.push(d);
        }
    }
    Ok(out)
}
/// Deliveries waiting for a driver (key = delivery id).
const DISPATCHABLE: Table<i64> = Table::new("deliveries_dispatchable");
/// `<due ms, 20 digits>/<delivery id>` → delivery id: unassigned
/// deliveries to search for again, by when (command version 4). Apart from
/// `deliveries_dispatchable`, which the dispatcher reads oldest first
/// every round: hours of given-up deliveries there would crowd new ones
/// out.
const RETRIES: Table<String> = Table::new("deliveries_retry");
/// order id → delivery id.
const BY_ORDER: Table<String> = Table::new("deliveries_by_order");
/// `<driver id>/<offer id>` → offer id, for a driver's open offers.
const OFFERS_BY_DRIVER: Table<String> = Table::new("offers_by_driver");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Vehicle {
    Bike,
    Scooter,
    Car,
    Van,
    Truck,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DriverStatus {
    Pending,
    Approved,
    Suspended,
}

/// Standing tier from delivery outcomes: 1 is best.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Standing {
    pub completed: u32,
    pub failed: u32,
    pub declined: u32,
    pub expired: u32,
}

impl Standing {
    /// Completion rate over all outcomes (offers ignored or declined count
    /// against it, lightly).
    pub fn completion_rate(&self) -> f64 {
        let done = self.completed as f64;
        let bad = self.failed as f64 + 0.25 * (self.declined + self.expired) as f64;
        if done + bad == 0.0 {
            1.0
        } else {
            done / (done + bad)
        }
    }

    /// From outcomes alone.
    pub fn tier(&self) -> u8 {
        match self.completion_rate() {
            r if r >= 0.95 => 1,
            r if r >= 0.85 => 2,
            _ => 3,
        }
    }

    /// From outcomes, then a tier down for a poor rating and one for
    /// frequent lateness (3 at worst).
    pub fn tier_with(&self, r: &crate::ratings::Reputation) -> u8 {
        (self.tier() + r.tier_penalty(self.completed)).min(3)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Driver {
    /// The driver's account id.
    pub id: String,
    pub vehicle: Vehicle,
    pub capacity: u32,
    pub qualifications: Vec<String>,
    pub license_plate: Option<String>,
    pub status: DriverStatus,
    pub online: bool,
    /// Last replicated position (pings are coalesced, ≤ 1 s old on the
    /// leader that wrote them).
    pub location: Option<Location>,
    pub location_at: i64,
    pub current_delivery: Option<String>,
    pub standing: Standing,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Waiting for a driver (offers may be out).
    Searching,
    Assigned,
    Arrived,
    PickedUp,
    Delivered,
    Failed,
    /// Nobody took it within the dispatch limits.
    Unassigned,
    /// The order was cancelled or rejected.
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub id: String,
    pub order_id: String,
    pub kind: OrderKind,
    pub status: DeliveryStatus,
    pub customer_id: String,
    pub vendor_owner_id: String,
    pub pickup: Location,
    pub dropoff: Location,
    /// What the driver earns: delivery fee + tip, minor units.
    pub pay: i64,
    pub currency: String,
    pub driver_id: Option<String>,
    /// Drivers offered this delivery so far (never offered twice).
    pub offered_to: Vec<String>,
    /// Dispatch rounds without anyone to offer it to.
    pub empty_rounds: u32,
    /// Scheduled orders are dispatched shortly before their window.
    pub dispatch_after: i64,
    /// When the first offer went out (dispatch latency = this − created).
    pub first_offer_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OfferStatus {
    Open,
    Accepted,
    Declined,
    Expired,
    /// Someone else won the delivery.
    Lost,
    /// The driver stopped being approved (suspended, or a changed
    /// profile awaiting review) while it was open.
    Withdrawn,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Offer {
    pub id: String,
    pub delivery_id: String,
    pub driver_id: String,
    pub status: OfferStatus,
    pub pay: i64,
    pub expires_at: i64,
    pub created_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliveryAction {
    Arrive,
    Pickup,
    Complete,
    Fail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Profile {
    pub vehicle: Vehicle,
    pub capacity: u32,
    pub qualifications: Vec<String>,
    pub license_plate: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ping {
    pub driver_id: String,
    pub lat: f64,
    pub lng: f64,
    pub at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum DriverCommand {
    PutProfile {
        driver_id: String,
        profile: Profile,
        now: i64,
    },
    SetStatus {
        driver_id: String,
        status: DriverStatus,
        now: i64,
    },
    SetOnline {
        driver_id: String,
        online: bool,
        now: i64,
    },
    /// Coalesced location pings (latest per driver).
    Locations {
        pings: Vec<Ping>,
    },
    /// Proposed by the leader's dispatcher.
    CreateOffers {
        delivery_id: String,
        offers: Vec<(String, String)>,
        expires_at: i64,
        now: i64,
    },
    /// Dispatch found nobody this round.
    NoCandidates {
        delivery_id: String,
        give_up: bool,
        now: i64,
    },
    ExpireOffer {
        offer_id: String,
        now: i64,
    },
    AcceptOffer {
        offer_id: String,
        driver_id: String,
        now: i64,
    },
    DeclineOffer {
        offer_id: String,
        driver_id: String,
        now: i64,
    },
    Act {
        delivery_id: String,
        driver_id: String,
        action: DeliveryAction,
        proof_code: Option<String>,
        earnings_tx: String,
        now: i64,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DriverResponse {
    Driver(Driver),
    Delivery(Delivery),
    Offer(Offer),
    Offers(Vec<Offer>),
    Done,
    NotFound,
    Forbidden,
    /// Too late, lost the race, or not allowed in this state.
    Conflict(String),
    BadProof,
    /// Too many wrong proof codes: none is tried before `until` (Unix ms).
    /// (Last, like every new variant: answers cross between nodes of
    /// different builds during an upgrade.)
    ProofLocked {
        until: i64,
    },
    /// The driver is not approved (suspended, or awaiting review) and may
    /// not go and fetch anything.
    NotApproved,
}

/// `<delivery id>` → wrong proof codes given, and when the first of them
/// came (Unix ms, from the command).
const PROOF_ATTEMPTS: Table<(u32, i64)> = Table::new("proof_attempts");
/// From command version 3 a delivery takes at most this many wrong proof
/// codes per [`PROOF_WINDOW_MS`]: its four digits cannot be found by
/// trying them all (at the per-principal rate limit alone, in minutes).
pub const MAX_PROOF_ATTEMPTS: u32 = 5;
pub const PROOF_WINDOW_MS: i64 = 15 * 60 * 1000;

/// Checks `given` against the order's proof code, counting wrong ones
/// (from command version 3); `None` when it may complete.
fn check_proof(
    txn: &WriteTxn,
    delivery_id: &str,
    given: Option<&str>,
    expected: &str,
    now: i64,
) -> storage::Result<Option<DriverResponse>> {
    if crate::command_version::recorded_in(txn)? < 3 {
        return Ok((given != Some(expected)).then_some(DriverResponse::BadProof));
    }
    let key = delivery_id.as_bytes();
    let stored = txn.get(PROOF_ATTEMPTS, key)?;
    let (wrong, since) = stored
        .filter(|(_, since)| now - since < PROOF_WINDOW_MS)
        .unwrap_or((0, now));
    if wrong >= MAX_PROOF_ATTEMPTS {
        return Ok(Some(DriverResponse::ProofLocked {
            until: since + PROOF_WINDOW_MS,
        }));
    }
    if given != Some(expected) {
        // Kept although the command is refused: that is its point.
        txn.put(PROOF_ATTEMPTS, key, &(wrong + 1, since))?;
        return Ok(Some(DriverResponse::BadProof));
    }
    if stored.is_some() {
        txn.delete(PROOF_ATTEMPTS, key)?;
    }
    Ok(None)
}

/// How long before a scheduled window its delivery is dispatched (on
/// demand, when no route driver took it by then).
pub const SCHEDULED_LEAD_MS: i64 = 30 * 60 * 1000;

/// Opens a delivery for an order that just became dispatchable.
pub fn create_delivery(txn: &WriteTxn, order: &Order, now: i64) -> storage::Result<Delivery> {
    let id = format!("{}.dlv_{}", cell_of(&order.id), id_suffix(&order.id));
    let d = Delivery {
        id: id.clone(),
        order_id: order.id.clone(),
        kind: order.kind,
        status: DeliveryStatus::Searching,
        customer_id: order.customer_id.clone(),
        vendor_owner_id: order.vendor_owner_id.clone(),
        pickup: order.pickup,
        dropoff: order.dropoff,
        pay: order.delivery_fee + order.tip,
        currency: order.currency.clone(),
        driver_id: None,
        offered_to: Vec::new(),
        empty_rounds: 0,
        dispatch_after: order
            .window_start
            .map(|w| (w - SCHEDULED_LEAD_MS).max(now))
            .unwrap_or(now),
        first_offer_at: None,
        created_at: now,
        updated_at: now,
    };
    txn.put(DELIVERIES, id.as_bytes(), &d)?;
    txn.put(DISPATCHABLE, id.as_bytes(), &now)?;
    txn.put(BY_ORDER, order.id.as_bytes(), &id)?;
    Ok(d)
}

/// The driver of an order's delivery, inside a write.
pub fn driver_of_order_in(txn: &WriteTxn, order_id: &str) -> storage::Result<Option<String>> {
    let Some(id) = txn.get(BY_ORDER, order_id.as_bytes())? else {
        return Ok(None);
    };
    Ok(txn
        .get(DELIVERIES, id.as_bytes())?
        .and_then(|d| d.driver_id))
}

/// A scheduled delivery waits for its route instead of on-demand dispatch.
pub fn hold_for_route(txn: &WriteTxn, delivery_id: &str) -> storage::Result<()> {
    txn.delete(DISPATCHABLE, delivery_id.as_bytes())?;
    Ok(())
}

/// The delivery, if it still waits for a driver (not cancelled, nobody
/// assigned).
fn waiting(txn: &WriteTxn, delivery_id: &str) -> storage::Result<Option<Delivery>> {
    Ok(txn
        .get(DELIVERIES, delivery_id.as_bytes())?
        .filter(|d| d.status == DeliveryStatus::Searching && d.driver_id.is_none()))
}

/// The route's matched driver takes one of its deliveries. Part of the
/// window close's apply. The driver's `current_delivery` stays as it is:
/// route work is booked ahead, not the errand in hand.
pub fn assign_for_route(
    txn: &WriteTxn,
    delivery_id: &str,
    driver_id: &str,
    route_id: &str,
    now: i64,
) -> storage::Result<()> {
    let Some(mut d) = waiting(txn, delivery_id)? else {
        return Ok(());
    };
    d.status = DeliveryStatus::Assigned;
    d.driver_id = Some(driver_id.to_string());
    d.updated_at = now;
    txn.put(DELIVERIES, d.id.as_bytes(), &d)?;
    events::append_to_all(
        txn,
        &[&d.customer_id, &d.vendor_owner_id, driver_id],
        "delivery.assigned",
        now,
        &serde_json::json!({"delivery_id": d.id, "order_id": d.order_id, "driver_id": driver_id, "route_id": route_id}),
    )
}

/// Nobody took the delivery's route before it had to leave: it goes to
/// on-demand dispatch. Part of the route release's apply.
pub fn release_from_route(txn: &WriteTxn, delivery_id: &str, now: i64) -> storage::Result<()> {
    if waiting(txn, delivery_id)?.is_some() {
        txn.put(DISPATCHABLE, delivery_id.as_bytes(), &now)?;
    }
    Ok(())
}

/// The order was cancelled or rejected: its delivery stops, open offers
/// are withdrawn, an assigned driver is freed.
pub fn cancel_for_order(txn: &WriteTxn, order_id: &str, now: i64) -> storage::Result<()> {
    let Some(id) = txn.get(BY_ORDER, order_id.as_bytes())? else {
        return Ok(());
    };
    let Some(mut d) = txn.get(DELIVERIES, id.as_bytes())? else {
        return Ok(());
    };
    close_offers(txn, &d, None)?;
    crate::routes::drop_stop(txn, &d.id, d.pay, now)?;
    if let Some(driver_id) = &d.driver_id {
        free_driver(txn, driver_id, &d.id, now)?;
        events::append(
            txn,
            driver_id,
            "delivery.cancelled",
            now,
            &serde_json::json!({"delivery_id": d.id}),
        )?;
    }
    if d.status == DeliveryStatus::Unassigned {
        txn.delete(RETRIES, &retry_key(d.dispatch_after, &d.id))?;
    }
    d.status = DeliveryStatus::Cancelled;
    d.updated_at = now;
    txn.delete(DISPATCHABLE, d.id.as_bytes())?;
    txn.put(DELIVERIES, d.id.as_bytes(), &d)
}

fn cell_of(id: &str) -> &str {
    id.split_once('.').map(|(c, _)| c).unwrap_or("local")
}

fn id_suffix(id: &str) -> &str {
    id.split_once('_').map(|(_, s)| s).unwrap_or(id)
}

/// The driver is done with `delivery_id`; if it was the errand in hand
/// (a route's deliveries never are), they are free for the next.
fn free_driver(
    txn: &WriteTxn,
    driver_id: &str,
    delivery_id: &str,
    now: i64,
) -> storage::Result<()> {
    if let Some(mut drv) = txn
        .get(DRIVERS, driver_id.as_bytes())?
        .filter(|drv| drv.current_delivery.as_deref() == Some(delivery_id))
    {
        drv.current_delivery = None;
        drv.updated_at = now;
        txn.put(DRIVERS, driver_id.as_bytes(), &drv)?;
    }
    Ok(())
}

/// Whether `new` asks for more than the approved profile `old` was
/// vetted for.
fn widens(old: &Driver, new: &Profile) -> bool {
    new.vehicle != old.vehicle
        || new.license_plate.is_some() && new.license_plate != old.license_plate
        || new.capacity > old.capacity
        || new
            .qualifications
            .iter()
            .any(|q| !old.qualifications.contains(q))
}

/// The driver stops being approved (command version 4): taken offline,
/// and everything handed back (`hand_back`).
fn step_down(txn: &WriteTxn, drv: &mut Driver, now: i64) -> storage::Result<()> {
    drv.online = false;
    hand_back(txn, drv, now, HandBack::All)
}

/// What a driver gives up when they may no longer do it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum HandBack {
    /// Everything: they stopped being approved.
    All,
    /// What their narrowed profile no longer fits (fewer seats, a
    /// qualification dropped), while they stay approved.
    Unfit,
}

/// Whether `drv` as they are now may carry `d`: dispatch's test (seats,
/// a car or van for rides, the vendor kind's qualifications).
fn still_fits(txn: &WriteTxn, d: &Delivery, drv: &Driver) -> storage::Result<bool> {
    if !crate::dispatch::fits(d, drv) {
        return Ok(false);
    }
    let Some(order) = orders::order_in(txn, &d.order_id)? else {
        return Ok(true);
    };
    let needs = crate::dispatch::required_qualifications_in(txn, &order.vendor_id)?;
    Ok(needs.iter().all(|q| drv.qualifications.contains(q)))
}

/// Hands back what the driver may no longer do (command version 4): open
/// offers are withdrawn, the delivery in hand goes to on-demand dispatch,
/// and routes still ahead of them leave their schedule for the market
/// again, their deliveries waiting for the route (released on demand when
/// its time comes, as any unclaimed route's). A delivery already picked
/// up stays theirs to finish, and routes done stay in their schedule.
fn hand_back(txn: &WriteTxn, drv: &mut Driver, now: i64, which: HandBack) -> storage::Result<()> {
    let unfit = |d: &Delivery, drv: &Driver| -> storage::Result<bool> {
        Ok(which == HandBack::All || !still_fits(txn, d, drv)?)
    };
    for (k, o) in open_offers_in(txn, &drv.id)? {
        if let Some(d) = txn.get(DELIVERIES, o.delivery_id.as_bytes())? {
            if !unfit(&d, drv)? {
                continue;
            }
        }
        withdraw(txn, &k, o, now)?;
    }
    // (delivery, whether it goes to on-demand dispatch rather than back
    // to its route's market)
    let mut ids: Vec<(String, bool)> = Vec::new();
    for route in crate::routes::booked_in(txn, &drv.id)? {
        if which == HandBack::Unfit && route.requirements.met_by(drv) {
            continue;
        }
        let stops: Vec<String> = route
            .stops
            .iter()
            .filter_map(|s| s.delivery_id.clone())
            .collect();
        let mut ahead = crate::routes::ahead_at(&route, now);
        for id in &stops {
            ahead |= fetching(txn, id, &drv.id)?.is_some();
        }
        if ahead {
            crate::routes::reopen_booking(txn, route, now)?;
            ids.extend(stops.into_iter().map(|id| (id, false)));
        }
    }
    if let Some(id) = drv.current_delivery.clone() {
        if let Some(d) = fetching(txn, &id, &drv.id)? {
            if unfit(&d, drv)? {
                ids.push((id, true));
            }
        }
    }
    for (id, on_demand) in ids {
        let Some(mut d) = fetching(txn, &id, &drv.id)? else {
            continue;
        };
        if drv.current_delivery.as_deref() == Some(id.as_str()) {
            drv.current_delivery = None;
        }
        d.status = DeliveryStatus::Searching;
        d.driver_id = None;
        // A new search: drivers who passed on it before are asked again
        // (the stood-down driver is not eligible anyway).
        d.offered_to.clear();
        d.empty_rounds = 0;
        d.updated_at = now;
        txn.put(DELIVERIES, d.id.as_bytes(), &d)?;
        // A route's delivery waits for its reopened route (released on
        // demand when the route's time comes, like any open route's).
        if on_demand {
            txn.put(DISPATCHABLE, d.id.as_bytes(), &now)?;
        }
        events::append_to_all(
            txn,
            &[&d.customer_id, &d.vendor_owner_id, &drv.id],
            "delivery.reassigning",
            now,
            &serde_json::json!({"delivery_id": d.id, "order_id": d.order_id, "driver_id": drv.id}),
        )?;
    }
    Ok(())
}

/// Drops the offers made before `now - OFFERS_KEPT_MS` (ids are ULIDs,
/// so they are one range).
fn drop_old_offers(txn: &WriteTxn, cell: &str, now: i64) -> storage::Result<()> {
    let horizon = now.saturating_sub(OFFERS_KEPT_MS).max(0) as u64;
    let start = format!("{cell}.ofr_").into_bytes();
    let end = format!("{cell}.ofr_{}", ulid::Ulid::from_parts(horizon, 0)).into_bytes();
    // A bounded number per sweep: the first sweep after an upgrade may
    // find months of offers, and apply must not stall on them.
    let old = txn.range(OFFERS, start..end, OFFERS_SWEPT_AT_ONCE)?;
    for (k, _) in old {
        txn.delete(OFFERS, &k)?;
    }
    Ok(())
}

/// Offers one sweep drops at most.
const OFFERS_SWEPT_AT_ONCE: usize = 2_000;

/// The delivery, if `driver` is assigned to it and has not picked it up.
fn fetching(txn: &WriteTxn, id: &str, driver: &str) -> storage::Result<Option<Delivery>> {
    Ok(txn.get(DELIVERIES, id.as_bytes())?.filter(|d| {
        matches!(d.status, DeliveryStatus::Assigned | DeliveryStatus::Arrived)
            && d.driver_id.as_deref() == Some(driver)
    }))
}

/// The driver's open offers are withdrawn (they went offline or stopped
/// being approved; command version 4).
fn withdraw_offers(txn: &WriteTxn, driver_id: &str, now: i64) -> storage::Result<()> {
    for (k, o) in open_offers_in(txn, driver_id)? {
        withdraw(txn, &k, o, now)?;
    }
    Ok(())
}

/// One open offer withdrawn (index key `k`); its driver is told with
/// `offer.withdrawn`, as with `offer.expired`.
fn withdraw(txn: &WriteTxn, k: &[u8], mut o: Offer, now: i64) -> storage::Result<()> {
    o.status = OfferStatus::Withdrawn;
    txn.put(OFFERS, o.id.as_bytes(), &o)?;
    txn.delete(OFFERS_BY_DRIVER, k)?;
    events::append(
        txn,
        &o.driver_id,
        "offer.withdrawn",
        now,
        &serde_json::json!({"offer_id": o.id, "delivery_id": o.delivery_id}),
    )
    .map(drop)
}

/// A driver's open offers (expired or not yet) with their index keys,
/// inside a write.
fn open_offers_in(txn: &WriteTxn, driver_id: &str) -> storage::Result<Vec<(Vec<u8>, Offer)>> {
    let prefix = format!("{driver_id}/");
    let rows = txn.range(
        OFFERS_BY_DRIVER,
        storage::within(prefix.as_bytes().to_vec(), prefix.as_bytes()),
        64,
    )?;
    let mut out = Vec::new();
    let mut heal = None;
    for (k, offer_id) in rows
        .into_iter()
        .take_while(|(k, _)| k.starts_with(prefix.as_bytes()))
    {
        match txn.get(OFFERS, offer_id.as_bytes())? {
            Some(o) if o.status == OfferStatus::Open => out.push((k, o)),
            Some(_) => {}
            // Dropped with old offers while still indexed (command
            // version 4): the entry goes, so it cannot fill the cap.
            None => {
                let heal = match heal {
                    Some(h) => h,
                    None => *heal.insert(crate::command_version::recorded_in(txn)? >= 4),
                };
                if heal {
                    txn.delete(OFFERS_BY_DRIVER, &k)?;
                }
            }
        }
    }
    Ok(out)
}

/// Whether `driver_id` holds an offer still open at `now` (for `delivery`
/// only, if named).
fn has_live_offer(
    txn: &WriteTxn,
    driver_id: &str,
    delivery: Option<&str>,
    now: i64,
) -> storage::Result<bool> {
    Ok(open_offers_in(txn, driver_id)?
        .iter()
        .any(|(_, o)| o.expires_at > now && delivery.is_none_or(|d| o.delivery_id == d)))
}

/// Marks every open offer of the delivery lost (or the one accepted).
fn close_offers(txn: &WriteTxn, d: &Delivery, winner: Option<&str>) -> storage::Result<()> {
    for driver_id in &d.offered_to {
        for (k, mut o) in open_offers_in(txn, driver_id)? {
            if o.delivery_id != d.id {
                continue;
            }
            o.status = if Some(o.id.as_str()) == winner {
                OfferStatus::Accepted
            } else {
                OfferStatus::Lost
            };
            txn.put(OFFERS, o.id.as_bytes(), &o)?;
            txn.delete(OFFERS_BY_DRIVER, &k)?;
        }
    }
    Ok(())
}

fn bump(txn: &WriteTxn, driver_id: &str, f: impl FnOnce(&mut Standing)) -> storage::Result<()> {
    if let Some(mut drv) = txn.get(DRIVERS, driver_id.as_bytes())? {
        f(&mut drv.standing);
        txn.put(DRIVERS, driver_id.as_bytes(), &drv)?;
    }
    Ok(())
}

fn earnings(d: &Delivery, driver_id: &str, tx_id: String, order: &Order, at: i64) -> LedgerTx {
    let mut postings = vec![Posting {
        account: driver_account(driver_id),
        amount: order.delivery_fee + order.tip,
    }];
    if order.delivery_fee != 0 {
        postings.push(Posting {
            account: ledger::DELIVERY_FEES.into(),
            amount: -order.delivery_fee,
        });
    }
    if order.tip != 0 {
        postings.push(Posting {
            account: ledger::TIPS_PAYABLE.into(),
            amount: -order.tip,
        });
    }
    LedgerTx {
        id: tx_id,
        order_id: d.order_id.clone(),
        kind: "driver_earnings".into(),
        currency: d.currency.clone(),
        postings,
        at,
    }
}

/// The driver's own offer if it is still open; otherwise what to answer
/// (someone else's offer looks like no offer at all).
fn own_open_offer(
    txn: &WriteTxn,
    offer_id: &str,
    driver_id: &str,
) -> storage::Result<Result<Offer, DriverResponse>> {
    let Some(o) = txn.get(OFFERS, offer_id.as_bytes())? else {
        return Ok(Err(DriverResponse::NotFound));
    };
    if o.driver_id != driver_id {
        return Ok(Err(DriverResponse::NotFound));
    }
    if o.status != OfferStatus::Open {
        return Ok(Err(DriverResponse::Conflict(
            format!("the offer is {:?}", o.status).to_lowercase(),
        )));
    }
    Ok(Ok(o))
}

pub fn driver_account(driver_id: &str) -> String {
    format!("driver:{driver_id}")
}

/// Deterministic: reads only the command and the transaction.
pub fn apply(txn: &WriteTxn, cmd: DriverCommand) -> storage::Result<DriverResponse> {
    use DriverResponse as R;
    match cmd {
        DriverCommand::PutProfile {
            driver_id,
            profile,
            now,
        } => {
            let mut review = false;
            let mut drv = match txn.get(DRIVERS, driver_id.as_bytes())? {
                Some(mut d) => {
                    // What ops approved was this profile: a different
                    // vehicle, more seats or a new qualification is
                    // reviewed again before it is dispatched on (builds
                    // before command version 4 kept the approval).
                    review = d.status == DriverStatus::Approved
                        && widens(&d, &profile)
                        && crate::command_version::recorded_in(txn)? >= 4;
                    d.vehicle = profile.vehicle;
                    d.capacity = profile.capacity;
                    d.qualifications = profile.qualifications;
                    d.license_plate = profile.license_plate;
                    d.updated_at = now;
                    d
                }
                None => Driver {
                    id: driver_id.clone(),
                    vehicle: profile.vehicle,
                    capacity: profile.capacity,
                    qualifications: profile.qualifications,
                    license_plate: profile.license_plate,
                    status: DriverStatus::Pending,
                    online: false,
                    location: None,
                    location_at: 0,
                    current_delivery: None,
                    standing: Standing::default(),
                    updated_at: now,
                },
            };
            if !review
                && drv.status == DriverStatus::Approved
                && crate::command_version::recorded_in(txn)? >= 4
            {
                // Still approved, perhaps for less: what the profile no
                // longer fits goes back (offers they could not have been
                // made, work they may not do).
                hand_back(txn, &mut drv, now, HandBack::Unfit)?;
            }
            if review {
                drv.status = DriverStatus::Pending;
                step_down(txn, &mut drv, now)?;
                events::append(
                    txn,
                    &driver_id,
                    "driver.status",
                    now,
                    &serde_json::json!({"status": drv.status, "reason": "profile changed; awaiting review"}),
                )?;
            }
            txn.put(DRIVERS, driver_id.as_bytes(), &drv)?;
            Ok(R::Driver(drv))
        }
        DriverCommand::SetStatus {
            driver_id,
            status,
            now,
        } => {
            let Some(mut drv) = txn.get(DRIVERS, driver_id.as_bytes())? else {
                return Ok(R::NotFound);
            };
            drv.status = status;
            if status != DriverStatus::Approved {
                drv.online = false;
                if crate::command_version::recorded_in(txn)? >= 4 {
                    step_down(txn, &mut drv, now)?;
                }
            }
            drv.updated_at = now;
            txn.put(DRIVERS, driver_id.as_bytes(), &drv)?;
            events::append(
                txn,
                &driver_id,
                "driver.status",
                now,
                &serde_json::json!({"status": status}),
            )?;
            Ok(R::Driver(drv))
        }
        DriverCommand::SetOnline {
            driver_id,
            online,
            now,
        } => {
            let Some(mut drv) = txn.get(DRIVERS, driver_id.as_bytes())? else {
                return Ok(R::NotFound);
            };
            // Like the route marketplace: being approved is part of the
            // role, so a pending or suspended driver is refused, not in
            // conflict.
            if online && drv.status != DriverStatus::Approved {
                return Ok(R::Forbidden);
            }
            // Going offline withdraws what was offered: an offline driver
            // is not dispatched to, and their offer would hold the
            // delivery's round until it expired (builds before command
            // version 4 let it stand, and be accepted).
            if !online && crate::command_version::recorded_in(txn)? >= 4 {
                withdraw_offers(txn, &driver_id, now)?;
            }
            drv.online = online;
            drv.updated_at = now;
            txn.put(DRIVERS, driver_id.as_bytes(), &drv)?;
            Ok(R::Driver(drv))
        }
        DriverCommand::Locations { pings } => {
            for p in pings {
                if let Some(mut drv) = txn.get(DRIVERS, p.driver_id.as_bytes())? {
                    if p.at >= drv.location_at {
                        let now = Location {
                            lat: p.lat,
                            lng: p.lng,
                        };
                        crate::driver_grid::moved(
                            txn,
                            &p.driver_id,
                            drv.location.as_ref(),
                            &now,
                            p.at,
                        )?;
                        drv.location = Some(now);
                        drv.location_at = p.at;
                        txn.put(DRIVERS, p.driver_id.as_bytes(), &drv)?;
                    }
                }
            }
            Ok(R::Done)
        }
        DriverCommand::CreateOffers {
            delivery_id,
            offers,
            expires_at,
            now,
        } => {
            let Some(mut d) = txn.get(DELIVERIES, delivery_id.as_bytes())? else {
                return Ok(R::NotFound);
            };
            let version = crate::command_version::recorded_in(txn)?;
            // From version 4 an unassigned delivery is searched for again.
            let retried = version >= 4 && d.status == DeliveryStatus::Unassigned;
            if d.status != DeliveryStatus::Searching && !retried {
                return Ok(R::Conflict(
                    "the delivery is not looking for a driver".into(),
                ));
            }
            // From command version 3 apply itself keeps what the
            // dispatcher aims at — one live round of offers per delivery,
            // one live offer per driver — so that rounds of two leaders
            // crossing in a failover cannot both go out. (Builds before
            // it applied every round they were handed; the rule waits for
            // every node to apply it alike.)
            let one_live = version >= 3;
            // About one round in 32 (by its first offer's id, which the
            // command carries) drops the offers past their keeping time.
            if version >= 4 && offers.first().is_some_and(|(id, _)| id.ends_with('0')) {
                drop_old_offers(txn, cell_of(&d.id), now)?;
            }
            if one_live {
                for driver_id in &d.offered_to {
                    if has_live_offer(txn, driver_id, Some(&d.id), now)? {
                        return Ok(R::Conflict("the delivery has offers out".into()));
                    }
                }
            }
            let mut made = Vec::new();
            for (offer_id, driver_id) in offers {
                let Some(drv) = txn.get(DRIVERS, driver_id.as_bytes())? else {
                    continue;
                };
                let eligible = drv.status == DriverStatus::Approved
                    && drv.online
                    && drv.current_delivery.is_none()
                    && !d.offered_to.contains(&driver_id);
                if !eligible || (one_live && has_live_offer(txn, &driver_id, None, now)?) {
                    continue;
                }
                let o = Offer {
                    id: offer_id.clone(),
                    delivery_id: d.id.clone(),
                    driver_id: driver_id.clone(),
                    status: OfferStatus::Open,
                    pay: d.pay,
                    expires_at,
                    created_at: now,
                };
                txn.put(OFFERS, offer_id.as_bytes(), &o)?;
                txn.put(
                    OFFERS_BY_DRIVER,
                    format!("{driver_id}/{offer_id}").as_bytes(),
                    &offer_id,
                )?;
                let data = if crate::command_version::recorded_in(txn)? >= 2 {
                    serde_json::json!({"offer_id": offer_id, "delivery_id": d.id, "pay": {"amount": d.pay, "currency": d.currency}, "expires_at": crate::http::identity_api::rfc3339(expires_at)})
                } else {
                    serde_json::json!({"offer_id": offer_id, "delivery_id": d.id, "pay": d.pay, "expires_at": expires_at})
                };
                events::append(txn, &driver_id, "offer.created", now, &data)?;
                d.offered_to.push(driver_id);
                made.push(o);
            }
            // A round apply refused every driver of is no round: the
            // dispatcher keeps counting towards giving up (builds before
            // command version 4 started over).
            if !made.is_empty() || version < 4 {
                d.empty_rounds = 0;
            }
            if retried && !made.is_empty() {
                txn.delete(RETRIES, &retry_key(d.dispatch_after, &d.id))?;
                txn.put(DISPATCHABLE, d.id.as_bytes(), &now)?;
                d.status = DeliveryStatus::Searching;
                events::append_to_all(
                    txn,
                    &[&d.customer_id, &d.vendor_owner_id],
                    "delivery.searching",
                    now,
                    &serde_json::json!({"delivery_id": d.id, "order_id": d.order_id}),
                )?;
            }
            d.updated_at = now;
            if !made.is_empty() && d.first_offer_at.is_none() {
                d.first_offer_at = Some(now);
            }
            txn.put(DELIVERIES, d.id.as_bytes(), &d)?;
            Ok(R::Offers(made))
        }
        DriverCommand::NoCandidates {
            delivery_id,
            give_up,
            now,
        } => {
            let Some(mut d) = txn.get(DELIVERIES, delivery_id.as_bytes())? else {
                return Ok(R::NotFound);
            };
            let retrying = crate::command_version::recorded_in(txn)? >= 4;
            let waiting = d.status == DeliveryStatus::Searching
                || retrying && d.status == DeliveryStatus::Unassigned;
            if !waiting {
                return Ok(R::Done);
            }
            d.empty_rounds += 1;
            d.updated_at = now;
            if give_up {
                if d.status == DeliveryStatus::Searching {
                    d.status = DeliveryStatus::Unassigned;
                    // The retries ask everyone afresh, once.
                    if retrying {
                        d.offered_to.clear();
                    }
                    events::append_to_all(
                        txn,
                        &[&d.customer_id, &d.vendor_owner_id],
                        "delivery.unassigned",
                        now,
                        &serde_json::json!({"delivery_id": d.id, "order_id": d.order_id}),
                    )?;
                }
                // Searched for again in a while (version 4), for a few
                // hours after it was due (a ride: minutes); builds before
                // gave up for good.
                txn.delete(DISPATCHABLE, d.id.as_bytes())?;
                if retrying {
                    txn.delete(RETRIES, &retry_key(d.dispatch_after, &d.id))?;
                    let due = orders::order_in(txn, &d.order_id)?
                        .and_then(|o| o.window_start)
                        .unwrap_or(d.created_at);
                    let retry_for = match d.kind {
                        OrderKind::Ride => UNASSIGNED_RIDE_RETRY_FOR_MS,
                        OrderKind::Delivery => UNASSIGNED_RETRY_FOR_MS,
                    };
                    if now < due.saturating_add(retry_for) {
                        d.dispatch_after = now + UNASSIGNED_RETRY_EVERY_MS;
                        txn.put(RETRIES, &retry_key(d.dispatch_after, &d.id), &d.id)?;
                    }
                }
            }
            txn.put(DELIVERIES, d.id.as_bytes(), &d)?;
            Ok(R::Delivery(d))
        }
        DriverCommand::ExpireOffer { offer_id, now } => {
            let Some(mut o) = txn.get(OFFERS, offer_id.as_bytes())? else {
                return Ok(R::NotFound);
            };
            if o.status != OfferStatus::Open || o.expires_at > now {
                return Ok(R::Done);
            }
            o.status = OfferStatus::Expired;
            txn.put(OFFERS, offer_id.as_bytes(), &o)?;
            txn.delete(
                OFFERS_BY_DRIVER,
                format!("{}/{}", o.driver_id, o.id).as_bytes(),
            )?;
            bump(txn, &o.driver_id, |s| s.expired += 1)?;
            events::append(
                txn,
                &o.driver_id,
                "offer.expired",
                now,
                &serde_json::json!({"offer_id": o.id, "delivery_id": o.delivery_id}),
            )?;
            Ok(R::Offer(o))
        }
        DriverCommand::DeclineOffer {
            offer_id,
            driver_id,
            now,
        } => {
            let mut o = match own_open_offer(txn, &offer_id, &driver_id)? {
                Ok(o) => o,
                Err(r) => return Ok(r),
            };
            o.status = OfferStatus::Declined;
            txn.put(OFFERS, offer_id.as_bytes(), &o)?;
            txn.delete(
                OFFERS_BY_DRIVER,
                format!("{}/{}", o.driver_id, o.id).as_bytes(),
            )?;
            bump(txn, &driver_id, |s| s.declined += 1)?;
            events::append(
                txn,
                &driver_id,
                "offer.declined",
                now,
                &serde_json::json!({"offer_id": o.id, "delivery_id": o.delivery_id}),
            )?;
            Ok(R::Offer(o))
        }
        DriverCommand::AcceptOffer {
            offer_id,
            driver_id,
            now,
        } => {
            let mut o = match own_open_offer(txn, &offer_id, &driver_id)? {
                Ok(o) => o,
                Err(r) => return Ok(r),
            };
            if o.expires_at <= now {
                return Ok(R::Conflict("the offer expired".into()));
            }
            let Some(mut d) = txn.get(DELIVERIES, o.delivery_id.as_bytes())? else {
                return Ok(R::NotFound);
            };
            if d.status != DeliveryStatus::Searching || d.driver_id.is_some() {
                return Ok(R::Conflict("another driver has the delivery".into()));
            }
            let Some(mut drv) = txn.get(DRIVERS, driver_id.as_bytes())? else {
                return Ok(R::NotFound);
            };
            if drv.current_delivery.is_some() || drv.status != DriverStatus::Approved {
                return Ok(R::Conflict("you cannot take a delivery now".into()));
            }
            d.status = DeliveryStatus::Assigned;
            d.driver_id = Some(driver_id.clone());
            d.updated_at = now;
            close_offers(txn, &d, Some(&offer_id))?;
            o.status = OfferStatus::Accepted;
            txn.put(OFFERS, o.id.as_bytes(), &o)?;
            txn.delete(DISPATCHABLE, d.id.as_bytes())?;
            txn.put(DELIVERIES, d.id.as_bytes(), &d)?;
            drv.current_delivery = Some(d.id.clone());
            drv.updated_at = now;
            txn.put(DRIVERS, driver_id.as_bytes(), &drv)?;
            events::append_to_all(
                txn,
                &[&d.customer_id, &d.vendor_owner_id, &driver_id],
                "delivery.assigned",
                now,
                &serde_json::json!({"delivery_id": d.id, "order_id": d.order_id, "driver_id": driver_id}),
            )?;
            Ok(R::Delivery(d))
        }
        DriverCommand::Act {
            delivery_id,
            driver_id,
            action,
            proof_code,
            earnings_tx,
            now,
        } => {
            let Some(mut d) = txn.get(DELIVERIES, delivery_id.as_bytes())? else {
                return Ok(R::NotFound);
            };
            if d.driver_id.as_deref() != Some(driver_id.as_str()) {
                return Ok(R::Forbidden);
            }
            // Only an approved driver goes to fetch anything; one stood
            // down with the goods in hand still finishes (or fails) the
            // trip. Builds before command version 4 took any driver.
            if matches!(action, DeliveryAction::Arrive | DeliveryAction::Pickup)
                && crate::command_version::recorded_in(txn)? >= 4
                && txn
                    .get(DRIVERS, driver_id.as_bytes())?
                    .is_none_or(|drv| drv.status != DriverStatus::Approved)
            {
                return Ok(R::NotApproved);
            }
            let Some(order) = orders::order_in(txn, &d.order_id)? else {
                return Ok(R::NotFound);
            };
            use DeliveryStatus as S;
            let next = match (action, d.status) {
                (DeliveryAction::Arrive, S::Assigned) => S::Arrived,
                (DeliveryAction::Pickup, S::Assigned | S::Arrived) => S::PickedUp,
                (DeliveryAction::Complete, S::PickedUp) => S::Delivered,
                (DeliveryAction::Fail, S::Assigned | S::Arrived | S::PickedUp) => S::Failed,
                (_, from) => {
                    // As the API spells it (`picked_up`, not `pickedup`).
                    let from = serde_json::to_value(from)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default();
                    return Ok(R::Conflict(format!("the delivery is {from}")));
                }
            };
            // Goods can only leave a vendor that has them ready (rides have
            // no preparation).
            if next == S::PickedUp
                && order.kind == OrderKind::Delivery
                && order.status != OrderStatus::Ready
            {
                return Ok(R::Conflict("the order is not ready yet".into()));
            }
            if next == S::Delivered {
                let checked =
                    check_proof(txn, &d.id, proof_code.as_deref(), &order.proof_code, now)?;
                if let Some(refused) = checked {
                    return Ok(refused);
                }
            }
            // A failed delivery takes no more codes: its count goes.
            if next == S::Failed && crate::command_version::recorded_in(txn)? >= 3 {
                txn.delete(PROOF_ATTEMPTS, d.id.as_bytes())?;
            }
            let (order_status, kind) = match next {
                S::PickedUp => (Some(OrderStatus::PickedUp), "order.picked_up"),
                S::Delivered => (Some(OrderStatus::Delivered), "order.delivered"),
                S::Failed => (Some(OrderStatus::Failed), "order.failed"),
                _ => (None, "delivery.arrived"),
            };
            d.status = next;
            d.updated_at = now;
            txn.put(DELIVERIES, d.id.as_bytes(), &d)?;
            if let Some(st) = order_status {
                orders::set_status(txn, &order.id, st, kind, now)?;
            } else {
                events::append_to_all(
                    txn,
                    &[&d.customer_id, &d.vendor_owner_id],
                    kind,
                    now,
                    &serde_json::json!({"delivery_id": d.id, "order_id": d.order_id}),
                )?;
            }
            match next {
                S::Delivered => {
                    ledger::post(txn, &earnings(&d, &driver_id, earnings_tx, &order, now))?;
                    crate::ratings::delivered(txn, &driver_id, &order, now)?;
                    free_driver(txn, &driver_id, &d.id, now)?;
                    bump(txn, &driver_id, |s| s.completed += 1)?;
                }
                S::Failed => {
                    free_driver(txn, &driver_id, &d.id, now)?;
                    bump(txn, &driver_id, |s| s.failed += 1)?;
                }
                _ => {}
            }
            events::append(
                txn,
                &driver_id,
                &format!("delivery.{}", status_name(next)),
                now,
                &serde_json::json!({"delivery_id": d.id}),
            )?;
            Ok(R::Delivery(d))
        }
    }
}

pub fn status_name(s: DeliveryStatus) -> &'static str {
    match s {
        DeliveryStatus::Searching => "searching",
        DeliveryStatus::Assigned => "assigned",
        DeliveryStatus::Arrived => "arrived",
        DeliveryStatus::PickedUp => "picked_up",
        DeliveryStatus::Delivered => "delivered",
        DeliveryStatus::Failed => "failed",
        DeliveryStatus::Unassigned => "unassigned",
        DeliveryStatus::Cancelled => "cancelled",
    }
}

pub fn driver(read: &ReadTxn, id: &str) -> storage::Result<Option<Driver>> {
    read.get(DRIVERS, id.as_bytes())
}

pub fn delivery(read: &ReadTxn, id: &str) -> storage::Result<Option<Delivery>> {
    read.get(DELIVERIES, id.as_bytes())
}

pub fn delivery_of_order(read: &ReadTxn, order_id: &str) -> storage::Result<Option<String>> {
    read.get(BY_ORDER, order_id.as_bytes())
}

pub fn offer(read: &ReadTxn, id: &str) -> storage::Result<Option<Offer>> {
    read.get(OFFERS, id.as_bytes())
}

/// A driver's open offers.
pub fn open_offers(read: &ReadTxn, driver_id: &str) -> storage::Result<Vec<Offer>> {
    let prefix = format!("{driver_id}/");
    let rows = read.range(
        OFFERS_BY_DRIVER,
        storage::within(prefix.as_bytes().to_vec(), prefix.as_bytes()),
        100,
    )?;
    let mut out = Vec::new();
    for (_, id) in rows
        .into_iter()
        .take_while(|(k, _)| k.starts_with(prefix.as_bytes()))
    {
        if let Some(o) = read.get(OFFERS, id.as_bytes())? {
            if o.status == OfferStatus::Open {
                out.push(o);
            }
        }
    }
    Ok(out)
}

/// Deliveries waiting for a driver, oldest first (bounded).
pub fn dispatchable(read: &ReadTxn, limit: usize) -> storage::Result<Vec<Delivery>> {
    Ok(dispatchable_after(read, None, limit)?.0)
}

/// A page of [`dispatchable`] after key `after`, and the key to continue
/// from (`None`: that was the last page).
pub fn dispatchable_after(
    read: &ReadTxn,
    after: Option<Vec<u8>>,
    limit: usize,
) -> storage::Result<(Vec<Delivery>, Option<Vec<u8>>)> {
    let from = match after {
        Some(k) => std::ops::Bound::Excluded(k),
        None => std::ops::Bound::Unbounded,
    };
    let rows = read.range(DISPATCHABLE, (from, std::ops::Bound::Unbounded), limit)?;
    let next = (rows.len() >= limit)
        .then(|| rows.last().map(|(k, _)| k.clone()))
        .flatten();
    let mut out = Vec::with_capacity(rows.len());
    for (k, _) in rows {
        if let Some(d) = read.get(DELIVERIES, &k)? {
            out.push(d);
        }
    }
    Ok((out, next))
}

/// Drivers whose replicated position may lie within `radius_km` of `at`
/// (read through the grid index: a superset, callers measure).
pub fn drivers_near(read: &ReadTxn, at: &Location, radius_km: f64) -> storage::Result<Vec<Driver>> {
    let mut out = Vec::new();
    for id in crate::driver_grid::near(read, at, radius_km)? {
        if let Some(d) = read.get(DRIVERS, id.as_bytes())? {
            out.push(d);
        }
    }
    Ok(out)
}

/// Whether the cell has any approved driver (surge pricing falls back to
/// the configured supply in a cell without drivers).
pub fn any_approved(read: &ReadTxn) -> storage::Result<bool> {
    let mut from = Vec::new();
    loop {
        let page = read.range(DRIVERS, from.clone().., 256)?;
        if page.iter().any(|(_, d)| d.status == DriverStatus::Approved) {
            return Ok(true);
        }
        match page.last() {
            Some((k, _)) if page.len() == 256 => {
                from = k.clone();
                from.push(0);
            }
            _ => return Ok(false),
        }
    }
}

/// An approved, online, idle driver with no position.
#[cfg(test)]
pub(crate) fn sample_driver(id: &str, vehicle: Vehicle, capacity: u32) -> Driver {
    Driver {
        id: id.into(),
        vehicle,
        capacity,
        qualifications: Vec::new(),
        license_plate: None,
        status: DriverStatus::Approved,
        online: true,
        location: None,
        location_at: 0,
        current_delivery: None,
        standing: Standing::default(),
        updated_at: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command_version;

    const NOW: i64 = 1_800_000_000_000;

    fn round(txn: &WriteTxn, delivery: &str, drivers: &[&str], now: i64) -> DriverResponse {
        let offers = drivers
            .iter()
            .map(|d| (format!("nyc.ofr_{delivery}_{d}"), d.to_string()))
            .collect();
        apply(
            txn,
            DriverCommand::CreateOffers {
                delivery_id: delivery.into(),
                offers,
                expires_at: now + 30_000,
                now,
            },
        )
        .unwrap()
    }

    fn offered(r: DriverResponse) -> Vec<String> {
        match r {
            DriverResponse::Offers(o) => o.into_iter().map(|o| o.driver_id).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn from_version_3_wrong_proof_codes_lock_a_delivery_for_a_while() {
        for version in [2, 3] {
            let (_dir, store) = command_version::store_at(version);
            let txn = store.write().unwrap();
            let order = orders::sample_order("nyc.ord_p", None, NOW);
            orders::store(&txn, &order).unwrap();
            let mut d = create_delivery(&txn, &order, NOW).unwrap();
            d.status = DeliveryStatus::PickedUp;
            d.driver_id = Some("d1".into());
            txn.put(DELIVERIES, d.id.as_bytes(), &d).unwrap();
            let complete = |code: &str, now: i64| {
                apply(
                    &txn,
                    DriverCommand::Act {
                        delivery_id: d.id.clone(),
                        driver_id: "d1".into(),
                        action: DeliveryAction::Complete,
                        proof_code: Some(code.into()),
                        earnings_tx: format!("nyc.ltx_{now}"),
                        now,
                    },
                )
                .unwrap()
            };
            for i in 0..MAX_PROOF_ATTEMPTS as i64 {
                let r = complete("0000", NOW + i);
                assert!(matches!(r, DriverResponse::BadProof), "{r:?}");
            }
            // The right code, once too many wrong ones came first.
            let r = complete(&order.proof_code, NOW + 10);
            if version < 3 {
                assert!(matches!(r, DriverResponse::Delivery(_)), "{r:?}");
                // Nothing an older build would not write.
                assert!(txn.get(PROOF_ATTEMPTS, d.id.as_bytes()).unwrap().is_none());
                continue;
            }
            assert!(
                matches!(r, DriverResponse::ProofLocked { until } if until == NOW + PROOF_WINDOW_MS),
                "{r:?}"
            );
            // After the window it is taken, and the count goes.
            let r = complete(&order.proof_code, NOW + PROOF_WINDOW_MS);
            assert!(
                matches!(&r, DriverResponse::Delivery(d) if d.status == DeliveryStatus::Delivered),
                "{r:?}"
            );
            assert!(txn.get(PROOF_ATTEMPTS, d.id.as_bytes()).unwrap().is_none());
        }
    }

    #[test]
    fn from_version_3_a_delivery_has_one_live_round_and_a_driver_one_live_offer() {
        for version in [2, 3] {
            let (_dir, store) = command_version::store_at(version);
            let txn = store.write().unwrap();
            let a = delivery_for(&txn, "nyc.ord_a");
            let b = delivery_for(&txn, "nyc.ord_b");
            for id in ["d1", "d2", "d3"] {
                let d = sample_driver(id, Vehicle::Car, 1);
                txn.put(DRIVERS, id.as_bytes(), &d).unwrap();
            }
            assert_eq!(offered(round(&txn, &a, &["d1"], NOW)), ["d1"]);
            // A second round for `a` while d1's offer stands, and a round
            // for `b` naming d1 (who holds it) and d3.
            let second = round(&txn, &a, &["d2"], NOW + 1_000);
            let for_b = offered(round(&txn, &b, &["d1", "d3"], NOW + 1_000));
            if version >= 3 {
                assert!(matches!(second, DriverResponse::Conflict(_)), "{second:?}");
                // The refused round wrote nothing.
                let d2 = txn.range(OFFERS_BY_DRIVER, b"d2/".to_vec()..b"d20".to_vec(), 10);
                assert!(d2.unwrap().is_empty());
                let stored = txn.get(DELIVERIES, a.as_bytes()).unwrap().unwrap();
                assert_eq!(stored.offered_to, ["d1"]);
                assert_eq!(for_b, ["d3"]);
                // Once the first round has run out, the next goes out.
                assert_eq!(offered(round(&txn, &a, &["d2"], NOW + 30_000)), ["d2"]);
            } else {
                // As builds before version 3 applied it, on every node.
                assert_eq!(offered(second), ["d2"]);
                assert_eq!(for_b, ["d1", "d3"]);
            }
        }
    }

    /// The delivery of a new on-demand sample order, opened at `NOW`.
    fn delivery_for(txn: &WriteTxn, order_id: &str) -> String {
        let order = orders::sample_order(order_id, None, NOW);
        create_delivery(txn, &order, NOW).unwrap().id
    }

    fn driver(txn: &WriteTxn, id: &str) -> Driver {
        txn.get(DRIVERS, id.as_bytes()).unwrap().unwrap()
    }

    fn delivery(txn: &WriteTxn, id: &str) -> Delivery {
        txn.get(DELIVERIES, id.as_bytes()).unwrap().unwrap()
    }

    fn offer_status(txn: &WriteTxn, delivery: &str, driver: &str) -> OfferStatus {
        let id = format!("nyc.ofr_{delivery}_{driver}");
        txn.get(OFFERS, id.as_bytes()).unwrap().unwrap().status
    }

    #[test]
    fn from_version_4_a_widened_profile_goes_back_to_review() {
        for version in [3, 4] {
            let (_dir, store) = command_version::store_at(version);
            let txn = store.write().unwrap();
            let a = delivery_for(&txn, "nyc.ord_a");
            let d1 = sample_driver("d1", Vehicle::Car, 4);
            txn.put(DRIVERS, b"d1", &d1).unwrap();
            assert_eq!(offered(round(&txn, &a, &["d1"], NOW)), ["d1"]);
            let put = |vehicle, capacity, qualifications: &[&str]| {
                apply(
                    &txn,
                    DriverCommand::PutProfile {
                        driver_id: "d1".into(),
                        profile: Profile {
                            vehicle,
                            capacity,
                            qualifications: qualifications.iter().map(|q| q.to_string()).collect(),
                            license_plate: None,
                        },
                        now: NOW + 1,
                    },
                )
                .unwrap()
            };
            // Fewer seats asks for nothing new.
            put(Vehicle::Car, 2, &[]);
            assert_eq!(driver(&txn, "d1").status, DriverStatus::Approved);
            put(Vehicle::Car, 2, &["rx"]);
            let d = driver(&txn, "d1");
            if version < 4 {
                assert_eq!(d.status, DriverStatus::Approved);
                assert_eq!(offer_status(&txn, &a, "d1"), OfferStatus::Open);
                continue;
            }
            assert_eq!(d.status, DriverStatus::Pending);
            assert!(!d.online);
            assert_eq!(offer_status(&txn, &a, "d1"), OfferStatus::Withdrawn);
            assert!(!has_live_offer(&txn, "d1", None, NOW + 2).unwrap());
            // Pending already: another change writes no second review.
            put(Vehicle::Van, 2, &["rx"]);
            assert_eq!(driver(&txn, "d1").status, DriverStatus::Pending);
        }
    }

    #[test]
    fn from_version_4_a_suspended_driver_hands_back_what_they_were_to_fetch() {
        for version in [3, 4] {
            let (_dir, store) = command_version::store_at(version);
            let txn = store.write().unwrap();
            let mut d1 = sample_driver("d1", Vehicle::Car, 1);
            let fetch = |order: &str, status| {
                let mut d =
                    create_delivery(&txn, &orders::sample_order(order, None, NOW), NOW).unwrap();
                d.status = status;
                d.driver_id = Some("d1".into());
                txn.put(DELIVERIES, d.id.as_bytes(), &d).unwrap();
                txn.delete(DISPATCHABLE, d.id.as_bytes()).unwrap();
                d.id
            };
            let on_way = fetch("nyc.ord_a", DeliveryStatus::Arrived);
            let in_hand = fetch("nyc.ord_b", DeliveryStatus::PickedUp);
            let b = delivery_for(&txn, "nyc.ord_c");
            d1.current_delivery = Some(on_way.clone());
            txn.put(DRIVERS, b"d1", &d1).unwrap();
            // An offer made while they were free.
            let mut free = d1.clone();
            free.current_delivery = None;
            txn.put(DRIVERS, b"d1", &free).unwrap();
            assert_eq!(offered(round(&txn, &b, &["d1"], NOW)), ["d1"]);
            txn.put(DRIVERS, b"d1", &d1).unwrap();
            let r = apply(
                &txn,
                DriverCommand::SetStatus {
                    driver_id: "d1".into(),
                    status: DriverStatus::Suspended,
                    now: NOW + 1,
                },
            )
            .unwrap();
            assert!(matches!(r, DriverResponse::Driver(_)), "{r:?}");
            let arrive = |id: &str| {
                apply(
                    &txn,
                    DriverCommand::Act {
                        delivery_id: id.into(),
                        driver_id: "d1".into(),
                        action: DeliveryAction::Arrive,
                        proof_code: None,
                        earnings_tx: "nyc.ltx_x".into(),
                        now: NOW + 2,
                    },
                )
                .unwrap()
            };
            // What they hold is theirs to finish either way.
            assert_eq!(delivery(&txn, &in_hand).status, DeliveryStatus::PickedUp);
            if version < 4 {
                assert_eq!(delivery(&txn, &on_way).driver_id.as_deref(), Some("d1"));
                assert_eq!(offer_status(&txn, &b, "d1"), OfferStatus::Open);
                continue;
            }
            let back = delivery(&txn, &on_way);
            assert_eq!(back.status, DeliveryStatus::Searching);
            assert_eq!(back.driver_id, None);
            assert!(txn.get(DISPATCHABLE, on_way.as_bytes()).unwrap().is_some());
            assert_eq!(driver(&txn, "d1").current_delivery, None);
            assert_eq!(offer_status(&txn, &b, "d1"), OfferStatus::Withdrawn);
            // Nor can they go and fetch something still booked to them.
            let booked = fetch("nyc.ord_d", DeliveryStatus::Assigned);
            assert!(matches!(arrive(&booked), DriverResponse::NotApproved));
        }
    }

    #[test]
    fn from_version_4_a_refused_round_does_not_restart_the_count() {
        for version in [3, 4] {
            let (_dir, store) = command_version::store_at(version);
            let txn = store.write().unwrap();
            let mut d =
                create_delivery(&txn, &orders::sample_order("nyc.ord_a", None, NOW), NOW).unwrap();
            d.empty_rounds = 5;
            txn.put(DELIVERIES, d.id.as_bytes(), &d).unwrap();
            let mut away = sample_driver("d1", Vehicle::Car, 1);
            away.online = false;
            txn.put(DRIVERS, b"d1", &away).unwrap();
            assert!(offered(round(&txn, &d.id, &["d1"], NOW)).is_empty());
            let rounds = delivery(&txn, &d.id).empty_rounds;
            assert_eq!(rounds, if version < 4 { 0 } else { 5 });
        }
    }

    #[test]
    fn from_version_4_going_offline_withdraws_open_offers() {
        for version in [3, 4] {
            let (_dir, store) = command_version::store_at(version);
            let txn = store.write().unwrap();
            let a = delivery_for(&txn, "nyc.ord_a");
            txn.put(DRIVERS, b"d1", &sample_driver("d1", Vehicle::Car, 1))
                .unwrap();
            assert_eq!(offered(round(&txn, &a, &["d1"], NOW)), ["d1"]);
            let r = apply(
                &txn,
                DriverCommand::SetOnline {
                    driver_id: "d1".into(),
                    online: false,
                    now: NOW + 1,
                },
            )
            .unwrap();
            assert!(matches!(r, DriverResponse::Driver(_)), "{r:?}");
            let expected = if version < 4 {
                OfferStatus::Open
            } else {
                OfferStatus::Withdrawn
            };
            assert_eq!(offer_status(&txn, &a, "d1"), expected);
            // offer.created, then (version 4) offer.withdrawn.
            let told = events::last_seq_in(&txn, "d1").unwrap();
            assert_eq!(told, if version < 4 { 1 } else { 2 });
        }
    }

    #[test]
    fn from_version_4_offers_are_kept_a_week() {
        for version in [3, 4] {
            let (_dir, store) = command_version::store_at(version);
            let txn = store.write().unwrap();
            for id in ["d1", "d2"] {
                txn.put(DRIVERS, id.as_bytes(), &sample_driver(id, Vehicle::Car, 1))
                    .unwrap();
            }
            let a = delivery_for(&txn, "nyc.ord_a");
            let made_at = |t: i64| format!("nyc.ofr_{}", ulid::Ulid::from_parts(t as u64, 1));
            let old = made_at(NOW);
            let r = apply(
                &txn,
                DriverCommand::CreateOffers {
                    delivery_id: a.clone(),
                    offers: vec![(old.clone(), "d1".into())],
                    expires_at: NOW + 30_000,
                    now: NOW,
                },
            )
            .unwrap();
            assert_eq!(offered(r), ["d1"]);
            // A week and a bit later, a round whose first offer id ends
            // in 0 sweeps.
            let later = NOW + OFFERS_KEPT_MS + 60_000;
            let b = create_delivery(&txn, &orders::sample_order("nyc.ord_b", None, later), later)
                .unwrap()
                .id;
            let id = made_at(later);
            let sweeping = format!("{}0", &id[..id.len() - 1]);
            let r = apply(
                &txn,
                DriverCommand::CreateOffers {
                    delivery_id: b,
                    offers: vec![(sweeping.clone(), "d2".into())],
                    expires_at: later + 30_000,
                    now: later,
                },
            )
            .unwrap();
            assert_eq!(offered(r), ["d2"]);
            let kept = |id: &str| txn.get(OFFERS, id.as_bytes()).unwrap().is_some();
            assert!(kept(&sweeping));
            assert_eq!(kept(&old), version < 4, "version {version}");
        }
    }

    #[test]
    fn from_version_4_an_unassigned_delivery_is_searched_for_again() {
        for version in [3, 4] {
            let (_dir, store) = command_version::store_at(version);
            let txn = store.write().unwrap();
            let a = delivery_for(&txn, "nyc.ord_a");
            let give_up = |now| {
                apply(
                    &txn,
                    DriverCommand::NoCandidates {
                        delivery_id: a.clone(),
                        give_up: true,
                        now,
                    },
                )
                .unwrap()
            };
            let listed = |id: &str| txn.get(DISPATCHABLE, id.as_bytes()).unwrap().is_some();
            let retry_row = |d: &Delivery| {
                let k = retry_key(d.dispatch_after, &d.id);
                txn.get(RETRIES, &k).unwrap().is_some()
            };
            give_up(NOW + 10_000);
            let d = delivery(&txn, &a);
            assert_eq!(d.status, DeliveryStatus::Unassigned);
            // Off the dispatcher's every-round list either way.
            assert!(!listed(&a));
            assert_eq!(retry_row(&d), version >= 4);
            txn.put(DRIVERS, b"d1", &sample_driver("d1", Vehicle::Car, 1))
                .unwrap();
            let later = NOW + 10_000 + UNASSIGNED_RETRY_EVERY_MS;
            let r = round(&txn, &a, &["d1"], later);
            if version < 4 {
                assert!(matches!(r, DriverResponse::Conflict(_)), "{r:?}");
                continue;
            }
            assert_eq!(d.dispatch_after, later);
            assert_eq!(offered(r), ["d1"]);
            let d = delivery(&txn, &a);
            assert_eq!(d.status, DeliveryStatus::Searching);
            assert!(listed(&a) && !retry_row(&d));
            // Nobody again, long after it was due: given up for good.
            give_up(NOW + UNASSIGNED_RETRY_FOR_MS + 1);
            let d = delivery(&txn, &a);
            assert_eq!(d.status, DeliveryStatus::Unassigned);
            assert!(!listed(&a) && !retry_row(&d));
            // A second delivery given up, then cancelled: no retry left.
            let order = orders::sample_order("nyc.ord_b", None, NOW);
            let b = create_delivery(&txn, &order, NOW).unwrap().id;
            let r = apply(
                &txn,
                DriverCommand::NoCandidates {
                    delivery_id: b.clone(),
                    give_up: true,
                    now: NOW + 1,
                },
            )
            .unwrap();
            assert!(matches!(r, DriverResponse::Delivery(_)), "{r:?}");
            let given_up = delivery(&txn, &b);
            assert!(retry_row(&given_up));
            cancel_for_order(&txn, &order.id, NOW + 2).unwrap();
            assert!(!retry_row(&given_up));
        }
    }

    #[test]
    fn retries_come_due_at_their_time() {
        let (_dir, store) = command_version::store_at(4);
        let txn = store.write().unwrap();
        let a = delivery_for(&txn, "nyc.ord_a");
        let cmd = DriverCommand::NoCandidates {
            delivery_id: a.clone(),
            give_up: true,
            now: NOW,
        };
        apply(&txn, cmd).unwrap();
        txn.commit(storage::Durability::Immediate).unwrap();
        let read = store.read().unwrap();
        let due = NOW + UNASSIGNED_RETRY_EVERY_MS;
        assert!(retries_due(&read, due - 1, 10).unwrap().is_empty());
        let ids: Vec<String> = retries_due(&read, due, 10)
            .unwrap()
            .into_iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(ids, [a]);
    }
}
