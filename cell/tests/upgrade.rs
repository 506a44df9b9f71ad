//! Rolling upgrades: a command an older build cannot decode enters the log
//! only once every node runs a build that applies it, the cell's recorded
//! command version only rises, a node older than the leader's build cannot
//! join, and a build refuses state written at a version newer than it
//! applies.

mod common;

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use common::harness::TestCell;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const VERSION_TABLE: storage::Table<u32> = storage::Table::new(cell::command_version::TABLE_NAME);

/// Sets (or, with `None`, removes as a build from before versions left it)
/// the recorded command version in a stopped node's state.
fn set_recorded_version(data_dir: &Path, version: Option<u32>) {
    let path = data_dir.join("raft").join("state.redb");
    assert!(path.exists(), "{}", path.display());
    let store = storage::Store::open(path, 1 << 20).expect("state");
    let txn = store.write().expect("write");
    match version {
        Some(v) => txn.put(VERSION_TABLE, b"v", &v).expect("put"),
        None => drop(txn.delete(VERSION_TABLE, b"v").expect("delete")),
    }
    txn.commit(storage::Durability::Immediate).expect("commit");
}

async fn cell_versions(tc: &TestCell, id: u64) -> Value {
    let a = tc
        .request(id, Method::GET, "/v1/cell", &[], None)
        .await
        .expect("GET /v1/cell");
    a.json()["versions"].clone()
}

/// Waits until each of `ids` records its build's command version (the
/// harness's own wait, on every node named).
async fn wait_recorded(tc: &TestCell, ids: &[u64], within: Duration) {
    for &id in ids {
        tc.cell
            .wait_command_version(id, within)
            .await
            .expect("the cell records its builds' command version");
    }
}

