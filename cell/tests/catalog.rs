//! The catalog through HTTP on a real 3-node cell: vendors and products,
//! ownership, public cached reads invalidated on every node, bad input.

mod common;

use std::time::Duration;

use common::harness::TestCell;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

struct Client<'a> {
    tc: &'a TestCell,
}

impl Client<'_> {
    async fn call(
        &self,
        node: u64,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        index: Option<u64>,
    ) -> (StatusCode, Value, Option<u64>) {
        let mut req = self
            .tc
            .http
            .request(method, format!("{}{path}", self.tc.url(node)));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        if let Some(i) = index {
            req = req.header("x-cell-index", i.to_string());
        }
        let r = req.send().await.expect("request");
        let status = r.status();
        let idx = r
            .headers()
            .get("x-cell-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        (status, r.json::<Value>().await.unwrap_or(Value::Null), idx)
    }

    async fn signup(&self, email: &str, role: &str) -> (String, String) {
        let (s, v, _) = self
            .call(1, Method::POST, "/v1/auth/signup", None, Some(json!({"email": email, "password": "a long password", "name": email, "role": role})), None)
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        (
            v["account"]["id"].as_str().unwrap().into(),
            v["access_token"].as_str().unwrap().into(),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vendors_and_products_with_ownership_and_cached_reads() {
    let tc = TestCell::start(3, false, &["--rate-limit-auth", "1000"])
        .await
        .expect("cell");
    let leader = tc.cell.wait_leader(Duration::from_secs(10)).await.unwrap();
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let c = Client { tc: &tc };
    let (owner_id, owner) = c.signup("pizza@example.com", "vendor").await;
    let (_, rival) = c.signup("rival@example.com", "vendor").await;
    let (_, customer) = c.signup("eve@example.com", "customer").await;

    let vendor_body = json!({
        "name": "Pizza Place", "kind": "restaurant", "description": "wood fired",
        "location": {"lat": 40.71, "lng": -74.0}, "address": "1 Main St", "prep_minutes": 15, "tags": ["Pizza", "italian"]
    });
    let (s, _, _) = c
        .call(
            leader,
            Method::POST,
            "/v1/vendors",
            Some(&customer),
            Some(vendor_body.clone()),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _, _) = c
        .call(
            leader,
            Method::POST,
            "/v1/vendors",
            None,
            Some(vendor_body.clone()),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, vendor, idx) = c
        .call(
            follower,
            Method::POST,
            "/v1/vendors",
            Some(&owner),
            Some(vendor_body),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{vendor}");
    assert_eq!(vendor["owner_id"], owner_id.as_str());
    assert_eq!(vendor["tags"], json!(["pizza", "italian"]));
    let vid = vendor["id"].as_str().unwrap().to_string();
    assert!(vid.starts_with("test.ven_"));

    // Anonymous read on any node once it caught up.
    for node in 1..=3 {
        let (s, v, _) = c
            .call(
                node,
                Method::GET,
                &format!("/v1/vendors/{vid}"),
                None,
                None,
                idx,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["name"], "Pizza Place");
    }

    let product = json!({"name": "Margherita", "category": "Pizza", "price": {"amount": 1299, "currency": "USD"}, "stock": 2});
    let (s, _, _) = c
        .call(
            leader,
            Method::POST,
            &format!("/v1/vendors/{vid}/products"),
            Some(&rival),
            Some(product.clone()),
            None,
        )
        .await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "a rival added to someone else's menu"
    );
    let (s, p, _) = c
        .call(
            leader,
            Method::POST,
            &format!("/v1/vendors/{vid}/products"),
            Some(&owner),
            Some(product.clone()),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    assert_eq!(p["available"], true);
    assert_eq!(p["category"], "pizza");
    let pid = p["id"].as_str().unwrap().to_string();
    for i in 0..4 {
        let mut more = product.clone();
        more["name"] = json!(format!("Pizza {i}"));
        more["stock"] = Value::Null;
        let (s, _, _) = c
            .call(
                leader,
                Method::POST,
                &format!("/v1/vendors/{vid}/products"),
                Some(&owner),
                Some(more),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::CREATED);
    }

    // Warm the cache on the follower, change the price, read again there.
    // (A read racing the follower's apply of the product may fill the cache
    // just before that apply's invalidation drops it again: read a few
    // times, so at least two of them are served from the cache.)
    let (_, _, idx) = c
        .call(
            leader,
            Method::GET,
            &format!("/v1/products/{pid}"),
            None,
            None,
            None,
        )
        .await;
    for _ in 0..5 {
        let (s, v, _) = c
            .call(
                follower,
                Method::GET,
                &format!("/v1/products/{pid}"),
                None,
                None,
                idx,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["price"]["amount"], 1299);
    }
    let (s, _, _) = c
        .call(
            leader,
            Method::PATCH,
            &format!("/v1/products/{pid}"),
            Some(&rival),
            Some(json!({"price": {"amount": 1, "currency": "USD"}})),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v, idx) = c
        .call(
            leader,
            Method::PATCH,
            &format!("/v1/products/{pid}"),
            Some(&owner),
            Some(json!({"price": {"amount": 1499, "currency": "USD"}})),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, v, _) = c
        .call(
            follower,
            Method::GET,
            &format!("/v1/products/{pid}"),
            None,
            None,
            idx,
        )
        .await;
    assert_eq!(
        v["price"]["amount"], 1499,
        "stale cached product after update"
    );

    // Stock: sold out is unavailable; unlimited is null.
    let (s, _, _) = c
        .call(
            leader,
            Method::PUT,
            &format!("/v1/products/{pid}/stock"),
            Some(&rival),
            Some(json!({"stock": 100})),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v, idx) = c
        .call(
            leader,
            Method::PUT,
            &format!("/v1/products/{pid}/stock"),
            Some(&owner),
            Some(json!({"stock": 0})),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, v, _) = c
        .call(
            follower,
            Method::GET,
            &format!("/v1/products/{pid}"),
            None,
            None,
            idx,
        )
        .await;
    assert_eq!(v["available"], false);

    // Menu pagination.
    let (s, page1, _) = c
        .call(
            follower,
            Method::GET,
            &format!("/v1/vendors/{vid}/products?limit=3"),
            None,
            None,
            idx,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(page1["items"].as_array().unwrap().len(), 3);
    let cursor = page1["next_cursor"].as_str().unwrap();
    let (_, page2, _) = c
        .call(
            follower,
            Method::GET,
            &format!("/v1/vendors/{vid}/products?limit=3&cursor={cursor}"),
            None,
            None,
            idx,
        )
        .await;
    assert_eq!(page2["items"].as_array().unwrap().len(), 2);
    assert!(page2["next_cursor"].is_null());

    // Menu pages are cached too, and a change to one of their products
    // (here its stock) retires them on every node.
    let hits_before = cache_hits(&tc, follower).await;
    let page1_path = format!("/v1/vendors/{vid}/products?limit=3");
    let menu_page1 = |idx| c.call(follower, Method::GET, &page1_path, None, None, idx);
    let (_, again, _) = menu_page1(idx).await;
    assert_eq!(again, page1);
    assert!(cache_hits(&tc, follower).await > hits_before);
    let first = page1["items"][0]["id"].as_str().unwrap();
    let (s, _, idx) = c
        .call(
            leader,
            Method::PUT,
            &format!("/v1/products/{first}/stock"),
            Some(&owner),
            Some(json!({"stock": 7})),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, fresh, _) = menu_page1(idx).await;
    assert_eq!(fresh["items"][0]["id"], first);
    assert_eq!(fresh["items"][0]["stock"], 7, "stale cached menu: {fresh}");

    // Vendor profile: owner and ops may patch, others may not.
    let (s, _, _) = c
        .call(
            leader,
            Method::PATCH,
            &format!("/v1/vendors/{vid}"),
            Some(&rival),
            Some(json!({"name": "Mine now"})),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v, _) = c
        .call(
            leader,
            Method::PATCH,
            &format!("/v1/vendors/{vid}"),
            Some(&tc.cell.token),
            Some(json!({"status": "paused"})),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "paused");

    // Delete.
    let (s, _, idx) = c
        .call(
            leader,
            Method::DELETE,
            &format!("/v1/products/{pid}"),
            Some(&owner),
            None,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _, _) = c
        .call(
            follower,
            Method::GET,
            &format!("/v1/products/{pid}"),
            None,
            None,
            idx,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Bad input: nothing is created.
    let bad_products = [
        json!({"name": "X", "category": "c", "price": {"amount": 100, "currency": "EUR"}}),
        json!({"name": "X", "category": "c", "price": {"amount": -1, "currency": "USD"}}),
        json!({"name": "X", "category": "c", "price": {"amount": 1, "currency": "USD"}, "stock": -5}),
        json!({"name": "", "category": "c", "price": {"amount": 1, "currency": "USD"}}),
        json!({"name": "X", "category": "c", "price": {"amount": 1, "currency": "USD"}, "secret": 1}),
        json!({"name": "X", "category": "c", "price": 12.5}),
    ];
    for body in bad_products {
        let (s, v, _) = c
            .call(
                leader,
                Method::POST,
                &format!("/v1/vendors/{vid}/products"),
                Some(&owner),
                Some(body),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert_eq!(v["code"], "validation_failed");
    }
    let (s, _, _) = c.call(leader, Method::POST, "/v1/vendors", Some(&owner), Some(json!({"name": "Y", "kind": "spaceship", "location": {"lat": 0, "lng": 0}, "address": "a", "prep_minutes": 1})), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _, _) = c.call(leader, Method::POST, "/v1/vendors", Some(&owner), Some(json!({"name": "Y", "kind": "taxi", "location": {"lat": 100, "lng": 0}, "address": "a", "prep_minutes": 1})), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    for bad in ["nope", "test.prd_x", "other.prd_01JD3ABCDEFGHJKMNPQRSTVWXY"] {
        let (s, v, _) = c
            .call(
                leader,
                Method::GET,
                &format!("/v1/products/{bad}"),
                None,
                None,
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{bad}: {v}");
    }
    let (_, page, _) = c
        .call(
            leader,
            Method::GET,
            &format!("/v1/vendors/{vid}/products?limit=100"),
            None,
            None,
            None,
        )
        .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 4);

    // The follower served repeated product reads from its cache.
    let hits = cache_hits(&tc, follower).await;
    assert!(hits >= 2.0, "no cache hits on the follower: {hits}");
}

async fn cache_hits(tc: &TestCell, node: u64) -> f64 {
    tc.metrics(node)
        .await
        .lines()
        .find(|l| l.starts_with("cache_hits "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}
