//! Bad input over HTTP and on the peer port: clear errors, no panic, no
//! state change.

mod common;

use std::{io::Write, time::Duration};

use common::harness::{ct_json, json_body, TestCell};
use reqwest::{Method, StatusCode};
use serde_json::json;

fn assert_problem(a: &common::harness::Answer, status: StatusCode, code: &str) {
    assert_eq!(
        a.status,
        status,
        "body: {}",
        String::from_utf8_lossy(&a.body)
    );
    let p = a.json();
    assert_eq!(p["code"], code, "{p}");
    assert_eq!(p["status"], status.as_u16());
    assert!(
        p["request_id"].as_str().is_some_and(|s| !s.is_empty()),
        "{p}"
    );
    assert!(p["title"].is_string() && p["detail"].is_string() && p["type"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_problem_json_and_change_nothing() {
    let tc = TestCell::start(1, false, &[]).await.expect("cell");
    let first = tc.put(1, "keep", "me").await.unwrap();
    let index = first.index.unwrap();

    // Auth.
    let r = tc
        .http
        .get(format!("{}/v1/kv/keep", tc.url(1)))
        .bearer_auth("not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = tc
        .http
        .get(format!("{}/admin/cluster", tc.url(1)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()["content-type"], "application/problem+json");

    // Malformed JSON, unknown fields, wrong types, missing content type.
    let cases: Vec<(Option<Vec<u8>>, bool)> = vec![
        (Some(b"{not json".to_vec()), true),
        (json_body(json!({"voters": [1], "surprise": true})), true),
        (json_body(json!({"voters": "one"})), true),
        (json_body(json!({"voters": []})), true),
        (json_body(json!({"voters": [1, 1]})), true),
        (json_body(json!({"voters": [1, 99]})), true),
        (Some(vec![0xff, 0xfe, 0x00]), true),
    ];
    for (body, with_ct) in cases {
        let headers = if with_ct { vec![ct_json()] } else { vec![] };
        let a = tc
            .request(1, Method::POST, "/admin/cluster/membership", &headers, body)
            .await
            .unwrap();
        assert_problem(&a, StatusCode::BAD_REQUEST, "validation_failed");
    }
    let a = tc
        .request(
            1,
            Method::POST,
            "/admin/cluster/membership",
            &[],
            json_body(json!({"voters": [1]})),
        )
        .await
        .unwrap();
    assert_problem(
        &a,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    let a = tc
        .request(
            1,
            Method::POST,
            "/admin/cluster/nodes",
            &[ct_json()],
            json_body(json!({"id": 0, "api_addr": "x", "peer_addr": "y"})),
        )
        .await
        .unwrap();
    assert_problem(&a, StatusCode::BAD_REQUEST, "validation_failed");
    let a = tc
        .request(
            1,
            Method::POST,
            "/admin/cluster/nodes",
            &[ct_json()],
            json_body(json!({"id": 9, "api_addr": "127.0.0.1:1", "peer_addr": "no port"})),
        )
        .await
        .unwrap();
    assert_problem(&a, StatusCode::BAD_REQUEST, "validation_failed");

    // Oversized values and bodies.
    let a = tc
        .request(
            1,
            Method::PUT,
            "/v1/kv/big",
            &[],
            Some(vec![b'x'; 64 * 1024 + 1]),
        )
        .await
        .unwrap();
    assert_problem(&a, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    // The node answers before reading the whole body and closes the
    // connection: use a client of its own so the pool stays clean.
    let r = reqwest::Client::new()
        .put(format!("{}/v1/kv/huge", tc.url(1)))
        .bearer_auth(&tc.cell.token)
        .body(vec![b'x'; 3 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert_eq!(r.headers()["connection"], "close");
    // A client that writes its whole upload before reading (as many
    // simple ones do) still gets the early answer: the node drains what it
    // did not read instead of resetting the connection (lingering close).
    // The upload is larger than loopback's socket buffers.
    let answer = {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let url = tc.url(1);
        let addr = url.trim_start_matches("http://");
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let len = 32 * 1024 * 1024;
        let head = format!(
            "PUT /v1/kv/huge HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\ncontent-length: {len}\r\n\r\n",
            tc.cell.token
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&vec![b'x'; len])
            .await
            .expect("upload not reset");
        let mut back = Vec::new();
        s.read_to_end(&mut back).await.expect("answer not reset");
        String::from_utf8_lossy(&back).into_owned()
    };
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    // A request head too large to parse gets hyper's status, not a bare
    // close (its answer was lost with pipelined flushing on).
    let url = tc.url(1);
    let addr = url.trim_start_matches("http://");
    for (head, status) in cell::local::oversized_heads(addr) {
        let answer = cell::local::raw_exchange(addr, head.as_bytes())
            .await
            .unwrap();
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{status}: {answer:?}"
        );
    }

    // Bad keys, headers and queries.
    for key in ["a%20b", "%2Fslash", "a//b", "%C3%A9", &"k".repeat(300)] {
        let a = tc.put(1, key, "v").await.unwrap();
        assert_problem(&a, StatusCode::BAD_REQUEST, "validation_failed");
    }
    for (h, v) in [
        ("if-match", "42"),
        ("if-match", "\"abc\""),
        ("if-none-match", "\"3\""),
    ] {
        let a = tc
            .request(
                1,
                Method::PUT,
                "/v1/kv/keep",
                &[(h, v.to_string())],
                Some(b"x".to_vec()),
            )
            .await
            .unwrap();
        assert_problem(&a, StatusCode::BAD_REQUEST, "validation_failed");
    }
    let a = tc
        .request(
            1,
            Method::GET,
            "/v1/kv/keep",
            &[("x-cell-index", "-1".into())],
            None,
        )
        .await
        .unwrap();
    assert_problem(&a, StatusCode::BAD_REQUEST, "validation_failed");
    let a = tc
        .request(
            1,
            Method::GET,
            "/v1/kv/keep",
            &[("x-consistency", "sometimes".into())],
            None,
        )
        .await
        .unwrap();
    assert_problem(&a, StatusCode::BAD_REQUEST, "validation_failed");
    let a = tc
        .request(1, Method::GET, "/v1/kv?limit=0", &[], None)
        .await
        .unwrap();
    assert_problem(&a, StatusCode::BAD_REQUEST, "validation_failed");
    let a = tc
        .request(1, Method::GET, "/v1/kv?bogus=1", &[], None)
        .await
        .unwrap();
    assert_problem(&a, StatusCode::BAD_REQUEST, "validation_failed");
    let a = tc
        .request(1, Method::GET, "/v1/nothing-here", &[], None)
        .await
        .unwrap();
    assert_problem(&a, StatusCode::NOT_FOUND, "not_found");
    let a = tc
        .request(1, Method::PATCH, "/v1/kv/keep", &[], None)
        .await
        .unwrap();
    assert_problem(&a, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    // Nothing above reached the log.
    let s = tc.status(1).await.unwrap();
    assert_eq!(s["applied"].as_u64(), Some(index), "state changed: {s}");

    // CAS on a stale version: decided (and refused) in the log.
    let a = tc
        .request(
            1,
            Method::PUT,
            "/v1/kv/keep",
            &[("if-match", "\"999\"".into())],
            Some(b"x".to_vec()),
        )
        .await
        .unwrap();
    assert_problem(&a, StatusCode::PRECONDITION_FAILED, "precondition_failed");

    // Nothing changed.
    let r = tc.get_at(1, "keep", index).await.unwrap();
    assert_eq!(r.body, b"me");
    assert_eq!(r.etag, first.etag);
    assert_eq!(tc.dump(1, index).await.unwrap().len(), 1);
    assert_eq!(tc.dump(1, index).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_peer_port_and_corrupt_snapshots_are_rejected() {
    let tc = TestCell::start(1, false, &[]).await.expect("cell");
    let a = tc.put(1, "keep", "me").await.unwrap();
    let index = a.index.unwrap();
    let peer = tc.cell.nodes[&1].peer_listen;

    // Raw garbage bytes.
    for garbage in [
        &b"\x00\x01\x02garbage\r\n\r\n"[..],
        &[0xffu8; 4096][..],
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let mut s = std::net::TcpStream::connect(peer).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let _ = s.write_all(garbage);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut buf);
    }

    // Well-formed HTTP/2, garbage payloads.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for path in [
        "/raft/append",
        "/raft/vote",
        "/raft/leader",
        "/raft/snapshot",
    ] {
        for body in [
            Vec::new(),
            b"junk".to_vec(),
            vec![1u8; 10_000],
            vec![1, 0xff, 0xff, 0xff, 0xff, 0x0f],
        ] {
            let r = h2
                .post(format!("http://{peer}{path}"))
                .body(body)
                .send()
                .await
                .unwrap();
            assert!(
                r.status().is_client_error() || path == "/raft/snapshot",
                "{path}: {}",
                r.status()
            );
            if path == "/raft/snapshot" {
                // Either a 400-class answer or an encoded rejection; never a success.
                let status = r.status();
                let bytes = r.bytes().await.unwrap();
                assert!(
                    status.is_client_error() || status.is_success() && bytes.len() > 1,
                    "{path}: {status}"
                );
            }
        }
    }

    // A real snapshot stream, then truncated and corrupted versions of it.
    let backup = tc
        .http
        .get(format!("{}/admin/backup", tc.url(1)))
        .bearer_auth(&tc.cell.token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();
    assert!(backup.len() > 100);
    let status = tc.status(1).await.unwrap();
    let term = status["term"].as_u64().unwrap();
    // Header: (vote, meta) encoded like a real sender would, with a higher
    // term so the node would accept a valid snapshot.
    let header = raft_header(term + 5, index + 1000);
    let mut bad_streams = vec![
        backup[..backup.len() / 2].to_vec(),
        backup[..backup.len() - 3].to_vec(),
    ];
    let mut flipped = backup.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x55;
    bad_streams.push(flipped);
    bad_streams.push(b"not a snapshot at all".to_vec());
    for stream in bad_streams {
        let mut body = (header.len() as u32).to_le_bytes().to_vec();
        body.extend_from_slice(&header);
        body.extend_from_slice(&stream);
        let r = h2
            .post(format!("http://{peer}/raft/snapshot"))
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let bytes = r.bytes().await.unwrap();
        let answer: Result<Result<serde_json::Value, String>, _> = decode_answer(&bytes);
        assert!(
            status.is_client_error() || matches!(answer, Ok(Err(_))),
            "corrupt snapshot accepted: {status}"
        );
    }

    // A membership whose voters are not all among its nodes (openraft would
    // look the missing one up and panic once it campaigns), in an entry
    // that would otherwise be appended: a higher term, right after the
    // node's last entry.
    let r = h2
        .post(format!("http://{peer}/raft/append"))
        .body(unsound_membership_append(term, index))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Entries that do not follow their predecessor one index at a time, or
    // whose terms go back (openraft only debug-asserts this: its core
    // stopped, and a release build would misplace them in the log).
    for (prev, entries) in [
        (None, vec![(term + 5, 50)]),
        (
            Some((term, index)),
            vec![(term + 5, index + 1), (term + 5, index + 3)],
        ),
        (Some((term, index)), vec![(term + 5, index + 2)]),
        (Some((term + 3, index)), vec![(term + 2, index + 1)]),
        (Some((term, index)), vec![(term + 9, index + 1)]),
    ] {
        let r = h2
            .post(format!("http://{peer}/raft/append"))
            .body(blank_append(term + 5, prev, &entries))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{prev:?} {entries:?}");
    }
    // The node would campaign within its election timeout had it taken it.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Still alive, same state, still writable.
    let s = tc.status(1).await.unwrap();
    assert_eq!(s["applied"].as_u64(), Some(index), "{s}");
    assert_eq!(s["role"], "leader");
    let r = tc.get_at(1, "keep", index).await.unwrap();
    assert_eq!(r.body, b"me");
    let a = tc.put(1, "after", "ok").await.unwrap();
    assert!(a.status.is_success());

    // A forwarded batch holding a command no build of this cell decodes
    // (as a newer build's follower might send) beside one it does: the
    // first is answered undecodable and stays out of the log, the second
    // is written, and the node goes on applying.
    let good = storage::encode(&cell::app::Command::Kv(cell::kv::KvCommand::Put {
        key: "forwarded".into(),
        value: b"yes".to_vec(),
        content_type: "text/plain".into(),
        expect: cell::kv::Expect::Any,
    }))
    .unwrap();
    let unknown = storage::encode(&(9_999u32, "a command from the future")).unwrap();
    let batch = raft::types::Command(vec![unknown.into(), good.into()]);
    let r = h2
        .post(format!("http://{peer}/raft/leader"))
        .body(storage::encode(&ForwardedOp::Write(batch)).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let answer: Result<ForwardedOk, serde_json::Value> =
        storage::decode::<Result<ForwardedOk, ForwardedErr>>(&r.bytes().await.unwrap())
            .map_err(|e| serde_json::json!(e.to_string()))
            .and_then(|a| a.map_err(|e| serde_json::json!(format!("{e:?}"))));
    let Ok(ForwardedOk::Written {
        index: written,
        reply: raft::types::Reply::Batch(replies),
    }) = answer
    else {
        panic!("forwarded batch: {answer:?}");
    };
    assert!(
        matches!(
            &replies[..],
            [
                raft::types::ItemReply::Undecodable(_),
                raft::types::ItemReply::App(_)
            ]
        ),
        "{replies:?}"
    );
    let r = tc.get_at(1, "forwarded", written).await.unwrap();
    assert_eq!(r.body, b"yes");
    let s = tc.status(1).await.unwrap();
    assert_eq!(s["role"], "leader", "{s}");
    assert!(tc
        .put(1, "after-forwarded", "ok")
        .await
        .unwrap()
        .status
        .is_success());

    // Methods a client makes up share one metrics label, so they cannot
    // grow the node's time series.
    for m in ["BREW", "WHEN"] {
        let method = Method::from_bytes(m.as_bytes()).unwrap();
        let r = tc
            .http
            .request(method, format!("{}/v1/kv/keep", tc.url(1)))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_client_error(), "{m}: {}", r.status());
    }
    let metrics = tc.metrics(1).await;
    assert!(!metrics.contains("BREW"), "{metrics}");
    assert!(metrics.contains("method=\"OTHER\""), "{metrics}");
}

/// The peer port's forwarded leader work, as a follower encodes it (only
/// the variants used here; bincode names variants by position).
#[derive(serde::Serialize)]
enum ForwardedOp {
    Write(raft::types::Command),
}

#[derive(Debug, serde::Deserialize)]
enum ForwardedOk {
    Written {
        index: u64,
        reply: raft::types::Reply,
    },
}

#[derive(Debug, serde::Deserialize)]
enum ForwardedErr {
    NotLeader,
}

/// The snapshot header a sending leader would write: (vote, meta).
fn raft_header(term: u64, index: u64) -> Vec<u8> {
    use openraft::{LeaderId, LogId, SnapshotMeta, StoredMembership, Vote};
    let vote = Vote::new_committed(term, 9u64);
    let meta: SnapshotMeta<u64, raft::NodeInfo> = SnapshotMeta {
        last_log_id: Some(LogId::new(LeaderId::new(term, 9), index)),
        last_membership: StoredMembership::default(),
        snapshot_id: "evil".into(),
    };
    storage::encode(&(vote, meta)).unwrap()
}

/// An append-entries request from a made-up leader (node 9, a later term)
/// carrying a membership with voters 1 and 99 but only node 1's address.
fn unsound_membership_append(term: u64, last_index: u64) -> Vec<u8> {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::{raft::AppendEntriesRequest, Entry, EntryPayload, LeaderId, LogId, Vote};
    // openraft checks memberships it builds, not ones it decodes: write one
    // field by field.
    #[derive(serde::Serialize)]
    struct Fields {
        configs: Vec<BTreeSet<u64>>,
        nodes: BTreeMap<u64, raft::NodeInfo>,
    }
    let fields = Fields {
        configs: vec![BTreeSet::from([1, 99])],
        nodes: BTreeMap::from([(1, raft::NodeInfo::default())]),
    };
    let membership: raft::types::Membership =
        storage::decode(&storage::encode(&fields).unwrap()).unwrap();
    let req: AppendEntriesRequest<raft::types::TypeConfig> = AppendEntriesRequest {
        vote: Vote::new_committed(term + 5, 9),
        prev_log_id: Some(LogId::new(LeaderId::new(term, 1), last_index)),
        entries: vec![Entry {
            log_id: LogId::new(LeaderId::new(term + 5, 9), last_index + 1),
            payload: EntryPayload::Membership(membership),
        }],
        leader_commit: None,
    };
    storage::encode(&req).unwrap()
}

/// An append-entries request from a made-up leader (node 9, `term`) with
/// blank entries at the given (term, index) log ids.
fn blank_append(term: u64, prev: Option<(u64, u64)>, entries: &[(u64, u64)]) -> Vec<u8> {
    use openraft::{raft::AppendEntriesRequest, Entry, EntryPayload, LeaderId, LogId, Vote};
    let log_id = |(t, i): (u64, u64)| LogId::new(LeaderId::new(t, 9), i);
    let req: AppendEntriesRequest<raft::types::TypeConfig> = AppendEntriesRequest {
        vote: Vote::new_committed(term, 9),
        prev_log_id: prev.map(log_id),
        entries: entries
            .iter()
            .map(|&e| Entry {
                log_id: log_id(e),
                payload: EntryPayload::Blank,
            })
            .collect(),
        leader_commit: None,
    };
    storage::encode(&req).unwrap()
}

fn decode_answer(bytes: &[u8]) -> Result<Result<serde_json::Value, String>, storage::StorageError> {
    // The node answers Result<SnapshotResponse, String>; only the Err arm
    // matters here.
    let r: Result<openraft::raft::SnapshotResponse<u64>, String> = storage::decode(bytes)?;
    Ok(r.map(|_| serde_json::Value::Null))
}
