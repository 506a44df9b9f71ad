//! Search on a real 3-node cell: committed catalog changes become
//! searchable on every node within a second; updates, deletes and stock
//! are reflected; hostile queries never break a node.

mod common;

use std::time::{Duration, Instant};

use common::harness::TestCell;
use reqwest::StatusCode;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_changes_become_searchable_on_every_node() {
    let mut tc = TestCell::start(3, false, &["--rate-limit-auth", "1000"])
        .await
        .expect("cell");
    let http = tc.http.clone();
    let base = tc.url(1);
    let v: Value = http
        .post(format!("{base}/v1/auth/signup"))
        .json(&json!({"email": "s@example.com", "password": "a long password", "name": "S", "role": "vendor"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = v["access_token"].as_str().unwrap().to_string();
    let vendor: Value = http
        .post(format!("{base}/v1/vendors"))
        .bearer_auth(&token)
        .json(&json!({"name": "Luigi's", "kind": "restaurant", "location": {"lat": 40.71, "lng": -74.0}, "address": "1 Main St", "prep_minutes": 10}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let vid = vendor["id"].as_str().unwrap().to_string();
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
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
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
