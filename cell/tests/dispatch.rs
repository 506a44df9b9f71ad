//! Drivers and on-demand dispatch through HTTP on a real 3-node cell:
//! onboarding, availability, location pings, offers, the accept race,
//! expiry to the next driver, the delivery lifecycle, earnings, events.

mod common;

use std::time::{Duration, Instant};

use common::harness::TestCell;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const PICKUP: (f64, f64) = (40.70, -74.00);

struct World {
    tc: TestCell,
    http: reqwest::Client,
    /// Drivers whose first ping (to node 2) the leader may not know yet.
    pinged: std::sync::Mutex<Vec<String>>,
}

impl World {
    async fn start() -> World {
        // The webhook receiver listens on loopback.
        let tc = TestCell::start(
            3,
            false,
            &["--rate-limit-auth", "1000", "--webhook-private-targets"],
        )
        .await
        .unwrap();
        let w = World {
            tc,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .unwrap(),
            pinged: Default::default(),
        };
        w.wait_current_commands().await;
        w
    }

    /// Until the cell applies this build's commands: a new cell starts at
    /// version 1 and the leader raises it once every node said it runs
    /// them, and what dispatch does depends on it.
    async fn wait_current_commands(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (s, v) = self.call(1, Method::GET, "/v1/cell", "", None).await;
            if s == StatusCode::OK && v["versions"]["cell"] == v["versions"]["commands"] {
                return;
            }
            assert!(Instant::now() < deadline, "the cell stays at {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Calls node `node` and reads its own writes via the leader-confirmed
    /// read path (`X-Consistency: linearizable`).
    async fn call(
        &self,
        node: u64,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.tc.url(node)))
            .bearer_auth(token)
            .header("x-consistency", "linearizable");
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let s = r.status();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    async fn signup(&self, email: &str, role: &str) -> (String, String) {
        let (s, v) = self
            .call(1, Method::POST, "/v1/auth/signup", "", Some(json!({"email": email, "password": "a long password", "name": email, "role": role})))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        (
            v["account"]["id"].as_str().unwrap().into(),
            v["access_token"].as_str().unwrap().into(),
        )
    }

    fn ops(&self) -> String {
        self.tc.cell.token.clone()
    }

    async fn setting(&self, key: &str, value: &str) {
        let r = self
            .http
            .put(format!("{}/v1/kv/{key}", self.tc.url(1)))
            .bearer_auth(self.ops())
            .body(value.to_string())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    }

    /// An approved, online driver pinging from `at`; returns (id, token).
    async fn driver(&self, email: &str, at: (f64, f64)) -> (String, String) {
        self.driver_with(email, at, json!(["food"])).await
    }

    async fn driver_with(&self, email: &str, at: (f64, f64), quals: Value) -> (String, String) {
        let (id, t) = self.signup(email, "driver").await;
        let (s, v) = self
            .call(
                2,
                Method::PUT,
                "/v1/drivers/me",
                &t,
                Some(json!({"vehicle": "car", "capacity": 4, "qualifications": quals})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["status"], "pending");
        // Not approved yet: cannot go online.
        let (s, v) = self
            .call(
                3,
                Method::PUT,
                "/v1/drivers/me/availability",
                &t,
                Some(json!({"online": true})),
            )
            .await;
        assert_eq!(
            (s, v["code"].clone()),
            (StatusCode::FORBIDDEN, json!("forbidden")),
            "{v}"
        );
        let (s, v) = self
            .call(
                1,
                Method::POST,
                &format!("/v1/drivers/{id}/approve"),
                &self.ops(),
                None,
            )
            .await;
        assert_eq!(
            (s, v["status"].clone()),
            (StatusCode::OK, json!("approved")),
            "{v}"
        );
        let (s, v) = self
            .call(
                3,
                Method::PUT,
                "/v1/drivers/me/availability",
                &t,
                Some(json!({"online": true})),
            )
            .await;
        assert_eq!(
            (s, v["online"].clone()),
            (StatusCode::OK, json!(true)),
            "{v}"
        );
        let (s, _) = self
            .call(
                2,
                Method::PUT,
                "/v1/drivers/me/location",
                &t,
                Some(json!({"lat": at.0, "lng": at.1, "heading": 90.0})),
            )
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        self.pinged.lock().unwrap().push(t.clone());
        (id, t)
    }

    /// A follower hands its drivers' pings to the leader once a second:
    /// waits until the leader's state places every driver pinged so far,
    /// so each is a candidate from the first dispatch round on.
    async fn leader_knows_drivers(&self) {
        let tokens = std::mem::take(&mut *self.pinged.lock().unwrap());
        let deadline = Instant::now() + Duration::from_secs(5);
        for t in tokens {
            loop {
                let (_, v) = self.call(1, Method::GET, "/v1/drivers/me", &t, None).await;
                if !v["location"].is_null() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "a ping never reached the leader: {v}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// A vendor with one unlimited product, a customer and an accepted
    /// order; returns (vendor token, customer token, order).
    async fn accepted_order(&self, tag: &str) -> (String, String, Value) {
        self.leader_knows_drivers().await;
        let (_, vt) = self.signup(&format!("v-{tag}@x.test"), "vendor").await;
        let (s, v) = self
            .call(1, Method::POST, "/v1/vendors", &vt, Some(json!({"name": "Noodles", "kind": "restaurant", "location": {"lat": PICKUP.0, "lng": PICKUP.1}, "address": "1 Main St", "prep_minutes": 5})))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let vid = v["id"].as_str().unwrap().to_string();
        let (s, p) = self
            .call(1, Method::POST, &format!("/v1/vendors/{vid}/products"), &vt, Some(json!({"name": "Soup", "category": "soups", "price": {"amount": 1000, "currency": "USD"}, "stock": null})))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{p}");
        let (_, ct) = self.signup(&format!("c-{tag}@x.test"), "customer").await;
        let (s, q) = self
            .call(2, Method::POST, "/v1/quotes", &ct, Some(json!({"vendor_id": vid, "dropoff": {"lat": 40.72, "lng": -74.01}, "mode": "on_demand"})))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{q}");
        let r = self
            .http
            .post(format!("{}/v1/orders", self.tc.url(3)))
            .bearer_auth(&ct)
            .header("idempotency-key", format!("order-{tag}"))
            .json(&json!({"quote_id": q["id"], "items": [{"product_id": p["id"], "quantity": 1}], "dropoff": {"location": {"lat": 40.72, "lng": -74.01}, "address": "2 Side St"}, "tip": {"amount": 300, "currency": "USD"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let order: Value = r.json().await.unwrap();
        let oid = order["id"].as_str().unwrap();
        let (s, v) = self
            .call(
                1,
                Method::POST,
                &format!("/v1/orders/{oid}/accept"),
                &vt,
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert!(v["delivery_id"].is_string(), "accept opens a delivery: {v}");
        (vt, ct, order)
    }

    async fn offers(&self, token: &str) -> Vec<Value> {
        self.offers_on(2, token).await
    }

    async fn offers_on(&self, node: u64, token: &str) -> Vec<Value> {
        let (s, v) = self
            .call(node, Method::GET, "/v1/drivers/me/offers", token, None)
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["items"].as_array().cloned().unwrap_or_default()
    }

    async fn wait_offer(&self, token: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            if let Some(o) = self.offers(token).await.into_iter().next() {
                return o;
            }
            assert!(Instant::now() < deadline, "no offer within {within:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn events(&self, token: &str) -> Vec<Value> {
        self.events_on(3, token).await
    }

    async fn events_on(&self, node: u64, token: &str) -> Vec<Value> {
        let (s, v) = self
            .call(node, Method::GET, "/v1/events?after=0", token, None)
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["events"].as_array().unwrap().clone()
    }

    async fn feed(&self, token: &str) -> Vec<String> {
        self.events(token)
            .await
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_string())
            .collect()
    }
}

/// `needle` appears in `hay` in this order (other events may interleave).
fn in_order(hay: &[String], needle: &[&str]) -> bool {
    let mut it = hay.iter();
    needle.iter().all(|n| it.any(|h| h == n))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn order_to_doorstep_with_an_accept_race() {
    let _serial = common::SERIAL.lock().await;
    let w = World::start().await;
    // Offer each delivery to three drivers at once: they race to accept.
    w.setting("dispatch/wave", "3").await;
    // Restaurant deliveries need food-qualified drivers (all of `driver`'s).
    w.setting("dispatch/qualifications/restaurant", "food")
        .await;
    let mut drivers = Vec::new();
    for (i, d) in [0.001, 0.002, 0.003].into_iter().enumerate() {
        drivers.push(
            w.driver(&format!("d{i}@x.test"), (PICKUP.0 + d, PICKUP.1))
                .await,
        );
    }
    // A driver far away is never offered this delivery.
    let far = w.driver("far@x.test", (41.5, -73.0)).await;
    let unqualified = w.driver_with("nofood@x.test", PICKUP, json!([])).await;

    let (vt, ct, order) = w.accepted_order("race").await;
    let oid = order["id"].as_str().unwrap().to_string();
    // The vendor's webhook, registered now, gets the delivery's story too.
    let hooked = webhook_receiver().await;
    let (s, v) = w
        .call(
            1,
            Method::POST,
            &format!(
                "/v1/vendors/{}/webhooks",
                order["vendor_id"].as_str().unwrap()
            ),
            &vt,
            Some(json!({"url": hooked.0, "secret": "a webhook secret of some length"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let mut offers = Vec::new();
    for (_, t) in &drivers {
        offers.push(w.wait_offer(t, Duration::from_secs(10)).await);
    }
    // Offers name their pay as Money and their deadline as a time.
    let offer_event = w
        .events(&drivers[0].1)
        .await
        .into_iter()
        .find(|e| e["type"] == "offer.created")
        .unwrap();
    assert_eq!(
        offer_event["data"]["pay"]["currency"], "USD",
        "{offer_event}"
    );
    assert!(
        offer_event["data"]["expires_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{offer_event}"
    );
    assert!(w.offers(&far.1).await.is_empty());
    // Nor one right at the pickup without the food qualification.
    assert!(w.offers(&unqualified.1).await.is_empty());
    let delivery_id = offers[0]["delivery_id"].as_str().unwrap().to_string();
    assert!(offers
        .iter()
        .all(|o| o["delivery_id"] == delivery_id.as_str()));

    // Everyone accepts at once, on different nodes: exactly one wins.
    let races = drivers
        .iter()
        .zip(&offers)
        .enumerate()
        .map(|(i, ((_, t), o))| {
            let path = format!("/v1/offers/{}/accept", o["id"].as_str().unwrap());
            let w = &w;
            async move { w.call(1 + i as u64 % 3, Method::POST, &path, t, None).await }
        });
    let results = futures::future::join_all(races).await;
    let winners: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, (s, _))| *s == StatusCode::OK)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    for (i, (s, v)) in results.iter().enumerate() {
        if i != winners[0] {
            assert_eq!(*s, StatusCode::CONFLICT, "{v}");
        }
    }
    let (winner_id, wt) = drivers[winners[0]].clone();
    let (_, delivery) = &results[winners[0]];
    assert_eq!(delivery["driver_id"], winner_id.as_str());
    assert_eq!(delivery["status"], "assigned");

    // The driver sees the order now; the others and the far one do not.
    let (s, o) = w
        .call(2, Method::GET, &format!("/v1/orders/{oid}"), &wt, None)
        .await;
    assert_eq!(s, StatusCode::OK, "{o}");
    assert_eq!(o["delivery_id"], delivery_id.as_str());
    assert_eq!(
        o["proof_code"],
        Value::Null,
        "the proof code is the customer's"
    );
    // The delivery carries its order's ETA; the customer's list shows the
    // delivery and its driver.
    assert_eq!(delivery["eta"], o["eta"]);
    let (_, list) = w.call(2, Method::GET, "/v1/orders", &ct, None).await;
    let listed = &list["items"][0];
    assert_eq!(
        (&listed["id"], &listed["delivery_id"], &listed["driver_id"]),
        (&json!(oid), &json!(delivery_id), &json!(winner_id)),
        "{list}"
    );
    let loser = &drivers[(winners[0] + 1) % 3].1;
    let (s, _) = w
        .call(2, Method::GET, &format!("/v1/orders/{oid}"), loser, None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = w
        .call(
            2,
            Method::GET,
            &format!("/v1/deliveries/{delivery_id}"),
            loser,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Not ready yet: no pickup. Then the lifecycle, with the proof code.
    let act = |a: &'static str, body: Option<Value>| {
        let (w, wt, delivery_id) = (&w, wt.clone(), delivery_id.clone());
        async move {
            w.call(
                1,
                Method::POST,
                &format!("/v1/deliveries/{delivery_id}/{a}"),
                &wt,
                body,
            )
            .await
        }
    };
    let (s, v) = act("arrive", None).await;
    assert_eq!(
        (s, v["status"].clone()),
        (StatusCode::OK, json!("arrived")),
        "{v}"
    );
    let (s, _) = act("pickup", None).await;
    assert_eq!(s, StatusCode::CONFLICT, "the order is not ready");
    let (s, _) = w
        .call(
            2,
            Method::POST,
            &format!("/v1/orders/{oid}/ready"),
            &vt,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = act("pickup", None).await;
    assert_eq!(
        (s, v["status"].clone()),
        (StatusCode::OK, json!("picked_up")),
        "{v}"
    );
    let (s, v) = w
        .call(
            3,
            Method::POST,
            &format!("/v1/orders/{oid}/cancel"),
            &ct,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "no cancelling after pickup: {v}");
    let (s, v) = act("complete", Some(json!({"proof_code": "nope"}))).await;
    assert_eq!(
        (s, v["code"].clone()),
        (StatusCode::CONFLICT, json!("bad_proof_code"))
    );
    let (_, o) = w
        .call(3, Method::GET, &format!("/v1/orders/{oid}"), &ct, None)
        .await;
    let proof = o["proof_code"].as_str().unwrap().to_string();
    let (s, v) = act("complete", Some(json!({"proof_code": proof}))).await;
    assert_eq!(
        (s, v["status"].clone()),
        (StatusCode::OK, json!("delivered")),
        "{v}"
    );
    let (s, _) = act("complete", Some(json!({"proof_code": proof}))).await;
    assert_eq!(s, StatusCode::CONFLICT);

    let (_, o) = w
        .call(2, Method::GET, &format!("/v1/orders/{oid}"), &ct, None)
        .await;
    assert_eq!(o["status"], "delivered");
    // Earnings: the delivery fee plus the tip, in the ledger.
    let (s, e) = w
        .call(1, Method::GET, "/v1/drivers/me/earnings", &wt, None)
        .await;
    assert_eq!(s, StatusCode::OK, "{e}");
    let pay = o["delivery_fee"]["amount"].as_i64().unwrap() + o["tip"]["amount"].as_i64().unwrap();
    assert_eq!(e["balance"]["amount"].as_i64().unwrap(), pay);
    assert_eq!(e["deliveries_completed"], 1);
    let (s, l) = w
        .call(1, Method::GET, "/admin/ledger/check", &w.ops(), None)
        .await;
    assert_eq!((s, l["ok"].clone()), (StatusCode::OK, json!(true)), "{l}");
    let (_, me) = w.call(2, Method::GET, "/v1/drivers/me", &wt, None).await;
    assert_eq!(me["current_delivery"], Value::Null);
    assert_eq!(me["standing"]["completed"], 1);

    // The leader timed its first offer.
    assert!(
        w.tc.metric_sum(1..=3, "dispatch_first_offer_seconds_count")
            .await
            >= 1.0,
        "no first offer in /metrics"
    );

    // The customer rates the delivered order — once, 1 to 5 stars, only
    // their own — and the vendor's and the driver's averages move.
    let rate = |token: &str, body: Value| {
        let (w, path, token) = (&w, format!("/v1/orders/{oid}/rating"), token.to_string());
        async move { w.call(2, Method::POST, &path, &token, Some(body)).await }
    };
    let (s, _) = rate(&vt, json!({"vendor": 5})).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "vendors do not rate");
    for bad in [
        json!({"vendor": 6}),
        json!({"vendor": 0}),
        json!({"vendor": 5, "driver": 9}),
        json!({"vendor": 5, "stars": 1}),
        json!({"vendor": 5, "comment": "x".repeat(501)}),
    ] {
        let (s, v) = rate(&ct, bad.clone()).await;
        assert_eq!(
            (s, v["code"].clone()),
            (StatusCode::BAD_REQUEST, json!("validation_failed")),
            "{bad}: {v}"
        );
    }
    let (_, stranger) = w.signup("stranger@x.test", "customer").await;
    let (s, _) = rate(&stranger, json!({"vendor": 1})).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = rate(
        &ct,
        json!({"vendor": 5, "driver": 2, "comment": "cold soup"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(
        (
            v["vendor"].clone(),
            v["driver"].clone(),
            v["driver_id"].clone()
        ),
        (json!(5), json!(2), json!(winner_id)),
        "{v}"
    );
    let (s, v) = rate(&ct, json!({"vendor": 1})).await;
    assert_eq!(
        (s, v["code"].clone()),
        (StatusCode::CONFLICT, json!("already_rated"))
    );
    let (_, o) = w
        .call(1, Method::GET, &format!("/v1/orders/{oid}"), &ct, None)
        .await;
    assert_eq!(o["rating"]["comment"], "cold soup", "{o}");
    let vid = order["vendor_id"].as_str().unwrap();
    let (_, vendor) = w
        .call(3, Method::GET, &format!("/v1/vendors/{vid}"), &ct, None)
        .await;
    assert_eq!(
        (vendor["rating"].clone(), vendor["ratings"].clone()),
        (json!(5.0), json!(1)),
        "{vendor}"
    );
    let (_, me) = w.call(2, Method::GET, "/v1/drivers/me", &wt, None).await;
    let standing = &me["standing"];
    assert_eq!(
        (
            standing["rating"].clone(),
            standing["ratings"].clone(),
            standing["late"].clone(),
            standing["tier"].clone()
        ),
        (json!(2.0), json!(1), json!(0), json!(1)),
        "one poor rating does not cost a tier: {me}"
    );

    // Everyone saw the story in order.
    let story = [
        "order.placed",
        "order.accepted",
        "delivery.assigned",
        "order.ready",
        "order.picked_up",
        "order.delivered",
    ];
    assert!(
        in_order(&w.feed(&ct).await, &story),
        "{:?}",
        w.feed(&ct).await
    );
    assert!(
        in_order(&w.feed(&vt).await, &story),
        "{:?}",
        w.feed(&vt).await
    );
    let driver_story = [
        "offer.created",
        "delivery.assigned",
        "delivery.arrived",
        "delivery.picked_up",
        "delivery.delivered",
    ];
    assert!(
        in_order(&w.feed(&wt).await, &driver_story),
        "{:?}",
        w.feed(&wt).await
    );
    let hooked_story = [
        "delivery.assigned",
        "order.ready",
        "order.picked_up",
        "order.delivered",
    ];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got: Vec<Value> = hooked.1.lock().unwrap().clone();
        let kinds: Vec<String> = got
            .iter()
            .map(|e| e["type"].as_str().unwrap_or_default().to_string())
            .collect();
        if in_order(&kinds, &hooked_story) {
            assert!(
                got.iter()
                    .all(|e| e["at"].as_str().is_some_and(|t| t.ends_with('Z'))),
                "{got:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the webhook got {kinds:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A webhook endpoint that takes every POST and keeps its events.
async fn webhook_receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    use axum::{body::Bytes, routing::post, Router};
    let got: std::sync::Arc<std::sync::Mutex<Vec<Value>>> = Default::default();
    let sink = got.clone();
    let app = Router::new().route(
        "/hook",
        post(move |body: Bytes| {
            let sink = sink.clone();
            async move {
                let batch: Vec<Value> = serde_json::from_slice(&body).unwrap_or_default();
                sink.lock().unwrap().extend(batch);
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), got)
}

/// Decline → the next candidate; nobody left → the delivery is given up,
/// which the order shows and the customer and vendor are told; the
/// customer may then cancel.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn declines_move_on_and_a_delivery_nobody_takes_is_given_up() {
    let _serial = common::SERIAL.lock().await;
    let w = World::start().await;
    w.setting("dispatch/give_up_rounds", "4").await;
    let near = w.driver("dnear@x.test", (PICKUP.0 + 0.001, PICKUP.1)).await;
    let next = w.driver("dnext@x.test", (PICKUP.0 + 0.01, PICKUP.1)).await;
    let (vt, ct, order) = w.accepted_order("declines").await;
    let oid = order["id"].as_str().unwrap();

    for (who, other) in [(&near, Some(&next)), (&next, None)] {
        let offer = w.wait_offer(&who.1, Duration::from_secs(10)).await;
        if let Some(other) = other {
            assert!(w.offers(&other.1).await.is_empty(), "one driver at a time");
        }
        let path = format!("/v1/offers/{}/decline", offer["id"].as_str().unwrap());
        let (s, v) = w.call(1, Method::POST, &path, &who.1, None).await;
        assert!(s.is_success(), "decline: {s} {v}");
    }

    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (s, o) = w
            .call(2, Method::GET, &format!("/v1/orders/{oid}"), &ct, None)
            .await;
        assert_eq!(s, StatusCode::OK, "{o}");
        if o["delivery_status"] == "unassigned" {
            assert_eq!(o["status"], "accepted", "the order itself waits: {o}");
            assert!(o["driver_id"].is_null(), "{o}");
            break;
        }
        assert!(Instant::now() < deadline, "never given up: {o}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for token in [&ct, &vt] {
        assert!(
            w.feed(token)
                .await
                .contains(&"delivery.unassigned".to_string()),
            "customer and vendor are told"
        );
    }
    for d in [&near, &next] {
        assert!(w.offers(&d.1).await.is_empty(), "no offer stays open");
    }
    let (s, o) = w
        .call(
            3,
            Method::POST,
            &format!("/v1/orders/{oid}/cancel"),
            &ct,
            None,
        )
        .await;
    assert_eq!(
        (s, o["status"].clone()),
        (StatusCode::OK, json!("cancelled")),
        "{o}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ignored_offer_expires_and_goes_to_the_next_driver() {
    let _serial = common::SERIAL.lock().await;
    let w = World::start().await;
    w.setting("dispatch/offer_seconds", "2").await;
    let near = w.driver("near@x.test", (PICKUP.0 + 0.001, PICKUP.1)).await;
    let next = w.driver("next@x.test", (PICKUP.0 + 0.01, PICKUP.1)).await;
    let (_, _, _order) = w.accepted_order("expiry").await;

    // The nearest driver is asked first and does nothing.
    let first = w.wait_offer(&near.1, Duration::from_secs(10)).await;
    assert!(w.offers(&next.1).await.is_empty(), "one driver at a time");
    let second = w.wait_offer(&next.1, Duration::from_secs(10)).await;
    assert_eq!(first["delivery_id"], second["delivery_id"]);
    // Too late for the first driver.
    let (s, v) = w
        .call(
            1,
            Method::POST,
            &format!("/v1/offers/{}/accept", first["id"].as_str().unwrap()),
            &near.1,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (s, v) = w
        .call(
            2,
            Method::POST,
            &format!("/v1/offers/{}/accept", second["id"].as_str().unwrap()),
            &next.1,
            None,
        )
        .await;
    assert_eq!(
        (s, v["driver_id"].clone()),
        (StatusCode::OK, json!(next.0)),
        "{v}"
    );
    assert!(w.feed(&near.1).await.contains(&"offer.expired".to_string()));
    let (_, me) = w
        .call(3, Method::GET, "/v1/drivers/me", &near.1, None)
        .await;
    assert_eq!(me["standing"]["expired"], 1);

    // Surge: nobody available near a remote vendor prices higher than
    // here, where an idle driver waits.
    let (_, rvt) = w.signup("remote@x.test", "vendor").await;
    let (s, rv) = w
        .call(1, Method::POST, "/v1/vendors", &rvt, Some(json!({"name": "Remote", "kind": "restaurant", "location": {"lat": 42.5, "lng": -72.0}, "address": "far", "prep_minutes": 5})))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{rv}");
    let (_, qc) = w.signup("q@x.test", "customer").await;
    let (s, remote) = w
        .call(2, Method::POST, "/v1/quotes", &qc, Some(json!({"vendor_id": rv["id"], "dropoff": {"lat": 42.51, "lng": -72.0}, "mode": "on_demand"})))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{remote}");
    assert!(remote["surge"].as_f64().unwrap() > 1.0, "{remote}");

    // Bad input changes nothing.
    for body in [
        json!({"lat": 91.0, "lng": 0.0}),
        json!({"lat": 1.0, "lng": 0.0, "speed": -3.0}),
        json!({"lat": "x", "lng": 0.0}),
        json!({"lat": 1.0, "lng": 0.0, "extra": 1}),
    ] {
        let (s, v) = w
            .call(
                1,
                Method::PUT,
                "/v1/drivers/me/location",
                &next.1,
                Some(body),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    }
    let (s, _) = w
        .call(
            1,
            Method::PUT,
            "/v1/drivers/me",
            &next.1,
            Some(json!({"vehicle": "rocket", "capacity": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = w
        .call(
            1,
            Method::PUT,
            "/v1/drivers/me",
            &next.1,
            Some(json!({"vehicle": "car", "capacity": 0})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = w
        .call(1, Method::POST, "/v1/offers/nope/accept", &next.1, None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Only drivers act as drivers; only ops approve.
    let (_, cust) = w.signup("c2@x.test", "customer").await;
    let (s, _) = w
        .call(1, Method::GET, "/v1/drivers/me/offers", &cust, None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = w
        .call(
            1,
            Method::POST,
            &format!("/v1/drivers/{}/approve", near.0),
            &next.1,
            None,
        )
        .await;
    assert!(
        s == StatusCode::FORBIDDEN || s == StatusCode::UNAUTHORIZED,
        "{s}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dispatch_survives_a_leader_kill() {
    let _serial = common::SERIAL.lock().await;
    let mut w = World::start().await;
    w.setting("dispatch/offer_seconds", "30").await;
    let a = w.driver("a@x.test", (PICKUP.0 + 0.001, PICKUP.1)).await;
    let b = w.driver("b@x.test", (PICKUP.0 + 0.02, PICKUP.1)).await;
    // Positions are replicated once a second by the node that took them.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, ct, order) = w.accepted_order("failover").await;

    // The leader dies as the delivery becomes dispatchable.
    let leader =
        w.tc.cell
            .wait_leader(Duration::from_secs(10))
            .await
            .unwrap();
    w.tc.cell.kill(leader);
    let alive: Vec<u64> = (1..=3).filter(|&i| i != leader).collect();

    // The new leader's dispatcher takes over: one offer, to the nearest.
    let deadline = Instant::now() + Duration::from_secs(20);
    let offer = loop {
        let (s, v) = w
            .call(alive[0], Method::GET, "/v1/drivers/me/offers", &a.1, None)
            .await;
        if s == StatusCode::OK {
            if let Some(o) = v["items"].as_array().and_then(|i| i.first()) {
                break o.clone();
            }
        }
        assert!(Instant::now() < deadline, "no offer after the failover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // A second leader change while that offer is open: the next leader
    // neither loses it nor offers the delivery to anyone else meanwhile.
    w.tc.cell.start_node(leader, false).unwrap();
    w.tc.cell
        .wait_healthy(leader, Duration::from_secs(30))
        .await
        .unwrap();
    let second =
        w.tc.cell
            .wait_leader(Duration::from_secs(10))
            .await
            .unwrap();
    w.tc.cell.kill(second);
    let alive: Vec<u64> = (1..=3).filter(|&i| i != second).collect();
    w.tc.cell
        .wait_leader(Duration::from_secs(10))
        .await
        .unwrap();
    // Rounds of the new leader's dispatcher (every 250 ms) pass.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let path = format!("/v1/offers/{}/accept", offer["id"].as_str().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    let delivery = loop {
        let (s, v) = w.call(alive[1], Method::POST, &path, &a.1, None).await;
        match s {
            StatusCode::OK => break v,
            StatusCode::SERVICE_UNAVAILABLE if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => panic!("accept: {other} {v}"),
        }
    };
    assert_eq!(delivery["driver_id"], a.0.as_str());
    let (s, _) = w.call(alive[0], Method::POST, &path, &a.1, None).await;
    assert_eq!(s, StatusCode::CONFLICT, "accepting twice is refused");
    let offers_made = |events: Vec<Value>| {
        events
            .iter()
            .filter(|e| e["type"] == "offer.created")
            .map(|e| e["data"]["delivery_id"].clone())
            .collect::<Vec<_>>()
    };
    let delivery_id = delivery["id"].clone();
    assert_eq!(
        offers_made(w.events_on(alive[0], &a.1).await),
        vec![delivery_id],
        "one offer, across both leader changes"
    );
    assert!(
        offers_made(w.events_on(alive[0], &b.1).await).is_empty(),
        "nobody else was offered it"
    );

    // Every surviving node agrees on the one driver.
    let oid = order["id"].as_str().unwrap();
    for &n in &alive {
        let (s, o) = w
            .call(n, Method::GET, &format!("/v1/orders/{oid}"), &ct, None)
            .await;
        assert_eq!(s, StatusCode::OK, "{o}");
        assert_eq!(o["driver_id"], a.0.as_str(), "node {n}: {o}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_cursor_behind_the_retained_window_is_refused() {
    let _serial = common::SERIAL.lock().await;
    let w = World::start().await;
    let (id, t) = w.driver("busy@x.test", PICKUP).await;
    // Every status change is an event in the driver's feed: overflow it.
    let writes = (0..1100).map(|i| {
        let (w, path) = (
            &w,
            format!(
                "/v1/drivers/{id}/{}",
                if i % 2 == 0 { "suspend" } else { "approve" }
            ),
        );
        async move {
            w.call(1 + i % 3, Method::POST, &path, &w.ops(), None)
                .await
                .0
        }
    });
    let statuses = futures::future::join_all(writes).await;
    assert!(statuses.iter().all(|s| *s == StatusCode::OK));
    let (s, v) = w.call(2, Method::GET, "/v1/events?after=1", &t, None).await;
    assert_eq!(
        (s, v["code"].clone()),
        (StatusCode::GONE, json!("cursor_expired")),
        "{v}"
    );
    // From the start of the window, and from the cursor the error names.
    let (s, v) = w.call(2, Method::GET, "/v1/events?after=0", &t, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let first = v["events"][0]["seq"].as_u64().unwrap();
    assert!(first > 1, "{v}");
    let (s, _) = w
        .call(
            3,
            Method::GET,
            &format!("/v1/events?after={}", first - 1),
            &t,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    // A cursor at the end of the range is past every event, not a crash.
    let (s, v) = w
        .call(
            3,
            Method::GET,
            &format!("/v1/events?after={}&wait=0", u64::MAX),
            &t,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["events"], json!([]), "{v}");
}

/// A driver who stops being approved — suspended by ops, or an approved
/// profile widened (back to review) — hands the delivery they were on
/// their way to fetch back to dispatch, and the next driver gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_driver_stood_down_hands_the_delivery_back_to_dispatch() {
    let _serial = common::SERIAL.lock().await;
    let w = World::start().await;
    let first = w
        .driver("dfirst@x.test", (PICKUP.0 + 0.001, PICKUP.1))
        .await;
    let second = w
        .driver("dsecond@x.test", (PICKUP.0 + 0.01, PICKUP.1))
        .await;
    let (_vt, ct, order) = w.accepted_order("standdown").await;
    let oid = order["id"].as_str().unwrap();
    let take = |who: &(String, String)| {
        let (w, who) = (&w, who.clone());
        async move {
            let offer = w.wait_offer(&who.1, Duration::from_secs(15)).await;
            let path = format!("/v1/offers/{}/accept", offer["id"].as_str().unwrap());
            let (s, d) = w.call(1, Method::POST, &path, &who.1, None).await;
            assert_eq!(s, StatusCode::OK, "{d}");
            assert_eq!(d["driver_id"], who.0.as_str());
            d["id"].as_str().unwrap().to_string()
        }
    };
    let delivery = take(&first).await;
    let path = format!("/v1/drivers/{}/suspend", first.0);
    let (s, v) = w.call(2, Method::POST, &path, &w.ops(), None).await;
    assert_eq!(
        (s, v["status"].clone()),
        (StatusCode::OK, json!("suspended")),
        "{v}"
    );
    assert_eq!(v["online"], false, "{v}");
    // Not theirs any more; the customer is told, and the next driver
    // gets the same delivery.
    let arrive = format!("/v1/deliveries/{delivery}/arrive");
    let (s, v) = w.call(3, Method::POST, &arrive, &first.1, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert!(w
        .feed(&ct)
        .await
        .contains(&"delivery.reassigning".to_string()));
    assert_eq!(take(&second).await, delivery);

    // The second driver adds a qualification: back to review, and the
    // delivery back to searching.
    let profile = json!({"vehicle": "car", "capacity": 4, "qualifications": ["food", "rx"]});
    let (s, v) = w
        .call(1, Method::PUT, "/v1/drivers/me", &second.1, Some(profile))
        .await;
    assert_eq!(
        (s, v["status"].clone()),
        (StatusCode::OK, json!("pending")),
        "{v}"
    );
    let (s, o) = w
        .call(2, Method::GET, &format!("/v1/orders/{oid}"), &ct, None)
        .await;
    assert_eq!(s, StatusCode::OK, "{o}");
    assert_eq!(o["delivery_status"], "searching", "{o}");
    assert!(o["driver_id"].is_null(), "{o}");
}

/// A driver who drops a qualification their work needs stays approved but
/// gives that work up: an open offer is withdrawn, a delivery in hand goes
/// back to dispatch.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_driver_who_drops_a_needed_qualification_gives_the_work_up() {
    let _serial = common::SERIAL.lock().await;
    let w = World::start().await;
    w.setting("dispatch/qualifications/restaurant", "food")
        .await;
    let a = w.driver("dqa@x.test", (PICKUP.0 + 0.001, PICKUP.1)).await;
    let b = w.driver("dqb@x.test", (PICKUP.0 + 0.01, PICKUP.1)).await;
    let (_vt, ct, order) = w.accepted_order("narrowed").await;
    let oid = order["id"].as_str().unwrap();
    let unqualified = json!({"vehicle": "car", "capacity": 4, "qualifications": []});
    let drop_food = |who: &(String, String)| {
        let (w, t, body) = (&w, who.1.clone(), unqualified.clone());
        async move {
            let (s, v) = w
                .call(1, Method::PUT, "/v1/drivers/me", &t, Some(body))
                .await;
            assert_eq!(
                (s, v["status"].clone()),
                (StatusCode::OK, json!("approved")),
                "{v}"
            );
        }
    };
    let offer = w.wait_offer(&a.1, Duration::from_secs(15)).await;
    drop_food(&a).await;
    let path = format!("/v1/offers/{}/accept", offer["id"].as_str().unwrap());
    let (s, v) = w.call(2, Method::POST, &path, &a.1, None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    // The next qualified driver takes it, then drops the qualification too.
    let offer = w.wait_offer(&b.1, Duration::from_secs(15)).await;
    let path = format!("/v1/offers/{}/accept", offer["id"].as_str().unwrap());
    let (s, v) = w.call(2, Method::POST, &path, &b.1, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    drop_food(&b).await;
    let (s, o) = w
        .call(3, Method::GET, &format!("/v1/orders/{oid}"), &ct, None)
        .await;
    assert_eq!(s, StatusCode::OK, "{o}");
    assert_eq!(o["delivery_status"], "searching", "{o}");
    assert!(o["driver_id"].is_null(), "{o}");
}

/// A delivery nobody took is searched for again: a driver who comes
/// online after it went unassigned gets it within the retry period.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unassigned_delivery_is_searched_for_again() {
    let _serial = common::SERIAL.lock().await;
    let w = World::start().await;
    w.setting("dispatch/give_up_rounds", "4").await;
    let (_vt, ct, order) = w.accepted_order("retried").await;
    let oid = order["id"].as_str().unwrap();
    let status = || async {
        let (s, o) = w
            .call(2, Method::GET, &format!("/v1/orders/{oid}"), &ct, None)
            .await;
        assert_eq!(s, StatusCode::OK, "{o}");
        o["delivery_status"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while status().await != "unassigned" {
        assert!(Instant::now() < deadline, "never given up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let at = (PICKUP.0 + 0.001, PICKUP.1);
    let late = w.driver("dlate@x.test", at).await;
    // Within a minute (the retry period) and a few rounds; the driver
    // pings as an app does (a position a minute old is stale).
    let deadline = Instant::now() + Duration::from_secs(75);
    let offer = loop {
        if let Some(o) = w.offers(&late.1).await.into_iter().next() {
            break o;
        }
        assert!(Instant::now() < deadline, "no offer within 75 s");
        let ping = json!({"lat": at.0, "lng": at.1});
        let (s, v) = w
            .call(
                2,
                Method::PUT,
                "/v1/drivers/me/location",
                &late.1,
                Some(ping),
            )
            .await;
        assert!(s.is_success(), "{s} {v}");
        tokio::time::sleep(Duration::from_millis(1000)).await;
    };
    assert_eq!(status().await, "searching");
    let path = format!("/v1/offers/{}/accept", offer["id"].as_str().unwrap());
    let (s, v) = w.call(1, Method::POST, &path, &late.1, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(status().await, "assigned");
    assert!(w
        .feed(&ct)
        .await
        .contains(&"delivery.searching".to_string()));
}
