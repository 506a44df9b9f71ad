//! `GET /admin/backup` (`cellctl backup`) and `cell --restore-from`: a
//! cell's state comes back on a fresh node that then serves reads and
//! writes, and grows back to three nodes with `add-node` (the new nodes
//! catch up from a snapshot: the restored node has no log to send them).

mod cellctl;
mod common;

use std::time::{Duration, Instant};

use cell::local::LocalCell;
use common::harness::{cell_bin, TestCell};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_restores_onto_a_fresh_node() {
    let _serial = common::SERIAL.lock().await;
    let tc = TestCell::start(3, false, &[]).await.expect("cell");
    let leader = tc.cell.wait_leader(Duration::from_secs(10)).await.unwrap();
    // An account: its id names the cell.
    let signup = tc
        .http
        .post(format!("{}/v1/auth/signup", tc.url(leader)))
        .json(&serde_json::json!({"email": "b@example.com", "password": "a long password", "name": "B", "role": "customer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(signup.status(), StatusCode::CREATED);
    let mut last = None;
    for i in 0..50 {
        last = Some(
            tc.put(leader, &format!("cfg/{i}"), &format!("v{i}"))
                .await
                .unwrap(),
        );
    }
    let last = last.unwrap();
    // From a follower: backups do not need the leader.
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    tc.wait_applied(follower, last.index.unwrap(), Duration::from_secs(10))
        .await
        .unwrap();
    let backup = tc
        .http
        .get(format!("{}/admin/backup", tc.url(follower)))
        .bearer_auth(&tc.cell.token)
        .send()
        .await
        .unwrap();
    assert_eq!(backup.status(), StatusCode::OK);
    let bytes = backup.bytes().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cell.backup");
    std::fs::write(&file, &bytes).unwrap();

    // A brand-new single node seeded from the file.
    let mut restored = LocalCell::new(&cell_bin(), "test", &dir.path().join("new")).unwrap();
    restored.define_node(7, None).unwrap();
    restored.nodes.get_mut(&7).unwrap().args =
        vec!["--restore-from".into(), file.display().to_string()];
    restored.start_node(7, false).unwrap();
    restored
        .wait_healthy(7, Duration::from_secs(30))
        .await
        .unwrap();
    restored.wait_leader(Duration::from_secs(10)).await.unwrap();
    let http = reqwest::Client::new();
    let get = |key: String| {
        let http = http.clone();
        let url = format!("{}/v1/kv/{key}", restored.api_url(7));
        let token = restored.token.clone();
        async move { http.get(url).bearer_auth(token).send().await.unwrap() }
    };
    let r = get("cfg/49".into()).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["etag"].to_str().unwrap(),
        format!("\"{}\"", last.etag.unwrap())
    );
    assert_eq!(r.bytes().await.unwrap(), "v49");
    let s = restored.cluster_status(7).await.unwrap();
    assert_eq!(s["voters"], serde_json::json!([7]), "{s}");
    // It takes writes, and versions keep growing past the backup's.
    let v = put_new(&http, &restored, 7, "cfg/new", "x").await;
    assert!(v > last.etag.unwrap());

    // Restoring over existing data is refused.
    restored.stop(7);
    let restore_into = |data_dir: &std::path::Path| {
        std::process::Command::new(cell_bin())
            .args(["--node-id", "7", "--data-dir"])
            .arg(data_dir)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--peer-listen",
                "127.0.0.1:0",
                "--restore-from",
            ])
            .arg(&file)
            .output()
            .unwrap()
    };
    let out = restore_into(&restored.nodes[&7].data_dir);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("empty data directory"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // So is restoring it under another cell's name (here the default,
    // `local`): its accounts would claim a cell that is not this one. Nothing
    // is left behind.
    let other = dir.path().join("other");
    let out = restore_into(&other);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cell test's accounts") && err.contains("--cell test"),
        "{err}"
    );
    assert!(!other.join("raft").join("state.redb").exists());
}

