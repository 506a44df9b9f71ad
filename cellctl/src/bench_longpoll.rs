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

/// Changes made while everyone waits; each wakes one waiter.
const CHANGES: usize = 50;

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

    // A shop, and one customer per waiter.
    let vt = mint(&http, &base, &ops, "vendor", "bench.acc_lpvendor").await?;
    let v = post(&http, format!("{base}/v1/vendors"), Some(&vt), json!({"name": "Deli", "kind": "restaurant", "location": {"lat": 40.7, "lng": -74.0}, "address": "1 Main St", "prep_minutes": 5})).await?;
    let vid = v["id"].as_str().context("vendor id")?.to_string();
    let p = post(&http, format!("{base}/v1/vendors/{vid}/products"), Some(&vt), json!({"name": "Bagel", "category": "bakery", "price": {"amount": 300, "currency": "USD"}, "stock": null})).await?;
    eprintln!("minting {} customers…", o.waiters);
    let mut tokens = Vec::with_capacity(o.waiters);
    for i in 0..o.waiters {
        tokens.push(
            mint(
                &http,
                &base,
                &ops,
                "customer",
                &format!("bench.acc_lp{i:07}"),
            )
            .await?,
        );
    }
    let mut quotes = Vec::new();
    for t in tokens.iter().take(CHANGES) {
        let q = post(
            &http,
            format!("{base}/v1/quotes"),
            Some(t),
            json!({"vendor_id": vid, "dropoff": {"lat": 40.71, "lng": -74.0}}),
        )
        .await?;
        quotes.push(q["id"].clone());
    }

    let addr = base.trim_start_matches("http://").to_string();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = cell.rss_bytes(1).unwrap_or(0);
    eprintln!("opening {} long polls, one per customer…", o.waiters);
    let (woke_tx, mut woke_rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant, bool)>();
    for (i, t) in tokens.iter().enumerate() {
        let request = format!(
            "GET /v1/events?after=0&wait=60 HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {t}\r\n\r\n"
        );
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
            let _ = tx.send((i, Instant::now(), ok));
            // Hold the connection until the end of the run.
            let _ = tokio::time::timeout(Duration::from_secs(120), s.read(&mut buf)).await;
        });
        if i % 500 == 499 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    drop(woke_tx);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_waiting = cell.rss_bytes(1).unwrap_or(0);
    anyhow::ensure!(woke_rx.is_empty(), "some polls returned before any change");

    eprintln!("{CHANGES} checkouts, each by one waiting customer…");
    let mut after_ack = Vec::with_capacity(CHANGES);
    let mut after_send = Vec::with_capacity(CHANGES);
    let mut writes = Vec::with_capacity(CHANGES);
    let mut others = 0usize;
    let mut failed = 0usize;
    for (j, quote) in quotes.iter().enumerate() {
        let sent = Instant::now();
        let r = http
            .post(format!("{base}/v1/orders"))
            .bearer_auth(&tokens[j])
            .header("idempotency-key", format!("longpoll-{j}"))
            .json(&json!({"quote_id": quote, "items": [{"product_id": p["id"], "quantity": 1}], "dropoff": {"location": {"lat": 40.71, "lng": -74.0}, "address": "2 Side St"}}))
            .send()
            .await?;
        let acked = Instant::now();
        anyhow::ensure!(r.status().is_success(), "order: {}", r.status());
        writes.push(acked - sent);
        loop {
            let (i, at, ok) = tokio::time::timeout(Duration::from_secs(10), woke_rx.recv())
                .await
                .context("the customer's poll did not answer")?
                .context("waiters gone")?;
            if i != j {
                others += 1;
                continue;
            }
            if !ok {
                failed += 1;
            }
            after_ack.push(at.saturating_duration_since(acked));
            after_send.push(at.saturating_duration_since(sent));
            break;
        }
    }
    // Anyone else who answered meanwhile was woken for nothing.
    tokio::time::sleep(Duration::from_millis(200)).await;
    while woke_rx.try_recv().is_ok() {
        others += 1;
    }
    after_ack.sort();
    after_send.sort();
    writes.sort();
    let q = |v: &[Duration], p: f64| {
        v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let spread =
        |v: &[Duration]| format!("{} / {} / {}", ms(q(v, 0.5)), ms(q(v, 0.99)), ms(q(v, 1.0)));
    let per_waiter = rss_waiting.saturating_sub(rss_before) / o.waiters.max(1) as u64;
    if o.json {
        output::json(&json!({
            "waiters": o.waiters, "changes": CHANGES, "failed": failed, "others_woken": others,
            "rss_before": rss_before, "rss_waiting": rss_waiting, "bytes_per_waiter": per_waiter,
            "write_p50_ms": q(&writes, 0.5).as_secs_f64() * 1e3,
            "woken_after_ack_ms": {"p50": q(&after_ack, 0.5).as_secs_f64() * 1e3, "p99": q(&after_ack, 0.99).as_secs_f64() * 1e3, "max": q(&after_ack, 1.0).as_secs_f64() * 1e3},
        }));
        return Ok(());
    }
    println!();
    println!(
        "{} long polls (GET /v1/events?wait=60, one customer and one connection each) on one node;",
        o.waiters
    );
    println!(
        "{CHANGES} checkouts one after another, each appending to one waiting customer's feed"
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
            vec!["the checkout itself, p50".into(), ms(q(&writes, 0.5))],
            vec![
                "its waiter answered after the checkout was sent: p50 / p99 / max".into(),
                spread(&after_send),
            ],
            vec![
                "… after the checkout's ack (0: before it): p50 / p99 / max".into(),
                spread(&after_ack),
            ],
            vec![
                "other waiters woken (should be 0)".into(),
                others.to_string(),
            ],
            vec!["failed answers".into(), failed.to_string()],
        ],
    );
    Ok(())
}