async fn call(
    tc: &TestCell,
    id: u64,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = tc.http.request(method, format!("{}{path}", tc.url(id)));
    if !token.is_empty() {
        req = req.bearer_auth(token);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    match req.send().await {
        Ok(r) => (r.status(), r.json().await.unwrap_or(Value::Null)),
        Err(e) => panic!("{path} on node {id}: {e}"),
    }
}

/// A peer port that answers like a build from before command versions
/// does: it has no `/raft/version` (nor anything else).
async fn old_build_peer() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, axum::Router::new()).await;
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn new_commands_wait_until_every_node_runs_a_build_that_applies_them() {
    let _serial = common::SERIAL.lock().await;
    let mut tc = TestCell::start(3, false, &["--rate-limit-auth", "1000"])
        .await
        .expect("cell");
    let current = cell::command_version::CURRENT as u64;

    // A new cell records its builds' version by itself.
    wait_recorded(&tc, &[1, 2, 3], Duration::from_secs(10)).await;
    let v = cell_versions(&tc, 1).await;
    assert_eq!(v["commands"], json!(current), "{v}");
    assert!(v["build"].is_string(), "{v}");
    let leader = tc
        .cell
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    let versions = tc
        .admin(leader, Method::GET, "/admin/cluster/versions", None)
        .await
        .expect("versions");
    for id in ["1", "2", "3"] {
        assert_eq!(
            versions["nodes"][id]["version"],
            json!(current),
            "{versions}"
        );
    }

    // A node of an older build may not join a cell that writes newer
    // commands; membership stays as it was.
    let old = old_build_peer().await.to_string();
    let (s, v) = call(
        &tc,
        leader,
        Method::POST,
        "/admin/cluster/nodes",
        &tc.cell.token,
        Some(json!({"id": 4, "api_addr": old, "peer_addr": old})),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["code"], "build_too_old", "{v}");
    assert!(
        v["detail"]
            .as_str()
            .unwrap_or("")
            .contains("node 4 runs a build of command version 1"),
        "{v}"
    );
    let status = tc.cell.cluster_status(leader).await.expect("status");
    assert!(status["nodes"].get("4").is_none(), "{status}");

    // The same cell as builds from before versions left it (nothing
    // recorded), restarted with node 3 down: its build cannot be asked.
    for id in 1..=3 {
        tc.cell.stop(id);
        set_recorded_version(&tc.cell.nodes[&id].data_dir, None);
    }
    for id in 1..=2 {
        tc.start_node(id).expect("start");
    }
    tc.cell
        .wait_leader(Duration::from_secs(30))
        .await
        .expect("leader of two");
    assert_eq!(cell_versions(&tc, 1).await["cell"], json!(1));
    let metrics = tc.metrics(1).await;
    assert!(metrics.contains("command_version_cell 1"), "{metrics}");
    assert!(
        metrics.contains(&format!("command_version_build {current}")),
        "{metrics}"
    );

    let (s, v) = call(&tc, 1, Method::POST, "/v1/auth/signup", "", Some(json!({
        "email": "upgrade@example.com", "password": "a long password", "name": "Upgrade", "role": "vendor"
    }))).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let vendor = v["access_token"].as_str().expect("token").to_string();
    // Commands every build applies go on.
    let (s, v) = call(
        &tc,
        2,
        Method::POST,
        "/v1/vendors",
        &vendor,
        Some(json!({
            "name": "Upgrade Deli", "kind": "restaurant", "location": {"lat": 40.70, "lng": -74.00},
            "address": "1 Main St", "prep_minutes": 10
        })),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let vid = v["id"].as_str().expect("vendor id").to_string();
    // Opening hours and webhooks wait for node 3, on the leader and on a
    // follower alike, and change nothing.
    let hours =
        json!({"timezone": "UTC", "weekly": [{"day": "mon", "open": "09:00", "close": "17:00"}]});
    for id in 1..=2 {
        let (s, v) = call(
            &tc,
            id,
            Method::PATCH,
            &format!("/v1/vendors/{vid}"),
            &vendor,
            Some(json!({"hours": hours})),
        )
        .await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "node {id}: {v}");
        assert_eq!(v["code"], "upgrade_in_progress", "{v}");
        assert!(
            v["detail"]
                .as_str()
                .unwrap_or("")
                .contains("node 3 did not say its version"),
            "{v}"
        );
        let (s, v) = call(
            &tc,
            id,
            Method::POST,
            &format!("/v1/vendors/{vid}/webhooks"),
            &vendor,
            Some(json!({
                "url": "https://hooks.example.com/in", "secret": "0123456789abcdef0123456789abcdef"
            })),
        )
        .await;
        assert_eq!(
            (s, v["code"].clone()),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                json!("upgrade_in_progress")
            ),
            "{v}"
        );
    }
    let (_, v) = call(
        &tc,
        1,
        Method::GET,
        &format!("/v1/vendors/{vid}"),
        &vendor,
        None,
    )
    .await;
    assert!(v["hours"].is_null(), "{v}");
    let (_, v) = call(
        &tc,
        1,
        Method::GET,
        &format!("/v1/vendors/{vid}/webhooks"),
        &vendor,
        None,
    )
    .await;
    assert_eq!(v["items"], json!([]), "{v}");

    // Node 3 back (running this build): the version rises and the same
    // request goes through.
    tc.start_node(3).expect("start node 3");
    tc.cell
        .wait_healthy(3, Duration::from_secs(30))
        .await
        .expect("node 3");
    wait_recorded(&tc, &[1, 2, 3], Duration::from_secs(15)).await;
    let (s, v) = call(
        &tc,
        2,
        Method::PATCH,
        &format!("/v1/vendors/{vid}"),
        &vendor,
        Some(json!({"hours": hours})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["hours"], hours, "{v}");
    let metrics = tc.metrics(2).await;
    assert!(
        metrics.contains(&format!("command_version_cell {current}")),
        "{metrics}"
    );

    // A build that applies less than the state records refuses to start
    // rather than meet commands it cannot decode.
    tc.cell.stop(2);
    set_recorded_version(&tc.cell.nodes[&2].data_dir, Some(current as u32 + 1));
    tc.start_node(2).expect("start node 2");
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(status) = tc.cell.exit_status(2) {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "node 2 kept running on newer state"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!exit.success(), "{exit:?}");
    let log = std::fs::read_to_string(&tc.cell.nodes[&2].log_file).unwrap_or_default();
    assert!(
        log.contains(&format!("command version {}", current + 1)),
        "{log}"
    );

    // Put back as it was, it starts and catches up.
    set_recorded_version(&tc.cell.nodes[&2].data_dir, Some(current as u32));
    tc.start_node(2).expect("restart node 2");
    tc.cell
        .wait_healthy(2, Duration::from_secs(30))
        .await
        .expect("node 2");
}
