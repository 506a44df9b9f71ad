//! `cellctl bench graphql`: the order-tracking screen — an order with its
//! items, vendor, delivery and driver — as one GraphQL query against the
//! REST calls an app would make for the same data (the order, then the
//! vendor, the delivery and its driver in parallel: two round trips), on
//! the same node in the same run. Reports latency, throughput and the
//! bytes each screen costs on the wire.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use cell::local::{find_cell_binary, LocalCell};
use futures::FutureExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::bench::{bench_client, closed_loop, median_round, us, LevelResult, Op, TempDir};
use crate::bench_dispatch::{mint, send};
use crate::bench_market::{post, NO_LIMITS};
use crate::output;

pub struct GraphqlBenchOptions {
    pub clients: Vec<usize>,
    /// Network round-trip times to emulate (0: plain loopback).
    pub rtt_ms: Vec<u64>,
    pub seconds: u64,
    pub rounds: usize,
    pub json: bool,
}

const PICKUP: (f64, f64) = (40.73, -73.99);

pub const ORDER_SCREEN: &str = "query OrderScreen($id: String!) { order(id: $id) { \
    id status eta etaMinutes total { amount currency } \
    items { productId name quantity unitPrice { amount currency } } \
    vendor { id name address location { lat lng } } \
    delivery { id status driver { id name vehicle location { lat lng } } } } }";

/// The ids one screen needs.
#[derive(Clone)]
struct Screen {
    base: String,
    token: String,
    order: String,
}

/// A customer's order with three lines, accepted, and taken by a driver.
async fn seed(http: &reqwest::Client, base: &str, ops: &str) -> anyhow::Result<Screen> {
    use reqwest::Method;
    let vt = mint(
        http,
        base,
        ops,
        "vendor",
        "bench.acc_vendor0000000000000000",
    )
    .await?;
    let v = post(http, format!("{base}/v1/vendors"), Some(&vt), json!({"name": "Bench Noodles", "kind": "restaurant", "location": {"lat": PICKUP.0, "lng": PICKUP.1}, "address": "1 Bench St", "prep_minutes": 10})).await?;
    let vid = v["id"].as_str().context("vendor id")?.to_string();
    let mut items = Vec::new();
    for (name, price) in [("Ramen", 1250), ("Gyoza", 650), ("Green tea", 300)] {
        let p = post(http, format!("{base}/v1/vendors/{vid}/products"), Some(&vt), json!({"name": name, "category": "noodles", "price": {"amount": price, "currency": "USD"}, "stock": null})).await?;
        items.push(json!({"product_id": p["id"], "quantity": 1}));
    }
    let dt = mint(
        http,
        base,
        ops,
        "driver",
        "bench.acc_driver0000000000000000",
    )
    .await?;
    send(
        http,
        Method::PUT,
        format!("{base}/v1/drivers/me"),
        &dt,
        Some(json!({"vehicle": "bike", "capacity": 2})),
    )
    .await?;
    send(
        http,
        Method::POST,
        format!("{base}/v1/drivers/bench.acc_driver0000000000000000/approve"),
        ops,
        None,
    )
    .await?;
    send(
        http,
        Method::PUT,
        format!("{base}/v1/drivers/me/availability"),
        &dt,
        Some(json!({"online": true})),
    )
    .await?;
    let ping = json!({"lat": PICKUP.0 + 0.002, "lng": PICKUP.1});
    send(
        http,
        Method::PUT,
        format!("{base}/v1/drivers/me/location"),
        &dt,
        Some(ping),
    )
    .await?;
    let ct = mint(
        http,
        base,
        ops,
        "customer",
        "bench.acc_customer00000000000000",
    )
    .await?;
    let q = post(
        http,
        format!("{base}/v1/quotes"),
        Some(&ct),
        json!({"vendor_id": vid, "dropoff": {"lat": PICKUP.0 + 0.02, "lng": PICKUP.1}}),
    )
    .await?;
    let r = http
        .post(format!("{base}/v1/orders"))
        .bearer_auth(&ct)
        .header("idempotency-key", "bench-graphql")
        .json(&json!({"quote_id": q["id"], "items": items, "dropoff": {"location": {"lat": PICKUP.0 + 0.02, "lng": PICKUP.1}, "address": "9 Far Ave"}}))
        .send()
        .await?;
    let order: Value = r.json().await?;
    let oid = order["id"].as_str().context("order id")?.to_string();
    send(
        http,
        Method::POST,
        format!("{base}/v1/orders/{oid}/accept"),
        &vt,
        None,
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let offers = send(
            http,
            Method::GET,
            format!("{base}/v1/drivers/me/offers"),
            &dt,
            None,
        )
        .await?;
        if let Some(id) = offers["items"][0]["id"].as_str() {
            send(
                http,
                Method::POST,
                format!("{base}/v1/offers/{id}/accept"),
                &dt,
                None,
            )
            .await?;
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the driver got no offer");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Screen {
        base: base.to_string(),
        token: ct,
        order: oid,
    })
}

