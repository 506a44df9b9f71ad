//! Marketplace benchmarks: checkout throughput against config-store puts
//! on the same 3-node cell, and cached product reads with the read cache
//! on and off.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{bail, Context};
use cell::local::{find_cell_binary, LocalCell};
use rand::Rng;
use serde_json::{json, Value};

use crate::{
    bench::{bench_client, closed_loop, closed_loop_cpu, ok, LevelResult, Op, TempDir},
    bench_get::product_reads,
    output,
};

/// Limits lifted: the benchmark client is one IP with many principals.
pub(crate) const NO_LIMITS: [&str; 6] = [
    "--rate-limit-ip",
    "1000000",
    "--rate-limit-auth",
    "1000000",
    "--rate-limit-principal",
    "1000000",
];

pub(crate) async fn post(
    http: &reqwest::Client,
    url: String,
    token: Option<&str>,
    body: Value,
) -> anyhow::Result<Value> {
    let mut req = http.post(&url).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await?;
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("{url}: {status}: {v}");
    }
    Ok(v)
}

/// A delivery quote for `token`'s customer at the bench shop.
async fn quote(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    vendor_id: &str,
) -> anyhow::Result<String> {
    let q = post(
        http,
        format!("{base}/v1/quotes"),
        Some(token),
        json!({"vendor_id": vendor_id, "dropoff": {"lat": 40.72, "lng": -74.01}}),
    )
    .await?;
    Ok(q["id"].as_str().unwrap_or_default().to_string())
}

async fn signup(
    http: &reqwest::Client,
    base: &str,
    email: &str,
    role: &str,
) -> anyhow::Result<String> {
    let v = post(
        http,
        format!("{base}/v1/auth/signup"),
        None,
        json!({"email": email, "password": "benchmark password", "name": email, "role": role}),
    )
    .await?;
    v["access_token"]
        .as_str()
        .map(str::to_string)
        .context("no token")
}

/// A vendor with `n` unlimited products; returns (vendor id, product ids).
pub(crate) async fn seed_shop(
    http: &reqwest::Client,
    base: &str,
    n: usize,
) -> anyhow::Result<(String, Vec<String>)> {
    let token = signup(http, base, "bench-shop@example.com", "vendor").await?;
    let v = post(
        http,
        format!("{base}/v1/vendors"),
        Some(&token),
        json!({"name": "Bench Shop", "kind": "grocery", "location": {"lat": 40.7, "lng": -74.0}, "address": "1 Bench St", "prep_minutes": 5}),
    )
    .await?;
    let vid = v["id"].as_str().context("vendor id")?.to_string();
    let mut products = Vec::with_capacity(n);
    for i in 0..n {
        let p = post(
            http,
            format!("{base}/v1/vendors/{vid}/products"),
            Some(&token),
            json!({"name": format!("Item {i}"), "description": "a benchmark product with a realistic description length", "category": "pantry", "price": {"amount": 250 + i as i64, "currency": "USD"}, "stock": null, "tags": ["bench"]}),
        )
        .await?;
        products.push(p["id"].as_str().context("product id")?.to_string());
    }
    Ok((vid, products))
}

