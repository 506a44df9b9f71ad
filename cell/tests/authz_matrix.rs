//! The authorization matrix: every endpoint × every role × own/foreign
//! object, allow or deny, against a real cell. A denial is `401` for the
//! anonymous caller and `403`/`404` for a signed-in one (foreign objects
//! are indistinguishable from missing ones), and changes nothing: denied
//! roles go first, and each allowed role then gets exactly the status the
//! case names (the success, or the `409` its object's state implies).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::harness::TestCell;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// `driver` is assigned a delivery during the matrix; `driver_b` is an
/// approved driver who stays offline and is assigned nothing (so that
/// delivery, and `driver`'s offer, are foreign to them).
const ROLES: [&str; 8] = [
    "anon", "cust_a", "cust_b", "vend_a", "vend_b", "driver", "driver_b", "ops",
];

/// (method, path, body, the allowed roles in the order they run, each with
/// the one status it must get). Every role not listed must be denied.
type Case = (Method, String, Option<Value>, Vec<(&'static str, u16)>);

/// Every role in `roles` allowed, each answered `status`.
fn all(roles: &[&'static str], status: u16) -> Vec<(&'static str, u16)> {
    roles.iter().map(|r| (*r, status)).collect()
}

struct Fixture {
    tc: TestCell,
    /// Tokens by role; also a few accounts outside the matrix.
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

    /// A call that must answer `want`; returns the body.
    async fn must(
        &self,
        role: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
        want: StatusCode,
    ) -> Value {
        let (s, v) = self.call(role, method.clone(), path, body, None).await;
        assert_eq!(s, want, "{method} {path} as {role}: {v}");
        v
    }

    /// A quote for `role` and an on-demand order of one `product` with it.
    async fn order(&self, role: &str, vendor: &str, product: &str, key: &str) -> Value {
        let q = self
            .must(
                role,
                Method::POST,
                "/v1/quotes",
                Some(json!({"vendor_id": vendor, "dropoff": {"lat": 1.01, "lng": 1.01}})),
                StatusCode::CREATED,
            )
            .await;
        let (s, o) = self
            .call(
                role,
                Method::POST,
                "/v1/orders",
                Some(order_body(&q, product)),
                Some(key.into()),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{o}");
        o
    }

    /// Runs `cases`: per case the denied roles first, then the allowed ones
    /// in their listed order.
    async fn run(&self, cases: &[Case], failures: &mut Vec<String>) {
        for (method, path, body, allowed) in cases {
            let mut order: Vec<(&str, Option<u16>)> = ROLES
                .iter()
                .filter(|r| !allowed.iter().any(|(a, _)| a == *r))
                .map(|r| (*r, None))
                .collect();
            order.extend(allowed.iter().map(|(r, s)| (*r, Some(*s))));
            for (role, want) in order {
                let (s, v) = self
                    .call(role, method.clone(), path, body.clone(), None)
                    .await;
                let ok = match want {
                    Some(w) => s.as_u16() == w,
                    None => denied(role, s),
                };
                if !ok {
                    let want = want.map_or("a denial".to_string(), |w| w.to_string());
                    failures.push(format!("{method} {path} as {role}: {s} (want {want}) {v}"));
                }
            }
        }
    }
}

fn order_body(quote: &Value, product: &str) -> Value {
    json!({"quote_id": quote["id"], "items": [{"product_id": product, "quantity": 1}], "dropoff": {"location": {"lat": 1.01, "lng": 1.01}, "address": "x"}})
}

/// (account id, access token, refresh token)
async fn signup(tc: &TestCell, email: &str, role: &str) -> (String, String, String) {
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
        v["refresh_token"].as_str().unwrap().into(),
    )
}

/// Anonymous callers are told to authenticate; signed-in ones are refused
/// or shown nothing.
fn denied(role: &str, s: StatusCode) -> bool {
    if role == "anon" {
        s == StatusCode::UNAUTHORIZED
    } else {
        matches!(s, StatusCode::FORBIDDEN | StatusCode::NOT_FOUND)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_every_role() {
    let tc = TestCell::start(1, false, &["--rate-limit-auth", "1000"])
        .await
        .expect("cell");
    let mut tokens = BTreeMap::new();
    tokens.insert("anon", None);
    let mut ids = BTreeMap::new();
    let mut victim_refresh = String::new();
    for (role, email, kind) in [
        ("cust_a", "ca@example.com", "customer"),
        ("cust_b", "cb@example.com", "customer"),
        ("vend_a", "va@example.com", "vendor"),
        ("vend_b", "vb@example.com", "vendor"),
        ("driver", "dr@example.com", "driver"),
        ("driver_b", "db@example.com", "driver"),
        // Outside the matrix: a driver ops suspends, and a login session
        // everyone tries to end.
        ("spare", "sp@example.com", "driver"),
        ("victim", "vi@example.com", "customer"),
    ] {
        let (id, access, refresh) = signup(&tc, email, kind).await;
        tokens.insert(role, Some(access));
        ids.insert(role, id);
        if role == "victim" {
            victim_refresh = refresh;
        }
    }
    tokens.insert("ops", Some(tc.cell.token.clone()));
    let f = Fixture { tc, tokens };

    // Objects owned by vend_a and cust_a.
    let v = f.must("vend_a", Method::POST, "/v1/vendors", Some(json!({"name": "A", "kind": "retail", "location": {"lat": 1.0, "lng": 1.0}, "address": "a", "prep_minutes": 5})), StatusCode::CREATED).await;
    let va = v["id"].as_str().unwrap().to_string();
    let mk_product = || json!({"name": "P", "category": "c", "price": {"amount": 500, "currency": "USD"}, "stock": null});
    let products = format!("/v1/vendors/{va}/products");
    let p = f
        .must(
            "vend_a",
            Method::POST,
            &products,
            Some(mk_product()),
            StatusCode::CREATED,
        )
        .await;
    let pa = p["id"].as_str().unwrap().to_string();
    // One product only to be deleted.
    let p = f
        .must(
            "vend_a",
            Method::POST,
            &products,
            Some(mk_product()),
            StatusCode::CREATED,
        )
        .await;
    let pd = p["id"].as_str().unwrap().to_string();
    // `oa` is accepted, made ready and cancelled in the matrix; `orj` is
    // rejected there.
    let oa = f.order("cust_a", &va, &pa, "authz-1").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let orj = f.order("cust_a", &va, &pa, "authz-reject").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let webhook = || json!({"url": "https://hooks.example.com/hook", "secret": "a shared secret of some length"});
    let hooks = format!("/v1/vendors/{va}/webhooks");
    let wh1 = f
        .must(
            "vend_a",
            Method::POST,
            &hooks,
            Some(webhook()),
            StatusCode::CREATED,
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let wh2 = f
        .must(
            "vend_a",
            Method::POST,
            &hooks,
            Some(webhook()),
            StatusCode::CREATED,
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Drivers with profiles (the driver endpoints need one); `driver` and
    // `driver_b` approved, `spare` left pending for ops to suspend.
    for role in ["driver", "driver_b", "spare"] {
        f.must(
            role,
            Method::PUT,
            "/v1/drivers/me",
            Some(json!({"vehicle": "car", "capacity": 2})),
            StatusCode::OK,
        )
        .await;
    }
    for role in ["driver", "driver_b"] {
        f.must(
            "ops",
            Method::POST,
            &format!("/v1/drivers/{}/approve", ids[role]),
            None,
            StatusCode::OK,
        )
        .await;
    }
    let driver_id = ids["driver"].clone();
    // Offers stay open, and a claim window stays open, for the whole test.
    for (key, value) in [
        ("dispatch/offer_seconds", 600),
        ("routes/window_seconds", 3600),
    ] {
        let (s, v) = f
            .call(
                "ops",
                Method::PUT,
                &format!("/v1/kv/{key}"),
                Some(json!(value)),
                None,
            )
            .await;
        assert!(s.is_success(), "{key}: {s} {v}");
    }

    // An offer for `driver`: online at the vendor, and a ready order there.
    // (The matrix accepts it and walks its delivery to the door.)
    f.must(
        "driver",
        Method::PUT,
        "/v1/drivers/me/availability",
        Some(json!({"online": true})),
        StatusCode::OK,
    )
    .await;
    f.must(
        "driver",
        Method::PUT,
        "/v1/drivers/me/location",
        Some(json!({"lat": 1.0, "lng": 1.0})),
        StatusCode::NO_CONTENT,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = f
            .must(
                "driver",
                Method::GET,
                "/v1/drivers/me",
                None,
                StatusCode::OK,
            )
            .await;
        if !v["location"].is_null() {
            break;
        }
        assert!(Instant::now() < deadline, "the ping never applied: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let od = f.order("cust_a", &va, &pa, "authz-2").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    for action in ["accept", "ready"] {
        f.must(
            "vend_a",
            Method::POST,
            &format!("/v1/orders/{od}/{action}"),
            None,
            StatusCode::OK,
        )
        .await;
    }
    let o = f
        .must(
            "cust_a",
            Method::GET,
            &format!("/v1/orders/{od}"),
            None,
            StatusCode::OK,
        )
        .await;
    let dd = o["delivery_id"].as_str().expect("a delivery").to_string();
    let proof = o["proof_code"].as_str().expect("a proof code").to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    let offer = loop {
        let v = f
            .must(
                "driver",
                Method::GET,
                "/v1/drivers/me/offers",
                None,
                StatusCode::OK,
            )
            .await;
        let mine = v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|o| o["delivery_id"] == json!(dd))
            .cloned();
        if let Some(o) = mine {
            break o["id"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "no offer of {dd}: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // A route to claim.
    let route_body = json!({"window_start": tomorrow_ms(), "window_end": tomorrow_ms() + 3_600_000, "stops": [{"location": {"lat": 1.0, "lng": 1.0}}], "pay": {"amount": 1000, "currency": "USD"}});
    let route = f
        .must(
            "ops",
            Method::POST,
            "/v1/routes",
            Some(route_body.clone()),
            StatusCode::CREATED,
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();

    let public = &ROLES[..];
    let authed = &ROLES[1..];
    let accounts = &ROLES[1..7];
    let customers = &["cust_a", "cust_b"][..];
    let vendors = &["vend_a", "vend_b"][..];
    let drivers = &["driver", "driver_b"][..];
    let ops = &["ops"][..];
    let cases: Vec<Case> = vec![
        // ---- identity, info ----
        (
            Method::GET,
            "/.well-known/jwks.json".into(),
            None,
            all(public, 200),
        ),
        (Method::GET, "/v1/cell".into(), None, all(public, 200)),
        // The ops bootstrap token belongs to no account: 404, by design.
        (Method::GET, "/v1/me".into(), None, all(accounts, 200)),
        (Method::GET, "/v1/events".into(), None, all(authed, 200)),
        // Everyone tries to end the victim's session with its refresh
        // token: 204 for every caller, and it ends nothing (checked below).
        (
            Method::POST,
            "/v1/auth/logout".into(),
            Some(json!({"refresh_token": victim_refresh})),
            all(authed, 204),
        ),
        // ---- catalog ----
        (
            Method::GET,
            format!("/v1/vendors/{va}"),
            None,
            all(public, 200),
        ),
        (Method::GET, products.clone(), None, all(public, 200)),
        (
            Method::GET,
            format!("/v1/products/{pa}"),
            None,
            all(public, 200),
        ),
        (
            Method::POST,
            "/v1/vendors".into(),
            Some(
                json!({"name": "N", "kind": "taxi", "location": {"lat": 1.0, "lng": 1.0}, "address": "a", "prep_minutes": 1}),
            ),
            all(vendors, 201),
        ),
        (
            Method::PATCH,
            format!("/v1/vendors/{va}"),
            Some(json!({"name": "A"})),
            all(&["vend_a", "ops"], 200),
        ),
        (
            Method::POST,
            products.clone(),
            Some(mk_product()),
            all(&["vend_a"], 201),
        ),
        (
            Method::PATCH,
            format!("/v1/products/{pa}"),
            Some(json!({"name": "P"})),
            all(&["vend_a"], 200),
        ),
        (
            Method::PUT,
            format!("/v1/products/{pa}/stock"),
            Some(json!({"stock": null})),
            all(&["vend_a"], 200),
        ),
        (
            Method::DELETE,
            format!("/v1/products/{pd}"),
            None,
            all(&["vend_a"], 204),
        ),
        // ---- cart, quotes, orders ----
        (Method::GET, "/v1/cart".into(), None, all(customers, 200)),
        (
            Method::PUT,
            "/v1/cart".into(),
            Some(json!({"vendor_id": va, "items": [{"product_id": pa, "quantity": 1}]})),
            all(customers, 200),
        ),
        (
            Method::POST,
            "/v1/quotes".into(),
            Some(json!({"vendor_id": va, "dropoff": {"lat": 1.01, "lng": 1.01}})),
            all(customers, 201),
        ),
        (
            Method::GET,
            format!("/v1/orders/{oa}"),
            None,
            all(&["cust_a", "vend_a", "ops"], 200),
        ),
        (
            Method::GET,
            "/v1/orders".into(),
            None,
            all(&["cust_a", "cust_b", "vend_a", "vend_b", "ops"], 200),
        ),
        (
            Method::POST,
            format!("/v1/orders/{oa}/accept"),
            None,
            all(&["vend_a"], 200),
        ),
        (
            Method::POST,
            format!("/v1/orders/{oa}/ready"),
            None,
            all(&["vend_a"], 200),
        ),
        (
            Method::POST,
            format!("/v1/orders/{orj}/reject"),
            None,
            all(&["vend_a"], 200),
        ),
        // Only its customer rates an order (this one is not delivered yet:
        // 409 for them, a denial for everyone else).
        (
            Method::POST,
            format!("/v1/orders/{oa}/rating"),
            Some(json!({"vendor": 5})),
            all(&["cust_a"], 409),
        ),
        // Its customer cancels; ops then finds it cancelled already.
        (
            Method::POST,
            format!("/v1/orders/{oa}/cancel"),
            None,
            vec![("cust_a", 200), ("ops", 409)],
        ),
        // ---- admin: cluster, snapshots, backups, search ----
        (Method::GET, "/admin/cluster".into(), None, all(ops, 200)),
        (
            Method::GET,
            "/admin/cluster/versions".into(),
            None,
            all(ops, 200),
        ),
        (
            Method::GET,
            "/admin/ledger/check".into(),
            None,
            all(ops, 200),
        ),
        (Method::POST, "/admin/snapshot".into(), None, all(ops, 200)),
        (Method::GET, "/admin/backup".into(), None, all(ops, 200)),
        (
            Method::POST,
            "/admin/search/reindex".into(),
            None,
            all(ops, 202),
        ),
        // The membership changes only in forms that change nothing even
        // for ops: init of an initialised node (409), and bodies the
        // handler refuses (400) after the role check. A role check that let
        // someone through shows as a 409/400 in place of a denial.
        (
            Method::POST,
            "/admin/cluster/init".into(),
            None,
            all(ops, 409),
        ),
        (
            Method::POST,
            "/admin/cluster/nodes".into(),
            Some(json!({"id": 0, "api_addr": "127.0.0.1:1", "peer_addr": "127.0.0.1:1"})),
            all(ops, 400),
        ),
        (
            Method::POST,
            "/admin/cluster/membership".into(),
            Some(json!({"voters": []})),
            all(ops, 400),
        ),
        (
            Method::DELETE,
            "/admin/cluster/nodes/not-a-node".into(),
            None,
            all(ops, 400),
        ),
        (
            Method::POST,
            "/admin/tokens".into(),
            Some(json!({"role": "driver", "ttl_seconds": 60})),
            all(ops, 200),
        ),
        // ---- config store: created, read, deleted by ops only ----
        (Method::GET, "/v1/kv?prefix=x".into(), None, all(ops, 200)),
        (
            Method::PUT,
            "/v1/kv/authz/probe".into(),
            Some(json!(1)),
            all(ops, 201),
        ),
        (
            Method::GET,
            "/v1/kv/authz/probe".into(),
            None,
            all(ops, 200),
        ),
        (
            Method::DELETE,
            "/v1/kv/authz/probe".into(),
            None,
            all(ops, 204),
        ),
        // ---- drivers ----
        (
            Method::GET,
            "/v1/drivers/me".into(),
            None,
            all(drivers, 200),
        ),
        (
            Method::PUT,
            "/v1/drivers/me".into(),
            Some(json!({"vehicle": "car", "capacity": 2})),
            all(drivers, 200),
        ),
        (
            Method::PUT,
            "/v1/drivers/me/location".into(),
            Some(json!({"lat": 1.0, "lng": 1.0})),
            all(drivers, 204),
        ),
        (
            Method::GET,
            "/v1/drivers/me/offers".into(),
            None,
            all(drivers, 200),
        ),
        (
            Method::GET,
            "/v1/drivers/me/earnings".into(),
            None,
            all(drivers, 200),
        ),
        (
            Method::GET,
            "/v1/drivers/me/schedule".into(),
            None,
            all(drivers, 200),
        ),
        (
            Method::POST,
            format!("/v1/drivers/{driver_id}/approve"),
            None,
            all(ops, 200),
        ),
        (
            Method::POST,
            format!("/v1/drivers/{}/suspend", ids["spare"]),
            None,
            all(ops, 200),
        ),
        // ---- `driver`'s offer and delivery, in lifecycle order; foreign
        // to `driver_b`, and no one else's to act on ----
        (
            Method::POST,
            format!("/v1/offers/{offer}/accept"),
            None,
            all(&["driver"], 200),
        ),
        // Answered already: 409 for its driver.
        (
            Method::POST,
            format!("/v1/offers/{offer}/decline"),
            None,
            all(&["driver"], 409),
        ),
        (
            Method::GET,
            format!("/v1/deliveries/{dd}"),
            None,
            all(&["cust_a", "vend_a", "driver", "ops"], 200),
        ),
        (
            Method::GET,
            format!("/v1/deliveries/{dd}/driver"),
            None,
            all(&["cust_a", "vend_a", "driver", "ops"], 200),
        ),
        // The assigned driver sees the order.
        (
            Method::GET,
            format!("/v1/orders/{od}"),
            None,
            all(&["cust_a", "vend_a", "driver", "ops"], 200),
        ),
        (
            Method::POST,
            format!("/v1/deliveries/{dd}/arrive"),
            None,
            all(&["driver"], 200),
        ),
        (
            Method::POST,
            format!("/v1/deliveries/{dd}/pickup"),
            None,
            all(&["driver"], 200),
        ),
        (
            Method::POST,
            format!("/v1/deliveries/{dd}/complete"),
            Some(json!({"proof_code": proof})),
            all(&["driver"], 200),
        ),
        // Delivered already: 409 for its driver.
        (
            Method::POST,
            format!("/v1/deliveries/{dd}/fail"),
            None,
            all(&["driver"], 409),
        ),
        (
            Method::POST,
            format!("/v1/orders/{od}/rating"),
            Some(json!({"vendor": 5, "driver": 5})),
            all(&["cust_a"], 201),
        ),
        // Offline now that the delivery is done.
        (
            Method::PUT,
            "/v1/drivers/me/availability".into(),
            Some(json!({"online": false})),
            all(drivers, 200),
        ),
        // ---- route marketplace ----
        (
            Method::GET,
            "/v1/routes/available".into(),
            None,
            all(drivers, 200),
        ),
        (
            Method::POST,
            "/v1/routes".into(),
            Some(route_body),
            all(ops, 201),
        ),
        (
            Method::POST,
            format!("/v1/routes/{route}/claims"),
            None,
            all(drivers, 200),
        ),
        (
            Method::DELETE,
            format!("/v1/routes/{route}/claims"),
            None,
            all(drivers, 200),
        ),
        // ---- webhooks ----
        (
            Method::GET,
            hooks.clone(),
            None,
            all(&["vend_a", "ops"], 200),
        ),
        (
            Method::POST,
            hooks.clone(),
            Some(webhook()),
            all(&["vend_a"], 201),
        ),
        // Its vendor or ops removes a webhook; whoever comes second finds
        // it gone (404), so each gets one of the two first.
        (
            Method::DELETE,
            format!("{hooks}/{wh1}"),
            None,
            vec![("vend_a", 204), ("ops", 404)],
        ),
        (
            Method::DELETE,
            format!("{hooks}/{wh2}"),
            None,
            vec![("ops", 204), ("vend_a", 404)],
        ),
    ];
    let mut failures = Vec::new();
    f.run(&cases, &mut failures).await;

    // The delivery `oa`'s accept opened (cancelled since): its customer,
    // its vendor and ops see it; no driver is assigned, so no one may act
    // on it, ops included (deliveries are acted on by their driver only).
    let order = f
        .must(
            "cust_a",
            Method::GET,
            &format!("/v1/orders/{oa}"),
            None,
            StatusCode::OK,
        )
        .await;
    let did = order["delivery_id"]
        .as_str()
        .expect("a delivery")
        .to_string();
    let mut unassigned: Vec<Case> = vec![(
        Method::GET,
        format!("/v1/deliveries/{did}"),
        None,
        all(&["cust_a", "vend_a", "ops"], 200),
    )];
    for action in ["arrive", "pickup", "complete", "fail"] {
        unassigned.push((
            Method::POST,
            format!("/v1/deliveries/{did}/{action}"),
            None,
            vec![],
        ));
    }
    f.run(&unassigned, &mut failures).await;

    // The proof code is the customer's (and ops'): not shown to the vendor
    // or the driver.
    for role in ["vend_a", "driver"] {
        let (_, v) = f
            .call(role, Method::GET, &format!("/v1/orders/{od}"), None, None)
            .await;
        if !v["proof_code"].is_null() {
            failures.push(format!("order {od} shows {role} its proof code: {v}"));
        }
    }

    // Checkout: only the quote's owner; a foreign quote is refused, and
    // the refusals leave it usable.
    let q = f
        .must(
            "cust_a",
            Method::POST,
            "/v1/quotes",
            Some(json!({"vendor_id": va, "dropoff": {"lat": 1.01, "lng": 1.01}})),
            StatusCode::CREATED,
        )
        .await;
    for role in ROLES.iter().filter(|r| **r != "cust_a") {
        let (s, v) = f
            .call(
                role,
                Method::POST,
                "/v1/orders",
                Some(order_body(&q, &pa)),
                Some(format!("k-{role}")),
            )
            .await;
        if !denied(role, s) {
            failures.push(format!("checkout with cust_a's quote as {role}: {s} {v}"));
        }
    }
    let (s, v) = f
        .call(
            "cust_a",
            Method::POST,
            "/v1/orders",
            Some(order_body(&q, &pa)),
            Some("k-cust_a".into()),
        )
        .await;
    if s != StatusCode::CREATED {
        failures.push(format!(
            "checkout by the quote's owner after refusals: {s} {v}"
        ));
    }

    // The foreign orders list shows nothing foreign.
    for role in ["cust_b", "vend_b"] {
        let (_, list) = f.call(role, Method::GET, "/v1/orders", None, None).await;
        if list["items"] != json!([]) {
            failures.push(format!("{role} lists foreign orders: {list}"));
        }
    }
    // No one ended the victim's session.
    let (s, v) = f
        .call(
            "anon",
            Method::POST,
            "/v1/auth/refresh",
            Some(json!({"refresh_token": victim_refresh})),
            None,
        )
        .await;
    if s != StatusCode::OK {
        failures.push(format!("the victim's session was ended: {s} {v}"));
    }
    // The cluster is as it was.
    let c = f
        .must("ops", Method::GET, "/admin/cluster", None, StatusCode::OK)
        .await;
    if (c["voters"].clone(), c["learners"].clone()) != (json!([1]), json!([])) {
        failures.push(format!("the membership changed: {c}"));
    }
    // Only ops' suspension took: `driver` is still approved, `spare` is
    // suspended.
    let v = f
        .must(
            "driver",
            Method::GET,
            "/v1/drivers/me",
            None,
            StatusCode::OK,
        )
        .await;
    if v["status"] != "approved" {
        failures.push(format!("driver's status changed: {v}"));
    }
    let v = f
        .must("spare", Method::GET, "/v1/drivers/me", None, StatusCode::OK)
        .await;
    if v["status"] != "suspended" {
        failures.push(format!("spare driver not suspended: {v}"));
    }
    assert!(
        failures.is_empty(),
        "authorization matrix violations:\n{}",
        failures.join("\n")
    );
}

/// A route window's start a day from now, in Unix milliseconds (routes
/// may be planned at most 30 days ahead).
fn tomorrow_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    now.as_millis() as i64 / 3_600_000 * 3_600_000 + 86_400_000
}
