//! The authorization matrix: every endpoint × every role × own/foreign
//! object, allow or deny, against a real cell. A denial is 401/403/404
//! (foreign objects are indistinguishable from missing ones) and changes
//! nothing; an allowed call is never 401/403.

mod common;

use std::collections::BTreeMap;

use common::harness::TestCell;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const ROLES: [&str; 7] = [
    "anon", "cust_a", "cust_b", "vend_a", "vend_b", "driver", "ops",
];

struct Fixture {
    tc: TestCell,
    tokens: BTreeMap<&'static str, Option<String>>,
}

impl Fixture {
    async fn call(
        &self,
        role: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
        key: Option<String>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .tc
            .http
            .request(method, format!("{}{path}", self.tc.url(1)));
        if let Some(Some(t)) = self.tokens.get(role) {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        let r = req.send().await.expect("request");
        let s = r.status();
        (s, r.json().await.unwrap_or(Value::Null))
    }
}

async fn signup(tc: &TestCell, email: &str, role: &str) -> (String, String) {
    let r = tc
        .http
        .post(format!("{}/v1/auth/signup", tc.url(1)))
        .json(&json!({"email": email, "password": "a long password", "name": email, "role": role}))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    (
        v["account"]["id"].as_str().unwrap().into(),
        v["access_token"].as_str().unwrap().into(),
    )
}

fn denied(s: StatusCode) -> bool {
    matches!(
        s,
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_every_role() {
    let tc = TestCell::start(1, false, &["--rate-limit-auth", "1000"])
        .await
        .expect("cell");
    let mut tokens = BTreeMap::new();
    tokens.insert("anon", None);
    for (role, email, kind) in [
        ("cust_a", "ca@example.com", "customer"),
        ("cust_b", "cb@example.com", "customer"),
        ("vend_a", "va@example.com", "vendor"),
        ("vend_b", "vb@example.com", "vendor"),
        ("driver", "dr@example.com", "driver"),
    ] {
        tokens.insert(role, Some(signup(&tc, email, kind).await.1));
    }
    tokens.insert("ops", Some(tc.cell.token.clone()));
    let f = Fixture { tc, tokens };

    // Objects owned by vend_a and cust_a.
    let (_, v) = f.call("vend_a", Method::POST, "/v1/vendors", Some(json!({"name": "A", "kind": "retail", "location": {"lat": 1.0, "lng": 1.0}, "address": "a", "prep_minutes": 5})), None).await;
    let va = v["id"].as_str().unwrap().to_string();
    let mk_product = || json!({"name": "P", "category": "c", "price": {"amount": 500, "currency": "USD"}, "stock": null});
    let (_, p) = f
        .call(
            "vend_a",
            Method::POST,
            &format!("/v1/vendors/{va}/products"),
            Some(mk_product()),
            None,
        )
        .await;
    let pa = p["id"].as_str().unwrap().to_string();
    let (_, q) = f
        .call(
            "cust_a",
            Method::POST,
            "/v1/quotes",
            Some(json!({"vendor_id": va, "dropoff": {"lat": 1.01, "lng": 1.01}})),
            None,
        )
        .await;
    let order_body = |quote: &Value| json!({"quote_id": quote["id"], "items": [{"product_id": pa, "quantity": 1}], "dropoff": {"location": {"lat": 1.01, "lng": 1.01}, "address": "x"}});
    let (s, o) = f
        .call(
            "cust_a",
            Method::POST,
            "/v1/orders",
            Some(order_body(&q)),
            Some("authz-1".into()),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{o}");
    let oa = o["id"].as_str().unwrap().to_string();
    // An approved driver with a profile (the driver endpoints need one).
    let (s, v) = f
        .call(
            "driver",
            Method::PUT,
            "/v1/drivers/me",
            Some(json!({"vehicle": "car", "capacity": 2})),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let driver_id = v["id"].as_str().unwrap().to_string();
    let (s, v) = f
        .call(
            "ops",
            Method::POST,
            &format!("/v1/drivers/{driver_id}/approve"),
            None,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let drivers = &["driver"][..];

    // (method, path, body, roles allowed)
    let public = &ROLES[..];
    let authed = &ROLES[1..];
    let customers = &["cust_a", "cust_b"][..];
    let vendors = &["vend_a", "vend_b"][..];
    let ops = &["ops"][..];
    let cases: Vec<(Method, String, Option<Value>, &[&str])> = vec![
        (Method::GET, format!("/v1/vendors/{va}"), None, public),
        (
            Method::GET,
            format!("/v1/vendors/{va}/products"),
            None,
            public,
        ),
        (Method::GET, format!("/v1/products/{pa}"), None, public),
        (Method::GET, "/.well-known/jwks.json".into(), None, public),
        (Method::GET, "/v1/cell".into(), None, public),
        (
            Method::GET,
            "/v1/me".into(),
            None,
            &["cust_a", "cust_b", "vend_a", "vend_b", "driver"],
        ),
        (Method::GET, "/v1/events".into(), None, authed),
        (
            Method::POST,
            "/v1/vendors".into(),
            Some(
                json!({"name": "N", "kind": "taxi", "location": {"lat": 1.0, "lng": 1.0}, "address": "a", "prep_minutes": 1}),
            ),
            vendors,
        ),
        (
            Method::PATCH,
            format!("/v1/vendors/{va}"),
            Some(json!({"name": "A"})),
            &["vend_a", "ops"],
        ),
        (
            Method::POST,
            format!("/v1/vendors/{va}/products"),
            Some(mk_product()),
            &["vend_a"],
        ),
        (
            Method::PATCH,
            format!("/v1/products/{pa}"),
            Some(json!({"name": "P"})),
            &["vend_a"],
        ),
        (
            Method::PUT,
            format!("/v1/products/{pa}/stock"),
            Some(json!({"stock": null})),
            &["vend_a"],
        ),
        (Method::GET, "/v1/cart".into(), None, customers),
        (
            Method::PUT,
            "/v1/cart".into(),
            Some(json!({"vendor_id": va, "items": [{"product_id": pa, "quantity": 1}]})),
            customers,
        ),
        (
            Method::POST,
            "/v1/quotes".into(),
            Some(json!({"vendor_id": va, "dropoff": {"lat": 1.01, "lng": 1.01}})),
            customers,
        ),
        (
            Method::GET,
            format!("/v1/orders/{oa}"),
            None,
            &["cust_a", "vend_a", "ops"],
        ),
        (
            Method::GET,
            "/v1/orders".into(),
            None,
            &["cust_a", "cust_b", "vend_a", "vend_b", "ops"],
        ),
        (
            Method::POST,
            format!("/v1/orders/{oa}/accept"),
            None,
            &["vend_a"],
        ),
        (
            Method::POST,
            format!("/v1/orders/{oa}/ready"),
            None,
            &["vend_a"],
        ),
        (Method::GET, "/admin/cluster".into(), None, ops),
        (Method::GET, "/admin/ledger/check".into(), None, ops),
        (Method::POST, "/admin/snapshot".into(), None, ops),
        (Method::GET, "/v1/kv?prefix=x".into(), None, ops),
        (
            Method::PUT,
            "/v1/kv/authz/probe".into(),
            Some(json!(1)),
            ops,
        ),
        (
            Method::POST,
            "/admin/tokens".into(),
            Some(json!({"role": "driver", "ttl_seconds": 60})),
            ops,
        ),
        (Method::GET, "/v1/drivers/me".into(), None, drivers),
        (
            Method::PUT,
            "/v1/drivers/me".into(),
            Some(json!({"vehicle": "car", "capacity": 2})),
            drivers,
        ),
        (
            Method::PUT,
            "/v1/drivers/me/availability".into(),
            Some(json!({"online": false})),
            drivers,
        ),
        (
            Method::PUT,
            "/v1/drivers/me/location".into(),
            Some(json!({"lat": 1.0, "lng": 1.0})),
            drivers,
        ),
        (Method::GET, "/v1/drivers/me/offers".into(), None, drivers),
        (Method::GET, "/v1/drivers/me/earnings".into(), None, drivers),
        (Method::GET, "/v1/drivers/me/schedule".into(), None, drivers),
        (Method::GET, "/v1/routes/available".into(), None, drivers),
        (
            Method::POST,
            format!("/v1/drivers/{driver_id}/approve"),
            None,
            ops,
        ),
        (
            Method::POST,
            "/v1/routes".into(),
            Some(
                json!({"window_start": 4102444800000i64, "window_end": 4102448400000i64, "stops": [{"location": {"lat": 1.0, "lng": 1.0}}], "pay": {"amount": 1000, "currency": "USD"}}),
            ),
            ops,
        ),
        (
            Method::GET,
            format!("/v1/vendors/{va}/webhooks"),
            None,
            &["vend_a", "ops"],
        ),
        (
            Method::POST,
            format!("/v1/vendors/{va}/webhooks"),
            Some(
                json!({"url": "https://hooks.example.com/hook", "secret": "a shared secret of some length"}),
            ),
            &["vend_a"],
        ),
        // Only its customer rates an order (this one is not delivered yet:
        // 409 for them, a denial for everyone else).
        (
            Method::POST,
            format!("/v1/orders/{oa}/rating"),
            Some(json!({"vendor": 5})),
            &["cust_a"],
        ),
        (
            Method::POST,
            format!("/v1/orders/{oa}/cancel"),
            None,
            &["cust_a", "ops"],
        ),
    ];
    let mut failures = Vec::new();
    for (method, path, body, allowed) in &cases {
        // Denied roles first: they must not change what the allowed ones see.
        let mut order: Vec<&str> = ROLES
            .iter()
            .copied()
            .filter(|r| !allowed.contains(r))
            .collect();
        order.extend(allowed.iter().copied());
        for role in order {
            let (s, v) = f.call(role, method.clone(), path, body.clone(), None).await;
            let ok = if allowed.contains(&role) {
                !matches!(s, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
                    && s != StatusCode::NOT_FOUND
            } else {
                denied(s)
            };
            if !ok {
                failures.push(format!("{method} {path} as {role}: {s} {v}"));
            }
        }
    }
    // The delivery opened by the accept: its customer, its vendor and ops
    // see it; no one else (the driver is not assigned to it).
    let (_, order) = f
        .call(
            "cust_a",
            Method::GET,
            &format!("/v1/orders/{oa}"),
            None,
            None,
        )
        .await;
    let did = order["delivery_id"]
        .as_str()
        .expect("a delivery")
        .to_string();
    for role in ROLES {
        let (s, v) = f
            .call(
                role,
                Method::GET,
                &format!("/v1/deliveries/{did}"),
                None,
                None,
            )
            .await;
        let allowed = ["cust_a", "vend_a", "ops"].contains(&role);
        if allowed == denied(s) {
            failures.push(format!("GET /v1/deliveries/{did} as {role}: {s} {v}"));
        }
        let (s, v) = f
            .call(
                role,
                Method::POST,
                &format!("/v1/deliveries/{did}/arrive"),
                None,
                None,
            )
            .await;
        if !denied(s) && role != "ops" {
            failures.push(format!(
                "POST /v1/deliveries/{did}/arrive as {role}: {s} {v}"
            ));
        }
    }
    // Checkout: only the quote's owner; a foreign quote is refused.
    for (role, expect_denied) in [
        ("cust_b", true),
        ("vend_a", true),
        ("ops", true),
        ("anon", true),
    ] {
        let (_, q) = f
            .call(
                "cust_a",
                Method::POST,
                "/v1/quotes",
                Some(json!({"vendor_id": va, "dropoff": {"lat": 1.01, "lng": 1.01}})),
                None,
            )
            .await;
        let (s, v) = f
            .call(
                role,
                Method::POST,
                "/v1/orders",
                Some(order_body(&q)),
                Some(format!("k-{role}")),
            )
            .await;
        if denied(s) != expect_denied {
            failures.push(format!("checkout with cust_a's quote as {role}: {s} {v}"));
        }
    }
    // The foreign orders list shows nothing foreign.
    let (_, list) = f
        .call("cust_b", Method::GET, "/v1/orders", None, None)
        .await;
    assert_eq!(list["items"], json!([]));
    let (_, list) = f
        .call("vend_b", Method::GET, "/v1/orders", None, None)
        .await;
    assert_eq!(list["items"], json!([]));
    assert!(
        failures.is_empty(),
        "authorization matrix violations:\n{}",
        failures.join("\n")
    );
}
