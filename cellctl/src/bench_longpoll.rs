//! `cellctl bench longpoll`: many waiters on one node's event feed — the
//! node's memory per waiter, and how soon after a change every waiter has
//! its answer.

use std::time::{Duration, Instant};

use anyhow::Context;
use cell::local::{find_cell_binary, LocalCell};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::bench::{bench_client, TempDir};
use crate::bench_dispatch::mint;
use crate::bench_market::{post, NO_LIMITS};
use crate::output;

pub struct LongPollBenchOptions {
    pub waiters: usize,
    pub json: bool,
}

fn ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1000.0)
}

pub async fn run(o: LongPollBenchOptions) -> anyhow::Result<()> {
    edge::fd_limit::raise_fd_limit();
    let tmp = TempDir::new("marketcell-longpoll")?;
    let max = (o.waiters + 100).to_string();
    let mut args = NO_LIMITS.to_vec();
    args.extend(["--max-long-polls", &max]);
    let mut cell = LocalCell::new(&find_cell_binary()?, "bench", &tmp.path)?.with_args(&args);
    cell.form(1).await?;
    let base = cell.api_url(1);
    let ops = cell.token.clone();
    let http = bench_client(8)?;

    // A shop and a customer whose order will wake everyone.
    let vt = mint(&http, &base, &ops, "vendor", "bench.acc_lpvendor").await?;
    let v = post(&http, format!("{base}/v1/vendors"), Some(&vt), json!({"name": "Deli", "kind": "restaurant", "location": {"lat": 40.7, "lng": -74.0}, "address": "1 Main St", "prep_minutes": 5})).await?;
    let vid = v["id"].as_str().context("vendor id")?.to_string();
    let p = post(&http, format!("{base}/v1/vendors/{vid}/products"), Some(&vt), json!({"name": "Bagel", "category": "bakery", "price": {"amount": 300, "currency": "USD"}, "stock": null})).await?;
    let ct = mint(&http, &base, &ops, "customer", "bench.acc_lpcustomer").await?;
    let q = post(
        &http,
        format!("{base}/v1/quotes"),
        Some(&ct),
        json!({"vendor_id": vid, "dropoff": {"lat": 40.71, "lng": -74.0}}),
    )
    .await?;

    let addr = base.trim_start_matches("http://").to_string();
    let request = format!(
        "GET /v1/events?after=0&wait=60 HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ct}\r\n\r\n"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = cell.rss_bytes(1).unwrap_or(0);
    eprintln!("opening {} long polls…", o.waiters);
    let (woke_tx, mut woke_rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, bool)>();
    for i in 0..o.waiters {
        let mut s = tokio::net::TcpStream::connect(&addr)
            .await
            .with_context(|| format!("connection {i}"))?;
        s.write_all(request.as_bytes()).await?;
        let tx = woke_tx.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            let ok = match s.read(&mut buf).await {
                Ok(n) => buf[..n].starts_with(b"HTTP/1.1 200"),
                Err(_) => false,
            };
            let _ = tx.send((Instant::now(), ok));
            drop(s);
        });
        if i % 500 == 499 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    drop(woke_tx);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_waiting = cell.rss_bytes(1).unwrap_or(0);
    anyhow::ensure!(woke_rx.is_empty(), "some polls returned before the change");

    eprintln!("placing an order: every waiter's feed changes…");
    let sent = Instant::now();
    let r = http
        .post(format!("{base}/v1/orders"))
        .bearer_auth(&ct)
        .header("idempotency-key", "longpoll-bench")
        .json(&json!({"quote_id": q["id"], "items": [{"product_id": p["id"], "quantity": 1}], "dropoff": {"location": {"lat": 40.71, "lng": -74.0}, "address": "2 Side St"}}))
        .send()
        .await?;
    let acked = Instant::now();
    anyhow::ensure!(r.status().is_success(), "order: {}", r.status());
    let mut after_ack = Vec::with_capacity(o.waiters);
    let mut failed = 0usize;
    while let Ok(Some((at, ok))) =
        tokio::time::timeout(Duration::from_secs(30), woke_rx.recv()).await
    {
        if ok {
            after_ack.push(at.saturating_duration_since(acked));
        } else {
            failed += 1;
        }
    }
    after_ack.sort();
    let q = |p: f64| {
        after_ack
            .get(((after_ack.len() as f64 * p) as usize).min(after_ack.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let per_waiter = rss_waiting.saturating_sub(rss_before) / o.waiters.max(1) as u64;
    let write = acked - sent;
    if o.json {
        output::json(&json!({
            "waiters": o.waiters, "answered": after_ack.len(), "failed": failed,
            "rss_before": rss_before, "rss_waiting": rss_waiting, "bytes_per_waiter": per_waiter,
            "write_ms": write.as_secs_f64() * 1e3,
            "woken_after_ack_ms": {"p50": q(0.5).as_secs_f64() * 1e3, "p99": q(0.99).as_secs_f64() * 1e3, "max": q(1.0).as_secs_f64() * 1e3},
        }));
        return Ok(());
    }
    println!();
    println!(
        "{} long polls (GET /v1/events?wait=60, one connection each) on one node, one change wakes them all",
        o.waiters
    );
    output::table(
        &["MEASURE", "RESULT"],
        &[
            vec![
                "node RSS before / while waiting".into(),
                format!("{} MiB / {} MiB", rss_before >> 20, rss_waiting >> 20),
            ],
            vec![
                "memory per waiter".into(),
                format!("{:.1} KiB", per_waiter as f64 / 1024.0),
            ],
            vec!["the write (checkout) itself".into(), ms(write)],
            vec![
                "answered after the write's ack: p50 / p99 / last".into(),
                format!("{} / {} / {}", ms(q(0.5)), ms(q(0.99)), ms(q(1.0))),
            ],
            vec![
                "answered / failed".into(),
                format!("{} / {failed}", after_ack.len()),
            ],
        ],
    );
    Ok(())
}
