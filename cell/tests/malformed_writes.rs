//! Malformed input on every marketplace write endpoint: a 4xx problem+json
//! and no state change.

mod common;

use common::harness::TestCell;
use reqwest::Method;
use serde_json::{json, Value};

async fn signup(tc: &TestCell, email: &str, role: &str) -> String {
    let r = tc
        .http
        .post(format!("{}/v1/auth/signup", tc.url(1)))
        .json(&json!({"email": email, "password": "a long password", "name": email, "role": role}))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    v["access_token"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_endpoint_rejects_garbage_without_changing_state() {
    let tc = TestCell::start(1, false, &["--rate-limit-auth", "1000"])
        .await
        .expect("cell");
    let vendor = signup(&tc, "mv@example.com", "vendor").await;
    let cust = signup(&tc, "mc@example.com", "customer").await;
    let http = &tc.http;
    let base = tc.url(1);
    let v: Value = http
        .post(format!("{base}/v1/vendors"))
        .bearer_auth(&vendor)
        .json(&json!({"name": "M", "kind": "retail", "location": {"lat": 1.0, "lng": 1.0}, "address": "a", "prep_minutes": 1}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let vid = v["id"].as_str().unwrap().to_string();
    let p: Value = http
        .post(format!("{base}/v1/vendors/{vid}/products"))
        .bearer_auth(&vendor)
        .json(&json!({"name": "P", "category": "c", "price": {"amount": 100, "currency": "USD"}, "stock": 5}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pid = p["id"].as_str().unwrap().to_string();
    let applied_before = tc.status(1).await.unwrap()["applied"].as_u64().unwrap();

    let endpoints: Vec<(Method, String, &str)> = vec![
        (Method::POST, "/v1/auth/signup".into(), ""),
        (Method::POST, "/v1/auth/login".into(), ""),
        (Method::POST, "/v1/auth/refresh".into(), ""),
        (Method::POST, "/v1/auth/logout".into(), "cust"),
        (Method::POST, "/v1/vendors".into(), "vendor"),
        (Method::PATCH, format!("/v1/vendors/{vid}"), "vendor"),
        (
            Method::POST,
            format!("/v1/vendors/{vid}/products"),
            "vendor",
        ),
        (Method::PATCH, format!("/v1/products/{pid}"), "vendor"),
        (Method::PUT, format!("/v1/products/{pid}/stock"), "vendor"),
        (Method::PUT, "/v1/cart".into(), "cust"),
        (
            Method::POST,
            "/v1/orders/test.ord_01HZX3N6W9Q8K2M4P5R7T9V1XB/rating".into(),
            "cust",
        ),
        (Method::POST, "/v1/quotes".into(), "cust"),
        (Method::POST, "/v1/orders".into(), "cust"),
        (Method::POST, "/admin/tokens".into(), "ops"),
        (Method::POST, "/admin/cluster/nodes".into(), "ops"),
        (Method::POST, "/admin/cluster/membership".into(), "ops"),
    ];
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", b"{\"name\": ".to_vec()),
        ("not json", b"hello".to_vec()),
        ("array", b"[1,2,3]".to_vec()),
        (
            "wrong types",
            br#"{"name": 5, "price": "cheap", "stock": "lots", "email": [], "quote_id": 7}"#
                .to_vec(),
        ),
        (
            "unknown field",
            br#"{"definitely_not_a_field": true}"#.to_vec(),
        ),
        (
            "huge number",
            br#"{"stock": 99999999999999999999999}"#.to_vec(),
        ),
        (
            "deep nesting",
            format!("{}{}", "[".repeat(5000), "]".repeat(5000)).into_bytes(),
        ),
        ("invalid utf8", vec![b'{', 0xff, 0xfe, b'}']),
        // Well-formed but saying nothing: a required field is missing (or,
        // for a patch, there is nothing to change).
        ("empty object", b"{}".to_vec()),
    ];
    for (method, path, who) in &endpoints {
        let token = match *who {
            "vendor" => Some(vendor.as_str()),
            "cust" => Some(cust.as_str()),
            "ops" => Some(tc.cell.token.as_str()),
            _ => None,
        };
        for (name, body) in &bodies {
            let mut req = http
                .request(method.clone(), format!("{base}{path}"))
                .header("content-type", "application/json")
                .header("idempotency-key", "garbage")
                .body(body.clone());
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let r = req.send().await.unwrap();
            let status = r.status();
            let ct = r
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap_or("").to_string())
                .unwrap_or_default();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            assert!(
                status.is_client_error(),
                "{method} {path} with {name}: {status} {v}"
            );
            assert_eq!(
                ct, "application/problem+json",
                "{method} {path} with {name}"
            );
            assert!(
                v["code"].is_string() && v["request_id"].is_string(),
                "{method} {path} with {name}: {v}"
            );
        }
        // Without a JSON content type.
        let mut req = http
            .request(method.clone(), format!("{base}{path}"))
            .body("{}");
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let status = req.send().await.unwrap().status();
        assert!(
            status.is_client_error(),
            "{method} {path} without content type: {status}"
        );
    }
    let applied_after = tc.status(1).await.unwrap()["applied"].as_u64().unwrap();
    assert_eq!(applied_before, applied_after, "garbage reached the log");
    assert_eq!(
        tc.status(1).await.unwrap()["role"],
        "leader",
        "the node suffered"
    );
    let p2: Value = http
        .get(format!("{base}/v1/products/{pid}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(p2["stock"], 5);
    assert_eq!(p2["price"], p["price"]);
}
