//! Checkout and the order lifecycle through HTTP on a real 3-node cell:
//! the customer–vendor flow, idempotent checkout (also across a leader
//! kill), no oversell under concurrency (also across a leader kill), rides,
//! and a balanced ledger.

mod common;

use std::{sync::Arc, time::Duration};

use common::harness::TestCell;
use rand::{rngs::StdRng, Rng, SeedableRng};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// A client that reads its own writes on any node, as apps do: it echoes
/// the highest `X-Cell-Index` it has seen.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    urls: Vec<String>,
    seen: Arc<std::sync::atomic::AtomicU64>,
}

impl Api {
    fn new(tc: &TestCell) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .unwrap(),
            urls: (1..=tc.cell.nodes.len() as u64)
                .map(|i| tc.url(i))
                .collect(),
            seen: Arc::default(),
        }
    }

    async fn call(
        &self,
        node: usize,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
        key: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(
                method,
                format!("{}{path}", self.urls[node % self.urls.len()]),
            )
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        use std::sync::atomic::Ordering;
        req = req.header(
            "x-cell-index",
            self.seen.load(Ordering::Relaxed).to_string(),
        );
        match req.send().await {
            Ok(r) => {
                let s = r.status();
                if let Some(i) = r
                    .headers()
                    .get("x-cell-index")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                {
                    self.seen.fetch_max(i, Ordering::Relaxed);
                }
                (s, r.json().await.unwrap_or(Value::Null))
            }
            Err(_) => (StatusCode::SERVICE_UNAVAILABLE, Value::Null),
        }
    }

    /// `POST /v1/orders` with `body`, under the Idempotency-Key `key`.
    async fn checkout(
        &self,
        node: usize,
        token: &str,
        body: Value,
        key: Option<&str>,
    ) -> (StatusCode, Value) {
        self.call(node, Method::POST, "/v1/orders", token, Some(body), key)
            .await
    }

    /// `GET path` on `node` under `X-Consistency: consistency` (and no
    /// `X-Cell-Index`), retried while the node answers 503 (no leader yet
    /// after a kill) for up to 15 s.
    async fn read(&self, node: usize, path: &str, token: &str, consistency: &str) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let r = self
                .http
                .get(format!("{}{path}", self.urls[node % self.urls.len()]))
                .bearer_auth(token)
                .header("x-consistency", consistency)
                .send()
                .await;
            let (s, v) = match r {
                Ok(r) => (r.status(), r.json().await.unwrap_or(Value::Null)),
                Err(e) => (StatusCode::SERVICE_UNAVAILABLE, json!(e.to_string())),
            };
            if s == StatusCode::OK {
                return v;
            }
            assert!(
                s == StatusCode::SERVICE_UNAVAILABLE && std::time::Instant::now() < deadline,
                "GET {path} on node {node}: {s} {v}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn signup(&self, email: &str, role: &str) -> (String, String) {
        let r = self
            .http
            .post(format!("{}/v1/auth/signup", self.urls[0]))
            .json(&json!({"email": email, "password": "a long password", "name": email, "role": role}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let v: Value = r.json().await.unwrap();
        (
            v["account"]["id"].as_str().unwrap().into(),
            v["access_token"].as_str().unwrap().into(),
        )
    }
}

/// A vendor with one product of `stock` units (None = unlimited) at 1000.
async fn shop(api: &Api, email: &str, kind: &str, stock: Option<i64>) -> (String, String, String) {
    let (_, token) = api.signup(email, "vendor").await;
    let (s, v) = api
        .call(0, Method::POST, "/v1/vendors", &token, Some(json!({
            "name": email, "kind": kind, "location": {"lat": 40.70, "lng": -74.00}, "address": "1 Main St", "prep_minutes": 10
        })), None)
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let vid = v["id"].as_str().unwrap().to_string();
    let mut pid = String::new();
    if kind != "taxi" {
        let (s, p) = api
            .call(0, Method::POST, &format!("/v1/vendors/{vid}/products"), &token, Some(json!({
                "name": "Thing", "category": "things", "price": {"amount": 1000, "currency": "USD"}, "stock": stock
            })), None)
            .await;
        assert_eq!(s, StatusCode::CREATED, "{p}");
        pid = p["id"].as_str().unwrap().to_string();
    }
    (token, vid, pid)
}

/// `POST /v1/quotes` for an on-demand delivery from `vid`, as answered.
async fn ask_quote(api: &Api, node: usize, token: &str, vid: &str) -> (StatusCode, Value) {
    api.call(node, Method::POST, "/v1/quotes", token, Some(json!({"vendor_id": vid, "dropoff": {"lat": 40.72, "lng": -74.01}, "mode": "on_demand"})), None)
        .await
}

async fn quote(api: &Api, node: usize, token: &str, vid: &str) -> String {
    let (s, q) = ask_quote(api, node, token, vid).await;
    assert_eq!(s, StatusCode::CREATED, "{q}");
    assert!(q["fee"]["amount"].as_i64().unwrap() > 0);
    q["id"].as_str().unwrap().to_string()
}

fn order_body(quote: &str, pid: &str, qty: u32) -> Value {
    json!({
        "quote_id": quote, "items": [{"product_id": pid, "quantity": qty}],
        "dropoff": {"location": {"lat": 40.72, "lng": -74.01}, "address": "2 Side St"},
        "tip": {"amount": 200, "currency": "USD"}
    })
}

/// Asserts a problem+json answer with this status and `code`.
#[track_caller]
fn assert_problem(answer: &(StatusCode, Value), status: StatusCode, code: &str) {
    let (s, v) = answer;
    assert_eq!((*s, v["code"].as_str()), (status, Some(code)), "{v}");
}

async fn ledger_ok(api: &Api, node: usize, ops: &str) -> Value {
    let (s, v) = api
        .call(node, Method::GET, "/admin/ledger/check", ops, None, None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["postings_sum"], 0);
    v
}

/// Sends the checkout `body` under the Idempotency-Key `key` to `nodes`
/// in turn (from `start`; any may be dead or without a leader), retrying
/// with backoff, as a client would, until the answer is definitive: the
/// order (201, or 200 for an earlier attempt's) or 409 out_of_stock.
/// Returns that answer and how many attempts it took.
async fn checkout_until_answered(
    api: &Api,
    nodes: &[usize],
    start: usize,
    token: &str,
    body: &Value,
    key: &str,
) -> (StatusCode, Value, u32) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut backoff = Duration::from_millis(20);
    for attempt in 0u32.. {
        let node = nodes[(start + attempt as usize) % nodes.len()];
        let (s, v) = api.checkout(node, token, body.clone(), Some(key)).await;
        match s {
            StatusCode::CREATED | StatusCode::OK => return (s, v, attempt + 1),
            StatusCode::CONFLICT if v["code"] == "out_of_stock" => return (s, v, attempt + 1),
            // No leader (yet), the node is down, or the write's outcome is
            // unknown: the same key makes the retry safe.
            StatusCode::SERVICE_UNAVAILABLE => {}
            other => panic!("{key}: attempt {attempt} on node {node}: unexpected {other}: {v}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{key}: no definitive answer after {attempt} attempts; last {s} {v}"
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(400));
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_vendor_flow_with_idempotency_and_refunds() {
    // Three nodes per test: one test at a time on two cores.
    let _serial = common::SERIAL.lock().await;
    let tc = TestCell::start(3, false, &["--rate-limit-auth", "1000"])
        .await
        .expect("cell");
    let api = Api::new(&tc);
    let ops = tc.cell.token.clone();
    let (vendor, vid, pid) = shop(&api, "shop@example.com", "grocery", Some(10)).await;
    let (rival_vendor, _, _) = shop(&api, "rival@example.com", "retail", None).await;
    let (cust_id, cust) = api.signup("cus@example.com", "customer").await;
    let (_, other) = api.signup("other@example.com", "customer").await;

    // Cart, then checkout from the cart.
    let (s, cart) = api
        .call(
            1,
            Method::PUT,
            "/v1/cart",
            &cust,
            Some(json!({"vendor_id": vid, "items": [{"product_id": pid, "quantity": 2}]})),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{cart}");
    let (s, cart) = api
        .call(1, Method::GET, "/v1/cart", &cust, None, None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(cart["items"][0]["quantity"], 2);
    let q = quote(&api, 1, &cust, &vid).await;
    let body = json!({"quote_id": q, "dropoff": {"location": {"lat": 40.72, "lng": -74.01}, "address": "2 Side St"}});
    let (s, v) = api.checkout(2, &cust, body.clone(), None).await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "checkout without Idempotency-Key: {v}"
    );
    let (s, first) = api.checkout(2, &cust, body.clone(), Some("k-1")).await;
    assert_eq!(s, StatusCode::CREATED, "{first}");
    assert_eq!(first["status"], "placed");
    assert_eq!(first["subtotal"]["amount"], 2000);
    assert_eq!(first["customer_id"], cust_id.as_str());
    let total = first["total"]["amount"].as_i64().unwrap();
    assert_eq!(
        total,
        2000 + first["delivery_fee"]["amount"].as_i64().unwrap()
    );
    let oid = first["id"].as_str().unwrap().to_string();
    // Same key again: the same order, not a second one.
    let (s, again) = api.checkout(0, &cust, body.clone(), Some("k-1")).await;
    assert!(s == StatusCode::OK || s == StatusCode::CREATED, "{again}");
    assert_eq!(again["id"], oid.as_str());
    // The quote is spent.
    let (s, v) = api.checkout(0, &cust, body.clone(), Some("k-2")).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["code"], "quote_expired");
    // Someone else's quote.
    let (s, _) = api.checkout(0, &other, body, Some("k-3")).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // A quote the client changed (any character of its sealed part) is no
    // quote, and checking out with it changes nothing.
    let fresh = quote(&api, 0, &cust, &vid).await;
    let (name, sealed) = fresh.rsplit_once('.').unwrap();
    let mut bytes = sealed.as_bytes().to_vec();
    bytes[sealed.len() / 2] = if bytes[sealed.len() / 2] == b'A' {
        b'B'
    } else {
        b'A'
    };
    let forged = format!("{name}.{}", String::from_utf8(bytes).unwrap());
    let (s, v) = api
        .checkout(0, &cust, order_body(&forged, &pid, 1), Some("k-forged"))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["code"], "quote_expired");
    // The cart was used up.
    let (_, cart) = api
        .call(0, Method::GET, "/v1/cart", &cust, None, None)
        .await;
    assert_eq!(cart["items"], json!([]));

    // Who sees the order.
    for (token, expect) in [
        (&cust, StatusCode::OK),
        (&vendor, StatusCode::OK),
        (&ops, StatusCode::OK),
        (&other, StatusCode::NOT_FOUND),
        (&rival_vendor, StatusCode::NOT_FOUND),
    ] {
        let (s, _) = api
            .call(
                0,
                Method::GET,
                &format!("/v1/orders/{oid}"),
                token,
                None,
                None,
            )
            .await;
        assert_eq!(s, expect);
    }
    let (_, list) = api
        .call(
            0,
            Method::GET,
            "/v1/orders?status=placed",
            &vendor,
            None,
            None,
        )
        .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let (_, list) = api
        .call(0, Method::GET, "/v1/orders", &rival_vendor, None, None)
        .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 0);

    // Lifecycle: only the vendor moves it along; illegal moves are 409.
    let (s, _) = api
        .call(
            0,
            Method::POST,
            &format!("/v1/orders/{oid}/accept"),
            &cust,
            None,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = api
        .call(
            0,
            Method::POST,
            &format!("/v1/orders/{oid}/accept"),
            &rival_vendor,
            None,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = api
        .call(
            0,
            Method::POST,
            &format!("/v1/orders/{oid}/ready"),
            &vendor,
            None,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, v) = api
        .call(
            1,
            Method::POST,
            &format!("/v1/orders/{oid}/accept"),
            &vendor,
            None,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = api
        .call(
            1,
            Method::POST,
            &format!("/v1/orders/{oid}/ready"),
            &vendor,
            None,
            None,
        )
        .await;
    assert_eq!((s, v["status"].clone()), (StatusCode::OK, json!("ready")));
    let (s, _) = api
        .call(
            1,
            Method::POST,
            &format!("/v1/orders/{oid}/reject"),
            &vendor,
            None,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    // The customer cancels before pickup: refund, stock back.
    let (s, v) = api
        .call(
            2,
            Method::POST,
            &format!("/v1/orders/{oid}/cancel"),
            &cust,
            None,
            None,
        )
        .await;
    assert_eq!(
        (s, v["status"].clone()),
        (StatusCode::OK, json!("cancelled")),
        "{v}"
    );
    let (_, p) = api
        .call(
            0,
            Method::GET,
            &format!("/v1/products/{pid}"),
            &cust,
            None,
            None,
        )
        .await;
    assert_eq!(p["stock"], 10);
    let l = ledger_ok(&api, 0, &ops).await;
    assert_eq!(l["transactions"], 2, "one charge and one refund: {l}");

    // A paused vendor takes no orders: no quote, and a quote made before
    // the pause buys nothing (no order, no charge) until it resumes.
    let q = quote(&api, 1, &cust, &vid).await;
    let pause = |status: &'static str| {
        let (api, vendor, vid) = (&api, vendor.clone(), vid.clone());
        async move {
            let (s, v) = api
                .call(
                    0,
                    Method::PATCH,
                    &format!("/v1/vendors/{vid}"),
                    &vendor,
                    Some(json!({"status": status})),
                    None,
                )
                .await;
            assert_eq!(
                (s, v["status"].clone()),
                (StatusCode::OK, json!(status)),
                "{v}"
            );
        }
    };
    pause("paused").await;
    let answer = ask_quote(&api, 2, &cust, &vid).await;
    assert_problem(&answer, StatusCode::CONFLICT, "vendor_paused");
    let answer = api
        .checkout(2, &cust, order_body(&q, &pid, 1), Some("paused-1"))
        .await;
    assert_problem(&answer, StatusCode::CONFLICT, "vendor_paused");
    let l = ledger_ok(&api, 0, &ops).await;
    assert_eq!(l["transactions"], 2, "nothing charged while paused: {l}");
    pause("active").await;
    let (s, v) = api
        .checkout(2, &cust, order_body(&q, &pid, 1), Some("paused-1"))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");

    // A ride with a taxi company.
    let (_, taxi_vid, _) = shop(&api, "taxi@example.com", "taxi", None).await;
    let (s, rq) = api
        .call(0, Method::POST, "/v1/quotes", &cust, Some(json!({"kind": "ride", "vendor_id": taxi_vid, "pickup": {"lat": 40.70, "lng": -74.0}, "dropoff": {"lat": 40.75, "lng": -73.98}})), None)
        .await;
    assert_eq!(s, StatusCode::CREATED, "{rq}");
    let (s, ride) = api.checkout(0, &cust, json!({"kind": "ride", "quote_id": rq["id"], "pickup": {"lat": 40.70, "lng": -74.0}, "dropoff": {"lat": 40.75, "lng": -73.98}}), Some("ride-1"))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{ride}");
    assert_eq!(ride["kind"], "ride");
    assert_eq!(ride["items"], json!([]));
    // A ride's delivery opens with it, and the answer names it.
    assert!(ride["delivery_id"].is_string(), "{ride}");
    ledger_ok(&api, 0, &ops).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_checkouts_never_oversell_and_the_ledger_balances() {
    // Three nodes per test: one test at a time on two cores.
    let _serial = common::SERIAL.lock().await;
    let tc = TestCell::start(3, false, &["--rate-limit-auth", "1000"])
        .await
        .expect("cell");
    let api = Api::new(&tc);
    let ops = tc.cell.token.clone();
    let (vendor, vid, pid) = shop(&api, "last@example.com", "retail", Some(3)).await;
    let mut customers = Vec::new();
    for i in 0..10 {
        customers.push(api.signup(&format!("c{i}@example.com"), "customer").await.1);
    }
    let mut tasks = Vec::new();
    for (i, c) in customers.iter().enumerate() {
        let (api, c, vid, pid) = (api.clone(), c.clone(), vid.clone(), pid.clone());
        tasks.push(tokio::spawn(async move {
            let q = quote(&api, i, &c, &vid).await;
            api.checkout(i, &c, order_body(&q, &pid, 1), Some(&format!("buy-{i}")))
                .await
        }));
    }
    let mut placed = 0;
    let mut sold_out = 0;
    for t in tasks {
        let (s, v) = t.await.unwrap();
        match s {
            StatusCode::CREATED => placed += 1,
            StatusCode::CONFLICT if v["code"] == "out_of_stock" => sold_out += 1,
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert_eq!((placed, sold_out), (3, 7));
    let (_, p) = api
        .call(
            0,
            Method::GET,
            &format!("/v1/products/{pid}"),
            &vendor,
            None,
            None,
        )
        .await;
    assert_eq!(p["stock"], 0);

    // A random mix of orders, cancels and rejects keeps the ledger at zero.
    let (s, _) = api
        .call(
            0,
            Method::PUT,
            &format!("/v1/products/{pid}/stock"),
            &vendor,
            Some(json!({"stock": null})),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let mut rng = StdRng::seed_from_u64(7);
    for n in 0..12 {
        let c = &customers[rng.gen_range(0..customers.len())];
        let q = quote(&api, n, c, &vid).await;
        let body = order_body(&q, &pid, rng.gen_range(1..4));
        let (s, o) = api.checkout(n, c, body, Some(&format!("mix-{n}"))).await;
        assert_eq!(s, StatusCode::CREATED, "{o}");
        let oid = o["id"].as_str().unwrap();
        match rng.gen_range(0..3) {
            0 => assert_eq!(
                api.call(
                    n,
                    Method::POST,
                    &format!("/v1/orders/{oid}/cancel"),
                    c,
                    None,
                    None
                )
                .await
                .0,
                StatusCode::OK
            ),
            1 => assert_eq!(
                api.call(
                    n,
                    Method::POST,
                    &format!("/v1/orders/{oid}/reject"),
                    &vendor,
                    None,
                    None
                )
                .await
                .0,
                StatusCode::OK
            ),
            _ => {}
        }
    }
    ledger_ok(&api, 0, &ops).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_checkouts_of_the_last_units_across_a_leader_kill_never_oversell() {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
    const UNITS: usize = 5;
    const CLIENTS: usize = 20;
    // Three nodes per test: one test at a time on two cores.
    let _serial = common::SERIAL.lock().await;
    let mut tc = TestCell::start(3, false, &["--rate-limit-auth", "1000"])
        .await
        .expect("cell");
    let api = Api::new(&tc);
    let ops = tc.cell.token.clone();
    let (vendor, vid, pid) = shop(&api, "burst@example.com", "retail", Some(UNITS as i64)).await;
    // Every customer has its quote and its key before the burst.
    let mut customers = Vec::new();
    for i in 0..CLIENTS {
        let (id, token) = api.signup(&format!("b{i}@example.com"), "customer").await;
        let q = quote(&api, i, &token, &vid).await;
        customers.push((id, token, order_body(&q, &pid, 1), format!("last-{i}")));
    }
    let leader = tc.cell.wait_leader(Duration::from_secs(10)).await.unwrap();

    // The burst: staggered starts (4 ms apart) so that the kill lands in
    // its middle; each client retries its one key on any node until the
    // answer is definitive.
    let acked = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (i, (_, token, body, key)) in customers.iter().enumerate() {
        let (api, token, body, key) = (api.clone(), token.clone(), body.clone(), key.clone());
        let (acked, finished, killed) = (acked.clone(), finished.clone(), killed.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(4 * i as u64)).await;
            let (s, v, attempts) =
                checkout_until_answered(&api, &[0, 1, 2], i, &token, &body, &key).await;
            if s.is_success() {
                acked.fetch_add(1, SeqCst);
            }
            let after_kill = killed.load(SeqCst);
            finished.fetch_add(1, SeqCst);
            (s, v, attempts, after_kill)
        }));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while acked.load(SeqCst) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no two checkouts acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tc.cell.kill(leader);
    killed.store(true, SeqCst);
    let (acked_at_kill, finished_at_kill) = (acked.load(SeqCst), finished.load(SeqCst));
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    let retried = answers.iter().filter(|a| a.2 > 1).count();
    let after_kill = answers.iter().filter(|a| a.3).count();
    let deduped = answers.iter().filter(|a| a.0 == StatusCode::OK).count();
    eprintln!(
        "killed leader {leader} with {acked_at_kill} orders acknowledged and \
         {finished_at_kill}/{CLIENTS} clients answered; {after_kill} answered after it, \
         {retried} needed retries, {deduped} found an earlier attempt"
    );
    assert!(
        finished_at_kill < CLIENTS && after_kill > 0,
        "the kill did not land in the burst"
    );
    assert!(retried > 0, "no client had to retry");

    // Exactly UNITS customers got their order; the rest were told out of
    // stock.
    let mut placed: BTreeMap<String, String> = BTreeMap::new(); // customer -> order
    for ((cust_id, _, _, key), (s, v, _, _)) in customers.iter().zip(&answers) {
        if s.is_success() {
            assert_eq!(v["customer_id"], cust_id.as_str(), "{key}: {v}");
            assert_eq!(v["status"], "placed", "{key}: {v}");
            placed.insert(cust_id.clone(), v["id"].as_str().unwrap().to_string());
        } else {
            assert_problem(&(*s, v.clone()), StatusCode::CONFLICT, "out_of_stock");
        }
    }
    assert_eq!(placed.len(), UNITS, "orders acknowledged: {placed:?}");
    let order_ids: BTreeSet<&String> = placed.values().collect();
    assert_eq!(order_ids.len(), UNITS, "two customers got one order id");

    // Every surviving node, read linearizably, has exactly those orders,
    // no stock left, and one charge per order.
    let survivors: Vec<usize> = tc.running().iter().map(|&id| id as usize - 1).collect();
    assert_eq!(survivors.len(), 2);
    let check_node = |node: usize, consistency: &'static str| {
        let (api, ops, vendor, pid) = (&api, &ops, &vendor, &pid);
        let (placed, order_ids) = (&placed, &order_ids);
        async move {
            let all = api
                .read(node, "/v1/orders?limit=100", ops, consistency)
                .await;
            assert_eq!(all["next_cursor"], Value::Null, "{all}");
            let items = all["items"].as_array().unwrap();
            let ids: BTreeSet<&String> = placed.values().collect();
            assert_eq!(items.len(), UNITS, "node {node}: {all}");
            let mut by_customer: BTreeMap<String, String> = BTreeMap::new();
            for o in items {
                assert_eq!(o["items"][0]["quantity"], 1, "{o}");
                let prev = by_customer.insert(
                    o["customer_id"].as_str().unwrap().into(),
                    o["id"].as_str().unwrap().into(),
                );
                assert!(
                    prev.is_none(),
                    "node {node}: a customer has two orders: {all}"
                );
            }
            assert_eq!(&by_customer, placed, "node {node}");
            assert_eq!(&ids, order_ids);
            let mine = api
                .read(node, "/v1/orders?limit=100", vendor, consistency)
                .await;
            assert_eq!(mine["items"].as_array().unwrap().len(), UNITS, "{mine}");
            let p = api
                .read(node, &format!("/v1/products/{pid}"), vendor, consistency)
                .await;
            assert_eq!(p["stock"], 0, "node {node}: {p}");
            // The ledger check reads the node's own state, which the reads
            // above brought up to date (nothing is written meanwhile).
            let l = ledger_ok(api, node, ops).await;
            assert_eq!(l["unbalanced"], json!([]), "{l}");
            assert_eq!(
                l["transactions"], UNITS,
                "node {node}: one charge per order and nothing else: {l}"
            );
        }
    };
    for &node in &survivors {
        check_node(node, "linearizable").await;
    }
    // Each customer's own list: its one order, or none.
    for (i, (cust_id, token, body, key)) in customers.iter().enumerate() {
        let node = survivors[i % 2];
        let list = api.read(node, "/v1/orders", token, "linearizable").await;
        let ids: Vec<&str> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o["id"].as_str())
            .collect();
        let expected: Vec<&str> = placed
            .get(cust_id)
            .map(|o| o.as_str())
            .into_iter()
            .collect();
        assert_eq!(ids, expected, "{key}: {list}");
        // The same key once more: the same answer, nothing new.
        let (s, v, _) = checkout_until_answered(&api, &survivors, i, token, body, key).await;
        match placed.get(cust_id) {
            Some(oid) => assert_eq!(
                (s, v["id"].as_str()),
                (StatusCode::OK, Some(oid.as_str())),
                "{key}: {v}"
            ),
            None => assert_problem(&(s, v), StatusCode::CONFLICT, "out_of_stock"),
        }
    }
    check_node(survivors[0], "linearizable").await;

    // The killed leader comes back and converges on the same state.
    tc.start_node(leader).unwrap();
    tc.cell
        .wait_healthy(leader, Duration::from_secs(30))
        .await
        .unwrap();
    let index = api.seen.load(SeqCst);
    tc.wait_applied(leader, index, Duration::from_secs(20))
        .await
        .unwrap();
    check_node(leader as usize - 1, "local").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_retried_across_a_leader_kill_creates_one_order() {
    // Three nodes per test: one test at a time on two cores.
    let _serial = common::SERIAL.lock().await;
    let mut tc = TestCell::start(3, false, &["--rate-limit-auth", "1000"])
        .await
        .expect("cell");
    let api = Arc::new(Api::new(&tc));
    let ops = tc.cell.token.clone();
    let (_, vid, pid) = shop(&api, "fo@example.com", "retail", Some(5)).await;
    let (cust_id, cust) = api.signup("retry@example.com", "customer").await;
    let q = quote(&api, 0, &cust, &vid).await;
    let leader = tc.cell.wait_leader(Duration::from_secs(10)).await.unwrap();
    let body = order_body(&q, &pid, 2);

    // Deterministic: the first attempt is committed and applied on a
    // follower before the leader dies, so the retries must find it.
    let (s, first) = api
        .checkout(leader as usize - 1, &cust, body.clone(), Some("once"))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{first}");
    assert_eq!(first["customer_id"], cust_id.as_str(), "{first}");
    let oid = first["id"].as_str().unwrap().to_string();
    let index = api.seen.load(std::sync::atomic::Ordering::SeqCst);
    let follower = (1..=3u64).find(|&n| n != leader).unwrap();
    tc.wait_applied(follower, index, Duration::from_secs(10))
        .await
        .unwrap();
    let list = api
        .read(follower as usize - 1, "/v1/orders", &cust, "local")
        .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["items"][0]["id"], oid.as_str(), "{list}");
    tc.cell.kill(leader);
    // Retry on each survivor, the other follower first: it may not have
    // applied the order, so its retry goes through the new leader.
    let other = (1..=3u64).find(|&n| n != leader && n != follower).unwrap();
    for node in [other, follower] {
        let (s, again, attempts) =
            checkout_until_answered(&api, &[node as usize - 1], 0, &cust, &body, "once").await;
        assert_eq!(
            (s, again["id"].as_str()),
            (StatusCode::OK, Some(oid.as_str())),
            "retry on node {node} (attempt {attempts}): {again}"
        );
    }
    let survivor = follower as usize - 1;
    let list = api
        .read(survivor, "/v1/orders", &cust, "linearizable")
        .await;
    let orders = list["items"].as_array().unwrap();
    assert_eq!(orders.len(), 1, "{list}");
    assert_eq!(orders[0]["id"], oid.as_str());
    let p = api
        .read(
            survivor,
            &format!("/v1/products/{pid}"),
            &cust,
            "linearizable",
        )
        .await;
    assert_eq!(p["stock"], 3, "stock reserved once");
    let l = ledger_ok(&api, survivor, &ops).await;
    assert_eq!(l["transactions"], 1, "exactly one charge: {l}");

    // Racy: the old leader rejoins; a second customer's checkout is fired
    // at the new leader, which is killed at once. Whether or not the first
    // attempt made it, the retries end with exactly one order.
    tc.start_node(leader).unwrap();
    tc.cell
        .wait_healthy(leader, Duration::from_secs(30))
        .await
        .unwrap();
    tc.wait_applied(leader, index, Duration::from_secs(20))
        .await
        .unwrap();
    let (_, racer) = api.signup("racer@example.com", "customer").await;
    let q = quote(&api, 0, &racer, &vid).await;
    let body = order_body(&q, &pid, 1);
    let second_leader = tc.cell.wait_leader(Duration::from_secs(10)).await.unwrap();
    let fired = {
        let (api, racer, body) = (api.clone(), racer.clone(), body.clone());
        tokio::spawn(async move {
            api.checkout(second_leader as usize - 1, &racer, body, Some("racy"))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(5)).await;
    tc.cell.kill(second_leader);
    let _ = fired.await;
    let up: Vec<usize> = tc.running().iter().map(|&id| id as usize - 1).collect();
    let (s, racy, _) = checkout_until_answered(&api, &up, 0, &racer, &body, "racy").await;
    assert!(s.is_success(), "{racy}");
    let list = api.read(up[0], "/v1/orders", &racer, "linearizable").await;
    let orders = list["items"].as_array().unwrap();
    assert_eq!(orders.len(), 1, "{list}");
    assert_eq!(orders[0]["id"], racy["id"]);
    let p = api
        .read(up[0], &format!("/v1/products/{pid}"), &cust, "linearizable")
        .await;
    assert_eq!(p["stock"], 2, "stock reserved once per order");
    let l = ledger_ok(&api, up[0], &ops).await;
    assert_eq!(l["transactions"], 2, "exactly one charge per order: {l}");
    let all = api.read(up[0], "/v1/orders", &ops, "linearizable").await;
    assert_eq!(all["items"].as_array().unwrap().len(), 2, "{all}");

    // Pricing takes no quorum: with a second node gone the last one, which
    // can no longer commit anything, still quotes.
    tc.cell.kill(up[1] as u64 + 1);
    quote(&api, up[0], &cust, &vid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_events_reach_customer_and_vendor_in_order_and_wake_long_polls() {
    // Three nodes per test: one test at a time on two cores.
    let _serial = common::SERIAL.lock().await;
    let tc = TestCell::start(3, false, &["--rate-limit-auth", "1000"])
        .await
        .expect("cell");
    let api = Api::new(&tc);
    let (vendor, vid, pid) = shop(&api, "ev@example.com", "grocery", None).await;
    let (_, cust) = api.signup("evc@example.com", "customer").await;
    let (_, stranger) = api.signup("evs@example.com", "customer").await;
    let q = quote(&api, 0, &cust, &vid).await;
    let (s, o) = api
        .checkout(0, &cust, order_body(&q, &pid, 1), Some("ev-1"))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{o}");
    let oid = o["id"].as_str().unwrap().to_string();

    // A long poll on a follower is woken by the vendor's accept.
    let leader = tc.cell.wait_leader(Duration::from_secs(10)).await.unwrap() as usize;
    let follower = (0..3).find(|&n| n + 1 != leader).unwrap();
    let (_, first) = api
        .call(follower, Method::GET, "/v1/events", &cust, None, None)
        .await;
    let next = first["next"].as_u64().unwrap();
    let poll = {
        let (api, cust) = (api.clone(), cust.clone());
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let r = api
                .call(
                    follower,
                    Method::GET,
                    &format!("/v1/events?after={next}&wait=20"),
                    &cust,
                    None,
                    None,
                )
                .await;
            (r, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let accepted_at = std::time::Instant::now();
    let (s, _) = api
        .call(
            leader - 1,
            Method::POST,
            &format!("/v1/orders/{oid}/accept"),
            &vendor,
            None,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let ((s, woke), elapsed) = poll.await.unwrap();
    assert_eq!(s, StatusCode::OK, "{woke}");
    assert_eq!(woke["events"][0]["type"], "order.accepted", "{woke}");
    assert!(
        elapsed < Duration::from_secs(5),
        "long poll not woken: {elapsed:?}"
    );
    eprintln!(
        "woken {:?} after the accept was sent",
        accepted_at.elapsed()
    );

    api.call(
        0,
        Method::POST,
        &format!("/v1/orders/{oid}/ready"),
        &vendor,
        None,
        None,
    )
    .await;
    api.call(
        0,
        Method::POST,
        &format!("/v1/orders/{oid}/cancel"),
        &cust,
        None,
        None,
    )
    .await;
    for token in [&cust, &vendor] {
        let (_, feed) = api
            .call(1, Method::GET, "/v1/events", token, None, None)
            .await;
        let kinds: Vec<&str> = feed["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["type"].as_str())
            .collect();
        assert_eq!(
            kinds,
            [
                "order.placed",
                "order.accepted",
                "order.ready",
                "order.cancelled"
            ],
            "{feed}"
        );
        let seqs: Vec<u64> = feed["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["seq"].as_u64())
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    }
    let (_, feed) = api
        .call(1, Method::GET, "/v1/events", &stranger, None, None)
        .await;
    assert_eq!(feed["events"], json!([]), "someone else's events leaked");
    let (s, _) = api
        .call(1, Method::GET, "/v1/events?wait=61", &cust, None, None)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // A bounded wait with nothing new returns empty, on time.
    let started = std::time::Instant::now();
    let (s, v) = api
        .call(
            1,
            Method::GET,
            "/v1/events?after=100&wait=1",
            &cust,
            None,
            None,
        )
        .await;
    assert_eq!((s, v["events"].clone()), (StatusCode::OK, json!([])));
    assert!(
        started.elapsed() >= Duration::from_millis(900)
            && started.elapsed() < Duration::from_secs(5)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prices_follow_the_pricing_settings_in_the_config_store() {
    let _serial = common::SERIAL.lock().await;
    let tc = TestCell::start(1, false, &[]).await.expect("cell");
    let api = Api::new(&tc);
    let ops = tc.cell.token.clone();
    let (_, vid, pid) = shop(&api, "priced@example.com", "grocery", None).await;
    let (_, cust) = api.signup("payer@example.com", "customer").await;
    let set = |name: &'static str, value: &'static str| {
        let (api, ops) = (api.clone(), ops.clone());
        async move {
            let (s, v) = api
                .call(
                    0,
                    Method::PUT,
                    &format!("/v1/kv/pricing/{name}"),
                    &ops,
                    Some(serde_json::from_str(value).unwrap()),
                    None,
                )
                .await;
            assert!(s.is_success(), "{name}: {s} {v}");
        }
    };
    let fee = |q: &Value| q["fee"]["amount"].as_i64().unwrap();
    let (_, default) = ask_quote(&api, 0, &cust, &vid).await;
    // No distance or time part (and no surge with no open orders): the fee
    // is the base fee, here out of its range, so the default of 199.
    set("per_km", "0").await;
    set("per_minute", "0").await;
    set("base_fee", "-5").await;
    let (s, base) = ask_quote(&api, 0, &cust, &vid).await;
    assert_eq!(s, StatusCode::CREATED, "{base}");
    assert_eq!(fee(&base), 199, "{base}");
    // A flat fee of 1000.
    set("base_fee", "1000").await;
    let (s, flat) = ask_quote(&api, 0, &cust, &vid).await;
    assert_eq!(s, StatusCode::CREATED, "{flat}");
    assert_eq!(fee(&flat), 1000, "{flat}");
    assert_ne!(fee(&default), 1000, "{default}");
    assert_eq!(flat["surge"], 1.0);
    // The platform's cut of the goods: 10% instead of the default 15%.
    set("platform_fee_bps", "1000").await;
    let id = flat["id"].as_str().unwrap();
    let (s, order) = api
        .checkout(0, &cust, order_body(id, &pid, 2), Some("priced"))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{order}");
    assert_eq!(order["delivery_fee"]["amount"], 1000);
    assert_eq!(order["platform_fee"]["amount"], 200);
    assert_eq!(
        order["total"]["amount"],
        2000 + 1000 + 200,
        "goods, fee, tip"
    );
}

/// Weekday name (`mon`..`sun`) and the UTC midnight starting it, `days`
/// from today.
fn utc_day(days: i64) -> (&'static str, chrono::DateTime<chrono::Utc>) {
    use chrono::{Datelike, Duration, Utc};
    let day = Utc::now().date_naive() + Duration::days(days);
    let name = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        [day.weekday().num_days_from_monday() as usize];
    (name, day.and_hms_opt(0, 0, 0).unwrap().and_utc())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_hours_decide_when_a_vendor_takes_orders() {
    let _serial = common::SERIAL.lock().await;
    let tc = TestCell::start(3, false, &["--rate-limit-auth", "1000"])
        .await
        .expect("cell");
    let api = Api::new(&tc);
    let ops = tc.cell.token.clone();
    let (vendor, vid, pid) = shop(&api, "hours@example.com", "restaurant", None).await;
    let (_, cust) = api.signup("hungry@example.com", "customer").await;
    let set_hours = |hours: Value| {
        let (api, vendor, vid) = (&api, vendor.clone(), vid.clone());
        async move {
            api.call(
                0,
                Method::PATCH,
                &format!("/v1/vendors/{vid}"),
                &vendor,
                Some(json!({ "hours": hours })),
                None,
            )
            .await
        }
    };
    let all_week: Vec<Value> = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        .iter()
        .map(|d| json!({"day": d, "open": "00:00", "close": "24:00"}))
        .collect();
    // Open only three days from now (UTC): closed now, and tomorrow.
    let (open_day, opens) = utc_day(3);
    let later = json!({"timezone": "UTC", "weekly": [{"day": open_day, "open": "00:00", "close": "24:00"}]});

    // Open all week: quotes as before.
    let (s, v) = set_hours(json!({"timezone": "UTC", "weekly": all_week})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["open_now"].clone(), v["next_change_at"].clone()),
        (json!(true), Value::Null),
        "{v}"
    );
    let q = quote(&api, 1, &cust, &vid).await;

    // Closed from now until `opens`: the quote in hand buys nothing, a new
    // one is refused, and the answers say when it opens.
    let (s, v) = set_hours(later.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    for node in 0..3 {
        let (s, v) = api
            .call(
                node,
                Method::GET,
                &format!("/v1/vendors/{vid}"),
                &cust,
                None,
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["hours"], later, "node {node}: {v}");
        assert_eq!(v["open_now"], false, "node {node}: {v}");
        assert_eq!(
            chrono::DateTime::parse_from_rfc3339(v["next_change_at"].as_str().unwrap()).unwrap(),
            opens,
            "{v}"
        );
    }
    let answer = api
        .checkout(2, &cust, order_body(&q, &pid, 1), Some("closed-1"))
        .await;
    assert_problem(&answer, StatusCode::CONFLICT, "vendor_closed");
    assert!(
        answer.1["detail"].as_str().unwrap().contains("opens at"),
        "{answer:?}"
    );
    let l = ledger_ok(&api, 0, &ops).await;
    assert_eq!(
        l["transactions"], 0,
        "a refused checkout charges nothing: {l}"
    );
    let answer = ask_quote(&api, 1, &cust, &vid).await;
    assert_problem(&answer, StatusCode::CONFLICT, "vendor_closed");

    // Scheduled ahead: a window while it is open is fine, one while it is
    // closed is not.
    let scheduled = |at: chrono::DateTime<chrono::Utc>| {
        let (api, cust, vid) = (&api, cust.clone(), vid.clone());
        async move {
            api.call(
                1,
                Method::POST,
                "/v1/quotes",
                &cust,
                Some(json!({
                    "vendor_id": vid, "dropoff": {"lat": 40.72, "lng": -74.01},
                    "mode": "scheduled", "window_start": at.to_rfc3339(),
                })),
                None,
            )
            .await
        }
    };
    let (s, v) = scheduled(opens + chrono::Duration::hours(12)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, o) = api
        .checkout(
            2,
            &cust,
            order_body(v["id"].as_str().unwrap(), &pid, 1),
            Some("scheduled-1"),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{o}");
    assert_eq!(o["mode"], "scheduled");
    // Expected when its window opens, not a quarter of an hour from now.
    assert_eq!(o["eta"], o["window_start"], "{o}");
    let answer = scheduled(utc_day(1).1 + chrono::Duration::hours(12)).await;
    assert_problem(&answer, StatusCode::CONFLICT, "vendor_closed");

    // Bad hours are refused and change nothing.
    for bad in [
        json!({"timezone": "Mars/Olympus", "weekly": all_week}),
        json!({"timezone": "UTC", "weekly": [{"day": "someday", "open": "09:00", "close": "17:00"}]}),
        json!({"timezone": "UTC", "weekly": [{"day": "mon", "open": "9am", "close": "17:00"}]}),
        json!({"timezone": "UTC", "weekly": []}),
        json!({"timezone": "UTC", "weekly": [{"day": "mon", "open": "09:00"}]}),
        json!("always"),
    ] {
        let (s, v) = set_hours(bad.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert_eq!(v["code"], "validation_failed", "{v}");
    }
    let (_, v) = api
        .call(
            2,
            Method::GET,
            &format!("/v1/vendors/{vid}"),
            &cust,
            None,
            None,
        )
        .await;
    assert_eq!(v["hours"], later, "{v}");

    // GraphQL shows the same hours and status.
    let (s, g) = api
        .call(1, Method::POST, "/graphql", &cust, Some(json!({
            "query": format!("{{ vendor(id: \"{vid}\") {{ openNow nextChangeAt hours {{ timezone weekly {{ day open close }} }} }} }}")
        })), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{g}");
    assert_eq!(g["data"]["vendor"]["hours"], later, "{g}");
    assert_eq!(g["data"]["vendor"]["openNow"], false, "{g}");

    // A GraphQL update that leaves hours out keeps them; `hours: null`
    // clears them: always open again.
    let update = |input: &str| {
        let (api, vendor) = (&api, vendor.clone());
        let query = format!("mutation {{ updateVendor(id: \"{vid}\", input: {input}) {{ name openNow hours {{ timezone }} }} }}");
        async move {
            let (s, g) = api
                .call(
                    0,
                    Method::POST,
                    "/graphql",
                    &vendor,
                    Some(json!({ "query": query })),
                    None,
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{g}");
            g["data"]["updateVendor"].clone()
        }
    };
    let v = update("{name: \"Late Kitchen\"}").await;
    assert_eq!(
        (v["name"].clone(), v["hours"]["timezone"].clone()),
        (json!("Late Kitchen"), json!("UTC")),
        "{v}"
    );
    let v = update("{hours: null}").await;
    assert_eq!(
        (v["hours"].clone(), v["openNow"].clone()),
        (Value::Null, json!(true)),
        "{v}"
    );

    // The first quote (never spent) now buys.
    let (s, v) = api
        .checkout(0, &cust, order_body(&q, &pid, 1), Some("closed-1"))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    ledger_ok(&api, 0, &ops).await;
}
