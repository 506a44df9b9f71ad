//! Vendor webhooks against a local receiver that fails, times out, then
//! recovers: every event arrives, signatures verify, and a dead endpoint of
//! another vendor holds nothing up.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::{body::Bytes, http::HeaderMap, http::StatusCode as AxStatus, routing::post, Router};
use common::harness::TestCell;
use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const SECRET: &str = "a webhook secret of some length";

#[derive(Default)]
struct Receiver {
    attempts: usize,
    /// Bodies answered with 200.
    accepted: Vec<Value>,
    bad_signatures: usize,
}

/// Both signatures: the body's, and the one over `<timestamp>.<body>`
/// with a timestamp within a minute of now (what a receiver refusing
/// replays checks).
fn verify(headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let signed = |name: &str, parts: &[&[u8]]| {
        let Some(sig) = header(name).and_then(|v| v.strip_prefix("sha256=")) else {
            return false;
        };
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(SECRET.as_bytes()).unwrap();
        for part in parts {
            mac.update(part);
        }
        hex::decode(sig).is_ok_and(|s| mac.verify_slice(&s).is_ok())
    };
    let Some(sent_at) = header("x-marketcell-timestamp") else {
        return false;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let fresh = sent_at.parse::<i64>().is_ok_and(|t| (t - now).abs() <= 60);
    fresh
        && signed("x-marketcell-signature", &[body])
        && signed(
            "x-marketcell-timestamped-signature",
            &[sent_at.as_bytes(), b".", body],
        )
}

/// A webhook endpoint; a `flaky` one first fails, then times out.
async fn receiver(flaky: bool) -> (String, Arc<Mutex<Receiver>>) {
    let state: Arc<Mutex<Receiver>> = Arc::default();
    let st = state.clone();
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| {
            let st = st.clone();
            async move {
                let attempt = {
                    let mut s = st.lock().unwrap();
                    s.attempts += 1;
                    if !verify(&headers, &body) {
                        s.bad_signatures += 1;
                    }
                    s.attempts
                };
                match attempt {
                    // First a server error, then longer than the sender waits.
                    1 if flaky => AxStatus::INTERNAL_SERVER_ERROR,
                    2 if flaky => {
                        tokio::time::sleep(Duration::from_secs(7)).await;
                        AxStatus::OK
                    }
                    _ => {
                        let v: Value = serde_json::from_slice(&body).unwrap();
                        st.lock().unwrap().accepted.push(v);
                        AxStatus::OK
                    }
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), state)
}

async fn call(
    http: &reqwest::Client,
    base: &str,
    m: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut r = http
        .request(m, format!("{base}{path}"))
        .bearer_auth(token)
        .header("x-consistency", "linearizable");
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    let s = r.status();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn signup(http: &reqwest::Client, base: &str, email: &str, role: &str) -> String {
    let (s, v) = call(
        http,
        base,
        Method::POST,
        "/v1/auth/signup",
        "",
        Some(json!({"email": email, "password": "a long password", "name": email, "role": role})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v["access_token"].as_str().unwrap().to_string()
}

async fn vendor(http: &reqwest::Client, base: &str, token: &str, name: &str) -> String {
    let (s, v) = call(http, base, Method::POST, "/v1/vendors", token, Some(json!({"name": name, "kind": "restaurant", "location": {"lat": 40.7, "lng": -74.0}, "address": "1 Main St", "prep_minutes": 5}))).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v["id"].as_str().unwrap().to_string()
}

/// `GET /v1/vendors/{vid}/webhooks` as `token`.
async fn webhooks_of(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    vid: &str,
) -> (StatusCode, Value) {
    let path = format!("/v1/vendors/{vid}/webhooks");
    call(http, base, Method::GET, &path, token, None).await
}

/// Registers a webhook at `url` for vendor `vid`.
async fn register(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    vid: &str,
    url: impl serde::Serialize,
) -> (StatusCode, Value) {
    let body = json!({"url": url, "secret": SECRET});
    let path = format!("/v1/vendors/{vid}/webhooks");
    call(http, base, Method::POST, &path, token, Some(body)).await
}

/// A product of vendor `vid` (its owner's `vendor_token`) ordered by the
/// customer `ct`: the vendor's feed gets `order.placed`. Returns the order id.
async fn place_order(
    http: &reqwest::Client,
    base: &str,
    ct: &str,
    vendor_token: &str,
    vid: &str,
    key: &str,
) -> String {
    let (s, p) = call(http, base, Method::POST, &format!("/v1/vendors/{vid}/products"), vendor_token, Some(json!({"name": "Soup", "category": "soups", "price": {"amount": 900, "currency": "USD"}, "stock": null}))).await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    let (s, q) = call(http, base, Method::POST, "/v1/quotes", ct, Some(json!({"vendor_id": vid, "dropoff": {"lat": 40.71, "lng": -74.01}, "mode": "on_demand"}))).await;
    assert_eq!(s, StatusCode::CREATED, "{q}");
    let r = http
        .post(format!("{base}/v1/orders"))
        .bearer_auth(ct)
        .header("idempotency-key", format!("{key}-{vid}"))
        .json(&json!({"quote_id": q["id"], "items": [{"product_id": p["id"], "quantity": 1}], "dropoff": {"location": {"lat": 40.71, "lng": -74.01}, "address": "2 Side St"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let o: Value = r.json().await.unwrap();
    o["id"].as_str().unwrap().to_string()
}

/// A 3-node cell with a vendor (`<who>@x.test`), a local receiver and,
/// once registered, the vendor's webhook at it.
struct Hooked {
    tc: TestCell,
    http: reqwest::Client,
    base: String,
    url: String,
    rx: Arc<Mutex<Receiver>>,
    vt: String,
    vid: String,
    webhook: Value,
}

/// A 3-node cell (webhooks to private addresses allowed or not) with a
/// vendor `<who>@x.test` and a local receiver; no webhook yet.
async fn with_vendor(private_targets: bool, flaky: bool, who: &str) -> Hooked {
    let mut args = vec!["--rate-limit-auth", "1000"];
    if private_targets {
        args.push("--webhook-private-targets");
    }
    let tc = TestCell::start(3, false, &args).await.unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let base = tc.url(1);
    let (url, rx) = receiver(flaky).await;
    let vt = signup(&http, &base, &format!("{who}@x.test"), "vendor").await;
    let vid = vendor(&http, &base, &vt, who).await;
    Hooked {
        tc,
        http,
        base,
        url,
        rx,
        vt,
        vid,
        webhook: Value::Null,
    }
}

/// [`with_vendor`] whose webhook points at the receiver (on loopback, so
/// private targets are allowed).
async fn hooked(flaky: bool, who: &str) -> Hooked {
    let mut h = with_vendor(true, flaky, who).await;
    let (s, webhook) = register(&h.http, &h.base, &h.vt, &h.vid, &h.url).await;
    assert_eq!(s, StatusCode::CREATED, "{webhook}");
    h.webhook = webhook;
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhooks_survive_failures_and_timeouts() {
    let _serial = common::SERIAL.lock().await;
    let Hooked {
        tc,
        http,
        base,
        url,
        rx,
        vt,
        vid,
        webhook: w,
    } = hooked(true, "hooked").await;
    assert!(w.get("secret").is_none(), "the secret is never echoed");

    // Another vendor's endpoint is dead (nothing listens there).
    let dt = signup(&http, &base, "dead@x.test", "vendor").await;
    let dvid = vendor(&http, &base, &dt, "Dead").await;
    let dead = format!("http://{}/hook", edge::ports::free_loopback_addr().unwrap());
    let (s, _) = register(&http, &base, &dt, &dvid, &dead).await;
    assert_eq!(s, StatusCode::CREATED);

    // Bad registrations change nothing.
    for bad in [
        json!({"url": "ftp://x/y", "secret": SECRET}),
        json!({"url": "http://x/y", "secret": "short"}),
        json!({"url": "not a url", "secret": SECRET}),
        json!({"url": "http://x/y", "secret": SECRET, "extra": 1}),
    ] {
        let (s, v) = call(
            &http,
            &base,
            Method::POST,
            &format!("/v1/vendors/{vid}/webhooks"),
            &vt,
            Some(bad),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    }
    let (s, _) = register(&http, &base, &dt, &vid, &url).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "not their vendor");

    // Order events for both vendors.
    let ct = signup(&http, &base, "cust@x.test", "customer").await;
    let mut expected = 0;
    for (token, v) in [(&vt, &vid), (&dt, &dvid)] {
        let oid = place_order(&http, &base, &ct, token, v, "k").await;
        let (s, _) = call(
            &http,
            &base,
            Method::POST,
            &format!("/v1/orders/{oid}/accept"),
            token,
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        if v == &vid {
            expected = 2; // order.placed, order.accepted
        }
    }

    // Everything arrives, in order, signed, after a 500 and a timeout.
    let deadline = Instant::now() + Duration::from_secs(40);
    let received = loop {
        let types: Vec<(u64, String)> = {
            let r = rx.lock().unwrap();
            let mut seen: Vec<(u64, String)> = r
                .accepted
                .iter()
                .flat_map(|batch| batch.as_array().cloned().unwrap_or_default())
                .map(|e| {
                    (
                        e["seq"].as_u64().unwrap(),
                        e["type"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            seen.sort();
            seen.dedup();
            seen
        };
        if types.len() >= expected {
            break types;
        }
        assert!(Instant::now() < deadline, "only {types:?} arrived");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let kinds: Vec<&str> = received.iter().map(|(_, k)| k.as_str()).collect();
    assert_eq!(kinds, ["order.placed", "order.accepted"]);
    {
        let r = rx.lock().unwrap();
        assert!(r.attempts >= 3, "a failure and a timeout came first");
        assert_eq!(r.bad_signatures, 0);
        for batch in &r.accepted {
            for e in batch.as_array().unwrap() {
                assert_eq!(
                    e["data"]["vendor_id"],
                    vid.as_str(),
                    "only this vendor's events"
                );
            }
        }
    }

    // Operators see the same in /metrics (summed over the nodes; the leader
    // sends): failed POSTs for the 500, the timeout and the dead endpoint,
    // delivered ones, and the events they carried.
    let mut sums = [0.0; 3];
    for id in 1..=3 {
        let text = http
            .get(format!("{}/metrics", tc.url(id)))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for (i, name) in [
            "webhook_posts_total{outcome=\"failed\"}",
            "webhook_posts_total{outcome=\"delivered\"}",
            "webhook_events_delivered_total",
        ]
        .iter()
        .enumerate()
        {
            sums[i] += text
                .lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
                .unwrap_or(0.0);
        }
    }
    assert!(
        sums[0] >= 2.0 && sums[1] >= 1.0 && sums[2] >= 2.0,
        "{sums:?}"
    );

    // Status is visible to the vendor: healthy now; the dead one failing.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, v) = webhooks_of(&http, &base, &vt, &vid).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let w = &v["items"][0];
        if w["delivered_events"].as_u64() >= Some(2) && w["failures"] == 0 {
            assert_eq!(w["last_error"], Value::Null);
            break;
        }
        assert!(Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, v) = webhooks_of(&http, &base, &dt, &dvid).await;
    let w = &v["items"][0];
    assert!(w["failures"].as_u64().unwrap() >= 1, "{v}");
    assert!(
        w["last_error"].as_str().unwrap().contains("unreachable"),
        "{v}"
    );
    let (s, _) = webhooks_of(&http, &base, &vt, &dvid).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // Removing it stops it; like every write, the answer names its index.
    let r = http
        .delete(format!(
            "{base}/v1/vendors/{dvid}/webhooks/{}",
            w["id"].as_str().unwrap()
        ))
        .bearer_auth(&dt)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let index = r.headers()["x-cell-index"].to_str().unwrap();
    assert!(index.parse::<u64>().unwrap() > 0, "{index}");
    let (_, v) = webhooks_of(&http, &base, &dt, &dvid).await;
    assert_eq!(v["items"], json!([]));

    // The list pages like every list: `limit`, and `next_cursor` until the
    // last page.
    for i in 0..3 {
        let (s, _) = register(&http, &base, &dt, &dvid, format!("{dead}/{i}")).await;
        assert_eq!(s, StatusCode::CREATED);
    }
    let list = |query: String| {
        let (http, base, path, dt) = (&http, &base, format!("/v1/vendors/{dvid}/webhooks"), &dt);
        async move {
            call(
                http,
                base,
                Method::GET,
                &format!("{path}?{query}"),
                dt,
                None,
            )
            .await
        }
    };
    let mut seen = Vec::new();
    let mut query = "limit=2".to_string();
    loop {
        let (s, v) = list(query).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let items = v["items"].as_array().unwrap();
        assert!(items.len() <= 2, "{v}");
        seen.extend(items.iter().map(|w| w["id"].as_str().unwrap().to_string()));
        match v["next_cursor"].as_str() {
            Some(c) => query = format!("limit=2&cursor={c}"),
            None => break,
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 3);
    for bad in ["limit=0", "limit=101", "cursor=x", "page=2"] {
        let (s, v) = list(bad.to_string()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }
}

/// Every file under `dir`, recursively.
fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn holds(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhook_secrets_are_sealed_at_rest_and_survive_a_key_rotation() {
    let _serial = common::SERIAL.lock().await;
    let Hooked {
        mut tc,
        http,
        base,
        rx,
        vt,
        vid,
        ..
    } = hooked(false, "sealed").await;
    let ct = signup(&http, &base, "buyer@x.test", "customer").await;
    let delivered = |n: usize| {
        let rx = rx.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let (got, bad) = {
                    let r = rx.lock().unwrap();
                    (r.accepted.len(), r.bad_signatures)
                };
                assert_eq!(
                    bad, 0,
                    "every delivery is signed with the registered secret"
                );
                if got >= n {
                    return;
                }
                assert!(Instant::now() < deadline, "{got} of {n} deliveries arrived");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    place_order(&http, &base, &ct, &vt, &vid, "before").await;
    delivered(1).await;

    // The secret is in no node's files (log, state, snapshots) and in no
    // backup.
    let backup = |tc: &TestCell| {
        let (http, url, token) = (tc.http.clone(), tc.url(2), tc.cell.token.clone());
        async move {
            let r = http
                .get(format!("{url}/admin/backup"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            r.bytes().await.unwrap().to_vec()
        }
    };
    let all_files = files(&tc.cell.dir);
    assert!(all_files.len() > 10, "{all_files:?}");
    for f in all_files {
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(
            !holds(&bytes, SECRET.as_bytes()),
            "{} holds the secret",
            f.display()
        );
    }
    let before = backup(&tc).await;
    assert!(!holds(&before, SECRET.as_bytes()));
    let keys_file = tc.cell.dir.join("jwt-keys.pem");
    let (old, _) = edge::token::KeySet::load_or_create(&keys_file).unwrap();
    let old_seal = format!("sealed:v1:{}:", old.active_kid());
    assert!(holds(&before, old_seal.as_bytes()));

    // The signing key rotates (the old one stays in the file): deliveries
    // go on signed with the same secret, and the leader re-seals it under
    // the new key.
    for id in 1..=3 {
        tc.cell.stop(id);
    }
    let new_kid = edge::token::KeySet::rotate_file(&keys_file).unwrap();
    for id in 1..=3 {
        tc.start_node(id).unwrap();
    }
    for id in 1..=3 {
        tc.cell
            .wait_healthy(id, Duration::from_secs(30))
            .await
            .unwrap();
    }
    tc.cell.wait_leader(Duration::from_secs(10)).await.unwrap();
    place_order(&http, &base, &ct, &vt, &vid, "after").await;
    delivered(2).await;
    let new_seal = format!("sealed:v1:{new_kid}:");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let b = backup(&tc).await;
        if holds(&b, new_seal.as_bytes()) {
            assert!(!holds(&b, old_seal.as_bytes()), "the old seal is gone");
            assert!(!holds(&b, SECRET.as_bytes()));
            break;
        }
        assert!(Instant::now() < deadline, "never re-sealed under {new_kid}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhooks_reach_only_public_addresses_by_default() {
    let _serial = common::SERIAL.lock().await;
    let Hooked {
        tc: _cell,
        http,
        base,
        url,
        rx,
        vt,
        vid,
        ..
    } = with_vendor(false, false, "inward").await;
    // An address literal inside the network is refused at once…
    for inner in [
        url.clone(),
        "http://169.254.169.254/latest/meta-data".into(),
        "http://[::1]:9/x".into(),
    ] {
        let (s, v) = register(&http, &base, &vt, &vid, &inner).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("validation_failed")),
            "{inner}: {v}"
        );
    }
    // …and a name that resolves inward reaches nothing: the webhook
    // reports why, and the receiver hears nothing.
    let by_name = url.replace("127.0.0.1", "localhost");
    let (s, v) = register(&http, &base, &vt, &vid, &by_name).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let ct = signup(&http, &base, "payer@x.test", "customer").await;
    place_order(&http, &base, &ct, &vt, &vid, "inward").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, list) = webhooks_of(&http, &base, &vt, &vid).await;
        let error = list["items"][0]["last_error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if error.contains("non-public") {
            break;
        }
        assert!(Instant::now() < deadline, "{list}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(rx.lock().unwrap().attempts, 0);
}
