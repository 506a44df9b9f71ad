//! A router told of one node of a cell learns the others from the cell's
//! leader (its `/readyz` names the voters): they join its pool and its
//! saved directory, and the cell stays reachable when the first node dies.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_router_learns_a_cells_other_nodes_from_its_leader() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cell = start_cell(dir.path(), "nyc", 3).await;
    let leader = cell.leader().await.expect("a leader");
    let mut spec = region(&cell, NYC);
    spec.nodes = vec![cell.api_url(leader)];
    let regions = BTreeMap::from([("nyc".to_string(), spec)]);
    let router = start_router(&dir.path().join("router"), &regions, &ROUTER_ARGS).await;
    let base = router.url();
    let http = client(Duration::from_secs(30));

    let mut all: Vec<String> = (1..=3).map(|id| cell.api_url(id)).collect();
    all.sort();
    let started = Instant::now();
    loop {
        let r = call(&http, &base, Method::GET, "/admin/regions")
            .token(&router.token)
            .send()
            .await;
        let mut nodes: Vec<String> = r.body["regions"][0]["nodes"]
            .as_array()
            .map(|n| {
                n.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        nodes.sort();
        if nodes == all {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the router still lists {nodes:?}: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The node it was told of goes; the cell is still served through the
    // nodes it learnt of (a new leader takes over).
    cell.kill(leader);
    let started = Instant::now();
    for attempt in 0.. {
        let email = format!("u{attempt}@nyc.test");
        let r = call(&http, &base, Method::POST, "/v1/auth/signup")
            .json(json!({"email": email, "password": "a long password", "name": "U", "role": "customer", "location": {"lat": NYC.0, "lng": NYC.1}}))
            .send()
            .await;
        if r.status == StatusCode::CREATED {
            assert_eq!(r.body["account"]["cell"], "nyc");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no signup through the other nodes: {} {}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
