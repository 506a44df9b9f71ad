//! Carts, orders (goods and rides) and their lifecycle, as replicated
//! state; quotes are sealed tokens (`quote_token`), not rows.
//!
//! Checkout is one command: idempotency, prices and stock are checked and
//! stock is reserved, the order stored and the charge posted to the ledger
//! in the same transaction — all or nothing, in log order, so concurrent
//! checkouts of the last unit admit exactly one. The quote was opened and
//! checked by the node that took the request; the order carries its price.

use serde::{Deserialize, Serialize};
use storage::{ReadTxn, Table, WriteTxn};

use crate::{
    catalog::{self, Location, Money},
    drivers, events,
    ledger::{self, LedgerTx, Posting},
    routes,
};

const CARTS: Table<Cart> = Table::new("carts");
/// Quotes that backed an order (quote id → order id): a quote buys one
/// order. Its id begins with its ULID, so rows sort by when it was made and
/// those past any quote's lifetime are cut off as one range.
const USED_QUOTES: Table<String> = Table::new("used_quotes");
const ORDERS: Table<Order> = Table::new("orders");
/// `<customer>/<order>` and `<vendor owner>/<order>` → order id.
const BY_CUSTOMER: Table<String> = Table::new("orders_by_customer");
const BY_OWNER: Table<String> = Table::new("orders_by_vendor_owner");
/// `<customer>/<idempotency key>` → order id.
const IDEMPOTENCY: Table<String> = Table::new("order_idempotency");
const COUNTERS: Table<i64> = Table::new("order_counters");
const OPEN_ORDERS: &[u8] = b"open";

