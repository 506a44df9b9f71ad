//! GraphQL through the router: queries pinned by the token like any other
//! request, anonymous ones by region, and subscriptions relayed over a
//! WebSocket to the home cell.

mod common;

use std::time::Duration;

use common::*;
use futures::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

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
            if v["type"] != "ping" {
                return v;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graphql_and_its_subscriptions_reach_the_home_cell() {
    let _serial = SERIAL.lock().await;
    let w = World::start(1, 1).await;
    let http = &w.http;
    let r = w.router(0);
    let (_, lon_cust, _, cell) = signup(http, &r, "gq@lon.test", "customer", at(LON)).await;
    assert_eq!(cell, "lon");

    // Pinned by the token: the answer comes from lon.
    let q = call(http, &r, Method::POST, "/graphql")
        .token(&lon_cust)
        .json(json!({"query": "{ me { cell email } }"}))
        .send()
        .await;
    assert_eq!(q.status, StatusCode::OK, "{}", q.body);
    assert_eq!(q.cell(), Some("lon"));
    assert_eq!(q.body["data"]["me"]["cell"], "lon", "{}", q.body);
    // Anonymous: by region.
    let q = call(http, &r, Method::POST, "/graphql?region=nyc")
        .json(json!({"query": "{ search(q: \"soup\") { total } }"}))
        .send()
        .await;
    assert_eq!(
        (q.status, q.cell()),
        (StatusCode::OK, Some("nyc")),
        "{}",
        q.body
    );

    // An order in lon, followed over a subscription through the router.
    let (vendor, vid, pid) = shop(http, &r, "gq-shop@lon.test", LON).await;
    let quote = call(http, &r, Method::POST, "/v1/quotes")
        .token(&lon_cust)
        .json(quote_body(&vid, LON))
        .send()
        .await;
    assert_eq!(quote.status, StatusCode::CREATED, "{}", quote.body);
    let order = call(http, &r, Method::POST, "/v1/orders")
        .token(&lon_cust)
        .header("idempotency-key", "gq-1")
        .json(order_body(quote.body["id"].as_str().unwrap(), &pid, LON))
        .send()
        .await;
    assert_eq!(order.status, StatusCode::CREATED, "{}", order.body);
    let oid = order.body["id"].as_str().unwrap().to_string();

    let mut req = (r.replacen("http://", "ws://", 1) + "/graphql")
        .into_client_request()
        .unwrap();
    let h = req.headers_mut();
    h.insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    h.insert(
        "authorization",
        format!("Bearer {lon_cust}").parse().unwrap(),
    );
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.headers()["x-cell"], "lon");
    ws.send(Message::text(
        json!({"type": "connection_init"}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "connection_ack");
    let sub = json!({"id": "1", "type": "subscribe", "payload": {
        "query": "subscription($id: String!) { orderUpdates(orderId: $id, after: 0) { status } }",
        "variables": {"id": oid}}});
    ws.send(Message::text(sub.to_string())).await.unwrap();
    let m = next_json(&mut ws).await;
    assert_eq!(
        m["payload"]["data"]["orderUpdates"]["status"], "placed",
        "{m}"
    );
    let a = call(http, &r, Method::POST, &format!("/v1/orders/{oid}/accept"))
        .token(&vendor)
        .send()
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let m = next_json(&mut ws).await;
    assert_eq!(
        m["payload"]["data"]["orderUpdates"]["status"], "accepted",
        "{m}"
    );

    // Without a token or a region the router cannot place a WebSocket.
    let mut req = (r.replacen("http://", "ws://", 1) + "/graphql")
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    let e = tokio_tungstenite::connect_async(req).await.unwrap_err();
    assert!(e.to_string().contains("400"), "{e}");
}