pub(crate) fn median_f64(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

pub(crate) fn report_line(name: &str, r: &LevelResult) -> Vec<String> {
    vec![
        name.to_string(),
        r.clients.to_string(),
        format!("{:.0}", r.throughput()),
        format!("{:.2}ms", r.p50_us as f64 / 1000.0),
        format!("{:.2}ms", r.p99_us as f64 / 1000.0),
        r.errors.to_string(),
    ]
}

/// Checkout (quote + order) throughput vs config-store puts, 3-node cell.
pub async fn checkout(
    clients: usize,
    seconds: u64,
    rounds: usize,
    as_json: bool,
) -> anyhow::Result<()> {
    let tmp = TempDir::new("marketcell-checkout")?;
    let mut cell = LocalCell::new(&find_cell_binary()?, "bench", &tmp.path)?.with_args(&NO_LIMITS);
    cell.form(3).await?;
    let leader = cell.wait_leader(Duration::from_secs(30)).await?;
    let base = cell.api_url(leader);
    let http = bench_client(clients)?;
    let (vid, products) = seed_shop(&http, &base, 20).await?;
    let mut customers = Vec::with_capacity(clients);
    for c in 0..clients {
        customers.push(signup(&http, &base, &format!("buyer{c}@example.com"), "customer").await?);
    }
    let customers = Arc::new(customers);
    let products = Arc::new(products);
    let duration = Duration::from_secs(seconds);

    let kv_op: Op = {
        let (http, base, token) = (http.clone(), base.clone(), cell.token.clone());
        let value = vec![b'v'; 256];
        Arc::new(move |c, i| {
            let req = http
                .put(format!("{base}/v1/kv/bench-{c}-{}", i % 128))
                .bearer_auth(&token)
                .body(value.clone());
            Box::pin(ok(req))
        })
    };
    // Idempotency keys are per round: `closed_loop` numbers each run's
    // requests from 0, and a key seen before is answered from the first
    // order (no write), which would flatter every round after the first.
    let round_no = Arc::new(AtomicU64::new(0));
    let checkout_op: Op = {
        let round_no = round_no.clone();
        let (http, base, vid) = (http.clone(), base.clone(), vid.clone());
        let (customers, products) = (customers.clone(), products.clone());
        Arc::new(move |c, i| {
            let r = round_no.load(Ordering::Relaxed);
            let (http, base, vid, customers, products) = (
                http.clone(),
                base.clone(),
                vid.clone(),
                customers.clone(),
                products.clone(),
            );
            Box::pin(async move {
                let token = &customers[c];
                let Ok(q) = quote(&http, &base, token, &vid).await else {
                    return false;
                };
                let pid = &products[(c + i as usize) % products.len()];
                let body = json!({
                    "quote_id": q, "items": [{"product_id": pid, "quantity": 1}],
                    "dropoff": {"location": {"lat": 40.72, "lng": -74.01}, "address": "2 Bench Ave"}
                });
                ok(http
                    .post(format!("{base}/v1/orders"))
                    .bearer_auth(token)
                    .header("idempotency-key", format!("bench-{r}-{c}-{i}"))
                    .json(&body))
                .await
            })
        })
    };
    // The checkout alone: each customer's quotes are made beforehand,
    // untimed (in an app the cart screen quotes; the checkout is the
    // POST /v1/orders that follows).
    let quotes: Arc<Vec<std::sync::Mutex<Vec<String>>>> =
        Arc::new((0..clients).map(|_| Default::default()).collect());
    // A customer faster than the estimate below can use up its quotes; it
    // then quotes inline (timed, so only to our disadvantage) rather than
    // failing, and the round says how often that happened.
    let quoted_inline = Arc::new(AtomicU64::new(0));
    let order_op: Op = {
        let (http, base, vid, quotes) = (http.clone(), base.clone(), vid.clone(), quotes.clone());
        let (customers, products) = (customers.clone(), products.clone());
        let (inline, round_no) = (quoted_inline.clone(), round_no.clone());
        Arc::new(move |c, i| {
            let r = round_no.load(Ordering::Relaxed);
            let (http, base, vid, customers, products, inline) = (
                http.clone(),
                base.clone(),
                vid.clone(),
                customers.clone(),
                products.clone(),
                inline.clone(),
            );
            let made = quotes[c].lock().ok().and_then(|mut q| q.pop());
            Box::pin(async move {
                let quote = match made {
                    Some(q) => q,
                    None => {
                        inline.fetch_add(1, Ordering::Relaxed);
                        match quote(&http, &base, &customers[c], &vid).await {
                            Ok(q) => q,
                            Err(_) => return false,
                        }
                    }
                };
                let pid = &products[(c + i as usize) % products.len()];
                let body = json!({
                    "quote_id": quote, "items": [{"product_id": pid, "quantity": 1}],
                    "dropoff": {"location": {"lat": 40.72, "lng": -74.01}, "address": "2 Bench Ave"}
                });
                ok(http
                    .post(format!("{base}/v1/orders"))
                    .bearer_auth(&customers[c])
                    .header("idempotency-key", format!("bench-only-{r}-{c}-{i}"))
                    .json(&body))
                .await
            })
        })
    };
    let mut kv_runs = Vec::new();
    let mut co_runs = Vec::new();
    let mut only_runs = Vec::new();
    let mut ratios = Vec::new();
    let mut only_ratios = Vec::new();
    // Node CPU µs per kv put, checkout, quote + checkout, per round.
    let mut cpu_us: [Vec<f64>; 3] = Default::default();
    // Enough quotes per customer for a round at up to 8k checkouts/s.
    let per_client = (8_000 * (seconds as usize + 2)).div_ceil(clients.max(1));
    for round in 0..rounds.max(1) {
        round_no.store(round as u64, Ordering::Relaxed);
        eprintln!(
            "round {round}: making {} quotes (untimed)…",
            per_client * clients
        );
        let fills = (0..clients).map(|c| {
            let (http, base, vid, token, quotes) = (
                http.clone(),
                base.clone(),
                vid.clone(),
                customers[c].clone(),
                quotes.clone(),
            );
            async move {
                let mut made = Vec::with_capacity(per_client);
                for _ in 0..per_client {
                    made.push(quote(&http, &base, &token, &vid).await?);
                }
                if let Ok(mut q) = quotes[c].lock() {
                    *q = made;
                }
                Ok::<_, anyhow::Error>(())
            }
        });
        for r in futures::future::join_all(fills).await {
            r?;
        }
        // The nodes' CPU per operation: steadier than throughput on a
        // shared machine, where the client competes for the same cores.
        let pids = cell.pids();
        let (k, k_cpu) = closed_loop_cpu(clients, duration, kv_op.clone(), &pids).await?;
        quoted_inline.store(0, Ordering::Relaxed);
        let (only, only_cpu) = closed_loop_cpu(clients, duration, order_op.clone(), &pids).await?;
        let inline = quoted_inline.load(Ordering::Relaxed);
        if inline > 0 {
            eprintln!(
                "round {round}: {inline} checkouts found their customer's quotes used up and quoted inline (timed)"
            );
        }
        let (o, o_cpu) = closed_loop_cpu(clients, duration, checkout_op.clone(), &pids).await?;
        for (all, this) in cpu_us.iter_mut().zip([k_cpu, only_cpu, o_cpu]) {
            all.extend(this);
        }
        eprintln!(
            "round {round}: kv put {:.0}/s p99 {:.1}ms; checkout {:.0}/s p50 {:.1}ms p99 {:.1}ms; quote + checkout {:.0}/s p50 {:.1}ms p99 {:.1}ms",
            k.throughput(),
            k.p99_us as f64 / 1000.0,
            only.throughput(),
            only.p50_us as f64 / 1000.0,
            only.p99_us as f64 / 1000.0,
            o.throughput(),
            o.p50_us as f64 / 1000.0,
            o.p99_us as f64 / 1000.0
        );
        ratios.push(o.throughput() / k.throughput().max(1e-9));
        only_ratios.push(only.throughput() / k.throughput().max(1e-9));
        kv_runs.push(k);
        co_runs.push(o);
        only_runs.push(only);
    }
    let ledger = cell
        .admin(leader, reqwest::Method::GET, "/admin/ledger/check", None)
        .await?;
    cell.stop_all();
    let pick = |mut v: Vec<LevelResult>| {
        v.sort_by(|a, b| a.throughput().total_cmp(&b.throughput()));
        let mid = v.len() / 2;
        v.swap_remove(mid)
    };
    let (k, o, ratio) = (pick(kv_runs), pick(co_runs), median_f64(ratios));
    let (only, only_ratio) = (pick(only_runs), median_f64(only_ratios));
    let [k_cpu, only_cpu, o_cpu] = cpu_us.map(median_f64);
    if as_json {
        output::json(&json!({
            "clients": clients, "seconds": seconds, "rounds": rounds,
            "kv_put": {"ops_per_sec": k.throughput(), "p50_us": k.p50_us, "p99_us": k.p99_us},
            "checkout": {"ops_per_sec": only.throughput(), "p50_us": only.p50_us, "p99_us": only.p99_us, "errors": only.errors},
            "quote_and_checkout": {"ops_per_sec": o.throughput(), "p50_us": o.p50_us, "p99_us": o.p99_us, "errors": o.errors},
            "checkout_to_kv_ratio": only_ratio, "quote_and_checkout_to_kv_ratio": ratio, "ledger_ok": ledger["ok"],
            "node_cpu_us_per_op": {"kv_put": k_cpu, "checkout": only_cpu, "quote_and_checkout": o_cpu},
        }));
        return Ok(());
    }
    println!("\n3-node cell on loopback, {clients} concurrent clients, {seconds} s per run, {rounds} alternating rounds (median)");
    println!("checkout = POST /v1/orders (one item, Idempotency-Key; its quote made beforehand, untimed);");
    println!("quote + checkout = POST /v1/quotes then POST /v1/orders, both timed\n");
    output::table(
        &["WORKLOAD", "CLIENTS", "OPS/S", "P50", "P99", "ERRORS"],
        &[
            report_line("kv put (256 B)", &k),
            report_line("checkout", &only),
            report_line("quote + checkout", &o),
        ],
    );
    println!(
        "\ncheckout / kv-put throughput = {only_ratio:.2}x, quote + checkout / kv-put = {ratio:.2}x (medians of rounds); ledger ok: {}",
        ledger["ok"]
    );
    println!(
        "node CPU per operation (user + system, three nodes, median of rounds): kv put {k_cpu:.0} µs, \
         checkout {only_cpu:.0} µs, quote + checkout {o_cpu:.0} µs; kv put / checkout = {:.2}x",
        k_cpu / only_cpu.max(1e-9)
    );
    Ok(())
}

/// Zipf(1.0) ranks over `n` items.
pub(crate) struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub(crate) fn new(n: usize) -> Self {
        let mut acc = 0.0;
        let mut cdf = Vec::with_capacity(n);
        for k in 1..=n {
            acc += 1.0 / k as f64;
            cdf.push(acc);
        }
        for v in &mut cdf {
            *v /= acc;
        }
        Self { cdf }
    }

    pub(crate) fn sample(&self, rng: &mut impl Rng) -> usize {
        let u: f64 = rng.gen();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

/// `GET /v1/products/{id}` with Zipf-distributed ids: read cache on vs off.
pub async fn reads(
    clients: usize,
    seconds: u64,
    rounds: usize,
    products: usize,
    as_json: bool,
) -> anyhow::Result<()> {
    let tmp = TempDir::new("marketcell-reads")?;
    let bin = find_cell_binary()?;
    let mut cached = LocalCell::new(&bin, "cached", &tmp.path.join("on"))?.with_args(&NO_LIMITS);
    let mut uncached_args = NO_LIMITS.to_vec();
    uncached_args.push("--no-read-cache");
    let mut uncached =
        LocalCell::new(&bin, "uncached", &tmp.path.join("off"))?.with_args(&uncached_args);
    cached.form(1).await?;
    uncached.form(1).await?;
    let http = bench_client(clients)?;
    let mut ops = Vec::new();
    for cell in [&cached, &uncached] {
        let base = cell.api_url(1);
        let (_, ids) = seed_shop(&http, &base, products).await?;
        ops.push(product_reads(&base, clients, Arc::new(ids))?);
    }
    let duration = Duration::from_secs(seconds);
    let (mut on_runs, mut off_runs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds.max(1) {
        let on = closed_loop(clients, duration, ops[0].clone()).await?;
        let off = closed_loop(clients, duration, ops[1].clone()).await?;
        eprintln!(
            "round {round}: cache on {:.0}/s p99 {:.2}ms; cache off {:.0}/s p99 {:.2}ms",
            on.throughput(),
            on.p99_us as f64 / 1000.0,
            off.throughput(),
            off.p99_us as f64 / 1000.0
        );
        ratios.push(on.throughput() / off.throughput().max(1e-9));
        on_runs.push(on);
        off_runs.push(off);
    }
    cached.stop_all();
    uncached.stop_all();
    let pick = |mut v: Vec<LevelResult>| {
        v.sort_by(|a, b| a.throughput().total_cmp(&b.throughput()));
        let mid = v.len() / 2;
        v.swap_remove(mid)
    };
    let (on, off, ratio) = (pick(on_runs), pick(off_runs), median_f64(ratios));
    if as_json {
        output::json(&json!({
            "clients": clients, "products": products, "seconds": seconds, "rounds": rounds,
            "cache_on": {"ops_per_sec": on.throughput(), "p50_us": on.p50_us, "p99_us": on.p99_us},
            "cache_off": {"ops_per_sec": off.throughput(), "p50_us": off.p50_us, "p99_us": off.p99_us},
            "ratio": ratio,
        }));
        return Ok(());
    }
    println!("\nGET /v1/products/{{id}}, Zipf(1.0) over {products} products, {clients} connections, single node, {seconds} s per run, {rounds} rounds (median)\n");
    output::table(
        &["READ CACHE", "CLIENTS", "OPS/S", "P50", "P99", "ERRORS"],
        &[report_line("on", &on), report_line("off", &off)],
    );
    println!("\ncache on / cache off throughput = {ratio:.2}x (median of rounds)");
    Ok(())
}
