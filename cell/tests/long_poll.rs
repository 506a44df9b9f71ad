//! The event feed's long poll on real nodes: waiters on the leader and on a
//! follower are woken by a change within 100 ms; `wait` is bounded; and
//! thousands of waiters are capped (the rest are refused) with bounded
//! memory per waiter.

mod common;

use std::time::{Duration, Instant};

use common::harness::TestCell;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn call(
    http: &reqwest::Client,
    url: String,
    method: Method,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = http.request(method, url).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let s = r.status();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn signup(tc: &TestCell, email: &str, role: &str) -> String {
    let (s, v) = call(
        &tc.http,
        format!("{}/v1/auth/signup", tc.url(1)),
        Method::POST,
        "",
        Some(json!({"email": email, "password": "a long password", "name": email, "role": role})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v["access_token"].as_str().unwrap().to_string()
}

/// A vendor with a product and a customer; returns (customer token, vendor
/// id, product id).
async fn ready_to_order(tc: &TestCell, tag: &str) -> (String, String, String) {
    let base = tc.url(1);
    let vt = signup(tc, &format!("v-{tag}@lp.test"), "vendor").await;
    let (s, v) = call(&tc.http, format!("{base}/v1/vendors"), Method::POST, &vt, Some(json!({"name": "Deli", "kind": "restaurant", "location": {"lat": 40.7, "lng": -74.0}, "address": "1 Main St", "prep_minutes": 5}))).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let vid = v["id"].as_str().unwrap().to_string();
    let (s, p) = call(&tc.http, format!("{base}/v1/vendors/{vid}/products"), Method::POST, &vt, Some(json!({"name": "Bagel", "category": "bakery", "price": {"amount": 300, "currency": "USD"}, "stock": null}))).await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    let ct = signup(tc, &format!("c-{tag}@lp.test"), "customer").await;
    (ct, vid, p["id"].as_str().unwrap().to_string())
}

/// Quotes (on node 1) and checks out one unit through `node`.
async fn place(tc: &TestCell, node: u64, token: &str, vid: &str, pid: &str, key: &str) {
    let (s, q) = call(
        &tc.http,
        format!("{}/v1/quotes", tc.url(1)),
        Method::POST,
        token,
        Some(json!({"vendor_id": vid, "dropoff": {"lat": 40.71, "lng": -74.0}})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{q}");
    let body = json!({"quote_id": q["id"], "items": [{"product_id": pid, "quantity": 1}], "dropoff": {"location": {"lat": 40.71, "lng": -74.0}, "address": "2 Side St"}});
    let r = tc
        .http
        .post(format!("{}/v1/orders", tc.url(node)))
        .bearer_auth(token)
        .header("idempotency-key", key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiters_on_leader_and_follower_wake_within_100ms() {
    let _serial = common::SERIAL.lock().await;
    let tc = TestCell::start(3, false, &["--rate-limit-auth", "1000"])
        .await
        .unwrap();
    let leader = tc.cell.wait_leader(Duration::from_secs(10)).await.unwrap();
    let follower = (1..=3).find(|n| *n != leader).unwrap();
    let (ct, vid, pid) = ready_to_order(&tc, "wake").await;
    for (round, writer) in [leader, follower].into_iter().enumerate() {
        // Everyone is caught up: wait from the current end of the feed.
        let (_, feed) = call(
            &tc.http,
            format!("{}/v1/events", tc.url(leader)),
            Method::GET,
            &ct,
            None,
        )
        .await;
        let after = feed["next"].as_u64().unwrap();
        let waiters: Vec<_> = [leader, follower]
            .into_iter()
            .map(|node| {
                let (http, url, ct) = (
                    tc.http.clone(),
                    format!("{}/v1/events?after={after}&wait=30", tc.url(node)),
                    ct.clone(),
                );
                tokio::spawn(async move {
                    let (s, v) = call(&http, url, Method::GET, &ct, None).await;
                    (node, s, v, Instant::now())
                })
            })
            .collect();
        // Both are parked before the change.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            waiters.iter().all(|w| !w.is_finished()),
            "a waiter returned early"
        );
        place(&tc, writer, &ct, &vid, &pid, &format!("wake-{round}")).await;
        let acked = Instant::now();
        for w in waiters {
            let (node, s, v, woke) = w.await.unwrap();
            assert_eq!(s, StatusCode::OK, "{v}");
            assert_eq!(v["events"][0]["type"], "order.placed", "node {node}: {v}");
            let late = woke.saturating_duration_since(acked);
            eprintln!("write via node {writer}: node {node} woke {late:?} after the ack");
            assert!(
                late <= Duration::from_millis(100),
                "node {node} (leader {leader}) woke {late:?} after the write was acknowledged"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_is_bounded() {
    let tc = TestCell::start(1, false, &[]).await.unwrap();
    let ct = signup(&tc, "bounded@lp.test", "customer").await;
    let base = tc.url(1);
    let (s, v) = call(
        &tc.http,
        format!("{base}/v1/events?wait=61"),
        Method::GET,
        &ct,
        None,
    )
    .await;
    assert_eq!(
        (s, v["code"].clone()),
        (StatusCode::BAD_REQUEST, json!("validation_failed")),
        "{v}"
    );
    let (s, v) = call(
        &tc.http,
        format!("{base}/v1/events?wait=-1"),
        Method::GET,
        &ct,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    // Nothing happens: the poll answers empty when its wait is up.
    let t = Instant::now();
    let (s, v) = call(
        &tc.http,
        format!("{base}/v1/events?after=0&wait=1"),
        Method::GET,
        &ct,
        None,
    )
    .await;
    assert_eq!((s, v["events"].clone()), (StatusCode::OK, json!([])), "{v}");
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
}

/// Waits for the status line of a raw HTTP/1.1 response, if one comes
/// within `within`.
async fn status_of(s: &mut tokio::net::TcpStream, within: Duration) -> Option<u16> {
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(within, s.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    let line = std::str::from_utf8(&buf[..n]).ok()?;
    line.split(' ').nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_waiters_are_capped_and_cost_little_memory() {
    let _serial = common::SERIAL.lock().await;
    const CAP: usize = 1500;
    const EXTRA: usize = 300;
    // This process holds every client socket (the node lifts its own limit).
    edge::fd_limit::raise_fd_limit();
    let cap = CAP.to_string();
    let args = [
        "--max-long-polls",
        &cap,
        "--rate-limit-principal",
        "1000000",
        "--rate-limit-ip",
        "1000000",
    ];
    let tc = TestCell::start(1, false, &args).await.unwrap();
    let ct = signup(&tc, "many@lp.test", "customer").await;
    let addr = tc.url(1).trim_start_matches("http://").to_string();
    let request = format!(
        "GET /v1/events?after=0&wait=60 HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ct}\r\n\r\n"
    );
    let rss_before = tc.cell.rss_bytes(1).unwrap();
    let mut conns = Vec::new();
    for i in 0..CAP + EXTRA {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        conns.push(s);
        if i % 250 == 249 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The ones past the cap were refused at once; the rest still wait.
    let (mut refused, mut waiting) = (0, 0);
    for s in &mut conns {
        match status_of(s, Duration::from_millis(5)).await {
            Some(503) => refused += 1,
            None => waiting += 1,
            Some(other) => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((waiting, refused), (CAP, EXTRA));
    let rss_after = tc.cell.rss_bytes(1).unwrap();
    let per_waiter = rss_after.saturating_sub(rss_before) / CAP as u64;
    assert!(
        per_waiter < 64 * 1024,
        "{per_waiter} bytes of memory per waiter"
    );
    // Hanging up frees their places.
    drop(conns);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(request.replace("wait=60", "wait=1").as_bytes())
        .await
        .unwrap();
    assert_eq!(status_of(&mut s, Duration::from_secs(5)).await, Some(200));
}
