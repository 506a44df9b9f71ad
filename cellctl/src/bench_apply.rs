//! `cellctl bench apply`: the state-machine work of a checkout against that
//! of a config-store put, in process on real redb — no HTTP, no Raft, one
//! thread, timed by that thread's CPU clock.
//!
//! On a 3-node cell every node applies every command, so this is the part
//! of `bench checkout`'s cost that is paid three times; measured here it is
//! free of the client, the network and the other processes that make the
//! end-to-end figures swing by a fifth between runs, which makes it the
//! figure to compare when the data model changes.

use std::time::Instant;

use anyhow::{bail, Context};
use cell::catalog::{self, CatalogCommand, Location, Money, Product, Vendor, VendorKind};
use cell::kv::{self, Expect, KvCommand};
use cell::orders::{self, Mode, Order, OrderCommand, OrderItem, OrderKind, OrderResponse};
use serde_json::json;
use storage::{Durability, Store, WriteTxn};

use crate::bench::TempDir;
use crate::bench_market::median_f64;
use crate::output;

pub struct ApplyBenchOptions {
    /// Orders (and puts) timed per round.
    pub orders: usize,
    pub customers: usize,
    pub products: usize,
    /// Commands per transaction (a checkout run batches about 19).
    pub batch: usize,
    pub rounds: usize,
    /// redb's page cache (the cell's default: 128 MiB).
    pub cache_bytes: usize,
    pub json: bool,
}

const CELL: &str = "bench";
const CURRENCY: &str = "USD";
const PRICE: i64 = 1_250;
const FEE: i64 = 399;

/// CPU time this thread has used.
fn thread_cpu() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn id(kind: &str) -> String {
    format!("{CELL}.{kind}_{}", ulid::Ulid::new())
}

/// Runs `cmds` in transactions of `batch`, each committed as apply commits
/// (deferred durability); returns the thread CPU time they took.
fn apply_all<C>(
    store: &Store,
    cmds: Vec<C>,
    batch: usize,
    apply: impl Fn(&WriteTxn, C) -> anyhow::Result<()>,
) -> anyhow::Result<std::time::Duration> {
    let started = thread_cpu();
    let mut cmds = cmds.into_iter().peekable();
    while cmds.peek().is_some() {
        let txn = store.write()?;
        for cmd in cmds.by_ref().take(batch.max(1)) {
            apply(&txn, cmd)?;
        }
        txn.commit(Durability::Deferred)?;
    }
    Ok(thread_cpu().saturating_sub(started))
}

struct Shop {
    vendor: Vendor,
    products: Vec<Product>,
    customers: Vec<String>,
}

fn open_shop(store: &Store, opts: &ApplyBenchOptions, now: i64) -> anyhow::Result<Shop> {
    let vendor = Vendor {
        id: id("ven"),
        owner_id: id("acc"),
        name: "Bench Pizza".into(),
        kind: VendorKind::Restaurant,
        description: "the benchmark's kitchen".into(),
        location: Location {
            lat: 40.72,
            lng: -74.0,
        },
        address: "1 Bench St".into(),
        prep_minutes: 12,
        tags: vec!["pizza".into()],
        status: catalog::VendorStatus::Active,
        created_at: now,
        updated_at: now,
    };
    let products: Vec<Product> = (0..opts.products.max(1))
        .map(|i| Product {
            id: id("prd"),
            vendor_id: vendor.id.clone(),
            name: format!("Pizza {i}"),
            description: "tomato, mozzarella, basil".into(),
            category: "pizza".into(),
            price: Money {
                amount: PRICE,
                currency: CURRENCY.into(),
            },
            stock: Some(1_000_000_000),
            tags: vec!["pizza".into()],
            created_at: now,
            updated_at: now,
        })
        .collect();
    let mut cmds = vec![CatalogCommand::CreateVendor {
        vendor: vendor.clone(),
    }];
    let actor = catalog::Actor {
        account_id: vendor.owner_id.clone(),
        is_ops: false,
    };
    cmds.extend(products.iter().map(|p| CatalogCommand::CreateProduct {
        product: p.clone(),
        actor: actor.clone(),
    }));
    apply_all(store, cmds, 512, |txn, cmd| {
        catalog::apply(txn, cmd)?;
        Ok(())
    })?;
    let customers = (0..opts.customers.max(1)).map(|_| id("acc")).collect();
    Ok(Shop {
        vendor,
        products,
        customers,
    })
}

