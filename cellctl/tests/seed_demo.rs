//! `cellctl seed --demo` against a real cell: a few hundred products across
//! the vendors, drivers approved, online and located (and kept located with
//! `--keep-pinging`), an accepted order offered to one of them; the same
//! seed again fails without writing; and `ledger check --json` prints
//! nothing but JSON.

use std::{process::Command, time::Duration};

use cell::local::{find_cell_binary, LocalCell};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

const PASSWORD: &str = "demo password 1";

fn cellctl(cell: &LocalCell, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cellctl"))
        .args(["--endpoint", &cell.api_url(1), "--token", &cell.token])
        .args(args)
        .output()
        .expect("cellctl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A request as an app sends it, waiting out `429`s (the seed used up the
/// sign-in allowance); answers the status and JSON body.
async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
    idempotency_key: Option<&str>,
) -> (u16, Value) {
    for _ in 0..60 {
        let mut req = http.request(method.clone(), url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = &body {
            req = req.json(b);
        }
        if let Some(k) = idempotency_key {
            req = req.header("idempotency-key", k);
        }
        let r = req.send().await.expect("the cell answers");
        let status = r.status().as_u16();
        if status == 429 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        let text = r.text().await.unwrap();
        return (status, serde_json::from_str(&text).unwrap_or(Value::Null));
    }
    panic!("{url}: still rate limited");
}

async fn me_location(http: &reqwest::Client, base: &str, token: &str) -> Value {
    let url = format!("{base}/v1/drivers/me");
    let (_, me) = call(http, reqwest::Method::GET, &url, Some(token), None, None).await;
    me["location"].clone()
}

async fn login(http: &reqwest::Client, base: &str, email: &str) -> String {
    let (status, v) = call(
        http,
        reqwest::Method::POST,
        &format!("{base}/v1/auth/login"),
        None,
        Some(json!({"email": email, "password": PASSWORD})),
        None,
    )
    .await;
    assert_eq!(status, 200, "login {email}: {v}");
    v["access_token"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_demo_loads_a_region_that_dispatches() {
    let dir = tempfile::tempdir().unwrap();
    let bin = find_cell_binary().expect("the `cell` binary: run with `cargo test --workspace`");
    let mut cell = LocalCell::new(&bin, "demo", &dir.path().join("cell")).unwrap();
    cell.define_node(1, None).unwrap();
    cell.start_node(1, true).unwrap();
    cell.wait_healthy(1, Duration::from_secs(30)).await.unwrap();
    cell.wait_leader(Duration::from_secs(10)).await.unwrap();
    let base = cell.api_url(1);
    let http = reqwest::Client::new();

    let drivers = 6;
    // It stays running to keep the drivers located: the report comes first.
    let mut seeding = tokio::process::Command::new(env!("CARGO_BIN_EXE_cellctl"))
        .args([
            "--endpoint",
            &base,
            "--token",
            &cell.token,
            "--json",
            "seed",
            "--demo",
        ])
        .args(["--customers", "2", "--drivers", &drivers.to_string()])
        .args(["--keep-pinging", "--ping-every", "0.5"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("cellctl runs");
    let mut lines = BufReader::new(seeding.stdout.take().unwrap()).lines();
    let mut out = String::new();
    let report: Value = loop {
        let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
            .await
            .expect("the seed reports within two minutes")
            .unwrap()
            .unwrap_or_else(|| panic!("the seed ended without a report: {out}"));
        out.push_str(&line);
        if let Ok(v) = serde_json::from_str(&out) {
            break v;
        }
    };
    let products = report["products"].as_u64().unwrap();
    assert!((300..=400).contains(&products), "{report}");
    assert_eq!(report["drivers"], drivers, "{report}");
    let suffix = report["email_suffix"].as_str().unwrap().to_string();
    let vendor_ids: Vec<String> = report["vendor_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(vendor_ids.len(), 17, "{report}");

    // Drivers: approved, online, located (pings are replicated within a
    // second or so).
    let mut tokens = Vec::new();
    for i in 0..drivers {
        let token = login(&http, &base, &format!("driver{i}{suffix}")).await;
        let mut me = Value::Null;
        for _ in 0..50 {
            me = call(
                &http,
                reqwest::Method::GET,
                &format!("{base}/v1/drivers/me"),
                Some(&token),
                None,
                None,
            )
            .await
            .1;
            if me["location"].is_object() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(me["status"], "approved", "driver{i}: {me}");
        assert_eq!(me["online"], true, "driver{i}: {me}");
        assert!(me["location"]["lat"].is_f64(), "driver{i}: {me}");
        assert!(me["capacity"].as_u64().unwrap() >= 1, "driver{i}: {me}");
        tokens.push(token);
    }
    // ... and kept located: the position moves with each ping.
    let first = me_location(&http, &base, &tokens[0]).await;
    let mut moved = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if me_location(&http, &base, &tokens[0]).await != first {
            moved = true;
            break;
        }
    }
    assert!(moved, "driver0 pinged only once: still at {first}");

    // An order the Trattoria accepts is offered to a seeded driver.
    let customer = login(&http, &base, &format!("customer0{suffix}")).await;
    let vendor = login(&http, &base, &format!("trattoria{suffix}")).await;
    let vid = &vendor_ids[0];
    let (_, menu) = call(
        &http,
        reqwest::Method::GET,
        &format!("{base}/v1/vendors/{vid}/products?limit=100"),
        None,
        None,
        None,
    )
    .await;
    let pizza = menu["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["category"] == "pizza")
        .unwrap_or_else(|| panic!("a pizza at the Trattoria: {menu}"))["id"]
        .clone();
    let dropoff = json!({"lat": 40.735, "lng": -73.99});
    let (status, quote) = call(
        &http,
        reqwest::Method::POST,
        &format!("{base}/v1/quotes"),
        Some(&customer),
        Some(json!({"vendor_id": vid, "dropoff": dropoff})),
        None,
    )
    .await;
    assert_eq!(status, 201, "{quote}");
    let (status, order) = call(
        &http,
        reqwest::Method::POST,
        &format!("{base}/v1/orders"),
        Some(&customer),
        Some(json!({
            "quote_id": quote["id"], "items": [{"product_id": pizza, "quantity": 2}],
            "dropoff": {"location": dropoff, "address": "2 Side St"},
        })),
        Some("seed-demo-test"),
    )
    .await;
    assert_eq!(status, 201, "{order}");
    let oid = order["id"].as_str().unwrap();
    let (status, accepted) = call(
        &http,
        reqwest::Method::POST,
        &format!("{base}/v1/orders/{oid}/accept"),
        Some(&vendor),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{accepted}");
    let mut offered = false;
    'wait: for _ in 0..50 {
        for token in &tokens {
            let (_, offers) = call(
                &http,
                reqwest::Method::GET,
                &format!("{base}/v1/drivers/me/offers"),
                Some(token),
                None,
                None,
            )
            .await;
            if offers["items"].as_array().is_some_and(|a| !a.is_empty()) {
                offered = true;
                break 'wait;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(offered, "no seeded driver was offered the delivery");
    seeding.kill().await.unwrap();

    // The same seed again fails at once, clearly.
    let (ok, out, err) = cellctl(&cell, &["seed", "--demo", "--drivers", "1"]);
    assert!(!ok, "{out}{err}");
    assert!(err.contains("already holds the demo region"), "{err}");

    // `ledger check --json` prints only JSON.
    let (ok, out, err) = cellctl(&cell, &["--json", "ledger", "check"]);
    assert!(ok, "{out}{err}");
    let check: Value = serde_json::from_str(&out).expect("only JSON on stdout");
    assert_eq!(check["ok"], true, "{check}");
}
