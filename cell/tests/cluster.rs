//! Cluster behaviour with real `cell` processes on loopback: bootstrap,
//! forming a cell of several fresh nodes at once (`POST
//! /admin/cluster/init`, `cellctl cluster init --node`), leader failure
//! under load, restart and catch-up, snapshot install, membership changes
//! and a partitioned leader.

mod cellctl;
mod common;

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use cell::local::LocalCell;
use common::harness::{cell_bin, ct_json, json_body, TestCell};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Every acknowledged write must be on `node` with exactly that version.
async fn assert_has_all(tc: &TestCell, node: u64, acked: &BTreeMap<String, u64>, index: u64) {
    let have: BTreeMap<String, u64> = tc
        .dump(node, index)
        .await
        .expect("dump")
        .into_iter()
        .collect();
    for (k, v) in acked {
        assert_eq!(
            have.get(k),
            Some(v),
            "node {node} lost acknowledged write {k} (version {v})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_bootstrap_replicate_and_forward() {
    let _serial = common::SERIAL.lock().await;
    let tc = TestCell::start(3, false, &[]).await.expect("cell");
    let leader = tc
        .cell
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    // Followers learn the final membership from the log: give them a
    // moment on a busy machine.
    for id in 1..=3 {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let s = tc.status(id).await.expect("status");
            if s["voters"] == json!([1, 2, 3]) && s["leader"] == json!(leader) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "node {id} never saw voters [1, 2, 3] under leader {leader}: {s}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // A write sent to a follower is forwarded to the leader.
    let follower = (1..=3).find(|&i| i != leader).expect("a follower");
    let a = tc.put(follower, "hello", "world").await.expect("put");
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.json());
    let index = a.index.expect("x-cell-index");
    for id in 1..=3 {
        let r = tc.get_at(id, "hello", index).await.expect("get");
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, b"world");
        assert_eq!(r.etag, a.etag);
    }
    // Linearizable read on a follower sees it as well.
    let r = tc
        .request(
            follower,
            Method::GET,
            "/v1/kv/hello",
            &[("x-consistency", "linearizable".into())],
            None,
        )
        .await
        .expect("get");
    assert_eq!(r.body, b"world");

    // Every node counts what it applied: at least the put, in at least one
    // transaction.
    for id in 1..=3 {
        let text = tc
            .http
            .get(format!("{}/metrics", tc.url(id)))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or_else(|| panic!("no {name} on node {id}:\n{text}"))
        };
        assert!(value("raft_applied_commands_total") >= 1.0);
        assert!(value("raft_apply_transactions_total") >= 1.0);
    }
}

