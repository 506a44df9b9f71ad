//! Public TLS on the router, private TLS from the router to a cell whose
//! certificates come from the internal CA.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use cell::{certs, local::LocalCell};
use common::*;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_both_sides_of_the_router() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    certs::init_ca(&pki, "test CA", 30, false).unwrap();
    let ca = pki.join("ca.pem");
    let hosts = vec!["localhost".to_string(), "127.0.0.1".to_string()];

    let mut args = vec!["--region", "nyc"];
    args.extend(CELL_ARGS);
    let mut cell = LocalCell::new(&cell_bin(), "nyc", &dir.path().join("nyc"))
        .unwrap()
        .with_args(&args);
    cell.use_tls(&ca).unwrap();
    let (cert, key) = certs::issue(&pki, &pki, "n1", &hosts, 30, false).unwrap();
    cell.define_node(1, None).unwrap();
    cell.nodes.get_mut(&1).unwrap().args = vec![
        "--tls-cert".into(),
        cert.display().to_string(),
        "--tls-key".into(),
        key.display().to_string(),
        "--ca".into(),
        ca.display().to_string(),
    ];
    cell.form(1).await.unwrap();
    assert!(cell.api_url(1).starts_with("https://"));

    let (rcert, rkey) = certs::issue(&pki, &pki, "router", &hosts, 30, false).unwrap();
    let mut regions = BTreeMap::new();
    regions.insert("nyc".to_string(), region(&cell, NYC));
    let (rcert, rkey, ca_s) = (
        rcert.display().to_string(),
        rkey.display().to_string(),
        ca.display().to_string(),
    );
    let mut rargs = vec!["--tls-cert", &rcert, "--tls-key", &rkey, "--ca", &ca_s];
    rargs.extend(ROUTER_ARGS);
    let router = start_router(&dir.path().join("router"), &regions, &rargs).await;
    let base = format!("https://localhost:{}", router.addr.port());

    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap())
        .no_proxy()
        .build()
        .unwrap();
    let (_, token, _, cell_name) = signup(&https, &base, "tls@nyc.test", "customer", at(NYC)).await;
    assert_eq!(cell_name, "nyc");
    let r = call(&https, &base, reqwest::Method::GET, "/v1/me")
        .token(&token)
        .send()
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.cell(), Some("nyc"));
    assert_eq!(r.body["email"], json!("tls@nyc.test"));
    // A long poll rides the router's shared HTTP/2 connection to the node
    // (`h2` by ALPN over the internal CA's TLS).
    let r = call(&https, &base, reqwest::Method::GET, "/v1/events?wait=1")
        .token(&token)
        .send()
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.cell(), Some("nyc"));
    assert!(r.body["events"].is_array(), "{}", r.body);

    // Plain HTTP to the TLS port gets nowhere.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/v1/me", router.addr.port()))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
}