async fn get(http: &reqwest::Client, url: String, token: &str) -> anyhow::Result<Value> {
    let r = http.get(&url).bearer_auth(token).send().await?;
    anyhow::ensure!(r.status().is_success(), "{url}: {}", r.status());
    Ok(r.json().await?)
}

/// The screen through REST: the order, then the vendor, the delivery and
/// its driver at once.
async fn rest_screen(http: &reqwest::Client, s: &Screen) -> anyhow::Result<Value> {
    let base = &s.base;
    let order = get(http, format!("{base}/v1/orders/{}", s.order), &s.token).await?;
    let vid = order["vendor_id"].as_str().context("vendor_id")?;
    let did = order["delivery_id"].as_str().context("delivery_id")?;
    let (vendor, delivery, driver) = tokio::try_join!(
        get(http, format!("{base}/v1/vendors/{vid}"), &s.token),
        get(http, format!("{base}/v1/deliveries/{did}"), &s.token),
        get(http, format!("{base}/v1/deliveries/{did}/driver"), &s.token),
    )?;
    Ok(json!({"order": order, "vendor": vendor, "delivery": delivery, "driver": driver}))
}

async fn graphql_screen(http: &reqwest::Client, s: &Screen) -> anyhow::Result<Value> {
    let r = http
        .post(format!("{}/graphql", s.base))
        .bearer_auth(&s.token)
        .json(&json!({"query": ORDER_SCREEN, "variables": {"id": s.order}}))
        .send()
        .await?;
    let v: Value = r.json().await?;
    anyhow::ensure!(v.get("errors").is_none(), "graphql errors: {v}");
    Ok(v)
}

/// The two answers hold the same data.
fn check_same(rest: &Value, gql: &Value) -> anyhow::Result<()> {
    let g = &gql["data"]["order"];
    let pairs = [
        (&rest["order"]["id"], &g["id"]),
        (&rest["order"]["status"], &g["status"]),
        (&rest["order"]["eta"], &g["eta"]),
        (&rest["order"]["total"], &g["total"]),
        (&rest["vendor"]["name"], &g["vendor"]["name"]),
        (&rest["vendor"]["location"], &g["vendor"]["location"]),
        (&rest["delivery"]["status"], &g["delivery"]["status"]),
        (&rest["driver"]["name"], &g["delivery"]["driver"]["name"]),
        (
            &rest["driver"]["location"],
            &g["delivery"]["driver"]["location"],
        ),
    ];
    for (r, q) in pairs {
        anyhow::ensure!(r == q, "REST {r} ≠ GraphQL {q}");
    }
    let lines = rest["order"]["items"].as_array().map_or(0, Vec::len);
    anyhow::ensure!(lines == g["items"].as_array().map_or(0, Vec::len) && lines == 3);
    Ok(())
}

