//! Search on a real 3-node cell: committed catalog changes become
//! searchable on every node within a second, at once for a search that
//! carries the write's `X-Cell-Index`; updates, deletes and stock are
//! reflected; hostile queries never break a node.

mod common;

use std::time::{Duration, Instant};

use common::harness::TestCell;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn search_until(
    tc: &TestCell,
    node: u64,
    query: &str,
    pred: impl Fn(&Value) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let v: Value = tc
            .http
            .get(format!("{}/v1/search?{query}", tc.url(node)))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if pred(&v) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "node {node} never showed {query}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ids(v: &Value) -> Vec<String> {
    v["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap().to_string())
        .collect()
}

/// Signs up a vendor account on `base` and creates its restaurant; returns
/// (access token, vendor id).
async fn restaurant(tc: &TestCell, base: &str, email: &str, name: &str) -> (String, String) {
    let v: Value = tc
        .http
        .post(format!("{base}/v1/auth/signup"))
        .json(
            &json!({"email": email, "password": "a long password", "name": "S", "role": "vendor"}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = v["access_token"].as_str().unwrap().to_string();
    let vendor: Value = tc
        .http
        .post(format!("{base}/v1/vendors"))
        .bearer_auth(&token)
        .json(&json!({"name": name, "kind": "restaurant", "location": {"lat": 40.71, "lng": -74.0}, "address": "1 Main St", "prep_minutes": 10}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let vid = vendor["id"].as_str().unwrap().to_string();
    (token, vid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_changes_become_searchable_on_every_node() {
    let _serial = common::SERIAL.lock().await;
    let mut tc = TestCell::start(3, false, &["--rate-limit-auth", "1000"])
        .await
        .expect("cell");
    let http = tc.http.clone();
    let base = tc.url(1);
    let (token, vid) = restaurant(&tc, &base, "s@example.com", "Luigi's").await;
    let mut pids = Vec::new();
    for (name, category, stock) in [
        ("Margherita Pizza", "pizza", 5),
        ("Pepperoni Pizza", "pizza", 0),
        ("Tiramisu", "dessert", 3),
    ] {
        let p: Value = http
            .post(format!("{base}/v1/vendors/{vid}/products"))
            .bearer_auth(&token)
            .json(&json!({"name": name, "description": format!("house {name}"), "category": category, "price": {"amount": 1000, "currency": "USD"}, "stock": stock}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        pids.push(p["id"].as_str().unwrap().to_string());
    }
    // Visible on every node, typo and prefix included.
    for node in 1..=3 {
        let t = search_until(&tc, node, "q=margherta", |v| ids(v).contains(&pids[0])).await;
        assert!(
            t < Duration::from_secs(1),
            "node {node}: searchable after {t:?}"
        );
        search_until(&tc, node, "q=tira", |v| ids(v).first() == Some(&pids[2])).await;
    }
    let v: Value = http
        .get(format!("{base}/v1/search?q=pizza"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["facets"]["category"]["pizza"], 2, "{v}");
    assert_eq!(v["hits"][0]["vendor"]["name"], "Luigi's");
    let v: Value = http
        .get(format!("{base}/v1/search?q=pizza&in_stock=true"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        ids(&v),
        vec![pids[0].clone()],
        "out of stock not excluded: {v}"
    );
    let v: Value = http
        .get(format!(
            "{base}/v1/search?q=pizza&lat=40.71&lng=-74.0&radius_km=1&sort=distance"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["total"], 2);
    assert!(v["hits"][0]["distance_km"].as_f64().unwrap() < 1.0);
    let v: Value = http
        .get(format!(
            "{base}/v1/search?q=pizza&lat=41.5&lng=-74.0&radius_km=5"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["total"], 0, "{v}");

    // Update: new text matches, old does not; delete: gone.
    let r = http
        .patch(format!("{base}/v1/products/{}", pids[0]))
        .bearer_auth(&token)
        .json(&json!({"name": "Quattro Formaggi", "description": "four cheeses"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = http
        .delete(format!("{base}/v1/products/{}", pids[2]))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    for node in 1..=3 {
        search_until(&tc, node, "q=formaggi", |v| ids(v).contains(&pids[0])).await;
        search_until(&tc, node, "q=margherita", |v| !ids(v).contains(&pids[0])).await;
        search_until(&tc, node, "q=tiramisu", |v| ids(v).is_empty()).await;
    }

    // Read your writes: a search that carries the write's X-Cell-Index, or
    // asks for a linearizable answer, sees the write at once on any node
    // (without them a search may miss it for up to the 200 ms batch).
    for (node, by_index, linearizable) in [
        (1, "Stromboli", "Focaccia"),
        (2, "Bruschetta", "Arancini"),
        (3, "Cannoli", "Panzanella"),
    ] {
        for (name, header) in [(by_index, "x-cell-index"), (linearizable, "x-consistency")] {
            let r = http
                .post(format!("{base}/v1/vendors/{vid}/products"))
                .bearer_auth(&token)
                .json(&json!({"name": name, "description": "", "category": "bakery", "price": {"amount": 900, "currency": "USD"}}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::CREATED);
            let written = r.headers()["x-cell-index"].to_str().unwrap().to_string();
            let id = r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string();
            let value = if header == "x-cell-index" {
                written.as_str()
            } else {
                "linearizable"
            };
            let r = http
                .get(format!("{}/v1/search?q={name}", tc.url(node)))
                .header(header, value)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            let v: Value = r.json().await.unwrap();
            assert_eq!(ids(&v), vec![id], "node {node}, {header}: {v}");
        }
    }
    let r = http
        .get(format!("{base}/v1/search?q=pizza"))
        .header("x-cell-index", "soon")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // Hostile queries: 200 or 400, never a 5xx.
    for q in [
        "q=%22unbalanced",
        "q=AND%20OR%20NOT%20((",
        "q=%F0%9F%8D%95",
        "q=%D8%A8%D9%8A%D8%AA%D8%B2%D8%A7",
        "lat=1",
        "radius_km=5",
        "sort=distance",
        "limit=0",
        "cursor=abc",
        "kind=spaceship",
        "min_price=-1",
        "bogus=1",
    ] {
        let r = http
            .get(format!("{base}/v1/search?{q}"))
            .send()
            .await
            .unwrap();
        assert!(!r.status().is_server_error(), "{q}: {}", r.status());
    }
    let long = "a".repeat(300);
    let r = http
        .get(format!("{base}/v1/search?q={long}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // A rebuild on request leaves the same answers; metrics show the index.
    let r = http
        .post(format!("{base}/admin/search/reindex"))
        .bearer_auth(&tc.cell.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = http
        .post(format!("{base}/admin/search/reindex"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    search_until(&tc, 1, "q=formaggi", |v| ids(v).contains(&pids[0])).await;
    let metrics = tc.metrics(1).await;
    assert!(metrics.contains("search_query_seconds_count"), "{metrics}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("search_documents ") && !l.ends_with(" 0")),
        "{metrics}"
    );

    // A restarted node comes back with a consistent index.
    tc.cell.kill(2);
    tc.start_node(2).unwrap();
    tc.cell
        .wait_healthy(2, Duration::from_secs(30))
        .await
        .unwrap();
    search_until(&tc, 2, "q=formaggi", |v| ids(v).contains(&pids[0])).await;
    search_until(&tc, 2, "q=tiramisu", |v| ids(v).is_empty()).await;
}

async fn search_json(tc: &TestCell, node: u64, query: &str) -> Value {
    tc.http
        .get(format!("{}/v1/search?{query}", tc.url(node)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The ids of every page of `query`'s hits on `node`, sorted.
async fn all_hits(tc: &TestCell, node: u64, query: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = match &cursor {
            Some(c) => search_json(tc, node, &format!("{query}&cursor={c}")).await,
            None => search_json(tc, node, query).await,
        };
        found.extend(ids(&page));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    found.sort();
    found
}

async fn status_u64(tc: &TestCell, node: u64, field: &str) -> u64 {
    tc.status(node).await.unwrap()[field].as_u64().unwrap_or(0)
}

/// A follower that was down while the leader snapshotted and purged its log
/// catches up by snapshot install, and its search index then answers like
/// the leader's: created products found, deleted gone, updated text matches
/// the new text only, out-of-stock products excluded by `in_stock=true`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_caught_up_by_snapshot_install_searches_like_the_leader() {
    let _serial = common::SERIAL.lock().await;
    let mut tc = TestCell::start(
        3,
        false,
        &[
            "--rate-limit-auth",
            "1000",
            "--rate-limit-principal",
            "100000",
            "--raft-snapshot-every",
            "50",
            "--raft-keep-logs",
            "5",
        ],
    )
    .await
    .expect("cell");
    let leader = tc.cell.wait_leader(Duration::from_secs(10)).await.unwrap();
    let follower = (1..=3).find(|&n| n != leader).unwrap();
    let http = tc.http.clone();
    let base = tc.url(leader);
    let (token, vid) = restaurant(&tc, &base, "snap@example.com", "Harbor Kitchen").await;
    let create = |name: String, description: String, stock: i64| {
        let (http, base, token, vid) = (http.clone(), base.clone(), token.clone(), vid.clone());
        async move {
            let r = http
                .post(format!("{base}/v1/vendors/{vid}/products"))
                .bearer_auth(&token)
                .json(&json!({"name": name, "description": description, "category": "mains", "price": {"amount": 1200, "currency": "USD"}, "stock": stock}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::CREATED, "{name}");
            let p: Value = r.json().await.unwrap();
            p["id"].as_str().unwrap().to_string()
        }
    };
    // What the follower indexes before it goes down.
    let kept = create("Margherita Pizza".into(), "tomato and basil".into(), 5).await;
    let deleted = create("Tiramisu".into(), "coffee and mascarpone".into(), 5).await;
    let updated = create("Garlic Bread".into(), "toasted with butter".into(), 5).await;
    let sold_out = create("Pepperoni Pizza".into(), "spicy salami".into(), 5).await;
    search_until(&tc, follower, "q=pepperoni", |v| ids(v).contains(&sold_out)).await;
    let follower_applied = status_u64(&tc, follower, "applied").await;
    tc.cell.stop(follower);

    // While it is down: new products, an update, a delete, a sell-out, and
    // enough entries that the leader snapshots and purges its log (raft
    // purges in batches of 256 entries).
    let mut created = Vec::new();
    for i in 0..300 {
        created.push(create(format!("Seasonal Soup {i}"), "slow cooked broth".into(), 10).await);
    }
    let r = http
        .patch(format!("{base}/v1/products/{updated}"))
        .bearer_auth(&token)
        .json(&json!({"name": "Rosemary Focaccia", "description": "olive oil and sea salt"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = http
        .delete(format!("{base}/v1/products/{deleted}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = http
        .put(format!("{base}/v1/products/{sold_out}/stock"))
        .bearer_auth(&token)
        .json(&json!({"stock": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let last: u64 = r.headers()["x-cell-index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let purged = loop {
        tc.admin(leader, Method::POST, "/admin/snapshot", None)
            .await
            .unwrap();
        let purged = status_u64(&tc, leader, "purged_index").await;
        if purged > follower_applied {
            break purged;
        }
        assert!(
            Instant::now() < deadline,
            "the leader's log must be purged past what the follower has (purged {purged}, follower applied {follower_applied})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    tc.start_node(follower).unwrap();
    tc.cell
        .wait_healthy(follower, Duration::from_secs(30))
        .await
        .unwrap();
    tc.wait_applied(follower, last, Duration::from_secs(30))
        .await
        .unwrap();
    // The entries after `follower_applied` up to `purged` exist only in
    // snapshots now: the follower can only have caught up by installing one.
    let installed = status_u64(&tc, follower, "snapshot_index").await;
    assert!(
        installed >= purged,
        "follower snapshot {installed}, leader purged {purged}"
    );

    let queries = [
        "q=margherita".to_string(),
        "q=tiramisu".to_string(),
        "q=focaccia".to_string(),
        "q=garlic%20bread%20".to_string(),
        "q=pepperoni".to_string(),
        "q=pepperoni&in_stock=true".to_string(),
        "q=pizza&in_stock=true".to_string(),
        "q=seasonal%20soup%20&limit=100".to_string(),
        "q=sup%20&limit=100".to_string(),
        "q=&limit=100&sort=price_asc".to_string(),
    ];
    // Equal hits tie in index order, which an index built up write by
    // write and one rebuilt from a snapshot need not share: the two nodes
    // must find the same documents (every page of them), total and facets.
    for q in &queries {
        let on_leader = search_json(&tc, leader, q).await;
        let leader_hits = all_hits(&tc, leader, q).await;
        search_until(&tc, follower, q, |v| {
            v["total"] == on_leader["total"] && v["facets"] == on_leader["facets"]
        })
        .await;
        assert_eq!(all_hits(&tc, follower, q).await, leader_hits, "{q}");
    }
    // And the answers are the right ones.
    let on_follower = |q: &'static str| search_json(&tc, follower, q);
    assert!(ids(&on_follower("q=margherita").await).contains(&kept));
    assert!(ids(&on_follower("q=tiramisu").await).is_empty());
    assert_eq!(ids(&on_follower("q=focaccia").await), vec![updated.clone()]);
    assert!(!ids(&on_follower("q=garlic%20bread%20").await).contains(&updated));
    assert!(ids(&on_follower("q=pepperoni").await).contains(&sold_out));
    assert!(!ids(&on_follower("q=pepperoni&in_stock=true").await).contains(&sold_out));
    let soups = on_follower("q=seasonal%20soup%20&limit=100").await;
    assert_eq!(soups["total"], 300, "{soups}");
    let found = ids(&soups);
    assert_eq!(found.len(), 100);
    assert!(found.iter().all(|id| created.contains(id)));
}

/// Posts `body` (none when null) to `path` on `node` as `token` (anonymous
/// when empty), with an idempotency key when given; the status and JSON
/// answer.
async fn post_as(
    tc: &TestCell,
    node: u64,
    path: &str,
    token: &str,
    key: Option<&str>,
    body: Value,
) -> (StatusCode, Value) {
    let mut req = tc.http.post(format!("{}{path}", tc.url(node)));
    if !token.is_empty() {
        req = req.bearer_auth(token);
    }
    if !body.is_null() {
        req = req.json(&body);
    }
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    let r = req.send().await.unwrap();
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

/// Checkouts and refunds move a product in and out of `in_stock=true`
/// results on every node when its last unit goes or comes back (only those
/// stock moves re-index it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selling_out_and_a_refund_move_a_product_in_stock_search_on_every_node() {
    let _serial = common::SERIAL.lock().await;
    let tc = TestCell::start(3, false, &["--rate-limit-auth", "1000"])
        .await
        .expect("cell");
    let leader = tc.cell.wait_leader(Duration::from_secs(10)).await.unwrap();
    let base = tc.url(leader);
    let (vendor, vid) = restaurant(&tc, &base, "last@example.com", "Last Slice").await;
    let (s, p) = post_as(&tc, leader, &format!("/v1/vendors/{vid}/products"), &vendor, None,
        json!({"name": "Calzone", "description": "folded", "category": "mains", "price": {"amount": 900, "currency": "USD"}, "stock": 2})).await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    let pid = p["id"].as_str().unwrap().to_string();
    let (s, v) = post_as(&tc, leader, "/v1/auth/signup", "", None,
        json!({"email": "hungry@example.com", "password": "a long password", "name": "H", "role": "customer"})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let customer = v["access_token"].as_str().unwrap().to_string();
    let order = |key: &'static str| {
        let (tc, vid, pid, customer) = (&tc, vid.clone(), pid.clone(), customer.clone());
        async move {
            let (s, q) = post_as(tc, leader, "/v1/quotes", &customer, None,
                json!({"vendor_id": vid, "dropoff": {"lat": 40.72, "lng": -74.01}, "mode": "on_demand"})).await;
            assert_eq!(s, StatusCode::CREATED, "{q}");
            let (s, o) = post_as(
                tc,
                leader,
                "/v1/orders",
                &customer,
                Some(key),
                json!({
                    "quote_id": q["id"], "items": [{"product_id": pid, "quantity": 1}],
                    "dropoff": {"location": {"lat": 40.72, "lng": -74.01}, "address": "2 Side St"}
                }),
            )
            .await;
            assert_eq!(s, StatusCode::CREATED, "{o}");
            o["id"].as_str().unwrap().to_string()
        }
    };
    let listed = |v: &Value| ids(v).contains(&pid);
    for node in 1..=3 {
        search_until(&tc, node, "q=calzone&in_stock=true", listed).await;
    }
    // One of two sold: still in stock.
    order("first").await;
    for node in 1..=3 {
        search_until(&tc, node, "q=calzone&in_stock=true", listed).await;
    }
    // The last one: out of in-stock results everywhere, still found without
    // the filter.
    let last = order("second").await;
    for node in 1..=3 {
        search_until(&tc, node, "q=calzone&in_stock=true", |v| !listed(v)).await;
        search_until(&tc, node, "q=calzone", listed).await;
    }
    // Its cancel returns the unit: back everywhere.
    let (s, v) = post_as(
        &tc,
        leader,
        &format!("/v1/orders/{last}/cancel"),
        &customer,
        None,
        Value::Null,
    )
    .await;
    assert_eq!(
        (s, v["status"].clone()),
        (StatusCode::OK, json!("cancelled")),
        "{v}"
    );
    for node in 1..=3 {
        search_until(&tc, node, "q=calzone&in_stock=true", listed).await;
    }
}

/// `open_now=true` leaves out vendors that take no orders now — outside
/// their opening hours, or paused — with their products, on every node,
/// and lets them back in when that changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_now_leaves_out_closed_and_paused_vendors() {
    let _serial = common::SERIAL.lock().await;
    let tc = TestCell::start(3, false, &["--rate-limit-auth", "1000"])
        .await
        .expect("cell");
    let leader = tc.cell.wait_leader(Duration::from_secs(10)).await.unwrap();
    let base = tc.url(leader);
    // A weekday that is not today, yesterday or tomorrow in any time zone.
    let far_day = {
        use chrono::Datelike;
        let day = chrono::Utc::now().date_naive() + chrono::Duration::days(3);
        ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
            [day.weekday().num_days_from_monday() as usize]
    };
    let mut vendors = Vec::new();
    let mut products = Vec::new();
    for name in ["Open", "Later", "Paused"] {
        let (token, vid) = restaurant(
            &tc,
            &base,
            &format!("{}@pierogi.test", name.to_lowercase()),
            &format!("Pierogi {name}"),
        )
        .await;
        let (s, p) = post_as(&tc, leader, &format!("/v1/vendors/{vid}/products"), &token, None,
            json!({"name": format!("Pierogi plate {name}"), "category": "mains", "price": {"amount": 900, "currency": "USD"}, "stock": null})).await;
        assert_eq!(s, StatusCode::CREATED, "{p}");
        products.push(p["id"].as_str().unwrap().to_string());
        vendors.push((token, vid));
    }
    let patch = |i: usize, body: Value| {
        let (tc, (token, vid)) = (&tc, vendors[i].clone());
        let url = format!("{base}/v1/vendors/{vid}");
        async move {
            let r = tc
                .http
                .patch(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
        }
    };
    patch(1, json!({"hours": {"timezone": "UTC", "weekly": [{"day": far_day, "open": "00:00", "close": "24:00"}]}})).await;
    patch(2, json!({"status": "paused"})).await;
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let vids: Vec<String> = vendors.iter().map(|(_, v)| v.clone()).collect();
    for node in 1..=3 {
        search_until(&tc, node, "q=pierogi", |v| ids(v).len() == 3).await;
        search_until(&tc, node, "q=pierogi&open_now=true", |v| {
            ids(v) == vec![products[0].clone()]
        })
        .await;
        search_until(&tc, node, "q=pierogi&kind=vendor&open_now=true", |v| {
            ids(v) == vec![vids[0].clone()]
        })
        .await;
        search_until(&tc, node, "q=pierogi&kind=vendor", |v| ids(v).len() == 3).await;
    }
    // Open again: hours cleared, pause lifted.
    patch(1, json!({"hours": null})).await;
    patch(2, json!({"status": "active"})).await;
    for node in 1..=3 {
        search_until(&tc, node, "q=pierogi&open_now=true", |v| {
            sorted(ids(v)) == sorted(products.clone())
        })
        .await;
    }
    let bad = tc
        .http
        .get(format!("{base}/v1/search?q=pierogi&open_now=maybe"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}
