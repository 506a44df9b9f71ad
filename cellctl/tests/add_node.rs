//! `cellctl cluster add-node` refuses a node that signs access tokens with
//! keys of its own (the cell's tokens would fail on it, its tokens and
//! quotes everywhere else), and adds one that runs with the cell's keys.

use std::{process::Command, time::Duration};

use cell::local::{find_cell_binary, LocalCell};

fn cellctl(cell: &LocalCell, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cellctl"))
        .args(["--endpoint", &cell.api_url(1), "--token", &cell.token])
        .args(args)
        .output()
        .expect("cellctl runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn add_args(cell: &LocalCell, id: u64) -> Vec<String> {
    let n = &cell.nodes[&id];
    ["cluster", "add-node", "--id", &id.to_string()]
        .iter()
        .map(|s| s.to_string())
        .chain(["--api".into(), n.api.to_string()])
        .chain(["--peer".into(), n.peer_advertise.clone()])
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_node_refuses_a_node_with_other_token_keys() {
    let dir = tempfile::tempdir().unwrap();
    let bin = find_cell_binary().expect("the `cell` binary: run with `cargo test --workspace`");
    let mut cell = LocalCell::new(&bin, "keys", &dir.path().join("cell")).unwrap();
    cell.define_node(1, None).unwrap();
    cell.start_node(1, true).unwrap();
    cell.wait_healthy(1, Duration::from_secs(30)).await.unwrap();
    cell.wait_leader(Duration::from_secs(10)).await.unwrap();

    // A node set up apart, with the cell's ops token but a key file of its
    // own (what a node started without --jwt-keys-file gets).
    let apart = dir.path().join("apart");
    std::fs::create_dir_all(&apart).unwrap();
    std::fs::copy(&cell.token_file, apart.join("ops-token")).unwrap();
    let mut stray = LocalCell::new(&bin, "keys", &apart).unwrap();
    stray.define_node(2, None).unwrap();
    stray.start_node(2, false).unwrap();
    stray
        .wait_healthy(2, Duration::from_secs(30))
        .await
        .unwrap();
    let args = add_args(&stray, 2);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, text) = cellctl(&cell, &args);
    assert!(!ok, "added despite other keys: {text}");
    assert!(text.contains("other access-token keys"), "{text}");
    let (_, status) = cellctl(&cell, &["cluster", "status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["nodes"].as_object().unwrap().len(), 1, "{status}");
    drop(stray);

    // Node 2 with the cell's key file is added.
    cell.define_node(2, None).unwrap();
    cell.start_node(2, false).unwrap();
    cell.wait_healthy(2, Duration::from_secs(30)).await.unwrap();
    let args = add_args(&cell, 2);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, text) = cellctl(&cell, &args);
    assert!(ok, "{text}");
}
