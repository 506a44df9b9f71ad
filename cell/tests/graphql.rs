//! GraphQL on real cells: the app screens in one query each, equal to the
//! REST answers for the same data; the REST authorization matrix holding
//! for GraphQL; limits refusing costly queries before they run; an order's
//! status pushed over a `graphql-transport-ws` subscription across a
//! leader change.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::harness::TestCell;
use futures::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

const PICKUP: (f64, f64) = (40.70, -74.00);
const DROPOFF: (f64, f64) = (40.72, -74.01);
const HOUR_MS: i64 = 3_600_000;

/// Midnight UTC at the start of tomorrow, in Unix milliseconds (route
/// windows must lie in the future).
fn tomorrow_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    (now / (24 * HOUR_MS) + 1) * 24 * HOUR_MS
}

struct Api {
    tc: TestCell,
    http: reqwest::Client,
}

impl Api {
    async fn start(nodes: u64) -> Api {
        Self::start_with(nodes, &["--rate-limit-auth", "1000"]).await
    }

    async fn start_with(nodes: u64, args: &[&str]) -> Api {
        let tc = TestCell::start(nodes, false, args).await.unwrap();
        Api {
            tc,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
        }
    }

    async fn rest(
        &self,
        node: u64,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.tc.url(node)))
            .header("x-consistency", "linearizable");
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let s = r.status();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    /// POST /graphql; returns (HTTP status, data, first error's code).
    async fn gql(
        &self,
        node: u64,
        token: Option<&str>,
        query: &str,
        variables: Value,
    ) -> (StatusCode, Value, Option<String>) {
        let (s, v, _) = self.gql_sized(node, token, query, variables).await;
        let code = v["errors"][0]["extensions"]["code"]
            .as_str()
            .map(str::to_string);
        (s, v["data"].clone(), code)
    }

    async fn gql_sized(
        &self,
        node: u64,
        token: Option<&str>,
        query: &str,
        variables: Value,
    ) -> (StatusCode, Value, usize) {
        let mut req = self
            .http
            .post(format!("{}/graphql", self.tc.url(node)))
            .header("x-consistency", "linearizable")
            .json(&json!({"query": query, "variables": variables}));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        let s = r.status();
        let bytes = r.bytes().await.unwrap();
        (
            s,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            bytes.len(),
        )
    }

    async fn signup(&self, email: &str, role: &str) -> (String, String) {
        let (s, v) = self
            .rest(1, Method::POST, "/v1/auth/signup", None, Some(json!({"email": email, "password": "a long password", "name": email, "role": role})))
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

    /// A vendor with two products; returns (vendor token, vendor id, product ids).
    async fn shop(&self, email: &str) -> (String, String, Vec<String>) {
        let (_, vt) = self.signup(email, "vendor").await;
        let (s, v) = self
            .rest(1, Method::POST, "/v1/vendors", Some(&vt), Some(json!({"name": "Noodle Bar", "kind": "restaurant", "location": {"lat": PICKUP.0, "lng": PICKUP.1}, "address": "1 Main St", "prep_minutes": 5})))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let vid = v["id"].as_str().unwrap().to_string();
        let mut pids = Vec::new();
        for (name, price) in [("Ramen", 1250), ("Gyoza", 600)] {
            let (s, p) = self
                .rest(1, Method::POST, &format!("/v1/vendors/{vid}/products"), Some(&vt), Some(json!({"name": name, "category": "noodles", "price": {"amount": price, "currency": "USD"}, "stock": 50})))
                .await;
            assert_eq!(s, StatusCode::CREATED, "{p}");
            pids.push(p["id"].as_str().unwrap().to_string());
        }
        (vt, vid, pids)
    }

    /// A REST quote of `ct`'s for vendor `vid`, delivered to `dropoff`.
    async fn quote(&self, ct: &str, vid: &str, dropoff: (f64, f64)) -> Value {
        let (s, q) = self
            .rest(
                1,
                Method::POST,
                "/v1/quotes",
                Some(ct),
                Some(json!({"vendor_id": vid, "dropoff": {"lat": dropoff.0, "lng": dropoff.1}})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{q}");
        q
    }

    /// REST checkout: `POST /v1/orders` with an `Idempotency-Key`.
    async fn checkout(&self, token: Option<&str>, key: &str, body: Value) -> (StatusCode, Value) {
        let mut req = self
            .http
            .post(format!("{}/v1/orders", self.tc.url(1)))
            .header("idempotency-key", key)
            .json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        let s = r.status();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    /// A placed order of one unit of `product` (REST quote and checkout);
    /// returns its id.
    async fn one_item_order(&self, ct: &str, vid: &str, product: &str, key: &str) -> String {
        let q = self.quote(ct, vid, DROPOFF).await;
        let (s, order) = self
            .checkout(Some(ct), key, json!({"quote_id": q["id"], "items": [{"product_id": product, "quantity": 1}], "dropoff": {"location": {"lat": DROPOFF.0, "lng": DROPOFF.1}, "address": "x"}}))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{order}");
        order["id"].as_str().unwrap().to_string()
    }

    /// An ops-made route (`POST /v1/routes`) of one stop at `at` with no
    /// requirements, from `start` to `end` (Unix ms); returns its id.
    async fn route(&self, at: (f64, f64), start: i64, end: i64) -> String {
        let (s, v) = self
            .rest(
                1,
                Method::POST,
                "/v1/routes",
                Some(&self.ops()),
                Some(json!({"window_start": start, "window_end": end, "stops": [{"location": {"lat": at.0, "lng": at.1}}], "pay": {"amount": 4500, "currency": "USD"}})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["id"].as_str().unwrap().to_string()
    }

    /// An approved, online driver at `at`; returns (id, token).
    async fn driver(&self, email: &str, at: (f64, f64)) -> (String, String) {
        let (id, t) = self.signup(email, "driver").await;
        let (s, v) = self
            .rest(
                1,
                Method::PUT,
                "/v1/drivers/me",
                Some(&t),
                Some(json!({"vehicle": "car", "capacity": 4})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let (s, v) = self
            .rest(
                1,
                Method::POST,
                &format!("/v1/drivers/{id}/approve"),
                Some(&self.ops()),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let (s, v) = self
            .rest(
                1,
                Method::PUT,
                "/v1/drivers/me/availability",
                Some(&t),
                Some(json!({"online": true})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let (s, _) = self
            .rest(
                1,
                Method::PUT,
                "/v1/drivers/me/location",
                Some(&t),
                Some(json!({"lat": at.0, "lng": at.1})),
            )
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        // Positions replicate once a second; quotes (surge) and the
        // courier's location read the replicated one. Wait for it, so the
        // REST and GraphQL reads below see the same world.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, me) = self
                .rest(1, Method::GET, "/v1/drivers/me", Some(&t), None)
                .await;
            if !me["location"].is_null() {
                break;
            }
            assert!(Instant::now() < deadline, "the position never replicated");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (id, t)
    }
}

const CART_SCREEN: &str = r#"
mutation CartScreen($vendorId: String!, $lat: Float!, $lng: Float!) {
  createQuote(input: {vendorId: $vendorId, dropoff: {lat: $lat, lng: $lng}}) {
    id fee { amount currency } surge etaMinutes expiresAt
    vendor { id name prepMinutes }
    cart { vendorId items { productId quantity product { id name price { amount currency } available } } }
  }
}"#;

const ORDER_SCREEN: &str = r#"
query OrderScreen($id: String!) {
  order(id: $id) {
    id status eta etaMinutes total { amount currency }
    items { productId name quantity unitPrice { amount currency } }
    vendor { id name address location { lat lng } }
    delivery { id status driver { id name vehicle location { lat lng } } }
  }
}"#;

const DRIVER_SCREEN: &str = r#"
query DriverHome {
  driver { id status online standing { tier completed } }
  offers { id deliveryId status pay { amount } expiresAt }
  schedule { id zone status windowStart windowEnd pay { amount currency } driverId claims }
  earnings { balance { amount currency } deliveriesCompleted }
  availableRoutes {
    version windowClosesAt
    routes { id zone status windowStart windowEnd pay { amount currency } driverId claims }
  }
}"#;

/// The fields of a route both APIs give, REST name and GraphQL name.
const ROUTE_FIELDS: &[(&str, &str)] = &[
    ("id", "id"),
    ("zone", "zone"),
    ("status", "status"),
    ("window_start", "windowStart"),
    ("window_end", "windowEnd"),
    ("pay", "pay"),
    ("driver_id", "driverId"),
    ("claims", "claims"),
];

/// `actual` holds every field of `expected` with the same value (the
/// GraphQL answer is a selection of the REST one, in camelCase).
fn same(rest: &Value, gql: &Value, fields: &[(&str, &str)]) {
    for (r, g) in fields {
        assert_eq!(
            rest[*r], gql[*g],
            "REST {r} vs GraphQL {g}\nREST: {rest}\nGraphQL: {gql}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn screens_are_one_query_each_and_equal_the_rest_answers() {
    let _serial = common::SERIAL.lock().await;
    let api = Api::start(3).await;
    let (vt, vid, pids) = api.shop("v@gql.test").await;
    let (_, ct) = api.signup("c@gql.test", "customer").await;
    let (driver_id, dt) = api.driver("d@gql.test", (PICKUP.0 + 0.001, PICKUP.1)).await;

    // Routes for the driver-home screen: one the driver is matched to (a
    // claim, then the one-second matching window closes) and one still open.
    let r = api
        .http
        .put(format!("{}/v1/kv/routes/window_seconds", api.tc.url(1)))
        .bearer_auth(api.ops())
        .body("1")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let day = tomorrow_ms();
    let matched = api
        .route(PICKUP, day + 8 * HOUR_MS, day + 9 * HOUR_MS)
        .await;
    let open = api
        .route(DROPOFF, day + 10 * HOUR_MS, day + 11 * HOUR_MS)
        .await;
    let (s, v) = api
        .rest(
            3,
            Method::POST,
            &format!("/v1/routes/{matched}/claims"),
            Some(&dt),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, sched) = api
            .rest(1, Method::GET, "/v1/drivers/me/schedule", Some(&dt), None)
            .await;
        if sched["items"][0]["id"] == matched.as_str() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the route was never matched: {sched}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The cart screen: cart lines with products and prices, vendor, quote.
    let (s, v) = api
        .rest(2, Method::PUT, "/v1/cart", Some(&ct), Some(json!({"vendor_id": vid, "items": [{"product_id": pids[0], "quantity": 2}, {"product_id": pids[1], "quantity": 1}]})))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, data, err) = api
        .gql(
            2,
            Some(&ct),
            CART_SCREEN,
            json!({"vendorId": vid, "lat": DROPOFF.0, "lng": DROPOFF.1}),
        )
        .await;
    assert_eq!((s, err), (StatusCode::OK, None), "{data}");
    let q = &data["createQuote"];
    let (_, rest_cart) = api.rest(3, Method::GET, "/v1/cart", Some(&ct), None).await;
    let (_, rest_vendor) = api
        .rest(3, Method::GET, &format!("/v1/vendors/{vid}"), None, None)
        .await;
    same(
        &rest_vendor,
        &q["vendor"],
        &[
            ("id", "id"),
            ("name", "name"),
            ("prep_minutes", "prepMinutes"),
        ],
    );
    assert_eq!(rest_cart["vendor_id"], q["cart"]["vendorId"]);
    for (i, line) in rest_cart["items"].as_array().unwrap().iter().enumerate() {
        let g = &q["cart"]["items"][i];
        same(
            line,
            g,
            &[("product_id", "productId"), ("quantity", "quantity")],
        );
        let (_, p) = api
            .rest(
                3,
                Method::GET,
                &format!("/v1/products/{}", line["product_id"].as_str().unwrap()),
                None,
                None,
            )
            .await;
        same(
            &p,
            &g["product"],
            &[
                ("id", "id"),
                ("name", "name"),
                ("price", "price"),
                ("available", "available"),
            ],
        );
    }
    // The quote is as real as a REST one: it checks out.
    let (s, rest_quote) = api
        .rest(
            2,
            Method::POST,
            "/v1/quotes",
            Some(&ct),
            Some(json!({"vendor_id": vid, "dropoff": {"lat": DROPOFF.0, "lng": DROPOFF.1}})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(rest_quote["fee"], q["fee"]);
    assert_eq!(rest_quote["eta_minutes"], q["etaMinutes"]);

    // Checkout through GraphQL; the same idempotency key twice is one order.
    let place = r#"mutation($key: String!, $quote: String!, $lat: Float!, $lng: Float!) {
        placeOrder(idempotencyKey: $key, input: {quoteId: $quote, dropoff: {location: {lat: $lat, lng: $lng}, address: "2 Side St"}}) { id status } }"#;
    let vars = json!({"key": "gql-1", "quote": q["id"], "lat": DROPOFF.0, "lng": DROPOFF.1});
    let (_, first, err) = api.gql(1, Some(&ct), place, vars.clone()).await;
    assert_eq!(err, None, "{first}");
    let (_, again, err) = api.gql(3, Some(&ct), place, vars).await;
    assert_eq!(err, None, "{again}");
    let oid = first["placeOrder"]["id"].as_str().unwrap().to_string();
    assert_eq!(again["placeOrder"]["id"], oid.as_str());
    let (_, list) = api
        .rest(1, Method::GET, "/v1/orders", Some(&ct), None)
        .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");

    // The vendor accepts through GraphQL; the driver takes the offer.
    let (_, v, err) = api
        .gql(
            2,
            Some(&vt),
            r#"mutation($id: String!) { orderAction(id: $id, action: ACCEPT) { status } }"#,
            json!({"id": oid}),
        )
        .await;
    assert_eq!(
        (err, v["orderAction"]["status"].clone()),
        (None, json!("accepted")),
        "{v}"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let offer = loop {
        let (_, v, err) = api.gql(2, Some(&dt), DRIVER_SCREEN, json!({})).await;
        assert_eq!(err, None, "{v}");
        if let Some(o) = v["offers"].as_array().and_then(|a| a.first()).cloned() {
            // The driver home screen equals its REST calls.
            let (_, me) = api
                .rest(2, Method::GET, "/v1/drivers/me", Some(&dt), None)
                .await;
            same(
                &me,
                &v["driver"],
                &[("id", "id"), ("status", "status"), ("online", "online")],
            );
            assert_eq!(me["standing"]["tier"], v["driver"]["standing"]["tier"]);
            let (_, offers) = api
                .rest(2, Method::GET, "/v1/drivers/me/offers", Some(&dt), None)
                .await;
            same(
                &offers["items"][0],
                &o,
                &[
                    ("id", "id"),
                    ("delivery_id", "deliveryId"),
                    ("status", "status"),
                    ("expires_at", "expiresAt"),
                ],
            );
            let (_, earnings) = api
                .rest(2, Method::GET, "/v1/drivers/me/earnings", Some(&dt), None)
                .await;
            same(
                &earnings,
                &v["earnings"],
                &[
                    ("balance", "balance"),
                    ("deliveries_completed", "deliveriesCompleted"),
                ],
            );
            let (_, sched) = api
                .rest(2, Method::GET, "/v1/drivers/me/schedule", Some(&dt), None)
                .await;
            let (rest_routes, gql_routes) = (
                sched["items"].as_array().unwrap(),
                v["schedule"].as_array().unwrap(),
            );
            assert_eq!(rest_routes.len(), gql_routes.len(), "{sched}\n{v}");
            for (r, g) in rest_routes.iter().zip(gql_routes) {
                same(r, g, ROUTE_FIELDS);
            }
            assert_eq!(gql_routes.len(), 1, "{v}");
            assert_eq!(gql_routes[0]["id"], matched.as_str());
            assert_eq!(gql_routes[0]["status"], "assigned");
            assert_eq!(gql_routes[0]["driverId"], driver_id.as_str());
            let (_, market) = api
                .rest(2, Method::GET, "/v1/routes/available", Some(&dt), None)
                .await;
            let g = &v["availableRoutes"];
            same(
                &market,
                g,
                &[
                    ("version", "version"),
                    ("window_closes_at", "windowClosesAt"),
                ],
            );
            let (rest_routes, gql_routes) = (
                market["routes"].as_array().unwrap(),
                g["routes"].as_array().unwrap(),
            );
            assert_eq!(rest_routes.len(), gql_routes.len(), "{market}\n{v}");
            for (r, g) in rest_routes.iter().zip(gql_routes) {
                same(r, g, ROUTE_FIELDS);
            }
            // The open route is on offer; the matched one no longer is.
            let ids: Vec<&Value> = gql_routes.iter().map(|r| &r["id"]).collect();
            assert_eq!(ids, [open.as_str()], "{v}");
            break o;
        }
        assert!(Instant::now() < deadline, "no offer reached the driver");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (_, v, err) = api
        .gql(3, Some(&dt), r#"mutation($id: String!) { answerOffer(id: $id, answer: ACCEPT) { status driverId } }"#, json!({"id": offer["id"]}))
        .await;
    assert_eq!(err, None, "{v}");
    assert_eq!(v["answerOffer"]["driverId"], driver_id.as_str());

    // The order-tracking screen, for the customer. The driver's position
    // is replicated once a second: let it land, so both reads see it.
    let (_, o) = api
        .rest(
            1,
            Method::GET,
            &format!("/v1/orders/{oid}"),
            Some(&ct),
            None,
        )
        .await;
    let did = o["delivery_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, c) = api
            .rest(
                1,
                Method::GET,
                &format!("/v1/deliveries/{did}/driver"),
                Some(&ct),
                None,
            )
            .await;
        if !c["location"].is_null() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the driver's position never landed: {c}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (s, v, err) = api
        .gql(1, Some(&ct), ORDER_SCREEN, json!({"id": oid}))
        .await;
    assert_eq!((s, err), (StatusCode::OK, None), "{v}");
    let g = &v["order"];
    let (_, o) = api
        .rest(
            1,
            Method::GET,
            &format!("/v1/orders/{oid}"),
            Some(&ct),
            None,
        )
        .await;
    same(
        &o,
        g,
        &[
            ("id", "id"),
            ("status", "status"),
            ("eta", "eta"),
            ("eta_minutes", "etaMinutes"),
            ("total", "total"),
        ],
    );
    for (i, item) in o["items"].as_array().unwrap().iter().enumerate() {
        same(
            item,
            &g["items"][i],
            &[
                ("product_id", "productId"),
                ("name", "name"),
                ("quantity", "quantity"),
                ("unit_price", "unitPrice"),
            ],
        );
    }
    let (_, vendor) = api
        .rest(1, Method::GET, &format!("/v1/vendors/{vid}"), None, None)
        .await;
    same(
        &vendor,
        &g["vendor"],
        &[
            ("id", "id"),
            ("name", "name"),
            ("address", "address"),
            ("location", "location"),
        ],
    );
    let did = o["delivery_id"].as_str().unwrap();
    let (_, delivery) = api
        .rest(
            1,
            Method::GET,
            &format!("/v1/deliveries/{did}"),
            Some(&ct),
            None,
        )
        .await;
    same(
        &delivery,
        &g["delivery"],
        &[("id", "id"), ("status", "status")],
    );
    let (s, courier) = api
        .rest(
            1,
            Method::GET,
            &format!("/v1/deliveries/{did}/driver"),
            Some(&ct),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{courier}");
    same(
        &courier,
        &g["delivery"]["driver"],
        &[
            ("id", "id"),
            ("name", "name"),
            ("vehicle", "vehicle"),
            ("location", "location"),
        ],
    );
    assert_eq!(courier["id"], driver_id.as_str());

    // A foreign customer sees neither the order nor its delivery, in either API.
    let (_, other) = api.signup("c2@gql.test", "customer").await;
    let (s, _) = api
        .rest(
            1,
            Method::GET,
            &format!("/v1/orders/{oid}"),
            Some(&other),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, v, err) = api
        .gql(1, Some(&other), ORDER_SCREEN, json!({"id": oid}))
        .await;
    assert_eq!(err.as_deref(), Some("not_found"), "{v}");
    assert_eq!(v, Value::Null);
}

/// A REST call (method, path, body), its GraphQL twin, and the roles allowed.
type Case<'a> = (Method, String, Option<Value>, &'a str, &'a [&'a str]);

/// An allowed GraphQL read, the REST read it equals, and the values that
/// must agree: (role, GraphQL, REST path, [(GraphQL pointer, REST pointer)]).
/// A pointer to a list compares the list's `id`s.
type Read<'a> = (&'a str, &'a str, String, &'a [(&'a str, &'a str)]);

fn is_denial(code: Option<&str>) -> bool {
    matches!(code, Some("unauthorized" | "forbidden" | "not_found"))
}

/// What differs, unless GraphQL (`code`, `data`) denied `role` with the
/// very code the REST call (`rest_call`, answered `s` and `problem`) did.
fn denial_differs(
    role: &str,
    gql: &str,
    (code, data): (&Option<String>, &Value),
    rest_call: &str,
    (s, problem): (StatusCode, Value),
) -> Option<String> {
    let rest_code = problem["code"].as_str();
    (!is_denial(code.as_deref()) || code.as_deref() != rest_code).then(|| {
        format!("{gql} as {role}: GraphQL {code:?} {data}, REST {rest_code:?} ({rest_call} {s})")
    })
}

/// The value at `pointer`, a list as its items' `id`s; `None` if absent.
fn picked(v: &Value, pointer: &str) -> Option<Value> {
    v.pointer(pointer).map(|x| match x {
        Value::Array(items) => Value::Array(items.iter().map(|i| i["id"].clone()).collect()),
        other => other.clone(),
    })
}

/// Denials must be the same in both APIs, code for code; allowed calls
/// must not be denied, and allowed reads answer what REST answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_authorization_matrix_holds_for_graphql() {
    let api = Api::start(1).await;
    let mut tokens: BTreeMap<&str, Option<String>> = BTreeMap::new();
    tokens.insert("anon", None);
    for (role, email, kind) in [
        ("cust_a", "ca@gql.test", "customer"),
        ("cust_b", "cb@gql.test", "customer"),
        ("vend_a", "va@gql.test", "vendor"),
        ("vend_b", "vb@gql.test", "vendor"),
        ("driver", "dr@gql.test", "driver"),
    ] {
        tokens.insert(role, Some(api.signup(email, kind).await.1));
    }
    tokens.insert("ops", Some(api.ops()));
    let t = |role: &str| tokens[role].clone();
    // An approved driver with a profile, as in the REST matrix (the route
    // marketplace is for approved drivers); offline, so offered nothing.
    let (s, v) = api
        .rest(
            1,
            Method::PUT,
            "/v1/drivers/me",
            t("driver").as_deref(),
            Some(json!({"vehicle": "bike", "capacity": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let drv = v["id"].as_str().unwrap().to_string();
    let (s, v) = api
        .rest(
            1,
            Method::POST,
            &format!("/v1/drivers/{drv}/approve"),
            Some(&api.ops()),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, v) = api
        .rest(1, Method::POST, "/v1/vendors", t("vend_a").as_deref(), Some(json!({"name": "A", "kind": "retail", "location": {"lat": 1.0, "lng": 1.0}, "address": "a", "prep_minutes": 5})))
        .await;
    let va = v["id"].as_str().unwrap().to_string();
    // `pa` for the catalog and orders; `pd` to be deleted.
    let mut products = Vec::new();
    for _ in 0..2 {
        let (s, p) = api
            .rest(1, Method::POST, &format!("/v1/vendors/{va}/products"), t("vend_a").as_deref(), Some(json!({"name": "P", "category": "c", "price": {"amount": 500, "currency": "USD"}, "stock": null})))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{p}");
        products.push(p["id"].as_str().unwrap().to_string());
    }
    let (pa, pd) = (products[0].clone(), products[1].clone());
    let ca = t("cust_a").unwrap();
    let order_body = |quote: &Value| json!({"quote_id": quote["id"], "items": [{"product_id": pa, "quantity": 1}], "dropoff": {"location": {"lat": 1.01, "lng": 1.01}, "address": "x"}});
    let q = api.quote(&ca, &va, (1.01, 1.01)).await;
    let (s, o) = api.checkout(Some(&ca), "authz-gql", order_body(&q)).await;
    assert_eq!(s, StatusCode::CREATED, "{o}");
    let oa = o["id"].as_str().unwrap().to_string();
    // An open route the driver may claim.
    let day = tomorrow_ms();
    let ra = api
        .route((1.0, 1.0), day + 8 * HOUR_MS, day + 9 * HOUR_MS)
        .await;
    // Two webhooks of vend_a's, to be deleted by vend_a and ops.
    let mut hooks = Vec::new();
    for _ in 0..2 {
        let (s, w) = api
            .rest(1, Method::POST, &format!("/v1/vendors/{va}/webhooks"), t("vend_a").as_deref(), Some(json!({"url": "https://hooks.example.com/hook", "secret": "a shared secret of some length"})))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{w}");
        hooks.push(w["id"].as_str().unwrap().to_string());
    }
    // A second order of cust_a's, accepted: its delivery `db` is offered
    // (offer `of`) to another driver, online at the vendor — not `driver`.
    let (_, other_driver) = api.driver("d2@gql.test", (1.001, 1.0)).await;
    let q = api.quote(&ca, &va, (1.01, 1.01)).await;
    let (s, o) = api.checkout(Some(&ca), "authz-gql-2", order_body(&q)).await;
    assert_eq!(s, StatusCode::CREATED, "{o}");
    let (s, v) = api
        .rest(
            1,
            Method::POST,
            &format!("/v1/orders/{}/accept", o["id"].as_str().unwrap()),
            t("vend_a").as_deref(),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let db = v["delivery_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(15);
    let of = loop {
        let (_, offers) = api
            .rest(
                1,
                Method::GET,
                "/v1/drivers/me/offers",
                Some(&other_driver),
                None,
            )
            .await;
        let offer = offers["items"]
            .as_array()
            .and_then(|a| a.iter().find(|o| o["delivery_id"] == db.as_str()));
        if let Some(o) = offer {
            break o["id"].as_str().unwrap().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no offer reached the other driver"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let public = &[
        "anon", "cust_a", "cust_b", "vend_a", "vend_b", "driver", "ops",
    ][..];
    let authed = &public[1..];
    let customers = &["cust_a", "cust_b"][..];
    let vendors = &["vend_a", "vend_b"][..];
    let drivers = &["driver"][..];
    let ops = &["ops"][..];
    let nobody: &[&str] = &[];
    let vars =
        json!({"va": va, "pa": pa, "pd": pd, "oa": oa, "db": db, "of": of, "ra": ra, "drv": drv});
    // (REST method, path, body; the GraphQL equivalent; roles allowed)
    let create_route = format!(
        r#"mutation {{ createRoute(input: {{windowStart: {}, windowEnd: {}, stops: [{{location: {{lat: 1.0, lng: 1.0}}}}], pay: {{amount: 1000, currency: "USD"}}}}) {{ id }} }}"#,
        tomorrow_ms(),
        tomorrow_ms() + 3_600_000
    );
    let cases: Vec<Case> = vec![
        (
            Method::GET,
            format!("/v1/vendors/{va}"),
            None,
            "query($va: String!) { vendor(id: $va) { id } }",
            public,
        ),
        (
            Method::GET,
            format!("/v1/vendors/{va}/products"),
            None,
            "query($va: String!) { vendor(id: $va) { products { items { id } } } }",
            public,
        ),
        (
            Method::GET,
            format!("/v1/products/{pa}"),
            None,
            "query($pa: String!) { product(id: $pa) { id vendor { id } } }",
            public,
        ),
        (
            Method::GET,
            "/v1/me".into(),
            None,
            "{ me { id } }",
            &["cust_a", "cust_b", "vend_a", "vend_b", "driver"],
        ),
        (
            Method::GET,
            "/v1/events".into(),
            None,
            "{ events { next } }",
            authed,
        ),
        (
            Method::POST,
            "/v1/vendors".into(),
            Some(
                json!({"name": "N", "kind": "taxi", "location": {"lat": 1.0, "lng": 1.0}, "address": "a", "prep_minutes": 1}),
            ),
            r#"mutation { createVendor(input: {name: "N", kind: TAXI, location: {lat: 1.0, lng: 1.0}, address: "a", prepMinutes: 1}) { id } }"#,
            vendors,
        ),
        (
            Method::PATCH,
            format!("/v1/vendors/{va}"),
            Some(json!({"name": "A"})),
            r#"mutation($va: String!) { updateVendor(id: $va, input: {name: "A"}) { id } }"#,
            &["vend_a", "ops"],
        ),
        (
            Method::POST,
            format!("/v1/vendors/{va}/products"),
            Some(
                json!({"name": "P", "category": "c", "price": {"amount": 500, "currency": "USD"}, "stock": null}),
            ),
            r#"mutation($va: String!) { createProduct(vendorId: $va, input: {name: "P", category: "c", price: {amount: 500, currency: "USD"}, stock: null}) { id } }"#,
            &["vend_a"],
        ),
        (
            Method::PATCH,
            format!("/v1/products/{pa}"),
            Some(json!({"name": "P"})),
            r#"mutation($pa: String!) { updateProduct(id: $pa, input: {name: "P"}) { id } }"#,
            &["vend_a"],
        ),
        (
            Method::PUT,
            format!("/v1/products/{pa}/stock"),
            Some(json!({"stock": null})),
            r#"mutation($pa: String!) { setStock(id: $pa, stock: null) { id } }"#,
            &["vend_a"],
        ),
        (
            Method::DELETE,
            format!("/v1/products/{pd}"),
            None,
            r#"mutation($pd: String!) { deleteProduct(id: $pd) }"#,
            &["vend_a"],
        ),
        (
            Method::GET,
            "/v1/cart".into(),
            None,
            "{ cart { vendorId } }",
            customers,
        ),
        (
            Method::PUT,
            "/v1/cart".into(),
            Some(json!({"vendor_id": va, "items": [{"product_id": pa, "quantity": 1}]})),
            r#"mutation($va: String!, $pa: String!) { setCart(input: {vendorId: $va, items: [{productId: $pa, quantity: 1}]}) { vendorId } }"#,
            customers,
        ),
        (
            Method::POST,
            "/v1/quotes".into(),
            Some(json!({"vendor_id": va, "dropoff": {"lat": 1.01, "lng": 1.01}})),
            r#"mutation($va: String!) { createQuote(input: {vendorId: $va, dropoff: {lat: 1.01, lng: 1.01}}) { id } }"#,
            customers,
        ),
        (
            Method::GET,
            format!("/v1/orders/{oa}"),
            None,
            "query($oa: String!) { order(id: $oa) { id delivery { id } } }",
            &["cust_a", "vend_a", "ops"],
        ),
        (
            Method::GET,
            "/v1/orders".into(),
            None,
            "{ orders { items { id } } }",
            &["cust_a", "cust_b", "vend_a", "vend_b", "ops"],
        ),
        (
            Method::GET,
            "/v1/drivers/me".into(),
            None,
            "{ driver { id } }",
            drivers,
        ),
        (
            Method::GET,
            "/v1/drivers/me/earnings".into(),
            None,
            "{ earnings { account } }",
            drivers,
        ),
        (
            Method::PUT,
            "/v1/drivers/me".into(),
            Some(json!({"vehicle": "bike", "capacity": 1})),
            "mutation { setDriverProfile(input: {vehicle: BIKE, capacity: 1}) { id } }",
            drivers,
        ),
        (
            Method::PUT,
            "/v1/drivers/me/availability".into(),
            Some(json!({"online": false})),
            "mutation { setAvailability(online: false) { online } }",
            drivers,
        ),
        (
            Method::PUT,
            "/v1/drivers/me/location".into(),
            Some(json!({"lat": 1.0, "lng": 1.0})),
            "mutation { ping(input: {lat: 1.0, lng: 1.0}) }",
            drivers,
        ),
        (
            Method::GET,
            "/v1/drivers/me/offers".into(),
            None,
            "{ offers { id } }",
            drivers,
        ),
        (
            Method::GET,
            "/v1/drivers/me/schedule".into(),
            None,
            "{ schedule { id } }",
            drivers,
        ),
        (
            Method::GET,
            "/v1/routes/available".into(),
            None,
            "{ availableRoutes { version routes { id } } }",
            drivers,
        ),
        (
            Method::POST,
            format!("/v1/drivers/{drv}/approve"),
            None,
            "mutation($drv: String!) { driverStatus(driverId: $drv, action: APPROVE) { id } }",
            ops,
        ),
        (
            Method::POST,
            format!("/v1/routes/{ra}/claims"),
            None,
            "mutation($ra: String!) { claimRoute(id: $ra) { id } }",
            drivers,
        ),
        (
            Method::DELETE,
            format!("/v1/routes/{ra}/claims"),
            None,
            "mutation($ra: String!) { withdrawClaim(id: $ra) { id } }",
            drivers,
        ),
        // The second order's delivery: its customer, vendor and ops see
        // it; not another order's customer, a foreign vendor, nor a driver
        // it is not assigned to.
        (
            Method::GET,
            format!("/v1/deliveries/{db}"),
            None,
            "query($db: String!) { delivery(id: $db) { id } }",
            &["cust_a", "vend_a", "ops"],
        ),
        (
            Method::POST,
            format!("/v1/deliveries/{db}/arrive"),
            None,
            "mutation($db: String!) { deliveryAction(id: $db, action: ARRIVE) { id } }",
            nobody,
        ),
        // The other driver's offer.
        (
            Method::POST,
            format!("/v1/offers/{of}/accept"),
            None,
            "mutation($of: String!) { answerOffer(id: $of, answer: ACCEPT) { id } }",
            nobody,
        ),
        (
            Method::POST,
            format!("/v1/orders/{oa}/accept"),
            None,
            r#"mutation($oa: String!) { orderAction(id: $oa, action: ACCEPT) { id } }"#,
            &["vend_a"],
        ),
        // (Accepted by now: a conflict for its vendor, a denial for others.)
        (
            Method::POST,
            format!("/v1/orders/{oa}/reject"),
            None,
            r#"mutation($oa: String!) { orderAction(id: $oa, action: REJECT) { id } }"#,
            &["vend_a"],
        ),
        (
            Method::POST,
            format!("/v1/orders/{oa}/ready"),
            None,
            r#"mutation($oa: String!) { orderAction(id: $oa, action: READY) { id } }"#,
            &["vend_a"],
        ),
        (
            Method::POST,
            "/v1/routes".into(),
            Some(
                json!({"window_start": tomorrow_ms(), "window_end": tomorrow_ms() + 3_600_000, "stops": [{"location": {"lat": 1.0, "lng": 1.0}}], "pay": {"amount": 1000, "currency": "USD"}}),
            ),
            &create_route,
            ops,
        ),
        (
            Method::GET,
            format!("/v1/vendors/{va}/webhooks"),
            None,
            "query($va: String!) { webhooks(vendorId: $va) { id } }",
            &["vend_a", "ops"],
        ),
        (
            Method::POST,
            format!("/v1/vendors/{va}/webhooks"),
            Some(
                json!({"url": "https://hooks.example.com/hook", "secret": "a shared secret of some length"}),
            ),
            r#"mutation($va: String!) { registerWebhook(vendorId: $va, input: {url: "https://hooks.example.com/hook", secret: "a shared secret of some length"}) { id } }"#,
            &["vend_a"],
        ),
        (
            Method::POST,
            format!("/v1/orders/{oa}/rating"),
            Some(json!({"vendor": 5})),
            r#"mutation($oa: String!) { rateOrder(id: $oa, input: {vendor: 5}) { orderId } }"#,
            &["cust_a"],
        ),
        (
            Method::POST,
            format!("/v1/orders/{oa}/cancel"),
            None,
            r#"mutation($oa: String!) { orderAction(id: $oa, action: CANCEL) { id } }"#,
            &["cust_a", "ops"],
        ),
        // Ends the refresh family only: the access tokens stay good.
        (
            Method::POST,
            "/v1/auth/logout".into(),
            None,
            "mutation { logout }",
            authed,
        ),
    ];
    let mut failures = Vec::new();
    for (method, path, body, gql, allowed) in &cases {
        let mut roles: Vec<&str> = public
            .iter()
            .copied()
            .filter(|r| !allowed.contains(r))
            .collect();
        roles.extend(allowed.iter().copied());
        for role in roles {
            let token = t(role);
            let (_, data, code) = api.gql(1, token.as_deref(), gql, vars.clone()).await;
            if allowed.contains(&role) {
                if is_denial(code.as_deref()) {
                    failures.push(format!(
                        "{gql} as {role}: denied ({code:?}) but REST allows it: {data}"
                    ));
                }
                continue;
            }
            let rest = api
                .rest(1, method.clone(), path, token.as_deref(), body.clone())
                .await;
            failures.extend(denial_differs(
                role,
                gql,
                (&code, &data),
                &format!("{method} {path}"),
                rest,
            ));
        }
    }

    // deleteWebhook: the vendor's owner and ops may, so each deletes one;
    // nobody else may delete either.
    let delete = "mutation($va: String!, $wh: String!) { deleteWebhook(vendorId: $va, id: $wh) }";
    let path = format!("/v1/vendors/{va}/webhooks/{}", hooks[0]);
    for role in ["anon", "cust_a", "cust_b", "vend_b", "driver"] {
        let token = t(role);
        let (_, data, code) = api
            .gql(
                1,
                token.as_deref(),
                delete,
                json!({"va": va, "wh": hooks[0]}),
            )
            .await;
        let rest = api
            .rest(1, Method::DELETE, &path, token.as_deref(), None)
            .await;
        failures.extend(denial_differs(
            role,
            delete,
            (&code, &data),
            &format!("DELETE {path}"),
            rest,
        ));
    }
    for (role, hook) in [("vend_a", &hooks[0]), ("ops", &hooks[1])] {
        let (_, data, code) = api
            .gql(1, t(role).as_deref(), delete, json!({"va": va, "wh": hook}))
            .await;
        if code.is_some() || data["deleteWebhook"] != true {
            failures.push(format!("{delete} as {role}: {code:?} {data}"));
        }
    }
    let (_, left) = api
        .rest(
            1,
            Method::GET,
            &format!("/v1/vendors/{va}/webhooks"),
            t("vend_a").as_deref(),
            None,
        )
        .await;
    for w in left["items"].as_array().unwrap() {
        assert!(
            !hooks.contains(&w["id"].as_str().unwrap().to_string()),
            "{left}"
        );
    }

    // Checkout with cust_a's quote: only cust_a (REST needs the key).
    let q = api.quote(&ca, &va, (1.01, 1.01)).await;
    let place = "mutation($key: String!, $input: OrderInput!) { placeOrder(idempotencyKey: $key, input: $input) { id status } }";
    let input = json!({"quoteId": q["id"], "items": [{"productId": pa, "quantity": 1}], "dropoff": {"location": {"lat": 1.01, "lng": 1.01}, "address": "x"}});
    for role in ["anon", "cust_b", "vend_a", "vend_b", "driver", "ops"] {
        let (key, token) = (format!("foreign-{role}"), t(role));
        let (_, data, code) = api
            .gql(
                1,
                token.as_deref(),
                place,
                json!({"key": key, "input": input}),
            )
            .await;
        let rest = api.checkout(token.as_deref(), &key, order_body(&q)).await;
        failures.extend(denial_differs(
            role,
            place,
            (&code, &data),
            "POST /v1/orders with cust_a's quote",
            rest,
        ));
    }
    let (_, placed, code) = api
        .gql(
            1,
            Some(&ca),
            place,
            json!({"key": "own-quote", "input": input}),
        )
        .await;
    assert_eq!(code, None, "{placed}");
    let (_, o) = api
        .rest(
            1,
            Method::GET,
            &format!(
                "/v1/orders/{}",
                placed["placeOrder"]["id"].as_str().unwrap()
            ),
            Some(&ca),
            None,
        )
        .await;
    same(
        &o,
        &placed["placeOrder"],
        &[("id", "id"), ("status", "status")],
    );

    // The allowed reads answer what REST does, now that everything above
    // has happened.
    let vendor =
        "query($va: String!) { vendor(id: $va) { id name status products { items { id } } } }";
    let order =
        "query($oa: String!) { order(id: $oa) { id status deliveryId total { amount currency } } }";
    let orders = "{ orders { items { id status } } }";
    let webhooks = "query($va: String!) { webhooks(vendorId: $va) { id } }";
    let delivery = "query($db: String!) { delivery(id: $db) { id orderId status driverId } }";
    let order_fields = &[
        ("/order/id", "/id"),
        ("/order/status", "/status"),
        ("/order/deliveryId", "/delivery_id"),
        ("/order/total", "/total"),
    ][..];
    let orders_fields = &[
        ("/orders/items", "/items"),
        ("/orders/items/0/status", "/items/0/status"),
    ][..];
    let delivery_fields = &[
        ("/delivery/id", "/id"),
        ("/delivery/orderId", "/order_id"),
        ("/delivery/status", "/status"),
        ("/delivery/driverId", "/driver_id"),
    ][..];
    let mut reads: Vec<Read> = vec![
        (
            "anon",
            vendor,
            format!("/v1/vendors/{va}"),
            &[
                ("/vendor/id", "/id"),
                ("/vendor/name", "/name"),
                ("/vendor/status", "/status"),
            ],
        ),
        (
            "anon",
            vendor,
            format!("/v1/vendors/{va}/products"),
            &[("/vendor/products/items", "/items")],
        ),
        (
            "anon",
            "query($pa: String!) { product(id: $pa) { id name price { amount currency } vendorId } }",
            format!("/v1/products/{pa}"),
            &[
                ("/product/id", "/id"),
                ("/product/name", "/name"),
                ("/product/price", "/price"),
                ("/product/vendorId", "/vendor_id"),
            ],
        ),
        (
            "cust_a",
            "{ me { id email role } }",
            "/v1/me".into(),
            &[("/me/id", "/id"), ("/me/email", "/email"), ("/me/role", "/role")],
        ),
        (
            "cust_b",
            "{ cart { vendorId items { productId quantity } } }",
            "/v1/cart".into(),
            &[
                ("/cart/vendorId", "/vendor_id"),
                ("/cart/items/0/productId", "/items/0/product_id"),
                ("/cart/items/0/quantity", "/items/0/quantity"),
            ],
        ),
        (
            "driver",
            "{ driver { id status online vehicle capacity } }",
            "/v1/drivers/me".into(),
            &[
                ("/driver/id", "/id"),
                ("/driver/status", "/status"),
                ("/driver/online", "/online"),
                ("/driver/vehicle", "/vehicle"),
                ("/driver/capacity", "/capacity"),
            ],
        ),
        (
            "driver",
            "{ earnings { account balance { amount currency } deliveriesCompleted } }",
            "/v1/drivers/me/earnings".into(),
            &[
                ("/earnings/account", "/account"),
                ("/earnings/balance", "/balance"),
                ("/earnings/deliveriesCompleted", "/deliveries_completed"),
            ],
        ),
        (
            "driver",
            "{ offers { id } }",
            "/v1/drivers/me/offers".into(),
            &[("/offers", "/items")],
        ),
        (
            "driver",
            "{ schedule { id } }",
            "/v1/drivers/me/schedule".into(),
            &[("/schedule", "/items")],
        ),
        (
            "driver",
            "{ availableRoutes { version routes { id } } }",
            "/v1/routes/available".into(),
            &[
                ("/availableRoutes/version", "/version"),
                ("/availableRoutes/routes", "/routes"),
            ],
        ),
    ];
    for role in ["cust_a", "vend_a", "ops"] {
        reads.push((role, order, format!("/v1/orders/{oa}"), order_fields));
        reads.push((role, orders, "/v1/orders".into(), orders_fields));
        reads.push((
            role,
            delivery,
            format!("/v1/deliveries/{db}"),
            delivery_fields,
        ));
    }
    for role in ["vend_a", "ops"] {
        reads.push((
            role,
            webhooks,
            format!("/v1/vendors/{va}/webhooks"),
            &[("/webhooks", "/items")],
        ));
    }
    for (role, gql, path, fields) in &reads {
        let token = t(role);
        let (_, data, code) = api.gql(1, token.as_deref(), gql, vars.clone()).await;
        let (s, rest) = api.rest(1, Method::GET, path, token.as_deref(), None).await;
        if code.is_some() || s != StatusCode::OK {
            failures.push(format!(
                "{gql} as {role}: GraphQL {code:?} {data}, REST GET {path} {s} {rest}"
            ));
            continue;
        }
        for (g, r) in *fields {
            let (gv, rv) = (picked(&data, g), picked(&rest, r));
            if gv.is_none() || gv != rv {
                failures.push(format!(
                    "{gql} as {role}: GraphQL {g} = {gv:?}, REST GET {path} {r} = {rv:?}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "GraphQL authorization differs from REST:\n{}",
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_refuse_costly_queries_before_they_run() {
    let api = Api::start(1).await;
    let (_, ct) = api.signup("lim@gql.test", "customer").await;
    let ops = api.ops();
    // Too deep: product → vendor → products → items → vendor → ...
    let mut deep = String::from("id");
    for _ in 0..8 {
        deep = format!("vendor {{ products {{ items {{ {deep} }} }} }}");
    }
    let q = format!("{{ product(id: \"local.prd_00000000000000000000000000\") {{ {deep} }} }}");
    let (s, v, _) = api.gql_sized(1, Some(&ct), &q, json!({})).await;
    assert_eq!(s, StatusCode::OK);
    let msg = v["errors"][0]["message"]
        .as_str()
        .unwrap_or("")
        .to_lowercase();
    assert!(
        msg.contains("nested too deep") || msg.contains("too complex"),
        "{v}"
    );
    let code = &v["errors"][0]["extensions"]["code"];
    assert!(
        *code == "query_too_deep" || *code == "query_too_complex",
        "{v}"
    );
    assert!(
        v.get("data").is_none_or(|d| d.is_null()),
        "nothing ran: {v}"
    );

    // Pages of 1,000 nested eight deep, twice: their cost passes any
    // integer before depth is checked, and is refused, not overflowed.
    let mut huge = String::from("id");
    for _ in 0..8 {
        huge = format!("vendor {{ products(limit: 1000) {{ items {{ {huge} }} }} }}");
    }
    let q = format!(
        "{{ a: product(id: \"local.prd_00000000000000000000000000\") {{ {huge} }} \
         b: product(id: \"local.prd_00000000000000000000000000\") {{ {huge} }} }}"
    );
    let (s, v, _) = api.gql_sized(1, None, &q, json!({})).await;
    assert_eq!(s, StatusCode::OK);
    let code = &v["errors"][0]["extensions"]["code"];
    assert!(
        *code == "query_too_deep" || *code == "query_too_complex",
        "{v}"
    );

    // Too costly though shallow: many aliased list fields, each a page.
    let fields: Vec<String> = (0..60)
        .map(|i| format!("s{i}: search(q: \"x\", limit: 100) {{ hits {{ id }} }}"))
        .collect();
    let q = format!("{{ {} }}", fields.join(" "));
    let (_, v, _) = api.gql_sized(1, None, &q, json!({})).await;
    let msg = v["errors"][0]["message"]
        .as_str()
        .unwrap_or("")
        .to_lowercase();
    assert!(msg.contains("complex"), "{v}");
    assert_eq!(v["errors"][0]["extensions"]["code"], "query_too_complex");
    // A query that does not parse, or names a field that does not exist.
    for bad in ["{ me { id ", "{ noSuchField }"] {
        let (_, v, _) = api.gql_sized(1, None, bad, json!({})).await;
        assert_eq!(v["errors"][0]["extensions"]["code"], "invalid_query", "{v}");
    }

    // A hostile document: nesting far past any limit is refused by the
    // parser, and the node stays up.
    let hostile = format!("{{ {}id{} }}", "a { ".repeat(5_000), " }".repeat(5_000));
    let (s, v, _) = api.gql_sized(1, None, &hostile, json!({})).await;
    assert_eq!(s, StatusCode::OK);
    assert!(v["errors"][0]["extensions"]["code"].is_string(), "{v}");
    // A body over the size limit is a 413 problem.
    let r = api
        .http
        .post(format!("{}/graphql", api.tc.url(1)))
        .json(&json!({"query": format!("{{ me {{ id }} }} #{}", "x".repeat(100_000))}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    // Not JSON: a 400/415 problem, not a panic.
    let r = api
        .http
        .post(format!("{}/graphql", api.tc.url(1)))
        .header("content-type", "application/json")
        .body("{\"query\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Errors carry stable codes.
    let (_, v, code) = api.gql(1, None, "{ cart { vendorId } }", json!({})).await;
    assert_eq!(code.as_deref(), Some("unauthorized"), "{v}");
    let (_, v, code) = api
        .gql(
            1,
            Some(&ct),
            r#"mutation { setCart(input: {vendorId: "nope", items: []}) { vendorId } }"#,
            json!({}),
        )
        .await;
    assert!(code.is_some(), "{v}");
    // The node still answers, and the SDL is published.
    let r = api
        .http
        .get(format!("{}/graphql/schema.graphql", api.tc.url(1)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let sdl = r.text().await.unwrap();
    assert_eq!(
        sdl,
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql")).unwrap()
    );
    let (_, v, code) = api
        .gql(
            1,
            Some(&ops),
            "{ __schema { queryType { name } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        (code, v["__schema"]["queryType"]["name"].clone()),
        (None, json!("Query"))
    );
}

/// Aliases put many mutations in one request; each pays the allowance
/// its REST call would, so sign-ins cannot be multiplied past the per-IP
/// sign-in limit, nor other writes past the caller's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_mutation_pays_its_rate_limit_like_its_rest_call() {
    // Sign-ins: burst 6 per address; everything else: burst 2 per caller.
    let api = Api::start_with(
        1,
        &["--rate-limit-auth", "1", "--rate-limit-principal", "1"],
    )
    .await;
    let signups: Vec<String> = (0..10)
        .map(|i| {
            format!(
                "s{i}: signup(input: {{email: \"rl{i}@gql.test\", password: \"a long password\", \
                 name: \"R\", role: CUSTOMER}}) {{ accessToken }}"
            )
        })
        .collect();
    let q = format!("mutation {{ {} }}", signups.join(" "));
    let (s, v, _) = api.gql_sized(1, None, &q, json!({})).await;
    assert_eq!(s, StatusCode::OK);
    let e = &v["errors"][0];
    assert_eq!(e["extensions"]["code"], "rate_limited", "{v}");
    // The sixth token is the last of the burst (a seventh may have
    // trickled in meanwhile at one a second).
    assert!(
        e["path"] == json!(["s6"]) || e["path"] == json!(["s7"]),
        "{v}"
    );
    // The same allowance as REST: the address has no sign-in left.
    let (s, v) = api
        .rest(
            1,
            Method::POST,
            "/v1/auth/login",
            None,
            Some(json!({"email": "rl0@gql.test", "password": "a long password"})),
        )
        .await;
    assert_eq!(
        (s, v["code"].clone()),
        (StatusCode::TOO_MANY_REQUESTS, json!("rate_limited"))
    );

    let (s, v) = api
        .rest(
            1,
            Method::POST,
            "/admin/tokens",
            Some(&api.ops()),
            Some(json!({"role": "driver", "sub": "local.acc_rl", "ttl_seconds": 600})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let driver = v["access_token"].as_str().unwrap().to_string();
    let profiles: Vec<String> = (0..5)
        .map(|i| {
            format!(
                "p{i}: setDriverProfile(input: {{vehicle: CAR, capacity: {}}}) {{ capacity }}",
                i + 1
            )
        })
        .collect();
    let q = format!("mutation {{ {} }}", profiles.join(" "));
    let (s, v, _) = api.gql_sized(1, Some(&driver), &q, json!({})).await;
    assert_eq!(s, StatusCode::OK);
    let e = &v["errors"][0];
    assert_eq!(e["extensions"]["code"], "rate_limited", "{v}");
    // The request paid for the first; the second took the burst's last.
    assert!(
        e["path"] == json!(["p2"]) || e["path"] == json!(["p3"]),
        "{v}"
    );
}

/// A subscription socket is one request: operations sent over it after
/// the first pay the caller's allowance, and their refusals carry codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_over_a_socket_pay_their_rate_limit() {
    let api = Api::start_with(1, &["--rate-limit-principal", "1"]).await;
    let token = mint(&api, "customer", "local.acc_ws", 600).await;
    // The token rides in connection_init: the upgrade paid the address's
    // allowance, every operation is the customer's (burst 2).
    let mut ws = subscribe(&api.tc.url(1), &token, "{ cart { vendorId } }", json!({})).await;
    let mut codes = Vec::new();
    for id in 1..=6 {
        if id > 1 {
            let op = json!({"id": id.to_string(), "type": "subscribe", "payload": {"query": "{ cart { vendorId } }"}});
            ws.send(Message::text(op.to_string())).await.unwrap();
        }
        let m = next_json(&mut ws).await;
        assert_eq!(m["id"], id.to_string(), "{m}");
        let errors = if m["type"] == "error" {
            m["payload"].clone()
        } else {
            m["payload"]["errors"].clone()
        };
        codes.push(errors[0]["extensions"]["code"].as_str().map(str::to_string));
        if m["type"] == "next" {
            let done = next_json(&mut ws).await;
            assert_eq!(done["type"], "complete", "{done}");
        }
    }
    assert_eq!(codes[..3], [None, None, None], "{codes:?}");
    assert!(
        codes[3..].contains(&Some("rate_limited".to_string())),
        "{codes:?}"
    );
}

/// The errors of a graphql-transport-ws message for operation `id`
/// (`next` with errors, or `error`), skipping other operations' messages.
async fn errors_of<S>(ws: &mut S, id: &str) -> (Value, Value)
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let m = next_json(ws).await;
        if m["id"] != id {
            continue;
        }
        let errors = if m["type"] == "error" {
            m["payload"].clone()
        } else {
            m["payload"]["errors"].clone()
        };
        return (m, errors);
    }
}

async fn mint(api: &Api, role: &str, sub: &str, ttl: u64) -> String {
    let (s, v) = api
        .rest(
            1,
            Method::POST,
            "/admin/tokens",
            Some(&api.ops()),
            Some(json!({"role": role, "sub": sub, "ttl_seconds": ttl})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["access_token"].as_str().unwrap().to_string()
}

/// A socket outlives the token it was opened with: when the token
/// expires, its running operations end with `unauthorized` and new ones
/// are refused, as a REST call with that token would be.
#[tokio::test]
async fn a_socket_stops_serving_when_its_token_expires() {
    let api = Api::start(1).await;
    let token = mint(&api, "customer", "local.acc_expiring", 3).await;
    let mut ws = subscribe(
        &api.tc.url(1),
        &token,
        "subscription { events { seq } }",
        json!({}),
    )
    .await;
    let started = Instant::now();
    let (m, errors) = errors_of(&mut ws, "1").await;
    assert_eq!(errors[0]["extensions"]["code"], "unauthorized", "{m}");
    assert!(started.elapsed() < Duration::from_secs(15), "ended late");
    if m["type"] == "next" {
        let done = next_json(&mut ws).await;
        assert_eq!(done["type"], "complete", "{done}");
    }
    let op = json!({"id": "2", "type": "subscribe", "payload": {"query": "{ __typename }"}});
    ws.send(Message::text(op.to_string())).await.unwrap();
    let (m, errors) = errors_of(&mut ws, "2").await;
    assert_eq!(errors[0]["extensions"]["code"], "unauthorized", "{m}");
}

/// One socket runs a bounded number of operations at once; completing
/// one frees its place.
#[tokio::test]
async fn a_socket_runs_a_bounded_number_of_operations() {
    let api = Api::start(1).await;
    let token = mint(&api, "customer", "local.acc_busy", 600).await;
    let sub = "subscription { events { seq } }";
    let mut ws = subscribe(&api.tc.url(1), &token, sub, json!({})).await;
    for id in 2..=16 {
        let op = json!({"id": id.to_string(), "type": "subscribe", "payload": {"query": sub}});
        ws.send(Message::text(op.to_string())).await.unwrap();
    }
    let op = json!({"id": "17", "type": "subscribe", "payload": {"query": "{ __typename }"}});
    ws.send(Message::text(op.to_string())).await.unwrap();
    let (m, errors) = errors_of(&mut ws, "17").await;
    assert_eq!(
        errors[0]["extensions"]["code"], "too_many_operations",
        "{m}"
    );
    ws.send(Message::text(
        json!({"id": "1", "type": "complete"}).to_string(),
    ))
    .await
    .unwrap();
    // The place comes back once the server has dropped the stream.
    let deadline = Instant::now() + Duration::from_secs(5);
    for n in 18.. {
        let id = n.to_string();
        let op = json!({"id": id, "type": "subscribe", "payload": {"query": "{ __typename }"}});
        ws.send(Message::text(op.to_string())).await.unwrap();
        let m = loop {
            let m = next_json(&mut ws).await;
            if m["id"] == id.as_str() {
                break m;
            }
        };
        if m["payload"]["data"]["__typename"] == "Query" {
            break;
        }
        assert!(Instant::now() < deadline, "the place was never freed: {m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn introspection_can_be_turned_off() {
    let tc = TestCell::start(1, false, &["--no-graphql-introspection"])
        .await
        .unwrap();
    for query in [
        "{ __schema { queryType { name } } }",
        "{ t: __type(name: \"Order\") { fields { name } } }",
    ] {
        let r = tc
            .http
            .post(format!("{}/graphql", tc.url(1)))
            .json(&json!({ "query": query }))
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        // Refused, with a code, not answered as an empty schema.
        assert!(
            v["data"].is_null() || v["data"].as_object().unwrap().values().all(Value::is_null),
            "{v}"
        );
        assert_eq!(
            v["errors"][0]["extensions"]["code"], "introspection_disabled",
            "{v}"
        );
    }
    // The rest of the graph still answers.
    let r = tc
        .http
        .post(format!("{}/graphql", tc.url(1)))
        .json(&json!({"query": "{ __typename }"}))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["data"]["__typename"], "Query", "{v}");
}

#[tokio::test]
async fn open_subscription_sockets_are_bounded() {
    let tc = TestCell::start(1, false, &["--max-long-polls", "2"])
        .await
        .unwrap();
    let ws_url = tc.url(1).replacen("http://", "ws://", 1) + "/graphql";
    let connect = || {
        let mut req = ws_url.clone().into_client_request().unwrap();
        req.headers_mut().insert(
            "sec-websocket-protocol",
            "graphql-transport-ws".parse().unwrap(),
        );
        tokio_tungstenite::connect_async(req)
    };
    let a = connect().await.unwrap();
    let b = connect().await.unwrap();
    let refused = connect().await.unwrap_err();
    assert!(refused.to_string().contains("503"), "{refused}");
    // Closing one frees its place.
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if connect().await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the place was never freed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(b);
}

/// A graphql-transport-ws client: connects, authenticates in
/// `connection_init`, subscribes.
async fn subscribe(
    url: &str,
    token: &str,
    query: &str,
    variables: Value,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let ws_url = url.replacen("http://", "ws://", 1) + "/graphql";
    let mut req = ws_url.into_client_request().unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(
        resp.headers()["sec-websocket-protocol"],
        "graphql-transport-ws"
    );
    let init =
        json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {token}")}});
    ws.send(Message::text(init.to_string())).await.unwrap();
    let ack = next_json(&mut ws).await;
    assert_eq!(ack["type"], "connection_ack", "{ack}");
    let sub = json!({"id": "1", "type": "subscribe", "payload": {"query": query, "variables": variables}});
    ws.send(Message::text(sub.to_string())).await.unwrap();
    ws
}

async fn next_json<S>(ws: &mut S) -> Value
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let m = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a message within 20 s")
            .expect("open")
            .expect("readable");
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] == "ping" {
                continue;
            }
            return v;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscription_sees_an_orders_changes_in_order_across_a_leader_change() {
    let _serial = common::SERIAL.lock().await;
    let mut api = Api::start(3).await;
    let (vt, vid, pids) = api.shop("sv@gql.test").await;
    let (_, ct) = api.signup("sc@gql.test", "customer").await;
    let oid = api.one_item_order(&ct, &vid, &pids[0], "sub-1").await;

    // Subscribe on a follower: it stays up while the leader is killed.
    let leader = api
        .tc
        .cell
        .wait_leader(Duration::from_secs(10))
        .await
        .unwrap();
    let follower = (1..=3).find(|n| *n != leader).unwrap();
    let mut ws = subscribe(
        &api.tc.url(follower),
        &ct,
        "subscription($id: String!) { orderUpdates(orderId: $id, after: 0) { seq type status order { status } } }",
        json!({"id": oid}),
    )
    .await;
    let first = next_json(&mut ws).await;
    assert_eq!(first["type"], "next", "{first}");
    assert_eq!(first["payload"]["data"]["orderUpdates"]["status"], "placed");

    let act = |api: &Api, node: u64, action: &'static str| {
        let (vt, oid) = (vt.clone(), oid.clone());
        let url = format!("{}/v1/orders/{oid}/{action}", api.tc.url(node));
        let http = api.http.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let r = http.post(&url).bearer_auth(&vt).send().await;
                if let Ok(r) = r {
                    if r.status() == StatusCode::OK {
                        return;
                    }
                    assert_ne!(r.status(), StatusCode::CONFLICT, "{action} refused");
                }
                assert!(Instant::now() < deadline, "{action} never succeeded");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    act(&api, follower, "accept").await;
    let m = next_json(&mut ws).await;
    assert_eq!(
        m["payload"]["data"]["orderUpdates"]["status"], "accepted",
        "{m}"
    );

    // Kill the leader; the vendor carries on through the survivors.
    api.tc.cell.kill(leader);
    let new_leader = api
        .tc
        .cell
        .wait_leader(Duration::from_secs(20))
        .await
        .unwrap();
    assert_ne!(new_leader, leader);
    act(&api, follower, "ready").await;
    let m = next_json(&mut ws).await;
    let u = &m["payload"]["data"]["orderUpdates"];
    assert_eq!(u["status"], "ready", "{m}");
    assert_eq!(u["order"]["status"], "ready", "{m}");
    // The feed order is strictly increasing.
    assert!(
        u["seq"].as_u64().unwrap()
            > first["payload"]["data"]["orderUpdates"]["seq"]
                .as_u64()
                .unwrap()
    );
    // Subscriptions need a token.
    let ws_url = api.tc.url(follower).replacen("http://", "ws://", 1) + "/graphql";
    let mut req = ws_url.into_client_request().unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    let (mut anon, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    anon.send(Message::text(
        json!({"type": "connection_init"}).to_string(),
    ))
    .await
    .unwrap();
    let _ack = next_json(&mut anon).await;
    anon.send(Message::text(json!({"id": "1", "type": "subscribe", "payload": {"query": "subscription { events { seq } }"}}).to_string())).await.unwrap();
    let m = next_json(&mut anon).await;
    assert_eq!(
        m["payload"]["errors"][0]["extensions"]["code"], "unauthorized",
        "{m}"
    );
}

/// The driver's offers and the customer's delivery updates arrive over
/// subscriptions as dispatch goes: offer → accept → arrive → pick up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offer_and_delivery_subscriptions_follow_dispatch() {
    let _serial = common::SERIAL.lock().await;
    let api = Api::start(1).await;
    let (vt, vid, pids) = api.shop("dv@gql.test").await;
    let (did, dt) = api
        .driver("dd@gql.test", (PICKUP.0 + 0.001, PICKUP.1))
        .await;
    let (_, ct) = api.signup("dc@gql.test", "customer").await;
    let mut offers = subscribe(
        &api.tc.url(1),
        &dt,
        "subscription { offers { type data } }",
        json!({}),
    )
    .await;

    let oid = api
        .one_item_order(&ct, &vid, &pids[0], "subs-dispatch")
        .await;
    let (s, v) = api
        .rest(
            1,
            Method::POST,
            &format!("/v1/orders/{oid}/accept"),
            Some(&vt),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let dlv = v["delivery_id"].as_str().unwrap().to_string();
    let mut updates = subscribe(
        &api.tc.url(1),
        &ct,
        "subscription($id: String!) { deliveryUpdates(deliveryId: $id, after: 0) { type delivery { status driverId } } }",
        json!({"id": dlv}),
    )
    .await;

    // The offer reaches the driver's socket.
    let m = next_json(&mut offers).await;
    let e = &m["payload"]["data"]["offers"];
    assert_eq!(e["type"], "offer.created", "{m}");
    let data: Value = match &e["data"] {
        Value::String(s) => serde_json::from_str(s).unwrap(),
        other => other.clone(),
    };
    assert_eq!(data["delivery_id"], dlv.as_str(), "{m}");
    let offer_id = data["offer_id"].as_str().unwrap().to_string();

    // Accepted (through GraphQL), then arrive and pick up: each a delivery
    // update, in order, with the delivery as it is then.
    let (_, d, code) = api
        .gql(
            1,
            Some(&dt),
            "mutation($id: String!) { answerOffer(id: $id, answer: ACCEPT) { status } }",
            json!({"id": offer_id}),
        )
        .await;
    assert_eq!(code, None, "{d}");
    let (s, v) = api
        .rest(
            1,
            Method::POST,
            &format!("/v1/orders/{oid}/ready"),
            Some(&vt),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    for action in ["ARRIVE", "PICKUP"] {
        let (_, d, code) = api
            .gql(
                1,
                Some(&dt),
                &format!("mutation($id: String!) {{ deliveryAction(id: $id, action: {action}) {{ status }} }}"),
                json!({"id": dlv}),
            )
            .await;
        assert_eq!(code, None, "{action}: {d}");
    }
    let mut seen = Vec::new();
    // (The customer hears of the pickup as the order's status change.)
    while seen.last().map(String::as_str) != Some("order.picked_up") {
        let m = next_json(&mut updates).await;
        let u = &m["payload"]["data"]["deliveryUpdates"];
        assert_eq!(m["type"], "next", "{m}");
        if u["type"] == "delivery.assigned" {
            assert_eq!(u["delivery"]["driverId"], did.as_str(), "{m}");
        }
        seen.push(u["type"].as_str().unwrap().to_string());
    }
    let pos = |t: &str| seen.iter().position(|s| s == t);
    assert!(
        pos("delivery.assigned") < pos("delivery.arrived")
            && pos("delivery.arrived") < pos("order.picked_up")
            && pos("delivery.assigned").is_some(),
        "{seen:?}"
    );
}
