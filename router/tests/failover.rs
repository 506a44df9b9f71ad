//! Failures behind the router: a leader killed under load, a whole cell
//! down.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

/// An ops access token of `cell`, minted at one of its nodes with the
/// bootstrap token (routers accept access tokens only).
async fn ops_token(w: &World, cell: &str) -> String {
    let c = &w.cells[cell];
    let r = call(&w.http, &c.api_url(1), Method::POST, "/admin/tokens")
        .token(&c.token)
        .json(json!({"role": "ops", "ttl_seconds": 3600}))
        .send()
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body["access_token"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_kill_under_load_loses_no_acknowledged_write() {
    let _serial = SERIAL.lock().await;
    let mut w = World::start(3, 2).await;
    let ops = ops_token(&w, "nyc").await;
    let (_, cust, _, _) = signup(&w.http, &w.router(0), "dan@nyc.test", "customer", at(NYC)).await;
    let (_, vid, pid) = shop(&w.http, &w.router(1), "soup@nyc.test", NYC).await;

    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let failures: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let stop_at = Instant::now() + Duration::from_secs(12);
    let mut tasks = Vec::new();
    // Config-store writers: each write is repeated until acknowledged.
    for t in 0..6 {
        let (http, acked, failures, ops) =
            (w.http.clone(), acked.clone(), failures.clone(), ops.clone());
        let bases = [w.router(0), w.router(1)];
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while Instant::now() < stop_at {
                let key = format!("w{t}-{n}");
                loop {
                    let r = call(&http, &bases[n % 2], Method::PUT, &format!("/v1/kv/{key}"))
                        .token(&ops)
                        .json(json!({"n": n}))
                        .try_send()
                        .await;
                    match r {
                        Ok(r) if r.status.is_success() => break,
                        _ => {
                            failures.lock().unwrap().push(Instant::now());
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                acked.lock().unwrap().push(key);
                n += 1;
            }
            None
        }));
    }
    // A customer checking out with idempotency keys, retrying each key until
    // it is answered.
    let orders: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    {
        let (http, orders, failures, cust) = (
            w.http.clone(),
            orders.clone(),
            failures.clone(),
            cust.clone(),
        );
        let bases = [w.router(0), w.router(1)];
        tasks.push(tokio::spawn(async move {
            let mut n = 0usize;
            while Instant::now() < stop_at {
                let base = &bases[n % 2];
                let quote = loop {
                    match call(&http, base, Method::POST, "/v1/quotes")
                        .token(&cust)
                        .json(quote_body(&vid, NYC))
                        .try_send()
                        .await
                    {
                        Ok(r) if r.status == StatusCode::CREATED => {
                            break r.body["id"].as_str().unwrap().to_string()
                        }
                        _ => {
                            failures.lock().unwrap().push(Instant::now());
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                };
                let key = format!("checkout-{n}");
                let id = loop {
                    match call(&http, base, Method::POST, "/v1/orders")
                        .token(&cust)
                        .header("idempotency-key", &key)
                        .json(order_body(&quote, &pid, NYC))
                        .try_send()
                        .await
                    {
                        Ok(r) if r.status.is_success() => {
                            break r.body["id"].as_str().unwrap().to_string()
                        }
                        Ok(r) if r.status.is_client_error() => {
                            panic!("{key}: {} {}", r.status, r.body)
                        }
                        _ => {
                            failures.lock().unwrap().push(Instant::now());
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                };
                orders.lock().unwrap().insert(id);
                n += 1;
            }
            Some(n)
        }));
    }

    tokio::time::sleep(Duration::from_secs(3)).await;
    let nyc = w.cells.get_mut("nyc").unwrap();
    let leader = nyc.wait_leader(Duration::from_secs(10)).await.unwrap();
    let killed_at = Instant::now();
    nyc.kill(leader);
    let mut checkouts = 0;
    for t in tasks {
        if let Some(n) = t.await.unwrap() {
            checkouts = n;
        }
    }

    // Errors only while the cell had no leader.
    let failures = failures.lock().unwrap().clone();
    if let (Some(first), Some(last)) = (failures.first(), failures.last()) {
        let window = last.duration_since(*first);
        println!(
            "{} failed attempts within {window:?} after the leader kill",
            failures.len()
        );
        assert!(
            *first >= killed_at - Duration::from_millis(100),
            "failures before the kill"
        );
        assert!(
            window < Duration::from_secs(6),
            "requests failed for {window:?} ({} failures)",
            failures.len()
        );
    }

    // Every acknowledged write is there, read back linearizably through
    // the routers.
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 50, "too little load: {}", acked.len());
    for (i, key) in acked.iter().enumerate() {
        let r = call(&w.http, &w.router(i), Method::GET, &format!("/v1/kv/{key}"))
            .token(&ops)
            .header("x-consistency", "linearizable")
            .send()
            .await;
        assert_eq!(r.status, StatusCode::OK, "{key} lost: {}", r.body);
    }
    // Retried checkouts made exactly one order per key (every page of the
    // customer's orders).
    let mut ids = BTreeSet::new();
    let mut cursor = String::new();
    loop {
        let page = call(
            &w.http,
            &w.router(0),
            Method::GET,
            &format!("/v1/orders?limit=100{cursor}"),
        )
        .token(&cust)
        .header("x-consistency", "linearizable")
        .send()
        .await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        ids.extend(
            page.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["id"].as_str().unwrap().to_string()),
        );
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    assert!(checkouts > 0);
    assert_eq!(ids.len(), checkouts, "one order per idempotency key");
    assert_eq!(ids, *orders.lock().unwrap());
}

/// What a request to a cell that is down gets: a problem, at once.
fn assert_outage_answer(r: &Reply) {
    assert!(
        matches!(
            r.status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::BAD_GATEWAY
        ),
        "{} {}",
        r.status,
        r.body
    );
    assert_eq!(r.headers["content-type"], "application/problem+json");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cell_outage_stays_in_its_region() {
    let _serial = SERIAL.lock().await;
    let mut w = World::start(3, 2).await;
    let (_, nyc_cust, _, _) =
        signup(&w.http, &w.router(0), "eve@nyc.test", "customer", at(NYC)).await;
    let (_, lon_cust, _, _) =
        signup(&w.http, &w.router(1), "fay@lon.test", "customer", at(LON)).await;
    for (i, t) in [&nyc_cust, &lon_cust].into_iter().enumerate() {
        let r = call(&w.http, &w.router(i), Method::GET, "/v1/me")
            .token(t)
            .send()
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }

    // A long poll waiting in region A when its cell goes down ends with a
    // problem at once, instead of hanging until its wait is up.
    let poll = {
        let (http, base, t) = (w.http.clone(), w.router(1), lon_cust.clone());
        tokio::spawn(async move {
            call(&http, &base, Method::GET, "/v1/events?wait=30")
                .token(&t)
                .send()
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!poll.is_finished(), "the long poll did not wait");

    let lon = w.cells.get_mut("lon").unwrap();
    for id in [1, 2, 3] {
        lon.kill(id);
    }
    let killed = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("a long poll on a dead cell hung")
        .unwrap();
    assert_outage_answer(&r);
    assert!(
        killed.elapsed() < Duration::from_secs(3),
        "{:?}",
        killed.elapsed()
    );

    let until = Instant::now() + Duration::from_secs(4);
    let mut nyc_ok = 0;
    let mut lon_answers = 0;
    let mut slowest_lon = Duration::ZERO;
    while Instant::now() < until {
        for i in 0..2 {
            let r = call(&w.http, &w.router(i), Method::GET, "/v1/me")
                .token(&nyc_cust)
                .send()
                .await;
            assert_eq!(
                r.status,
                StatusCode::OK,
                "region B saw an error: {}",
                r.body
            );
            nyc_ok += 1;
            let started = Instant::now();
            let r = call(&w.http, &w.router(i), Method::GET, "/v1/me")
                .token(&lon_cust)
                .send()
                .await;
            slowest_lon = slowest_lon.max(started.elapsed());
            assert_outage_answer(&r);
            lon_answers += 1;
        }
    }
    assert!(nyc_ok > 10 && lon_answers > 10);
    // Fast failure, not a hang: far below any client timeout.
    assert!(slowest_lon < Duration::from_secs(3), "{slowest_lon:?}");
    // After the health checks noticed, the answer is the clear one.
    let r = call(&w.http, &w.router(0), Method::GET, "/v1/me")
        .token(&lon_cust)
        .send()
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "cell_unavailable")
    );
    assert!(r.headers.contains_key("retry-after"));
    // A login the router must ask every cell about: with the cell that may
    // hold the account down, "wrong password" would be a guess.
    let r = call(&w.http, &w.router(0), Method::POST, "/v1/auth/login")
        .json(json!({"email": "fay@lon.test", "password": "a long password"}))
        .send()
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "cell_unavailable"),
        "{}",
        r.body
    );
    let ready = readyz(&w.http, &w.router(0)).await;
    assert_eq!(ready["cells_down"], json!(["lon"]));
}
