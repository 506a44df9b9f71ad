//! The route marketplace through HTTP on a real 3-node cell: scheduled
//! orders grouped into routes, claims in a window, deterministic matching
//! by tier, fairness and claim time, no double-booking, long polls.

mod common;

use std::time::{Duration, Instant};

use common::harness::TestCell;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const HOUR: i64 = 3_600_000;

struct W {
    tc: TestCell,
    http: reqwest::Client,
}

impl W {
    async fn call(
        &self,
        node: u64,
        m: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = self
            .http
            .request(m, format!("{}{path}", self.tc.url(node)))
            .bearer_auth(token)
            .header("x-consistency", "linearizable");
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        let s = r.status();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    async fn signup(&self, email: &str, role: &str) -> (String, String) {
        let (s, v) = self.call(1, Method::POST, "/v1/auth/signup", "", Some(json!({"email": email, "password": "a long password", "name": email, "role": role}))).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        (
            v["account"]["id"].as_str().unwrap().into(),
            v["access_token"].as_str().unwrap().into(),
        )
    }

    async fn driver(&self, email: &str, vehicle: &str) -> (String, String) {
        self.qualified_driver(email, vehicle, &[]).await
    }

    /// An approved driver holding `qualifications`.
    async fn qualified_driver(
        &self,
        email: &str,
        vehicle: &str,
        qualifications: &[&str],
    ) -> (String, String) {
        let (id, t) = self.signup(email, "driver").await;
        let (s, v) = self
            .call(
                2,
                Method::PUT,
                "/v1/drivers/me",
                &t,
                Some(json!({"vehicle": vehicle, "capacity": 4, "qualifications": qualifications})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let (s, _) = self
            .call(
                1,
                Method::POST,
                &format!("/v1/drivers/{id}/approve"),
                &self.tc.cell.token,
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        (id, t)
    }

    async fn route(&self, start: i64, end: i64, vehicle: Option<&str>) -> String {
        // Times as RFC 3339 here; the authorization matrix sends Unix
        // milliseconds, which the endpoint accepts too.
        let (s, v) = self
            .call(1, Method::POST, "/v1/routes", &self.tc.cell.token, Some(json!({
                "window_start": rfc3339(start), "window_end": rfc3339(end),
                "stops": [{"location": {"lat": 40.71, "lng": -74.0}}, {"location": {"lat": 40.73, "lng": -73.99}}],
                "pay": {"amount": 4500, "currency": "USD"},
                "requirements": {"vehicle": vehicle, "min_capacity": 1},
            })))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["id"].as_str().unwrap().to_string()
    }

    async fn claim(&self, token: &str, route: &str) -> StatusCode {
        self.call(
            3,
            Method::POST,
            &format!("/v1/routes/{route}/claims"),
            token,
            None,
        )
        .await
        .0
    }

    async fn market(&self, token: &str) -> Value {
        let (s, v) = self
            .call(2, Method::GET, "/v1/routes/available", token, None)
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v
    }

    /// Waits for the market version to move past `version` (a window
    /// closed), through the long poll.
    async fn next_version(&self, token: &str, version: u64) -> Value {
        let started = Instant::now();
        loop {
            let (s, v) = self
                .call(
                    1,
                    Method::GET,
                    &format!("/v1/routes/available?version={version}&wait=10"),
                    token,
                    None,
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{v}");
            if v["version"].as_u64().unwrap() != version {
                return v;
            }
            assert!(started.elapsed() < Duration::from_secs(30));
        }
    }

    /// A customer's scheduled order of one product for `window` (RFC
    /// 3339), accepted by its vendor; returns the order id.
    async fn scheduled_order(
        &self,
        customer: &str,
        vendor: (&str, &Value),
        product: &Value,
        window: &str,
        key: &str,
    ) -> String {
        let (vendor_token, vendor_id) = vendor;
        let (s, q) = self.call(2, Method::POST, "/v1/quotes", customer, Some(json!({"vendor_id": vendor_id, "dropoff": {"lat": 40.72, "lng": -74.01}, "mode": "scheduled", "window_start": window}))).await;
        assert_eq!(s, StatusCode::CREATED, "{q}");
        let r = self.http.post(format!("{}/v1/orders", self.tc.url(3))).bearer_auth(customer).header("idempotency-key", key)
            .json(&json!({"quote_id": q["id"], "items": [{"product_id": product, "quantity": 2}], "dropoff": {"location": {"lat": 40.72, "lng": -74.01}, "address": "2 St"}, "mode": "scheduled", "window_start": window}))
            .send().await.unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let order = r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let (s, _) = self
            .call(
                1,
                Method::POST,
                &format!("/v1/orders/{order}/accept"),
                vendor_token,
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        order
    }

    async fn schedule(&self, node: u64, token: &str) -> Vec<(String, String, String)> {
        let (s, v) = self
            .call(node, Method::GET, "/v1/drivers/me/schedule", token, None)
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["id"].as_str().unwrap().to_string(),
                    r["window_start"].as_str().unwrap().to_string(),
                    r["window_end"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }
}

fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The route on `market` with the delivery of order `order_id`.
fn route_of<'m>(market: &'m Value, order_id: &str) -> Option<&'m Value> {
    let ulid = order_id.split_once('_').unwrap().1;
    market["routes"].as_array().unwrap().iter().find(|r| {
        r["stops"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["delivery_id"].as_str().is_some_and(|d| d.ends_with(ulid)))
    })
}

/// Waits until a window has closed after the claims made so far.
async fn close_window(w: &W, token: &str) {
    let v = w.market(token).await;
    w.next_version(token, v["version"].as_u64().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claims_are_matched_deterministically_fairly_and_without_overlaps() {
    let _serial = common::SERIAL.lock().await;
    let tc = TestCell::start(3, false, &["--rate-limit-auth", "1000"])
        .await
        .unwrap();
    let w = W {
        tc,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
    };
    let r = w
        .http
        .put(format!("{}/v1/kv/routes/window_seconds", w.tc.url(1)))
        .bearer_auth(&w.tc.cell.token)
        .body("2")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    // Windows at the ends of the range of milliseconds are refused, not
    // overflowed.
    for (start, end) in [(i64::MIN, 1), (1, i64::MAX), (i64::MAX - 1, i64::MAX)] {
        let (s, v) = w
            .call(1, Method::POST, "/v1/routes", &w.tc.cell.token, Some(json!({
                "window_start": start, "window_end": end,
                "stops": [{"location": {"lat": 40.71, "lng": -74.0}}, {"location": {"lat": 40.73, "lng": -73.99}}],
                "pay": {"amount": 4500, "currency": "USD"},
            })))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{start}..{end}: {v}");
    }

    let (a_id, a) = w.driver("a@x.test", "car").await;
    let (b_id, b) = w.driver("b@x.test", "car").await;
    let (c_id, c) = w.driver("c@x.test", "bike").await;
    // A pending driver sees nothing.
    let (_, pending) = w.signup("p@x.test", "driver").await;
    let (s, _) = w
        .call(1, Method::GET, "/v1/routes/available", &pending, None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // All routes are tomorrow, so they fall in the same week.
    let day = (now_ms() / (24 * HOUR) + 1) * 24 * HOUR;
    let early = w.route(day + 8 * HOUR, day + 9 * HOUR, None).await;
    // Window 1: A alone takes the early route, so A has more hours this week.
    assert_eq!(w.claim(&a, &early).await, StatusCode::OK);
    close_window(&w, &a).await;
    assert_eq!(w.schedule(1, &a).await.len(), 1);

    let r1 = w.route(day + 10 * HOUR, day + 11 * HOUR, None).await;
    let r2 = w
        .route(day + 10 * HOUR + HOUR / 2, day + 11 * HOUR + HOUR / 2, None)
        .await;
    let r3 = w.route(day + 12 * HOUR, day + 13 * HOUR, None).await;
    let van = w.route(day + 14 * HOUR, day + 15 * HOUR, Some("van")).await;
    // Eligibility: nobody here drives a van.
    let offered: Vec<String> = w.market(&a).await["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert!(
        offered.contains(&r1) && !offered.contains(&van),
        "{offered:?}"
    );
    assert_eq!(w.claim(&a, &van).await, StatusCode::FORBIDDEN);

    // Window 2: A and B both want the overlapping r1 and r2; C wants r3
    // and also claims then withdraws r1.
    for (t, r) in [
        (&b, &r1),
        (&a, &r1),
        (&a, &r2),
        (&b, &r2),
        (&c, &r3),
        (&c, &r1),
    ] {
        assert_eq!(w.claim(t, r).await, StatusCode::OK);
    }
    let (s, _) = w
        .call(
            2,
            Method::DELETE,
            &format!("/v1/routes/{r1}/claims"),
            &c,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    close_window(&w, &a).await;

    // r1 (earlier) goes to B: same tier, fewer hours this week than A.
    // r2 overlaps B's r1, so A gets it. C gets r3.
    let ids =
        |s: Vec<(String, String, String)>| s.into_iter().map(|(id, _, _)| id).collect::<Vec<_>>();
    let sa = ids(w.schedule(1, &a).await);
    let sb = ids(w.schedule(2, &b).await);
    let sc = ids(w.schedule(3, &c).await);
    assert_eq!(sb, vec![r1.clone()], "B: fewer hours wins r1");
    assert!(
        sa.contains(&early) && sa.contains(&r2) && !sa.contains(&r1),
        "A: {sa:?}"
    );
    assert_eq!(sc, vec![r3.clone()]);
    let _ = (&a_id, &b_id);

    // Every node holds the same assignment.
    for token in [&a, &b, &c] {
        let first = w.schedule(1, token).await;
        assert_eq!(w.schedule(2, token).await, first);
        assert_eq!(w.schedule(3, token).await, first);
    }
    // Assigned routes are gone from the market; claiming one is a conflict.
    let left: Vec<String> = w.market(&b).await["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert!(!left.contains(&r1) && !left.contains(&r2) && !left.contains(&r3));
    assert_eq!(w.claim(&b, &r2).await, StatusCode::CONFLICT);

    // Events tell the drivers.
    let (_, feed) = w.call(1, Method::GET, "/v1/events?after=0", &a, None).await;
    let kinds: Vec<&str> = feed["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"route.matched") && kinds.contains(&"route.unmatched"),
        "{kinds:?}"
    );

    // A scheduled order becomes a route stop when the vendor accepts it.
    let (_, vt) = w.signup("v@x.test", "vendor").await;
    let (_, vv) = w.call(1, Method::POST, "/v1/vendors", &vt, Some(json!({"name": "Bakery", "kind": "grocery", "location": {"lat": 40.71, "lng": -74.0}, "address": "1 St", "prep_minutes": 10}))).await;
    let (_, pp) = w.call(1, Method::POST, &format!("/v1/vendors/{}/products", vv["id"].as_str().unwrap()), &vt, Some(json!({"name": "Bread", "category": "bakery", "price": {"amount": 500, "currency": "USD"}, "stock": null}))).await;
    let (_, ct) = w.signup("cust@x.test", "customer").await;
    let window = day + 16 * HOUR + 15 * 60_000;
    let window_rfc = rfc3339(window);
    let oid = w
        .scheduled_order(&ct, (&vt, &vv["id"]), &pp["id"], &window_rfc, "sched-1")
        .await;
    let market = w.market(&c).await;
    let auto = route_of(&market, &oid);
    assert!(auto.is_some(), "no route for the scheduled order: {market}");
    let auto = auto.unwrap()["id"].as_str().unwrap().to_string();
    // And it is not dispatched on demand meanwhile.
    let (_, o) = w
        .call(2, Method::GET, &format!("/v1/orders/{oid}"), &ct, None)
        .await;
    assert_eq!(o["driver_id"], Value::Null);

    // The leader timed its matching windows.
    assert!(w.tc.metric_sum(1..=3, "route_match_seconds_count").await >= 2.0);

    // C wins the route in the next window, which makes its delivery C's:
    // C carries the order through to delivered and is paid for it.
    assert_eq!(w.claim(&c, &auto).await, StatusCode::OK);
    close_window(&w, &c).await;
    assert!(ids(w.schedule(2, &c).await).contains(&auto));
    let (_, o) = w
        .call(2, Method::GET, &format!("/v1/orders/{oid}"), &ct, None)
        .await;
    assert_eq!(o["driver_id"], json!(c_id), "{o}");
    let delivery = o["delivery_id"].as_str().unwrap().to_string();
    let (s, _) = w
        .call(
            1,
            Method::POST,
            &format!("/v1/orders/{oid}/ready"),
            &vt,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    for (action, body, status) in [
        ("arrive", None, "arrived"),
        ("pickup", None, "picked_up"),
        (
            "complete",
            Some(json!({"proof_code": o["proof_code"]})),
            "delivered",
        ),
    ] {
        let (s, v) = w
            .call(
                3,
                Method::POST,
                &format!("/v1/deliveries/{delivery}/{action}"),
                &c,
                body,
            )
            .await;
        assert_eq!(
            (s, v["status"].clone()),
            (StatusCode::OK, json!(status)),
            "{action}: {v}"
        );
    }
    let (_, o) = w
        .call(1, Method::GET, &format!("/v1/orders/{oid}"), &ct, None)
        .await;
    assert_eq!(o["status"], "delivered", "{o}");
    let (_, earnings) = w
        .call(2, Method::GET, "/v1/drivers/me/earnings", &c, None)
        .await;
    let pay = o["delivery_fee"]["amount"].as_i64().unwrap() + o["tip"]["amount"].as_i64().unwrap();
    assert_eq!(
        (
            earnings["balance"]["amount"].as_i64(),
            earnings["deliveries_completed"].clone()
        ),
        (Some(pay), json!(1)),
        "{earnings}"
    );
    let (_, feed) = w
        .call(1, Method::GET, "/v1/events?after=0", &ct, None)
        .await;
    assert!(
        feed["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "delivery.assigned" && e["data"]["route_id"] == json!(auto)),
        "{feed}"
    );

    // A scheduled order due to leave within half an hour whose route nobody
    // claims is not left waiting: the route expires and its delivery goes
    // out on demand, here to C, online next to the vendor.
    let (s, _) = w
        .call(
            3,
            Method::PUT,
            "/v1/drivers/me/availability",
            &c,
            Some(json!({"online": true})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = w
        .call(
            3,
            Method::PUT,
            "/v1/drivers/me/location",
            &c,
            Some(json!({"lat": 40.711, "lng": -74.001})),
        )
        .await;
    assert!(s.is_success());
    let soon = rfc3339(now_ms() + 20 * 60_000);
    let soon_order = w
        .scheduled_order(&ct, (&vt, &vv["id"]), &pp["id"], &soon, "sched-2")
        .await;
    let started = Instant::now();
    loop {
        let (_, offers) = w
            .call(1, Method::GET, "/v1/drivers/me/offers", &c, None)
            .await;
        let (_, o) = w
            .call(
                1,
                Method::GET,
                &format!("/v1/orders/{soon_order}"),
                &ct,
                None,
            )
            .await;
        let delivery = o["delivery_id"].as_str().unwrap_or_default().to_string();
        if offers["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["delivery_id"] == json!(delivery))
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no on-demand offer for a route nobody claimed: {offers} {o}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let market = w.market(&c).await;
    assert!(
        route_of(&market, &soon_order).is_none(),
        "the expired route is still on the market: {market}"
    );

    // A pharmacy's scheduled deliveries need drivers qualified for them
    // (`dispatch/qualifications/pharmacy`, as for on-demand dispatch), on
    // routes of their own: only such drivers see and may claim them.
    let r = w
        .http
        .put(format!(
            "{}/v1/kv/dispatch/qualifications/pharmacy",
            w.tc.url(1)
        ))
        .bearer_auth(&w.tc.cell.token)
        .body("rx")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let (_, pt) = w.signup("pharma@x.test", "vendor").await;
    let (_, pv) = w.call(1, Method::POST, "/v1/vendors", &pt, Some(json!({"name": "Pharmacy", "kind": "pharmacy", "location": {"lat": 40.71, "lng": -74.0}, "address": "3 St", "prep_minutes": 5}))).await;
    let (_, pm) = w.call(1, Method::POST, &format!("/v1/vendors/{}/products", pv["id"].as_str().unwrap()), &pt, Some(json!({"name": "Aspirin", "category": "otc", "price": {"amount": 700, "currency": "USD"}, "stock": null}))).await;
    let rx_order = w
        .scheduled_order(&ct, (&pt, &pv["id"]), &pm["id"], &window_rfc, "sched-rx")
        .await;
    let (_, rx) = w.qualified_driver("rx@x.test", "car", &["rx"]).await;
    let market = w.market(&rx).await;
    let rx_route = route_of(&market, &rx_order).expect("the qualified driver sees the route");
    assert_eq!(
        rx_route["requirements"]["qualifications"],
        json!(["rx"]),
        "{rx_route}"
    );
    let rx_route = rx_route["id"].as_str().unwrap().to_string();
    assert!(route_of(&w.market(&c).await, &rx_order).is_none());
    assert_eq!(w.claim(&c, &rx_route).await, StatusCode::FORBIDDEN);
    assert_eq!(w.claim(&rx, &rx_route).await, StatusCode::OK);
}