/// `n` checkouts as the API would propose them (the price comes from a
/// quote, a sealed token the API opened; nothing of it is stored).
fn checkouts(shop: &Shop, n: usize, first: usize, now: i64) -> Vec<Order> {
    let mut orders = Vec::with_capacity(n);
    for i in first..first + n {
        let c = i % shop.customers.len();
        let customer = &shop.customers[c];
        let product = &shop.products[(c + i) % shop.products.len()];
        let dropoff = Location {
            lat: 40.73,
            lng: -74.01,
        };
        let platform_fee = PRICE * 15 / 100;
        orders.push(Order {
            id: id("ord"),
            kind: OrderKind::Delivery,
            customer_id: customer.clone(),
            vendor_id: shop.vendor.id.clone(),
            vendor_owner_id: String::new(),
            status: orders::OrderStatus::Placed,
            items: vec![OrderItem {
                product_id: product.id.clone(),
                name: product.name.clone(),
                quantity: 1,
                unit_price: PRICE,
            }],
            currency: CURRENCY.into(),
            subtotal: PRICE,
            delivery_fee: FEE,
            tip: 0,
            platform_fee,
            total: PRICE + FEE,
            pickup: shop.vendor.location,
            dropoff,
            dropoff_address: "2 Bench Ave".into(),
            notes: None,
            mode: Mode::OnDemand,
            window_start: None,
            eta_minutes: 25,
            quote_id: id("quo"),
            payment_ref: id("pay"),
            charge_tx: id("ltx"),
            idempotency_key: format!("bench-{i}"),
            proof_code: "1234".into(),
            clear_cart: false,
            created_at: now,
            updated_at: now,
            history: Vec::new(),
        });
    }
    orders
}

fn place(store: &Store, orders: Vec<Order>, batch: usize, now: i64) -> anyhow::Result<f64> {
    let n = orders.len().max(1);
    let cmds = orders
        .into_iter()
        .map(|order| OrderCommand::Place {
            order: Box::new(order),
            now,
        })
        .collect();
    let took = apply_all(store, cmds, batch, |txn, cmd| {
        match orders::apply(txn, cmd)? {
            OrderResponse::Placed(_) => Ok(()),
            other => bail!("a benchmark checkout was refused: {other:?}"),
        }
    })?;
    Ok(took.as_secs_f64() * 1e6 / n as f64)
}

fn puts(store: &Store, n: usize, customers: usize, batch: usize) -> anyhow::Result<f64> {
    let cmds = (0..n)
        .map(|i| KvCommand::Put {
            key: format!("bench-{}-{}", i % customers.max(1), i % 128),
            value: vec![b'v'; 256],
            content_type: "application/octet-stream".into(),
            expect: Expect::Any,
        })
        .collect();
    let took = apply_all(store, cmds, batch, |txn, cmd| {
        kv::apply(txn, cmd)?;
        Ok(())
    })?;
    Ok(took.as_secs_f64() * 1e6 / n.max(1) as f64)
}

pub fn run(opts: ApplyBenchOptions) -> anyhow::Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("clock")?
        .as_millis() as i64;
    let mut order_us = Vec::new();
    let mut put_us = Vec::new();
    let started = Instant::now();
    for round in 0..opts.rounds.max(1) {
        // A fresh store per round, warmed with as many orders as are then
        // timed, so every round starts from the same history.
        let tmp = TempDir::new("marketcell-apply-bench")?;
        let store = Store::open(tmp.path.join("state.redb"), opts.cache_bytes)?;
        let shop = open_shop(&store, &opts, now)?;
        let warm = checkouts(&shop, opts.orders, 0, now);
        place(&store, warm, opts.batch, now)?;
        puts(&store, opts.orders, opts.customers, opts.batch)?;
        let timed = checkouts(&shop, opts.orders, opts.orders, now);
        let o = place(&store, timed, opts.batch, now)?;
        let p = puts(&store, opts.orders, opts.customers, opts.batch)?;
        eprintln!("round {round}: checkout apply {o:.1} µs, kv put apply {p:.1} µs");
        order_us.push(o);
        put_us.push(p);
    }
    let (o, p) = (median_f64(order_us), median_f64(put_us));
    if opts.json {
        output::json(&json!({
            "orders": opts.orders, "customers": opts.customers, "products": opts.products,
            "batch": opts.batch, "rounds": opts.rounds,
            "checkout_apply_us": o, "kv_put_apply_us": p,
        }));
        return Ok(());
    }
    println!(
        "\napply on one node, in process (redb, deferred commits of {} commands; thread CPU time), \
         {} customers, {} products, {} orders after {} warm-up orders, {} rounds (median), {:.0} s\n",
        opts.batch,
        opts.customers,
        opts.products,
        opts.orders,
        opts.orders,
        opts.rounds,
        started.elapsed().as_secs_f64()
    );
    output::table(
        &["COMMAND", "CPU PER COMMAND"],
        &[
            vec!["checkout (Place)".into(), format!("{o:.1} µs")],
            vec!["kv put (256 B)".into(), format!("{p:.1} µs")],
        ],
    );
    println!(
        "\ncheckout apply / kv put apply = {:.1}x (each runs on every node of a cell)",
        o / p.max(1e-9)
    );
    Ok(())
}
