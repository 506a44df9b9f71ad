//! `cellctl bench dispatch`: location ingest, on-demand dispatch latency
//! with many online drivers, and deferred route matching inside the apply.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use cell::local::{find_cell_binary, LocalCell};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::{json, Value};

use crate::bench::{bench_client, closed_loop, LevelResult, Op, TempDir};
use crate::bench_market::{post, NO_LIMITS};
use crate::output;

pub struct DispatchBenchOptions {
    pub nodes: u64,
    pub ping_hz: f64,
    pub drivers: usize,
    pub clients: usize,
    pub seconds: u64,
    pub orders: usize,
    pub routes: usize,
    pub claims: usize,
    pub json: bool,
}

const CENTER: (f64, f64) = (40.73, -73.99);

fn near(rng: &mut StdRng, km: f64) -> (f64, f64) {
    let d = km / 111.0;
    (
        CENTER.0 + rng.gen_range(-d..d),
        CENTER.1 + rng.gen_range(-d..d) / 0.76,
    )
}

pub(crate) async fn mint(
    http: &reqwest::Client,
    base: &str,
    ops: &str,
    role: &str,
    sub: &str,
) -> anyhow::Result<String> {
    let v = post(
        http,
        format!("{base}/admin/tokens"),
        Some(ops),
        json!({"role": role, "sub": sub, "ttl_seconds": 3600}),
    )
    .await?;
    v["access_token"]
        .as_str()
        .map(str::to_string)
        .context("token")
}

pub(crate) async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let mut r = http.request(method, &url).bearer_auth(token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await?;
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    anyhow::ensure!(status.is_success(), "{url}: {status} {v}");
    Ok(v)
}

/// Runs `f` over `items` with `n` in flight.
async fn in_parallel<T, F, Fut>(items: Vec<T>, n: usize, f: F) -> anyhow::Result<()>
where
    T: Send + 'static,
    F: Fn(T) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    use futures::stream::{self, StreamExt};
    let results: Vec<anyhow::Result<()>> = stream::iter(items)
        .map(move |i| {
            let f = f.clone();
            async move { f(i).await }
        })
        .buffer_unordered(n)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Deferred matching of `claims` claims over `routes` routes by
/// `drivers` drivers, in one `CloseWindow` apply on a real redb store.
/// A state store holding `drivers` approved drivers (`bench.acc_<n>`), as
/// every node's apply sees it.
fn store_with_drivers(
    name: &str,
    drivers: usize,
) -> anyhow::Result<(TempDir, storage::Store, storage::WriteTxn)> {
    use cell::drivers::{DriverCommand, DriverStatus, Profile, Vehicle};
    let tmp = TempDir::new(name)?;
    let store = storage::Store::open(tmp.path.join("state.redb"), 256 << 20)?;
    let txn = store.write()?;
    for i in 0..drivers {
        let id = format!("bench.acc_{i:08}");
        cell::drivers::apply(
            &txn,
            DriverCommand::PutProfile {
                driver_id: id.clone(),
                profile: Profile {
                    vehicle: Vehicle::Car,
                    capacity: 4,
                    qualifications: vec![],
                    license_plate: None,
                },
                now: 0,
            },
        )?;
        cell::drivers::apply(
            &txn,
            DriverCommand::SetStatus {
                driver_id: id,
                status: DriverStatus::Approved,
                now: 0,
            },
        )?;
    }
    Ok((tmp, store, txn))
}

/// One location flush: every driver's ping replicated in one command, as
/// the leader writes it once a second; the time its apply holds the state
/// machine (what a write queued behind it waits).
fn location_flush(drivers: usize) -> anyhow::Result<Duration> {
    use cell::drivers::{DriverCommand, Ping};
    let (_tmp, store, txn) = store_with_drivers("marketcell-flush", drivers)?;
    txn.commit(storage::Durability::Deferred)?;
    let mut rng = StdRng::seed_from_u64(11);
    let mut times = Vec::new();
    for round in 1..=5i64 {
        let pings = (0..drivers)
            .map(|i| {
                let (lat, lng) = near(&mut rng, 5.0);
                Ping {
                    driver_id: format!("bench.acc_{i:08}"),
                    lat,
                    lng,
                    at: round * 1000,
                }
            })
            .collect();
        let started = Instant::now();
        let txn = store.write()?;
        cell::drivers::apply(&txn, DriverCommand::Locations { pings })?;
        txn.commit(storage::Durability::Deferred)?;
        times.push(started.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2])
}