/// Creates `key` on node `id` of `cell` (asserting `201`); its version.
async fn put_new(http: &reqwest::Client, cell: &LocalCell, id: u64, key: &str, value: &str) -> u64 {
    let w = http
        .put(format!("{}/v1/kv/{key}", cell.api_url(id)))
        .bearer_auth(&cell.token)
        .body(value.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(w.status(), StatusCode::CREATED);
    w.headers()["etag"]
        .to_str()
        .unwrap()
        .trim_matches('"')
        .parse()
        .unwrap()
}

/// Every key with its version and value, read from the node at `url`
/// linearizably, in key order.
async fn dump(http: &reqwest::Client, url: &str, token: &str) -> Vec<(String, u64, String)> {
    let mut keys = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut list = format!("{url}/v1/kv?limit=100");
        if let Some(c) = &cursor {
            list.push_str(&format!("&cursor={c}"));
        }
        let r = http
            .get(list)
            .bearer_auth(token)
            .header("x-consistency", "linearizable")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "listing keys on {url}");
        let page: Value = r.json().await.unwrap();
        for item in page["items"].as_array().unwrap() {
            keys.push(item["key"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let mut out = Vec::new();
    for key in keys {
        let r = http
            .get(format!("{url}/v1/kv/{key}"))
            .bearer_auth(token)
            .header("x-consistency", "linearizable")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{key} on {url}");
        let version = r.headers()["etag"]
            .to_str()
            .unwrap()
            .trim_matches('"')
            .parse()
            .unwrap();
        out.push((key, version, r.text().await.unwrap()));
    }
    out
}

/// The README's disaster recovery: `cellctl backup --out FILE`, a new node
/// started with `--restore-from FILE` on an empty data directory, grown
/// back to three voters with `add-node` (the admin API for one node,
/// `cellctl cluster add-node` for the other) and `cellctl cluster
/// promote`. The new nodes get the restored state as a snapshot and keep
/// serving it once the restored node is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_node_grows_back_to_three_with_add_node() {
    let _serial = common::SERIAL.lock().await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let tc = TestCell::start(1, false, &[]).await.expect("cell");
    for i in 0..120 {
        let a = tc
            .put(1, &format!("cfg/{i:03}"), &format!("v{i}"))
            .await
            .unwrap();
        assert_eq!(a.status, StatusCode::CREATED);
    }
    // Overwritten and deleted keys come back as they ended.
    for i in 0..10 {
        let a = tc.put(1, &format!("cfg/{i:03}"), "again").await.unwrap();
        assert_eq!(a.status, StatusCode::OK);
    }
    for i in 110..120 {
        let a = tc
            .request(1, Method::DELETE, &format!("/v1/kv/cfg/{i:03}"), &[], None)
            .await
            .unwrap();
        assert!(a.status.is_success(), "delete: {}", a.status);
    }
    let before = dump(&http, &tc.url(1), &tc.cell.token).await;
    assert_eq!(before.len(), 110);
    // The backup holds at least this much of the log.
    let backed_up = tc.status(1).await.unwrap()["applied"].as_u64().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cell.backup");
    let out = cellctl::run(
        &tc.url(1),
        &tc.cell.token,
        &["backup", "--out", file.to_str().unwrap()],
    )
    .expect("cellctl backup");
    assert_eq!(
        out["bytes"].as_u64(),
        Some(std::fs::metadata(&file).unwrap().len()),
        "{out}"
    );
    // The old cell is gone for good.
    drop(tc);

    // `cell --restore-from FILE --node-id 1 ...` on an empty data directory,
    // without --join, as the README has it.
    let mut cell = LocalCell::new(&cell_bin(), "test", &dir.path().join("new")).unwrap();
    for id in 1..=3 {
        cell.define_node(id, None).unwrap();
    }
    cell.nodes.get_mut(&1).unwrap().args =
        vec!["--restore-from".into(), file.display().to_string()];
    cell.start_node(1, true).unwrap();
    cell.wait_healthy(1, Duration::from_secs(30)).await.unwrap();
    cell.wait_leader(Duration::from_secs(10)).await.unwrap();
    let restored = cell.cluster_status(1).await.unwrap();
    assert_eq!(restored["voters"], json!([1]), "{restored}");
    let restored_index = restored["applied"].as_u64().unwrap();
    assert_eq!(dump(&http, &cell.api_url(1), &cell.token).await, before);

    // Grow: node 2 through the admin API, node 3 with cellctl.
    for id in [2, 3] {
        cell.start_node(id, false).unwrap();
        cell.wait_healthy(id, Duration::from_secs(30))
            .await
            .unwrap();
    }
    cell.add_node(1, 2).await.expect("add node 2");
    let n3 = &cell.nodes[&3];
    let (api3, peer3) = (n3.api.to_string(), n3.peer_advertise.clone());
    let out = cellctl::run(
        &cell.api_url(1),
        &cell.token,
        &[
            "cluster", "add-node", "--id", "3", "--api", &api3, "--peer", &peer3,
        ],
    )
    .expect("cellctl cluster add-node");
    assert_eq!(out["added"], 3, "{out}");
    let out = cellctl::run(
        &cell.api_url(1),
        &cell.token,
        &["cluster", "promote", "--id", "2", "--id", "3"],
    )
    .expect("cellctl cluster promote");
    assert_eq!(out["voters"], json!([1, 2, 3]), "{out}");

    for id in 2..=3 {
        let deadline = Instant::now() + Duration::from_secs(20);
        let s = loop {
            let s = cell.cluster_status(id).await.unwrap();
            if s["voters"] == json!([1, 2, 3])
                && s["leader"] == json!(1)
                && s["applied"].as_u64().unwrap_or(0) >= restored_index
            {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} did not catch up with the restored node: {s}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        // No log holds what the backup does: only a snapshot could bring it.
        assert!(
            s["snapshot_index"].as_u64().unwrap_or(0) >= backed_up,
            "node {id} caught up without a snapshot of the restored state: {s}"
        );
        assert_eq!(
            dump(&http, &cell.api_url(id), &cell.token).await,
            before,
            "node {id}"
        );
    }

    // The grown cell takes writes, with versions past the backup's...
    let newest = before.iter().map(|(_, v, _)| *v).max().unwrap();
    let v = put_new(&http, &cell, 2, "cfg/after-restore", "grown").await;
    assert!(v > newest, "version {v} not past the backup's {newest}");

    // ...and the restored state lives on the new nodes without node 1.
    cell.kill(1);
    let leader = cell.wait_leader(Duration::from_secs(10)).await.unwrap();
    assert!([2, 3].contains(&leader), "leader {leader}");
    let mut expected = before.clone();
    expected.push(("cfg/after-restore".into(), v, "grown".into()));
    expected.sort();
    for id in 2..=3 {
        assert_eq!(
            dump(&http, &cell.api_url(id), &cell.token).await,
            expected,
            "node {id} without node 1"
        );
    }
}
