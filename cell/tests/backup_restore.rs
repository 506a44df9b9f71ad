//! `GET /admin/backup` and `cell --restore-from`: a cell's state comes
//! back on a fresh node that then serves reads and writes.

mod common;

use std::time::Duration;

use cell::local::LocalCell;
use common::harness::{cell_bin, TestCell};
use reqwest::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_restores_onto_a_fresh_node() {
    let tc = TestCell::start(3, false, &[]).await.expect("cell");
    let leader = tc.cell.wait_leader(Duration::from_secs(10)).await.unwrap();
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
    let w = http
        .put(format!("{}/v1/kv/cfg/new", restored.api_url(7)))
        .bearer_auth(&restored.token)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(w.status(), StatusCode::CREATED);
    let v: u64 = w.headers()["etag"]
        .to_str()
        .unwrap()
        .trim_matches('"')
        .parse()
        .unwrap();
    assert!(v > last.etag.unwrap());

    // Restoring over existing data is refused.
    restored.stop(7);
    let out = std::process::Command::new(cell_bin())
        .args(["--node-id", "7", "--data-dir"])
        .arg(&restored.nodes[&7].data_dir)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--peer-listen",
            "127.0.0.1:0",
            "--restore-from",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("empty data directory"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