/// A TCP relay to `target` that counts the bytes both ways (what a screen
/// really costs on the wire: HTTP/1.1 framing, headers and bodies) and
/// delays every chunk by half of `rtt` each way, like a network would.
async fn counting_relay(target: String, rtt: Duration) -> anyhow::Result<(String, Arc<AtomicU64>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let bytes = Arc::new(AtomicU64::new(0));
    let counted = bytes.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (target, counted) = (target.clone(), counted.clone());
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(&target).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let up = pipe(cr, sw, counted.clone(), rtt / 2);
                let down = pipe(sr, cw, counted, rtt / 2);
                let _ = tokio::join!(up, down);
            });
        }
    });
    Ok((format!("http://{addr}"), bytes))
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    counted: Arc<AtomicU64>,
    one_way: Duration,
) {
    // Chunks keep their order and each arrives `one_way` after it was read.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due.into()).await;
            if to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                counted.fetch_add(n as u64, Ordering::Relaxed);
                if tx
                    .send((Instant::now() + one_way, buf[..n].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// Mean bytes per screen over `n` screens on kept-alive connections.
async fn wire_bytes(s: &Screen, graphql: bool, n: u64) -> anyhow::Result<u64> {
    let target = s.base.trim_start_matches("http://").to_string();
    let (relay, counted) = counting_relay(target, Duration::ZERO).await?;
    let via = Screen {
        base: relay,
        ..s.clone()
    };
    let http = bench_client(8)?;
    // One warm-up screen opens the connections; count the rest.
    let warm = if graphql {
        graphql_screen(&http, &via).await?
    } else {
        rest_screen(&http, &via).await?
    };
    drop(warm);
    let before = counted.load(Ordering::Relaxed);
    for _ in 0..n {
        if graphql {
            graphql_screen(&http, &via).await?;
        } else {
            rest_screen(&http, &via).await?;
        }
    }
    Ok((counted.load(Ordering::Relaxed) - before) / n)
}

fn op(http: reqwest::Client, s: Screen, graphql: bool) -> Op {
    Arc::new(move |_, _| {
        let (http, s) = (http.clone(), s.clone());
        async move {
            if graphql {
                graphql_screen(&http, &s).await.is_ok()
            } else {
                rest_screen(&http, &s).await.is_ok()
            }
        }
        .boxed()
    })
}

pub async fn run(o: GraphqlBenchOptions) -> anyhow::Result<()> {
    let tmp = TempDir::new("marketcell-graphql")?;
    let mut cell = LocalCell::new(&find_cell_binary()?, "bench", &tmp.path)?.with_args(&NO_LIMITS);
    cell.form(1).await?;
    let base = cell.api_url(1);
    let http = bench_client(o.clients.iter().copied().max().unwrap_or(1) * 4)?;
    eprintln!("seeding an order with a vendor, three lines, a delivery and a driver…");
    let screen = seed(&http, &base, &cell.token.clone()).await?;
    // Let the driver's position replicate (once a second) so both reads
    // below see the same one.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rest = rest_screen(&http, &screen).await?;
    let gql = graphql_screen(&http, &screen).await?;
    check_same(&rest, &gql)?;

    let rest_bytes = wire_bytes(&screen, false, 200).await?;
    let gql_bytes = wire_bytes(&screen, true, 200).await?;

    let mut rows = Vec::new();
    let mut out = Vec::new();
    for (rtt_ms, clients) in o
        .rtt_ms
        .iter()
        .flat_map(|r| o.clients.iter().map(move |c| (*r, *c)))
    {
        let screen = if rtt_ms == 0 {
            screen.clone()
        } else {
            let target = screen.base.trim_start_matches("http://").to_string();
            let (relay, _) = counting_relay(target, Duration::from_millis(rtt_ms)).await?;
            Screen {
                base: relay,
                ..screen.clone()
            }
        };
        let mut r_rounds: Vec<LevelResult> = Vec::new();
        let mut g_rounds: Vec<LevelResult> = Vec::new();
        let mut ratios = Vec::new();
        for round in 0..o.rounds.max(1) {
            let d = Duration::from_secs(o.seconds);
            let r = closed_loop(clients, d, op(http.clone(), screen.clone(), false)).await?;
            let g = closed_loop(clients, d, op(http.clone(), screen.clone(), true)).await?;
            eprintln!(
                "round {round} rtt {rtt_ms} ms {clients} clients: REST {:.0}/s p50 {} p99 {} | GraphQL {:.0}/s p50 {} p99 {}",
                r.throughput(),
                us(r.p50_us),
                us(r.p99_us),
                g.throughput(),
                us(g.p50_us),
                us(g.p99_us)
            );
            ratios.push(g.p50_us as f64 / r.p50_us.max(1) as f64);
            r_rounds.push(r);
            g_rounds.push(g);
        }
        let ratio = crate::bench_market::median_f64(ratios);
        let (r, g) = (median_round(r_rounds), median_round(g_rounds));
        rows.push(vec![
            rtt_ms.to_string(),
            clients.to_string(),
            format!("{:.0}", r.throughput()),
            us(r.p50_us),
            us(r.p99_us),
            format!("{:.0}", g.throughput()),
            us(g.p50_us),
            us(g.p99_us),
            format!("{ratio:.2}x"),
            format!("{:.2}x", g.throughput() / r.throughput().max(1e-9)),
        ]);
        out.push(json!({
            "rtt_ms": rtt_ms,
            "clients": clients,
            "rest": {"screens_per_s": r.throughput(), "p50_us": r.p50_us, "p99_us": r.p99_us, "errors": r.errors},
            "graphql": {"screens_per_s": g.throughput(), "p50_us": g.p50_us, "p99_us": g.p99_us, "errors": g.errors},
            "graphql_over_rest_p50": ratio,
        }));
    }
    if o.json {
        output::json(&json!({
            "screen": "order tracking: order + items, vendor, delivery, driver",
            "rest": {"requests": 4, "round_trips": 2, "bytes": rest_bytes},
            "graphql": {"requests": 1, "round_trips": 1, "bytes": gql_bytes},
            "levels": out,
        }));
        return Ok(());
    }
    println!();
    println!(
        "order-tracking screen (order + 3 items, vendor, delivery, driver), one node, same run;"
    );
    println!(
        "REST = GET order, then vendor + delivery + driver in parallel (4 requests, 2 round trips);"
    );
    println!(
        "GraphQL = one POST /graphql; {} s per level, {} alternating rounds (median);",
        o.seconds, o.rounds
    );
    println!("RTT > 0: through a relay that delays each direction by RTT/2, like a network");
    println!();
    println!(
        "bytes on the wire per screen (HTTP/1.1, headers + bodies, kept-alive): REST {rest_bytes}, GraphQL {gql_bytes} ({:.2}x)",
        gql_bytes as f64 / rest_bytes.max(1) as f64
    );
    println!();
    output::table(
        &[
            "RTT MS",
            "CLIENTS",
            "REST/S",
            "REST P50",
            "REST P99",
            "GQL/S",
            "GQL P50",
            "GQL P99",
            "GQL/REST P50",
            "GQL/REST THROUGHPUT",
        ],
        &rows,
    );
    Ok(())
}