/// Writers keep going while the leader is killed with SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_loses_no_acknowledged_write_and_restart_catches_up() {
    let _serial = common::SERIAL.lock().await;
    let mut tc = TestCell::start(3, false, &[]).await.expect("cell");
    let urls: Vec<String> = (1..=3).map(|i| tc.url(i)).collect();
    let token = tc.cell.token.clone();
    let leader = tc
        .cell
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    let acked: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let max_index = Arc::new(Mutex::new(0u64));
    let stop = Arc::new(AtomicBool::new(false));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client");
    let mut writers = Vec::new();
    for w in 0..6 {
        let (urls, token, acked, max_index, stop, http) = (
            urls.clone(),
            token.clone(),
            acked.clone(),
            max_index.clone(),
            stop.clone(),
            http.clone(),
        );
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("w{w}-{i}");
                i += 1;
                let url = &urls[(i as usize + w) % urls.len()];
                let r = http
                    .put(format!("{url}/v1/kv/{key}"))
                    .bearer_auth(&token)
                    .body(format!("v{i}"))
                    .send()
                    .await;
                let Ok(r) = r else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                if r.status().is_success() {
                    let version: u64 = r.headers()["etag"]
                        .to_str()
                        .unwrap()
                        .trim_matches('"')
                        .parse()
                        .unwrap();
                    let index: u64 = r.headers()["x-cell-index"]
                        .to_str()
                        .unwrap()
                        .parse()
                        .unwrap();
                    acked.lock().unwrap().insert(key, version);
                    let mut m = max_index.lock().unwrap();
                    *m = (*m).max(index);
                } else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before_kill = acked.lock().unwrap().len();
    assert!(before_kill > 0, "no write succeeded before the kill");

    // A new leader among the survivors within 3 s (the bound),
    // measured from the SIGKILL to the first status that shows one. Both
    // survivors are asked at once every 25 ms, each with a short timeout
    // so one slow answer cannot hide the other's.
    let survivors: Vec<u64> = (1..=3).filter(|&i| i != leader).collect();
    let poll = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .expect("client");
    let killed_at = Instant::now();
    tc.cell.kill(leader);
    let (new_leader, election) = loop {
        let answers = futures::future::join_all(survivors.iter().map(|&id| {
            let (poll, url, token, survivors) = (&poll, tc.url(id), &token, &survivors);
            async move {
                let s: Value = poll
                    .get(format!("{url}/admin/cluster"))
                    .bearer_auth(token)
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                let seen = killed_at.elapsed();
                // A survivor that is leader, or follows a survivor.
                let l = if s["role"] == "leader" {
                    Some(id)
                } else {
                    s["leader"].as_u64().filter(|l| survivors.contains(l))
                };
                l.map(|l| (l, seen))
            }
        }))
        .await;
        if let Some(found) = answers.into_iter().flatten().min_by_key(|&(_, t)| t) {
            break found;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(10),
            "no new leader among {survivors:?} within 10 s of killing {leader}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    eprintln!("new leader {new_leader} seen {election:?} after killing {leader}");
    assert!(
        election < Duration::from_secs(3),
        "new leader {new_leader} only seen {election:?} after killing leader {leader} (want < 3 s)"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let index = *max_index.lock().unwrap();
    assert!(
        acked.len() > before_kill,
        "no write succeeded after the failover"
    );
    eprintln!("{} acknowledged writes", acked.len());

    for id in (1..=3).filter(|&i| i != leader) {
        assert_has_all(&tc, id, &acked, index).await;
    }
    // The killed node comes back and catches up.
    tc.start_node(leader).unwrap();
    tc.cell
        .wait_healthy(leader, Duration::from_secs(30))
        .await
        .unwrap();
    tc.wait_applied(leader, index, Duration::from_secs(30))
        .await
        .unwrap();
    assert_has_all(&tc, leader, &acked, index).await;
    let s = tc.status(leader).await.unwrap();
    assert_eq!(s["role"], "follower", "{s}");
}

/// A follower that missed tens of megabytes of log catches up from the
/// log: the leader sends what it missed in appends of bounded size, each
/// of which must arrive within openraft's per-append timeout (the
/// heartbeat interval), where 512 large entries in one append never did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_far_behind_on_large_values_catches_up() {
    let _serial = common::SERIAL.lock().await;
    let mut tc = TestCell::start(3, false, &[]).await.expect("cell");
    let leader = tc.cell.wait_leader(Duration::from_secs(10)).await.unwrap();
    let behind = (1..=3).find(|&i| i != leader).unwrap();
    tc.cell.kill(behind);
    // Concurrent writers, so that entries are batches of many values:
    // 80 MB in a few dozen entries.
    let value = vec![b'v'; 60 * 1024];
    let writers = (0..32).map(|w| {
        let (tc, value) = (&tc, &value);
        async move {
            let mut index = 0;
            for i in 0..40 {
                let a = tc
                    .request(
                        leader,
                        Method::PUT,
                        &format!("/v1/kv/big-{w}-{i}"),
                        &[],
                        Some(value.clone()),
                    )
                    .await
                    .unwrap();
                assert!(a.status.is_success(), "{}", a.status);
                index = index.max(a.index.unwrap());
            }
            index
        }
    });
    let index = futures::future::join_all(writers)
        .await
        .into_iter()
        .max()
        .unwrap();
    tc.start_node(behind).unwrap();
    tc.wait_applied(behind, index, Duration::from_secs(30))
        .await
        .expect("the follower did not catch up");
    let s = tc.status(behind).await.unwrap();
    assert_eq!(s["snapshot_index"].as_u64().unwrap_or(0), 0, "{s}");
    let r = tc.get_at(behind, "big-31-39", index).await.unwrap();
    assert_eq!(r.body, value);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_added_after_log_purge_receives_a_snapshot() {
    let _serial = common::SERIAL.lock().await;
    let mut tc = TestCell::start(
        3,
        false,
        &["--raft-snapshot-every", "50", "--raft-keep-logs", "5"],
    )
    .await
    .expect("cell");
    let leader = tc.cell.wait_leader(Duration::from_secs(10)).await.unwrap();
    let mut last = None;
    for i in 0..300 {
        let a = tc
            .put(leader, &format!("k{i:03}"), &format!("value {i}"))
            .await
            .unwrap();
        assert!(a.status.is_success());
        last = Some(a);
    }
    let last = last.unwrap();
    let index = last.index.unwrap();
    tc.admin(leader, Method::POST, "/admin/snapshot", None)
        .await
        .unwrap();
    let s = tc.status(leader).await.unwrap();
    assert!(
        s["purged_index"].as_u64().unwrap_or(0) > 0,
        "leader log not purged: {s}"
    );

    tc.launch_joiner(4).await.unwrap();
    tc.cell.add_node(leader, 4).await.unwrap();
    tc.wait_applied(4, index, Duration::from_secs(30))
        .await
        .unwrap();
    let s4 = tc.status(4).await.unwrap();
    assert!(
        s4["snapshot_index"].as_u64().unwrap_or(0) > 0,
        "node 4 got no snapshot: {s4}"
    );
    let r = tc.get_at(4, "k000", index).await.unwrap();
    assert_eq!(r.body, b"value 0");
    let r = tc.get_at(4, "k299", index).await.unwrap();
    assert_eq!(r.body, b"value 299");
    assert_eq!(r.etag, last.etag);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_grows_to_five_and_shrinks_back_to_three() {
    let _serial = common::SERIAL.lock().await;
    let mut tc = TestCell::start(3, false, &[]).await.expect("cell");
    let leader = tc.cell.wait_leader(Duration::from_secs(10)).await.unwrap();
    tc.put(leader, "before", "3").await.unwrap();
    for id in [4, 5] {
        tc.launch_joiner(id).await.unwrap();
    }
    // A joiner must be new: a member's id or address would have the leader
    // replicate to the wrong node (to itself, even, which stopped openraft
    // for good). Each is refused and changes nothing.
    let spec = |id: u64, of: u64| {
        let n = &tc.cell.nodes[&of];
        json_body(json!({"id": id, "api_addr": n.api.to_string(), "peer_addr": n.peer_advertise}))
    };
    let add = |body| {
        let headers = [ct_json()];
        let tc = &tc;
        async move {
            tc.request(leader, Method::POST, "/admin/cluster/nodes", &headers, body)
                .await
                .unwrap()
        }
    };
    let other = if leader == 1 { 2 } else { 1 };
    for (body, code, says) in [
        (
            spec(4, leader),
            "member_conflict",
            format!("node {leader} already uses"),
        ),
        (
            spec(other, 4),
            "member_conflict",
            format!("node {other} is already a voter"),
        ),
        // Node 5's address given as node 6's: node 5 says it is not.
        (spec(6, 5), "validation_failed", "is not node 6".to_string()),
    ] {
        let a = add(body).await;
        let v = a.json();
        assert_eq!(a.status.as_u16() / 100, 4, "{v}");
        assert_eq!(v["code"], code, "{v}");
        assert!(v["detail"].as_str().unwrap_or("").contains(&says), "{v}");
    }
    let s = tc.status(leader).await.unwrap();
    assert_eq!(s["voters"], json!([1, 2, 3]), "{s}");
    assert_eq!(s["learners"], json!([]), "{s}");
    assert!(tc
        .put(leader, "still", "3")
        .await
        .unwrap()
        .status
        .is_success());
    // A request on the peer port for another node is refused before Raft.
    let peer = tc.cell.nodes[&leader].peer_listen;
    let r = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap()
        .post(format!("http://{peer}/raft/vote"))
        .header("x-raft-to", "9")
        .body(vec![0u8; 8])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::MISDIRECTED_REQUEST);
    for id in [4, 5] {
        tc.cell.add_node(leader, id).await.unwrap();
    }
    // A retried add of the same learner is fine; its address under
    // another id is not.
    tc.cell.add_node(leader, 4).await.unwrap();
    let a = add(spec(6, 4)).await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{:?}", a.json());
    tc.cell.set_voters(leader, &[1, 2, 3, 4, 5]).await.unwrap();
    let s = tc.status(leader).await.unwrap();
    assert_eq!(s["voters"], json!([1, 2, 3, 4, 5]));
    let a = tc.put(5, "during", "5").await.unwrap();
    assert!(a.status.is_success(), "{:?}", a.json());
    tc.wait_applied(4, a.index.unwrap(), Duration::from_secs(10))
        .await
        .unwrap();

    tc.cell.set_voters(leader, &[1, 2, 3]).await.unwrap();
    for id in [4, 5] {
        let path = format!("/admin/cluster/nodes/{id}");
        let a = tc
            .request(leader, Method::DELETE, &path, &[], None)
            .await
            .unwrap();
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.json());
        // The change's log index, in the body and in X-Cell-Index.
        assert_eq!(a.index, a.json()["index"].as_u64(), "{:?}", a.json());
        assert!(a.index.is_some());
    }
    let s = tc.status(leader).await.unwrap();
    assert_eq!(s["voters"], json!([1, 2, 3]), "{s}");
    assert_eq!(s["learners"], json!([]), "{s}");
    // Removing nodes 4 and 5 leaves a working 3-node cell.
    tc.cell.kill(4);
    tc.cell.kill(5);
    let a = tc.put(leader, "after", "3").await.unwrap();
    assert!(a.status.is_success(), "{:?}", a.json());
    for id in 1..=3 {
        let r = tc.get_at(id, "during", a.index.unwrap()).await.unwrap();
        assert_eq!(r.body, b"5");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_leader_cannot_commit_and_the_cell_converges_after_healing() {
    let _serial = common::SERIAL.lock().await;
    let tc = TestCell::start(3, true, &[]).await.expect("cell");
    let net = tc.net.clone().unwrap();
    let old = tc.cell.wait_leader(Duration::from_secs(10)).await.unwrap();
    let a = tc.put(old, "stable", "1").await.unwrap();
    assert!(a.status.is_success());

    net.isolate(old, &[1, 2, 3]);
    let others: Vec<u64> = (1..=3).filter(|&i| i != old).collect();

    // The minority cannot commit.
    let minority = tc.put(old, "minority", "lost").await.unwrap();
    assert!(
        !minority.status.is_success(),
        "isolated leader committed: {:?}",
        minority.json()
    );

    // The majority elects a leader and commits.
    let deadline = Instant::now() + Duration::from_secs(10);
    let new_leader = loop {
        let mut found = None;
        for &id in &others {
            if let Ok(s) = tc.status(id).await {
                if s["role"] == "leader" {
                    found = Some(id);
                }
            }
        }
        if let Some(l) = found {
            break l;
        }
        assert!(Instant::now() < deadline, "majority elected no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let majority = tc.put(new_leader, "majority", "kept").await.unwrap();
    assert!(majority.status.is_success(), "{:?}", majority.json());
    let index = majority.index.unwrap();

    // The cut-off node holds an old value. A config-store read there is
    // linearizable even with the X-Cell-Index apps echo, so it never
    // answers the old value; asked for `local`, it does.
    let changed = tc.put(new_leader, "stable", "2").await.unwrap();
    assert!(changed.status.is_success());
    let echoed = tc.get_at(old, "stable", a.index.unwrap()).await.unwrap();
    assert_ne!(
        (echoed.status, echoed.body.as_slice()),
        (StatusCode::OK, b"1".as_slice()),
        "a stale config read on the cut-off node"
    );
    let local = tc
        .request(
            old,
            Method::GET,
            "/v1/kv/stable",
            &[("x-consistency", "local".into())],
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        (local.status, local.body.as_slice()),
        (StatusCode::OK, b"1".as_slice())
    );

    net.heal();
    for id in 1..=3 {
        tc.wait_applied(id, index, Duration::from_secs(20))
            .await
            .unwrap();
    }
    // Give the old leader time to learn the new term.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = tc.status(old).await.unwrap();
        if s["role"] == "follower" && s["leader"] == json!(new_leader) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "old leader did not step down: {s}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dumps: Vec<_> = {
        let mut v = Vec::new();
        for id in 1..=3 {
            v.push(tc.dump(id, index).await.unwrap());
        }
        v
    };
    assert_eq!(dumps[0], dumps[1]);
    assert_eq!(dumps[1], dumps[2]);
    let keys: Vec<&str> = dumps[0].iter().map(|(k, _)| k.as_str()).collect();
    assert!(
        keys.contains(&"majority") && keys.contains(&"stable"),
        "{keys:?}"
    );
    assert!(
        !keys.contains(&"minority"),
        "uncommitted minority write survived: {keys:?}"
    );
}

/// Three nodes started with `--join`: up, but in no cluster yet.
async fn three_unjoined_nodes(dir: &std::path::Path) -> LocalCell {
    let mut cell = LocalCell::new(&cell_bin(), "test", dir).expect("cell dir");
    for id in 1..=3 {
        cell.define_node(id, None).unwrap();
        cell.start_node(id, false).unwrap();
    }
    for id in 1..=3 {
        cell.wait_healthy(id, Duration::from_secs(30))
            .await
            .unwrap();
        let s = cell.cluster_status(id).await.unwrap();
        assert_eq!(
            (&s["voters"], &s["leader"]),
            (&json!([]), &Value::Null),
            "node {id} is in a cluster before init: {s}"
        );
    }
    cell
}

/// `{id, api_addr, peer_addr}` of each of `cell`'s nodes.
fn node_specs(cell: &LocalCell) -> Vec<Value> {
    cell.nodes
        .values()
        .map(|n| json!({"id": n.id, "api_addr": n.api.to_string(), "peer_addr": n.peer_advertise}))
        .collect()
}

/// All three nodes agree on one leader and on the membership `init` set
/// up, and a config-store write on any node is read linearizably on the
/// other two.
async fn assert_formed_as_one_cell(cell: &LocalCell) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let leader = loop {
        let mut views = Vec::new();
        for id in 1..=3 {
            views.push(cell.cluster_status(id).await.unwrap());
        }
        let leader = views[0]["leader"].as_u64();
        let agreed = leader.is_some()
            && views.iter().all(|s| {
                s["leader"].as_u64() == leader
                    && s["voters"] == json!([1, 2, 3])
                    && s["learners"] == json!([])
            });
        if agreed {
            for s in &views {
                let id = s["node_id"].as_u64().unwrap();
                let role = if Some(id) == leader {
                    "leader"
                } else {
                    "follower"
                };
                assert_eq!(s["role"], role, "{s}");
                for n in cell.nodes.values() {
                    assert_eq!(
                        s["nodes"][n.id.to_string()],
                        json!({"api_addr": n.api.to_string(), "peer_addr": n.peer_advertise}),
                        "node {id}'s view of node {}: {s}",
                        n.id
                    );
                }
            }
            break leader.unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "the nodes did not agree on a leader and voters [1, 2, 3]: {views:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!((1..=3).contains(&leader), "leader {leader}");
    for id in 1..=3 {
        cell.wait_command_version(id, Duration::from_secs(30))
            .await
            .unwrap();
    }

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    for writer in 1..=3u64 {
        let key = format!("formed/by-{writer}");
        let w = http
            .put(format!("{}/v1/kv/{key}", cell.api_url(writer)))
            .bearer_auth(&cell.token)
            .body(format!("written on {writer}"))
            .send()
            .await
            .unwrap();
        assert_eq!(w.status(), StatusCode::CREATED, "put on node {writer}");
        let etag = w.headers()["etag"].clone();
        for reader in (1..=3).filter(|&r| r != writer) {
            let r = http
                .get(format!("{}/v1/kv/{key}", cell.api_url(reader)))
                .bearer_auth(&cell.token)
                .header("x-consistency", "linearizable")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{key} on node {reader}");
            assert_eq!(r.headers()["etag"], etag, "{key} on node {reader}");
            assert_eq!(r.text().await.unwrap(), format!("written on {writer}"));
        }
    }

    // Every node now belongs to the cell: a second init is refused.
    for id in 1..=3 {
        let e = cell
            .admin(id, Method::POST, "/admin/cluster/init", Some(json!({})))
            .await
            .expect_err("a second init succeeded");
        assert!(
            e.to_string().contains("409"),
            "second init on node {id}: {e}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_init_forms_a_cell_of_three_fresh_nodes() {
    let _serial = common::SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let cell = three_unjoined_nodes(dir.path()).await;
    // Nodes named at another's address, or sharing one, are refused and
    // nothing forms: such a cell could never elect.
    let mut swapped = node_specs(&cell);
    let (p1, p3) = (
        swapped[0]["peer_addr"].clone(),
        swapped[2]["peer_addr"].clone(),
    );
    swapped[0]["peer_addr"] = p3;
    swapped[2]["peer_addr"] = p1;
    let mut shared = node_specs(&cell);
    shared[2]["api_addr"] = shared[0]["api_addr"].clone();
    for (nodes, says) in [(swapped, "is not node"), (shared, "both use")] {
        let e = cell
            .admin(
                2,
                Method::POST,
                "/admin/cluster/init",
                Some(json!({ "nodes": nodes })),
            )
            .await
            .expect_err("init with wrong addresses");
        assert!(e.to_string().contains(says), "{e}");
    }
    let s = cell.cluster_status(2).await.unwrap();
    assert_eq!(s["voters"], json!([]), "{s}");
    // Node 2 forms the cell with all three as voters (itself included).
    let r = cell
        .admin(
            2,
            Method::POST,
            "/admin/cluster/init",
            Some(json!({ "nodes": node_specs(&cell) })),
        )
        .await
        .expect("init");
    assert_eq!(r, json!({"initialized": true, "voters": [1, 2, 3]}));
    assert_formed_as_one_cell(&cell).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cellctl_cluster_init_forms_a_cell_of_three_fresh_nodes() {
    let _serial = common::SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let cell = three_unjoined_nodes(dir.path()).await;
    // As the README has an operator do it: from node 1, naming the others.
    let others: Vec<String> = cell
        .nodes
        .values()
        .filter(|n| n.id != 1)
        .map(|n| format!("{}={},{}", n.id, n.api, n.peer_advertise))
        .collect();
    let mut args = vec!["cluster", "init"];
    for spec in &others {
        args.extend(["--node", spec.as_str()]);
    }
    let r = cellctl::run(&cell.api_url(1), &cell.token, &args).expect("cellctl cluster init");
    assert_eq!(r, json!({"initialized": true, "voters": [1, 2, 3]}));
    assert_formed_as_one_cell(&cell).await;
    // `cluster status` on any node shows the whole cell.
    let s = cellctl::run(&cell.api_url(3), &cell.token, &["cluster", "status"]).unwrap();
    assert_eq!(s["voters"], json!([1, 2, 3]), "{s}");
    assert_eq!(s["nodes"].as_object().map(|n| n.len()), Some(3), "{s}");
    assert_eq!(s["leader"], cell.cluster_status(1).await.unwrap()["leader"]);
}
