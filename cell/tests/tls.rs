//! A 3-node cell with HTTPS on the API and mutual TLS between nodes, using
//! certificates from the internal CA (`cellctl certs`).

use std::time::Duration;

use cell::{certs, local::LocalCell};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    certs::init_ca(&pki, "test CA", 30, false).unwrap();
    let hosts = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let mut cell = LocalCell::new(
        std::path::Path::new(env!("CARGO_BIN_EXE_cell")),
        "tls",
        &dir.path().join("cell"),
    )
    .unwrap();
    cell.use_tls(&pki.join("ca.pem")).unwrap();
    for id in 1..=3u64 {
        let (cert, key) = certs::issue(&pki, &pki, &format!("n{id}"), &hosts, 30, false).unwrap();
        cell.define_node(id, None).unwrap();
        cell.nodes.get_mut(&id).unwrap().args = vec![
            "--tls-cert".into(),
            cert.display().to_string(),
            "--tls-key".into(),
            key.display().to_string(),
            "--ca".into(),
            pki.join("ca.pem").display().to_string(),
        ];
    }
    cell.form(3).await.unwrap();
    let leader = cell.wait_leader(Duration::from_secs(10)).await.unwrap();
    let s = cell.cluster_status(leader).await.unwrap();
    assert_eq!(s["voters"], serde_json::json!([1, 2, 3]), "{s}");

    let ca = reqwest::Certificate::from_pem(&std::fs::read(pki.join("ca.pem")).unwrap()).unwrap();
    let https = reqwest::Client::builder()
        .add_root_certificate(ca.clone())
        .build()
        .unwrap();
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    // A write through a follower travels node to node over mTLS.
    let r = https
        .put(format!("{}/v1/kv/tls/ok", cell.api_url(follower)))
        .bearer_auth(&cell.token)
        .body("yes")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert!(r.headers().contains_key("strict-transport-security"));
    let r = https
        .get(format!("{}/v1/kv/tls/ok", cell.api_url(leader)))
        .bearer_auth(&cell.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "yes");

    // The peer port refuses a client without a certificate from the CA...
    let peer = cell.nodes[&leader].peer_listen;
    let no_identity = reqwest::Client::builder()
        .add_root_certificate(ca)
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = no_identity
        .post(format!("https://{peer}/raft/vote"))
        .body(vec![1, 2, 3])
        .send()
        .await;
    assert!(
        r.is_err(),
        "peer port accepted a client without a certificate"
    );
    // ...and plain HTTP.
    let plain = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    assert!(plain
        .post(format!("http://{peer}/raft/vote"))
        .body(vec![1])
        .send()
        .await
        .is_err());
}