/// How long a quote locks its price.
pub const QUOTE_TTL_MS: i64 = 5 * 60 * 1000;
/// Used-quote rows are kept this long past a quote's lifetime, so that a
/// node whose clock runs ahead cannot drop the row of a quote another node
/// still takes.
const USED_QUOTE_GRACE_MS: i64 = 60 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderKind {
    Delivery,
    Ride,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    OnDemand,
    Scheduled,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quote {
    pub id: String,
    pub customer_id: String,
    pub vendor_id: String,
    pub kind: OrderKind,
    pub mode: Mode,
    pub pickup: Location,
    pub dropoff: Location,
    pub window_start: Option<i64>,
    pub fee: Money,
    /// Surge multiplier in thousandths (1000 = 1.0).
    pub surge_milli: u32,
    pub eta_minutes: u32,
    pub expires_at: i64,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartItem {
    pub product_id: String,
    pub quantity: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cart {
    pub vendor_id: String,
    pub items: Vec<CartItem>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Placed,
    Accepted,
    Ready,
    PickedUp,
    Delivered,
    Rejected,
    Cancelled,
    Failed,
}

impl OrderStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Delivered | Self::Rejected | Self::Cancelled | Self::Failed
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderItem {
    pub product_id: String,
    pub name: String,
    pub quantity: u32,
    /// Minor units, as priced at checkout.
    pub unit_price: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Order {
    pub id: String,
    pub kind: OrderKind,
    pub customer_id: String,
    pub vendor_id: String,
    /// Filled in by apply from the vendor record.
    pub vendor_owner_id: String,
    pub status: OrderStatus,
    pub items: Vec<OrderItem>,
    pub currency: String,
    pub subtotal: i64,
    pub delivery_fee: i64,
    pub tip: i64,
    pub platform_fee: i64,
    pub total: i64,
    pub pickup: Location,
    pub dropoff: Location,
    pub dropoff_address: String,
    pub notes: Option<String>,
    pub mode: Mode,
    pub window_start: Option<i64>,
    pub eta_minutes: u32,
    pub quote_id: String,
    pub payment_ref: String,
    pub charge_tx: String,
    pub idempotency_key: String,
    pub proof_code: String,
    pub clear_cart: bool,
    pub created_at: i64,
    pub updated_at: i64,
    pub history: Vec<(OrderStatus, i64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Accept,
    Reject,
    Ready,
    Cancel,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderActor {
    pub account_id: String,
    pub is_ops: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum OrderCommand {
    /// Never proposed since quotes became sealed tokens; kept so that the
    /// variants after it keep their wire tags in logs written before.
    /// Applied, it changes nothing.
    CreateQuote {
        quote: Quote,
    },
    PutCart {
        customer_id: String,
        cart: Cart,
    },
    Place {
        order: Box<Order>,
        now: i64,
    },
    Transition {
        order_id: String,
        actor: OrderActor,
        action: Action,
        now: i64,
        refund_tx: String,
    },
    /// The customer rates a delivered order (once).
    Rate {
        customer_id: String,
        rating: Box<crate::ratings::Rating>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OrderResponse {
    Quote(Quote),
    Cart(Cart),
    Placed(Order),
    /// The idempotency key was used before: the first order.
    Existing(Order),
    /// The quote already backed another order.
    QuoteUsed,
    OutOfStock {
        product_id: String,
    },
    /// A price, product or vendor changed since the request was priced.
    Stale(String),
    Order(Order),
    NotFound,
    Forbidden,
    IllegalTransition {
        from: OrderStatus,
    },
    /// The vendor paused its orders.
    VendorPaused,
    Rated(Box<crate::ratings::Rating>),
    /// Only a delivered order is rated.
    NotDelivered,
    AlreadyRated,
    /// Outside the vendor's opening hours at the time the order is for;
    /// when it next opens (Unix ms), if it does. (Last, like every new
    /// variant: answers cross between nodes of different builds during an
    /// upgrade.)
    VendorClosed {
        opens_at: Option<i64>,
    },
}

/// Tell the customer and the vendor about an order change.
fn notify(txn: &WriteTxn, order: &Order, kind: &str, at: i64) -> storage::Result<()> {
    let data = serde_json::json!({"order_id": order.id, "status": order.status, "vendor_id": order.vendor_id});
    events::append_to_all(
        txn,
        &[&order.customer_id, &order.vendor_owner_id],
        kind,
        at,
        &data,
    )
}

fn idem_key(customer: &str, key: &str) -> Vec<u8> {
    format!("{customer}/{key}").into_bytes()
}

fn bump_open(txn: &WriteTxn, delta: i64) -> storage::Result<()> {
    let n = txn.get(COUNTERS, OPEN_ORDERS)?.unwrap_or(0) + delta;
    txn.put(COUNTERS, OPEN_ORDERS, &n.max(0))
}

fn charge(order: &Order, at: i64) -> LedgerTx {
    let vendor_share = order.subtotal - order.platform_fee;
    let mut postings = vec![Posting {
        account: ledger::CLEARING.into(),
        amount: -order.total,
    }];
    for (account, amount) in [
        (ledger::vendor_account(&order.vendor_id), vendor_share),
        (ledger::PLATFORM_FEES.to_string(), order.platform_fee),
        (ledger::DELIVERY_FEES.to_string(), order.delivery_fee),
        (ledger::TIPS_PAYABLE.to_string(), order.tip),
    ] {
        if amount != 0 {
            postings.push(Posting { account, amount });
        }
    }
    LedgerTx {
        id: order.charge_tx.clone(),
        order_id: order.id.clone(),
        kind: "charge".into(),
        currency: order.currency.clone(),
        postings,
        at,
    }
}

/// Marks the quote used by `order_id`. About one checkout in 32 also drops
/// the rows of quotes that expired long ago: those whose order id ends in
/// `0` (the last of a ULID's 26 characters is one of 32, at random), so
/// every node prunes in the same checkouts.
fn spend_quote(txn: &WriteTxn, quote_id: &str, order_id: &str, now: i64) -> storage::Result<()> {
    txn.put(USED_QUOTES, quote_id.as_bytes(), &order_id.to_string())?;
    let Some((cell, _)) = quote_id.split_once("quo_") else {
        return Ok(());
    };
    if order_id.ends_with('0') {
        let horizon = now - QUOTE_TTL_MS - USED_QUOTE_GRACE_MS;
        let first_kept = ulid::Ulid::from_parts(horizon.max(0) as u64, 0);
        let start = format!("{cell}quo_").into_bytes();
        let end = format!("{cell}quo_{first_kept}").into_bytes();
        txn.delete_range(USED_QUOTES, start..end)?;
    }
    Ok(())
}

/// Orders whose payments do not match their outcome: a kept order's
/// transactions took its total from the clearing account, a rejected,
/// cancelled or failed one's gave it all back. Catches a charge or a refund that was
/// never posted, which balanced postings alone cannot show. Fills
/// `check.order_mismatches` and clears `ok` if there are any.
pub fn reconcile(read: &ReadTxn, check: &mut ledger::LedgerCheck) -> storage::Result<()> {
    let mut cursor: Vec<u8> = Vec::new();
    loop {
        let page = read.range(ORDERS, cursor.clone().., 1000)?;
        let Some((last, _)) = page.last() else { break };
        cursor = last.clone();
        cursor.push(0);
        for (_, o) in page {
            let expected = match o.status {
                // Refunded in full.
                OrderStatus::Rejected | OrderStatus::Cancelled | OrderStatus::Failed => 0,
                _ => -(o.total as i128),
            };
            let moved = check.clearing_by_order.get(&o.id).copied().unwrap_or(0);
            if moved != expected {
                check.order_mismatches.push(o.id.clone());
            }
        }
    }
    if !check.order_mismatches.is_empty() {
        check.ok = false;
    }
    Ok(())
}

/// Deterministic: reads only the command and the transaction.
pub fn apply(txn: &WriteTxn, cmd: OrderCommand) -> storage::Result<OrderResponse> {
    use OrderResponse as R;
    match cmd {
        OrderCommand::CreateQuote { quote } => Ok(R::Quote(quote)),
        OrderCommand::PutCart { customer_id, cart } => {
            if cart.items.is_empty() {
                txn.delete(CARTS, customer_id.as_bytes())?;
            } else {
                txn.put(CARTS, customer_id.as_bytes(), &cart)?;
            }
            Ok(R::Cart(cart))
        }
        OrderCommand::Place { mut order, now } => {
            let ik = idem_key(&order.customer_id, &order.idempotency_key);
            if let Some(existing) = txn.get(IDEMPOTENCY, &ik)? {
                if let Some(o) = txn.get(ORDERS, existing.as_bytes())? {
                    return Ok(R::Existing(o));
                }
            }
            if txn.get(USED_QUOTES, order.quote_id.as_bytes())?.is_some() {
                return Ok(R::QuoteUsed);
            }
            let Some(vendor) = txn.get(catalog::VENDORS_TABLE, order.vendor_id.as_bytes())? else {
                return Ok(R::Stale("the vendor no longer exists".into()));
            };
            if vendor.status == catalog::VendorStatus::Paused {
                return Ok(R::VendorPaused);
            }
            // On demand: open now; scheduled: open when the window starts.
            let wanted_at = order.window_start.unwrap_or(now);
            if let Some(h) = catalog::hours_in(txn, &order.vendor_id)? {
                if !h.is_open_at(wanted_at) {
                    return Ok(R::VendorClosed {
                        opens_at: h.next_change_after(wanted_at),
                    });
                }
            }
            // Check every line before changing anything.
            let mut products = Vec::with_capacity(order.items.len());
            for item in &order.items {
                let Some(p) = txn.get(catalog::PRODUCTS_TABLE, item.product_id.as_bytes())? else {
                    return Ok(R::Stale(format!("product {} is gone", item.product_id)));
                };
                if p.vendor_id != order.vendor_id || p.price.amount != item.unit_price {
                    return Ok(R::Stale(format!(
                        "product {} changed; quote again",
                        item.product_id
                    )));
                }
                if p.stock.is_some_and(|s| s < item.quantity as i64) {
                    return Ok(R::OutOfStock {
                        product_id: item.product_id.clone(),
                    });
                }
                products.push(p);
            }
            order.vendor_owner_id = vendor.owner_id;
            order.status = OrderStatus::Placed;
            order.history = vec![(OrderStatus::Placed, now)];
            let charge = charge(&order, now);
            if !charge.balances() {
                return Ok(R::Stale("the charge does not balance".into()));
            }
            // Every check passed: nothing below refuses, so a refused
            // checkout has written nothing.
            for (mut p, item) in products.into_iter().zip(&order.items) {
                if let Some(s) = p.stock {
                    p.stock = Some(s - item.quantity as i64);
                    txn.put(catalog::PRODUCTS_TABLE, p.id.as_bytes(), &p)?;
                }
            }
            spend_quote(txn, &order.quote_id, &order.id, now)?;
            ledger::post(txn, &charge)?;
            txn.put(ORDERS, order.id.as_bytes(), &order)?;
            txn.put(
                BY_CUSTOMER,
                format!("{}/{}", order.customer_id, order.id).as_bytes(),
                &order.id,
            )?;
            txn.put(
                BY_OWNER,
                format!("{}/{}", order.vendor_owner_id, order.id).as_bytes(),
                &order.id,
            )?;
            txn.put(IDEMPOTENCY, &ik, &order.id)?;
            if order.clear_cart {
                txn.delete(CARTS, order.customer_id.as_bytes())?;
            }
            bump_open(txn, 1)?;
            notify(txn, &order, "order.placed", now)?;
            // A ride needs its driver at once.
            if order.kind == OrderKind::Ride {
                drivers::create_delivery(txn, &order, now)?;
            }
            Ok(R::Placed(*order))
        }
        OrderCommand::Transition {
            order_id,
            actor,
            action,
            now,
            refund_tx,
        } => {
            let Some(mut order) = txn.get(ORDERS, order_id.as_bytes())? else {
                return Ok(R::NotFound);
            };
            let is_vendor = actor.account_id == order.vendor_owner_id;
            let is_customer = actor.account_id == order.customer_id;
            let allowed = match action {
                Action::Accept | Action::Reject | Action::Ready => is_vendor,
                Action::Cancel => is_customer || actor.is_ops,
            };
            if !allowed {
                return Ok(R::Forbidden);
            }
            use OrderStatus as S;
            let next = match (action, order.status) {
                (Action::Accept, S::Placed) => S::Accepted,
                (Action::Reject, S::Placed) => S::Rejected,
                (Action::Ready, S::Accepted) => S::Ready,
                (Action::Cancel, S::Placed | S::Accepted | S::Ready) => S::Cancelled,
                (_, from) => return Ok(R::IllegalTransition { from }),
            };
            if matches!(next, S::Rejected | S::Cancelled) {
                // Refund exactly what was charged and put the stock back.
                if let Some(charged) = ledger::transaction(txn, &order.charge_tx)? {
                    let kind = if next == S::Rejected {
                        "refund_rejected"
                    } else {
                        "refund_cancelled"
                    };
                    ledger::post(txn, &ledger::reversal(&charged, refund_tx, kind, now))?;
                }
                for item in &order.items {
                    if let Some(mut p) =
                        txn.get(catalog::PRODUCTS_TABLE, item.product_id.as_bytes())?
                    {
                        if let Some(s) = p.stock {
                            p.stock = Some(s + item.quantity as i64);
                            txn.put(catalog::PRODUCTS_TABLE, p.id.as_bytes(), &p)?;
                        }
                    }
                }
                bump_open(txn, -1)?;
                drivers::cancel_for_order(txn, &order.id, now)?;
            }
            if next == S::Accepted && order.kind == OrderKind::Delivery {
                let d = drivers::create_delivery(txn, &order, now)?;
                // Scheduled goods go to the route marketplace.
                if let (Mode::Scheduled, Some(window_start)) = (order.mode, order.window_start) {
                    drivers::hold_for_route(txn, &d.id)?;
                    let needs = crate::dispatch::required_qualifications_in(txn, &order.vendor_id)?;
                    routes::add_scheduled(txn, &d, window_start, needs, now)?;
                }
            }
            order.status = next;
            order.updated_at = now;
            order.history.push((next, now));
            txn.put(ORDERS, order.id.as_bytes(), &order)?;
            let kind = match next {
                S::Accepted => "order.accepted",
                S::Ready => "order.ready",
                S::Rejected => "order.rejected",
                _ => "order.cancelled",
            };
            notify(txn, &order, kind, now)?;
            Ok(R::Order(order))
        }
        OrderCommand::Rate {
            customer_id,
            mut rating,
        } => {
            let Some(order) = txn.get(ORDERS, rating.order_id.as_bytes())? else {
                return Ok(R::NotFound);
            };
            if order.customer_id != customer_id {
                return Ok(R::Forbidden);
            }
            if order.status != OrderStatus::Delivered {
                return Ok(R::NotDelivered);
            }
            if crate::ratings::rating_in(txn, &order.id)?.is_some() {
                return Ok(R::AlreadyRated);
            }
            // Whoever delivered it, as this state knows it (a ride's
            // driver too); stars for a driver an order never had are
            // dropped.
            rating.vendor_id = order.vendor_id.clone();
            rating.driver_id = drivers::driver_of_order_in(txn, &order.id)?;
            if rating.driver_id.is_none() {
                rating.driver = None;
            }
            crate::ratings::record(txn, &rating)?;
            Ok(R::Rated(rating))
        }
    }
}

/// The order, inside a write transaction (for other modules' apply).
pub fn order_in(txn: &WriteTxn, id: &str) -> storage::Result<Option<Order>> {
    txn.get(ORDERS, id.as_bytes())
}

/// Moves an order along as its delivery progresses (`picked_up`,
/// `delivered`, `failed`); a failed order is refunded. Part of the
/// delivery's apply.
pub fn set_status(
    txn: &WriteTxn,
    order_id: &str,
    status: OrderStatus,
    event: &str,
    now: i64,
) -> storage::Result<()> {
    let Some(mut order) = txn.get(ORDERS, order_id.as_bytes())? else {
        return Ok(());
    };
    if order.status.is_terminal() {
        return Ok(());
    }
    if status == OrderStatus::Failed {
        if let Some(charged) = ledger::transaction(txn, &order.charge_tx)? {
            let id = format!("{}-refund", order.charge_tx);
            ledger::post(txn, &ledger::reversal(&charged, id, "refund_failed", now))?;
        }
    }
    if status.is_terminal() {
        bump_open(txn, -1)?;
    }
    order.status = status;
    order.updated_at = now;
    order.history.push((status, now));
    txn.put(ORDERS, order.id.as_bytes(), &order)?;
    notify(txn, &order, event, now)
}

/// Whether the quote already backed an order (as far as this node has
/// applied; checkout's apply decides).
pub fn quote_used(read: &ReadTxn, quote_id: &str) -> storage::Result<bool> {
    Ok(read.get(USED_QUOTES, quote_id.as_bytes())?.is_some())
}

pub fn cart(read: &ReadTxn, customer: &str) -> storage::Result<Option<Cart>> {
    read.get(CARTS, customer.as_bytes())
}

pub fn order(read: &ReadTxn, id: &str) -> storage::Result<Option<Order>> {
    read.get(ORDERS, id.as_bytes())
}

/// The order a customer already placed with this idempotency key.
pub fn by_idempotency_key(
    read: &ReadTxn,
    customer: &str,
    key: &str,
) -> storage::Result<Option<Order>> {
    match read.get(IDEMPOTENCY, &idem_key(customer, key))? {
        Some(id) => read.get(ORDERS, id.as_bytes()),
        None => Ok(None),
    }
}

pub fn open_orders(read: &ReadTxn) -> storage::Result<i64> {
    Ok(read.get(COUNTERS, OPEN_ORDERS)?.unwrap_or(0))
}

/// Whose orders a listing covers.
pub enum Scope<'a> {
    Customer(&'a str),
    VendorOwner(&'a str),
    All,
}

/// Orders in id order after `cursor`, optionally of one status.
pub fn list(
    read: &ReadTxn,
    scope: Scope<'_>,
    status: Option<OrderStatus>,
    cursor: Option<&str>,
    limit: usize,
) -> storage::Result<(Vec<Order>, Option<String>)> {
    let (index, prefix) = match scope {
        Scope::Customer(c) => (Some(BY_CUSTOMER), format!("{c}/")),
        Scope::VendorOwner(o) => (Some(BY_OWNER), format!("{o}/")),
        Scope::All => (None, String::new()),
    };
    let mut out = Vec::new();
    let mut next: Vec<u8> = match cursor {
        Some(c) => {
            let mut k = format!("{prefix}{c}").into_bytes();
            k.push(0);
            k
        }
        None => prefix.clone().into_bytes(),
    };
    // Scan in pages; a status filter may skip many orders.
    loop {
        let ids: Vec<(Vec<u8>, String)> = match index {
            Some(t) => read.range(t, storage::within(next.clone(), prefix.as_bytes()), 256)?,
            None => read
                .range(ORDERS, next.clone().., 256)?
                .into_iter()
                .map(|(k, o)| (k, o.id))
                .collect(),
        };
        let exhausted = ids.len() < 256;
        for (k, id) in ids {
            if !k.starts_with(prefix.as_bytes()) {
                return Ok((out, None));
            }
            next = k.clone();
            next.push(0);
            if let Some(o) = read.get(ORDERS, id.as_bytes())? {
                if status.is_none_or(|s| s == o.status) {
                    out.push(o);
                    if out.len() == limit {
                        return Ok((out, Some(id)));
                    }
                }
            }
        }
        if exhausted {
            return Ok((out, None));
        }
    }
}

/// An accepted delivery order for unit tests elsewhere: scheduled when
/// `window_start` is given, else on demand with a 10-minute ETA.
/// Stores `order` as it stands (tests of what follows an order).
#[cfg(test)]
pub(crate) fn store(txn: &WriteTxn, order: &Order) -> storage::Result<()> {
    txn.put(ORDERS, order.id.as_bytes(), order)
}

#[cfg(test)]
pub(crate) fn sample_order(id: &str, window_start: Option<i64>, now: i64) -> Order {
    let at = Location {
        lat: 40.71,
        lng: -74.0,
    };
    Order {
        id: id.into(),
        kind: OrderKind::Delivery,
        customer_id: "nyc.acc_c".into(),
        vendor_id: "nyc.ven_v".into(),
        vendor_owner_id: "nyc.acc_v".into(),
        status: OrderStatus::Accepted,
        items: Vec::new(),
        currency: "USD".into(),
        subtotal: 1000,
        delivery_fee: 500,
        tip: 0,
        platform_fee: 100,
        total: 1500,
        pickup: at,
        dropoff: at,
        dropoff_address: "1 St".into(),
        notes: None,
        mode: if window_start.is_some() {
            Mode::Scheduled
        } else {
            Mode::OnDemand
        },
        window_start,
        eta_minutes: 10,
        quote_id: String::new(),
        payment_ref: String::new(),
        charge_tx: String::new(),
        idempotency_key: String::new(),
        proof_code: "1234".into(),
        clear_cart: false,
        created_at: now,
        updated_at: now,
        history: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use storage::{Durability, Store};

    fn quote_id(made_at: i64) -> String {
        format!("nyc.quo_{}", ulid::Ulid::from_parts(made_at as u64, 7))
    }

    #[test]
    fn reconciling_finds_a_missing_charge_or_refund() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s.redb"), 1 << 20).unwrap();
        let now = 1_800_000_000_000;
        let order = |id: &str, status| {
            let mut o = sample_order(id, None, now);
            o.status = status;
            o.charge_tx = format!("{id}-charge");
            o
        };
        let orders = [
            order("nyc.ord_kept", OrderStatus::Delivered),
            order("nyc.ord_refunded", OrderStatus::Failed),
            order("nyc.ord_unrefunded", OrderStatus::Rejected),
            order("nyc.ord_uncharged", OrderStatus::Accepted),
        ];
        let txn = store.write().unwrap();
        for o in &orders {
            txn.put(ORDERS, o.id.as_bytes(), o).unwrap();
            if o.id != "nyc.ord_uncharged" {
                assert!(ledger::post(&txn, &charge(o, now)).unwrap());
            }
        }
        let refunded = ledger::transaction(&txn, "nyc.ord_refunded-charge")
            .unwrap()
            .unwrap();
        let refund = ledger::reversal(&refunded, "r".into(), "refund_failed", now);
        assert!(ledger::post(&txn, &refund).unwrap());
        txn.commit(Durability::Immediate).unwrap();
        let read = store.read().unwrap();
        let mut check = ledger::check(&read).unwrap();
        // Every transaction balances: only the orders show what is missing.
        assert!(check.ok);
        reconcile(&read, &mut check).unwrap();
        assert_eq!(
            check.order_mismatches,
            ["nyc.ord_uncharged", "nyc.ord_unrefunded"]
        );
        assert!(!check.ok);
    }

    #[test]
    fn used_quotes_are_pruned_once_no_quote_of_theirs_can_be_taken() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s.redb"), 1 << 20).unwrap();
        let now = 1_800_000_000_000;
        let old = quote_id(now - QUOTE_TTL_MS - USED_QUOTE_GRACE_MS - 1);
        let recent = quote_id(now - QUOTE_TTL_MS);
        let txn = store.write().unwrap();
        spend_quote(&txn, &old, "nyc.ord_a", now).unwrap();
        spend_quote(&txn, &recent, "nyc.ord_b", now).unwrap();
        // An order id that does not prune.
        spend_quote(&txn, &quote_id(now), "nyc.ord_1", now).unwrap();
        txn.commit(Durability::Immediate).unwrap();
        let read = store.read().unwrap();
        assert!(quote_used(&read, &old).unwrap());
        drop(read);
        // One that does: only what no node can still take goes.
        let txn = store.write().unwrap();
        spend_quote(&txn, &quote_id(now), "nyc.ord_0", now).unwrap();
        txn.commit(Durability::Immediate).unwrap();
        let read = store.read().unwrap();
        assert!(!quote_used(&read, &old).unwrap());
        assert!(quote_used(&read, &recent).unwrap());
        assert!(quote_used(&read, &quote_id(now)).unwrap());
    }
}
