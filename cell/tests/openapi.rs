//! `/openapi.json` describes every endpoint of the contract, and real
//! responses carry every field the document promises.

mod common;

use common::harness::TestCell;
use serde_json::{json, Value};

/// (method, path) of every endpoint in shared/API.md that this cell serves,
/// and of those it adds (rating an order, GraphQL).
const CONTRACT: &[(&str, &str)] = &[
    ("post", "/v1/auth/signup"),
    ("post", "/v1/auth/login"),
    ("post", "/v1/auth/refresh"),
    ("post", "/v1/auth/logout"),
    ("get", "/v1/me"),
    ("get", "/.well-known/jwks.json"),
    ("post", "/v1/vendors"),
    ("get", "/v1/vendors/{id}"),
    ("patch", "/v1/vendors/{id}"),
    ("get", "/v1/vendors/{id}/products"),
    ("post", "/v1/vendors/{id}/products"),
    ("get", "/v1/products/{id}"),
    ("patch", "/v1/products/{id}"),
    ("delete", "/v1/products/{id}"),
    ("put", "/v1/products/{id}/stock"),
    ("get", "/v1/cart"),
    ("put", "/v1/cart"),
    ("post", "/v1/quotes"),
    ("post", "/v1/orders"),
    ("get", "/v1/orders"),
    ("get", "/v1/orders/{id}"),
    ("post", "/v1/orders/{id}/accept"),
    ("post", "/v1/orders/{id}/reject"),
    ("post", "/v1/orders/{id}/ready"),
    ("post", "/v1/orders/{id}/cancel"),
    ("post", "/v1/orders/{id}/rating"),
    ("get", "/v1/events"),
    ("get", "/v1/search"),
    ("put", "/v1/drivers/me"),
    ("get", "/v1/drivers/me"),
    ("post", "/v1/drivers/{id}/approve"),
    ("post", "/v1/drivers/{id}/suspend"),
    ("put", "/v1/drivers/me/availability"),
    ("put", "/v1/drivers/me/location"),
    ("get", "/v1/drivers/me/offers"),
    ("get", "/v1/drivers/me/earnings"),
    ("post", "/v1/offers/{id}/accept"),
    ("post", "/v1/offers/{id}/decline"),
    ("get", "/v1/deliveries/{id}"),
    ("post", "/v1/deliveries/{id}/arrive"),
    ("post", "/v1/deliveries/{id}/pickup"),
    ("post", "/v1/deliveries/{id}/complete"),
    ("post", "/v1/deliveries/{id}/fail"),
    ("post", "/v1/vendors/{id}/webhooks"),
    ("get", "/v1/vendors/{id}/webhooks"),
    ("delete", "/v1/vendors/{id}/webhooks/{webhook}"),
    ("post", "/v1/routes"),
    ("get", "/v1/routes/available"),
    ("post", "/v1/routes/{id}/claims"),
    ("delete", "/v1/routes/{id}/claims"),
    ("get", "/v1/drivers/me/schedule"),
    ("post", "/admin/search/reindex"),
    ("get", "/v1/kv/{key}"),
    ("put", "/v1/kv/{key}"),
    ("delete", "/v1/kv/{key}"),
    ("get", "/v1/cell"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/admin/cluster"),
    ("post", "/admin/cluster/init"),
    ("post", "/admin/cluster/nodes"),
    ("post", "/admin/cluster/membership"),
    ("delete", "/admin/cluster/nodes/{id}"),
    ("post", "/admin/snapshot"),
    ("get", "/admin/backup"),
    ("post", "/graphql"),
    ("get", "/graphql"),
    ("get", "/graphql/schema.graphql"),
];

/// Every property the schema lists must be in the object (recursively one
/// level for `$ref`s is enough here: we check top-level fields).
fn assert_has_documented_fields(doc: &Value, schema: &str, actual: &Value) {
    let props = doc["components"]["schemas"][schema]["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("schema {schema} missing"));
    for field in props.keys() {
        assert!(
            actual.get(field).is_some(),
            "{schema}.{field} is documented but missing in {actual}"
        );
    }
    for field in actual.as_object().unwrap().keys() {
        assert!(
            props.contains_key(field),
            "{schema} does not document {field}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_covers_the_contract_and_matches_responses() {
    let tc = TestCell::start(1, false, &["--rate-limit-auth", "1000"])
        .await
        .expect("cell");
    let base = tc.url(1);
    let doc: Value = tc
        .http
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for (method, path) in CONTRACT {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is not in /openapi.json");
        assert!(
            op["responses"].is_object(),
            "{method} {path} has no responses"
        );
        if path.starts_with("/v1/") || path.starts_with("/admin/") {
            for code in ["429", "503"] {
                assert!(
                    op["responses"][code].is_object(),
                    "{method} {path} does not document {code}"
                );
            }
        }
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    // GraphQL's request and response are described, not left as any body.
    assert!(doc["components"]["schemas"]["GraphQLRequest"]["properties"]["query"].is_object());
    assert!(doc["components"]["schemas"]["GraphQLResponse"]["properties"]["data"].is_object());
    // Actions are paths of their own, as the contract names them, not a
    // `{action}` template.
    for (path, item) in doc["paths"].as_object().unwrap() {
        assert!(!path.contains("{action}"), "{path}");
        let params = item["post"]["parameters"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            params.iter().all(|p| p["name"] != "action"),
            "{path}: {params:?}"
        );
    }

    // Real responses carry exactly the documented fields.
    let post = |path: String, token: Option<String>, body: Value, key: Option<&'static str>| {
        let http = tc.http.clone();
        let url = format!("{base}{path}");
        async move {
            let mut r = http.post(url).json(&body);
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            if let Some(k) = key {
                r = r.header("idempotency-key", k);
            }
            r.send().await.unwrap().json::<Value>().await.unwrap()
        }
    };
    let session = post("/v1/auth/signup".into(), None, json!({"email": "o@example.com", "password": "a long password", "name": "O", "role": "vendor"}), None).await;
    assert_has_documented_fields(&doc, "Session", &session);
    assert_has_documented_fields(&doc, "AccountView", &session["account"]);
    let vt = session["access_token"].as_str().unwrap().to_string();
    let vendor = post("/v1/vendors".into(), Some(vt.clone()), json!({"name": "V", "kind": "retail", "location": {"lat": 1.0, "lng": 1.0}, "address": "a", "prep_minutes": 1}), None).await;
    assert_has_documented_fields(&doc, "VendorView", &vendor);
    let vid = vendor["id"].as_str().unwrap();
    let product = post(
        format!("/v1/vendors/{vid}/products"),
        Some(vt),
        json!({"name": "P", "category": "c", "price": {"amount": 100, "currency": "USD"}}),
        None,
    )
    .await;
    assert_has_documented_fields(&doc, "ProductView", &product);
    let ct = post("/v1/auth/signup".into(), None, json!({"email": "c@example.com", "password": "a long password", "name": "C", "role": "customer"}), None).await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let quote = post(
        "/v1/quotes".into(),
        Some(ct.clone()),
        json!({"vendor_id": vid, "dropoff": {"lat": 1.01, "lng": 1.01}}),
        None,
    )
    .await;
    assert_has_documented_fields(&doc, "QuoteView", &quote);
    let order = post(
        "/v1/orders".into(),
        Some(ct.clone()),
        json!({"quote_id": quote["id"], "items": [{"product_id": product["id"], "quantity": 1}], "dropoff": {"location": {"lat": 1.01, "lng": 1.01}, "address": "x"}}),
        Some("oa-1"),
    )
    .await;
    assert_has_documented_fields(&doc, "OrderView", &order);
    let problem = post("/v1/orders".into(), Some(ct.clone()), json!({}), None).await;
    assert_has_documented_fields(&doc, "Problem", &problem);
    let events: Value = tc
        .http
        .get(format!("{base}/v1/events"))
        .bearer_auth(&ct)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_has_documented_fields(&doc, "EventsPage", &events);
    assert_has_documented_fields(&doc, "EventView", &events["events"][0]);
    let status = tc.status(1).await.unwrap();
    assert_has_documented_fields(&doc, "ClusterStatus", &status);
    assert_has_documented_fields(&doc, "NodeAddrs", &status["nodes"]["1"]);
    let cell: Value = tc
        .http
        .get(format!("{base}/v1/cell"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_has_documented_fields(&doc, "CellInfo", &cell);
}