fn matching(
    drivers: usize,
    routes: usize,
    claims: usize,
) -> anyhow::Result<(Duration, usize, usize)> {
    use cell::routes::{Requirements, Route, RouteCommand, RouteResponse, RouteStatus, Stop};
    let (_tmp, store, txn) = store_with_drivers("marketcell-matching", drivers)?;
    let mut rng = StdRng::seed_from_u64(7);
    let day = 1_900_000_000_000i64;
    for r in 0..routes {
        let start = day + (r as i64 % 48) * 1_800_000;
        let (lat, lng) = near(&mut rng, 10.0);
        let route = Route {
            id: format!("bench.rte_{r:06}"),
            zone: "z".into(),
            window_start: start,
            window_end: start + 3_600_000,
            stops: vec![Stop {
                delivery_id: None,
                location: cell::catalog::Location { lat, lng },
            }],
            pay: 3000,
            currency: "USD".into(),
            requirements: Requirements::default(),
            status: RouteStatus::Open,
            driver_id: None,
            claims: vec![],
            windows: 0,
            created_at: 0,
        };
        cell::routes::apply(
            &txn,
            RouteCommand::Create {
                route: Box::new(route),
                now: 0,
            },
        )?;
    }
    for c in 0..claims {
        let route_id = format!("bench.rte_{:06}", rng.gen_range(0..routes));
        let driver_id = format!("bench.acc_{:08}", rng.gen_range(0..drivers));
        cell::routes::apply(
            &txn,
            RouteCommand::Claim {
                route_id,
                driver_id,
                now: c as i64,
                window_ms: 30_000,
            },
        )?;
    }
    txn.commit(storage::Durability::Deferred)?;
    let txn = store.write()?;
    let started = Instant::now();
    let r = cell::routes::apply(&txn, RouteCommand::CloseWindow { now: 1_000_000 })?;
    let took = started.elapsed();
    txn.commit(storage::Durability::Deferred)?;
    match r {
        RouteResponse::Matched {
            assigned,
            unmatched,
        } => Ok((took, assigned.len(), unmatched)),
        other => anyhow::bail!("unexpected {other:?}"),
    }
}

/// The value at quantile `q` of `sorted` (nearest rank).
fn at_quantile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    sorted
        .get(((sorted.len() as f64 - 1.0) * q).round() as usize)
        .copied()
}

