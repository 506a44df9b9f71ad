//! Many clients' reads share pipelined connections to a node: every client
//! gets the answer to its own request — the right product, a 404 for a
//! missing one, an empty body for a `HEAD`, a long menu whole — however
//! the answers were batched on the way.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_client_gets_its_own_answer_through_shared_pipes() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let cell = start_cell(dir.path(), "nyc", 1).await;
    let regions = BTreeMap::from([("nyc".to_string(), region(&cell, NYC))]);
    let router = start_router(&dir.path().join("router"), &regions, &ROUTER_ARGS).await;
    let base = router.url();
    let http = client(Duration::from_secs(30));
    let (token, vid, first) = shop(&http, &base, "pipes@nyc.test", NYC).await;
    let mut products = vec![first];
    for i in 0..15 {
        let p = call(&http, &base, Method::POST, &format!("/v1/vendors/{vid}/products"))
            .token(&token)
            .json(json!({"name": format!("Dish {i}"), "description": "a long description ".repeat(6 * i), "category": "dishes", "price": {"amount": 100 + i, "currency": "USD"}}))
            .send()
            .await;
        assert_eq!(p.status, StatusCode::CREATED, "{}", p.body);
        products.push(p.body["id"].as_str().unwrap().to_string());
    }
    let menu_len = products.len();

    // 32 clients, each on its own kept-alive connection.
    let clients: Vec<_> = (0..32)
        .map(|c| {
            let (base, products, vid) = (base.clone(), products.clone(), vid.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .pool_max_idle_per_host(1)
                    .no_proxy()
                    .build()
                    .unwrap();
                for n in 0..60usize {
                    let pick = (c * 7 + n * 13) % (products.len() + 3);
                    let url = |path: &str| format!("{base}{path}");
                    match pick {
                        i if i < products.len() => {
                            let r = http
                                .get(url(&format!("/v1/products/{}", products[i])))
                                .send()
                                .await
                                .unwrap();
                            assert_eq!(r.status(), StatusCode::OK);
                            assert_eq!(r.headers()["x-cell"], "nyc");
                            let v: serde_json::Value = r.json().await.unwrap();
                            assert_eq!(v["id"], json!(products[i]), "client {c} request {n}");
                        }
                        i if i == products.len() => {
                            let r = http
                                .get(url("/v1/products/nyc.prd_01J00000000000000000000000"))
                                .send()
                                .await
                                .unwrap();
                            assert_eq!(r.status(), StatusCode::NOT_FOUND);
                            let v: serde_json::Value = r.json().await.unwrap();
                            assert_eq!(v["code"], "not_found", "{v}");
                        }
                        i if i == products.len() + 1 => {
                            let r = http
                                .head(url(&format!("/v1/products/{}", products[0])))
                                .send()
                                .await
                                .unwrap();
                            assert_eq!(r.status(), StatusCode::OK);
                            assert!(r.bytes().await.unwrap().is_empty());
                        }
                        _ => {
                            let r = http
                                .get(url(&format!("/v1/vendors/{vid}/products?limit=100")))
                                .send()
                                .await
                                .unwrap();
                            assert_eq!(r.status(), StatusCode::OK);
                            let v: serde_json::Value = r.json().await.unwrap();
                            assert_eq!(v["items"].as_array().unwrap().len(), menu_len, "{v}");
                        }
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    // Idle pipes are let go (after 5 s, or when the node closes them at
    // 10 s): after a pause past both, the next reads go through without a
    // pipe breaking under them.
    tokio::time::sleep(Duration::from_secs(11)).await;
    for p in &products {
        let r = call(&http, &base, Method::GET, &format!("/v1/products/{p}"))
            .send()
            .await;
        assert_eq!(
            (r.status, r.body["id"].as_str()),
            (StatusCode::OK, Some(p.as_str()))
        );
    }
    let m = own_endpoint(&http, &base, "/metrics").await;
    assert!(
        !m.lines()
            .any(|l| l.starts_with("router_upstream_errors_total") && l.contains("kind=\"pipe\"")),
        "{m}"
    );
}