pub async fn run(o: DispatchBenchOptions) -> anyhow::Result<()> {
    eprintln!("matching {} claims over {} routes…", o.claims, o.routes);
    let (match_time, matched, unmatched) = matching(o.drivers, o.routes, o.claims)?;
    let flush_time = location_flush(o.drivers)?;

    let tmp = TempDir::new("marketcell-dispatch")?;
    let mut cell = LocalCell::new(&find_cell_binary()?, "bench", &tmp.path)?.with_args(&NO_LIMITS);
    anyhow::ensure!(o.nodes >= 1, "--nodes must be at least 1");
    cell.form(o.nodes).await?;
    let leader = cell.wait_leader(Duration::from_secs(10)).await?;
    let base = cell.api_url(leader);
    let ops = cell.token.clone();
    let http = bench_client(o.clients.max(64))?;

    eprintln!("onboarding {} drivers…", o.drivers);
    let mut rng = StdRng::seed_from_u64(42);
    let mut tokens = Vec::with_capacity(o.drivers);
    for i in 0..o.drivers {
        tokens.push((format!("bench.acc_{i:08}"), near(&mut rng, 5.0)));
    }
    let minted: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    {
        let (http, base, ops, minted) = (http.clone(), base.clone(), ops.clone(), minted.clone());
        in_parallel(tokens.clone(), 32, move |(sub, at)| {
            let (http, base, ops, minted) =
                (http.clone(), base.clone(), ops.clone(), minted.clone());
            async move {
                let t = mint(&http, &base, &ops, "driver", &sub).await?;
                send(
                    &http,
                    reqwest::Method::PUT,
                    format!("{base}/v1/drivers/me"),
                    &t,
                    Some(json!({"vehicle": "car", "capacity": 4})),
                )
                .await?;
                send(
                    &http,
                    reqwest::Method::POST,
                    format!("{base}/v1/drivers/{sub}/approve"),
                    &ops,
                    None,
                )
                .await?;
                send(
                    &http,
                    reqwest::Method::PUT,
                    format!("{base}/v1/drivers/me/availability"),
                    &t,
                    Some(json!({"online": true})),
                )
                .await?;
                send(
                    &http,
                    reqwest::Method::PUT,
                    format!("{base}/v1/drivers/me/location"),
                    &t,
                    Some(json!({"lat": at.0, "lng": at.1})),
                )
                .await?;
                minted
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .push(t);
                Ok(())
            }
        })
        .await?;
    }
    let driver_tokens = Arc::new(
        minted
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .clone(),
    );

    // Location ingest: closed-loop pings from `clients` connections.
    let ping: Op = {
        let (http, base, toks) = (http.clone(), base.clone(), driver_tokens.clone());
        Arc::new(move |c, i| {
            let mut rng = StdRng::seed_from_u64(((c as u64) << 32) ^ i);
            let t = &toks[rng.gen_range(0..toks.len())];
            let (lat, lng) = near(&mut rng, 5.0);
            let req = http
                .put(format!("{base}/v1/drivers/me/location"))
                .bearer_auth(t)
                .json(&json!({"lat": lat, "lng": lng}));
            Box::pin(async move { req.send().await.is_ok_and(|r| r.status() == 204) })
        })
    };
    eprintln!("location pings for {} s…", o.seconds);
    let ingest: LevelResult =
        closed_loop(o.clients, Duration::from_secs(o.seconds), ping.clone()).await?;

    // Dispatch latency while every driver keeps pinging at ~1 Hz.
    let pinged = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let background_started = Instant::now();
    let background = {
        let (http, base, toks) = (http.clone(), base.clone(), driver_tokens.clone());
        let pinged = pinged.clone();
        let per_tick = (toks.len() as f64 * o.ping_hz / 100.0).round() as usize;
        tokio::spawn(async move {
            // Spread evenly, as real drivers' pings are: at 1 Hz, a
            // hundredth of them every 10 ms (bursts of all of them at once
            // would queue every other request behind them).
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut rng = StdRng::seed_from_u64(9);
            loop {
                tick.tick().await;
                let batch: Vec<String> = (0..per_tick)
                    .map(|_| toks[rng.gen_range(0..toks.len())].clone())
                    .collect();
                let futs = batch.into_iter().map(|t| {
                    let (http, base, pinged) = (http.clone(), base.clone(), pinged.clone());
                    let (lat, lng) = near(&mut rng, 5.0);
                    async move {
                        let sent = http
                            .put(format!("{base}/v1/drivers/me/location"))
                            .bearer_auth(t)
                            .json(&json!({"lat": lat, "lng": lng}))
                            .send()
                            .await;
                        if sent.is_ok_and(|r| r.status() == 204) {
                            pinged.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
                tokio::spawn(futures::future::join_all(futs));
            }
        })
    };
    eprintln!("{} orders through dispatch…", o.orders);
    let vendor = mint(&http, &base, &ops, "vendor", "bench.acc_vendor").await?;
    let v = send(&http, reqwest::Method::POST, format!("{base}/v1/vendors"), &vendor, Some(json!({"name": "Bench Kitchen", "kind": "restaurant", "location": {"lat": CENTER.0, "lng": CENTER.1}, "address": "1 Bench St", "prep_minutes": 5}))).await?;
    let vid = v["id"].as_str().context("vendor id")?.to_string();
    let p = send(&http, reqwest::Method::POST, format!("{base}/v1/vendors/{vid}/products"), &vendor, Some(json!({"name": "Meal", "category": "meals", "price": {"amount": 1500, "currency": "USD"}, "stock": null}))).await?;
    let pid = p["id"].as_str().context("product id")?.to_string();
    let customer = mint(&http, &base, &ops, "customer", "bench.acc_customer").await?;
    // Seen by a client: the vendor's accept acknowledged (the delivery is
    // dispatchable, committed) → the offer readable on the leader.
    let mut observed: Vec<Duration> = Vec::new();
    // The cell's own figure (creation → the round that decided the offer),
    // read with the offer; `unseen`: no offer within the poll's 5 s.
    let mut latencies: Vec<i64> = Vec::new();
    let mut unseen: Vec<String> = Vec::new();
    for i in 0..o.orders {
        let q = send(&http, reqwest::Method::POST, format!("{base}/v1/quotes"), &customer, Some(json!({"vendor_id": vid, "dropoff": {"lat": CENTER.0 + 0.01, "lng": CENTER.1}, "mode": "on_demand"}))).await?;
        let order = http.post(format!("{base}/v1/orders")).bearer_auth(&customer).header("idempotency-key", format!("bench-{i}"))
            .json(&json!({"quote_id": q["id"], "items": [{"product_id": pid, "quantity": 1}], "dropoff": {"location": {"lat": CENTER.0 + 0.01, "lng": CENTER.1}, "address": "2 Bench St"}}))
            .send().await?.json::<Value>().await?;
        let oid = order["id"].as_str().context("order id")?.to_string();
        send(
            &http,
            reqwest::Method::POST,
            format!("{base}/v1/orders/{oid}/accept"),
            &vendor,
            None,
        )
        .await?;
        let acked = Instant::now();
        let delivery = oid.replacen(".ord_", ".dlv_", 1);
        let mut offered = false;
        while !offered && acked.elapsed() < Duration::from_secs(5) {
            let v = send(
                &http,
                reqwest::Method::GET,
                format!("{base}/v1/deliveries/{delivery}"),
                &ops,
                None,
            )
            .await?;
            if let Some(ms) = v["dispatch_ms"].as_i64() {
                observed.push(acked.elapsed());
                latencies.push(ms);
                offered = true;
            } else {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        if !offered {
            unseen.push(delivery);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    background.abort();
    let background_rate = pinged.load(std::sync::atomic::Ordering::Relaxed) as f64
        / background_started.elapsed().as_secs_f64();
    for d in &unseen {
        let v = send(
            &http,
            reqwest::Method::GET,
            format!("{base}/v1/deliveries/{d}"),
            &ops,
            None,
        )
        .await?;
        if let Some(ms) = v["dispatch_ms"].as_i64() {
            latencies.push(ms);
        }
    }
    latencies.sort_unstable();
    observed.sort_unstable();
    let seen = |q: f64| at_quantile(&observed, q).map_or(-1.0, |d| d.as_secs_f64() * 1000.0);
    let pct = |q: f64| at_quantile(&latencies, q).unwrap_or(-1);
    let rss = cell.rss_bytes(leader).unwrap_or(0);
    cell.stop_all();

    if o.json {
        output::json(&json!({
            "drivers": o.drivers,
            "nodes": o.nodes,
            "ingest": {"pings_per_sec": ingest.throughput(), "p50_us": ingest.p50_us, "p99_us": ingest.p99_us, "errors": ingest.errors},
            "dispatch": {"orders": o.orders, "offered": latencies.len(), "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": latencies.last()},
            "background_pings_per_sec": background_rate,
            "offer_seen": {"offered": observed.len(), "p50_ms": seen(0.5), "p99_ms": seen(0.99), "max_ms": seen(1.0)},
            "location_flush_ms": flush_time.as_secs_f64() * 1000.0,
            "matching": {"routes": o.routes, "claims": o.claims, "ms": match_time.as_secs_f64() * 1000.0, "assigned": matched, "unmatched": unmatched},
            "cell_rss_bytes": rss,
        }));
        return Ok(());
    }
    println!(
        "\n{} online drivers around one point, {}-node cell (load on its leader), {} connections\n",
        o.drivers, o.nodes, o.clients
    );
    output::table(
        &["MEASURE", "RESULT"],
        &[
            vec![
                "location pings (PUT /v1/drivers/me/location)".into(),
                format!(
                    "{:.0}/s, p50 {:.2}ms, p99 {:.2}ms, errors {}",
                    ingest.throughput(),
                    ingest.p50_us as f64 / 1000.0,
                    ingest.p99_us as f64 / 1000.0,
                    ingest.errors
                ),
            ],
            vec![
                format!("delivery opened → offer decided (server clocks; pings meanwhile {background_rate:.0}/s)"),
                format!(
                    "{} of {} offered, p50 {} ms, p99 {} ms",
                    latencies.len(),
                    o.orders,
                    pct(0.5),
                    pct(0.99)
                ),
            ],
            vec![
                "accept acked → offer readable (client, polling every 1 ms)".into(),
                format!(
                    "{} of {} offered, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                    observed.len(),
                    o.orders,
                    seen(0.5),
                    seen(0.99),
                    seen(1.0)
                ),
            ],
            vec![
                format!("{} positions in one apply (a location flush)", o.drivers),
                format!("{:.1} ms", flush_time.as_secs_f64() * 1000.0),
            ],
            vec![
                format!(
                    "deferred matching, {} claims over {} routes, one apply",
                    o.claims, o.routes
                ),
                format!(
                    "{:.1} ms ({} assigned, {} unmatched)",
                    match_time.as_secs_f64() * 1000.0,
                    matched,
                    unmatched
                ),
            ],
            vec![
                "leader RSS at the end".into(),
                format!("{:.0} MiB", rss as f64 / 1048576.0),
            ],
        ],
    );
    Ok(())
}
